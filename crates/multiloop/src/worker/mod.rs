//! The child side: how a re-executed process becomes a worker, and the
//! worker's event loop.
//!
//! A worker is the parent's own executable started again with
//! [`ENV_MARKER`] in its environment. Every program that links multiloop
//! checks for the marker in a constructor that runs before `main`
//! ([`enter_if_worker`]): a worker builds its single-threaded tokio runtime
//! and serves the parent over the inherited socket until told to stop or
//! until the parent goes away, and never returns to `main`.
//!
//! Why before `main`, not from a call in `main`: a worker must never run
//! the user's code other than tasks and initializers, whatever the user
//! forgot or wrote first (a `#[tokio::main]` runtime, argument parsing,
//! logging set-up). Before `main` nothing of the user's has run, no runtime
//! exists yet (so the worker can build its own), and no thread has been
//! started (so removing the marker from the environment is sound).

mod channel;
mod ctx;
mod panics;
mod registry;
mod serve;
mod slot;
mod state;
mod watchdog;

use crate::marker::{ENV_MARKER, Refusal, parse_marker};

pub(crate) use registry::Registry;
pub use registry::{TASKS, TaskEntry};
pub use state::{set_worker_state, worker_state};
pub(crate) use watchdog::EXIT_STUCK;

/// Hooks that tune each worker's tokio runtime before it is built,
/// registered with [`worker_runtime_hook!`](crate::worker_runtime_hook).
#[linkme::distributed_slice]
pub static RUNTIME_HOOKS: [fn(&mut tokio::runtime::Builder)];

/// Formerly turned the process into a worker; workers now start before
/// `main` in every program that links multiloop, so this does nothing.
///
/// Kept so that programs written for earlier versions still build; remove
/// the call.
#[deprecated(
    since = "0.2.0",
    note = "workers start before `main` now: remove the call (it does nothing)"
)]
pub fn init() {}

/// Formerly [`init`] with a hook for the workers' runtime; the hook was
/// never run in a worker started before `main`.
///
/// Register the hook with [`worker_runtime_hook!`](crate::worker_runtime_hook)
/// instead; this function does nothing.
#[deprecated(
    since = "0.2.0",
    note = "register the hook with `multiloop::worker_runtime_hook!(your_fn)` instead"
)]
pub fn init_with(hook: impl FnOnce(&mut tokio::runtime::Builder) + Send + 'static) {
    let _ = hook;
}

/// Runs before `main` in every program that links multiloop: when this
/// process was started as a worker it serves its parent and never returns;
/// otherwise it returns at once (one environment lookup).
///
/// A process that carries the marker but cannot be the worker it names
/// (its parent already died, the descriptors are missing, the marker is
/// from another version) exits: it must not run the user's `main`.
pub(crate) fn enter_if_worker() {
    let Some(value) = std::env::var_os(ENV_MARKER) else {
        return;
    };
    // SAFETY: this runs in a constructor before `main`, before any thread
    // of this process was started, so nothing reads the environment at the
    // same time. Removed so that processes started by tasks do not inherit it.
    unsafe { std::env::remove_var(ENV_MARKER) };
    match parse_marker(&value) {
        Ok(marker) => serve::serve(marker),
        Err(Refusal::Orphaned) => std::process::exit(serve::EXIT_ORPHANED),
        Err(Refusal::Invalid(reason)) => {
            eprintln!(
                "multiloop: {ENV_MARKER} is set but {reason}; exiting without running `main`"
            );
            std::process::exit(serve::EXIT_SETUP);
        }
    }
}
