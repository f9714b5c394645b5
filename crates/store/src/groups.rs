//! Groups of people, whose membership changes only by grants.

use custody_api::{GroupView, MemberView};
use custody_domain::audit::NewEvent;
use custody_domain::grant::GrantAction;
use custody_domain::{GroupName, Timestamp, UserName};
use serde_json::json;

use crate::lookups::{require_admin, Authenticated};
use crate::GrantView;
use crate::{col, now_ms, Page, PageRequest, Result, Store, StoreError};

impl Store {
    /// An admin makes an empty group. Membership changes are grants, so an
    /// empty group confers nothing and needs no second admin.
    pub async fn create_group(&self, actor: &Authenticated, name: GroupName) -> Result<GroupView> {
        let actor = actor.clone();
        let id = self
            .write(move |tx| {
                Box::pin(async move {
                    require_admin(tx, &actor).await?;
                    let sql = tx.sql("INSERT INTO groups (name, builtin, created_at) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING RETURNING id");
                    let id: Option<i64> =
                        sqlx::query_scalar(&sql).bind(name.as_str()).bind(now_ms()).fetch_optional(tx.conn()).await?;
                    let id = id.ok_or_else(|| StoreError::Conflict(format!("a group named {name} already exists")))?;
                    tx.audit(NewEvent {
                        actor: actor.name.to_string(),
                        action: "group.create".into(),
                        subject: format!("group:{name}"),
                        details: json!({}),
                    })
                    .await?;
                    Ok(id)
                })
            })
            .await?;
        self.group_by_id(id).await
    }

    /// An admin asks to add `user` to `group`: a grant.
    pub async fn request_membership(
        &self,
        actor: &Authenticated,
        group: GroupName,
        user: UserName,
    ) -> Result<GrantView> {
        self.request(actor, GrantAction::AddGroupMember { group, user }).await
    }

    /// An admin asks to remove `user` from `group`: a grant.
    pub async fn request_removal(&self, actor: &Authenticated, group: GroupName, user: UserName) -> Result<GrantView> {
        self.request(actor, GrantAction::RemoveGroupMember { group, user }).await
    }

    /// Every group with its members, a page at a time.
    pub async fn list_groups(&self, page: PageRequest) -> Result<Page<GroupView>> {
        let sql = self.sql("SELECT id FROM groups WHERE id > $1 ORDER BY id LIMIT $2");
        let ids: Vec<i64> =
            sqlx::query_scalar(&sql).bind(page.after.unwrap_or(0)).bind(page.limit).fetch_all(self.readers()).await?;
        let mut groups = Vec::with_capacity(ids.len());
        for id in ids {
            groups.push(self.group_by_id(id).await?);
        }
        Ok(crate::page_of(groups, page, |g| g.id))
    }

    /// One group with its members.
    pub async fn get_group(&self, name: &GroupName) -> Result<GroupView> {
        let sql = self.sql("SELECT id FROM groups WHERE name = $1");
        let id: i64 = sqlx::query_scalar(&sql)
            .bind(name.as_str())
            .fetch_optional(self.readers())
            .await?
            .ok_or_else(|| StoreError::not_found("group", name))?;
        self.group_by_id(id).await
    }

    async fn group_by_id(&self, id: i64) -> Result<GroupView> {
        let sql = self.sql("SELECT id, name, builtin, created_at FROM groups WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_one(self.readers()).await?;
        let sql = self.sql(
            "SELECT u.name, m.grant_id, m.added_at FROM group_members m JOIN users u ON u.id = m.user_id \
             WHERE m.group_id = $1 ORDER BY u.name",
        );
        let members = sqlx::query(&sql)
            .bind(id)
            .fetch_all(self.readers())
            .await?
            .iter()
            .map(|m| {
                Ok(MemberView {
                    user: col(m, "name")?,
                    grant: col(m, "grant_id")?,
                    added_at: Timestamp::from_millis(col(m, "added_at")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupView {
            id,
            name: col(&row, "name")?,
            builtin: col::<i64>(&row, "builtin")? != 0,
            members,
            created_at: Timestamp::from_millis(col(&row, "created_at")?),
        })
    }
}
