//! Signed evidence formats.
//!
//! The four service keys (builder, gate, deployer, ledger), and the DSSE
//! envelope that carries in-toto statements signed with them. Everything
//! here is pure data and cryptography, usable by an offline verifier.
//!
//! This crate knows nothing about databases, HTTP or custody's server; it
//! reads and writes key files only where a caller names them.

pub mod dsse;
pub mod keys;
pub mod provenance;
pub mod statement;

pub use dsse::{Envelope, Signature};
pub use keys::{KeyRole, PublicKey, ServiceKey};
pub use provenance::BuildFacts;
pub use statement::{Statement, Subject};
