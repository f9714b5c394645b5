//! Benchmarks of the audit ledger, each against a reference measured in the
//! same run. Not a test; run by `bench/ledger.sh`.
//!
//! ```text
//! ledger_bench append CLIENTS SECONDS
//!     durable appends through the writer from CLIENTS concurrent clients on
//!     SQLite, with the checkpointer signing every 250 ms; reference: plain
//!     batched INSERTs of the same rows into a bare SQLite table.
//! ledger_bench big EVENTS DIR
//!     fills a SQLite log of EVENTS events in DIR, checkpoints it, writes the
//!     verifier key to DIR/ledger.vkey; then times inclusion proofs
//!     (reference: reading one event by its primary key on a connection of
//!     its own) and a full
//!     inspection (reference: reading every row it reads, without hashing).
//!     A log left in DIR by an earlier run is used again.
//! ```
//!
//! Prints one JSON object per measurement on standard output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use custody_domain::audit::NewEvent;
use custody_formats::checkpoint::NoteVerifier;
use custody_formats::keys::{KeyRole, ServiceKey};
use custody_store::Store;
use serde_json::json;
use sqlx::{Connection as _, Executor as _};

const ORIGIN: &str = "bench";

fn event(i: u64) -> NewEvent {
    NewEvent {
        actor: format!("user{}", i % 97),
        action: "bench.append".into(),
        subject: format!("thing:{i}"),
        details: json!({ "i": i, "reason": "a typical detail of moderate length", "scope": ["read", "write"] }),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn append(clients: usize, seconds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("custody.db").display());
    let store = Store::open(&url, custody_store::testing::secrets_for(&url)).await.unwrap();
    let key = Arc::new(ServiceKey::generate(KeyRole::Ledger));

    // The checkpointer, recording when each checkpoint committed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpointer = {
        let (store, key, stop) = (store.clone(), key.clone(), stop.clone());
        tokio::spawn(async move {
            let mut signed: Vec<(u64, Instant)> = Vec::new();
            let mut ticks = tokio::time::interval(Duration::from_millis(250));
            loop {
                ticks.tick().await;
                let done = stop.load(std::sync::atomic::Ordering::Relaxed);
                if let Some(c) = store.issue_checkpoint(ORIGIN, key.clone()).await.unwrap() {
                    signed.push((c.size, Instant::now()));
                }
                if done {
                    return signed;
                }
            }
        })
    };

    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut committed: Vec<(i64, Instant)> = Vec::new();
            let mut i = client as u64;
            while Instant::now() < deadline {
                let e = event(i);
                let seq = store.write(move |tx| Box::pin(async move { tx.audit(e).await })).await.unwrap();
                committed.push((seq, Instant::now()));
                i += clients as u64;
            }
            committed
        }));
    }
    let mut committed = Vec::new();
    for task in tasks {
        committed.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let signed = checkpointer.await.unwrap();
    let events = committed.len();

    let mut latencies: Vec<Duration> = committed
        .iter()
        .filter_map(|(seq, at)| {
            let (_, signed_at) = signed.iter().find(|(size, _)| *size >= *seq as u64)?;
            Some(signed_at.saturating_duration_since(*at))
        })
        .collect();
    latencies.sort_unstable();
    store.close().await;

    let plain = plain_batched_inserts(clients.max(1), seconds).await;
    println!(
        "{}",
        json!({
            "measure": "durable appends on SQLite",
            "clients": clients,
            "seconds": elapsed,
            "events": events,
            "events_per_s": events as f64 / elapsed,
            "checkpoints": signed.len(),
            "commit_to_checkpoint_ms": {
                "p50": percentile(&latencies, 0.50), "p99": percentile(&latencies, 0.99),
                "max": percentile(&latencies, 1.0), "measured": latencies.len(),
            },
            "reference_plain_batched_insert_rows_per_s": plain,
            "ratio_to_reference": events as f64 / elapsed / plain,
        })
    );
}

/// The same rows inserted into a bare table (no triggers, no ledger) with
/// the same durability, `batch` rows per transaction, on one connection.
async fn plain_batched_inserts(batch: usize, seconds: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("plain.db").display());
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;").await.unwrap();
    conn.execute(
        "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL, \
         action TEXT NOT NULL, subject TEXT NOT NULL, details TEXT NOT NULL)",
    )
    .await
    .unwrap();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut seq = 0u64;
    while Instant::now() < deadline {
        conn.execute("BEGIN IMMEDIATE").await.unwrap();
        for _ in 0..batch {
            seq += 1;
            let e = event(seq);
            sqlx::query(
                "INSERT INTO audit_events (seq, at, actor, action, subject, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(seq as i64)
            .bind(custody_store::now_ms())
            .bind(e.actor)
            .bind(e.action)
            .bind(e.subject)
            .bind(e.details.to_string())
            .execute(&mut conn)
            .await
            .unwrap();
        }
        conn.execute("COMMIT").await.unwrap();
    }
    seq as f64 / start.elapsed().as_secs_f64()
}

async fn big(events: u64, dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("custody.db");
    let url = format!("sqlite://{}", path.display());
    let key_file = dir.join("ledger.pem");
    // A log filled by an earlier run is used again (delete DIR to refill).
    let reuse = key_file.exists() && path.exists();
    let secrets = custody_store::LedgerSecrets {
        key: custody_formats::ledger_key::EventKey::load_or_create(&dir.join("event.key")).unwrap(),
        anchor: custody_formats::ledger_key::AnchorFile::new(dir.join("ledger.anchor")),
    };
    // Opening verifies the whole log (every tag and chain, the anchor): on a
    // reused log, that is the start-up check of `events` events.
    let opening = Instant::now();
    let store = Store::open(&url, secrets).await.unwrap();
    if reuse {
        let seconds = opening.elapsed().as_secs_f64();
        let events = store.ledger_size().await.unwrap();
        println!(
            "{}",
            json!({ "measure": "open: verify the whole log at start-up", "events": events, "seconds": seconds })
        );
    }
    let key = if reuse {
        Arc::new(ServiceKey::load(KeyRole::Ledger, &key_file).unwrap())
    } else {
        let key = ServiceKey::generate(KeyRole::Ledger);
        key.save(&key_file).unwrap();
        Arc::new(key)
    };

    let fill = Instant::now();
    const PER_OP: u64 = 1000;
    let mut next = store.ledger_size().await.unwrap();
    while next < events {
        let n = PER_OP.min(events - next);
        let first = next;
        store
            .write(move |tx| {
                Box::pin(async move {
                    for i in first..first + n {
                        tx.audit(event(i)).await?;
                    }
                    Ok(())
                })
            })
            .await
            .unwrap();
        next += n;
    }
    store.issue_checkpoint(ORIGIN, key.clone()).await.unwrap();
    let checkpoint = store.latest_checkpoint().await.unwrap().unwrap();
    let filled = fill.elapsed().as_secs_f64();
    let verifier = NoteVerifier::new(ORIGIN, &key.public()).unwrap();
    std::fs::write(dir.join("ledger.vkey"), verifier.to_vkey() + "\n").unwrap();
    if !reuse {
        println!(
            "{}",
            json!({ "measure": "fill", "events": events, "seconds": filled, "events_per_s": events as f64 / filled })
        );
    }

    // Inclusion proofs of random events against the checkpoint, and the
    // reference: reading one event by its sequence number.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut random_seq = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % events) as i64 + 1
    };
    let (mut proofs, mut lookups) = (Vec::new(), Vec::new());
    let mut reader = sqlx::AnyConnection::connect(&url).await.unwrap();
    for round in 0..3000 {
        let seq = random_seq();
        let t = Instant::now();
        let proof = store.inclusion_proofs(&[seq], checkpoint.size).await.unwrap();
        let took = t.elapsed();
        assert!(!proof[0].1.is_empty());
        let t = Instant::now();
        let row = sqlx::query("SELECT seq, at, actor, action, subject, details FROM audit_events WHERE seq = ?1")
            .bind(seq)
            .fetch_one(&mut reader)
            .await
            .unwrap();
        let looked = t.elapsed();
        assert_eq!(sqlx::Row::get::<i64, _>(&row, 0), seq);
        if round >= 500 {
            proofs.push(took);
            lookups.push(looked);
        }
    }
    proofs.sort_unstable();
    lookups.sort_unstable();
    println!(
        "{}",
        json!({
            "measure": "inclusion proof",
            "log_events": checkpoint.size,
            "proof_ms": { "p50": percentile(&proofs, 0.5), "p99": percentile(&proofs, 0.99) },
            "reference_event_by_seq_ms": { "p50": percentile(&lookups, 0.5), "p99": percentile(&lookups, 0.99) },
            "ratio_p50": percentile(&proofs, 0.5) / percentile(&lookups, 0.5),
        })
    );
    store.close().await;

    // A full inspection, and the reference: reading the same rows.
    let t = Instant::now();
    let report = custody_store::inspect(&url, &verifier, None).await.unwrap();
    let inspected = t.elapsed().as_secs_f64();
    assert!(report.intact(), "{:?}", &report.findings[..report.findings.len().min(5)]);
    let t = Instant::now();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let mut rows = 0usize;
    for sql in [
        "SELECT seq, at, actor, action, subject, details FROM audit_events ORDER BY seq",
        "SELECT level, idx, hash FROM ledger_nodes ORDER BY level, idx",
    ] {
        use futures_util::TryStreamExt as _;
        let mut stream = sqlx::query(sql).fetch(&mut conn);
        while stream.try_next().await.unwrap().is_some() {
            rows += 1;
        }
    }
    let scanned = t.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "measure": "full inspection (audit verify)",
            "events": report.events,
            "seconds": inspected,
            "reference_read_same_rows_seconds": scanned,
            "rows_read": rows,
            "ratio": inspected / scanned,
        })
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("append") => append(number(1, 64) as usize, number(2, 10)).await,
        Some("big") => {
            let dir = args.get(2).map(std::path::PathBuf::from).unwrap_or_else(|| "ledger-bench".into());
            big(number(1, 1_000_000), &dir).await
        }
        _ => {
            eprintln!("usage: ledger_bench append CLIENTS SECONDS | ledger_bench big EVENTS DIR");
            std::process::exit(2);
        }
    }
}
