//! A hosted project for end-to-end tests with the real `git` client: a
//! `custody serve` on a fresh data directory (SQLite, or a fresh PostgreSQL
//! database), its admin logged in, the project `payments`, and alice a
//! writer.
//!
//! Every git command runs with a clean environment: no system or user
//! configuration, no prompts, a temporary HOME, and identities given with
//! `-c user.name=… -c user.email=…`. Tokens travel in the remote URL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use serde_json::Value;

use super::{run, run_with_input, Run, Sandbox, Server};

pub const PROJECT: &str = "payments";

/// A git command in `dir`, as the person `(name, email)`, with nothing of
/// the environment running the tests.
pub fn git_command(home: &Path, dir: &Path, who: (&str, &str)) -> Command {
    let mut command = Command::new("git");
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .current_dir(dir)
        .arg("-c")
        .arg(format!("user.name={}", who.0))
        .arg("-c")
        .arg(format!("user.email={}", who.1))
        .args(["-c", "init.defaultBranch=main", "-c", "advice.detachedHead=false"]);
    command
}

/// Where the server keeps its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data directory.
    Sqlite,
    /// A PostgreSQL database made for the test, dropped after it.
    Postgres,
}

// The same rules as the store's own tests: where PostgreSQL is, and when it
// may be skipped (only on purpose, never with CI=true).
pub use custody_store::testing::{postgres_admin_url, postgres_skipped};

/// `psql` against the administrative database, stopping at the first error.
pub fn psql(sql: &str) -> Run {
    let mut command = Command::new("psql");
    command
        .arg(postgres_admin_url())
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10");
    run(command)
}

/// A PostgreSQL database that exists for one test, dropped with the guard.
pub struct PostgresDatabase {
    pub name: String,
    /// The URL the server opens it with.
    pub url: String,
}

impl PostgresDatabase {
    /// Creates a fresh database; an unreachable server fails the test.
    pub fn create() -> PostgresDatabase {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name = format!("custody_cli_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let made = psql(&format!("CREATE DATABASE {name}"));
        assert_eq!(
            made.code(),
            Some(0),
            "cannot create a database at {} ({made:?}); start PostgreSQL, point CUSTODY_TEST_POSTGRES at one, \
             or set CUSTODY_TEST_SKIP_POSTGRES=1 to skip it locally",
            postgres_admin_url()
        );
        let admin = postgres_admin_url();
        let base = admin.rsplit_once('/').map(|(base, _)| base.to_owned()).unwrap_or(admin);
        PostgresDatabase { url: format!("{base}/{name}"), name }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let dropped = psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        if dropped.code() != Some(0) {
            eprintln!("could not drop the test database {}: {dropped:?}", self.name);
        }
    }
}

/// One test's instance: a server on a fresh data directory with the
/// project `payments`, its admin logged in, and alice a writer.
///
/// Fields drop in order: the server stops before its database is dropped
/// and its directories are removed.
pub struct Hosted {
    pub server: Server,
    pub database: Option<PostgresDatabase>,
    pub sandbox: Sandbox,
    /// The bootstrap admin's token (all scopes; not a project member).
    pub admin: String,
    /// Alice's token (read and write), a writer in `payments`.
    pub alice: String,
    /// Every user's token, by name.
    tokens: Mutex<BTreeMap<String, String>>,
}

impl Hosted {
    /// On SQLite.
    pub fn new() -> Hosted {
        Hosted::on(Backend::Sqlite).expect("SQLite is never skipped")
    }

    /// On `backend`; `None` only when PostgreSQL was deliberately skipped.
    pub fn on(backend: Backend) -> Option<Hosted> {
        Hosted::serving(backend, &[], &[])
    }

    /// On `backend`, its server started with `env` set besides.
    pub fn on_with(backend: Backend, env: &[(&str, &str)]) -> Option<Hosted> {
        Hosted::serving(backend, env, &[])
    }

    /// On `backend`, with a server that runs no builds itself
    /// (`--builders 0`): builds wait for a `custody worker`.
    pub fn without_builders(backend: Backend) -> Option<Hosted> {
        Hosted::serving(backend, &[], &["--builders", "0"])
    }

    /// On SQLite, `custody serve` started with `extra` arguments.
    pub fn with_args(extra: &[&str]) -> Hosted {
        Hosted::serving(Backend::Sqlite, &[], extra).expect("SQLite is never skipped")
    }

    /// On `backend`, `custody serve` started with `env` and `extra` arguments.
    fn serving(backend: Backend, env: &[(&str, &str)], extra: &[&str]) -> Option<Hosted> {
        let database = match backend {
            Backend::Sqlite => None,
            Backend::Postgres if postgres_skipped() => {
                eprintln!("skipping PostgreSQL: CUSTODY_TEST_SKIP_POSTGRES=1");
                return None;
            }
            Backend::Postgres => Some(PostgresDatabase::create()),
        };
        let sandbox = Sandbox::new();
        std::fs::create_dir_all(sandbox.path("home")).expect("a HOME for git");
        let server = sandbox.serve_with("data", database.as_ref().map(|d| d.url.as_str()), env, extra);
        let admin = server.token.clone().expect("a bootstrap token on first start");

        let mut login = sandbox.as_user("admin");
        login.args(["login", "--json", "--server", &server.url]);
        let login = run_with_input(login, Some(&format!("{admin}\n"))).json();
        assert_eq!(login["user"], "admin", "{login}");

        let mut hosted =
            Hosted { server, database, sandbox, admin, alice: String::new(), tokens: Mutex::new(BTreeMap::new()) };
        let project = hosted.as_admin(&["project", "create", PROJECT, "--json"]).json();
        assert_eq!(project["name"], PROJECT, "{project}");
        hosted.alice = hosted.add_user("alice", "write");
        Some(hosted)
    }

    /// Starts `custody serve` again on the same data directory and database
    /// (after it stopped or died), with `env` set, and logs the admin in to
    /// its new address. Workspaces cloned before still name the old one.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.server.stop();
        let url = self.database.as_ref().map(|d| d.url.clone());
        self.server = self.sandbox.serve_with("data", url.as_deref(), env, &[]);
        let mut login = self.sandbox.as_user("admin");
        login.args(["login", "--json", "--server", &self.server.url]);
        let login = run_with_input(login, Some(&format!("{}\n", self.admin))).json();
        assert_eq!(login["user"], "admin", "{login}");
    }

    /// Runs `sql` on the instance's database directly, as its administrator
    /// could, around custody.
    pub fn tamper(&self, sql: &str) {
        let url = match &self.database {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}", self.sandbox.path("data").join("custody.db").display()),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(custody_store::testing::execute_raw(&url, sql));
    }

    /// A command as the admin, with the credentials `custody login` stored.
    pub fn as_admin(&self, args: &[&str]) -> Run {
        let mut command = self.sandbox.as_user("admin");
        command.args(args);
        run(command)
    }

    /// A command as `who`, holding `token`.
    pub fn as_user(&self, who: &str, token: &str, args: &[&str]) -> Run {
        self.sandbox.client(who, &self.server, token, args)
    }

    /// The token of a user made by [`Hosted::add_user`].
    pub fn token(&self, who: &str) -> String {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(who).cloned().unwrap_or_else(|| panic!("no token for {who}"))
    }

    /// A command as `who`: the admin with their stored login, anyone else
    /// with the token they redeemed.
    pub fn run_as(&self, who: &str, args: &[&str]) -> Run {
        if who == "admin" {
            self.as_admin(args)
        } else {
            self.as_user(who, &self.token(who), args)
        }
    }

    /// Adds a user, redeems their invite, and (unless `role` is empty) makes
    /// them a member of the project: their token.
    pub fn add_user(&self, name: &str, role: &str) -> String {
        let email = format!("{name}@example.com");
        let added = self.as_admin(&["user", "add", name, "--email", &email, "--json"]).json();
        let code = added["invite_code"].as_str().expect("an invite code").to_owned();
        let mut redeem = self.sandbox.as_user(name);
        redeem.args(["token", "redeem", &code, "--json", "--server", &self.server.url]);
        let token = run(redeem).json()["token"].as_str().expect("a token").to_owned();
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned(), token.clone());
        if !role.is_empty() {
            self.add_member(name, role);
        }
        token
    }

    /// Makes `name` a second admin (a bootstrap grant): an admin token
    /// comes only from logging in with a password, which `name`'s stored
    /// credentials then hold (`sandbox.as_user(name)` runs with them).
    pub fn second_admin(&self, name: &str) {
        let token = self.add_user(name, "");
        let grant = self.as_admin(&["group", "add", "admins", name, "--json"]).json();
        assert_eq!(grant["status"], "bootstrap", "{grant}");
        let mut password = self.sandbox.as_user(name);
        password.env("CUSTODY_SERVER", &self.server.url).env("CUSTODY_TOKEN", &token).args([
            "user",
            "set-password",
            "--json",
        ]);
        run_with_input(password, Some("a long enough password\n")).expect_code(0);
        let mut login = self.sandbox.as_user(name);
        login.args(["login", "--server", &self.server.url, "--user", name, "--scope", "read,write,admin", "--json"]);
        run_with_input(login, Some("a long enough password\n")).expect_code(0);
    }

    /// Makes `name` a member; the single admin's grant applies at once.
    pub fn add_member(&self, name: &str, role: &str) {
        let grant = self.as_admin(&["project", "member", "add", PROJECT, name, "--role", role, "--json"]).json();
        assert_eq!(grant["status"], "bootstrap", "{grant}");
    }

    /// A request to the API with curl, as a client other than the CLI
    /// would send it: the status and the JSON answer.
    pub fn api(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-X", method, "-w", "\n%{http_code}"]);
        if let Some(token) = token {
            curl.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        if let Some(body) = body {
            curl.args(["-H", "Content-Type: application/json", "--data-binary", &body.to_string()]);
        }
        let output = curl.arg(format!("http://127.0.0.1:{}{path}", self.server.port())).output().expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (answer, status) = text.rsplit_once('\n').expect("a status line");
        (status.trim().parse().expect("a status"), serde_json::from_str(answer).unwrap_or(Value::Null))
    }

    /// `http://USER:TOKEN@127.0.0.1:PORT/payments.git`.
    pub fn url(&self, user: &str, token: &str) -> String {
        format!("http://{user}:{token}@127.0.0.1:{}/{PROJECT}.git", self.server.port())
    }

    /// The project's repository on the server.
    pub fn bare_path(&self) -> PathBuf {
        self.sandbox.path("data").join("repositories").join(format!("{PROJECT}.git"))
    }

    /// git in the temporary directory, as `who`.
    pub fn git(&self, who: &str, args: &[&str]) -> Run {
        self.git_in(&self.sandbox.path(""), who, args)
    }

    /// git in `dir`, as `who` (`who@example.com`).
    pub fn git_in(&self, dir: &Path, who: &str, args: &[&str]) -> Run {
        let email = format!("{who}@example.com");
        let mut command = git_command(&self.sandbox.path("home"), dir, (who, &email));
        command.args(args);
        run(command)
    }

    /// git with env additions (such as tracing) in `dir`, as `who`.
    pub fn git_env(&self, dir: &Path, who: &str, env: &[(&str, &str)], args: &[&str]) -> Run {
        let email = format!("{who}@example.com");
        let mut command = git_command(&self.sandbox.path("home"), dir, (who, &email));
        command.envs(env.iter().copied()).args(args);
        run(command)
    }

    /// git on the server's bare repository, as the operator would run it.
    pub fn bare(&self, args: &[&str]) -> Run {
        let mut command =
            git_command(&self.sandbox.path("home"), &self.sandbox.path(""), ("operator", "op@example.com"));
        command.arg("--git-dir").arg(self.bare_path()).args(args);
        run(command)
    }

    /// Whether the server's repository holds the object `id`.
    pub fn server_has(&self, id: &str) -> bool {
        self.bare(&["cat-file", "-e", id]).code() == Some(0)
    }

    /// What a ref of the server's repository points at, if it exists.
    pub fn server_ref(&self, name: &str) -> Option<String> {
        let found = self.bare(&["rev-parse", "--verify", "--quiet", name]);
        (found.code() == Some(0)).then(|| found.stdout.trim().to_owned())
    }

    /// Every ref of the server's repository, by name.
    pub fn server_refs(&self) -> Vec<String> {
        let listed = self.bare(&["for-each-ref", "--format=%(refname)"]).expect_code(0);
        listed.stdout.lines().map(str::to_owned).collect()
    }

    /// A new working repository `name`, owned by `who`, whose origin is the
    /// project with `token`.
    pub fn workspace(&self, name: &str, who: &str, token: &str) -> Workspace<'_> {
        let dir = self.sandbox.path(name);
        self.git(who, &["init", "-q", &dir.to_string_lossy()]).expect_code(0);
        let work = Workspace { hosted: self, dir, who: who.to_owned() };
        work.ok(&["remote", "add", "origin", &self.url(who, token)]);
        work
    }

    /// A clone of the project by `who` with `token`, into `name`.
    pub fn clone(&self, name: &str, who: &str, token: &str, extra: &[&str]) -> Run {
        let url = self.url(who, token);
        let mut args = extra.to_vec();
        args.extend(["clone", "-q", &url, name]);
        self.git(who, &args)
    }

    /// The audit events with `action`.
    pub fn audit_events(&self, action: &str) -> Vec<Value> {
        let events = self.as_admin(&["audit", "log", "--action", action, "--json"]).json();
        events.as_array().expect("a list of events").clone()
    }

    /// The project's push log.
    pub fn pushes(&self) -> Vec<Value> {
        let pushes = self.as_user("alice", &self.alice, &["project", "pushes", PROJECT, "--json"]).json();
        pushes.as_array().expect("a list of pushes").clone()
    }

    /// What custody knows of a commit.
    pub fn commit(&self, sha: &str) -> Value {
        self.as_user("alice", &self.alice, &["project", "commit", PROJECT, sha, "--json"]).json()
    }

    /// Sets up a `main` without a change. In the product, main moves only
    /// by custody's merge of a change, never by a push: this setup stands in
    /// for a first merge by pushing a commit to a feature branch and pointing
    /// main at it inside the server's repository.
    pub fn seed_main(&self, work: &Workspace<'_>) -> String {
        let base = work.commit("base.txt", "the first commit on main\n", "Base");
        work.ok(&["push", "-q", "origin", "HEAD:refs/heads/seed"]);
        self.bare(&["update-ref", "refs/heads/main", &base]).expect_code(0);
        assert_eq!(self.server_ref("refs/heads/main").as_deref(), Some(base.as_str()));
        base
    }
}

/// A working repository of one person.
pub struct Workspace<'a> {
    pub hosted: &'a Hosted,
    pub dir: PathBuf,
    pub who: String,
}

impl Workspace<'_> {
    pub fn git(&self, args: &[&str]) -> Run {
        self.hosted.git_in(&self.dir, &self.who, args)
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        self.git(args).expect_code(0).stdout.trim().to_owned()
    }

    /// Commits a file with `content`: the new commit's id.
    pub fn commit(&self, file: &str, content: &str, message: &str) -> String {
        let path = self.dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("make the file's directory");
        }
        std::fs::write(path, content).expect("write a file");
        self.ok(&["add", file]);
        self.ok(&["commit", "-q", "-m", message]);
        self.ok(&["rev-parse", "HEAD"])
    }

    /// A push that must be refused: git's whole output.
    #[track_caller]
    pub fn refused(&self, args: &[&str]) -> Run {
        let mut all = vec!["push"];
        all.extend(args);
        let pushed = self.git(&all);
        assert_ne!(pushed.code(), Some(0), "git push {args:?} was accepted: {pushed:#?}");
        pushed
    }
}
