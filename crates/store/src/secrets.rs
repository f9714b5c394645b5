//! Environment secrets: sealed values whose versions become current only
//! through a grant a second admin approves. Nobody reads a value back: only
//! the deployer opens them, to hand them to a deploy script.

use custody_api::SecretView;
use custody_domain::grant::GrantAction;
use custody_domain::{ProjectName, Timestamp};

use crate::{col, now_ms, Authenticated, GrantView, Result, Store, StoreError};

/// A current secret, sealed, for the deployer.
#[derive(Clone, Debug)]
pub struct SealedSecret {
    /// The variable's name.
    pub name: String,
    /// Its version.
    pub version: i64,
    /// The nonce, base64.
    pub nonce: String,
    /// The ciphertext, base64.
    pub ciphertext: String,
}

/// The slot a secret's value is sealed for: opening it anywhere else fails.
pub fn slot(project: &str, environment: &str, name: &str, version: i64) -> String {
    format!("{project}/{environment}/{name}/{version}")
}

impl Store {
    /// Stores a sealed new version of a secret and asks for the grant that
    /// makes it current. `seal` seals the value for the version's slot.
    pub async fn request_secret(
        &self,
        actor: &Authenticated,
        project: &ProjectName,
        environment: String,
        name: String,
        seal: impl FnOnce(&str) -> (String, String) + Send + 'static,
    ) -> Result<(i64, GrantView)> {
        custody_domain::deploy::check_secret_name(&name)?;
        let (actor, project) = (actor.clone(), project.clone());
        self.write(move |tx| {
            Box::pin(async move {
                crate::lookups::require_admin(tx, &actor).await?;
                let sql = tx.sql("SELECT id FROM projects WHERE name = $1");
                let project_id: i64 = sqlx::query_scalar(&sql)
                    .bind(project.as_str())
                    .fetch_optional(tx.conn())
                    .await?
                    .ok_or_else(|| StoreError::not_found("project", &project))?;
                let sql = tx.sql(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM secrets WHERE project_id = $1 AND environment = $2 \
                     AND name = $3",
                );
                let version: i64 =
                    sqlx::query_scalar(&sql).bind(project_id).bind(&environment).bind(&name).fetch_one(tx.conn()).await?;
                let (nonce, ciphertext) = seal(&slot(project.as_str(), &environment, &name, version));
                let sql = tx.sql(
                    "INSERT INTO secrets (project_id, environment, name, version, nonce, ciphertext, status, set_by, set_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8)",
                );
                sqlx::query(&sql)
                    .bind(project_id)
                    .bind(&environment)
                    .bind(&name)
                    .bind(version)
                    .bind(nonce)
                    .bind(ciphertext)
                    .bind(actor.user_id)
                    .bind(now_ms())
                    .execute(tx.conn())
                    .await?;
                let action = GrantAction::SetSecret { project, environment, name, version };
                let grant = crate::grants::request(tx, &actor, action).await?;
                Ok((version, grant))
            })
        })
        .await
    }

    /// The secrets of an environment: names and versions, never values.
    pub async fn list_secrets(&self, project: &ProjectName, environment: &str) -> Result<Vec<SecretView>> {
        let sql = self.sql(
            "SELECT s.name, s.version, s.status, u.name AS set_by, s.current_since FROM secrets s \
             JOIN projects p ON p.id = s.project_id JOIN users u ON u.id = s.set_by \
             WHERE p.name = $1 AND s.environment = $2 AND s.status IN ('current', 'pending') ORDER BY s.name, s.version",
        );
        let rows = sqlx::query(&sql).bind(project.as_str()).bind(environment).fetch_all(self.readers()).await?;
        let mut list: Vec<SecretView> = Vec::new();
        for row in rows {
            let name: String = col(&row, "name")?;
            if list.last().is_none_or(|s| s.name != name) {
                list.push(SecretView { name, version: None, set_by: None, current_since: None, pending_version: None });
            }
            let entry = list.last_mut().expect("just pushed");
            let version: i64 = col(&row, "version")?;
            if col::<String>(&row, "status")? == "current" {
                entry.version = Some(version);
                entry.set_by = col(&row, "set_by")?;
                entry.current_since = col::<Option<i64>>(&row, "current_since")?.map(Timestamp::from_millis);
            } else {
                entry.pending_version = Some(version);
            }
        }
        Ok(list)
    }

    /// The current secrets of an environment, sealed, for the deployer.
    pub async fn current_secrets(&self, project: &ProjectName, environment: &str) -> Result<Vec<SealedSecret>> {
        let sql = self.sql(
            "SELECT s.name, s.version, s.nonce, s.ciphertext FROM secrets s JOIN projects p ON p.id = s.project_id \
             WHERE p.name = $1 AND s.environment = $2 AND s.status = 'current' ORDER BY s.name",
        );
        let rows = sqlx::query(&sql).bind(project.as_str()).bind(environment).fetch_all(self.readers()).await?;
        rows.iter()
            .map(|r| {
                Ok(SealedSecret {
                    name: col(r, "name")?,
                    version: col(r, "version")?,
                    nonce: col(r, "nonce")?,
                    ciphertext: col(r, "ciphertext")?,
                })
            })
            .collect()
    }
}
