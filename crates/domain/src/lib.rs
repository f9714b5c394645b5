//! custody's domain core.
//!
//! People, groups, scopes, grants and the rules that keep duties apart, as
//! plain data and pure functions. Every rule answers with a [`Decision`]: the
//! same value is shown on the command line, returned by the API and written
//! into the audit log.
//!
//! This crate knows nothing about SQL, HTTP, files or git processes.

#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod change;
pub mod decision;
pub mod deploy;
pub mod finding;
pub mod gate;
pub mod glob;
pub mod grant;
pub mod name;
pub mod pipeline;
pub mod project;
pub mod rules;
pub mod scope;
pub mod secret;
pub mod status;
pub mod time;

#[cfg(test)]
pub(crate) mod names_for_tests;

pub use decision::{Decision, Reason, Rule};
pub use grant::{AdminEra, GrantAction, GrantStatus};
pub use name::{Email, GroupName, InvalidInput, ProjectName, UserName};
pub use project::{RefUpdate, Role};
pub use scope::{Scope, Scopes};
pub use time::Timestamp;

/// The first twelve characters of an id (a commit, a digest), as people
/// read it; cut on a character boundary, so that text that is no id (from a
/// request, say) never panics.
pub fn short_id(id: &str) -> &str {
    id.char_indices().nth(12).map_or(id, |(end, _)| &id[..end])
}
