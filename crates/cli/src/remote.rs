//! A worker that shares nothing with the server: `custody worker init`,
//! `register`, `list` and `run --server URL --dir DIR`.
//!
//! Its directory holds its own key, its credential and the repositories it
//! fetched; never the instance's database URL, data directory or keys. It
//! reaches the server only through the workers' API and git's smart HTTP,
//! and runs each job with the same builder and deployer as the server's
//! own workers, on a desk ([`Remote`]) that leases, fetches, uploads and
//! reports over HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Args, Subcommand};
use custody_api::{
    BuildLogRequest, BuildOrder, BuildOutcome, BuildReportRequest, DeployOrder, DeployOutcome, DeploymentReport,
    Heartbeat, LeaseHeld, LeasedBuild, LeasedDeployment, NewArtifact, RegisterWorkerRequest, TicketRequest, WorkerView,
    TICKET_HEADER, WORKER_CREDENTIAL_PREFIX,
};
use custody_app::work::PreparedDeployment;
use custody_formats::{KeyRole, ServiceKey};
use custody_runner::desk::{BuildDesk, DeployDesk};
use custody_store::{GrantView, Store};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::client::Client;
use crate::commands::{grant_outcome, Output};
use crate::Failure;

/// The most text one log report carries (the API takes bodies of 64 KiB).
const LOG_CHUNK: usize = 32 * 1024;

/// What a worker's directory says of it.
#[derive(Serialize, Deserialize)]
struct Identity {
    name: String,
    role: String,
}

/// Workers that share nothing with the server.
#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Make a worker's own key and credential in a new directory, on the
    /// worker's host; prints what an admin registers.
    Init {
        /// The worker's directory (made; must not exist or be empty).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The worker's name: lowercase letters, digits and dashes.
        #[arg(long)]
        name: String,
        /// What it runs and its key signs: builder or deployer.
        #[arg(long)]
        role: String,
    },
    /// Ask to register a worker (a grant a second admin approves), from
    /// what `custody worker init` printed.
    Register {
        /// The worker's name.
        name: String,
        /// builder or deployer.
        #[arg(long)]
        role: String,
        /// The worker's public key file (`worker.pub` in its directory).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// The SHA-256 of its credential, as `custody worker init` printed it.
        #[arg(long, value_name = "HEX")]
        credential_sha256: String,
    },
    /// The registered workers.
    List,
    /// Run jobs from a server, with nothing but the worker's directory.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The server's URL.
    #[arg(long, env = "CUSTODY_SERVER", value_name = "URL")]
    server: String,
    /// The worker's directory, as `custody worker init` made it.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    #[command(flatten)]
    jobs: crate::serve::JobArgs,
}

pub async fn remote(server: Option<String>, command: RemoteCommand, out: Output) -> Result<(), Failure> {
    match command {
        RemoteCommand::Init { dir, name, role } => init(&dir, &name, &role, out),
        RemoteCommand::Register { name, role, public_key, credential_sha256 } => {
            let public_key = std::fs::read_to_string(&public_key)
                .map_err(|e| Failure::input(format!("cannot read {}: {e}", public_key.display())))?;
            let request = RegisterWorkerRequest { name, role, public_key, credential_sha256 };
            let grant: GrantView = Client::from_env(server)?.submit("/api/v1/workers", &request).await?;
            out.show(&grant, grant_outcome);
            Ok(())
        }
        RemoteCommand::List => {
            let workers: Vec<WorkerView> = Client::from_env(server)?.get("/api/v1/workers").await?;
            out.list(
                &workers,
                |w| {
                    let revoked = w.revoked.as_ref().map(|r| format!("  REVOKED since {r}")).unwrap_or_default();
                    format!("{:<20} {:<9} {}{revoked}", w.name, w.role, w.key_id)
                },
                "no workers registered",
            );
            Ok(())
        }
        RemoteCommand::Run(args) => run(args).await,
    }
}

fn init(dir: &Path, name: &str, role: &str, out: Output) -> Result<(), Failure> {
    if let Some(problem) = custody_domain::grant::worker_problem(name, role) {
        return Err(Failure::input(problem));
    }
    let role = KeyRole::parse(role).ok_or_else(|| Failure::input(format!("{role:?} is no key role")))?;
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Failure::input(format!("{} is not empty; give a new directory", dir.display())));
    }
    let failed = |e: std::io::Error| Failure::internal(format!("writing {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let key = ServiceKey::generate(role);
    key.save(&dir.join("worker.pem")).map_err(|e| Failure::internal(e.to_string()))?;
    std::fs::write(dir.join("worker.pub"), key.public().to_pem()).map_err(failed)?;
    let secret = custody_store::random_secret();
    let credential = format!("{WORKER_CREDENTIAL_PREFIX}{name}.{secret}");
    write_private(&dir.join("credential"), credential.as_bytes()).map_err(failed)?;
    let identity = Identity { name: name.to_owned(), role: role.as_str().to_owned() };
    std::fs::write(dir.join("worker.json"), serde_json::to_vec_pretty(&identity).unwrap_or_default())
        .map_err(failed)?;
    let digest = hex::encode(Sha256::digest(secret.as_bytes()));
    if out.json {
        out.print_json(&serde_json::json!({
            "name": name, "role": role.as_str(), "key_id": key.public().key_id(), "credential_sha256": digest,
            "public_key": dir.join("worker.pub"),
        }));
    } else {
        println!("worker {name} ({}) made in {}; its key {}", role.as_str(), dir.display(), key.public().key_id());
        println!("an admin registers it (a second admin approves):");
        println!(
            "  custody worker register {name} --role {} --public-key worker.pub --credential-sha256 {digest}",
            role.as_str()
        );
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

async fn run(args: RunArgs) -> Result<(), Failure> {
    crate::serve::init_logging("text")?;
    let read = |file: &str| {
        std::fs::read_to_string(args.dir.join(file)).map_err(|e| {
            Failure::input(format!(
                "{}: {e}; make the directory with `custody worker init`",
                args.dir.join(file).display()
            ))
        })
    };
    let identity: Identity = serde_json::from_str(&read("worker.json")?)
        .map_err(|e| Failure::input(format!("worker.json does not read: {e}")))?;
    let credential = read("credential")?.trim().to_owned();
    let role = KeyRole::parse(&identity.role).ok_or_else(|| Failure::input("worker.json names no role"))?;
    let key = ServiceKey::load(role, &args.dir.join("worker.pem")).map_err(|e| Failure::input(e.to_string()))?;
    let ceiling = args.jobs.ceiling()?;
    let remote = Remote::new(&args.server, credential, &args.dir, &identity.name)?;
    println!("worker {} running {} jobs from {}", identity.name, role.as_str(), remote.base);
    let stop = crate::serve::Stop::new();
    let worker = format!("worker/{}", identity.name);
    let key = Arc::new(key);
    let running = {
        let signal = stop.signal();
        let remote = remote.clone();
        tokio::spawn(async move {
            if role == KeyRole::Builder {
                let builder = custody_runner::builds::Builder { desk: remote, key, worker, ceiling };
                builder.run(signal).await;
            } else {
                let deployer = custody_runner::deploys::Deployer { desk: remote, key, worker, ceiling };
                deployer.run(signal).await;
            }
        })
    };
    crate::serve::shutdown_signal().await;
    stop.stop();
    let _ = running.await;
    Ok(())
}

/// The orders a worker holds, by lease id: each kept from its lease to its report.
struct Orders<T>(Mutex<HashMap<i64, T>>);

impl<T> Default for Orders<T> {
    fn default() -> Self {
        Orders(Mutex::default())
    }
}

impl<T> Orders<T> {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<i64, T>> {
        // An order map a panic left half-written is still a map.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put(&self, id: i64, order: T) {
        self.held().insert(id, order);
    }

    /// `read` of the order of lease `id` (`what` names it when there is none).
    fn read<R>(&self, id: i64, what: &str, read: impl FnOnce(&T) -> R) -> Result<R, String> {
        self.held().get(&id).map(read).ok_or_else(|| format!("this worker holds no order for {what}"))
    }

    fn forget(&self, id: i64) {
        self.held().remove(&id);
    }
}

/// A desk that is a server reached over HTTP.
#[derive(Clone)]
pub struct Remote {
    http: reqwest::Client,
    base: String,
    credential: String,
    name: String,
    repositories: PathBuf,
    builds: Arc<Orders<BuildOrder>>,
    deployments: Arc<Orders<DeployOrder>>,
}

impl Remote {
    fn new(server: &str, credential: String, dir: &Path, name: &str) -> Result<Remote, Failure> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::input(format!("--server {server:?} must be a URL such as https://custody.example")));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("custody-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::internal(e.to_string()))?;
        let repositories = dir.join("repositories");
        std::fs::create_dir_all(&repositories)
            .map_err(|e| Failure::input(format!("cannot make {}: {e}", repositories.display())))?;
        Ok(Remote {
            http,
            base,
            credential,
            name: name.to_owned(),
            repositories,
            builds: Arc::default(),
            deployments: Arc::default(),
        })
    }

    /// POSTs `body` (or nothing) to `path`: the answer read as `R`, `None` for a 204.
    async fn post<R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Option<R>, String> {
        let mut request = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.credential);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| format!("cannot reach {}: {e}", self.base))?;
        read_answer(path, response).await
    }

    fn ticket_of_build(&self, lease: &LeasedBuild) -> Result<String, String> {
        self.builds.read(lease.id, &format!("build {}", lease.number), |o| o.ticket.clone())
    }

    fn ticket_of_deployment(&self, lease: &LeasedDeployment) -> Result<String, String> {
        self.deployments.read(lease.id, &format!("deployment {}", lease.number), |o| o.ticket.clone())
    }

    /// Sends a job's final report to `path`; a failure is logged, as the
    /// job is over either way (an unrecorded one is leased again).
    async fn report(&self, path: &str, report: Result<impl Serialize, String>, job: &str) {
        let sent = match report {
            Ok(report) => self.post::<serde_json::Value>(path, Some(&report)).await.map(|_| ()),
            Err(error) => Err(error),
        };
        if let Err(error) = sent {
            tracing::error!(%error, job, "reporting a job");
        }
    }

    /// The worker's own copy of `project`'s repository, fetched from the
    /// server now, holding `commit`.
    async fn fetch(&self, project: &str, commit: &str) -> Result<PathBuf, String> {
        let project = custody_domain::ProjectName::parse(project).map_err(|e| e.to_string())?;
        let path = self.repositories.join(format!("{project}.git"));
        let url = format!("{}/{project}.git", self.base);
        let (credential, commit) = (self.credential.clone(), commit.to_owned());
        let repository = path.clone();
        tokio::task::spawn_blocking(move || fetch_into(&repository, &url, &credential, &commit))
            .await
            .map_err(|_| "fetching the commit failed".to_owned())??;
        Ok(path)
    }
}

/// Reads an answer: `R` for a success, `None` for a 204, the server's
/// message for a failure.
async fn read_answer<R: serde::de::DeserializeOwned>(
    path: &str,
    response: reqwest::Response,
) -> Result<Option<R>, String> {
    let status = response.status();
    if status == reqwest::StatusCode::NO_CONTENT {
        return Ok(None);
    }
    let text = response.text().await.map_err(|e| format!("the answer to {path} broke off: {e}"))?;
    if !status.is_success() {
        let message =
            serde_json::from_str::<custody_api::ErrorBody>(&text).map(|body| body.error.message).unwrap_or(text);
        return Err(format!("{path}: {status}: {message}"));
    }
    serde_json::from_str(&text).map(Some).map_err(|e| format!("the answer to {path} does not read ({e})"))
}

/// Fetches every branch of `url` into the bare repository at `path` (made
/// when missing), then checks that it holds `commit`. The credential goes
/// to git in its environment, never on a command line.
fn fetch_into(path: &Path, url: &str, credential: &str, commit: &str) -> Result<(), String> {
    let git = |args: &[&str]| {
        let mut command = std::process::Command::new("git");
        command
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env("GIT_CONFIG_VALUE_0", format!("Authorization: Bearer {credential}"));
        command
    };
    if !path.join("HEAD").exists() {
        let made =
            git(&["init", "--quiet", "--bare"]).arg(path).output().map_err(|e| format!("cannot run git: {e}"))?;
        if !made.status.success() {
            return Err(format!("git init failed: {}", String::from_utf8_lossy(&made.stderr).trim()));
        }
    }
    let fetched = git(&["--git-dir"])
        .arg(path)
        .args(["fetch", "--quiet", "--no-tags", "--prune", url, "+refs/heads/*:refs/heads/*"])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !fetched.status.success() {
        return Err(format!("fetching from {url} failed: {}", String::from_utf8_lossy(&fetched.stderr).trim()));
    }
    let found = git(&["--git-dir"])
        .arg(path)
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .status()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !found.success() {
        return Err(format!("commit {commit} is on no branch the server sent"));
    }
    Ok(())
}

/// `text` in pieces of at most [`LOG_CHUNK`] bytes, cut between characters.
fn pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while rest.len() > LOG_CHUNK {
        let mut cut = LOG_CHUNK;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, after) = rest.split_at(cut);
        pieces.push(piece);
        rest = after;
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

impl BuildDesk for Remote {
    fn store(&self) -> Option<&Store> {
        None
    }

    async fn lease(&self, _: &str, _: i64) -> Result<Option<LeasedBuild>, String> {
        let order: Option<BuildOrder> = self.post("/api/v1/worker/builds/lease", None::<&()>).await?;
        let Some(order) = order else { return Ok(None) };
        let lease = order.lease.clone();
        self.builds.put(lease.id, order);
        Ok(Some(lease))
    }

    fn instance(&self, lease: &LeasedBuild) -> String {
        self.builds.read(lease.id, "this build", |o| o.instance.clone()).unwrap_or_default()
    }

    fn builder_id(&self, lease: &LeasedBuild) -> String {
        format!("custody://{}/workers/{}", self.instance(lease), self.name)
    }

    async fn repository(&self, lease: &LeasedBuild) -> Result<PathBuf, String> {
        self.fetch(&lease.project, &lease.commit).await
    }

    async fn heartbeat(&self, lease: &LeasedBuild, _: i64) -> Result<bool, String> {
        let request = TicketRequest { ticket: self.ticket_of_build(lease)? };
        let held: Option<LeaseHeld> = self.post("/api/v1/worker/builds/heartbeat", Some(&request)).await?;
        Ok(held.is_some_and(|h| h.held))
    }

    async fn append_log(&self, lease: &LeasedBuild, text: String) -> Result<(), String> {
        let ticket = self.ticket_of_build(lease)?;
        for piece in pieces(&text) {
            let request = BuildLogRequest { ticket: ticket.clone(), text: piece.to_owned() };
            self.post::<serde_json::Value>("/api/v1/worker/builds/log", Some(&request)).await?;
        }
        Ok(())
    }

    async fn store_artifact(&self, lease: &LeasedBuild, name: &str, path: &Path) -> Result<NewArtifact, String> {
        let ticket = self.ticket_of_build(lease)?;
        let digest = {
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || -> std::io::Result<String> {
                let mut hasher = Sha256::new();
                std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
                Ok(hex::encode(hasher.finalize()))
            })
            .await
            .map_err(|_| "hashing an artifact failed".to_owned())?
            .map_err(|e| format!("reading artifact {name}: {e}"))?
        };
        let file = tokio::fs::File::open(path).await.map_err(|e| format!("reading artifact {name}: {e}"))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let path_and_query = "/api/v1/worker/builds/artifacts";
        let response = self
            .http
            .put(format!("{}{path_and_query}", self.base))
            .query(&[("name", name)])
            .bearer_auth(&self.credential)
            .header(TICKET_HEADER, ticket)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("uploading artifact {name}: {e}"))?;
        let stored: NewArtifact =
            read_answer(path_and_query, response).await?.ok_or_else(|| format!("no answer storing {name}"))?;
        if stored.digest != digest {
            return Err(format!("the server stored artifact {name} as sha256:{}, not sha256:{digest}", stored.digest));
        }
        Ok(stored)
    }

    async fn finish(&self, lease: &LeasedBuild, outcome: BuildOutcome) {
        let report = self.ticket_of_build(lease).map(|ticket| BuildReportRequest { ticket, outcome });
        self.report("/api/v1/worker/builds/finish", report, &format!("build {}", lease.number)).await;
        self.builds.forget(lease.id);
    }

    async fn requeue(&self, lease: &LeasedBuild) {
        let request = self.ticket_of_build(lease).map(|ticket| TicketRequest { ticket });
        self.report("/api/v1/worker/builds/requeue", request, &format!("build {}", lease.number)).await;
        self.builds.forget(lease.id);
    }
}

impl DeployDesk for Remote {
    fn store(&self) -> Option<&Store> {
        None
    }

    async fn lease(&self, _: &str, _: i64) -> Result<Option<LeasedDeployment>, String> {
        let order: Option<DeployOrder> = self.post("/api/v1/worker/deployments/lease", None::<&()>).await?;
        let Some(order) = order else { return Ok(None) };
        let lease = order.lease.clone();
        self.deployments.put(lease.id, order);
        Ok(Some(lease))
    }

    async fn prepare(&self, lease: &LeasedDeployment) -> Result<PreparedDeployment, String> {
        self.deployments.read(lease.id, &format!("deployment {}", lease.number), |order| PreparedDeployment {
            facts: order.facts.clone(),
            secrets: order.secrets.iter().map(|s| (s.name.clone(), s.value.clone())).collect(),
        })
    }

    async fn repository(&self, lease: &LeasedDeployment) -> Result<PathBuf, String> {
        self.fetch(&lease.project, &lease.commit).await
    }

    async fn place_artifacts(&self, lease: &LeasedDeployment, dir: &Path) -> Result<(), String> {
        let ticket = self.ticket_of_deployment(lease)?;
        for (name, digest) in &lease.artifacts {
            let target = custody_runner::deploys::artifact_path(dir, name).await?;
            let url = format!("{}/api/v1/worker/deployments/artifacts/{digest}", self.base);
            let response = self
                .http
                .get(url)
                .bearer_auth(&self.credential)
                .header(TICKET_HEADER, &ticket)
                .send()
                .await
                .map_err(|e| format!("fetching artifact {name}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("fetching artifact {name}: {}", response.status()));
            }
            let mut file = tokio::fs::File::create(&target).await.map_err(|e| format!("writing {name}: {e}"))?;
            let mut hasher = Sha256::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("artifact {name} broke off: {e}"))?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| format!("writing {name}: {e}"))?;
            }
            file.sync_all().await.map_err(|e| format!("writing {name}: {e}"))?;
            let got = hex::encode(hasher.finalize());
            if got != *digest {
                return Err(format!("artifact {name} arrived as sha256:{got}, not the built sha256:{digest}"));
            }
        }
        Ok(())
    }

    async fn heartbeat(&self, lease: &LeasedDeployment, _: i64) -> Result<Heartbeat, String> {
        let request = TicketRequest { ticket: self.ticket_of_deployment(lease)? };
        let answer: Option<Heartbeat> = self.post("/api/v1/worker/deployments/heartbeat", Some(&request)).await?;
        answer.ok_or_else(|| "the heartbeat had no answer".to_owned())
    }

    async fn append_log(&self, lease: &LeasedDeployment, text: String) -> Result<(), String> {
        let ticket = self.ticket_of_deployment(lease)?;
        for piece in pieces(&text) {
            let request = BuildLogRequest { ticket: ticket.clone(), text: piece.to_owned() };
            self.post::<serde_json::Value>("/api/v1/worker/deployments/log", Some(&request)).await?;
        }
        Ok(())
    }

    async fn finish(&self, lease: &LeasedDeployment, outcome: DeployOutcome) {
        let report = self.ticket_of_deployment(lease).map(|ticket| DeploymentReport { ticket, outcome });
        self.report("/api/v1/worker/deployments/finish", report, &format!("deployment {}", lease.number)).await;
        // The secrets go with the order.
        self.deployments.forget(lease.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_log_is_sent_in_pieces_cut_between_characters() {
        let text = "é".repeat(LOG_CHUNK);
        let parts = pieces(&text);
        assert!(parts.iter().all(|p| p.len() <= LOG_CHUNK));
        assert_eq!(parts.concat(), text);
    }
}
