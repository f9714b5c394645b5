//! What clients send.

use custody_domain::Scopes;
use serde::{Deserialize, Serialize};

use crate::integer;

// Changes and reviews.

/// A change to open.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenChangeRequest {
    /// The branch the change follows.
    #[schema(schema_with = custody_domain::project::branch_schema)]
    pub source: String,
    /// Where it goes; the project's default branch when absent.
    #[schema(schema_with = custody_domain::project::optional_branch_schema)]
    pub target: Option<String>,
    pub title: String,
    pub description: Option<String>,
}

/// New words for an open change: its title, its description, both, or
/// neither (which changes nothing).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditChangeRequest {
    /// One line of 1 to 200 characters, not all spaces.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*$")]
    pub title: Option<String>,
    /// At most 20,000 characters.
    #[schema(max_length = 20000)]
    pub description: Option<String>,
}

/// A comment on a line of the change's current head, or a reply to a
/// thread (which takes its thread's place).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum CommentRequest {
    /// A new thread on a line.
    Line(LineCommentRequest),
    /// A reply to a thread.
    Reply(ReplyRequest),
}

/// A new thread on a line of the head its writer read.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineCommentRequest {
    /// The file, as the diff names it.
    #[schema(min_length = 1, max_length = 4096, pattern = r"^[^\x00]+$")]
    pub path: String,
    /// The line in the file at `head`, from 1.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "integer::required")]
    pub line: i64,
    /// The full id of the head you read: a thread on any other is refused.
    #[schema(pattern = "^[0-9a-fA-F]{40,64}$")]
    pub head: String,
    /// What you say: 1 to 20,000 characters, not all spaces.
    #[schema(min_length = 1, max_length = 20000, pattern = r"\S")]
    pub body: String,
}

/// A reply to a thread, by its first comment.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyRequest {
    /// The thread's first comment.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "integer::required")]
    pub reply_to: i64,
    /// What you say: 1 to 20,000 characters, not all spaces.
    #[schema(min_length = 1, max_length = 20000, pattern = r"\S")]
    pub body: String,
}

/// A review of the current head.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    /// `approve`, `request_changes`, `comment` or `withdraw`.
    #[schema(pattern = "^(approve|request_changes|comment|withdraw)$")]
    pub verdict: String,
    pub message: Option<String>,
    /// The head the reviewer looked at (the change's `head`, or the
    /// `X-Custody-Head` of its diff); required to approve, and refused if
    /// the change has moved on since.
    pub head: Option<String>,
}

// Deployments, findings and secrets.

/// A deployment to ask for.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[schema(schema_with = custody_domain::name::environment_schema)]
    pub environment: String,
    /// The build to deploy (an earlier one to roll back).
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "integer::required")]
    pub build: i64,
    /// Skip soak and test sign-off, saying why; never approvals.
    #[schema(min_length = 1)]
    pub break_glass: Option<String>,
}

/// What a person says with a decision.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecisionRequest {
    pub message: Option<String>,
}

/// What resolving a finding says.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveRequest {
    /// What the review of the finding found.
    #[schema(required = true, value_type = String, min_length = 1)]
    pub message: Option<String>,
}

/// A test sign-off.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignOffRequest {
    pub message: Option<String>,
    /// Whether the tests passed.
    #[schema(required = true, value_type = bool)]
    pub passed: Option<bool>,
}

/// A new version of a secret.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    /// The variable's name, like `DB_PASSWORD`: A-Z, digits and `_`, starting
    /// with a letter, and none custody sets itself.
    #[schema(max_length = 64, pattern = "^(?!CUSTODY_)(?!(?:PATH|HOME|TMPDIR|LANG)$)[A-Z][A-Z0-9_]*$")]
    pub name: String,
    /// The value; sealed at once, never shown again.
    #[schema(min_length = 1)]
    pub value: String,
}

// Groups and grants.

/// A group to create.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    #[schema(value_type = custody_domain::GroupName)]
    pub name: String,
}

/// A user to add to a group.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberRequest {
    #[schema(value_type = custody_domain::UserName)]
    pub user: String,
}

/// Why a grant is rejected.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    pub note: Option<String>,
}

// People, passwords and tokens.

/// A new password for the web.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    /// 12 to 1,024 characters, no control characters.
    #[schema(min_length = 12, max_length = 1024, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub password: String,
}

/// A password login, which yields a token valid for a day.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub name: String,
    pub password: String,
    /// Defaults to read and write.
    #[schema(value_type = Option<Vec<custody_domain::Scope>>, min_items = 1)]
    pub scopes: Option<Scopes>,
}

/// An invite code to redeem.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    pub code: String,
}

/// A user to create.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    #[schema(value_type = custody_domain::UserName)]
    pub name: String,
    #[schema(value_type = custody_domain::Email)]
    pub email: String,
    /// 1 to 128 characters without control characters, not all spaces.
    #[schema(min_length = 1, max_length = 128, pattern = "^(?=.*\\S)[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub display_name: Option<String>,
}

/// A token to create for oneself.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// What it is for: 1 to 64 characters without control characters.
    #[schema(min_length = 1, max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")]
    pub name: String,
    /// Its scopes; `write` and `admin` include `read`.
    #[schema(value_type = Vec<custody_domain::Scope>, min_items = 1)]
    pub scopes: Scopes,
    /// Seconds until it expires; never when absent.
    #[schema(minimum = 1, maximum = 315_576_000)]
    #[serde(default, deserialize_with = "integer::optional")]
    pub expires_in: Option<u64>,
}

// Projects.

/// A project to create.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    #[schema(value_type = custody_domain::ProjectName)]
    pub name: String,
    /// The mainline; `main` when absent. Always protected.
    #[schema(schema_with = custody_domain::project::optional_branch_schema)]
    pub default_branch: Option<String>,
    /// A git repository on the server to take as the unreviewed baseline:
    /// a grant, applied when a second admin approves it.
    pub import: Option<String>,
}

/// A member to add.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectMemberRequest {
    #[schema(value_type = custody_domain::UserName)]
    pub user: String,
    /// `read`, `write` or `maintain`.
    #[schema(value_type = custody_domain::project::Role)]
    pub role: String,
}

/// A branch to protect.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchRequest {
    #[schema(schema_with = custody_domain::project::branch_schema)]
    pub branch: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(body: &str) -> Result<DeployRequest, String> {
        serde_json::from_str(body).map_err(|e| e.to_string())
    }

    #[test]
    fn an_integer_written_with_a_decimal_point_is_the_same_integer_and_a_fraction_is_refused() {
        assert_eq!(deploy(r#"{"environment":"prod","build":7}"#).unwrap().build, 7);
        assert_eq!(deploy(r#"{"environment":"prod","build":7.0}"#).unwrap().build, 7);
        assert!(deploy(r#"{"environment":"prod","build":7.5}"#).unwrap_err().contains("not an integer"));
        let large = deploy(r#"{"environment":"prod","build":2218775363885585.0}"#).unwrap();
        assert_eq!(large.build, 2_218_775_363_885_585, "read exactly, not rounded");
        assert!(deploy(r#"{"environment":"prod","build":"7"}"#).is_err());
        let token = |body: &str| serde_json::from_str::<CreateTokenRequest>(body).map(|t| t.expires_in);
        assert_eq!(token(r#"{"name":"ci","scopes":["read"]}"#).unwrap(), None);
        assert_eq!(token(r#"{"name":"ci","scopes":["read"],"expires_in":null}"#).unwrap(), None);
        assert_eq!(token(r#"{"name":"ci","scopes":["read"],"expires_in":60.0}"#).unwrap(), Some(60));
        assert!(token(r#"{"name":"ci","scopes":["read"],"expires_in":-1}"#).is_err());
    }
}

/// The revocation of a retired service key.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeKeyRequest {
    /// From when the key is not trusted (RFC 3339): when it was, or may
    /// have been, compromised. Now when absent.
    #[serde(default)]
    pub since: Option<custody_domain::Timestamp>,
    /// Why it is revoked.
    #[schema(pattern = "\\S")]
    pub reason: String,
}
