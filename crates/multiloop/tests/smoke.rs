use serde::{Deserialize, Serialize};

multiloop::init_before_main!();

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
    if x % 2 == 1 { Err(MyErr::Odd(x)) } else { Ok(x) }
}

#[multiloop::task]
async fn nap(ms: u64) -> u64 {
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    ms
}

#[tokio::test]
async fn smoke() {
    let pool = multiloop::Pool::builder().processes(2).build().await.unwrap();
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
        pool.map(spin, 0..50u64).timeout(std::time::Duration::from_millis(300)),
    )
    .await;
    let elapsed = t.elapsed();
    assert!(results[0].as_ref().unwrap_err().is_timeout(), "{:?}", results[0]);
    for (i, r) in results.iter().enumerate().skip(1) {
        assert_eq!(*r.as_ref().unwrap(), i as u64);
    }
    assert!(elapsed < std::time::Duration::from_millis(2000), "{elapsed:?}");
    let now = pool.worker_pids();
    assert!(pids.iter().any(|p| !now.contains(p)), "the stuck worker was replaced");
    pool.close().await.unwrap();
}
