//! An environment: its gate, what is live, the deployments waiting with
//! their gate rule by rule and the visitor's buttons (approve, reject, test
//! sign-off), each disabled with the reason when the rules would refuse it,
//! and its history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use custody_store::{DeployDecision, DeploymentView, ProjectAccess};

use maud::{html, Markup};

use super::html::{self, seg, short, status};
use super::projects::{access, environments, with_decisions};
use super::session::{see_other, Posted, Visitor};
use super::{WebError, WebPath, WebResult};
use crate::AppState;

/// The decisions taken on a deployment, in order.
pub(crate) fn decisions(deployment: &DeploymentView) -> Markup {
    html! {
        @if deployment.decisions.is_empty() { "—" }
        @for (i, d) in deployment.decisions.iter().enumerate() {
            @if i > 0 { br; }
            (status(&d.kind)) " " (d.user)
            @if !d.message.is_empty() { ": “" (d.message) "”" }
        }
    }
}

/// One environment.
pub(crate) async fn environment(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, name)): WebPath<(String, String)>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    let mut history = state.store().list_deployments(&access, Some(&name)).await?;
    with_decisions(&state, &access, Some(&name), &mut history).await?;
    let mut env = match environments(&state, &access).await? {
        Ok(list) => list.into_iter().find(|e| e.environment.name == name),
        Err(why) => return Err(WebError::new(StatusCode::CONFLICT, why)),
    }
    .ok_or_else(|| {
        WebError::new(StatusCode::NOT_FOUND, format!("the mainline's pipeline file defines no environment {name:?}"))
    })?;
    with_decisions(&state, &access, Some(&name), &mut env.waiting).await?;
    let e = &env.environment;
    let p = seg(&project);
    let mut waiting = Vec::with_capacity(env.waiting.len());
    for deployment in &env.waiting {
        waiting.push(waiting_deployment(&state, &access, &visitor, e, deployment, &p, false).await?);
    }
    let request = super::deployment::request_form(&state, &access, &visitor, e, env.live.as_ref()).await?;
    let body = html! {
        p.crumbs { a href="/projects" { "Projects" } " / " a href={ "/projects/" (p) } { (project) } " /" }
        h1 { "Environment " (name) }
        (gate_and_live(e, env.live.as_ref(), &p))
        h2 { "Waiting" }
        @if waiting.is_empty() { p.empty { "Nothing waits." } }
        @for w in waiting { (w) }
        (request)
        (history_table(&history, &p, visitor.auth.reads_everything()))
    };
    Ok(html::page(&format!("Environment {name}"), Some(&visitor), body).into_response())
}

/// The environment's gate as the mainline defines it, and what is live.
fn gate_and_live(e: &custody_domain::pipeline::Environment, live: Option<&DeploymentView>, p: &str) -> Markup {
    html! {
        section {
            h2 { "Gate and what is live" }
            dl.facts {
                dt { "After" } dd { (e.after.as_deref().unwrap_or("— (deployed after each build)")) }
                dt { "Approvals" }
                dd { (e.approvals) " from " (e.approvers.as_ref().map(ToString::to_string).unwrap_or_else(|| "nobody".into())) }
                dt { "Manual tests" }
                dd { (e.testers.as_ref().map(|t| format!("signed off by a member of {t}")).unwrap_or_else(|| "none".into())) }
                @if let Some(soak) = e.soak { dt { "Soak" } dd { (soak.as_secs()) " s in the previous environment" } }
                dt { "Reviewers may approve" } dd { (if e.reviewers_may_approve { "yes" } else { "no" }) }
                dt { "Live" }
                @match live {
                    Some(d) => dd #live {
                        a href={ "/projects/" (p) "/builds/" (d.build) } { "build " (d.build) } " "
                        code.sha { (short(&d.commit)) } " since " (d.finished_at.map(html::when).unwrap_or_default())
                    },
                    None => dd #live { "nothing yet" },
                }
            }
        }
    }
}

/// A deployment waiting: its gate, the decisions so far, and the buttons
/// the visitor may use, each disabled with the domain's reason when it
/// would be refused.
///
/// On the deployment's own page (`own_page`), a decision returns there;
/// elsewhere, to the environment.
pub(crate) async fn waiting_deployment(
    state: &AppState,
    access: &ProjectAccess,
    visitor: &Visitor,
    e: &custody_domain::pipeline::Environment,
    waiting: &DeploymentView,
    p: &str,
    own_page: bool,
) -> WebResult<Markup> {
    let heading = html! {
        h3 {
            a href={ "/projects/" (p) "/deployments/" (waiting.number) } { "Deployment " (waiting.number) }
            " of " a href={ "/projects/" (p) "/builds/" (waiting.build) } { "build " (waiting.build) }
            " " (html::badge(waiting.status))
        }
        p.meta {
            "commit " code.sha { (short(&waiting.commit)) } " · requested by "
            (waiting.requested_by.as_deref().unwrap_or("custody (promotion)"))
            @if let Some(reason) = &waiting.break_glass { " · " strong { "break-glass" } ": " (reason) }
        }
    };
    let id = format!("deployment-{}", waiting.number);
    if waiting.status != custody_domain::status::DeploymentStatus::Pending {
        return Ok(html! {
            section.deployment id=(id) { (heading) p.hint { "Its gate is open: the deployer runs it." } }
        });
    }
    let context = state.release_context(access, &waiting.environment, &waiting.commit).await?;
    let (_, gate, standing) =
        state.store().deployment_standing(access, waiting.number, context, &visitor.auth.name).await?;
    let member = custody_domain::access::decide_deploy_member(
        &visitor.auth.name,
        &access.project,
        access.role,
        visitor.auth.scopes,
        custody_domain::access::DeployAction::Decide,
    );
    let action = format!("/projects/{p}/deployments/{}/decide", waiting.number);
    Ok(html! {
        section.deployment id=(id) {
            (heading)
            div.gate data-open=(gate.open) { h4 { "Gate" } (html::rules(&gate.rules)) }
            p.meta { "Decisions: " (decisions(waiting)) }
            @if !member.allowed {
                div.hint.decide-refusal { (html::refusal_notes(&member)) }
            } @else {
                (html::post_form(&action, visitor, "decide", html! {
                    @if own_page { input type="hidden" name="from" value="deployment"; }
                    label { "Message " textarea name="message" rows="2" class="decision-message" {} }
                    div.buttons {
                        button type="submit" name="decision" value="approve" class="primary approve-deployment" disabled[standing.approve.is_some()] { "Approve" }
                        button type="submit" name="decision" value="reject" class="reject-deployment" disabled[standing.approve.is_some()] { "Reject" }
                        @if e.testers.is_some() {
                            button type="submit" name="decision" value="test_passed" class="tests-passed" disabled[standing.sign_off.is_some()] { "Tests passed" }
                            button type="submit" name="decision" value="test_failed" class="tests-failed" disabled[standing.sign_off.is_some()] { "Tests failed" }
                        }
                    }
                }))
                @if let Some(reason) = &standing.approve { div.approve-refusal { (html::refusal_note(reason)) } }
                @if let (Some(reason), Some(_)) = (&standing.sign_off, &e.testers) {
                    div.sign-off-refusal { (html::refusal_note(reason)) }
                }
            }
        }
    })
}

/// Every deployment to the environment, newest first.
fn history_table(history: &[DeploymentView], p: &str, overseer: bool) -> Markup {
    html! {
        h2 { "History" }
        @if history.is_empty() {
            p.empty { "No deployment yet." }
        } @else {
            table.list #history {
                thead {
                    tr {
                        th { "#" } th { "Build" } th { "Status" } th { "Requested by" } th { "Decisions" } th { "Finished" }
                        @if overseer { th { "Evidence" } }
                    }
                }
                tbody {
                    @for d in history {
                        tr {
                            td { a href={ "/projects/" (p) "/deployments/" (d.number) } { (d.number) } }
                            td { a href={ "/projects/" (p) "/builds/" (d.build) } { "build " (d.build) } " " code.sha { (short(&d.commit)) } }
                            td { (html::badge(d.status)) @if let Some(r) = &d.reason { div.hint { (r) } } }
                            td { (d.requested_by.as_deref().unwrap_or("custody (promotion)")) }
                            td { (decisions(d)) }
                            td { (d.finished_at.map(html::when).unwrap_or_default()) }
                            @if overseer {
                                td {
                                    @if d.status == custody_domain::status::DeploymentStatus::Succeeded {
                                        a.evidence href={ "/projects/" (p) "/deployments/" (d.number) "/evidence" } download {
                                            "bundle"
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A deployment's evidence bundle, downloaded by an admin or auditor: the
/// same bundle as `custody evidence export`, for `custody verify`.
pub(crate) async fn evidence(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, number)): WebPath<(String, i64)>,
) -> WebResult<Response> {
    let query = crate::api::evidence::EvidenceQuery { deployment: Some(number), artifact: None };
    bundle_download(state, visitor, project, query, format!("deployment-{number}")).await
}

/// An artifact's evidence bundle, as for a deployment.
pub(crate) async fn artifact_evidence(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, digest)): WebPath<(String, String)>,
) -> WebResult<Response> {
    let name = format!("artifact-{}", short(&digest));
    let query = crate::api::evidence::EvidenceQuery { deployment: None, artifact: Some(digest) };
    bundle_download(state, visitor, project, query, name).await
}

async fn bundle_download(
    state: AppState,
    visitor: Visitor,
    project: String,
    query: crate::api::evidence::EvidenceQuery,
    name: String,
) -> WebResult<Response> {
    let auth = crate::auth::Auth(visitor.auth.clone());
    let axum::Json(bundle) = crate::api::evidence::export_bundle(state, auth, project.clone(), query).await?;
    let body = serde_json::to_vec_pretty(&bundle)
        .map_err(|_| WebError::new(StatusCode::INTERNAL_SERVER_ERROR, "the bundle could not be written"))?;
    // The file's name is made of a project name and digits only.
    let file = format!("attachment; filename=\"{project}-{name}.evidence.json\"");
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/vnd.custody.evidence.v2+json".to_owned()),
            (axum::http::header::CONTENT_DISPOSITION, file),
        ],
        body,
    )
        .into_response())
}

/// Records a decision on a pending deployment, through the same store call
/// as the API, and returns to its environment; a refusal shows its reasons.
pub(crate) async fn decide(
    State(state): State<AppState>,
    WebPath((project, number)): WebPath<(String, i64)>,
    posted: Posted,
) -> WebResult<Response> {
    let access = access(&state, &posted.visitor, &project).await?;
    let deployment = state.store().get_deployment(&access, number).await?;
    let back = match posted.get("from") {
        Some("deployment") => format!("/projects/{}/deployments/{number}", seg(&project)),
        _ => format!("/projects/{}/environments/{}", seg(&project), seg(&deployment.environment)),
    };
    let decision = match posted.get("decision") {
        Some("approve") => DeployDecision::Approve,
        Some("reject") => DeployDecision::Reject,
        Some("test_passed") => DeployDecision::TestPassed,
        Some("test_failed") => DeployDecision::TestFailed,
        _ => return Err(WebError::invalid("choose approve, reject, tests passed or tests failed").back(back)),
    };
    if !posted.visitor.auth.has_scope(custody_domain::Scope::Write) {
        return Err(WebError::forbidden("this session may only read").back(back));
    }
    let context = state
        .release_context(&access, &deployment.environment, &deployment.commit)
        .await
        .map_err(|e| WebError::from(e).back(back.clone()))?;
    state
        .store()
        .decide_deployment(&posted.visitor.auth, &access, number, decision, posted.text("message"), context)
        .await
        .map_err(|e| WebError::from(e).back(back.clone()))?;
    Ok(see_other(&format!("{back}#deployment-{number}")))
}
