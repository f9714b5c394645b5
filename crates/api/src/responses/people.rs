//! Users, tokens, groups and grants.

use custody_domain::grant::{GrantAction, GrantStatus};
use custody_domain::{Scopes, Timestamp};
use serde::{Deserialize, Serialize};

/// A person, as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserView {
    /// The user's id.
    pub id: i64,
    /// The unique name.
    pub name: String,
    /// How they are shown.
    pub display_name: String,
    /// Registered e-mail addresses.
    pub emails: Vec<String>,
    /// `pending` until the grant creating them is approved, then `active`.
    pub state: String,
    /// Whether the user is disabled.
    pub disabled: bool,
    /// Whether the user is an admin.
    pub admin: bool,
    /// The groups the user belongs to.
    pub groups: Vec<String>,
    /// When the user was created.
    pub created_at: Timestamp,
}

/// A user just asked for, with the invite code only the asking admin sees.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedUser {
    /// The new user's name.
    pub name: String,
    /// The one-time code the user redeems for their own token.
    pub invite_code: String,
    /// When the code stops working.
    pub invite_expires_at: Timestamp,
    /// The grant creating the user: pending until a second admin approves.
    pub grant: GrantView,
}

/// A token just made. Its secret is shown once and never stored.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewToken {
    /// The token's public id.
    pub id: String,
    /// The token itself.
    pub token: String,
    /// Its scopes.
    #[schema(value_type = Vec<String>)]
    pub scopes: Scopes,
    /// When it stops working, if ever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
}

/// A token as listed: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    /// Its public id.
    pub id: String,
    /// What its owner called it.
    pub name: String,
    /// Its scopes.
    #[schema(value_type = Vec<String>)]
    pub scopes: Scopes,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops working, if ever.
    pub expires_at: Option<Timestamp>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// When it was last used (to the minute).
    pub last_used_at: Option<Timestamp>,
}

/// The outcome of disabling a user.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DisableOutcome {
    /// Whether the user is disabled now.
    pub disabled: bool,
    /// The grant, when disabling them needs a second admin.
    pub grant: Option<GrantView>,
}

/// A group as listed.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupView {
    /// The group's id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Whether custody made it and keeps it (`admins`, `auditors`).
    pub builtin: bool,
    /// Its members, in name order.
    pub members: Vec<MemberView>,
    /// When it was made.
    pub created_at: Timestamp,
}

/// A member of a group, and the grant that made them one.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    /// The member's name.
    pub user: String,
    /// The grant that added them.
    pub grant: i64,
    /// When they were added.
    pub added_at: Timestamp,
}

/// A grant as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantView {
    /// The grant's number.
    pub id: i64,
    /// What it does, as a structured value (`kind`, and its fields).
    #[schema(value_type = Object)]
    pub action: GrantAction,
    /// What it does, in words.
    pub description: String,
    /// The user it is about.
    pub named_user: String,
    /// The admin who asked for it.
    pub requested_by: String,
    /// When it was asked for.
    pub requested_at: Timestamp,
    /// `pending`, `approved`, `rejected` or `bootstrap` (applied at once
    /// while the instance had a single admin).
    #[schema(value_type = String)]
    pub status: GrantStatus,
    /// Who approved or rejected it.
    pub decided_by: Option<String>,
    /// When it was decided.
    pub decided_at: Option<Timestamp>,
    /// The note given with a rejection.
    pub note: Option<String>,
}
