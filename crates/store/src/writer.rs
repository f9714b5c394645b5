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

use custody_formats::ledger_key::Anchor;
use custody_formats::merkle::Frontier;
use futures_util::future::BoxFuture;
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, ConnectOptions, Connection as _, Executor};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::proof::{LedgerState, TaggedEvent, Verified};
use crate::tx::Tx;
use crate::{Dialect, Result, StoreError};

/// The most operations committed together.
const MAX_GROUP: usize = 512;

type Erased = Box<dyn Any + Send>;
type Op = Box<dyn for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<Erased>> + Send>;

struct Job {
    op: Op,
    done: oneshot::Sender<Result<Erased>>,
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
    let mut tx = new_tx(dialect, conn, state, ledger);
    let mut answers = Answers { each: Vec::with_capacity(group.len()), transient: None };
    match write_group(&mut tx, group, state, ledger, &mut answers).await {
        Ok(tree) => {
            publish_commit(&mut tx, tree, jobs, state, ledger, answers);
            Some(tx.conn)
        }
        Err(error) => fail_group(tx, error, group, state, answers).await,
    }
}

/// What a group's operations answered, held until the group commits or fails.
struct Answers {
    /// Each operation's caller, with what the operation itself gave.
    each: Vec<(oneshot::Sender<Result<Erased>>, Result<Erased>)>,
    /// An operation that failed because the database would not take its
    /// writes (read-only, full, gone): the writer is not well, even when the
    /// group's empty remainder commits.
    transient: Option<String>,
}

/// Where the transaction stood before an operation, to roll a failed one back to.
struct Mark {
    next_seq: i64,
    jobs_queued: bool,
    undo: usize,
}

/// The group's transaction before BEGIN: nothing appended yet, at the head of the last commit.
fn new_tx(dialect: Dialect, conn: AnyConnection, state: &Arc<LedgerState>, ledger: &Frontier) -> Tx {
    Tx {
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
    }
}

/// Runs the whole group in one transaction and commits it; the proven tree after COMMIT.
async fn write_group(
    tx: &mut Tx,
    group: &mut Vec<Job>,
    state: &Arc<LedgerState>,
    ledger: &Frontier,
    answers: &mut Answers,
) -> Result<Frontier> {
    let (mut tree, last) = begin(tx, state, ledger).await?;
    run_operations(tx, group, last, answers).await?;
    commit_with_tree(tx, &mut tree).await?;
    Ok(tree)
}

/// Opens the transaction and proves what others appended; the tree so far and the last seq.
async fn begin(tx: &mut Tx, state: &Arc<LedgerState>, ledger: &Frontier) -> Result<(Frontier, i64)> {
    if let Some(why) = state.halted() {
        return Err(StoreError::Tampered(why));
    }
    tx.dialect.begin_write(&mut tx.conn).await?;
    let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_events").fetch_one(&mut tx.conn).await?;
    let last = last.unwrap_or(0);
    tx.next_seq = last + 1;
    let mut tree = ledger.clone();
    if tree.size() != last as u64 {
        prove_appended(tx, &mut tree, last).await?;
    }
    tx.head = (tree.size(), tree.root());
    Ok((tree, last))
}

/// Runs each operation of the group in a savepoint of its own, keeping its answer.
async fn run_operations(tx: &mut Tx, group: &mut Vec<Job>, last: i64, answers: &mut Answers) -> Result<()> {
    // Releasing one operation's savepoint and opening the next one's
    // share a round trip; COMMIT releases the last.
    let mut open = false;
    for job in group.drain(..) {
        let savepoint = if open { "RELEASE SAVEPOINT op; SAVEPOINT op" } else { "SAVEPOINT op" };
        tx.conn.execute(savepoint).await?;
        open = run_in_savepoint(tx, job, last, answers).await?;
    }
    Ok(())
}

/// Runs one operation in its open savepoint; whether the savepoint is still open (it succeeded).
async fn run_in_savepoint(tx: &mut Tx, job: Job, last: i64, answers: &mut Answers) -> Result<bool> {
    let mark = Mark { next_seq: tx.next_seq, jobs_queued: tx.jobs_queued, undo: tx.undo.len() };
    match run_sealed(tx, job.op).await {
        Ok(value) => {
            answers.each.push((job.done, Ok(value)));
            Ok(true)
        }
        Err(error) => {
            if error.is_transient() {
                answers.transient = Some(error.to_string());
            }
            roll_back_operation(tx, mark, last).await?;
            answers.each.push((job.done, Err(error)));
            Ok(false)
        }
    }
}

/// Runs one operation, then seals the subjects it wrote about.
async fn run_sealed(tx: &mut Tx, op: Op) -> Result<Erased> {
    let value = op(tx).await?;
    crate::seals::seal_touched(tx).await?;
    Ok(value)
}

/// Undoes a failed operation: its writes, its events and the jobs it queued, back to `mark`.
async fn roll_back_operation(tx: &mut Tx, mark: Mark, last: i64) -> Result<()> {
    tx.touched.clear();
    tx.conn.execute("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op").await?;
    tx.next_seq = mark.next_seq;
    tx.jobs_queued = mark.jobs_queued;
    tx.undo_to(mark.undo);
    tx.leaves.truncate((mark.next_seq - last - 1) as usize);
    Ok(())
}

/// Hashes the group's events into `tree`, stores the tree's new nodes, and commits.
async fn commit_with_tree(tx: &mut Tx, tree: &mut Frontier) -> Result<()> {
    let mut nodes = Vec::with_capacity(2 * tx.leaves.len());
    for leaf in tx.leaves.drain(..) {
        tree.push(leaf, |id, hash| nodes.push((id, hash)));
    }
    crate::ledger::insert_nodes(&mut tx.conn, tx.dialect, &nodes).await?;
    tx.conn.execute("COMMIT").await?;
    Ok(())
}

/// After COMMIT: the ledger takes the new tree, its head is anchored, and every caller is answered.
fn publish_commit(
    tx: &mut Tx,
    tree: Frontier,
    jobs: &Notify,
    state: &Arc<LedgerState>,
    ledger: &mut Frontier,
    answers: Answers,
) {
    let grew = tree.size() != ledger.size();
    *ledger = tree;
    state.committed(tx.newest.drain());
    *state.write_failure.lock().unwrap_or_else(|e| e.into_inner()) = answers.transient;
    if grew {
        anchor_head(state, ledger);
    }
    if tx.jobs_queued {
        jobs.notify_waiters();
    }
    for (done, answer) in answers.each {
        let _ = done.send(answer);
    }
}

/// Saves the ledger's new tree head outside the database.
fn anchor_head(state: &LedgerState, ledger: &Frontier) {
    let anchor = Anchor { size: ledger.size(), root: ledger.root(), legacy: state.legacy.max(0) as u64 };
    if let Err(error) = state.secrets.anchor.save(&anchor) {
        // The commit stands; an anchor behind the database only
        // weakens the check of a later restore, never blocks it.
        tracing::error!(%error, "could not anchor the ledger's new tree head");
    }
}

/// Rolls back a failed group and tells every caller; the connection when it is still usable.
async fn fail_group(
    mut tx: Tx,
    error: StoreError,
    group: &mut Vec<Job>,
    state: &LedgerState,
    answers: Answers,
) -> Option<AnyConnection> {
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
    for (done, answer) in answers.each {
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
