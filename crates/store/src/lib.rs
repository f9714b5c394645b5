//! custody's storage.
//!
//! One interface, [`Store`], over two real backends: SQLite (the embedded
//! default, one file in the data directory) and PostgreSQL (for scale-out).
//! Both run the same SQL except where a [`Dialect`] says otherwise, and each
//! has its own migrations, applied at start.
//!
//! Every state change goes through one writer per process, which commits the
//! changes that arrive together in one transaction ("group commit") and
//! writes each change's audit events in that same transaction. A change that
//! fails is rolled back to its own savepoint without disturbing the others.
//!
//! Each operation loads what the domain rules need inside its transaction,
//! asks the domain core for a decision, and writes only when it is allowed,
//! so a check and the change it guards cannot be separated by a race.
//!
//! This crate knows nothing about HTTP, the terminal or password hashing.

#![forbid(unsafe_code)]

mod applying;
mod audit;
mod backup;
mod bearer;
mod builds;
mod changes;
mod checks;
mod comments;
mod deployments;
mod dialect;
mod evidence;
pub mod fault;
mod findings;
mod grants;
mod groups;
mod inspect;
mod intents;
mod keys;
mod ledger;
mod lookups;
mod people;
mod projects;
mod proof;
mod queues;
mod seals;
mod secrets;
mod starts;
mod tx;
mod writer;

use std::sync::Arc;

use custody_domain::{Decision, InvalidInput};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Connection as _};

pub use audit::{AuditFilter, AuditPage};
pub use backup::{copy_sqlite, BackupFacts, RecordedHead, Snapshot, RESTORED_ACTION};
pub use builds::{BuildOutcome, LeasedBuild, NewArtifact, JOBS_CHANNEL, MAX_ATTEMPTS};
pub use changes::{Authors, GateRecords, MergePlan, Published};
pub use checks::{CheckOutcome, LeasedCheck};
pub use comments::NewComment;
/// The API's views, which the store builds straight from its rows.
pub use custody_api::{
    ArtifactView, AuthorReason, BuildView, ChangeView, CheckRunView, CommitView, CreatedUser, DecisionView,
    DeploymentView, FindingView, GrantView, GroupView, LogChunk, MemberView, MergeQueue, MovingMerge, NewToken, Page,
    ProjectMemberView, ProjectView, PushView, ReviewView, SecretView, TokenView, UserView, WaitingMerge,
};
pub use custody_domain::project::{Identity, PushedCommit};
pub use deployments::{
    ChangeDuty, DeployContext, DeployDecision, DeployOutcome, Duty, Heartbeat, LeasedDeployment, LiveDeployment,
    Standing,
};
pub use dialect::Dialect;

pub use inspect::{database_clock_ms, inspect, inspect_with_key, Finding, LedgerReport};
pub use intents::{recorded_mainlines, Mainline, MergeIntent, Settled};
pub use keys::{
    current_of as current_key_of, keys_valid_at, registered_workers, trusted_keys, KeyEvent, RecordedKey,
    RegisteredWorker, KEYS_SUBJECT,
};
pub use ledger::{StoredCheckpoint, StoredHandover};
pub use lookups::{Authenticated, ProjectAccess};
pub use people::{random_secret, Initialised};
pub use projects::PushDecided;
pub use proof::{LedgerSecrets, UNPROVEN_FACT};
pub use queues::{Queue, WorkSnapshot};
pub use secrets::{slot as secret_slot, SealedSecret};
pub use starts::StartChanges;
pub use tx::Tx;

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A rule refused it; the decision says which and what would satisfy it.
    #[error("refused: {0}")]
    Refused(Decision),
    /// Something named does not exist.
    #[error("{what} {name:?} does not exist")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// Its name or id.
        name: String,
    },
    /// It would duplicate something unique.
    #[error("{0}")]
    Conflict(String),
    /// A merge was not recorded: its target moved since its facts were
    /// gathered. Whoever merges gathers them again and decides again.
    #[error("the target branch moved while merging")]
    TargetMoved,
    /// A merge prepared outside the writer no longer matches the facts in
    /// its transaction (an approval came or went meanwhile): decide it
    /// again.
    #[error("the change's reviews or gate changed while merging")]
    FactsMoved,
    /// The input breaks a rule for names, e-mails or secrets.
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    /// The presented secret is unknown, revoked, expired or its owner disabled.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Stored data could not be read back.
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// The database holds facts custody did not write (or lost facts it
    /// did): rows written, edited or deleted around custody. Names each.
    #[error("the database was changed around custody: {0}")]
    Tampered(String),
    /// The database cannot be reached now; retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The writer has stopped (the process is shutting down).
    #[error("the store is shutting down")]
    Closed,
}

impl StoreError {
    /// Whether the failure is not the request's and may pass: the database
    /// unreachable, full, out of resources, busy, or a transaction lost to
    /// a concurrent one. Nothing was written; the same request may succeed
    /// later.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) | StoreError::Closed => true,
            StoreError::Database(error) => match error {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
                sqlx::Error::Database(db) => {
                    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                    // PostgreSQL: connection (08), a read-only database (a
                    // replica, maintenance: 25006), resources such as a full
                    // disk (53), operator intervention (57P), serialization
                    // and deadlock (40). SQLite: busy (5), locked (6), I/O
                    // (10), full (13), cannot open (14), and their extended
                    // codes (the low byte).
                    let sqlite = code.parse::<i64>().map(|c| c & 0xff);
                    ["08", "25006", "53", "57P", "40"].iter().any(|p| code.starts_with(p))
                        || matches!(sqlite, Ok(5 | 6 | 10 | 13 | 14))
                }
                _ => false,
            },
            _ => false,
        }
    }

    pub(crate) fn not_found(what: &'static str, name: impl ToString) -> Self {
        StoreError::NotFound { what, name: name.to_string() }
    }
}

/// A result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which page of a list to read: items after `after`, at most `limit`.
#[derive(Clone, Copy, Debug)]
pub struct PageRequest {
    /// Return items whose id is greater than this.
    pub after: Option<i64>,
    /// At most this many, between 1 and [`PageRequest::MAX`].
    pub limit: i64,
}

impl PageRequest {
    /// The largest page.
    pub const MAX: i64 = 500;
    /// The page size when none is asked for.
    pub const DEFAULT: i64 = 100;

    /// A page after `after` of at most `limit` items, clamped to sane bounds.
    pub fn new(after: Option<i64>, limit: Option<i64>) -> Self {
        PageRequest { after, limit: limit.unwrap_or(Self::DEFAULT).clamp(1, Self::MAX) }
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest::new(None, None)
    }
}

/// A page of `items` read for `request`: a full page says where the next
/// one starts, by the id of its last item.
pub(crate) fn page_of<T>(items: Vec<T>, request: PageRequest, id: impl Fn(&T) -> i64) -> Page<T> {
    let next_cursor = if items.len() as i64 == request.limit { items.last().map(id) } else { None };
    Page { items, next_cursor }
}

/// The store: a pool of readers and the handle of the single writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dialect: Dialect,
    readers: AnyPool,
    writer: writer::Handle,
    authors: Arc<changes::AuthorsCache>,
    ledger: Arc<proof::LedgerState>,
    /// Project accesses, by project, user and whether they read everything.
    accesses: AsOf<(String, i64, bool), lookups::ProjectAccess>,
}

/// Answers remembered with the audit log's newest sequence number they were
/// read at: every change custody records writes an event, so an answer is
/// good while that number has not moved.
pub(crate) struct AsOf<K, V> {
    entries: std::sync::Mutex<std::collections::HashMap<K, (i64, V)>>,
}

impl<K, V> Default for AsOf<K, V> {
    fn default() -> Self {
        AsOf { entries: Default::default() }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> AsOf<K, V> {
    /// How many answers are kept.
    const KEPT: usize = 4096;

    pub(crate) fn remembered(&self, key: &K, seq: i64) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(at, _)| *at == seq).map(|(_, value)| value.clone())
    }

    pub(crate) fn remember(&self, key: K, seq: i64, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= Self::KEPT {
            entries.clear();
        }
        entries.insert(key, (seq, value));
    }
}

impl Store {
    /// Opens the database at `url` (`sqlite://PATH` or `postgres://…`),
    /// creating a SQLite file when missing, applies migrations, verifies the
    /// whole audit log against `secrets` (every event's tag and chain, the
    /// tree against the anchor), and starts the writer. A database changed
    /// around custody is refused with [`StoreError::Tampered`], naming
    /// every row at fault. Must be called inside a Tokio runtime.
    pub async fn open(url: &str, secrets: LedgerSecrets) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(url).ok_or_else(|| {
            StoreError::Invalid(InvalidInput::new(
                "database URL",
                url,
                "expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE",
            ))
        })?;
        let url = dialect.normalise_url(url);
        let options: AnyConnectOptions = url.parse()?;
        let options = options.disable_statement_logging();

        let mut writer_conn = sqlx::AnyConnection::connect_with(&options).await?;
        dialect.prepare_writer(&mut writer_conn).await?;
        dialect.migrate(&mut writer_conn).await?;
        let verified = proof::verify_at_open(&mut writer_conn, dialect, secrets).await?;
        let (ledger, first_start) = (verified.state.clone(), verified.first_start);

        let readers = AnyPoolOptions::new()
            .max_connections(dialect.readers())
            .min_connections(1)
            .after_connect(move |conn, _| Box::pin(async move { dialect.prepare_reader(conn).await }))
            .connect_with(options.clone())
            .await?;
        let writer = writer::Handle::start(dialect, writer_conn, options, verified);
        let store = Store {
            inner: Arc::new(Inner {
                dialect,
                readers,
                writer,
                authors: Arc::default(),
                ledger,
                accesses: AsOf::default(),
            }),
        };
        if first_start {
            // Rows written before the instance had its event key are sealed
            // as they stand, once.
            store.write(|tx| Box::pin(seals::seal_all(tx))).await?;
        }
        if dialect == Dialect::Postgres {
            store.listen_for_jobs(url.to_string());
        }
        Ok(store)
    }

    /// Wakes this process's runners when another process queues jobs on the
    /// same PostgreSQL database.
    fn listen_for_jobs(&self, url: String) {
        let jobs = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let listener = async {
                    let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
                    listener.listen(JOBS_CHANNEL).await?;
                    loop {
                        listener.recv().await?;
                        let Some(inner) = jobs.upgrade() else { return Ok::<_, sqlx::Error>(()) };
                        inner.writer.jobs().notify_waiters();
                    }
                };
                match listener.await {
                    Ok(()) => return,
                    Err(error) => tracing::warn!(%error, "listening for queued jobs; retrying"),
                }
                if jobs.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Completes when a transaction that queued jobs commits (in this
    /// process, or on PostgreSQL in any process). Create it before looking
    /// for work, then await it, so that no wake-up is lost in between.
    pub fn jobs_queued(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.writer.jobs().notified()
    }

    /// The ledger as this process proved it.
    pub(crate) fn ledger(&self) -> &Arc<proof::LedgerState> {
        &self.inner.ledger
    }

    /// A reader's connection that knows the ledger, for proofs and seals.
    pub(crate) async fn reader(&self) -> Result<tx::Reader> {
        // Read before the connection's first query: what it reads is at
        // least this new.
        let bound = self.ledger().through();
        Ok(tx::Reader {
            conn: self.readers().acquire().await?,
            dialect: self.dialect(),
            ledger: self.ledger().clone(),
            bound,
        })
    }

    /// Checks a subject's seal on a reader's connection.
    pub(crate) async fn check_seal(&self, subject: &str) -> Result<()> {
        seals::check(&mut self.reader().await?, subject).await
    }

    pub(crate) fn authors_cache(&self) -> Arc<changes::AuthorsCache> {
        self.inner.authors.clone()
    }

    /// Which database this store is on.
    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    /// The pool for reads, which see every committed write.
    pub(crate) fn readers(&self) -> &AnyPool {
        &self.inner.readers
    }

    /// Rewrites `$N` placeholders for the backend.
    pub(crate) fn sql(&self, sql: &'static str) -> std::borrow::Cow<'static, str> {
        self.inner.dialect.sql(sql)
    }

    /// Runs `op` in the writer's transaction and returns its result once that
    /// transaction has committed. If `op` fails, none of its writes (and none
    /// of its audit events) remain.
    pub async fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t mut Tx) -> futures_util::future::BoxFuture<'t, Result<T>> + Send + 'static,
    {
        self.inner.writer.run(op).await
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.readers()).await?;
        Ok(())
    }

    /// The newest audit event's sequence number: every change custody
    /// records writes one, so an answer computed from the database at one
    /// value still holds while it has not moved.
    pub async fn newest_seq(&self) -> Result<i64> {
        let newest: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM audit_events").fetch_one(self.readers()).await?;
        Ok(newest.unwrap_or(0))
    }

    /// Whether the database takes writes: `Err` with the reason when the
    /// log was found changed around custody, or when the last write failed
    /// and a probe write (one row of its own) fails too.
    pub async fn writable(&self) -> std::result::Result<(), String> {
        if let Some(why) = self.ledger().halted() {
            return Err(format!("the database was changed around custody: {why}"));
        }
        let failing = self.ledger().write_failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if failing.is_none() {
            return Ok(());
        }
        let probe = self
            .write(|tx| {
                Box::pin(async move {
                    let sql = tx.sql(
                        "INSERT INTO write_probe (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    );
                    sqlx::query(&sql).bind(now_ms()).execute(tx.conn()).await?;
                    Ok(())
                })
            })
            .await;
        probe.map_err(|error| format!("writes fail: {error}"))
    }

    /// Waits for pending writes and closes every connection.
    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.readers.close().await;
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Goes on when the domain's decision allows; otherwise refuses with it.
pub(crate) fn allowed(decision: Decision) -> Result<()> {
    if decision.allowed {
        Ok(())
    } else {
        Err(StoreError::Refused(decision))
    }
}

/// Reads a column, mapping a decoding failure to [`StoreError::Corrupt`].
pub(crate) fn col<'r, T>(row: &'r sqlx::any::AnyRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::Row;
    row.try_get(name).map_err(|e| StoreError::Corrupt(format!("column {name}: {e}")))
}

/// A status column, read into its enum; another value is damaged data.
pub(crate) fn status_col<S>(row: &sqlx::any::AnyRow, name: &str, parse: fn(&str) -> Option<S>) -> Result<S> {
    let text: String = col(row, name)?;
    parse(&text).ok_or_else(|| StoreError::Corrupt(format!("column {name}: unknown value {text:?}")))
}

#[cfg(any(test, feature = "testing"))]
pub mod testing;
