//! Reading the audit log. Writing happens only through [`crate::Tx::audit`].

use custody_domain::audit::AuditEvent;

use crate::{col, Page, PageRequest, Result, Store, StoreError};

/// Which events to read.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only events at or after this time (milliseconds since the epoch).
    pub since_ms: Option<i64>,
    /// Only events before this time.
    pub until_ms: Option<i64>,
    /// Only events by this actor.
    pub actor: Option<String>,
    /// Only events with this action.
    pub action: Option<String>,
}

/// A page of audit events.
pub type AuditPage = Page<AuditEvent>;

impl Store {
    /// Audit events in sequence order, filtered, a page at a time (the
    /// cursor is the sequence number).
    pub async fn audit_events(&self, filter: &AuditFilter, page: PageRequest) -> Result<AuditPage> {
        // Without a time window, the query must not mention `at`: given a
        // range on it, SQLite walks the time index and sorts the whole log
        // for every page, which a log of a million events cannot afford.
        let rows = if filter.since_ms.is_none() && filter.until_ms.is_none() {
            let sql = self.sql(
                "SELECT seq, at, actor, action, subject, details FROM audit_events \
                 WHERE seq > $1 AND ($2 = '' OR actor = $2) AND ($3 = '' OR action = $3) ORDER BY seq LIMIT $4",
            );
            sqlx::query(&sql)
                .bind(page.after.unwrap_or(0))
                .bind(filter.actor.clone().unwrap_or_default())
                .bind(filter.action.clone().unwrap_or_default())
                .bind(page.limit)
                .fetch_all(self.readers())
                .await?
        } else {
            let sql = self.sql(
                "SELECT seq, at, actor, action, subject, details FROM audit_events \
                 WHERE seq > $1 AND at >= $2 AND at < $3 AND ($4 = '' OR actor = $4) AND ($5 = '' OR action = $5) \
                 ORDER BY seq LIMIT $6",
            );
            sqlx::query(&sql)
                .bind(page.after.unwrap_or(0))
                .bind(filter.since_ms.unwrap_or(i64::MIN))
                .bind(filter.until_ms.unwrap_or(i64::MAX))
                .bind(filter.actor.clone().unwrap_or_default())
                .bind(filter.action.clone().unwrap_or_default())
                .bind(page.limit)
                .fetch_all(self.readers())
                .await?
        };
        let mut events = Vec::with_capacity(rows.len());
        for row in rows {
            let details: String = col(&row, "details")?;
            events.push(AuditEvent {
                seq: col(&row, "seq")?,
                at_ms: col(&row, "at")?,
                actor: col(&row, "actor")?,
                action: col(&row, "action")?,
                subject: col(&row, "subject")?,
                details: serde_json::from_str(&details)
                    .map_err(|e| StoreError::Corrupt(format!("audit event details: {e}")))?,
            });
        }
        Ok(crate::page_of(events, page, |e| e.seq))
    }
}
