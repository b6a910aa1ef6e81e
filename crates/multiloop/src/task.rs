//! The [`Task`] trait and the registry that finds a task by its stable name.
//!
//! A worker never receives a function address: the parent sends the task's
//! name (its module path and function name) and the worker looks it up in a
//! registry that every copy of the executable builds the same way at link
//! time (`linkme`).

use std::fmt;
use std::future::Future;

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
