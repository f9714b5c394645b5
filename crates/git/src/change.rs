//! What a change request needs from its repository: its commits and paths,
//! files as of a commit, and merging with compare-and-swap on the target.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{git, GitError, CLEAN_GIT_ENV};

/// The commit a ref points at, if it exists.
pub fn resolve(repository: &Path, reference: &str) -> Result<Option<String>, GitError> {
    match git(Some(repository), &["rev-parse", "--verify", "--quiet", &format!("{reference}^{{commit}}")]) {
        Ok(id) => Ok(Some(id.trim().to_owned())),
        Err(GitError::Failed { .. }) => Ok(None),
        Err(other) => Err(other),
    }
}

/// Where a ref points, read from the repository's files without starting
/// git: the loose ref file, else `packed-refs`. Refs are updated by atomic
/// rename, so a read sees the old or the new value, never half of one.
pub fn read_ref(repository: &Path, name: &str) -> std::io::Result<Option<String>> {
    let is_id = |s: &str| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    match std::fs::read_to_string(repository.join(name)) {
        Ok(text) if is_id(text.trim()) => return Ok(Some(text.trim().to_owned())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.kind() == std::io::ErrorKind::IsADirectory => {}
        Err(e) => return Err(e),
    }
    match std::fs::read_to_string(repository.join("packed-refs")) {
        Ok(packed) => Ok(packed.lines().find_map(|line| {
            let (id, reference) = line.split_once(' ')?;
            (reference == name && is_id(id)).then(|| id.to_owned())
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The commits of `head` that `base` lacks (all of them when there is no
/// base), newest first.
pub fn commits(repository: &Path, base: Option<&str>, head: &str) -> Result<Vec<String>, GitError> {
    let mut args = vec!["rev-list", head];
    if let Some(base) = base {
        args.extend(["--not", base]);
    }
    Ok(git(Some(repository), &args)?.lines().map(str::to_owned).collect())
}

/// The commits of `head`'s first-parent chain not reachable from `base`,
/// newest first: on a branch only custody's merges move, the merges.
pub fn first_parents(repository: &Path, base: Option<&str>, head: &str) -> Result<Vec<String>, GitError> {
    let mut args = vec!["rev-list", "--first-parent", head];
    if let Some(base) = base {
        args.extend(["--not", base]);
    }
    Ok(git(Some(repository), &args)?.lines().map(str::to_owned).collect())
}

/// The paths `head` changes since it forked from `base` (every path of
/// `head` when there is no base).
pub fn changed_paths(repository: &Path, base: Option<&str>, head: &str) -> Result<Vec<String>, GitError> {
    let listed = match base {
        Some(base) => {
            git(Some(repository), &["diff", "--no-renames", "--name-only", "-z", &format!("{base}...{head}")])?
        }
        None => git(Some(repository), &["ls-tree", "-r", "-z", "--name-only", head])?,
    };
    Ok(listed.split('\0').filter(|p| !p.is_empty()).map(str::to_owned).collect())
}

/// The paths that differ between two trees (or commits).
pub fn changed_paths_between(repository: &Path, from: &str, to: &str) -> Result<Vec<String>, GitError> {
    let listed = git(Some(repository), &["diff", "--no-renames", "--name-only", "-z", from, to])?;
    Ok(listed.split('\0').filter(|p| !p.is_empty()).map(str::to_owned).collect())
}

/// The diff of a change as git prints it.
pub fn diff(repository: &Path, base: Option<&str>, head: &str) -> Result<String, GitError> {
    match base {
        Some(base) => git(Some(repository), &["diff", "--no-color", &format!("{base}...{head}")]),
        None => git(Some(repository), &["show", "--no-color", "--format=", head]),
    }
}

/// A file as of a commit, if it exists there. Whether it exists is read
/// from the tree (`ls-tree`), never from the wording of an error; a path
/// that names something other than a file there is an error, so that a
/// directory in a pipeline file's place never reads as no pipeline file.
pub fn read_file(repository: &Path, commit: &str, path: &str) -> Result<Option<String>, GitError> {
    let listing = git(Some(repository), &["--literal-pathspecs", "ls-tree", "-z", "--full-tree", commit, "--", path])?;
    let entry = listing.split('\0').find_map(|line| {
        let (meta, name) = line.split_once('\t')?;
        (name == path).then_some(meta)
    });
    let Some(meta) = entry else { return Ok(None) };
    let mut fields = meta.split(' ');
    let (kind, object) = (fields.nth(1).unwrap_or_default(), fields.next().unwrap_or_default());
    if kind != "blob" {
        return Err(GitError::Failed {
            args: format!("ls-tree {commit} -- {path}"),
            stderr: format!("{path} is a {kind} at {commit}, not a file"),
        });
    }
    git(Some(repository), &["cat-file", "blob", object]).map(Some)
}

/// The tree of merging `head` into `base`, or why it does not merge cleanly.
pub fn merge_tree(repository: &Path, base: &str, head: &str) -> Result<Result<String, String>, GitError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(["merge-tree", "--write-tree", "--name-only", "--no-messages", base, head])
        .envs(CLEAN_GIT_ENV)
        .output()
        .map_err(GitError::Spawn)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match output.status.code() {
        Some(0) => Ok(Ok(stdout.lines().next().unwrap_or("").to_owned())),
        Some(1) => {
            let conflicts: Vec<&str> = stdout.lines().skip(1).filter(|l| !l.is_empty()).collect();
            Ok(Err(format!("conflicts in {}", conflicts.join(", "))))
        }
        _ => Err(GitError::Failed {
            args: "merge-tree".into(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }),
    }
}

/// Writes the files of `commit` into `dest` (a fresh checkout without
/// `.git`), with `git archive` piped into `tar`.
pub fn export_tree(repository: &Path, commit: &str, dest: &Path) -> Result<(), GitError> {
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(["archive", "--format=tar", commit])
        .envs(CLEAN_GIT_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GitError::Spawn)?;
    let stdout =
        archive.stdout.take().ok_or_else(|| GitError::Failed { args: "archive".into(), stderr: "no output".into() })?;
    let untar = Command::new("tar")
        .args(["-x", "--no-same-owner", "-C"])
        .arg(dest)
        .stdin(stdout)
        .output()
        .map_err(GitError::Spawn)?;
    let archived = archive.wait_with_output().map_err(GitError::Spawn)?;
    if !archived.status.success() || !untar.status.success() {
        return Err(GitError::Failed {
            args: "archive | tar".into(),
            stderr: format!("{}{}", String::from_utf8_lossy(&archived.stderr), String::from_utf8_lossy(&untar.stderr)),
        });
    }
    Ok(())
}

/// One entry of a tree listing: mode, object id and path (as git has it,
/// not always UTF-8).
struct Entry {
    mode: String,
    id: String,
    path: Vec<u8>,
}

/// Every file (blob, link or submodule) of `commit`'s tree.
fn entries(repository: &Path, commit: &str) -> Result<Vec<Entry>, GitError> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(["ls-tree", "-r", "-z", "--full-tree", commit])
        .envs(CLEAN_GIT_ENV)
        .output()
        .map_err(GitError::Spawn)?;
    if !output.status.success() {
        return Err(GitError::Failed {
            args: format!("ls-tree {commit}"),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let mut found = Vec::new();
    for record in output.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let tab = record
            .iter()
            .position(|b| *b == b'\t')
            .ok_or_else(|| GitError::Failed { args: "ls-tree".into(), stderr: "an entry without a path".into() })?;
        let head = String::from_utf8_lossy(&record[..tab]);
        let mut fields = head.split(' ');
        let (Some(mode), Some(_kind), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(GitError::Failed { args: "ls-tree".into(), stderr: format!("cannot read entry {head}") });
        };
        found.push(Entry { mode: mode.to_owned(), id: id.to_owned(), path: record[tab + 1..].to_vec() });
    }
    Ok(found)
}

/// The tree of `head` in which every path that `governed` accepts is as
/// `target` has it: taken from `target` where it is there, absent where it
/// is not. A path of `head` in the way of such a file (a directory that
/// `head` made a link, say) gives way to it. The tree is written into the
/// repository as an object that nothing points to; its id is returned.
pub fn tree_governed_by(
    repository: &Path,
    head: &str,
    target: &str,
    governed: impl Fn(&str) -> bool,
) -> Result<String, GitError> {
    let taken: Vec<Entry> =
        entries(repository, target)?.into_iter().filter(|e| governed(&String::from_utf8_lossy(&e.path))).collect();
    let in_the_way = |path: &[u8]| {
        taken.iter().any(|t| {
            let below = |long: &[u8], short: &[u8]| {
                long.len() > short.len() && long.starts_with(short) && long[short.len()] == b'/'
            };
            below(&t.path, path) || below(path, &t.path)
        })
    };
    let kept: Vec<Entry> = entries(repository, head)?
        .into_iter()
        .filter(|e| !governed(&String::from_utf8_lossy(&e.path)) && !in_the_way(&e.path))
        .collect();
    let mut listing = Vec::new();
    for entry in kept.iter().chain(&taken) {
        listing.extend_from_slice(format!("{} {}\t", entry.mode, entry.id).as_bytes());
        listing.extend_from_slice(&entry.path);
        listing.push(0);
    }
    let scratch = tempfile::tempdir().map_err(GitError::Spawn)?;
    let index = scratch.path().join("index");
    let run = |args: &[&str], input: Option<&[u8]>| -> Result<String, GitError> {
        use std::io::Write as _;
        let mut child = Command::new("git")
            .arg("-C")
            .arg(repository)
            .args(args)
            .envs(CLEAN_GIT_ENV)
            .env("GIT_INDEX_FILE", &index)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(GitError::Spawn)?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input).map_err(GitError::Spawn)?;
        }
        let output = child.wait_with_output().map_err(GitError::Spawn)?;
        if !output.status.success() {
            return Err(GitError::Failed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    run(&["update-index", "-z", "--index-info"], Some(&listing))?;
    run(&["write-tree"], None)
}

/// Who custody's own commits are made by.
pub const CUSTODY_IDENTITY: (&str, &str) = ("custody", "custody@localhost");

/// Makes a commit of `tree` with `parents` and `message`, as custody.
pub fn commit_tree(repository: &Path, tree: &str, parents: &[&str], message: &str) -> Result<String, GitError> {
    let mut command = Command::new("git");
    command.arg("-C").arg(repository).args(["commit-tree", tree]);
    for parent in parents {
        command.args(["-p", parent]);
    }
    let mut child = command
        .envs(CLEAN_GIT_ENV)
        .env("GIT_AUTHOR_NAME", CUSTODY_IDENTITY.0)
        .env("GIT_AUTHOR_EMAIL", CUSTODY_IDENTITY.1)
        .env("GIT_COMMITTER_NAME", CUSTODY_IDENTITY.0)
        .env("GIT_COMMITTER_EMAIL", CUSTODY_IDENTITY.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GitError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, message.as_bytes()).map_err(GitError::Spawn)?;
    }
    let output = child.wait_with_output().map_err(GitError::Spawn)?;
    if !output.status.success() {
        return Err(GitError::Failed {
            args: "commit-tree".into(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Whether `ancestor` is reachable from `descendant` (or is it).
pub fn is_ancestor(repository: &Path, ancestor: &str, descendant: &str) -> Result<bool, GitError> {
    let status = Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(["merge-base", "--is-ancestor", ancestor, descendant])
        .envs(CLEAN_GIT_ENV)
        .status()
        .map_err(GitError::Spawn)?;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(GitError::Failed { args: "merge-base --is-ancestor".into(), stderr: String::new() }),
    }
}

/// Deletes `reference` only if it still points at `old`.
pub fn delete_ref(repository: &Path, reference: &str, old: &str) -> Result<(), GitError> {
    git(Some(repository), &["update-ref", "-d", reference, old]).map(|_| ())
}

/// Moves `reference` to `new` only if it still points at `old` (or does
/// not exist, when `old` is `None`).
pub fn compare_and_swap(repository: &Path, reference: &str, new: &str, old: Option<&str>) -> Result<(), GitError> {
    let old = old.unwrap_or(custody_domain::project::ZERO_ID);
    git(Some(repository), &["update-ref", "-m", "custody merge", reference, new, old]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_read_loose_or_packed_as_git_sees_them() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        git(None, &["init", "-q", "--bare", "-b", "main", &repo.to_string_lossy()]).unwrap();
        // `git mktree` with nothing on standard input writes the empty tree.
        let tree = git(Some(repo), &["mktree"]).unwrap().trim().to_owned();
        let commit = commit_tree(repo, &tree, &[], "one").unwrap();
        assert_eq!(read_ref(repo, "refs/heads/main").unwrap(), None);
        compare_and_swap(repo, "refs/heads/main", &commit, None).unwrap();
        assert_eq!(read_ref(repo, "refs/heads/main").unwrap().as_deref(), Some(commit.as_str()));
        git(Some(repo), &["pack-refs", "--all"]).unwrap();
        assert!(!repo.join("refs/heads/main").exists());
        assert_eq!(read_ref(repo, "refs/heads/main").unwrap().as_deref(), Some(commit.as_str()));
        assert_eq!(resolve(repo, "refs/heads/main").unwrap().as_deref(), Some(commit.as_str()));
        // A second compare-and-swap from the old value fails: the ref moved.
        let other = commit_tree(repo, &tree, &[&commit], "two").unwrap();
        assert!(compare_and_swap(repo, "refs/heads/main", &other, None).is_err());
    }

    #[test]
    fn a_file_is_read_from_the_tree_and_a_directory_in_its_place_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let run = |args: &[&str]| {
            let status = Command::new("git")
                .args(["-c", "user.name=a", "-c", "user.email=a@example.com"])
                .args(args)
                .current_dir(work)
                .envs(crate::CLEAN_GIT_ENV)
                .status()
                .unwrap();
            assert!(status.success(), "{args:?}");
        };
        run(&["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(work.join(".custody/pipeline.toml")).unwrap();
        std::fs::write(work.join(".custody/pipeline.toml/inner"), "x").unwrap();
        std::fs::write(work.join("*.toml"), "literal star").unwrap();
        std::fs::write(work.join("real.toml"), "real").unwrap();
        run(&["add", "-A"]);
        run(&["commit", "-q", "-m", "one"]);
        let head = git(Some(work), &["rev-parse", "HEAD"]).unwrap().trim().to_owned();
        assert_eq!(read_file(work, &head, "real.toml").unwrap().as_deref(), Some("real"));
        assert_eq!(read_file(work, &head, "*.toml").unwrap().as_deref(), Some("literal star"), "a name, not a pattern");
        assert_eq!(read_file(work, &head, "missing.toml").unwrap(), None);
        assert_eq!(read_file(work, &head, "no/such/dir.toml").unwrap(), None);
        assert!(read_file(work, &head, ".custody/pipeline.toml").is_err(), "a directory is not an absent file");
        assert!(read_file(work, &"0".repeat(40), "real.toml").is_err(), "an unknown commit is an error");
    }
}
