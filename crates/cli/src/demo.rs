//! `custody demo`: a fresh instance in a new data directory, where alice,
//! bob, carol and dave play the seed's story from a commit to production,
//! each step shown with the person, their duty and the command they ran.
//! The server stays up afterwards for a look around.
//!
//! Every step is a real command (`git`, or this binary as a client), so the
//! demo goes through exactly the checks a person would meet.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use custody_api::{BuildView, ChangeDetail, ChangeView, CreatedUser, DeploymentView, ErrorBody, Merged};
use custody_domain::status::{BuildStatus, DeploymentStatus};
use custody_formats::attestation::{unverified_predicate, DeploymentV1};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::Failure;

const PROJECT: &str = "payments";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Where to make the demo instance; it must not exist yet, or be empty.
    #[arg(long, value_name = "DIR", default_value = "./custody-demo")]
    data_dir: PathBuf,
    /// Where its server listens, HOST:PORT; port 0 picks a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// Stop the server once the story has been told, instead of waiting
    /// for Ctrl-C.
    #[arg(long)]
    no_wait: bool,
}

/// The people of the story and their duties.
const PEOPLE: [(&str, &str); 4] =
    [("alice", "developer"), ("bob", "reviewer"), ("carol", "release manager"), ("dave", "tester")];

pub async fn demo(args: DemoArgs) -> Result<(), Failure> {
    if args.data_dir.read_dir().is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Failure::input(format!(
            "{} is not empty; the demo makes a fresh instance: remove it or pass --data-dir NEW_DIR",
            args.data_dir.display()
        )));
    }
    if args.data_dir.exists() && !args.data_dir.is_dir() {
        return Err(Failure::input(format!("{} is not a directory", args.data_dir.display())));
    }
    let exe = std::env::current_exe().map_err(|e| Failure::internal(format!("cannot find this program: {e}")))?;
    let (data_dir, listen, wait) = (args.data_dir, args.listen, !args.no_wait);
    let (mut server, told) = tokio::task::spawn_blocking(move || {
        let mut story = Story::start(exe, data_dir, &listen)?;
        let told = story.tell();
        Ok::<_, Failure>((story.server, told.map(|()| story.summary)))
    })
    .await
    .map_err(|_| Failure::internal("the demo stopped unexpectedly"))??;
    let summary = match told {
        Ok(summary) => summary,
        Err(failure) => {
            stop(&mut server);
            return Err(failure);
        }
    };
    println!("{summary}");
    if wait {
        println!("Press Ctrl-C to stop the server.");
        wait_for_signal().await;
    }
    stop(&mut server);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Asks the server to shut down gracefully, and waits for it.
fn stop(server: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(server.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// The instance, its people's tokens, and the steps told so far.
struct Story {
    exe: PathBuf,
    data_dir: PathBuf,
    /// The demo's own files: the people's clones and config directories.
    work: PathBuf,
    server: Child,
    url: String,
    tokens: BTreeMap<&'static str, String>,
    step: usize,
    target: Target,
    summary: String,
}

/// What `custody init --json` prints.
#[derive(Deserialize)]
struct Initialised {
    token: String,
}

/// What `custody token redeem --json` prints.
#[derive(Deserialize)]
struct Redeemed {
    token: String,
}

impl Story {
    fn start(exe: PathBuf, data_dir: PathBuf, listen: &str) -> Result<Story, Failure> {
        let made = Command::new(&exe)
            .args(["init", "--admin", "admin", "--admin-email", "admin@example.com", "--json", "--data-dir"])
            .arg(&data_dir)
            .output()
            .map_err(|e| Failure::internal(format!("cannot run {}: {e}", exe.display())))?;
        if !made.status.success() {
            return Err(Failure::input(format!(
                "making the instance failed: {}",
                String::from_utf8_lossy(&made.stderr).trim()
            )));
        }
        let made: Initialised = serde_json::from_slice(&made.stdout)
            .map_err(|e| Failure::internal(format!("`custody init` answered oddly: {e}")))?;
        let admin = made.token;
        let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
        let work = data_dir.join("demo");
        std::fs::create_dir_all(&work)
            .map_err(|e| Failure::internal(format!("cannot make {}: {e}", work.display())))?;
        let mut server = Command::new(&exe)
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(&data_dir)
            .env("CUSTODY_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Failure::internal(format!("cannot start the server: {e}")))?;
        let mut lines = BufReader::new(server.stdout.take().expect("piped")).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("listening on ") {
                        break url.trim().to_owned();
                    }
                }
                _ => {
                    let _ = server.wait();
                    return Err(Failure::input(format!("the server did not start on {listen}; is the port free?")));
                }
            }
        };
        // Keep reading what the server prints, so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let target = Target::start().map_err(|e| Failure::internal(format!("cannot listen for deploys: {e}")))?;
        println!("custody demo: a fresh instance in {}, serving {url}\n", data_dir.display());
        Ok(Story {
            exe,
            data_dir,
            work,
            server,
            url,
            tokens: BTreeMap::from([("admin", admin)]),
            step: 0,
            target,
            summary: String::new(),
        })
    }

    /// The whole story, step by step.
    fn tell(&mut self) -> Result<(), Failure> {
        self.invite_the_team()?;
        self.create_the_project()?;
        self.change_reviewed_and_merged()?;
        self.build_stored()?;
        let number = self.deployed_to_production()?;
        self.summarise(&number)
    }

    /// The admin invites the team; each redeems an invite for a token.
    fn invite_the_team(&mut self) -> Result<(), Failure> {
        self.say("admin", "administrator", "invites the team; each redeems an invite for a token");
        for (name, _) in PEOPLE {
            let added: CreatedUser =
                self.custody("admin", &["user", "add", name, "--email", &format!("{name}@example.com")])?;
            let code = added.invite_code;
            let redeemed: Redeemed =
                self.run_json(self.command(name).args(["token", "redeem", &code, "--server", &self.url]))?;
            self.tokens.insert(name, redeemed.token);
        }

        Ok(())
    }

    /// The admin creates the project and the groups of the duties.
    fn create_the_project(&mut self) -> Result<(), Failure> {
        self.say("admin", "administrator", "creates the project from a baseline, imported and marked unreviewed");
        let baseline = self.baseline()?;
        self.custody::<IgnoredAny>(
            "admin",
            &["project", "create", PROJECT, "--import", &baseline.display().to_string()],
        )?;
        for (name, _) in PEOPLE {
            self.custody::<IgnoredAny>("admin", &["project", "member", "add", PROJECT, name, "--role", "write"])?;
        }
        self.say("admin", "administrator", "puts carol in release-managers and dave in testers");
        for (group, member) in [("release-managers", "carol"), ("testers", "dave")] {
            self.custody::<IgnoredAny>("admin", &["group", "create", group])?;
            self.custody::<IgnoredAny>("admin", &["group", "add", group, member])?;
        }

        Ok(())
    }

    /// Alice pushes a change, cannot merge it alone, Bob approves it, and
    /// custody merges it.
    fn change_reviewed_and_merged(&mut self) -> Result<(), Failure> {
        self.say("alice", "developer", "clones the project, changes the app on a branch and pushes it");
        let clone = self.work.join("alice");
        let remote = self.remote("alice");
        self.git("alice", &self.work, &["clone", "-q", &remote, clone.to_str().unwrap_or_default()])?;
        self.git("alice", &clone, &["checkout", "-q", "-b", "faster-payments"])?;
        std::fs::write(clone.join("src/app.txt"), "payments app, version 2: faster payments\n")
            .map_err(|e| Failure::internal(format!("cannot edit alice's clone: {e}")))?;
        self.git("alice", &clone, &["commit", "-q", "-am", "Faster payments"])?;
        self.git("alice", &clone, &["push", "-q", "origin", "faster-payments"])?;
        self.say("alice", "developer", "opens a change");
        let opened: ChangeView = self.custody(
            "alice",
            &["change", "open", PROJECT, "--source", "faster-payments", "--title", "Faster payments"],
        )?;
        let change = opened.number.to_string();
        self.say("alice", "developer", "tries to merge it before anyone else has approved it");
        self.refused("alice", &["change", "merge", PROJECT, &change])?;
        self.say("bob", "reviewer", &format!("reviews and approves change {change}"));
        let shown: ChangeDetail = self.custody("bob", &["change", "show", PROJECT, &change])?;
        let head = shown.change.head;
        self.custody::<IgnoredAny>(
            "bob",
            &["change", "review", PROJECT, &change, "--approve", "--head", &head, "-m", "looks right"],
        )?;
        self.say("alice", "developer", "merges it: custody checks the gate and merges");
        let merged: Merged = self.custody("alice", &["change", "merge", PROJECT, &change])?;
        let commit = merged.change.merge_commit.unwrap_or_default();
        self.note(&format!("main is now {}", custody_domain::short_id(&commit)));

        Ok(())
    }

    /// custody's build service builds the merge and stores the artifact.
    fn build_stored(&mut self) -> Result<(), Failure> {
        self.say("custody", "build service", "builds the merged commit in its sandbox and signs provenance");
        let build = self.until("the build", |story| {
            let build: BuildView = story.custody_quiet("alice", &["build", "show", PROJECT, "1"]).ok()?;
            (!build.status.is_waiting()).then_some(build)
        })?;
        if build.status != BuildStatus::Succeeded {
            return Err(Failure {
                code: 1,
                message: format!("the build did not succeed: {}", build.reason.unwrap_or_default()),
                body: None,
            });
        }
        let digest = build.artifacts.first().map(|a| a.digest.clone()).unwrap_or_default();
        self.note(&format!("build 1 stored dist/app.tar.gz, sha256 {}", custody_domain::short_id(&digest)));

        Ok(())
    }

    /// Staging on its own, then production after a tester's sign-off and a
    /// release manager's approval; returns the production deployment's number.
    fn deployed_to_production(&mut self) -> Result<String, Failure> {
        self.say("custody", "deployer", "deploys build 1 to staging on its own: staging has no gate");
        self.finished_deployment(1)?;
        self.say("alice", "developer", "tries to approve the production deployment");
        let production = self.until("the production deployment", |story| {
            let shown: DeploymentView = story.custody_quiet("alice", &["deploy", "show", PROJECT, "2"]).ok()?;
            (shown.status == DeploymentStatus::Pending).then_some(shown)
        })?;
        let number = production.number.to_string();
        self.refused("alice", &["deploy", "approve", PROJECT, &number])?;
        self.say("dave", "tester", "tests staging by hand and signs off");
        self.custody::<IgnoredAny>(
            "dave",
            &["deploy", "sign-off", PROJECT, &number, "--passed", "-m", "payments go through"],
        )?;
        self.say("carol", "release manager", &format!("approves deployment {number} to production"));
        self.custody::<IgnoredAny>("carol", &["deploy", "approve", PROJECT, &number, "-m", "ship it"])?;
        self.say("custody", "deployer", "runs the reviewed deploy script for production");
        self.finished_deployment(2)?;

        Ok(number)
    }

    /// Who held each duty, as the signed attestation says, and how to look
    /// around.
    fn summarise(&mut self, number: &str) -> Result<(), Failure> {
        let envelope: Value = self.custody("alice", &["deploy", "attestation", PROJECT, number])?;
        let predicate = unverified_predicate::<DeploymentV1>(&envelope.to_string()).ok_or_else(|| {
            Failure::internal("the deployment attestation does not hold a deployment predicate of version 1")
        })?;
        let mut summary = String::from("\nThe signed deployment attestation names who held each duty:\n");
        for change in &predicate.release {
            summary.push_str(&format!(
                "  change {}: written by {}, reviewed by {}\n",
                change.change,
                change.authors.join(", "),
                change.reviewers.join(", ")
            ));
        }
        summary.push_str(&format!(
            "  built by {}\n  approved by {}\n  tested by {}\n  deployed by {}\n",
            predicate.builder.as_deref().unwrap_or("?"),
            predicate.approvers.join(", "),
            predicate.testers.join(", "),
            predicate.deployer,
        ));
        summary.push_str(&format!("\nThe server is still running at {}. Look around as anyone:\n", self.url));
        for (name, token) in &self.tokens {
            summary.push_str(&format!("  {name:<6} CUSTODY_SERVER={} CUSTODY_TOKEN={token}\n", self.url));
        }
        summary.push_str(&format!(
            "For example: custody deploy list {PROJECT}; custody audit verify --data-dir {}\n",
            self.data_dir.display()
        ));
        let tokens: String = self.tokens.iter().map(|(name, token)| format!("{name} {token}\n")).collect();
        let file = self.work.join("tokens");
        let written = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&file)
            .and_then(|mut f| f.write_all(tokens.as_bytes()));
        written.map_err(|e| Failure::internal(format!("cannot write {}: {e}", file.display())))?;
        summary.push_str(&format!("The tokens are also in {}.", file.display()));
        self.summary = summary;
        Ok(())
    }

    /// Waits for deployment `number` to end and says how it went.
    fn finished_deployment(&mut self, number: i64) -> Result<(), Failure> {
        let done = self.until(&format!("deployment {number}"), |story| {
            let shown: DeploymentView =
                story.custody_quiet("alice", &["deploy", "show", PROJECT, &number.to_string()]).ok()?;
            (!shown.status.is_waiting()).then_some(shown)
        })?;
        if done.status != DeploymentStatus::Succeeded {
            return Err(Failure {
                code: 1,
                message: format!("deployment {number} {}: {}", done.status.as_str(), done.reason.unwrap_or_default()),
                body: None,
            });
        }
        let environment = done.environment;
        match self.target.received().into_iter().rev().find(|(path, _)| path.starts_with(&format!("/{environment}"))) {
            Some((_, digest)) => {
                self.note(&format!("{environment} received app.tar.gz, sha256 {}", custody_domain::short_id(&digest)))
            }
            None => self.note(&format!("{environment} is live with build {}", done.build)),
        }
        Ok(())
    }

    /// A small repository: the pipeline file with staging and production,
    /// the build and deploy scripts, and the app.
    fn baseline(&self) -> Result<PathBuf, Failure> {
        let dir = self.work.join("baseline");
        let pipeline =
            "[review]\napprovals = 1\n\n[pipeline]\nowners = \"release-managers\"\nbuild = \"scripts/build.sh\"\n\
             artifacts = [\"dist/*.tar.gz\"]\n\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n\n\
             [[environment]]\nname = \"production\"\nafter = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n\
             approvals = 1\napprovers = \"release-managers\"\ntesters = \"testers\"\n";
        let build = "#!/bin/sh\nset -e\nmkdir -p dist\ntar -czf dist/app.tar.gz src\necho built $CUSTODY_COMMIT\n";
        let deploy = format!(
            "#!/bin/sh\nset -e\necho \"deploying build $CUSTODY_BUILD to $CUSTODY_ENVIRONMENT\"\n\
             if command -v curl >/dev/null; then\n  curl -fsS --data-binary @\"$CUSTODY_ARTIFACTS_DIR/dist/app.tar.gz\" \
             \"{}/$CUSTODY_ENVIRONMENT\"\nfi\n",
            self.target.url
        );
        let files: [(&str, &str, bool); 4] = [
            (".custody/pipeline.toml", pipeline, false),
            ("scripts/build.sh", build, true),
            ("scripts/deploy.sh", &deploy, true),
            ("src/app.txt", "payments app, version 1\n", false),
        ];
        for (path, content, executable) in files {
            let full = dir.join(path);
            let written = full
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&full, content))
                .and_then(|()| {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = if executable { 0o755 } else { 0o644 };
                    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))
                });
            written.map_err(|e| Failure::internal(format!("cannot write {}: {e}", full.display())))?;
        }
        self.git("admin", &dir, &["init", "-q", "-b", "main"])?;
        self.git("admin", &dir, &["add", "."])?;
        self.git("admin", &dir, &["commit", "-q", "-m", "Baseline"])?;
        Ok(dir)
    }

    fn say(&mut self, who: &str, duty: &str, what: &str) {
        self.step += 1;
        println!("{:>2}. {who} ({duty}) {what}", self.step);
    }

    fn note(&self, what: &str) {
        println!("    {what}");
    }

    /// This binary as a client, run as `who`: its JSON answer.
    fn command(&self, who: &str) -> Command {
        let mut command = Command::new(&self.exe);
        command
            .arg("--json")
            .env("CUSTODY_CONFIG_DIR", self.work.join(format!("config-{who}")))
            .env("CUSTODY_SERVER", &self.url)
            .env_remove("CUSTODY_CONFIG");
        if let Some(token) = self.tokens.get(who) {
            command.env("CUSTODY_TOKEN", token);
        }
        command
    }

    /// `custody ARGS` as `who`, shown as it is run.
    fn custody<T: DeserializeOwned>(&self, who: &str, args: &[&str]) -> Result<T, Failure> {
        println!("    $ custody {}", shell_words(args));
        self.custody_quiet(who, args)
    }

    fn custody_quiet<T: DeserializeOwned>(&self, who: &str, args: &[&str]) -> Result<T, Failure> {
        self.run_json(self.command(who).args(args))
    }

    /// A command that custody must refuse: shows the reasons it gave.
    fn refused(&self, who: &str, args: &[&str]) -> Result<(), Failure> {
        println!("    $ custody {}", shell_words(args));
        let output = self.command(who).args(args).output().map_err(|e| Failure::internal(e.to_string()))?;
        if output.status.success() {
            return Err(Failure { code: 1, message: format!("custody let {who} {}", args.join(" ")), body: None });
        }
        let error = serde_json::from_slice::<ErrorBody>(&output.stderr).map(|body| body.error);
        match error {
            Ok(error) if !error.reasons.is_empty() => {
                for reason in &error.reasons {
                    println!("    refused by {}: {}", reason.rule, reason.message);
                }
            }
            Ok(error) => println!("    refused: {}", error.message),
            Err(_) => println!("    refused: {}", String::from_utf8_lossy(&output.stderr).trim()),
        }
        Ok(())
    }

    fn run_json<T: DeserializeOwned>(&self, command: &mut Command) -> Result<T, Failure> {
        let output = command.output().map_err(|e| Failure::internal(format!("cannot run custody: {e}")))?;
        if !output.status.success() {
            return Err(Failure {
                code: 1,
                message: format!("a step failed: {}", String::from_utf8_lossy(&output.stderr).trim()),
                body: None,
            });
        }
        serde_json::from_slice(&output.stdout).map_err(|e| {
            Failure::internal(format!("a step answered with JSON of another shape than the demo reads: {e}"))
        })
    }

    /// `http://WHO:TOKEN@HOST/payments.git`.
    fn remote(&self, who: &str) -> String {
        let token = self.tokens.get(who).cloned().unwrap_or_default();
        self.url.replacen("://", &format!("://{who}:{token}@"), 1) + &format!("/{PROJECT}.git")
    }

    fn git(&self, who: &str, dir: &Path, args: &[&str]) -> Result<(), Failure> {
        if who != "admin" {
            let shown: Vec<&str> = args.iter().map(|a| if a.contains('@') { "<project URL>" } else { a }).collect();
            println!("    $ git {}", shell_words(&shown));
        }
        let output = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", who)
            .env("GIT_AUTHOR_EMAIL", format!("{who}@example.com"))
            .env("GIT_COMMITTER_NAME", who)
            .env("GIT_COMMITTER_EMAIL", format!("{who}@example.com"))
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .map_err(|e| Failure::internal(format!("cannot run git: {e}")))?;
        if !output.status.success() {
            return Err(Failure {
                code: 1,
                message: format!("git {} failed: {}", args[0], String::from_utf8_lossy(&output.stderr).trim()),
                body: None,
            });
        }
        Ok(())
    }

    /// Polls `probe` for up to two minutes.
    fn until<T>(&mut self, what: &str, mut probe: impl FnMut(&Story) -> Option<T>) -> Result<T, Failure> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(found) = probe(self) {
                return Ok(found);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(Failure { code: 1, message: format!("{what} did not finish within two minutes"), body: None })
    }
}

/// Arguments as a person would type them: quoted when they hold a space.
fn shell_words(args: &[&str]) -> String {
    let quoted: Vec<String> =
        args.iter().map(|a| if a.contains(' ') { format!("'{a}'") } else { (*a).to_owned() }).collect();
    quoted.join(" ")
}

/// A plain HTTP endpoint on loopback playing the servers the deploy script
/// installs onto: it keeps the path and the sha256 of each request's body.
struct Target {
    url: String,
    received: Arc<Mutex<Vec<(String, String)>>>,
}

impl Target {
    fn start() -> std::io::Result<Target> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.trim().eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length.min(64 << 20)];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let digest = hex::encode(Sha256::digest(&body));
                log.lock().unwrap_or_else(|e| e.into_inner()).push((path, digest));
                let _ = reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
            }
        });
        Ok(Target { url, received })
    }

    fn received(&self) -> Vec<(String, String)> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
