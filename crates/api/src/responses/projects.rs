//! Projects, their members, commits and pushes.

use custody_domain::project::{Identity, RefUpdate, Role};
use custody_domain::Timestamp;
use serde::{Deserialize, Serialize};

use super::GrantView;

/// A project as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectView {
    /// The project's id.
    pub id: i64,
    /// Its name, also its repository's.
    pub name: String,
    /// The mainline: always protected, built and deployed.
    pub default_branch: String,
    /// Every protected branch, the default branch first.
    pub protected_branches: Vec<String>,
    /// Who may read or write it.
    pub members: Vec<ProjectMemberView>,
    /// `private`: members, admins and auditors only.
    pub visibility: String,
    /// The admin who created it.
    pub created_by: String,
    /// When.
    pub created_at: Timestamp,
}

/// A project with where to clone it from.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectAnswer {
    #[serde(flatten)]
    pub project: ProjectView,
    /// The URL for `git clone`, with a token as the password.
    pub clone_url: String,
}

/// A project just made, and the import grant if one was asked for.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedProject {
    #[serde(flatten)]
    pub project: ProjectAnswer,
    /// The grant importing the history, pending a second admin (or applied
    /// at once, marked, during bootstrap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_grant: Option<GrantView>,
}

/// A member of a project.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectMemberView {
    /// The member.
    pub user: String,
    /// `read`, `write` or `maintain`.
    #[schema(value_type = String)]
    pub role: Role,
    /// The grant that made them one.
    pub grant: i64,
}

/// A commit and who brought it in: the pusher is known from
/// authentication; the rest is what the commit claims.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommitView {
    /// The commit id.
    pub sha: String,
    /// The push that first brought it in.
    pub first_push: Option<i64>,
    /// The import grant that brought it in as unreviewed history, if so.
    pub imported_by_grant: Option<i64>,
    /// Who made that push.
    pub pusher: Option<String>,
    /// The named author.
    pub author: Identity,
    /// The named committer.
    pub committer: Identity,
    /// The named co-authors.
    pub co_authors: Vec<Identity>,
}

/// One accepted push.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushView {
    /// The push's id.
    pub id: i64,
    /// The authenticated pusher.
    pub pusher: String,
    /// When.
    pub at: Timestamp,
    /// The refs it moved.
    #[schema(value_type = Vec<Object>)]
    pub updates: Vec<RefUpdate>,
    /// The commits it brought in, oldest first.
    pub commits: Vec<String>,
}
