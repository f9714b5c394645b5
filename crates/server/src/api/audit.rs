//! The audit log, read-only.

use axum::extract::State;
use axum::Json;
use custody_domain::Timestamp;
use custody_store::{AuditFilter, Page};
use serde::{Deserialize, Serialize};

use super::{PageQuery, Params};
use crate::auth::Auth;
use crate::error::ApiResult;
use crate::AppState;

/// Which events to read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Only events at or after this RFC 3339 time.
    since: Option<String>,
    /// Only events before this RFC 3339 time.
    until: Option<String>,
    /// Only events by this actor.
    actor: Option<String>,
    /// Only events with this action, such as `grant.approve`.
    action: Option<String>,
    /// The `next_cursor` (a sequence number) of the previous page.
    after: Option<i64>,
    /// 1 to 500.
    limit: Option<i64>,
}

/// An audit event as shown.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct EventView {
    /// Position in the log, from 1, without gaps.
    seq: i64,
    /// When it was written.
    at: Timestamp,
    actor: String,
    action: String,
    subject: String,
    #[schema(value_type = Object)]
    details: serde_json::Value,
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
