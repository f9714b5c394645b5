//! What a pipeline script sees when custody runs it.
//!
//! A script starts from an empty environment: only a fixed `PATH`, its own
//! home inside the job's workspace, and the `CUSTODY_*` variables that
//! describe the job. Nothing of custody's own environment (database URLs,
//! tokens, key paths) leaks into it.
//!
//! This crate knows nothing about HTTP or how decisions are made.

pub mod boot;
pub mod builds;
pub mod cgroup;
pub mod checks;
pub mod deploys;
pub mod desk;
pub mod sandbox;

use std::path::Path;

/// Takes an exclusive lock on `file` without waiting: `false` when another
/// open file description holds one. The kernel drops it when its holder
/// closes the file or dies, however it died.
pub(crate) fn try_lock(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd as _;
    // SAFETY: flock on a descriptor borrowed for the call.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The `PATH` every script gets.
pub const SCRIPT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// One kind of job a worker takes from the store and runs: checks, builds
/// or deployments.
pub(crate) trait Worker: Sync {
    /// A job this worker holds.
    type Lease: Send + Sync;
    /// How a job ended.
    type Outcome: Send;
    /// What the job is called in logs.
    const KIND: &'static str;
    /// How long an idle worker waits when no wake-up came.
    const IDLE: std::time::Duration;
    /// The database the jobs come from, when the worker reaches it: its
    /// commits wake an idle worker at once.
    fn store(&self) -> Option<&custody_store::Store>;
    /// Takes the next job, if there is one.
    fn lease(&self) -> impl std::future::Future<Output = Result<Option<Self::Lease>, String>> + Send;
    /// Runs a job to its end; `None` when its lease was lost on the way.
    fn work(&self, lease: &Self::Lease) -> impl std::future::Future<Output = Option<Self::Outcome>> + Send;
    /// Records how the job ended, and what follows from it. Runs to its
    /// end even when a shutdown arrives meanwhile.
    fn record(&self, lease: &Self::Lease, outcome: Self::Outcome) -> impl std::future::Future<Output = ()> + Send;
    /// Records that a shutdown cut the job short (its sandbox is gone).
    fn interrupted(&self, lease: &Self::Lease) -> impl std::future::Future<Output = ()> + Send;
}

/// Takes and runs `worker`'s jobs one at a time until `shutdown` completes.
/// It looks for work when a committed transaction queues a job, or every
/// [`Worker::IDLE`] when no wake-up came.
pub(crate) async fn work_until<W: Worker>(worker: &W, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        // Registered before looking, so a job queued in between still wakes us.
        let mut woken = worker.store().map(|store| Box::pin(store.jobs_queued()));
        if let Some(woken) = woken.as_mut() {
            woken.as_mut().enable();
        }
        let woken = async move {
            match woken {
                Some(woken) => woken.await,
                None => std::future::pending().await,
            }
        };
        let leased = tokio::select! {
            () = &mut shutdown => return,
            leased = worker.lease() => leased,
        };
        let lease = match leased {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "leasing a {}", W::KIND);
                None
            }
        };
        let Some(lease) = lease else {
            tokio::select! {
                () = &mut shutdown => return,
                () = woken => {}
                () = tokio::time::sleep(W::IDLE) => {}
            }
            continue;
        };
        let outcome = tokio::select! {
            () = &mut shutdown => {
                // Dropping the work kills its sandbox.
                worker.interrupted(&lease).await;
                return;
            }
            outcome = worker.work(&lease) => outcome,
        };
        if let Some(outcome) = outcome {
            worker.record(&lease, outcome).await;
        }
    }
}

/// What kind of job a script runs for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// A check of a change's head.
    Check,
    /// A build of a mainline commit.
    Build,
    /// A deployment to an environment.
    Deploy {
        /// The environment deployed to.
        environment: String,
    },
}

/// The facts about a job that its script is told.
#[derive(Clone, Debug)]
pub struct Job<'a> {
    /// Which kind.
    pub kind: JobKind,
    /// The project's name.
    pub project: &'a str,
    /// The commit being checked, built or deployed.
    pub commit: &'a str,
    /// The build's id.
    pub build: &'a str,
}

/// The complete environment of a script run in `workspace`, and nothing else.
pub fn script_environment(job: &Job<'_>, workspace: &Path) -> Vec<(String, String)> {
    let home = workspace.join(".home");
    let mut env = vec![
        ("PATH".to_owned(), SCRIPT_PATH.to_owned()),
        ("HOME".to_owned(), home.display().to_string()),
        ("TMPDIR".to_owned(), workspace.join(".tmp").display().to_string()),
        ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ("CUSTODY_PROJECT".to_owned(), job.project.to_owned()),
        ("CUSTODY_COMMIT".to_owned(), job.commit.to_owned()),
        ("CUSTODY_BUILD".to_owned(), job.build.to_owned()),
    ];
    if let JobKind::Deploy { environment } = &job.kind {
        env.push(("CUSTODY_ENVIRONMENT".to_owned(), environment.clone()));
    }
    env
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn a_script_sees_only_its_own_environment() {
        let workspace = tempfile::tempdir().unwrap();
        let job = Job { kind: JobKind::Build, project: "payments", commit: "abc123", build: "7" };
        let mut command = Command::new("/usr/bin/env");
        command.env_clear().envs(script_environment(&job, workspace.path()));
        // custody's own secrets live in its environment; the script must not see them.
        std::env::set_var("CUSTODY_DATABASE_URL", "postgres://secret@db/custody");
        let output = String::from_utf8(command.output().unwrap().stdout).unwrap();
        assert!(output.contains("CUSTODY_PROJECT=payments"));
        assert!(output.contains("CUSTODY_COMMIT=abc123"));
        assert!(!output.contains("CUSTODY_DATABASE_URL"), "{output}");
        assert!(!output.contains("CUSTODY_ENVIRONMENT"));
        assert_eq!(output.lines().count(), 7, "{output}");
    }

    #[test]
    fn a_deploy_script_is_told_its_environment() {
        let job = Job {
            kind: JobKind::Deploy { environment: "production".into() },
            project: "payments",
            commit: "abc123",
            build: "7",
        };
        let env = script_environment(&job, Path::new("/work/job"));
        assert!(env.contains(&("CUSTODY_ENVIRONMENT".to_owned(), "production".to_owned())));
        assert!(env.contains(&("HOME".to_owned(), "/work/job/.home".to_owned())));
    }
}
