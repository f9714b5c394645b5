//! in-toto Statement v1: what an envelope's payload says, about which subjects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `_type` of every in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// An in-toto Statement v1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// Always [`STATEMENT_TYPE`].
    #[serde(rename = "_type")]
    pub statement_type: String,
    /// What the statement is about.
    pub subject: Vec<Subject>,
    /// What kind of predicate follows.
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// The predicate itself.
    pub predicate: serde_json::Value,
}

/// A subject: a name and its digests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// A name for people.
    pub name: String,
    /// Digests by algorithm (`sha256`, `gitCommit`).
    pub digest: BTreeMap<String, String>,
}

impl Statement {
    /// A statement of `predicate_type` about `subject`.
    pub fn new(subject: Vec<Subject>, predicate_type: &str, predicate: serde_json::Value) -> Statement {
        Statement {
            statement_type: STATEMENT_TYPE.to_owned(),
            subject,
            predicate_type: predicate_type.to_owned(),
            predicate,
        }
    }

    /// Signs the statement into a DSSE envelope with `key`; fails only when
    /// a key held outside the process cannot sign.
    pub fn sign(&self, key: &crate::ServiceKey) -> Result<crate::Envelope, crate::keys::KeyError> {
        let payload = serde_json::to_vec(self).unwrap_or_default();
        crate::Envelope::sign(crate::dsse::IN_TOTO_PAYLOAD_TYPE, &payload, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyRole, ServiceKey};

    #[test]
    fn a_signed_statement_verifies_and_reads_back() {
        let gate = ServiceKey::generate(KeyRole::Gate);
        let subject =
            Subject { name: "payments@main".into(), digest: BTreeMap::from([("gitCommit".into(), "ab".repeat(20))]) };
        let statement =
            Statement::new(vec![subject], crate::attestation::CHANGE_PREDICATE, serde_json::json!({ "change": 1 }));
        let envelope = statement.sign(&gate).expect("a key in memory signs");
        let payload = envelope.verify(&gate.public()).unwrap();
        let read: Statement = serde_json::from_slice(&payload).unwrap();
        assert_eq!(read, statement);
        assert_eq!(read.statement_type, STATEMENT_TYPE);
    }
}
