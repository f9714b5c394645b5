//! Service keys rotate and are revoked by grants: evidence a retired key
//! signed while it was current still verifies; once it is revoked from the
//! time it may have been compromised, evidence it signed since fails and
//! says why; a key file the ledger does not name is refused at start.

mod support;

use std::process::Command;

use serde_json::Value;
use support::builds::{finished_build, seed_building};
use support::flow::*;
use support::hosted::*;
use support::*;

/// The artifact of build `number`, its evidence bundle written to a file.
fn bundle_of(hosted: &Hosted, number: i64) -> std::path::PathBuf {
    let build = finished_build(hosted, number);
    assert_eq!(build["status"], "succeeded", "{build}");
    let digest = build["artifacts"][0]["digest"].as_str().expect("an artifact").to_owned();
    let file = hosted.sandbox.path(&format!("bundle-{number}.json"));
    hosted
        .as_admin(&["evidence", "export", PROJECT, "--artifact", &digest, "-o", file.to_str().unwrap()])
        .expect_code(0);
    file
}

/// `custody verify BUNDLE --trust TRUST --json`, offline.
fn verify(hosted: &Hosted, bundle: &std::path::Path, trust: &std::path::Path) -> Run {
    let mut command = hosted.sandbox.as_user("auditor");
    command.args(["verify", bundle.to_str().unwrap(), "--trust", trust.to_str().unwrap(), "--json"]);
    run(command)
}

fn trust_now(hosted: &Hosted, name: &str) -> std::path::PathBuf {
    let file = hosted.sandbox.path(name);
    hosted.as_admin(&["trust", "export", "-o", file.to_str().unwrap()]).expect_code(0);
    file
}

fn builder_keys(hosted: &Hosted) -> Vec<Value> {
    let keys = hosted.as_admin(&["key", "list", "--json"]).json();
    keys.as_array().expect("a list").iter().filter(|k| k["role"] == "builder").cloned().collect()
}

#[test]
fn a_rotated_builder_keys_old_evidence_verifies_until_it_is_revoked_from_when_it_was_compromised() {
    let mut hosted = Hosted::new();
    hosted.add_user("bob", "write");
    hosted.second_admin("carol");
    let as_carol = |args: &[&str]| {
        let mut command = hosted.sandbox.as_user("carol");
        command.args(args);
        run(command)
    };
    let data = hosted.sandbox.path("data");
    let (first, before, after, old_key, new_key) = {
        let (work, base) = seed_building(&hosted);
        merge_part(&hosted, &work, &base, 0);
        let first = bundle_of(&hosted, 1);
        // From here on the old key may have been copied.
        let compromised = custody_domain::Timestamp::from_millis(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64,
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        merge_part(&hosted, &work, &base, 1);
        let before = bundle_of(&hosted, 2);
        let old_key = builder_keys(&hosted)[0]["key_id"].as_str().expect("a key id").to_owned();
        std::fs::copy(data.join("keys/builder.pem"), hosted.sandbox.path("old-builder.pem")).expect("a copy");

        // Rotating is a grant: it waits for a second admin.
        let asked = hosted.as_admin(&["key", "rotate", "builder", "--json"]).json();
        assert_eq!(asked["status"], "pending", "{asked}");
        assert_eq!(builder_keys(&hosted).len(), 1);
        let id = asked["id"].as_i64().expect("a grant id").to_string();
        as_carol(&["grant", "approve", &id]).expect_code(0);
        let keys = builder_keys(&hosted);
        assert_eq!(keys.len(), 2, "{keys:#?}");
        assert_eq!(keys[0]["key_id"], old_key.as_str());
        assert!(keys[0]["not_after"].is_string(), "the old key's validity ended: {keys:#?}");
        assert!(keys[1]["not_after"].is_null(), "{keys:#?}");
        let new_key = keys[1]["key_id"].as_str().expect("a key id").to_owned();
        assert!(!data.join("keys/builder.next.pem").exists());

        // The next build is signed with the new key, in the running server.
        merge_part(&hosted, &work, &base, 2);
        let after = bundle_of(&hosted, 3);
        (first, before, after, (old_key, compromised), new_key)
    };
    let (old_key, compromised) = old_key;

    // Every bundle verifies: the old key signed the first two while current.
    let trust = trust_now(&hosted, "trust-rotated.json");
    for bundle in [&first, &before, &after] {
        let report = verify(&hosted, bundle, &trust).expect_code(0).json();
        assert_eq!(report["valid"], true, "{report:#}");
    }
    let report = verify(&hosted, &after, &trust).json();
    let signer = report["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["role"] == "builder" && k["verified"].as_u64() > Some(0))
        .cloned();
    assert_eq!(signer.map(|k| k["key_id"].clone()), Some(Value::from(new_key.as_str())), "{report:#}");

    // The current key cannot be revoked: it is rotated first.
    let refused = hosted.as_admin(&["key", "revoke", &new_key, "--reason", "lost"]);
    assert_ne!(refused.code(), Some(0), "{refused:?}");
    assert!(refused.stderr.contains("rotate the key first"), "{refused:?}");

    // The old key is revoked from when it may have been copied: a grant too.
    let reason = "the build host's disk image was copied";
    let asked = hosted
        .as_admin(&["key", "revoke", &old_key, "--reason", reason, "--since", &compromised.to_rfc3339(), "--json"])
        .json();
    assert_eq!(asked["status"], "pending", "{asked}");
    as_carol(&["grant", "approve", &asked["id"].as_i64().unwrap().to_string()]).expect_code(0);
    let keys = builder_keys(&hosted);
    assert_eq!(keys[0]["revoked"]["reason"], reason, "{keys:#?}");

    // What it signed before stays valid; what it signed since fails, saying why.
    let trust = trust_now(&hosted, "trust-revoked.json");
    verify(&hosted, &first, &trust).expect_code(0);
    verify(&hosted, &after, &trust).expect_code(0);
    let failed = verify(&hosted, &before, &trust);
    assert_eq!(failed.code(), Some(1), "{failed:?}");
    assert!(failed.stdout.contains("revoked since") && failed.stdout.contains(reason), "{failed:?}");

    // An old key file put back is refused at start: the ledger names another.
    hosted.server.stop();
    let key_file = data.join("keys/builder.pem");
    std::fs::remove_file(&key_file).expect("remove the key");
    std::fs::copy(hosted.sandbox.path("old-builder.pem"), &key_file).expect("the old key back");
    let mut serve = hosted.sandbox.as_user("server");
    serve.arg("serve").arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0"]);
    let refused = run(serve);
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("restore the keys directory from the instance's escrow"), "{refused:?}");
}

/// A server killed half-way through a rotation (the new key made but not
/// recorded; recorded but not in place) finishes it at its next start: the
/// ledger and the key file agree, and the server starts again on them.
#[test]
fn a_rotation_cut_off_by_a_crash_is_finished_at_the_next_start() {
    for point in ["key.made", "key.recorded"] {
        let mut hosted = Hosted::on_with(Backend::Sqlite, &[("CUSTODY_CRASH_AT", point)]).expect("SQLite");
        hosted.second_admin("carol");
        let old = builder_keys(&hosted)[0]["key_id"].as_str().expect("a key id").to_owned();
        let asked = hosted.as_admin(&["key", "rotate", "builder", "--json"]).json();
        let mut approve = hosted.sandbox.as_user("carol");
        approve.args(["grant", "approve", &asked["id"].as_i64().unwrap().to_string()]);
        let cut = run(approve);
        assert_ne!(cut.code(), Some(0), "{point}: {cut:?}");
        assert!(hosted.server.wait_for_exit(std::time::Duration::from_secs(20)).is_some(), "{point}: still running");

        hosted.restart_with(&[]);
        let keys = builder_keys(&hosted);
        assert_eq!(keys.len(), 2, "{point}: {keys:#?}");
        assert_eq!(keys[0]["key_id"], old.as_str(), "{point}");
        assert!(keys[1]["not_after"].is_null(), "{point}: {keys:#?}");
        let data = hosted.sandbox.path("data");
        assert!(!data.join("keys/builder.next.pem").exists(), "{point}");
        // The file holds the key the ledger names: the next start accepts it.
        hosted.restart_with(&[]);
        assert_eq!(builder_keys(&hosted), keys, "{point}");
    }
}

/// The keys an instance started with are in its ledger: a key file swapped
/// for another on the host (never rotated) is refused at start, and the
/// trust root keeps naming the recorded key.
#[test]
fn a_gate_key_swapped_on_the_host_is_refused_at_start() {
    let mut hosted = Hosted::new();
    let recorded = hosted.as_admin(&["audit", "log", "--action", "key.registered", "--json"]).json();
    assert_eq!(recorded.as_array().map(Vec::len), Some(4), "{recorded:#}");
    hosted.server.stop();
    let gate = hosted.sandbox.path("data").join("keys/gate.pem");
    std::fs::remove_file(&gate).expect("remove the gate key");
    let mut made = Command::new("openssl");
    made.args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&gate);
    run(made).expect_code(0);
    std::fs::set_permissions(&gate, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("owner only");
    let mut serve = hosted.sandbox.as_user("server");
    serve.arg("serve").arg("--data-dir").arg(hosted.sandbox.path("data")).args(["--listen", "127.0.0.1:0"]);
    let refused = run(serve);
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("gate.pem holds the gate key"), "{refused:?}");
}

fn ledger_keys(hosted: &Hosted) -> Vec<Value> {
    let keys = hosted.as_admin(&["key", "list", "--json"]).json();
    keys.as_array().expect("a list").iter().filter(|k| k["role"] == "ledger").cloned().collect()
}

/// `custody audit watch --state FILE --json` by a watcher with no account.
fn watch(hosted: &Hosted, state: &std::path::Path) -> Run {
    let mut command = hosted.sandbox.as_user("watcher");
    command.env("CUSTODY_SERVER", &hosted.server.url).args(["audit", "watch", "--json", "--state"]).arg(state);
    run(command)
}

/// `custody audit verify` on the instance's data directory (and database).
fn audit_verify(hosted: &Hosted) -> Run {
    let mut command = hosted.sandbox.as_user("operator");
    command.args(["audit", "verify", "--json", "--data-dir"]).arg(hosted.sandbox.path("data"));
    if let Some(database) = &hosted.database {
        command.args(["--database-url", &database.url]);
    }
    run(command)
}

/// The stored handovers, as anyone may read them.
fn handovers(hosted: &Hosted) -> Vec<Value> {
    let (status, page) = hosted.api("GET", "/api/v1/audit/handovers", None, None);
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().expect("items").clone()
}

/// Waits until the newest checkpoint covers more than `size` events.
fn checkpoint_beyond(hosted: &Hosted, size: u64) -> Value {
    for _ in 0..100 {
        let (status, checkpoint) = hosted.api("GET", "/api/v1/audit/checkpoint", None, None);
        if status == 200 && checkpoint["size"].as_u64() > Some(size) {
            return checkpoint;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no checkpoint beyond {size} events was signed");
}

/// The ledger key rotates by a grant like the others. The old key hands the
/// log over in a checkpoint both keys sign and that names both; from then
/// on only the new key signs. A watcher pinned to the old key follows the
/// rotation through that handover and pins the new key; evidence proved
/// against the old key's checkpoints still verifies; and whoever kept a
/// copy of the old key cannot sign the log's future with it.
#[test]
fn a_ledger_key_rotation_hands_the_log_over_and_a_watcher_follows_it_only_through_the_handover() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(hosted) = Hosted::on(backend) else { continue };
        ledger_rotation_story(hosted);
    }
}

fn ledger_rotation_story(hosted: Hosted) {
    hosted.add_user("bob", "write");
    hosted.second_admin("carol");
    let data = hosted.sandbox.path("data");
    let (work, base) = seed_building(&hosted);
    merge_part(&hosted, &work, &base, 0);
    let before = bundle_of(&hosted, 1);
    let state = hosted.sandbox.path("watch.json");
    let first = watch(&hosted, &state).expect_code(0).json();
    assert_eq!(first["pinned_key"], true, "{first}");
    let old_vkey = serde_json::from_str::<Value>(&std::fs::read_to_string(&state).unwrap()).unwrap()["verifier_key"]
        .as_str()
        .expect("a pinned key")
        .to_owned();
    std::fs::copy(data.join("keys/ledger.pem"), hosted.sandbox.path("old-ledger.pem")).expect("a copy");

    let asked = hosted.as_admin(&["key", "rotate", "ledger", "--json"]).json();
    assert_eq!(asked["status"], "pending", "{asked}");
    let mut approve = hosted.sandbox.as_user("carol");
    approve.args(["grant", "approve", &asked["id"].as_i64().unwrap().to_string()]);
    run(approve).expect_code(0);
    let keys = ledger_keys(&hosted);
    assert_eq!(keys.len(), 2, "{keys:#?}");
    assert!(keys[0]["not_after"].is_string() && keys[1]["not_after"].is_null(), "{keys:#?}");

    // One handover: from the pinned key to the new one, signed by both,
    // covering the rotation's event.
    let handover = handovers(&hosted);
    assert_eq!(handover.len(), 1, "{handover:#?}");
    let handover = &handover[0];
    assert_eq!(handover["from_key"], old_vkey.as_str());
    let new_vkey = handover["to_key"].as_str().expect("the new key").to_owned();
    assert_ne!(new_vkey, old_vkey);
    let note = handover["note"].as_str().unwrap();
    assert!(note.contains(&format!("\ncustody-ledger-key-from {old_vkey}\ncustody-ledger-key-to {new_vkey}\n")));
    assert_eq!(note.matches("\u{2014} ").count(), 2, "two signatures: {note}");
    let rotated = hosted.audit_events("key.rotated");
    let rotation_seq = rotated.last().expect("the rotation")["seq"].as_u64().unwrap();
    let handover_size = handover["size"].as_u64().unwrap();
    assert!(handover_size >= rotation_seq, "{handover} before event {rotation_seq}");

    // The log goes on under the new key; the watcher follows the handover.
    merge_part(&hosted, &work, &base, 1);
    let after = bundle_of(&hosted, 2);
    let newest = checkpoint_beyond(&hosted, handover_size);
    assert_eq!(newest["verifier_key"], new_vkey.as_str());
    let followed = watch(&hosted, &state).expect_code(0).json();
    assert_eq!(followed["followed_keys"], serde_json::json!([new_vkey]), "{followed}");
    let pinned: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(pinned["verifier_key"], new_vkey.as_str());
    watch(&hosted, &state).expect_code(0);

    // The ledger verifies end to end: old checkpoints by the old key, new
    // ones by the new key, the handover by both.
    let verified = audit_verify(&hosted).expect_code(0).json();
    assert_eq!(verified["intact"], true, "{verified:#}");

    // Evidence proved against either key's checkpoints verifies offline.
    let trust = trust_now(&hosted, "trust-ledger-rotated.json");
    for bundle in [&before, &after] {
        let report = verify(&hosted, bundle, &trust).expect_code(0).json();
        assert_eq!(report["valid"], true, "{report:#}");
    }

    // A thief who copied the old key signs a checkpoint of a future that
    // never was and writes it into the database: the watcher refuses it,
    // and so does the audit.
    let old =
        custody_formats::ServiceKey::load(custody_formats::KeyRole::Ledger, &hosted.sandbox.path("old-ledger.pem"))
            .expect("the old key");
    let origin = newest["origin"].as_str().unwrap().to_owned();
    let size = newest["size"].as_u64().unwrap() + 3;
    let forged = custody_formats::checkpoint::Checkpoint { origin, size, root: [7; 32] }.sign(&old).unwrap();
    hosted.tamper(&format!(
        "INSERT INTO ledger_checkpoints (size, root, note, at) VALUES ({size}, {}, '{forged}', 0)",
        match backend_of(&hosted) {
            Backend::Sqlite => format!("X'{}'", "07".repeat(32)),
            Backend::Postgres => format!("'\\x{}'::bytea", "07".repeat(32)),
        }
    ));
    let refused = watch(&hosted, &state);
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    assert!(refused.stderr.contains("handed over"), "{refused:?}");
    let audit = audit_verify(&hosted);
    assert_eq!(audit.code(), Some(1), "{audit:?}");
    let report: Value = serde_json::from_str(audit.stdout.trim()).expect("a JSON report");
    let findings = report["report"]["findings"].clone();
    assert_eq!(findings.as_array().map(Vec::len), Some(1), "{findings:#}");
    assert_eq!((&findings[0]["kind"], findings[0]["size"].as_u64()), (&Value::from("forged_checkpoint"), Some(size)));
    assert!(findings[0]["why"].as_str().unwrap().contains("handed over"), "{findings:#}");
}

fn backend_of(hosted: &Hosted) -> Backend {
    if hosted.database.is_some() {
        Backend::Postgres
    } else {
        Backend::Sqlite
    }
}

/// A server killed after recording the ledger key's rotation (before or
/// after its handover) hands over and installs the new key at its next
/// start: one handover, the ledger intact, and a watcher follows.
#[test]
fn a_ledger_rotation_cut_off_by_a_crash_hands_over_at_the_next_start() {
    for point in ["key.recorded", "key.handed_over"] {
        let mut hosted = Hosted::on_with(Backend::Sqlite, &[("CUSTODY_CRASH_AT", point)]).expect("SQLite");
        hosted.second_admin("carol");
        let state = hosted.sandbox.path("watch.json");
        checkpoint_beyond(&hosted, 0);
        watch(&hosted, &state).expect_code(0);
        let asked = hosted.as_admin(&["key", "rotate", "ledger", "--json"]).json();
        let mut approve = hosted.sandbox.as_user("carol");
        approve.args(["grant", "approve", &asked["id"].as_i64().unwrap().to_string()]);
        let cut = run(approve);
        assert_ne!(cut.code(), Some(0), "{point}: {cut:?}");
        assert!(hosted.server.wait_for_exit(std::time::Duration::from_secs(20)).is_some(), "{point}: still running");

        hosted.restart_with(&[]);
        let keys = ledger_keys(&hosted);
        assert_eq!(keys.len(), 2, "{point}: {keys:#?}");
        assert_eq!(handovers(&hosted).len(), 1, "{point}");
        assert!(!hosted.sandbox.path("data").join("keys/ledger.next.pem").exists(), "{point}");
        hosted.as_admin(&["group", "create", "release-managers"]).expect_code(0);
        checkpoint_beyond(&hosted, handovers(&hosted)[0]["size"].as_u64().unwrap());
        let followed = watch(&hosted, &state).expect_code(0).json();
        assert_eq!(followed["followed_keys"].as_array().map(Vec::len), Some(1), "{point}: {followed}");
        hosted.server.stop();
        let verified = audit_verify(&hosted).expect_code(0).json();
        assert_eq!(verified["intact"], true, "{point}: {verified:#}");
    }
}
