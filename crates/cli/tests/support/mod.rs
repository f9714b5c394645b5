//! What the end-to-end tests share: running the real `custody` binary with
//! an isolated environment, starting `custody serve` on port 0 behind a guard
//! that stops it, and bounded waits everywhere.
//!
//! Every wait is bounded: commands are killed after [`COMMAND_TIMEOUT`],
//! servers must announce themselves within [`STARTUP_TIMEOUT`], and a server
//! that ignores SIGTERM is killed.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

/// Runs each scenario, a function taking a `Backend`, as one test on SQLite
/// and one on PostgreSQL.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $scenario() { super::$scenario(super::Backend::Postgres) })*
        }
    };
}

pub mod browser;
pub mod builds;
pub mod deploys;
pub mod flow;
pub mod hosted;
pub mod verify;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_custody");
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Every variable the binary reads; cleared from each child unless a test
/// sets it, so the environment running the tests cannot leak in.
pub const CUSTODY_VARS: &[&str] = &[
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
    "CUSTODY_PUBLIC_URL",
    "CUSTODY_BLOB_STORE",
    "CUSTODY_BUILDERS",
    "CUSTODY_HEADER_TIMEOUT",
    "CUSTODY_IDLE_TIMEOUT",
    "CUSTODY_BODY_MIN_RATE",
    "CUSTODY_BODY_GRACE",
    "CUSTODY_MAX_CONNECTIONS",
    "CUSTODY_MAX_CONNECTIONS_PER_SOURCE",
];

/// A command of the binary: working directory and credentials directory are
/// temporary, and only the given `CUSTODY_*` variables are set.
pub fn custody(workdir: &Path, config_dir: &Path) -> Command {
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
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the exit code, showing everything the command printed if not.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(self.code(), Some(code), "expected exit code {code}; got {self:#?}");
        self
    }

    /// Asserts success and parses stdout as JSON.
    #[track_caller]
    pub fn json(self) -> Value {
        let run = self.expect_code(0);
        serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", run.stdout))
    }

    /// Parses stderr as one JSON object with an `error` key.
    #[track_caller]
    pub fn json_error(&self) -> Value {
        let value: Value = serde_json::from_str(self.stderr.trim())
            .unwrap_or_else(|e| panic!("stderr is not JSON ({e}): {:?}", self.stderr));
        assert!(value.get("error").is_some_and(Value::is_object), "no `error` object in {value}");
        value
    }
}

/// Reads a pipe to its end on a thread.
pub fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs a command to its end, feeding `stdin`, killing it after
/// [`COMMAND_TIMEOUT`].
pub fn run_with_input(command: Command, stdin: Option<&str>) -> Run {
    run_within(command, stdin, COMMAND_TIMEOUT)
}

/// [`run_with_input`], killed after `timeout` rather than [`COMMAND_TIMEOUT`].
pub fn run_within(mut command: Command, stdin: Option<&str>, timeout: Duration) -> Run {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        // The command may exit before reading; a broken pipe is its business.
        let _ = pipe.write_all(input.as_bytes());
    }
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    Run { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

pub fn run(command: Command) -> Run {
    run_with_input(command, None)
}

/// A running `custody serve`, stopped with SIGTERM when dropped.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The bootstrap token, when this start initialised the data directory.
    pub token: Option<String>,
    /// Everything printed on stdout up to and including the listening line.
    pub banner: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `command` (a `custody serve …`) and waits for its listening
    /// line; panics with its output if it exits or stays silent instead.
    pub fn start(command: Command) -> Server {
        Server::start_announced(command, "listening on ")
    }

    /// Starts a long-running `command` (a server or a worker) and waits for
    /// the line of its stdout that starts with `ready`; panics with its
    /// output if it exits or stays silent instead. `url` is set only from a
    /// `listening on` line.
    pub fn start_announced(mut command: Command, ready: &str) -> Server {
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
                    }
                    if line.starts_with(ready) {
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

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {}", self.url))
    }

    /// Waits up to `limit` for the child to exit, killing it after that.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
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

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL, as a crash would: nothing of it runs
    /// after this.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let _ = child.kill();
        self.wait_for_exit(STOP_TIMEOUT)
    }

    /// Sends SIGTERM and waits for the exit; `None` if it had to be killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
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

/// An HTTP answer as read off the wire.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of a header, by its name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 GET with extra request headers.
pub fn http_request(base: &str, path: &str, headers: &[(&str, &str)]) -> HttpAnswer {
    http_send(base, "GET", path, headers, None)
}

/// A minimal HTTP/1.1 request of any method, with extra request headers
/// and, when given, a body (sent with its `Content-Length`).
pub fn http_send(base: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> HttpAnswer {
    let authority = base.strip_prefix("http://").expect("an http:// URL");
    let address = authority.to_socket_addrs().expect("resolve").next().expect("an address");
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(10)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    stream.set_write_timeout(Some(Duration::from_secs(10))).expect("write timeout");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: */*\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&bytes).expect("send");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {response:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    HttpAnswer { status, headers, body: body.to_owned() }
}

/// A minimal HTTP/1.1 GET: the status code and the body.
pub fn http_get(base: &str, path: &str) -> (u16, String) {
    let answer = http_request(base, path, &[]);
    (answer.status, answer.body)
}

/// One test's directories: a working directory, and a credentials directory
/// per person.
pub struct Sandbox {
    pub root: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox { root: tempfile::tempdir().expect("temporary directory") }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// A command run as `who`, whose stored credentials live apart from
    /// everyone else's.
    pub fn as_user(&self, who: &str) -> Command {
        custody(self.root.path(), &self.path(&format!("config-{who}")))
    }

    /// `custody serve --data-dir DATA --listen 127.0.0.1:0`.
    pub fn serve(&self, data: &str) -> Server {
        self.serve_on(data, None)
    }

    /// `custody serve --data-dir DATA --listen 127.0.0.1:0`, with
    /// `--database-url URL` when given (SQLite in DATA otherwise).
    pub fn serve_on(&self, data: &str, database_url: Option<&str>) -> Server {
        self.serve_with(data, database_url, &[], &[])
    }

    /// [`Sandbox::serve_on`] with `env` set and `extra` arguments for `custody serve`.
    pub fn serve_with(&self, data: &str, database_url: Option<&str>, env: &[(&str, &str)], extra: &[&str]) -> Server {
        let mut command = self.as_user("server");
        command.envs(env.iter().copied());
        command.arg("serve").arg("--data-dir").arg(self.path(data)).args(["--listen", "127.0.0.1:0"]);
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        command.args(extra);
        Server::start(command)
    }

    /// `custody init --data-dir DATA --admin ADMIN --json`: the admin's token.
    pub fn init(&self, data: &str, admin: &str) -> String {
        let mut command = self.as_user("init");
        command.arg("init").arg("--data-dir").arg(self.path(data)).args(["--admin", admin, "--json"]);
        let made = run(command).json();
        made["token"].as_str().expect("a token").to_owned()
    }

    /// A client command as `who`, against `server` with `token`.
    pub fn client(&self, who: &str, server: &Server, token: &str, args: &[&str]) -> Run {
        let mut command = self.as_user(who);
        command.env("CUSTODY_SERVER", &server.url).env("CUSTODY_TOKEN", token).args(args);
        run(command)
    }
}
