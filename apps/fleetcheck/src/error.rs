//! fleetcheck's one error type.

use std::path::PathBuf;

/// Everything that can stop a fleetcheck command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad arguments or a combination that cannot work.
    #[error("{0}")]
    Usage(String),
    /// A configuration or rules file that cannot be used.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong (with the line when known).
        reason: String,
    },
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The worker pool could not be started.
    #[error("cannot start the worker pool: {0}")]
    PoolStart(#[source] multiloop::Error),
    /// A round on the pool has no report.
    #[error("round {round}: {source}")]
    Round {
        /// The round.
        round: u64,
        /// Why.
        #[source]
        source: crate::pool::RoundError,
    },
    /// Another call on the pool failed.
    #[error("{what}: {source}")]
    Pool {
        /// What was being done.
        what: &'static str,
        /// The pool's error.
        #[source]
        source: multiloop::Error,
    },
    /// The simulated fleet could not be started.
    #[error("simulated fleet: {0}")]
    Fleet(String),
    /// The findings on the built-in fleet differ from the injected anomalies.
    #[error("{0}")]
    Verification(String),
    /// The benchmark's local cluster cannot run (`bench --cluster-agents`).
    #[error("local cluster: {0}")]
    Cluster(String),
    /// The Python anchor of the benchmark cannot run (`bench --anchors`).
    #[error("Python anchor: {0}")]
    Anchor(String),
}

impl Error {
    /// An [`Error::Io`] naming what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
