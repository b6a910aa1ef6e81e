#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Quick end-to-end checks: map, apply, typed errors, hard timeouts, map-reduce, routing.
use serde::{Deserialize, Serialize};

#[multiloop::task]
async fn inc(x: u64) -> u64 {
    x + 1
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum MyErr {
    Odd(u64),
}

#[multiloop::task]
async fn even_only(x: u64) -> Result<u64, MyErr> {
    if x % 2 == 1 {
        Err(MyErr::Odd(x))
    } else {
        Ok(x)
    }
}

#[multiloop::task]
async fn nap(ms: u64) -> u64 {
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    ms
}

#[tokio::test]
async fn smoke() {
    let pool = multiloop::Pool::builder()
        .processes(2)
        .build()
        .await
        .unwrap();
    assert_eq!(pool.apply(inc, 1).await.unwrap(), 2);
    let v = pool.map(inc, 0..100_000u64).await.unwrap();
    assert_eq!(v.len(), 100_000);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 + 1));
    let e = pool.apply(even_only, 3).await.unwrap_err();
    assert_eq!(e.task_error::<MyErr>(), Some(&MyErr::Odd(3)));
    let v = pool.map(nap, vec![10; 64]).await.unwrap();
    assert_eq!(v.len(), 64);
    pool.close().await.unwrap();
}

#[multiloop::task]
async fn spin(x: u64) -> u64 {
    if x == 0 {
        #[allow(clippy::empty_loop)]
        loop {}
    }
    x
}

#[tokio::test]
async fn stuck_task_times_out_hard_and_siblings_complete() {
    let pool = multiloop::Pool::builder()
        .processes(2)
        .timeout_grace(std::time::Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let pids = pool.worker_pids();
    let t = std::time::Instant::now();
    let results: Vec<_> = futures_util::StreamExt::collect::<Vec<_>>(
        pool.map(spin, 0..50u64)
            .timeout(std::time::Duration::from_millis(300)),
    )
    .await;
    let elapsed = t.elapsed();
    assert!(
        results[0].as_ref().unwrap_err().is_timeout(),
        "{:?}",
        results[0]
    );
    for (i, r) in results.iter().enumerate().skip(1) {
        assert_eq!(*r.as_ref().unwrap(), i as u64);
    }
    assert!(
        elapsed < std::time::Duration::from_millis(2000),
        "{elapsed:?}"
    );
    let now = pool.worker_pids();
    assert!(
        pids.iter().any(|p| !now.contains(p)),
        "the stuck worker was replaced"
    );
    pool.close().await.unwrap();
}

#[multiloop::task]
async fn square_or_fail(x: u64) -> Result<u64, MyErr> {
    if x % 1000 == 999 {
        Err(MyErr::Odd(x))
    } else {
        Ok(x * x)
    }
}

#[tokio::test]
async fn map_reduce_folds_in_workers() {
    let pool = multiloop::Pool::builder()
        .processes(2)
        .build()
        .await
        .unwrap();
    let out = pool
        .map_reduce(
            square_or_fail,
            0..100_000u64,
            multiloop::reduce::Sum::<u64>::new(),
        )
        .await
        .unwrap();
    let expect: u64 = (0..100_000u64)
        .filter(|x| x % 1000 != 999)
        .map(|x| x * x)
        .sum();
    assert_eq!(out.value, expect);
    assert_eq!(out.errors.len(), 100);
    assert_eq!(out.folded, 99_900);
    let top = pool
        .map_reduce(inc, 0..1000u64, multiloop::reduce::TopK::new(3))
        .await
        .unwrap();
    assert_eq!(top.value, vec![1000, 999, 998]);
    let routed: Vec<u32> = pool
        .map(pid_of, 0..64u64)
        .route_by(|x| *x % 4)
        .await
        .unwrap();
    for (i, p) in routed.iter().enumerate() {
        assert_eq!(*p, routed[i % 4], "key {} always on one worker", i % 4);
    }
}

#[multiloop::task]
async fn pid_of(_x: u64) -> u32 {
    std::process::id()
}
