//! The audit log, read-only, and its ledger: signed checkpoints and proofs.

use axum::extract::State;
use axum::Json;
use custody_api::{CheckpointView, ConsistencyView, EventView, HandoverView, InclusionView, ProvenEvent};
use custody_domain::Timestamp;
use custody_store::{AuditFilter, Page};
use serde::Deserialize;

use super::{PageQuery, Params, PathParam};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Which events to read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Only events at or after this RFC 3339 time.
    #[param(value_type = Option<custody_domain::Timestamp>)]
    since: Option<String>,
    /// Only events before this RFC 3339 time.
    #[param(value_type = Option<custody_domain::Timestamp>)]
    until: Option<String>,
    /// Only events by this actor.
    actor: Option<String>,
    /// Only events with this action, such as `grant.approve`.
    action: Option<String>,
    /// The `next_cursor` (a sequence number) of the previous page.
    after: Option<i64>,
    /// 1 to 500.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// Audit events in sequence order. Admins and auditors only.
#[utoipa::path(get, path = "/api/v1/audit/events", tag = "audit", security(("token" = [])), params(EventQuery),
    responses((status = 200, body = Page<EventView>)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    auth: Auth,
    Params(query): Params<EventQuery>,
) -> ApiResult<Json<Page<EventView>>> {
    auth.require_overseer()?;
    let time = |value: &Option<String>| value.as_deref().map(Timestamp::parse_rfc3339).transpose();
    let filter = AuditFilter {
        since_ms: time(&query.since)?.map(Timestamp::millis),
        until_ms: time(&query.until)?.map(Timestamp::millis),
        actor: query.actor,
        action: query.action,
    };
    let page = PageQuery { after: query.after, limit: query.limit }.request()?;
    let events = state.store().audit_events(&filter, page).await?;
    Ok(Json(Page {
        items: events
            .items
            .into_iter()
            .map(|e| EventView {
                seq: e.seq,
                at: Timestamp::from_millis(e.at_ms),
                actor: e.actor,
                action: e.action,
                subject: e.subject,
                details: e.details,
            })
            .collect(),
        next_cursor: events.next_cursor,
    }))
}

// ---------------------------------------------------------------------------
// The ledger: checkpoints and proofs
// ---------------------------------------------------------------------------

fn b64(hash: &custody_formats::merkle::Hash) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hash)
}

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

fn verifier_key(state: &AppState) -> ApiResult<String> {
    let key =
        state.key(custody_formats::KeyRole::Ledger).ok_or_else(|| unavailable("this server holds no ledger key"))?;
    let verifier = custody_formats::checkpoint::NoteVerifier::new(state.instance(), &key.public())
        .map_err(|e| unavailable(e.to_string()))?;
    Ok(verifier.to_vkey())
}

async fn latest(state: &AppState) -> ApiResult<custody_store::StoredCheckpoint> {
    state.store().latest_checkpoint().await?.ok_or_else(|| {
        ApiError::not_found(
            "no checkpoint has been signed yet: the audit log is empty, or its first checkpoint is due within a second",
        )
    })
}

/// The newest signed checkpoint. Public: it reveals only the log's size and
/// tree head, so that anyone can watch the log for rewritten history.
#[utoipa::path(get, path = "/api/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, body = CheckpointView), (status = 404, description = "no checkpoint yet")))]
pub(crate) async fn checkpoint(State(state): State<AppState>) -> ApiResult<Json<CheckpointView>> {
    let latest = latest(&state).await?;
    Ok(Json(CheckpointView {
        origin: state.instance().to_owned(),
        size: latest.size,
        root: b64(&latest.root),
        note: latest.note,
        verifier_key: verifier_key(&state)?,
        at: Timestamp::from_millis(latest.at_ms),
    }))
}

/// Every ledger-key handover, oldest first: how a watcher pinned to an
/// earlier ledger key reaches the current one. Public, like the checkpoint.
#[utoipa::path(get, path = "/api/v1/audit/handovers", tag = "audit",
    responses((status = 200, body = Page<HandoverView>)))]
pub(crate) async fn handovers(State(state): State<AppState>) -> ApiResult<Json<Page<HandoverView>>> {
    let handovers = state.store().ledger_handovers().await?;
    Ok(Json(Page {
        items: handovers
            .into_iter()
            .map(|h| HandoverView {
                from_key: h.from_key,
                to_key: h.to_key,
                size: h.size,
                root: b64(&h.root),
                note: h.note,
                at: Timestamp::from_millis(h.at_ms),
            })
            .collect(),
        next_cursor: None,
    }))
}

/// Which two tree sizes to prove consistent.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConsistencyQuery {
    /// The older tree size (a checkpoint the caller holds).
    old: u64,
    /// The newer tree size; the newest checkpoint's by default.
    new: Option<u64>,
}

/// Proves that the tree of `old` events is a prefix of the tree of `new`
/// events: that no event up to `old` was changed since. Public, like the
/// checkpoint: it holds hashes only.
#[utoipa::path(get, path = "/api/v1/audit/consistency", tag = "audit", params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyView)))]
pub(crate) async fn consistency(
    State(state): State<AppState>,
    Params(query): Params<ConsistencyQuery>,
) -> ApiResult<Json<ConsistencyView>> {
    let new = match query.new {
        Some(new) => new,
        None => latest(&state).await?.size,
    };
    let proof = state.store().consistency_proof(query.old, new).await?;
    Ok(Json(ConsistencyView { old_size: query.old, new_size: new, hashes: proof.iter().map(b64).collect() }))
}

/// Against which tree to prove.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ProofQuery {
    /// The tree size; the newest checkpoint's by default.
    size: Option<u64>,
}

/// The inclusion proof of event `seq`. Admins and auditors only.
#[utoipa::path(get, path = "/api/v1/audit/proof/{seq}", tag = "audit", security(("token" = [])),
    params(("seq" = i64, Path, description = "The event's sequence number"), ProofQuery),
    responses((status = 200, body = InclusionView)))]
pub(crate) async fn proof(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(seq): PathParam<i64>,
    Params(query): Params<ProofQuery>,
) -> ApiResult<Json<InclusionView>> {
    auth.require_overseer()?;
    let size = match query.size {
        Some(size) => size,
        None => latest(&state).await?.size,
    };
    let mut proofs = state.store().inclusion_proofs(&[seq], size).await?;
    let (leaf, hashes) = proofs.pop().expect("one proof per event asked for");
    let checkpoint = state.store().checkpoint_of_size(size).await?.map(|c| c.note);
    Ok(Json(InclusionView {
        seq,
        leaf_index: seq as u64 - 1,
        tree_size: size,
        leaf_hash: b64(&leaf),
        hashes: hashes.iter().map(b64).collect(),
        checkpoint,
    }))
}

/// Which events to export, and against which tree.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ExportQuery {
    /// The tree size to prove against (a checkpoint's size); the newest checkpoint's by default.
    size: Option<u64>,
    /// Only events at or after this RFC 3339 time.
    #[param(value_type = Option<custody_domain::Timestamp>)]
    since: Option<String>,
    /// Only events before this RFC 3339 time.
    #[param(value_type = Option<custody_domain::Timestamp>)]
    until: Option<String>,
    /// The `next_cursor` (a sequence number) of the previous page.
    after: Option<i64>,
    /// 1 to 500.
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// Audit events in sequence order, each with its inclusion proof in the tree
/// of `size` events; events after `size` are left for a later checkpoint.
/// Admins and auditors only.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", security(("token" = [])), params(ExportQuery),
    responses((status = 200, body = Page<ProvenEvent>)))]
pub(crate) async fn export(
    State(state): State<AppState>,
    auth: Auth,
    Params(query): Params<ExportQuery>,
) -> ApiResult<Json<Page<ProvenEvent>>> {
    auth.require_overseer()?;
    let size = match query.size {
        Some(size) => size,
        None => latest(&state).await?.size,
    };
    let time = |value: &Option<String>| value.as_deref().map(Timestamp::parse_rfc3339).transpose();
    let filter = AuditFilter {
        since_ms: time(&query.since)?.map(Timestamp::millis),
        until_ms: time(&query.until)?.map(Timestamp::millis),
        actor: None,
        action: None,
    };
    let page = PageQuery { after: query.after, limit: query.limit }.request()?;
    let mut events = state.store().audit_events(&filter, page).await?;
    let beyond = events.items.iter().position(|e| e.seq as u64 > size);
    if let Some(first_beyond) = beyond {
        events.items.truncate(first_beyond);
        events.next_cursor = None;
    }
    let seqs: Vec<i64> = events.items.iter().map(|e| e.seq).collect();
    let proofs = state.store().inclusion_proofs(&seqs, size).await?;
    Ok(Json(Page {
        items: events
            .items
            .into_iter()
            .zip(proofs)
            .map(|(e, (leaf, hashes))| ProvenEvent {
                seq: e.seq,
                at: Timestamp::from_millis(e.at_ms),
                at_ms: e.at_ms,
                actor: e.actor,
                action: e.action,
                subject: e.subject,
                details: e.details,
                tree_size: size,
                leaf_hash: b64(&leaf),
                hashes: hashes.iter().map(b64).collect(),
            })
            .collect(),
        next_cursor: events.next_cursor,
    }))
}
