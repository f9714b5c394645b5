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

use super::html::{self, esc, push, seg, short};
use super::projects::{access, environments, with_decisions};
use super::session::Visitor;
use super::{WebError, WebPath, WebResult};
use crate::AppState;

/// A signed envelope opened with the key of its duty: the statement, or
/// why it does not verify.
fn open(state: &AppState, envelope: &str, role: KeyRole) -> Result<Value, String> {
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

/// The chain as an inline SVG: one box per link, left to right, joined by
/// arrows. Every text is escaped; colours are attributes, not styles, so
/// the page's Content-Security-Policy holds.
pub(crate) fn chain_svg(links: &[Link]) -> String {
    const W: usize = 190;
    const GAP: usize = 34;
    const LINE: usize = 17;
    let rows = links.iter().map(|l| l.duties.len()).max().unwrap_or(0);
    let height = 62 + rows * LINE * 2 + 12;
    let width = links.len() * W + links.len().saturating_sub(1) * GAP + 4;
    let mut out = format!(
        "<svg class=\"chain\" id=\"chain\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" \
         width=\"{width}\" height=\"{height}\" font-family=\"system-ui, sans-serif\">\
         <title>Chain of custody: who held each duty</title>\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
         <path d=\"M0,0 L10,5 L0,10 z\" fill=\"#5b6472\"/></marker></defs>"
    );
    for (i, link) in links.iter().enumerate() {
        let x = 2 + i * (W + GAP);
        let (stroke, fill, dash) = match link.state {
            "ok" => ("#1f7a4d", "#f1f8f4", ""),
            "wait" => ("#a86b00", "#fdf7ea", ""),
            "bad" => ("#b3261e", "#fcf0ef", ""),
            _ => ("#9aa3ae", "#ffffff", " stroke-dasharray=\"5 4\""),
        };
        let mut node = format!(
            "<g class=\"link\" data-kind=\"{}\" data-state=\"{}\"><rect x=\"{x}\" y=\"2\" width=\"{W}\" height=\"{}\" rx=\"8\" \
             fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.6\"{dash}/>\
             <text x=\"{}\" y=\"22\" font-size=\"11\" fill=\"#5b6472\" letter-spacing=\"0.06em\">{}</text>\
             <text x=\"{}\" y=\"42\" font-size=\"15\" font-weight=\"600\" fill=\"#17202b\">{}</text>",
            esc(&link.kind),
            link.state,
            height - 4,
            x + 12,
            esc(&link.kind.to_uppercase()),
            x + 12,
            esc(&clip(&link.title, 20)),
        );
        for (row, (duty, who)) in link.duties.iter().enumerate() {
            let y = 64 + row * LINE * 2;
            push(
                &mut node,
                format_args!(
                    "<text x=\"{}\" y=\"{y}\" font-size=\"11\" fill=\"#5b6472\">{}</text>\
                     <text x=\"{}\" y=\"{}\" font-size=\"13\" fill=\"#17202b\" class=\"person\">{}</text>",
                    x + 12,
                    esc(&clip(duty, 28)),
                    x + 12,
                    y + 15,
                    esc(&clip(who, 24)),
                ),
            );
        }
        node.push_str("</g>");
        match &link.href {
            Some(href) => push(&mut out, format_args!("<a href=\"{}\">{node}</a>", esc(href))),
            None => out.push_str(&node),
        }
        if i + 1 < links.len() {
            let (x1, x2, y) = (x + W, x + W + GAP - 2, height / 2);
            push(
                &mut out,
                format_args!(
                    "<line x1=\"{x1}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"#5b6472\" stroke-width=\"1.6\" marker-end=\"url(#arrow)\"/>"
                ),
            );
        }
    }
    out.push_str("</svg>");
    out
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
    let mut body = format!(
        "<p class=\"crumbs\"><a href=\"/projects\">Projects</a> / <a href=\"/projects/{p}\">{}</a> /</p>\
         <h1>Build {number} {}</h1>",
        esc(&project),
        html::badge(build.status)
    );
    body.push_str("<section><h2>Chain of custody</h2><div class=\"chain-frame\">");
    body.push_str(&chain_svg(&links));
    body.push_str("</div><p class=\"hint\">Each box names who held the duty: people author, review, approve and test; custody's builder and deployer, never a person, build and deploy.</p></section>");

    body.push_str("<section><h2>Build</h2><dl class=\"facts\">");
    let fact = |body: &mut String, name: &str, value: &str| {
        push(body, format_args!("<dt>{}</dt><dd>{}</dd>", esc(name), value));
    };
    fact(
        &mut body,
        "Commit",
        &format!("<code class=\"sha\">{}</code> on <code>{}</code>", esc(&build.commit), esc(&build.branch)),
    );
    if let Some(c) = &change {
        fact(
            &mut body,
            "Change",
            &format!("<a href=\"/projects/{p}/changes/{n}\">#{n} {}</a>", esc(&c.title), n = c.number),
        );
    }
    fact(&mut body, "Command", &format!("<code>{}</code>", esc(build.command.as_deref().unwrap_or("—"))));
    fact(&mut body, "Network", if build.network == Some(true) { "allowed" } else { "none" });
    fact(
        &mut body,
        "Pipeline file sha256",
        &format!("<code class=\"sha\">{}</code>", esc(build.pipeline_digest.as_deref().unwrap_or("—"))),
    );
    fact(
        &mut body,
        "Build script sha256",
        &format!("<code class=\"sha\">{}</code>", esc(build.script_digest.as_deref().unwrap_or("—"))),
    );
    fact(&mut body, "Worker", &esc(build.worker.as_deref().unwrap_or("—")).to_string());
    fact(&mut body, "Queued", &esc(&html::when(build.queued_at)).to_string());
    if let Some(at) = build.finished_at {
        fact(&mut body, "Finished", &esc(&html::when(at)).to_string());
    }
    if let Some(reason) = &build.reason {
        fact(&mut body, "Why", &esc(reason).to_string());
    }
    body.push_str("</dl></section><section><h2>Artifacts</h2>");
    if build.artifacts.is_empty() {
        body.push_str("<p class=\"empty\">No artifact.</p>");
    } else {
        body.push_str("<table class=\"list\" id=\"artifacts\"><thead><tr><th>Name</th><th>sha256</th><th>Size</th></tr></thead><tbody>");
        for artifact in &build.artifacts {
            push(
                &mut body,
                format_args!(
                    "<tr><td>{}</td><td><a href=\"/projects/{p}/artifacts/{}\"><code class=\"sha\">{}</code></a></td><td>{} bytes</td></tr>",
                    esc(&artifact.name),
                    seg(&artifact.digest),
                    esc(short(&artifact.digest)),
                    artifact.size
                ),
            );
        }
        body.push_str("</tbody></table>");
    }
    body.push_str("</section><section><h2>Provenance</h2>");
    match provenance.as_deref().map(|p| open(&state, p, KeyRole::Builder)) {
        None => body.push_str("<p class=\"empty\">No provenance: the build made no artifact.</p>"),
        Some(Err(why)) => {
            push(&mut body, format_args!("<p class=\"refusal\" id=\"provenance-check\">{}</p>", esc(&why)))
        }
        Some(Ok(statement)) => {
            let pretty = serde_json::to_string_pretty(&statement).unwrap_or_default();
            push(
                &mut body,
                format_args!(
                    "<p class=\"notice ok\" id=\"provenance-check\">✓ SLSA provenance v1, signed by custody's builder key; the signature verifies.</p>\
                     <details><summary>The signed statement</summary><pre class=\"log\">{}</pre></details>",
                    esc(&pretty)
                ),
            );
        }
    }
    body.push_str("</section><section><h2>Log</h2><pre class=\"log\" id=\"build-log\">");
    for chunk in &log {
        body.push_str(&esc(&chunk.data).to_string());
    }
    body.push_str("</pre></section>");
    Ok(html::document(&format!("Build {number}"), Some(&visitor), &body).into_response())
}

/// One artifact: its digest, size and every build that made it.
pub(crate) async fn artifact(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, digest)): WebPath<(String, String)>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(WebError::invalid("an artifact is named by its sha256: 64 hexadecimal digits"));
    }
    let made = state.store().artifact(&access, &digest).await?;
    let p = seg(&project);
    let mut body = format!(
        "<p class=\"crumbs\"><a href=\"/projects\">Projects</a> / <a href=\"/projects/{p}\">{}</a> /</p><h1>Artifact</h1>\
         <dl class=\"facts\"><dt>sha256</dt><dd><code class=\"sha\">{}</code></dd>",
        esc(&project),
        esc(&digest)
    );
    if let Some(first) = made.first() {
        push(
            &mut body,
            format_args!("<dt>Name</dt><dd>{}</dd><dt>Size</dt><dd>{} bytes</dd>", esc(&first.name), first.size),
        );
    }
    body.push_str("</dl><h2>Made by</h2><ul class=\"plain\">");
    for a in &made {
        push(
            &mut body,
            format_args!(
                "<li><a href=\"/projects/{p}/builds/{b}\">build {b}</a> of <code class=\"sha\">{}</code>, {}</li>",
                esc(short(&a.commit)),
                esc(&html::when(a.created_at)),
                b = a.build
            ),
        );
    }
    body.push_str(
        "</ul><p class=\"hint\">Only custody's builder stores artifacts; each download is re-hashed. \
                   Fetch it with <code>custody artifact get</code>.</p>",
    );
    Ok(html::document("Artifact", Some(&visitor), &body).into_response())
}
