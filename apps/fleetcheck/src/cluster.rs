//! Scanning across machines: the pool's scrapes go to agent hosts through
//! NATS JetStream (multiloop's `cluster` feature).
//!
//! One runner (`fleetcheck run --cluster nats://host:4222/pool`, or `scan`
//! and `bench` with `--cluster`) and any number of agents (`fleetcheck
//! agent --cluster nats://host:4222/pool`), each serving the pool on a
//! local pool of worker processes sized to its cores. Scrapes are routed
//! by host id as on one machine: a host's partition is owned by one agent
//! at a time and, on that agent, by one local worker, which keeps the
//! host's history.
//!
//! **What an agent's worker needs comes with the scrapes.** Agents are
//! started with the cluster address alone: no config file, no rules. Each
//! scrape carries the runner's id for its [`WorkerInit`] (rules, scrape
//! options, client settings) and what the runner's copy of the host's
//! history is ([`Known`]). A worker that lacks that init, or whose state
//! of the host is not the runner's copy (another agent scraped it since,
//! or it is behind or ahead), answers `need_state` without scraping; the
//! runner then sends those hosts again with the init and the host's
//! checkpoint ([`resume`]), as it does for a worker that lost its state
//! on one machine ([`crate::pool::PoolScanner::round_checkpointed`]). So
//! when an agent dies, its partitions move to another agent, which picks
//! up its hosts' history from the runner's copy, and a redelivered scrape
//! of a round a worker already applied never touches the host's state.
//!
//! A new runner (a restart, another config) has a new init id: agents'
//! workers start over with its init and empty host states. One runner per
//! pool name at a time.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::scan::HostSpec;
use crate::state::{HostCheckpoint, HostRound, ParentCopy};
use crate::worker::{WorkerInit, WorkerState};

/// Pool name when the address has none.
pub const DEFAULT_POOL: &str = "fleetcheck";

/// Default time after which a silent agent's partitions move to another
/// agent.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(5);

/// A cluster address, `nats://host:4222[/pool]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterAddr {
    /// The nats-server URL(s), without the pool.
    pub url: String,
    /// The pool name (default [`DEFAULT_POOL`]).
    pub pool: String,
}

impl ClusterAddr {
    /// Parses `nats://host:4222` or `nats://host:4222/pool`.
    ///
    /// ```
    /// use fleetcheck::cluster::ClusterAddr;
    /// let a = ClusterAddr::parse("nats://10.0.0.1:4222/dc1").unwrap();
    /// assert_eq!((a.url.as_str(), a.pool.as_str()), ("nats://10.0.0.1:4222", "dc1"));
    /// let a = ClusterAddr::parse("nats://10.0.0.1:4222").unwrap();
    /// assert_eq!(a.pool, "fleetcheck");
    /// assert!(ClusterAddr::parse("10.0.0.1:4222").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "--cluster {s:?}: {why} (expected nats://host:4222 or nats://host:4222/pool)"
            ))
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if !matches!(scheme, "nats" | "tls") {
            return Err(bad("the scheme must be nats:// or tls://"));
        }
        let (hosts, pool) = match rest.split_once('/') {
            Some((hosts, "")) => (hosts, DEFAULT_POOL),
            Some((hosts, pool)) => (hosts, pool),
            None => (rest, DEFAULT_POOL),
        };
        if hosts.is_empty() {
            return Err(bad("no server address"));
        }
        let pool_ok = pool.len() <= 64
            && pool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !pool_ok {
            return Err(bad(
                "the pool name must be 1 to 64 letters, digits, `-` or `_`",
            ));
        }
        Ok(ClusterAddr {
            url: format!("{scheme}://{hosts}"),
            pool: pool.to_owned(),
        })
    }

    /// The multiloop cluster configuration: agents silent for `ack_wait`
    /// lose their partitions to others.
    pub fn config(&self, ack_wait: Duration) -> multiloop::cluster::ClusterConfig {
        multiloop::cluster::ClusterConfig::new(self.url.clone(), self.pool.clone())
            .ack_wait(ack_wait)
    }
}

/// Serves the pool at `addr` as an agent until the process ends: a local
/// pool of `processes` workers (0: one per core), `concurrency` scrapes
/// each. Returns only when setting up fails.
pub async fn agent(addr: &ClusterAddr, processes: usize, concurrency: usize) -> Result<(), Error> {
    let processes = if processes == 0 {
        crate::pool::default_processes()
    } else {
        processes
    };
    let local = multiloop::Pool::builder()
        .processes(processes)
        .concurrency(concurrency.max(1));
    tracing::info!(
        url = addr.url,
        pool = addr.pool,
        processes,
        "agent serving the cluster"
    );
    multiloop::cluster::serve(addr.config(DEFAULT_ACK_WAIT), local)
        .await
        .map_err(|source| Error::Pool {
            what: "serving the cluster",
            source,
        })
}

/// What the runner knows, sent with each scrape to an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// The runner's [`WorkerInit`] id ([`init_id`]).
    pub init: u64,
    /// The runner's copy of the host's history.
    pub parent: ParentCopy,
    /// The round of the last successful scrape in that copy.
    pub parent_round: Option<u64>,
}

/// What the runner sends again to a worker that answered `need_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    /// The runner's init id.
    pub init: u64,
    /// The runner's init.
    pub settings: WorkerInit,
    /// The runner's copy of the host (`None`: it has none).
    pub checkpoint: Option<HostCheckpoint>,
    /// What the runner asks back when it has no copy.
    pub parent: ParentCopy,
}

/// A new init id, unique to this runner's start.
pub fn init_id() -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    foldhash::fast::RandomState::default().hash_one((now, std::process::id()))
}

/// A worker's state with the init it was built from.
#[derive(Debug)]
struct AgentWorker {
    init: u64,
    state: WorkerState,
}

/// This worker's state when it was built from init `init`.
fn current(init: u64) -> Option<&'static WorkerState> {
    multiloop::worker_state::<AgentWorker>()
        .filter(|w| w.init == init)
        .map(|w| &w.state)
}

/// This worker's state for init `init`, built from `settings` if the
/// worker has another one or none (its host states start over).
fn install(init: u64, settings: &WorkerInit) -> Option<&'static WorkerState> {
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(PoisonError::into_inner);
    if current(init).is_none() {
        multiloop::set_worker_state(AgentWorker {
            init,
            state: WorkerState::new(settings),
        });
    }
    current(init)
}

/// Scrapes one host on an agent's worker, with its state update in the
/// result; `need_state` (nothing fetched, nothing changed) when this
/// worker lacks the runner's init or its state of the host is not the
/// runner's copy.
#[multiloop::task]
pub async fn scrape(spec: HostSpec, round: u64, known: Known) -> HostRound {
    match current(known.init) {
        Some(w) if matches_copy(w, spec.id, &known) => {
            w.scrape_checkpointed(&spec, round, known.parent).await
        }
        _ => HostRound::need_state(spec.id, round),
    }
}

/// Whether `w`'s state of `host` is at the round of the runner's copy,
/// or the runner has no copy to give. (A host this worker does not know
/// at all is then asked for by `scrape_checkpointed`.)
fn matches_copy(w: &WorkerState, host: u32, known: &Known) -> bool {
    !matches!(known.parent, ParentCopy::Has(_)) || w.host_last_round(host) == known.parent_round
}

/// Installs the runner's init if needed, rebuilds the host's state from
/// the runner's copy when it has one, and scrapes.
#[multiloop::task]
pub async fn resume(spec: HostSpec, round: u64, given: Resume) -> HostRound {
    let Some(w) = install(given.init, &given.settings) else {
        return HostRound::failed(
            spec.id,
            round,
            crate::pool::POOL_FAILURE_CHECK,
            "the agent's worker could not keep the runner's settings".into(),
        );
    };
    match &given.checkpoint {
        Some(cp) => w.restore_and_scrape(&spec, round, cp).await,
        None => w.scrape_checkpointed(&spec, round, given.parent).await,
    }
}

/// Routing key of [`scrape`]: the host id.
pub fn route_scrape(args: &(HostSpec, u64, Known)) -> u64 {
    u64::from(args.0.id)
}

/// Routing key of [`resume`]: the host id.
pub fn route_resume(args: &(HostSpec, u64, Resume)) -> u64 {
    u64::from(args.0.id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fleet::{Fleet, FleetConfig, FleetServer};
    use crate::scan::host_specs;
    use std::sync::Arc;

    /// A worker whose state of a host is behind or ahead of the runner's
    /// copy (another agent scraped it since, or it applied a round the
    /// runner never got) asks for the copy instead of scraping.
    #[tokio::test(flavor = "current_thread")]
    async fn a_worker_scrapes_only_from_the_runners_copy() {
        let fleet = Arc::new(Fleet::new(FleetConfig {
            hosts: 1,
            series: 50,
            seed: 1,
            rounds: 4,
            bad: Vec::new(),
        }));
        let server = FleetServer::start(fleet, 0).await.unwrap();
        let spec = &host_specs(&server.target_urls())[0];
        let w = WorkerState::new(&crate::worker::tests::simulated_init());
        let known = |parent, parent_round| Known {
            init: 1,
            parent,
            parent_round,
        };
        let has = ParentCopy::Has(10);
        assert!(
            !matches_copy(&w, spec.id, &known(has, Some(0))),
            "no state here, the runner's copy is at round 0"
        );
        assert!(matches_copy(
            &w,
            spec.id,
            &known(ParentCopy::SendFull, None)
        ));
        for round in 0..2 {
            w.scrape(spec, round).await;
        }
        assert!(matches_copy(&w, spec.id, &known(has, Some(1))));
        assert!(!matches_copy(&w, spec.id, &known(has, Some(2))), "behind");
        assert!(!matches_copy(&w, spec.id, &known(has, Some(0))), "ahead");
        assert!(matches_copy(&w, spec.id, &known(ParentCopy::Later, None)));
    }
}
