//! Evidence bundles: every signed statement needed to check one artifact or
//! deployment, each with the audit event that recorded it, that event's
//! inclusion proof, and one signed checkpoint covering them all.
//!
//! An entry binds its envelope into the ledger through the event: the event
//! carries `details.envelope_sha256`, the envelope's [`Envelope::digest`],
//! and the event's leaf is proved included in the tree whose head the ledger
//! key signed. So an envelope altered after it was recorded, or an event
//! altered after it was logged, no longer verifies.
//!
//! Entries come in the chain's order: change attestations, the build's
//! provenance, then the deployments in environment order.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::dsse::Envelope;
use crate::event::EventFields;
use crate::merkle::Hash;

/// The media type of an evidence bundle, as exported now (version 2: each
/// review, approval and test sign-off a statement names comes with the
/// ledger event that recorded it, proved included).
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.custody.evidence.v2+json";

/// The media type of the first version, which carried the signed
/// statements' events only; such bundles still verify.
pub const BUNDLE_MEDIA_TYPE_V1: &str = "application/vnd.custody.evidence.v1+json";

/// An evidence bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Always [`BUNDLE_MEDIA_TYPE`].
    pub media_type: String,
    /// The instance's name: the origin of its checkpoint.
    pub origin: String,
    /// The project.
    pub project: String,
    /// What the bundle is evidence for.
    pub subject: BundleSubject,
    /// The signed checkpoint (a C2SP signed note) every proof leads to.
    pub checkpoint: String,
    /// The envelopes, each with its event and proof, in the chain's order.
    pub entries: Vec<Entry>,
    /// Version 2: the ledger event of every review, approval and test
    /// sign-off the statements name, each with its inclusion proof.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duties: Vec<LoggedDuty>,
}

/// A person's duty as the ledger recorded it (`change.review.approve`,
/// `deploy.approve`, `deploy.test_passed`), proved included.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggedDuty {
    /// The audit event.
    pub event: LedgerEvent,
    /// Its inclusion proof in the checkpoint's tree.
    pub proof: InclusionProof,
}

/// What a bundle is evidence for: a deployment, or an artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSubject {
    /// The deployment's number, when the bundle is for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<i64>,
    /// The artifact's sha256, hex, when the bundle is for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

/// One signed statement with its place in the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The DSSE envelope.
    pub envelope: Envelope,
    /// The audit event that recorded it.
    pub event: LedgerEvent,
    /// The event's inclusion proof in the checkpoint's tree.
    pub proof: InclusionProof,
}

/// An audit event as the ledger hashes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEvent {
    /// Position in the log, from 1.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who acted.
    pub actor: String,
    /// What happened.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Anything else; `envelope_sha256` binds the envelope.
    pub details: serde_json::Value,
}

impl LedgerEvent {
    /// The event's leaf hash in the ledger's tree.
    pub fn leaf_hash(&self) -> Hash {
        EventFields {
            seq: self.seq,
            at_ms: self.at_ms,
            actor: &self.actor,
            action: &self.action,
            subject: &self.subject,
            details: &self.details,
        }
        .leaf_hash()
    }
}

/// An RFC 9162 inclusion proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The leaf's index: the event's `seq - 1`.
    pub leaf_index: u64,
    /// The size of the tree proved against: the checkpoint's.
    pub tree_size: u64,
    /// The proof's hashes, base64, leaf side first.
    pub hashes: Vec<String>,
}

impl InclusionProof {
    /// A proof from its hashes.
    pub fn new(leaf_index: u64, tree_size: u64, hashes: &[Hash]) -> InclusionProof {
        InclusionProof { leaf_index, tree_size, hashes: hashes.iter().map(|h| STANDARD.encode(h)).collect() }
    }

    /// The proof's hashes, or `None` when one is not 32 bytes of base64.
    pub fn decoded(&self) -> Option<Vec<Hash>> {
        self.hashes.iter().map(|h| STANDARD.decode(h).ok().and_then(|b| b.try_into().ok())).collect()
    }
}

/// Why a bundle cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The text is not a bundle.
    #[error("not a custody evidence bundle: {0}")]
    Malformed(String),
}

impl Bundle {
    /// Reads a bundle.
    pub fn parse(text: &str) -> Result<Bundle, BundleError> {
        let bundle: Bundle = serde_json::from_str(text).map_err(|e| BundleError::Malformed(e.to_string()))?;
        if bundle.version().is_none() {
            return Err(BundleError::Malformed(format!(
                "media type {:?} is neither {BUNDLE_MEDIA_TYPE} nor {BUNDLE_MEDIA_TYPE_V1}",
                bundle.media_type
            )));
        }
        Ok(bundle)
    }

    /// Which version of the format it is, from its media type.
    pub fn version(&self) -> Option<u8> {
        match self.media_type.as_str() {
            BUNDLE_MEDIA_TYPE => Some(2),
            BUNDLE_MEDIA_TYPE_V1 => Some(1),
            _ => None,
        }
    }

    /// The envelopes alone as in-toto JSON Lines (`.intoto.jsonl`): one DSSE
    /// envelope per line, for tools that read in-toto attestation bundles.
    /// Proofs and checkpoint stay in the JSON bundle.
    pub fn to_intoto_jsonl(&self) -> String {
        let mut out = String::new();
        for entry in &self.entries {
            out.push_str(&serde_json::to_string(&entry.envelope).unwrap_or_default());
            out.push('\n');
        }
        out
    }
}
