//! custody's own predicates: the change attestation (who wrote, reviewed
//! and merged a change, under which gate) and the deployment attestation
//! (who requested, approved, tested and ran a deployment, of what).
//!
//! Each is a versioned serde type. The signer writes it and the verifier
//! reads it back strictly: every field of the version must be there with
//! its type, and a field that may be empty is written as `null`, never
//! left out. As in SLSA, a reader ignores fields it does not know, so a
//! later minor addition does not break an older verifier; anything a
//! verifier relies on changing its meaning is a new version.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::statement::{Statement, Subject};

/// The predicate type of the change attestation, version 1. Modelled on
/// SLSA's Source VSA.
pub const CHANGE_PREDICATE: &str = "https://custody.dev/attestation/change/v1";

/// The predicate type of the deployment attestation, version 1.
pub const DEPLOYMENT_PREDICATE: &str = "https://custody.dev/attestation/deployment/v1";

/// A field that must be present, as a value or as `null`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(d)
}

/// The change attestation, version 1: signed by the gate key when custody
/// merges a change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeV1 {
    /// The project.
    pub project: String,
    /// The change's number in its project.
    pub change: i64,
    /// Its title.
    pub title: String,
    /// The ref it merged into (`refs/heads/main`).
    pub target_ref: String,
    /// The target's tip it merged onto, when the target existed.
    #[serde(deserialize_with = "nullable")]
    pub base: Option<String>,
    /// The head the gate evaluated and the approvals are for.
    pub reviewed_head: String,
    /// The merge commit custody made.
    pub merge_commit: String,
    /// How many commits the change brought.
    pub commits: u64,
    /// Its authors, each with every reason custody counts them one.
    pub authors: Vec<ChangeAuthor>,
    /// The people whose approvals opened the gate.
    pub approvers: Vec<String>,
    /// Who asked custody to merge it.
    pub merged_by: String,
    /// The check runs of the reviewed head.
    pub checks: Vec<CheckRecord>,
    /// The policy the gate came from.
    pub policy: Policy,
    /// The merge gate, rule by rule, as evaluated at the merge.
    pub gate: Vec<GateRule>,
    /// How the change weakened the gates of the branch it merged into, one
    /// line each.
    pub weakened: Vec<String>,
}

/// An author of a change and why custody counts them one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeAuthor {
    /// The user.
    pub user: String,
    /// Every reason.
    pub why: Vec<Authorship>,
}

/// Why someone is an author of a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Authorship {
    /// They pushed one of its commits into the repository first.
    PushedCommit {
        /// The commit.
        commit: String,
    },
    /// They moved its source branch.
    MovedSourceBranch {
        /// The push's number.
        push: i64,
    },
    /// A commit names them as its author.
    NamedAuthor {
        /// The commit.
        commit: String,
    },
    /// A commit names them as its committer.
    NamedCommitter {
        /// The commit.
        commit: String,
    },
    /// A commit names them in a `Co-authored-by:` trailer.
    CoAuthor {
        /// The commit.
        commit: String,
    },
}

/// A check run of the reviewed head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    /// The head it ran on.
    pub head: String,
    /// The command, when the run got as far as reading it.
    #[serde(deserialize_with = "nullable")]
    pub command: Option<String>,
    /// The target's tip it ran against.
    #[serde(deserialize_with = "nullable")]
    pub target_tip: Option<String>,
    /// How it ended (`passed`, `failed`, ...).
    pub status: String,
    /// Its exit code, when it exited.
    #[serde(deserialize_with = "nullable")]
    pub exit_code: Option<i64>,
    /// When it finished, RFC 3339.
    #[serde(deserialize_with = "nullable")]
    pub finished_on: Option<String>,
    /// The sha256 of its log, hex.
    pub log_sha256: String,
}

/// Where a gate came from: the pipeline file and its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The pipeline file's path in the repository.
    pub path: String,
    /// Its digest, when the target had one.
    #[serde(deserialize_with = "nullable")]
    pub digest: Option<Sha256Digest>,
}

/// A sha256 digest in in-toto's `DigestSet` shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sha256Digest {
    /// Hex.
    pub sha256: String,
}

/// One rule of a gate as evaluated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRule {
    /// The rule's stable name (`gate.independent_approvals`).
    pub rule: String,
    /// Whether it held.
    pub passed: bool,
    /// What it found.
    pub message: String,
    /// What would have satisfied it, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satisfy: Option<String>,
}

impl ChangeV1 {
    /// The statement about the merge commit on the target ref.
    pub fn statement(&self) -> Statement {
        let subject = Subject {
            name: format!("{}@{}", self.project, self.target_ref),
            digest: [("gitCommit".to_owned(), self.merge_commit.clone())].into(),
        };
        Statement::new(vec![subject], CHANGE_PREDICATE, to_value(self))
    }
}

/// The deployment attestation, version 1: signed by the deployer key when
/// a deployment ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentV1 {
    /// The project.
    pub project: String,
    /// The environment deployed to.
    pub environment: String,
    /// The environment it follows, as the mainline defined it.
    #[serde(deserialize_with = "nullable")]
    pub after: Option<String>,
    /// The environment's gate, as the mainline defined it, when it could
    /// be read.
    #[serde(deserialize_with = "nullable")]
    pub gate: Option<EnvironmentGate>,
    /// The deployment's number in its project.
    pub deployment: i64,
    /// The build deployed.
    pub build: i64,
    /// The commit the build was made from.
    pub commit: String,
    /// The pipeline file the deploy script came from.
    pub pipeline: PipelineFile,
    /// The deploy script's path.
    pub script: String,
    /// The changes the release brings and who held their duties.
    pub release: Vec<ReleaseChange>,
    /// The build service that built it.
    #[serde(deserialize_with = "nullable")]
    pub builder: Option<String>,
    /// Who requested the deployment, when a person did.
    #[serde(deserialize_with = "nullable")]
    pub requester: Option<String>,
    /// Who approved it.
    pub approvers: Vec<String>,
    /// Who signed off its manual tests.
    pub testers: Vec<String>,
    /// The deployment it replaced in the environment.
    #[serde(deserialize_with = "nullable")]
    pub previous_deployment: Option<i64>,
    /// Why glass was broken, for an emergency deployment.
    #[serde(deserialize_with = "nullable")]
    pub break_glass: Option<String>,
    /// The version of each environment secret the script received (never
    /// a value).
    pub secrets: BTreeMap<String, i64>,
    /// How it ended (`succeeded`, `failed`, `cancelled`).
    pub result: String,
    /// The deploy service that ran it.
    pub deployer: String,
    /// When it started, RFC 3339.
    pub started_on: String,
    /// When it finished, RFC 3339.
    pub finished_on: String,
}

/// An environment's gate as a deployment attestation records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentGate {
    /// How many independent approvals it asks for.
    pub approvals: u64,
    /// The group approvers come from.
    #[serde(deserialize_with = "nullable")]
    pub approvers: Option<String>,
    /// The group testers come from, when manual tests are required.
    #[serde(deserialize_with = "nullable")]
    pub testers: Option<String>,
    /// Whether a reviewer of the release may approve it.
    pub reviewers_may_approve: bool,
}

/// The pipeline file of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineFile {
    /// Its path in the repository.
    pub path: String,
    /// Its sha256, hex.
    pub sha256: String,
}

/// A change of a release and who held its duties.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseChange {
    /// The change's number.
    pub change: i64,
    /// Its authors.
    pub authors: Vec<String>,
    /// Its reviewers.
    pub reviewers: Vec<String>,
}

impl DeploymentV1 {
    /// The statement about the artifacts deployed (name, sha256).
    pub fn statement(&self, artifacts: &[(String, String)]) -> Statement {
        let subject = artifacts
            .iter()
            .map(|(name, digest)| Subject {
                name: name.clone(),
                digest: BTreeMap::from([("sha256".into(), digest.clone())]),
            })
            .collect();
        Statement::new(subject, DEPLOYMENT_PREDICATE, to_value(self))
    }
}

/// The predicate of the statement an envelope (JSON) carries, read as `P`,
/// without checking the signature: for gathering and showing what custody
/// stored. Whoever relies on it verifies the envelope (the verifier does).
pub fn unverified_predicate<P: DeserializeOwned>(envelope: &str) -> Option<P> {
    let envelope: crate::Envelope = serde_json::from_str(envelope).ok()?;
    let payload = base64::engine::general_purpose::STANDARD.decode(envelope.payload).ok()?;
    let statement: Statement = serde_json::from_slice(&payload).ok()?;
    serde_json::from_value(statement.predicate).ok()
}

fn to_value(predicate: &impl Serialize) -> serde_json::Value {
    // Plain structs of strings, numbers and maps with string keys: they
    // always serialise.
    serde_json::to_value(predicate).unwrap_or_default()
}

/// The subset of SLSA provenance v1 the verifier relies on, read strictly.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvenanceV1 {
    /// How it was built.
    pub build_definition: BuildDefinition,
    /// Who built it.
    pub run_details: RunDetails,
}

/// SLSA's `buildDefinition`, the parts the verifier reads.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    /// The build type.
    pub build_type: String,
    /// The parameters the build was asked for.
    pub external_parameters: ExternalParameters,
}

/// custody's external parameters: what was built.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ExternalParameters {
    /// The commit built.
    pub commit: String,
}

/// SLSA's `runDetails`, the parts the verifier reads.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RunDetails {
    /// The builder.
    pub builder: Builder,
    /// This run.
    pub metadata: RunMetadata,
}

/// SLSA's `builder`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Builder {
    /// The builder's id.
    pub id: String,
}

/// SLSA's `metadata`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunMetadata {
    /// A unique id of the run.
    pub invocation_id: String,
}

impl ProvenanceV1 {
    /// The build's number, from the invocation id custody writes
    /// (`.../builds/{number}/...`).
    pub fn build_number(&self) -> Option<i64> {
        let id = &self.run_details.metadata.invocation_id;
        id.split("/builds/").nth(1)?.split('/').next()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change() -> ChangeV1 {
        ChangeV1 {
            project: "payments".into(),
            change: 7,
            title: "Fee rounding".into(),
            target_ref: "refs/heads/main".into(),
            base: None,
            reviewed_head: "b".repeat(40),
            merge_commit: "m".repeat(40),
            commits: 1,
            authors: vec![ChangeAuthor {
                user: "alice".into(),
                why: vec![
                    Authorship::MovedSourceBranch { push: 2 },
                    Authorship::NamedAuthor { commit: "b".repeat(40) },
                ],
            }],
            approvers: vec!["bob".into()],
            merged_by: "alice".into(),
            checks: vec![],
            policy: Policy { path: ".custody/pipeline.toml".into(), digest: None },
            gate: vec![GateRule {
                rule: "gate.mergeable".into(),
                passed: true,
                message: "merges".into(),
                satisfy: None,
            }],
            weakened: vec![],
        }
    }

    #[test]
    fn a_change_predicate_reads_back_as_written() {
        let written = change();
        let statement = written.statement();
        assert_eq!(statement.predicate_type, CHANGE_PREDICATE);
        assert_eq!(statement.subject[0].name, "payments@refs/heads/main");
        let read: ChangeV1 = serde_json::from_value(statement.predicate).unwrap();
        assert_eq!(read, written);
    }

    #[test]
    fn a_missing_field_is_refused_even_one_that_may_be_null() {
        for field in ["change", "merge_commit", "approvers", "base", "gate"] {
            let mut value = serde_json::to_value(change()).unwrap();
            value.as_object_mut().unwrap().remove(field);
            let error = serde_json::from_value::<ChangeV1>(value).unwrap_err();
            assert!(error.to_string().contains(&format!("missing field `{field}`")), "{field}: {error}");
        }
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused_not_read_as_empty() {
        let mut value = serde_json::to_value(change()).unwrap();
        value["change"] = json!("7");
        assert!(serde_json::from_value::<ChangeV1>(value).is_err());
        let mut value = serde_json::to_value(change()).unwrap();
        value["authors"][0]["why"][0] = json!({ "kind": "was_nearby" });
        assert!(serde_json::from_value::<ChangeV1>(value).is_err());
    }

    #[test]
    fn an_unknown_field_is_ignored_as_slsa_readers_do() {
        let mut value = serde_json::to_value(change()).unwrap();
        value["later_addition"] = json!(true);
        assert_eq!(serde_json::from_value::<ChangeV1>(value).unwrap(), change());
    }
}
