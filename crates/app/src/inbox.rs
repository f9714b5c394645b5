//! What waits for one person, by duty: the changes they may review, their
//! own changes and what blocks each, the deployments they may approve or
//! sign off, the grants they may approve and the findings they may review.
//!
//! Every entry is decided by the rule that would decide the action itself
//! (the same domain decisions and store standings the API applies), so an
//! inbox lists exactly what its reader may do, and nothing else.

use custody_api::FindingView;
use custody_domain::access::{decide_change_write, decide_deploy_member, ChangeWrite, DeployAction};
use custody_domain::gate::{RuleOutcome, Verdict};
use custody_domain::grant::{decide_approval, GrantFacts};
use custody_domain::status::{ChangeState, DeploymentStatus};
use custody_domain::{GrantStatus, ProjectName, Timestamp};
use custody_git::Repositories;
use custody_store::{Authenticated, GrantView, PageRequest, ProjectAccess, Store};

use crate::{AppError, Changes};

/// A change waiting for the reader's review.
#[derive(Clone, Debug)]
pub struct ReviewWaiting {
    /// Its project.
    pub project: String,
    /// Its number.
    pub number: i64,
    /// Its title.
    pub title: String,
    /// Who opened it.
    pub opened_by: String,
    /// When.
    pub opened_at: Timestamp,
    /// Whether its gate is open already (the review still counts).
    pub gate_open: bool,
}

/// One of the reader's own open changes, and what keeps it from merging.
#[derive(Clone, Debug)]
pub struct OwnChange {
    /// Its project.
    pub project: String,
    /// Its number.
    pub number: i64,
    /// Its title.
    pub title: String,
    /// The gate's failing rules, each with what would satisfy it; none
    /// when the gate is open and the change may be merged.
    pub blocked_by: Vec<RuleOutcome>,
}

/// A deployment waiting for the reader's decision.
#[derive(Clone, Debug)]
pub struct DeploymentWaiting {
    /// Its project.
    pub project: String,
    /// Its number.
    pub number: i64,
    /// Where to.
    pub environment: String,
    /// The build it deploys.
    pub build: i64,
    /// The commit.
    pub commit: String,
    /// Who asked for it, if a person did.
    pub requested_by: Option<String>,
    /// Whether the reader may approve (or reject) it.
    pub approve: bool,
    /// Whether the reader may sign off its manual tests.
    pub sign_off: bool,
}

/// What waits for one person.
#[derive(Clone, Debug, Default)]
pub struct Inbox {
    /// Changes they may review, oldest first.
    pub reviews: Vec<ReviewWaiting>,
    /// Their own open changes.
    pub own: Vec<OwnChange>,
    /// Deployments they may approve or sign off.
    pub deployments: Vec<DeploymentWaiting>,
    /// Grants they may approve (admins).
    pub grants: Vec<GrantView>,
    /// Findings they may review (admins who were not involved).
    pub findings: Vec<FindingView>,
}

impl Inbox {
    /// How many things wait for an action of theirs (their own changes
    /// count when they may merge one).
    pub fn count(&self) -> usize {
        self.reviews.len()
            + self.own.iter().filter(|c| c.blocked_by.is_empty()).count()
            + self.deployments.len()
            + self.grants.len()
            + self.findings.len()
    }
}

/// What waits for `reader` in every project they may read.
pub async fn waiting_for(
    store: &Store,
    changes: &Changes,
    repositories: &Repositories,
    reader: &Authenticated,
) -> Result<Inbox, AppError> {
    let mut inbox = Inbox::default();
    let all = PageRequest::new(None, Some(PageRequest::MAX));
    for project in store.list_projects(reader, all).await?.items {
        let Ok(name) = ProjectName::parse(&project.name) else { continue };
        let access = store.project_access(reader, &name).await?;
        changes_waiting(store, changes, &access, reader, &mut inbox).await?;
        deployments_waiting(store, repositories, &access, reader, &mut inbox).await?;
    }
    if reader.is_admin {
        let pending = store.list_grants(Some(GrantStatus::Pending), all).await?;
        inbox.grants = pending
            .items
            .into_iter()
            .filter(|g| {
                let facts = GrantFacts { id: g.id, action: &g.action, requested_by: &g.requested_by, status: g.status };
                decide_approval(&facts, &reader.as_admin()).allowed
            })
            .collect();
        for finding in store.list_findings(true).await? {
            if store.finding_review_decision(&reader.name, finding.id).await?.allowed {
                inbox.findings.push(finding);
            }
        }
    }
    inbox.reviews.sort_by_key(|r| r.opened_at);
    Ok(inbox)
}

/// The open changes of one project: those the reader may review (not an
/// author, not yet approved at this head by them) and their own.
async fn changes_waiting(
    store: &Store,
    changes: &Changes,
    access: &ProjectAccess,
    reader: &Authenticated,
    inbox: &mut Inbox,
) -> Result<(), AppError> {
    let may_review =
        decide_change_write(&reader.name, &access.project, access.role, reader.scopes, ChangeWrite::Review).allowed;
    let open = store
        .list_changes(access, Some(ChangeState::Open.as_str()), PageRequest::new(None, Some(PageRequest::MAX)))
        .await?;
    for listed in open.items {
        let (change, records, gate) = changes.gate_of(access, listed.number).await?;
        let authored = records.authors.contains_key(&reader.name) || change.opened_by == reader.name.as_str();
        if authored {
            inbox.own.push(OwnChange {
                project: access.project.to_string(),
                number: change.number,
                title: change.title.clone(),
                blocked_by: gate.rules.iter().filter(|r| !r.passed).cloned().collect(),
            });
            continue;
        }
        // Not an author (above), so the approval would count: unless given
        // at this head already.
        let approved_here = records
            .reviews
            .iter()
            .any(|r| r.reviewer == reader.name && r.head == change.head && !r.voided && r.verdict == Verdict::Approve);
        if may_review && !approved_here {
            inbox.reviews.push(ReviewWaiting {
                project: access.project.to_string(),
                number: change.number,
                title: change.title,
                opened_by: change.opened_by,
                opened_at: change.opened_at,
                gate_open: gate.open,
            });
        }
    }
    Ok(())
}

/// The pending deployments of one project the reader may approve or sign
/// off, as the deployment's own gate would decide it.
async fn deployments_waiting(
    store: &Store,
    repositories: &Repositories,
    access: &ProjectAccess,
    reader: &Authenticated,
    inbox: &mut Inbox,
) -> Result<(), AppError> {
    let member = decide_deploy_member(&reader.name, &access.project, access.role, reader.scopes, DeployAction::Decide);
    if !member.allowed {
        return Ok(());
    }
    let environments = match crate::releases::environment_states(store, repositories, access).await {
        Ok(environments) => environments,
        // A mainline whose pipeline file does not read shows on the project's
        // page; nothing of it can wait for a decision.
        Err(AppError::InvalidPipeline(_)) => return Ok(()),
        Err(other) => return Err(other),
    };
    for environment in environments {
        let e = &environment.environment;
        for waiting in environment.waiting.iter().filter(|d| d.status == DeploymentStatus::Pending) {
            let context =
                crate::releases::release_context(store, repositories, &access.project, &e.name, &waiting.commit)
                    .await?;
            let (_, _, standing) = store.deployment_standing(access, waiting.number, context, &reader.name).await?;
            let approve = e.approvals > 0 && standing.approve.is_none();
            let sign_off = e.testers.is_some() && standing.sign_off.is_none();
            if approve || sign_off {
                inbox.deployments.push(DeploymentWaiting {
                    project: access.project.to_string(),
                    number: waiting.number,
                    environment: e.name.clone(),
                    build: waiting.build,
                    commit: waiting.commit.clone(),
                    requested_by: waiting.requested_by.clone(),
                    approve,
                    sign_off,
                });
            }
        }
    }
    Ok(())
}
