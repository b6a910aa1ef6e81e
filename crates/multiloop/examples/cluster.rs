//! The same program on one machine or across many (the quick start's
//! checks): without an address its calls run on a local pool; with `--cluster nats://HOST:4222` (one
//! builder option) they run on the hosts serving pool `example`.
//!
//! One machine:
//! `cargo run --release -p multiloop --features cluster --example cluster`
//!
//! Across hosts, with a nats-server 2.11 or newer (`nats-server -js`) at
//! 10.0.0.1, this same binary (`target/release/examples/cluster`) on each
//! host and on the caller:
//!
//! ```text
//! MULTILOOP_CLUSTER_HOST=nats://10.0.0.1:4222/example \
//!     MULTILOOP_CLUSTER_CONCURRENCY=256 ./cluster      # each host
//! ./cluster --cluster nats://10.0.0.1:4222             # the caller
//! ```
//!
//! A host runs its chunks on its own local pool, whose size it sets
//! (`MULTILOOP_CLUSTER_PROCESSES`, default the cores;
//! `MULTILOOP_CLUSTER_CONCURRENCY`, tasks at once per worker, default 16):
//! give it the 256 this program uses locally, or the 20 ms "network calls"
//! below wait for room.

use std::time::{Duration, Instant};

use multiloop::cluster::ClusterConfig;

/// Pretends to check a host: waits like a network call would, then answers.
#[multiloop::task]
async fn check(host: String, latency_ms: u64) -> usize {
    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
    host.len()
}

/// How long the caller waits for a first host before giving up.
const HOST_WAIT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cluster = match args.as_slice() {
        [] => None,
        [flag, url] if flag == "--cluster" => Some(url.clone()),
        _ => return Err("usage: cluster [--cluster nats://HOST:4222]".into()),
    };
    let mut builder = multiloop::Pool::builder().concurrency(256);
    if let Some(url) = &cluster {
        builder = builder.cluster(ClusterConfig::new(url, "example"));
    }
    let pool = builder.build().await?;
    if cluster.is_some() {
        println!("waiting for a host of pool `example`…");
        let hosts = tokio::time::timeout(HOST_WAIT, pool.wait_for_hosts(|h| !h.is_empty()))
            .await
            .map_err(|_| format!("no host joined within {HOST_WAIT:?}"))??;
        for h in &hosts {
            println!(
                "host {} (pid {}, {} processes)",
                h.hostname, h.pid, h.processes
            );
        }
    }

    let start = Instant::now();
    let hosts = (0..5_000).map(|i| (format!("host-{i}.example"), 20));
    let sizes = pool.starmap(check, hosts).await?;
    println!("checked {} hosts in {:?}", sizes.len(), start.elapsed());

    let stats = pool.stats();
    println!(
        "tasks done {}, hosts {}",
        stats.tasks_done, stats.hosts_alive
    );
    pool.close().await?;
    Ok(())
}
