//! The audit ledger: the Merkle tree over the audit events, its signed
//! checkpoints, proofs, and the inspection that finds tampering.
//!
//! The writer hashes each group's events into `ledger_nodes` before it
//! commits (see [`crate::writer`]), so the tree always covers exactly the
//! committed events. A checkpointer signs the tree head whenever the tree
//! grew ([`Store::run_checkpointer`]). [`inspect`] reads a database directly,
//! without trusting it, and names every event that no longer matches the
//! tree or the signed checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use custody_domain::InvalidInput;
use custody_formats::checkpoint::{Checkpoint, NoteVerifier};
use custody_formats::keys::{PublicKey, ServiceKey};
use custody_formats::merkle::{self, Frontier, Hash, NodeId};
use futures_util::TryStreamExt as _;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions as _, Connection as _};

use crate::proof::TaggedEvent;
use crate::{col, Dialect, LedgerSecrets, Result, Store, StoreError};

/// How many nodes one multi-row INSERT or one lookup carries.
const CHUNK: usize = 200;

/// A signed tree head as stored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredCheckpoint {
    /// How many events it covers.
    pub size: u64,
    /// The tree head.
    #[serde(serialize_with = "base64_hash")]
    pub root: Hash,
    /// The signed note (C2SP `tlog-checkpoint` in `signed-note`).
    pub note: String,
    /// When it was signed, in milliseconds since the epoch.
    pub at_ms: i64,
}

fn base64_hash<S: serde::Serializer>(hash: &Hash, s: S) -> std::result::Result<S::Ok, S::Error> {
    use base64::Engine as _;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(hash))
}

fn to_hash(bytes: Vec<u8>, what: &str) -> Result<Hash> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("{what} is not a 32-byte hash")))
}

fn out_of_range(what: &'static str, value: impl ToString, why: impl Into<String>) -> StoreError {
    StoreError::Invalid(InvalidInput::new(what, &value.to_string(), why))
}

/// How many leaves the stored tree has.
pub(crate) async fn tree_size(conn: &mut AnyConnection) -> Result<u64> {
    let last: Option<i64> =
        sqlx::query_scalar("SELECT MAX(idx) FROM ledger_nodes WHERE level = 0").fetch_one(&mut *conn).await?;
    Ok(last.map_or(0, |i| i as u64 + 1))
}

/// Reads stored nodes by id, a chunk per query.
pub(crate) async fn fetch_nodes(
    conn: &mut AnyConnection,
    dialect: Dialect,
    ids: &[NodeId],
) -> Result<HashMap<NodeId, Hash>> {
    let mut found = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let mut sql = String::from("SELECT level, idx, hash FROM ledger_nodes WHERE ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2));
        }
        let sql = dialect.sql_owned(sql);
        let mut query = sqlx::query(&sql);
        for (level, idx) in chunk {
            query = query.bind(i64::from(*level)).bind(*idx as i64);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let level: i64 = col(&row, "level")?;
            let idx: i64 = col(&row, "idx")?;
            found.insert((level as u8, idx as u64), to_hash(col(&row, "hash")?, "a ledger node")?);
        }
    }
    Ok(found)
}

/// Writes new nodes, a multi-row INSERT per chunk.
pub(crate) async fn insert_nodes(conn: &mut AnyConnection, dialect: Dialect, nodes: &[(NodeId, Hash)]) -> Result<()> {
    for chunk in nodes.chunks(CHUNK) {
        let mut sql = String::from("INSERT INTO ledger_nodes (level, idx, hash) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3));
        }
        let sql = dialect.sql_owned(sql);
        let mut query = sqlx::query(&sql);
        for ((level, idx), hash) in chunk {
            query = query.bind(i64::from(*level)).bind(*idx as i64).bind(hash.to_vec());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// How many events one chunk carries.
pub(crate) const EVENT_CHUNK: i64 = 1 << 15;

/// The next chunk of events after `after`, as one JSON array of
/// `[seq, at, actor, action, subject, details]` (and, when `tagged`, `prev`
/// and the tag in hex), with its size and last sequence number: a million
/// events take a few dozen round trips rather than a million rows. `None`
/// when no event follows. Without `tagged` it reads a database from before
/// events were tagged too.
pub(crate) async fn event_chunk(
    conn: &mut AnyConnection,
    after: i64,
    tagged: bool,
) -> Result<Option<(i64, i64, String)>> {
    let sql = match (dialect_of(conn), tagged) {
        (Dialect::Sqlite, false) => {
            "SELECT count(*) AS n, max(seq) AS hi, \
             json_group_array(json_array(seq, at, actor, action, subject, details)) AS events \
             FROM (SELECT seq, at, actor, action, subject, details FROM audit_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2)"
        }
        (Dialect::Sqlite, true) => {
            "SELECT count(*) AS n, max(seq) AS hi, \
             json_group_array(json_array(seq, at, actor, action, subject, details, prev, hex(mac))) AS events \
             FROM (SELECT seq, at, actor, action, subject, details, prev, mac FROM audit_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2)"
        }
        (Dialect::Postgres, false) => {
            "SELECT count(*) AS n, max(seq) AS hi, \
             json_agg(json_build_array(seq, at, actor, action, subject, details))::text AS events \
             FROM (SELECT seq, at, actor, action, subject, details FROM audit_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2) AS chunk"
        }
        (Dialect::Postgres, true) => {
            "SELECT count(*) AS n, max(seq) AS hi, \
             json_agg(json_build_array(seq, at, actor, action, subject, details, prev, encode(mac, 'hex')))::text \
             AS events FROM (SELECT seq, at, actor, action, subject, details, prev, mac FROM audit_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2) AS chunk"
        }
    };
    let sql = dialect_of(conn).sql(sql);
    let row = sqlx::query(&sql).bind(after).bind(EVENT_CHUNK).fetch_one(&mut *conn).await?;
    let n: i64 = col(&row, "n")?;
    if n == 0 {
        return Ok(None);
    }
    Ok(Some((n, col(&row, "hi")?, col(&row, "events")?)))
}

/// An audit event as read, its details not yet parsed.
pub(crate) struct RawEvent {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    subject: String,
    details: String,
    prev: Option<i64>,
    mac: Option<String>,
}

impl RawEvent {
    /// The events of a chunk from [`event_chunk`].
    pub(crate) fn from_json_array(text: &str) -> Result<Vec<RawEvent>> {
        let rows: Vec<Vec<serde_json::Value>> =
            serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("audit events: {e}")))?;
        let text = |v: &serde_json::Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        rows.iter()
            .map(|row| {
                let (fields, tag) = match row.as_slice() {
                    [a, b, c, d, e, f] => ([a, b, c, d, e, f], None),
                    [a, b, c, d, e, f, prev, mac] => ([a, b, c, d, e, f], Some((prev, mac))),
                    _ => return Err(StoreError::Corrupt("audit events: a row of the wrong shape".into())),
                };
                let [seq, at, actor, action, subject, details] = fields;
                Ok(RawEvent {
                    seq: seq.as_i64().ok_or_else(|| StoreError::Corrupt(format!("audit event seq {seq}")))?,
                    at: at.as_i64().ok_or_else(|| StoreError::Corrupt(format!("audit event {seq}: at {at}")))?,
                    actor: text(actor),
                    action: text(action),
                    subject: text(subject),
                    details: text(details),
                    prev: tag.and_then(|(prev, _)| prev.as_i64()),
                    mac: tag.and_then(|(_, mac)| mac.as_str()).filter(|m| !m.is_empty()).map(str::to_owned),
                })
            })
            .collect()
    }

    pub(crate) fn parse(self) -> TaggedEvent {
        TaggedEvent {
            seq: self.seq,
            at: self.at,
            actor: self.actor,
            action: self.action,
            subject: self.subject,
            // Details that are no longer JSON still hash (as a string), so
            // the damage shows as a modified event rather than an error.
            details: serde_json::from_str(&self.details).unwrap_or(serde_json::Value::String(self.details)),
            prev: self.prev,
            // A tag that is not hex is no tag: it verifies as nothing.
            mac: self.mac.map(|m| hex::decode(m).unwrap_or_default()),
        }
    }
}

async fn read_checkpoint(
    conn: &mut AnyConnection,
    dialect: Dialect,
    size: Option<u64>,
) -> Result<Option<StoredCheckpoint>> {
    let row = match size {
        Some(size) => {
            sqlx::query(&dialect.sql("SELECT size, root, note, at FROM ledger_checkpoints WHERE size = $1"))
                .bind(size as i64)
                .fetch_optional(&mut *conn)
                .await?
        }
        None => {
            sqlx::query("SELECT size, root, note, at FROM ledger_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?
        }
    };
    row.map(|row| {
        Ok(StoredCheckpoint {
            size: col::<i64>(&row, "size")? as u64,
            root: to_hash(col(&row, "root")?, "a checkpoint's root")?,
            note: col(&row, "note")?,
            at_ms: col(&row, "at")?,
        })
    })
    .transpose()
}

impl Store {
    /// How many events the ledger's tree covers.
    pub async fn ledger_size(&self) -> Result<u64> {
        let mut conn = self.readers().acquire().await?;
        tree_size(&mut conn).await
    }

    /// The newest signed checkpoint, if any was issued.
    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        let mut conn = self.readers().acquire().await?;
        read_checkpoint(&mut conn, self.dialect(), None).await
    }

    /// The checkpoint of exactly `size` events, if one was issued.
    pub async fn checkpoint_of_size(&self, size: u64) -> Result<Option<StoredCheckpoint>> {
        let mut conn = self.readers().acquire().await?;
        read_checkpoint(&mut conn, self.dialect(), Some(size)).await
    }

    /// The tree head over the first `size` events.
    pub async fn ledger_root(&self, size: u64) -> Result<Hash> {
        let mut conn = self.readers().acquire().await?;
        let stored = tree_size(&mut conn).await?;
        if size > stored {
            return Err(out_of_range("tree size", size, format!("the ledger holds {stored} events")));
        }
        let ids = merkle::root_nodes(size);
        let nodes = fetch_nodes(&mut conn, self.dialect(), &ids).await?;
        merkle::root_from_nodes(size, |id| nodes.get(&id).copied()).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// Signs and stores a checkpoint of the whole tree if it grew since the
    /// last one; returns it, or `None` when there was nothing new.
    pub async fn issue_checkpoint(&self, origin: &str, key: Arc<ServiceKey>) -> Result<Option<StoredCheckpoint>> {
        let size = self.ledger_size().await?;
        if self.latest_checkpoint().await?.is_some_and(|c| c.size >= size) {
            return Ok(None);
        }
        let origin = origin.to_owned();
        self.write(move |tx| {
            Box::pin(async move {
                let dialect = tx.dialect();
                // The head the writer proved (every event tagged, chained and
                // hashed by custody), never one read from the stored nodes.
                let (size, root) = tx.proven_head();
                let last = read_checkpoint(tx.conn(), dialect, None).await?;
                if last.is_some_and(|c| c.size >= size) || size == 0 {
                    return Ok(None);
                }
                let note = Checkpoint { origin, size, root }
                    .sign(&key)
                    .map_err(|e| StoreError::Invalid(InvalidInput::new("ledger key", "", e.to_string())))?;
                let at = crate::now_ms();
                sqlx::query(&tx.sql("INSERT INTO ledger_checkpoints (size, root, note, at) VALUES ($1, $2, $3, $4)"))
                    .bind(size as i64)
                    .bind(root.to_vec())
                    .bind(note.clone())
                    .bind(at)
                    .execute(tx.conn())
                    .await?;
                Ok(Some(StoredCheckpoint { size, root, note, at_ms: at }))
            })
        })
        .await
    }

    /// Signs a checkpoint every `every` while the tree grows, until `stop`
    /// completes; then signs a last one.
    pub async fn run_checkpointer(
        &self,
        origin: String,
        key: ServiceKey,
        every: Duration,
        stop: impl Future<Output = ()> + Send,
    ) {
        let key = Arc::new(key);
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => break,
                _ = ticks.tick() => {
                    if let Err(error) = self.issue_checkpoint(&origin, key.clone()).await {
                        tracing::warn!(%error, "could not sign a ledger checkpoint; retrying");
                    }
                }
            }
        }
        if let Err(error) = self.issue_checkpoint(&origin, key).await {
            tracing::warn!(%error, "could not sign the last ledger checkpoint");
        }
    }

    /// Leaf hashes and inclusion proofs of the events `seqs` in the tree of
    /// `size` events.
    pub async fn inclusion_proofs(&self, seqs: &[i64], size: u64) -> Result<Vec<(Hash, Vec<Hash>)>> {
        let mut conn = self.readers().acquire().await?;
        let stored = tree_size(&mut conn).await?;
        if size > stored {
            return Err(out_of_range("tree size", size, format!("the ledger holds {stored} events")));
        }
        let mut ids = Vec::new();
        for &seq in seqs {
            if seq < 1 || seq as u64 > size {
                return Err(out_of_range(
                    "event",
                    seq,
                    format!(
                        "the tree of {size} events holds events 1 to {size}; a newer event is in the next checkpoint"
                    ),
                ));
            }
            ids.push((0, seq as u64 - 1));
            ids.extend(merkle::inclusion_nodes(seq as u64 - 1, size));
        }
        ids.sort_unstable();
        ids.dedup();
        let nodes = fetch_nodes(&mut conn, self.dialect(), &ids).await?;
        let missing = |e: merkle::ProofError| StoreError::Corrupt(e.to_string());
        seqs.iter()
            .map(|&seq| {
                let index = seq as u64 - 1;
                let leaf = nodes
                    .get(&(0, index))
                    .copied()
                    .ok_or(merkle::ProofError::MissingNode(0, index))
                    .map_err(missing)?;
                let proof = merkle::inclusion_proof(index, size, |id| nodes.get(&id).copied()).map_err(missing)?;
                Ok((leaf, proof))
            })
            .collect()
    }

    /// The consistency proof between the trees of `old` and `new` events.
    pub async fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        let mut conn = self.readers().acquire().await?;
        let stored = tree_size(&mut conn).await?;
        if new > stored {
            return Err(out_of_range("tree size", new, format!("the ledger holds {stored} events")));
        }
        if old > new {
            return Err(out_of_range("old tree size", old, format!("it must not exceed the new size {new}")));
        }
        let nodes = fetch_nodes(&mut conn, self.dialect(), &merkle::consistency_nodes(old, new)).await?;
        merkle::consistency_proof(old, new, |id| nodes.get(&id).copied())
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

/// Which database a connection is to.
fn dialect_of(conn: &AnyConnection) -> Dialect {
    if conn.backend_name().to_ascii_lowercase().starts_with("postgres") {
        Dialect::Postgres
    } else {
        Dialect::Sqlite
    }
}

/// The stored hashes of one level of the tree in index order, up to the
/// first missing one. Each query carries a chunk of the level as one row
/// (the hashes hex-encoded end to end), so a million hashes take a few
/// dozen round trips rather than a million rows.
async fn read_level(conn: &mut AnyConnection, dialect: Dialect, level: u8) -> Result<Vec<Hash>> {
    const ROWS: i64 = 1 << 16;
    let sql = match dialect {
        Dialect::Sqlite => {
            "SELECT count(*) AS n, min(idx) AS lo, max(idx) AS hi, group_concat(hex(hash), '' ORDER BY idx) AS hashes \
             FROM ledger_nodes WHERE level = $1 AND idx >= $2 AND idx < $3"
        }
        Dialect::Postgres => {
            "SELECT count(*) AS n, min(idx) AS lo, max(idx) AS hi, \
             string_agg(encode(hash, 'hex'), '' ORDER BY idx) AS hashes \
             FROM ledger_nodes WHERE level = $1 AND idx >= $2 AND idx < $3"
        }
    };
    let mut hashes = Vec::new();
    let mut start = 0i64;
    loop {
        let row = sqlx::query(&dialect.sql(sql))
            .bind(i64::from(level))
            .bind(start)
            .bind(start + ROWS)
            .fetch_one(&mut *conn)
            .await?;
        let n: i64 = col(&row, "n")?;
        if n == 0 {
            return Ok(hashes);
        }
        let (lo, hi): (i64, i64) = (col(&row, "lo")?, col(&row, "hi")?);
        let text: String = col(&row, "hashes")?;
        if !(lo == start && hi - lo + 1 == n && text.len() as i64 == 64 * n) {
            // A gap, or a hash of the wrong length: read this chunk row by row.
            let sql = dialect
                .sql("SELECT idx, hash FROM ledger_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx");
            let rows =
                sqlx::query(&sql).bind(i64::from(level)).bind(start).bind(start + ROWS).fetch_all(&mut *conn).await?;
            for row in rows {
                let idx: i64 = col(&row, "idx")?;
                let Ok(hash) = to_hash(col(&row, "hash")?, "a ledger node") else { break };
                if idx as usize != hashes.len() {
                    break;
                }
                hashes.push(hash);
            }
            return Ok(hashes);
        }
        let bytes = hex::decode(&text).map_err(|e| StoreError::Corrupt(format!("ledger nodes: {e}")))?;
        hashes.extend(bytes.chunks_exact(32).map(|c| <Hash>::try_from(c).expect("32 bytes")));
        if n < ROWS {
            return Ok(hashes);
        }
        start += ROWS;
    }
}

// ---------------------------------------------------------------------------
// Inspection: what `custody audit verify` runs
// ---------------------------------------------------------------------------

/// Something wrong found in a database's audit log or ledger.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// The event at `seq` is not the event the ledger recorded there.
    Modified {
        /// Its sequence number.
        seq: i64,
    },
    /// The event at `seq` is gone.
    Deleted {
        /// Its sequence number.
        seq: i64,
    },
    /// An event the ledger never recorded.
    Inserted {
        /// Where it sits.
        seq: i64,
    },
    /// The event the ledger recorded as `seq` now sits at `stored_at`.
    Reordered {
        /// Where the ledger recorded it.
        seq: i64,
        /// Where it is now.
        stored_at: i64,
    },
    /// The stored leaf hashes of events `from_seq..=to_seq` no longer give
    /// the tree head a signed checkpoint committed to: the ledger itself was
    /// rewritten somewhere in that range.
    TreeRewritten {
        /// The first event that may have been rewritten.
        from_seq: i64,
        /// The checkpoint's size, the last event it covers.
        to_seq: i64,
    },
    /// The ledger has fewer leaves than a signed checkpoint covers.
    TreeTruncated {
        /// The stored tree's size.
        tree_size: u64,
        /// The checkpoint's size.
        checkpoint_size: u64,
    },
    /// A stored interior node does not match the leaves below it.
    NodeAltered {
        /// Its level.
        level: u8,
        /// Its index.
        idx: u64,
    },
    /// Custody cannot prove it wrote this: an event without a valid tag, a
    /// subject's chain with an event missing, a log that no longer extends
    /// the anchored tree head (truncated or restored from an older copy).
    Unproven {
        /// The first event it is about (0: the log as a whole).
        seq: i64,
        /// What, naming the table and row.
        why: String,
    },
    /// A stored checkpoint's signature does not verify with the ledger key.
    ForgedCheckpoint {
        /// Its size.
        size: u64,
        /// What the verifier said.
        why: String,
    },
}

impl Finding {
    /// The sequence number a finding is about, for ordering.
    fn seq(&self) -> i64 {
        match self {
            Finding::Modified { seq } | Finding::Deleted { seq } | Finding::Inserted { seq } => *seq,
            Finding::Reordered { seq, .. } => *seq,
            Finding::TreeRewritten { from_seq, .. } => *from_seq,
            Finding::TreeTruncated { tree_size, .. } => *tree_size as i64 + 1,
            Finding::NodeAltered { level, idx } => ((*idx << level) + 1) as i64,
            Finding::ForgedCheckpoint { size, .. } => *size as i64,
            Finding::Unproven { seq, .. } => *seq,
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Finding::Modified { seq } => format!("event {seq} was modified"),
            Finding::Deleted { seq } => format!("event {seq} was deleted"),
            Finding::Inserted { seq } => format!("event {seq} was inserted: the ledger never recorded it"),
            Finding::Reordered { seq, stored_at } => format!("event {seq} was moved: it is now stored as event {stored_at}"),
            Finding::TreeRewritten { from_seq, to_seq } => format!(
                "the ledger's leaf hashes of events {from_seq} to {to_seq} were rewritten: they no longer give the tree \
                 head that checkpoint {to_seq} signed"
            ),
            Finding::TreeTruncated { tree_size, checkpoint_size } => format!(
                "events {} to {checkpoint_size} were removed from the ledger, which a signed checkpoint covered",
                tree_size + 1
            ),
            Finding::NodeAltered { level, idx } => format!("the ledger's node at level {level}, index {idx} was altered"),
            Finding::ForgedCheckpoint { size, why } => format!("the checkpoint of size {size} is not genuine: {why}"),
            Finding::Unproven { why, .. } => why.clone(),
        }
    }
}

/// What [`inspect`] found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LedgerReport {
    /// Audit events stored.
    pub events: u64,
    /// Leaves in the stored tree.
    pub tree_size: u64,
    /// The newest genuine checkpoint, which the events were checked against.
    pub checkpoint: Option<StoredCheckpoint>,
    /// Every problem, in sequence order; empty when the log is intact.
    pub findings: Vec<Finding>,
    /// Whether every event's tag and the anchored tree head were checked
    /// (they need the instance's event key and anchor).
    pub tags_checked: bool,
}

impl LedgerReport {
    /// Whether nothing was found.
    pub fn intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// How far (in sequence numbers) a moved event is looked for.
const MOVE_WINDOW: i64 = 16;

/// Reads the database at `url` directly, without migrating or writing, and
/// checks the audit events against the stored tree and the stored tree
/// against the newest checkpoint `verifier` accepts. Names every event that
/// was modified, deleted, inserted or moved.
///
/// With the instance's `secrets`, also checks every event's tag and chain
/// and that the log still extends the anchored tree head.
pub async fn inspect(url: &str, verifier: &NoteVerifier, secrets: Option<&LedgerSecrets>) -> Result<LedgerReport> {
    let mut conn = connect_read_only(url).await?;
    let report = inspect_connection(&mut conn, verifier, secrets).await;
    let _ = conn.close().await;
    report
}

/// [`inspect`] with the ledger's public key, under the instance name the
/// database records (a changed name shows as checkpoints it did not sign).
pub async fn inspect_with_key(url: &str, key: &PublicKey, secrets: Option<&LedgerSecrets>) -> Result<LedgerReport> {
    let mut conn = connect_read_only(url).await?;
    let dialect = Dialect::of_url(url).expect("checked when connecting");
    let name: Option<String> = sqlx::query_scalar(&dialect.sql("SELECT value FROM instance WHERE key = $1"))
        .bind("name")
        .fetch_optional(&mut conn)
        .await?;
    let name = name.ok_or_else(|| StoreError::Corrupt("the database records no instance name".into()))?;
    let verifier = NoteVerifier::new(&name, key)
        .map_err(|e| StoreError::Invalid(InvalidInput::new("ledger key", "", e.to_string())))?;
    let report = inspect_connection(&mut conn, &verifier, secrets).await;
    let _ = conn.close().await;
    report
}

pub(crate) async fn connect_read_only(url: &str) -> Result<AnyConnection> {
    sqlx::any::install_default_drivers();
    let dialect = Dialect::of_url(url).ok_or_else(|| {
        StoreError::Invalid(InvalidInput::new("database URL", url, "expected sqlite://PATH or postgres://…"))
    })?;
    let url = match dialect {
        Dialect::Sqlite if !url.contains('?') => format!("{url}?mode=ro"),
        _ => url.to_owned(),
    };
    let options: AnyConnectOptions = url.parse()?;
    Ok(options.disable_statement_logging().connect().await?)
}

async fn inspect_connection(
    conn: &mut AnyConnection,
    verifier: &NoteVerifier,
    secrets: Option<&LedgerSecrets>,
) -> Result<LedgerReport> {
    let mut findings = Vec::new();
    if let Some(secrets) = secrets {
        let anchor = secrets.anchor.load().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let dialect = dialect_of(conn);
        let scan = crate::proof::scan(conn, dialect, &secrets.key, anchor, secrets.anchor.path()).await?;
        findings.extend(scan.findings.into_iter().map(|(seq, why)| Finding::Unproven { seq, why }));
    }

    // The stored leaves, up to the first one missing.
    let dialect = dialect_of(conn);
    let leaves = read_level(conn, dialect, 0).await?;
    let tree_size = leaves.len() as u64;

    // Checkpoints: the newest genuine one is the reference; the stored tree
    // must give each checkpoint's head at its size.
    let mut checkpoints: Vec<(u64, Hash, String, i64)> = Vec::new();
    {
        let mut rows =
            sqlx::query("SELECT size, root, note, at FROM ledger_checkpoints ORDER BY size").fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            let size = col::<i64>(&row, "size")? as u64;
            checkpoints.push((size, to_hash(col(&row, "root")?, "a root")?, col(&row, "note")?, col(&row, "at")?));
        }
    }
    let genuine = |size: u64, root: &Hash, note: &str| -> std::result::Result<(), String> {
        let opened = verifier.open(note).map_err(|e| e.to_string())?;
        if opened.size != size || &opened.root != root {
            return Err("its signed note names another tree than its row".into());
        }
        Ok(())
    };
    let mut reference: Option<StoredCheckpoint> = None;
    for (size, root, note, at_ms) in checkpoints.iter().rev() {
        match genuine(*size, root, note) {
            Ok(()) => {
                reference = Some(StoredCheckpoint { size: *size, root: *root, note: note.clone(), at_ms: *at_ms });
                break;
            }
            Err(why) => findings.push(Finding::ForgedCheckpoint { size: *size, why }),
        }
    }

    // Recompute the tree over the stored leaves: its head at every
    // checkpoint's size, and every interior node.
    let mut levels: Vec<Vec<Hash>> = Vec::new();
    let mut frontier = Frontier::default();
    let mut heads: BTreeMap<u64, Hash> = BTreeMap::new();
    let wanted: Vec<u64> = checkpoints.iter().map(|c| c.0).collect();
    let mut next_wanted = wanted.iter().peekable();
    while next_wanted.peek().is_some_and(|&&s| s == 0) {
        heads.insert(0, merkle::empty_root());
        next_wanted.next();
    }
    for leaf in &leaves {
        frontier.push(*leaf, |(level, idx), hash| {
            if level > 0 {
                let level = level as usize;
                if levels.len() < level {
                    levels.resize(level, Vec::new());
                }
                debug_assert_eq!(levels[level - 1].len() as u64, idx);
                levels[level - 1].push(hash);
            }
        });
        while next_wanted.peek().is_some_and(|&&s| s == frontier.size()) {
            heads.insert(frontier.size(), frontier.root());
            next_wanted.next();
        }
    }
    if let Some(reference) = &reference {
        if reference.size > tree_size {
            findings.push(Finding::TreeTruncated { tree_size, checkpoint_size: reference.size });
        }
        // The first genuine-looking checkpoint the stored leaves disagree with
        // bounds where the rewriting happened.
        let mut good = 0u64;
        for (size, root, note, _) in &checkpoints {
            if *size > reference.size.min(tree_size) {
                break;
            }
            if heads.get(size) == Some(root) {
                good = *size;
            } else if genuine(*size, root, note).is_ok() {
                findings.push(Finding::TreeRewritten { from_seq: good as i64 + 1, to_seq: *size as i64 });
                break;
            }
        }
    }
    for (level, computed) in levels.iter().enumerate() {
        let level = level as u8 + 1;
        let stored = read_level(conn, dialect, level).await?;
        if let Some(idx) = computed.iter().zip(&stored).position(|(c, s)| c != s) {
            findings.push(Finding::NodeAltered { level, idx: idx as u64 });
        } else if stored.len() < computed.len() {
            findings.push(Finding::NodeAltered { level, idx: stored.len() as u64 });
        }
    }
    drop(levels);

    // The events against the leaves: read here, hashed and matched on
    // another thread, so that reading and hashing overlap.
    let leaves = Arc::new(leaves);
    let (batches, mut received) = tokio::sync::mpsc::channel::<String>(4);
    let checker = tokio::task::spawn_blocking({
        let leaves = leaves.clone();
        move || {
            let mut matched = vec![false; leaves.len()];
            let mut present = vec![false; leaves.len()];
            let mut suspects: Vec<TaggedEvent> = Vec::new();
            let mut events = 0u64;
            while let Some(chunk) = received.blocking_recv() {
                for raw in RawEvent::from_json_array(&chunk)? {
                    events += 1;
                    let event = raw.parse();
                    let position = event.seq - 1;
                    if position >= 0 && (position as usize) < leaves.len() {
                        present[position as usize] = true;
                        if event.leaf() == leaves[position as usize] {
                            matched[position as usize] = true;
                            continue;
                        }
                    }
                    suspects.push(event);
                }
            }
            Ok::<_, StoreError>((matched, present, suspects, events))
        }
    });
    {
        let mut after = i64::MIN;
        while let Some((n, hi, events)) = event_chunk(conn, after, false).await? {
            after = hi;
            if batches.send(events).await.is_err() || n < EVENT_CHUNK {
                break;
            }
        }
        drop(batches);
    }
    let (mut matched, present, suspects, events) =
        checker.await.map_err(|e| StoreError::Corrupt(format!("the event checker failed: {e}")))??;
    let mut unexplained = Vec::new();
    for event in suspects {
        let window = (event.seq - MOVE_WINDOW).max(1)..=(event.seq + MOVE_WINDOW).min(leaves.len() as i64);
        let moved_from = window.into_iter().find(|&seq| {
            seq != event.seq && !matched[seq as usize - 1] && event.leaf_at(seq) == leaves[seq as usize - 1]
        });
        match moved_from {
            Some(seq) => {
                matched[seq as usize - 1] = true;
                findings.push(Finding::Reordered { seq, stored_at: event.seq });
            }
            None => unexplained.push(event.seq),
        }
    }
    for seq in unexplained {
        let position = seq - 1;
        let own_slot_empty = position >= 0 && (position as usize) < leaves.len() && !matched[position as usize];
        if !own_slot_empty {
            findings.push(Finding::Inserted { seq });
        }
    }
    for (position, ok) in matched.iter().enumerate() {
        if !ok {
            let seq = position as i64 + 1;
            findings.push(if present[position] { Finding::Modified { seq } } else { Finding::Deleted { seq } });
        }
    }
    findings.sort_by_key(Finding::seq);
    Ok(LedgerReport { events, tree_size, checkpoint: reference, findings, tags_checked: secrets.is_some() })
}
