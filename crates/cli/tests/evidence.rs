//! End-to-end tests of offline evidence: a change written by alice,
//! reviewed by bob, built by custody, deployed to staging on its own and to
//! production after dave signed off the tests and carol approved. The
//! bundle of that production deployment verifies on its own against the
//! trust file, with no server; each kind of tampering makes it fail with a
//! reason naming what is wrong; and an implementation that is not custody's
//! checks the same envelopes and proofs.

#[macro_use]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use custody_formats::{Envelope, KeyRole, ServiceKey};
use serde_json::{json, Value};
use support::builds::{custody, finished_build, merge_a_change};
use support::deploys::{
    deployment_reaching, group, pipeline_with_environments, release_managers, seed_deploying, DEPLOY_SCRIPT,
};
use support::flow::team;
use support::hosted::{Backend, Hosted, PROJECT};
use support::{run, Run};

/// The story up to a production deployment: its number and the artifact's digest.
fn released(hosted: &Hosted) -> (i64, String) {
    hosted.add_user("dave", "write");
    release_managers(hosted, &["carol"]);
    group(hosted, "qa", &["dave"]);
    // Staging after every build; production after staging, with an
    // approval from release-managers and a test sign-off from qa.
    let work = seed_deploying(hosted, &pipeline_with_environments("testers = \"qa\"\n"), DEPLOY_SCRIPT);
    merge_a_change(hosted, &work);
    let build = finished_build(hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    let digest = build["artifacts"][0]["digest"].as_str().expect("a digest").to_owned();
    let staging = deployment_reaching(hosted, 1, &["succeeded", "failed"]);
    assert_eq!(staging["status"], "succeeded", "{staging}");
    deployment_reaching(hosted, 2, &["pending"]);
    hosted.run_as("dave", &["deploy", "sign-off", PROJECT, "2", "--passed", "-m", "clicked through"]).expect_code(0);
    hosted.run_as("carol", &["deploy", "approve", PROJECT, "2", "-m", "ship it"]).expect_code(0);
    let production = deployment_reaching(hosted, 2, &["succeeded", "failed"]);
    assert_eq!(production["status"], "succeeded", "{production}");
    (2, digest)
}

/// `custody ARGS` with no server configured at all.
fn offline(hosted: &Hosted, args: &[&str]) -> Run {
    let mut command = Command::new(support::BIN);
    for var in support::CUSTODY_VARS {
        command.env_remove(var);
    }
    command.env("CUSTODY_CONFIG_DIR", hosted.sandbox.path("nobody-config"));
    command.current_dir(hosted.sandbox.path(""));
    command.args(args);
    run(command)
}

struct Exported {
    bundle: Value,
    bundle_file: PathBuf,
    trust_file: PathBuf,
}

fn export(hosted: &Hosted, number: i64) -> Exported {
    let trust_file = hosted.sandbox.path("trust.json");
    let bundle_file = hosted.sandbox.path("bundle.json");
    hosted.as_admin(&["trust", "export", "-o", trust_file.to_str().expect("UTF-8")]).expect_code(0);
    hosted
        .as_admin(&[
            "evidence",
            "export",
            PROJECT,
            "--deployment",
            &number.to_string(),
            "-o",
            bundle_file.to_str().expect("UTF-8"),
        ])
        .expect_code(0);
    let bundle: Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle_file).expect("the bundle")).expect("JSON");
    // `CUSTODY_WRITE_GOLDEN=DIR` keeps this bundle and its trust file, for
    // the golden files the verifier must keep verifying
    // (crates/formats/tests/golden).
    if let Some(dir) = std::env::var_os("CUSTODY_WRITE_GOLDEN") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("the golden directory");
        std::fs::copy(&bundle_file, dir.join("deployment.bundle.json")).expect("keep the bundle");
        std::fs::copy(&trust_file, dir.join("trust.json")).expect("keep the trust file");
    }
    Exported { bundle, bundle_file, trust_file }
}

/// Verifies `bundle` offline: exit code and the JSON report.
fn verify(hosted: &Hosted, exported: &Exported, bundle: &Value, name: &str) -> (Option<i32>, Value) {
    let file = hosted.sandbox.path(&format!("{name}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(bundle).expect("JSON")).expect("write the bundle");
    let ran = offline(
        hosted,
        &["verify", file.to_str().expect("UTF-8"), "--trust", exported.trust_file.to_str().expect("UTF-8"), "--json"],
    );
    let report = serde_json::from_str(&ran.stdout).unwrap_or_else(|_| panic!("a JSON report: {ran:#?}"));
    (ran.code(), report)
}

/// The failed checks of a report: (rule, subject, message).
fn failures(report: &Value) -> Vec<(String, String, String)> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| {
            (
                c["rule"].as_str().unwrap_or_default().to_owned(),
                c["subject"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[track_caller]
fn fails_with(hosted: &Hosted, exported: &Exported, bundle: &Value, name: &str, rule: &str, subject: &str, says: &str) {
    let (code, report) = verify(hosted, exported, bundle, name);
    assert_eq!(code, Some(1), "{name}: an altered bundle must not verify: {report:#}");
    assert_eq!(report["valid"], false, "{name}");
    let failed = failures(&report);
    assert!(
        failed.iter().any(|(r, s, m)| r == rule && s == subject && m.contains(says)),
        "{name}: expected {rule} on {subject} saying {says:?}, got {failed:#?}"
    );
}

/// The index of the entry whose statement has `predicate_type` (the
/// `nth` such, from 0).
fn entry_of(bundle: &Value, predicate_type: &str, nth: usize) -> usize {
    let entries = bundle["entries"].as_array().expect("entries");
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| statement_of(e)["predicateType"] == predicate_type)
        .nth(nth)
        .unwrap_or_else(|| panic!("no entry {nth} of {predicate_type}"))
        .0
}

fn statement_of(entry: &Value) -> Value {
    let payload = STANDARD.decode(entry["envelope"]["payload"].as_str().expect("a payload")).expect("base64");
    serde_json::from_slice(&payload).expect("a statement")
}

fn with_statement(entry: &mut Value, statement: &Value) {
    entry["envelope"]["payload"] = json!(STANDARD.encode(serde_json::to_vec(statement).expect("JSON")));
}

/// Re-signs an entry's (possibly changed) statement with a service key of
/// the instance, as only someone holding that key could.
fn resign(hosted: &Hosted, entry: &mut Value, role: KeyRole) {
    let key = ServiceKey::load(role, &support::builds::service_key(hosted, role.as_str())).expect("the key");
    let payload = STANDARD.decode(entry["envelope"]["payload"].as_str().expect("a payload")).expect("base64");
    let envelope =
        Envelope::sign(custody_formats::dsse::IN_TOTO_PAYLOAD_TYPE, &payload, &key).expect("a key in memory signs");
    entry["envelope"] = serde_json::to_value(envelope).expect("JSON");
}

const CHANGE: &str = "https://custody.dev/attestation/change/v1";
const PROVENANCE: &str = "https://slsa.dev/provenance/v1";
const DEPLOYMENT: &str = "https://custody.dev/attestation/deployment/v1";

fn a_production_release_verifies_offline_with_every_duty_named(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (number, digest) = released(&hosted);
    let exported = export(&hosted, number);
    let bundle = &exported.bundle;
    assert_eq!(bundle["entries"].as_array().map(Vec::len), Some(4), "change, build, staging, production: {bundle:#}");

    let (code, report) = verify(&hosted, &exported, bundle, "as-exported");
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["valid"], true, "{:#?}", failures(&report));
    assert_eq!(report["environments"], json!(["staging", "production"]));
    assert_eq!(report["findings"], json!([]), "each deployment names the changes it releases: {report:#}");
    let holders = |step: &str, duty: &str| {
        report["duties"]
            .as_array()
            .expect("duties")
            .iter()
            .find(|d| d["step"] == step && d["duty"] == duty)
            .map(|d| d["holders"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(holders("change 1", "author"), json!(["alice"]));
    assert_eq!(holders("change 1", "reviewer"), json!(["bob"]));
    assert_eq!(holders("deployment 2 (production)", "approver"), json!(["carol"]));
    assert_eq!(holders("deployment 2 (production)", "tester"), json!(["dave"]));
    assert_eq!(holders("build 1", "builder"), json!(["custody://custody/builder"]));
    for rule in [
        "change.checks",
        "change.gate",
        "deploy.approver_not_author",
        "deploy.tester_not_author",
        "deploy.order",
        "ledger.inclusion",
    ] {
        assert!(report["checks"].as_array().expect("checks").iter().any(|c| c["rule"] == rule), "{rule} checked");
    }

    // The human report names the duties and the verdict.
    let text = offline(
        &hosted,
        &[
            "verify",
            exported.bundle_file.to_str().expect("UTF-8"),
            "--trust",
            exported.trust_file.to_str().expect("UTF-8"),
        ],
    )
    .expect_code(0)
    .stdout;
    assert!(text.contains("Verdict: VALID") && text.contains("carol") && text.contains("dave"), "{text}");

    // The artifact itself, downloaded, matches; another file does not.
    let artifact = hosted.sandbox.path("app.tar.gz");
    custody(&hosted, &["artifact", "get", PROJECT, &digest, "-o", artifact.to_str().expect("UTF-8")]).expect_code(0);
    let with_file = |file: &Path| {
        offline(
            &hosted,
            &[
                "verify",
                exported.bundle_file.to_str().expect("UTF-8"),
                "--trust",
                exported.trust_file.to_str().expect("UTF-8"),
                "--artifact",
                file.to_str().expect("UTF-8"),
                "--json",
            ],
        )
    };
    with_file(&artifact).expect_code(0);
    let other = hosted.sandbox.path("other.tar.gz");
    std::fs::write(&other, b"not what was built").expect("write");
    let refused = with_file(&other);
    assert_eq!(refused.code(), Some(1), "{refused:#?}");
    assert!(
        refused.stdout.contains("artifact.file") && refused.stdout.contains("not the artifact built"),
        "{refused:#?}"
    );

    // The same evidence as in-toto JSON Lines: one envelope a line.
    let jsonl = hosted.sandbox.path("bundle.intoto.jsonl");
    hosted
        .as_admin(&["evidence", "export", PROJECT, "--artifact", &digest, "-o", jsonl.to_str().expect("UTF-8")])
        .expect_code(0);
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .expect("the jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("one envelope a line"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines.iter().all(|l| l["payloadType"] == "application/vnd.in-toto+json"), "{lines:#?}");

    // The bundle of the artifact, rather than of the deployment, verifies too.
    let by_artifact = hosted.sandbox.path("artifact-bundle.json");
    hosted
        .as_admin(&["evidence", "export", PROJECT, "--artifact", &digest, "-o", by_artifact.to_str().expect("UTF-8")])
        .expect_code(0);
    let report = offline(
        &hosted,
        &[
            "verify",
            by_artifact.to_str().expect("UTF-8"),
            "--trust",
            exported.trust_file.to_str().expect("UTF-8"),
            "--artifact",
            artifact.to_str().expect("UTF-8"),
            "--json",
        ],
    )
    .expect_code(0)
    .json();
    assert_eq!(report["environments"], json!(["staging", "production"]), "{report:#}");
    // The auditor can compare each key out of band: its id and fingerprint.
    let keys = report["keys"].as_array().expect("keys");
    assert!(keys.iter().any(|k| k["role"] == "builder" && k["verified"] == 1), "{report:#}");
    assert!(keys.iter().all(|k| k["fingerprint"].as_str().is_some_and(|f| f.starts_with("SHA256:"))), "{report:#}");

    // Deployed to staging a second time, the artifact's bundle holds that too.
    let again = hosted.run_as("alice", &["deploy", "request", PROJECT, "staging", "--build", "1", "--json"]).json();
    let again = again["deployment"]["number"].as_i64().expect("a number");
    deployment_reaching(&hosted, again, &["succeeded"]);
    hosted
        .as_admin(&["evidence", "export", PROJECT, "--artifact", &digest, "-o", by_artifact.to_str().expect("UTF-8")])
        .expect_code(0);
    let trust = exported.trust_file.to_str().expect("UTF-8");
    let report = offline(&hosted, &["verify", by_artifact.to_str().expect("UTF-8"), "--trust", trust, "--json"])
        .expect_code(0)
        .json();
    assert_eq!(report["environments"], json!(["staging", "production", "staging"]), "{report:#}");
    let text = offline(&hosted, &["verify", by_artifact.to_str().expect("UTF-8"), "--trust", trust]).expect_code(0);
    let builder = keys.iter().find(|k| k["role"] == "builder").expect("the builder key");
    let line = format!(
        "builder   {} {}",
        builder["key_id"].as_str().unwrap_or(""),
        builder["fingerprint"].as_str().unwrap_or("")
    );
    assert!(text.stdout.contains(&line), "{text:#?}");

    // Evidence is for admins and auditors; asking wrongly is an input error.
    let refused = hosted.run_as("alice", &["evidence", "export", PROJECT, "--deployment", "2", "--json"]);
    assert_eq!(refused.code(), Some(1), "{refused:#?}");
    assert_eq!(refused.json_error()["error"]["code"], "forbidden", "{refused:#?}");
    let missing = hosted.as_admin(&["evidence", "export", PROJECT, "--deployment", "99", "--json"]);
    assert_eq!(missing.code(), Some(2), "{missing:#?}");
    let bad = hosted.as_admin(&["evidence", "export", PROJECT, "--artifact", "not-a-digest", "--json"]);
    assert_eq!(bad.code(), Some(2), "{bad:#?}");

    // A file that is no bundle cannot be read: exit 2.
    let junk = hosted.sandbox.path("junk.json");
    std::fs::write(&junk, "{\"hello\": 1}").expect("write");
    offline(
        &hosted,
        &["verify", junk.to_str().expect("UTF-8"), "--trust", exported.trust_file.to_str().expect("UTF-8")],
    )
    .expect_code(2);

    independent_verification(&hosted, &exported);
}

fn every_altered_field_of_the_bundle_fails_verification_with_its_reason(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (number, _) = released(&hosted);
    let exported = export(&hosted, number);
    let original = &exported.bundle;
    let change = entry_of(original, CHANGE, 0);
    let build = entry_of(original, PROVENANCE, 0);
    let staging = entry_of(original, DEPLOYMENT, 0);
    let production = entry_of(original, DEPLOYMENT, 1);

    // A signature.
    let mut bundle = original.clone();
    let sig = bundle["entries"][change]["envelope"]["signatures"][0]["sig"].as_str().expect("a sig").to_owned();
    let mut raw = STANDARD.decode(sig).expect("base64");
    raw[0] ^= 1;
    bundle["entries"][change]["envelope"]["signatures"][0]["sig"] = json!(STANDARD.encode(raw));
    fails_with(
        &hosted,
        &exported,
        &bundle,
        "signature",
        "envelope.signature",
        "change 1",
        "no signature by the gate key",
    );

    // A digest: the artifact the provenance names.
    let mut bundle = original.clone();
    let mut statement = statement_of(&bundle["entries"][build]);
    statement["subject"][0]["digest"]["sha256"] = json!("0".repeat(64));
    with_statement(&mut bundle["entries"][build], &statement);
    fails_with(&hosted, &exported, &bundle, "digest", "envelope.signature", "build 1", "altered or forged");
    fails_with(
        &hosted,
        &exported,
        &bundle,
        "digest",
        "ledger.binding",
        "build 1",
        "not the envelope the ledger recorded",
    );
    fails_with(&hosted, &exported, &bundle, "digest", "deploy.artifact", "deployment 2 (production)", "does not name");

    // An approver: alice, the author, put in carol's place, even re-signed
    // with the deployer's own key.
    let mut bundle = original.clone();
    let mut statement = statement_of(&bundle["entries"][production]);
    statement["predicate"]["approvers"] = json!(["alice"]);
    with_statement(&mut bundle["entries"][production], &statement);
    fails_with(&hosted, &exported, &bundle, "approver", "envelope.signature", "deployment 2 (production)", "altered");
    resign(&hosted, &mut bundle["entries"][production], KeyRole::Deployer);
    fails_with(
        &hosted,
        &exported,
        &bundle,
        "approver-resigned",
        "deploy.approver_not_author",
        "deployment 2 (production)",
        "alice approved the deployment but wrote a change of the release",
    );
    fails_with(
        &hosted,
        &exported,
        &bundle,
        "approver-resigned",
        "ledger.binding",
        "deployment 2 (production)",
        "recorded",
    );

    // A reviewer of the change who is also its author, re-signed with the gate key.
    let mut bundle = original.clone();
    let mut statement = statement_of(&bundle["entries"][change]);
    statement["predicate"]["approvers"] = json!(["alice"]);
    with_statement(&mut bundle["entries"][change], &statement);
    resign(&hosted, &mut bundle["entries"][change], KeyRole::Gate);
    fails_with(
        &hosted,
        &exported,
        &bundle,
        "reviewer",
        "change.approver_not_author",
        "change 1",
        "alice approved the change but is among its authors",
    );

    // An inclusion proof.
    let mut bundle = original.clone();
    let hashes = bundle["entries"][staging]["proof"]["hashes"].as_array().expect("hashes").clone();
    assert!(!hashes.is_empty(), "a tree of many events has a proof of several hashes");
    bundle["entries"][staging]["proof"]["hashes"][0] = json!(STANDARD.encode([7u8; 32]));
    fails_with(
        &hosted,
        &exported,
        &bundle,
        "proof",
        "ledger.inclusion",
        "deployment 1 (staging)",
        "not in the checkpoint's tree",
    );

    // The event an envelope is bound by.
    let mut bundle = original.clone();
    bundle["entries"][change]["event"]["actor"] = json!("mallory");
    fails_with(&hosted, &exported, &bundle, "event", "ledger.inclusion", "change 1", "not in the checkpoint's tree");

    // The checkpoint.
    let mut bundle = original.clone();
    let note = bundle["checkpoint"].as_str().expect("a note").to_owned();
    let mut lines: Vec<&str> = note.split('\n').collect();
    let size: u64 = lines[1].parse().expect("a size");
    let bigger = (size + 1).to_string();
    lines[1] = &bigger;
    bundle["checkpoint"] = json!(lines.join("\n"));
    fails_with(&hosted, &exported, &bundle, "checkpoint", "checkpoint.signature", "checkpoint", "does not verify");

    // A trust file whose gate key became valid only after the merge.
    let mut trust: Value =
        serde_json::from_str(&std::fs::read_to_string(&exported.trust_file).expect("trust")).expect("JSON");
    for key in trust["keys"].as_array_mut().expect("keys") {
        if key["role"] == "gate" {
            key["not_before"] = json!("2099-01-01T00:00:00Z");
        }
    }
    let later = Exported {
        bundle: original.clone(),
        bundle_file: exported.bundle_file.clone(),
        trust_file: hosted.sandbox.path("trust-later.json"),
    };
    std::fs::write(&later.trust_file, trust.to_string()).expect("write");
    fails_with(&hosted, &later, original, "key-validity", "envelope.signature", "change 1", "was not valid at");

    // The order of environments.
    let mut bundle = original.clone();
    let entries = bundle["entries"].as_array_mut().expect("entries");
    entries.swap(staging, production);
    fails_with(&hosted, &exported, &bundle, "order", "deploy.order", "deployment 2 (production)", "out of order");
}

fn provenance_signed_with_the_deployers_key_fails_verification(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (number, _) = released(&hosted);
    let exported = export(&hosted, number);
    let mut bundle = exported.bundle.clone();
    let build = entry_of(&bundle, PROVENANCE, 0);
    resign(&hosted, &mut bundle["entries"][build], KeyRole::Deployer);
    fails_with(
        &hosted,
        &exported,
        &bundle,
        "deployer-signed-provenance",
        "envelope.signature",
        "build 1",
        "signed by the deployer key, not the builder key",
    );
}

/// Checks every envelope, event and proof of the bundle with Python's
/// securesystemslib (DSSE) and `cryptography` and `hashlib` (checkpoint,
/// RFC 6962 proofs), nothing of custody's.
const INDEPENDENT: &str = r#"
import base64, copy, hashlib, json, sys
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

bundle = json.load(open(sys.argv[1]))
trust = json.load(open(sys.argv[2]))
roles = {"https://custody.dev/attestation/change/v1": "gate",
         "https://slsa.dev/provenance/v1": "builder",
         "https://custody.dev/attestation/deployment/v1": "deployer"}
keys = {}
for k in trust["keys"]:
    public = serialization.load_pem_public_key(k["public_key"].encode())
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    keys[k["role"]] = (k["key_id"], public, raw)

def leaf(data): return hashlib.sha256(b"\x00" + data).digest()
def node(l, r): return hashlib.sha256(b"\x01" + l + r).digest()
def included(h, index, size, proof, root):
    f, s = index, size - 1
    for p in proof:
        if f % 2 == 1 or f == s:
            h = node(p, h)
            while f % 2 == 0 and f != 0:
                f >>= 1; s >>= 1
        else:
            h = node(h, p)
        f >>= 1; s >>= 1
    return s == 0 and h == root

# The checkpoint: a signed note by the ledger key.
note = bundle["checkpoint"]
body, sigs = note[:note.rindex("\n\n") + 1], note[note.rindex("\n\n") + 2:]
origin, size, root = body.split("\n")[:3]
_, ledger, _ = keys["ledger"]
blob = base64.b64decode(sigs.split(" ")[2])
ledger.verify(blob[4:], body.encode())
size, root = int(size), base64.b64decode(root)

def canonical(v):
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

steps = []
for entry in bundle["entries"]:
    envelope = Envelope.from_dict(copy.deepcopy(entry["envelope"]))
    statement = json.loads(envelope.payload)
    keyid, _, raw = keys[roles[statement["predicateType"]]]
    verified = envelope.verify([SSlibKey(keyid, "ed25519", "ed25519", {"public": raw.hex()})], 1)
    assert keyid in verified, verified
    # The event binds the envelope's digest, and is in the checkpoint's tree.
    event = entry["event"]
    digest = hashlib.sha256(canonical(entry["envelope"]).encode()).hexdigest()
    assert event["details"]["envelope_sha256"] == digest, (event, canonical(entry["envelope"])[:300])
    fields = {"action": event["action"], "actor": event["actor"], "at": event["at_ms"],
              "details": event["details"], "seq": event["seq"], "subject": event["subject"]}
    proof = [base64.b64decode(h) for h in entry["proof"]["hashes"]]
    assert entry["proof"]["tree_size"] == size
    assert included(leaf(canonical(fields).encode()), event["seq"] - 1, size, proof, root), event["seq"]
    steps.append(statement["predicateType"])
print(json.dumps(steps))
"#;

fn independent_verification(hosted: &Hosted, exported: &Exported) {
    if !support::verify::python_present() {
        return;
    }
    let check = |bundle: &Path| {
        Command::new("python3")
            .arg("-c")
            .arg(INDEPENDENT)
            .arg(bundle)
            .arg(&exported.trust_file)
            .output()
            .expect("run python3")
    };
    let output = check(&exported.bundle_file);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let steps: Value = serde_json::from_slice(&output.stdout).expect("the steps");
    assert_eq!(steps, json!([CHANGE, PROVENANCE, DEPLOYMENT, DEPLOYMENT]));
    // The same checks refuse provenance signed by the deployer's key.
    let mut bundle = exported.bundle.clone();
    let build = entry_of(&bundle, PROVENANCE, 0);
    resign(hosted, &mut bundle["entries"][build], KeyRole::Deployer);
    let altered = hosted.sandbox.path("independent-altered.json");
    std::fs::write(&altered, bundle.to_string()).expect("write");
    assert!(!check(&altered).status.success(), "python accepted provenance signed by the deployer key");
}

fn the_auditors_report_names_each_production_deployment_its_duties_and_findings(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (number, _) = released(&hosted);
    // carol breaks the glass: an open finding until an uninvolved admin reviews it.
    hosted
        .run_as(
            "carol",
            &["deploy", "request", PROJECT, "production", "--build", "1", "--break-glass", "--reason", "hotfix"],
        )
        .expect_code(0);
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let data = hosted.as_admin(&["report", "--from", &today, "--to", &today, "--format", "json"]).json();
    let deployments = data["deployments"].as_array().expect("deployments");
    assert_eq!(deployments.len(), 1, "staging is not production: {data:#}");
    let production = &deployments[0];
    assert_eq!(production["number"], number);
    assert_eq!(production["environment"], "production");
    assert_eq!(production["approvers"], json!(["carol"]));
    assert_eq!(production["testers"], json!(["dave"]));
    assert_eq!(production["changes"][0]["authors"], json!(["alice"]));
    assert_eq!(production["changes"][0]["reviewers"], json!(["bob"]));
    let kinds: Vec<&str> =
        data["findings"].as_array().expect("findings").iter().filter_map(|f| f["kind"].as_str()).collect();
    assert!(kinds.contains(&"break_glass"), "{kinds:?}");
    assert!(kinds.contains(&"bootstrap_grant"), "project members were added by the bootstrap admin alone: {kinds:?}");
    let mapped: Vec<&str> =
        data["controls"].as_array().expect("controls").iter().filter_map(|c| c["pci"].as_str()).collect();
    assert!(mapped.iter().any(|m| m.contains("6.5.4")), "{mapped:?}");

    // The printable report carries everything itself.
    let file = hosted.sandbox.path("report.html");
    hosted
        .as_admin(&[
            "report",
            "--from",
            &today,
            "--to",
            &today,
            "--format",
            "html",
            "-o",
            file.to_str().expect("UTF-8"),
        ])
        .expect_code(0);
    let page = std::fs::read_to_string(&file).expect("the report");
    assert!(page.starts_with("<!DOCTYPE html>") && page.contains("@page") && page.contains("carol"), "{page}");
    assert!(
        !page.contains("src=") && !page.contains("href=") && !page.contains("@import"),
        "no external assets: {page}"
    );
    let md = hosted.as_admin(&["report", "--from", &today, "--to", &today, "--format", "md"]).expect_code(0).stdout;
    assert!(
        md.contains("NIST 800-53 AC-5") && md.contains("SOC 2 CC8.1") && md.contains("| approvers | carol |"),
        "{md}"
    );
    // A period that ends before it starts is refused as input.
    hosted.as_admin(&["report", "--from", &today, "--to", "2000-01-01"]).expect_code(2);
}

/// Version 2 bundles carry each review, approval and sign-off an
/// attestation names as its own ledger event; without it, the duty is not
/// proved. A bundle of the first version still verifies.
fn every_named_duty_must_be_its_ledger_event_and_a_first_version_bundle_still_verifies(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (number, _) = released(&hosted);
    let exported = export(&hosted, number);
    let original = &exported.bundle;
    assert_eq!(original["media_type"], "application/vnd.custody.evidence.v2+json");
    let (code, report) = verify(&hosted, &exported, original, "v2");
    assert_eq!(code, Some(0), "{report:#}");
    let duties = original["duties"].as_array().expect("duties").clone();
    let position = |action: &str| {
        duties.iter().position(|d| d["event"]["action"] == action).unwrap_or_else(|| panic!("a {action} duty"))
    };

    // The reviewer's approval left out.
    let mut bundle = original.clone();
    bundle["duties"].as_array_mut().unwrap().remove(position("change.review.approve"));
    fails_with(&hosted, &exported, &bundle, "no-review", "change.approvals_logged", "change 1", "holds no approval");

    // The production approval left out, and a sign-off given to someone else.
    let mut bundle = original.clone();
    bundle["duties"].as_array_mut().unwrap().retain(|d| {
        !(d["event"]["action"] == "deploy.approve" && d["event"]["subject"] == format!("deployment:{PROJECT}/{number}"))
    });
    let production = format!("deployment {number} (production)");
    fails_with(&hosted, &exported, &bundle, "no-approval", "deploy.decisions_logged", &production, "holds no decision");
    let mut bundle = original.clone();
    let tester = position("deploy.test_passed");
    bundle["duties"][tester]["event"]["actor"] = json!("mallory");
    let (code, report) = verify(&hosted, &exported, &bundle, "forged-tester");
    assert_eq!(code, Some(1), "{report:#}");
    assert!(failures(&report).iter().any(|(rule, _, _)| rule == "ledger.inclusion"), "{report:#}");

    // The first version: no duties' events, and still valid.
    let mut bundle = original.clone();
    bundle["media_type"] = json!("application/vnd.custody.evidence.v1+json");
    bundle.as_object_mut().unwrap().remove("duties");
    let (code, report) = verify(&hosted, &exported, &bundle, "v1");
    assert_eq!(code, Some(0), "a bundle of the first version still verifies: {report:#}");
}

/// An approval written into the audit log around custody, with the ledger's
/// tree recomputed to agree, makes no evidence: the export refuses, naming
/// the event, instead of handing out a bundle that rests on it.
fn no_evidence_is_exported_from_a_forged_approval(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (number, _) = released(&hosted);
    let url = match &hosted.database {
        Some(db) => db.url.clone(),
        None => format!("sqlite://{}", hosted.sandbox.path("data").join("custody.db").display()),
    };
    let dialect =
        if hosted.database.is_some() { custody_store::Dialect::Postgres } else { custody_store::Dialect::Sqlite };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        custody_store::testing::execute_raw(&url, custody_store::testing::drop_append_only_triggers(dialect)).await;
        custody_store::testing::execute_raw(
            &url,
            &format!(
                "INSERT INTO audit_events (seq, at, actor, action, subject, details) \
                 SELECT MAX(seq) + 1, 1700000000000, 'mallory', 'deploy.approve', 'deployment:{PROJECT}/{number}', '{{}}' \
                 FROM audit_events"
            ),
        )
        .await;
        custody_store::testing::rewrite_ledger_tree(&url).await;
    });
    let bundle_file = hosted.sandbox.path("forged.json");
    let refused = hosted.as_admin(&[
        "evidence",
        "export",
        PROJECT,
        "--deployment",
        &number.to_string(),
        "-o",
        bundle_file.to_str().expect("UTF-8"),
    ]);
    assert_ne!(refused.code(), Some(0), "{refused:?}");
    assert!(refused.stderr.contains("audit_events seq") && refused.stderr.contains("no tag"), "{refused:?}");
    assert!(!bundle_file.exists(), "no bundle was written");
}

on_both_backends!(
    a_production_release_verifies_offline_with_every_duty_named,
    every_altered_field_of_the_bundle_fails_verification_with_its_reason,
    provenance_signed_with_the_deployers_key_fails_verification,
    the_auditors_report_names_each_production_deployment_its_duties_and_findings,
    every_named_duty_must_be_its_ledger_event_and_a_first_version_bundle_still_verifies,
    no_evidence_is_exported_from_a_forged_approval,
);
