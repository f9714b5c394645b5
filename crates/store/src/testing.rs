//! Fresh, empty databases for tests, on either backend.
//!
//! PostgreSQL is expected at `CUSTODY_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test gets a database of
//! its own, dropped when the guard goes. An unreachable server fails the
//! test; set `CUSTODY_TEST_SKIP_POSTGRES=1` to skip PostgreSQL on purpose
//! (refused when `CI=true`).

use sqlx::{Connection as _, Executor as _};

use crate::Dialect;

/// The administrative URL of the test PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var("CUSTODY_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Whether PostgreSQL tests were deliberately switched off.
pub fn postgres_skipped() -> bool {
    let skip = std::env::var("CUSTODY_TEST_SKIP_POSTGRES").is_ok_and(|v| v == "1");
    if skip && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CUSTODY_TEST_SKIP_POSTGRES=1 is not allowed when CI=true: the PostgreSQL suite must run");
    }
    skip
}

/// A database that exists for one test.
pub struct TestDatabase {
    /// The URL to open it with.
    pub url: String,
    /// Which backend it is.
    pub dialect: Dialect,
    drop_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// A new empty database of the given dialect. Returns `None` only when
    /// PostgreSQL was deliberately skipped.
    pub async fn new(dialect: Dialect) -> Option<TestDatabase> {
        match dialect {
            Dialect::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("custody.db").display());
                Some(TestDatabase { url, dialect, drop_name: None, _dir: Some(dir) })
            }
            Dialect::Postgres => {
                if postgres_skipped() {
                    eprintln!("skipping PostgreSQL: CUSTODY_TEST_SKIP_POSTGRES=1");
                    return None;
                }
                sqlx::any::install_default_drivers();
                let admin = postgres_admin_url();
                let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL at {admin} is unreachable ({e}); start it, point CUSTODY_TEST_POSTGRES at one, \
                         or set CUSTODY_TEST_SKIP_POSTGRES=1 to skip it locally"
                    )
                });
                let name = format!("custody_test_{}_{}", std::process::id(), rand::random::<u32>());
                conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create a test database");
                let _ = conn.close().await;
                let base = admin.rsplit_once('/').map(|(base, _)| base).unwrap_or(&admin);
                Some(TestDatabase { url: format!("{base}/{name}"), dialect, drop_name: Some(name), _dir: None })
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.drop_name.take() else { return };
        let admin = postgres_admin_url();
        // Dropping needs a runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::AnyConnection::connect(&admin).await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}

/// Runs SQL on the database at `url` directly, around custody, as someone
/// with access to the database could: for tests that tamper with it.
pub async fn execute_raw(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

/// SQL that removes the triggers keeping the audit log and the ledger
/// append-only, as an attacker with access to the database would first.
pub fn drop_append_only_triggers(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => {
            "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete; \
             DROP TRIGGER ledger_nodes_no_update; DROP TRIGGER ledger_nodes_no_delete; \
             DROP TRIGGER ledger_checkpoints_no_update; DROP TRIGGER ledger_checkpoints_no_delete;"
        }
        Dialect::Postgres => {
            "DROP TRIGGER audit_events_no_change ON audit_events; DROP TRIGGER ledger_nodes_no_change ON ledger_nodes; \
             DROP TRIGGER ledger_checkpoints_no_change ON ledger_checkpoints;"
        }
    }
}
