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

/// The event key and anchor of the database at `url` in this test process:
/// made on first use and then the same for every store opened on it, as the
/// processes of one instance share its data directory's `keys/`.
pub fn secrets_for(url: &str) -> crate::LedgerSecrets {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static MADE: OnceLock<Mutex<HashMap<String, (crate::LedgerSecrets, tempfile::TempDir)>>> = OnceLock::new();
    let mut made = MADE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    made.entry(url.to_owned()).or_insert_with(crate::LedgerSecrets::ephemeral).0.clone()
}

/// Recomputes the ledger's whole tree from the events as they now stand and
/// replaces every stored node with it, as an attacker who can write the
/// database (and knows RFC 6962) would after editing events: the tree then
/// agrees with the events, so only what custody keeps outside the database
/// can tell. Drop the append-only triggers first.
pub async fn rewrite_ledger_tree(url: &str) {
    use sqlx::Row as _;
    sqlx::any::install_default_drivers();
    let dialect = Dialect::of_url(url).expect("a database URL");
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    let rows = sqlx::query("SELECT seq, at, actor, action, subject, details FROM audit_events ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .expect("read the events");
    let mut frontier = custody_formats::merkle::Frontier::default();
    let mut nodes = Vec::new();
    for row in &rows {
        let details: String = row.get(5);
        let details: serde_json::Value = serde_json::from_str(&details).expect("JSON details");
        let (actor, action, subject): (String, String, String) = (row.get(2), row.get(3), row.get(4));
        let leaf = custody_formats::event::EventFields {
            seq: frontier.size() as i64 + 1,
            at_ms: row.get(1),
            actor: &actor,
            action: &action,
            subject: &subject,
            details: &details,
        }
        .leaf_hash();
        frontier.push(leaf, |id, hash| nodes.push((id, hash)));
    }
    conn.execute("DELETE FROM ledger_nodes").await.expect("delete the tree");
    for ((level, idx), hash) in nodes {
        let sql = dialect.sql("INSERT INTO ledger_nodes (level, idx, hash) VALUES ($1, $2, $3)");
        sqlx::query(&sql).bind(i64::from(level)).bind(idx as i64).bind(hash.to_vec()).execute(&mut conn).await.unwrap();
    }
    let _ = conn.close().await;
}
