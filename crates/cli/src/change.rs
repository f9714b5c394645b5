//! `custody change …`: change requests, reviews, the gate and merging.

use clap::{ArgGroup, Args, Subcommand};
use custody_api::{AuthorReason, AuthorView, ChangeDetail, ChangeView, CheckRunView, MergeQueue, Merged, ReviewView};
use custody_domain::gate::GateReport;
use custody_domain::ProjectName;
use serde_json::{json, Value};

use crate::client::Client;
use crate::commands::Output;
use crate::Failure;

#[derive(Subcommand, Debug)]
pub enum ChangeCommand {
    /// Open a change from a pushed branch.
    Open {
        project: String,
        /// The branch the change follows.
        #[arg(long)]
        source: String,
        /// Where it goes [default: the project's default branch].
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        title: String,
        /// A description.
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
    },
    /// A project's changes.
    List {
        project: String,
        /// open, closed, merged or all.
        #[arg(long, default_value = "open")]
        state: String,
    },
    /// One change: its authors and why, reviews, and the gate.
    Show { project: String, number: i64 },
    /// The change's diff.
    Diff { project: String, number: i64 },
    /// Close a change.
    Close { project: String, number: i64 },
    /// Reopen a closed change.
    Reopen { project: String, number: i64 },
    /// Review the change's current head.
    Review(ReviewArgs),
    /// Every rule of the gate, passed or failed (exit 0 open, 1 closed).
    Gate { project: String, number: i64 },
    /// Merge the change if its gate is open, waiting for its turn behind
    /// other merges into the same branch.
    Merge {
        project: String,
        number: i64,
        /// If the gate is closed, merge as soon as it opens.
        #[arg(long)]
        auto: bool,
        /// Do not wait: queue the change, and custody merges it in its turn
        /// once its gate is open (see `change queue`).
        #[arg(long)]
        no_wait: bool,
    },
    /// The project's merge queue: merges whose branch is moving, then the
    /// changes custody merges in turn as their gates open.
    Queue { project: String },
    /// The check runs of a change.
    Checks {
        project: String,
        number: i64,
        /// Print each run's output too.
        #[arg(long)]
        log: bool,
    },
    /// The signed change attestation of a merged change (a DSSE envelope).
    Attestation { project: String, number: i64 },
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("verdict").required(true).args(["approve", "request_changes", "comment", "withdraw"])))]
pub struct ReviewArgs {
    project: String,
    number: i64,
    /// Approve the head you read; needs --head with its full commit id.
    #[arg(long, requires = "head")]
    approve: bool,
    /// Block merging until you approve or withdraw.
    #[arg(long)]
    request_changes: bool,
    /// Only comment.
    #[arg(long)]
    comment: bool,
    /// Withdraw your request for changes.
    #[arg(long)]
    withdraw: bool,
    /// What you say.
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
    /// The full commit id of the head you read (`change show` and
    /// `change diff` print it); refused if the change has moved on since.
    #[arg(long, value_name = "SHA")]
    head: Option<String>,
}

fn path(project: &str, number: i64, rest: &str) -> Result<String, Failure> {
    Ok(format!("/api/v1/projects/{}/changes/{number}{rest}", ProjectName::parse(project)?))
}

fn change_line(c: &ChangeView) -> String {
    format!(
        "#{} {:<7} {} ({} -> {}) by {}",
        c.number,
        c.state.as_str(),
        c.title,
        c.source_branch,
        c.target_branch,
        c.opened_by
    )
}

/// The gate as lines: each rule, passed or failed, and what would satisfy it.
pub fn gate_text(gate: &GateReport) -> String {
    let mut lines =
        vec![format!("gate {} at {}", if gate.open { "OPEN" } else { "CLOSED" }, custody_domain::short_id(&gate.head))];
    for rule in &gate.rules {
        let mark = if rule.passed { "pass" } else { "FAIL" };
        lines.push(format!("  {mark}  {}: {}", rule.rule, rule.message));
        if let Some(satisfy) = &rule.satisfy {
            lines.push(format!("        to satisfy: {satisfy}"));
        }
    }
    lines.join("\n")
}

/// Why someone is an author, as `kind detail`: `pushed commit 0123456789ab`.
fn reason_text(reason: &AuthorReason) -> String {
    let (kind, commit) = match reason {
        AuthorReason::MovedSourceBranch { push } => return format!("moved source branch push {push}"),
        AuthorReason::PushedCommit { commit } => ("pushed commit", commit),
        AuthorReason::NamedAuthor { commit } => ("named author", commit),
        AuthorReason::NamedCommitter { commit } => ("named committer", commit),
        AuthorReason::CoAuthor { commit } => ("co author", commit),
    };
    format!("{kind} {}", custody_domain::short_id(commit))
}

fn author_line(author: &AuthorView) -> String {
    let why: Vec<String> = author.why.iter().map(reason_text).collect();
    format!("  {}: {}", author.user, why.join("; "))
}

fn review_line(review: &ReviewView) -> String {
    let stale = if review.stale { " (stale: an older head)" } else { "" };
    format!(
        "  {} {} at {}{stale} {}",
        review.reviewer,
        review.verdict,
        custody_domain::short_id(&review.head),
        review.message
    )
}

fn detail_text(detail: &ChangeDetail) -> String {
    let change = &detail.change;
    let mut lines = vec![change_line(change), format!("head: {}", change.head)];
    if !change.description.is_empty() {
        lines.push(format!("\n{}\n", change.description));
    }
    lines.push("authors:".into());
    lines.extend(detail.authors.iter().map(author_line));
    lines.push("reviews:".into());
    lines.extend(change.reviews.iter().map(review_line));
    lines.push(gate_text(&detail.gate));
    lines.join("\n")
}

fn check_line(run: &CheckRunView) -> String {
    let exit = run.exit_code.map_or_else(|| "-".to_owned(), |code| code.to_string());
    let mut line = format!(
        "{} {:<12} {} exit {exit}",
        custody_domain::short_id(&run.head),
        run.status.as_str(),
        run.command.as_deref().unwrap_or("-")
    );
    if let Some(log) = &run.log {
        line.push('\n');
        line.push_str(log);
    }
    line
}

fn queue_text(queue: &MergeQueue) -> String {
    let mut text = String::new();
    for moving in &queue.moving {
        text.push_str(&format!("moving  #{} {} to {}\n", moving.change, moving.reference, moving.merge_commit));
    }
    for (turn, waiting) in queue.waiting.iter().enumerate() {
        text.push_str(&format!(
            "{:<7} #{} into {} (asked by {}): {}\n",
            turn + 1,
            waiting.change,
            waiting.target,
            waiting.asked_by.as_deref().unwrap_or("?"),
            waiting.title
        ));
    }
    if text.is_empty() {
        text.push_str("the merge queue is empty");
    }
    text.trim_end().to_owned()
}

fn merged_text(merged: &Merged) -> String {
    let number = merged.change.number;
    if merged.auto_merge {
        format!(
            "queued: custody will merge change {number} in its turn, once its gate is open\n{}",
            gate_text(&merged.gate)
        )
    } else {
        format!("merged change {number} as {}", merged.change.merge_commit.as_deref().unwrap_or(""))
    }
}

pub async fn run(client: &Client, command: ChangeCommand, out: Output) -> Result<(), Failure> {
    match command {
        ChangeCommand::Open { project, source, target, title, message } => {
            let body = custody_api::OpenChangeRequest { source, target, title, description: message };
            let made: ChangeView =
                client.submit(&format!("/api/v1/projects/{}/changes", ProjectName::parse(&project)?), &body).await?;
            out.show(&made, |c| format!("opened change {}\n{}", c.number, change_line(c)));
        }
        ChangeCommand::List { project, state } => {
            let project = ProjectName::parse(&project)?;
            let path = match state.as_str() {
                "all" => format!("/api/v1/projects/{project}/changes"),
                "open" | "closed" | "merged" => format!("/api/v1/projects/{project}/changes?state={state}"),
                other => return Err(Failure::input(format!("--state {other:?}: use open, closed, merged or all"))),
            };
            let changes: Vec<ChangeView> = client.list(&path).await?;
            out.list(&changes, change_line, "no changes");
        }
        ChangeCommand::Show { project, number } => {
            let detail: ChangeDetail = client.get(&path(&project, number, "")?).await?;
            out.show(&detail, detail_text);
        }
        ChangeCommand::Diff { project, number } => {
            let (text, head) = client.text_with_header(&path(&project, number, "/diff")?, "x-custody-head").await?;
            if out.json {
                out.print_json(&json!({ "diff": text, "head": head }));
            } else {
                // The head goes to stderr, so that the diff itself can be piped.
                if let Some(head) = &head {
                    eprintln!(
                        "head {head}\n(approve what you read: custody change review {project} {number} --approve --head {head})"
                    );
                }
                print!("{}", crate::commands::for_terminal(&text));
            }
        }
        ChangeCommand::Close { project, number } => {
            let change: ChangeView = client.post(&path(&project, number, "/close")?).await?;
            out.show(&change, |c| format!("closed change {}", c.number));
        }
        ChangeCommand::Reopen { project, number } => {
            let change: ChangeView = client.post(&path(&project, number, "/reopen")?).await?;
            out.show(&change, |c| format!("reopened change {}", c.number));
        }
        ChangeCommand::Review(args) => {
            let verdict = if args.approve {
                "approve"
            } else if args.request_changes {
                "request_changes"
            } else if args.withdraw {
                "withdraw"
            } else {
                "comment"
            };
            let body = custody_api::ReviewRequest {
                verdict: verdict.to_owned(),
                message: args.message.clone(),
                head: args.head.clone(),
            };
            let review: ReviewView = client.submit(&path(&args.project, args.number, "/reviews")?, &body).await?;
            out.show(&review, |r| format!("{} recorded at head {}", r.verdict, custody_domain::short_id(&r.head)));
        }
        ChangeCommand::Gate { project, number } => {
            let gate: GateReport = client.get(&path(&project, number, "/gate")?).await?;
            out.show(&gate, gate_text);
            if !gate.open {
                return Err(Failure {
                    code: 1,
                    message: "the gate is closed".into(),
                    body: Some(json!({ "error": { "code": "gate_closed", "message": "the gate is closed" } })),
                });
            }
        }
        ChangeCommand::Checks { project, number, log } => {
            let runs: Vec<CheckRunView> =
                client.get(&path(&project, number, if log { "/checks?log=true" } else { "/checks" })?).await?;
            out.list(&runs, check_line, "no checks");
        }
        ChangeCommand::Attestation { project, number } => {
            // A signed envelope is for machines in any case: always JSON,
            // passed on as received.
            let envelope: Value = client.get(&path(&project, number, "/attestation")?).await?;
            out.print_json(&envelope);
        }
        ChangeCommand::Queue { project } => {
            let name = ProjectName::parse(&project)?;
            let queue: MergeQueue = client.get(&format!("/api/v1/projects/{name}/merge-queue")).await?;
            out.show(&queue, queue_text);
        }
        ChangeCommand::Merge { project, number, auto, no_wait } => {
            let rest = match (auto, no_wait) {
                (_, true) => "/merge?wait=false",
                (true, false) => "/merge?auto=true",
                (false, false) => "/merge",
            };
            let merged: Merged = client.post(&path(&project, number, rest)?).await?;
            out.show(&merged, merged_text);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_change_reads_as_it_always_printed() {
        let answer = json!({
            "id": 1, "number": 5, "project": "shop", "title": "Refunds", "description": "",
            "source_branch": "feature", "target_branch": "main", "state": "open", "head": HEAD,
            "opened_by": "alice", "opened_at": "2026-01-02T03:04:05.678Z",
            "merged_by": null, "merged_at": null, "merge_commit": null,
            "reviews": [{ "id": 1, "reviewer": "bob", "verdict": "approve", "head": HEAD, "stale": true,
                          "message": "fine", "at": "2026-01-02T03:04:05.678Z" }],
            "authors": [{ "user": "alice", "why": [
                { "kind": "pushed_commit", "commit": HEAD },
                { "kind": "moved_source_branch", "push": 7 },
            ] }],
            "gate": { "open": false, "head": HEAD, "approvers": [], "rules": [
                { "rule": "gate.approvals", "passed": false, "message": "none yet", "satisfy": "bob approves" },
            ] }
        });
        let detail: ChangeDetail = serde_json::from_value(answer.clone()).expect("a change's detail");
        assert_eq!(serde_json::to_value(&detail).expect("JSON"), answer);
        assert_eq!(
            detail_text(&detail),
            [
                "#5 open    Refunds (feature -> main) by alice",
                "head: 0123456789abcdef0123456789abcdef01234567",
                "authors:",
                "  alice: pushed commit 0123456789ab; moved source branch push 7",
                "reviews:",
                "  bob approve at 0123456789ab (stale: an older head) fine",
                "gate CLOSED at 0123456789ab",
                "  FAIL  gate.approvals: none yet",
                "        to satisfy: bob approves",
            ]
            .join("\n")
        );
    }

    #[test]
    fn a_check_without_an_exit_code_says_so() {
        let run: CheckRunView = serde_json::from_value(json!({
            "id": 1, "head": HEAD, "status": "running", "command": null, "target_tip": null,
            "exit_code": null, "created_at": "2026-01-02T03:04:05.678Z", "finished_at": null
        }))
        .expect("a check run");
        assert_eq!(check_line(&run), "0123456789ab running      - exit -");
    }
}
