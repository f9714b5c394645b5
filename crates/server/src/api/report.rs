//! The auditor's report: every production deployment of a period with its
//! chain of custody and who held each duty, and every finding.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use custody_api::{ReportChange, ReportData, ReportDeployment, ReportFinding};
use custody_domain::audit::AuditEvent;
use custody_domain::{ProjectName, Timestamp};
use custody_formats::attestation::{unverified_predicate, DeploymentV1};
use custody_store::{AuditFilter, PageRequest};
use serde::Deserialize;
use serde_json::Value;

use super::Params;
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// The period.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReportQuery {
    /// From this RFC 3339 time (inclusive).
    #[param(value_type = custody_domain::Timestamp)]
    from: String,
    /// To this RFC 3339 time (exclusive).
    #[param(value_type = custody_domain::Timestamp)]
    to: String,
}

/// A finding that is an audit event, before its kind and summary.
fn finding_of(event: &AuditEvent) -> ReportFinding {
    ReportFinding {
        kind: String::new(),
        at: Timestamp::from_millis(event.at_ms),
        seq: Some(event.seq),
        subject: event.subject.clone(),
        actor: None,
        summary: String::new(),
        resolved_by: None,
        resolution: None,
    }
}

/// A finding that is an audit event, naming who did it.
fn finding_by(event: &AuditEvent) -> ReportFinding {
    ReportFinding { actor: Some(event.actor.clone()), ..finding_of(event) }
}

/// A recorded text, or nothing.
fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// A recorded list of names, or none.
fn list(value: &Value) -> Vec<String> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

async fn events_between(state: &AppState, from: i64, to: i64) -> ApiResult<Vec<AuditEvent>> {
    let filter = AuditFilter { since_ms: Some(from), until_ms: Some(to), actor: None, action: None };
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let page = state.store().audit_events(&filter, PageRequest::new(after, Some(500))).await?;
        events.extend(page.items);
        match page.next_cursor {
            Some(next) if events.len() < 200_000 => after = Some(next),
            _ => break,
        }
    }
    Ok(events)
}

/// The last environments of each project's pipeline: those no other follows.
async fn production_environments(state: &AppState, project: &ProjectName) -> Vec<String> {
    let Ok(view) = state.store().get_project(project).await else { return Vec::new() };
    let repository = state.hosting().repositories().path(project);
    let branch = view.default_branch;
    let policy = tokio::task::spawn_blocking(move || custody_app::releases::mainline_pipeline(&repository, &branch))
        .await
        .ok()
        .and_then(Result::ok);
    let Some(policy) = policy else { return Vec::new() };
    let environments = &policy.environments;
    environments
        .iter()
        .filter(|e| !environments.iter().any(|f| f.after.as_deref() == Some(e.name.as_str())))
        .map(|e| e.name.clone())
        .collect()
}

/// Every production deployment (to the last environment of a pipeline)
/// finished in the period, with its chain of custody, and every finding:
/// break-glass deployments, grants applied by a single bootstrap admin,
/// imported history nobody reviewed, refused pushes, rejected or failed
/// deployments. Admins and auditors only.
#[utoipa::path(get, path = "/api/v1/report", tag = "evidence", security(("token" = [])), params(ReportQuery),
    responses((status = 200, body = ReportData)))]
pub(crate) async fn report(
    State(state): State<AppState>,
    auth: Auth,
    Params(query): Params<ReportQuery>,
) -> ApiResult<Json<ReportData>> {
    auth.require_overseer()?;
    let from = Timestamp::parse_rfc3339(&query.from)?;
    let to = Timestamp::parse_rfc3339(&query.to)?;
    Ok(Json(report_of(&state, &auth.0, from, to).await?))
}

/// The report of the period from `from` (inclusive) to `to` (exclusive),
/// for the API and the pages alike, as `reader` (an admin or auditor: the
/// caller checks) reads it.
pub(crate) async fn report_of(
    state: &AppState,
    reader: &custody_store::Authenticated,
    from: Timestamp,
    to: Timestamp,
) -> ApiResult<ReportData> {
    let state = state.clone();
    if to.millis() <= from.millis() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid", "the period must end after it starts"));
    }
    let events = events_between(&state, from.millis(), to.millis()).await?;
    let mut production: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut deployments = Vec::new();
    let mut findings = Vec::new();
    for event in &events {
        let details = &event.details;
        match event.action.as_str() {
            "deploy.finish" => {
                let Some((project, number)) = event.subject.strip_prefix("deployment:").and_then(|s| s.split_once('/'))
                else {
                    continue;
                };
                let Ok(name) = ProjectName::parse(project) else { continue };
                let environment = details["environment"].as_str().unwrap_or_default().to_owned();
                if !production.contains_key(project) {
                    let found = production_environments(&state, &name).await;
                    production.insert(project.to_owned(), found);
                }
                if details["status"] != custody_domain::status::DeploymentStatus::Succeeded.as_str() {
                    findings.push(ReportFinding {
                        kind: "deployment_failed".into(),
                        summary: format!("deployment to {environment} failed: {}", text(&details["reason"])),
                        ..finding_of(event)
                    });
                    continue;
                }
                if !production[project].contains(&environment) {
                    continue;
                }
                let number: i64 = number.parse().unwrap_or(0);
                let access = state.store().project_access(reader, &name).await?;
                let (_, attestation) = state.store().deployment_record(&access, number).await?;
                let attested = attestation.as_deref().and_then(unverified_predicate::<DeploymentV1>);
                let mut changes = Vec::new();
                let released: Vec<i64> = attested.iter().flat_map(|p| &p.release).map(|r| r.change).collect();
                for change in released {
                    let merged =
                        state.store().audit_event_about("change.merge", &format!("change:{project}/{change}")).await?;
                    if let Some(merged) = merged {
                        changes.push(ReportChange {
                            number: change,
                            authors: list(&merged.details["authors"]),
                            reviewers: list(&merged.details["approvers"]),
                            merged_by: merged.actor,
                            merge_commit: merged.details["merge_commit"].as_str().map(str::to_owned),
                            merged_at: Timestamp::from_millis(merged.at_ms),
                            seq: merged.seq,
                        });
                    }
                }
                let build = details["build"].as_i64().unwrap_or_default();
                let built =
                    state.store().audit_event_about("build.finish", &format!("build:{project}/{build}")).await?;
                deployments.push(ReportDeployment {
                    project: project.to_owned(),
                    number,
                    environment,
                    after: attested.as_ref().and_then(|p| p.after.clone()),
                    build,
                    commit: text(&details["commit"]),
                    artifacts: built
                        .and_then(|b| serde_json::from_value(b.details["artifacts"].clone()).ok())
                        .unwrap_or_default(),
                    finished_at: Timestamp::from_millis(event.at_ms),
                    requester: details["requested_by"].as_str().map(str::to_owned),
                    approvers: list(&details["approvers"]),
                    testers: list(&details["testers"]),
                    break_glass: details["break_glass"].as_str().map(str::to_owned),
                    gate: attested.as_ref().and_then(|p| p.gate.clone()),
                    changes,
                    envelope_sha256: details["envelope_sha256"].as_str().map(str::to_owned),
                    seq: event.seq,
                });
            }
            "instance.start" if details["changed"].as_array().is_some_and(|c| !c.is_empty()) => {
                findings.push(ReportFinding {
                    kind: "configuration_changed".into(),
                    summary: format!(
                        "custody started on {} with changed {}: version {}, configuration sha256 {}",
                        event.subject.strip_prefix("host:").unwrap_or(&event.subject),
                        list(&details["changed"]).join(" and "),
                        text(&details["version"]),
                        text(&details["configuration_sha256"]),
                    ),
                    ..finding_of(event)
                })
            }
            "git.push.refused" => findings.push(ReportFinding {
                kind: "refused_push".into(),
                summary: format!("{} tried to update a protected ref; refused", event.actor),
                ..finding_by(event)
            }),
            "project.import.apply" => findings.push(ReportFinding {
                kind: "imported_baseline".into(),
                summary: "history imported as an unreviewed baseline (approved as a grant)".into(),
                ..finding_by(event)
            }),
            "deploy.reject" | "deploy.test_failed" | "deploy.cancel" => findings.push(ReportFinding {
                kind: event.action.replace('.', "_"),
                summary: format!("{} by {}", event.action, event.actor),
                ..finding_by(event)
            }),
            _ if details["bootstrap"] == true && details["how"] == "bootstrap" => findings.push(ReportFinding {
                kind: "bootstrap_grant".into(),
                summary: format!(
                    "{} applied by {} alone, during the single-admin bootstrap",
                    event.action, event.actor
                ),
                ..finding_by(event)
            }),
            _ => {}
        }
    }
    for finding in state.store().list_findings(false).await? {
        let at = finding.opened_at.millis();
        if at < from.millis() || at >= to.millis() {
            continue;
        }
        findings.push(ReportFinding {
            kind: finding.kind,
            at: finding.opened_at,
            seq: None,
            subject: finding.subject,
            actor: None,
            summary: finding.summary,
            resolved_by: finding.resolved_by,
            resolution: finding.resolution,
        });
    }
    let checkpoint_size = state.store().latest_checkpoint().await?.map(|c| c.size);
    Ok(ReportData {
        instance: state.instance().to_owned(),
        from,
        to,
        generated_at: Timestamp::from_millis(custody_store::now_ms()),
        checkpoint_size,
        deployments,
        findings,
    })
}
