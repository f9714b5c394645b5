//! Backups and restores of a whole instance, and the escrow of its keys.
//!
//! `custody backup` copies, while custody serves, the database (SQLite's
//! `VACUUM INTO`, or `pg_dump` over an exported snapshot), then the
//! repositories, then the blobs of a local store (an S3 store keeps its
//! blobs; the backup lists them), and writes a manifest naming the tree
//! head the copied ledger proves. The repositories are copied after the
//! database, so they hold every object it names, and then moved back to
//! what it records: a merge recorded after the copy began is taken off the
//! copied mainline, an open change's branch is set to its recorded head.
//!
//! No key is in a backup. `custody key escrow` seals the keys under a
//! passphrase into a file of their own, and the ledger records each export.
//!
//! `custody restore` rebuilds an instance from a backup and an escrow,
//! proves the restored ledger against the manifest's tree head, re-hashes
//! every blob, checks the mainlines and branches against the records, and
//! records an `instance.restored` event naming the backup's tree head and,
//! when it replaced a newer instance, the head it replaced: the events
//! between the two are the ones lost, and watchers see exactly that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use custody_blobs::{Blobs, Digest, Verdict};
use custody_domain::ProjectName;
use custody_formats::escrow::{self, KeyFile};
use custody_formats::keys::{KeyRole, ServiceKey};
use custody_formats::ledger_key::{Anchor, AnchorFile, EventKey};
use custody_formats::trust::rfc3339_of_millis;
use custody_store::{BackupFacts, Dialect, Snapshot, Store};
use serde::{Deserialize, Serialize};

use crate::instance::{DataDir, STORAGE_MARKER_FILE};

/// The manifest's file in a backup directory; written last, so a backup
/// without one is incomplete.
pub const MANIFEST_FILE: &str = "custody-backup.json";
/// The media type of a backup's manifest.
pub const BACKUP_MEDIA_TYPE: &str = "application/vnd.custody.backup.v1+json";
/// The copied SQLite database's file in a backup.
const SQLITE_FILE: &str = "custody.db";
/// The PostgreSQL dump's file in a backup (`pg_dump --format=custom`).
const PG_DUMP_FILE: &str = "database.pgdump";

/// Why a backup, a restore or an escrow failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// What the operator gave is wrong; the message says what to do.
    #[error("{0}")]
    Input(String),
    /// The instance or the backup is damaged, or a step failed.
    #[error("{0}")]
    Failed(String),
}

fn failed(what: &str) -> impl Fn(String) -> BackupError + '_ {
    move |why| BackupError::Failed(format!("{what}: {why}"))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |e| BackupError::Failed(format!("{}: {e}", path.display()))
}

/// A tree head: size, root (hex) and the legacy boundary of its anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeHead {
    /// Events covered.
    pub size: u64,
    /// Its root, hex.
    #[serde(with = "hex_hash")]
    pub root: [u8; 32],
    /// Events up to this one were written before events were authenticated.
    pub legacy: u64,
}

mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(hash: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

impl From<Anchor> for TreeHead {
    fn from(a: Anchor) -> Self {
        TreeHead { size: a.size, root: a.root, legacy: a.legacy }
    }
}

impl From<TreeHead> for Anchor {
    fn from(t: TreeHead) -> Self {
        Anchor { size: t.size, root: t.root, legacy: t.legacy }
    }
}

/// The newest signed checkpoint in a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRef {
    /// Events it covers.
    pub size: u64,
    /// The signed note.
    pub note: String,
}

/// One blob a backup's database names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    /// Its sha256, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A backup's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`BACKUP_MEDIA_TYPE`].
    pub media_type: String,
    /// The instance's name.
    pub instance: String,
    /// When the backup began (RFC 3339).
    pub taken_at: String,
    /// The custody version that took it.
    pub custody_version: String,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// The database's file in the backup.
    pub database_file: String,
    /// The tree head the copied ledger gives, every event's tag checked.
    pub tree: TreeHead,
    /// The tree head's tag under the instance's event key (hex), binding it
    /// to the instance and the backup's time: a manifest edited by whoever
    /// holds the backup does not restore.
    pub tree_tag: String,
    /// The newest signed checkpoint the copy holds.
    pub checkpoint: Option<CheckpointRef>,
    /// Each project's refs as backed up, by project.
    pub repositories: BTreeMap<String, BTreeMap<String, String>>,
    /// The blob store backed up from, as described to people.
    pub blob_store: String,
    /// Whether the blobs are in the backup (`blobs/`); otherwise they stay
    /// in their store, which a restore re-hashes.
    pub blobs_copied: bool,
    /// Every blob the database names.
    pub blobs: Vec<BlobRef>,
}

/// Where a backup is taken from.
pub struct Source<'a> {
    /// The instance's data directory, with its event key and anchor.
    pub data_dir: &'a DataDir,
    /// Its database.
    pub database_url: &'a str,
    /// Its blob store.
    pub blobs: &'a Blobs,
    /// Whether the blob store is local files (whose blobs the backup copies).
    pub blobs_local: bool,
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// Makes `to` for a new backup: absent or an empty directory, owner only.
fn prepare_empty(to: &Path, what: &str) -> Result<(), BackupError> {
    if to.exists() {
        let mut entries = std::fs::read_dir(to).map_err(io(to))?;
        if entries.next().is_some() {
            return Err(BackupError::Input(format!(
                "{} is not empty: {what} into a new or empty directory",
                to.display()
            )));
        }
    }
    std::fs::create_dir_all(to).map_err(io(to))?;
    restrict(to)
}

fn restrict(path: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io(path))
}

/// Takes a backup of `source` into the new or empty directory `to`.
pub async fn backup(source: Source<'_>, to: &Path) -> Result<Manifest, BackupError> {
    prepare_empty(to, "back up")?;
    let secrets =
        source.data_dir.existing_ledger_secrets().map_err(|e| BackupError::Input(e.to_string()))?.ok_or_else(|| {
            BackupError::Input(format!(
                "{} holds no event key: take backups on the instance's host, whose keys prove the copied ledger",
                source.data_dir.keys().display()
            ))
        })?;
    // The anchor never runs ahead of what is committed: read before the
    // copy, the copy extends it.
    let anchor = secrets.anchor.load().map_err(|e| BackupError::Failed(e.to_string()))?;
    let taken_at = rfc3339_of_millis(custody_store::now_ms());
    let postgres = Dialect::of_url(source.database_url) == Some(Dialect::Postgres);
    let (database_file, mut snapshot) = if postgres {
        let snapshot = Snapshot::begin(source.database_url).await.map_err(|e| failed("the database")(e.to_string()))?;
        pg_dump(source.database_url, snapshot.exported(), &to.join(PG_DUMP_FILE)).await?;
        (PG_DUMP_FILE, snapshot)
    } else {
        let file = to.join(SQLITE_FILE);
        custody_store::copy_sqlite(source.database_url, &file)
            .await
            .map_err(|e| failed("copying the database")(e.to_string()))?;
        let snapshot =
            Snapshot::begin(&sqlite_url(&file)).await.map_err(|e| failed("the copied database")(e.to_string()))?;
        (SQLITE_FILE, snapshot)
    };
    let proved = snapshot.prove_head(&secrets.key, anchor, secrets.anchor.path()).await;
    let facts = snapshot.facts().await;
    snapshot.end().await;
    let tree = proved.map_err(|e| failed("the copied ledger does not prove")(e.to_string()))?;
    let facts = facts.map_err(|e| failed("reading the copied database")(e.to_string()))?;

    // Every merge that moved a mainline is recorded before it moves it:
    // read after the copy, these records name every merge the copy holds.
    let repositories_to = to.join("repositories");
    copy_repositories(&source.data_dir.repositories(), &repositories_to, &facts)?;
    let newer = custody_store::recorded_mainlines(source.database_url)
        .await
        .map_err(|e| failed("reading the recorded merges")(e.to_string()))?;
    let repositories =
        custody_app::repositories::trim_to_records(&repositories_to, &facts, &newer).map_err(BackupError::Failed)?;

    let blobs: Vec<BlobRef> =
        facts.blobs.iter().map(|(sha256, size)| BlobRef { sha256: sha256.clone(), size: *size }).collect();
    if source.blobs_local {
        copy_blobs(source.blobs, &to.join("blobs"), &blobs).await?;
    }
    let tag = hex::encode(tree_tag(&secrets.key, &facts.instance, &taken_at, &tree.into()));
    let manifest = Manifest {
        tree_tag: tag,
        media_type: BACKUP_MEDIA_TYPE.into(),
        instance: facts.instance.clone(),
        taken_at,
        custody_version: env!("CARGO_PKG_VERSION").into(),
        database: if postgres { "postgres" } else { "sqlite" }.into(),
        database_file: database_file.into(),

        tree: tree.into(),
        checkpoint: facts.checkpoint.as_ref().map(|c| CheckpointRef { size: c.size, note: c.note.clone() }),
        repositories,
        blob_store: source.blobs.describe(),
        blobs_copied: source.blobs_local,
        blobs,
    };
    write_durably(&to.join(MANIFEST_FILE), serde_json::to_string_pretty(&manifest).expect("a manifest") + "\n")?;
    Ok(manifest)
}

/// The tag of a backup's tree head: the instance, the backup's time and
/// the head (size, root, legacy boundary) under the event key.
fn tree_tag(key: &EventKey, instance: &str, taken_at: &str, tree: &TreeHead) -> [u8; 32] {
    let (size, root, legacy) = (tree.size.to_string(), hex::encode(tree.root), tree.legacy.to_string());
    key.row_mac("backup_manifest", &[instance, taken_at, &size, &root, &legacy])
}

/// A PostgreSQL client program, given the password (if any) in its
/// environment rather than on its command line, where others on the host
/// could read it.
fn postgres_program(program: &str, password: Option<String>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    command
}

/// A `postgres://` URL without its password, and the password (decoded).
fn without_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_owned(), None) };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return (url.to_owned(), None) };
    let Some((user, password)) = userinfo.split_once(':') else { return (url.to_owned(), None) };
    (format!("{scheme}://{user}@{host}{tail}"), Some(percent_decoded(password)))
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `pg_dump` of `url` in the custom format, at `snapshot`.
async fn pg_dump(url: &str, snapshot: Option<&str>, file: &Path) -> Result<(), BackupError> {
    let (url, password) = without_password(url);
    let mut command = postgres_program("pg_dump", password);
    command.args(["--format=custom", "--no-owner", "--file"]).arg(file);
    if let Some(snapshot) = snapshot {
        command.arg(format!("--snapshot={snapshot}"));
    }
    command.arg(format!("--dbname={url}"));
    let output = command.output().await.map_err(|e| {
        BackupError::Input(format!("cannot run pg_dump ({e}): install PostgreSQL's client programs on this host"))
    })?;
    if !output.status.success() {
        return Err(BackupError::Failed(format!("pg_dump failed: {}", String::from_utf8_lossy(&output.stderr).trim())));
    }
    Ok(())
}

/// Copies each project's bare repository: refs first, then objects, so
/// every object a copied ref names is copied too (objects are only ever
/// added; a repacking writes its pack before it drops loose objects).
fn copy_repositories(from: &Path, to: &Path, facts: &BackupFacts) -> Result<(), BackupError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    restrict(to)?;
    let marker = from.join(STORAGE_MARKER_FILE);
    if marker.exists() {
        std::fs::copy(&marker, to.join(STORAGE_MARKER_FILE)).map_err(io(&marker))?;
    }
    for project in &facts.projects {
        let name = format!("{project}.git");
        let (source, dest) = (from.join(&name), to.join(&name));
        if !source.is_dir() {
            return Err(BackupError::Failed(format!(
                "the repository of {project} is missing: {} does not exist",
                source.display()
            )));
        }
        std::fs::create_dir_all(&dest).map_err(io(&dest))?;
        // Loose refs before packed-refs: a ref packed in between is in the
        // packed file copied after.
        for part in ["HEAD", "config", "refs", "packed-refs", "logs", "info", "objects"] {
            let path = source.join(part);
            if path.exists() {
                copy_tree(&path, &dest.join(part))?;
            }
        }
        for empty in ["refs/heads", "refs/tags", "objects/info", "objects/pack"] {
            std::fs::create_dir_all(dest.join(empty)).map_err(io(&dest))?;
        }
    }
    Ok(())
}

/// Copies a file, or a directory and everything under it, skipping git's
/// lock files and the quarantine of pushes in progress. An entry that
/// vanishes between its listing and its copy is skipped: git removes only
/// lock files, quarantines, loose refs it has packed (in `packed-refs`,
/// copied after) and loose objects it has packed (in a pack, copied after).
fn copy_tree(from: &Path, to: &Path) -> Result<(), BackupError> {
    let name = from.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(".lock")
        || name.starts_with("incoming-")
        || name.starts_with("tmp_")
        || name == "alternates"
        || name == "http-alternates"
    {
        return Ok(());
    }
    let meta = match std::fs::symlink_metadata(from) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(from)(e)),
    };
    if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(io(to))?;
        let entries = match std::fs::read_dir(from) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(from)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(from))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.is_file() {
        match std::fs::copy(from, to) {
            Ok(_) => Ok(()),
            // A loose object repacked meanwhile is in a pack copied after it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(from)(e)),
        }
    } else {
        Ok(())
    }
}

/// Copies every named blob into a local store at `to`, re-hashed on the
/// way out and again on the way in.
async fn copy_blobs(from: &Blobs, to: &Path, blobs: &[BlobRef]) -> Result<(), BackupError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    restrict(to)?;
    let dest = Blobs::local(to).map_err(|e| failed("the backup's blob directory")(e.to_string()))?;
    transfer_blobs(from, &dest, to, blobs).await
}

/// Copies `blobs` from one store to another through a staging file in
/// `staging`; each read re-hashes, and a damaged blob fails the copy.
async fn transfer_blobs(from: &Blobs, to: &Blobs, staging: &Path, blobs: &[BlobRef]) -> Result<(), BackupError> {
    let staged = staging.join(format!(".staging-{}", std::process::id()));
    for blob in blobs {
        let digest = blob
            .sha256
            .parse::<Digest>()
            .map_err(|e| BackupError::Failed(format!("the database names a blob {:?}: {e}", blob.sha256)))?;
        let _ = std::fs::remove_file(&staged);
        from.copy_to_file(&digest, &staged)
            .await
            .map_err(|e| BackupError::Failed(format!("blob {}: {e}", blob.sha256)))?;
        let ingested =
            to.ingest(&staged).await.map_err(|e| BackupError::Failed(format!("blob {}: {e}", blob.sha256)))?;
        if ingested.digest != digest || ingested.size != blob.size {
            return Err(BackupError::Failed(format!(
                "blob {} is not the {} bytes the database recorded",
                blob.sha256, blob.size
            )));
        }
    }
    let _ = std::fs::remove_file(&staged);
    Ok(())
}

/// Writes a file whole and fsyncs it and its directory.
fn write_durably(path: &Path, text: String) -> Result<(), BackupError> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}

/// Reads a backup's manifest.
pub fn read_manifest(from: &Path) -> Result<Manifest, BackupError> {
    let path = from.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        BackupError::Input(format!("{}: {e}; a backup directory holds {MANIFEST_FILE}, written last", path.display()))
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| BackupError::Input(format!("{}: not a custody backup manifest: {e}", path.display())))?;
    if manifest.media_type != BACKUP_MEDIA_TYPE {
        return Err(BackupError::Input(format!(
            "{}: media type {:?} is not {BACKUP_MEDIA_TYPE}",
            path.display(),
            manifest.media_type
        )));
    }
    Ok(manifest)
}

/// The files of a keys directory that an escrow holds: the four service
/// keys, the event key and, when there is one, the secrets' sealing key.
fn escrowed_files(data_dir: &DataDir) -> Result<Vec<(KeyFile, Option<String>)>, BackupError> {
    let mut files = Vec::new();
    for role in KeyRole::ALL {
        let path = data_dir.key_file(role);
        if !path.exists() && data_dir.holds_keys_outside() {
            // The HSM holds this one; it is escrowed by the device's own means.
            continue;
        }
        let key = ServiceKey::load(role, &path).map_err(|e| BackupError::Input(e.to_string()))?;
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        files.push((KeyFile { file: format!("{}.pem", role.as_str()), bytes }, Some(key.public().key_id())));
    }
    // The event and secrets keys, as files or sealed by the HSM (a sealed
    // one opens only with the device's key).
    for (plain, optional) in [(data_dir.event_key_file(), false), (data_dir.sealing_key_file(), true)] {
        let wrapped = custody_formats::keys::wrapped_file(&plain);
        let path = if wrapped.exists() { wrapped } else { plain };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                files.push((KeyFile { file, bytes }, None));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && optional => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    Ok(files)
}

/// What an escrow export made.
#[derive(Clone, Debug, Serialize)]
pub struct Escrowed {
    /// The file written.
    pub file: PathBuf,
    /// Its sha256, hex, as the ledger records it.
    pub sha256: String,
    /// The files inside, by name.
    pub files: Vec<String>,
    /// The service keys' ids inside.
    pub key_ids: Vec<String>,
    /// The ledger event recording the export.
    pub event: i64,
}

/// Seals the keys of `data_dir` under `passphrase` into the new file `to`,
/// and records the export in the ledger (through `store`) before the file
/// is kept: an export the ledger does not show does not exist.
pub async fn escrow_keys(
    data_dir: &DataDir,
    store: &Store,
    instance: &str,
    host: &str,
    passphrase: &str,
    to: &Path,
) -> Result<Escrowed, BackupError> {
    if to.exists() {
        return Err(BackupError::Input(format!("{} exists: escrow into a new file", to.display())));
    }
    let files = escrowed_files(data_dir)?;
    let key_ids: Vec<String> = files.iter().filter_map(|(_, id)| id.clone()).collect();
    let names: Vec<String> = files.iter().map(|(f, _)| f.file.clone()).collect();
    let (text, _) = escrow::seal(instance, &rfc3339_of_millis(custody_store::now_ms()), files, passphrase).map_err(
        |e| match e {
            escrow::EscrowError::WeakPassphrase => BackupError::Input(e.to_string()),
            other => BackupError::Failed(other.to_string()),
        },
    )?;
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
    let event = store
        .record_escrow(host.to_owned(), key_ids.clone(), sha256.clone())
        .await
        .map_err(|e| failed("recording the escrow in the ledger")(e.to_string()))?;
    let staged = to.with_extension("partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    {
        use std::io::Write as _;
        let mut file = options.open(&staged).map_err(io(&staged))?;
        file.write_all(text.as_bytes()).map_err(io(&staged))?;
        file.sync_all().map_err(io(&staged))?;
    }
    std::fs::rename(&staged, to).map_err(io(to))?;
    Ok(Escrowed { file: to.to_owned(), sha256, files: names, key_ids, event })
}

/// How to restore.
pub struct RestoreOptions<'a> {
    /// The backup directory.
    pub from: &'a Path,
    /// The data directory to restore into.
    pub data_dir: &'a DataDir,
    /// The PostgreSQL database to restore into (empty); SQLite in the data
    /// directory by default.
    pub database_url: Option<&'a str>,
    /// The blob store to restore into: the data directory's own when `None`.
    pub blob_store: Option<&'a str>,
    /// The escrow file's text and its passphrase.
    pub escrow: (&'a str, &'a str),
    /// Whether the data directory may hold an instance, which the restore
    /// replaces (what it held after the backup is lost, and recorded).
    pub replace: bool,
}

/// What a restore did and found.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    /// The backup's tree head, now the instance's.
    pub tree: TreeHead,
    /// The head of the instance it replaced, when it replaced one.
    pub replaced: Option<TreeHead>,
    /// Events the replaced instance had beyond the backup: lost.
    pub lost_events: u64,
    /// Blobs re-hashed.
    pub blobs_checked: usize,
    /// Refs checked against the records.
    pub refs_checked: usize,
    /// What does not agree; empty when everything does.
    pub problems: Vec<String>,
    /// The `instance.restored` event.
    pub event: i64,
}

/// Restores a backup into a data directory (see the module's comment).
pub async fn restore(options: RestoreOptions<'_>) -> Result<Restored, BackupError> {
    let manifest = read_manifest(options.from)?;
    let (header, files) = escrow::open(options.escrow.0, options.escrow.1).map_err(|e| match e {
        escrow::EscrowError::Malformed(_) => BackupError::Input(format!("the escrow file: {e}")),
        other => BackupError::Input(other.to_string()),
    })?;
    if header.instance != manifest.instance {
        return Err(BackupError::Input(format!(
            "the escrow holds the keys of {:?}, and the backup is of {:?}",
            header.instance, manifest.instance
        )));
    }
    check_tree_tag(&manifest, &files, options.from, options.data_dir)?;
    let data_dir = options.data_dir;
    let replaced = prepare_data_dir(data_dir, &files, options.replace)?;
    write_keys(data_dir, &files)?;

    let url = restore_database(&manifest, options.from, data_dir, options.database_url).await?;
    let event_key = data_dir
        .existing_ledger_secrets()
        .map_err(|e| BackupError::Input(e.to_string()))?
        .ok_or_else(|| BackupError::Input("the escrow holds no event key".into()))?
        .key;
    let mut snapshot = Snapshot::begin(&url).await.map_err(|e| failed("the restored database")(e.to_string()))?;
    let proved = snapshot.prove_head(&event_key, Some(manifest.tree.into()), &options.from.join(MANIFEST_FILE)).await;
    let facts = snapshot.facts().await;
    snapshot.end().await;
    let tree = proved.map_err(|e| failed("the restored ledger is not the backup's")(e.to_string()))?;
    let facts = facts.map_err(|e| failed("reading the restored database")(e.to_string()))?;
    if tree.size != manifest.tree.size {
        return Err(BackupError::Failed(format!(
            "the restored ledger holds {} events and the backup's manifest names {}",
            tree.size, manifest.tree.size
        )));
    }
    let mut problems = check_ledger(&url, data_dir).await?;
    if !problems.is_empty() {
        return Err(BackupError::Failed(format!(
            "the restored ledger does not verify against its checkpoints: {}",
            problems.join("; ")
        )));
    }

    restore_repositories(&options.from.join("repositories"), &data_dir.repositories(), &facts)?;
    let (blobs, blobs_checked) = restore_blobs(&manifest, options.from, data_dir, options.blob_store).await?;
    let (refs_checked, ref_problems) = check_refs(data_dir, &facts, &manifest)?;
    problems.extend(ref_problems);
    problems.extend(blobs);

    AnchorFile::new(data_dir.anchor_file()).save(&tree).map_err(|e| BackupError::Failed(e.to_string()))?;
    let secrets = data_dir.ledger_secrets().map_err(|e| BackupError::Failed(e.to_string()))?;
    let store = Store::open(&url, secrets).await.map_err(|e| failed("opening the restored instance")(e.to_string()))?;
    let lost_events = replaced.map_or(0, |r| r.size.saturating_sub(manifest.tree.size));
    let details = custody_api::RestoredDetails {
        backup: custody_api::RestoredBackup {
            taken_at: manifest.taken_at.clone(),
            tree_size: manifest.tree.size,
            tree_root: hex::encode(manifest.tree.root),
            checkpoint_size: manifest.checkpoint.as_ref().map(|c| c.size),
            checkpoint: manifest.checkpoint.as_ref().map(|c| c.note.clone()),
        },
        replaced: replaced.map(|r| custody_api::ReplacedTree { tree_size: r.size, tree_root: hex::encode(r.root) }),
        lost_events,
        problems: problems.clone(),
    };
    let details = serde_json::to_value(&details).expect("details serialise");
    let event = store.record_restore(details).await.map_err(|e| failed("recording the restore")(e.to_string()))?;
    Ok(Restored {
        tree: tree.into(),
        replaced: replaced.map(TreeHead::from),
        lost_events,
        blobs_checked,
        refs_checked,
        problems,
        event,
    })
}

/// Checks, before anything is written, that the manifest's tree head is
/// the one the instance's event key (from the escrow) tagged.
fn check_tree_tag(manifest: &Manifest, files: &[KeyFile], from: &Path, data_dir: &DataDir) -> Result<(), BackupError> {
    use base64::Engine as _;
    let key = match files.iter().find(|f| f.file == "event.key.wrapped") {
        Some(sealed) => data_dir.unseal("event.key", &sealed.bytes).map_err(|e| BackupError::Input(e.to_string()))?,
        None => files
            .iter()
            .find(|f| f.file == "event.key")
            .and_then(|f| {
                base64::engine::general_purpose::STANDARD.decode(String::from_utf8_lossy(&f.bytes).trim()).ok()
            })
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .ok_or_else(|| BackupError::Input("the escrow holds no event key".into()))?,
    };
    let key = EventKey::from_bytes(key);
    let expected = tree_tag(&key, &manifest.instance, &manifest.taken_at, &manifest.tree);
    if hex::decode(&manifest.tree_tag).ok().as_deref() != Some(&expected[..])
        || manifest.tree.legacy > manifest.tree.size
    {
        return Err(BackupError::Input(format!(
            "{}: its tree head is not the one this instance's key tagged (the manifest was edited, or the escrow is \
             of another instance); nothing was restored",
            from.join(MANIFEST_FILE).display()
        )));
    }
    Ok(())
}

/// Makes the data directory ready for a restore, and returns the tree head
/// of the instance it held, which the restore replaces.
fn prepare_data_dir(data_dir: &DataDir, files: &[KeyFile], replace: bool) -> Result<Option<Anchor>, BackupError> {
    if !data_dir.has_keys() {
        if data_dir.root().join("custody.db").exists() || data_dir.repositories().exists() {
            return Err(BackupError::Input(format!(
                "{} holds part of an instance without its keys: restore into a new directory",
                data_dir.root().display()
            )));
        }
        data_dir.create_dirs().map_err(|e| BackupError::Failed(e.to_string()))?;
        return Ok(None);
    }
    let anchor = AnchorFile::new(data_dir.anchor_file()).load().map_err(|e| BackupError::Failed(e.to_string()))?;
    if !replace {
        let holds = anchor.map_or_else(String::new, |a| format!(" (its ledger holds {} events)", a.size));
        return Err(BackupError::Input(format!(
            "{} already holds an instance{holds}: restore into a new directory, or pass --replace to replace it (what \
             it recorded after the backup is then lost, and the restore records how much)",
            data_dir.root().display()
        )));
    }
    let escrowed = files.iter().find(|f| f.file.starts_with("event.key"));
    let current = escrowed.and_then(|f| std::fs::read(data_dir.keys().join(&f.file)).ok());
    let escrowed = escrowed.map(|f| f.bytes.clone());
    if escrowed.is_none() || escrowed != current {
        return Err(BackupError::Input(format!(
            "the escrow holds another instance's event key than {}'s: a restore replaces an instance only with a \
             backup of itself",
            data_dir.root().display()
        )));
    }
    for file in ["custody.db", "custody.db-wal", "custody.db-shm"] {
        let path = data_dir.root().join(file);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(anchor)
}

/// Writes the escrowed key files into the keys directory, owner only.
fn write_keys(data_dir: &DataDir, files: &[KeyFile]) -> Result<(), BackupError> {
    use std::io::Write as _;
    let keys = data_dir.keys();
    std::fs::create_dir_all(&keys).map_err(io(&keys))?;
    for file in files {
        let path = keys.join(&file.file);
        let staged = keys.join(format!("{}.restoring", file.file));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut out = options.open(&staged).map_err(io(&staged))?;
        out.write_all(&file.bytes).map_err(io(&staged))?;
        out.sync_all().map_err(io(&staged))?;
        std::fs::rename(&staged, &path).map_err(io(&path))?;
    }
    std::fs::File::open(&keys).and_then(|d| d.sync_all()).map_err(io(&keys))
}

/// Puts the backup's database in place; returns its URL.
async fn restore_database(
    manifest: &Manifest,
    from: &Path,
    data_dir: &DataDir,
    database_url: Option<&str>,
) -> Result<String, BackupError> {
    let source = from.join(&manifest.database_file);
    match (manifest.database.as_str(), database_url) {
        ("sqlite", None) => {
            let dest = data_dir.root().join("custody.db");
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut out = options.open(&dest).map_err(io(&dest))?;
            let mut input = std::fs::File::open(&source).map_err(io(&source))?;
            std::io::copy(&mut input, &mut out).map_err(io(&dest))?;
            out.sync_all().map_err(io(&dest))?;
            Ok(data_dir.database_url())
        }
        ("postgres", Some(url)) if Dialect::of_url(url) == Some(Dialect::Postgres) => {
            pg_restore(url, &source).await?;
            Ok(url.to_owned())
        }
        ("postgres", _) => Err(BackupError::Input(
            "this backup is of a PostgreSQL database: pass --database-url of an empty PostgreSQL database to restore \
             it into"
                .into(),
        )),
        (_, Some(_)) => Err(BackupError::Input(
            "this backup is of a SQLite database, which restores into the data directory: leave out --database-url"
                .into(),
        )),
        (other, None) => Err(BackupError::Input(format!("the backup's database kind {other:?} is unknown"))),
    }
}

/// Restores a custom-format dump into an empty PostgreSQL database.
async fn pg_restore(url: &str, dump: &Path) -> Result<(), BackupError> {
    let (url, password) = without_password(url);
    let mut conn_check = postgres_program("psql", password.clone());
    conn_check.args(["-XAtq", "-c", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"]).arg(&url);
    let output = conn_check.output().await.map_err(|e| {
        BackupError::Input(format!("cannot run psql ({e}): install PostgreSQL's client programs on this host"))
    })?;
    let tables = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || tables != "0" {
        return Err(BackupError::Input(format!(
            "the database at --database-url is not empty ({} tables) or cannot be reached: restore into an empty \
             database{}",
            tables,
            if output.status.success() {
                String::new()
            } else {
                format!(" ({})", String::from_utf8_lossy(&output.stderr).trim())
            }
        )));
    }
    let output = postgres_program("pg_restore", password)
        .args(["--no-owner", "--exit-on-error", "--single-transaction"])
        .arg(format!("--dbname={url}"))
        .arg(dump)
        .output()
        .await
        .map_err(|e| BackupError::Input(format!("cannot run pg_restore ({e})")))?;
    if !output.status.success() {
        return Err(BackupError::Failed(format!(
            "pg_restore failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

/// The restored ledger against its checkpoints, with the restored ledger key.
async fn check_ledger(url: &str, data_dir: &DataDir) -> Result<Vec<String>, BackupError> {
    let key = data_dir.load_key(KeyRole::Ledger).map_err(|e| BackupError::Input(e.to_string()))?;
    let report = custody_store::inspect_with_key(url, &key.public(), None)
        .await
        .map_err(|e| failed("verifying the restored ledger")(e.to_string()))?;
    Ok(report.findings.iter().map(|f| format!("ledger: {}", f.describe())).collect())
}

/// Replaces the repository directory `to` with the backup's repositories
/// of the restored projects: each made anew as custody makes one (its
/// configuration and hooks custody's own, never the backup's), then given
/// the backup's refs and objects.
fn restore_repositories(from: &Path, to: &Path, facts: &BackupFacts) -> Result<(), BackupError> {
    if to.exists() {
        std::fs::remove_dir_all(to).map_err(io(to))?;
    }
    std::fs::create_dir_all(to).map_err(io(to))?;
    restrict(to)?;
    let marker = from.join(STORAGE_MARKER_FILE);
    if marker.exists() {
        std::fs::copy(&marker, to.join(STORAGE_MARKER_FILE)).map_err(io(&marker))?;
    }
    let repositories = custody_git::Repositories::new(to);
    for name in &facts.projects {
        let project = ProjectName::parse(name)
            .map_err(|e| BackupError::Failed(format!("the restored database names a project {name:?}: {e}")))?;
        let source = from.join(format!("{project}.git"));
        let head = std::fs::read_to_string(source.join("HEAD")).map_err(io(&source))?;
        let branch = head
            .trim()
            .strip_prefix("ref: refs/heads/")
            .filter(|b| custody_domain::project::check_branch_name(b).is_ok())
            .ok_or_else(|| BackupError::Failed(format!("the backup's repository of {project} has no valid HEAD")))?;
        let dest = repositories
            .create(&project, branch)
            .map_err(|e| BackupError::Failed(format!("making the repository of {project}: {e}")))?;
        for part in ["refs", "packed-refs", "objects"] {
            let path = source.join(part);
            if path.exists() {
                copy_tree(&path, &dest.join(part))?;
            }
        }
    }
    Ok(())
}

/// Puts the backup's blobs into the restored instance's store (or, when the
/// backup left them in their store, re-hashes them there); returns what is
/// wrong and how many blobs were checked.
async fn restore_blobs(
    manifest: &Manifest,
    from: &Path,
    data_dir: &DataDir,
    blob_store: Option<&str>,
) -> Result<(Vec<String>, usize), BackupError> {
    let target = match blob_store {
        Some(url) => Blobs::from_url(url, &data_dir.blobs()),
        None => Blobs::local(&data_dir.blobs()),
    }
    .map_err(|e| BackupError::Input(format!("the blob store: {e}")))?;
    if manifest.blobs_copied {
        let source = Blobs::local(&from.join("blobs")).map_err(|e| failed("the backup's blobs")(e.to_string()))?;
        transfer_blobs(&source, &target, data_dir.root(), &manifest.blobs).await?;
        let marker = std::fs::read(data_dir.repositories().join(STORAGE_MARKER_FILE)).ok();
        if let Some(marker) = marker {
            target.write_marker(&marker).await.map_err(|e| failed("the blob store's marker")(e.to_string()))?;
        }
    }
    let mut problems = Vec::new();
    for blob in &manifest.blobs {
        let Ok(digest) = blob.sha256.parse::<Digest>() else {
            problems.push(format!("blob {:?} is not a sha256", blob.sha256));
            continue;
        };
        match target.verify(&digest).await {
            Ok(Verdict::Intact) => {}
            Ok(Verdict::Missing) => {
                problems.push(format!("blob {} is missing from {}", blob.sha256, target.describe()))
            }
            Ok(Verdict::Damaged { actual }) => {
                problems.push(format!("blob {} is damaged: its bytes hash to {actual}", blob.sha256))
            }
            Err(e) => problems.push(format!("blob {}: {e}", blob.sha256)),
        }
    }
    Ok((problems, manifest.blobs.len()))
}

/// The restored repositories against the restored records: each mainline
/// holds only recorded merges on top of its history, each open change's
/// branch is at its recorded head, every ref is as the manifest lists it.
fn check_refs(
    data_dir: &DataDir,
    facts: &BackupFacts,
    manifest: &Manifest,
) -> Result<(usize, Vec<String>), BackupError> {
    let repositories = custody_git::Repositories::new(data_dir.repositories());
    let mut problems = Vec::new();
    let mut checked = 0;
    for mainline in &facts.mainlines {
        let Ok(project) = ProjectName::parse(&mainline.project) else { continue };
        let repository = repositories.path(&project);
        for branch in &mainline.branches {
            let reference = format!("refs/heads/{branch}");
            let Some(tip) = custody_git::change::read_ref(&repository, &reference).map_err(io(&repository))? else {
                if !mainline.merges.is_empty() {
                    problems.push(format!("{project} {reference} is missing, and merges into it are recorded"));
                }
                continue;
            };
            checked += 1;
            let chain = custody_git::change::first_parents(&repository, None, &tip)
                .map_err(|e| BackupError::Failed(format!("{project} {reference}: {e}")))?;
            if let Some(intruder) = custody_app::releases::unrecorded_on_mainline(&chain, &mainline.merges) {
                problems
                    .push(format!("{project} {reference}: commit {intruder} is on it and no merge of it is recorded"));
            }
        }
    }
    for head in &facts.heads {
        let Ok(project) = ProjectName::parse(&head.project) else { continue };
        let reference = format!("refs/heads/{}", head.branch);
        let tip = custody_git::change::read_ref(&repositories.path(&project), &reference).ok().flatten();
        checked += 1;
        if tip.as_deref() != Some(head.head.as_str()) {
            problems.push(format!(
                "{project} {reference} is at {} and its open change is recorded at {}",
                tip.as_deref().unwrap_or("nothing"),
                head.head
            ));
        }
    }
    for (project, refs) in &manifest.repositories {
        let Ok(name) = ProjectName::parse(project) else { continue };
        let found = custody_app::repositories::refs_of(&repositories.path(&name))
            .map_err(|e| BackupError::Failed(format!("the restored repository of {project}: {e}")))?;
        if &found != refs {
            problems.push(format!("{project}: the restored refs are not the ones the backup's manifest lists"));
        }
    }
    Ok((checked, problems))
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn a_database_password_leaves_the_url_for_the_environment() {
        assert_eq!(
            without_password("postgres://custody:s%40cret:x@db:5432/custody?sslmode=require"),
            ("postgres://custody@db:5432/custody?sslmode=require".to_owned(), Some("s@cret:x".to_owned()))
        );
        assert_eq!(
            without_password("postgres://postgres@127.0.0.1:5432/test"),
            ("postgres://postgres@127.0.0.1:5432/test".to_owned(), None)
        );
        assert_eq!(without_password("postgres://db/custody"), ("postgres://db/custody".to_owned(), None));
    }
}
