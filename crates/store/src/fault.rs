//! Named points where a crash test can make the process die at once, as a
//! power cut or `kill -9` would: set `CUSTODY_CRASH_AT` to a point's name.
//! Nothing else happens at these points; they mark the steps between which
//! a crash must leave nothing half-done.
//!
//! - `merge.recorded`: a merge's transaction committed, its ref not moved;
//! - `merge.moved`: the ref moved, the merge's intent not yet settled;
//! - `build.succeeded`: a build's success committed, its promotion not made.
//! - `key.made`: a rotation's new key written beside the old, not recorded;
//! - `key.recorded`: the rotation recorded, the new key not yet in place;
//! - `key.handed_over`: the ledger's handover to its new key stored, the
//!   new key not yet in place.
//!
//! A test can also hold the process at a point, to act while it waits: set
//! `CUSTODY_PAUSE_AT` to the point's name and `CUSTODY_PAUSE_FILE` to a
//! path; the process creates that file there and waits until the test
//! removes it (30 s at most).
//!
//! - `push.decide`: a push received, not yet decided.

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

/// Waits here while the file `CUSTODY_PAUSE_FILE` exists, when a test asked
/// to hold the process at this point.
pub fn pause(name: &str) {
    static AT: std::sync::OnceLock<Option<(String, std::path::PathBuf)>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| {
        let name = std::env::var("CUSTODY_PAUSE_AT").ok().filter(|v| !v.is_empty())?;
        Some((name, std::env::var_os("CUSTODY_PAUSE_FILE")?.into()))
    });
    let Some((at, file)) = at else { return };
    if at != name || std::fs::write(file, name).is_err() {
        return;
    }
    let started = std::time::Instant::now();
    while file.exists() && started.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
