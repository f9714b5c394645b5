//! Groups, and the grants that change who may do what.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use custody_domain::{GrantAction, GrantStatus, GroupName, UserName};
use custody_store::{GrantView, GroupView, Page};
use serde::Deserialize;

use super::{PageQuery, Params, PathParam};
use crate::auth::{Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use custody_api::{CreateGroupRequest, MemberRequest, RejectRequest};

/// Every group with its members.
#[utoipa::path(get, path = "/api/v1/groups", tag = "groups", security(("token" = [])), params(PageQuery),
    responses((status = 200, body = Page<GroupView>)))]
pub(crate) async fn list_groups(
    State(state): State<AppState>,
    auth: Auth,
    Params(page): Params<PageQuery>,
) -> ApiResult<Json<Page<GroupView>>> {
    auth.require(custody_domain::Scope::Read)?;
    Ok(Json(state.store().list_groups(page.request()?).await?))
}

/// An admin creates an empty group.
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups", security(("token" = [])), request_body = CreateGroupRequest,
    responses((status = 201, body = GroupView), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn create_group(
    State(state): State<AppState>,
    auth: Auth,
    Body(request): Body<CreateGroupRequest>,
) -> ApiResult<(StatusCode, Json<GroupView>)> {
    let name = GroupName::parse(&request.name)?;
    Ok((StatusCode::CREATED, Json(state.store().create_group(&auth.0, name).await?)))
}

/// One group.
#[utoipa::path(get, path = "/api/v1/groups/{name}", tag = "groups", security(("token" = [])),
    responses((status = 200, body = GroupView), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn get_group(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<GroupView>> {
    auth.require(custody_domain::Scope::Read)?;
    Ok(Json(state.store().get_group(&GroupName::parse(&name)?).await?))
}

/// An admin asks to add a member: a grant, pending until a second admin
/// approves it (applied at once, and marked, during bootstrap).
#[utoipa::path(post, path = "/api/v1/groups/{name}/members", tag = "groups", security(("token" = [])), request_body = MemberRequest,
    responses((status = 202, body = GrantView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn add_member(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
    Body(request): Body<MemberRequest>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    let (group, user) = (GroupName::parse(&name)?, UserName::parse(&request.user)?);
    super::grant_requested(&state, &auth, GrantAction::AddGroupMember { group, user }).await
}

/// An admin asks to remove a member: a grant.
#[utoipa::path(delete, path = "/api/v1/groups/{name}/members/{user}", tag = "groups", security(("token" = [])),
    responses((status = 202, body = GrantView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((name, user)): PathParam<(String, String)>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    let (group, user) = (GroupName::parse(&name)?, UserName::parse(&user)?);
    super::grant_requested(&state, &auth, GrantAction::RemoveGroupMember { group, user }).await
}

/// Which grants to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct GrantQuery {
    /// `pending`, `approved`, `rejected` or `bootstrap`.
    #[param(pattern = "^(pending|approved|rejected|bootstrap)$")]
    status: Option<String>,
    after: Option<i64>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// Grants, newest last. Admins and auditors only.
#[utoipa::path(get, path = "/api/v1/grants", tag = "groups", security(("token" = [])), params(GrantQuery),
    responses((status = 200, body = Page<GrantView>)))]
pub(crate) async fn list_grants(
    State(state): State<AppState>,
    auth: Auth,
    Params(query): Params<GrantQuery>,
) -> ApiResult<Json<Page<GrantView>>> {
    auth.require_overseer()?;
    let status = query
        .status
        .as_deref()
        .map(|s| {
            GrantStatus::parse(s)
                .ok_or_else(|| ApiError::invalid("status must be pending, approved, rejected or bootstrap"))
        })
        .transpose()?;
    let page = PageQuery { after: query.after, limit: query.limit }.request()?;
    Ok(Json(state.store().list_grants(status, page).await?))
}

/// One grant. Admins and auditors only.
#[utoipa::path(get, path = "/api/v1/grants/{id}", tag = "groups", security(("token" = [])),
    responses((status = 200, body = GrantView), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn get_grant(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(id): PathParam<i64>,
) -> ApiResult<Json<GrantView>> {
    auth.require_overseer()?;
    Ok(Json(state.store().get_grant(id).await?))
}

/// A second admin approves a grant; it applies at once.
#[utoipa::path(post, path = "/api/v1/grants/{id}/approve", tag = "groups", security(("token" = [])),
    responses((status = 200, body = GrantView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn approve_grant(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(id): PathParam<i64>,
) -> ApiResult<Json<GrantView>> {
    let grant = state.store().approve_grant(&auth.0, id).await?;
    super::complete_grant(&state, &grant).await?;
    Ok(Json(grant))
}

/// An admin rejects a grant (its requester may withdraw it).
#[utoipa::path(post, path = "/api/v1/grants/{id}/reject", tag = "groups", security(("token" = [])), request_body = RejectRequest,
    responses((status = 200, body = GrantView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn reject_grant(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(id): PathParam<i64>,
    Body(request): Body<RejectRequest>,
) -> ApiResult<Json<GrantView>> {
    if request.note.as_ref().is_some_and(|n| n.chars().count() > 2000) {
        return Err(ApiError::invalid("the note is longer than 2000 characters"));
    }
    Ok(Json(state.store().reject_grant(&auth.0, id, request.note).await?))
}
