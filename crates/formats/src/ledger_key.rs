//! What the ledger's writer keeps outside the database, so that whoever can
//! write the database cannot forge or roll back what custody recorded:
//!
//! - the **event key**, a 32-byte secret in `keys/`, under which every audit
//!   event is authenticated as it is appended (HMAC-SHA-256 over its leaf
//!   hash and the sequence number of the previous event about the same
//!   subject), and from which the key that hashes bearer tokens is derived;
//! - the **anchor**, a small file in `keys/` holding the newest tree head the
//!   writer committed, replaced atomically (and fsynced) after every commit
//!   and before any client of that commit is answered, so that a database
//!   truncated or restored from an older copy no longer extends it.
//!
//! Neither is evidence for an auditor (a MAC convinces only its key's
//! holder); they let the instance itself refuse facts it did not write.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::keys::KeyError;
use crate::merkle::Hash;

type HmacSha256 = Hmac<Sha256>;

/// The secret that authenticates audit events and keys bearer-secret hashes.
#[derive(Clone)]
pub struct EventKey {
    key: [u8; 32],
}

impl std::fmt::Debug for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventKey(…)")
    }
}

/// An event's authentication tag.
pub type EventMac = [u8; 32];

const EVENT_LABEL: &[u8] = b"custody event v1\n";
const TOKEN_LABEL: &[u8] = b"custody token v1\n";
const SEAL_LABEL: &[u8] = b"custody seal v1\n";
const ROW_LABEL: &[u8] = b"custody row v1\n";

impl EventKey {
    /// A key from its bytes.
    pub fn from_bytes(key: [u8; 32]) -> EventKey {
        EventKey { key }
    }

    /// A new random key (for tests and new instances).
    pub fn generate() -> EventKey {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        EventKey { key }
    }

    /// Reads the key at `path`, or makes one there (mode 0600).
    pub fn load_or_create(path: &Path) -> Result<EventKey, KeyError> {
        Ok(EventKey { key: crate::keys::load_or_create_secret(path, "the event key")? })
    }

    /// Reads the key at `path`, or `None` when there is none (never makes one).
    pub fn load(path: &Path) -> Result<Option<EventKey>, KeyError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::load_or_create(path).map(Some)
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// The tag of the event whose leaf hash is `leaf`, chained to `prev`:
    /// the sequence number of the previous event about the same subject (0
    /// for the first).
    pub fn event_mac(&self, leaf: &Hash, prev: i64) -> EventMac {
        let mut mac = self.mac();
        mac.update(EVENT_LABEL);
        mac.update(leaf);
        mac.update(&prev.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the event's tag, compared in constant time.
    pub fn verify_event(&self, leaf: &Hash, prev: i64, tag: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(EVENT_LABEL);
        mac.update(leaf);
        mac.update(&prev.to_be_bytes());
        mac.verify_slice(tag).is_ok()
    }

    /// The tag of a subject's seal: the digest of its rows as of event
    /// `seq`, the newest event about it when the rows were last written.
    pub fn seal_mac(&self, subject: &str, seq: i64, digest: &Hash) -> EventMac {
        self.seal(subject, seq, digest).finalize().into_bytes().into()
    }

    /// Whether `tag` is the seal's tag, compared in constant time.
    pub fn verify_seal(&self, subject: &str, seq: i64, digest: &Hash, tag: &[u8]) -> bool {
        self.seal(subject, seq, digest).verify_slice(tag).is_ok()
    }

    fn seal(&self, subject: &str, seq: i64, digest: &Hash) -> HmacSha256 {
        let mut mac = self.mac();
        mac.update(SEAL_LABEL);
        mac.update(&(subject.len() as u64).to_be_bytes());
        mac.update(subject.as_bytes());
        mac.update(&seq.to_be_bytes());
        mac.update(digest);
        mac
    }

    /// The tag of a row written once and never changed (a commit's record):
    /// its table and its fields, each length-prefixed.
    pub fn row_mac(&self, table: &str, fields: &[&str]) -> EventMac {
        let mut mac = self.mac();
        mac.update(ROW_LABEL);
        for field in std::iter::once(&table).chain(fields) {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// What a bearer secret (a token's, an invite's) is stored as: a keyed
    /// hash of the secret's SHA-256 digest bound to the row it belongs to
    /// (`bound`: its id, owner, scopes, expiry), so that a row written into
    /// the database without this key matches no secret, and a row moved to
    /// another owner or given other scopes no longer matches its own.
    pub fn secret_hash(&self, bound: &str, secret_digest: &str) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(TOKEN_LABEL);
        mac.update(&(bound.len() as u64).to_be_bytes());
        mac.update(bound.as_bytes());
        mac.update(secret_digest.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The newest tree head a writer committed, as kept outside the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// How many events the tree covered.
    pub size: u64,
    /// Its head.
    pub root: Hash,
    /// Events up to this sequence number were written before events were
    /// authenticated (an upgraded instance): they carry no tag, and only the
    /// tree and its checkpoints vouch for them. Fixed when the anchor is
    /// first made.
    pub legacy: u64,
}

/// Why an anchor could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("ledger anchor {path}: {why}")]
pub struct AnchorError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub why: String,
}

/// The anchor's file: replaced whole (write, fsync, rename, fsync the
/// directory), so that it always holds one complete tree head.
#[derive(Clone, Debug)]
pub struct AnchorFile {
    path: PathBuf,
}

impl AnchorFile {
    /// The anchor kept at `path`.
    pub fn new(path: impl Into<PathBuf>) -> AnchorFile {
        AnchorFile { path: path.into() }
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, why: impl ToString) -> AnchorError {
        AnchorError { path: self.path.display().to_string(), why: why.to_string() }
    }

    /// The anchor, or `None` when none was ever written.
    pub fn load(&self) -> Result<Option<Anchor>, AnchorError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let mut fields = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once(' ') {
                fields.insert(k, v);
            }
        }
        let field = |name: &str| fields.get(name).copied().ok_or_else(|| self.error(format!("no {name} line")));
        let number = |name: &str| -> Result<u64, AnchorError> {
            field(name)?.parse().map_err(|e| self.error(format!("{name}: {e}")))
        };
        let root: Hash = hex_decode(field("root")?).ok_or_else(|| self.error("root is not 32 bytes of hex"))?;
        Ok(Some(Anchor { size: number("size")?, root, legacy: number("legacy")? }))
    }

    /// Replaces the anchor, durably, before returning.
    pub fn save(&self, anchor: &Anchor) -> Result<(), AnchorError> {
        let text = format!(
            "custody ledger anchor v1\nsize {}\nroot {}\nlegacy {}\n",
            anchor.size,
            hex::encode(anchor.root),
            anchor.legacy
        );
        // Several processes sharing a data directory each write their own
        // temporary file; whichever renames last leaves a committed head.
        let temporary = self.path.with_extension(format!("tmp.{}.{}", std::process::id(), rand::random::<u32>()));
        let write = || -> std::io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| self.error(e))
    }
}

fn hex_decode(text: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_tag_binds_its_leaf_and_its_predecessor() {
        let key = EventKey::generate();
        let leaf = [7u8; 32];
        let tag = key.event_mac(&leaf, 3);
        assert!(key.verify_event(&leaf, 3, &tag));
        assert!(!key.verify_event(&leaf, 2, &tag), "another predecessor");
        assert!(!key.verify_event(&[8u8; 32], 3, &tag), "another event");
        assert!(!EventKey::generate().verify_event(&leaf, 3, &tag), "another key");
    }

    #[test]
    fn a_secret_hash_needs_the_key_and_binds_its_row() {
        let key = EventKey::generate();
        assert_eq!(key.secret_hash("token\nabc\n7", "digest"), key.secret_hash("token\nabc\n7", "digest"));
        assert_ne!(key.secret_hash("token\nabc\n7", "digest"), key.secret_hash("token\nabc\n8", "digest"));
        assert_ne!(
            key.secret_hash("token\nabc\n7", "digest"),
            EventKey::generate().secret_hash("token\nabc\n7", "digest")
        );
    }

    #[test]
    fn the_anchor_file_round_trips_and_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = AnchorFile::new(dir.path().join("ledger.anchor"));
        assert_eq!(file.load().unwrap(), None);
        let anchor = Anchor { size: 42, root: [9u8; 32], legacy: 5 };
        file.save(&anchor).unwrap();
        assert_eq!(file.load().unwrap(), Some(anchor));
        file.save(&Anchor { size: 43, ..anchor }).unwrap();
        assert_eq!(file.load().unwrap().unwrap().size, 43);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ledger.anchor")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("ledger.anchor"), "size 1\nroot zz\nlegacy 0\n").unwrap();
        assert!(file.load().is_err(), "a damaged anchor is an error, not an absent one");
    }
}
