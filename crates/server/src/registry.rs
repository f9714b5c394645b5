//! A pull-only OCI registry (Distribution Specification v1.1) at `/v2/`:
//! the images custody's builds made, by digest and by tag, and nothing
//! else. A repository is `PROJECT/IMAGE`; its manifests are the build
//! artifacts `oci/IMAGE` the builder signed provenance for, and a blob is
//! served only when one of those manifests reaches it, re-hashed while it
//! is sent. Tags are never set by anyone: `build-N` names build N's image,
//! and an environment's name (`staging`, `production`) names the image of
//! the build live there, so it moves only when a deployment succeeds (a
//! rollback's too).
//!
//! There is no write path: every push, upload, mount and delete is
//! answered with the specification's `DENIED`. Clients sign in the
//! Docker/OCI token way: `/v2/` answers 401 with a `Bearer` challenge
//! naming `/v2/token`, which takes the custody user name and a custody
//! token as Basic credentials and hands the token back as the bearer
//! token; a private project's images need read access to it.
//!
//! Each image manifest's signed attestations are its referrers (the
//! Referrers API): its build's SLSA provenance, and for admins and
//! auditors each of its deployments' attestations, each an artifact
//! manifest of type `application/vnd.dsse.envelope.v1+json` whose one
//! layer is the DSSE envelope as custody signed it.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use custody_blobs::Digest;
use custody_domain::ProjectName;
use custody_formats::oci::{self, media};
use custody_store::{ArtifactView, Authenticated, ProjectAccess};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::AppState;

/// The registry's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2", any(base))
        .route("/v2/", any(base))
        .route("/v2/token", get(token))
        .route("/v2/{*rest}", any(dispatch))
}

/// An answer in the specification's error shape.
struct RegistryError {
    status: StatusCode,
    code: &'static str,
    message: String,
    challenge: Option<String>,
}

impl RegistryError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        RegistryError { status, code, message: message.into(), challenge: None }
    }

    fn unknown(code: &'static str, message: impl Into<String>) -> Self {
        RegistryError::new(StatusCode::NOT_FOUND, code, message)
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let body = json!({ "errors": [{ "code": self.code, "message": self.message, "detail": null }] });
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
        if let Some(challenge) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

type Answer = Result<Response, RegistryError>;

/// Where clients get a bearer token.
fn challenge(headers: &HeaderMap, scope: Option<&str>) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    let mut challenge = format!("Bearer realm=\"{scheme}://{host}/v2/token\",service=\"custody\"");
    if let Some(scope) = scope {
        challenge.push_str(&format!(",scope=\"{scope}\""));
    }
    challenge
}

fn unauthorized(headers: &HeaderMap, scope: Option<&str>, message: &str) -> RegistryError {
    RegistryError {
        challenge: Some(challenge(headers, scope)),
        ..RegistryError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }
}

/// The token an `Authorization` header presents: a bearer token, or the
/// password of Basic credentials (whose user must be its owner).
fn presented(headers: &HeaderMap) -> Option<(Option<String>, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some((None, token.trim().to_owned()));
    }
    let decoded = STANDARD.decode(value.strip_prefix("Basic ")?.trim()).ok()?;
    let (user, password) =
        String::from_utf8(decoded).ok()?.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned()))?;
    Some((Some(user), password))
}

async fn signed_in(state: &AppState, headers: &HeaderMap, scope: Option<&str>) -> Result<Authenticated, RegistryError> {
    let Some((user, token)) = presented(headers) else {
        return Err(unauthorized(headers, scope, "sign in with your custody user name and a token of yours"));
    };
    let auth = state
        .store()
        .authenticate(&token)
        .await
        .map_err(|_| unauthorized(headers, scope, "that token is invalid, expired or revoked"))?;
    if user.is_some_and(|u| u != auth.name.as_str()) {
        return Err(unauthorized(headers, scope, "that token is not the named user's"));
    }
    Ok(auth)
}

/// `/v2/`: whether the client is signed in.
async fn base(State(state): State<AppState>, method: Method, headers: HeaderMap) -> Answer {
    if method != Method::GET && method != Method::HEAD {
        return Err(denied());
    }
    signed_in(&state, &headers, None).await?;
    Ok(with_version(Json(json!({})).into_response()))
}

#[derive(Deserialize)]
struct TokenQuery {
    scope: Option<String>,
}

/// The token endpoint: Basic credentials of a custody user and token in,
/// the same token out as the bearer token.
async fn token(State(state): State<AppState>, headers: HeaderMap, Query(query): Query<TokenQuery>) -> Answer {
    let auth = signed_in(&state, &headers, query.scope.as_deref()).await?;
    let (_, token) = presented(&headers).unwrap_or_default();
    let expires_in = auth.expires_at.map_or(3600, |at| ((at - custody_store::now_ms()) / 1000).clamp(1, 3600));
    let issued_at = custody_domain::Timestamp::from_millis(custody_store::now_ms()).to_rfc3339();
    Ok(Json(json!({ "token": token, "access_token": token, "expires_in": expires_in, "issued_at": issued_at }))
        .into_response())
}

fn denied() -> RegistryError {
    RegistryError::new(
        StatusCode::FORBIDDEN,
        "DENIED",
        "custody's registry has no write path: images come only from builds of reviewed commits",
    )
}

fn with_version(mut response: Response) -> Response {
    response.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    response
}

/// What a path under `/v2/` asks for.
enum Asked<'a> {
    Manifest(&'a str),
    Blob(&'a str),
    Tags,
    Referrers(&'a str),
}

/// `NAME/manifests/REF`, `NAME/blobs/DIGEST`, `NAME/tags/list`,
/// `NAME/referrers/DIGEST`: the repository's name and what is asked.
fn parse(rest: &str) -> Option<(&str, Asked<'_>)> {
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some((name, Asked::Tags));
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    let asked = match kind {
        "manifests" => Asked::Manifest(last),
        "blobs" => Asked::Blob(last),
        "referrers" => Asked::Referrers(last),
        _ => return None,
    };
    Some((name, asked))
}

/// A repository: its project, the visitor's access to it, and its image.
struct Repository {
    access: ProjectAccess,
    image: String,
    /// Whether the puller is an admin or auditor, who reads deployment
    /// attestations too.
    overseer: bool,
    /// The image's manifests custody built and signed, oldest build first:
    /// read once a request.
    built: Vec<ArtifactView>,
}

impl Repository {
    fn artifact(&self) -> String {
        format!("oci/{}", self.image)
    }
}

async fn repository(state: &AppState, auth: &Authenticated, name: &str) -> Result<Repository, RegistryError> {
    let unknown =
        || RegistryError::unknown("NAME_UNKNOWN", format!("repository {name:?} is not known to this registry"));
    let (project, image) = name.split_once('/').ok_or_else(unknown)?;
    if !custody_domain::pipeline::is_image_name(image) {
        return Err(unknown());
    }
    let project = ProjectName::parse(project).map_err(|_| unknown())?;
    // A project the visitor may not read is one this registry does not know.
    let access = state.store().project_access(auth, &project).await.map_err(|_| unknown())?;
    let mut repository =
        Repository { access, image: image.to_owned(), overseer: auth.reads_everything(), built: Vec::new() };
    repository.built = built(state, &repository).await?;
    Ok(repository)
}

async fn dispatch(State(state): State<AppState>, Path(rest): Path<String>, request: Request) -> Answer {
    let (method, headers) = (request.method().clone(), request.headers().clone());
    let Some((name, asked)) = parse(&rest) else {
        if method != Method::GET && method != Method::HEAD {
            return Err(denied());
        }
        return Err(RegistryError::unknown("NAME_UNKNOWN", "no such registry path"));
    };
    if method != Method::GET && method != Method::HEAD {
        return Err(denied());
    }
    let scope = format!("repository:{name}:pull");
    let auth = signed_in(&state, &headers, Some(&scope)).await?;
    let repository = repository(&state, &auth, name).await?;
    let head = method == Method::HEAD;
    let response = match asked {
        Asked::Manifest(reference) => manifest(&state, &repository, reference, head).await?,
        Asked::Blob(digest) => blob(&state, &repository, digest, head).await?,
        Asked::Tags => {
            let query = Query::<TagsQuery>::try_from_uri(request.uri())
                .map_err(|e| RegistryError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", e.body_text()))?;
            tags(&state, &repository, name, query.0).await?
        }
        Asked::Referrers(digest) => {
            let query = Query::<ReferrersQuery>::try_from_uri(request.uri())
                .map_err(|e| RegistryError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", e.body_text()))?;
            referrers(&state, &repository, digest, query.0).await?
        }
    };
    Ok(with_version(response))
}

/// A manifest's bytes read whole from the artifact repository and checked
/// against their digest.
async fn document(state: &AppState, hex: &str) -> Result<Vec<u8>, RegistryError> {
    let broken = |why: String| RegistryError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", why);
    let digest: Digest = hex.parse().map_err(|_| broken(format!("sha256:{hex} is not a digest")))?;
    let (size, body) = crate::api::builds::blob_body(state, &digest).await.map_err(|e| broken(e.message))?;
    if size > oci::MAX_DOCUMENT {
        return Err(broken(format!("manifest sha256:{hex} is larger than a manifest may be")));
    }
    let bytes = axum::body::to_bytes(body, oci::MAX_DOCUMENT as usize)
        .await
        .map_err(|e| broken(format!("manifest sha256:{hex} could not be read whole: {e}")))?;
    if hex::encode(Sha256::digest(&bytes)) != hex {
        return Err(broken(format!("manifest sha256:{hex} no longer matches its digest")));
    }
    Ok(bytes.to_vec())
}

/// How many checks and manifests the registry remembers, each.
const CACHED: usize = 10_000;

/// An image manifest found signed: project, build, artifact name, digest,
/// and the length of the key history it was checked under.
type Signed = (String, i64, String, String, usize);

/// The image manifests found signed.
static SIGNED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<Signed>>> =
    std::sync::LazyLock::new(Default::default);

/// What each manifest (by digest, immutable) reaches.
static REACHES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, BTreeSet<String>>>> =
    std::sync::LazyLock::new(Default::default);

/// The image's manifests custody built, oldest build first: each one its
/// build's provenance names, signed by a builder key valid when the build
/// finished. A row a database administrator wrote around custody names
/// nothing custody signed, and is not served.
async fn built(state: &AppState, repository: &Repository) -> Result<Vec<ArtifactView>, RegistryError> {
    let failed = |why: String| RegistryError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", why);
    let recorded = state
        .store()
        .artifacts_named(&repository.access, &repository.artifact())
        .await
        .map_err(|e| failed(e.to_string()))?;
    let builder = state
        .key(custody_formats::KeyRole::Builder)
        .map(|k| k.public())
        .ok_or_else(|| failed("this server holds no builder key to check provenance with".into()))?;
    // A check that held holds while the key history is the same: a
    // rotation or revocation adds to it, and everything is checked again.
    let keys = state.store().key_history().await.map_err(|e| failed(e.to_string()))?.len();
    let mut signed = Vec::with_capacity(recorded.len());
    for artifact in recorded {
        let known = (
            repository.access.project.to_string(),
            artifact.build,
            artifact.name.clone(),
            artifact.digest.clone(),
            keys,
        );
        if SIGNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&known) {
            signed.push(artifact);
            continue;
        }
        let named = [(artifact.name.clone(), artifact.digest.clone())];
        let checked = custody_app::work::signed_by_builder(
            state.store(),
            &repository.access.project,
            artifact.build,
            &builder,
            &named,
        )
        .await;
        match checked {
            Ok(()) => {
                let mut cache = SIGNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if cache.len() >= CACHED {
                    cache.clear();
                }
                cache.insert(known);
                signed.push(artifact)
            }
            Err(why) => {
                tracing::warn!(project = %repository.access.project, build = artifact.build, %why, "an image no builder signed is not served")
            }
        }
    }
    Ok(signed)
}

/// Every tag of the image, and the manifest digest (hex) each names.
async fn tag_list(state: &AppState, repository: &Repository) -> Result<Vec<(String, String)>, RegistryError> {
    let built = &repository.built;
    let mut tags: Vec<(String, String)> =
        built.iter().map(|a| (format!("build-{}", a.build), a.digest.clone())).collect();
    let environments =
        custody_app::releases::environment_states(state.store(), state.hosting().repositories(), &repository.access)
            .await
            .unwrap_or_default();
    for environment in environments {
        // What is live there as its proven events say, not as rows do.
        let name = environment.environment.name;
        let live = state.store().live_build(&repository.access.project, &name).await.ok().flatten();
        if let Some(artifact) = live.and_then(|(build, _)| built.iter().find(|a| a.build == build)) {
            tags.push((name, artifact.digest.clone()));
        }
    }
    tags.sort();
    Ok(tags)
}

/// The media type of an image manifest or index; none for anything else.
fn media_type_of(bytes: &[u8]) -> Option<String> {
    let document: Value = serde_json::from_slice(bytes).ok()?;
    let media_type = document["mediaType"].as_str()?;
    [media::MANIFEST, media::INDEX].contains(&media_type).then(|| media_type.to_owned())
}

/// A manifest by digest or by tag.
async fn manifest(state: &AppState, repository: &Repository, reference: &str, head: bool) -> Answer {
    let unknown = || {
        RegistryError::unknown(
            "MANIFEST_UNKNOWN",
            format!("{}/{} has no manifest {reference:?}", repository.access.project, repository.image),
        )
    };
    let hex = match oci::sha256_hex(reference) {
        Some(hex) => {
            if !repository.built.iter().any(|a| a.digest == hex) && !reachable(state, repository, hex).await? {
                // An attestation's manifest, made for its referrers.
                let found = attestations(state, repository, None).await?.into_iter().find(|r| r.digest == hex);
                let attestation = found.ok_or_else(unknown)?;
                return Ok(document_response(attestation.manifest, media::MANIFEST, hex, head));
            }
            hex.to_owned()
        }
        None => tag_list(state, repository)
            .await?
            .into_iter()
            .find(|(t, _)| t == reference)
            .map(|(_, d)| d)
            .ok_or_else(unknown)?,
    };
    let bytes = document(state, &hex).await?;
    // Only an image manifest or index is served as a manifest.
    let media_type = media_type_of(&bytes).ok_or_else(unknown)?;
    Ok(document_response(bytes, &media_type, &hex, head))
}

/// A manifest (or small blob) with its type, length and digest.
fn document_response(bytes: Vec<u8>, media_type: &str, hex: &str, head: bool) -> Response {
    let size = bytes.len();
    let mut response = if head { ().into_response() } else { bytes.into_response() };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(media_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&format!("sha256:{hex}")) {
        headers.insert("docker-content-digest", value);
    }
    response
}

/// The digests (hex) a manifest or index reaches, itself excluded: an
/// index's manifests and what each reaches, a manifest's config and layers.
async fn children(state: &AppState, hex: &str, depth: usize) -> Result<BTreeSet<String>, RegistryError> {
    if let Some(known) = REACHES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(hex) {
        return Ok(known.clone());
    }
    let found = read_children(state, hex, depth).await?;
    let mut cache = REACHES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if cache.len() >= CACHED {
        cache.clear();
    }
    cache.insert(hex.to_owned(), found.clone());
    Ok(found)
}

async fn read_children(state: &AppState, hex: &str, depth: usize) -> Result<BTreeSet<String>, RegistryError> {
    let mut found = BTreeSet::new();
    let document: Value = serde_json::from_slice(&document(state, hex).await?).unwrap_or(Value::Null);
    let mut descriptors: Vec<&Value> = Vec::new();
    if let Some(manifests) = document["manifests"].as_array() {
        descriptors.extend(manifests);
    }
    descriptors.extend(document["layers"].as_array().into_iter().flatten());
    if document["config"].is_object() {
        descriptors.push(&document["config"]);
    }
    for descriptor in descriptors {
        let Some(child) = descriptor["digest"].as_str().and_then(oci::sha256_hex) else { continue };
        found.insert(child.to_owned());
        let nested = [media::MANIFEST, media::INDEX].contains(&descriptor["mediaType"].as_str().unwrap_or_default());
        if nested && depth < 2 {
            found.extend(Box::pin(children(state, child, depth + 1)).await?);
        }
    }
    Ok(found)
}

/// Whether one of the image's built manifests reaches the blob `hex`.
async fn reachable(state: &AppState, repository: &Repository, hex: &str) -> Result<bool, RegistryError> {
    for artifact in repository.built.iter().rev() {
        if children(state, &artifact.digest, 0).await?.contains(hex) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A blob one of the image's manifests reaches, re-hashed while it is sent.
async fn blob(state: &AppState, repository: &Repository, reference: &str, head: bool) -> Answer {
    let unknown = || RegistryError::unknown("BLOB_UNKNOWN", format!("no blob {reference:?} in this repository"));
    let hex = oci::sha256_hex(reference).ok_or_else(unknown)?;
    let own = repository.built.iter().any(|a| a.digest == hex);
    if !own && !reachable(state, repository, hex).await? {
        // The empty config every attestation's manifest names, or an
        // attestation's envelope.
        if hex == EMPTY_DIGEST && !repository.built.is_empty() {
            return Ok(document_response(b"{}".to_vec(), media::EMPTY, hex, head));
        }
        let found = attestations(state, repository, None).await?.into_iter().find(|a| a.envelope_digest == hex);
        let attestation = found.ok_or_else(unknown)?;
        return Ok(document_response(attestation.envelope, media::DSSE, hex, head));
    }
    let digest: Digest = hex.parse().map_err(|_| unknown())?;
    let broken =
        |e: crate::error::ApiError| RegistryError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.message);
    let (size, body) = crate::api::builds::blob_body(state, &digest).await.map_err(broken)?;
    let mut response = if head { ().into_response() } else { body.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(value) = HeaderValue::from_str(&format!("sha256:{hex}")) {
        headers.insert("docker-content-digest", value);
    }
    Ok(response)
}

/// A page of tags: `n` of them after `last`.
#[derive(Deserialize)]
struct TagsQuery {
    n: Option<usize>,
    last: Option<String>,
}

/// The image's tags, in lexical order, `n` at a time after `last`.
async fn tags(state: &AppState, repository: &Repository, name: &str, query: TagsQuery) -> Answer {
    let TagsQuery { n, last } = query;
    let all: Vec<String> = tag_list(state, repository).await?.into_iter().map(|(t, _)| t).collect();
    let after: Vec<String> = all.into_iter().filter(|t| last.as_ref().is_none_or(|l| t > l)).collect();
    let page: Vec<String> = after.iter().take(n.unwrap_or(usize::MAX)).cloned().collect();
    let more = page.len() < after.len();
    let mut response = Json(json!({ "name": name, "tags": page })).into_response();
    if let (true, Some(n), Some(last)) = (more, n, page.last()) {
        let link = format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\"");
        if let Ok(value) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}

/// The sha256 of the empty JSON object `{}`, the config of every
/// attestation's manifest.
const EMPTY_DIGEST: &str = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// A signed envelope about an image, served as a referrer of its manifest:
/// an artifact manifest whose one layer is the DSSE envelope.
struct Attestation {
    /// The manifest's bytes and digest (hex).
    manifest: Vec<u8>,
    digest: String,
    /// The envelope's bytes and digest (hex).
    envelope: Vec<u8>,
    envelope_digest: String,
    /// The image manifest it refers to (hex).
    subject: String,
    /// What it is: `provenance`, or `deployment N to ENV`.
    kind: String,
}

impl Attestation {
    fn new(subject: (&str, &str, u64), envelope: &str, kind: String) -> Attestation {
        let (subject_type, subject, subject_size) = subject;
        let envelope = envelope.as_bytes().to_vec();
        let envelope_digest = hex::encode(Sha256::digest(&envelope));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::MANIFEST,
            "artifactType": media::DSSE,
            "config": { "mediaType": media::EMPTY, "digest": format!("sha256:{EMPTY_DIGEST}"), "size": 2 },
            "layers": [{ "mediaType": media::DSSE, "digest": format!("sha256:{envelope_digest}"), "size": envelope.len() }],
            "subject": { "mediaType": subject_type, "digest": format!("sha256:{subject}"), "size": subject_size },
            "annotations": { "dev.custody.attestation": kind },
        });
        let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
        let digest = hex::encode(Sha256::digest(&manifest));
        Attestation { manifest, digest, envelope, envelope_digest, subject: subject.to_owned(), kind }
    }
}

/// The attestations of the image's built manifests (only those of
/// `subject`, when given): each build's provenance, and, for admins and
/// auditors, the attestation of each deployment of it that ran.
async fn attestations(
    state: &AppState,
    repository: &Repository,
    subject: Option<&str>,
) -> Result<Vec<Attestation>, RegistryError> {
    let failed =
        |e: custody_store::StoreError| RegistryError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string());
    let mut found = Vec::new();
    for artifact in &repository.built {
        if subject.is_some_and(|s| s != artifact.digest) {
            continue;
        }
        let bytes = document(state, &artifact.digest).await?;
        let Some(media_type) = media_type_of(&bytes) else { continue };
        let about = (media_type.as_str(), artifact.digest.as_str(), bytes.len() as u64);
        if let Some(provenance) =
            state.store().build_provenance(&repository.access, artifact.build).await.map_err(failed)?
        {
            found.push(Attestation::new(about, &provenance, "provenance".into()));
        }
        if !repository.overseer {
            continue;
        }
        for deployment in
            state.store().deployments_of_build(&repository.access, artifact.build).await.map_err(failed)?
        {
            let (_, attestation) =
                state.store().deployment_record(&repository.access, deployment.number).await.map_err(failed)?;
            if let Some(attestation) = attestation {
                let kind = format!("deployment {} to {}", deployment.number, deployment.environment);
                found.push(Attestation::new(about, &attestation, kind));
            }
        }
    }
    Ok(found)
}

/// The artifacts that refer to a manifest (its build's provenance, and the
/// attestations of its deployments for admins and auditors), as an image
/// index, filtered by `artifactType` when asked.
async fn referrers(state: &AppState, repository: &Repository, reference: &str, query: ReferrersQuery) -> Answer {
    let unknown =
        || RegistryError::unknown("MANIFEST_UNKNOWN", format!("no manifest {reference:?} in this repository"));
    let hex = oci::sha256_hex(reference).ok_or_else(unknown)?;
    let known = repository.built.iter().any(|a| a.digest == hex) || reachable(state, repository, hex).await?;
    if !known {
        return Err(unknown());
    }
    let wanted = query.artifact_type.as_deref();
    let manifests: Vec<Value> = attestations(state, repository, Some(hex))
        .await?
        .into_iter()
        .filter(|a| a.subject == hex && wanted.is_none_or(|t| t == media::DSSE))
        .map(|a| {
            json!({
                "mediaType": media::MANIFEST,
                "digest": format!("sha256:{}", a.digest),
                "size": a.manifest.len(),
                "artifactType": media::DSSE,
                "annotations": { "dev.custody.attestation": a.kind },
            })
        })
        .collect();
    let index = json!({ "schemaVersion": 2, "mediaType": media::INDEX, "manifests": manifests });
    let mut response = Json(index).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media::INDEX));
    if wanted.is_some() {
        headers.insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    Ok(response)
}

/// A referrers query: only artifacts of this type.
#[derive(Deserialize)]
struct ReferrersQuery {
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_paths_name_their_repository_and_what_they_ask_for() {
        assert!(matches!(parse("payments/app/manifests/build-1"), Some(("payments/app", Asked::Manifest("build-1")))));
        assert!(matches!(parse("payments/app/blobs/sha256:ab"), Some(("payments/app", Asked::Blob("sha256:ab")))));
        assert!(matches!(parse("payments/app/tags/list"), Some(("payments/app", Asked::Tags))));
        assert!(matches!(parse("payments/app/referrers/sha256:ab"), Some(("payments/app", Asked::Referrers(_)))));
        assert!(
            parse("payments/app/blobs/uploads/").is_none()
                || matches!(parse("payments/app/blobs/uploads/"), Some((_, Asked::Blob(""))))
        );
        assert!(parse("nothing").is_none());
    }

    #[test]
    fn basic_credentials_name_their_user_and_bearer_tokens_none() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic YWxpY2U6Y3N0X3NlY3JldA=="));
        assert_eq!(presented(&headers), Some((Some("alice".into()), "cst_secret".into())));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer cst_x"));
        assert_eq!(presented(&headers), Some((None, "cst_x".into())));
    }
}
