//! The registry of a pool's hosts: a JetStream key-value bucket in which
//! each host keeps one entry fresh, and which the caller watches.
//!
//! A host puts its entry (who it is, what it runs) every third of the
//! entry's lifetime. The bucket's entries live `ack_wait`, and the server
//! marks an entry that ages out with a delete marker, so a watcher learns
//! of a host that stopped heartbeating (killed, hung, cut off) within
//! about `ack_wait`, as the work stream does for its chunks, without
//! polling anyone.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{ClusterConfig, Connection, nats_error};
use crate::error::Error;

/// One host serving a cluster pool, as its last heartbeat described it
/// (see [`Pool::hosts`](crate::Pool::hosts)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostStats {
    /// The host's id in the registry, new each time a host starts.
    pub id: String,
    /// The machine's host name.
    pub hostname: String,
    /// The host process's id on its machine.
    pub pid: u32,
    /// Worker processes of the host's local pool.
    pub processes: usize,
    /// Tasks at once per worker process of the host's local pool.
    pub concurrency: usize,
    /// The `ack_wait` the host works with: the pool's, as its caller set
    /// it (a host started before its caller takes it up within a third of
    /// the old one).
    pub ack_wait: Duration,
    /// Chunks of tasks the host runs now.
    pub chunks_running: u64,
    /// Tasks the host's local pool finished since it started.
    pub tasks_done: u64,
    /// Tasks of chunks delivered again that the host did not run because
    /// their caller already had their outcomes (or was gone for good).
    pub tasks_skipped: u64,
}

/// The hosts the registry lists now, by id.
pub(crate) type Hosts = BTreeMap<String, HostStats>;

fn bucket(pool: &str) -> String {
    format!("MLH_{pool}")
}

/// The pool's registry bucket, made with entries living `ttl` if missing.
/// `update`: set to `ttl` (the caller owns the settings, as for the work
/// consumer; a host adopts them).
pub(crate) async fn open(
    conn: &Connection,
    config: &ClusterConfig,
    ttl: Duration,
    update: bool,
) -> Result<kv::Store, Error> {
    let want = kv::Config {
        bucket: bucket(&config.pool),
        history: 1,
        max_age: ttl,
        storage: async_nats::jetstream::stream::StorageType::File,
        // A delete marker when an entry ages out: what tells watchers.
        limit_markers: Some(ttl),
        ..Default::default()
    };
    let found = match conn.js.get_key_value(want.bucket.as_str()).await {
        Ok(_) if update => conn
            .js
            .update_key_value(want)
            .await
            .map_err(|e| e.to_string()),
        Ok(store) => Ok(store),
        Err(_) => conn
            .js
            .create_key_value(want)
            .await
            .map_err(|e| e.to_string()),
    };
    found.map_err(|e| nats_error("could not open the host registry", config, e))
}

/// Puts the host's entry, as `describe` makes it, every third of the
/// entry's lifetime, for as long as the host lives. The lifetime (the
/// pool's `ack_wait`) is read again at each beat and given to `describe`:
/// a caller that starts after its hosts sets it. A put the server does not
/// confirm (an outage) is tried again at the next beat.
pub(crate) async fn heartbeat(
    store: kv::Store,
    mut ttl: Duration,
    describe: impl Fn(Duration) -> HostStats,
) {
    loop {
        // (A lifetime under multiloop's least ack_wait is not one a caller
        // set: ignored.)
        if let Ok(info) = store.stream.get_info().await
            && info.config.max_age >= Duration::from_secs(1)
        {
            ttl = info.config.max_age;
        }
        let period = (ttl / 3).max(Duration::from_millis(100));
        let entry = describe(ttl);
        if let Ok(value) = serde_json::to_vec(&entry) {
            match tokio::time::timeout(period, store.put(&entry.id, value.into())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "cluster host: heartbeat failed"),
                Err(_) => tracing::debug!("cluster host: heartbeat not confirmed in time"),
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Keeps `hosts` equal to the registry: every put of an entry, and every
/// entry deleted or aged out. Runs for as long as the caller lives.
pub(crate) async fn watch(store: kv::Store, hosts: watch::Sender<Hosts>) {
    loop {
        let mut entries = match store.watch_all().await {
            // A new watch replays every live entry: what it does not
            // replay went away meanwhile.
            Ok(w) => {
                hosts.send_if_modified(|h| {
                    let had = !h.is_empty();
                    h.clear();
                    had
                });
                w
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: watching the host registry failed; again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = entries.next().await {
            let Ok(entry) = entry else { continue };
            match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<HostStats>(&entry.value) {
                    Ok(host) => {
                        hosts.send_modify(|h| {
                            h.insert(entry.key, host);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, key = entry.key, "cluster: unreadable host entry")
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => {
                    hosts.send_if_modified(|h| h.remove(&entry.key).is_some());
                }
            }
        }
    }
}

/// This machine's host name (empty if it has none).
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`,
    // which lives across the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
