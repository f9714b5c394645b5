//! What governs a release: the pipeline files that define an environment's
//! gate (the mainline tip's, the live commit's, the release's own), the
//! changes a release brings, and the promotion of a build to the
//! environments that follow.
//!
//! Both the server (a deployment asked for through the API) and the
//! deployer (a promotion after a success) take a release's context from
//! here, so it is decided one way.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use custody_domain::pipeline::{self, Environment, Pipeline};
use custody_domain::ProjectName;
use custody_git::change as git;
use custody_git::Repositories;
use custody_store::{DeployContext, DeploymentView, ProjectAccess, Store};

use crate::remembered::Remembered;
use crate::AppError;

/// How many parsed pipelines and releases are remembered. Both are
/// functions of commit ids, which name their content, so they never go
/// stale.
const REMEMBERED: usize = 4096;

/// Parsed pipeline files, by repository and commit.
static PIPELINES: LazyLock<Remembered<(PathBuf, String), Pipeline>> = LazyLock::new(|| Remembered::new(REMEMBERED));

/// A project, the commit live in an environment, and a candidate.
type ReleaseKey = (String, Option<String>, String);

/// The changes of a release, by project, live commit and candidate. The
/// commits between two commits never change, and each mainline commit was
/// recorded with its change in the merge's own transaction, before any
/// build of it (or of a later commit) existed.
static RELEASES: LazyLock<Remembered<ReleaseKey, Vec<i64>>> = LazyLock::new(|| Remembered::new(REMEMBERED));

/// The pipeline file on the project's mainline tip, which orders the
/// environments and governs every environment's gate (with the pipelines
/// of the commit live there and of the release; see [`release_context`]).
pub fn mainline_pipeline(repository: &Path, default_branch: &str) -> Result<Pipeline, String> {
    let tip = git::read_ref(repository, &format!("refs/heads/{default_branch}")).map_err(|e| e.to_string())?;
    let Some(tip) = tip else { return Ok(Pipeline::default()) };
    pipeline_at(repository, &tip).map_err(|e| format!("the mainline's {e}"))
}

/// An environment as the mainline tip's pipeline file defines it, with
/// what is live there and what waits.
#[derive(Clone, Debug)]
pub struct EnvironmentState {
    /// The environment and its gate.
    pub environment: Environment,
    /// Its newest successful deployment.
    pub live: Option<DeploymentView>,
    /// Deployments pending, queued or running, newest first.
    pub waiting: Vec<DeploymentView>,
}

/// The project's environments in the order of the mainline tip's pipeline
/// file, each with what is live and what waits: the one definition the API
/// and the pages share. `AppError::InvalidPipeline` when the mainline's
/// pipeline file does not read.
pub async fn environment_states(
    store: &Store,
    repositories: &Repositories,
    access: &ProjectAccess,
) -> Result<Vec<EnvironmentState>, AppError> {
    let repository = repositories.path(&access.project);
    let branch = access.default_branch.clone();
    let policy = tokio::task::spawn_blocking(move || mainline_pipeline(&repository, &branch))
        .await
        .map_err(AppError::repository)?
        .map_err(AppError::InvalidPipeline)?;
    let mut now = store.environments_now(access).await?;
    Ok(policy
        .environments
        .into_iter()
        .map(|environment| {
            let now = now.remove(&environment.name).unwrap_or_default();
            EnvironmentState { live: now.live, waiting: now.waiting, environment }
        })
        .collect())
}

/// The pipeline file as `commit` has it (the lax default where it has
/// none); remembered, since a commit never changes.
pub fn pipeline_at(repository: &Path, commit: &str) -> Result<Pipeline, String> {
    let key = (repository.to_owned(), commit.to_owned());
    if let Some(known) = PIPELINES.get(&key) {
        return Ok(Pipeline::clone(&known));
    }
    let policy = match git::read_file(repository, commit, pipeline::PATH).map_err(|e| e.to_string())? {
        Some(text) => pipeline::parse(&text).map_err(|e| e.to_string())?,
        None => Pipeline::default(),
    };
    PIPELINES.put(key, std::sync::Arc::new(policy.clone()));
    Ok(policy)
}

/// The gate context of deploying `commit` to `environment`: every
/// definition of the environment that governs it, and every change merged
/// between the commit live there and the candidate, oldest first.
///
/// A deployment passes the gate as the mainline tip's pipeline defines it,
/// as the pipeline of the commit live in the environment defines it, and
/// as the release's own pipeline defines it: a change that lowers a gate
/// (fewer approvals, say) never governs its own deployment, and an
/// environment a change removed keeps its last gate.
pub async fn release_context(
    store: &Store,
    repositories: &Repositories,
    project: &ProjectName,
    environment: &str,
    commit: &str,
) -> Result<DeployContext, AppError> {
    let default_branch = store.get_project(project).await?.default_branch;
    let repository = repositories.path(project);
    let live = store.live_commit(project, environment).await?;
    let key = (project.as_str().to_owned(), live.clone(), commit.to_owned());
    let known = RELEASES.get(&key);
    let (repo, candidate, branch, listed) = (repository.clone(), commit.to_owned(), default_branch, known.is_some());
    let live_commit = live.clone();
    let (definitions, commits, chain) = tokio::task::spawn_blocking(move || {
        let short = |c: &str| custody_domain::short_id(c).to_owned();
        let mut definitions = vec![("the mainline tip's pipeline".to_owned(), mainline_pipeline(&repo, &branch)?)];
        if let Some(live) = &live_commit {
            let policy = pipeline_at(&repo, live).map_err(|e| format!("the live commit's {e}"))?;
            definitions.push((format!("the pipeline of {}, live in the environment", short(live)), policy));
        }
        let policy = pipeline_at(&repo, &candidate).map_err(|e| format!("the release's {e}"))?;
        definitions.push((format!("the release's pipeline ({})", short(&candidate)), policy));
        let (commits, chain) = if listed {
            (Vec::new(), Vec::new())
        } else {
            (
                git::commits(&repo, live_commit.as_deref(), &candidate).map_err(|e| e.to_string())?,
                git::first_parents(&repo, live_commit.as_deref(), &candidate).map_err(|e| e.to_string())?,
            )
        };
        Ok::<_, String>((definitions, commits, chain))
    })
    .await
    .map_err(AppError::repository)?
    .map_err(AppError::NoRelease)?;
    let mut governing: Vec<(String, Environment)> = Vec::new();
    for (source, policy) in definitions {
        if let Some(defined) = policy.environments.into_iter().find(|e| e.name == environment) {
            if !governing.iter().any(|(_, known)| *known == defined) {
                governing.push((source, defined));
            }
        }
    }
    if governing.is_empty() {
        return Err(AppError::NoRelease(format!(
            "no pipeline file that governs it defines an environment {environment:?}"
        )));
    }
    let (_, primary) = governing.remove(0);
    let changes = match known {
        Some(changes) => Vec::clone(&changes),
        None => {
            let recorded = store.merges_recorded_as(project, &commits).await?;
            if let Some(intruder) = unrecorded_on_mainline(&chain, &recorded) {
                return Err(AppError::NoRelease(format!(
                    "commit {intruder} is on the mainline below this build and custody recorded no merge of it (it \
                     was put there around custody): no build containing it is deployed; an operator runs \
                     `custody audit verify`"
                )));
            }
            let mut changes: Vec<i64> = commits.iter().filter_map(|c| recorded.get(c).copied()).collect();
            changes.sort_unstable();
            RELEASES.put(key, std::sync::Arc::new(changes.clone()));
            changes
        }
    };
    Ok(DeployContext { environment: primary, also: governing, changes })
}

/// The first commit of a mainline's first-parent `chain` (newest first)
/// that sits on top of a merge custody recorded without being one itself:
/// something moved the mainline around custody. Commits below the oldest
/// recorded merge are the history from before custody merged.
pub fn unrecorded_on_mainline<'c>(
    chain: &'c [String],
    recorded: &std::collections::HashMap<String, i64>,
) -> Option<&'c str> {
    let oldest = chain.iter().rposition(|c| recorded.contains_key(c))?;
    chain[..oldest].iter().find(|c| !recorded.contains_key(*c)).map(String::as_str)
}

/// Promotes a build to every environment that follows `after` (the
/// environments with no `after` when it is `None`), as the mainline's
/// pipeline file orders them.
pub async fn promote(
    store: &Store,
    repositories: &Repositories,
    project: &str,
    build: i64,
    commit: &str,
    after: Option<&str>,
) {
    let Ok(project) = ProjectName::parse(project) else { return };
    let default_branch = match store.get_project(&project).await {
        Ok(view) => view.default_branch,
        Err(error) => return tracing::warn!(%error, "promotion: reading the project"),
    };
    let repository = repositories.path(&project);
    let policy = match tokio::task::spawn_blocking(move || mainline_pipeline(&repository, &default_branch)).await {
        Ok(Ok(policy)) => policy,
        Ok(Err(error)) => return tracing::warn!(%error, %project, "promotion: the mainline's pipeline"),
        Err(_) => return,
    };
    for environment in policy.environments.iter().filter(|e| e.after.as_deref() == after) {
        let context = match release_context(store, repositories, &project, &environment.name, commit).await {
            Ok(context) => context,
            Err(error) => {
                tracing::warn!(%error, %project, environment = %environment.name, "promotion skipped");
                continue;
            }
        };
        match store.promote(&project, build, context).await {
            Ok(Some((made, _))) => tracing::info!(
                %project, environment = %environment.name, deployment = made.number, status = %made.status, "promoted"
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, %project, environment = %environment.name, "promotion refused"),
        }
    }
}

/// Makes the promotions owed after every success, should a process have
/// died between a success and its promotion: at once, then every `every`,
/// until `shutdown` completes.
pub async fn repair_promotions(
    store: Store,
    repositories: Repositories,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        match store.promotions_owed().await {
            Ok(owed) => {
                for (project, build, commit, after) in owed {
                    promote(&store, &repositories, &project, build, &commit, after.as_deref()).await;
                }
            }
            Err(error) => tracing::error!(%error, "listing the promotions owed"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// What runs in `environment` of `project`, signed with the ledger key
/// `key` as of now: its newest `last` successful deployments, read from
/// the environment's proven chain of events and each bound to its
/// attestation by digest ([`custody_formats::environment`]). `Ok(None)`
/// when nothing was deployed there yet.
pub async fn signed_environment(
    store: &custody_store::Store,
    origin: &str,
    key: &custody_formats::ServiceKey,
    project: &custody_domain::ProjectName,
    environment: &str,
    last: usize,
) -> Result<Option<custody_formats::Envelope>, crate::AppError> {
    use custody_formats::environment::{EnvironmentV1, LiveDeployment};
    use custody_formats::trust::rfc3339_of_millis;
    // The ledger's size first: the chain read after it holds at least
    // what the size covers.
    let ledger_size = store.ledger_size().await?;
    let history = store.environment_history(project, environment, last).await?;
    if history.is_empty() {
        return Ok(None);
    }
    let deployments = history
        .into_iter()
        .map(|d| {
            let attestation_sha256 = d.envelope_sha256.ok_or_else(|| {
                crate::AppError::Conflict(format!("deployment {} succeeded with no attestation recorded", d.deployment))
            })?;
            Ok(LiveDeployment {
                deployment: d.deployment,
                build: d.build,
                finished_on: rfc3339_of_millis(d.finished_at),
                attestation_sha256,
                break_glass: d.break_glass,
            })
        })
        .collect::<Result<Vec<_>, crate::AppError>>()?;
    let state = EnvironmentV1 {
        origin: origin.to_owned(),
        project: project.to_string(),
        environment: environment.to_owned(),
        as_of: rfc3339_of_millis(custody_store::now_ms()),
        ledger_size,
        deployments,
    };
    let envelope = state
        .statement()
        .sign(key)
        .map_err(|e| crate::AppError::Unavailable(format!("the ledger key cannot sign: {e}")))?;
    Ok(Some(envelope))
}
