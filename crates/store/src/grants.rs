//! Grants: asked for by one admin, applied when a second approves. What
//! applying one changes is in [`crate::applying`].

use custody_domain::audit::{NewEvent, SYSTEM_ACTOR};
use custody_domain::grant::{self, AdminActor, AdminEra, Effect, GrantAction, GrantFacts, GrantStatus};
use custody_domain::{GroupName, Scope, Timestamp, UserName};
use serde_json::json;

use crate::applying::{admin_count, apply, check_applicable};
use crate::lookups::{in_group, require_admin, Authenticated};
use crate::tx::Tx;
use crate::GrantView;
use crate::{col, now_ms, Dialect, Page, PageRequest, Result, Store, StoreError};

fn facts_of(view: &GrantView) -> GrantFacts<'_> {
    GrantFacts { id: view.id, action: &view.action, requested_by: &view.requested_by, status: view.status }
}

fn grant_view(row: &sqlx::any::AnyRow) -> Result<GrantView> {
    let payload: String = col(row, "payload")?;
    let action: GrantAction =
        serde_json::from_str(&payload).map_err(|e| StoreError::Corrupt(format!("grant payload: {e}")))?;
    let status: String = col(row, "status")?;
    Ok(GrantView {
        id: col(row, "id")?,
        description: action.describe(),
        action,
        named_user: col(row, "named_user")?,
        requested_by: col(row, "requested_by")?,
        requested_at: Timestamp::from_millis(col(row, "requested_at")?),
        status: GrantStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("grant status {status:?}")))?,
        decided_by: col(row, "decided_by")?,
        decided_at: col::<Option<i64>>(row, "decided_at")?.map(Timestamp::from_millis),
        note: col(row, "note")?,
    })
}

const SELECT_GRANT: &str = "SELECT id, payload, named_user, requested_by, requested_at, status, decided_by, \
                            decided_at, note FROM grants WHERE id = $1";

/// One grant, through the writer's transaction or a reader.
async fn fetch<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    dialect: Dialect,
    id: i64,
) -> Result<GrantView> {
    let sql = dialect.sql(SELECT_GRANT);
    let row =
        sqlx::query(&sql).bind(id).fetch_optional(executor).await?.ok_or_else(|| StoreError::not_found("grant", id))?;
    grant_view(&row)
}

async fn load(tx: &mut Tx, id: i64) -> Result<GrantView> {
    crate::seals::check(tx, &format!("grant:{id}")).await?;
    let dialect = tx.dialect();
    fetch(tx.conn(), dialect, id).await
}

pub(crate) async fn era(tx: &mut Tx) -> Result<AdminEra> {
    let sql = tx.sql("SELECT value FROM instance WHERE key = $1");
    let value: Option<String> = sqlx::query_scalar(&sql).bind("admin_era").fetch_optional(tx.conn()).await?;
    match value.as_deref() {
        Some("bootstrap") => Ok(AdminEra::Bootstrap),
        Some("governed") => Ok(AdminEra::Governed),
        other => Err(StoreError::Corrupt(format!("admin era {other:?}"))),
    }
}

/// Ends the bootstrap era for good once a second admin exists. Called after
/// a grant's own events, so the log reads in the order things happened.
pub(crate) async fn advance_era(tx: &mut Tx) -> Result<()> {
    let before = era(tx).await?;
    let after = before.after(admin_count(tx).await?);
    if before != after {
        let sql = tx.sql("UPDATE instance SET value = $1 WHERE key = $2");
        sqlx::query(&sql).bind("governed").bind("admin_era").execute(tx.conn()).await?;
        tx.audit(NewEvent {
            actor: SYSTEM_ACTOR.into(),
            action: "instance.bootstrap.end".into(),
            subject: "instance".into(),
            details: json!({ "reason": "a second admin exists; from now on every grant needs a second admin" }),
        })
        .await?;
    }
    Ok(())
}

fn applied_event(actor: &str, grant: &GrantView, how: &str) -> NewEvent {
    NewEvent {
        actor: actor.to_owned(),
        action: grant.action.action_name().into(),
        subject: grant.action.subject(),
        details: json!({
            "grant": grant.id,
            "requested_by": grant.requested_by,
            "bootstrap": grant.status == GrantStatus::Bootstrap,
            "how": how,
            "action": grant.action,
        }),
    }
}

async fn insert(tx: &mut Tx, requested_by: &str, action: &GrantAction, status: GrantStatus) -> Result<GrantView> {
    let payload = serde_json::to_string(action).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let decided_at = (status != GrantStatus::Pending).then(now_ms);
    let sql = tx.sql(
        "INSERT INTO grants (action, payload, named_user, requested_by, requested_at, status, decided_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    );
    let id: i64 = sqlx::query_scalar(&sql)
        .bind(action.action_name())
        .bind(payload)
        .bind(action.named_user().map_or("", UserName::as_str))
        .bind(requested_by)
        .bind(now_ms())
        .bind(status.as_str())
        .bind(decided_at)
        .fetch_one(tx.conn())
        .await?;
    tx.touch(&format!("grant:{id}"));
    load(tx, id).await
}

/// Records the first admin, made by `custody init`, as a bootstrap grant.
pub(crate) async fn record_initial_admin(tx: &mut Tx, admin: &UserName, user_id: i64) -> Result<()> {
    let action = GrantAction::AddGroupMember { group: GroupName::admins(), user: admin.clone() };
    let grant = insert(tx, SYSTEM_ACTOR, &action, GrantStatus::Bootstrap).await?;
    let sql = tx.sql(
        "INSERT INTO group_members (group_id, user_id, grant_id, added_at) \
         SELECT id, $1, $2, $3 FROM groups WHERE name = 'admins'",
    );
    sqlx::query(&sql).bind(user_id).bind(grant.id).bind(now_ms()).execute(tx.conn()).await?;
    tx.audit(applied_event(SYSTEM_ACTOR, &grant, "init")).await?;
    Ok(())
}

/// An admin asks for a grant. In the bootstrap era it applies at once and
/// is marked so; afterwards it waits for a second admin.
pub(crate) async fn request(tx: &mut Tx, actor: &Authenticated, action: GrantAction) -> Result<GrantView> {
    require_admin(tx, actor).await?;
    let payload = serde_json::to_string(&action).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let sql = tx.sql("SELECT id FROM grants WHERE status = 'pending' AND payload = $1");
    let duplicate: Option<i64> = sqlx::query_scalar(&sql).bind(payload).fetch_optional(tx.conn()).await?;
    crate::allowed(grant::decide_not_duplicate(&action, duplicate))?;
    check_applicable(tx, &action).await?;
    match grant::effect_of_request(era(tx).await?) {
        Effect::ApplyAsBootstrap => {
            let grant = insert(tx, actor.name.as_str(), &action, GrantStatus::Bootstrap).await?;
            apply(tx, grant.id, &action).await?;
            tx.audit(applied_event(actor.name.as_str(), &grant, "bootstrap")).await?;
            advance_era(tx).await?;
            Ok(grant)
        }
        Effect::AwaitSecondAdmin => {
            let grant = insert(tx, actor.name.as_str(), &action, GrantStatus::Pending).await?;
            tx.audit(NewEvent {
                actor: actor.name.to_string(),
                action: "grant.request".into(),
                subject: format!("grant:{}", grant.id),
                details: json!({ "action": action, "description": grant.description }),
            })
            .await?;
            Ok(grant)
        }
    }
}

async fn acting_admin<'a>(tx: &mut Tx, actor: &'a Authenticated) -> Result<AdminActor<'a>> {
    Ok(AdminActor {
        name: &actor.name,
        is_admin: in_group(tx, actor.user_id, "admins").await?,
        admin_scope: actor.has_scope(Scope::Admin),
    })
}

impl Store {
    /// An admin asks for a grant of any kind: applied at once, and marked,
    /// during bootstrap; otherwise pending until a second admin approves.
    pub async fn request(&self, actor: &Authenticated, action: GrantAction) -> Result<GrantView> {
        let actor = actor.clone();
        self.write(move |tx| Box::pin(async move { request(tx, &actor, action).await })).await
    }

    /// A second admin approves a pending grant, which is applied at once.
    pub async fn approve_grant(&self, actor: &Authenticated, id: i64) -> Result<GrantView> {
        let actor = actor.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let grant = load(tx, id).await?;
                let admin = acting_admin(tx, &actor).await?;
                crate::allowed(grant::decide_approval(&facts_of(&grant), &admin))?;
                apply(tx, grant.id, &grant.action).await?;
                tx.touch(&format!("grant:{id}"));
                let sql = tx.sql(
                    "UPDATE grants SET status = 'approved', decided_by = $1, decided_at = $2 \
                     WHERE id = $3 AND status = 'pending'",
                );
                let done =
                    sqlx::query(&sql).bind(actor.name.as_str()).bind(now_ms()).bind(id).execute(tx.conn()).await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict(format!("grant {id} was decided meanwhile")));
                }
                let grant = load(tx, id).await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "grant.approve".into(),
                    subject: format!("grant:{id}"),
                    details: json!({ "requested_by": grant.requested_by, "description": grant.description }),
                })
                .await?;
                tx.audit(applied_event(actor.name.as_str(), &grant, "approved")).await?;
                advance_era(tx).await?;
                Ok(grant)
            })
        })
        .await
    }

    /// An admin rejects a pending grant (the requester may withdraw it).
    /// Nothing of it is applied; a user it would have created is removed.
    pub async fn reject_grant(&self, actor: &Authenticated, id: i64, note: Option<String>) -> Result<GrantView> {
        let actor = actor.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let grant = load(tx, id).await?;
                let admin = acting_admin(tx, &actor).await?;
                crate::allowed(grant::decide_rejection(&facts_of(&grant), &admin))?;
                tx.touch(&format!("grant:{id}"));
                let sql = tx.sql(
                    "UPDATE grants SET status = 'rejected', decided_by = $1, decided_at = $2, note = $3 \
                     WHERE id = $4 AND status = 'pending'",
                );
                let done = sqlx::query(&sql)
                    .bind(actor.name.as_str())
                    .bind(now_ms())
                    .bind(note.clone())
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict(format!("grant {id} was decided meanwhile")));
                }
                if let GrantAction::CreateUser { user, .. } = &grant.action {
                    // Frees the name and address for another try.
                    for sql in [
                        "DELETE FROM invites WHERE user_id IN (SELECT id FROM users WHERE name = $1 AND state = 'pending')",
                        "DELETE FROM user_emails WHERE user_id IN (SELECT id FROM users WHERE name = $1 AND state = 'pending')",
                        "DELETE FROM users WHERE name = $1 AND state = 'pending'",
                    ] {
                        let sql = tx.sql(sql);
                        sqlx::query(&sql).bind(user.as_str()).execute(tx.conn()).await?;
                    }
                    // An event about the user: their removal is sealed at
                    // it, so the pending user cannot be replayed.
                    tx.audit(NewEvent {
                        actor: actor.name.to_string(),
                        action: "user.rejected".into(),
                        subject: format!("user:{user}"),
                        details: json!({ "grant": id }),
                    })
                    .await?;
                }
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "grant.reject".into(),
                    subject: format!("grant:{id}"),
                    details: json!({ "requested_by": grant.requested_by, "description": grant.description, "note": note }),
                })
                .await?;
                load(tx, id).await
            })
        })
        .await
    }

    /// One grant.
    pub async fn get_grant(&self, id: i64) -> Result<GrantView> {
        fetch(self.readers(), self.dialect(), id).await
    }

    /// Grants, optionally only those with `status`, a page at a time.
    pub async fn list_grants(&self, status: Option<GrantStatus>, page: PageRequest) -> Result<Page<GrantView>> {
        let sql = self.sql(
            "SELECT id, payload, named_user, requested_by, requested_at, status, decided_by, decided_at, note \
             FROM grants WHERE id > $1 AND ($2 = '' OR status = $2) ORDER BY id LIMIT $3",
        );
        let rows = sqlx::query(&sql)
            .bind(page.after.unwrap_or(0))
            .bind(status.map(GrantStatus::as_str).unwrap_or(""))
            .bind(page.limit)
            .fetch_all(self.readers())
            .await?;
        let items = rows.iter().map(grant_view).collect::<Result<Vec<_>>>()?;
        Ok(crate::page_of(items, page, |g| g.id))
    }

    /// The newest `limit` grants that are no longer pending, newest first.
    pub async fn decided_grants(&self, limit: i64) -> Result<Vec<GrantView>> {
        let sql = self.sql(
            "SELECT id, payload, named_user, requested_by, requested_at, status, decided_by, decided_at, note \
             FROM grants WHERE status <> 'pending' ORDER BY id DESC LIMIT $1",
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(self.readers()).await?;
        rows.iter().map(grant_view).collect()
    }

    /// Whether the instance is still in its bootstrap era.
    pub async fn admin_era(&self) -> Result<AdminEra> {
        let sql = self.sql("SELECT value FROM instance WHERE key = $1");
        let value: Option<String> = sqlx::query_scalar(&sql).bind("admin_era").fetch_optional(self.readers()).await?;
        match value.as_deref() {
            Some("governed") => Ok(AdminEra::Governed),
            _ => Ok(AdminEra::Bootstrap),
        }
    }
}
