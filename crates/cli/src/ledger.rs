//! `custody audit checkpoint|proof|consistency|verify|watch|export`: the
//! audit ledger from the command line.
//!
//! Everything the server sends is checked here before it is believed:
//! checkpoints against the ledger's verifier key, proofs against the
//! checkpoint's tree head, leaves against the events they hash. `verify`
//! is the one command that reads a database itself (an operator's or
//! auditor's check of a data directory); every other command speaks only
//! the public API.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use clap::Args;
use custody_api::{CheckpointView, ConsistencyView, EventView, HandoverView, InclusionView, Page, ProvenEvent};
use custody_formats::checkpoint::{Checkpoint, KeyChain, NoteVerifier};
use custody_formats::event::EventFields;
use custody_formats::keys::KeyRole;
use custody_formats::merkle::{self, Hash};
use serde_json::json;

use crate::client::Client;
use crate::commands::{say, Output};
use crate::Failure;

/// A verification that found damage: exit 1.
fn damaged(message: impl Into<String>) -> Failure {
    Failure { code: 1, message: message.into(), body: None }
}

fn hash_of(encoded: &str, what: &str) -> Result<Hash, Failure> {
    STANDARD
        .decode(encoded)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Failure::internal(format!("the server sent a malformed {what}")))
}

fn hashes_of(encoded: &[String]) -> Result<Vec<Hash>, Failure> {
    encoded.iter().map(|h| hash_of(h, "proof hash")).collect()
}

fn read_verifier(path: &Path) -> Result<NoteVerifier, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure::input(format!("{}: {e}", path.display())))?;
    NoteVerifier::parse(&text).map_err(|e| Failure::input(format!("{}: {e}", path.display())))
}

/// Opens the signed checkpoint `note` with the ledger key `pinned`, or,
/// when another key signed it, with the key the server's handovers lead to
/// from `pinned`: each handover signed by the key it hands over from and by
/// the key it hands over to. Returns the checkpoint and the keys followed.
async fn open_following(client: &Client, pinned: NoteVerifier, note: &str) -> Result<(Checkpoint, KeyChain), Failure> {
    if let Ok(checkpoint) = pinned.open(note) {
        return Ok((checkpoint, KeyChain::of(pinned)));
    }
    let handovers: Vec<HandoverView> = client.list("/api/v1/audit/handovers").await?;
    let notes: Vec<String> = handovers.into_iter().map(|h| h.note).collect();
    let (chain, _) = KeyChain::follow(pinned, &notes);
    let checkpoint = chain.open(note).map_err(|e| damaged(format!("the server's newest checkpoint: {e}")))?;
    Ok((checkpoint, chain))
}

/// `custody audit checkpoint`: the newest signed checkpoint.
pub async fn checkpoint(client: &Client, key: Option<PathBuf>, out: Output) -> Result<(), Failure> {
    let answer: CheckpointView = client.get("/api/v1/audit/checkpoint").await?;
    if let Some(path) = key {
        open_following(client, read_verifier(&path)?, &answer.note).await?;
    }
    if out.json {
        out.print_json(&answer);
    } else {
        say(answer.note.trim_end());
    }
    Ok(())
}

/// `custody audit proof SEQ`: the inclusion proof of one event, checked
/// against the checkpoint and the event itself.
pub async fn proof(client: &Client, seq: i64, size: Option<u64>, out: Output) -> Result<(), Failure> {
    let path = match size {
        Some(size) => format!("/api/v1/audit/proof/{seq}?size={size}"),
        None => format!("/api/v1/audit/proof/{seq}"),
    };
    let answer: InclusionView = client.get(&path).await?;
    let tree_size = answer.tree_size;
    let leaf = hash_of(&answer.leaf_hash, "leaf hash")?;
    let hashes = hashes_of(&answer.hashes)?;
    let events: Page<EventView> = client.get(&format!("/api/v1/audit/events?after={}&limit=1", seq - 1)).await?;
    let event = events.items.first().filter(|e| e.seq == seq);
    let event = event.ok_or_else(|| damaged(format!("the server lists no event {seq}")))?;
    if leaf_of(event) != leaf {
        return Err(damaged(format!("event {seq} as the server lists it does not hash to its leaf in the ledger")));
    }
    let mut verified = None;
    if let Some(note) = &answer.checkpoint {
        let body = &note[..note.find("\n\n").map_or(note.len(), |end| end + 1)];
        let checkpoint = Checkpoint::parse_body(body).map_err(|e| Failure::internal(e.to_string()))?;
        merkle::verify_inclusion(&leaf, seq as u64 - 1, tree_size, &hashes, &checkpoint.root)
            .map_err(|e| damaged(format!("the inclusion proof of event {seq} does not hold: {e}")))?;
        verified = Some(checkpoint.size);
    }
    if out.json {
        out.print_json(&answer);
    } else {
        match verified {
            Some(size) => say(&format!("event {seq} is included in checkpoint {size} (proof verified)")),
            None => say(&format!("event {seq}: inclusion proof in the tree of {tree_size} events")),
        }
        say(&format!("leaf hash: {}", STANDARD.encode(leaf)));
        for (i, hash) in hashes.iter().enumerate() {
            say(&format!("  {i:>2}  {}", STANDARD.encode(hash)));
        }
    }
    Ok(())
}

/// The leaf hash of an event as the API lists it.
fn leaf_of(event: &EventView) -> Hash {
    EventFields {
        seq: event.seq,
        at_ms: event.at.millis(),
        actor: &event.actor,
        action: &event.action,
        subject: &event.subject,
        details: &event.details,
    }
    .leaf_hash()
}

/// `custody audit consistency OLD NEW`: the proof that the tree of OLD
/// events is a prefix of the tree of NEW events.
pub async fn consistency(client: &Client, old: u64, new: u64, out: Output) -> Result<(), Failure> {
    let answer: ConsistencyView = client.get(&format!("/api/v1/audit/consistency?old={old}&new={new}")).await?;
    let hashes = hashes_of(&answer.hashes)?;
    if out.json {
        out.print_json(&answer);
    } else {
        say(&format!("consistency proof from {old} to {new} events ({} hashes):", hashes.len()));
        for (i, hash) in hashes.iter().enumerate() {
            say(&format!("  {i:>2}  {}", STANDARD.encode(hash)));
        }
    }
    Ok(())
}

/// Where `custody audit verify` finds the database and the ledger key.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The instance's data directory: its SQLite database and its ledger key.
    #[arg(long, env = "CUSTODY_DATA_DIR", value_name = "DIR", default_value = "./custody-data")]
    data_dir: PathBuf,
    /// The database, when it is not the data directory's SQLite file (postgres://…).
    #[arg(long, env = "CUSTODY_DATABASE_URL", value_name = "URL")]
    database_url: Option<String>,
    /// A file holding the ledger's verifier key (`name+keyid+key`); by
    /// default the data directory's ledger key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
}

/// `custody audit verify`: recomputes the tree from the stored events and
/// checks it against the newest genuine signed checkpoint.
pub async fn verify(args: VerifyArgs, out: Output) -> Result<(), Failure> {
    let data_dir = custody_server::instance::DataDir::new(&args.data_dir).with_hsm(crate::config::hsm_from_env()?);
    let url = args.database_url.clone().unwrap_or_else(|| data_dir.database_url());
    if args.database_url.is_none() && !data_dir.root().join("custody.db").exists() {
        return Err(Failure::input(format!(
            "{} holds no custody database; pass --data-dir DIR or --database-url URL",
            args.data_dir.display()
        )));
    }
    // The event key and anchor, where this host has them: they prove every
    // event custody wrote and expose a truncated or restored database.
    let secrets = data_dir.existing_ledger_secrets().map_err(|e| Failure::input(e.to_string()))?;
    let report = match &args.key {
        Some(path) => custody_store::inspect(&url, &read_verifier(path)?, secrets.as_ref()).await,
        None => {
            let key = data_dir
                .load_key(KeyRole::Ledger)
                .map_err(|e| Failure::input(format!("{e}; pass the ledger's verifier key with --key FILE")))?;
            custody_store::inspect_with_key(&url, &key.public(), secrets.as_ref()).await
        }
    };
    let report = report.map_err(|e| match e {
        custody_store::StoreError::Invalid(e) => Failure::input(e.to_string()),
        other => Failure::internal(format!("cannot read the audit log: {other}")),
    })?;
    let intruders = unrecorded_commits(&url, &data_dir).await?;
    if out.json {
        out.print_json(&json!({
            "intact": report.intact() && intruders.is_empty(),
            "report": report,
            "unrecorded_commits": intruders,
        }));
    } else {
        say_inspection(&report, &intruders, &data_dir.keys());
    }
    if !intruders.is_empty() {
        return Err(damaged(format!(
            "a protected branch holds commits custody recorded no merge of: {} found",
            intruders.len()
        )));
    }
    if report.intact() {
        if !out.json {
            say("audit log intact");
        }
        Ok(())
    } else {
        Err(damaged(format!("the audit log was tampered with: {} findings", report.findings.len())))
    }
}

/// What `custody audit verify` checked and found, for people.
fn say_inspection(report: &custody_store::LedgerReport, intruders: &[String], keys: &Path) {
    match &report.checkpoint {
        Some(c) => say(&format!(
            "checked {} events and a tree of {} against checkpoint {} signed {}",
            report.events,
            report.tree_size,
            c.size,
            custody_domain::Timestamp::from_millis(c.at_ms)
        )),
        None => say(&format!(
            "checked {} events against the stored tree of {}; no genuine signed checkpoint exists yet, \
             so a rewrite of the whole ledger would go unseen here (an external watcher still sees it)",
            report.events, report.tree_size
        )),
    }
    if !report.tags_checked {
        say(&format!(
            "the event key is not in {}, so events' tags and the anchored tree head were not checked: run this \
             on the instance's host to see events written around custody and a restored older copy",
            keys.display()
        ));
    }
    for finding in &report.findings {
        say(&format!("  {}", finding.describe()));
    }
    for intruder in intruders {
        say(&format!("  {intruder}"));
    }
}

/// Commits on a protected branch that sit on top of a recorded merge
/// without being one (the branch moved around custody), as sentences; none
/// when this host has no repositories (verifying a copied database).
async fn unrecorded_commits(url: &str, data_dir: &custody_server::instance::DataDir) -> Result<Vec<String>, Failure> {
    let repositories = custody_git::Repositories::new(data_dir.repositories());
    if !data_dir.repositories().is_dir() {
        return Ok(Vec::new());
    }
    let mainlines = custody_store::recorded_mainlines(url)
        .await
        .map_err(|e| Failure::internal(format!("cannot read the recorded merges: {e}")))?;
    let mut found = Vec::new();
    for mainline in mainlines {
        let Ok(project) = custody_domain::ProjectName::parse(&mainline.project) else { continue };
        let repository = repositories.path(&project);
        for branch in &mainline.branches {
            let reference = format!("refs/heads/{branch}");
            let Ok(Some(tip)) = custody_git::change::read_ref(&repository, &reference) else { continue };
            let chain = custody_git::change::first_parents(&repository, None, &tip)
                .map_err(|e| Failure::internal(format!("reading {reference} of {project}: {e}")))?;
            if let Some(intruder) = custody_app::releases::unrecorded_on_mainline(&chain, &mainline.merges) {
                found.push(format!(
                    "{project} {reference}: commit {intruder} sits on a merge custody recorded and custody recorded \
                     no merge of it (the branch was moved around custody)"
                ));
            }
        }
    }
    Ok(found)
}

/// What `custody audit watch` keeps between runs.
#[derive(serde::Serialize, serde::Deserialize)]
struct WatchState {
    /// The pinned verifier key.
    verifier_key: String,
    /// The last checkpoint seen and proved consistent, as signed.
    note: String,
    size: u64,
    root: String,
}

/// What `custody audit watch --json` prints.
#[derive(serde::Serialize)]
struct WatchReport {
    size: u64,
    root: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_size: Option<u64>,
    pinned_key: bool,
    /// The `instance.restored` event this run accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted_restore: Option<i64>,
    /// The ledger keys this run followed handovers to, oldest first; the
    /// last is pinned now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    followed_keys: Vec<String>,
}

/// `custody audit watch --state FILE`: fetches the newest checkpoint,
/// checks its signature, proves it consistent with the one in FILE, and
/// saves it there.
pub async fn watch(
    client: &Client,
    state_file: &Path,
    key: Option<PathBuf>,
    accept_restore: bool,
    out: Output,
) -> Result<(), Failure> {
    let saved = read_watch_state(state_file)?;
    let answer: CheckpointView = client.get("/api/v1/audit/checkpoint").await?;
    let (pinned, pinned_now) = watch_verifier(key.as_deref(), saved.as_ref(), &answer)?;
    let (latest, chain) = open_following(client, pinned.clone(), &answer.note).await?;
    let verifier = chain.current().clone();
    // The handovers after the pinned key, each a signed tree head the
    // newest checkpoint must extend.
    let followed: Vec<_> = chain.handovers_after(&pinned).collect();
    let mut accepted = None;
    if let Some(saved) = &saved {
        let mut consistent = prove_consistent(client, saved, &latest, state_file).await;
        for handover in &followed {
            if consistent.is_err() {
                break;
            }
            consistent = prove_extends(client, &handover.checkpoint, &latest).await;
        }
        if let Err(inconsistent) = consistent {
            let Some(restore) = recorded_restore(client, saved, &latest, accept_restore).await? else {
                return Err(inconsistent);
            };
            if !accept_restore {
                return Err(damaged(format!(
                    "{}. The server records a restore (event {}) from a backup of {} events taken {}: the {} events \
                     after it that this watcher saw are gone. If that restore was expected, run again with \
                     --accept-restore",
                    inconsistent.message,
                    restore.0,
                    restore.1.backup.tree_size,
                    restore.1.backup.taken_at,
                    saved.size - restore.1.backup.tree_size
                )));
            }
            accepted = Some(restore);
        }
    }
    let state = WatchState {
        verifier_key: verifier.to_vkey(),
        note: answer.note.clone(),
        size: latest.size,
        root: STANDARD.encode(latest.root),
    };
    save_watch_state(state_file, &state)?;
    if out.json {
        out.print_json(&WatchReport {
            size: state.size,
            root: state.root,
            previous_size: saved.as_ref().map(|saved| saved.size),
            pinned_key: pinned_now,
            accepted_restore: accepted.as_ref().map(|(seq, _)| *seq),
            followed_keys: followed.iter().map(|h| h.to.to_vkey()).collect(),
        });
    } else if let (Some((seq, details)), Some(saved)) = (&accepted, &saved) {
        say(&format!(
            "accepted the restore recorded as event {seq}: the log continues from a backup of {} events taken {}; \
             events {} to {} that this watcher saw are lost. Checkpoint {} saved",
            details.backup.tree_size,
            details.backup.taken_at,
            details.backup.tree_size + 1,
            saved.size,
            latest.size
        ));
    } else {
        for handover in &followed {
            say(&format!(
                "followed the ledger key's handover at {} events from {} to {}, both of which signed it; {} is \
                 pinned now",
                handover.checkpoint.size,
                handover.from.to_vkey(),
                handover.to.to_vkey(),
                handover.to.to_vkey()
            ));
        }
        if pinned_now {
            say(&format!(
                "pinned the ledger key {} as the server offered it; check it against one you trust, or pass --key",
                state.verifier_key
            ));
        }
        match &saved {
            Some(saved) => say(&format!("checkpoint {} is consistent with checkpoint {}", latest.size, saved.size)),
            None => say(&format!("saved checkpoint {} in {}", latest.size, state_file.display())),
        }
    }
    Ok(())
}

/// The state kept in FILE, if there is one yet.
fn read_watch_state(state_file: &Path) -> Result<Option<WatchState>, Failure> {
    match std::fs::read_to_string(state_file) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).map_err(|e| {
            Failure::input(format!("{}: not a watch state file ({e}); remove it to start over", state_file.display()))
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::input(format!("{}: {e}", state_file.display()))),
    }
}

/// The key checkpoints are checked with: the one given, else the one pinned
/// in the state, else the server's, pinned now (the `true`).
fn watch_verifier(
    key: Option<&Path>,
    saved: Option<&WatchState>,
    answer: &CheckpointView,
) -> Result<(NoteVerifier, bool), Failure> {
    match (key, saved) {
        (Some(path), _) => Ok((read_verifier(path)?, false)),
        (None, Some(saved)) => {
            let verifier = NoteVerifier::parse(&saved.verifier_key).map_err(|e| Failure::input(e.to_string()))?;
            Ok((verifier, false))
        }
        (None, None) => {
            let verifier = NoteVerifier::parse(&answer.verifier_key)
                .map_err(|e| Failure::internal(format!("the server's verifier key: {e}")))?;
            Ok((verifier, true))
        }
    }
}

/// Proves the newest checkpoint an extension of the saved one.
async fn prove_consistent(
    client: &Client,
    saved: &WatchState,
    latest: &Checkpoint,
    state_file: &Path,
) -> Result<(), Failure> {
    let old_root: Hash = STANDARD
        .decode(&saved.root)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Failure::input(format!("{}: the saved root is not a hash", state_file.display())))?;
    if latest.size < saved.size {
        return Err(damaged(format!(
            "history was rewritten: the log shrank from {} to {} events since the checkpoint in {}",
            saved.size,
            latest.size,
            state_file.display()
        )));
    }
    let hashes = if latest.size == saved.size {
        Vec::new()
    } else {
        let proof: ConsistencyView =
            client.get(&format!("/api/v1/audit/consistency?old={}&new={}", saved.size, latest.size)).await?;
        hashes_of(&proof.hashes)?
    };
    merkle::verify_consistency(saved.size, latest.size, &old_root, &latest.root, &hashes).map_err(|e| {
        damaged(format!(
            "history was rewritten: checkpoint {} is not consistent with checkpoint {} saved in {} ({e})",
            latest.size,
            saved.size,
            state_file.display()
        ))
    })
}

/// Proves the newest checkpoint an extension of a handover's tree head.
async fn prove_extends(client: &Client, old: &Checkpoint, latest: &Checkpoint) -> Result<(), Failure> {
    if old.size > latest.size {
        return Err(damaged(format!(
            "history was rewritten: the ledger key's handover covers {} events and the newest checkpoint {}",
            old.size, latest.size
        )));
    }
    let hashes = if old.size == latest.size {
        Vec::new()
    } else {
        let proof: ConsistencyView =
            client.get(&format!("/api/v1/audit/consistency?old={}&new={}", old.size, latest.size)).await?;
        hashes_of(&proof.hashes)?
    };
    merkle::verify_consistency(old.size, latest.size, &old.root, &latest.root, &hashes).map_err(|e| {
        damaged(format!(
            "history was rewritten: checkpoint {} is not consistent with the ledger key's handover at {} events ({e})",
            latest.size, old.size
        ))
    })
}

/// The restore the server records that explains why the newest checkpoint
/// does not extend the saved one: an `instance.restored` event from a
/// backup older than the saved checkpoint, proved included in the newest
/// checkpoint, whose backup's tree head the newest checkpoint is proved to
/// extend. `None` when the server records no such restore; an error when it
/// records one that does not prove.
async fn recorded_restore(
    client: &Client,
    saved: &WatchState,
    latest: &Checkpoint,
    accept_restore: bool,
) -> Result<Option<(i64, custody_api::RestoredDetails)>, Failure> {
    // The log's events need a token that reads them (an auditor's); a
    // watcher without one still sees the inconsistency itself.
    let events: Vec<EventView> = match client.list("/api/v1/audit/events?action=instance.restored").await {
        Ok(events) => events,
        Err(_) if !accept_restore => return Ok(None),
        Err(failure) => {
            return Err(Failure {
                message: format!("{}; accepting a restore reads the audit log: log in as an auditor", failure.message),
                ..failure
            })
        }
    };
    let Some((event, details)) = events
        .into_iter()
        .rev()
        .filter_map(|e| serde_json::from_value::<custody_api::RestoredDetails>(e.details.clone()).ok().map(|d| (e, d)))
        .find(|(e, d)| d.backup.tree_size < saved.size && e.seq as u64 > d.backup.tree_size)
    else {
        return Ok(None);
    };
    if event.seq as u64 > latest.size {
        return Err(damaged(format!(
            "the server records a restore (event {}), and its newest checkpoint ({} events) does not cover it yet: \
             run again once it does",
            event.seq, latest.size
        )));
    }
    let proof: InclusionView = client.get(&format!("/api/v1/audit/proof/{}?size={}", event.seq, latest.size)).await?;
    merkle::verify_inclusion(
        &leaf_of(&event),
        event.seq as u64 - 1,
        latest.size,
        &hashes_of(&proof.hashes)?,
        &latest.root,
    )
    .map_err(|e| damaged(format!("the restore event {} is not in the newest checkpoint: {e}", event.seq)))?;
    let backup_root: Hash = hex::decode(&details.backup.tree_root)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| damaged(format!("the restore event {} names no tree head", event.seq)))?;
    let old = details.backup.tree_size;
    if old == 0 {
        return Err(damaged(format!(
            "the restore event {} names a backup of no events: nothing ties it to the history this watcher saw; \
             if the instance was rebuilt on purpose, start the watch over with a key obtained out of band",
            event.seq
        )));
    }
    let hashes = if old == 0 {
        Vec::new()
    } else {
        let proof: ConsistencyView =
            client.get(&format!("/api/v1/audit/consistency?old={old}&new={}", latest.size)).await?;
        hashes_of(&proof.hashes)?
    };
    if old > 0 {
        merkle::verify_consistency(old, latest.size, &backup_root, &latest.root, &hashes).map_err(|e| {
            damaged(format!(
                "the newest checkpoint does not extend the backup the restore event {} names: {e}",
                event.seq
            ))
        })?;
    }
    Ok(Some((event.seq, details)))
}

/// Replaces FILE with `state`, whole or not at all.
fn save_watch_state(state_file: &Path, state: &WatchState) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(state).expect("the state serialises");
    let temporary = state_file.with_extension("tmp");
    std::fs::write(&temporary, text + "\n")
        .and_then(|()| std::fs::rename(&temporary, state_file))
        .map_err(|e| Failure::input(format!("cannot save {}: {e}", state_file.display())))
}

/// `custody audit export`: one JSON line per event, each with its inclusion
/// proof and the checkpoint it proves against.
pub async fn export(client: &Client, since: Option<String>, until: Option<String>) -> Result<(), Failure> {
    let checkpoint: CheckpointView = client.get("/api/v1/audit/checkpoint").await?;
    let mut path = format!("/api/v1/audit/export?size={}", checkpoint.size);
    if let Some(since) = since {
        path.push_str(&format!("&since={}", crate::commands::point_in_time(&since)?));
    }
    if let Some(until) = until {
        path.push_str(&format!("&until={}", crate::commands::point_in_time(&until)?));
    }
    for event in client.list::<ProvenEvent>(&path).await? {
        say(&export_line(&event, &checkpoint.note).to_string());
    }
    Ok(())
}

/// One line of the export: the event as it is hashed, its inclusion proof,
/// and the checkpoint the proof leads to.
fn export_line(event: &ProvenEvent, checkpoint: &str) -> serde_json::Value {
    json!({
        "event": {
            "seq": event.seq, "at": event.at, "at_ms": event.at_ms, "actor": &event.actor,
            "action": &event.action, "subject": &event.subject, "details": &event.details,
        },
        "leaf_hash": &event.leaf_hash,
        "inclusion": { "tree_size": event.tree_size, "leaf_index": event.seq - 1, "hashes": &event.hashes },
        "checkpoint": checkpoint,
    })
}
