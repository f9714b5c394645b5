//! The projects a visitor may read, and one project: its branches, open
//! changes, environments with what is live in each, and its latest builds.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_app::releases::EnvironmentState;
use custody_domain::{ProjectName, Scope};
use custody_store::{DeploymentView, PageRequest, ProjectAccess};

use super::html::{self, esc, push, seg, short};
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
    let mut body = String::from("<h1>Projects</h1>");
    if projects.items.is_empty() {
        body.push_str("<p class=\"empty\">No project you may read yet.</p>");
    } else {
        body.push_str(
            "<table class=\"list\" id=\"projects\"><thead><tr><th>Project</th><th>Mainline</th>\
             <th>Protected branches</th><th>Members</th></tr></thead><tbody>",
        );
        for project in &projects.items {
            push(
                &mut body,
                format_args!(
                    "<tr><td><a href=\"/projects/{}\">{}</a></td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                    seg(&project.name),
                    esc(&project.name),
                    esc(&project.default_branch),
                    esc(&project.protected_branches.join(", ")),
                    project.members.len()
                ),
            );
        }
        body.push_str("</tbody></table>");
    }
    Ok(html::document("Projects", Some(&visitor), &body).into_response())
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

    let mut body = format!("<p class=\"crumbs\"><a href=\"/projects\">Projects</a> /</p><h1>{}</h1>", esc(&project));
    body.push_str("<div class=\"columns\"><section><h2>Open changes</h2>");
    if changes.items.is_empty() {
        body.push_str("<p class=\"empty\">No open change.</p>");
    } else {
        body.push_str("<table class=\"list\" id=\"changes\"><thead><tr><th>#</th><th>Title</th><th>From</th><th>Opened by</th></tr></thead><tbody>");
        for change in &changes.items {
            push(
                &mut body,
                format_args!(
                    "<tr><td>{n}</td><td><a href=\"/projects/{p}/changes/{n}\">{}</a></td>\
                     <td><code>{}</code> → <code>{}</code></td><td>{}</td></tr>",
                    esc(&change.title),
                    esc(&change.source_branch),
                    esc(&change.target_branch),
                    esc(&change.opened_by),
                    n = change.number,
                    p = seg(&project),
                ),
            );
        }
        body.push_str("</tbody></table>");
    }
    if !queue.moving.is_empty() || !queue.waiting.is_empty() {
        body.push_str("<h2>Merge queue</h2><ol id=\"merge-queue\">");
        for moving in &queue.moving {
            push(
                &mut body,
                format_args!(
                    "<li><a href=\"/projects/{p}/changes/{n}\">#{n}</a> merged as <code class=\"sha\">{}</code>; \
                     <code>{}</code> is moving to it</li>",
                    esc(short(&moving.merge_commit)),
                    esc(&moving.reference),
                    n = moving.change,
                    p = seg(&project),
                ),
            );
        }
        for waiting in &queue.waiting {
            push(
                &mut body,
                format_args!(
                    "<li><a href=\"/projects/{p}/changes/{n}\">#{n}</a> {} into <code>{}</code>, \
                     merged in its turn once its gate is open (asked by {})</li>",
                    esc(&waiting.title),
                    esc(&waiting.target),
                    esc(waiting.asked_by.as_deref().unwrap_or("?")),
                    n = waiting.change,
                    p = seg(&project),
                ),
            );
        }
        body.push_str("</ol>");
    }
    body.push_str("</section><section><h2>Branches</h2><ul class=\"plain\" id=\"branches\">");
    for (branch, id) in &branches {
        let mark = if *branch == access.default_branch {
            " <span class=\"badge plain\">mainline, protected</span>"
        } else if access.protected.contains(branch) {
            " <span class=\"badge plain\">protected</span>"
        } else {
            ""
        };
        push(
            &mut body,
            format_args!("<li><code>{}</code> <code class=\"sha\">{}</code>{mark}</li>", esc(branch), esc(short(id))),
        );
    }
    if branches.is_empty() {
        body.push_str("<li class=\"empty\">No branch yet.</li>");
    }
    body.push_str("</ul></section></div>");

    body.push_str("<section><h2>Environments</h2>");
    match &environments {
        Err(why) => push(
            &mut body,
            format_args!("<p class=\"refusal\">The mainline's pipeline file cannot be read: {}</p>", esc(why)),
        ),
        Ok(list) if list.is_empty() => {
            body.push_str("<p class=\"empty\">The mainline's pipeline file names no environment.</p>")
        }
        Ok(list) => {
            body.push_str("<table class=\"list\" id=\"environments\"><thead><tr><th>Environment</th><th>After</th><th>Gate</th><th>Live</th><th>Waiting</th></tr></thead><tbody>");
            for env in list {
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
                let live = match &env.live {
                    Some(d) => format!(
                        "<a href=\"/projects/{}/builds/{b}\">build {b}</a> <code class=\"sha\">{}</code>",
                        seg(&project),
                        esc(short(&d.commit)),
                        b = d.build
                    ),
                    None => "nothing yet".to_owned(),
                };
                push(
                    &mut body,
                    format_args!(
                        "<tr><td><a href=\"/projects/{}/environments/{}\">{}</a></td><td>{}</td><td>{}</td><td>{live}</td><td>{}</td></tr>",
                        seg(&project),
                        seg(&e.name),
                        esc(&e.name),
                        esc(e.after.as_deref().unwrap_or("—")),
                        esc(&if gate.is_empty() { "automatic".to_owned() } else { gate.join("; ") }),
                        env.waiting.iter().map(|d| format!("#{} {}", d.number, html::badge(d.status))).collect::<Vec<_>>().join(" ")
                    ),
                );
            }
            body.push_str("</tbody></table>");
        }
    }

    body.push_str("</section><section><h2>Latest builds</h2>");
    if builds.items.is_empty() {
        body.push_str("<p class=\"empty\">No build yet: the builder builds each merge into the mainline.</p>");
    } else {
        body.push_str("<table class=\"list\" id=\"builds\"><thead><tr><th>Build</th><th>Commit</th><th>Change</th><th>Status</th></tr></thead><tbody>");
        for build in &builds.items {
            let change = build
                .change
                .map(|c| format!("<a href=\"/projects/{}/changes/{c}\">#{c}</a>", seg(&project)))
                .unwrap_or_else(|| "—".into());
            push(
                &mut body,
                format_args!(
                    "<tr><td><a href=\"/projects/{}/builds/{n}\">{n}</a></td><td><code class=\"sha\">{}</code></td><td>{change}</td><td>{}</td></tr>",
                    seg(&project),
                    esc(short(&build.commit)),
                    html::badge(build.status),
                    n = build.number
                ),
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section>");
    Ok(html::document(&project, Some(&visitor), &body).into_response())
}
