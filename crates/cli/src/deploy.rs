//! `custody env …` and `custody deploy …`: environments, deployments and
//! the decisions people take on them.

use clap::{ArgGroup, Args, Subcommand};
use custody_domain::ProjectName;
use serde_json::{json, Value};

use crate::client::Client;
use crate::commands::Output;
use crate::Failure;

#[derive(Subcommand, Debug)]
pub enum EnvCommand {
    /// A project's environments: their gates and what is live.
    List { project: String },
    /// One environment: what is live since when, what waits, its history.
    Show { project: String, environment: String },
}

#[derive(Subcommand, Debug)]
pub enum DeployCommand {
    /// A project's deployments, newest first.
    List {
        project: String,
        /// Only those to this environment.
        #[arg(long)]
        environment: Option<String>,
    },
    /// One deployment, with the decisions taken on it.
    Show { project: String, number: i64 },
    /// Every rule of a deployment's gate (exit 0 open, 1 closed).
    Gate { project: String, number: i64 },
    /// Ask for a deployment of a build (an earlier one to roll back).
    Request(RequestArgs),
    /// Approve a pending deployment.
    Approve {
        project: String,
        number: i64,
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
    },
    /// Reject a pending deployment, saying why.
    Reject {
        project: String,
        number: i64,
        #[arg(short = 'm', long = "message")]
        message: String,
    },
    /// Sign off a pending deployment's manual tests.
    SignOff(SignOffArgs),
    /// Cancel a pending or queued deployment, or stop a running one.
    Cancel {
        project: String,
        number: i64,
        #[arg(short = 'm', long = "message")]
        message: Option<String>,
    },
    /// A deployment's output.
    Log { project: String, number: i64 },
    /// A deployment's signed attestation (a DSSE envelope).
    Attestation { project: String, number: i64 },
}

#[derive(Args, Debug)]
pub struct RequestArgs {
    project: String,
    environment: String,
    /// The build to deploy.
    #[arg(long)]
    build: i64,
    /// Skip soak and test sign-off (never approvals); needs --reason.
    #[arg(long, requires = "reason")]
    break_glass: bool,
    /// Why the glass is broken.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("result").required(true).args(["passed", "failed"])))]
pub struct SignOffArgs {
    project: String,
    number: i64,
    /// The manual tests passed.
    #[arg(long)]
    passed: bool,
    /// The manual tests failed.
    #[arg(long)]
    failed: bool,
    #[arg(short = 'm', long = "message")]
    message: Option<String>,
}

fn path(project: &str, rest: &str) -> Result<String, Failure> {
    Ok(format!("/api/v1/projects/{}{rest}", ProjectName::parse(project)?))
}

fn deployment_line(d: &Value) -> String {
    let by = d["requested_by"].as_str().map(|r| format!(" asked by {r}")).unwrap_or_else(|| " (automatic)".into());
    let reason = d["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
    format!(
        "#{:<5} {:<10} {:<9} build #{}{}{}",
        d["number"],
        d["environment"].as_str().unwrap_or(""),
        d["status"].as_str().unwrap_or(""),
        d["build"],
        by,
        reason
    )
}

fn deployment_text(d: &Value) -> String {
    let mut lines = vec![deployment_line(d)];
    lines.push(format!("  commit: {}", d["commit"].as_str().unwrap_or("")));
    if let Some(reason) = d["break_glass"].as_str() {
        lines.push(format!("  BREAK-GLASS: {reason}"));
    }
    // A cancel that came too late to stop the script is not news.
    if let (Some(asked), "running") = (d["cancel_requested"].as_str(), d["status"].as_str().unwrap_or("")) {
        lines.push(format!("  stopping: {asked}"));
    }
    for decision in d["decisions"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {} {} {}",
            decision["user"].as_str().unwrap_or(""),
            decision["kind"].as_str().unwrap_or(""),
            decision["message"].as_str().unwrap_or("")
        ));
    }
    lines.join("\n")
}

/// The gate as lines: each rule, passed or failed, and what would satisfy it.
fn gate_text(answer: &Value) -> String {
    let gate = &answer["gate"];
    let open = gate["open"].as_bool() == Some(true);
    let mut lines =
        vec![deployment_line(&answer["deployment"]), format!("gate {}", if open { "OPEN" } else { "CLOSED" })];
    if let Some(release) = answer["release"].as_array() {
        let numbers: Vec<String> = release.iter().map(Value::to_string).collect();
        lines.push(match numbers.len() {
            0 => "  release: no change since what is live".to_owned(),
            1..=20 => format!("  release: changes {}", numbers.join(", ")),
            n => format!("  release: {n} changes, {} … {}", numbers[0], numbers[n - 1]),
        });
    }
    for rule in gate["rules"].as_array().into_iter().flatten() {
        let passed = rule["passed"].as_bool() == Some(true);
        lines.push(format!(
            "  {} {:<28} {}",
            if passed { "pass" } else { "FAIL" },
            rule["rule"].as_str().unwrap_or(""),
            rule["message"].as_str().unwrap_or("")
        ));
        if let Some(satisfy) = rule["satisfy"].as_str() {
            lines.push(format!("       to satisfy: {satisfy}"));
        }
    }
    lines.join("\n")
}

fn environment_line(e: &Value) -> String {
    let live = match e["live"].as_object() {
        Some(live) => format!("build #{} since {}", live["build"], live["finished_at"].as_str().unwrap_or("")),
        None => "nothing live".into(),
    };
    let after = e["after"].as_str().map(|a| format!(" after {a}")).unwrap_or_default();
    let waiting = e["waiting"].as_array().map_or(0, Vec::len);
    format!("{:<12}{after}: {live}; {waiting} waiting", e["name"].as_str().unwrap_or(""))
}

#[derive(Subcommand, Debug)]
pub enum FindingCommand {
    /// Findings for an auditor (break-glass deployments), newest first.
    List {
        /// Only those nobody has reviewed.
        #[arg(long)]
        open: bool,
    },
    /// Record your review of a finding (admins who were not involved).
    Resolve {
        id: i64,
        #[arg(short = 'm', long = "message")]
        message: String,
    },
}

fn finding_line(f: &Value) -> String {
    let state = match f["resolved_by"].as_str() {
        Some(by) => format!("reviewed by {by}: {}", f["resolution"].as_str().unwrap_or("")),
        None => "OPEN".into(),
    };
    format!("{:<5} {:<12} {} ({state})", f["id"], f["kind"].as_str().unwrap_or(""), f["summary"].as_str().unwrap_or(""))
}

/// Runs a `custody finding` command.
pub async fn finding(client: &Client, command: FindingCommand, out: Output) -> Result<(), Failure> {
    match command {
        FindingCommand::List { open } => {
            let list: Value = client.get(if open { "/api/v1/findings?open=true" } else { "/api/v1/findings" }).await?;
            out.list(list.as_array().map_or(&[][..], Vec::as_slice), finding_line, "no findings");
        }
        FindingCommand::Resolve { id, message } => {
            let resolved = client
                .submit(
                    &format!("/api/v1/findings/{id}/resolve"),
                    &custody_api::ResolveRequest { message: Some(message) },
                )
                .await?;
            out.show(&resolved, finding_line);
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Set a new version of an environment secret; the value is read from
    /// standard input. It becomes current when a second admin approves the
    /// grant, and nobody can read it back.
    Set { project: String, environment: String, name: String },
    /// The secrets of an environment: names and versions, never values.
    List { project: String, environment: String },
}

/// Runs a `custody secret` command.
pub async fn secret(client: &Client, command: SecretCommand, out: Output) -> Result<(), Failure> {
    match command {
        SecretCommand::Set { project, environment, name } => {
            let mut value = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut value)
                .map_err(|e| Failure::input(format!("cannot read the value from standard input: {e}")))?;
            let value = value.strip_suffix('\n').unwrap_or(&value).to_owned();
            if value.is_empty() {
                return Err(Failure::input(
                    "no value on standard input: pipe the secret in, e.g. `custody secret set P ENV NAME < file`",
                ));
            }
            let answer: Value = client
                .submit(
                    &path(&project, &format!("/environments/{environment}/secrets"))?,
                    &custody_api::SecretRequest { name: name.clone(), value },
                )
                .await?;
            out.show(&answer, |a| {
                format!(
                    "version {} of {name} is sealed; grant {} ({}) makes it current",
                    a["version"],
                    a["grant"]["id"],
                    a["grant"]["status"].as_str().unwrap_or("")
                )
            });
        }
        SecretCommand::List { project, environment } => {
            let list: Value = client.get(&path(&project, &format!("/environments/{environment}/secrets"))?).await?;
            out.list(
                list.as_array().map_or(&[][..], Vec::as_slice),
                |s| {
                    let current = match s["version"].as_i64() {
                        Some(v) => format!("version {v}, set by {}", s["set_by"].as_str().unwrap_or("")),
                        None => "no current version".into(),
                    };
                    let pending = s["pending_version"]
                        .as_i64()
                        .map(|v| format!("; version {v} waits for its grant"))
                        .unwrap_or_default();
                    format!("{:<24} {current}{pending}", s["name"].as_str().unwrap_or(""))
                },
                "no secrets",
            );
        }
    }
    Ok(())
}

/// Runs a `custody env` command.
pub async fn env(client: &Client, command: EnvCommand, out: Output) -> Result<(), Failure> {
    match command {
        EnvCommand::List { project } => {
            let list: Value = client.get(&path(&project, "/environments")?).await?;
            out.list(list.as_array().map_or(&[][..], Vec::as_slice), environment_line, "no environments defined");
        }
        EnvCommand::Show { project, environment } => {
            let shown = client.get(&path(&project, &format!("/environments/{environment}"))?).await?;
            out.show(&shown, |e| {
                let mut lines = vec![environment_line(e)];
                lines.push(format!(
                    "  gate: {} approval(s) from {}, testers {}, soak {}s",
                    e["approvals"],
                    e["approvers"].as_str().unwrap_or("nobody"),
                    e["testers"].as_str().unwrap_or("none"),
                    e["soak_seconds"].as_u64().unwrap_or(0)
                ));
                for d in e["history"].as_array().into_iter().flatten() {
                    lines.push(format!("  {}", deployment_line(d)));
                }
                lines.join("\n")
            });
        }
    }
    Ok(())
}

/// Runs a `custody deploy` command.
pub async fn deploy(client: &Client, command: DeployCommand, out: Output) -> Result<(), Failure> {
    match command {
        DeployCommand::List { project, environment } => {
            let query = environment.map(|e| format!("?environment={e}")).unwrap_or_default();
            let list: Value = client.get(&path(&project, &format!("/deployments{query}"))?).await?;
            out.list(list.as_array().map_or(&[][..], Vec::as_slice), deployment_line, "no deployments yet");
        }
        DeployCommand::Show { project, number } => {
            let shown = client.get(&path(&project, &format!("/deployments/{number}"))?).await?;
            out.show(&shown, deployment_text);
        }
        DeployCommand::Gate { project, number } => {
            let answer = client.get(&path(&project, &format!("/deployments/{number}/gate"))?).await?;
            out.show(&answer, gate_text);
            if answer["gate"]["open"].as_bool() != Some(true) && answer["deployment"]["status"] == "pending" {
                return Err(Failure {
                    code: 1,
                    message: format!("the gate of deployment {number} is closed"),
                    body: Some(json!({ "error": { "code": "gate_closed", "message": "the gate is closed" } })),
                });
            }
        }
        DeployCommand::Request(args) => {
            if args.break_glass && args.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                return Err(Failure::input("--break-glass needs --reason saying why"));
            }
            let body = custody_api::DeployRequest {
                environment: args.environment.clone(),
                build: args.build,
                break_glass: if args.break_glass { args.reason.clone() } else { None },
            };
            let answer = client.submit(&path(&args.project, "/deployments")?, &body).await?;
            out.show(&answer, gate_text);
        }
        DeployCommand::Approve { project, number, message } => {
            let answer: Value = client
                .submit(
                    &path(&project, &format!("/deployments/{number}/approve"))?,
                    &custody_api::DecisionRequest { message },
                )
                .await?;
            out.show(&answer, gate_text);
        }
        DeployCommand::Reject { project, number, message } => {
            let answer: Value = client
                .submit(
                    &path(&project, &format!("/deployments/{number}/reject"))?,
                    &custody_api::DecisionRequest { message: Some(message) },
                )
                .await?;
            out.show(&answer, gate_text);
        }
        DeployCommand::SignOff(args) => {
            let body = custody_api::SignOffRequest { passed: Some(args.passed && !args.failed), message: args.message };
            let answer =
                client.submit(&path(&args.project, &format!("/deployments/{}/sign-off", args.number))?, &body).await?;
            out.show(&answer, gate_text);
        }
        DeployCommand::Cancel { project, number, message } => {
            let answer: Value = client
                .submit(
                    &path(&project, &format!("/deployments/{number}/cancel"))?,
                    &custody_api::DecisionRequest { message },
                )
                .await?;
            out.show(&answer, deployment_text);
        }
        DeployCommand::Log { project, number } => {
            let record: Value = client.get(&path(&project, &format!("/deployments/{number}/record"))?).await?;
            out.show(&record, |r| r["log"].as_str().unwrap_or("").trim_end().to_owned());
        }
        DeployCommand::Attestation { project, number } => {
            let record: Value = client.get(&path(&project, &format!("/deployments/{number}/record"))?).await?;
            if record["attestation"].is_null() {
                return Err(Failure::input(format!("deployment {number} has not run, so it has no attestation yet")));
            }
            out.show(&record["attestation"], |a| serde_json::to_string_pretty(a).unwrap_or_default());
        }
    }
    Ok(())
}
