//! Each start of custody, in the ledger: the version that ran and a digest
//! of its effective configuration, so that an upgrade, or a setting that
//! weakens a control, is visible to auditors rather than only to whoever
//! can read the host's files.

use custody_domain::audit::{NewEvent, SYSTEM_ACTOR};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::{Result, Store};

/// The instance key of the marker that ties the instance's shared storage
/// to its database.
const STORAGE_MARKER: &str = "storage_marker";

/// The audit action a start is recorded under.
const START_ACTION: &str = "instance.start";

/// What a start found changed since the previous start of the same process on its host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartChanges {
    /// The version that ran before, when another ran.
    pub version_from: Option<String>,
    /// Whether the effective configuration differs.
    pub configuration: bool,
}

/// The digest a configuration is recorded under: sha256 of its JSON, whose
/// keys serialize in sorted order, so equal settings give equal digests.
fn configuration_digest(configuration: &Value) -> String {
    hex::encode(Sha256::digest(configuration.to_string().as_bytes()))
}

impl Store {
    /// Records that a process (`subject`: `host:NAME` for a server,
    /// `worker:NAME` for a worker) started custody `version` with
    /// `configuration` (the effective settings, without secrets), and says
    /// what changed since that subject's previous start.
    pub async fn record_start(&self, subject: String, version: String, configuration: Value) -> Result<StartChanges> {
        let digest = configuration_digest(&configuration);
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql(
                    "SELECT details FROM audit_events WHERE action = $1 AND subject = $2 ORDER BY seq DESC LIMIT 1",
                );
                let previous: Option<String> =
                    sqlx::query_scalar(&sql).bind(START_ACTION).bind(&subject).fetch_optional(tx.conn()).await?;
                let previous: Option<Value> = previous.and_then(|text| serde_json::from_str(&text).ok());
                let changes = match &previous {
                    None => StartChanges::default(),
                    Some(before) => StartChanges {
                        version_from: before["version"].as_str().filter(|v| *v != version).map(str::to_owned),
                        configuration: before["configuration_sha256"].as_str() != Some(digest.as_str()),
                    },
                };
                let mut changed = Vec::new();
                if changes.version_from.is_some() {
                    changed.push("version");
                }
                if changes.configuration {
                    changed.push("configuration");
                }
                tx.audit(NewEvent {
                    actor: SYSTEM_ACTOR.into(),
                    action: START_ACTION.into(),
                    subject,
                    details: json!({
                        "version": version,
                        "previous_version": changes.version_from,
                        "configuration_sha256": digest,
                        "configuration": configuration,
                        "changed": changed,
                    }),
                })
                .await?;
                Ok(changes)
            })
        })
        .await
    }
}

impl Store {
    /// The marker that ties this instance's shared storage (its repository
    /// directory and blob store) to its database, made the first time it is
    /// asked for; and whether this call made it. Every server of the
    /// instance finds the same marker in the storage it was given, or is
    /// not given the instance's storage.
    pub async fn storage_marker(&self) -> Result<(String, bool)> {
        // Every start but the first finds it: read it without the writer.
        let sql = self.sql("SELECT value FROM instance WHERE key = $1");
        let known: Option<String> =
            sqlx::query_scalar(&sql).bind(STORAGE_MARKER).fetch_optional(self.readers()).await?;
        if let Some(known) = known {
            return Ok((known, false));
        }
        let fresh = crate::random_secret();
        self.write(move |tx| {
            Box::pin(async move {
                let sql = tx.sql("SELECT value FROM instance WHERE key = $1");
                let known: Option<String> =
                    sqlx::query_scalar(&sql).bind(STORAGE_MARKER).fetch_optional(tx.conn()).await?;
                if let Some(known) = known {
                    return Ok((known, false));
                }
                let sql = tx.sql("INSERT INTO instance (key, value) VALUES ($1, $2)");
                sqlx::query(&sql).bind(STORAGE_MARKER).bind(&fresh).execute(tx.conn()).await?;
                tx.audit(NewEvent {
                    actor: SYSTEM_ACTOR.into(),
                    action: "instance.storage_marked".into(),
                    subject: "instance".into(),
                    details: json!({ "marker": fresh }),
                })
                .await?;
                Ok((fresh, true))
            })
        })
        .await
    }
}
