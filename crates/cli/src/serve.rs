//! `custody init` and `custody serve`.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;
use custody_domain::{Email, UserName};
use custody_server::connections::ConnectionLimits;
use custody_server::instance::{self, DataDir, InitOptions, InstanceError};
use custody_server::{AppState, Limits};

use crate::commands::Output;
use crate::config::ServerFile;
use crate::Failure;

pub const DEFAULT_DATA_DIR: &str = "./custody-data";
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN: &str = "admin";
const DEFAULT_NAME: &str = "custody";
/// How often the whole audit log is checked again while serving.
const LEDGER_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// How often the ledger's tree head is signed while events arrive.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// How often the promotions owed after successes are looked for (and at
/// start-up).
const PROMOTIONS_REPAIRED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The data directory to create.
    #[arg(long, env = "CUSTODY_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// The first admin's user name.
    #[arg(long, value_name = "NAME")]
    admin: String,
    /// The first admin's e-mail address.
    #[arg(long, value_name = "EMAIL")]
    admin_email: Option<String>,
    /// A PostgreSQL URL (postgres://…); SQLite in the data directory by default.
    #[arg(long, env = "CUSTODY_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// The instance's name, which signs its audit checkpoints.
    #[arg(long, env = "CUSTODY_NAME", default_value = DEFAULT_NAME)]
    name: String,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A TOML config file; flags and CUSTODY_* variables override it.
    #[arg(long, env = "CUSTODY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory [default: ./custody-data].
    #[arg(long, env = "CUSTODY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where to listen, HOST:PORT; port 0 picks a free one [default: 127.0.0.1:8080].
    #[arg(long, env = "CUSTODY_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// A PostgreSQL URL (postgres://…); SQLite in the data directory by default.
    #[arg(long, env = "CUSTODY_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// The URL clients reach this server at, when it differs from where it
    /// listens (behind a proxy); used in clone URLs.
    #[arg(long, env = "CUSTODY_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// Log as `text` or `json` [default: text]. The level comes from CUSTODY_LOG (e.g. `info`, `debug`).
    #[arg(long, env = "CUSTODY_LOG_FORMAT", value_name = "FORMAT")]
    log_format: Option<String>,
    /// Where artifacts are stored: `s3://BUCKET/PREFIX` (credentials from the AWS_* variables)
    /// [default: the data directory's blobs/].
    #[arg(long, env = "CUSTODY_BLOB_STORE", value_name = "URL")]
    blob_store: Option<String>,
    /// How many builds run at once inside this process; 0 leaves them to `custody worker` [default: 1].
    #[arg(long, env = "CUSTODY_BUILDERS", value_name = "N")]
    builders: Option<usize>,
    /// The largest pack one push may send, in bytes (1 GiB unless set).
    #[arg(long, env = "CUSTODY_MAX_PUSH_BYTES", value_name = "BYTES")]
    max_push_bytes: Option<u64>,
    /// The largest object (a file's content) one push may bring, in bytes (100 MiB unless set).
    #[arg(long, env = "CUSTODY_MAX_OBJECT_BYTES", value_name = "BYTES")]
    max_object_bytes: Option<u64>,
    /// A proxy (an address or a range such as 10.0.0.0/8) believed about
    /// its client in X-Forwarded-For; repeat it, or separate them with commas.
    #[arg(long = "trusted-proxy", env = "CUSTODY_TRUSTED_PROXIES", value_name = "ADDRESS", value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    #[command(flatten)]
    jobs: JobArgs,
    #[command(flatten)]
    connections: ConnectionArgs,
}

/// What a client's connection may cost the server (see SECURITY.md).
#[derive(Args, Debug)]
pub struct ConnectionArgs {
    /// The longest from a request's first byte to the end of its headers [default: 15s].
    #[arg(long, env = "CUSTODY_HEADER_TIMEOUT", value_name = "DURATION")]
    header_timeout: Option<String>,
    /// How long a kept-alive connection may wait for its next request [default: 60s].
    #[arg(long, env = "CUSTODY_IDLE_TIMEOUT", value_name = "DURATION")]
    idle_timeout: Option<String>,
    /// The slowest a request body (a push) may arrive, in bytes a second [default: 1024].
    #[arg(long, env = "CUSTODY_BODY_MIN_RATE", value_name = "BYTES")]
    body_min_rate: Option<u64>,
    /// How long a body may wait before its rate counts [default: 10s].
    #[arg(long, env = "CUSTODY_BODY_GRACE", value_name = "DURATION")]
    body_grace: Option<String>,
    /// Connections open at once; past it clients are answered 503 [default: 4096].
    #[arg(long, env = "CUSTODY_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Connections open at once from one address; behind a proxy, raise it to
    /// --max-connections [default: 256].
    #[arg(long, env = "CUSTODY_MAX_CONNECTIONS_PER_SOURCE", value_name = "N")]
    max_connections_per_source: Option<usize>,
}

impl ConnectionArgs {
    fn limits(&self) -> Result<ConnectionLimits, Failure> {
        use custody_domain::pipeline::parse_duration;
        let duration = |flag: &str, value: &Option<String>, default: std::time::Duration| match value {
            None => Ok(default),
            Some(text) => parse_duration(text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| Failure::input(format!("--{flag} {text:?} is not a duration; write it like 15s or 2m"))),
        };
        let count = |flag: &str, value: Option<usize>, default: usize| match value {
            Some(0) => Err(Failure::input(format!("--{flag} must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let defaults = ConnectionLimits::default();
        let limits = ConnectionLimits {
            header_timeout: duration("header-timeout", &self.header_timeout, defaults.header_timeout)?,
            idle_timeout: duration("idle-timeout", &self.idle_timeout, defaults.idle_timeout)?,
            body_min_rate: match self.body_min_rate {
                Some(0) => return Err(Failure::input("--body-min-rate must be at least 1 byte a second")),
                Some(rate) => rate,
                None => defaults.body_min_rate,
            },
            body_grace: duration("body-grace", &self.body_grace, defaults.body_grace)?,
            max_connections: count("max-connections", self.max_connections, defaults.max_connections)?,
            max_per_source: count(
                "max-connections-per-source",
                self.max_connections_per_source,
                defaults.max_per_source,
            )?,
        };
        if limits.max_per_source > limits.max_connections {
            return Err(Failure::input(format!(
                "--max-connections-per-source {} is above --max-connections {}; give at most as many",
                limits.max_per_source, limits.max_connections
            )));
        }
        Ok(limits)
    }
}

/// The most any one job (check, build, deployment) may use; a pipeline file
/// may ask for less, never for more.
#[derive(Args, Debug)]
pub struct JobArgs {
    /// Memory of all of a job's processes together, such as 512MiB or 4GiB [default: 4GiB].
    #[arg(long, env = "CUSTODY_JOB_MEMORY", value_name = "SIZE")]
    job_memory: Option<String>,
    /// Processes and threads a job may run at once [default: 1024].
    #[arg(long, env = "CUSTODY_JOB_PROCESSES", value_name = "N")]
    job_processes: Option<u32>,
    /// CPU time any one process of a job may use, such as 30m or 2h [default: 2h].
    #[arg(long, env = "CUSTODY_JOB_CPU_TIME", value_name = "DURATION")]
    job_cpu_time: Option<String>,
}

impl JobArgs {
    pub(crate) fn ceiling(&self) -> Result<custody_runner::sandbox::Ceiling, Failure> {
        use custody_domain::pipeline::{parse_duration, parse_size};
        let mut ceiling = custody_runner::sandbox::Ceiling::default();
        if let Some(memory) = &self.job_memory {
            ceiling.memory_bytes = parse_size(memory).filter(|b| *b >= 16 << 20).ok_or_else(|| {
                Failure::input(format!(
                    "--job-memory {memory:?} is not a size of at least 16MiB; write it like 512MiB or 4GiB"
                ))
            })?;
        }
        if let Some(processes) = self.job_processes {
            if processes < 8 {
                return Err(Failure::input(format!("--job-processes {processes} is too few; give at least 8")));
            }
            ceiling.processes = processes;
        }
        if let Some(cpu_time) = &self.job_cpu_time {
            ceiling.cpu_time = parse_duration(cpu_time).filter(|d| !d.is_zero()).ok_or_else(|| {
                Failure::input(format!("--job-cpu-time {cpu_time:?} is not a duration; write it like 90s, 30m or 2h"))
            })?;
        }
        Ok(ceiling)
    }
}

/// `custody worker`: a worker on the instance's data directory, or (with a
/// subcommand) a worker that shares nothing with the server.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerCli {
    #[command(subcommand)]
    pub remote: Option<crate::remote::RemoteCommand>,
    #[command(flatten)]
    pub local: WorkerArgs,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The instance's data directory: its keys and repositories [default: ./custody-data].
    #[arg(long, env = "CUSTODY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL URL (postgres://…); SQLite in the data directory by default.
    #[arg(long, env = "CUSTODY_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// Where artifacts are stored, as for `custody serve`.
    #[arg(long, env = "CUSTODY_BLOB_STORE", value_name = "URL")]
    blob_store: Option<String>,
    /// How many builds run at once [default: 1].
    #[arg(long, env = "CUSTODY_BUILDERS", value_name = "N", default_value_t = 1)]
    builders: usize,
    /// Log as `text` or `json`.
    #[arg(long, env = "CUSTODY_LOG_FORMAT", value_name = "FORMAT", default_value = "text")]
    log_format: String,
    #[command(flatten)]
    jobs: JobArgs,
}

fn instance_failure(error: InstanceError) -> Failure {
    match error {
        InstanceError::AlreadyInitialised(_) | InstanceError::NotInitialised(_) | InstanceError::NotShared(_) => {
            Failure::input(error.to_string())
        }
        InstanceError::Store(custody_store::StoreError::Invalid(e)) => Failure::input(e.to_string()),
        other => Failure::internal(other.to_string()),
    }
}

pub async fn init(args: InitArgs, out: Output) -> Result<(), Failure> {
    let admin = UserName::parse(&args.admin)?;
    let admin_email = args.admin_email.as_deref().map(Email::parse).transpose()?;
    let data_dir = DataDir::new(&args.data_dir).with_hsm(crate::config::hsm_from_env()?);
    let options = InitOptions { name: args.name, admin, admin_email, database_url: args.database_url };
    let made = instance::init(&data_dir, options).await.map_err(instance_failure)?;
    if out.json {
        out.print_json(&made);
    } else {
        println!("initialised a custody instance in {}", data_dir.root().display());
        println!("admin: {}", made.admin);
        println!("token: {}", made.token);
        println!("(the token is shown once; store it with `custody login --server URL` and keep it secret)");
    }
    Ok(())
}

pub(crate) fn init_logging(format: &str) -> Result<(), Failure> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CUSTODY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // Every value written out with its control characters escaped, so
        // that what a request carried (a name with a line break, an escape
        // sequence) can never forge a line of the log.
        "text" => {
            use tracing_subscriber::field::MakeExt as _;
            let fields = tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
                let raw = format!("{value:?}");
                let shown = crate::commands::for_log(&raw);
                if field.name() == "message" {
                    write!(writer, "{shown}")
                } else {
                    write!(writer, "{field}={shown}")
                }
            })
            .delimited(" ");
            builder.fmt_fields(fields).init()
        }
        "json" => builder.json().flatten_event(true).init(),
        other => return Err(Failure::input(format!("log format {other:?} is not text or json"))),
    }
    Ok(())
}

pub async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let file = match &args.config {
        Some(path) => ServerFile::read(path)?,
        None => ServerFile::default(),
    };
    let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let listen = args.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let database_url = args.database_url.or(file.database_url);
    let log_format = args.log_format.or(file.log_format).unwrap_or_else(|| "text".to_owned());
    let public_url = args.public_url.or(file.public_url);
    let blob_store = args.blob_store.or(file.blob_store);
    let builders = args.builders.or(file.builders).unwrap_or(1);
    let connections = args.connections.limits()?;
    init_logging(&log_format)?;

    let data_dir = DataDir::new(data_dir).with_hsm(crate::config::hsm_from_env()?);
    let name = file.name.unwrap_or_else(|| DEFAULT_NAME.to_owned());
    let database_url_seen = database_url.clone();
    let (instance, bootstrap) = open_or_init(&data_dir, name, database_url).await?;
    let blobs = open_blobs(blob_store.as_deref(), &data_dir)?;
    instance::check_shared_storage(&data_dir, &instance.store, &blobs).await.map_err(instance_failure)?;
    custody_server::keyring::reconcile(&instance.store, &instance.name, &data_dir.keys(), &instance.keys, true)
        .await
        .map_err(|e| Failure::input(format!("the service keys: {e}")))?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| Failure::input(format!("cannot listen on {listen}: {e}")))?;
    let address = listener.local_addr().map_err(|e| Failure::internal(e.to_string()))?;
    let url = format!("http://{address}");
    announce(&url, &data_dir, bootstrap.as_ref());
    tracing::info!(%url, database = instance.store.dialect().name(), data_dir = %data_dir.root().display(), "serving");

    // Every repository runs this very binary as its hooks.
    let program =
        std::env::current_exe().map_err(|e| Failure::internal(format!("cannot find the custody binary: {e}")))?;
    custody_git::hook::install(&data_dir.hooks(), &program)
        .map_err(|e| Failure::internal(format!("cannot write the git hooks in {}: {e}", data_dir.hooks().display())))?;
    let repositories = custody_git::Repositories::new(data_dir.repositories());
    let store = instance.store.clone();
    let boot_id = custody_runner::boot::Boot::id();
    let ceiling = args.jobs.ceiling()?;
    let builder = builder(&instance, &data_dir, blobs.clone(), &boot_id, ceiling)?;
    let sealing = sealing_key(&data_dir)?;
    let deployer = deployer(&builder, &instance, sealing.clone())?;
    let _boot = start_boot(&data_dir, &store, boot_id, vec![builder.worker.clone(), deployer.worker.clone()]).await?;
    let trusted = if args.trusted_proxies.is_empty() { file.trusted_proxies } else { args.trusted_proxies };
    let limits = Limits {
        max_push_bytes: args.max_push_bytes.unwrap_or(Limits::MAX_PUSH_BYTES),
        max_object_bytes: args.max_object_bytes.unwrap_or(Limits::MAX_OBJECT_BYTES),
        trusted_proxies: trusted_proxies(&trusted)?,
        ..Limits::default()
    };
    let effective = Serving {
        jobs: Jobs {
            database_url: database_url_seen.as_deref(),
            blob_store: blob_store.as_deref(),
            builders,
            ceiling: &ceiling,
        },
        public_url: public_url.as_deref(),
        limits: &limits,
        connections: &connections,
    };
    record_start(&store, "host", effective.configuration()).await?;
    let state = AppState::new(instance.store, instance.name, limits, repositories, blobs, instance.keys, sealing);
    state.set_key_dir(data_dir.keys());
    if let Some(public) = &public_url {
        state.hosting().set_public_url(public);
    }
    // A merge recorded by a process that died before moving its ref is
    // moved now, before anyone is served.
    match state.changes().settle_merges().await {
        Ok(0) => {}
        Ok(settled) => tracing::warn!(settled, "settled merges a previous process recorded and did not finish"),
        Err(error) => tracing::error!(%error, "settling recorded merges"),
    }
    // Environments deployed to before they kept their chain get it now,
    // so that their signed state (what admission reads) names them.
    match store.begin_environment_chains().await {
        Ok(0) => {}
        Ok(begun) => tracing::info!(begun, "began the chains of environments deployed to before they kept one"),
        Err(error) => tracing::error!(%error, "beginning the environments' chains"),
    }

    let stop = Stop::new();
    let mut background = Background::default();
    let checks = custody_git::Repositories::new(data_dir.repositories());
    background.spawn(custody_runner::checks::run(store.clone(), checks, ceiling, stop.signal()));
    let (changes, stop_merging) = (state.changes().clone(), stop.signal());
    background.spawn(async move { changes.auto_merge(stop_merging).await });
    for _ in 0..builders {
        background.spawn(builder.clone().run(stop.signal()));
    }
    if builders > 0 {
        background.spawn(deployer.run(stop.signal()));
        // Promotions a process that died right after a success never made.
        let repositories = custody_git::Repositories::new(data_dir.repositories());
        let repair = custody_app::releases::repair_promotions(
            store.clone(),
            repositories,
            PROMOTIONS_REPAIRED_EVERY,
            stop.signal(),
        );
        background.spawn(repair);
    }
    // Signs a ledger checkpoint whenever the audit log grew, four times a second at most.
    if let Some(key) = state.key(custody_formats::KeyRole::Ledger) {
        let (store, origin, key, until) = (store.clone(), state.instance().to_owned(), key.clone_key(), stop.signal());
        background.spawn(async move { store.run_checkpointer(origin, key, CHECKPOINT_EVERY, until).await });
    }
    // Checks the whole audit log against its tags and anchor while serving,
    // as at start-up, so that a change made around custody stops the writer.
    let (checked, until) = (store.clone(), stop.signal());
    background.spawn(async move { checked.run_ledger_checks(LEDGER_CHECK_EVERY, until).await });
    stop.on_shutdown_signal();

    custody_server::launch_with_tcp_listener(listener, state, connections, stop.signal())
        .await
        .map_err(|e| Failure::internal(format!("server failed: {e}")))?;
    background.join().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The settings a start runs jobs with, as the ledger records them (no
/// secret: a database URL loses its credentials). A worker's start records
/// these; a server's, these and [`Serving`]'s.
struct Jobs<'a> {
    database_url: Option<&'a str>,
    blob_store: Option<&'a str>,
    builders: usize,
    ceiling: &'a custody_runner::sandbox::Ceiling,
}

impl Jobs<'_> {
    fn configuration(&self) -> serde_json::Map<String, serde_json::Value> {
        let json = serde_json::json!({
            "database": self.database_url.map_or_else(|| "sqlite".to_owned(), without_credentials),
            "bubblewrap": custody_runner::sandbox::bubblewrap(),
            "keys_in": std::env::var("CUSTODY_PKCS11_MODULE").ok().map(|m| format!("pkcs11:{m}")).unwrap_or_else(|| "files".to_owned()),
            "blob_store": self.blob_store.map_or_else(|| "local".to_owned(), without_credentials),
            "builders": self.builders,
            "job_memory_bytes": self.ceiling.memory_bytes,
            "job_processes": self.ceiling.processes,
            "job_cpu_seconds": self.ceiling.cpu_time.as_secs(),
        });
        json.as_object().cloned().unwrap_or_default()
    }
}

/// What a server's start adds to [`Jobs`]: the settings that bear on who
/// may reach it and how much they may send.
struct Serving<'a> {
    jobs: Jobs<'a>,
    public_url: Option<&'a str>,
    limits: &'a Limits,
    connections: &'a ConnectionLimits,
}

impl Serving<'_> {
    fn configuration(&self) -> serde_json::Value {
        let c = self.connections;
        let mut all = self.jobs.configuration();
        let serving = serde_json::json!({
            "public_url": self.public_url,
            "max_push_bytes": self.limits.max_push_bytes,
            "max_object_bytes": self.limits.max_object_bytes,
            "header_timeout_ms": c.header_timeout.as_millis() as u64,
            "idle_timeout_ms": c.idle_timeout.as_millis() as u64,
            "body_min_rate": c.body_min_rate,
            "body_grace_ms": c.body_grace.as_millis() as u64,
            "max_connections": c.max_connections,
            "max_connections_per_source": c.max_per_source,
            "trusted_proxies": self.limits.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        all.extend(serving.as_object().cloned().unwrap_or_default());
        serde_json::Value::Object(all)
    }
}

/// The proxies `--trusted-proxy` names, each read as an address or a range.
fn trusted_proxies(given: &[String]) -> Result<Vec<custody_server::proxies::Network>, Failure> {
    given
        .iter()
        .filter(|text| !text.trim().is_empty())
        .map(|text| text.parse().map_err(|why| Failure::input(format!("--trusted-proxy: {why}"))))
        .collect()
}

/// `url` without its user, password and query (where drivers also take a
/// password): `postgres://u:p@db:5432/custody?sslmode=x` is
/// `postgres://db:5432/custody`.
pub fn without_credentials(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            if path.is_empty() {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => url.to_owned(),
    }
}

/// This host's name, as the ledger names the processes that run here.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Records this start, its version and configuration, in the ledger under
/// `PROCESS:HOSTNAME` (`host` for a server, `worker` for a worker), and
/// warns when either changed since that process's previous start here.
async fn record_start(
    store: &custody_store::Store,
    process: &str,
    configuration: serde_json::Value,
) -> Result<(), Failure> {
    let host = hostname();
    let version = env!("CARGO_PKG_VERSION").to_owned();
    let changes = store
        .record_start(format!("{process}:{host}"), version.clone(), configuration)
        .await
        .map_err(|e| Failure::internal(format!("cannot record this start in the ledger: {e}")))?;
    if let Some(before) = &changes.version_from {
        tracing::warn!(from = %before, to = %version, "custody was upgraded or downgraded since this host's last start; recorded");
    }
    if changes.configuration {
        tracing::warn!("the effective configuration changed since this host's last start; recorded");
    }
    Ok(())
}

/// The instance in `data_dir`, made first (with its admin's token) when the
/// directory holds no keys yet.
async fn open_or_init(
    data_dir: &DataDir,
    name: String,
    database_url: Option<String>,
) -> Result<(instance::Instance, Option<custody_store::Initialised>), Failure> {
    let bootstrap = if data_dir.has_keys() {
        None
    } else {
        let options = InitOptions {
            name,
            admin: UserName::parse(DEFAULT_ADMIN)?,
            admin_email: None,
            database_url: database_url.clone(),
        };
        Some(instance::init(data_dir, options).await.map_err(instance_failure)?)
    };
    let instance = instance::open(data_dir, database_url).await.map_err(instance_failure)?;
    Ok((instance, bootstrap))
}

/// Tells the operator where custody listens and, on the first start, the
/// admin's token, once.
fn announce(url: &str, data_dir: &DataDir, bootstrap: Option<&custody_store::Initialised>) {
    if let Some(made) = bootstrap {
        println!("initialised a new custody instance in {}", data_dir.root().display());
        println!("admin: {}", made.admin);
        println!("token: {}", made.token);
        println!("(shown once: run `custody login --server {url}` and paste it)");
    }
    println!("listening on {url}");
    let _ = std::io::stdout().flush();
}

/// One signal that stops the server and every background task.
pub(crate) struct Stop {
    sender: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    receiver: tokio::sync::watch::Receiver<bool>,
}

impl Stop {
    pub(crate) fn new() -> Stop {
        let (sender, receiver) = tokio::sync::watch::channel(false);
        Stop { sender: std::sync::Arc::new(sender), receiver }
    }

    /// A future that ends when the signal is given.
    pub(crate) fn signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.receiver.clone();
        async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        }
    }

    /// Gives the signal.
    pub(crate) fn stop(&self) {
        let _ = self.sender.send(true);
    }

    /// Gives the signal on SIGINT or SIGTERM.
    fn on_shutdown_signal(&self) {
        let sender = self.sender.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = sender.send(true);
        });
    }
}

/// The tasks that run beside the server, awaited when it stops.
#[derive(Default)]
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Background {
    fn spawn<T: Send + 'static>(&mut self, task: impl std::future::Future<Output = T> + Send + 'static) {
        self.0.push(tokio::spawn(async move {
            let _ = task.await;
        }));
    }

    async fn join(self) {
        for task in self.0 {
            let _ = task.await;
        }
    }
}

fn open_blobs(url: Option<&str>, data_dir: &DataDir) -> Result<custody_blobs::Blobs, Failure> {
    let opened = match url {
        Some(url) => custody_blobs::Blobs::from_url(url, &data_dir.blobs()),
        None => custody_blobs::Blobs::local(&data_dir.blobs()),
    };
    opened.map_err(|e| Failure::input(format!("cannot open the artifact store: {e}")))
}

/// Registers this process's boot under the data directory, and releases at
/// once the work of earlier processes on it that ended (crashed, killed)
/// instead of waiting for their leases to run out.
async fn start_boot(
    data_dir: &DataDir,
    store: &custody_store::Store,
    id: String,
    workers: Vec<String>,
) -> Result<custody_runner::boot::Boot, Failure> {
    let (boot, ended) = custody_runner::boot::Boot::start(data_dir.root(), id, &workers).map_err(|e| {
        Failure::internal(format!("cannot register this process in {}: {e}", data_dir.root().display()))
    })?;
    if !ended.is_empty() {
        let why = format!("its process ended, found at the start of {}", boot.id);
        match store.release_dead_workers(ended.clone(), why).await {
            Ok(released) => tracing::warn!(?ended, released, "released the work of processes that ended"),
            Err(error) => tracing::error!(%error, ?ended, "releasing the work of processes that ended"),
        }
    }
    Ok(boot)
}

fn builder(
    instance: &instance::Instance,
    data_dir: &DataDir,
    blobs: custody_blobs::Blobs,
    boot: &str,
    ceiling: custody_runner::sandbox::Ceiling,
) -> Result<custody_runner::builds::Builder, Failure> {
    let key = instance
        .keys
        .iter()
        .find(|k| k.role() == custody_formats::KeyRole::Builder)
        .ok_or_else(|| Failure::input(format!("{} holds no builder key", data_dir.keys().display())))?;
    let desk = custody_runner::desk::Local {
        store: instance.store.clone(),
        repositories: custody_git::Repositories::new(data_dir.repositories()),
        blobs,
        instance: instance.name.clone(),
    };
    Ok(custody_runner::builds::Builder {
        desk,
        key: std::sync::Arc::new(key.clone_key()),
        worker: custody_runner::builds::worker_name(boot),
        ceiling,
    })
}

fn sealing_key(data_dir: &DataDir) -> Result<std::sync::Arc<custody_formats::sealed::SealingKey>, Failure> {
    data_dir.sealing_key().map(std::sync::Arc::new).map_err(|e| Failure::input(format!("the secrets key: {e}")))
}

fn deployer(
    builder: &custody_runner::builds::Builder,
    instance: &instance::Instance,
    sealing: std::sync::Arc<custody_formats::sealed::SealingKey>,
) -> Result<custody_runner::deploys::Deployer, Failure> {
    let key = instance
        .keys
        .iter()
        .find(|k| k.role() == custody_formats::KeyRole::Deployer)
        .ok_or_else(|| Failure::input("the data directory holds no deployer key"))?;
    let desk =
        custody_runner::desk::LocalDeploys { local: builder.desk.clone(), sealing, builder: builder.key.clone() };
    Ok(custody_runner::deploys::Deployer {
        desk,
        key: std::sync::Arc::new(key.clone_key()),
        worker: format!("{}/deployer", builder.worker),
        ceiling: builder.ceiling,
    })
}

/// `custody worker`: runs builds in a process of its own, beside (or
/// instead of) the server's own builders, until Ctrl-C or SIGTERM.
pub async fn worker(args: WorkerArgs) -> Result<(), Failure> {
    init_logging(&args.log_format)?;
    let data_dir = DataDir::new(args.data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)))
        .with_hsm(crate::config::hsm_from_env()?);
    let instance = instance::open(&data_dir, args.database_url.clone()).await.map_err(instance_failure)?;
    let blobs = open_blobs(args.blob_store.as_deref(), &data_dir)?;
    custody_server::keyring::reconcile(&instance.store, &instance.name, &data_dir.keys(), &instance.keys, false)
        .await
        .map_err(|e| Failure::input(format!("the service keys: {e}")))?;
    instance::check_shared_storage(&data_dir, &instance.store, &blobs).await.map_err(instance_failure)?;
    let ceiling = args.jobs.ceiling()?;
    let jobs = Jobs {
        database_url: args.database_url.as_deref(),
        blob_store: args.blob_store.as_deref(),
        builders: args.builders.max(1),
        ceiling: &ceiling,
    };
    record_start(&instance.store, "worker", serde_json::Value::Object(jobs.configuration())).await?;
    let boot_id = custody_runner::boot::Boot::id();
    let builder = builder(&instance, &data_dir, blobs, &boot_id, ceiling)?;
    let mut workers: Vec<String> = (0..args.builders.max(1))
        .map(|i| if i == 0 { builder.worker.clone() } else { format!("{}/{i}", builder.worker) })
        .collect();
    workers.push(format!("{}/deployer", builder.worker));
    let _boot = start_boot(&data_dir, &instance.store, boot_id, workers).await?;
    println!(
        "worker {} running {} builder(s); artifacts in {}",
        builder.worker,
        args.builders,
        builder.desk.blobs.describe()
    );
    let _ = std::io::stdout().flush();
    let stop = Stop::new();
    let mut background = Background::default();
    for index in 0..args.builders.max(1) {
        let mut one = builder.clone();
        if index > 0 {
            one.worker = format!("{}/{index}", builder.worker);
        }
        background.spawn(one.run(stop.signal()));
    }
    let deployer = deployer(&builder, &instance, sealing_key(&data_dir)?)?;
    background.spawn(deployer.run(stop.signal()));
    shutdown_signal().await;
    stop.stop();
    background.join().await;
    instance.store.close().await;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
