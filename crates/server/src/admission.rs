//! The admission webhook's HTTP side (`custody admit`): a Kubernetes API
//! server posts an `AdmissionReview` and gets the decision of
//! [`custody_formats::admission::decide`] back. It never reaches the custody
//! server and holds no database: it reads the trust file it was given and
//! the evidence `custody evidence sync` left in a directory,
//!
//! ```text
//! DIR/PROJECT/environments/ENVIRONMENT.json   the environment's signed state
//! DIR/PROJECT/deployments/NUMBER.json         each deployment's evidence bundle
//! ```
//!
//! verifies it whole, and keeps what it verified until a file there
//! changes. A file that does not verify makes its environment's images
//! denied, with the reason; nothing in the directory can make an image
//! admitted that custody's keys did not vouch for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use custody_formats::admission::{decide, Evidence, Policy, Request, Target};
use custody_formats::evidence::Bundle;
use custody_formats::trust::TrustRoot;
use custody_formats::Envelope;
use serde_json::json;

/// The largest review read: Kubernetes objects are at most about 1.5 MiB.
const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;

/// What the webhook decides by.
pub struct Webhook {
    policy: Policy,
    trust: TrustRoot,
    evidence_dir: PathBuf,
    loaded: Mutex<Option<Loaded>>,
}

/// The evidence verified, and the files it came from.
struct Loaded {
    stamp: Vec<(PathBuf, Option<SystemTime>, u64)>,
    evidence: Arc<Evidence>,
}

impl Webhook {
    /// A webhook enforcing `policy` with the evidence under `evidence_dir`,
    /// verified against `trust`.
    pub fn new(policy: Policy, trust: TrustRoot, evidence_dir: PathBuf) -> Webhook {
        Webhook { policy, trust, evidence_dir, loaded: Mutex::new(None) }
    }

    /// The evidence, verified again when a file under the directory was
    /// added, removed or changed since it was last read.
    pub fn evidence(&self) -> Arc<Evidence> {
        let stamp = stamp(&self.evidence_dir);
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(loaded) = loaded.as_ref().filter(|l| l.stamp == stamp) {
            return loaded.evidence.clone();
        }
        let evidence = Arc::new(load(&self.trust, &self.evidence_dir));
        for (target, found) in &evidence.environments {
            match found {
                Ok(found) => tracing::info!(%target, deployments = found.deployments.len(), "evidence verified"),
                Err(why) => tracing::warn!(%target, %why, "evidence does not verify"),
            }
        }
        *loaded = Some(Loaded { stamp, evidence: evidence.clone() });
        evidence
    }

    /// Decides one review's body.
    pub fn review(&self, body: &[u8]) -> Result<serde_json::Value, String> {
        let request = Request::parse(body).map_err(|e| e.to_string())?;
        let now = custody_store::now_ms();
        let decision = decide(&self.policy, &self.evidence(), &request, now);
        tracing::info!(
            uid = %request.uid, kind = %request.kind, namespace = request.namespace.as_deref().unwrap_or(""),
            operation = %request.operation, allowed = decision.allowed,
            denials = %decision.denials.iter().map(|d| d.rule).collect::<Vec<_>>().join(","),
            "admission review"
        );
        Ok(decision.review(&request.uid))
    }
}

/// Every file under the directory two levels down, with its modification
/// time and size: what the evidence was read from.
fn stamp(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut found = Vec::new();
    for project in read_dir(dir) {
        for kind in ["environments", "deployments"] {
            for file in read_dir(&project.join(kind)) {
                let meta = std::fs::metadata(&file).ok();
                found.push((file, meta.as_ref().and_then(|m| m.modified().ok()), meta.map_or(0, |m| m.len())));
            }
        }
    }
    found
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(dir).into_iter().flatten().filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    entries
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads and verifies every environment's evidence under `dir`.
pub fn load(trust: &TrustRoot, dir: &Path) -> Evidence {
    let mut evidence = Evidence::default();
    for project_dir in read_dir(dir) {
        let Some(project) = project_dir.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        let mut bundles = BTreeMap::new();
        for file in read_dir(&project_dir.join("deployments")) {
            let number = file.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<i64>().ok());
            if let Some(number) = number.filter(|_| file.extension().is_some_and(|e| e == "json")) {
                let bundle = read(&file).and_then(|text| Bundle::parse(&text).map_err(|e| e.to_string()));
                bundles.insert(number, bundle);
            }
        }
        for file in read_dir(&project_dir.join("environments")) {
            let Some(environment) = file
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|_| file.extension().is_some_and(|e| e == "json"))
                .map(str::to_owned)
            else {
                continue;
            };
            let place = Target { project: project.clone(), environment };
            let state = read(&file).and_then(|text| {
                serde_json::from_str::<Envelope>(&text)
                    .map_err(|e| format!("{}: not a DSSE envelope: {e}", file.display()))
            });
            let found = match state {
                Err(why) => Err(why),
                Ok(state) => match Evidence::verify_environment(trust, &state, &bundles) {
                    (Some(signed), found) if signed == place => found,
                    (Some(signed), _) => Err(format!("{} holds the state of {signed}, not of {place}", file.display())),
                    (None, found) => found,
                },
            };
            evidence.environments.insert(place, found);
        }
    }
    evidence
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({ "error": { "code": code, "message": message } }))).into_response()
}

async fn validate(State(webhook): State<Arc<Webhook>>, body: Bytes) -> Response {
    let answered = tokio::task::spawn_blocking(move || webhook.review(&body)).await;
    match answered {
        Ok(Ok(review)) => Json(review).into_response(),
        Ok(Err(why)) => error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!("{why}; the webhook answers AdmissionReview requests of admission.k8s.io/v1"),
        ),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the review could not be decided".into()),
    }
}

/// The webhook's routes: `POST /validate` (and `/`) for reviews, and
/// `GET /healthz`.
pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/", post(validate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "the webhook answers POST /validate".into()) })
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(webhook)
}

/// A TLS acceptor serving the certificate chain and private key of these
/// PEM files (TLS 1.2 and 1.3, HTTP/1.1).
pub fn tls_acceptor(certificate: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", certificate.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", certificate.display()));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
