//! The reason codes the store and the server refuse with, defined here with
//! every other rule of custody: a `Rule` can only be made inside this crate,
//! so no other crate invents a reason code of its own.

use crate::Rule;

/// A fact read from the database that custody cannot prove it wrote.
pub const UNPROVEN_FACT: Rule = Rule("integrity.unproven_fact");
/// Approving or requesting changes needs write access to the project.
pub const APPROVER_NEEDS_WRITE: Rule = Rule("review.write_access");
/// A review names a head the change no longer has.
pub const REVIEW_HEAD_MOVED: Rule = Rule("review.head_moved");
/// A comment's thread is resolved by its author, the change's opener or a
/// writer of the project.
pub const COMMENT_RESOLVER: Rule = Rule("comment.resolver");
/// Opening, closing or merging a change needs write access.
pub const CHANGE_NEEDS_WRITE: Rule = Rule("change.write_access");
/// The change's head moved while it was being merged.
pub const GATE_HEAD_MOVED: Rule = Rule("gate.head_moved");
/// A grant's user is still waiting for a second admin.
pub const AWAITING_APPROVAL: Rule = Rule("grant.awaiting_approval");
/// The same grant is already asked for.
pub const GRANT_DUPLICATE: Rule = Rule("grant.duplicate");
/// Whoever took part in what a finding is about cannot review it.
pub const FINDING_REVIEWER_NOT_INVOLVED: Rule = Rule("finding.reviewer_not_involved");
/// Deciding on a deployment needs project membership and a writing token.
pub const DEPLOY_PROJECT_MEMBER: Rule = Rule("deploy.project_member");
/// Only a successful, signed build of a merged commit is deployed.
pub const DEPLOY_PROVENANCE: Rule = Rule("deploy.provenance");
/// A read-only token takes no deployment decision.
pub const DEPLOY_TOKEN_SCOPE: Rule = Rule("deploy.token_scope");
/// An environment's deploy logs are read by its log readers alone.
pub const DEPLOY_LOG_READER: Rule = Rule("deploy.log_reader");
/// Only an admin's sign-in gets a token with the admin scope.
pub const ADMIN_SCOPE_NEEDS_ADMIN: Rule = Rule("token.admin_scope_needs_admin");
/// Only reviewed history becomes a project's default branch.
pub const DEFAULT_BRANCH_UNREVIEWED: Rule = Rule("project.default_branch.unreviewed");

#[cfg(test)]
mod tests {
    /// Every crate's sources but this one's, the independent verifier's and
    /// the tests': none may make a `Rule` of its own, and none but test code
    /// may make a `Reason` or a refusal: the rules here decide them.
    #[test]
    fn no_reason_code_is_decided_outside_the_domain() {
        let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut found = Vec::new();
        let mut stack: Vec<std::path::PathBuf> = std::fs::read_dir(&crates)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.ends_with("domain") && !p.ends_with("formats"))
            .map(|p| p.join("src"))
            .collect();
        while let Some(path) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&path) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let test_lines = test_lines(&text);
                    for (n, line) in text.lines().enumerate() {
                        let decides = !test_lines.contains(&n)
                            && !line.trim_start().starts_with("//")
                            && (line.contains("Reason::new(") || line.contains("Decision::deny("));
                        if line.contains("Rule(\"") || decides {
                            found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                        }
                    }
                }
            }
        }
        assert!(found.is_empty(), "reason codes decided outside custody-domain:\n{}", found.join("\n"));
    }

    /// The lines (from 0) of items marked `#[cfg(test)]`, by their braces.
    fn test_lines(text: &str) -> std::collections::BTreeSet<usize> {
        let mut lines = std::collections::BTreeSet::new();
        let (mut inside, mut depth, mut opened) = (false, 0i64, false);
        for (n, line) in text.lines().enumerate() {
            if !inside && line.trim_start().starts_with("#[cfg(test)]") {
                (inside, depth, opened) = (true, 0, false);
            }
            if !inside {
                continue;
            }
            lines.insert(n);
            for c in line.chars() {
                match c {
                    '{' => (depth, opened) = (depth + 1, true),
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if (opened && depth <= 0) || (!opened && line.trim_end().ends_with(';')) {
                inside = false;
            }
        }
        lines
    }

    #[test]
    fn test_items_are_told_apart_from_the_rest() {
        let text =
            "fn a() {}\n#[cfg(test)]\nmod tests {\n    fn b() {\n    }\n}\nfn c() {}\n#[cfg(test)]\nmod d;\nfn e() {}";
        assert_eq!(test_lines(text).into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 7, 8]);
    }
}
