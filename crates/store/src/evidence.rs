//! What an evidence bundle and the auditor's report gather: the audit event
//! that recorded each signed statement, the deployments of one build, and
//! when the instance (and so its first keys) came to be.

use custody_domain::audit::AuditEvent;

use crate::lookups::ProjectAccess;
use crate::DeploymentView;
use crate::{col, Result, Store, StoreError};

fn event(row: &sqlx::any::AnyRow) -> Result<AuditEvent> {
    let details: String = col(row, "details")?;
    Ok(AuditEvent {
        seq: col(row, "seq")?,
        at_ms: col(row, "at")?,
        actor: col(row, "actor")?,
        action: col(row, "action")?,
        subject: col(row, "subject")?,
        details: serde_json::from_str(&details)
            .map_err(|e| StoreError::Corrupt(format!("audit event details: {e}")))?,
    })
}

impl Store {
    /// Every event about `subject`, oldest first, proved as a decision
    /// proves them (each tag, the subject's unbroken chain to the newest
    /// event custody wrote about it): what evidence is built from.
    pub async fn proven_events_about(&self, subject: &str) -> Result<Vec<AuditEvent>> {
        let events = crate::proof::proven_events(&mut self.reader().await?, subject).await?;
        Ok(events
            .into_iter()
            .map(|e| AuditEvent {
                seq: e.seq,
                at_ms: e.at,
                actor: e.actor,
                action: e.action,
                subject: e.subject,
                details: e.details,
            })
            .collect())
    }

    /// The newest audit event with `action` about `subject`, such as the
    /// `change.merge` of `change:payments/3`.
    pub async fn audit_event_about(&self, action: &str, subject: &str) -> Result<Option<AuditEvent>> {
        let sql = self.sql(
            "SELECT seq, at, actor, action, subject, details FROM audit_events \
             WHERE action = $1 AND subject = $2 ORDER BY seq DESC LIMIT 1",
        );
        let row = sqlx::query(&sql).bind(action).bind(subject).fetch_optional(self.readers()).await?;
        row.as_ref().map(event).transpose()
    }

    /// Every audit event with one of `actions` in `[since_ms, until_ms)`,
    /// in sequence order (at most 10,000).
    pub async fn audit_events_of(&self, actions: &[&str], since_ms: i64, until_ms: i64) -> Result<Vec<AuditEvent>> {
        let mut found = Vec::new();
        for action in actions {
            let sql = self.sql(
                "SELECT seq, at, actor, action, subject, details FROM audit_events \
                 WHERE action = $1 AND at >= $2 AND at < $3 ORDER BY seq LIMIT 10000",
            );
            let rows = sqlx::query(&sql).bind(*action).bind(since_ms).bind(until_ms).fetch_all(self.readers()).await?;
            for row in &rows {
                found.push(event(row)?);
            }
        }
        found.sort_by_key(|e| e.seq);
        Ok(found)
    }

    /// When the instance was initialised: the time of its first audit
    /// event, which `init` writes right after making the service keys.
    pub async fn initialised_at(&self) -> Result<Option<i64>> {
        let sql = self.sql("SELECT at FROM audit_events WHERE seq = 1");
        Ok(sqlx::query_scalar::<_, i64>(&sql).fetch_optional(self.readers()).await?)
    }

    /// The deployments of build `build` that succeeded, oldest first.
    pub async fn succeeded_deployments_of(&self, access: &ProjectAccess, build: i64) -> Result<Vec<DeploymentView>> {
        let mut all = self.deployments_of_build(access, build).await?;
        all.retain(|d| d.status == custody_domain::status::DeploymentStatus::Succeeded);
        Ok(all)
    }
}
