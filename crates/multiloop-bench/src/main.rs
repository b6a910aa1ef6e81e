//! The side-by-side benchmark of multiloop: the workloads W1–W6 of
//! `shared/BENCHMARKS.md`, each next to a baseline taken in the same run,
//! and optionally next to the aiomultiprocess anchors. See README.md.

mod anchors;
mod cluster;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Map, Value};

use crate::workloads::{BoxResult, Sizes};

/// Benchmarks multiloop against baselines measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "multiloop-bench")]
struct Args {
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Run every workload at a tiny size (a few seconds in all).
    #[arg(long)]
    smoke: bool,
    /// Also run the aiomultiprocess anchors (shared/anchors/aiomp_bench.py).
    #[arg(long)]
    anchors: bool,
    /// The anchor script, instead of ../shared/anchors/aiomp_bench.py from
    /// the workspace root (implies --anchors).
    #[arg(long, value_name = "PATH")]
    anchors_script: Option<PathBuf>,
    /// Also write the JSON object to this file.
    #[arg(long, value_name = "PATH")]
    json_file: Option<PathBuf>,
    /// Run only these workloads, e.g. `W1,W3b,W6`.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    only: Vec<String>,
    /// Diagnosis only: a fixed chunk size for the maps of W1, W3, W3b and
    /// W4 instead of the default adaptive one (the figures are then not the
    /// benchmark's).
    #[arg(long, hide = true, value_name = "N")]
    chunk_size: Option<usize>,
    /// Internal: run W6 in this process over N inputs and print its figures.
    #[arg(long, hide = true, value_name = "N")]
    w6_child: Option<u64>,
    /// Internal: the W6 child's time limit in seconds.
    #[arg(long, hide = true, default_value_t = 600)]
    limit_s: u64,
    /// Internal: exit at once (the W5 baseline re-executes the bench so).
    #[arg(long, hide = true)]
    exit_at_once: bool,
}

/// The workloads, in the order they run.
const WORKLOADS: [&str; 8] = ["W1", "W2", "W3", "W3b", "W4", "W5", "W6", "C1"];

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--exit-at-once") {
        return ExitCode::SUCCESS;
    }
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("multiloop-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs what the arguments ask; `Ok(false)` when some workload failed.
fn run(args: Args) -> BoxResult<bool> {
    if let Some(n) = args.w6_child {
        workloads::stream_child(n, Duration::from_secs(args.limit_s))?;
        return Ok(true);
    }
    let selected = select(&args.only)?;
    let mut sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    sizes.chunk = args.chunk_size;
    if let Some(size) = sizes.chunk {
        eprintln!("--chunk-size {size}: a diagnosis run, not the benchmark's figures");
    }
    let mut report = Report {
        load: load_average(),
        ..Report::default()
    };
    if let Some(load) = report
        .load
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
    {
        report.key("loadavg_1m_at_start", load);
    }
    let mut ok = true;
    let started = Instant::now();
    for id in selected {
        eprintln!("{id}: running...");
        let t = Instant::now();
        if let Err(e) = run_one(id, &sizes, &mut report) {
            eprintln!("{id}: FAILED: {e}");
            report.failures.push(format!("{id}: {e}"));
            ok = false;
        } else {
            eprintln!("{id}: done in {:.1} s", t.elapsed().as_secs_f64());
        }
    }
    let bench_s = started.elapsed().as_secs_f64();
    if args.anchors || args.anchors_script.is_some() {
        let script = args
            .anchors_script
            .clone()
            .unwrap_or_else(anchors::default_script);
        match anchors::run(&script) {
            Ok(anchor) => report.add_anchors(anchor),
            Err(e) => {
                eprintln!("anchors: FAILED: {e}");
                report.failures.push(format!("anchors: {e}"));
                ok = false;
            }
        }
    }
    let json = serde_json::to_string_pretty(&report.json)?;
    if args.json {
        println!("{json}");
    } else {
        report.print_table(args.smoke, bench_s);
    }
    if let Some(path) = &args.json_file {
        std::fs::write(path, json + "\n")?;
    }
    Ok(ok)
}

/// The workloads `--only` names (all when empty), in run order.
fn select(only: &[String]) -> BoxResult<Vec<&'static str>> {
    if only.is_empty() {
        return Ok(WORKLOADS.to_vec());
    }
    for name in only {
        if !WORKLOADS
            .iter()
            .any(|w| w.eq_ignore_ascii_case(name.trim()))
        {
            return Err(format!(
                "unknown workload `{name}`; the workloads are {}",
                WORKLOADS.join(", ")
            )
            .into());
        }
    }
    Ok(WORKLOADS
        .into_iter()
        .filter(|w| only.iter().any(|name| w.eq_ignore_ascii_case(name.trim())))
        .collect())
}

fn run_one(id: &str, sizes: &Sizes, report: &mut Report) -> BoxResult<()> {
    match id {
        "W1" => {
            let r = workloads::w1(sizes)?;
            let pool = median(&r.pool_tasks_per_s);
            let threads = median(&r.threads_tasks_per_s);
            let ratios: Vec<f64> = r
                .pool_tasks_per_s
                .iter()
                .zip(&r.threads_tasks_per_s)
                .map(|(p, t)| p / t)
                .collect();
            let ratio = median(&ratios);
            report.key("trivial_tasks_per_s", pool);
            report.key("trivial_vs_threads", ratio);
            report.key("trivial_threads_tasks_per_s", threads);
            report.row(Row {
                id: "W1",
                figure: format!(
                    "map(inc) over {}, tasks/s (median of {})",
                    count(sizes.w1_n),
                    r.pool_tasks_per_s.len()
                ),
                multiloop: rate(pool),
                baseline: format!("{} (tokio, 2 threads)", rate(threads)),
                ratio: format!("{ratio:.3}"),
                target: (">= 25M/s".into(), pool >= 25e6),
            });
            let pool_cpu = median(&r.pool_cpu_ns);
            let threads_cpu = median(&r.threads_cpu_ns);
            report.key("trivial_cpu_ns_per_task", pool_cpu);
            report.key("trivial_threads_cpu_ns_per_task", threads_cpu);
            report.row(Row {
                id: "W1",
                figure: "  same: CPU per task, parent and workers".into(),
                multiloop: format!("{pool_cpu:.0} ns"),
                baseline: format!("{threads_cpu:.0} ns (tokio, 2 threads)"),
                // Too short a run to count 100 Hz ticks (smoke mode): no ratio.
                ratio: match threads_cpu > 0.0 {
                    true => format!("{:.2}", pool_cpu / threads_cpu),
                    false => "-".into(),
                },
                target: (String::new(), true),
            });
        }
        "W2" => {
            let rtts = workloads::w2(sizes)?;
            let p50 = percentile(&rtts, 0.50);
            let p99 = percentile(&rtts, 0.99);
            let socket = socket_pingpong_us(sizes.w2_n)?;
            report.key("apply_rtt_us_p50", p50);
            report.key("apply_rtt_us_p99", p99);
            report.key("apply_socket_pingpong_us_p50", socket);
            report.row(Row {
                id: "W2",
                figure: format!(
                    "{} sequential apply(inc), p50 round trip",
                    count(sizes.w2_n as u64)
                ),
                multiloop: format!("{p50:.1} µs"),
                baseline: format!("{socket:.1} µs (Unix socket ping-pong)"),
                ratio: format!("{:.2}", p50 / socket),
                target: ("<= 1.5x".into(), p50 <= socket * 1.5),
            });
            report.row(Row {
                id: "W2",
                figure: "  same, p99 round trip".into(),
                multiloop: format!("{p99:.1} µs"),
                baseline: String::new(),
                ratio: String::new(),
                target: (String::new(), true),
            });
            let tokio_floor = tokio_pingpong_us(sizes.w2_n)?;
            report.key("apply_tokio_pingpong_us_p50", tokio_floor);
            report.row(Row {
                id: "W2",
                figure: "  same p50 against both ends on tokio".into(),
                multiloop: format!("{p50:.1} µs"),
                baseline: format!("{tokio_floor:.1} µs (ping-pong, 2 tokio runtimes)"),
                ratio: format!("{:.2}", p50 / tokio_floor),
                target: (String::new(), true),
            });
        }
        "W3" | "W3b" => {
            let (n, ms, c, key, target) = if id == "W3" {
                (sizes.w3_n, sizes.w3_ms, sizes.w3_concurrency, "sleep", 0.98)
            } else {
                (
                    sizes.w3b_n,
                    sizes.w3b_ms,
                    sizes.w3b_concurrency,
                    "sleep_1m",
                    0.9,
                )
            };
            let r = workloads::sleep(n, ms, c, sizes.chunk, sizes.limit)?;
            let e = r.efficiency();
            report.key(&format!("{key}_efficiency"), e);
            report.key(&format!("{key}_wall_s"), r.wall_s);
            report.key(&format!("{key}_ideal_s"), r.ideal_s);
            report.key(&format!("{key}_in_process_s"), r.in_process_s);
            report.key(
                &format!("{key}_in_process_efficiency"),
                r.ideal_s / r.in_process_s,
            );
            report.row(Row {
                id: if id == "W3" { "W3" } else { "W3b" },
                figure: format!(
                    "{} sleeps of {ms} ms, {} per worker: wall",
                    count(r.n),
                    count(c as u64)
                ),
                multiloop: format!("{:.3} s", r.wall_s),
                baseline: format!("{:.3} s (ideal)", r.ideal_s),
                ratio: format!("{e:.3}"),
                target: (format!(">= {target}"), e >= target),
            });
            report.row(Row {
                id: if id == "W3" { "W3" } else { "W3b" },
                figure: format!(
                    "  same futures in-process, {} at once",
                    count((2 * c) as u64)
                ),
                multiloop: String::new(),
                baseline: format!("{:.3} s (2 threads x 1 runtime)", r.in_process_s),
                ratio: format!("{:.3}", r.ideal_s / r.in_process_s),
                target: (String::new(), true),
            });
        }
        "W4" => {
            let r = workloads::cpu(sizes)?;
            let speedup = r.serial_s / r.pool_s;
            report.key("cpu_speedup", speedup);
            report.key("cpu_serial_s", r.serial_s);
            report.key("cpu_pool_s", r.pool_s);
            report.key("cpu_threads_speedup", r.serial_s / r.threads_s);
            report.row(Row {
                id: "W4",
                figure: format!(
                    "{} tasks x {} SHA-256 rounds: wall",
                    sizes.w4_n,
                    count(u64::from(sizes.w4_rounds))
                ),
                multiloop: format!("{:.3} s", r.pool_s),
                baseline: format!("{:.3} s (serial, in-process)", r.serial_s),
                ratio: format!("{speedup:.3}"),
                target: (">= 1.9".into(), speedup >= 1.9),
            });
            report.row(Row {
                id: "W4",
                figure: "  same on 2 threads in-process (free cores now)".into(),
                multiloop: String::new(),
                baseline: format!("{:.3} s (2 threads)", r.threads_s),
                ratio: format!("{:.3}", r.serial_s / r.threads_s),
                target: (String::new(), true),
            });
        }
        "W5" => {
            let r = workloads::startup(sizes)?;
            let pool = median(&r.pool_ms);
            let exec = median(&r.exec_ms);
            report.key("startup_ms", pool);
            report.key("startup_exec_baseline_ms", exec);
            report.row(Row {
                id: "W5",
                figure: format!(
                    "build pool of 2, first apply, close (median of {})",
                    r.pool_ms.len()
                ),
                multiloop: format!("{pool:.2} ms"),
                baseline: format!("{exec:.2} ms (2 re-execs that exit)"),
                ratio: format!("{:.2}", pool / exec),
                target: ("<= 1.5x".into(), pool <= exec * 1.5),
            });
        }
        "W6" => {
            let r = workloads::stream(sizes)?;
            report.key("stream_100m_parent_rss_mib", r.rss_mib);
            report.key("stream_parent_rss_before_mib", r.rss_before_mib);
            report.key("stream_worker_rss_mib", r.worker_rss_mib);
            report.key("stream_tasks_per_s", r.n as f64 / r.wall_s);
            report.row(Row {
                id: "W6",
                figure: format!(
                    "streamed map(inc) over lazy 0..{}: parent peak RSS",
                    count(r.n)
                ),
                multiloop: format!("{:.1} MiB", r.rss_mib),
                baseline: format!("{:.1} MiB (before the pool)", r.rss_before_mib),
                ratio: format!("{:.2}", r.rss_mib / r.rss_before_mib),
                target: ("<= 64 MiB".into(), r.rss_mib <= 64.0),
            });
            report.row(Row {
                id: "W6",
                figure: "  same: throughput; worker peak RSS".into(),
                multiloop: rate(r.n as f64 / r.wall_s),
                baseline: format!("{:.1} MiB (largest worker)", r.worker_rss_mib),
                ratio: String::new(),
                target: (String::new(), true),
            });
        }
        "C1" => {
            let Some(server) = cluster::server_binary() else {
                eprintln!(
                    "C1: skipped: no nats-server (set MULTILOOP_NATS_SERVER or put it on PATH; \
                     .ci/run installs one)"
                );
                return Ok(());
            };
            // The cluster's figures next to the local pool's, in one run.
            let n = sizes.w1_n.min(2_000_000);
            let applies = if sizes.w1_n <= 100_000 { 200 } else { 2000 };
            let r = cluster::c1(server, n, applies, sizes.limit)?;
            let (cp50, lp50) = (
                percentile(&r.cluster_apply_us, 0.5),
                percentile(&r.local_apply_us, 0.5),
            );
            report.key("cluster_trivial_tasks_per_s", r.cluster_tasks_per_s);
            report.key("cluster_local_trivial_tasks_per_s", r.local_tasks_per_s);
            report.key("cluster_apply_rtt_us_p50", cp50);
            report.key("cluster_local_apply_rtt_us_p50", lp50);
            report.key("cluster_failover_s", r.failover_s);
            report.row(Row {
                id: "C1",
                figure: format!(
                    "cluster map(inc) over {}, 2 hosts x 1 worker, chunks of {}",
                    count(r.n),
                    cluster::CLUSTER_CHUNK
                ),
                multiloop: rate(r.cluster_tasks_per_s),
                baseline: format!("{} (local pool of 2)", rate(r.local_tasks_per_s)),
                ratio: format!("{:.3}", r.cluster_tasks_per_s / r.local_tasks_per_s),
                target: (">= 3M/s".into(), r.cluster_tasks_per_s >= 3e6),
            });
            report.row(Row {
                id: "C1",
                figure: format!(
                    "  {} sequential cluster apply(inc), p50",
                    r.cluster_apply_us.len()
                ),
                multiloop: format!("{cp50:.0} µs"),
                baseline: format!("{lp50:.1} µs (local apply)"),
                ratio: format!("{:.1}", cp50 / lp50),
                target: ("<= 1 ms".into(), cp50 <= 1000.0),
            });
            report.row(Row {
                id: "C1",
                figure: format!(
                    "  host SIGKILLed -> its task running on another (ack_wait {:?})",
                    cluster::ACK_WAIT
                ),
                multiloop: format!("{:.2} s", r.failover_s),
                baseline: format!("{:.2} s (ack_wait)", cluster::ACK_WAIT.as_secs_f64()),
                ratio: format!("{:.2}", r.failover_s / cluster::ACK_WAIT.as_secs_f64()),
                target: (
                    "~ ack_wait".into(),
                    r.failover_s <= cluster::ACK_WAIT.as_secs_f64() * 1.5,
                ),
            });
        }
        other => return Err(format!("unknown workload {other}").into()),
    }
    Ok(())
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The W2 baseline: `n` 8-byte round trips over a Unix socket pair to a
/// thread that echoes them; median in µs.
fn socket_pingpong_us(n: usize) -> BoxResult<f64> {
    use std::io::{Read, Write};
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 8];
        loop {
            match b.read_exact(&mut buf) {
                Ok(()) => b.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut rtts = Vec::with_capacity(n);
    let mut buf = [0u8; 8];
    for i in 0..(n + 100) as u64 {
        let t = Instant::now();
        a.write_all(&i.to_le_bytes())?;
        a.read_exact(&mut buf)?;
        if i >= 100 {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(a);
    echo.join().map_err(|_| "the echo thread panicked")??;
    Ok(percentile(&rtts, 0.5))
}

/// A second W2 baseline: the same 8-byte ping-pong, but each end a
/// current-thread tokio runtime (readiness through epoll), as a pool's
/// parent and worker are; median in µs. The floor of any IPC round trip
/// between two event loops here.
fn tokio_pingpong_us(n: usize) -> BoxResult<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let mut b = tokio::net::UnixStream::from_std(b)?;
            let mut buf = [0u8; 8];
            loop {
                match b.read_exact(&mut buf).await {
                    Ok(_) => b.write_all(&buf).await?,
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
    });
    let rt = workloads::parent_runtime()?;
    let rtts = rt.block_on(async move {
        let mut a = tokio::net::UnixStream::from_std(a)?;
        let mut rtts = Vec::with_capacity(n);
        let mut buf = [0u8; 8];
        for i in 0..(n + 100) as u64 {
            let t = Instant::now();
            a.write_all(&i.to_le_bytes()).await?;
            a.read_exact(&mut buf).await?;
            if i >= 100 {
                rtts.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok::<_, std::io::Error>(rtts)
    })?;
    echo.join().map_err(|_| "the echo thread panicked")??;
    Ok(percentile(&rtts, 0.5))
}

/// One line of the table.
struct Row {
    id: &'static str,
    figure: String,
    multiloop: String,
    baseline: String,
    ratio: String,
    /// The target, and whether it was met.
    target: (String, bool),
}

/// The figures of one run: table rows and JSON keys.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    json: Map<String, Value>,
    anchor_rows: Vec<[String; 4]>,
    failures: Vec<String>,
    /// `/proc/loadavg` when the run started: the machine is shared.
    load: String,
}

impl Report {
    fn key(&mut self, key: &str, value: f64) {
        self.json.insert(key.to_owned(), Value::from(value));
    }

    fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.json.get(key).and_then(Value::as_f64)
    }

    /// Adds the anchor script's keys, and the ratios against them (above 1
    /// means multiloop does better).
    fn add_anchors(&mut self, anchor: Map<String, Value>) {
        let get = |key: &str| anchor.get(key).and_then(Value::as_f64);
        // (ratio key, figure, ours, theirs, higher is better, unit scale of theirs to ours)
        let pairs = [
            (
                "vs_aiomp_trivial",
                "trivial tasks/s",
                "trivial_tasks_per_s",
                "aiomp_trivial_tasks_per_s",
                true,
                1.0,
            ),
            (
                "vs_mp_pool_autochunk_trivial",
                "trivial tasks/s vs multiprocessing.Pool (auto chunks)",
                "trivial_tasks_per_s",
                "mp_pool_autochunk_tasks_per_s",
                true,
                1.0,
            ),
            (
                "vs_aiomp_apply_rtt",
                "apply round trip (µs)",
                "apply_rtt_us_p50",
                "aiomp_apply_rtt_ms",
                false,
                1000.0,
            ),
            (
                "vs_aiomp_sleep_efficiency",
                "sleep efficiency (W3)",
                "sleep_efficiency",
                "aiomp_sleep_efficiency",
                true,
                1.0,
            ),
            (
                "vs_aiomp_cpu_speedup",
                "CPU speedup, 2 workers",
                "cpu_speedup",
                "aiomp_cpu_speedup_vs_serial",
                true,
                1.0,
            ),
            (
                "vs_aiomp_startup",
                "pool start to first result and stop (ms)",
                "startup_ms",
                "aiomp_pool_start_first_result_and_stop_s",
                false,
                1000.0,
            ),
        ];
        for (key, figure, ours, theirs, higher_better, scale) in pairs {
            let (Some(ours), Some(theirs)) = (self.num(ours), get(theirs).map(|v| v * scale))
            else {
                continue;
            };
            let ratio = if higher_better {
                ours / theirs
            } else {
                theirs / ours
            };
            self.key(key, ratio);
            self.anchor_rows.push([
                figure.to_owned(),
                short(ours),
                short(theirs),
                format!("{ratio:.2}x"),
            ]);
        }
        self.json.extend(anchor);
    }

    fn print_table(&self, smoke: bool, bench_s: f64) {
        let header = ["W", "figure", "multiloop", "baseline", "ratio", "target"];
        let mut lines: Vec<[String; 6]> = vec![header.map(str::to_owned)];
        for r in &self.rows {
            let target = match &r.target {
                (t, _) if t.is_empty() => String::new(),
                (t, true) => format!("{t} ok"),
                (t, false) => format!("{t} MISSED"),
            };
            lines.push([
                r.id.to_owned(),
                r.figure.clone(),
                r.multiloop.clone(),
                r.baseline.clone(),
                r.ratio.clone(),
                target,
            ]);
        }
        let title = if smoke {
            "multiloop-bench --smoke (tiny sizes: figures are not meaningful)"
        } else {
            "multiloop-bench"
        };
        println!(
            "{title}: 2 worker processes, {bench_s:.1} s, load average at the start {}",
            self.load
        );
        print_columns(&lines);
        if !self.anchor_rows.is_empty() {
            println!();
            println!("against the anchors (ratio > 1: multiloop does better)");
            let mut lines = vec![["figure", "multiloop", "anchor", "ratio"].map(str::to_owned)];
            lines.extend(self.anchor_rows.iter().cloned());
            print_columns(&lines);
        }
        for f in &self.failures {
            println!("FAILED {f}");
        }
    }
}

/// Prints rows as left-aligned columns, the first row as a header.
fn print_columns<const N: usize>(lines: &[[String; N]]) {
    let mut widths = [0usize; N];
    for line in lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("{}", cells.join("  ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
            println!("{}", rule.join("  "));
        }
    }
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

/// The `q` quantile (nearest rank; the median of an even count is the mean
/// of the two middle values).
fn percentile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if q == 0.5 && n % 2 == 0 => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        n => s[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

fn rate(per_s: f64) -> String {
    format!("{}/s", short(per_s))
}

/// `12.3M`, `45.6k`, `7.89`.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 1e6 => format!("{:.2}M", v / 1e6),
        a if a >= 1e4 => format!("{:.1}k", v / 1e3),
        a if a >= 100.0 => format!("{v:.0}"),
        _ => format!("{v:.3}"),
    }
}

fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}
