//! The projects a visitor may read, and one project: its branches, open
//! changes, environments with what is live in each, and its latest builds.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_app::releases::EnvironmentState;
use custody_domain::{ProjectName, Scope};
use custody_store::{DeploymentView, PageRequest, ProjectAccess};

use maud::{html, Markup};

use super::html::{self, seg, short};
use super::session::Visitor;
use super::{WebError, WebPath, WebResult};
use crate::AppState;

/// The project as the visitor may see it; "not found" when they may not.
pub(crate) async fn access(state: &AppState, visitor: &Visitor, project: &str) -> WebResult<ProjectAccess> {
    if !visitor.auth.has_scope(Scope::Read) {
        return Err(WebError::forbidden("this session may not read"));
    }
    Ok(state.store().project_access(&visitor.auth, &ProjectName::parse(project)?).await?)
}

/// Runs a read of the project's repository off the async threads.
pub(crate) async fn read_git<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, custody_git::GitError> + Send + 'static,
) -> WebResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| WebError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "reading the repository failed"))?
        .map_err(|error| {
            tracing::error!(%error, "git");
            WebError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "reading the repository failed")
        })
}

/// Every project the visitor may read.
pub(crate) async fn list(State(state): State<AppState>, visitor: Visitor) -> WebResult {
    let projects = state.store().list_projects(&visitor.auth, PageRequest::new(None, Some(PageRequest::MAX))).await?;
    let body = html! {
        h1 { "Projects" }
        @if projects.items.is_empty() {
            p.empty { "No project you may read yet." }
        } @else {
            table.list #projects {
                thead { tr { th { "Project" } th { "Mainline" } th { "Protected branches" } th { "Members" } } }
                tbody {
                    @for project in &projects.items {
                        tr {
                            td { a href={ "/projects/" (seg(&project.name)) } { (project.name) } }
                            td { code { (project.default_branch) } }
                            td { (project.protected_branches.join(", ")) }
                            td { (project.members.len()) }
                        }
                    }
                }
            }
        }
    };
    Ok(html::page("Projects", Some(&visitor), body).into_response())
}

/// Fills in the decisions taken on each of `deployments` (all to
/// `environment`, when given), read in one query.
pub(crate) async fn with_decisions(
    state: &AppState,
    access: &ProjectAccess,
    environment: Option<&str>,
    deployments: &mut [DeploymentView],
) -> WebResult<()> {
    for (number, decision) in state.store().deployment_decisions(access, environment).await? {
        if let Some(d) = deployments.iter_mut().find(|d| d.number == number) {
            d.decisions.push(decision);
        }
    }
    Ok(())
}

/// The environments as the mainline tip's pipeline file defines them, each
/// with what is live and what waits; why not, when that file does not read.
pub(crate) async fn environments(
    state: &AppState,
    access: &ProjectAccess,
) -> WebResult<Result<Vec<EnvironmentState>, String>> {
    match custody_app::releases::environment_states(state.store(), state.hosting().repositories(), access).await {
        Ok(states) => Ok(Ok(states)),
        Err(custody_app::AppError::InvalidPipeline(why)) => Ok(Err(why)),
        Err(other) => Err(other.into()),
    }
}

/// One project.
pub(crate) async fn show(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath(name): WebPath<String>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &name).await?;
    let project = access.project.to_string();
    let repository = state.hosting().repositories().path(&access.project);
    let branches = read_git(move || {
        let listed = custody_git::git(
            Some(&repository),
            &["for-each-ref", "--sort=refname", "--format=%(refname:short)%09%(objectname)", "refs/heads/"],
        )?;
        Ok(listed
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(name, id)| (name.to_owned(), id.to_owned()))
            .collect::<Vec<_>>())
    })
    .await?;
    let changes = state.store().list_changes(&access, Some("open"), PageRequest::new(None, Some(100))).await?;
    let environments = environments(&state, &access).await?;
    let builds = state.store().list_builds(&access, PageRequest::new(None, Some(10))).await?;
    let queue = state.store().merge_queue(&access.project).await?;

    let p = seg(&project);
    let body = html! {
        p.crumbs { a href="/projects" { "Projects" } " /" }
        h1 { (project) }
        @if visitor.auth.is_admin { p { a #project-settings href={ "/projects/" (p) "/settings" } { "Settings: members, protected branches, secrets" } } }
        div.columns {
            section {
                h2 { "Open changes" }
                p { a href={ "/projects/" (p) "/changes" } #all-changes { "All changes, merged and closed too" } }
                (open_change_form(&visitor, &access, &branches, &p))
                @if changes.items.is_empty() {
                    p.empty { "No open change." }
                } @else {
                    table.list #changes {
                        thead { tr { th { "#" } th { "Title" } th { "From" } th { "Opened by" } } }
                        tbody {
                            @for change in &changes.items {
                                tr {
                                    td { (change.number) }
                                    td { a href={ "/projects/" (p) "/changes/" (change.number) } { (change.title) } }
                                    td { code { (change.source_branch) } " → " code { (change.target_branch) } }
                                    td { (change.opened_by) }
                                }
                            }
                        }
                    }
                }
                @if !queue.moving.is_empty() || !queue.waiting.is_empty() {
                    h2 { "Merge queue" }
                    ol #merge-queue {
                        @for moving in &queue.moving {
                            li {
                                a href={ "/projects/" (p) "/changes/" (moving.change) } { "#" (moving.change) }
                                " merged as " code.sha { (short(&moving.merge_commit)) } "; "
                                code { (moving.reference) } " is moving to it"
                            }
                        }
                        @for waiting in &queue.waiting {
                            li {
                                a href={ "/projects/" (p) "/changes/" (waiting.change) } { "#" (waiting.change) }
                                " " (waiting.title) " into " code { (waiting.target) }
                                ", merged in its turn once its gate is open (asked by "
                                (waiting.asked_by.as_deref().unwrap_or("?")) ")"
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Branches" }
                ul.plain #branches {
                    @for (branch, id) in &branches {
                        li {
                            code { (branch) } " " code.sha { (short(id)) }
                            @if *branch == access.default_branch {
                                " " span.badge.plain { "mainline, protected" }
                            } @else if access.protected.contains(branch) {
                                " " span.badge.plain { "protected" }
                            }
                        }
                    }
                    @if branches.is_empty() { li.empty { "No branch yet." } }
                }
            }
        }
        section {
            h2 { "Environments" }
            @match &environments {
                Err(why) => p.refusal { "The mainline's pipeline file cannot be read: " (why) },
                Ok(list) if list.is_empty() => p.empty { "The mainline's pipeline file names no environment." },
                Ok(list) => table.list #environments {
                    thead { tr { th { "Environment" } th { "After" } th { "Gate" } th { "Live" } th { "Waiting" } } }
                    tbody { @for env in list { (environment_row(env, &p)) } }
                },
            }
        }
        section {
            h2 { "Latest builds" }
            p { a #all-builds href={ "/projects/" (p) "/builds" } { "All builds" } }
            @if builds.items.is_empty() {
                p.empty { "No build yet: the builder builds each merge into the mainline." }
            } @else {
                table.list #builds {
                    thead { tr { th { "Build" } th { "Commit" } th { "Change" } th { "Status" } } }
                    tbody {
                        @for build in &builds.items {
                            tr {
                                td { a href={ "/projects/" (p) "/builds/" (build.number) } { (build.number) } }
                                td { code.sha { (short(&build.commit)) } }
                                td {
                                    @match build.change {
                                        Some(c) => a href={ "/projects/" (p) "/changes/" (c) } { "#" (c) },
                                        None => "—",
                                    }
                                }
                                td { (html::badge(build.status)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html::page(&project, Some(&visitor), body).into_response())
}

/// For the project's writers: a change opened from a pushed branch.
fn open_change_form(visitor: &Visitor, access: &ProjectAccess, branches: &[(String, String)], p: &str) -> Markup {
    let may = custody_domain::access::decide_change_write(
        &visitor.auth.name,
        &access.project,
        access.role,
        visitor.auth.scopes,
        custody_domain::access::ChangeWrite::Open,
    );
    let protected = |b: &String| *b == access.default_branch || access.protected.contains(b);
    let sources: Vec<&String> = branches.iter().map(|(b, _)| b).filter(|b| !protected(b)).collect();
    let targets: Vec<&String> = branches.iter().map(|(b, _)| b).filter(|b| protected(b)).collect();
    html! {
        @if may.allowed {
            details.open-change #open-change {
                summary { "Open a change" }
                @if sources.is_empty() {
                    p.hint { "Push a branch first: a change follows a pushed branch into a protected one." }
                } @else {
                    (html::post_form(&format!("/projects/{p}/changes"), visitor, "open", html! {
                        label { "From "
                            select name="source" #open-source { @for b in &sources { option value=(b) { (b) } } }
                        }
                        label { "Into "
                            select name="target" #open-target {
                                @for b in &targets { option value=(b) selected[**b == access.default_branch] { (b) } }
                            }
                        }
                        label { "Title " input name="title" #open-title maxlength="200" required; }
                        label { "Description " textarea name="description" #open-description rows="4" {} }
                        div.buttons { button type="submit" #open-submit class="primary" { "Open the change" } }
                    }))
                }
            }
        }
    }
}

/// One environment of the project's table: its gate in words, what is
/// live and what waits.
fn environment_row(env: &EnvironmentState, p: &str) -> Markup {
    let e = &env.environment;
    let mut gate = Vec::new();
    if e.approvals > 0 {
        gate.push(format!(
            "{} approval(s) from {}",
            e.approvals,
            e.approvers.as_ref().map(ToString::to_string).unwrap_or_default()
        ));
    }
    if let Some(testers) = &e.testers {
        gate.push(format!("test sign-off by {testers}"));
    }
    if let Some(soak) = e.soak {
        gate.push(format!("{} s soak", soak.as_secs()));
    }
    html! {
        tr {
            td { a href={ "/projects/" (p) "/environments/" (seg(&e.name)) } { (e.name) } }
            td { (e.after.as_deref().unwrap_or("—")) }
            td { (if gate.is_empty() { "automatic".to_owned() } else { gate.join("; ") }) }
            td {
                @match &env.live {
                    Some(d) => { a href={ "/projects/" (p) "/builds/" (d.build) } { "build " (d.build) } " " code.sha { (short(&d.commit)) } },
                    None => "nothing yet",
                }
            }
            td { @for d in &env.waiting { "#" (d.number) " " (html::badge(d.status)) " " } }
        }
    }
}
