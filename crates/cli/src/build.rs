//! `custody build …` and `custody artifact …`: builds and the artifact
//! repository. Both are read-only for people: there is no command that
//! stores an artifact, because only the builder does.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args, Subcommand};
use custody_domain::ProjectName;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::client::Client;
use crate::commands::{say, Output};
use crate::Failure;

#[derive(Subcommand, Debug)]
pub enum BuildCommand {
    /// A project's builds, newest first.
    List { project: String },
    /// One build: its status, why, its inputs and its artifacts.
    Show { project: String, number: i64 },
    /// A build's log.
    Logs {
        project: String,
        number: i64,
        /// Keep printing as the build writes, until it finishes.
        #[arg(short = 'f', long)]
        follow: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ArtifactCommand {
    /// A project's artifacts, newest first.
    List {
        project: String,
        /// Only those of this build.
        #[arg(long)]
        build: Option<i64>,
    },
    /// One artifact: its size and the builds that made it.
    Show { project: String, digest: String },
    /// Download an artifact, checking its digest.
    Get {
        project: String,
        digest: String,
        /// Where to write it.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: PathBuf,
    },
    /// The signed SLSA provenance of an artifact (a DSSE envelope).
    Provenance { project: String, digest: String },
    /// Re-hash stored blobs and report each damaged one (exit 1 if any).
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["all", "digest"])))]
pub struct VerifyArgs {
    /// Every blob in the store.
    #[arg(long)]
    all: bool,
    /// Only this artifact.
    digest: Option<String>,
}

fn project_path(project: &str, rest: &str) -> Result<String, Failure> {
    Ok(format!("/api/v1/projects/{}{rest}", ProjectName::parse(project)?))
}

fn digest(text: &str) -> Result<String, Failure> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::input(format!("{text:?} is not a sha256 digest; give 64 hexadecimal digits")));
    }
    Ok(hex.to_ascii_lowercase())
}

fn build_line(b: &Value) -> String {
    let reason = b["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default();
    format!(
        "#{:<5} {:<9} {} on {}{}",
        b["number"],
        b["status"].as_str().unwrap_or(""),
        custody_domain::short_id(b["commit"].as_str().unwrap_or("")),
        b["branch"].as_str().unwrap_or(""),
        reason
    )
}

fn artifact_line(a: &Value) -> String {
    format!(
        "sha256:{}  {:>12}  build #{:<4} {}",
        a["digest"].as_str().unwrap_or(""),
        a["size"],
        a["build"],
        a["name"].as_str().unwrap_or("")
    )
}

fn build_text(b: &Value) -> String {
    let mut lines = vec![build_line(b)];
    let field = |name: &str| b[name].as_str().map(str::to_owned);
    if let Some(change) = b["change"].as_i64() {
        lines.push(format!("  merged by change #{change}"));
    }
    lines.push(format!("  commit:    {}", field("commit").unwrap_or_default()));
    if let Some(command) = field("command") {
        lines.push(format!("  command:   {command}"));
    }
    if let Some(network) = b["network"].as_bool() {
        lines.push(format!("  network:   {}", if network { "allowed" } else { "none" }));
    }
    if let Some(digest) = field("pipeline_digest") {
        lines.push(format!("  pipeline:  sha256:{digest}"));
    }
    if let Some(digest) = field("script_digest") {
        lines.push(format!("  script:    sha256:{digest}"));
    }
    if let Some(worker) = field("worker") {
        lines.push(format!("  worker:    {worker} (attempt {})", b["attempt"]));
    }
    for (label, key) in [("queued", "queued_at"), ("started", "started_at"), ("finished", "finished_at")] {
        if let Some(at) = field(key) {
            lines.push(format!("  {label:<10} {at}"));
        }
    }
    let artifacts = b["artifacts"].as_array().cloned().unwrap_or_default();
    if !artifacts.is_empty() {
        lines.push("  artifacts:".into());
        for a in &artifacts {
            lines.push(format!("    {}", artifact_line(a)));
        }
    }
    lines.join("\n")
}

/// Runs a `custody build` command.
pub async fn build(client: &Client, command: BuildCommand, out: Output) -> Result<(), Failure> {
    match command {
        BuildCommand::List { project } => {
            let builds = client.list(&project_path(&project, "/builds")?).await?;
            out.list(&builds, build_line, "no builds yet: merging a change into the default branch starts one");
        }
        BuildCommand::Show { project, number } => {
            let build = client.get(&project_path(&project, &format!("/builds/{number}"))?).await?;
            out.show(&build, build_text);
        }
        BuildCommand::Logs { project, number, follow } => {
            let base = project_path(&project, &format!("/builds/{number}/log"))?;
            let mut after = 0i64;
            let mut stdout = std::io::stdout();
            loop {
                let page: Value = client.get(&format!("{base}?after={after}")).await?;
                for chunk in page["chunks"].as_array().into_iter().flatten() {
                    let data = chunk["data"].as_str().unwrap_or("");
                    if out.json {
                        out.print_json(chunk);
                    } else if stdout.write_all(data.as_bytes()).is_err() {
                        return Ok(());
                    }
                    after = chunk["seq"].as_i64().unwrap_or(after);
                }
                let _ = stdout.flush();
                let complete = page["complete"].as_bool() == Some(true);
                if complete || !follow {
                    if !complete && page["chunks"].as_array().is_some_and(|c| c.len() == 1000) {
                        continue;
                    }
                    break;
                }
                if page["chunks"].as_array().is_none_or(|c| c.is_empty()) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    Ok(())
}

/// Runs a `custody artifact` command.
pub async fn artifact(client: &Client, command: ArtifactCommand, out: Output) -> Result<(), Failure> {
    match command {
        ArtifactCommand::List { project, build } => {
            let query = build.map(|b| format!("?build={b}")).unwrap_or_default();
            let artifacts = client.list(&project_path(&project, &format!("/artifacts{query}"))?).await?;
            out.list(&artifacts, artifact_line, "no artifacts yet");
        }
        ArtifactCommand::Show { project, digest: text } => {
            let digest = digest(&text)?;
            let artifact: Value = client.get(&project_path(&project, &format!("/artifacts/{digest}"))?).await?;
            out.show(&artifact, |a| {
                let mut lines = vec![format!("sha256:{}  {} bytes", digest, a["size"])];
                for build in a["builds"].as_array().into_iter().flatten() {
                    lines.push(format!(
                        "  build #{} of {} as {}",
                        build["build"],
                        custody_domain::short_id(build["commit"].as_str().unwrap_or("")),
                        build["name"].as_str().unwrap_or("")
                    ));
                }
                lines.join("\n")
            });
        }
        ArtifactCommand::Get { project, digest: text, output } => {
            let digest = digest(&text)?;
            let size =
                download(client, &project_path(&project, &format!("/artifacts/{digest}/content"))?, &digest, &output)
                    .await?;
            out.show(&serde_json::json!({ "digest": digest, "size": size, "file": output }), |_| {
                format!("wrote {} ({size} bytes, sha256:{digest} checked)", output.display())
            });
        }
        ArtifactCommand::Provenance { project, digest: text } => {
            let digest = digest(&text)?;
            let envelope: Value =
                client.get(&project_path(&project, &format!("/artifacts/{digest}/provenance"))?).await?;
            out.show(&envelope, |e| serde_json::to_string_pretty(e).unwrap_or_default());
        }
        ArtifactCommand::Verify(args) => {
            let path = match &args.digest {
                Some(text) => format!("/api/v1/artifacts/verify?digest={}", digest(text)?),
                None => "/api/v1/artifacts/verify".to_owned(),
            };
            let checks: Value = client.get(&path).await?;
            let checks = checks.as_array().cloned().unwrap_or_default();
            let damaged: Vec<&Value> =
                checks.iter().filter(|c| matches!(c["state"].as_str(), Some("damaged" | "missing"))).collect();
            if out.json {
                out.print_json(&checks);
            } else {
                for check in &checks {
                    let state = check["state"].as_str().unwrap_or("");
                    let projects: Vec<&str> =
                        check["projects"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                    let detail = match (state, check["actual"].as_str()) {
                        ("damaged", Some(actual)) => format!(": its bytes hash to sha256:{actual}"),
                        _ => String::new(),
                    };
                    say(&format!(
                        "{:<10} sha256:{}{} [{}]",
                        state.to_uppercase(),
                        check["digest"].as_str().unwrap_or(""),
                        detail,
                        projects.join(", ")
                    ));
                }
                say(&format!("{} blob(s) checked, {} damaged or missing", checks.len(), damaged.len()));
            }
            if !damaged.is_empty() {
                return Err(Failure {
                    code: 1,
                    message: format!(
                        "{} blob(s) damaged or missing: {}",
                        damaged.len(),
                        damaged.iter().filter_map(|c| c["digest"].as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    body: None,
                });
            }
        }
    }
    Ok(())
}

/// Streams an artifact into `output` through a temporary file, hashing as
/// it goes; only a complete file whose digest matches takes the final name.
async fn download(client: &Client, path: &str, digest: &str, output: &PathBuf) -> Result<u64, Failure> {
    let mut response = client.stream(path).await?;
    let total = response.content_length();
    let directory = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut file = tempfile::NamedTempFile::new_in(directory)
        .map_err(|e| Failure::input(format!("cannot write in {}: {e}", directory.display())))?;
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    let progress = std::io::stderr().is_terminal() && total.is_some_and(|t| t >= 8 << 20);
    let started = Instant::now();
    let mut shown = Instant::now();
    loop {
        let chunk = response.chunk().await.map_err(|e| Failure {
            code: 1,
            message: format!(
                "the download of sha256:{digest} broke off after {written} bytes ({e}); the server cuts a transfer \
                 off when the stored blob no longer matches its digest: ask an admin to run `custody artifact verify {digest}`"
            ),
            body: None,
        })?;
        let Some(chunk) = chunk else { break };
        hasher.update(&chunk);
        written += chunk.len() as u64;
        file.write_all(&chunk).map_err(|e| Failure::input(format!("cannot write {}: {e}", output.display())))?;
        if progress && shown.elapsed() >= Duration::from_millis(200) {
            shown = Instant::now();
            eprint!("\r{}", progress_line(written, total.unwrap_or(written), started.elapsed()));
        }
    }
    if progress {
        eprintln!("\r{}", progress_line(written, total.unwrap_or(written), started.elapsed()));
    }
    let actual = hex::encode(hasher.finalize());
    if actual != digest || total.is_some_and(|t| t != written) {
        return Err(Failure {
            code: 1,
            message: format!(
                "artifact sha256:{digest} is damaged: the {written} bytes received hash to sha256:{actual}; \
                 nothing was written. Ask an admin to run `custody artifact verify {digest}`"
            ),
            body: None,
        });
    }
    file.as_file().sync_all().map_err(|e| Failure::input(format!("cannot write {}: {e}", output.display())))?;
    file.persist(output).map_err(|e| Failure::input(format!("cannot write {}: {}", output.display(), e.error)))?;
    Ok(written)
}

fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    let width = 30usize;
    let filled = if total == 0 { width } else { ((done as u128 * width as u128) / total as u128) as usize };
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001) / (1 << 20) as f64;
    format!(
        "[{}{}] {:>7.1} / {:.1} MiB  {:.0} MiB/s",
        "#".repeat(filled.min(width)),
        " ".repeat(width - filled.min(width)),
        done as f64 / (1 << 20) as f64,
        total as f64 / (1 << 20) as f64,
        rate
    )
}
