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
