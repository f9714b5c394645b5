//! The body of every error answer.

use custody_domain::Reason;
use serde::{Deserialize, Serialize};

/// What every error answer holds.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// An error: its code, what happened, and for refusals every rule that
/// refused.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `refused` or `invalid_input`.
    pub code: String,
    /// What happened and what to do.
    pub message: String,
    /// For refusals: each rule that refused and what would satisfy it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
}
