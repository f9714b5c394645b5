//! Deployments of builds to environments, and the decisions people take on
//! them: approvals, rejections and manual test sign-offs.
//!
//! Every decision is checked and the deployment gate evaluated inside the
//! writer's transaction, from facts gathered in it: who held which duty in
//! every change of the release (recorded by each merge), who asked for the
//! deployment, who is in the environment's groups now. The environment's
//! definition and the release's changes are read from git by the caller
//! (the mainline tip's pipeline file; the merges between what is live and
//! the candidate) and passed in.

use std::collections::{BTreeMap, BTreeSet};

use custody_api::{DecisionView, DeploymentView};
use custody_domain::access::DeployAction;
use custody_domain::audit::{NewEvent, SYSTEM_ACTOR};
use custody_domain::deploy::{self, DeployFacts, DeployReport, Previous, SignOff};
use custody_domain::pipeline::Environment;
use custody_domain::status::DeploymentStatus;
use custody_domain::{GroupName, Reason, Timestamp, UserName};
use serde::Serialize;
use serde_json::json;

use crate::lookups::{group_members, parse_user, recorded_decisions, ProjectAccess};
use crate::tx::{Reads, Tx};
use crate::{col, now_ms, Authenticated, Result, Store, StoreError};

/// A decision someone took on a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeployDecision {
    /// Approves it.
    Approve,
    /// Rejects it: it will not run.
    Reject,
    /// Signs off its manual tests as passed.
    TestPassed,
    /// Signs off its manual tests as failed.
    TestFailed,
}

impl DeployDecision {
    /// The decision's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployDecision::Approve => "approve",
            DeployDecision::Reject => "reject",
            DeployDecision::TestPassed => "test_passed",
            DeployDecision::TestFailed => "test_failed",
        }
    }
}

/// Where one person stands on a pending deployment: why each decision they
/// might take would be refused, if it would.
#[derive(Clone, Debug, Default)]
pub struct Standing {
    /// Why their approval or rejection would be refused.
    pub approve: Option<Reason>,
    /// Why their test sign-off would be refused.
    pub sign_off: Option<Reason>,
}

/// What the caller read from git for a deployment's gate.
#[derive(Clone, Debug)]
pub struct DeployContext {
    /// The environment, as the mainline tip's pipeline file defines it
    /// (or, where the tip no longer defines it, the first definition that
    /// governs it).
    pub environment: Environment,
    /// Other definitions of the environment the deployment must satisfy
    /// too, where they differ from `environment`: as the pipeline of the
    /// commit live there has it, and as the release's own has it, each with
    /// where it comes from. A change that weakens a gate never governs its
    /// own deployment alone.
    pub also: Vec<(String, Environment)>,
    /// The numbers of the changes in the release: every change merged
    /// between the commit live in the environment and the candidate.
    pub changes: Vec<i64>,
}

/// An environment as it is now.
#[derive(Clone, Debug, Default)]
pub struct EnvironmentNow {
    /// Its newest successful deployment: what is live there.
    pub live: Option<DeploymentView>,
    /// Deployments pending, queued or running, newest first.
    pub waiting: Vec<DeploymentView>,
}

/// A duty someone held in a merged change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Duty {
    /// Wrote some of its commits.
    Author,
    /// Approved it in review.
    Reviewer,
}

/// Who held a duty in which change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChangeDuty {
    /// The change's number.
    pub change: i64,
    /// The person.
    pub user: UserName,
    /// The duty.
    pub duty: Duty,
}

/// How many values one `IN (…)` list binds: well under SQLite's and
/// PostgreSQL's limits on parameters.
const IN_LIST_CHUNK: usize = 500;

/// `$first, $first+1, …` for `count` parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// The recorded duties of `changes`, ordered by change, duty and person;
/// one query per [`IN_LIST_CHUNK`] changes.
async fn release_duties(
    conn: &mut sqlx::AnyConnection,
    dialect: crate::Dialect,
    project_id: i64,
    changes: &[i64],
) -> Result<Vec<ChangeDuty>> {
    let mut found = Vec::new();
    for chunk in changes.chunks(IN_LIST_CHUNK) {
        let sql = dialect.sql_owned(format!(
            "SELECT c.number, d.user_name, d.duty FROM change_duties d JOIN changes c ON c.id = d.change_id \
             WHERE c.project_id = $1 AND c.number IN ({})",
            placeholders(2, chunk.len())
        ));
        let mut query = sqlx::query(&sql).bind(project_id);
        for number in chunk {
            query = query.bind(number);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let duty = match col::<String>(&row, "duty")?.as_str() {
                "author" => Duty::Author,
                "reviewer" => Duty::Reviewer,
                other => return Err(StoreError::Corrupt(format!("unknown duty {other:?} in change_duties"))),
            };
            found.push(ChangeDuty { change: col(&row, "number")?, user: parse_user(col(&row, "user_name")?)?, duty });
        }
    }
    found.sort_by(|a, b| (a.change, a.duty, &a.user).cmp(&(b.change, b.duty, &b.user)));
    Ok(found)
}

const DEPLOYMENT_COLUMNS: &str = "d.id, d.number, p.name AS project, d.environment, b.number AS build, \
     b.commit_sha, d.status, u.name AS requested_by, d.break_glass_reason, d.reason, d.cancel_requested, d.created_at, d.queued_at, \
     d.finished_at FROM deployments d JOIN projects p ON p.id = d.project_id JOIN builds b ON b.id = d.build_id \
     LEFT JOIN users u ON u.id = d.requested_by";

fn deployment_view(row: &sqlx::any::AnyRow) -> Result<DeploymentView> {
    Ok(DeploymentView {
        number: col(row, "number")?,
        project: col(row, "project")?,
        environment: col(row, "environment")?,
        build: col(row, "build")?,
        commit: col(row, "commit_sha")?,
        status: crate::status_col(row, "status", DeploymentStatus::parse)?,
        requested_by: col(row, "requested_by")?,
        break_glass: col(row, "break_glass_reason")?,
        reason: col(row, "reason")?,
        cancel_requested: col(row, "cancel_requested")?,
        created_at: Timestamp::from_millis(col(row, "created_at")?),
        queued_at: col::<Option<i64>>(row, "queued_at")?.map(Timestamp::from_millis),
        finished_at: col::<Option<i64>>(row, "finished_at")?.map(Timestamp::from_millis),
        decisions: Vec::new(),
    })
}

/// One deployment with its decisions, read in the transaction.
async fn load(tx: &mut impl Reads, project_id: i64, number: i64) -> Result<(i64, i64, DeploymentView)> {
    let sql = tx.dialect().sql_owned(format!("SELECT {DEPLOYMENT_COLUMNS} WHERE d.project_id = $1 AND d.number = $2"));
    let row = sqlx::query(&sql).bind(project_id).bind(number).fetch_optional(tx.conn()).await?;
    let row = row.ok_or_else(|| StoreError::not_found("deployment", number))?;
    let id: i64 = col(&row, "id")?;
    let mut view = deployment_view(&row)?;
    let sql = tx.sql(
        "SELECT u.name, x.kind, x.message, x.at FROM deployment_decisions x JOIN users u ON u.id = x.user_id \
         WHERE x.deployment_id = $1 ORDER BY x.id",
    );
    for row in sqlx::query(&sql).bind(id).fetch_all(tx.conn()).await? {
        view.decisions.push(DecisionView {
            user: col(&row, "name")?,
            kind: col(&row, "kind")?,
            message: col(&row, "message")?,
            at: Timestamp::from_millis(col(&row, "at")?),
        });
    }
    let build_id: i64 = sqlx::query_scalar(&tx.sql("SELECT build_id FROM deployments WHERE id = $1"))
        .bind(id)
        .fetch_one(tx.conn())
        .await?;
    Ok((id, build_id, view))
}

/// The facts of a deployment's gate, read in the transaction.
struct Gathered {
    provenance: std::result::Result<(), String>,
    /// What each environment a definition names in `after` says.
    previous: BTreeMap<String, Previous>,
    authors: BTreeSet<UserName>,
    reviewers: BTreeSet<UserName>,
    /// The members of each group a definition names.
    members: BTreeMap<GroupName, BTreeSet<UserName>>,
    requester: Option<UserName>,
    approvals: Vec<UserName>,
    rejections: Vec<UserName>,
    sign_offs: Vec<SignOff>,
    break_glass: bool,
}

/// Nobody: the members of a group no definition names.
static NOBODY: BTreeSet<UserName> = BTreeSet::new();

impl Gathered {
    fn facts<'a>(&'a self, environment: &'a Environment) -> DeployFacts<'a> {
        let members = |group: &Option<GroupName>| group.as_ref().and_then(|g| self.members.get(g)).unwrap_or(&NOBODY);
        DeployFacts {
            environment,
            provenance: self.provenance.clone(),
            previous: environment.after.as_ref().and_then(|after| self.previous.get(after)).cloned(),
            authors: &self.authors,
            reviewers: &self.reviewers,
            requester: self.requester.as_ref(),
            approvals: &self.approvals,
            rejections: &self.rejections,
            approvers: members(&environment.approvers),
            testers: members(&environment.testers),
            sign_offs: &self.sign_offs,
            now_ms: now_ms(),
            break_glass: self.break_glass,
        }
    }

    /// The facts under every definition that governs the deployment, the
    /// primary first.
    fn gates<'a>(&'a self, context: &'a DeployContext) -> Vec<(&'a str, DeployFacts<'a>)> {
        std::iter::once(("the mainline tip's pipeline", &context.environment))
            .chain(context.also.iter().map(|(source, env)| (source.as_str(), env)))
            .map(|(source, env)| (source, self.facts(env)))
            .collect()
    }
}

async fn gather(
    tx: &mut impl Reads,
    project_id: i64,
    build_id: i64,
    view: &DeploymentView,
    context: &DeployContext,
) -> Result<Gathered> {
    prove_decisions(tx, view).await?;
    // Whether each person who decided is an approver or a tester rests on
    // their memberships as custody wrote them.
    let deciders: BTreeSet<&str> = view.decisions.iter().map(|d| d.user.as_str()).collect();
    for user in deciders {
        crate::seals::check(tx, &format!("user:{user}")).await?;
    }
    // Provenance: a successful, signed build of a commit custody merged.
    let sql = tx.sql("SELECT status, provenance, change_number FROM builds WHERE id = $1");
    let row = sqlx::query(&sql).bind(build_id).fetch_one(tx.conn()).await?;
    let status = crate::status_col(&row, "status", custody_domain::status::BuildStatus::parse)?;
    let signed = col::<Option<String>>(&row, "provenance")?.is_some();
    let merged: Option<i64> = col(&row, "change_number")?;
    let succeeded = status == custody_domain::status::BuildStatus::Succeeded;
    if succeeded {
        crate::builds::prove_build(tx, &view.project, view.build, &view.commit, status.as_str()).await?;
    }
    let provenance = if !succeeded {
        Err(format!("build {} {status}, so it has no artifacts to deploy", view.build))
    } else if !signed {
        Err(format!("build {} has no signed provenance", view.build))
    } else if merged.is_none() {
        Err(format!("build {} is not of a commit custody merged", view.build))
    } else {
        Ok(())
    };
    // Owned, so that nothing borrowed from an iterator lives across an await.
    let definitions: Vec<Environment> =
        std::iter::once(&context.environment).chain(context.also.iter().map(|(_, e)| e)).cloned().collect();
    let afters: BTreeSet<String> = definitions.iter().filter_map(|e| e.after.clone()).collect();
    let groups: BTreeSet<GroupName> =
        definitions.iter().flat_map(|e| e.approvers.iter().chain(&e.testers)).cloned().collect();
    let mut previous = BTreeMap::new();
    for after in afters {
        // The first success there, as custody recorded it: its live time
        // is its recorded finish, never a row's.
        let sql = tx.sql(
            "SELECT number FROM deployments WHERE project_id = $1 AND environment = $2 \
             AND build_id = $3 AND status = 'succeeded' ORDER BY finished_at, number LIMIT 1",
        );
        let first: Option<i64> =
            sqlx::query_scalar(&sql).bind(project_id).bind(&after).bind(build_id).fetch_optional(tx.conn()).await?;
        let since = match first {
            Some(number) => Some(succeeded_at(tx, &view.project, number).await?),
            None => None,
        };
        previous.insert(after.clone(), Previous { environment: after, live_since_ms: since });
    }
    let mut authors = BTreeSet::new();
    let mut reviewers = BTreeSet::new();
    // Who wrote and who reviewed the release, as each merge recorded it.
    crate::seals::check_changes(tx, &view.project, &context.changes).await?;
    let dialect = tx.dialect();
    for duty in release_duties(tx.conn(), dialect, project_id, &context.changes).await? {
        match duty.duty {
            Duty::Author => authors.insert(duty.user),
            Duty::Reviewer => reviewers.insert(duty.user),
        };
    }
    let mut members = BTreeMap::new();
    for group in groups {
        let found = group_members(tx, &group).await?;
        members.insert(group, found);
    }
    let requester = view.requested_by.clone().map(parse_user).transpose()?;
    let mut approvals = Vec::new();
    let mut rejections = Vec::new();
    let mut sign_offs = Vec::new();
    for decision in &view.decisions {
        let user = parse_user(decision.user.clone())?;
        match decision.kind.as_str() {
            "approve" => approvals.push(user),
            "reject" => rejections.push(user),
            "test_passed" => sign_offs.push(SignOff { tester: user, passed: true }),
            _ => sign_offs.push(SignOff { tester: user, passed: false }),
        }
    }
    Ok(Gathered {
        provenance,
        previous,
        authors,
        reviewers,
        members,
        requester,
        approvals,
        rejections,
        sign_offs,
        break_glass: view.break_glass.is_some(),
    })
}

/// When custody recorded deployment `number` succeeding; refuses, naming
/// the row, when its events do not end in that success.
async fn succeeded_at(tx: &mut impl Reads, project: &str, number: i64) -> Result<i64> {
    let events = crate::proof::proven_events(tx, &format!("deployment:{project}/{number}")).await?;
    match events.last() {
        Some(last) if last.action == "deploy.finish" && crate::proof::detail(last, "status") == Some("succeeded") => {
            Ok(last.at)
        }
        _ => Err(crate::proof::unproven(format!(
            "deployments row {number} of {project}: it says succeeded, but custody never recorded it succeeding \
             (its status was set around custody)"
        ))),
    }
}

/// The action recording that a deployment succeeded, about its environment.
const ENVIRONMENT_DEPLOYED: &str = "environment.deployed";

/// The ledger subject of an environment's chain of successful deployments.
fn environment_subject(project: &str, environment: &str) -> String {
    format!("environment:{project}/{environment}")
}

/// A successful deployment of an environment, as its chain recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveDeployment {
    /// The deployment's number.
    pub deployment: i64,
    /// The build it deployed.
    pub build: i64,
    /// When it finished, milliseconds since the Unix epoch.
    pub finished_at: i64,
    /// Its signed attestation's digest ([`custody_formats::Envelope::digest`]).
    pub envelope_sha256: Option<String>,
    /// Why glass was broken, for an emergency deployment.
    pub break_glass: Option<String>,
}

/// Checks a deployment's decision rows against its proven events: exactly
/// the approvals, rejections and sign-offs custody recorded, in order. A
/// decision inserted, edited or deleted around custody fails closed, naming
/// the row.
async fn prove_decisions(tx: &mut impl Reads, view: &DeploymentView) -> Result<Vec<crate::proof::TaggedEvent>> {
    let subject = format!("deployment:{}/{}", view.project, view.number);
    let events = crate::proof::proven_events(tx, &subject).await?;
    let recorded = recorded_decisions(&events);
    let rows: Vec<(&str, &str)> = view.decisions.iter().map(|d| (d.user.as_str(), d.kind.as_str())).collect();
    if rows != recorded {
        let position = rows.iter().zip(&recorded).position(|(a, b)| a != b).unwrap_or(rows.len().min(recorded.len()));
        let what = match (rows.get(position), recorded.get(position)) {
            (Some((user, kind)), _) if !recorded.contains(&(user, kind)) => {
                format!("{user} {kind} was never recorded by custody (inserted or edited around custody)")
            }
            (_, Some((user, kind))) => {
                format!("custody recorded {user} {kind} and the row is gone (deleted around custody)")
            }
            (Some((user, kind)), None) => format!("{user} {kind} was never recorded by custody"),
            (None, None) => "the decisions are not the ones custody recorded".into(),
        };
        return Err(crate::proof::unproven(format!(
            "deployment_decisions of deployment {} of {}: {what}",
            view.number, view.project
        )));
    }
    Ok(events)
}

/// Fails a deployment that will not run (its deployer vanished, or custody
/// cannot prove it queued it), saying why, and records that it did.
async fn fail_unrun(tx: &mut Tx, id: i64, subject: &str, reason: String, now: i64) -> Result<()> {
    let sql = tx.sql(
        "UPDATE deployments SET status = 'failed', reason = $1, finished_at = $2, lease_until = NULL WHERE id = $3",
    );
    sqlx::query(&sql).bind(&reason).bind(now).bind(id).execute(tx.conn()).await?;
    tx.audit(NewEvent {
        actor: SYSTEM_ACTOR.into(),
        action: "deploy.finish".into(),
        subject: subject.to_owned(),
        details: json!({ "status": "failed", "reason": reason }),
    })
    .await?;
    Ok(())
}

/// Checks that custody itself queued a deployment: its decisions are the
/// recorded ones, its request names its environment and build, and the last
/// thing recorded about it is that its gate opened.
async fn prove_queued(tx: &mut Tx, view: &DeploymentView) -> Result<()> {
    use crate::proof::{detail, unproven};
    let events = prove_decisions(tx, view).await?;
    let request =
        events.iter().find(|e| matches!(e.action.as_str(), "deploy.request" | "deploy.promote" | "deploy.break_glass"));
    let Some(request) = request else {
        return Err(unproven(format!(
            "deployments row {} of {}: custody never recorded a request for it (inserted around custody)",
            view.number, view.project
        )));
    };
    let build = request.details.get("build").and_then(serde_json::Value::as_i64);
    if detail(request, "environment") != Some(view.environment.as_str()) || build != Some(view.build) {
        return Err(unproven(format!(
            "deployments row {} of {}: build {} to {} is not what custody recorded (edited around custody)",
            view.number, view.project, view.build, view.environment
        )));
    }
    let last = events.iter().rev().find(|e| e.action != "deploy.cancel").map(|e| e.action.as_str());
    if last != Some("deploy.queue") {
        return Err(unproven(format!(
            "deployments row {} of {}: it is queued, but custody never recorded its gate opening (its status was \
             set around custody)",
            view.number, view.project
        )));
    }
    // The build, and exactly the artifacts its builder recorded.
    let built = crate::builds::prove_build(tx, &view.project, view.build, &view.commit, "succeeded").await?;
    let recorded: BTreeSet<(String, String)> = built
        .last()
        .and_then(|e| e.details.get("artifacts"))
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a.get("name")?.as_str()?.to_owned(), a.get("sha256")?.as_str()?.to_owned())))
        .collect();
    let sql = tx.sql(
        "SELECT a.name, a.digest FROM artifacts a JOIN builds b ON b.id = a.build_id JOIN projects p ON p.id = b.project_id \
         WHERE p.name = $1 AND b.number = $2",
    );
    let mut stored = BTreeSet::new();
    for row in sqlx::query(&sql).bind(&view.project).bind(view.build).fetch_all(tx.conn()).await? {
        stored.insert((col::<String>(&row, "name")?, col::<String>(&row, "digest")?));
    }
    if stored != recorded {
        return Err(unproven(format!(
            "artifacts of build {} of {}: they are not the artifacts its builder recorded (written around custody)",
            view.build, view.project
        )));
    }
    Ok(())
}

/// Evaluates a deployment's gate from the facts in the transaction.
async fn evaluate(
    tx: &mut impl Reads,
    project_id: i64,
    build_id: i64,
    view: &DeploymentView,
    context: &DeployContext,
) -> Result<DeployReport> {
    let gathered = gather(tx, project_id, build_id, view, context).await?;
    Ok(deploy::evaluate_all(&gathered.gates(context)))
}

/// Queues a pending deployment whose gate opened.
/// Queues a pending deployment whose gate opened, recording that it did:
/// the deployer runs only a deployment whose queueing custody recorded.
async fn open_if_ready(tx: &mut Tx, id: i64, view: &DeploymentView, report: &DeployReport) -> Result<bool> {
    if !report.open {
        return Ok(false);
    }
    let sql = tx.sql("UPDATE deployments SET status = 'queued', queued_at = $1 WHERE id = $2 AND status = 'pending'");
    let done = sqlx::query(&sql).bind(now_ms()).bind(id).execute(tx.conn()).await?;
    if done.rows_affected() == 1 {
        tx.jobs_queued();
        tx.audit(NewEvent {
            actor: SYSTEM_ACTOR.into(),
            action: "deploy.queue".into(),
            subject: format!("deployment:{}/{}", view.project, view.number),
            details: json!({
                "environment": view.environment,
                "build": view.build,
                "gate": report.rules.iter().map(|r| (r.rule.clone(), r.passed)).collect::<BTreeMap<_, _>>(),
            }),
        })
        .await?;
    }
    Ok(done.rows_affected() == 1)
}

fn require_member(access: &ProjectAccess, actor: &Authenticated, action: DeployAction) -> Result<()> {
    crate::allowed(custody_domain::access::decide_deploy_member(
        &actor.name,
        &access.project,
        access.role,
        actor.scopes,
        action,
    ))
}

/// Makes a pending deployment, evaluates its gate and queues it if open.
async fn request(
    tx: &mut Tx,
    requester: Option<(i64, String)>,
    project_id: i64,
    project: String,
    build: i64,
    context: DeployContext,
    break_glass: Option<String>,
) -> Result<(DeploymentView, DeployReport)> {
    let sql = tx.sql("SELECT id FROM builds WHERE project_id = $1 AND number = $2");
    let build_id: Option<i64> = sqlx::query_scalar(&sql).bind(project_id).bind(build).fetch_optional(tx.conn()).await?;
    let build_id = build_id.ok_or_else(|| StoreError::not_found("build", format!("{}/{build}", project)))?;
    let env = context.environment.name.clone();
    let sql = tx.sql(
        "SELECT number FROM deployments WHERE project_id = $1 AND environment = $2 AND build_id = $3 \
         AND status IN ('pending', 'queued', 'running')",
    );
    let waiting: Option<i64> =
        sqlx::query_scalar(&sql).bind(project_id).bind(&env).bind(build_id).fetch_optional(tx.conn()).await?;
    if let Some(waiting) = waiting {
        return Err(StoreError::Conflict(format!(
            "deployment {waiting} of build {build} to {env} is already waiting; approve or cancel it"
        )));
    }
    let number: i64 =
        sqlx::query_scalar(&tx.sql("SELECT COALESCE(MAX(number), 0) + 1 FROM deployments WHERE project_id = $1"))
            .bind(project_id)
            .fetch_one(tx.conn())
            .await?;
    let sql = tx.sql(
        "INSERT INTO deployments (project_id, number, environment, build_id, status, requested_by, \
         break_glass_reason, created_at) VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7)",
    );
    sqlx::query(&sql)
        .bind(project_id)
        .bind(number)
        .bind(&env)
        .bind(build_id)
        .bind(requester.as_ref().map(|(id, _)| *id))
        .bind(&break_glass)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
    let (id, build_id, view) = load(tx, project_id, number).await?;
    let report = evaluate(tx, project_id, build_id, &view, &context).await?;
    // Provenance is checked at once: a build that can never
    // deploy is refused, not left waiting.
    crate::allowed(deploy::decide_provenance(&report))?;
    tx.audit(NewEvent {
        actor: requester.as_ref().map(|(_, name)| name.clone()).unwrap_or_else(|| SYSTEM_ACTOR.to_owned()),
        action: match (&requester, &break_glass) {
            (None, _) => "deploy.promote".into(),
            (Some(_), Some(_)) => "deploy.break_glass".into(),
            (Some(_), None) => "deploy.request".into(),
        },
        subject: format!("deployment:{}/{number}", project),
        details: json!({
            "environment": env,
            "build": build,
            "commit": view.commit,
            "release": context.changes,
            "break_glass": break_glass,
        }),
    })
    .await?;
    if let (Some(reason), Some((_, requester))) = (&break_glass, &requester) {
        crate::findings::open(
            tx,
            "break_glass",
            Some(project_id),
            &format!("deployment:{project}/{number}"),
            &format!("{requester} broke the glass to deploy build {build} to {env}: {reason}"),
            std::slice::from_ref(requester),
        )
        .await?;
    }
    open_if_ready(tx, id, &view, &report).await?;
    let (_, _, view) = load(tx, project_id, number).await?;
    Ok((view, report))
}

impl Store {
    /// Asks for a deployment of build `build` to `context.environment`. It
    /// waits as `pending` until its gate opens; a deployment whose gate is
    /// open at once is queued. `break_glass` (a reason) skips soak and test
    /// sign-off, never provenance or approvals.
    pub async fn request_deployment(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        build: i64,
        context: DeployContext,
        break_glass: Option<String>,
    ) -> Result<(DeploymentView, DeployReport)> {
        require_member(access, actor, DeployAction::Request)?;
        let requester = Some((actor.user_id, actor.name.to_string()));
        let (project_id, project) = (access.project_id, access.project.to_string());
        self.write(move |tx| {
            Box::pin(async move { request(tx, requester, project_id, project, build, context, break_glass).await })
        })
        .await
    }

    /// Promotes a build to an environment on custody's own account: after a
    /// build, to the environments that follow none; after a deployment, to
    /// those that follow it. `None` when one is waiting already.
    pub async fn promote(
        &self,
        project: &custody_domain::ProjectName,
        build: i64,
        context: DeployContext,
    ) -> Result<Option<(DeploymentView, DeployReport)>> {
        let project = project.to_string();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql("SELECT id FROM projects WHERE name = $1");
                let project_id: i64 = sqlx::query_scalar(&sql)
                    .bind(&project)
                    .fetch_optional(tx.conn())
                    .await?
                    .ok_or_else(|| StoreError::not_found("project", &project))?;
                // Once per build and environment: a promotion repeated after
                // a crash (or by the repair at start-up) finds it made.
                let sql = tx.sql(
                    "SELECT d.number FROM deployments d JOIN builds b ON b.id = d.build_id \
                     WHERE d.project_id = $1 AND b.number = $2 AND d.environment = $3 LIMIT 1",
                );
                let made: Option<i64> = sqlx::query_scalar(&sql)
                    .bind(project_id)
                    .bind(build)
                    .bind(&context.environment.name)
                    .fetch_optional(tx.conn())
                    .await?;
                if made.is_some() {
                    return Ok(None);
                }
                match request(tx, None, project_id, project, build, context, None).await {
                    Ok(made) => Ok(Some(made)),
                    Err(StoreError::Conflict(_)) => Ok(None),
                    Err(other) => Err(other),
                }
            })
        })
        .await
    }

    /// What promotions may be owed: the newest successful build of each
    /// project's default branch (to the environments that follow none), and
    /// the newest successful deployment of each environment (to those that
    /// follow it), as `(project, build, commit, after)`. Promoting each
    /// again is harmless (a promotion is made once per build and
    /// environment), so this repairs the promotions a process that died
    /// right after a success never made.
    pub async fn promotions_owed(&self) -> Result<Vec<(String, i64, String, Option<String>)>> {
        let sql = self.sql(
            "SELECT p.name, b.number, b.commit_sha FROM builds b JOIN projects p ON p.id = b.project_id \
             WHERE b.status = 'succeeded' AND b.branch = p.default_branch AND b.number = \
               (SELECT MAX(o.number) FROM builds o WHERE o.project_id = b.project_id AND o.status = 'succeeded' \
                AND o.branch = p.default_branch)",
        );
        let mut owed = Vec::new();
        for row in sqlx::query(&sql).fetch_all(self.readers()).await? {
            owed.push((col(&row, "name")?, col(&row, "number")?, col(&row, "commit_sha")?, None));
        }
        let sql = self.sql(
            "SELECT p.name, b.number, b.commit_sha, d.environment FROM deployments d \
             JOIN projects p ON p.id = d.project_id JOIN builds b ON b.id = d.build_id \
             WHERE d.status = 'succeeded' AND d.number = \
               (SELECT MAX(o.number) FROM deployments o WHERE o.project_id = d.project_id \
                AND o.environment = d.environment AND o.status = 'succeeded')",
        );
        for row in sqlx::query(&sql).fetch_all(self.readers()).await? {
            owed.push((
                col(&row, "name")?,
                col(&row, "number")?,
                col(&row, "commit_sha")?,
                Some(col(&row, "environment")?),
            ));
        }
        Ok(owed)
    }

    /// Records a person's decision on a pending deployment, if it is theirs
    /// to take, and queues the deployment when its gate opens.
    pub async fn decide_deployment(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        number: i64,
        decision: DeployDecision,
        message: String,
        context: DeployContext,
    ) -> Result<(DeploymentView, DeployReport)> {
        crate::allowed(custody_domain::access::decide_deploy_token(actor.scopes))?;
        if decision == DeployDecision::Reject && message.trim().is_empty() {
            return Err(StoreError::Invalid(custody_domain::InvalidInput::new(
                "message",
                "",
                "say why the deployment is rejected",
            )));
        }
        let (actor, access) = (actor.clone(), access.clone());
        self.write(move |tx| {
            Box::pin(async move {
                let (id, build_id, view) = load(tx, access.project_id, number).await?;
                if view.status != DeploymentStatus::Pending {
                    return Err(StoreError::Conflict(format!(
                        "deployment {number} is {}; decisions are taken only while it is pending",
                        view.status
                    )));
                }
                if view.environment != context.environment.name {
                    return Err(StoreError::Conflict(format!(
                        "deployment {number} goes to {}, not {}",
                        view.environment, context.environment.name
                    )));
                }
                // Whether this person may take this decision, by the same
                // rules the gate applies, on their memberships as custody
                // wrote them.
                crate::seals::check(tx, &format!("user:{}", actor.name)).await?;
                let who = actor.name.clone();
                let gathered = gather(tx, access.project_id, build_id, &view, &context).await?;
                let gates = gathered.gates(&context);
                let refusal = match decision {
                    DeployDecision::Approve | DeployDecision::Reject => deploy::approval_refusal,
                    DeployDecision::TestPassed | DeployDecision::TestFailed => deploy::sign_off_refusal,
                };
                let report = deploy::evaluate_all(&gates);
                crate::allowed(deploy::decide_under_all(&gates, &who, refusal))?;
                let sql = tx.sql(
                    "INSERT INTO deployment_decisions (deployment_id, user_id, kind, message, at) \
                     VALUES ($1, $2, $3, $4, $5)",
                );
                sqlx::query(&sql)
                    .bind(id)
                    .bind(actor.user_id)
                    .bind(decision.as_str())
                    .bind(&message)
                    .bind(now_ms())
                    .execute(tx.conn())
                    .await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: format!("deploy.{}", decision.as_str()),
                    subject: format!("deployment:{}/{number}", access.project),
                    details: json!({ "environment": view.environment, "build": view.build, "message": message }),
                })
                .await?;
                if decision == DeployDecision::Reject {
                    let sql = tx
                        .sql("UPDATE deployments SET status = 'rejected', reason = $1, finished_at = $2 WHERE id = $3");
                    sqlx::query(&sql)
                        .bind(format!("rejected by {who}: {message}"))
                        .bind(now_ms())
                        .bind(id)
                        .execute(tx.conn())
                        .await?;
                }
                let (_, _, view) = load(tx, access.project_id, number).await?;
                let report = if decision == DeployDecision::Reject {
                    report
                } else {
                    let report = evaluate(tx, access.project_id, build_id, &view, &context).await?;
                    open_if_ready(tx, id, &view, &report).await?;
                    report
                };
                let (_, _, view) = load(tx, access.project_id, number).await?;
                Ok((view, report))
            })
        })
        .await
    }

    /// A deployment's gate as it stands.
    pub async fn deployment_gate(
        &self,
        access: &ProjectAccess,
        number: i64,
        context: DeployContext,
    ) -> Result<(DeploymentView, DeployReport)> {
        // Only read: a reader's connection, not the writer's queue. Every
        // decision evaluates the gate again inside the writer.
        let mut reader = self.reader().await?;
        let (_, build_id, view) = load(&mut reader, access.project_id, number).await?;
        let report = evaluate(&mut reader, access.project_id, build_id, &view, &context).await?;
        Ok((view, report))
    }

    /// A deployment's gate as it stands, and where `who` stands on it: the
    /// reason their approval (or rejection) and their test sign-off would be
    /// refused, by the same rules [`Store::decide_deployment`] applies, so a
    /// page can show the reason before anyone clicks.
    pub async fn deployment_standing(
        &self,
        access: &ProjectAccess,
        number: i64,
        context: DeployContext,
        who: &UserName,
    ) -> Result<(DeploymentView, DeployReport, Standing)> {
        let mut reader = self.reader().await?;
        let (_, build_id, view) = load(&mut reader, access.project_id, number).await?;
        let gathered = gather(&mut reader, access.project_id, build_id, &view, &context).await?;
        let gates = gathered.gates(&context);
        let standing = Standing {
            approve: deploy::refusal_under_all(&gates, who, deploy::approval_refusal),
            sign_off: deploy::refusal_under_all(&gates, who, deploy::sign_off_refusal),
        };
        Ok((view, deploy::evaluate_all(&gates), standing))
    }

    /// The decisions taken on a project's deployments (only those to
    /// `environment` when given), with the number of the deployment each
    /// was taken on, in order: one query for a whole list of deployments.
    pub async fn deployment_decisions(
        &self,
        access: &ProjectAccess,
        environment: Option<&str>,
    ) -> Result<Vec<(i64, DecisionView)>> {
        let sql = self.sql(
            "SELECT d.number, u.name, x.kind, x.message, x.at FROM deployment_decisions x \
             JOIN deployments d ON d.id = x.deployment_id JOIN users u ON u.id = x.user_id \
             WHERE d.project_id = $1 AND ($2 = '' OR d.environment = $2) ORDER BY x.id",
        );
        let rows = sqlx::query(&sql)
            .bind(access.project_id)
            .bind(environment.unwrap_or_default())
            .fetch_all(self.readers())
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    col(row, "number")?,
                    DecisionView {
                        user: col(row, "name")?,
                        kind: col(row, "kind")?,
                        message: col(row, "message")?,
                        at: Timestamp::from_millis(col(row, "at")?),
                    },
                ))
            })
            .collect()
    }

    /// Cancels a deployment that has not started.
    pub async fn cancel_deployment(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        number: i64,
        why: String,
    ) -> Result<DeploymentView> {
        require_member(access, actor, DeployAction::Cancel)?;
        let (actor, access) = (actor.clone(), access.clone());
        self.write(move |tx| {
            Box::pin(async move {
                let (id, _, view) = load(tx, access.project_id, number).await?;
                let reason = format!("cancelled by {}: {why}", actor.name);
                let running = view.status == DeploymentStatus::Running;
                let done = if running {
                    // The deployer stops the script and records the end.
                    let sql = tx.sql(
                        "UPDATE deployments SET cancel_requested = $1 WHERE id = $2 AND status = 'running' \
                         AND cancel_requested IS NULL",
                    );
                    sqlx::query(&sql).bind(&reason).bind(id).execute(tx.conn()).await?
                } else {
                    let sql = tx.sql(
                        "UPDATE deployments SET status = 'cancelled', reason = $1, finished_at = $2 \
                         WHERE id = $3 AND status IN ('pending', 'queued')",
                    );
                    sqlx::query(&sql).bind(&reason).bind(now_ms()).bind(id).execute(tx.conn()).await?
                };
                if done.rows_affected() != 1 {
                    let state = match &view.cancel_requested {
                        Some(asked) => format!("already being cancelled ({asked})"),
                        None => view.status.to_string(),
                    };
                    return Err(StoreError::Conflict(format!(
                        "deployment {number} is {state}; only a pending, queued or running one can be cancelled"
                    )));
                }
                if running {
                    tx.jobs_queued();
                } else if view.break_glass.is_some() {
                    // Nothing ran: the break-glass finding has nothing left
                    // to review.
                    crate::findings::withdraw(tx, &format!("deployment:{}/{number}", access.project), &reason).await?;
                }
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "deploy.cancel".into(),
                    subject: format!("deployment:{}/{number}", access.project),
                    details: json!({
                        "environment": view.environment,
                        "build": view.build,
                        "reason": why,
                        "was": view.status,
                    }),
                })
                .await?;
                Ok(load(tx, access.project_id, number).await?.2)
            })
        })
        .await
    }

    /// What is live in each environment of a project (its newest success,
    /// as [`Store::live_commit`] defines it) and what waits to go there,
    /// however many deployments the project has made.
    pub async fn environments_now(&self, access: &ProjectAccess) -> Result<BTreeMap<String, EnvironmentNow>> {
        let sql = self.inner.dialect.sql_owned(format!(
            "SELECT {DEPLOYMENT_COLUMNS} WHERE d.project_id = $1 AND (d.status IN ('pending', 'queued', 'running') \
             OR d.id IN (SELECT (SELECT l.id FROM deployments l WHERE l.project_id = $1 AND l.environment = e.environment \
             AND l.status = 'succeeded' ORDER BY l.finished_at DESC, l.id DESC LIMIT 1) \
             FROM (SELECT DISTINCT environment FROM deployments WHERE project_id = $1) e)) \
             ORDER BY d.number DESC"
        ));
        let rows = sqlx::query(&sql).bind(access.project_id).fetch_all(self.readers()).await?;
        let mut now: BTreeMap<String, EnvironmentNow> = BTreeMap::new();
        for row in &rows {
            let view = deployment_view(row)?;
            let entry = now.entry(view.environment.clone()).or_default();
            if view.status == DeploymentStatus::Succeeded {
                entry.live = Some(view);
            } else {
                entry.waiting.push(view);
            }
        }
        Ok(now)
    }

    /// Every deployment of build `build`, oldest first.
    pub async fn deployments_of_build(&self, access: &ProjectAccess, build: i64) -> Result<Vec<DeploymentView>> {
        let sql = self.inner.dialect.sql_owned(format!(
            "SELECT {DEPLOYMENT_COLUMNS} WHERE d.project_id = $1 AND b.number = $2 ORDER BY d.number"
        ));
        let rows = sqlx::query(&sql).bind(access.project_id).bind(build).fetch_all(self.readers()).await?;
        rows.iter().map(deployment_view).collect()
    }

    /// A project's deployments, newest first; only those to `environment`
    /// when given.
    pub async fn list_deployments(
        &self,
        access: &ProjectAccess,
        environment: Option<&str>,
    ) -> Result<Vec<DeploymentView>> {
        let sql = self.inner.dialect.sql_owned(format!(
            "SELECT {DEPLOYMENT_COLUMNS} WHERE d.project_id = $1 AND ($2 = '' OR d.environment = $2) \
             ORDER BY d.number DESC LIMIT 500"
        ));
        let rows = sqlx::query(&sql)
            .bind(access.project_id)
            .bind(environment.unwrap_or_default())
            .fetch_all(self.readers())
            .await?;
        rows.iter().map(deployment_view).collect()
    }
}

pub use custody_api::{DeployOutcome, Heartbeat, LeasedDeployment};

impl Store {
    /// Releases at once the work held by `workers`, whose process is known
    /// to have ended (its start-up lock was free): their running builds are
    /// queued again and their running deployments fail (a deploy script is
    /// never repeated on its own), each with an event saying so, rather
    /// than waiting for their leases to run out. Returns how many.
    pub async fn release_dead_workers(&self, workers: Vec<String>, why: String) -> Result<usize> {
        if workers.is_empty() {
            return Ok(0);
        }
        self.write(move |tx| {
            Box::pin(async move {
                let now = now_ms();
                let mut released = 0;
                for worker in &workers {
                    let sql = tx.sql(
                        "SELECT b.id, b.number, b.attempt, p.name AS project FROM builds b \
                         JOIN projects p ON p.id = b.project_id WHERE b.status = 'running' AND b.worker = $1",
                    );
                    for row in sqlx::query(&sql).bind(worker).fetch_all(tx.conn()).await? {
                        let (id, number, project): (i64, i64, String) =
                            (col(&row, "id")?, col(&row, "number")?, col(&row, "project")?);
                        let sql = tx.sql(
                            "UPDATE builds SET status = 'queued', worker = NULL, lease_until = NULL \
                             WHERE id = $1 AND status = 'running'",
                        );
                        sqlx::query(&sql).bind(id).execute(tx.conn()).await?;
                        tx.audit(NewEvent {
                            actor: SYSTEM_ACTOR.into(),
                            action: "build.requeue".into(),
                            subject: format!("build:{project}/{number}"),
                            details: json!({ "attempt": col::<i64>(&row, "attempt")?, "worker": worker, "reason": why }),
                        })
                        .await?;
                        released += 1;
                    }
                    let sql = tx.sql(
                        "SELECT d.id, d.number, p.name AS project FROM deployments d \
                         JOIN projects p ON p.id = d.project_id WHERE d.status = 'running' AND d.worker = $1",
                    );
                    for row in sqlx::query(&sql).bind(worker).fetch_all(tx.conn()).await? {
                        let (id, number, project): (i64, i64, String) =
                            (col(&row, "id")?, col(&row, "number")?, col(&row, "project")?);
                        let reason = format!(
                            "the deployer running it ({worker}) was interrupted: {why}; a deployment is never \
                             repeated on its own: check the environment, then request the deployment again"
                        );
                        fail_unrun(tx, id, &format!("deployment:{project}/{number}"), reason, now).await?;
                        released += 1;
                    }
                }
                if released > 0 {
                    tx.jobs_queued();
                }
                Ok(released)
            })
        })
        .await
    }

    /// Takes the oldest queued deployment to an environment where nothing
    /// is running. A deployment whose deployer vanished is never run again
    /// on its own (a deploy script need not be safe to repeat): it fails,
    /// saying so.
    pub async fn lease_deployment(&self, worker: &str, lease_ms: i64) -> Result<Option<LeasedDeployment>> {
        let worker = worker.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let now = now_ms();
                let sql = tx.sql(
                    "SELECT d.id, d.number, p.name AS project, d.worker FROM deployments d \
                     JOIN projects p ON p.id = d.project_id WHERE d.status = 'running' AND d.lease_until < $1",
                );
                for row in sqlx::query(&sql).bind(now).fetch_all(tx.conn()).await? {
                    let (id, number, project): (i64, i64, String) =
                        (col(&row, "id")?, col(&row, "number")?, col(&row, "project")?);
                    let reason = format!(
                        "the deployer running it ({}) stopped answering; a deployment is never repeated on its own: \
                         check the environment, then request the deployment again",
                        col::<Option<String>>(&row, "worker")?.unwrap_or_default()
                    );
                    fail_unrun(tx, id, &format!("deployment:{project}/{number}"), reason, now).await?;
                }
                let sql = tx.sql(
                    "SELECT d.id, d.project_id, d.number, p.name AS project, d.environment, b.number AS build, \
                     b.id AS build_id, b.commit_sha, b.worker AS builder, u.name AS requested_by, d.break_glass_reason FROM deployments d \
                     JOIN projects p ON p.id = d.project_id JOIN builds b ON b.id = d.build_id \
                     LEFT JOIN users u ON u.id = d.requested_by \
                     WHERE d.status = 'queued' AND NOT EXISTS (SELECT 1 FROM deployments r \
                       WHERE r.project_id = d.project_id AND r.environment = d.environment AND r.status = 'running') \
                     ORDER BY d.id LIMIT 1",
                );
                let row = loop {
                    let Some(row) = sqlx::query(&sql).fetch_optional(tx.conn()).await? else { return Ok(None) };
                    // Nothing runs that custody did not queue: the decisions
                    // and the queueing must be the ones it recorded.
                    let (project_id, number): (i64, i64) = (col(&row, "project_id")?, col(&row, "number")?);
                    let (id, _, view) = load(tx, project_id, number).await?;
                    let why = match prove_queued(tx, &view).await {
                        Ok(()) => break row,
                        Err(StoreError::Refused(decision)) => decision.to_string(),
                        Err(other) => return Err(other),
                    };
                    let reason = format!("not run: {why}");
                    tracing::error!(deployment = number, project = %view.project, %reason, "refusing a deployment custody did not queue");
                    fail_unrun(tx, id, &format!("deployment:{}/{number}", view.project), reason, now).await?;
                };
                let id: i64 = col(&row, "id")?;
                let project_id: i64 = col(&row, "project_id")?;
                let environment: String = col(&row, "environment")?;
                let sql = tx.sql(
                    "UPDATE deployments SET status = 'running', worker = $1, lease_until = $2, started_at = $3, \
                     attempt = attempt + 1 WHERE id = $4 AND status = 'queued'",
                );
                sqlx::query(&sql).bind(&worker).bind(now + lease_ms).bind(now).bind(id).execute(tx.conn()).await?;
                let sql = tx.sql("SELECT name, digest FROM artifacts WHERE build_id = $1 ORDER BY name");
                let artifacts = sqlx::query(&sql)
                    .bind(col::<i64>(&row, "build_id")?)
                    .fetch_all(tx.conn())
                    .await?
                    .iter()
                    .map(|r| Ok((col(r, "name")?, col(r, "digest")?)))
                    .collect::<Result<Vec<(String, String)>>>()?;
                let sql = tx.sql(
                    "SELECT u.name, x.kind FROM deployment_decisions x JOIN users u ON u.id = x.user_id \
                     WHERE x.deployment_id = $1 ORDER BY x.id",
                );
                let (mut approvers, mut testers) = (Vec::new(), Vec::new());
                for r in sqlx::query(&sql).bind(id).fetch_all(tx.conn()).await? {
                    let name: String = col(&r, "name")?;
                    match col::<String>(&r, "kind")?.as_str() {
                        "approve" => approvers.push(name),
                        "test_passed" => testers.push(name),
                        _ => {}
                    }
                }
                let sql = tx.sql(
                    "SELECT MAX(number) FROM deployments WHERE project_id = $1 AND environment = $2 \
                     AND status = 'succeeded'",
                );
                let previous: Option<i64> =
                    sqlx::query_scalar(&sql).bind(project_id).bind(&environment).fetch_one(tx.conn()).await?;
                let lease = LeasedDeployment {
                    id,
                    project: col(&row, "project")?,
                    number: col(&row, "number")?,
                    environment,
                    build: col(&row, "build")?,
                    commit: col(&row, "commit_sha")?,
                    artifacts,
                    requested_by: col(&row, "requested_by")?,
                    approvers,
                    testers,
                    previous,
                    break_glass: col(&row, "break_glass_reason")?,
                    builder: col(&row, "builder")?,
                    worker: worker.clone(),
                    started_at: now,
                };
                tx.audit(NewEvent {
                    actor: SYSTEM_ACTOR.into(),
                    action: "deploy.start".into(),
                    subject: format!("deployment:{}/{}", lease.project, lease.number),
                    details: json!({ "environment": lease.environment, "build": lease.build, "worker": worker }),
                })
                .await?;
                Ok(Some(lease))
            })
        })
        .await
    }

    /// Extends a running deployment's lease while its deployer holds it:
    /// whether to go on, stop because someone cancelled it, or stop because
    /// the lease was lost.
    pub async fn heartbeat_deployment(&self, lease: &LeasedDeployment, lease_ms: i64) -> Result<Heartbeat> {
        let lease = lease.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "UPDATE deployments SET lease_until = $1 WHERE id = $2 AND status = 'running' AND worker = $3",
                );
                let done = sqlx::query(&sql)
                    .bind(now_ms() + lease_ms)
                    .bind(lease.id)
                    .bind(&lease.worker)
                    .execute(tx.conn())
                    .await?;
                if done.rows_affected() != 1 {
                    return Ok(Heartbeat::Lost);
                }
                let sql = tx.sql("SELECT cancel_requested FROM deployments WHERE id = $1");
                let asked: Option<String> = sqlx::query_scalar(&sql).bind(lease.id).fetch_one(tx.conn()).await?;
                Ok(asked.map_or(Heartbeat::Held, Heartbeat::Cancel))
            })
        })
        .await
    }

    /// Appends a running deployment's output (its secrets already
    /// redacted) to its log, while `lease`'s deployer still holds it. The
    /// whole log its finish records replaces what was appended.
    pub async fn append_deployment_log(&self, lease: &LeasedDeployment, data: String) -> Result<()> {
        let lease = lease.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "UPDATE deployments SET log = COALESCE(log, '') || $1 \
                     WHERE id = $2 AND status = 'running' AND worker = $3",
                );
                let done = sqlx::query(&sql).bind(&data).bind(lease.id).bind(&lease.worker).execute(tx.conn()).await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict(format!(
                        "deployment {}/{} is no longer leased by this deployer",
                        lease.project, lease.number
                    )));
                }
                Ok(())
            })
        })
        .await
    }

    /// Records how a deployment ended, if the deployer still holds it.
    pub async fn finish_deployment(&self, lease: &LeasedDeployment, outcome: DeployOutcome) -> Result<()> {
        self.finish(lease, outcome, true).await
    }

    /// Records how a deployment ended as custody did before environments
    /// kept their chain: the data an upgraded instance starts from.
    #[cfg(any(test, feature = "testing"))]
    pub async fn finish_deployment_without_environment_chain(
        &self,
        lease: &LeasedDeployment,
        outcome: DeployOutcome,
    ) -> Result<()> {
        self.finish(lease, outcome, false).await
    }

    async fn finish(&self, lease: &LeasedDeployment, outcome: DeployOutcome, chain: bool) -> Result<()> {
        let lease = lease.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "UPDATE deployments SET status = $1, reason = $2, exit_code = $3, log = $4, attestation = $5, \
                     finished_at = $6, lease_until = NULL WHERE id = $7 AND status = 'running' AND worker = $8",
                );
                let done = sqlx::query(&sql)
                    .bind(outcome.status.as_str())
                    .bind(&outcome.reason)
                    .bind(outcome.exit_code)
                    .bind(&outcome.log)
                    .bind(&outcome.attestation)
                    .bind(now_ms())
                    .bind(lease.id)
                    .bind(&lease.worker)
                    .execute(tx.conn())
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict(format!(
                        "deployment {}/{} is no longer held by {}",
                        lease.project, lease.number, lease.worker
                    )));
                }
                tx.audit(NewEvent {
                    actor: SYSTEM_ACTOR.into(),
                    action: "deploy.finish".into(),
                    subject: format!("deployment:{}/{}", lease.project, lease.number),
                    details: json!({
                        "environment": lease.environment,
                        "build": lease.build,
                        "commit": lease.commit,
                        "status": outcome.status,
                        "reason": outcome.reason,
                        "exit_code": outcome.exit_code,
                        "approvers": lease.approvers,
                        "testers": lease.testers,
                        "requested_by": lease.requested_by,
                        "previous": lease.previous,
                        "break_glass": lease.break_glass,
                        "envelope_sha256": outcome.attestation.as_deref().and_then(custody_formats::Envelope::digest_of_json),
                    }),
                })
                .await?;
                if chain && outcome.status == DeploymentStatus::Succeeded {
                    // The environment's own chain: what runs there, proven
                    // whole, so a later deployment cannot be hidden from
                    // whoever asks what is live.
                    tx.audit(NewEvent {
                        actor: SYSTEM_ACTOR.into(),
                        action: ENVIRONMENT_DEPLOYED.into(),
                        subject: environment_subject(&lease.project, &lease.environment),
                        details: json!({
                            "deployment": lease.number,
                            "build": lease.build,
                            "break_glass": lease.break_glass,
                            "envelope_sha256": outcome.attestation.as_deref().and_then(custody_formats::Envelope::digest_of_json),
                        }),
                    })
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// A deployment with its decisions.
    pub async fn get_deployment(&self, access: &ProjectAccess, number: i64) -> Result<DeploymentView> {
        let access = access.clone();
        // Read through the writer's connection so the view and its
        // decisions are one consistent snapshot.
        self.write(move |tx| Box::pin(async move { Ok(load(tx, access.project_id, number).await?.2) })).await
    }

    /// The signed provenance of a build, by project name and build number.
    /// When build `build` of `project` finished, as its proven `build.finish`
    /// event says (not the row's column, which a database administrator
    /// could move).
    pub async fn build_finished_at(&self, project: &custody_domain::ProjectName, build: i64) -> Result<Option<i64>> {
        let events =
            crate::proof::proven_events(&mut self.reader().await?, &format!("build:{project}/{build}")).await?;
        Ok(events.iter().rev().find(|e| e.action == "build.finish").map(|e| e.at))
    }

    pub async fn provenance_of(&self, project: &custody_domain::ProjectName, build: i64) -> Result<Option<String>> {
        let sql = self.sql(
            "SELECT b.provenance FROM builds b JOIN projects p ON p.id = b.project_id WHERE p.name = $1 AND b.number = $2",
        );
        let found: Option<Option<String>> =
            sqlx::query_scalar(&sql).bind(project.as_str()).bind(build).fetch_optional(self.readers()).await?;
        Ok(found.flatten())
    }

    /// A deployment's log and signed attestation, for `reader`: where the
    /// environment names groups of log readers (as the mainline's and the
    /// deployed commit's pipelines define it), only members of each, and
    /// auditors, read the log.
    pub async fn deployment_log(
        &self,
        reader: &Authenticated,
        access: &ProjectAccess,
        number: i64,
        log_readers: &[GroupName],
    ) -> Result<(String, Option<String>)> {
        // An auditor reads every log; for anyone else, their memberships
        // and the deployment's environment are read.
        let (mut environment, mut memberships) = (String::new(), Vec::new());
        if !reader.is_auditor {
            let mut tx = self.reader().await?;
            crate::seals::check(&mut tx, &format!("user:{}", reader.name)).await?;
            for group in log_readers {
                memberships.push((group, group_members(&mut tx, group).await?.contains(&reader.name)));
            }
            environment = load(&mut tx, access.project_id, number).await?.2.environment;
        }
        crate::allowed(custody_domain::access::decide_log_reader(reader.is_auditor, &environment, &memberships))?;
        self.deployment_record(access, number).await
    }

    /// A deployment's log and signed attestation.
    pub async fn deployment_record(&self, access: &ProjectAccess, number: i64) -> Result<(String, Option<String>)> {
        let sql = self.sql("SELECT log, attestation FROM deployments WHERE project_id = $1 AND number = $2");
        let row = sqlx::query(&sql).bind(access.project_id).bind(number).fetch_optional(self.readers()).await?;
        let row = row.ok_or_else(|| StoreError::not_found("deployment", number))?;
        Ok((col(&row, "log")?, col(&row, "attestation")?))
    }

    /// The commit live in an environment: that of its latest successful
    /// deployment.
    pub async fn live_commit(
        &self,
        project: &custody_domain::ProjectName,
        environment: &str,
    ) -> Result<Option<String>> {
        Ok(self.live_build(project, environment).await?.map(|(_, commit)| commit))
    }

    /// The build live in an environment, and its commit: that of its
    /// latest successful deployment, proven by its events (never a row
    /// written around custody).
    pub async fn live_build(
        &self,
        project: &custody_domain::ProjectName,
        environment: &str,
    ) -> Result<Option<(i64, String)>> {
        // Its gate governs the next deployment there: only a success and a
        // commit custody recorded count, never a row written around it.
        let mut reader = self.reader().await?;
        let sql = reader.sql(
            "SELECT d.number, b.number AS build, b.commit_sha FROM deployments d JOIN builds b ON b.id = d.build_id \
             JOIN projects p ON p.id = d.project_id WHERE p.name = $1 AND d.environment = $2 \
             AND d.status = 'succeeded' ORDER BY d.finished_at DESC, d.id DESC LIMIT 1",
        );
        let row = sqlx::query(&sql).bind(project.as_str()).bind(environment).fetch_optional(reader.conn()).await?;
        let Some(row) = row else { return Ok(None) };
        let (commit, build): (String, i64) = (col(&row, "commit_sha")?, col(&row, "build")?);
        succeeded_at(&mut reader, project.as_str(), col(&row, "number")?).await?;
        crate::builds::prove_build(&mut reader, project.as_str(), build, &commit, "succeeded").await?;
        Ok(Some((build, commit)))
    }

    /// The successful deployments of an environment, newest first, at most
    /// `limit`, read from the environment's proven chain of events (never
    /// from rows): one hidden, edited or put back around custody fails
    /// closed. Deployments from before environments kept their chain are
    /// in it once a start began it ([`Store::begin_environment_chains`]).
    pub async fn environment_history(
        &self,
        project: &custody_domain::ProjectName,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<LiveDeployment>> {
        let mut reader = self.reader().await?;
        let subject = environment_subject(project.as_str(), environment);
        let events = crate::proof::proven_events(&mut reader, &subject).await?;
        let mut history = Vec::new();
        for event in events.iter().rev().filter(|e| e.action == ENVIRONMENT_DEPLOYED).take(limit) {
            let number = |field: &str| event.details.get(field).and_then(serde_json::Value::as_i64);
            let (Some(deployment), Some(build)) = (number("deployment"), number("build")) else {
                return Err(crate::proof::unproven(format!(
                    "audit event {} about {subject} names no deployment and build",
                    event.seq
                )));
            };
            history.push(LiveDeployment {
                deployment,
                build,
                // A chain begun at a start names when each deployment finished.
                finished_at: number("finished_at").unwrap_or(event.at),
                envelope_sha256: crate::proof::detail(event, "envelope_sha256").map(str::to_owned),
                break_glass: crate::proof::detail(event, "break_glass").map(str::to_owned),
            });
        }
        Ok(history)
    }

    /// Begins the chain of each environment custody deployed to before
    /// environments kept one: an `environment.deployed` event for each of
    /// its successful deployments, in the order custody recorded their
    /// successes, each read from the deployment's proven events (every
    /// deployment custody recorded, whatever its row now says). An
    /// environment that has its chain is left alone, so this writes once;
    /// it runs at every start. How many events it wrote.
    pub async fn begin_environment_chains(&self) -> Result<usize> {
        self.write(|tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "SELECT DISTINCT p.name, d.environment FROM deployments d JOIN projects p ON p.id = d.project_id \
                     WHERE d.status = 'succeeded'",
                );
                let mut missing = BTreeSet::new();
                for row in sqlx::query(&sql).fetch_all(tx.conn()).await? {
                    let (project, environment): (String, String) = (col(&row, "name")?, col(&row, "environment")?);
                    if tx.newest(&environment_subject(&project, &environment)).is_none() {
                        missing.insert((project, environment));
                    }
                }
                let projects: BTreeSet<String> = missing.iter().map(|(project, _)| project.clone()).collect();
                let mut found = Vec::new();
                for project in projects {
                    for subject in tx.ledger_state().subjects_starting(&format!("deployment:{project}/")) {
                        let Some(number) = subject.rsplit('/').next().and_then(|n| n.parse::<i64>().ok()) else {
                            continue;
                        };
                        let events = crate::proof::proven_events(tx, &subject).await?;
                        let Some(last) = events.last().filter(|e| {
                            e.action == "deploy.finish" && crate::proof::detail(e, "status") == Some("succeeded")
                        }) else {
                            continue;
                        };
                        let Some(environment) = crate::proof::detail(last, "environment") else { continue };
                        if missing.contains(&(project.clone(), environment.to_owned())) {
                            let details = json!({
                                "deployment": number,
                                "build": last.details.get("build"),
                                "break_glass": last.details.get("break_glass"),
                                "envelope_sha256": last.details.get("envelope_sha256"),
                                "finished_at": last.at,
                            });
                            found.push((last.seq, environment_subject(&project, environment), details));
                        }
                    }
                }
                found.sort_by_key(|(seq, _, _)| *seq);
                for (_, subject, details) in &found {
                    tx.audit(NewEvent {
                        actor: SYSTEM_ACTOR.into(),
                        action: ENVIRONMENT_DEPLOYED.into(),
                        subject: subject.clone(),
                        details: details.clone(),
                    })
                    .await?;
                }
                Ok(found.len())
            })
        })
        .await
    }

    /// The changes whose merges made these commits, by number, in the
    /// commits' order.
    pub async fn changes_merged_as(
        &self,
        project: &custody_domain::ProjectName,
        commits: &[String],
    ) -> Result<Vec<i64>> {
        let merged = self.merges_recorded_as(project, commits).await?;
        Ok(commits.iter().filter_map(|c| merged.get(c).copied()).collect())
    }

    /// Which of `commits` are merge commits custody recorded, with their
    /// change's number.
    pub async fn merges_recorded_as(
        &self,
        project: &custody_domain::ProjectName,
        commits: &[String],
    ) -> Result<std::collections::HashMap<String, i64>> {
        let mut merged = std::collections::HashMap::new();
        for chunk in commits.chunks(IN_LIST_CHUNK) {
            let sql = self.inner.dialect.sql_owned(format!(
                "SELECT c.number, c.merge_commit FROM changes c JOIN projects p ON p.id = c.project_id \
                 WHERE p.name = $1 AND c.merge_commit IN ({})",
                placeholders(2, chunk.len())
            ));
            let mut query = sqlx::query(&sql).bind(project.as_str());
            for commit in chunk {
                query = query.bind(commit);
            }
            for row in query.fetch_all(self.readers()).await? {
                merged.insert(col::<String>(&row, "merge_commit")?, col::<i64>(&row, "number")?);
            }
        }
        Ok(merged)
    }

    /// Who held which duty in each of these changes, as their merges
    /// recorded it.
    pub async fn release_duties(
        &self,
        project: &custody_domain::ProjectName,
        changes: &[i64],
    ) -> Result<Vec<ChangeDuty>> {
        let sql = self.sql("SELECT id FROM projects WHERE name = $1");
        let project_id: Option<i64> =
            sqlx::query_scalar(&sql).bind(project.as_str()).fetch_optional(self.readers()).await?;
        let project_id = project_id.ok_or_else(|| StoreError::not_found("project", project))?;
        let mut conn = self.readers().acquire().await?;
        release_duties(&mut conn, self.inner.dialect, project_id, changes).await
    }
}
