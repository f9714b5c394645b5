//! The steps most end-to-end stories share: a team, a change opened,
//! reviewed and merged with the `custody change` commands, and bounded polls.

use serde_json::Value;

use super::hosted::{Backend, Hosted, Workspace, PROJECT};
use super::Run;

/// A hosted project where alice, bob and carol are writers.
pub fn team(backend: Backend) -> Option<Hosted> {
    let hosted = Hosted::on(backend)?;
    hosted.add_user("bob", "write");
    hosted.add_user("carol", "write");
    Some(hosted)
}

/// `custody change ARGS` as `who`.
pub fn change(hosted: &Hosted, who: &str, args: &[&str]) -> Run {
    let mut all = vec!["change"];
    all.extend(args);
    hosted.run_as(who, &all)
}

/// Opens a change from `source` into the default branch, as `who`: its number.
pub fn open(hosted: &Hosted, who: &str, source: &str, title: &str) -> i64 {
    let made = change(hosted, who, &["open", PROJECT, "--source", source, "--title", title, "--json"]).json();
    assert_eq!(made["state"], "open", "{made}");
    assert_eq!(made["opened_by"], who, "{made}");
    made["number"].as_i64().expect("a change number")
}

/// Reviews the change's current head as `who` with `--approve`,
/// `--request-changes`, `--comment` or `--withdraw`: the review.
#[track_caller]
/// An approval names the head its reviewer read: the one `change show`
/// gives now.
pub fn review(hosted: &Hosted, who: &str, number: i64, verdict: &str) -> Value {
    let mut args =
        vec!["review".to_owned(), PROJECT.to_owned(), number.to_string(), verdict.to_owned(), "--json".into()];
    if verdict == "--approve" {
        let shown = change(hosted, who, &["show", PROJECT, &number.to_string(), "--json"]).json();
        args.extend(["--head".to_owned(), shown["head"].as_str().expect("a head").to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let made = change(hosted, who, &args).json();
    assert_eq!(made["reviewer"], who, "{made}");
    made
}

/// `change merge --json` as `who`, whatever comes of it.
pub fn try_merge(hosted: &Hosted, who: &str, number: i64) -> Run {
    change(hosted, who, &["merge", PROJECT, &number.to_string(), "--json"])
}

/// A merge that must succeed: the merge commit.
#[track_caller]
pub fn merge(hosted: &Hosted, who: &str, number: i64) -> String {
    let merged = try_merge(hosted, who, number).json();
    assert_eq!(merged["change"]["state"], "merged", "{merged}");
    assert_eq!(merged["change"]["merged_by"], who, "{merged}");
    assert_eq!(merged["gate"]["open"], true, "{merged}");
    merged["change"]["merge_commit"].as_str().expect("a merge commit").to_owned()
}

/// alice's workspace with main seeded, on a new branch `branch`.
pub fn alice_on_branch<'a>(hosted: &'a Hosted, branch: &str) -> (Workspace<'a>, String) {
    let work = hosted.workspace("alice", "alice", &hosted.alice);
    let base = hosted.seed_main(&work);
    work.ok(&["checkout", "-q", "-b", branch]);
    (work, base)
}

/// Checks out the server's main as a new local branch `branch`.
pub fn branch_from_main(work: &Workspace<'_>, branch: &str) -> String {
    work.ok(&["fetch", "-q", "origin", "refs/heads/main"]);
    work.ok(&["checkout", "-q", "-B", branch, "FETCH_HEAD"]);
    work.ok(&["rev-parse", "HEAD"])
}

/// Polls `probe` every 100 ms, for at most 10 s, until it gives something.
pub fn eventually<T>(mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..100 {
        if let Some(found) = probe() {
            return Some(found);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// One change of its own file on a new branch `part-I` from `base`, pushed
/// by alice, approved by bob and merged by alice: the merge commit.
pub fn merge_part(hosted: &Hosted, work: &Workspace<'_>, base: &str, i: usize) -> String {
    let branch = format!("part-{i}");
    work.ok(&["checkout", "-q", "-B", &branch, base]);
    let file = format!("src/part-{i}.txt");
    super::builds::commit_files(work, &[(&file, &format!("part {i}\n"), false)], "A part");
    work.ok(&["push", "-q", "origin", &branch]);
    let number = open(hosted, "alice", &branch, "A part");
    review(hosted, "bob", number, "--approve");
    merge(hosted, "alice", number)
}
