//! Environments and deployments: what is live where, asking for a
//! deployment, and the decisions people take on it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use custody_api::{DeploymentAndGate, DeploymentRecord, EnvironmentDetail, EnvironmentView, SecretRequested};
use custody_app::releases::EnvironmentState;
use custody_domain::{ProjectName, Scope};
use custody_store::{DeployDecision, DeploymentView, ProjectAccess};
use serde::Deserialize;

use super::{Params, PathParam};
use crate::auth::{Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

use super::project_access as access;
use custody_api::{DecisionRequest, DeployRequest, ResolveRequest, SecretRequest, SignOffRequest};

async fn environments(state: &AppState, access: &ProjectAccess) -> ApiResult<Vec<EnvironmentView>> {
    let states =
        custody_app::releases::environment_states(state.store(), state.hosting().repositories(), access).await?;
    Ok(states
        .into_iter()
        .map(|EnvironmentState { environment: e, live, waiting }| EnvironmentView {
            name: e.name,
            after: e.after,
            approvals: e.approvals,
            approvers: e.approvers.as_ref().map(ToString::to_string),
            testers: e.testers.as_ref().map(ToString::to_string),
            soak_seconds: e.soak.map(|s| s.as_secs()),
            reviewers_may_approve: e.reviewers_may_approve,
            live,
            waiting,
        })
        .collect())
}

/// A project's environments, in the order of its pipeline file.
#[utoipa::path(get, path = "/api/v1/projects/{name}/environments", tag = "deployments", security(("token" = [])),
    responses((status = 200, body = Vec<EnvironmentView>)))]
pub(crate) async fn list_environments(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(project): PathParam<String>,
) -> ApiResult<Json<Vec<EnvironmentView>>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(environments(&state, &access).await?))
}

/// One environment: its gate, what is live, what waits, and its history.
#[utoipa::path(get, path = "/api/v1/projects/{name}/environments/{environment}", tag = "deployments", security(("token" = [])),
    responses((status = 200, body = EnvironmentDetail), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn get_environment(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, name)): PathParam<(String, String)>,
) -> ApiResult<Json<EnvironmentDetail>> {
    let access = access(&state, &auth, &project).await?;
    let environment =
        environments(&state, &access).await?.into_iter().find(|e| e.name == name).ok_or_else(|| {
            ApiError::not_found(format!("the mainline's pipeline file defines no environment {name:?}"))
        })?;
    let history = state.store().list_deployments(&access, Some(&name)).await?;
    Ok(Json(EnvironmentDetail { environment, history }))
}

/// Which deployments.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeploymentQuery {
    /// Only those to this environment.
    environment: Option<String>,
}

/// A project's deployments, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{name}/deployments", tag = "deployments", security(("token" = [])), params(DeploymentQuery),
    responses((status = 200, body = Vec<DeploymentView>)))]
pub(crate) async fn list_deployments(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(project): PathParam<String>,
    Params(query): Params<DeploymentQuery>,
) -> ApiResult<Json<Vec<DeploymentView>>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().list_deployments(&access, query.environment.as_deref()).await?))
}

/// One deployment with the decisions taken on it.
#[utoipa::path(get, path = "/api/v1/projects/{name}/deployments/{number}", tag = "deployments", security(("token" = [])),
    responses((status = 200, body = DeploymentView), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn get_deployment(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<DeploymentView>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().get_deployment(&access, number).await?))
}

/// Every rule of a deployment's gate, passed or failed, with what would
/// satisfy each.
#[utoipa::path(get, path = "/api/v1/projects/{name}/deployments/{number}/gate", tag = "deployments", security(("token" = [])),
    responses((status = 200, body = DeploymentAndGate)))]
pub(crate) async fn gate(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<DeploymentAndGate>> {
    let access = access(&state, &auth, &project).await?;
    let deployment = state.store().get_deployment(&access, number).await?;
    let context = state.release_context(&access, &deployment.environment, &deployment.commit).await?;
    let release = context.changes.clone();
    let (deployment, gate) = state.store().deployment_gate(&access, number, context).await?;
    Ok(Json(DeploymentAndGate { deployment, gate, release }))
}

/// Asks for a deployment; it waits for its gate.
#[utoipa::path(post, path = "/api/v1/projects/{name}/deployments", tag = "deployments", security(("token" = [])), request_body = DeployRequest,
    responses((status = 201, body = DeploymentAndGate), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn request(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(project): PathParam<String>,
    Body(request): Body<DeployRequest>,
) -> ApiResult<(StatusCode, Json<DeploymentAndGate>)> {
    auth.require(Scope::Write)?;
    let access = access(&state, &auth, &project).await?;
    if request.break_glass.as_deref().is_some_and(|r| r.trim().is_empty()) {
        return Err(ApiError::invalid("say why the glass is broken: break_glass needs a reason"));
    }
    let build = state.store().get_build(&access, request.build).await?;
    let context = state.release_context(&access, &request.environment, &build.commit).await?;
    let release = context.changes.clone();
    let (deployment, gate) =
        state.store().request_deployment(&auth.0, &access, request.build, context, request.break_glass).await?;
    Ok((StatusCode::CREATED, Json(DeploymentAndGate { deployment, gate, release })))
}

async fn decide(
    state: &AppState,
    auth: &Auth,
    project: &str,
    number: i64,
    decision: DeployDecision,
    message: Option<String>,
) -> ApiResult<Json<DeploymentAndGate>> {
    auth.require(Scope::Write)?;
    let access = access(state, auth, project).await?;
    let deployment = state.store().get_deployment(&access, number).await?;
    let context = state.release_context(&access, &deployment.environment, &deployment.commit).await?;
    let release = context.changes.clone();
    let (deployment, gate) = state
        .store()
        .decide_deployment(&auth.0, &access, number, decision, message.unwrap_or_default(), context)
        .await?;
    Ok(Json(DeploymentAndGate { deployment, gate, release }))
}

/// Approves a pending deployment.
#[utoipa::path(post, path = "/api/v1/projects/{name}/deployments/{number}/approve", tag = "deployments", security(("token" = [])), request_body = DecisionRequest,
    responses((status = 200, body = DeploymentAndGate), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn approve(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Body(request): Body<DecisionRequest>,
) -> ApiResult<Json<DeploymentAndGate>> {
    decide(&state, &auth, &project, number, DeployDecision::Approve, request.message).await
}

/// Rejects a pending deployment, saying why.
#[utoipa::path(post, path = "/api/v1/projects/{name}/deployments/{number}/reject", tag = "deployments", security(("token" = [])), request_body = DecisionRequest,
    responses((status = 200, body = DeploymentAndGate), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn reject(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Body(request): Body<DecisionRequest>,
) -> ApiResult<Json<DeploymentAndGate>> {
    decide(&state, &auth, &project, number, DeployDecision::Reject, request.message).await
}

/// Signs off a pending deployment's manual tests as passed or failed.
#[utoipa::path(post, path = "/api/v1/projects/{name}/deployments/{number}/sign-off", tag = "deployments", security(("token" = [])), request_body = SignOffRequest,
    responses((status = 200, body = DeploymentAndGate), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn sign_off(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Body(request): Body<SignOffRequest>,
) -> ApiResult<Json<DeploymentAndGate>> {
    let decision = match request.passed {
        Some(true) => DeployDecision::TestPassed,
        Some(false) => DeployDecision::TestFailed,
        None => return Err(ApiError::invalid("say whether the tests passed: \"passed\": true or false")),
    };
    decide(&state, &auth, &project, number, decision, request.message).await
}

/// Cancels a deployment that has not started.
#[utoipa::path(post, path = "/api/v1/projects/{name}/deployments/{number}/cancel", tag = "deployments", security(("token" = [])), request_body = DecisionRequest,
    responses((status = 200, body = DeploymentView), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Body(request): Body<DecisionRequest>,
) -> ApiResult<Json<DeploymentView>> {
    auth.require(Scope::Write)?;
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().cancel_deployment(&auth.0, &access, number, request.message.unwrap_or_default()).await?))
}

/// Who reads a deployment's log: as the mainline's pipeline and the
/// deployed commit's define its environment, each restriction holding.
pub(crate) async fn log_readers(
    state: &AppState,
    access: &ProjectAccess,
    deployment: &DeploymentView,
) -> ApiResult<Vec<custody_domain::GroupName>> {
    let repository = state.hosting().repositories().path(&access.project);
    let (branch, commit, environment) =
        (access.default_branch.clone(), deployment.commit.clone(), deployment.environment.clone());
    tokio::task::spawn_blocking(move || -> Result<Vec<custody_domain::GroupName>, String> {
        let policies = [
            custody_app::releases::mainline_pipeline(&repository, &branch)?,
            custody_app::releases::pipeline_at(&repository, &commit)?,
        ];
        let mut groups: Vec<_> = policies
            .iter()
            .flat_map(|p| p.environments.iter().filter(|e| e.name == environment).filter_map(|e| e.log_readers.clone()))
            .collect();
        groups.dedup();
        Ok(groups)
    })
    .await
    .map_err(|_| ApiError::invalid("reading the repository failed"))?
    .map_err(|why| ApiError::new(StatusCode::CONFLICT, "invalid_pipeline", why))
}

/// A deployment's log and its attestation (a DSSE envelope signed by the
/// deployer key), once it ran.
#[utoipa::path(get, path = "/api/v1/projects/{name}/deployments/{number}/record", tag = "deployments", security(("token" = [])),
    responses((status = 200, body = DeploymentRecord)))]
pub(crate) async fn record(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<DeploymentRecord>> {
    let access = access(&state, &auth, &project).await?;
    let deployment = state.store().get_deployment(&access, number).await?;
    let log_readers = log_readers(&state, &access, &deployment).await?;
    let (log, attestation) = state.store().deployment_log(&auth.0, &access, number, &log_readers).await?;
    let attestation = attestation.map(|a| serde_json::from_str(&a)).transpose().map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the stored attestation is damaged")
    })?;
    Ok(Json(DeploymentRecord { log, attestation }))
}

/// Which findings.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct FindingQuery {
    /// Only those nobody has reviewed yet.
    open: Option<bool>,
}

/// Findings an auditor must look at (break-glass deployments), newest
/// first. Admins and auditors.
#[utoipa::path(get, path = "/api/v1/findings", tag = "deployments", security(("token" = [])), params(FindingQuery),
    responses((status = 200, body = Vec<custody_store::FindingView>)))]
pub(crate) async fn list_findings(
    State(state): State<AppState>,
    auth: Auth,
    Params(query): Params<FindingQuery>,
) -> ApiResult<Json<Vec<custody_store::FindingView>>> {
    auth.require_overseer()?;
    Ok(Json(state.store().list_findings(query.open.unwrap_or(false)).await?))
}

/// Records an admin's review of a finding; nobody involved in what it is
/// about may.
#[utoipa::path(post, path = "/api/v1/findings/{id}/resolve", tag = "deployments", security(("token" = [])), request_body = ResolveRequest,
    responses((status = 200, body = custody_store::FindingView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn resolve_finding(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(id): PathParam<i64>,
    Body(request): Body<ResolveRequest>,
) -> ApiResult<Json<custody_store::FindingView>> {
    auth.require(Scope::Admin)?;
    Ok(Json(state.store().resolve_finding(&auth.0, id, request.message.unwrap_or_default()).await?))
}

/// Sets a new version of an environment secret: sealed at once, current
/// when a second admin approves the grant. Admins only.
#[utoipa::path(post, path = "/api/v1/projects/{name}/environments/{environment}/secrets", tag = "deployments", security(("token" = [])), request_body = SecretRequest,
    responses((status = 202, body = SecretRequested), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn set_secret(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, environment)): PathParam<(String, String)>,
    Body(request): Body<SecretRequest>,
) -> ApiResult<(StatusCode, Json<SecretRequested>)> {
    auth.require(Scope::Admin)?;
    let project = ProjectName::parse(&project)?;
    custody_domain::name::check_environment_name(&environment)?;
    if request.value.is_empty() {
        return Err(ApiError::invalid("the secret's value is empty"));
    }
    let sealing = state.clone();
    let value = request.value;
    let (version, grant) = state
        .store()
        .request_secret(&auth.0, &project, environment, request.name, move |slot| {
            let sealed = sealing.sealing_key().seal(slot, value.as_bytes());
            (sealed.nonce, sealed.ciphertext)
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(SecretRequested { version, grant })))
}

/// The secrets of an environment: names and versions, never values.
#[utoipa::path(get, path = "/api/v1/projects/{name}/environments/{environment}/secrets", tag = "deployments", security(("token" = [])),
    responses((status = 200, body = Vec<custody_store::SecretView>)))]
pub(crate) async fn list_secrets(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, environment)): PathParam<(String, String)>,
) -> ApiResult<Json<Vec<custody_store::SecretView>>> {
    custody_domain::name::check_environment_name(&environment)?;
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().list_secrets(&access.project, &environment).await?))
}
