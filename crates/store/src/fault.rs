//! Named points where a crash test can make the process die at once, as a
//! power cut or `kill -9` would: set `CUSTODY_CRASH_AT` to a point's name.
//! Nothing else happens at these points; they mark the steps between which
//! a crash must leave nothing half-done.
//!
//! - `merge.recorded`: a merge's transaction committed, its ref not moved;
//! - `merge.moved`: the ref moved, the merge's intent not yet settled;
//! - `build.succeeded`: a build's success committed, its promotion not made.

/// Dies here, without unwinding or flushing anything, when the crash test
/// asked for this point.
pub fn point(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("CUSTODY_CRASH_AT").ok().filter(|v| !v.is_empty()));
    if at.as_deref() == Some(name) {
        eprintln!("crashing at {name}, as CUSTODY_CRASH_AT asked");
        std::process::abort();
    }
}
