//! The quick start from the README: a pool of worker processes running
//! async tasks, with typed results and errors.
//!
//! `cargo run --release -p multiloop --example quickstart`

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A task's own error type travels back to the caller typed.
#[derive(Debug, Serialize, Deserialize)]
enum CheckError {
    /// The host name was empty.
    EmptyName,
}

/// Pretends to check a host: waits like a network call would, then answers.
#[multiloop::task]
async fn check(host: String, latency_ms: u64) -> Result<usize, CheckError> {
    if host.is_empty() {
        return Err(CheckError::EmptyName);
    }
    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    Ok(host.len())
}

/// CPU-bound work: runs on all cores at once, one worker process per core.
#[multiloop::task]
async fn hash_rounds(seed: u64, rounds: u32) -> u64 {
    let mut h = seed;
    for _ in 0..rounds {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
    }
    h
}

#[tokio::main]
async fn main() -> Result<(), multiloop::Error> {
    let pool = multiloop::Pool::builder().concurrency(256).build().await?;

    // 5,000 "network calls" of 20 ms each, 256 at a time per worker.
    let start = Instant::now();
    let hosts = (0..5_000).map(|i| (format!("host-{i}.example"), 20));
    let sizes = pool.starmap(check, hosts).await?;
    println!("checked {} hosts in {:?}", sizes.len(), start.elapsed());

    // A typed error.
    if let Err(err) = pool.apply(check, (String::new(), 1)).await {
        println!(
            "empty host: {err} (typed: {:?})",
            err.task_error::<CheckError>()
        );
    }

    // CPU-bound work folded in the workers.
    let start = Instant::now();
    let sum = pool
        .map_reduce(
            hash_rounds,
            (0..2_000).map(|s| (s, 200_000)),
            multiloop::reduce::Count::<u64>::new(),
        )
        .await?;
    println!("hashed {} seeds in {:?}", sum.value, start.elapsed());

    pool.close().await
}
