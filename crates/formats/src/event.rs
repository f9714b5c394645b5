//! The canonical bytes of an audit event: what the ledger's leaves hash.
//!
//! An event is hashed as one line of JSON with its keys in lexicographic
//! order (`action`, `actor`, `at`, `details`, `seq`, `subject`), no
//! whitespace, the keys of `details` sorted at every depth, strings escaped
//! as JSON requires (`"` and `\` and control characters only; everything
//! else as UTF-8), integers in decimal. `at` is milliseconds since the Unix
//! epoch. Anyone holding an exported event can rebuild these bytes and its
//! leaf hash, `SHA-256(0x00 || bytes)`, without custody.

use serde_json::Value;

use crate::merkle::{leaf_hash, Hash};

/// An audit event's fields, as the ledger hashes them.
#[derive(Clone, Copy, Debug)]
pub struct EventFields<'a> {
    /// Position in the log, from 1.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who acted.
    pub actor: &'a str,
    /// What happened.
    pub action: &'a str,
    /// To what.
    pub subject: &'a str,
    /// Anything else.
    pub details: &'a Value,
}

impl EventFields<'_> {
    /// The canonical JSON bytes of the event.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(128);
        out.push_str("{\"action\":");
        push_string(&mut out, self.action);
        out.push_str(",\"actor\":");
        push_string(&mut out, self.actor);
        out.push_str(",\"at\":");
        out.push_str(&self.at_ms.to_string());
        out.push_str(",\"details\":");
        push_value(&mut out, self.details);
        out.push_str(",\"seq\":");
        out.push_str(&self.seq.to_string());
        out.push_str(",\"subject\":");
        push_string(&mut out, self.subject);
        out.push('}');
        out.into_bytes()
    }

    /// The event's leaf hash in the ledger's Merkle tree.
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.canonical_bytes())
    }
}

/// A JSON value in canonical form: object keys sorted, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    push_value(&mut out, value);
    out
}

fn push_string(out: &mut String, s: &str) {
    // serde_json escapes exactly `"`, `\` and control characters.
    out.push_str(&serde_json::to_string(s).expect("a string serialises"));
}

fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_string(out, key);
                out.push(':');
                push_value(out, value);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, item);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_bytes_sort_keys_at_every_depth_and_ignore_how_details_were_spelled() {
        let details: Value = serde_json::from_str(r#"{ "z": 1, "a": {"y": [true, null], "b": "\u00e9\"x"} }"#).unwrap();
        let event = EventFields {
            seq: 7,
            at_ms: 1_700_000_000_000,
            actor: "alice",
            action: "grant.approve",
            subject: "grant:3",
            details: &details,
        };
        assert_eq!(
            String::from_utf8(event.canonical_bytes()).unwrap(),
            r#"{"action":"grant.approve","actor":"alice","at":1700000000000,"details":{"a":{"b":"é\"x","y":[true,null]},"z":1},"seq":7,"subject":"grant:3"}"#
        );
        let respelled = json!({"a": {"y": [true, null], "b": "é\"x"}, "z": 1});
        assert_eq!(EventFields { details: &respelled, ..event }.leaf_hash(), event.leaf_hash());
        assert_ne!(EventFields { seq: 8, ..event }.leaf_hash(), event.leaf_hash());
    }
}
