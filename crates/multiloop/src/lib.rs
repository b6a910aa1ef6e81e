//! Run async tasks on a pool of worker processes, each with its own event
//! loop running many tasks at once.
//!
//! Threads already scale in Rust; what processes add is isolation. A task
//! that segfaults in a C library, leaks, spins in a CPU loop or blows its
//! memory takes down one worker, never your program, and never loses
//! anyone else's work. Each worker runs a single-threaded tokio runtime, so
//! one process can keep thousands of I/O-bound tasks in flight, and a pool
//! of them uses every core.
//!
//! ```
//! #[multiloop::task]
//! async fn inc(x: u64) -> u64 {
//!     x + 1
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), multiloop::Error> {
//!     let pool = multiloop::Pool::builder().processes(2).concurrency(64).build().await?;
//!     let out: Vec<u64> = pool.map(inc, 0..1000).await?;
//!     assert_eq!(out[999], 1000);
//!     assert_eq!(pool.apply(inc, 41).await?, 42);
//!     pool.close().await
//! }
//! ```
//!
//! # Workers
//!
//! A worker is your own executable started again with a marker in its
//! environment. Every program that links multiloop checks for the marker
//! before `main` runs: a worker serves its pool and never reaches `main`,
//! so nothing needs to be called, and `main` may start with
//! `#[tokio::main]`, parse arguments or set up logging as usual. In a
//! normal run the check costs one environment lookup. A worker shows in
//! `ps` under its program's name, as `myapp: multiloop worker 3`. Tune the
//! workers' runtime with [`worker_runtime_hook!`].
//!
//! # Tasks
//!
//! `#[multiloop::task]` on an `async fn` registers it under a stable name
//! (module path and function name); a worker finds tasks by that name,
//! never by a function address. Arguments and results are serde types. A
//! task returning `Result<T, E>` delivers `E` to the caller as a typed
//! value: see [`Error::task_error`].
//!
//! # Threads and pinning
//!
//! [`Pool`] is `Send + Sync`: share it by reference or in an `Arc`.
//! [`Error`] is `Send + Sync + 'static`, so it converts into
//! `Box<dyn std::error::Error + Send + Sync>`. The future or stream of a
//! call ([`Apply`], [`Map`] and its [`Collect`], [`MapUnordered`],
//! [`MapReduce`]) is `Send` whenever its inputs are, so it can be awaited in
//! a spawned task, and always `Unpin`. These are checked at compile time.
//!
//! # Platforms
//!
//! Linux only: the pool uses pidfds, memfd, `prctl` and `/proc`. On any
//! other target the crate fails to compile with an error saying so.

#[cfg(not(target_os = "linux"))]
compile_error!("multiloop runs on Linux only: it uses pidfds, memfd, prctl and /proc");

mod assertions;
mod beacon;
#[cfg(feature = "cluster")]
pub mod cluster;
mod connection;
mod error;
mod fdpass;
mod ids;
mod marker;
mod pool;
mod process;
pub mod reduce;
mod spawn;
mod task;
mod wire;
mod worker;

pub use error::{Error, ExitInfo, Result};
pub use multiloop_macros::task;
pub use pool::{
    Apply, Collect, Input, IterInput, Map, MapReduce, MapUnordered, Partials, Pool, PoolBuilder,
    PoolStats, RestartPolicy, StreamInput,
};
pub use process::{Process, Worker};
pub use reduce::{Reduced, Reducer};
pub use task::{NoError, Task};
#[allow(deprecated)]
pub use worker::{init, init_with};
pub use worker::{set_worker_state, worker_state};

/// Formerly made test binaries able to serve as workers; every program
/// that links multiloop now can, so this expands to nothing.
///
/// Kept so that code written for earlier versions still builds; remove it.
///
/// ```
/// multiloop::init_before_main!(); // does nothing
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! init_before_main {
    () => {};
}

/// Registers a function that tunes each worker's tokio runtime before it
/// is built (aiomultiprocess's `loop_initializer`).
///
/// The runtime is a current-thread runtime with time and I/O enabled; the
/// hook may change its settings (event interval, thread name, ...). Hooks
/// run in every worker of every pool in the program, in no fixed order.
///
/// ```
/// fn tune(runtime: &mut tokio::runtime::Builder) {
///     runtime.event_interval(31);
/// }
/// multiloop::worker_runtime_hook!(tune);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! worker_runtime_hook {
    ($hook:path) => {
        const _: () = {
            #[$crate::__private::linkme::distributed_slice($crate::__private::RUNTIME_HOOKS)]
            #[linkme(crate = $crate::__private::linkme)]
            static HOOK: fn(&mut $crate::__private::tokio::runtime::Builder) = $hook;
        };
    };
}

/// Every program that links multiloop becomes a worker here, before its
/// `main` runs, when it was started as one (see `worker::enter_if_worker`).
// SAFETY: `enter_if_worker` touches only the environment (no thread exists
// yet), its own statics and the descriptors the parent passed, all usable
// before `main`; in a process that is not a worker it returns after one
// lookup. `late` runs it after other constructors it could depend on.
#[ctor::ctor(unsafe, priority = late)]
fn enter_worker_before_main() {
    worker::enter_if_worker();
    #[cfg(feature = "cluster")]
    cluster::enter_if_host();
}

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct CrateReadmeDoctests;

/// The repository README's examples, compiled and run as doctests. That
/// file is not in the published package, so `.cargo/config.toml` sets
/// `multiloop_repository` for rustdoc in the repository only.
#[cfg(all(doctest, multiloop_repository))]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

#[doc(hidden)]
pub mod __private {
    //! Used by the code that the macros generate; not a public API.
    pub use crate::reduce::{REDUCERS, ReducerEntry};
    pub use crate::worker::RUNTIME_HOOKS;
    pub use crate::worker::{TASKS, TaskEntry};
    pub use ctor;
    pub use linkme;
    pub use serde;
    pub use tokio;

    /// Decodes `bytes` as a stream of frames the way both ends do, for the
    /// fuzz target: it must never panic, whatever the input.
    pub fn fuzz_decode(mut bytes: &[u8]) {
        use crate::wire::{Message, check_frame, decode_panic};
        while let Ok(Some(frame)) = check_frame(bytes, 1 << 20) {
            let body = &bytes[4..frame.len];
            if let Ok(Message::Results(results)) = Message::decode(body) {
                for outcome in results.iter().flatten() {
                    let _ = decode_panic(outcome.data);
                }
            }
            bytes = &bytes[frame.len..];
        }
    }
}
