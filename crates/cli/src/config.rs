//! Files the command reads and writes: the server's optional config file,
//! and the client's stored server and token.

use std::path::{Path, PathBuf};

use clap::Args;
use custody_server::instance::DataDir;

use serde::{Deserialize, Serialize};

use crate::Failure;

/// The server's config file. Every key is optional; flags and `CUSTODY_*`
/// environment variables take precedence over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// The data directory.
    pub data_dir: Option<PathBuf>,
    /// The address to listen on.
    pub listen: Option<String>,
    /// A PostgreSQL URL; SQLite in the data directory when absent.
    pub database_url: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// The instance's name, used when initialising.
    pub name: Option<String>,
    /// The URL clients reach the server at.
    pub public_url: Option<String>,
    /// Where artifacts are stored (`s3://BUCKET/PREFIX`).
    pub blob_store: Option<String>,
    /// How many builds run at once in the server's process.
    pub builders: Option<usize>,
    /// Proxies believed about their client in `X-Forwarded-For`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl ServerFile {
    /// Reads and strictly validates a config file.
    pub fn read(path: &Path) -> Result<ServerFile, Failure> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::input(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let place = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!(" at line {line}, column {column}")
                })
                .unwrap_or_default();
            Failure::input(format!("config file {}{place}: {}", path.display(), e.message()))
        })
    }
}

/// What `custody login` stores.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The server's base URL.
    pub server: Option<String>,
    /// The token.
    pub token: Option<String>,
}

/// Where the credentials live: `$CUSTODY_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/custody`, else `~/.config/custody`.
pub fn credentials_path() -> Option<PathBuf> {
    let dir = std::env::var_os("CUSTODY_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("custody")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("custody")))?;
    Some(dir.join("credentials.toml"))
}

impl Credentials {
    /// The stored credentials, or none.
    pub fn load() -> Result<Credentials, Failure> {
        let Some(path) = credentials_path() else {
            return Ok(Credentials::default());
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| Failure::input(format!("{} is damaged ({e}); run `custody login` again", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Credentials::default()),
            Err(e) => Err(Failure::input(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Writes the credentials, readable by their owner only.
    pub fn save(&self) -> Result<PathBuf, Failure> {
        let path =
            credentials_path().ok_or_else(|| Failure::input("set HOME or CUSTODY_CONFIG_DIR to store credentials"))?;
        let failed = |e: std::io::Error| Failure::internal(format!("cannot write {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let text = toml::to_string(self).map_err(|e| Failure::internal(e.to_string()))?;
        let temporary = path.with_extension("toml.tmp");
        let _ = std::fs::remove_file(&temporary);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary).map_err(failed)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(failed)?;
        std::fs::rename(&temporary, &path).map_err(failed)?;
        Ok(path)
    }
}

/// Where an instance is, as `custody serve` would read it.
#[derive(Args, Debug)]
pub struct InstanceArgs {
    /// The config file `custody serve` reads; flags and CUSTODY_* variables override it.
    #[arg(long, env = "CUSTODY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory [default: ./custody-data].
    #[arg(long, env = "CUSTODY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The PostgreSQL URL; SQLite in the data directory by default.
    #[arg(long, env = "CUSTODY_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// The artifact store (`s3://BUCKET/PREFIX`); the data directory's blobs/ by default.
    #[arg(long, env = "CUSTODY_BLOB_STORE", value_name = "URL")]
    blob_store: Option<String>,
}

/// The instance's settings, resolved.
pub struct Instance {
    /// The data directory (with the HSM, when one is configured).
    pub data_dir: DataDir,
    /// The database: the one given, else the data directory's SQLite file.
    pub database_url: String,
    /// The database as given, if it was.
    pub database_given: Option<String>,
    /// The artifact store as given, if it was.
    pub blob_store: Option<String>,
}

impl InstanceArgs {
    /// The settings, from the flags, then the config file, then the defaults.
    pub fn resolve(&self) -> Result<Instance, Failure> {
        let file = match &self.config {
            Some(path) => ServerFile::read(path)?,
            None => ServerFile::default(),
        };
        let data_dir = DataDir::new(
            self.data_dir.clone().or(file.data_dir).unwrap_or_else(|| PathBuf::from(crate::serve::DEFAULT_DATA_DIR)),
        )
        .with_hsm(crate::config::hsm_from_env()?);
        let database_given = self.database_url.clone().or(file.database_url);
        let database_url = database_given.clone().unwrap_or_else(|| data_dir.database_url());
        Ok(Instance { data_dir, database_url, database_given, blob_store: self.blob_store.clone().or(file.blob_store) })
    }
}

/// The PKCS#11 token holding the service keys, when `CUSTODY_PKCS11_MODULE`
/// names a module: `CUSTODY_PKCS11_TOKEN` (its label) and the user PIN from
/// `CUSTODY_PKCS11_PIN_FILE` or `CUSTODY_PKCS11_PIN`.
pub fn hsm_from_env() -> Result<Option<custody_hsm::Settings>, Failure> {
    let Some(module) = std::env::var_os("CUSTODY_PKCS11_MODULE").filter(|m| !m.is_empty()) else { return Ok(None) };
    let token = std::env::var("CUSTODY_PKCS11_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Failure::input("CUSTODY_PKCS11_MODULE is set: set CUSTODY_PKCS11_TOKEN to the token's label"))?;
    let pin = match std::env::var_os("CUSTODY_PKCS11_PIN_FILE").filter(|p| !p.is_empty()) {
        Some(file) => std::fs::read_to_string(&file)
            .map(|pin| pin.trim_end_matches(['\r', '\n']).to_owned())
            .map_err(|e| Failure::input(format!("CUSTODY_PKCS11_PIN_FILE {}: {e}", Path::new(&file).display())))?,
        None => std::env::var("CUSTODY_PKCS11_PIN").map_err(|_| {
            Failure::input("CUSTODY_PKCS11_MODULE is set: give the token's user PIN in CUSTODY_PKCS11_PIN_FILE or CUSTODY_PKCS11_PIN")
        })?,
    };
    Ok(Some(custody_hsm::Settings { module: module.into(), token, pin }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packaging(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging").join(name)
    }

    #[test]
    fn the_packaged_config_file_reads_as_the_settings_the_unit_and_image_expect() {
        let file = ServerFile::read(&packaging("config.toml")).expect("the packaged config reads");
        assert_eq!(file.data_dir.as_deref(), Some(Path::new("/var/lib/custody")), "the unit's StateDirectory");
        assert_eq!(file.listen.as_deref(), Some("127.0.0.1:8080"), "loopback, behind the proxy");
        assert!(file.public_url.as_deref().is_some_and(|u| u.starts_with("https://")), "{:?}", file.public_url);
        assert!(file.database_url.is_none(), "no credentials in the file");
        assert_eq!(file.trusted_proxies, ["127.0.0.1"], "the proxy in front, on loopback");
    }

    #[test]
    fn the_systemd_unit_runs_serve_with_the_packaged_config_and_its_sandboxing() {
        let unit = std::fs::read_to_string(packaging("custody.service")).expect("the unit");
        let set: Vec<&str> = unit.lines().map(str::trim).filter(|l| !l.starts_with('#')).collect();
        for directive in [
            "ExecStart=/usr/bin/custody serve --config /etc/custody/config.toml",
            "User=custody",
            "StateDirectory=custody",
            "StateDirectoryMode=0700",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=",
        ] {
            assert!(set.contains(&directive), "the unit lacks {directive}");
        }
        // What systemd itself says of it, with an executable where the
        // binary is installed (systemd checks that it exists).
        let dir = tempfile::tempdir().expect("a directory");
        let copy = dir.path().join("custody.service");
        let executable = std::env::current_exe().expect("this test's executable");
        std::fs::write(&copy, unit.replace("/usr/bin/custody", &executable.display().to_string())).expect("a copy");
        let verified = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze runs (scripts/setup installs systemd)");
        let said = String::from_utf8_lossy(&verified.stderr);
        assert!(verified.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    }
}
