//! The API of workers that share nothing with the server.
//!
//! Such a worker holds no database URL, no data directory and no service
//! key of the instance. It calls the server with a credential of its own
//! (`custody-worker.NAME.SECRET`, whose SHA-256 its registration grant
//! recorded), leases builds or deployments, fetches their commit over
//! git's smart HTTP, streams its log, uploads artifacts and reports
//! outcomes signed with its own key, registered as one more key of its
//! role. A revoked worker is refused at once, whatever it holds.
//!
//! Each order carries a ticket: the lease (and, for a deployment, the facts
//! its attestation must record) sealed with the instance's secrets key and
//! bound to the worker's name. Every report presents it, so the server
//! holds the worker to what it leased it without keeping anything in
//! memory, and any server of the instance accepts it.

use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use custody_api::{
    BuildLogRequest, BuildOrder, BuildReportRequest, DeployOrder, DeploymentFacts, DeploymentReport, Heartbeat,
    LeaseHeld, LeasedBuild, LeasedDeployment, NewArtifact, RegisterWorkerRequest, SecretValue, TicketRequest,
    WorkerView, TICKET_HEADER, WORKER_CREDENTIAL_PREFIX,
};
use custody_domain::status::DeploymentStatus;
use custody_domain::GrantAction;
use custody_formats::{KeyRole, PublicKey};
use custody_store::{GrantView, RegisteredWorker};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::auth::{Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// How long a job's lease lasts without a heartbeat (as for the server's own workers).
const LEASE_MS: i64 = 30_000;
/// How long a lease request waits for a job before answering that none waits.
const LEASE_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting lease request looks again when no wake-up came
/// (another server of the instance may have queued the job).
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// A registered worker, authenticated by its credential.
pub(crate) struct WorkerAuth {
    worker: RegisteredWorker,
    key: PublicKey,
}

impl WorkerAuth {
    /// The name its leases are held under.
    pub(crate) fn lease_name(&self) -> String {
        lease_name(&self.worker.name)
    }

    /// Refuses unless its key signs as `role`.
    fn require(&self, role: KeyRole) -> ApiResult<()> {
        if self.worker.role == role {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "worker {} was registered to sign as a {}; only a {} worker takes these jobs",
                self.worker.name,
                self.worker.role.as_str(),
                role.as_str()
            )))
        }
    }
}

/// The name a registered worker's leases are held under.
pub(crate) fn lease_name(worker: &str) -> String {
    format!("worker/{worker}")
}

/// The registered worker a credential names, if it is one of a worker not
/// revoked: `None` for a credential that is not a worker's at all.
pub(crate) async fn authenticate_worker(state: &AppState, token: &str) -> Option<ApiResult<WorkerAuth>> {
    let rest = token.strip_prefix(WORKER_CREDENTIAL_PREFIX)?;
    Some(authenticate(state, rest).await)
}

async fn authenticate(state: &AppState, rest: &str) -> ApiResult<WorkerAuth> {
    let unknown =
        || ApiError::unauthenticated("unknown worker credential: register the worker (`custody worker register`)");
    let (name, secret) = rest.split_once('.').ok_or_else(unknown)?;
    let history = state.store().key_history().await?;
    let worker =
        custody_store::registered_workers(&history).into_iter().find(|w| w.name == name).ok_or_else(unknown)?;
    let presented = hex::encode(Sha256::digest(secret.as_bytes()));
    if !same(presented.as_bytes(), worker.credential.as_bytes()) {
        return Err(unknown());
    }
    if let Some((since, reason)) = &worker.revoked {
        return Err(ApiError::unauthenticated(format!(
            "worker {name}'s key was revoked (since {}: {reason}); nothing it sends is accepted",
            custody_formats::trust::rfc3339_of_millis(*since)
        )));
    }
    let key = PublicKey::from_pem(worker.role, &worker.key.public_key)
        .map_err(|e| ApiError::internal(format!("worker {name}'s recorded key does not read: {e}")))?;
    Ok(WorkerAuth { worker, key })
}

/// Compares two byte strings in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl FromRequestParts<AppState> for WorkerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = crate::auth::presented_token(parts)?.unwrap_or_default();
        match authenticate_worker(state, &token).await {
            Some(found) => found,
            None => Err(ApiError::unauthenticated(
                "this needs a worker's credential: `Authorization: Bearer custody-worker.NAME.SECRET`",
            )),
        }
    }
}

/// What a deployment's ticket seals: its lease and the facts its attestation records.
#[derive(Serialize, Deserialize)]
struct DeployTicket {
    lease: LeasedDeployment,
    facts: DeploymentFacts,
}

fn slot(kind: &str, worker: &WorkerAuth) -> String {
    format!("worker-ticket/{kind}/{}", worker.worker.name)
}

fn seal<T: Serialize>(state: &AppState, kind: &str, worker: &WorkerAuth, value: &T) -> ApiResult<String> {
    let bytes = serde_json::to_vec(value).map_err(|e| ApiError::internal(e.to_string()))?;
    let sealed = state.sealing_key().seal(&slot(kind, worker), &bytes);
    Ok(format!("{}.{}", sealed.nonce, sealed.ciphertext))
}

fn open<T: for<'de> Deserialize<'de>>(state: &AppState, kind: &str, worker: &WorkerAuth, ticket: &str) -> ApiResult<T> {
    let refused =
        || ApiError::forbidden(format!("this ticket was not issued to worker {} for a {kind}", worker.worker.name));
    let (nonce, ciphertext) = ticket.split_once('.').ok_or_else(refused)?;
    let sealed = custody_formats::sealed::Sealed { nonce: nonce.to_owned(), ciphertext: ciphertext.to_owned() };
    let bytes = state.sealing_key().open(&slot(kind, worker), &sealed).ok_or_else(refused)?;
    serde_json::from_slice(&bytes).map_err(|_| refused())
}

fn lost(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("this worker no longer holds the {what}: its lease ran out and another worker may hold it; drop it"),
    )
}

/// Waits for a job: `lease` until it finds one or [`LEASE_WAIT`] passes.
async fn wait_for<T, F, Fut>(state: &AppState, mut lease: F) -> ApiResult<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ApiResult<Option<T>>>,
{
    let deadline = Instant::now() + LEASE_WAIT;
    loop {
        let woken = state.store().jobs_queued();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(found) = lease().await? {
            return Ok(Some(found));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        tokio::select! {
            () = woken => {}
            () = tokio::time::sleep(left.min(LOOK_AGAIN)) => {}
        }
    }
}

/// A builder worker leases the next build: 200 with its order, or 204 when
/// none waited within ten seconds (ask again).
#[utoipa::path(post, path = "/api/v1/worker/builds/lease", tag = "workers", security(("token" = [])),
    responses((status = 200, body = BuildOrder), (status = 204, description = "No build is waiting"),
        (status = 401, body = custody_api::ErrorBody), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn lease_build(State(state): State<AppState>, worker: WorkerAuth) -> ApiResult<Response> {
    worker.require(KeyRole::Builder)?;
    let name = worker.lease_name();
    let found = wait_for(&state, || async { Ok(state.store().lease_build(&name, LEASE_MS).await?) }).await?;
    let Some(lease) = found else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    tracing::info!(worker = %worker.worker.name, project = %lease.project, build = lease.number, "a worker leased a build");
    let ticket = seal(&state, "build", &worker, &lease)?;
    Ok(Json(BuildOrder { lease, instance: state.instance().to_owned(), ticket }).into_response())
}

/// Keeps a leased build's lease alive: `held` false when it is lost.
#[utoipa::path(post, path = "/api/v1/worker/builds/heartbeat", tag = "workers", security(("token" = [])),
    request_body = TicketRequest,
    responses((status = 200, body = LeaseHeld), (status = 401, body = custody_api::ErrorBody), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn build_heartbeat(
    State(state): State<AppState>,
    worker: WorkerAuth,
    Body(request): Body<TicketRequest>,
) -> ApiResult<Json<LeaseHeld>> {
    let lease: LeasedBuild = open(&state, "build", &worker, &request.ticket)?;
    Ok(Json(LeaseHeld { held: state.store().heartbeat_build(&lease, LEASE_MS).await? }))
}

/// Appends a running build's output to its log.
#[utoipa::path(post, path = "/api/v1/worker/builds/log", tag = "workers", security(("token" = [])),
    request_body = BuildLogRequest,
    responses((status = 204, description = "Appended"), (status = 401, body = custody_api::ErrorBody), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn build_log(
    State(state): State<AppState>,
    worker: WorkerAuth,
    Body(request): Body<BuildLogRequest>,
) -> ApiResult<StatusCode> {
    let lease: LeasedBuild = open(&state, "build", &worker, &request.ticket)?;
    // Appended only while this worker holds the lease.
    state.store().append_build_log(&lease, request.text).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The name of an artifact being uploaded.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ArtifactName {
    /// Its path in the build's workspace.
    name: String,
}

/// Stores one artifact of a leased build in the artifact repository: the
/// body's bytes, hashed as they arrive. Answers with its digest and size,
/// which the worker's provenance must name.
#[utoipa::path(put, path = "/api/v1/worker/builds/artifacts", tag = "workers", security(("token" = [])),
    params(ArtifactName, ("custody-ticket" = String, Header, description = "The ticket of the build's order")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = NewArtifact), (status = 401, body = custody_api::ErrorBody),
        (status = 409, body = custody_api::ErrorBody), (status = 413, body = custody_api::ErrorBody)))]
pub(crate) async fn upload_artifact(
    State(state): State<AppState>,
    worker: WorkerAuth,
    Query(query): Query<ArtifactName>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<NewArtifact>)> {
    let lease: LeasedBuild = open(&state, "build", &worker, ticket_of(&headers)?)?;
    custody_app::work::check_artifact_name(&query.name).map_err(ApiError::invalid)?;
    if !state.store().heartbeat_build(&lease, LEASE_MS).await? {
        return Err(lost("build"));
    }
    let limit = state.max_push_bytes();
    let file = tempfile::NamedTempFile::new().map_err(|e| ApiError::internal(format!("a temporary file: {e}")))?;
    let mut out = tokio::fs::File::from_std(file.reopen().map_err(|e| ApiError::internal(e.to_string()))?);
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    while let Some(chunk) =
        stream.try_next().await.map_err(|e| ApiError::invalid(format!("the upload broke off: {e}")))?
    {
        written += chunk.len() as u64;
        if written > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("an artifact may be at most {limit} bytes (the instance's --max-push-bytes)"),
            ));
        }
        out.write_all(&chunk).await.map_err(|e| ApiError::internal(e.to_string()))?;
    }
    out.flush().await.map_err(|e| ApiError::internal(e.to_string()))?;
    drop(out);
    let stored = state
        .blobs()
        .ingest(file.path())
        .await
        .map_err(|e| ApiError::internal(format!("storing artifact {} failed: {e}", query.name)))?;
    let artifact = NewArtifact { name: query.name, digest: stored.digest.to_string(), size: stored.size as i64 };
    Ok((StatusCode::CREATED, Json(artifact)))
}

fn ticket_of(headers: &HeaderMap) -> ApiResult<&str> {
    headers
        .get(TICKET_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::invalid(format!("send the order's ticket in the {TICKET_HEADER} header")))
}

/// Reports how a leased build ended. A success carries provenance the
/// worker's own key signed, of exactly the artifacts it uploaded, for the
/// leased commit and attempt; anything else is refused and nothing is
/// recorded (the lease runs out and another worker builds it).
#[utoipa::path(post, path = "/api/v1/worker/builds/finish", tag = "workers", security(("token" = [])),
    request_body = BuildReportRequest,
    responses((status = 204, description = "Recorded"), (status = 401, body = custody_api::ErrorBody),
        (status = 409, body = custody_api::ErrorBody), (status = 422, body = custody_api::ErrorBody)))]
pub(crate) async fn finish_build(
    State(state): State<AppState>,
    worker: WorkerAuth,
    Body(report): Body<BuildReportRequest>,
) -> ApiResult<StatusCode> {
    let lease: LeasedBuild = open(&state, "build", &worker, &report.ticket)?;
    let outcome = report.outcome;
    custody_app::work::check_build_report(state.instance(), &lease, &outcome, &worker.key).map_err(|why| {
        tracing::warn!(worker = %worker.worker.name, build = lease.number, %why, "refused a worker's build report");
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_report",
            format!("build {} not recorded: {why}", lease.number),
        )
    })?;
    for artifact in &outcome.artifacts {
        let digest: custody_blobs::Digest = artifact
            .digest
            .parse()
            .map_err(|_| ApiError::invalid(format!("artifact {} has no valid digest", artifact.name)))?;
        let size = state.blobs().size(&digest).await.map_err(|e| ApiError::internal(e.to_string()))?;
        if size != u64::try_from(artifact.size).ok() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_report",
                format!("artifact {} (sha256:{}) was not uploaded with that size", artifact.name, artifact.digest),
            ));
        }
    }
    // Recorded only while this worker holds the lease.
    custody_app::work::record_build(state.store(), state.hosting().repositories(), &lease, outcome).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Puts a leased build back in the queue: the worker is stopping.
#[utoipa::path(post, path = "/api/v1/worker/builds/requeue", tag = "workers", security(("token" = [])),
    request_body = TicketRequest,
    responses((status = 204, description = "Queued again"), (status = 401, body = custody_api::ErrorBody)))]
pub(crate) async fn requeue_build(
    State(state): State<AppState>,
    worker: WorkerAuth,
    Body(request): Body<TicketRequest>,
) -> ApiResult<StatusCode> {
    let lease: LeasedBuild = open(&state, "build", &worker, &request.ticket)?;
    state.store().requeue_build(&lease).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A deployer worker leases the next deployment: 200 with its order (its
/// build's provenance checked, the facts its attestation records, and the
/// environment's secrets for this one job), or 204 when none waited.
#[utoipa::path(post, path = "/api/v1/worker/deployments/lease", tag = "workers", security(("token" = [])),
    responses((status = 200, body = DeployOrder), (status = 204, description = "No deployment is waiting"),
        (status = 401, body = custody_api::ErrorBody), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn lease_deployment(State(state): State<AppState>, worker: WorkerAuth) -> ApiResult<Response> {
    worker.require(KeyRole::Deployer)?;
    let builder = state
        .key(KeyRole::Builder)
        .map(custody_formats::ServiceKey::public)
        .ok_or_else(|| ApiError::internal("this server holds no builder key to check provenance against"))?;
    let name = worker.lease_name();
    let found = wait_for(&state, || async {
        let Some(lease) = state.store().lease_deployment(&name, LEASE_MS).await? else { return Ok(None) };
        let (store, repositories) = (state.store(), state.hosting().repositories());
        match custody_app::work::prepare_deployment(store, repositories, state.sealing_key(), &builder, &lease).await {
            Ok(prepared) => Ok(Some((lease, prepared))),
            Err(reason) => {
                // Nothing to hand over: the deployment fails here, saying why.
                let failed = custody_api::DeployOutcome {
                    status: DeploymentStatus::Failed,
                    reason: Some(reason),
                    ..Default::default()
                };
                store.finish_deployment(&lease, failed).await?;
                Ok(None)
            }
        }
    })
    .await?;
    let Some((lease, prepared)) = found else { return Ok(StatusCode::NO_CONTENT.into_response()) };
    tracing::info!(worker = %worker.worker.name, project = %lease.project, deployment = lease.number, "a worker leased a deployment");
    let ticket =
        seal(&state, "deployment", &worker, &DeployTicket { lease: lease.clone(), facts: prepared.facts.clone() })?;
    let secrets = prepared.secrets.into_iter().map(|(name, value)| SecretValue { name, value }).collect();
    Ok(Json(DeployOrder { lease, facts: prepared.facts, secrets, ticket }).into_response())
}

/// Keeps a leased deployment's lease alive, and brings a cancel.
#[utoipa::path(post, path = "/api/v1/worker/deployments/heartbeat", tag = "workers", security(("token" = [])),
    request_body = TicketRequest,
    responses((status = 200, body = Heartbeat), (status = 401, body = custody_api::ErrorBody), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn deployment_heartbeat(
    State(state): State<AppState>,
    worker: WorkerAuth,
    Body(request): Body<TicketRequest>,
) -> ApiResult<Json<Heartbeat>> {
    let ticket: DeployTicket = open(&state, "deployment", &worker, &request.ticket)?;
    Ok(Json(state.store().heartbeat_deployment(&ticket.lease, LEASE_MS).await?))
}

/// Appends a running deployment's output, its secrets redacted by the
/// deployer, to its log.
#[utoipa::path(post, path = "/api/v1/worker/deployments/log", tag = "workers", security(("token" = [])),
    request_body = BuildLogRequest,
    responses((status = 204, description = "Appended"), (status = 401, body = custody_api::ErrorBody), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn deployment_log(
    State(state): State<AppState>,
    worker: WorkerAuth,
    Body(request): Body<BuildLogRequest>,
) -> ApiResult<StatusCode> {
    let ticket: DeployTicket = open(&state, "deployment", &worker, &request.ticket)?;
    // Appended only while this worker holds the lease.
    state.store().append_deployment_log(&ticket.lease, request.text).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An artifact of a leased deployment's build, by digest.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct DigestPath {
    /// Its sha256, hex.
    #[param(pattern = "^[0-9a-f]{64}$")]
    digest: String,
}

/// The bytes of one artifact of the leased deployment's build, re-hashed
/// while they are sent.
#[utoipa::path(get, path = "/api/v1/worker/deployments/artifacts/{digest}", tag = "workers", security(("token" = [])),
    params(DigestPath, ("custody-ticket" = String, Header, description = "The ticket of the deployment's order")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401, body = custody_api::ErrorBody), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn deployment_artifact(
    State(state): State<AppState>,
    worker: WorkerAuth,
    crate::api::PathParam(digest): crate::api::PathParam<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let ticket: DeployTicket = open(&state, "deployment", &worker, ticket_of(&headers)?)?;
    let Some((name, _)) = ticket.lease.artifacts.iter().find(|(_, d)| *d == digest) else {
        return Err(ApiError::not_found(format!("sha256:{digest} is no artifact of build {}", ticket.lease.build)));
    };
    crate::api::builds::send_blob(&state, &digest, name).await
}

/// Reports how a leased deployment ended, with its attestation signed by
/// the worker's own key saying exactly what custody leased it.
#[utoipa::path(post, path = "/api/v1/worker/deployments/finish", tag = "workers", security(("token" = [])),
    request_body = DeploymentReport,
    responses((status = 204, description = "Recorded"), (status = 401, body = custody_api::ErrorBody),
        (status = 409, body = custody_api::ErrorBody), (status = 422, body = custody_api::ErrorBody)))]
pub(crate) async fn finish_deployment(
    State(state): State<AppState>,
    worker: WorkerAuth,
    Body(report): Body<DeploymentReport>,
) -> ApiResult<StatusCode> {
    let DeployTicket { lease, facts } = open(&state, "deployment", &worker, &report.ticket)?;
    let outcome = report.outcome;
    custody_app::work::check_deploy_report(&lease, &facts, &outcome, &worker.key).map_err(|why| {
        tracing::warn!(worker = %worker.worker.name, deployment = lease.number, %why, "refused a worker's deployment report");
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_report",
            format!("deployment {} not recorded: {why}", lease.number),
        )
    })?;
    custody_app::work::record_deployment(state.store(), state.hosting().repositories(), &lease, outcome).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An admin asks to register a worker that shares nothing with the server:
/// a grant, applied once a second admin approves. From then on its key is
/// one more key of its role in the trust root, and its credential calls
/// the workers' API.
#[utoipa::path(post, path = "/api/v1/workers", tag = "workers", security(("token" = [])),
    request_body = RegisterWorkerRequest,
    responses((status = 202, body = GrantView), (status = 400, body = custody_api::ErrorBody), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn register_worker(
    State(state): State<AppState>,
    auth: Auth,
    Body(request): Body<RegisterWorkerRequest>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    if let Some(problem) = custody_domain::grant::worker_problem(&request.name, &request.role) {
        return Err(ApiError::invalid(problem));
    }
    let action = GrantAction::RegisterWorker {
        name: request.name,
        role: request.role,
        public_key: request.public_key,
        credential_sha256: request.credential_sha256,
    };
    crate::api::grant_requested(&state, &auth, action).await
}

/// The registered workers, with their keys and revocations.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers", security(("token" = [])),
    responses((status = 200, body = Vec<WorkerView>), (status = 401, body = custody_api::ErrorBody), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn list_workers(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Vec<WorkerView>>> {
    auth.require_overseer()?;
    let history = state.store().key_history().await?;
    let workers = custody_store::registered_workers(&history)
        .into_iter()
        .map(|w| WorkerView {
            name: w.name,
            role: w.role.as_str().to_owned(),
            key_id: w.key.key_id,
            revoked: w
                .revoked
                .map(|(since, reason)| format!("{} ({reason})", custody_formats::trust::rfc3339_of_millis(since))),
        })
        .collect();
    Ok(Json(workers))
}
