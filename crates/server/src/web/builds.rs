//! A build: its log, artifacts and provenance, and the chain of custody
//! drawn as a picture (commit, change, build, each environment, with the
//! person or service in each duty); and an artifact.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_formats::attestation::ChangeV1;
use custody_formats::dsse::Envelope;
use custody_formats::KeyRole;
use custody_store::{BuildView, ChangeView, DeploymentView};
use serde_json::Value;

use maud::{html, Markup};

use super::html::{self, seg, short};
use super::projects::{access, environments, with_decisions};
use super::session::Visitor;
use super::{WebError, WebPath, WebResult};
use crate::AppState;

/// A signed envelope opened with the key of its duty: the statement, or
/// why it does not verify.
pub(crate) fn open(state: &AppState, envelope: &str, role: KeyRole) -> Result<Value, String> {
    let envelope: Envelope = serde_json::from_str(envelope).map_err(|_| "the stored envelope is damaged".to_owned())?;
    let key = state.key(role).ok_or_else(|| format!("this server holds no {role:?} key to check it with"))?;
    let payload = envelope.verify(&key.public()).map_err(|e| format!("the signature does not verify: {e}"))?;
    serde_json::from_slice(&payload).map_err(|_| "the signed statement is not JSON".to_owned())
}

/// One box of the chain of custody.
pub(crate) struct Link {
    /// What it is: "commit", "change", "build", or an environment's name.
    pub kind: String,
    /// Its name.
    pub title: String,
    /// `ok`, `wait`, `bad` or `none`.
    pub state: &'static str,
    /// Duty and who held it.
    pub duties: Vec<(String, String)>,
    /// Where it is shown in full.
    pub href: Option<String>,
}

/// How a box of the chain looks.
fn state_of(state: impl html::Shown) -> &'static str {
    match state.tone() {
        html::Tone::Ok => "ok",
        html::Tone::Wait => "wait",
        html::Tone::Bad => "bad",
        html::Tone::Plain => "none",
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// How a box of the chain is drawn: stroke, fill, and a dash for none.
fn colours(state: &str) -> (&'static str, &'static str, Option<&'static str>) {
    match state {
        "ok" => ("#1f7a4d", "#f1f8f4", None),
        "wait" => ("#a86b00", "#fdf7ea", None),
        "bad" => ("#b3261e", "#fcf0ef", None),
        _ => ("#9aa3ae", "#ffffff", Some("5 4")),
    }
}

/// The chain as an inline SVG: one box per link, left to right, joined by
/// arrows. Every text is escaped; colours are attributes, not styles, so
/// the page's Content-Security-Policy holds.
pub(crate) fn chain_svg(links: &[Link]) -> Markup {
    const W: usize = 190;
    const GAP: usize = 34;
    const LINE: usize = 17;
    let rows = links.iter().map(|l| l.duties.len()).max().unwrap_or(0);
    let height = 62 + rows * LINE * 2 + 12;
    let width = links.len() * W + links.len().saturating_sub(1) * GAP + 4;
    let node = |x: usize, link: &Link| {
        let (stroke, fill, dash) = colours(link.state);
        html! {
            g.link data-kind=(link.kind) data-state=(link.state) {
                rect x=(x) y="2" width=(W) height=(height - 4) rx="8" fill=(fill) stroke=(stroke) stroke-width="1.6"
                    stroke-dasharray=[dash] {}
                text x=(x + 12) y="22" font-size="11" fill="#5b6472" letter-spacing="0.06em" { (link.kind.to_uppercase()) }
                text x=(x + 12) y="42" font-size="15" font-weight="600" fill="#17202b" { (clip(&link.title, 20)) }
                @for (row, (duty, who)) in link.duties.iter().enumerate() {
                    text x=(x + 12) y=(64 + row * LINE * 2) font-size="11" fill="#5b6472" { (clip(duty, 28)) }
                    text.person x=(x + 12) y=(64 + row * LINE * 2 + 15) font-size="13" fill="#17202b" { (clip(who, 24)) }
                }
            }
        }
    };
    html! {
        svg.chain #chain role="group" aria-label="Chain of custody: who held each duty" xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (width) " " (height) }
            width=(width) height=(height) font-family="system-ui, sans-serif" {
            title { "Chain of custody: who held each duty" }
            defs {
                marker #arrow viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto" {
                    path d="M0,0 L10,5 L0,10 z" fill="#5b6472" {}
                }
            }
            @for (i, link) in links.iter().enumerate() {
                @let x = 2 + i * (W + GAP);
                @match &link.href {
                    Some(href) => a href=(href) { (node(x, link)) },
                    None => (node(x, link)),
                }
                @if i + 1 < links.len() {
                    line x1=(x + W) y1=(height / 2) x2=(x + W + GAP - 2) y2=(height / 2) stroke="#5b6472"
                        stroke-width="1.6" marker-end="url(#arrow)" {}
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

/// The links of a build's chain, from the records: the reviewed head's
/// pusher, the change's signed attestation (authors, approvers, merger),
/// the build, and the latest deployment of it to each environment.
async fn chain(
    state: &AppState,
    access: &custody_store::ProjectAccess,
    build: &BuildView,
    change: Option<&ChangeView>,
    deployments: &[DeploymentView],
) -> WebResult<Vec<Link>> {
    let p = seg(access.project.as_str());
    let mut links = Vec::new();
    if let Some(change) = change {
        let attested = state.store().attestation(access, change.number).await.ok();
        let predicate: Option<ChangeV1> = attested
            .as_deref()
            .and_then(|a| open(state, a, KeyRole::Gate).ok())
            .and_then(|statement| serde_json::from_value(statement["predicate"].clone()).ok());
        let reviewed = predicate.as_ref().map_or_else(|| change.head.clone(), |p| p.reviewed_head.clone());
        let pusher = state.store().commit(&access.project, &reviewed).await.ok().and_then(|c| c.pusher);
        links.push(Link {
            kind: "commit".into(),
            title: short(&reviewed).to_owned(),
            state: "ok",
            duties: vec![("pushed by (author)".into(), pusher.unwrap_or_else(|| "unknown".into()))],
            href: None,
        });
        let approvers = match &predicate {
            Some(p) => p.approvers.clone(),
            None => change
                .reviews
                .iter()
                .filter(|r| r.verdict == custody_domain::gate::Verdict::Approve.as_str() && !r.stale)
                .map(|r| r.reviewer.clone())
                .collect(),
        };
        let authors: Vec<String> =
            predicate.as_ref().map(|p| p.authors.iter().map(|a| a.user.clone()).collect()).unwrap_or_default();
        links.push(Link {
            kind: "change".into(),
            title: format!("#{} {}", change.number, change.title),
            state: state_of(change.state),
            duties: vec![
                ("authors".into(), names(&authors)),
                ("reviewers (approved)".into(), names(&approvers)),
                ("merged by".into(), change.merged_by.clone().unwrap_or_else(|| "—".into())),
            ],
            href: Some(format!("/projects/{p}/changes/{}", change.number)),
        });
    } else {
        links.push(Link {
            kind: "commit".into(),
            title: short(&build.commit).to_owned(),
            state: "none",
            duties: vec![("merged by".into(), "no change of custody's".into())],
            href: None,
        });
    }
    links.push(Link {
        kind: "build".into(),
        title: format!("build {}", build.number),
        state: state_of(build.status),
        duties: vec![
            ("built by (service)".into(), "custody builder".into()),
            ("worker".into(), build.worker.clone().unwrap_or_else(|| "—".into())),
            ("artifacts".into(), format!("{} signed", build.artifacts.len())),
        ],
        href: Some(format!("/projects/{p}/builds/{}", build.number)),
    });
    let ours: Vec<DeploymentView> = deployments.iter().filter(|d| d.build == build.number).cloned().collect();
    let order: Vec<String> = match environments(state, access).await? {
        Ok(list) => list.into_iter().map(|e| e.environment.name).collect(),
        Err(_) => Vec::new(),
    };
    for env in order {
        let latest = ours.iter().find(|d| d.environment == env);
        let (state, duties) = match latest {
            Some(d) => {
                let who = |kinds: &[&str]| -> Vec<String> {
                    d.decisions.iter().filter(|x| kinds.contains(&x.kind.as_str())).map(|x| x.user.clone()).collect()
                };
                (
                    state_of(d.status),
                    vec![
                        ("requested by".into(), d.requested_by.clone().unwrap_or_else(|| "custody (promotion)".into())),
                        ("approved by".into(), names(&who(&["approve"]))),
                        ("tested by".into(), names(&who(&["test_passed", "test_failed"]))),
                        ("deployed by (service)".into(), "custody deployer".into()),
                    ],
                )
            }
            None => ("none", vec![("not deployed".into(), "—".into())]),
        };
        links.push(Link {
            href: Some(format!("/projects/{p}/environments/{}", seg(&env))),
            kind: env.clone(),
            title: latest.map(|d| format!("#{} {}", d.number, d.status)).unwrap_or_else(|| "not deployed".into()),
            state,
            duties,
        });
    }
    Ok(links)
}

/// One build.
pub(crate) async fn show(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, number)): WebPath<(String, i64)>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    let build = state.store().get_build(&access, number).await?;
    let (log, _) = state.store().build_log(&access, number, 0).await?;
    let running = build.status.is_waiting();
    let after = log.last().map_or(0, |c| c.seq);
    let provenance = state.store().build_provenance(&access, number).await?;
    let change = match build.change {
        Some(c) => Some(state.store().get_change(&access.project, c).await?),
        None => None,
    };
    let mut deployments = state.store().deployments_of_build(&access, number).await?;
    deployments.reverse();
    with_decisions(&state, &access, None, &mut deployments).await?;
    let links = chain(&state, &access, &build, change.as_ref(), &deployments).await?;

    let p = seg(&project);
    let provenance = provenance.as_deref().map(|p| open(&state, p, KeyRole::Builder));
    let body = html! {
        p.crumbs { a href="/projects" { "Projects" } " / " a href={ "/projects/" (p) } { (project) } " /" }
        h1 { "Build " (number) " " (html::badge(build.status)) }
        section {
            h2 { "Chain of custody" }
            div.chain-frame { (chain_svg(&links)) }
            p.hint { "Each box names who held the duty: people author, review, approve and test; custody's builder and deployer, never a person, build and deploy." }
        }
        section {
            h2 { "Build" }
            dl.facts {
                dt { "Commit" } dd { code.sha { (build.commit) } " on " code { (build.branch) } }
                @if let Some(c) = &change {
                    dt { "Change" } dd { a href={ "/projects/" (p) "/changes/" (c.number) } { "#" (c.number) " " (c.title) } }
                }
                dt { "Command" } dd { code { (build.command.as_deref().unwrap_or("—")) } }
                dt { "Network" } dd { (if build.network == Some(true) { "allowed" } else { "none" }) }
                dt { "Pipeline file sha256" } dd { code.sha { (build.pipeline_digest.as_deref().unwrap_or("—")) } }
                dt { "Build script sha256" } dd { code.sha { (build.script_digest.as_deref().unwrap_or("—")) } }
                dt { "Worker" } dd { (build.worker.as_deref().unwrap_or("—")) }
                dt { "Queued" } dd { (html::when(build.queued_at)) }
                @if let Some(at) = build.finished_at { dt { "Finished" } dd { (html::when(at)) } }
                @if let Some(reason) = &build.reason { dt { "Why" } dd { (reason) } }
            }
        }
        section {
            h2 { "Artifacts" }
            @if build.artifacts.is_empty() {
                p.empty { "No artifact." }
            } @else {
                table.list #artifacts {
                    thead { tr { th { "Name" } th { "sha256" } th { "Size" } } }
                    tbody {
                        @for artifact in &build.artifacts {
                            tr {
                                td { (artifact.name) }
                                td { a href={ "/projects/" (p) "/artifacts/" (seg(&artifact.digest)) } { code.sha { (short(&artifact.digest)) } } }
                                td { (artifact.size) " bytes" }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Provenance" }
            @match &provenance {
                None => p.empty { "No provenance: the build made no artifact." },
                Some(Err(why)) => p.refusal #provenance-check { (why) },
                Some(Ok(statement)) => {
                    p.notice.ok #provenance-check { "✓ SLSA provenance v1, signed by custody's builder key; the signature verifies." }
                    details { summary { "The signed statement" } pre.log { (serde_json::to_string_pretty(statement).unwrap_or_default()) } }
                },
            }
        }
        section {
            h2 { "Log" }
            @if running { p.hint #log-live { "The build is running: its log follows here as it is written." } }
            pre.log #build-log data-follow=[running.then(|| format!("/projects/{p}/builds/{number}/log"))] data-after=(after) {
                @for chunk in &log { (chunk.data) }
            }
        }
    };
    let title = format!("Build {number}");
    if running {
        return Ok(html::live_page(&title, Some(&visitor), body, 3).into_response());
    }
    Ok(html::page(&title, Some(&visitor), body).into_response())
}

/// An artifact's name in an address: its sha256, 64 hex digits.
fn check_digest(digest: &str) -> WebResult<()> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WebError::invalid("an artifact is named by its sha256: 64 hexadecimal digits"));
    }
    Ok(())
}

/// The artifact's bytes, re-hashed while they are sent and cut off before
/// their end when they no longer match, exactly as the API sends them.
pub(crate) async fn download(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, digest)): WebPath<(String, String)>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    check_digest(&digest)?;
    let made = state.store().artifact(&access, &digest).await?;
    let name = made.last().map(|a| a.name.clone()).unwrap_or_default();
    Ok(crate::api::builds::send_blob(&state, &digest, &name).await?)
}

/// Which builds a project's list shows: those numbered below `before`.
#[derive(serde::Deserialize)]
pub(crate) struct ListQuery {
    before: Option<i64>,
}

/// A project's builds, newest first, a page at a time.
pub(crate) async fn list(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath(project): WebPath<String>,
    super::WebQuery(query): super::WebQuery<ListQuery>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    let page = state.store().list_builds(&access, custody_store::PageRequest::new(query.before, Some(50))).await?;
    let p = seg(&project);
    let body = html! {
        p.crumbs { a href="/projects" { "Projects" } " / " a href={ "/projects/" (p) } { (project) } " /" }
        h1 { "Builds" }
        @if page.items.is_empty() {
            p.empty { "No build yet: the builder builds each merge into the mainline." }
        } @else {
            table.list #build-list {
                thead { tr { th { "Build" } th { "Commit" } th { "Change" } th { "Status" } th { "Queued" } th { "Artifacts" } } }
                tbody {
                    @for build in &page.items {
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
                            td { (html::when(build.queued_at)) }
                            td { (build.artifacts.len()) }
                        }
                    }
                }
            }
            @if let Some(next) = page.next_cursor {
                p { a #older-builds href={ "/projects/" (p) "/builds?before=" (next) } { "Older builds →" } }
            }
        }
    };
    Ok(html::page(&format!("Builds of {project}"), Some(&visitor), body).into_response())
}

/// Where to follow a log from.
#[derive(serde::Deserialize)]
pub(crate) struct LogQuery {
    after: Option<i64>,
}

/// A running build's log after `after`, for the page's script to follow:
/// the API's log page, read with the visitor's session.
pub(crate) async fn log(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, number)): WebPath<(String, i64)>,
    super::WebQuery(query): super::WebQuery<LogQuery>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    let (chunks, complete) = state.store().build_log(&access, number, query.after.unwrap_or(0)).await?;
    Ok(axum::Json(custody_api::LogPage { chunks, complete }).into_response())
}

/// One artifact: its digest, size and every build that made it.
pub(crate) async fn artifact(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, digest)): WebPath<(String, String)>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    check_digest(&digest)?;
    let made = state.store().artifact(&access, &digest).await?;
    let p = seg(&project);
    let body = html! {
        p.crumbs { a href="/projects" { "Projects" } " / " a href={ "/projects/" (p) } { (project) } " /" }
        h1 { "Artifact" }
        dl.facts {
            dt { "sha256" } dd { code.sha { (digest) } }
            @if let Some(first) = made.first() {
                dt { "Name" } dd { (first.name) }
                dt { "Size" } dd { (first.size) " bytes" }
            }
        }
        p { a #download href={ "/projects/" (p) "/artifacts/" (digest) "/content" } download { "Download" }
            " (re-hashed as it is sent: a damaged file is cut off before its end)" }
        h2 { "Made by" }
        ul.plain {
            @for a in &made {
                li {
                    a href={ "/projects/" (p) "/builds/" (a.build) } { "build " (a.build) } " of "
                    code.sha { (short(&a.commit)) } ", " (html::when(a.created_at))
                }
            }
        }
        p.hint { "Only custody's builder stores artifacts; each download is re-hashed. Fetch it with " code { "custody artifact get" } "." }
        @if visitor.auth.reads_everything() {
            section #evidence {
                h2 { "Evidence" }
                p {
                    a #evidence-bundle href={ "/projects/" (p) "/artifacts/" (digest) "/evidence" } download { "The evidence bundle" }
                    " of this artifact: its build and every deployment of it, each statement signed and proved in the ledger. "
                    "Check it on your own machine against the "
                    a #trust-file href="/api/v1/trust" download { "trust file" } ":"
                }
                pre.log { "custody verify BUNDLE.json --trust trust.json --artifact FILE" }
                p.hint { "This page proves nothing about the server that serves it; the offline check does." }
            }
        }
    };
    Ok(html::page("Artifact", Some(&visitor), body).into_response())
}
