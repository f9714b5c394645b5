//! Check runs: queued with each new head of an open change, leased by a
//! runner, finished with a status and a log.

use custody_api::CheckRunView;
use custody_domain::audit::{NewEvent, SYSTEM_ACTOR};
use custody_domain::gate::CheckState;
use custody_domain::Timestamp;
use serde_json::json;

use crate::lookups::ProjectAccess;
use crate::tx::Tx;
use crate::{col, now_ms, Result, Store, StoreError};

/// A check run a runner has leased.
#[derive(Clone, Debug)]
pub struct LeasedCheck {
    /// The run's id.
    pub id: i64,
    /// The project.
    pub project: String,
    /// The change's number.
    pub number: i64,
    /// The head to check.
    pub head: String,
    /// The branch whose pipeline governs.
    pub target_branch: String,
    /// The project's default branch, whose pipeline governs a target that
    /// does not exist yet.
    pub default_branch: String,
}

/// How a check run ended.
#[derive(Clone, Debug)]
pub struct CheckOutcome {
    /// `passed`, `failed`, `error` or `not_required`.
    pub status: custody_domain::status::CheckStatus,
    /// The command run.
    pub command: Option<String>,
    /// The target tip used.
    pub target_tip: Option<String>,
    /// The exit code.
    pub exit_code: Option<i64>,
    /// The output.
    pub log: String,
}

/// Queues a check of `head` for a change (once per head).
pub(crate) async fn enqueue(tx: &mut Tx, change_id: i64, head: &str) -> Result<()> {
    let sql = tx.sql(
        "INSERT INTO check_runs (change_id, head, status, created_at) VALUES ($1, $2, 'queued', $3) \
         ON CONFLICT (change_id, head) DO NOTHING",
    );
    sqlx::query(&sql).bind(change_id).bind(head).bind(now_ms()).execute(tx.conn()).await?;
    Ok(())
}

fn run_view(row: &sqlx::any::AnyRow, with_log: bool) -> Result<CheckRunView> {
    Ok(CheckRunView {
        id: col(row, "id")?,
        head: col(row, "head")?,
        status: crate::status_col(row, "status", custody_domain::status::CheckStatus::parse)?,
        command: col(row, "command")?,
        target_tip: col(row, "target_tip")?,
        exit_code: col(row, "exit_code")?,
        created_at: Timestamp::from_millis(col(row, "created_at")?),
        finished_at: col::<Option<i64>>(row, "finished_at")?.map(Timestamp::from_millis),
        log: if with_log { Some(col(row, "log")?) } else { None },
    })
}

impl Store {
    /// Takes the oldest queued check run, if any, marking it running. A run
    /// left running by a runner that died is taken again after `stale_ms`.
    pub async fn lease_check(&self, stale_ms: i64) -> Result<Option<LeasedCheck>> {
        self.write(move |tx| {
            Box::pin(async move {
                let now = now_ms();
                let sql = tx.sql(
                    "SELECT r.id, p.name AS project, c.number, r.head, c.target_branch, p.default_branch FROM check_runs r \
                     JOIN changes c ON c.id = r.change_id JOIN projects p ON p.id = c.project_id \
                     WHERE r.status = 'queued' OR (r.status = 'running' AND r.started_at < $1) ORDER BY r.id LIMIT 1",
                );
                let Some(row) = sqlx::query(&sql).bind(now - stale_ms).fetch_optional(tx.conn()).await? else {
                    return Ok(None);
                };
                let id: i64 = col(&row, "id")?;
                let sql = tx.sql("UPDATE check_runs SET status = 'running', started_at = $1 WHERE id = $2");
                sqlx::query(&sql).bind(now).bind(id).execute(tx.conn()).await?;
                Ok(Some(LeasedCheck {
                    id,
                    project: col(&row, "project")?,
                    number: col(&row, "number")?,
                    head: col(&row, "head")?,
                    target_branch: col(&row, "target_branch")?,
                    default_branch: col(&row, "default_branch")?,
                }))
            })
        })
        .await
    }

    /// Puts a leased run back in the queue (its runner is stopping).
    pub async fn requeue_check(&self, lease: &LeasedCheck) -> Result<()> {
        let id = lease.id;
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "UPDATE check_runs SET status = 'queued', started_at = NULL WHERE id = $1 AND status = 'running'",
                );
                sqlx::query(&sql).bind(id).execute(tx.conn()).await?;
                Ok(())
            })
        })
        .await
    }

    /// Records how a check run ended.
    pub async fn finish_check(&self, lease: &LeasedCheck, outcome: CheckOutcome) -> Result<()> {
        let lease = lease.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "UPDATE check_runs SET status = $1, command = $2, target_tip = $3, exit_code = $4, log = $5, \
                     finished_at = $6 WHERE id = $7 AND status = 'running'",
                );
                let done = sqlx::query(&sql)
                    .bind(outcome.status.as_str())
                    .bind(&outcome.command)
                    .bind(&outcome.target_tip)
                    .bind(outcome.exit_code)
                    .bind(&outcome.log)
                    .bind(now_ms())
                    .bind(lease.id)
                    .execute(tx.conn())
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict(format!("check run {} is no longer running", lease.id)));
                }
                tx.audit(NewEvent {
                    actor: SYSTEM_ACTOR.into(),
                    action: "check.finish".into(),
                    subject: format!("change:{}/{}", lease.project, lease.number),
                    details: json!({
                        "run": lease.id,
                        "head": lease.head,
                        "status": outcome.status,
                        "command": outcome.command,
                        "target_tip": outcome.target_tip,
                        "exit_code": outcome.exit_code,
                    }),
                })
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// The check runs of a change, newest first.
    pub async fn check_runs(&self, access: &ProjectAccess, number: i64, with_log: bool) -> Result<Vec<CheckRunView>> {
        let sql = self.sql(
            "SELECT r.id, r.head, r.status, r.command, r.target_tip, r.exit_code, r.created_at, r.finished_at, r.log \
             FROM check_runs r JOIN changes c ON c.id = r.change_id \
             WHERE c.project_id = $1 AND c.number = $2 ORDER BY r.id DESC",
        );
        let rows = sqlx::query(&sql).bind(access.project_id).bind(number).fetch_all(self.readers()).await?;
        rows.iter().map(|r| run_view(r, with_log)).collect()
    }

    /// The state of the check of `head` of a change, for the gate. Only a
    /// run that used the target tip the gate is evaluated against counts.
    pub async fn check_state(&self, access: &ProjectAccess, number: i64, head: &str) -> Result<CheckState> {
        let sql = self.sql(
            "SELECT r.status, r.exit_code FROM check_runs r JOIN changes c ON c.id = r.change_id \
             WHERE c.project_id = $1 AND c.number = $2 AND r.head = $3",
        );
        let row =
            sqlx::query(&sql).bind(access.project_id).bind(number).bind(head).fetch_optional(self.readers()).await?;
        let Some(row) = row else { return Ok(CheckState::Pending) };
        let status: String = col(&row, "status")?;
        Ok(match status.as_str() {
            "passed" => CheckState::Passed,
            "not_required" => CheckState::NotRequired,
            "failed" => CheckState::Failed {
                reason: format!("exit code {}", col::<Option<i64>>(&row, "exit_code")?.unwrap_or(-1)),
            },
            "error" => CheckState::Failed { reason: "the check could not run; see its log".into() },
            _ => CheckState::Pending,
        })
    }
}
