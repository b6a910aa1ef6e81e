//! The one error type of the library.

use std::any::Any;
use std::fmt;
use std::time::Duration;

/// Everything that can go wrong when running a task in a worker process.
///
/// The error is opaque; ask it what happened with the predicates
/// (`is_task_error`, `is_panic`, `is_crash`, `is_timeout`, ...). A task's own
/// error comes back as the user's type, through [`Error::task_error`] and
/// [`Error::into_task_error`].
///
/// ```
/// # use multiloop::Error;
/// let err = Error::pool_closed();
/// assert!(err.is_pool_closed());
/// assert_eq!(err.to_string(), "the pool is closed: no new tasks are accepted");
/// ```
pub struct Error {
    kind: Box<Kind>,
}

pub(crate) enum Kind {
    /// The task returned `Err(e)`; `value` holds the user's `E`.
    Task {
        value: Box<dyn Any + Send + Sync>,
        debug: String,
    },
    /// The task panicked.
    Panic {
        message: String,
        location: Option<String>,
    },
    /// The worker running the task died on the task's last attempt.
    Crash {
        task: Option<&'static str>,
        exit: ExitInfo,
        attempts: u32,
        stderr_tail: String,
    },
    /// The task ran past its deadline.
    Timeout { after: Duration, hard: bool },
    /// The pool is closed or terminated.
    PoolClosed { terminated: bool },
    /// A value could not be serialized or deserialized.
    Serialization {
        what: String,
        type_name: &'static str,
        reason: String,
    },
    /// The pool gave up restarting workers.
    RestartIntensity {
        restarts: u32,
        within: Duration,
        last: ExitInfo,
        /// The end of the last dead worker's stderr (why it died, often).
        stderr_tail: String,
        /// When the pool starts workers again; `None`: it stopped for good.
        backoff: Option<Duration>,
    },
    /// Starting or talking to a worker failed at the OS level.
    Io {
        context: String,
        source: std::io::Error,
    },
    /// A worker or parent broke the protocol (bad frame, wrong version).
    Protocol { reason: String },
    /// The caller used the API wrongly (bad configuration, join before start...).
    Usage { reason: String },
    /// The worker's initializer failed, so the worker could not start.
    Initializer { reason: String },
}

/// How a worker process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, when the process exited normally.
    pub code: Option<i32>,
    /// The signal that killed the process, when one did.
    pub signal: Option<i32>,
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (_, Some(sig)) => write!(f, "killed by signal {sig} ({})", signal_name(sig)),
            (Some(code), None) => write!(f, "exited with code {code}"),
            (None, None) => f.write_str("ended (status unknown)"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGINT => "SIGINT",
        libc::SIGPIPE => "SIGPIPE",
        _ => "signal",
    }
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error {
            kind: Box::new(kind),
        }
    }

    /// The error for using a pool after `close()` or `terminate()`.
    pub fn pool_closed() -> Self {
        Error::new(Kind::PoolClosed { terminated: false })
    }

    pub(crate) fn terminated() -> Self {
        Error::new(Kind::PoolClosed { terminated: true })
    }

    pub(crate) fn usage(reason: impl Into<String>) -> Self {
        Error::new(Kind::Usage {
            reason: reason.into(),
        })
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        Error::new(Kind::Protocol {
            reason: reason.into(),
        })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::new(Kind::Io {
            context: context.into(),
            source,
        })
    }

    pub(crate) fn serialization(
        what: impl Into<String>,
        type_name: &'static str,
        reason: impl fmt::Display,
    ) -> Self {
        Error::new(Kind::Serialization {
            what: what.into(),
            type_name,
            reason: reason.to_string(),
        })
    }

    pub(crate) fn task<E: fmt::Debug + Send + Sync + 'static>(value: E) -> Self {
        let debug = format!("{value:?}");
        Error::new(Kind::Task {
            value: Box::new(value),
            debug,
        })
    }

    /// True when the task itself returned an error; get it with
    /// [`task_error`](Error::task_error).
    pub fn is_task_error(&self) -> bool {
        matches!(*self.kind, Kind::Task { .. })
    }

    /// The task's own error, when it returned one of type `E`.
    ///
    /// `E` is the error type of the task's `Result`; asking for another type
    /// gives `None`.
    pub fn task_error<E: 'static>(&self) -> Option<&E> {
        match &*self.kind {
            Kind::Task { value, .. } => value.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Takes the task's own error out, or gives `self` back when this is not
    /// a task error of type `E`.
    pub fn into_task_error<E: 'static>(self) -> Result<E, Self> {
        match *self.kind {
            Kind::Task { value, debug } => match value.downcast::<E>() {
                Ok(e) => Ok(*e),
                Err(value) => Err(Error::new(Kind::Task { value, debug })),
            },
            kind => Err(Error {
                kind: Box::new(kind),
            }),
        }
    }

    /// True when the task panicked.
    pub fn is_panic(&self) -> bool {
        matches!(*self.kind, Kind::Panic { .. })
    }

    /// The panic's message, when the task panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &*self.kind {
            Kind::Panic { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Where the task panicked (`file:line:column`), when it did and the
    /// location is known.
    pub fn panic_location(&self) -> Option<&str> {
        match &*self.kind {
            Kind::Panic { location, .. } => location.as_deref(),
            _ => None,
        }
    }

    /// True when the worker process running the task died (on the task's
    /// last allowed attempt).
    pub fn is_crash(&self) -> bool {
        matches!(*self.kind, Kind::Crash { .. })
    }

    /// How the worker process ended, for a crash.
    pub fn exit_info(&self) -> Option<&ExitInfo> {
        match &*self.kind {
            Kind::Crash { exit, .. } | Kind::RestartIntensity { last: exit, .. } => Some(exit),
            _ => None,
        }
    }

    /// The last lines the crashed worker (for a restart storm: the last
    /// worker that died) wrote to its standard error.
    pub fn stderr_tail(&self) -> Option<&str> {
        match &*self.kind {
            Kind::Crash { stderr_tail, .. } | Kind::RestartIntensity { stderr_tail, .. } => {
                Some(stderr_tail)
            }
            _ => None,
        }
    }

    /// True when the task ran past its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(*self.kind, Kind::Timeout { .. })
    }

    /// True when the pool was closed or terminated before the task could run.
    pub fn is_pool_closed(&self) -> bool {
        matches!(*self.kind, Kind::PoolClosed { .. })
    }

    /// True when a value (arguments, result or task error) could not be
    /// serialized or deserialized.
    pub fn is_serialization(&self) -> bool {
        matches!(*self.kind, Kind::Serialization { .. })
    }

    /// True when the pool stopped restarting workers because they died too
    /// often.
    pub fn is_restart_intensity(&self) -> bool {
        matches!(*self.kind, Kind::RestartIntensity { .. })
    }

    /// True for a protocol violation between parent and worker (a bad frame,
    /// a different binary or protocol version).
    pub fn is_protocol(&self) -> bool {
        matches!(*self.kind, Kind::Protocol { .. })
    }

    /// True when the API was used wrongly (bad configuration, a join before
    /// start, ...).
    pub fn is_usage(&self) -> bool {
        matches!(*self.kind, Kind::Usage { .. })
    }

    /// True when a worker's initializer failed.
    pub fn is_initializer(&self) -> bool {
        matches!(*self.kind, Kind::Initializer { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            Kind::Task { debug, .. } => write!(f, "the task failed: {debug}"),
            Kind::Panic {
                message,
                location: Some(loc),
            } => write!(f, "the task panicked at {loc}: {message}"),
            Kind::Panic {
                message,
                location: None,
            } => write!(f, "the task panicked: {message}"),
            Kind::Crash {
                task,
                exit,
                attempts,
                stderr_tail,
            } => {
                match task {
                    Some(name) => write!(f, "the worker running task `{name}` {exit}")?,
                    None => write!(f, "the worker {exit}")?,
                }
                write!(f, " (attempt {attempts} of {attempts}, no attempts left)")?;
                let tail = stderr_tail.trim_end();
                if !tail.is_empty() {
                    write!(f, "; its stderr ended with:\n{tail}")?;
                }
                Ok(())
            }
            Kind::Timeout { after, hard: false } => write!(f, "the task timed out after {after:?}"),
            Kind::Timeout { after, hard: true } => {
                write!(
                    f,
                    "the task timed out after {after:?} and its worker did not answer, so it was killed"
                )
            }
            Kind::PoolClosed { terminated: false } => {
                f.write_str("the pool is closed: no new tasks are accepted")
            }
            Kind::PoolClosed { terminated: true } => {
                f.write_str("the pool was terminated before the task finished")
            }
            Kind::Serialization {
                what,
                type_name,
                reason,
            } => {
                write!(
                    f,
                    "could not serialize or deserialize the {what} (type `{type_name}`): {reason}"
                )
            }
            Kind::RestartIntensity {
                restarts,
                within,
                last,
                stderr_tail,
                backoff,
            } => {
                write!(
                    f,
                    "workers died {restarts} times within {within:?} for reasons no task explains, more than the pool allows (the last one {last}); "
                )?;
                match backoff {
                    Some(delay) => write!(
                        f,
                        "every pending task was failed, and the pool starts workers again after {delay:?}"
                    )?,
                    None => f.write_str("the pool stopped for good")?,
                }
                let tail = stderr_tail.trim_end();
                if !tail.is_empty() {
                    write!(f, "; the last one's stderr ended with:\n{tail}")?;
                }
                Ok(())
            }
            // The OS error is the `source()`: reporters print the chain,
            // so saying it here too would print it twice.
            Kind::Io { context, .. } => f.write_str(context),
            Kind::Protocol { reason } => {
                write!(f, "protocol error between parent and worker: {reason}")
            }
            Kind::Usage { reason } => f.write_str(reason),
            Kind::Initializer { reason } => write!(f, "the worker initializer failed: {reason}"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "multiloop::Error({self})")
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            Kind::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::io("I/O error", source)
    }
}

/// The result type of the library's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
