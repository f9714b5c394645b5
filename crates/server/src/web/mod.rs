//! Server-rendered pages for reviewers, approvers, testers, auditors and
//! admins: the same store calls and the same decisions as the JSON API,
//! drawn as HTML that works without JavaScript.
//!
//! The pages know no SQL and decide no rule: a handler signs the visitor in
//! (a cookie holding a day-long token), checks a form's CSRF token, calls
//! the store method the API calls, and renders what comes back, the
//! `Reason`s of a refusal included. Every page is a maud template: a value
//! interpolated into HTML is escaped unless the code says otherwise (none
//! does), and a malformed template does not compile. The one stylesheet and
//! the one script (the navigation bar's count) are served from the binary,
//! and every page is sent with a Content-Security-Policy that allows
//! nothing from elsewhere and no inline script or style.

mod admin;
mod audit;
mod builds;
mod changes;
mod deployment;
mod deploys;
mod diff;
pub(crate) mod html;
mod inbox;
mod me;
mod oversight;
mod projects;
pub(crate) mod session;
mod settings;

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use custody_domain::Reason;
use custody_store::StoreError;

use crate::error::ApiError;
use crate::AppState;

/// What every page is sent with: no script or style but custody's own, no
/// framing, no referrer to other sites, nothing cached.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; \
     frame-ancestors 'none'";

const STYLESHEET: &str = include_str!("custody.css");

/// The one script: fills in the navigation bar's count of what waits. Every
/// page works without it.
const SCRIPT: &str = include_str!("custody.js");

/// The pages' routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/work") }))
        .route("/static/custody.css", get(stylesheet))
        .route("/static/custody.js", get(script))
        .route("/work", get(inbox::show))
        .route("/work/count", get(inbox::count))
        .route("/findings/{id}/resolve", post(inbox::resolve_finding))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/me", get(me::show))
        .route("/me/tokens", post(me::make_token))
        .route("/me/tokens/{id}/revoke", post(me::revoke_token))
        .route("/me/sessions/end", post(me::end_sessions))
        .route("/me/password", post(me::change_password))
        .route("/projects", get(projects::list))
        .route("/projects/{name}", get(projects::show))
        .route("/projects/{name}/changes", get(changes::list).post(changes::open))
        .route("/projects/{name}/changes/{number}", get(changes::show))
        .route("/projects/{name}/changes/{number}/edit", post(changes::edit))
        .route("/projects/{name}/changes/{number}/comments", post(changes::comment))
        .route("/projects/{name}/changes/{number}/comments/{id}/resolve", post(changes::resolve_comment))
        .route("/projects/{name}/changes/{number}/close", post(changes::close))
        .route("/projects/{name}/changes/{number}/reopen", post(changes::reopen))
        .route("/projects/{name}/changes/{number}/review", post(changes::review))
        .route("/projects/{name}/changes/{number}/merge", post(changes::merge))
        .route("/projects/{name}/builds", get(builds::list))
        .route("/projects/{name}/builds/{number}", get(builds::show))
        .route("/projects/{name}/artifacts/{digest}/content", get(builds::download))
        .route("/projects/{name}/builds/{number}/log", get(builds::log))
        .route("/projects/{name}/artifacts/{digest}", get(builds::artifact))
        .route("/projects/{name}/environments/{environment}", get(deploys::environment))
        .route("/projects/{name}/deployments", post(deployment::request))
        .route("/projects/{name}/deployments/{number}", get(deployment::show))
        .route("/projects/{name}/deployments/{number}/log", get(deployment::log))
        .route("/projects/{name}/deployments/{number}/cancel", post(deployment::cancel))
        .route("/projects/{name}/deployments/{number}/decide", post(deploys::decide))
        .route("/projects/{name}/deployments/{number}/evidence", get(deploys::evidence))
        .route("/projects/{name}/artifacts/{digest}/evidence", get(deploys::artifact_evidence))
        .route("/audit", get(audit::events))
        .route("/audit/checkpoint", get(oversight::checkpoint).post(oversight::prove))
        .route("/findings", get(oversight::findings))
        .route("/report", get(oversight::report))
        .route("/admin", get(admin::show))
        .route("/admin/grants/{id}", get(admin::grant))
        .route("/admin/grants/{id}/decide", post(admin::decide))
        .route("/admin/users", post(admin::invite))
        .route("/admin/users/{name}/disable", post(admin::disable))
        .route("/admin/users/{name}/enable", post(admin::enable))
        .route("/admin/groups", post(admin::make_group))
        .route("/admin/groups/{name}/members", post(admin::add_member))
        .route("/admin/groups/{name}/members/{user}/remove", post(admin::remove_member))
        .route("/projects/{name}/settings", get(settings::show))
        .route("/projects/{name}/settings/members", post(settings::add_member))
        .route("/projects/{name}/settings/members/{user}/remove", post(settings::remove_member))
        .route("/projects/{name}/settings/branches", post(settings::protect))
        .route("/projects/{name}/settings/branches/{branch}/unprotect", post(settings::unprotect))
        .route("/projects/{name}/settings/secrets", post(settings::set_secret))
        .layer(axum::middleware::from_fn(security_headers))
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")], STYLESHEET)
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=3600")],
        SCRIPT,
    )
        .into_response()
}

/// Sets the security headers on every page.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// A page that could not be shown, or an action that was refused: its
/// status, what happened and what to do, and the rules that refused.
#[derive(Debug)]
pub struct WebError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What happened and what to do.
    pub message: String,
    /// The rules that refused, each with what would satisfy it.
    pub reasons: Vec<Reason>,
    /// Where to go back to.
    pub back: Option<String>,
}

impl WebError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        WebError { status, message: message.into(), reasons: Vec::new(), back: None }
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        WebError::new(StatusCode::FORBIDDEN, message)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        WebError::new(StatusCode::BAD_REQUEST, message)
    }

    /// Offers a link back to `href`.
    pub(crate) fn back(mut self, href: impl Into<String>) -> Self {
        self.back = Some(href.into());
        self
    }
}

impl From<ApiError> for WebError {
    fn from(error: ApiError) -> Self {
        WebError { status: error.status, message: error.message, reasons: error.reasons, back: None }
    }
}

impl From<custody_app::AppError> for WebError {
    fn from(error: custody_app::AppError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<StoreError> for WebError {
    fn from(error: StoreError) -> Self {
        ApiError::from(error).into()
    }
}

impl From<custody_domain::InvalidInput> for WebError {
    fn from(error: custody_domain::InvalidInput) -> Self {
        WebError::invalid(error.to_string())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if self.status == StatusCode::UNAUTHORIZED {
            return session::to_login(self.back.as_deref());
        }
        let title = match self.status {
            StatusCode::FORBIDDEN if !self.reasons.is_empty() => "Refused",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::CONFLICT => "Not now",
            status if status.is_server_error() => "Something went wrong",
            _ => "Cannot do that",
        };
        let body = maud::html! {
            h1 { (title) }
            p.lead #error { (self.message) }
            (html::reasons(&self.reasons))
            @if let Some(back) = &self.back { p { a #back href=(back) { "Back" } } }
        };
        (self.status, html::page(title, None, body)).into_response()
    }
}

/// Path parameters; malformed ones get a 400 page that says why.
pub struct WebPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for WebPath<T> {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| WebPath(value))
            .map_err(|rejection| {
                WebError::invalid(format!("this address is not one of custody's pages: {}", rejection.body_text()))
            })
    }
}

/// Query parameters; malformed ones get a 400 page that says why.
pub struct WebQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for WebQuery<T> {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| WebQuery(value))
            .map_err(|rejection| WebError::invalid(format!("bad query parameters: {}", rejection.body_text())))
    }
}

/// A page or a redirect, or an error page.
pub type WebResult<T = Response> = Result<T, WebError>;
