//! Scanning: the per-host unit of work ([`scrape_host`], shared by every
//! runner) and the in-process baseline ([`scan_inprocess`]) on a tokio
//! multi-thread runtime without a process pool.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::checks::Checks;
use crate::http::{ClientSettings, FetchConfig, HttpClient, Page};
use crate::report::Report;
use crate::state::{HostRound, HostState};

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
    let clients = Arc::new(clients_for(&cfg.clients));
    // Host states are indexed by host id and grow when discovery adds hosts.
    let mut states: Arc<Vec<std::sync::Mutex<HostState>>> = Arc::new(Vec::new());
    let mut total = Report::default();
    let mut round = 0u64;
    loop {
        if cfg.rounds != 0 && round >= cfg.rounds {
            break;
        }
        let start = Instant::now();
        let targets: Arc<Vec<HostSpec>> = Arc::new(cfg.round_targets());
        let want = targets.iter().map(|t| t.id as usize + 1).max().unwrap_or(0);
        if want > states.len() {
            // Every task of the last round was joined: the Arc is ours alone.
            if let Some(v) = Arc::get_mut(&mut states) {
                let n = v.len();
                v.extend((n..want).map(|id| std::sync::Mutex::new(HostState::new(id as u32))));
            }
        }
        let ntasks = cfg.concurrency.clamp(1, targets.len().max(1));
        // Work queue: each task takes the next host; a host's state is only
        // touched by the task scraping it (the mutex is uncontended).
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut handles = Vec::with_capacity(ntasks);
        for _ in 0..ntasks {
            let (clients, checks, targets, states, next) = (
                clients.clone(),
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
                    let page = match client_of(&clients, spec) {
                        Some(c) => fetch_page(c, spec, round, &opts).await,
                        None => Err(crate::http::FetchError::Http("no HTTP client".into())),
                    };
                    let now = opts.clock.now(round);
                    let st = states.get(spec.id as usize).map(|s| s.lock());
                    let hr = match st {
                        Some(Ok(mut st)) => process_page(&mut st, &checks, round, now, &page),
                        _ => HostRound::failed(
                            spec.id,
                            round,
                            "internal",
                            "host state missing or poisoned".into(),
                        ),
                    };
                    if let (Ok(p), Some(c)) = (page, client_of(&clients, spec)) {
                        c.recycle(p.body);
                    }
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
                Err(e) => tracing::error!("scan task failed: {e}"),
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
