//! For auditors and admins: the findings with their reviews (resolved by
//! an admin who was not involved), the report of a period (the model
//! `custody report` prints), and the ledger's checkpoint proved consistent
//! with one the auditor kept and pastes, beside the command that checks
//! it offline: a page proves nothing about the server that serves it.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use custody_api::ReportData;
use custody_domain::Timestamp;
use custody_formats::{merkle, KeyRole};
use maud::{html, Markup};
use serde::Deserialize;

use super::html::{self, seg};
use super::session::{Posted, Visitor};
use super::{WebError, WebQuery, WebResult};
use crate::AppState;

fn overseers_only(visitor: &Visitor) -> WebResult<()> {
    if visitor.auth.reads_everything() {
        Ok(())
    } else {
        Err(WebError::forbidden("only admins and auditors read findings, reports and the ledger"))
    }
}

/// The pages of oversight, linked from each.
pub(crate) fn links() -> Markup {
    html! {
        nav.subnav aria-label="Oversight" {
            a href="/audit" { "Audit log" } " · " a href="/findings" { "Findings" } " · "
            a href="/report" { "Report" } " · " a href="/audit/checkpoint" { "Checkpoint" } " · "
            a href="/api/v1/trust" download="trust.json" { "Trust file" }
        }
    }
}

/// Every finding, open ones first, each with its review or the form to
/// review it (or why the visitor may not).
pub(crate) async fn findings(State(state): State<AppState>, visitor: Visitor) -> WebResult<Response> {
    overseers_only(&visitor)?;
    let mut all = state.store().list_findings(false).await?;
    all.sort_by_key(|f| (f.resolved_at.is_some(), std::cmp::Reverse(f.id)));
    let mut rows = Vec::with_capacity(all.len());
    for f in &all {
        let review = if f.resolved_at.is_some() {
            html! {
                (html::status("resolved")) " by " (f.resolved_by.as_deref().unwrap_or("—"))
                @if let Some(at) = f.resolved_at { " · " (html::when(at)) }
                @if let Some(r) = &f.resolution { div.hint { "“" (r) "”" } }
            }
        } else {
            let decision = state.store().finding_review_decision(&visitor.auth.name, f.id).await?;
            html! {
                (html::status("open"))
                @if decision.allowed {
                    (html::post_form(&format!("/findings/{}/resolve", f.id), &visitor, "resolve", html! {
                        input type="hidden" name="from" value="findings";
                        label { "Review " input name="resolution" class="resolution" required; }
                        button type="submit" class="resolve-finding" { "Resolve" }
                    }))
                } @else {
                    (html::refusal_notes(&decision))
                }
            }
        };
        rows.push(html! {
            tr data-finding=(f.id) {
                td { (f.id) }
                td { (f.kind) }
                td { (f.subject) }
                td { (f.summary) }
                td.nowrap { (html::when(f.opened_at)) }
                td.review { (review) }
            }
        });
    }
    let body = html! {
        (links())
        h1 { "Findings" }
        p.hint { "What an auditor must look at: every break-glass deployment. An admin who had no hand in it reviews it." }
        @if rows.is_empty() { p.empty { "No finding." } } @else {
            table.list #findings {
                thead { tr { th { "#" } th { "Kind" } th { "Subject" } th { "What" } th { "Opened" } th { "Review" } } }
                tbody { @for row in rows { (row) } }
            }
        }
    };
    Ok(html::page("Findings", Some(&visitor), body).into_response())
}

/// The period of a report: two days, or RFC 3339 times.
#[derive(Deserialize)]
pub(crate) struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
}

/// A day's start, or the end of it (`end`: the next day's start, as
/// `custody report --to DAY` takes the day whole), or an RFC 3339 time.
fn day_or_time(value: &str, end: bool) -> WebResult<Timestamp> {
    let full = if value.len() == 10 { format!("{value}T00:00:00Z") } else { value.to_owned() };
    let at = Timestamp::parse_rfc3339(&full).map_err(|_| {
        WebError::invalid(format!("{value:?} is not a day (2025-01-31) or an RFC 3339 time")).back("/report")
    })?;
    Ok(if end && value.len() == 10 { Timestamp::from_millis(at.millis() + DAY_MS) } else { at })
}

const DAY_MS: i64 = 24 * 3600 * 1000;

/// The report of a period: the last 30 days unless asked otherwise.
pub(crate) async fn report(
    State(state): State<AppState>,
    visitor: Visitor,
    WebQuery(query): WebQuery<ReportQuery>,
) -> WebResult<Response> {
    overseers_only(&visitor)?;
    let now = custody_store::now_ms();
    let given = |v: &Option<String>, end: bool| {
        v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(|v| day_or_time(v, end)).transpose()
    };
    // By default, the last 30 days, today included.
    let today = Timestamp::from_millis(now - now.rem_euclid(DAY_MS));
    let to = given(&query.to, true)?.unwrap_or(Timestamp::from_millis(today.millis() + DAY_MS));
    let from = given(&query.from, false)?.unwrap_or(Timestamp::from_millis(today.millis() - 29 * DAY_MS));
    let data = crate::api::report::report_of(&state, &visitor.auth, from, to)
        .await
        .map_err(|e| WebError::from(e).back("/report"))?;
    let (from_day, to_day) = (day(from), day(Timestamp::from_millis(to.millis() - 1)));
    let body = html! {
        (links())
        h1 { "Report" }
        form method="get" action="/report" class="filters" {
            label { "From " input type="date" name="from" value=(from_day) #report-from; }
            label { "To (included) " input type="date" name="to" value=(to_day) #report-to; }
            button type="submit" #make-report { "Show" }
        }
        (report_body(&data))
        p.hint {
            "The same report, signed evidence aside, from the command line: "
            code { "custody report --from " (from_day) " --to " (to_day) }
        }
    };
    Ok(html::page("Report", Some(&visitor), body).into_response())
}

fn day(at: Timestamp) -> String {
    at.to_rfc3339().chars().take(10).collect()
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "—".to_owned()
    } else {
        list.join(", ")
    }
}

fn report_body(data: &ReportData) -> Markup {
    html! {
        p.meta #report-period {
            "Instance " strong { (data.instance) } ", from " (html::when(data.from)) " to " (html::when(data.to))
            ", made " (html::when(data.generated_at))
            @if let Some(size) = data.checkpoint_size { ", ledger checkpoint of " (size) " events" }
            "."
        }
        section {
            h2 { "Production deployments (" (data.deployments.len()) ")" }
            @if data.deployments.is_empty() { p.empty { "None in the period." } } @else {
                table.list #report-deployments {
                    thead { tr {
                        th { "Deployment" } th { "Build" } th { "Finished" } th { "Requested by" } th { "Approved by" }
                        th { "Tested by" } th { "Changes: authors / reviewers / merged by" }
                    } }
                    tbody {
                        @for d in &data.deployments {
                            tr data-deployment={ (d.project) "/" (d.number) } {
                                td {
                                    a href={ "/projects/" (seg(&d.project)) "/deployments/" (d.number) } { (d.project) " #" (d.number) }
                                    " to " (d.environment)
                                    @if let Some(why) = &d.break_glass { div { strong { "break-glass" } ": " (why) } }
                                }
                                td { "build " (d.build) " " code.sha { (html::short(&d.commit)) } }
                                td.nowrap { (html::when(d.finished_at)) }
                                td { (d.requester.as_deref().unwrap_or("custody (promotion)")) }
                                td { (names(&d.approvers)) }
                                td { (names(&d.testers)) }
                                td {
                                    @if d.changes.is_empty() { "—" }
                                    @for c in &d.changes {
                                        div { "#" (c.number) ": " (names(&c.authors)) " / " (names(&c.reviewers)) " / " (c.merged_by) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Findings (" (data.findings.len()) ")" }
            @if data.findings.is_empty() { p.empty { "None in the period." } } @else {
                table.list #report-findings {
                    thead { tr { th { "Kind" } th { "When" } th { "Subject" } th { "Who" } th { "What" } th { "Review" } } }
                    tbody {
                        @for f in &data.findings {
                            tr {
                                td { (f.kind) }
                                td.nowrap { (html::when(f.at)) }
                                td { (f.subject) }
                                td { (f.actor.as_deref().unwrap_or("—")) }
                                td { (f.summary) }
                                td { @if let Some(by) = &f.resolved_by { (by) ": " (f.resolution.as_deref().unwrap_or("")) } @else { "—" } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The newest checkpoint, and the form to prove it consistent with one
/// the auditor kept.
pub(crate) async fn checkpoint(State(state): State<AppState>, visitor: Visitor) -> WebResult<Response> {
    overseers_only(&visitor)?;
    checkpoint_page(&state, &visitor, None).await
}

/// The newest checkpoint proved consistent with a pasted one.
pub(crate) async fn prove(State(state): State<AppState>, posted: Posted) -> WebResult<Response> {
    overseers_only(&posted.visitor)?;
    let pasted = posted.get("checkpoint").unwrap_or_default().replace("\r\n", "\n");
    checkpoint_page(&state, &posted.visitor, Some(pasted)).await
}

/// What proving found: the pasted checkpoint's size, the proof's hashes,
/// and whether it holds.
struct Proved {
    old_size: u64,
    new_size: u64,
    hashes: Vec<merkle::Hash>,
    verdict: Result<(), String>,
}

async fn prove_pasted(state: &AppState, pasted: &str) -> WebResult<Result<Proved, String>> {
    let Some(key) = state.key(KeyRole::Ledger) else {
        return Ok(Err("this server holds no ledger key to open the checkpoint with".to_owned()));
    };
    let Some(latest) = state.store().latest_checkpoint().await? else {
        return Ok(Err("no checkpoint has been signed yet".to_owned()));
    };
    let chain = state.store().ledger_key_chain(state.instance(), key).await?;
    // A note ends in a line break, which a paste may lose.
    let old = match chain.open(&format!("{}\n", pasted.trim())) {
        Ok(old) => old,
        Err(e) => return Ok(Err(format!("the pasted text is not a checkpoint this ledger signed: {e}"))),
    };
    if old.size > latest.size {
        return Ok(Err(format!(
            "the pasted checkpoint covers {} events, more than the {} of the newest: history was rewritten, or it is another ledger's",
            old.size, latest.size
        )));
    }
    let hashes = if old.size == latest.size || old.size == 0 {
        Vec::new()
    } else {
        state.store().consistency_proof(old.size, latest.size).await?
    };
    let verdict = if old.size == 0 {
        Ok(())
    } else {
        merkle::verify_consistency(old.size, latest.size, &old.root, &latest.root, &hashes).map_err(|e| e.to_string())
    };
    Ok(Ok(Proved { old_size: old.size, new_size: latest.size, hashes, verdict }))
}

async fn checkpoint_page(state: &AppState, visitor: &Visitor, pasted: Option<String>) -> WebResult<Response> {
    let latest = state.store().latest_checkpoint().await?;
    let proved = match &pasted {
        Some(text) => Some(prove_pasted(state, text).await?),
        None => None,
    };
    let body = html! {
        (links())
        h1 { "Checkpoint" }
        section {
            h2 { "The newest signed checkpoint" }
            @match &latest {
                None => p.empty { "No checkpoint has been signed yet." },
                Some(c) => {
                    dl.facts {
                        dt { "Events covered" } dd { (c.size) }
                        dt { "Tree head" } dd { code.sha { (STANDARD.encode(c.root)) } }
                        dt { "Signed" } dd { (html::when(Timestamp::from_millis(c.at_ms))) }
                    }
                    p.hint { "Keep it: a checkpoint you hold lets you prove later that no event it covers was changed." }
                    pre.log #newest-checkpoint { (c.note) }
                },
            }
        }
        section {
            h2 { "Prove it extends one you kept" }
            (html::post_form("/audit/checkpoint", visitor, "prove", html! {
                label { "A checkpoint you kept (the whole signed note) "
                    textarea name="checkpoint" rows="7" #pasted-checkpoint { (pasted.as_deref().unwrap_or_default()) } }
                div.buttons { button type="submit" #prove { "Prove consistent" } }
            }))
            @if let Some(proved) = &proved {
                @match proved {
                    Err(why) => p.refusal #consistency-verdict data-consistent="false" { "✗ " (why) },
                    Ok(p) => {
                        @match &p.verdict {
                            Ok(()) => p.notice.ok #consistency-verdict data-consistent="true" {
                                "✓ The tree of the " (p.old_size) " events your checkpoint covers is a prefix of the newest tree of "
                                (p.new_size) " events: none of them was changed since."
                            },
                            Err(why) => p.refusal #consistency-verdict data-consistent="false" {
                                "✗ History was rewritten: the newest checkpoint does not extend yours (" (why) ")."
                            },
                        }
                        details {
                            summary { "The consistency proof (" (p.hashes.len()) " hashes)" }
                            ol.proof { @for h in &p.hashes { li { code.sha { (STANDARD.encode(h)) } } } }
                        }
                    },
                }
            }
            p.hint {
                "This page runs on the server it checks, so it proves nothing about that server. Check from your own machine, "
                "with the ledger key you pinned: "
            }
            pre.log { "custody audit watch --state kept-checkpoint.json" }
            p.hint { "It fetches the newest checkpoint, checks its signature, proves it extends the one it kept, and keeps the newer one." }
        }
    };
    Ok(html::page("Checkpoint", Some(visitor), body).into_response())
}
