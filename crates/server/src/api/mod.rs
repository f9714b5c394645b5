//! The JSON API under `/api/v1`, and its OpenAPI document.

mod audit;
mod builds;
mod changes;
mod deploys;
mod evidence;
mod groups;
pub(crate) mod people;
mod projects;
mod report;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::AppState;

/// Query parameters, with malformed ones refused as a 400 that says why.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // Decoded as strictly as a path segment: a value that is not UTF-8
        // once decoded is refused, never read with replacement characters.
        if let Some(query) = parts.uri.query() {
            if let Some(bad) = query.split('&').find(|pair| !decodes_to_utf8(pair)) {
                return Err(ApiError::invalid(format!(
                    "bad query parameters: {bad:?} is not UTF-8 once decoded; percent-encode UTF-8 text"
                )));
            }
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Params(value))
            .map_err(|rejection| ApiError::invalid(format!("bad query parameters: {}", rejection.body_text())))
    }
}

/// Whether a percent-encoded query pair decodes to UTF-8.
fn decodes_to_utf8(pair: &str) -> bool {
    let bytes = pair.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = pair.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        decoded.push(byte);
                        i += 3;
                    }
                    None => return false,
                }
            }
            b'+' => {
                decoded.push(b' ');
                i += 1;
            }
            byte => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// Which page of a list: items after the cursor `after`, at most `limit` (1-500, default 100).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The `next_cursor` of the previous page.
    pub after: Option<i64>,
    /// How many items, 1 to 500.
    pub limit: Option<i64>,
}

impl PageQuery {
    pub(crate) fn request(&self) -> Result<custody_store::PageRequest, ApiError> {
        if let Some(limit) = self.limit {
            if !(1..=custody_store::PageRequest::MAX).contains(&limit) {
                return Err(ApiError::invalid(format!(
                    "limit must be between 1 and {}",
                    custody_store::PageRequest::MAX
                )));
            }
        }
        Ok(custody_store::PageRequest::new(self.after, self.limit))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "custody", description = "Segregation of duties from commit to production, and the evidence of it."),
    paths(
        people::me, people::set_password, people::login, people::redeem,
        people::list_users, people::create_user, people::get_user, people::disable_user,
        people::list_tokens, people::create_token, people::revoke_token,
        groups::list_groups, groups::create_group, groups::get_group, groups::add_member, groups::remove_member,
        groups::list_grants, groups::get_grant, groups::approve_grant, groups::reject_grant,
        audit::events, audit::checkpoint, audit::consistency, audit::proof, audit::export,
        projects::create_project, projects::list_projects, projects::get_project,
        projects::add_member, projects::remove_member, projects::protect_branch, projects::unprotect_branch, projects::delete_tag,
        projects::pushes, projects::commit, projects::set_default_branch,
        changes::open_change, changes::list_changes, changes::get_change, changes::diff, changes::gate,
        changes::review, changes::close, changes::reopen, changes::merge, changes::merge_queue, changes::attestation,
        changes::checks,
        builds::list_builds, builds::get_build, builds::build_log, builds::list_artifacts, builds::get_artifact,
        builds::download, builds::provenance, builds::verify,
        deploys::list_environments, deploys::get_environment, deploys::list_deployments, deploys::get_deployment,
        deploys::gate, deploys::request, deploys::approve, deploys::reject, deploys::sign_off, deploys::cancel,
        deploys::record, deploys::list_findings, deploys::resolve_finding, deploys::set_secret, deploys::list_secrets,
        evidence::trust, evidence::export, report::report,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&TokenSecurity),
    tags(
        (name = "people", description = "Users, invites, tokens and passwords"),
        (name = "groups", description = "Groups and the grants that change who may do what"),
        (name = "audit", description = "The append-only audit log, its signed checkpoints and proofs"),
        (name = "projects", description = "Projects, their repositories and the push log"),
        (name = "changes", description = "Change requests, reviews and the merge gate"),
        (name = "deployments", description = "Environments, deployments and the independent approvals they need"),
        (name = "evidence", description = "Trust roots and evidence bundles for offline verification"),
        (name = "builds", description = "Builds of mainline commits and the artifact repository (read-only: only the builder stores artifacts)"),
    )
)]
struct ApiDoc;

struct TokenSecurity;

impl utoipa::Modify for TokenSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("cst_…").build()),
        );
    }
}

/// The OpenAPI document of this API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/me", get(people::me))
        .route("/me/password", put(people::set_password))
        .route("/auth/token", post(people::login))
        .route("/invites/redeem", post(people::redeem))
        .route("/users", get(people::list_users).post(people::create_user))
        .route("/users/{name}", get(people::get_user))
        .route("/users/{name}/disable", post(people::disable_user))
        .route("/tokens", get(people::list_tokens).post(people::create_token))
        .route("/tokens/{id}", delete(people::revoke_token))
        .route("/groups", get(groups::list_groups).post(groups::create_group))
        .route("/groups/{name}", get(groups::get_group))
        .route("/groups/{name}/members", post(groups::add_member))
        .route("/groups/{name}/members/{user}", delete(groups::remove_member))
        .route("/grants", get(groups::list_grants))
        .route("/grants/{id}", get(groups::get_grant))
        .route("/grants/{id}/approve", post(groups::approve_grant))
        .route("/grants/{id}/reject", post(groups::reject_grant))
        .route("/audit/events", get(audit::events))
        .route("/audit/checkpoint", get(audit::checkpoint))
        .route("/audit/consistency", get(audit::consistency))
        .route("/audit/proof/{seq}", get(audit::proof))
        .route("/audit/export", get(audit::export))
        .route("/projects", get(projects::list_projects).post(projects::create_project))
        .route("/projects/{name}", get(projects::get_project))
        .route("/projects/{name}/members", post(projects::add_member))
        .route("/projects/{name}/members/{user}", delete(projects::remove_member))
        .route("/projects/{name}/tags/{tag}", delete(projects::delete_tag))
        .route("/projects/{name}/protected-branches", post(projects::protect_branch))
        .route("/projects/{name}/protected-branches/{branch}", delete(projects::unprotect_branch))
        .route("/projects/{name}/pushes", get(projects::pushes))
        .route("/projects/{name}/default-branch", put(projects::set_default_branch))
        .route("/projects/{name}/commits/{sha}", get(projects::commit))
        .route("/projects/{name}/changes", get(changes::list_changes).post(changes::open_change))
        .route("/projects/{name}/changes/{number}", get(changes::get_change))
        .route("/projects/{name}/changes/{number}/diff", get(changes::diff))
        .route("/projects/{name}/changes/{number}/gate", get(changes::gate))
        .route("/projects/{name}/changes/{number}/reviews", post(changes::review))
        .route("/projects/{name}/changes/{number}/close", post(changes::close))
        .route("/projects/{name}/changes/{number}/reopen", post(changes::reopen))
        .route("/projects/{name}/changes/{number}/merge", post(changes::merge))
        .route("/projects/{name}/merge-queue", get(changes::merge_queue))
        .route("/projects/{name}/changes/{number}/attestation", get(changes::attestation))
        .route("/projects/{name}/changes/{number}/checks", get(changes::checks))
        .route("/projects/{name}/builds", get(builds::list_builds))
        .route("/projects/{name}/builds/{number}", get(builds::get_build))
        .route("/projects/{name}/builds/{number}/log", get(builds::build_log))
        .route("/projects/{name}/artifacts", get(builds::list_artifacts))
        .route("/projects/{name}/artifacts/{digest}", get(builds::get_artifact))
        .route("/projects/{name}/artifacts/{digest}/content", get(builds::download))
        .route("/projects/{name}/artifacts/{digest}/provenance", get(builds::provenance))
        .route("/artifacts/verify", get(builds::verify))
        .route("/projects/{name}/environments", get(deploys::list_environments))
        .route("/projects/{name}/environments/{environment}", get(deploys::get_environment))
        .route("/projects/{name}/deployments", get(deploys::list_deployments).post(deploys::request))
        .route("/projects/{name}/deployments/{number}", get(deploys::get_deployment))
        .route("/projects/{name}/deployments/{number}/gate", get(deploys::gate))
        .route("/projects/{name}/deployments/{number}/approve", post(deploys::approve))
        .route("/projects/{name}/deployments/{number}/reject", post(deploys::reject))
        .route("/projects/{name}/deployments/{number}/sign-off", post(deploys::sign_off))
        .route("/projects/{name}/deployments/{number}/cancel", post(deploys::cancel))
        .route("/projects/{name}/deployments/{number}/record", get(deploys::record))
        .route("/trust", get(evidence::trust))
        .route("/projects/{name}/evidence", get(evidence::export))
        .route("/report", get(report::report))
        .route("/findings", get(deploys::list_findings))
        .route(
            "/projects/{name}/environments/{environment}/secrets",
            get(deploys::list_secrets).post(deploys::set_secret),
        )
        .route("/findings/{id}/resolve", post(deploys::resolve_finding))
}

/// Asks for a grant on behalf of the caller: 202 with the grant, pending a
/// second admin (or applied at once, and marked, during bootstrap).
/// Does in git what an applied grant asks for (publishes an import, deletes
/// a tag); nothing for a grant still pending, rejected, or of another kind.
pub(crate) async fn complete_grant(
    state: &crate::AppState,
    grant: &custody_store::GrantView,
) -> crate::error::ApiResult<()> {
    use custody_domain::GrantStatus;
    if !matches!(grant.status, GrantStatus::Approved | GrantStatus::Bootstrap) {
        return Ok(());
    }
    projects::complete_import(state, grant).await?;
    projects::complete_tag_deletion(state, grant).await
}

/// The caller's access to a project, for a handler that reads it: a token
/// with the read scope, and a project the caller may see.
pub(crate) async fn project_access(
    state: &crate::AppState,
    auth: &crate::auth::Auth,
    project: &str,
) -> crate::error::ApiResult<custody_store::ProjectAccess> {
    auth.require(custody_domain::Scope::Read)?;
    Ok(state.store().project_access(&auth.0, &custody_domain::ProjectName::parse(project)?).await?)
}

pub(crate) async fn grant_requested(
    state: &crate::AppState,
    auth: &crate::auth::Auth,
    action: custody_domain::GrantAction,
) -> crate::error::ApiResult<(axum::http::StatusCode, Json<custody_store::GrantView>)> {
    Ok((axum::http::StatusCode::ACCEPTED, Json(state.store().request(&auth.0, action).await?)))
}

/// Path parameters, with malformed ones refused as a 400 that says why.
pub struct PathParam<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathParam(value))
            .map_err(|rejection| ApiError::invalid(format!("bad path: {}", rejection.body_text())))
    }
}
