//! DSSE envelopes (Dead Simple Signing Envelope, v1.0), signed with ed25519.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::keys::{KeyError, PublicKey, ServiceKey};

/// The payload type of in-toto statements.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// A signed envelope as DSSE's JSON encoding defines it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Base64 of the payload bytes.
    pub payload: String,
    /// What the payload is.
    pub payload_type: String,
    /// Signatures over the PAE of type and payload.
    pub signatures: Vec<Signature>,
}

/// One signature in an envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signer's key id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyid: String,
    /// Base64 of the signature.
    pub sig: String,
}

/// DSSE's pre-authentication encoding: what is actually signed.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Why an envelope was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The payload or a signature is not valid base64.
    #[error("envelope is not valid base64: {0}")]
    Encoding(String),
    /// No signature by the expected key verifies.
    #[error("no signature by the {role} key {keyid} verifies")]
    Unsigned {
        /// The role expected.
        role: &'static str,
        /// The key expected.
        keyid: String,
    },
}

impl Envelope {
    /// Signs `payload` of `payload_type` with `key`; fails only when a key
    /// held outside the process cannot sign.
    pub fn sign(payload_type: &str, payload: &[u8], key: &ServiceKey) -> Result<Envelope, crate::keys::KeyError> {
        let (signer, signature) = key.sign_as(&pae(payload_type, payload))?;
        Ok(Envelope {
            payload: STANDARD.encode(payload),
            payload_type: payload_type.to_owned(),
            signatures: vec![Signature { keyid: signer.key_id(), sig: STANDARD.encode(signature) }],
        })
    }

    /// The envelope's digest, hex SHA-256 of its canonical JSON (keys
    /// sorted, no whitespace). The audit event that records a signed
    /// statement carries this digest, so that the event's inclusion in the
    /// ledger covers the envelope too, however its JSON was spelled.
    pub fn digest(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_default();
        let canonical = crate::event::canonical_json(&value);
        hex::encode(sha2::Sha256::digest(canonical.as_bytes()))
    }

    /// [`Envelope::digest`] of an envelope's JSON text, or `None` when the
    /// text is no envelope.
    pub fn digest_of_json(text: &str) -> Option<String> {
        serde_json::from_str::<Envelope>(text).ok().map(|e| e.digest())
    }

    /// Returns the payload if a signature by `key` verifies.
    pub fn verify(&self, key: &PublicKey) -> Result<Vec<u8>, EnvelopeError> {
        let payload = STANDARD.decode(&self.payload).map_err(|e| EnvelopeError::Encoding(e.to_string()))?;
        let message = pae(&self.payload_type, &payload);
        let verified = self.signatures.iter().any(|s| {
            STANDARD
                .decode(&s.sig)
                .map_err(|_| KeyError::BadSignature)
                .and_then(|sig| key.verify(&message, &sig))
                .is_ok()
        });
        if verified {
            Ok(payload)
        } else {
            Err(EnvelopeError::Unsigned { role: key.role().as_str(), keyid: key.key_id() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyRole;

    #[test]
    fn pae_matches_the_dsse_specification_example() {
        // The worked example of the DSSE v1 protocol document.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn an_envelope_verifies_only_with_the_key_of_its_duty() {
        let gate = ServiceKey::generate(KeyRole::Gate);
        let builder = ServiceKey::generate(KeyRole::Builder);
        let envelope = Envelope::sign(IN_TOTO_PAYLOAD_TYPE, br#"{"_type":"x"}"#, &gate).expect("a key in memory signs");
        assert_eq!(envelope.verify(&gate.public()).unwrap(), br#"{"_type":"x"}"#);
        assert!(envelope.verify(&builder.public()).is_err());
    }

    #[test]
    fn a_changed_payload_or_type_breaks_the_signature() {
        let gate = ServiceKey::generate(KeyRole::Gate);
        let mut envelope = Envelope::sign(IN_TOTO_PAYLOAD_TYPE, b"approved", &gate).expect("a key in memory signs");
        envelope.payload = STANDARD.encode(b"approvex");
        assert!(envelope.verify(&gate.public()).is_err());
        let mut envelope = Envelope::sign(IN_TOTO_PAYLOAD_TYPE, b"approved", &gate).expect("a key in memory signs");
        envelope.payload_type = "text/plain".into();
        assert!(envelope.verify(&gate.public()).is_err());
    }
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    #[test]
    fn an_envelopes_digest_is_over_its_canonical_json() {
        let envelope = Envelope {
            payload: "eyJhIjoxfQ==".into(),
            payload_type: IN_TOTO_PAYLOAD_TYPE.into(),
            signatures: vec![Signature { keyid: "ab".into(), sig: "c+d/".into() }],
        };
        // sha256 of {"payload":"eyJhIjoxfQ==","payloadType":"application/vnd.in-toto+json","signatures":[{"keyid":"ab","sig":"c+d/"}]},
        // as Python's json.dumps(sort_keys=True, separators=(",", ":")) writes it.
        assert_eq!(envelope.digest(), "6566fb550a477d3106b08b9ea6179c220104db8f9b9a1d08e6f1b0229cb2ea50");
    }
}
