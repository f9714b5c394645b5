//! Builds and the artifact repository, read-only.
//!
//! There is deliberately no route that stores an artifact: only the builder,
//! a worker outside every request, writes the blob store.

use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use custody_api::{ArtifactDetail, BlobCheck, LogPage};
use custody_blobs::{BlobError, Digest, Verdict};
use custody_store::{ArtifactView, BuildView, Page};
use futures_util::StreamExt;
use serde::Deserialize;

use super::{PageQuery, Params, PathParam};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

use super::project_access as access;

fn digest(text: &str) -> ApiResult<Digest> {
    text.parse().map_err(|_| ApiError::invalid(format!("{text:?} is not a sha256 digest; give 64 hexadecimal digits")))
}

/// A project's builds, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{name}/builds", tag = "builds", security(("token" = [])), params(PageQuery),
    responses((status = 200, body = Page<BuildView>)))]
pub(crate) async fn list_builds(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(project): PathParam<String>,
    Params(page): Params<PageQuery>,
) -> ApiResult<Json<Page<BuildView>>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().list_builds(&access, page.request()?).await?))
}

/// One build, with its artifacts.
#[utoipa::path(get, path = "/api/v1/projects/{name}/builds/{number}", tag = "builds", security(("token" = [])),
    responses((status = 200, body = BuildView), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn get_build(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<BuildView>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().get_build(&access, number).await?))
}

/// Where to continue a log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct LogQuery {
    /// The `seq` of the last chunk already read.
    after: Option<i64>,
}

/// A build's log after a position; poll with the last `seq` to follow it.
#[utoipa::path(get, path = "/api/v1/projects/{name}/builds/{number}/log", tag = "builds", security(("token" = [])), params(LogQuery),
    responses((status = 200, body = LogPage)))]
pub(crate) async fn build_log(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Params(query): Params<LogQuery>,
) -> ApiResult<Json<LogPage>> {
    let access = access(&state, &auth, &project).await?;
    let (chunks, complete) = state.store().build_log(&access, number, query.after.unwrap_or(0)).await?;
    Ok(Json(LogPage { chunks, complete }))
}

/// Which artifacts.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ArtifactQuery {
    /// Only those of this build.
    build: Option<i64>,
    after: Option<i64>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A project's artifacts, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{name}/artifacts", tag = "builds", security(("token" = [])), params(ArtifactQuery),
    responses((status = 200, body = Page<ArtifactView>)))]
pub(crate) async fn list_artifacts(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(project): PathParam<String>,
    Params(query): Params<ArtifactQuery>,
) -> ApiResult<Json<Page<ArtifactView>>> {
    let access = access(&state, &auth, &project).await?;
    let page = PageQuery { after: query.after, limit: query.limit }.request()?;
    Ok(Json(state.store().list_artifacts(&access, query.build, page).await?))
}

/// One artifact by digest.
#[utoipa::path(get, path = "/api/v1/projects/{name}/artifacts/{digest}", tag = "builds", security(("token" = [])),
    responses((status = 200, body = ArtifactDetail), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn get_artifact(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, text)): PathParam<(String, String)>,
) -> ApiResult<Json<ArtifactDetail>> {
    let access = access(&state, &auth, &project).await?;
    let digest = digest(&text)?;
    let builds = state.store().artifact(&access, &digest.to_string()).await?;
    Ok(Json(ArtifactDetail { digest: digest.to_string(), size: builds[0].size, builds }))
}

/// The artifact's bytes. The server re-hashes them while sending; when they
/// no longer match the digest the transfer is cut off before its end, so a
/// client never receives a complete damaged file.
#[utoipa::path(get, path = "/api/v1/projects/{name}/artifacts/{digest}/content", tag = "builds", security(("token" = [])),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn download(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, text)): PathParam<(String, String)>,
) -> ApiResult<Response> {
    let access = access(&state, &auth, &project).await?;
    let digest = digest(&text)?;
    let records = state.store().artifact(&access, &digest.to_string()).await?;
    let name = records.last().map(|a| a.name.clone()).unwrap_or_default();
    send_blob(&state, &text, &name).await
}

/// Sends the blob `text` names as the file `name`, re-hashed while it is
/// sent and cut off before its end when it no longer matches.
pub(crate) async fn send_blob(state: &AppState, text: &str, name: &str) -> ApiResult<Response> {
    let digest = digest(text)?;
    let (size, body) = blob_body(state, &digest).await?;
    let name = name.rsplit('/').next().unwrap_or("artifact").to_owned();
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", name.replace('"', ""))) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("sha-256=:{}:", base64_of_hex(&digest.to_string()))) {
        headers.insert("repr-digest", value);
    }
    Ok(response)
}

/// A blob's size and its bytes as a body, re-hashed while they are sent and
/// cut off before their end when they no longer match their digest.
pub(crate) async fn blob_body(state: &AppState, digest: &Digest) -> ApiResult<(u64, HttpBody)> {
    let reader = state.blobs().read(digest).await.map_err(|e| blob_error(digest, e))?;
    let size = reader.size();
    let metrics = state.clone();
    let stream = reader.map(move |chunk| {
        chunk.map_err(|error| {
            if matches!(error, BlobError::Damaged { .. }) {
                metrics.metrics().damaged_blob();
            }
            tracing::error!(%error, "blob download cut off");
            std::io::Error::other(error.to_string())
        })
    });
    // Before the transfer is cut off, what was sent is flushed: the client
    // sees an answer that broke off, never one that was not sent at all.
    let stream = stream.then(|chunk| async move {
        if chunk.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        chunk
    });
    Ok((size, HttpBody::from_stream(stream)))
}

fn base64_of_hex(hex_text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_text).unwrap_or_default())
}

fn blob_error(digest: &Digest, error: BlobError) -> ApiError {
    match error {
        BlobError::NotFound(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "blob_missing",
            format!("artifact sha256:{digest} is recorded but its blob is missing from the store; an admin should run `custody artifact verify --all`"),
        ),
        other => {
            tracing::error!(error = %other, %digest, "reading a blob");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "blob_unreadable", other.to_string())
        }
    }
}

/// The signed SLSA provenance of the build that made an artifact (the
/// newest, when several builds made the same content).
#[utoipa::path(get, path = "/api/v1/projects/{name}/artifacts/{digest}/provenance", tag = "builds", security(("token" = [])),
    responses((status = 200, description = "a DSSE envelope", body = Object), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn provenance(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, text)): PathParam<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let access = access(&state, &auth, &project).await?;
    let digest = digest(&text)?;
    let records = state.store().artifact(&access, &digest.to_string()).await?;
    let build = records.last().map(|a| a.build).unwrap_or_default();
    let envelope = state
        .store()
        .build_provenance(&access, build)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("build {build} has no provenance")))?;
    let value = serde_json::from_str(&envelope).map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the stored provenance is damaged")
    })?;
    Ok(Json(value))
}

/// Which blobs to check.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct VerifyQuery {
    /// Only this artifact.
    #[param(pattern = "^(sha256:)?[0-9a-fA-F]{64}$")]
    digest: Option<String>,
}

/// Re-hashes stored blobs: every one, or one digest. Admins and auditors.
#[utoipa::path(get, path = "/api/v1/artifacts/verify", tag = "builds", security(("token" = [])), params(VerifyQuery),
    responses((status = 200, body = Vec<BlobCheck>)))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    auth: Auth,
    Params(query): Params<VerifyQuery>,
) -> ApiResult<Json<Vec<BlobCheck>>> {
    auth.require_overseer()?;
    let only = query.digest.as_deref().map(digest).transpose()?;
    let recorded = state.store().artifact_digests().await?;
    let mut wanted: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for (digest, project) in recorded {
        wanted.entry(digest).or_default().push(project);
    }
    if only.is_none() {
        for (stored, _) in state.blobs().list().await.map_err(|e| ApiError::invalid(e.to_string()))? {
            wanted.entry(stored.to_string()).or_default();
        }
    }
    let mut checks = Vec::new();
    for (text, projects) in wanted {
        let Ok(digest) = text.parse::<Digest>() else { continue };
        if only.as_ref().is_some_and(|o| *o != digest) {
            continue;
        }
        let verdict = state.blobs().verify(&digest).await.map_err(|e| blob_error(&digest, e))?;
        let (state_name, actual) = match verdict {
            Verdict::Intact if projects.is_empty() => ("unrecorded", None),
            Verdict::Intact => ("intact", None),
            Verdict::Damaged { actual } => ("damaged", Some(actual.to_string())),
            Verdict::Missing => ("missing", None),
        };
        checks.push(BlobCheck { digest: text, state: state_name.to_owned(), actual, projects });
    }
    if let Some(only) = only {
        if checks.is_empty() {
            return Err(ApiError::not_found(format!("no artifact has digest sha256:{only}")));
        }
    }
    Ok(Json(checks))
}
