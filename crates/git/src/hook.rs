//! The server side of a push, seen from inside `git receive-pack`: the
//! hook scripts, the ref updates they read, and the commits a push brings.
//!
//! Both hooks run custody's own binary. While `pre-receive` runs, the
//! pushed objects are still quarantined: refusing there means none of them
//! ever enters the repository.

use std::io::BufRead;
use std::path::Path;
use std::process::Command;

use custody_domain::project::{Identity, PushedCommit, RefUpdate, ZERO_ID};

/// The variable holding the server's URL for the hook to call.
pub const URL_VAR: &str = "CUSTODY_HOOK_URL";
/// The variable holding the one-time capability of this push.
pub const CAPABILITY_VAR: &str = "CUSTODY_HOOK_CAPABILITY";
/// The variable that tells the hook the largest object a push may bring.
pub const MAX_OBJECT_VAR: &str = "CUSTODY_HOOK_MAX_OBJECT_BYTES";

/// The variable that names the binary the hooks run: the server that runs
/// `git receive-pack` sets it to its own, so that servers sharing one data
/// directory need not keep the binary at the same path.
pub const PROGRAM_VAR: &str = "CUSTODY_HOOK_PROGRAM";

/// Writes the `pre-receive` and `post-receive` scripts into `dir`, each
/// running `$CUSTODY_HOOK_PROGRAM hook NAME`, or `program hook NAME` when
/// git was started by something that did not set it.
pub fn install(dir: &Path, program: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let quoted = format!("'{}'", program.display().to_string().replace('\'', r"'\''"));
    for name in ["pre-receive", "post-receive"] {
        let script = format!(
            "#!/bin/sh\n# Written by custody at start; changes are overwritten.\n\
             program=${{{PROGRAM_VAR}:-{quoted}}}\nexec \"$program\" hook {name}\n"
        );
        let path = dir.join(name);
        let temporary = dir.join(format!(".{name}.new"));
        std::fs::write(&temporary, script)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))?;
        }
        std::fs::rename(&temporary, &path)?;
    }
    Ok(())
}

/// Why the hook could not read the push.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// A line on standard input was not `OLD NEW REF`.
    #[error("unexpected hook input line {0:?}")]
    BadLine(String),
    /// Reading failed.
    #[error("reading the hook input: {0}")]
    Io(#[from] std::io::Error),
    /// git failed.
    #[error(transparent)]
    Git(#[from] crate::GitError),
}

/// Reads the ref updates git hands a hook: one `OLD NEW REF` per line.
pub fn read_updates(input: impl BufRead) -> Result<Vec<RefUpdate>, HookError> {
    let mut updates = Vec::new();
    for line in input.lines() {
        let line = line?;
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(old), Some(new), Some(name), None) => {
                updates.push(RefUpdate { name: name.to_owned(), old: old.to_owned(), new: new.to_owned() })
            }
            _ => return Err(HookError::BadLine(line)),
        }
    }
    Ok(updates)
}

/// The commits that the updates bring into the repository, oldest first,
/// each once: those reachable from a new ref value and from no ref the
/// repository already has. Runs inside the hook's environment, so it sees
/// the quarantined objects.
pub fn new_commits(repository: &Path, updates: &[RefUpdate]) -> Result<Vec<PushedCommit>, HookError> {
    let tips: Vec<&str> = updates.iter().filter(|u| u.new != ZERO_ID).map(|u| u.new.as_str()).collect();
    commits_between(repository, &tips, &["--all"])
}

/// The objects the updates bring that are larger than `max` bytes: (id,
/// the path it was first seen at, size), largest first. Runs inside the
/// hook's environment, so it sees the quarantined objects.
pub fn oversized_objects(
    repository: &Path,
    updates: &[RefUpdate],
    max: u64,
) -> Result<Vec<(String, String, u64)>, HookError> {
    let tips: Vec<&str> = updates.iter().filter(|u| u.new != ZERO_ID).map(|u| u.new.as_str()).collect();
    if tips.is_empty() {
        return Ok(Vec::new());
    }
    let run = |args: &[&str], input: Option<Vec<u8>>| -> Result<Vec<u8>, HookError> {
        use std::io::Write as _;
        let mut child = Command::new("git")
            .arg("-C")
            .arg(repository)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take();
        // Fed from a thread, so that a large listing never blocks on a full pipe.
        let feeder = input.map(|bytes| {
            let stdin = stdin.take();
            std::thread::spawn(move || {
                if let Some(mut stdin) = stdin {
                    let _ = stdin.write_all(&bytes);
                }
            })
        });
        drop(stdin);
        let output = child.wait_with_output()?;
        if let Some(feeder) = feeder {
            let _ = feeder.join();
        }
        if !output.status.success() {
            return Err(crate::GitError::Failed {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            }
            .into());
        }
        Ok(output.stdout)
    };
    let mut args = vec!["rev-list", "--objects"];
    args.extend(tips.iter().copied());
    args.extend(["--not", "--all"]);
    let listed = run(&args, None)?;
    let sizes = run(&["cat-file", "--batch-check=%(objectname) %(objectsize) %(rest)"], Some(listed))?;
    let mut found: Vec<(String, String, u64)> = String::from_utf8_lossy(&sizes)
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let (id, size) = (parts.next()?, parts.next()?.parse::<u64>().ok()?);
            (size > max).then(|| (id.to_owned(), parts.next().unwrap_or("").to_owned(), size))
        })
        .collect();
    found.sort_by_key(|o| std::cmp::Reverse(o.2));
    Ok(found)
}

/// The commits reachable from `tips` and not from the refs that `exclude`
/// selects (`--all`, `--branches`…), oldest first, with the identities
/// they name.
pub fn commits_between(repository: &Path, tips: &[&str], exclude: &[&str]) -> Result<Vec<PushedCommit>, HookError> {
    if tips.is_empty() {
        return Ok(Vec::new());
    }
    // Fields separated by NUL, commits by RS; trailers by US.
    let format =
        "--format=%H%x00%an%x00%ae%x00%cn%x00%ce%x00%(trailers:key=Co-authored-by,valueonly,separator=%x1f)%x1e";
    let mut args = vec!["log", "--reverse", "--topo-order", format];
    args.extend(tips.iter().copied());
    args.push("--not");
    args.extend(exclude.iter().copied());
    let mut command = Command::new("git");
    command.arg("-C").arg(repository).args(&args);
    let output = command.output()?;
    if !output.status.success() {
        return Err(crate::GitError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        }
        .into());
    }
    Ok(parse_log(&String::from_utf8_lossy(&output.stdout)))
}

fn parse_log(text: &str) -> Vec<PushedCommit> {
    text.split('\u{1e}')
        .filter_map(|record| {
            let record = record.trim_start_matches('\n');
            let mut fields = record.split('\0');
            let sha = fields.next().filter(|s| !s.is_empty())?.to_owned();
            let identity = |name: Option<&str>, email: Option<&str>| Identity {
                name: name.unwrap_or("").to_owned(),
                email: email.unwrap_or("").to_owned(),
                user: None,
            };
            let author = identity(fields.next(), fields.next());
            let committer = identity(fields.next(), fields.next());
            let co_authors = fields.next().unwrap_or("").split('\u{1f}').filter_map(parse_identity).collect();
            Some(PushedCommit { sha, author, committer, co_authors })
        })
        .collect()
}

/// Reads `Name <email>` as a trailer value.
pub fn parse_identity(value: &str) -> Option<Identity> {
    let value = value.trim();
    let (name, rest) = value.split_once('<')?;
    let email = rest.strip_suffix('>')?.trim();
    if email.is_empty() {
        return None;
    }
    Some(Identity { name: name.trim().to_owned(), email: email.to_owned(), user: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_input_is_read_line_by_line() {
        let input = format!("{ZERO_ID} {} refs/heads/feature\n", "a".repeat(40));
        let updates = read_updates(input.as_bytes()).unwrap();
        assert_eq!(updates[0].name, "refs/heads/feature");
        assert!(updates[0].creates());
        assert!(read_updates("junk\n".as_bytes()).is_err());
    }

    #[test]
    fn co_authors_are_read_from_trailers() {
        assert_eq!(parse_identity("Bob Builder <bob@example.com>").unwrap().email, "bob@example.com");
        assert!(parse_identity("no email here").is_none());
        let log = format!("{}\0Alice\0alice@example.com\0Alice\0alice@example.com\0Bob <bob@example.com>\u{1f}Carol <carol@example.com>\u{1e}\n", "c".repeat(40));
        let commits = parse_log(&log);
        assert_eq!(commits.len(), 1);
        assert_eq!(commits[0].co_authors.len(), 2);
        assert_eq!(commits[0].author.name, "Alice");
    }

    #[test]
    fn commits_new_to_the_repository_are_listed_once_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        let run = |args: &[&str]| {
            let out = Command::new("git")
                .arg("-C")
                .arg(work)
                .args(args)
                .envs(crate::CLEAN_GIT_ENV)
                .env("GIT_AUTHOR_NAME", "Alice")
                .env("GIT_AUTHOR_EMAIL", "alice@example.com")
                .env("GIT_COMMITTER_NAME", "Alice")
                .env("GIT_COMMITTER_EMAIL", "alice@example.com")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        run(&["init", "-q", "-b", "main"]);
        run(&["commit", "-q", "--allow-empty", "-m", "base"]);
        let base = run(&["rev-parse", "HEAD"]);
        run(&["checkout", "-q", "-b", "feature"]);
        run(&["commit", "-q", "--allow-empty", "-m", "one\n\nCo-authored-by: Bob <bob@example.com>"]);
        run(&["commit", "-q", "--allow-empty", "-m", "two"]);
        let tip = run(&["rev-parse", "HEAD"]);
        // As the hook sees it: feature is not a ref yet, main is.
        run(&["checkout", "-q", "main"]);
        run(&["branch", "-q", "-D", "feature"]);
        let update = RefUpdate { name: "refs/heads/feature".into(), old: ZERO_ID.into(), new: tip.clone() };
        let commits = new_commits(work, &[update]).unwrap();
        assert_eq!(commits.len(), 2);
        assert_eq!(commits[1].sha, tip);
        assert_eq!(commits[0].co_authors[0].email, "bob@example.com");
        assert!(commits.iter().all(|c| c.sha != base));
    }
}
