//! End-to-end tests of change requests and the merge gate: the real `git`
//! client pushes to a real `custody serve`, people review and merge with the
//! `custody change` commands, and the tests look at the gate, at the merge
//! commit in the server's repository and at the audit log.
//!
//! Every scenario runs on both backends: SQLite in the data directory, and a
//! fresh PostgreSQL database (skipped only with `CUSTODY_TEST_SKIP_POSTGRES=1`
//! outside CI; an unreachable server fails the test).

#[macro_use]
mod support;

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::flow::{alice_on_branch, branch_from_main, change, eventually, merge, open, review, team, try_merge};
use support::hosted::{Backend, Hosted, PROJECT};
use support::Run;

/// The pipeline file's path.
const PIPELINE: &str = ".custody/pipeline.toml";

/// `change show --json`: the change, its authors, reviews and gate.
fn show(hosted: &Hosted, number: i64) -> Value {
    change(hosted, "alice", &["show", PROJECT, &number.to_string(), "--json"]).json()
}

/// `change gate --json` as `who`: the gate, after checking that the exit
/// code says the same as the report (0 open, 1 closed).
#[track_caller]
fn gate(hosted: &Hosted, number: i64) -> Value {
    let run = change(hosted, "alice", &["gate", PROJECT, &number.to_string(), "--json"]);
    let report: Value =
        serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("the gate is not JSON ({e}): {run:#?}"));
    let open = report["open"].as_bool().expect("open or not");
    assert_eq!(run.code(), Some(if open { 0 } else { 1 }), "{run:#?}");
    if !open {
        assert_eq!(run.json_error()["error"]["code"], "gate_closed", "{run:#?}");
    }
    report
}

/// The rules a gate report fails.
fn failing(report: &Value) -> Vec<String> {
    let rules = report["rules"].as_array().expect("rules");
    rules.iter().filter(|r| r["passed"] == false).map(|r| r["rule"].as_str().unwrap_or("?").to_owned()).collect()
}

/// One rule of a gate report.
#[track_caller]
fn rule<'a>(report: &'a Value, name: &str) -> &'a Value {
    let rules = report["rules"].as_array().expect("rules");
    rules.iter().find(|r| r["rule"] == name).unwrap_or_else(|| panic!("no rule {name} in {report}"))
}

/// The rules a refused command names, from its `--json` error.
#[track_caller]
fn refused_rules(run: &Run) -> Vec<String> {
    assert_eq!(run.code(), Some(1), "expected a refusal: {run:#?}");
    let error = run.json_error();
    let reasons = error["error"]["reasons"].as_array().unwrap_or_else(|| panic!("no reasons in {error}"));
    reasons.iter().map(|r| r["rule"].as_str().unwrap_or("?").to_owned()).collect()
}

/// Who the change's authors are, each with the kinds of reason.
fn authors(detail: &Value) -> BTreeMap<String, Vec<String>> {
    let listed = detail["authors"].as_array().expect("authors");
    listed
        .iter()
        .map(|a| {
            let kinds = a["why"].as_array().expect("reasons").iter();
            (
                a["user"].as_str().unwrap_or("?").to_owned(),
                kinds.map(|w| w["kind"].as_str().unwrap_or("?").to_owned()).collect(),
            )
        })
        .collect()
}

/// A commit of the server's repository: its author, parents and trailers.
struct Commit {
    author: String,
    parents: Vec<String>,
    trailers: Vec<(String, String)>,
}

fn server_commit(hosted: &Hosted, id: &str) -> Commit {
    let shown = hosted.bare(&["show", "-s", "--format=%an <%ae>%n%P", id]).expect_code(0);
    let mut lines = shown.stdout.lines();
    let author = lines.next().unwrap_or_default().to_owned();
    let parents = lines.next().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
    let trailers = hosted.bare(&["show", "-s", "--format=%(trailers:only,unfold)", id]).expect_code(0);
    let trailers = trailers
        .stdout
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    Commit { author, parents, trailers }
}

impl Commit {
    fn trailer(&self, key: &str) -> Vec<&str> {
        self.trailers.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }
}

/// A file as of a commit of the server's repository.
fn server_file(hosted: &Hosted, commit: &str, path: &str) -> Option<String> {
    let shown = hosted.bare(&["cat-file", "blob", &format!("{commit}:{path}")]);
    (shown.code() == Some(0)).then_some(shown.stdout)
}

/// The audit events of `action` about change `number`.
fn change_events(hosted: &Hosted, action: &str, number: i64) -> Vec<Value> {
    let subject = format!("change:{PROJECT}/{number}");
    hosted.audit_events(action).into_iter().filter(|e| e["subject"] == subject.as_str()).collect()
}

fn actors(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["actor"].as_str()).collect()
}

fn alices_change_merges_after_bob_approves(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, base) = alice_on_branch(&hosted, "feature");
    let head = work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);

    let number = open(&hosted, "alice", "feature", "Add a feature");
    assert_eq!(number, 1);
    let detail = show(&hosted, number);
    assert_eq!(detail["head"], head.as_str(), "{detail}");
    assert_eq!(detail["source_branch"], "feature", "{detail}");
    assert_eq!(detail["target_branch"], "main", "{detail}");
    assert_eq!(authors(&detail).keys().collect::<Vec<_>>(), ["alice"], "{detail}");

    // Her own approval is recorded, and does not count.
    let own = review(&hosted, "alice", number, "--approve");
    assert_eq!(own["head"], head.as_str(), "{own}");
    let closed = change(&hosted, "alice", &["gate", PROJECT, "1"]).expect_code(1);
    assert!(closed.stdout.contains("gate CLOSED"), "{closed:#?}");
    assert!(closed.stdout.contains("not counted, as authors of the change: alice"), "{closed:#?}");
    let report = gate(&hosted, number);
    assert_eq!(failing(&report), ["gate.independent_approvals"], "{report}");
    assert_eq!(report["approvers"], serde_json::json!([]), "{report}");
    let refused = try_merge(&hosted, "alice", number);
    assert_eq!(refused_rules(&refused), ["gate.independent_approvals"]);
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));

    let approval = review(&hosted, "bob", number, "--approve");
    assert_eq!(approval["head"], head.as_str(), "{approval}");
    let opened = change(&hosted, "bob", &["gate", PROJECT, "1"]).expect_code(0);
    assert!(opened.stdout.contains("gate OPEN"), "{opened:#?}");
    assert_eq!(gate(&hosted, number)["approvers"], serde_json::json!(["bob"]));

    let merged = merge(&hosted, "bob", number);
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(merged.as_str()));
    let commit = server_commit(&hosted, &merged);
    assert_eq!(commit.author, "custody <custody@localhost>");
    assert_eq!(commit.parents, [base.clone(), head.clone()]);
    assert_eq!(commit.trailer("Change"), [format!("{PROJECT}#1").as_str()]);
    assert_eq!(commit.trailer("Reviewed-head"), [head.as_str()]);
    assert_eq!(commit.trailer("Approved-by"), ["bob"]);
    assert_eq!(commit.trailer("Merged-by"), ["bob"], "the person who merged, not custody");
    assert_eq!(server_file(&hosted, &merged, "feature.txt").as_deref(), Some("a feature\n"));
    let shown = hosted.run_as("alice", &["project", "commit", PROJECT, &merged]).expect_code(0).stdout;
    assert!(shown.contains("custody made it, merging a reviewed change"), "{shown}");
    assert!(!shown.contains("imported"), "{shown}");

    let detail = show(&hosted, number);
    assert_eq!(detail["state"], "merged", "{detail}");
    assert_eq!(detail["merged_by"], "bob", "{detail}");
    assert_eq!(detail["merge_commit"], merged.as_str(), "{detail}");
    // A merged change stays merged: merging again changes nothing.
    let again = try_merge(&hosted, "bob", number);
    assert!(refused_rules(&again).contains(&"gate.change_open".to_owned()), "{again:#?}");
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(merged.as_str()));

    let opened = change_events(&hosted, "change.open", number);
    assert_eq!(actors(&opened), ["alice"], "{opened:?}");
    assert_eq!(opened[0]["details"]["head"], head.as_str(), "{opened:?}");
    let approvals = change_events(&hosted, "change.review.approve", number);
    assert_eq!(actors(&approvals), ["alice", "bob"], "{approvals:?}");
    let merges = change_events(&hosted, "change.merge", number);
    assert_eq!(actors(&merges), ["bob"], "{merges:?}");
    let details = &merges[0]["details"];
    assert_eq!(details["approvers"], serde_json::json!(["bob"]), "{details}");
    assert_eq!(details["authors"], serde_json::json!(["alice"]), "{details}");
    assert_eq!(details["reviewed_head"], head.as_str(), "{details}");
    assert_eq!(details["merge_commit"], merged.as_str(), "{details}");
    assert_eq!(details["target"], "main", "{details}");
}

fn bob_pushing_to_alices_branch_makes_him_an_author(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, base) = alice_on_branch(&hosted, "feature");
    work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Add a feature");

    // bob fixes something on alice's branch.
    let bob = hosted.workspace("bob", "bob", &hosted.token("bob"));
    bob.ok(&["fetch", "-q", "origin", "feature"]);
    bob.ok(&["checkout", "-q", "-b", "feature", "FETCH_HEAD"]);
    let fix = bob.commit("feature.txt", "a feature, fixed\n", "Fix the feature");
    bob.ok(&["push", "-q", "origin", "feature"]);
    assert_eq!(show(&hosted, number)["head"], fix.as_str());

    let approval = review(&hosted, "bob", number, "--approve");
    assert_eq!(approval["head"], fix.as_str(), "{approval}");
    let report = gate(&hosted, number);
    assert_eq!(failing(&report), ["gate.independent_approvals"], "{report}");
    let message = rule(&report, "gate.independent_approvals")["message"].as_str().unwrap_or_default();
    assert!(message.contains("not counted, as authors of the change: bob"), "{message}");

    let detail = show(&hosted, number);
    let authors = authors(&detail);
    assert_eq!(authors.keys().collect::<Vec<_>>(), ["alice", "bob"], "{detail}");
    let bob_is = &authors["bob"];
    assert!(bob_is.contains(&"moved_source_branch".to_owned()), "{detail}");
    assert!(bob_is.contains(&"pushed_commit".to_owned()), "{detail}");
    assert!(refused_rules(&try_merge(&hosted, "bob", number)).contains(&"gate.independent_approvals".to_owned()));

    review(&hosted, "carol", number, "--approve");
    let report = gate(&hosted, number);
    assert_eq!(report["approvers"], serde_json::json!(["carol"]), "{report}");
    let merged = merge(&hosted, "carol", number);
    let commit = server_commit(&hosted, &merged);
    assert_eq!(commit.parents, [base, fix.clone()]);
    assert_eq!(commit.trailer("Reviewed-head"), [fix.as_str()]);
    assert_eq!(commit.trailer("Approved-by"), ["carol"]);
    let merges = change_events(&hosted, "change.merge", number);
    assert_eq!(merges[0]["details"]["authors"], serde_json::json!(["alice", "bob"]), "{merges:?}");
}

/// bob approves the first head; alice pushes a second one, then forces the
/// branch back to the first: bob's approval stays void, as the audit log
/// said when the head moved, and the gate stays closed.
fn an_approval_voided_by_a_new_head_does_not_come_back_with_the_old_head(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, _base) = alice_on_branch(&hosted, "feature");
    let first = work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Add a feature");
    review(&hosted, "bob", number, "--approve");
    work.commit("more.txt", "more\n", "And more");
    work.ok(&["push", "-q", "origin", "feature"]);
    work.ok(&["reset", "-q", "--hard", &first]);
    work.ok(&["push", "-q", "--force", "origin", "feature"]);
    let detail = show(&hosted, number);
    assert_eq!(detail["head"], first.as_str(), "{detail}");
    assert_eq!(detail["reviews"][0]["stale"], true, "{detail}");
    assert_eq!(failing(&gate(&hosted, number)), ["gate.independent_approvals"]);
    assert_eq!(refused_rules(&try_merge(&hosted, "bob", number)), ["gate.independent_approvals"]);
    // Approving again, on what is there now, counts.
    review(&hosted, "bob", number, "--approve");
    assert_eq!(gate(&hosted, number)["open"], true);
}

fn bob_cannot_approve_a_head_he_never_read(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, _) = alice_on_branch(&hosted, "feature");
    let read = work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Add a feature");
    // The diff bob reads names the head it ends at.
    let diff = change(&hosted, "bob", &["diff", PROJECT, &number.to_string()]).expect_code(0);
    assert!(diff.stdout.contains("+a feature"), "{diff:#?}");
    assert!(diff.stderr.contains(&format!("--approve --head {read}")), "{diff:#?}");
    // alice pushes while bob reads; the documented approval needs the head.
    let unseen = work.commit("more.txt", "unreviewed\n", "And more");
    work.ok(&["push", "-q", "origin", "feature"]);
    let bare = change(&hosted, "bob", &["review", PROJECT, &number.to_string(), "--approve"]).expect_code(2);
    assert!(bare.stderr.contains("--head"), "{bare:#?}");
    let late = change(&hosted, "bob", &["review", PROJECT, &number.to_string(), "--approve", "--head", &read]);
    let late = late.expect_code(1);
    assert!(late.stderr.contains("review.head_moved"), "{late:#?}");
    // An abbreviation is a prefix alice could find a second commit for.
    let short = change(&hosted, "bob", &["review", PROJECT, &number.to_string(), "--approve", "--head", &unseen[..12]]);
    let short = short.expect_code(1);
    assert!(short.stderr.contains("review.head_moved"), "{short:#?}");
    // Through the API, an approval without a head is refused too.
    let token = hosted.token("bob");
    let (status, body) = hosted.api(
        "POST",
        &format!("/api/v1/projects/{PROJECT}/changes/{number}/reviews"),
        Some(&token),
        Some(serde_json::json!({ "verdict": "approve" })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("names the head you reviewed"), "{body}");
    assert!(show(&hosted, number)["reviews"].as_array().expect("reviews").is_empty());
    assert_eq!(gate(&hosted, number)["open"], false);
}

fn a_new_push_makes_approvals_stale(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, base) = alice_on_branch(&hosted, "feature");
    let first = work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Add a feature");
    assert_eq!(review(&hosted, "bob", number, "--approve")["head"], first.as_str());
    assert_eq!(gate(&hosted, number)["open"], true);

    let second = work.commit("more.txt", "more\n", "And more");
    work.ok(&["push", "-q", "origin", "feature"]);
    let detail = show(&hosted, number);
    assert_eq!(detail["head"], second.as_str(), "{detail}");
    let reviews = detail["reviews"].as_array().expect("reviews");
    assert_eq!(reviews.len(), 1, "{detail}");
    assert_eq!(reviews[0]["reviewer"], "bob", "{detail}");
    assert_eq!(reviews[0]["head"], first.as_str(), "{detail}");
    assert_eq!(reviews[0]["stale"], true, "{detail}");
    let moved = change_events(&hosted, "change.head", number);
    assert_eq!(actors(&moved), ["alice"], "{moved:?}");
    assert_eq!(moved[0]["details"]["old"], first.as_str(), "{moved:?}");
    assert_eq!(moved[0]["details"]["new"], second.as_str(), "{moved:?}");

    // Refused, in words and in JSON; main stays.
    let refused = change(&hosted, "bob", &["merge", PROJECT, &number.to_string()]).expect_code(1);
    assert!(refused.stderr.contains("gate.independent_approvals"), "{refused:#?}");
    assert_eq!(refused_rules(&try_merge(&hosted, "bob", number)), ["gate.independent_approvals"]);
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));
    assert!(change_events(&hosted, "change.merge", number).is_empty());

    // bob names the head he looked at: an approval of the old one is refused.
    let late = change(&hosted, "bob", &["review", PROJECT, &number.to_string(), "--approve", "--head", &first]);
    let late = late.expect_code(1);
    assert!(late.stderr.contains("review.head_moved"), "{late:#?}");
    assert_eq!(review(&hosted, "bob", number, "--approve")["head"], second.as_str());
    let stale: Vec<Value> =
        show(&hosted, number)["reviews"].as_array().expect("reviews").iter().map(|r| r["stale"].clone()).collect();
    assert_eq!(stale, [true, false]);
    let merged = merge(&hosted, "bob", number);
    let commit = server_commit(&hosted, &merged);
    assert_eq!(commit.parents, [base, second.clone()]);
    assert_eq!(commit.trailer("Reviewed-head"), [second.as_str()]);
    assert_eq!(commit.trailer("Approved-by"), ["bob"]);
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(merged.as_str()));
}

fn the_target_policy_governs_a_change_to_the_pipeline(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    // A new project has no main: a change into it creates it.
    assert_eq!(hosted.server_ref("refs/heads/main"), None);
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    work.ok(&["checkout", "-q", "-b", "setup"]);
    let policy = "[review]\napprovals = 1\n[pipeline]\nowners = \"platform\"\n";
    let setup = work.commit(PIPELINE, policy, "A pipeline with owners");
    work.ok(&["push", "-q", "origin", "setup"]);
    let first = open(&hosted, "alice", "setup", "A pipeline");
    let report = gate(&hosted, first);
    assert_eq!(failing(&report), ["gate.independent_approvals"], "{report}");
    assert_eq!(rule(&report, "gate.pipeline_valid")["passed"], true, "{report}");
    review(&hosted, "bob", first, "--approve");
    let created = merge(&hosted, "bob", first);
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(created.as_str()));
    let commit = server_commit(&hosted, &created);
    assert_eq!(commit.parents, [setup.as_str()], "the first merge has only the change's head as parent");
    assert_eq!(commit.trailer("Reviewed-head"), [setup.as_str()]);
    assert_eq!(server_file(&hosted, &created, PIPELINE).as_deref(), Some(policy));

    let made = hosted.as_admin(&["group", "create", "platform", "--json"]).json();
    assert_eq!(made["name"], "platform", "{made}");
    let grant = hosted.as_admin(&["group", "add", "platform", "carol", "--json"]).json();
    assert_eq!(grant["status"], "bootstrap", "{grant}");

    // Loosening the rules below what is valid: refused as invalid, and it
    // needs a pipeline owner besides.
    branch_from_main(&work, "loosen");
    work.commit(PIPELINE, "[review]\napprovals = 0\n[pipeline]\nowners = \"platform\"\n", "No reviews");
    work.ok(&["push", "-q", "origin", "loosen"]);
    let loosen = open(&hosted, "alice", "loosen", "No reviews");
    review(&hosted, "bob", loosen, "--approve");
    let report = gate(&hosted, loosen);
    assert_eq!(failing(&report), ["gate.pipeline_owners", "gate.pipeline_valid"], "{report}");
    let invalid = rule(&report, "gate.pipeline_valid")["message"].as_str().unwrap_or_default();
    assert!(invalid.contains("review.approvals must be between 1 and 100, not 0"), "{invalid}");
    assert!(invalid.contains("line 2, column 13"), "{invalid}");
    let refused = refused_rules(&try_merge(&hosted, "bob", loosen));
    assert_eq!(refused, ["gate.pipeline_owners", "gate.pipeline_valid"]);
    review(&hosted, "carol", loosen, "--approve");
    let report = gate(&hosted, loosen);
    assert_eq!(failing(&report), ["gate.pipeline_valid"], "{report}");
    assert_eq!(refused_rules(&try_merge(&hosted, "carol", loosen)), ["gate.pipeline_valid"]);
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(created.as_str()));

    // A valid edit of the pipeline file needs an owner's approval.
    branch_from_main(&work, "tune");
    let tuned = "[review]\napprovals = 1\n[pipeline]\nowners = \"platform\"\ntimeout = \"10m\"\n";
    let head = work.commit(PIPELINE, tuned, "A shorter timeout");
    work.ok(&["push", "-q", "origin", "tune"]);
    let tune = open(&hosted, "alice", "tune", "A shorter timeout");
    review(&hosted, "bob", tune, "--approve");
    let report = gate(&hosted, tune);
    assert_eq!(failing(&report), ["gate.pipeline_owners"], "{report}");
    assert_eq!(rule(&report, "gate.independent_approvals")["passed"], true, "{report}");
    assert_eq!(refused_rules(&try_merge(&hosted, "bob", tune)), ["gate.pipeline_owners"]);
    review(&hosted, "carol", tune, "--approve");
    let report = gate(&hosted, tune);
    assert_eq!(report["approvers"], serde_json::json!(["bob", "carol"]), "{report}");
    let merged = merge(&hosted, "carol", tune);
    let commit = server_commit(&hosted, &merged);
    assert_eq!(commit.parents, [created, head]);
    assert_eq!(commit.trailer("Approved-by"), ["bob", "carol"]);
    assert_eq!(server_file(&hosted, &merged, PIPELINE).as_deref(), Some(tuned));
}

fn a_commit_naming_carol_makes_her_an_author(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, _) = alice_on_branch(&hosted, "feature");
    std::fs::write(work.dir.join("carol.txt"), "carol's idea\n").expect("write a file");
    work.ok(&["add", "carol.txt"]);
    work.ok(&["commit", "-q", "--author", "Carol <carol@example.com>", "-m", "Carol's idea"]);
    let sha = work.ok(&["rev-parse", "HEAD"]);
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Carol's idea");

    review(&hosted, "carol", number, "--approve");
    let report = gate(&hosted, number);
    assert_eq!(failing(&report), ["gate.independent_approvals"], "{report}");
    let message = rule(&report, "gate.independent_approvals")["message"].as_str().unwrap_or_default();
    assert!(message.contains("not counted, as authors of the change: carol"), "{message}");

    let detail = show(&hosted, number);
    let listed = detail["authors"].as_array().expect("authors");
    let carol = listed.iter().find(|a| a["user"] == "carol").unwrap_or_else(|| panic!("carol is no author: {detail}"));
    let why = carol["why"].as_array().expect("reasons");
    assert!(why.iter().any(|w| w["kind"] == "named_author" && w["commit"] == sha.as_str()), "{detail}");
    assert!(!why.iter().any(|w| w["kind"] == "pushed_commit"), "carol pushed nothing: {detail}");
    assert!(authors(&detail)["alice"].contains(&"named_committer".to_owned()), "{detail}");

    review(&hosted, "bob", number, "--approve");
    assert_eq!(gate(&hosted, number)["approvers"], serde_json::json!(["bob"]));
    merge(&hosted, "bob", number);
}

fn an_invalid_pipeline_file_in_a_change_is_refused_with_line_and_column(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, base) = alice_on_branch(&hosted, "typo");
    work.commit(PIPELINE, "[review]\napprovals = 1\nbogus = true\n", "A typo in the pipeline");
    work.ok(&["push", "-q", "origin", "typo"]);
    let number = open(&hosted, "alice", "typo", "A typo");
    review(&hosted, "bob", number, "--approve");

    let report = gate(&hosted, number);
    assert_eq!(failing(&report), ["gate.pipeline_valid"], "{report}");
    let invalid = rule(&report, "gate.pipeline_valid");
    let message = invalid["message"].as_str().unwrap_or_default();
    assert!(message.contains("line 3, column 1"), "{message}");
    assert!(message.contains("bogus"), "{message}");
    assert!(invalid["satisfy"].as_str().is_some_and(|s| !s.is_empty()), "{invalid}");
    let text = change(&hosted, "alice", &["gate", PROJECT, &number.to_string()]).expect_code(1);
    assert!(text.stdout.contains("FAIL  gate.pipeline_valid"), "{text:#?}");
    assert!(text.stdout.contains("line 3, column 1"), "{text:#?}");

    assert_eq!(refused_rules(&try_merge(&hosted, "bob", number)), ["gate.pipeline_valid"]);
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));
}

fn request_changes_blocks_until_withdrawn(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, base) = alice_on_branch(&hosted, "feature");
    let head = work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Add a feature");

    review(&hosted, "bob", number, "--approve");
    let asked = change(
        &hosted,
        "carol",
        &["review", PROJECT, &number.to_string(), "--request-changes", "-m", "please rename it", "--json"],
    )
    .json();
    assert_eq!(asked["verdict"], "request_changes", "{asked}");
    let report = gate(&hosted, number);
    assert_eq!(failing(&report), ["gate.changes_requested"], "{report}");
    let message = rule(&report, "gate.changes_requested")["message"].as_str().unwrap_or_default();
    assert!(message.contains("changes requested by carol"), "{message}");
    assert_eq!(refused_rules(&try_merge(&hosted, "bob", number)), ["gate.changes_requested"]);

    // Only carol can lift her request; a comment does not.
    review(&hosted, "bob", number, "--withdraw");
    assert_eq!(failing(&gate(&hosted, number)), ["gate.changes_requested"]);
    review(&hosted, "carol", number, "--comment");
    assert_eq!(failing(&gate(&hosted, number)), ["gate.changes_requested"]);
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));

    review(&hosted, "carol", number, "--withdraw");
    let report = gate(&hosted, number);
    assert!(failing(&report).is_empty(), "{report}");
    assert_eq!(report["approvers"], serde_json::json!(["bob"]), "{report}");
    let merged = merge(&hosted, "bob", number);
    assert_eq!(server_commit(&hosted, &merged).trailer("Reviewed-head"), [head.as_str()]);
    let verdicts: Vec<Value> =
        show(&hosted, number)["reviews"].as_array().expect("reviews").iter().map(|r| r["verdict"].clone()).collect();
    assert_eq!(verdicts, ["approve", "request_changes", "withdraw", "comment", "withdraw"]);
}

fn pushes_racing_merges_never_merge_an_unapproved_head(backend: Backend) {
    const ROUNDS: u64 = 10;
    let Some(hosted) = team(backend) else { return };
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    hosted.seed_main(&work);
    let (mut merged_rounds, mut refused_rounds) = (0, 0);

    for round in 0..ROUNDS {
        let branch = format!("round-{round}");
        let main_before = branch_from_main(&work, &branch);
        let approved = work.commit(&format!("round-{round}.txt"), "approved\n", &format!("Round {round}"));
        work.ok(&["push", "-q", "origin", &branch]);
        let number = open(&hosted, "alice", &branch, &format!("Round {round}"));
        assert_eq!(review(&hosted, "bob", number, "--approve")["head"], approved.as_str());

        // The next head, made beforehand so that only the push races: a new
        // commit on top in even rounds, a rewritten one force-pushed in odd.
        let force = round % 2 == 1;
        let unapproved = if force {
            std::fs::write(work.dir.join(format!("round-{round}.txt")), "rewritten\n").expect("write a file");
            work.ok(&["commit", "-q", "-a", "--amend", "-m", &format!("Round {round}, rewritten")]);
            work.ok(&["rev-parse", "HEAD"])
        } else {
            work.commit(&format!("round-{round}-more.txt"), "unapproved\n", "Unapproved")
        };
        let mut push_args = vec!["push", "-q"];
        if force {
            push_args.push("--force");
        }
        push_args.extend(["origin", branch.as_str()]);
        // Staggered starts, so that the merge lands before, during and
        // after the push across the rounds (a push takes some 70 ms here,
        // a merge some 35 ms).
        let merge_delay = Duration::from_millis(round * 9);

        let barrier = Barrier::new(2);
        let started = Instant::now();
        let (pushed, merging) = thread::scope(|scope| {
            let push = scope.spawn(|| {
                barrier.wait();
                let pushed = work.git(&push_args);
                (pushed, started.elapsed())
            });
            let merge = scope.spawn(|| {
                barrier.wait();
                thread::sleep(merge_delay);
                let merging = try_merge(&hosted, "bob", number);
                (merging, started.elapsed())
            });
            (push.join().expect("the push thread"), merge.join().expect("the merge thread"))
        });
        let ((pushed, push_done), (merging, merge_done)) = (pushed, merging);
        pushed.expect_code(0);
        eprintln!(
            "round {round}: push done at {push_done:?}, merge started at {merge_delay:?}, done at {merge_done:?}: \
             exit {:?} {}",
            merging.code(),
            merging.stderr.trim()
        );

        let main_after = hosted.server_ref("refs/heads/main").expect("main");
        let detail = show(&hosted, number);
        assert_ne!(
            hosted.bare(&["merge-base", "--is-ancestor", &unapproved, &main_after]).code(),
            Some(0),
            "round {round}: the unapproved head {unapproved} reached main"
        );
        if merging.code() == Some(0) {
            merged_rounds += 1;
            let merged: Value = serde_json::from_str(merging.stdout.trim()).expect("the merge as JSON");
            let commit_id = merged["change"]["merge_commit"].as_str().expect("a merge commit");
            assert_eq!(main_after, commit_id, "round {round}");
            let commit = server_commit(&hosted, commit_id);
            assert_eq!(commit.parents, [main_before.clone(), approved.clone()], "round {round}");
            assert_eq!(commit.trailer("Reviewed-head"), [approved.as_str()], "round {round}");
            assert_eq!(commit.trailer("Approved-by"), ["bob"], "round {round}");
            assert_eq!(detail["state"], "merged", "round {round}: {detail}");
            assert_eq!(detail["head"], approved.as_str(), "round {round}: {detail}");
            assert_eq!(detail["merge_commit"], commit_id, "round {round}: {detail}");
            let merges = change_events(&hosted, "change.merge", number);
            assert_eq!(merges.len(), 1, "round {round}: {merges:?}");
            assert_eq!(merges[0]["details"]["reviewed_head"], approved.as_str(), "round {round}: {merges:?}");
        } else {
            refused_rounds += 1;
            let rules = refused_rules(&merging);
            assert!(
                rules.iter().all(|r| r == "gate.head_moved" || r == "gate.independent_approvals"),
                "round {round}: {merging:#?}"
            );
            assert_eq!(main_after, main_before, "round {round}: a refused merge moved main");
            assert_eq!(detail["state"], "open", "round {round}: {detail}");
            assert_eq!(detail["head"], unapproved.as_str(), "round {round}: {detail}");
            assert!(change_events(&hosted, "change.merge", number).is_empty(), "round {round}");
            change(&hosted, "alice", &["close", PROJECT, &number.to_string(), "--json"]).json();
        }
    }
    eprintln!("{merged_rounds} rounds merged, {refused_rounds} refused");
    assert_eq!(merged_rounds + refused_rounds, ROUNDS);
}

fn merges_racing_merges_land_each_change_once(backend: Backend) {
    const ROUNDS: usize = 3;
    let Some(hosted) = team(backend) else { return };
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    hosted.seed_main(&work);

    for round in 0..ROUNDS {
        let main_before = hosted.server_ref("refs/heads/main").expect("main");
        let mut changes = Vec::new();
        for side in ["left", "right"] {
            let branch = format!("{side}-{round}");
            branch_from_main(&work, &branch);
            let head = work.commit(&format!("{branch}.txt"), "a side\n", &format!("The {side} side"));
            work.ok(&["push", "-q", "origin", &branch]);
            let number = open(&hosted, "alice", &branch, &branch);
            review(&hosted, "bob", number, "--approve");
            changes.push((number, head, branch));
        }

        // bob and carol each merge both changes, all at once: the target
        // moves under every merge but the first, and each change is merged
        // by exactly one of them.
        let attempts: Vec<(&str, i64)> =
            ["bob", "carol"].iter().flat_map(|who| changes.iter().map(move |(n, _, _)| (*who, *n))).collect();
        let barrier = Barrier::new(attempts.len());
        let outcomes: Vec<(&str, i64, Run)> = thread::scope(|scope| {
            let running: Vec<_> = attempts
                .iter()
                .map(|&(who, number)| {
                    let (hosted, barrier) = (&hosted, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        (who, number, try_merge(hosted, who, number))
                    })
                })
                .collect();
            running.into_iter().map(|t| t.join().expect("a merge thread")).collect()
        });

        for (number, head, _) in &changes {
            let (merged, refused): (Vec<_>, Vec<_>) =
                outcomes.iter().filter(|(_, n, _)| n == number).partition(|(_, _, run)| run.code() == Some(0));
            assert_eq!(merged.len(), 1, "round {round}: change {number} merged {} times: {outcomes:#?}", merged.len());
            for (_, _, run) in refused {
                assert!(refused_rules(run).contains(&"gate.change_open".to_owned()), "round {round}: {run:#?}");
            }
            let detail = show(&hosted, *number);
            assert_eq!(detail["state"], "merged", "round {round}: {detail}");
            assert_eq!(detail["merged_by"], merged[0].0, "round {round}: {detail}");
            let merges = change_events(&hosted, "change.merge", *number);
            assert_eq!(merges.len(), 1, "round {round}: {merges:?}");
            assert_eq!(merges[0]["details"]["reviewed_head"], head.as_str(), "round {round}: {merges:?}");
        }

        // main went through both merge commits, one on top of the other.
        let main_after = hosted.server_ref("refs/heads/main").expect("main");
        let top = server_commit(&hosted, &main_after);
        let below = server_commit(&hosted, &top.parents[0]);
        assert_eq!(below.parents[0], main_before, "round {round}");
        let mut reviewed = vec![top.parents[1].clone(), below.parents[1].clone()];
        reviewed.sort();
        let mut heads: Vec<String> = changes.iter().map(|(_, head, _)| head.clone()).collect();
        heads.sort();
        assert_eq!(reviewed, heads, "round {round}");
        for (_, _, branch) in &changes {
            let file = format!("{branch}.txt");
            assert_eq!(server_file(&hosted, &main_after, &file).as_deref(), Some("a side\n"), "round {round}");
        }
    }
}

/// Twenty approved changes merged all at once, half through a second
/// server on the same data directory and database: every one merges, with
/// no retry by any client, one after the other on main.
fn twenty_merges_through_two_servers_all_land_in_order(backend: Backend) {
    const CHANGES: usize = 20;
    let Some(hosted) = team(backend) else { return };
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let base = hosted.seed_main(&work);
    let mut numbers = Vec::new();
    for index in 0..CHANGES {
        let branch = format!("side-{index}");
        work.ok(&["checkout", "-q", "-B", &branch, &base]);
        work.commit(&format!("{branch}.txt"), "a side\n", &format!("Side {index}"));
        work.ok(&["push", "-q", "origin", &branch]);
        let number = open(&hosted, "alice", &branch, &branch);
        review(&hosted, "bob", number, "--approve");
        numbers.push(number);
    }
    let url = hosted.database.as_ref().map(|d| d.url.clone());
    let second = hosted.sandbox.serve_on("data", url.as_deref());
    let servers = [&hosted.server, &second];
    let barrier = Barrier::new(CHANGES);
    let token = hosted.token("bob");
    let outcomes: Vec<(i64, Run)> = thread::scope(|scope| {
        let running: Vec<_> = numbers
            .iter()
            .enumerate()
            .map(|(index, &number)| {
                let (hosted, barrier, server, token) = (&hosted, &barrier, servers[index % 2], &token);
                scope.spawn(move || {
                    barrier.wait();
                    let args = ["change", "merge", PROJECT, &number.to_string(), "--json"];
                    (number, hosted.sandbox.client("bob", server, token, &args))
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().expect("a merge thread")).collect()
    });
    for (number, run) in &outcomes {
        assert_eq!(run.code(), Some(0), "change {number} merged at the first ask: {run:#?}");
    }
    // main is the twenty merge commits, one on top of the other, in the
    // order the merge events record.
    let main = hosted.server_ref("refs/heads/main").expect("main");
    let chain = hosted.bare(&["rev-list", "--first-parent", &format!("{base}..{main}")]).expect_code(0).stdout;
    let mut chain: Vec<&str> = chain.lines().collect();
    chain.reverse();
    let recorded: Vec<String> = hosted
        .audit_events("change.merge")
        .iter()
        .map(|e| e["details"]["merge_commit"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(chain, recorded, "main holds exactly the recorded merges, in order");
    assert_eq!(recorded.len(), CHANGES);
    for index in 0..CHANGES {
        assert_eq!(server_file(&hosted, &main, &format!("side-{index}.txt")).as_deref(), Some("a side\n"));
    }
}

fn a_change_reopened_after_a_push_is_at_its_branchs_tip(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, base) = alice_on_branch(&hosted, "feature");
    let first = work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Add a feature");
    let listed = change(&hosted, "alice", &["list", PROJECT]).expect_code(0);
    assert!(listed.stdout.contains("Add a feature (feature -> main) by alice"), "{listed:#?}");
    let diff = change(&hosted, "bob", &["diff", PROJECT, &number.to_string()]).expect_code(0);
    assert!(diff.stdout.contains("+++ b/feature.txt") && diff.stdout.contains("+a feature"), "{diff:#?}");
    review(&hosted, "bob", number, "--approve");

    let closed = change(&hosted, "alice", &["close", PROJECT, &number.to_string(), "--json"]).json();
    assert_eq!(closed["state"], "closed", "{closed}");
    assert_eq!(failing(&gate(&hosted, number)), ["gate.change_open"]);
    assert_eq!(refused_rules(&try_merge(&hosted, "bob", number)), ["gate.change_open"]);
    let late =
        change(&hosted, "carol", &["review", PROJECT, &number.to_string(), "--approve", "--head", &first, "--json"]);
    assert_eq!(late.code(), Some(2), "{late:#?}");
    assert_eq!(late.json_error()["error"]["code"], "conflict", "{late:#?}");
    let listed = change(&hosted, "alice", &["list", PROJECT, "--state", "closed", "--json"]).json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // The branch moves while the change is closed; reopened, the change is
    // where its branch is, and bob's approval of the old head is stale.
    let second = work.commit("more.txt", "more\n", "And more");
    work.ok(&["push", "-q", "origin", "feature"]);
    let reopened = change(&hosted, "alice", &["reopen", PROJECT, &number.to_string(), "--json"]).json();
    assert_eq!(reopened["state"], "open", "{reopened}");
    assert_eq!(reopened["head"], second.as_str(), "the reopened change is not at its branch's tip: {reopened}");
    let detail = show(&hosted, number);
    assert_eq!(detail["reviews"][0]["head"], first.as_str(), "{detail}");
    assert_eq!(detail["reviews"][0]["stale"], true, "{detail}");
    assert_eq!(failing(&gate(&hosted, number)), ["gate.independent_approvals"]);

    review(&hosted, "bob", number, "--approve");
    let merged = merge(&hosted, "bob", number);
    let commit = server_commit(&hosted, &merged);
    assert_eq!(commit.parents, [base, second.clone()]);
    assert_eq!(commit.trailer("Reviewed-head"), [second.as_str()]);
    let states: Vec<&str> = ["change.close", "change.reopen", "change.merge"]
        .iter()
        .filter(|action| change_events(&hosted, action, number).len() == 1)
        .copied()
        .collect();
    assert_eq!(states, ["change.close", "change.reopen", "change.merge"]);
}

/// Each scenario as a test on each backend: `sqlite::NAME` and `postgres::NAME`.
/// The check runs of a change once none is queued or running (bounded wait).
#[track_caller]
fn settled_checks(hosted: &Hosted, number: i64) -> Vec<Value> {
    let settled = |runs: &Vec<Value>| {
        !runs.is_empty() && runs.iter().all(|r| r["status"] != "queued" && r["status"] != "running")
    };
    eventually(|| {
        let runs = change(hosted, "alice", &["checks", PROJECT, &number.to_string(), "--log", "--json"]).json();
        Some(runs.as_array().expect("a list of runs").clone()).filter(settled)
    })
    .unwrap_or_else(|| panic!("the checks of change {number} did not finish"))
}

fn a_change_cannot_turn_its_own_check_green(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    // main: a check that fails unless ok.txt exists, owned by platform.
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    work.ok(&["checkout", "-q", "-b", "setup"]);
    let policy = "[pipeline]\nowners = \"platform\"\ncheck = \"scripts/ci.sh\"\n";
    work.commit(PIPELINE, policy, "A pipeline with a check");
    work.commit(
        "scripts/ci.sh",
        "#!/bin/sh\ntest -f ok.txt || { echo 'ok.txt is missing'; exit 1; }\necho checked\n",
        "The check",
    );
    work.ok(&["push", "-q", "origin", "setup"]);
    let first = open(&hosted, "alice", "setup", "A pipeline");
    review(&hosted, "bob", first, "--approve");
    merge(&hosted, "bob", first);
    hosted.as_admin(&["group", "create", "platform", "--json"]).json();
    hosted.as_admin(&["group", "add", "platform", "carol", "--json"]).json();

    // The change rewrites the check to pass; the target's script still runs.
    branch_from_main(&work, "cheat");
    work.commit("scripts/ci.sh", "#!/bin/sh\nexit 0\n", "Make the check pass");
    work.ok(&["push", "-q", "origin", "cheat"]);
    let cheat = open(&hosted, "alice", "cheat", "Green at last");
    let runs = settled_checks(&hosted, cheat);
    assert_eq!(runs[0]["status"], "failed", "{runs:?}");
    assert!(runs[0]["log"].as_str().unwrap_or_default().contains("ok.txt is missing"), "{runs:?}");
    review(&hosted, "bob", cheat, "--approve");
    // The check script is owned by the pipeline's owners.
    assert_eq!(failing(&gate(&hosted, cheat)), ["gate.pipeline_owners", "gate.check"]);
    review(&hosted, "carol", cheat, "--approve");
    let report = gate(&hosted, cheat);
    assert_eq!(failing(&report), ["gate.check"], "{report}");
    assert_eq!(refused_rules(&try_merge(&hosted, "carol", cheat)), ["gate.check"]);

    // The honest fix passes the target's check, in the sandbox.
    branch_from_main(&work, "fix");
    let head = work.commit("ok.txt", "fine\n", "Provide ok.txt");
    work.ok(&["push", "-q", "origin", "fix"]);
    let fix = open(&hosted, "alice", "fix", "Provide ok.txt");
    let runs = settled_checks(&hosted, fix);
    assert_eq!(
        (runs[0]["status"].as_str(), runs[0]["head"].as_str()),
        (Some("passed"), Some(head.as_str())),
        "{runs:?}"
    );
    assert!(runs[0]["log"].as_str().unwrap_or_default().contains("checked"), "{runs:?}");
    review(&hosted, "bob", fix, "--approve");
    assert_eq!(gate(&hosted, fix)["open"], true);
    merge(&hosted, "bob", fix);
    // The signed change attestation records the check that passed, with its log's digest.
    let envelope = change(&hosted, "alice", &["attestation", PROJECT, &fix.to_string(), "--json"]).json();
    let checks = support::deploys::statement_of(&envelope)["predicate"]["checks"].clone();
    assert_eq!((checks[0]["status"].as_str(), checks[0]["head"].as_str()), (Some("passed"), Some(head.as_str())));
    let log = runs[0]["log"].as_str().unwrap_or_default();
    assert_eq!(checks[0]["log_sha256"], support::builds::sha256_hex(log.as_bytes()).as_str(), "{checks}");

    // A change leaving an invalid pipeline file fails its check, saying where.
    branch_from_main(&work, "broken");
    work.commit(PIPELINE, "[pipeline]\nowners = \"platform\"\ncheck = \"scripts/ci.sh\"\nbogus = 1\n", "Broken");
    work.ok(&["push", "-q", "origin", "broken"]);
    let broken = open(&hosted, "alice", "broken", "Broken pipeline");
    let runs = settled_checks(&hosted, broken);
    assert_eq!(runs[0]["status"], "failed", "{runs:?}");
    assert!(runs[0]["log"].as_str().unwrap_or_default().contains("line 4, column 1"), "{runs:?}");
}

/// alice's change, with alice having asked for it to merge when its gate
/// opens: the instance, main's commit, the change's number and the answer.
fn auto_merge_asked(backend: Backend) -> Option<(Hosted, String, i64, Value)> {
    let hosted = team(backend)?;
    let (work, base) = alice_on_branch(&hosted, "feature");
    work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Add a feature");
    let asked = change(&hosted, "alice", &["merge", PROJECT, &number.to_string(), "--auto", "--json"]).json();
    assert_eq!(asked["auto_merge"], true, "{asked}");
    Some((hosted, base, number, asked))
}

fn auto_merge_waits_for_the_gate_and_merges_as_it_opens(backend: Backend) {
    let Some((hosted, base, number, asked)) = auto_merge_asked(backend) else { return };
    assert_eq!(asked["change"]["state"], "open", "{asked}");
    // alice's own approval does not open the gate, so nothing merges.
    review(&hosted, "alice", number, "--approve");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(show(&hosted, number)["state"], "open");
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));
    // bob's approval opens it; custody merges, as alice asked.
    review(&hosted, "bob", number, "--approve");
    let merged = eventually(|| Some(show(&hosted, number)).filter(|c| c["state"] == "merged"))
        .unwrap_or_else(|| panic!("change {number} was not merged: {}", show(&hosted, number)));
    assert_eq!(merged["merged_by"], "alice", "{merged}");
    let commit = server_commit(&hosted, merged["merge_commit"].as_str().expect("a merge commit"));
    assert_eq!(commit.trailer("Approved-by"), ["bob"]);
}

/// `merge --no-wait` queues the change and returns at once; the queue shows
/// it until custody merges it in its turn, once its gate is open.
fn a_merge_asked_without_waiting_is_queued_and_merged_in_its_turn(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, _base) = alice_on_branch(&hosted, "feature");
    work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Add a feature");
    let queued = change(&hosted, "alice", &["merge", PROJECT, &number.to_string(), "--no-wait", "--json"]).json();
    assert_eq!(queued["auto_merge"], true, "{queued}");
    let queue = change(&hosted, "carol", &["queue", PROJECT, "--json"]).json();
    assert_eq!(queue["waiting"][0]["change"], number, "{queue}");
    assert_eq!(queue["waiting"][0]["asked_by"], "alice", "{queue}");
    let text = change(&hosted, "carol", &["queue", PROJECT]).expect_code(0).stdout;
    assert!(text.contains(&format!("#{number}")) && text.contains("asked by alice"), "{text}");
    review(&hosted, "bob", number, "--approve");
    let merged = eventually(|| Some(show(&hosted, number)).filter(|c| c["state"] == "merged"));
    assert!(merged.is_some(), "merged in its turn: {}", show(&hosted, number));
    let queue = change(&hosted, "carol", &["queue", PROJECT, "--json"]).json();
    assert_eq!(queue, serde_json::json!({ "moving": [], "waiting": [] }));
}

/// A title carrying terminal escape sequences is shown with them written
/// out, so that reading a list cannot recolour, clear or retitle anyone's
/// terminal.
fn a_title_with_escape_sequences_does_not_reach_the_terminal_raw(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, _) = alice_on_branch(&hosted, "feature");
    work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    // A title is one line: escape sequences and line breaks are refused.
    for hostile in ["Refunds\u{1b}]0;owned\u{7}\u{1b}[2J", "Refunds\n#2     merged  Approved by everyone"] {
        let refused = change(&hosted, "alice", &["open", PROJECT, "--source", "feature", "--title", hostile]);
        let refused = refused.expect_code(2);
        assert!(refused.stderr.contains("one line"), "{refused:#?}");
    }
    // What may hold them (a description) reaches the terminal written out.
    let hostile = "Refunds\u{1b}]0;owned\u{7}\u{1b}[2J";
    let args = ["open", PROJECT, "--source", "feature", "--title", "Refunds", "-m", hostile, "--json"];
    let number = change(&hosted, "alice", &args).json()["number"].as_i64().expect("a change");
    let shown = change(&hosted, "bob", &["show", PROJECT, &number.to_string()]).expect_code(0).stdout;
    assert!(!shown.contains('\u{1b}') && !shown.contains('\u{7}'), "{shown:?}");
    assert!(shown.contains("Refunds\\u001b]0;owned"), "{shown:?}");
}

fn a_commit_nobody_is_recorded_as_pushing_closes_the_gate(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let (work, _) = alice_on_branch(&hosted, "feature");
    let pushed = work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    // A commit that reaches the branch without custody recording its pusher
    // (as a push whose record was lost would leave it): made in the server's
    // repository directly.
    let tree = hosted.bare(&["rev-parse", &format!("{pushed}^{{tree}}")]).expect_code(0).stdout.trim().to_owned();
    let sneaked =
        hosted.bare(&["commit-tree", &tree, "-p", &pushed, "-m", "sneaked in"]).expect_code(0).stdout.trim().to_owned();
    hosted.bare(&["update-ref", "refs/heads/feature", &sneaked]).expect_code(0);
    let number = open(&hosted, "alice", "feature", "Add a feature");
    assert_eq!(show(&hosted, number)["head"], sneaked.as_str());
    review(&hosted, "bob", number, "--approve");
    let report = gate(&hosted, number);
    assert_eq!(failing(&report), ["gate.commits_recorded"], "{report}");
    assert_eq!(refused_rules(&try_merge(&hosted, "bob", number)), ["gate.commits_recorded"]);
}

fn a_link_the_change_plants_on_the_check_scripts_path_is_never_followed(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    work.ok(&["checkout", "-q", "-b", "setup"]);
    work.commit(PIPELINE, "[pipeline]\nowners = \"platform\"\ncheck = \"scripts/ci.sh\"\n", "A pipeline");
    work.commit("scripts/ci.sh", "#!/bin/sh\necho checked\n", "The check");
    work.ok(&["push", "-q", "origin", "setup"]);
    let first = open(&hosted, "alice", "setup", "A pipeline");
    review(&hosted, "bob", first, "--approve");
    merge(&hosted, "bob", first);

    // The change replaces scripts/ with a link to a directory of the host:
    // the runner must not write the check script through it.
    let victim = hosted.sandbox.path("victim");
    std::fs::create_dir_all(&victim).expect("a host directory");
    branch_from_main(&work, "link");
    work.ok(&["rm", "-q", "-r", "scripts"]);
    std::os::unix::fs::symlink(&victim, work.dir.join("scripts")).expect("a symlink");
    work.ok(&["add", "scripts"]);
    work.ok(&["commit", "-q", "-m", "scripts elsewhere"]);
    work.ok(&["push", "-q", "origin", "link"]);
    let link = open(&hosted, "alice", "link", "Scripts elsewhere");
    let runs = settled_checks(&hosted, link);
    // The link gives way to the target's script, which runs as reviewed.
    assert_eq!(runs[0]["status"], "passed", "{runs:?}");
    assert!(runs[0]["log"].as_str().unwrap_or_default().contains("checked"), "{runs:?}");
    assert!(!victim.join("ci.sh").exists(), "the runner wrote outside the workspace");
}

fn a_check_sources_its_helpers_as_the_target_has_them(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    work.ok(&["checkout", "-q", "-b", "setup"]);
    let policy =
        "[pipeline]\nowners = \"platform\"\ncheck = \"scripts/ci.sh\"\ncheck_inputs = [\"scripts/lib/*.sh\"]\n";
    work.commit(PIPELINE, policy, "A pipeline whose check uses a helper");
    work.commit("scripts/ci.sh", "#!/bin/sh\n. scripts/lib/verify.sh\nverify\n", "The check");
    work.commit(
        "scripts/lib/verify.sh",
        "verify() { test -f ok.txt || { echo 'ok.txt is missing'; exit 1; }; echo verified; }\n",
        "The helper",
    );
    work.ok(&["push", "-q", "origin", "setup"]);
    let first = open(&hosted, "alice", "setup", "A pipeline");
    review(&hosted, "bob", first, "--approve");
    merge(&hosted, "bob", first);

    // The change rewrites the helper the check sources, and plants a new
    // one beside it: the check still runs the target's.
    branch_from_main(&work, "cheat");
    work.commit("scripts/lib/verify.sh", "verify() { echo 'all good'; }\n", "A kinder helper");
    work.commit("scripts/lib/extra.sh", "echo planted\n", "Another helper");
    work.ok(&["push", "-q", "origin", "cheat"]);
    let cheat = open(&hosted, "alice", "cheat", "Green at last");
    let runs = settled_checks(&hosted, cheat);
    let log = runs[0]["log"].as_str().unwrap_or_default();
    assert_eq!(runs[0]["status"], "failed", "{runs:?}");
    assert!(log.contains("ok.txt is missing") && !log.contains("all good"), "{runs:?}");
    // A check input is the pipeline owners' to approve, like the scripts.
    review(&hosted, "bob", cheat, "--approve");
    assert!(failing(&gate(&hosted, cheat)).contains(&"gate.pipeline_owners".to_owned()));

    // The code under test still comes from the change.
    branch_from_main(&work, "fix");
    work.commit("ok.txt", "fine\n", "Provide ok.txt");
    work.ok(&["push", "-q", "origin", "fix"]);
    let fix = open(&hosted, "alice", "fix", "Provide ok.txt");
    let runs = settled_checks(&hosted, fix);
    assert_eq!(runs[0]["status"], "passed", "{runs:?}");
    assert!(runs[0]["log"].as_str().unwrap_or_default().contains("verified"), "{runs:?}");
}

fn auto_merge_lapses_when_the_asking_token_is_revoked(backend: Backend) {
    let Some((hosted, base, number, _)) = auto_merge_asked(backend) else { return };
    // alice's token is cut off (say it leaked): her standing request goes with it.
    let tokens = hosted.run_as("alice", &["token", "list", "--json"]).json();
    let id = tokens[0]["id"].as_str().expect("a token id").to_owned();
    hosted.run_as("alice", &["token", "revoke", &id]).expect_code(0);
    review(&hosted, "bob", number, "--approve");
    let cancelled =
        eventually(|| Some(change_events(&hosted, "change.auto_merge.cancel", number)).filter(|e| !e.is_empty()))
            .unwrap_or_default();
    assert_eq!(cancelled.len(), 1, "the request lapsed");
    let detail = hosted.run_as("bob", &["change", "show", PROJECT, &number.to_string(), "--json"]).json();
    assert_eq!(detail["state"], "open", "{detail}");
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));
}

/// An open change's title and description are edited by the project's
/// writers, with an event; a reader is refused, and a merged change keeps
/// the words its attestation signed.
fn an_open_changes_words_are_edited_and_a_merged_ones_are_kept(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    hosted.add_user("rita", "read");
    let (work, _) = alice_on_branch(&hosted, "feature");
    work.commit("src/app.txt", "version 2\n", "Version 2");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Version 2");
    let path = format!("/api/v1/projects/{PROJECT}/changes/{number}");
    let edit = |who: &str, body: Value| hosted.api("PATCH", &path, Some(&hosted.token(who)), Some(body));

    let (status, edited) = edit("bob", serde_json::json!({ "description": "Refunds, with the ledger's entry." }));
    assert_eq!(status, 200, "{edited}");
    assert_eq!(
        (edited["title"].as_str(), edited["description"].as_str()),
        (Some("Version 2"), Some("Refunds, with the ledger's entry."))
    );
    let (status, refused) = edit("rita", serde_json::json!({ "title": "Mine now" }));
    assert_eq!(status, 403, "a reader edits: {refused}");
    let (status, refused) = edit("alice", serde_json::json!({ "title": "two\nlines" }));
    assert_eq!(status, 400, "{refused}");
    let (status, unchanged) = edit("alice", serde_json::json!({}));
    assert_eq!((status, &unchanged["title"]), (200, &Value::from("Version 2")), "{unchanged}");
    let events = hosted.audit_events("change.edit");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"], "bob");

    review(&hosted, "bob", number, "--approve");
    merge(&hosted, "alice", number);
    let (status, refused) = edit("alice", serde_json::json!({ "title": "Version 2, renamed after merging" }));
    assert_eq!(status, 409, "{refused}");
    let shown = change(&hosted, "alice", &["show", PROJECT, &number.to_string(), "--json"]).json();
    assert_eq!(shown["title"], "Version 2", "{shown}");
}

/// Line comments through the API: a thread binds to the head its writer
/// read and to a line that exists there; a later head that changes the
/// line marks it outdated; a reply joins a thread, never a reply; only its
/// author, the opener or a writer resolves it; a merged change takes none.
fn line_comments_bind_to_a_read_line_and_go_outdated_when_it_changes(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    hosted.add_user("rita", "read");
    let (work, _) = alice_on_branch(&hosted, "feature");
    let first = work.commit("src/app.txt", "one\ntwo\nthree\n", "Three lines");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Three lines");
    let path = format!("/api/v1/projects/{PROJECT}/changes/{number}/comments");
    let post = |who: &str, body: Value| hosted.api("POST", &path, Some(&hosted.token(who)), Some(body));
    let on = |line: i64, head: &str| serde_json::json!({ "path": "src/app.txt", "line": line, "head": head, "body": "why?" });

    let (status, thread) = post("bob", on(2, &first));
    assert_eq!(status, 201, "{thread}");
    assert_eq!((thread["line_text"].as_str(), thread["outdated"].as_bool()), (Some("two"), Some(false)));
    let (status, refused) = post("bob", on(9, &first));
    assert_eq!(status, 409, "a line the file lacks: {refused}");
    let (status, reply) =
        post("alice", serde_json::json!({ "reply_to": thread["id"], "body": "because the ticket says so" }));
    assert_eq!(status, 201, "{reply}");
    let (status, refused) = post("bob", serde_json::json!({ "reply_to": reply["id"], "body": "to a reply" }));
    assert_eq!(status, 400, "{refused}");
    let (status, refused) = post("bob", serde_json::json!({ "path": "src/app.txt", "body": "no line" }));
    assert_eq!(status, 422, "neither a line's comment nor a reply: {refused}");

    // alice changes line 2: a comment on the old head is refused, and the
    // thread is outdated, its replies with it.
    let second = work.commit("src/app.txt", "one\nTWO\nthree\n", "Shout two");
    work.ok(&["push", "-q", "origin", "feature"]);
    eventually(|| {
        let shown = change(&hosted, "bob", &["show", PROJECT, &number.to_string(), "--json"]).json();
        (shown["head"] == second.as_str()).then_some(())
    })
    .expect("the change follows the push");
    let (status, refused) = post("bob", on(1, &first));
    assert_eq!(status, 403, "a thread on a head bob no longer sees: {refused}");
    let (status, listed) = hosted.api("GET", &path, Some(&hosted.token("rita")), None);
    assert_eq!(status, 200, "{listed}");
    let outdated: Vec<bool> = listed.as_array().unwrap().iter().map(|c| c["outdated"].as_bool().unwrap()).collect();
    assert_eq!(outdated, [true, true], "{listed}");
    let (status, unchanged) = post("bob", on(3, &second));
    assert_eq!(status, 201, "{unchanged}");

    // Resolving is the thread's author's, the opener's or a writer's.
    let resolve = |who: &str, id: &Value| {
        hosted.api("POST", &format!("{path}/{id}/resolve"), Some(&hosted.token(who)), Some(serde_json::json!({})))
    };
    let (status, refused) = resolve("rita", &thread["id"]);
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["reasons"][0]["rule"], "comment.resolver", "{refused}");
    // A DBA makes rita the thread's author, and writes a thread of her own
    // around custody: neither lets her resolve anything.
    hosted.tamper(&format!(
        "UPDATE change_comments SET author_id = (SELECT id FROM users WHERE name = 'rita') WHERE id = {}",
        thread["id"]
    ));
    let (status, refused) = resolve("rita", &thread["id"]);
    assert_eq!(status, 403, "the row's author decided: {refused}");
    hosted.tamper(&format!(
        "INSERT INTO change_comments (change_id, author_id, head, path, line, line_text, body, at) \
         SELECT change_id, (SELECT id FROM users WHERE name = 'rita'), head, path, line, line_text, 'mine', at \
         FROM change_comments WHERE id = {}",
        thread["id"]
    ));
    let (_, listed) = hosted.api("GET", &path, Some(&hosted.token("rita")), None);
    let forged = listed.as_array().unwrap().iter().map(|c| c["id"].clone()).max_by_key(|id| id.as_i64()).unwrap();
    let (status, refused) = resolve("rita", &forged);
    assert_eq!(status, 409, "a thread custody never wrote: {refused}");
    assert!(refused["error"]["message"].as_str().unwrap_or_default().contains("around custody"), "{refused}");
    hosted.tamper(&format!(
        "UPDATE change_comments SET author_id = (SELECT id FROM users WHERE name = 'bob') WHERE id = {}",
        thread["id"]
    ));
    hosted.tamper(&format!("DELETE FROM change_comments WHERE id = {forged}"));
    let (status, refused) = resolve("alice", &reply["id"]);
    assert_eq!(status, 409, "a reply is not a thread: {refused}");
    let (status, resolved) = resolve("alice", &thread["id"]);
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["resolved_by"], "alice");
    assert_eq!(hosted.audit_events("change.comment").len(), 3);
    assert_eq!(hosted.audit_events("change.comment.resolve").len(), 1);

    review(&hosted, "bob", number, "--approve");
    merge(&hosted, "alice", number);
    let (status, refused) = post("bob", on(1, &second));
    assert_eq!(status, 409, "a merged change takes no comment: {refused}");
}

on_both_backends!(
    line_comments_bind_to_a_read_line_and_go_outdated_when_it_changes,
    an_open_changes_words_are_edited_and_a_merged_ones_are_kept,
    alices_change_merges_after_bob_approves,
    bob_pushing_to_alices_branch_makes_him_an_author,
    a_new_push_makes_approvals_stale,
    bob_cannot_approve_a_head_he_never_read,
    the_target_policy_governs_a_change_to_the_pipeline,
    a_commit_naming_carol_makes_her_an_author,
    an_invalid_pipeline_file_in_a_change_is_refused_with_line_and_column,
    request_changes_blocks_until_withdrawn,
    pushes_racing_merges_never_merge_an_unapproved_head,
    merges_racing_merges_land_each_change_once,
    twenty_merges_through_two_servers_all_land_in_order,
    an_approval_voided_by_a_new_head_does_not_come_back_with_the_old_head,
    a_change_reopened_after_a_push_is_at_its_branchs_tip,
    a_change_cannot_turn_its_own_check_green,
    auto_merge_waits_for_the_gate_and_merges_as_it_opens,
    a_merge_asked_without_waiting_is_queued_and_merged_in_its_turn,
    a_title_with_escape_sequences_does_not_reach_the_terminal_raw,
    a_commit_nobody_is_recorded_as_pushing_closes_the_gate,
    a_link_the_change_plants_on_the_check_scripts_path_is_never_followed,
    a_check_sources_its_helpers_as_the_target_has_them,
    auto_merge_lapses_when_the_asking_token_is_revoked,
);
