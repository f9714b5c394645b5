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
        let body = self.body();
        let line = self.sign_body(&body, key)?;
        Ok(format!("{body}\n{line}"))
    }

    /// One signature line by `key` over `body`, under the origin's name.
    fn sign_body(&self, body: &str, key: &ServiceKey) -> Result<String, CheckpointError> {
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
        let (signer, signature) = key.sign_as(body.as_bytes()).map_err(|e| CheckpointError::WrongKey(e.to_string()))?;
        let id = key_id(&self.origin, &signer.to_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&id);
        blob.extend_from_slice(&signature);
        Ok(format!("{SIGNATURE_PREFIX}{} {}\n", self.origin, STANDARD.encode(blob)))
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

/// The extension line of a handover that names the key handing over.
const HANDOVER_FROM: &str = "custody-ledger-key-from ";
/// The extension line of a handover that names the key taking over.
const HANDOVER_TO: &str = "custody-ledger-key-to ";

/// A ledger-key handover: a checkpoint whose body names the ledger key that
/// signed the log up to it and the key that signs it from it on, signed by
/// both. A watcher pinned to the old key follows the log to the new one
/// only through such a note; the old key signs no checkpoint larger than it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover {
    /// The tree it covers: the rotation's event is in it.
    pub checkpoint: Checkpoint,
    /// The key that hands over.
    pub from: NoteVerifier,
    /// The key that takes over.
    pub to: NoteVerifier,
}

impl Handover {
    /// The handover's body: the checkpoint's, then the two keys' lines.
    fn body(checkpoint: &Checkpoint, from: &NoteVerifier, to: &NoteVerifier) -> String {
        format!("{}{HANDOVER_FROM}{}\n{HANDOVER_TO}{}\n", checkpoint.body(), from.to_vkey(), to.to_vkey())
    }

    /// Signs the handover of `checkpoint` from the ledger key `old` to `new`
    /// as one signed note carrying both signatures.
    pub fn sign(checkpoint: &Checkpoint, old: &ServiceKey, new: &ServiceKey) -> Result<String, CheckpointError> {
        let from = NoteVerifier::new(&checkpoint.origin, &old.public())?;
        let to = NoteVerifier::new(&checkpoint.origin, &new.public())?;
        if from == to {
            return Err(CheckpointError::WrongKey("a ledger key cannot hand over to itself".into()));
        }
        let body = Handover::body(checkpoint, &from, &to);
        let mut note = format!("{body}\n");
        for key in [old, new] {
            let signed = checkpoint.sign_body(&body, key)?;
            note.push_str(&signed);
        }
        Ok(note)
    }

    /// Reads a handover note and checks both signatures: by the key it
    /// hands over from and by the key it hands over to.
    pub fn open(note: &str) -> Result<Handover, CheckpointError> {
        let malformed = |why: &str| CheckpointError::Malformed(why.to_owned());
        let split = note.rfind("\n\n").ok_or_else(|| malformed("no empty line before the signatures"))?;
        let body = &note[..split + 1];
        let lines: Vec<&str> = body.lines().collect();
        if lines.len() != 5 {
            return Err(malformed("a handover is a checkpoint followed by the old and the new key's lines"));
        }
        let from = lines[3].strip_prefix(HANDOVER_FROM).ok_or_else(|| malformed("no line naming the old key"))?;
        let to = lines[4].strip_prefix(HANDOVER_TO).ok_or_else(|| malformed("no line naming the new key"))?;
        let (from, to) = (NoteVerifier::parse(from)?, NoteVerifier::parse(to)?);
        if from == to {
            return Err(malformed("a ledger key cannot hand over to itself"));
        }
        let checkpoint = from.open(note)?;
        let by_new = to.open(note)?;
        if by_new != checkpoint || from.name() != to.name() {
            return Err(malformed("the two keys name different logs"));
        }
        Ok(Handover { checkpoint, from, to })
    }
}

/// The ledger keys a log was signed with, in order, each with the tree
/// sizes it signed: the pinned key, and every key reached from it through
/// handovers (forward to the keys that took over, back to the ones it took
/// over from). The key of a handover's size is both the old and the new one.
#[derive(Clone, Debug)]
pub struct KeyChain {
    /// Each key and the handover that made it current (none for the first).
    keys: Vec<(NoteVerifier, Option<Handover>)>,
}

impl KeyChain {
    /// The chain of one key.
    pub fn of(pinned: NoteVerifier) -> KeyChain {
        KeyChain { keys: vec![(pinned, None)] }
    }

    /// The chain from `pinned` through the handover notes `notes` that link
    /// to it; a note that does not open, or that links to no key of the
    /// chain, is returned with the reason in the second part.
    pub fn follow(pinned: NoteVerifier, notes: &[String]) -> (KeyChain, Vec<(usize, String)>) {
        let mut rejected = Vec::new();
        let mut open = Vec::new();
        for (i, note) in notes.iter().enumerate() {
            match Handover::open(note) {
                Ok(handover) => open.push((i, handover)),
                Err(e) => rejected.push((i, e.to_string())),
            }
        }
        let mut chain = KeyChain::of(pinned);
        // Forward, to the keys that took over: each handover at or after
        // the one before it.
        loop {
            let (last, since) = &chain.keys[chain.keys.len() - 1];
            let floor = since.as_ref().map_or(0, |h| h.checkpoint.size);
            let Some(at) = open.iter().position(|(_, h)| &h.from == last && h.checkpoint.size >= floor) else { break };
            let (_, handover) = open.remove(at);
            if chain.keys.iter().any(|(k, _)| k == &handover.to) {
                break;
            }
            chain.keys.push((handover.to.clone(), Some(handover)));
        }
        // Back, to the keys it took over from.
        loop {
            let ceiling = chain.keys.get(1).and_then(|(_, h)| h.as_ref()).map_or(u64::MAX, |h| h.checkpoint.size);
            let first = &chain.keys[0].0;
            let Some(at) = open.iter().position(|(_, h)| &h.to == first && h.checkpoint.size <= ceiling) else { break };
            let (_, handover) = open.remove(at);
            if chain.keys.iter().any(|(k, _)| k == &handover.from) {
                break;
            }
            chain.keys[0].1 = Some(handover.clone());
            chain.keys.insert(0, (handover.from, None));
        }
        rejected.extend(open.into_iter().map(|(i, h)| {
            (
                i,
                format!(
                    "it hands over from {} to {}, and neither key is in the chain followed",
                    h.from.to_vkey(),
                    h.to.to_vkey()
                ),
            )
        }));
        rejected.sort_by_key(|(i, _)| *i);
        (chain, rejected)
    }

    /// The newest key: the one that signs the log now.
    pub fn current(&self) -> &NoteVerifier {
        &self.keys[self.keys.len() - 1].0
    }

    /// The handovers followed, oldest first.
    pub fn handovers(&self) -> impl Iterator<Item = &Handover> {
        self.keys.iter().filter_map(|(_, h)| h.as_ref())
    }

    /// The handovers that led from `key` to the current key, oldest first.
    pub fn handovers_after<'a>(&'a self, key: &NoteVerifier) -> impl Iterator<Item = &'a Handover> {
        let start = self.keys.iter().position(|(k, _)| k == key).map_or(self.keys.len(), |i| i + 1);
        self.keys[start..].iter().filter_map(|(_, h)| h.as_ref())
    }

    /// The keys that may sign a checkpoint of `size` events: the key whose
    /// period holds it (two at a handover's size).
    fn keys_for(&self, size: u64) -> impl Iterator<Item = &NoteVerifier> {
        self.keys.iter().enumerate().filter_map(move |(i, (key, since))| {
            let from = since.as_ref().map_or(0, |h| h.checkpoint.size);
            let until = self.keys.get(i + 1).and_then(|(_, h)| h.as_ref()).map(|h| h.checkpoint.size);
            (size >= from && until.is_none_or(|until| size <= until)).then_some(key)
        })
    }

    /// Checks a signed checkpoint with the key of its size. A checkpoint
    /// signed by a key that had handed over before it is refused.
    pub fn open(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let body = note.rfind("\n\n").map_or(note, |split| &note[..split + 1]);
        let claimed = Checkpoint::parse_body(body)?;
        let mut last = None;
        for key in self.keys_for(claimed.size) {
            match key.open(note) {
                Ok(checkpoint) => return Ok(checkpoint),
                Err(e) => last = Some(e),
            }
        }
        if let Some((key, handover)) = self.keys.iter().enumerate().find_map(|(i, (key, _))| {
            let handover = self.keys.get(i + 1)?.1.as_ref()?;
            (handover.checkpoint.size < claimed.size && key.open(note).is_ok()).then_some((key, handover))
        }) {
            return Err(CheckpointError::WrongKey(format!(
                "the checkpoint of {} events is signed by the ledger key {}, which handed over to {} at {} events and \
                 signs nothing after",
                claimed.size,
                key.to_vkey(),
                handover.to.to_vkey(),
                handover.checkpoint.size
            )));
        }
        Err(last.unwrap_or_else(|| CheckpointError::Unsigned(self.current().to_vkey())))
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

    fn at(size: u64) -> Checkpoint {
        Checkpoint { origin: "custody.example".into(), size, root: leaf_hash(&size.to_be_bytes()) }
    }

    fn verifier(key: &ServiceKey) -> NoteVerifier {
        NoteVerifier::new("custody.example", &key.public()).unwrap()
    }

    #[test]
    fn a_watcher_pinned_to_the_old_key_follows_a_handover_and_the_new_key_reaches_back() {
        let (old, new) = (ServiceKey::generate(KeyRole::Ledger), ServiceKey::generate(KeyRole::Ledger));
        let handover = Handover::sign(&at(10), &old, &new).unwrap();
        let opened = Handover::open(&handover).unwrap();
        assert_eq!((opened.checkpoint.size, &opened.from, &opened.to), (10, &verifier(&old), &verifier(&new)));
        // Both signatures sit under the log's name: a C2SP verifier of
        // either key reads the note as an ordinary checkpoint.
        assert_eq!(verifier(&old).open(&handover).unwrap(), at(10));
        assert_eq!(verifier(&new).open(&handover).unwrap(), at(10));

        let (forward, rejected) = KeyChain::follow(verifier(&old), std::slice::from_ref(&handover));
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(forward.current(), &verifier(&new));
        assert_eq!(forward.open(&at(7).sign(&old).unwrap()).unwrap().size, 7);
        assert_eq!(forward.open(&at(10).sign(&old).unwrap()).unwrap().size, 10);
        assert_eq!(forward.open(&at(12).sign(&new).unwrap()).unwrap().size, 12);

        let (back, _) = KeyChain::follow(verifier(&new), &[handover]);
        assert_eq!(back.current(), &verifier(&new));
        assert_eq!(back.open(&at(7).sign(&old).unwrap()).unwrap().size, 7);
        assert_eq!(back.handovers().count(), 1);
    }

    #[test]
    fn the_old_key_signs_nothing_after_its_handover() {
        let (old, new) = (ServiceKey::generate(KeyRole::Ledger), ServiceKey::generate(KeyRole::Ledger));
        let (chain, _) = KeyChain::follow(verifier(&old), &[Handover::sign(&at(10), &old, &new).unwrap()]);
        let error = chain.open(&at(11).sign(&old).unwrap()).unwrap_err().to_string();
        assert!(error.contains("handed over") && error.contains("at 10 events"), "{error}");
        // Nor does the new key reach before it.
        assert!(chain.open(&at(9).sign(&new).unwrap()).is_err());
    }

    #[test]
    fn a_handover_signed_by_one_key_alone_or_from_a_stranger_is_not_followed() {
        let (old, new, thief) = (
            ServiceKey::generate(KeyRole::Ledger),
            ServiceKey::generate(KeyRole::Ledger),
            ServiceKey::generate(KeyRole::Ledger),
        );
        // The new key claims to take over from the old one, signing alone.
        let body = Handover::body(&at(10), &verifier(&old), &verifier(&new));
        let one_signature = format!("{body}\n{}", at(10).sign_body(&body, &new).unwrap());
        // A stranger's key hands over properly, to a key the watcher never knew.
        let genuine = Handover::sign(&at(10), &thief, &new).unwrap();
        assert!(Handover::open(&one_signature).is_err());
        let (chain, rejected) = KeyChain::follow(verifier(&old), &[one_signature, genuine]);
        assert_eq!(chain.current(), &verifier(&old));
        assert_eq!(rejected.len(), 2, "{rejected:?}");
        assert!(chain.open(&at(12).sign(&new).unwrap()).is_err());
    }
}
