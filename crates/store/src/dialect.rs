//! What differs between SQLite and PostgreSQL, and nothing else.

use std::borrow::Cow;

use sqlx::{AnyConnection, Executor};

use crate::Result;

/// The database behind a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// One file in the data directory; one writer process.
    Sqlite,
    /// A server, shared by any number of custody processes.
    Postgres,
}

/// SQLite's names of the functions PostgreSQL names differently, and
/// PostgreSQL's.
const RENAMED: [(&str, &str); 4] = [
    ("group_concat(", "string_agg("),
    ("char(", "chr("),
    ("json_group_array(", "json_agg("),
    ("json_object(", "json_build_object("),
];

/// Migrations per dialect, in order. A migration is never edited once
/// released; a change to the schema is a new one.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "people", include_str!("../migrations/sqlite/0001_people.sql")),
    (2, "projects", include_str!("../migrations/sqlite/0002_projects.sql")),
    (3, "changes", include_str!("../migrations/sqlite/0003_changes.sql")),
    (4, "checks", include_str!("../migrations/sqlite/0004_checks.sql")),
    (5, "ledger", include_str!("../migrations/sqlite/0005_ledger.sql")),
    (6, "builds", include_str!("../migrations/sqlite/0006_builds.sql")),
    (7, "deployments", include_str!("../migrations/sqlite/0007_deployments.sql")),
    (8, "deployment_cancel", include_str!("../migrations/sqlite/0008_deployment_cancel.sql")),
    (9, "audit_subject", include_str!("../migrations/sqlite/0009_audit_subject.sql")),
    (10, "event_tags", include_str!("../migrations/sqlite/0010_event_tags.sql")),
    (11, "subject_seals", include_str!("../migrations/sqlite/0011_subject_seals.sql")),
    (12, "commit_seals", include_str!("../migrations/sqlite/0012_commit_seals.sql")),
    (13, "merge_intents", include_str!("../migrations/sqlite/0013_merge_intents.sql")),
    (14, "ledger_handovers", include_str!("../migrations/sqlite/0014_ledger_handovers.sql")),
    (15, "change_comments", include_str!("../migrations/sqlite/0015_change_comments.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "people", include_str!("../migrations/postgres/0001_people.sql")),
    (2, "projects", include_str!("../migrations/postgres/0002_projects.sql")),
    (3, "changes", include_str!("../migrations/postgres/0003_changes.sql")),
    (4, "checks", include_str!("../migrations/postgres/0004_checks.sql")),
    (5, "ledger", include_str!("../migrations/postgres/0005_ledger.sql")),
    (6, "builds", include_str!("../migrations/postgres/0006_builds.sql")),
    (7, "deployments", include_str!("../migrations/postgres/0007_deployments.sql")),
    (8, "deployment_cancel", include_str!("../migrations/postgres/0008_deployment_cancel.sql")),
    (9, "audit_subject", include_str!("../migrations/postgres/0009_audit_subject.sql")),
    (10, "event_tags", include_str!("../migrations/postgres/0010_event_tags.sql")),
    (11, "subject_seals", include_str!("../migrations/postgres/0011_subject_seals.sql")),
    (12, "commit_seals", include_str!("../migrations/postgres/0012_commit_seals.sql")),
    (13, "merge_intents", include_str!("../migrations/postgres/0013_merge_intents.sql")),
    (14, "ledger_handovers", include_str!("../migrations/postgres/0014_ledger_handovers.sql")),
    (15, "change_comments", include_str!("../migrations/postgres/0015_change_comments.sql")),
];

/// The PostgreSQL advisory lock held by whoever appends to the audit log or
/// migrates, so that processes sharing a database take turns.
const WRITER_LOCK: i64 = 0x637573746f6479; // "custody"

impl Dialect {
    /// The dialect of a database URL.
    pub fn of_url(url: &str) -> Option<Dialect> {
        if url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else {
            None
        }
    }

    /// The name used in logs and health output.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    pub(crate) fn normalise_url(self, url: &str) -> String {
        match self {
            // Create the file on first start.
            Dialect::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_owned(),
        }
    }

    pub(crate) fn readers(self) -> u32 {
        match self {
            Dialect::Sqlite => 8,
            Dialect::Postgres => 8,
        }
    }

    /// SQL is written once in SQLite's words with `$1`-style placeholders.
    /// SQLite spells placeholders `?1`; PostgreSQL names a few functions
    /// differently (`string_agg` for `group_concat`, `chr` for `char`,
    /// `json_agg` and `json_build_object` for SQLite's JSON functions).
    /// Only SQL is rewritten: never what is inside a string literal or a
    /// quoted name, and a function only by its whole name.
    pub(crate) fn sql(self, sql: &'static str) -> Cow<'static, str> {
        match self.rewrite(sql) {
            Cow::Borrowed(_) => Cow::Borrowed(sql),
            Cow::Owned(rewritten) => Cow::Owned(rewritten),
        }
    }

    /// [`Dialect::sql`] for SQL built at run time (such as multi-row inserts).
    pub(crate) fn sql_owned(self, sql: String) -> String {
        match self.rewrite(&sql) {
            Cow::Borrowed(_) => sql,
            Cow::Owned(rewritten) => rewritten,
        }
    }

    fn rewrite(self, sql: &str) -> Cow<'_, str> {
        let needed = match self {
            Dialect::Sqlite => sql.contains('$'),
            Dialect::Postgres => RENAMED.iter().any(|(from, _)| sql.contains(from)),
        };
        if !needed {
            return Cow::Borrowed(sql);
        }
        let bytes = sql.as_bytes();
        let mut out = String::with_capacity(sql.len() + 16);
        let mut quote: Option<u8> = None;
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if let Some(q) = quote {
                // Inside a literal or a quoted name; a doubled quote stays inside.
                if c == q {
                    quote = None;
                }
                let next = sql[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&sql[i..i + next]);
                i += next;
                continue;
            }
            match c {
                b'\'' | b'"' => {
                    quote = Some(c);
                    out.push(c as char);
                    i += 1;
                }
                b'$' if self == Dialect::Sqlite && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                    out.push('?');
                    i += 1;
                }
                _ if self == Dialect::Postgres => {
                    let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
                    match RENAMED.iter().find(|(from, _)| starts_word && sql[i..].starts_with(from)) {
                        Some((from, to)) => {
                            out.push_str(to);
                            i += from.len();
                        }
                        None => {
                            // Copy the whole character: SQL may hold non-ASCII text.
                            let next = sql[i..].chars().next().map_or(1, char::len_utf8);
                            out.push_str(&sql[i..i + next]);
                            i += next;
                        }
                    }
                }
                _ => {
                    let next = sql[i..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&sql[i..i + next]);
                    i += next;
                }
            }
        }
        Cow::Owned(out)
    }

    pub(crate) async fn prepare_writer(self, conn: &mut AnyConnection) -> Result<()> {
        if self == Dialect::Sqlite {
            // WAL lets readers run beside the writer; FULL makes every commit
            // durable once it returns.
            conn.execute(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
            )
            .await?;
        }
        Ok(())
    }

    pub(crate) async fn prepare_reader(self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        if self == Dialect::Sqlite {
            conn.execute("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;").await?;
        }
        Ok(())
    }

    /// Opens the writer's transaction. On SQLite it takes the write lock at
    /// once; on PostgreSQL it takes custody's advisory lock, so that appends
    /// to the audit log from several processes are serialised and sequence
    /// numbers stay gapless and in commit order.
    pub(crate) async fn begin_write(self, conn: &mut AnyConnection) -> Result<()> {
        match self {
            Dialect::Sqlite => {
                conn.execute("BEGIN IMMEDIATE").await?;
            }
            Dialect::Postgres => {
                conn.execute("BEGIN").await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITER_LOCK).execute(&mut *conn).await?;
            }
        }
        Ok(())
    }

    /// Applies every migration not yet applied, each in its own transaction.
    pub(crate) async fn migrate(self, conn: &mut AnyConnection) -> Result<()> {
        let migrations = match self {
            Dialect::Sqlite => SQLITE_MIGRATIONS,
            Dialect::Postgres => POSTGRES_MIGRATIONS,
        };
        conn.execute(
            "CREATE TABLE IF NOT EXISTS custody_migrations (\
             version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await?;
        for (version, name, sql) in migrations {
            self.begin_write(conn).await?;
            let applied: Option<i64> =
                sqlx::query_scalar(&self.sql("SELECT version FROM custody_migrations WHERE version = $1"))
                    .bind(*version)
                    .fetch_optional(&mut *conn)
                    .await?;
            if applied.is_some() {
                conn.execute("ROLLBACK").await?;
                continue;
            }
            let outcome = async {
                sqlx::raw_sql(sql).execute(&mut *conn).await?;
                sqlx::query(&self.sql("INSERT INTO custody_migrations (version, name, applied_at) VALUES ($1, $2, $3)"))
                    .bind(*version)
                    .bind(*name)
                    .bind(crate::now_ms())
                    .execute(&mut *conn)
                    .await
            }
            .await;
            match outcome {
                Ok(_) => {
                    conn.execute("COMMIT").await?;
                    tracing::info!(version, name, dialect = self.name(), "applied migration");
                }
                Err(error) => {
                    let _ = conn.execute("ROLLBACK").await;
                    return Err(error.into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Dialect::{Postgres, Sqlite};

    #[test]
    fn placeholders_are_rewritten_outside_literals_only() {
        assert_eq!(
            Sqlite.sql("SELECT json_extract(v, '$.s'), $1 FROM t WHERE a = $2 AND b = '$3'"),
            "SELECT json_extract(v, '$.s'), ?1 FROM t WHERE a = ?2 AND b = '$3'"
        );
        assert_eq!(Sqlite.sql("SELECT 'it''s $1', $1"), "SELECT 'it''s $1', ?1");
        assert_eq!(Sqlite.sql("SELECT \"$1\" FROM t"), "SELECT \"$1\" FROM t");
        assert_eq!(Postgres.sql("SELECT $1, '$.s'"), "SELECT $1, '$.s'");
    }

    #[test]
    fn functions_are_renamed_by_their_whole_name_outside_literals() {
        assert_eq!(
            Postgres.sql("SELECT group_concat(b, char(31)), CAST(x AS varchar(10)) FROM t WHERE n = 'char(1)'"),
            "SELECT string_agg(b, chr(31)), CAST(x AS varchar(10)) FROM t WHERE n = 'char(1)'"
        );
        assert_eq!(
            Postgres.sql("SELECT json_object('a', 1), my_char(2)"),
            "SELECT json_build_object('a', 1), my_char(2)"
        );
        assert_eq!(Sqlite.sql("SELECT group_concat(b, char(31))"), "SELECT group_concat(b, char(31))");
        assert_eq!(Postgres.sql_owned("SELECT 'é', char(9)".into()), "SELECT 'é', chr(9)");
    }
}
