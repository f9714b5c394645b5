//! The JSON API under `/api/v1`, and its OpenAPI document.

mod audit;
pub(crate) mod builds;
mod changes;
mod contract;
pub(crate) mod deploys;
pub(crate) mod evidence;
mod groups;
pub(crate) mod people;
mod projects;
pub(crate) mod report;
pub(crate) mod workers;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    #[param(minimum = 1, maximum = 500)]
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
    components(schemas(custody_api::ErrorBody)),
    modifiers(&TokenSecurity),
    tags(
        (name = "people", description = "Users, invites, tokens and passwords"),
        (name = "groups", description = "Groups and the grants that change who may do what"),
        (name = "audit", description = "The append-only audit log, its signed checkpoints and proofs"),
        (name = "projects", description = "Projects, their repositories and the push log"),
        (name = "changes", description = "Change requests, reviews and the merge gate"),
        (name = "deployments", description = "Environments, deployments and the independent approvals they need"),
        (name = "evidence", description = "Trust roots and evidence bundles for offline verification"),
        (name = "meta", description = "This document"),
        (name = "builds", description = "Builds of mainline commits and the artifact repository (read-only: only the builder stores artifacts)"),
        (name = "workers", description = "Workers that share nothing with the server: registering them, and the jobs they lease and report with their own credential and key"),
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

/// The OpenAPI document of this API: what the handlers declare, completed
/// by [`contract::complete`] with what every operation shares.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut document = operations().split_for_parts().1;
    contract::complete(&mut document);
    document
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object)))]
async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse as _;
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| serde_json::to_string(&openapi()).unwrap_or_default());
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document.clone()).into_response()
}

pub(crate) fn routes() -> Router<AppState> {
    operations().split_for_parts().0
}

/// Every operation of the API, each served and described from its one
/// `#[utoipa::path]`: nothing is served that the document does not describe.
// The query form of evidence export is served, and described as deprecated.
#[allow(deprecated)]
fn operations() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(openapi_json))
        .routes(routes!(people::me))
        .routes(routes!(people::set_password))
        .routes(routes!(people::login))
        .routes(routes!(people::redeem))
        .routes(routes!(people::list_users, people::create_user))
        .routes(routes!(people::get_user))
        .routes(routes!(people::disable_user))
        .routes(routes!(people::enable_user))
        .routes(routes!(people::list_tokens, people::create_token))
        .routes(routes!(people::revoke_token))
        .routes(routes!(groups::list_groups, groups::create_group))
        .routes(routes!(groups::get_group))
        .routes(routes!(groups::add_member))
        .routes(routes!(groups::remove_member))
        .routes(routes!(groups::list_grants))
        .routes(routes!(groups::get_grant))
        .routes(routes!(groups::approve_grant))
        .routes(routes!(groups::reject_grant))
        .routes(routes!(audit::events))
        .routes(routes!(audit::checkpoint))
        .routes(routes!(audit::handovers))
        .routes(routes!(audit::consistency))
        .routes(routes!(audit::proof))
        .routes(routes!(audit::export))
        .routes(routes!(projects::list_projects, projects::create_project))
        .routes(routes!(projects::get_project))
        .routes(routes!(projects::add_member))
        .routes(routes!(projects::remove_member))
        .routes(routes!(projects::delete_tag))
        .routes(routes!(projects::protect_branch))
        .routes(routes!(projects::unprotect_branch))
        .routes(routes!(projects::pushes))
        .routes(routes!(projects::set_default_branch))
        .routes(routes!(projects::commit))
        .routes(routes!(changes::list_changes, changes::open_change))
        .routes(routes!(changes::get_change, changes::edit_change))
        .routes(routes!(changes::diff))
        .routes(routes!(changes::comments, changes::comment))
        .routes(routes!(changes::resolve_comment))
        .routes(routes!(changes::gate))
        .routes(routes!(changes::review))
        .routes(routes!(changes::close))
        .routes(routes!(changes::reopen))
        .routes(routes!(changes::merge))
        .routes(routes!(changes::merge_queue))
        .routes(routes!(changes::attestation))
        .routes(routes!(changes::checks))
        .routes(routes!(builds::list_builds))
        .routes(routes!(builds::get_build))
        .routes(routes!(builds::build_log))
        .routes(routes!(builds::list_artifacts))
        .routes(routes!(builds::get_artifact))
        .routes(routes!(builds::download))
        .routes(routes!(builds::provenance))
        .routes(routes!(builds::verify))
        .routes(routes!(deploys::list_environments))
        .routes(routes!(deploys::get_environment))
        .routes(routes!(deploys::list_deployments, deploys::request))
        .routes(routes!(deploys::get_deployment))
        .routes(routes!(deploys::gate))
        .routes(routes!(deploys::approve))
        .routes(routes!(deploys::reject))
        .routes(routes!(deploys::sign_off))
        .routes(routes!(deploys::cancel))
        .routes(routes!(deploys::record))
        .routes(routes!(evidence::trust))
        .routes(routes!(crate::keyring::rotate_key))
        .routes(routes!(crate::keyring::revoke_key))
        .routes(routes!(evidence::deployment_evidence))
        .routes(routes!(evidence::artifact_evidence))
        .routes(routes!(evidence::environment_evidence))
        .routes(routes!(evidence::export))
        .routes(routes!(report::report))
        .routes(routes!(deploys::list_findings))
        .routes(routes!(deploys::list_secrets, deploys::set_secret))
        .routes(routes!(deploys::resolve_finding))
        .routes(routes!(workers::list_workers, workers::register_worker))
        .routes(routes!(workers::lease_build))
        .routes(routes!(workers::build_heartbeat))
        .routes(routes!(workers::build_log))
        .routes(routes!(workers::upload_artifact))
        .routes(routes!(workers::finish_build))
        .routes(routes!(workers::requeue_build))
        .routes(routes!(workers::lease_deployment))
        .routes(routes!(workers::deployment_heartbeat))
        .routes(routes!(workers::deployment_log))
        .routes(routes!(workers::deployment_artifact))
        .routes(routes!(workers::finish_deployment))
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
    crate::keyring::complete_rotation(state, grant).await?;
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
