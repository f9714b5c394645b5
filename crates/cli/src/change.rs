//! `custody change …`: change requests, reviews, the gate and merging.

use clap::{ArgGroup, Args, Subcommand};
use custody_domain::ProjectName;
use reqwest::Method;
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

fn change_line(c: &Value) -> String {
    format!(
        "#{:<5} {:<7} {} ({} -> {}) by {}",
        c["number"],
        c["state"].as_str().unwrap_or(""),
        c["title"].as_str().unwrap_or(""),
        c["source_branch"].as_str().unwrap_or(""),
        c["target_branch"].as_str().unwrap_or(""),
        c["opened_by"].as_str().unwrap_or("")
    )
}

/// The gate as lines: each rule, passed or failed, and what would satisfy it.
pub fn gate_text(gate: &Value) -> String {
    let open = gate["open"].as_bool() == Some(true);
    let mut lines = vec![format!(
        "gate {} at {}",
        if open { "OPEN" } else { "CLOSED" },
        gate["head"].as_str().map(custody_domain::short_id).unwrap_or("")
    )];
    for rule in gate["rules"].as_array().into_iter().flatten() {
        let mark = if rule["passed"].as_bool() == Some(true) { "pass" } else { "FAIL" };
        lines.push(format!(
            "  {mark}  {}: {}",
            rule["rule"].as_str().unwrap_or(""),
            rule["message"].as_str().unwrap_or("")
        ));
        if let Some(satisfy) = rule["satisfy"].as_str() {
            lines.push(format!("        to satisfy: {satisfy}"));
        }
    }
    lines.join("\n")
}

fn detail_text(c: &Value) -> String {
    let mut lines = vec![change_line(c), format!("head: {}", c["head"].as_str().unwrap_or(""))];
    if let Some(description) = c["description"].as_str().filter(|d| !d.is_empty()) {
        lines.push(format!("\n{description}\n"));
    }
    lines.push("authors:".into());
    for author in c["authors"].as_array().into_iter().flatten() {
        let why: Vec<String> = author["why"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                let what = w["kind"].as_str().unwrap_or("").replace('_', " ");
                let detail = w
                    .get("commit")
                    .and_then(Value::as_str)
                    .map(|c| custody_domain::short_id(c).to_owned())
                    .or_else(|| w.get("push").map(|p| format!("push {p}")))
                    .unwrap_or_default();
                format!("{what} {detail}")
            })
            .collect();
        lines.push(format!("  {}: {}", author["user"].as_str().unwrap_or(""), why.join("; ")));
    }
    lines.push("reviews:".into());
    for review in c["reviews"].as_array().into_iter().flatten() {
        let stale = if review["stale"].as_bool() == Some(true) { " (stale: an older head)" } else { "" };
        lines.push(format!(
            "  {} {} at {}{stale} {}",
            review["reviewer"].as_str().unwrap_or(""),
            review["verdict"].as_str().unwrap_or(""),
            review["head"].as_str().map(custody_domain::short_id).unwrap_or(""),
            review["message"].as_str().unwrap_or("")
        ));
    }
    lines.push(gate_text(&c["gate"]));
    lines.join("\n")
}

pub async fn run(client: &Client, command: ChangeCommand, out: Output) -> Result<(), Failure> {
    match command {
        ChangeCommand::Open { project, source, target, title, message } => {
            let body = custody_api::OpenChangeRequest { source, target, title, description: message };
            let made: Value =
                client.submit(&format!("/api/v1/projects/{}/changes", ProjectName::parse(&project)?), &body).await?;
            out.show(&made, |c| format!("opened change {}\n{}", c["number"], change_line(c)));
        }
        ChangeCommand::List { project, state } => {
            let project = ProjectName::parse(&project)?;
            let path = match state.as_str() {
                "all" => format!("/api/v1/projects/{project}/changes"),
                "open" | "closed" | "merged" => format!("/api/v1/projects/{project}/changes?state={state}"),
                other => return Err(Failure::input(format!("--state {other:?}: use open, closed, merged or all"))),
            };
            let changes = client.list(&path).await?;
            out.list(&changes, change_line, "no changes");
        }
        ChangeCommand::Show { project, number } => {
            let change = client.get(&path(&project, number, "")?).await?;
            out.show(&change, detail_text);
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
            let change: Value = client.post(&path(&project, number, "/close")?).await?;
            out.show(&change, |c| format!("closed change {}", c["number"]));
        }
        ChangeCommand::Reopen { project, number } => {
            let change: Value = client.post(&path(&project, number, "/reopen")?).await?;
            out.show(&change, |c| format!("reopened change {}", c["number"]));
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
            let review: Value = client.submit(&path(&args.project, args.number, "/reviews")?, &body).await?;
            out.show(&review, |r| {
                format!(
                    "{} recorded at head {}",
                    r["verdict"].as_str().unwrap_or(""),
                    r["head"].as_str().map(custody_domain::short_id).unwrap_or("")
                )
            });
        }
        ChangeCommand::Gate { project, number } => {
            let gate = client.get(&path(&project, number, "/gate")?).await?;
            out.show(&gate, gate_text);
            if gate["open"].as_bool() != Some(true) {
                return Err(Failure {
                    code: 1,
                    message: "the gate is closed".into(),
                    body: Some(json!({ "error": { "code": "gate_closed", "message": "the gate is closed" } })),
                });
            }
        }
        ChangeCommand::Checks { project, number, log } => {
            let runs: Value =
                client.get(&path(&project, number, if log { "/checks?log=true" } else { "/checks" })?).await?;
            let runs = runs.as_array().cloned().unwrap_or_default();
            out.list(
                &runs,
                |r| {
                    let mut line = format!(
                        "{} {:<12} {} exit {}",
                        r["head"].as_str().map(custody_domain::short_id).unwrap_or(""),
                        r["status"].as_str().unwrap_or(""),
                        r["command"].as_str().unwrap_or("-"),
                        r["exit_code"]
                    );
                    if let Some(text) = r["log"].as_str() {
                        line.push('\n');
                        line.push_str(text);
                    }
                    line
                },
                "no checks",
            );
        }
        ChangeCommand::Attestation { project, number } => {
            let envelope: Value = client.get(&path(&project, number, "/attestation")?).await?;
            // An envelope is for machines in any case: always JSON.
            out.print_json(&envelope);
        }
        ChangeCommand::Queue { project } => {
            let name = ProjectName::parse(&project)?;
            let queue: Value = client.get(&format!("/api/v1/projects/{name}/merge-queue")).await?;
            out.show(&queue, |q| {
                let mut text = String::new();
                for moving in q["moving"].as_array().into_iter().flatten() {
                    text.push_str(&format!(
                        "moving  #{:<5} {} to {}\n",
                        moving["change"],
                        moving["reference"].as_str().unwrap_or(""),
                        moving["merge_commit"].as_str().unwrap_or("")
                    ));
                }
                for (turn, waiting) in q["waiting"].as_array().into_iter().flatten().enumerate() {
                    text.push_str(&format!(
                        "{:<7} #{:<5} into {} (asked by {}): {}\n",
                        turn + 1,
                        waiting["change"],
                        waiting["target"].as_str().unwrap_or(""),
                        waiting["asked_by"].as_str().unwrap_or("?"),
                        waiting["title"].as_str().unwrap_or("")
                    ));
                }
                if text.is_empty() {
                    text.push_str("the merge queue is empty");
                }
                text.trim_end().to_owned()
            });
        }
        ChangeCommand::Merge { project, number, auto, no_wait } => {
            let rest = match (auto, no_wait) {
                (_, true) => "/merge?wait=false",
                (true, false) => "/merge?auto=true",
                (false, false) => "/merge",
            };
            let merged: Value = client.call(Method::POST, &path(&project, number, rest)?, Some(&json!(null))).await?;
            out.show(&merged, |m| {
                if m["auto_merge"].as_bool() == Some(true) {
                    format!(
                        "queued: custody will merge change {} in its turn, once its gate is open\n{}",
                        m["change"]["number"],
                        gate_text(&m["gate"])
                    )
                } else {
                    format!(
                        "merged change {} as {}",
                        m["change"]["number"],
                        m["change"]["merge_commit"].as_str().unwrap_or("")
                    )
                }
            });
        }
    }
    Ok(())
}
