//! Workers that share nothing with the server: each in its own directory,
//! with the instance's data directory hidden from it, registered by a
//! grant with its own key and credential. They build and deploy the seed's
//! story and their evidence verifies offline; a worker killed mid-build
//! hands the build to another; a revoked worker's results are refused.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::builds::{commit_files, finished_build, merge_a_change, pipeline, seed_build};
use support::deploys::{
    deployment_reaching, pipeline_with_environments, release_managers, seed_deploying, DEPLOY_SCRIPT,
};
use support::flow::*;
use support::hosted::*;
use support::*;

/// `custody worker init` in a directory of its own, then registered by
/// the admin and approved by carol: the worker's directory.
fn registered_worker(hosted: &Hosted, name: &str, role: &str) -> PathBuf {
    let dir = hosted.sandbox.path(&format!("worker-{name}"));
    let mut init = hosted.sandbox.as_user(name);
    init.args(["worker", "init", "--dir", dir.to_str().unwrap(), "--name", name, "--role", role, "--json"]);
    let made = run(init).json();
    let digest = made["credential_sha256"].as_str().expect("a credential digest").to_owned();
    let public = dir.join("worker.pub");
    let asked = hosted
        .as_admin(&[
            "worker",
            "register",
            name,
            "--role",
            role,
            "--public-key",
            public.to_str().unwrap(),
            "--credential-sha256",
            &digest,
            "--json",
        ])
        .json();
    assert_eq!(asked["status"], "pending", "registering a worker is a grant: {asked}");
    let id = asked["id"].as_i64().expect("a grant id").to_string();
    approve_as_carol(hosted, &id);
    assert!(!dir.join("custody.db").exists() && !dir.join("keys").exists(), "nothing of the instance is there");
    dir
}

fn approve_as_carol(hosted: &Hosted, grant: &str) {
    let mut command = hosted.sandbox.as_user("carol");
    command.args(["grant", "approve", grant]);
    run(command).expect_code(0);
}

/// `custody worker run` for the worker in `dir`, in a mount namespace
/// where the instance's data directory is an empty directory: it reaches
/// the instance through its URL alone.
fn start_worker(hosted: &Hosted, dir: &std::path::Path) -> Server {
    let data = hosted.sandbox.path("data");
    let mut command = Command::new("bwrap");
    command
        .args(["--die-with-parent", "--dev-bind", "/", "/", "--tmpfs"])
        .arg(&data)
        .arg("--")
        .arg(BIN)
        .args(["worker", "run", "--server", &hosted.server.url, "--dir"])
        .arg(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .current_dir(dir);
    Server::start_announced(command, "worker ")
}

fn build_worker(hosted: &Hosted, number: i64) -> String {
    finished_build(hosted, number)["worker"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn workers_sharing_nothing_build_and_deploy_the_story_and_its_evidence_verifies() {
    let hosted = Hosted::without_builders(Backend::Sqlite).expect("SQLite is never skipped");
    hosted.add_user("bob", "write");
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["dave"]);
    hosted.second_admin("carol");
    let builder = registered_worker(&hosted, "builder-1", "builder");
    let deployer = registered_worker(&hosted, "deployer-1", "deployer");
    let _builder = start_worker(&hosted, &builder);
    let _deployer = start_worker(&hosted, &deployer);

    let work = seed_deploying(&hosted, &pipeline_with_environments(""), DEPLOY_SCRIPT);
    let merged = merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["commit"], merged.as_str(), "{build}");
    assert_eq!(build["worker"], "worker/builder-1", "{build}");
    let digest = build["artifacts"][0]["digest"].as_str().expect("a digest").to_owned();
    let log = hosted.run_as("alice", &["build", "logs", PROJECT, "1"]).expect_code(0).stdout;
    assert!(log.contains(&format!("built payments at {merged}")), "the worker streamed its log: {log}");

    let staging = deployment_reaching(&hosted, 1, &["succeeded", "failed"]);
    assert_eq!(staging["status"], "succeeded", "{staging}");
    let approved = hosted.run_as("dave", &["deploy", "approve", PROJECT, "2", "--json"]).json();
    assert_eq!(approved["gate"]["open"], true, "{approved}");
    let production = deployment_reaching(&hosted, 2, &["succeeded", "failed"]);
    assert_eq!(production["status"], "succeeded", "{production}");
    let log = hosted.run_as("alice", &["deploy", "log", PROJECT, "2"]).expect_code(0).stdout;
    assert!(log.contains("deploying to production build 1") && log.contains(&digest), "{log}");

    // The evidence names each worker's own key, and verifies offline
    // against the trust root, where each is one more key of its role.
    let trust = hosted.sandbox.path("trust.json");
    hosted.as_admin(&["trust", "export", "-o", trust.to_str().unwrap()]).expect_code(0);
    let roots: Value = serde_json::from_str(&std::fs::read_to_string(&trust).unwrap()).unwrap();
    let keys = roots["keys"].as_array().expect("keys");
    for (role, dir) in [("builder", &builder), ("deployer", &deployer)] {
        let public = std::fs::read_to_string(dir.join("worker.pub")).unwrap();
        let of_role: Vec<&Value> = keys.iter().filter(|k| k["role"] == role).collect();
        assert_eq!(of_role.len(), 2, "the instance's {role} key and the worker's: {roots}");
        assert!(of_role.iter().any(|k| k["public_key"] == public.as_str()), "{roots}");
    }
    let bundle = hosted.sandbox.path("bundle.json");
    hosted
        .as_admin(&["evidence", "export", PROJECT, "--deployment", "2", "-o", bundle.to_str().unwrap()])
        .expect_code(0);
    let mut verify = hosted.sandbox.as_user("auditor");
    verify.args(["verify", bundle.to_str().unwrap(), "--trust", trust.to_str().unwrap(), "--json"]);
    let report = run(verify);
    assert_eq!(report.code(), Some(0), "{report:#?}");
}

#[test]
fn a_workers_credential_reaches_only_its_own_jobs_and_never_pushes() {
    let hosted = Hosted::without_builders(Backend::Sqlite).expect("SQLite is never skipped");
    hosted.second_admin("carol");
    let builder = registered_worker(&hosted, "builder-1", "builder");
    let credential = std::fs::read_to_string(builder.join("credential")).expect("the credential");
    let bearer = format!("Bearer {}", credential.trim());
    let url = &hosted.server.url;
    let post = |path: &str, authorization: &str| {
        http_send(
            url,
            "POST",
            path,
            &[("Authorization", authorization), ("Content-Type", "application/json")],
            Some(b"{}"),
        )
    };

    // A builder takes no deployment, whose order would carry secrets.
    let refused = post("/api/v1/worker/deployments/lease", &bearer);
    assert_eq!(refused.status, 403, "{}", refused.body);
    // A person's token is no worker's credential, nor is a guessed one.
    assert_eq!(post("/api/v1/worker/builds/lease", &format!("Bearer {}", hosted.alice)).status, 401);
    let guessed = format!("Bearer custody-worker.builder-1.{}", "A".repeat(43));
    assert_eq!(post("/api/v1/worker/builds/lease", &guessed).status, 401);
    // A ticket the server did not seal for this worker reports nothing.
    let forged = post_json(url, "/api/v1/worker/builds/heartbeat", &bearer, r#"{"ticket":"AAAA.AAAA"}"#);
    assert_eq!(forged.status, 403, "{}", forged.body);

    // With no job of the project, the worker cannot even read it; it never pushes.
    let git = |service: &str| {
        let path = format!("/{PROJECT}.git/info/refs?service={service}");
        http_request(url, &path, &[("Authorization", &bearer)]).status
    };
    assert_eq!(git("git-upload-pack"), 404);
    assert_eq!(git("git-receive-pack"), 403);
}

fn post_json(url: &str, path: &str, authorization: &str, body: &str) -> HttpAnswer {
    let headers = [("Authorization", authorization), ("Content-Type", "application/json")];
    http_send(url, "POST", path, &headers, Some(body.as_bytes()))
}

#[test]
fn a_killed_worker_hands_its_build_to_another_and_a_revoked_worker_is_refused() {
    let hosted = Hosted::without_builders(Backend::Sqlite).expect("SQLite is never skipped");
    hosted.add_user("bob", "write");
    hosted.second_admin("carol");
    let first = registered_worker(&hosted, "first", "builder");
    let second = registered_worker(&hosted, "second", "builder");
    let slow = "#!/bin/sh\nset -e\necho started\nsleep 6\nmkdir -p dist\ntar -czf dist/app.tar.gz src\n";
    let work = seed_build(&hosted, &pipeline("scripts/build.sh", "[\"dist/*\"]"), slow);

    // The first worker takes build 1 and is killed while it runs.
    let mut killed = start_worker(&hosted, &first);
    merge_a_change(&hosted, &work);
    let running = eventually(|| {
        let shown = hosted.run_as("alice", &["build", "show", PROJECT, "1", "--json"]).json();
        (shown["status"] == "running").then_some(shown)
    })
    .expect("build 1 starts");
    assert_eq!(running["worker"], "worker/first", "{running}");
    killed.kill();

    // Its lease runs out and the second worker builds it, once.
    let _second = start_worker(&hosted, &second);
    let build = finished_build_within(&hosted, 1, 90);
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["worker"], "worker/second", "{build}");
    assert_eq!(build["attempt"], 2, "{build}");
    let log = hosted.run_as("alice", &["build", "logs", PROJECT, "1"]).expect_code(0).stdout;
    assert!(log.contains("attempt 2 on worker/second"), "{log}");

    // The second worker's key is revoked while it builds build 2: what it
    // reports afterwards is refused, and nothing it sends is recorded.
    commit_files(&work, &[("src/app.txt", "version 3\n", false)], "Version 3");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Version 3");
    review(&hosted, "bob", number, "--approve");
    merge(&hosted, "alice", number);
    eventually(|| {
        let shown = hosted.run_as("alice", &["build", "show", PROJECT, "2", "--json"]).json();
        (shown["status"] == "running" && shown["worker"] == "worker/second").then_some(())
    })
    .expect("the second worker takes build 2");
    let workers = hosted.as_admin(&["worker", "list", "--json"]).json();
    let key = workers
        .as_array()
        .expect("a list")
        .iter()
        .find(|w| w["name"] == "second")
        .and_then(|w| w["key_id"].as_str())
        .expect("the second worker's key")
        .to_owned();
    let asked = hosted.as_admin(&["key", "revoke", &key, "--reason", "its host was lost", "--json"]).json();
    approve_as_carol(&hosted, &asked["id"].as_i64().expect("a grant id").to_string());
    // Its script ends within six seconds of the lease; its report comes after.
    std::thread::sleep(std::time::Duration::from_secs(10));
    let shown = hosted.run_as("alice", &["build", "show", PROJECT, "2", "--json"]).json();
    assert_eq!(shown["status"], "running", "the revoked worker's success was not recorded: {shown}");
    assert!(shown["artifacts"].as_array().is_none_or(Vec::is_empty), "{shown}");

    // A worker not revoked takes it over once the lease runs out.
    let third = registered_worker(&hosted, "third", "builder");
    let _third = start_worker(&hosted, &third);
    let build = finished_build_within(&hosted, 2, 90);
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build_worker(&hosted, 2), "worker/third");
    let listed = hosted.as_admin(&["worker", "list", "--json"]).json();
    let second = listed.as_array().unwrap().iter().find(|w| w["name"] == "second").cloned().unwrap();
    assert!(second["revoked"].as_str().is_some_and(|r| r.contains("its host was lost")), "{listed}");
}

/// Waits up to `seconds` for build `number` to finish.
fn finished_build_within(hosted: &Hosted, number: i64, seconds: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        let shown = hosted.run_as("alice", &["build", "show", PROJECT, &number.to_string(), "--json"]).json();
        if !matches!(shown["status"].as_str(), Some("queued" | "running")) || std::time::Instant::now() > deadline {
            return shown;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}
