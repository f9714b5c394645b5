//! `custody key`: the instance's service keys. Rotating and revoking are
//! grants a second admin approves; escrow runs on the instance's host.

use std::path::PathBuf;

use clap::Subcommand;
use custody_api::RevokeKeyRequest;
use custody_formats::trust::TrustRoot;
use custody_store::GrantView;

use crate::client::Client;
use crate::commands::{grant_outcome, Output};
use crate::config::InstanceArgs;
use crate::Failure;

/// The instance's service keys.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Every key of the trust root: role, id, validity, revocation.
    List,
    /// Replace the builder, gate, deployer or ledger key with a new one (a
    /// grant). What the old key signed before still verifies; the old
    /// ledger key hands the log over to the new one in a checkpoint both
    /// sign, which `custody audit watch` follows.
    Rotate {
        /// builder, gate, deployer or ledger.
        role: String,
    },
    /// Revoke a retired key from a point in time on (a grant): evidence it
    /// signed from then on no longer verifies, and says why.
    Revoke {
        /// The key's id (64 hex characters, as `custody key list` shows it).
        key_id: String,
        /// Why it is revoked.
        #[arg(long)]
        reason: String,
        /// From when it is not trusted: RFC 3339, or a duration ago such as 2h [default: now].
        #[arg(long)]
        since: Option<String>,
    },
    /// Seal the instance's keys under a passphrase (CUSTODY_ESCROW_PASSPHRASE
    /// or standard input) into a new file, kept apart from backups; the
    /// ledger records every export. Runs on the instance's host.
    Escrow {
        #[command(flatten)]
        instance: InstanceArgs,
        /// The new file to write.
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
    },
}

pub async fn key(server: Option<String>, command: KeyCommand, out: Output) -> Result<(), Failure> {
    match command {
        KeyCommand::Escrow { instance, to } => crate::backup::escrow(instance, to, out).await,
        KeyCommand::List => {
            let trust: TrustRoot = Client::from_env(server)?.get("/api/v1/trust").await?;
            out.list(
                &trust.keys,
                |k| {
                    let until = k.not_after.as_deref().unwrap_or("now");
                    let revoked = k
                        .revoked
                        .as_ref()
                        .map(|r| format!("  REVOKED since {}: {}", r.since, crate::commands::one_line(&r.reason)))
                        .unwrap_or_default();
                    format!("{:<9} {}  {} to {until}{revoked}", k.role.as_str(), k.key_id, k.not_before)
                },
                "no keys",
            );
            Ok(())
        }
        KeyCommand::Rotate { role } => {
            let client = Client::from_env(server)?;
            let grant: GrantView = client.post(&format!("/api/v1/keys/{}/rotate", encode_segment(&role)?)).await?;
            out.show(&grant, grant_outcome);
            Ok(())
        }
        KeyCommand::Revoke { key_id, reason, since } => {
            let since = since.map(|s| crate::commands::point_in_time(&s)).transpose()?;
            let client = Client::from_env(server)?;
            let request = RevokeKeyRequest { since, reason };
            let grant: GrantView =
                client.submit(&format!("/api/v1/keys/{}/revoke", encode_segment(&key_id)?), &request).await?;
            out.show(&grant, grant_outcome);
            Ok(())
        }
    }
}

/// A path segment as given, refusing what would change the path.
fn encode_segment(value: &str) -> Result<&str, Failure> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(Failure::input(format!("{value:?}: expected a role name or a key id (letters and digits)")));
    }
    Ok(value)
}
