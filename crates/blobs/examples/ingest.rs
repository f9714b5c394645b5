//! Ingests one file into a local blob store and says how long it took:
//! `cargo run --release -p custody-blobs --example ingest -- FILE DIR`.
//! The time covers hashing, storing and making the blob durable.

use std::path::PathBuf;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(file), Some(dir)) = (args.next(), args.next()) else {
        eprintln!("usage: ingest FILE DIR");
        std::process::exit(2);
    };
    let blobs = custody_blobs::Blobs::local(&PathBuf::from(dir)).unwrap();
    let started = Instant::now();
    let ingested = blobs.ingest(&PathBuf::from(file)).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} {} bytes in {seconds:.3} s ({:.0} MiB/s){}",
        ingested.digest,
        ingested.size,
        ingested.size as f64 / seconds / (1 << 20) as f64,
        if ingested.created { "" } else { ", already stored" }
    );
}
