//! Checkpoints of the audit ledger in the C2SP `tlog-checkpoint` format,
//! signed as C2SP `signed-note`s with the ledger's ed25519 key.
//!
//! A checkpoint's body is three lines: the origin (the instance's name), the
//! tree size in decimal, and the base64 tree head. The signed note is the
//! body, an empty line, and one signature line per signer:
//! `— NAME base64(key id || signature)`, where the key id is the first four
//! bytes of `SHA-256(NAME || "\n" || 0x01 || public key)` and the signature
//! is ed25519 over the body. The verifier key string
//! `NAME+KEYID(hex)+base64(0x01 || public key)` is the one Go's
//! `golang.org/x/mod/sumdb/note` and other C2SP tools read.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::keys::{KeyRole, PublicKey, ServiceKey};
use crate::merkle::Hash;

/// The algorithm byte of ed25519 keys in signed notes.
const ED25519: u8 = 0x01;

/// The em dash that starts a signature line.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// A tree head: which log, how many leaves, and their Merkle tree head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name: the custody instance's name.
    pub origin: String,
    /// How many events the tree holds.
    pub size: u64,
    /// The RFC 6962 tree head.
    pub root: Hash,
}

/// Why a checkpoint could not be read or trusted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a checkpoint or not a signed note.
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    /// No signature line is by the expected key.
    #[error("the checkpoint carries no signature by {0}")]
    Unsigned(String),
    /// The signature by the expected key does not verify.
    #[error("the checkpoint's signature by {0} does not verify: it was altered or forged")]
    BadSignature(String),
    /// The key cannot sign or verify checkpoints.
    #[error("{0}")]
    WrongKey(String),
}

impl Checkpoint {
    /// The checkpoint's body: `origin\nsize\nbase64(root)\n`.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root))
    }

    /// Reads a checkpoint body (extension lines after the third are allowed and ignored).
    pub fn parse_body(text: &str) -> Result<Checkpoint, CheckpointError> {
        let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
        if !text.ends_with('\n') {
            return Err(malformed("the body does not end with a newline"));
        }
        let mut lines = text.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty()).ok_or_else(|| malformed("no origin line"))?;
        let size = lines.next().ok_or_else(|| malformed("no size line"))?;
        if size.is_empty() || (size.len() > 1 && size.starts_with('0')) || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("the size is not a decimal number without leading zeros"));
        }
        let size: u64 = size.parse().map_err(|_| malformed("the size is out of range"))?;
        let root = lines.next().ok_or_else(|| malformed("no root hash line"))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| malformed("the root hash is not 32 bytes of base64"))?;
        Ok(Checkpoint { origin: origin.to_owned(), size, root })
    }

    /// Signs the checkpoint with the ledger key, as a signed note whose
    /// signer name is the origin.
    pub fn sign(&self, key: &ServiceKey) -> Result<String, CheckpointError> {
        if key.role() != KeyRole::Ledger {
            return Err(CheckpointError::WrongKey(format!(
                "checkpoints are signed with the ledger key, not the {} key",
                key.role().as_str()
            )));
        }
        if self.origin.is_empty() || self.origin.contains(['\n', ' ', '+']) {
            return Err(CheckpointError::Malformed(format!(
                "origin {:?} cannot name a note signer (no spaces, newlines or +)",
                self.origin
            )));
        }
        let body = self.body();
        let (signer, signature) = key.sign_as(body.as_bytes()).map_err(|e| CheckpointError::WrongKey(e.to_string()))?;
        let id = key_id(&self.origin, &signer.to_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&id);
        blob.extend_from_slice(&signature);
        Ok(format!("{body}\n{SIGNATURE_PREFIX}{} {}\n", self.origin, STANDARD.encode(blob)))
    }
}

/// A note signer's key id: the first four bytes of
/// `SHA-256(name || "\n" || 0x01 || public key)`.
pub fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ED25519]);
    hasher.update(public);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Who may sign a checkpoint: a signer name and its ed25519 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// The ledger's public key under the signer name `name` (the origin).
    pub fn new(name: &str, key: &PublicKey) -> Result<NoteVerifier, CheckpointError> {
        if key.role() != KeyRole::Ledger {
            return Err(CheckpointError::WrongKey(format!(
                "checkpoints are verified with the ledger key, not the {} key",
                key.role().as_str()
            )));
        }
        let key = VerifyingKey::from_bytes(&key.to_bytes()).map_err(|e| CheckpointError::WrongKey(e.to_string()))?;
        Ok(NoteVerifier { name: name.to_owned(), key })
    }

    /// Reads a verifier key string `NAME+KEYID+base64(0x01 || key)`.
    pub fn parse(vkey: &str) -> Result<NoteVerifier, CheckpointError> {
        let bad = |why: &str| CheckpointError::WrongKey(format!("verifier key {:?}: {why}", vkey.trim()));
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected NAME+KEYID+KEY"));
        };
        let key = STANDARD.decode(key).map_err(|_| bad("the key is not base64"))?;
        let Some((&ED25519, raw)) = key.split_first() else { return Err(bad("not an ed25519 key")) };
        let raw: [u8; 32] = raw.try_into().map_err(|_| bad("an ed25519 key is 32 bytes"))?;
        if format!("{:08x}", u32::from_be_bytes(key_id(name, &raw))) != id {
            return Err(bad("the key id does not match the name and key"));
        }
        let key = VerifyingKey::from_bytes(&raw).map_err(|e| bad(&e.to_string()))?;
        Ok(NoteVerifier { name: name.to_owned(), key })
    }

    /// The signer name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key string, for watchers and other C2SP tools.
    pub fn to_vkey(&self) -> String {
        let raw = self.key.to_bytes();
        let mut key = vec![ED25519];
        key.extend_from_slice(&raw);
        format!("{}+{:08x}+{}", self.name, u32::from_be_bytes(key_id(&self.name, &raw)), STANDARD.encode(key))
    }

    /// Checks a signed checkpoint and returns what it says. The signature
    /// must be by this key under this name, and the origin must be this name.
    pub fn open(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
        let split = note.rfind("\n\n").ok_or_else(|| malformed("no empty line before the signatures"))?;
        let (body, signatures) = (&note[..split + 1], &note[split + 2..]);
        if !signatures.ends_with('\n') {
            return Err(malformed("the signature lines do not end with a newline"));
        }
        let id = key_id(&self.name, &self.key.to_bytes());
        let mut signed = false;
        for line in signatures.lines() {
            let line = line.strip_prefix(SIGNATURE_PREFIX).ok_or_else(|| malformed("a signature line lacks '— '"))?;
            let (name, blob) = line.split_once(' ').ok_or_else(|| malformed("a signature line lacks its name"))?;
            let blob = STANDARD.decode(blob).map_err(|_| malformed("a signature is not base64"))?;
            if name != self.name || blob.len() < 4 || blob[..4] != id {
                continue;
            }
            let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
            self.key
                .verify(body.as_bytes(), &signature)
                .map_err(|_| CheckpointError::BadSignature(self.name.clone()))?;
            signed = true;
        }
        if !signed {
            return Err(CheckpointError::Unsigned(self.to_vkey()));
        }
        let checkpoint = Checkpoint::parse_body(body)?;
        if checkpoint.origin != self.name {
            return Err(CheckpointError::WrongKey(format!(
                "the checkpoint is of log {:?}, not {:?}",
                checkpoint.origin, self.name
            )));
        }
        Ok(checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    fn signed() -> (ServiceKey, Checkpoint, String) {
        let key = ServiceKey::generate(KeyRole::Ledger);
        let checkpoint = Checkpoint { origin: "custody.example".into(), size: 42, root: leaf_hash(b"x") };
        let note = checkpoint.sign(&key).unwrap();
        (key, checkpoint, note)
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_key_and_its_verifier_string() {
        let (key, checkpoint, note) = signed();
        let verifier = NoteVerifier::new("custody.example", &key.public()).unwrap();
        assert_eq!(verifier.open(&note).unwrap(), checkpoint);
        assert_eq!(NoteVerifier::parse(&verifier.to_vkey()).unwrap(), verifier);
        assert!(note.starts_with("custody.example\n42\n"));
    }

    #[test]
    fn an_altered_checkpoint_or_another_key_is_refused() {
        let (key, _, note) = signed();
        let verifier = NoteVerifier::new("custody.example", &key.public()).unwrap();
        let altered = note.replacen("\n42\n", "\n41\n", 1);
        assert!(matches!(verifier.open(&altered), Err(CheckpointError::BadSignature(_))));
        let other = NoteVerifier::new("custody.example", &ServiceKey::generate(KeyRole::Ledger).public()).unwrap();
        assert!(matches!(other.open(&note), Err(CheckpointError::Unsigned(_))));
        assert!(Checkpoint { origin: "x".into(), size: 1, root: [0; 32] }
            .sign(&ServiceKey::generate(KeyRole::Gate))
            .is_err());
    }
}
