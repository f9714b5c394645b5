//! A change: its commits and diff, its authors and why each is one, its
//! reviews (current and stale), its checks with their logs, and the gate
//! rule by rule; the buttons to review and merge.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_domain::gate::GateReport;
use custody_domain::gate::Verdict;
use custody_store::{AuthorReason, ChangeView, CheckRunView, GateRecords, ProjectAccess};

use super::html::{self, esc, push, seg, short, status};
use super::projects::{access, read_git};
use super::session::{see_other, Posted, Visitor};
use super::{WebError, WebPath, WebResult};
use crate::AppState;

/// The largest diff shown in full.
const DIFF_LIMIT: usize = 512 * 1024;
/// The most commits listed.
const COMMIT_LIMIT: usize = 200;

fn why(reason: &AuthorReason) -> String {
    match reason {
        AuthorReason::PushedCommit { commit } => format!("pushed commit {}", short(commit)),
        AuthorReason::MovedSourceBranch { push } => format!("moved the source branch (push {push})"),
        AuthorReason::NamedAuthor { commit } => format!("named as author of {}", short(commit)),
        AuthorReason::NamedCommitter { commit } => format!("named as committer of {}", short(commit)),
        AuthorReason::CoAuthor { commit } => format!("named as co-author of {}", short(commit)),
    }
}

/// The diff, each line marked as added, removed or context.
fn diff_html(diff: &str) -> String {
    let (text, cut) = match diff.char_indices().nth(DIFF_LIMIT) {
        Some((at, _)) => (&diff[..at], true),
        None => (diff, false),
    };
    let mut out = String::from("<pre class=\"diff\" id=\"diff\">");
    for line in text.lines() {
        let class = if line.starts_with("+++") || line.starts_with("---") || line.starts_with("diff ") {
            "file"
        } else if line.starts_with('+') {
            "add"
        } else if line.starts_with('-') {
            "del"
        } else if line.starts_with("@@") {
            "hunk"
        } else {
            "ctx"
        };
        push(&mut out, format_args!("<span class=\"{class}\">{}</span>\n", esc(line)));
    }
    out.push_str("</pre>");
    if cut {
        out.push_str("<p class=\"hint\">The diff is cut off here; fetch the branch to read the rest.</p>");
    }
    out
}

/// One change.
pub(crate) async fn show(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, number)): WebPath<(String, i64)>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    let (change, records, gate) = state.changes().gate_of(&access, number).await?;
    let (target, head, merged_as) = state.store().change_position(&access, number).await?;
    let facts = state.changes().git_facts(&access.project, &access.default_branch, target, head, merged_as).await?;
    let checks = state.store().check_runs(&access, number, true).await?;
    let repository = state.hosting().repositories().path(&access.project);
    let (base, head, commits) = (facts.target_tip.clone(), facts.head.clone(), facts.commits.clone());
    let (log, diff) = read_git(move || {
        let mut args = vec!["log", "--no-walk=unsorted", "--format=%H%x1f%an <%ae>%x1f%s"];
        args.extend(commits.iter().take(COMMIT_LIMIT).map(String::as_str));
        let log = if commits.is_empty() { String::new() } else { custody_git::git(Some(&repository), &args)? };
        let diff = custody_git::change::diff(&repository, base.as_deref(), &head)?;
        Ok((log, diff))
    })
    .await?;

    let here = format!("/projects/{}/changes/{number}", seg(&project));
    let mut body = header(&project, number, &change);
    body.push_str(&actions(&here, &visitor, &access, &change, &records, &gate));
    body.push_str(&people(&change, &records));
    body.push_str(&work(&log, facts.commits.len(), &checks, &diff));
    Ok(html::document(&format!("#{number} {}", change.title), Some(&visitor), &body).into_response())
}

/// The change's title, where it goes, who opened it and its head.
fn header(project: &str, number: i64, change: &ChangeView) -> String {
    let p = seg(project);
    let mut body = format!(
        "<p class=\"crumbs\"><a href=\"/projects\">Projects</a> / <a href=\"/projects/{p}\">{}</a> /</p>\
         <h1><span class=\"muted\">#{number}</span> <span id=\"change-title\">{}</span> {}</h1>\
         <p class=\"meta\"><code>{}</code> → <code>{}</code> · opened by <strong>{}</strong> {} · head <code class=\"sha\" id=\"head\">{}</code></p>",
        esc(project),
        esc(&change.title),
        html::badge(change.state),
        esc(&change.source_branch),
        esc(&change.target_branch),
        esc(&change.opened_by),
        esc(&html::when(change.opened_at)),
        esc(short(&change.head)),
    );
    if let (Some(by), Some(commit)) = (&change.merged_by, &change.merge_commit) {
        push(
            &mut body,
            format_args!(
                "<p class=\"notice ok\">Merged by <strong>{}</strong> as <code class=\"sha\">{}</code>.</p>",
                esc(by),
                esc(short(commit))
            ),
        );
    }
    if !change.description.is_empty() {
        push(&mut body, format_args!("<p class=\"description\">{}</p>", esc(&change.description)));
    }
    body
}

/// The gate rule by rule, and the buttons to review and merge.
fn actions(
    here: &str,
    visitor: &Visitor,
    access: &ProjectAccess,
    change: &ChangeView,
    records: &GateRecords,
    gate: &GateReport,
) -> String {
    let mut body = String::new();
    push(
        &mut body,
        format_args!(
            "<section class=\"gate\" id=\"gate\" data-open=\"{}\"><h2>Merge gate {}</h2>",
            gate.open,
            if gate.open { "<span class=\"badge ok\">open</span>" } else { "<span class=\"badge bad\">closed</span>" }
        ),
    );
    body.push_str(&html::rules(&gate.rules));
    body.push_str("</section>");

    // Whether the visitor may review and merge, and whether their approval
    // would count, as the domain decides them.
    let may_review = custody_domain::access::decide_change_write(
        &visitor.auth.name,
        &access.project,
        access.role,
        visitor.auth.scopes,
        custody_domain::access::ChangeWrite::Review,
    );
    if change.state == custody_domain::status::ChangeState::Open {
        body.push_str("<section class=\"actions\" id=\"actions\"><h2>Your review</h2>");
        if !may_review.allowed {
            body.push_str("<div class=\"hint\" id=\"review-refusal\">");
            body.push_str(&html::refusal_notes(&may_review));
            body.push_str("</div>");
        } else {
            let authorship = records.authors.get(&visitor.auth.name).map(|reasons| {
                let why: Vec<String> = reasons.iter().map(why).collect();
                why.join("; ")
            });
            let own = custody_domain::gate::decide_own_approval(authorship.as_deref());
            body.push_str(&html::form(&format!("{here}/review"), visitor, "review"));
            push(
                &mut body,
                format_args!(
                    "<input type=\"hidden\" name=\"head\" value=\"{}\">\
                     <label>Message <textarea name=\"message\" id=\"review-message\" rows=\"3\"></textarea></label>\
                     <div class=\"buttons\">",
                    esc(&change.head)
                ),
            );
            if own.allowed {
                body.push_str(
                    "<button type=\"submit\" name=\"verdict\" value=\"approve\" id=\"approve\" class=\"primary\">Approve this head</button>\
                     <button type=\"submit\" name=\"verdict\" value=\"request_changes\" id=\"request-changes\">Request changes</button>\
                     <button type=\"submit\" name=\"verdict\" value=\"comment\" id=\"comment\">Comment</button></div>",
                );
            } else {
                body.push_str(
                    "<button type=\"submit\" name=\"verdict\" value=\"approve\" id=\"approve\" disabled>Approve</button>\
                     <button type=\"submit\" name=\"verdict\" value=\"comment\" id=\"comment\">Comment</button></div>\
                     <div id=\"approve-refusal\">",
                );
                body.push_str(&html::refusal_notes(&own));
                body.push_str("</div>");
            }
            body.push_str("</form>");
            body.push_str(&html::form(&format!("{here}/merge"), visitor, "merge"));
            if gate.open {
                body.push_str("<button type=\"submit\" id=\"merge\" class=\"primary\">Merge</button>");
            } else {
                body.push_str(
                    "<button type=\"submit\" id=\"merge\" disabled>Merge</button>\
                     <span class=\"hint\">The gate is closed: each failing rule above says what would open it.</span>",
                );
            }
            body.push_str("</form>");
        }
        body.push_str("</section>");
    }
    body
}

/// The authors and why each is one, and the reviews.
fn people(change: &ChangeView, records: &GateRecords) -> String {
    let mut body = String::new();
    body.push_str("<div class=\"columns\"><section><h2>Authors</h2><p class=\"hint\">Authors never count as reviewers of their change.</p><ul class=\"plain\" id=\"authors\">");
    for (user, reasons) in &records.authors {
        let why: Vec<String> = reasons.iter().map(why).collect();
        push(&mut body, format_args!("<li><strong>{}</strong> — {}</li>", esc(user.as_str()), esc(&why.join("; "))));
    }
    if records.authors.is_empty() {
        body.push_str("<li class=\"empty\">Nobody is recorded yet.</li>");
    }
    body.push_str("</ul></section><section><h2>Reviews</h2><ul class=\"plain\" id=\"reviews\">");
    for review in &change.reviews {
        let stale =
            if review.stale { " <span class=\"badge plain\">stale: given on an earlier head</span>" } else { "" };
        push(
            &mut body,
            format_args!(
                "<li class=\"review{}\"><strong>{}</strong> {} on <code class=\"sha\">{}</code>{stale} <span class=\"muted\">{}</span>{}</li>",
                if review.stale { " stale" } else { "" },
                esc(&review.reviewer),
                status(&review.verdict),
                esc(short(&review.head)),
                esc(&html::when(review.at)),
                if review.message.is_empty() {
                    String::new()
                } else {
                    format!("<blockquote>{}</blockquote>", esc(&review.message))
                }
            ),
        );
    }
    if change.reviews.is_empty() {
        body.push_str("<li class=\"empty\">No review yet.</li>");
    }
    body.push_str("</ul></section></div>");
    body
}

/// The commits, the check runs with their logs, and the diff.
fn work(log: &str, commit_count: usize, checks: &[CheckRunView], diff: &str) -> String {
    let mut body = String::new();
    body.push_str("<section><h2>Commits</h2><table class=\"list\" id=\"commits\"><thead><tr><th>Commit</th><th>Named author</th><th>Subject</th></tr></thead><tbody>");
    for line in log.lines() {
        let mut fields = line.splitn(3, '\u{1f}');
        let (id, author, subject) =
            (fields.next().unwrap_or_default(), fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
        push(
            &mut body,
            format_args!(
                "<tr><td><code class=\"sha\">{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(short(id)),
                esc(author),
                esc(subject)
            ),
        );
    }
    body.push_str("</tbody></table>");
    if commit_count > COMMIT_LIMIT {
        push(&mut body, format_args!("<p class=\"hint\">The first {COMMIT_LIMIT} of {} commits.</p>", commit_count));
    }
    body.push_str("</section><section><h2>Checks</h2>");
    if checks.is_empty() {
        body.push_str("<p class=\"empty\">No check has run.</p>");
    }
    for check in checks {
        push(
            &mut body,
            format_args!(
                "<details class=\"check\"><summary>{} on <code class=\"sha\">{}</code> · <code>{}</code>{}</summary><pre class=\"log\">{}</pre></details>",
                html::badge(check.status),
                esc(short(&check.head)),
                esc(check.command.as_deref().unwrap_or("no command")),
                check.exit_code.map(|c| format!(" · exit {c}")).unwrap_or_default(),
                esc(check.log.as_deref().unwrap_or(""))
            ),
        );
    }
    body.push_str("</section><section><h2>Diff</h2>");
    body.push_str(&diff_html(diff));
    body.push_str("</section>");
    body
}

/// Reviews the change's head the visitor saw.
pub(crate) async fn review(
    State(state): State<AppState>,
    WebPath((project, number)): WebPath<(String, i64)>,
    posted: Posted,
) -> WebResult<Response> {
    let here = format!("/projects/{}/changes/{number}", seg(&project));
    let access = access(&state, &posted.visitor, &project).await?;
    let verdict = Verdict::parse(posted.get("verdict").unwrap_or_default())
        .ok_or_else(|| WebError::invalid("choose approve, request changes or comment").back(here.clone()))?;
    let head = Some(posted.text("head")).filter(|h| !h.is_empty());
    state
        .store()
        .review(&posted.visitor.auth, &access, number, verdict, posted.text("message"), head)
        .await
        .map_err(|e| WebError::from(e).back(here.clone()))?;
    Ok(see_other(&format!("{here}#reviews")))
}

/// Merges the change through its gate.
pub(crate) async fn merge(
    State(state): State<AppState>,
    WebPath((project, number)): WebPath<(String, i64)>,
    posted: Posted,
) -> WebResult<Response> {
    let here = format!("/projects/{}/changes/{number}", seg(&project));
    let access = access(&state, &posted.visitor, &project).await?;
    state
        .changes()
        .merge(&posted.visitor.auth, &access, number)
        .await
        .map_err(|e| WebError::from(e).back(here.clone()))?;
    Ok(see_other(&here))
}
