//! `custody doctor`: checks an instance's host and says what is wrong and
//! what to do, one line a check. It reads and never writes: it opens the
//! database read-only and asks a running server only for `/readyz`.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use clap::Args;
use custody_formats::KeyRole;
use serde::Serialize;

use crate::commands::Output;
use crate::config::Instance;
use crate::Failure;

/// The largest difference between this host's clock and the database's
/// that custody accepts without a word: timestamps of events, leases and
/// sessions written by several servers are compared with each other.
const CLOCK_SKEW_LIMIT_MS: i64 = 2_000;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    instance: crate::config::InstanceArgs,
    /// A running server to ask whether it is ready, such as http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Print the problems only.
    #[arg(long)]
    quiet: bool,
}

/// How a check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Ok,
    /// Worth knowing, not wrong.
    Note,
    Problem,
}

/// One check's finding.
#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    state: State,
    message: String,
    /// What to do about a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn ok(check: &'static str, message: impl Into<String>) -> Check {
        Check { check, state: State::Ok, message: message.into(), fix: None }
    }

    fn note(check: &'static str, message: impl Into<String>) -> Check {
        Check { check, state: State::Note, message: message.into(), fix: None }
    }

    fn problem(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { check, state: State::Problem, message: message.into(), fix: Some(fix.into()) }
    }
}

pub async fn doctor(args: DoctorArgs, out: Output) -> Result<(), Failure> {
    let instance = args.instance.resolve()?;
    let mut checks = vec![data_directory(instance.data_dir.root())];
    checks.extend(keys(&instance.data_dir.keys()));
    checks.push(sandbox().await);
    checks.extend(database(&instance).await);
    checks.push(blob_store(&instance).await);
    if let Some(url) = &args.url {
        checks.push(server(url).await);
    }
    let problems = checks.iter().filter(|c| c.state == State::Problem).count();
    if out.json {
        out.print_json(&checks);
    } else {
        for check in checks.iter().filter(|c| !args.quiet || c.state == State::Problem) {
            let mark = match check.state {
                State::Ok => "ok     ",
                State::Note => "note   ",
                State::Problem => "PROBLEM",
            };
            println!("{mark} {:<14} {}", check.check, check.message);
            if let Some(fix) = &check.fix {
                println!("        {:<14} fix: {fix}", "");
            }
        }
    }
    match problems {
        0 => Ok(()),
        n => {
            Err(Failure { code: 1, message: format!("{n} problem{} found", if n == 1 { "" } else { "s" }), body: None })
        }
    }
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.mode() & 0o7777)
}

/// The data directory exists and only its owner may enter it.
fn data_directory(root: &Path) -> Check {
    match mode_of(root) {
        None => Check::problem(
            "data directory",
            format!("{} does not exist", root.display()),
            "pass --data-dir (or --config) naming the instance's data directory",
        ),
        Some(mode) if mode & 0o077 != 0 => Check::problem(
            "data directory",
            format!(
                "{} has mode {mode:04o}: others on the host may read the database and repositories",
                root.display()
            ),
            format!("chmod 700 {}", root.display()),
        ),
        Some(mode) => Check::ok("data directory", format!("{} (mode {mode:04o})", root.display())),
    }
}

/// Every key file is readable by its owner alone.
fn keys(dir: &Path) -> Vec<Check> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![Check::problem(
            "keys",
            format!("{} cannot be read", dir.display()),
            "check that this is the instance's data directory and that you run as its owner",
        )];
    };
    let mut files: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    let exposed: Vec<Check> = files
        .iter()
        .filter_map(|file| {
            let mode = mode_of(file)?;
            (mode & 0o077 != 0).then(|| {
                Check::problem(
                    "keys",
                    format!("{} has mode {mode:04o}: anyone on the host who can read it holds the key", file.display()),
                    format!("chmod 600 {}; if others could read it, rotate the key", file.display()),
                )
            })
        })
        .collect();
    if exposed.is_empty() {
        vec![Check::ok("keys", format!("{} key files, each readable by its owner alone", files.len()))]
    } else {
        exposed
    }
}

/// bubblewrap is there and runs a job; and how jobs are isolated here.
async fn sandbox() -> Check {
    let Some(path) = custody_runner::sandbox::bubblewrap() else {
        return Check::problem(
            "sandbox",
            "bubblewrap is not installed: no check, build or deploy job can run",
            "install it (Debian: apt-get install bubblewrap), or set CUSTODY_BWRAP to where it is",
        );
    };
    match custody_runner::sandbox::self_test().await {
        Ok(true) => Check::ok(
            "sandbox",
            format!("{path} runs jobs, each under a uid of its own with its memory and processes capped"),
        ),
        Ok(false) => Check::note(
            "sandbox",
            format!(
                "{path} runs jobs; custody is not root here, so jobs share its uid and only rlimits cap them \
                 (see docs/operating.md)"
            ),
        ),
        Err(why) => Check::problem(
            "sandbox",
            format!("{path} is installed but cannot run a job: {why}"),
            "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1), or run custody as root",
        ),
    }
}

/// The database answers, its ledger verifies, and its clock agrees with ours.
async fn database(instance: &Instance) -> Vec<Check> {
    let url = &instance.database_url;
    let shown = crate::serve::without_credentials(url);
    let key = match instance.data_dir.load_key(KeyRole::Ledger) {
        Ok(key) => key,
        Err(e) => {
            return vec![Check::problem(
                "ledger",
                format!("the ledger key cannot be read: {e}"),
                "run as the instance's owner, on its data directory",
            )]
        }
    };
    let secrets = instance.data_dir.existing_ledger_secrets().ok().flatten();
    let mut checks = Vec::new();
    match custody_store::inspect_with_key(url, &key.public(), secrets.as_ref()).await {
        Ok(report) if report.intact() => {
            checks.push(Check::ok("database", format!("{shown} answers")));
            checks.push(Check::ok("ledger", format!("{} events; every one verifies", report.events)));
        }
        Ok(report) => {
            checks.push(Check::ok("database", format!("{shown} answers")));
            checks.push(Check::problem(
                "ledger",
                format!("{} of {} events do not verify", report.findings.len(), report.events),
                "run `custody audit verify` for each one, and treat the database as tampered with",
            ));
        }
        Err(e) => {
            checks.push(Check::problem(
                "database",
                format!("{shown} cannot be read: {e}"),
                "check that the database runs and the URL (--database-url) is right",
            ));
            return checks;
        }
    }
    match custody_store::database_clock_ms(url).await {
        Ok(Some(theirs)) => {
            let skew = theirs - custody_store::now_ms();
            if skew.abs() > CLOCK_SKEW_LIMIT_MS {
                checks.push(Check::problem(
                    "clock",
                    format!("this host's clock is {} ms off the database's", -skew),
                    "synchronise every server's clock (NTP); leases, sessions and event times compare them",
                ));
            } else {
                checks.push(Check::ok("clock", format!("within {} ms of the database's", skew.abs())));
            }
        }
        Ok(None) => {}
        Err(e) => checks.push(Check::problem(
            "clock",
            format!("the database's clock cannot be read: {e}"),
            "check the database",
        )),
    }
    checks
}

/// The artifact store answers.
async fn blob_store(instance: &Instance) -> Check {
    let opened = match &instance.blob_store {
        Some(url) => custody_blobs::Blobs::from_url(url, &instance.data_dir.blobs()),
        None => custody_blobs::Blobs::local(&instance.data_dir.blobs()),
    };
    let blobs = match opened {
        Ok(blobs) => blobs,
        Err(e) => {
            return Check::problem(
                "blob store",
                format!("the artifact store cannot be opened: {e}"),
                "check --blob-store and its AWS_* settings",
            )
        }
    };
    let probe = custody_blobs::Digest::of(b"");
    let answered = tokio::time::timeout(std::time::Duration::from_secs(20), blobs.size(&probe)).await;
    match answered {
        Ok(Ok(_)) => Check::ok("blob store", format!("{} answers", blobs.describe())),
        Ok(Err(e)) => Check::problem(
            "blob store",
            format!("{} does not answer: {e}", blobs.describe()),
            "check that the store runs and that its endpoint and credentials (AWS_*) are right",
        ),
        Err(_) => Check::problem(
            "blob store",
            format!("{} did not answer within 20 seconds", blobs.describe()),
            "check that the store runs and that its endpoint (AWS_ENDPOINT_URL) is reachable",
        ),
    }
}

/// A running server says it is ready.
async fn server(url: &str) -> Check {
    let readyz = format!("{}/readyz", url.trim_end_matches('/'));
    let answer = async {
        let response = reqwest::get(&readyz).await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await.unwrap_or_default()))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), answer).await {
        Ok(Ok((status, _))) if status.is_success() => Check::ok("server", format!("{url} is ready")),
        Ok(Ok((status, body))) => {
            Check::problem("server", format!("{url} is not ready ({status}): {}", body.trim()), "read the server's log")
        }
        Ok(Err(e)) => Check::problem("server", format!("{url} cannot be reached: {e}"), "check that custody runs"),
        Err(_) => {
            Check::problem("server", format!("{url} did not answer within 10 seconds"), "check that custody runs")
        }
    }
}
