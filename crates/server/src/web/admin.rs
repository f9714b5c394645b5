//! Admin: users, groups, and the grants that wait for a second admin, with
//! the buttons to approve or reject them (disabled, with the reason, where
//! the grant rules would refuse).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_domain::grant::{self, GrantFacts};
use custody_domain::GrantStatus;
use custody_store::{GrantView, PageRequest};
use maud::{html, Markup};

use super::html::{self, status};
use super::session::{see_other, Posted, Visitor};
use super::{WebError, WebPath, WebResult};
use crate::AppState;

/// The admin page.
pub(crate) async fn show(State(state): State<AppState>, visitor: Visitor) -> WebResult<Response> {
    if !visitor.auth.is_admin {
        return Err(WebError::forbidden("only admins manage users, groups and grants"));
    }
    let all = PageRequest::new(None, Some(PageRequest::MAX));
    let pending = state.store().list_grants(Some(GrantStatus::Pending), all).await?;
    let users = state.store().list_users(all).await?;
    let groups = state.store().list_groups(all).await?;
    let body = html! {
        h1 { "Admin" }
        section {
            h2 { "Grants waiting for a second admin" }
            @if !visitor.auth.has_scope(custody_domain::Scope::Admin) {
                p.hint { "This session lacks the admin scope: sign in with your password to decide on grants." }
            }
            @if pending.items.is_empty() { p.empty { "No grant waits." } }
            @for g in &pending.items { (grant_card(g, &visitor)) }
        }
        div.columns {
            section {
                h2 { "Users" }
                table.list #users {
                    thead { tr { th { "Name" } th { "E-mail" } th { "State" } th { "Groups" } } }
                    tbody {
                        @for u in &users.items {
                            tr {
                                td { (u.name) @if u.admin { " " span.badge.plain { "admin" } } }
                                td { (u.emails.join(", ")) }
                                td { (status(if u.disabled { "disabled" } else { &u.state })) }
                                td { (u.groups.join(", ")) }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Groups" }
                table.list #groups {
                    thead { tr { th { "Group" } th { "Members" } } }
                    tbody {
                        @for g in &groups.items {
                            tr {
                                td { (g.name) }
                                td { (g.members.iter().map(|m| m.user.as_str()).collect::<Vec<_>>().join(", ")) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html::page("Admin", Some(&visitor), body).into_response())
}

/// A grant that waits, with the buttons to decide on it; approve disabled
/// with the grant rules' reasons where they would refuse it.
fn grant_card(g: &GrantView, visitor: &Visitor) -> Markup {
    let facts = GrantFacts { id: g.id, action: &g.action, requested_by: &g.requested_by, status: g.status };
    let decision = grant::decide_approval(&facts, &visitor.auth.as_admin());
    html! {
        div.card.grant #{ "grant-" (g.id) } {
            p {
                strong { "Grant " (g.id) } ": " (g.description) " "
                span.muted { "asked by " (g.requested_by) " · " (html::when(g.requested_at)) }
            }
            (html::post_form(&format!("/admin/grants/{}/decide", g.id), visitor, "decide", html! {
                label { "Note (for a rejection) " input name="note"; }
                div.buttons {
                    button type="submit" name="decision" value="approve" class="primary" disabled[!decision.allowed] { "Approve" }
                    button type="submit" name="decision" value="reject" { "Reject" }
                }
            }))
            (html::refusal_notes(&decision))
        }
    }
}

/// Approves or rejects a grant, through the same store calls as the API.
pub(crate) async fn decide(
    State(state): State<AppState>,
    WebPath(id): WebPath<i64>,
    posted: Posted,
) -> WebResult<Response> {
    let actor = &posted.visitor.auth;
    let decided = match posted.get("decision") {
        Some("approve") => state.store().approve_grant(actor, id).await,
        Some("reject") => {
            let note = Some(posted.text("note")).filter(|n| !n.is_empty());
            state.store().reject_grant(actor, id, note).await
        }
        _ => return Err(WebError::invalid("choose approve or reject").back("/admin")),
    }
    .map_err(|e| WebError::from(e).back("/admin"))?;
    // What an approved grant does in git (an import, a tag deleted).
    crate::api::complete_grant(&state, &decided).await.map_err(|e| WebError::from(e).back("/admin"))?;
    Ok(see_other("/admin"))
}
