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
    /// The evidence bundle (JSON).
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

fn read(path: &Path, what: &str) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::input(format!("cannot read the {what} {}: {e}", path.display())))
}

/// Verifies a bundle offline: exit 0 valid, 1 not valid (every reason
/// printed), 2 when the bundle, trust file or artifact cannot be read.
pub fn verify(args: VerifyArgs, out: Output) -> Result<(), Failure> {
    let bundle = Bundle::parse(&read(&args.bundle, "bundle")?).map_err(|e| Failure::input(e.to_string()))?;
    let trust = TrustRoot::parse(&read(&args.trust, "trust file")?).map_err(|e| Failure::input(e.to_string()))?;
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
    let report = verify::verify(&bundle, &trust, artifact.as_ref());
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
