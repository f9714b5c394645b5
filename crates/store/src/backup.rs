//! Backups and restores, as far as the database goes: a consistent copy
//! taken while custody writes, the tree head a copy proves, the facts a
//! backup's repositories and blobs are checked against, and the restore's
//! own record in the ledger.

use std::path::Path;

use custody_domain::audit::{NewEvent, SYSTEM_ACTOR};
use custody_formats::ledger_key::{Anchor, EventKey};
use serde_json::{json, Value};
use sqlx::Connection as _;

use crate::ledger::{connect_read_only, to_hash, StoredCheckpoint};
use crate::proof::dialect_of;
use crate::{col, Dialect, Result, Store, StoreError};

/// The audit action a restore is recorded under.
pub const RESTORED_ACTION: &str = "instance.restored";

/// Copies the SQLite database at `url` into the new file `dest`, as one
/// read transaction sees it (`VACUUM INTO`): writers go on meanwhile, and
/// the copy holds every transaction committed before it began and none
/// after.
pub async fn copy_sqlite(url: &str, dest: &Path) -> Result<()> {
    let mut conn = connect_read_only(url).await?;
    if dialect_of(&conn) != Dialect::Sqlite {
        return Err(StoreError::Corrupt("a SQLite copy was asked of another database".into()));
    }
    let dest = dest.to_str().ok_or_else(|| StoreError::Corrupt("the copy's path is not UTF-8".into()))?;
    sqlx::query("VACUUM INTO $1").bind(dest).execute(&mut conn).await?;
    let _ = conn.close().await;
    Ok(())
}

/// One read-only view of a database, consistent for as long as it is held:
/// the events proved, the facts read and (on PostgreSQL) a `pg_dump` run
/// with its exported snapshot all see the same committed state.
pub struct Snapshot {
    conn: sqlx::AnyConnection,
    exported: Option<String>,
}

impl Snapshot {
    /// Begins a read-only snapshot of the database at `url`; on PostgreSQL
    /// it is exported, for `pg_dump --snapshot`.
    pub async fn begin(url: &str) -> Result<Snapshot> {
        let mut conn = connect_read_only(url).await?;
        let exported = match dialect_of(&conn) {
            Dialect::Sqlite => {
                sqlx::query("BEGIN").execute(&mut conn).await?;
                None
            }
            Dialect::Postgres => {
                sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut conn).await?;
                Some(sqlx::query_scalar::<_, String>("SELECT pg_export_snapshot()").fetch_one(&mut conn).await?)
            }
        };
        Ok(Snapshot { conn, exported })
    }

    /// The PostgreSQL snapshot's id, which `pg_dump --snapshot` takes.
    pub fn exported(&self) -> Option<&str> {
        self.exported.as_deref()
    }

    /// Checks every event (its tag, its subject's chain, that the log
    /// extends `anchor` when one is given) and returns the tree head the
    /// whole log gives, as an anchor with `anchor`'s legacy boundary. Fails
    /// with [`StoreError::Tampered`], naming each event at fault, when
    /// something does not check.
    pub async fn prove_head(&mut self, key: &EventKey, anchor: Option<Anchor>, anchor_name: &Path) -> Result<Anchor> {
        let dialect = dialect_of(&self.conn);
        let scan = crate::proof::scan(&mut self.conn, dialect, key, anchor, anchor_name).await?;
        if !scan.findings.is_empty() {
            let findings: Vec<String> = scan.findings.into_iter().map(|f| f.1).collect();
            return Err(StoreError::Tampered(crate::proof::describe(&findings)));
        }
        Ok(Anchor { size: scan.frontier.size(), root: scan.frontier.root(), legacy: anchor.map_or(0, |a| a.legacy) })
    }

    /// What the repositories and the blob store must agree with.
    pub async fn facts(&mut self) -> Result<BackupFacts> {
        facts_on(&mut self.conn).await
    }

    /// Ends the snapshot.
    pub async fn end(mut self) {
        let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}

/// A branch whose tip the database records: an open change's source branch
/// at the change's head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedHead {
    /// The project.
    pub project: String,
    /// The branch (without `refs/heads/`).
    pub branch: String,
    /// The commit the change is at.
    pub head: String,
}

/// What a backup's database records that its repositories and blob store
/// must agree with.
#[derive(Clone, Debug)]
pub struct BackupFacts {
    /// The instance's name.
    pub instance: String,
    /// Every project's name.
    pub projects: Vec<String>,
    /// Every artifact blob: sha256 (hex) and size, once each.
    pub blobs: Vec<(String, u64)>,
    /// The newest signed checkpoint.
    pub checkpoint: Option<StoredCheckpoint>,
    /// Open changes' source branches and heads.
    pub heads: Vec<RecordedHead>,
    /// Each project's protected branches and the merges recorded into them.
    pub mainlines: Vec<crate::Mainline>,
}

async fn facts_on(conn: &mut sqlx::AnyConnection) -> Result<BackupFacts> {
    let dialect = dialect_of(conn);
    let instance: Option<String> = sqlx::query_scalar(&dialect.sql("SELECT value FROM instance WHERE key = $1"))
        .bind("name")
        .fetch_optional(&mut *conn)
        .await?;
    let instance = instance.ok_or_else(|| StoreError::Corrupt("the database records no instance name".into()))?;
    let projects: Vec<String> =
        sqlx::query_scalar("SELECT name FROM projects ORDER BY name").fetch_all(&mut *conn).await?;
    let mut blobs = Vec::new();
    for row in sqlx::query("SELECT digest, MAX(size) AS size FROM artifacts GROUP BY digest ORDER BY digest")
        .fetch_all(&mut *conn)
        .await?
    {
        blobs.push((col::<String>(&row, "digest")?, col::<i64>(&row, "size")? as u64));
    }
    let newest = sqlx::query("SELECT size, root, note, at FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let checkpoint = match newest {
        Some(row) => Some(StoredCheckpoint {
            size: col::<i64>(&row, "size")? as u64,
            root: to_hash(col(&row, "root")?, "a checkpoint's root")?,
            note: col(&row, "note")?,
            at_ms: col(&row, "at")?,
        }),
        None => None,
    };
    let mut heads = Vec::new();
    for row in sqlx::query(
        "SELECT p.name AS project, c.source_branch AS branch, c.head AS head FROM changes c \
         JOIN projects p ON p.id = c.project_id WHERE c.state = 'open' ORDER BY p.name, c.number",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        heads.push(RecordedHead {
            project: col(&row, "project")?,
            branch: col(&row, "branch")?,
            head: col(&row, "head")?,
        });
    }
    let mainlines = crate::intents::mainlines_on(conn).await?;
    Ok(BackupFacts { instance, projects, blobs, checkpoint, heads, mainlines })
}

impl Store {
    /// Records that this instance was restored from a backup: `details`
    /// name the backup's signed tree head and what the restore replaced, so
    /// that watchers and auditors see exactly which events were lost.
    pub async fn record_restore(&self, details: Value) -> Result<i64> {
        self.write(move |tx| {
            Box::pin(async move {
                let event = tx
                    .audit(NewEvent {
                        actor: SYSTEM_ACTOR.into(),
                        action: RESTORED_ACTION.into(),
                        subject: "instance".into(),
                        details,
                    })
                    .await?;
                Ok(event)
            })
        })
        .await
    }

    /// Records that `host` exported the instance's keys into an escrow
    /// file: which keys, and the file's digest.
    pub async fn record_escrow(&self, host: String, key_ids: Vec<String>, file_sha256: String) -> Result<i64> {
        self.write(move |tx| {
            Box::pin(async move {
                tx.audit(NewEvent {
                    actor: SYSTEM_ACTOR.into(),
                    action: "key.escrowed".into(),
                    subject: format!("host:{host}"),
                    details: json!({ "key_ids": key_ids, "escrow_sha256": file_sha256 }),
                })
                .await
            })
        })
        .await
    }
}
