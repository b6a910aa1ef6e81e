//! Scanning on a `multiloop` process pool (the default runner).
//!
//! Each worker process runs the initializer task [`init_worker`] once: it
//! builds a [`WorkerState`] (checks, HTTP client, host states) from a serde
//! [`WorkerInit`] and stores it with `multiloop::set_worker_state`. A round
//! is one `map_reduce` of the task [`scrape`] over every target, routed by
//! host id ([`route_host`]) so that a host always goes to the same worker
//! slot and its state (history, previous values, series seen) stays there
//! across rounds. Each worker folds the [`HostRound`]s of its chunks into a
//! [`Report`] with [`ReportReducer`]; the parent merges the partials, runs
//! the fleet-level checks ([`Report::finish_round`]) and merges the rounds.
//!
//! When a worker dies (crash, OOM kill, SIGKILL), the pool starts a new one
//! in its slot and runs again the chunks the dead one had not delivered, so
//! no host result is lost; the hosts of that slot start over with an empty
//! [`crate::HostState`] in the new worker, and their history-based checks
//! (rate, zscore, stale) need a few rounds to warm up again.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use multiloop::reduce::Partial;
use multiloop::{Pool, Reducer};
use serde::{Deserialize, Serialize};

use crate::checks::Checks;
use crate::error::Error;
use crate::history::HistoryStore;
use crate::report::Report;
use crate::scan::{HostSpec, RoundObserver, RoundPipeline, ScanConfig, complete_round};
use crate::state::{HostCheckpoint, HostRound, ParentCopy, SeriesCheckpoint, StateUpdate};
use crate::worker::{WorkerInit, WorkerState};

/// Check name of the finding recorded for a host whose scrape task failed
/// in the pool itself (its worker died under it more than the allowed
/// attempts, or a result could not cross the process boundary).
pub const POOL_FAILURE_CHECK: &str = "worker";

/// Pool initializer: builds this worker's [`WorkerState`].
#[multiloop::task]
pub async fn init_worker(init: WorkerInit) -> Result<(), String> {
    multiloop::set_worker_state(WorkerState::new(&init));
    Ok(())
}

/// The result of a scrape on a worker whose initializer did not run.
fn no_state(spec: &HostSpec, round: u64) -> HostRound {
    HostRound::failed(
        spec.id,
        round,
        POOL_FAILURE_CHECK,
        "worker has no state (the pool initializer did not run)".into(),
    )
}

/// Scrape one host for one round with this worker's state.
#[multiloop::task]
pub async fn scrape(spec: HostSpec, round: u64) -> HostRound {
    match multiloop::worker_state::<WorkerState>() {
        Some(w) => w.scrape(&spec, round).await,
        None => no_state(&spec, round),
    }
}

/// [`scrape`] with the host's checkpoint in the result; when this worker
/// has no state for the host and the parent has a copy
/// ([`ParentCopy::Has`]), it asks for it
/// instead (`need_state`). See [`PoolScanner::round_checkpointed`].
#[multiloop::task]
pub async fn scrape_checkpointed(spec: HostSpec, round: u64, parent: ParentCopy) -> HostRound {
    match multiloop::worker_state::<WorkerState>() {
        Some(w) => w.scrape_checkpointed(&spec, round, parent).await,
        None => no_state(&spec, round),
    }
}

/// Rebuild a host's state from its checkpoint in this worker, then scrape.
#[multiloop::task]
pub async fn restore_and_scrape(spec: HostSpec, round: u64, cp: HostCheckpoint) -> HostRound {
    match multiloop::worker_state::<WorkerState>() {
        Some(w) => w.restore_and_scrape(&spec, round, &cp).await,
        None => no_state(&spec, round),
    }
}

fn route_checkpointed(args: &(HostSpec, u64, ParentCopy)) -> u64 {
    u64::from(args.0.id)
}

fn route_restore(args: &(HostSpec, u64, HostCheckpoint)) -> u64 {
    u64::from(args.0.id)
}

/// Full checkpoints asked for in one round: a new pool's hosts get their
/// copies over several rounds, which bounds the parent's memory (a full
/// checkpoint is ≈ 60 KB per host with the built-in rules at 2,000 series).
pub const FULL_CHECKPOINTS_PER_ROUND: usize = 100;

/// What the round cost in host history.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CheckpointCost {
    /// Hosts whose state was handed back to a worker.
    pub restored: u64,
    /// Approximate bytes (postcard) of the round's state updates.
    pub bytes: u64,
}

/// About the size of a state update on the wire (postcard: 8 bytes per
/// float, short varints for lengths, positions and rounds).
pub fn approx_bytes(u: &StateUpdate) -> u64 {
    let series = |s: &[SeriesCheckpoint]| -> u64 {
        s.iter()
            .map(|s| {
                let hist: u64 = s.histories.iter().map(|h| 1 + 8 * h.len() as u64).sum();
                s.key.len() as u64 + 30 + hist + s.caps.len() as u64 * 2
            })
            .sum()
    };
    match u {
        StateUpdate::Full(c) => 8 + series(&c.series),
        StateUpdate::Delta(d) => {
            12 + series(&d.added)
                + 3 * d.missing.len() as u64
                + 19 * d.values.len() as u64
                + 11 * d.changed.len() as u64
        }
    }
}

/// What [`probe`] reports about the worker a host is routed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerProbe {
    /// Host id.
    pub host: u32,
    /// Process id of the worker.
    pub pid: u32,
    /// Last round of the host's state in that worker (`None`: no state).
    pub last_round: Option<u64>,
    /// Hosts with state in that worker.
    pub hosts: usize,
}

/// Debug task: which worker serves `spec`, and what it knows about it.
/// Route it with [`route_host`] to see where [`scrape`] runs.
#[multiloop::task]
pub async fn probe(spec: HostSpec, round: u64) -> WorkerProbe {
    let _ = round;
    let w = multiloop::worker_state::<WorkerState>();
    WorkerProbe {
        host: spec.id,
        pid: std::process::id(),
        last_round: w.and_then(|w| w.host_last_round(spec.id)),
        hosts: w.map_or(0, WorkerState::host_count),
    }
}

/// Routing key of a scrape: the host id.
pub fn route_host(args: &(HostSpec, u64)) -> u64 {
    u64::from(args.0.id)
}

/// Folds [`HostRound`]s into a [`Report`] (identity: `Report::default()`,
/// fold: [`Report::add`], merge: [`Report::merge`]).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ReportReducer;

impl Reducer for ReportReducer {
    type Item = HostRound;
    type Acc = Report;
    fn identity(&self) -> Report {
        Report::default()
    }
    fn fold(&self, acc: &mut Report, item: HostRound) {
        acc.add(item);
    }
    fn merge(&self, acc: &mut Report, other: Report) {
        acc.merge(other);
    }
}

multiloop::register_reducer!(ReportReducer);

/// One round's share of a worker's fold ([`RoundsReducer`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoundPart {
    /// The round.
    pub round: u64,
    /// Host results folded.
    pub hosts: u64,
    /// Their report.
    pub report: Report,
}

/// Folds [`HostRound`]s into one [`Report`] per round: the reducer of a
/// scan whose rounds overlap ([`PoolScanner::scan`]), where a chunk may
/// hold the end of one round and the start of the next.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RoundsReducer;

impl RoundsReducer {
    fn part(acc: &mut Vec<RoundPart>, round: u64) -> &mut RoundPart {
        let at = match acc.iter().position(|p| p.round == round) {
            Some(at) => at,
            None => {
                acc.push(RoundPart {
                    round,
                    ..RoundPart::default()
                });
                acc.len() - 1
            }
        };
        &mut acc[at]
    }
}

impl Reducer for RoundsReducer {
    type Item = HostRound;
    type Acc = Vec<RoundPart>;
    fn identity(&self) -> Vec<RoundPart> {
        Vec::new()
    }
    fn fold(&self, acc: &mut Vec<RoundPart>, item: HostRound) {
        let part = Self::part(acc, item.round);
        part.hosts += 1;
        part.report.add(item);
    }
    fn merge(&self, acc: &mut Vec<RoundPart>, other: Vec<RoundPart>) {
        for o in other {
            let part = Self::part(acc, o.round);
            part.hosts += o.hosts;
            part.report.merge(o.report);
        }
    }
}

multiloop::register_reducer!(RoundsReducer);

/// Rounds a scan on the pool keeps in flight: the next round's scrapes
/// start while the last ones of the round before are still running, so
/// no worker waits for the slowest one at the end of every round; a
/// round is only started once the one two before it is complete.
pub const ROUNDS_IN_FLIGHT: usize = 2;

/// Why a round on the pool has no report.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// The pool failed (e.g. it gave up restarting workers).
    #[error("{0}")]
    Pool(#[source] multiloop::Error),
    /// Host results went missing (a bug: every host has a result or an error).
    #[error("{got} host results for {want} targets")]
    Incomplete {
        /// Results.
        got: u64,
        /// Targets.
        want: u64,
    },
}

impl RoundError {
    /// The pool stopped restarting workers because they died too often.
    pub fn is_restart_intensity(&self) -> bool {
        matches!(self, RoundError::Pool(e) if e.is_restart_intensity())
    }
}

/// Pool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Worker processes (default: the number of cores).
    pub processes: usize,
    /// Concurrent scrapes per worker.
    pub concurrency: usize,
}

/// Default concurrent scrapes per worker.
pub const DEFAULT_WORKER_CONCURRENCY: usize = 64;

/// Default concurrent scrapes of the in-process scan.
pub const DEFAULT_CONCURRENCY: usize = 64;

/// Concurrent scrapes per worker on the built-in (simulated, loopback)
/// fleet. There a scrape never waits on the network, the scan is
/// CPU-bound, and every page in flight (≈ 140 kB at 2,000 series) is
/// memory that the parse reads again: at 8 per worker the pages in
/// flight fit the core's L2, and the pool spent 18% less CPU than at 64
/// (3.82 vs 4.66 CPU-s for 40M points, `--bench`, same binary; 2 and 4
/// cost the parent more round trips). Remote targets need the default.
pub const LOOPBACK_WORKER_CONCURRENCY: usize = 8;

/// Hosts per chunk on the built-in fleet ([`PoolScanner::with_chunk_size`]):
/// the adaptive size gave chunks of a few scrapes, and the pool parent
/// spent its CPU waking up for their results (each wake-up is most of
/// the parent's cost). Parent CPU per 100M points (`--bench`, three
/// alternating runs each, same binary): 0.24-0.26 CPU-s with 16, 0.19-0.20
/// with 32, 0.12-0.13 with 64 and with 128; the workers' CPU the same.
pub const LOOPBACK_CHUNK: usize = 64;

/// How long a scan on agents waits for the first agent before it says so.
pub const AGENT_HINT_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// Partitions of a scan on agents ([`PoolScanner::start_cluster`]) when
/// not set: each is owned by one agent at a time, so this bounds the
/// agents that share a fleet (and 12 splits evenly over 2, 3, 4 or 6).
pub const CLUSTER_PARTITIONS: usize = 12;

/// Concurrent scrapes of the in-process scan on the built-in fleet (see
/// [`LOOPBACK_WORKER_CONCURRENCY`]; 3.27 vs 4.02 CPU-s at 64, same run).
pub const LOOPBACK_CONCURRENCY: usize = 16;

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            processes: default_processes(),
            concurrency: DEFAULT_WORKER_CONCURRENCY,
        }
    }
}

/// The number of cores (at least 1).
pub fn default_processes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A process pool ready to scan: workers started and initialized.
#[derive(Debug)]
pub struct PoolScanner {
    pool: Pool,
    checks: Checks,
    chunk: Option<usize>,
    /// Set when the scrapes go to agents ([`PoolScanner::start_cluster`]).
    cluster: Option<ClusterRun>,
}

/// The runner's side of a scan on agents (see [`crate::cluster`]).
#[derive(Debug)]
struct ClusterRun {
    /// This runner's [`WorkerInit`] and its id, sent to agents' workers
    /// that lack it.
    init: WorkerInit,
    init_id: u64,
    /// The host history of the rounds that bring no store of their own
    /// ([`PoolScanner::round`]): on agents every round keeps one.
    history: tokio::sync::Mutex<HistoryStore>,
}

impl PoolScanner {
    /// Start the workers; each builds its [`WorkerState`] from `init`.
    /// Must be called inside a tokio runtime.
    pub async fn start(init: WorkerInit, settings: PoolSettings) -> Result<Self, Error> {
        Self::start_tuned(init, settings, |b| b).await
    }

    /// [`PoolScanner::start`] with the pool builder adjusted by `tune`
    /// (e.g. its `restart_intensity`).
    pub async fn start_tuned(
        init: WorkerInit,
        settings: PoolSettings,
        tune: impl FnOnce(multiloop::PoolBuilder) -> multiloop::PoolBuilder,
    ) -> Result<Self, Error> {
        let checks = Checks::from_rules(&init.rules);
        let b = Self::builder(&settings).initializer(init_worker, init);
        Self::build(tune(b), checks, None).await
    }

    /// Start the workers with your own initializer task, which must store
    /// a [`WorkerState`] with `multiloop::set_worker_state` (e.g. built with
    /// [`WorkerState::with_checks`] to add custom checks); `checks` are the
    /// parent's, for the fleet-level checks, and must list the same checks
    /// in the same order.
    pub async fn start_with<T: multiloop::Task>(
        checks: Checks,
        initializer: T,
        args: T::Args,
        settings: PoolSettings,
    ) -> Result<Self, Error> {
        let b = Self::builder(&settings).initializer(initializer, args);
        Self::build(b, checks, None).await
    }

    /// Scan on the agents of a cluster (`fleetcheck agent`) instead of
    /// local workers: `settings.processes` partitions (routed lanes, each
    /// owned by one agent at a time) of `settings.concurrency` scrapes in
    /// flight. The agents' workers get `init` with the scrapes (see
    /// [`crate::cluster`]), and every round keeps the hosts' history here,
    /// so that an agent taking over a dead one's hosts goes on from it.
    pub async fn start_cluster(
        init: WorkerInit,
        settings: PoolSettings,
        cluster: multiloop::cluster::ClusterConfig,
    ) -> Result<Self, Error> {
        let checks = Checks::from_rules(&init.rules);
        let run = ClusterRun {
            init,
            init_id: crate::cluster::init_id(),
            history: Default::default(),
        };
        Self::build(Self::builder(&settings).cluster(cluster), checks, Some(run)).await
    }

    /// The pool of `settings`: its processes (or lanes) and concurrency.
    fn builder(settings: &PoolSettings) -> multiloop::PoolBuilder {
        Pool::builder()
            .processes(settings.processes.max(1))
            .concurrency(settings.concurrency.max(1))
    }

    async fn build(
        b: multiloop::PoolBuilder,
        checks: Checks,
        cluster: Option<ClusterRun>,
    ) -> Result<Self, Error> {
        let pool = b.build().await.map_err(Error::PoolStart)?;
        Ok(PoolScanner {
            pool,
            checks,
            chunk: None,
            cluster,
        })
    }

    /// Send the scrapes of a round to the workers in chunks of `n` hosts
    /// (default: multiloop's adaptive size, about 1 ms of work). A worker
    /// still runs a chunk's scrapes concurrently, up to its concurrency;
    /// larger chunks mean fewer result frames for the parent to wake up
    /// for. See [`LOOPBACK_CHUNK`].
    pub fn with_chunk_size(mut self, n: usize) -> Self {
        self.chunk = Some(n.max(1));
        self
    }

    /// The pool (worker pids, extra calls).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The checks the parent uses for fleet-level evaluation.
    pub fn checks(&self) -> &Checks {
        &self.checks
    }

    /// Scrape every target once for `round`: one `map_reduce` routed by host
    /// id. Returns the merged report of the round, before
    /// [`Report::finish_round`]. A host whose task failed in the pool (not a
    /// scrape problem: those are findings already) gets a scrape finding
    /// of check [`POOL_FAILURE_CHECK`], so every host has a result.
    pub async fn round(&self, targets: &[HostSpec], round: u64) -> Result<Report, Error> {
        self.round_with_deadline(targets, round, None)
            .await
            .map_err(|source| Error::Round { round, source })
    }

    /// [`PoolScanner::round`] with a pool-side deadline per scrape: a
    /// scrape still running then (its worker frozen, a fetch that ignores
    /// its own timeout) ends as a [`POOL_FAILURE_CHECK`] finding instead
    /// of stalling the round. The error is the pool's own (e.g. it gave up
    /// restarting workers: `multiloop::Error::is_restart_intensity`).
    pub async fn round_with_deadline(
        &self,
        targets: &[HostSpec],
        round: u64,
        deadline: Option<std::time::Duration>,
    ) -> Result<Report, RoundError> {
        if let Some(c) = &self.cluster {
            let mut store = c.history.lock().await;
            let (rep, cost) = self
                .round_checkpointed(targets, round, deadline, &mut store)
                .await?;
            if cost.restored > 0 {
                tracing::info!(
                    round,
                    hosts = cost.restored,
                    "host history handed to agents' workers"
                );
            }
            return Ok(rep);
        }
        let inputs = targets.iter().map(|s| (s.clone(), round));
        let call = self
            .pool
            .map_reduce(scrape, inputs, ReportReducer)
            .route_by(route_host);
        let out = self.reduce(call, deadline).await?;
        self.collect(out, targets, round)
    }

    /// Runs one call of a round with the scanner's chunk size and
    /// `deadline` per scrape.
    async fn reduce<T, S>(
        &self,
        mut call: multiloop::MapReduce<T, S, ReportReducer>,
        deadline: Option<std::time::Duration>,
    ) -> Result<multiloop::Reduced<Report>, RoundError>
    where
        T: multiloop::Task<Output = HostRound>,
        S: multiloop::Input<Item = T::Args>,
    {
        if let Some(n) = self.chunk {
            call = call.chunk_size(n);
        }
        if let Some(d) = deadline {
            call = call.timeout(d);
        }
        call.await.map_err(RoundError::Pool)
    }

    /// [`PoolScanner::round_with_deadline`] that keeps host history in
    /// `store` across worker deaths: every host's result carries its
    /// checkpoint, which the parent keeps; a worker without state for a
    /// host the parent knows answers `need_state` without scraping, and
    /// those hosts are scraped again at once with their checkpoint
    /// ([`restore_and_scrape`]). A death costs one extra small call, no
    /// history and no finding. On agents ([`PoolScanner::start_cluster`])
    /// the same, through [`crate::cluster::scrape`] and
    /// [`crate::cluster::resume`], which also hand the agents' workers
    /// this runner's init.
    pub async fn round_checkpointed(
        &self,
        targets: &[HostSpec],
        round: u64,
        deadline: Option<std::time::Duration>,
        store: &mut HistoryStore,
    ) -> Result<(Report, CheckpointCost), RoundError> {
        let mut full_budget = FULL_CHECKPOINTS_PER_ROUND;
        let inputs: Vec<(HostSpec, u64, ParentCopy)> = targets
            .iter()
            .map(|s| {
                let copy = match store.len_of(s.id) {
                    Some(n) => ParentCopy::Has(n),
                    None if full_budget > 0 => {
                        full_budget -= 1;
                        ParentCopy::SendFull
                    }
                    None => ParentCopy::Later,
                };
                (s.clone(), round, copy)
            })
            .collect();
        // What the parent asked of each host, asked again of those sent
        // twice.
        let copies: std::collections::HashMap<u32, ParentCopy> =
            inputs.iter().map(|(s, _, c)| (s.id, *c)).collect();
        let out = match &self.cluster {
            None => {
                let call = self
                    .pool
                    .map_reduce(scrape_checkpointed, inputs, ReportReducer)
                    .route_by(route_checkpointed);
                self.reduce(call, deadline).await?
            }
            Some(c) => {
                let inputs = inputs.into_iter().map(|(s, round, parent)| {
                    let known = crate::cluster::Known {
                        init: c.init_id,
                        parent,
                        parent_round: store.prev_round_of(s.id),
                    };
                    (s, round, known)
                });
                let call = self
                    .pool
                    .map_reduce(crate::cluster::scrape, inputs, ReportReducer)
                    .route_by(crate::cluster::route_scrape);
                self.reduce(call, deadline).await?
            }
        };
        let mut rep = self.collect(out, targets, round)?;
        let mut cost = CheckpointCost::default();
        let need = std::mem::take(&mut rep.need_state);
        if !need.is_empty() {
            let by_id: std::collections::HashMap<u32, &HostSpec> =
                targets.iter().map(|s| (s.id, s)).collect();
            let again: Vec<HostSpec> = need
                .iter()
                .filter_map(|h| by_id.get(h).map(|s| (*s).clone()))
                .collect();
            let out = match &self.cluster {
                None => {
                    let inputs = again.iter().map(|s| {
                        let cp = store.checkpoint(s.id).unwrap_or_default();
                        (s.clone(), round, cp)
                    });
                    let call = self
                        .pool
                        .map_reduce(restore_and_scrape, inputs, ReportReducer)
                        .route_by(route_restore);
                    self.reduce(call, deadline).await?
                }
                Some(c) => {
                    let inputs = again.iter().map(|s| {
                        let resume = crate::cluster::Resume {
                            init: c.init_id,
                            settings: c.init.clone(),
                            checkpoint: store.checkpoint(s.id),
                            parent: copies.get(&s.id).copied().unwrap_or(ParentCopy::Later),
                        };
                        (s.clone(), round, resume)
                    });
                    let call = self
                        .pool
                        .map_reduce(crate::cluster::resume, inputs, ReportReducer)
                        .route_by(crate::cluster::route_resume);
                    self.reduce(call, deadline).await?
                }
            };
            cost.restored = again.len() as u64;
            rep.merge(self.collect(out, &again, round)?);
        }
        for u in std::mem::take(&mut rep.updates) {
            cost.bytes += approx_bytes(&u);
            store.apply(u);
        }
        Ok((rep, cost))
    }

    /// The report of one call, with a pool-failure finding for each host
    /// whose task failed.
    fn collect(
        &self,
        out: multiloop::Reduced<Report>,
        targets: &[HostSpec],
        round: u64,
    ) -> Result<Report, RoundError> {
        let mut rep = out.value;
        let mut failed = 0u64;
        for (index, e) in out.errors {
            // The pool itself gave up (or was closed): not this host's
            // problem, and every later call would fail the same way.
            if e.is_restart_intensity() || e.is_pool_closed() {
                return Err(RoundError::Pool(e));
            }
            match usize::try_from(index).ok().and_then(|i| targets.get(i)) {
                Some(spec) => {
                    failed += 1;
                    rep.add(task_failed(spec, round, &e));
                }
                None => return Err(RoundError::Pool(e)),
            }
        }
        let got = out.folded + failed;
        if got != targets.len() as u64 {
            return Err(RoundError::Incomplete {
                got,
                want: targets.len() as u64,
            });
        }
        Ok(rep)
    }

    /// Scan `cfg.targets` for `cfg.rounds` rounds (0: forever), rounds
    /// overlapping ([`ROUNDS_IN_FLIGHT`]) in one routed `map_reduce` whose
    /// partials are folded per round as they arrive; each round's
    /// fleet-level checks run, and the observer hears of it, once all of
    /// its hosts are in, in round order. A round starts `cfg.interval`
    /// after the one before at the earliest. (`cfg.concurrency` is not
    /// used: the pool's settings are.) On agents, rounds run one after the
    /// other ([`PoolScanner::round`]), each keeping the hosts' history.
    pub async fn scan<O>(&self, cfg: &ScanConfig, observer: Arc<Mutex<O>>) -> Result<Report, Error>
    where
        O: RoundObserver + 'static,
    {
        if self.cluster.is_some() {
            return self.scan_round_by_round(cfg, observer).await;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(HostSpec, u64)>();
        let inputs = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut call = self
            .pool
            .map_reduce_stream(scrape, inputs, RoundsReducer)
            .route_by(route_host);
        if let Some(n) = self.chunk {
            call = call.chunk_size(n);
        }
        let mut pieces = call.partials();
        let mut rounds = RoundPipeline::new(cfg, ROUNDS_IN_FLIGHT, Some(tx));
        let mut total = Report::default();
        loop {
            rounds.start_due(cfg);
            while let Some((round, rep)) = rounds.pop_complete() {
                complete_round(&mut total, rep, round, &self.checks, &observer);
                rounds.start_due(cfg);
            }
            if rounds.is_over() {
                return Ok(total);
            }
            let piece = tokio::select! {
                piece = pieces.next() => piece,
                () = rounds.next_start() => continue,
            };
            let round = rounds.oldest();
            let Some(piece) = piece else {
                let (got, want) = rounds.oldest_progress();
                let source = RoundError::Incomplete { got, want };
                return Err(Error::Round { round, source });
            };
            match piece.map_err(RoundError::Pool) {
                Ok(Partial::Folded { value, .. }) => {
                    for part in value {
                        if let Ok(o) = observer.lock() {
                            o.hosts_done(part.hosts);
                        }
                        rounds.fold(part.round, part.hosts, part.report);
                    }
                }
                Ok(Partial::Failed { index, error }) => {
                    if error.is_restart_intensity() || error.is_pool_closed() {
                        let source = RoundError::Pool(error);
                        return Err(Error::Round { round, source });
                    }
                    if let Some((spec, round)) = rounds.input(index) {
                        if let Ok(o) = observer.lock() {
                            o.host_done();
                        }
                        let _ = rounds.add(task_failed(&spec, round, &error));
                    }
                }
                Err(source) => return Err(Error::Round { round, source }),
            }
        }
    }

    /// [`PoolScanner::scan`] one [`PoolScanner::round`] after the other
    /// (on agents: a scan that finds no agent says so after
    /// [`AGENT_HINT_AFTER`], and goes on waiting).
    async fn scan_round_by_round<O>(
        &self,
        cfg: &ScanConfig,
        observer: Arc<Mutex<O>>,
    ) -> Result<Report, Error>
    where
        O: RoundObserver + 'static,
    {
        let hint = async {
            if self.cluster.is_none() {
                return;
            }
            let joined = self.pool.wait_for_hosts(|hosts| !hosts.is_empty());
            if tokio::time::timeout(AGENT_HINT_AFTER, joined)
                .await
                .is_err()
            {
                tracing::warn!(
                    "no agent has joined this scan's pool yet; waiting for one \
                     (start `fleetcheck agent --cluster URL` on each agent machine, \
                     URL and pool as the runner's --cluster)"
                );
            }
        };
        let scan = self.rounds_in_turn(cfg, observer);
        tokio::pin!(scan);
        tokio::select! {
            scanned = &mut scan => return scanned,
            () = hint => {}
        }
        scan.await
    }

    async fn rounds_in_turn<O>(
        &self,
        cfg: &ScanConfig,
        observer: Arc<Mutex<O>>,
    ) -> Result<Report, Error>
    where
        O: RoundObserver + 'static,
    {
        let mut total = Report::default();
        let mut round = 0u64;
        while cfg.rounds == 0 || round < cfg.rounds {
            let start = Instant::now();
            let targets = cfg.round_targets();
            let mut rep = self.round(&targets, round).await?;
            if self.cluster.is_some() {
                tracing::info!(round, points = rep.points, "round done on the cluster");
            }
            rep.finish_round(&self.checks, round);
            total.merge(rep);
            if let Ok(mut o) = observer.lock() {
                o.hosts_done(targets.len() as u64);
                o.round_done(round, &total);
            }
            round += 1;
            if !cfg.interval.is_zero() && (cfg.rounds == 0 || round < cfg.rounds) {
                tokio::time::sleep_until((start + cfg.interval).into()).await;
            }
        }
        Ok(total)
    }

    /// Let the workers finish and exit.
    pub async fn close(self) -> Result<(), Error> {
        self.pool.close().await.map_err(|source| Error::Pool {
            what: "closing the worker pool",
            source,
        })
    }
}

/// The finding of a host whose scrape task failed in the pool itself.
fn task_failed(spec: &HostSpec, round: u64, e: &multiloop::Error) -> HostRound {
    HostRound::failed(
        spec.id,
        round,
        POOL_FAILURE_CHECK,
        format!("scrape task failed in the pool: {e}"),
    )
}

/// Start a pool, scan, close the pool.
pub async fn scan_pool<O>(
    cfg: &ScanConfig,
    init: WorkerInit,
    settings: PoolSettings,
    observer: Arc<Mutex<O>>,
) -> Result<Report, Error>
where
    O: RoundObserver + 'static,
{
    let scanner = PoolScanner::start(init, settings).await?;
    let report = scanner.scan(cfg, observer).await?;
    scanner.close().await?;
    Ok(report)
}
