//! A server killed between the steps of a merge leaves nothing half-done:
//! the merge is recorded before its ref moves, and the next start moves the
//! ref of a merge it finds recorded and not yet moved. The kills are real
//! (`abort()` at a named point, set by `CUSTODY_CRASH_AT`), the restart is a
//! new `custody serve` on the same data directory and database.
//!
//! Every scenario runs on both backends.

#[macro_use]
mod support;

use serde_json::Value;
use support::flow::{alice_on_branch, branch_from_main, change, eventually, merge, open, review, try_merge};
use support::hosted::{Backend, Hosted, PROJECT};

/// A team (alice, bob) on a server that dies at `point`, with alice's change
/// approved by bob: the hosted instance, main's tip, and the change.
fn approved_change_on_a_server_dying_at(backend: Backend, point: &str) -> Option<(Hosted, String, i64)> {
    let hosted = Hosted::on_with(backend, &[("CUSTODY_CRASH_AT", point)])?;
    hosted.add_user("bob", "write");
    let (work, base) = alice_on_branch(&hosted, "feature");
    work.commit("feature.txt", "a feature\n", "Add a feature");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Add a feature");
    review(&hosted, "bob", number, "--approve");
    Some((hosted, base, number))
}

/// Lets the dying merge die, then starts the server again, without the crash.
fn crash_and_restart(hosted: &mut Hosted, number: i64) {
    let dying = try_merge(hosted, "bob", number);
    assert_eq!(dying.code(), Some(3), "the server died under the merge: {dying:#?}");
    let status = hosted.server.wait_for_exit(std::time::Duration::from_secs(10));
    assert!(status.is_some_and(|s| !s.success()), "the server was killed: {}", hosted.server.stderr());
    hosted.restart_with(&[]);
}

fn show(hosted: &Hosted, number: i64) -> Value {
    change(hosted, "alice", &["show", PROJECT, &number.to_string(), "--json"]).json()
}

/// After the restart: main holds the recorded merge, once, with its event
/// and build; and a next change merges on top of it.
fn assert_merged_once_and_main_moves_on(hosted: &Hosted, base: &str, number: i64) {
    let merged = show(hosted, number);
    assert_eq!(merged["state"], "merged", "{merged}");
    let commit = merged["merge_commit"].as_str().expect("a merge commit").to_owned();
    let main = eventually(|| hosted.server_ref("refs/heads/main").filter(|tip| *tip == commit));
    assert_eq!(main.as_deref(), Some(commit.as_str()), "main holds the recorded merge");
    let merges: Vec<Value> = hosted
        .audit_events("change.merge")
        .into_iter()
        .filter(|e| e["subject"] == format!("change:{PROJECT}/{number}"))
        .collect();
    assert_eq!(merges.len(), 1, "{merges:?}");
    assert_eq!(merges[0]["details"]["merge_commit"], commit.as_str(), "{merges:?}");
    assert_eq!(merges[0]["details"]["base"], base, "{merges:?}");
    let builds = hosted.as_admin(&["build", "list", PROJECT, "--json"]).json();
    let built: Vec<&Value> =
        builds.as_array().expect("builds").iter().filter(|b| b["commit"] == commit.as_str()).collect();
    assert_eq!(built.len(), 1, "one build of the merge: {builds}");
    // Merging it again changes nothing.
    let again = try_merge(hosted, "bob", number);
    assert_eq!(again.code(), Some(1), "{again:#?}");

    // The mainline moves on from the recorded merge.
    let work = hosted.workspace("alice-again", "alice", &hosted.alice);
    branch_from_main(&work, "second");
    work.commit("second.txt", "second\n", "A second feature");
    work.ok(&["push", "-q", "origin", "second"]);
    let second = open(hosted, "alice", "second", "A second feature");
    review(hosted, "bob", second, "--approve");
    let next = merge(hosted, "bob", second);
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(next.as_str()));
    let top: Value = show(hosted, second);
    assert_eq!(top["merge_commit"], next.as_str(), "{top}");
    let parent = hosted.bare(&["rev-parse", &format!("{next}^1")]).stdout.trim().to_owned();
    assert_eq!(parent, commit, "the next merge is made on the recorded one");
}

fn a_merge_recorded_before_a_crash_reaches_main_at_the_next_start(backend: Backend) {
    let Some((mut hosted, base, number)) = approved_change_on_a_server_dying_at(backend, "merge.recorded") else {
        return;
    };
    crash_and_restart(&mut hosted, number);
    assert_merged_once_and_main_moves_on(&hosted, &base, number);
}

fn a_crash_after_the_ref_moved_is_settled_at_the_next_start(backend: Backend) {
    let Some((mut hosted, base, number)) = approved_change_on_a_server_dying_at(backend, "merge.moved") else {
        return;
    };
    crash_and_restart(&mut hosted, number);
    assert_merged_once_and_main_moves_on(&hosted, &base, number);
}

fn a_merge_intent_written_into_the_database_moves_nothing(backend: Backend) {
    let Some(mut hosted) = Hosted::on(backend) else { return };
    hosted.add_user("bob", "write");
    let (work, base) = alice_on_branch(&hosted, "feature");
    let head = work.commit("feature.txt", "unreviewed\n", "Ship it unreviewed");
    work.ok(&["push", "-q", "origin", "feature"]);
    let number = open(&hosted, "alice", "feature", "Unreviewed");
    // An intent to move main onto alice's unreviewed commit, as if custody
    // had recorded its merge; then a restart, which settles intents.
    hosted.tamper(&format!(
        "INSERT INTO merge_intents (project_id, change_number, ref_name, old_tip, new_tip, created_at) \
             SELECT id, {number}, 'refs/heads/main', '{base}', '{head}', 1 FROM projects"
    ));
    hosted.restart_with(&[]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()), "main did not move");
    assert!(hosted.server.stderr().contains("merge_intents row"), "{}", hosted.server.stderr());
    // Merges stop rather than build on it, naming the row.
    review(&hosted, "bob", number, "--approve");
    let refused = try_merge(&hosted, "bob", number);
    assert_eq!(refused.code(), Some(1), "{refused:#?}");
    let error = refused.json_error();
    assert!(
        error["error"]["reasons"][0]["message"].as_str().unwrap_or_default().contains("merge_intents row"),
        "{error}"
    );
    assert_eq!(hosted.server_ref("refs/heads/main").as_deref(), Some(base.as_str()), "main did not move");
}

fn a_build_whose_success_outlived_the_server_is_promoted_at_the_next_start(backend: Backend) {
    use support::builds::{finished_build, merge_a_change};
    use support::deploys::{pipeline_with_environments, seed_deploying, DEPLOY_SCRIPT};
    let Some(mut hosted) = Hosted::on_with(backend, &[("CUSTODY_CRASH_AT", "build.succeeded")]) else { return };
    hosted.add_user("bob", "write");
    let work = seed_deploying(&hosted, &pipeline_with_environments(""), DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    // The build succeeds, and the server dies before promoting it.
    let status = hosted.server.wait_for_exit(std::time::Duration::from_secs(60));
    assert!(status.is_some_and(|s| !s.success()), "the server died after the build: {}", hosted.server.stderr());
    hosted.restart_with(&[]);
    assert_eq!(finished_build(&hosted, 1)["status"], "succeeded");
    let deployments = eventually(|| {
        let listed = hosted.as_admin(&["deploy", "list", PROJECT, "--json"]).json();
        listed.as_array().filter(|l| !l.is_empty()).cloned()
    })
    .expect("the build was promoted after the restart");
    assert_eq!(deployments.len(), 1, "promoted once: {deployments:?}");
    assert_eq!(deployments[0]["environment"], "staging", "{deployments:?}");
    assert_eq!(deployments[0]["build"], 1, "{deployments:?}");
    // Repairing again (a second restart) promotes nothing twice.
    hosted.restart_with(&[]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let listed = hosted.as_admin(&["deploy", "list", PROJECT, "--json"]).json();
    let staging = listed.as_array().expect("deployments").iter().filter(|d| d["environment"] == "staging").count();
    assert_eq!(staging, 1, "{listed}");
}

/// Rounds of a crash under load: each round opens and approves a change,
/// merges it, and kills the server (SIGKILL) at a random moment, during the
/// merge, its build or the promotions that follow; then starts it again and
/// checks that nothing is half-done. `CUSTODY_CRASH_ROUNDS` sets how many
/// rounds (3 unless set; `scripts/crash.sh` runs 50 on each backend).
fn crash_rounds(backend: Backend) {
    use std::time::{Duration, Instant};
    use support::deploys::{build_section, seed_deploying, DEPLOY_SCRIPT};
    let rounds: usize = std::env::var("CUSTODY_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let Some(mut hosted) = Hosted::on(backend) else { return };
    hosted.add_user("bob", "write");
    // Two environments, each promoted to on its own: staging after every
    // build, qa after staging.
    let policy = format!(
        "{}\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n\n\
         [[environment]]\nname = \"qa\"\nafter = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n",
        build_section()
    );
    let seeded = seed_deploying(&hosted, &policy, DEPLOY_SCRIPT);
    let base = hosted.server_ref("refs/heads/main").expect("main");
    drop(seeded);
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("crash rounds: {rounds} on {backend:?}, seed {seed}");
    let mut random = move |below: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % below
    };
    let mut acknowledged = Vec::new();
    let mut anomalies = Vec::new();
    for round in 0..rounds {
        let work = hosted.workspace(&format!("round-{round}"), "alice", &hosted.alice);
        let branch = format!("round-{round}");
        branch_from_main(&work, &branch);
        work.commit(&format!("src/round-{round}.txt"), "a round\n", &format!("Round {round}"));
        work.ok(&["push", "-q", "origin", &branch]);
        let number = open(&hosted, "alice", &branch, &branch);
        review(&hosted, "bob", number, "--approve");
        // Half the kills land within the merge itself, the rest in its
        // build, deployments and promotions.
        let delay = Duration::from_millis(if random(2) == 0 { random(300) } else { random(3000) });
        let pid = hosted.server.pid().expect("the server runs").to_string();
        let merged = std::thread::scope(|scope| {
            let merging = scope.spawn(|| try_merge(&hosted, "alice", number));
            std::thread::sleep(delay);
            let killed = std::process::Command::new("kill").args(["-KILL", &pid]).status();
            assert!(killed.is_ok_and(|s| s.success()), "kill -KILL {pid}");
            merging.join().expect("the merge thread")
        });
        hosted.server.wait_for_exit(Duration::from_secs(10)).expect("the server died");
        if merged.code() == Some(0) {
            acknowledged.push(number);
        }
        hosted.restart_with(&[]);
        // Nothing half-done: once queued work settles, every check holds.
        let deadline = Instant::now() + Duration::from_secs(90);
        let problems = loop {
            let problems = half_done(&hosted, &base, &acknowledged);
            if problems.is_empty() || Instant::now() > deadline {
                break problems;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        eprintln!("round {round}: killed after {delay:?}, merge exit {:?}, problems {problems:?}", merged.code());
        anomalies.extend(problems.into_iter().map(|p| format!("round {round}: {p}")));
    }
    hosted.server.stop();
    let mut verify = hosted.sandbox.as_user("auditor");
    verify.args(["audit", "verify", "--data-dir"]).arg(hosted.sandbox.path("data"));
    if let Some(db) = &hosted.database {
        verify.args(["--database-url", &db.url]);
    }
    let verified = support::run(verify);
    assert_eq!(verified.code(), Some(0), "the ledger verifies after every crash: {verified:#?}");
    assert!(anomalies.is_empty(), "{} anomalies in {rounds} rounds: {anomalies:#?}", anomalies.len());
}

/// What is half-done now, as sentences; empty when nothing is, or while
/// work is still queued or running.
fn half_done(hosted: &Hosted, base: &str, acknowledged: &[i64]) -> Vec<String> {
    let mut problems = Vec::new();
    let list = |what: &str| hosted.as_admin(&[what, "list", PROJECT, "--json"]).json();
    let (builds, deployments) = (list("build"), list("deploy"));
    let (builds, deployments) =
        (builds.as_array().cloned().unwrap_or_default(), deployments.as_array().cloned().unwrap_or_default());
    let busy = |items: &[Value]| items.iter().any(|i| matches!(i["status"].as_str(), Some("queued" | "running")));
    if busy(&builds) || busy(&deployments) {
        return vec!["work still queued or running".into()];
    }
    // Every merge commit on main is a recorded merge, with its attestation.
    let main = hosted.server_ref("refs/heads/main").expect("main");
    let chain = hosted.bare(&["rev-list", "--first-parent", &format!("{base}..{main}")]).stdout;
    let merges = hosted.audit_events("change.merge");
    for commit in chain.lines() {
        let Some(event) = merges.iter().find(|e| e["details"]["merge_commit"] == commit) else {
            problems.push(format!("{commit} is on main and custody recorded no merge of it"));
            continue;
        };
        let number = event["subject"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
        let attestation = change(hosted, "alice", &["attestation", PROJECT, &number]);
        if attestation.code() != Some(0) {
            problems.push(format!("change {number}, merged as {commit}, has no attestation"));
        }
    }
    // Every acknowledged merge is there.
    for number in acknowledged {
        let shown = change(hosted, "alice", &["show", PROJECT, &number.to_string(), "--json"]).json();
        if shown["state"] != "merged" {
            problems.push(format!("change {number}'s merge was acknowledged and it is {}", shown["state"]));
        }
    }
    // Every successful build reached staging, and every success in staging
    // reached qa; nothing started twice.
    let deployed = |build: &Value, environment: &str| {
        deployments.iter().any(|d| d["build"] == *build && d["environment"] == environment)
    };
    for build in builds.iter().filter(|b| b["status"] == "succeeded") {
        if !deployed(&build["number"], "staging") {
            problems.push(format!("build {} succeeded and never reached staging", build["number"]));
        }
    }
    for staged in deployments.iter().filter(|d| d["environment"] == "staging" && d["status"] == "succeeded") {
        if !deployed(&staged["build"], "qa") {
            problems.push(format!("build {} succeeded in staging and never reached qa", staged["build"]));
        }
    }
    let starts = hosted.audit_events("deploy.start");
    for deployment in &deployments {
        let subject = format!("deployment:{PROJECT}/{}", deployment["number"]);
        let started = starts.iter().filter(|e| e["subject"] == subject.as_str()).count();
        if started > 1 {
            problems.push(format!("{subject} started {started} times"));
        }
    }
    problems
}

/// PostgreSQL turned read-only under custody (a failover to a replica,
/// maintenance): writes answer 503 with Retry-After and the CLI exits 3,
/// `/readyz` fails, and both recover once the database takes writes again.
#[test]
fn a_database_that_stops_taking_writes_answers_503_and_is_not_ready() {
    use support::hosted::psql;
    let Some(hosted) = Hosted::on(Backend::Postgres) else { return };
    let name = hosted.database.as_ref().expect("a database").name.clone();
    let read_only = |on: bool| {
        let setting = if on { "on" } else { "off" };
        psql(&format!("ALTER DATABASE {name} SET default_transaction_read_only = {setting}")).expect_code(0);
        // Every connection starts again under the new setting.
        psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .expect_code(0);
    };
    read_only(true);
    let refused = eventually(|| {
        let run = hosted.as_admin(&["user", "add", "bob", "--email", "bob@example.com", "--json"]);
        (run.code() == Some(3)).then_some(run)
    })
    .expect("a write fails as the server's failure, exit 3");
    assert_eq!(refused.json_error()["error"]["code"], "unavailable", "{refused:#?}");
    let answer = support::http_send(
        &hosted.server.url,
        "POST",
        "/api/v1/users",
        &[("Authorization", &format!("Bearer {}", hosted.admin)), ("Content-Type", "application/json")],
        Some(br#"{"name":"carol","email":"carol@example.com"}"#),
    );
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.headers.iter().any(|(k, _)| k == "retry-after"), "{:?}", answer.headers);
    // A pooled connection the database ended answers first as a database
    // that does not answer; the next is a fresh one, read-only.
    let ready = eventually(|| {
        let ready = support::http_send(&hosted.server.url, "GET", "/readyz", &[], None);
        ready.body.contains("writes fail").then_some(ready)
    })
    .expect("/readyz says writes fail");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("writes fail"), "{}", ready.body);

    read_only(false);
    let ready = eventually(|| {
        let ready = support::http_send(&hosted.server.url, "GET", "/readyz", &[], None);
        (ready.status == 200).then_some(ready)
    });
    assert!(ready.is_some(), "ready again once writes succeed");
    // A pooled connection the restart cut may fail once more, as a 503 the
    // client is told to retry: the write then goes through.
    let added = eventually(|| {
        let run = hosted.as_admin(&["user", "add", "bob", "--email", "bob@example.com", "--json"]);
        (run.code() != Some(3)).then_some(run)
    });
    assert_eq!(added.and_then(|run| run.code()), Some(0), "the write goes through once the database takes it");
}

on_both_backends!(
    crash_rounds,
    a_build_whose_success_outlived_the_server_is_promoted_at_the_next_start,
    a_merge_recorded_before_a_crash_reaches_main_at_the_next_start,
    a_crash_after_the_ref_moved_is_settled_at_the_next_start,
    a_merge_intent_written_into_the_database_moves_nothing,
);
