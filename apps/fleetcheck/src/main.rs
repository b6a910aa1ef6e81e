//! fleetcheck command line.
//!
//! * `fleetcheck scan` (also with no subcommand at all): start the built-in
//!   simulated fleet in a child process (or take `--target`s), scan it for
//!   10 rounds on a pool of worker processes (`multiloop`), print the report
//!   and verify the findings against the injected anomalies. `--mode
//!   inprocess` (or `--baseline`) scans on the in-process tokio baseline.
//! * `fleetcheck run`: the monitoring service ([`fleetcheck::service`]).
//! * `fleetcheck serve-fleet`: the simulated fleet alone.
//! * `fleetcheck bench`: the pool and the in-process baseline side by side.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use fleetcheck::Error;
use fleetcheck::bench::{self, BenchRun, RoundMem};
use fleetcheck::checks::Checks;
use fleetcheck::cluster::ClusterAddr;
use fleetcheck::config::{LogFormat, RunArgs, ServiceConfig};
use fleetcheck::fleet::{Fleet, FleetConfig, FleetServer, STEP_SECS, spawn_fleet_process};
use fleetcheck::local_cluster::{LocalCluster, server_binary};
use fleetcheck::pool::{
    CLUSTER_PARTITIONS, DEFAULT_CONCURRENCY, DEFAULT_WORKER_CONCURRENCY, LOOPBACK_CHUNK,
    LOOPBACK_CONCURRENCY, LOOPBACK_WORKER_CONCURRENCY, PoolScanner, PoolSettings,
    default_processes,
};
use fleetcheck::report::{ExpectedFinding, RenderCtx, Report, render_json, render_table, verify};
use fleetcheck::rules::Rules;
use fleetcheck::scan::{
    Clock, RoundObserver, ScanConfig, ScrapeOptions, host_specs, scan_inprocess,
};
use fleetcheck::worker::WorkerInit;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser, Debug)]
#[command(
    name = "fleetcheck",
    version,
    about = "Scrape a fleet of Prometheus endpoints in rounds, run checks, report anomalies and alert.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// No subcommand: `scan` with these options.
    #[command(flatten)]
    scan: ScanArgs,
}

/// The options of `fleetcheck scan` (one struct, so that more scrape
/// options can be flattened in with one line).
#[derive(clap::Args, Debug, Clone)]
struct ScanArgs {
    /// File with one target URL per line (`#` comments allowed).
    #[arg(long)]
    targets: Option<PathBuf>,
    /// Target URL (repeatable).
    #[arg(long = "target")]
    target: Vec<String>,
    /// Rules file (TOML); the built-in rules are used by default.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Print the built-in rules as TOML and exit.
    #[arg(long)]
    print_rules: bool,
    /// Rounds to scan (0 = forever).
    #[arg(long, default_value_t = 10)]
    rounds: u64,
    /// Seconds between round starts (0 = back to back).
    #[arg(long, default_value_t = 0.0)]
    interval: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Hosts of the built-in fleet.
    #[arg(long, default_value_t = 1000)]
    fleet_hosts: u32,
    /// Series per host of the built-in fleet.
    #[arg(long, default_value_t = 2000)]
    fleet_series: u32,
    /// Seed of the built-in fleet.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Shortcut: total points (e.g. 100M) = 1000 hosts x 2000 series x rounds.
    #[arg(long)]
    points: Option<String>,
    /// Where scrapes run: a pool of worker processes, or the in-process
    /// tokio baseline.
    #[arg(long, value_enum, default_value_t = Mode::Pool)]
    mode: Mode,
    /// Shortcut for `--mode inprocess`.
    #[arg(long)]
    baseline: bool,
    /// Worker processes of the pool (0 = number of cores).
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Concurrent scrapes of the in-process baseline (in total; default
    /// 64, or 16 on the built-in fleet).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Concurrent scrapes per worker process of the pool (default 64, or 8
    /// on the built-in fleet).
    #[arg(long)]
    worker_concurrency: Option<usize>,
    /// Benchmark: scan the built-in fleet on the pool and then in-process
    /// (same fleet, same run) and print wall time, points/s, CPU time and
    /// peak RSS per round side by side. Without `--points`: the headline
    /// 100M points (1000 hosts x 2000 series x 50 rounds).
    #[arg(long)]
    bench: bool,
    /// Benchmark: also scan the same fleet with the Python version
    /// (`apps/fleetcheck/anchors/fleetcheck_py.py`: aiomultiprocess, aiohttp,
    /// uvloop) right after fleetcheck, check that both find the same
    /// anomalies and print points/s and CPU per point of each. The packages
    /// are installed into `target/venv-fleetcheck-anchor` when missing.
    #[arg(long)]
    anchors: bool,
    /// Python interpreter for `--anchors` that already has the packages of
    /// `anchors/requirements.txt` (default: the virtual environment).
    #[arg(long, value_name = "PATH")]
    anchor_python: Option<PathBuf>,
    /// `--anchors`: fleetcheck and the Python version this many times, one
    /// after the other (medians printed after the pairs).
    #[arg(long, default_value_t = 1, value_name = "N")]
    anchor_pairs: usize,
    /// Per-request timeout in milliseconds (at least 1).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Maximum page size in bytes (at least 1).
    #[arg(long, default_value_t = 16 << 20, value_parser = at_least_one)]
    max_page_bytes: usize,
    /// Time source for rates: auto = logical for the built-in fleet, wall otherwise.
    #[arg(long, value_enum, default_value_t = ClockArg::Auto)]
    clock: ClockArg,
    /// Never show the progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Rows of findings listed in the table output.
    #[arg(long, default_value_t = 40)]
    max_listed: usize,
    #[command(flatten)]
    scrape: fleetcheck::scrape_args::ScrapeArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Where `scan` and `bench` run their scrapes besides local workers.
#[derive(clap::Args, Debug, Clone)]
struct ClusterArgs {
    /// Send the scrapes to the agents of a cluster (`fleetcheck agent`)
    /// through the nats-server at `nats://host:4222[/pool]` instead of
    /// local worker processes; `--processes` is then the number of
    /// partitions (default 12).
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// Seconds an agent may go silent before its partitions move to
    /// another agent (with `--cluster`).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    cluster_ack_wait: f64,
    /// `bench`: also scan on this many agents on this machine (started
    /// with their own nats-server), side by side with the local pool.
    #[arg(long, default_value_t = 0, value_name = "N")]
    cluster_agents: usize,
    /// nats-server 2.11+ binary for `--cluster-agents` (default:
    /// `$MULTILOOP_NATS_SERVER`, else `nats-server` on PATH).
    #[arg(long, value_name = "PATH")]
    nats_server: Option<PathBuf>,
}

impl ClusterArgs {
    /// The cluster of `--cluster`, if any.
    fn config(&self) -> Result<Option<multiloop::cluster::ClusterConfig>, Error> {
        let Some(url) = &self.cluster else {
            return Ok(None);
        };
        let ack_wait = ack_wait_secs(self.cluster_ack_wait)?;
        Ok(Some(ClusterAddr::parse(url)?.config(ack_wait)))
    }
}

/// `--cluster-ack-wait`, checked.
fn ack_wait_secs(secs: f64) -> Result<Duration, Error> {
    if !(1.0..=3600.0).contains(&secs) {
        return Err(Error::Usage(format!(
            "--cluster-ack-wait {secs}: must be between 1 and 3600 seconds"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(clap::Args, Debug)]
struct AgentArgs {
    /// The cluster to serve: `nats://host:4222[/pool]`, as given to the
    /// runner's `--cluster`.
    #[arg(long, value_name = "URL")]
    cluster: String,
    /// Worker processes (0 = number of cores).
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Concurrent scrapes per worker process (8 suits the loopback
    /// simulated fleet).
    #[arg(long, default_value_t = DEFAULT_WORKER_CONCURRENCY)]
    worker_concurrency: usize,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One-shot scan and report (the default).
    Scan(ScanArgs),
    /// The monitoring service: rounds forever, alerts, /metrics.
    Run(Box<RunArgs>),
    /// The pool and the in-process baseline side by side on the built-in
    /// fleet (default: 100M points).
    Bench(ScanArgs),
    /// Run the simulated fleet alone (prints `listening http://ADDR` and the targets).
    ServeFleet(ServeFleetArgs),
    /// Serve a runner's scrapes (`run`/`scan --cluster`) on this machine's
    /// cores, through NATS; needs no config: the runner sends its rules
    /// and settings with the scrapes.
    Agent(AgentArgs),
}

#[derive(clap::Args, Debug)]
struct ServeFleetArgs {
    /// Hosts.
    #[arg(long, default_value_t = 1000)]
    hosts: u32,
    /// Series per host.
    #[arg(long, default_value_t = 2000)]
    series: u32,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Rounds the injection schedule spans.
    #[arg(long, default_value_t = 10)]
    rounds: u64,
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Write the target URLs to this file.
    #[arg(long)]
    targets_out: Option<PathBuf>,
    /// Print every target URL on stdout.
    #[arg(long)]
    print_targets: bool,
    /// Exit when stdin is closed (used when started by fleetcheck).
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
    /// Misbehaving hosts served after the regular ones, comma-separated:
    /// 500, garbage, oversize[:BYTES], slow[:MS].
    #[arg(long, value_delimiter = ',')]
    bad: Vec<fleetcheck::fleet::BadKind>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// `multiloop` process pool, hosts routed to workers by id.
    Pool,
    /// tokio multi-thread runtime in this process.
    Inprocess,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum ClockArg {
    Auto,
    Wall,
    Logical,
}

fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1_000),
        'm' | 'M' => (&s[..s.len() - 1], 1_000_000),
        'g' | 'G' => (&s[..s.len() - 1], 1_000_000_000),
        _ => (s, 1),
    };
    let v: f64 = num.parse().ok()?;
    (v >= 0.0).then_some((v * mul as f64) as u64)
}

struct Progress {
    pb: ProgressBar,
    /// Cumulative report after the last finished round (printed on Ctrl-C).
    last: Option<Report>,
    forever: bool,
}

impl RoundObserver for Progress {
    fn host_done(&self) {
        self.pb.inc(1);
    }
    fn hosts_done(&self, n: u64) {
        self.pb.inc(n);
    }
    fn round_done(&mut self, round: u64, r: &Report) {
        self.pb.set_message(format!(
            "round {} done, {} anomalies",
            round + 1,
            r.anomalies
        ));
        if self.forever {
            self.pb.suspend(|| {
                eprintln!(
                    "round {}: {} points, {} anomalies, {} scrape problems so far",
                    round + 1,
                    r.points,
                    r.anomalies,
                    r.scrape_failures
                )
            });
        }
        self.last = Some(r.clone());
    }
}

fn main() -> ExitCode {
    fleetcheck::malloc::tune();
    let cli = Cli::parse();
    let res = match cli.cmd {
        None => scan(cli.scan),
        Some(Cmd::Scan(a)) => scan(a),
        Some(Cmd::Bench(mut a)) => {
            a.bench = true;
            scan(a)
        }
        Some(Cmd::Run(a)) => run_service(*a),
        Some(Cmd::ServeFleet(a)) => serve_fleet(a).map(|()| 0),
        Some(Cmd::Agent(a)) => agent(a).map(|()| 0),
    };
    match res {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("fleetcheck: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the tokio runtime", e))
}

/// Logs on stderr: human-readable (colours on a terminal) or JSON lines.
/// The NATS client's connection chatter (every connect at INFO) is kept
/// to its warnings.
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let quiet = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("async_nats", tracing::Level::WARN);
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO);
    let _ = match format {
        LogFormat::Json => b.json().finish().with(quiet).try_init(),
        LogFormat::Human => b
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(quiet)
            .try_init(),
    };
}

/// `fleetcheck run`.
fn run_service(args: RunArgs) -> Result<u8, Error> {
    let cfg = ServiceConfig::from_args(&args)?;
    init_tracing(cfg.log_format);
    runtime()?.block_on(fleetcheck::service::run(args))?;
    Ok(0)
}

/// `fleetcheck agent`: serves until killed.
fn agent(a: AgentArgs) -> Result<(), Error> {
    init_tracing(a.log_format);
    let addr = ClusterAddr::parse(&a.cluster)?;
    runtime()?.block_on(fleetcheck::cluster::agent(
        &addr,
        a.processes,
        a.worker_concurrency,
    ))
}

/// A count of at least 1 (clap's ranges take only 64-bit integers).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `fleetcheck scan`: exit 0 nothing found, 1 findings, 2 error, 130
/// interrupted (SIGINT) or 143 terminated (SIGTERM), after the report of
/// the finished rounds.
fn scan(mut cli: ScanArgs) -> Result<u8, Error> {
    init_tracing(LogFormat::Human);
    if cli.print_rules {
        print!("{}", Rules::builtin().to_toml());
        return Ok(0);
    }
    let rules = match &cli.rules {
        Some(p) => Rules::load(p)?,
        None => Rules::builtin(),
    };
    let checks = Arc::new(Checks::from_rules(&rules));
    if cli.baseline {
        cli.mode = Mode::Inprocess;
    }
    if cli.bench && cli.points.is_none() {
        cli.points = Some("100M".into());
    }
    if let Some(p) = &cli.points {
        let n = parse_count(p)
            .ok_or_else(|| Error::Usage(format!("--points: cannot parse {p:?} (e.g. 100M)")))?;
        cli.fleet_hosts = 1000;
        cli.fleet_series = 2000;
        cli.rounds = n.div_ceil(2_000_000).max(1);
    }
    let mut named = cli.target.clone();
    if let Some(p) = &cli.targets {
        named.extend(fleetcheck::scan::load_targets(p).map_err(Error::Usage)?);
    }
    // Each target once, as `http(s)://...` (`host:port` means its
    // /metrics), checked before anything runs.
    let mut urls: Vec<String> = Vec::with_capacity(named.len());
    for t in &named {
        let url = fleetcheck::discovery::target_url(t, &Default::default())
            .map_err(|e| Error::Usage(format!("target {t:?}: {e}")))?;
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    let discovery = if cli.scrape.file_sd.is_empty() {
        None
    } else {
        let t = fleetcheck::discovery::Targets::new(&urls, &cli.scrape.file_sd)
            .map_err(|e| Error::Usage(e.to_string()))?;
        urls = t.urls().to_vec();
        Some(Arc::new(Mutex::new(t)))
    };
    let builtin = urls.is_empty();
    if builtin && cli.rounds == 0 {
        return Err(Error::Usage(
            "the built-in fleet needs a finite --rounds".into(),
        ));
    }
    if cli.bench && !builtin {
        return Err(Error::Usage(
            "--bench runs on the built-in fleet: no --target/--targets".into(),
        ));
    }
    if cli.anchors && !cli.bench {
        return Err(Error::Usage(
            "--anchors goes with `bench` (or --bench)".into(),
        ));
    }
    // Before any scan: a missing Python or package stops here, named.
    let anchor = if cli.anchors {
        let a = fleetcheck::anchor::AnchorSettings {
            python: cli.anchor_python.clone(),
            ..Default::default()
        };
        let python = fleetcheck::anchor::provision(&a)?;
        Some((a, python))
    } else {
        None
    };
    let cluster = cli.cluster.config()?;
    if cluster.is_some() && cli.mode == Mode::Inprocess {
        return Err(Error::Usage(
            "--cluster runs the scrapes on agents: it does not go with --mode inprocess or --baseline"
                .into(),
        ));
    }
    if cluster.is_some() && cli.bench {
        return Err(Error::Usage(
            "bench starts its own agents and nats-server: use --cluster-agents N, not --cluster"
                .into(),
        ));
    }
    if cli.cluster.cluster_agents > 0 && !cli.bench {
        return Err(Error::Usage(
            "--cluster-agents goes with `bench` (or --bench)".into(),
        ));
    }
    let settings = PoolSettings {
        processes: match (cli.processes, &cluster) {
            (0, Some(_)) => CLUSTER_PARTITIONS,
            (0, None) => default_processes(),
            (n, _) => n,
        },
        concurrency: cli.worker_concurrency.unwrap_or(if builtin {
            LOOPBACK_WORKER_CONCURRENCY
        } else {
            DEFAULT_WORKER_CONCURRENCY
        }),
    };
    let rt = runtime()?;
    // On the runtime's threads rather than this one: the pool's reader
    // tasks then wake the scan on their own thread (fewer wake-ups).
    let main = rt.spawn(async move {
        let fleet_cfg = FleetConfig {
            hosts: cli.fleet_hosts,
            series: cli.fleet_series,
            seed: cli.seed,
            rounds: cli.rounds,
            bad: Vec::new(),
        };
        let mut child = None;
        if builtin {
            let (c, addr) = spawn_fleet_process(&fleet_cfg).await?;
            child = Some(c);
            urls = (0..fleet_cfg.hosts)
                .map(|i| format!("http://{addr}/host/{i}/metrics"))
                .collect();
        }
        let clock = match (cli.clock, builtin) {
            (ClockArg::Wall, _) | (ClockArg::Auto, false) => Clock::Wall,
            (ClockArg::Logical, _) | (ClockArg::Auto, true) => Clock::Logical { step: STEP_SECS },
        };
        let cfg = ScanConfig {
            targets: host_specs(&urls),
            rounds: cli.rounds,
            interval: Duration::from_secs_f64(cli.interval.max(0.0)),
            concurrency: cli.concurrency.unwrap_or(if builtin {
                LOOPBACK_CONCURRENCY
            } else {
                DEFAULT_CONCURRENCY
            }),
            opts: ScrapeOptions {
                timeout_ms: cli.timeout_ms,
                max_bytes: cli.max_page_bytes,
                round_query: builtin,
                clock,
            },
            clients: vec![cli.scrape.checked_settings(builtin).map_err(Error::Usage)?],
            discovery: discovery.clone(),
        };
        if cli.bench {
            let fleet_pid = child.as_ref().and_then(tokio::process::Child::id);
            let truth = Fleet::new(fleet_cfg.clone()).ground_truth(cli.rounds);
            let json = matches!(cli.format, Format::Json);
            let agents = match cli.cluster.cluster_agents {
                0 => None,
                n => {
                    let server = server_binary(cli.cluster.nats_server.as_deref());
                    let concurrency = settings.concurrency;
                    Some(LocalCluster::start(&server, n, 0, concurrency).await?)
                }
            };
            let setup = BenchSetup {
                fleet_pid,
                truth: &truth,
                json,
                cluster: agents.as_ref(),
            };
            let mut code = run_bench(&cfg, &rules, checks, settings, &setup).await;
            drop(agents);
            if let Some((a, python)) = &anchor {
                let r = fleetcheck::anchor::compare(
                    python,
                    a,
                    &cfg,
                    &rules,
                    settings,
                    fleet_pid,
                    &truth,
                    cli.anchor_pairs,
                )
                .await;
                code = code.and_then(|c| r.map(|()| c));
            }
            if let Some(mut c) = child {
                let _ = c.kill().await;
            }
            return code;
        }
        let show = !cli.no_progress && std::io::stderr().is_terminal();
        let pb = if show {
            let len = if cli.rounds == 0 {
                None
            } else {
                Some(cli.rounds * urls.len() as u64)
            };
            let pb = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
            if let Ok(st) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} scrapes {per_sec} {msg}",
            ) {
                pb.set_style(st.progress_chars("=> "));
            }
            pb
        } else {
            ProgressBar::hidden()
        };
        let obs = Arc::new(Mutex::new(Progress {
            pb: pb.clone(),
            last: None,
            forever: cli.rounds == 0,
        }));
        let start = Instant::now();
        // Ctrl-C: stop and report what the finished rounds found.
        let scan = async {
            match cli.mode {
                Mode::Inprocess => Ok(scan_inprocess(&cfg, checks, obs.clone()).await),
                Mode::Pool => {
                    let init = WorkerInit {
                        rules: rules.clone(),
                        opts: cfg.opts,
                        clients: cfg.clients.clone(),
                    };
                    let mut scanner = match &cluster {
                        Some(c) => PoolScanner::start_cluster(init, settings, c.clone()).await?,
                        None => PoolScanner::start(init, settings).await?,
                    };
                    if builtin {
                        scanner = scanner.with_chunk_size(LOOPBACK_CHUNK);
                    }
                    let report = scanner.scan(&cfg, obs.clone()).await?;
                    scanner.close().await?;
                    Ok(report)
                }
            }
        };
        // SIGINT (Ctrl-C) or SIGTERM (a service manager, `timeout`): the
        // rounds finished so far are reported, and the exit status says
        // which signal (128 + its number).
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::Usage(format!("installing the SIGTERM handler: {e}")))?;
        let mut interrupted = None;
        let report = tokio::select! {
            r = scan => r?,
            _ = tokio::signal::ctrl_c() => {
                interrupted = Some(("interrupted", 130));
                obs.lock().ok().and_then(|mut o| o.last.take()).unwrap_or_default()
            }
            _ = term.recv() => {
                interrupted = Some(("terminated", 143));
                obs.lock().ok().and_then(|mut o| o.last.take()).unwrap_or_default()
            }
        };
        if let Some((how, _)) = interrupted {
            eprintln!("fleetcheck: {how}; reporting finished rounds");
        }
        let elapsed = start.elapsed().as_secs_f64();
        pb.finish_and_clear();
        if let Some(mut c) = child {
            let _ = c.kill().await;
        }
        let verification = (builtin && interrupted.is_none()).then(|| {
            let truth = Fleet::new(fleet_cfg.clone()).ground_truth(cli.rounds);
            verify(&report.findings, &truth)
        });
        let (urls, labels) = match &discovery {
            Some(d) => d
                .lock()
                .map(|t| (t.urls().to_vec(), t.labels().to_vec()))
                .unwrap_or_default(),
            None => (urls, Vec::new()),
        };
        let ctx = RenderCtx {
            targets: &urls,
            labels: &labels,
            elapsed_secs: elapsed,
            verification: verification.as_ref(),
            max_listed: cli.max_listed,
        };
        let out = match cli.format {
            Format::Table => render_table(&report, &ctx),
            Format::Json => render_json(&report, &ctx),
        };
        let mut so = std::io::stdout().lock();
        let _ = writeln!(so, "{out}");
        let _ = so.flush();
        if let Some(v) = &verification
            && !v.passed()
        {
            return Err(Error::Verification(format!(
                "verification against injected anomalies failed: precision {:.4}, recall {:.4}",
                v.precision, v.recall
            )));
        }
        if let Some((_, status)) = interrupted {
            return Ok(status);
        }
        Ok(report.exit_code() as u8)
    });
    rt.block_on(main)
        .map_err(|e| Error::io("the scan task failed", std::io::Error::other(e)))?
}

/// Records the peak RSS of each round of the in-process baseline.
struct MemObserver {
    /// The worker processes (none in-process).
    workers: Vec<u32>,
    mem: Vec<RoundMem>,
    reset_ok: bool,
}

impl MemObserver {
    /// Starts measuring: the peaks so far are reset.
    fn start(workers: Vec<u32>) -> Arc<Mutex<MemObserver>> {
        let (_, reset_ok) = bench::round_mem(&workers);
        Arc::new(Mutex::new(MemObserver {
            workers,
            mem: Vec::new(),
            reset_ok,
        }))
    }

    /// The per-round peaks, and whether they could be reset each round.
    fn take(obs: &Mutex<MemObserver>) -> (Vec<RoundMem>, bool) {
        obs.lock()
            .map(|mut o| (std::mem::take(&mut o.mem), o.reset_ok))
            .unwrap_or_default()
    }
}

impl RoundObserver for MemObserver {
    fn round_done(&mut self, _round: u64, _report: &Report) {
        let (m, ok) = bench::round_mem(&self.workers);
        self.mem.push(m);
        self.reset_ok &= ok;
    }
}

/// How `--bench` runs besides the scan settings: the fleet process (for
/// its CPU time), the findings it must give, the output format, and the
/// agents of `--cluster-agents`.
struct BenchSetup<'a> {
    fleet_pid: Option<u32>,
    truth: &'a [ExpectedFinding],
    json: bool,
    cluster: Option<&'a LocalCluster>,
}

/// `--bench`: the agents of `--cluster-agents` (if any), the local pool and
/// the in-process baseline against the same fleet.
async fn run_bench(
    cfg: &ScanConfig,
    rules: &Rules,
    checks: Arc<Checks>,
    settings: PoolSettings,
    setup: &BenchSetup<'_>,
) -> Result<u8, Error> {
    let fleet_cpu = || {
        setup
            .fleet_pid
            .and_then(bench::proc_cpu_secs)
            .unwrap_or(0.0)
    };
    let hosts = cfg.targets.len();
    eprintln!(
        "bench: {hosts} hosts x {} rounds; pool: {} processes x {} concurrent scrapes; in-process: {} tasks",
        cfg.rounds, settings.processes, settings.concurrency, cfg.concurrency
    );
    let mut runs = Vec::new();
    // 1. Pools (first, so that the baseline's host states do not inflate
    //    the parent's RSS during their runs): the agents, then local.
    if let Some(c) = setup.cluster {
        let on = PoolSettings {
            processes: CLUSTER_PARTITIONS,
            ..settings
        };
        runs.push(bench_pool(cfg, rules, on, Some(c), &fleet_cpu, setup.truth).await?);
    }
    runs.push(bench_pool(cfg, rules, settings, None, &fleet_cpu, setup.truth).await?);

    // 2. In-process baseline, same fleet.
    let (self0, fleet0) = (bench::rusage_cpu_secs(false), fleet_cpu());
    let obs = MemObserver::start(Vec::new());
    let start = Instant::now();
    let total = scan_inprocess(cfg, checks, obs.clone()).await;
    let wall = start.elapsed().as_secs_f64();
    let fleet1 = fleet_cpu();
    let v = verify(&total.findings, setup.truth);
    let (mem, reset_ok) = MemObserver::take(&obs);
    runs.push(BenchRun {
        mode: "in-process".into(),
        wall_secs: wall,
        points: total.points,
        cpu_parent: bench::rusage_cpu_secs(false) - self0,
        cpu_workers: 0.0,
        cpu_fleet: fleet1 - fleet0,
        mem,
        per_round_peaks: reset_ok,
        verified: v.passed() && total.scrape_failures == 0,
        anomalies: total.anomalies,
    });
    let mut so = std::io::stdout().lock();
    if setup.json {
        let _ = writeln!(so, "{}", bench::render_json(&runs, setup.truth.len()));
    } else {
        let _ = write!(so, "{}", bench::render(&runs));
        let found: Vec<String> = runs
            .iter()
            .map(|r| format!("{} {}", r.mode, r.anomalies))
            .collect();
        let _ = writeln!(
            so,
            "anomalies found: {}, injected {}",
            found.join(", "),
            setup.truth.len()
        );
    }
    let _ = so.flush();
    if runs.iter().all(|r| r.verified) {
        Ok(0)
    } else {
        Err(Error::Verification(
            "bench: verification against injected anomalies failed".into(),
        ))
    }
}

/// One run of the benchmark on a pool: local worker processes, or the
/// agents of `cluster` (whose CPU time, with the nats-server's, counts as
/// the workers').
async fn bench_pool(
    cfg: &ScanConfig,
    rules: &Rules,
    settings: PoolSettings,
    cluster: Option<&LocalCluster>,
    fleet_cpu: &(dyn Fn() -> f64 + Sync),
    truth: &[ExpectedFinding],
) -> Result<BenchRun, Error> {
    let workers_cpu =
        || cluster.map_or_else(|| bench::rusage_cpu_secs(true), LocalCluster::cpu_secs);
    let (self0, workers0, fleet0) = (bench::rusage_cpu_secs(false), workers_cpu(), fleet_cpu());
    let _ = bench::round_mem(&[]);
    let start = Instant::now();
    let init = WorkerInit {
        rules: rules.clone(),
        opts: cfg.opts,
        clients: cfg.clients.clone(),
    };
    let scanner = match cluster {
        Some(c) => {
            let on = c.addr().config(fleetcheck::cluster::DEFAULT_ACK_WAIT);
            PoolScanner::start_cluster(init, settings, on).await?
        }
        None => PoolScanner::start(init, settings).await?,
    }
    .with_chunk_size(LOOPBACK_CHUNK);
    let obs = MemObserver::start(
        cluster.map_or_else(|| scanner.pool().worker_pids(), LocalCluster::pids),
    );
    let total = scanner.scan(cfg, obs.clone()).await?;
    let (mem, reset_ok) = MemObserver::take(&obs);
    let fleet1 = fleet_cpu();
    let mode = match cluster {
        Some(c) => {
            let [server, agents, workers] = c.cpu_breakdown();
            eprintln!(
                "bench: CPU s of the cluster since it started: nats-server {server:.2}, agents \
                 {agents:.2}, their workers {workers:.2}"
            );
            format!("{} agents", c.agents())
        }
        None => {
            // How routing spread the hosts over the workers.
            let mut per_worker: std::collections::BTreeMap<u32, usize> = Default::default();
            let probes = scanner
                .pool()
                .map(
                    fleetcheck::pool::probe,
                    cfg.targets.iter().map(|s| (s.clone(), 0)),
                )
                .route_by(fleetcheck::pool::route_host)
                .await
                .map_err(|source| Error::Pool {
                    what: "probing the workers",
                    source,
                })?;
            for p in probes {
                *per_worker.entry(p.pid).or_default() += 1;
            }
            eprintln!(
                "bench: hosts per worker: {:?}",
                per_worker.values().collect::<Vec<_>>()
            );
            "pool".into()
        }
    };
    scanner.close().await?;
    let wall = start.elapsed().as_secs_f64();
    let v = verify(&total.findings, truth);
    let run = BenchRun {
        mode,
        wall_secs: wall,
        points: total.points,
        cpu_parent: bench::rusage_cpu_secs(false) - self0,
        cpu_workers: workers_cpu() - workers0,
        cpu_fleet: fleet1 - fleet0,
        mem,
        per_round_peaks: reset_ok,
        verified: v.passed() && total.scrape_failures == 0,
        anomalies: total.anomalies,
    };
    eprintln!(
        "bench: {} done in {wall:.2} s ({:.2} M points/s)",
        run.mode,
        run.points_per_sec() / 1e6,
    );
    Ok(run)
}

fn serve_fleet(a: ServeFleetArgs) -> Result<(), Error> {
    let ServeFleetArgs {
        hosts,
        series,
        seed,
        rounds,
        port,
        targets_out,
        print_targets,
        exit_on_stdin_eof,
        bad,
    } = a;
    let cfg = FleetConfig {
        hosts,
        series,
        seed,
        rounds,
        bad,
    };
    // One thread per core, as a real fleet's hosts answer at the same
    // time: with one thread for all 1,000 hosts, both scrape workers often
    // waited on it while the other core idled (12.5% idle during
    // `--bench`, 5.7% with two threads; pool 5.6-5.9 s -> 4.7-5.3 s for
    // 100M points, alternating runs, same binary).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(fleetcheck::pool::default_processes())
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the tokio runtime", e))?;
    rt.block_on(async move {
        let fleet = Arc::new(Fleet::new(cfg));
        let server = FleetServer::start(fleet.clone(), port)
            .await
            .map_err(|e| Error::io(format!("cannot bind 127.0.0.1:{port}"), e))?;
        let urls = server.target_urls();
        if let Some(p) = targets_out {
            let mut text = String::from("# fleetcheck simulated fleet\n");
            for u in &urls {
                text.push_str(u);
                text.push('\n');
            }
            std::fs::write(&p, text)
                .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
        }
        {
            let mut so = std::io::stdout().lock();
            let _ = writeln!(so, "listening http://{}", server.addr);
            let _ = writeln!(
                so,
                "{} hosts: http://{}/host/{{0..{}}}/metrics (add ?round=N to pick a round)",
                urls.len(),
                server.addr,
                urls.len().saturating_sub(1)
            );
            if print_targets {
                for u in &urls {
                    let _ = writeln!(so, "{u}");
                }
            }
            let _ = so.flush();
        }
        if exit_on_stdin_eof {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let mut s = String::new();
                let stdin = std::io::stdin();
                let mut lock = stdin.lock();
                while matches!(lock.read_line(&mut s), Ok(n) if n > 0) {
                    s.clear();
                }
                let _ = tx.send(());
            });
            tokio::select! {
                _ = rx => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
        drop(server);
        Ok(())
    })
}
