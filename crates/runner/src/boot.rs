//! Which earlier processes on this data directory have ended, so that the
//! work they held is released at start-up rather than when its leases run
//! out.
//!
//! Each process holds an exclusive lock on a file of its own under the data
//! directory's `run/` for as long as it lives, naming its host, the data
//! directory's path and its workers. A file whose lock can be taken belongs
//! to a process that ended (the kernel drops a lock with its holder, however
//! it died). A process id the system reused does not matter: the file is
//! named by a random boot id. A copy of the data directory (another path,
//! or another host) does not count as the same: its files name the original
//! path or host, and are removed without releasing anything, since their
//! processes may well be alive.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::try_lock;

/// This process's boot: its id and the lock it holds while it lives.
pub struct Boot {
    /// Random, new at every start.
    pub id: String,
    _lock: File,
}

/// The name of this host, as worker names carry it.
pub fn host() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    }
}

impl Boot {
    /// A new boot id (not yet registered).
    pub fn id() -> String {
        custody_store::random_secret().chars().filter(char::is_ascii_alphanumeric).take(10).collect()
    }

    /// Registers boot `id` with its `workers` under `data_dir`'s `run/`,
    /// and returns it with the workers of every earlier process on this
    /// data directory that has ended.
    pub fn start(data_dir: &Path, id: String, workers: &[String]) -> std::io::Result<(Boot, Vec<String>)> {
        let run = data_dir.join("run");
        std::fs::create_dir_all(&run)?;
        let here = std::fs::canonicalize(data_dir)?;
        let host = host();
        let mut ended = Vec::new();
        for entry in std::fs::read_dir(&run)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "lock") {
                continue;
            }
            let Ok(mut file) = File::options().read(true).write(true).open(&path) else { continue };
            if !try_lock(&file) {
                continue; // alive
            }
            let mut text = String::new();
            let record: Option<Value> =
                file.read_to_string(&mut text).ok().and_then(|_| serde_json::from_str(&text).ok());
            let field = |record: &Value, name: &str| record.get(name).and_then(Value::as_str).map(str::to_owned);
            match record {
                Some(record)
                    if field(&record, "host").as_deref() == Some(host.as_str())
                        && field(&record, "data_dir").map(PathBuf::from).as_deref() == Some(here.as_path()) =>
                {
                    let workers = record.get("workers").and_then(Value::as_array).into_iter().flatten();
                    ended.extend(workers.filter_map(Value::as_str).map(str::to_owned));
                }
                Some(record) => tracing::warn!(
                    file = %path.display(), host = ?field(&record, "host"), data_dir = ?field(&record, "data_dir"),
                    "a start-up lock of another host or path (a copied data directory): its work is left to its leases"
                ),
                None => {}
            }
            drop(file);
            let _ = std::fs::remove_file(&path);
        }
        let path = run.join(format!("{id}.lock"));
        let mut lock = File::options().create_new(true).read(true).write(true).open(&path)?;
        if !try_lock(&lock) {
            return Err(std::io::Error::other(format!("{} is locked by another process", path.display())));
        }
        let record = json!({ "host": host, "data_dir": here, "workers": workers });
        lock.write_all(record.to_string().as_bytes())?;
        lock.sync_all()?;
        Ok((Boot { id, _lock: lock }, ended))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_ended_is_seen_and_a_live_one_or_a_copy_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let (alive, ended) = Boot::start(&data, "alive".into(), &["w1".into()]).unwrap();
        assert!(ended.is_empty());
        let (gone, _) = Boot::start(&data, "gone".into(), &["w2".into(), "w2/deployer".into()]).unwrap();
        drop(gone);
        // A copy of the data directory holds both files, under another path.
        let copy = dir.path().join("copy");
        std::fs::create_dir_all(copy.join("run")).unwrap();
        for name in ["alive.lock", "gone.lock"] {
            std::fs::copy(data.join("run").join(name), copy.join("run").join(name)).unwrap();
        }
        let (_copied, ended) = Boot::start(&copy, "copied".into(), &[]).unwrap();
        assert!(ended.is_empty(), "a copy releases nothing: {ended:?}");
        let (_next, ended) = Boot::start(&data, "next".into(), &[]).unwrap();
        assert_eq!(ended, ["w2", "w2/deployer"], "only the ended process");
        assert!(!data.join("run").join("gone.lock").exists());
        assert!(data.join("run").join("alive.lock").exists());
        drop(alive);
    }
}
