//! The audit log for auditors and admins: events with filters, a page at a
//! time, the latest signed checkpoint, and whether it verifies.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_domain::Timestamp;
use custody_formats::KeyRole;
use custody_store::{AuditFilter, PageRequest};
use serde::Deserialize;

use maud::{html, Markup};

use super::html;
use super::session::Visitor;
use super::{WebError, WebQuery, WebResult};
use crate::AppState;

/// Events per page.
const PAGE: i64 = 50;

#[derive(Deserialize)]
pub(crate) struct EventQuery {
    actor: Option<String>,
    action: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after: Option<i64>,
}

/// A day (`2025-01-31`) or an RFC 3339 time; empty means no bound.
fn time(value: Option<&str>) -> WebResult<Option<i64>> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
    let full = if value.len() == 10 { format!("{value}T00:00:00Z") } else { value.to_owned() };
    Timestamp::parse_rfc3339(&full).map(|t| Some(t.millis())).map_err(|_| {
        WebError::invalid(format!("{value:?} is not a day (2025-01-31) or an RFC 3339 time")).back("/audit")
    })
}

fn some(value: &Option<String>) -> Option<String> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
}

/// What verifying the newest checkpoint found, in words, and whether it held.
async fn checkpoint(state: &AppState) -> WebResult<Markup> {
    let Some(latest) = state.store().latest_checkpoint().await? else {
        return Ok(html! { p.empty { "No checkpoint has been signed yet." } });
    };
    let verdict = match state.key(KeyRole::Ledger) {
        None => Err("this server holds no ledger key to check the signature with".to_owned()),
        Some(key) => match state.store().ledger_key_chain(state.instance(), key).await?.open(&latest.note) {
            Err(e) => Err(e.to_string()),
            Ok(opened) if opened.size != latest.size => {
                Err(format!("the signed note covers {} events, not the {} recorded", opened.size, latest.size))
            }
            Ok(opened) => {
                let root = state.store().ledger_root(opened.size).await?;
                if root == opened.root {
                    Ok(opened.size)
                } else {
                    Err(format!(
                        "the stored tree of {} events no longer has the signed root: the log was rewritten; run `custody audit verify` to find where",
                        opened.size
                    ))
                }
            }
        },
    };
    Ok(html! {
        dl.facts {
            dt { "Events covered" } dd #checkpoint-size { (latest.size) }
            dt { "Signed" } dd { (html::when(Timestamp::from_millis(latest.at_ms))) }
        }
        pre.log #checkpoint-note { (latest.note) }
        @match verdict {
            Ok(size) => p.notice.ok #checkpoint-verdict data-intact="true" {
                "✓ The signature verifies with the ledger key, and the stored tree of the first " (size)
                " events has the signed root."
            },
            Err(why) => p.refusal #checkpoint-verdict data-intact="false" { "✗ " (why) },
        }
        p.hint {
            "This check runs on the server. To check without trusting it, run " code { "custody audit verify" }
            " against the database, or " code { "custody audit watch" } " from elsewhere."
        }
    })
}

/// The audit log.
pub(crate) async fn events(
    State(state): State<AppState>,
    visitor: Visitor,
    WebQuery(query): WebQuery<EventQuery>,
) -> WebResult<Response> {
    if !visitor.auth.reads_everything() {
        return Err(WebError::forbidden("only admins and auditors read the audit log"));
    }
    let filter = AuditFilter {
        since_ms: time(query.since.as_deref())?,
        until_ms: time(query.until.as_deref())?,
        actor: some(&query.actor),
        action: some(&query.action),
    };
    let page = state.store().audit_events(&filter, PageRequest::new(query.after, Some(PAGE))).await?;
    let checkpoint = checkpoint(&state).await?;
    let next = page.next_cursor.map(|next| {
        let mut link = format!("/audit?after={next}");
        for (name, v) in
            [("actor", &query.actor), ("action", &query.action), ("since", &query.since), ("until", &query.until)]
        {
            if let Some(v) = some(v) {
                link.push_str(&format!("&{name}={}", html::seg(&v)));
            }
        }
        link
    });
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let body = html! {
        (super::oversight::links())
        h1 { "Audit log" }
        section { h2 { "Latest checkpoint" } (checkpoint) }
        section {
            h2 { "Events" }
            form method="get" action="/audit" class="filters" {
                label { "Actor " input name="actor" value=(value(&query.actor)) #filter-actor; }
                label { "Action " input name="action" value=(value(&query.action)) #filter-action placeholder="deploy.approve"; }
                label { "Since " input name="since" value=(value(&query.since)) placeholder="2025-01-31"; }
                label { "Until " input name="until" value=(value(&query.until)); }
                button type="submit" #filter { "Filter" } " " a href="/audit" { "Clear" }
            }
            @if page.items.is_empty() {
                p.empty { "No event matches." }
            } @else {
                table.list #events {
                    thead { tr { th { "#" } th { "When" } th { "Actor" } th { "Action" } th { "Subject" } th { "Details" } } }
                    tbody {
                        @for event in &page.items {
                            tr {
                                td { (event.seq) }
                                td.nowrap { (html::when(Timestamp::from_millis(event.at_ms))) }
                                td { (event.actor) }
                                td { code { (event.action) } }
                                td { (event.subject) }
                                td { code.details { (event.details.to_string()) } }
                            }
                        }
                    }
                }
            }
            @if let Some(link) = next { p { a href=(link) #next-page { "Next " (PAGE) " events →" } } }
        }
    };
    Ok(html::page("Audit log", Some(&visitor), body).into_response())
}
