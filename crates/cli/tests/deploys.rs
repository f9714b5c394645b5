//! End-to-end tests of environments and deployments: a build goes to
//! staging on its own and to production through independent approval and
//! test sign-off, the deployer runs the build's own deploy script with the
//! verified artifacts, and nobody approves or signs off a release they had
//! a hand in.

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::builds::{builder_key, commit_files, custody, finished_build, merge_a_change, service_key, sha256_hex};
use support::deploys::{
    build_section, deploy_to, deployment_reaching, group, pipeline_with_environments, refused_rule, release_managers,
    seed_deploying, statement_of, Target, DEPLOY_SCRIPT,
};
use support::flow::{branch_from_main, merge, open, review, team};
use support::hosted::{Backend, Hosted, PROJECT};
use support::verify::{python, VERIFY_ENVELOPE};

/// Deployment `number`'s attestation as a statement, its signature checked
/// against the deployer key by securesystemslib (and found not to verify
/// with the builder key) where Python is there.
fn attested(hosted: &Hosted, number: i64) -> Value {
    let envelope = custody(hosted, &["deploy", "attestation", PROJECT, &number.to_string(), "--json"]).json();
    let file = hosted.sandbox.path(&format!("deployment-{number}.json"));
    std::fs::write(&file, envelope.to_string()).expect("write the envelope");
    let verify = |key: std::path::PathBuf| {
        python(VERIFY_ENVELOPE, &[file.to_str().expect("UTF-8"), key.to_str().expect("UTF-8")])
    };
    let Some(output) = verify(service_key(hosted, "deployer")) else { return statement_of(&envelope) };
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let wrong = verify(builder_key(hosted)).expect("python ran before");
    assert!(!wrong.status.success(), "a deployment attestation verified with the builder key");
    serde_json::from_slice(&output.stdout).expect("the statement")
}

fn staging_deploys_itself_and_production_waits_for_an_independent_approver(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    release_managers(&hosted, &["carol", "bob", "alice"]);
    let policy = pipeline_with_environments("");
    let work = seed_deploying(&hosted, &policy, DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    let digest = build["artifacts"][0]["digest"].as_str().expect("a digest").to_owned();

    // Staging has no gate: the build goes there on its own, then waits for production.
    let staging = deployment_reaching(&hosted, 1, &["succeeded", "failed"]);
    assert_eq!(staging["status"], "succeeded", "{staging}");
    assert_eq!(staging["environment"], "staging");
    assert_eq!(staging["requested_by"], Value::Null, "an automatic promotion");
    let log = custody(&hosted, &["deploy", "log", PROJECT, "1"]).expect_code(0).stdout;
    assert!(log.contains("deploying to staging build 1"), "{log}");
    assert!(log.contains(&digest), "the verified artifact was there: {log}");
    let production = deployment_reaching(&hosted, 2, &["pending"]);
    assert_eq!(production["environment"], "production", "{production}");

    // alice wrote the change and bob reviewed it: neither may approve.
    let refused = custody(&hosted, &["deploy", "approve", PROJECT, "2", "--json"]);
    assert_eq!(refused.code(), Some(1), "{refused:#?}");
    assert_eq!(refused.json_error()["error"]["reasons"][0]["rule"], "deploy.approver_not_author", "{refused:#?}");
    let refused = hosted.run_as("bob", &["deploy", "approve", PROJECT, "2", "--json"]);
    assert_eq!(refused.json_error()["error"]["reasons"][0]["rule"], "deploy.approver_not_reviewer", "{refused:#?}");
    let gate = custody(&hosted, &["deploy", "gate", PROJECT, "2", "--json"]);
    assert_eq!(gate.code(), Some(1), "a closed gate exits 1: {gate:#?}");

    // carol did neither: her approval opens the gate and the deployer runs.
    let approved = hosted.run_as("carol", &["deploy", "approve", PROJECT, "2", "-m", "ship it", "--json"]).json();
    assert_eq!(approved["gate"]["open"], true, "{approved}");
    let production = deployment_reaching(&hosted, 2, &["succeeded", "failed"]);
    assert_eq!(production["status"], "succeeded", "{production}");
    let shown = custody(&hosted, &["env", "show", PROJECT, "production", "--json"]).json();
    assert_eq!(shown["live"]["build"], 1, "{shown}");

    // The deployer's attestation verifies with an implementation that is not custody's.
    let statement = attested(&hosted, 2);
    assert_eq!(statement["predicateType"], "https://custody.dev/attestation/deployment/v1", "{statement}");
    assert_eq!(statement["subject"][0]["digest"]["sha256"], digest.as_str(), "{statement}");
    let predicate = &statement["predicate"];
    assert_eq!(predicate["environment"], "production", "{statement}");
    assert_eq!(predicate["approvers"], json!(["carol"]), "{statement}");
    assert_eq!(predicate["previous_deployment"], Value::Null, "{statement}");
    assert_eq!(predicate["result"], "succeeded", "{statement}");
    let approvals = hosted.audit_events("deploy.approve");
    assert_eq!(approvals.len(), 1, "refused approvals write nothing: {approvals:?}");
    assert_eq!(approvals[0]["actor"], "carol");

    // carol breaks the glass to deploy again: she cannot approve her own
    // request, and it stays an open finding until an admin reviews it.
    let asked = hosted.run_as("carol", &["deploy", "request", PROJECT, "production", "--build", "1", "--break-glass"]);
    assert_eq!(asked.code(), Some(2), "a break-glass request needs a reason: {asked:#?}");
    let asked = hosted
        .run_as(
            "carol",
            &[
                "deploy",
                "request",
                PROJECT,
                "production",
                "--build",
                "1",
                "--break-glass",
                "--reason",
                "hotfix",
                "--json",
            ],
        )
        .json();
    let number = asked["deployment"]["number"].as_i64().expect("a number");
    assert_eq!(asked["deployment"]["break_glass"], "hotfix", "{asked}");
    let own = hosted.run_as("carol", &["deploy", "approve", PROJECT, &number.to_string(), "--json"]);
    assert_eq!(own.json_error()["error"]["reasons"][0]["rule"], "deploy.approver_not_requester", "{own:#?}");
    let findings = hosted.as_admin(&["finding", "list", "--open", "--json"]).json();
    assert_eq!(findings.as_array().map(Vec::len), Some(1), "{findings}");
    let id = findings[0]["id"].to_string();
    hosted.as_admin(&["finding", "resolve", &id, "-m", "reviewed with carol"]).expect_code(0);
    assert_eq!(hosted.as_admin(&["finding", "list", "--open", "--json"]).json(), serde_json::json!([]));
}

fn a_deploy_gets_its_secrets_and_nobody_sees_them(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let value = "correct-horse-battery-staple";
    let script = "#!/bin/sh\necho \"password is $DB_PASSWORD\"\nprintf %s \"$DB_PASSWORD\" | sha256sum\n";
    let policy = format!("{}\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n", build_section());
    // Only an admin sets a secret, and only through a grant (applied at once
    // while the instance has a single admin).
    let set = |who: &str| {
        let mut command = hosted.sandbox.as_user(who);
        command.args(["secret", "set", PROJECT, "staging", "DB_PASSWORD", "--json"]);
        if who != "admin" {
            command.env("CUSTODY_SERVER", &hosted.server.url).env("CUSTODY_TOKEN", hosted.token(who));
        }
        support::run_with_input(command, Some(&format!("{value}\n")))
    };
    let refused = set("alice");
    assert_eq!(refused.code(), Some(1), "{refused:#?}");
    let made = set("admin").json();
    assert_eq!(made["version"], 1, "{made}");
    assert_eq!(made["grant"]["status"], "bootstrap", "{made}");
    let listed = hosted.as_admin(&["secret", "list", PROJECT, "staging", "--json"]);
    assert!(!listed.stdout.contains(value), "{listed:#?}");
    assert_eq!(listed.json()[0]["version"], 1);

    let work = seed_deploying(&hosted, &policy, script);
    merge_a_change(&hosted, &work);
    let staging = deployment_reaching(&hosted, 1, &["succeeded", "failed"]);
    assert_eq!(staging["status"], "succeeded", "{staging}");
    let log = custody(&hosted, &["deploy", "log", PROJECT, "1"]).expect_code(0).stdout;
    assert!(log.contains("password is [secret DB_PASSWORD]"), "{log}");
    assert!(log.contains(&sha256_hex(value.as_bytes())), "the script got the value: {log}");
    assert!(!log.contains(value), "{log}");
    let envelope = custody(&hosted, &["deploy", "attestation", PROJECT, "1", "--json"]).json();
    let statement = statement_of(&envelope);
    assert_eq!(statement["predicate"]["secrets"], serde_json::json!({ "DB_PASSWORD": 1 }), "{statement}");
    assert!(!envelope.to_string().contains(value));
    // At rest, the database holds only the sealed value.
    if backend == Backend::Sqlite {
        let data = hosted.sandbox.path("data");
        for file in ["custody.db", "custody.db-wal"] {
            let bytes = std::fs::read(data.join(file)).unwrap_or_default();
            assert!(!bytes.windows(value.len()).any(|w| w == value.as_bytes()), "{file} holds the secret in the clear");
        }
    }
}

fn a_build_whose_provenance_signature_was_altered_is_never_deployed(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    release_managers(&hosted, &["carol"]);
    let policy = format!(
        "{}\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\napprovals = 1\napprovers = \"release-managers\"\n",
        build_section()
    );
    let work = seed_deploying(&hosted, &policy, DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    assert_eq!(finished_build(&hosted, 1)["status"], "succeeded");
    deployment_reaching(&hosted, 1, &["pending"]);
    // Someone with database access swaps the provenance's signature.
    let url = match &hosted.database {
        Some(database) => database.url.clone(),
        None => format!("sqlite://{}", hosted.sandbox.path("data").join("custody.db").display()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(custody_store::testing::execute_raw(
        &url,
        "UPDATE builds SET provenance = REPLACE(provenance, '\"sig\":\"', '\"sig\":\"AAAA')",
    ));
    hosted.run_as("carol", &["deploy", "approve", PROJECT, "1"]).expect_code(0);
    let refused = deployment_reaching(&hosted, 1, &["succeeded", "failed"]);
    assert_eq!(refused["status"], "failed", "{refused}");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("does not verify with the builder key") && reason.contains("nothing was deployed"),
        "{refused}"
    );
    let log = custody(&hosted, &["deploy", "log", PROJECT, "1"]).expect_code(0).stdout;
    assert!(!log.contains("deploying"), "the script never ran: {log}");
}

/// The seed's story, end to end: alice writes, bob reviews, the build
/// service builds, staging deploys itself, dave signs off the manual test,
/// carol approves production, and the deployer ships the artifact to a
/// server outside the sandbox. The attestation names each person in their
/// duty, and nobody holds two.
fn the_seed_story_from_alices_commit_to_production(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["carol"]);
    group(&hosted, "testers", &["dave"]);
    let target = Target::start();
    let policy = pipeline_with_environments("testers = \"testers\"\n");
    let work = seed_deploying(&hosted, &policy, &deploy_to(&target));
    let merge_commit = merge_a_change(&hosted, &work);
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    let digest = build["artifacts"][0]["digest"].as_str().expect("a digest").to_owned();

    // Staging has no gate: the build goes there on its own.
    let staging = deployment_reaching(&hosted, 1, &["succeeded", "failed"]);
    assert_eq!(staging["status"], "succeeded", "{staging}");
    let received = target.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!((received[0].method.as_str(), received[0].path.as_str()), ("POST", "/staging?build=1"));
    assert_eq!(received[0].body_sha256, digest, "staging got the built artifact");

    // Production waits for a tester and an approver.
    deployment_reaching(&hosted, 2, &["pending"]);
    let gate = custody(&hosted, &["deploy", "gate", PROJECT, "2", "--json"]);
    assert_eq!(gate.code(), Some(1), "{gate:#?}");
    let failing: Vec<String> = serde_json::from_str::<Value>(&gate.stdout).expect("the gate")["gate"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["passed"] == false)
        .map(|r| r["rule"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(failing, ["deploy.approvals", "deploy.test_sign_off"], "{}", gate.stdout);
    let signed =
        hosted.run_as("dave", &["deploy", "sign-off", PROJECT, "2", "--passed", "-m", "checkout works", "--json"]);
    assert_eq!(signed.json()["gate"]["open"], false, "a sign-off alone does not open the gate");
    assert!(target.received().len() == 1, "nothing reached production before its approval");
    let approved = hosted.run_as("carol", &["deploy", "approve", PROJECT, "2", "-m", "ship it", "--json"]).json();
    assert_eq!(approved["gate"]["open"], true, "{approved}");

    let production = deployment_reaching(&hosted, 2, &["succeeded", "failed"]);
    assert_eq!(production["status"], "succeeded", "{production}");
    let received = target.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[1].path, "/production?build=1");
    assert_eq!(received[1].body_sha256, digest, "production got the very artifact the builder signed");
    let log = custody(&hosted, &["deploy", "log", PROJECT, "2"]).expect_code(0).stdout;
    assert!(log.contains(&format!("deploying build 1 of {merge_commit} to production")), "{log}");
    let shown = custody(&hosted, &["env", "show", PROJECT, "production", "--json"]).json();
    assert_eq!(shown["live"]["build"], 1, "{shown}");

    // The attestation, checked by an implementation that is not custody's,
    // names who held each duty.
    let statement = attested(&hosted, 2);
    let predicate = &statement["predicate"];
    assert_eq!(statement["subject"][0]["digest"]["sha256"], digest.as_str(), "{statement}");
    assert_eq!(predicate["commit"], merge_commit.as_str(), "{statement}");
    assert_eq!(predicate["release"], json!([{ "change": 1, "authors": ["alice"], "reviewers": ["bob"] }]));
    assert!(predicate["builder"].is_string(), "the build service built it: {statement}");
    assert_eq!(predicate["approvers"], json!(["carol"]), "{statement}");
    assert_eq!(predicate["testers"], json!(["dave"]), "{statement}");
    assert_eq!(predicate["requester"], Value::Null, "promoted by custody, asked for by nobody: {statement}");
    assert!(predicate["deployer"].is_string(), "{statement}");
    assert_eq!(predicate["previous_deployment"], Value::Null, "{statement}");
    assert_eq!(predicate["result"], "succeeded", "{statement}");
    let people = ["alice", "bob", "carol", "dave"];
    let named = [&predicate["release"][0]["authors"], &predicate["release"][0]["reviewers"], &predicate["approvers"]]
        .into_iter()
        .chain([&predicate["testers"]])
        .flat_map(|list| list.as_array().cloned().unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(named, people.map(Value::from), "four duties, four different people");
}

/// A release is every change merged since what is live. Nobody who wrote
/// or reviewed any of them approves it or signs off its tests, even when
/// their change is not the newest; a rollback's requester does not approve
/// it either.
fn nobody_approves_or_signs_off_a_release_they_had_a_hand_in(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["alice", "bob", "carol", "dave"]);
    group(&hosted, "testers", &["alice", "dave"]);
    let policy = pipeline_with_environments("testers = \"testers\"\n");
    let work = seed_deploying(&hosted, &policy, DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    assert_eq!(finished_build(&hosted, 1)["status"], "succeeded");
    assert_eq!(deployment_reaching(&hosted, 1, &["succeeded", "failed"])["status"], "succeeded");
    deployment_reaching(&hosted, 2, &["pending"]);

    // carol's change goes in after alice's, reviewed by bob.
    let carol = hosted.workspace("carol", "carol", &hosted.token("carol"));
    branch_from_main(&carol, "tuning");
    commit_files(&carol, &[("src/tuning.txt", "fast\n", false)], "Tuning");
    carol.ok(&["push", "-q", "origin", "tuning"]);
    let number = open(&hosted, "carol", "tuning", "Tuning");
    review(&hosted, "bob", number, "--approve");
    merge(&hosted, "carol", number);
    assert_eq!(finished_build(&hosted, 2)["status"], "succeeded");
    let staging = deployment_reaching(&hosted, 3, &["succeeded", "failed"]);
    assert_eq!((staging["status"].as_str(), staging["build"].as_i64()), (Some("succeeded"), Some(2)), "{staging}");
    let production = deployment_reaching(&hosted, 4, &["pending"]);
    assert_eq!(production["build"], 2, "{production}");

    // Build 2's release holds both changes: alice's is not the newest, and
    // still she may not approve it; bob reviewed both; carol wrote one.
    let gate = custody(&hosted, &["deploy", "gate", PROJECT, "4", "--json"]);
    let gate: Value = serde_json::from_str(&gate.stdout).expect("the gate");
    assert_eq!(gate["release"], json!([1, 2]), "{gate}");
    let approve = |who: &str| hosted.run_as(who, &["deploy", "approve", PROJECT, "4", "--json"]);
    assert_eq!(refused_rule(&approve("alice")), "deploy.approver_not_author");
    assert_eq!(refused_rule(&approve("bob")), "deploy.approver_not_reviewer");
    assert_eq!(refused_rule(&approve("carol")), "deploy.approver_not_author");
    let sign_off = hosted.run_as("alice", &["deploy", "sign-off", PROJECT, "4", "--passed", "--json"]);
    assert_eq!(refused_rule(&sign_off), "deploy.tester_not_author");
    let reason = sign_off.json_error()["error"]["reasons"][0].clone();
    assert!(reason["message"].as_str().is_some_and(|m| m.contains("alice")), "the refusal names her: {reason}");
    assert!(reason["satisfy"].is_string(), "and says what would do: {reason}");
    assert!(hosted.audit_events("deploy.approve").is_empty(), "refusals write nothing");

    // dave had no hand in it.
    hosted.run_as("dave", &["deploy", "sign-off", PROJECT, "4", "--passed"]).expect_code(0);
    hosted.run_as("dave", &["deploy", "approve", PROJECT, "4"]).expect_code(0);
    assert_eq!(deployment_reaching(&hosted, 4, &["succeeded", "failed"])["status"], "succeeded");

    // Build 1 is still waiting for production: carol cancels that, then
    // asks to roll back to it. She cannot approve her own request.
    let cancelled =
        hosted.run_as("carol", &["deploy", "cancel", PROJECT, "2", "-m", "superseded by build 2", "--json"]).json();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let asked = hosted.run_as("carol", &["deploy", "request", PROJECT, "production", "--build", "1", "--json"]).json();
    let rollback = asked["deployment"]["number"].as_i64().expect("a number");
    assert_eq!(asked["deployment"]["requested_by"], "carol", "{asked}");
    let own = hosted.run_as("carol", &["deploy", "approve", PROJECT, &rollback.to_string(), "--json"]);
    assert_eq!(refused_rule(&own), "deploy.approver_not_requester");
    hosted.run_as("dave", &["deploy", "sign-off", PROJECT, &rollback.to_string(), "--passed"]).expect_code(0);
    hosted.run_as("dave", &["deploy", "approve", PROJECT, &rollback.to_string()]).expect_code(0);
    assert_eq!(deployment_reaching(&hosted, rollback, &["succeeded", "failed"])["status"], "succeeded");
    let shown = custody(&hosted, &["env", "show", PROJECT, "production", "--json"]).json();
    assert_eq!(shown["live"]["build"], 1, "rolled back: {shown}");
}

/// Production comes after staging: a build that never went live there
/// waits, whoever approves it.
fn a_build_never_live_in_staging_does_not_reach_production(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["carol", "dave"]);
    let script = "#!/bin/sh\nif [ \"$CUSTODY_ENVIRONMENT\" = staging ]; then echo staging is down; exit 3; fi\n\
                  echo deployed to $CUSTODY_ENVIRONMENT\n";
    let work = seed_deploying(&hosted, &pipeline_with_environments(""), script);
    merge_a_change(&hosted, &work);
    assert_eq!(finished_build(&hosted, 1)["status"], "succeeded");
    let staging = deployment_reaching(&hosted, 1, &["succeeded", "failed"]);
    assert_eq!(staging["status"], "failed", "{staging}");
    assert!(staging["reason"].as_str().is_some_and(|r| r.contains("exited with code 3")), "{staging}");

    let asked = hosted.run_as("carol", &["deploy", "request", PROJECT, "production", "--build", "1", "--json"]).json();
    assert_eq!(asked["deployment"]["status"], "pending", "{asked}");
    let number = asked["deployment"]["number"].as_i64().expect("a number").to_string();
    let approved = hosted.run_as("dave", &["deploy", "approve", PROJECT, &number, "--json"]).json();
    assert_eq!(approved["gate"]["open"], false, "{approved}");
    let rules = approved["gate"]["rules"].as_array().expect("rules");
    let previous = rules.iter().find(|r| r["rule"] == "deploy.previous_environment").expect("the rule");
    assert_eq!(previous["passed"], false, "{approved}");
    assert!(previous["satisfy"].as_str().is_some_and(|s| s.contains("staging")), "{previous}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let still = custody(&hosted, &["deploy", "show", PROJECT, &number, "--json"]).json();
    assert_eq!(still["status"], "pending", "{still}");
    assert!(hosted.audit_events("deploy.start").iter().all(|e| e["details"]["environment"] != "production"));
}

/// Whether a process whose command line is exactly `words` is running.
fn running(words: &[&str]) -> bool {
    let wanted = words.join("\0");
    std::fs::read_dir("/proc").into_iter().flatten().filter_map(Result::ok).any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|line| String::from_utf8_lossy(&line).trim_end_matches('\0') == wanted)
    })
}

/// A merged change whose staging deploy script prints `started`, then
/// sleeps for `pause` seconds (a number no other test sleeps for, to find
/// its process): returns once the script is running.
fn staging_deploy_sleeping(hosted: &Hosted, pause: &str) {
    let script = format!("#!/bin/sh\necho started\nsleep {pause}\necho finished\n");
    let policy = format!("{}\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n", build_section());
    let work = seed_deploying(hosted, &policy, &script);
    merge_a_change(hosted, &work);
    assert_eq!(finished_build(hosted, 1)["status"], "succeeded");
    deployment_reaching(hosted, 1, &["running"]);
    assert!(support::flow::eventually(|| running(&["sleep", pause]).then_some(())).is_some(), "the script runs");
}

/// A server killed (SIGKILL) while a deploy script runs: at the next start
/// the deployment fails at once, saying its process ended, rather than when
/// its lease would have run out, and it is not run again.
fn a_deployment_whose_server_was_killed_fails_at_the_next_start(backend: Backend) {
    let Some(mut hosted) = team(backend) else { return };
    let pause = if backend == Backend::Sqlite { "6191" } else { "6192" };
    staging_deploy_sleeping(&hosted, pause);
    hosted.server.kill().expect("the server dies");
    hosted.restart_with(&[]);
    // The deployer's lease runs 30 s; the restart releases it within a poll.
    let failed = support::flow::eventually(|| {
        let shown = custody(&hosted, &["deploy", "show", PROJECT, "1", "--json"]).json();
        (shown["status"] == "failed").then_some(shown)
    })
    .expect("the deployment failed soon after the restart");
    assert!(failed["reason"].as_str().is_some_and(|r| r.contains("its process ended")), "{failed}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!running(&["sleep", pause]), "the deployment ran again after the restart");
}

/// A commit holding `.custody-artifacts` as a link to a host directory
/// (where the deployer, as root, would write the artifacts): the deployment
/// fails naming the path, and nothing lands in that directory.
fn a_committed_link_does_not_redirect_the_deployers_artifacts(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let policy = format!("{}\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n", build_section());
    let work = seed_deploying(&hosted, &policy, DEPLOY_SCRIPT);
    let host = hosted.sandbox.path("host-dir");
    std::fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::symlink(&host, work.dir.join(".custody-artifacts")).unwrap();
    work.ok(&["add", ".custody-artifacts"]);
    merge_a_change(&hosted, &work);
    assert_eq!(finished_build(&hosted, 1)["status"], "succeeded");
    let failed = deployment_reaching(&hosted, 1, &["failed", "succeeded"]);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["reason"].as_str().is_some_and(|r| r.contains(".custody-artifacts")), "{failed}");
    assert_eq!(std::fs::read_dir(&host).unwrap().count(), 0, "nothing was written through the link");
}

/// A running deployment can be stopped: its script dies with everything it
/// started, the log keeps what it printed, and it is recorded as cancelled.
fn cancelling_a_running_deployment_stops_its_script(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let pause = if backend == Backend::Sqlite { "6171" } else { "6172" };
    staging_deploy_sleeping(&hosted, pause);

    let stopping = hosted.run_as("carol", &["deploy", "cancel", PROJECT, "1", "-m", "wrong window", "--json"]).json();
    assert!(
        stopping["status"] == "running" && stopping["cancel_requested"] == "cancelled by carol: wrong window"
            || stopping["status"] == "cancelled",
        "{stopping}"
    );
    let cancelled = deployment_reaching(&hosted, 1, &["cancelled", "succeeded", "failed"]);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let reason = cancelled["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("cancelled by carol: wrong window") && reason.contains("stopped"), "{cancelled}");
    assert!(support::flow::eventually(|| (!running(&["sleep", pause])).then_some(())).is_some(), "the script is gone");
    let log = custody(&hosted, &["deploy", "log", PROJECT, "1"]).expect_code(0).stdout;
    assert!(log.contains("started") && !log.contains("finished"), "{log}");
    let again = hosted.run_as("carol", &["deploy", "cancel", PROJECT, "1", "--json"]);
    assert_eq!((again.code(), again.json_error()["error"]["code"].as_str()), (Some(2), Some("conflict")), "{again:#?}");
    let statement = statement_of(&custody(&hosted, &["deploy", "attestation", PROJECT, "1", "--json"]).json());
    assert_eq!(statement["predicate"]["result"], "cancelled", "{statement}");
    let events = hosted.audit_events("deploy.cancel");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0]["actor"].as_str(), events[0]["details"]["was"].as_str()), (Some("carol"), Some("running")));
}

fn a_change_that_lowers_productions_gate_does_not_deploy_itself(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["carol"]);
    group(&hosted, "platform", &["dave"]);
    let strict = pipeline_with_environments("");
    let work = seed_deploying(&hosted, &strict, DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    deployment_reaching(&hosted, 1, &["succeeded"]);
    deployment_reaching(&hosted, 2, &["pending"]);
    hosted.run_as("carol", &["deploy", "approve", PROJECT, "2", "--json"]).expect_code(0);
    deployment_reaching(&hosted, 2, &["succeeded"]);

    // alice's change lets production deploy with no approval; bob reviews
    // it and dave, for the pipeline's owners, approves it too.
    let lax = strict.replace("approvals = 1\napprovers = \"release-managers\"\n", "");
    assert_ne!(lax, strict);
    branch_from_main(&work, "lax");
    commit_files(
        &work,
        &[(support::builds::PIPELINE, &lax, false), ("src/app.txt", "version 3\n", false)],
        "Ship faster",
    );
    work.ok(&["push", "-q", "origin", "lax"]);
    let number = open(&hosted, "alice", "lax", "Ship faster");
    review(&hosted, "bob", number, "--approve");
    review(&hosted, "dave", number, "--approve");
    merge(&hosted, "alice", number);

    // Merged, it opens a finding that names what it weakened.
    let findings = hosted.as_admin(&["finding", "list", "--open", "--json"]).json();
    assert_eq!(findings.as_array().map(Vec::len), Some(1), "{findings}");
    assert_eq!(findings[0]["kind"], "gate_weakened", "{findings}");
    let summary = findings[0]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("production: approvals lowered from 1 to 0"), "{findings}");
    let merged = hosted.audit_events("change.merge");
    assert_eq!(
        merged.last().map(|e| e["details"]["weakened"].clone()),
        Some(json!([
            "production: approvals lowered from 1 to 0",
            "production: approvers changed from release-managers to none"
        ]))
    );
    let envelope = hosted.run_as("alice", &["change", "attestation", PROJECT, &number.to_string(), "--json"]).json();
    assert_eq!(statement_of(&envelope)["predicate"]["weakened"][0], "production: approvals lowered from 1 to 0");

    // Its release still needs production's approval, as the commit live
    // there has it: the change does not govern its own deployment.
    let build = finished_build(&hosted, 2);
    assert_eq!(build["status"], "succeeded", "{build}");
    deployment_reaching(&hosted, 3, &["succeeded"]);
    let production = deployment_reaching(&hosted, 4, &["pending", "queued", "running", "succeeded"]);
    assert_eq!(
        (production["environment"].as_str(), production["status"].as_str()),
        (Some("production"), Some("pending"))
    );
    let gate = custody(&hosted, &["deploy", "gate", PROJECT, "4", "--json"]);
    assert_eq!(gate.code(), Some(1), "{gate:#?}");
    let gate: Value = serde_json::from_str(&gate.stdout).unwrap_or_else(|e| panic!("{e}: {gate:#?}"));
    let approvals =
        gate["gate"]["rules"].as_array().expect("rules").iter().find(|r| r["rule"] == "deploy.approvals").cloned();
    let approvals = approvals.unwrap_or_else(|| panic!("no approval rule: {gate}"));
    assert_eq!(approvals["passed"], false, "{gate}");
    assert!(approvals["message"].as_str().unwrap_or_default().contains("live in the environment"), "{gate}");
    hosted.run_as("carol", &["deploy", "approve", PROJECT, "4", "--json"]).expect_code(0);
    deployment_reaching(&hosted, 4, &["succeeded"]);

    // An auditor verifying the release offline is shown the weakening.
    let (trust, bundle) = (hosted.sandbox.path("trust.json"), hosted.sandbox.path("bundle.json"));
    hosted.as_admin(&["trust", "export", "-o", trust.to_str().expect("UTF-8")]).expect_code(0);
    let bundle_path = bundle.to_str().expect("UTF-8");
    hosted.as_admin(&["evidence", "export", PROJECT, "--deployment", "4", "-o", bundle_path]).expect_code(0);
    let verified = hosted.run_as("alice", &["verify", bundle_path, "--trust", trust.to_str().expect("UTF-8")]);
    let verified = verified.expect_code(0);
    assert!(
        verified
            .stdout
            .contains(&format!("change {number}: weakened the gate: production: approvals lowered from 1 to 0")),
        "{verified:#?}"
    );

    // Nobody who had a hand in the change reviews its finding; another admin does.
    let id = findings[0]["id"].to_string();
    hosted.as_admin(&["finding", "resolve", &id, "-m", "agreed with the release managers"]).expect_code(0);
}

fn an_environment_keeps_its_deploy_logs_from_everyone_but_its_log_readers(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["carol"]);
    group(&hosted, "ops", &["dave"]);
    let policy = pipeline_with_environments("log_readers = \"ops\"\n");
    let work = seed_deploying(&hosted, &policy, DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    deployment_reaching(&hosted, 2, &["pending"]);
    hosted.run_as("carol", &["deploy", "approve", PROJECT, "2", "--json"]).expect_code(0);
    deployment_reaching(&hosted, 2, &["succeeded"]);
    // alice wrote the release, carol approved it: neither reads production's log.
    for who in ["alice", "carol"] {
        let refused = hosted.run_as(who, &["deploy", "log", PROJECT, "2", "--json"]);
        assert_eq!(refused.code(), Some(1), "{who}: {refused:#?}");
        assert_eq!(refused_rule(&refused), "deploy.log_reader", "{who}: {refused:#?}");
    }
    let read = hosted.run_as("dave", &["deploy", "log", PROJECT, "2"]).expect_code(0);
    assert!(read.stdout.contains("deploying to production build 1"), "{read:#?}");
    // Staging names no log readers: its log stays the project's.
    let staging = hosted.run_as("alice", &["deploy", "log", PROJECT, "1"]).expect_code(0);
    assert!(staging.stdout.contains("deploying to staging build 1"), "{staging:#?}");
}

on_both_backends! {
    an_environment_keeps_its_deploy_logs_from_everyone_but_its_log_readers,
    a_change_that_lowers_productions_gate_does_not_deploy_itself,
    the_seed_story_from_alices_commit_to_production,
    nobody_approves_or_signs_off_a_release_they_had_a_hand_in,
    a_build_never_live_in_staging_does_not_reach_production,
    cancelling_a_running_deployment_stops_its_script,
    a_deployment_cut_short_by_a_shutdown_fails_and_is_not_run_again,
    a_deployment_whose_server_was_killed_fails_at_the_next_start,
    a_committed_link_does_not_redirect_the_deployers_artifacts,
    staging_deploys_itself_and_production_waits_for_an_independent_approver,
    a_deploy_gets_its_secrets_and_nobody_sees_them,
    a_build_whose_provenance_signature_was_altered_is_never_deployed,
}

/// `custody demo` plays the seed's story on a fresh instance, shows each
/// person in their duty and the refusals they meet, and leaves the server
/// up; it refuses to reuse a data directory that holds anything.
#[test]
fn the_demo_tells_the_seed_story_and_leaves_the_server_running() {
    let sandbox = support::Sandbox::new();
    let data = sandbox.path("demo");
    let mut command = sandbox.as_user("demo");
    command.arg("demo").arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0"]);
    let mut demo = support::Server::start_announced(command, "Press Ctrl-C");
    let told = demo.banner.join("\n");
    for line in [
        "bob (reviewer) reviews and approves change 1",
        "refused by gate.independent_approvals",
        "custody (build service) builds the merged commit",
        "staging received app.tar.gz",
        "refused by deploy.approver_not_author: alice is an author",
        "dave (tester) tests staging by hand and signs off",
        "carol (release manager) approves deployment 2 to production",
        "production received app.tar.gz",
        "change 1: written by alice, reviewed by bob",
        "approved by carol",
        "tested by dave",
    ] {
        assert!(told.contains(line), "the demo did not say {line:?}:\n{told}");
    }
    // The server stays up, and the people's tokens work against it.
    let url =
        told.lines().find_map(|l| l.split("serving ").nth(1)).expect("the demo names its server").trim().to_owned();
    let tokens = std::fs::read_to_string(data.join("demo/tokens")).expect("the tokens file");
    let carol = tokens.lines().find_map(|l| l.strip_prefix("carol ")).expect("carol's token");
    let mut shown = sandbox.as_user("carol");
    shown.env("CUSTODY_SERVER", &url).env("CUSTODY_TOKEN", carol);
    shown.args(["env", "show", "payments", "production", "--json"]);
    let shown = support::run(shown).json();
    assert_eq!(shown["live"]["build"], 1, "{shown}");
    let status = demo.stop().expect("the demo stops on SIGTERM");
    assert!(status.success(), "{status:?}: {}", demo.stderr());
    let address = url.trim_start_matches("http://");
    assert!(std::net::TcpStream::connect(address).is_err(), "the demo's server stopped with it");

    let mut again = sandbox.as_user("demo");
    again.arg("demo").arg("--data-dir").arg(&data).args(["--listen", "127.0.0.1:0"]);
    let again = support::run(again);
    assert_eq!(again.code(), Some(2), "{again:#?}");
    assert!(again.stderr.contains("is not empty"), "{again:#?}");
}

/// A server stopped while a deploy script runs kills the script and fails
/// the deployment at once, saying why; after the restart it is not run
/// again on its own, since a deploy script need not be safe to repeat.
fn a_deployment_cut_short_by_a_shutdown_fails_and_is_not_run_again(backend: Backend) {
    let Some(mut hosted) = team(backend) else { return };
    let pause = if backend == Backend::Sqlite { "6181" } else { "6182" };
    staging_deploy_sleeping(&hosted, pause);

    let status = hosted.server.stop().expect("the server stops on SIGTERM");
    assert!(status.success(), "{status:?}: {}", hosted.server.stderr());
    assert!(!running(&["sleep", pause]), "the script outlived the server");
    let url = hosted.database.as_ref().map(|d| d.url.clone());
    hosted.server = hosted.sandbox.serve_on("data", url.as_deref());
    let failed = custody(&hosted, &["deploy", "show", PROJECT, "1", "--json"]).json();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["reason"].as_str().is_some_and(|r| r.contains("was stopped while the deploy script ran")),
        "{failed}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1000));
    assert!(!running(&["sleep", pause]), "the deployment ran again after the restart");
    // The admin's stored login names the old port: ask with the token.
    let started =
        hosted.as_user("admin", &hosted.admin, &["audit", "log", "--action", "deploy.start", "--json"]).json();
    assert_eq!(started.as_array().map(Vec::len), Some(1), "started once: {started}");
}
