//! Whoever can write the database, without the data directory's keys, tried
//! against the real server: rows written, edited and deleted around custody
//! open no gate and act as nobody, and each refusal names the row.
//!
//! Every scenario runs on both backends.

#[macro_use]
mod support;

use custody_domain::secret::{format_secret, SecretKind};
use support::flow::{alice_on_branch, open, review, team, try_merge};
use support::hosted::{Backend, Hosted, PROJECT};
use support::Run;

/// SQL run on the instance's database directly, as its administrator could.
fn tamper(hosted: &Hosted, sql: &str) {
    let url = match &hosted.database {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", hosted.sandbox.path("data").join("custody.db").display()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(custody_store::testing::execute_raw(&url, sql));
}

/// The one reason of a refusal for an unproven fact: its message.
#[track_caller]
fn unproven(run: &Run) -> String {
    assert_eq!(run.code(), Some(1), "expected a refusal: {run:#?}");
    let error = run.json_error();
    let reasons = error["error"]["reasons"].as_array().unwrap_or_else(|| panic!("no reasons in {error}"));
    assert_eq!(reasons.len(), 1, "{error}");
    assert_eq!(reasons[0]["rule"], "integrity.unproven_fact", "{error}");
    reasons[0]["message"].as_str().unwrap_or_default().to_owned()
}

fn a_review_written_into_the_database_does_not_let_alice_merge(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, base) = alice_on_branch(&hosted, "feature");
    let head = work.commit("feature.txt", "unreviewed\n", "Ship it unreviewed");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Unreviewed");
    tamper(
        &hosted,
        &format!(
            "INSERT INTO reviews (change_id, reviewer_id, verdict, head, message, at) \
             SELECT c.id, u.id, 'approve', '{head}', '', 1 FROM changes c, users u WHERE u.name = 'bob'"
        ),
    );
    let why = unproven(&try_merge(&hosted, "alice", number));
    assert!(why.contains("reviews row") && why.contains("bob approve"), "{why}");
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()), "main did not move");
    assert!(hosted.audit_events("change.merge").is_empty(), "nothing merged");
}

fn a_request_for_changes_deleted_from_the_database_does_not_open_the_gate(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, base) = alice_on_branch(&hosted, "feature");
    work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "A feature");
    review(&hosted, "bob", number, "--request-changes");
    review(&hosted, "carol", number, "--approve");
    tamper(&hosted, "DELETE FROM reviews WHERE reviewer_id = (SELECT id FROM users WHERE name = 'bob')");
    let why = unproven(&try_merge(&hosted, "alice", number));
    assert!(why.contains("bob request_changes") && why.contains("deleted around custody"), "{why}");
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()), "main did not move");
}

fn a_token_written_into_the_database_acts_as_nobody(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let secret = "A".repeat(43);
    let digest: String = {
        use sha2::Digest as _;
        sha2::Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    tamper(
        &hosted,
        &format!(
            "INSERT INTO tokens (id, user_id, name, secret_hash, scopes, created_at) \
             SELECT 'forgedtoken1', id, 'forged', '{digest}', 'read,write', 1 FROM users WHERE name = 'bob'"
        ),
    );
    let forged = format_secret(SecretKind::Token, "forgedtoken1", &secret);
    let refused = hosted.as_user("bob", &forged, &["change", "list", PROJECT, "--json"]);
    assert_ne!(refused.code(), Some(0), "a token custody did not make acts as nobody: {refused:#?}");
    assert!(refused.stderr.contains("invalid, expired or revoked token"), "{refused:#?}");
    // bob's own token still works: the forgery took nothing from him.
    hosted.run_as("bob", &["change", "list", PROJECT, "--json"]).expect_code(0);
}

on_both_backends!(
    a_review_written_into_the_database_does_not_let_alice_merge,
    a_request_for_changes_deleted_from_the_database_does_not_open_the_gate,
    a_token_written_into_the_database_acts_as_nobody,
);
