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
