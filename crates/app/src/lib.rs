//! custody's application layer: the use cases that the entry points (the
//! HTTP server, the job runner, the command line) share, written once over
//! `store` and `git`. An entry point authenticates, parses, calls one of
//! these and renders; it decides nothing itself.
//!
//! `changes`: gathering a change's facts from git, its gate, merging it
//! (and settling merges a crash left recorded but unmoved), merging when
//! the gate opens. `releases`: what governs a release, the pipelines, and
//! promotion. `projects`: whether a branch may become the mainline.
//! `inbox`: what waits for one person, by duty, decided by the rules that
//! would decide each action.
//! `repositories`: a backup's copied repositories moved back to what its
//! copied database records.

#![forbid(unsafe_code)]

pub mod changes;
pub mod comments;
mod error;
pub mod inbox;
pub mod projects;
pub mod releases;
mod remembered;
pub mod repositories;
pub mod work;

pub use changes::Changes;
pub use error::AppError;
