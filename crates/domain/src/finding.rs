//! Findings: what custody asks an admin to review after the fact, such as a
//! break-glass deployment.

use crate::rules::FINDING_REVIEWER_NOT_INVOLVED;
use crate::{Decision, Reason, UserName};

/// Nobody reviews a finding about something they took part in: `involved`
/// names everyone who did (for a deployment, its requester and everyone who
/// decided on it).
pub fn decide_finding_reviewer(reviewer: &UserName, subject: &str, involved: &[String]) -> Decision {
    let mut decision = Decision::allow();
    decision.require(!involved.iter().any(|name| name == reviewer.as_str()), || {
        Reason::new(FINDING_REVIEWER_NOT_INVOLVED, format!("{reviewer} took part in {subject}, so cannot review it"))
            .satisfy("an admin who neither asked for nor decided on it reviews it")
    });
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names_for_tests::user;

    fn involved() -> Vec<String> {
        vec!["alice".to_owned(), "bob".to_owned()]
    }

    #[test]
    fn the_requester_of_a_break_glass_deployment_cannot_review_its_finding() {
        let decision = decide_finding_reviewer(&user("alice"), "deployment:shop/4", &involved());
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, FINDING_REVIEWER_NOT_INVOLVED.name());
        assert_eq!(decision.reasons[0].message, "alice took part in deployment:shop/4, so cannot review it");
        assert_eq!(
            decision.reasons[0].satisfy.as_deref(),
            Some("an admin who neither asked for nor decided on it reviews it")
        );
    }

    #[test]
    fn a_reviewer_who_approved_the_break_glass_deployment_cannot_review_its_finding() {
        assert!(!decide_finding_reviewer(&user("bob"), "deployment:shop/4", &involved()).allowed);
    }

    #[test]
    fn an_admin_who_took_no_part_reviews_the_finding() {
        assert!(decide_finding_reviewer(&user("root"), "deployment:shop/4", &involved()).allowed);
        assert!(decide_finding_reviewer(&user("root"), "deployment:shop/4", &[]).allowed);
    }
}
