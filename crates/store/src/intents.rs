//! Merge intents: a merge is recorded, and only then does its target ref
//! move.
//!
//! The transaction that records a merge (the change merged, its event,
//! attestation, duties and build) also writes the merge's intent: the ref,
//! the tip the merge was made on, and the merge commit. The caller moves
//! the ref by compare-and-swap only after that transaction committed, and
//! then settles the intent. A process that dies in between leaves a pending
//! intent, which the next one rolls forward; a ref that is no longer where
//! the merge left from (someone moved an unprotected target meanwhile)
//! drops the intent and reopens the change, saying so. So a ref never holds
//! a merge custody did not record, and a recorded merge is never lost
//! silently.
//!
//! An intent is only a pointer: what it moves the ref to is read from the
//! change's proven `change.merge` event, so a row written around custody
//! moves nothing.

use custody_api::{MergeQueue, MovingMerge, WaitingMerge};
use custody_domain::audit::NewEvent;
use custody_domain::ProjectName;
use serde_json::json;

use crate::tx::{Reads as _, Tx};
use crate::{col, now_ms, Result, Store, StoreError};

/// A merge recorded whose ref move is not yet known to have happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeIntent {
    /// The intent's id.
    pub id: i64,
    /// The project.
    pub project: ProjectName,
    /// The change merged.
    pub change: i64,
    /// The ref that moves (`refs/heads/main`).
    pub reference: String,
    /// Where it moves from; `None` for a branch the merge creates.
    pub old: Option<String>,
    /// The merge commit it moves to.
    pub new: String,
}

/// How moving an intent's ref ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The ref holds the merge commit (or a later commit on top of it).
    Applied,
    /// The ref was elsewhere (`tip`): the merge never reached it.
    Dropped {
        /// Where the ref was.
        tip: Option<String>,
    },
}

/// Records the intent of a merge inside the transaction that records the
/// merge. Refuses with [`StoreError::TargetMoved`] when the merge was made on a tip
/// other than the last one a recorded merge left the ref at, or when another
/// merge from the same tip was recorded first.
pub(crate) async fn record(
    tx: &mut Tx,
    project_id: i64,
    change: i64,
    reference: &str,
    old: Option<&str>,
    new: &str,
) -> Result<()> {
    let sql = tx.sql(
        "SELECT new_tip FROM merge_intents WHERE project_id = $1 AND ref_name = $2 AND state <> 'dropped' \
         ORDER BY id DESC LIMIT 1",
    );
    let recorded: Option<String> =
        sqlx::query_scalar(&sql).bind(project_id).bind(reference).fetch_optional(tx.conn()).await?;
    if recorded.is_some_and(|tip| Some(tip.as_str()) != old) {
        return Err(StoreError::TargetMoved);
    }
    let sql = tx.sql(
        "INSERT INTO merge_intents (project_id, change_number, ref_name, old_tip, new_tip, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (project_id, ref_name, old_tip) WHERE state <> 'dropped' DO NOTHING",
    );
    let done = sqlx::query(&sql)
        .bind(project_id)
        .bind(change)
        .bind(reference)
        .bind(old.unwrap_or_default())
        .bind(new)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
    if done.rows_affected() != 1 {
        return Err(StoreError::TargetMoved);
    }
    Ok(())
}

impl Store {
    /// A project's merge queue.
    pub async fn merge_queue(&self, project: &ProjectName) -> Result<MergeQueue> {
        let sql = self.sql(
            "SELECT i.change_number, i.ref_name, i.new_tip, i.created_at FROM merge_intents i \
             JOIN projects p ON p.id = i.project_id WHERE p.name = $1 AND i.state = 'pending' ORDER BY i.id",
        );
        let rows = sqlx::query(&sql).bind(project.as_str()).fetch_all(self.readers()).await?;
        let moving = rows
            .iter()
            .map(|row| {
                Ok(MovingMerge {
                    change: col(row, "change_number")?,
                    reference: col(row, "ref_name")?,
                    merge_commit: col(row, "new_tip")?,
                    since: custody_domain::Timestamp::from_millis(col(row, "created_at")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let sql = self.sql(
            "SELECT c.number, c.title, c.target_branch, u.name AS asked_by FROM changes c \
             JOIN projects p ON p.id = c.project_id LEFT JOIN users u ON u.id = c.auto_merge_by \
             WHERE p.name = $1 AND c.state = 'open' AND c.auto_merge_by IS NOT NULL ORDER BY c.id",
        );
        let rows = sqlx::query(&sql).bind(project.as_str()).fetch_all(self.readers()).await?;
        let waiting = rows
            .iter()
            .map(|row| {
                Ok(WaitingMerge {
                    change: col(row, "number")?,
                    title: col(row, "title")?,
                    target: col(row, "target_branch")?,
                    asked_by: col(row, "asked_by")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(MergeQueue { moving, waiting })
    }

    /// Every merge intent not yet settled, oldest first, each checked
    /// against its change's proven `change.merge` event: one written or
    /// edited around custody is refused, naming the row.
    pub async fn pending_merges(&self) -> Result<Vec<MergeIntent>> {
        let mut reader = self.reader().await?;
        let sql = reader.sql(
            "SELECT i.id, p.name, i.change_number, i.ref_name, i.old_tip, i.new_tip FROM merge_intents i \
             JOIN projects p ON p.id = i.project_id WHERE i.state = 'pending' ORDER BY i.id",
        );
        let rows = sqlx::query(&sql).fetch_all(reader.conn()).await?;
        let mut intents = Vec::with_capacity(rows.len());
        for row in rows {
            let old: String = col(&row, "old_tip")?;
            let name: String = col(&row, "name")?;
            let intent = MergeIntent {
                id: col(&row, "id")?,
                project: ProjectName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                change: col(&row, "change_number")?,
                reference: col(&row, "ref_name")?,
                old: (!old.is_empty()).then_some(old),
                new: col(&row, "new_tip")?,
            };
            let subject = format!("change:{}/{}", intent.project, intent.change);
            let events = crate::proof::proven_events(&mut reader, &subject).await?;
            let recorded = events.iter().rev().find(|e| e.action == "change.merge").is_some_and(|merge| {
                crate::proof::detail(merge, "merge_commit") == Some(intent.new.as_str())
                    && crate::proof::detail(merge, "target").map(|t| format!("refs/heads/{t}"))
                        == Some(intent.reference.clone())
                    && crate::proof::detail(merge, "base") == intent.old.as_deref()
            });
            if !recorded {
                return Err(crate::proof::unproven(format!(
                    "merge_intents row {}: custody recorded no merge of change {} from {} to {} (written around custody)",
                    intent.id,
                    intent.change,
                    intent.old.as_deref().map(custody_domain::short_id).unwrap_or("nothing"),
                    custody_domain::short_id(&intent.new)
                )));
            }
            intents.push(intent);
        }
        Ok(intents)
    }

    /// Records how moving an intent's ref ended. A dropped merge reopens its
    /// change (its approvals still count for its head) and fails the build
    /// queued for the merge commit, with an event saying why.
    pub async fn settle_merge(&self, intent: &MergeIntent, settled: Settled) -> Result<()> {
        let intent = intent.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let state = match settled {
                    Settled::Applied => "applied",
                    Settled::Dropped { .. } => "dropped",
                };
                let sql = tx.sql("UPDATE merge_intents SET state = $1, settled_at = $2 WHERE id = $3 AND state = 'pending'");
                let done = sqlx::query(&sql).bind(state).bind(now_ms()).bind(intent.id).execute(tx.conn()).await?;
                if done.rows_affected() != 1 {
                    return Ok(());
                }
                let Settled::Dropped { tip } = settled else {
                    // The builder builds the merge only once this is logged:
                    // its build becomes a job now, so the workers wake.
                    tx.jobs_queued();
                    tx.audit(NewEvent {
                        actor: custody_domain::audit::SYSTEM_ACTOR.into(),
                        action: "change.merge_landed".into(),
                        subject: format!("change:{}/{}", intent.project, intent.change),
                        details: json!({ "merge_commit": intent.new, "target": intent.reference }),
                    })
                    .await?;
                    return Ok(());
                };
                let sql = tx.sql("SELECT id FROM projects WHERE name = $1");
                let project_id: i64 = sqlx::query_scalar(&sql).bind(intent.project.as_str()).fetch_one(tx.conn()).await?;
                let sql = tx.sql(
                    "UPDATE changes SET state = 'open', merged_by = NULL, merged_at = NULL, merge_commit = NULL, \
                     attestation = NULL WHERE project_id = $1 AND number = $2 AND state = 'merged' AND merge_commit = $3",
                );
                sqlx::query(&sql).bind(project_id).bind(intent.change).bind(&intent.new).execute(tx.conn()).await?;
                let reason = format!(
                    "{} was at {} rather than {}, where the merge left from: the merge never reached it",
                    intent.reference,
                    tip.as_deref().map(custody_domain::short_id).unwrap_or("nothing"),
                    intent.old.as_deref().map(custody_domain::short_id).unwrap_or("nothing")
                );
                crate::builds::fail_queued_of(tx, project_id, &intent.project, &intent.new, &reason).await?;
                tx.audit(NewEvent {
                    actor: custody_domain::audit::SYSTEM_ACTOR.into(),
                    action: "change.merge_dropped".into(),
                    subject: format!("change:{}/{}", intent.project, intent.change),
                    details: json!({
                        "merge_commit": intent.new,
                        "target": intent.reference,
                        "base": intent.old,
                        "tip": tip,
                        "reason": reason,
                    }),
                })
                .await?;
                Ok(())
            })
        })
        .await
    }
}

/// A project's protected branches and the merges custody recorded into
/// them, as the audit log says (for `custody audit verify`, which checks
/// that the branches hold nothing else).
#[derive(Clone, Debug)]
pub struct Mainline {
    /// The project.
    pub project: String,
    /// Its default and protected branches.
    pub branches: Vec<String>,
    /// Merge commits custody recorded (and did not drop), with their change.
    pub merges: std::collections::HashMap<String, i64>,
}

/// Every project's [`Mainline`], read from the database at `url` without
/// writing to it.
pub async fn recorded_mainlines(url: &str) -> Result<Vec<Mainline>> {
    use sqlx::Connection as _;
    let mut conn = crate::ledger::connect_read_only(url).await?;
    let mainlines = mainlines_on(&mut conn).await;
    let _ = conn.close().await;
    mainlines
}

/// Every project's [`Mainline`], read on `conn`.
pub(crate) async fn mainlines_on(conn: &mut sqlx::AnyConnection) -> Result<Vec<Mainline>> {
    let dialect = crate::proof::dialect_of(conn);
    let projects =
        sqlx::query("SELECT id, name, default_branch FROM projects ORDER BY name").fetch_all(&mut *conn).await?;
    let mut mainlines = Vec::with_capacity(projects.len());
    for row in projects {
        let (id, project): (i64, String) = (col(&row, "id")?, col(&row, "name")?);
        let default: String = col(&row, "default_branch")?;
        let sql = dialect.sql("SELECT branch FROM protected_branches WHERE project_id = $1 ORDER BY branch");
        let protected: Vec<String> = sqlx::query_scalar(&sql).bind(id).fetch_all(&mut *conn).await?;
        let mut branches = vec![default.clone()];
        branches.extend(protected.into_iter().filter(|b| *b != default));
        let sql = dialect.sql(
            "SELECT action, subject, details FROM audit_events WHERE action IN ('change.merge', 'change.merge_dropped') \
             AND subject LIKE $1 ORDER BY seq",
        );
        let mut merges = std::collections::HashMap::new();
        for event in sqlx::query(&sql).bind(format!("change:{project}/%")).fetch_all(&mut *conn).await? {
            let details: serde_json::Value = serde_json::from_str(&col::<String>(&event, "details")?)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let Some(commit) = details.get("merge_commit").and_then(serde_json::Value::as_str) else { continue };
            let subject: String = col(&event, "subject")?;
            let number = subject.rsplit('/').next().and_then(|n| n.parse::<i64>().ok()).unwrap_or_default();
            if col::<String>(&event, "action")? == "change.merge" {
                merges.insert(commit.to_owned(), number);
            } else {
                merges.remove(commit);
            }
        }
        mainlines.push(Mainline { project, branches, merges });
    }
    Ok(mainlines)
}
