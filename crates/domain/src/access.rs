//! Access: who may act in a project, with which token, and who reads what.
//!
//! The store reads the facts (a member's role, a token's scopes, a user's
//! groups); the rules here decide on them.

use crate::gate::Verdict;
use crate::rules::{
    ADMIN_SCOPE_NEEDS_ADMIN, APPROVER_NEEDS_WRITE, CHANGE_NEEDS_WRITE, DEPLOY_LOG_READER, DEPLOY_PROJECT_MEMBER,
    DEPLOY_TOKEN_SCOPE,
};
use crate::{Decision, GroupName, ProjectName, Reason, Role, Rule, Scope, Scopes, UserName};

/// What someone does to a change that needs write access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeWrite {
    /// Opens a change.
    Open,
    /// Closes or reopens a change.
    CloseOrReopen,
    /// Approves or requests changes.
    Review,
    /// Merges a change.
    Merge,
    /// Pushes to the project's repository.
    Push,
}

impl ChangeWrite {
    fn rule(self) -> Rule {
        match self {
            ChangeWrite::Review => APPROVER_NEEDS_WRITE,
            ChangeWrite::Open | ChangeWrite::CloseOrReopen | ChangeWrite::Merge | ChangeWrite::Push => {
                CHANGE_NEEDS_WRITE
            }
        }
    }

    fn words(self) -> &'static str {
        match self {
            ChangeWrite::Open => "open changes",
            ChangeWrite::CloseOrReopen => "close or reopen changes",
            ChangeWrite::Review => "approve or request changes",
            ChangeWrite::Merge => "merge changes",
            ChangeWrite::Push => "push",
        }
    }
}

/// Writing to a change needs a role with write access in its project and
/// a token with the write scope.
pub fn decide_change_write(
    who: &UserName,
    project: &ProjectName,
    role: Option<Role>,
    scopes: Scopes,
    action: ChangeWrite,
) -> Decision {
    let mut decision = Decision::allow();
    decision.require(role.is_some_and(Role::can_write) && scopes.contains(Scope::Write), || {
        Reason::new(action.rule(), format!("{who} may not {} in {project}", action.words()))
            .satisfy("a project member with write access and a token with the write scope")
    });
    decision
}

/// Approving or requesting changes needs write access (see
/// [`decide_change_write`]); any other review needs only a token with the
/// write scope.
pub fn decide_review(
    who: &UserName,
    project: &ProjectName,
    role: Option<Role>,
    scopes: Scopes,
    verdict: Verdict,
) -> Decision {
    if verdict == Verdict::Approve || verdict == Verdict::RequestChanges {
        return decide_change_write(who, project, role, scopes, ChangeWrite::Review);
    }
    let mut decision = Decision::allow();
    decision
        .require(scopes.contains(Scope::Write), || Reason::new(CHANGE_NEEDS_WRITE, "this token lacks the write scope"));
    decision
}

/// What someone does to a project's deployments as a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeployAction {
    /// Asks for a deployment.
    Request,
    /// Cancels a deployment.
    Cancel,
    /// Approves, rejects or signs off a deployment.
    Decide,
}

impl DeployAction {
    fn words(self) -> &'static str {
        match self {
            DeployAction::Request => "ask for deployments",
            DeployAction::Cancel => "cancel deployments",
            DeployAction::Decide => "decide on deployments",
        }
    }
}

/// Asking for or cancelling a deployment needs membership of the project,
/// in any role, and a token with the write scope.
pub fn decide_deploy_member(
    who: &UserName,
    project: &ProjectName,
    role: Option<Role>,
    scopes: Scopes,
    action: DeployAction,
) -> Decision {
    let mut decision = Decision::allow();
    decision.require(role.is_some() && scopes.contains(Scope::Write), || {
        Reason::new(
            DEPLOY_PROJECT_MEMBER,
            format!("{who} is not a member of {project} with a token that may write, so cannot {}", action.words()),
        )
        .satisfy("a project member acts, with a token that has the write scope")
    });
    decision
}

/// A decision on a deployment (approval, rejection, sign-off) needs a
/// token with the write scope.
pub fn decide_deploy_token(scopes: Scopes) -> Decision {
    let mut decision = Decision::allow();
    decision.require(scopes.contains(Scope::Write), || {
        Reason::new(DEPLOY_TOKEN_SCOPE, "this token may only read").satisfy("use a token with the write scope")
    });
    decision
}

/// An environment's deploy logs are read by auditors, and by whoever is a
/// member of every group that `memberships` lists (with whether the reader
/// is in it); the first group they are not in is named.
pub fn decide_log_reader(is_auditor: bool, environment: &str, memberships: &[(&GroupName, bool)]) -> Decision {
    let mut decision = Decision::allow();
    if is_auditor {
        return decision;
    }
    if let Some((group, _)) = memberships.iter().find(|(_, member)| !member) {
        decision.refuse(
            Reason::new(
                DEPLOY_LOG_READER,
                format!("the deploy logs of {environment} are read only by members of {group} and auditors"),
            )
            .satisfy(format!("a member of {group} reads it")),
        );
    }
    decision
}

/// A token with the admin scope is made only for an admin.
pub fn decide_token_scopes(who: &UserName, scopes: Scopes, is_admin: bool) -> Decision {
    let mut decision = Decision::allow();
    decision.require(!scopes.contains(Scope::Admin) || is_admin, || {
        Reason::new(ADMIN_SCOPE_NEEDS_ADMIN, format!("{who} is not an admin")).satisfy("ask for read or write scopes")
    });
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names_for_tests::user;

    fn project() -> ProjectName {
        ProjectName::parse("shop").unwrap()
    }

    fn write() -> Scopes {
        Scopes::of(&[Scope::Write])
    }

    fn read() -> Scopes {
        Scopes::of(&[Scope::Read])
    }

    #[test]
    fn a_writer_with_a_writing_token_may_merge() {
        let decision = decide_change_write(&user("alice"), &project(), Some(Role::Write), write(), ChangeWrite::Merge);
        assert!(decision.allowed);
        let decision =
            decide_change_write(&user("alice"), &project(), Some(Role::Maintain), write(), ChangeWrite::Open);
        assert!(decision.allowed);
    }

    #[test]
    fn a_reader_or_a_reading_token_may_not_push() {
        let reader = decide_change_write(&user("bob"), &project(), Some(Role::Read), write(), ChangeWrite::Push);
        assert_eq!(reader.reasons[0].message, "bob may not push in shop");
        let token = decide_change_write(&user("bob"), &project(), Some(Role::Write), read(), ChangeWrite::Push);
        assert!(!token.allowed);
        assert!(decide_change_write(&user("bob"), &project(), Some(Role::Write), write(), ChangeWrite::Push).allowed);
    }

    #[test]
    fn a_reader_may_not_open_a_change() {
        let decision = decide_change_write(&user("alice"), &project(), Some(Role::Read), write(), ChangeWrite::Open);
        assert_eq!(decision.reasons.len(), 1);
        let reason = &decision.reasons[0];
        assert_eq!(reason.rule, CHANGE_NEEDS_WRITE.name());
        assert_eq!(reason.message, "alice may not open changes in shop");
        assert_eq!(
            reason.satisfy.as_deref(),
            Some("a project member with write access and a token with the write scope")
        );
    }

    #[test]
    fn a_writer_with_a_reading_token_may_not_close_a_change() {
        let decision =
            decide_change_write(&user("alice"), &project(), Some(Role::Write), read(), ChangeWrite::CloseOrReopen);
        assert_eq!(decision.reasons[0].message, "alice may not close or reopen changes in shop");
    }

    #[test]
    fn a_non_member_may_not_approve() {
        let decision = decide_review(&user("bob"), &project(), None, write(), Verdict::Approve);
        assert_eq!(decision.reasons[0].rule, APPROVER_NEEDS_WRITE.name());
        assert_eq!(decision.reasons[0].message, "bob may not approve or request changes in shop");
        let decision = decide_review(&user("bob"), &project(), Some(Role::Read), write(), Verdict::RequestChanges);
        assert_eq!(decision.reasons[0].rule, APPROVER_NEEDS_WRITE.name());
    }

    #[test]
    fn anyone_with_a_writing_token_may_comment_but_not_with_a_reading_one() {
        assert!(decide_review(&user("bob"), &project(), None, write(), Verdict::Comment).allowed);
        let decision = decide_review(&user("bob"), &project(), Some(Role::Write), read(), Verdict::Withdraw);
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, CHANGE_NEEDS_WRITE.name());
        assert_eq!(decision.reasons[0].message, "this token lacks the write scope");
        assert_eq!(decision.reasons[0].satisfy, None);
    }

    #[test]
    fn any_member_with_a_writing_token_may_ask_for_a_deployment() {
        let decision =
            decide_deploy_member(&user("carol"), &project(), Some(Role::Read), write(), DeployAction::Request);
        assert!(decision.allowed);
    }

    #[test]
    fn a_non_member_may_not_cancel_a_deployment() {
        let decision = decide_deploy_member(&user("carol"), &project(), None, write(), DeployAction::Cancel);
        assert_eq!(decision.reasons[0].rule, DEPLOY_PROJECT_MEMBER.name());
        assert_eq!(
            decision.reasons[0].message,
            "carol is not a member of shop with a token that may write, so cannot cancel deployments"
        );
        let decision =
            decide_deploy_member(&user("carol"), &project(), Some(Role::Write), read(), DeployAction::Request);
        assert!(!decision.allowed);
    }

    #[test]
    fn a_reading_token_takes_no_deployment_decision() {
        assert!(decide_deploy_token(write()).allowed);
        let decision = decide_deploy_token(read());
        assert_eq!(decision.reasons[0].rule, DEPLOY_TOKEN_SCOPE.name());
        assert_eq!(decision.reasons[0].satisfy.as_deref(), Some("use a token with the write scope"));
    }

    #[test]
    fn a_deploy_log_is_read_by_members_of_every_log_reader_group_and_by_auditors() {
        let (ops, sec) = (GroupName::parse("ops").unwrap(), GroupName::parse("security").unwrap());
        assert!(decide_log_reader(false, "production", &[(&ops, true), (&sec, true)]).allowed);
        assert!(decide_log_reader(true, "production", &[(&ops, false), (&sec, false)]).allowed);
        assert!(decide_log_reader(false, "production", &[]).allowed);
        let decision = decide_log_reader(false, "production", &[(&ops, true), (&sec, false)]);
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, DEPLOY_LOG_READER.name());
        assert_eq!(
            decision.reasons[0].message,
            "the deploy logs of production are read only by members of security and auditors"
        );
        assert_eq!(decision.reasons[0].satisfy.as_deref(), Some("a member of security reads it"));
    }

    #[test]
    fn only_an_admin_gets_a_token_with_the_admin_scope() {
        let admin = Scopes::of(&[Scope::Admin]);
        assert!(decide_token_scopes(&user("root"), admin, true).allowed);
        assert!(decide_token_scopes(&user("bob"), write(), false).allowed);
        let decision = decide_token_scopes(&user("bob"), admin, false);
        assert_eq!(decision.reasons[0].rule, ADMIN_SCOPE_NEEDS_ADMIN.name());
        assert_eq!(decision.reasons[0].message, "bob is not an admin");
        assert_eq!(decision.reasons[0].satisfy.as_deref(), Some("ask for read or write scopes"));
    }
}
