//! Signed evidence formats.
//!
//! The four service keys (builder, gate, deployer, ledger), the DSSE
//! envelope that carries in-toto statements signed with them, and the audit
//! ledger's Merkle tree (RFC 6962), event leaves and signed checkpoints
//! (C2SP `tlog-checkpoint`, `signed-note`), evidence bundles, trust roots
//! and the offline verifier that checks one against the other. Everything
//! here is pure data and cryptography, usable by an offline verifier.
//!
//! This crate knows nothing about databases, HTTP or custody's server; it
//! reads and writes key files only where a caller names them.

#![forbid(unsafe_code)]

pub mod admission;
pub mod attestation;
pub mod checkpoint;
pub mod dsse;
pub mod environment;
pub mod escrow;
pub mod event;
pub mod evidence;
pub mod keys;
pub mod ledger_key;
pub mod merkle;
pub mod oci;
pub mod provenance;
pub mod sealed;
pub mod statement;
pub mod trust;
pub mod verify;

pub use dsse::{Envelope, Signature};
pub use keys::{KeyRole, PublicKey, ServiceKey};
pub use provenance::BuildFacts;
pub use statement::{Statement, Subject};
