//! The types of custody's JSON API: one definition of every request and
//! response, shared by the server (which reads requests and writes
//! responses), the command line (which does the reverse) and the OpenAPI
//! document (which describes both, with the rules the server enforces:
//! patterns, lengths, ranges, enums). The store builds the response views
//! straight from its rows, so there is no second copy of a shape to drift.
//!
//! This crate knows no HTTP, no storage and no terminal: only shapes and
//! their schemas.

#![forbid(unsafe_code)]

pub mod integer;
mod requests;
mod responses;
mod workers;

pub use requests::*;
pub use responses::*;
pub use workers::*;
