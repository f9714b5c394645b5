//! The ground floor of the store's features: who is acting, what they may
//! do in a project, and the small lookups every feature module reads (ids,
//! memberships, admin status, a grant as shown). It imports no feature
//! module; every feature module may import it.

use std::collections::BTreeSet;

use custody_domain::grant::{self, AdminActor};
use custody_domain::{GroupName, ProjectName, Role, Scope, Scopes, UserName};

use crate::tx::{Reads, Tx};
use crate::{col, now_ms, Result, StoreError};

/// Who is acting, as established by their token. Handlers receive this or
/// never run.
#[derive(Clone, Debug)]
pub struct Authenticated {
    /// The user's id.
    pub user_id: i64,
    /// The user's name.
    pub name: UserName,
    /// The scopes of the token used.
    pub scopes: Scopes,
    /// The id of the token used.
    pub token_id: String,
    /// Whether the user is an admin now.
    pub is_admin: bool,
    /// Whether the user is an auditor now.
    pub is_auditor: bool,
    /// When the token used stops working, if ever.
    pub expires_at: Option<i64>,
    /// The audit log's newest sequence number, read with the token (0 when
    /// not read): what a request can rely on as current.
    pub as_of: i64,
}

impl Authenticated {
    /// Whether the token carries `scope`.
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }

    /// The actor as the grant rules see them.
    pub fn as_admin(&self) -> AdminActor<'_> {
        AdminActor { name: &self.name, is_admin: self.is_admin, admin_scope: self.has_scope(Scope::Admin) }
    }

    /// Whether they may read everything (admins and auditors).
    pub fn reads_everything(&self) -> bool {
        self.is_admin || self.is_auditor
    }
}

/// What someone may do in a project, and what the push rules need.
#[derive(Clone, Debug)]
pub struct ProjectAccess {
    /// The project's id.
    pub project_id: i64,
    /// The project's name.
    pub project: ProjectName,
    /// Their role, if they are a member.
    pub role: Option<Role>,
    /// Whether they may read it.
    pub can_read: bool,
    /// The default branch.
    pub default_branch: String,
    /// The protected branches besides the default one.
    pub protected: Vec<String>,
    /// The audit log's newest sequence number when this was read: what the
    /// database held then is what it held at that event.
    pub as_of: i64,
}

/// A user's id, state and when they were disabled, by name.
pub(crate) async fn user_id(tx: &mut Tx, name: &UserName) -> Result<Option<(i64, String, Option<i64>)>> {
    let sql = tx.sql("SELECT id, state, disabled_at FROM users WHERE name = $1");
    let row = sqlx::query(&sql).bind(name.as_str()).fetch_optional(tx.conn()).await?;
    row.map(|row| Ok((col(&row, "id")?, col(&row, "state")?, col(&row, "disabled_at")?))).transpose()
}

/// A user who must exist: their id and whether they are disabled.
pub(crate) async fn existing_user(tx: &mut Tx, user: &UserName) -> Result<(i64, bool)> {
    let (id, _, disabled_at) = user_id(tx, user).await?.ok_or_else(|| StoreError::not_found("user", user))?;
    Ok((id, disabled_at.is_some()))
}

/// Whether `user_id` is in the group named `group` now.
pub(crate) async fn in_group(tx: &mut Tx, user_id: i64, group: &str) -> Result<bool> {
    let sql = tx.sql(
        "SELECT COUNT(*) FROM group_members m JOIN groups g ON g.id = m.group_id \
         WHERE m.user_id = $1 AND g.name = $2",
    );
    let count: i64 = sqlx::query_scalar(&sql).bind(user_id).bind(group).fetch_one(tx.conn()).await?;
    Ok(count > 0)
}

/// Re-reads the actor's admin status inside the transaction, so that a
/// decision rests on what is true at commit, not at authentication.
pub(crate) async fn require_admin(tx: &mut Tx, actor: &Authenticated) -> Result<()> {
    crate::seals::check(tx, &format!("user:{}", actor.name)).await?;
    let is_admin = in_group(tx, actor.user_id, "admins").await?;
    let decision =
        grant::decide_admin(&AdminActor { name: &actor.name, is_admin, admin_scope: actor.has_scope(Scope::Admin) });
    if !decision.allowed {
        return Err(StoreError::Refused(decision));
    }
    Ok(())
}

/// Revokes every token of a user and voids their unredeemed invites.
pub(crate) async fn revoke_all(tx: &mut Tx, user_id: i64) -> Result<()> {
    let now = now_ms();
    let sql = tx.sql("UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL");
    sqlx::query(&sql).bind(now).bind(user_id).execute(tx.conn()).await?;
    let sql =
        tx.sql("UPDATE invites SET expires_at = $1 WHERE user_id = $2 AND redeemed_at IS NULL AND expires_at > $1");
    sqlx::query(&sql).bind(now).bind(user_id).execute(tx.conn()).await?;
    Ok(())
}

/// The pending grant that would create `user`, if any.
pub(crate) async fn pending_for_user(tx: &mut Tx, user: &str) -> Result<Option<i64>> {
    let sql = tx.sql("SELECT id FROM grants WHERE status = 'pending' AND action = 'user.create' AND named_user = $1");
    Ok(sqlx::query_scalar(&sql).bind(user).fetch_optional(tx.conn()).await?)
}

/// A stored user name, read back; another value is damaged data.
pub(crate) fn parse_user(name: String) -> Result<UserName> {
    UserName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The enabled members of a group.
pub(crate) async fn group_members(tx: &mut impl Reads, group: &GroupName) -> Result<BTreeSet<UserName>> {
    let sql = tx.sql(
        "SELECT u.name FROM group_members m JOIN groups g ON g.id = m.group_id JOIN users u ON u.id = m.user_id \
         WHERE g.name = $1 AND u.disabled_at IS NULL",
    );
    let names = sqlx::query_scalar::<_, String>(&sql).bind(group.as_str()).fetch_all(tx.conn()).await?;
    names.into_iter().map(parse_user).collect()
}

/// The decisions custody recorded on a deployment, oldest first, from its
/// proven events: (who, kind).
pub(crate) fn recorded_decisions(events: &[crate::proof::TaggedEvent]) -> Vec<(&str, &str)> {
    events
        .iter()
        .filter_map(|e| match e.action.strip_prefix("deploy.")? {
            kind @ ("approve" | "reject" | "test_passed" | "test_failed") => Some((e.actor.as_str(), kind)),
            _ => None,
        })
        .collect()
}

/// Whether the merge of `change` as `commit` is proven to have reached its
/// branch: a merge recorded with its intent (its event names a base) needs
/// the `change.merge_landed` event its settling wrote; merges recorded
/// before intents existed moved their branch in their own transaction.
pub(crate) async fn prove_landed(
    tx: &mut impl crate::tx::Reads,
    project: &str,
    change: i64,
    commit: &str,
) -> Result<()> {
    let events = crate::proof::proven_events(tx, &format!("change:{project}/{change}")).await?;
    let merged = events
        .iter()
        .rposition(|e| e.action == "change.merge" && crate::proof::detail(e, "merge_commit") == Some(commit));
    let Some(merged) = merged else {
        return Err(crate::proof::unproven(format!(
            "change {change} of {project}: custody recorded no merge of it as {}",
            custody_domain::short_id(commit)
        )));
    };
    if events[merged].details.get("base").is_none() {
        return Ok(());
    }
    let landed = events[merged..]
        .iter()
        .any(|e| e.action == "change.merge_landed" && crate::proof::detail(e, "merge_commit") == Some(commit));
    if landed {
        return Ok(());
    }
    Err(crate::proof::unproven(format!(
        "merge_intents of change {change} of {project}: custody never recorded its merge {} reaching the branch, and \
         no intent is pending (deleted or settled around custody)",
        custody_domain::short_id(commit)
    )))
}
