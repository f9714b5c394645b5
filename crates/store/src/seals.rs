//! Seals over the rows a rule reads that are current state rather than a
//! history: a user's state, password hash, e-mail addresses, memberships
//! and revoked tokens (`user:NAME`), a project's default and protected branches
//! (`project:NAME`), a grant's decision (`grant:ID`), a finding and who was
//! involved in it (`finding:ID`).
//!
//! Whenever an operation writes an event about such a subject, the writer
//! digests the subject's rows as the operation leaves them and stores the
//! digest with the sequence number of that event, tagged under the event
//! key ([`seal_touched`]). A reader recomputes the digest from the rows and
//! accepts them only when the seal's tag verifies, the digests agree, and
//! the seal is not older than the subject's newest event this process
//! proved ([`check`]): a row inserted, edited or deleted around custody
//! changes the digest, and an older seal put back with older rows is older
//! than the subject's newest event.

use custody_formats::merkle::Hash;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::proof::unproven;
use crate::tx::{Reads, Tx};
use crate::{col, Result};

/// The rows of `subject` a rule reads, as one canonical value, or `None`
/// for a subject that has no sealed rows.
async fn rows_of(tx: &mut impl Reads, subject: &str) -> Result<Option<Value>> {
    let Some((kind, name)) = subject.split_once(':') else { return Ok(None) };
    let value = match kind {
        "user" => {
            let sql = tx.sql(concat!("SELECT ", user_sealed_columns!(), " FROM users u WHERE u.name = $1"));
            let Some(row) = sqlx::query(&sql).bind(name).fetch_optional(tx.conn()).await? else {
                return Ok(Some(Value::Null));
            };
            user_rows(&row)?
        }
        "change" => {
            let Some((project, number)) = name.rsplit_once('/') else { return Ok(None) };
            let Ok(number) = number.parse::<i64>() else { return Ok(None) };
            let sql = tx.sql(
                "SELECT c.state, c.head, c.merge_commit, \
                        (SELECT group_concat(d.user_name || char(30) || d.duty, char(31)) FROM change_duties d \
                          WHERE d.change_id = c.id) AS duties \
                 FROM changes c JOIN projects p ON p.id = c.project_id WHERE p.name = $1 AND c.number = $2",
            );
            let Some(row) = sqlx::query(&sql).bind(project).bind(number).fetch_optional(tx.conn()).await? else {
                return Ok(Some(Value::Null));
            };
            change_rows(&row)?
        }
        "project" => {
            let sql = tx.sql("SELECT id, default_branch FROM projects WHERE name = $1");
            let Some(row) = sqlx::query(&sql).bind(name).fetch_optional(tx.conn()).await? else {
                return Ok(Some(Value::Null));
            };
            let id: i64 = col(&row, "id")?;
            let default: String = col(&row, "default_branch")?;
            let sql = tx.sql("SELECT branch FROM protected_branches WHERE project_id = $1 ORDER BY branch");
            let protected: Vec<String> = sqlx::query_scalar(&sql).bind(id).fetch_all(tx.conn()).await?;
            json!({ "id": id, "default_branch": default, "protected": protected })
        }
        "grant" => {
            let Ok(id) = name.parse::<i64>() else { return Ok(None) };
            let sql = tx
                .sql("SELECT action, payload, named_user, requested_by, status, decided_by FROM grants WHERE id = $1");
            let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(tx.conn()).await? else {
                return Ok(Some(Value::Null));
            };
            json!([
                col::<String>(&row, "action")?,
                col::<String>(&row, "payload")?,
                col::<String>(&row, "named_user")?,
                col::<String>(&row, "requested_by")?,
                col::<String>(&row, "status")?,
                col::<Option<String>>(&row, "decided_by")?,
            ])
        }
        "finding" => {
            let Ok(id) = name.parse::<i64>() else { return Ok(None) };
            let sql = tx.sql(
                "SELECT kind, project_id, subject, summary, involved, resolved_by, resolved_at, resolution \
                 FROM findings WHERE id = $1",
            );
            let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(tx.conn()).await? else {
                return Ok(Some(Value::Null));
            };
            json!([
                col::<String>(&row, "kind")?,
                col::<Option<i64>>(&row, "project_id")?,
                col::<String>(&row, "subject")?,
                col::<String>(&row, "summary")?,
                col::<String>(&row, "involved")?,
                col::<Option<i64>>(&row, "resolved_by")?,
                col::<Option<i64>>(&row, "resolved_at")?,
                col::<Option<String>>(&row, "resolution")?,
            ])
        }
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// The columns of a user's sealed rows, over `users u`: the user, and their
/// addresses, groups and project roles as lists, so that one query reads
/// them (authentication reads them with the token).
macro_rules! user_sealed_columns {
    () => {
        "u.id, u.state, u.disabled_at, u.password_hash, \
         (SELECT group_concat(e.email, char(31)) FROM user_emails e WHERE e.user_id = u.id) AS emails, \
         (SELECT group_concat(g.name, char(31)) FROM group_members m JOIN groups g ON g.id = m.group_id \
           WHERE m.user_id = u.id) AS groups, \
         (SELECT group_concat(p.name || char(30) || m.role, char(31)) FROM project_members m \
           JOIN projects p ON p.id = m.project_id WHERE m.user_id = u.id) AS projects, \
         (SELECT group_concat(r.id, char(31)) FROM tokens r \
           WHERE r.user_id = u.id AND r.revoked_at IS NOT NULL) AS revoked"
    };
}
pub(crate) use user_sealed_columns;

/// The columns of a subject's seal, joined as `s`.
macro_rules! seal_columns {
    () => {
        "s.seq AS seal_seq, s.digest AS seal_digest, s.mac AS seal_mac"
    };
}
pub(crate) use seal_columns;

/// A list column of [`user_sealed_columns`], sorted (the database does not
/// promise an order inside an aggregate).
pub(crate) fn list(row: &sqlx::any::AnyRow, column: &str) -> Result<Vec<String>> {
    let joined: Option<String> = col(row, column)?;
    let mut items: Vec<String> =
        joined.map(|j| j.split('\u{1f}').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default();
    items.sort();
    Ok(items)
}

/// A user's sealed rows, from a row of [`user_sealed_columns`].
pub(crate) fn user_rows(row: &sqlx::any::AnyRow) -> Result<Value> {
    let mut rows = json!({
        "id": col::<i64>(row, "id")?,
        "state": col::<String>(row, "state")?,
        "disabled_at": col::<Option<i64>>(row, "disabled_at")?,
        "password": col::<Option<String>>(row, "password_hash")?,
        "emails": list(row, "emails")?,
        "groups": list(row, "groups")?,
        "projects": list(row, "projects")?,
    });
    // Their revoked tokens, so that clearing a revocation around custody
    // does not revive a token whose secret someone kept. Only when there
    // are any, so that seals written before this was sealed still hold.
    let revoked = list(row, "revoked")?;
    if !revoked.is_empty() {
        rows["revoked_tokens"] = json!(revoked);
    }
    Ok(rows)
}

/// Checks rows read together with their seal ([`seal_columns`]) against it.
pub(crate) fn check_loaded(
    state: &crate::proof::LedgerState,
    subject: &str,
    newest: i64,
    rows: &Value,
    row: &sqlx::any::AnyRow,
) -> Result<()> {
    let sealed: (Option<i64>, Option<Vec<u8>>, Option<Vec<u8>>) =
        (col(row, "seal_seq")?, col(row, "seal_digest")?, col(row, "seal_mac")?);
    let (Some(seq), Some(stored), Some(mac)) = sealed else {
        return Err(unproven(format!(
            "{}: custody never sealed them (the seal was deleted around custody)",
            rows_named(subject)
        )));
    };
    compare(state, subject, newest, &digest_of(subject, rows), (seq, stored, mac))
}

/// A change's sealed rows, from a row of its state, head, merge commit and
/// duties (`user RS duty`, joined by US).
fn change_rows(row: &sqlx::any::AnyRow) -> Result<Value> {
    let duties: Option<String> = col(row, "duties")?;
    let mut duties: Vec<&str> = duties.as_deref().map(|d| d.split('\u{1f}').collect()).unwrap_or_default();
    duties.sort_unstable();
    Ok(json!({
        "state": col::<String>(row, "state")?,
        "head": col::<String>(row, "head")?,
        "merge_commit": col::<Option<String>>(row, "merge_commit")?,
        "duties": duties,
    }))
}

fn digest_of(subject: &str, rows: &Value) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(subject.as_bytes());
    hasher.update([0]);
    hasher.update(rows.to_string().as_bytes());
    hasher.finalize().into()
}

/// Seals `subject` as its rows stand now, as of event `seq`.
async fn seal(tx: &mut Tx, subject: &str, seq: i64) -> Result<()> {
    let Some(rows) = rows_of(tx, subject).await? else { return Ok(()) };
    let digest = digest_of(subject, &rows);
    let mac = tx.ledger_state().secrets.key.seal_mac(subject, seq, &digest);
    let sql = tx.sql(
        "INSERT INTO subject_seals (subject, seq, digest, mac) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (subject) DO UPDATE SET seq = excluded.seq, digest = excluded.digest, mac = excluded.mac",
    );
    sqlx::query(&sql).bind(subject).bind(seq).bind(digest.to_vec()).bind(mac.to_vec()).execute(tx.conn()).await?;
    Ok(())
}

/// Seals every subject the operation that just ran wrote an event about,
/// or said it changed: called by the writer before the operation's
/// savepoint is released, so a seal commits with the rows it covers.
pub(crate) async fn seal_touched(tx: &mut Tx) -> Result<()> {
    for subject in tx.take_touched() {
        let seq = tx.pending(&subject).or_else(|| tx.ledger_state().newest(&subject)).unwrap_or(0);
        seal(tx, &subject, seq).await?;
    }
    Ok(())
}

/// Checks that `subject`'s rows are the ones custody last wrote; refuses,
/// naming the subject's rows, when they are not.
pub(crate) async fn check(tx: &mut impl Reads, subject: &str) -> Result<()> {
    if tx.changing(subject) {
        return Ok(());
    }
    let Some(rows) = rows_of(tx, subject).await? else { return Ok(()) };
    let digest = digest_of(subject, &rows);
    let sql = tx.sql("SELECT seq, digest, mac FROM subject_seals WHERE subject = $1");
    let sealed = sqlx::query(&sql).bind(subject).fetch_optional(tx.conn()).await?;
    let state = tx.ledger_state();
    let newest = tx.newest(subject).unwrap_or(0);
    let Some(sealed) = sealed else {
        if rows.is_null() && newest == 0 {
            return Ok(());
        }
        return Err(unproven(format!(
            "{}: custody never sealed them (the seal was deleted around custody)",
            rows_named(subject)
        )));
    };
    let sealed = (col(&sealed, "seq")?, col(&sealed, "digest")?, col(&sealed, "mac")?);
    compare(&state, subject, newest, &digest, sealed)
}

/// Whether the seal `(seq, digest, tag)` of `subject` is genuine, not older
/// than the subject's newest event, and seals exactly `digest`.
fn compare(
    state: &crate::proof::LedgerState,
    subject: &str,
    newest: i64,
    digest: &Hash,
    (seq, stored, mac): (i64, Vec<u8>, Vec<u8>),
) -> Result<()> {
    let stored: Option<Hash> = stored.try_into().ok();
    let genuine = stored.is_some_and(|d| state.secrets.key.verify_seal(subject, seq, &d, &mac));
    if !genuine {
        return Err(unproven(format!("subject_seals row {subject}: its tag does not verify (written around custody)")));
    }
    if seq < newest {
        return Err(unproven(format!(
            "subject_seals row {subject}: it is older than custody's newest event about it ({newest}), so it and \
             {} were put back from an older copy",
            rows_named(subject)
        )));
    }
    if stored.as_ref() != Some(digest) {
        return Err(unproven(format!(
            "{}: they are not the rows custody last wrote (inserted, edited or deleted around custody)",
            rows_named(subject)
        )));
    }
    Ok(())
}

/// Checks the seals of many changes of a project at once (a release's): one
/// query for their rows and seals per 400 changes.
pub(crate) async fn check_changes(tx: &mut impl Reads, project: &str, numbers: &[i64]) -> Result<()> {
    let state = tx.ledger_state();
    for chunk in numbers.chunks(400) {
        let list = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
        let sql = tx.dialect().sql_owned(format!(
            "SELECT c.number, c.state, c.head, c.merge_commit, \
                    (SELECT group_concat(d.user_name || char(30) || d.duty, char(31)) FROM change_duties d \
                      WHERE d.change_id = c.id) AS duties, {} \
             FROM changes c JOIN projects p ON p.id = c.project_id \
             LEFT JOIN subject_seals s ON s.subject = 'change:' || p.name || '/' || CAST(c.number AS TEXT) \
             WHERE p.name = $1 AND c.number IN ({list})",
            seal_columns!()
        ));
        let mut query = sqlx::query(&sql).bind(project);
        for number in chunk {
            query = query.bind(number);
        }
        for row in query.fetch_all(tx.conn()).await? {
            let subject = format!("change:{project}/{}", col::<i64>(&row, "number")?);
            let newest = tx.newest(&subject).unwrap_or(0);
            check_loaded(&state, &subject, newest, &change_rows(&row)?, &row)?;
        }
    }
    Ok(())
}

/// The rows a subject's seal covers, for people.
fn rows_named(subject: &str) -> String {
    match subject.split_once(':') {
        Some(("user", name)) => {
            format!("the users, user_emails, group_members and project_members rows of {name}")
        }
        Some(("project", name)) => format!("the projects and protected_branches rows of {name}"),
        Some(("grant", id)) => format!("grants row {id}"),
        Some(("finding", id)) => format!("findings row {id}"),
        Some(("change", name)) => format!("the changes and change_duties rows of change {name}"),
        _ => subject.to_owned(),
    }
}

/// Seals every sealed subject from its rows as they stand: once, when an
/// instance first gets its event key (an upgrade), before its anchor exists.
pub(crate) async fn seal_all(tx: &mut Tx) -> Result<()> {
    let mut subjects: Vec<String> = Vec::new();
    for (sql, prefix) in [
        ("SELECT name FROM users", "user"),
        ("SELECT name FROM projects", "project"),
        ("SELECT CAST(id AS TEXT) FROM grants", "grant"),
        ("SELECT CAST(id AS TEXT) FROM findings", "finding"),
        (
            "SELECT p.name || '/' || CAST(c.number AS TEXT) FROM changes c JOIN projects p ON p.id = c.project_id",
            "change",
        ),
    ] {
        let names: Vec<String> = sqlx::query_scalar(sql).fetch_all(tx.conn()).await?;
        subjects.extend(names.into_iter().map(|n| format!("{prefix}:{n}")));
    }
    for subject in subjects {
        tx.touch(&subject);
    }
    seal_touched(tx).await?;
    seal_unsealed_commits(tx).await
}

/// What a commit's record says, as its seal covers it.
pub(crate) struct CommitRecord<'a> {
    pub(crate) project_id: i64,
    pub(crate) sha: &'a str,
    pub(crate) first_push: Option<i64>,
    pub(crate) pusher: Option<i64>,
    pub(crate) import_grant: Option<i64>,
    pub(crate) author: Option<i64>,
    pub(crate) committer: Option<i64>,
    /// The users its co-author trailers name, in any order.
    pub(crate) co_authors: Vec<i64>,
}

impl CommitRecord<'_> {
    /// Its seal under the event key: hex of the tag.
    pub(crate) fn seal(&self, key: &custody_formats::ledger_key::EventKey) -> String {
        let text = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        let mut co_authors = self.co_authors.clone();
        co_authors.sort_unstable();
        co_authors.dedup();
        let co_authors = co_authors.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        let fields = [
            self.project_id.to_string(),
            self.sha.to_owned(),
            text(self.first_push),
            text(self.pusher),
            text(self.import_grant),
            text(self.author),
            text(self.committer),
            co_authors,
        ];
        hex::encode(key.row_mac("commits", &fields.iter().map(String::as_str).collect::<Vec<_>>()))
    }
}

/// Seals every commit record written before records were sealed, from the
/// rows as they stand: once, when an instance first gets its event key.
pub(crate) async fn seal_unsealed_commits(tx: &mut Tx) -> Result<()> {
    let sql = "SELECT c.project_id, c.sha, c.first_push_id, ps.pusher_id, c.import_grant_id, c.author_user_id, \
               c.committer_user_id FROM commits c LEFT JOIN pushes ps ON ps.id = c.first_push_id WHERE c.seal IS NULL";
    let rows = sqlx::query(sql).fetch_all(tx.conn()).await?;
    let key = tx.ledger_state().secrets.key.clone();
    for row in &rows {
        let (project_id, sha): (i64, String) = (col(row, "project_id")?, col(row, "sha")?);
        let sql =
            tx.sql("SELECT user_id FROM commit_coauthors WHERE project_id = $1 AND sha = $2 AND user_id IS NOT NULL");
        let co_authors: Vec<i64> = sqlx::query_scalar(&sql).bind(project_id).bind(&sha).fetch_all(tx.conn()).await?;
        let record = CommitRecord {
            project_id,
            sha: &sha,
            first_push: col(row, "first_push_id")?,
            pusher: col(row, "pusher_id")?,
            import_grant: col(row, "import_grant_id")?,
            author: col(row, "author_user_id")?,
            committer: col(row, "committer_user_id")?,
            co_authors,
        };
        let sql = tx.sql("UPDATE commits SET seal = $1 WHERE project_id = $2 AND sha = $3");
        sqlx::query(&sql).bind(record.seal(&key)).bind(project_id).bind(&sha).execute(tx.conn()).await?;
    }
    Ok(())
}
