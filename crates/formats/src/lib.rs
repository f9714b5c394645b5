//! Signed evidence formats.
//!
//! The four service keys (builder, gate, deployer, ledger), the DSSE
//! envelope that carries in-toto statements signed with them, and the audit
//! ledger's Merkle tree (RFC 6962), event leaves and signed checkpoints
//! (C2SP `tlog-checkpoint`, `signed-note`). Everything
//! here is pure data and cryptography, usable by an offline verifier.
//!
//! This crate knows nothing about databases, HTTP or custody's server; it
//! reads and writes key files only where a caller names them.

pub mod checkpoint;
pub mod dsse;
pub mod event;
pub mod keys;
pub mod merkle;
pub mod provenance;
pub mod sealed;
pub mod statement;

pub use dsse::{Envelope, Signature};
pub use keys::{KeyRole, PublicKey, ServiceKey};
pub use provenance::BuildFacts;
pub use statement::{Statement, Subject};
