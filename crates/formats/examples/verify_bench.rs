//! The offline verifier's benchmark fixture and in-process timing.
//!
//! `verify_bench write DIR` writes `bundle.json` and `trust.json`: a
//! five-step chain (a commit, the change that merged it, its build, its
//! staging and production deployments) signed with fresh service keys, its
//! events proved in a ledger of 10,000 events under a signed checkpoint.
//! `verify_bench time DIR N` reads, parses and verifies that bundle N times
//! in this process and prints the mean time per verification.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use custody_formats::attestation::{
    Authorship, ChangeAuthor, ChangeV1, DeploymentV1, EnvironmentGate, GateRule, PipelineFile, Policy, ReleaseChange,
    Sha256Digest,
};
use custody_formats::checkpoint::Checkpoint;
use custody_formats::evidence::{Bundle, BundleSubject, Entry, InclusionProof, LedgerEvent, BUNDLE_MEDIA_TYPE_V1};
use custody_formats::merkle::{self, Frontier};
use custody_formats::trust::{TrustRoot, TrustedKey};
use custody_formats::verify::verify;
use custody_formats::{BuildFacts, KeyRole, ServiceKey};
use serde_json::json;

const EVENTS: i64 = 10_000;
const T0: i64 = 1_790_000_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("write") if args.len() == 3 => write(Path::new(&args[2])),
        Some("time") if args.len() == 4 => time(Path::new(&args[2]), args[3].parse().expect("a count")),
        _ => {
            eprintln!("usage: verify_bench write DIR | verify_bench time DIR N");
            std::process::exit(2);
        }
    }
}

fn rfc3339(ms: i64) -> String {
    custody_formats::trust::rfc3339_of_millis(ms)
}

fn write(dir: &Path) {
    let keys: HashMap<KeyRole, ServiceKey> = KeyRole::ALL.into_iter().map(|r| (r, ServiceKey::generate(r))).collect();
    let commit = "5f".repeat(20);
    let artifact = "a1".repeat(32);
    // The change attestation of the merge of commit `commit`.
    let change = ChangeV1 {
        project: "payments".into(),
        change: 1,
        title: "Version 2".into(),
        target_ref: "refs/heads/main".into(),
        base: Some("4e".repeat(20)),
        reviewed_head: "3d".repeat(20),
        merge_commit: commit.clone(),
        commits: 1,
        authors: vec![ChangeAuthor {
            user: "alice".into(),
            why: vec![Authorship::PushedCommit { commit: "3d".repeat(20) }],
        }],
        approvers: vec!["bob".into()],
        merged_by: "alice".into(),
        checks: vec![],
        policy: Policy {
            path: ".custody/pipeline.toml".into(),
            digest: Some(Sha256Digest { sha256: "9c".repeat(32) }),
        },
        gate: vec![GateRule {
            rule: "gate.independent_approvals".into(),
            passed: true,
            message: "1 of 1 independent approvals".into(),
            satisfy: None,
        }],
        weakened: vec![],
    }
    .statement();
    let build = BuildFacts {
        artifacts: vec![("dist/app.tar.gz".into(), artifact.clone())],
        instance: "custody".into(),
        project: "payments".into(),
        repository: "custody://custody/payments.git".into(),
        branch: "main".into(),
        commit: commit.clone(),
        pipeline: (".custody/pipeline.toml".into(), "9c".repeat(32)),
        command: "scripts/build.sh".into(),
        script: Some(("scripts/build.sh".into(), "b7".repeat(32))),
        network: false,
        builder_id: "custody://custody/builder".into(),
        builder_version: "0.1.0".into(),
        invocation_id: "custody://custody/payments/builds/1/attempts/1".into(),
        started_on: rfc3339(T0 + 2_000),
        finished_on: rfc3339(T0 + 3_000),
    }
    .statement();
    let strings = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let deployment =
        |number: i64, environment: &str, after: Option<&str>, approvers: &[&str], testers: &[&str], at: i64| {
            DeploymentV1 {
                project: "payments".into(),
                environment: environment.into(),
                after: after.map(str::to_owned),
                gate: Some(EnvironmentGate {
                    approvals: approvers.len() as u64,
                    approvers: after.map(|_| "release-managers".into()),
                    testers: after.map(|_| "qa".into()),
                    reviewers_may_approve: false,
                }),
                deployment: number,
                build: 1,
                commit: commit.clone(),
                pipeline: PipelineFile { path: ".custody/pipeline.toml".into(), sha256: "9c".repeat(32) },
                script: "scripts/deploy.sh".into(),
                release: vec![ReleaseChange { change: 1, authors: strings(&["alice"]), reviewers: strings(&["bob"]) }],
                builder: Some("custody://custody/builder".into()),
                requester: None,
                approvers: strings(approvers),
                testers: strings(testers),
                previous_deployment: None,
                break_glass: None,
                secrets: Default::default(),
                result: "succeeded".into(),
                deployer: "custody-1".into(),
                started_on: rfc3339(at),
                finished_on: rfc3339(at + 1_000),
            }
            .statement(&[("dist/app.tar.gz".into(), artifact.clone())])
        };
    let recorded = [
        (
            change.sign(&keys[&KeyRole::Gate]).expect("a key in memory signs"),
            "change.merge",
            "change:payments/1",
            "alice",
            2_000,
        ),
        (
            build.sign(&keys[&KeyRole::Builder]).expect("a key in memory signs"),
            "build.finish",
            "build:payments/1",
            "system",
            4_000,
        ),
        (
            deployment(1, "staging", None, &[], &[], T0 + 5_000)
                .sign(&keys[&KeyRole::Deployer])
                .expect("a key in memory signs"),
            "deploy.finish",
            "deployment:payments/1",
            "system",
            7_000,
        ),
        (
            deployment(2, "production", Some("staging"), &["carol"], &["dave"], T0 + 8_000)
                .sign(&keys[&KeyRole::Deployer])
                .expect("a key in memory signs"),
            "deploy.finish",
            "deployment:payments/2",
            "system",
            10_000,
        ),
    ];
    // A ledger of EVENTS events; the four above at seqs 2,000 to 8,000.
    let mut events = Vec::new();
    let mut frontier = Frontier::default();
    let mut nodes = HashMap::new();
    for seq in 1..=EVENTS {
        let at = T0 + seq;
        let event = match recorded.get((seq / 2_000 - 1) as usize).filter(|_| seq % 2_000 == 0) {
            Some((envelope, action, subject, actor, _)) => LedgerEvent {
                seq,
                at_ms: at,
                actor: (*actor).into(),
                action: (*action).into(),
                subject: (*subject).into(),
                details: json!({ "envelope_sha256": envelope.digest(), "status": "succeeded" }),
            },
            None => LedgerEvent {
                seq,
                at_ms: at,
                actor: "someone".into(),
                action: "change.head".into(),
                subject: format!("change:other/{seq}"),
                details: json!({ "new": "00".repeat(20), "approvals": "void" }),
            },
        };
        frontier.push(event.leaf_hash(), |id, hash| {
            nodes.insert(id, hash);
        });
        events.push(event);
    }
    let size = EVENTS as u64;
    let note = Checkpoint { origin: "custody".into(), size, root: frontier.root() }
        .sign(&keys[&KeyRole::Ledger])
        .expect("a checkpoint");
    let entries = recorded
        .iter()
        .enumerate()
        .map(|(i, (envelope, ..))| {
            let seq = (i as i64 + 1) * 2_000;
            let hashes = merkle::inclusion_proof(seq as u64 - 1, size, |id| nodes.get(&id).copied()).expect("a proof");
            Entry {
                envelope: envelope.clone(),
                event: events[seq as usize - 1].clone(),
                proof: InclusionProof::new(seq as u64 - 1, size, &hashes),
            }
        })
        .collect();
    let bundle = Bundle {
        // The first version: the statements' events only, as the
        // in-toto comparison checks signatures and layout, not duties' events.
        media_type: BUNDLE_MEDIA_TYPE_V1.into(),
        origin: "custody".into(),
        project: "payments".into(),
        subject: BundleSubject { deployment: Some(2), artifact: None },
        checkpoint: note,
        entries,
        duties: vec![],
    };
    let trust =
        TrustRoot::new("custody", KeyRole::ALL.iter().map(|r| TrustedKey::current(&keys[r].public(), T0)).collect());
    std::fs::create_dir_all(dir).expect("the directory");
    std::fs::write(dir.join("bundle.json"), serde_json::to_string_pretty(&bundle).expect("JSON")).expect("write");
    std::fs::write(dir.join("trust.json"), serde_json::to_string_pretty(&trust).expect("JSON")).expect("write");
    let report = verify(&bundle, &trust, None);
    assert!(report.valid, "{}", report.to_text());
}

fn time(dir: &Path, n: u32) {
    let once = || {
        let bundle =
            Bundle::parse(&std::fs::read_to_string(dir.join("bundle.json")).expect("bundle")).expect("a bundle");
        let trust = TrustRoot::parse(&std::fs::read_to_string(dir.join("trust.json")).expect("trust")).expect("trust");
        verify(&bundle, &trust, None)
    };
    assert!(once().valid, "the fixture must verify");
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(once());
    }
    let mean = start.elapsed().as_secs_f64() / f64::from(n);
    println!("{{\"verifications\": {n}, \"mean_ms\": {:.4}}}", mean * 1000.0);
}
