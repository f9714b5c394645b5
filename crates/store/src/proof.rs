//! Facts custody can prove it wrote.
//!
//! Whoever can write the database but holds no key must not be able to make
//! a rule pass. Three things kept outside the database make that so:
//!
//! - every audit event carries a tag (HMAC under the event key) over its
//!   leaf hash and `prev`, the previous event about the same subject, so an
//!   event written, edited or moved around custody does not verify;
//! - the writer's tree head is anchored outside the database after every
//!   commit, so a database truncated, or restored from an older copy, no
//!   longer extends it;
//! - this process keeps the newest event of every subject in memory (built
//!   at start-up by verifying the whole log against the anchor, then kept by
//!   the writer), so a decision that reads a subject's events knows that the
//!   chain it read ends where custody last wrote, and that none is missing.
//!
//! A decision reads its facts from a subject's proven events
//! ([`proven_events`]) and checks the rows it also reads against them; a row
//! that no event proves fails the decision closed, naming the row.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use custody_formats::event::EventFields;
use custody_formats::ledger_key::{Anchor, AnchorFile, EventKey};
use custody_formats::merkle::{Frontier, Hash};
use sqlx::AnyConnection;

use crate::{col, Dialect, Result, StoreError};

/// The rule that refuses a decision whose facts custody cannot prove.
pub use custody_domain::rules::UNPROVEN_FACT;

/// What the store needs from outside the database to trust what it reads
/// back: the event key and the anchor's file.
#[derive(Clone, Debug)]
pub struct LedgerSecrets {
    /// Authenticates every event (and hashes bearer tokens).
    pub key: EventKey,
    /// Where the newest committed tree head is kept.
    pub anchor: AnchorFile,
}

impl LedgerSecrets {
    /// Secrets that live in a fresh temporary directory, for tests and
    /// benchmarks that make a database of their own.
    #[cfg(any(test, feature = "testing"))]
    pub fn ephemeral() -> (LedgerSecrets, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let secrets =
            LedgerSecrets { key: EventKey::generate(), anchor: AnchorFile::new(dir.path().join("ledger.anchor")) };
        (secrets, dir)
    }
}

/// The refusal of a decision that would rest on an unproven fact.
pub(crate) fn unproven(what: String) -> StoreError {
    StoreError::Refused(custody_domain::audit::decide_unproven(what))
}

/// The process's view of the ledger, shared by the writer and the readers.
pub(crate) struct LedgerState {
    pub(crate) secrets: LedgerSecrets,
    /// Events up to this sequence number carry no tag (written before
    /// events were authenticated).
    pub(crate) legacy: i64,
    /// The newest committed event of every subject.
    subjects: Mutex<HashMap<String, i64>>,
    /// Set when a check of the whole log while running found it changed
    /// around custody; the writer then refuses every write.
    halted: Mutex<Option<String>>,
    /// Why the last write transaction failed, until one commits again.
    pub(crate) write_failure: Mutex<Option<String>>,
    /// The newest sequence number committed as far as this process knows.
    through: std::sync::atomic::AtomicI64,
}

impl LedgerState {
    /// The newest committed event about `subject`, if any.
    pub(crate) fn newest(&self, subject: &str) -> Option<i64> {
        self.subjects.lock().unwrap_or_else(|e| e.into_inner()).get(subject).copied()
    }

    /// Every subject custody recorded an event about whose name starts
    /// with `prefix`.
    pub(crate) fn subjects_starting(&self, prefix: &str) -> Vec<String> {
        let subjects = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        subjects.keys().filter(|s| s.starts_with(prefix)).cloned().collect()
    }

    /// Why the writer must not write: the log was found changed around
    /// custody while it ran.
    pub(crate) fn halted(&self) -> Option<String> {
        self.halted.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the newest events of a committed group.
    pub(crate) fn committed(&self, newest: impl IntoIterator<Item = (String, i64)>) {
        let mut subjects = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        for (subject, seq) in newest {
            let slot = subjects.entry(subject).or_insert(seq);
            *slot = (*slot).max(seq);
            self.through.fetch_max(seq, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The newest sequence number committed as far as this process knows:
    /// read before a read starts, it bounds what that read can see.
    pub(crate) fn through(&self) -> i64 {
        self.through.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The newest committed event about `subject`, if it is no newer than
    /// `bound` (what a read that started then can see); `None` when it is
    /// (the subject changed while the read ran), so that a read racing a
    /// write is not taken for rows deleted or put back around custody. Only
    /// reads outside the writer take this view; every decision the writer
    /// takes checks against the newest event.
    pub(crate) fn newest_within(&self, subject: &str, bound: i64) -> Option<i64> {
        self.newest(subject).filter(|n| *n <= bound)
    }
}

/// An event as stored, with its tag (none when read for inspection without
/// the event key).
pub(crate) struct TaggedEvent {
    pub(crate) seq: i64,
    pub(crate) at: i64,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) subject: String,
    pub(crate) details: serde_json::Value,
    pub(crate) prev: Option<i64>,
    pub(crate) mac: Option<Vec<u8>>,
}

impl TaggedEvent {
    pub(crate) fn read(row: &sqlx::any::AnyRow) -> Result<TaggedEvent> {
        let details: String = col(row, "details")?;
        Ok(TaggedEvent {
            seq: col(row, "seq")?,
            at: col(row, "at")?,
            actor: col(row, "actor")?,
            action: col(row, "action")?,
            subject: col(row, "subject")?,
            details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
            prev: col(row, "prev")?,
            mac: col(row, "mac")?,
        })
    }

    /// Its leaf hash in the ledger.
    pub(crate) fn leaf(&self) -> Hash {
        self.leaf_at(self.seq)
    }

    /// The leaf its content would have at sequence number `seq` (where a
    /// moved event came from).
    pub(crate) fn leaf_at(&self, seq: i64) -> Hash {
        EventFields {
            seq,
            at_ms: self.at,
            actor: &self.actor,
            action: &self.action,
            subject: &self.subject,
            details: &self.details,
        }
        .leaf_hash()
    }

    /// Why custody cannot prove it, or `None` when it can: its tag must
    /// verify, and name `previous` (the subject's event before it) as its
    /// predecessor.
    pub(crate) fn unproven_after(&self, leaf: &Hash, previous: i64, key: &EventKey, legacy: i64) -> Option<String> {
        if let Some(why) = self.unproven(leaf, key, legacy) {
            return Some(why);
        }
        (self.mac.is_some() && self.prev != Some(previous)).then(|| {
            format!(
                "audit_events seq {}: the event before it about {} is not the one custody recorded there (an event \
                 about it was deleted or added around custody)",
                self.seq, self.subject
            )
        })
    }

    /// Why its tag does not prove it, or `None` when it does; `leaf` is its
    /// [`TaggedEvent::leaf`], computed once by the caller.
    pub(crate) fn unproven(&self, leaf: &Hash, key: &EventKey, legacy: i64) -> Option<String> {
        match (&self.mac, self.prev) {
            (Some(mac), Some(prev)) if key.verify_event(leaf, prev, mac) => None,
            (Some(_), _) => Some(format!(
                "audit_events seq {}: its tag does not verify, so custody did not write it as it stands (written, \
                 edited or moved around custody)",
                self.seq
            )),
            (None, _) if self.seq <= legacy => None,
            (None, _) => Some(format!(
                "audit_events seq {}: it carries no tag, so custody did not write it (inserted around custody)",
                self.seq
            )),
        }
    }
}

pub(crate) const EVENT_COLUMNS: &str = "seq, at, actor, action, subject, details, prev, mac";

/// A connection that facts are read from: the writer's transaction, or a
/// reader's connection when nothing is written.
pub(crate) trait Reads: Send {
    /// The connection.
    fn conn(&mut self) -> &mut AnyConnection;
    /// Which database this is.
    fn dialect(&self) -> Dialect;
    /// SQL with placeholders spelled for this database.
    fn sql(&self, sql: &'static str) -> std::borrow::Cow<'static, str> {
        self.dialect().sql(sql)
    }
    /// The ledger as this process proved it.
    fn ledger_state(&self) -> Arc<LedgerState>;
    /// The newest event about `subject` written but not yet committed here.
    fn pending(&self, _subject: &str) -> Option<i64> {
        None
    }
    /// Whether the running operation is changing `subject`'s sealed rows
    /// (they are sealed anew when it ends).
    /// The newest event about `subject` custody recorded, as this reader
    /// may rely on it: in the writer, the newest written (in its transaction
    /// or committed); in a reader, the newest committed before the read
    /// began (see [`LedgerState::newest_within`]).
    fn newest(&self, subject: &str) -> Option<i64> {
        self.pending(subject).or_else(|| self.ledger_state().newest(subject))
    }
    fn changing(&self, _subject: &str) -> bool {
        false
    }
}

/// Which database a connection is to.
pub(crate) fn dialect_of(conn: &AnyConnection) -> Dialect {
    if conn.backend_name().to_ascii_lowercase().starts_with("postgres") {
        Dialect::Postgres
    } else {
        Dialect::Sqlite
    }
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

/// Every event about `subject`, oldest first, proven: each tag verifies,
/// each names the one before it, and the chain reaches the newest event
/// custody recorded about it. Anything else fails closed, naming the row.
pub(crate) async fn proven_events(tx: &mut impl Reads, subject: &str) -> Result<Vec<TaggedEvent>> {
    proven_events_after(tx, subject, 0).await
}

/// The events about `subject` after `after`, an event about it that the
/// caller proved earlier (0 for none), each proven as by [`proven_events`].
pub(crate) async fn proven_events_after(tx: &mut impl Reads, subject: &str, after: i64) -> Result<Vec<TaggedEvent>> {
    let state = tx.ledger_state();
    let sql = tx
        .dialect()
        .sql_owned(format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE subject = $1 AND seq > $2 ORDER BY seq"));
    let rows = sqlx::query(&sql).bind(subject).bind(after).fetch_all(tx.conn()).await?;
    let events = rows.iter().map(TaggedEvent::read).collect::<Result<Vec<_>>>()?;
    // The newest event custody recorded: in this transaction, or committed.
    let newest = tx.newest(subject);
    let mut previous = after;
    let mut reached = newest.is_none_or(|n| n <= after);
    for event in &events {
        if let Some(why) = event.unproven_after(&event.leaf(), previous, &state.secrets.key, state.legacy) {
            return Err(unproven(why));
        }
        previous = event.seq;
        if Some(event.seq) == newest {
            reached = true;
        }
    }
    if !reached {
        return Err(unproven(match events.last() {
            Some(last) => format!(
                "audit_events after seq {} about {subject}: custody recorded event {} about it, which is missing \
                 (deleted around custody, or the database was restored from an older copy)",
                last.seq,
                newest.unwrap_or_default()
            ),
            None => format!(
                "audit_events about {subject}: custody recorded event {} about it, which is missing",
                newest.unwrap_or_default()
            ),
        }));
    }
    // Events newer than this process knows of were written by another
    // process sharing the database: their tags and chain proved them.
    Ok(events)
}

/// What verifying the whole log at start-up gave.
pub(crate) struct Verified {
    pub(crate) state: Arc<LedgerState>,
    pub(crate) frontier: Frontier,
    /// Whether this is the instance's first start with its event key.
    pub(crate) first_start: bool,
}

/// Something the start-up verification found, naming the table and row.
pub(crate) fn describe(findings: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut text = findings.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
    if findings.len() > SHOWN {
        text.push_str(&format!("; and {} more", findings.len() - SHOWN));
    }
    text
}

/// Reads every event, oldest first, a chunk at a time.
async fn for_each_event(conn: &mut AnyConnection, mut each: impl FnMut(TaggedEvent) -> Result<()>) -> Result<()> {
    let mut after = i64::MIN;
    while let Some((n, hi, events)) = event_chunk(conn, after, true).await? {
        for raw in RawEvent::from_json_array(&events)? {
            each(raw.parse())?;
        }
        after = hi;
        if n < EVENT_CHUNK {
            break;
        }
    }
    Ok(())
}

/// What a scan of the whole log found.
pub(crate) struct Scan {
    /// Every row at fault, named.
    pub(crate) findings: Vec<(i64, String)>,
    subjects: HashMap<String, i64>,
    pub(crate) frontier: Frontier,
    /// The tree's nodes, when the database has none yet (from before the ledger).
    new_nodes: Option<Vec<(custody_formats::merkle::NodeId, Hash)>>,
    legacy: i64,
}

/// Reads every event and checks it: its tag and chain, the tree its events
/// give against the anchor (a log that no longer extends it was truncated,
/// rewritten or restored from an older copy), and the stored tree's right
/// edge against that tree. Reads only.
pub(crate) async fn scan(
    conn: &mut AnyConnection,
    dialect: Dialect,
    key: &EventKey,
    anchor: Option<Anchor>,
    anchor_path: &std::path::Path,
) -> Result<Scan> {
    let mut findings: Vec<(i64, String)> = Vec::new();
    let mut subjects: HashMap<String, i64> = HashMap::new();
    let mut frontier = Frontier::default();
    let mut anchor_root: Option<Hash> = None;
    let mut tagged = 0u64;
    let legacy = anchor.map_or(i64::MAX, |a| a.legacy as i64);
    // A database from before the ledger has events but no tree yet: the
    // tree is built from them, once.
    let stored_size = crate::ledger::tree_size(conn).await?;
    let checkpoints: Option<i64> =
        sqlx::query_scalar("SELECT MAX(size) FROM ledger_checkpoints").fetch_one(&mut *conn).await?;
    let build_tree = stored_size == 0 && checkpoints.is_none();
    let mut new_nodes = Vec::new();
    let mut next = 1i64;
    for_each_event(conn, |event| {
        let expected = next;
        next = event.seq + 1;
        if event.seq > expected {
            findings.push((
                expected,
                format!(
                    "audit_events seq {expected}{}: missing (deleted around custody)",
                    if event.seq > expected + 1 { format!(" to {}", event.seq - 1) } else { String::new() }
                ),
            ));
        }
        if event.mac.is_some() {
            tagged += 1;
        }
        let leaf = event.leaf();
        let previous = subjects.get(&event.subject).copied().unwrap_or(0);
        if let Some(why) = event.unproven_after(&leaf, previous, key, legacy) {
            findings.push((event.seq, why));
        }
        subjects.insert(event.subject, event.seq);
        frontier.push(leaf, |id, hash| {
            if build_tree {
                new_nodes.push((id, hash));
            }
        });
        if anchor.is_some_and(|a| a.size == frontier.size()) {
            anchor_root = Some(frontier.root());
        }
        Ok(())
    })
    .await?;
    let size = frontier.size();
    let legacy = match anchor {
        Some(anchor) => {
            if size < anchor.size {
                findings.push((
                    size as i64 + 1,
                    format!(
                        "audit_events {} to {}: custody committed them and the log ends at {size} (the database was \
                         truncated or restored from an older copy)",
                        size + 1,
                        anchor.size
                    ),
                ));
            } else if anchor.size > 0 && anchor_root != Some(anchor.root) {
                findings.push((
                    1,
                    format!(
                        "audit_events 1 to {}: these are not the events custody committed (the log was rewritten, or \
                         the database restored from another copy)",
                        anchor.size
                    ),
                ));
            }
            anchor.legacy as i64
        }
        None if tagged > 0 => {
            findings.push((
                0,
                format!(
                    "{}: the anchor is missing, but the log holds authenticated events; restore it from the data \
                     directory's backup",
                    anchor_path.display()
                ),
            ));
            0
        }
        None => size as i64,
    };
    if findings.is_empty() && size > 0 && !build_tree {
        let ids = Frontier::node_ids(size);
        let stored = crate::ledger::fetch_nodes(conn, dialect, &ids).await?;
        if ids.iter().zip(frontier.nodes()).any(|(id, hash)| stored.get(id) != Some(hash)) {
            findings.push((
                size as i64,
                "ledger_nodes: the stored tree is not the tree of the stored events (nodes written around custody)"
                    .into(),
            ));
        }
    }
    findings.sort_by_key(|f| f.0);
    Ok(Scan { findings, subjects, frontier, new_nodes: build_tree.then_some(new_nodes), legacy })
}

/// Verifies the whole log before the writer starts ([`scan`]), makes the
/// anchor on an instance's first start (events written before then are
/// legacy), and builds the tree of a database from before the ledger.
/// Refuses to open, naming every event and row at fault.
pub(crate) async fn verify_at_open(
    conn: &mut AnyConnection,
    dialect: Dialect,
    secrets: LedgerSecrets,
) -> Result<Verified> {
    let anchor = secrets.anchor.load().map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let scan = scan(conn, dialect, &secrets.key, anchor, secrets.anchor.path()).await?;
    if !scan.findings.is_empty() {
        let findings: Vec<String> = scan.findings.into_iter().map(|f| f.1).collect();
        return Err(StoreError::Tampered(format!("{}; run `custody audit verify`", describe(&findings))));
    }
    let frontier = scan.frontier;
    if let Some(nodes) = scan.new_nodes.filter(|n| !n.is_empty()) {
        crate::ledger::insert_nodes(conn, dialect, &nodes).await?;
        tracing::info!(events = frontier.size(), "hashed earlier audit events into the ledger");
    }
    if anchor.is_none() {
        // An instance's first start with its event key: the secrets stored
        // before are keyed now, before the anchor says this was done.
        crate::bearer::rekey_secrets(conn, dialect, &secrets.key).await?;
        let made = Anchor { size: frontier.size(), root: frontier.root(), legacy: scan.legacy as u64 };
        secrets.anchor.save(&made).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    }
    let state = Arc::new(LedgerState {
        secrets,
        legacy: scan.legacy,
        subjects: Mutex::new(scan.subjects),
        halted: Mutex::new(None),
        write_failure: Mutex::new(None),
        through: Default::default(),
    });
    Ok(Verified { state, frontier, first_start: anchor.is_none() })
}

/// The text of a JSON field of an event's details.
pub(crate) fn detail<'e>(event: &'e TaggedEvent, field: &str) -> Option<&'e str> {
    event.details.get(field).and_then(serde_json::Value::as_str)
}

impl crate::Store {
    /// Checks the whole log again while custody runs, as at start-up: every
    /// event's tag and chain, and that the log still extends the anchored
    /// tree head. When something was changed around custody, the writer
    /// stops writing (every write then fails as [`StoreError::Tampered`],
    /// naming the rows) until an operator looks and restarts it.
    pub async fn check_ledger(&self) -> Result<()> {
        let state = self.ledger().clone();
        let anchor = state.secrets.anchor.load().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut conn = self.readers().acquire().await?;
        let found = scan(&mut conn, self.dialect(), &state.secrets.key, anchor, state.secrets.anchor.path()).await?;
        if found.findings.is_empty() {
            return Ok(());
        }
        let findings: Vec<String> = found.findings.into_iter().map(|f| f.1).collect();
        let what = format!("{}; run `custody audit verify`", describe(&findings));
        tracing::error!(%what, "the audit log was changed around custody; the writer stops");
        *state.halted.lock().unwrap_or_else(|e| e.into_inner()) = Some(what.clone());
        Err(StoreError::Tampered(what))
    }

    /// Runs [`Store::check_ledger`] every `every` until `stop` completes.
    pub async fn run_ledger_checks(
        &self,
        every: std::time::Duration,
        stop: impl std::future::Future<Output = ()> + Send,
    ) {
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => {
                    if let Err(error) = self.check_ledger().await {
                        tracing::warn!(%error, "checking the audit log");
                    }
                }
            }
        }
    }
}
