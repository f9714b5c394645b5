//! Environments, deployments and secrets.

use custody_domain::deploy::DeployReport;
use custody_domain::status::DeploymentStatus;
use custody_domain::Timestamp;
use serde::{Deserialize, Serialize};

use super::GrantView;

/// An environment as the mainline's pipeline file defines it, and what is
/// live in it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentView {
    pub name: String,
    pub after: Option<String>,
    pub approvals: u32,
    pub approvers: Option<String>,
    pub testers: Option<String>,
    /// Seconds a build must be live in `after` first.
    pub soak_seconds: Option<u64>,
    pub reviewers_may_approve: bool,
    /// The latest successful deployment, if any.
    pub live: Option<DeploymentView>,
    /// Deployments pending, queued or running.
    pub waiting: Vec<DeploymentView>,
}

/// One environment, with its history.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentDetail {
    #[serde(flatten)]
    pub environment: EnvironmentView,
    /// Every deployment to it, newest first.
    pub history: Vec<DeploymentView>,
}

/// A deployment as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentView {
    /// Its number in the project.
    pub number: i64,
    /// The project.
    pub project: String,
    /// Where it goes.
    pub environment: String,
    /// The build deployed.
    pub build: i64,
    /// The commit the build was made from.
    pub commit: String,
    /// `pending` (waiting for its gate), `queued`, `running`, `succeeded`,
    /// `failed`, `cancelled` or `rejected`.
    #[schema(value_type = String)]
    pub status: DeploymentStatus,
    /// Who asked for it; absent for an automatic promotion.
    pub requested_by: Option<String>,
    /// Why the requester broke the glass, when they did.
    pub break_glass: Option<String>,
    /// Why it failed, was cancelled or rejected.
    pub reason: Option<String>,
    /// Who asked a running deployment to stop, and why; the deployer stops
    /// its script and records it as cancelled.
    pub cancel_requested: Option<String>,
    /// When it was asked for.
    pub created_at: Timestamp,
    /// When its gate opened.
    pub queued_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// The decisions taken on it, in order.
    pub decisions: Vec<DecisionView>,
}

/// A decision as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DecisionView {
    /// Who took it.
    pub user: String,
    /// `approve`, `reject`, `test_passed` or `test_failed`.
    pub kind: String,
    /// What they said.
    pub message: String,
    /// When.
    pub at: Timestamp,
}

/// A deployment and its gate.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentAndGate {
    pub deployment: DeploymentView,
    pub gate: DeployReport,
    /// The changes of the release, by number: every change merged between
    /// the commit live in the environment and the candidate.
    pub release: Vec<i64>,
}

/// A deployment's output and its signed attestation.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentRecord {
    pub log: String,
    #[schema(value_type = Object)]
    pub attestation: Option<serde_json::Value>,
}

/// A secret as shown: never its value.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretView {
    /// The variable's name.
    pub name: String,
    /// The current version, if one was approved.
    pub version: Option<i64>,
    /// Who asked for the current version.
    pub set_by: Option<String>,
    /// Since when it is current.
    pub current_since: Option<Timestamp>,
    /// A newer version waiting for its grant, if any.
    pub pending_version: Option<i64>,
}

/// What asking for a secret made: the version, waiting for its grant.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretRequested {
    pub version: i64,
    pub grant: GrantView,
}
