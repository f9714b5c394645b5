//! What jobs need from the instance and what their reports must prove,
//! written once for a worker in the server's process and a worker that
//! shares nothing with it.
//!
//! Before a deploy script runs, [`prepare_deployment`] checks the build's
//! provenance and gathers what the attestation records (the release's
//! duties, the environment's gate, the secrets' versions) and the secrets
//! themselves. A worker elsewhere reports through the API, and its report
//! is held to what custody leased it: [`check_build_report`] and
//! [`check_deploy_report`] refuse a statement its registered key did not
//! sign or that says anything but what the lease and its facts say.

use std::collections::BTreeSet;

use custody_api::{
    BuildOutcome, DeployOutcome, DeploymentFacts, EnvironmentGateFacts, LeasedBuild, LeasedDeployment, ReleaseDuties,
};
use custody_domain::status::{BuildStatus, DeploymentStatus};
use custody_domain::ProjectName;
use custody_formats::attestation::{DeploymentV1, EnvironmentGate, ProvenanceV1, ReleaseChange};
use custody_formats::provenance::PROVENANCE_PREDICATE;
use custody_formats::sealed::{Sealed, SealingKey};
use custody_formats::statement::Statement;
use custody_formats::PublicKey;
use custody_git::Repositories;
use custody_store::{Duty, Store};

use crate::releases::release_context;

/// What a deploy script gets and its attestation records: the facts, and
/// the environment's secrets as (name, value).
pub struct PreparedDeployment {
    /// What the attestation records beyond the lease.
    pub facts: DeploymentFacts,
    /// The secrets, each a variable of the script.
    pub secrets: Vec<(String, String)>,
}

/// Checks that the leased deployment's build carries provenance a builder
/// key valid when the build finished signed for every artifact (as
/// `custody verify` will judge it), and gathers what the deployment needs.
/// `builder` is the instance's current builder key.
pub async fn prepare_deployment(
    store: &Store,
    repositories: &Repositories,
    sealing: &SealingKey,
    builder: &PublicKey,
    lease: &LeasedDeployment,
) -> Result<PreparedDeployment, String> {
    let project =
        ProjectName::parse(&lease.project).map_err(|_| format!("project name {:?} is not valid", lease.project))?;
    // Only what a builder signed is deployed.
    signed_by_builder(store, &project, lease.build, builder, &lease.artifacts)
        .await
        .map_err(|why| format!("{why}; nothing was deployed"))?;
    let (secrets, versions) = open_secrets(store, sealing, &project, lease).await?;
    let context = release_context(store, repositories, &project, &lease.environment, &lease.commit)
        .await
        .map_err(|error| format!("reading the release failed: {error}"))?;
    let duties = store
        .release_duties(&project, &context.changes)
        .await
        .map_err(|error| format!("reading the release's duties failed: {error}"))?;
    let release = context
        .changes
        .iter()
        .map(|number| {
            let held = |duty| {
                duties.iter().filter(|d| d.change == *number && d.duty == duty).map(|d| d.user.to_string()).collect()
            };
            ReleaseDuties { change: *number, authors: held(Duty::Author), reviewers: held(Duty::Reviewer) }
        })
        .collect();
    let environment = &context.environment;
    let facts = DeploymentFacts {
        release,
        after: environment.after.clone(),
        gate: Some(EnvironmentGateFacts {
            approvals: u64::from(environment.approvals),
            approvers: environment.approvers.as_ref().map(ToString::to_string),
            testers: environment.testers.as_ref().map(ToString::to_string),
            reviewers_may_approve: environment.reviewers_may_approve,
        }),
        secrets: versions,
    };
    Ok(PreparedDeployment { facts, secrets })
}

/// The environment's secrets, each a variable of its own name, and the
/// version of each, which the attestation records (never the value).
async fn open_secrets(
    store: &Store,
    sealing: &SealingKey,
    project: &ProjectName,
    lease: &LeasedDeployment,
) -> Result<(Vec<(String, String)>, std::collections::BTreeMap<String, i64>), String> {
    let sealed = store
        .current_secrets(project, &lease.environment)
        .await
        .map_err(|error| format!("reading the environment's secrets failed: {error}"))?;
    let mut secrets = Vec::new();
    let mut versions = std::collections::BTreeMap::new();
    for secret in &sealed {
        let slot = custody_store::secret_slot(&lease.project, &lease.environment, &secret.name, secret.version);
        let opened =
            sealing.open(&slot, &Sealed { nonce: secret.nonce.clone(), ciphertext: secret.ciphertext.clone() });
        let Some(value) = opened.and_then(|v| String::from_utf8(v).ok()) else {
            return Err(format!(
                "secret {} (version {}) does not open with this instance's key: it was altered or moved; set it again",
                secret.name, secret.version
            ));
        };
        secrets.push((secret.name.clone(), value));
        versions.insert(secret.name.clone(), secret.version);
    }
    Ok((secrets, versions))
}

/// Records how a leased build ended and, when it succeeded, promotes it
/// to the environments that follow none: for a worker of any kind.
pub async fn record_build(
    store: &Store,
    repositories: &Repositories,
    lease: &LeasedBuild,
    outcome: BuildOutcome,
) -> custody_store::Result<()> {
    let succeeded = outcome.status == BuildStatus::Succeeded;
    store.finish_build(lease, outcome).await?;
    if succeeded {
        custody_store::fault::point("build.succeeded");
        crate::releases::promote(store, repositories, &lease.project, lease.number, &lease.commit, None).await;
    }
    Ok(())
}

/// Records how a leased deployment ended and, when it succeeded, promotes
/// its build to the environments that follow this one.
pub async fn record_deployment(
    store: &Store,
    repositories: &Repositories,
    lease: &LeasedDeployment,
    outcome: DeployOutcome,
) -> custody_store::Result<()> {
    let succeeded = outcome.status == DeploymentStatus::Succeeded;
    store.finish_deployment(lease, outcome).await?;
    if succeeded {
        let next = Some(lease.environment.as_str());
        crate::releases::promote(store, repositories, &lease.project, lease.build, &lease.commit, next).await;
    }
    Ok(())
}

/// The attestation's form of the release's duties.
pub fn release_changes(facts: &DeploymentFacts) -> Vec<ReleaseChange> {
    facts
        .release
        .iter()
        .map(|r| ReleaseChange { change: r.change, authors: r.authors.clone(), reviewers: r.reviewers.clone() })
        .collect()
}

/// The attestation's form of the environment's gate.
pub fn environment_gate(facts: &DeploymentFacts) -> Option<EnvironmentGate> {
    facts.gate.as_ref().map(|g| EnvironmentGate {
        approvals: g.approvals,
        approvers: g.approvers.clone(),
        testers: g.testers.clone(),
        reviewers_may_approve: g.reviewers_may_approve,
    })
}

/// Whether build `build` of `project` has provenance, signed by a builder
/// key valid when the build finished (as its proven `build.finish` event
/// dates it), that names each of `artifacts` (name, sha256 hex): the
/// reason when not.
pub async fn signed_by_builder(
    store: &Store,
    project: &ProjectName,
    build: i64,
    builder: &PublicKey,
    artifacts: &[(String, String)],
) -> Result<(), String> {
    let provenance = match store.provenance_of(project, build).await {
        Ok(Some(provenance)) => provenance,
        Ok(None) => return Err(format!("build {build} has no provenance")),
        Err(error) => return Err(format!("reading the provenance failed: {error}")),
    };
    // The builder keys valid when the build finished: a retired key signs
    // nothing after its rotation, a revoked one nothing from its
    // revocation's time, a worker's from its registration on.
    let history = store.key_history().await.map_err(|e| format!("reading the key history failed: {e}"))?;
    let finished = match store.build_finished_at(project, build).await {
        Ok(Some(at)) => at,
        Ok(None) => return Err(format!("build {build} has no recorded finish")),
        Err(error) => return Err(format!("reading the build's finish failed: {error}")),
    };
    let builders = custody_store::keys_valid_at(&history, builder, finished);
    check_provenance(&provenance, &builders, artifacts).map_err(|why| format!("the provenance of build {build} {why}"))
}

/// Checks a build's provenance envelope: signed by one of `builders`, an
/// in-toto statement of SLSA provenance naming each artifact by its name
/// and digest.
pub fn check_provenance(envelope: &str, builders: &[PublicKey], artifacts: &[(String, String)]) -> Result<(), String> {
    let statement = open_statement(envelope, builders, "the builder key")?;
    if statement.predicate_type != PROVENANCE_PREDICATE {
        return Err(format!("is a {} statement, not SLSA provenance", statement.predicate_type));
    }
    // By name and digest: a digest the provenance names under another name
    // (a file's, recorded as an image) is not what was signed.
    for (name, digest) in artifacts {
        if !statement.subject.iter().any(|s| s.name == *name && s.digest.get("sha256") == Some(digest)) {
            return Err(format!("does not name artifact {name} (sha256:{digest})"));
        }
    }
    Ok(())
}

/// The statement of an envelope (JSON) one of `keys` signed.
fn open_statement(envelope: &str, keys: &[PublicKey], whose: &str) -> Result<Statement, String> {
    let envelope: custody_formats::Envelope =
        serde_json::from_str(envelope).map_err(|e| format!("is not a DSSE envelope ({e})"))?;
    let payload =
        keys.iter().find_map(|key| envelope.verify(key).ok()).ok_or_else(|| format!("does not verify with {whose}"))?;
    serde_json::from_slice(&payload).map_err(|e| format!("holds no statement ({e})"))
}

/// Checks an artifact's name: a relative path inside a workspace (what a
/// build's collection gives), so that no deployment can be made to write
/// it anywhere else. A worker elsewhere chooses the names it reports.
pub fn check_artifact_name(name: &str) -> Result<(), String> {
    let inside = !name.is_empty()
        && name.len() <= 4096
        && !name.starts_with('/')
        && !name.contains('\0')
        && name.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if inside {
        Ok(())
    } else {
        Err(format!("artifact name {name:?} is not a relative path inside the workspace"))
    }
}

/// The invocation id a build's provenance names: this instance, project,
/// build and attempt.
pub fn invocation_id(instance: &str, lease: &LeasedBuild) -> String {
    format!("custody://{instance}/{}/builds/{}/attempts/{}", lease.project, lease.number, lease.attempt)
}

/// Checks what a worker elsewhere reports of a leased build: a success
/// carries provenance its own `key` signed, of exactly the artifacts it
/// reports, for the leased commit, build and attempt; anything else
/// carries neither provenance nor artifacts.
pub fn check_build_report(
    instance: &str,
    lease: &LeasedBuild,
    outcome: &BuildOutcome,
    key: &PublicKey,
) -> Result<(), String> {
    if outcome.status != BuildStatus::Succeeded {
        if outcome.provenance.is_some() || !outcome.artifacts.is_empty() {
            return Err(format!("a build that ended {} stores no artifacts and no provenance", outcome.status));
        }
        return Ok(());
    }
    for artifact in &outcome.artifacts {
        check_artifact_name(&artifact.name)?;
    }
    let envelope = outcome.provenance.as_deref().ok_or("a successful build reports its signed provenance")?;
    let statement = open_statement(envelope, std::slice::from_ref(key), "the worker's registered key")
        .map_err(|why| format!("the provenance {why}"))?;
    if statement.predicate_type != PROVENANCE_PREDICATE {
        return Err(format!("the provenance is a {} statement, not SLSA provenance", statement.predicate_type));
    }
    let named: BTreeSet<(String, String)> =
        statement.subject.iter().filter_map(|s| Some((s.name.clone(), s.digest.get("sha256")?.clone()))).collect();
    let reported: BTreeSet<(String, String)> =
        outcome.artifacts.iter().map(|a| (a.name.clone(), a.digest.clone())).collect();
    if named != reported || named.len() != statement.subject.len() {
        return Err("the provenance's subjects are not exactly the artifacts reported".into());
    }
    let provenance: ProvenanceV1 = serde_json::from_value(statement.predicate)
        .map_err(|e| format!("the provenance does not read as SLSA provenance v1 ({e})"))?;
    if provenance.build_definition.external_parameters.commit != lease.commit {
        return Err(format!(
            "the provenance names commit {}, but build {} is of {}",
            provenance.build_definition.external_parameters.commit, lease.number, lease.commit
        ));
    }
    let expected = invocation_id(instance, lease);
    if provenance.run_details.metadata.invocation_id != expected {
        return Err(format!(
            "the provenance names run {}, not this lease's {expected}",
            provenance.run_details.metadata.invocation_id
        ));
    }
    Ok(())
}

/// Checks what a worker elsewhere reports of a leased deployment: its
/// attestation (required unless the deployment failed before its script
/// ran) is signed by its own `key` and says exactly what the lease and the
/// facts it was given say, with the outcome's result.
pub fn check_deploy_report(
    lease: &LeasedDeployment,
    facts: &DeploymentFacts,
    outcome: &DeployOutcome,
    key: &PublicKey,
) -> Result<(), String> {
    let Some(envelope) = outcome.attestation.as_deref() else {
        if outcome.status == DeploymentStatus::Succeeded {
            return Err("a successful deployment reports its signed attestation".into());
        }
        return Ok(());
    };
    let statement = open_statement(envelope, std::slice::from_ref(key), "the worker's registered key")
        .map_err(|why| format!("the attestation {why}"))?;
    if statement.predicate_type != custody_formats::attestation::DEPLOYMENT_PREDICATE {
        return Err(format!("the attestation is a {} statement, not a deployment", statement.predicate_type));
    }
    let subjects: BTreeSet<(String, String)> =
        statement.subject.iter().filter_map(|s| Some((s.name.clone(), s.digest.get("sha256")?.clone()))).collect();
    if subjects != lease.artifacts.iter().cloned().collect() {
        return Err("the attestation's subjects are not the build's artifacts".into());
    }
    let said: DeploymentV1 = serde_json::from_value(statement.predicate)
        .map_err(|e| format!("the attestation does not read as a deployment ({e})"))?;
    let mismatch = [
        ("project", said.project == lease.project),
        ("environment", said.environment == lease.environment),
        ("deployment", said.deployment == lease.number),
        ("build", said.build == lease.build),
        ("commit", said.commit == lease.commit),
        ("release", said.release == release_changes(facts)),
        ("after", said.after == facts.after),
        ("gate", said.gate == environment_gate(facts)),
        ("builder", said.builder == lease.builder),
        ("requester", said.requester == lease.requested_by),
        ("approvers", said.approvers == lease.approvers),
        ("testers", said.testers == lease.testers),
        ("previous_deployment", said.previous_deployment == lease.previous),
        ("break_glass", said.break_glass == lease.break_glass),
        ("secrets", said.secrets == facts.secrets),
        ("result", said.result == outcome.status.as_str()),
        ("deployer", said.deployer == lease.worker),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(field, _)| field)
    .collect::<Vec<_>>();
    if !mismatch.is_empty() {
        return Err(format!("the attestation's {} differ from what custody leased", mismatch.join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use custody_api::NewArtifact;
    use custody_formats::{BuildFacts, KeyRole, ServiceKey};

    use super::*;

    fn lease() -> LeasedBuild {
        LeasedBuild {
            id: 7,
            project: "payments".into(),
            number: 3,
            commit: "c0ffee".repeat(6) + "c0ff",
            branch: "main".into(),
            attempt: 2,
            worker: "worker/build-1".into(),
            started_at: 0,
        }
    }

    fn artifact() -> NewArtifact {
        NewArtifact { name: "dist/app.tar.gz".into(), digest: "ab".repeat(32), size: 3 }
    }

    /// A successful outcome whose provenance `key` signed of `facts`.
    fn signed(key: &ServiceKey, facts: &BuildFacts) -> BuildOutcome {
        let envelope = facts.statement().sign(key).expect("a key in memory signs");
        BuildOutcome {
            status: BuildStatus::Succeeded,
            artifacts: vec![artifact()],
            provenance: Some(serde_json::to_string(&envelope).unwrap()),
            ..BuildOutcome::default()
        }
    }

    fn facts(lease: &LeasedBuild) -> BuildFacts {
        BuildFacts {
            artifacts: vec![(artifact().name, artifact().digest)],
            instance: "bank".into(),
            project: lease.project.clone(),
            repository: "custody://bank/payments.git".into(),
            branch: lease.branch.clone(),
            commit: lease.commit.clone(),
            pipeline: (".custody/pipeline.toml".into(), "cd".repeat(32)),
            command: "scripts/build.sh".into(),
            script: None,
            network: false,
            builder_id: "custody://bank/workers/build-1".into(),
            builder_version: "0".into(),
            invocation_id: invocation_id("bank", lease),
            started_on: "2026-12-04T00:00:00Z".into(),
            finished_on: "2026-12-04T00:01:00Z".into(),
        }
    }

    #[test]
    fn a_workers_build_report_is_held_to_its_own_key_and_its_lease() {
        let worker = ServiceKey::generate(KeyRole::Builder);
        let other = ServiceKey::generate(KeyRole::Builder);
        let lease = lease();
        let honest = signed(&worker, &facts(&lease));
        assert_eq!(check_build_report("bank", &lease, &honest, &worker.public()), Ok(()));

        // Another key's signature, even a builder's, is not this worker's.
        let forged = signed(&other, &facts(&lease));
        let why = check_build_report("bank", &lease, &forged, &worker.public()).unwrap_err();
        assert!(why.contains("worker's registered key"), "{why}");

        // Its own key, but another commit than the one leased.
        let mut elsewhere = facts(&lease);
        elsewhere.commit = "ba".repeat(20);
        let why = check_build_report("bank", &lease, &signed(&worker, &elsewhere), &worker.public()).unwrap_err();
        assert!(why.contains("names commit"), "{why}");

        // A stale attempt's provenance replayed on the next lease.
        let mut earlier = lease.clone();
        earlier.attempt = 1;
        let replayed = signed(&worker, &facts(&earlier));
        let why = check_build_report("bank", &lease, &replayed, &worker.public()).unwrap_err();
        assert!(why.contains("not this lease's"), "{why}");

        // An artifact reported that the provenance does not name.
        let mut smuggled = honest.clone();
        smuggled.artifacts.push(NewArtifact { name: "dist/extra".into(), digest: "ef".repeat(32), size: 1 });
        let why = check_build_report("bank", &lease, &smuggled, &worker.public()).unwrap_err();
        assert!(why.contains("not exactly the artifacts"), "{why}");

        // A name that would lead a deployment out of its workspace.
        let mut escaping = facts(&lease);
        escaping.artifacts = vec![("../../etc/cron.d/job".into(), artifact().digest)];
        let mut outcome = signed(&worker, &escaping);
        outcome.artifacts[0].name = "../../etc/cron.d/job".into();
        let why = check_build_report("bank", &lease, &outcome, &worker.public()).unwrap_err();
        assert!(why.contains("not a relative path inside the workspace"), "{why}");
        for bad in ["", "/etc/passwd", "dist/../../x", "dist//app", "./app", "a\0b"] {
            assert!(check_artifact_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_artifact_name("dist/sub/app.tar.gz"), Ok(()));

        // A failure carries nothing to store.
        let mut failed = honest;
        failed.status = BuildStatus::Failed;
        assert!(check_build_report("bank", &lease, &failed, &worker.public()).is_err());
    }

    #[test]
    fn a_workers_deployment_attestation_must_say_what_custody_leased_it() {
        let worker = ServiceKey::generate(KeyRole::Deployer);
        let lease = LeasedDeployment {
            id: 1,
            project: "payments".into(),
            number: 2,
            environment: "production".into(),
            build: 3,
            commit: "c0ffee".repeat(6) + "c0ff",
            artifacts: vec![("dist/app.tar.gz".into(), "ab".repeat(32))],
            requested_by: Some("alice".into()),
            approvers: vec!["dave".into()],
            testers: vec![],
            previous: None,
            break_glass: None,
            builder: Some("worker/build-1".into()),
            worker: "worker/deploy-1".into(),
            started_at: 0,
        };
        let facts = DeploymentFacts {
            release: vec![ReleaseDuties { change: 1, authors: vec!["alice".into()], reviewers: vec!["bob".into()] }],
            after: Some("staging".into()),
            gate: None,
            secrets: Default::default(),
        };
        let attestation = |approvers: Vec<String>| {
            let predicate = DeploymentV1 {
                project: lease.project.clone(),
                environment: lease.environment.clone(),
                after: facts.after.clone(),
                gate: environment_gate(&facts),
                deployment: lease.number,
                build: lease.build,
                commit: lease.commit.clone(),
                pipeline: custody_formats::attestation::PipelineFile { path: "p".into(), sha256: "cd".repeat(32) },
                script: "scripts/deploy.sh".into(),
                release: release_changes(&facts),
                builder: lease.builder.clone(),
                requester: lease.requested_by.clone(),
                approvers,
                testers: vec![],
                previous_deployment: None,
                break_glass: None,
                secrets: Default::default(),
                result: "succeeded".into(),
                deployer: lease.worker.clone(),
                started_on: "2026-12-04T00:00:00Z".into(),
                finished_on: "2026-12-04T00:01:00Z".into(),
            };
            let envelope = predicate.statement(&lease.artifacts).sign(&worker).expect("signs");
            DeployOutcome {
                status: DeploymentStatus::Succeeded,
                attestation: Some(serde_json::to_string(&envelope).unwrap()),
                ..DeployOutcome::default()
            }
        };
        assert_eq!(check_deploy_report(&lease, &facts, &attestation(vec!["dave".into()]), &worker.public()), Ok(()));
        // A worker naming an approver custody did not record.
        let why =
            check_deploy_report(&lease, &facts, &attestation(vec!["mallory".into()]), &worker.public()).unwrap_err();
        assert!(why.contains("approvers"), "{why}");
        // A success without its attestation.
        let bare = DeployOutcome { status: DeploymentStatus::Succeeded, ..DeployOutcome::default() };
        assert!(check_deploy_report(&lease, &facts, &bare, &worker.public()).is_err());
    }
}
