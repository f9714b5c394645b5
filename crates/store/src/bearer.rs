//! Bearer secrets as stored: tokens' and invite codes' secrets are kept as
//! hashes keyed by the event key and bound to their rows.

use custody_formats::ledger_key::EventKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{col, Result};

/// The SHA-256 digest of a presented secret, in hex.
pub(crate) fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The row a bearer secret belongs to, which its stored hash binds.
pub(crate) struct Bound<'a> {
    /// `token` or `invite`.
    pub(crate) kind: &'static str,
    pub(crate) id: &'a str,
    pub(crate) user_id: i64,
    pub(crate) scopes: &'a str,
    pub(crate) expires_at: Option<i64>,
}

/// Marks a hash keyed by the event key and bound to its row.
const KEYED: &str = "k1:";

impl Bound<'_> {
    /// What the secret whose SHA-256 digest is `digest` is stored as.
    pub(crate) fn stored(&self, key: &EventKey, digest: &str) -> String {
        let expires = self.expires_at.map(|t| t.to_string()).unwrap_or_default();
        let bound = format!("{}\n{}\n{}\n{}\n{expires}", self.kind, self.id, self.user_id, self.scopes);
        format!("{KEYED}{}", hex::encode(key.secret_hash(&bound, digest)))
    }

    /// Whether `presented` is the secret of this row, as stored. A hash not
    /// keyed by this instance's event key (written around custody, or moved
    /// from another row) never matches.
    pub(crate) fn matches(&self, key: &EventKey, stored: &str, presented: &str) -> bool {
        stored.as_bytes().ct_eq(self.stored(key, &hash_secret(presented)).as_bytes()).into()
    }
}

/// Re-keys the secret hashes written before they were keyed (plain SHA-256
/// digests), once, when an instance first gets its event key: each becomes
/// the keyed hash of that digest, bound to its row.
pub(crate) async fn rekey_secrets(
    conn: &mut sqlx::AnyConnection,
    dialect: crate::Dialect,
    key: &EventKey,
) -> Result<()> {
    let rows = sqlx::query(&dialect.sql(
        "SELECT 'token' AS kind, id, user_id, scopes, expires_at, secret_hash FROM tokens WHERE secret_hash NOT LIKE 'k1:%' \
         UNION ALL SELECT 'invite', id, user_id, '', expires_at, secret_hash FROM invites WHERE secret_hash NOT LIKE 'k1:%'",
    ))
    .fetch_all(&mut *conn)
    .await?;
    for row in &rows {
        let kind: String = col(row, "kind")?;
        let (id, digest): (String, String) = (col(row, "id")?, col(row, "secret_hash")?);
        let scopes: String = col(row, "scopes")?;
        let bound = Bound {
            kind: if kind == "token" { "token" } else { "invite" },
            id: &id,
            user_id: col(row, "user_id")?,
            scopes: &scopes,
            expires_at: col(row, "expires_at")?,
        };
        let sql = match bound.kind {
            "token" => "UPDATE tokens SET secret_hash = $1 WHERE id = $2",
            _ => "UPDATE invites SET secret_hash = $1 WHERE id = $2",
        };
        sqlx::query(&dialect.sql(sql)).bind(bound.stored(key, &digest)).bind(&id).execute(&mut *conn).await?;
    }
    if !rows.is_empty() {
        tracing::info!(secrets = rows.len(), "keyed the stored hashes of tokens and invites");
    }
    Ok(())
}
