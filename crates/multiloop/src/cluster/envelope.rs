//! What travels through the broker: a chunk of work from a caller to the
//! hosts, the outcomes of a chunk back to its caller, a caller's
//! cancellation, and a host's question about a chunk delivered again.
//! Encoded with `postcard`; arguments and results stay the opaque bytes
//! the typed layer made, borrowed from the message, not copied.

use serde::{Deserialize, Serialize};

use crate::error::ExitInfo;
use crate::pool::ClusterFailure as Failure;

/// A chunk of tasks of one kind, as the caller's scheduler made it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Work<'a> {
    /// The caller's id: where the outcomes go.
    pub(crate) caller: &'a str,
    /// The chunk's id in the caller's scheduler.
    pub(crate) chunk: u64,
    pub(crate) task: &'a str,
    /// Soft deadline per task in microseconds; 0 means none.
    pub(crate) timeout_us: u64,
    /// Attempts per task on the host's local pool.
    pub(crate) max_attempts: u32,
    /// Name and serialized value of the reducer folding the chunk.
    pub(crate) reducer: Option<(&'a str, &'a [u8])>,
    /// `offsets[i]..offsets[i + 1]` are task `i`'s arguments in `payload`.
    pub(crate) offsets: Vec<u32>,
    pub(crate) payload: &'a [u8],
}

/// Outcomes of (part of) one chunk. A host sends every outcome of a chunk
/// before it acknowledges the chunk; a chunk run twice (a host lost, its
/// chunk redelivered) sends them twice, and the caller keeps the first.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Outcomes<'a> {
    pub(crate) chunk: u64,
    /// Tasks that ended without an outcome, and why. Come before `done`.
    #[serde(borrow)]
    pub(crate) lost: Vec<(Vec<u32>, Lost<'a>)>,
    /// `(index in the chunk, status, data)`; a fold of the chunk's results
    /// (status `Partial`) comes last, its index the chunk's task count.
    pub(crate) done: Vec<(u32, u8, &'a [u8])>,
}

/// Why tasks ended on a host without an outcome from a worker: the
/// failures of the host's local pool that travel to the caller.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Lost<'a> {
    Crash {
        code: Option<i32>,
        signal: Option<i32>,
        attempts: u32,
        stderr_tail: &'a str,
    },
    HardTimeout {
        after_us: u64,
    },
    RestartIntensity {
        restarts: u32,
        within_us: u64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Setup(&'a str),
}

impl<'a> Lost<'a> {
    /// The form of a local failure that travels; `None` for the ones that
    /// mean "this host stopped", after which the chunk goes to another.
    pub(crate) fn from_failure(f: &'a Failure) -> Option<Lost<'a>> {
        Some(match f {
            Failure::Crash {
                exit,
                attempts,
                stderr_tail,
                ..
            } => Lost::Crash {
                code: exit.code,
                signal: exit.signal,
                attempts: *attempts,
                stderr_tail,
            },
            Failure::HardTimeout { after } => Lost::HardTimeout {
                after_us: after.as_micros().min(u128::from(u64::MAX)) as u64,
            },
            Failure::RestartIntensity {
                restarts,
                within,
                last,
                ..
            } => Lost::RestartIntensity {
                restarts: *restarts,
                within_us: within.as_micros().min(u128::from(u64::MAX)) as u64,
                code: last.code,
                signal: last.signal,
            },
            Failure::Setup(reason) => Lost::Setup(reason),
            Failure::Terminated | Failure::Closed | Failure::Cluster(_) | Failure::RuntimeGone => {
                return None;
            }
        })
    }

    /// The caller's failure for tasks of `task`.
    pub(crate) fn to_failure(&self, task: &'static str) -> Failure {
        use std::time::Duration;
        match *self {
            Lost::Crash {
                code,
                signal,
                attempts,
                stderr_tail,
            } => Failure::Crash {
                task,
                exit: ExitInfo { code, signal },
                attempts,
                stderr_tail: stderr_tail.to_owned(),
            },
            Lost::HardTimeout { after_us } => Failure::HardTimeout {
                after: Duration::from_micros(after_us),
            },
            Lost::RestartIntensity {
                restarts,
                within_us,
                code,
                signal,
            } => Failure::RestartIntensity {
                restarts,
                within: Duration::from_micros(within_us),
                last: ExitInfo { code, signal },
                stderr_tail: String::new(),
                backoff: None,
            },
            Lost::Setup(reason) => Failure::Setup(reason.to_owned()),
        }
    }
}

/// A caller dropped these chunks: hosts running them stop.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Cancel<'a> {
    pub(crate) caller: &'a str,
    pub(crate) chunks: Vec<u64>,
}

/// A host that got a chunk again asks its caller which of the chunk's
/// tasks it still waits for.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Ask {
    pub(crate) chunk: u64,
}

/// The caller's answer: the indices of the chunk's tasks without an
/// outcome yet (none: the chunk is settled, or cancelled).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Wanted {
    pub(crate) tasks: Vec<u32>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Every type here serializes (no maps with non-string keys, no
    // unsized sequences), so this cannot fail; an empty message would be
    // refused by the reader anyway.
    postcard::to_stdvec(value).unwrap_or_default()
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("bad cluster message: {e}"))
}
