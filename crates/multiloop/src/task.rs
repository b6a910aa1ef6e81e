//! The [`Task`] trait and the registry that finds a task by its stable name.
//!
//! A worker never receives a function address: the parent sends the task's
//! name (its module path and function name) and the worker looks it up in a
//! registry that every copy of the executable builds the same way at link
//! time (`linkme`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An async function that can run in a worker process.
///
/// Implemented by `#[multiloop::task]`; write the attribute rather than this
/// trait by hand. The attribute turns
///
/// ```ignore
/// #[multiloop::task]
/// async fn add(a: u64, b: u64) -> Result<u64, MyError> { /* ... */ }
/// ```
///
/// into a unit struct `add` implementing `Task` with `Args = (u64, u64)`,
/// `Output = u64` and `Error = MyError`. A task that does not return a
/// `Result` has `Error = NoError`. The original function stays callable
/// in-process as `add::run(a, b)`.
pub trait Task: Copy + Default + Send + Sync + 'static {
    /// The stable name the worker finds the task by: `module::path::function`.
    const NAME: &'static str;
    /// The arguments: the single argument's type for a one-argument task,
    /// a tuple for several, `()` for none.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// The value the task produces on success.
    type Output: Serialize + DeserializeOwned + Send + 'static;
    /// The task's own error type, delivered to the caller typed.
    type Error: Serialize + DeserializeOwned + fmt::Debug + Send + Sync + 'static;

    /// Starts the task on the current (worker) event loop.
    fn call(
        self,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::Output, Self::Error>> + 'static;
}

/// The error type of a task that cannot fail: it has no values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoError {}

impl fmt::Display for NoError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NoError {}

/// One registered task, as the worker sees it: a name and a type-erased entry
/// point. Created by `#[multiloop::task]`; not meant to be used directly.
#[doc(hidden)]
pub struct TaskEntry {
    pub(crate) name: &'static str,
    pub(crate) start: crate::worker::StartFn,
    pub(crate) init: crate::worker::InitFn,
}

impl TaskEntry {
    /// The entry for task type `T`.
    #[doc(hidden)]
    pub const fn new<T: Task>() -> Self {
        TaskEntry {
            name: T::NAME,
            start: crate::worker::start::<T>,
            init: crate::worker::init_task::<T>,
        }
    }
}

/// Every task linked into the executable. The linker gathers the entries
/// into one section, so the slice is complete before any code runs, even
/// code that runs before `main` (where workers start).
#[linkme::distributed_slice]
pub static TASKS: [TaskEntry];

/// The registry: every task linked into this executable, by name.
pub(crate) struct Registry {
    by_name: HashMap<&'static str, &'static TaskEntry>,
    /// Names registered twice (a registry conflict the user must fix).
    pub(crate) duplicates: Vec<&'static str>,
    /// A fingerprint of the set of task names, compared at the handshake so
    /// that a worker built from different code is refused.
    pub(crate) fingerprint: u64,
}

impl Registry {
    pub(crate) fn get() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            let mut by_name = HashMap::new();
            let mut duplicates = Vec::new();
            for entry in TASKS {
                if by_name.insert(entry.name, entry).is_some() {
                    duplicates.push(entry.name);
                }
            }
            let mut names: Vec<&str> = by_name.keys().copied().collect();
            names.sort_unstable();
            // FNV-1a: stable across runs and builds, unlike `DefaultHasher`.
            let mut fingerprint: u64 = 0xcbf2_9ce4_8422_2325;
            for name in names {
                for byte in name.bytes().chain([0u8]) {
                    fingerprint ^= u64::from(byte);
                    fingerprint = fingerprint.wrapping_mul(0x0100_0000_01b3);
                }
            }
            Registry {
                by_name,
                duplicates,
                fingerprint,
            }
        })
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<&'static TaskEntry> {
        self.by_name.get(name).copied()
    }
}
