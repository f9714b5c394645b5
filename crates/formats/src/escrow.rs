//! Key escrow: an instance's private keys, sealed under a passphrase, kept
//! apart from its backups.
//!
//! A backup holds no key (whoever holds a backup with keys holds the keys).
//! The keys travel separately in an escrow file: the key files' bytes
//! encrypted with XChaCha20-Poly1305 under a key derived from a passphrase
//! with argon2id (RFC 9106). The file's header (instance, time, the public
//! ids of the keys inside, the derivation's parameters) is authenticated as
//! associated data, so an escrow that was edited does not open.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

/// The media type of an escrow file.
pub const ESCROW_MEDIA_TYPE: &str = "application/vnd.custody.key-escrow.v1+json";

/// The files an escrow may hold, each once.
pub const KEY_FILES: [&str; 8] = [
    "builder.pem",
    "gate.pem",
    "deployer.pem",
    "ledger.pem",
    "event.key",
    "secrets.key",
    "event.key.wrapped",
    "secrets.key.wrapped",
];

/// The shortest passphrase accepted.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// argon2id's memory cost for new escrows, in KiB (RFC 9106's second
/// recommended setting: 64 MiB, three passes).
const MEMORY_KIB: u32 = 64 * 1024;
/// argon2id's passes for new escrows.
const ITERATIONS: u32 = 3;
/// argon2id's lanes for new escrows.
const LANES: u32 = 4;
/// The most memory an escrow may ask to be opened with (1 GiB): a file
/// cannot make its reader allocate without bound.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// The most passes an escrow may ask for.
const MAX_ITERATIONS: u32 = 64;
/// The most lanes an escrow may ask for.
const MAX_LANES: u32 = 64;

/// Why an escrow could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum EscrowError {
    /// The passphrase is too short to protect keys.
    #[error("the passphrase is too short: use at least {MIN_PASSPHRASE_CHARS} characters")]
    WeakPassphrase,
    /// The file is not an escrow this version reads.
    #[error("not a custody key escrow: {0}")]
    Malformed(String),
    /// The passphrase is wrong, or the file was altered.
    #[error("the escrow does not open with this passphrase (a wrong passphrase, or the file was altered)")]
    WrongPassphrase,
}

/// What the derivation of the escrow's key used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// The random salt, base64.
    pub salt: String,
}

/// The public half of one escrowed file: its name and, for a service key,
/// the key's id, so that an operator sees which keys an escrow holds without
/// opening it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscrowedName {
    /// The file's name in the keys directory.
    pub file: String,
    /// The public key's id, for a service key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// The authenticated header of an escrow file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscrowHeader {
    /// Always [`ESCROW_MEDIA_TYPE`].
    pub media_type: String,
    /// The instance whose keys these are.
    pub instance: String,
    /// When the escrow was made (RFC 3339).
    pub created_at: String,
    /// The files inside.
    pub files: Vec<EscrowedName>,
    /// The key derivation.
    pub kdf: Kdf,
    /// The 24-byte nonce, base64.
    pub nonce: String,
}

/// An escrow file: its header and the sealed files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EscrowFile {
    #[serde(flatten)]
    header: EscrowHeader,
    /// The files' bytes, sealed, base64.
    ciphertext: String,
}

/// One file of a keys directory.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    /// Its name.
    pub file: String,
    /// Its bytes, base64 inside the sealed part.
    #[serde(with = "b64_bytes")]
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile").field("file", &self.file).finish_non_exhaustive()
    }
}

mod b64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn derive(passphrase: &str, kdf: &Kdf) -> Result<[u8; 32], EscrowError> {
    if kdf.algorithm != "argon2id" {
        return Err(EscrowError::Malformed(format!("key derivation {:?} is not argon2id", kdf.algorithm)));
    }
    if kdf.memory_kib > MAX_MEMORY_KIB || kdf.iterations > MAX_ITERATIONS || kdf.parallelism > MAX_LANES {
        return Err(EscrowError::Malformed(format!(
            "it asks for {} KiB, {} passes and {} lanes to open, beyond {MAX_MEMORY_KIB} KiB, {MAX_ITERATIONS} and \
             {MAX_LANES}",
            kdf.memory_kib, kdf.iterations, kdf.parallelism
        )));
    }
    let salt = b64().decode(&kdf.salt).map_err(|e| EscrowError::Malformed(format!("salt: {e}")))?;
    let params = Params::new(kdf.memory_kib, kdf.iterations, kdf.parallelism, Some(32))
        .map_err(|e| EscrowError::Malformed(format!("argon2id parameters: {e}")))?;
    let mut key = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), &salt, &mut key)
        .map_err(|e| EscrowError::Malformed(format!("argon2id: {e}")))?;
    Ok(key)
}

fn associated_data(header: &EscrowHeader) -> Vec<u8> {
    serde_json::to_vec(header).expect("a header serialises")
}

/// Seals `files` of `instance` under `passphrase`; returns the escrow
/// file's text and its header.
pub fn seal(
    instance: &str,
    created_at: &str,
    files: Vec<(KeyFile, Option<String>)>,
    passphrase: &str,
) -> Result<(String, EscrowHeader), EscrowError> {
    if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(EscrowError::WeakPassphrase);
    }
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let kdf = Kdf {
        algorithm: "argon2id".into(),
        memory_kib: MEMORY_KIB,
        iterations: ITERATIONS,
        parallelism: LANES,
        salt: b64().encode(salt),
    };
    let names = files.iter().map(|(f, key_id)| EscrowedName { file: f.file.clone(), key_id: key_id.clone() }).collect();
    let header = EscrowHeader {
        media_type: ESCROW_MEDIA_TYPE.into(),
        instance: instance.into(),
        created_at: created_at.into(),
        files: names,
        kdf,
        nonce: b64().encode(nonce),
    };
    let key = derive(passphrase, &header.kdf)?;
    let plain: Vec<KeyFile> = files.into_iter().map(|(f, _)| f).collect();
    let plain = zeroising(serde_json::to_vec(&plain).expect("files serialise"));
    let sealed = XChaCha20Poly1305::new(&key.into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain.0, aad: &associated_data(&header) })
        .expect("sealing into memory does not fail");
    let file = EscrowFile { header: header.clone(), ciphertext: b64().encode(sealed) };
    let text = serde_json::to_string_pretty(&file).expect("an escrow serialises") + "\n";
    Ok((text, header))
}

/// The header of an escrow file, read without opening it.
pub fn header(text: &str) -> Result<EscrowHeader, EscrowError> {
    Ok(parse(text)?.header)
}

fn parse(text: &str) -> Result<EscrowFile, EscrowError> {
    let file: EscrowFile = serde_json::from_str(text).map_err(|e| EscrowError::Malformed(e.to_string()))?;
    if file.header.media_type != ESCROW_MEDIA_TYPE {
        return Err(EscrowError::Malformed(format!(
            "media type {:?} is not {ESCROW_MEDIA_TYPE}",
            file.header.media_type
        )));
    }
    Ok(file)
}

/// Opens an escrow file with `passphrase`: its header and its files.
pub fn open(text: &str, passphrase: &str) -> Result<(EscrowHeader, Vec<KeyFile>), EscrowError> {
    let file = parse(text)?;
    let nonce = b64().decode(&file.header.nonce).map_err(|e| EscrowError::Malformed(format!("nonce: {e}")))?;
    if nonce.len() != 24 {
        return Err(EscrowError::Malformed("the nonce is not 24 bytes".into()));
    }
    let sealed = b64().decode(&file.ciphertext).map_err(|e| EscrowError::Malformed(format!("ciphertext: {e}")))?;
    let key = derive(passphrase, &file.header.kdf)?;
    let plain = XChaCha20Poly1305::new(&key.into())
        .decrypt(XNonce::from_slice(&nonce), Payload { msg: &sealed, aad: &associated_data(&file.header) })
        .map_err(|_| EscrowError::WrongPassphrase)?;
    let plain = zeroising(plain);
    let files: Vec<KeyFile> =
        serde_json::from_slice(&plain.0).map_err(|e| EscrowError::Malformed(format!("sealed files: {e}")))?;
    let named: Vec<&str> = file.header.files.iter().map(|f| f.file.as_str()).collect();
    if files.iter().map(|f| f.file.as_str()).ne(named.iter().copied()) {
        return Err(EscrowError::Malformed("the sealed files are not the files its header names".into()));
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &files {
        if !KEY_FILES.contains(&f.file.as_str()) || !seen.insert(f.file.as_str()) {
            return Err(EscrowError::Malformed(format!(
                "{:?} is not a key file's name, or is there twice (an escrow holds each of {} once at most)",
                f.file,
                KEY_FILES.join(", ")
            )));
        }
    }
    Ok((file.header, files))
}

/// Bytes overwritten with zeros when dropped.
struct Zeroising(Vec<u8>);

fn zeroising(bytes: Vec<u8>) -> Zeroising {
    Zeroising(bytes)
}

impl Drop for Zeroising {
    fn drop(&mut self) {
        self.0.fill(0);
        // Keeps the clearing from being optimised away before the free.
        std::hint::black_box(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<(KeyFile, Option<String>)> {
        vec![
            (KeyFile { file: "builder.pem".into(), bytes: b"-----BEGIN PRIVATE KEY-----".to_vec() }, Some("ab".into())),
            (KeyFile { file: "event.key".into(), bytes: vec![1, 2, 3] }, None),
        ]
    }

    #[test]
    fn an_escrow_opens_with_its_passphrase_only() {
        let (text, header) = seal("bank", "2026-12-03T00:00:00Z", files(), "correct horse battery").unwrap();
        assert_eq!(header.kdf.algorithm, "argon2id");
        let (opened, inside) = open(&text, "correct horse battery").unwrap();
        assert_eq!(opened, header);
        assert_eq!(inside, files().into_iter().map(|(f, _)| f).collect::<Vec<_>>());
        assert!(matches!(open(&text, "correct horse battery!"), Err(EscrowError::WrongPassphrase)));
        // The key's bytes never appear in the file.
        assert!(!text.contains("BEGIN PRIVATE KEY"), "{text}");
    }

    #[test]
    fn an_escrow_whose_header_was_edited_does_not_open() {
        let (text, _) = seal("bank", "2026-12-03T00:00:00Z", files(), "correct horse battery").unwrap();
        let edited = text.replace("\"bank\"", "\"other\"");
        assert_ne!(edited, text);
        assert!(matches!(open(&edited, "correct horse battery"), Err(EscrowError::WrongPassphrase)));
    }

    #[test]
    fn a_short_passphrase_is_refused_and_a_greedy_file_is_not_opened() {
        assert!(matches!(seal("bank", "t", files(), "short"), Err(EscrowError::WeakPassphrase)));
        let (text, _) = seal("bank", "t", files(), "correct horse battery").unwrap();
        let greedy = text.replace(&format!("\"memory_kib\": {MEMORY_KIB}"), "\"memory_kib\": 4000000000");
        assert_ne!(greedy, text);
        assert!(matches!(open(&greedy, "correct horse battery"), Err(EscrowError::Malformed(_))));
    }
}
