//! `custody env …` and `custody deploy …`: environments, deployments and
//! the decisions people take on them.

use clap::{ArgGroup, Args, Subcommand};
use custody_api::{
    DeploymentAndGate, DeploymentRecord, DeploymentView, EnvironmentDetail, EnvironmentView, FindingView,
    SecretRequested, SecretView,
};
use custody_domain::status::DeploymentStatus;
use custody_domain::ProjectName;
use serde_json::json;

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

fn deployment_line(d: &DeploymentView) -> String {
    let by = d.requested_by.as_ref().map(|r| format!(" asked by {r}")).unwrap_or_else(|| " (automatic)".into());
    let reason = d.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
    format!("#{} {:<10} {:<9} build #{}{by}{reason}", d.number, d.environment, d.status.as_str(), d.build)
}

fn deployment_text(d: &DeploymentView) -> String {
    let mut lines = vec![deployment_line(d)];
    lines.push(format!("  commit: {}", d.commit));
    if let Some(reason) = &d.break_glass {
        lines.push(format!("  BREAK-GLASS: {reason}"));
    }
    // A cancel that came too late to stop the script is not news.
    if let (Some(asked), DeploymentStatus::Running) = (&d.cancel_requested, d.status) {
        lines.push(format!("  stopping: {asked}"));
    }
    for decision in &d.decisions {
        lines.push(format!("  {} {} {}", decision.user, decision.kind, decision.message));
    }
    lines.join("\n")
}

/// The changes of a release, by number, in a line.
fn release_line(release: &[i64]) -> String {
    let numbers: Vec<String> = release.iter().map(i64::to_string).collect();
    match numbers.len() {
        0 => "  release: no change since what is live".to_owned(),
        1..=20 => format!("  release: changes {}", numbers.join(", ")),
        n => format!("  release: {n} changes, {} … {}", numbers[0], numbers[n - 1]),
    }
}

/// The gate as lines: each rule, passed or failed, and what would satisfy it.
fn gate_text(answer: &DeploymentAndGate) -> String {
    let gate = &answer.gate;
    let mut lines = vec![
        deployment_line(&answer.deployment),
        format!("gate {}", if gate.open { "OPEN" } else { "CLOSED" }),
        release_line(&answer.release),
    ];
    for rule in &gate.rules {
        lines.push(format!("  {} {:<28} {}", if rule.passed { "pass" } else { "FAIL" }, rule.rule, rule.message));
        if let Some(satisfy) = &rule.satisfy {
            lines.push(format!("       to satisfy: {satisfy}"));
        }
    }
    lines.join("\n")
}

fn environment_line(e: &EnvironmentView) -> String {
    let live = match &e.live {
        Some(live) => {
            format!("build #{} since {}", live.build, live.finished_at.map(|at| at.to_string()).unwrap_or_default())
        }
        None => "nothing live".into(),
    };
    let after = e.after.as_ref().map(|a| format!(" after {a}")).unwrap_or_default();
    format!("{:<12}{after}: {live}; {} waiting", e.name, e.waiting.len())
}

fn environment_text(detail: &EnvironmentDetail) -> String {
    let e = &detail.environment;
    let mut lines = vec![environment_line(e)];
    lines.push(format!(
        "  gate: {} approval(s) from {}, testers {}, soak {}s",
        e.approvals,
        e.approvers.as_deref().unwrap_or("nobody"),
        e.testers.as_deref().unwrap_or("none"),
        e.soak_seconds.unwrap_or(0)
    ));
    lines.extend(detail.history.iter().map(|d| format!("  {}", deployment_line(d))));
    lines.join("\n")
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

fn finding_line(f: &FindingView) -> String {
    let state = match &f.resolved_by {
        Some(by) => format!("reviewed by {by}: {}", f.resolution.as_deref().unwrap_or("")),
        None => "OPEN".into(),
    };
    format!("{} {:<12} {} ({state})", f.id, f.kind, f.summary)
}

/// Runs a `custody finding` command.
pub async fn finding(client: &Client, command: FindingCommand, out: Output) -> Result<(), Failure> {
    match command {
        FindingCommand::List { open } => {
            let findings: Vec<FindingView> =
                client.get(if open { "/api/v1/findings?open=true" } else { "/api/v1/findings" }).await?;
            out.list(&findings, finding_line, "no findings");
        }
        FindingCommand::Resolve { id, message } => {
            let resolved: FindingView = client
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

fn secret_line(secret: &SecretView) -> String {
    let current = match secret.version {
        Some(version) => format!("version {version}, set by {}", secret.set_by.as_deref().unwrap_or("")),
        None => "no current version".into(),
    };
    let pending = secret.pending_version.map(|v| format!("; version {v} waits for its grant")).unwrap_or_default();
    format!("{:<24} {current}{pending}", secret.name)
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
            let requested: SecretRequested = client
                .submit(
                    &path(&project, &format!("/environments/{environment}/secrets"))?,
                    &custody_api::SecretRequest { name: name.clone(), value },
                )
                .await?;
            out.show(&requested, |r| {
                format!(
                    "version {} of {name} is sealed; grant {} ({}) makes it current",
                    r.version,
                    r.grant.id,
                    r.grant.status.as_str()
                )
            });
        }
        SecretCommand::List { project, environment } => {
            let secrets: Vec<SecretView> =
                client.get(&path(&project, &format!("/environments/{environment}/secrets"))?).await?;
            out.list(&secrets, secret_line, "no secrets");
        }
    }
    Ok(())
}

/// Runs a `custody env` command.
pub async fn env(client: &Client, command: EnvCommand, out: Output) -> Result<(), Failure> {
    match command {
        EnvCommand::List { project } => {
            let environments: Vec<EnvironmentView> = client.get(&path(&project, "/environments")?).await?;
            out.list(&environments, environment_line, "no environments defined");
        }
        EnvCommand::Show { project, environment } => {
            let detail: EnvironmentDetail =
                client.get(&path(&project, &format!("/environments/{environment}"))?).await?;
            out.show(&detail, environment_text);
        }
    }
    Ok(())
}

/// Runs a `custody deploy` command.
pub async fn deploy(client: &Client, command: DeployCommand, out: Output) -> Result<(), Failure> {
    match command {
        DeployCommand::List { project, environment } => {
            let query = environment.map(|e| format!("?environment={e}")).unwrap_or_default();
            let deployments: Vec<DeploymentView> =
                client.get(&path(&project, &format!("/deployments{query}"))?).await?;
            out.list(&deployments, deployment_line, "no deployments yet");
        }
        DeployCommand::Show { project, number } => {
            let shown: DeploymentView = client.get(&path(&project, &format!("/deployments/{number}"))?).await?;
            out.show(&shown, deployment_text);
        }
        DeployCommand::Gate { project, number } => {
            let answer: DeploymentAndGate =
                client.get(&path(&project, &format!("/deployments/{number}/gate"))?).await?;
            out.show(&answer, gate_text);
            if !answer.gate.open && answer.deployment.status == DeploymentStatus::Pending {
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
            let answer: DeploymentAndGate = client.submit(&path(&args.project, "/deployments")?, &body).await?;
            out.show(&answer, gate_text);
        }
        DeployCommand::Approve { project, number, message } => {
            let answer: DeploymentAndGate = client
                .submit(
                    &path(&project, &format!("/deployments/{number}/approve"))?,
                    &custody_api::DecisionRequest { message },
                )
                .await?;
            out.show(&answer, gate_text);
        }
        DeployCommand::Reject { project, number, message } => {
            let answer: DeploymentAndGate = client
                .submit(
                    &path(&project, &format!("/deployments/{number}/reject"))?,
                    &custody_api::DecisionRequest { message: Some(message) },
                )
                .await?;
            out.show(&answer, gate_text);
        }
        DeployCommand::SignOff(args) => {
            let body = custody_api::SignOffRequest { passed: Some(args.passed && !args.failed), message: args.message };
            let answer: DeploymentAndGate =
                client.submit(&path(&args.project, &format!("/deployments/{}/sign-off", args.number))?, &body).await?;
            out.show(&answer, gate_text);
        }
        DeployCommand::Cancel { project, number, message } => {
            let cancelled: DeploymentView = client
                .submit(
                    &path(&project, &format!("/deployments/{number}/cancel"))?,
                    &custody_api::DecisionRequest { message },
                )
                .await?;
            out.show(&cancelled, deployment_text);
        }
        DeployCommand::Log { project, number } => {
            let record: DeploymentRecord =
                client.get(&path(&project, &format!("/deployments/{number}/record"))?).await?;
            out.show(&record, |r| r.log.trim_end().to_owned());
        }
        DeployCommand::Attestation { project, number } => {
            let record: DeploymentRecord =
                client.get(&path(&project, &format!("/deployments/{number}/record"))?).await?;
            // The signed envelope, passed on as received.
            let Some(attestation) = record.attestation else {
                return Err(Failure::input(format!("deployment {number} has not run, so it has no attestation yet")));
            };
            out.show(&attestation, |a| serde_json::to_string_pretty(a).unwrap_or_default());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_and_its_gate_read_as_they_always_printed() {
        let answer = json!({
            "deployment": {
                "number": 2, "project": "shop", "environment": "production", "build": 3,
                "commit": "0123456789abcdef0123456789abcdef01234567", "status": "pending",
                "requested_by": null, "break_glass": null, "reason": null, "cancel_requested": null,
                "created_at": "2026-01-02T03:04:05.678Z", "queued_at": null, "finished_at": null, "decisions": []
            },
            "gate": { "open": false, "approvers": [], "testers": [], "reviewers_allowed_by_policy": [], "rules": [
                { "rule": "deploy.approvals", "passed": false, "message": "none yet", "satisfy": "bob approves" },
            ] },
            "release": [4, 5]
        });
        let typed: DeploymentAndGate = serde_json::from_value(answer.clone()).expect("a deployment and its gate");
        assert_eq!(serde_json::to_value(&typed).expect("JSON"), answer);
        assert_eq!(
            gate_text(&typed),
            [
                "#2 production pending   build #3 (automatic)",
                "gate CLOSED",
                "  release: changes 4, 5",
                "  FAIL deploy.approvals             none yet",
                "       to satisfy: bob approves",
            ]
            .join("\n")
        );
    }
}
