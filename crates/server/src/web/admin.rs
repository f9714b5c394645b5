//! Admin: users (invite, disable, enable), groups and their members, and the
//! grants: every change an admin asks for here is a grant, shown with its
//! state, that waits for a second admin (applied at once, and marked,
//! while the instance has one admin), with the buttons to approve or reject
//! it (disabled, with the reason, where the grant rules would refuse).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_domain::grant::{self, GrantFacts};
use custody_domain::{Email, GrantAction, GrantStatus, GroupName, Scope, UserName};
use custody_store::{GrantView, GroupView, PageRequest, UserView};
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
    let recent = state.store().decided_grants(RECENT_GRANTS).await?;
    let body = html! {
        h1 { "Admin" }
        @if !visitor.auth.has_scope(Scope::Admin) {
            p.notice #admin-scope { "This session lacks the admin scope: sign in with your password to ask for or decide on grants." }
        }
        section {
            h2 { "Grants waiting for a second admin" }
            @if pending.items.is_empty() { p.empty { "No grant waits." } }
            @for g in &pending.items { (grant_card(g, &visitor)) }
        }
        section {
            h2 { "Grants decided lately" }
            @if recent.is_empty() { p.empty { "None yet." } } @else {
                table.list #recent-grants {
                    thead { tr { th { "#" } th { "What" } th { "Asked by" } th { "State" } th { "Decided by" } } }
                    tbody {
                        @for g in &recent {
                            tr {
                                td { a href={ "/admin/grants/" (g.id) } { (g.id) } }
                                td { (g.description) }
                                td { (g.requested_by) }
                                td { (status(g.status.as_str())) }
                                td { (g.decided_by.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
        }
        (users_section(&users.items, &visitor))
        (groups_section(&groups.items, &users.items, &visitor))
    };
    Ok(html::page("Admin", Some(&visitor), body).into_response())
}

/// How many decided grants the page lists.
const RECENT_GRANTS: i64 = 20;

fn users_section(users: &[UserView], visitor: &Visitor) -> Markup {
    html! {
        section #users-section {
            h2 { "Users" }
            table.list #users {
                thead { tr { th { "Name" } th { "E-mail" } th { "State" } th { "Groups" } th { "" } } }
                tbody {
                    @for u in users {
                        tr data-user=(u.name) {
                            td { (u.name) @if u.admin { " " span.badge.plain { "admin" } } }
                            td { (u.emails.join(", ")) }
                            td { (status(if u.disabled { "disabled" } else { &u.state })) }
                            td { (u.groups.join(", ")) }
                            td {
                                @if u.disabled {
                                    (html::post_form(&format!("/admin/users/{}/enable", html::seg(&u.name)), visitor, "inline", html! {
                                        button type="submit" class="enable-user" aria-label={ "Ask to enable " (u.name) } { "Ask to enable" }
                                    }))
                                } @else if u.name != visitor.auth.name.as_str() {
                                    (html::post_form(&format!("/admin/users/{}/disable", html::seg(&u.name)), visitor, "inline", html! {
                                        button type="submit" class="disable-user" aria-label={ "Disable " (u.name) } { "Disable" }
                                    }))
                                }
                            }
                        }
                    }
                }
            }
            p.hint { "Disabling revokes every token of the user: at once for someone who holds no duty, as a grant for an admin or a group's member." }
            h3 { "Invite someone" }
            (html::post_form("/admin/users", visitor, "invite", html! {
                label { "User name " input name="name" #invite-name required; }
                label { "E-mail address (it decides who authored a commit) " input type="email" name="email" #invite-email required; }
                label { "Shown as " input name="display_name" #invite-display; }
                div.buttons { button type="submit" class="primary" #invite { "Ask to invite" } }
            }))
        }
    }
}

fn groups_section(groups: &[GroupView], users: &[UserView], visitor: &Visitor) -> Markup {
    html! {
        section #groups-section {
            h2 { "Groups" }
            table.list #groups {
                thead { tr { th { "Group" } th { "Members" } th { "Add a member" } } }
                tbody {
                    @for g in groups {
                        tr data-group=(g.name) {
                            td { (g.name) }
                            td {
                                @for m in &g.members {
                                    span.member {
                                        (m.user)
                                        (html::post_form(&format!("/admin/groups/{}/members/{}/remove", html::seg(&g.name), html::seg(&m.user)), visitor, "inline", html! {
                                            button type="submit" class="link remove-member" aria-label={ "remove " (m.user) " from " (g.name) } { "remove" }
                                        }))
                                    }
                                    " "
                                }
                            }
                            td {
                                (html::post_form(&format!("/admin/groups/{}/members", html::seg(&g.name)), visitor, "inline add-member", html! {
                                    label.hidden-label { span.visually-hidden { "User to add to " (g.name) }
                                        select name="user" {
                                            @for u in users.iter().filter(|u| !u.disabled && !g.members.iter().any(|m| m.user == u.name)) {
                                                option value=(u.name) { (u.name) }
                                            }
                                        }
                                    }
                                    " " button type="submit" { "Ask to add" }
                                }))
                            }
                        }
                    }
                }
            }
            h3 { "Make a group" }
            (html::post_form("/admin/groups", visitor, "make-group", html! {
                label { "Name " input name="name" #group-name required; }
                div.buttons { button type="submit" #make-group { "Make the group" } }
            }))
        }
    }
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
    Ok(see_other(&format!("/admin/grants/{id}")))
}

/// One grant: what it asks, who asked, where it stands, and the buttons
/// to decide on it while it waits.
pub(crate) async fn grant(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath(id): WebPath<i64>,
) -> WebResult<Response> {
    if !visitor.auth.is_admin {
        return Err(WebError::forbidden("only admins see grants"));
    }
    let g = state.store().get_grant(id).await?;
    let body = html! {
        p.crumbs { a href="/admin" { "Admin" } " /" }
        h1 { "Grant " (g.id) " " span #grant-state { (status(g.status.as_str())) } }
        dl.facts {
            dt { "What" } dd #grant-description { (g.description) }
            dt { "Asked by" } dd { (g.requested_by) " · " (html::when(g.requested_at)) }
            @if let Some(by) = &g.decided_by {
                dt { "Decided by" } dd { (by) @if let Some(at) = g.decided_at { " · " (html::when(at)) } }
            }
            @if let Some(note) = &g.note { dt { "Note" } dd { (note) } }
        }
        p.hint {
            @match g.status {
                GrantStatus::Pending => "It waits for an admin other than the one who asked.",
                GrantStatus::Approved => "A second admin approved it, and it was applied.",
                GrantStatus::Rejected => "It was rejected: nothing was applied.",
                GrantStatus::Bootstrap => "Applied at once while the instance had one admin; reports list it as a finding.",
            }
        }
        @if g.status == GrantStatus::Pending { (grant_card(&g, &visitor)) }
    };
    Ok(html::page(&format!("Grant {id}"), Some(&visitor), body).into_response())
}

/// Asks for a grant as the visitor, and shows where it stands.
pub(crate) async fn ask(state: &AppState, visitor: &Visitor, action: GrantAction, back: &str) -> WebResult<Response> {
    let asked = state.store().request(&visitor.auth, action).await.map_err(|e| WebError::from(e).back(back))?;
    crate::api::complete_grant(state, &asked).await.map_err(|e| WebError::from(e).back(back))?;
    Ok(see_other(&format!("/admin/grants/{}", asked.id)))
}

/// Asks to invite a user, and shows the invite code once.
pub(crate) async fn invite(State(state): State<AppState>, posted: Posted) -> WebResult<Response> {
    let back = "/admin";
    let name = UserName::parse(&posted.text("name")).map_err(|e| WebError::from(e).back(back))?;
    let email = Email::parse(&posted.text("email")).map_err(|e| WebError::from(e).back(back))?;
    let display = Some(posted.text("display_name")).filter(|d| !d.is_empty());
    let made = state
        .store()
        .request_user(&posted.visitor.auth, name, email, display)
        .await
        .map_err(|e| WebError::from(e).back(back))?;
    Ok(invite_page(&posted.visitor, &made))
}

/// An invite code, shown once, and the grant it waits for.
fn invite_page(visitor: &Visitor, made: &custody_api::CreatedUser) -> Response {
    let g = &made.grant;
    let body = html! {
        h1 { "Invite for " (made.name) }
        p #invite-grant-description { "Grant " a href={ "/admin/grants/" (g.id) } { (g.id) } ": " (g.description) ", "
            span #invite-grant-state { (status(g.status.as_str())) } }
        p.lead { "Give this code to " (made.name) " by a channel you trust. It is shown once, works once, and only "
            @if g.status == GrantStatus::Pending { "after a second admin approves the grant" }
            @else { "until it expires" }
            "."
        }
        pre.log #invite-code { (made.invite_code) }
        p { "It expires " (html::when(made.invite_expires_at)) ". They redeem it with " code { "custody token redeem CODE" } "." }
    };
    html::page("Invite", Some(visitor), body).into_response()
}

/// Asks to enable a disabled user again, and shows their new invite code.
pub(crate) async fn enable(
    State(state): State<AppState>,
    WebPath(name): WebPath<String>,
    posted: Posted,
) -> WebResult<Response> {
    let name = UserName::parse(&name)?;
    let made = state
        .store()
        .request_enable_user(&posted.visitor.auth, name)
        .await
        .map_err(|e| WebError::from(e).back("/admin"))?;
    Ok(invite_page(&posted.visitor, &made))
}

/// Disables a user: at once, or as a grant.
pub(crate) async fn disable(
    State(state): State<AppState>,
    WebPath(name): WebPath<String>,
    posted: Posted,
) -> WebResult<Response> {
    let name = UserName::parse(&name)?;
    let grant =
        state.store().disable_user(&posted.visitor.auth, name).await.map_err(|e| WebError::from(e).back("/admin"))?;
    Ok(see_other(&grant.map_or_else(|| "/admin#users-section".to_owned(), |g| format!("/admin/grants/{}", g.id))))
}

/// Makes an empty group.
pub(crate) async fn make_group(State(state): State<AppState>, posted: Posted) -> WebResult<Response> {
    let name = GroupName::parse(&posted.text("name")).map_err(|e| WebError::from(e).back("/admin"))?;
    state.store().create_group(&posted.visitor.auth, name).await.map_err(|e| WebError::from(e).back("/admin"))?;
    Ok(see_other("/admin#groups-section"))
}

/// Asks to add a member to a group: a grant.
pub(crate) async fn add_member(
    State(state): State<AppState>,
    WebPath(group): WebPath<String>,
    posted: Posted,
) -> WebResult<Response> {
    let group = GroupName::parse(&group)?;
    let user = UserName::parse(&posted.text("user")).map_err(|e| WebError::from(e).back("/admin"))?;
    ask(&state, &posted.visitor, GrantAction::AddGroupMember { group, user }, "/admin").await
}

/// Asks to remove a member from a group: a grant.
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    WebPath((group, user)): WebPath<(String, String)>,
    posted: Posted,
) -> WebResult<Response> {
    let (group, user) = (GroupName::parse(&group)?, UserName::parse(&user)?);
    ask(&state, &posted.visitor, GrantAction::RemoveGroupMember { group, user }, "/admin").await
}
