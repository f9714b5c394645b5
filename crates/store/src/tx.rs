//! The writer's open transaction, which every change runs in, and the
//! readers' connections: both are what facts are read from ([`Reads`]).

use std::collections::HashMap;
use std::sync::Arc;

use custody_domain::audit::NewEvent;
use custody_formats::event::EventFields;
use custody_formats::merkle::Hash;
use sqlx::{AnyConnection, Executor};

use crate::proof::LedgerState;
pub(crate) use crate::proof::Reads;
use crate::{Dialect, Result, StoreError};

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
    pub(crate) conn: AnyConnection,
    pub(crate) dialect: Dialect,
    pub(crate) next_seq: i64,
    pub(crate) jobs_queued: bool,
    /// Leaf hashes of the events appended in this transaction, in order.
    pub(crate) leaves: Vec<Hash>,
    pub(crate) ledger: Arc<LedgerState>,
    /// The newest event of each subject appended in this transaction.
    pub(crate) newest: HashMap<String, i64>,
    /// What `newest` held before each append, to undo a failed operation's.
    pub(crate) undo: Vec<(String, Option<i64>)>,
    /// The proven tree as this transaction began: its size and head.
    pub(crate) head: (u64, Hash),
    /// Subjects the running operation wrote about, to seal when it ends.
    pub(crate) touched: std::collections::BTreeSet<String>,
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
    pub(crate) fn undo_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            let (subject, before) = self.undo.pop().expect("longer than the mark");
            match before {
                Some(seq) => self.newest.insert(subject, seq),
                None => self.newest.remove(&subject),
            };
        }
    }
}
