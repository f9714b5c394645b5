//! One deployment: where it stands (its gate rule by rule while it waits,
//! with the visitor's buttons), the release it brings with who wrote and
//! reviewed each change, its log (followed while the script runs), and its
//! signed attestation checked against custody's deployer key. And the
//! forms that ask for a deployment, a rollback or a break-glass deployment,
//! and cancel one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use custody_domain::access::{decide_deploy_member, DeployAction};
use custody_domain::status::DeploymentStatus;
use custody_domain::Scope;
use custody_formats::attestation::ReleaseChange;
use custody_formats::KeyRole;
use custody_store::{BuildView, DeploymentView, Duty, PageRequest, ProjectAccess};
use maud::{html, Markup};
use serde::Deserialize;

use super::html::{self, seg, short};
use super::projects::{access, environments};
use super::session::{see_other, Posted, Visitor};
use super::{WebError, WebPath, WebQuery, WebResult};
use crate::AppState;

/// How many builds the request form offers, newest first.
const BUILDS_OFFERED: i64 = 50;

/// The release a deployment brings: while it waits, every change merged
/// since what is live, with the duties their merges recorded; once it ran,
/// the release its signed attestation names.
async fn release(
    state: &AppState,
    access: &ProjectAccess,
    deployment: &DeploymentView,
    attested: Option<&[ReleaseChange]>,
) -> WebResult<Vec<ReleaseChange>> {
    if let Some(attested) = attested {
        return Ok(attested.to_vec());
    }
    if !deployment.status.is_waiting() {
        return Ok(Vec::new());
    }
    let context = state.release_context(access, &deployment.environment, &deployment.commit).await?;
    let duties = state.store().release_duties(&access.project, &context.changes).await?;
    Ok(context
        .changes
        .iter()
        .map(|&change| {
            let who = |duty: Duty| {
                duties.iter().filter(|d| d.change == change && d.duty == duty).map(|d| d.user.to_string()).collect()
            };
            ReleaseChange { change, authors: who(Duty::Author), reviewers: who(Duty::Reviewer) }
        })
        .collect())
}

fn release_table(release: &[ReleaseChange], p: &str) -> Markup {
    html! {
        section {
            h2 { "The release" }
            @if release.is_empty() {
                p.empty { "No change custody merged: the commit is already live here, or came from no change." }
            } @else {
                p.hint { "Nobody who wrote or reviewed a change of the release approves it or signs off its tests." }
                table.list #release {
                    thead { tr { th { "Change" } th { "Authors" } th { "Reviewers (approved)" } } }
                    tbody {
                        @for c in release {
                            tr data-change=(c.change) {
                                td { a href={ "/projects/" (p) "/changes/" (c.change) } { "#" (c.change) } }
                                td.authors { (names(&c.authors)) }
                                td.reviewers { (names(&c.reviewers)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "—".to_owned()
    } else {
        list.join(", ")
    }
}

/// The log, when the visitor may read it: followed in place while the
/// script runs.
fn log_section(log: &Result<String, String>, follow: Option<String>) -> Markup {
    html! {
        section {
            h2 { "Log" }
            @match log {
                Err(why) => p.hint #log-refused { (why) },
                Ok(log) => {
                    @if follow.is_some() { p.hint #log-live { "The deploy script is running: its log follows here as it is written." } }
                    @if log.is_empty() && follow.is_none() { p.empty { "No output." } }
                    pre.log #deployment-log data-follow=[follow] data-after=(log.len()) { (log) }
                },
            }
        }
    }
}

/// The attestation, opened with custody's deployer key.
fn attestation_section(attestation: Option<&Result<serde_json::Value, String>>, evidence: Option<String>) -> Markup {
    html! {
        section {
            h2 { "Attestation" }
            @match attestation {
                None => p.empty { "None yet: the deployer signs one when the script ends." },
                Some(Err(why)) => p.refusal #attestation-check { (why) },
                Some(Ok(statement)) => {
                    p.notice.ok #attestation-check { "✓ custody deployment attestation, signed by custody's deployer key; the signature verifies." }
                    details { summary { "The signed statement" } pre.log { (serde_json::to_string_pretty(statement).unwrap_or_default()) } }
                },
            }
            @if let Some(href) = evidence {
                p {
                    a.evidence href=(href) download { "Download the evidence bundle" }
                    " and check it offline, where this server cannot answer for itself:"
                }
                pre.log { "custody verify BUNDLE.json --trust trust.json" }
            }
        }
    }
}

/// One deployment.
pub(crate) async fn show(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, number)): WebPath<(String, i64)>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    let deployment = state.store().get_deployment(&access, number).await?;
    let p = seg(&project);
    let environment = match environments(&state, &access).await? {
        Ok(list) => list.into_iter().find(|e| e.environment.name == deployment.environment).map(|e| e.environment),
        Err(_) => None,
    };
    let readers = crate::api::deploys::log_readers(&state, &access, &deployment).await?;
    let (log, attestation) = match state.store().deployment_log(&visitor.auth, &access, number, &readers).await {
        Ok((log, attestation)) => (Ok(log), attestation),
        Err(custody_store::StoreError::Refused(decision)) => {
            let why = decision.reasons.first().map(|r| r.message.clone()).unwrap_or_default();
            // The attestation goes with the log, as the API's record does.
            (Err(format!("This log and its attestation are not yours to read: {why}")), None)
        }
        Err(other) => return Err(other.into()),
    };
    let opened = attestation.as_deref().map(|a| super::builds::open(&state, a, KeyRole::Deployer));
    let attested: Option<Vec<ReleaseChange>> = opened
        .as_ref()
        .and_then(|o| o.as_ref().ok())
        .and_then(|statement| serde_json::from_value(statement["predicate"]["release"].clone()).ok());
    let release = release(&state, &access, &deployment, attested.as_deref()).await?;
    let running = deployment.status == DeploymentStatus::Running;
    let follow = running.then(|| format!("/projects/{p}/deployments/{number}/log"));
    let waiting = match (&environment, deployment.status) {
        (Some(e), DeploymentStatus::Pending | DeploymentStatus::Queued) => {
            Some(super::deploys::waiting_deployment(&state, &access, &visitor, e, &deployment, &p, true).await?)
        }
        _ => None,
    };
    let evidence = (visitor.auth.reads_everything() && deployment.status == DeploymentStatus::Succeeded)
        .then(|| format!("/projects/{p}/deployments/{number}/evidence"));
    let env = seg(&deployment.environment);
    let d = &deployment;
    let body = html! {
        p.crumbs {
            a href="/projects" { "Projects" } " / " a href={ "/projects/" (p) } { (project) } " / "
            a href={ "/projects/" (p) "/environments/" (env) } { (d.environment) } " /"
        }
        h1 { "Deployment " (number) " to " (d.environment) " " (html::badge(d.status)) }
        section {
            h2 { "Where it stands" }
            dl.facts #deployment-facts {
                dt { "Build" } dd { a href={ "/projects/" (p) "/builds/" (d.build) } { "build " (d.build) } " " code.sha { (d.commit) } }
                dt { "Requested by" } dd #requested-by { (d.requested_by.as_deref().unwrap_or("custody (promotion)")) }
                @if let Some(reason) = &d.break_glass { dt { "Break-glass" } dd #break-glass { strong { "yes" } ": " (reason) } }
                dt { "Asked for" } dd { (html::when(d.created_at)) }
                @if let Some(at) = d.queued_at { dt { "Gate opened" } dd { (html::when(at)) } }
                @if let Some(at) = d.finished_at { dt { "Finished" } dd { (html::when(at)) } }
                @if let Some(reason) = &d.reason { dt { "Why" } dd #deployment-reason { (reason) } }
                @if let Some(asked) = &d.cancel_requested { dt { "Stopping" } dd { (asked) } }
                @if waiting.is_none() { dt { "Decisions" } dd #decisions { (super::deploys::decisions(d)) } }
            }
        }
        @if let Some(waiting) = waiting { (waiting) }
        (cancel_form(&visitor, &access, d, &p))
        (release_table(&release, &p))
        (log_section(&log, follow))
        @if log.is_ok() { (attestation_section(opened.as_ref(), evidence)) }
    };
    let title = format!("Deployment {number}");
    // Queued or running, it changes by itself; a pending one waits for
    // people, and reloading would lose what they type.
    if matches!(d.status, DeploymentStatus::Queued | DeploymentStatus::Running) {
        return Ok(html::live_page(&title, Some(&visitor), body, 3).into_response());
    }
    Ok(html::page(&title, Some(&visitor), body).into_response())
}

/// The cancel button of a deployment not yet finished, or why the visitor
/// may not cancel it.
fn cancel_form(visitor: &Visitor, access: &ProjectAccess, d: &DeploymentView, p: &str) -> Markup {
    if !d.status.is_waiting() || d.cancel_requested.is_some() {
        return html! {};
    }
    let member = decide_deploy_member(
        &visitor.auth.name,
        &access.project,
        access.role,
        visitor.auth.scopes,
        DeployAction::Cancel,
    );
    html! {
        section #cancel {
            h2 { "Cancel" }
            @if member.allowed {
                (html::post_form(&format!("/projects/{p}/deployments/{}/cancel", d.number), visitor, "cancel", html! {
                    label { "Why " input name="message" class="cancel-message" required; }
                    div.buttons { button type="submit" class="danger cancel-deployment" {
                        (if d.status == DeploymentStatus::Running { "Stop the deploy script" } else { "Cancel the deployment" })
                    } }
                }))
            } @else {
                (html::refusal_notes(&member))
            }
        }
    }
}

/// Cancels a deployment, through the same store call as the API.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    WebPath((project, number)): WebPath<(String, i64)>,
    posted: Posted,
) -> WebResult<Response> {
    let back = format!("/projects/{}/deployments/{number}", seg(&project));
    if !posted.visitor.auth.has_scope(Scope::Write) {
        return Err(WebError::forbidden("this session may only read").back(back));
    }
    let why = posted.text("message");
    if why.is_empty() {
        return Err(WebError::invalid("say why the deployment is cancelled").back(back));
    }
    let access = access(&state, &posted.visitor, &project).await?;
    state
        .store()
        .cancel_deployment(&posted.visitor.auth, &access, number, why)
        .await
        .map_err(|e| WebError::from(e).back(back.clone()))?;
    Ok(see_other(&back))
}

/// The form on an environment's page that asks for a deployment of a
/// chosen build: a rollback when the build is older than what is live,
/// and, with a reason, a break-glass deployment. Or why the visitor may
/// not ask.
pub(crate) async fn request_form(
    state: &AppState,
    access: &ProjectAccess,
    visitor: &Visitor,
    environment: &custody_domain::pipeline::Environment,
    live: Option<&DeploymentView>,
) -> WebResult<Markup> {
    let member = decide_deploy_member(
        &visitor.auth.name,
        &access.project,
        access.role,
        visitor.auth.scopes,
        DeployAction::Request,
    );
    if !member.allowed {
        return Ok(html! { section #request { h2 { "Ask for a deployment" } (html::refusal_notes(&member)) } });
    }
    let builds = state.store().list_builds(access, PageRequest::new(None, Some(BUILDS_OFFERED))).await?;
    let builds: Vec<&BuildView> =
        builds.items.iter().filter(|b| b.status == custody_domain::status::BuildStatus::Succeeded).collect();
    let p = seg(access.project.as_str());
    let label = |b: &BuildView| match live.map(|l| l.build) {
        Some(l) if l == b.number => format!("build {} · {} · live now", b.number, short(&b.commit)),
        Some(l) if b.number < l => format!("build {} · {} · a rollback", b.number, short(&b.commit)),
        _ => format!("build {} · {}", b.number, short(&b.commit)),
    };
    let gate = match environment.approvals {
        0 => "no approval".to_owned(),
        n => format!("{n} approval(s)"),
    };
    Ok(html! {
        section #request {
            h2 { "Ask for a deployment" }
            @if builds.is_empty() {
                p.empty { "No build has succeeded yet." }
            } @else {
                p.hint {
                    "It waits for the environment's gate (" (gate)
                    @if environment.testers.is_some() { ", manual test sign-off" }
                    @if environment.after.is_some() { ", the previous environment" }
                    "). Whoever asks may not approve it: someone else does."
                }
                (html::post_form(&format!("/projects/{p}/deployments"), visitor, "request", html! {
                    input type="hidden" name="environment" value=(environment.name);
                    label { "Build " select name="build" #request-build {
                        @for b in &builds { option value=(b.number) { (label(b)) } }
                    } }
                    details.break-glass #break-glass-form {
                        summary { "Break the glass (an emergency)" }
                        p {
                            "A break-glass deployment skips the soak time and the manual test sign-off. "
                            "It never skips the approvals, nor the previous environment: someone other than you still approves it ("
                            (environment.approvals.max(1)) " at least). "
                            "It opens a finding that an admin who was not involved must review, and its attestation names it."
                        }
                        label { "Why the glass is broken " textarea name="break_glass" rows="2" #break-glass-reason {} }
                    }
                    div.buttons { button type="submit" class="primary" #request-deployment { "Ask for this deployment" } }
                }))
            }
        }
    })
}

/// Asks for a deployment, through the same store call as the API, and
/// shows it.
pub(crate) async fn request(
    State(state): State<AppState>,
    WebPath(project): WebPath<String>,
    posted: Posted,
) -> WebResult<Response> {
    let environment = posted.text("environment");
    let p = seg(&project);
    let back = format!("/projects/{p}/environments/{}", seg(&environment));
    if !posted.visitor.auth.has_scope(Scope::Write) {
        return Err(WebError::forbidden("this session may only read").back(back));
    }
    let build: i64 =
        posted.text("build").parse().map_err(|_| WebError::invalid("choose a build").back(back.clone()))?;
    let break_glass = Some(posted.text("break_glass")).filter(|r| !r.is_empty());
    let access = access(&state, &posted.visitor, &project).await?;
    let fail = |e: WebError| e.back(back.clone());
    let commit = state.store().get_build(&access, build).await.map_err(|e| fail(e.into()))?.commit;
    let context = state.release_context(&access, &environment, &commit).await.map_err(|e| fail(e.into()))?;
    let (deployment, _) = state
        .store()
        .request_deployment(&posted.visitor.auth, &access, build, context, break_glass)
        .await
        .map_err(|e| fail(e.into()))?;
    Ok(see_other(&format!("/projects/{p}/deployments/{}", deployment.number)))
}

/// From where the log is read.
#[derive(Deserialize)]
pub(crate) struct LogQuery {
    /// The log's length the page holds, in bytes.
    after: usize,
}

/// What a running deployment's log holds past `after`: for the page's
/// script, which follows it in place.
pub(crate) async fn log(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, number)): WebPath<(String, i64)>,
    WebQuery(query): WebQuery<LogQuery>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    let deployment = state.store().get_deployment(&access, number).await?;
    let readers = crate::api::deploys::log_readers(&state, &access, &deployment).await?;
    let (log, _) = state.store().deployment_log(&visitor.auth, &access, number, &readers).await?;
    let more = log
        .get(query.after..)
        .ok_or_else(|| WebError::new(StatusCode::BAD_REQUEST, "after is past the log's end or inside a character"))?;
    Ok(Json(serde_json::json!({
        "data": more,
        "length": log.len(),
        "complete": !deployment.status.is_waiting(),
    }))
    .into_response())
}
