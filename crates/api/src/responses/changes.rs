//! Changes, reviews, checks and the merge queue.

use custody_domain::gate::GateReport;
use custody_domain::status::ChangeState;
use custody_domain::Timestamp;
use serde::{Deserialize, Serialize};

/// A change as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangeView {
    /// Its id across the instance.
    pub id: i64,
    /// Its number within the project.
    pub number: i64,
    /// The project.
    pub project: String,
    /// What it is.
    pub title: String,
    /// Why.
    pub description: String,
    /// The branch it follows.
    pub source_branch: String,
    /// Where it goes.
    pub target_branch: String,
    /// `open`, `closed` or `merged`.
    #[schema(value_type = String)]
    pub state: ChangeState,
    /// Its current head.
    pub head: String,
    /// Who opened it.
    pub opened_by: String,
    /// When.
    pub opened_at: Timestamp,
    /// Who merged it.
    pub merged_by: Option<String>,
    /// When.
    pub merged_at: Option<Timestamp>,
    /// The merge commit on the target.
    pub merge_commit: Option<String>,
    /// Its reviews, oldest first.
    pub reviews: Vec<ReviewView>,
}

/// A change with its authors.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChangeDetail {
    #[serde(flatten)]
    pub change: ChangeView,
    /// Everyone who may not review or approve it, and why.
    pub authors: Vec<AuthorView>,
    /// The gate as it stands.
    pub gate: GateReport,
}

/// An author and every reason they are one.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthorView {
    pub user: String,
    pub why: Vec<AuthorReason>,
}

/// Why someone is an author of a change, as the API shows it.
///
/// The change attestation records the same reasons as its own
/// `Authorship`: a signed predicate's vocabulary is frozen with its version,
/// while the API's may grow, so the two are kept apart and meet in one
/// mapping, where the application layer writes the attestation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthorReason {
    /// They pushed one of its commits into the repository first.
    PushedCommit {
        /// The commit.
        commit: String,
    },
    /// They moved its source branch.
    MovedSourceBranch {
        /// The push.
        push: i64,
    },
    /// A commit names them as its author.
    NamedAuthor {
        /// The commit.
        commit: String,
    },
    /// A commit names them as its committer.
    NamedCommitter {
        /// The commit.
        commit: String,
    },
    /// A commit names them in a `Co-authored-by:` trailer.
    CoAuthor {
        /// The commit.
        commit: String,
    },
}

/// A review as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReviewView {
    /// Its id.
    pub id: i64,
    /// Who.
    pub reviewer: String,
    /// `approve`, `request_changes`, `comment` or `withdraw`.
    pub verdict: String,
    /// The head it was given on.
    pub head: String,
    /// Whether the change has moved on since, or moved on and back (a stale
    /// review's approval counts for nothing, ever).
    pub stale: bool,
    /// What they said.
    pub message: String,
    /// When.
    pub at: Timestamp,
}

/// A comment on a line of a change's diff, or a reply in its thread.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommentView {
    /// Its id.
    pub id: i64,
    /// Who wrote it.
    pub author: String,
    /// The head it was written on.
    pub head: String,
    /// The file, as the diff names it at that head.
    pub path: String,
    /// The line in the file at that head, from 1.
    pub line: i64,
    /// The line as it read then.
    pub line_text: String,
    /// The first comment of its thread, for a reply.
    pub reply_to: Option<i64>,
    /// What it says.
    pub body: String,
    /// When.
    pub at: Timestamp,
    /// Whether the line no longer reads the same at the change's current
    /// head (or its file is gone): the thread is about an earlier head.
    pub outdated: bool,
    /// Who resolved its thread, once someone did (on the thread's first comment).
    pub resolved_by: Option<String>,
    /// When.
    pub resolved_at: Option<Timestamp>,
}

/// A merged change and the gate that let it in, or the promise to merge it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Merged {
    pub change: ChangeView,
    pub gate: GateReport,
    /// True when the gate was closed and custody will merge the change as
    /// soon as it opens.
    pub auto_merge: bool,
}

/// A check run as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckRunView {
    /// Its id.
    pub id: i64,
    /// The head checked.
    pub head: String,
    /// `queued`, `running`, `passed`, `failed`, `error` or `not_required`.
    #[schema(value_type = String)]
    pub status: custody_domain::status::CheckStatus,
    /// The command run, as the target branch's pipeline names it.
    pub command: Option<String>,
    /// The target's tip whose pipeline file and script were used.
    pub target_tip: Option<String>,
    /// The command's exit code.
    pub exit_code: Option<i64>,
    /// When it was queued.
    pub created_at: Timestamp,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// Its output (only when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

/// A project's merge queue: merges recorded whose ref is moving, then the
/// changes waiting for their turn, oldest first.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MergeQueue {
    /// Merges recorded whose target ref has not yet moved (normally for
    /// milliseconds; longer only after a crash, until the next start).
    pub moving: Vec<MovingMerge>,
    /// Changes custody merges, in this order, as soon as each one's gate
    /// opens (asked with `--auto` or `--no-wait`).
    pub waiting: Vec<WaitingMerge>,
}

/// A merge recorded, its ref not yet moved.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MovingMerge {
    /// The change.
    pub change: i64,
    /// The ref.
    pub reference: String,
    /// The merge commit.
    pub merge_commit: String,
    /// Since when.
    pub since: custody_domain::Timestamp,
}

/// A change waiting to be merged.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WaitingMerge {
    /// The change.
    pub change: i64,
    /// Its title.
    pub title: String,
    /// Its target branch.
    pub target: String,
    /// Who asked for it to be merged.
    pub asked_by: Option<String>,
}
