//! Audit events: what happened, who did it, to what.

use serde::{Deserialize, Serialize};

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
