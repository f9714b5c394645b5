//! An environment: its gate, what is live, the deployments waiting with
//! their gate rule by rule and the visitor's buttons (approve, reject, test
//! sign-off), each disabled with the reason when the rules would refuse it,
//! and its history.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use custody_store::{DeployDecision, DeploymentView, ProjectAccess};

use super::html::{self, esc, push, seg, short, status};
use super::projects::{access, environments, with_decisions};
use super::session::{see_other, Posted, Visitor};
use super::{WebError, WebPath, WebResult};
use crate::AppState;

fn decisions(deployment: &DeploymentView) -> String {
    if deployment.decisions.is_empty() {
        return "—".to_owned();
    }
    deployment
        .decisions
        .iter()
        .map(|d| {
            let said = if d.message.is_empty() { String::new() } else { format!(": “{}”", esc(&d.message)) };
            format!("{} {}{said}", status(&d.kind), esc(&d.user))
        })
        .collect::<Vec<_>>()
        .join("<br>")
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

    let mut body = format!(
        "<p class=\"crumbs\"><a href=\"/projects\">Projects</a> / <a href=\"/projects/{p}\">{}</a> /</p><h1>Environment {}</h1>",
        esc(&project),
        esc(&name)
    );
    body.push_str(&gate_and_live(e, env.live.as_ref(), &p));
    body.push_str("<h2>Waiting</h2>");
    if env.waiting.is_empty() {
        body.push_str("<p class=\"empty\">Nothing waits.</p>");
    }
    for waiting in &env.waiting {
        body.push_str(&waiting_deployment(&state, &access, &visitor, e, waiting, &p).await?);
    }
    body.push_str(&history_table(&history, &p));
    Ok(html::document(&format!("Environment {name}"), Some(&visitor), &body).into_response())
}

/// The environment's gate as the mainline defines it, and what is live.
fn gate_and_live(e: &custody_domain::pipeline::Environment, live: Option<&DeploymentView>, p: &str) -> String {
    let mut body = String::new();
    body.push_str("<section><h2>Gate and what is live</h2><dl class=\"facts\">");
    push(
        &mut body,
        format_args!("<dt>After</dt><dd>{}</dd>", esc(e.after.as_deref().unwrap_or("— (deployed after each build)"))),
    );
    push(
        &mut body,
        format_args!(
            "<dt>Approvals</dt><dd>{} from {}</dd>",
            e.approvals,
            esc(&e.approvers.as_ref().map(ToString::to_string).unwrap_or_else(|| "nobody".into()))
        ),
    );
    push(
        &mut body,
        format_args!(
            "<dt>Manual tests</dt><dd>{}</dd>",
            esc(&e.testers.as_ref().map(|t| format!("signed off by a member of {t}")).unwrap_or_else(|| "none".into()))
        ),
    );
    if let Some(soak) = e.soak {
        push(&mut body, format_args!("<dt>Soak</dt><dd>{} s in the previous environment</dd>", soak.as_secs()));
    }
    push(
        &mut body,
        format_args!("<dt>Reviewers may approve</dt><dd>{}</dd>", if e.reviewers_may_approve { "yes" } else { "no" }),
    );
    match live {
        Some(d) => push(
            &mut body,
            format_args!(
                "<dt>Live</dt><dd id=\"live\"><a href=\"/projects/{p}/builds/{b}\">build {b}</a> <code class=\"sha\">{}</code> since {}</dd>",
                esc(short(&d.commit)),
                esc(&d.finished_at.map(html::when).unwrap_or_default()),
                b = d.build
            ),
        ),
        None => body.push_str("<dt>Live</dt><dd id=\"live\">nothing yet</dd>"),
    }
    body.push_str("</dl></section>");
    body
}

/// A deployment waiting: its gate, the decisions so far, and the buttons
/// the visitor may use, each disabled with the domain's reason when it
/// would be refused.
async fn waiting_deployment(
    state: &AppState,
    access: &ProjectAccess,
    visitor: &Visitor,
    e: &custody_domain::pipeline::Environment,
    waiting: &DeploymentView,
    p: &str,
) -> WebResult<String> {
    let mut body = String::new();
    push(
        &mut body,
        format_args!(
            "<section class=\"deployment\" id=\"deployment-{n}\"><h3>Deployment {n} of <a href=\"/projects/{p}/builds/{b}\">build {b}</a> {}</h3>\
             <p class=\"meta\">commit <code class=\"sha\">{}</code> · requested by {}{}</p>",
            html::badge(waiting.status),
            esc(short(&waiting.commit)),
            esc(waiting.requested_by.as_deref().unwrap_or("custody (promotion)")),
            waiting.break_glass.as_deref().map(|r| format!(" · <strong>break-glass</strong>: {}", esc(r))).unwrap_or_default(),
            n = waiting.number,
            b = waiting.build
        ),
    );
    if waiting.status != custody_domain::status::DeploymentStatus::Pending {
        body.push_str("<p class=\"hint\">Its gate is open: the deployer runs it.</p></section>");
        return Ok(body);
    }
    let context = state.release_context(access, &waiting.environment, &waiting.commit).await?;
    let (_, gate, standing) =
        state.store().deployment_standing(access, waiting.number, context, &visitor.auth.name).await?;
    push(&mut body, format_args!("<div class=\"gate\" data-open=\"{}\"><h4>Gate</h4>", gate.open));
    body.push_str(&html::rules(&gate.rules));
    push(&mut body, format_args!("</div><p class=\"meta\">Decisions: {}</p>", decisions(waiting)));
    let member = custody_domain::access::decide_deploy_member(
        &visitor.auth.name,
        &access.project,
        access.role,
        visitor.auth.scopes,
        custody_domain::access::DeployAction::Decide,
    );
    if !member.allowed {
        body.push_str("<div class=\"hint decide-refusal\">");
        body.push_str(&html::refusal_notes(&member));
        body.push_str("</div></section>");
        return Ok(body);
    }
    let action = format!("/projects/{p}/deployments/{}/decide", waiting.number);
    body.push_str(&html::form(&action, visitor, "decide"));
    body.push_str("<label>Message <textarea name=\"message\" rows=\"2\" class=\"decision-message\"></textarea></label><div class=\"buttons\">");
    let disabled = if standing.approve.is_some() { " disabled" } else { "" };
    push(
        &mut body,
        format_args!(
            "<button type=\"submit\" name=\"decision\" value=\"approve\" class=\"primary approve-deployment\"{disabled}>Approve</button>\
             <button type=\"submit\" name=\"decision\" value=\"reject\" class=\"reject-deployment\"{disabled}>Reject</button>"
        ),
    );
    if e.testers.is_some() {
        let disabled = if standing.sign_off.is_some() { " disabled" } else { "" };
        push(
            &mut body,
            format_args!(
                "<button type=\"submit\" name=\"decision\" value=\"test_passed\" class=\"tests-passed\"{disabled}>Tests passed</button>\
                 <button type=\"submit\" name=\"decision\" value=\"test_failed\" class=\"tests-failed\"{disabled}>Tests failed</button>"
            ),
        );
    }
    body.push_str("</div></form>");
    if let Some(reason) = &standing.approve {
        push(&mut body, format_args!("<div class=\"approve-refusal\">{}</div>", html::refusal_note(reason)));
    }
    if let (Some(reason), Some(_)) = (&standing.sign_off, &e.testers) {
        push(&mut body, format_args!("<div class=\"sign-off-refusal\">{}</div>", html::refusal_note(reason)));
    }
    body.push_str("</section>");
    Ok(body)
}

/// Every deployment to the environment, newest first.
fn history_table(history: &[DeploymentView], p: &str) -> String {
    let mut body = String::new();
    body.push_str("<h2>History</h2>");
    if history.is_empty() {
        body.push_str("<p class=\"empty\">No deployment yet.</p>");
    } else {
        body.push_str("<table class=\"list\" id=\"history\"><thead><tr><th>#</th><th>Build</th><th>Status</th><th>Requested by</th><th>Decisions</th><th>Finished</th></tr></thead><tbody>");
        for d in history {
            push(
                &mut body,
                format_args!(
                    "<tr><td>{}</td><td><a href=\"/projects/{p}/builds/{b}\">build {b}</a> <code class=\"sha\">{}</code></td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    d.number,
                    esc(short(&d.commit)),
                    html::badge(d.status),
                    d.reason.as_deref().map(|r| format!("<div class=\"hint\">{}</div>", esc(r))).unwrap_or_default(),
                    esc(d.requested_by.as_deref().unwrap_or("custody (promotion)")),
                    decisions(d),
                    esc(&d.finished_at.map(html::when).unwrap_or_default()),
                    b = d.build
                ),
            );
        }
        body.push_str("</tbody></table>");
    }
    body
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
    let back = format!("/projects/{}/environments/{}", seg(&project), seg(&deployment.environment));
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
