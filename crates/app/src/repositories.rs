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
        let later: std::collections::HashMap<&String, ()> = newer
            .iter()
            .filter(|m| m.project == mainline.project)
            .flat_map(|m| m.merges.keys())
            .filter(|commit| !mainline.merges.contains_key(*commit))
            .map(|c| (c, ()))
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
            let kept = chain.iter().find(|c| !later.contains_key(c));
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
