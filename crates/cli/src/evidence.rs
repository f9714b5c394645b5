//! `custody trust export`, `custody evidence export` and `custody verify`:
//! evidence an auditor checks on their own machine, without the server.

use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, Subcommand};
use custody_formats::evidence::Bundle;
use custody_formats::trust::TrustRoot;
use custody_formats::verify::{self, ArtifactFile};
use sha2::{Digest as _, Sha256};

use crate::client::Client;
use crate::commands::Output;
use crate::Failure;

#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// The instance's public keys with their roles and validity, as JSON.
    Export {
        /// Write to this file instead of standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum EvidenceCommand {
    /// The evidence bundle of a deployment or an artifact.
    Export(ExportArgs),
    /// Keep a directory of what `custody admit` reads offline: each
    /// environment's signed state and its deployments' bundles.
    Sync(SyncArgs),
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// The directory to write (made when missing): PROJECT/environments/ENV.json
    /// and PROJECT/deployments/N.json.
    pub(crate) dir: PathBuf,
    /// A project whose environments to sync; repeat for more.
    #[arg(long = "project", required = true)]
    pub(crate) projects: Vec<String>,
    /// How many of each environment's newest deployments to name (1 to 50).
    #[arg(long, default_value_t = 10)]
    pub(crate) last: u32,
    /// Sync again at this interval (such as 5m) until stopped, instead of once.
    #[arg(long)]
    pub(crate) every: Option<humantime::Duration>,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("of").required(true).args(["deployment", "artifact"])))]
pub struct ExportArgs {
    project: String,
    /// A deployment's number: it and the deployments before it.
    #[arg(long)]
    deployment: Option<i64>,
    /// An artifact's sha256: its build and every deployment of it.
    #[arg(long)]
    artifact: Option<String>,
    /// Write to this file (standard output by default). A name ending in
    /// `.intoto.jsonl` gets the envelopes as in-toto JSON Lines.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The evidence bundle (JSON), or a single signed attestation (a DSSE
    /// envelope, as an image's referrer carries it).
    bundle: PathBuf,
    /// The trust file from `custody trust export`, obtained from a source you trust.
    #[arg(long)]
    trust: PathBuf,
    /// A file to check against the bundle's artifacts (it is re-hashed).
    #[arg(long)]
    artifact: Option<PathBuf>,
}

fn write_out(output: Option<&Path>, text: &str) -> Result<(), Failure> {
    match output {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| Failure::input(format!("cannot write {}: {e}", path.display())))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

pub async fn trust(client: &Client, command: TrustCommand) -> Result<(), Failure> {
    match command {
        TrustCommand::Export { output } => {
            let root: serde_json::Value = client.get("/api/v1/trust").await?;
            let text = serde_json::to_string_pretty(&root).unwrap_or_default() + "\n";
            write_out(output.as_deref(), &text)
        }
    }
}

pub async fn evidence(client: &Client, command: EvidenceCommand, out: Output) -> Result<(), Failure> {
    match command {
        EvidenceCommand::Sync(args) => sync(client, args, out).await,
        EvidenceCommand::Export(args) => {
            let project = custody_domain::ProjectName::parse(&args.project)?;
            let subject = match (&args.deployment, &args.artifact) {
                (Some(number), _) => format!("deployments/{number}"),
                (None, Some(digest)) => format!("artifacts/{}", digest.trim_start_matches("sha256:")),
                (None, None) => return Err(Failure::input("name --deployment or --artifact")),
            };
            let value = client.get(&format!("/api/v1/projects/{project}/{subject}/evidence")).await?;
            let bundle: Bundle = serde_json::from_value(value)
                .map_err(|e| Failure::internal(format!("the server sent no evidence bundle: {e}")))?;
            let jsonl = args.output.as_deref().is_some_and(|p| p.to_string_lossy().ends_with(".intoto.jsonl"));
            let text = if jsonl {
                bundle.to_intoto_jsonl()
            } else {
                serde_json::to_string_pretty(&bundle).unwrap_or_default() + "\n"
            };
            write_out(args.output.as_deref(), &text)?;
            if args.output.is_some() {
                let summary = serde_json::json!({
                    "entries": bundle.entries.len(),
                    "checkpoint_events": bundle.checkpoint.lines().nth(1),
                    "output": args.output.as_ref().map(|p| p.display().to_string()),
                });
                out.show(&summary, |_| {
                    format!(
                        "wrote {} envelopes with their proofs to {}",
                        bundle.entries.len(),
                        args.output.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                    )
                });
            }
            Ok(())
        }
    }
}

/// What one sync wrote for an environment.
#[derive(serde::Serialize)]
pub(crate) struct Synced {
    project: String,
    environment: String,
    /// The deployments its state names, newest (live) first; empty when
    /// nothing was deployed there yet.
    deployments: Vec<i64>,
    /// The bundles fetched now (the others were there already).
    fetched: Vec<i64>,
}

/// Writes `text` to `path` whole or not at all: a reader never sees half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), Failure> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Failure::input(format!("cannot make {}: {e}", dir.display())))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("evidence");
    let partial = dir.join(format!(".{name}.partial"));
    let failed = |e: std::io::Error| Failure::input(format!("cannot write {}: {e}", path.display()));
    std::fs::write(&partial, text).map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}

/// A bundle already synced for deployment `number` of `project`.
fn synced_bundle(path: &Path, project: &str, number: i64) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| Bundle::parse(&text).ok())
        .is_some_and(|b| b.project == project && b.subject.deployment == Some(number))
}

pub(crate) async fn sync_once(client: &Client, args: &SyncArgs) -> Result<Vec<Synced>, Failure> {
    use custody_formats::environment::EnvironmentV1;
    let mut synced = Vec::new();
    for project in &args.projects {
        let project = custody_domain::ProjectName::parse(project)?;
        let environments: Vec<custody_api::EnvironmentView> =
            client.get(&format!("/api/v1/projects/{project}/environments")).await?;
        let dir = args.dir.join(project.as_str());
        for environment in environments {
            let name = environment.name;
            let path = format!("/api/v1/projects/{project}/environments/{name}/evidence?last={}", args.last);
            let state: custody_formats::Envelope = match client.get(&path).await {
                Ok(state) => state,
                Err(failure) if failure_code(&failure).as_deref() == Some("no_evidence") => {
                    synced.push(Synced {
                        project: project.to_string(),
                        environment: name,
                        deployments: vec![],
                        fetched: vec![],
                    });
                    continue;
                }
                Err(failure) => return Err(failure),
            };
            // What it names, read without checking the signature: `custody
            // admit` checks it with the trust file.
            let named: EnvironmentV1 =
                custody_formats::attestation::unverified_predicate(&serde_json::to_string(&state).unwrap_or_default())
                    .ok_or_else(|| Failure::internal(format!("the server sent no environment state for {name}")))?;
            let mut fetched = Vec::new();
            for deployment in named.deployments.iter().map(|d| d.deployment) {
                let file = dir.join("deployments").join(format!("{deployment}.json"));
                if synced_bundle(&file, project.as_str(), deployment) {
                    continue;
                }
                let bundle: Bundle =
                    client.get(&format!("/api/v1/projects/{project}/deployments/{deployment}/evidence")).await?;
                write_atomically(&file, &(serde_json::to_string_pretty(&bundle).unwrap_or_default() + "\n"))?;
                fetched.push(deployment);
            }
            // The state last, so that it never names a bundle not yet there.
            let file = dir.join("environments").join(format!("{name}.json"));
            write_atomically(&file, &(serde_json::to_string_pretty(&state).unwrap_or_default() + "\n"))?;
            synced.push(Synced {
                project: project.to_string(),
                environment: name,
                deployments: named.deployments.iter().map(|d| d.deployment).collect(),
                fetched,
            });
        }
    }
    Ok(synced)
}

fn failure_code(failure: &Failure) -> Option<String> {
    let body = failure.body.clone()?;
    serde_json::from_value::<custody_api::ErrorBody>(body).ok().map(|b| b.error.code)
}

fn show_synced(out: Output, synced: &[Synced]) {
    out.show(&synced, |synced| {
        synced
            .iter()
            .map(|s| match s.deployments.first() {
                None => format!("{} {}: nothing deployed yet", s.project, s.environment),
                Some(live) => format!(
                    "{} {}: live deployment {live}, {} named, {} bundles fetched",
                    s.project,
                    s.environment,
                    s.deployments.len(),
                    s.fetched.len()
                ),
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
}

/// `custody evidence sync`: once, or every interval until stopped (a
/// failed round is reported and tried again at the next).
async fn sync(client: &Client, args: SyncArgs, out: Output) -> Result<(), Failure> {
    if !(1..=50).contains(&args.last) {
        return Err(Failure::input(format!("--last is {}; name 1 to 50 deployments", args.last)));
    }
    let Some(every) = args.every else {
        let synced = sync_once(client, &args).await?;
        show_synced(out, &synced);
        return Ok(());
    };
    loop {
        match sync_once(client, &args).await {
            Ok(synced) => show_synced(out, &synced),
            Err(failure) => eprintln!("custody: sync failed, trying again in {every}: {}", failure.message),
        }
        tokio::select! {
            () = tokio::time::sleep(*every) => {}
            () = crate::serve::shutdown_signal() => return Ok(()),
        }
    }
}

fn read(path: &Path, what: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::input(format!("cannot read the {what} {}: {e}", path.display())))
}

/// Verifies a bundle offline: exit 0 valid, 1 not valid (every reason
/// printed), 2 when the bundle, trust file or artifact cannot be read.
pub fn verify(args: VerifyArgs, out: Output) -> Result<(), Failure> {
    let text = read(&args.bundle, "bundle")?;
    let trust = TrustRoot::parse(&read(&args.trust, "trust file")?).map_err(|e| Failure::input(e.to_string()))?;
    // A single DSSE envelope (an image's referrer, say) is checked alone.
    if let Ok(envelope) = serde_json::from_str::<custody_formats::Envelope>(&text) {
        if args.artifact.is_some() {
            return Err(Failure::input("--artifact needs an evidence bundle, not a single attestation"));
        }
        return reported(verify::verify_envelope(&envelope, &trust), out);
    }
    let bundle = Bundle::parse(&text).map_err(|e| Failure::input(e.to_string()))?;
    let artifact = match &args.artifact {
        Some(path) => {
            let mut file = std::fs::File::open(path)
                .map_err(|e| Failure::input(format!("cannot read the artifact {}: {e}", path.display())))?;
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher)
                .map_err(|e| Failure::input(format!("cannot read the artifact {}: {e}", path.display())))?;
            let sha256 = hex::encode(hasher.finalize());
            Some(ArtifactFile { name: path.display().to_string(), sha256 })
        }
        None => None,
    };
    reported(verify::verify(&bundle, &trust, artifact.as_ref()), out)
}

/// Prints a verifier's report; not valid is exit 1 with every reason.
fn reported(report: verify::Report, out: Output) -> Result<(), Failure> {
    if out.json {
        out.print_json(&report);
    } else {
        print!("{}", report.to_text());
    }
    if report.valid {
        Ok(())
    } else {
        let reasons: Vec<String> =
            report.failures().map(|c| format!("{} ({}): {}", c.rule, c.subject, c.message)).collect();
        Err(Failure {
            code: 1,
            message: format!("the evidence does not verify: {}", reasons.join("; ")),
            body: Some(serde_json::json!({ "error": { "code": "not_valid", "message": "the evidence does not verify",
                "reasons": report.failures().map(|c| serde_json::json!({"rule": c.rule, "subject": c.subject, "message": c.message})).collect::<Vec<_>>() } })),
        })
    }
}
