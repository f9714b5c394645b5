//! The trust root of an offline verifier: an instance's public keys, each
//! with the duty it signs for and the period it was valid in.
//!
//! `custody trust export` writes it; an auditor keeps it apart from the
//! server (or compares it with a copy from the operator) and verifies
//! evidence bundles against it. A role may list several keys, so that a
//! rotated key keeps vouching for what it signed while it was current.

use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::keys::{KeyRole, PublicKey};

/// The media type of a trust file.
pub const TRUST_MEDIA_TYPE: &str = "application/vnd.custody.trust.v1+json";

/// An instance's public keys, by role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRoot {
    /// Always [`TRUST_MEDIA_TYPE`].
    pub media_type: String,
    /// The instance's name: the origin of its checkpoints.
    pub origin: String,
    /// Every key, current and retired.
    pub keys: Vec<TrustedKey>,
}

/// One public key, its role and when it was valid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// The duty it signs for.
    pub role: KeyRole,
    /// Hex SHA-256 of its SubjectPublicKeyInfo DER, as DSSE signatures name it.
    pub key_id: String,
    /// Always `ed25519`.
    pub algorithm: String,
    /// The key as SubjectPublicKeyInfo PEM.
    pub public_key: String,
    /// From when it signs (RFC 3339).
    pub not_before: String,
    /// Until when it signed (RFC 3339); `null` for the current key.
    pub not_after: Option<String>,
    /// Set when the key was revoked: nothing it signed from `since` on is
    /// trusted, whatever its validity says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// The revocation of a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// From when the key is not trusted (RFC 3339): when it was, or may
    /// have been, compromised.
    pub since: String,
    /// Why.
    pub reason: String,
}

/// Why a trust file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The file is not a trust root.
    #[error("not a custody trust file: {0}")]
    Malformed(String),
    /// A key in it cannot be read.
    #[error("the {role} key {key_id} in the trust file cannot be read: {why}")]
    BadKey {
        /// The key's role.
        role: &'static str,
        /// Its id.
        key_id: String,
        /// What is wrong.
        why: String,
    },
}

/// A key that was valid at some time, ready to verify.
#[derive(Clone, Debug)]
pub struct ValidKey {
    /// The key.
    pub key: PublicKey,
    /// Its validity, in milliseconds since the epoch.
    pub not_before_ms: i64,
    /// The end of its validity, when retired.
    pub not_after_ms: Option<i64>,
    /// From when it is revoked, and why.
    pub revoked: Option<(i64, String)>,
}

impl ValidKey {
    /// Whether the key was valid at `at_ms`: within its validity and not
    /// revoked by then.
    pub fn valid_at(&self, at_ms: i64) -> bool {
        at_ms >= self.not_before_ms
            && self.not_after_ms.is_none_or(|end| at_ms <= end)
            && self.revoked.as_ref().is_none_or(|(since, _)| at_ms < *since)
    }

    /// The revocation that makes the key untrusted at `at_ms`, if one does.
    pub fn revoked_at(&self, at_ms: i64) -> Option<&(i64, String)> {
        self.revoked.as_ref().filter(|(since, _)| at_ms >= *since)
    }
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339_of_millis(ms: i64) -> String {
    let time =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let time = time.replace_nanosecond(time.millisecond() as u32 * 1_000_000).unwrap_or(time);
    time.format(&Rfc3339).unwrap_or_default()
}

/// RFC 3339 as milliseconds since the epoch.
pub fn millis_of_rfc3339(text: &str) -> Option<i64> {
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

impl TrustedKey {
    /// The entry for `key`, valid from `not_before_ms` on.
    pub fn current(key: &PublicKey, not_before_ms: i64) -> TrustedKey {
        TrustedKey {
            role: key.role(),
            key_id: key.key_id(),
            algorithm: "ed25519".into(),
            public_key: key.to_pem(),
            not_before: rfc3339_of_millis(not_before_ms),
            not_after: None,
            revoked: None,
        }
    }

    /// The key, checked: its PEM decodes, its id matches, its times parse.
    pub fn open(&self) -> Result<ValidKey, TrustError> {
        let bad = |why: String| TrustError::BadKey { role: self.role.as_str(), key_id: self.key_id.clone(), why };
        if self.algorithm != "ed25519" {
            return Err(bad(format!("algorithm {:?} is not ed25519", self.algorithm)));
        }
        let key = VerifyingKey::from_public_key_pem(&self.public_key).map_err(|e| bad(e.to_string()))?;
        let key = PublicKey::from_verifying_key(self.role, key);
        if key.key_id() != self.key_id {
            return Err(bad(format!("its key id is {}, not {}", key.key_id(), self.key_id)));
        }
        let not_before_ms =
            millis_of_rfc3339(&self.not_before).ok_or_else(|| bad("not_before is not an RFC 3339 time".into()))?;
        let not_after_ms = match &self.not_after {
            Some(t) => Some(millis_of_rfc3339(t).ok_or_else(|| bad("not_after is not an RFC 3339 time".into()))?),
            None => None,
        };
        let revoked = match &self.revoked {
            Some(r) => Some((
                millis_of_rfc3339(&r.since).ok_or_else(|| bad("revoked.since is not an RFC 3339 time".into()))?,
                r.reason.clone(),
            )),
            None => None,
        };
        Ok(ValidKey { key, not_before_ms, not_after_ms, revoked })
    }
}

impl TrustRoot {
    /// A trust root of `origin` holding `keys`.
    pub fn new(origin: &str, keys: Vec<TrustedKey>) -> TrustRoot {
        TrustRoot { media_type: TRUST_MEDIA_TYPE.into(), origin: origin.into(), keys }
    }

    /// Reads a trust file.
    pub fn parse(text: &str) -> Result<TrustRoot, TrustError> {
        let root: TrustRoot = serde_json::from_str(text).map_err(|e| TrustError::Malformed(e.to_string()))?;
        if root.media_type != TRUST_MEDIA_TYPE {
            return Err(TrustError::Malformed(format!("media type {:?} is not {TRUST_MEDIA_TYPE}", root.media_type)));
        }
        Ok(root)
    }

    /// Every key, opened; fails on the first that cannot be read.
    pub fn open(&self) -> Result<Vec<ValidKey>, TrustError> {
        self.keys.iter().map(TrustedKey::open).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceKey;

    #[test]
    fn a_trust_file_reads_back_and_its_keys_verify() {
        let key = ServiceKey::generate(KeyRole::Builder);
        let root = TrustRoot::new("bank", vec![TrustedKey::current(&key.public(), 1_700_000_000_123)]);
        let text = serde_json::to_string_pretty(&root).unwrap();
        let read = TrustRoot::parse(&text).unwrap();
        assert_eq!(read, root);
        let opened = read.open().unwrap();
        assert_eq!(opened[0].key, key.public());
        assert_eq!(opened[0].not_before_ms, 1_700_000_000_123);
        assert!(opened[0].valid_at(1_700_000_000_123) && !opened[0].valid_at(1_700_000_000_122));
    }

    #[test]
    fn a_key_whose_id_does_not_match_is_refused() {
        let key = ServiceKey::generate(KeyRole::Gate);
        let mut entry = TrustedKey::current(&key.public(), 0);
        entry.key_id = "00".repeat(32);
        assert!(matches!(entry.open(), Err(TrustError::BadKey { .. })));
    }
}
