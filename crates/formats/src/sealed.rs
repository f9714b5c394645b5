//! Environment secrets at rest: sealed with XChaCha20-Poly1305 under a key
//! kept in the data directory, each bound to its slot (project, environment,
//! name and version) so that a sealed value moved to another slot no longer
//! opens.

use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;

use crate::keys::KeyError;

/// The key that seals environment secrets.
pub struct SealingKey {
    key: [u8; 32],
}

/// A sealed value: base64 of the nonce and of the ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The 24-byte nonce, base64.
    pub nonce: String,
    /// The ciphertext with its tag, base64.
    pub ciphertext: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl SealingKey {
    /// A new random key.
    pub fn generate() -> SealingKey {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        SealingKey { key }
    }

    /// The key of these 32 bytes.
    pub fn from_bytes(key: [u8; 32]) -> SealingKey {
        SealingKey { key }
    }

    /// Reads the key at `path`, or makes one there (mode 0600) when there is
    /// none yet.
    pub fn load_or_create(path: &Path) -> Result<SealingKey, KeyError> {
        Ok(SealingKey { key: crate::keys::load_or_create_secret(path, "a sealing key")? })
    }

    /// Seals `value` for `slot`.
    pub fn seal(&self, slot: &str, value: &[u8]) -> Sealed {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = XChaCha20Poly1305::new(&self.key.into());
        let ciphertext = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: value, aad: slot.as_bytes() })
            .expect("sealing into memory does not fail");
        Sealed { nonce: b64().encode(nonce), ciphertext: b64().encode(ciphertext) }
    }

    /// Opens a value sealed for `slot`; `None` when it was not sealed for
    /// this slot with this key, or was altered.
    pub fn open(&self, slot: &str, sealed: &Sealed) -> Option<Vec<u8>> {
        let nonce: [u8; 24] = b64().decode(&sealed.nonce).ok()?.try_into().ok()?;
        let ciphertext = b64().decode(&sealed.ciphertext).ok()?;
        let cipher = XChaCha20Poly1305::new(&self.key.into());
        cipher.decrypt(XNonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: slot.as_bytes() }).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_in_its_own_slot_and_unaltered() {
        let key = SealingKey::generate();
        let sealed = key.seal("payments/production/DB_PASSWORD/1", b"hunter2");
        assert!(!sealed.ciphertext.contains("hunter2"));
        assert_eq!(key.open("payments/production/DB_PASSWORD/1", &sealed).as_deref(), Some(&b"hunter2"[..]));
        assert_eq!(key.open("payments/staging/DB_PASSWORD/1", &sealed), None, "moved to another slot");
        assert_eq!(SealingKey::generate().open("payments/production/DB_PASSWORD/1", &sealed), None, "another key");
        let mut altered = sealed.clone();
        altered.ciphertext = b64().encode(b"not the ciphertext at all");
        assert_eq!(key.open("payments/production/DB_PASSWORD/1", &altered), None);
    }

    #[test]
    fn the_key_file_is_made_once_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let made = SealingKey::load_or_create(&path).unwrap();
        let sealed = made.seal("slot", b"value");
        let read = SealingKey::load_or_create(&path).unwrap();
        assert_eq!(read.open("slot", &sealed).as_deref(), Some(&b"value"[..]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
