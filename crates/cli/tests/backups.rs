//! Backups and restores: a backup taken while changes merge and build
//! restores into a new directory whose ledger, blobs and refs agree; keys
//! travel only in a passphrase-sealed escrow whose every export the ledger
//! records; an older backup restored over a newer instance is recorded, and
//! a watcher sees exactly which events were lost.

mod support;

use std::path::Path;

use serde_json::Value;
use support::builds::{blob_file, commit_files, seed_building, seed_with};
use support::flow::*;
use support::hosted::*;
use support::*;

const PASSPHRASE: &str = "a passphrase kept in the vault";

/// `custody ARGS` on the instance's host, with the escrow passphrase set.
fn on_host(hosted: &Hosted, args: &[&str]) -> Run {
    on_host_with(hosted, &[], args)
}

/// [`on_host`] with `env` set besides.
fn on_host_with(hosted: &Hosted, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut command = hosted.sandbox.as_user("operator");
    command.env("CUSTODY_ESCROW_PASSPHRASE", PASSPHRASE).envs(env.iter().copied()).args(args);
    run(command)
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// Waits (up to two minutes) until every build has finished, and returns them.
fn all_builds_finished(hosted: &Hosted, at_least: usize) -> Vec<Value> {
    for _ in 0..1200 {
        let builds = hosted.run_as("alice", &["build", "list", PROJECT, "--json"]).json();
        let builds = builds.as_array().cloned().unwrap_or_default();
        if builds.len() >= at_least
            && builds.iter().all(|b| !matches!(b["status"].as_str(), Some("queued" | "running")))
        {
            return builds;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the builds did not finish: {:#?}", hosted.run_as("alice", &["build", "list", PROJECT]))
}

#[test]
fn a_backup_taken_while_changes_merge_restores_into_a_new_directory_whose_ledger_blobs_and_refs_agree() {
    backup_under_load_restores(Backend::Sqlite, false);
}

#[test]
fn a_backup_on_postgresql_with_artifacts_in_s3_restores_into_an_empty_database_and_rehashes_the_bucket() {
    backup_under_load_restores(Backend::Postgres, true);
}

/// The seed's story merges and builds while a backup is taken; the backup
/// restores into a new directory (and, on PostgreSQL, an empty database)
/// whose ledger, refs and blobs agree with its records.
fn backup_under_load_restores(backend: Backend, on_s3: bool) {
    let moto = on_s3.then(custody_blobs::testing::moto).flatten();
    let mut vars = Vec::new();
    if let Some(moto) = &moto {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(moto.create_bucket("artifacts"));
        vars = moto.vars();
        vars.push(("CUSTODY_BLOB_STORE".to_owned(), "s3://artifacts/custody".to_owned()));
    }
    let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let Some(hosted) = Hosted::on_with(backend, &env) else { return };
    hosted.add_user("bob", "write");
    let (work, base) = seed_building(&hosted);
    merge_part(&hosted, &work, &base, 0);
    assert_eq!(all_builds_finished(&hosted, 1)[0]["status"], "succeeded");

    // Changes keep merging (and building) while the backup is taken.
    let data = hosted.sandbox.path("data");
    let taken = hosted.sandbox.path("backup");
    let (data_arg, taken_arg) = (path_arg(&data), path_arg(&taken));
    let backup = std::thread::scope(|scope| {
        let load = scope.spawn(|| (1..7).map(|i| merge_part(&hosted, &work, &base, i)).collect::<Vec<_>>());
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut args = vec!["backup", "--data-dir", &data_arg, "--to", &taken_arg, "--json"];
        if let Some(database) = &hosted.database {
            args.extend(["--database-url", &database.url]);
        }
        let backup = on_host_with(&hosted, &env, &args);
        load.join().expect("the load ran");
        backup
    });
    let manifest = backup.json();
    let builds = all_builds_finished(&hosted, 7);
    assert!(builds.iter().all(|b| b["status"] == "succeeded"), "{builds:#?}");
    assert!(manifest["blobs"].as_array().is_some_and(|b| !b.is_empty()), "{manifest}");
    assert_eq!(manifest["blobs_copied"], !on_s3, "{manifest}");
    // No key is in a backup.
    let mut files = Vec::new();
    collect_files(&taken, &mut files);
    assert!(files.iter().all(|f| !f.contains("keys") && !f.ends_with(".pem") && !f.ends_with(".key")), "{files:?}");

    // The keys travel in an escrow, whose export the ledger records.
    let escrow = hosted.sandbox.path("escrow.json");
    let escrow_arg = path_arg(&escrow);
    let mut args = vec!["key", "escrow", "--data-dir", &data_arg, "--to", &escrow_arg, "--json"];
    if let Some(database) = &hosted.database {
        args.extend(["--database-url", &database.url]);
    }
    let escrowed = on_host_with(&hosted, &env, &args);
    let escrowed = escrowed.json();
    assert_eq!(escrowed["key_ids"].as_array().map(Vec::len), Some(4), "{escrowed}");
    let text = std::fs::read_to_string(&escrow).expect("the escrow");
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let recorded = hosted.as_admin(&["audit", "log", "--action", "key.escrowed", "--json"]).json();
    assert_eq!(recorded[0]["details"]["escrow_sha256"], escrowed["sha256"], "{recorded}");

    // A wrong passphrase restores nothing.
    let restored_dir = hosted.sandbox.path("restored");
    let mut wrong = hosted.sandbox.as_user("operator");
    wrong.env("CUSTODY_ESCROW_PASSPHRASE", "not the passphrase at all").args([
        "restore",
        "--from",
        &path_arg(&taken),
        "--data-dir",
        &path_arg(&restored_dir),
        "--keys",
        &path_arg(&escrow),
    ]);
    let refused = run(wrong).expect_code(2);
    assert!(refused.stderr.contains("passphrase"), "{refused:?}");
    assert!(!restored_dir.join("custody.db").exists());

    // The restore proves the ledger against the manifest, re-hashes every
    // blob and checks every ref against the records.
    let target = hosted.database.as_ref().map(|_| PostgresDatabase::create());
    let restored_arg = path_arg(&restored_dir);
    let mut args = vec!["restore", "--from", &taken_arg, "--data-dir", &restored_arg, "--keys", &escrow_arg, "--json"];
    if let Some(target) = &target {
        args.extend(["--database-url", &target.url]);
    }
    let restored = on_host_with(&hosted, &env, &args).json();
    assert_eq!(restored["problems"], serde_json::json!([]), "{restored}");
    assert_eq!(restored["tree"]["size"], manifest["tree"]["size"], "{restored}");
    assert_eq!(restored["blobs_checked"], manifest["blobs"].as_array().map(Vec::len).unwrap_or(0));
    assert!(restored["refs_checked"].as_u64() >= Some(1), "{restored}");
    assert!(restored["replaced"].is_null(), "{restored}");

    // The restored instance serves what the backup recorded, and its ledger verifies.
    let target_url = target.as_ref().map(|t| t.url.as_str());
    let server = hosted.sandbox.serve_with("restored", target_url, &env, &[]);
    let main = manifest["repositories"][PROJECT]["refs/heads/main"].as_str().expect("main backed up").to_owned();
    let remote = format!("http://alice:{}@127.0.0.1:{}/{PROJECT}.git", hosted.alice, server.port());
    let served = work.ok(&["ls-remote", &remote, "refs/heads/main"]);
    assert!(served.starts_with(&main), "{served} vs {main}");
    // main is the newest merge the restored records hold: none recorded
    // after the copy began is on it, none recorded before is missing.
    let merged = hosted.sandbox.client(
        "alice",
        &server,
        &hosted.alice,
        &["change", "list", PROJECT, "--state", "merged", "--json"],
    );
    let merged = merged.json();
    let newest = merged.as_array().and_then(|m| m.iter().max_by_key(|c| c["merged_at"].as_str().map(str::to_owned)));
    assert_eq!(newest.and_then(|c| c["merge_commit"].as_str()), Some(main.as_str()), "{merged:#}");
    assert!(manifest["tree"]["size"].as_u64() > Some(0));
    let events = hosted.sandbox.client(
        "admin",
        &server,
        &hosted.admin,
        &["audit", "log", "--action", "instance.restored", "--json"],
    );
    let events = events.json();
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
    assert_eq!(events[0]["details"]["backup"]["tree_size"], manifest["tree"]["size"]);
    assert_eq!(events[0]["details"]["lost_events"], 0);
    let mut args = vec!["audit", "verify", "--data-dir", &restored_arg];
    if let Some(url) = target_url {
        args.extend(["--database-url", url]);
    }
    let verified = on_host(&hosted, &args);
    assert_eq!(verified.code(), Some(0), "{verified:?}");
    // Every artifact the backup names is served, intact.
    let blobs = hosted.sandbox.client("alice", &server, &hosted.alice, &["artifact", "list", PROJECT, "--json"]).json();
    assert!(blobs.as_array().is_some_and(|a| !a.is_empty()), "{blobs}");
}

fn collect_files(dir: &Path, into: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("a directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            collect_files(&path, into);
        } else {
            into.push(path.display().to_string());
        }
    }
}

#[test]
fn a_backup_whose_blob_was_damaged_does_not_restore_and_names_the_blob() {
    let hosted = Hosted::new();
    hosted.add_user("bob", "write");
    let (work, base) = seed_building(&hosted);
    merge_part(&hosted, &work, &base, 0);
    all_builds_finished(&hosted, 1);
    let (data, taken, escrow) =
        (hosted.sandbox.path("data"), hosted.sandbox.path("backup"), hosted.sandbox.path("escrow.json"));
    let manifest =
        on_host(&hosted, &["backup", "--data-dir", &path_arg(&data), "--to", &path_arg(&taken), "--json"]).json();
    on_host(&hosted, &["key", "escrow", "--data-dir", &path_arg(&data), "--to", &path_arg(&escrow)]).expect_code(0);
    let digest = manifest["blobs"][0]["sha256"].as_str().expect("a blob").to_owned();
    let file = blob_file(&taken, &digest);
    let mut permissions = std::fs::metadata(&file).expect("the blob").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o600);
    std::fs::set_permissions(&file, permissions).expect("writable");
    std::fs::write(&file, b"not the artifact").expect("damaged");

    let restore = on_host(
        &hosted,
        &[
            "restore",
            "--from",
            &path_arg(&taken),
            "--data-dir",
            &path_arg(&hosted.sandbox.path("r")),
            "--keys",
            &path_arg(&escrow),
        ],
    );
    assert_eq!(restore.code(), Some(1), "{restore:?}");
    assert!(restore.stderr.contains(&digest), "{restore:?}");
}

#[test]
fn an_older_backup_restored_over_a_newer_instance_is_recorded_and_a_watcher_accepts_it_only_when_told() {
    let mut hosted = Hosted::new();
    hosted.add_user("bob", "write");
    let (data, taken, escrow) =
        (hosted.sandbox.path("data"), hosted.sandbox.path("backup"), hosted.sandbox.path("escrow.json"));
    let state = hosted.sandbox.path("watch.json");
    let (manifest, later, seen) = {
        let (work, base) = seed_with(&hosted, &[("src/app.txt", "version 1\n", false)], "unused");
        merge_part(&hosted, &work, &base, 0);
        let manifest =
            on_host(&hosted, &["backup", "--data-dir", &path_arg(&data), "--to", &path_arg(&taken), "--json"]).json();
        on_host(&hosted, &["key", "escrow", "--data-dir", &path_arg(&data), "--to", &path_arg(&escrow)]).expect_code(0);

        // The instance goes on; a watcher sees its newer checkpoint.
        let later = merge_part(&hosted, &work, &base, 1);
        let seen = eventually(|| {
            let checkpoint = hosted.as_admin(&["audit", "checkpoint", "--json"]).json();
            let size = checkpoint["size"].as_u64()?;
            (size > manifest["tree"]["size"].as_u64()? + 5).then_some(size)
        })
        .expect("a checkpoint after the backup");
        hosted.as_admin(&["audit", "watch", "--state", &path_arg(&state)]).expect_code(0);
        (manifest, later, seen)
    };

    // Restoring the older backup over it is refused unless asked for.
    hosted.server.stop();
    let over = |hosted: &Hosted, extra: &[&str]| {
        let (from, into, keys) = (path_arg(&taken), path_arg(&data), path_arg(&escrow));
        let mut args = vec!["restore", "--from", &from, "--data-dir", &into, "--keys", &keys, "--json"];
        args.extend_from_slice(extra);
        on_host(hosted, &args)
    };
    let refused = over(&hosted, &[]).expect_code(2);
    assert!(refused.stderr.contains("--replace"), "{refused:?}");
    let replaced = over(&hosted, &["--replace"]).json();
    let lost = replaced["lost_events"].as_u64().expect("lost events");
    assert!(lost >= seen - manifest["tree"]["size"].as_u64().unwrap(), "{replaced}");
    assert!(replaced["replaced"]["size"].as_u64() >= Some(seen), "{replaced}");

    // The restored instance serves the backup's main and records the loss.
    hosted.restart_with(&[]);
    let work = hosted.workspace("after", "alice", &hosted.alice);
    branch_from_main(&work, "part-2");
    let main = work.ok(&["rev-parse", "HEAD"]);
    assert_ne!(main, later, "the merge after the backup is gone from main");
    assert_eq!(Some(main.as_str()), manifest["repositories"][PROJECT]["refs/heads/main"].as_str());
    let events = hosted.as_admin(&["audit", "log", "--action", "instance.restored", "--json"]).json();
    assert_eq!(events[0]["details"]["lost_events"], lost, "{events}");
    assert_eq!(events[0]["details"]["replaced"]["tree_size"], replaced["replaced"]["size"], "{events}");

    // A watcher that saw the lost events refuses the new history, naming
    // the restore, until told to accept it.
    let covered = eventually(|| {
        let checkpoint = hosted.as_admin(&["audit", "checkpoint", "--json"]).json();
        (checkpoint["size"].as_i64()? >= events[0]["seq"].as_i64()?).then_some(())
    });
    assert!(covered.is_some(), "a checkpoint covers the restore");
    let refused = hosted.as_admin(&["audit", "watch", "--state", &path_arg(&state)]);
    assert_eq!(refused.code(), Some(1), "{refused:?}");
    assert!(refused.stderr.contains("--accept-restore"), "{refused:?}");
    let accepted =
        hosted.as_admin(&["audit", "watch", "--state", &path_arg(&state), "--accept-restore", "--json"]).json();
    assert_eq!(accepted["accepted_restore"], events[0]["seq"], "{accepted}");

    // The accepted history goes on, and the watcher follows it as before.
    commit_files(&work, &[("src/part-2.txt", "part 2\n", false)], "A part");
    work.ok(&["push", "-q", "origin", "part-2"]);
    let number = open(&hosted, "alice", "part-2", "A part");
    review(&hosted, "bob", number, "--approve");
    merge(&hosted, "alice", number);
    let next = eventually(|| {
        let checkpoint = hosted.as_admin(&["audit", "checkpoint", "--json"]).json();
        (checkpoint["size"].as_u64()? > accepted["size"].as_u64()?).then_some(())
    });
    assert!(next.is_some(), "a newer checkpoint");
    let followed = hosted.as_admin(&["audit", "watch", "--state", &path_arg(&state), "--json"]).json();
    assert_eq!(followed["previous_size"], accepted["size"], "{followed}");
}

#[test]
fn whoever_holds_a_backup_cannot_edit_its_tree_head_or_its_repositories_hooks_into_a_restore() {
    let hosted = Hosted::new();
    hosted.add_user("bob", "write");
    let (work, base) = seed_with(&hosted, &[("src/app.txt", "version 1\n", false)], "unused");
    merge_part(&hosted, &work, &base, 0);
    let (data, taken, escrow) =
        (hosted.sandbox.path("data"), hosted.sandbox.path("backup"), hosted.sandbox.path("escrow.json"));
    on_host(&hosted, &["backup", "--data-dir", &path_arg(&data), "--to", &path_arg(&taken)]).expect_code(0);
    on_host(&hosted, &["key", "escrow", "--data-dir", &path_arg(&data), "--to", &path_arg(&escrow)]).expect_code(0);
    let restore = |into: &str| {
        let into = path_arg(&hosted.sandbox.path(into));
        on_host(&hosted, &["restore", "--from", &path_arg(&taken), "--data-dir", &into, "--keys", &path_arg(&escrow)])
    };

    // A tree head declared shorter, or with every event called legacy
    // (untagged), is not the one the instance's key tagged.
    let manifest_file = taken.join("custody-backup.json");
    let original = std::fs::read_to_string(&manifest_file).expect("the manifest");
    let mut manifest: Value = serde_json::from_str(&original).expect("JSON");
    let size = manifest["tree"]["size"].as_u64().expect("a size");
    manifest["tree"]["legacy"] = size.into();
    std::fs::write(&manifest_file, manifest.to_string()).expect("edited");
    let refused = restore("edited");
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("not the one this instance's key tagged"), "{refused:?}");
    assert!(!hosted.sandbox.path("edited").join("custody.db").exists(), "nothing was restored");
    std::fs::write(&manifest_file, &original).expect("restored manifest");

    // A repository configured to skip custody's hooks comes back as custody
    // makes repositories: its hooks are custody's.
    let repository = taken.join("repositories").join(format!("{PROJECT}.git"));
    let mut config = std::process::Command::new("git");
    config.arg("-C").arg(&repository).args(["config", "core.hooksPath", "/nonexistent"]);
    run(config).expect_code(0);
    restore("restored").expect_code(0);
    let mut read = std::process::Command::new("git");
    let restored = hosted.sandbox.path("restored").join("repositories").join(format!("{PROJECT}.git"));
    read.arg("-C").arg(&restored).args(["config", "core.hooksPath"]);
    assert_eq!(run(read).stdout.trim(), "../../hooks");
}
