//! Whoever can write the database, without the data directory's keys, tried
//! against the real server: rows written, edited and deleted around custody
//! open no gate and act as nobody, and each refusal names the row.
//!
//! Every scenario runs on both backends.

#[macro_use]
mod support;

use custody_domain::secret::{format_secret, SecretKind};
use support::builds::{finished_build, merge_a_change};
use support::deploys::{
    deployment_reaching, group, pipeline_with_environments, release_managers, seed_deploying, DEPLOY_SCRIPT,
};
use support::flow::{alice_on_branch, open, review, team, try_merge};
use support::hosted::{Backend, PROJECT};
use support::Run;

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
    hosted.tamper(&format!(
        "INSERT INTO reviews (change_id, reviewer_id, verdict, head, message, at) \
             SELECT c.id, u.id, 'approve', '{head}', '', 1 FROM changes c, users u WHERE u.name = 'bob'"
    ));
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
    hosted.tamper("DELETE FROM reviews WHERE reviewer_id = (SELECT id FROM users WHERE name = 'bob')");
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
    hosted.tamper(&format!(
        "INSERT INTO tokens (id, user_id, name, secret_hash, scopes, created_at) \
             SELECT 'forgedtoken1', id, 'forged', '{digest}', 'read,write', 1 FROM users WHERE name = 'bob'"
    ));
    let forged = format_secret(SecretKind::Token, "forgedtoken1", &secret);
    let refused = hosted.as_user("bob", &forged, &["change", "list", PROJECT, "--json"]);
    assert_ne!(refused.code(), Some(0), "a token custody did not make acts as nobody: {refused:#?}");
    assert!(refused.stderr.contains("invalid, expired or revoked token"), "{refused:#?}");
    // bob's own token still works: the forgery took nothing from him.
    hosted.run_as("bob", &["change", "list", PROJECT, "--json"]).expect_code(0);
}

/// The seed's attack: approval and sign-off rows for production written into
/// the database, and the deployment set to `queued`. Nothing runs; the
/// deployment fails saying which rows custody did not write.
fn forged_production_approvals_run_nothing(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["carol"]);
    group(&hosted, "qa", &["dave"]);
    let work = seed_deploying(&hosted, &pipeline_with_environments("testers = \"qa\"\n"), DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    assert_eq!(finished_build(&hosted, 1)["status"], "succeeded");
    assert_eq!(deployment_reaching(&hosted, 1, &["succeeded", "failed"])["status"], "succeeded");
    deployment_reaching(&hosted, 2, &["pending"]);
    // dave, a tester, put among the release managers around custody, cannot
    // approve production.
    hosted.tamper(
        "INSERT INTO group_members (group_id, user_id, grant_id, added_at) \
         SELECT g.id, u.id, 1, 1 FROM groups g, users u WHERE g.name = 'release-managers' AND u.name = 'dave'",
    );
    let approved = hosted.run_as("dave", &["deploy", "approve", PROJECT, "2", "-m", "ship it", "--json"]);
    assert_ne!(approved.code(), Some(0), "{approved:#?}");
    assert!(approved.stderr.contains("group_members") || approved.stdout.contains("group_members"), "{approved:#?}");
    hosted.tamper(
        "INSERT INTO deployment_decisions (deployment_id, user_id, kind, message, at) \
         SELECT d.id, u.id, CASE u.name WHEN 'carol' THEN 'approve' ELSE 'test_passed' END, '', 1 \
         FROM deployments d, users u WHERE d.number = 2 AND u.name IN ('carol', 'dave')",
    );
    hosted.tamper("UPDATE deployments SET status = 'queued' WHERE number = 2");
    let refused = deployment_reaching(&hosted, 2, &["failed", "succeeded"]);
    assert_eq!(refused["status"], "failed", "{refused}");
    assert!(refused["reason"].as_str().is_some_and(|r| r.contains("deployment_decisions")), "{refused}");
    let started: Vec<_> = hosted
        .audit_events("deploy.start")
        .into_iter()
        .filter(|e| e["subject"] == format!("deployment:{PROJECT}/2"))
        .collect();
    assert!(started.is_empty(), "production never started: {started:?}");
}

/// A queued build of a commit custody never merged, written into the
/// database: the builder builds, signs and stores nothing, and says why.
fn a_build_written_into_the_database_is_never_built(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let work = seed_deploying(&hosted, &pipeline_with_environments(""), DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    assert_eq!(finished_build(&hosted, 1)["status"], "succeeded");
    let unmerged = work.commit("src/app.txt", "never reviewed\n", "Unreviewed");
    work.ok(&["push", "-q", "origin", "feature"]);
    hosted.tamper(&format!(
        "INSERT INTO builds (project_id, number, commit_sha, branch, status, queued_at) \
             SELECT id, 2, '{unmerged}', 'main', 'queued', 1 FROM projects"
    ));
    // The builder finds it on its next look for work, and refuses it.
    let refused = finished_build(&hosted, 2);
    assert_eq!(refused["status"], "error", "{refused}");
    assert!(refused["reason"].as_str().is_some_and(|r| r.contains("builds row 2")), "{refused}");
    assert!(refused["artifacts"].as_array().is_some_and(Vec::is_empty), "{refused}");
}

fn an_edited_verdict_or_a_reassigned_push_does_not_let_alice_merge(backend: Backend) {
    let Some(mut hosted) = team(backend) else { return };
    let (work, base) = alice_on_branch(&hosted, "feature");
    let head = work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "A feature");
    review(&hosted, "bob", number, "--request-changes");
    // bob's request for changes turned into an approval.
    hosted.tamper("UPDATE reviews SET verdict = 'approve'");
    let why = unproven(&try_merge(&hosted, "alice", number));
    assert!(why.contains("bob approve") && why.contains("edited around custody"), "{why}");
    hosted.tamper("UPDATE reviews SET verdict = 'request_changes'");
    // alice's push given to carol, so that alice could approve her own work.
    review(&hosted, "bob", number, "--approve");
    hosted.tamper("UPDATE pushes SET pusher_id = (SELECT id FROM users WHERE name = 'carol')");
    // A process that starts now reads the pushes anew, and proves them.
    hosted.restart_with(&[]);
    let why = unproven(&try_merge(&hosted, "alice", number));
    assert!(why.contains(&format!("commits row {head}")), "{why}");
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()), "main did not move");
}

on_both_backends!(
    a_review_written_into_the_database_does_not_let_alice_merge,
    a_request_for_changes_deleted_from_the_database_does_not_open_the_gate,
    a_token_written_into_the_database_acts_as_nobody,
    forged_production_approvals_run_nothing,
    a_build_written_into_the_database_is_never_built,
    an_edited_verdict_or_a_reassigned_push_does_not_let_alice_merge,
);
