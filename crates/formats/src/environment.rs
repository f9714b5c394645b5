//! What runs in an environment, signed: the statement a cluster's admission
//! check reads to know which images it may run.
//!
//! A deployment attestation proves that a deployment happened; it cannot
//! prove that nothing replaced it since. This statement can: custody reads
//! the environment's chain of successful deployments from its proven
//! ledger events (one hidden or edited around custody fails closed), and
//! signs, with the ledger key, which deployments are the newest there as of
//! a time. Whoever holds it knows what ran there at that time, and how old
//! that knowledge is; each deployment it names is bound to its signed
//! attestation by the attestation's digest, so the rest comes from the
//! deployment's own evidence bundle.

use serde::{Deserialize, Serialize};

use crate::dsse::{Envelope, IN_TOTO_PAYLOAD_TYPE};
use crate::keys::KeyRole;
use crate::statement::{Statement, Subject, STATEMENT_TYPE};
use crate::trust::{millis_of_rfc3339, TrustRoot};

/// The predicate type of an environment's signed state.
pub const ENVIRONMENT_PREDICATE: &str = "https://custody.dev/attestation/environment/v1";

/// An environment's successful deployments, newest first, as of a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentV1 {
    /// The instance.
    pub origin: String,
    /// The project.
    pub project: String,
    /// The environment.
    pub environment: String,
    /// When custody read the chain and signed, RFC 3339: the statement's
    /// age counts from here.
    pub as_of: String,
    /// How many events the ledger held then.
    pub ledger_size: u64,
    /// Its successful deployments, newest (live) first.
    pub deployments: Vec<LiveDeployment>,
}

/// One successful deployment of the environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveDeployment {
    /// The deployment's number in its project.
    pub deployment: i64,
    /// The build it deployed.
    pub build: i64,
    /// When it finished, RFC 3339.
    pub finished_on: String,
    /// Its deployment attestation's digest ([`Envelope::digest`]).
    pub attestation_sha256: String,
    /// Why glass was broken, for an emergency deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
}

/// Why a signed environment state cannot be trusted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvironmentError {
    /// It is not such a statement.
    #[error("not a signed environment state: {0}")]
    Malformed(String),
    /// No ledger key of the trust file valid when it was signed verifies it.
    #[error("the environment state of {0} is not signed by a ledger key the trust file holds for its time: forged, altered, or from another instance")]
    Unsigned(String),
}

impl EnvironmentV1 {
    /// The statement: about each deployment's attestation, by its digest.
    pub fn statement(&self) -> Statement {
        let subject = self
            .deployments
            .iter()
            .map(|d| Subject {
                name: format!("deployment/{}", d.deployment),
                digest: [("sha256".to_owned(), d.attestation_sha256.clone())].into(),
            })
            .collect();
        Statement::new(subject, ENVIRONMENT_PREDICATE, serde_json::to_value(self).unwrap_or_default())
    }

    /// When it was signed, in milliseconds since the epoch.
    pub fn as_of_ms(&self) -> Option<i64> {
        millis_of_rfc3339(&self.as_of)
    }

    /// Opens a signed state: signed by a ledger key of `trust` valid at
    /// the time it names, of `trust`'s instance, read strictly.
    pub fn open(envelope: &Envelope, trust: &TrustRoot) -> Result<EnvironmentV1, EnvironmentError> {
        let malformed = |why: String| EnvironmentError::Malformed(why);
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
            return Err(malformed(format!("payload type {:?}", envelope.payload_type)));
        }
        let payload = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &envelope.payload)
            .map_err(|e| malformed(e.to_string()))?;
        let statement: Statement = serde_json::from_slice(&payload).map_err(|e| malformed(e.to_string()))?;
        if statement.statement_type != STATEMENT_TYPE || statement.predicate_type != ENVIRONMENT_PREDICATE {
            return Err(malformed(format!("a statement of type {:?}", statement.predicate_type)));
        }
        let state: EnvironmentV1 =
            serde_json::from_value(statement.predicate.clone()).map_err(|e| malformed(e.to_string()))?;
        let at = state.as_of_ms().ok_or_else(|| malformed("as_of is not an RFC 3339 time".into()))?;
        let keys = trust.open().map_err(|e| malformed(e.to_string()))?;
        let signed = keys
            .iter()
            .filter(|k| k.key.role() == KeyRole::Ledger && k.valid_at(at))
            .any(|k| envelope.verify(&k.key).is_ok());
        let named = format!("{}/{}", state.project, state.environment);
        if !signed || state.origin != trust.origin {
            return Err(EnvironmentError::Unsigned(named));
        }
        if statement != state.statement() {
            return Err(malformed(format!("its subjects are not the deployments it names ({named})")));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{rfc3339_of_millis, TrustedKey};
    use crate::ServiceKey;

    fn state() -> EnvironmentV1 {
        EnvironmentV1 {
            origin: "bank".into(),
            project: "shop".into(),
            environment: "production".into(),
            as_of: rfc3339_of_millis(1_700_000_500_000),
            ledger_size: 40,
            deployments: vec![LiveDeployment {
                deployment: 2,
                build: 1,
                finished_on: rfc3339_of_millis(1_700_000_400_000),
                attestation_sha256: "ab".repeat(32),
                break_glass: None,
            }],
        }
    }

    fn trust(key: &ServiceKey) -> TrustRoot {
        TrustRoot::new("bank", vec![TrustedKey::current(&key.public(), 1_700_000_000_000)])
    }

    #[test]
    fn a_state_the_ledger_key_signed_opens() {
        let ledger = ServiceKey::generate(KeyRole::Ledger);
        let envelope = state().statement().sign(&ledger).unwrap();
        assert_eq!(EnvironmentV1::open(&envelope, &trust(&ledger)), Ok(state()));
    }

    #[test]
    fn a_state_signed_by_another_duty_or_altered_or_from_before_the_key_is_refused() {
        let ledger = ServiceKey::generate(KeyRole::Ledger);
        let deployer = ServiceKey::generate(KeyRole::Deployer);
        let mut both = trust(&ledger);
        both.keys.push(TrustedKey::current(&deployer.public(), 1_700_000_000_000));
        let by_deployer = state().statement().sign(&deployer).unwrap();
        assert!(matches!(EnvironmentV1::open(&by_deployer, &both), Err(EnvironmentError::Unsigned(_))));

        let mut older = state();
        older.as_of = rfc3339_of_millis(1_600_000_000_000);
        let before_key = older.statement().sign(&ledger).unwrap();
        assert!(matches!(EnvironmentV1::open(&before_key, &both), Err(EnvironmentError::Unsigned(_))));

        let mut altered = state().statement().sign(&ledger).unwrap();
        let mut other = state();
        other.deployments[0].attestation_sha256 = "cd".repeat(32);
        altered.payload = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            serde_json::to_vec(&other.statement()).unwrap(),
        );
        assert!(matches!(EnvironmentV1::open(&altered, &both), Err(EnvironmentError::Unsigned(_))));
    }
}
