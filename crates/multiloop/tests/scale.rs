#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Throughput features: chunking, lazy input with a bounded window,
//! map-reduce in the workers (also under worker crashes).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use multiloop::Pool;
use multiloop::reduce::{GroupBy, Sum};
use serde::{Deserialize, Serialize};

#[multiloop::task]
async fn mul3(x: u64) -> u64 {
    x.wrapping_mul(3)
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Bad(u64);

#[multiloop::task]
async fn fail_on_seven(x: u64) -> Result<u64, Bad> {
    if x % 10 == 7 { Err(Bad(x)) } else { Ok(x) }
}

#[multiloop::task]
async fn parity(x: u64) -> (String, u64) {
    (
        (if x.is_multiple_of(2) { "even" } else { "odd" }).to_string(),
        x,
    )
}

#[multiloop::task]
async fn square_slowly(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_micros(300)).await;
    x * x
}

/// 0.2–1.2 ms, differing from task to task: results come back a few at
/// a time, in no particular order.
#[multiloop::task]
async fn jittered(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_micros(200 + x.wrapping_mul(7919) % 1000)).await;
    x
}

#[multiloop::task]
async fn slow_first(x: u64) -> u64 {
    if x == 0 {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    x
}

#[tokio::test]
async fn chunked_and_unchunked_maps_give_identical_ordered_results() {
    let pool = Pool::builder().processes(2).build().await.unwrap();
    let adaptive = pool.map(mul3, 0..50_000u64).await.unwrap();
    let one_by_one = pool.map(mul3, 0..50_000u64).chunk_size(1).await.unwrap();
    let big = pool.map(mul3, 0..50_000u64).chunk_size(4096).await.unwrap();
    let expect: Vec<u64> = (0..50_000u64).map(|x| x * 3).collect();
    assert_eq!(adaptive, expect);
    assert_eq!(one_by_one, expect);
    assert_eq!(big, expect);
}

#[tokio::test]
async fn endless_input_is_pulled_only_within_the_window() {
    let pool = Pool::builder()
        .processes(2)
        .concurrency(8)
        .build()
        .await
        .unwrap();
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&pulled);
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut stream = pool.map(mul3, endless);
    for i in 0..200_000u64 {
        assert_eq!(stream.next().await.unwrap().unwrap(), i * 3);
    }
    let taken = pulled.load(Ordering::Relaxed);
    // The window is 2 × processes × max(concurrency, chunk size): at most
    // 2 × 2 × 32768 inputs ahead of the consumer.
    assert!(
        taken <= 200_000 + 4 * 32_768,
        "pulled {taken} inputs for 200000 results"
    );
    drop(stream);

    // A consumer that stops reading stops the pulling, even behind a slow
    // first task (results wait in the reorder buffer, counted in the window).
    let pulled = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&pulled);
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut stream = pool.map(slow_first, endless).chunk_size(16);
    assert_eq!(stream.next().await.unwrap().unwrap(), 0);
    let taken = pulled.load(Ordering::Relaxed);
    assert!(
        taken <= 2 * 2 * 16 + 2 * 2 * 8 * 2 + 64,
        "pulled {taken} inputs while the first task slept"
    );
}

#[tokio::test]
async fn map_reduce_equals_the_same_fold_in_process() {
    let pool = Pool::builder().processes(2).build().await.unwrap();
    let out = pool
        .map_reduce(mul3, 0..300_000u64, Sum::<u64>::new())
        .await
        .unwrap();
    let expect = (0..300_000u64).fold(0u64, |a, x| a.wrapping_add(x.wrapping_mul(3)));
    assert_eq!(out.value, expect);
    assert_eq!(out.folded, 300_000);

    let groups = pool
        .map_reduce(parity, 0..1000u64, GroupBy::<String, u64>::new())
        .await
        .unwrap();
    assert_eq!(groups.value["even"].len(), 500);
    assert_eq!(
        groups.value["odd"].iter().sum::<u64>(),
        (0..1000u64).filter(|x| x % 2 == 1).sum::<u64>()
    );
}

#[tokio::test]
async fn map_reduce_reports_failed_tasks_by_index() {
    let pool = Pool::builder().processes(2).build().await.unwrap();
    let out = pool
        .map_reduce(fail_on_seven, 0..1000u64, Sum::<u64>::new())
        .await
        .unwrap();
    assert_eq!(out.value, (0..1000u64).filter(|x| x % 10 != 7).sum::<u64>());
    let mut failed: Vec<u64> = out.errors.iter().map(|(i, _)| *i).collect();
    failed.sort_unstable();
    assert_eq!(
        failed,
        (0..1000u64).filter(|x| x % 10 == 7).collect::<Vec<_>>()
    );
    assert!(
        out.errors
            .iter()
            .all(|(i, e)| e.task_error::<Bad>() == Some(&Bad(*i)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_reduce_under_worker_kills_folds_each_result_once() {
    let pool = Arc::new(
        Pool::builder()
            .processes(2)
            .concurrency(64)
            .max_attempts(100)
            .restart_intensity(10_000, Duration::from_secs(1))
            .build()
            .await
            .unwrap(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (pool, stop) = (Arc::clone(&pool), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut kills = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // Chaos is paced by time: one kill every 15 ms.
                std::thread::sleep(Duration::from_millis(15));
                if let Some(&pid) = pool.worker_pids().first() {
                    // SAFETY: kill has no memory-safety preconditions.
                    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
                        kills += 1;
                    }
                }
            }
            kills
        })
    };
    let out = pool
        .map_reduce(square_slowly, 0..20_000u64, Sum::<u64>::new())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors.first());
    assert_eq!(out.value, (0..20_000u64).map(|x| x * x).sum::<u64>());
    assert_eq!(out.folded, 20_000);
    eprintln!("map_reduce under chaos: {kills} workers killed, sum exact");
    assert!(kills >= 3, "only {kills} kills");
}

#[tokio::test]
async fn a_chunk_with_one_failing_task_delivers_the_others() {
    let pool = Pool::builder().processes(1).build().await.unwrap();
    let results: Vec<_> = pool
        .map(fail_on_seven, 0..100u64)
        .chunk_size(100)
        .collect()
        .await;
    for (i, r) in results.iter().enumerate() {
        if i % 10 == 7 {
            assert_eq!(
                r.as_ref().unwrap_err().task_error::<Bad>(),
                Some(&Bad(i as u64))
            );
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
}

#[tokio::test]
async fn one_slow_task_does_not_hold_back_its_chunk_mates_in_map_unordered() {
    let pool = Pool::builder()
        .processes(1)
        .concurrency(100)
        .build()
        .await
        .unwrap();
    let mut stream = pool.map_unordered(slow_first, 0..100u64).chunk_size(100);
    let mut order = Vec::new();
    while let Some((i, r)) = stream.next().await {
        assert_eq!(r.unwrap(), i);
        order.push(i);
    }
    assert_eq!(order.len(), 100);
    assert_eq!(
        *order.last().unwrap(),
        0,
        "the slow task comes last, its chunk-mates before it"
    );
}

/// The window is refilled a chunk at a time, not by whatever room each
/// result frees: with results trickling back, chunks stay (mostly) full
/// (each partial of a map-reduce is one chunk's fold), routed or not.
#[tokio::test]
async fn chunks_stay_full_when_results_come_back_a_few_at_a_time() {
    use multiloop::reduce::{Partial, Sum};
    let pool = Pool::builder()
        .processes(2)
        .concurrency(8)
        .build()
        .await
        .unwrap();
    const N: u64 = 3_000;
    const CHUNK: u64 = 16;
    for routed in [false, true] {
        let call = pool
            .map_reduce(jittered, 0..N, Sum::<u64>::new())
            .chunk_size(CHUNK as usize);
        let call = if routed { call.route_by(|x| *x) } else { call };
        let mut pieces = call.partials();
        let (mut chunks, mut tasks, mut sum) = (0u64, 0u64, 0u64);
        while let Some(piece) = pieces.next().await {
            match piece.unwrap() {
                Partial::Folded { value, tasks: n } => {
                    (chunks, tasks, sum) = (chunks + 1, tasks + n, sum + value)
                }
                Partial::Failed { index, error } => panic!("task {index} failed: {error}"),
            }
        }
        assert_eq!((tasks, sum), (N, N * (N - 1) / 2), "routed: {routed}");
        // Full chunks: 188. A refill ends with a short chunk per worker
        // (routed: 188-237 seen). Refilling by the room each result freed
        // gave 940-990 routed (3 tasks per chunk), and 221 not routed.
        assert!(
            chunks * 2 <= N / CHUNK * 3,
            "routed: {routed}: {chunks} chunks for {N} tasks of chunk size {CHUNK} ({:.1} tasks per chunk)",
            N as f64 / chunks as f64
        );
    }
    pool.close().await.unwrap();
}
