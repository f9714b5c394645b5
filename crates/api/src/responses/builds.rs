//! Builds, their logs, and the artifact repository.

use custody_domain::Timestamp;
use serde::{Deserialize, Serialize};

/// A build as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BuildView {
    /// The build's number in its project.
    pub number: i64,
    /// The project.
    pub project: String,
    /// The mainline commit built.
    pub commit: String,
    /// The branch it was merged into.
    pub branch: String,
    /// The change whose merge made the commit.
    pub change: Option<i64>,
    /// `queued`, `running`, `succeeded`, `failed`, `error` or `skipped`.
    #[schema(value_type = String)]
    pub status: custody_domain::status::BuildStatus,
    /// Why it failed, erred or was skipped.
    pub reason: Option<String>,
    /// How many times a worker took it.
    pub attempt: i64,
    /// The worker that ran (or runs) it.
    pub worker: Option<String>,
    /// When it was queued.
    pub queued_at: Timestamp,
    /// When its last attempt started.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// The build command, as the pipeline file at the commit names it.
    pub command: Option<String>,
    /// Whether the build could reach the network.
    pub network: Option<bool>,
    /// sha256 of the pipeline file at the commit.
    pub pipeline_digest: Option<String>,
    /// sha256 of the build script at the commit.
    pub script_digest: Option<String>,
    /// The build command's exit code.
    pub exit_code: Option<i64>,
    /// The artifacts it made.
    pub artifacts: Vec<ArtifactView>,
}

/// An artifact in the repository.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactView {
    /// The project.
    pub project: String,
    /// The build that made it.
    pub build: i64,
    /// Its path in the build's workspace.
    pub name: String,
    /// sha256 of its content, hex.
    pub digest: String,
    /// Its size in bytes.
    pub size: i64,
    /// The commit it was built from.
    pub commit: String,
    /// When the build stored it.
    pub created_at: Timestamp,
}

/// An artifact: every build that made this content.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactDetail {
    /// sha256, hex.
    pub digest: String,
    /// Size in bytes.
    pub size: i64,
    /// The builds that made it, oldest first, each with the name it had.
    pub builds: Vec<ArtifactView>,
}

/// One piece of a build's log.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogChunk {
    /// Its position; ask for chunks after it to follow the log.
    pub seq: i64,
    /// The text.
    pub data: String,
}

/// A piece of a build's log.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogPage {
    /// The chunks after the one asked for.
    pub chunks: Vec<LogChunk>,
    /// Whether the build has finished and this is the end of its log.
    pub complete: bool,
}

/// The result of checking one blob.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlobCheck {
    /// The digest it is stored under.
    pub digest: String,
    /// `intact`, `damaged`, `missing` or `unrecorded` (in the store, but no
    /// build recorded it).
    pub state: String,
    /// What its bytes hash to, when damaged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actual: Option<String>,
    /// The projects whose artifacts name it.
    pub projects: Vec<String>,
}
