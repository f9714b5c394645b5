//! Projects: what a change to a project's settings needs from git.

use custody_domain::{Decision, ProjectName};
use custody_git::change as git;
use custody_git::Repositories;

use crate::AppError;

/// Whether `branch` may become the default branch of `project` in place
/// of `default_branch`: only reviewed history may become the mainline, so
/// an existing branch must hold nothing the current default branch does
/// not. Git is read on a blocking thread; the domain decides.
pub async fn decide_default_branch(
    repositories: &Repositories,
    project: &ProjectName,
    default_branch: &str,
    branch: &str,
) -> Result<Decision, AppError> {
    let repository = repositories.path(project);
    let (wanted, current) = (branch.to_owned(), default_branch.to_owned());
    let unreviewed = tokio::task::spawn_blocking(move || -> Result<bool, custody_git::GitError> {
        let Some(tip) =
            git::read_ref(&repository, &format!("refs/heads/{wanted}")).map_err(custody_git::GitError::Spawn)?
        else {
            return Ok(false);
        };
        match git::read_ref(&repository, &format!("refs/heads/{current}")).map_err(custody_git::GitError::Spawn)? {
            Some(default_tip) => git::is_ancestor(&repository, &tip, &default_tip).map(|is| !is),
            None => Ok(true),
        }
    })
    .await
    .map_err(AppError::repository)?
    .map_err(AppError::repository)?;
    Ok(custody_domain::project::decide_default_branch(branch, default_branch, unreviewed))
}
