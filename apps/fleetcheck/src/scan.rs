//! Scanning: the per-host unit of work ([`scrape_host`], shared by every
//! runner) and the in-process baseline ([`scan_inprocess`]) on a tokio
//! multi-thread runtime without a process pool.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::checks::Checks;
use crate::http::{ClientSettings, FetchConfig, HttpClient, Page};
use crate::report::Report;
use futures_util::FutureExt;

use crate::state::{HostRound, HostState};
use crate::worker::{HostTurn, WorkerState};

/// Seconds between two rounds of the simulated fleet, the step of the
/// scanner's logical clock ([`Clock::Logical`]).
pub const SIMULATED_STEP_SECS: f64 = 15.0;

/// One target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostSpec {
    /// Dense host id (index into the target list).
    pub id: u32,
    /// URL to scrape.
    pub url: String,
    /// Target group: index of its [`ClientSettings`] (TLS, auth) in the
    /// scan's `clients` (0 when there is one group).
    #[serde(default)]
    pub group: u32,
}

/// Where the time of a round comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Clock {
    /// Wall clock at scrape time.
    Wall,
    /// Round `n` is at `n * step` seconds (deterministic; simulated fleet).
    Logical {
        /// Seconds per round.
        step: f64,
    },
}

impl Clock {
    /// Time (seconds) of `round` now.
    pub fn now(&self, round: u64) -> f64 {
        match self {
            Clock::Wall => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            Clock::Logical { step } => round as f64 * step,
        }
    }
}

/// Per-round options of a scrape (serde: sent to workers once).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScrapeOptions {
    /// Timeout per request (ms).
    pub timeout_ms: u64,
    /// Body size cap (bytes).
    pub max_bytes: usize,
    /// Append `round=N` to the URL's query (built-in fleet).
    pub round_query: bool,
    /// Time source.
    pub clock: Clock,
}

impl Default for ScrapeOptions {
    fn default() -> Self {
        ScrapeOptions {
            timeout_ms: 10_000,
            max_bytes: 16 << 20,
            round_query: false,
            clock: Clock::Wall,
        }
    }
}

impl ScrapeOptions {
    /// Fetch limits.
    pub fn fetch(&self) -> FetchConfig {
        FetchConfig {
            timeout: Duration::from_millis(self.timeout_ms),
            max_bytes: self.max_bytes,
            round: None,
        }
    }

    /// URL to request for `spec` in `round`.
    pub fn url(&self, spec: &HostSpec, round: u64) -> String {
        if !self.round_query {
            return spec.url.clone();
        }
        let sep = if spec.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}round={round}", spec.url)
    }
}

/// Fetch a host's page for `round` (async; no host state involved).
pub async fn fetch_page(
    client: &HttpClient,
    spec: &HostSpec,
    round: u64,
    opts: &ScrapeOptions,
) -> Result<Page, crate::http::FetchError> {
    let fetch = FetchConfig {
        round: Some(round),
        ..opts.fetch()
    };
    client.get(&opts.url(spec, round), &fetch).await
}

/// One client per target group (`settings[i]` for group `i`; one default
/// client when `settings` is empty). Settings errors are reported by each
/// fetch of that group.
pub fn clients_for(settings: &[ClientSettings]) -> Vec<HttpClient> {
    if settings.is_empty() {
        return vec![HttpClient::new()];
    }
    settings.iter().map(HttpClient::for_settings).collect()
}

/// The client of `spec`'s group (the first one for an unknown group).
pub fn client_of<'c>(clients: &'c [HttpClient], spec: &HostSpec) -> Option<&'c HttpClient> {
    clients.get(spec.group as usize).or_else(|| clients.first())
}

/// Turn a fetch result into a [`HostRound`] (sync; runs the checks).
pub fn process_page(
    state: &mut HostState,
    checks: &Checks,
    round: u64,
    now: f64,
    page: &Result<Page, crate::http::FetchError>,
) -> HostRound {
    match page {
        Ok(p) => crate::state::scrape_page(state, checks, &p.body, p.format, round, now),
        Err(e) => {
            state.not_updated();
            HostRound::failed(state.host(), round, e.check_name(), e.to_string())
        }
    }
}

/// Fetch + parse + check one host for one round.
pub async fn scrape_host(
    client: &HttpClient,
    state: &mut HostState,
    checks: &Checks,
    spec: &HostSpec,
    round: u64,
    opts: &ScrapeOptions,
) -> HostRound {
    let start = Instant::now();
    let page = fetch_page(client, spec, round, opts).await;
    let now = opts.clock.now(round);
    let mut hr = process_page(state, checks, round, now, &page);
    if let Ok(p) = page {
        client.recycle(p.body);
    }
    hr.secs = start.elapsed().as_secs_f64();
    hr
}

/// Read a targets file ([`parse_targets`]); a file without any target is
/// an error, never an empty scan.
pub fn load_targets(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let urls = parse_targets(&text);
    if urls.is_empty() {
        return Err(format!(
            "{}: no targets in this file (one URL per line)",
            path.display()
        ));
    }
    Ok(urls)
}

/// Parse a targets file: one URL per line, `#` comments and blank lines ignored.
pub fn parse_targets(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Host specs for a list of URLs (ids are the indexes).
pub fn host_specs(urls: &[String]) -> Vec<HostSpec> {
    urls.iter()
        .enumerate()
        .map(|(i, u)| HostSpec {
            id: i as u32,
            url: u.clone(),
            group: 0,
        })
        .collect()
}

/// Configuration of the in-process scan.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Targets.
    pub targets: Vec<HostSpec>,
    /// Rounds (0: forever).
    pub rounds: u64,
    /// Minimum time between round starts.
    pub interval: Duration,
    /// Concurrent scrapes (shards).
    pub concurrency: usize,
    /// Scrape options.
    pub opts: ScrapeOptions,
    /// Client settings per target group ([`HostSpec::group`]); empty: one
    /// default client.
    pub clients: Vec<ClientSettings>,
    /// File-based discovery: when set, the targets of each round are its
    /// active targets, re-read at the round's start (`targets` is then
    /// only the first round's list).
    pub discovery: Option<Arc<std::sync::Mutex<crate::discovery::Targets>>>,
}

impl ScanConfig {
    /// The targets of the round starting now: file-SD files re-read when
    /// they changed (a failing file keeps its last good targets, and the
    /// error is printed).
    pub fn round_targets(&self) -> Vec<HostSpec> {
        let Some(d) = &self.discovery else {
            return self.targets.clone();
        };
        match d.lock() {
            Ok(mut t) => {
                if let Err(e) = t.refresh() {
                    tracing::warn!("file-based discovery: {e} (keeping the last good targets)");
                }
                t.active().to_vec()
            }
            Err(_) => self.targets.clone(),
        }
    }
}

/// Called after each finished round with the round and the cumulative report.
pub trait RoundObserver: Send {
    /// One host done.
    fn host_done(&self) {}
    /// `n` hosts done at once (the pool reports a whole round).
    fn hosts_done(&self, n: u64) {
        for _ in 0..n {
            self.host_done();
        }
    }
    /// A round finished.
    fn round_done(&mut self, _round: u64, _report: &Report) {}
}

impl RoundObserver for () {}

/// Where a started round's scrapes go: the runner's inputs.
pub(crate) trait ScrapeSink {
    /// The scrapes of `round`, one per target, in target order.
    fn send_round(&mut self, targets: &[HostSpec], round: u64);
    /// No round will start any more: the inputs end.
    fn close(&mut self);
}

/// The pool's sink: the stream of a `map_reduce`'s inputs.
impl ScrapeSink for Option<tokio::sync::mpsc::UnboundedSender<(HostSpec, u64)>> {
    fn send_round(&mut self, targets: &[HostSpec], round: u64) {
        if let Some(tx) = self {
            for spec in targets {
                // The call holds the receiver until its inputs end.
                let _ = tx.send((spec.clone(), round));
            }
        }
    }
    fn close(&mut self) {
        *self = None;
    }
}

/// The rounds of a scan whose rounds overlap (both runners): which are
/// started, what has come back of each, when the next may start. A round
/// starts when fewer than `in_flight` rounds are incomplete and
/// `interval` has passed since the last one started; its scrapes go, in
/// target order, to the sink, which is closed once the last round has
/// started. Rounds complete in order.
pub(crate) struct RoundPipeline<S: ScrapeSink> {
    sink: S,
    /// Started rounds not complete yet, oldest first.
    flights: std::collections::VecDeque<Flight>,
    in_flight: usize,
    next_round: u64,
    /// Input index (scrapes sent before) of the next round's first scrape.
    next_index: u64,
    next_at: Instant,
    interval: Duration,
    rounds: u64,
}

/// One started round.
struct Flight {
    round: u64,
    targets: Vec<HostSpec>,
    /// Input index of the round's first scrape.
    base: u64,
    report: Report,
    hosts_in: u64,
}

impl<S: ScrapeSink> RoundPipeline<S> {
    pub(crate) fn new(cfg: &ScanConfig, in_flight: usize, sink: S) -> Self {
        RoundPipeline {
            sink,
            flights: Default::default(),
            in_flight: in_flight.max(1),
            next_round: 0,
            next_index: 0,
            next_at: Instant::now(),
            interval: cfg.interval,
            rounds: cfg.rounds,
        }
    }

    fn all_started(&self) -> bool {
        self.rounds != 0 && self.next_round >= self.rounds
    }

    /// Starts the rounds that may start now.
    pub(crate) fn start_due(&mut self, cfg: &ScanConfig) {
        while !self.all_started()
            && self.flights.len() < self.in_flight
            && Instant::now() >= self.next_at
        {
            let round = self.next_round;
            let targets = cfg.round_targets();
            self.sink.send_round(&targets, round);
            let base = self.next_index;
            self.next_index += targets.len() as u64;
            self.flights.push_back(Flight {
                round,
                targets,
                base,
                report: Report::default(),
                hosts_in: 0,
            });
            self.next_round += 1;
            self.next_at = Instant::now() + self.interval;
        }
        if self.all_started() {
            self.sink.close();
        }
    }

    /// When the next round may start on time (`None`: time is not what
    /// holds it: all started, or too many in flight).
    pub(crate) fn next_start_at(&self) -> Option<Instant> {
        (!self.all_started() && self.flights.len() < self.in_flight).then_some(self.next_at)
    }

    /// Waits until the next round may start on time (forever when time is
    /// not what holds it).
    pub(crate) async fn next_start(&self) {
        until(self.next_start_at()).await;
    }

    /// The oldest round not complete (the next one when none is running).
    pub(crate) fn oldest(&self) -> u64 {
        self.flights.front().map_or(self.next_round, |f| f.round)
    }

    /// Host results in, and expected, of the oldest round.
    pub(crate) fn oldest_progress(&self) -> (u64, u64) {
        self.flights
            .front()
            .map_or((0, 0), |f| (f.hosts_in, f.targets.len() as u64))
    }

    /// The scrape sent with input index `index`.
    pub(crate) fn input(&self, index: u64) -> Option<(HostSpec, u64)> {
        let f = self
            .flights
            .iter()
            .find(|f| index >= f.base && index < f.base + f.targets.len() as u64)?;
        let spec = f.targets.get(usize::try_from(index - f.base).ok()?)?;
        Some((spec.clone(), f.round))
    }

    /// Results of `hosts` scrapes of `round` are in.
    pub(crate) fn fold(&mut self, round: u64, hosts: u64, report: Report) {
        if let Some(f) = self.flights.iter_mut().find(|f| f.round == round) {
            f.hosts_in += hosts;
            f.report.merge(report);
        }
    }

    /// The result of one scrape is in. True when the oldest round is
    /// now complete.
    pub(crate) fn add(&mut self, hr: HostRound) -> bool {
        if let Some(f) = self.flights.iter_mut().find(|f| f.round == hr.round) {
            f.hosts_in += 1;
            f.report.add(hr);
        }
        self.flights
            .front()
            .is_some_and(|f| f.hosts_in >= f.targets.len() as u64)
    }

    /// The oldest round and its report, once all of its hosts are in.
    pub(crate) fn pop_complete(&mut self) -> Option<(u64, Report)> {
        let f = self.flights.front()?;
        if f.hosts_in < f.targets.len() as u64 {
            return None;
        }
        let f = self.flights.pop_front()?;
        Some((f.round, f.report))
    }

    /// Every round started and complete.
    pub(crate) fn is_over(&self) -> bool {
        self.all_started() && self.flights.is_empty()
    }
}

/// A round is complete: its fleet-level checks run, it joins `total`, and
/// the observer hears of it.
pub(crate) fn complete_round<O: RoundObserver>(
    total: &mut Report,
    mut rep: Report,
    round: u64,
    checks: &Checks,
    observer: &std::sync::Mutex<O>,
) {
    rep.finish_round(checks, round);
    total.merge(rep);
    if let Ok(mut o) = observer.lock() {
        o.round_done(round, total);
    }
}

/// Sleeps until `at` (forever when `None`).
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Rounds the in-process scan keeps in flight (as the pool's:
/// [`crate::pool::ROUNDS_IN_FLIGHT`]).
pub const ROUNDS_IN_FLIGHT: usize = 2;

/// The in-process scan's shared queue of the started rounds' scrapes.
#[derive(Default)]
struct Dispenser {
    queue: std::sync::Mutex<(std::collections::VecDeque<(HostSpec, u64)>, bool)>,
    /// Scrapes were queued, or the queue was closed.
    more: tokio::sync::Notify,
}

/// What a scan task finds in the queue.
enum Take {
    /// A scrape, with its turn on its host taken as it was taken.
    Scrape(HostSpec, u64, Option<HostTurn>),
    Empty,
    Closed,
}

impl Dispenser {
    fn take(&self, worker: &WorkerState) -> Take {
        let Ok(mut q) = self.queue.lock() else {
            return Take::Closed;
        };
        match q.0.pop_front() {
            // Under the queue's lock: a host's turns follow the rounds.
            Some((spec, round)) => {
                let turn = worker.turn(spec.id);
                Take::Scrape(spec, round, turn)
            }
            None if q.1 => Take::Closed,
            None => Take::Empty,
        }
    }

    /// The next scrape and its turn (`None`: the scan is over).
    async fn next(&self, worker: &WorkerState) -> Option<(HostSpec, u64, Option<HostTurn>)> {
        loop {
            let more = self.more.notified();
            tokio::pin!(more);
            more.as_mut().enable();
            match self.take(worker) {
                Take::Scrape(spec, round, turn) => return Some((spec, round, turn)),
                Take::Closed => return None,
                Take::Empty => more.await,
            }
        }
    }
}

impl ScrapeSink for Arc<Dispenser> {
    fn send_round(&mut self, targets: &[HostSpec], round: u64) {
        if let Ok(mut q) = self.queue.lock() {
            q.0.extend(targets.iter().map(|s| (s.clone(), round)));
        }
        self.more.notify_waiters();
    }
    fn close(&mut self) {
        if let Ok(mut q) = self.queue.lock() {
            q.1 = true;
        }
        self.more.notify_waiters();
    }
}

/// The baseline: scan all targets for all rounds in this process on the
/// current (multi-thread) tokio runtime. `concurrency` tasks take the
/// scrapes of the started rounds in order (rounds overlap as on the pool:
/// [`ROUNDS_IN_FLIGHT`]); every host keeps its [`HostState`] across
/// rounds, in one [`WorkerState`] as a pool worker keeps its hosts, and a
/// host's scrapes run one after the other in round order.
pub async fn scan_inprocess<O>(
    cfg: &ScanConfig,
    checks: Arc<Checks>,
    observer: Arc<std::sync::Mutex<O>>,
) -> Report
where
    O: RoundObserver + 'static,
{
    let worker = Arc::new(
        WorkerState::with_shared_checks(checks.clone(), cfg.opts).with_clients(&cfg.clients),
    );
    let dispenser = Arc::new(Dispenser::default());
    let rounds = Arc::new(std::sync::Mutex::new(RoundPipeline::new(
        cfg,
        ROUNDS_IN_FLIGHT,
        dispenser.clone(),
    )));
    // A round completed (a permit is kept when nobody waits).
    let round_done = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..cfg.concurrency.max(1) {
        let (worker, dispenser, rounds, round_done, obs) = (
            worker.clone(),
            dispenser.clone(),
            rounds.clone(),
            round_done.clone(),
            observer.clone(),
        );
        tasks.spawn(async move {
            while let Some((spec, round, turn)) = dispenser.next(&worker).await {
                let scrape = async {
                    match turn {
                        Some(turn) => worker.scrape_in_turn(turn, &spec, round).await,
                        None => HostRound::failed(
                            spec.id,
                            round,
                            "internal",
                            "host state poisoned".into(),
                        ),
                    }
                };
                // A check that panics costs its host this round, not the
                // scan (and never a round that waits forever).
                let hr = match std::panic::AssertUnwindSafe(scrape).catch_unwind().await {
                    Ok(hr) => hr,
                    Err(_) => {
                        HostRound::failed(spec.id, round, "internal", "the scrape panicked".into())
                    }
                };
                if let Ok(o) = obs.lock() {
                    o.host_done();
                }
                if rounds.lock().is_ok_and(|mut r| r.add(hr)) {
                    round_done.notify_one();
                }
            }
        });
    }
    let mut total = Report::default();
    loop {
        let (complete, over, next_at) = {
            let Ok(mut r) = rounds.lock() else { break };
            let mut complete = Vec::new();
            r.start_due(cfg);
            while let Some(c) = r.pop_complete() {
                complete.push(c);
                r.start_due(cfg);
            }
            (complete, r.is_over(), r.next_start_at())
        };
        for (round, rep) in complete {
            complete_round(&mut total, rep, round, &checks, &observer);
        }
        if over {
            break;
        }
        tokio::select! {
            () = round_done.notified() => {}
            () = until(next_at) => {}
        }
    }
    dispenser.clone().close();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!("scan task failed: {e}");
        }
    }
    total
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A sink that records what it is sent.
    #[derive(Default)]
    struct Recorder {
        sent: Vec<(u32, u64)>,
        closed: bool,
    }

    impl ScrapeSink for &mut Recorder {
        fn send_round(&mut self, targets: &[HostSpec], round: u64) {
            assert!(!self.closed, "round {round} sent after the inputs ended");
            self.sent.extend(targets.iter().map(|t| (t.id, round)));
        }
        fn close(&mut self) {
            self.closed = true;
        }
    }

    fn config(hosts: u32, rounds: u64) -> ScanConfig {
        ScanConfig {
            targets: (0..hosts)
                .map(|id| HostSpec {
                    id,
                    url: format!("http://h{id}/metrics"),
                    group: 0,
                })
                .collect(),
            rounds,
            interval: Duration::ZERO,
            concurrency: 1,
            opts: ScrapeOptions::default(),
            clients: Vec::new(),
            discovery: None,
        }
    }

    proptest::proptest! {
        /// Results come back in any order (each pick answers one scrape
        /// sent and not answered yet): every round starts once, its
        /// scrapes go out in target order, never more than `in_flight`
        /// rounds are open, rounds complete in order once all of their
        /// hosts are in, and the inputs end after the last round.
        #[test]
        fn rounds_complete_in_order_whatever_order_results_come_in(
            hosts in 0u32..6,
            rounds in 1u64..7,
            in_flight in 1usize..4,
            picks in proptest::collection::vec(0usize..1000, 0..200),
        ) {
            let cfg = config(hosts, rounds);
            let mut sink = Recorder::default();
            let mut completed: Vec<(u64, u64)> = Vec::new();
            let mut answered = std::collections::HashSet::new();
            {
                let mut p = RoundPipeline::new(&cfg, in_flight, &mut sink);
                let mut picks = picks.into_iter().cycle();
                loop {
                    p.start_due(&cfg);
                    while let Some((round, rep)) = p.pop_complete() {
                        completed.push((round, rep.scrape_failures));
                        p.start_due(&cfg);
                    }
                    proptest::prop_assert!(p.flights.len() <= in_flight);
                    if p.is_over() {
                        break;
                    }
                    let open: Vec<(u32, u64)> = p
                        .flights
                        .iter()
                        .flat_map(|f| f.targets.iter().map(move |t| (t.id, f.round)))
                        .filter(|x| !answered.contains(x))
                        .collect();
                    proptest::prop_assert!(!open.is_empty(), "rounds open, nothing to answer");
                    let (host, round) = open[picks.next().unwrap_or(0) % open.len()];
                    answered.insert((host, round));
                    let _ = p.add(HostRound::failed(host, round, "test", String::new()));
                }
            }
            let each_round: Vec<(u64, u64)> = (0..rounds).map(|r| (r, u64::from(hosts))).collect();
            proptest::prop_assert_eq!(completed, each_round);
            let sent: Vec<(u32, u64)> =
                (0..rounds).flat_map(|r| (0..hosts).map(move |h| (h, r))).collect();
            proptest::prop_assert_eq!(&sink.sent, &sent);
            proptest::prop_assert!(sink.closed);
        }
    }
}
