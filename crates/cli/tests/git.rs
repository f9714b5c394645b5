//! End-to-end tests of git hosting: the real `git` client on PATH pushes and
//! fetches over smart HTTP to a real `custody serve`, and the tests look at
//! what custody recorded and at what the server's bare repository holds.
//!
//! The hosted project and the git helpers (a clean environment for every git
//! command, tokens in the remote URL) live in `support::hosted`.

mod support;

use serde_json::Value;
use support::hosted::{git_command, Hosted, Workspace, PROJECT};
use support::{http_request, run};

#[test]
fn alice_pushes_a_feature_branch_and_is_recorded_as_its_pusher() {
    let hosted = Hosted::new();
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    work.ok(&["checkout", "-q", "-b", "feature"]);
    let first = work.commit("one.txt", "one\n", "First");
    let second = work.commit("two.txt", "two\n", "Second");

    let pushed = work.git(&["push", "origin", "feature"]).expect_code(0);
    assert!(pushed.stderr.contains("feature -> feature"), "{pushed:?}");
    assert_eq!(hosted.server_ref("refs/heads/feature").as_deref(), Some(second.as_str()));

    let pushes = hosted.pushes();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    let push = &pushes[0];
    assert_eq!(push["pusher"], "alice", "{push}");
    let updates = push["updates"].as_array().expect("updates");
    assert_eq!(updates.len(), 1, "{push}");
    assert_eq!(updates[0]["name"], "refs/heads/feature", "{push}");
    assert_eq!(updates[0]["new"], second.as_str(), "{push}");
    let mut commits: Vec<&str> =
        push["commits"].as_array().expect("commits").iter().filter_map(Value::as_str).collect();
    commits.sort_unstable();
    let mut expected = vec![first.as_str(), second.as_str()];
    expected.sort_unstable();
    assert_eq!(commits, expected, "{push}");

    for sha in [&first, &second] {
        let commit = hosted.commit(sha);
        assert_eq!(commit["sha"], sha.as_str(), "{commit}");
        assert_eq!(commit["pusher"], "alice", "{commit}");
        assert_eq!(commit["first_push"], push["id"], "{commit}");
        assert_eq!(commit["author"]["user"], "alice", "{commit}");
    }

    let accepted = hosted.audit_events("git.push");
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0]["actor"], "alice", "{accepted:?}");
}

#[test]
fn alice_and_an_admin_cannot_push_to_main_and_nothing_of_it_stays() {
    let hosted = Hosted::new();
    // The admin joins as a writer, so that what stops them is the
    // protected branch and not a missing membership.
    hosted.add_member("admin", "write");

    let alice = hosted.workspace("alice", "alice", &hosted.alice);
    // A new project has no main, and a push cannot create it.
    let first = alice.commit("first.txt", "first\n", "First");
    let refused = alice.refused(&["origin", "HEAD:main"]);
    assert!(refused.stderr.contains("nobody can create it"), "{refused:?}");
    assert_eq!(hosted.server_refs(), Vec::<String>::new());
    assert!(!hosted.server_has(&first));

    let base = hosted.seed_main(&alice);
    let admin = hosted.workspace("admin", "admin", &hosted.admin);
    admin.ok(&["fetch", "-q", "origin", "refs/heads/main"]);
    admin.ok(&["checkout", "-q", "-b", "main", "FETCH_HEAD"]);

    for (who, work) in [("alice", &alice), ("admin", &admin)] {
        let content = format!("{who} tries to slip this past review at {:?}\n", std::time::SystemTime::now());
        let file = format!("{who}-secret.txt");
        let commit = work.commit(&file, &content, &format!("{who} goes straight to main"));
        let tree = work.ok(&["rev-parse", "HEAD^{tree}"]);
        let blob = work.ok(&["hash-object", &file]);
        assert_ne!(commit, base);

        let refused = work.refused(&["origin", "HEAD:main"]);
        assert!(refused.stderr.contains("protected branch"), "{who}: {refused:?}");
        assert!(refused.stderr.contains("open a change"), "{who}: {refused:?}");
        assert!(refused.stderr.contains("push.protected_branch"), "{who}: {refused:?}");

        assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()), "{who} moved main");
        for (what, id) in [("commit", &commit), ("tree", &tree), ("blob", &blob)] {
            assert!(!hosted.server_has(id), "the refused {what} {id} of {who} stayed in the server's repository");
        }
    }

    // Only the seeding push was accepted.
    let pushes = hosted.pushes();
    assert_eq!(pushes.len(), 1, "{pushes:?}");

    let refusals = hosted.audit_events("git.push.refused");
    let actors: Vec<&str> = refusals.iter().filter_map(|e| e["actor"].as_str()).collect();
    assert_eq!(actors, ["alice", "alice", "admin"], "{refusals:?}");
    let alice_refusal = &refusals[1];
    assert_eq!(alice_refusal["subject"], format!("project:{PROJECT}"), "{alice_refusal}");
    assert_eq!(alice_refusal["details"]["updates"][0]["name"], "refs/heads/main", "{alice_refusal}");
    assert_eq!(alice_refusal["details"]["reasons"][0]["rule"], "push.protected_branch", "{alice_refusal}");
}

#[test]
fn force_push_and_deletion_of_main_are_refused() {
    let hosted = Hosted::new();
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let base = hosted.seed_main(&work);

    // Another history, unrelated to main.
    work.ok(&["checkout", "-q", "--orphan", "other"]);
    work.ok(&["rm", "-q", "-r", "--cached", "."]);
    let other = work.commit("other.txt", "another history\n", "Other");
    assert_ne!(other, base);

    let forced = work.refused(&["--force", "origin", "other:main"]);
    assert!(forced.stderr.contains("protected branch"), "{forced:?}");
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));

    let deleted = work.refused(&["origin", ":main"]);
    assert!(deleted.stderr.contains("protected branch"), "{deleted:?}");
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));

    let deleted = work.refused(&["origin", "--delete", "refs/heads/main"]);
    assert!(deleted.stderr.contains("protected branch"), "{deleted:?}");
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));
    assert!(!hosted.server_has(&other), "the refused history stayed in the server's repository");
}

#[test]
fn the_internal_namespace_is_hidden_and_refused() {
    let hosted = Hosted::new();
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let commit = work.commit("x.txt", "x\n", "X");

    work.refused(&["origin", "HEAD:refs/custody/x"]);
    assert_eq!(hosted.server_ref("refs/custody/x"), None);
    assert!(!hosted.server_has(&commit));

    // custody's own ref, made inside the server's repository.
    work.ok(&["push", "-q", "origin", "HEAD:refs/heads/feature"]);
    hosted.bare(&["update-ref", "refs/custody/secret", &commit]).expect_code(0);
    assert!(hosted.server_refs().contains(&"refs/custody/secret".to_owned()));

    for version in ["0", "2"] {
        let listed = work.ok(&["-c", &format!("protocol.version={version}"), "ls-remote", "origin"]);
        assert!(listed.contains("refs/heads/feature"), "v{version}: {listed}");
        assert!(!listed.contains("refs/custody"), "v{version} shows custody's refs: {listed}");
    }
    // Not even by asking for it, by name or by id.
    let asked = work.git(&["fetch", "origin", "refs/custody/secret"]);
    assert_ne!(asked.code(), Some(0), "{asked:?}");
    let hidden = hosted.bare(&["commit-tree", "-m", "custody's own", &format!("{commit}^{{tree}}")]).expect_code(0);
    let hidden = hidden.stdout.trim().to_owned();
    hosted.bare(&["update-ref", "refs/custody/hidden", &hidden]).expect_code(0);
    // Only over protocol v0: in v2 a want "can be anything" (gitprotocol-v2),
    // so upload-pack serves any object whose id the client already knows.
    // Hiding is of the names; what sits under refs/custody must be no secret
    // from the project's readers.
    let asked = work.git(&["-c", "protocol.version=0", "fetch", "origin", &hidden]);
    assert_ne!(asked.code(), Some(0), "a hidden commit was fetched by its id: {asked:?}");
    assert_ne!(work.git(&["cat-file", "-e", &hidden]).code(), Some(0));

    // Nor can it be moved or deleted.
    work.refused(&["origin", "HEAD:refs/custody/secret"]);
    work.refused(&["origin", ":refs/custody/secret"]);
    assert_eq!(hosted.server_ref("refs/custody/secret").as_deref(), Some(commit.as_str()));
}

#[test]
fn ref_spellings_that_could_alias_main_cannot_reach_it() {
    let hosted = Hosted::new();
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let base = hosted.seed_main(&work);
    let refs_before = hosted.server_refs();
    let next = work.commit("next.txt", "next\n", "Next");

    for destination in [
        "refs/heads/MAIN",
        "refs/heads/Main",
        "refs/heads/mAIN",
        "HEAD",
        "refs/heads/HEAD",
        "refs/remotes/origin/main",
        "refs/main",
        // git could not make it while main exists; custody refuses it first,
        // so that its objects never enter either.
        "refs/heads/main/x",
        "refs/heads/MAIN/x",
    ] {
        let attempt = work.git(&["push", "origin", &format!("HEAD:{destination}")]);
        assert_ne!(attempt.code(), Some(0), "a push to {destination} was accepted: {attempt:#?}");
        assert!(attempt.stderr.contains("custody refused this push"), "{destination}: {attempt:?}");
        assert_eq!(
            hosted.server_ref("refs/heads/main").as_deref(),
            Some(base.as_str()),
            "a push to {destination} moved main"
        );
        assert_eq!(hosted.server_refs(), refs_before, "a push to {destination} made a ref");
    }
    assert!(!hosted.server_has(&next), "a refused push left its commit behind");
    let refs = hosted.server_refs();
    assert!(!refs.iter().any(|r| r.eq_ignore_ascii_case("refs/heads/main") && r != "refs/heads/main"), "{refs:?}");
}

#[test]
fn a_commit_naming_bob_pushed_by_alice_records_both() {
    let hosted = Hosted::new();
    hosted.add_user("bob", "");
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    work.ok(&["checkout", "-q", "-b", "feature"]);
    std::fs::write(work.dir.join("bob.txt"), "bob's work\n").expect("write a file");
    work.ok(&["add", "bob.txt"]);
    work.ok(&[
        "commit",
        "-q",
        "--author",
        "Bob Builder <bob@example.com>",
        "-m",
        "Bob's work\n\nCo-authored-by: Carol <carol@nowhere.example>",
    ]);
    let sha = work.ok(&["rev-parse", "HEAD"]);
    work.ok(&["push", "-q", "origin", "feature"]);

    let commit = hosted.commit(&sha);
    assert_eq!(commit["pusher"], "alice", "{commit}");
    assert_eq!(commit["author"]["name"], "Bob Builder", "{commit}");
    assert_eq!(commit["author"]["email"], "bob@example.com", "{commit}");
    assert_eq!(commit["author"]["user"], "bob", "{commit}");
    assert_eq!(commit["committer"]["email"], "alice@example.com", "{commit}");
    assert_eq!(commit["committer"]["user"], "alice", "{commit}");
    let co_authors = commit["co_authors"].as_array().expect("co-authors");
    assert_eq!(co_authors.len(), 1, "{commit}");
    assert_eq!(co_authors[0]["name"], "Carol", "{commit}");
    assert_eq!(co_authors[0]["email"], "carol@nowhere.example", "{commit}");
    assert!(co_authors[0].get("user").is_none_or(Value::is_null), "carol is no custody user: {commit}");

    let accepted = hosted.audit_events("git.push");
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0]["actor"], "alice", "{accepted:?}");
    let named: Vec<&str> = accepted[0]["details"]["users_named_by_commits"]
        .as_array()
        .expect("users named")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(named, ["alice", "bob"], "{accepted:?}");
}

#[test]
fn a_private_project_needs_credentials() {
    let hosted = Hosted::new();
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let tip = work.commit("a.txt", "a\n", "A");
    work.ok(&["push", "-q", "origin", "HEAD:refs/heads/feature"]);

    // No credentials: git fails without prompting, and the server asked
    // for Basic credentials.
    let anonymous = format!("http://127.0.0.1:{}/{PROJECT}.git", hosted.server.port());
    let cloned = hosted.git("alice", &["clone", "-q", &anonymous, "anonymous"]);
    assert_ne!(cloned.code(), Some(0), "{cloned:?}");
    assert!(!hosted.sandbox.path("anonymous").join(".git").exists());
    let path = format!("/{PROJECT}.git/info/refs?service=git-upload-pack");
    let answer = http_request(&hosted.server.url, &path, &[]);
    assert_eq!(answer.status, 401, "{answer:?}");
    let challenge = answer.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Basic"), "{answer:?}");

    // A read token clones…
    let made = hosted.as_user("alice", &hosted.alice, &["token", "create", "--scope", "read", "--json"]).json();
    let read = made["token"].as_str().expect("a token").to_owned();
    hosted.clone("reader", "alice", &read, &[]).expect_code(0);
    let reader = Workspace { hosted: &hosted, dir: hosted.sandbox.path("reader"), who: "alice".into() };
    assert_eq!(reader.ok(&["rev-parse", "refs/remotes/origin/feature"]), tip);

    // …but cannot push.
    reader.ok(&["checkout", "-q", "-b", "mine", "origin/feature"]);
    let mine = reader.commit("b.txt", "b\n", "B");
    let refused = reader.refused(&["origin", "mine"]);
    assert!(refused.stderr.contains("403"), "{refused:?}");
    assert_eq!(hosted.server_ref("refs/heads/mine"), None);
    assert!(!hosted.server_has(&mine));

    // Someone who is no member is told the repository does not exist.
    let bob = hosted.add_user("bob", "");
    let cloned = hosted.clone("bob", "bob", &bob, &[]);
    assert_ne!(cloned.code(), Some(0), "{cloned:?}");
    assert!(cloned.stderr.contains("not found") || cloned.stderr.contains("404"), "{cloned:?}");
    let bearer = format!("Bearer {bob}");
    let answer = http_request(&hosted.server.url, &path, &[("Authorization", &bearer)]);
    assert_eq!(answer.status, 404, "{answer:?}");
    // As for a project that does not exist at all.
    let answer = http_request(
        &hosted.server.url,
        "/nothing.git/info/refs?service=git-upload-pack",
        &[("Authorization", &bearer)],
    );
    assert_eq!(answer.status, 404, "{answer:?}");
}

#[test]
fn protocol_v2_and_gzip_work() {
    let hosted = Hosted::new();
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    // Many branches on distinct commits: a clone asks for each, and a
    // request of more than 1 KiB is one git sends gzipped.
    let mut tips = Vec::new();
    for i in 0..40 {
        tips.push(work.commit("n.txt", &format!("{i}\n"), &format!("Commit {i}")));
        work.ok(&["branch", &format!("b{i:02}")]);
    }
    work.ok(&["push", "-q", "origin", "refs/heads/b*:refs/heads/b*"]);

    let trace = [("GIT_TRACE_PACKET", "1"), ("GIT_TRACE_CURL", "1"), ("GIT_TRACE_CURL_NO_DATA", "1")];
    let url = hosted.url("alice", &hosted.alice);
    let cloned =
        hosted.git_env(&hosted.sandbox.path(""), "alice", &trace, &["-c", "protocol.version=2", "clone", &url, "v2"]);
    let cloned = cloned.expect_code(0);
    assert!(cloned.stderr.contains("version 2"), "no protocol v2 in the trace: {}", cloned.stderr);
    assert!(cloned.stderr.contains("command=fetch"), "{}", cloned.stderr);
    assert!(cloned.stderr.contains("Content-Encoding: gzip"), "no gzip request in the trace: {}", cloned.stderr);
    let clone = Workspace { hosted: &hosted, dir: hosted.sandbox.path("v2"), who: "alice".into() };
    assert_eq!(clone.ok(&["rev-parse", "refs/remotes/origin/b39"]), tips[39]);

    // A push, then a fetch of it over v2.
    work.ok(&["checkout", "-q", "-b", "feature"]);
    let later = work.commit("later.txt", "later\n", "Later");
    work.ok(&["-c", "protocol.version=2", "push", "-q", "origin", "feature"]);
    let fetched = hosted.git_env(&clone.dir, "alice", &trace, &["-c", "protocol.version=2", "fetch", "origin"]);
    let fetched = fetched.expect_code(0);
    assert!(fetched.stderr.contains("version 2"), "{}", fetched.stderr);
    assert_eq!(clone.ok(&["rev-parse", "refs/remotes/origin/feature"]), later);

    // And the same over protocol v0, gzip included.
    let cloned =
        hosted.git_env(&hosted.sandbox.path(""), "alice", &trace, &["-c", "protocol.version=0", "clone", &url, "v0"]);
    let cloned = cloned.expect_code(0);
    assert!(!cloned.stderr.contains("version 2"), "{}", cloned.stderr);
    assert!(cloned.stderr.contains("Content-Encoding: gzip"), "no gzip request in the trace: {}", cloned.stderr);
    let v0 = Workspace { hosted: &hosted, dir: hosted.sandbox.path("v0"), who: "alice".into() };
    assert_eq!(v0.ok(&["rev-parse", "refs/remotes/origin/feature"]), later);
    v0.ok(&["fsck", "--no-progress"]);
}

#[test]
fn a_branch_nested_under_main_cannot_squat_it_before_its_first_merge() {
    let hosted = Hosted::new();
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let commit = work.commit("x.txt", "x\n", "X");
    assert_eq!(hosted.server_ref("refs/heads/main"), None, "a new project has no main yet");

    // While main does not exist, refs/heads/main/x would be a directory
    // where main must go: custody's first merge could never create it.
    for destination in ["refs/heads/main/x", "refs/heads/Main/x", "refs/heads/main/deep/x"] {
        let refused = work.refused(&["origin", &format!("HEAD:{destination}")]);
        assert!(refused.stderr.contains("push.protected_branch"), "{destination}: {refused:?}");
        assert_eq!(hosted.server_refs(), Vec::<String>::new(), "a push to {destination} made a ref");
    }
    assert!(!hosted.server_has(&commit));

    // A name that merely starts the same way is an ordinary branch.
    work.ok(&["push", "-q", "origin", "HEAD:refs/heads/main-fix", "HEAD:refs/heads/mainly/x"]);
    hosted.bare(&["update-ref", "refs/heads/main", &commit]).expect_code(0);
}

#[test]
fn a_tag_or_branch_that_would_be_taken_for_main_is_refused() {
    let hosted = Hosted::new();
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let base = hosted.seed_main(&work);
    let mine = work.commit("mine.txt", "alice's\n", "Alice's own main");
    for destination in [
        "refs/tags/main",
        "refs/heads/refs/heads/main",
        "refs/heads/heads/main",
        "refs/heads/m\u{0430}in",
        "refs/heads/main\u{200b}",
    ] {
        let refused = work.refused(&["origin", &format!("{mine}:{destination}")]);
        assert!(
            refused.stderr.contains("push.ref_shadows_protected") || refused.stderr.contains("push.ref_name"),
            "{destination:?}: {refused:?}"
        );
    }
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));
    assert!(!hosted.server_refs().iter().any(|r| r.contains("tags/main") || r.contains("heads/heads")));
}

#[test]
fn a_tag_no_push_may_delete_goes_with_two_admins() {
    let hosted = Hosted::new();
    bob_second_admin(&hosted);
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let base = hosted.seed_main(&work);
    work.ok(&["tag", "release/1", &base]);
    work.ok(&["push", "-q", "origin", "refs/tags/release/1"]);
    // Nobody deletes a tag by pushing, not even an admin.
    let refused = work.refused(&["origin", ":refs/tags/release/1"]);
    assert!(refused.stderr.contains("tag"), "{refused:?}");
    assert_eq!(hosted.server_ref("refs/tags/release/1").as_deref(), Some(base.as_str()));

    let grant = hosted.as_admin(&["project", "delete-tag", PROJECT, "release/1", "--json"]).json();
    assert_eq!(grant["status"], "pending", "{grant}");
    assert_eq!(hosted.server_ref("refs/tags/release/1").as_deref(), Some(base.as_str()), "not before approval");
    let id = grant["id"].as_i64().expect("a grant id").to_string();
    let refused = hosted.as_admin(&["grant", "approve", &id]).expect_code(1);
    assert!(refused.stderr.contains("grant.requester_cannot_approve"), "{refused:#?}");
    let mut approve = hosted.sandbox.as_user("bob");
    approve.args(["grant", "approve", &id, "--json"]);
    assert_eq!(run(approve).json()["status"], "approved");
    assert_eq!(hosted.server_ref("refs/tags/release/1"), None, "the tag is gone");
    let deleted = hosted.audit_events("project.tag.delete");
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    // A tag that does not exist cannot be asked for.
    hosted.as_admin(&["project", "delete-tag", PROJECT, "release/2"]).expect_code(2);
}

#[test]
fn a_push_larger_than_the_instance_allows_is_refused_and_lands_nothing() {
    let hosted = Hosted::with_args(&["--max-push-bytes", "1000000"]);
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    // Three megabytes git cannot compress.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..3_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    std::fs::write(work.dir.join("noise.bin"), noise).unwrap();
    work.ok(&["add", "noise.bin"]);
    work.ok(&["commit", "-q", "-m", "Noise"]);
    let refused = work.refused(&["origin", "HEAD:refs/heads/big"]);
    assert!(refused.stderr.contains("maximum allowed size"), "{refused:?}");
    assert!(hosted.server_ref("refs/heads/big").is_none());
    // A push within the limit goes through.
    work.ok(&["checkout", "-q", "--orphan", "small"]);
    work.ok(&["rm", "-q", "-f", "noise.bin"]);
    work.commit("small.txt", "small\n", "Small");
    work.ok(&["push", "-q", "origin", "HEAD:refs/heads/small"]);
}

#[test]
fn a_file_larger_than_the_instance_takes_is_refused_however_well_it_compresses() {
    let hosted = Hosted::with_args(&["--max-object-bytes", "1000000"]);
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    // Two megabytes of zeros: a tiny pack, a large file.
    std::fs::create_dir_all(work.dir.join("data")).unwrap();
    std::fs::write(work.dir.join("data/zeros.bin"), vec![0u8; 2_000_000]).unwrap();
    work.ok(&["add", "data/zeros.bin"]);
    work.ok(&["commit", "-q", "-m", "Zeros"]);
    let refused = work.refused(&["origin", "HEAD:refs/heads/big"]);
    assert!(refused.stderr.contains("push.object_size"), "{refused:?}");
    assert!(refused.stderr.contains("data/zeros.bin") && refused.stderr.contains("2000000 bytes"), "{refused:?}");
    assert!(hosted.server_ref("refs/heads/big").is_none());
    // A file within the limit goes through.
    work.ok(&["checkout", "-q", "--orphan", "small"]);
    work.ok(&["rm", "-q", "-r", "-f", "data"]);
    work.commit("small.txt", "small\n", "Small");
    work.ok(&["push", "-q", "origin", "HEAD:refs/heads/small"]);
}

#[test]
fn write_access_removed_while_a_push_is_in_flight_refuses_it() {
    let mut hosted = Hosted::new();
    {
        let work = hosted.workspace("alice", "alice", &hosted.alice);
        hosted.seed_main(&work);
    }
    let held = hosted.sandbox.path("push-held");
    let held_text = held.to_str().expect("UTF-8").to_owned();
    hosted.restart_with(&[("CUSTODY_PAUSE_AT", "push.decide"), ("CUSTODY_PAUSE_FILE", &held_text)]);
    let work = hosted.workspace("alice-again", "alice", &hosted.alice);
    work.ok(&["fetch", "-q", "origin", "refs/heads/main"]);
    work.ok(&["checkout", "-q", "-B", "feature", "FETCH_HEAD"]);
    work.commit("feature.txt", "a feature\n", "Add a feature");
    // alice's push begins with write access, and is held before its decision.
    let pushing = std::thread::scope(|scope| {
        let push = scope.spawn(|| work.git(&["push", "-q", "origin", "feature"]));
        for _ in 0..500 {
            if held.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(held.exists(), "the push never reached its decision");
        // Meanwhile her write access goes.
        let grant = hosted.as_admin(&["project", "member", "add", PROJECT, "alice", "--role", "read", "--json"]).json();
        assert_eq!(grant["status"], "bootstrap", "{grant}");
        std::fs::remove_file(&held).expect("let the push go on");
        push.join().expect("the push ran")
    });
    assert_ne!(pushing.code(), Some(0), "{pushing:?}");
    assert!(pushing.stderr.contains("push.write_access"), "{pushing:?}");
    assert!(hosted.server_ref("refs/heads/feature").is_none(), "nothing landed");
    let refused = hosted.audit_events("git.push.refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
}

#[test]
fn the_name_in_the_url_is_not_the_pusher() {
    let hosted = Hosted::new();
    hosted.add_user("bob", "write");
    // Alice's token under bob's name: the token says who pushes.
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    work.ok(&["remote", "set-url", "origin", &hosted.url("bob", &hosted.alice)]);
    let commit = work.commit("a.txt", "a\n", "A");
    work.ok(&["push", "-q", "origin", "HEAD:refs/heads/feature"]);

    let pushes = hosted.pushes();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    assert_eq!(pushes[0]["pusher"], "alice", "{pushes:?}");
    assert_eq!(hosted.commit(&commit)["pusher"], "alice");

    // And a wrong token under a right name is no one.
    work.ok(&["remote", "set-url", "origin", &hosted.url("alice", "cst_not_a_token")]);
    work.commit("b.txt", "b\n", "B");
    let refused = work.refused(&["origin", "HEAD:refs/heads/feature"]);
    assert!(refused.stderr.contains("Authentication failed"), "{refused:?}");
    assert_eq!(hosted.pushes().len(), 1);
}

/// bob becomes the second admin, which ends bootstrap; an admin-scoped
/// token comes only from logging in with a password, which bob's stored
/// credentials then hold.
fn bob_second_admin(hosted: &Hosted) {
    hosted.second_admin("bob");
}

#[test]
fn a_branch_about_to_become_the_mainline_is_frozen_and_must_be_reviewed() {
    let hosted = Hosted::new();
    bob_second_admin(&hosted);
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    work.commit("a.txt", "unreviewed\n", "Unreviewed work");
    work.ok(&["push", "-q", "origin", "HEAD:refs/heads/feature"]);

    // An existing branch with unreviewed commits cannot become the default.
    let refused = hosted.as_admin(&["project", "set-default-branch", PROJECT, "feature"]).expect_code(1);
    assert!(refused.stderr.contains("project.default_branch.unreviewed"), "{refused:#?}");

    // A branch named by a pending grant is frozen until the grant is decided.
    let grant = hosted.as_admin(&["project", "set-default-branch", PROJECT, "trunk", "--json"]).json();
    assert_eq!(grant["status"], "pending", "{grant}");
    let pushed = work.refused(&["origin", "HEAD:refs/heads/trunk"]);
    assert!(pushed.stderr.contains("protected branch"), "{pushed:#?}");
    assert_eq!(hosted.server_ref("refs/heads/trunk"), None);

    let id = grant["id"].as_i64().expect("a grant id").to_string();
    let mut approve = hosted.sandbox.as_user("bob");
    approve.args(["grant", "approve", &id, "--json"]);
    assert_eq!(run(approve).json()["status"], "approved");
    let project = hosted.as_admin(&["project", "show", PROJECT, "--json"]).json();
    assert_eq!(project["default_branch"], "trunk", "{project}");
    assert_eq!(project["protected_branches"], serde_json::json!(["trunk", "main"]), "{project}");
}

#[test]
fn an_import_waits_for_a_second_admin_and_is_recorded_as_unreviewed() {
    let hosted = Hosted::new();
    bob_second_admin(&hosted);

    // An existing repository with history nobody reviewed.
    let source = hosted.workspace("legacy-source", "alice", &hosted.alice);
    source.commit("a.txt", "one\n", "one");
    let tip = source.commit("b.txt", "two\n", "two");
    let path = source.dir.to_string_lossy().into_owned();
    let made = hosted.as_admin(&["project", "create", "legacy", "--import", &path, "--json"]).json();
    let grant = &made["import_grant"];
    assert_eq!(grant["status"], "pending", "{made}");
    let id = grant["id"].as_i64().expect("a grant id").to_string();

    // Staged, not published: the repository shows nothing yet.
    let legacy = hosted.sandbox.path("data").join("repositories").join("legacy.git");
    let main = |hosted: &Hosted| {
        let mut command = git_command(&hosted.sandbox.path("home"), &hosted.sandbox.path(""), ("op", "op@example.com"));
        command.arg("--git-dir").arg(&legacy).args(["rev-parse", "--verify", "--quiet", "refs/heads/main"]);
        let found = run(command);
        (found.code() == Some(0)).then(|| found.stdout.trim().to_owned())
    };
    assert_eq!(main(&hosted), None);
    // Commits made at the source after the request are not part of it.
    source.commit("c.txt", "three\n", "three, after the request");

    let refused = hosted.as_admin(&["grant", "approve", &id]).expect_code(1);
    assert!(refused.stderr.contains("grant.requester_cannot_approve"), "{refused:#?}");
    let mut approve = hosted.sandbox.as_user("bob");
    approve.args(["grant", "approve", &id, "--json"]);
    let approved = run(approve).json();
    assert_eq!(approved["status"], "approved", "{approved}");

    assert_eq!(main(&hosted).as_deref(), Some(tip.as_str()), "exactly the staged history is published");
    let commit = hosted.as_admin(&["project", "commit", "legacy", &tip, "--json"]).json();
    assert_eq!(commit["imported_by_grant"].as_i64().map(|g| g.to_string()), Some(id.clone()), "{commit}");
    assert!(commit["pusher"].is_null(), "nobody pushed an imported commit: {commit}");
    let applied = hosted.audit_events("project.import.apply");
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["details"]["commits"], 2);
    assert_eq!(applied[0]["details"]["reviewed"], false);
}

/// The server's log once it holds every one of `lines`: each is written as
/// its request is answered, and under load a moment later (5 s at most).
fn logged_once(hosted: &Hosted, lines: &[&str]) -> String {
    let mut logged = hosted.server.stderr();
    for _ in 0..50 {
        if lines.iter().all(|l| logged.contains(l)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        logged = hosted.server.stderr();
    }
    logged
}

#[test]
fn a_name_sent_to_sign_in_cannot_forge_a_log_line() {
    let hosted = Hosted::new();
    let forged = "mallory\n2026-12-03T00:00:00.000000Z  INFO custody: admin granted everything\u{1b}[2J";
    let (status, _) = hosted.api(
        "POST",
        "/api/v1/auth/token",
        None,
        Some(serde_json::json!({ "name": forged, "password": "guess" })),
    );
    assert_eq!(status, 401);
    let logged = logged_once(&hosted, &["failed login"]);
    let line = logged.lines().find(|l| l.contains("failed login")).unwrap_or_else(|| panic!("{logged}"));
    assert!(line.contains("mallory\\n2026-12-03") && line.contains("\\u001b[2J"), "{line}");
    assert!(!logged.lines().any(|l| l.starts_with("2026-12-03T00:00:00.000000Z")), "{logged}");
    assert!(!logged.contains('\u{1b}'), "{logged:?}");
}

#[test]
fn a_branch_name_and_a_user_agent_sent_to_custody_cannot_forge_a_log_line() {
    let hosted = Hosted::on_with(support::hosted::Backend::Sqlite, &[("CUSTODY_LOG", "info,custody_server=debug")])
        .expect("SQLite is never skipped");
    // A header may carry any byte above 0x7f: NEL and CSI, C1 controls that
    // break lines and start escape sequences in some viewers.
    let agent = "curl\u{85}2026-12-03T00:00:00.000000Z  INFO custody: admin granted everything\u{9b}2J";
    let signed_in = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-A", agent, "-H", "Content-Type: application/json"])
        .args(["--data-binary", r#"{"name":"mallory","password":"guess"}"#])
        .arg(format!("http://127.0.0.1:{}/api/v1/auth/token", hosted.server.port()))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&signed_in.stdout), "401");
    let branch = "feat\n2026-12-03T00:00:00.000000Z  INFO custody: admin granted everything\u{1b}[2J";
    let (status, _) = hosted.api(
        "POST",
        &format!("/api/v1/projects/{PROJECT}/changes"),
        Some(&hosted.alice),
        Some(serde_json::json!({ "source": branch, "title": "forged" })),
    );
    assert_eq!(status, 400);

    let logged = logged_once(&hosted, &["failed login", "request refused"]);
    let login = logged.lines().find(|l| l.contains("failed login")).unwrap_or_else(|| panic!("{logged}"));
    assert!(login.contains("curl\\u00852026-12-03") && login.contains("\\u009b2J"), "{login}");
    let refused = logged
        .lines()
        .find(|l| l.contains("request refused") && l.contains("feat"))
        .unwrap_or_else(|| panic!("{logged}"));
    assert!(refused.contains("feat\\n2026-12-03") && refused.contains("[2J"), "{refused}");
    assert!(!logged.lines().any(|l| l.starts_with("2026-12-03T00:00:00.000000Z")), "{logged}");
    assert!(!logged.contains(['\u{1b}', '\u{85}', '\u{9b}']), "{logged:?}");
}

/// Copies the instance's keys into a second host's data directory, modes kept.
fn keys_copied_to(hosted: &Hosted, data: &std::path::Path) {
    let keys = data.join("keys");
    std::fs::create_dir_all(&keys).expect("a keys directory");
    for entry in std::fs::read_dir(hosted.sandbox.path("data").join("keys")).expect("the instance's keys") {
        let from = entry.expect("a key").path();
        let to = keys.join(from.file_name().expect("a name"));
        std::fs::copy(&from, &to).expect("the key copied");
    }
}

#[test]
fn a_second_server_without_the_instances_storage_refuses_to_start_and_with_it_serves_the_same_branches() {
    use support::hosted::Backend;
    let Some(hosted) = Hosted::on(Backend::Postgres) else { return };
    let database = hosted.database.as_ref().expect("PostgreSQL").url.clone();
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let main = hosted.seed_main(&work);

    // A second host with the instance's keys and database, but a data
    // directory of its own: it would keep other branches and other
    // artifacts than the first, so it refuses, saying what it lacks.
    let second = hosted.sandbox.path("second");
    keys_copied_to(&hosted, &second);
    let mut command = hosted.sandbox.as_user("server");
    command.arg("serve").arg("--data-dir").arg(&second).args(["--listen", "127.0.0.1:0", "--database-url", &database]);
    let refused = support::run_within(command, None, std::time::Duration::from_secs(60));
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("repository directory"), "{}", refused.stderr);
    assert!(refused.stderr.contains("blob store"), "{}", refused.stderr);
    assert!(!refused.stdout.contains("listening"), "it served: {refused:?}");
    // A worker there would build into artifacts nobody serves: it refuses too.
    let mut command = hosted.sandbox.as_user("worker");
    command.arg("worker").arg("--data-dir").arg(&second).args(["--database-url", &database]);
    let refused = support::run_within(command, None, std::time::Duration::from_secs(60));
    assert_eq!(refused.code(), Some(2), "{refused:?}");
    assert!(refused.stderr.contains("repository directory"), "{}", refused.stderr);

    // Given the instance's repository directory and blob store, it starts,
    // and a push through it lands where the first server serves it from.
    let first = hosted.sandbox.path("data");
    std::os::unix::fs::symlink(first.join("repositories"), second.join("repositories")).expect("shared repositories");
    // (The refused start made an empty blob store of its own.)
    let _ = std::fs::remove_dir_all(second.join("blobs"));
    std::os::unix::fs::symlink(first.join("blobs"), second.join("blobs")).expect("shared blobs");
    let other = hosted.sandbox.serve_with("second", Some(&database), &[], &[]);
    let through_second = format!("http://alice:{}@127.0.0.1:{}/{PROJECT}.git", hosted.alice, other.port());
    let listed = work.ok(&["ls-remote", &through_second, "refs/heads/main"]);
    assert!(listed.starts_with(&main), "the second server serves another main: {listed}");
    work.ok(&["push", "-q", &through_second, "HEAD:refs/heads/through-second"]);
    let through_first = hosted.url("alice", &hosted.alice);
    let listed = work.ok(&["ls-remote", &through_first, "refs/heads/through-second"]);
    assert!(listed.starts_with(&main), "the push through the second server is not on the first: {listed:?}");
}

/// A failed sign-in as `name`, sent with `X-Forwarded-For: forwarded`: the status.
fn failed_sign_in(hosted: &Hosted, name: &str, forwarded: &str) -> u16 {
    let body = serde_json::json!({ "name": name, "password": "guess" }).to_string();
    let headers = [("Content-Type", "application/json"), ("X-Forwarded-For", forwarded)];
    support::http_send(&hosted.server.url, "POST", "/api/v1/auth/token", &headers, Some(body.as_bytes())).status
}

#[test]
fn behind_a_trusted_proxy_each_client_is_limited_alone_and_nobody_else_can_forge_a_client() {
    // custody trusts no proxy unless told: a client that writes another
    // address in every attempt still runs into its own limit.
    let direct = Hosted::new();
    for i in 0..10 {
        assert_eq!(failed_sign_in(&direct, &format!("guess-{i}"), &format!("203.0.113.{i}")), 401);
    }
    assert_eq!(failed_sign_in(&direct, "guess-10", "198.51.100.1"), 429, "a forged header escaped the limit");

    // Behind a proxy custody is told to trust, each client is counted
    // alone: one client's failures do not lock out the next.
    let proxied = Hosted::with_args(&["--trusted-proxy", "127.0.0.1"]);
    for i in 0..10 {
        assert_eq!(failed_sign_in(&proxied, &format!("guess-{i}"), "203.0.113.5"), 401);
    }
    assert_eq!(failed_sign_in(&proxied, "guess-10", "203.0.113.5"), 429);
    assert_eq!(failed_sign_in(&proxied, "guess-11", "203.0.113.6"), 401, "another client was locked out");
    // A client's own header is not believed past the proxy's hop.
    assert_eq!(failed_sign_in(&proxied, "guess-12", "203.0.113.7, 203.0.113.5"), 429);
    let logged = proxied.server.stderr();
    assert!(logged.lines().any(|l| l.contains("failed login") && l.contains("203.0.113.5")), "{logged}");
}
