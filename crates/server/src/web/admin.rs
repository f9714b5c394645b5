//! Admin: users, groups, and the grants that wait for a second admin, with
//! the buttons to approve or reject them (disabled, with the reason, where
//! the grant rules would refuse).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_domain::grant::{self, GrantFacts};
use custody_domain::GrantStatus;
use custody_store::PageRequest;

use super::html::{self, esc, push, status};
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

    let mut body = String::from("<h1>Admin</h1><section><h2>Grants waiting for a second admin</h2>");
    if !visitor.auth.has_scope(custody_domain::Scope::Admin) {
        body.push_str(
            "<p class=\"hint\">This session lacks the admin scope: sign in with your password to decide on grants.</p>",
        );
    }
    if pending.items.is_empty() {
        body.push_str("<p class=\"empty\">No grant waits.</p>");
    }
    for g in &pending.items {
        let facts = GrantFacts { id: g.id, action: &g.action, requested_by: &g.requested_by, status: g.status };
        let decision = grant::decide_approval(&facts, &visitor.auth.as_admin());
        push(
            &mut body,
            format_args!(
                "<div class=\"card grant\" id=\"grant-{id}\"><p><strong>Grant {id}</strong>: {} <span class=\"muted\">asked by {} · {}</span></p>",
                esc(&g.description),
                esc(&g.requested_by),
                esc(&html::when(g.requested_at)),
                id = g.id
            ),
        );
        body.push_str(&html::form(&format!("/admin/grants/{}/decide", g.id), &visitor, "decide"));
        let disabled = if decision.allowed { "" } else { " disabled" };
        push(
            &mut body,
            format_args!(
                "<label>Note (for a rejection) <input name=\"note\"></label><div class=\"buttons\">\
                 <button type=\"submit\" name=\"decision\" value=\"approve\" class=\"primary\"{disabled}>Approve</button>\
                 <button type=\"submit\" name=\"decision\" value=\"reject\">Reject</button></div></form>"
            ),
        );
        for reason in &decision.reasons {
            body.push_str(&html::refusal_note(reason));
        }
        body.push_str("</div>");
    }
    body.push_str("</section><div class=\"columns\"><section><h2>Users</h2><table class=\"list\" id=\"users\"><thead><tr><th>Name</th><th>E-mail</th><th>State</th><th>Groups</th></tr></thead><tbody>");
    for u in &users.items {
        push(
            &mut body,
            format_args!(
                "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&u.name),
                if u.admin { " <span class=\"badge plain\">admin</span>" } else { "" },
                esc(&u.emails.join(", ")),
                status(if u.disabled { "disabled" } else { &u.state }),
                esc(&u.groups.join(", "))
            ),
        );
    }
    body.push_str("</tbody></table></section><section><h2>Groups</h2><table class=\"list\" id=\"groups\"><thead><tr><th>Group</th><th>Members</th></tr></thead><tbody>");
    for g in &groups.items {
        let members: Vec<&str> = g.members.iter().map(|m| m.user.as_str()).collect();
        push(&mut body, format_args!("<tr><td>{}</td><td>{}</td></tr>", esc(&g.name), esc(&members.join(", "))));
    }
    body.push_str("</tbody></table></section></div>");
    Ok(html::document("Admin", Some(&visitor), &body).into_response())
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
