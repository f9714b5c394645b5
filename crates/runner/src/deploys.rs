//! The deployer: leases queued deployments, runs the environment's deploy
//! script as the build's own commit defines it, in the sandbox but with
//! network, with the verified artifacts beside it; signs a deployment
//! attestation with the deployer key; then promotes the build to the
//! environments that follow.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use custody_app::work::{environment_gate, release_changes, PreparedDeployment};
use custody_domain::pipeline;
use custody_domain::status::DeploymentStatus;
use custody_domain::Timestamp;
use custody_formats::attestation::{DeploymentV1, PipelineFile};
use custody_formats::statement::Statement;
use custody_formats::ServiceKey;
use custody_git::change as git;
use custody_store::{DeployOutcome, Heartbeat, LeasedDeployment, Store};
use sha2::{Digest as _, Sha256};

pub use custody_app::work::check_provenance;

use crate::desk::{DeployDesk, LocalDeploys};
use crate::sandbox::{self, Limits};
use crate::{script_environment, Job, JobKind};

/// Where the verified artifacts are, inside the sandbox.
pub const ARTIFACTS_DIR: &str = "/work/.custody-artifacts";

/// How long a deployment's lease lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(30);

/// How often a running deployment's deployer renews its lease and looks
/// for a cancel from another process.
const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long an idle deployer waits when no wake-up came.
const IDLE: Duration = Duration::from_secs(2);

/// What a deployer needs.
#[derive(Clone)]
pub struct Deployer<D = LocalDeploys> {
    /// Where its deployments come from and go.
    pub desk: D,
    /// The key that signs deployment attestations: the instance's deployer
    /// key, or a worker's own.
    pub key: Arc<ServiceKey>,
    /// This worker's name.
    pub worker: String,
    /// The most any job may use, whatever its pipeline asks.
    pub ceiling: sandbox::Ceiling,
}

/// Where an artifact called `name` goes under `dir`, its directories made.
pub async fn artifact_path(dir: &Path, name: &str) -> Result<PathBuf, String> {
    custody_app::work::check_artifact_name(name)?;
    let target = dir.join(name);
    if let Some(parent) = target.parent().map(Path::to_path_buf) {
        tokio::task::spawn_blocking(move || std::fs::create_dir_all(parent))
            .await
            .map_err(|error| error.to_string())
            .and_then(|made| made.map_err(|error| error.to_string()))
            .map_err(|error| format!("cannot place artifact {name}: {error}"))?;
    }
    Ok(target)
}

impl<D: DeployDesk> Deployer<D> {
    /// Runs deployments until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        crate::work_until(&self, shutdown).await;
    }

    /// Keeps a running deployment's lease alive; completes with the reason
    /// to stop it when someone cancels it or the lease is lost. A cancel
    /// wakes it at once in this process, or within a heartbeat elsewhere.
    async fn stop_signal(&self, lease: &LeasedDeployment) -> String {
        loop {
            let mut woken = self.desk.store().map(|store| Box::pin(store.jobs_queued()));
            if let Some(woken) = woken.as_mut() {
                woken.as_mut().enable();
            }
            match self.desk.heartbeat(lease, LEASE.as_millis() as i64).await {
                Ok(Heartbeat::Held) => {}
                Ok(Heartbeat::Cancel(reason)) => return reason,
                Ok(Heartbeat::Lost) => return format!("{} no longer holds the deployment", self.worker),
                Err(error) => tracing::warn!(%error, deployment = lease.number, "heartbeat failed"),
            }
            let woken = async move {
                match woken {
                    Some(woken) => woken.await,
                    None => std::future::pending().await,
                }
            };
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
        let (status, reason, exit_code, log) = match self.run_script(lease, &ready, stop).await {
            Ok(ended) => ended,
            Err(reason) => return failed(reason),
        };
        let statement = attestation(lease, ready, status);
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
        let PreparedDeployment { facts, secrets } = self.desk.prepare(lease).await?;
        let repository = self.desk.repository(lease).await?;
        let (commit, environment) = (lease.commit.clone(), lease.environment.clone());
        let (workspace, script, timeout, resources, pipeline_digest) =
            tokio::task::spawn_blocking(move || prepare(&repository, &commit, &environment))
                .await
                .map_err(|_| "preparing the deployment failed".to_owned())??;
        self.desk.place_artifacts(lease, &workspace.path().join(".custody-artifacts")).await?;
        let build = lease.build.to_string();
        let job = Job {
            kind: JobKind::Deploy { environment: lease.environment.clone() },
            project: &lease.project,
            commit: &lease.commit,
            build: &build,
        };
        let mut env = script_environment(&job, Path::new("/work"));
        env.push(("CUSTODY_ARTIFACTS_DIR".into(), ARTIFACTS_DIR.into()));
        env.extend(secrets.iter().cloned());
        Ok(Ready { workspace, script, timeout, resources, pipeline_digest, env, secrets, facts })
    }

    /// Runs the deploy script in its sandbox until it ends or `stop` says
    /// why it must stop: how it ended, why, its exit code and its log with
    /// every secret redacted.
    async fn run_script(
        &self,
        lease: &LeasedDeployment,
        ready: &Ready,
        stop: impl std::future::Future<Output = String>,
    ) -> Result<(DeploymentStatus, Option<String>, Option<i64>, String), String> {
        let (script, timeout, secrets) = (&ready.script, ready.timeout, &ready.secrets);
        // A deploy must reach its target: network is given, the data
        // directory stays invisible.
        let (limits, notes) = Limits::within(timeout, true, &ready.resources, &self.ceiling);
        let (output, chunks) = tokio::sync::mpsc::unbounded_channel();
        if !notes.is_empty() {
            let _ = output.send(notes.into_bytes());
        }
        // What the script wrote so far, for the log of a script stopped.
        let seen = std::sync::Mutex::new(Vec::new());
        let running = sandbox::run_streaming(&ready.workspace, script, &ready.env, &limits, Some(output));
        let streaming = self.stream_log(lease, chunks, secrets, &seen);
        Ok(tokio::select! {
            (finished, ()) = async { tokio::join!(running, streaming) } => {
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
                let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
                let log = format!("{}\n[stopped: {why}]\n", String::from_utf8_lossy(&seen));
                (DeploymentStatus::Cancelled, Some(format!("{why}; the deploy script was stopped")), None, redact(log, secrets))
            }
        })
    }

    /// Writes the script's output to the deployment's log as it arrives, a
    /// batch at a time, every secret redacted; the whole log its finish
    /// records replaces it.
    async fn stream_log(
        &self,
        lease: &LeasedDeployment,
        mut chunks: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
        secrets: &[(String, String)],
        seen: &std::sync::Mutex<Vec<u8>>,
    ) {
        let mut redactor = StreamRedactor::new(secrets);
        let (mut raw, mut sent) = (Vec::new(), 0);
        loop {
            let open = match tokio::time::timeout(Duration::from_millis(200), chunks.recv()).await {
                Ok(Some(chunk)) => {
                    raw.extend(chunk);
                    while let Ok(more) = chunks.try_recv() {
                        raw.extend(more);
                    }
                    true
                }
                Ok(None) => false,
                Err(_) => true,
            };
            // Whole characters only; a split one waits for its rest.
            let cut = if open { crate::builds::utf8_boundary(&raw) } else { raw.len() };
            seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(&raw[..cut]);
            let mut text = redactor.push(&String::from_utf8_lossy(&raw[..cut]));
            raw.drain(..cut);
            if !open {
                text.push_str(&redactor.finish());
            }
            // The streamed log stops where the kept log is cut.
            let mut room = sandbox::LOG_LIMIT.saturating_sub(sent).min(text.len());
            while !text.is_char_boundary(room) {
                room -= 1;
            }
            text.truncate(room);
            if !text.is_empty() {
                sent += text.len();
                if let Err(error) = self.desk.append_log(lease, text).await {
                    tracing::warn!(%error, deployment = lease.number, "writing a deployment's log");
                }
            }
            if !open {
                return;
            }
        }
    }
}

/// The deployment attestation of a deployment that ended with `status`.
fn attestation(lease: &LeasedDeployment, ready: Ready, status: DeploymentStatus) -> Statement {
    DeploymentV1 {
        project: lease.project.clone(),
        environment: lease.environment.clone(),
        after: ready.facts.after.clone(),
        gate: environment_gate(&ready.facts),
        deployment: lease.number,
        build: lease.build,
        commit: lease.commit.clone(),
        pipeline: PipelineFile { path: pipeline::PATH.to_owned(), sha256: ready.pipeline_digest },
        script: ready.script,
        release: release_changes(&ready.facts),
        builder: lease.builder.clone(),
        requester: lease.requested_by.clone(),
        approvers: lease.approvers.clone(),
        testers: lease.testers.clone(),
        previous_deployment: lease.previous,
        break_glass: lease.break_glass.clone(),
        secrets: ready.facts.secrets,
        result: status.as_str().to_owned(),
        deployer: lease.worker.clone(),
        started_on: Timestamp::from_millis(lease.started_at).to_string(),
        finished_on: Timestamp::from_millis(custody_store::now_ms()).to_string(),
    }
    .statement(&lease.artifacts)
}

/// A deployment made ready to run.
struct Ready {
    workspace: sandbox::Workspace,
    script: String,
    timeout: Duration,
    resources: pipeline::Resources,
    pipeline_digest: String,
    /// The script's environment, secrets included.
    env: Vec<(String, String)>,
    /// The secrets by name, to redact from the log.
    secrets: Vec<(String, String)>,
    /// What the attestation records beyond the lease.
    facts: custody_api::DeploymentFacts,
}

impl<D: DeployDesk> crate::Worker for Deployer<D> {
    type Lease = LeasedDeployment;
    type Outcome = DeployOutcome;
    const KIND: &'static str = "deployment";
    const IDLE: Duration = IDLE;

    fn store(&self) -> Option<&Store> {
        self.desk.store()
    }

    async fn lease(&self) -> Result<Option<LeasedDeployment>, String> {
        self.desk.lease(&self.worker, LEASE.as_millis() as i64).await
    }

    async fn work(&self, lease: &LeasedDeployment) -> Option<DeployOutcome> {
        Some(self.deploy(lease, self.stop_signal(lease)).await)
    }

    async fn record(&self, lease: &LeasedDeployment, outcome: DeployOutcome) {
        tracing::info!(project = %lease.project, deployment = lease.number, environment = %lease.environment, status = %outcome.status, "deployment finished");
        self.desk.finish(lease, outcome).await;
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
        self.desk.finish(lease, stopped).await;
    }
}

/// The log with every secret value replaced by its name.
pub fn redact(log: String, secrets: &[(String, String)]) -> String {
    replace_forms(log, &secret_forms(secrets))
}

/// Each secret value as written, and as a script would most often
/// re-encode it (base64 padded or not, base64url, hex in either case, and
/// URL-encoding), with its name: longer forms first, so a value containing
/// another is hidden whole.
fn secret_forms(secrets: &[(String, String)]) -> Vec<(String, String)> {
    let mut forms: Vec<(String, String)> = Vec::new();
    for (name, value) in secrets.iter().filter(|(_, v)| !v.is_empty()) {
        for form in encodings(value) {
            if form.len() >= 4 {
                forms.push((form, format!("[secret {name}]")));
            }
        }
    }
    forms.sort_by_key(|(form, _)| std::cmp::Reverse(form.len()));
    forms
}

fn replace_forms(mut log: String, forms: &[(String, String)]) -> String {
    for (form, shown) in forms {
        log = log.replace(form.as_str(), shown);
    }
    log
}

/// Redacts a log as it streams: every whole secret form is replaced, and
/// an end that could still grow into one is held back until more output,
/// or the end of the script, decides. No form reaches the output split
/// across two pieces.
pub struct StreamRedactor {
    forms: Vec<(String, String)>,
    held: String,
}

impl StreamRedactor {
    /// A redactor of these secrets' values.
    pub fn new(secrets: &[(String, String)]) -> Self {
        StreamRedactor { forms: secret_forms(secrets), held: String::new() }
    }

    /// Takes more output: what may be shown now.
    pub fn push(&mut self, text: &str) -> String {
        let mut all = std::mem::take(&mut self.held);
        all.push_str(text);
        let all = replace_forms(all, &self.forms);
        // The longest end of the text that begins some form.
        let bytes = all.as_bytes();
        let hold = self
            .forms
            .iter()
            .filter_map(|(form, _)| {
                let form = form.as_bytes();
                (1..form.len()).rev().find(|&k| bytes.ends_with(&form[..k]))
            })
            .max()
            .unwrap_or(0);
        // The held end starts where a form starts: on a character's first byte.
        let cut = all.len() - hold;
        self.held = all[cut..].to_owned();
        let mut shown = all;
        shown.truncate(cut);
        shown
    }

    /// The output ended: what was held back, which no form can complete now.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
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
    use std::collections::BTreeMap;

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

    #[test]
    fn a_secret_split_across_streamed_pieces_never_reaches_the_log() {
        let secrets = vec![("DB".to_owned(), "hunter2".to_owned()), ("KEY".to_owned(), "ключ-секрет".to_owned())];
        let output = "pw hunter2 and 68756e74657232 then ключ-секрет, hunter done";
        let whole = redact(output.to_owned(), &secrets);
        let cuts: Vec<usize> = (0..=output.len()).filter(|&i| output.is_char_boundary(i)).collect();
        for &a in &cuts {
            for &b in cuts.iter().filter(|&&b| b >= a) {
                let mut redactor = StreamRedactor::new(&secrets);
                let pieces = [redactor.push(&output[..a]), redactor.push(&output[a..b]), redactor.push(&output[b..])];
                for piece in &pieces {
                    for form in ["hunter2", "68756e74657232", "ключ-секрет"] {
                        assert!(!piece.contains(form), "{form} shown when cut at {a} and {b}: {pieces:?}");
                    }
                }
                let streamed = pieces.concat() + &redactor.finish();
                assert_eq!(streamed, whole, "cut at {a} and {b}");
            }
        }
    }

    #[test]
    fn a_streamed_log_holds_back_only_what_could_still_become_a_secret() {
        let secrets = vec![("DB".to_owned(), "hunter2".to_owned())];
        let mut redactor = StreamRedactor::new(&secrets);
        assert_eq!(redactor.push("step one\nconnecting as hun"), "step one\nconnecting as ");
        assert_eq!(redactor.push("gry\n"), "hungry\n");
        assert_eq!(redactor.push("done hunt"), "done ");
        assert_eq!(redactor.finish(), "hunt");
    }
}
