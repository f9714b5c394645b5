//! custody's HTTP server: the JSON API under `/api/v1`, health and readiness,
//! Prometheus metrics, the OpenAPI document generated from the handlers, and
//! the server-rendered pages for people (`web`).
//!
//! This is the only crate that knows HTTP. It knows nothing about the
//! terminal, and decides nothing itself: rules live in the domain core and
//! are applied by the store inside its transactions.

#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod auth;
pub mod backup;
pub mod connections;
pub mod error;
pub mod git;
pub mod instance;
pub mod keyring;
pub mod metrics;
pub mod proxies;
mod registry;
pub mod web;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use custody_store::Store;
use serde_json::json;

use crate::auth::{LoginThrottle, RateLimiter};
use crate::metrics::Metrics;

/// The largest request body the JSON API accepts.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The largest report a push hook may send (the commits of a large push).
pub const HOOK_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// Limits on attempts with secrets.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Failed sign-ins allowed per source in the window; past as many
    /// failures for one name, each sign-in naming it waits longer.
    pub failed_logins: u32,
    /// The first wait of a name past its free failures; it doubles with each
    /// failure, to 8 s at most.
    pub name_delay: Duration,
    /// Invite redemptions allowed per source in the window.
    pub redemptions: u32,
    /// The window.
    pub window: Duration,
    /// The largest pack one push may send (git's `receive.maxInputSize`).
    pub max_push_bytes: u64,
    /// The largest object (a file's content, say) one push may bring.
    pub max_object_bytes: u64,
    /// The proxies believed about their client in `X-Forwarded-For`, for
    /// the limits above and the log; none by default.
    pub trusted_proxies: Vec<proxies::Network>,
}

impl Limits {
    /// The largest push unless told otherwise: 1 GiB.
    pub const MAX_PUSH_BYTES: u64 = 1 << 30;
    /// The largest object unless told otherwise: 100 MiB.
    pub const MAX_OBJECT_BYTES: u64 = 100 << 20;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            failed_logins: 10,
            name_delay: Duration::from_millis(250),
            redemptions: 10,
            window: Duration::from_secs(15 * 60),
            max_push_bytes: Self::MAX_PUSH_BYTES,
            max_object_bytes: Self::MAX_OBJECT_BYTES,
            trusted_proxies: Vec::new(),
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

struct Shared {
    store: Store,
    keys: Vec<custody_formats::ServiceKey>,
    hosting: git::Hosting,
    blobs: custody_blobs::Blobs,
    sealing: Arc<custody_formats::sealed::SealingKey>,
    instance: String,
    metrics: Metrics,
    logins: LoginThrottle,
    redemptions: RateLimiter,
    max_push_bytes: u64,
    max_object_bytes: u64,
    changes: Arc<custody_app::Changes>,
    trusted_proxies: Vec<proxies::Network>,
    /// Where the service keys' files are, for rotations.
    key_dir: std::sync::OnceLock<std::path::PathBuf>,
}

impl AppState {
    /// State over an open store, hosting the repositories under
    /// `repositories`, serving artifacts from `blobs`.
    pub fn new(
        store: Store,
        instance: String,
        limits: Limits,
        repositories: custody_git::Repositories,
        blobs: custody_blobs::Blobs,
        keys: Vec<custody_formats::ServiceKey>,
        sealing: Arc<custody_formats::sealed::SealingKey>,
    ) -> Self {
        let gate_key = keys.iter().find(|k| k.role() == custody_formats::KeyRole::Gate).map(|k| k.clone_key());
        let changes = Arc::new(custody_app::Changes::new(store.clone(), repositories.clone(), gate_key));
        AppState(Arc::new(Shared {
            store,
            keys,
            hosting: git::Hosting::new(repositories),
            blobs,
            sealing,
            instance,
            metrics: Metrics::default(),
            logins: LoginThrottle::new(limits.failed_logins, limits.window, limits.name_delay),
            redemptions: RateLimiter::new(limits.redemptions, limits.window),
            max_push_bytes: limits.max_push_bytes,
            max_object_bytes: limits.max_object_bytes,
            trusted_proxies: limits.trusted_proxies,
            changes,
            key_dir: std::sync::OnceLock::new(),
        }))
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// What the gate of deploying `commit` to `environment` needs from git:
    /// every definition of the environment that governs it, and the changes
    /// the release brings; why not, when no definition names it.
    pub(crate) async fn release_context(
        &self,
        access: &custody_store::ProjectAccess,
        environment: &str,
        commit: &str,
    ) -> Result<custody_store::DeployContext, custody_app::AppError> {
        custody_app::releases::release_context(
            self.store(),
            self.hosting().repositories(),
            &access.project,
            environment,
            commit,
        )
        .await
    }

    /// The service key of `role`, if this process holds it.
    pub fn key(&self, role: custody_formats::KeyRole) -> Option<&custody_formats::ServiceKey> {
        self.0.keys.iter().find(|k| k.role() == role)
    }

    /// Names the directory holding the service keys' files, where a
    /// rotation writes the new key; without it, rotations wait for a start.
    pub fn set_key_dir(&self, dir: std::path::PathBuf) {
        let _ = self.0.key_dir.set(dir);
    }

    /// The directory holding the service keys' files, if named.
    pub fn key_dir(&self) -> Option<&std::path::Path> {
        self.0.key_dir.get().map(std::path::PathBuf::as_path)
    }

    /// Git hosting.
    pub fn hosting(&self) -> &git::Hosting {
        &self.0.hosting
    }

    /// The artifact repository.
    pub fn blobs(&self) -> &custody_blobs::Blobs {
        &self.0.blobs
    }

    /// The key that seals environment secrets.
    pub fn sealing_key(&self) -> &custody_formats::sealed::SealingKey {
        &self.0.sealing
    }

    /// The instance's name.
    pub fn instance(&self) -> &str {
        &self.0.instance
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub(crate) fn trusted_proxies(&self) -> &[proxies::Network] {
        &self.0.trusted_proxies
    }

    pub(crate) fn logins(&self) -> &LoginThrottle {
        &self.0.logins
    }

    pub(crate) fn redemptions(&self) -> &RateLimiter {
        &self.0.redemptions
    }

    pub(crate) fn max_push_bytes(&self) -> u64 {
        self.0.max_push_bytes
    }

    pub(crate) fn max_object_bytes(&self) -> u64 {
        self.0.max_object_bytes
    }

    /// Changes: their gates and their merges.
    pub fn changes(&self) -> &Arc<custody_app::Changes> {
        &self.0.changes
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    let tracked = Router::new()
        .merge(api::routes())
        .merge(git::routes())
        .merge(git::hook_routes().layer(DefaultBodyLimit::max(HOOK_BODY_LIMIT)))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // The pages for people, beside the API.
        .merge(web::routes())
        // The images builds made, for container runtimes.
        .merge(registry::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track));
    tracked
        .route("/metrics", get(metrics::serve))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn not_found() -> error::ApiError {
    error::ApiError::not_found("no such route; the API is described at /api/v1/openapi.json")
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and takes writes.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let unavailable = |reason: String| {
        tracing::warn!(%reason, "not ready");
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "reason": reason })))
    };
    if let Err(error) = state.store().ping().await {
        return unavailable(format!("the database does not answer: {error}"));
    }
    if let Err(why) = state.store().writable().await {
        return unavailable(why);
    }
    (StatusCode::OK, Json(json!({ "status": "ready", "database": state.store().dialect().name() })))
}

/// Serves on `listener` under `limits` until `shutdown` completes, then
/// finishes the requests in flight and returns.
pub async fn launch_with_tcp_listener(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: connections::ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state.hosting().set_listening(listener.local_addr()?);
    connections::serve(listener, router(state), limits, shutdown).await
}
