//! `custody`: the server, and the client of its API, in one binary.
//!
//! This is the only crate that knows the terminal: flags, environment,
//! config files, what is printed and the exit codes (0 done, 1 refused by a
//! rule, 2 usage or input error or not found, 3 server unreachable or
//! failed).

mod admit;
mod backup;
mod build;
mod change;
mod client;
mod commands;
mod config;
mod demo;
mod deploy;
mod doctor;
mod evidence;
mod hook;
mod keys;
mod ledger;
mod project;
mod remote;
mod report;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Segregation of duties from commit to production, and the proof of it.
#[derive(Parser, Debug)]
#[command(name = "custody", version, about, propagate_version = true)]
struct Cli {
    /// Print results as JSON (snake_case keys) for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// The server, for client commands (default: from `custody login`).
    #[arg(long, global = true, env = "CUSTODY_SERVER", value_name = "URL")]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new instance: data directory, service keys, first admin.
    Init(serve::InitArgs),
    /// Run the server (initialising ./custody-data on first start).
    Serve(Box<serve::ServeArgs>),
    /// Play the whole story from a commit to production on a fresh
    /// instance, then leave its server running to look around.
    Demo(demo::DemoArgs),
    /// Store the server and token that client commands use.
    Login(commands::LoginArgs),
    /// Forget the stored token.
    Logout,
    /// Who the current token belongs to.
    Whoami,
    /// People.
    #[command(subcommand)]
    User(commands::UserCommand),
    /// Your own tokens, and redeeming an invite.
    #[command(subcommand)]
    Token(commands::TokenCommand),
    /// Groups of people.
    #[command(subcommand)]
    Group(commands::GroupCommand),
    /// Grants waiting for a second admin.
    #[command(subcommand)]
    Grant(commands::GrantCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(commands::AuditCommand),
    /// Projects and their repositories.
    #[command(subcommand)]
    Project(project::ProjectCommand),
    /// Change requests: review, gate and merge.
    #[command(subcommand)]
    Change(change::ChangeCommand),
    /// Builds of mainline commits (read-only: the builder builds).
    #[command(subcommand)]
    Build(build::BuildCommand),
    /// The artifact repository (read-only: only the builder stores artifacts).
    #[command(subcommand)]
    Artifact(build::ArtifactCommand),
    /// Environments: their gates and what is live.
    #[command(subcommand)]
    Env(deploy::EnvCommand),
    /// Deployments: ask, approve, reject, sign off tests, cancel.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// Environment secrets: set (a grant), list names; never read back.
    #[command(subcommand)]
    Secret(deploy::SecretCommand),
    /// Findings for auditors: break-glass deployments and their reviews.
    #[command(subcommand)]
    Finding(deploy::FindingCommand),
    /// The instance's public keys, for verifying evidence offline.
    #[command(subcommand)]
    Trust(evidence::TrustCommand),
    /// Evidence bundles of deployments and artifacts.
    #[command(subcommand)]
    Evidence(evidence::EvidenceCommand),
    /// Verify an evidence bundle, or a single signed attestation, offline
    /// against a trust file (exit 0 valid, 1 not, 2 unreadable).
    Verify(evidence::VerifyArgs),
    /// Run a Kubernetes validating admission webhook (HTTPS) that admits only
    /// images custody deployed to the namespace's environment, from synced
    /// evidence, without reaching custody.
    Admit(admit::AdmitArgs),
    /// The auditor's report of a period: production deployments, duties, findings, controls.
    Report(report::ReportArgs),
    /// Check an instance's host: keys' modes, the sandbox, the database and
    /// its ledger, the clock, the blob store, a running server (exit 0 fine, 1 not).
    Doctor(doctor::DoctorArgs),
    /// Run builds and deployments in a separate process: on the instance's
    /// data directory, or (init, register, run) sharing nothing with it.
    Worker(serve::WorkerCli),
    /// Take a consistent backup of an instance while it serves: database,
    /// repositories, blobs (of a local store) and a manifest; no keys.
    Backup(backup::BackupArgs),
    /// Rebuild an instance from a backup and an escrow of its keys, check
    /// that its ledger, refs and blobs agree, and record the restore.
    Restore(backup::RestoreArgs),
    /// The instance's service keys: list, rotate and revoke (grants), escrow.
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Run by git during a push; not for people.
    #[command(subcommand, hide = true)]
    Hook(hook::HookCommand),
}

/// What went wrong, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// 1 refused, 2 input or not found, 3 server unreachable or failing.
    pub code: u8,
    /// What to tell the person.
    pub message: String,
    /// The error as the server sent it, for `--json`.
    pub body: Option<serde_json::Value>,
}

impl Failure {
    /// An input or usage error (exit 2).
    pub fn input(message: impl Into<String>) -> Self {
        Failure { code: 2, message: message.into(), body: None }
    }

    /// A local failure not caused by input (exit 3).
    pub fn internal(message: impl Into<String>) -> Self {
        Failure { code: 3, message: message.into(), body: None }
    }
}

impl From<custody_domain::InvalidInput> for Failure {
    fn from(error: custody_domain::InvalidInput) -> Self {
        Failure::input(error.to_string())
    }
}

fn main() -> ExitCode {
    // Whatever this process was started with stays with it: no program it
    // runs (git, a pipeline script) inherits a descriptor above 2.
    custody_runner::sandbox::close_inherited_descriptors();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            let usage = !matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
            if usage && std::env::args().any(|a| a == "--json") {
                let message = error.render().to_string();
                let first = message.lines().next().unwrap_or("usage error").trim_start_matches("error: ");
                eprintln!("{}", serde_json::json!({ "error": { "code": "usage", "message": first } }));
                return ExitCode::from(2);
            }
            error.exit();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("custody: cannot start: {error}");
            return ExitCode::from(3);
        }
    };
    let json = cli.json;
    let hook_output = matches!(cli.command, Command::Hook(_));
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if json {
                let body = failure.body.unwrap_or_else(
                    || serde_json::json!({ "error": { "code": "failed", "message": failure.message } }),
                );
                eprintln!("{}", commands::for_terminal(&body.to_string()));
            } else if hook_output {
                // git shows these lines to the pusher as `remote: …`.
                eprintln!("{}", commands::for_terminal(&failure.message));
            } else {
                eprintln!("custody: {}", commands::for_terminal(&failure.message));
            }
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let out = commands::Output { json: cli.json };
    match cli.command {
        Command::Init(args) => serve::init(args, out).await,
        Command::Serve(args) => serve::serve(*args).await,
        Command::Demo(args) => demo::demo(args).await,
        Command::Doctor(args) => doctor::doctor(args, out).await,
        Command::Login(args) => commands::login(cli.server, args, out).await,
        Command::Logout => commands::logout(out),
        Command::Whoami => commands::whoami(&client::Client::from_env(cli.server)?, out).await,
        Command::User(command) => commands::user(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Token(command) => commands::token(cli.server, command, out).await,
        Command::Group(command) => commands::group(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Grant(command) => commands::grant(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Audit(command) => commands::audit(cli.server, command, out).await,
        Command::Project(command) => project::run(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Hook(command) => hook::run(command).await,
        Command::Change(command) => change::run(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Build(command) => build::build(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Artifact(command) => build::artifact(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Worker(serve::WorkerCli { remote: Some(command), .. }) => {
            remote::remote(cli.server, command, out).await
        }
        Command::Worker(serve::WorkerCli { local, .. }) => serve::worker(local).await,
        Command::Backup(args) => backup::backup(args, out).await,
        Command::Restore(args) => backup::restore(args, out).await,
        Command::Key(command) => keys::key(cli.server, command, out).await,
        Command::Secret(command) => deploy::secret(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Finding(command) => deploy::finding(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Env(command) => deploy::env(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Deploy(command) => deploy::deploy(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Trust(command) => evidence::trust(&client::Client::from_env(cli.server)?, command).await,
        Command::Evidence(command) => evidence::evidence(&client::Client::from_env(cli.server)?, command, out).await,
        Command::Verify(args) => evidence::verify(args, out),
        Command::Admit(args) => admit::admit(args).await,
        Command::Report(args) => report::report(&client::Client::from_env(cli.server)?, args, out).await,
    }
}
