//! What operators watch: how much work waits and since when, the leases
//! that ran out, and the ledger's size and newest checkpoint, read at once
//! for the metrics.

use crate::{col, now_ms, Result, Store};

/// The kinds of work, their tables, the column that says since when an
/// item waits, and the states in which it waits.
const WORK: [(&str, &str, &str, &[&str]); 3] = [
    ("check", "check_runs", "created_at", &["queued", "running"]),
    ("build", "builds", "queued_at", &["queued", "running"]),
    ("deployment", "deployments", "created_at", &["pending", "queued", "running"]),
];

/// Work of one kind in one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    /// `check`, `build` or `deployment`.
    pub kind: &'static str,
    /// The state it waits in (`queued`, `running`, `pending`).
    pub status: &'static str,
    /// How many.
    pub count: i64,
    /// Since when the oldest of them waits, in ms since the epoch.
    pub oldest_ms: Option<i64>,
}

/// The state of custody's work and ledger at one moment.
#[derive(Clone, Debug, Default)]
pub struct WorkSnapshot {
    /// Every kind in every waiting state, zero counts included.
    pub queues: Vec<Queue>,
    /// Running builds and deployments whose worker's lease ran out, by kind.
    pub expired_leases: Vec<(&'static str, i64)>,
    /// Events in the audit log.
    pub ledger_events: i64,
    /// The newest signed checkpoint's tree size and when it was signed.
    pub checkpoint: Option<(i64, i64)>,
}

impl Store {
    /// What operators watch, read from the readers (no write, no lock).
    pub async fn work_snapshot(&self) -> Result<WorkSnapshot> {
        let mut snapshot = WorkSnapshot::default();
        for (kind, table, since, statuses) in WORK {
            let sql = format!(
                "SELECT status, COUNT(*) AS n, MIN({since}) AS oldest FROM {table} \
                 WHERE status IN ({}) GROUP BY status",
                statuses.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
            );
            let rows = sqlx::query(&sql).fetch_all(self.readers()).await?;
            for status in statuses.iter().copied() {
                let row = rows.iter().find(|r| col::<String>(r, "status").is_ok_and(|s| s == status));
                let (count, oldest_ms) = match row {
                    Some(row) => (col(row, "n")?, col(row, "oldest")?),
                    None => (0, None),
                };
                snapshot.queues.push(Queue { kind, status, count, oldest_ms });
            }
        }
        for (kind, table) in [("build", "builds"), ("deployment", "deployments")] {
            // Every name and number here is custody's own: nothing to bind.
            let sql = format!(
                "SELECT COUNT(*) FROM {table} WHERE status = 'running' AND lease_until IS NOT NULL \
                 AND lease_until < {}",
                now_ms()
            );
            let expired: i64 = sqlx::query_scalar(&sql).fetch_one(self.readers()).await?;
            snapshot.expired_leases.push((kind, expired));
        }
        let sql = "SELECT COALESCE(MAX(seq), 0) FROM audit_events";
        snapshot.ledger_events = sqlx::query_scalar(sql).fetch_one(self.readers()).await?;
        let sql = "SELECT size, at FROM ledger_checkpoints ORDER BY size DESC LIMIT 1";
        let newest = sqlx::query(sql).fetch_optional(self.readers()).await?;
        snapshot.checkpoint =
            newest.map(|row| Ok::<_, crate::StoreError>((col(&row, "size")?, col(&row, "at")?))).transpose()?;
        Ok(snapshot)
    }
}
