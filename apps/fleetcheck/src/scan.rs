//! Scanning: the per-host unit of work ([`scrape_host`], shared by every
//! runner) and the in-process baseline ([`scan_inprocess`]) on a tokio
//! multi-thread runtime without a process pool.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::checks::Checks;
use crate::http::{FetchConfig, HttpClient};
use crate::report::Report;
use crate::state::{HostRound, HostState, scrape_round};

/// One target.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostSpec {
    /// Dense host id (index into the target list).
    pub id: u32,
    /// URL to scrape.
    pub url: String,
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
) -> Result<Vec<u8>, crate::http::FetchError> {
    client.get(&opts.url(spec, round), &opts.fetch()).await
}

/// Turn a fetch result into a [`HostRound`] (sync; runs the checks).
pub fn process_page(
    state: &mut HostState,
    checks: &Checks,
    round: u64,
    now: f64,
    page: Result<Vec<u8>, crate::http::FetchError>,
) -> HostRound {
    match page {
        Ok(p) => scrape_round(state, checks, &p, round, now),
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
    let mut hr = process_page(state, checks, round, now, page);
    hr.secs = start.elapsed().as_secs_f64();
    hr
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

/// The baseline: scan all targets for all rounds in this process on the
/// current (multi-thread) tokio runtime. `concurrency` tasks pull hosts from
/// a per-round work queue; every host keeps its [`HostState`] across rounds.
pub async fn scan_inprocess<O>(
    cfg: &ScanConfig,
    checks: Arc<Checks>,
    observer: Arc<std::sync::Mutex<O>>,
) -> Report
where
    O: RoundObserver + 'static,
{
    let client = Arc::new(HttpClient::new());
    let ntasks = cfg.concurrency.clamp(1, cfg.targets.len().max(1));
    let targets: Arc<Vec<HostSpec>> = Arc::new(cfg.targets.clone());
    let states: Arc<Vec<std::sync::Mutex<HostState>>> = Arc::new(
        cfg.targets
            .iter()
            .map(|t| std::sync::Mutex::new(HostState::new(t.id)))
            .collect(),
    );
    let mut total = Report::default();
    let mut round = 0u64;
    loop {
        if cfg.rounds != 0 && round >= cfg.rounds {
            break;
        }
        let start = Instant::now();
        // Work queue: each task takes the next host; a host's state is only
        // touched by the task scraping it (the mutex is uncontended).
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(ntasks);
        for _ in 0..ntasks {
            let (client, checks, targets, states, next) = (
                client.clone(),
                checks.clone(),
                targets.clone(),
                states.clone(),
                next.clone(),
            );
            let opts = cfg.opts;
            let obs = observer.clone();
            handles.push(tokio::spawn(async move {
                let mut part = Report::default();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(spec) = targets.get(i) else { break };
                    let page = fetch_page(&client, spec, round, &opts).await;
                    let now = opts.clock.now(round);
                    let hr = match states[i].lock() {
                        Ok(mut st) => process_page(&mut st, &checks, round, now, page),
                        Err(_) => HostRound::failed(
                            spec.id,
                            round,
                            "internal",
                            "host state poisoned".into(),
                        ),
                    };
                    part.add(hr);
                    if let Ok(o) = obs.lock() {
                        o.host_done();
                    }
                }
                part
            }));
        }
        let mut round_rep = Report::default();
        for h in handles {
            match h.await {
                Ok(part) => round_rep.merge(part),
                Err(e) => eprintln!("fleetcheck: scan task failed: {e}"),
            }
        }
        round_rep.finish_round(&checks, round);
        total.merge(round_rep);
        if let Ok(mut o) = observer.lock() {
            o.round_done(round, &total);
        }
        round += 1;
        if !cfg.interval.is_zero() && (cfg.rounds == 0 || round < cfg.rounds) {
            tokio::time::sleep_until((start + cfg.interval).into()).await;
        }
    }
    total
}
