//! Changes: gathering what the gate decides on from git and the store, and
//! merging atomically.
//!
//! The policy comes from the target branch's pipeline file; the facts about
//! the change (its commits, the paths it touches, whether it merges) come
//! from git for one exact head; who reviewed what and who the authors are
//! come from the store, read in the same transaction that merges. Git and
//! signing run on blocking threads, never on the async workers and never
//! inside the writer's transaction.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use custody_domain::gate::{self, CheckState, GateFacts, GateReport};
use custody_domain::pipeline::{self, Pipeline, PipelineError};
use custody_domain::{GroupName, ProjectName};
use custody_formats::attestation::{Authorship, ChangeAuthor, ChangeV1, CheckRecord, GateRule, Policy, Sha256Digest};
use custody_formats::{ServiceKey, Statement};
use custody_git::change as git;
use custody_git::Repositories;
use custody_store::{
    Authenticated, AuthorReason, ChangeView, GateRecords, MergeIntent, MergePlan, ProjectAccess, Published, Settled,
    Store, StoreError,
};
use sha2::{Digest, Sha256};

use crate::remembered::Remembered;
use crate::AppError;

type Result<T, E = AppError> = std::result::Result<T, E>;

/// How many sets of git facts are remembered.
const FACTS_REMEMBERED: usize = 1024;

/// How many evaluated gates are remembered.
const GATES_REMEMBERED: usize = 4096;

/// How many races with other processes a merge may lose before it gives up.
const MERGE_RACES: u32 = 50;

/// Git facts are remembered by project, target tip and head.
type FactsKey = (String, Option<String>, String);

/// The lock that gives merges into one target their turns.
type Turn = Arc<tokio::sync::Mutex<()>>;

/// A change's gate as evaluated, with the change and its records.
pub type Gate = (ChangeView, GateRecords, GateReport);

/// The changes of every project: their gates and their merges.
pub struct Changes {
    store: Store,
    repositories: Repositories,
    /// The key that signs change attestations, when this process holds it.
    gate_key: Option<Arc<ServiceKey>>,
    facts: Remembered<FactsKey, GitFacts>,
    /// Gates evaluated, by project and change, with the audit log's newest
    /// sequence number and the target's tip they were evaluated at.
    gates: Remembered<(String, i64), RememberedGate>,
    /// What a change's page shows from git (its commits' log and its diff),
    /// by project, base and head: commits never change, so neither does it.
    shown: Remembered<(String, Option<String>, String), ShownFromGit>,
    /// One turn at a time per merge target, in this process.
    turns: Mutex<HashMap<(String, String), Turn>>,
}

/// What a change's page shows from git.
#[derive(Clone, Debug)]
pub struct ShownFromGit {
    /// One line per commit, at most `limit` of them, in the order given:
    /// `id \x1f named author \x1f subject`.
    pub log: String,
    /// The diff from the base to the head.
    pub diff: String,
}

/// How many changes' logs and diffs are remembered (a diff can be large:
/// few are kept).
const SHOWN_REMEMBERED: usize = 64;
/// The largest log and diff remembered.
const SHOWN_MAX_BYTES: usize = 4 << 20;

impl Changes {
    /// The log of the first `limit` of `commits` and the diff from `base`
    /// to `head`, read from git once per base and head.
    pub async fn shown_from_git(
        &self,
        project: &ProjectName,
        base: Option<String>,
        head: String,
        commits: &[String],
        limit: usize,
    ) -> Result<Arc<ShownFromGit>> {
        let key = (project.to_string(), base.clone(), head.clone());
        if let Some(known) = self.shown.get(&key) {
            return Ok(known);
        }
        let repository = self.repositories.path(project);
        let commits: Vec<String> = commits.iter().take(limit).cloned().collect();
        let shown = tokio::task::spawn_blocking(move || -> std::result::Result<ShownFromGit, custody_git::GitError> {
            let mut args = vec!["log", "--no-walk=unsorted", "--format=%H%x1f%an <%ae>%x1f%s"];
            args.extend(commits.iter().map(String::as_str));
            let log = if commits.is_empty() { String::new() } else { custody_git::git(Some(&repository), &args)? };
            let diff = custody_git::change::diff(&repository, base.as_deref(), &head)?;
            Ok(ShownFromGit { log, diff })
        })
        .await
        .map_err(AppError::repository)?
        .map_err(AppError::repository)?;
        let shown = Arc::new(shown);
        // A huge diff is read again each time rather than held.
        if shown.log.len() + shown.diff.len() <= SHOWN_MAX_BYTES {
            self.shown.put(key, shown.clone());
        }
        Ok(shown)
    }

    /// The changes kept in `store` of the repositories under
    /// `repositories`, merged with `gate_key` signing their attestations.
    pub fn new(store: Store, repositories: Repositories, gate_key: Option<ServiceKey>) -> Changes {
        Changes {
            store,
            repositories,
            gate_key: gate_key.map(Arc::new),
            facts: Remembered::new(FACTS_REMEMBERED),
            gates: Remembered::new(GATES_REMEMBERED),
            shown: Remembered::new(SHOWN_REMEMBERED),
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// The turn of merges into `target` of `project` in this process.
    fn turn(&self, project: &ProjectName, target: &str) -> Turn {
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        turns.entry((project.to_string(), target.to_owned())).or_default().clone()
    }

    /// Reads what git knows of `head` against the target branch as it is now,
    /// or, for a merged change, against the target as it was before the merge.
    /// The answer depends only on the two commits, so it is remembered.
    pub async fn git_facts(
        &self,
        project: &ProjectName,
        default_branch: &str,
        target: String,
        head: String,
        merged_as: Option<String>,
    ) -> Result<Arc<GitFacts>> {
        let repository = self.repositories.path(project);
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
                .map_err(AppError::repository)?
                .map_err(AppError::repository)?
            }
        };
        // A target that does not exist yet has no policy of its own: the
        // mainline's governs, never the lax default of no file at all.
        let policy_tip = match &target_tip {
            Some(tip) => Some(tip.clone()),
            None => ref_of(repository.clone(), format!("refs/heads/{default_branch}")).await?,
        };
        let key = (project.to_string(), target_tip.clone(), format!("{head} {}", policy_tip.as_deref().unwrap_or("")));
        if let Some(facts) = self.facts.get(&key) {
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
        .map_err(AppError::repository)?
        .map_err(AppError::repository)?;
        let facts = Arc::new(facts);
        self.facts.put(key, facts.clone());
        Ok(facts)
    }

    /// Evaluates the gate of a change as it is now.
    pub async fn gate_of(&self, access: &ProjectAccess, number: i64) -> Result<Gate> {
        // Everything the gate reads from the database changes only with a new
        // audit event, and from git only with the target's tip: an evaluation
        // at the same newest event and tip still holds.
        // Read with the access, a moment ago.
        let seq = access.as_of;
        let project = access.project.as_str();
        if let Some(known) = self.gates.get(&(project.to_owned(), number)) {
            if known.seq == seq {
                let repository = self.repositories.path(&access.project);
                let target = format!("refs/heads/{}", known.gate.0.target_branch);
                if ref_of(repository, target).await? == known.target_tip {
                    return Ok(known.gate.clone());
                }
            }
        }
        let (gate, target_tip) = self.evaluate_gate(access, number).await?;
        self.gates.put((project.to_owned(), number), Arc::new(RememberedGate { seq, target_tip, gate: gate.clone() }));
        Ok(gate)
    }

    /// The gate, and the target's tip it was evaluated at (for a merged
    /// change, the target's tip as it is now, which its gate does not read).
    async fn evaluate_gate(&self, access: &ProjectAccess, number: i64) -> Result<(Gate, Option<String>)> {
        // The head is read first to ask git about it; if a push moves it before
        // the records are read, evaluate again rather than mix two heads.
        let mut attempts = 0;
        let (facts, records) = loop {
            attempts += 1;
            let (target, head, merge_commit) = self.store.change_position(access, number).await?;
            let facts = self.git_facts(&access.project, &access.default_branch, target, head, merge_commit).await?;
            let records =
                self.store.gate_records(access, number, facts.commits.clone(), groups_of(&facts.policy)).await?;
            if records.change.head == facts.head || attempts >= 3 {
                break (facts, records);
            }
        };
        let check = self.store.check_state(access, number, &facts.head).await?;
        let report = evaluate(&facts, &records, &check);
        let target_tip = match &records.change.merge_commit {
            None => facts.target_tip.clone(),
            Some(_) => {
                let repository = self.repositories.path(&access.project);
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
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        number: i64,
    ) -> Result<(ChangeView, GateReport)> {
        let gate_key =
            self.gate_key.clone().ok_or_else(|| AppError::Unavailable("this server holds no gate key".into()))?;
        let first = self.store.get_change(&access.project, number).await?;
        let turn = self.turn(&access.project, &first.target_branch);
        let _turn = turn.lock().await;
        let mut lost = 0u32;
        loop {
            // Whatever an earlier merge (here, or in a process that died)
            // recorded and did not yet move is moved first.
            self.settle_merges().await?;
            let change = self.store.get_change(&access.project, number).await?;
            let repository = self.repositories.path(&access.project);
            let facts = self
                .git_facts(
                    &access.project,
                    &access.default_branch,
                    change.target_branch.clone(),
                    change.head.clone(),
                    None,
                )
                .await?;
            let groups = groups_of(&facts.policy);
            let commits = facts.commits.clone();
            let check = self.store.check_state(access, number, &facts.head).await?;
            // Runs are recorded only where the target's pipeline names a check.
            let check_runs = match &facts.policy {
                Ok(policy) if policy.check.is_some() => self.checks_of(access, number, &facts.head).await?,
                _ => Vec::new(),
            };
            let merged_by = actor.name.to_string();
            // The merge commit and its signed attestation are made here, on a
            // blocking thread, from the gate as it reads now: never inside the
            // writer. The transaction records them only if its own reading of
            // the facts gives the very statement that was signed.
            let records = self.store.gate_records(access, number, commits.clone(), groups.clone()).await?;
            let report = evaluate(&facts, &records, &check);
            let prepared = if report.open {
                if let Err(why) = &facts.merge {
                    return Err(AppError::Conflict(format!("the change does not merge cleanly: {why}")));
                }
                let preparation = Preparation {
                    repository,
                    project: access.project.to_string(),
                    number,
                    target: change.target_branch.clone(),
                    merger: merged_by.clone(),
                    runs: check_runs.clone(),
                    facts: facts.clone(),
                    records,
                    report,
                    gate_key: gate_key.clone(),
                };
                let made = tokio::task::spawn_blocking(move || prepare_merge(preparation))
                    .await
                    .map_err(AppError::repository)?
                    .map_err(AppError::repository)?;
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
            match self.store.merge_change(actor, access, number, commits, groups, plan).await {
                Err(StoreError::TargetMoved | StoreError::FactsMoved) if lost < MERGE_RACES => {
                    // Another process merged into the target first: its turn
                    // came first; this one is decided again on the new tip.
                    lost += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20 + u64::from(lost) * 10)).await;
                }
                Err(StoreError::TargetMoved | StoreError::FactsMoved) => {
                    return Err(AppError::Busy {
                        message: format!("the target branch kept moving while merging ({lost} tries); try again"),
                        retry_after: 1,
                    })
                }
                Err(error) => return Err(error.into()),
                Ok(merged) => {
                    custody_store::fault::point("merge.recorded");
                    self.settle_merges().await?;
                    return Ok(merged);
                }
            }
        }
    }

    /// Moves the refs of every merge recorded and not yet settled, oldest
    /// first, by compare-and-swap from the tip each merge was made on, and
    /// records how each ended. Runs before and after every merge, at start-up,
    /// and every few seconds, so that a process that died between recording a
    /// merge and moving its ref leaves nothing half-done for long.
    pub async fn settle_merges(&self) -> Result<usize> {
        let pending = self.store.pending_merges().await?;
        let count = pending.len();
        for intent in pending {
            let repository = self.repositories.path(&intent.project);
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
            .map_err(AppError::repository)?
            .map_err(AppError::repository)?;
            if let Settled::Dropped { tip } = &settled {
                tracing::error!(
                    project = %intent.project, change = intent.change, reference = %intent.reference, ?tip,
                    "a recorded merge never reached its branch: the change is reopened"
                );
            }
            self.store.settle_merge(&intent, settled).await?;
        }
        Ok(count)
    }

    /// The check runs of `head`, as the change attestation records them: what
    /// ran, against which target tip, how it ended, and the sha256 of its log.
    async fn checks_of(&self, access: &ProjectAccess, number: i64, head: &str) -> Result<Vec<CheckRecord>> {
        let runs = self.store.check_runs(access, number, true).await?;
        Ok(runs
            .iter()
            .filter(|run| run.head == head)
            .map(|run| CheckRecord {
                head: run.head.clone(),
                command: run.command.clone(),
                target_tip: run.target_tip.clone(),
                status: run.status.as_str().to_owned(),
                exit_code: run.exit_code,
                finished_on: run.finished_at.map(|t| t.to_string()),
                log_sha256: hex::encode(Sha256::digest(run.log.as_deref().unwrap_or_default().as_bytes())),
            })
            .collect())
    }

    /// Merges changes whose asker wanted them merged when their gate opens,
    /// with the asker's authority as it is at that moment, until `shutdown`.
    pub async fn auto_merge(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
            // Merges another process recorded and died before moving.
            if let Err(error) = self.settle_merges().await {
                tracing::error!(%error, "settling recorded merges");
            }
            let candidates = match self.store.auto_merge_candidates().await {
                Ok(candidates) => candidates,
                Err(error) => {
                    tracing::error!(%error, "listing changes to merge");
                    continue;
                }
            };
            for (project, number, user_id, token_live) in candidates {
                if let Err(error) = self.try_auto_merge(&project, number, user_id, token_live).await {
                    tracing::debug!(%error, %project, number, "auto-merge not yet");
                }
            }
        }
    }

    async fn try_auto_merge(&self, project: &str, number: i64, user_id: i64, token_live: bool) -> Result<()> {
        let project = ProjectName::parse(project).map_err(StoreError::Invalid)?;
        let cancel = |why: &str| self.store.cancel_auto_merge(&project, number, why.to_owned());
        if !token_live {
            cancel("the token that asked for it was revoked or has expired").await?;
            return Ok(());
        }
        let Some(actor) = self.store.acting_user(user_id).await? else {
            cancel("the user who asked is disabled").await?;
            return Ok(());
        };
        let access = match self.store.project_access(&actor, &project).await {
            Ok(access) if access.role.is_some_and(|r| r.can_write()) => access,
            _ => {
                cancel(&format!("{} no longer has write access", actor.name)).await?;
                return Ok(());
            }
        };
        let (_, _, gate) = self.gate_of(&access, number).await?;
        if gate.open {
            let (change, _) = self.merge(&actor, &access, number).await?;
            tracing::info!(%project, number, merge = ?change.merge_commit, by = %actor.name, "merged as the gate opened");
        }
        Ok(())
    }
}

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
async fn ref_of(repository: std::path::PathBuf, name: String) -> Result<Option<String>> {
    tokio::task::spawn_blocking(move || git::read_ref(&repository, &name))
        .await
        .map_err(AppError::repository)?
        .map_err(AppError::repository)
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

/// An evaluated gate, and what it was evaluated at.
struct RememberedGate {
    seq: i64,
    target_tip: Option<String>,
    gate: (ChangeView, GateRecords, GateReport),
}

/// What a merge commit and its attestation are made from.
struct Preparation {
    repository: std::path::PathBuf,
    project: String,
    number: i64,
    target: String,
    merger: String,
    runs: Vec<CheckRecord>,
    facts: Arc<GitFacts>,
    records: GateRecords,
    report: GateReport,
    gate_key: Arc<ServiceKey>,
}

/// The merge commit (content-addressed, so making it before the writer's
/// transaction is harmless) and its change attestation, signed with the
/// gate key; run on a blocking thread.
fn prepare_merge(p: Preparation) -> std::result::Result<Published, String> {
    let Preparation { repository, project, number, target, merger, runs, facts, records, report, gate_key } = p;
    let tree = facts.merge.clone()?;
    let mut message = format!("Merge change {project}#{number}: {}\n\n", records.change.title);
    message.push_str(&format!("Change: {project}#{number}\nReviewed-head: {}\n", facts.head));
    for approver in &report.approvers {
        message.push_str(&format!("Approved-by: {approver}\n"));
    }
    // The person who merged; custody stays the commit's author and committer.
    message.push_str(&format!("Merged-by: {merger}\n"));
    let mut parents: Vec<&str> = facts.target_tip.iter().map(String::as_str).collect();
    parents.push(&facts.head);
    let commit = git::commit_tree(&repository, &tree, &parents, &message).map_err(|e| e.to_string())?;
    let merged = Merged { target: &target, commit: &commit, merger: &merger, checks: &runs };
    let statement = attestation(&project, number, &facts, &records, &report, &merged);
    let envelope = statement.sign(&gate_key).map_err(|e| format!("signing the change attestation: {e}"))?;
    let envelope = serde_json::to_string(&envelope).map_err(|e| e.to_string())?;
    let statement = serde_json::to_value(&statement).map_err(|e| e.to_string())?;
    Ok(Published { commit, attestation: envelope, statement })
}

/// What a merge made, for its attestation.
struct Merged<'a> {
    target: &'a str,
    commit: &'a str,
    merger: &'a str,
    /// The check runs of the reviewed head.
    checks: &'a [CheckRecord],
}

fn authorship(why: &AuthorReason) -> Authorship {
    match why.clone() {
        AuthorReason::PushedCommit { commit } => Authorship::PushedCommit { commit },
        AuthorReason::MovedSourceBranch { push } => Authorship::MovedSourceBranch { push },
        AuthorReason::NamedAuthor { commit } => Authorship::NamedAuthor { commit },
        AuthorReason::NamedCommitter { commit } => Authorship::NamedCommitter { commit },
        AuthorReason::CoAuthor { commit } => Authorship::CoAuthor { commit },
    }
}

fn attestation(
    project: &str,
    number: i64,
    facts: &GitFacts,
    records: &GateRecords,
    report: &GateReport,
    merged: &Merged<'_>,
) -> Statement {
    ChangeV1 {
        project: project.to_owned(),
        change: number,
        title: records.change.title.clone(),
        target_ref: format!("refs/heads/{}", merged.target),
        base: facts.target_tip.clone(),
        reviewed_head: facts.head.clone(),
        merge_commit: merged.commit.to_owned(),
        commits: facts.commits.len() as u64,
        authors: records
            .authors
            .iter()
            .map(|(user, why)| ChangeAuthor { user: user.to_string(), why: why.iter().map(authorship).collect() })
            .collect(),
        approvers: report.approvers.clone(),
        merged_by: merged.merger.to_owned(),
        checks: merged.checks.to_vec(),
        policy: Policy {
            path: pipeline::PATH.to_owned(),
            digest: facts.policy_digest.clone().map(|sha256| Sha256Digest { sha256 }),
        },
        gate: report
            .rules
            .iter()
            .map(|r| GateRule {
                rule: r.rule.clone(),
                passed: r.passed,
                message: r.message.clone(),
                satisfy: r.satisfy.clone(),
            })
            .collect(),
        weakened: facts.weakened.clone(),
    }
    .statement()
}
