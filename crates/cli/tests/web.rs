//! The web pages, in a real headless Chromium against a real server: bob
//! approves alice's change, alice merges it and sees why her own approval
//! of its deployment is refused, carol approves the production deployment,
//! and the build page draws who held each duty. Forms without their CSRF
//! token are refused.
//!
//! With `CUSTODY_SCREENSHOTS=DIR` the test also saves the main pages as
//! PNG files in DIR (the README's screenshots are made this way).

#[macro_use]
mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::browser::Browser;
use support::builds::{commit_files, finished_build, merge_a_change, seed_with, BUILD_SCRIPT, PIPELINE};
use support::deploys::{
    deployment_reaching, group, pipeline_with_environments, release_managers, seed_deploying, DEPLOY_SCRIPT,
};
use support::flow::{merge, open, review, team};
use support::hosted::{Backend, Hosted, PROJECT};
use support::{http_send, run_with_input};

const PASSWORD: &str = "correct horse battery staple";
/// A change title a browser would run as a script if the pages did not escape it.
const TITLE: &str = "Refunds <script>document.title='owned'</script>";

fn set_password(hosted: &Hosted, who: &str) {
    let mut command = hosted.sandbox.as_user(who);
    command.env("CUSTODY_SERVER", &hosted.server.url).env("CUSTODY_TOKEN", hosted.token(who)).args([
        "user",
        "set-password",
        "--json",
    ]);
    run_with_input(command, Some(&format!("{PASSWORD}\n"))).expect_code(0);
}

/// Where screenshots go, when asked for (from the SQLite run only, so that
/// the two runs do not write the same files).
fn screenshots() -> Option<PathBuf> {
    if std::thread::current().name().is_some_and(|n| n.contains("postgres")) {
        return None;
    }
    // A relative directory is taken from the workspace's root.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join(std::env::var_os("CUSTODY_SCREENSHOTS")?);
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    Some(dir)
}

fn snap(browser: &Browser, name: &str, height: u32) {
    if let Some(dir) = screenshots() {
        browser.resize(1280, height);
        browser.screenshot(&dir.join(format!("{name}.png")));
        browser.resize(1280, 1000);
    }
}

fn sign_in_with_password(browser: &Browser, hosted: &Hosted, who: &str) {
    browser.goto(&format!("{}/login", hosted.server.url));
    browser.type_into("#name", who);
    browser.type_into("#password", PASSWORD);
    browser.click("#sign-in");
    assert_eq!(browser.text("#signed-in-as"), who, "signed in: {}", browser.body_text());
}

fn sign_out(browser: &Browser) {
    browser.click("header .who button");
    assert!(browser.url().ends_with("/login"), "signed out: {}", browser.url());
}

/// Reloads `url` until `probe` holds (up to 60 s).
#[track_caller]
fn reload_until(browser: &Browser, url: &str, what: &str, probe: impl Fn(&Browser) -> bool) {
    for _ in 0..300 {
        browser.goto(url);
        if probe(browser) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("{what} never showed on {url}:\n{}", browser.body_text());
}

fn reviewers_and_approvers_work_in_a_real_browser(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let Some(browser) = Browser::start() else { return };
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["carol", "alice"]);
    group(&hosted, "testers", &["alice", "dave"]);
    for who in ["alice", "bob"] {
        set_password(&hosted, who);
    }
    let files = [
        (PIPELINE, pipeline_with_environments("testers = \"testers\"\n"), false),
        ("scripts/build.sh", BUILD_SCRIPT.to_owned(), true),
        ("scripts/deploy.sh", DEPLOY_SCRIPT.to_owned(), true),
        ("src/app.txt", "version 1\n".to_owned(), false),
    ];
    let files: Vec<(&str, &str, bool)> = files.iter().map(|(p, c, x)| (*p, c.as_str(), *x)).collect();
    let (work, _) = seed_with(&hosted, &files, "feature");
    commit_files(&work, &[("src/app.txt", "version 2\n", false)], "Refunds");
    work.ok(&["push", "-q", "origin", "feature"]);
    let base = &hosted.server.url;

    // alice opens the change from the project's page, words it again, and
    // closes and reopens it.
    sign_in_with_password(&browser, &hosted, "alice");
    browser.goto(&format!("{base}/projects/{PROJECT}"));
    browser.click_here("#open-change summary");
    browser.type_into("#open-title", "Refunds, first draft");
    browser.type_into("#open-description", "Lets support refund a payment.");
    browser.click("#open-submit");
    let number: i64 = browser.url().rsplit('/').next().and_then(|n| n.parse().ok()).expect("the change's page");
    let change_page = format!("{base}/projects/{PROJECT}/changes/{number}");
    assert_eq!(browser.text("#change-title"), "Refunds, first draft");
    browser.click_here("#edit summary");
    browser.execute("document.querySelector('#edit-title').value = arguments[0];", serde_json::json!([TITLE]));
    browser.click("#save-edit");
    assert_eq!(browser.text("#change-title"), TITLE);
    assert_eq!(hosted.audit_events("change.edit").len(), 1);
    browser.click("#close-change");
    assert!(browser.text("h1").contains("closed"), "{}", browser.body_text());
    browser.goto(&format!("{base}/projects/{PROJECT}/changes?state=closed&author=alice"));
    assert!(browser.text("#change-list").contains("Refunds"), "{}", browser.body_text());
    browser.goto(&change_page);
    browser.click("#reopen-change");
    assert!(browser.text("h1").contains("open"), "{}", browser.body_text());
    sign_out(&browser);

    // A page asks for a sign-in first, then returns to itself.
    browser.goto(&change_page);
    assert!(browser.url().contains("/login?next="), "{}: {}", browser.url(), browser.body_text());
    snap(&browser, "login", 800);
    browser.type_into("#name", "bob");
    browser.type_into("#password", "not bob's password");
    browser.click("#sign-in");
    assert!(browser.text("#error").contains("Wrong name or password"), "{}", browser.body_text());
    browser.type_into("#name", "bob");
    browser.type_into("#password", PASSWORD);
    browser.click("#sign-in");
    assert_eq!(browser.url(), change_page, "back on the page asked for");
    assert_eq!(browser.text("#signed-in-as"), "bob");

    // bob's work lists alice's change to review; the navigation bar counts it.
    let inbox = format!("{base}/work");
    let waiting = format!("tr[data-change='{PROJECT}/{number}']");
    browser.goto(&inbox);
    assert!(browser.exists(&format!("#work-reviews {waiting}")), "{}", browser.body_text());
    assert!(!browser.exists("#work-own .own"), "bob has no change of his own: {}", browser.body_text());
    reload_until(&browser, &inbox, "the count of one", |b| b.text("#work-count") == "1");
    browser.goto(&change_page);

    // The session cookie is Secure, HttpOnly and SameSite=Strict, and
    // Chromium keeps it on http://127.0.0.1 (a secure context).
    let cookie = browser.cookie("custody_session").expect("a session cookie");
    assert_eq!(cookie["secure"], true, "{cookie}");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");

    // The title is shown as text, never run.
    assert_eq!(browser.text("#change-title"), TITLE);
    assert_eq!(browser.title(), format!("#{number} {TITLE} · custody"), "the title ran as a script");
    assert!(browser.text("#authors").contains("alice"), "{}", browser.text("#authors"));
    assert!(browser.text("#diff").contains("+version 2"), "{}", browser.text("#diff"));
    assert_eq!(browser.attribute("#gate", "data-open").as_deref(), Some("false"));
    let approvals = "#gate li[data-rule='gate.independent_approvals']";
    assert!(browser.attribute(approvals, "class").is_some_and(|c| c.contains("fail")));
    assert!(browser.text(approvals).contains("To pass:"), "{}", browser.text(approvals));

    // bob comments on the changed line and asks for changes.
    let first_head = browser.text("#head");
    browser.click("#L0-1");
    browser.type_into("#comment-body", "Which version is this? <b>say it</b>");
    browser.click("#comment-submit");
    let thread = ".thread[data-outdated='false']";
    assert!(browser.text(thread).contains("Which version is this? <b>say it</b>"), "{}", browser.body_text());
    browser.type_into("#review-message", "see my comment on src/app.txt");
    browser.click("#request-changes");
    assert!(browser.text("#reviews").contains("request changes"), "{}", browser.text("#reviews"));
    let commented = hosted.audit_events("change.comment");
    assert_eq!(commented.len(), 1, "{commented:?}");
    assert_eq!(
        (&commented[0]["details"]["path"], &commented[0]["details"]["line"]),
        (&Value::from("src/app.txt"), &Value::from(1))
    );

    // alice pushes a fix: bob's thread is about a line the new head changed.
    commit_files(&work, &[("src/app.txt", "version 3\n", false)], "Say version 3");
    work.ok(&["push", "-q", "origin", "feature"]);
    reload_until(&browser, &change_page, "the new head", |b| b.text("#head") != first_head);
    let outdated = "#earlier-comments .thread[data-outdated='true']";
    assert!(browser.text(outdated).contains("version 2"), "{}", browser.body_text());
    assert!(!browser.exists(thread), "the thread still sits on a line of the new head");
    browser.click(&format!("{outdated} .resolve-thread"));
    assert!(browser.exists("#earlier-comments .thread[data-resolved='true']"), "{}", browser.body_text());
    snap(&browser, "change-comments", 1400);

    // bob approves the head he sees.
    assert!(browser.enabled("#approve"));
    browser.type_into("#review-message", "looks right");
    browser.click("#approve");
    assert!(browser.text("#reviews").contains("bob"), "{}", browser.text("#reviews"));
    assert!(browser.attribute(approvals, "class").is_some_and(|c| c.contains("pass")), "{}", browser.text("#gate"));
    let approved = hosted.audit_events("change.review.approve");
    assert_eq!(approved.len(), 1, "{approved:?}");
    assert_eq!(approved[0]["actor"], "bob");
    browser.goto(&inbox);
    assert!(!browser.exists(&waiting), "an approved change still waits for bob: {}", browser.body_text());

    // Signing out ends the session on the server, not only in the browser.
    let session = cookie["value"].as_str().expect("the cookie's value").to_owned();
    sign_out(&browser);
    let cookie_header = format!("custody_session={session}");
    let old = http_send(base, "GET", &format!("/projects/{PROJECT}"), &[("Cookie", &cookie_header)], None);
    assert_eq!(old.status, 303, "a revoked session still works: {old:?}");
    assert!(old.header("location").is_some_and(|l| l.starts_with("/login")), "{old:?}");

    // alice may not approve her own change, and the page says why; she merges.
    sign_in_with_password(&browser, &hosted, "alice");
    assert!(browser.url().ends_with("/work"), "signing in leads to the visitor's work: {}", browser.url());
    let own = format!("#work-own .own[data-change='{PROJECT}/{number}']");
    reload_until(&browser, &inbox, "alice's change ready to merge", |b| b.text(&own).contains("ready to merge"));
    assert!(!browser.exists(&format!("#work-reviews {waiting}")), "alice's own change waits for her review");
    snap(&browser, "work", 900);
    browser.goto(&change_page);
    assert!(!browser.enabled("#approve"), "alice's approve button is enabled");
    let why = browser.text("#approve-refusal");
    assert!(why.contains("you are an author of this change"), "{why}");
    assert!(why.contains("gate.independent_approvals"), "{why}");
    reload_until(&browser, &change_page, "an open gate", |b| {
        b.attribute("#gate", "data-open").as_deref() == Some("true")
    });
    snap(&browser, "change", 1700);
    browser.click("#merge");
    assert!(browser.body_text().contains("Merged by alice"), "{}", browser.body_text());
    browser.goto(&format!("{base}/projects/{PROJECT}/changes?state=merged"));
    assert!(browser.text("#change-list").contains("Refunds"), "{}", browser.body_text());
    snap(&browser, "changes", 600);

    // The builder builds, staging deploys itself, production waits.
    let build = finished_build(&hosted, 1);
    assert_eq!(build["status"], "succeeded", "{build}");
    deployment_reaching(&hosted, 1, &["succeeded"]);
    deployment_reaching(&hosted, 2, &["pending"]);

    // alice wrote the release: nothing of it waits for her, and her approve
    // button is refused, with the rule.
    let production_waiting = format!("#work-deployments tr[data-deployment='{PROJECT}/2']");
    browser.goto(&inbox);
    assert!(!browser.exists(&production_waiting), "alice may decide on her release: {}", browser.body_text());
    assert!(!browser.exists("#work-own .own"), "a merged change is no longer open: {}", browser.body_text());
    let production = format!("{base}/projects/{PROJECT}/environments/production");
    browser.goto(&production);
    assert!(!browser.enabled("#deployment-2 .approve-deployment"), "alice's approve button is enabled");
    assert_eq!(
        browser.attribute("#deployment-2 .approve-refusal .refusal", "data-rule").as_deref(),
        Some("deploy.approver_not_author")
    );
    let why = browser.text("#deployment-2 .approve-refusal");
    assert!(why.contains("alice is an author of a change in this release"), "{why}");
    assert!(why.contains("What would satisfy it"), "{why}");
    assert!(!browser.enabled("#deployment-2 .tests-passed"), "alice may sign off her own change's tests");
    assert_eq!(
        browser.attribute("#deployment-2 .sign-off-refusal .refusal", "data-rule").as_deref(),
        Some("deploy.tester_not_author")
    );
    snap(&browser, "environment-refused", 1200);
    // Sent anyway (the button enabled by hand), the server refuses it the same way.
    browser.execute(
        "document.querySelector('#deployment-2 .approve-deployment').disabled = false;",
        serde_json::json!([]),
    );
    browser.click("#deployment-2 .approve-deployment");
    let refused = browser.body_text();
    assert!(refused.contains("Refused"), "{refused}");
    assert!(browser.exists("li[data-rule='deploy.approver_not_author']"), "{refused}");
    assert!(hosted.audit_events("deploy.approve").is_empty(), "a refused approval was recorded");
    browser.click("#back");
    assert!(browser.url().ends_with("/environments/production"), "{}", browser.url());
    sign_out(&browser);

    // dave, a tester who wrote none of it, signs off the manual tests.
    browser.goto(&format!("{base}/login"));
    browser.type_into("#token", &hosted.token("dave"));
    browser.click("#sign-in-token");
    assert_eq!(browser.text("#signed-in-as"), "dave");
    browser.goto(&inbox);
    let yours = browser.text(&production_waiting);
    assert!(yours.contains("sign off tests") && !yours.contains("approve"), "dave, a tester: {yours}");
    browser.goto(&production);
    assert!(!browser.exists("#deployment-2 .sign-off-refusal"), "dave is refused: {}", browser.body_text());
    browser.type_into("#deployment-2 .decision-message", "refunds go through");
    browser.click("#deployment-2 .tests-passed");
    let signed = hosted.audit_events("deploy.test_passed");
    assert_eq!(signed.iter().map(|e| e["actor"].clone()).collect::<Vec<_>>(), [Value::from("dave")], "{signed:?}");
    assert_eq!(deployment_reaching(&hosted, 2, &["pending"])["status"], "pending", "still waits for an approver");
    sign_out(&browser);

    // carol signs in with her token and approves production.
    browser.goto(&format!("{base}/login"));
    browser.type_into("#token", &hosted.token("carol"));
    browser.click("#sign-in-token");
    assert_eq!(browser.text("#signed-in-as"), "carol");
    browser.goto(&inbox);
    let yours = browser.text(&production_waiting);
    assert!(yours.contains("approve") && !yours.contains("sign off"), "carol, a release manager: {yours}");
    browser.goto(&production);
    let gate = browser.text("#deployment-2 .gate");
    assert!(gate.contains("deploy.approvals") || gate.contains("approval"), "{gate}");
    assert!(!browser.exists("#deployment-2 .approve-refusal"), "carol is refused: {}", browser.body_text());
    snap(&browser, "environment", 1200);
    browser.type_into("#deployment-2 .decision-message", "ship it");
    browser.click("#deployment-2 .approve-deployment");
    let approvals = hosted.audit_events("deploy.approve");
    assert_eq!(approvals.len(), 1, "{approvals:?}");
    assert_eq!(approvals[0]["actor"], "carol");
    deployment_reaching(&hosted, 2, &["succeeded"]);
    reload_until(&browser, &production, "build 1 live", |b| b.text("#live").contains("build 1"));
    assert!(browser.text("#history").contains("carol"), "{}", browser.text("#history"));

    // The build page draws the chain of custody with the person in each duty.
    browser.goto(&format!("{base}/projects/{PROJECT}/builds/1"));
    let chain = browser.text("#chain");
    for expected in ["COMMIT", "CHANGE", "BUILD", "STAGING", "PRODUCTION", "alice", "bob", "carol", "custody builder"] {
        assert!(chain.contains(expected), "the chain lacks {expected}: {chain}");
    }
    let production_link = "#chain g[data-kind='production']";
    assert_eq!(browser.attribute(production_link, "data-state").as_deref(), Some("ok"));
    assert!(browser.text(production_link).contains("carol"), "{}", browser.text(production_link));
    assert!(browser.text("#provenance-check").contains("verifies"), "{}", browser.text("#provenance-check"));
    snap(&browser, "build", 1500);

    // A form posted without its CSRF token is refused, and nothing happens.
    let carol = browser.cookie("custody_session").expect("carol's session");
    let cookie_header = format!("custody_session={}", carol["value"].as_str().expect("a value"));
    let headers = [("Cookie", cookie_header.as_str()), ("Content-Type", "application/x-www-form-urlencoded")];
    let path = format!("/projects/{PROJECT}/changes/{number}/review");
    let forged = http_send(base, "POST", &path, &headers, Some(b"verdict=comment&message=forged"));
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.body.contains("without its security token"), "{}", forged.body);
    let wrong = http_send(base, "POST", &path, &headers, Some(b"verdict=comment&csrf=0000"));
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let elsewhere = [
        ("Cookie", cookie_header.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Origin", "http://evil.example"),
    ];
    let cross = http_send(base, "POST", &path, &elsewhere, Some(b"verdict=comment"));
    assert_eq!(cross.status, 403, "{cross:?}");
    assert!(hosted.audit_events("change.review.comment").is_empty(), "a forged form was acted on");
    let login = http_send(base, "POST", "/login", &headers[1..], Some(b"method=password&name=bob&password=x"));
    assert_eq!(login.status, 403, "a sign-in without its token: {login:?}");

    // Every page is sent with a Content-Security-Policy that allows nothing
    // from elsewhere and no framing.
    let page = http_send(base, "GET", &format!("/projects/{PROJECT}"), &headers[..1], None);
    assert_eq!(page.status, 200);
    let policy = page.header("content-security-policy").unwrap_or_default();
    assert!(policy.contains("default-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    // The one script is custody's own file, never inline.
    let scripts: Vec<&str> = page.body.match_indices("<script").map(|(at, _)| &page.body[at..]).collect();
    assert!(
        scripts.iter().all(|s| s.starts_with("<script src=\"/static/custody.js\" defer></script>")),
        "an inline script: {}",
        page.body
    );
    browser.goto(&format!("{base}/projects/{PROJECT}"));
    assert!(browser.text("#environments").contains("production"), "{}", browser.text("#environments"));
    snap(&browser, "project", 1100);

    // Bad addresses get pages that say what is wrong, never a panic.
    browser.goto(&format!("{base}/projects/{PROJECT}/changes/abc"));
    assert!(browser.text("#error").contains("not one of custody's pages"), "{}", browser.body_text());
    browser.goto(&format!("{base}/projects/{PROJECT}/changes/99"));
    assert!(browser.body_text().contains("Not found"), "{}", browser.body_text());
    browser.goto(&format!("{base}/projects/{PROJECT}/artifacts/not-a-digest"));
    assert!(browser.text("#error").contains("64 hexadecimal digits"), "{}", browser.body_text());

    // carol is no auditor; the admin sees the log and its verified checkpoint.
    browser.goto(&format!("{base}/audit"));
    assert!(browser.body_text().contains("only admins and auditors"), "{}", browser.body_text());
    browser.goto(&format!("{base}/projects"));
    sign_out(&browser);
    browser.goto(&format!("{base}/login"));
    browser.type_into("#token", &hosted.admin);
    browser.click("#sign-in-token");
    // The auditor downloads the production release's evidence bundle from
    // its environment's history, and the trust file, and checks them offline.
    browser.goto(&production);
    let href = browser.attribute("#history a.evidence", "href").expect("an evidence link");
    let admin = browser.cookie("custody_session").expect("the admin's session");
    let admin_cookie = format!("custody_session={}", admin["value"].as_str().expect("a value"));
    let path = href.strip_prefix(base.as_str()).unwrap_or(&href).to_owned();
    let bundle = http_send(base, "GET", &path, &[("Cookie", &admin_cookie)], None);
    assert_eq!(bundle.status, 200, "{bundle:?}");
    assert!(bundle.header("content-disposition").is_some_and(|d| d.contains("attachment")), "{bundle:?}");
    let digest = build["artifacts"][0]["digest"].as_str().expect("an artifact").to_owned();
    browser.goto(&format!("{base}/projects/{PROJECT}/artifacts/{digest}"));
    let trust_href = browser.attribute("#trust-file", "href").expect("a trust file link");
    let trust = http_send(base, "GET", trust_href.strip_prefix(base.as_str()).unwrap_or(&trust_href), &[], None);
    assert_eq!(trust.status, 200, "{trust:?}");
    let (bundle_file, trust_file) =
        (hosted.sandbox.path("downloaded.json"), hosted.sandbox.path("trust-downloaded.json"));
    std::fs::write(&bundle_file, &bundle.body).expect("save the bundle");
    std::fs::write(&trust_file, &trust.body).expect("save the trust file");
    let mut verify = hosted.sandbox.as_user("auditor");
    verify.args(["verify", bundle_file.to_str().unwrap(), "--trust", trust_file.to_str().unwrap(), "--json"]);
    let verified = support::run(verify).json();
    assert_eq!(verified["valid"], true, "{verified:#}");
    // The artifact itself downloads from its page, re-hashed on the way.
    let download = browser.attribute("#download", "href").expect("a download link");
    let file = http_send(
        base,
        "GET",
        download.strip_prefix(base.as_str()).unwrap_or(&download),
        &[("Cookie", &admin_cookie)],
        None,
    );
    assert_eq!(file.status, 200, "{file:?}");
    let expected = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(support::builds::bytes_of_hex(&digest))
    };
    assert_eq!(file.header("repr-digest"), Some(format!("sha-256=:{expected}:").as_str()), "{file:?}");
    browser.goto(&format!("{base}/projects/{PROJECT}/builds"));
    assert!(browser.text("#build-list").contains("succeeded"), "{}", browser.body_text());
    snap(&browser, "builds", 700);
    browser.goto(&format!("{base}/projects/{PROJECT}/artifacts/{digest}"));
    snap(&browser, "artifact", 1000);
    let artifact_bundle = browser.attribute("#evidence-bundle", "href").expect("an artifact's bundle link");
    let artifact_bundle = http_send(
        base,
        "GET",
        artifact_bundle.strip_prefix(base.as_str()).unwrap_or(&artifact_bundle),
        &[("Cookie", &admin_cookie)],
        None,
    );
    assert_eq!(artifact_bundle.status, 200, "{artifact_bundle:?}");
    // Without a session, the download asks for a sign-in.
    let anonymous = http_send(base, "GET", &path, &[], None);
    assert_eq!(anonymous.status, 303, "{anonymous:?}");

    browser.goto(&format!("{base}/audit"));
    snap(&browser, "audit", 1400);
    browser.goto(&format!("{base}/audit?action=deploy.approve"));
    assert_eq!(browser.attribute("#checkpoint-verdict", "data-intact").as_deref(), Some("true"));
    let events = browser.text("#events");
    assert!(events.contains("carol") && events.contains("deploy.approve"), "{events}");
    assert!(!events.contains("change.review"), "the filter holds: {events}");
    browser.goto(&format!("{base}/admin"));
    assert!(browser.text("#groups").contains("release-managers"), "{}", browser.text("#groups"));
    assert!(browser.text("#users").contains("carol"), "{}", browser.text("#users"));

    // Once there are two admins, a grant waits for the one who did not ask.
    hosted.as_admin(&["group", "add", "admins", "bob"]).expect_code(0);
    hosted.as_admin(&["group", "create", "qa"]).expect_code(0);
    let asked = hosted.as_admin(&["group", "add", "qa", "carol", "--json"]).json();
    assert_eq!(asked["status"], "pending", "{asked}");
    let grant_waiting = format!("#work-grants li[data-grant='{}']", asked["id"]);
    browser.goto(&inbox);
    assert!(!browser.exists(&grant_waiting), "the requester's work lists his own grant: {}", browser.body_text());
    browser.goto(&format!("{base}/admin"));
    let approve = ".card.grant button[value='approve']";
    assert!(!browser.enabled(approve), "the requester may approve his own grant");
    let why = browser.text(".card.grant .refusal");
    assert!(why.contains("grant."), "{why}");
    snap(&browser, "admin", 1000);
    sign_out(&browser);
    sign_in_with_password(&browser, &hosted, "bob");
    assert!(browser.exists(&grant_waiting), "the grant does not wait for bob: {}", browser.body_text());
    browser.goto(&format!("{base}/admin"));
    assert!(browser.enabled(approve), "bob, the second admin, may not approve: {}", browser.body_text());
    browser.click(approve);
    assert_eq!(browser.text("#grant-state"), "approved", "{}", browser.body_text());
    browser.goto(&format!("{base}/admin"));
    assert!(!browser.exists(".card.grant"), "the grant still waits: {}", browser.body_text());
    assert!(browser.text("#groups").contains("carol"), "{}", browser.text("#groups"));
    let approved = hosted.audit_events("grant.approve");
    assert_eq!(approved.last().map(|e| e["actor"].clone()), Some(Value::from("bob")), "{approved:?}");
}

fn sign_in_with_token(browser: &Browser, hosted: &Hosted, who: &str, token: &str) {
    browser.goto(&format!("{}/login", hosted.server.url));
    browser.type_into("#token", token);
    browser.click("#sign-in-token");
    assert_eq!(browser.text("#signed-in-as"), who, "signed in: {}", browser.body_text());
}

/// A break-glass deployment opens a finding: it waits in the work of an
/// admin who had no hand in it, who reviews it right there, and never in
/// the work of the admin who broke the glass.
fn a_finding_waits_only_for_an_admin_who_was_not_involved(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let Some(browser) = Browser::start() else { return };
    release_managers(&hosted, &["carol"]);
    hosted.as_admin(&["group", "add", "admins", "carol"]).expect_code(0);
    let work = seed_deploying(&hosted, &pipeline_with_environments(""), DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    deployment_reaching(&hosted, 1, &["succeeded"]);
    deployment_reaching(&hosted, 2, &["pending"]);
    hosted.run_as("carol", &["deploy", "approve", PROJECT, "2", "--json"]).expect_code(0);
    deployment_reaching(&hosted, 2, &["succeeded"]);
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
    assert_eq!(asked["deployment"]["break_glass"], "hotfix", "{asked}");
    let findings = hosted.as_admin(&["finding", "list", "--open", "--json"]).json();
    let id = findings[0]["id"].as_i64().expect("a finding");
    let listed = format!("#work-findings [data-finding='{id}']");
    let base = &hosted.server.url;

    sign_in_with_token(&browser, &hosted, "carol", &hosted.token("carol"));
    browser.goto(&format!("{base}/work"));
    assert!(browser.exists("#work-findings"), "carol is an admin: {}", browser.body_text());
    assert!(!browser.exists(&listed), "carol broke the glass and may not review it: {}", browser.body_text());
    // The findings page says why before she tries.
    browser.goto(&format!("{base}/findings"));
    let row = format!("#findings tr[data-finding='{id}']");
    assert!(!browser.exists(&format!("{row} .resolve-finding")), "{}", browser.text(&row));
    assert!(browser.exists(&format!("{row} .refusal[data-rule]")), "{}", browser.text(&row));
    sign_out(&browser);

    sign_in_with_token(&browser, &hosted, "admin", &hosted.admin);
    // The admin keeps the newest checkpoint before reviewing.
    browser.goto(&format!("{base}/audit/checkpoint"));
    let kept = browser.text("#newest-checkpoint");
    browser.goto(&format!("{base}/work"));
    assert!(
        browser.text(&listed).contains("hotfix") || browser.text(&listed).contains("break"),
        "{}",
        browser.body_text()
    );
    browser.type_into(&format!("{listed} textarea[name='resolution']"), "reviewed the hotfix with carol");
    browser.click(&format!("{listed} button[type='submit']"));
    assert!(browser.url().ends_with("/work"), "{}", browser.url());
    assert!(!browser.exists(&listed), "a reviewed finding still waits: {}", browser.body_text());
    let resolved = hosted.audit_events("finding.resolve");
    assert_eq!(resolved.iter().map(|e| e["actor"].clone()).collect::<Vec<_>>(), [Value::from("admin")]);
    browser.goto(&format!("{base}/findings"));
    assert!(browser.text(&row).contains("resolved by admin"), "{}", browser.text(&row));
    snap(&browser, "findings", 700);

    // The report of the last 30 days names production's deployment and its duties.
    browser.goto(&format!("{base}/report"));
    let deployed = browser.text(&format!("#report-deployments tr[data-deployment='{PROJECT}/2']"));
    for who in ["carol", "alice", "bob"] {
        assert!(deployed.contains(who), "{who}: {deployed}");
    }
    snap(&browser, "report", 1000);

    // The checkpoint kept is proved a prefix of the newest; an altered one is no checkpoint.
    let checkpoint = format!("{base}/audit/checkpoint");
    reload_until(&browser, &checkpoint, "a newer checkpoint", |b| b.text("#newest-checkpoint") != kept);
    browser.type_into("#pasted-checkpoint", &kept);
    browser.click("#prove");
    assert_eq!(
        browser.attribute("#consistency-verdict", "data-consistent").as_deref(),
        Some("true"),
        "{}",
        browser.body_text()
    );
    snap(&browser, "checkpoint", 1100);
    let mut lines: Vec<String> = kept.lines().map(str::to_owned).collect();
    lines[1] = (lines[1].parse::<u64>().expect("a size") - 1).to_string();
    browser.goto(&checkpoint);
    browser.type_into("#pasted-checkpoint", &lines.join("\n"));
    browser.click("#prove");
    assert_eq!(browser.attribute("#consistency-verdict", "data-consistent").as_deref(), Some("false"));
    assert!(
        browser.text("#consistency-verdict").contains("not a checkpoint this ledger signed"),
        "{}",
        browser.body_text()
    );
}

/// Markup an attacker would have a page run, and a quote to break out of
/// an attribute.
const HOSTILE: &str = "<script>alert(1)</script>\"onmouseover=alert(2) x='<img src=x onerror=alert(3)>";

/// Checks one page's HTML: no hostile markup, attribute or link made it in
/// unescaped, and the only script is custody's own file.
#[track_caller]
fn assert_inert(page: &str, html: &str) {
    for raw in ["<script>alert", "<img src=x", "\"onmouseover=", "'<img"] {
        assert!(!html.contains(raw), "{page} holds {raw:?} unescaped:\n{html}");
    }
    let mut rest = html;
    while let Some(at) = rest.find("<script") {
        assert!(
            rest[at..].starts_with("<script src=\"/static/custody.js\" defer></script>"),
            "{page}: an inline script"
        );
        rest = &rest[at + 7..];
    }
    for (at, _) in html.match_indices("href=\"") {
        let target = &html[at + 6..];
        let target = &target[..target.find('"').unwrap_or(target.len())];
        assert!(
            target.starts_with('/') || target.starts_with('#'),
            "{page} links to {target:?}: every link is one of custody's own paths"
        );
    }
}

/// Every page, drawn with hostile values wherever a person can put text
/// (a commit, a file name, a change's title, a review, a build
/// log, a decision, a break-glass reason, a filter, a page's address),
/// shows them as text: nothing runs, no attribute is broken out of, and
/// no link leaves custody.
fn every_page_shows_hostile_values_as_text(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let Some(browser) = Browser::start() else { return };
    release_managers(&hosted, &["carol"]);
    let script = BUILD_SCRIPT.replacen("set -e\n", &format!("set -e\necho '{}'\n", HOSTILE.replace('\'', "")), 1);
    let files = [
        (PIPELINE, pipeline_with_environments(""), false),
        ("scripts/build.sh", script, true),
        ("scripts/deploy.sh", DEPLOY_SCRIPT.to_owned(), true),
        ("src/app.txt", "version 1\n".to_owned(), false),
    ];
    let files: Vec<(&str, &str, bool)> = files.iter().map(|(p, c, x)| (*p, c.as_str(), *x)).collect();
    // (Branch names are refused with quotes or markup already: push.ref_name.)
    let branch = "feature";
    let (work, _) = seed_with(&hosted, &files, branch);
    commit_files(&work, &[("src/<img src=x onerror=alert(3)>.txt", HOSTILE, false)], HOSTILE);
    work.ok(&["push", "-q", "origin", branch]);
    let number = open(&hosted, "alice", branch, HOSTILE);
    let n = number.to_string();
    hosted.run_as("bob", &["change", "review", PROJECT, &n, "--comment", "-m", HOSTILE, "--json"]).expect_code(0);
    let head = hosted.run_as("bob", &["change", "show", PROJECT, &n, "--json"]).json()["head"].clone();
    let thread =
        serde_json::json!({ "path": "src/<img src=x onerror=alert(3)>.txt", "line": 1, "head": head, "body": HOSTILE });
    let comments = format!("/api/v1/projects/{PROJECT}/changes/{number}/comments");
    let (status, made) = hosted.api("POST", &comments, Some(&hosted.token("bob")), Some(thread));
    assert_eq!(status, 201, "{made}");
    review(&hosted, "bob", number, "--approve");
    merge(&hosted, "alice", number);
    assert_eq!(finished_build(&hosted, 1)["status"], "succeeded");
    deployment_reaching(&hosted, 1, &["succeeded"]);
    deployment_reaching(&hosted, 2, &["pending"]);
    hosted.run_as("carol", &["deploy", "reject", PROJECT, "2", "-m", HOSTILE, "--json"]).expect_code(0);
    hosted
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
                HOSTILE,
                "--json",
            ],
        )
        .expect_code(0);

    sign_in_with_token(&browser, &hosted, "admin", &hosted.admin);
    let session = browser.cookie("custody_session").expect("a session");
    let cookie = format!("custody_session={}", session["value"].as_str().expect("a value"));
    let digest = finished_build(&hosted, 1)["artifacts"][0]["digest"].as_str().expect("an artifact").to_owned();
    let hostile_query: String = HOSTILE.bytes().map(|b| format!("%{b:02X}")).collect();
    let pages = [
        "/work".to_owned(),
        "/projects".to_owned(),
        format!("/projects/{PROJECT}"),
        format!("/projects/{PROJECT}/changes/{number}"),
        format!("/projects/{PROJECT}/builds/1"),
        format!("/projects/{PROJECT}/artifacts/{digest}"),
        format!("/projects/{PROJECT}/environments/production"),
        format!("/projects/{PROJECT}/deployments/2"),
        format!("/projects/{PROJECT}/deployments/3"),
        "/me".to_owned(),
        "/admin/grants/1".to_owned(),
        "/findings".to_owned(),
        "/report".to_owned(),
        "/audit/checkpoint".to_owned(),
        format!("/projects/{PROJECT}/settings"),
        format!("/audit?actor={hostile_query}&action={hostile_query}"),
        "/admin".to_owned(),
        format!("/projects/{PROJECT}/changes?state=merged&reviewer=bob"),
        format!("/projects/{PROJECT}/builds"),
        format!("/projects/{PROJECT}/changes?author={hostile_query}"),
        format!("/projects/{hostile_query}"),
        format!("/projects/{PROJECT}/environments/{hostile_query}"),
        format!("/login?next={hostile_query}"),
        "/login?next=javascript:alert(4)".to_owned(),
    ];
    let base = &hosted.server.url;
    for page in &pages {
        let answer = support::http_send(base, "GET", page, &[("Cookie", &cookie)], None);
        assert!(answer.status < 500, "{page}: {answer:?}");
        assert_inert(page, &answer.body);
    }
    // The hostile values are there, as text.
    let change = support::http_send(base, "GET", &pages[3], &[("Cookie", &cookie)], None).body;
    assert!(change.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;onmouseover=alert(2)"), "{change}");
    // And the browser runs none of it: no dialog opened, the title is text.
    for page in &pages[..19] {
        browser.goto(&format!("{base}{page}"));
        assert!(browser.alert_text().is_none(), "{page} ran a script");
    }
    browser.goto(&format!("{base}{}", pages[3]));
    assert_eq!(browser.text("#change-title"), HOSTILE);

    // Every page passes axe-core with no serious or critical violation, and
    // reads at 390 px wide without scrolling sideways.
    for page in pages[..19].iter().chain(["/login".to_owned()].iter()) {
        if page == "/login" {
            sign_out(&browser);
        }
        browser.goto(&format!("{base}{page}"));
        let violations = accessibility_violations(&browser);
        assert!(violations.is_empty(), "{page}: {violations:#?}");
        browser.resize(390, 844);
        let overflow = browser.execute(
            "const width = document.documentElement.clientWidth;\
             const over = document.documentElement.scrollWidth - width;\
             const wide = [...document.querySelectorAll('body *')]\
               .filter(e => e.getBoundingClientRect().right > width + 1)\
               .slice(0, 5).map(e => e.tagName + '#' + e.id + '.' + e.className);\
             return [over, wide];",
            serde_json::json!([]),
        );
        browser.resize(1280, 1000);
        assert!(overflow[0].as_i64().is_some_and(|o| o <= 0), "{page} scrolls sideways at 390 px: {overflow}");
    }
}

/// The serious and critical accessibility violations axe-core finds on the
/// open page, each with the elements it names.
fn accessibility_violations(browser: &Browser) -> Vec<String> {
    let axe = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/axe/node_modules/axe-core/axe.min.js");
    let axe = std::fs::read_to_string(&axe).unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup", axe.display()));
    browser.execute(&axe, serde_json::json!([]));
    let found = browser.execute_async(
        "const done = arguments[arguments.length - 1];\
         axe.run(document, { resultTypes: ['violations'] })\
           .then(r => done(r.violations\
             .filter(v => v.impact === 'serious' || v.impact === 'critical')\
             .map(v => v.id + ': ' + v.help + ' at ' + v.nodes.map(n => n.target.join(' ')).join(', '))))\
           .catch(e => done(['axe-core failed: ' + e]));",
        serde_json::json!([]),
    );
    found.as_array().expect("a list").iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect()
}

/// A running build's page follows its log in place, without reloading,
/// and shows the finished build once it ends.
fn a_running_builds_log_follows_in_its_page(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let Some(browser) = Browser::start() else { return };
    let script = "#!/bin/sh\nset -e\necho step one\nsleep 4\necho step two\nsleep 3\nmkdir -p dist\n\
                  tar -czf dist/app.tar.gz src\n";
    let work =
        support::builds::seed_build(&hosted, &support::builds::pipeline("scripts/build.sh", "[\"dist/*\"]"), script);
    merge_a_change(&hosted, &work);
    let log = format!("/api/v1/projects/{PROJECT}/builds/1/log");
    support::flow::eventually(|| {
        let (_, page) = hosted.api("GET", &log, Some(&hosted.token("bob")), None);
        page["chunks"]
            .as_array()?
            .iter()
            .any(|c| c["data"].as_str().is_some_and(|d| d.contains("step one")))
            .then_some(())
    })
    .expect("the build starts");
    sign_in_with_token(&browser, &hosted, "bob", &hosted.token("bob"));
    let page = format!("{}/projects/{PROJECT}/builds/1", hosted.server.url);
    browser.goto(&page);
    assert!(browser.exists("#build-log[data-follow]"), "{}", browser.body_text());
    assert!(browser.text("#build-log").contains("step one"));
    // A mark the page keeps until it reloads.
    browser.execute("window.custodyStillHere = true;", serde_json::json!([]));
    let followed = support::flow::eventually(|| {
        let still = browser.execute("return window.custodyStillHere === true;", serde_json::json!([]));
        (still == true && browser.text("#build-log").contains("step two")).then_some(())
    });
    assert!(followed.is_some(), "the log did not follow in place: {}", browser.body_text());
    let finished = support::flow::eventually(|| browser.exists("#provenance-check").then_some(()));
    assert!(finished.is_some(), "the finished build never showed: {}", browser.body_text());
    assert!(!browser.exists("#build-log[data-follow]"));
}

/// Production runs build 2. carol asks, on the production page, to roll
/// back to build 1: the page names it a rollback, and her deployment's page
/// shows her approve button refused with the rule before she clicks (and
/// the server refuses it when forced). dave approves it; its page shows the
/// log and the signed attestation verified. dave breaks the glass for
/// build 2, with the page saying what that opens, and cancels it.
fn a_rollback_asked_for_in_the_browser_waits_for_someone_but_its_requester(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let Some(browser) = Browser::start() else { return };
    hosted.add_user("dave", "write");
    release_managers(&hosted, &["carol", "dave"]);
    let work = seed_deploying(&hosted, &pipeline_with_environments(""), DEPLOY_SCRIPT);
    merge_a_change(&hosted, &work);
    deployment_reaching(&hosted, 2, &["pending"]);
    hosted.run_as("dave", &["deploy", "approve", PROJECT, "2"]).expect_code(0);
    deployment_reaching(&hosted, 2, &["succeeded"]);
    let main = support::flow::branch_from_main(&work, "next");
    support::flow::merge_part(&hosted, &work, &main, 2);
    assert_eq!(finished_build(&hosted, 2)["status"], "succeeded");
    deployment_reaching(&hosted, 4, &["pending"]);
    hosted.run_as("carol", &["deploy", "approve", PROJECT, "4"]).expect_code(0);
    deployment_reaching(&hosted, 4, &["succeeded"]);
    let base = &hosted.server.url;

    sign_in_with_token(&browser, &hosted, "carol", &hosted.token("carol"));
    let production = format!("{base}/projects/{PROJECT}/environments/production");
    browser.goto(&production);
    let offered = browser.text("#request-build");
    assert!(offered.contains("build 2") && offered.contains("live now"), "{offered}");
    assert!(offered.contains("build 1") && offered.contains("a rollback"), "{offered}");
    browser.execute("document.querySelector('#request-build').value = '1';", serde_json::json!([]));
    browser.click("#request-deployment");
    assert!(browser.url().ends_with(&format!("/projects/{PROJECT}/deployments/5")), "{}", browser.url());
    assert_eq!(browser.text("#requested-by"), "carol");
    assert!(!browser.enabled("#deployment-5 .approve-deployment"), "carol may approve her own rollback");
    assert_eq!(
        browser.attribute("#deployment-5 .approve-refusal .refusal", "data-rule").as_deref(),
        Some("deploy.approver_not_requester")
    );
    assert!(browser.text("#deployment-5 .approve-refusal").contains("What would satisfy it"));
    snap(&browser, "deployment-refused", 1200);
    browser.execute(
        "document.querySelector('#deployment-5 .approve-deployment').disabled = false;",
        serde_json::json!([]),
    );
    browser.click("#deployment-5 .approve-deployment");
    assert!(browser.exists("li[data-rule='deploy.approver_not_requester']"), "{}", browser.body_text());
    assert!(
        hosted.audit_events("deploy.approve").iter().all(|e| e["subject"] != format!("deployment:{PROJECT}/5")),
        "a refused approval was recorded"
    );
    browser.click("#back");
    assert!(browser.url().ends_with("/deployments/5"), "{}", browser.url());
    sign_out(&browser);

    // dave had no hand in it: his approval opens the gate, and the page
    // shows the deployment's log and its verified attestation.
    sign_in_with_token(&browser, &hosted, "dave", &hosted.token("dave"));
    let page = format!("{base}/projects/{PROJECT}/deployments/5");
    browser.goto(&page);
    assert!(browser.enabled("#deployment-5 .approve-deployment"), "{}", browser.body_text());
    browser.type_into("#deployment-5 .decision-message", "roll back");
    browser.click("#deployment-5 .approve-deployment");
    assert!(browser.url().contains("/deployments/5#"), "a decision returns to the deployment: {}", browser.url());
    deployment_reaching(&hosted, 5, &["succeeded"]);
    reload_until(&browser, &page, "the attestation", |b| b.exists("#attestation-check"));
    assert!(browser.text("#attestation-check").contains("verifies"), "{}", browser.text("#attestation-check"));
    assert!(browser.text("#deployment-log").contains("deploying to production build 1"), "{}", browser.body_text());
    assert!(browser.text("#decisions").contains("dave"), "{}", browser.text("#decisions"));
    snap(&browser, "deployment", 1400);
    browser.goto(&production);
    assert!(browser.text("#live").contains("build 1"), "rolled back: {}", browser.text("#live"));
    browser.click("#history a[href$='/deployments/5']");
    assert!(browser.url().ends_with("/deployments/5"), "{}", browser.url());

    // Breaking the glass says what it opens and what it never skips.
    browser.goto(&production);
    browser.click_here("#break-glass-form summary");
    let said = browser.text("#break-glass-form");
    assert!(said.contains("never skips the approvals") && said.contains("finding"), "{said}");
    browser.execute("document.querySelector('#request-build').value = '2';", serde_json::json!([]));
    browser.type_into("#break-glass-reason", "payments are down");
    browser.click("#request-deployment");
    assert!(browser.url().ends_with("/deployments/6"), "{}", browser.url());
    assert!(browser.text("#break-glass").contains("payments are down"), "{}", browser.body_text());
    browser.type_into("#cancel .cancel-message", "fixed another way");
    browser.click("#cancel .cancel-deployment");
    assert_eq!(deployment_reaching(&hosted, 6, &["cancelled"])["status"], "cancelled");
    assert!(browser.text("#deployment-reason").contains("cancelled by dave"), "{}", browser.body_text());
    assert!(!browser.exists("#cancel"), "a cancelled deployment offers a cancel");
}

/// A running deployment's page follows its log in place, as the script
/// writes it; a secret the script prints in two writes is held back until
/// it can be hidden whole, and never shows, not even in part.
fn a_running_deployments_log_follows_in_its_page_with_its_secrets_hidden(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let Some(browser) = Browser::start() else { return };
    let value = "correct-horse-battery-staple";
    let mut set = hosted.sandbox.as_user("admin");
    set.args(["secret", "set", PROJECT, "staging", "DB_PASSWORD", "--json"]);
    run_with_input(set, Some(&format!("{value}\n"))).expect_code(0);
    let script = "#!/bin/sh\necho step one\nprintf 'password is %s' \"${DB_PASSWORD%%-*}\"\nsleep 2\n\
                  printf -- '-%s\\n' \"${DB_PASSWORD#*-}\"\nsleep 3\necho step two\nsleep 3\n";
    let policy = format!(
        "{}\n[[environment]]\nname = \"staging\"\ndeploy = \"scripts/deploy.sh\"\n",
        support::deploys::build_section()
    );
    let work = seed_deploying(&hosted, &policy, script);
    merge_a_change(&hosted, &work);
    let record = format!("/api/v1/projects/{PROJECT}/deployments/1/record");
    let bob = hosted.token("bob");
    let streamed = support::flow::eventually(|| {
        let (_, shown) = hosted.api("GET", &record, Some(&bob), None);
        let log = shown["log"].as_str().unwrap_or_default().to_owned();
        assert!(!log.contains("correct"), "a part of the secret streamed: {log}");
        log.contains("step one").then_some(log)
    });
    assert!(streamed.is_some(), "the deployment's log never streamed");
    sign_in_with_token(&browser, &hosted, "bob", &bob);
    let page = format!("{}/projects/{PROJECT}/deployments/1", hosted.server.url);
    browser.goto(&page);
    assert!(browser.exists("#deployment-log[data-follow]"), "{}", browser.body_text());
    assert!(!browser.text("#deployment-log").contains("correct"), "{}", browser.text("#deployment-log"));
    browser.execute("window.custodyStillHere = true;", serde_json::json!([]));
    let followed = support::flow::eventually(|| {
        let still = browser.execute("return window.custodyStillHere === true;", serde_json::json!([]));
        let log = browser.text("#deployment-log");
        (still == true && log.contains("password is [secret DB_PASSWORD]")).then_some(log)
    });
    let log = followed.unwrap_or_else(|| panic!("the log did not follow in place: {}", browser.body_text()));
    assert!(!log.contains("correct"), "{log}");
    let finished = support::flow::eventually(|| browser.exists("#attestation-check").then_some(()));
    assert!(finished.is_some(), "the finished deployment never showed: {}", browser.body_text());
    let log = browser.text("#deployment-log");
    assert!(log.contains("step two") && !log.contains("correct"), "{log}");
    assert!(!browser.exists("#deployment-log[data-follow]"));
}

/// alice, on her own page: she sees her sessions, makes a read-only token
/// for 90 days after entering her password again (a wrong one makes
/// nothing; a scope her session lacks or a longer life is refused even
/// when forced), revokes it, signs out her other session, and changes her
/// password.
fn alice_keeps_her_tokens_password_and_sessions_on_her_own_page(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let Some(browser) = Browser::start() else { return };
    set_password(&hosted, "alice");
    let login = |password: &str| {
        hosted.api(
            "POST",
            "/api/v1/auth/token",
            None,
            Some(serde_json::json!({ "name": "alice", "password": password })),
        )
    };
    let (status, elsewhere) = login(PASSWORD);
    assert_eq!(status, 200, "{elsewhere}");
    let elsewhere = elsewhere["token"].as_str().expect("a token").to_owned();
    sign_in_with_password(&browser, &hosted, "alice");
    let base = &hosted.server.url;
    browser.click("#nav-me");
    assert!(browser.url().ends_with("/me"), "{}", browser.url());
    assert_eq!(
        browser.execute("return document.querySelectorAll('#sessions tbody tr').length;", serde_json::json!([])),
        2
    );
    assert!(browser.text("#sessions").contains("this session"), "{}", browser.text("#sessions"));
    assert!(!browser.exists("#tokens input[value='admin']"), "alice's session has no admin scope to give");

    // A wrong password makes nothing.
    browser.type_into("#token-name", "ci");
    browser.click_here("#tokens input[value='write']");
    browser.execute("document.querySelector('#token-days').value = '90';", serde_json::json!([]));
    browser.type_into("#token-password", "not my password");
    browser.click("#make-token");
    assert!(browser.text("#error").contains("not your password"), "{}", browser.body_text());
    let (_, listed) = hosted.api("GET", "/api/v1/tokens", Some(&hosted.token("alice")), None);
    assert!(!listed.to_string().contains("\"ci\""), "a token was made: {listed}");

    browser.goto(&format!("{base}/me"));
    browser.type_into("#token-name", "ci");
    browser.click_here("#tokens input[value='write']");
    browser.execute("document.querySelector('#token-days').value = '90';", serde_json::json!([]));
    browser.type_into("#token-password", PASSWORD);
    browser.click("#make-token");
    let token = browser.text("#new-token");
    let (status, me) = hosted.api("GET", "/api/v1/me", Some(&token), None);
    assert_eq!((status, me["name"].as_str()), (200, Some("alice")), "{me}");
    let (_, listed) = hosted.api("GET", "/api/v1/tokens", Some(&token), None);
    let made = listed["items"].as_array().and_then(|t| t.iter().find(|t| t["name"] == "ci").cloned()).expect("ci");
    assert_eq!(made["scopes"], serde_json::json!(["read"]), "{made}");
    let expires = made["expires_at"].as_str().expect("an expiry");
    let days = (chrono_days(expires) - chrono_days(made["created_at"].as_str().expect("made"))).round();
    assert_eq!(days, 90.0, "the token lives 90 days, not the session's one: {made}");
    let write = serde_json::json!({ "password": "a password set with a read-only token" });
    let (status, refused) = hosted.api("PUT", "/api/v1/me/password", Some(&token), Some(write));
    assert_eq!(status, 403, "a read-only token wrote: {refused}");

    // Forced past the form: a scope the session lacks, a longer life.
    for (field, value, why) in [("scope", "admin", "lacks the admin scope"), ("days", "365", "1 to 90 days")] {
        browser.goto(&format!("{base}/me"));
        browser.type_into("#token-name", "forced");
        browser.type_into("#token-password", PASSWORD);
        browser.execute(
            "const [field, value] = arguments; const form = document.querySelector('form.make-token');\
             if (field === 'days') { form.querySelector('#token-days').innerHTML = '<option>' + value + '</option>'; }\
             else { const i = document.createElement('input'); i.type = 'hidden'; i.name = field; i.value = value; form.appendChild(i); }",
            serde_json::json!([field, value]),
        );
        browser.click("#make-token");
        assert!(browser.text("#error").contains(why), "{field}={value}: {}", browser.body_text());
    }
    let (_, listed) = hosted.api("GET", "/api/v1/tokens", Some(&token), None);
    assert!(!listed.to_string().contains("forced"), "{listed}");

    // Revoked at a click; the other session signed out at a click.
    browser.goto(&format!("{base}/me"));
    let id = made["id"].as_str().expect("an id");
    browser.click(&format!("#tokens tr[data-token='{id}'] .revoke-token"));
    assert_eq!(hosted.api("GET", "/api/v1/me", Some(&token), None).0, 401, "a revoked token works");
    assert_eq!(hosted.api("GET", "/api/v1/me", Some(&elsewhere), None).0, 200);
    browser.click("#end-other-sessions");
    assert_eq!(hosted.api("GET", "/api/v1/me", Some(&elsewhere), None).0, 401, "the other session lives on");
    assert_eq!(browser.text("#signed-in-as"), "alice", "this session ended too");
    assert!(!browser.exists("#end-other-sessions"), "{}", browser.text("#sessions"));
    browser.goto(&format!("{base}/me"));
    snap(&browser, "me", 1400);

    // The password changes only with the current one.
    let new = "a much longer passphrase of alice's";
    for (current, again, why) in [("wrong", new, "not your password"), (PASSWORD, "typo", "differ")] {
        browser.goto(&format!("{base}/me"));
        browser.type_into("#current-password", current);
        browser.type_into("#new-password", new);
        browser.type_into("#new-password-again", again);
        browser.click("#change-password");
        assert!(browser.text("#error").contains(why), "{}", browser.body_text());
    }
    assert_eq!(login(PASSWORD).0, 200, "a refused change changed the password");
    browser.goto(&format!("{base}/me"));
    browser.type_into("#current-password", PASSWORD);
    browser.type_into("#new-password", new);
    browser.type_into("#new-password-again", new);
    browser.click("#change-password");
    assert!(browser.exists("#password-changed"), "{}", browser.body_text());
    assert_eq!(login(PASSWORD).0, 401, "the old password still works");
    assert_eq!(login(new).0, 200, "the new password does not work");
}

/// An RFC 3339 time in days since the epoch.
fn chrono_days(at: &str) -> f64 {
    let output = std::process::Command::new("date").args(["-u", "-d", at, "+%s"]).output().expect("date runs");
    let seconds: f64 = String::from_utf8_lossy(&output.stdout).trim().parse().expect("seconds");
    seconds / 86_400.0
}

/// Every admin change asked for from the pages is a grant, shown with its
/// state: the first admin invites frank, adds carol to a group and to the
/// project, protects a branch and sets a secret, and may approve none of
/// it; erin, the second admin, approves each, and only then does each take
/// effect. A secret's value is never shown, not even to admins.
fn admins_ask_for_grants_in_the_browser_and_a_second_admin_decides(backend: Backend) {
    let Some(hosted) = team(backend) else { return };
    let Some(browser) = Browser::start() else { return };
    seed_deploying(&hosted, &pipeline_with_environments(""), DEPLOY_SCRIPT);
    hosted.as_admin(&["group", "create", "qa"]).expect_code(0);
    hosted.second_admin("erin");
    let base = &hosted.server.url;
    let secret = "s3cret-value-<script>";
    sign_in_with_token(&browser, &hosted, "admin", &hosted.admin);
    let mut asked = Vec::new();
    let mut grant_shown = |browser: &Browser, what: &str| {
        assert!(browser.url().contains("/admin/grants/"), "{what}: {}", browser.url());
        assert_eq!(browser.text("#grant-state"), "pending", "{what}: {}", browser.body_text());
        assert!(!browser.enabled(".card.grant button[value='approve']"), "{what}: the asker may approve");
        assert!(browser.exists(".card.grant .refusal[data-rule]"), "{what}: {}", browser.body_text());
        asked.push(browser.url());
    };

    browser.goto(&format!("{base}/admin"));
    browser.type_into("#invite-name", "frank");
    browser.type_into("#invite-email", "frank@example.com");
    browser.click("#invite");
    assert!(!browser.text("#invite-code").is_empty(), "{}", browser.body_text());
    assert_eq!(browser.text("#invite-grant-state"), "pending");
    browser.goto(&format!("{base}/admin"));
    browser.execute(
        "document.querySelector(\"#groups tr[data-group='qa'] select\").value = 'carol';",
        serde_json::json!([]),
    );
    browser.click("#groups tr[data-group='qa'] .add-member button");
    grant_shown(&browser, "group member");
    snap(&browser, "grant", 900);

    browser.goto(&format!("{base}/projects/{PROJECT}"));
    browser.click("#project-settings");
    browser.execute("document.querySelector('#member-user').value = 'carol'; document.querySelector('#member-role').value = 'maintain';", serde_json::json!([]));
    browser.click("#add-member");
    grant_shown(&browser, "project member");
    browser.goto(&format!("{base}/projects/{PROJECT}/settings"));
    browser.type_into("#protect-branch", "release");
    browser.click("#protect");
    grant_shown(&browser, "protected branch");
    browser.goto(&format!("{base}/projects/{PROJECT}/settings"));
    browser.type_into("#secret-name", "DB_PASSWORD");
    browser.type_into("#secret-value", secret);
    browser.click("#set-secret");
    grant_shown(&browser, "secret");
    assert!(!browser.source().contains("s3cret-value"), "the secret's value is shown");
    browser.goto(&format!("{base}/projects/{PROJECT}/settings"));
    assert!(!browser.source().contains("s3cret-value"), "the secret's value is shown");
    assert!(
        browser.text("#secrets-section").contains("version 1, for a second admin"),
        "{}",
        browser.text("#secrets-section")
    );
    snap(&browser, "settings", 1400);
    // Nothing took effect yet.
    let project = hosted.as_admin(&["project", "show", PROJECT, "--json"]).json();
    assert!(!project.to_string().contains("release"), "{project}");
    sign_out(&browser);

    // erin, the second admin, approves each from its page.
    browser.goto(&format!("{base}/login"));
    browser.type_into("#name", "erin");
    browser.type_into("#password", "a long enough password");
    browser.click("#sign-in");
    assert_eq!(browser.text("#signed-in-as"), "erin");
    browser.goto(&format!("{base}/work"));
    assert_eq!(
        browser
            .execute("return document.querySelectorAll('#work-grants li[data-grant]').length;", serde_json::json!([])),
        5
    );
    for url in &asked {
        browser.goto(url);
        browser.click(".card.grant button[value='approve']");
        assert_eq!(browser.text("#grant-state"), "approved", "{url}: {}", browser.body_text());
    }
    browser.goto(&format!("{base}/admin"));
    let invite = browser.text("#recent-grants");
    assert!(invite.contains("erin"), "{invite}");
    let card = ".card.grant button[value='approve']";
    browser.click(card);
    assert!(browser.text("#grant-state").contains("approved"), "{}", browser.body_text());
    browser.goto(&format!("{base}/admin"));
    assert!(browser.text("#groups tr[data-group='qa']").contains("carol"), "{}", browser.text("#groups"));
    assert!(browser.text("#users").contains("frank"), "{}", browser.text("#users"));
    browser.goto(&format!("{base}/projects/{PROJECT}/settings"));
    assert!(browser.text("#protected").contains("release"), "{}", browser.text("#protected"));
    assert!(browser.text("#members tr[data-user='carol']").contains("maintain"), "{}", browser.text("#members"));
    let secrets = browser.text("#secrets-section");
    assert!(secrets.contains("DB_PASSWORD") && !secrets.contains("for a second admin"), "{secrets}");

    // frank holds no duty: disabling him takes effect at once.
    browser.goto(&format!("{base}/admin"));
    browser.click("#users tr[data-user='frank'] .disable-user");
    assert!(browser.text("#users tr[data-user='frank']").contains("disabled"), "{}", browser.text("#users"));

    // Enabling him again is a grant; his new code works only once it is approved.
    browser.click("#users tr[data-user='frank'] .enable-user");
    assert_eq!(browser.text("#invite-grant-state"), "pending", "{}", browser.body_text());
    let code = browser.text("#invite-code");
    let redeem = || hosted.api("POST", "/api/v1/invites/redeem", None, Some(serde_json::json!({ "code": code })));
    assert_eq!(redeem().0, 401, "a disabled user redeemed an invite");
    sign_out(&browser);
    sign_in_with_token(&browser, &hosted, "admin", &hosted.admin);
    browser.goto(&format!("{base}/admin"));
    let enable = ".card.grant button[value='approve']";
    assert!(browser.text(".card.grant").contains("enable user frank again"), "{}", browser.body_text());
    browser.click(enable);
    assert_eq!(browser.text("#grant-state"), "approved", "{}", browser.body_text());
    let (status, token) = redeem();
    assert_eq!(status, 200, "{token}");
    let (status, me) = hosted.api("GET", "/api/v1/me", token["token"].as_str(), None);
    assert_eq!((status, me["name"].as_str()), (200, Some("frank")), "{me}");
}

on_both_backends! {
    admins_ask_for_grants_in_the_browser_and_a_second_admin_decides,
    alice_keeps_her_tokens_password_and_sessions_on_her_own_page,
    a_running_deployments_log_follows_in_its_page_with_its_secrets_hidden,
    a_rollback_asked_for_in_the_browser_waits_for_someone_but_its_requester,
    a_running_builds_log_follows_in_its_page,
    reviewers_and_approvers_work_in_a_real_browser,
    a_finding_waits_only_for_an_admin_who_was_not_involved,
    every_page_shows_hostile_values_as_text,
}
