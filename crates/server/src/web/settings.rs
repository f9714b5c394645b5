//! A project's settings, for admins: its members and their roles, its
//! protected branches, and its environments' secrets (names and versions;
//! a value is written, never shown). Every change is a grant, shown with
//! its state, that waits for a second admin.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_domain::{GrantAction, ProjectName, Role, Scope, UserName};
use custody_store::PageRequest;
use maud::{html, Markup};

use super::admin::ask;
use super::html::{self, seg};
use super::projects::{access, environments};
use super::session::{see_other, Posted, Visitor};
use super::{WebError, WebPath, WebResult};
use crate::AppState;

fn admins_only(visitor: &Visitor) -> WebResult<()> {
    if visitor.auth.is_admin {
        Ok(())
    } else {
        Err(WebError::forbidden("only admins change a project's members, protected branches and secrets"))
    }
}

/// The settings page.
pub(crate) async fn show(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath(project): WebPath<String>,
) -> WebResult<Response> {
    admins_only(&visitor)?;
    let access = access(&state, &visitor, &project).await?;
    let view = state.store().get_project(&access.project).await?;
    let users = state.store().list_users(PageRequest::new(None, Some(PageRequest::MAX))).await?.items;
    let names: Vec<String> = match environments(&state, &access).await? {
        Ok(list) => list.into_iter().map(|e| e.environment.name).collect(),
        Err(_) => Vec::new(),
    };
    let mut secrets = Vec::new();
    for env in &names {
        secrets.push((env.clone(), state.store().list_secrets(&access.project, env).await?));
    }
    let p = seg(&project);
    let base = format!("/projects/{p}/settings");
    let body = html! {
        p.crumbs { a href="/projects" { "Projects" } " / " a href={ "/projects/" (p) } { (project) } " /" }
        h1 { "Settings of " (project) }
        @if !visitor.auth.has_scope(Scope::Admin) {
            p.notice { "This session lacks the admin scope: sign in with your password to ask for grants." }
        }
        p.hint { "Each change here is a grant: it waits for an admin other than the one who asks." }
        section #members-section {
            h2 { "Members" }
            table.list #members {
                thead { tr { th { "User" } th { "Role" } th { "Granted by" } th { "" } } }
                tbody {
                    @for m in &view.members {
                        tr data-user=(m.user) {
                            td { (m.user) }
                            td { (m.role.as_str()) }
                            td { a href={ "/admin/grants/" (m.grant) } { "grant " (m.grant) } }
                            td {
                                (html::post_form(&format!("{base}/members/{}/remove", seg(&m.user)), &visitor, "inline", html! {
                                    button type="submit" class="link remove-member" aria-label={ "Ask to remove " (m.user) } { "Ask to remove" }
                                }))
                            }
                        }
                    }
                }
            }
            (html::post_form(&format!("{base}/members"), &visitor, "add-member", html! {
                label { "User " select name="user" #member-user {
                    @for u in users.iter().filter(|u| !u.disabled) { option value=(u.name) { (u.name) } }
                } }
                label { "Role " select name="role" #member-role {
                    @for role in ["read", "write", "maintain"] { option value=(role) selected[role == "write"] { (role) } }
                } }
                div.buttons { button type="submit" #add-member { "Ask to add or change" } }
            }))
        }
        section #branches-section {
            h2 { "Protected branches" }
            p.hint { "Nobody pushes to a protected branch: custody merges reviewed changes into it. The mainline ("
                code { (view.default_branch) } ") is always protected." }
            ul #protected {
                @for b in &view.protected_branches {
                    li data-branch=(b) {
                        code { (b) }
                        @if *b != view.default_branch {
                            " " (html::post_form(&format!("{base}/branches/{}/unprotect", seg(b)), &visitor, "inline", html! {
                                button type="submit" class="link unprotect" aria-label={ "Ask to stop protecting " (b) } { "Ask to stop protecting" }
                            }))
                        }
                    }
                }
            }
            (html::post_form(&format!("{base}/branches"), &visitor, "protect", html! {
                label { "Branch " input name="branch" #protect-branch required; }
                div.buttons { button type="submit" #protect { "Ask to protect" } }
            }))
        }
        (secrets_section(&visitor, &base, &secrets))
    };
    Ok(html::page(&format!("Settings of {project}"), Some(&visitor), body).into_response())
}

fn secrets_section(visitor: &Visitor, base: &str, secrets: &[(String, Vec<custody_store::SecretView>)]) -> Markup {
    html! {
        section #secrets-section {
            h2 { "Environment secrets" }
            p.hint { "A deploy script of the environment gets each secret's value; its log shows the name in its place. Nobody reads a value back, admins included." }
            @if secrets.is_empty() { p.empty { "The mainline's pipeline file defines no environment." } }
            @for (env, list) in secrets {
                h3 { (env) }
                @if list.is_empty() { p.empty { "No secret." } } @else {
                    table.list.secrets data-environment=(env) {
                        thead { tr { th { "Name" } th { "Version" } th { "Set by" } th { "Since" } th { "Waiting" } } }
                        tbody {
                            @for s in list {
                                tr {
                                    td { code { (s.name) } }
                                    td { (s.version.map(|v| v.to_string()).unwrap_or_else(|| "—".into())) }
                                    td { (s.set_by.as_deref().unwrap_or("—")) }
                                    td { (s.current_since.map(html::when).unwrap_or_default()) }
                                    td { (s.pending_version.map(|v| format!("version {v}, for a second admin")).unwrap_or_default()) }
                                }
                            }
                        }
                    }
                }
            }
            @if !secrets.is_empty() {
                (html::post_form(&format!("{base}/secrets"), visitor, "set-secret", html! {
                    label { "Environment " select name="environment" #secret-environment {
                        @for (env, _) in secrets { option value=(env) { (env) } }
                    } }
                    label { "Name " input name="name" #secret-name required pattern="[A-Z][A-Z0-9_]*"; }
                    label { "Value (never shown again) " input type="password" name="value" #secret-value autocomplete="new-password" required; }
                    div.buttons { button type="submit" #set-secret { "Ask to set" } }
                }))
            }
        }
    }
}

fn back(project: &str, section: &str) -> String {
    format!("/projects/{}/settings#{section}", seg(project))
}

/// Asks to give a user a role in the project.
pub(crate) async fn add_member(
    State(state): State<AppState>,
    WebPath(project): WebPath<String>,
    posted: Posted,
) -> WebResult<Response> {
    let back = back(&project, "members-section");
    let fail = |e: custody_domain::InvalidInput| WebError::from(e).back(back.clone());
    let action = GrantAction::AddProjectMember {
        project: ProjectName::parse(&project).map_err(fail)?,
        user: UserName::parse(&posted.text("user")).map_err(fail)?,
        role: Role::parse(&posted.text("role")).map_err(fail)?,
    };
    ask(&state, &posted.visitor, action, &back).await
}

/// Asks to remove a member.
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    WebPath((project, user)): WebPath<(String, String)>,
    posted: Posted,
) -> WebResult<Response> {
    let action =
        GrantAction::RemoveProjectMember { project: ProjectName::parse(&project)?, user: UserName::parse(&user)? };
    ask(&state, &posted.visitor, action, &back(&project, "members-section")).await
}

/// Asks to protect a branch.
pub(crate) async fn protect(
    State(state): State<AppState>,
    WebPath(project): WebPath<String>,
    posted: Posted,
) -> WebResult<Response> {
    let back = back(&project, "branches-section");
    let branch = posted.text("branch");
    custody_domain::project::check_branch_name(&branch).map_err(|e| WebError::from(e).back(back.clone()))?;
    let action = GrantAction::ProtectBranch { project: ProjectName::parse(&project)?, branch };
    ask(&state, &posted.visitor, action, &back).await
}

/// Asks to stop protecting a branch.
pub(crate) async fn unprotect(
    State(state): State<AppState>,
    WebPath((project, branch)): WebPath<(String, String)>,
    posted: Posted,
) -> WebResult<Response> {
    let action = GrantAction::UnprotectBranch { project: ProjectName::parse(&project)?, branch };
    ask(&state, &posted.visitor, action, &back(&project, "branches-section")).await
}

/// Asks to set an environment secret: the value is sealed at once, and
/// used once a second admin approves.
pub(crate) async fn set_secret(
    State(state): State<AppState>,
    WebPath(project): WebPath<String>,
    posted: Posted,
) -> WebResult<Response> {
    let back = back(&project, "secrets-section");
    if !posted.visitor.auth.has_scope(Scope::Admin) {
        return Err(WebError::forbidden("this session lacks the admin scope: sign in with your password").back(back));
    }
    let project = ProjectName::parse(&project)?;
    let environment = posted.text("environment");
    custody_domain::name::check_environment_name(&environment).map_err(|e| WebError::from(e).back(back.clone()))?;
    // The value as typed: never trimmed, never shown, never logged.
    let value = posted.get("value").unwrap_or_default().to_owned();
    if value.is_empty() {
        return Err(WebError::invalid("the secret's value is empty").back(back));
    }
    let sealing = state.clone();
    let (_, grant) = state
        .store()
        .request_secret(&posted.visitor.auth, &project, environment, posted.text("name"), move |slot| {
            let sealed = sealing.sealing_key().seal(slot, value.as_bytes());
            (sealed.nonce, sealed.ciphertext)
        })
        .await
        .map_err(|e| WebError::from(e).back(back.clone()))?;
    Ok(see_other(&format!("/admin/grants/{}", grant.id)))
}
