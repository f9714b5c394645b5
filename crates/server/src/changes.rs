//! Changes: gathering what the gate decides on from git and the store, and
//! merging atomically.
//!
//! The policy comes from the target branch's pipeline file; the facts about
//! the change (its commits, the paths it touches, whether it merges) come
//! from git for one exact head; who reviewed what and who the authors are
//! come from the store, read in the same transaction that merges.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use custody_domain::gate::{self, CheckState, GateFacts, GateReport};
use custody_domain::pipeline::{self, Pipeline, PipelineError};
use custody_domain::GroupName;
use custody_formats::{KeyRole, ServiceKey, Statement, Subject};
use custody_git::change as git;
use custody_store::{
    Authenticated, ChangeView, GateRecords, MergeIntent, MergePlan, ProjectAccess, Published, Settled, StoreError,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::AppState;

/// What git says about a change at one head.
#[derive(Clone, Debug)]
pub struct GitFacts {
    /// The head evaluated.
    pub head: String,
    /// The target's tip, if the target exists.
    pub target_tip: Option<String>,
    /// The change's commits, newest first.
    pub commits: Vec<String>,
    /// The paths it touches.
    pub changed_paths: Vec<String>,
    /// The target's policy.
    pub policy: Result<Pipeline, PipelineError>,
    /// The SHA-256 of the target's pipeline file, when it has one.
    pub policy_digest: Option<String>,
    /// The pipeline file as the change leaves it, when it touches it.
    pub proposed: Option<Result<Pipeline, PipelineError>>,
    /// The merged tree, or why it does not merge.
    pub merge: Result<String, String>,
    /// How the merged pipeline file weakens the target's gates, one line
    /// each: every such merge opens a finding.
    pub weakened: Vec<String>,
}

/// A ref's target, read on a blocking thread (a file read, never on the
/// async workers).
async fn ref_of(repository: std::path::PathBuf, name: String) -> Result<Option<String>, ApiError> {
    tokio::task::spawn_blocking(move || git::read_ref(&repository, &name)).await.map_err(internal)?.map_err(internal)
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "git");
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", "reading the repository failed")
}

/// Reads what git knows of `head` against the target branch as it is now,
/// or, for a merged change, against the target as it was before the merge.
/// The answer depends only on the two commits, so it is remembered.
pub async fn git_facts(
    state: &AppState,
    project: &custody_domain::ProjectName,
    default_branch: &str,
    target: String,
    head: String,
    merged_as: Option<String>,
) -> Result<Arc<GitFacts>, ApiError> {
    let repository = state.hosting().repositories().path(project);
    let target_tip = match &merged_as {
        None => ref_of(repository.clone(), format!("refs/heads/{target}")).await?,
        Some(merge) => {
            let (repository, merge) = (repository.clone(), merge.clone());
            tokio::task::spawn_blocking(move || -> Result<Option<String>, custody_git::GitError> {
                // A merge commit's first parent is the target it was merged into;
                // the first merge into an empty project has the head as its only parent.
                if git::resolve(&repository, &format!("{merge}^2"))?.is_some() {
                    git::resolve(&repository, &format!("{merge}^1"))
                } else {
                    Ok(None)
                }
            })
            .await
            .map_err(internal)?
            .map_err(internal)?
        }
    };
    // A target that does not exist yet has no policy of its own: the
    // mainline's governs, never the lax default of no file at all.
    let policy_tip = match &target_tip {
        Some(tip) => Some(tip.clone()),
        None => ref_of(repository.clone(), format!("refs/heads/{default_branch}")).await?,
    };
    let key = (project.to_string(), target_tip.clone(), format!("{head} {}", policy_tip.as_deref().unwrap_or("")));
    if let Some(facts) = state.hosting().remembered_facts(&key) {
        return Ok(facts);
    }
    let facts = tokio::task::spawn_blocking(move || -> Result<GitFacts, custody_git::GitError> {
        let base = target_tip.as_deref();
        let commits = git::commits(&repository, base, &head)?;
        let merge = match base {
            Some(tip) => git::merge_tree(&repository, tip, &head)?,
            None => git::merge_tree(&repository, &head, &head)?,
        };
        // What the merge would change in the target, exactly: the target's
        // tip against the merged tree (with several merge bases a three-dot
        // diff can name other paths). Without a clean merge, the change's
        // own paths since it forked.
        let changed_paths = match (base, &merge) {
            (Some(tip), Ok(tree)) => git::changed_paths_between(&repository, tip, tree)?,
            _ => git::changed_paths(&repository, base, &head)?,
        };
        let policy_text = match &policy_tip {
            Some(tip) => git::read_file(&repository, tip, pipeline::PATH)?,
            None => None,
        };
        let policy_digest = policy_text.as_ref().map(|text| hex::encode(sha2::Sha256::digest(text.as_bytes())));
        let policy = match &policy_text {
            Some(text) => pipeline::parse(text),
            None => Ok(Pipeline::default()),
        };
        let proposed = if changed_paths.iter().any(|p| p == pipeline::PATH) {
            Some(match git::read_file(&repository, &head, pipeline::PATH)? {
                Some(text) => pipeline::parse(&text),
                None => Ok(Pipeline::default()),
            })
        } else {
            None
        };
        // What the merge would leave, against what governs now.
        let weakened = match (&policy, &merge) {
            (Ok(before), Ok(tree)) if changed_paths.iter().any(|p| p == pipeline::PATH) => {
                match git::read_file(&repository, tree, pipeline::PATH)? {
                    Some(text) => {
                        pipeline::parse(&text).map(|after| pipeline::weakenings(before, &after)).unwrap_or_default()
                    }
                    None => pipeline::weakenings(before, &Pipeline::default()),
                }
            }
            _ => Vec::new(),
        };
        Ok(GitFacts { head, target_tip, commits, changed_paths, policy, policy_digest, proposed, merge, weakened })
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    let facts = Arc::new(facts);
    state.hosting().remember_facts(key, facts.clone());
    Ok(facts)
}

/// The groups the policy names, whose members the gate needs.
fn groups_of(policy: &Result<Pipeline, PipelineError>) -> Vec<GroupName> {
    let Ok(policy) = policy else { return Vec::new() };
    let mut groups: BTreeSet<GroupName> = policy.rules.iter().map(|r| r.group.clone()).collect();
    groups.extend(policy.owners.clone());
    groups.into_iter().collect()
}

/// The gate over git's facts, the store's records and the check of the head.
pub fn evaluate(facts: &GitFacts, records: &GateRecords, check: &CheckState) -> GateReport {
    let authors: BTreeSet<_> = records.authors.keys().cloned().collect();
    let policy = match &facts.policy {
        Ok(policy) => policy.clone(),
        Err(error) => {
            return GateReport {
                open: false,
                head: facts.head.clone(),
                approvers: Vec::new(),
                rules: vec![gate::RuleOutcome {
                    rule: "gate.target_policy".into(),
                    passed: false,
                    message: format!("the target branch's pipeline file is invalid: {error}"),
                    satisfy: Some("fix the pipeline file on the target branch through a change".into()),
                }],
            }
        }
    };
    let check = if policy.check.is_some() { check.clone() } else { CheckState::NotRequired };
    gate::evaluate(&GateFacts {
        open: records.change.state == custody_domain::status::ChangeState::Open,
        head: &facts.head,
        policy: &policy,
        authors: &authors,
        reviews: &records.reviews,
        writers: &records.writers,
        groups: &records.groups,
        changed_paths: &facts.changed_paths,
        proposed_pipeline: facts.proposed.as_ref(),
        check: &check,
        mergeable: facts.merge.as_ref().map(|_| ()).map_err(Clone::clone),
        unrecorded_commits: records.unrecorded_commits,
    })
}

/// Evaluates the gate of a change as it is now.
pub async fn gate_of(
    state: &AppState,
    access: &ProjectAccess,
    number: i64,
) -> Result<(ChangeView, GateRecords, GateReport), ApiError> {
    // Everything the gate reads from the database changes only with a new
    // audit event, and from git only with the target's tip: an evaluation
    // at the same newest event and tip still holds.
    // Read with the access, a moment ago.
    let seq = access.as_of;
    let project = access.project.as_str();
    if let Some(known) = state.remembered_gate(project, number) {
        if known.seq == seq {
            let repository = state.hosting().repositories().path(&access.project);
            let target = format!("refs/heads/{}", known.gate.0.target_branch);
            if ref_of(repository, target).await? == known.target_tip {
                return Ok(known.gate.clone());
            }
        }
    }
    let (gate, target_tip) = evaluate_gate(state, access, number).await?;
    state.remember_gate(project, number, RememberedGate { seq, target_tip, gate: gate.clone() });
    Ok(gate)
}

/// An evaluated gate, and what it was evaluated at.
pub(crate) struct RememberedGate {
    seq: i64,
    target_tip: Option<String>,
    gate: (ChangeView, GateRecords, GateReport),
}

/// The gate, and the target's tip it was evaluated at (for a merged
/// change, the target's tip as it is now, which its gate does not read).
async fn evaluate_gate(
    state: &AppState,
    access: &ProjectAccess,
    number: i64,
) -> Result<((ChangeView, GateRecords, GateReport), Option<String>), ApiError> {
    // The head is read first to ask git about it; if a push moves it before
    // the records are read, evaluate again rather than mix two heads.
    let mut attempts = 0;
    let (facts, records) = loop {
        attempts += 1;
        let (target, head, merge_commit) = state.store().change_position(access, number).await?;
        let facts = git_facts(state, &access.project, &access.default_branch, target, head, merge_commit).await?;
        let records =
            state.store().gate_records(access, number, facts.commits.clone(), groups_of(&facts.policy)).await?;
        if records.change.head == facts.head || attempts >= 3 {
            break (facts, records);
        }
    };
    let check = state.store().check_state(access, number, &facts.head).await?;
    let report = evaluate(&facts, &records, &check);
    let target_tip = match &records.change.merge_commit {
        None => facts.target_tip.clone(),
        Some(_) => {
            let repository = state.hosting().repositories().path(&access.project);
            ref_of(repository, format!("refs/heads/{}", records.change.target_branch)).await?
        }
    };
    Ok(((records.change.clone(), records, report), target_tip))
}

/// Merges a change if its gate is open, atomically: the gate is evaluated
/// again inside the merge's transaction for the exact head the merge commit
/// is made of, and that transaction records the merge with its intent
/// before the target ref moves (by compare-and-swap from the tip merged
/// on). Merges of one target queue behind each other in this process; one
/// that loses a race with another process gathers its facts again against
/// the new tip and is decided again, until it merges or its gate refuses.
pub async fn merge(
    state: &AppState,
    actor: &Authenticated,
    access: &ProjectAccess,
    number: i64,
) -> Result<(ChangeView, GateReport), ApiError> {
    let gate_key = std::sync::Arc::new(state.key(KeyRole::Gate).map(ServiceKey::clone_key).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "this server holds no gate key")
    })?);
    let first = state.store().get_change(&access.project, number).await?;
    let turn = state.merge_turn(&access.project, &first.target_branch);
    let _turn = turn.lock().await;
    let mut lost = 0u32;
    loop {
        // Whatever an earlier merge (here, or in a process that died)
        // recorded and did not yet move is moved first.
        settle_merges(state).await?;
        let change = state.store().get_change(&access.project, number).await?;
        let repository = state.hosting().repositories().path(&access.project);
        let facts = git_facts(
            state,
            &access.project,
            &access.default_branch,
            change.target_branch.clone(),
            change.head.clone(),
            None,
        )
        .await?;
        let groups = groups_of(&facts.policy);
        let commits = facts.commits.clone();
        let check = state.store().check_state(access, number, &facts.head).await?;
        // Runs are recorded only where the target's pipeline names a check.
        let check_runs = match &facts.policy {
            Ok(policy) if policy.check.is_some() => checks_of(state, access, number, &facts.head).await?,
            _ => Vec::new(),
        };
        let merged_by = actor.name.to_string();
        // The merge commit and its signed attestation are made here, on a
        // blocking thread, from the gate as it reads now: never inside the
        // writer. The transaction records them only if its own reading of
        // the facts gives the very statement that was signed.
        let records = state.store().gate_records(access, number, commits.clone(), groups.clone()).await?;
        let report = evaluate(&facts, &records, &check);
        let prepared = if report.open {
            if let Err(why) = &facts.merge {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("the change does not merge cleanly: {why}"),
                ));
            }
            let (facts, project, gate_key, merger, runs) =
                (facts.clone(), access.project.to_string(), gate_key.clone(), merged_by.clone(), check_runs.clone());
            let target = change.target_branch.clone();
            let made = tokio::task::spawn_blocking(move || -> Result<Published, String> {
                let tree = facts.merge.clone()?;
                let mut message = format!("Merge change {project}#{number}: {}\n\n", records.change.title);
                message.push_str(&format!("Change: {project}#{number}\nReviewed-head: {}\n", facts.head));
                for approver in &report.approvers {
                    message.push_str(&format!("Approved-by: {approver}\n"));
                }
                // The person who merged; custody stays the commit's author
                // and committer.
                message.push_str(&format!("Merged-by: {merger}\n"));
                let mut parents: Vec<&str> = facts.target_tip.iter().map(String::as_str).collect();
                parents.push(&facts.head);
                let commit = git::commit_tree(&repository, &tree, &parents, &message).map_err(|e| e.to_string())?;
                let merged = Merged { target: &target, commit: &commit, merger: &merger, checks: &runs };
                let statement = attestation(&project, number, &facts, &records, &report, &merged);
                let envelope = serde_json::to_string(&statement.sign(&gate_key)).map_err(|e| e.to_string())?;
                let statement = serde_json::to_value(&statement).map_err(|e| e.to_string())?;
                Ok(Published { commit, attestation: envelope, statement })
            })
            .await
            .map_err(internal)?
            .map_err(internal)?;
            Some(made)
        } else {
            None
        };
        let evaluated_facts = facts.clone();
        let target = change.target_branch.clone();
        let project = access.project.to_string();
        let plan = MergePlan {
            head: facts.head.clone(),
            base: facts.target_tip.clone(),
            weakened: facts.weakened.clone(),
            evaluate: Box::new(move |records| evaluate(&evaluated_facts, records, &check)),
            prepared,
            restate: Box::new(move |records, report, commit| {
                let merged = Merged { target: &target, commit, merger: &merged_by, checks: &check_runs };
                serde_json::to_value(attestation(&project, number, &facts, records, report, &merged))
                    .unwrap_or(serde_json::Value::Null)
            }),
        };
        match state.store().merge_change(actor, access, number, commits, groups, plan).await {
            Err(StoreError::TargetMoved | StoreError::FactsMoved) if lost < MERGE_RACES => {
                // Another process merged into the target first: its turn
                // came first; this one is decided again on the new tip.
                lost += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 + u64::from(lost) * 10)).await;
            }
            Err(StoreError::TargetMoved | StoreError::FactsMoved) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    format!("the target branch kept moving while merging ({lost} tries); try again"),
                )
                .retry_after(1))
            }
            Err(error) => return Err(ApiError::from(error)),
            Ok(merged) => {
                custody_store::fault::point("merge.recorded");
                settle_merges(state).await?;
                return Ok(merged);
            }
        }
    }
}

/// How many races with other processes a merge may lose before it gives up.
const MERGE_RACES: u32 = 50;

/// Moves the refs of every merge recorded and not yet settled, oldest
/// first, by compare-and-swap from the tip each merge was made on, and
/// records how each ended. Runs before and after every merge, at start-up,
/// and every few seconds, so that a process that died between recording a
/// merge and moving its ref leaves nothing half-done for long.
pub async fn settle_merges(state: &AppState) -> Result<usize, ApiError> {
    let pending = state.store().pending_merges().await?;
    let count = pending.len();
    for intent in pending {
        let repository = state.hosting().repositories().path(&intent.project);
        let moving = intent.clone();
        let settled = tokio::task::spawn_blocking(move || -> Result<Settled, custody_git::GitError> {
            let MergeIntent { reference, old, new, .. } = &moving;
            let tip = git::resolve(&repository, reference)?;
            if tip.as_deref() == Some(new.as_str()) {
                return Ok(Settled::Applied);
            }
            if tip == *old && git::compare_and_swap(&repository, reference, new, old.as_deref()).is_ok() {
                custody_store::fault::point("merge.moved");
                return Ok(Settled::Applied);
            }
            // Moved meanwhile: by this very merge and on from it, or elsewhere.
            let tip = git::resolve(&repository, reference)?;
            match &tip {
                Some(tip) if tip == new || git::is_ancestor(&repository, new, tip)? => Ok(Settled::Applied),
                _ => Ok(Settled::Dropped { tip }),
            }
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        if let Settled::Dropped { tip } = &settled {
            tracing::error!(
                project = %intent.project, change = intent.change, reference = %intent.reference, ?tip,
                "a recorded merge never reached its branch: the change is reopened"
            );
        }
        state.store().settle_merge(&intent, settled).await?;
    }
    Ok(count)
}

/// The change attestation: an in-toto Statement about the merge commit,
/// for the gate key to sign.
#[allow(clippy::too_many_arguments)]
/// What a merge made, for its attestation.
struct Merged<'a> {
    target: &'a str,
    commit: &'a str,
    merger: &'a str,
    /// The check runs of the reviewed head.
    checks: &'a [Value],
}

/// The check runs of `head`, as the change attestation records them: what
/// ran, against which target tip, how it ended, and the sha256 of its log.
async fn checks_of(state: &AppState, access: &ProjectAccess, number: i64, head: &str) -> Result<Vec<Value>, ApiError> {
    let runs = state.store().check_runs(access, number, true).await?;
    Ok(runs
        .iter()
        .filter(|run| run.head == head)
        .map(|run| {
            let log = run.log.as_deref().unwrap_or_default();
            json!({
                "head": run.head,
                "command": run.command,
                "target_tip": run.target_tip,
                "status": run.status,
                "exit_code": run.exit_code,
                "finished_on": run.finished_at.map(|t| t.to_string()),
                "log_sha256": hex::encode(Sha256::digest(log.as_bytes())),
            })
        })
        .collect())
}

fn attestation(
    project: &str,
    number: i64,
    facts: &GitFacts,
    records: &GateRecords,
    report: &GateReport,
    merged: &Merged<'_>,
) -> Statement {
    let subject = Subject {
        name: format!("{project}@refs/heads/{}", merged.target),
        digest: [("gitCommit".to_owned(), merged.commit.to_owned())].into(),
    };
    let authors: Vec<_> = records.authors.iter().map(|(user, why)| json!({ "user": user, "why": why })).collect();
    let predicate = json!({
        "project": project,
        "change": number,
        "title": records.change.title,
        "target_ref": format!("refs/heads/{}", merged.target),
        "base": facts.target_tip,
        "reviewed_head": facts.head,
        "merge_commit": merged.commit,
        "commits": facts.commits.len(),
        "authors": authors,
        "approvers": report.approvers,
        "merged_by": merged.merger,
        "checks": merged.checks,
        "policy": {
            "path": pipeline::PATH,
            "digest": facts.policy_digest.as_ref().map(|d| json!({ "sha256": d })),
        },
        "gate": report.rules,
        "weakened": facts.weakened,
    });
    Statement::new(vec![subject], custody_formats::statement::CHANGE_PREDICATE, predicate)
}

/// Merges changes whose asker wanted them merged when their gate opens,
/// with the asker's authority as it is at that moment, until `shutdown`.
pub async fn auto_merge(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
        // Merges another process recorded and died before moving.
        if let Err(error) = settle_merges(&state).await {
            tracing::error!(error = %error.message, "settling recorded merges");
        }
        let candidates = match state.store().auto_merge_candidates().await {
            Ok(candidates) => candidates,
            Err(error) => {
                tracing::error!(%error, "listing changes to merge");
                continue;
            }
        };
        for (project, number, user_id, token_live) in candidates {
            if let Err(error) = try_auto_merge(&state, &project, number, user_id, token_live).await {
                tracing::debug!(error = %error.message, %project, number, "auto-merge not yet");
            }
        }
    }
}

async fn try_auto_merge(
    state: &AppState,
    project: &str,
    number: i64,
    user_id: i64,
    token_live: bool,
) -> Result<(), ApiError> {
    let project = custody_domain::ProjectName::parse(project)?;
    let cancel = |why: &str| state.store().cancel_auto_merge(&project, number, why.to_owned());
    if !token_live {
        cancel("the token that asked for it was revoked or has expired").await?;
        return Ok(());
    }
    let Some(actor) = state.store().acting_user(user_id).await? else {
        cancel("the user who asked is disabled").await?;
        return Ok(());
    };
    let access = match state.store().project_access(&actor, &project).await {
        Ok(access) if access.role.is_some_and(|r| r.can_write()) => access,
        _ => {
            cancel(&format!("{} no longer has write access", actor.name)).await?;
            return Ok(());
        }
    };
    let (_, _, gate) = gate_of(state, &access, number).await?;
    if gate.open {
        let (change, _) = merge(state, &actor, &access, number).await?;
        tracing::info!(%project, number, merge = ?change.merge_commit, by = %actor.name, "merged as the gate opened");
    }
    Ok(())
}
