//! My work: the home page after sign-in. What waits for the visitor, by
//! duty, as `custody_app::inbox` decides it: changes to review, their own
//! changes and what blocks each, deployments to approve or sign off,
//! grants to approve and findings to review, each linking to where it is
//! done (a finding is reviewed right here).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use custody_app::inbox::{Inbox, OwnChange};
use maud::{html, Markup};

use super::html::{page, seg, short, when};
use super::session::{see_other, Posted, Visitor};
use super::{WebError, WebPath, WebResult};
use crate::AppState;

/// What waits for the visitor.
async fn inbox_of(state: &AppState, visitor: &Visitor) -> WebResult<Inbox> {
    Ok(custody_app::inbox::waiting_for(state.store(), state.changes(), state.hosting().repositories(), &visitor.auth)
        .await?)
}

/// The page.
pub(crate) async fn show(State(state): State<AppState>, visitor: Visitor) -> WebResult<Response> {
    let inbox = inbox_of(&state, &visitor).await?;
    Ok(page("My work", Some(&visitor), render(&inbox, &visitor)).into_response())
}

/// How many things wait, for the count in the navigation bar.
pub(crate) async fn count(State(state): State<AppState>, visitor: Visitor) -> WebResult<Response> {
    let inbox = inbox_of(&state, &visitor).await?;
    Ok(Json(serde_json::json!({ "count": inbox.count() })).into_response())
}

/// An admin's review of a finding, through the same store call as the API.
pub(crate) async fn resolve_finding(
    State(state): State<AppState>,
    WebPath(id): WebPath<i64>,
    posted: Posted,
) -> WebResult<Response> {
    let resolution = posted.text("resolution");
    let back = if posted.get("from") == Some("findings") { "/findings" } else { "/work" };
    state
        .store()
        .resolve_finding(&posted.visitor.auth, id, resolution)
        .await
        .map_err(|e| WebError::from(e).back(back))?;
    Ok(see_other(back))
}

fn change_href(project: &str, number: i64) -> String {
    format!("/projects/{}/changes/{number}", seg(project))
}

fn count_badge(n: usize) -> Markup {
    html! { span.count { (n) } }
}

fn render(inbox: &Inbox, visitor: &Visitor) -> Markup {
    html! {
        h1 { "My work" }
        p.lead { "What waits for you, by duty. Everything listed is yours to do now; each page says the rules before you act." }
        section #work-reviews {
            h2 { "Changes to review " (count_badge(inbox.reviews.len())) }
            @if inbox.reviews.is_empty() {
                p.empty { "No change waits for your review." }
            } @else {
                table.list {
                    thead { tr { th { "Change" } th { "Opened by" } th { "Gate" } } }
                    tbody {
                        @for r in &inbox.reviews {
                            tr.waiting data-change=(format!("{}/{}", r.project, r.number)) {
                                td { a href=(change_href(&r.project, r.number)) { (r.project) " #" (r.number) " " (r.title) } }
                                td { (r.opened_by) " · " (when(r.opened_at)) }
                                td {
                                    @if r.gate_open { span.badge.ok { "open" } } @else { span.badge.wait { "waits for reviews" } }
                                }
                            }
                        }
                    }
                }
            }
        }
        section #work-own {
            h2 { "Your changes " (count_badge(inbox.own.len())) }
            @if inbox.own.is_empty() {
                p.empty { "You have no open change." }
            }
            @for c in &inbox.own { (own_change(c)) }
        }
        section #work-deployments {
            h2 { "Deployments to decide " (count_badge(inbox.deployments.len())) }
            @if inbox.deployments.is_empty() {
                p.empty { "No deployment waits for your approval or sign-off." }
            } @else {
                table.list {
                    thead { tr { th { "Deployment" } th { "Build" } th { "Requested by" } th { "Yours to" } } }
                    tbody {
                        @for d in &inbox.deployments {
                            tr.waiting data-deployment=(format!("{}/{}", d.project, d.number)) {
                                td {
                                    a href=(format!("/projects/{}/environments/{}#deployment-{}", seg(&d.project), seg(&d.environment), d.number)) {
                                        (d.project) " #" (d.number) " to " (d.environment)
                                    }
                                }
                                td {
                                    a href=(format!("/projects/{}/builds/{}", seg(&d.project), d.build)) { "build " (d.build) }
                                    " " code.sha { (short(&d.commit)) }
                                }
                                td { (d.requested_by.as_deref().unwrap_or("custody (promotion)")) }
                                td {
                                    @if d.approve { span.badge.wait { "approve" } " " }
                                    @if d.sign_off { span.badge.wait { "sign off tests" } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if visitor.auth.is_admin {
            section #work-grants {
                h2 { "Grants to approve " (count_badge(inbox.grants.len())) }
                @if inbox.grants.is_empty() {
                    p.empty { "No grant waits for you: grants you asked for wait for another admin." }
                }
                ul.plain {
                    @for g in &inbox.grants {
                        li.waiting data-grant=(g.id) {
                            a href=(format!("/admin#grant-{}", g.id)) { "Grant " (g.id) }
                            ": " (g.description) " " span.muted { "asked by " (g.requested_by) " · " (when(g.requested_at)) }
                        }
                    }
                }
            }
            section #work-findings {
                h2 { "Findings to review " (count_badge(inbox.findings.len())) }
                @if inbox.findings.is_empty() {
                    p.empty { "No finding waits for you: one you were involved in waits for another admin." }
                }
                @for f in &inbox.findings {
                    div.card.waiting data-finding=(f.id) {
                        p { strong { "Finding " (f.id) } ": " (f.summary) " " span.muted { (f.subject) " · " (when(f.opened_at)) } }
                        form method="post" action=(format!("/findings/{}/resolve", f.id)) class="resolve" {
                            input type="hidden" name="csrf" value=(visitor.csrf());
                            label { "What your review found " textarea name="resolution" rows="2" required {} }
                            div.buttons { button type="submit" class="primary" { "Record the review" } }
                        }
                    }
                }
            }
        }
    }
}

/// One of the visitor's changes: mergeable, or the rules that block it.
fn own_change(c: &OwnChange) -> Markup {
    html! {
        div.card.own data-change=(format!("{}/{}", c.project, c.number)) {
            p {
                a href=(change_href(&c.project, c.number)) { (c.project) " #" (c.number) " " (c.title) }
                " "
                @if c.blocked_by.is_empty() { span.badge.ok { "ready to merge" } } @else { span.badge.wait { "blocked" } }
            }
            @if !c.blocked_by.is_empty() {
                ul.rules {
                    @for rule in &c.blocked_by {
                        li.rule.fail data-rule=(rule.rule) {
                            span.mark { "✗" } " " span.message { (rule.message) }
                            @if let Some(satisfy) = &rule.satisfy { div.satisfy { "To pass: " (satisfy) } }
                        }
                    }
                }
            }
        }
    }
}
