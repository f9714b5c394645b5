//! `custody backup`, `custody restore` and `custody key escrow`: operations
//! on an instance's host, reading its data directory directly.

use std::path::PathBuf;

use clap::Args;
use custody_server::backup::{self, BackupError, RestoreOptions, Source};
use custody_server::instance::{self, DataDir};

use crate::commands::Output;
use crate::config::InstanceArgs;
use crate::Failure;

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    instance: InstanceArgs,
    /// The new (or empty) directory to write the backup into.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup directory (`custody backup --to DIR`).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// The data directory to restore into: new, or with --replace the instance's own.
    #[arg(long, env = "CUSTODY_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// An empty PostgreSQL database to restore a PostgreSQL backup into.
    #[arg(long, env = "CUSTODY_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// The artifact store to restore into (`s3://BUCKET/PREFIX`); the data directory's blobs/ by default.
    #[arg(long, env = "CUSTODY_BLOB_STORE", value_name = "URL")]
    blob_store: Option<String>,
    /// The escrow file holding the instance's keys (`custody key escrow`);
    /// its passphrase is read from CUSTODY_ESCROW_PASSPHRASE or standard input.
    #[arg(long, value_name = "FILE")]
    keys: PathBuf,
    /// Replace the instance in the data directory: what it recorded after
    /// the backup is lost, and the restore records how much.
    #[arg(long)]
    replace: bool,
}

fn failure(error: BackupError) -> Failure {
    match error {
        BackupError::Input(message) => Failure::input(message),
        BackupError::Failed(message) => Failure { code: 1, message, body: None },
    }
}

/// The escrow's passphrase: CUSTODY_ESCROW_PASSPHRASE, else a line of standard input.
fn passphrase(out: &Output) -> Result<String, Failure> {
    if let Ok(given) = std::env::var("CUSTODY_ESCROW_PASSPHRASE") {
        if !given.is_empty() {
            return Ok(given);
        }
    }
    if !out.json {
        eprintln!("escrow passphrase (at least 12 characters), then Enter:");
    }
    crate::commands::read_line("passphrase")
}

pub async fn backup(args: BackupArgs, out: Output) -> Result<(), Failure> {
    let instance = args.instance.resolve()?;
    let blobs = match &instance.blob_store {
        Some(url) => custody_blobs::Blobs::from_url(url, &instance.data_dir.blobs()),
        None => custody_blobs::Blobs::local(&instance.data_dir.blobs()),
    }
    .map_err(|e| Failure::input(format!("the blob store: {e}")))?;
    let source = Source {
        data_dir: &instance.data_dir,
        database_url: &instance.database_url,
        blobs: &blobs,
        blobs_local: instance.blob_store.as_deref().is_none_or(|url| !url.starts_with("s3://")),
    };
    let manifest = backup::backup(source, &args.to).await.map_err(failure)?;
    out.show(&manifest, |m| {
        format!(
            "backed up {} into {}: ledger of {} events (root {}), {} repositories, {} blobs {}\nno key is in it: keep \
             an escrow of the keys apart (custody key escrow --to FILE)",
            m.instance,
            args.to.display(),
            m.tree.size,
            hex::encode(m.tree.root),
            m.repositories.len(),
            m.blobs.len(),
            if m.blobs_copied { "copied".to_owned() } else { format!("listed (they stay in {})", m.blob_store) }
        )
    });
    Ok(())
}

pub async fn restore(args: RestoreArgs, out: Output) -> Result<(), Failure> {
    let escrow = std::fs::read_to_string(&args.keys)
        .map_err(|e| Failure::input(format!("{}: {e}; pass the escrow file with --keys", args.keys.display())))?;
    let passphrase = passphrase(&out)?;
    let data_dir = DataDir::new(&args.data_dir).with_hsm(crate::config::hsm_from_env()?);
    let options = RestoreOptions {
        from: &args.from,
        data_dir: &data_dir,
        database_url: args.database_url.as_deref(),
        blob_store: args.blob_store.as_deref(),
        escrow: (&escrow, &passphrase),
        replace: args.replace,
    };
    let restored = backup::restore(options).await.map_err(failure)?;
    out.show(&restored, |r| {
        let mut lines = vec![format!(
            "restored {} into {}: ledger of {} events proved, {} blobs re-hashed, {} refs checked; recorded as event {}",
            args.from.display(),
            data_dir.root().display(),
            r.tree.size,
            r.blobs_checked,
            r.refs_checked,
            r.event
        )];
        if let Some(replaced) = &r.replaced {
            lines.push(format!(
                "replaced an instance whose ledger held {} events: {} events recorded after the backup are lost, and \
                 watchers see the restore (custody audit watch --accept-restore)",
                replaced.size, r.lost_events
            ));
        }
        for problem in &r.problems {
            lines.push(format!("  {problem}"));
        }
        lines.join("\n")
    });
    if restored.problems.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            message: format!("{} things disagree after the restore", restored.problems.len()),
            body: None,
        })
    }
}

/// `custody key escrow`: seals this host's keys of the instance into `to`.
pub async fn escrow(instance: InstanceArgs, to: PathBuf, out: Output) -> Result<(), Failure> {
    let instance = instance.resolve()?;
    let passphrase = passphrase(&out)?;
    let opened = instance::open(&instance.data_dir, instance.database_given.clone())
        .await
        .map_err(|e| Failure::input(e.to_string()))?;
    let host = crate::serve::hostname();
    let escrowed = backup::escrow_keys(&instance.data_dir, &opened.store, &opened.name, &host, &passphrase, &to).await;
    opened.store.close().await;
    let escrowed = escrowed.map_err(failure)?;
    out.show(&escrowed, |e| {
        format!(
            "sealed {} into {} (sha256 {}); the ledger records the export as event {}\nkeep it and its \
             passphrase apart from backups",
            e.files.join(", "),
            e.file.display(),
            e.sha256,
            e.event
        )
    });
    Ok(())
}
