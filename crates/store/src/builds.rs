//! Builds: queued in the transaction of the merge that made a new mainline
//! commit, leased by one worker at a time (a lease with an expiry that the
//! worker's heartbeat extends), finished with the artifacts they made.
//!
//! A lease is taken inside the writer's transaction, which on PostgreSQL
//! holds the writers' advisory lock: two workers, in one process or many,
//! can never take the same build. A worker that stops heartbeating loses its
//! lease; the build is taken again, up to [`MAX_ATTEMPTS`] times, and then
//! fails with the reason. A worker that lost its lease can no longer write
//! the build's log or finish it.

use custody_api::{ArtifactView, BuildView, LogChunk};
use custody_domain::audit::{NewEvent, SYSTEM_ACTOR};
use custody_domain::{ProjectName, Timestamp};
use serde_json::json;

use crate::lookups::ProjectAccess;
use crate::tx::{Reads, Tx};
use crate::{col, now_ms, Dialect, Page, PageRequest, Result, Store, StoreError};

/// How many times a build is taken before a worker that keeps vanishing
/// fails it.
pub const MAX_ATTEMPTS: i64 = 3;

/// The PostgreSQL notification channel that wakes workers.
pub const JOBS_CHANNEL: &str = "custody_jobs";

pub use custody_api::{BuildOutcome, LeasedBuild, NewArtifact};

/// Queues a build of `commit` in the caller's transaction and wakes the
/// workers when it commits. Returns the build's number.
pub(crate) async fn enqueue(
    tx: &mut Tx,
    project_id: i64,
    commit: &str,
    branch: &str,
    change: Option<i64>,
) -> Result<i64> {
    let sql = tx.sql("SELECT COALESCE(MAX(number), 0) + 1 FROM builds WHERE project_id = $1");
    let number: i64 = sqlx::query_scalar(&sql).bind(project_id).fetch_one(tx.conn()).await?;
    let sql = tx.sql(
        "INSERT INTO builds (project_id, number, commit_sha, branch, change_number, status, queued_at) \
         VALUES ($1, $2, $3, $4, $5, 'queued', $6)",
    );
    sqlx::query(&sql)
        .bind(project_id)
        .bind(number)
        .bind(commit)
        .bind(branch)
        .bind(change)
        .bind(now_ms())
        .execute(tx.conn())
        .await?;
    if tx.dialect() == Dialect::Postgres {
        // Delivered when the transaction commits, and only then.
        sqlx::query("SELECT pg_notify($1, '')").bind(JOBS_CHANNEL).execute(tx.conn()).await?;
    }
    let project: String = sqlx::query_scalar(&tx.sql("SELECT name FROM projects WHERE id = $1"))
        .bind(project_id)
        .fetch_one(tx.conn())
        .await?;
    // The builder builds only what custody recorded queueing.
    tx.audit(NewEvent {
        actor: SYSTEM_ACTOR.into(),
        action: "build.queue".into(),
        subject: format!("build:{project}/{number}"),
        details: json!({ "commit": commit, "branch": branch, "change": change }),
    })
    .await?;
    tx.jobs_queued();
    Ok(number)
}

/// Checks a build's row against its proven events: custody queued this
/// commit on this branch as this build, and the status is the one it last
/// recorded. A build row written or edited around custody fails closed,
/// naming the row. Returns the events, oldest first.
pub(crate) async fn prove_build(
    tx: &mut impl Reads,
    project: &str,
    number: i64,
    commit: &str,
    status: &str,
) -> Result<Vec<crate::proof::TaggedEvent>> {
    use crate::proof::{detail, unproven};
    let events = crate::proof::proven_events(tx, &format!("build:{project}/{number}")).await?;
    let queued = events.first().filter(|e| e.action == "build.queue");
    if queued.and_then(|e| detail(e, "commit")) != Some(commit) {
        return Err(unproven(format!(
            "builds row {number} of {project}: custody never queued a build of {commit} as it (written or edited \
             around custody)"
        )));
    }
    let recorded = events.iter().rev().find_map(|e| match e.action.as_str() {
        "build.queue" | "build.requeue" => Some("queued"),
        "build.start" => Some("running"),
        "build.finish" => detail(e, "status"),
        _ => None,
    });
    if recorded != Some(status) {
        return Err(unproven(format!(
            "builds row {number} of {project}: it is {status}, but custody recorded it {}",
            recorded.unwrap_or("nothing")
        )));
    }
    Ok(events)
}

const BUILD_COLUMNS: &str = "b.id, p.name AS project, b.number, b.commit_sha, b.branch, b.change_number, b.status, \
     b.reason, b.attempt, b.worker, b.queued_at, b.started_at, b.finished_at, b.command, b.network, \
     b.pipeline_digest, b.script_digest, b.exit_code";

fn build_view(row: &sqlx::any::AnyRow) -> Result<BuildView> {
    Ok(BuildView {
        number: col(row, "number")?,
        project: col(row, "project")?,
        commit: col(row, "commit_sha")?,
        branch: col(row, "branch")?,
        change: col(row, "change_number")?,
        status: crate::status_col(row, "status", custody_domain::status::BuildStatus::parse)?,
        reason: col(row, "reason")?,
        attempt: col(row, "attempt")?,
        worker: col(row, "worker")?,
        queued_at: Timestamp::from_millis(col(row, "queued_at")?),
        started_at: col::<Option<i64>>(row, "started_at")?.map(Timestamp::from_millis),
        finished_at: col::<Option<i64>>(row, "finished_at")?.map(Timestamp::from_millis),
        command: col(row, "command")?,
        network: col::<Option<i64>>(row, "network")?.map(|n| n != 0),
        pipeline_digest: col(row, "pipeline_digest")?,
        script_digest: col(row, "script_digest")?,
        exit_code: col(row, "exit_code")?,
        artifacts: Vec::new(),
    })
}

fn artifact_view(row: &sqlx::any::AnyRow) -> Result<ArtifactView> {
    Ok(ArtifactView {
        project: col(row, "project")?,
        build: col(row, "build")?,
        name: col(row, "name")?,
        digest: col(row, "digest")?,
        size: col(row, "size")?,
        commit: col(row, "commit_sha")?,
        created_at: Timestamp::from_millis(col(row, "created_at")?),
    })
}

const ARTIFACT_COLUMNS: &str = "a.id, p.name AS project, b.number AS build, a.name, a.digest, a.size, b.commit_sha, \
     a.created_at FROM artifacts a JOIN builds b ON b.id = a.build_id JOIN projects p ON p.id = a.project_id";

/// Fails builds whose worker vanished too often, and says why.
async fn fail_abandoned(tx: &mut Tx, now: i64) -> Result<()> {
    let sql = tx.sql(
        "SELECT b.id, p.name AS project, b.number, b.worker FROM builds b JOIN projects p ON p.id = b.project_id \
         WHERE b.status = 'running' AND b.lease_until < $1 AND b.attempt >= $2",
    );
    let rows = sqlx::query(&sql).bind(now).bind(MAX_ATTEMPTS).fetch_all(tx.conn()).await?;
    for row in rows {
        let (id, project, number): (i64, String, i64) = (col(&row, "id")?, col(&row, "project")?, col(&row, "number")?);
        let worker: Option<String> = col(&row, "worker")?;
        let reason = format!(
            "the worker running it ({}) stopped answering, {MAX_ATTEMPTS} attempts in all; \
             check the workers' logs, then merge again or ask an admin to look at the host",
            worker.unwrap_or_default()
        );
        let sql = tx.sql(
            "UPDATE builds SET status = 'error', reason = $1, finished_at = $2, lease_until = NULL \
             WHERE id = $3 AND status = 'running'",
        );
        sqlx::query(&sql).bind(&reason).bind(now).bind(id).execute(tx.conn()).await?;
        tx.audit(NewEvent {
            actor: SYSTEM_ACTOR.into(),
            action: "build.finish".into(),
            subject: format!("build:{project}/{number}"),
            details: json!({ "status": "error", "reason": reason }),
        })
        .await?;
    }
    Ok(())
}

/// Fails the queued builds of `commit`, whose merge never reached its
/// branch, saying why.
pub(crate) async fn fail_queued_of(
    tx: &mut Tx,
    project_id: i64,
    project: &ProjectName,
    commit: &str,
    why: &str,
) -> Result<()> {
    let sql = tx.sql("SELECT id, number FROM builds WHERE project_id = $1 AND commit_sha = $2 AND status = 'queued'");
    let rows = sqlx::query(&sql).bind(project_id).bind(commit).fetch_all(tx.conn()).await?;
    let reason = format!("not built: {why}");
    for row in rows {
        let sql = tx
            .sql("UPDATE builds SET status = 'error', reason = $1, finished_at = $2, lease_until = NULL WHERE id = $3");
        sqlx::query(&sql).bind(&reason).bind(now_ms()).bind(col::<i64>(&row, "id")?).execute(tx.conn()).await?;
        tx.audit(NewEvent {
            actor: SYSTEM_ACTOR.into(),
            action: "build.finish".into(),
            subject: format!("build:{project}/{}", col::<i64>(&row, "number")?),
            details: json!({ "status": "error", "reason": reason }),
        })
        .await?;
    }
    Ok(())
}

impl Store {
    /// Queues a build of `commit` on `branch` of `project`, as a merge into
    /// the mainline does. Returns the build's number.
    pub async fn queue_build(&self, project: &ProjectName, commit: &str, branch: &str) -> Result<i64> {
        let (project, commit, branch) = (project.clone(), commit.to_owned(), branch.to_owned());
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql("SELECT id FROM projects WHERE name = $1");
                let id: Option<i64> = sqlx::query_scalar(&sql).bind(project.as_str()).fetch_optional(tx.conn()).await?;
                let id = id.ok_or_else(|| StoreError::not_found("project", &project))?;
                enqueue(tx, id, &commit, &branch, None).await
            })
        })
        .await
    }

    /// Takes the oldest build waiting (or one whose worker's lease ran out)
    /// for `worker`, for `lease_ms`.
    pub async fn lease_build(&self, worker: &str, lease_ms: i64) -> Result<Option<LeasedBuild>> {
        let worker = worker.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let now = now_ms();
                fail_abandoned(tx, now).await?;
                let sql = tx.sql(
                    "SELECT b.id, p.name AS project, b.number, b.commit_sha, b.branch, b.attempt, b.worker, b.status \
                     FROM builds b JOIN projects p ON p.id = b.project_id \
                     WHERE (b.status = 'queued' OR (b.status = 'running' AND b.lease_until < $1)) \
                       AND NOT EXISTS (SELECT 1 FROM merge_intents i WHERE i.project_id = b.project_id \
                         AND i.new_tip = b.commit_sha AND i.state <> 'applied') \
                     ORDER BY b.id LIMIT 1",
                );
                let row = loop {
                    let Some(row) = sqlx::query(&sql).bind(now).fetch_optional(tx.conn()).await? else {
                        return Ok(None);
                    };
                    // Nothing is built, signed or stored that custody did not
                    // queue (nor before its merge reached the branch).
                    let (project, number): (String, i64) = (col(&row, "project")?, col(&row, "number")?);
                    let (commit, status): (String, String) = (col(&row, "commit_sha")?, col(&row, "status")?);
                    let proven = match prove_build(tx, &project, number, &commit, &status).await {
                        Ok(events) => {
                            // A merge's build, only once the merge is proven on its branch.
                            let change = events.first().and_then(|e| e.details.get("change")).and_then(|c| c.as_i64());
                            match change {
                                Some(change) => crate::lookups::prove_landed(tx, &project, change, &commit).await,
                                None => Ok(()),
                            }
                        }
                        Err(error) => Err(error),
                    };
                    let why = match proven {
                        Ok(()) => break row,
                        Err(StoreError::Refused(decision)) => decision.to_string(),
                        Err(other) => return Err(other),
                    };
                    let reason = format!("not built: {why}");
                    tracing::error!(build = number, %project, %reason, "refusing a build custody did not queue");
                    let sql = tx.sql(
                        "UPDATE builds SET status = 'error', reason = $1, finished_at = $2, lease_until = NULL WHERE id = $3",
                    );
                    sqlx::query(&sql).bind(&reason).bind(now).bind(col::<i64>(&row, "id")?).execute(tx.conn()).await?;
                    tx.audit(NewEvent {
                        actor: SYSTEM_ACTOR.into(),
                        action: "build.finish".into(),
                        subject: format!("build:{project}/{number}"),
                        details: json!({ "status": "error", "reason": reason }),
                    })
                    .await?;
                };
                let id: i64 = col(&row, "id")?;
                let attempt = col::<i64>(&row, "attempt")? + 1;
                let previous: Option<String> = col(&row, "worker")?;
                let sql = tx.sql(
                    "UPDATE builds SET status = 'running', attempt = $1, worker = $2, lease_until = $3, started_at = $4 \
                     WHERE id = $5",
                );
                sqlx::query(&sql)
                    .bind(attempt)
                    .bind(&worker)
                    .bind(now + lease_ms)
                    .bind(now)
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
                let sql =
                    tx.sql("INSERT INTO build_attempts (build_id, attempt, worker, started_at) VALUES ($1, $2, $3, $4)");
                sqlx::query(&sql).bind(id).bind(attempt).bind(&worker).bind(now).execute(tx.conn()).await?;
                let lease = LeasedBuild {
                    id,
                    project: col(&row, "project")?,
                    number: col(&row, "number")?,
                    commit: col(&row, "commit_sha")?,
                    branch: col(&row, "branch")?,
                    attempt,
                    worker: worker.clone(),
                    started_at: now,
                };
                if attempt > 1 {
                    append_log(
                        tx,
                        &lease,
                        format!(
                            "--- attempt {attempt} on {worker}; the previous worker ({}) stopped answering ---\n",
                            previous.unwrap_or_default()
                        ),
                    )
                    .await?;
                }
                tx.audit(NewEvent {
                    actor: SYSTEM_ACTOR.into(),
                    action: "build.start".into(),
                    subject: format!("build:{}/{}", lease.project, lease.number),
                    details: json!({ "commit": lease.commit, "attempt": attempt, "worker": worker }),
                })
                .await?;
                Ok(Some(lease))
            })
        })
        .await
    }

    /// Extends a lease; `false` when the worker no longer holds it.
    pub async fn heartbeat_build(&self, lease: &LeasedBuild, lease_ms: i64) -> Result<bool> {
        let lease = lease.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "UPDATE builds SET lease_until = $1 WHERE id = $2 AND status = 'running' AND worker = $3 \
                     AND attempt = $4",
                );
                let done = sqlx::query(&sql)
                    .bind(now_ms() + lease_ms)
                    .bind(lease.id)
                    .bind(&lease.worker)
                    .bind(lease.attempt)
                    .execute(tx.conn())
                    .await?;
                Ok(done.rows_affected() == 1)
            })
        })
        .await
    }

    /// Appends to a build's log, while the worker holds its lease.
    pub async fn append_build_log(&self, lease: &LeasedBuild, data: String) -> Result<()> {
        let lease = lease.clone();
        self.write(move |tx| Box::pin(async move { append_log(tx, &lease, data).await })).await
    }

    /// Puts a leased build back in the queue (its worker is stopping).
    pub async fn requeue_build(&self, lease: &LeasedBuild) -> Result<()> {
        let lease = lease.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "UPDATE builds SET status = 'queued', worker = NULL, lease_until = NULL \
                     WHERE id = $1 AND status = 'running' AND worker = $2 AND attempt = $3",
                );
                let done =
                    sqlx::query(&sql).bind(lease.id).bind(&lease.worker).bind(lease.attempt).execute(tx.conn()).await?;
                if done.rows_affected() == 1 {
                    tx.audit(NewEvent {
                        actor: SYSTEM_ACTOR.into(),
                        action: "build.requeue".into(),
                        subject: format!("build:{}/{}", lease.project, lease.number),
                        details: json!({ "attempt": lease.attempt, "worker": lease.worker, "reason": "the worker stopped" }),
                    })
                    .await?;
                }
                append_log(tx, &lease, "--- the worker stopped; the build is queued again ---\n".into()).await.ok();
                Ok(())
            })
        })
        .await
    }

    /// Records how a build ended, with its artifacts, if the worker still
    /// holds the lease. Artifacts are recorded once per build and name.
    pub async fn finish_build(&self, lease: &LeasedBuild, outcome: BuildOutcome) -> Result<()> {
        let lease = lease.clone();
        self.write(move |tx| {
            Box::pin(async move {
                let now = now_ms();
                let sql = tx.sql(
                    "UPDATE builds SET status = $1, reason = $2, command = $3, network = $4, pipeline_digest = $5, \
                     script_digest = $6, exit_code = $7, provenance = $8, finished_at = $9, lease_until = NULL \
                     WHERE id = $10 AND status = 'running' AND worker = $11 AND attempt = $12",
                );
                let done = sqlx::query(&sql)
                    .bind(outcome.status.as_str())
                    .bind(&outcome.reason)
                    .bind(&outcome.command)
                    .bind(outcome.network.map(i64::from))
                    .bind(&outcome.pipeline_digest)
                    .bind(&outcome.script_digest)
                    .bind(outcome.exit_code)
                    .bind(&outcome.provenance)
                    .bind(now)
                    .bind(lease.id)
                    .bind(&lease.worker)
                    .bind(lease.attempt)
                    .execute(tx.conn())
                    .await?;
                if done.rows_affected() != 1 {
                    return Err(StoreError::Conflict(format!(
                        "build {}/{} is no longer leased by {} (attempt {}); another worker owns it now",
                        lease.project, lease.number, lease.worker, lease.attempt
                    )));
                }
                let project_id: i64 = sqlx::query_scalar(&tx.sql("SELECT project_id FROM builds WHERE id = $1"))
                    .bind(lease.id)
                    .fetch_one(tx.conn())
                    .await?;
                for artifact in &outcome.artifacts {
                    let sql = tx.sql(
                        "INSERT INTO artifacts (project_id, build_id, name, digest, size, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (build_id, name) DO NOTHING",
                    );
                    sqlx::query(&sql)
                        .bind(project_id)
                        .bind(lease.id)
                        .bind(&artifact.name)
                        .bind(&artifact.digest)
                        .bind(artifact.size)
                        .bind(now)
                        .execute(tx.conn())
                        .await?;
                }
                tx.audit(NewEvent {
                    actor: SYSTEM_ACTOR.into(),
                    action: "build.finish".into(),
                    subject: format!("build:{}/{}", lease.project, lease.number),
                    details: json!({
                        "commit": lease.commit,
                        "status": outcome.status,
                        "reason": outcome.reason,
                        "attempt": lease.attempt,
                        "worker": lease.worker,
                        "exit_code": outcome.exit_code,
                        "pipeline_digest": outcome.pipeline_digest,
                        "script_digest": outcome.script_digest,
                        "network": outcome.network,
                        "artifacts": outcome.artifacts.iter()
                            .map(|a| json!({ "name": a.name, "sha256": a.digest, "size": a.size }))
                            .collect::<Vec<_>>(),
                        "envelope_sha256": outcome.provenance.as_deref().and_then(custody_formats::Envelope::digest_of_json),
                    }),
                })
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// A project's builds, newest first.
    pub async fn list_builds(&self, access: &ProjectAccess, page: PageRequest) -> Result<Page<BuildView>> {
        let sql = self.inner.dialect.sql_owned(format!(
            "SELECT {BUILD_COLUMNS} FROM builds b JOIN projects p ON p.id = b.project_id \
             WHERE b.project_id = $1 AND b.number < $2 ORDER BY b.number DESC LIMIT $3"
        ));
        let rows = sqlx::query(&sql)
            .bind(access.project_id)
            .bind(page.after.unwrap_or(i64::MAX))
            .bind(page.limit)
            .fetch_all(self.readers())
            .await?;
        let items = rows.iter().map(build_view).collect::<Result<Vec<_>>>()?;
        Ok(crate::page_of(items, page, |b| b.number))
    }

    /// One build, with its artifacts.
    pub async fn get_build(&self, access: &ProjectAccess, number: i64) -> Result<BuildView> {
        let sql = self.inner.dialect.sql_owned(format!(
            "SELECT {BUILD_COLUMNS} FROM builds b JOIN projects p ON p.id = b.project_id \
             WHERE b.project_id = $1 AND b.number = $2"
        ));
        let row = sqlx::query(&sql).bind(access.project_id).bind(number).fetch_optional(self.readers()).await?;
        let row = row.ok_or_else(|| StoreError::not_found("build", format!("{}/{number}", access.project)))?;
        let mut build = build_view(&row)?;
        let sql =
            self.inner.dialect.sql_owned(format!("SELECT {ARTIFACT_COLUMNS} WHERE a.build_id = $1 ORDER BY a.name"));
        let rows = sqlx::query(&sql).bind(col::<i64>(&row, "id")?).fetch_all(self.readers()).await?;
        build.artifacts = rows.iter().map(artifact_view).collect::<Result<_>>()?;
        Ok(build)
    }

    /// A build's signed provenance.
    pub async fn build_provenance(&self, access: &ProjectAccess, number: i64) -> Result<Option<String>> {
        let sql = self.sql("SELECT provenance FROM builds WHERE project_id = $1 AND number = $2");
        let row = sqlx::query_scalar::<_, Option<String>>(&sql)
            .bind(access.project_id)
            .bind(number)
            .fetch_optional(self.readers())
            .await?;
        row.ok_or_else(|| StoreError::not_found("build", format!("{}/{number}", access.project)))
    }

    /// The pieces of a build's log after `after`, and whether the build has
    /// finished (so that nothing more will come).
    pub async fn build_log(&self, access: &ProjectAccess, number: i64, after: i64) -> Result<(Vec<LogChunk>, bool)> {
        let build = self.get_build(access, number).await?;
        let finished = !build.status.is_waiting();
        let sql = self.sql(
            "SELECT l.seq, l.data FROM build_logs l JOIN builds b ON b.id = l.build_id \
             WHERE b.project_id = $1 AND b.number = $2 AND l.seq > $3 ORDER BY l.seq LIMIT 1000",
        );
        let rows = sqlx::query(&sql).bind(access.project_id).bind(number).bind(after).fetch_all(self.readers()).await?;
        let chunks = rows
            .iter()
            .map(|r| Ok(LogChunk { seq: col(r, "seq")?, data: col(r, "data")? }))
            .collect::<Result<Vec<_>>>()?;
        // More may be waiting when the page was full.
        Ok((chunks.clone(), finished && chunks.len() < 1000))
    }

    /// A project's artifacts, newest first; only those of `build` when given.
    pub async fn list_artifacts(
        &self,
        access: &ProjectAccess,
        build: Option<i64>,
        page: PageRequest,
    ) -> Result<Page<ArtifactView>> {
        let sql = self.inner.dialect.sql_owned(format!(
            "SELECT {ARTIFACT_COLUMNS} WHERE a.project_id = $1 AND a.id < $2 AND ($3 = 0 OR b.number = $3) \
             ORDER BY a.id DESC LIMIT $4"
        ));
        let rows = sqlx::query(&sql)
            .bind(access.project_id)
            .bind(page.after.unwrap_or(i64::MAX))
            .bind(build.unwrap_or(0))
            .bind(page.limit)
            .fetch_all(self.readers())
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        let mut last = None;
        for row in &rows {
            items.push(artifact_view(row)?);
            last = Some(col::<i64>(row, "id")?);
        }
        let next_cursor = if items.len() as i64 == page.limit { last } else { None };
        Ok(Page { items, next_cursor })
    }

    /// Every record of an artifact with this digest in a project (one
    /// content can be made by several builds), oldest first.
    pub async fn artifact(&self, access: &ProjectAccess, digest: &str) -> Result<Vec<ArtifactView>> {
        let sql = self
            .inner
            .dialect
            .sql_owned(format!("SELECT {ARTIFACT_COLUMNS} WHERE a.project_id = $1 AND a.digest = $2 ORDER BY a.id"));
        let rows = sqlx::query(&sql).bind(access.project_id).bind(digest).fetch_all(self.readers()).await?;
        let found = rows.iter().map(artifact_view).collect::<Result<Vec<_>>>()?;
        if found.is_empty() {
            return Err(StoreError::not_found("artifact", format!("{}@sha256:{digest}", access.project)));
        }
        Ok(found)
    }

    /// Every record of the artifact `name` in a project (an image's
    /// manifest, say), one a build, oldest build first.
    pub async fn artifacts_named(&self, access: &ProjectAccess, name: &str) -> Result<Vec<ArtifactView>> {
        let sql = self.inner.dialect.sql_owned(format!(
            "SELECT {ARTIFACT_COLUMNS} WHERE a.project_id = $1 AND a.name = $2 ORDER BY b.number, a.id"
        ));
        let rows = sqlx::query(&sql).bind(access.project_id).bind(name).fetch_all(self.readers()).await?;
        rows.iter().map(artifact_view).collect()
    }

    /// Every digest the artifact records name, with the projects naming it.
    pub async fn artifact_digests(&self) -> Result<Vec<(String, String)>> {
        let sql = "SELECT DISTINCT a.digest, p.name FROM artifacts a JOIN projects p ON p.id = a.project_id \
                   ORDER BY a.digest";
        let rows = sqlx::query(sql).fetch_all(self.readers()).await?;
        rows.iter().map(|r| Ok((col(r, "digest")?, col(r, "name")?))).collect()
    }

    /// Which workers took a build, in order (for inspection).
    pub async fn build_attempts(&self, project: &ProjectName, number: i64) -> Result<Vec<String>> {
        let sql = self.sql(
            "SELECT a.worker FROM build_attempts a JOIN builds b ON b.id = a.build_id \
             JOIN projects p ON p.id = b.project_id WHERE p.name = $1 AND b.number = $2 ORDER BY a.attempt",
        );
        Ok(sqlx::query_scalar(&sql).bind(project.as_str()).bind(number).fetch_all(self.readers()).await?)
    }

    /// How many builds of a project are in each status.
    pub async fn build_counts(&self, project: &ProjectName) -> Result<Vec<(String, i64)>> {
        let sql = self.sql(
            "SELECT b.status, COUNT(*) AS n FROM builds b JOIN projects p ON p.id = b.project_id \
             WHERE p.name = $1 GROUP BY b.status ORDER BY b.status",
        );
        let rows = sqlx::query(&sql).bind(project.as_str()).fetch_all(self.readers()).await?;
        rows.iter().map(|r| Ok((col(r, "status")?, col(r, "n")?))).collect()
    }
}

async fn append_log(tx: &mut Tx, lease: &LeasedBuild, data: String) -> Result<()> {
    let sql =
        tx.sql("SELECT COUNT(*) FROM builds WHERE id = $1 AND status = 'running' AND worker = $2 AND attempt = $3");
    let holds: i64 =
        sqlx::query_scalar(&sql).bind(lease.id).bind(&lease.worker).bind(lease.attempt).fetch_one(tx.conn()).await?;
    if holds != 1 {
        return Err(StoreError::Conflict(format!(
            "build {}/{} is no longer leased by this worker",
            lease.project, lease.number
        )));
    }
    let sql = tx.sql(
        "INSERT INTO build_logs (build_id, seq, data) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2 FROM build_logs WHERE build_id = $1",
    );
    sqlx::query(&sql).bind(lease.id).bind(data).execute(tx.conn()).await?;
    Ok(())
}
