//! Grants: changes to who may do what, which take a second admin.
//!
//! Creating a user, adding anyone to a group (`admins` included), and
//! removing or disabling an admin or a member of any group are grants. A
//! grant asked for by one admin takes effect only when another admin, who
//! did not ask for it and is not named by it, approves it.
//!
//! An instance starts with a single admin. Until it has ever had a second
//! one (the bootstrap era), that admin's grants take effect at once and are
//! marked as bootstrap grants, so reports can list them. The era ends for
//! good when a second admin exists.

use serde::{Deserialize, Serialize};

use crate::rules::{AWAITING_APPROVAL, GRANT_DUPLICATE};
use crate::{Decision, Email, GroupName, ProjectName, Reason, Role, Rule, UserName};

/// Only admins may ask for or decide grants.
pub const ADMIN_REQUIRED: Rule = Rule("admin.required");
/// The admin who asked for a grant cannot approve it.
pub const REQUESTER_CANNOT_APPROVE: Rule = Rule("grant.requester_cannot_approve");
/// Nobody approves a grant that names them.
pub const NAMED_CANNOT_APPROVE: Rule = Rule("grant.named_cannot_approve");
/// Only pending grants can be decided.
pub const NOT_PENDING: Rule = Rule("grant.not_pending");
/// The instance keeps at least one admin.
pub const LAST_ADMIN: Rule = Rule("admin.last_admin");

/// What a grant does once approved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GrantAction {
    /// A new person, who redeems an invite code for their own token.
    CreateUser {
        /// The new user's name.
        user: UserName,
        /// Their first registered e-mail address.
        email: Email,
        /// How they are shown.
        display_name: String,
    },
    /// Adds a user to a group; to `admins`, this makes them an admin.
    AddGroupMember {
        /// The group.
        group: GroupName,
        /// The user added.
        user: UserName,
    },
    /// Removes a user from a group.
    RemoveGroupMember {
        /// The group.
        group: GroupName,
        /// The user removed.
        user: UserName,
    },
    /// Disables a user and revokes their tokens.
    DisableUser {
        /// The user disabled.
        user: UserName,
    },
    /// Enables a disabled user again: they sign in with their password, or
    /// redeem the invite code the request made.
    EnableUser {
        /// The user enabled.
        user: UserName,
    },
    /// Makes a user a member of a project, or changes their role.
    AddProjectMember {
        /// The project.
        project: ProjectName,
        /// The user.
        user: UserName,
        /// What they may do.
        role: Role,
    },
    /// Removes a user from a project.
    RemoveProjectMember {
        /// The project.
        project: ProjectName,
        /// The user.
        user: UserName,
    },
    /// Protects one more branch of a project.
    ProtectBranch {
        /// The project.
        project: ProjectName,
        /// The branch, such as `release`.
        branch: String,
    },
    /// Stops protecting a branch (never the default branch).
    UnprotectBranch {
        /// The project.
        project: ProjectName,
        /// The branch.
        branch: String,
    },
    /// Makes another branch the project's mainline (built, deployed, and
    /// always protected).
    SetDefaultBranch {
        /// The project.
        project: ProjectName,
        /// The new default branch.
        branch: String,
    },
    /// Takes an existing repository's history as a project's unreviewed
    /// baseline: exactly these refs, fetched when the grant was asked for.
    ImportRepository {
        /// The project.
        project: ProjectName,
        /// Where the history came from, on the server.
        source: String,
        /// The refs imported and the commits they point at.
        refs: Vec<(String, String)>,
    },
    /// Deletes a tag from a project's repository, which no push may do:
    /// the tag as it pointed when the grant was asked for.
    DeleteTag {
        /// The project.
        project: ProjectName,
        /// The tag's name, without `refs/tags/`.
        tag: String,
        /// The object it pointed at; a tag moved since is not deleted.
        target: String,
    },
    /// Makes a new version of an environment secret the one deployments
    /// get. The value itself is sealed and never part of the grant.
    SetSecret {
        /// The project.
        project: ProjectName,
        /// The environment.
        environment: String,
        /// The secret's name, the variable a deploy script reads.
        name: String,
        /// The version the grant makes current.
        version: i64,
    },
    /// Replaces a service key (`builder`, `gate` or `deployer`) with a new
    /// one, made when the grant is applied. The old key's validity ends
    /// then; what it signed before still verifies.
    RotateKey {
        /// The key's role.
        role: String,
    },
    /// Revokes a retired service key from a point in time on (when it was,
    /// or may have been, compromised): evidence it signed from then on no
    /// longer verifies, and says why.
    RevokeKey {
        /// The key's id (hex SHA-256 of its public key).
        key_id: String,
        /// From when it is not trusted.
        since: crate::Timestamp,
        /// Why.
        reason: String,
    },
    /// Registers a worker that shares nothing with the server: its name,
    /// the role its key signs as (`builder` or `deployer`), its public key
    /// and the SHA-256 of the credential it calls the API with. The
    /// credential itself never leaves the worker's host.
    RegisterWorker {
        /// The worker's name.
        name: String,
        /// `builder` or `deployer`.
        role: String,
        /// Its ed25519 public key, SubjectPublicKeyInfo PEM.
        public_key: String,
        /// Hex SHA-256 of its credential.
        credential_sha256: String,
    },
}

/// The roles whose keys rotate by a grant.
pub const ROTATING_ROLES: [&str; 4] = ["builder", "gate", "deployer", "ledger"];

/// The roles a worker's key may sign as.
pub const WORKER_ROLES: [&str; 2] = ["builder", "deployer"];

/// What is wrong with a worker's name and role, if anything: a name is 1
/// to 64 lowercase letters, digits and dashes, not starting with a dash;
/// the role is one of [`WORKER_ROLES`].
pub fn worker_problem(name: &str, role: &str) -> Option<String> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Some(format!(
            "worker name {name:?} must be 1 to 64 lowercase letters, digits and dashes, not starting with a dash"
        ));
    }
    if !WORKER_ROLES.contains(&role) {
        return Some(format!("a worker's key signs as a builder or a deployer, not as {role:?}"));
    }
    None
}

impl GrantAction {
    /// The person the grant is about, if any. They may never approve it.
    pub fn named_user(&self) -> Option<&UserName> {
        match self {
            GrantAction::CreateUser { user, .. }
            | GrantAction::AddGroupMember { user, .. }
            | GrantAction::RemoveGroupMember { user, .. }
            | GrantAction::DisableUser { user }
            | GrantAction::EnableUser { user }
            | GrantAction::AddProjectMember { user, .. }
            | GrantAction::RemoveProjectMember { user, .. } => Some(user),
            GrantAction::ProtectBranch { .. }
            | GrantAction::UnprotectBranch { .. }
            | GrantAction::SetDefaultBranch { .. }
            | GrantAction::ImportRepository { .. }
            | GrantAction::DeleteTag { .. }
            | GrantAction::SetSecret { .. }
            | GrantAction::RotateKey { .. }
            | GrantAction::RevokeKey { .. }
            | GrantAction::RegisterWorker { .. } => None,
        }
    }

    /// What the grant is about, as an audit subject (`user:bob`, `project:pay`).
    pub fn subject(&self) -> String {
        match self {
            GrantAction::ProtectBranch { project, .. }
            | GrantAction::UnprotectBranch { project, .. }
            | GrantAction::SetDefaultBranch { project, .. }
            | GrantAction::ImportRepository { project, .. }
            | GrantAction::DeleteTag { project, .. }
            | GrantAction::SetSecret { project, .. } => format!("project:{project}"),
            GrantAction::RotateKey { .. } | GrantAction::RevokeKey { .. } | GrantAction::RegisterWorker { .. } => {
                "keys".to_owned()
            }
            _ => self.named_user().map(|u| format!("user:{u}")).unwrap_or_default(),
        }
    }

    /// The stable name of the action, as used in audit events.
    pub fn action_name(&self) -> &'static str {
        match self {
            GrantAction::CreateUser { .. } => "user.create",
            GrantAction::AddGroupMember { .. } => "group.member.add",
            GrantAction::RemoveGroupMember { .. } => "group.member.remove",
            GrantAction::DisableUser { .. } => "user.disable",
            GrantAction::EnableUser { .. } => "user.enable",
            GrantAction::AddProjectMember { .. } => "project.member.add",
            GrantAction::RemoveProjectMember { .. } => "project.member.remove",
            GrantAction::ProtectBranch { .. } => "project.branch.protect",
            GrantAction::UnprotectBranch { .. } => "project.branch.unprotect",
            GrantAction::ImportRepository { .. } => "project.import",
            GrantAction::SetDefaultBranch { .. } => "project.default_branch",
            GrantAction::DeleteTag { .. } => "project.tag.delete",
            GrantAction::SetSecret { .. } => "secret.set",
            GrantAction::RotateKey { .. } => "key.rotate",
            GrantAction::RevokeKey { .. } => "key.revoke",
            GrantAction::RegisterWorker { .. } => "worker.register",
        }
    }

    /// A sentence describing the grant.
    pub fn describe(&self) -> String {
        match self {
            GrantAction::CreateUser { user, email, .. } => format!("create user {user} <{email}>"),
            GrantAction::AddGroupMember { group, user } => format!("add {user} to group {group}"),
            GrantAction::RemoveGroupMember { group, user } => format!("remove {user} from group {group}"),
            GrantAction::DisableUser { user } => format!("disable user {user}"),
            GrantAction::EnableUser { user } => format!("enable user {user} again"),
            GrantAction::AddProjectMember { project, user, role } => {
                format!("give {user} {} access to project {project}", role.as_str())
            }
            GrantAction::RemoveProjectMember { project, user } => format!("remove {user} from project {project}"),
            GrantAction::ProtectBranch { project, branch } => format!("protect branch {branch} of project {project}"),
            GrantAction::UnprotectBranch { project, branch } => {
                format!("stop protecting branch {branch} of project {project}")
            }
            GrantAction::SetDefaultBranch { project, branch } => {
                format!("make {branch} the default branch of project {project}")
            }
            GrantAction::DeleteTag { project, tag, target } => {
                format!("delete tag {tag} (at {}) of project {project}", crate::short_id(target))
            }
            GrantAction::SetSecret { project, environment, name, version } => {
                format!("make version {version} of secret {name} current for {environment} of project {project}")
            }
            GrantAction::RotateKey { role } => format!("replace the {role} key with a new one"),
            GrantAction::RevokeKey { key_id, since, reason } => {
                format!("revoke key {} from {since} on: {reason}", crate::short_id(key_id))
            }
            GrantAction::RegisterWorker { name, role, .. } => {
                format!("register worker {name}, whose own key signs as a {role}")
            }
            GrantAction::ImportRepository { project, source, refs } => {
                let shown: Vec<String> =
                    refs.iter().map(|(name, id)| format!("{name} at {}", crate::short_id(id))).collect();
                format!("import {source} into project {project} as unreviewed history ({})", shown.join(", "))
            }
        }
    }

    /// Whether this grant takes admin rights away from someone.
    pub fn removes_admin(&self, target_is_admin: bool) -> bool {
        match self {
            GrantAction::RemoveGroupMember { group, .. } => group.is_admins(),
            GrantAction::DisableUser { .. } => target_is_admin,
            _ => false,
        }
    }
}

/// Where a grant stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantStatus {
    /// Waiting for a second admin.
    Pending,
    /// Approved by a second admin and applied.
    Approved,
    /// Rejected by an admin; nothing was applied.
    Rejected,
    /// Applied at once during the bootstrap era; reports list it as a finding.
    Bootstrap,
}

impl GrantStatus {
    /// The status's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantStatus::Pending => "pending",
            GrantStatus::Approved => "approved",
            GrantStatus::Rejected => "rejected",
            GrantStatus::Bootstrap => "bootstrap",
        }
    }

    /// Reads a stored status.
    pub fn parse(value: &str) -> Option<GrantStatus> {
        [GrantStatus::Pending, GrantStatus::Approved, GrantStatus::Rejected, GrantStatus::Bootstrap]
            .into_iter()
            .find(|s| s.as_str() == value)
    }
}

/// Whether the instance has ever had a second admin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminEra {
    /// Never more than one admin so far: grants apply at once, marked.
    Bootstrap,
    /// A second admin has existed: every grant needs one, for good.
    Governed,
}

impl AdminEra {
    /// The era after a grant is applied: bootstrap ends when a second admin
    /// exists and never returns, whatever happens to the admins later.
    pub fn after(self, admins_now: usize) -> AdminEra {
        match self {
            AdminEra::Bootstrap if admins_now < 2 => AdminEra::Bootstrap,
            _ => AdminEra::Governed,
        }
    }
}

/// What a requested grant does straight away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Applied now, recorded as a bootstrap grant.
    ApplyAsBootstrap,
    /// Waits for a second admin.
    AwaitSecondAdmin,
}

/// The effect of an admin asking for a grant in the given era.
pub fn effect_of_request(era: AdminEra) -> Effect {
    match era {
        AdminEra::Bootstrap => Effect::ApplyAsBootstrap,
        AdminEra::Governed => Effect::AwaitSecondAdmin,
    }
}

/// Whether disabling a user is a grant: it is when they hold a duty (they
/// are an admin or a member of any group), since removing an approver can
/// be as much a shortcut as adding one.
pub fn disabling_needs_grant(member_of_any_group: bool) -> bool {
    member_of_any_group
}

/// What the rules need to know about someone acting as an admin.
#[derive(Clone, Debug)]
pub struct AdminActor<'a> {
    /// Who is acting.
    pub name: &'a UserName,
    /// Whether they are in the `admins` group now.
    pub is_admin: bool,
    /// Whether the token they use carries the `admin` scope.
    pub admin_scope: bool,
}

/// Checks that someone may act as an admin at all.
pub fn decide_admin(actor: &AdminActor<'_>) -> Decision {
    let mut decision = Decision::allow();
    decision.require(actor.is_admin, || {
        Reason::new(ADMIN_REQUIRED, format!("{} is not an admin", actor.name)).satisfy("ask an admin to do this")
    });
    decision.require(!actor.is_admin || actor.admin_scope, || {
        Reason::new(ADMIN_REQUIRED, "this token lacks the admin scope")
            .satisfy("use a token created with --scope admin")
    });
    decision
}

/// The facts about a grant that decide who may approve or reject it.
#[derive(Clone, Debug)]
pub struct GrantFacts<'a> {
    /// The grant's number.
    pub id: i64,
    /// What it does.
    pub action: &'a GrantAction,
    /// Who asked for it: a user's name, or custody itself for the first admin.
    pub requested_by: &'a str,
    /// Where it stands.
    pub status: GrantStatus,
}

/// Decides whether `approver` may approve the grant. Every failing rule is
/// reported.
pub fn decide_approval(grant: &GrantFacts<'_>, approver: &AdminActor<'_>) -> Decision {
    let mut decision = decide_admin(approver);
    decision.require(grant.status == GrantStatus::Pending, || {
        Reason::new(NOT_PENDING, format!("grant {} is already {}", grant.id, grant.status.as_str()))
    });
    decision.require(grant.requested_by != approver.name.as_str(), || {
        Reason::new(
            REQUESTER_CANNOT_APPROVE,
            format!("{} asked for grant {} and cannot also approve it", approver.name, grant.id),
        )
        .satisfy("another admin must approve it")
    });
    decision.require(grant.action.named_user() != Some(approver.name), || {
        Reason::new(
            NAMED_CANNOT_APPROVE,
            format!("grant {} names {} ({}), who cannot approve it", grant.id, approver.name, grant.action.describe()),
        )
        .satisfy("an admin the grant does not name must approve it")
    });
    decision
}

/// Decides whether `admin` may reject the grant. Any admin may reject, the
/// requester included (that withdraws it), but only while it is pending.
pub fn decide_rejection(grant: &GrantFacts<'_>, admin: &AdminActor<'_>) -> Decision {
    let mut decision = decide_admin(admin);
    decision.require(grant.status == GrantStatus::Pending, || {
        Reason::new(NOT_PENDING, format!("grant {} is already {}", grant.id, grant.status.as_str()))
    });
    decision
}

/// Refuses a grant that would leave the instance with no admin at all.
pub fn decide_keeps_an_admin(action: &GrantAction, target_is_admin: bool, admins_now: usize) -> Decision {
    let mut decision = Decision::allow();
    decision.require(!(action.removes_admin(target_is_admin) && admins_now <= 1), || {
        Reason::new(LAST_ADMIN, format!("{} would leave no admin", action.describe()))
            .satisfy("add another admin first")
    });
    decision
}

/// The same grant is asked for once: `pending` is a pending grant that
/// already asks for `action`, if there is one.
pub fn decide_not_duplicate(action: &GrantAction, pending: Option<i64>) -> Decision {
    let mut decision = Decision::allow();
    if let Some(id) = pending {
        decision.refuse(
            Reason::new(GRANT_DUPLICATE, format!("grant {id} already asks to {}", action.describe()))
                .satisfy(format!("approve or reject grant {id}")),
        );
    }
    decision
}

/// An invited user redeems their invite only once the grant creating them
/// is approved: `active` is whether it is, and `pending` the grant still
/// waiting, when one is found.
pub fn decide_redemption(user: &str, active: bool, pending: Option<i64>) -> Decision {
    let mut decision = Decision::allow();
    decision.require(active, || {
        Reason::new(AWAITING_APPROVAL, format!("the grant creating user {user} is still pending")).satisfy(
            match pending {
                Some(id) => format!("a second admin must approve grant {id}; then redeem the code again"),
                None => "a second admin must approve the grant; then redeem the code again".into(),
            },
        )
    });
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names_for_tests::user;

    fn admin(name: &UserName) -> AdminActor<'_> {
        AdminActor { name, is_admin: true, admin_scope: true }
    }

    #[test]
    fn the_admin_who_asked_cannot_approve() {
        let (root, bob) = (user("root"), user("bob"));
        let action = GrantAction::AddGroupMember { group: GroupName::parse("qa").unwrap(), user: bob };
        let grant = GrantFacts { id: 1, action: &action, requested_by: root.as_str(), status: GrantStatus::Pending };
        let decision = decide_approval(&grant, &admin(&root));
        assert!(!decision.allowed);
        assert_eq!(decision.reasons[0].rule, REQUESTER_CANNOT_APPROVE.0);
    }

    #[test]
    fn an_admin_cannot_approve_a_grant_naming_themselves() {
        let (root, carol) = (user("root"), user("carol"));
        let action = GrantAction::AddGroupMember { group: GroupName::admins(), user: carol.clone() };
        let grant = GrantFacts { id: 2, action: &action, requested_by: root.as_str(), status: GrantStatus::Pending };
        let decision = decide_approval(&grant, &admin(&carol));
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, NAMED_CANNOT_APPROVE.0);
    }

    #[test]
    fn a_second_admin_may_approve() {
        let (root, bob, carol) = (user("root"), user("bob"), user("carol"));
        let action = GrantAction::DisableUser { user: carol };
        let grant = GrantFacts { id: 3, action: &action, requested_by: root.as_str(), status: GrantStatus::Pending };
        assert!(decide_approval(&grant, &admin(&bob)).allowed);
    }

    #[test]
    fn every_failing_rule_is_reported_at_once() {
        let root = user("root");
        let action = GrantAction::DisableUser { user: root.clone() };
        let grant = GrantFacts { id: 4, action: &action, requested_by: root.as_str(), status: GrantStatus::Approved };
        let actor = AdminActor { name: &root, is_admin: true, admin_scope: false };
        let rules: Vec<_> = decide_approval(&grant, &actor).reasons.into_iter().map(|r| r.rule).collect();
        assert_eq!(rules, [ADMIN_REQUIRED.0, NOT_PENDING.0, REQUESTER_CANNOT_APPROVE.0, NAMED_CANNOT_APPROVE.0]);
    }

    #[test]
    fn bootstrap_ends_with_a_second_admin_and_never_returns() {
        assert_eq!(AdminEra::Bootstrap.after(1), AdminEra::Bootstrap);
        assert_eq!(AdminEra::Bootstrap.after(2), AdminEra::Governed);
        assert_eq!(AdminEra::Governed.after(1), AdminEra::Governed);
        assert_eq!(AdminEra::Governed.after(0), AdminEra::Governed);
    }

    #[test]
    fn the_last_admin_cannot_be_removed() {
        let action = GrantAction::RemoveGroupMember { group: GroupName::admins(), user: user("root") };
        assert!(!decide_keeps_an_admin(&action, true, 1).allowed);
        assert!(decide_keeps_an_admin(&action, true, 2).allowed);
    }

    #[test]
    fn a_grant_already_asked_for_is_not_asked_for_again() {
        let action = GrantAction::DisableUser { user: user("carol") };
        assert!(decide_not_duplicate(&action, None).allowed);
        let decision = decide_not_duplicate(&action, Some(7));
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, GRANT_DUPLICATE.name());
        assert_eq!(decision.reasons[0].message, format!("grant 7 already asks to {}", action.describe()));
        assert_eq!(decision.reasons[0].satisfy.as_deref(), Some("approve or reject grant 7"));
    }

    #[test]
    fn an_invite_is_redeemed_only_after_the_grant_creating_its_user_is_approved() {
        assert!(decide_redemption("bob", true, None).allowed);
        let decision = decide_redemption("bob", false, Some(3));
        assert_eq!(decision.reasons[0].rule, AWAITING_APPROVAL.name());
        assert_eq!(decision.reasons[0].message, "the grant creating user bob is still pending");
        assert_eq!(
            decision.reasons[0].satisfy.as_deref(),
            Some("a second admin must approve grant 3; then redeem the code again")
        );
        let decision = decide_redemption("bob", false, None);
        assert_eq!(
            decision.reasons[0].satisfy.as_deref(),
            Some("a second admin must approve the grant; then redeem the code again")
        );
    }
}
