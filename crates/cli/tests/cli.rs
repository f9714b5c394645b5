//! End-to-end tests of the `custody` binary: every test runs the real
//! executable as a subprocess, with its own temporary directories, and stops
//! every server it starts.
//!
//! Every wait is bounded: commands are killed after [`COMMAND_TIMEOUT`],
//! servers must announce themselves within [`STARTUP_TIMEOUT`], and a server
//! that ignores SIGTERM is killed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_custody");
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Every variable the binary reads; cleared from each child unless a test
/// sets it, so the environment running the tests cannot leak in.
const CUSTODY_VARS: &[&str] = &[
    "CUSTODY_SERVER",
    "CUSTODY_TOKEN",
    "CUSTODY_CONFIG",
    "CUSTODY_CONFIG_DIR",
    "CUSTODY_DATA_DIR",
    "CUSTODY_LISTEN",
    "CUSTODY_DATABASE_URL",
    "CUSTODY_LOG_FORMAT",
    "CUSTODY_LOG",
    "CUSTODY_NAME",
];

/// A command of the binary: working directory and credentials directory are
/// temporary, and only the given `CUSTODY_*` variables are set.
fn custody(workdir: &Path, config_dir: &Path) -> Command {
    let mut command = Command::new(BIN);
    for var in CUSTODY_VARS {
        command.env_remove(var);
    }
    command.env_remove("XDG_CONFIG_HOME");
    command.env("CUSTODY_CONFIG_DIR", config_dir);
    command.env("NO_COLOR", "1");
    command.current_dir(workdir);
    command
}

/// The outcome of a finished command.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the exit code, showing everything the command printed if not.
    #[track_caller]
    fn expect_code(self, code: i32) -> Run {
        assert_eq!(self.code(), Some(code), "expected exit code {code}; got {self:#?}");
        self
    }

    /// Asserts success and parses stdout as JSON.
    #[track_caller]
    fn json(self) -> Value {
        let run = self.expect_code(0);
        serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", run.stdout))
    }

    /// Parses stderr as one JSON object with an `error` key.
    #[track_caller]
    fn json_error(&self) -> Value {
        let value: Value = serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {:?}", self.stderr));
        assert!(value.get("error").is_some_and(Value::is_object), "no `error` object in {value}");
        value
    }
}

/// Reads a pipe to its end on a thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs a command to its end, feeding `stdin`, killing it after
/// [`COMMAND_TIMEOUT`].
fn run_with_input(mut command: Command, stdin: Option<&str>) -> Run {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().expect("spawn custody");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        // The command may exit before reading; a broken pipe is its business.
        let _ = pipe.write_all(input.as_bytes());
    }
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for custody") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {COMMAND_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Run { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

fn run(command: Command) -> Run {
    run_with_input(command, None)
}

/// A running `custody serve`, stopped with SIGTERM when dropped.
struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    url: String,
    /// The bootstrap token, when this start initialised the data directory.
    token: Option<String>,
    /// Everything printed on stdout up to and including the listening line.
    banner: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `command` (a `custody serve …`) and waits for its listening
    /// line; panics with its output if it exits or stays silent instead.
    fn start(mut command: Command) -> Server {
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn custody serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let stderr = Arc::clone(&stderr);
            let pipe = child.stderr.take().expect("stderr");
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut all = stderr.lock().unwrap_or_else(|e| e.into_inner());
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        let (lines, received) = mpsc::channel();
        let pipe = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            // Keeps reading after the banner so the server never blocks on
            // a full pipe; lines after the receiver is gone are dropped.
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        // From here on the guard stops the child, even if a check panics.
        let mut server = Server { child: Some(child), url: String::new(), token: None, banner: Vec::new(), stderr };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(line) => {
                    server.banner.push(line.clone());
                    if let Some(token) = line.strip_prefix("token: ") {
                        server.token = Some(token.trim().to_owned());
                    }
                    if let Some(url) = line.strip_prefix("listening on ") {
                        server.url = url.trim().to_owned();
                        return server;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "no listening line within {STARTUP_TIMEOUT:?}; stdout {:?}, stderr {}",
                        server.banner,
                        server.stderr()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.wait_for_exit(STOP_TIMEOUT);
                    panic!(
                        "custody serve ended ({status:?}) before listening; stdout {:?}, stderr {}",
                        server.banner,
                        server.stderr()
                    )
                }
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The port the server listens on.
    fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {}", self.url))
    }

    /// Waits up to `limit` for the child to exit, killing it after that.
    fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// Sends SIGTERM and waits for the exit; `None` if it had to be killed.
    fn stop(&mut self) -> Option<ExitStatus> {
        let pid = self.child.as_ref()?.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.wait_for_exit(STOP_TIMEOUT)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.1 GET: the status code and the body.
fn http_get(base: &str, path: &str) -> (u16, String) {
    let authority = base.strip_prefix("http://").expect("an http:// URL");
    let address = authority.to_socket_addrs().expect("resolve").next().expect("an address");
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    stream.set_write_timeout(Some(Duration::from_secs(10))).expect("write timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: */*\r\n\r\n")
        .expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {response:?}"));
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// One test's directories: a working directory, and a credentials directory
/// per person.
struct Sandbox {
    root: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox { root: tempfile::tempdir().expect("temporary directory") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// A command run as `who`, whose stored credentials live apart from
    /// everyone else's.
    fn as_user(&self, who: &str) -> Command {
        custody(self.root.path(), &self.path(&format!("config-{who}")))
    }

    /// `custody serve --data-dir DATA --listen 127.0.0.1:0`.
    fn serve(&self, data: &str) -> Server {
        let mut command = self.as_user("server");
        command.arg("serve").arg("--data-dir").arg(self.path(data)).args(["--listen", "127.0.0.1:0"]);
        Server::start(command)
    }

    /// `custody init --data-dir DATA --admin ADMIN --json`: the admin's token.
    fn init(&self, data: &str, admin: &str) -> String {
        let mut command = self.as_user("init");
        command.arg("init").arg("--data-dir").arg(self.path(data)).args(["--admin", admin, "--json"]);
        let made = run(command).json();
        made["token"].as_str().expect("a token").to_owned()
    }

    /// A client command as `who`, against `server` with `token`.
    fn client(&self, who: &str, server: &Server, token: &str, args: &[&str]) -> Run {
        let mut command = self.as_user(who);
        command.env("CUSTODY_SERVER", &server.url).env("CUSTODY_TOKEN", token).args(args);
        run(command)
    }
}

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
