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
//! # multiloop::init_before_main!();
//! #[multiloop::task]
//! async fn inc(x: u64) -> u64 {
//!     x + 1
//! }
//!
//! fn main() -> Result<(), multiloop::Error> {
//!     multiloop::init(); // in a worker process this never returns
//!     let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//!     runtime.block_on(async {
//!         let pool = multiloop::Pool::builder().processes(2).concurrency(64).build().await?;
//!         let out: Vec<u64> = pool.map(inc, 0..1000).await?;
//!         assert_eq!(out[999], 1000);
//!         assert_eq!(pool.apply(inc, 41).await?, 42);
//!         pool.close().await
//!     })
//! }
//! ```
//!
//! # Workers
//!
//! A worker is your own executable started again with a marker in its
//! environment. [`init`] at the top of `main` turns such a process into a
//! worker (and never returns there); in a normal run it does nothing. Test
//! binaries, benches and doctests, whose `main` is generated, use
//! [`init_before_main!`] once per binary instead.
//!
//! # Tasks
//!
//! `#[multiloop::task]` on an `async fn` registers it under a stable name
//! (module path and function name); a worker finds tasks by that name,
//! never by a function address. Arguments and results are serde types. A
//! task returning `Result<T, E>` delivers `E` to the caller as a typed
//! value: see [`Error::task_error`].

mod beacon;
mod error;
mod ids;
mod pool;
mod process;
pub mod reduce;
mod task;
mod wire;
mod worker;

pub use error::{Error, ExitInfo, Result};
pub use multiloop_macros::task;
pub use pool::{
    Apply, Collect, Input, IterInput, Map, MapReduce, MapUnordered, Pool, PoolBuilder, StreamInput,
};
pub use process::{Process, Worker};
pub use reduce::{Reduced, Reducer};
pub use task::{NoError, Task};
pub use worker::{init, init_with, set_worker_state, worker_state};

/// Makes the current binary able to serve as a worker without calling
/// [`init`] from `main`: it runs `init` before `main` starts.
///
/// Put it once at the top level of each integration test file, bench or
/// doctest that builds a [`Pool`]; their `main` functions are generated,
/// so there is nowhere to call `init` yourself.
///
/// ```
/// multiloop::init_before_main!();
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! init_before_main {
    () => {
        // SAFETY: `init` touches only the environment, its own statics and
        // the descriptors the parent passed, all usable before `main`; in a
        // process that is not a worker it returns after one lookup. `late`
        // runs it after the other constructors it could depend on.
        #[$crate::__private::ctor::ctor(unsafe, priority = late, crate_path = $crate::__private::ctor)]
        fn __multiloop_init_before_main() {
            $crate::init();
        }
    };
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// The mistakes `#[multiloop::task]` refuses at compile time, each a
/// `compile_fail` doctest.
#[cfg(doctest)]
#[doc = include_str!("compile_fail.md")]
pub struct TaskCompileFail;

#[doc(hidden)]
pub mod __private {
    //! Used by the code that the macros generate; not a public API.
    pub use crate::reduce::{REDUCERS, ReducerEntry};
    pub use crate::task::{TASKS, TaskEntry};
    pub use ctor;
    pub use linkme;
    pub use serde;

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
