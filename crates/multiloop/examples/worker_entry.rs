//! A program written the usual way: `#[tokio::main]`, no set-up call for
//! multiloop. Its workers start before `main`, so `main` runs once, in the
//! parent, however the program ends.
//!
//! `cargo run --example worker_entry` maps a few tasks and prints `ok`.
//! With `--exit-during-start <µs>` it exits while its pool is starting (the
//! tests use it to check that no worker ever runs `main`, even one whose
//! parent died before it got going). When `MULTILOOP_MAIN_LOG` names a file,
//! `main` appends a line to it each time it runs.

use std::io::Write;
use std::time::Duration;

#[multiloop::task]
async fn double(x: u64) -> u64 {
    x * 2
}

#[tokio::main]
async fn main() -> Result<(), multiloop::Error> {
    if let Some(path) = std::env::var_os("MULTILOOP_MAIN_LOG") {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(log, "main {}", std::process::id())?;
    }
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--exit-during-start") {
        let micros: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);
        tokio::spawn(multiloop::Pool::builder().processes(4).build());
        tokio::time::sleep(Duration::from_micros(micros)).await;
        std::process::exit(0);
    }
    let pool = multiloop::Pool::builder().processes(2).build().await?;
    let doubled = pool.map(double, 0..100).await?;
    assert_eq!(doubled.iter().sum::<u64>(), 9_900);
    pool.close().await?;
    println!("ok");
    Ok(())
}
