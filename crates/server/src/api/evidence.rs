//! Offline evidence: the instance's trust root, and evidence bundles of one
//! deployment or artifact that an auditor verifies without this server.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use custody_domain::audit::AuditEvent;
use custody_domain::{ProjectName, Scope};
use custody_formats::attestation::{unverified_predicate, DeploymentV1};
use custody_formats::evidence::{
    Bundle, BundleSubject, Entry, InclusionProof, LedgerEvent, LoggedDuty, BUNDLE_MEDIA_TYPE,
};
use custody_formats::trust::TrustRoot;
use custody_formats::{KeyRole, ServiceKey};
use custody_store::{DeploymentView, ProjectAccess, Store, StoredCheckpoint};
use serde::Deserialize;

use super::{Params, PathParam};
use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

fn unavailable(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "no_evidence", message)
}

/// The instance's public keys with their roles and validity: the trust root
/// of `custody verify`. Public, like the checkpoint: it holds public keys only.
/// An auditor compares it with a copy obtained from the operator out of band.
#[utoipa::path(get, path = "/api/v1/trust", tag = "evidence",
    responses((status = 200, description = "the trust root (application/vnd.custody.trust.v1+json)", body = Object)))]
pub(crate) async fn trust(State(state): State<AppState>) -> ApiResult<Json<TrustRoot>> {
    // The keys were made by `init`, just before its first audit event;
    // rotations and revocations are in the ledger.
    let since = state.store().initialised_at().await?.unwrap_or(0);
    let mut current = Vec::new();
    for role in KeyRole::ALL {
        let key = state.key(role).ok_or_else(|| unavailable(format!("this server holds no {} key", role.as_str())))?;
        current.push(key.public());
    }
    let history = state.store().key_history().await?;
    let keys = custody_store::trusted_keys(&history, &current, since);
    Ok(Json(TrustRoot::new(state.instance(), keys)))
}

/// What to gather evidence for: exactly one of the two.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EvidenceQuery {
    /// A deployment's number: the bundle covers it and the deployments of
    /// the same build to the environments before it.
    pub(crate) deployment: Option<i64>,
    /// An artifact's sha256 (hex): the bundle covers its build and every
    /// successful deployment of that build.
    #[param(pattern = "^(sha256:)?[0-9a-fA-F]{64}$")]
    pub(crate) artifact: Option<String>,
}

/// The environments in pipeline order, from the mainline tip's pipeline file.
async fn environment_order(state: &AppState, access: &ProjectAccess) -> ApiResult<Vec<(String, Option<String>)>> {
    let repository = state.hosting().repositories().path(&access.project);
    let branch = access.default_branch.clone();
    let policy = tokio::task::spawn_blocking(move || custody_app::releases::mainline_pipeline(&repository, &branch))
        .await
        .map_err(|_| unavailable("reading the repository failed"))?
        .map_err(conflict)?;
    Ok(policy.environments.into_iter().map(|e| (e.name, e.after)).collect())
}

/// The environments `target` follows, nearest last, then `target`.
fn chain_to(order: &[(String, Option<String>)], target: &str) -> Vec<String> {
    let mut chain = vec![target.to_owned()];
    let mut current = target.to_owned();
    while let Some(after) = order.iter().find(|(name, _)| *name == current).and_then(|(_, after)| after.clone()) {
        if chain.contains(&after) || chain.len() > order.len() {
            break;
        }
        chain.push(after.clone());
        current = after;
    }
    chain.reverse();
    chain
}

/// The evidence bundle of a deployment: every envelope of its chain (change
/// attestations of the release, the build's provenance, the deployments of
/// the same build to the environments before it, in environment order),
/// each with the audit event that recorded it and its inclusion proof, and
/// the signed checkpoint they lead to. Admins and auditors only.
#[utoipa::path(get, path = "/api/v1/projects/{name}/deployments/{number}/evidence", tag = "evidence",
    security(("token" = [])),
    responses((status = 200, description = "the bundle (application/vnd.custody.evidence.v2+json)", body = Object)))]
pub(crate) async fn deployment_evidence(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, number)): PathParam<(String, i64)>,
) -> ApiResult<Json<Bundle>> {
    export_bundle(state, auth, project, EvidenceQuery { deployment: Some(number), artifact: None }).await
}

/// The evidence bundle of an artifact: its build and every successful
/// deployment of that build, as for a deployment. Admins and auditors only.
#[utoipa::path(get, path = "/api/v1/projects/{name}/artifacts/{digest}/evidence", tag = "evidence",
    security(("token" = [])),
    responses((status = 200, description = "the bundle (application/vnd.custody.evidence.v2+json)", body = Object)))]
pub(crate) async fn artifact_evidence(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, digest)): PathParam<(String, String)>,
) -> ApiResult<Json<Bundle>> {
    export_bundle(state, auth, project, EvidenceQuery { deployment: None, artifact: Some(digest) }).await
}

/// An evidence bundle, for a deployment or an artifact named in the query.
/// Superseded by the two operations above, whose subject is in the path;
/// kept for clients written against it.
#[utoipa::path(get, path = "/api/v1/projects/{name}/evidence", tag = "evidence", security(("token" = [])),
    params(("name" = String, Path, description = "The project"), EvidenceQuery),
    responses((status = 200, description = "the bundle (application/vnd.custody.evidence.v2+json)", body = Object)))]
#[deprecated = "use /deployments/{number}/evidence or /artifacts/{digest}/evidence"]
pub(crate) async fn export(
    State(state): State<AppState>,
    auth: Auth,
    PathParam(project): PathParam<String>,
    Params(query): Params<EvidenceQuery>,
) -> ApiResult<Json<Bundle>> {
    export_bundle(state, auth, project, query).await
}

/// The evidence bundle `query` names, for an admin or auditor: the API's
/// and the pages' one definition.
pub(crate) async fn export_bundle(
    state: AppState,
    auth: Auth,
    project: String,
    query: EvidenceQuery,
) -> ApiResult<Json<Bundle>> {
    auth.require(Scope::Read)?;
    auth.require_overseer()?;
    let access = state.store().project_access(&auth.0, &ProjectName::parse(&project)?).await?;
    let store = state.store();
    let order = environment_order(&state, &access).await?;
    let (subject, build, deployments) = chain_of(store, &access, &order, query).await?;
    let envelopes = envelopes_of(store, &access, build, &deployments).await?;
    let (events, duties) = events_of(store, &envelopes).await?;
    let newest = events.iter().chain(&duties).map(|e| e.seq).max().unwrap_or(0) as u64;
    let checkpoint = covering_checkpoint(&state, newest).await?;
    let seqs: Vec<i64> = events.iter().chain(&duties).map(|e| e.seq).collect();
    let mut proofs = store.inclusion_proofs(&seqs, checkpoint.size).await?;
    let duty_proofs = proofs.split_off(events.len());
    let duties = duties
        .into_iter()
        .zip(duty_proofs)
        .map(|(event, (_, hashes))| LoggedDuty {
            proof: InclusionProof::new(event.seq as u64 - 1, checkpoint.size, &hashes),
            event: ledger_event(event),
        })
        .collect();

    let mut entries = Vec::new();
    for (((envelope, _, _), event), (_, hashes)) in envelopes.into_iter().zip(events).zip(proofs) {
        let envelope = serde_json::from_str(&envelope).map_err(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "a stored envelope is damaged")
        })?;
        entries.push(Entry {
            envelope,
            proof: InclusionProof::new(event.seq as u64 - 1, checkpoint.size, &hashes),
            event: ledger_event(event),
        });
    }
    Ok(Json(Bundle {
        media_type: BUNDLE_MEDIA_TYPE.into(),
        origin: state.instance().to_owned(),
        project: access.project.to_string(),
        subject,
        checkpoint: checkpoint.note,
        entries,
        duties,
    }))
}

/// What a bundle is for, the build, and the deployments of its chain in
/// environment order.
async fn chain_of(
    store: &Store,
    access: &ProjectAccess,
    order: &[(String, Option<String>)],
    query: EvidenceQuery,
) -> ApiResult<(BundleSubject, i64, Vec<DeploymentView>)> {
    Ok(match (query.deployment, query.artifact) {
        (Some(number), None) => {
            let target = store.get_deployment(access, number).await?;
            let succeeded = store.succeeded_deployments_of(access, target.build).await?;
            let mut chain = Vec::new();
            for environment in chain_to(order, &target.environment) {
                if environment == target.environment {
                    chain.push(target.clone());
                } else if let Some(d) =
                    succeeded.iter().rev().find(|d| d.environment == environment && d.number < target.number)
                {
                    chain.push(d.clone());
                }
            }
            (BundleSubject { deployment: Some(number), artifact: None }, target.build, chain)
        }
        (None, Some(digest)) => {
            let digest = digest.strip_prefix("sha256:").unwrap_or(&digest).to_ascii_lowercase();
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "artifact: expected a sha256 digest, 64 hex digits",
                ));
            }
            let made = store.artifact(access, &digest).await?;
            let build = made[0].build;
            // Every successful deployment of the build, in the order
            // they ran: a second deployment to staging included.
            let mut chain = store.succeeded_deployments_of(access, build).await?;
            chain.sort_by_key(|d| d.number);
            (BundleSubject { deployment: None, artifact: Some(digest) }, build, chain)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "usage",
                "name exactly one of deployment=NUMBER or artifact=SHA256",
            ))
        }
    })
}

/// The signed envelopes of the chain, each with the action and subject of
/// the event that recorded it: the changes' attestations, the build's
/// provenance, the deployments' attestations.
async fn envelopes_of(
    store: &Store,
    access: &ProjectAccess,
    build: i64,
    deployments: &[DeploymentView],
) -> ApiResult<Vec<(String, String, String)>> {
    let project = access.project.as_str();
    let mut envelopes: Vec<(String, String, String)> = Vec::new(); // (envelope, action, subject)
    let provenance = store
        .build_provenance(access, build)
        .await?
        .ok_or_else(|| conflict(format!("build {build} has no signed provenance")))?;
    let built = store.get_build(access, build).await?;
    let mut deployment_envelopes = Vec::new();
    let mut changes: Vec<i64> = built.change.into_iter().collect();
    for d in deployments {
        let (_, attestation) = store.deployment_record(access, d.number).await?;
        let attestation = attestation.ok_or_else(|| {
            conflict(format!("deployment {} ({}) has not run, so it has no attestation yet", d.number, d.environment))
        })?;
        if let Some(attested) = unverified_predicate::<DeploymentV1>(&attestation) {
            changes.extend(attested.release.iter().map(|r| r.change));
        }
        deployment_envelopes.push((
            attestation,
            "deploy.finish".to_owned(),
            format!("deployment:{project}/{}", d.number),
        ));
    }
    changes.sort_unstable();
    changes.dedup();
    for number in changes {
        let attestation = store.attestation(access, number).await?;
        envelopes.push((attestation, "change.merge".into(), format!("change:{project}/{number}")));
    }
    envelopes.push((provenance, "build.finish".into(), format!("build:{project}/{build}")));
    envelopes.extend(deployment_envelopes);
    Ok(envelopes)
}

/// Each envelope's event, and every review, approval and sign-off the
/// statements name, from events custody can prove it wrote.
async fn events_of(
    store: &Store,
    envelopes: &[(String, String, String)],
) -> ApiResult<(Vec<AuditEvent>, Vec<AuditEvent>)> {
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut duties: Vec<AuditEvent> = Vec::new();
    for (_, action, subject) in envelopes {
        let about = store.proven_events_about(subject).await?;
        let event = about
            .iter()
            .rev()
            .find(|e| &e.action == action)
            .cloned()
            .ok_or_else(|| conflict(format!("the audit log holds no {action} event about {subject}")))?;
        duties.extend(logged_duties(&about, &event));
        events.push(event);
    }
    Ok((events, duties))
}

/// One checkpoint covering every event up to `newest`, signed now if none
/// does yet.
async fn covering_checkpoint(state: &AppState, newest: u64) -> ApiResult<StoredCheckpoint> {
    let store = state.store();
    let mut checkpoint = store.latest_checkpoint().await?;
    if checkpoint.as_ref().is_none_or(|c| c.size < newest) {
        let key = state.key(KeyRole::Ledger).ok_or_else(|| unavailable("this server holds no ledger key"))?;
        store.issue_checkpoint(state.instance(), Arc::new(ServiceKey::clone_key(key))).await?;
        checkpoint = store.latest_checkpoint().await?;
    }
    let checkpoint = checkpoint
        .filter(|c| c.size >= newest)
        .ok_or_else(|| unavailable("no checkpoint covers these events yet; ask again in a second"))?;
    Ok(checkpoint)
}

fn ledger_event(event: AuditEvent) -> LedgerEvent {
    LedgerEvent {
        seq: event.seq,
        at_ms: event.at_ms,
        actor: event.actor,
        action: event.action,
        subject: event.subject,
        details: event.details,
    }
}

/// The duties a recorded statement names, as their own events: the
/// approvals of the head a change was merged at, and a deployment's
/// approvals and test sign-offs.
fn logged_duties(about: &[AuditEvent], recorded: &AuditEvent) -> Vec<AuditEvent> {
    match recorded.action.as_str() {
        "change.merge" => {
            let head = recorded.details["reviewed_head"].as_str();
            about
                .iter()
                .filter(|e| e.action == "change.review.approve" && e.details["head"].as_str() == head)
                .cloned()
                .collect()
        }
        "deploy.finish" => {
            about.iter().filter(|e| e.action == "deploy.approve" || e.action == "deploy.test_passed").cloned().collect()
        }
        _ => Vec::new(),
    }
}

/// How many of an environment's deployments its signed state names.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EnvironmentQuery {
    /// Its newest deployments to name, 1 to 50 (10 by default): what an
    /// admission check admits for rolling updates is among them.
    #[param(minimum = 1, maximum = 50)]
    pub(crate) last: Option<i64>,
}

/// What runs in an environment, signed with the ledger key: its newest
/// successful deployments, read from the environment's proven chain of
/// events, each bound to its attestation by digest, as of now. An admission
/// check reads it with each deployment's evidence bundle, offline, and
/// refuses it once it is older than it allows. Admins and auditors only.
#[utoipa::path(get, path = "/api/v1/projects/{name}/environments/{environment}/evidence", tag = "evidence",
    security(("token" = [])), params(EnvironmentQuery),
    responses((status = 200, description = "a DSSE envelope of an in-toto statement of type https://custody.dev/attestation/environment/v1, signed by the ledger key", body = Object),
        (status = 404, body = custody_api::ErrorBody), (status = 409, body = custody_api::ErrorBody)))]
pub(crate) async fn environment_evidence(
    State(state): State<AppState>,
    auth: Auth,
    PathParam((project, environment)): PathParam<(String, String)>,
    Params(query): Params<EnvironmentQuery>,
) -> ApiResult<Json<custody_formats::Envelope>> {
    auth.require(Scope::Read)?;
    auth.require_overseer()?;
    let last = match query.last {
        None => 10,
        Some(n @ 1..=50) => n as usize,
        Some(n) => return Err(ApiError::invalid(format!("last is {n}; name 1 to 50 deployments"))),
    };
    let access = state.store().project_access(&auth.0, &ProjectName::parse(&project)?).await?;
    if !environment_order(&state, &access).await?.iter().any(|(name, _)| *name == environment) {
        return Err(ApiError::not_found(format!(
            "the mainline's pipeline file defines no environment {environment:?}"
        )));
    }
    let key = state.key(KeyRole::Ledger).ok_or_else(|| unavailable("this server holds no ledger key"))?;
    let signed = custody_app::releases::signed_environment(
        state.store(),
        state.instance(),
        key,
        &access.project,
        &environment,
        last,
    )
    .await?;
    let envelope = signed.ok_or_else(|| conflict(format!("nothing was deployed to {environment} yet")))?;
    Ok(Json(envelope))
}
