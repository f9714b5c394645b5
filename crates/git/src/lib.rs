//! Bare git repositories on disk, one per project.
//!
//! Repositories live under one directory of the data directory, named after
//! their validated project name, so no name can reach outside it. Every
//! repository checks the objects it receives (`receive.fsckObjects`).
//!
//! This crate knows nothing about users, grants or HTTP: it is told what to
//! do and does it with the `git` program.

#![forbid(unsafe_code)]

pub mod change;
pub mod hook;
pub mod service;

use std::path::{Path, PathBuf};
use std::process::Command;

use custody_domain::ProjectName;

/// Where the hooks of every repository live, relative to a repository
/// (hooks run in the bare repository's directory), so that the data
/// directory can move.
pub const HOOKS_FROM_REPOSITORY: &str = "../../hooks";

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started.
    #[error("cannot run git: {0}; is git installed and on PATH?")]
    Spawn(std::io::Error),
    /// `git` ran and failed.
    #[error("git {args} failed: {stderr}")]
    Failed {
        /// The arguments given.
        args: String,
        /// What git said.
        stderr: String,
    },
    /// The repository already exists.
    #[error("a repository for {0} already exists")]
    Exists(String),
}

/// The directory holding every project's bare repository.
#[derive(Clone, Debug)]
pub struct Repositories {
    root: PathBuf,
}

impl Repositories {
    /// Repositories under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Repositories { root: root.into() }
    }

    /// Where the repository of `project` lives: `ROOT/NAME.git`. The name's
    /// rules (no separators, no `..`) keep it inside `ROOT`.
    pub fn path(&self, project: &ProjectName) -> PathBuf {
        self.root.join(format!("{project}.git"))
    }

    /// Creates an empty bare repository for `project` whose HEAD names
    /// `default_branch`, with received objects checked.
    pub fn create(&self, project: &ProjectName, default_branch: &str) -> Result<PathBuf, GitError> {
        let path = self.path(project);
        if path.exists() {
            return Err(GitError::Exists(project.to_string()));
        }
        let head = format!("--initial-branch={default_branch}");
        git(None, &["init", "--quiet", "--bare", &head, &path.to_string_lossy()])?;
        for (key, value) in [
            ("core.hooksPath", HOOKS_FROM_REPOSITORY),
            ("uploadpack.hideRefs", "refs/custody"),
            ("receive.hideRefs", "refs/custody"),
            ("receive.fsckObjects", "true"),
            ("transfer.fsckObjects", "true"),
            ("core.logAllRefUpdates", "true"),
        ] {
            git(Some(&path), &["config", key, value])?;
        }
        Ok(path)
    }
}

/// Where an import waits, hidden, until a second admin approves it.
const IMPORT_NAMESPACE: &str = "refs/custody/import/";

impl Repositories {
    /// Fetches every branch and tag of the repository at `source` into the
    /// hidden import namespace of `project`'s repository, with received
    /// objects checked, and returns the refs as they will be published
    /// (`refs/heads/main`) with their commit ids. What a second admin
    /// approves is exactly this, whatever happens to `source` later.
    pub fn stage_import(&self, project: &ProjectName, source: &Path) -> Result<Vec<(String, String)>, GitError> {
        let path = self.path(project);
        git(Some(source), &["rev-parse", "--git-dir"])?;
        let source = source.to_string_lossy();
        git(
            Some(&path),
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                &source,
                "+refs/heads/*:refs/custody/import/heads/*",
                "+refs/tags/*:refs/custody/import/tags/*",
            ],
        )?;
        let listed = git(Some(&path), &["for-each-ref", "--format=%(refname) %(objectname)", IMPORT_NAMESPACE])?;
        Ok(listed
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(name, id)| (format!("refs/{}", &name[IMPORT_NAMESPACE.len()..]), id.to_owned()))
            .collect())
    }

    /// The commits an import brings, read before they are published.
    pub fn import_commits(
        &self,
        project: &ProjectName,
        refs: &[(String, String)],
    ) -> Result<Vec<custody_domain::project::PushedCommit>, GitError> {
        let tips: Vec<&str> = refs.iter().map(|(_, id)| id.as_str()).collect();
        hook::commits_between(&self.path(project), &tips, &["--branches", "--tags"]).map_err(|e| match e {
            hook::HookError::Git(g) => g,
            other => GitError::Failed { args: "log".into(), stderr: other.to_string() },
        })
    }

    /// Publishes an approved import: creates each ref at its staged commit
    /// (failing if any exists) and drops the hidden copies.
    pub fn publish_import(&self, project: &ProjectName, refs: &[(String, String)]) -> Result<(), GitError> {
        let path = self.path(project);
        let mut commands = String::from("start\n");
        for (name, id) in refs {
            commands.push_str(&format!("create {name} {id}\n"));
            commands.push_str(&format!("delete {IMPORT_NAMESPACE}{} {id}\n", &name["refs/".len()..]));
        }
        commands.push_str("prepare\ncommit\n");
        let mut child = Command::new("git")
            .arg("-C")
            .arg(&path)
            .args(["update-ref", "--stdin"])
            .envs(CLEAN_GIT_ENV)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(GitError::Spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, commands.as_bytes()).map_err(GitError::Spawn)?;
        }
        let output = child.wait_with_output().map_err(GitError::Spawn)?;
        if !output.status.success() {
            return Err(GitError::Failed {
                args: "update-ref --stdin".into(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
}

/// The settings every git process custody starts gets: no system or user
/// configuration, no prompts.
pub const CLEAN_GIT_ENV: [(&str, &str); 3] =
    [("GIT_CONFIG_NOSYSTEM", "1"), ("GIT_CONFIG_GLOBAL", "/dev/null"), ("GIT_TERMINAL_PROMPT", "0")];

/// Runs git with a clean configuration, in `dir` when given.
pub fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, GitError> {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    let output = command.args(args).envs(CLEAN_GIT_ENV).output().map_err(GitError::Spawn)?;
    if !output.status.success() {
        return Err(GitError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_repository_is_bare_checks_objects_and_names_its_default_branch() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repositories::new(dir.path());
        let project = ProjectName::parse("payments").unwrap();
        let path = repos.create(&project, "main").unwrap();
        assert_eq!(path, dir.path().join("payments.git"));
        assert_eq!(git(Some(&path), &["rev-parse", "--is-bare-repository"]).unwrap().trim(), "true");
        assert_eq!(git(Some(&path), &["config", "receive.fsckObjects"]).unwrap().trim(), "true");
        assert_eq!(git(Some(&path), &["symbolic-ref", "HEAD"]).unwrap().trim(), "refs/heads/main");
    }

    #[test]
    fn an_existing_repository_is_never_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repositories::new(dir.path());
        let project = ProjectName::parse("payments").unwrap();
        repos.create(&project, "main").unwrap();
        assert!(matches!(repos.create(&project, "main"), Err(GitError::Exists(_))));
    }

    #[test]
    fn an_import_waits_hidden_and_is_published_exactly_as_staged() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        git(None, &["init", "-q", "-b", "main", &source.to_string_lossy()]).unwrap();
        let commit = |message: &str| {
            let out = Command::new("git")
                .arg("-C")
                .arg(&source)
                .args([
                    "-c",
                    "user.name=Alice",
                    "-c",
                    "user.email=alice@example.com",
                    "commit",
                    "-q",
                    "--allow-empty",
                    "-m",
                    message,
                ])
                .envs(CLEAN_GIT_ENV)
                .output()
                .unwrap();
            assert!(out.status.success());
        };
        commit("one");
        commit("two");
        let repos = Repositories::new(dir.path().join("repos"));
        let project = ProjectName::parse("legacy").unwrap();
        let path = repos.create(&project, "main").unwrap();
        let staged = repos.stage_import(&project, &source).unwrap();
        assert_eq!(staged.len(), 1);
        assert_eq!(staged[0].0, "refs/heads/main");
        // Hidden until published.
        assert!(git(Some(&path), &["rev-parse", "--verify", "-q", "refs/heads/main"]).is_err());
        // Later changes at the source do not change what was staged.
        commit("three, after the request");
        assert_eq!(repos.import_commits(&project, &staged).unwrap().len(), 2);
        repos.publish_import(&project, &staged).unwrap();
        assert_eq!(git(Some(&path), &["rev-parse", "refs/heads/main"]).unwrap().trim(), staged[0].1);
        assert!(git(Some(&path), &["for-each-ref", IMPORT_NAMESPACE]).unwrap().trim().is_empty());
    }

    #[test]
    fn an_invalid_default_branch_is_refused_by_git() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repositories::new(dir.path());
        let project = ProjectName::parse("payments").unwrap();
        assert!(repos.create(&project, "bad..name").is_err());
    }
}
