//! `custody admit`: a Kubernetes validating admission webhook that admits
//! only images custody deployed to the namespace's environment, decided
//! from synced evidence without reaching custody.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use custody_formats::admission::{Policy, Target};
use custody_formats::trust::TrustRoot;
use serde::Deserialize;

use crate::Failure;

#[derive(Args, Debug)]
pub struct AdmitArgs {
    /// The webhook's configuration (TOML); relative paths in it are read
    /// from its directory.
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// How to log: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

/// The configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Where to listen, such as `0.0.0.0:8443`.
    listen: String,
    /// The serving certificate chain, PEM.
    tls_certificate: PathBuf,
    /// Its private key, PEM.
    tls_key: PathBuf,
    /// The trust file from `custody trust export`, obtained from a source you trust.
    trust: PathBuf,
    /// The directory `custody evidence sync` writes.
    evidence: PathBuf,
    /// The custody registries trusted, as image references name them.
    registries: Vec<String>,
    /// How many of an environment's newest deployments are admitted.
    #[serde(default = "one")]
    last: usize,
    /// The oldest evidence accepted, such as `15m` or `1h`.
    max_age: String,
    /// Which environment of which project each namespace is.
    namespaces: BTreeMap<String, Mapped>,
    /// When set, the webhook fetches the evidence from custody itself.
    sync: Option<Fetch>,
}

/// Fetching the evidence from custody, as `custody evidence sync --every` would.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fetch {
    /// custody's URL.
    server: String,
    /// A file holding an admin's or auditor's token.
    token_file: PathBuf,
    /// The projects whose environments to fetch.
    projects: Vec<String>,
    /// How often, such as `1m`.
    every: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mapped {
    project: String,
    environment: String,
}

fn one() -> usize {
    1
}

fn relative_to(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// Reads the configuration, with what it names.
fn read_config(path: &Path) -> Result<(Config, Policy, TrustRoot), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::input(format!("cannot read the configuration {}: {e}", path.display())))?;
    let mut config: Config = toml::from_str(&text)
        .map_err(|e| Failure::input(format!("{} is not a webhook configuration: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    for file in [&mut config.tls_certificate, &mut config.tls_key, &mut config.trust, &mut config.evidence] {
        *file = relative_to(base, file);
    }
    if let Some(sync) = &mut config.sync {
        sync.token_file = relative_to(base, &sync.token_file);
    }
    let max_age = humantime::parse_duration(&config.max_age).map_err(|e| {
        Failure::input(format!("max_age {:?} is not a duration such as 15m or 1h: {e}", config.max_age))
    })?;
    if config.last == 0 || config.last > 50 {
        return Err(Failure::input(format!(
            "last is {}; admit 1 to 50 of an environment's newest deployments",
            config.last
        )));
    }
    if config.registries.is_empty() {
        return Err(Failure::input("registries is empty: name the custody registries images may come from"));
    }
    let trust_text = std::fs::read_to_string(&config.trust)
        .map_err(|e| Failure::input(format!("cannot read the trust file {}: {e}", config.trust.display())))?;
    let trust = TrustRoot::parse(&trust_text).map_err(|e| Failure::input(e.to_string()))?;
    trust.open().map_err(|e| Failure::input(e.to_string()))?;
    let namespaces = config
        .namespaces
        .iter()
        .map(|(namespace, m)| {
            (namespace.clone(), Target { project: m.project.clone(), environment: m.environment.clone() })
        })
        .collect();
    let policy = Policy {
        registries: config.registries.clone(),
        namespaces,
        last: config.last,
        max_age_ms: i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX),
    };
    Ok((config, policy, trust))
}

/// Serves the webhook until SIGINT or SIGTERM.
pub async fn admit(args: AdmitArgs) -> Result<(), Failure> {
    crate::serve::init_logging(&args.log_format)?;
    let (config, policy, trust) = read_config(&args.config)?;
    let tls =
        custody_server::admission::tls_acceptor(&config.tls_certificate, &config.tls_key).map_err(Failure::input)?;
    if let Some(sync) = &config.sync {
        let every = humantime::parse_duration(&sync.every)
            .map_err(|e| Failure::input(format!("sync.every {:?} is not a duration such as 1m: {e}", sync.every)))?;
        let token = std::fs::read_to_string(&sync.token_file)
            .map_err(|e| Failure::input(format!("cannot read the token file {}: {e}", sync.token_file.display())))?;
        let client = crate::client::Client::new(&sync.server, Some(token.trim().to_owned()))?;
        let args = crate::evidence::SyncArgs {
            dir: config.evidence.clone(),
            projects: sync.projects.clone(),
            last: u32::try_from(config.last.max(10)).unwrap_or(10),
            every: None,
        };
        tokio::spawn(async move {
            loop {
                match crate::evidence::sync_once(&client, &args).await {
                    Ok(synced) => tracing::info!(environments = synced.len(), "evidence fetched from custody"),
                    Err(failure) => tracing::warn!(why = %failure.message, "fetching the evidence from custody failed"),
                }
                tokio::time::sleep(every).await;
            }
        });
    }
    let webhook = Arc::new(custody_server::admission::Webhook::new(policy, trust, config.evidence.clone()));
    // Read and verify the evidence once now, so that what is wrong with it
    // shows at start.
    let evidence = webhook.evidence();
    if evidence.environments.is_empty() {
        tracing::warn!(dir = %config.evidence.display(), "no evidence yet: every image is denied until `custody evidence sync` writes some");
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Failure::input(format!("cannot listen on {}: {e}", config.listen)))?;
    let address = listener.local_addr().map_err(|e| Failure::internal(e.to_string()))?;
    println!("listening on https://{address}");
    let _ = std::io::stdout().flush();
    let limits = custody_server::connections::ConnectionLimits::default();
    custody_server::connections::serve_tls(
        listener,
        custody_server::admission::router(webhook),
        limits,
        tls,
        crate::serve::shutdown_signal(),
    )
    .await
    .map_err(|e| Failure::internal(e.to_string()))
}
