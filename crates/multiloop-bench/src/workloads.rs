//! The workloads W1–W6 of `shared/BENCHMARKS.md`, each with its baseline.

use std::error::Error;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use multiloop::Pool;
use sha2::{Digest, Sha256};

/// What every workload returns on failure.
pub(crate) type BoxResult<T> = Result<T, Box<dyn Error>>;

/// Worker processes in every workload.
pub(crate) const PROCESSES: usize = 2;

/// The trivial task of W1, W2, W5 and W6.
#[multiloop::task]
async fn inc(x: u64) -> u64 {
    x + 1
}

/// The I/O-bound task of W3: sleeps `ms` milliseconds.
#[multiloop::task]
async fn nap(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

/// The CPU-bound task of W4: `rounds` chained SHA-256 hashes.
#[multiloop::task]
async fn burn(rounds: u32) -> u8 {
    burn_sync(rounds)
}

/// `h = sha256(h)` `rounds` times from `b"seed"`, like the anchor; returns
/// the first byte so that the work cannot be optimized away.
fn burn_sync(rounds: u32) -> u8 {
    let mut h = b"seed".to_vec();
    for _ in 0..rounds {
        h = Sha256::digest(&h).to_vec();
    }
    h.first().copied().unwrap_or(0)
}

/// The sizes of one run: the full ones of BENCHMARKS.md or the smoke ones.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub(crate) w1_n: u64,
    pub(crate) w1_reps: usize,
    pub(crate) w1_threads_chunk: u64,
    pub(crate) w2_n: usize,
    pub(crate) w3_n: u64,
    pub(crate) w3_ms: u64,
    pub(crate) w3_concurrency: usize,
    pub(crate) w3b_n: u64,
    pub(crate) w3b_ms: u64,
    pub(crate) w3b_concurrency: usize,
    pub(crate) w4_n: usize,
    pub(crate) w4_rounds: u32,
    pub(crate) w5_runs: usize,
    pub(crate) w6_n: u64,
    /// How long one workload may take before the bench gives up on it.
    pub(crate) limit: Duration,
    /// A fixed chunk size for the maps of W1, W3, W3b and W4 instead of the
    /// adaptive one (the hidden `--chunk-size`, for diagnosis only).
    pub(crate) chunk: Option<usize>,
}

impl Sizes {
    pub(crate) fn full() -> Self {
        Sizes {
            w1_n: 10_000_000,
            w1_reps: 3,
            w1_threads_chunk: 32 * 1024,
            w2_n: 10_000,
            w3_n: 20_000,
            w3_ms: 50,
            w3_concurrency: 256,
            w3b_n: 1_000_000,
            w3b_ms: 1000,
            w3b_concurrency: 500_000,
            w4_n: 400,
            w4_rounds: 20_000,
            w5_runs: 10,
            w6_n: 100_000_000,
            limit: Duration::from_secs(600),
            chunk: None,
        }
    }

    pub(crate) fn smoke() -> Self {
        Sizes {
            w1_n: 100_000,
            w1_reps: 1,
            w1_threads_chunk: 32 * 1024,
            w2_n: 200,
            w3_n: 2_000,
            w3_ms: 5,
            w3_concurrency: 256,
            w3b_n: 10_000,
            w3b_ms: 100,
            w3b_concurrency: 5_000,
            w4_n: 20,
            w4_rounds: 2_000,
            w5_runs: 2,
            w6_n: 1_000_000,
            limit: Duration::from_secs(60),
            chunk: None,
        }
    }
}

/// Applies a fixed chunk size to a map when one was asked for.
macro_rules! chunked {
    ($map:expr, $chunk:expr) => {
        match $chunk {
            Some(size) => $map.chunk_size(size),
            None => $map,
        }
    };
}

/// A current-thread runtime for the parent side of a pool, like the
/// library's own examples.
pub(crate) fn parent_runtime() -> BoxResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Runs `fut` on `rt`, failing with a clear message after `limit`.
fn run_limited<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    limit: Duration,
    fut: impl Future<Output = BoxResult<T>>,
) -> BoxResult<T> {
    rt.block_on(async {
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result,
            Err(_) => Err(format!("{what} did not finish within {limit:?} (hang?)").into()),
        }
    })
}

async fn pool_of(processes: usize, concurrency: Option<usize>) -> BoxResult<Pool> {
    let mut builder = Pool::builder().processes(processes);
    if let Some(c) = concurrency {
        builder = builder.concurrency(c);
    }
    Ok(builder.build().await?)
}

/// `n (n + 1) / 2`: the sum of `inc` over `0..n`.
fn inc_checksum(n: u64) -> u64 {
    n * (n + 1) / 2
}

fn check_inc(out: &[u64], n: u64, what: &str) -> BoxResult<()> {
    let sum: u64 = out.iter().sum();
    if out.len() as u64 != n || sum != inc_checksum(n) {
        return Err(format!(
            "{what}: {} results summing to {sum}, expected {n} summing to {}",
            out.len(),
            inc_checksum(n)
        )
        .into());
    }
    if let Some(i) = out.iter().enumerate().position(|(i, &v)| v != i as u64 + 1) {
        return Err(format!("{what}: result {i} out of order").into());
    }
    Ok(())
}

/// W1: `map(inc, 0..n)` on a pool vs the same futures on a 2-thread tokio
/// runtime.
#[derive(Debug)]
pub(crate) struct W1 {
    pub(crate) pool_tasks_per_s: Vec<f64>,
    pub(crate) threads_tasks_per_s: Vec<f64>,
    /// CPU time per task of the pool (the parent's thread and the
    /// workers), in ns: unlike tasks/s, it holds on a loaded machine.
    pub(crate) pool_cpu_ns: Vec<f64>,
    /// CPU time per task of the baseline (this whole process), in ns.
    pub(crate) threads_cpu_ns: Vec<f64>,
}

pub(crate) fn w1(sizes: &Sizes) -> BoxResult<W1> {
    let n = sizes.w1_n;
    let rt = parent_runtime()?;
    let pool = run_limited(&rt, "W1 pool build", sizes.limit, pool_of(PROCESSES, None))?;
    run_limited(&rt, "W1 warm-up", sizes.limit, async {
        Ok(pool.map(inc, 0..1000u64).await?.len())
    })?;
    let mut result = W1 {
        pool_tasks_per_s: Vec::new(),
        threads_tasks_per_s: Vec::new(),
        pool_cpu_ns: Vec::new(),
        threads_cpu_ns: Vec::new(),
    };
    let pool_cpu_s = |pool: &multiloop::Pool| -> BoxResult<f64> {
        let mut total = cpu_s(&format!("/proc/self/task/{}/stat", std::process::id()))?;
        for pid in pool.worker_pids() {
            total += cpu_s(&format!("/proc/{pid}/stat"))?;
        }
        Ok(total)
    };
    for _ in 0..sizes.w1_reps {
        let cpu_before = pool_cpu_s(&pool)?;
        let (dt, out) = run_limited(&rt, "W1 map", sizes.limit, async {
            let t = Instant::now();
            let out = chunked!(pool.map(inc, 0..n), sizes.chunk).await?;
            Ok((t.elapsed(), out))
        })?;
        let cpu = pool_cpu_s(&pool)? - cpu_before;
        check_inc(&out, n, "W1 pool")?;
        drop(out);
        result.pool_tasks_per_s.push(n as f64 / dt.as_secs_f64());
        result.pool_cpu_ns.push(cpu * 1e9 / n as f64);

        let cpu_before = cpu_s("/proc/self/stat")?;
        let dt = w1_threads(n, sizes.w1_threads_chunk, sizes.limit)?;
        let cpu = cpu_s("/proc/self/stat")? - cpu_before;
        result.threads_tasks_per_s.push(n as f64 / dt.as_secs_f64());
        result.threads_cpu_ns.push(cpu * 1e9 / n as f64);
    }
    run_limited(&rt, "W1 close", sizes.limit, async {
        Ok(pool.close().await?)
    })?;
    Ok(result)
}

/// The baseline of W1: chunks of `chunk` inputs, one tokio task per chunk
/// awaiting `inc::run` for each input, gathered in order.
fn w1_threads(n: u64, chunk: u64, limit: Duration) -> BoxResult<Duration> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(PROCESSES)
        .enable_all()
        .build()?;
    let (dt, out) = run_limited(&rt, "W1 threads baseline", limit, async {
        let t = Instant::now();
        let mut handles = Vec::with_capacity(n.div_ceil(chunk) as usize);
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            handles.push(tokio::spawn(async move {
                let mut v = Vec::with_capacity((end - start) as usize);
                for x in start..end {
                    v.push(inc::run(x).await);
                }
                v
            }));
            start = end;
        }
        let mut out = Vec::with_capacity(n as usize);
        for h in handles {
            out.extend(h.await?);
        }
        Ok((t.elapsed(), out))
    })?;
    check_inc(&out, n, "W1 threads")?;
    Ok(dt)
}

/// W2: sequential `apply(inc)` round trips, in µs.
pub(crate) fn w2(sizes: &Sizes) -> BoxResult<Vec<f64>> {
    let rt = parent_runtime()?;
    run_limited(&rt, "W2", sizes.limit, async {
        let pool = pool_of(PROCESSES, None).await?;
        for i in 0..100u64 {
            pool.apply(inc, i).await?;
        }
        let mut rtts = Vec::with_capacity(sizes.w2_n);
        for i in 0..sizes.w2_n as u64 {
            let t = Instant::now();
            let v = pool.apply(inc, i).await?;
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
            if v != i + 1 {
                return Err(format!("W2: apply(inc, {i}) gave {v}").into());
            }
        }
        pool.close().await?;
        Ok(rtts)
    })
}

/// W3 and W3b: `n` tasks sleeping `ms`, `concurrency` per worker.
#[derive(Debug)]
pub(crate) struct Sleep {
    pub(crate) n: u64,
    pub(crate) ideal_s: f64,
    pub(crate) wall_s: f64,
    /// The same futures in-process on `PROCESSES` threads, each a
    /// current-thread runtime running `concurrency` at once: the pool
    /// without processes and IPC.
    pub(crate) in_process_s: f64,
}

impl Sleep {
    pub(crate) fn efficiency(&self) -> f64 {
        self.ideal_s / self.wall_s
    }
}

pub(crate) fn sleep(
    n: u64,
    ms: u64,
    concurrency: usize,
    chunk: Option<usize>,
    limit: Duration,
) -> BoxResult<Sleep> {
    let rt = parent_runtime()?;
    let wall = run_limited(&rt, "W3 (sleep)", limit, async {
        let pool = pool_of(PROCESSES, Some(concurrency)).await?;
        let t = Instant::now();
        let out = chunked!(pool.map(nap, std::iter::repeat_n(ms, n as usize)), chunk).await?;
        let wall = t.elapsed();
        if out.len() as u64 != n || out.iter().any(|&v| v != ms) {
            return Err(format!("W3: {} results, expected {n} of {ms}", out.len()).into());
        }
        pool.close().await?;
        Ok(wall)
    })?;
    drop(rt);
    let in_process = sleep_in_process(n, ms, concurrency)?;
    let waves = n as f64 / (PROCESSES * concurrency) as f64;
    Ok(Sleep {
        n,
        ideal_s: waves * ms as f64 / 1000.0,
        wall_s: wall.as_secs_f64(),
        in_process_s: in_process.as_secs_f64(),
    })
}

/// The baseline of W3: the pool without processes. `PROCESSES` threads,
/// each a current-thread tokio runtime like a worker's, each running its
/// share of the naps on `concurrency` tokio tasks (one per slot, sleeping
/// one nap after another).
fn sleep_in_process(n: u64, ms: u64, concurrency: usize) -> BoxResult<Duration> {
    let t = Instant::now();
    let done: Result<Vec<u64>, String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PROCESSES as u64)
            .map(|w| {
                let share = n / PROCESSES as u64 + u64::from(w < n % PROCESSES as u64);
                s.spawn(move || -> Result<u64, String> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| e.to_string())?;
                    rt.block_on(async move {
                        let slots = (concurrency as u64).clamp(1, share.max(1));
                        let mut handles = Vec::with_capacity(slots as usize);
                        for k in 0..slots {
                            let mine = share / slots + u64::from(k < share % slots);
                            handles.push(tokio::spawn(async move {
                                let mut done = 0u64;
                                for _ in 0..mine {
                                    done += u64::from(nap::run(ms).await == ms);
                                }
                                done
                            }));
                        }
                        let mut done = 0u64;
                        for h in handles {
                            done += h.await.map_err(|e| e.to_string())?;
                        }
                        Ok(done)
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a baseline thread panicked".to_owned())
                    .and_then(|r| r)
            })
            .collect()
    });
    let elapsed = t.elapsed();
    let done: u64 = done?.iter().sum();
    if done != n {
        return Err(format!("W3 baseline: {done} sleeps of {ms} ms, expected {n}").into());
    }
    Ok(elapsed)
}

/// W4: the same CPU-bound tasks serially in-process, then on the pool.
#[derive(Debug)]
pub(crate) struct Cpu {
    pub(crate) serial_s: f64,
    pub(crate) pool_s: f64,
    /// The same tasks split over `PROCESSES` threads of this process: what
    /// the machine's free cores allow right now.
    pub(crate) threads_s: f64,
}

pub(crate) fn cpu(sizes: &Sizes) -> BoxResult<Cpu> {
    let (n, rounds) = (sizes.w4_n, sizes.w4_rounds);
    let rt = parent_runtime()?;
    run_limited(&rt, "W4", sizes.limit, async {
        let t = Instant::now();
        let mut serial = Vec::with_capacity(n);
        for _ in 0..n {
            serial.push(burn::run(rounds).await);
        }
        let serial_s = t.elapsed().as_secs_f64();
        let expected = burn_sync(rounds);
        let pool = pool_of(PROCESSES, None).await?;
        pool.apply(burn, 1).await?;
        let t = Instant::now();
        let out = chunked!(pool.map(burn, std::iter::repeat_n(rounds, n)), sizes.chunk).await?;
        let pool_s = t.elapsed().as_secs_f64();
        pool.close().await?;
        if out.len() != n || out.iter().chain(&serial).any(|&b| b != expected) {
            return Err("W4: the pool's hashes differ from the serial ones".into());
        }
        let t = Instant::now();
        let threaded: Vec<u8> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..PROCESSES)
                .map(|k| {
                    let share = n / PROCESSES + usize::from(k < n % PROCESSES);
                    s.spawn(move || (0..share).map(|_| burn_sync(rounds)).collect::<Vec<u8>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let threads_s = t.elapsed().as_secs_f64();
        if threaded.len() != n || threaded.iter().any(|&b| b != expected) {
            return Err("W4: the threads' hashes differ from the serial ones".into());
        }
        Ok(Cpu {
            serial_s,
            pool_s,
            threads_s,
        })
    })
}

/// W5: pool start, first `apply` result, close; and the baseline, starting
/// `PROCESSES` copies of this executable that exit at once and waiting for
/// them. Both in ms, one entry per run.
#[derive(Debug)]
pub(crate) struct Startup {
    pub(crate) pool_ms: Vec<f64>,
    pub(crate) exec_ms: Vec<f64>,
}

pub(crate) fn startup(sizes: &Sizes) -> BoxResult<Startup> {
    let rt = parent_runtime()?;
    let exe = std::env::current_exe()?;
    let mut result = Startup {
        pool_ms: Vec::new(),
        exec_ms: Vec::new(),
    };
    for _ in 0..sizes.w5_runs {
        let ms = run_limited(&rt, "W5", sizes.limit, async {
            let t = Instant::now();
            let pool = pool_of(PROCESSES, None).await?;
            let v = pool.apply(inc, 1).await?;
            pool.close().await?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if v != 2 {
                return Err(format!("W5: apply(inc, 1) gave {v}").into());
            }
            Ok(ms)
        })?;
        result.pool_ms.push(ms);

        let t = Instant::now();
        let mut children = Vec::with_capacity(PROCESSES);
        for _ in 0..PROCESSES {
            children.push(
                std::process::Command::new(&exe)
                    .arg("--exit-at-once")
                    .spawn()?,
            );
        }
        for mut child in children {
            let status = child.wait()?;
            if !status.success() {
                return Err(format!("W5 baseline: re-executed bench {status}").into());
            }
        }
        result.exec_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(result)
}

/// What the W6 child reports (one JSON object on its stdout).
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) n: u64,
    /// The child's peak RSS before the pool was built.
    pub(crate) rss_before_mib: f64,
    /// The child's peak RSS after streaming everything.
    pub(crate) rss_mib: f64,
    /// The largest peak RSS among the workers.
    pub(crate) worker_rss_mib: f64,
    pub(crate) wall_s: f64,
}

/// W6: runs the stream in a fresh child process of this executable, so that
/// its peak RSS is the stream's alone.
pub(crate) fn stream(sizes: &Sizes) -> BoxResult<Stream> {
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .arg("--w6-child")
        .arg(sizes.w6_n.to_string())
        .arg("--limit-s")
        .arg(sizes.limit.as_secs().to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stdout)?;
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("W6 child {status}; its stdout: {stdout}").into());
    }
    let v: serde_json::Value = serde_json::from_str(stdout.trim())?;
    let num = |key: &str| -> BoxResult<f64> {
        v.get(key)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| format!("W6 child did not report `{key}`").into())
    };
    Ok(Stream {
        n: sizes.w6_n,
        rss_before_mib: num("rss_before_mib")?,
        rss_mib: num("rss_mib")?,
        worker_rss_mib: num("worker_rss_mib")?,
        wall_s: num("wall_s")?,
    })
}

/// The body of the W6 child: streams `map(inc, 0..n)`, folding the results
/// as they arrive, and prints its measurements as JSON.
pub(crate) fn stream_child(n: u64, limit: Duration) -> BoxResult<()> {
    let rt = parent_runtime()?;
    let (before, wall, workers) = run_limited(&rt, "W6", limit, async {
        let before = peak_rss_mib(None)?;
        let pool = pool_of(PROCESSES, None).await?;
        let t = Instant::now();
        let mut results = pool.map(inc, 0..n);
        let mut sum = 0u64;
        let mut count = 0u64;
        while let Some(r) = results.next().await {
            sum = sum.wrapping_add(r?);
            count += 1;
        }
        drop(results);
        let wall = t.elapsed();
        if count != n || sum != inc_checksum(n) {
            return Err(format!(
                "W6: {count} results summing to {sum}, expected {n} summing to {}",
                inc_checksum(n)
            )
            .into());
        }
        let mut workers: f64 = 0.0;
        for pid in pool.worker_pids() {
            workers = workers.max(peak_rss_mib(Some(pid))?);
        }
        pool.close().await?;
        Ok((before, wall, workers))
    })?;
    let out = serde_json::json!({
        "rss_before_mib": before,
        "rss_mib": peak_rss_mib(None)?,
        "worker_rss_mib": workers,
        "wall_s": wall.as_secs_f64(),
    });
    println!("{out}");
    Ok(())
}

/// User plus system CPU seconds from a `/proc/.../stat` file (a process's
/// or one thread's), counted in the kernel's 100 Hz ticks.
fn cpu_s(path: &str) -> BoxResult<f64> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name, which may hold spaces: utime and
    // stime are the 14th and 15th fields of the line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> BoxResult<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| format!("{path}: too few fields"))?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// VmHWM of this process (`None`) or of `pid`, in MiB.
fn peak_rss_mib(pid: Option<u32>) -> BoxResult<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(&path)?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .ok_or_else(|| format!("no VmHWM in {path}"))?;
    Ok(kib / 1024.0)
}
