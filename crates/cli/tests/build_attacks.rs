//! Attacks on builds and the artifact repository, end to end against a real
//! `custody serve`: a hostile build script reviewed onto main, build outputs
//! that point at the keys, patterns that reach out of the workspace, people
//! who try to store an artifact, blobs altered on disk, and a build taken
//! over by a second worker.

#[macro_use]
mod support;

use std::path::Path;

use custody_store::{BuildOutcome, LeasedBuild, NewArtifact, Store, StoreError};
use serde_json::Value;
use support::builds::{
    blob_file, builder_key, commit_files, custody, finished_build, merge_a_change, pipeline, seed_build, seed_with,
    sha256_hex, stored_blobs, BUILD_SCRIPT, PIPELINE,
};
use support::flow::{open, review, team, try_merge};
use support::hosted::{Backend, Hosted, PROJECT};
use support::{http_send, Server};

/// A merged change whose build runs `script` with `artifacts`: the finished build.
fn build_of(hosted: &Hosted, script: &str, artifacts: &str) -> Value {
    let policy = pipeline("scripts/build.sh", artifacts);
    let (work, _) = seed_with(
        hosted,
        &[(PIPELINE, &policy, false), ("scripts/build.sh", script, true), ("src/app.txt", "version 1\n", false)],
        "feature",
    );
    merge_a_change(hosted, &work);
    finished_build(hosted, 1)
}

fn artifacts_listed(hosted: &Hosted) -> Value {
    custody(hosted, &["artifact", "list", PROJECT, "--json"]).json()
}

fn file_digest(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// What the hostile script tries, each attempt by name; every one must be
/// denied.
const ATTEMPTS: &[&str] = &[
    "read-builder-key",
    "list-keys",
    "read-database",
    "truncate-database",
    "write-blob",
    "write-blob-root",
    "read-other-workspace",
    "list-workspaces-in-tmp",
    "list-host-root",
    "list-host-home",
    "write-usr",
    "network-device",
];

/// A build script that tries to reach what a build must never reach. Each
/// attempt prints `LEAKED:<what>` when it works and `DENIED:<what>` when it
/// does not; then it builds its artifact as a legitimate script would.
///
/// The data directory lies under the host's temporary directory, and the
/// sandbox has a writable /tmp of its own: creating directories on the
/// data directory's path would succeed there, on the sandbox's side only.
/// So writes go only into directories that must already exist, and the
/// test checks the host's side as well.
fn hostile_script(data: &Path, decoy: &Path, home: &str, port: u16, marker: &str) -> String {
    let data = data.display();
    let decoy = decoy.display();
    format!(
        r#"#!/bin/sh
try() {{
  what=$1; shift
  if "$@" >/dev/null 2>&1; then echo "LEAKED:$what"; else echo "DENIED:$what"; fi
}}
try read-builder-key sh -c 'cat {data}/keys/builder* | grep -q PRIVATE'
try list-keys sh -c 'ls {data}/keys | grep -q .'
try read-database sh -c 'head -c 16 {data}/custody.db | grep -q SQLite'
try truncate-database sh -c ': > {data}/custody.db'
try write-blob sh -c 'for d in {data}/blobs/sha256/*/; do echo planted > "$d"planted || exit 1; done; test -e "$d"planted'
try write-blob-root sh -c 'echo planted > {data}/blobs/planted'
try read-other-workspace sh -c 'cat {decoy}/secret.txt | grep -q hunter2'
try list-workspaces-in-tmp sh -c 'ls -a /tmp | grep -q custody-build'
try list-host-root sh -c 'ls -a /root | grep -q .'
try list-host-home sh -c 'ls -a {home} | grep -q .'
try write-usr sh -c 'echo planted > /usr/planted'
try network-device sh -c 'grep -v "^ *lo:" /proc/net/dev | grep -q :'
if [ -x /usr/bin/python3 ]; then
  try api-python3 /usr/bin/python3 -c 'import socket; socket.create_connection(("127.0.0.1", {port}), 3)'
  try postgres-python3 /usr/bin/python3 -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 3)'
fi
if [ -x /usr/bin/bash ]; then
  try api-bash /usr/bin/bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'
fi
if [ -x /usr/bin/curl ]; then
  try api-curl /usr/bin/curl -s -m 3 -o /dev/null http://127.0.0.1:{port}/api/v1/openapi.json
fi
if [ -x /usr/bin/wget ]; then
  try api-wget /usr/bin/wget -q -T 3 -O /dev/null http://127.0.0.1:{port}/api/v1/openapi.json
fi
# Processes meant to outlive the build.
(sleep {marker} >/dev/null 2>&1 &)
nohup sleep {marker} >/dev/null 2>&1 &
if [ -x /usr/bin/setsid ]; then /usr/bin/setsid sleep {marker} >/dev/null 2>&1 & fi
sleep 0.2
if grep -qa -- {marker} /proc/[0-9]*/cmdline; then echo STARTED:survivors; fi
set -e
mkdir -p dist
tar -czf dist/app.tar.gz src
echo done
"#
    )
}

fn a_hostile_build_script_reaches_nothing_but_its_workspace(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let data = hosted.sandbox.path("data");
    // Looks like another job's workspace, in the host's temporary directory.
    let decoy = tempfile::Builder::new()
        .prefix("custody-build-decoy-")
        .tempdir_in(std::env::temp_dir())
        .expect("a decoy workspace");
    std::fs::write(decoy.path().join("secret.txt"), "hunter2\n").expect("the decoy's secret");
    let home = std::env::var("HOME").ok().filter(|h| h.starts_with('/')).unwrap_or_else(|| "/root".into());
    let key = builder_key(&hosted);
    let key_before = file_digest(&key);
    let marker = sleep_marker(1);
    let script = hostile_script(&data, decoy.path(), &home, hosted.server.port(), &marker);

    let build = build_of(&hosted, &script, "[\"dist/*.tar.gz\"]");

    let log = custody(&hosted, &["build", "logs", PROJECT, "1"]).expect_code(0).stdout;
    assert!(!log.contains("LEAKED:"), "the script reached something: {log}");
    for what in ATTEMPTS {
        assert!(log.contains(&format!("DENIED:{what}\n")), "no DENIED:{what} in the log: {log}");
    }
    // However it tried, it reached nothing over the network.
    let network: Vec<&str> = log.lines().filter(|l| l.contains(":api-") || l.contains(":postgres-")).collect();
    assert!(network.iter().all(|l| l.starts_with("DENIED:")), "{network:?}");
    assert_eq!(build["status"], "succeeded", "{build}\n{log}");

    // The key is as it was; the decoy's secret stayed where it was.
    assert_eq!(file_digest(&key), key_before, "the builder key changed");
    assert!(!log.contains("hunter2") && !log.contains("PRIVATE KEY"), "{log}");
    // The database is whole and still answers.
    if backend == Backend::Sqlite {
        let db = std::fs::read(data.join("custody.db")).expect("the database");
        assert!(db.starts_with(b"SQLite format 3\0"), "the database file was overwritten");
    }
    let shown = custody(&hosted, &["build", "show", PROJECT, "1", "--json"]).json();
    assert_eq!(shown["status"], "succeeded", "{shown}");

    // The blob store holds the one legitimate artifact and nothing else.
    let artifacts = build["artifacts"].as_array().expect("artifacts");
    assert_eq!(artifacts.len(), 1, "{build}");
    let digest = artifacts[0]["digest"].as_str().expect("a digest");
    assert_eq!(stored_blobs(&data), vec![blob_file(&data, digest)]);
    assert!(!Path::new("/usr/planted").exists());

    // What it left running died with the sandbox.
    assert!(log.contains("STARTED:survivors\n"), "{log}");
    let survivors = support::flow::eventually(|| processes_with_argument(&marker).is_empty().then_some(()));
    assert!(survivors.is_some(), "processes outlived the build: {:?}", processes_with_argument(&marker));
}

/// A `sleep` argument no other process has: a number of seconds with the
/// test's process id and the time as its fraction.
fn sleep_marker(seed: u32) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}.{}{:09}", 3600 + seed, std::process::id(), nanos)
}

/// The host's processes that have `argument` on their command line.
fn processes_with_argument(argument: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").filter_map(Result::ok) {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).any(|arg| arg == argument.as_bytes()) {
            found.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    found
}

#[test]
fn a_process_on_the_host_is_found_by_its_argument() {
    // The check that nothing outlives a hostile build would see a survivor.
    let marker = sleep_marker(2);
    let mut sleeping = std::process::Command::new("sleep").arg(&marker).spawn().expect("start sleep");
    let seen = support::flow::eventually(|| (!processes_with_argument(&marker).is_empty()).then_some(()));
    let _ = sleeping.kill();
    let _ = sleeping.wait();
    assert!(seen.is_some(), "a running sleep {marker} was not found");
    assert!(processes_with_argument(&marker).is_empty());
}

fn a_build_output_linked_to_the_builder_key_is_refused(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let data = hosted.sandbox.path("data");
    let key = builder_key(&hosted);
    let script = format!("#!/bin/sh\nset -e\nmkdir -p dist\nln -s {} dist/app.tar.gz\n", key.display());

    let build = build_of(&hosted, &script, "[\"dist/*.tar.gz\"]");

    assert_eq!(build["status"], "failed", "{build}");
    let reason = build["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("dist/app.tar.gz") && reason.contains("symbolic link"), "{build}");
    assert_eq!(build["artifacts"], Value::Array(vec![]), "{build}");
    assert_eq!(artifacts_listed(&hosted), Value::Array(vec![]));
    assert_eq!(stored_blobs(&data), Vec::<std::path::PathBuf>::new());
}

fn a_build_output_directory_linked_to_the_keys_is_not_followed(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let data = hosted.sandbox.path("data");
    let script = format!("#!/bin/sh\nset -e\nln -s {} dist\n", data.join("keys").display());

    let build = build_of(&hosted, &script, "[\"dist/*\"]");

    assert_eq!(build["status"], "failed", "{build}");
    let reason = build["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("symbolic link") || reason.contains("no file matches"), "{build}");
    assert_eq!(build["artifacts"], Value::Array(vec![]), "{build}");
    assert_eq!(artifacts_listed(&hosted), Value::Array(vec![]));
    assert_eq!(stored_blobs(&data), Vec::<std::path::PathBuf>::new());
}

fn an_artifact_pattern_outside_the_workspace_fails_the_build(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let data = hosted.sandbox.path("data");
    let policy = pipeline("scripts/build.sh", "[\"../keys/*\"]");
    let (work, base) = seed_with(
        &hosted,
        &[
            (PIPELINE, &policy, false),
            ("scripts/build.sh", "#!/bin/sh\necho ran\n", true),
            ("src/app.txt", "1\n", false),
        ],
        "feature",
    );

    // The gate refuses to merge into a branch whose pipeline reaches out.
    commit_files(&work, &[("src/app.txt", "version 2\n", false)], "Version 2");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Version 2");
    review(&hosted, "bob", number, "--approve");
    let refused = try_merge(&hosted, "alice", number);
    assert_eq!(refused.code(), Some(1), "{refused:#?}");
    assert!(refused.stderr.contains("../keys/*") && refused.stderr.contains("pipeline"), "{refused:#?}");

    // A build of that commit (main got it without a merge) fails the same way.
    let number = queue_build(&hosted, &base);
    let build = finished_build(&hosted, number);

    assert_eq!(build["status"], "failed", "{build}");
    let reason = build["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("../keys/*") && reason.contains("fix the pipeline file"), "{build}");
    assert_eq!(build["artifacts"], Value::Array(vec![]), "{build}");
    // The script never ran: nothing of it is in the log.
    let log = custody(&hosted, &["build", "logs", PROJECT, &number.to_string()]).expect_code(0).stdout;
    assert!(!log.contains("ran"), "{log}");
    assert_eq!(artifacts_listed(&hosted), Value::Array(vec![]));
    assert_eq!(stored_blobs(&data), Vec::<std::path::PathBuf>::new());
}

/// Every way a person might try to put bytes into the artifact repository
/// over HTTP: (method, path).
fn store_attempts(digest: &str, planted: &str) -> Vec<(&'static str, String)> {
    let project = format!("/api/v1/projects/{PROJECT}");
    let mut paths = vec![
        format!("{project}/artifacts"),
        format!("{project}/builds"),
        format!("{project}/builds/1"),
        format!("{project}/builds/1/artifacts"),
        format!("{project}/builds/1/log"),
        "/api/v1/artifacts".to_owned(),
        "/api/v1/blobs".to_owned(),
        format!("/api/v1/blobs/{planted}"),
        "/api/v1/artifacts/verify".to_owned(),
    ];
    for d in [digest, planted] {
        paths.extend([
            format!("{project}/artifacts/{d}"),
            format!("{project}/artifacts/{d}/content"),
            format!("{project}/artifacts/{d}/provenance"),
            format!("/api/v1/artifacts/{d}"),
        ]);
    }
    let mut attempts = Vec::new();
    for method in ["POST", "PUT", "PATCH", "DELETE"] {
        for path in &paths {
            attempts.push((method, path.clone()));
        }
    }
    attempts
}

fn no_person_can_store_an_artifact(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let data = hosted.sandbox.path("data");
    let build = build_of(&hosted, BUILD_SCRIPT, "[\"dist/*.tar.gz\"]");
    assert_eq!(build["status"], "succeeded", "{build}");
    let digest = build["artifacts"][0]["digest"].as_str().expect("a digest").to_owned();
    let blobs_before = stored_blobs(&data);
    let listed_before = artifacts_listed(&hosted);
    assert_eq!(blobs_before.len(), 1, "{blobs_before:?}");

    let body = b"not built by custody";
    let planted = sha256_hex(body);
    let not_404_or_405 = |server: &Server, token: &str| -> Vec<String> {
        let bearer = format!("Bearer {token}");
        let mut wrong = Vec::new();
        for (method, path) in store_attempts(&digest, &planted) {
            let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/octet-stream")];
            let answer = http_send(&server.url, method, &path, &headers, Some(body));
            if !matches!(answer.status, 404 | 405) {
                wrong.push(format!("{method} {path}: {} {}", answer.status, answer.body));
            }
        }
        wrong
    };
    // The requests reach the routes they name: the same client reads the
    // artifact, and a POST to a route that takes one gets past the router.
    let bearer = format!("Bearer {}", hosted.alice);
    let content = format!("/api/v1/projects/{PROJECT}/artifacts/{digest}/content");
    let read = http_send(&hosted.server.url, "GET", &content, &[("Authorization", &bearer)], None);
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(
        read.header("content-length"),
        Some(std::fs::metadata(&blobs_before[0]).expect("blob").len().to_string().as_str())
    );
    let posted = http_send(
        &hosted.server.url,
        "POST",
        &format!("/api/v1/projects/{PROJECT}/changes"),
        &[("Authorization", &bearer), ("Content-Type", "application/json")],
        Some(b"{}"),
    );
    assert!(!matches!(posted.status, 404 | 405) && posted.status >= 400, "{posted:?}");

    for (who, token) in [("admin", hosted.admin.clone()), ("alice", hosted.alice.clone())] {
        let wrong = not_404_or_405(&hosted.server, &token);
        assert!(wrong.is_empty(), "{who} got answers other than 404 or 405: {wrong:#?}");
    }

    // Nor through git: a ref under refs/custody/ is the server's, not a person's.
    let work = hosted.workspace("pusher", "alice", &hosted.alice);
    std::fs::write(work.dir.join("app.tar.gz"), body).expect("write the planted file");
    work.ok(&["add", "app.tar.gz"]);
    work.ok(&["commit", "-q", "-m", "Planted"]);
    work.refused(&["origin", "HEAD:refs/custody/artifacts/x"]);
    assert_eq!(hosted.server_ref("refs/custody/artifacts/x"), None);
    work.ok(&["remote", "set-url", "origin", &hosted.url("admin", &hosted.admin)]);
    work.refused(&["origin", "HEAD:refs/custody/artifacts/x"]);
    assert_eq!(hosted.server_ref("refs/custody/artifacts/x"), None);

    // Nor through the command line: there is no such command.
    let file = hosted.sandbox.path("planted.tar.gz");
    std::fs::write(&file, body).expect("write the planted file");
    let file = file.to_str().expect("UTF-8");
    for verb in ["upload", "put", "push", "add", "create", "store"] {
        let ran = custody(&hosted, &["artifact", verb, PROJECT, file]);
        assert_eq!(ran.code(), Some(2), "custody artifact {verb}: {ran:#?}");
        let ran = hosted.as_admin(&["artifact", verb, PROJECT, file]);
        assert_eq!(ran.code(), Some(2), "custody artifact {verb} as the admin: {ran:#?}");
    }

    assert_eq!(stored_blobs(&data), blobs_before);
    assert!(!blob_file(&data, &planted).exists());
    assert_eq!(artifacts_listed(&hosted), listed_before);
}

/// `custody artifact verify ARGS` as the admin (an overseer).
fn verify(hosted: &Hosted, args: &[&str]) -> support::Run {
    let mut all = vec!["artifact", "verify"];
    all.extend(args);
    hosted.as_admin(&all)
}

/// `custody artifact get` into a fresh file that must not appear.
#[track_caller]
fn refused_download(hosted: &Hosted, digest: &str, name: &str) -> support::Run {
    let output = hosted.sandbox.path(name);
    let got = custody(hosted, &["artifact", "get", PROJECT, digest, "-o", output.to_str().expect("UTF-8")]);
    assert!(!output.exists(), "a damaged artifact was written: {got:#?}");
    got
}

fn an_altered_blob_is_never_handed_out_and_is_reported(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let data = hosted.sandbox.path("data");
    let build = build_of(&hosted, BUILD_SCRIPT, "[\"dist/*.tar.gz\"]");
    assert_eq!(build["status"], "succeeded", "{build}");
    let digest = build["artifacts"][0]["digest"].as_str().expect("a digest").to_owned();
    let blob = blob_file(&data, &digest);
    let original = std::fs::read(&blob).expect("the stored blob");
    assert_eq!(sha256_hex(&original), digest);
    verify(&hosted, &["--all"]).expect_code(0);
    // Re-hashing the store is for overseers; a writer is refused.
    let refused = custody(&hosted, &["artifact", "verify", "--all"]);
    assert_eq!(refused.code(), Some(1), "{refused:#?}");
    assert!(refused.stderr.contains("only admins and auditors"), "{refused:#?}");
    assert!(refused.stdout.is_empty(), "{refused:#?}");

    let write = |bytes: &[u8]| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).expect("make it writable");
        std::fs::write(&blob, bytes).expect("alter the blob");
    };
    let same_length: Vec<u8> = original.iter().map(|b| b ^ 0x5a).collect();
    let mut longer = original.clone();
    longer.extend_from_slice(b"appended");
    for (label, bytes) in [("same length", same_length), ("longer", longer)] {
        write(&bytes);
        let got = refused_download(&hosted, &digest, "app.tar.gz");
        assert_eq!(got.code(), Some(1), "{label}: {got:#?}");
        assert!(got.stderr.contains(&digest), "{label}: {got:#?}");
        // A plain HTTP client never receives the damaged file whole: the
        // server holds its end back until the hash is checked.
        let saved = hosted.sandbox.path("curl-download");
        let curl = std::process::Command::new("curl")
            .args([
                "-sS",
                "-o",
                saved.to_str().expect("UTF-8"),
                "-H",
                &format!("Authorization: Bearer {}", hosted.alice),
            ])
            .arg(format!(
                "http://127.0.0.1:{}/api/v1/projects/{PROJECT}/artifacts/sha256:{digest}/content",
                hosted.server.port()
            ))
            .output()
            .expect("curl runs");
        assert!(!curl.status.success(), "{label}: curl got it all: {curl:?}");
        let received = std::fs::read(&saved).unwrap_or_default();
        assert!(received.len() < bytes.len(), "{label}: {} of {} bytes", received.len(), bytes.len());

        let all = verify(&hosted, &["--all"]);
        assert_eq!(all.code(), Some(1), "{label}: {all:#?}");
        let line = format!("DAMAGED    sha256:{digest}: its bytes hash to sha256:{}", sha256_hex(&bytes));
        assert!(all.stdout.contains(&line), "{label}: {all:#?}");
        assert!(all.stderr.contains(&digest), "{label}: {all:#?}");
        let one = verify(&hosted, &[&digest]);
        assert_eq!(one.code(), Some(1), "{label}: {one:#?}");
        assert!(one.stdout.contains(&line), "{label}: {one:#?}");
        let checks = verify(&hosted, &[&digest, "--json"]);
        assert_eq!(checks.code(), Some(1), "{label}: {checks:#?}");
        let checks: Value = serde_json::from_str(checks.stdout.trim()).expect("JSON");
        assert_eq!(checks[0]["state"], "damaged", "{label}: {checks}");
        assert_eq!(checks[0]["digest"], digest.as_str(), "{label}: {checks}");
    }

    std::fs::remove_file(&blob).expect("delete the blob");
    let got = refused_download(&hosted, &digest, "app.tar.gz");
    assert_ne!(got.code(), Some(0), "{got:#?}");
    assert!(got.stderr.contains(&digest), "{got:#?}");
    for args in [&["--all"][..], &[digest.as_str()][..]] {
        let checked = verify(&hosted, args);
        assert_eq!(checked.code(), Some(1), "{checked:#?}");
        assert!(checked.stdout.contains(&format!("MISSING    sha256:{digest}")), "{checked:#?}");
    }
}

/// Queues another build of `commit` on main, as the store lets the server
/// do: its number.
fn queue_build(hosted: &Hosted, commit: &str) -> i64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let store = runtime.block_on(Store::open(&database_url(hosted), ledger_secrets(hosted))).expect("open the store");
    let project = custody_domain::ProjectName::parse(PROJECT).expect("a project name");
    let number = runtime.block_on(store.queue_build(&project, commit, "main")).expect("queue a build");
    runtime.block_on(store.close());
    number
}

fn a_rebuild_onto_a_damaged_blob_fails_instead_of_vouching_for_it(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let data = hosted.sandbox.path("data");
    // A reproducible build: the same commit makes the same bytes.
    let script = "#!/bin/sh\nset -e\nmkdir -p dist\ncp src/app.txt dist/app.txt\n";
    let policy = pipeline("scripts/build.sh", "[\"dist/*\"]");
    let work = seed_build(&hosted, &policy, script);
    let commit = merge_a_change(&hosted, &work);
    let first = finished_build(&hosted, 1);
    assert_eq!(first["status"], "succeeded", "{first}");
    let digest = first["artifacts"][0]["digest"].as_str().expect("a digest").to_owned();
    assert_eq!(digest, sha256_hex(b"version 2\n"));
    let blob = blob_file(&data, &digest);
    std::fs::write(&blob, b"version 3\n").expect("alter the blob");

    // Building the same bytes again does not vouch for the damaged copy.
    let second = finished_build(&hosted, queue_build(&hosted, &commit));
    assert_eq!(second["status"], "error", "{second}");
    let reason = second["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("dist/app.txt") && reason.contains(&digest) && reason.contains("damaged"), "{second}");
    assert_eq!(second["artifacts"], Value::Array(vec![]), "{second}");
    let listed = artifacts_listed(&hosted);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["build"], 1, "{listed}");
    assert_eq!(std::fs::read(&blob).expect("the blob"), b"version 3\n", "the damaged blob is kept for inspection");

    // Once the damaged blob is removed, a build stores the bytes again.
    std::fs::remove_file(&blob).expect("remove the damaged blob");
    let third = finished_build(&hosted, queue_build(&hosted, &commit));
    assert_eq!(third["status"], "succeeded", "{third}");
    assert_eq!(third["artifacts"][0]["digest"], digest.as_str(), "{third}");
    verify(&hosted, &[&digest]).expect_code(0);
    let output = hosted.sandbox.path("app.txt");
    custody(&hosted, &["artifact", "get", PROJECT, &digest, "-o", output.to_str().expect("UTF-8")]).expect_code(0);
    assert_eq!(std::fs::read(&output).expect("the download"), b"version 2\n");
}

/// `custody worker` on the instance's data directory and database, stopped
/// when dropped.
fn worker(hosted: &Hosted) -> Server {
    let mut command = hosted.sandbox.as_user("worker");
    command.arg("worker").arg("--data-dir").arg(hosted.sandbox.path("data"));
    if let Some(database) = &hosted.database {
        command.args(["--database-url", &database.url]);
    }
    Server::start_announced(command, "worker ")
}

/// The instance's event key and anchor, which a store opened beside the
/// server's shares, as a second process of the instance would.
fn ledger_secrets(hosted: &Hosted) -> custody_store::LedgerSecrets {
    custody_server::instance::DataDir::new(hosted.sandbox.path("data")).ledger_secrets().expect("the instance's keys")
}

fn database_url(hosted: &Hosted) -> String {
    match &hosted.database {
        Some(database) => database.url.clone(),
        None => format!("sqlite://{}", hosted.sandbox.path("data").join("custody.db").display()),
    }
}

fn a_build_taken_over_by_another_worker_stores_its_artifacts_once(backend: Backend) {
    let Some(hosted) = Hosted::without_builders(backend) else { return };
    hosted.add_user("bob", "write");
    let data = hosted.sandbox.path("data");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let store = runtime.block_on(Store::open(&database_url(&hosted), ledger_secrets(&hosted))).expect("open the store");

    // A merge queues the build; no builder runs in the server.
    let policy = pipeline("scripts/build.sh", "[\"dist/*.tar.gz\"]");
    let work = seed_build(&hosted, &policy, BUILD_SCRIPT);
    merge_a_change(&hosted, &work);
    let queued = custody(&hosted, &["build", "show", PROJECT, "1", "--json"]).json();
    assert_eq!(queued["status"], "queued", "{queued}");

    // A first worker takes it and goes silent: its lease runs out.
    let lost = runtime.block_on(store.lease_build("worker-that-died", 200)).expect("lease").expect("a build");
    assert_eq!((lost.number, lost.attempt), (1, 1));
    std::thread::sleep(std::time::Duration::from_millis(400));

    // A real worker takes it over and finishes it.
    let mut second = worker(&hosted);
    let build = finished_build(&hosted, 1);
    second.stop();
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["attempt"], 2, "{build}");
    let artifacts = build["artifacts"].as_array().expect("artifacts").clone();
    assert_eq!(artifacts.len(), 1, "{build}");
    let digest = artifacts[0]["digest"].as_str().expect("a digest").to_owned();
    let log = custody(&hosted, &["build", "logs", PROJECT, "1"]).expect_code(0).stdout;
    assert!(log.contains("--- attempt 2 on ") && log.contains("(worker-that-died) stopped answering"), "{log}");

    // The first worker comes back with its own result: nothing of it is taken.
    let stale = BuildOutcome {
        status: custody_domain::status::BuildStatus::Succeeded,
        artifacts: vec![NewArtifact { name: "dist/app.tar.gz".into(), digest: sha256_hex(b"stale"), size: 5 }],
        ..BuildOutcome::default()
    };
    let refused = runtime.block_on(store.finish_build(&lost, stale.clone()));
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");
    let refused = runtime.block_on(store.append_build_log(&lost, "LATE LINE\n".into()));
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");

    // The winner recording its result a second time adds nothing either.
    let winner = LeasedBuild {
        id: lost.id,
        project: lost.project.clone(),
        number: 1,
        commit: lost.commit.clone(),
        branch: lost.branch.clone(),
        attempt: 2,
        worker: build["worker"].as_str().expect("the worker").to_owned(),
        started_at: lost.started_at,
    };
    let again = BuildOutcome {
        status: custody_domain::status::BuildStatus::Succeeded,
        artifacts: vec![NewArtifact { name: "dist/app.tar.gz".into(), digest: digest.clone(), size: 1 }],
        ..BuildOutcome::default()
    };
    let refused = runtime.block_on(store.finish_build(&winner, again));
    assert!(matches!(refused, Err(StoreError::Conflict(_))), "{refused:?}");

    let project = custody_domain::ProjectName::parse(PROJECT).expect("a project name");
    let attempts = runtime.block_on(store.build_attempts(&project, 1)).expect("the attempts");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0], "worker-that-died");
    assert_eq!(attempts[1], winner.worker);
    let listed = artifacts_listed(&hosted);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["digest"], digest.as_str(), "{listed}");
    assert_eq!(
        custody(&hosted, &["build", "show", PROJECT, "1", "--json"]).json()["artifacts"],
        Value::Array(artifacts)
    );
    assert_eq!(stored_blobs(&data), vec![blob_file(&data, &digest)]);
    let log = custody(&hosted, &["build", "logs", PROJECT, "1"]).expect_code(0).stdout;
    assert!(!log.contains("LATE LINE"), "{log}");
    let finished = hosted.audit_events("build.finish");
    assert_eq!(finished.len(), 1, "{finished:?}");
    runtime.block_on(store.close());
}

on_both_backends! {
    a_hostile_build_script_reaches_nothing_but_its_workspace,
    a_build_output_linked_to_the_builder_key_is_refused,
    a_build_output_directory_linked_to_the_keys_is_not_followed,
    an_artifact_pattern_outside_the_workspace_fails_the_build,
    no_person_can_store_an_artifact,
    an_altered_blob_is_never_handed_out_and_is_reported,
    a_build_taken_over_by_another_worker_stores_its_artifacts_once,
    a_commit_that_writes_through_a_symlink_cannot_reach_the_host,
    a_rebuild_onto_a_damaged_blob_fails_instead_of_vouching_for_it,
}

/// Writes a tree object as given, without git's checks: `(mode, name, id)`.
fn literal_tree(work: &support::hosted::Workspace<'_>, entries: &[(&str, &str, &str)]) -> String {
    let mut bytes = Vec::new();
    for (mode, name, id) in entries {
        bytes.extend_from_slice(format!("{mode} {name}\0").as_bytes());
        let raw: Vec<u8> =
            (0..id.len()).step_by(2).map(|i| u8::from_str_radix(&id[i..i + 2], 16).expect("hex")).collect();
        bytes.extend_from_slice(&raw);
    }
    let file = work.dir.join("tree.bin");
    std::fs::write(&file, bytes).expect("write the tree");
    let id = work.ok(&["hash-object", "-t", "tree", "-w", "--literally", "tree.bin"]);
    std::fs::remove_file(file).expect("remove the tree file");
    id
}

/// Writes a blob: its id.
fn blob(work: &support::hosted::Workspace<'_>, name: &str, content: &str) -> String {
    std::fs::write(work.dir.join(name), content).expect("write a blob");
    let id = work.ok(&["hash-object", "-w", name]);
    std::fs::remove_file(work.dir.join(name)).expect("remove the blob file");
    id
}

fn a_commit_that_writes_through_a_symlink_cannot_reach_the_host(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let data = hosted.sandbox.path("data");
    let outside = hosted.sandbox.path("outside");
    std::fs::create_dir_all(&outside).expect("a directory outside the workspace");

    // A tree git itself would never make: `dist` is a symbolic link to a
    // directory of the host, and also a directory holding `planted.txt`.
    // Checked out naively, the file lands where the link points.
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let policy = pipeline("scripts/build.sh", "[\"dist/*\"]");
    let policy = blob(&work, "policy", &policy);
    let script = blob(&work, "script", "#!/bin/sh\necho ran\n");
    let planted = blob(&work, "planted", "planted\n");
    let link = blob(&work, "link", &outside.display().to_string());
    let custody_dir = literal_tree(&work, &[("100644", "pipeline.toml", &policy)]);
    let scripts = literal_tree(&work, &[("100755", "build.sh", &script)]);
    let dist = literal_tree(&work, &[("100644", "planted.txt", &planted)]);
    let root = literal_tree(
        &work,
        &[
            ("40000", ".custody", &custody_dir),
            ("120000", "dist", &link),
            ("40000", "dist", &dist),
            ("40000", "scripts", &scripts),
        ],
    );
    let commit = work.ok(&["commit-tree", &root, "-m", "Writes through a link"]);
    let pushed = work.git(&["push", "-q", "origin", &format!("{commit}:refs/heads/seed")]);

    // The server checks what it receives and refuses it.
    assert_ne!(pushed.code(), Some(0), "{pushed:#?}");
    assert!(pushed.stderr.contains("duplicateEntries"), "{pushed:#?}");
    assert!(!hosted.server_has(&commit), "{pushed:#?}");

    // Were it in the repository anyway (put there behind the server's back),
    // the builder's checkout would not write through the link either.
    copy_loose_objects(&work.dir.join(".git").join("objects"), &hosted.bare_path().join("objects"));
    assert!(hosted.server_has(&commit));
    hosted.bare(&["update-ref", "refs/heads/main", &commit]).expect_code(0);
    let number = queue_build(&hosted, &commit);
    let build = finished_build(&hosted, number);
    // Whatever tar makes of the two `dist` entries (it refuses the pair, or
    // keeps the directory and drops the link), nothing lands outside the
    // workspace, and nothing is collected through a link.
    let planted: Vec<_> = std::fs::read_dir(&outside).expect("the outside directory").collect();
    assert!(planted.is_empty(), "a file was written outside the workspace: {planted:?}");
    match build["status"].as_str() {
        Some("error") => {
            assert!(build["reason"].as_str().is_some_and(|r| r.contains("tar")), "{build}");
            assert_eq!(build["artifacts"], Value::Array(vec![]), "{build}");
            let log = custody(&hosted, &["build", "logs", PROJECT, &number.to_string()]).expect_code(0).stdout;
            assert!(!log.contains("ran"), "the script ran on a broken checkout: {log}");
            assert_eq!(stored_blobs(&data), Vec::<std::path::PathBuf>::new());
        }
        Some("succeeded") => {
            // Only the tree's own file, from a real directory in the workspace.
            let artifacts = build["artifacts"].as_array().expect("artifacts");
            assert_eq!(artifacts.len(), 1, "{build}");
            assert_eq!(artifacts[0]["name"], "dist/planted.txt", "{build}");
            assert_eq!(artifacts[0]["digest"], sha256_hex(b"planted\n").as_str(), "{build}");
        }
        other => panic!("unexpected build status {other:?}: {build}"),
    }
}

/// Copies the loose objects of one repository into another.
fn copy_loose_objects(from: &Path, to: &Path) {
    for dir in std::fs::read_dir(from).expect("the objects").filter_map(Result::ok) {
        let name = dir.file_name();
        if name.len() != 2 {
            continue;
        }
        std::fs::create_dir_all(to.join(&name)).expect("an objects directory");
        for object in std::fs::read_dir(dir.path()).expect("an objects directory").filter_map(Result::ok) {
            let target = to.join(&name).join(object.file_name());
            if !target.exists() {
                std::fs::copy(object.path(), target).expect("copy an object");
            }
        }
    }
}

/// How long each `/healthz` took while `busy` ran, polled every 20 ms.
fn health_latencies_while(hosted: &Hosted, busy: impl FnOnce()) -> Vec<std::time::Duration> {
    use std::io::{Read as _, Write as _};
    let port = hosted.server.port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut taken = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the server listens");
                stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).unwrap();
                taken.push(started.elapsed());
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            taken
        })
    };
    busy();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.join().expect("the poller")
}

#[test]
fn a_fork_bomb_and_a_memory_hog_fail_their_builds_while_the_server_keeps_answering() {
    let hosted = team(Backend::Sqlite).expect("SQLite is never skipped");
    // Each keeps at it until its limit stops it or its timeout does.
    let script = "#!/bin/sh\ncase \"$(cat src/app.txt)\" in\n\
                  bomb*) bomb() { bomb | bomb; }; while :; do bomb; done ;;\n\
                  hog*) while :; do python3 -c \"b = b'x' * (1 << 30)\"; done ;;\n\
                  esac\nmkdir -p dist\ntar -czf dist/app.tar.gz src\n";
    let policy = format!(
        "{}timeout = \"8s\"\nmemory = \"512MiB\"\nprocesses = 64\n",
        pipeline("scripts/build.sh", "[\"dist/app.tar.gz\"]")
    );
    let (work, _) = seed_with(
        &hosted,
        &[(PIPELINE, &policy, false), ("scripts/build.sh", script, true), ("src/app.txt", "version 1\n", false)],
        "feature",
    );
    let mut latencies = Vec::new();
    for (number, (content, limit)) in
        [("bomb\n", "its limit of 64 processes"), ("hog\n", "its memory limit of 512 MiB")].into_iter().enumerate()
    {
        commit_files(&work, &[("src/app.txt", content, false)], content.trim());
        work.ok(&["push", "-q", "-f", "origin", "HEAD:refs/heads/feature"]);
        let change = open(&hosted, "alice", "feature", content.trim());
        review(&hosted, "bob", change, "--approve");
        support::flow::merge(&hosted, "alice", change);
        let mut build = Value::Null;
        latencies.extend(health_latencies_while(&hosted, || build = finished_build(&hosted, number as i64 + 1)));
        assert_eq!(build["status"], "failed", "{build}");
        let reason = build["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(limit), "{content}: {build}");
        let log = custody(&hosted, &["build", "logs", PROJECT, &(number + 1).to_string()]).expect_code(0);
        assert!(log.stdout.contains(&format!("custody: the job ran into {limit}")), "{log:#?}");
    }
    // The server kept answering throughout.
    latencies.sort();
    let p95 = latencies[latencies.len() * 95 / 100];
    println!("/healthz during the builds: {} polls, p95 {p95:?}, max {:?}", latencies.len(), latencies.last());
    assert!(latencies.len() >= 20, "{latencies:?}");
    assert!(p95 < std::time::Duration::from_millis(100), "{latencies:?}");
    assert!(latencies.last() < Some(&std::time::Duration::from_millis(500)), "{latencies:?}");
}
