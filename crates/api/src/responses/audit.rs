//! The audit log, its checkpoints and proofs, and findings.

use custody_domain::Timestamp;
use serde::{Deserialize, Serialize};

/// An audit event as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// When it was written.
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub subject: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

/// A signed tree head of the audit log.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointView {
    /// The log's name: the instance's name.
    pub origin: String,
    /// How many events the tree covers (events 1 to `size`).
    pub size: u64,
    /// The RFC 6962 tree head, base64.
    pub root: String,
    /// The checkpoint as a C2SP signed note: `origin\nsize\nroot\n\n— origin signature\n`.
    pub note: String,
    /// The ledger's verifier key (`name+keyid+base64 key`). A watcher pins it
    /// once, from a source it trusts, rather than taking it from here each time.
    pub verifier_key: String,
    /// When it was signed.
    pub at: Timestamp,
}

/// A ledger-key handover: the checkpoint the old and the new ledger key
/// both signed, whose body names both keys. A watcher pinned to the old key
/// follows the log to the new one through it; the old key signs no
/// checkpoint larger than it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HandoverView {
    /// The verifier key of the key that handed over.
    pub from_key: String,
    /// The verifier key of the key that took over.
    pub to_key: String,
    /// How many events its checkpoint covers.
    pub size: u64,
    /// Its tree head, base64.
    pub root: String,
    /// The signed note: the checkpoint's three lines,
    /// `custody-ledger-key-from VKEY` and `custody-ledger-key-to VKEY`, then
    /// a signature by each key.
    pub note: String,
    /// When it was signed.
    pub at: Timestamp,
}

/// A consistency proof (RFC 9162 §2.1.4) between two tree sizes.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConsistencyView {
    pub old_size: u64,
    pub new_size: u64,
    /// The proof's hashes, base64, in the RFC's order.
    pub hashes: Vec<String>,
}

/// An inclusion proof (RFC 9162 §2.1.3) of one event.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InclusionView {
    pub seq: i64,
    /// The leaf's index in the tree: `seq - 1`.
    pub leaf_index: u64,
    pub tree_size: u64,
    /// `SHA-256(0x00 || canonical event)`, base64.
    pub leaf_hash: String,
    /// The proof's hashes, base64, leaf side first.
    pub hashes: Vec<String>,
    /// The signed checkpoint of `tree_size`, when one was signed at that size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
}

/// An audit event with its inclusion proof: everything needed to check it
/// against a signed checkpoint without custody.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProvenEvent {
    pub seq: i64,
    pub at: Timestamp,
    /// `at` in milliseconds since the epoch, as hashed.
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub tree_size: u64,
    /// `SHA-256(0x00 || canonical event)`, base64.
    pub leaf_hash: String,
    /// The inclusion proof's hashes, base64, leaf side first.
    pub hashes: Vec<String>,
}

/// A finding as shown.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FindingView {
    /// Its id.
    pub id: i64,
    /// What kind (`break_glass`).
    pub kind: String,
    /// What it is about (`deployment:PROJECT/NUMBER`).
    pub subject: String,
    /// In a line.
    pub summary: String,
    /// When it was opened.
    pub opened_at: Timestamp,
    /// Who reviewed it, once someone did.
    pub resolved_by: Option<String>,
    /// When.
    pub resolved_at: Option<Timestamp>,
    /// What the review found.
    pub resolution: Option<String>,
}

/// The details of an `instance.restored` event: the backup the instance was
/// restored from and what the restore replaced. Events after the backup's
/// tree size, up to the replaced tree's, were lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoredDetails {
    /// The backup restored.
    pub backup: RestoredBackup,
    /// The tree head of the instance the restore replaced, if it replaced one.
    pub replaced: Option<ReplacedTree>,
    /// How many events the replaced instance held beyond the backup.
    pub lost_events: u64,
    /// What did not agree after the restore; empty when everything did.
    pub problems: Vec<String>,
}

/// The backup an instance was restored from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RestoredBackup {
    /// When it was taken (RFC 3339).
    pub taken_at: String,
    /// The events its ledger held.
    pub tree_size: u64,
    /// Its tree head, hex.
    pub tree_root: String,
    /// The newest signed checkpoint it held: its size and note.
    pub checkpoint_size: Option<u64>,
    pub checkpoint: Option<String>,
}

/// The tree head of an instance a restore replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplacedTree {
    /// The events it held.
    pub tree_size: u64,
    /// Its tree head, hex.
    pub tree_root: String,
}
