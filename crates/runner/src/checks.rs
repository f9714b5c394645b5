//! The check runner: leases queued check runs and runs the target branch's
//! check command on each change head, in the sandbox.

use std::path::Path;
use std::time::Duration;

use custody_domain::pipeline::{self, Pipeline};
use custody_domain::status::CheckStatus;
use custody_domain::ProjectName;
use custody_git::change as git;
use custody_git::Repositories;
use custody_store::{CheckOutcome, LeasedCheck, Store};

use crate::sandbox::{self, Limits};
use crate::{script_environment, Job, JobKind};

/// A run left `running` this long is taken again (its runner died).
const STALE_MS: i64 = 2 * 3600 * 1000;
/// How often an idle runner looks for work.
const IDLE: Duration = Duration::from_millis(300);

/// Runs checks until `shutdown` completes; no check uses more than `ceiling`.
pub async fn run(
    store: Store,
    repositories: Repositories,
    ceiling: sandbox::Ceiling,
    shutdown: impl std::future::Future<Output = ()>,
) {
    crate::work_until(&CheckRunner { store, repositories, ceiling }, shutdown).await;
}

/// Runs the check of each change head.
struct CheckRunner {
    store: Store,
    repositories: Repositories,
    ceiling: sandbox::Ceiling,
}

impl crate::Worker for CheckRunner {
    type Lease = LeasedCheck;
    type Outcome = CheckOutcome;
    const KIND: &'static str = "check";
    const IDLE: Duration = IDLE;

    fn store(&self) -> Option<&Store> {
        Some(&self.store)
    }

    async fn lease(&self) -> Result<Option<LeasedCheck>, String> {
        self.store.lease_check(STALE_MS).await.map_err(|e| e.to_string())
    }

    async fn work(&self, lease: &LeasedCheck) -> Option<CheckOutcome> {
        Some(check(&self.repositories, lease, &self.ceiling).await)
    }

    async fn record(&self, lease: &LeasedCheck, outcome: CheckOutcome) {
        tracing::info!(project = %lease.project, change = lease.number, head = %lease.head, status = %outcome.status, "check finished");
        if let Err(error) = self.store.finish_check(lease, outcome).await {
            tracing::error!(%error, run = lease.id, "recording a check");
        }
    }

    async fn interrupted(&self, lease: &LeasedCheck) {
        // Another start runs it again.
        if let Err(error) = self.store.requeue_check(lease).await {
            tracing::error!(%error, run = lease.id, "requeueing a check");
        }
    }
}

fn outcome(status: CheckStatus, command: Option<String>, target_tip: Option<String>, log: String) -> CheckOutcome {
    CheckOutcome { status, command, target_tip, exit_code: None, log }
}

/// Runs one check: the command and its script as they are on the target
/// branch, in a fresh checkout of the head.
pub async fn check(repositories: &Repositories, lease: &LeasedCheck, ceiling: &sandbox::Ceiling) -> CheckOutcome {
    let Ok(project) = ProjectName::parse(&lease.project) else {
        return outcome(CheckStatus::Error, None, None, format!("project name {:?} is not valid", lease.project));
    };
    let repository = repositories.path(&project);
    let (lease2, repo2) = (lease.clone(), repository.clone());
    let prepared = tokio::task::spawn_blocking(move || prepare(&repo2, &lease2)).await;
    let (policy, target_tip, workspace) = match prepared {
        Ok(Ok(Prepared::Run { policy, target_tip, workspace })) => (*policy, target_tip, workspace),
        Ok(Ok(Prepared::Done(outcome))) => return outcome,
        Ok(Err(message)) => return outcome(CheckStatus::Error, None, None, message),
        Err(_) => return outcome(CheckStatus::Error, None, None, "preparing the check failed".into()),
    };
    let Some(command) = policy.check.clone() else {
        return outcome(CheckStatus::NotRequired, None, target_tip, String::new());
    };
    let job = Job { kind: JobKind::Check, project: &lease.project, commit: &lease.head, build: "" };
    let env = script_environment(&job, Path::new("/work"));
    let (limits, notes) = Limits::within(policy.timeout, policy.network, &policy.resources, ceiling);
    match sandbox::run(&workspace, &command, &env, &limits).await {
        Ok(done) => {
            let status = if done.exit_code == Some(0) && done.limit.is_none() {
                CheckStatus::Passed
            } else {
                CheckStatus::Failed
            };
            CheckOutcome {
                status,
                command: Some(command),
                target_tip,
                exit_code: done.exit_code.map(i64::from),
                log: notes + &done.log,
            }
        }
        Err(error) => outcome(CheckStatus::Error, Some(command), target_tip, error.to_string()),
    }
}

enum Prepared {
    Run { policy: Box<Pipeline>, target_tip: Option<String>, workspace: sandbox::Workspace },
    Done(CheckOutcome),
}

fn prepare(repository: &Path, lease: &LeasedCheck) -> Result<Prepared, String> {
    let failed = |e: custody_git::GitError| e.to_string();
    // A target that does not exist yet is governed by the mainline's policy.
    let target_tip =
        match git::read_ref(repository, &format!("refs/heads/{}", lease.target_branch)).map_err(|e| e.to_string())? {
            Some(tip) => Some(tip),
            None => {
                git::read_ref(repository, &format!("refs/heads/{}", lease.default_branch)).map_err(|e| e.to_string())?
            }
        };
    // The change's own pipeline file must stay valid: say where it is not.
    if let Some(text) = git::read_file(repository, &lease.head, pipeline::PATH).map_err(failed)? {
        if let Err(error) = pipeline::parse(&text) {
            return Ok(Prepared::Done(outcome(
                CheckStatus::Failed,
                None,
                target_tip,
                format!("the change's {error}\n"),
            )));
        }
    }
    let policy = match &target_tip {
        Some(tip) => match git::read_file(repository, tip, pipeline::PATH).map_err(failed)? {
            Some(text) => pipeline::parse(&text).map_err(|e| format!("the target branch's {e}"))?,
            None => Pipeline::default(),
        },
        None => Pipeline::default(),
    };
    let Some(command) = &policy.check else {
        return Ok(Prepared::Run {
            policy: Box::new(policy),
            target_tip,
            workspace: sandbox::Workspace::new("check").map_err(|e| e.to_string())?,
        });
    };
    // The change's tree, with what governs the check as the target branch
    // has it: `.custody/**`, the pipeline's scripts and its check inputs.
    // A change can neither edit its own check nor hand it a helper to
    // source, and a link it plants is never in the way.
    let script = command.split_whitespace().next().unwrap_or_default().trim_start_matches("./");
    let tip = target_tip.as_deref().ok_or("the target branch does not exist, so it names no check script")?;
    if git::read_file(repository, tip, script).map_err(failed)?.is_none() {
        return Err(format!("{script} does not exist on the target branch"));
    }
    let tree =
        git::tree_governed_by(repository, &lease.head, tip, |path| policy.governs_checks(path)).map_err(failed)?;
    let workspace = sandbox::Workspace::new("check").map_err(|e| e.to_string())?;
    git::export_tree(repository, &tree, workspace.path()).map_err(failed)?;
    let mut prefix = workspace.path().to_path_buf();
    for part in Path::new(script).components() {
        prefix.push(part);
        if std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink()) {
            return Ok(Prepared::Done(outcome(
                CheckStatus::Failed,
                Some(command.clone()),
                target_tip,
                format!(
                    "{} is a symbolic link on the target branch; the check script's path may not contain one\n",
                    prefix.strip_prefix(workspace.path()).unwrap_or(&prefix).display()
                ),
            )));
        }
    }
    // Run as a program, whether or not it was committed executable.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let path = workspace.path().join(script);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{script}: {e}"))?;
    }
    for dir in [".home", ".tmp"] {
        if let Err(why) = workspace.fresh_dir(dir) {
            return Ok(Prepared::Done(outcome(
                CheckStatus::Failed,
                Some(command.clone()),
                target_tip,
                format!("{why}\n"),
            )));
        }
    }
    Ok(Prepared::Run { policy: Box::new(policy), target_tip, workspace })
}
