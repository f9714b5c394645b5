//! End-to-end tests of the `custody` binary: every test runs the real
//! executable as a subprocess, with its own temporary directories, and stops
//! every server it starts.
//!
//! The shared helpers live in `support`: every wait there is bounded, and
//! every server is stopped by its guard.

mod support;

use std::time::{Duration, Instant};

use support::{http_get, run, run_with_input, Sandbox, Server};

fn audit_count(sandbox: &Sandbox, server: &Server, token: &str) -> usize {
    let events = sandbox.client("root", server, token, &["audit", "log", "--json"]).json();
    events.as_array().expect("a list of events").len()
}

#[test]
fn unknown_flag_is_a_usage_error_with_exit_2() {
    let sandbox = Sandbox::new();
    let data = sandbox.path("data");

    let mut command = sandbox.as_user("root");
    command.args(["init", "--bogus"]);
    let bogus = run(command).expect_code(2);
    assert!(bogus.stderr.contains("--bogus"), "{bogus:?}");

    let mut command = sandbox.as_user("root");
    command.args(["whoami", "--bogus"]);
    run(command).expect_code(2);

    // A missing required flag: usage error, and nothing is created.
    let mut command = sandbox.as_user("root");
    command.arg("init").arg("--data-dir").arg(&data);
    let missing = run(command).expect_code(2);
    assert!(missing.stderr.contains("--admin"), "{missing:?}");
    assert!(!data.exists());

    let mut command = sandbox.as_user("root");
    command.args(["user", "add", "x"]);
    let missing = run(command).expect_code(2);
    assert!(missing.stderr.contains("--email"), "{missing:?}");

    // No subcommand at all.
    run(sandbox.as_user("root")).expect_code(2);
}

#[test]
fn init_prints_the_admin_token_once_as_json() {
    use std::os::unix::fs::PermissionsExt;

    let sandbox = Sandbox::new();
    let data = sandbox.path("data");
    let mut command = sandbox.as_user("root");
    command.arg("init").arg("--data-dir").arg(&data).args(["--admin", "root", "--json"]);
    let made = run(command).json();
    assert_eq!(made["admin"], "root", "{made}");
    let token = made["token"].as_str().expect("a token");
    assert!(token.starts_with("cst_"), "{token}");

    let keys: Vec<_> = std::fs::read_dir(data.join("keys")).expect("a keys directory").map(|e| e.unwrap()).collect();
    assert!(!keys.is_empty(), "no key files");
    for key in keys {
        let mode = key.metadata().expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", key.path().display());
    }

    let mut command = sandbox.as_user("root");
    command.arg("init").arg("--data-dir").arg(&data).args(["--admin", "root", "--json"]);
    let again = run(command).expect_code(2);
    assert!(again.stderr.contains("already holds"), "{again:?}");
    assert!(!again.stdout.contains("cst_"), "a second token was printed: {again:?}");
}

#[test]
fn init_refuses_an_invalid_admin_name_and_writes_nothing() {
    let sandbox = Sandbox::new();
    let data = sandbox.path("data");
    for admin in ["../evil", "Root", ""] {
        let mut command = sandbox.as_user("root");
        command.arg("init").arg("--data-dir").arg(&data).args(["--admin", admin]);
        let refused = run(command).expect_code(2);
        assert!(refused.stdout.is_empty(), "{refused:?}");
        assert!(!data.exists(), "{} was created for admin {admin:?}", data.display());
    }
    // An invalid e-mail address is refused as early.
    let mut command = sandbox.as_user("root");
    command.arg("init").arg("--data-dir").arg(&data).args(["--admin", "root", "--admin-email", "nope"]);
    run(command).expect_code(2);
    assert!(!data.exists());
}

#[test]
fn serve_on_port_0_prints_the_real_port_and_stops_on_sigterm() {
    let sandbox = Sandbox::new();
    let data = sandbox.path("data");
    assert!(!data.exists());
    let mut server = sandbox.serve("data");

    assert!(server.banner.iter().any(|l| l == "admin: admin"), "{:?}", server.banner);
    let token = server.token.clone().expect("a bootstrap token on first start");
    assert!(token.starts_with("cst_"), "{token}");
    assert!(server.url.starts_with("http://127.0.0.1:"), "{}", server.url);
    assert_ne!(server.port(), 0);
    assert!(data.join("keys").is_dir());

    let (status, body) = http_get(&server.url, "/healthz");
    assert_eq!(status, 200, "{body}");

    // The bootstrap token works.
    let me = sandbox.client("admin", &server, &token, &["whoami", "--json"]).json();
    assert_eq!(me["name"], "admin");

    let started = Instant::now();
    let status = server.stop().expect("custody serve did not stop on SIGTERM");
    assert!(status.success(), "exit {status:?}; stderr {}", server.stderr());
    assert!(started.elapsed() < Duration::from_secs(5), "stopping took {:?}", started.elapsed());

    // A second start opens the same instance: no new token.
    let server = sandbox.serve("data");
    assert!(server.token.is_none(), "{:?}", server.banner);
    let me = sandbox.client("admin", &server, &token, &["whoami", "--json"]).json();
    assert_eq!(me["name"], "admin");
}

#[test]
fn serve_takes_flags_over_environment_over_config_file() {
    // An address that is refused at once, without any name lookup.
    const UNUSABLE: &str = "127.0.0.1:99999";
    let sandbox = Sandbox::new();
    let config = |name: &str, text: &str| {
        let path = sandbox.path(name);
        std::fs::write(&path, text).expect("write config");
        path
    };

    // The file alone.
    let file = config("good.toml", &format!("listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n", sandbox.path("from-file")));
    let mut command = sandbox.as_user("server");
    command.arg("serve").arg("--config").arg(&file);
    let server = Server::start(command);
    assert_ne!(server.port(), 0);
    assert!(sandbox.path("from-file").join("keys").is_dir());
    drop(server);

    // The file's unusable address really fails…
    let bad = config("bad.toml", &format!("listen = {UNUSABLE:?}\ndata_dir = {:?}\n", sandbox.path("bad-listen")));
    let mut command = sandbox.as_user("server");
    command.arg("serve").arg("--config").arg(&bad);
    let failed = run(command).expect_code(2);
    assert!(failed.stderr.contains(UNUSABLE), "{failed:?}");

    // …and CUSTODY_LISTEN overrides it.
    let mut command = sandbox.as_user("server");
    command.arg("serve").env("CUSTODY_CONFIG", &bad).env("CUSTODY_LISTEN", "127.0.0.1:0");
    let server = Server::start(command);
    assert_ne!(server.port(), 0);
    drop(server);

    // A flag overrides the environment, for the address and the data directory.
    let mut command = sandbox.as_user("server");
    command
        .arg("serve")
        .arg("--config")
        .arg(&bad)
        .env("CUSTODY_LISTEN", UNUSABLE)
        .env("CUSTODY_DATA_DIR", sandbox.path("from-env"))
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(sandbox.path("from-flag"));
    let server = Server::start(command);
    assert_ne!(server.port(), 0);
    assert!(sandbox.path("from-flag").join("keys").is_dir());
    assert!(!sandbox.path("from-env").exists());
    drop(server);

    // The environment overrides the file's data directory.
    let mut command = sandbox.as_user("server");
    command
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .env("CUSTODY_DATA_DIR", sandbox.path("from-env"))
        .args(["--listen", "127.0.0.1:0"]);
    let server = Server::start(command);
    assert!(sandbox.path("from-env").join("keys").is_dir());
    drop(server);

    // An unknown key is refused with its place.
    let unknown = config("unknown.toml", "listen = \"127.0.0.1:0\"\n\nlisten_port = 8080\n");
    let mut command = sandbox.as_user("server");
    command.arg("serve").arg("--config").arg(&unknown);
    let refused = run(command).expect_code(2);
    assert!(refused.stderr.contains("line 3, column 1"), "{refused:?}");
    assert!(refused.stderr.contains("listen_port"), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    assert!(!sandbox.path("custody-data").exists(), "the default data directory was created");

    // A config file that is missing is an input error too.
    let mut command = sandbox.as_user("server");
    command.arg("serve").arg("--config").arg(sandbox.path("missing.toml"));
    run(command).expect_code(2);
}

#[test]
fn client_flow_login_add_user_redeem_and_whoami() {
    use std::os::unix::fs::PermissionsExt;

    let sandbox = Sandbox::new();
    let server = sandbox.serve("data");
    let root_token = server.token.clone().expect("a bootstrap token");

    // Login reads the token from standard input and stores it.
    let mut command = sandbox.as_user("root");
    command.args(["login", "--json", "--server", &server.url]);
    let login = run_with_input(command, Some(&format!("{root_token}\n"))).json();
    assert_eq!(login["user"], "admin", "{login}");
    let credentials = sandbox.path("config-root").join("credentials.toml");
    let mode = std::fs::metadata(&credentials).expect("stored credentials").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credentials have mode {mode:o}");

    // Later commands use the stored server and token: no env, no flag.
    let mut command = sandbox.as_user("root");
    command.args(["whoami", "--json"]);
    assert_eq!(run(command).json()["name"], "admin");

    let mut command = sandbox.as_user("root");
    command.args(["user", "add", "alice", "--email", "alice@example.com", "--json"]);
    let added = run(command).json();
    assert_eq!(added["name"], "alice", "{added}");
    assert_eq!(added["grant"]["status"], "bootstrap", "{added}");
    let code = added["invite_code"].as_str().expect("an invite code").to_owned();

    // Alice has her own credentials directory, with nothing in it.
    let mut command = sandbox.as_user("alice");
    command.args(["token", "redeem", &code, "--json", "--server", &server.url]);
    let redeemed = run(command).json();
    let alice_token = redeemed["token"].as_str().expect("a token").to_owned();
    assert!(alice_token.starts_with("cst_"), "{redeemed}");
    assert!(!sandbox.path("config-alice").join("credentials.toml").exists(), "redeem without --save stored a token");

    let me = sandbox.client("alice", &server, &alice_token, &["whoami", "--json"]).json();
    assert_eq!(me["name"], "alice", "{me}");

    // An invite code works once.
    let mut command = sandbox.as_user("alice");
    command.args(["token", "redeem", &code, "--server", &server.url]);
    let again = run(command);
    assert!(matches!(again.code(), Some(1 | 2)), "{again:?}");

    // Alice is no admin: asking for a user is denied (exit 1).
    let denied =
        sandbox.client("alice", &server, &alice_token, &["user", "add", "mallory", "--email", "m@example.com"]);
    denied.expect_code(1);

    // Logout forgets root's token.
    let mut command = sandbox.as_user("root");
    command.args(["logout", "--json"]);
    assert_eq!(run(command).json()["logged_out"], true);
    let mut command = sandbox.as_user("root");
    command.arg("whoami");
    run(command).expect_code(1);
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let sandbox = Sandbox::new();
    let server = sandbox.serve("data");
    let token = server.token.clone().expect("a bootstrap token");
    let before = audit_count(&sandbox, &server, &token);

    // Client-side validation: no request is made, so even an unreachable
    // server gives the input error (2), not "unreachable" (3).
    let invalid = sandbox.client("root", &server, &token, &["user", "add", "../x", "--email", "a@b.org"]);
    invalid.expect_code(2);
    let mut command = sandbox.as_user("root");
    command.env("CUSTODY_SERVER", "http://127.0.0.1:1").env("CUSTODY_TOKEN", &token);
    command.args(["user", "add", "../x", "--email", "a@b.org"]);
    run(command).expect_code(2);

    sandbox.client("root", &server, &token, &["user", "add", "bob", "--email", "not-an-email"]).expect_code(2);

    sandbox.client("root", &server, &token, &["user", "add", "alice", "--email", "alice@example.com"]).expect_code(0);
    let after_alice = audit_count(&sandbox, &server, &token);
    assert!(after_alice > before, "adding alice left no audit event");
    let duplicate = sandbox.client("root", &server, &token, &["user", "add", "alice", "--email", "alice@example.com"]);
    let duplicate = duplicate.expect_code(2);
    assert!(duplicate.stderr.contains("alice"), "{duplicate:?}");

    // Not found is 2 as well.
    sandbox.client("root", &server, &token, &["user", "show", "nobody"]).expect_code(2);
    sandbox.client("root", &server, &token, &["grant", "show", "9999"]).expect_code(2);

    let users = sandbox.client("root", &server, &token, &["user", "list", "--json"]).json();
    let mut names: Vec<&str> = users.as_array().expect("a list").iter().filter_map(|u| u["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["admin", "alice"], "{users}");

    assert_eq!(audit_count(&sandbox, &server, &token), after_alice, "failed attempts were audited as changes");
}

#[test]
fn refusals_exit_1_with_the_rule() {
    let sandbox = Sandbox::new();
    let root = sandbox.init("data", "root");
    let server = sandbox.serve("data");
    assert!(server.token.is_none(), "an initialised instance printed a token: {:?}", server.banner);
    let as_root = |args: &[&str]| sandbox.client("root", &server, &root, args);

    // While root is the only admin, grants apply at once (bootstrap).
    let bob = as_root(&["user", "add", "bob", "--email", "bob@example.com", "--json"]).json();
    assert_eq!(bob["grant"]["status"], "bootstrap", "{bob}");
    let membership = as_root(&["group", "add", "admins", "bob", "--json"]).json();
    assert_eq!(membership["status"], "bootstrap", "{membership}");

    // Now there are two admins: root's request waits for bob.
    let carol = as_root(&["user", "add", "carol", "--email", "carol@example.com", "--json"]).json();
    assert_eq!(carol["grant"]["status"], "pending", "{carol}");
    let id = carol["grant"]["id"].as_i64().expect("a grant id").to_string();

    let refused = as_root(&["grant", "approve", &id]).expect_code(1);
    assert!(refused.stderr.contains("grant.requester_cannot_approve"), "{refused:?}");

    let refused = as_root(&["grant", "approve", &id, "--json"]);
    let error = refused.json_error();
    assert_eq!(refused.code(), Some(1));
    let rules: Vec<&str> =
        error["error"]["reasons"].as_array().expect("reasons").iter().filter_map(|r| r["rule"].as_str()).collect();
    assert!(rules.contains(&"grant.requester_cannot_approve"), "{error}");

    // The refusal changed nothing.
    let grant = as_root(&["grant", "show", &id, "--json"]).json();
    assert_eq!(grant["status"], "pending", "{grant}");
    let pending = as_root(&["grant", "list", "--json"]).json();
    assert_eq!(pending.as_array().map(Vec::len), Some(1), "{pending}");
}

#[test]
fn unreachable_server_exits_3() {
    let sandbox = Sandbox::new();
    let mut command = sandbox.as_user("root");
    command.env("CUSTODY_SERVER", "http://127.0.0.1:1").env("CUSTODY_TOKEN", "cst_x").arg("whoami");
    let failed = run(command).expect_code(3);
    assert!(failed.stderr.contains("127.0.0.1:1"), "{failed:?}");

    // Without any server configured it is a usage problem instead.
    let mut command = sandbox.as_user("root");
    command.arg("whoami");
    run(command).expect_code(2);

    // A server that is not a URL is an input error.
    let mut command = sandbox.as_user("root");
    command.env("CUSTODY_SERVER", "127.0.0.1:1").arg("whoami");
    run(command).expect_code(2);
}

#[test]
fn json_errors_are_json() {
    let sandbox = Sandbox::new();

    // Unreachable server.
    let mut command = sandbox.as_user("root");
    command.env("CUSTODY_SERVER", "http://127.0.0.1:1").env("CUSTODY_TOKEN", "cst_x").args(["whoami", "--json"]);
    let unreachable = run(command).expect_code(3);
    unreachable.json_error();

    // Local input error.
    let mut command = sandbox.as_user("root");
    command.arg("init").arg("--data-dir").arg(sandbox.path("data")).args(["--admin", "../evil", "--json"]);
    let invalid = run(command).expect_code(2);
    assert!(invalid.json_error()["error"]["message"].as_str().is_some_and(|m| m.contains("../evil")), "{invalid:?}");

    // Config file error.
    let config = sandbox.path("bad.toml");
    std::fs::write(&config, "bogus = true\n").expect("write config");
    let mut command = sandbox.as_user("server");
    command.args(["--json", "serve", "--config"]).arg(&config);
    run(command).expect_code(2).json_error();

    // Errors the server sent: its own JSON body.
    let server = sandbox.serve("data");
    let token = server.token.clone().expect("a bootstrap token");
    sandbox.client("root", &server, &token, &["user", "add", "alice", "--email", "a@example.com"]).expect_code(0);
    let conflict =
        sandbox.client("root", &server, &token, &["user", "add", "alice", "--email", "a@example.com", "--json"]);
    assert_eq!(conflict.code(), Some(2));
    assert_eq!(conflict.json_error()["error"]["code"], "conflict");
    assert!(conflict.stdout.is_empty(), "{conflict:?}");

    let not_found = sandbox.client("root", &server, &token, &["user", "show", "nobody", "--json"]);
    assert_eq!(not_found.code(), Some(2));
    assert_eq!(not_found.json_error()["error"]["code"], "not_found");

    let unauthenticated = sandbox.client("root", &server, "cst_wrong", &["whoami", "--json"]);
    assert_eq!(unauthenticated.code(), Some(1));
    unauthenticated.json_error();
}

/// `custody doctor --json` on `data`, with `env` set, as a list of checks.
fn doctor(sandbox: &Sandbox, data: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Vec<serde_json::Value>) {
    let mut command = sandbox.as_user("root");
    command.args(["doctor", "--json", "--data-dir"]).arg(sandbox.path(data)).args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let done = run(command);
    let checks: serde_json::Value = serde_json::from_str(&done.stdout).unwrap_or_else(|e| panic!("{e}: {done:?}"));
    (done.code(), checks.as_array().cloned().expect("a list of checks"))
}

fn problems<'a>(checks: &'a [serde_json::Value], check: &str) -> Vec<&'a serde_json::Value> {
    checks.iter().filter(|c| c["check"] == check && c["state"] == "problem").collect()
}

#[test]
fn doctor_finds_a_healthy_instance_healthy_and_names_each_problem_of_a_broken_one() {
    use std::os::unix::fs::PermissionsExt;

    let sandbox = Sandbox::new();
    let server = sandbox.serve("data");
    let (code, checks) = doctor(&sandbox, "data", &["--url", &server.url], &[]);
    assert_eq!(code, Some(0), "{checks:#?}");
    for check in ["data directory", "keys", "sandbox", "database", "ledger", "blob store", "server"] {
        let found = checks.iter().find(|c| c["check"] == check).unwrap_or_else(|| panic!("no {check}: {checks:#?}"));
        assert_ne!(found["state"], "problem", "{found}");
    }

    // A key others can read, no bubblewrap, and an artifact store that does
    // not answer: each named, with what to do.
    let key = sandbox.path("data").join("keys").join("builder.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let env = [
        ("CUSTODY_BWRAP", "/nonexistent/bwrap"),
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "doctor"),
        ("AWS_SECRET_ACCESS_KEY", "doctor"),
        ("AWS_REGION", "us-east-1"),
    ];
    let (code, checks) = doctor(&sandbox, "data", &["--blob-store", "s3://artifacts/custody"], &env);
    assert_eq!(code, Some(1), "{checks:#?}");
    let keys = problems(&checks, "keys");
    assert_eq!(keys.len(), 1, "{checks:#?}");
    let said = keys[0]["message"].as_str().unwrap_or_default();
    assert!(said.contains("builder.pem") && said.contains("0644"), "{said}");
    assert!(keys[0]["fix"].as_str().unwrap_or_default().contains("chmod 600"), "{}", keys[0]);
    let sandboxed = problems(&checks, "sandbox");
    assert!(
        sandboxed.iter().any(|c| c["message"].as_str().unwrap_or_default().contains("not installed")),
        "{checks:#?}"
    );
    let blobs = problems(&checks, "blob store");
    assert!(blobs.iter().any(|c| c["message"].as_str().unwrap_or_default().contains("s3://artifacts")), "{checks:#?}");
    // The rest of the instance is still found sound.
    assert!(problems(&checks, "database").is_empty() && problems(&checks, "ledger").is_empty(), "{checks:#?}");
}
