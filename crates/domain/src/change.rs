//! Changes: a review binds to the head its reviewer saw, and a merge to the
//! head its gate was evaluated on.

use crate::rules::{COMMENT_RESOLVER, GATE_HEAD_MOVED, REVIEW_HEAD_MOVED};
use crate::{short_id, Decision, Reason};

/// A review lands only on the head its reviewer says they saw, given in
/// full (any case); one that names no head lands on the current one.
pub fn decide_review_head(seen: Option<&str>, head: &str) -> Decision {
    let mut decision = Decision::allow();
    if let Some(seen) = seen {
        // The full id: an abbreviation is a prefix an author could find a
        // second commit for.
        decision.require(seen.eq_ignore_ascii_case(head), || {
            Reason::new(
                REVIEW_HEAD_MOVED,
                format!("you reviewed {}, but the change's head is now {}", short_id(seen), short_id(head)),
            )
            .satisfy("look at the new head and review it")
        });
    }
    decision
}

/// A change merges only at the head its gate was evaluated on.
pub fn decide_merge_head(head: &str, evaluated: &str) -> Decision {
    let mut decision = Decision::allow();
    decision.require(head == evaluated, || {
        Reason::new(
            GATE_HEAD_MOVED,
            format!("the change's head moved to {} while merging {}", short_id(head), short_id(evaluated)),
        )
        .satisfy("review the new head; approvals of the old one no longer count")
    });
    decision
}

/// Who may resolve a thread of line comments: whoever started it, the
/// change's opener, or a writer of the project (`may_write`).
pub fn decide_resolve_thread(who: &str, started_by: &str, opened_by: &str, may_write: bool) -> Decision {
    let mut decision = Decision::allow();
    decision.require(may_write || who == started_by || who == opened_by, || {
        Reason::new(COMMENT_RESOLVER, format!("{who} neither started this thread nor opened the change"))
            .satisfy("the thread's author, the change's opener or a writer of the project resolves it")
    });
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "1111111111111111111111111111111111111111";
    const NEW: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn a_thread_is_resolved_by_its_author_the_opener_or_a_writer() {
        assert!(decide_resolve_thread("bob", "bob", "alice", false).allowed);
        assert!(decide_resolve_thread("alice", "bob", "alice", false).allowed);
        assert!(decide_resolve_thread("carol", "bob", "alice", true).allowed);
        let refused = decide_resolve_thread("rita", "bob", "alice", false);
        assert_eq!(refused.reasons[0].rule, COMMENT_RESOLVER.name());
    }

    #[test]
    fn a_review_of_the_head_seen_lands() {
        assert!(decide_review_head(Some(OLD), OLD).allowed);
        assert!(decide_review_head(Some(&"ABCDEF".repeat(6)), &"abcdef".repeat(6)).allowed);
        assert!(decide_review_head(None, OLD).allowed);
    }

    #[test]
    fn a_review_of_a_head_the_change_no_longer_has_is_refused() {
        let decision = decide_review_head(Some(OLD), NEW);
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, REVIEW_HEAD_MOVED.name());
        assert_eq!(decision.reasons[0].message, "you reviewed 111111111111, but the change's head is now 222222222222");
        assert_eq!(decision.reasons[0].satisfy.as_deref(), Some("look at the new head and review it"));
    }

    #[test]
    fn an_abbreviated_head_is_not_the_head() {
        assert!(!decide_review_head(Some(&OLD[..12]), OLD).allowed);
    }

    #[test]
    fn a_change_whose_head_moved_while_merging_does_not_merge() {
        assert!(decide_merge_head(OLD, OLD).allowed);
        let decision = decide_merge_head(NEW, OLD);
        assert_eq!(decision.reasons[0].rule, GATE_HEAD_MOVED.name());
        assert_eq!(decision.reasons[0].message, "the change's head moved to 222222222222 while merging 111111111111");
        assert_eq!(
            decision.reasons[0].satisfy.as_deref(),
            Some("review the new head; approvals of the old one no longer count")
        );
    }
}
