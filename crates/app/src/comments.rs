//! Line comments as a change's readers see them: each thread compared with
//! the change's current head (outdated when its line no longer reads the
//! same, or its file is gone), and the line a new thread is anchored to,
//! read from git at the head its writer read.

use custody_api::CommentView;
use custody_git::Repositories;
use custody_store::{Authenticated, NewComment, ProjectAccess, Store};

use crate::AppError;

/// The file `path` at `commit`, as lines; `None` when it is not there.
async fn lines_at(
    repositories: &Repositories,
    access: &ProjectAccess,
    commit: &str,
    path: &str,
) -> Result<Option<Vec<String>>, AppError> {
    let repository = repositories.path(&access.project);
    let (commit, path) = (commit.to_owned(), path.to_owned());
    let text = tokio::task::spawn_blocking(move || custody_git::change::read_file(&repository, &commit, &path))
        .await
        .map_err(AppError::repository)?;
    match text {
        Ok(text) => Ok(text.map(|t| t.lines().map(str::to_owned).collect())),
        // A path that is a directory (or otherwise no file) has no lines.
        Err(custody_git::GitError::Failed { .. }) => Ok(None),
        Err(other) => Err(AppError::repository(other)),
    }
}

/// Every comment of a change, each thread marked outdated when its line no
/// longer reads the same at the change's current head.
pub async fn comments(
    store: &Store,
    repositories: &Repositories,
    access: &ProjectAccess,
    number: i64,
) -> Result<Vec<CommentView>, AppError> {
    let change = store.get_change(&access.project, number).await?;
    let mut comments = store.comments(access, number).await?;
    let mut files: std::collections::HashMap<String, Option<Vec<String>>> = std::collections::HashMap::new();
    let mut outdated = std::collections::HashMap::new();
    for comment in comments.iter().filter(|c| c.reply_to.is_none()) {
        let stale = if comment.head == change.head {
            false
        } else {
            if !files.contains_key(&comment.path) {
                let lines = lines_at(repositories, access, &change.head, &comment.path).await?;
                files.insert(comment.path.clone(), lines);
            }
            let now = files[&comment.path].as_ref().and_then(|lines| lines.get(comment.line as usize - 1));
            now != Some(&comment.line_text)
        };
        outdated.insert(comment.id, stale);
    }
    for comment in &mut comments {
        comment.outdated = outdated.get(&comment.reply_to.unwrap_or(comment.id)).copied().unwrap_or(false);
    }
    Ok(comments)
}

/// Starts a thread on `line` of `path` at `head` (the head its writer
/// read), anchored to the line's text there.
#[allow(clippy::too_many_arguments)]
pub async fn start_thread(
    store: &Store,
    repositories: &Repositories,
    actor: &Authenticated,
    access: &ProjectAccess,
    number: i64,
    path: String,
    line: i64,
    head: String,
    body: String,
) -> Result<CommentView, AppError> {
    let invalid =
        |why: String| AppError::Store(custody_domain::InvalidInput::new("line", &format!("{path}:{line}"), why).into());
    if line < 1 || !head.bytes().all(|b| b.is_ascii_hexdigit()) || !(40..=64).contains(&head.len()) {
        return Err(invalid("name a line from 1 of a file at a full commit id".into()));
    }
    if path.is_empty() || path.len() > 4096 || path.contains('\0') {
        return Err(invalid("name a file of the diff by its path".into()));
    }
    let lines = lines_at(repositories, access, &head, &path).await?;
    let Some(text) = lines.as_ref().and_then(|l| l.get(line as usize - 1)) else {
        return Err(AppError::Conflict(format!(
            "{path} has no line {line} at {}: comment on a line of the diff",
            custody_domain::short_id(&head)
        )));
    };
    let comment = NewComment::Thread { path: path.clone(), line, line_text: text.clone(), head, body };
    Ok(store.add_comment(actor, access, number, comment).await?)
}
