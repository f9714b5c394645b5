//! The service keys' history, in the ledger: every rotation (which key
//! replaced which, when, by which grant) and every revocation. The trust
//! root is derived from these events alone, each proven, so a row written
//! around custody cannot add a key to what auditors trust.

use custody_domain::audit::{NewEvent, SYSTEM_ACTOR};
use custody_domain::grant::GrantAction;
use custody_formats::keys::{KeyRole, PublicKey};
use custody_formats::trust::{rfc3339_of_millis, Revocation, TrustedKey};
use serde::{Deserialize, Serialize};

use crate::proof::proven_events;
use crate::tx::Tx;
use crate::{now_ms, Result, Store, StoreError};

/// The subject every key event is recorded under.
pub const KEYS_SUBJECT: &str = "keys";
const REGISTERED: &str = "key.registered";
const ROTATED: &str = "key.rotated";
const REVOKED: &str = "key.revoked";
const WORKER: &str = "worker.registered";

/// A public key as recorded: its id and SubjectPublicKeyInfo PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedKey {
    /// Hex SHA-256 of its public key's DER.
    pub key_id: String,
    /// Its public key, PEM.
    pub public_key: String,
}

/// One event of a key's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyEvent {
    /// `key` is the key of `role` the instance started with (recorded at
    /// its first start with this record).
    Registered {
        /// The role.
        role: String,
        /// The key.
        key: RecordedKey,
    },
    /// `new` replaced `old` as the key of `role`.
    Rotated {
        /// The role.
        role: String,
        /// The key retired.
        old: RecordedKey,
        /// The key that signs from now on.
        new: RecordedKey,
        /// When, in milliseconds since the epoch.
        at_ms: i64,
        /// The grant that asked for it.
        grant: i64,
    },
    /// A key is not trusted from `since_ms` on.
    Revoked {
        /// The role.
        role: String,
        /// The key.
        key_id: String,
        /// From when.
        since_ms: i64,
        /// Why.
        reason: String,
        /// The grant that asked for it.
        grant: i64,
    },
    /// A worker that shares nothing with the server was registered: its
    /// own `key` signs as one more key of `role` from `at_ms` on, and it
    /// calls the API with the credential whose SHA-256 is `credential`.
    Worker {
        /// The worker's name.
        name: String,
        /// `builder` or `deployer`.
        role: String,
        /// Its key.
        key: RecordedKey,
        /// Hex SHA-256 of its credential.
        credential: String,
        /// When, in milliseconds since the epoch.
        at_ms: i64,
        /// The grant that asked for it.
        grant: i64,
    },
}

/// A registered worker, as the key history records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredWorker {
    /// Its name.
    pub name: String,
    /// The role its key signs as.
    pub role: KeyRole,
    /// Its key.
    pub key: RecordedKey,
    /// Hex SHA-256 of its credential.
    pub credential: String,
    /// Its key's revocation, if it was revoked: from when, and why.
    pub revoked: Option<(i64, String)>,
}

#[derive(Serialize, Deserialize)]
struct WorkerDetails {
    name: String,
    role: String,
    key: RecordedKey,
    credential: String,
    grant: i64,
}

#[derive(Serialize, Deserialize)]
struct RegisteredDetails {
    role: String,
    key: RecordedKey,
}

#[derive(Serialize, Deserialize)]
struct RotatedDetails {
    role: String,
    old: RecordedKey,
    new: RecordedKey,
    grant: i64,
}

#[derive(Serialize, Deserialize)]
struct RevokedDetails {
    role: String,
    key_id: String,
    since_ms: i64,
    reason: String,
    grant: i64,
}

/// Records a key event with `details`.
async fn record(tx: &mut Tx, action: &str, details: impl Serialize) -> Result<i64> {
    let details = serde_json::to_value(details).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.audit(NewEvent { actor: SYSTEM_ACTOR.into(), action: action.into(), subject: KEYS_SUBJECT.into(), details })
        .await
}

/// The key history, from the proven events of [`KEYS_SUBJECT`].
async fn history(tx: &mut impl crate::tx::Reads) -> Result<Vec<KeyEvent>> {
    let mut found = Vec::new();
    for event in proven_events(tx, KEYS_SUBJECT).await? {
        let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("key event {}: {e}", event.seq));
        match event.action.as_str() {
            REGISTERED => {
                let d: RegisteredDetails = serde_json::from_value(event.details.clone()).map_err(corrupt)?;
                found.push(KeyEvent::Registered { role: d.role, key: d.key });
            }
            ROTATED => {
                let d: RotatedDetails = serde_json::from_value(event.details.clone()).map_err(corrupt)?;
                found.push(KeyEvent::Rotated { role: d.role, old: d.old, new: d.new, at_ms: event.at, grant: d.grant });
            }
            WORKER => {
                let d: WorkerDetails = serde_json::from_value(event.details.clone()).map_err(corrupt)?;
                found.push(KeyEvent::Worker {
                    name: d.name,
                    role: d.role,
                    key: d.key,
                    credential: d.credential,
                    at_ms: event.at,
                    grant: d.grant,
                });
            }
            REVOKED => {
                let d: RevokedDetails = serde_json::from_value(event.details.clone()).map_err(corrupt)?;
                found.push(KeyEvent::Revoked {
                    role: d.role,
                    key_id: d.key_id,
                    since_ms: d.since_ms,
                    reason: d.reason,
                    grant: d.grant,
                });
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The key of `role` the history makes current: the newest rotation's, else
/// the registered one; `None` before either is recorded.
pub fn current_of<'h>(history: &'h [KeyEvent], role: &str) -> Option<&'h RecordedKey> {
    history.iter().rev().find_map(|e| match e {
        KeyEvent::Rotated { role: r, new, .. } if r == role => Some(new),
        KeyEvent::Registered { role: r, key } if r == role => Some(key),
        _ => None,
    })
}

/// The role of a key that may be revoked (one the history retired, or a
/// worker's), and whether it is revoked.
fn revocable(history: &[KeyEvent], key_id: &str) -> Option<(String, bool)> {
    let role = history.iter().find_map(|e| match e {
        KeyEvent::Rotated { role, old, .. } if old.key_id == key_id => Some(role.clone()),
        KeyEvent::Worker { role, key, .. } if key.key_id == key_id => Some(role.clone()),
        _ => None,
    })?;
    let revoked = history.iter().any(|e| matches!(e, KeyEvent::Revoked { key_id: k, .. } if k == key_id));
    Some((role, revoked))
}

/// Whether a key grant can be applied now.
pub(crate) async fn check_applicable(tx: &mut Tx, action: &GrantAction) -> Result<()> {
    match action {
        GrantAction::RotateKey { role } => {
            if !custody_domain::grant::ROTATING_ROLES.contains(&role.as_str()) {
                return Err(StoreError::Conflict(format!("the {role} key does not rotate by a grant")));
            }
            Ok(())
        }
        GrantAction::RevokeKey { key_id, since, .. } => {
            let history = history(tx).await?;
            match revocable(&history, key_id) {
                None => Err(StoreError::Conflict(format!(
                    "key {key_id} is neither a retired key of this instance nor a worker's: only a key replaced by \
                     a rotation, or a worker's own key, is revoked (rotate the key first)"
                ))),
                Some((_, true)) => Err(StoreError::Conflict(format!("key {key_id} is revoked already"))),
                Some(_) if since.millis() > now_ms() => {
                    Err(StoreError::Conflict("a revocation takes effect from a time already past".into()))
                }
                Some(_) => Ok(()),
            }
        }
        GrantAction::RegisterWorker { name, role, public_key, credential_sha256 } => {
            check_worker(&history(tx).await?, name, role, public_key, credential_sha256).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// The key a worker registration names, when it may be registered: a
/// new name, a worker role, an ed25519 public key no other key of the
/// instance has, and a credential digest.
fn check_worker(
    history: &[KeyEvent],
    name: &str,
    role: &str,
    public_key: &str,
    credential: &str,
) -> Result<RecordedKey> {
    let invalid = |message: String| StoreError::Conflict(message);
    if let Some(problem) = custody_domain::grant::worker_problem(name, role) {
        return Err(invalid(problem));
    }
    let role = KeyRole::parse(role).ok_or_else(|| invalid(format!("{role:?} is no key role")))?;
    if credential.len() != 64 || !credential.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        return Err(invalid("the credential's SHA-256 must be 64 lowercase hex digits".into()));
    }
    let key = PublicKey::from_pem(role, public_key)
        .map_err(|e| invalid(format!("the worker's public key is not an ed25519 public key in PEM: {e}")))?;
    let recorded = RecordedKey { key_id: key.key_id(), public_key: key.to_pem() };
    for event in history {
        let (taken_name, keys): (Option<&str>, Vec<&RecordedKey>) = match event {
            KeyEvent::Registered { key, .. } => (None, vec![key]),
            KeyEvent::Rotated { old, new, .. } => (None, vec![old, new]),
            KeyEvent::Worker { name, key, .. } => (Some(name.as_str()), vec![key]),
            KeyEvent::Revoked { .. } => (None, vec![]),
        };
        if taken_name == Some(name) {
            return Err(invalid(format!("a worker named {name} is registered already; choose another name")));
        }
        if keys.iter().any(|k| k.key_id == recorded.key_id) {
            return Err(invalid(format!("key {} is already one of this instance's keys", recorded.key_id)));
        }
    }
    Ok(recorded)
}

/// The workers the history registered, with their revocations.
pub fn registered_workers(history: &[KeyEvent]) -> Vec<RegisteredWorker> {
    history
        .iter()
        .filter_map(|event| {
            let KeyEvent::Worker { name, role, key, credential, .. } = event else { return None };
            let revoked = history.iter().find_map(|e| match e {
                KeyEvent::Revoked { key_id, since_ms, reason, .. } if *key_id == key.key_id => {
                    Some((*since_ms, reason.clone()))
                }
                _ => None,
            });
            Some(RegisteredWorker {
                name: name.clone(),
                role: KeyRole::parse(role)?,
                key: key.clone(),
                credential: credential.clone(),
                revoked,
            })
        })
        .collect()
}

/// Applies a key grant: a revocation is recorded with it; a rotation is
/// completed by the server, which makes the new key ([`Store::record_rotation`]).
pub(crate) async fn apply(tx: &mut Tx, grant_id: i64, action: &GrantAction) -> Result<()> {
    if let GrantAction::RegisterWorker { name, role, public_key, credential_sha256 } = action {
        let key = check_worker(&history(tx).await?, name, role, public_key, credential_sha256)?;
        let details = WorkerDetails {
            name: name.clone(),
            role: role.clone(),
            key,
            credential: credential_sha256.clone(),
            grant: grant_id,
        };
        record(tx, WORKER, details).await?;
        return Ok(());
    }
    let GrantAction::RevokeKey { key_id, since, reason } = action else { return Ok(()) };
    let history = history(tx).await?;
    let (role, _) = revocable(&history, key_id).ok_or_else(|| StoreError::not_found("revocable key", key_id))?;
    let details = RevokedDetails {
        role,
        key_id: key_id.clone(),
        since_ms: since.millis(),
        reason: reason.clone(),
        grant: grant_id,
    };
    record(tx, REVOKED, details).await?;
    Ok(())
}

/// The trust root's keys: each role's keys in the order they signed, the
/// first valid from `since` (the instance's start), each next one from the
/// rotation that made it, with revocations. A role with no key recorded yet
/// lists its `current` key from `since`.
pub fn trusted_keys(history: &[KeyEvent], current: &[PublicKey], since: i64) -> Vec<TrustedKey> {
    let mut keys = Vec::new();
    for role in KeyRole::ALL {
        let entry = |key: &RecordedKey, from: i64| TrustedKey {
            role,
            key_id: key.key_id.clone(),
            algorithm: "ed25519".into(),
            public_key: key.public_key.clone(),
            not_before: rfc3339_of_millis(from),
            not_after: None,
            revoked: None,
        };
        let mut own: Vec<TrustedKey> = Vec::new();
        for event in history {
            match event {
                KeyEvent::Registered { role: r, key } if r == role.as_str() && own.is_empty() => {
                    own.push(entry(key, since));
                }
                KeyEvent::Rotated { role: r, old, new, at_ms, .. } if r == role.as_str() => {
                    if own.is_empty() {
                        own.push(entry(old, since));
                    }
                    if let Some(last) = own.last_mut() {
                        last.not_after = Some(rfc3339_of_millis(*at_ms));
                    }
                    own.push(entry(new, *at_ms));
                }
                _ => {}
            }
        }
        if own.is_empty() {
            own.extend(current.iter().filter(|k| k.role() == role).map(|k| TrustedKey::current(k, since)));
        }
        // Each worker's own key: one more key of its role, from its registration on.
        for event in history {
            if let KeyEvent::Worker { role: r, key, at_ms, .. } = event {
                if r == role.as_str() {
                    own.push(entry(key, *at_ms));
                }
            }
        }
        keys.extend(own);
    }
    for event in history {
        if let KeyEvent::Revoked { key_id, since_ms, reason, .. } = event {
            for key in keys.iter_mut().filter(|k| &k.key_id == key_id) {
                key.revoked = Some(Revocation { since: rfc3339_of_millis(*since_ms), reason: reason.clone() });
            }
        }
    }
    keys
}

/// The keys of `current`'s role that were valid at `at_ms`, as
/// [`trusted_keys`] lists them: within their validity and not revoked by
/// then (what `custody verify` accepts of a statement recorded then).
pub fn keys_valid_at(history: &[KeyEvent], current: &PublicKey, at_ms: i64) -> Vec<PublicKey> {
    trusted_keys(history, std::slice::from_ref(current), 0)
        .into_iter()
        .filter(|k| k.role == current.role())
        .filter_map(|k| k.open().ok())
        .filter(|k| k.valid_at(at_ms))
        .map(|k| k.key)
        .collect()
}

impl Store {
    /// Every rotation and revocation of the instance's keys, oldest first,
    /// each event proven.
    pub async fn key_history(&self) -> Result<Vec<KeyEvent>> {
        history(&mut self.reader().await?).await
    }

    /// Records that `new` replaced `old` as the key of `role`, for the
    /// approved grant `grant`; once only (a second call for the same grant
    /// changes nothing and says so with `false`).
    pub async fn record_rotation(&self, grant: i64, role: String, old: RecordedKey, new: RecordedKey) -> Result<bool> {
        self.write(move |tx| {
            Box::pin(async move {
                let history = history(tx).await?;
                let done = history.iter().any(|e| matches!(e, KeyEvent::Rotated { grant: g, .. } if *g == grant));
                if done {
                    return Ok(false);
                }
                if let Some(current) = current_of(&history, &role) {
                    if current.key_id != old.key_id {
                        return Err(StoreError::Conflict(format!(
                            "the {role} key is {} by the ledger, not {}: the rotation was not made from the current key",
                            current.key_id, old.key_id
                        )));
                    }
                }
                let details = RotatedDetails { role, old, new, grant };
                record(tx, ROTATED, details).await?;
                Ok(true)
            })
        })
        .await
    }

    /// Records, for each role whose key the ledger names none of yet, the
    /// key this process holds: the instance's keys are then the ledger's,
    /// and a key file swapped later is refused. Returns the roles recorded.
    pub async fn register_keys(&self, keys: Vec<(String, RecordedKey)>) -> Result<Vec<String>> {
        self.write(move |tx| {
            Box::pin(async move {
                let history = history(tx).await?;
                let mut recorded = Vec::new();
                for (role, key) in keys {
                    if current_of(&history, &role).is_some() {
                        continue;
                    }
                    let details = RegisteredDetails { role: role.clone(), key };
                    record(tx, REGISTERED, details).await?;
                    recorded.push(role);
                }
                Ok(recorded)
            })
        })
        .await
    }

    /// Whether `worker` holds a running build or deployment of `project`:
    /// what lets a worker elsewhere fetch the project's commits.
    pub async fn holds_job(&self, worker: &str, project: &str) -> Result<bool> {
        let sql = self.sql(
            "SELECT (SELECT COUNT(*) FROM builds b JOIN projects p ON p.id = b.project_id \
               WHERE p.name = $1 AND b.worker = $2 AND b.status = 'running') \
             + (SELECT COUNT(*) FROM deployments d JOIN projects p ON p.id = d.project_id \
               WHERE p.name = $1 AND d.worker = $2 AND d.status = 'running')",
        );
        let held: i64 = sqlx::query_scalar(&sql).bind(project).bind(worker).fetch_one(self.readers()).await?;
        Ok(held > 0)
    }

    /// Approved rotation grants whose new key the ledger does not hold yet:
    /// (grant, role). A server that stopped between the two completes them.
    pub async fn unfinished_rotations(&self) -> Result<Vec<(i64, String)>> {
        let history = self.key_history().await?;
        let sql = self.sql("SELECT id, payload FROM grants WHERE action = $1 AND status IN ('approved', 'bootstrap')");
        let rows = sqlx::query(&sql).bind("key.rotate").fetch_all(self.readers()).await?;
        let mut unfinished = Vec::new();
        for row in rows {
            let id: i64 = crate::col(&row, "id")?;
            let payload: String = crate::col(&row, "payload")?;
            let Ok(GrantAction::RotateKey { role }) = serde_json::from_str::<GrantAction>(&payload) else { continue };
            // Only a grant custody decided: a row written around it rotates nothing.
            self.check_seal(&format!("grant:{id}")).await?;
            if !history.iter().any(|e| matches!(e, KeyEvent::Rotated { grant, .. } if *grant == id)) {
                unfinished.push((id, role));
            }
        }
        Ok(unfinished)
    }
}

#[cfg(test)]
mod tests {
    use custody_formats::{KeyRole, ServiceKey};

    use super::*;

    fn recorded(key: &ServiceKey) -> RecordedKey {
        RecordedKey { key_id: key.public().key_id(), public_key: key.public().to_pem() }
    }

    #[test]
    fn a_retired_builder_key_is_valid_until_its_rotation_and_a_revoked_one_until_its_revocation() {
        let (first, second) = (ServiceKey::generate(KeyRole::Builder), ServiceKey::generate(KeyRole::Builder));
        let mut history = vec![
            KeyEvent::Registered { role: "builder".into(), key: recorded(&first) },
            KeyEvent::Rotated {
                role: "builder".into(),
                old: recorded(&first),
                new: recorded(&second),
                at_ms: 1_000,
                grant: 1,
            },
        ];
        let ids = |at: i64, history: &[KeyEvent]| -> Vec<String> {
            keys_valid_at(history, &second.public(), at).iter().map(PublicKey::key_id).collect()
        };
        assert_eq!(ids(500, &history), vec![first.public().key_id()]);
        assert_eq!(ids(1_000, &history), vec![first.public().key_id(), second.public().key_id()]);
        assert_eq!(ids(1_500, &history), vec![second.public().key_id()], "the retired key signs no more");
        history.push(KeyEvent::Revoked {
            role: "builder".into(),
            key_id: first.public().key_id(),
            since_ms: 400,
            reason: "copied".into(),
            grant: 2,
        });
        assert_eq!(ids(300, &history), vec![first.public().key_id()], "before its compromise");
        assert!(ids(500, &history).is_empty(), "revoked from 400 on");
    }
}
