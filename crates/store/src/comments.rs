//! Comments on the lines of a change's diff, in threads: each thread
//! anchored to a file, a line and the head it was written on, with that
//! line's text, so that a later head can show it as outdated. The one rule
//! that reads them (who may resolve a thread) takes who started it from the
//! change's proven `change.comment` event, never from the row.

use custody_api::CommentView;
use custody_domain::access::{decide_change_write, decide_review, ChangeWrite};
use custody_domain::audit::NewEvent;
use custody_domain::gate::Verdict;
use custody_domain::status::ChangeState;
use custody_domain::Timestamp;
use serde_json::json;

use crate::changes::change_row;
use crate::tx::Reads;
use crate::{col, now_ms, Authenticated, ProjectAccess, Result, Store, StoreError};

/// A comment to add: a new thread on a line of the head its writer read,
/// or a reply to a thread (which takes the thread's anchor).
#[derive(Clone, Debug)]
pub enum NewComment {
    /// A new thread.
    Thread {
        /// The file, as the diff names it.
        path: String,
        /// The line in the file at `head`, from 1.
        line: i64,
        /// That line's text, as the caller read it from git at `head`.
        line_text: String,
        /// The head the writer read: refused when it is not the change's head.
        head: String,
        /// What it says.
        body: String,
    },
    /// A reply.
    Reply {
        /// The thread's first comment.
        to: i64,
        /// What it says.
        body: String,
    },
}

const COLUMNS: &str = "SELECT k.id, a.name AS author, k.head, k.path, k.line, k.line_text, k.reply_to, k.body, k.at, \
     r.name AS resolved_by, k.resolved_at FROM change_comments k JOIN users a ON a.id = k.author_id \
     LEFT JOIN users r ON r.id = k.resolved_by";

fn view(row: &sqlx::any::AnyRow) -> Result<CommentView> {
    Ok(CommentView {
        id: col(row, "id")?,
        author: col(row, "author")?,
        head: col(row, "head")?,
        path: col(row, "path")?,
        line: col(row, "line")?,
        line_text: col(row, "line_text")?,
        reply_to: col(row, "reply_to")?,
        body: col(row, "body")?,
        at: Timestamp::from_millis(col(row, "at")?),
        outdated: false,
        resolved_by: col(row, "resolved_by")?,
        resolved_at: col::<Option<i64>>(row, "resolved_at")?.map(Timestamp::from_millis),
    })
}

/// One comment of the change `change_id`.
async fn read_comment(tx: &mut impl Reads, change_id: i64, id: i64) -> Result<CommentView> {
    let sql = tx.dialect().sql_owned(format!("{COLUMNS} WHERE k.change_id = $1 AND k.id = $2"));
    let row = sqlx::query(&sql).bind(change_id).bind(id).fetch_optional(tx.conn()).await?;
    view(&row.ok_or_else(|| StoreError::not_found("comment", id))?)
}

fn check_body(body: &str) -> Result<()> {
    if body.trim().is_empty() || body.chars().count() > 20_000 {
        return Err(custody_domain::InvalidInput::new(
            "body",
            "(comment)",
            "say something, in at most 20,000 characters",
        )
        .into());
    }
    Ok(())
}

impl Store {
    /// Adds a comment to an open change: a new thread on a line of its
    /// current head, or a reply to one of its threads.
    pub async fn add_comment(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        number: i64,
        comment: NewComment,
    ) -> Result<CommentView> {
        crate::allowed(decide_review(&actor.name, &access.project, access.role, actor.scopes, Verdict::Comment))?;
        match &comment {
            NewComment::Thread { path, line, line_text, body, .. } => {
                check_body(body)?;
                if path.is_empty() || path.len() > 4096 || path.contains('\0') || *line < 1 {
                    return Err(custody_domain::InvalidInput::new(
                        "path",
                        path,
                        "name a file of the diff and a line of it, from 1",
                    )
                    .into());
                }
                if line_text.len() > 64 * 1024 {
                    return Err(custody_domain::InvalidInput::new(
                        "line",
                        "(long)",
                        "the line is too long to comment on",
                    )
                    .into());
                }
            }
            NewComment::Reply { body, .. } => check_body(body)?,
        }
        let (actor, access) = (actor.clone(), access.clone());
        self.write(move |tx| {
            Box::pin(async move {
                let (change_id, change) = change_row(tx, access.project_id, number).await?;
                if change.state != ChangeState::Open {
                    return Err(StoreError::Conflict(format!(
                        "change {number} is {}; only an open change is commented on",
                        change.state
                    )));
                }
                let (path, line, line_text, head, reply_to, body) = match comment {
                    NewComment::Thread { path, line, line_text, head, body } => {
                        crate::allowed(custody_domain::change::decide_review_head(Some(&head), &change.head))?;
                        (path, line, line_text, change.head.clone(), None, body)
                    }
                    NewComment::Reply { to, body } => {
                        let thread = read_comment(tx, change_id, to).await?;
                        if thread.reply_to.is_some() {
                            return Err(custody_domain::InvalidInput::new(
                                "reply_to",
                                &to.to_string(),
                                format!("reply to the thread's first comment, {}", thread.reply_to.unwrap_or(to)),
                            )
                            .into());
                        }
                        (thread.path, thread.line, thread.line_text, thread.head, Some(to), body)
                    }
                };
                let at = now_ms();
                let sql = tx.sql(
                    "INSERT INTO change_comments (change_id, author_id, head, path, line, line_text, reply_to, body, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                );
                let id: i64 = sqlx::query_scalar(&sql)
                    .bind(change_id)
                    .bind(actor.user_id)
                    .bind(&head)
                    .bind(&path)
                    .bind(line)
                    .bind(&line_text)
                    .bind(reply_to)
                    .bind(&body)
                    .bind(at)
                    .fetch_one(tx.conn())
                    .await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "change.comment".into(),
                    subject: format!("change:{}/{number}", access.project),
                    details: json!({ "comment": id, "head": head, "path": path, "line": line, "reply_to": reply_to }),
                })
                .await?;
                read_comment(tx, change_id, id).await
            })
        })
        .await
    }

    /// Every comment of a change, oldest first (`outdated` left false: the
    /// caller compares each thread's line with the current head).
    pub async fn comments(&self, access: &ProjectAccess, number: i64) -> Result<Vec<CommentView>> {
        let mut reader = self.reader().await?;
        let (change_id, _) = change_row(&mut reader, access.project_id, number).await?;
        let sql = reader.dialect().sql_owned(format!("{COLUMNS} WHERE k.change_id = $1 ORDER BY k.id"));
        let rows = sqlx::query(&sql).bind(change_id).fetch_all(reader.conn()).await?;
        rows.iter().map(view).collect()
    }

    /// Resolves a thread (by its first comment), as its author, the
    /// change's opener or a writer of the project.
    pub async fn resolve_thread(
        &self,
        actor: &Authenticated,
        access: &ProjectAccess,
        number: i64,
        thread: i64,
    ) -> Result<CommentView> {
        let may_write =
            decide_change_write(&actor.name, &access.project, access.role, actor.scopes, ChangeWrite::Review).allowed;
        let (actor, access) = (actor.clone(), access.clone());
        self.write(move |tx| {
            Box::pin(async move {
                let (change_id, change) = change_row(tx, access.project_id, number).await?;
                let first = read_comment(tx, change_id, thread).await?;
                // Who started the thread, and whether it is one, as the
                // change's proven events say: never as the row says.
                let subject = format!("change:{}/{number}", access.project);
                let events = crate::proof::proven_events(tx, &subject).await?;
                let written = events
                    .iter()
                    .find(|e| e.action == "change.comment" && e.details["comment"] == thread)
                    .ok_or_else(|| {
                        StoreError::Conflict(format!(
                            "comment {thread} of {subject} has no event custody wrote: it was written around \
                             custody, and nobody resolves it"
                        ))
                    })?;
                if let Some(to) = written.details["reply_to"].as_i64() {
                    return Err(StoreError::Conflict(format!("comment {thread} is a reply: resolve its thread, {to}")));
                }
                if first.resolved_at.is_some() {
                    return Err(StoreError::Conflict(format!("thread {thread} is resolved already")));
                }
                crate::allowed(custody_domain::change::decide_resolve_thread(
                    actor.name.as_str(),
                    &written.actor,
                    &change.opened_by,
                    may_write,
                ))?;
                let sql = tx.sql(
                    "UPDATE change_comments SET resolved_by = $1, resolved_at = $2 WHERE id = $3 AND resolved_at IS NULL",
                );
                sqlx::query(&sql).bind(actor.user_id).bind(now_ms()).bind(thread).execute(tx.conn()).await?;
                tx.audit(NewEvent {
                    actor: actor.name.to_string(),
                    action: "change.comment.resolve".into(),
                    subject: format!("change:{}/{number}", access.project),
                    details: json!({ "comment": thread }),
                })
                .await?;
                read_comment(tx, change_id, thread).await
            })
        })
        .await
    }
}
