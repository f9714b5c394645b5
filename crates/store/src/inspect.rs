//! Inspection: what `custody audit verify` runs. Reads a database
//! directly, without trusting it, and names every event that no longer
//! matches the tree or the signed checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use custody_domain::InvalidInput;
use custody_formats::checkpoint::{KeyChain, NoteVerifier};
use custody_formats::keys::PublicKey;
use custody_formats::merkle::{self, Frontier, Hash};
use futures_util::TryStreamExt as _;
use sqlx::{AnyConnection, Connection as _};

use crate::ledger::{connect_read_only, to_hash, StoredCheckpoint};
use crate::proof::{dialect_of, event_chunk, RawEvent, TaggedEvent, EVENT_CHUNK};
use crate::{col, Dialect, LedgerSecrets, Result, StoreError};

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
    /// A stored ledger-key handover that does not open, or that links no
    /// key of the chain the ledger key given reaches.
    ForgedHandover {
        /// The size it claims.
        size: u64,
        /// Why it is not followed.
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
            Finding::ForgedCheckpoint { size, .. } | Finding::ForgedHandover { size, .. } => *size as i64,
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
            Finding::ForgedHandover { size, why } => {
                format!("the ledger-key handover at size {size} is not genuine: {why}")
            }
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

/// The database server's clock, in milliseconds since the epoch, read over
/// a read-only connection; `None` for SQLite, whose clock is this host's.
/// Several servers on one database each compare theirs with it.
pub async fn database_clock_ms(url: &str) -> Result<Option<i64>> {
    let mut conn = connect_read_only(url).await?;
    let now = match dialect_of(&conn) {
        Dialect::Sqlite => None,
        Dialect::Postgres => Some(
            sqlx::query_scalar::<_, i64>("SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
                .fetch_one(&mut conn)
                .await?,
        ),
    };
    let _ = conn.close().await;
    Ok(now)
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

    // The ledger keys: the one given and those its handovers link to. Each
    // handover followed is one more checkpoint (signed by both its keys).
    let handovers = read_handovers_if_any(conn, dialect).await?;
    let notes: Vec<String> = handovers.iter().map(|h| h.note.clone()).collect();
    let (chain, rejected) = KeyChain::follow(verifier.clone(), &notes);
    for (i, why) in rejected {
        let size = handovers.get(i).map_or(0, |h| h.size);
        findings.push(Finding::ForgedHandover { size, why });
    }

    // Checkpoints: the newest genuine one is the reference; the stored tree
    // must give each checkpoint's head at its size.
    let mut checkpoints = read_checkpoints(conn).await?;
    for handover in handovers.iter().filter(|h| chain.handovers().any(|f| f.checkpoint.size == h.size)) {
        checkpoints.push((handover.size, handover.root, handover.note.clone(), handover.at_ms));
    }
    checkpoints.sort_by_key(|c| c.0);
    let reference = newest_genuine(&checkpoints, &chain, &mut findings);
    let (levels, heads) = recompute(&leaves, &checkpoints);
    if let Some(reference) = &reference {
        check_heads(reference, &checkpoints, &heads, tree_size, &chain, &mut findings);
    }
    check_nodes(conn, dialect, &levels, &mut findings).await?;
    drop(levels);

    let leaves = Arc::new(leaves);
    let (matched, present, suspects, events) = match_events(conn, leaves.clone()).await?;
    explain(&leaves, matched, &present, suspects, &mut findings);
    findings.sort_by_key(Finding::seq);
    Ok(LedgerReport { events, tree_size, checkpoint: reference, findings, tags_checked: secrets.is_some() })
}

/// A stored checkpoint: its size, root, signed note and time.
type CheckpointRow = (u64, Hash, String, i64);

/// Every stored checkpoint, smallest first.
async fn read_checkpoints(conn: &mut AnyConnection) -> Result<Vec<CheckpointRow>> {
    let mut checkpoints = Vec::new();
    let mut rows = sqlx::query("SELECT size, root, note, at FROM ledger_checkpoints ORDER BY size").fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        let size = col::<i64>(&row, "size")? as u64;
        checkpoints.push((size, to_hash(col(&row, "root")?, "a root")?, col(&row, "note")?, col(&row, "at")?));
    }
    Ok(checkpoints)
}

/// The stored ledger-key handovers; none in a database older than them.
async fn read_handovers_if_any(
    conn: &mut AnyConnection,
    dialect: Dialect,
) -> Result<Vec<crate::ledger::StoredHandover>> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT version FROM custody_migrations WHERE version = 14")
        .fetch_optional(&mut *conn)
        .await
        .ok()
        .flatten();
    if exists.is_none() {
        return Ok(Vec::new());
    }
    crate::ledger::read_handovers(conn, dialect, None).await
}

/// Whether a checkpoint row's signed note verifies and names the tree the
/// row names.
fn genuine(verifier: &KeyChain, size: u64, root: &Hash, note: &str) -> std::result::Result<(), String> {
    let opened = verifier.open(note).map_err(|e| e.to_string())?;
    if opened.size != size || &opened.root != root {
        return Err("its signed note names another tree than its row".into());
    }
    Ok(())
}

/// The newest checkpoint whose note verifies; each newer one that does not
/// is a forged checkpoint.
fn newest_genuine(
    checkpoints: &[CheckpointRow],
    verifier: &KeyChain,
    findings: &mut Vec<Finding>,
) -> Option<StoredCheckpoint> {
    for (size, root, note, at_ms) in checkpoints.iter().rev() {
        match genuine(verifier, *size, root, note) {
            Ok(()) => return Some(StoredCheckpoint { size: *size, root: *root, note: note.clone(), at_ms: *at_ms }),
            Err(why) => findings.push(Finding::ForgedCheckpoint { size: *size, why }),
        }
    }
    None
}

/// The tree recomputed over the stored leaves: every interior node, level
/// by level, and its head at every checkpoint's size.
fn recompute(leaves: &[Hash], checkpoints: &[CheckpointRow]) -> (Vec<Vec<Hash>>, BTreeMap<u64, Hash>) {
    let mut levels: Vec<Vec<Hash>> = Vec::new();
    let mut frontier = Frontier::default();
    let mut heads: BTreeMap<u64, Hash> = BTreeMap::new();
    let wanted: Vec<u64> = checkpoints.iter().map(|c| c.0).collect();
    let mut next_wanted = wanted.iter().peekable();
    while next_wanted.peek().is_some_and(|&&s| s == 0) {
        heads.insert(0, merkle::empty_root());
        next_wanted.next();
    }
    for leaf in leaves {
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
    (levels, heads)
}

/// The stored tree against the reference checkpoint: not shorter than it,
/// and giving each genuine checkpoint's head; the first it does not bounds
/// where the rewriting happened.
fn check_heads(
    reference: &StoredCheckpoint,
    checkpoints: &[CheckpointRow],
    heads: &BTreeMap<u64, Hash>,
    tree_size: u64,
    verifier: &KeyChain,
    findings: &mut Vec<Finding>,
) {
    if reference.size > tree_size {
        findings.push(Finding::TreeTruncated { tree_size, checkpoint_size: reference.size });
    }
    let mut good = 0u64;
    for (size, root, note, _) in checkpoints {
        if *size > reference.size.min(tree_size) {
            break;
        }
        if heads.get(size) == Some(root) {
            good = *size;
        } else if genuine(verifier, *size, root, note).is_ok() {
            findings.push(Finding::TreeRewritten { from_seq: good as i64 + 1, to_seq: *size as i64 });
            break;
        }
    }
}

/// Every stored interior node against the recomputed one.
async fn check_nodes(
    conn: &mut AnyConnection,
    dialect: Dialect,
    levels: &[Vec<Hash>],
    findings: &mut Vec<Finding>,
) -> Result<()> {
    for (level, computed) in levels.iter().enumerate() {
        let level = level as u8 + 1;
        let stored = read_level(conn, dialect, level).await?;
        if let Some(idx) = computed.iter().zip(&stored).position(|(c, s)| c != s) {
            findings.push(Finding::NodeAltered { level, idx: idx as u64 });
        } else if stored.len() < computed.len() {
            findings.push(Finding::NodeAltered { level, idx: stored.len() as u64 });
        }
    }
    Ok(())
}

/// What matching the events against the leaves found: which leaves an
/// event at its own place matched, which places hold an event at all, the
/// events that matched no leaf at their place, and how many events there
/// are.
type Matched = (Vec<bool>, Vec<bool>, Vec<TaggedEvent>, u64);

/// The events against the leaves: read here, hashed and matched on another
/// thread, so that reading and hashing overlap.
async fn match_events(conn: &mut AnyConnection, leaves: Arc<Vec<Hash>>) -> Result<Matched> {
    let (batches, mut received) = tokio::sync::mpsc::channel::<String>(4);
    let checker = tokio::task::spawn_blocking(move || {
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
    });
    let mut after = i64::MIN;
    while let Some((n, hi, events)) = event_chunk(conn, after, false).await? {
        after = hi;
        if batches.send(events).await.is_err() || n < EVENT_CHUNK {
            break;
        }
    }
    drop(batches);
    checker.await.map_err(|e| StoreError::Corrupt(format!("the event checker failed: {e}")))?
}

/// Each event that matched no leaf at its place: moved from a nearby place,
/// inserted, or standing for a modified one; and each leaf no event matched:
/// modified or deleted.
fn explain(
    leaves: &[Hash],
    mut matched: Vec<bool>,
    present: &[bool],
    suspects: Vec<TaggedEvent>,
    findings: &mut Vec<Finding>,
) {
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
