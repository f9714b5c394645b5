//! Rotating and revoking the service keys, and the trust root their history
//! gives.
//!
//! A rotation is a grant. Once a second admin approved it, the server makes
//! the new key into `keys/ROLE.next.pem`, records the rotation in the
//! ledger (old and new public keys), renames the new key over
//! `keys/ROLE.pem` and makes every handle of the role sign with it; the old
//! private key is gone with the rename. A server that stops between two of
//! these steps finishes them at its next start: the ledger says which key
//! is current, and a `ROLE.next.pem` holding it is moved into place. A key
//! file that is not the key the ledger names is refused.
//!
//! The trust root is derived from the ledger's key events: each key with
//! the period it signed in, and each revocation with its reason.

use std::path::Path;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use custody_domain::grant::{GrantAction, ROTATING_ROLES};
use custody_domain::Timestamp;
use custody_formats::{KeyRole, ServiceKey};
use custody_store::{GrantView, RecordedKey, Store};

use crate::auth::{Auth, Body};
use crate::error::{ApiError, ApiResult};
use crate::AppState;

fn recorded(key: &ServiceKey) -> RecordedKey {
    let public = key.public();
    RecordedKey { key_id: public.key_id(), public_key: public.to_pem() }
}

fn role_of(name: &str) -> Option<KeyRole> {
    KeyRole::ALL.into_iter().find(|r| r.as_str() == name)
}

fn next_file(keys_dir: &Path, role: KeyRole) -> std::path::PathBuf {
    keys_dir.join(format!("{}.next.pem", role.as_str()))
}

/// Moves the recorded new key into place and makes `key` sign with it. The
/// ledger key first hands the log over to the new key (a checkpoint both
/// sign, naming both), so that watchers pinned to the old key can follow.
async fn install(
    store: &Store,
    origin: &str,
    keys_dir: &Path,
    key: &ServiceKey,
    next: &ServiceKey,
) -> Result<(), String> {
    let role = key.role();
    if role == KeyRole::Ledger {
        let handover = store.hand_over_ledger(origin, key, next).await.map_err(|e| e.to_string())?;
        custody_store::fault::point("key.handed_over");
        tracing::info!(size = handover.size, to = %handover.to_key, "handed the ledger over to its new key");
    }
    let (from, to) = (next_file(keys_dir, role), keys_dir.join(format!("{}.pem", role.as_str())));
    std::fs::rename(&from, &to).map_err(|e| format!("moving {} into place: {e}", from.display()))?;
    std::fs::File::open(keys_dir).and_then(|d| d.sync_all()).map_err(|e| format!("{}: {e}", keys_dir.display()))?;
    key.replace(next).map_err(|e| e.to_string())
}

/// Completes the approved rotation `grant` of `key`'s role: makes (or
/// takes up again) the new key, records the rotation, installs the key.
pub async fn rotate(
    store: &Store,
    origin: &str,
    keys_dir: &Path,
    key: &ServiceKey,
    grant: i64,
) -> Result<RecordedKey, String> {
    let role = key.role();
    if let Some(device) = key.held_outside() {
        return Err(format!(
            "the {} key is held in {device}: make its new key in the device, never in a file",
            role.as_str()
        ));
    }
    let next_path = next_file(keys_dir, role);
    // A new key an earlier attempt made is taken up again: the ledger may
    // already name it.
    let next = match ServiceKey::load(role, &next_path) {
        Ok(next) => next,
        Err(_) => {
            let _ = std::fs::remove_file(&next_path);
            let made = ServiceKey::generate(role);
            made.save(&next_path).map_err(|e| e.to_string())?;
            std::fs::File::open(keys_dir).and_then(|d| d.sync_all()).map_err(|e| e.to_string())?;
            custody_store::fault::point("key.made");
            made
        }
    };
    let (old, new) = (recorded(key), recorded(&next));
    store.record_rotation(grant, role.as_str().to_owned(), old, new.clone()).await.map_err(|e| e.to_string())?;
    custody_store::fault::point("key.recorded");
    let history = store.key_history().await.map_err(|e| e.to_string())?;
    let current = current_key(&history, role.as_str());
    if current.map(|k| &k.key_id) != Some(&new.key_id) {
        return Err(format!(
            "the ledger names another {} key than the one made for grant {grant}; {} was left in place",
            role.as_str(),
            next_path.display()
        ));
    }
    install(store, origin, keys_dir, key, &next).await?;
    tracing::info!(role = role.as_str(), key_id = %new.key_id, grant, "rotated a service key");
    Ok(new)
}

use custody_store::current_key_of as current_key;

/// At start: makes the loaded keys the ones the ledger names (finishing a
/// rotation that stopped half-way) and, when `finish`, completes approved
/// rotations the ledger does not show yet (a server does; a worker only
/// checks). Refuses a key file the ledger does not name.
pub async fn reconcile(
    store: &Store,
    origin: &str,
    keys_dir: &Path,
    keys: &[ServiceKey],
    finish: bool,
) -> Result<(), String> {
    // The keys the instance started with are recorded at its first start
    // with this record; from then on the ledger names each role's key.
    let loaded = keys.iter().map(|k| (k.role().as_str().to_owned(), recorded(k))).collect();
    let registered = store.register_keys(loaded).await.map_err(|e| e.to_string())?;
    if !registered.is_empty() {
        tracing::info!(roles = ?registered, "recorded the service keys this instance holds");
    }
    let history = store.key_history().await.map_err(|e| e.to_string())?;
    for key in keys {
        let role = key.role();
        let Some(expected) = current_key(&history, role.as_str()) else { continue };
        let loaded = key.public().key_id();
        if loaded == expected.key_id {
            continue;
        }
        match ServiceKey::load(role, &next_file(keys_dir, role)) {
            Ok(next) if next.public().key_id() == expected.key_id => {
                install(store, origin, keys_dir, key, &next).await?
            }
            _ => {
                return Err(format!(
                    "{}/{}.pem holds the {} key {loaded}, and the ledger names {} as the current one: restore the \
                     keys directory from the instance's escrow (or, for a key in an HSM, give this process the \
                     device that holds it)",
                    keys_dir.display(),
                    role.as_str(),
                    role.as_str(),
                    expected.key_id
                ))
            }
        }
    }
    if !finish {
        return Ok(());
    }
    for (grant, role) in store.unfinished_rotations().await.map_err(|e| e.to_string())? {
        let Some(key) = role_of(&role).and_then(|r| keys.iter().find(|k| k.role() == r)) else { continue };
        if let Some(device) = key.held_outside() {
            tracing::warn!(grant, role, %device, "an approved rotation of a key held in a device is left undone");
            continue;
        }
        rotate(store, origin, keys_dir, key, grant).await?;
    }
    Ok(())
}

/// Finishes an approved rotation grant (nothing for another grant).
pub(crate) async fn complete_rotation(state: &AppState, grant: &GrantView) -> ApiResult<()> {
    let GrantAction::RotateKey { role } = &grant.action else { return Ok(()) };
    let unavailable = |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
    let key = role_of(role)
        .and_then(|r| state.key(r))
        .ok_or_else(|| unavailable(format!("this server holds no {role} key")))?;
    let dir = state.key_dir().ok_or_else(|| unavailable("this server was not given its keys directory".into()))?;
    rotate(state.store(), state.instance(), dir, key, grant.id).await.map_err(|e| {
        tracing::error!(error = %e, grant = grant.id, "rotating a key");
        unavailable(format!(
            "the rotation was approved and is not finished: {e}; it finishes at the server's next start"
        ))
    })?;
    Ok(())
}

/// The role in a rotation's path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct RolePath {
    /// builder, gate, deployer or ledger.
    #[param(pattern = "^(builder|gate|deployer|ledger)$")]
    role: String,
}

/// The key in a revocation's path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct KeyPath {
    /// The key's id: hex SHA-256 of its public key.
    #[param(pattern = "^[0-9a-fA-F]{64}$")]
    key_id: String,
}

/// An admin asks to replace a service key (`builder`, `gate`, `deployer` or
/// `ledger`) with a new one: a grant, applied once a second admin approves.
/// The ledger key hands the log over to its successor in a checkpoint both
/// keys sign.
#[utoipa::path(post, path = "/api/v1/keys/{role}/rotate", tag = "evidence", security(("token" = [])),
    params(RolePath),
    responses((status = 202, body = GrantView), (status = 400, body = custody_api::ErrorBody)))]
pub(crate) async fn rotate_key(
    State(state): State<AppState>,
    auth: Auth,
    crate::api::PathParam(role): crate::api::PathParam<String>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    if !ROTATING_ROLES.contains(&role.as_str()) {
        return Err(ApiError::invalid(format!(
            "{role:?} is no key that rotates by a grant: use one of {}",
            ROTATING_ROLES.join(", ")
        )));
    }
    if let Some(device) = role_of(&role).and_then(|r| state.key(r)).and_then(ServiceKey::held_outside) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("the {role} key is held in {device}: make its new key in the device, never in a file"),
        ));
    }
    let (status, Json(grant)) = crate::api::grant_requested(&state, &auth, GrantAction::RotateKey { role }).await?;
    crate::api::complete_grant(&state, &grant).await?;
    Ok((status, Json(grant)))
}

/// An admin asks to revoke a retired key from a point in time on: a grant.
/// Evidence the key signed from then on no longer verifies, with the reason.
#[utoipa::path(post, path = "/api/v1/keys/{key_id}/revoke", tag = "evidence", security(("token" = [])),
    params(KeyPath),
    request_body = custody_api::RevokeKeyRequest,
    responses((status = 202, body = GrantView), (status = 400, body = custody_api::ErrorBody)))]
pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    auth: Auth,
    crate::api::PathParam(key_id): crate::api::PathParam<String>,
    Body(request): Body<custody_api::RevokeKeyRequest>,
) -> ApiResult<(StatusCode, Json<GrantView>)> {
    if key_id.len() != 64 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid(format!("{key_id:?} is not a key id: 64 hex characters")));
    }
    if !request.reason.chars().any(|c| !c.is_whitespace()) {
        return Err(ApiError::invalid("say why the key is revoked (reason)"));
    }
    let since = request.since.unwrap_or(Timestamp::from_millis(custody_store::now_ms()));
    let action = GrantAction::RevokeKey { key_id: key_id.to_ascii_lowercase(), since, reason: request.reason };
    crate::api::grant_requested(&state, &auth, action).await
}
