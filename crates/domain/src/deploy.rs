//! The deployment gate: whether a build may be deployed to an environment,
//! rule by rule.
//!
//! The environment's gates (approvals, approvers, testers, soak) come from
//! the pipeline file on the **current mainline tip**, so tightening them
//! applies at once, to old builds too. A "release" is every change merged
//! between the commit live in the environment and the candidate: an author
//! of any of them may not approve or test it, the deployment's requester may
//! not approve it, and (unless the environment allows it) a reviewer of any
//! of them may not approve it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::gate::{Outcomes, RuleOutcome};
use crate::pipeline::Environment;
use crate::rules::DEPLOY_PROVENANCE;
use crate::{Decision, Reason, UserName};

/// Checks an environment secret's name: the variable a deploy script reads,
/// `A`-`Z`, digits and `_`, starting with a letter, at most 64 characters,
/// and none of the variables custody sets itself.
pub fn check_secret_name(name: &str) -> Result<(), crate::InvalidInput> {
    let invalid = |why: &str| Err(crate::InvalidInput::new("secret name", name, why));
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_uppercase())
        || !chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        || name.len() > 64
    {
        return invalid("use A-Z, digits and _, starting with a letter, at most 64 characters (like DB_PASSWORD)");
    }
    if name.starts_with("CUSTODY_") || ["PATH", "HOME", "TMPDIR", "LANG"].contains(&name) {
        return invalid("custody sets that variable itself; choose another name");
    }
    Ok(())
}

/// What the previous environment says about the candidate build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Previous {
    /// The environment named by `after`.
    pub environment: String,
    /// When the candidate build went live there, if it did.
    pub live_since_ms: Option<i64>,
}

/// A manual test sign-off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignOff {
    /// Who signed off.
    pub tester: UserName,
    /// Whether the tests passed.
    pub passed: bool,
}

/// Everything the deployment gate decides on, gathered atomically with the
/// decision.
#[derive(Clone, Debug)]
pub struct DeployFacts<'a> {
    /// The environment, as the mainline tip's pipeline file defines it.
    pub environment: &'a Environment,
    /// Whether the build succeeded with valid builder provenance, from a
    /// mainline commit custody merged.
    pub provenance: Result<(), String>,
    /// The previous environment, when the environment names one.
    pub previous: Option<Previous>,
    /// Authors of every change in the release.
    pub authors: &'a BTreeSet<UserName>,
    /// Approving reviewers of every change in the release.
    pub reviewers: &'a BTreeSet<UserName>,
    /// Who asked for the deployment; `None` for an automatic promotion.
    pub requester: Option<&'a UserName>,
    /// Who approved, in order (each person once).
    pub approvals: &'a [UserName],
    /// Who rejected.
    pub rejections: &'a [UserName],
    /// Members of the environment's approvers group.
    pub approvers: &'a BTreeSet<UserName>,
    /// Members of the environment's testers group.
    pub testers: &'a BTreeSet<UserName>,
    /// Test sign-offs, in order; a tester's last one counts.
    pub sign_offs: &'a [SignOff],
    /// Now.
    pub now_ms: i64,
    /// Whether the requester asked to skip soak and test sign-off.
    pub break_glass: bool,
}

/// The deployment gate, rule by rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeployReport {
    /// Whether every rule holds.
    pub open: bool,
    /// The approvals that count.
    pub approvers: Vec<String>,
    /// The passing sign-offs that count.
    pub testers: Vec<String>,
    /// Approvers allowed only because the environment lets reviewers approve.
    pub reviewers_allowed_by_policy: Vec<String>,
    /// Every rule.
    pub rules: Vec<RuleOutcome>,
}

impl DeployReport {
    /// The gate as a decision: its failing rules are the reasons.
    pub fn decision(&self) -> Decision {
        crate::gate::decision_of(&self.rules)
    }
}

fn names<'a>(users: impl IntoIterator<Item = &'a UserName>) -> String {
    let list: Vec<&str> = users.into_iter().map(UserName::as_str).collect();
    if list.is_empty() {
        "nobody".to_owned()
    } else {
        list.join(", ")
    }
}

fn humanize(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Why one person's approval does not count, if it does not.
pub fn approval_refusal(facts: &DeployFacts<'_>, who: &UserName) -> Option<Reason> {
    let env = &facts.environment.name;
    if facts.authors.contains(who) {
        return Some(
            Reason::new(
                crate::Rule("deploy.approver_not_author"),
                format!("{who} is an author of a change in this release, so cannot approve its deployment to {env}"),
            )
            .satisfy("a member of the approvers group who wrote none of the release's changes approves"),
        );
    }
    if facts.requester == Some(who) {
        return Some(
            Reason::new(
                crate::Rule("deploy.approver_not_requester"),
                format!("{who} requested this deployment, so cannot approve it"),
            )
            .satisfy("another member of the approvers group approves"),
        );
    }
    if facts.reviewers.contains(who) && !facts.environment.reviewers_may_approve {
        return Some(
            Reason::new(
                crate::Rule("deploy.approver_not_reviewer"),
                format!("{who} reviewed a change in this release, and {env} does not let reviewers approve"),
            )
            .satisfy("an approver who reviewed none of the release's changes approves (or the environment sets reviewers_may_approve = true)"),
        );
    }
    match &facts.environment.approvers {
        Some(group) if !facts.approvers.contains(who) => Some(
            Reason::new(
                crate::Rule("deploy.approver_in_group"),
                format!("{who} is not a member of {group}, the approvers of {env}"),
            )
            .satisfy(format!("a member of {group} approves")),
        ),
        None => Some(
            Reason::new(crate::Rule("deploy.approver_in_group"), format!("{env} names no approvers group"))
                .satisfy("deployments to it need no approval"),
        ),
        _ => None,
    }
}

/// Why one person's test sign-off does not count, if it does not.
pub fn sign_off_refusal(facts: &DeployFacts<'_>, who: &UserName) -> Option<Reason> {
    let env = &facts.environment.name;
    if facts.authors.contains(who) {
        return Some(
            Reason::new(
                crate::Rule("deploy.tester_not_author"),
                format!("{who} is an author of a change in this release, so cannot sign off its tests for {env}"),
            )
            .satisfy("a member of the testers group who wrote none of the release's changes signs off"),
        );
    }
    match &facts.environment.testers {
        Some(group) if !facts.testers.contains(who) => Some(
            Reason::new(
                crate::Rule("deploy.tester_in_group"),
                format!("{who} is not a member of {group}, the testers of {env}"),
            )
            .satisfy(format!("a member of {group} signs off")),
        ),
        None => Some(
            Reason::new(crate::Rule("deploy.tester_in_group"), format!("{env} needs no manual test sign-off"))
                .satisfy("nothing: deployments to it are not tested by hand"),
        ),
        _ => None,
    }
}

/// Evaluates every rule of the deployment gate.
pub fn evaluate(facts: &DeployFacts<'_>) -> DeployReport {
    let mut rules = Outcomes(Vec::new());
    provenance_and_previous(facts, &mut rules);
    not_rejected(facts, &mut rules);
    let (counted, by_policy) = approvals(facts, &mut rules);
    let passing = sign_offs(facts, &mut rules);
    let rules = rules.0;
    let open = rules.iter().all(|r| r.passed);
    DeployReport {
        open,
        approvers: counted.iter().map(ToString::to_string).collect(),
        testers: passing.iter().map(ToString::to_string).collect(),
        reviewers_allowed_by_policy: by_policy,
        rules,
    }
}

/// Valid provenance; and where the environment follows another, the build
/// live there, for the soak.
fn provenance_and_previous(facts: &DeployFacts<'_>, rules: &mut Outcomes) {
    let env = facts.environment;
    rules.add(
        "deploy.provenance",
        facts.provenance.is_ok(),
        match &facts.provenance {
            Ok(()) => "the build has valid builder provenance, from a mainline commit custody merged".into(),
            Err(why) => why.clone(),
        },
        Some("deploy a successful build of a merged mainline commit".into()),
    );

    if let Some(previous) = &facts.previous {
        rules.add(
            "deploy.previous_environment",
            previous.live_since_ms.is_some(),
            match previous.live_since_ms {
                Some(_) => format!("the build was deployed successfully to {}", previous.environment),
                None => format!("the build has not been deployed successfully to {}", previous.environment),
            },
            Some(format!("deploy it to {} first", previous.environment)),
        );
        if let Some(soak) = env.soak {
            let soak_ms = soak.as_millis() as i64;
            let live = previous.live_since_ms.map(|since| facts.now_ms - since).unwrap_or(0);
            let passed = live >= soak_ms || facts.break_glass;
            rules.add(
                "deploy.soak",
                passed,
                if facts.break_glass && live < soak_ms {
                    format!("soak of {} in {} skipped by break-glass", humanize(soak_ms), previous.environment)
                } else {
                    format!("live in {} for {} of the {} soak", previous.environment, humanize(live), humanize(soak_ms))
                },
                Some(format!("wait {} more", humanize(soak_ms - live))),
            );
        }
    }
}

/// Nobody rejected the deployment.
fn not_rejected(facts: &DeployFacts<'_>, rules: &mut Outcomes) {
    let rejected: BTreeSet<&UserName> = facts.rejections.iter().collect();
    rules.add(
        "deploy.not_rejected",
        rejected.is_empty(),
        if rejected.is_empty() {
            "nobody rejected it".into()
        } else {
            format!("rejected by {}", names(rejected.iter().copied()))
        },
        Some("request a new deployment once the reason for the rejection is dealt with".into()),
    );
}

/// Independent approvals: who counts, and the reviewers who count only
/// because the environment allows them.
fn approvals(facts: &DeployFacts<'_>, rules: &mut Outcomes) -> (Vec<UserName>, Vec<String>) {
    let env = facts.environment;
    let mut counted: Vec<UserName> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut by_policy: Vec<String> = Vec::new();
    for who in facts.approvals {
        if counted.contains(who) {
            continue;
        }
        match approval_refusal(facts, who) {
            None => {
                if facts.reviewers.contains(who) {
                    by_policy.push(who.to_string());
                }
                counted.push(who.clone());
            }
            Some(reason) => refused.push(reason.message),
        }
    }
    // Break-glass never skips approvals, and always needs one besides the requester.
    let needed = if facts.break_glass { env.approvals.max(1) as usize } else { env.approvals as usize };
    if needed > 0 {
        let mut message = format!("{} of {needed} independent approvals ({})", counted.len(), names(&counted));
        if !refused.is_empty() {
            message.push_str(&format!("; not counted: {}", refused.join("; ")));
        }
        let group = env.approvers.as_ref().map(|g| g.to_string()).unwrap_or_else(|| "an approvers group".into());
        rules.add(
            "deploy.approvals",
            counted.len() >= needed,
            message,
            Some(format!(
                "{} more approval(s) by members of {group} who wrote and reviewed none of the release's changes and did not request it",
                needed.saturating_sub(counted.len())
            )),
        );
    }
    (counted, by_policy)
}

/// The manual tests, where the environment needs them: who signed them off
/// as passed.
fn sign_offs(facts: &DeployFacts<'_>, rules: &mut Outcomes) -> Vec<UserName> {
    let Some(group) = &facts.environment.testers else { return Vec::new() };
    let mut last: Vec<(&UserName, bool)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for sign_off in facts.sign_offs {
        if let Some(reason) = sign_off_refusal(facts, &sign_off.tester) {
            refused.push(reason.message);
            continue;
        }
        last.retain(|(who, _)| *who != &sign_off.tester);
        last.push((&sign_off.tester, sign_off.passed));
    }
    let failed: Vec<&UserName> = last.iter().filter(|(_, p)| !p).map(|(w, _)| *w).collect();
    let passing: Vec<UserName> = last.iter().filter(|(_, p)| *p).map(|(w, _)| (*w).clone()).collect();
    let passed = (failed.is_empty() && !passing.is_empty()) || (facts.break_glass && failed.is_empty());
    let mut message = if !failed.is_empty() {
        format!("manual tests failed, signed off by {}", names(failed.iter().copied()))
    } else if !passing.is_empty() {
        format!("manual tests passed, signed off by {}", names(&passing))
    } else if facts.break_glass {
        "manual test sign-off skipped by break-glass".to_owned()
    } else {
        "no manual test sign-off yet".to_owned()
    };
    if !refused.is_empty() {
        message.push_str(&format!("; not counted: {}", refused.join("; ")));
    }
    rules.add(
        "deploy.test_sign_off",
        passed,
        message,
        Some(format!("a member of {group} who wrote none of the release's changes signs off the tests as passed")),
    );
    passing
}

/// The deployment gate when more than one definition of the environment
/// governs it (the pipeline of the commit live there, the release's, the
/// mainline tip's): every one must hold. The first is the primary; each
/// other adds the rules it decides differently, saying where it comes from.
pub fn evaluate_all(gates: &[(&str, DeployFacts<'_>)]) -> DeployReport {
    let mut reports = gates.iter().map(|(source, facts)| (*source, evaluate(facts)));
    let Some((_, mut combined)) = reports.next() else {
        return DeployReport {
            open: false,
            approvers: Vec::new(),
            testers: Vec::new(),
            reviewers_allowed_by_policy: Vec::new(),
            rules: vec![RuleOutcome {
                rule: "deploy.environment".into(),
                passed: false,
                message: "no pipeline file defines this environment".into(),
                satisfy: Some("define the environment in the pipeline file through a change".into()),
            }],
        };
    };
    for (source, report) in reports {
        combined.open &= report.open;
        for rule in report.rules {
            if !combined.rules.contains(&rule) {
                combined.rules.push(RuleOutcome { message: format!("{} (as {source} has it)", rule.message), ..rule });
            }
        }
        for (into, from) in [
            (&mut combined.approvers, report.approvers),
            (&mut combined.testers, report.testers),
            (&mut combined.reviewers_allowed_by_policy, report.reviewers_allowed_by_policy),
        ] {
            for who in from {
                if !into.contains(&who) {
                    into.push(who);
                }
            }
        }
    }
    combined
}

/// Why a decision by `who` would count under none of `gates`: `None` when
/// it counts under at least one of them (where it does not, the combined
/// gate says so).
pub fn refusal_under_all(
    gates: &[(&str, DeployFacts<'_>)],
    who: &UserName,
    refusal: fn(&DeployFacts<'_>, &UserName) -> Option<Reason>,
) -> Option<Reason> {
    let mut first = None;
    for (_, facts) in gates {
        match refusal(facts, who) {
            None => return None,
            Some(reason) => {
                first.get_or_insert(reason);
            }
        }
    }
    first
}

/// A decision by `who` under `gates` (an approval or rejection with
/// [`approval_refusal`], a sign-off with [`sign_off_refusal`]) is refused
/// when it would count under none of them, for the first gate's reason.
pub fn decide_under_all(
    gates: &[(&str, DeployFacts<'_>)],
    who: &UserName,
    refusal: fn(&DeployFacts<'_>, &UserName) -> Option<Reason>,
) -> Decision {
    let mut decision = Decision::allow();
    if let Some(reason) = refusal_under_all(gates, who, refusal) {
        decision.refuse(reason);
    }
    decision
}

/// A build that can never deploy is refused when the deployment is asked
/// for, not left waiting: the gate's provenance rule failed in `report`.
pub fn decide_provenance(report: &DeployReport) -> Decision {
    let mut decision = Decision::allow();
    if let Some(rule) = report.rules.iter().find(|r| r.rule == DEPLOY_PROVENANCE.name() && !r.passed) {
        decision.refuse(
            Reason::new(DEPLOY_PROVENANCE, rule.message.clone()).satisfy(rule.satisfy.clone().unwrap_or_default()),
        );
    }
    decision
}

#[cfg(test)]
mod tests {
    use crate::names_for_tests::{set, user};
    use std::time::Duration;

    use super::*;
    use crate::GroupName;

    fn production() -> Environment {
        Environment {
            name: "production".into(),
            deploy: Some("scripts/deploy.sh".into()),
            after: Some("staging".into()),
            approvals: 1,
            approvers: Some(GroupName::parse("release-managers").unwrap()),
            testers: Some(GroupName::parse("qa").unwrap()),
            soak: Some(Duration::from_secs(3600)),
            reviewers_may_approve: false,
            log_readers: None,
        }
    }

    struct World {
        env: Environment,
        authors: BTreeSet<UserName>,
        reviewers: BTreeSet<UserName>,
        approvers: BTreeSet<UserName>,
        testers: BTreeSet<UserName>,
        requester: UserName,
        approvals: Vec<UserName>,
        rejections: Vec<UserName>,
        sign_offs: Vec<SignOff>,
        live_since: Option<i64>,
        break_glass: bool,
    }

    const HOUR: i64 = 3_600_000;

    fn world() -> World {
        World {
            env: production(),
            authors: set(&["alice"]),
            reviewers: set(&["bob"]),
            approvers: set(&["carol", "bob", "alice", "erin"]),
            testers: set(&["dave", "alice"]),
            requester: user("erin"),
            approvals: vec![user("carol")],
            rejections: vec![],
            sign_offs: vec![SignOff { tester: user("dave"), passed: true }],
            live_since: Some(0),
            break_glass: false,
        }
    }

    fn report(w: &World) -> DeployReport {
        evaluate(&facts(w))
    }

    fn facts(w: &World) -> DeployFacts<'_> {
        DeployFacts {
            environment: &w.env,
            provenance: Ok(()),
            previous: w.env.after.clone().map(|environment| Previous { environment, live_since_ms: w.live_since }),
            authors: &w.authors,
            reviewers: &w.reviewers,
            requester: Some(&w.requester),
            approvals: &w.approvals,
            rejections: &w.rejections,
            approvers: &w.approvers,
            testers: &w.testers,
            sign_offs: &w.sign_offs,
            now_ms: 2 * HOUR,
            break_glass: w.break_glass,
        }
    }

    fn failing(report: &DeployReport) -> Vec<&str> {
        report.rules.iter().filter(|r| !r.passed).map(|r| r.rule.as_str()).collect()
    }

    #[test]
    fn carols_approval_and_daves_sign_off_open_production() {
        let r = report(&world());
        assert!(r.open, "{r:#?}");
        assert_eq!(r.approvers, ["carol"]);
        assert_eq!(r.testers, ["dave"]);
    }

    #[test]
    fn alice_cannot_approve_or_test_her_own_release() {
        let mut w = world();
        w.approvals = vec![user("alice")];
        w.sign_offs = vec![SignOff { tester: user("alice"), passed: true }];
        let r = report(&w);
        assert_eq!(failing(&r), ["deploy.approvals", "deploy.test_sign_off"]);
        let approvals = r.rules.iter().find(|x| x.rule == "deploy.approvals").unwrap();
        assert!(approvals.message.contains("alice is an author"), "{}", approvals.message);
    }

    #[test]
    fn the_requester_and_reviewers_cannot_approve_unless_the_environment_allows_reviewers() {
        let mut w = world();
        w.approvals = vec![user("erin"), user("bob")];
        let r = report(&w);
        assert_eq!(failing(&r), ["deploy.approvals"]);
        w.env.reviewers_may_approve = true;
        let r = report(&w);
        assert!(r.open, "{r:#?}");
        assert_eq!(r.reviewers_allowed_by_policy, ["bob"]);
    }

    #[test]
    fn someone_outside_the_approvers_group_does_not_count() {
        let mut w = world();
        w.approvals = vec![user("mallory")];
        assert_eq!(failing(&report(&w)), ["deploy.approvals"]);
    }

    #[test]
    fn soak_and_the_previous_environment_must_hold() {
        let mut w = world();
        w.live_since = Some(2 * HOUR - 60_000);
        let r = report(&w);
        assert_eq!(failing(&r), ["deploy.soak"]);
        assert_eq!(r.rules.iter().find(|x| x.rule == "deploy.soak").unwrap().satisfy.as_deref(), Some("wait 59m more"));
        w.live_since = None;
        assert_eq!(failing(&report(&w)), ["deploy.previous_environment", "deploy.soak"]);
    }

    #[test]
    fn break_glass_skips_soak_and_sign_off_but_never_approvals_or_the_previous_environment() {
        let mut w = world();
        w.break_glass = true;
        w.live_since = Some(2 * HOUR - 1);
        w.sign_offs = vec![];
        w.approvals = vec![];
        assert_eq!(failing(&report(&w)), ["deploy.approvals"]);
        w.approvals = vec![user("carol")];
        assert!(report(&w).open);
        w.live_since = None;
        assert_eq!(failing(&report(&w)), ["deploy.previous_environment"]);
        // Even where no approvals are configured, break-glass needs one.
        let mut w = world();
        w.break_glass = true;
        w.env.approvals = 0;
        w.approvals = vec![user("erin")];
        assert_eq!(failing(&report(&w)), ["deploy.approvals"]);
    }

    #[test]
    fn a_failed_sign_off_or_a_rejection_closes_the_gate() {
        let mut w = world();
        w.sign_offs.push(SignOff { tester: user("dave"), passed: false });
        assert_eq!(failing(&report(&w)), ["deploy.test_sign_off"]);
        let mut w = world();
        w.rejections = vec![user("carol")];
        assert_eq!(failing(&report(&w)), ["deploy.not_rejected"]);
    }

    #[test]
    fn a_build_without_valid_provenance_never_deploys() {
        let w = world();
        let r = evaluate(&DeployFacts {
            environment: &w.env,
            provenance: Err("build 3 failed, so it has no provenance".into()),
            previous: Some(Previous { environment: "staging".into(), live_since_ms: Some(0) }),
            authors: &w.authors,
            reviewers: &w.reviewers,
            requester: None,
            approvals: &w.approvals,
            rejections: &[],
            approvers: &w.approvers,
            testers: &w.testers,
            sign_offs: &w.sign_offs,
            now_ms: 2 * HOUR,
            break_glass: true,
        });
        assert_eq!(failing(&r), ["deploy.provenance"]);
    }

    #[test]
    fn an_author_of_the_release_may_not_approve_it_but_an_approver_may() {
        let w = world();
        let gates = [("mainline", facts(&w))];
        assert!(decide_under_all(&gates, &user("carol"), approval_refusal).allowed);
        let decision = decide_under_all(&gates, &user("alice"), approval_refusal);
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, "deploy.approver_not_author");
    }

    #[test]
    fn a_sign_off_counts_when_it_counts_under_any_gate() {
        let w = world();
        let mut other = world();
        other.testers = set(&["mallory"]);
        let gates = [("mainline", facts(&w)), ("deployed", facts(&other))];
        assert!(decide_under_all(&gates, &user("dave"), sign_off_refusal).allowed);
        assert!(decide_under_all(&gates, &user("mallory"), sign_off_refusal).allowed);
        let decision = decide_under_all(&gates, &user("erin"), sign_off_refusal);
        assert_eq!(decision.reasons[0].message, "erin is not a member of qa, the testers of production");
    }

    #[test]
    fn a_build_without_valid_provenance_is_refused_when_asked_for() {
        assert!(decide_provenance(&report(&world())).allowed);
        let w = world();
        let mut facts = facts(&w);
        facts.provenance = Err("build 3 failed, so it has no provenance".into());
        let decision = decide_provenance(&evaluate(&facts));
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, DEPLOY_PROVENANCE.name());
        assert_eq!(decision.reasons[0].message, "build 3 failed, so it has no provenance");
    }
}
