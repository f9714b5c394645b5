//! Change requests: open, review, gate, merge.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use custody_api::{AuthorView, ChangeDetail, Merged};
use custody_domain::gate::{GateReport, Verdict};
use custody_domain::project::check_branch_name;
use custody_store::{ChangeView, Page, ReviewView};
use serde::Deserialize;

use super::{Params, PathParam};
use crate::auth::{Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

use super::project_access as access;
use custody_api::{CommentRequest, CommentView, EditChangeRequest, OpenChangeRequest, ReviewRequest};

/// Opens a change from a pushed branch.
#[utoipa::path(post, path = "/api/v1/projects/{name}/changes", tag = "changes", security(("token" = [])), request_body = OpenChangeRequest,
    responses((status = 201, body = ChangeView), (status = 400, body = custody_api::ErrorBody), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn open_change(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(project): PathParam<String>,
    Body(request): Body<OpenChangeRequest>,
) -> ApiResult<(StatusCode, Json<ChangeView>)> {
    let access = access(&state, &auth, &project).await?;
    let target = request.target.unwrap_or_else(|| access.default_branch.clone());
    check_branch_name(&request.source)?;
    check_branch_name(&target)?;
    if request.source == target {
        return Err(ApiError::invalid("the source and target branches are the same"));
    }
    let repository = state.hosting().repositories().path(&access.project);
    let source_ref = format!("refs/heads/{}", request.source);
    let head = tokio::task::spawn_blocking(move || custody_git::change::resolve(&repository, &source_ref))
        .await
        .map_err(|_| ApiError::invalid("reading the repository failed"))?
        .map_err(|_| ApiError::invalid("reading the repository failed"))?
        .ok_or_else(|| ApiError::invalid(format!("branch {} does not exist; push it first", request.source)))?;
    let change = state
        .store()
        .open_change(
            &auth.0,
            &access,
            request.source,
            target,
            request.title,
            request.description.unwrap_or_default(),
            head,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(change)))
}

/// Which changes.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ChangeQuery {
    /// `open`, `closed` or `merged`.
    #[param(pattern = "^(open|closed|merged)$")]
    state: Option<String>,
    after: Option<i64>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A project's changes.
#[utoipa::path(get, path = "/api/v1/projects/{name}/changes", tag = "changes", security(("token" = [])), params(ChangeQuery),
    responses((status = 200, body = Page<ChangeView>)))]
pub(crate) async fn list_changes(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(project): PathParam<String>,
    Params(query): Params<ChangeQuery>,
) -> ApiResult<Json<Page<ChangeView>>> {
    let access = access(&state, &auth, &project).await?;
    if let Some(s) = &query.state {
        if !["open", "closed", "merged"].contains(&s.as_str()) {
            return Err(ApiError::invalid("state must be open, closed or merged"));
        }
    }
    let page = super::PageQuery { after: query.after, limit: query.limit }.request()?;
    Ok(Json(state.store().list_changes(&access, query.state.as_deref(), page).await?))
}

/// One change, with its authors, reviews and gate.
#[utoipa::path(get, path = "/api/v1/projects/{name}/changes/{number}", tag = "changes", security(("token" = [])),
    responses((status = 200, body = ChangeDetail), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn get_change(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<ChangeDetail>> {
    let access = access(&state, &auth, &project).await?;
    let (_, records, gate) = state.changes().gate_of(&access, number).await?;
    let authors =
        records.authors.iter().map(|(user, why)| AuthorView { user: user.to_string(), why: why.clone() }).collect();
    Ok(Json(ChangeDetail { change: records.change, authors, gate }))
}

/// Changes an open change's title or description (a writer of the
/// project); a merged or closed change keeps its words.
#[utoipa::path(patch, path = "/api/v1/projects/{name}/changes/{number}", tag = "changes", security(("token" = [])),
    request_body = EditChangeRequest,
    responses((status = 200, body = ChangeView), (status = 400, body = custody_api::ErrorBody),
        (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn edit_change(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Body(request): Body<EditChangeRequest>,
) -> ApiResult<Json<ChangeView>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().edit_change(&auth.0, &access, number, request.title, request.description).await?))
}

/// The change's line comments, oldest first, each thread marked outdated
/// when its line no longer reads the same at the current head.
#[utoipa::path(get, path = "/api/v1/projects/{name}/changes/{number}/comments", tag = "changes", security(("token" = [])),
    responses((status = 200, body = Vec<CommentView>)))]
pub(crate) async fn comments(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<Vec<CommentView>>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(custody_app::comments::comments(state.store(), state.hosting().repositories(), &access, number).await?))
}

/// Comments on a line of the change's current head (`path`, `line`,
/// `head`), or replies to a thread (`reply_to`).
#[utoipa::path(post, path = "/api/v1/projects/{name}/changes/{number}/comments", tag = "changes", security(("token" = [])),
    request_body = CommentRequest,
    responses((status = 201, body = CommentView), (status = 400, body = custody_api::ErrorBody),
        (status = 403, body = custody_api::ErrorBody), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn comment(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Body(request): Body<CommentRequest>,
) -> ApiResult<(StatusCode, Json<CommentView>)> {
    let access = access(&state, &auth, &project).await?;
    let made = match request {
        CommentRequest::Reply(reply) => {
            let reply = custody_store::NewComment::Reply { to: reply.reply_to, body: reply.body };
            state.store().add_comment(&auth.0, &access, number, reply).await?
        }
        CommentRequest::Line(line) => {
            custody_app::comments::start_thread(
                state.store(),
                state.hosting().repositories(),
                &auth.0,
                &access,
                number,
                line.path,
                line.line,
                line.head,
                line.body,
            )
            .await?
        }
    };
    Ok((StatusCode::CREATED, Json(made)))
}

/// Resolves a thread of comments, by its first comment.
#[utoipa::path(post, path = "/api/v1/projects/{name}/changes/{number}/comments/{id}/resolve", tag = "changes",
    security(("token" = [])),
    responses((status = 200, body = CommentView), (status = 403, body = custody_api::ErrorBody),
        (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn resolve_comment(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number, id)): PathParam<(String, i64, i64)>,
) -> ApiResult<Json<CommentView>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().resolve_thread(&auth.0, &access, number, id).await?))
}

/// The change's diff against where it forked from its target.
#[utoipa::path(get, path = "/api/v1/projects/{name}/changes/{number}/diff", tag = "changes", security(("token" = [])),
    responses((status = 200, content_type = "text/plain", body = String)))]
pub(crate) async fn diff(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<impl IntoResponse> {
    let access = access(&state, &auth, &project).await?;
    let change = state.store().get_change(&access.project, number).await?;
    let repository = state.hosting().repositories().path(&access.project);
    let head = change.head.clone();
    let text = tokio::task::spawn_blocking(move || {
        let base = custody_git::change::resolve(&repository, &format!("refs/heads/{}", change.target_branch))?;
        custody_git::change::diff(&repository, base.as_deref(), &change.head)
    })
    .await
    .map_err(|_| ApiError::invalid("reading the repository failed"))?
    .map_err(|_| ApiError::invalid("reading the repository failed"))?;
    // The head this diff ends at: what an approval of it must name.
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()), (HEAD_HEADER, head)], text))
}

/// The gate, rule by rule.
#[utoipa::path(get, path = "/api/v1/projects/{name}/changes/{number}/gate", tag = "changes", security(("token" = [])),
    responses((status = 200, body = GateReport)))]
pub(crate) async fn gate(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<GateReport>> {
    let access = access(&state, &auth, &project).await?;
    let (_, _, report) = state.changes().gate_of(&access, number).await?;
    Ok(Json(report))
}

/// The header of a change's diff that names the head it ends at.
pub(crate) const HEAD_HEADER: header::HeaderName = header::HeaderName::from_static("x-custody-head");

/// Reviews the change's current head.
#[utoipa::path(post, path = "/api/v1/projects/{name}/changes/{number}/reviews", tag = "changes", security(("token" = [])), request_body = ReviewRequest,
    responses((status = 201, body = ReviewView), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn review(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Body(request): Body<ReviewRequest>,
) -> ApiResult<(StatusCode, Json<ReviewView>)> {
    let access = access(&state, &auth, &project).await?;
    let verdict = Verdict::parse(&request.verdict)
        .ok_or_else(|| ApiError::invalid("verdict must be approve, request_changes, comment or withdraw"))?;
    if verdict == Verdict::Approve && request.head.as_deref().is_none_or(str::is_empty) {
        // An approval binds to what its reviewer read, never to whatever
        // the head is when it arrives.
        return Err(ApiError::invalid(
            "an approval names the head you reviewed: give head, the commit the change's page,              `custody change show` or the diff's X-Custody-Head showed you",
        ));
    }
    let review = state
        .store()
        .review(&auth.0, &access, number, verdict, request.message.unwrap_or_default(), request.head)
        .await?;
    Ok((StatusCode::CREATED, Json(review)))
}

/// Closes a change.
#[utoipa::path(post, path = "/api/v1/projects/{name}/changes/{number}/close", tag = "changes", security(("token" = [])),
    responses((status = 200, body = ChangeView)))]
pub(crate) async fn close(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<ChangeView>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().set_change_state(&auth.0, &access, number, false).await?))
}

/// Reopens a closed change.
#[utoipa::path(post, path = "/api/v1/projects/{name}/changes/{number}/reopen", tag = "changes", security(("token" = [])),
    responses((status = 200, body = ChangeView)))]
pub(crate) async fn reopen(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<ChangeView>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().set_change_state(&auth.0, &access, number, true).await?))
}

/// How to merge.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct MergeQuery {
    /// Merge as soon as the gate opens, if it is closed now.
    auto: Option<bool>,
    /// `false`: do not wait for the merge; queue the change, and custody
    /// merges it in its turn once its gate is open (202).
    wait: Option<bool>,
}

/// Merges the change if its gate is open; refused with every failing rule
/// otherwise, or, with `auto=true`, merged by custody as soon as it opens.
#[utoipa::path(post, path = "/api/v1/projects/{name}/changes/{number}/merge", tag = "changes", security(("token" = [])), params(MergeQuery),
    responses((status = 200, body = Merged), (status = 202, body = Merged), (status = 403, body = custody_api::ErrorBody)))]
pub(crate) async fn merge(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Params(query): Params<MergeQuery>,
) -> ApiResult<(StatusCode, Json<Merged>)> {
    let access = access(&state, &auth, &project).await?;
    if query.auto == Some(true) || query.wait == Some(false) {
        let (_, _, gate) = state.changes().gate_of(&access, number).await?;
        if !gate.open || query.wait == Some(false) {
            state.store().request_auto_merge(&auth.0, &access, number).await?;
            let change = state.store().get_change(&access.project, number).await?;
            return Ok((StatusCode::ACCEPTED, Json(Merged { change, gate, auto_merge: true })));
        }
    }
    let (change, gate) = state.changes().merge(&auth.0, &access, number).await?;
    Ok((StatusCode::OK, Json(Merged { change, gate, auto_merge: false })))
}

/// The project's merge queue: merges whose ref is moving, then the changes
/// custody merges in turn as their gates open.
#[utoipa::path(get, path = "/api/v1/projects/{name}/merge-queue", tag = "changes", security(("token" = [])),
    responses((status = 200, body = custody_store::MergeQueue), (status = 404, body = custody_api::ErrorBody)))]
pub(crate) async fn merge_queue(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(project): PathParam<String>,
) -> ApiResult<Json<custody_store::MergeQueue>> {
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().merge_queue(&access.project).await?))
}

/// The signed change attestation of a merged change: a DSSE envelope whose
/// payload is an in-toto Statement v1, signed with the gate key.
#[utoipa::path(get, path = "/api/v1/projects/{name}/changes/{number}/attestation", tag = "changes", security(("token" = [])),
    responses((status = 200, body = Object), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn attestation(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<serde_json::Value>> {
    let access = access(&state, &auth, &project).await?;
    let envelope = state.store().attestation(&access, number).await?;
    let value = serde_json::from_str(&envelope).map_err(|_| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the stored attestation is damaged")
    })?;
    Ok(Json(value))
}

/// Whether to include logs.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ChecksQuery {
    /// Include each run's output.
    log: Option<bool>,
}

/// The check runs of a change, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{name}/changes/{number}/checks", tag = "changes", security(("token" = [])), params(ChecksQuery),
    responses((status = 200, body = Vec<custody_store::CheckRunView>)))]
pub(crate) async fn checks(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
    Params(query): Params<ChecksQuery>,
) -> ApiResult<Json<Vec<custody_store::CheckRunView>>> {
    if number < 1 {
        return Err(ApiError::invalid("change numbers start at 1"));
    }
    let access = access(&state, &auth, &project).await?;
    Ok(Json(state.store().check_runs(&access, number, query.log.unwrap_or(false)).await?))
}
