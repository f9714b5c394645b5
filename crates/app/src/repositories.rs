//! The repository side of a backup: a copied repository moved back to what
//! a copied database records, and the refs a restore compares.

use std::collections::BTreeMap;
use std::path::Path;

/// Moves the copied refs back to what the copied database records: a
/// mainline loses the merges recorded after the copy began (`newer` knows
/// them), an open change's branch goes to the change's recorded head. Then
/// checks that every object the refs reach is there. Returns every ref.
pub fn trim_to_records(
    repositories: &Path,
    facts: &custody_store::BackupFacts,
    newer: &[custody_store::Mainline],
) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let git_failed = |project: &str| {
        let project = project.to_owned();
        move |e: custody_git::GitError| format!("the copied repository of {project}: {e}")
    };
    for mainline in &facts.mainlines {
        let repository = repositories.join(format!("{}.git", mainline.project));
        let later: std::collections::HashSet<&String> = newer
            .iter()
            .filter(|m| m.project == mainline.project)
            .flat_map(|m| m.merges.keys())
            .filter(|commit| !mainline.merges.contains_key(*commit))
            .collect();
        for branch in &mainline.branches {
            let reference = format!("refs/heads/{branch}");
            let Some(tip) = custody_git::change::read_ref(&repository, &reference)
                .map_err(|e| format!("{}: {e}", repository.display()))?
            else {
                continue;
            };
            let chain =
                custody_git::change::first_parents(&repository, None, &tip).map_err(git_failed(&mainline.project))?;
            let kept = chain.iter().find(|c| !later.contains(c));
            match kept {
                Some(kept) if *kept != tip => {
                    custody_git::change::compare_and_swap(&repository, &reference, kept, Some(&tip))
                        .map_err(git_failed(&mainline.project))?;
                }
                Some(_) => {}
                None => {
                    custody_git::change::delete_ref(&repository, &reference, &tip)
                        .map_err(git_failed(&mainline.project))?;
                }
            }
        }
    }
    for head in &facts.heads {
        let repository = repositories.join(format!("{}.git", head.project));
        let reference = format!("refs/heads/{}", head.branch);
        let tip = custody_git::change::read_ref(&repository, &reference)
            .map_err(|e| format!("{}: {e}", repository.display()))?;
        if tip.as_deref() != Some(head.head.as_str()) {
            custody_git::git(Some(&repository), &["update-ref", &reference, &head.head])
                .map_err(git_failed(&head.project))?;
        }
    }
    let mut all = BTreeMap::new();
    for project in &facts.projects {
        let repository = repositories.join(format!("{project}.git"));
        custody_git::git(Some(&repository), &["fsck", "--connectivity-only", "--no-dangling", "--no-progress"])
            .map_err(git_failed(project))?;
        all.insert(project.clone(), refs_of(&repository).map_err(git_failed(project))?);
    }
    Ok(all)
}

/// Every ref of a repository and the commit it names.
pub fn refs_of(repository: &Path) -> Result<BTreeMap<String, String>, custody_git::GitError> {
    let listed = custody_git::git(Some(repository), &["for-each-ref", "--format=%(refname) %(objectname)"])?;
    Ok(listed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, id)| (name.to_owned(), id.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use custody_domain::ProjectName;
    use custody_store::{BackupFacts, Mainline, RecordedHead};

    use super::*;

    const EMPTY_TREE: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

    fn commit(repository: &Path, parents: &[&str], message: &str) -> String {
        custody_git::change::commit_tree(repository, EMPTY_TREE, parents, message).unwrap()
    }

    #[test]
    fn a_merge_recorded_after_the_database_was_copied_is_taken_off_the_copied_mainline() {
        let dir = tempfile::tempdir().unwrap();
        let project = ProjectName::parse("payments").unwrap();
        let repository = custody_git::Repositories::new(dir.path()).create(&project, "main").unwrap();
        custody_git::git(Some(&repository), &["hash-object", "-t", "tree", "-w", "--stdin"]).unwrap();
        let base = commit(&repository, &[], "base");
        let first = commit(&repository, &[&base], "merge 1, recorded before the copy");
        let second = commit(&repository, &[&first], "merge 2, recorded after the copy began");
        let pushed = commit(&repository, &[&base], "a push after the copy");
        let head = commit(&repository, &[&base], "the change's recorded head");
        custody_git::git(Some(&repository), &["update-ref", "refs/heads/main", &second]).unwrap();
        custody_git::git(Some(&repository), &["update-ref", "refs/heads/feature", &pushed]).unwrap();

        let mainline = |merges: &[(&str, i64)]| Mainline {
            project: "payments".into(),
            branches: vec!["main".into()],
            merges: merges.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect::<HashMap<_, _>>(),
        };
        let facts = BackupFacts {
            instance: "bank".into(),
            projects: vec!["payments".into()],
            blobs: Vec::new(),
            checkpoint: None,
            heads: vec![RecordedHead { project: "payments".into(), branch: "feature".into(), head: head.clone() }],
            mainlines: vec![mainline(&[(&first, 1)])],
        };
        let refs = trim_to_records(dir.path(), &facts, &[mainline(&[(&first, 1), (&second, 2)])]).unwrap();
        assert_eq!(refs["payments"]["refs/heads/main"], first, "{refs:?}");
        assert_eq!(refs["payments"]["refs/heads/feature"], head, "{refs:?}");

        // A mainline the copy records no merge on keeps the history before them.
        let facts = BackupFacts { mainlines: vec![mainline(&[])], ..facts };
        custody_git::git(Some(&repository), &["update-ref", "refs/heads/main", &second]).unwrap();
        let refs = trim_to_records(dir.path(), &facts, &[mainline(&[(&first, 1), (&second, 2)])]).unwrap();
        assert_eq!(refs["payments"]["refs/heads/main"], base, "{refs:?}");
    }
}
