//! The API keeps the contract its OpenAPI document states, as an independent
//! tester finds it: Schemathesis, driven by the document the server serves,
//! with every check and the stateful phase, as an admin and as a normal
//! user, each a throwaway identity the fuzzer may lock out of its own token.
//!
//! CI runs a few examples per operation; `bash bench/fuzz_api.sh` the long run.
//!
//! And a client generated from the document by openapi-python-client plays
//! the seed's API steps.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::builds::commit_files;
use support::deploys::{deploy_to, group, pipeline_with_environments, release_managers, seed_deploying, Target};
use support::flow::team;
use support::hosted::{Backend, Hosted, PROJECT};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis");

/// A user with a password, made by the instance's admin.
fn identity(hosted: &Hosted, name: &str, role: &str, password: &str) {
    let token = hosted.add_user(name, role);
    let (status, body) = hosted.api("PUT", "/api/v1/me/password", Some(&token), Some(json!({ "password": password })));
    assert_eq!(status, 204, "{body}");
}

/// Schemathesis against `hosted` as `name`: its whole output, or a failure
/// with it.
fn schemathesis(hosted: &Hosted, name: &str, password: &str, scopes: &str) -> support::Run {
    let present = Command::new("schemathesis").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(present, "schemathesis is not installed: run scripts/setup");
    let examples = std::env::var("CUSTODY_FUZZ_EXAMPLES").unwrap_or_else(|_| "3".to_owned());
    let seed = std::env::var("CUSTODY_FUZZ_SEED").unwrap_or_else(|_| "1".to_owned());
    let mut command = Command::new("schemathesis");
    command
        .current_dir(hosted.sandbox.path(""))
        .env("PYTHONPATH", DIR)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("CUSTODY_FUZZ_URL", &hosted.server.url)
        .env("CUSTODY_FUZZ_NAME", name)
        .env("CUSTODY_FUZZ_PASSWORD", password)
        .env("CUSTODY_FUZZ_SCOPES", scopes)
        .env("NO_COLOR", "1")
        .args(["--config-file", &format!("{DIR}/schemathesis.toml"), "run"])
        .arg(format!("{}/api/v1/openapi.json", hosted.server.url))
        .args(["--checks", "all", "--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", &examples, "--seed", &seed, "--no-color"]);
    support::run_within(command, None, Duration::from_secs(1800))
}

fn passes(run: &support::Run, who: &str) {
    let tail: String = {
        let lines: Vec<&str> = run.stdout.lines().collect();
        lines[lines.len().saturating_sub(400)..].join("\n")
    };
    assert_eq!(run.code(), Some(0), "schemathesis as {who} found failures:\n{tail}\n{}", run.stderr);
    assert!(run.stdout.contains("Stateful"), "the stateful phase did not run:\n{tail}");
    eprintln!(
        "{}",
        run.stdout.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn schemathesis_finds_no_failure_as_an_admin_or_as_a_user() {
    let mut hosted = Hosted::new();
    // The user first: once a second admin exists, new users wait for approval.
    identity(&hosted, "fuzz-user", "write", "a password the fuzzer may change");
    identity(&hosted, "fuzz-admin", "", "another password the fuzzer may change");
    let (status, grant) =
        hosted.api("POST", "/api/v1/groups/admins/members", Some(&hosted.admin), Some(json!({ "user": "fuzz-admin" })));
    assert_eq!(status, 202, "{grant}");

    let as_user = schemathesis(&hosted, "fuzz-user", "a password the fuzzer may change", "read,write");
    passes(&as_user, "a user");
    let as_admin = schemathesis(&hosted, "fuzz-admin", "another password the fuzzer may change", "read,write,admin");
    passes(&as_admin, "an admin");

    // Nothing the fuzzer did broke the audit log.
    hosted.server.stop();
    let mut verify = hosted.sandbox.as_user("auditor");
    verify.args(["audit", "verify", "--data-dir"]).arg(hosted.sandbox.path("data"));
    let verified = support::run(verify);
    assert_eq!(verified.code(), Some(0), "{verified:#?}");
}

#[test]
fn a_client_generated_from_the_document_plays_the_seeds_api_steps() {
    let present = Command::new("openapi-python-client").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(present, "openapi-python-client is not installed: run scripts/setup");
    let hosted = team(Backend::Sqlite).expect("SQLite is never skipped");
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["carol"]);
    group(&hosted, "testers", &["dave"]);
    hosted.add_user("erin", "");
    hosted.as_admin(&["group", "add", "auditors", "erin"]).expect_code(0);
    let target = Target::start();
    let policy = pipeline_with_environments("testers = \"testers\"\n");
    let work = seed_deploying(&hosted, &policy, &deploy_to(&target));
    commit_files(&work, &[("src/app.txt", "version 2\n", false)], "Version 2");
    work.ok(&["push", "-q", "origin", "feature"]);

    let generated = hosted.sandbox.path("generated");
    let mut generate = Command::new("openapi-python-client");
    generate
        .current_dir(hosted.sandbox.path(""))
        .args(["generate", "--url", &format!("{}/api/v1/openapi.json", hosted.server.url), "--output-path"])
        .arg(&generated);
    let made = support::run_within(generate, None, Duration::from_secs(300));
    assert_eq!(made.code(), Some(0), "the generator refused the document: {made:#?}");
    assert!(!made.stdout.contains("Warning") && !made.stderr.contains("Warning"), "{made:#?}");

    let mut story = Command::new("python3");
    story
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/generated_client/seed_story.py"))
        .env("PYTHONPATH", &generated)
        .env("CUSTODY_URL", &hosted.server.url)
        .env("CUSTODY_PROJECT", PROJECT);
    for who in ["alice", "bob", "carol", "dave", "erin"] {
        story.env(format!("CUSTODY_TOKEN_{}", who.to_uppercase()), hosted.token(who));
    }
    let played = support::run_within(story, None, Duration::from_secs(300));
    assert_eq!(played.code(), Some(0), "{played:#?}");
    assert!(played.stdout.contains("the evidence is exported: 200"), "{}", played.stdout);
    let received: Vec<String> = target.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(received, ["/staging?build=1", "/production?build=1", "/staging?build=1"], "{}", played.stdout);
}
