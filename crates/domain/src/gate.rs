//! The merge gate: whether a change may enter its target branch, rule by
//! rule.
//!
//! Every rule is evaluated and reported, passed or failed, with what would
//! satisfy a failing one. The policy comes from the target branch (the
//! reviewed pipeline file), never from the change: a change cannot loosen
//! its own rules.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::pipeline::{Pipeline, PipelineError};
use crate::{Decision, GroupName, Reason, UserName};

/// A review's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Approves the head it was given on.
    Approve,
    /// Blocks merging until the same reviewer approves or withdraws it.
    RequestChanges,
    /// Says something; decides nothing.
    Comment,
    /// Withdraws the reviewer's earlier request for changes.
    Withdraw,
}

impl Verdict {
    /// The verdict's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::RequestChanges => "request_changes",
            Verdict::Comment => "comment",
            Verdict::Withdraw => "withdraw",
        }
    }

    /// Reads a stored verdict.
    pub fn parse(value: &str) -> Option<Verdict> {
        [Verdict::Approve, Verdict::RequestChanges, Verdict::Comment, Verdict::Withdraw]
            .into_iter()
            .find(|v| v.as_str() == value)
    }
}

/// A review as the gate sees it, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Review {
    /// Who reviewed.
    pub reviewer: UserName,
    /// What they said.
    pub verdict: Verdict,
    /// The head they said it on.
    pub head: String,
    /// Whether the change's head moved after it: an approval voided so never
    /// counts again, even when the head moves back to the one approved.
    pub voided: bool,
}

/// The state of the required check on the current head.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum CheckState {
    /// The policy names no check.
    NotRequired,
    /// Not run yet, or still running.
    Pending,
    /// Passed on this head.
    Passed,
    /// Failed on this head.
    Failed {
        /// Why, in a line.
        reason: String,
    },
}

/// Everything the gate decides on, gathered atomically with the decision.
#[derive(Clone, Debug)]
pub struct GateFacts<'a> {
    /// Whether the change is open.
    pub open: bool,
    /// The head being evaluated.
    pub head: &'a str,
    /// The policy of the target branch.
    pub policy: &'a Pipeline,
    /// The change's authors.
    pub authors: &'a BTreeSet<UserName>,
    /// Every review, in order.
    pub reviews: &'a [Review],
    /// Project members who may approve (write access or more).
    pub writers: &'a BTreeSet<UserName>,
    /// Members of the groups the policy names.
    pub groups: &'a BTreeMap<GroupName, BTreeSet<UserName>>,
    /// Paths the change touches, relative to the repository's root.
    pub changed_paths: &'a [String],
    /// The pipeline file as the change would leave it, when it changes it.
    pub proposed_pipeline: Option<&'a Result<Pipeline, PipelineError>>,
    /// The required check on this head.
    pub check: &'a CheckState,
    /// Whether the change merges cleanly into its target.
    pub mergeable: Result<(), String>,
    /// Commits of the change nobody is recorded as having brought in.
    pub unrecorded_commits: usize,
}

/// One rule's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuleOutcome {
    /// The rule's stable name.
    pub rule: String,
    /// Whether it holds.
    pub passed: bool,
    /// What it found.
    pub message: String,
    /// What would satisfy it, when it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub satisfy: Option<String>,
}

/// The gate, rule by rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GateReport {
    /// Whether every rule holds.
    pub open: bool,
    /// The head evaluated.
    pub head: String,
    /// The independent approvals that count, at this head.
    pub approvers: Vec<String>,
    /// Every rule.
    pub rules: Vec<RuleOutcome>,
}

impl GateReport {
    /// The gate as a decision: its failing rules are the reasons.
    pub fn decision(&self) -> Decision {
        decision_of(&self.rules)
    }
}

/// A decision whose reasons are the failing rules of a report.
pub fn decision_of(rules: &[RuleOutcome]) -> Decision {
    let mut decision = Decision::allow();
    for rule in rules.iter().filter(|r| !r.passed) {
        decision.refuse(Reason {
            rule: rule.rule.clone(),
            message: rule.message.clone(),
            satisfy: rule.satisfy.clone(),
        });
    }
    decision
}

/// Whether an approval by someone would count toward the merge gate: an
/// author's never does. `authorship` says why they are an author, when they
/// are one.
pub fn decide_own_approval(authorship: Option<&str>) -> Decision {
    let mut decision = Decision::allow();
    if let Some(why) = authorship {
        decision.refuse(Reason {
            rule: "gate.independent_approvals".into(),
            message: format!("your approval would not count: you are an author of this change ({why})"),
            satisfy: Some("approvals by project members with write access who are not authors".into()),
        });
    }
    decision
}

/// Where each reviewer stands: approving this head, and whether they still
/// request changes.
fn standing(reviews: &[Review], head: &str) -> (BTreeSet<UserName>, BTreeSet<UserName>) {
    let mut approving = BTreeSet::new();
    let mut requesting = BTreeSet::new();
    for review in reviews {
        match review.verdict {
            Verdict::Approve => {
                requesting.remove(&review.reviewer);
                if review.head == head && !review.voided {
                    approving.insert(review.reviewer.clone());
                } else {
                    approving.remove(&review.reviewer);
                }
            }
            Verdict::RequestChanges => {
                approving.remove(&review.reviewer);
                requesting.insert(review.reviewer.clone());
            }
            Verdict::Withdraw => {
                requesting.remove(&review.reviewer);
            }
            Verdict::Comment => {}
        }
    }
    (approving, requesting)
}

fn names(users: &BTreeSet<UserName>) -> String {
    if users.is_empty() {
        "nobody".to_owned()
    } else {
        users.iter().map(UserName::as_str).collect::<Vec<_>>().join(", ")
    }
}

/// The outcomes of a gate's rules, in the order they are evaluated.
pub(crate) struct Outcomes(pub(crate) Vec<RuleOutcome>);

impl Outcomes {
    /// One rule's outcome; what would satisfy it is kept only when it fails.
    pub(crate) fn add(&mut self, rule: &str, passed: bool, message: String, satisfy: Option<String>) {
        self.0.push(RuleOutcome {
            rule: rule.to_owned(),
            passed,
            message,
            satisfy: if passed { None } else { satisfy },
        });
    }
}

/// Evaluates every rule of the gate.
pub fn evaluate(facts: &GateFacts<'_>) -> GateReport {
    let mut rules = Outcomes(Vec::new());
    change_and_commits(facts, &mut rules);
    let (independent, requesting) = approvals(facts, &mut rules);
    path_rules(facts, &independent, &mut rules);
    pipeline_owners(facts, &independent, &mut rules);
    requests_checks_and_merge(facts, &requesting, &mut rules);
    let rules = rules.0;
    let open = rules.iter().all(|r| r.passed);
    GateReport {
        open,
        head: facts.head.to_owned(),
        approvers: independent.iter().map(|u| u.to_string()).collect(),
        rules,
    }
}

/// The change is open, and custody knows who pushed each of its commits.
fn change_and_commits(facts: &GateFacts<'_>, rules: &mut Outcomes) {
    rules.add(
        "gate.change_open",
        facts.open,
        if facts.open { "the change is open".into() } else { "the change is not open".into() },
        Some("reopen the change".into()),
    );

    // Authors come from the push log: a commit it does not know could hide
    // an author, so the gate fails closed.
    rules.add(
        "gate.commits_recorded",
        facts.unrecorded_commits == 0,
        if facts.unrecorded_commits == 0 {
            "every commit of the change has a recorded pusher".into()
        } else {
            format!(
                "{} commit(s) of the change were never recorded as pushed, so their authors are unknown",
                facts.unrecorded_commits
            )
        },
        Some("rewrite the commits (for example, rebase them) and push the new ones, so that custody records who brought them in".into()),
    );
}

/// Independent approvals of the head: the approvers who count, and those
/// who still request changes.
fn approvals(facts: &GateFacts<'_>, rules: &mut Outcomes) -> (BTreeSet<UserName>, BTreeSet<UserName>) {
    let (approving, requesting) = standing(facts.reviews, facts.head);
    let ignored_authors: BTreeSet<UserName> = approving.intersection(facts.authors).cloned().collect();
    let ignored_readers: BTreeSet<UserName> =
        approving.iter().filter(|u| !facts.writers.contains(*u) && !facts.authors.contains(*u)).cloned().collect();
    let independent: BTreeSet<UserName> =
        approving.iter().filter(|u| !facts.authors.contains(*u) && facts.writers.contains(*u)).cloned().collect();

    let needed = facts.policy.approvals as usize;
    let mut message = format!(
        "{} of {needed} independent approvals at {} ({})",
        independent.len(),
        crate::short_id(facts.head),
        names(&independent)
    );
    if !ignored_authors.is_empty() {
        message.push_str(&format!("; not counted, as authors of the change: {}", names(&ignored_authors)));
    }
    if !ignored_readers.is_empty() {
        message.push_str(&format!("; not counted, without write access: {}", names(&ignored_readers)));
    }
    rules.add(
        "gate.independent_approvals",
        independent.len() >= needed,
        message,
        Some(format!(
            "{} more approval(s) of this head by project members with write access who are not authors ({})",
            needed.saturating_sub(independent.len()),
            names(facts.authors)
        )),
    );
    (independent, requesting)
}

/// Each path rule the change's paths fall under: approvals from its group.
fn path_rules(facts: &GateFacts<'_>, independent: &BTreeSet<UserName>, rules: &mut Outcomes) {
    for (index, path_rule) in facts.policy.rules.iter().enumerate() {
        let touched: Vec<&String> =
            facts.changed_paths.iter().filter(|p| path_rule.paths.iter().any(|g| g.matches(p))).collect();
        if touched.is_empty() {
            continue;
        }
        let members = facts.groups.get(&path_rule.group).cloned().unwrap_or_default();
        let from_group: BTreeSet<UserName> = independent.intersection(&members).cloned().collect();
        let patterns: Vec<&str> = path_rule.paths.iter().map(|g| g.as_str()).collect();
        rules.add(
            &format!("gate.path_rule.{}", index + 1),
            from_group.len() >= path_rule.approvals as usize,
            format!(
                "the change touches {} ({}): {} of {} approvals from group {} ({})",
                touched[0],
                patterns.join(", "),
                from_group.len(),
                path_rule.approvals,
                path_rule.group,
                names(&from_group)
            ),
            Some(format!("an approval of this head by a member of {} who is not an author", path_rule.group)),
        );
    }
}

/// A change to an owned path (the pipeline file, say) needs a pipeline
/// owner's approval.
fn pipeline_owners(facts: &GateFacts<'_>, independent: &BTreeSet<UserName>, rules: &mut Outcomes) {
    let owned: Vec<&String> = facts.changed_paths.iter().filter(|p| facts.policy.owns(p)).collect();
    if let Some(first) = owned.first() {
        match &facts.policy.owners {
            Some(owners) => {
                let members = facts.groups.get(owners).cloned().unwrap_or_default();
                let from_owners: BTreeSet<UserName> = independent.intersection(&members).cloned().collect();
                rules.add(
                    "gate.pipeline_owners",
                    !from_owners.is_empty(),
                    format!(
                        "the change touches {} owned path(s), such as {first}: approvals from pipeline owners {owners}: {}",
                        owned.len(),
                        names(&from_owners)
                    ),
                    Some(format!("an approval of this head by a member of {owners} who is not an author")),
                );
            }
            None => rules.add(
                "gate.pipeline_owners",
                true,
                format!(
                    "the change touches {first}; the target's policy names no owners group, so the other rules apply"
                ),
                None,
            ),
        }
    }
}

/// No outstanding request for changes, the check, a valid pipeline file,
/// and a clean merge.
fn requests_checks_and_merge(facts: &GateFacts<'_>, requesting: &BTreeSet<UserName>, rules: &mut Outcomes) {
    rules.add(
        "gate.changes_requested",
        requesting.is_empty(),
        if requesting.is_empty() {
            "no outstanding request for changes".into()
        } else {
            format!("changes requested by {}", names(requesting))
        },
        Some("the same reviewer approves or withdraws the request".into()),
    );

    match &facts.check {
        CheckState::NotRequired => {}
        CheckState::Passed => {
            rules.add("gate.check", true, format!("the check passed on {}", crate::short_id(facts.head)), None)
        }
        CheckState::Pending => rules.add(
            "gate.check",
            false,
            format!("the check has not passed on {} yet", crate::short_id(facts.head)),
            Some("wait for the check of this head to pass".into()),
        ),
        CheckState::Failed { reason } => rules.add(
            "gate.check",
            false,
            format!("the check failed on {}: {reason}", crate::short_id(facts.head)),
            Some("push a fix; the check runs again on the new head".into()),
        ),
    }

    if let Some(proposed) = facts.proposed_pipeline {
        match proposed {
            Ok(_) => rules.add("gate.pipeline_valid", true, "the changed pipeline file is valid".into(), None),
            Err(error) => rules.add(
                "gate.pipeline_valid",
                false,
                format!("the change would leave an invalid pipeline file: {error}"),
                Some("fix the pipeline file in the change".into()),
            ),
        }
    }

    match &facts.mergeable {
        Ok(()) => rules.add("gate.mergeable", true, "merges cleanly into the target".into(), None),
        Err(why) => rules.add(
            "gate.mergeable",
            false,
            format!("does not merge cleanly: {why}"),
            Some("merge or rebase the target into the source branch and push".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authors_approval_would_not_count_and_the_refusal_says_why() {
        assert!(decide_own_approval(None).allowed);
        let refused = decide_own_approval(Some("pushed commit 1a2b3c"));
        assert!(!refused.allowed);
        assert_eq!(refused.reasons[0].rule, "gate.independent_approvals");
        assert!(refused.reasons[0].message.contains("you are an author of this change (pushed commit 1a2b3c)"));
    }
    use crate::names_for_tests::{set, user};

    fn review(who: &str, verdict: Verdict, head: &str) -> Review {
        Review { reviewer: user(who), verdict, head: head.into(), voided: false }
    }

    struct World {
        policy: Pipeline,
        authors: BTreeSet<UserName>,
        writers: BTreeSet<UserName>,
        groups: BTreeMap<GroupName, BTreeSet<UserName>>,
        paths: Vec<String>,
        check: CheckState,
    }

    impl World {
        fn new() -> World {
            World {
                policy: Pipeline::default(),
                authors: set(&["alice"]),
                writers: set(&["alice", "bob", "carol"]),
                groups: BTreeMap::new(),
                paths: vec!["src/lib.rs".into()],
                check: CheckState::NotRequired,
            }
        }

        fn gate(&self, reviews: &[Review], head: &str) -> GateReport {
            evaluate(&GateFacts {
                open: true,
                head,
                policy: &self.policy,
                authors: &self.authors,
                reviews,
                writers: &self.writers,
                groups: &self.groups,
                changed_paths: &self.paths,
                proposed_pipeline: None,
                check: &self.check,
                mergeable: Ok(()),
                unrecorded_commits: 0,
            })
        }
    }

    fn failed(report: &GateReport) -> Vec<&str> {
        report.rules.iter().filter(|r| !r.passed).map(|r| r.rule.as_str()).collect()
    }

    #[test]
    fn alices_own_approval_does_not_count_and_the_gate_says_why() {
        let world = World::new();
        let report = world.gate(&[review("alice", Verdict::Approve, "h1")], "h1");
        assert!(!report.open);
        let approvals = report.rules.iter().find(|r| r.rule == "gate.independent_approvals").unwrap();
        assert!(approvals.message.contains("as authors of the change: alice"), "{}", approvals.message);
        assert!(world.gate(&[review("bob", Verdict::Approve, "h1")], "h1").open);
    }

    #[test]
    fn a_new_head_voids_approvals() {
        let world = World::new();
        let reviews = [review("bob", Verdict::Approve, "h1")];
        assert!(world.gate(&reviews, "h1").open);
        assert_eq!(failed(&world.gate(&reviews, "h2")), ["gate.independent_approvals"]);
    }

    #[test]
    fn an_approval_voided_by_a_new_head_never_counts_again() {
        let world = World::new();
        // bob approved h1; the head moved to h2, then back to h1.
        let mut approval = review("bob", Verdict::Approve, "h1");
        approval.voided = true;
        let report = world.gate(&[approval], "h1");
        assert!(!report.open, "{report:?}");
        assert!(report.approvers.is_empty());
    }

    #[test]
    fn a_request_for_changes_blocks_until_the_same_reviewer_lifts_it() {
        let world = World::new();
        let mut reviews = vec![review("carol", Verdict::RequestChanges, "h1"), review("bob", Verdict::Approve, "h2")];
        assert_eq!(failed(&world.gate(&reviews, "h2")), ["gate.changes_requested"]);
        reviews.push(review("bob", Verdict::Withdraw, "h2"));
        assert_eq!(failed(&world.gate(&reviews, "h2")), ["gate.changes_requested"], "only carol can lift hers");
        reviews.push(review("carol", Verdict::Withdraw, "h2"));
        assert!(world.gate(&reviews, "h2").open);
    }

    #[test]
    fn approvals_are_of_distinct_writers() {
        let mut world = World::new();
        world.policy.approvals = 2;
        world.writers = set(&["alice", "bob"]);
        let reviews = [
            review("bob", Verdict::Approve, "h1"),
            review("bob", Verdict::Approve, "h1"),
            review("dave", Verdict::Approve, "h1"),
        ];
        let report = world.gate(&reviews, "h1");
        assert!(!report.open);
        assert_eq!(report.approvers, ["bob"]);
    }

    #[test]
    fn owned_paths_need_a_pipeline_owner() {
        let mut world = World::new();
        world.policy =
            crate::pipeline::parse("[pipeline]\nowners = \"platform\"\ncheck = \"scripts/ci.sh\"\n").unwrap();
        world.check = CheckState::Passed;
        world.groups.insert(GroupName::parse("platform").unwrap(), set(&["carol"]));
        world.paths = vec!["scripts/ci.sh".into()];
        assert_eq!(failed(&world.gate(&[review("bob", Verdict::Approve, "h")], "h")), ["gate.pipeline_owners"]);
        assert!(world.gate(&[review("carol", Verdict::Approve, "h")], "h").open);
    }

    #[test]
    fn path_rules_need_their_groups_approval() {
        let mut world = World::new();
        world.policy =
            crate::pipeline::parse("[[review.rule]]\npaths = [\"src/payments/**\"]\ngroup = \"payments\"\n").unwrap();
        world.groups.insert(GroupName::parse("payments").unwrap(), set(&["carol"]));
        world.paths = vec!["src/payments/ledger.rs".into()];
        assert_eq!(failed(&world.gate(&[review("bob", Verdict::Approve, "h")], "h")), ["gate.path_rule.1"]);
        assert!(world.gate(&[review("carol", Verdict::Approve, "h")], "h").open);
    }

    #[test]
    fn a_required_check_must_pass_on_this_head() {
        let mut world = World::new();
        world.check = CheckState::Failed { reason: "exit 1".into() };
        assert_eq!(failed(&world.gate(&[review("bob", Verdict::Approve, "h")], "h")), ["gate.check"]);
    }
}
