//! End-to-end tests of builds and the artifact repository: a merge by
//! custody queues a build of the new mainline commit, the builder runs the
//! commit's own build script in the sandbox, stores what it made and signs
//! provenance, and people can only read the result.

#[macro_use]
mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::builds::{
    builder_key, commit_files, custody, finished_build, merge_a_change, pipeline, seed_build, seed_with, sha256_hex,
    stored_blobs, BUILD_SCRIPT, PIPELINE,
};
use support::flow::{change, merge, review, team};
use support::hosted::{Backend, Hosted, PROJECT};
use support::verify::{python, VERIFY_ENVELOPE};

fn merged_commit_is_built_into_a_signed_artifact(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let policy = pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]");
    let work = seed_build(&hosted, &policy, BUILD_SCRIPT);
    let merge_commit = merge_a_change(&hosted, &work);

    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["commit"], merge_commit.as_str(), "{build}");
    assert_eq!(build["change"], 1, "{build}");
    assert_eq!(build["network"], false, "{build}");
    assert_eq!(build["pipeline_digest"], sha256_hex(policy.as_bytes()).as_str(), "{build}");
    assert_eq!(build["script_digest"], sha256_hex(BUILD_SCRIPT.as_bytes()).as_str(), "{build}");
    let artifacts = build["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 1, "{build}");
    assert_eq!(artifacts[0]["name"], "dist/app.tar.gz", "{build}");
    let digest = artifacts[0]["digest"].as_str().expect("a digest").to_owned();

    // The log shows what the script printed, with the variables it was given.
    let log = custody(&hosted, &["build", "logs", PROJECT, "1"]).expect_code(0).stdout;
    assert!(log.contains(&format!("built {PROJECT} at {merge_commit}")), "{log}");

    // Anyone who may read the project downloads it; the digest checks out.
    let file = hosted.sandbox.path("app.tar.gz");
    custody(&hosted, &["artifact", "get", PROJECT, &digest, "-o", file.to_str().expect("UTF-8")]).expect_code(0);
    let bytes = std::fs::read(&file).expect("the downloaded artifact");
    assert_eq!(sha256_hex(&bytes), digest);
    assert_eq!(&bytes[..2], [0x1f, 0x8b], "a gzip file");
    let listed = custody(&hosted, &["artifact", "list", PROJECT, "--json"]).json();
    assert_eq!(listed[0]["digest"], digest.as_str(), "{listed}");
    assert_eq!(listed[0]["commit"], merge_commit.as_str(), "{listed}");

    // The provenance verifies with an implementation that is not custody's.
    let envelope = custody(&hosted, &["artifact", "provenance", PROJECT, &digest, "--json"]).json();
    let envelope_file = hosted.sandbox.path("provenance.json");
    std::fs::write(&envelope_file, envelope.to_string()).expect("write the envelope");
    let key = builder_key(&hosted);
    if let Some(output) =
        python(VERIFY_ENVELOPE, &[envelope_file.to_str().expect("UTF-8"), key.to_str().expect("UTF-8")])
    {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "securesystemslib refused the provenance: {stderr}");
        let statement: Value = serde_json::from_slice(&output.stdout).expect("the statement as JSON");
        assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1", "{statement}");
        assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1", "{statement}");
        assert_eq!(statement["subject"][0]["name"], "dist/app.tar.gz", "{statement}");
        assert_eq!(statement["subject"][0]["digest"]["sha256"], digest.as_str(), "{statement}");
        let definition = &statement["predicate"]["buildDefinition"];
        let dependencies = definition["resolvedDependencies"].as_array().expect("dependencies");
        assert_eq!(dependencies[0]["digest"]["gitCommit"], merge_commit.as_str(), "{statement}");
        assert_eq!(dependencies[1]["digest"]["sha256"], sha256_hex(policy.as_bytes()).as_str(), "{statement}");
        assert_eq!(dependencies[2]["digest"]["sha256"], sha256_hex(BUILD_SCRIPT.as_bytes()).as_str(), "{statement}");
        assert_eq!(definition["internalParameters"]["network"], false, "{statement}");
        let run = &statement["predicate"]["runDetails"];
        assert!(run["builder"]["id"].as_str().is_some_and(|id| id.ends_with("/builder")), "{statement}");
        assert!(run["metadata"]["invocationId"].as_str().is_some_and(|id| id.contains("/builds/1/")), "{statement}");
        assert!(run["metadata"]["startedOn"].is_string() && run["metadata"]["finishedOn"].is_string());

        // One altered byte of the payload, and the signature no longer holds.
        let mut tampered = envelope.clone();
        let payload = tampered["payload"].as_str().expect("a payload").to_owned();
        let flipped =
            if payload.starts_with('e') { payload.replacen('e', "f", 1) } else { format!("e{}", &payload[1..]) };
        tampered["payload"] = Value::String(flipped);
        std::fs::write(&envelope_file, tampered.to_string()).expect("write the envelope");
        let output = python(VERIFY_ENVELOPE, &[envelope_file.to_str().expect("UTF-8"), key.to_str().expect("UTF-8")])
            .expect("python ran before");
        assert!(!output.status.success(), "an altered payload verified");
    }

    // The audit log tells the build's story.
    let started = hosted.audit_events("build.start");
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["subject"], format!("build:{PROJECT}/1"));
    let finished = hosted.audit_events("build.finish");
    assert_eq!(finished[0]["details"]["status"], "succeeded", "{finished:?}");
    assert_eq!(finished[0]["details"]["artifacts"][0]["sha256"], digest.as_str(), "{finished:?}");
    let merged = hosted.audit_events("change.merge");
    assert_eq!(merged[0]["details"]["build"], 1, "{merged:?}");
}

fn a_change_merged_elsewhere_is_not_built(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let policy = pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]");
    let (work, _) = seed_with(
        &hosted,
        &[(PIPELINE, &policy, false), ("scripts/build.sh", BUILD_SCRIPT, true), ("src/app.txt", "version 1\n", false)],
        "release",
    );
    work.ok(&["push", "-q", "origin", "release"]);
    work.ok(&["checkout", "-q", "-b", "fix"]);
    commit_files(&work, &[("src/app.txt", "a fix\n", false)], "A fix");
    work.ok(&["push", "-q", "origin", "fix"]);
    let made = change(
        &hosted,
        "alice",
        &["open", PROJECT, "--source", "fix", "--target", "release", "--title", "Fix", "--json"],
    )
    .json();
    let number = made["number"].as_i64().expect("a number");
    review(&hosted, "bob", number, "--approve");
    merge(&hosted, "alice", number);
    let builds = custody(&hosted, &["build", "list", PROJECT, "--json"]).json();
    assert_eq!(builds, Value::Array(vec![]), "only the default branch is built: {builds}");
}

fn a_failing_build_says_why_and_stores_nothing(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let script = "#!/bin/sh\nmkdir -p dist\necho partial > dist/app.tar.gz\necho 'tests failed' >&2\nexit 3\n";
    let policy = pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]");
    let work = seed_build(&hosted, &policy, script);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["exit_code"], 3, "{build}");
    assert!(build["reason"].as_str().is_some_and(|r| r.contains("exited with code 3")), "{build}");
    assert_eq!(build["artifacts"], Value::Array(vec![]), "{build}");
    let log = custody(&hosted, &["build", "logs", PROJECT, "1"]).expect_code(0).stdout;
    assert!(log.contains("tests failed"), "{log}");
    let shown = custody(&hosted, &["build", "show", PROJECT, "1"]).expect_code(0).stdout;
    assert!(shown.contains("failed") && shown.contains("exited with code 3"), "{shown}");
    assert_eq!(stored_blobs(&hosted.sandbox.path("data")), Vec::<PathBuf>::new());
}

fn a_running_builds_log_streams_and_a_timeout_kills_it(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let script = "#!/bin/sh\necho first line\nsleep 60\necho never printed\n";
    let policy = format!("{}timeout = \"4s\"\n", pipeline("scripts/build.sh", "[\"dist/*\"]"));
    let work = seed_build(&hosted, &policy, script);
    merge_a_change(&hosted, &work);
    // The first line shows while the build still runs.
    let mut seen_running = false;
    for _ in 0..300 {
        let log = custody(&hosted, &["build", "logs", PROJECT, "1"]).expect_code(0).stdout;
        let build = custody(&hosted, &["build", "show", PROJECT, "1", "--json"]).json();
        if log.contains("first line") {
            assert_eq!(build["status"], "running", "the log is written as the script runs: {build}");
            seen_running = true;
            break;
        }
        assert!(matches!(build["status"].as_str(), Some("queued" | "running")), "{build}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(seen_running, "the first line never reached the log while the build ran");
    // Following the log returns once the build is over.
    let followed = custody(&hosted, &["build", "logs", PROJECT, "1", "-f"]).expect_code(0).stdout;
    assert!(followed.starts_with("first line"), "{followed}");
    assert!(!followed.contains("never printed"), "{followed}");
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "failed", "{build}");
    assert!(build["reason"].as_str().is_some_and(|r| r.contains("timeout of 4s")), "{build}");
}

/// With artifacts in an S3 bucket (moto's server on loopback), a merge's
/// artifact lands in the bucket; bytes altered there behind custody's back
/// are refused on download, naming the digest, and the scrub reports them.
#[test]
fn an_artifact_altered_in_the_s3_bucket_is_refused_and_reported() {
    let Some(moto) = custody_blobs::testing::moto() else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(moto.create_bucket("artifacts"));
    let mut env: Vec<(String, String)> = moto.vars();
    env.push(("CUSTODY_BLOB_STORE".into(), "s3://artifacts/custody".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let hosted = Hosted::on_with(Backend::Sqlite, &env).expect("SQLite is never skipped");
    hosted.add_user("bob", "write");
    let policy = pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]");
    let work = seed_build(&hosted, &policy, BUILD_SCRIPT);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    let digest = build["artifacts"][0]["digest"].as_str().expect("a digest").to_owned();
    assert_eq!(stored_blobs(&hosted.sandbox.path("data")), Vec::<PathBuf>::new(), "nothing on local disk");

    // The object is in the bucket under its digest, and downloads intact.
    let blobs =
        custody_blobs::Blobs::from_url_and_vars("s3://artifacts/custody", &hosted.sandbox.path("unused"), moto.vars())
            .expect("the bucket");
    let key = object_store::path::Path::from(blobs.key(&digest.parse().expect("a digest")));
    let raw = moto.raw("artifacts");
    let original = runtime.block_on(async {
        use object_store::ObjectStore;
        raw.get(&key).await.expect("the object").bytes().await.expect("its bytes")
    });
    assert_eq!(sha256_hex(&original), digest);
    let file = hosted.sandbox.path("app.tar.gz");
    let file_arg = file.to_str().expect("UTF-8").to_owned();
    custody(&hosted, &["artifact", "get", PROJECT, &digest, "-o", &file_arg]).expect_code(0);
    std::fs::remove_file(&file).expect("remove the download");

    // Someone with the bucket's credentials swaps the bytes.
    runtime.block_on(async {
        use object_store::ObjectStore;
        let mut altered = original.to_vec();
        altered[10] ^= 0xff;
        raw.put(&key, altered.into()).await.expect("overwrite the object");
    });
    let refused = custody(&hosted, &["artifact", "get", PROJECT, &digest, "-o", &file_arg]);
    assert_eq!(refused.code(), Some(1), "{refused:#?}");
    assert!(refused.stderr.contains(&digest), "the refusal names the digest: {refused:#?}");
    assert!(!file.exists(), "nothing was written");
    let scrub = hosted.as_admin(&["artifact", "verify", "--all", "--json"]);
    assert_eq!(scrub.code(), Some(1), "{scrub:#?}");
    let report: Value = serde_json::from_str(scrub.stdout.trim()).expect("a JSON report");
    let damaged: Vec<&Value> = report.as_array().expect("a list").iter().filter(|c| c["state"] == "damaged").collect();
    assert_eq!(damaged.len(), 1, "{report}");
    assert_eq!(damaged[0]["digest"], digest.as_str(), "{report}");
}

/// Two `custody worker` processes share one PostgreSQL database and 200
/// queued builds: every build runs exactly once, and both workers work.
#[test]
fn two_workers_on_postgres_run_each_of_200_builds_exactly_once() {
    let Some(hosted) = Hosted::without_builders(Backend::Postgres) else { return };
    let url = hosted.database.as_ref().expect("a PostgreSQL database").url.clone();
    let policy = pipeline("scripts/build.sh", "[\"out.txt\"]");
    let script = "#!/bin/sh\necho $CUSTODY_BUILD > out.txt\n";
    let (_work, base) = seed_with(&hosted, &[(PIPELINE, &policy, false), ("scripts/build.sh", script, true)], "unused");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let project = custody_domain::ProjectName::parse(PROJECT).expect("a project name");
    let store = runtime
        .block_on(custody_store::Store::open(
            &url,
            custody_server::instance::DataDir::new(hosted.sandbox.path("data"))
                .ledger_secrets()
                .expect("the instance's keys"),
        ))
        .expect("the store");
    runtime.block_on(async {
        for _ in 0..200 {
            store.queue_build(&project, &base, "main").await.expect("queue a build");
        }
    });

    let data = hosted.sandbox.path("data");
    let worker = |name: &str| {
        let mut command = hosted.sandbox.as_user(name);
        command.arg("worker").arg("--data-dir").arg(&data).args(["--database-url", &url]);
        support::Server::start_announced(command, "worker ")
    };
    let mut workers = [worker("worker-1"), worker("worker-2")];
    let mut counts = Vec::new();
    for _ in 0..1200 {
        counts = runtime.block_on(store.build_counts(&project)).expect("build counts");
        if counts == [("succeeded".to_owned(), 200)] {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(counts, [("succeeded".to_owned(), 200)], "workers: {} / {}", workers[0].stderr(), workers[1].stderr());

    let mut by_worker = std::collections::BTreeMap::<String, usize>::new();
    for number in 1..=200 {
        let attempts = runtime.block_on(store.build_attempts(&project, number)).expect("attempts");
        assert_eq!(attempts.len(), 1, "build {number} ran {} times: {attempts:?}", attempts.len());
        *by_worker.entry(attempts[0].clone()).or_default() += 1;
    }
    assert_eq!(by_worker.len(), 2, "both workers took builds: {by_worker:?}");
    // Each build stored what its own run wrote.
    let artifacts = custody(&hosted, &["artifact", "list", PROJECT, "--json"]).json();
    let artifacts = artifacts.as_array().expect("a list");
    assert_eq!(artifacts.len(), 200);
    for artifact in artifacts {
        let expected = sha256_hex(format!("{}\n", artifact["build"]).as_bytes());
        assert_eq!(artifact["digest"], expected.as_str(), "{artifact}");
    }
    for worker in &mut workers {
        let status = worker.stop().expect("the worker stops on SIGTERM");
        assert!(status.success(), "{status:?}: {}", worker.stderr());
    }
    runtime.block_on(store.close());
}

/// The value of the metric line that starts with `name` (labels included).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

fn operators_see_the_queued_build_its_age_and_the_ledger_in_the_metrics(backend: Backend) {
    let Some(hosted) = Hosted::without_builders(backend) else { return };
    hosted.add_user("bob", "write");
    let work = seed_build(&hosted, &pipeline("scripts/build.sh", "[\"dist/*\"]"), BUILD_SCRIPT);
    let (_, before) = support::http_get(&hosted.server.url, "/metrics");
    assert_eq!(metric(&before, "custody_work_waiting{kind=\"build\",status=\"queued\"}"), Some(0.0), "{before}");
    merge_a_change(&hosted, &work);
    // No builder runs here: the build waits, and the metrics say so (they
    // read the store at most every 2 s, and the build must be a second old).
    let queued = "custody_work_waiting{kind=\"build\",status=\"queued\"}";
    let aged = "custody_work_oldest_age_seconds{kind=\"build\",status=\"queued\"}";
    let text = support::flow::eventually(|| {
        let (status, text) = support::http_get(&hosted.server.url, "/metrics");
        assert_eq!(status, 200);
        (metric(&text, queued) == Some(1.0) && metric(&text, aged).is_some_and(|age| age >= 1.0)).then_some(text)
    })
    .unwrap_or_else(|| support::http_get(&hosted.server.url, "/metrics").1);
    assert_eq!(metric(&text, queued), Some(1.0), "{text}");
    let age = metric(&text, aged).expect("an age");
    assert!(age >= 1.0, "the queued build's age is {age}: {text}");
    assert_eq!(metric(&text, "custody_expired_leases{kind=\"build\"}"), Some(0.0), "{text}");
    let events = metric(&text, "custody_ledger_events").expect("the ledger's size");
    assert!(events > metric(&before, "custody_ledger_events").unwrap_or(0.0), "{text}");
    assert!(metric(&text, "custody_checkpoint_age_seconds").is_some(), "{text}");
}

#[test]
fn twenty_changes_merged_through_two_servers_are_each_built_once_by_two_workers_and_the_ledger_verifies() {
    let Some(hosted) = Hosted::without_builders(Backend::Postgres) else { return };
    let bob = hosted.add_user("bob", "write");
    let database = hosted.database.as_ref().expect("PostgreSQL").url.clone();
    let (work, base) = seed_with(
        &hosted,
        &[(PIPELINE, &pipeline("scripts/build.sh", "[\"dist/*\"]"), false), ("scripts/build.sh", BUILD_SCRIPT, true)],
        "unused",
    );

    // A second server with the instance's keys, database, repository
    // directory and blob store, and no builders either.
    let (first, second) = (hosted.sandbox.path("data"), hosted.sandbox.path("second"));
    std::fs::create_dir_all(second.join("keys")).expect("a keys directory");
    for key in std::fs::read_dir(first.join("keys")).expect("the keys") {
        let key = key.expect("a key").path();
        std::fs::copy(&key, second.join("keys").join(key.file_name().expect("a name"))).expect("a key copied");
    }
    for shared in ["repositories", "blobs"] {
        std::os::unix::fs::symlink(first.join(shared), second.join(shared)).expect("shared storage");
    }
    let other = hosted.sandbox.serve_with("second", Some(&database), &[], &["--builders", "0"]);
    let servers = [&hosted.server, &other];
    let worker = |name: &str, data: &std::path::Path| {
        let mut command = hosted.sandbox.as_user(name);
        command.arg("worker").arg("--data-dir").arg(data).args(["--database-url", &database]);
        support::Server::start_announced(command, "worker ")
    };
    let _workers = [worker("worker-1", &first), worker("worker-2", &second)];

    // Each change pushed, opened, approved and merged through the servers in
    // turn: all through the first, then all through the second, and so on.
    let mut merged = Vec::new();
    for i in 0..20 {
        let server = servers[i % 2];
        let remote = format!("http://alice:{}@127.0.0.1:{}/{PROJECT}.git", hosted.alice, server.port());
        let branch = format!("change-{i}");
        work.ok(&["checkout", "-q", "-B", &branch, &base]);
        let head = commit_files(&work, &[(&format!("src/part-{i}.txt"), &format!("part {i}\n"), false)], "A part");
        work.ok(&["push", "-q", &remote, &format!("HEAD:refs/heads/{branch}")]);
        let as_who = |who: &str, token: &str, args: &[&str]| hosted.sandbox.client(who, server, token, args);
        let opened = as_who(
            "alice",
            &hosted.alice,
            &["change", "open", PROJECT, "--source", &branch, "--title", "A part", "--json"],
        );
        let number = opened.json()["number"].as_i64().expect("a number").to_string();
        as_who("bob", &bob, &["change", "review", PROJECT, &number, "--approve", "--head", &head]).expect_code(0);
        let done = as_who("alice", &hosted.alice, &["change", "merge", PROJECT, &number, "--json"]).json();
        merged.push(done["change"]["merge_commit"].as_str().expect("a merge commit").to_owned());
    }

    // Every merge built exactly once, by one of the two workers.
    let mut builds = Vec::new();
    for _ in 0..1200 {
        builds = custody(&hosted, &["build", "list", PROJECT, "--json"]).json().as_array().cloned().unwrap_or_default();
        if builds.len() >= 20 && builds.iter().all(|b| b["status"] == "succeeded") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(builds.len(), 20, "{builds:#?}");
    for commit in &merged {
        let of_commit: Vec<_> = builds.iter().filter(|b| b["commit"] == commit.as_str()).collect();
        assert_eq!(of_commit.len(), 1, "merge {commit} built {} times", of_commit.len());
        assert_eq!(of_commit[0]["status"], "succeeded", "{}", of_commit[0]);
        assert_eq!(of_commit[0]["attempt"], 1, "{}", of_commit[0]);
    }
    // One mainline: both servers serve the last merge as main.
    for server in servers {
        let remote = format!("http://alice:{}@127.0.0.1:{}/{PROJECT}.git", hosted.alice, server.port());
        let main = work.ok(&["ls-remote", &remote, "refs/heads/main"]);
        assert!(main.starts_with(merged.last().expect("merges")), "{main}");
    }
    // Each worker's start is in the ledger, with the bubblewrap it runs jobs in.
    let starts = hosted.as_admin(&["audit", "log", "--action", "instance.start", "--json"]).json();
    let workers: Vec<_> = starts
        .as_array()
        .expect("a list")
        .iter()
        .filter(|e| e["subject"].as_str().is_some_and(|s| s.starts_with("worker:")))
        .collect();
    assert_eq!(workers.len(), 2, "{starts:#?}");
    assert!(workers.iter().all(|e| e["details"]["configuration"]["bubblewrap"].is_string()), "{workers:#?}");
    // The ledger is gapless and verifies, with each host's anchor.
    for data in [&first, &second] {
        let mut command = hosted.sandbox.as_user("auditor");
        command.args(["audit", "verify", "--database-url", &database, "--data-dir"]).arg(data);
        let verified = support::run(command);
        assert!(verified.status.success(), "{}: {} {}", data.display(), verified.stdout, verified.stderr);
    }
}

on_both_backends! {
    operators_see_the_queued_build_its_age_and_the_ledger_in_the_metrics,
    merged_commit_is_built_into_a_signed_artifact,
    a_change_merged_elsewhere_is_not_built,
    a_failing_build_says_why_and_stores_nothing,
    a_running_builds_log_streams_and_a_timeout_kills_it,
}
