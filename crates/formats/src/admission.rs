//! Admission: whether a cluster may run a workload's images, decided from
//! custody's evidence alone, without reaching custody.
//!
//! A Kubernetes API server asks with an `AdmissionReview`
//! (`admission.k8s.io/v1`) about a Pod, or a workload holding a Pod
//! template. The answer admits it only when every container, init
//! container and ephemeral container runs an image that is pinned by
//! digest, comes from a custody registry the webhook trusts, belongs to the
//! project the namespace is mapped to, and is the image deployed to the
//! namespace's environment (or one of its last few deployments, for rolling
//! updates) according to evidence that verifies and is no older than the
//! maximum age. A rollback ends the window: an image rolled back out of an
//! environment is not admitted there again until a deployment puts it back.
//!
//! The evidence of an environment is its signed state
//! ([`crate::environment`]), naming its newest deployments, and each
//! deployment's evidence bundle, verified in full by [`crate::verify`]: who
//! wrote, reviewed, built, approved and deployed it, and that nobody held
//! two conflicting duties. The images a deployment ran are the `oci/NAME`
//! artifacts its verified chain names.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::attestation::{DeploymentV1, DEPLOYMENT_PREDICATE};
use crate::dsse::Envelope;
use crate::environment::EnvironmentV1;
use crate::evidence::Bundle;
use crate::statement::Statement;
use crate::trust::TrustRoot;

/// The API version of the reviews answered.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// What the webhook is told to enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The custody registries trusted, as image references name them
    /// (`custody.example.com`, `registry.internal:8443`).
    pub registries: Vec<String>,
    /// Which environment of which project each namespace is.
    pub namespaces: BTreeMap<String, Target>,
    /// How many of an environment's newest deployments are admitted (1:
    /// only the live one).
    pub last: usize,
    /// The oldest evidence accepted, in milliseconds.
    pub max_age_ms: i64,
}

/// An environment of a project.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The project.
    pub project: String,
    /// The environment.
    pub environment: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {}", self.environment, self.project)
    }
}

/// A deployment whose evidence verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployed {
    /// Its number.
    pub deployment: i64,
    /// Its build.
    pub build: i64,
    /// The images it ran: image name (without `oci/`) and manifest sha256.
    pub images: BTreeSet<(String, String)>,
    /// Why glass was broken, when it was.
    pub break_glass: Option<String>,
}

/// An environment's evidence, verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvironmentEvidence {
    /// When custody signed its state, milliseconds since the epoch.
    pub as_of_ms: i64,
    /// Its newest deployments, newest first: each verified, or why its
    /// evidence did not verify.
    pub deployments: Vec<(i64, i64, Result<Deployed, String>)>,
}

/// Every environment's evidence, as read from files: verified, or why not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// By environment.
    pub environments: BTreeMap<Target, Result<EnvironmentEvidence, String>>,
}

impl Evidence {
    /// Verifies one environment's signed state and the evidence bundles of
    /// the deployments it names (by number), against `trust`.
    pub fn verify_environment(
        trust: &TrustRoot,
        state: &Envelope,
        bundles: &BTreeMap<i64, Result<Bundle, String>>,
    ) -> (Option<Target>, Result<EnvironmentEvidence, String>) {
        let state = match EnvironmentV1::open(state, trust) {
            Ok(state) => state,
            Err(e) => return (None, Err(e.to_string())),
        };
        let target = Target { project: state.project.clone(), environment: state.environment.clone() };
        let Some(as_of_ms) = state.as_of_ms() else {
            return (Some(target), Err("its time is not RFC 3339".into()));
        };
        let deployments = state
            .deployments
            .iter()
            .map(|live| {
                let checked = match bundles.get(&live.deployment) {
                    None => Err(format!(
                        "no evidence bundle of deployment {} was synced (run `custody evidence sync`)",
                        live.deployment
                    )),
                    Some(Err(why)) => Err(format!("its evidence bundle cannot be read: {why}")),
                    Some(Ok(bundle)) => deployed(trust, &state, live, bundle),
                };
                (live.deployment, live.build, checked)
            })
            .collect();
        (Some(target), Ok(EnvironmentEvidence { as_of_ms, deployments }))
    }
}

/// One deployment of `state`, checked against its bundle: the bundle
/// verifies, is of that deployment, and holds the very attestation the
/// state names.
fn deployed(
    trust: &TrustRoot,
    state: &EnvironmentV1,
    live: &crate::environment::LiveDeployment,
    bundle: &Bundle,
) -> Result<Deployed, String> {
    if bundle.project != state.project || bundle.subject.deployment != Some(live.deployment) {
        return Err(format!("the bundle synced for deployment {} is of something else", live.deployment));
    }
    let report = crate::verify::verify(bundle, trust, None);
    if !report.valid {
        let reasons: Vec<String> = report.failures().map(|c| format!("{}: {}", c.rule, c.message)).collect();
        return Err(format!("its evidence does not verify ({})", reasons.join("; ")));
    }
    let attestation = bundle
        .entries
        .iter()
        .find(|e| e.envelope.digest() == live.attestation_sha256)
        .ok_or("its bundle lacks the attestation the environment's state names for it")?;
    let statement: Statement = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &attestation.envelope.payload)
            .unwrap_or_default(),
    )
    .map_err(|e| format!("its attestation cannot be read: {e}"))?;
    let predicate: Option<DeploymentV1> = (statement.predicate_type == DEPLOYMENT_PREDICATE)
        .then(|| serde_json::from_value(statement.predicate.clone()).ok())
        .flatten();
    let predicate = predicate.ok_or("the attestation the state names is not a deployment attestation")?;
    if predicate.deployment != live.deployment
        || predicate.environment != state.environment
        || predicate.project != state.project
        || predicate.result != "succeeded"
    {
        return Err(format!(
            "the attestation the state names is of deployment {} to {}, {}",
            predicate.deployment, predicate.environment, predicate.result
        ));
    }
    let images = statement
        .subject
        .iter()
        .filter_map(|s| Some((s.name.strip_prefix("oci/")?.to_owned(), s.digest.get("sha256")?.clone())))
        .collect();
    Ok(Deployed { deployment: live.deployment, build: live.build, images, break_glass: predicate.break_glass })
}

/// A container's image, where the object names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Where: `spec.initContainers[0]` and the like.
    pub field: String,
    /// The container's name.
    pub name: String,
    /// The image reference.
    pub image: String,
}

/// An image reference, read the way container runtimes read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (and port); `docker.io` when none is named.
    pub registry: String,
    /// The repository path.
    pub repository: String,
    /// The tag, when one is named.
    pub tag: Option<String>,
    /// The digest's hex, when pinned by a sha256 digest.
    pub sha256: Option<String>,
    /// A digest of another algorithm, as written.
    pub other_digest: Option<String>,
}

impl ImageRef {
    /// Reads `reference`.
    pub fn parse(reference: &str) -> ImageRef {
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (reference, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_owned(), rest)
            }
            _ => ("docker.io".to_owned(), name),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository.to_owned(), Some(tag.to_owned())),
            _ => (path.to_owned(), None),
        };
        let sha256 = digest
            .and_then(|d| d.strip_prefix("sha256:"))
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .map(str::to_owned);
        let other_digest = digest.filter(|_| sha256.is_none()).map(str::to_owned);
        ImageRef { registry, repository, tag, sha256, other_digest }
    }
}

/// Why a review could not be answered at all.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The body is not an `AdmissionReview` request of `admission.k8s.io/v1`.
    #[error("not an AdmissionReview request of admission.k8s.io/v1: {0}")]
    Malformed(String),
}

/// The parts of an admission request the decision reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The request's id, echoed in the response.
    pub uid: String,
    /// The object's kind.
    pub kind: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub operation: String,
    /// The namespace.
    pub namespace: Option<String>,
    /// The sub-resource (`ephemeralcontainers`), when one.
    pub sub_resource: Option<String>,
    /// The object as it would be stored.
    pub object: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<RawRequest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    uid: String,
    kind: GroupVersionKind,
    operation: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    object: Value,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    kind: String,
}

impl Request {
    /// Reads an `AdmissionReview` as the API server sends it.
    pub fn parse(body: &[u8]) -> Result<Request, ReviewError> {
        let review: Review = serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
        if review.api_version != ADMISSION_API_VERSION || review.kind != "AdmissionReview" {
            return Err(ReviewError::Malformed(format!("apiVersion {:?}, kind {:?}", review.api_version, review.kind)));
        }
        let request = review.request.ok_or_else(|| ReviewError::Malformed("it holds no request".into()))?;
        Ok(Request {
            uid: request.uid,
            kind: request.kind.kind,
            operation: request.operation,
            namespace: request
                .namespace
                .filter(|n| !n.is_empty())
                .or_else(|| request.object.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned)),
            sub_resource: request.sub_resource.filter(|s| !s.is_empty()),
            object: request.object,
        })
    }

    /// Every container the object would run, or `None` for a kind that
    /// holds no Pod.
    pub fn containers(&self) -> Option<Vec<Container>> {
        let (spec, at) = match self.kind.as_str() {
            "Pod" => (self.object.get("spec")?, "spec"),
            // The sub-resource's older shape: the ephemeral containers alone.
            "EphemeralContainers" => (&self.object, ""),
            "Deployment"
            | "ReplicaSet"
            | "StatefulSet"
            | "DaemonSet"
            | "Job"
            | "ReplicationController"
            | "PodTemplate" => {
                let template = if self.kind == "PodTemplate" { "/template" } else { "/spec/template" };
                (self.object.pointer(&format!("{template}/spec"))?, &template[1..])
            }
            "CronJob" => {
                (self.object.pointer("/spec/jobTemplate/spec/template/spec")?, "spec.jobTemplate.spec.template")
            }
            _ => return None,
        };
        let at = at.replace('/', ".");
        let prefix = if at.is_empty() {
            String::new()
        } else if at.ends_with("spec") {
            format!("{at}.")
        } else {
            format!("{at}.spec.")
        };
        let mut found = Vec::new();
        for list in ["initContainers", "containers", "ephemeralContainers"] {
            for (i, container) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
                found.push(Container {
                    field: format!("{prefix}{list}[{i}]"),
                    name: container.get("name").and_then(Value::as_str).unwrap_or("").to_owned(),
                    image: container.get("image").and_then(Value::as_str).unwrap_or("").to_owned(),
                });
            }
        }
        Some(found)
    }
}

/// One rule a container broke, and what would satisfy it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// The rule's id, such as `admit.deployed_here`.
    pub rule: &'static str,
    /// The container (`field name`), or empty for the whole request.
    pub container: String,
    /// What is wrong and what would satisfy the rule.
    pub message: String,
}

/// The decision on one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether it is admitted.
    pub allowed: bool,
    /// Every rule broken.
    pub denials: Vec<Denial>,
    /// What the cluster's user should know although it is admitted.
    pub warnings: Vec<String>,
}

impl Decision {
    /// The `AdmissionReview` answering request `uid`.
    pub fn review(&self, uid: &str) -> Value {
        let mut response = json!({ "uid": uid, "allowed": self.allowed });
        if !self.allowed {
            let message = self
                .denials
                .iter()
                .map(|d| {
                    if d.container.is_empty() {
                        format!("{}: {}", d.rule, d.message)
                    } else {
                        format!("{} ({}): {}", d.rule, d.container, d.message)
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            response["status"] =
                json!({ "code": 403, "reason": "Forbidden", "message": format!("custody denies it: {message}") });
        }
        if !self.warnings.is_empty() {
            response["warnings"] = json!(self.warnings);
        }
        json!({ "apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response })
    }
}

/// The rule broken by an image that is not pinned by a sha256 digest.
pub const PINNED: &str = "admit.pinned_by_digest";
/// The rule broken by an image from a registry the webhook does not trust.
pub const TRUSTED_REGISTRY: &str = "admit.trusted_registry";
/// The rule broken by an image of another project than the namespace's.
pub const PROJECT: &str = "admit.project_of_namespace";
/// The rule broken in a namespace no environment is mapped to.
pub const NAMESPACE: &str = "admit.namespace_mapped";
/// The rule broken when the environment's evidence is missing or does not verify.
pub const EVIDENCE: &str = "admit.evidence_verifies";
/// The rule broken when the environment's evidence is too old.
pub const FRESH: &str = "admit.evidence_fresh";
/// The rule broken by an image not deployed to the environment.
pub const DEPLOYED: &str = "admit.deployed_here";

fn age(ms: i64) -> String {
    let seconds = (ms / 1000).max(0);
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

/// Decides `request` by `policy` over `evidence`, at `now_ms`.
pub fn decide(policy: &Policy, evidence: &Evidence, request: &Request, now_ms: i64) -> Decision {
    let mut decision = Decision { allowed: true, denials: Vec::new(), warnings: Vec::new() };
    if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
        return decision;
    }
    let mut deny = |rule: &'static str, container: String, message: String| {
        decision.denials.push(Denial { rule, container, message });
    };
    let Some(containers) = request.containers() else {
        deny(
            "admit.kind_known",
            String::new(),
            format!(
                "a {} holds no Pod this webhook knows to check; send it only Pods, ephemeral containers and \
                 workloads with Pod templates",
                request.kind
            ),
        );
        decision.allowed = false;
        return decision;
    };
    let namespace = request.namespace.clone().unwrap_or_default();
    let Some(target) = policy.namespaces.get(&namespace) else {
        deny(
            NAMESPACE,
            String::new(),
            format!(
                "namespace {namespace:?} is no environment of a custody project; map it in the webhook's configuration"
            ),
        );
        decision.allowed = false;
        return decision;
    };
    let environment = evidence.environments.get(target);
    for container in &containers {
        let at = format!("{} {}", container.field, container.name);
        let image = ImageRef::parse(&container.image);
        let Some(sha256) = &image.sha256 else {
            let found = image.other_digest.as_deref().map_or("no digest".to_owned(), |d| format!("digest {d}"));
            deny(
                PINNED,
                at,
                format!(
                    "{} names {found}; pin the image by its sha256 digest ({}/{}@sha256:…), as custody's {} tag resolves",
                    container.image, image.registry, image.repository, target.environment
                ),
            );
            continue;
        };
        if !policy.registries.contains(&image.registry) {
            deny(
                TRUSTED_REGISTRY,
                at,
                format!(
                    "{} comes from {}, not from a custody registry this webhook trusts ({}); pull it from custody",
                    container.image,
                    image.registry,
                    policy.registries.join(", ")
                ),
            );
            continue;
        }
        let Some((project, name)) = image.repository.split_once('/') else {
            deny(PROJECT, at, format!("{} is no custody image (custody's are PROJECT/IMAGE)", container.image));
            continue;
        };
        if project != target.project {
            deny(
                PROJECT,
                at,
                format!("{} is an image of project {project}, and namespace {namespace} is {target}", container.image),
            );
            continue;
        }
        let found = match environment {
            None => {
                deny(EVIDENCE, at, format!("there is no evidence of {target}; run `custody evidence sync`"));
                continue;
            }
            Some(Err(why)) => {
                deny(EVIDENCE, at, format!("the evidence of {target} does not verify: {why}"));
                continue;
            }
            Some(Ok(found)) => found,
        };
        if now_ms - found.as_of_ms > policy.max_age_ms {
            deny(
                FRESH,
                at,
                format!(
                    "the evidence of {target} is {} old, more than the {} allowed; run `custody evidence sync`",
                    age(now_ms - found.as_of_ms),
                    age(policy.max_age_ms)
                ),
            );
            continue;
        }
        let wanted = (name.to_owned(), sha256.clone());
        match placed(policy, found, &wanted) {
            Placed::Admitted(deployed) => {
                if let Some(reason) = &deployed.break_glass {
                    decision.warnings.push(format!(
                        "{}: deployment {} of {target} broke the glass ({reason}); an auditor reviews it",
                        container.name, deployed.deployment
                    ));
                }
            }
            Placed::Unverified(number, why) => {
                deny(EVIDENCE, at, format!("deployment {number} to {target} cannot be checked: {why}"));
            }
            Placed::RolledBack(number, build) => deny(
                DEPLOYED,
                at,
                format!(
                    "{} was rolled back out of {target} by deployment {number} (back to build {build}); deploy it \
                     there again through custody",
                    container.image
                ),
            ),
            Placed::Older(number) => deny(
                DEPLOYED,
                at,
                format!(
                    "{} was deployed to {target} by deployment {number}, which is no longer among the last {} \
                     there; deploy the live image",
                    container.image, policy.last
                ),
            ),
            Placed::Nowhere => {
                let elsewhere = deployed_elsewhere(evidence, target, &wanted);
                let hint = if elsewhere.is_empty() {
                    "custody's evidence shows no deployment of it".to_owned()
                } else {
                    format!("it was deployed to {} only", elsewhere.join(", "))
                };
                deny(
                    DEPLOYED,
                    at,
                    format!(
                        "{} is not the image deployed to {target}: {hint}; deploy it there through custody",
                        container.image
                    ),
                );
            }
        }
    }
    decision.allowed = decision.denials.is_empty();
    decision
}

/// The other environments of `target`'s project whose verified evidence
/// shows `wanted` deployed there.
fn deployed_elsewhere(evidence: &Evidence, target: &Target, wanted: &(String, String)) -> Vec<String> {
    evidence
        .environments
        .iter()
        .filter(|(other, _)| other.project == target.project && *other != target)
        .filter_map(|(other, found)| {
            let found = found.as_ref().ok()?;
            found
                .deployments
                .iter()
                .any(|(_, _, d)| d.as_ref().is_ok_and(|d| d.images.contains(wanted)))
                .then(|| other.environment.clone())
        })
        .collect()
}

/// Where an image stands in an environment's window.
enum Placed<'e> {
    Admitted(&'e Deployed),
    Unverified(i64, &'e str),
    RolledBack(i64, i64),
    Older(i64),
    Nowhere,
}

/// Finds `wanted` among the environment's deployments: admitted when one
/// of the last `policy.last` ran it (a rollback ends them), else why not.
fn placed<'e>(policy: &Policy, evidence: &'e EnvironmentEvidence, wanted: &(String, String)) -> Placed<'e> {
    let deployments = &evidence.deployments;
    let window = deployments.len().min(policy.last.max(1));
    // A deployment of an older build than the one it replaced is a
    // rollback: nothing before it is admitted.
    let rollback = (0..window).find(|&i| match (deployments.get(i), deployments.get(i + 1)) {
        (Some((_, build, _)), Some((_, older, _))) => build < older,
        _ => false,
    });
    let window_ends = rollback.map_or(window, |i| i + 1);
    let rollback = rollback.map(|i| (deployments[i].0, deployments[i].1));
    let found = deployments.iter().enumerate().find_map(|(i, (number, _, checked))| {
        checked.as_ref().ok().filter(|d| d.images.contains(wanted)).map(|d| (i, *number, d))
    });
    match found {
        Some((i, _, deployed)) if i < window_ends => Placed::Admitted(deployed),
        _ => {
            let unverified = deployments[..window_ends].iter().find_map(|(n, _, c)| c.as_ref().err().map(|w| (*n, w)));
            match (found, unverified, rollback) {
                (_, Some((number, why)), _) => Placed::Unverified(number, why),
                (Some(_), None, Some((by, build))) => Placed::RolledBack(by, build),
                (Some((_, number, _)), None, None) => Placed::Older(number),
                (None, None, _) => Placed::Nowhere,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn digest(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn production() -> Target {
        Target { project: "shop".into(), environment: "production".into() }
    }

    fn policy(last: usize) -> Policy {
        Policy {
            registries: vec!["custody.example:8443".into()],
            namespaces: [("shop-prod".to_owned(), production())].into(),
            last,
            max_age_ms: HOUR,
        }
    }

    /// Production's evidence as of `as_of_ms`: deployments (number, build,
    /// image digest), newest first.
    fn evidence(as_of_ms: i64, deployments: &[(i64, i64, u8)]) -> Evidence {
        let deployments = deployments
            .iter()
            .map(|&(deployment, build, image)| {
                let images = [("app".to_owned(), digest(image))].into();
                (deployment, build, Ok(Deployed { deployment, build, images, break_glass: None }))
            })
            .collect();
        Evidence { environments: [(production(), Ok(EnvironmentEvidence { as_of_ms, deployments }))].into() }
    }

    fn pod_request(image: &str) -> Request {
        Request {
            uid: "u".into(),
            kind: "Pod".into(),
            operation: "CREATE".into(),
            namespace: Some("shop-prod".into()),
            sub_resource: None,
            object: json!({ "spec": { "containers": [{ "name": "app", "image": image }] } }),
        }
    }

    fn image(n: u8) -> String {
        format!("custody.example:8443/shop/app@sha256:{}", digest(n))
    }

    fn rules(decision: &Decision) -> Vec<&'static str> {
        decision.denials.iter().map(|d| d.rule).collect()
    }

    #[test]
    fn references_read_as_container_runtimes_read_them() {
        let plain = ImageRef::parse("busybox");
        assert_eq!(
            (plain.registry.as_str(), plain.repository.as_str(), plain.tag, plain.sha256),
            ("docker.io", "busybox", None, None)
        );
        let both = ImageRef::parse(&format!("custody.example:8443/shop/app:build-2@sha256:{}", digest(1)));
        assert_eq!(both.registry, "custody.example:8443");
        assert_eq!(both.repository, "shop/app");
        assert_eq!(both.tag.as_deref(), Some("build-2"));
        assert_eq!(both.sha256, Some(digest(1)));
        let upper = ImageRef::parse(&format!("localhost/shop/app@sha256:{}", digest(0xab).to_uppercase()));
        assert_eq!(
            (upper.registry.as_str(), upper.sha256.is_none(), upper.other_digest.is_some()),
            ("localhost", true, true)
        );
    }

    #[test]
    fn evidence_older_than_the_maximum_age_admits_nothing() {
        let now = 10 * HOUR;
        let fresh = decide(&policy(1), &evidence(now - HOUR + 1, &[(2, 1, 1)]), &pod_request(&image(1)), now);
        assert!(fresh.allowed, "{fresh:?}");
        let stale = decide(&policy(1), &evidence(now - HOUR - 1, &[(2, 1, 1)]), &pod_request(&image(1)), now);
        assert_eq!(rules(&stale), [FRESH]);
        assert!(stale.denials[0].message.contains("custody evidence sync"), "{stale:?}");
    }

    #[test]
    fn the_window_holds_the_last_deployments_and_a_rollback_closes_it() {
        let now = HOUR;
        let moved_on = evidence(now, &[(4, 2, 2), (2, 1, 1)]);
        assert!(decide(&policy(2), &moved_on, &pod_request(&image(1)), now).allowed);
        let only_live = decide(&policy(1), &moved_on, &pod_request(&image(1)), now);
        assert_eq!(rules(&only_live), [DEPLOYED]);
        assert!(only_live.denials[0].message.contains("no longer among the last 1"), "{only_live:?}");

        let rolled_back = evidence(now, &[(5, 1, 1), (4, 2, 2), (2, 1, 1)]);
        let out = decide(&policy(3), &rolled_back, &pod_request(&image(2)), now);
        assert_eq!(rules(&out), [DEPLOYED]);
        assert!(out.denials[0].message.contains("rolled back out of production of shop by deployment 5"), "{out:?}");
        assert!(decide(&policy(3), &rolled_back, &pod_request(&image(1)), now).allowed);
    }

    #[test]
    fn a_live_deployment_whose_evidence_fails_admits_nothing_it_might_have_run() {
        let now = HOUR;
        let mut found = evidence(now, &[(4, 2, 2), (2, 1, 1)]);
        if let Some(Ok(production)) = found.environments.get_mut(&production()) {
            production.deployments[0].2 = Err("its evidence does not verify (forged)".into());
        }
        let out = decide(&policy(1), &found, &pod_request(&image(2)), now);
        assert_eq!(rules(&out), [EVIDENCE]);
        assert!(out.denials[0].message.contains("deployment 4"), "{out:?}");
    }

    #[test]
    fn every_container_of_a_cronjobs_template_is_found_where_it_is() {
        let request = Request {
            kind: "CronJob".into(),
            object: json!({ "spec": { "jobTemplate": { "spec": { "template": { "spec": {
                "initContainers": [{ "name": "setup", "image": "busybox" }],
                "containers": [{ "name": "job", "image": image(1) }],
            } } } } } }),
            ..pod_request("")
        };
        let fields: Vec<String> = request.containers().unwrap().into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "spec.jobTemplate.spec.template.spec.initContainers[0]",
                "spec.jobTemplate.spec.template.spec.containers[0]"
            ]
        );
        let out = decide(&policy(1), &evidence(HOUR, &[(2, 1, 1)]), &request, HOUR);
        assert_eq!(rules(&out), [PINNED]);
        let unknown = Request { kind: "ConfigMap".into(), ..pod_request("") };
        assert!(!decide(&policy(1), &Evidence::default(), &unknown, HOUR).allowed);
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// The example `ValidatingWebhookConfiguration` sends only kinds the
    /// webhook reads, CREATE and UPDATE, ephemeral containers included,
    /// and fails closed.
    #[test]
    fn the_example_webhook_configuration_sends_only_what_admission_reads() {
        let example = include_str!("../../../docs/admission/validating-webhook.yaml");
        assert!(example.contains("failurePolicy: Fail"));
        assert!(example.contains("pods/ephemeralcontainers"));
        let kinds = [
            ("pods", "Pod"),
            ("replicationcontrollers", "ReplicationController"),
            ("podtemplates", "PodTemplate"),
            ("deployments", "Deployment"),
            ("replicasets", "ReplicaSet"),
            ("statefulsets", "StatefulSet"),
            ("daemonsets", "DaemonSet"),
            ("jobs", "Job"),
            ("cronjobs", "CronJob"),
        ];
        for line in example.lines().filter(|l| l.trim_start().starts_with("resources:")) {
            let list = line.split_once('[').and_then(|(_, rest)| rest.split_once(']')).map(|(l, _)| l).unwrap();
            for resource in list.split(',').map(|r| r.trim().trim_matches('"')) {
                if resource == "pods/ephemeralcontainers" {
                    continue;
                }
                let kind = kinds.iter().find(|(r, _)| *r == resource).map(|(_, k)| *k);
                let kind =
                    kind.unwrap_or_else(|| panic!("the example sends {resource}, which admission does not read"));
                let request = Request {
                    uid: "u".into(),
                    kind: kind.into(),
                    operation: "CREATE".into(),
                    namespace: None,
                    sub_resource: None,
                    object: json!({ "spec": { "template": { "spec": {} }, "jobTemplate": { "spec": { "template": { "spec": {} } } } }, "template": { "spec": {} } }),
                };
                assert!(request.containers().is_some(), "{kind} is not read");
            }
        }
        for line in example.lines().filter(|l| l.trim_start().starts_with("operations:")) {
            assert_eq!(line.trim(), "operations: [\"CREATE\", \"UPDATE\"]");
        }
    }
}
