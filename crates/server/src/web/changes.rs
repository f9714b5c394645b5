//! A change: its commits and diff, its authors and why each is one, its
//! reviews (current and stale), its checks with their logs, and the gate
//! rule by rule; the buttons to review and merge.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_api::CommentView;
use custody_domain::gate::GateReport;
use custody_domain::gate::Verdict;
use custody_store::{AuthorReason, ChangeView, CheckRunView, GateRecords, ProjectAccess};

use maud::{html, Markup};

use super::html::{self, seg, short, status};
use super::projects::access;
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

/// A thread of line comments: its first comment and the replies.
struct Thread {
    first: CommentView,
    replies: Vec<CommentView>,
}

/// The change's comments as threads, oldest first.
fn threads(comments: Vec<CommentView>) -> Vec<Thread> {
    let mut threads: Vec<Thread> = Vec::new();
    for comment in comments {
        match comment.reply_to {
            None => threads.push(Thread { first: comment, replies: Vec::new() }),
            Some(to) => {
                if let Some(thread) = threads.iter_mut().find(|t| t.first.id == to) {
                    thread.replies.push(comment);
                }
            }
        }
    }
    threads
}

/// What the diff's tables need besides the diff: where forms post, who
/// looks, the head, the threads, and the line a new comment is being
/// written on.
struct DiffContext<'a> {
    here: &'a str,
    visitor: &'a Visitor,
    head: &'a str,
    opened_by: &'a str,
    may_comment: bool,
    may_write: bool,
    threads: &'a [Thread],
    writing_at: Option<(&'a str, u64)>,
}

impl DiffContext<'_> {
    /// The threads still anchored at `line` of `path` at the current head.
    fn at<'b>(&'b self, path: &'b str, line: u64) -> impl Iterator<Item = &'b Thread> + 'b {
        self.threads.iter().filter(move |t| !t.first.outdated && t.first.path == path && t.first.line == line as i64)
    }

    /// A link that opens the comment form under `line` of `path`.
    fn comment_href(&self, path: &str, line: u64) -> String {
        let target: String = format!("{path}:{line}").bytes().map(|b| format!("%{b:02X}")).collect();
        format!("{}?line={target}#comment-form", self.here)
    }
}

/// The diff, one collapsible table per file with the old and new line
/// numbers; each new line can take a comment, and each thread sits under
/// its line.
fn diff_tables(files: &[super::diff::File], cut: bool, context: &DiffContext<'_>) -> Markup {
    html! {
        div #diff {
            @if files.is_empty() { p.empty { "The change makes no difference to its target." } }
            @for (i, file) in files.iter().enumerate() {
                details.file open id={ "file-" (i) } {
                    summary {
                        code.path { (file.path) } " "
                        span.muted { "+" (file.added) " −" (file.removed) }
                    }
                    @if file.binary {
                        p.hint { "A binary file: fetch the branch to see it." }
                    } @else {
                        table.diff {
                            @for line in &file.lines {
                                tr class=(line.kind.class()) {
                                    td.num { @if let Some(n) = line.old { (n) } }
                                    td.num {
                                        @if let Some(n) = line.new {
                                            @if context.may_comment {
                                                a href=(context.comment_href(&file.path, n)) id={ "L" (i) "-" (n) }
                                                    title={ "Comment on line " (n) } { (n) }
                                            } @else { (n) }
                                        }
                                    }
                                    td.code { (line.text) }
                                }
                                @if let Some(n) = line.new {
                                    @for thread in context.at(&file.path, n) {
                                        tr.thread-row { td colspan="3" { (thread_markup(thread, context)) } }
                                    }
                                    @if context.writing_at == Some((file.path.as_str(), n)) {
                                        tr.thread-row { td colspan="3" { (new_thread_form(&file.path, n, context)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if cut { p.hint { "The diff is cut off here; fetch the branch to read the rest." } }
        }
    }
}

/// The form for a new thread on `line` of `path` at the current head.
fn new_thread_form(path: &str, line: u64, context: &DiffContext<'_>) -> Markup {
    html! {
        (html::post_form(&format!("{}/comments", context.here), context.visitor, "comment", html! {
            input type="hidden" name="path" value=(path);
            input type="hidden" name="line" value=(line);
            input type="hidden" name="head" value=(context.head);
            label #comment-form { "Comment on line " (line) " of " code { (path) } " "
                textarea name="body" #comment-body rows="3" required {} }
            div.buttons { button type="submit" #comment-submit class="primary" { "Comment" } }
        }))
    }
}

/// One thread: its comments, a reply form, and the button to resolve it
/// (shown only to those the rule lets resolve it).
fn thread_markup(thread: &Thread, context: &DiffContext<'_>) -> Markup {
    let first = &thread.first;
    let may_resolve = custody_domain::change::decide_resolve_thread(
        context.visitor.auth.name.as_str(),
        &first.author,
        context.opened_by,
        context.may_write,
    )
    .allowed;
    let comment = |c: &CommentView| {
        html! {
            div.comment id={ "comment-" (c.id) } {
                p.meta { strong { (c.author) } " " (html::when(c.at)) }
                p.body { (c.body) }
            }
        }
    };
    html! {
        div.thread id={ "thread-" (first.id) } data-outdated=(first.outdated) data-resolved=(first.resolved_at.is_some()) {
            @if first.outdated {
                p.hint {
                    span.badge.plain { "outdated" } " on " code { (first.path) } " line " (first.line) " at "
                    code.sha { (short(&first.head)) } ", which read:"
                }
                pre.quoted { (first.line_text) }
            }
            @if let (Some(by), Some(at)) = (&first.resolved_by, first.resolved_at) {
                details.resolved {
                    summary { span.badge.ok { "resolved" } " by " (by) " " (html::when(at)) }
                    (comment(first))
                    @for reply in &thread.replies { (comment(reply)) }
                }
            } @else {
                (comment(first))
                @for reply in &thread.replies { (comment(reply)) }
                @if context.may_comment {
                    (html::post_form(&format!("{}/comments", context.here), context.visitor, "reply", html! {
                        input type="hidden" name="reply_to" value=(first.id);
                        label { "Reply " textarea name="body" rows="2" required {} }
                        div.buttons { button type="submit" { "Reply" } }
                    }))
                }
                @if may_resolve {
                    (html::post_form(&format!("{}/comments/{}/resolve", context.here, first.id), context.visitor, "resolve", html! {
                        button type="submit" class="resolve-thread" { "Resolve" }
                    }))
                }
            }
        }
    }
}

/// What a change's page is asked for: the line a comment is being
/// written on (`PATH:LINE`).
#[derive(serde::Deserialize)]
pub(crate) struct ShowQuery {
    line: Option<String>,
}

/// One change.
pub(crate) async fn show(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath((project, number)): WebPath<(String, i64)>,
    super::WebQuery(query): super::WebQuery<ShowQuery>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    let (change, records, gate) = state.changes().gate_of(&access, number).await?;
    let (target, head, merged_as) = state.store().change_position(&access, number).await?;
    let facts = state.changes().git_facts(&access.project, &access.default_branch, target, head, merged_as).await?;
    let checks = state.store().check_runs(&access, number, true).await?;
    let shown = state
        .changes()
        .shown_from_git(&access.project, facts.target_tip.clone(), facts.head.clone(), &facts.commits, COMMIT_LIMIT)
        .await?;
    let (log, diff) = (&shown.log, &shown.diff);

    let comments =
        custody_app::comments::comments(state.store(), state.hosting().repositories(), &access, number).await?;
    let threads = threads(comments);
    let here = format!("/projects/{}/changes/{number}", seg(&project));
    let (text, cut) = match diff.char_indices().nth(DIFF_LIMIT) {
        Some((at, _)) => (&diff[..at], true),
        None => (diff.as_str(), false),
    };
    let files = super::diff::parse(text);
    let decide = |action| {
        custody_domain::access::decide_change_write(
            &visitor.auth.name,
            &access.project,
            access.role,
            visitor.auth.scopes,
            action,
        )
        .allowed
    };
    let may_comment = change.state == custody_domain::status::ChangeState::Open
        && custody_domain::access::decide_review(
            &visitor.auth.name,
            &access.project,
            access.role,
            visitor.auth.scopes,
            custody_domain::gate::Verdict::Comment,
        )
        .allowed;
    let writing_at =
        query.line.as_deref().and_then(|l| l.rsplit_once(':')).and_then(|(p, n)| Some((p, n.parse().ok()?)));
    let context = DiffContext {
        here: &here,
        visitor: &visitor,
        head: &change.head,
        opened_by: &change.opened_by,
        may_comment,
        may_write: decide(custody_domain::access::ChangeWrite::Review),
        threads: &threads,
        writing_at,
    };
    // Threads no line of the current diff carries: outdated, or on a line
    // the diff no longer shows.
    let shown = |t: &Thread| {
        !t.first.outdated
            && files
                .iter()
                .any(|f| f.path == t.first.path && f.lines.iter().any(|l| l.new == Some(t.first.line as u64)))
    };
    let elsewhere: Vec<&Thread> = threads.iter().filter(|t| !shown(t)).collect();
    let body = html! {
        (header(&project, number, &change))
        (manage(&here, &visitor, &access, &change))
        (actions(&here, &visitor, &access, &change, &records, &gate))
        (people(&change, &records))
        (work(log, facts.commits.len(), &checks))
        section {
            h2 { "Diff" }
            @if may_comment { p.hint { "Click a line's number to comment on it." } }
            (diff_tables(&files, cut, &context))
        }
        @if !elsewhere.is_empty() {
            section #earlier-comments {
                h2 { "Comments on earlier heads" }
                @for thread in elsewhere { (thread_markup(thread, &context)) }
            }
        }
    };
    Ok(html::page(&format!("#{number} {}", change.title), Some(&visitor), body).into_response())
}

/// The change's title, where it goes, who opened it and its head.
fn header(project: &str, number: i64, change: &ChangeView) -> Markup {
    html! {
        p.crumbs { a href="/projects" { "Projects" } " / " a href={ "/projects/" (seg(project)) } { (project) } " /" }
        h1 { span.muted { "#" (number) } " " span #change-title { (change.title) } " " (html::badge(change.state)) }
        p.meta {
            code { (change.source_branch) } " → " code { (change.target_branch) }
            " · opened by " strong { (change.opened_by) } " " (html::when(change.opened_at))
            " · head " code.sha #head { (short(&change.head)) }
        }
        @if let (Some(by), Some(commit)) = (&change.merged_by, &change.merge_commit) {
            p.notice.ok { "Merged by " strong { (by) } " as " code.sha { (short(commit)) } "." }
        }
        @if !change.description.is_empty() { p.description { (change.description) } }
    }
}

/// For the project's writers: the change's title and description to edit
/// while it is open, and the button to close or reopen it.
fn manage(here: &str, visitor: &Visitor, access: &ProjectAccess, change: &ChangeView) -> Markup {
    let may = |action| {
        custody_domain::access::decide_change_write(
            &visitor.auth.name,
            &access.project,
            access.role,
            visitor.auth.scopes,
            action,
        )
        .allowed
    };
    let open = change.state == custody_domain::status::ChangeState::Open;
    let closed = change.state == custody_domain::status::ChangeState::Closed;
    html! {
        @if open && may(custody_domain::access::ChangeWrite::Open) {
            details.edit #edit {
                summary { "Edit the title and description" }
                (html::post_form(&format!("{here}/edit"), visitor, "edit", html! {
                    label { "Title " input name="title" #edit-title value=(change.title) maxlength="200" required; }
                    label { "Description " textarea name="description" #edit-description rows="5" { (change.description) } }
                    div.buttons { button type="submit" #save-edit class="primary" { "Save" } }
                }))
            }
        }
        @if (open || closed) && may(custody_domain::access::ChangeWrite::CloseOrReopen) {
            @if open {
                (html::post_form(&format!("{here}/close"), visitor, "state", html! {
                    button type="submit" #close-change { "Close this change" }
                }))
            } @else {
                (html::post_form(&format!("{here}/reopen"), visitor, "state", html! {
                    button type="submit" #reopen-change { "Reopen this change" }
                }))
            }
        }
    }
}

/// The gate rule by rule, and the buttons to review and merge.
fn actions(
    here: &str,
    visitor: &Visitor,
    access: &ProjectAccess,
    change: &ChangeView,
    records: &GateRecords,
    gate: &GateReport,
) -> Markup {
    // Whether the visitor may review and merge, and whether their approval
    // would count, as the domain decides them.
    let may_review = custody_domain::access::decide_change_write(
        &visitor.auth.name,
        &access.project,
        access.role,
        visitor.auth.scopes,
        custody_domain::access::ChangeWrite::Review,
    );
    let authorship = records.authors.get(&visitor.auth.name).map(|reasons| {
        let why: Vec<String> = reasons.iter().map(why).collect();
        why.join("; ")
    });
    let own = custody_domain::gate::decide_own_approval(authorship.as_deref());
    html! {
        section.gate #gate data-open=(gate.open) {
            h2 { "Merge gate " @if gate.open { span.badge.ok { "open" } } @else { span.badge.bad { "closed" } } }
            (html::rules(&gate.rules))
        }
        @if change.state == custody_domain::status::ChangeState::Open {
            section.actions #actions {
                h2 { "Your review" }
                @if !may_review.allowed {
                    div.hint #review-refusal { (html::refusal_notes(&may_review)) }
                } @else {
                    (html::post_form(&format!("{here}/review"), visitor, "review", html! {
                        input type="hidden" name="head" value=(change.head);
                        label { "Message " textarea name="message" #review-message rows="3" {} }
                        div.buttons {
                            @if own.allowed {
                                button type="submit" name="verdict" value="approve" #approve class="primary" { "Approve this head" }
                                button type="submit" name="verdict" value="request_changes" #request-changes { "Request changes" }
                            } @else {
                                button type="submit" name="verdict" value="approve" #approve disabled { "Approve" }
                            }
                            button type="submit" name="verdict" value="comment" #comment { "Comment" }
                        }
                        @if !own.allowed { div #approve-refusal { (html::refusal_notes(&own)) } }
                    }))
                    (html::post_form(&format!("{here}/merge"), visitor, "merge", html! {
                        @if gate.open {
                            button type="submit" #merge class="primary" { "Merge" }
                        } @else {
                            button type="submit" #merge disabled { "Merge" }
                            span.hint { "The gate is closed: each failing rule above says what would open it." }
                        }
                    }))
                }
            }
        }
    }
}

/// The authors and why each is one, and the reviews.
fn people(change: &ChangeView, records: &GateRecords) -> Markup {
    html! {
        div.columns {
            section {
                h2 { "Authors" }
                p.hint { "Authors never count as reviewers of their change." }
                ul.plain #authors {
                    @for (user, reasons) in &records.authors {
                        li { strong { (user.as_str()) } " — " (reasons.iter().map(why).collect::<Vec<_>>().join("; ")) }
                    }
                    @if records.authors.is_empty() { li.empty { "Nobody is recorded yet." } }
                }
            }
            section {
                h2 { "Reviews" }
                ul.plain #reviews {
                    @for review in &change.reviews {
                        li class={ "review" @if review.stale { " stale" } } {
                            strong { (review.reviewer) } " " (status(&review.verdict)) " on "
                            code.sha { (short(&review.head)) }
                            @if review.stale { " " span.badge.plain { "stale: given on an earlier head" } }
                            " " span.muted { (html::when(review.at)) }
                            @if !review.message.is_empty() { blockquote { (review.message) } }
                        }
                    }
                    @if change.reviews.is_empty() { li.empty { "No review yet." } }
                }
            }
        }
    }
}

/// The commits, and the check runs with their logs.
fn work(log: &str, commit_count: usize, checks: &[CheckRunView]) -> Markup {
    html! {
        section {
            h2 { "Commits" }
            table.list #commits {
                thead { tr { th { "Commit" } th { "Named author" } th { "Subject" } } }
                tbody {
                    @for line in log.lines() {
                        @let mut fields = line.splitn(3, '\u{1f}');
                        @let (id, author, subject) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
                        tr { td { code.sha { (short(id)) } } td { (author) } td { (subject) } }
                    }
                }
            }
            @if commit_count > COMMIT_LIMIT { p.hint { "The first " (COMMIT_LIMIT) " of " (commit_count) " commits." } }
        }
        section {
            h2 { "Checks" }
            @if checks.is_empty() { p.empty { "No check has run." } }
            @for check in checks {
                details.check {
                    summary {
                        (html::badge(check.status)) " on " code.sha { (short(&check.head)) } " · "
                        code { (check.command.as_deref().unwrap_or("no command")) }
                        @if let Some(code) = check.exit_code { " · exit " (code) }
                    }
                    pre.log { (check.log.as_deref().unwrap_or("")) }
                }
            }
        }
    }
}

/// A comment on a line, or a reply to a thread, through the same calls
/// as the API.
pub(crate) async fn comment(
    State(state): State<AppState>,
    WebPath((project, number)): WebPath<(String, i64)>,
    posted: Posted,
) -> WebResult<Response> {
    let here = format!("/projects/{}/changes/{number}", seg(&project));
    let access = access(&state, &posted.visitor, &project).await?;
    let body = posted.get("body").unwrap_or_default().replace("\r\n", "\n").trim().to_owned();
    let made = match posted.get("reply_to").map(str::parse::<i64>) {
        Some(Ok(to)) => {
            let reply = custody_store::NewComment::Reply { to, body };
            state.store().add_comment(&posted.visitor.auth, &access, number, reply).await.map_err(WebError::from)
        }
        Some(Err(_)) => Err(WebError::invalid("reply_to names a comment by its number")),
        None => {
            let line = posted.text("line").parse::<i64>().map_err(|_| WebError::invalid("line is a number, from 1"));
            match line {
                Ok(line) => custody_app::comments::start_thread(
                    state.store(),
                    state.hosting().repositories(),
                    &posted.visitor.auth,
                    &access,
                    number,
                    posted.text("path"),
                    line,
                    posted.text("head"),
                    body,
                )
                .await
                .map_err(WebError::from),
                Err(e) => Err(e),
            }
        }
    }
    .map_err(|e| e.back(here.clone()))?;
    Ok(see_other(&format!("{here}#thread-{}", made.reply_to.unwrap_or(made.id))))
}

/// Resolves a thread.
pub(crate) async fn resolve_comment(
    State(state): State<AppState>,
    WebPath((project, number, id)): WebPath<(String, i64, i64)>,
    posted: Posted,
) -> WebResult<Response> {
    let here = format!("/projects/{}/changes/{number}", seg(&project));
    let access = access(&state, &posted.visitor, &project).await?;
    state
        .store()
        .resolve_thread(&posted.visitor.auth, &access, number, id)
        .await
        .map_err(|e| WebError::from(e).back(here.clone()))?;
    Ok(see_other(&format!("{here}#thread-{id}")))
}

/// Saves a new title or description.
pub(crate) async fn edit(
    State(state): State<AppState>,
    WebPath((project, number)): WebPath<(String, i64)>,
    posted: Posted,
) -> WebResult<Response> {
    let here = format!("/projects/{}/changes/{number}", seg(&project));
    let access = access(&state, &posted.visitor, &project).await?;
    let title = posted.text("title");
    let description = posted.get("description").unwrap_or_default().replace("\r\n", "\n");
    state
        .store()
        .edit_change(&posted.visitor.auth, &access, number, Some(title), Some(description.trim_end().to_owned()))
        .await
        .map_err(|e| WebError::from(e).back(here.clone()))?;
    Ok(see_other(&here))
}

/// Closes the change.
pub(crate) async fn close(
    State(state): State<AppState>,
    WebPath((project, number)): WebPath<(String, i64)>,
    posted: Posted,
) -> WebResult<Response> {
    set_state(state, project, number, posted, false).await
}

/// Reopens the change.
pub(crate) async fn reopen(
    State(state): State<AppState>,
    WebPath((project, number)): WebPath<(String, i64)>,
    posted: Posted,
) -> WebResult<Response> {
    set_state(state, project, number, posted, true).await
}

async fn set_state(state: AppState, project: String, number: i64, posted: Posted, open: bool) -> WebResult<Response> {
    let here = format!("/projects/{}/changes/{number}", seg(&project));
    let access = access(&state, &posted.visitor, &project).await?;
    state
        .store()
        .set_change_state(&posted.visitor.auth, &access, number, open)
        .await
        .map_err(|e| WebError::from(e).back(here.clone()))?;
    Ok(see_other(&here))
}

/// Which changes a project's list shows.
#[derive(serde::Deserialize)]
pub(crate) struct ListQuery {
    state: Option<String>,
    author: Option<String>,
    reviewer: Option<String>,
}

/// A project's changes: open, merged or closed, by who opened them or
/// who reviewed them.
pub(crate) async fn list(
    State(state): State<AppState>,
    visitor: Visitor,
    WebPath(project): WebPath<String>,
    super::WebQuery(query): super::WebQuery<ListQuery>,
) -> WebResult<Response> {
    let access = access(&state, &visitor, &project).await?;
    let wanted = query.state.as_deref().filter(|s| !s.is_empty()).unwrap_or("open");
    if !["open", "merged", "closed"].contains(&wanted) {
        return Err(
            WebError::invalid("state is open, merged or closed").back(format!("/projects/{}/changes", seg(&project)))
        );
    }
    let some = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    let (author, reviewer) = (some(&query.author), some(&query.reviewer));
    let page = state
        .store()
        .list_changes(
            &access,
            Some(wanted),
            custody_store::PageRequest::new(None, Some(custody_store::PageRequest::MAX)),
        )
        .await?;
    let changes: Vec<&ChangeView> = page
        .items
        .iter()
        .filter(|c| author.as_ref().is_none_or(|a| &c.opened_by == a))
        .filter(|c| reviewer.as_ref().is_none_or(|r| c.reviews.iter().any(|v| &v.reviewer == r)))
        .collect();
    let p = seg(&project);
    let body = html! {
        p.crumbs { a href="/projects" { "Projects" } " / " a href={ "/projects/" (p) } { (project) } " /" }
        h1 { "Changes" }
        form method="get" action={ "/projects/" (p) "/changes" } class="filters" {
            label { "State "
                select name="state" #filter-state {
                    @for s in ["open", "merged", "closed"] { option value=(s) selected[s == wanted] { (s) } }
                }
            }
            label { "Opened by " input name="author" #filter-author value=(author.clone().unwrap_or_default()); }
            label { "Reviewed by " input name="reviewer" #filter-reviewer value=(reviewer.clone().unwrap_or_default()); }
            button type="submit" #filter { "Filter" }
        }
        @if changes.is_empty() {
            p.empty { "No " (wanted) " change matches." }
        } @else {
            table.list #change-list {
                thead { tr { th { "#" } th { "Title" } th { "From" } th { "Opened by" } th { "Reviews" } } }
                tbody {
                    @for c in &changes {
                        tr {
                            td { (c.number) }
                            td { a href={ "/projects/" (p) "/changes/" (c.number) } { (c.title) } " " (html::badge(c.state)) }
                            td { code { (c.source_branch) } " → " code { (c.target_branch) } }
                            td { (c.opened_by) " · " (html::when(c.opened_at)) }
                            td {
                                @for r in c.reviews.iter().filter(|r| !r.stale) { (status(&r.verdict)) " " (r.reviewer) " " }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(html::page(&format!("Changes of {project}"), Some(&visitor), body).into_response())
}

/// Opens a change from a pushed branch, as the API does.
pub(crate) async fn open(
    State(state): State<AppState>,
    WebPath(project): WebPath<String>,
    posted: Posted,
) -> WebResult<Response> {
    let back = format!("/projects/{}", seg(&project));
    let access = access(&state, &posted.visitor, &project).await?;
    let source = posted.text("source");
    let target = Some(posted.text("target")).filter(|t| !t.is_empty()).unwrap_or_else(|| access.default_branch.clone());
    custody_domain::project::check_branch_name(&source).map_err(|e| WebError::from(e).back(back.clone()))?;
    custody_domain::project::check_branch_name(&target).map_err(|e| WebError::from(e).back(back.clone()))?;
    if source == target {
        return Err(WebError::invalid("the source and target branches are the same").back(back));
    }
    let repository = state.hosting().repositories().path(&access.project);
    let source_ref = format!("refs/heads/{source}");
    let head =
        super::projects::read_git(move || custody_git::change::resolve(&repository, &source_ref)).await?.ok_or_else(
            || WebError::invalid(format!("branch {source} does not exist; push it first")).back(back.clone()),
        )?;
    let description = posted.get("description").unwrap_or_default().replace("\r\n", "\n").trim_end().to_owned();
    let change = state
        .store()
        .open_change(&posted.visitor.auth, &access, source, target, posted.text("title"), description, head)
        .await
        .map_err(|e| WebError::from(e).back(back.clone()))?;
    Ok(see_other(&format!("/projects/{}/changes/{}", seg(&project), change.number)))
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
