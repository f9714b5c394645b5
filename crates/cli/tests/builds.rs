//! End-to-end tests of builds and the artifact repository: a merge by
//! custody queues a build of the new mainline commit, the builder runs the
//! commit's own build script in the sandbox, stores what it made and signs
//! provenance, and people can only read the result.

#[macro_use]
mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::builds::{
    builder_key, commit_files, custody, finished_build, merge_a_change, pipeline, seed_with, sha256_hex, stored_blobs,
    BUILD_SCRIPT, PIPELINE,
};
use support::flow::{change, merge, review, team};
use support::hosted::{Backend, PROJECT};

/// Runs Python with `script`, or `None` when the packages it needs are not
/// installed outside CI (CI installs them and must run this).
fn python(script: &str, args: &[&str]) -> Option<std::process::Output> {
    let present = Command::new("python3")
        .args(["-c", "import securesystemslib.signer, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(present || !ci, "python3 with securesystemslib and cryptography must be installed when CI=true");
    if !present {
        eprintln!("skipping the independent verification: securesystemslib is not installed");
        return None;
    }
    Some(Command::new("python3").arg("-c").arg(script).args(args).output().expect("run python3"))
}

/// Verifies a DSSE envelope and its in-toto statement with Python's
/// securesystemslib and nothing of custody's: prints the statement.
const VERIFY_PROVENANCE: &str = r#"
import json, sys
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

envelope_path, key_path = sys.argv[1], sys.argv[2]
private = serialization.load_pem_private_key(open(key_path, "rb").read(), password=None)
public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
envelope = Envelope.from_dict(json.load(open(envelope_path)))
keyid = envelope.signatures and list(envelope.signatures)[0]
key = SSlibKey(keyid, "ed25519", "ed25519", {"public": public.hex()})
verified = envelope.verify([key], 1)
assert keyid in verified, verified
assert envelope.payload_type == "application/vnd.in-toto+json", envelope.payload_type
print(json.dumps(json.loads(envelope.payload)))
"#;

fn merged_commit_is_built_into_a_signed_artifact(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let policy = pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]");
    let (work, _) = seed_with(
        &hosted,
        &[(PIPELINE, &policy, false), ("scripts/build.sh", BUILD_SCRIPT, true), ("src/app.txt", "version 1\n", false)],
        "feature",
    );
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
        python(VERIFY_PROVENANCE, &[envelope_file.to_str().expect("UTF-8"), key.to_str().expect("UTF-8")])
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
        let output = python(VERIFY_PROVENANCE, &[envelope_file.to_str().expect("UTF-8"), key.to_str().expect("UTF-8")])
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
    let (work, _) = seed_with(
        &hosted,
        &[(PIPELINE, &policy, false), ("scripts/build.sh", script, true), ("src/app.txt", "version 1\n", false)],
        "feature",
    );
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

on_both_backends! {
    merged_commit_is_built_into_a_signed_artifact,
    a_change_merged_elsewhere_is_not_built,
    a_failing_build_says_why_and_stores_nothing,
}
