//! The auditor's report: every production deployment of a period with its
//! chain of custody and who held each duty, and every finding.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use custody_domain::audit::AuditEvent;
use custody_domain::{ProjectName, Timestamp};
use custody_formats::attestation::{unverified_predicate, DeploymentV1};
use custody_store::{AuditFilter, PageRequest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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

/// What the report holds; the CLI renders it as HTML, Markdown or JSON.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ReportData {
    instance: String,
    from: Timestamp,
    to: Timestamp,
    generated_at: Timestamp,
    /// The newest signed checkpoint's tree size.
    checkpoint_size: Option<u64>,
    #[schema(value_type = Vec<Object>)]
    deployments: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    findings: Vec<Value>,
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
                    findings.push(json!({
                        "kind": "deployment_failed", "at": Timestamp::from_millis(event.at_ms), "seq": event.seq,
                        "subject": event.subject,
                        "summary": format!("deployment to {environment} failed: {}", details["reason"].as_str().unwrap_or("")),
                    }));
                    continue;
                }
                if !production[project].contains(&environment) {
                    continue;
                }
                let number: i64 = number.parse().unwrap_or(0);
                let access = state.store().project_access(&auth.0, &name).await?;
                let (_, attestation) = state.store().deployment_record(&access, number).await?;
                let attested = attestation.as_deref().and_then(unverified_predicate::<DeploymentV1>);
                let mut changes = Vec::new();
                let released: Vec<i64> = attested.iter().flat_map(|p| &p.release).map(|r| r.change).collect();
                for change in released {
                    let merged =
                        state.store().audit_event_about("change.merge", &format!("change:{project}/{change}")).await?;
                    if let Some(merged) = merged {
                        changes.push(json!({
                            "number": change,
                            "authors": merged.details["authors"],
                            "reviewers": merged.details["approvers"],
                            "merged_by": merged.actor,
                            "merge_commit": merged.details["merge_commit"],
                            "merged_at": Timestamp::from_millis(merged.at_ms),
                            "seq": merged.seq,
                        }));
                    }
                }
                let build =
                    state.store().audit_event_about("build.finish", &format!("build:{project}/{}", details["build"])).await?;
                deployments.push(json!({
                    "project": project,
                    "number": number,
                    "environment": environment,
                    "after": attested.as_ref().and_then(|p| p.after.as_deref()),
                    "build": details["build"],
                    "commit": details["commit"],
                    "artifacts": build.as_ref().map(|b| b.details["artifacts"].clone()).unwrap_or(Value::Null),
                    "finished_at": Timestamp::from_millis(event.at_ms),
                    "requester": details["requested_by"],
                    "approvers": details["approvers"],
                    "testers": details["testers"],
                    "break_glass": details["break_glass"],
                    "gate": attested.as_ref().and_then(|p| p.gate.as_ref()),
                    "changes": changes,
                    "envelope_sha256": details["envelope_sha256"],
                    "seq": event.seq,
                }));
            }
            "git.push.refused" => findings.push(json!({
                "kind": "refused_push", "at": Timestamp::from_millis(event.at_ms), "seq": event.seq,
                "subject": event.subject, "actor": event.actor,
                "summary": format!("{} tried to update a protected ref; refused", event.actor),
            })),
            "project.import.apply" => findings.push(json!({
                "kind": "imported_baseline", "at": Timestamp::from_millis(event.at_ms), "seq": event.seq,
                "subject": event.subject, "actor": event.actor,
                "summary": "history imported as an unreviewed baseline (approved as a grant)",
            })),
            "deploy.reject" | "deploy.test_failed" | "deploy.cancel" => findings.push(json!({
                "kind": event.action.replace('.', "_"), "at": Timestamp::from_millis(event.at_ms), "seq": event.seq,
                "subject": event.subject, "actor": event.actor,
                "summary": format!("{} by {}", event.action, event.actor),
            })),
            _ if details["bootstrap"] == true && details["how"] == "bootstrap" => findings.push(json!({
                "kind": "bootstrap_grant", "at": Timestamp::from_millis(event.at_ms), "seq": event.seq,
                "subject": event.subject, "actor": event.actor,
                "summary": format!("{} applied by {} alone, during the single-admin bootstrap", event.action, event.actor),
            })),
            _ => {}
        }
    }
    for finding in state.store().list_findings(false).await? {
        let at = finding.opened_at.millis();
        if at < from.millis() || at >= to.millis() {
            continue;
        }
        findings.push(json!({
            "kind": finding.kind, "at": finding.opened_at, "subject": finding.subject,
            "summary": finding.summary, "resolved_by": finding.resolved_by, "resolution": finding.resolution,
        }));
    }
    let checkpoint_size = state.store().latest_checkpoint().await?.map(|c| c.size);
    Ok(Json(ReportData {
        instance: state.instance().to_owned(),
        from,
        to,
        generated_at: Timestamp::from_millis(custody_store::now_ms()),
        checkpoint_size,
        deployments,
        findings,
    }))
}
