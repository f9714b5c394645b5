//! The deployer: leases queued deployments, runs the environment's deploy
//! script as the build's own commit defines it, in the sandbox but with
//! network, with the verified artifacts beside it; signs a deployment
//! attestation with the deployer key; then promotes the build to the
//! environments that follow.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use custody_blobs::Blobs;
use custody_domain::pipeline;
use custody_domain::status::DeploymentStatus;
use custody_domain::{ProjectName, Timestamp};
use custody_formats::attestation::{DeploymentV1, EnvironmentGate, PipelineFile, ReleaseChange};
use custody_formats::statement::Statement;
use custody_formats::ServiceKey;
use custody_git::change as git;
use custody_git::Repositories;
use custody_store::{DeployOutcome, Duty, Heartbeat, LeasedDeployment, Store};
use sha2::{Digest as _, Sha256};

use crate::sandbox::{self, Limits};
use crate::{script_environment, Job, JobKind};
use custody_app::releases::{promote, release_context};

/// Where the verified artifacts are, inside the sandbox.
pub const ARTIFACTS_DIR: &str = "/work/.custody-artifacts";

/// How long a deployment's lease lasts without a heartbeat.
const LEASE: Duration = Duration::from_secs(30);

/// How often a running deployment's deployer renews its lease and looks
/// for a cancel from another process.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long an idle deployer waits when no wake-up came.
const IDLE: Duration = Duration::from_secs(2);

/// What a deployer needs.
#[derive(Clone)]
pub struct Deployer {
    /// The database.
    pub store: Store,
    /// The git repositories.
    pub repositories: Repositories,
    /// The artifact repository.
    pub blobs: Blobs,
    /// The deployer key, which signs deployment attestations.
    pub key: Arc<ServiceKey>,
    /// The key that seals environment secrets.
    pub sealing: Arc<custody_formats::sealed::SealingKey>,
    /// The builder's key (its public half): provenance is checked against
    /// it, or a builder key it replaced and nobody revoked, before anything
    /// is deployed.
    pub builder: Arc<ServiceKey>,
    /// This worker's name.
    pub worker: String,
    /// The most any job may use, whatever its pipeline asks.
    pub ceiling: sandbox::Ceiling,
}

impl Deployer {
    /// Runs deployments until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        crate::work_until(&self, shutdown).await;
    }

    /// The changes of the release (merged since what is live in the
    /// environment) with who wrote and who reviewed each.
    async fn release(&self, lease: &LeasedDeployment) -> Result<Vec<ReleaseChange>, String> {
        let project = ProjectName::parse(&lease.project).map_err(|e| e.to_string())?;
        let context = release_context(&self.store, &self.repositories, &project, &lease.environment, &lease.commit)
            .await
            .map_err(|e| e.to_string())?;
        let duties = self.store.release_duties(&project, &context.changes).await.map_err(|e| e.to_string())?;
        Ok(context
            .changes
            .iter()
            .map(|number| {
                let held = |duty| {
                    duties
                        .iter()
                        .filter(|d| d.change == *number && d.duty == duty)
                        .map(|d| d.user.to_string())
                        .collect()
                };
                ReleaseChange { change: *number, authors: held(Duty::Author), reviewers: held(Duty::Reviewer) }
            })
            .collect())
    }

    /// Keeps a running deployment's lease alive; completes with the reason
    /// to stop it when someone cancels it or the lease is lost. A cancel
    /// wakes it at once in this process, or within a heartbeat elsewhere.
    async fn stop_signal(&self, lease: &LeasedDeployment) -> String {
        loop {
            let woken = self.store.jobs_queued();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.store.heartbeat_deployment(lease, LEASE.as_millis() as i64).await {
                Ok(Heartbeat::Held) => {}
                Ok(Heartbeat::Cancel(reason)) => return reason,
                Ok(Heartbeat::Lost) => return format!("{} no longer holds the deployment", self.worker),
                Err(error) => tracing::warn!(%error, deployment = lease.number, "heartbeat failed"),
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
    }

    /// Runs one deployment to its outcome, or until `stop` gives a reason
    /// to stop its script.
    pub async fn deploy(
        &self,
        lease: &LeasedDeployment,
        stop: impl std::future::Future<Output = String>,
    ) -> DeployOutcome {
        let failed = |reason: String| DeployOutcome {
            status: DeploymentStatus::Failed,
            reason: Some(reason),
            ..DeployOutcome::default()
        };
        let ready = match self.make_ready(lease).await {
            Ok(ready) => ready,
            Err(reason) => return failed(reason),
        };
        let (status, reason, exit_code, log) = match self.run_script(&ready, stop).await {
            Ok(ended) => ended,
            Err(reason) => return failed(reason),
        };
        let statement = self.attestation(lease, ready, status).await;
        let envelope = match statement.sign(&self.key) {
            Ok(envelope) => envelope,
            // Never a success without its attestation: the script ran, and
            // the deployment counts as failed, saying why.
            Err(error) => {
                return DeployOutcome {
                    status: DeploymentStatus::Failed,
                    reason: Some(format!(
                        "the script ended {}; signing its attestation failed: {error}",
                        status.as_str()
                    )),
                    exit_code,
                    log,
                    attestation: None,
                }
            }
        };
        DeployOutcome {
            status,
            reason,
            exit_code,
            log,
            attestation: Some(serde_json::to_string(&envelope).unwrap_or_default()),
        }
    }

    /// Everything the deploy script needs, made ready before it runs: the
    /// verified provenance, the checkout and its script, the artifacts, the
    /// environment's secrets and the release's duties. Nothing after the
    /// script runs can fail for want of any of them.
    async fn make_ready(&self, lease: &LeasedDeployment) -> Result<Ready, String> {
        let project =
            ProjectName::parse(&lease.project).map_err(|_| format!("project name {:?} is not valid", lease.project))?;
        // Only what the builder signed is deployed: the provenance must
        // verify with the builder key and name every artifact.
        let provenance = match self.store.provenance_of(&project, lease.build).await {
            Ok(Some(provenance)) => provenance,
            Ok(None) => return Err(format!("build {} has no provenance; nothing was deployed", lease.build)),
            Err(error) => return Err(format!("reading the provenance failed: {error}")),
        };
        // The builder keys valid when the build finished, as the verifier
        // will judge it: a retired key signs nothing after its rotation, a
        // revoked one nothing from its revocation's time.
        let history = self.store.key_history().await.map_err(|e| format!("reading the key history failed: {e}"))?;
        let finished = match self.store.build_finished_at(&project, lease.build).await {
            Ok(Some(at)) => at,
            Ok(None) => return Err(format!("build {} has no recorded finish; nothing was deployed", lease.build)),
            Err(error) => return Err(format!("reading the build's finish failed: {error}")),
        };
        let builders = custody_store::keys_valid_at(&history, &self.builder.public(), finished);
        check_provenance(&provenance, &builders, &lease.artifacts)
            .map_err(|why| format!("the provenance of build {} {why}; nothing was deployed", lease.build))?;
        let repository = self.repositories.path(&project);
        let (commit, environment) = (lease.commit.clone(), lease.environment.clone());
        let (workspace, script, timeout, resources, pipeline_digest) =
            tokio::task::spawn_blocking(move || prepare(&repository, &commit, &environment))
                .await
                .map_err(|_| "preparing the deployment failed".to_owned())??;
        self.place_artifacts(lease, &workspace).await?;
        let build = lease.build.to_string();
        let job = Job {
            kind: JobKind::Deploy { environment: lease.environment.clone() },
            project: &lease.project,
            commit: &lease.commit,
            build: &build,
        };
        let mut env = script_environment(&job, Path::new("/work"));
        env.push(("CUSTODY_ARTIFACTS_DIR".into(), ARTIFACTS_DIR.into()));
        let (secrets, versions) = self.open_secrets(&project, lease).await?;
        env.extend(secrets.iter().cloned());
        // Who held each duty in the release goes into the attestation.
        let release =
            self.release(lease).await.map_err(|error| format!("reading the release's duties failed: {error}"))?;
        Ok(Ready { project, workspace, script, timeout, resources, pipeline_digest, env, secrets, versions, release })
    }

    /// The artifacts, re-hashed on the way out of the store into the
    /// workspace.
    async fn place_artifacts(&self, lease: &LeasedDeployment, workspace: &sandbox::Workspace) -> Result<(), String> {
        let artifacts_dir = workspace.path().join(".custody-artifacts");
        for (name, digest) in &lease.artifacts {
            let target = artifacts_dir.join(name);
            if let Some(parent) = target.parent().map(Path::to_path_buf) {
                tokio::task::spawn_blocking(move || std::fs::create_dir_all(parent))
                    .await
                    .map_err(|error| error.to_string())
                    .and_then(|made| made.map_err(|error| error.to_string()))
                    .map_err(|error| format!("cannot place artifact {name}: {error}"))?;
            }
            let parsed = digest.parse().map_err(|_| format!("artifact {name} has no valid digest"))?;
            self.blobs
                .copy_to_file(&parsed, &target)
                .await
                .map_err(|error| format!("artifact {name} could not be verified: {error}"))?;
        }
        Ok(())
    }

    /// The environment's secrets, each a variable of its own name, and the
    /// version of each, which the attestation records (never the value).
    async fn open_secrets(
        &self,
        project: &ProjectName,
        lease: &LeasedDeployment,
    ) -> Result<(Vec<(String, String)>, BTreeMap<String, i64>), String> {
        let sealed = self
            .store
            .current_secrets(project, &lease.environment)
            .await
            .map_err(|error| format!("reading the environment's secrets failed: {error}"))?;
        let mut secrets = Vec::new();
        let mut versions = BTreeMap::new();
        for secret in &sealed {
            let slot = custody_store::secret_slot(&lease.project, &lease.environment, &secret.name, secret.version);
            let opened = self.sealing.open(
                &slot,
                &custody_formats::sealed::Sealed { nonce: secret.nonce.clone(), ciphertext: secret.ciphertext.clone() },
            );
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

    /// Runs the deploy script in its sandbox until it ends or `stop` says
    /// why it must stop: how it ended, why, its exit code and its log with
    /// every secret redacted.
    async fn run_script(
        &self,
        ready: &Ready,
        stop: impl std::future::Future<Output = String>,
    ) -> Result<(DeploymentStatus, Option<String>, Option<i64>, String), String> {
        let (script, timeout, secrets) = (&ready.script, ready.timeout, &ready.secrets);
        // A deploy must reach its target: network is given, the data
        // directory stays invisible.
        let (limits, notes) = Limits::within(timeout, true, &ready.resources, &self.ceiling);
        let (output, mut chunks) = tokio::sync::mpsc::unbounded_channel();
        if !notes.is_empty() {
            let _ = output.send(notes.into_bytes());
        }
        let running = sandbox::run_streaming(&ready.workspace, script, &ready.env, &limits, Some(output));
        Ok(tokio::select! {
            finished = running => {
                let finished = finished.map_err(|error| error.to_string())?;
                let (status, reason) = match (finished.timed_out, finished.exit_code) {
                    _ if finished.limit.is_some() => (
                        DeploymentStatus::Failed,
                        finished.limit.as_ref().map(|limit| format!("the deploy script ran into {limit} and was stopped")),
                    ),
                    (true, _) => {
                        (DeploymentStatus::Failed, Some(format!("the deploy script ran past its timeout of {}s", timeout.as_secs())))
                    }
                    (false, Some(0)) => (DeploymentStatus::Succeeded, None),
                    (false, Some(code)) => {
                        (DeploymentStatus::Failed, Some(format!("the deploy script `{script}` exited with code {code}")))
                    }
                    (false, None) => (DeploymentStatus::Failed, Some(format!("the deploy script `{script}` was killed by a signal"))),
                };
                (status, reason, finished.exit_code.map(i64::from), redact(finished.log, secrets))
            }
            // Dropping the run kills the sandbox and everything in it.
            why = stop => {
                let mut seen = Vec::new();
                while let Ok(chunk) = chunks.try_recv() {
                    seen.extend(chunk);
                }
                let log = format!("{}\n[stopped: {why}]\n", String::from_utf8_lossy(&seen));
                (DeploymentStatus::Cancelled, Some(format!("{why}; the deploy script was stopped")), None, redact(log, secrets))
            }
        })
    }

    /// The deployment attestation of a deployment that ended with `status`.
    async fn attestation(&self, lease: &LeasedDeployment, ready: Ready, status: DeploymentStatus) -> Statement {
        // The environment this one follows and its gate, as the mainline
        // defines them now, so that an offline verifier can check the
        // environment order and the approvals the gate asked for.
        let context =
            release_context(&self.store, &self.repositories, &ready.project, &lease.environment, &lease.commit)
                .await
                .ok();
        DeploymentV1 {
            project: lease.project.clone(),
            environment: lease.environment.clone(),
            after: context.as_ref().and_then(|c| c.environment.after.clone()),
            gate: context.as_ref().map(|c| EnvironmentGate {
                approvals: u64::from(c.environment.approvals),
                approvers: c.environment.approvers.as_ref().map(ToString::to_string),
                testers: c.environment.testers.as_ref().map(ToString::to_string),
                reviewers_may_approve: c.environment.reviewers_may_approve,
            }),
            deployment: lease.number,
            build: lease.build,
            commit: lease.commit.clone(),
            pipeline: PipelineFile { path: pipeline::PATH.to_owned(), sha256: ready.pipeline_digest },
            script: ready.script,
            release: ready.release,
            builder: lease.builder.clone(),
            requester: lease.requested_by.clone(),
            approvers: lease.approvers.clone(),
            testers: lease.testers.clone(),
            previous_deployment: lease.previous,
            break_glass: lease.break_glass.clone(),
            secrets: ready.versions,
            result: status.as_str().to_owned(),
            deployer: lease.worker.clone(),
            started_on: Timestamp::from_millis(lease.started_at).to_string(),
            finished_on: Timestamp::from_millis(custody_store::now_ms()).to_string(),
        }
        .statement(&lease.artifacts)
    }
}

/// A deployment made ready to run.
struct Ready {
    project: ProjectName,
    workspace: sandbox::Workspace,
    script: String,
    timeout: Duration,
    resources: pipeline::Resources,
    pipeline_digest: String,
    /// The script's environment, secrets included.
    env: Vec<(String, String)>,
    /// The secrets by name, to redact from the log.
    secrets: Vec<(String, String)>,
    versions: BTreeMap<String, i64>,
    release: Vec<ReleaseChange>,
}

impl crate::Worker for Deployer {
    type Lease = LeasedDeployment;
    type Outcome = DeployOutcome;
    const KIND: &'static str = "deployment";
    const IDLE: Duration = IDLE;

    fn store(&self) -> &Store {
        &self.store
    }

    async fn lease(&self) -> custody_store::Result<Option<LeasedDeployment>> {
        self.store.lease_deployment(&self.worker, LEASE.as_millis() as i64).await
    }

    async fn work(&self, lease: &LeasedDeployment) -> Option<DeployOutcome> {
        Some(self.deploy(lease, self.stop_signal(lease)).await)
    }

    async fn record(&self, lease: &LeasedDeployment, outcome: DeployOutcome) {
        tracing::info!(project = %lease.project, deployment = lease.number, environment = %lease.environment, status = %outcome.status, "deployment finished");
        let succeeded = outcome.status == DeploymentStatus::Succeeded;
        if let Err(error) = self.store.finish_deployment(lease, outcome).await {
            tracing::error!(%error, deployment = lease.number, "recording a deployment");
        } else if succeeded {
            let next = Some(lease.environment.as_str());
            promote(&self.store, &self.repositories, &lease.project, lease.build, &lease.commit, next).await;
        }
    }

    async fn interrupted(&self, lease: &LeasedDeployment) {
        // The script died with the work: say so now, rather than leave the
        // deployment running until its lease runs out. It is never run
        // again on its own.
        let stopped = DeployOutcome {
            status: DeploymentStatus::Failed,
            reason: Some(format!(
                "{} was stopped while the deploy script ran, and the script with it; \
                 check the environment, then request the deployment again",
                self.worker
            )),
            ..DeployOutcome::default()
        };
        if let Err(error) = self.store.finish_deployment(lease, stopped).await {
            tracing::error!(%error, deployment = lease.number, "recording a stopped deployment");
        }
    }
}

/// Checks a build's provenance envelope: signed by the builder key, an
/// in-toto statement of SLSA provenance naming each artifact's digest.
pub fn check_provenance(
    envelope: &str,
    builders: &[custody_formats::PublicKey],
    artifacts: &[(String, String)],
) -> Result<(), String> {
    let envelope: custody_formats::Envelope =
        serde_json::from_str(envelope).map_err(|e| format!("is not a DSSE envelope ({e})"))?;
    let payload = builders
        .iter()
        .find_map(|builder| envelope.verify(builder).ok())
        .ok_or_else(|| "does not verify with the builder key".to_owned())?;
    let statement: Statement = serde_json::from_slice(&payload).map_err(|e| format!("holds no statement ({e})"))?;
    if statement.predicate_type != custody_formats::provenance::PROVENANCE_PREDICATE {
        return Err(format!("is a {} statement, not SLSA provenance", statement.predicate_type));
    }
    for (name, digest) in artifacts {
        if !statement.subject.iter().any(|s| s.digest.get("sha256") == Some(digest)) {
            return Err(format!("does not name artifact {name} (sha256:{digest})"));
        }
    }
    Ok(())
}

/// The log with every secret value replaced by its name.
pub fn redact(mut log: String, secrets: &[(String, String)]) -> String {
    // Each value as written, and as a script would most often re-encode it:
    // base64 (padded or not), base64url, hex in either case, and
    // URL-encoding.
    let mut forms: Vec<(String, &str)> = Vec::new();
    for (name, value) in secrets.iter().filter(|(_, v)| !v.is_empty()) {
        for form in encodings(value) {
            if form.len() >= 4 {
                forms.push((form, name.as_str()));
            }
        }
    }
    // Longer forms first, so a value containing another is hidden whole.
    forms.sort_by_key(|(form, _)| std::cmp::Reverse(form.len()));
    for (form, name) in forms {
        log = log.replace(form.as_str(), &format!("[secret {name}]"));
    }
    log
}

/// A secret value and its common encodings.
fn encodings(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let bytes = value.as_bytes();
    let standard = base64::engine::general_purpose::STANDARD.encode(bytes);
    let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let url_encoded: String = bytes
        .iter()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (*b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let mut forms = vec![
        value.to_owned(),
        standard.trim_end_matches('=').to_owned(),
        standard,
        url_safe,
        hex::encode(bytes),
        hex::encode_upper(bytes),
        url_encoded.clone(),
        url_encoded.to_ascii_lowercase(),
    ];
    forms.sort();
    forms.dedup();
    forms
}

/// Checks the build's commit out and finds the environment's deploy script
/// as that commit defines it.
fn prepare(
    repository: &Path,
    commit: &str,
    environment: &str,
) -> Result<(sandbox::Workspace, String, Duration, pipeline::Resources, String), String> {
    let text = git::read_file(repository, commit, pipeline::PATH)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} does not exist at {commit}", pipeline::PATH))?;
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    let policy = pipeline::parse(&text).map_err(|e| format!("the build's {e}"))?;
    let script = policy
        .environments
        .iter()
        .find(|e| e.name == environment)
        .and_then(|e| e.deploy.clone())
        .ok_or_else(|| format!("the pipeline file at {commit} names no deploy script for {environment}"))?;
    let workspace = sandbox::Workspace::new("deploy").map_err(|e| e.to_string())?;
    git::export_tree(repository, commit, workspace.path()).map_err(|e| e.to_string())?;
    // The artifacts' directory is custody's alone: a checkout holding
    // anything by its name (a link to a host directory, say) fails the job.
    if std::fs::symlink_metadata(workspace.path().join(".custody-artifacts")).is_ok() {
        return Err(".custody-artifacts is in the commit; custody makes it itself and never writes through \
                    what a commit put there: remove it from the repository"
            .into());
    }
    for dir in [".home", ".tmp", ".custody-artifacts"] {
        workspace.fresh_dir(dir)?;
    }
    let path = script.split_whitespace().next().unwrap_or_default().trim_start_matches("./").to_owned();
    let mut prefix = workspace.path().to_path_buf();
    for part in Path::new(&path).components() {
        prefix.push(part);
        if std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "{path} is reached through a symbolic link; a deploy script's path may not contain one"
            ));
        }
    }
    Ok((workspace, script, policy.timeout, policy.resources, digest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use custody_formats::statement::Subject;
    use serde_json::json;

    #[test]
    fn only_provenance_the_builder_signed_for_these_artifacts_passes() {
        use custody_formats::{KeyRole, ServiceKey};
        let builder = ServiceKey::generate(KeyRole::Builder);
        let deployer = ServiceKey::generate(KeyRole::Deployer);
        let subject = Subject { name: "app".into(), digest: BTreeMap::from([("sha256".into(), "ab".repeat(32))]) };
        let statement = Statement::new(vec![subject], custody_formats::provenance::PROVENANCE_PREDICATE, json!({}));
        let signed = serde_json::to_string(&statement.sign(&builder).expect("a key in memory signs")).unwrap();
        let artifacts = [("app".to_owned(), "ab".repeat(32))];
        assert_eq!(check_provenance(&signed, &[builder.public()], &artifacts), Ok(()));
        let by_deployer = serde_json::to_string(&statement.sign(&deployer).expect("a key in memory signs")).unwrap();
        assert!(check_provenance(&by_deployer, &[builder.public()], &artifacts).unwrap_err().contains("builder key"));
        let other = [("app".to_owned(), "cd".repeat(32))];
        assert!(check_provenance(&signed, &[builder.public()], &other).unwrap_err().contains("does not name"));
        let mut altered: serde_json::Value = serde_json::from_str(&signed).unwrap();
        altered["signatures"][0]["sig"] = json!("AAAA");
        assert!(check_provenance(&altered.to_string(), &[builder.public()], &artifacts).is_err());
    }

    #[test]
    fn secret_values_never_reach_the_log() {
        let secrets = vec![("DB".to_owned(), "hunter2".to_owned()), ("TOKEN".to_owned(), "hunter2-long".to_owned())];
        let log = redact("connecting with hunter2\ntoken hunter2-long\n".into(), &secrets);
        assert_eq!(log, "connecting with [secret DB]\ntoken [secret TOKEN]\n");
    }

    #[test]
    fn a_secret_re_encoded_by_the_script_is_hidden_too() {
        let value = "p@ss/w0rd+=?";
        let secrets = vec![("DB_PASSWORD".to_owned(), value.to_owned())];
        use base64::Engine as _;
        let printed = [
            base64::engine::general_purpose::STANDARD.encode(value),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(value),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
            hex::encode(value),
            hex::encode_upper(value),
            "p%40ss%2Fw0rd%2B%3D%3F".to_owned(),
        ];
        for shown in printed {
            let log = redact(format!("token: {shown}\n"), &secrets);
            assert_eq!(log, "token: [secret DB_PASSWORD]\n", "{shown}");
        }
    }
}
