//! The audit ledger: the Merkle tree over the audit events, its signed
//! checkpoints and proofs. The inspection that finds tampering is in
//! [`crate::inspect`].
//!
//! The writer hashes each group's events into `ledger_nodes` before it
//! commits (see [`crate::writer`]), so the tree always covers exactly the
//! committed events. A checkpointer signs the tree head whenever the tree
//! grew ([`Store::run_checkpointer`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use custody_domain::InvalidInput;
use custody_formats::checkpoint::{Checkpoint, Handover, KeyChain, NoteVerifier};
use custody_formats::keys::ServiceKey;
use custody_formats::merkle::{self, Hash, NodeId};
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions as _};

use crate::{col, Dialect, Result, Store, StoreError};

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

/// A ledger-key handover as stored: the checkpoint both keys signed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoredHandover {
    /// The verifier key (C2SP vkey) of the key that handed over.
    pub from_key: String,
    /// The verifier key of the key that took over.
    pub to_key: String,
    /// How many events the handover's checkpoint covers.
    pub size: u64,
    /// Its tree head.
    #[serde(serialize_with = "base64_hash")]
    pub root: Hash,
    /// The signed note: the checkpoint, both keys' lines, both signatures.
    pub note: String,
    /// When it was signed, in milliseconds since the epoch.
    pub at_ms: i64,
}

fn base64_hash<S: serde::Serializer>(hash: &Hash, s: S) -> std::result::Result<S::Ok, S::Error> {
    use base64::Engine as _;
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(hash))
}

pub(crate) fn to_hash(bytes: Vec<u8>, what: &str) -> Result<Hash> {
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

/// The stored handovers (the one to `to_key`, or all), oldest first.
pub(crate) async fn read_handovers(
    conn: &mut AnyConnection,
    dialect: Dialect,
    to_key: Option<&str>,
) -> Result<Vec<StoredHandover>> {
    let columns = "SELECT from_key, to_key, size, root, note, at FROM ledger_handovers";
    let rows = match to_key {
        Some(key) => {
            sqlx::query(&dialect.sql_owned(format!("{columns} WHERE to_key = $1")))
                .bind(key.to_owned())
                .fetch_all(&mut *conn)
                .await?
        }
        None => sqlx::query(&format!("{columns} ORDER BY size, at")).fetch_all(&mut *conn).await?,
    };
    rows.iter()
        .map(|row| {
            Ok(StoredHandover {
                from_key: col(row, "from_key")?,
                to_key: col(row, "to_key")?,
                size: col::<i64>(row, "size")? as u64,
                root: to_hash(col(row, "root")?, "a handover's root")?,
                note: col(row, "note")?,
                at_ms: col(row, "at")?,
            })
        })
        .collect()
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
                // A key that handed over signs nothing after: the handle
                // signs with the new key once the rotation installed it.
                let signer = NoteVerifier::new(&origin, &key.public())
                    .map_err(|e| StoreError::Invalid(InvalidInput::new("ledger key", "", e.to_string())))?
                    .to_vkey();
                let retired: Option<i64> =
                    sqlx::query_scalar(&tx.sql("SELECT size FROM ledger_handovers WHERE from_key = $1"))
                        .bind(&signer)
                        .fetch_optional(tx.conn())
                        .await?;
                if let Some(at) = retired {
                    tracing::warn!(
                        at,
                        "the ledger key handed over and signs no more checkpoints; waiting for the new key"
                    );
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

    /// Hands the ledger over from the key `old` to the key `new`: signs,
    /// with both, a checkpoint of the tree as it stands (the rotation that
    /// named `new` is in it) whose body names both keys, and stores it. The
    /// old key signs no checkpoint after it. Done once per new key: a
    /// second call returns the stored handover.
    pub async fn hand_over_ledger(&self, origin: &str, old: &ServiceKey, new: &ServiceKey) -> Result<StoredHandover> {
        let invalid = |e: custody_formats::checkpoint::CheckpointError| {
            StoreError::Invalid(InvalidInput::new("ledger key", "", e.to_string()))
        };
        let to_key = NoteVerifier::new(origin, &new.public()).map_err(invalid)?.to_vkey();
        let from_key = NoteVerifier::new(origin, &old.public()).map_err(invalid)?.to_vkey();
        let (old, new, origin) = (Arc::new(old.clone_key()), Arc::new(new.clone_key()), origin.to_owned());
        self.write(move |tx| {
            Box::pin(async move {
                let dialect = tx.dialect();
                if let Some(done) = read_handovers(tx.conn(), dialect, Some(&to_key)).await?.pop() {
                    return Ok(done);
                }
                let (size, root) = tx.proven_head();
                let note = Handover::sign(&Checkpoint { origin, size, root }, &old, &new).map_err(invalid)?;
                let at = crate::now_ms();
                sqlx::query(&tx.sql(
                    "INSERT INTO ledger_handovers (to_key, from_key, size, root, note, at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                ))
                .bind(&to_key)
                .bind(&from_key)
                .bind(size as i64)
                .bind(root.to_vec())
                .bind(&note)
                .bind(at)
                .execute(tx.conn())
                .await?;
                Ok(StoredHandover { from_key, to_key, size, root, note, at_ms: at })
            })
        })
        .await
    }

    /// Every ledger-key handover, oldest first.
    pub async fn ledger_handovers(&self) -> Result<Vec<StoredHandover>> {
        let mut conn = self.readers().acquire().await?;
        read_handovers(&mut conn, self.dialect(), None).await
    }

    /// The ledger keys from `current` back through the stored handovers,
    /// for checking the checkpoints each key signed.
    pub async fn ledger_key_chain(&self, origin: &str, current: &ServiceKey) -> Result<KeyChain> {
        let pinned = NoteVerifier::new(origin, &current.public())
            .map_err(|e| StoreError::Invalid(InvalidInput::new("ledger key", "", e.to_string())))?;
        let notes: Vec<String> = self.ledger_handovers().await?.into_iter().map(|h| h.note).collect();
        Ok(KeyChain::follow(pinned, &notes).0)
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

/// A connection to the database at `url` that only reads.
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
