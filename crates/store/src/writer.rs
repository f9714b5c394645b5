//! The single writer: group commit with one savepoint per operation.
//!
//! Operations queue on a channel. The writer takes every operation waiting,
//! opens one transaction, runs each inside its own savepoint, commits once,
//! and only then answers each caller. One fsync thus covers a whole group,
//! while each operation's writes and audit events still stand or fall
//! together.

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use custody_domain::audit::NewEvent;
use custody_formats::event::EventFields;
use custody_formats::ledger_key::Anchor;
use custody_formats::merkle::{Frontier, Hash};
use futures_util::future::BoxFuture;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Connection as _, Executor};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::proof::{LedgerState, TaggedEvent, Verified};
use crate::{Dialect, Result, StoreError};

/// The most operations committed together.
const MAX_GROUP: usize = 512;

type Erased = Box<dyn Any + Send>;
type Op = Box<dyn for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<Erased>> + Send>;

struct Job {
    op: Op,
    done: oneshot::Sender<Result<Erased>>,
}

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

impl Reads for Tx {
    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn ledger_state(&self) -> Arc<LedgerState> {
        self.ledger.clone()
    }

    fn pending(&self, subject: &str) -> Option<i64> {
        self.pending_newest(subject)
    }

    fn changing(&self, subject: &str) -> bool {
        self.touched.contains(subject)
    }
}

/// A reader's pooled connection, for reads that need the same facts as a
/// write without waiting for the writer.
pub(crate) struct Reader {
    pub(crate) conn: sqlx::pool::PoolConnection<sqlx::Any>,
    pub(crate) dialect: Dialect,
    pub(crate) ledger: Arc<LedgerState>,
    /// The newest sequence number committed before this reader's first read.
    pub(crate) bound: i64,
}

impl Reader {
    /// Starts a read-only transaction, so that every read after it sees the
    /// same snapshot of the database.
    pub(crate) async fn begin_snapshot(&mut self) -> Result<()> {
        let begin = match self.dialect {
            Dialect::Sqlite => "BEGIN",
            Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        };
        self.conn.execute(begin).await?;
        Ok(())
    }

    /// Ends the snapshot; a connection that cannot end it is closed rather
    /// than handed back to the pool inside a transaction.
    pub(crate) async fn end_snapshot(mut self) {
        if self.conn.execute("ROLLBACK").await.is_err() {
            let _ = self.conn.close().await;
        }
    }
}

impl Reads for Reader {
    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn ledger_state(&self) -> Arc<LedgerState> {
        self.ledger.clone()
    }

    fn newest(&self, subject: &str) -> Option<i64> {
        self.ledger.newest_within(subject, self.bound)
    }
}

/// The writer's open transaction, handed to each operation in turn.
pub struct Tx {
    conn: AnyConnection,
    dialect: Dialect,
    next_seq: i64,
    jobs_queued: bool,
    /// Leaf hashes of the events appended in this transaction, in order.
    leaves: Vec<Hash>,
    ledger: Arc<LedgerState>,
    /// The newest event of each subject appended in this transaction.
    newest: HashMap<String, i64>,
    /// What `newest` held before each append, to undo a failed operation's.
    undo: Vec<(String, Option<i64>)>,
    /// The proven tree as this transaction began: its size and head.
    head: (u64, Hash),
    /// Subjects the running operation wrote about, to seal when it ends.
    touched: std::collections::BTreeSet<String>,
}

impl Tx {
    /// The connection, inside the transaction.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }

    /// SQL with placeholders spelled for this database.
    pub fn sql(&self, sql: &'static str) -> std::borrow::Cow<'static, str> {
        self.dialect.sql(sql)
    }

    /// Which database this is.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Says that this operation queued work for the runners: they are woken
    /// once the transaction has committed.
    pub(crate) fn jobs_queued(&mut self) {
        self.jobs_queued = true;
    }

    /// The newest event about `subject` appended in this transaction.
    pub(crate) fn pending_newest(&self, subject: &str) -> Option<i64> {
        self.newest.get(subject).copied()
    }

    /// The proven tree as this transaction began: its size and head.
    pub(crate) fn proven_head(&self) -> (u64, Hash) {
        self.head
    }

    /// Appends an audit event in this transaction and returns its sequence
    /// number. It commits with the change it records, or not at all, and so
    /// does its leaf in the ledger's Merkle tree. The event is tagged under
    /// the event key and chained to the previous event about its subject.
    pub async fn audit(&mut self, event: NewEvent) -> Result<i64> {
        let seq = self.next_seq;
        let at = crate::now_ms();
        let details = serde_json::to_string(&event.details).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let leaf = EventFields {
            seq,
            at_ms: at,
            actor: &event.actor,
            action: &event.action,
            subject: &event.subject,
            details: &event.details,
        }
        .leaf_hash();
        let prev = self.pending_newest(&event.subject).or_else(|| self.ledger.newest(&event.subject)).unwrap_or(0);
        let mac = self.ledger.secrets.key.event_mac(&leaf, prev);
        let sql = self.sql(
            "INSERT INTO audit_events (seq, at, actor, action, subject, details, prev, mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        );
        sqlx::query(&sql)
            .bind(seq)
            .bind(at)
            .bind(event.actor)
            .bind(event.action)
            .bind(&event.subject)
            .bind(details)
            .bind(prev)
            .bind(mac.to_vec())
            .execute(&mut self.conn)
            .await?;
        self.next_seq += 1;
        self.leaves.push(leaf);
        self.touched.insert(event.subject.clone());
        let before = self.newest.insert(event.subject.clone(), seq);
        self.undo.push((event.subject, before));
        Ok(seq)
    }

    /// Says that the running operation changed `subject`'s sealed rows
    /// without writing an event about it (a pending user's creation): its
    /// seal is renewed when the operation ends.
    pub(crate) fn touch(&mut self, subject: &str) {
        self.touched.insert(subject.to_owned());
    }

    /// The subjects to seal, leaving none.
    pub(crate) fn take_touched(&mut self) -> std::collections::BTreeSet<String> {
        std::mem::take(&mut self.touched)
    }

    /// Forgets the subjects' newest events appended after `mark` undo steps.
    fn undo_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            let (subject, before) = self.undo.pop().expect("longer than the mark");
            match before {
                Some(seq) => self.newest.insert(subject, seq),
                None => self.newest.remove(&subject),
            };
        }
    }
}

pub(crate) struct Handle {
    jobs: Arc<Notify>,
    sender: tokio::sync::Mutex<Option<mpsc::Sender<Job>>>,
    stopped: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Handle {
    pub(crate) fn start(
        dialect: Dialect,
        conn: AnyConnection,
        options: AnyConnectOptions,
        verified: Verified,
    ) -> Handle {
        let (sender, receiver) = mpsc::channel(4 * MAX_GROUP);
        let jobs = Arc::new(Notify::new());
        let task = tokio::spawn(run(dialect, conn, options, receiver, jobs.clone(), verified));
        Handle { jobs, sender: tokio::sync::Mutex::new(Some(sender)), stopped: tokio::sync::Mutex::new(Some(task)) }
    }

    pub(crate) async fn run<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T>> + Send + 'static,
    {
        let op: Op = Box::new(move |tx: &mut Tx| {
            let fut = op(tx);
            Box::pin(async move { fut.await.map(|value| Box::new(value) as Erased) })
        });
        let (done, answer) = oneshot::channel();
        let sender = self.sender.lock().await.clone().ok_or(StoreError::Closed)?;
        sender.send(Job { op, done }).await.map_err(|_| StoreError::Closed)?;
        let value = answer.await.map_err(|_| StoreError::Closed)??;
        Ok(*value.downcast::<T>().expect("the writer returns what the operation made"))
    }

    /// Notified whenever a committed transaction queued jobs.
    pub(crate) fn jobs(&self) -> &Arc<Notify> {
        &self.jobs
    }

    pub(crate) async fn close(&self) {
        self.sender.lock().await.take();
        if let Some(task) = self.stopped.lock().await.take() {
            let _ = task.await;
        }
    }
}

async fn run(
    dialect: Dialect,
    conn: AnyConnection,
    options: AnyConnectOptions,
    mut receiver: mpsc::Receiver<Job>,
    jobs: Arc<Notify>,
    verified: Verified,
) {
    let mut conn = Some(conn);
    let state = verified.state;
    // The proven tree's right edge as of the last commit, kept between
    // groups: verified at start-up, then extended only by events this
    // writer appended or proved.
    let mut ledger = verified.frontier;
    let mut group = Vec::with_capacity(MAX_GROUP);
    while receiver.recv_many(&mut group, MAX_GROUP).await > 0 {
        let connection = match conn.take() {
            Some(c) => Ok(c),
            None => reconnect(dialect, &options).await,
        };
        match connection {
            Ok(c) => conn = commit_group(dialect, c, &mut group, &jobs, &state, &mut ledger).await,
            Err(error) => {
                let message = error.to_string();
                *state.write_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
                for job in group.drain(..) {
                    let _ = job.done.send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }
    if let Some(conn) = conn {
        let _ = conn.close().await;
    }
}

async fn reconnect(dialect: Dialect, options: &AnyConnectOptions) -> Result<AnyConnection> {
    let mut conn = options.connect().await?;
    dialect.prepare_writer(&mut conn).await?;
    Ok(conn)
}

/// Commits one group; returns the connection when it is still usable.
///
/// The group's audit events are hashed into the ledger's Merkle tree before
/// COMMIT, so the tree always covers exactly the committed events. `ledger`
/// is the proven tree's right edge after the last commit; events another
/// process appended since are proved (tag, chain, and the stored tree) and
/// hashed in before anything is written; after COMMIT the new head is
/// anchored outside the database before any caller is answered.
async fn commit_group(
    dialect: Dialect,
    conn: AnyConnection,
    group: &mut Vec<Job>,
    jobs: &Notify,
    state: &Arc<LedgerState>,
    ledger: &mut Frontier,
) -> Option<AnyConnection> {
    let mut tx = Tx {
        conn,
        dialect,
        next_seq: 0,
        jobs_queued: false,
        leaves: Vec::new(),
        ledger: state.clone(),
        newest: HashMap::new(),
        undo: Vec::new(),
        head: (ledger.size(), ledger.root()),
        touched: Default::default(),
    };
    let mut frontier: Option<Frontier> = None;
    // An operation that failed because the database would not take its
    // writes (read-only, full, gone): the writer is not well, even when the
    // group's empty remainder commits.
    let mut transient: Option<String> = None;
    let mut answers: Vec<(oneshot::Sender<Result<Erased>>, Result<Erased>)> = Vec::with_capacity(group.len());

    let outcome: Result<()> = async {
        if let Some(why) = state.halted() {
            return Err(StoreError::Tampered(why));
        }
        dialect.begin_write(&mut tx.conn).await?;
        let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_events").fetch_one(&mut tx.conn).await?;
        let last = last.unwrap_or(0);
        tx.next_seq = last + 1;
        let mut tree = ledger.clone();
        if tree.size() != last as u64 {
            prove_appended(&mut tx, &mut tree, last).await?;
        }
        tx.head = (tree.size(), tree.root());
        // Releasing one operation's savepoint and opening the next one's
        // share a round trip; COMMIT releases the last.
        let mut open = false;
        for job in group.drain(..) {
            let savepoint = if open { "RELEASE SAVEPOINT op; SAVEPOINT op" } else { "SAVEPOINT op" };
            tx.conn.execute(savepoint).await?;
            open = true;
            let (seq_before, queued_before, undo_before) = (tx.next_seq, tx.jobs_queued, tx.undo.len());
            let outcome = match (job.op)(&mut tx).await {
                Ok(value) => crate::seals::seal_touched(&mut tx).await.map(|()| value),
                Err(error) => Err(error),
            };
            match outcome {
                Ok(value) => answers.push((job.done, Ok(value))),
                Err(error) => {
                    if error.is_transient() {
                        transient = Some(error.to_string());
                    }
                    tx.touched.clear();
                    tx.conn.execute("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op").await?;
                    open = false;
                    tx.next_seq = seq_before;
                    tx.jobs_queued = queued_before;
                    tx.undo_to(undo_before);
                    tx.leaves.truncate((seq_before - last - 1) as usize);
                    answers.push((job.done, Err(error)));
                }
            }
        }
        let mut nodes = Vec::with_capacity(2 * tx.leaves.len());
        for leaf in tx.leaves.drain(..) {
            tree.push(leaf, |id, hash| nodes.push((id, hash)));
        }
        crate::ledger::insert_nodes(&mut tx.conn, dialect, &nodes).await?;
        tx.conn.execute("COMMIT").await?;
        frontier = Some(tree);
        Ok(())
    }
    .await;

    match outcome {
        Ok(()) => {
            let tree = frontier.expect("a committed group has its tree");
            let grew = tree.size() != ledger.size();
            *ledger = tree;
            state.committed(tx.newest.drain());
            *state.write_failure.lock().unwrap_or_else(|e| e.into_inner()) = transient;
            if grew {
                let anchor = Anchor { size: ledger.size(), root: ledger.root(), legacy: state.legacy.max(0) as u64 };
                if let Err(error) = state.secrets.anchor.save(&anchor) {
                    // The commit stands; an anchor behind the database only
                    // weakens the check of a later restore, never blocks it.
                    tracing::error!(%error, "could not anchor the ledger's new tree head");
                }
            }
            if tx.jobs_queued {
                jobs.notify_waiters();
            }
            for (done, answer) in answers {
                let _ = done.send(answer);
            }
            Some(tx.conn)
        }
        Err(error) => {
            tracing::error!(%error, "write transaction failed; rolling back the whole group");
            let usable = tx.conn.execute("ROLLBACK").await.is_ok() && !matches!(error, StoreError::Tampered(_));
            let tampered = matches!(error, StoreError::Tampered(_));
            let message = match &error {
                StoreError::Tampered(what) => what.clone(),
                other => other.to_string(),
            };
            *state.write_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
            let failed = || match tampered {
                true => StoreError::Tampered(message.clone()),
                false => StoreError::Unavailable(format!("write transaction failed: {message}")),
            };
            for (done, answer) in answers {
                // Operations that failed on their own keep their own error.
                let _ = done.send(match answer {
                    Ok(_) => Err(failed()),
                    Err(own) => Err(own),
                });
            }
            for job in group.drain(..) {
                let _ = job.done.send(Err(failed()));
            }
            usable.then_some(tx.conn)
        }
    }
}

/// Proves the events appended since this writer's last commit (by another
/// process sharing the database) and hashes them into `tree`: each must be
/// tagged, chained to the subject's previous event, and the stored tree must
/// be the one they give. Anything else was written around custody, and the
/// writer stops rather than vouch for it.
async fn prove_appended(tx: &mut Tx, tree: &mut Frontier, last: i64) -> Result<()> {
    let size = tree.size() as i64;
    if last < size {
        return Err(StoreError::Tampered(format!(
            "audit_events {} to {size}: custody committed them and they are gone (deleted around custody, or the \
             database was restored from an older copy); run `custody audit verify`",
            last + 1
        )));
    }
    let sql = tx.sql(
        "SELECT seq, at, actor, action, subject, details, prev, mac FROM audit_events WHERE seq > $1 ORDER BY seq",
    );
    let rows = sqlx::query(&sql).bind(size).fetch_all(&mut tx.conn).await?;
    let mut newest: HashMap<String, i64> = HashMap::new();
    for row in &rows {
        let event = TaggedEvent::read(row)?;
        if event.seq != tree.size() as i64 + 1 {
            return Err(StoreError::Tampered(format!("audit_events seq {}: missing", tree.size() + 1)));
        }
        let leaf = event.leaf();
        let previous = newest.get(&event.subject).copied().or_else(|| tx.ledger.newest(&event.subject)).unwrap_or(0);
        if let Some(why) = event.unproven_after(&leaf, previous, &tx.ledger.secrets.key, tx.ledger.legacy) {
            return Err(StoreError::Tampered(format!(
                "{why}; the writer stops until an operator runs `custody audit verify`"
            )));
        }
        newest.insert(event.subject, event.seq);
        tree.push(leaf, |_, _| {});
    }
    let ids = Frontier::node_ids(tree.size());
    let stored = crate::ledger::fetch_nodes(&mut tx.conn, tx.dialect, &ids).await?;
    if ids.iter().zip(tree.nodes()).any(|(id, hash)| stored.get(id) != Some(hash)) {
        return Err(StoreError::Tampered(
            "ledger_nodes: the stored tree is not the tree of the stored events (written around custody); run \
             `custody audit verify`"
                .into(),
        ));
    }
    tx.ledger.committed(newest);
    Ok(())
}
