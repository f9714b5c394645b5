//! Applying a grant: what an approved (or bootstrap) grant changes, for
//! each kind of subject. Users, group memberships and secret versions are
//! changed here; projects' own changes are in [`crate::projects`]. Asking
//! for and deciding grants is in [`crate::grants`], above this.

use custody_domain::grant::{self, GrantAction};
use custody_domain::GroupName;

use crate::lookups::{existing_user, in_group, pending_for_user, revoke_all, user_id};
use crate::tx::Tx;
use crate::{now_ms, Result, StoreError};

pub(crate) async fn admin_count(tx: &mut Tx) -> Result<usize> {
    let sql = "SELECT COUNT(*) FROM group_members m JOIN groups g ON g.id = m.group_id \
               JOIN users u ON u.id = m.user_id WHERE g.name = 'admins' AND u.disabled_at IS NULL";
    let count: i64 = sqlx::query_scalar(sql).fetch_one(tx.conn()).await?;
    Ok(count as usize)
}

async fn group_id(tx: &mut Tx, group: &GroupName) -> Result<i64> {
    let sql = tx.sql("SELECT id FROM groups WHERE name = $1");
    sqlx::query_scalar(&sql)
        .bind(group.as_str())
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| StoreError::not_found("group", group))
}

/// Checks that `action` can be applied to the state as it is now.
pub(crate) async fn check_applicable(tx: &mut Tx, action: &GrantAction) -> Result<()> {
    match action {
        GrantAction::CreateUser { user, .. } => {
            let (_, state, _) = user_id(tx, user).await?.ok_or_else(|| StoreError::not_found("user", user))?;
            if state != "pending" {
                return Err(StoreError::Conflict(format!("user {user} already exists")));
            }
        }
        GrantAction::AddGroupMember { group, user } => {
            let group_id = group_id(tx, group).await?;
            let (user_id, state, disabled_at) =
                user_id(tx, user).await?.ok_or_else(|| StoreError::not_found("user", user))?;
            if disabled_at.is_some() {
                return Err(StoreError::Conflict(format!("user {user} is disabled")));
            }
            if state != "active" {
                let pending = pending_for_user(tx, user.as_str()).await?;
                return Err(StoreError::Conflict(format!(
                    "user {user} does not exist yet: the grant creating them ({}) must be approved first",
                    pending.map_or("pending".to_owned(), |id| format!("grant {id}"))
                )));
            }
            let sql = tx.sql("SELECT COUNT(*) FROM group_members WHERE group_id = $1 AND user_id = $2");
            let n: i64 = sqlx::query_scalar(&sql).bind(group_id).bind(user_id).fetch_one(tx.conn()).await?;
            if n > 0 {
                return Err(StoreError::Conflict(format!("{user} is already a member of {group}")));
            }
        }
        GrantAction::RemoveGroupMember { group, user } => {
            let group_id = group_id(tx, group).await?;
            let (user_id, _) = existing_user(tx, user).await?;
            let sql = tx.sql("SELECT COUNT(*) FROM group_members WHERE group_id = $1 AND user_id = $2");
            let n: i64 = sqlx::query_scalar(&sql).bind(group_id).bind(user_id).fetch_one(tx.conn()).await?;
            if n == 0 {
                return Err(StoreError::Conflict(format!("{user} is not a member of {group}")));
            }
            keeps_an_admin(tx, action, true).await?;
        }
        GrantAction::DisableUser { user } => {
            let (user_id, disabled) = existing_user(tx, user).await?;
            if disabled {
                return Err(StoreError::Conflict(format!("user {user} is already disabled")));
            }
            let is_admin = in_group(tx, user_id, "admins").await?;
            keeps_an_admin(tx, action, is_admin).await?;
        }
        GrantAction::EnableUser { user } => {
            let (_, disabled) = existing_user(tx, user).await?;
            if !disabled {
                return Err(StoreError::Conflict(format!("user {user} is not disabled")));
            }
        }
        GrantAction::AddProjectMember { .. }
        | GrantAction::RemoveProjectMember { .. }
        | GrantAction::ProtectBranch { .. }
        | GrantAction::UnprotectBranch { .. }
        | GrantAction::SetDefaultBranch { .. }
        | GrantAction::ImportRepository { .. }
        | GrantAction::DeleteTag { .. } => crate::projects::check_applicable(tx, action).await?,
        GrantAction::SetSecret { .. } => {}
        GrantAction::RotateKey { .. } | GrantAction::RevokeKey { .. } | GrantAction::RegisterWorker { .. } => {
            crate::keys::check_applicable(tx, action).await?
        }
    }
    Ok(())
}

async fn keeps_an_admin(tx: &mut Tx, action: &GrantAction, target_is_admin: bool) -> Result<()> {
    crate::allowed(grant::decide_keeps_an_admin(action, target_is_admin, admin_count(tx).await?))
}

/// Applies a grant's action. `grant_id` is recorded on memberships.
pub(crate) async fn apply(tx: &mut Tx, grant_id: i64, action: &GrantAction) -> Result<()> {
    check_applicable(tx, action).await?;
    // Its event renews the subject's seal: only over rows custody wrote, so
    // that no forged row is sealed in with the grant.
    crate::seals::check(tx, &action.subject()).await?;
    let now = now_ms();
    match action {
        GrantAction::CreateUser { user, .. } => {
            let sql = tx.sql("UPDATE users SET state = 'active' WHERE name = $1 AND state = 'pending'");
            sqlx::query(&sql).bind(user.as_str()).execute(tx.conn()).await?;
        }
        GrantAction::AddGroupMember { group, user } => {
            let group_id = group_id(tx, group).await?;
            let (user_id, _) = existing_user(tx, user).await?;
            let sql =
                tx.sql("INSERT INTO group_members (group_id, user_id, grant_id, added_at) VALUES ($1, $2, $3, $4)");
            sqlx::query(&sql).bind(group_id).bind(user_id).bind(grant_id).bind(now).execute(tx.conn()).await?;
        }
        GrantAction::RemoveGroupMember { group, user } => {
            let group_id = group_id(tx, group).await?;
            let (user_id, _) = existing_user(tx, user).await?;
            let sql = tx.sql("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2");
            sqlx::query(&sql).bind(group_id).bind(user_id).execute(tx.conn()).await?;
        }
        GrantAction::DisableUser { user } => {
            let (user_id, _) = existing_user(tx, user).await?;
            let sql = tx.sql("UPDATE users SET disabled_at = $1 WHERE id = $2");
            sqlx::query(&sql).bind(now).bind(user_id).execute(tx.conn()).await?;
            revoke_all(tx, user_id).await?;
        }
        GrantAction::EnableUser { user } => {
            let (user_id, _) = existing_user(tx, user).await?;
            let sql = tx.sql("UPDATE users SET disabled_at = NULL WHERE id = $1");
            sqlx::query(&sql).bind(user_id).execute(tx.conn()).await?;
            // Only the newest invite, made with this request, works: one an
            // earlier request (rejected, say) made stays dead.
            let sql = tx.sql(
                "UPDATE invites SET expires_at = $1 WHERE user_id = $2 AND redeemed_at IS NULL AND expires_at > $1 \
                 AND created_at < (SELECT MAX(created_at) FROM invites WHERE user_id = $2)",
            );
            sqlx::query(&sql).bind(now).bind(user_id).execute(tx.conn()).await?;
        }
        GrantAction::AddProjectMember { .. }
        | GrantAction::RemoveProjectMember { .. }
        | GrantAction::ProtectBranch { .. }
        | GrantAction::UnprotectBranch { .. }
        | GrantAction::SetDefaultBranch { .. }
        | GrantAction::ImportRepository { .. }
        | GrantAction::DeleteTag { .. } => crate::projects::apply(tx, grant_id, action).await?,
        GrantAction::SetSecret { .. } => apply_secret(tx, action).await?,
        GrantAction::RotateKey { .. } | GrantAction::RevokeKey { .. } | GrantAction::RegisterWorker { .. } => {
            crate::keys::apply(tx, grant_id, action).await?
        }
    }
    Ok(())
}

/// Makes a version current (the grant was approved, or bootstrap applied it).
async fn apply_secret(tx: &mut Tx, action: &GrantAction) -> Result<()> {
    let GrantAction::SetSecret { project, environment, name, version } = action else { return Ok(()) };
    let sql = tx.sql("SELECT id FROM projects WHERE name = $1");
    let project_id: i64 = sqlx::query_scalar(&sql)
        .bind(project.as_str())
        .fetch_optional(tx.conn())
        .await?
        .ok_or_else(|| StoreError::not_found("project", project))?;
    let sql = tx.sql(
        "UPDATE secrets SET status = 'replaced' WHERE project_id = $1 AND environment = $2 AND name = $3 \
         AND status = 'current'",
    );
    sqlx::query(&sql).bind(project_id).bind(environment).bind(name).execute(tx.conn()).await?;
    let sql = tx.sql(
        "UPDATE secrets SET status = 'current', current_since = $1 WHERE project_id = $2 AND environment = $3 \
         AND name = $4 AND version = $5 AND status = 'pending'",
    );
    let done = sqlx::query(&sql)
        .bind(now_ms())
        .bind(project_id)
        .bind(environment)
        .bind(name)
        .bind(version)
        .execute(tx.conn())
        .await?;
    if done.rows_affected() != 1 {
        return Err(StoreError::Conflict(format!("version {version} of secret {name} is no longer waiting")));
    }
    Ok(())
}
