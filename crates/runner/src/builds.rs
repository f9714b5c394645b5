//! The builder: leases queued builds, runs the pipeline's `build` command as
//! the built commit defines it, in the sandbox, on a fresh checkout; stores
//! the files that match `artifacts` and the container images its
//! `[[pipeline.image]]` tables name (OCI image layouts, checked whole) in
//! the blob store and signs SLSA provenance for them with the builder key:
//! an image's subject is its manifest, as container-image provenance has it.
//!
//! The build script never touches the blob store or the key: it runs in a
//! sandbox where neither exists. Only after it has exited does the builder
//! (outside the sandbox) look at what it left in the workspace, refusing
//! anything that is not a regular file inside it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use custody_domain::glob::Glob;
use custody_domain::pipeline;
use custody_domain::status::BuildStatus;
use custody_domain::Timestamp;
use custody_formats::oci::{self, CheckedImage};
use custody_formats::{BuildFacts, ServiceKey};
use custody_git::change as git;
use custody_store::{BuildOutcome, LeasedBuild, NewArtifact, Store};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::desk::{BuildDesk, Local};
use crate::sandbox::{self, Limits};
use crate::{script_environment, Job, JobKind};

/// How long a lease lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(30);
/// How often an idle builder looks for work when no wake-up came (only a
/// fallback: builds start from the event of their queueing).
const IDLE: Duration = Duration::from_secs(2);
/// The most files a build may leave in its workspace for collection.
const MAX_FILES: usize = 100_000;

/// What a builder needs.
#[derive(Clone)]
pub struct Builder<D = Local> {
    /// Where its builds come from and go.
    pub desk: D,
    /// The key that signs provenance: the instance's builder key, or a
    /// worker's own.
    pub key: Arc<ServiceKey>,
    /// This worker's name, unique among running workers.
    pub worker: String,
    /// The most any job may use, whatever its pipeline asks.
    pub ceiling: sandbox::Ceiling,
}

/// A worker name unique to this process: host, process id and boot id
/// (see [`crate::boot`]).
pub fn worker_name(boot: &str) -> String {
    format!("{}:{}:{boot}", crate::boot::host(), std::process::id())
}

impl<D: BuildDesk> Builder<D> {
    /// Runs builds until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        crate::work_until(&self, shutdown).await;
    }

    /// Builds while keeping the lease alive; `None` when the lease was lost
    /// (another worker owns the build now, and this one's work is dropped).
    async fn build_with_heartbeat(&self, lease: &LeasedBuild) -> Option<BuildOutcome> {
        let heartbeat = async {
            loop {
                tokio::time::sleep(LEASE / 3).await;
                match self.desk.heartbeat(lease, LEASE.as_millis() as i64).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => tracing::warn!(%error, build = lease.number, "heartbeat failed"),
                }
            }
        };
        tokio::select! {
            outcome = self.build(lease) => Some(outcome),
            () = heartbeat => {
                tracing::warn!(project = %lease.project, build = lease.number, "lost the lease of a build; dropping it");
                None
            }
        }
    }

    /// Runs one build to its outcome; every failure is an outcome with a
    /// reason, never a panic.
    pub async fn build(&self, lease: &LeasedBuild) -> BuildOutcome {
        let plan = match self.plan(lease).await {
            Prepared::Run(plan) => plan,
            Prepared::Skip(reason) => return stopped(BuildOutcome::default(), BuildStatus::Skipped, reason),
            Prepared::Fail(outcome) => return outcome,
        };
        let mut outcome = unfinished(&plan);
        let finished = match self.run_script(lease, &plan).await {
            Ok(finished) => finished,
            Err(error) => return stopped(outcome, BuildStatus::Error, error.to_string()),
        };
        outcome.exit_code = finished.exit_code.map(i64::from);
        if let Some(reason) = failure(&finished, &plan) {
            return stopped(outcome, BuildStatus::Failed, reason);
        }
        let found = match collect_artifacts(&plan).await {
            Ok(found) => found,
            Err((status, reason)) => return stopped(outcome, status, reason),
        };
        let images = match check_images(&plan, &found).await {
            Ok(images) => images,
            Err((status, reason)) => return stopped(outcome, status, reason),
        };
        let mut artifacts = match self.store_artifacts(lease, found).await {
            Ok(artifacts) => artifacts,
            Err(reason) => return stopped(outcome, BuildStatus::Error, reason),
        };
        match self.store_images(lease, images).await {
            Ok(manifests) => artifacts.extend(manifests),
            Err(reason) => return stopped(outcome, BuildStatus::Error, reason),
        }
        match self.provenance(lease, &plan, &artifacts) {
            Ok(provenance) => outcome.provenance = Some(provenance),
            Err(reason) => return stopped(outcome, BuildStatus::Error, reason),
        }
        outcome.status = BuildStatus::Succeeded;
        outcome.artifacts = artifacts;
        outcome
    }

    /// Prepares the leased build on a blocking thread: the pipeline as its commit defines it, checked out.
    async fn plan(&self, lease: &LeasedBuild) -> Prepared {
        let errored = |reason: String| Prepared::Fail(stopped(BuildOutcome::default(), BuildStatus::Error, reason));
        let repository = match self.desk.repository(lease).await {
            Ok(repository) => repository,
            Err(reason) => return errored(reason),
        };
        let commit = lease.commit.clone();
        match tokio::task::spawn_blocking(move || prepare(&repository, &commit)).await {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(message)) => errored(message),
            Err(_) => errored("preparing the build failed".into()),
        }
    }

    /// Runs the build command in the sandbox, streaming its output to the build's log.
    async fn run_script(&self, lease: &LeasedBuild, plan: &Plan) -> Result<sandbox::Finished, sandbox::SandboxError> {
        let build_id = lease.number.to_string();
        let job = Job { kind: JobKind::Build, project: &lease.project, commit: &lease.commit, build: &build_id };
        let env = script_environment(&job, Path::new("/work"));
        let (limits, notes) = Limits::within(plan.timeout, plan.network, &plan.resources, &self.ceiling);
        let (sender, receiver) = mpsc::unbounded_channel();
        if !notes.is_empty() {
            let _ = sender.send(notes.into_bytes());
        }
        let streaming = self.stream_log(lease, receiver);
        let running = sandbox::run_streaming(&plan.workspace, &plan.command, &env, &limits, Some(sender));
        let (finished, ()) = tokio::join!(running, streaming);
        finished
    }

    /// Stores each artifact in the blob store; the reason when one cannot be stored.
    async fn store_artifacts(
        &self,
        lease: &LeasedBuild,
        found: Vec<(String, PathBuf)>,
    ) -> Result<Vec<NewArtifact>, String> {
        let mut artifacts = Vec::with_capacity(found.len());
        for (name, path) in found {
            artifacts.push(self.desk.store_artifact(lease, &name, &path).await?);
        }
        Ok(artifacts)
    }

    /// Stores every blob of each checked image in the blob store, each
    /// re-hashed on its way: the image's manifest (or index) as the
    /// artifact `oci/NAME`, whose digest the provenance names; the blobs it
    /// reaches by digest alone, found again by walking from it.
    async fn store_images(
        &self,
        lease: &LeasedBuild,
        images: Vec<(String, FoundImage)>,
    ) -> Result<Vec<NewArtifact>, String> {
        let mut manifests = Vec::with_capacity(images.len());
        // A tar's unpacked directory goes once its blobs are stored.
        for (name, FoundImage { image, unpacked: _unpacked }) in images {
            let artifact = image_artifact(&name);
            for blob in &image.blobs {
                let top = blob.digest == image.top.digest;
                let shown = if top { artifact.clone() } else { format!("{artifact} blob {}", blob.digest) };
                let mut stored = self.desk.store_artifact(lease, &shown, &blob.path).await?;
                if Some(stored.digest.as_str()) != oci::sha256_hex(&blob.digest) {
                    return Err(format!("{shown} changed while it was stored (now sha256:{})", stored.digest));
                }
                if top {
                    stored.name = artifact.clone();
                    manifests.push(stored);
                }
            }
        }
        Ok(manifests)
    }

    /// The SLSA provenance of the build's artifacts, signed with the builder key, as JSON.
    fn provenance(&self, lease: &LeasedBuild, plan: &Plan, artifacts: &[NewArtifact]) -> Result<String, String> {
        let instance = self.desk.instance(lease);
        let facts = BuildFacts {
            artifacts: artifacts.iter().map(|a| (a.name.clone(), a.digest.clone())).collect(),
            instance: instance.clone(),
            project: lease.project.clone(),
            repository: format!("custody://{instance}/{}.git", lease.project),
            branch: lease.branch.clone(),
            commit: lease.commit.clone(),
            pipeline: (pipeline::PATH.to_owned(), plan.pipeline_digest.clone()),
            command: plan.command.clone(),
            script: plan.script.clone(),
            network: plan.network,
            builder_id: self.desk.builder_id(lease),
            builder_version: env!("CARGO_PKG_VERSION").to_owned(),
            invocation_id: custody_app::work::invocation_id(&instance, lease),
            started_on: Timestamp::from_millis(lease.started_at).to_string(),
            finished_on: Timestamp::from_millis(custody_store::now_ms()).to_string(),
        };
        let envelope = facts.statement().sign(&self.key).map_err(|e| format!("signing the provenance failed: {e}"))?;
        Ok(serde_json::to_string(&envelope).unwrap_or_default())
    }

    /// Writes the build's output to its log as it arrives, a batch at a time.
    async fn stream_log(&self, lease: &LeasedBuild, mut receiver: mpsc::UnboundedReceiver<Vec<u8>>) {
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let open = match tokio::time::timeout(Duration::from_millis(200), receiver.recv()).await {
                Ok(Some(chunk)) => {
                    pending.extend(chunk);
                    while let Ok(more) = receiver.try_recv() {
                        pending.extend(more);
                    }
                    true
                }
                Ok(None) => false,
                Err(_) => true,
            };
            // Send whole characters only; a split one waits for its rest.
            let cut = if open { utf8_boundary(&pending) } else { pending.len() };
            if cut > 0 {
                let text = String::from_utf8_lossy(&pending[..cut]).into_owned();
                pending.drain(..cut);
                if let Err(error) = self.desk.append_log(lease, text).await {
                    tracing::warn!(%error, build = lease.number, "writing a build's log");
                }
            }
            if !open {
                return;
            }
        }
    }
}

/// `outcome`, ended early with `status` for `reason`.
fn stopped(mut outcome: BuildOutcome, status: BuildStatus, reason: String) -> BuildOutcome {
    outcome.status = status;
    outcome.reason = Some(reason);
    outcome
}

/// The outcome of a build of `plan` that has not succeeded (yet): what it runs, and how.
fn unfinished(plan: &Plan) -> BuildOutcome {
    BuildOutcome {
        status: BuildStatus::Failed,
        command: Some(plan.command.clone()),
        network: Some(plan.network),
        pipeline_digest: Some(plan.pipeline_digest.clone()),
        script_digest: plan.script.as_ref().map(|(_, d)| d.clone()),
        ..BuildOutcome::default()
    }
}

/// Why a build command that ran failed, if it did: a limit, its timeout, or its exit.
fn failure(finished: &sandbox::Finished, plan: &Plan) -> Option<String> {
    if let Some(limit) = &finished.limit {
        return Some(format!("the build ran into {limit} and was stopped; see the log"));
    }
    if finished.timed_out {
        return Some(format!("the build ran past its timeout of {} and was killed", humanize(plan.timeout)));
    }
    match finished.exit_code {
        Some(0) => None,
        Some(code) => Some(format!("the build command `{}` exited with code {code}; see the log", plan.command)),
        None => Some(format!("the build command `{}` was killed by a signal; see the log", plan.command)),
    }
}

/// The artifacts the build left in its workspace, looked for on a blocking thread.
async fn collect_artifacts(plan: &Plan) -> Result<Vec<(String, PathBuf)>, (BuildStatus, String)> {
    let workspace = plan.workspace.path().to_path_buf();
    let globs = plan.artifacts.clone();
    match tokio::task::spawn_blocking(move || collect(&workspace, &globs)).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(reason)) => Err((BuildStatus::Failed, reason)),
        Err(_) => Err((BuildStatus::Error, "collecting the artifacts failed".into())),
    }
}

/// The artifact an image's manifest is recorded as: `oci/NAME`.
pub fn image_artifact(name: &str) -> String {
    format!("oci/{name}")
}

/// The images the build left in its workspace, each layout checked whole
/// on a blocking thread. An image's artifact name taken by a file
/// artifact fails the build.
async fn check_images(
    plan: &Plan,
    files: &[(String, PathBuf)],
) -> Result<Vec<(String, FoundImage)>, (BuildStatus, String)> {
    if let Some(taken) = plan.images.iter().find(|i| files.iter().any(|(f, _)| *f == image_artifact(&i.name))) {
        return Err((
            BuildStatus::Failed,
            format!(
                "the file {} is an artifact, but that name is image {:?}'s; rename one of them",
                image_artifact(&taken.name),
                taken.name
            ),
        ));
    }
    let workspace = plan.workspace.path().to_path_buf();
    let specs = plan.images.clone();
    let checked = tokio::task::spawn_blocking(move || {
        specs.into_iter().map(|spec| Ok((spec.name.clone(), check_image(&workspace, &spec)?))).collect()
    });
    match checked.await {
        Ok(Ok(images)) => Ok(images),
        Ok(Err(reason)) => Err((BuildStatus::Failed, reason)),
        Err(_) => Err((BuildStatus::Error, "checking the images failed".into())),
    }
}

/// An image checked whole, and the directory its tar was unpacked into
/// (kept until its blobs are stored), when it came as one.
pub struct FoundImage {
    /// The image.
    pub image: CheckedImage,
    /// Where a tar layout was unpacked.
    pub unpacked: Option<tempfile::TempDir>,
}

/// The most a tar layout may hold unpacked: 16 GiB in 100,000 entries.
const TAR_BYTES: u64 = 16 << 30;
const TAR_ENTRIES: usize = 100_000;

/// Unpacks a tar layout into a directory of the builder's own: regular
/// files and directories only, each inside it, within [`TAR_BYTES`] and
/// [`TAR_ENTRIES`]. Anything else (a link, a device, a path with `..` or a
/// leading `/`) fails it.
fn unpack(file: &Path, name: &str) -> Result<tempfile::TempDir, String> {
    let bad = |why: String| format!("image {name:?}: the tar layout {why}");
    let into = tempfile::Builder::new()
        .prefix("custody-image-")
        .tempdir()
        .map_err(|e| bad(format!("cannot be unpacked: {e}")))?;
    let opened = std::fs::File::open(file).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let mut archive = tar::Archive::new(opened);
    let (mut bytes, mut count) = (0u64, 0usize);
    for entry in archive.entries().map_err(|e| bad(format!("is not a tar: {e}")))? {
        let mut entry = entry.map_err(|e| bad(format!("is not a tar: {e}")))?;
        count += 1;
        if count > TAR_ENTRIES {
            return Err(bad(format!("holds more than {TAR_ENTRIES} entries")));
        }
        let path = entry.path().map_err(|e| bad(format!("names an unreadable path: {e}")))?.into_owned();
        let inside =
            path.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
        if !inside {
            return Err(bad(format!("holds {} outside itself", path.display())));
        }
        let target = into.path().join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => std::fs::create_dir_all(&target).map_err(|e| bad(e.to_string()))?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                bytes += entry.size();
                if bytes > TAR_BYTES {
                    return Err(bad(format!("holds more than {TAR_BYTES} bytes")));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| bad(e.to_string()))?;
                }
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| bad(format!("holds {} twice or in a bad place: {e}", path.display())))?;
                std::io::copy(&mut entry, &mut out).map_err(|e| bad(format!("cannot be unpacked: {e}")))?;
            }
            other => return Err(bad(format!("holds {} as a {other:?}; only files and directories", path.display()))),
        }
    }
    Ok(into)
}

/// One image's layout, reached without following a symbolic link (a
/// directory, or a tar of one unpacked by the builder), and checked whole.
pub fn check_image(workspace: &Path, spec: &pipeline::ImageSpec) -> Result<FoundImage, String> {
    let mut dir = workspace.to_path_buf();
    for part in Path::new(&spec.layout).components() {
        dir.push(part);
        let meta = std::fs::symlink_metadata(&dir).map_err(|_| {
            format!("image {:?}: the build left no layout at {} (the pipeline's `layout`)", spec.name, spec.layout)
        })?;
        if meta.file_type().is_symlink() {
            return Err(format!(
                "image {:?}: {} is reached through a symbolic link; a layout must lie in the workspace",
                spec.name, spec.layout
            ));
        }
    }
    let unpacked = if dir.is_dir() {
        None
    } else if dir.is_file() && spec.layout.ends_with(".tar") {
        let unpacked = unpack(&dir, &spec.name)?;
        dir = unpacked.path().to_path_buf();
        Some(unpacked)
    } else {
        return Err(format!(
            "image {:?}: {} is neither an OCI image layout directory nor a .tar of one",
            spec.name, spec.layout
        ));
    };
    let image = oci::check_layout(&dir).map_err(|e| format!("image {:?} at {}: {e}", spec.name, spec.layout))?;
    Ok(FoundImage { image, unpacked })
}

pub(crate) fn utf8_boundary(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(error) if error.error_len().is_none() => error.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs % 3600 == 0 && secs > 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 && secs > 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

struct Plan {
    workspace: sandbox::Workspace,
    command: String,
    network: bool,
    timeout: Duration,
    resources: pipeline::Resources,
    artifacts: Vec<Glob>,
    images: Vec<pipeline::ImageSpec>,
    pipeline_digest: String,
    script: Option<(String, String)>,
}

enum Prepared {
    Run(Plan),
    Skip(String),
    Fail(BuildOutcome),
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads the pipeline as the commit defines it and checks the commit out.
fn prepare(repository: &Path, commit: &str) -> Result<Prepared, String> {
    let failed = |e: custody_git::GitError| e.to_string();
    let Some(text) = git::read_file(repository, commit, pipeline::PATH).map_err(failed)? else {
        return Ok(Prepared::Skip(format!("{} does not exist at {commit}, so nothing is built", pipeline::PATH)));
    };
    let pipeline_digest = sha256_hex(text.as_bytes());
    let policy = match pipeline::parse(&text) {
        Ok(policy) => policy,
        Err(error) => {
            return Ok(Prepared::Fail(BuildOutcome {
                status: BuildStatus::Failed,
                reason: Some(format!("{error}; fix the pipeline file in a new change")),
                pipeline_digest: Some(pipeline_digest),
                ..BuildOutcome::default()
            }))
        }
    };
    let Some(command) = policy.build.clone() else {
        return Ok(Prepared::Skip(format!("{} at {commit} names no build command", pipeline::PATH)));
    };
    let workspace = sandbox::Workspace::new("build").map_err(|e| e.to_string())?;
    git::export_tree(repository, commit, workspace.path()).map_err(failed)?;
    for dir in [".home", ".tmp"] {
        if let Err(why) = workspace.fresh_dir(dir) {
            return Ok(Prepared::Fail(BuildOutcome {
                status: BuildStatus::Failed,
                reason: Some(why),
                command: Some(command),
                pipeline_digest: Some(pipeline_digest),
                ..BuildOutcome::default()
            }));
        }
    }
    // The script the command runs, when it is a file of the repository: its
    // digest goes into the provenance. A symbolic link on its path could
    // point anywhere on the host, so it is refused.
    let script_path = command.split_whitespace().next().unwrap_or_default().trim_start_matches("./").to_owned();
    let mut script = None;
    if !script_path.starts_with('/') && !script_path.split('/').any(|s| s == "..") {
        let mut prefix = workspace.path().to_path_buf();
        for part in Path::new(&script_path).components() {
            prefix.push(part);
            if std::fs::symlink_metadata(&prefix).is_ok_and(|m| m.file_type().is_symlink()) {
                return Ok(Prepared::Fail(BuildOutcome {
                    status: BuildStatus::Failed,
                    reason: Some(format!(
                        "{script_path} is reached through a symbolic link; a build script's path may not contain one"
                    )),
                    command: Some(command),
                    pipeline_digest: Some(pipeline_digest),
                    ..BuildOutcome::default()
                }));
            }
        }
        let path = workspace.path().join(&script_path);
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
            script = Some((script_path, sha256_hex(&bytes)));
        }
    }
    Ok(Prepared::Run(Plan {
        workspace,
        command,
        network: policy.network,
        timeout: policy.timeout,
        resources: policy.resources,
        artifacts: policy.artifacts.clone(),
        images: policy.images.clone(),
        pipeline_digest,
        script,
    }))
}

/// The files of the workspace that match `globs`: regular files only,
/// found without following any symbolic link. A match that is a link, or
/// anything but a regular file, fails the whole build: nothing is stored.
pub fn collect(workspace: &Path, globs: &[Glob]) -> Result<Vec<(String, PathBuf)>, String> {
    if globs.is_empty() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut seen = 0usize;
    while let Some(relative) = stack.pop() {
        let dir = workspace.join(&relative);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| format!("reading {}: {e}", relative.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("reading {}: {e}", relative.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            seen += 1;
            if seen > MAX_FILES {
                return Err(format!("the workspace holds more than {MAX_FILES} files; build fewer or clean up"));
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(format!("a file name in {} is not UTF-8", relative.display()));
            };
            let path = relative.join(&name);
            let text = path.to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(entry.path()).map_err(|e| format!("reading {text}: {e}"))?;
            let matched = globs.iter().any(|g| g.matches(&text));
            if meta.file_type().is_symlink() {
                if matched {
                    return Err(format!(
                        "{text} matches `artifacts` but is a symbolic link; only regular files inside the workspace \
                         are artifacts, so nothing was stored"
                    ));
                }
                continue;
            }
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if !matched {
                continue;
            }
            if !meta.is_file() {
                return Err(format!("{text} matches `artifacts` but is not a regular file; nothing was stored"));
            }
            found.push((text, entry.path()));
        }
    }
    found.sort();
    if found.is_empty() {
        let patterns: Vec<&str> = globs.iter().map(Glob::as_str).collect();
        return Err(format!("the build succeeded but no file matches artifacts = {patterns:?}"));
    }
    Ok(found)
}

impl<D: BuildDesk> crate::Worker for Builder<D> {
    type Lease = LeasedBuild;
    type Outcome = BuildOutcome;
    const KIND: &'static str = "build";
    const IDLE: Duration = IDLE;

    fn store(&self) -> Option<&Store> {
        self.desk.store()
    }

    async fn lease(&self) -> Result<Option<LeasedBuild>, String> {
        self.desk.lease(&self.worker, LEASE.as_millis() as i64).await
    }

    async fn work(&self, lease: &LeasedBuild) -> Option<BuildOutcome> {
        tracing::info!(project = %lease.project, build = lease.number, commit = %lease.commit, attempt = lease.attempt, "build started");
        self.build_with_heartbeat(lease).await
    }

    async fn record(&self, lease: &LeasedBuild, outcome: BuildOutcome) {
        tracing::info!(project = %lease.project, build = lease.number, status = %outcome.status, "build finished");
        self.desk.finish(lease, outcome).await;
    }

    async fn interrupted(&self, lease: &LeasedBuild) {
        // Another worker takes the build again.
        self.desk.requeue(lease).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(patterns: &[&str]) -> Vec<Glob> {
        patterns.iter().map(|p| Glob::parse(p).unwrap()).collect()
    }

    #[test]
    fn regular_files_matching_the_globs_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dist/sub")).unwrap();
        std::fs::write(dir.path().join("dist/app.tar.gz"), "app").unwrap();
        std::fs::write(dir.path().join("dist/sub/lib.tar.gz"), "lib").unwrap();
        std::fs::write(dir.path().join("README"), "no").unwrap();
        let found = collect(dir.path(), &globs(&["dist/**/*.tar.gz"])).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dist/app.tar.gz", "dist/sub/lib.tar.gz"]);
    }

    #[test]
    fn an_artifact_that_is_a_symlink_to_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("builder.pem"), "PRIVATE").unwrap();
        std::fs::create_dir(dir.path().join("dist")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("builder.pem"), dir.path().join("dist/app.tar.gz")).unwrap();
        let error = collect(dir.path(), &globs(&["dist/*.tar.gz"])).unwrap_err();
        assert!(error.contains("dist/app.tar.gz") && error.contains("symbolic link"), "{error}");
    }

    #[test]
    fn a_symlinked_directory_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.tar.gz"), "PRIVATE").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("dist")).unwrap();
        let error = collect(dir.path(), &globs(&["dist/"])).unwrap_err();
        assert!(error.contains("symbolic link"), "{error}");
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/real.tar.gz"), "real").unwrap();
        let found = collect(dir.path(), &globs(&["*.tar.gz"])).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "out/real.tar.gz");
    }

    #[test]
    fn globs_cannot_reach_outside_the_workspace() {
        assert!(Glob::parse("../keys/*").is_err());
        assert!(Glob::parse("dist/../../keys/builder.pem").is_err());
        // An absolute pattern is anchored at the workspace, not the host's root.
        let dir = tempfile::tempdir().unwrap();
        let error = collect(dir.path(), &globs(&["/etc/passwd"])).unwrap_err();
        assert!(error.contains("no file matches"), "{error}");
    }
}
