//! End-to-end tests of the audit ledger with the real binary, on both
//! backends: checkpoints, proofs and exports checked by implementations that
//! are not custody's (`signed_note` and `tlog_tiles`, ports of Go's
//! `sumdb/note` and `sumdb/tlog`), `custody audit verify` against a database
//! tampered with directly, and `custody audit watch` against a database
//! restored from an older copy.

#[macro_use]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use custody_formats::event::EventFields;
use serde_json::Value;
use support::hosted::{Backend, Hosted};
use support::{run, Run};

fn b64(value: &Value) -> [u8; 32] {
    let text = value.as_str().unwrap_or_else(|| panic!("a base64 hash, not {value}"));
    base64::engine::general_purpose::STANDARD.decode(text).unwrap().try_into().unwrap()
}

/// A command as the admin against the server running now, whichever it is.
fn admin(hosted: &Hosted, args: &[&str]) -> Run {
    hosted.sandbox.client("admin", &hosted.server, &hosted.admin, args)
}

fn event_count(hosted: &Hosted) -> u64 {
    admin(hosted, &["audit", "log", "--json"]).json().as_array().expect("events").len() as u64
}

/// Waits (at most 10 s) for a checkpoint covering every event so far.
fn checkpoint_of_everything(hosted: &Hosted) -> Value {
    let events = event_count(hosted);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = admin(hosted, &["audit", "checkpoint", "--json"]);
        if answer.code() == Some(0) {
            let checkpoint = answer.json();
            if checkpoint["size"].as_u64() == Some(events) {
                return checkpoint;
            }
        }
        assert!(Instant::now() < deadline, "no checkpoint of {events} events within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn database_url(hosted: &Hosted) -> String {
    match &hosted.database {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", hosted.sandbox.path("data").join("custody.db").display()),
    }
}

/// SQL run on the database directly, as someone with access to it would.
fn tamper(hosted: &Hosted, sql: &str) {
    let url = database_url(hosted);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(custody_store::testing::execute_raw(&url, sql));
}

fn dialect(hosted: &Hosted) -> custody_store::Dialect {
    if hosted.database.is_some() {
        custody_store::Dialect::Postgres
    } else {
        custody_store::Dialect::Sqlite
    }
}

/// `custody audit verify` on the instance's data directory and database.
fn verify(hosted: &Hosted, json: bool) -> Run {
    let mut command = hosted.sandbox.as_user("auditor");
    command.args(["audit", "verify", "--data-dir"]).arg(hosted.sandbox.path("data"));
    if let Some(db) = &hosted.database {
        command.args(["--database-url", &db.url]);
    }
    if json {
        command.arg("--json");
    }
    run(command)
}

/// Go's tlog computing tree heads from leaf hashes alone.
#[derive(Default)]
struct GoTree {
    hashes: Vec<tlog_tiles::Hash>,
    leaves: u64,
}

impl tlog_tiles::HashReader for GoTree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| self.hashes.get(i as usize).copied().ok_or(tlog_tiles::Error::IndexesNotInTree))
            .collect()
    }
}

impl GoTree {
    fn append(&mut self, leaf: [u8; 32]) {
        let new = tlog_tiles::stored_hashes_for_record_hash(self.leaves, tlog_tiles::Hash(leaf), self).unwrap();
        self.hashes.extend(new);
        self.leaves += 1;
    }
}

fn checkpoints_proofs_and_exports_verify_with_independent_implementations(backend: Backend) {
    let Some(hosted) = Hosted::on(backend) else { return };
    let checkpoint = checkpoint_of_everything(&hosted);
    let size = checkpoint["size"].as_u64().unwrap();
    assert!(size >= 8, "the setup wrote a few events: {checkpoint}");

    // The checkpoint is a C2SP signed note under the ledger's verifier key.
    let note = checkpoint["note"].as_str().unwrap();
    let verifier = signed_note::StandardVerifier::new(checkpoint["verifier_key"].as_str().unwrap()).unwrap();
    let parsed = signed_note::Note::from_bytes(note.as_bytes()).unwrap();
    parsed.verify(&signed_note::VerifierList::new(vec![Box::new(verifier)])).expect("signed by the ledger key");
    let body = tlog_tiles::Checkpoint::from_bytes(parsed.text()).expect("a C2SP tlog checkpoint");
    assert_eq!((body.origin(), body.size()), ("custody", size));
    let head = *body.hash();

    // Every exported event hashes to its leaf, and its proof leads to the head.
    let mut command = hosted.sandbox.as_user("admin");
    command.args(["audit", "export"]);
    let export = run(command).expect_code(0);
    let lines: Vec<Value> = export.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len() as u64, size, "one line per event in the checkpoint");
    let mut go = GoTree::default();
    for line in &lines {
        let event = &line["event"];
        let seq = event["seq"].as_i64().unwrap();
        let text = |k: &str| event[k].as_str().unwrap().to_owned();
        let (actor, action, subject) = (text("actor"), text("action"), text("subject"));
        let fields = EventFields {
            seq,
            at_ms: event["at_ms"].as_i64().unwrap(),
            actor: &actor,
            action: &action,
            subject: &subject,
            details: &event["details"],
        };
        let leaf = tlog_tiles::record_hash(&fields.canonical_bytes());
        assert_eq!(leaf.0, b64(&line["leaf_hash"]), "event {seq} hashes to its exported leaf");
        assert_eq!(line["checkpoint"], note);
        let proof: Vec<tlog_tiles::Hash> =
            line["inclusion"]["hashes"].as_array().unwrap().iter().map(|h| tlog_tiles::Hash(b64(h))).collect();
        tlog_tiles::check_record(&proof, size, head, seq as u64 - 1, leaf)
            .unwrap_or_else(|e| panic!("event {seq}'s inclusion proof: {e:?}"));
        go.append(leaf.0);
    }
    assert_eq!(tlog_tiles::tree_hash(size, &go).unwrap(), head, "Go's tlog computes the same head from the leaves");

    // `audit proof` checks the proof itself and prints it.
    let proof = admin(&hosted, &["audit", "proof", "3", "--json"]).json();
    let hashes: Vec<tlog_tiles::Hash> =
        proof["hashes"].as_array().unwrap().iter().map(|h| tlog_tiles::Hash(b64(h))).collect();
    tlog_tiles::check_record(&hashes, size, head, 2, tlog_tiles::Hash(b64(&proof["leaf_hash"]))).unwrap();
    let shown = admin(&hosted, &["audit", "proof", "3"]).expect_code(0);
    assert!(shown.stdout.contains(&format!("event 3 is included in checkpoint {size} (proof verified)")), "{shown:?}");

    // `audit consistency` from an older size, checked against Go's head of that size.
    let old = size / 2;
    let consistency = admin(&hosted, &["audit", "consistency", &old.to_string(), &size.to_string(), "--json"]).json();
    let hashes: Vec<tlog_tiles::Hash> =
        consistency["hashes"].as_array().unwrap().iter().map(|h| tlog_tiles::Hash(b64(h))).collect();
    let old_head = tlog_tiles::tree_hash(old, &go).unwrap();
    tlog_tiles::check_tree(&hashes, size, head, old, old_head).expect("Go's tlog accepts the consistency proof");

    // Proofs are for admins and auditors; the checkpoint is for anyone.
    let stranger = admin(&hosted, &["user", "add", "eve", "--email", "eve@example.com", "--json"]).json();
    assert!(stranger["invite_code"].is_string());
    let alice = hosted.as_user("alice", &hosted.alice, &["audit", "proof", "3"]);
    assert_eq!(alice.code(), Some(1), "{alice:?}");
    let mut anonymous = hosted.sandbox.as_user("anonymous");
    anonymous.env("CUSTODY_SERVER", &hosted.server.url).args(["audit", "checkpoint", "--json"]);
    assert!(run(anonymous).expect_code(0).json()["size"].as_u64().is_some());
}

fn audit_verify_names_every_tampered_event(backend: Backend) {
    let Some(hosted) = Hosted::on(backend) else { return };
    let size = checkpoint_of_everything(&hosted)["size"].as_u64().unwrap() as i64;
    let clean = verify(&hosted, false).expect_code(0);
    assert!(clean.stdout.contains("audit log intact"), "{clean:?}");

    tamper(&hosted, custody_store::testing::drop_append_only_triggers(dialect(&hosted)));
    // An edited event, a deleted one, two swapped, and one inserted at the end.
    tamper(&hosted, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2");
    tamper(&hosted, "DELETE FROM audit_events WHERE seq = 6");
    tamper(
        &hosted,
        "UPDATE audit_events SET seq = -3 WHERE seq = 3; UPDATE audit_events SET seq = 3 WHERE seq = 4; \
         UPDATE audit_events SET seq = 4 WHERE seq = -3;",
    );
    let inserted = size + 1;
    tamper(
        &hosted,
        &format!(
            "INSERT INTO audit_events (seq, at, actor, action, subject, details) \
             VALUES ({inserted}, 1700000000000, 'mallory', 'grant.approve', 'grant:1', '{{}}')"
        ),
    );

    let damaged = verify(&hosted, false);
    assert_eq!(damaged.code(), Some(1), "{damaged:?}");
    for line in [
        "event 2 was modified".to_owned(),
        "event 3 was moved: it is now stored as event 4".to_owned(),
        "event 4 was moved: it is now stored as event 3".to_owned(),
        "event 6 was deleted".to_owned(),
        format!("event {inserted} was inserted"),
    ] {
        assert!(damaged.stdout.contains(&line), "verify does not say {line:?}: {damaged:?}");
    }
    // On the instance's host, the event key and the anchor expose the same
    // events again, by their tags, and the log no longer being custody's.
    for line in [
        "audit_events seq 2: its tag does not verify".to_owned(),
        "audit_events seq 6: missing".to_owned(),
        format!("audit_events seq {inserted}: it carries no tag"),
        format!("audit_events 1 to {size}: these are not the events custody committed"),
    ] {
        assert!(damaged.stdout.contains(&line), "verify does not say {line:?}: {damaged:?}");
    }
    assert!(damaged.stderr.contains("tampered with:"), "{damaged:?}");

    let report = verify(&hosted, true);
    assert_eq!(report.code(), Some(1));
    let report: Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(report["intact"], false);
    let kinds: Vec<(String, i64)> = report["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().to_owned(), f["seq"].as_i64().unwrap()))
        .filter(|(kind, _)| kind != "unproven")
        .collect();
    assert_eq!(report["report"]["tags_checked"], true);
    let expected = [("modified", 2), ("reordered", 3), ("reordered", 4), ("deleted", 6), ("inserted", inserted)];
    assert_eq!(kinds, expected.map(|(k, s)| (k.to_owned(), s)).to_vec());
}

/// Keeps an older copy of the whole database, to restore later.
enum Snapshot {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

fn psql(sql: &str) {
    let mut command = Command::new("psql");
    command.arg(custody_store::testing::postgres_admin_url()).args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]);
    run(command).expect_code(0);
}

fn sqlite_files(hosted: &Hosted) -> Vec<PathBuf> {
    let data = hosted.sandbox.path("data");
    ["custody.db", "custody.db-wal", "custody.db-shm"].iter().map(|f| data.join(f)).collect()
}

fn snapshot(hosted: &Hosted) -> Snapshot {
    match &hosted.database {
        None => {
            let dir = tempfile::tempdir().unwrap();
            for file in sqlite_files(hosted) {
                if file.exists() {
                    std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();
                }
            }
            Snapshot::Sqlite(dir)
        }
        Some(db) => {
            let copy = format!("{}_old", db.name);
            psql(&format!("CREATE DATABASE {copy} TEMPLATE {}", db.name));
            Snapshot::Postgres(copy)
        }
    }
}

fn restore(hosted: &Hosted, snapshot: &Snapshot) {
    match (snapshot, &hosted.database) {
        (Snapshot::Sqlite(dir), _) => {
            for file in sqlite_files(hosted) {
                let _ = std::fs::remove_file(&file);
                let saved = dir.path().join(file.file_name().unwrap());
                if saved.exists() {
                    std::fs::copy(saved, &file).unwrap();
                }
            }
        }
        (Snapshot::Postgres(copy), Some(db)) => {
            psql(&format!("DROP DATABASE {} WITH (FORCE)", db.name));
            psql(&format!("CREATE DATABASE {} TEMPLATE {copy}", db.name));
            psql(&format!("DROP DATABASE {copy}"));
        }
        (Snapshot::Postgres(_), None) => unreachable!("a PostgreSQL snapshot of a SQLite instance"),
    }
}

fn restart(hosted: &mut Hosted) {
    hosted.server.stop();
    let url = hosted.database.as_ref().map(|d| d.url.clone());
    hosted.server = hosted.sandbox.serve_on("data", url.as_deref());
}

fn audit_watch_reports_a_database_restored_from_an_older_copy(backend: Backend) {
    let Some(mut hosted) = Hosted::on(backend) else { return };
    checkpoint_of_everything(&hosted);
    let state = hosted.sandbox.path("watch.json");
    let watch = |hosted: &Hosted| {
        let mut command = hosted.sandbox.as_user("watcher");
        command.env("CUSTODY_SERVER", &hosted.server.url).args(["audit", "watch", "--state"]).arg(&state);
        run(command)
    };
    let first = watch(&hosted).expect_code(0);
    assert!(first.stdout.contains("pinned the ledger key"), "{first:?}");

    // A backup is taken; then history goes on and the watcher sees it.
    hosted.server.stop();
    let backup = snapshot(&hosted);
    let backup_anchor = std::fs::read(hosted.sandbox.path("data").join("keys").join("ledger.anchor")).unwrap();
    restart(&mut hosted);
    admin(&hosted, &["user", "add", "bob", "--email", "bob@example.com"]).expect_code(0);
    admin(&hosted, &["group", "create", "release-managers"]).expect_code(0);
    let seen = checkpoint_of_everything(&hosted)["size"].as_u64().unwrap();
    let second = watch(&hosted).expect_code(0);
    assert!(second.stdout.contains(&format!("checkpoint {seen} is consistent with")), "{second:?}");

    // The database is restored from the backup. On its own it is refused:
    // the log no longer extends the tree head anchored in keys/.
    hosted.server.stop();
    let anchor_file = hosted.sandbox.path("data").join("keys").join("ledger.anchor");
    let anchor_now = std::fs::read(&anchor_file).unwrap();
    restore(&hosted, &backup);
    let refused = verify(&hosted, false);
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    assert!(refused.stdout.contains("truncated or restored from an older copy"), "{refused:?}");
    // An operator restores the anchor of the backup with it, and new events
    // follow: the log the server now shows is not an extension of what the
    // watcher saw.
    std::fs::write(&anchor_file, &backup_anchor).unwrap();
    assert_ne!(anchor_now, backup_anchor);
    restart(&mut hosted);
    for name in ["mallory", "trent", "oscar", "peggy"] {
        admin(&hosted, &["user", "add", name, "--email", &format!("{name}@example.com")]).expect_code(0);
    }
    let rewritten = checkpoint_of_everything(&hosted)["size"].as_u64().unwrap();
    let caught = watch(&hosted);
    assert_eq!(caught.code(), Some(1), "{caught:?}");
    assert!(caught.stderr.contains("history was rewritten"), "{caught:?}");
    if rewritten > seen {
        assert!(caught.stderr.contains(&format!("checkpoint {rewritten} is not consistent with checkpoint {seen}")));
    }
    // The state still holds the last good checkpoint: the alarm repeats.
    assert_eq!(watch(&hosted).code(), Some(1));
}

/// The `instance.start` events recorded so far, oldest first.
fn starts(hosted: &Hosted) -> Vec<Value> {
    let (status, page) = hosted.api("GET", "/api/v1/audit/events?action=instance.start", Some(&hosted.admin), None);
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

fn every_start_records_its_version_and_configuration_and_a_changed_setting_is_named(backend: Backend) {
    let Some(mut hosted) = Hosted::on(backend) else { return };
    let first = starts(&hosted);
    assert_eq!(first.len(), 1, "{first:?}");
    let details = &first[0]["details"];
    assert_eq!(details["version"], env!("CARGO_PKG_VERSION"), "{details}");
    assert_eq!(details["changed"], serde_json::json!([]), "a first start changes nothing: {details}");
    let digest = details["configuration_sha256"].as_str().expect("a digest").to_owned();
    assert_eq!(digest.len(), 64, "{details}");
    // No secret reaches the ledger: the database is named without credentials.
    let database = details["configuration"]["database"].as_str().expect("the database named");
    assert!(!database.contains('@') && !database.contains("password"), "{database}");

    // The same settings again: recorded, with nothing changed.
    hosted.restart_with(&[]);
    let again = starts(&hosted);
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(again[1]["details"]["configuration_sha256"], digest.as_str());
    assert_eq!(again[1]["details"]["changed"], serde_json::json!([]));

    // A weaker limit: the start names the configuration as changed, and the
    // setting is there for an auditor to read.
    hosted.restart_with(&[("CUSTODY_MAX_CONNECTIONS_PER_SOURCE", "4096")]);
    let changed = starts(&hosted);
    let last = &changed.last().expect("a third start")["details"];
    assert_eq!(last["changed"], serde_json::json!(["configuration"]), "{last}");
    assert_ne!(last["configuration_sha256"], digest.as_str());
    assert_eq!(last["configuration"]["max_connections_per_source"], 4096, "{last}");
    // The report of the period lists it as a finding.
    let report = admin(&hosted, &["report", "--from", "2000-01-01", "--to", "2100-01-01", "--format", "json"]);
    let report = report.json();
    let findings = report["findings"].as_array().cloned().unwrap_or_default();
    assert!(
        findings.iter().any(|f| f["kind"] == "configuration_changed"),
        "the changed start is not a finding: {findings:?}"
    );
    // And the ledger still verifies with the starts in it.
    let verified = verify(&hosted, false);
    assert!(verified.status.success(), "the ledger does not verify: {}", verified.stderr);
}

on_both_backends!(
    every_start_records_its_version_and_configuration_and_a_changed_setting_is_named,
    checkpoints_proofs_and_exports_verify_with_independent_implementations,
    audit_verify_names_every_tampered_event,
    audit_watch_reports_a_database_restored_from_an_older_copy,
);
