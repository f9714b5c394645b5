//! Audit events: what happened, who did it, to what.

use serde::{Deserialize, Serialize};

use crate::rules::UNPROVEN_FACT;
use crate::{Decision, Reason};

/// Who caused an event: a person, or custody itself.
pub const SYSTEM_ACTOR: &str = "custody";

/// An event about to be written, in the same transaction as the change it
/// records. The store gives it its sequence number and time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The user who acted, or [`SYSTEM_ACTOR`].
    pub actor: String,
    /// What happened, as a dotted name (`grant.approve`).
    pub action: String,
    /// What it happened to (`user:bob`, `grant:3`, `group:qa`).
    pub subject: String,
    /// Anything else worth keeping, as a JSON object.
    pub details: serde_json::Value,
}

/// An event as written: append-only, never updated or deleted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// When it was written, in milliseconds since the Unix epoch (UTC).
    pub at_ms: i64,
    /// The user who acted, or [`SYSTEM_ACTOR`].
    pub actor: String,
    /// What happened.
    pub action: String,
    /// What it happened to.
    pub subject: String,
    /// Anything else worth keeping.
    pub details: serde_json::Value,
}

/// No rule rests on a fact custody cannot prove it wrote: the decision that
/// would is refused, naming `what` was unproven.
pub fn decide_unproven(what: impl Into<String>) -> Decision {
    Decision::deny(Reason::new(UNPROVEN_FACT, what).satisfy(
        "custody did not write this, so no rule may rest on it: an operator runs `custody audit verify`, finds who \
         wrote the database around custody, and restores the rows custody recorded",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_resting_on_a_row_custody_did_not_write_is_refused() {
        let decision = decide_unproven("membership row 4 is not proven by any event");
        assert!(!decision.allowed);
        assert_eq!(decision.reasons.len(), 1);
        assert_eq!(decision.reasons[0].rule, UNPROVEN_FACT.name());
        assert_eq!(decision.reasons[0].message, "membership row 4 is not proven by any event");
        assert!(decision.reasons[0].satisfy.as_deref().unwrap().contains("`custody audit verify`"));
    }
}
