//! The offline verifier: an evidence bundle checked against a trust root,
//! with nothing else: no server, no database, no policy file.
//!
//! It answers the auditor's question for one artifact or deployment: who
//! wrote it, who reviewed it, who built it, who approved it, who deployed
//! it, and was anybody two of those. Every rule it checks becomes a
//! [`Check`] in the [`Report`], passed or failed with a sentence naming what
//! is wrong; the bundle is valid when every check passed.
//!
//! The independence rules are restated here over what the signed
//! statements say, as small pure functions ([`approvers_who_authored`] and
//! its siblings), rather than borrowed from custody's policy code: the
//! verifier is a second implementation of the rules the gates enforce, so
//! a mistake in one is not silently repeated in the other.

use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Serialize;

use crate::attestation::{
    ChangeV1, DeploymentV1, EnvironmentGate, ProvenanceV1, CHANGE_PREDICATE, DEPLOYMENT_PREDICATE,
};
use crate::checkpoint::{Checkpoint, NoteVerifier};
use crate::dsse::Envelope;
use crate::evidence::{Bundle, BundleSubject, Entry, InclusionProof, LedgerEvent};
use crate::keys::KeyRole;
use crate::merkle;
use crate::provenance::PROVENANCE_PREDICATE;
use crate::statement::{Statement, STATEMENT_TYPE};
use crate::trust::{millis_of_rfc3339, rfc3339_of_millis, TrustRoot, ValidKey};

/// The predicate type of in-toto test results (signed by the builder).
pub const TEST_RESULT_PREDICATE: &str = "https://in-toto.io/attestation/test-result/v0.1";

/// A local file to check against the bundle's artifacts.
#[derive(Clone, Debug)]
pub struct ArtifactFile {
    /// The file's name, for the report.
    pub name: String,
    /// Its sha256, hex.
    pub sha256: String,
}

/// One rule, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The rule's id, such as `deploy.approver_not_author`.
    pub rule: String,
    /// What it was checked on, such as `change 1` or `deployment 2 (production)`.
    pub subject: String,
    /// Whether it held.
    pub passed: bool,
    /// What was found, in a sentence.
    pub message: String,
}

/// Who held a duty, in which step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Duty {
    /// The step: `change 1`, `build 1`, `deployment 2 (production)`.
    pub step: String,
    /// The duty: author, reviewer, merger, builder, requester, approver, tester, deployer.
    pub duty: String,
    /// Who held it.
    pub holders: Vec<String>,
}

/// A person and every duty they held in the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Person {
    /// Their user name.
    pub name: String,
    /// `duty (step)`, for every duty held.
    pub duties: Vec<String>,
}

/// An artifact the chain vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Artifact {
    /// Its name in the build.
    pub name: String,
    /// Its sha256, hex.
    pub sha256: String,
}

/// What the verifier found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Whether every check passed.
    pub valid: bool,
    /// The instance.
    pub origin: String,
    /// The project.
    pub project: String,
    /// What the bundle is evidence for.
    pub subject: BundleSubject,
    /// The tree size of the checkpoint proved against, when it verified.
    pub checkpoint_size: Option<u64>,
    /// The commit built.
    pub commit: Option<String>,
    /// The artifacts built.
    pub artifacts: Vec<Artifact>,
    /// The environments reached, in order.
    pub environments: Vec<String>,
    /// Each duty and who held it.
    pub duties: Vec<Duty>,
    /// Every person and their duties.
    pub people: Vec<Person>,
    /// Every rule checked.
    pub checks: Vec<Check>,
    /// What an auditor should look at although no rule failed (break-glass,
    /// reviewers approving by policy, weakened gates).
    pub findings: Vec<String>,
    /// The keys that verified the bundle, to compare out of band with the
    /// operator's: each key's id (the hex SHA-256 of its
    /// SubjectPublicKeyInfo DER, what `openssl pkey -pubin -outform DER |
    /// sha256sum` prints) and its fingerprint in the OpenSSH style.
    pub keys: Vec<KeyUsed>,
}

/// A key of the trust file, and what it verified in the bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyUsed {
    /// Its duty.
    pub role: String,
    /// The hex SHA-256 of its SubjectPublicKeyInfo DER.
    pub key_id: String,
    /// `SHA256:` and the unpadded base64 of the raw public key's SHA-256, as
    /// `ssh-keygen -l` shows an ed25519 key.
    pub fingerprint: String,
    /// How many signatures in the bundle it verified (the checkpoint's too).
    pub verified: usize,
}

impl Report {
    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// The report for people: the chain, each duty and who held it, and
    /// every rule with its outcome.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let what = match (&self.subject.deployment, &self.subject.artifact) {
            (Some(d), _) => format!("deployment {d}"),
            (None, Some(a)) => format!("artifact sha256:{a}"),
            (None, None) => "nothing named".into(),
        };
        out.push_str(&format!("Evidence for {} of project {} on {}\n", what, self.project, self.origin));
        out.push_str(&format!("Verdict: {}\n\n", if self.valid { "VALID" } else { "NOT VALID" }));
        if let Some(commit) = &self.commit {
            out.push_str(&format!("Commit:       {commit}\n"));
        }
        for a in &self.artifacts {
            out.push_str(&format!("Artifact:     {} sha256:{}\n", a.name, a.sha256));
        }
        if !self.environments.is_empty() {
            out.push_str(&format!("Environments: {}\n", self.environments.join(" -> ")));
        }
        if let Some(size) = self.checkpoint_size {
            out.push_str(&format!("Checkpoint:   {} events, signed by the ledger key\n", size));
        }
        out.push_str("\nDuties\n");
        for d in &self.duties {
            let holders = if d.holders.is_empty() { "(nobody)".to_owned() } else { d.holders.join(", ") };
            out.push_str(&format!("  {:<28} {:<10} {}\n", d.step, d.duty, holders));
        }
        let several: Vec<&Person> = self.people.iter().filter(|p| p.duties.len() > 1).collect();
        if !several.is_empty() {
            out.push_str("\nPeople with more than one duty\n");
            for p in several {
                out.push_str(&format!("  {}: {}\n", p.name, p.duties.join("; ")));
            }
        }
        out.push_str("\nRules\n");
        for c in &self.checks {
            let mark = if c.passed { "pass" } else { "FAIL" };
            out.push_str(&format!("  [{mark}] {} ({}): {}\n", c.rule, c.subject, c.message));
        }
        if !self.keys.is_empty() {
            out.push_str("\nKeys (compare them with the operator's, out of band)\n");
            for k in &self.keys {
                out.push_str(&format!("  {:<9} {} {} verified {}\n", k.role, k.key_id, k.fingerprint, k.verified));
            }
        }
        if !self.findings.is_empty() {
            out.push_str("\nFindings\n");
            for f in &self.findings {
                out.push_str(&format!("  - {f}\n"));
            }
        }
        let failed = self.failures().count();
        out.push_str(&format!("\n{} rules checked, {} failed.\n", self.checks.len(), failed));
        out
    }
}

// ---------------------------------------------------------------------------
// The independence rules, as pure functions
// ---------------------------------------------------------------------------

/// The names in both lists, sorted, once each.
fn both(a: &[String], b: &[String]) -> Vec<String> {
    let b: BTreeSet<&String> = b.iter().collect();
    a.iter().filter(|x| b.contains(x)).cloned().collect::<BTreeSet<_>>().into_iter().collect()
}

/// Approvers (of a change or a deployment) who are also authors: each one
/// breaks segregation of duties.
pub fn approvers_who_authored(approvers: &[String], authors: &[String]) -> Vec<String> {
    both(approvers, authors)
}

/// Testers who are authors of a change in the release.
pub fn testers_who_authored(testers: &[String], authors: &[String]) -> Vec<String> {
    both(testers, authors)
}

/// Whether the requester of a deployment approved it themselves.
pub fn requester_approved(requester: Option<&str>, approvers: &[String]) -> bool {
    requester.is_some_and(|r| approvers.iter().any(|a| a == r))
}

/// Approvers of a deployment who reviewed a change in the release.
pub fn approvers_who_reviewed(approvers: &[String], reviewers: &[String]) -> Vec<String> {
    both(approvers, reviewers)
}

/// Whether every check run a change attestation records is of the reviewed
/// head and passed (or was not required), and what to say about it.
pub fn checks_on_head(runs: &[(String, String, String)], head: &str) -> (bool, String) {
    if runs.is_empty() {
        return (true, "no check ran: the target's pipeline names none".to_owned());
    }
    let mut said = Vec::new();
    let mut passed = true;
    for (ran_on, status, command) in runs {
        let on_head = ran_on == head;
        passed &= on_head && matches!(status.as_str(), "passed" | "not_required");
        said.push(if on_head {
            format!("`{command}` {status} on the reviewed head {}", short(head))
        } else {
            format!("`{command}` {status} on {}, not the reviewed head {}", short(ran_on), short(head))
        });
    }
    (passed, said.join("; "))
}

/// Names given more than once.
pub fn repeated(names: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    names.iter().filter(|n| !seen.insert(n.as_str())).cloned().collect::<BTreeSet<_>>().into_iter().collect()
}

/// Whether `environments` (each with the environment it must follow) are
/// in an order the pipeline allows: each that follows another comes after
/// a deployment to that one; a first environment may come anywhere (it is
/// deployed to again). Returns the position of the first out of place.
pub fn out_of_order(environments: &[(String, Option<String>)]) -> Option<usize> {
    environments.iter().enumerate().position(|(i, (_, after))| match after {
        None => false,
        Some(after) => !environments[..i].iter().any(|(name, _)| name == after),
    })
}

// ---------------------------------------------------------------------------
// Reading statements
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Change,
    Provenance,
    Deployment,
    TestResult,
}

impl Kind {
    fn of(predicate_type: &str) -> Option<Kind> {
        match predicate_type {
            CHANGE_PREDICATE => Some(Kind::Change),
            PROVENANCE_PREDICATE => Some(Kind::Provenance),
            DEPLOYMENT_PREDICATE => Some(Kind::Deployment),
            TEST_RESULT_PREDICATE => Some(Kind::TestResult),
            _ => None,
        }
    }

    /// The only role whose key may sign this kind of statement.
    fn role(self) -> KeyRole {
        match self {
            Kind::Change => KeyRole::Gate,
            Kind::Provenance | Kind::TestResult => KeyRole::Builder,
            Kind::Deployment => KeyRole::Deployer,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Change => "change attestation",
            Kind::Provenance => "build provenance",
            Kind::Deployment => "deployment attestation",
            Kind::TestResult => "test result",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Kind::Change => "change.merge",
            Kind::Provenance => "build.finish",
            Kind::Deployment => "deploy.finish",
            Kind::TestResult => "check.finish",
        }
    }
}

/// A statement's predicate, read strictly as the version its type names.
enum Predicate {
    Change(ChangeV1),
    Provenance(ProvenanceV1),
    Deployment(DeploymentV1),
    TestResult,
}

impl Predicate {
    fn read(kind: Kind, statement: &Statement) -> Result<Predicate, serde_json::Error> {
        let value = || statement.predicate.clone();
        Ok(match kind {
            Kind::Change => Predicate::Change(serde_json::from_value(value())?),
            Kind::Provenance => Predicate::Provenance(serde_json::from_value(value())?),
            Kind::Deployment => Predicate::Deployment(serde_json::from_value(value())?),
            Kind::TestResult => Predicate::TestResult,
        })
    }

    fn label(&self) -> String {
        match self {
            Predicate::Change(c) => format!("change {}", c.change),
            Predicate::Provenance(p) => build_label(p),
            Predicate::Deployment(d) => deployment_label(d.deployment, &d.environment),
            Predicate::TestResult => "test result".into(),
        }
    }
}

fn build_label(p: &ProvenanceV1) -> String {
    match p.build_number() {
        Some(n) => format!("build {n}"),
        None => "build".into(),
    }
}

fn deployment_label(number: i64, environment: &str) -> String {
    format!("deployment {number} ({environment})")
}

/// What the verifier reads of a change attestation.
#[derive(Clone, Debug)]
struct ChangeFacts {
    number: i64,
    merge_commit: String,
    target_ref: String,
    authors: Vec<String>,
    approvers: Vec<String>,
    merged_by: String,
    reviewed_head: String,
    /// The check runs of the reviewed head: (head, status, command).
    checks: Vec<(String, String, String)>,
    /// The merge gate's rules as evaluated at the merge: (rule, passed).
    gate: Vec<(String, bool)>,
    /// How the change weakened the gates of the branch it merged into.
    weakened: Vec<String>,
}

impl ChangeFacts {
    fn of(p: &ChangeV1) -> ChangeFacts {
        ChangeFacts {
            number: p.change,
            merge_commit: p.merge_commit.clone(),
            target_ref: p.target_ref.clone(),
            authors: p.authors.iter().map(|a| a.user.clone()).collect(),
            approvers: p.approvers.clone(),
            merged_by: p.merged_by.clone(),
            reviewed_head: p.reviewed_head.clone(),
            checks: p
                .checks
                .iter()
                .map(|c| (c.head.clone(), c.status.clone(), c.command.clone().unwrap_or_else(|| "(no command)".into())))
                .collect(),
            gate: p.gate.iter().map(|r| (r.rule.clone(), r.passed)).collect(),
            weakened: p.weakened.clone(),
        }
    }
}

/// What the verifier reads of a deployment attestation.
#[derive(Clone, Debug)]
struct DeploymentFacts {
    number: i64,
    environment: String,
    after: Option<String>,
    /// The changes the release brings, as the deployer recorded them.
    changes: Vec<i64>,
    /// Their authors and reviewers, as the deployer recorded them.
    release_authors: Vec<String>,
    release_reviewers: Vec<String>,
    /// The environment's gate; `None` when the deployer could not read it.
    gate: Option<EnvironmentGate>,
    build: i64,
    commit: String,
    requester: Option<String>,
    approvers: Vec<String>,
    testers: Vec<String>,
    break_glass: Option<String>,
    result: String,
    deployer: String,
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
    artifacts: Vec<String>,
}

impl DeploymentFacts {
    fn of(p: &DeploymentV1, statement: &Statement) -> DeploymentFacts {
        DeploymentFacts {
            number: p.deployment,
            environment: p.environment.clone(),
            after: p.after.clone(),
            changes: p.release.iter().map(|r| r.change).collect(),
            release_authors: p.release.iter().flat_map(|r| r.authors.iter().cloned()).collect(),
            release_reviewers: p.release.iter().flat_map(|r| r.reviewers.iter().cloned()).collect(),
            gate: p.gate.clone(),
            build: p.build,
            commit: p.commit.clone(),
            requester: p.requester.clone(),
            approvers: p.approvers.clone(),
            testers: p.testers.clone(),
            break_glass: p.break_glass.clone(),
            result: p.result.clone(),
            deployer: p.deployer.clone(),
            started_ms: millis_of_rfc3339(&p.started_on),
            finished_ms: millis_of_rfc3339(&p.finished_on),
            artifacts: statement.subject.iter().filter_map(|s| s.digest.get("sha256").cloned()).collect(),
        }
    }

    fn label(&self) -> String {
        deployment_label(self.number, &self.environment)
    }
}

struct Parsed {
    statement: Statement,
    predicate: Predicate,
}

// ---------------------------------------------------------------------------
// The verifier
// ---------------------------------------------------------------------------

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, rule: &str, subject: &str, passed: bool, message: impl Into<String>) {
        self.0.push(Check { rule: rule.into(), subject: subject.into(), passed, message: message.into() });
    }
}

/// What the checks have found so far: every rule checked, what an auditor
/// should look at, and who held which duty.
struct Tally {
    checks: Checks,
    findings: Vec<String>,
    duties: Vec<Duty>,
}

/// The chain as the statements tell it, and what the ledger logged of it.
struct Chain<'a> {
    project: &'a str,
    /// Whether the bundle is of version 2, which carries the duties' events.
    v2: bool,
    /// The duties' events proved included in the checkpoint.
    logged: &'a [&'a LedgerEvent],
    changes: &'a [ChangeFacts],
    deployments: &'a [DeploymentFacts],
    built: Built<'a>,
}

/// What the provenance says was built: the commit and the artifacts' digests.
struct Built<'a> {
    commit: Option<&'a str>,
    digests: &'a BTreeSet<&'a str>,
}

/// Verifies `bundle` against `trust`, and `artifact` (a local file's
/// digest) against the bundle when given. Never fails: every problem is a
/// failed check in the report.
pub fn verify(bundle: &Bundle, trust: &TrustRoot, artifact: Option<&ArtifactFile>) -> Report {
    let mut tally = Tally { checks: Checks(Vec::new()), findings: Vec::new(), duties: Vec::new() };
    let keys = check_header(&mut tally.checks, bundle, trust);
    let mut verified_by: BTreeMap<String, usize> = BTreeMap::new();
    let checkpoint = check_checkpoint(&mut tally.checks, bundle, &trust.origin, &keys, &mut verified_by);
    let parsed = check_entries(&mut tally.checks, bundle, &keys, checkpoint.as_ref().ok(), &mut verified_by);
    let logged = check_duties_included(&mut tally.checks, bundle, checkpoint.as_ref().ok());

    // The chain: artifact, built from commit C, C merged by custody with
    // independent approvals, then each deployment in environment order.
    let mut changes = Vec::new();
    let mut provenances = Vec::new();
    let mut deployments = Vec::new();
    for p in &parsed {
        match &p.predicate {
            Predicate::Change(c) => changes.push(ChangeFacts::of(c)),
            Predicate::Provenance(provenance) => provenances.push((&p.statement, provenance)),
            Predicate::Deployment(d) => deployments.push(DeploymentFacts::of(d, &p.statement)),
            Predicate::TestResult => {}
        }
    }
    let (artifacts, commit) = check_provenance(&mut tally, &provenances);
    let digests: BTreeSet<&str> = artifacts.iter().map(|a| a.sha256.as_str()).collect();
    check_artifacts(&mut tally.checks, bundle, artifact, &digests);
    if let Some(c) = &commit {
        check_source(&mut tally.checks, c, &changes);
    }
    let chain = Chain {
        project: &bundle.project,
        v2: bundle.version() == Some(2),
        logged: &logged,
        changes: &changes,
        deployments: &deployments,
        built: Built { commit: commit.as_deref(), digests: &digests },
    };
    check_changes(&mut tally, &chain);
    check_deployments(&mut tally, &chain);
    check_subject(&mut tally.checks, bundle, &deployments);

    let Tally { checks: Checks(checks), findings, duties } = tally;
    Report {
        valid: checks.iter().all(|c| c.passed),
        origin: bundle.origin.clone(),
        project: bundle.project.clone(),
        subject: bundle.subject.clone(),
        checkpoint_size: checkpoint.ok().map(|c| c.size),
        commit,
        artifacts,
        environments: deployments.iter().map(|d| d.environment.clone()).collect(),
        people: people_of(&duties),
        duties,
        checks,
        findings,
        keys: keys_used(&keys, &verified_by),
    }
}

/// Verifies one signed statement alone, as an image's referrer carries
/// it: an in-toto statement custody signs, signed by its duty's key valid
/// at the time the statement gives (when it gives none, by a key never
/// revoked). A statement alone proves who signed it, not its place in the
/// ledger nor the rest of its chain: the report says so, and names the
/// bundle that proves those.
pub fn verify_envelope(envelope: &Envelope, trust: &TrustRoot) -> Report {
    let mut checks = Checks(Vec::new());
    let mut findings = vec![
        "a single attestation: its signature is checked, not its place in the ledger nor the chain it belongs to; \
         `custody evidence export` gives the bundle that proves both"
            .to_owned(),
    ];
    let keys = trust_keys(&mut checks, trust);
    let mut verified_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut subject = BundleSubject { deployment: None, artifact: None };
    let (mut project, mut commit, mut environments, mut artifacts) = (String::new(), None, Vec::new(), Vec::new());
    if let Some((statement, kind)) = read_statement(&mut checks, envelope, "envelope") {
        let predicate = Predicate::read(kind, &statement);
        let label = match &predicate {
            Ok(p) => p.label(),
            Err(why) => {
                checks.add(
                    "envelope.predicate",
                    "envelope",
                    false,
                    format!("the {} does not read: {why}", kind.what()),
                );
                "envelope".to_owned()
            }
        };
        let time = match &predicate {
            Ok(Predicate::Deployment(d)) => millis_of_rfc3339(&d.finished_on),
            Ok(Predicate::Provenance(_)) => statement
                .predicate
                .pointer("/runDetails/metadata/finishedOn")
                .and_then(serde_json::Value::as_str)
                .and_then(millis_of_rfc3339),
            _ => None,
        };
        let at = time.unwrap_or_else(|| {
            findings.push("the statement gives no time: it is checked against keys never revoked".into());
            i64::MAX
        });
        let usable: Vec<ValidKey> = if time.is_some() {
            keys.clone()
        } else {
            // Any time will do for a key that was never revoked.
            keys.iter()
                .filter(|k| k.revoked.is_none())
                .map(|k| ValidKey { not_before_ms: i64::MIN, not_after_ms: None, ..k.clone() })
                .collect()
        };
        if let Some(key_id) = check_signature(&mut checks, envelope, at, kind, &label, &usable) {
            *verified_by.entry(key_id).or_default() += 1;
        }
        artifacts = statement
            .subject
            .iter()
            .filter_map(|s| Some(Artifact { name: s.name.clone(), sha256: s.digest.get("sha256")?.clone() }))
            .collect();
        match &predicate {
            Ok(Predicate::Deployment(d)) => {
                subject.deployment = Some(d.deployment);
                project = d.project.clone();
                commit = Some(d.commit.clone());
                environments.push(d.environment.clone());
                if let Some(reason) = &d.break_glass {
                    findings.push(format!("{label} broke the glass: {reason}"));
                }
            }
            Ok(Predicate::Provenance(p)) => commit = Some(p.build_definition.external_parameters.commit.clone()),
            Ok(Predicate::Change(c)) => {
                project = c.project.clone();
                commit = Some(c.merge_commit.clone());
            }
            _ => {}
        }
    }
    let checks = checks.0;
    Report {
        valid: checks.iter().all(|c| c.passed),
        origin: trust.origin.clone(),
        project,
        subject,
        checkpoint_size: None,
        commit,
        artifacts,
        environments,
        duties: Vec::new(),
        people: Vec::new(),
        checks,
        findings,
        keys: keys_used(&keys, &verified_by),
    }
}

/// The bundle's format and origin, and the trust file's keys: the keys,
/// when every one is readable.
fn check_header(checks: &mut Checks, bundle: &Bundle, trust: &TrustRoot) -> Vec<ValidKey> {
    let version = bundle.version();
    checks.add("bundle.format", "bundle", version.is_some(), format!("media type {}", bundle.media_type));
    let origin_ok = bundle.origin == trust.origin;
    checks.add(
        "bundle.origin",
        "bundle",
        origin_ok,
        if origin_ok {
            format!("the bundle is from instance {:?}, which the trust file names", bundle.origin)
        } else {
            format!("the bundle claims instance {:?}, but the trust file is for {:?}", bundle.origin, trust.origin)
        },
    );

    trust_keys(checks, trust)
}

/// The trust file's keys: every one must be readable, or the trust file is
/// not usable (and no key is).
fn trust_keys(checks: &mut Checks, trust: &TrustRoot) -> Vec<ValidKey> {
    match trust.open() {
        Ok(keys) => {
            checks.add("trust.keys", "trust file", true, format!("{} keys read", keys.len()));
            keys
        }
        Err(error) => {
            checks.add("trust.keys", "trust file", false, error.to_string());
            Vec::new()
        }
    }
}

/// The checkpoint, signed by a ledger key of the trust file.
fn check_checkpoint(
    checks: &mut Checks,
    bundle: &Bundle,
    origin: &str,
    keys: &[ValidKey],
    verified_by: &mut BTreeMap<String, usize>,
) -> Result<Checkpoint, String> {
    let checkpoint = open_checkpoint(&bundle.checkpoint, origin, keys, verified_by);
    match &checkpoint {
        Ok(c) => checks.add(
            "checkpoint.signature",
            "checkpoint",
            true,
            format!("the checkpoint of {} events is signed by the ledger key", c.size),
        ),
        Err(why) => checks.add("checkpoint.signature", "checkpoint", false, why.clone()),
    }
    checkpoint
}

/// Each envelope: a statement, signed by its duty's key, recorded by an
/// audit event that is included in the checkpoint's tree. The statements
/// whose predicates read.
fn check_entries(
    checks: &mut Checks,
    bundle: &Bundle,
    keys: &[ValidKey],
    checkpoint: Option<&Checkpoint>,
    verified_by: &mut BTreeMap<String, usize>,
) -> Vec<Parsed> {
    let mut parsed: Vec<Parsed> = Vec::new();
    for (i, entry) in bundle.entries.iter().enumerate() {
        let at = format!("entry {}", i + 1);
        let Some((statement, kind)) = read_statement(checks, &entry.envelope, &at) else {
            continue;
        };
        // An entry whose predicate does not read is still judged on its
        // signature and its place in the ledger, so that the report says
        // everything wrong with it.
        let predicate = Predicate::read(kind, &statement);
        let subject = match &predicate {
            Ok(predicate) => predicate.label(),
            Err(why) => {
                checks.add(
                    "envelope.predicate",
                    &at,
                    false,
                    format!("the {} does not read as {}: {why}", kind.what(), statement.predicate_type),
                );
                at
            }
        };
        if let Some(key_id) = check_signature(checks, &entry.envelope, entry.event.at_ms, kind, &subject, keys) {
            *verified_by.entry(key_id).or_default() += 1;
        }
        check_binding(checks, entry, kind, &subject, predicate.as_ref().ok(), &bundle.project);
        check_inclusion(checks, &entry.event, &entry.proof, &subject, checkpoint);
        if let Ok(predicate) = predicate {
            parsed.push(Parsed { statement, predicate });
        }
    }
    parsed
}

/// An envelope's payload as an in-toto statement of a kind custody signs.
fn read_statement(checks: &mut Checks, envelope: &Envelope, at: &str) -> Option<(Statement, Kind)> {
    let statement = STANDARD
        .decode(&envelope.payload)
        .ok()
        .and_then(|payload| serde_json::from_slice::<Statement>(&payload).ok())
        .filter(|s| s.statement_type == STATEMENT_TYPE);
    let Some(statement) = statement else {
        checks.add("envelope.statement", at, false, "the envelope's payload is not an in-toto Statement v1");
        return None;
    };
    let Some(kind) = Kind::of(&statement.predicate_type) else {
        checks.add(
            "envelope.statement",
            at,
            false,
            format!("predicate type {} is not one custody signs", statement.predicate_type),
        );
        return None;
    };
    Some((statement, kind))
}

/// Version 2: the duties the statements name, as the ledger recorded
/// them; only those proved included count.
fn check_duties_included<'a>(
    checks: &mut Checks,
    bundle: &'a Bundle,
    checkpoint: Option<&Checkpoint>,
) -> Vec<&'a LedgerEvent> {
    let mut logged: Vec<&LedgerEvent> = Vec::new();
    for duty in &bundle.duties {
        let at = format!("{} by {} ({})", duty.event.action, duty.event.actor, duty.event.subject);
        if check_inclusion(checks, &duty.event, &duty.proof, &at, checkpoint) {
            logged.push(&duty.event);
        }
    }
    logged
}

/// The one build provenance of the chain: the artifacts it names and the
/// commit built, when there is exactly one.
fn check_provenance(tally: &mut Tally, provenances: &[(&Statement, &ProvenanceV1)]) -> (Vec<Artifact>, Option<String>) {
    let mut artifacts = Vec::new();
    let mut commit = None;
    match provenances {
        [(s, provenance)] => {
            for subject in &s.subject {
                if let Some(sha) = subject.digest.get("sha256") {
                    artifacts.push(Artifact { name: subject.name.clone(), sha256: sha.clone() });
                }
            }
            let built = &provenance.build_definition.external_parameters.commit;
            let step = build_label(provenance);
            tally.checks.add(
                "chain.provenance",
                &step,
                !artifacts.is_empty(),
                format!("{} artifacts built from commit {built}", artifacts.len()),
            );
            tally.duties.push(Duty {
                step,
                duty: "builder".into(),
                holders: vec![provenance.run_details.builder.id.clone()],
            });
            commit = Some(built.clone());
        }
        [] => tally.checks.add("chain.provenance", "bundle", false, "the bundle holds no build provenance"),
        many => tally.checks.add(
            "chain.provenance",
            "bundle",
            false,
            format!("the bundle holds {} build provenances; one artifact is built once", many.len()),
        ),
    }
    (artifacts, commit)
}

/// The artifact the bundle is for, and the local file when given, among
/// those the provenance names.
fn check_artifacts(checks: &mut Checks, bundle: &Bundle, artifact: Option<&ArtifactFile>, digests: &BTreeSet<&str>) {
    if let Some(wanted) = &bundle.subject.artifact {
        let found = digests.contains(wanted.as_str());
        checks.add(
            "artifact.digest",
            &format!("sha256:{wanted}"),
            found,
            if found {
                "the bundle's artifact is one the builder's provenance names".to_owned()
            } else {
                format!("the bundle is for artifact sha256:{wanted}, which the provenance does not name")
            },
        );
    }
    if let Some(file) = artifact {
        let found = digests.contains(file.sha256.as_str());
        checks.add(
            "artifact.file",
            &file.name,
            found,
            if found {
                format!("the file's sha256 {} is an artifact the builder signed", file.sha256)
            } else {
                format!(
                    "the file's sha256 is {}, which no provenance in the bundle names: it is not the artifact built",
                    file.sha256
                )
            },
        );
    }
}

/// The source: custody merged the commit built, through a change.
fn check_source(checks: &mut Checks, commit: &str, changes: &[ChangeFacts]) {
    let merged = changes.iter().find(|ch| ch.merge_commit == commit);
    checks.add(
        "chain.source",
        &format!("commit {}", short(commit)),
        merged.is_some(),
        match merged {
            Some(ch) => format!("custody merged it as change {} into {}", ch.number, ch.target_ref),
            None => format!("no change attestation in the bundle says custody merged commit {commit}"),
        },
    );
}

/// The chain ends with the deployment the bundle is for, when it names one.
fn check_subject(checks: &mut Checks, bundle: &Bundle, deployments: &[DeploymentFacts]) {
    if let Some(number) = bundle.subject.deployment {
        let last = deployments.last().map(|d| d.number);
        checks.add(
            "chain.subject",
            &format!("deployment {number}"),
            last == Some(number),
            if last == Some(number) {
                "the chain ends with the deployment the bundle is for".to_owned()
            } else {
                format!("the bundle is for deployment {number}, but its chain ends with {last:?}")
            },
        );
    }
}

/// Who held which duties: builders and deployers are services, not people.
fn people_of(duties: &[Duty]) -> Vec<Person> {
    let mut people: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in duties {
        if d.duty == "builder" || d.duty == "deployer" {
            continue;
        }
        for h in &d.holders {
            people.entry(h.clone()).or_default().push(format!("{} ({})", d.duty, d.step));
        }
    }
    people.into_iter().map(|(name, duties)| Person { name, duties }).collect()
}

/// Each key of the trust file, and how many signatures it verified.
fn keys_used(keys: &[ValidKey], verified_by: &BTreeMap<String, usize>) -> Vec<KeyUsed> {
    keys.iter()
        .map(|k| KeyUsed {
            role: k.key.role().as_str().to_owned(),
            key_id: k.key.key_id(),
            fingerprint: k.key.fingerprint(),
            verified: verified_by.get(&k.key.key_id()).copied().unwrap_or(0),
        })
        .collect()
}

/// The rules of each change: approved, independently, on the reviewed head,
/// through its gate, every approval logged.
fn check_changes(tally: &mut Tally, chain: &Chain<'_>) {
    for ch in chain.changes {
        let step = format!("change {}", ch.number);
        check_change_approvals(tally, ch, &step);
        check_change_gate(tally, ch, &step);
        if chain.v2 {
            check_change_logged(&mut tally.checks, chain, ch, &step);
        }
        let twice = repeated(&ch.approvers);
        if !twice.is_empty() {
            tally.checks.add(
                "change.distinct_approvers",
                &step,
                false,
                format!("{} approved more than once", twice.join(", ")),
            );
        }
    }
}

/// A change's duties, and that someone approved it who is not its author.
fn check_change_approvals(tally: &mut Tally, ch: &ChangeFacts, step: &str) {
    tally.duties.push(Duty { step: step.to_owned(), duty: "author".into(), holders: ch.authors.clone() });
    tally.duties.push(Duty { step: step.to_owned(), duty: "reviewer".into(), holders: ch.approvers.clone() });
    tally.duties.push(Duty { step: step.to_owned(), duty: "merger".into(), holders: vec![ch.merged_by.clone()] });
    tally.checks.add(
        "change.approved",
        step,
        !ch.approvers.is_empty(),
        if ch.approvers.is_empty() {
            "the change was merged without an approval".to_owned()
        } else {
            format!("approved by {}", ch.approvers.join(", "))
        },
    );
    let bad = approvers_who_authored(&ch.approvers, &ch.authors);
    tally.checks.add(
        "change.approver_not_author",
        step,
        bad.is_empty(),
        if bad.is_empty() {
            format!("no approver is among its authors ({})", ch.authors.join(", "))
        } else {
            format!("{} approved the change but is among its authors", bad.join(", "))
        },
    );
}

/// A change's checks on the reviewed head, and its merge gate.
fn check_change_gate(tally: &mut Tally, ch: &ChangeFacts, step: &str) {
    let (passed, message) = checks_on_head(&ch.checks, &ch.reviewed_head);
    tally.checks.add("change.checks", step, passed, message);
    if !ch.weakened.is_empty() {
        tally.findings.push(format!("{step}: weakened the gate: {}", ch.weakened.join("; ")));
    }
    let failed: Vec<&str> = ch.gate.iter().filter(|(_, passed)| !passed).map(|(rule, _)| rule.as_str()).collect();
    tally.checks.add(
        "change.gate",
        step,
        !ch.gate.is_empty() && failed.is_empty(),
        match (ch.gate.len(), failed.as_slice()) {
            (0, _) => "the change attestation records no merge gate".to_owned(),
            (n, []) => format!("all {n} rules of the merge gate passed"),
            (_, failed) => format!("merged while {} failed", failed.join(", ")),
        },
    );
}

/// Version 2: every approval of a change is an event in the ledger.
fn check_change_logged(checks: &mut Checks, chain: &Chain<'_>, ch: &ChangeFacts, step: &str) {
    let subject = format!("change:{}/{}", chain.project, ch.number);
    let missing = unlogged(&ch.approvers, chain.logged, "change.review.approve", &subject, Some(&ch.reviewed_head));
    checks.add(
        "change.approvals_logged",
        step,
        missing.is_empty(),
        if missing.is_empty() {
            format!("every approval of {} is an event in the ledger", short(&ch.reviewed_head))
        } else {
            format!(
                "the ledger holds no approval of {} by {}, whom the attestation names",
                short(&ch.reviewed_head),
                missing.join(", ")
            )
        },
    );
}

/// The rules of each deployment: its environment order, its release, its
/// independent approvers and testers, its artifacts, every decision logged.
fn check_deployments(tally: &mut Tally, chain: &Chain<'_>) {
    let deployments = chain.deployments;
    for (i, d) in deployments.iter().enumerate() {
        let step = d.label();
        check_deployment_duties(tally, chain, d, &step);
        check_deployment_build(&mut tally.checks, &chain.built, d, &step);
        check_order(&mut tally.checks, &deployments[..i], d, &step);
        let (authors, reviewers) = check_release(&mut tally.checks, chain.changes, d, &step);
        check_approvers(tally, d, &step, &authors);
        check_reviewers(tally, d, &step, &reviewers);
        check_testers(tally, d, &step, &authors);
    }
    // Deployments, in the bundle's order, which must be the environments'.
    let order: Vec<(String, Option<String>)> =
        deployments.iter().map(|d| (d.environment.clone(), d.after.clone())).collect();
    if let Some(position) = out_of_order(&order) {
        // Already reported per deployment; this names the whole sequence.
        tally.findings.push(format!(
            "the deployments are listed as {}; position {} breaks the environment order",
            order.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>().join(" -> "),
            position + 1
        ));
    }
}

/// A deployment's duties, and in version 2 that every approval and test
/// sign-off it names is an event in the ledger.
fn check_deployment_duties(tally: &mut Tally, chain: &Chain<'_>, d: &DeploymentFacts, step: &str) {
    let duty = |duty: &str, holders: Vec<String>| Duty { step: step.to_owned(), duty: duty.into(), holders };
    tally.duties.push(duty("requester", d.requester.iter().cloned().collect()));
    tally.duties.push(duty("approver", d.approvers.clone()));
    tally.duties.push(duty("tester", d.testers.clone()));
    tally.duties.push(duty("deployer", vec![d.deployer.clone()]));

    if chain.v2 {
        let subject = format!("deployment:{}/{}", chain.project, d.number);
        let mut missing = unlogged(&d.approvers, chain.logged, "deploy.approve", &subject, None);
        missing.extend(
            unlogged(&d.testers, chain.logged, "deploy.test_passed", &subject, None)
                .into_iter()
                .map(|t| format!("{t} (test sign-off)")),
        );
        tally.checks.add(
            "deploy.decisions_logged",
            step,
            missing.is_empty(),
            if missing.is_empty() {
                "every approval and test sign-off it names is an event in the ledger".to_owned()
            } else {
                format!("the ledger holds no decision by {}, whom the attestation names", missing.join(", "))
            },
        );
    }
}

/// A deployment deployed the commit and artifacts built, and succeeded.
fn check_deployment_build(checks: &mut Checks, built: &Built<'_>, d: &DeploymentFacts, step: &str) {
    if let Some(c) = built.commit {
        checks.add(
            "deploy.commit",
            step,
            d.commit == c,
            if d.commit == c {
                format!("deployed build {} of commit {}", d.build, short(c))
            } else {
                format!("deployed commit {}, not the commit built ({})", d.commit, c)
            },
        );
    }
    let foreign: Vec<&String> = d.artifacts.iter().filter(|a| !built.digests.contains(a.as_str())).collect();
    checks.add(
        "deploy.artifact",
        step,
        foreign.is_empty() && !d.artifacts.is_empty(),
        if foreign.is_empty() {
            format!("deployed {} artifacts, each named by the provenance", d.artifacts.len())
        } else {
            format!(
                "deployed sha256:{}, which the provenance does not name",
                foreign.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", sha256:")
            )
        },
    );
    checks.add(
        "deploy.result",
        step,
        d.result == "succeeded",
        format!("the deployment {}", if d.result.is_empty() { "has no result" } else { &d.result }),
    );
}

/// Environment order: a deployment to an environment that follows another
/// comes after one of the same build there (among `before`, the deployments
/// before it in the bundle), and in time. A first environment may be
/// deployed to again later.
fn check_order(checks: &mut Checks, before: &[DeploymentFacts], d: &DeploymentFacts, step: &str) {
    let earlier = |after: &str| before.iter().rev().find(|p| p.environment == after && p.build == d.build);
    let (passed, message) = match &d.after {
        None => (true, "a first environment of the pipeline".to_owned()),
        Some(after) => match earlier(after) {
            None => (
                false,
                format!(
                    "{} must follow {after}, but the bundle holds no deployment of build {} to {after} before it: \
                     the environments are out of order",
                    d.environment, d.build
                ),
            ),
            Some(prev) => match (prev.finished_ms, d.started_ms) {
                (Some(done), Some(start)) if done <= start => {
                    (true, format!("follows {} to {after}, finished before it started", prev.label()))
                }
                (Some(_), Some(_)) => (false, format!("started before {} to {after} had finished", prev.label())),
                _ => (false, "the deployments do not say when they started and finished".to_owned()),
            },
        },
    };
    checks.add("deploy.order", step, passed, message);
}

/// The release: every change it brings is attested in the bundle. Returns
/// the release's authors and reviewers, as the change attestations name
/// them and as the deployment attestation does: whoever either names counts.
fn check_release(
    checks: &mut Checks,
    changes: &[ChangeFacts],
    d: &DeploymentFacts,
    step: &str,
) -> (Vec<String>, Vec<String>) {
    let missing: Vec<i64> = d.changes.iter().copied().filter(|n| !changes.iter().any(|c| c.number == *n)).collect();
    let release: Vec<&ChangeFacts> = changes.iter().filter(|c| d.changes.contains(&c.number)).collect();
    checks.add(
        "deploy.changes",
        step,
        missing.is_empty(),
        if missing.is_empty() {
            format!("releases changes {:?}, each attested in the bundle", d.changes)
        } else {
            format!("releases changes {missing:?}, whose attestations the bundle lacks")
        },
    );
    let mut authors: Vec<String> = release.iter().flat_map(|c| c.authors.iter().cloned()).collect();
    authors.extend(d.release_authors.iter().cloned());
    let mut reviewers: Vec<String> = release.iter().flat_map(|c| c.approvers.iter().cloned()).collect();
    reviewers.extend(d.release_reviewers.iter().cloned());
    (authors, reviewers)
}

/// A deployment's approvals: as many as its gate needs, none by an author
/// of the release, none by its requester.
fn check_approvers(tally: &mut Tally, d: &DeploymentFacts, step: &str, authors: &[String]) {
    let checks = &mut tally.checks;
    if d.gate.is_none() {
        tally.findings.push(format!(
            "{step}: the deployer could not read the environment's gate; its approvals and tests are not checked against it"
        ));
    }
    let needed = d.gate.as_ref().map_or(0, |g| g.approvals) as usize;
    if needed > 0 {
        checks.add(
            "deploy.approvals",
            step,
            d.approvers.len() >= needed && repeated(&d.approvers).is_empty(),
            format!("{} of {needed} approvals, by {}", d.approvers.len(), none_or(&d.approvers)),
        );
    }
    let bad = approvers_who_authored(&d.approvers, authors);
    checks.add(
        "deploy.approver_not_author",
        step,
        bad.is_empty(),
        if bad.is_empty() {
            format!("no approver ({}) wrote a change of the release", none_or(&d.approvers))
        } else {
            format!("{} approved the deployment but wrote a change of the release", bad.join(", "))
        },
    );
    let own = requester_approved(d.requester.as_deref(), &d.approvers);
    checks.add(
        "deploy.approver_not_requester",
        step,
        !own,
        if own {
            format!("{} requested the deployment and approved it", d.requester.as_deref().unwrap_or(""))
        } else {
            match &d.requester {
                Some(r) => format!("requested by {r}, approved by others"),
                None => "an automatic promotion, requested by nobody".to_owned(),
            }
        },
    );
}

/// No approver of a deployment reviewed a change of its release, unless
/// the environment allows it (then it is a finding).
fn check_reviewers(tally: &mut Tally, d: &DeploymentFacts, step: &str, reviewers: &[String]) {
    let reviewed = approvers_who_reviewed(&d.approvers, reviewers);
    let allowed = d.gate.as_ref().is_some_and(|g| g.reviewers_may_approve);
    if !reviewed.is_empty() && allowed {
        tally.findings.push(format!(
            "{step}: {} reviewed a change and approved its deployment, as the environment allows",
            reviewed.join(", ")
        ));
    }
    tally.checks.add(
        "deploy.approver_not_reviewer",
        step,
        reviewed.is_empty() || allowed,
        if reviewed.is_empty() {
            "no approver reviewed a change of the release".to_owned()
        } else if allowed {
            format!("{} reviewed a change and approved its deployment, allowed by the environment", reviewed.join(", "))
        } else {
            format!("{} reviewed a change of the release and approved its deployment", reviewed.join(", "))
        },
    );
}

/// A deployment's testers: none an author of the release, and a sign-off
/// when the environment needs one, unless by break-glass.
fn check_testers(tally: &mut Tally, d: &DeploymentFacts, step: &str, authors: &[String]) {
    let bad = testers_who_authored(&d.testers, authors);
    tally.checks.add(
        "deploy.tester_not_author",
        step,
        bad.is_empty(),
        if bad.is_empty() {
            format!("no tester ({}) wrote a change of the release", none_or(&d.testers))
        } else {
            format!("{} signed off the tests but wrote a change of the release", bad.join(", "))
        },
    );
    if d.gate.as_ref().is_some_and(|g| g.testers.is_some()) {
        let tested = !d.testers.is_empty() || d.break_glass.is_some();
        tally.checks.add(
            "deploy.tested",
            step,
            tested,
            if !d.testers.is_empty() {
                format!("manual tests signed off by {}", d.testers.join(", "))
            } else if d.break_glass.is_some() {
                "manual tests skipped by break-glass".to_owned()
            } else {
                "the environment needs a test sign-off and nobody gave one".to_owned()
            },
        );
    }
    if let Some(why) = &d.break_glass {
        tally.findings.push(format!("{step}: break-glass deployment ({why}); soak and manual tests were skipped"));
    }
}

fn short(commit: &str) -> &str {
    // A bundle is untrusted input: cut on a character boundary.
    commit.char_indices().nth(12).map_or(commit, |(i, _)| &commit[..i])
}

fn none_or(names: &[String]) -> String {
    if names.is_empty() {
        "nobody".into()
    } else {
        names.join(", ")
    }
}

fn open_checkpoint(
    note: &str,
    origin: &str,
    keys: &[ValidKey],
    verified_by: &mut BTreeMap<String, usize>,
) -> Result<Checkpoint, String> {
    let ledger: Vec<&ValidKey> = keys.iter().filter(|k| k.key.role() == KeyRole::Ledger).collect();
    if ledger.is_empty() {
        return Err("the trust file holds no ledger key".into());
    }
    let mut last = String::new();
    for key in ledger {
        match NoteVerifier::new(origin, &key.key).and_then(|v| v.open(note)) {
            // A checkpoint carries no time: once a ledger key is revoked,
            // nothing tells a checkpoint it signed before from one an
            // attacker holding it signed after.
            Ok(_) if key.revoked.is_some() => {
                let (since, reason) = key.revoked.as_ref().expect("checked");
                return Err(format!(
                    "the checkpoint is signed by the ledger key {}, revoked since {} ({reason}); a checkpoint carries \
                     no time, so none it signed is trusted: export the evidence again, proved against a checkpoint \
                     of the current ledger key",
                    short(&key.key.key_id()),
                    rfc3339_of_millis(*since)
                ));
            }
            Ok(checkpoint) => {
                *verified_by.entry(key.key.key_id()).or_default() += 1;
                return Ok(checkpoint);
            }
            Err(error) => last = error.to_string(),
        }
    }
    Err(format!("the checkpoint does not verify with the ledger key: {last}"))
}

/// Checks an envelope's signature: the id of the key that verified it.
fn check_signature(
    checks: &mut Checks,
    envelope: &Envelope,
    at: i64,
    kind: Kind,
    subject: &str,
    keys: &[ValidKey],
) -> Option<String> {
    let role = kind.role();
    let own: Vec<&ValidKey> = keys.iter().filter(|k| k.key.role() == role).collect();
    let valid: Vec<&&ValidKey> = own.iter().filter(|k| k.valid_at(at)).collect();
    if let Some(key) = valid.iter().find(|k| envelope.verify(&k.key).is_ok()) {
        let key_id = key.key.key_id();
        checks.add(
            "envelope.signature",
            subject,
            true,
            format!("the {} is signed by the {} key {}", kind.what(), role.as_str(), short(&key_id)),
        );
        return Some(key_id);
    }
    let message = if let Some(other) = keys.iter().find(|k| k.key.role() != role && envelope.verify(&k.key).is_ok()) {
        format!(
            "the {} is signed by the {} key, not the {} key: only the {} key may sign it",
            kind.what(),
            other.key.role().as_str(),
            role.as_str(),
            role.as_str()
        )
    } else if let Some((key, (since, reason))) =
        own.iter().filter_map(|k| k.revoked_at(at).map(|r| (k, r))).find(|(k, _)| envelope.verify(&k.key).is_ok())
    {
        format!(
            "the {} is signed by the {} key {}, which is revoked since {} ({reason}); it was recorded at {}",
            kind.what(),
            role.as_str(),
            short(&key.key.key_id()),
            rfc3339_of_millis(*since),
            rfc3339_of_millis(at)
        )
    } else if own.iter().any(|k| envelope.verify(&k.key).is_ok()) {
        format!(
            "the {} is signed by a {} key that was not valid at {}",
            kind.what(),
            role.as_str(),
            rfc3339_of_millis(at)
        )
    } else {
        format!("no signature by the {} key verifies on the {}: it was altered or forged", role.as_str(), kind.what())
    };
    checks.add("envelope.signature", subject, false, message);
    None
}

fn check_binding(
    checks: &mut Checks,
    entry: &Entry,
    kind: Kind,
    subject: &str,
    predicate: Option<&Predicate>,
    project: &str,
) {
    let event = &entry.event;
    let digest = entry.envelope.digest();
    let recorded = event.details["envelope_sha256"].as_str();
    let expected_subject = match predicate {
        Some(Predicate::Change(c)) => Some(format!("change:{project}/{}", c.change)),
        Some(Predicate::Deployment(d)) => Some(format!("deployment:{project}/{}", d.deployment)),
        Some(Predicate::Provenance(p)) => p.build_number().map(|n| format!("build:{project}/{n}")),
        Some(Predicate::TestResult) | None => None,
    };
    let (passed, message) = if event.action != kind.action() {
        (
            false,
            format!(
                "audit event {} is a {}, not the {} that records a {}",
                event.seq,
                event.action,
                kind.action(),
                kind.what()
            ),
        )
    } else if expected_subject.as_ref().is_some_and(|s| s != &event.subject) {
        (
            false,
            format!(
                "audit event {} is about {}, but the {} is about {}",
                event.seq,
                event.subject,
                kind.what(),
                expected_subject.unwrap_or_default()
            ),
        )
    } else if recorded != Some(digest.as_str()) {
        (
            false,
            match recorded {
                Some(r) => format!(
                    "audit event {} recorded envelope sha256:{r}, but this envelope's digest is sha256:{digest}: it is not the envelope the ledger recorded",
                    event.seq
                ),
                None => format!("audit event {} records no envelope digest", event.seq),
            },
        )
    } else {
        (true, format!("audit event {} ({}) records this envelope's digest", event.seq, event.action))
    };
    checks.add("ledger.binding", subject, passed, message);
}

/// The people of `named` for whom no logged event has `action` about
/// `subject` (and, when given, was taken on `head`).
fn unlogged(named: &[String], logged: &[&LedgerEvent], action: &str, subject: &str, head: Option<&str>) -> Vec<String> {
    named
        .iter()
        .filter(|who| {
            !logged.iter().any(|e| {
                e.action == action
                    && e.subject == subject
                    && &&e.actor == who
                    && head.is_none_or(|h| e.details["head"].as_str() == Some(h))
            })
        })
        .cloned()
        .collect()
}

/// Checks that `event` is in the checkpoint's tree by `proof`; whether it is.
fn check_inclusion(
    checks: &mut Checks,
    event: &LedgerEvent,
    proof: &InclusionProof,
    subject: &str,
    checkpoint: Option<&Checkpoint>,
) -> bool {
    let Some(checkpoint) = checkpoint else {
        checks.add(
            "ledger.inclusion",
            subject,
            false,
            format!("audit event {} cannot be proved: the checkpoint did not verify", event.seq),
        );
        return false;
    };
    let result = if proof.tree_size != checkpoint.size {
        Err(format!(
            "the inclusion proof of audit event {} is for a tree of {} events, the checkpoint's has {}",
            event.seq, proof.tree_size, checkpoint.size
        ))
    } else if event.seq < 1 || proof.leaf_index != event.seq as u64 - 1 {
        Err(format!(
            "the inclusion proof is of leaf {}, but audit event {} is leaf {}",
            proof.leaf_index,
            event.seq,
            event.seq.saturating_sub(1)
        ))
    } else {
        match proof.decoded() {
            None => Err(format!(
                "the inclusion proof of audit event {} holds a hash that is not 32 bytes of base64",
                event.seq
            )),
            Some(hashes) => merkle::verify_inclusion(
                &event.leaf_hash(),
                proof.leaf_index,
                proof.tree_size,
                &hashes,
                &checkpoint.root,
            )
            .map_err(|e| format!("audit event {} is not in the checkpoint's tree: {e}", event.seq)),
        }
    };
    let included = result.is_ok();
    match result {
        Ok(()) => checks.add(
            "ledger.inclusion",
            subject,
            true,
            format!("audit event {} is included in the checkpoint of {} events", event.seq, checkpoint.size),
        ),
        Err(message) => checks.add("ledger.inclusion", subject, false, message),
    }
    included
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_approver_who_is_an_author_is_named() {
        assert_eq!(approvers_who_authored(&names(&["bob", "alice"]), &names(&["alice"])), names(&["alice"]));
        assert!(approvers_who_authored(&names(&["bob"]), &names(&["alice"])).is_empty());
        assert!(requester_approved(Some("carol"), &names(&["carol"])));
        assert!(!requester_approved(None, &names(&["carol"])));
        assert_eq!(repeated(&names(&["bob", "bob"])), names(&["bob"]));
    }

    fn deployment(gate: Option<EnvironmentGate>, approvers: &[&str]) -> DeploymentFacts {
        DeploymentFacts {
            number: 2,
            environment: "production".into(),
            after: Some("staging".into()),
            changes: vec![1],
            release_authors: names(&["alice"]),
            release_reviewers: names(&["bob"]),
            gate,
            build: 1,
            commit: "aa".into(),
            requester: Some("alice".into()),
            approvers: names(approvers),
            testers: vec![],
            break_glass: None,
            result: "succeeded".into(),
            deployer: "custody-deployer".into(),
            started_ms: None,
            finished_ms: None,
            artifacts: vec![],
        }
    }

    fn approvals_checked(d: &DeploymentFacts) -> Tally {
        let mut tally = Tally { checks: Checks(Vec::new()), findings: Vec::new(), duties: Vec::new() };
        check_approvers(&mut tally, d, "deployment 2 (production)", &names(&["alice"]));
        tally
    }

    #[test]
    fn a_deployment_whose_gate_the_deployer_could_not_read_is_a_finding_not_a_pass() {
        let unread = approvals_checked(&deployment(None, &[]));
        assert_eq!(unread.findings.len(), 1, "{:?}", unread.findings);
        assert!(unread.findings[0].contains("could not read the environment's gate"), "{:?}", unread.findings);
        // With the gate read, no such finding, and its approvals are counted.
        let gate = EnvironmentGate { approvals: 1, approvers: None, testers: None, reviewers_may_approve: false };
        let read = approvals_checked(&deployment(Some(gate.clone()), &[]));
        assert!(read.findings.is_empty(), "{:?}", read.findings);
        let approvals = read.checks.0.iter().find(|c| c.rule == "deploy.approvals").expect("approvals checked");
        assert!(!approvals.passed, "no approver yet: {approvals:?}");
        let approved = approvals_checked(&deployment(Some(gate), &["carol"]));
        assert!(approved.checks.0.iter().any(|c| c.rule == "deploy.approvals" && c.passed));
    }

    #[test]
    fn a_bundle_of_nonsense_is_reported_not_panicked_on() {
        use crate::evidence::{Bundle, BundleSubject, Entry, InclusionProof, LedgerEvent, BUNDLE_MEDIA_TYPE};
        use crate::statement::Subject;
        use crate::{KeyRole, ServiceKey};
        let gate = ServiceKey::generate(KeyRole::Gate);
        let odd = Statement::new(
            vec![Subject { name: "é".into(), digest: Default::default() }],
            CHANGE_PREDICATE,
            serde_json::json!({ "change": -1, "merge_commit": "ééééééééééééééé", "authors": 3 }),
        );
        let provenance = Statement::new(
            vec![],
            PROVENANCE_PREDICATE,
            serde_json::json!({ "buildDefinition": { "externalParameters": { "commit": "ééééééééééééééé" } } }),
        );
        let entry = |statement: &Statement, seq: i64| Entry {
            envelope: statement.sign(&gate).expect("a key in memory signs"),
            event: LedgerEvent {
                seq,
                at_ms: i64::MIN,
                actor: String::new(),
                action: String::new(),
                subject: String::new(),
                details: Value::Null,
            },
            proof: InclusionProof { leaf_index: u64::MAX, tree_size: 0, hashes: vec!["!".into()] },
        };
        let bundle = Bundle {
            media_type: BUNDLE_MEDIA_TYPE.into(),
            origin: "x".into(),
            project: "p".into(),
            subject: BundleSubject { deployment: Some(1), artifact: Some("zz".into()) },
            checkpoint: "not a note".into(),
            entries: vec![entry(&odd, 0), entry(&provenance, i64::MIN), entry(&provenance, i64::MAX)],
            duties: vec![],
        };
        let report = verify(&bundle, &TrustRoot::new("x", vec![]), None);
        assert!(!report.valid);
        assert!(report.failures().any(|c| c.rule == "checkpoint.signature"));
        assert!(report.failures().any(|c| c.rule == "envelope.signature"));
        // With a checkpoint that verifies, the proofs themselves are judged.
        let ledger = ServiceKey::generate(KeyRole::Ledger);
        let note = crate::checkpoint::Checkpoint { origin: "x".into(), size: 0, root: crate::merkle::empty_root() }
            .sign(&ledger)
            .unwrap();
        let trust = TrustRoot::new("x", vec![crate::trust::TrustedKey::current(&ledger.public(), 0)]);
        let report = verify(&Bundle { checkpoint: note.clone(), ..bundle.clone() }, &trust, None);
        assert!(report.checks.iter().any(|c| c.rule == "checkpoint.signature" && c.passed), "{}", report.to_text());
        assert_eq!(report.failures().filter(|c| c.rule == "ledger.inclusion").count(), 3);

        // Once that ledger key is revoked, none of its checkpoints is
        // trusted: a checkpoint carries no time to tell before from after.
        let mut revoked = crate::trust::TrustedKey::current(&ledger.public(), 0);
        revoked.not_after = Some(rfc3339_of_millis(10));
        revoked.revoked = Some(crate::trust::Revocation { since: rfc3339_of_millis(5), reason: "stolen".into() });
        let report = verify(&Bundle { checkpoint: note, ..bundle }, &TrustRoot::new("x", vec![revoked]), None);
        let failure = report.failures().find(|c| c.rule == "checkpoint.signature").expect("the checkpoint fails");
        assert!(failure.message.contains("revoked since") && failure.message.contains("stolen"), "{}", failure.message);
        assert!(failure.message.contains("export the evidence again"), "{}", failure.message);
    }

    #[test]
    fn a_signed_change_attestation_missing_a_field_fails_rather_than_reading_as_empty() {
        use crate::evidence::{Bundle, BundleSubject, Entry, InclusionProof, LedgerEvent, BUNDLE_MEDIA_TYPE};
        use crate::{KeyRole, ServiceKey};
        let gate = ServiceKey::generate(KeyRole::Gate);
        let mut predicate = serde_json::json!({
            "project": "p", "change": 1, "title": "t", "target_ref": "refs/heads/main", "base": null,
            "reviewed_head": "aa", "merge_commit": "bb", "commits": 1, "authors": [], "approvers": ["bob"],
            "merged_by": "alice", "checks": [], "policy": { "path": ".custody/pipeline.toml", "digest": null },
            "gate": [], "weakened": [],
        });
        assert!(serde_json::from_value::<ChangeV1>(predicate.clone()).is_ok(), "the complete predicate reads");
        predicate.as_object_mut().unwrap().remove("merged_by");
        let statement = Statement::new(vec![], CHANGE_PREDICATE, predicate);
        let bundle = Bundle {
            media_type: BUNDLE_MEDIA_TYPE.into(),
            origin: "x".into(),
            project: "p".into(),
            subject: BundleSubject { deployment: None, artifact: None },
            checkpoint: String::new(),
            entries: vec![Entry {
                envelope: statement.sign(&gate).expect("a key in memory signs"),
                event: LedgerEvent {
                    seq: 1,
                    at_ms: 0,
                    actor: String::new(),
                    action: "change.merge".into(),
                    subject: "change:p/1".into(),
                    details: Value::Null,
                },
                proof: InclusionProof { leaf_index: 0, tree_size: 1, hashes: vec![] },
            }],
            duties: vec![],
        };
        let trust = TrustRoot::new("x", vec![crate::trust::TrustedKey::current(&gate.public(), 0)]);
        let report = verify(&bundle, &trust, None);
        let failure = report.failures().find(|c| c.rule == "envelope.predicate").expect("the predicate fails");
        assert!(failure.message.contains("missing field `merged_by`"), "{}", failure.message);
        assert!(
            report.checks.iter().any(|c| c.rule == "envelope.signature" && c.passed),
            "still judged on its signature"
        );
        assert!(
            !report.duties.iter().any(|d| d.duty == "merger"),
            "nothing is read from a predicate that does not read"
        );
    }

    #[test]
    fn a_check_that_failed_or_ran_on_another_head_fails_the_change() {
        let run = |head: &str, status: &str| (head.to_owned(), status.to_owned(), "scripts/check.sh".to_owned());
        assert!(checks_on_head(&[run("aaaa", "passed")], "aaaa").0);
        assert!(checks_on_head(&[], "aaaa").0, "no check configured");
        let (passed, message) = checks_on_head(&[run("aaaa", "failed")], "aaaa");
        assert!(!passed && message.contains("failed"), "{message}");
        let (passed, message) = checks_on_head(&[run("bbbb", "passed")], "aaaa");
        assert!(!passed && message.contains("not the reviewed head"), "{message}");
    }

    #[test]
    fn environments_out_of_order_are_found() {
        let staging = ("staging".to_owned(), None);
        let production = ("production".to_owned(), Some("staging".to_owned()));
        assert_eq!(out_of_order(&[staging.clone(), production.clone()]), None);
        // Deployed to staging again after production: still in order.
        assert_eq!(out_of_order(&[staging.clone(), production.clone(), staging.clone(), production.clone()]), None);
        assert_eq!(out_of_order(&[production, staging]), Some(0));
    }
}
