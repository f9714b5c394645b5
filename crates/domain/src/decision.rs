//! Decisions: whether something is allowed, and every reason why not.

use serde::{Deserialize, Serialize};

/// A rule of custody, by its stable name (`grant.requester_cannot_approve`).
///
/// Rule names are part of the API: scripts match on them, and audit events
/// record them.
///
/// Only this crate makes rules (the constructor is private): every reason
/// code custody gives is decided here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Rule(pub(crate) &'static str);

impl Rule {
    /// The rule's stable name.
    pub const fn name(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// One reason a decision went the way it did: the rule, what happened, and
/// what would satisfy it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reason {
    /// The rule's stable name.
    pub rule: String,
    /// What the rule found, in words for people.
    pub message: String,
    /// What would satisfy the rule, when something can.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub satisfy: Option<String>,
}

impl Reason {
    /// A reason under `rule` with the given message. Only the rules of
    /// this crate make reasons, so no other crate decides a refusal.
    pub(crate) fn new(rule: Rule, message: impl Into<String>) -> Self {
        Reason { rule: rule.0.to_owned(), message: message.into(), satisfy: None }
    }

    /// Adds what would satisfy the rule.
    pub fn satisfy(mut self, what: impl Into<String>) -> Self {
        self.satisfy = Some(what.into());
        self
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.rule)?;
        if let Some(satisfy) = &self.satisfy {
            write!(f, "; {satisfy}")?;
        }
        Ok(())
    }
}

/// Whether an action is allowed, with every reason that refused it.
///
/// A decision is built by checking every rule, not by stopping at the first
/// failure, so that a person sees all that stands in the way at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// True when no rule refused.
    pub allowed: bool,
    /// The refusals; empty when allowed.
    pub reasons: Vec<Reason>,
}

impl Decision {
    /// A decision with no refusal yet.
    pub fn allow() -> Self {
        Decision { allowed: true, reasons: Vec::new() }
    }

    /// A decision refused for one reason.
    pub(crate) fn deny(reason: Reason) -> Self {
        let mut decision = Decision::allow();
        decision.refuse(reason);
        decision
    }

    /// Records a refusal.
    pub fn refuse(&mut self, reason: Reason) {
        self.allowed = false;
        self.reasons.push(reason);
    }

    /// Records a refusal when `failed` holds.
    pub fn require(&mut self, holds: bool, reason: impl FnOnce() -> Reason) {
        if !holds {
            self.refuse(reason());
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.allowed {
            return f.write_str("allowed");
        }
        let reasons: Vec<String> = self.reasons.iter().map(ToString::to_string).collect();
        f.write_str(&reasons.join("; "))
    }
}
