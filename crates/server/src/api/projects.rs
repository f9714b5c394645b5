//! Projects: their repositories, members and protected branches, and the push log.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use custody_api::{CreatedProject, ProjectAnswer};
use custody_domain::grant::GrantAction;
use custody_domain::{ProjectName, Role, Scope, UserName};
use custody_store::{CommitView, GrantView, Page, ProjectView, PushView};

use super::{PageQuery, Params, PathParam};
use crate::auth::{Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use custody_api::{BranchRequest, CreateProjectRequest, ProjectMemberRequest};

fn answer(state: &AppState, project: ProjectView) -> ProjectAnswer {
    let clone_url = format!("{}/{}.git", state.hosting().base_url(), project.name);
    ProjectAnswer { project, clone_url }
}

/// Deletes the tag an approved grant names, if it still points where it
/// did when the grant was asked for.
pub(crate) async fn complete_tag_deletion(state: &AppState, grant: &GrantView) -> ApiResult<()> {
    let GrantAction::DeleteTag { project, tag, target } = &grant.action else {
        return Ok(());
    };
    let repository = state.hosting().repositories().path(project);
    let (reference, old) = (format!("refs/tags/{tag}"), target.clone());
    tokio::task::spawn_blocking(move || custody_git::change::delete_ref(&repository, &reference, &old))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "deleting the tag failed"))?
        .map_err(|error| {
            tracing::error!(%error, grant = grant.id, "deleting a tag");
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("tag {tag} no longer points at {target}, so it was not deleted; ask again: {error}"),
            )
        })
}

/// Publishes an approved import and records its commits as unreviewed.
pub(crate) async fn complete_import(state: &AppState, grant: &GrantView) -> ApiResult<()> {
    let GrantAction::ImportRepository { project, refs, .. } = &grant.action else {
        return Ok(());
    };
    let repositories = state.hosting().repositories().clone();
    let (name, staged) = (project.clone(), refs.clone());
    let commits = tokio::task::spawn_blocking(move || {
        let commits = repositories.import_commits(&name, &staged)?;
        repositories.publish_import(&name, &staged)?;
        Ok::<_, custody_git::GitError>(commits)
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the import failed"))?
    .map_err(|error| {
        tracing::error!(%error, grant = grant.id, "publishing an import");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("publishing the import failed: {error}"))
    })?;
    state.store().record_import(project, grant.id, commits).await?;
    Ok(())
}

/// An admin creates a project with an empty repository.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", security(("token" = [])), request_body = CreateProjectRequest,
    responses((status = 201, body = CreatedProject), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn create_project(
    State(state): State<AppState>,
    auth: Auth,
    Body(request): Body<CreateProjectRequest>,
) -> ApiResult<(StatusCode, Json<CreatedProject>)> {
    let name = ProjectName::parse(&request.name)?;
    let default_branch = request.default_branch.unwrap_or_else(|| "main".to_owned());
    custody_domain::project::check_branch_name(&default_branch)?;
    // Refuse early, before touching the disk, when the caller may not do it
    // or the name is taken.
    if !auth.0.is_admin || !auth.0.has_scope(Scope::Admin) {
        let decision = custody_domain::grant::decide_admin(&auth.0.as_admin());
        return Err(custody_store::StoreError::Refused(decision).into());
    }
    if state.store().project_exists(&name).await? {
        return Err(ApiError::new(StatusCode::CONFLICT, "conflict", format!("a project named {name} already exists")));
    }
    let repositories = state.hosting().repositories().clone();
    let (repo_name, branch) = (name.clone(), default_branch.clone());
    let path = tokio::task::spawn_blocking(move || repositories.create(&repo_name, &branch))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "creating the repository failed"))?
        .map_err(|e| match e {
            custody_git::GitError::Exists(_) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("a repository for {name} exists on disk without a project; remove it or choose another name"),
            ),
            other => {
                tracing::error!(error = %other, "creating a repository");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "creating the repository failed")
            }
        })?;
    let staged = match &request.import {
        Some(source) => {
            let (repositories, project, source) =
                (state.hosting().repositories().clone(), name.clone(), source.clone());
            let staged = tokio::task::spawn_blocking(move || {
                repositories.stage_import(&project, std::path::Path::new(&source)).map(|refs| (source, refs))
            })
            .await
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the import failed"));
            match staged {
                Ok(Ok(staged)) => Some(staged),
                Ok(Err(error)) => {
                    let _ = std::fs::remove_dir_all(&path);
                    return Err(ApiError::invalid(format!(
                        "cannot import from {}: {error}",
                        request.import.as_deref().unwrap_or_default()
                    )));
                }
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&path);
                    return Err(error);
                }
            }
        }
        None => None,
    };
    let project = match state.store().create_project(&auth.0, name.clone(), default_branch).await {
        Ok(project) => project,
        Err(error) => {
            // Nothing half-made stays behind.
            let _ = std::fs::remove_dir_all(&path);
            return Err(error.into());
        }
    };
    let import_grant = match staged {
        Some((source, refs)) => {
            let action = GrantAction::ImportRepository { project: name, source, refs };
            let grant = state.store().request(&auth.0, action).await?;
            super::complete_grant(&state, &grant).await?;
            Some(grant)
        }
        None => None,
    };
    Ok((StatusCode::CREATED, Json(CreatedProject { project: answer(&state, project), import_grant })))
}

/// The projects the caller may see.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", security(("token" = [])), params(PageQuery),
    responses((status = 200, body = Page<ProjectAnswer>)))]
pub(crate) async fn list_projects(
    State(state): State<AppState>,
    auth: Auth,
    Params(page): Params<PageQuery>,
) -> ApiResult<Json<Page<ProjectAnswer>>> {
    auth.require(Scope::Read)?;
    let page = state.store().list_projects(&auth.0, page.request()?).await?;
    Ok(Json(Page { items: page.items.into_iter().map(|p| answer(&state, p)).collect(), next_cursor: page.next_cursor }))
}

async fn readable(state: &AppState, auth: &Auth, name: &str) -> ApiResult<ProjectName> {
    auth.require(Scope::Read)?;
    let name = ProjectName::parse(name)?;
    state.store().project_access(&auth.0, &name).await?;
    Ok(name)
}

/// One project.
#[utoipa::path(get, path = "/api/v1/projects/{name}", tag = "projects", security(("token" = [])),
    responses((status = 200, body = ProjectAnswer), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn get_project(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
) -> ApiResult<Json<ProjectAnswer>> {
    let name = readable(&state, &auth, &name).await?;
    Ok(Json(answer(&state, state.store().get_project(&name).await?)))
}

/// An admin asks to give a user a role in a project: a grant.
#[utoipa::path(post, path = "/api/v1/projects/{name}/members", tag = "projects", security(("token" = [])), request_body = ProjectMemberRequest,
    responses((status = 202, body = GrantView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn add_member(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
    Body(request): Body<ProjectMemberRequest>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    let action = GrantAction::AddProjectMember {
        project: ProjectName::parse(&name)?,
        user: UserName::parse(&request.user)?,
        role: Role::parse(&request.role)?,
    };
    super::grant_requested(&state, &auth, action).await
}

/// An admin asks to remove a member: a grant.
#[utoipa::path(delete, path = "/api/v1/projects/{name}/members/{user}", tag = "projects", security(("token" = [])),
    responses((status = 202, body = GrantView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((name, user)): PathParam<(String, String)>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    let action =
        GrantAction::RemoveProjectMember { project: ProjectName::parse(&name)?, user: UserName::parse(&user)? };
    super::grant_requested(&state, &auth, action).await
}

/// An admin asks to protect another branch: a grant.
#[utoipa::path(post, path = "/api/v1/projects/{name}/protected-branches", tag = "projects", security(("token" = [])), request_body = BranchRequest,
    responses((status = 202, body = GrantView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn protect_branch(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
    Body(request): Body<BranchRequest>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    custody_domain::project::check_branch_name(&request.branch)?;
    let action = GrantAction::ProtectBranch { project: ProjectName::parse(&name)?, branch: request.branch };
    super::grant_requested(&state, &auth, action).await
}

/// An admin asks to stop protecting a branch: a grant. The default branch
/// stays protected.
#[utoipa::path(delete, path = "/api/v1/projects/{name}/protected-branches/{branch}", tag = "projects", security(("token" = [])),
    responses((status = 202, body = GrantView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn unprotect_branch(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((name, branch)): PathParam<(String, String)>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    let action = GrantAction::UnprotectBranch { project: ProjectName::parse(&name)?, branch };
    super::grant_requested(&state, &auth, action).await
}

/// An admin asks to delete a tag, which no push may do: a grant. The tag
/// goes once a second admin approves, if it still points where it did.
#[utoipa::path(delete, path = "/api/v1/projects/{name}/tags/{tag}", tag = "projects", security(("token" = [])),
    responses((status = 202, body = GrantView), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn delete_tag(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((name, tag)): PathParam<(String, String)>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    let project = ProjectName::parse(&name)?;
    state.store().project_access(&auth.0, &project).await?;
    let repository = state.hosting().repositories().path(&project);
    let reference = format!("refs/tags/{tag}");
    let target = tokio::task::spawn_blocking(move || custody_git::change::read_ref(&repository, &reference))
        .await
        .map_err(|_| ApiError::invalid("reading the repository failed"))?
        .map_err(|_| ApiError::invalid("reading the repository failed"))?
        .ok_or_else(|| ApiError::not_found(format!("{project} has no tag {tag:?}")))?;
    let action = GrantAction::DeleteTag { project, tag, target };
    let (status, Json(grant)) = super::grant_requested(&state, &auth, action).await?;
    super::complete_grant(&state, &grant).await?;
    Ok((status, Json(grant)))
}

/// The project's pushes: who pushed what, as authenticated.
#[utoipa::path(get, path = "/api/v1/projects/{name}/pushes", tag = "projects", security(("token" = [])), params(PageQuery),
    responses((status = 200, body = Page<PushView>)))]
pub(crate) async fn pushes(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
    Params(page): Params<PageQuery>,
) -> ApiResult<Json<Page<PushView>>> {
    let name = readable(&state, &auth, &name).await?;
    Ok(Json(state.store().pushes(&name, page.request()?).await?))
}

/// A commit: who pushed it first, and who it names.
#[utoipa::path(get, path = "/api/v1/projects/{name}/commits/{sha}", tag = "projects", security(("token" = [])),
    responses((status = 200, body = CommitView), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn commit(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((name, sha)): PathParam<(String, String)>,
) -> ApiResult<Json<CommitView>> {
    let name = readable(&state, &auth, &name).await?;
    Ok(Json(state.store().commit(&name, &sha).await?))
}

/// An admin asks to make another branch the default: a grant. The old
/// default branch stays protected.
#[utoipa::path(put, path = "/api/v1/projects/{name}/default-branch", tag = "projects", security(("token" = [])), request_body = BranchRequest,
    responses((status = 202, body = GrantView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn set_default_branch(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(name): PathParam<String>,
    Body(request): Body<BranchRequest>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    custody_domain::project::check_branch_name(&request.branch)?;
    let project = ProjectName::parse(&name)?;
    let access = state.store().project_access(&auth.0, &project).await?;
    let decision = custody_app::projects::decide_default_branch(
        state.hosting().repositories(),
        &project,
        &access.default_branch,
        &request.branch,
    )
    .await?;
    if !decision.allowed {
        return Err(custody_store::StoreError::Refused(decision).into());
    }
    let action = GrantAction::SetDefaultBranch { project, branch: request.branch };
    super::grant_requested(&state, &auth, action).await
}
