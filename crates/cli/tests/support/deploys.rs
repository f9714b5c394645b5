//! What the deployment stories share: a pipeline with environments, the
//! groups that gate them, waiting for a deployment, reading an
//! attestation, and a small HTTP endpoint on loopback that plays the
//! environment a deploy script reaches.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::builds::{custody, pipeline, seed_with, sha256_hex, BUILD_SCRIPT, PIPELINE};
use super::hosted::{Hosted, Workspace, PROJECT};

/// A deploy script that shows what it was given.
pub const DEPLOY_SCRIPT: &str = "#!/bin/sh\nset -e\necho deploying to $CUSTODY_ENVIRONMENT build $CUSTODY_BUILD\n\
     sha256sum $CUSTODY_ARTIFACTS_DIR/dist/app.tar.gz\n";

/// A deploy script that deploys whatever the build made.
pub const DEPLOY_SCRIPT_ANY: &str = "#!/bin/sh\nset -e\necho deploying to $CUSTODY_ENVIRONMENT build $CUSTODY_BUILD\n";

/// The build section of every deployment story's pipeline.
pub fn build_section() -> String {
    pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]")
}

/// Two environments: staging deploys after every build, production after
/// staging with an approval from release-managers, and `extra` lines
/// added to production.
pub fn pipeline_with_environments(extra: &str) -> String {
    format!(
        "{}\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n\n[[environment]]\nname = \"production\"\n\
         after = \"staging\"\ndeploy = \"scripts/deploy.sh\"\napprovals = 1\napprovers = \"release-managers\"\n{extra}",
        build_section()
    )
}

/// main with `policy`, the standard build script, `deploy` as
/// `scripts/deploy.sh` and `src/app.txt`; alice's workspace on `feature`.
pub fn seed_deploying<'a>(hosted: &'a Hosted, policy: &str, deploy: &str) -> Workspace<'a> {
    seed_deploying_with(hosted, policy, BUILD_SCRIPT, deploy)
}

/// main with `policy`, `build` as `scripts/build.sh`, `deploy` as
/// `scripts/deploy.sh` and `src/app.txt`; alice's workspace on `feature`.
pub fn seed_deploying_with<'a>(hosted: &'a Hosted, policy: &str, build: &str, deploy: &str) -> Workspace<'a> {
    let files = [
        (PIPELINE, policy, false),
        ("scripts/build.sh", build, true),
        ("scripts/deploy.sh", deploy, true),
        ("src/app.txt", "version 1\n", false),
    ];
    seed_with(hosted, &files, "feature").0
}

/// Makes the group `name` with `members`.
pub fn group(hosted: &Hosted, name: &str, members: &[&str]) {
    hosted.as_admin(&["group", "create", name]).expect_code(0);
    for member in members {
        hosted.as_admin(&["group", "add", name, member]).expect_code(0);
    }
}

/// Makes the group `release-managers` with `members`.
pub fn release_managers(hosted: &Hosted, members: &[&str]) {
    group(hosted, "release-managers", members);
}

/// Waits (up to 60 s) for deployment `number` to reach a status in `wanted`.
#[track_caller]
pub fn deployment_reaching(hosted: &Hosted, number: i64, wanted: &[&str]) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        let shown = custody(hosted, &["deploy", "show", PROJECT, &number.to_string(), "--json"]);
        if shown.code() == Some(0) {
            last = shown.json();
            if wanted.iter().any(|w| last["status"] == *w) {
                return last;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("deployment {number} never reached {wanted:?}: {last}")
}

/// The in-toto statement inside a DSSE envelope (not verified here).
pub fn statement_of(envelope: &Value) -> Value {
    use base64::Engine;
    let payload = envelope["payload"].as_str().expect("a payload");
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(payload).expect("base64")).expect("JSON")
}

/// The first refusal's rule in a JSON error.
#[track_caller]
pub fn refused_rule(run: &super::Run) -> String {
    assert_eq!(run.code(), Some(1), "{run:#?}");
    run.json_error()["error"]["reasons"][0]["rule"].as_str().unwrap_or_default().to_owned()
}

/// A request the target received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The sha256 of its body, in hex.
    pub body_sha256: String,
}

/// A plain HTTP endpoint on loopback, outside the sandbox, playing the
/// servers a deploy script installs onto: it records every request and
/// answers 200.
pub struct Target {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Target {
    pub fn start() -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
                let mut headers = BTreeMap::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
                    }
                }
                let length = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0usize);
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                log.lock().unwrap_or_else(|e| e.into_inner()).push(Received {
                    method,
                    path,
                    body_sha256: sha256_hex(&body),
                });
                let _ = reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
            }
        });
        Target { url, received }
    }

    /// What it has received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A deploy script that sends the artifact to `target`, under the
/// environment's name, and prints what it did.
pub fn deploy_to(target: &Target) -> String {
    format!(
        "#!/bin/sh\nset -e\necho \"deploying build $CUSTODY_BUILD of $CUSTODY_COMMIT to $CUSTODY_ENVIRONMENT\"\n\
         curl -fsS --data-binary @\"$CUSTODY_ARTIFACTS_DIR/dist/app.tar.gz\" \
         \"{}/$CUSTODY_ENVIRONMENT?build=$CUSTODY_BUILD\"\n",
        target.url
    )
}
