//! The audit log for auditors and admins: events with filters, a page at a
//! time, the latest signed checkpoint, and whether it verifies.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use custody_domain::Timestamp;
use custody_formats::KeyRole;
use custody_store::{AuditFilter, PageRequest};
use serde::Deserialize;

use super::html::{self, esc, push};
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
async fn checkpoint(state: &AppState) -> WebResult<String> {
    let Some(latest) = state.store().latest_checkpoint().await? else {
        return Ok("<p class=\"empty\">No checkpoint has been signed yet.</p>".into());
    };
    let mut out = format!(
        "<dl class=\"facts\"><dt>Events covered</dt><dd id=\"checkpoint-size\">{}</dd><dt>Signed</dt><dd>{}</dd></dl>\
         <pre class=\"log\" id=\"checkpoint-note\">{}</pre>",
        latest.size,
        esc(&html::when(Timestamp::from_millis(latest.at_ms))),
        esc(&latest.note)
    );
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
    match verdict {
        Ok(size) => push(
            &mut out,
            format_args!(
                "<p class=\"notice ok\" id=\"checkpoint-verdict\" data-intact=\"true\">✓ The signature verifies with the ledger key, \
                 and the stored tree of the first {size} events has the signed root.</p>"
            ),
        ),
        Err(why) => push(
            &mut out,
            format_args!(
                "<p class=\"refusal\" id=\"checkpoint-verdict\" data-intact=\"false\">✗ {}</p>",
                esc(&why)
            ),
        ),
    }
    out.push_str(
        "<p class=\"hint\">This check runs on the server. To check without trusting it, run \
         <code>custody audit verify</code> against the database, or <code>custody audit watch</code> from elsewhere.</p>",
    );
    Ok(out)
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
    let mut body = String::from("<h1>Audit log</h1><section><h2>Latest checkpoint</h2>");
    body.push_str(&checkpoint(&state).await?);
    body.push_str("</section><section><h2>Events</h2>");
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or_default()).to_string();
    push(
        &mut body,
        format_args!(
            "<form method=\"get\" action=\"/audit\" class=\"filters\">\
             <label>Actor <input name=\"actor\" value=\"{}\" id=\"filter-actor\"></label>\
             <label>Action <input name=\"action\" value=\"{}\" id=\"filter-action\" placeholder=\"deploy.approve\"></label>\
             <label>Since <input name=\"since\" value=\"{}\" placeholder=\"2025-01-31\"></label>\
             <label>Until <input name=\"until\" value=\"{}\"></label>\
             <button type=\"submit\" id=\"filter\">Filter</button> <a href=\"/audit\">Clear</a></form>",
            value(&query.actor),
            value(&query.action),
            value(&query.since),
            value(&query.until)
        ),
    );
    if page.items.is_empty() {
        body.push_str("<p class=\"empty\">No event matches.</p>");
    } else {
        body.push_str(
            "<table class=\"list\" id=\"events\"><thead><tr><th>#</th><th>When</th><th>Actor</th><th>Action</th>\
             <th>Subject</th><th>Details</th></tr></thead><tbody>",
        );
        for event in &page.items {
            push(
                &mut body,
                format_args!(
                    "<tr><td>{}</td><td class=\"nowrap\">{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td><code class=\"details\">{}</code></td></tr>",
                    event.seq,
                    esc(&html::when(Timestamp::from_millis(event.at_ms))),
                    esc(&event.actor),
                    esc(&event.action),
                    esc(&event.subject),
                    esc(&event.details.to_string())
                ),
            );
        }
        body.push_str("</tbody></table>");
    }
    if let Some(next) = page.next_cursor {
        let mut link = format!("/audit?after={next}");
        for (name, v) in
            [("actor", &query.actor), ("action", &query.action), ("since", &query.since), ("until", &query.until)]
        {
            if let Some(v) = some(v) {
                link.push_str(&format!("&{name}={}", html::seg(&v)));
            }
        }
        push(&mut body, format_args!("<p><a href=\"{}\" id=\"next-page\">Next {PAGE} events →</a></p>", esc(&link)));
    }
    body.push_str("</section>");
    Ok(html::document("Audit log", Some(&visitor), &body).into_response())
}
