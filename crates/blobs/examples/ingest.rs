//! Ingests one file into a local blob store and says how long it took:
//! `cargo run --release -p custody-blobs --example ingest -- FILE DIR [--verify]`.
//! The time covers hashing, storing and making the blob durable. With
//! `--verify`, the blob is then read back through the re-hashing reader and
//! that is timed too.

use std::path::PathBuf;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let (file, dir, verify) = match args.as_slice() {
        [file, dir] => (file, dir, false),
        [file, dir, flag] if flag == "--verify" => (file, dir, true),
        _ => {
            eprintln!("usage: ingest FILE DIR [--verify]");
            std::process::exit(2);
        }
    };
    let blobs = custody_blobs::Blobs::local(&PathBuf::from(dir)).unwrap();
    let started = Instant::now();
    let ingested = blobs.ingest(&PathBuf::from(file)).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    let mib = ingested.size as f64 / (1 << 20) as f64;
    println!(
        "ingest {} {} bytes in {seconds:.3} s ({:.0} MiB/s){}",
        ingested.digest,
        ingested.size,
        mib / seconds,
        if ingested.created { "" } else { ", already stored" }
    );
    if verify {
        let started = Instant::now();
        let verdict = blobs.verify(&ingested.digest).await.unwrap();
        let seconds = started.elapsed().as_secs_f64();
        println!("verify {verdict:?} in {seconds:.3} s ({:.0} MiB/s)", mib / seconds);
    }
}
