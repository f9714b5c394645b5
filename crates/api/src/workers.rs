//! What a worker and the server say to each other: the jobs a worker
//! leases, what it reports, and the registration of a worker that shares
//! nothing with the server (it reaches the server only through this API
//! and git's smart HTTP, with a credential of its own, and signs with a key
//! of its own).
//!
//! The lease types are the store's own: a worker in the server's process
//! gets them from the database, a worker elsewhere in a [`BuildOrder`] or
//! [`DeployOrder`].

use custody_domain::status::{BuildStatus, DeploymentStatus};
use serde::{Deserialize, Serialize};

/// A build a worker has leased.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeasedBuild {
    /// The build's row id.
    pub id: i64,
    /// The project.
    pub project: String,
    /// The build's number in its project.
    pub number: i64,
    /// The commit to build.
    pub commit: String,
    /// The branch it is on.
    pub branch: String,
    /// Which attempt this is (1 for the first).
    pub attempt: i64,
    /// The worker holding the lease.
    pub worker: String,
    /// When this attempt started, in milliseconds since the epoch.
    pub started_at: i64,
}

/// An artifact a build made, stored in the blob store already.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewArtifact {
    /// Its path in the workspace.
    pub name: String,
    /// sha256, hex.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
}

/// How a build ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildOutcome {
    /// `succeeded`, `failed`, `error` or `skipped`.
    #[schema(value_type = String, pattern = "^(succeeded|failed|error|skipped)$")]
    pub status: BuildStatus,
    /// Why, when it did not succeed.
    pub reason: Option<String>,
    /// The command run.
    pub command: Option<String>,
    /// Whether it had network.
    pub network: Option<bool>,
    /// sha256 of the pipeline file.
    pub pipeline_digest: Option<String>,
    /// sha256 of the build script.
    pub script_digest: Option<String>,
    /// The exit code.
    pub exit_code: Option<i64>,
    /// What it made (only when it succeeded).
    pub artifacts: Vec<NewArtifact>,
    /// The signed provenance (a DSSE envelope, JSON).
    pub provenance: Option<String>,
}

/// A deployment a deployer has leased.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeasedDeployment {
    /// Its row id.
    pub id: i64,
    /// The project.
    pub project: String,
    /// Its number.
    pub number: i64,
    /// Where it goes.
    pub environment: String,
    /// The build deployed.
    pub build: i64,
    /// The build's commit.
    pub commit: String,
    /// The build's artifacts: name and sha256, each a pair.
    #[schema(value_type = Vec<Vec<String>>)]
    pub artifacts: Vec<(String, String)>,
    /// Who asked for it.
    pub requested_by: Option<String>,
    /// Who approved it.
    pub approvers: Vec<String>,
    /// Who signed off its tests as passed.
    pub testers: Vec<String>,
    /// The deployment live in the environment before it.
    pub previous: Option<i64>,
    /// The break-glass reason, when the glass was broken.
    pub break_glass: Option<String>,
    /// The worker that built the build.
    pub builder: Option<String>,
    /// The deployer holding it.
    pub worker: String,
    /// When it started, in milliseconds since the epoch.
    pub started_at: i64,
}

/// What a running deployment's heartbeat found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Heartbeat {
    /// The deployer still holds it: go on.
    Held,
    /// Someone cancelled it: stop the script. Who and why.
    Cancel(String),
    /// The deployer no longer holds it.
    Lost,
}

/// How a deployment ended.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployOutcome {
    /// `succeeded`, `failed` or `cancelled`.
    #[schema(value_type = String, pattern = "^(succeeded|failed|cancelled)$")]
    pub status: DeploymentStatus,
    /// Why it failed.
    pub reason: Option<String>,
    /// The deploy script's exit code.
    pub exit_code: Option<i64>,
    /// Its output (secrets redacted).
    pub log: String,
    /// The signed deployment attestation.
    pub attestation: Option<String>,
}

/// Who held the duties of one change of a release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseDuties {
    /// The change's number.
    pub change: i64,
    /// Its authors.
    pub authors: Vec<String>,
    /// Its reviewers.
    pub reviewers: Vec<String>,
}

/// The gate of the environment deployed to, as the mainline defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentGateFacts {
    /// Independent approvals it asks for.
    pub approvals: u64,
    /// The group approvers come from.
    pub approvers: Option<String>,
    /// The group testers come from.
    pub testers: Option<String>,
    /// Whether a reviewer of the release may approve it.
    pub reviewers_may_approve: bool,
}

/// What a deployment's attestation records beyond its lease, found by the
/// server before the deploy script runs: the release's duties, the
/// environment's place and gate, the secrets' versions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentFacts {
    /// Each change of the release, with its authors and reviewers.
    pub release: Vec<ReleaseDuties>,
    /// The environment this one follows, if any.
    pub after: Option<String>,
    /// The environment's gate, when the mainline defines it.
    pub gate: Option<EnvironmentGateFacts>,
    /// The version of each secret the script gets (never a value).
    pub secrets: std::collections::BTreeMap<String, i64>,
}

/// A secret a deploy worker gets for one deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretValue {
    /// The variable's name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// A build leased to a worker elsewhere, with the ticket it presents with
/// every report about it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildOrder {
    /// The lease.
    pub lease: LeasedBuild,
    /// The instance's name, which the provenance names.
    pub instance: String,
    /// The lease, sealed by the server: presented with every report.
    pub ticket: String,
}

/// A deployment leased to a worker elsewhere: its lease, the facts its
/// attestation records, and the environment's secrets for this one job.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeployOrder {
    /// The lease.
    pub lease: LeasedDeployment,
    /// What the attestation records beyond the lease.
    pub facts: DeploymentFacts,
    /// The environment's secrets, each a variable of the script.
    pub secrets: Vec<SecretValue>,
    /// The lease, sealed by the server: presented with every report.
    pub ticket: String,
}

/// A report that names only its lease.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    /// The ticket of the order.
    pub ticket: String,
}

/// Output of a running build or deployment, appended to its log.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildLogRequest {
    /// The ticket of the order.
    pub ticket: String,
    /// The text.
    pub text: String,
}

/// How a leased build ended.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildReportRequest {
    /// The ticket of the order.
    pub ticket: String,
    /// The outcome; a success carries provenance signed with the worker's key.
    pub outcome: BuildOutcome,
}

/// How a leased deployment ended.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentReport {
    /// The ticket of the order.
    pub ticket: String,
    /// The outcome, with its attestation signed with the worker's key.
    pub outcome: DeployOutcome,
}

/// Whether a build's worker still holds its lease.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseHeld {
    /// `false` once another worker holds it or it ended: stop.
    pub held: bool,
}

/// The registration of a worker that shares nothing with the server (a
/// grant: a second admin approves it).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterWorkerRequest {
    /// The worker's name: lowercase letters, digits and dashes.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,63}$")]
    pub name: String,
    /// The role its key signs as.
    #[schema(pattern = "^(builder|deployer)$")]
    pub role: String,
    /// Its ed25519 public key, SubjectPublicKeyInfo PEM (`custody worker init` writes it).
    pub public_key: String,
    /// Hex SHA-256 of its credential (`custody worker init` prints it).
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub credential_sha256: String,
}

/// A registered worker.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerView {
    /// Its name.
    pub name: String,
    /// The role its key signs as.
    pub role: String,
    /// Its key's id.
    pub key_id: String,
    /// When its key was revoked, if it was (RFC 3339), and why.
    pub revoked: Option<String>,
}

/// The prefix of a worker's credential: `custody-worker.NAME.SECRET`.
pub const WORKER_CREDENTIAL_PREFIX: &str = "custody-worker.";

/// The header an artifact upload or download names its lease's ticket in.
pub const TICKET_HEADER: &str = "custody-ticket";
