//! Where a worker's jobs come from and where its reports go.
//!
//! A builder and a deployer run every job the same way wherever they run;
//! only their desk differs. In the server's process (or a `custody worker`
//! beside it on the same data directory) the desk is the instance itself:
//! the database, the repositories and the blob store ([`Local`],
//! [`LocalDeploys`]). A worker that shares nothing with the server has a
//! desk that reaches it over its API and git's smart HTTP, outside this
//! crate, which knows nothing of HTTP.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use custody_app::work::PreparedDeployment;
use custody_blobs::Blobs;
use custody_domain::ProjectName;
use custody_formats::sealed::SealingKey;
use custody_formats::ServiceKey;
use custody_git::Repositories;
use custody_store::{BuildOutcome, DeployOutcome, Heartbeat, LeasedBuild, LeasedDeployment, NewArtifact, Store};

/// Where builds come from and go.
pub trait BuildDesk: Send + Sync + 'static {
    /// The database, when this desk is the instance itself: its commits
    /// wake an idle worker at once.
    fn store(&self) -> Option<&Store>;
    /// Leases the next build for `worker`, held for `lease_ms` without a heartbeat.
    fn lease(&self, worker: &str, lease_ms: i64) -> impl Future<Output = Result<Option<LeasedBuild>, String>> + Send;
    /// The instance's name, which the build's provenance names.
    fn instance(&self, lease: &LeasedBuild) -> String;
    /// The builder id the build's provenance names.
    fn builder_id(&self, lease: &LeasedBuild) -> String;
    /// A repository holding the lease's commit.
    fn repository(&self, lease: &LeasedBuild) -> impl Future<Output = Result<PathBuf, String>> + Send;
    /// Renews the lease; `false` when it is lost.
    fn heartbeat(&self, lease: &LeasedBuild, lease_ms: i64) -> impl Future<Output = Result<bool, String>> + Send;
    /// Appends output to the build's log.
    fn append_log(&self, lease: &LeasedBuild, text: String) -> impl Future<Output = Result<(), String>> + Send;
    /// Stores an artifact (the file at `path`) in the artifact repository.
    fn store_artifact(
        &self,
        lease: &LeasedBuild,
        name: &str,
        path: &Path,
    ) -> impl Future<Output = Result<NewArtifact, String>> + Send;
    /// Records how the build ended, and what follows from it.
    fn finish(&self, lease: &LeasedBuild, outcome: BuildOutcome) -> impl Future<Output = ()> + Send;
    /// Puts the build back in the queue: this worker is stopping.
    fn requeue(&self, lease: &LeasedBuild) -> impl Future<Output = ()> + Send;
}

/// Where deployments come from and go.
pub trait DeployDesk: Send + Sync + 'static {
    /// The database, when this desk is the instance itself.
    fn store(&self) -> Option<&Store>;
    /// Leases the next deployment for `worker`.
    fn lease(
        &self,
        worker: &str,
        lease_ms: i64,
    ) -> impl Future<Output = Result<Option<LeasedDeployment>, String>> + Send;
    /// What the leased deployment's script gets and its attestation records,
    /// its build's provenance checked.
    fn prepare(&self, lease: &LeasedDeployment) -> impl Future<Output = Result<PreparedDeployment, String>> + Send;
    /// A repository holding the lease's commit.
    fn repository(&self, lease: &LeasedDeployment) -> impl Future<Output = Result<PathBuf, String>> + Send;
    /// Writes the build's artifacts under `dir`, each re-hashed on its way.
    fn place_artifacts(&self, lease: &LeasedDeployment, dir: &Path) -> impl Future<Output = Result<(), String>> + Send;
    /// Renews the lease, and brings a cancel.
    fn heartbeat(
        &self,
        lease: &LeasedDeployment,
        lease_ms: i64,
    ) -> impl Future<Output = Result<Heartbeat, String>> + Send;
    /// Appends output, its secrets redacted, to the running deployment's log.
    fn append_log(&self, lease: &LeasedDeployment, text: String) -> impl Future<Output = Result<(), String>> + Send;
    /// Records how the deployment ended, and what follows from it.
    fn finish(&self, lease: &LeasedDeployment, outcome: DeployOutcome) -> impl Future<Output = ()> + Send;
}

/// The instance itself, for a worker in the server's process or beside it
/// on the same data directory.
#[derive(Clone)]
pub struct Local {
    /// The database.
    pub store: Store,
    /// The git repositories.
    pub repositories: Repositories,
    /// The artifact repository.
    pub blobs: Blobs,
    /// The instance's name.
    pub instance: String,
}

impl Local {
    fn repository_of(&self, project: &str) -> Result<PathBuf, String> {
        let project = ProjectName::parse(project).map_err(|_| format!("project name {project:?} is not valid"))?;
        Ok(self.repositories.path(&project))
    }
}

impl BuildDesk for Local {
    fn store(&self) -> Option<&Store> {
        Some(&self.store)
    }

    async fn lease(&self, worker: &str, lease_ms: i64) -> Result<Option<LeasedBuild>, String> {
        self.store.lease_build(worker, lease_ms).await.map_err(|e| e.to_string())
    }

    fn instance(&self, _: &LeasedBuild) -> String {
        self.instance.clone()
    }

    fn builder_id(&self, _: &LeasedBuild) -> String {
        format!("custody://{}/builder", self.instance)
    }

    async fn repository(&self, lease: &LeasedBuild) -> Result<PathBuf, String> {
        self.repository_of(&lease.project)
    }

    async fn heartbeat(&self, lease: &LeasedBuild, lease_ms: i64) -> Result<bool, String> {
        self.store.heartbeat_build(lease, lease_ms).await.map_err(|e| e.to_string())
    }

    async fn append_log(&self, lease: &LeasedBuild, text: String) -> Result<(), String> {
        self.store.append_build_log(lease, text).await.map_err(|e| e.to_string())
    }

    async fn store_artifact(&self, _: &LeasedBuild, name: &str, path: &Path) -> Result<NewArtifact, String> {
        let stored =
            self.blobs.ingest(path).await.map_err(|error| format!("storing artifact {name} failed: {error}"))?;
        Ok(NewArtifact { name: name.to_owned(), digest: stored.digest.to_string(), size: stored.size as i64 })
    }

    async fn finish(&self, lease: &LeasedBuild, outcome: BuildOutcome) {
        let recorded = custody_app::work::record_build(&self.store, &self.repositories, lease, outcome).await;
        if let Err(error) = recorded {
            tracing::error!(%error, build = lease.number, "recording a build");
        }
    }

    async fn requeue(&self, lease: &LeasedBuild) {
        if let Err(error) = self.store.requeue_build(lease).await {
            tracing::error!(%error, build = lease.number, "requeueing a build");
        }
    }
}

/// The instance itself, for deployments: with the key that opens the
/// environments' secrets and the builder key provenance is checked against.
#[derive(Clone)]
pub struct LocalDeploys {
    /// The database, repositories and artifacts.
    pub local: Local,
    /// The key that seals environment secrets.
    pub sealing: Arc<SealingKey>,
    /// The builder key (its public half): provenance is checked against
    /// it, a builder key it replaced, or a worker's, each valid when the
    /// build finished.
    pub builder: Arc<ServiceKey>,
}

impl DeployDesk for LocalDeploys {
    fn store(&self) -> Option<&Store> {
        Some(&self.local.store)
    }

    async fn lease(&self, worker: &str, lease_ms: i64) -> Result<Option<LeasedDeployment>, String> {
        self.local.store.lease_deployment(worker, lease_ms).await.map_err(|e| e.to_string())
    }

    async fn prepare(&self, lease: &LeasedDeployment) -> Result<PreparedDeployment, String> {
        let local = &self.local;
        custody_app::work::prepare_deployment(
            &local.store,
            &local.repositories,
            &self.sealing,
            &self.builder.public(),
            lease,
        )
        .await
    }

    async fn repository(&self, lease: &LeasedDeployment) -> Result<PathBuf, String> {
        self.local.repository_of(&lease.project)
    }

    async fn place_artifacts(&self, lease: &LeasedDeployment, dir: &Path) -> Result<(), String> {
        for (name, digest) in &lease.artifacts {
            let target = crate::deploys::artifact_path(dir, name).await?;
            let parsed = digest.parse().map_err(|_| format!("artifact {name} has no valid digest"))?;
            self.local
                .blobs
                .copy_to_file(&parsed, &target)
                .await
                .map_err(|error| format!("artifact {name} could not be verified: {error}"))?;
        }
        Ok(())
    }

    async fn heartbeat(&self, lease: &LeasedDeployment, lease_ms: i64) -> Result<Heartbeat, String> {
        self.local.store.heartbeat_deployment(lease, lease_ms).await.map_err(|e| e.to_string())
    }

    async fn append_log(&self, lease: &LeasedDeployment, text: String) -> Result<(), String> {
        self.local.store.append_deployment_log(lease, text).await.map_err(|e| e.to_string())
    }

    async fn finish(&self, lease: &LeasedDeployment, outcome: DeployOutcome) {
        let local = &self.local;
        let recorded = custody_app::work::record_deployment(&local.store, &local.repositories, lease, outcome).await;
        if let Err(error) = recorded {
            tracing::error!(%error, deployment = lease.number, "recording a deployment");
        }
    }
}
