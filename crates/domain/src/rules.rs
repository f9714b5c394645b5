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
    /// the tests': none may make a `Rule` of its own.
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
                    for (n, line) in text.lines().enumerate() {
                        if line.contains("Rule(\"") {
                            found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                        }
                    }
                }
            }
        }
        assert!(found.is_empty(), "reason codes made outside custody-domain:\n{}", found.join("\n"));
    }
}
