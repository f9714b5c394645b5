//! Git over smart HTTP, and the two hook endpoints that decide and record
//! every push.
//!
//! A push runs `git receive-pack` with a one-time capability in its
//! environment. custody's pre-receive hook presents it to
//! `/internal/hooks/pre-receive` with the ref updates and the commits they
//! bring, while the objects are still quarantined; the server alone decides,
//! for the pusher it authenticated. The post-receive hook presents it again
//! to record what was accepted. Nobody else can hold the capability, so
//! nobody can forge a pusher.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_compression::tokio::bufread::GzipDecoder;
use axum::body::Body as HttpBody;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use custody_domain::project::{PushedCommit, RefUpdate};
use custody_domain::ProjectName;
use custody_git::service::{self, Service};
use custody_git::Repositories;
use custody_store::{Authenticated, ProjectAccess};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::AppState;

/// How long a push may take before its capability lapses.
const CAPABILITY_LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// Git hosting: where repositories live, and the pushes in flight.
pub struct Hosting {
    repositories: Repositories,
    hook_url: OnceLock<String>,
    public_url: OnceLock<String>,
    pushes: Mutex<HashMap<String, PushSession>>,
}

struct PushSession {
    access: ProjectAccess,
    pusher: Authenticated,
    started: Instant,
    /// The recorded push, once the pre-receive decision accepted it.
    recorded: Option<i64>,
}

impl Hosting {
    /// Hosting for the repositories under `repositories`.
    pub fn new(repositories: Repositories) -> Self {
        Hosting {
            repositories,
            hook_url: OnceLock::new(),
            public_url: OnceLock::new(),
            pushes: Mutex::new(HashMap::new()),
        }
    }

    /// The repositories.
    pub fn repositories(&self) -> &Repositories {
        &self.repositories
    }

    /// The base URL clients reach this server at: the configured public URL,
    /// else where it listens.
    pub fn base_url(&self) -> String {
        self.public_url.get().or(self.hook_url.get()).cloned().unwrap_or_default()
    }

    /// Sets the URL clients reach this server at, when it differs from the
    /// listening address (behind a proxy).
    pub fn set_public_url(&self, url: &str) {
        let _ = self.public_url.set(url.trim_end_matches('/').to_owned());
    }

    /// Tells the hooks where this process listens (a loopback address).
    pub(crate) fn set_listening(&self, address: SocketAddr) {
        let host = if address.ip().is_unspecified() {
            match address {
                SocketAddr::V4(_) => "127.0.0.1".to_owned(),
                SocketAddr::V6(_) => "[::1]".to_owned(),
            }
        } else {
            match address {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            }
        };
        let _ = self.hook_url.set(format!("http://{host}:{}", address.port()));
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, PushSession>> {
        self.pushes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_session(&self, access: ProjectAccess, pusher: Authenticated) -> String {
        let capability = custody_store::random_secret();
        let mut sessions = self.sessions();
        sessions.retain(|_, s| s.started.elapsed() < CAPABILITY_LIFETIME);
        sessions.insert(capability.clone(), PushSession { access, pusher, started: Instant::now(), recorded: None });
        capability
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/{repo}/info/refs", get(info_refs))
        .route("/{repo}/git-upload-pack", post(upload_pack))
        .route("/{repo}/git-receive-pack", post(receive_pack))
}

pub(crate) fn hook_routes() -> Router<AppState> {
    Router::new()
        .route("/internal/hooks/pre-receive", post(pre_receive))
        .route("/internal/hooks/post-receive", post(post_receive))
}

/// The project a repository path names: `NAME.git` or `NAME`.
fn project_of(repo: &str) -> Result<ProjectName, ApiError> {
    let name = repo.strip_suffix(".git").unwrap_or(repo);
    ProjectName::parse(name).map_err(|_| ApiError::not_found("no such repository"))
}

/// What git clients get when credentials are missing: a Basic challenge,
/// so that credential helpers and `http://USER:TOKEN@host/` work.
fn challenge(message: &str) -> Response {
    let mut response = (StatusCode::UNAUTHORIZED, format!("{message}\n")).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"custody\""));
    response
}

/// A refusal as a git client shows it: each reason, its rule and what
/// would satisfy it, one per line.
fn refusal_text(decision: &custody_domain::Decision) -> String {
    let mut lines = Vec::new();
    for reason in &decision.reasons {
        lines.push(format!("- {} [{}]", reason.message, reason.rule));
        if let Some(satisfy) = &reason.satisfy {
            lines.push(format!("  to get it in: {satisfy}"));
        }
    }
    lines.join("\n")
}

fn plain(status: StatusCode, message: String) -> Response {
    (status, format!("{message}\n")).into_response()
}

/// Who a git client is: a person, with what they may do in the project,
/// or a worker that shares nothing with the server, fetching the commit of
/// a job it holds.
enum Caller {
    Person(Authenticated, ProjectAccess),
    Worker(ProjectName),
}

impl Caller {
    fn project(&self) -> &ProjectName {
        match self {
            Caller::Person(_, access) => &access.project,
            Caller::Worker(project) => project,
        }
    }
}

/// Authenticates a git client and finds what it may do in the project.
async fn authorise(
    state: &AppState,
    parts: &mut axum::http::request::Parts,
    repo: &str,
    service: Service,
) -> Result<Caller, Response> {
    let token = crate::auth::presented_token(parts).ok().flatten().unwrap_or_default();
    if let Some(worker) = crate::api::workers::authenticate_worker(state, &token).await {
        let worker = worker.map_err(|error| challenge(&error.message))?;
        let project = project_of(repo).map_err(|_| plain(StatusCode::NOT_FOUND, "repository not found".into()))?;
        if service != Service::UploadPack {
            return Err(plain(StatusCode::FORBIDDEN, "a worker fetches; it never pushes".into()));
        }
        return match state.store().holds_job(&worker.lease_name(), project.as_str()).await {
            Ok(true) => Ok(Caller::Worker(project)),
            Ok(false) => Err(plain(
                StatusCode::NOT_FOUND,
                format!("repository {project} not found among the jobs this worker holds"),
            )),
            Err(error) => Err(ApiError::from(error).into_response()),
        };
    }
    let Auth(user) = match Auth::from_request_parts(parts, state).await {
        Ok(auth) => auth,
        Err(error) => return Err(challenge(&error.message)),
    };
    let project = project_of(repo).map_err(|_| plain(StatusCode::NOT_FOUND, "repository not found".into()))?;
    let access = match state.store().project_access(&user, &project).await {
        Ok(access) => access,
        Err(custody_store::StoreError::NotFound { .. }) => {
            return Err(plain(StatusCode::NOT_FOUND, format!("repository {project} not found")))
        }
        Err(error) => return Err(ApiError::from(error).into_response()),
    };
    if service == Service::ReceivePack {
        let may = custody_domain::access::decide_change_write(
            &user.name,
            &project,
            access.role,
            user.scopes,
            custody_domain::access::ChangeWrite::Push,
        );
        if !may.allowed {
            return Err(plain(StatusCode::FORBIDDEN, refusal_text(&may)));
        }
    }
    Ok(Caller::Person(user, access))
}

#[derive(Deserialize)]
struct InfoRefsQuery {
    service: Option<String>,
}

async fn info_refs(
    State(state): State<AppState>,
    axum::extract::Path(repo): axum::extract::Path<String>,
    Query(query): Query<InfoRefsQuery>,
    request: axum::extract::Request,
) -> Response {
    let Some(service) = query.service.as_deref().and_then(Service::parse) else {
        return plain(
            StatusCode::FORBIDDEN,
            "only smart HTTP is served: use a git client of version 1.6.6 or later".into(),
        );
    };
    let (mut parts, _) = request.into_parts();
    let caller = match authorise(&state, &mut parts, &repo, service).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let protocol = git_protocol(&parts.headers);
    let path = state.hosting().repositories().path(caller.project());
    let output = match service::command(service, &path, true, protocol.as_deref(), &[]).output().await {
        Ok(output) if output.status.success() => output.stdout,
        Ok(output) => {
            tracing::error!(stderr = %String::from_utf8_lossy(&output.stderr), "ref advertisement failed");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "the repository could not be read".into());
        }
        Err(error) => {
            tracing::error!(%error, "cannot run git");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "the server cannot run git".into());
        }
    };
    let mut body = Vec::with_capacity(output.len() + 40);
    if !service::wants_v2(protocol.as_deref()) {
        body.extend(service.advertisement_header());
    }
    body.extend(output);
    ([(header::CONTENT_TYPE, service.advertisement_type()), (header::CACHE_CONTROL, "no-cache".to_owned())], body)
        .into_response()
}

fn git_protocol(headers: &HeaderMap) -> Option<String> {
    headers.get("git-protocol").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn upload_pack(
    State(state): State<AppState>,
    axum::extract::Path(repo): axum::extract::Path<String>,
    request: axum::extract::Request,
) -> Response {
    rpc(state, repo, Service::UploadPack, request).await
}

async fn receive_pack(
    State(state): State<AppState>,
    axum::extract::Path(repo): axum::extract::Path<String>,
    request: axum::extract::Request,
) -> Response {
    rpc(state, repo, Service::ReceivePack, request).await
}

/// Runs one stateless RPC, streaming the request into git and git's answer
/// back, without holding either pack in memory.
async fn rpc(state: AppState, repo: String, service: Service, request: axum::extract::Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let caller = match authorise(&state, &mut parts, &repo, service).await {
        Ok(caller) => caller,
        Err(response) => return response,
    };
    let hosting = state.hosting();
    let path = hosting.repositories().path(caller.project());
    let mut extra = Vec::new();
    let mut capability = None;
    if let (Service::ReceivePack, Caller::Person(user, access)) = (service, &caller) {
        let Some(url) = hosting.hook_url.get() else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "the server is still starting".into());
        };
        let token = hosting.open_session(access.clone(), user.clone());
        extra.push((custody_git::hook::URL_VAR.to_owned(), url.clone()));
        extra.push((custody_git::hook::CAPABILITY_VAR.to_owned(), token.clone()));
        extra.push((custody_git::hook::MAX_OBJECT_VAR.to_owned(), state.max_object_bytes().to_string()));
        // The hooks run this very binary, wherever this host keeps it.
        if let Ok(program) = std::env::current_exe() {
            extra.push((custody_git::hook::PROGRAM_VAR.to_owned(), program.display().to_string()));
        }
        // No push sends more than the instance allows: git refuses the pack
        // and says so to the client.
        for (key, value) in [
            ("GIT_CONFIG_COUNT", "1".to_owned()),
            ("GIT_CONFIG_KEY_0", "receive.maxInputSize".to_owned()),
            ("GIT_CONFIG_VALUE_0", state.max_push_bytes().to_string()),
        ] {
            extra.push((key.to_owned(), value));
        }
        capability = Some(token);
    }
    let protocol = git_protocol(&parts.headers);
    let mut child = match service::command(service, &path, false, protocol.as_deref(), &extra).spawn() {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(%error, "cannot run git");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "the server cannot run git".into());
        }
    };
    let (Some(mut stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "the server cannot run git".into());
    };
    let gzip = parts.headers.get(header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let reader = StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    tokio::spawn(async move {
        let copied = if gzip {
            let mut decoded = GzipDecoder::new(tokio::io::BufReader::new(reader));
            tokio::io::copy(&mut decoded, &mut stdin).await
        } else {
            let mut reader = reader;
            tokio::io::copy(&mut reader, &mut stdin).await
        };
        if let Err(error) = copied {
            tracing::debug!(%error, "request body ended early");
        }
    });
    let hosting_state = state.clone();
    tokio::spawn(async move {
        let mut message = String::new();
        let _ = stderr.read_to_string(&mut message).await;
        match child.wait().await {
            Ok(status) if status.success() => {}
            Ok(status) => {
                tracing::info!(%status, stderr = %message.trim(), service = service.name(), "git ended with an error")
            }
            Err(error) => tracing::error!(%error, "waiting for git"),
        }
        if let Some(capability) = capability {
            hosting_state.hosting().sessions().remove(&capability);
        }
    });
    (
        [(header::CONTENT_TYPE, service.result_type()), (header::CACHE_CONTROL, "no-cache".to_owned())],
        HttpBody::from_stream(relay(stdout)),
    )
        .into_response()
}

/// Streams git's output to the client. If the client goes away, the rest is
/// still read to the end, so that git finishes its work (and runs the
/// post-receive hook) rather than dying on a closed pipe.
fn relay(
    stdout: tokio::process::ChildStdout,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut chunks = ReaderStream::new(stdout);
        let mut client_gone = false;
        while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
            if !client_gone && sender.send(chunk).await.is_err() {
                client_gone = true;
            }
        }
    });
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    })
}

/// What the pre-receive hook sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct PreReceive {
    /// The ref updates asked for.
    pub updates: Vec<RefUpdate>,
    /// The commits they would bring in, oldest first.
    pub commits: Vec<PushedCommit>,
}

/// What the post-receive hook sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct PostReceive {
    /// The ref updates git made.
    pub updates: Vec<RefUpdate>,
}

/// The server's answer to a hook.
#[derive(Debug, Serialize, Deserialize)]
pub struct HookAnswer {
    /// Whether the push may go on.
    pub allowed: bool,
    /// What to tell the pusher, line by line.
    pub message: Vec<String>,
}

fn capability(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}

async fn pre_receive(State(state): State<AppState>, headers: HeaderMap, Json(push): Json<PreReceive>) -> Response {
    let Some(token) = capability(&headers) else {
        return ApiError::unauthenticated("no capability").into_response();
    };
    let session = {
        let sessions = state.hosting().sessions();
        sessions
            .get(&token)
            .filter(|s| s.started.elapsed() < CAPABILITY_LIFETIME && s.recorded.is_none())
            .map(|s| (s.access.clone(), s.pusher.clone()))
    };
    let Some((access, pusher)) = session else {
        return ApiError::unauthenticated("unknown or expired push capability").into_response();
    };
    let _ = tokio::task::spawn_blocking(|| custody_store::fault::pause("push.decide")).await;
    // Decided in the writer's transaction, on the access as it is now: not
    // on the one this push began with.
    let decided = state.store().decide_and_record_push(&pusher, &access.project, push.updates, push.commits).await;
    let push_id = match decided {
        Ok(custody_store::PushDecided::Recorded { push_id, .. }) => push_id,
        Ok(custody_store::PushDecided::Refused(decision)) => {
            let mut message = vec![format!("custody refused this push by {}:", pusher.name)];
            message.extend(refusal_text(&decision).lines().map(|line| format!("  {line}")));
            return Json(HookAnswer { allowed: false, message }).into_response();
        }
        Err(error) => {
            tracing::error!(%error, "deciding a push");
            let message = vec!["custody could not decide this push, so it refuses it; try again".to_owned()];
            return Json(HookAnswer { allowed: false, message }).into_response();
        }
    };
    if let Some(session) = state.hosting().sessions().get_mut(&token) {
        session.recorded = Some(push_id);
    }
    Json(HookAnswer { allowed: true, message: Vec::new() }).into_response()
}

async fn post_receive(State(state): State<AppState>, headers: HeaderMap, Json(push): Json<PostReceive>) -> Response {
    let Some(token) = capability(&headers) else {
        return ApiError::unauthenticated("no capability").into_response();
    };
    let session = state.hosting().sessions().remove(&token);
    let Some(PushSession { access, pusher, recorded: Some(push_id), started }) = session else {
        return ApiError::unauthenticated("unknown, expired or undecided push capability").into_response();
    };
    if started.elapsed() >= CAPABILITY_LIFETIME {
        return ApiError::unauthenticated("expired push capability").into_response();
    }
    match state.store().push_landed(&access, &pusher, push_id, push.updates).await {
        Ok(()) => Json(json!({ "push": push_id })).into_response(),
        Err(error) => {
            tracing::error!(%error, "following a landed push");
            ApiError::from(error).into_response()
        }
    }
}
