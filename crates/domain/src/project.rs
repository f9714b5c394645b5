//! Projects, their members, and what a push may do to which ref.
//!
//! The rules here decide every ref update a push asks for. They are the
//! first of the invariants: no person moves a protected branch, not by push
//! and not as an admin; only custody's own merge does.

use serde::{Deserialize, Serialize};

use crate::rules::DEFAULT_BRANCH_UNREVIEWED;
use crate::{Decision, Reason, Rule};

/// Nobody pushes to a protected branch.
pub const PROTECTED_BRANCH: Rule = Rule("push.protected_branch");
/// custody's own refs are not for clients.
pub const INTERNAL_REF: Rule = Rule("push.internal_ref");
/// Only branches and tags can be pushed.
pub const UNSUPPORTED_REF: Rule = Rule("push.unsupported_ref");
/// Tags, once made, stay where they are.
pub const TAG_IMMUTABLE: Rule = Rule("push.tag_immutable");
/// Pushing needs write access to the project.
pub const WRITE_ACCESS: Rule = Rule("push.write_access");

/// The namespace custody keeps for itself in every repository.
pub const INTERNAL_NAMESPACE: &str = "refs/custody/";

/// The all-zero object id git uses for "no object" (creation, deletion).
pub const ZERO_ID: &str = "0000000000000000000000000000000000000000";

/// Checks a branch name (without `refs/heads/`): the common subset of git's
/// ref-name rules, so that a name custody accepts is one git accepts too.
/// [`check_branch_name`]'s rule as a pattern (an ECMA-262 regular
/// expression), with a length of 1 to 200.
pub const BRANCH_PATTERN: &str =
    "^(?!HEAD$)(?![-/.])(?!.*\\.\\.)(?!.*//)(?!.*/\\.)(?!.*\\.lock(?:/|$))[A-Za-z0-9._/-]*[A-Za-z0-9_-]$";

/// The schema of a branch name.
#[cfg(feature = "openapi")]
pub fn branch_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(BRANCH_PATTERN))
        .min_length(Some(1))
        .max_length(Some(200))
        .description(Some("A branch name: A-Z a-z 0-9 . _ - /, with no '..' or '//', not starting or ending with '/' or '.', no part ending in '.lock', and not HEAD."))
        .build()
}

/// The schema of a branch name that may be absent (`null`).
#[cfg(feature = "openapi")]
pub fn optional_branch_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    let mut schema = branch_schema();
    schema.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
    schema
}

pub fn check_branch_name(branch: &str) -> Result<(), crate::InvalidInput> {
    const RULE: &str = "use 1 to 200 characters from A-Z a-z 0-9 . _ - /, with no '..' or '//', \
                        not starting or ending with '/' or '.', no part ending in '.lock', and not HEAD";
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-/".contains(c);
    let ok = !branch.is_empty()
        && branch.len() <= 200
        && branch.chars().all(allowed)
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.starts_with(['/', '.', '-'])
        && !branch.ends_with(['/', '.'])
        && !branch.split('/').any(|part| part.starts_with('.') || part.ends_with(".lock"))
        && branch != "HEAD";
    if ok {
        Ok(())
    } else {
        Err(crate::InvalidInput::new("branch name", branch, RULE))
    }
}

/// What a member may do in a project.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Clone and fetch, see changes.
    Read,
    /// Also push branches, open and review changes.
    Write,
    /// Also manage the project's settings (through grants).
    Maintain,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Maintain => "maintain",
        }
    }

    /// Reads a role's name.
    pub fn parse(value: &str) -> Result<Role, crate::InvalidInput> {
        match value {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "maintain" => Ok(Role::Maintain),
            _ => Err(crate::InvalidInput::new("role", value, "expected read, write or maintain")),
        }
    }

    /// Whether this role includes pushing.
    pub fn can_write(self) -> bool {
        self >= Role::Write
    }
}

/// One ref update a push asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    /// The full ref name, such as `refs/heads/feature`.
    pub name: String,
    /// The id it points at now (zero when it is being created).
    pub old: String,
    /// The id it would point at (zero when it is being deleted).
    pub new: String,
}

impl RefUpdate {
    /// Whether the ref is being created.
    pub fn creates(&self) -> bool {
        self.old == ZERO_ID
    }

    /// Whether the ref is being deleted.
    pub fn deletes(&self) -> bool {
        self.new == ZERO_ID
    }

    fn verb(&self) -> &'static str {
        if self.creates() {
            "create"
        } else if self.deletes() {
            "delete"
        } else {
            "move"
        }
    }
}

/// A person as a commit names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Identity {
    /// The name as written.
    pub name: String,
    /// The e-mail address as written.
    pub email: String,
    /// The custody user with that registered address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A commit a push brought into a repository.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PushedCommit {
    /// Its id.
    pub sha: String,
    /// Its author, as written.
    pub author: Identity,
    /// Its committer, as written.
    pub committer: Identity,
    /// Its `Co-authored-by:` trailers.
    pub co_authors: Vec<Identity>,
}

/// A new branch or tag would be taken for a protected branch.
pub const REF_SHADOWS_PROTECTED: Rule = Rule("push.ref_shadows_protected");
/// A new branch or tag is named outside the safe alphabet.
pub const REF_NAME_UNSAFE: Rule = Rule("push.ref_name");

/// The characters a new branch or tag may use: ASCII letters and digits and
/// `. _ - / + @`. Anything else (a Cyrillic `а`, a zero-width space, a
/// control character) could make a name look like another one.
pub fn safe_ref_character(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+' | '@')
}

/// The protected branch a new ref `name` could be taken for, if any: its
/// short name with every leading `refs/`, `heads/`, `tags/` and `remotes/`
/// taken off is a protected branch's name, in any case (a tag `main`, a
/// branch `refs/heads/main` or `heads/main`), so that `git rev-parse`, a
/// checkout or a person could read it as the branch.
pub fn shadowed_branch<'p>(name: &str, default_branch: &'p str, protected: &'p [String]) -> Option<&'p str> {
    let mut short = name.strip_prefix("refs/heads/").or_else(|| name.strip_prefix("refs/tags/"))?;
    let prefixes = ["refs/", "heads/", "tags/", "remotes/"];
    while let Some(rest) = prefixes
        .iter()
        .find_map(|p| short.get(..p.len()).filter(|head| head.eq_ignore_ascii_case(p)).map(|_| &short[p.len()..]))
    {
        short = rest;
    }
    std::iter::once(default_branch).chain(protected.iter().map(String::as_str)).find(|p| p.eq_ignore_ascii_case(short))
}

/// Decides one ref update. `protected` holds branch names (`main`), which
/// are matched without regard to case so that no spelling of a protected
/// branch gets through on any file system.
pub fn decide_ref_update(update: &RefUpdate, project: &str, protected: &[String], default_branch: &str) -> Decision {
    let name = update.name.as_str();
    if name.starts_with(INTERNAL_NAMESPACE) {
        return Decision::deny(
            Reason::new(INTERNAL_REF, format!("{name} is in custody's own namespace ({INTERNAL_NAMESPACE})"))
                .satisfy("push to a branch under refs/heads/ instead"),
        );
    }
    if update.creates() && (name.starts_with("refs/heads/") || name.starts_with("refs/tags/")) {
        if let Some(bad) = name.chars().find(|c| !safe_ref_character(*c)) {
            return Decision::deny(
                Reason::new(REF_NAME_UNSAFE, format!("{name:?} holds {bad:?}, which a name could be mistaken by"))
                    .satisfy("name branches and tags with ASCII letters, digits and . _ - / + @"),
            );
        }
        let short = name.strip_prefix("refs/heads/").unwrap_or(name);
        if let Some(branch) =
            shadowed_branch(name, default_branch, protected).filter(|b| !b.eq_ignore_ascii_case(short))
        {
            return Decision::deny(
                Reason::new(
                    REF_SHADOWS_PROTECTED,
                    format!("{name} would be taken for the protected branch {branch} (by git rev-parse, a checkout or a person)"),
                )
                .satisfy(format!("choose a name that does not end up as {branch}")),
            );
        }
    }
    if let Some(branch) = name.strip_prefix("refs/heads/") {
        let is_protected = branch == "HEAD"
            || branch.eq_ignore_ascii_case(default_branch)
            || protected.iter().any(|p| p.eq_ignore_ascii_case(branch));
        if is_protected {
            return Decision::deny(
                Reason::new(
                    PROTECTED_BRANCH,
                    format!("{branch} is a protected branch: nobody can {} it by pushing, admins included", update.verb()),
                )
                .satisfy(format!(
                    "push your work to a feature branch and open a change: custody change open {project} --source BRANCH --target {default_branch}"
                )),
            );
        }
        // git keeps refs as paths: `main/x` and `main` cannot both exist, so
        // creating one would keep the protected branch from ever being made.
        if update.creates() {
            let mut protected_names = std::iter::once(default_branch).chain(protected.iter().map(String::as_str));
            if let Some(taken) = protected_names.find(|p| nests(branch, p)) {
                return Decision::deny(
                    Reason::new(
                        PROTECTED_BRANCH,
                        format!("{branch} would block the protected branch {taken}: git cannot hold both"),
                    )
                    .satisfy(format!("choose a branch name that is neither inside {taken}/ nor a folder above it")),
                );
            }
        }
        return Decision::allow();
    }
    if name.starts_with("refs/tags/") {
        if !update.creates() {
            return Decision::deny(
                Reason::new(TAG_IMMUTABLE, format!("tag {name} exists; tags cannot be moved or deleted"))
                    .satisfy("create a new tag instead"),
            );
        }
        return Decision::allow();
    }
    Decision::deny(
        Reason::new(UNSUPPORTED_REF, format!("{name} is neither a branch nor a tag"))
            .satisfy("push to refs/heads/BRANCH or refs/tags/TAG"),
    )
}

/// Whether one branch name is a folder of the other, in any case
/// (`main/x` and `main`, `release` and `Release/2.x`).
fn nests(a: &str, b: &str) -> bool {
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    let inside = |outer: &str, inner: &str| inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('/'));
    inside(&a, &b) || inside(&b, &a)
}

/// Decides a whole push: every update must be allowed, or none happens.
pub fn decide_push(
    updates: &[RefUpdate],
    project: &str,
    protected: &[String],
    default_branch: &str,
    can_write: bool,
) -> Decision {
    let mut decision = Decision::allow();
    decision.require(can_write, || {
        Reason::new(WRITE_ACCESS, "pushing needs write access to this project")
            .satisfy("ask an admin to add you with --role write (a grant)")
    });
    for update in updates {
        for reason in decide_ref_update(update, project, protected, default_branch).reasons {
            decision.refuse(reason);
        }
    }
    decision
}

/// Only reviewed history becomes a project's default branch: `unreviewed`
/// is whether `branch` exists and holds commits the current default branch
/// does not (any commit, when the default branch does not exist).
pub fn decide_default_branch(branch: &str, default_branch: &str, unreviewed: bool) -> Decision {
    let mut decision = Decision::allow();
    decision.require(!unreviewed, || {
        Reason::new(
            DEFAULT_BRANCH_UNREVIEWED,
            format!("branch {branch} has commits that are not on {default_branch}: they never went through a change"),
        )
        .satisfy(format!("merge those commits into {default_branch} through a change first"))
    });
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(name: &str, old: &str, new: &str) -> RefUpdate {
        RefUpdate { name: name.into(), old: old.into(), new: new.into() }
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn a_feature_branch_may_be_created_moved_and_deleted() {
        for u in [
            update("refs/heads/feature", ZERO_ID, A),
            update("refs/heads/feature", A, B),
            update("refs/heads/feature", A, ZERO_ID),
        ] {
            assert!(decide_ref_update(&u, "payments", &[], "main").allowed, "{u:?}");
        }
    }

    #[test]
    fn nobody_creates_moves_or_deletes_the_default_branch() {
        for u in [
            update("refs/heads/main", ZERO_ID, A),
            update("refs/heads/main", A, B),
            update("refs/heads/main", A, ZERO_ID),
        ] {
            let decision = decide_ref_update(&u, "payments", &[], "main");
            assert_eq!(decision.reasons[0].rule, PROTECTED_BRANCH.0);
            assert!(decision.reasons[0].satisfy.as_deref().unwrap().contains("open a change"));
        }
    }

    #[test]
    fn refs_that_shadow_a_protected_branch_or_look_like_one_are_refused() {
        let protected = vec!["release".to_owned()];
        for name in [
            "refs/tags/main",
            "refs/tags/Main",
            "refs/heads/refs/heads/main",
            "refs/heads/heads/main",
            "refs/heads/refs/tags/release",
            "refs/tags/heads/main",
            "refs/heads/remotes/main",
        ] {
            let decision = decide_ref_update(&update(name, ZERO_ID, A), "payments", &protected, "main");
            assert!(!decision.allowed, "{name}");
            assert!(decision.reasons.iter().any(|r| r.rule == REF_SHADOWS_PROTECTED.0), "{name}: {decision:?}");
        }
        for name in ["refs/heads/m\u{0430}in", "refs/heads/main\u{200b}", "refs/tags/v1\u{0007}"] {
            let decision = decide_ref_update(&update(name, ZERO_ID, A), "payments", &protected, "main");
            assert!(!decision.allowed, "{name:?}");
            assert_eq!(decision.reasons[0].rule, REF_NAME_UNSAFE.0, "{name:?}");
        }
        for name in ["refs/heads/feature/JIRA-12_fix", "refs/tags/v1.2.3", "refs/heads/maintenance", "refs/tags/main-1"]
        {
            assert!(decide_ref_update(&update(name, ZERO_ID, A), "payments", &protected, "main").allowed, "{name}");
        }
    }

    #[test]
    fn spellings_that_could_alias_a_protected_branch_are_refused() {
        let protected = vec!["release".to_owned()];
        for name in ["refs/heads/MAIN", "refs/heads/Main", "refs/heads/RELEASE", "refs/heads/HEAD"] {
            assert!(!decide_ref_update(&update(name, ZERO_ID, A), "payments", &protected, "main").allowed, "{name}");
        }
        for name in ["refs/remotes/origin/main", "HEAD", "refs/main", "refs/notes/commits"] {
            let decision = decide_ref_update(&update(name, ZERO_ID, A), "payments", &protected, "main");
            assert_eq!(decision.reasons[0].rule, UNSUPPORTED_REF.0, "{name}");
        }
    }

    #[test]
    fn a_new_branch_cannot_be_a_folder_of_a_protected_one_or_hold_it() {
        let protected = vec!["release/2.x".to_owned()];
        for name in ["refs/heads/main/x", "refs/heads/MAIN/x/y", "refs/heads/release", "refs/heads/release/2.x/hotfix"]
        {
            let decision = decide_ref_update(&update(name, ZERO_ID, A), "payments", &protected, "main");
            assert_eq!(decision.reasons[0].rule, PROTECTED_BRANCH.0, "{name}");
        }
        for name in ["refs/heads/main-x", "refs/heads/mainly/x", "refs/heads/release-2", "refs/heads/release/3.x"] {
            assert!(decide_ref_update(&update(name, ZERO_ID, A), "payments", &protected, "main").allowed, "{name}");
        }
        // One made before the rule may still move or go.
        assert!(decide_ref_update(&update("refs/heads/main/x", A, B), "payments", &protected, "main").allowed);
        assert!(decide_ref_update(&update("refs/heads/main/x", A, ZERO_ID), "payments", &protected, "main").allowed);
    }

    #[test]
    fn branch_names_follow_gits_rules() {
        for ok in ["main", "release/2.x", "feature_1-a"] {
            assert!(check_branch_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "HEAD", "a..b", "/main", "main/", "a//b", ".hidden", "x.lock", "a b", "-rf", "a/.b", "ü"] {
            assert!(check_branch_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn custodys_namespace_is_refused() {
        let decision = decide_ref_update(&update("refs/custody/merges/1", ZERO_ID, A), "payments", &[], "main");
        assert_eq!(decision.reasons[0].rule, INTERNAL_REF.0);
    }

    #[test]
    fn tags_are_created_once() {
        assert!(decide_ref_update(&update("refs/tags/v1", ZERO_ID, A), "payments", &[], "main").allowed);
        assert!(!decide_ref_update(&update("refs/tags/v1", A, B), "payments", &[], "main").allowed);
        assert!(!decide_ref_update(&update("refs/tags/v1", A, ZERO_ID), "payments", &[], "main").allowed);
    }

    #[test]
    fn one_bad_update_refuses_the_whole_push_with_every_reason() {
        let updates = [
            update("refs/heads/ok", ZERO_ID, A),
            update("refs/heads/main", A, B),
            update("refs/custody/x", ZERO_ID, A),
        ];
        let decision = decide_push(&updates, "payments", &[], "main", false);
        let rules: Vec<_> = decision.reasons.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(rules, [WRITE_ACCESS.0, PROTECTED_BRANCH.0, INTERNAL_REF.0]);
    }

    #[test]
    fn a_branch_holding_unreviewed_commits_does_not_become_the_default() {
        assert!(decide_default_branch("release", "main", false).allowed);
        let decision = decide_default_branch("release", "main", true);
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, DEFAULT_BRANCH_UNREVIEWED.name());
        assert_eq!(
            decision.reasons[0].message,
            "branch release has commits that are not on main: they never went through a change"
        );
        assert_eq!(
            decision.reasons[0].satisfy.as_deref(),
            Some("merge those commits into main through a change first")
        );
    }
}
