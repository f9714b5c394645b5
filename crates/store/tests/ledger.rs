//! The audit ledger on both backends: the tree the writer keeps, signed
//! checkpoints, proofs checked by an independent implementation (the
//! `tlog_tiles` crate, a port of Go's `sumdb/tlog`), and tampering with the
//! real tables found and named by [`custody_store::inspect`].

#[macro_use]
mod support;

use std::sync::Arc;

use custody_domain::audit::NewEvent;
use custody_formats::checkpoint::NoteVerifier;
use custody_formats::event::EventFields;
use custody_formats::keys::{KeyRole, ServiceKey};
use custody_formats::merkle::{self, Hash};
use custody_store::testing::{drop_append_only_triggers, execute_raw, TestDatabase};
use custody_store::{inspect, AuditFilter, Dialect, Finding, PageRequest, Store, StoreError};

const ORIGIN: &str = "custody.test";

async fn run<F, Fut>(dialect: Dialect, scenario: F)
where
    F: FnOnce(Store, String, Dialect) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(db) = TestDatabase::new(dialect).await else { return };
    let store = Store::open(&db.url, custody_store::testing::secrets_for(&db.url))
        .await
        .expect("the store opens on a fresh database");
    scenario(store.clone(), db.url.clone(), dialect).await;
    store.close().await;
    drop(db);
}

fn event(i: usize) -> NewEvent {
    NewEvent {
        actor: format!("user{}", i % 5),
        action: "test.append".into(),
        subject: format!("thing:{i}"),
        details: serde_json::json!({ "i": i, "nested": { "b": [1, 2], "a": "é" } }),
    }
}

/// Appends `n` events from concurrent writers, so they commit in groups.
async fn append(store: &Store, n: usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.write(move |tx| Box::pin(async move { tx.audit(event(i)).await })).await
        }));
    }
    for task in tasks {
        task.await.unwrap().expect("the append commits");
    }
}

/// The leaf hashes recomputed from the events as the API reads them.
async fn leaves_from_events(store: &Store) -> Vec<Hash> {
    let mut leaves = Vec::new();
    let mut after = None;
    loop {
        let page = store.audit_events(&AuditFilter::default(), PageRequest::new(after, Some(500))).await.unwrap();
        for e in &page.items {
            assert_eq!(e.seq as usize, leaves.len() + 1);
            let fields = EventFields {
                seq: e.seq,
                at_ms: e.at_ms,
                actor: &e.actor,
                action: &e.action,
                subject: &e.subject,
                details: &e.details,
            };
            leaves.push(fields.leaf_hash());
        }
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => return leaves,
        }
    }
}

fn tlog(hash: &Hash) -> tlog_tiles::Hash {
    tlog_tiles::Hash(*hash)
}

async fn the_tree_covers_every_committed_event_and_its_proofs_verify_independently(
    store: Store,
    _: String,
    _: Dialect,
) {
    append(&store, 57).await;
    assert_eq!(store.ledger_size().await.unwrap(), 57);
    let leaves = leaves_from_events(&store).await;
    for size in [1u64, 20, 32, 57] {
        assert_eq!(store.ledger_root(size).await.unwrap(), merkle::root(&leaves[..size as usize]), "head of {size}");
    }
    let head = merkle::root(&leaves);
    let seqs: Vec<i64> = (1..=57).collect();
    let proofs = store.inclusion_proofs(&seqs, 57).await.unwrap();
    for (seq, (leaf, proof)) in seqs.iter().zip(&proofs) {
        assert_eq!(leaf, &leaves[*seq as usize - 1], "the stored leaf of event {seq} is its recomputed hash");
        let proof: Vec<_> = proof.iter().map(tlog).collect();
        tlog_tiles::check_record(&proof, 57, tlog(&head), *seq as u64 - 1, tlog(leaf))
            .unwrap_or_else(|e| panic!("the inclusion proof of event {seq} does not verify: {e:?}"));
    }
    append(&store, 30).await;
    let leaves = leaves_from_events(&store).await;
    for old in [1u64, 13, 32, 57, 86] {
        let proof: Vec<_> = store.consistency_proof(old, 87).await.unwrap().iter().map(tlog).collect();
        let (old_head, new_head) = (merkle::root(&leaves[..old as usize]), merkle::root(&leaves));
        tlog_tiles::check_tree(&proof, 87, tlog(&new_head), old, tlog(&old_head))
            .unwrap_or_else(|e| panic!("the consistency proof {old} → 87 does not verify: {e:?}"));
    }
    assert!(matches!(store.inclusion_proofs(&[88], 87).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.consistency_proof(10, 88).await, Err(StoreError::Invalid(_))));
}

async fn a_failed_operation_leaves_no_leaf_behind(store: Store, _: String, _: Dialect) {
    append(&store, 3).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(move |tx| {
                    Box::pin(async move {
                        let seq = tx.audit(event(100 + i)).await?;
                        if i % 4 == 0 {
                            return Err(StoreError::Conflict("this one fails".into()));
                        }
                        Ok(seq)
                    })
                })
                .await
        }));
    }
    for task in tasks {
        let _ = task.await.unwrap();
    }
    assert_eq!(store.ledger_size().await.unwrap(), 33);
    let leaves = leaves_from_events(&store).await;
    assert_eq!(leaves.len(), 33);
    assert_eq!(store.ledger_root(33).await.unwrap(), merkle::root(&leaves));
}

async fn a_checkpoint_is_signed_when_the_tree_grew_and_only_then(store: Store, _: String, _: Dialect) {
    let key = Arc::new(ServiceKey::generate(KeyRole::Ledger));
    let verifier = NoteVerifier::new(ORIGIN, &key.public()).unwrap();
    assert_eq!(store.issue_checkpoint(ORIGIN, key.clone()).await.unwrap(), None, "nothing to sign in an empty log");
    append(&store, 10).await;
    let first = store.issue_checkpoint(ORIGIN, key.clone()).await.unwrap().expect("the tree grew");
    assert_eq!(first.size, 10);
    let opened = verifier.open(&first.note).unwrap();
    assert_eq!((opened.size, opened.root), (10, store.ledger_root(10).await.unwrap()));
    assert_eq!(store.issue_checkpoint(ORIGIN, key.clone()).await.unwrap(), None, "the tree did not grow");
    append(&store, 5).await;
    let second = store.issue_checkpoint(ORIGIN, key.clone()).await.unwrap().expect("the tree grew");
    assert_eq!(second.size, 15);
    assert_eq!(store.latest_checkpoint().await.unwrap(), Some(second.clone()));
    assert_eq!(store.checkpoint_of_size(10).await.unwrap(), Some(first.clone()));

    // The checkpointer task signs on its own, and a last time when stopped.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let store = store.clone();
        let key = key.clone_key();
        tokio::spawn(async move {
            store
                .run_checkpointer(ORIGIN.into(), key, std::time::Duration::from_millis(50), async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    append(&store, 4).await;
    let _ = stop.send(());
    runner.await.unwrap();
    let last = store.latest_checkpoint().await.unwrap().unwrap();
    assert_eq!(last.size, 19);
    verifier.open(&last.note).unwrap();
}

/// Helpers for the tamper scenarios: a log of 20 events, checkpointed.
async fn checkpointed_log(store: &Store) -> (Arc<ServiceKey>, NoteVerifier) {
    let key = Arc::new(ServiceKey::generate(KeyRole::Ledger));
    append(store, 20).await;
    store.issue_checkpoint(ORIGIN, key.clone()).await.unwrap().expect("a checkpoint of 20 events");
    let verifier = NoteVerifier::new(ORIGIN, &key.public()).unwrap();
    (key, verifier)
}

async fn an_intact_log_inspects_clean(store: Store, url: String, _: Dialect) {
    let (_, verifier) = checkpointed_log(&store).await;
    let report = inspect(&url, &verifier, None).await.unwrap();
    assert!(report.intact(), "{:?}", report.findings);
    assert_eq!((report.events, report.tree_size, report.checkpoint.map(|c| c.size)), (20, 20, Some(20)));
}

async fn edited_deleted_swapped_and_inserted_events_are_each_named(store: Store, url: String, dialect: Dialect) {
    let (_, verifier) = checkpointed_log(&store).await;
    execute_raw(&url, drop_append_only_triggers(dialect)).await;
    execute_raw(&url, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 4").await;
    execute_raw(&url, "DELETE FROM audit_events WHERE seq = 9").await;
    execute_raw(
        &url,
        "UPDATE audit_events SET seq = -12 WHERE seq = 12; UPDATE audit_events SET seq = 12 WHERE seq = 13; \
         UPDATE audit_events SET seq = 13 WHERE seq = -12;",
    )
    .await;
    execute_raw(
        &url,
        "INSERT INTO audit_events (seq, at, actor, action, subject, details) \
         VALUES (21, 1700000000000, 'mallory', 'grant.approve', 'grant:1', '{}')",
    )
    .await;
    let report = inspect(&url, &verifier, None).await.unwrap();
    assert_eq!(
        report.findings,
        vec![
            Finding::Modified { seq: 4 },
            Finding::Deleted { seq: 9 },
            Finding::Reordered { seq: 12, stored_at: 13 },
            Finding::Reordered { seq: 13, stored_at: 12 },
            Finding::Inserted { seq: 21 },
        ]
    );
}

async fn an_event_edited_together_with_its_leaf_breaks_the_signed_checkpoint(
    store: Store,
    url: String,
    dialect: Dialect,
) {
    let (_, verifier) = checkpointed_log(&store).await;
    execute_raw(&url, drop_append_only_triggers(dialect)).await;
    // The attacker rewrites event 6 and recomputes its leaf so the two agree.
    execute_raw(&url, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 6").await;
    let events = store.audit_events(&AuditFilter::default(), PageRequest::new(Some(5), Some(1))).await.unwrap();
    let e = &events.items[0];
    let forged = EventFields {
        seq: 6,
        at_ms: e.at_ms,
        actor: &e.actor,
        action: &e.action,
        subject: &e.subject,
        details: &e.details,
    }
    .leaf_hash();
    let hex: String = forged.iter().map(|b| format!("{b:02x}")).collect();
    let literal = match dialect {
        Dialect::Sqlite => format!("X'{hex}'"),
        Dialect::Postgres => format!("'\\x{hex}'::bytea"),
    };
    execute_raw(&url, &format!("UPDATE ledger_nodes SET hash = {literal} WHERE level = 0 AND idx = 5")).await;
    let report = inspect(&url, &verifier, None).await.unwrap();
    assert!(report.findings.contains(&Finding::TreeRewritten { from_seq: 1, to_seq: 20 }), "{:?}", report.findings);
    assert!(report.findings.contains(&Finding::NodeAltered { level: 1, idx: 2 }), "{:?}", report.findings);
}

async fn a_forged_checkpoint_is_refused_and_the_genuine_one_used(store: Store, url: String, _: Dialect) {
    let (_, verifier) = checkpointed_log(&store).await;
    append(&store, 2).await;
    // A checkpoint signed with another key, as someone without the ledger key would.
    store.issue_checkpoint(ORIGIN, Arc::new(ServiceKey::generate(KeyRole::Ledger))).await.unwrap().unwrap();
    let report = inspect(&url, &verifier, None).await.unwrap();
    assert_eq!(report.checkpoint.map(|c| c.size), Some(20));
    assert!(
        matches!(report.findings.as_slice(), [Finding::ForgedCheckpoint { size: 22, .. }]),
        "{:?}",
        report.findings
    );
}

async fn events_written_before_the_ledger_existed_are_hashed_in(store: Store, url: String, dialect: Dialect) {
    append(&store, 9).await;
    store.close().await;
    // As on a database from before the ledger: events without leaves.
    execute_raw(&url, drop_append_only_triggers(dialect)).await;
    execute_raw(&url, "DELETE FROM ledger_nodes").await;
    let reopened = Store::open(&url, custody_store::testing::secrets_for(&url)).await.unwrap();
    append(&reopened, 1).await;
    assert_eq!(reopened.ledger_size().await.unwrap(), 10);
    let leaves = leaves_from_events(&reopened).await;
    assert_eq!(reopened.ledger_root(10).await.unwrap(), merkle::root(&leaves));
    reopened.close().await;
}

async fn an_event_written_around_custody_stops_the_writer_instead_of_being_vouched_for(
    store: Store,
    url: String,
    _: Dialect,
) {
    let (_, verifier) = checkpointed_log(&store).await;
    execute_raw(
        &url,
        "INSERT INTO audit_events (seq, at, actor, action, subject, details) \
         VALUES (21, 1700000000000, 'mallory', 'grant.approve', 'grant:1', '{}')",
    )
    .await;
    let refused = store.write(|tx| Box::pin(async move { tx.audit(event(99)).await })).await;
    assert!(
        matches!(&refused, Err(StoreError::Tampered(m)) if m.contains("custody audit verify") && m.contains("seq 21")),
        "the writer must not hash in an event it did not write: {refused:?}"
    );
    assert_eq!(store.ledger_size().await.unwrap(), 20);
    let report = inspect(&url, &verifier, None).await.unwrap();
    assert_eq!(report.findings, vec![Finding::Inserted { seq: 21 }]);
}

/// A ledger key that handed over signs nothing after; the handover is made
/// once; the log inspects clean from either key, and a handover the DBA
/// wrote with a key of their own is named, not followed.
async fn a_ledger_key_that_handed_over_signs_nothing_after(store: Store, url: String, _: Dialect) {
    let old = Arc::new(ServiceKey::generate(KeyRole::Ledger));
    let new = ServiceKey::generate(KeyRole::Ledger);
    append(&store, 6).await;
    store.issue_checkpoint(ORIGIN, old.clone()).await.unwrap().expect("the tree grew");
    append(&store, 2).await;
    let handover = store.hand_over_ledger(ORIGIN, &old, &new).await.unwrap();
    assert_eq!(handover.size, 8);
    assert_eq!(store.hand_over_ledger(ORIGIN, &old, &new).await.unwrap(), handover, "made once");
    append(&store, 3).await;
    assert_eq!(store.issue_checkpoint(ORIGIN, old.clone()).await.unwrap(), None, "the old key handed over");
    let signed = store.issue_checkpoint(ORIGIN, Arc::new(new.clone_key())).await.unwrap().expect("the new key signs");
    assert_eq!(signed.size, 11);
    for pinned in [&old.public(), &new.public()] {
        let report = inspect(&url, &NoteVerifier::new(ORIGIN, pinned).unwrap(), None).await.unwrap();
        assert!(report.intact(), "{:?}", report.findings);
        assert_eq!(report.checkpoint.map(|c| c.size), Some(11));
    }
    let chain = store.ledger_key_chain(ORIGIN, &new).await.unwrap();
    assert_eq!(chain.open(&handover.note).unwrap().size, 8);

    // The DBA writes a handover between two keys of their own: it links
    // no key of the chain, and is named and not followed.
    let dba = ServiceKey::generate(KeyRole::Ledger);
    let theirs = custody_formats::checkpoint::Handover::sign(
        &custody_formats::checkpoint::Checkpoint { origin: ORIGIN.into(), size: 11, root: signed.root },
        &dba,
        &ServiceKey::generate(KeyRole::Ledger),
    )
    .unwrap();
    execute_raw(
        &url,
        &format!(
            "INSERT INTO ledger_handovers (to_key, from_key, size, root, note, at) VALUES ('x', 'y', 11, {}, '{theirs}', 0)",
            hex_literal(&url, &signed.root)
        ),
    )
    .await;
    let report = inspect(&url, &NoteVerifier::new(ORIGIN, &new.public()).unwrap(), None).await.unwrap();
    assert!(matches!(report.findings.as_slice(), [Finding::ForgedHandover { size: 11, .. }]), "{:?}", report.findings);

    // The DBA drops the append-only triggers and edits the genuine
    // handover's note: it no longer opens, and the audit names it.
    let drop_handover_triggers = if url.starts_with("sqlite") {
        "DROP TRIGGER ledger_handovers_no_update; DROP TRIGGER ledger_handovers_no_delete;"
    } else {
        "DROP TRIGGER ledger_handovers_no_change ON ledger_handovers;"
    };
    execute_raw(&url, drop_handover_triggers).await;
    execute_raw(&url, "DELETE FROM ledger_handovers WHERE to_key = 'x'").await;
    let edited = handover.note.replacen("\n8\n", "\n9\n", 1);
    execute_raw(&url, &format!("UPDATE ledger_handovers SET note = '{edited}' WHERE to_key = '{}'", handover.to_key))
        .await;
    let report = inspect(&url, &NoteVerifier::new(ORIGIN, &new.public()).unwrap(), None).await.unwrap();
    assert!(matches!(report.findings.as_slice(), [Finding::ForgedHandover { size: 8, .. }]), "{:?}", report.findings);
    // Deleted, it leaves whoever holds the old key with nothing to follow:
    // the new key's checkpoint is refused as not genuine, never believed.
    execute_raw(&url, "DELETE FROM ledger_handovers").await;
    let report = inspect(&url, &NoteVerifier::new(ORIGIN, &old.public()).unwrap(), None).await.unwrap();
    assert!(
        report.findings.iter().any(|f| matches!(f, Finding::ForgedCheckpoint { size: 11, .. })),
        "{:?}",
        report.findings
    );
}

/// A hash as a binary literal of the database at `url`.
fn hex_literal(url: &str, hash: &Hash) -> String {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    if url.starts_with("sqlite") {
        format!("X'{hex}'")
    } else {
        format!("'\\x{hex}'::bytea")
    }
}

on_both_backends! {
    a_ledger_key_that_handed_over_signs_nothing_after,
    the_tree_covers_every_committed_event_and_its_proofs_verify_independently,
    a_failed_operation_leaves_no_leaf_behind,
    a_checkpoint_is_signed_when_the_tree_grew_and_only_then,
    an_intact_log_inspects_clean,
    edited_deleted_swapped_and_inserted_events_are_each_named,
    an_event_edited_together_with_its_leaf_breaks_the_signed_checkpoint,
    a_forged_checkpoint_is_refused_and_the_genuine_one_used,
    events_written_before_the_ledger_existed_are_hashed_in,
    an_event_written_around_custody_stops_the_writer_instead_of_being_vouched_for,
}

// ---------------------------------------------------------------------------
// Whoever can write the database, without the keys: what the event tags and
// the anchor expose, even when the tree is recomputed to agree.
// ---------------------------------------------------------------------------

/// The refusal a store gives when the database was changed around it.
fn tampered<T>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Tampered(what)) => what,
        Err(other) => panic!("expected the database to be refused as changed around custody, got {other:?}"),
        Ok(_) => panic!("expected the database to be refused as changed around custody; it was accepted"),
    }
}

async fn reopen(url: &str) -> Result<Store, StoreError> {
    Store::open(url, custody_store::testing::secrets_for(url)).await
}

const FORGED: &str = "INSERT INTO audit_events (seq, at, actor, action, subject, details) \
     VALUES (21, 1700000000000, 'bob', 'change.review.approve', 'change:payments/1', '{\"head\":\"x\"}')";

async fn an_event_appended_with_its_leaf_and_nodes_is_refused_while_running_and_after_a_restart(
    store: Store,
    url: String,
    dialect: Dialect,
) {
    let (_, verifier) = checkpointed_log(&store).await;
    execute_raw(&url, drop_append_only_triggers(dialect)).await;
    execute_raw(&url, FORGED).await;
    custody_store::testing::rewrite_ledger_tree(&url).await;
    // The tree now agrees with the forged event; the tag does not.
    let running = tampered(store.write(|tx| Box::pin(async move { tx.audit(event(99)).await })).await);
    assert!(running.contains("audit_events seq 21"), "{running}");
    store.close().await;
    let restarted = tampered(reopen(&url).await);
    assert!(restarted.contains("audit_events seq 21") && restarted.contains("no tag"), "{restarted}");
    let secrets = custody_store::testing::secrets_for(&url);
    let report = inspect(&url, &verifier, Some(&secrets)).await.unwrap();
    assert!(report.tags_checked);
    assert!(
        report.findings.iter().any(|f| matches!(f, Finding::Unproven { seq: 21, .. })),
        "audit verify names the forged event: {:?}",
        report.findings
    );
    // Without the event key, the recomputed tree would have hidden it.
    let blind = inspect(&url, &verifier, None).await.unwrap();
    assert!(!blind.findings.iter().any(|f| matches!(f, Finding::Unproven { .. })));
}

async fn an_edited_or_deleted_event_with_a_recomputed_tree_is_named_at_start_up(
    store: Store,
    url: String,
    dialect: Dialect,
) {
    append(&store, 20).await;
    store.close().await;
    execute_raw(&url, drop_append_only_triggers(dialect)).await;
    execute_raw(&url, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 4").await;
    execute_raw(&url, "DELETE FROM audit_events WHERE seq = 9").await;
    custody_store::testing::rewrite_ledger_tree(&url).await;
    let refused = tampered(reopen(&url).await);
    assert!(refused.contains("audit_events seq 4: its tag does not verify"), "{refused}");
    assert!(refused.contains("audit_events seq 9: missing"), "{refused}");
}

async fn a_log_truncated_to_an_earlier_checkpoint_and_appended_to_is_refused(
    store: Store,
    url: String,
    dialect: Dialect,
) {
    let key = Arc::new(ServiceKey::generate(KeyRole::Ledger));
    append(&store, 10).await;
    store.issue_checkpoint(ORIGIN, key.clone()).await.unwrap().expect("a checkpoint of 10");
    append(&store, 10).await;
    store.issue_checkpoint(ORIGIN, key.clone()).await.unwrap().expect("a checkpoint of 20");
    store.close().await;
    // Back to the checkpoint of 10, as if the last ten never happened.
    execute_raw(&url, drop_append_only_triggers(dialect)).await;
    execute_raw(&url, "DELETE FROM audit_events WHERE seq > 10").await;
    execute_raw(&url, "DELETE FROM ledger_checkpoints WHERE size > 10").await;
    custody_store::testing::rewrite_ledger_tree(&url).await;
    let verifier = NoteVerifier::new(ORIGIN, &key.public()).unwrap();
    assert!(inspect(&url, &verifier, None).await.unwrap().intact(), "the tree and its checkpoints alone agree");
    let refused = tampered(reopen(&url).await);
    assert!(refused.contains("custody committed them and the log ends at 10"), "{refused}");
    let secrets = custody_store::testing::secrets_for(&url);
    let report = inspect(&url, &verifier, Some(&secrets)).await.unwrap();
    assert!(!report.intact(), "audit verify on the host sees the truncation");
    // Forged appends after the truncation carry no tag either.
    execute_raw(&url, &FORGED.replace("21", "11")).await;
    custody_store::testing::rewrite_ledger_tree(&url).await;
    let refused = tampered(reopen(&url).await);
    assert!(refused.contains("audit_events seq 11") && refused.contains("no tag"), "{refused}");
}

mod attacks {
    use super::*;

    on_both_backends! {
        an_event_appended_with_its_leaf_and_nodes_is_refused_while_running_and_after_a_restart,
        an_edited_or_deleted_event_with_a_recomputed_tree_is_named_at_start_up,
        a_log_truncated_to_an_earlier_checkpoint_and_appended_to_is_refused,
    }
}

/// SQLite: the data directory's database file replaced by an older copy of
/// itself, the way a restored backup would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_copy_of_the_database_restored_in_place_is_refused() {
    let Some(db) = TestDatabase::new(Dialect::Sqlite).await else { return };
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let store = reopen(&db.url).await.unwrap();
    append(&store, 10).await;
    store.close().await;
    std::fs::copy(&path, format!("{path}.old")).unwrap();
    let store = reopen(&db.url).await.unwrap();
    append(&store, 10).await;
    store.close().await;
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    std::fs::copy(format!("{path}.old"), &path).unwrap();
    let refused = tampered(reopen(&db.url).await);
    assert!(refused.contains("the log ends at 10"), "{refused}");
}

async fn an_old_event_edited_or_deleted_while_running_stops_the_writer_at_the_next_check(
    store: Store,
    url: String,
    dialect: Dialect,
) {
    append(&store, 20).await;
    store.check_ledger().await.expect("an intact log checks clean");
    execute_raw(&url, drop_append_only_triggers(dialect)).await;
    execute_raw(&url, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 4").await;
    execute_raw(&url, "DELETE FROM audit_events WHERE seq = 9").await;
    custody_store::testing::rewrite_ledger_tree(&url).await;
    let found = tampered(store.check_ledger().await);
    assert!(found.contains("audit_events seq 4: its tag does not verify"), "{found}");
    assert!(found.contains("audit_events seq 9: missing"), "{found}");
    // From now on nothing is written, and every caller is told why.
    let refused = tampered(store.write(|tx| Box::pin(async move { tx.audit(event(99)).await })).await);
    assert!(refused.contains("audit_events seq 4"), "{refused}");
}

mod while_running {
    use super::*;

    on_both_backends! {
        an_old_event_edited_or_deleted_while_running_stops_the_writer_at_the_next_check,
    }
}
