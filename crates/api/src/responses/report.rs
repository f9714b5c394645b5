//! The report of a period: what reached production, with its chain of
//! custody, and every finding.

use custody_domain::Timestamp;
use custody_formats::attestation::EnvironmentGate;
use serde::{Deserialize, Serialize};

/// The report of a period.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportData {
    pub instance: String,
    pub from: Timestamp,
    pub to: Timestamp,
    pub generated_at: Timestamp,
    /// The newest signed checkpoint's tree size.
    pub checkpoint_size: Option<u64>,
    /// Every production deployment finished in the period.
    pub deployments: Vec<ReportDeployment>,
    /// Everything an auditor should look at.
    pub findings: Vec<ReportFinding>,
}

/// A production deployment and who held each duty on its way there.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportDeployment {
    pub project: String,
    pub number: i64,
    pub environment: String,
    /// The environment the build had to be live in first.
    pub after: Option<String>,
    pub build: i64,
    pub commit: String,
    /// The build's artifacts, as its `build.finish` event recorded them.
    pub artifacts: Vec<ReportArtifact>,
    pub finished_at: Timestamp,
    /// Who asked for it; absent for an automatic promotion.
    pub requester: Option<String>,
    pub approvers: Vec<String>,
    pub testers: Vec<String>,
    /// Why the requester broke the glass, when they did.
    pub break_glass: Option<String>,
    /// The deployment gate as the signed attestation states it.
    #[schema(value_type = Option<Object>)]
    pub gate: Option<EnvironmentGate>,
    /// The changes the deployment released.
    pub changes: Vec<ReportChange>,
    /// sha256 of the deployment attestation's envelope.
    pub envelope_sha256: Option<String>,
    /// The `deploy.finish` event's sequence number.
    pub seq: i64,
}

/// An artifact of a reported deployment's build.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportArtifact {
    pub name: String,
    pub sha256: String,
    pub size: i64,
}

/// A change a reported deployment released, as its merge recorded it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportChange {
    pub number: i64,
    pub authors: Vec<String>,
    pub reviewers: Vec<String>,
    pub merged_by: String,
    pub merge_commit: Option<String>,
    pub merged_at: Timestamp,
    /// The `change.merge` event's sequence number.
    pub seq: i64,
}

/// Something an auditor should look at.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportFinding {
    /// `deployment_failed`, `refused_push`, `imported_baseline`,
    /// `deploy_reject`, `deploy_test_failed`, `deploy_cancel`,
    /// `bootstrap_grant`, `configuration_changed` (a start with another
    /// version or configuration), or a finding's own kind (`break_glass`).
    pub kind: String,
    pub at: Timestamp,
    /// The audit event's sequence number, when an event is the finding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
}
