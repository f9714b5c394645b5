//! `custody build …` and `custody artifact …`: builds and the artifact
//! repository. Both are read-only for people: there is no command that
//! stores an artifact, because only the builder does.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args, Subcommand};
use custody_api::{ArtifactDetail, ArtifactView, BlobCheck, BuildView, LogPage};
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

fn build_line(b: &BuildView) -> String {
    let reason = b.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
    format!("#{} {:<9} {} on {}{reason}", b.number, b.status.as_str(), custody_domain::short_id(&b.commit), b.branch)
}

fn artifact_line(a: &ArtifactView) -> String {
    format!("sha256:{}  {}  build #{} {}", a.digest, a.size, a.build, a.name)
}

fn build_text(b: &BuildView) -> String {
    let mut lines = vec![build_line(b)];
    if let Some(change) = b.change {
        lines.push(format!("  merged by change #{change}"));
    }
    lines.push(format!("  commit:    {}", b.commit));
    if let Some(command) = &b.command {
        lines.push(format!("  command:   {command}"));
    }
    if let Some(network) = b.network {
        lines.push(format!("  network:   {}", if network { "allowed" } else { "none" }));
    }
    if let Some(digest) = &b.pipeline_digest {
        lines.push(format!("  pipeline:  sha256:{digest}"));
    }
    if let Some(digest) = &b.script_digest {
        lines.push(format!("  script:    sha256:{digest}"));
    }
    if let Some(worker) = &b.worker {
        lines.push(format!("  worker:    {worker} (attempt {})", b.attempt));
    }
    for (label, at) in [("queued", Some(b.queued_at)), ("started", b.started_at), ("finished", b.finished_at)] {
        if let Some(at) = at {
            lines.push(format!("  {label:<10} {at}"));
        }
    }
    if !b.artifacts.is_empty() {
        lines.push("  artifacts:".into());
        lines.extend(b.artifacts.iter().map(|a| format!("    {}", artifact_line(a))));
    }
    lines.join("\n")
}

fn artifact_text(artifact: &ArtifactDetail) -> String {
    let mut lines = vec![format!("sha256:{}  {} bytes", artifact.digest, artifact.size)];
    for made in &artifact.builds {
        lines.push(format!("  build #{} of {} as {}", made.build, custody_domain::short_id(&made.commit), made.name));
    }
    lines.join("\n")
}

fn blob_check_line(check: &BlobCheck) -> String {
    let detail = match (check.state.as_str(), &check.actual) {
        ("damaged", Some(actual)) => format!(": its bytes hash to sha256:{actual}"),
        _ => String::new(),
    };
    format!("{:<10} sha256:{}{} [{}]", check.state.to_uppercase(), check.digest, detail, check.projects.join(", "))
}

/// Runs a `custody build` command.
pub async fn build(client: &Client, command: BuildCommand, out: Output) -> Result<(), Failure> {
    match command {
        BuildCommand::List { project } => {
            let builds: Vec<BuildView> = client.list(&project_path(&project, "/builds")?).await?;
            out.list(&builds, build_line, "no builds yet: merging a change into the default branch starts one");
        }
        BuildCommand::Show { project, number } => {
            let build: BuildView = client.get(&project_path(&project, &format!("/builds/{number}"))?).await?;
            out.show(&build, build_text);
        }
        BuildCommand::Logs { project, number, follow } => {
            let base = project_path(&project, &format!("/builds/{number}/log"))?;
            let mut after = 0i64;
            let mut stdout = std::io::stdout();
            loop {
                let page: LogPage = client.get(&format!("{base}?after={after}")).await?;
                for chunk in &page.chunks {
                    if out.json {
                        out.print_json(chunk);
                    } else if stdout.write_all(chunk.data.as_bytes()).is_err() {
                        return Ok(());
                    }
                    after = chunk.seq;
                }
                let _ = stdout.flush();
                if page.complete || !follow {
                    if !page.complete && page.chunks.len() == 1000 {
                        continue;
                    }
                    break;
                }
                if page.chunks.is_empty() {
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
            let artifacts: Vec<ArtifactView> =
                client.list(&project_path(&project, &format!("/artifacts{query}"))?).await?;
            out.list(&artifacts, artifact_line, "no artifacts yet");
        }
        ArtifactCommand::Show { project, digest: text } => {
            let digest = digest(&text)?;
            let artifact: ArtifactDetail =
                client.get(&project_path(&project, &format!("/artifacts/{digest}"))?).await?;
            out.show(&artifact, artifact_text);
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
            // A signed envelope, passed on as received.
            let envelope: Value =
                client.get(&project_path(&project, &format!("/artifacts/{digest}/provenance"))?).await?;
            out.show(&envelope, |e| serde_json::to_string_pretty(e).unwrap_or_default());
        }
        ArtifactCommand::Verify(args) => {
            let path = match &args.digest {
                Some(text) => format!("/api/v1/artifacts/verify?digest={}", digest(text)?),
                None => "/api/v1/artifacts/verify".to_owned(),
            };
            let checks: Vec<BlobCheck> = client.get(&path).await?;
            let damaged: Vec<&str> = checks
                .iter()
                .filter(|c| matches!(c.state.as_str(), "damaged" | "missing"))
                .map(|c| c.digest.as_str())
                .collect();
            if out.json {
                out.print_json(&checks);
            } else {
                for check in &checks {
                    say(&blob_check_line(check));
                }
                say(&format!("{} blob(s) checked, {} damaged or missing", checks.len(), damaged.len()));
            }
            if !damaged.is_empty() {
                return Err(Failure {
                    code: 1,
                    message: format!("{} blob(s) damaged or missing: {}", damaged.len(), damaged.join(", ")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_reads_as_it_always_printed() {
        let answer = serde_json::json!({
            "number": 7, "project": "shop", "commit": "0123456789abcdef0123456789abcdef01234567",
            "branch": "main", "change": null, "status": "failed", "reason": "exit 3", "attempt": 1,
            "worker": null, "queued_at": "2026-01-02T03:04:05.678Z", "started_at": null, "finished_at": null,
            "command": null, "network": null, "pipeline_digest": null, "script_digest": null, "exit_code": 3,
            "artifacts": [{ "project": "shop", "build": 7, "name": "dist/app", "digest": "ab", "size": 12,
                            "commit": "0123456789abcdef0123456789abcdef01234567",
                            "created_at": "2026-01-02T03:04:05.678Z" }]
        });
        let build: BuildView = serde_json::from_value(answer.clone()).expect("a build");
        assert_eq!(serde_json::to_value(&build).expect("JSON"), answer);
        assert_eq!(
            build_text(&build),
            [
                "#7 failed    0123456789ab on main (exit 3)",
                "  commit:    0123456789abcdef0123456789abcdef01234567",
                "  queued     2026-01-02T03:04:05.678Z",
                "  artifacts:",
                "    sha256:ab  12  build #7 dist/app",
            ]
            .join("\n")
        );
    }
}
