//! What the build and artifact stories share: a pipeline committed to main,
//! a change merged to start a build, waiting for it, and a look at the
//! instance's data directory (its builder key and its blob files).

use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::flow::{merge, open, review};
use super::hosted::{Hosted, Workspace, PROJECT};
use super::Run;

pub const PIPELINE: &str = ".custody/pipeline.toml";

/// A build script that packs `src/` into `dist/app.tar.gz`.
pub const BUILD_SCRIPT: &str =
    "#!/bin/sh\nset -e\nmkdir -p dist\ntar -czf dist/app.tar.gz src\necho built $CUSTODY_PROJECT at $CUSTODY_COMMIT\n";

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex_of(&Sha256::digest(bytes))
}

/// The bytes a hex string spells.
pub fn bytes_of_hex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect()
}

pub fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes files (path, content, executable) and commits them: the commit.
pub fn commit_files(work: &Workspace<'_>, files: &[(&str, &str, bool)], message: &str) -> String {
    for (path, content, executable) in files {
        let full = work.dir.join(path);
        std::fs::create_dir_all(full.parent().expect("a parent")).expect("make the directory");
        std::fs::write(&full, content).expect("write a file");
        if *executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        work.ok(&["add", path]);
    }
    work.ok(&["commit", "-q", "-m", message]);
    work.ok(&["rev-parse", "HEAD"])
}

/// Puts `files` on main as its first commit (standing in for an earlier
/// reviewed merge, like `Hosted::seed_main`), then checks out `branch`.
pub fn seed_with<'a>(hosted: &'a Hosted, files: &[(&str, &str, bool)], branch: &str) -> (Workspace<'a>, String) {
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let base = commit_files(&work, files, "Base with a pipeline");
    work.ok(&["push", "-q", "origin", "HEAD:refs/heads/seed"]);
    hosted.bare(&["update-ref", "refs/heads/main", &base]).expect_code(0);
    work.ok(&["checkout", "-q", "-b", branch]);
    (work, base)
}

/// main with a pipeline that builds `dist/*` with [`BUILD_SCRIPT`]:
/// alice's workspace (on a branch of its own) and main's commit.
pub fn seed_building(hosted: &Hosted) -> (Workspace<'_>, String) {
    let policy = pipeline("scripts/build.sh", "[\"dist/*\"]");
    seed_with(hosted, &[(PIPELINE, &policy, false), ("scripts/build.sh", BUILD_SCRIPT, true)], "unused")
}

/// A pipeline file: one approval, the `build` command and the `artifacts`
/// (a TOML array, as written).
/// main with `policy` as its pipeline file, `script` as `scripts/build.sh`
/// and `src/app.txt`; alice's workspace on a new branch `feature`.
pub fn seed_build<'a>(hosted: &'a Hosted, policy: &str, script: &str) -> Workspace<'a> {
    let files = [(PIPELINE, policy, false), ("scripts/build.sh", script, true), ("src/app.txt", "version 1\n", false)];
    seed_with(hosted, &files, "feature").0
}

pub fn pipeline(build: &str, artifacts: &str) -> String {
    format!(
        "[review]\napprovals = 1\n[pipeline]\nowners = \"platform\"\nbuild = \"{build}\"\nartifacts = {artifacts}\n"
    )
}

/// `custody build ARGS` / `custody artifact ARGS` as alice.
pub fn custody(hosted: &Hosted, args: &[&str]) -> Run {
    hosted.run_as("alice", args)
}

/// Waits (up to 60 s) for build `number` to finish: the build.
#[track_caller]
pub fn finished_build(hosted: &Hosted, number: i64) -> Value {
    for _ in 0..600 {
        let shown = custody(hosted, &["build", "show", PROJECT, &number.to_string(), "--json"]);
        if shown.code() == Some(0) {
            let build = shown.json();
            if !matches!(build["status"].as_str(), Some("queued" | "running")) {
                return build;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("build {number} did not finish: {:#?}", custody(hosted, &["build", "show", PROJECT, &number.to_string()]))
}

/// alice's change of `src/app.txt` on the checked-out branch `feature`,
/// approved by bob and merged by alice: the merge commit.
pub fn merge_a_change(hosted: &Hosted, work: &Workspace<'_>) -> String {
    commit_files(work, &[("src/app.txt", "version 2\n", false)], "Version 2");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(hosted, "alice", "feature", "Version 2");
    review(hosted, "bob", number, "--approve");
    merge(hosted, "alice", number)
}

/// The builder's private key file in the instance's data directory.
pub fn builder_key(hosted: &Hosted) -> PathBuf {
    service_key(hosted, "builder")
}

/// The private key file of a service (`builder`, `deployer`, …).
pub fn service_key(hosted: &Hosted, role: &str) -> PathBuf {
    let keys = hosted.sandbox.path("data").join("keys");
    let found = std::fs::read_dir(&keys)
        .expect("the keys directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(role)));
    found.unwrap_or_else(|| panic!("no {role} key in {}", keys.display()))
}

/// Every file in the data directory's blob store, sorted, but the instance marker.
pub fn stored_blobs(data: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    // The instance's marker lives beside the blobs and is not one.
    let marker = data.join("blobs").join("instance");
    let mut stack = vec![data.join("blobs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().filter_map(Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            } else if entry.path() != marker {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Where the local blob store keeps the blob of `digest` (hex):
/// `blobs/sha256/<first 2 hex>/<64 hex>`.
pub fn blob_file(data: &Path, digest: &str) -> PathBuf {
    data.join("blobs").join("sha256").join(&digest[..2]).join(digest)
}
