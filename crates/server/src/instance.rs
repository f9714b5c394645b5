//! An instance's data directory: database, repositories, blobs and keys.

use std::path::{Path, PathBuf};

use custody_domain::{Email, UserName};
use custody_formats::keys::{KeyError, KeyRole, ServiceKey};
use custody_formats::ledger_key::{AnchorFile, EventKey};
use custody_store::{Initialised, LedgerSecrets, Store, StoreError};

/// Where an instance keeps everything, under one directory; and, when its
/// service keys are held in an HSM, where that is.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
    hsm: Option<custody_hsm::Settings>,
}

/// Why an instance could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// A directory or file could not be made or read.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A service key is missing, unreadable or too open.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The database refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data directory already holds an instance.
    #[error("{0} already holds a custody instance; use `custody serve --data-dir {0}`, or choose another directory")]
    AlreadyInitialised(String),
    /// The HSM holding the service keys could not be used.
    #[error("the HSM: {0}")]
    Hsm(String),
    /// The data directory holds no instance.
    #[error("{0} holds no custody instance; run `custody init --data-dir {0} --admin NAME` first")]
    NotInitialised(String),
    /// This host was not given the instance's shared storage; it says what
    /// it lacks.
    #[error(
        "this host does not have the instance's shared storage: {0}. Every server of one instance shares its \
         database, its repository directory and its blob store (docs/operating.md, \"Several servers\")"
    )]
    NotShared(String),
}

/// The file in the repository directory that names the instance whose
/// repositories it holds.
pub const STORAGE_MARKER_FILE: &str = ".custody-instance";

/// Checks that the repository directory and the blob store this host was
/// given are the instance's, by the marker the instance wrote into both
/// (`.custody-instance` in the one, an object beside the blobs in the other)
/// when it first started (written now, on the first start). A second server
/// with a data directory of its own on the instance's database would
/// otherwise diverge in silence: other commits on its branches, artifacts
/// missing on one side.
pub async fn check_shared_storage(
    data_dir: &DataDir,
    store: &Store,
    blobs: &custody_blobs::Blobs,
) -> Result<(), InstanceError> {
    let (marker, made) = store.storage_marker().await?;
    let file = data_dir.repositories().join(STORAGE_MARKER_FILE);
    let content = format!("custody instance storage {marker}\n");
    if made {
        return mark_shared_storage(&file, &content, blobs).await;
    }
    let mut lacks = Vec::new();
    match std::fs::read_to_string(&file) {
        Ok(found) if found == content => {}
        Ok(_) => lacks.push(format!(
            "the repository directory {} belongs to another custody instance (its {STORAGE_MARKER_FILE} names another)",
            data_dir.repositories().display()
        )),
        Err(_) => lacks.push(format!(
            "the repository directory {} is not the instance's: it lacks the {STORAGE_MARKER_FILE} the instance \
             wrote into its own",
            data_dir.repositories().display()
        )),
    }
    match blobs.marker().await {
        Ok(Some(found)) if found == content.as_bytes() => {}
        Ok(Some(_)) => lacks.push(format!(
            "the blob store ({}) belongs to another custody instance (its marker names another)",
            blobs.describe()
        )),
        Ok(None) => lacks.push(format!(
            "the blob store ({}) is not the instance's: it lacks the marker the instance wrote into its own",
            blobs.describe()
        )),
        Err(e) => lacks.push(format!("the blob store ({}) cannot be read: {e}", blobs.describe())),
    }
    if lacks.is_empty() {
        Ok(())
    } else {
        Err(InstanceError::NotShared(lacks.join("; ")))
    }
}

/// Writes the marker into the repository directory and the blob store.
async fn mark_shared_storage(file: &Path, content: &str, blobs: &custody_blobs::Blobs) -> Result<(), InstanceError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| InstanceError::Io { path, source }
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(file, content).map_err(io(file))?;
    blobs
        .write_marker(content.as_bytes())
        .await
        .map_err(|e| InstanceError::Io { path: blobs.describe(), source: std::io::Error::other(e.to_string()) })?;
    Ok(())
}

impl DataDir {
    /// The data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into(), hsm: None }
    }

    /// The same directory, its service keys taken from the PKCS#11 token
    /// `hsm` names wherever the token holds a key of the role.
    pub fn with_hsm(self, hsm: Option<custody_hsm::Settings>) -> Self {
        DataDir { hsm, ..self }
    }

    /// Whether service keys may be held in an HSM rather than in files.
    pub fn holds_keys_outside(&self) -> bool {
        self.hsm.is_some()
    }

    /// The keys the HSM holds, if one is configured.
    fn hsm_keys(&self) -> Result<Vec<ServiceKey>, InstanceError> {
        match &self.hsm {
            Some(settings) => {
                custody_hsm::open_keys(settings, &KeyRole::ALL).map_err(|e| InstanceError::Hsm(e.to_string()))
            }
            None => Ok(Vec::new()),
        }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite database of the embedded default.
    pub fn database_url(&self) -> String {
        format!("sqlite://{}", self.root.join("custody.db").display())
    }

    /// Bare git repositories.
    pub fn repositories(&self) -> PathBuf {
        self.root.join("repositories")
    }

    /// The hook scripts every repository runs.
    pub fn hooks(&self) -> PathBuf {
        self.root.join("hooks")
    }

    /// Content-addressed blobs (artifacts, logs).
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// The service keys.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// The file of one service key.
    pub fn key_file(&self, role: KeyRole) -> PathBuf {
        self.keys().join(format!("{}.pem", role.as_str()))
    }

    /// The file of the key that seals environment secrets.
    pub fn sealing_key_file(&self) -> PathBuf {
        self.keys().join("secrets.key")
    }

    /// The key that seals environment secrets, made on first use.
    pub fn sealing_key(&self) -> Result<custody_formats::sealed::SealingKey, KeyError> {
        let key = self.secret(&self.sealing_key_file(), "the secrets key", true)?;
        Ok(custody_formats::sealed::SealingKey::from_bytes(key.expect("made when missing")))
    }

    /// The HSM's key that seals the instance's own secrets, if the HSM
    /// holds one.
    fn wrapper(&self) -> Result<Option<std::sync::Arc<dyn custody_formats::keys::SecretWrapper>>, KeyError> {
        match &self.hsm {
            Some(settings) => custody_hsm::open_wrapper(settings)
                .map_err(|e| KeyError::Sealed { path: self.keys().display().to_string(), why: e.to_string() }),
            None => Ok(None),
        }
    }

    /// A 32-byte secret of the keys directory: sealed by the HSM's wrapping
    /// key when it holds one (a plain file is then sealed and removed),
    /// else a file of its own. Made when missing and `create`.
    fn secret(&self, path: &Path, what: &str, create: bool) -> Result<Option<[u8; 32]>, KeyError> {
        if let Some(wrapper) = self.wrapper()? {
            return custody_formats::keys::load_wrapped_secret(path, wrapper.as_ref(), what, create);
        }
        let wrapped = custody_formats::keys::wrapped_file(path);
        if wrapped.exists() {
            return Err(KeyError::Sealed {
                path: wrapped.display().to_string(),
                why: format!(
                    "{what} is sealed by an HSM's custody-wrap key: give this process the device \
                     (CUSTODY_PKCS11_MODULE, CUSTODY_PKCS11_TOKEN, CUSTODY_PKCS11_PIN)"
                ),
            });
        }
        if !create && !path.exists() {
            return Ok(None);
        }
        custody_formats::keys::load_or_create_secret(path, what).map(Some)
    }

    /// Opens the text of a sealed secret file of the keys directory (such as
    /// an escrow's `event.key.wrapped`) with the HSM's wrapping key.
    pub fn unseal(&self, name: &str, text: &[u8]) -> Result<[u8; 32], KeyError> {
        use base64::Engine as _;
        let path = self.keys().join(format!("{name}.wrapped"));
        let sealed_error = |why: String| KeyError::Sealed { path: path.display().to_string(), why };
        let wrapper = self.wrapper()?.ok_or_else(|| {
            sealed_error("it is sealed by an HSM's custody-wrap key: give this process the device".into())
        })?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8_lossy(text).trim())
            .map_err(|e| sealed_error(format!("not base64: {e}")))?;
        let opened = wrapper
            .unwrap(&sealed, name)
            .map_err(|e| sealed_error(format!("{} does not open it: {e}", wrapper.describe())))?;
        opened.try_into().map_err(|_| sealed_error("not a 32-byte secret".into()))
    }

    /// Whether the secrets are sealed by an HSM rather than files.
    pub fn seals_secrets_outside(&self) -> bool {
        custody_formats::keys::wrapped_file(&self.event_key_file()).exists()
    }

    /// The secret that authenticates audit events and hashes tokens.
    pub fn event_key_file(&self) -> PathBuf {
        self.keys().join("event.key")
    }

    /// Where the newest committed tree head of the ledger is anchored.
    pub fn anchor_file(&self) -> PathBuf {
        self.keys().join("ledger.anchor")
    }

    /// The event key (made on first use) and the anchor, which the store
    /// needs to trust what it reads back.
    pub fn ledger_secrets(&self) -> Result<LedgerSecrets, KeyError> {
        let key = self.secret(&self.event_key_file(), "the event key", true)?.expect("made when missing");
        Ok(LedgerSecrets { key: EventKey::from_bytes(key), anchor: AnchorFile::new(self.anchor_file()) })
    }

    /// The event key and anchor if this directory has them, never making
    /// one: for reading a database without becoming its writer.
    pub fn existing_ledger_secrets(&self) -> Result<Option<LedgerSecrets>, KeyError> {
        Ok(self
            .secret(&self.event_key_file(), "the event key", false)?
            .map(|key| LedgerSecrets { key: EventKey::from_bytes(key), anchor: AnchorFile::new(self.anchor_file()) }))
    }

    /// Whether the directory already holds an instance's keys: its ledger
    /// key's file or, when the service keys are in an HSM, its event key
    /// (a file, or sealed by the HSM).
    pub fn has_keys(&self) -> bool {
        self.key_file(KeyRole::Ledger).exists()
            || self.event_key_file().exists()
            || custody_formats::keys::wrapped_file(&self.event_key_file()).exists()
    }

    pub(crate) fn create_dirs(&self) -> Result<(), InstanceError> {
        for dir in [self.root.clone(), self.repositories(), self.hooks(), self.blobs(), self.keys()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| InstanceError::Io { path: dir.display().to_string(), source })?;
            restrict(&dir)?;
        }
        // The database holds token and password hashes: owner only, before
        // SQLite creates it (its journal files take the same mode).
        let database = self.root.join("custody.db");
        if !database.exists() {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options
                .open(&database)
                .map_err(|source| InstanceError::Io { path: database.display().to_string(), source })?;
        }
        Ok(())
    }

    /// The key of `role`: from the HSM when it holds one, else its file.
    pub fn load_key(&self, role: KeyRole) -> Result<ServiceKey, InstanceError> {
        match self.hsm_keys()?.into_iter().find(|k| k.role() == role) {
            Some(key) => Ok(key),
            None => Ok(ServiceKey::load(role, &self.key_file(role))?),
        }
    }

    /// Loads every service key: from the HSM where it holds the role's key,
    /// else from the key file, refusing missing or open ones.
    pub fn load_keys(&self) -> Result<Vec<ServiceKey>, InstanceError> {
        let mut held = self.hsm_keys()?;
        KeyRole::ALL
            .into_iter()
            .map(|role| match held.iter().position(|k| k.role() == role) {
                Some(i) => Ok(held.swap_remove(i)),
                None => Ok(ServiceKey::load(role, &self.key_file(role))?),
            })
            .collect()
    }
}

#[cfg(unix)]
fn restrict(dir: &Path) -> Result<(), InstanceError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|source| InstanceError::Io { path: dir.display().to_string(), source })
}

#[cfg(not(unix))]
fn restrict(_: &Path) -> Result<(), InstanceError> {
    Ok(())
}

/// How to make a new instance.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The instance's name (the origin of its checkpoints).
    pub name: String,
    /// The first admin.
    pub admin: UserName,
    /// The first admin's e-mail address, if given.
    pub admin_email: Option<Email>,
    /// The database; the data directory's SQLite file when absent.
    pub database_url: Option<String>,
}

/// Makes a new instance: directories, service keys and the database with
/// its first admin. Returns the admin's token, shown once.
pub async fn init(data_dir: &DataDir, options: InitOptions) -> Result<Initialised, InstanceError> {
    if data_dir.has_keys() {
        return Err(InstanceError::AlreadyInitialised(data_dir.root().display().to_string()));
    }
    data_dir.create_dirs()?;
    let made = init_store(data_dir, options).await;
    if made.is_err() {
        // An init that did not finish leaves no key behind, so that it can
        // be run again (the keys are what says a directory holds an instance).
        for file in KeyRole::ALL.map(|r| data_dir.key_file(r)).into_iter().chain([
            data_dir.event_key_file(),
            custody_formats::keys::wrapped_file(&data_dir.event_key_file()),
            data_dir.anchor_file(),
        ]) {
            let _ = std::fs::remove_file(file);
        }
    }
    made
}

async fn init_store(data_dir: &DataDir, options: InitOptions) -> Result<Initialised, InstanceError> {
    let url = options.database_url.unwrap_or_else(|| data_dir.database_url());
    let store = Store::open(&url, data_dir.ledger_secrets()?).await?;
    let outcome = async {
        if store.instance_name().await?.is_some() {
            return Err(InstanceError::AlreadyInitialised(data_dir.root().display().to_string()));
        }
        let held: Vec<KeyRole> = data_dir.hsm_keys()?.iter().map(ServiceKey::role).collect();
        for role in KeyRole::ALL.into_iter().filter(|r| !held.contains(r)) {
            ServiceKey::generate(role).save(&data_dir.key_file(role))?;
        }
        Ok(store.initialise(&options.name, options.admin, options.admin_email).await?)
    }
    .await;
    store.close().await;
    outcome
}

/// An open instance: its store and keys.
pub struct Instance {
    /// The data directory.
    pub data_dir: DataDir,
    /// The database.
    pub store: Store,
    /// The instance's name.
    pub name: String,
    /// The service keys.
    pub keys: Vec<ServiceKey>,
}

/// Opens an initialised instance.
pub async fn open(data_dir: &DataDir, database_url: Option<String>) -> Result<Instance, InstanceError> {
    if !data_dir.has_keys() {
        return Err(InstanceError::NotInitialised(data_dir.root().display().to_string()));
    }
    let keys = data_dir.load_keys()?;
    let url = database_url.unwrap_or_else(|| data_dir.database_url());
    let store = Store::open(&url, data_dir.ledger_secrets()?).await?;
    let Some(name) = store.instance_name().await? else {
        store.close().await;
        return Err(InstanceError::NotInitialised(data_dir.root().display().to_string()));
    };
    Ok(Instance { data_dir: data_dir.clone(), store, name, keys })
}
