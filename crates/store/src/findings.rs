//! Findings: what an auditor must look at. A break-glass deployment opens
//! one in the transaction that records it; it stays open until an admin
//! who was not involved (neither its requester nor anyone who decided on
//! it) records a review.

use custody_api::FindingView;
use custody_domain::audit::NewEvent;
use custody_domain::{Timestamp, UserName};
use serde_json::json;

use crate::tx::{Reads, Tx};
use crate::{col, now_ms, Authenticated, Result, Store, StoreError};

/// Opens a finding in the caller's transaction.
pub(crate) async fn open(
    tx: &mut Tx,
    kind: &str,
    project_id: Option<i64>,
    subject: &str,
    summary: &str,
    involved: &[String],
) -> Result<i64> {
    let sql = tx.sql(
        "INSERT INTO findings (kind, project_id, subject, summary, involved, opened_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    );
    let involved = serde_json::to_string(involved).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let id: i64 = sqlx::query_scalar(&sql)
        .bind(kind)
        .bind(project_id)
        .bind(subject)
        .bind(summary)
        .bind(involved)
        .bind(now_ms())
        .fetch_one(tx.conn())
        .await?;
    // Who was involved is what the review rule reads: sealed from the start.
    tx.touch(&format!("finding:{id}"));
    Ok(id)
}

/// Closes the open findings about `subject` in the caller's transaction,
/// when what they were about never happened (a break-glass deployment
/// cancelled before it ran), with an event each.
pub(crate) async fn withdraw(tx: &mut Tx, subject: &str, why: &str) -> Result<()> {
    let sql = tx.sql("SELECT id, kind FROM findings WHERE subject = $1 AND resolved_at IS NULL");
    let rows = sqlx::query(&sql).bind(subject).fetch_all(tx.conn()).await?;
    for row in rows {
        let (id, kind): (i64, String) = (col(&row, "id")?, col(&row, "kind")?);
        let resolution = format!("withdrawn: {why}; nothing ran");
        let sql = tx.sql("UPDATE findings SET resolved_at = $1, resolution = $2 WHERE id = $3 AND resolved_at IS NULL");
        sqlx::query(&sql).bind(now_ms()).bind(&resolution).bind(id).execute(tx.conn()).await?;
        tx.audit(NewEvent {
            actor: custody_domain::audit::SYSTEM_ACTOR.into(),
            action: "finding.withdraw".into(),
            subject: format!("finding:{id}"),
            details: json!({ "kind": kind, "about": subject, "resolution": resolution }),
        })
        .await?;
    }
    Ok(())
}

fn finding_view(row: &sqlx::any::AnyRow) -> Result<FindingView> {
    Ok(FindingView {
        id: col(row, "id")?,
        kind: col(row, "kind")?,
        subject: col(row, "subject")?,
        summary: col(row, "summary")?,
        opened_at: Timestamp::from_millis(col(row, "opened_at")?),
        resolved_by: col(row, "resolver")?,
        resolved_at: col::<Option<i64>>(row, "resolved_at")?.map(Timestamp::from_millis),
        resolution: col(row, "resolution")?,
    })
}

const FINDING_COLUMNS: &str = "f.id, f.kind, f.subject, f.summary, f.opened_at, u.name AS resolver, f.resolved_at, \
     f.resolution, f.involved, f.project_id FROM findings f LEFT JOIN users u ON u.id = f.resolved_by";

impl Store {
    /// Findings, newest first; only open ones when asked.
    pub async fn list_findings(&self, open_only: bool) -> Result<Vec<FindingView>> {
        let sql = format!(
            "SELECT {FINDING_COLUMNS} WHERE ({} OR f.resolved_at IS NULL) ORDER BY f.id DESC LIMIT 500",
            if open_only { "1 = 0" } else { "1 = 1" }
        );
        let rows = sqlx::query(&sql).fetch_all(self.readers()).await?;
        rows.iter().map(finding_view).collect()
    }

    /// Records an admin's review of an open finding. The requester of a
    /// break-glass deployment and everyone who decided on it are refused.
    pub async fn resolve_finding(&self, actor: &Authenticated, id: i64, resolution: String) -> Result<FindingView> {
        if resolution.trim().is_empty() {
            return Err(StoreError::Invalid(custody_domain::InvalidInput::new(
                "message",
                "",
                "say what the review found",
            )));
        }
        let actor = actor.clone();
        self.write(move |tx| {
            Box::pin(async move {
                crate::lookups::require_admin(tx, &actor).await?;
                let (finding, involved) = involvement(tx, id).await?;
                if finding.resolved_at.is_some() {
                    return Err(StoreError::Conflict(format!("finding {id} was reviewed already")));
                }
                crate::allowed(custody_domain::finding::decide_finding_reviewer(
                    &actor.name,
                    &finding.subject,
                    &involved,
                ))?;
                let sql = tx.sql(
                    "UPDATE findings SET resolved_by = $1, resolved_at = $2, resolution = $3 \
                     WHERE id = $4 AND resolved_at IS NULL",
                );
                sqlx::query(&sql)
                    .bind(actor.user_id)
                    .bind(now_ms())
                    .bind(&resolution)
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "finding.resolve".into(),
                    subject: format!("finding:{id}"),
                    details: json!({ "kind": finding.kind, "about": finding.subject, "resolution": resolution }),
                })
                .await?;
                let row = sqlx::query(&sql_select(tx)).bind(id).fetch_one(tx.conn()).await?;
                finding_view(&row)
            })
        })
        .await
    }
}

fn sql_select(tx: &impl Reads) -> String {
    tx.dialect().sql_owned(format!("SELECT {FINDING_COLUMNS} WHERE f.id = $1"))
}

/// A finding and who was involved in what it is about, only as custody
/// wrote it: the people it names, and everyone who decided on its
/// deployment as the deployment's proven events say.
async fn involvement(tx: &mut impl Reads, id: i64) -> Result<(FindingView, Vec<String>)> {
    let row = sqlx::query(&sql_select(tx)).bind(id).fetch_optional(tx.conn()).await?;
    let row = row.ok_or_else(|| StoreError::not_found("finding", id))?;
    let finding = finding_view(&row)?;
    crate::seals::check(tx, &format!("finding:{id}")).await?;
    let mut involved: Vec<String> =
        serde_json::from_str(&col::<String>(&row, "involved")?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if finding.subject.starts_with("deployment:") {
        let events = crate::proof::proven_events(tx, &finding.subject).await?;
        involved.extend(crate::lookups::recorded_decisions(&events).into_iter().map(|(user, _)| user.to_owned()));
    }
    Ok((finding, involved))
}

impl Store {
    /// Whether `who` may review the open finding `id`, by the rule
    /// [`Store::resolve_finding`] applies, so that a page can say so before
    /// anyone clicks.
    pub async fn finding_review_decision(&self, who: &UserName, id: i64) -> Result<custody_domain::Decision> {
        let mut reader = self.reader().await?;
        let (finding, involved) = involvement(&mut reader, id).await?;
        Ok(custody_domain::finding::decide_finding_reviewer(who, &finding.subject, &involved))
    }
}
