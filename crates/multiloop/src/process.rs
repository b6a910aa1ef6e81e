//! One-shot processes: run one task in a fresh worker process
//! (aiomultiprocess's `Process` and `Worker`).

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::process::Child;
use tokio::task::JoinHandle;

use crate::connection::{FrameReader, ReadError};
use crate::error::{Error, ExitInfo, Kind};
use crate::spawn::{self, Lifeline};
use crate::task::Task;
use crate::wire::{self, FrameWriter, Message, PROTOCOL_VERSION, Status};
use crate::worker::Registry;

/// What the driver learned from the worker: the task's outcome, if it sent
/// one.
type Outcome = Option<(Status, Bytes)>;

/// A task run once in a process of its own.
///
/// `start` launches the process, `join` waits for it to exit; awaiting the
/// `Process` does both. The task's value is discarded: use [`Worker`] to
/// get it, or its error. The exit status is the process's own: code 0 once
/// the task has run, whatever it returned or if it panicked (the panic is
/// caught; multiprocessing reports exit code 1 for an exception), a signal
/// or another code if the process died.
///
/// ```
/// #[multiloop::task]
/// async fn hello(name: String) {
///     println!("hello, {name}");
/// }
///
/// # fn main() -> Result<(), multiloop::Error> {
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// let mut p = multiloop::Process::new(hello, "world".to_string())?;
/// p.start()?;
/// let exit = p.join(None).await?;
/// assert_eq!(exit.code, Some(0));
/// # Ok(())
/// # })
/// # }
/// ```
pub struct Process {
    name: String,
    task: &'static str,
    args: Vec<u8>,
    child: Option<Child>,
    pid: Option<u32>,
    exit: Option<ExitInfo>,
    driver: Option<JoinHandle<Result<Outcome, String>>>,
    outcome: Option<Result<Outcome, String>>,
    lifeline: Option<Lifeline>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("task", &self.task)
            .field("pid", &self.pid)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Process {
    /// A process that will run `task(args)` once it is started.
    ///
    /// Fails when the arguments cannot be serialized.
    pub fn new<T: Task>(task: T, args: T::Args) -> Result<Process, Error> {
        let _ = task;
        let mut buf = Vec::new();
        wire::append_value(&mut buf, &args)
            .map_err(|e| Error::serialization("arguments", std::any::type_name::<T::Args>(), e))?;
        Ok(Process {
            name: T::NAME.rsplit("::").next().unwrap_or(T::NAME).to_owned(),
            task: T::NAME,
            args: buf,
            child: None,
            pid: None,
            exit: None,
            driver: None,
            outcome: None,
            lifeline: None,
        })
    }

    /// Names the process (default: the task's function name).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The process's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Launches the process. Must be called inside a tokio runtime, once.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.child.is_some() || self.exit.is_some() {
            return Err(Error::usage(format!(
                "process `{}` was already started",
                self.name
            )));
        }
        tokio::runtime::Handle::try_current()
            .map_err(|_| Error::usage("Process::start must be called inside a tokio runtime"))?;
        let lifeline =
            Lifeline::new().map_err(|e| Error::io("could not create the lifeline pipe", e))?;
        let beacon = crate::beacon::Beacon::new()
            .map_err(|e| Error::io("could not create the beacon page", e))?;
        let spawned = spawn::spawn_worker(
            &lifeline,
            &beacon,
            false,
            None,
            &format!("process {}", self.name),
        )
        .map_err(|e| Error::io(format!("could not start process `{}`", self.name), e))?;
        self.pid = Some(spawned.pid);
        self.child = Some(spawned.child);
        self.lifeline = Some(lifeline);
        let (task, args) = (self.task, std::mem::take(&mut self.args));
        self.driver = Some(tokio::spawn(drive(spawned.stream, task, args)));
        Ok(())
    }

    /// The process id, once started.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// True from `start` until the process has exited.
    pub fn is_alive(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    self.exit = Some(spawn::exit_info(status));
                    false
                }
                Err(_) => false,
            },
        }
    }

    /// How the process ended, once it has (`exitcode` in multiprocessing).
    pub fn exit_status(&self) -> Option<&ExitInfo> {
        self.exit.as_ref()
    }

    /// Asks the process to stop (SIGTERM).
    pub fn terminate(&self) -> Result<(), Error> {
        self.signal(libc::SIGTERM)
    }

    /// Stops the process at once (SIGKILL).
    pub fn kill(&self) -> Result<(), Error> {
        self.signal(libc::SIGKILL)
    }

    fn signal(&self, sig: libc::c_int) -> Result<(), Error> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| Error::usage(format!("process `{}` was not started", self.name)))?;
        // `id()` is `None` once the child has been reaped, so the pid we
        // signal is still our child.
        if let Some(pid) = child.id() {
            // SAFETY: kill has no memory-safety preconditions.
            if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
                return Err(Error::io(
                    "could not signal the process",
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(())
    }

    /// Waits for the process to exit, at most `timeout` when given.
    ///
    /// Joining a process that was never started, or running past the
    /// timeout, is an error; after a timeout the process keeps running and
    /// can be joined again.
    pub async fn join(&mut self, timeout: Option<Duration>) -> Result<ExitInfo, Error> {
        if let Some(exit) = &self.exit
            && self.driver.is_none()
        {
            return Ok(exit.clone());
        }
        let child = self.child.as_mut().ok_or_else(|| {
            Error::usage(format!(
                "cannot join process `{}`: it was not started",
                self.name
            ))
        })?;
        let status = match timeout {
            None => child.wait().await,
            Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    return Err(Error::new(Kind::Timeout {
                        after: limit,
                        hard: false,
                    }));
                }
            },
        };
        let status = status.map_err(|e| Error::io("could not wait for the process", e))?;
        let exit = spawn::exit_info(status);
        self.exit = Some(exit.clone());
        if let Some(driver) = self.driver.take() {
            self.outcome = Some(
                driver
                    .await
                    .unwrap_or_else(|e| Err(format!("driver failed: {e}"))),
            );
        }
        self.lifeline = None;
        Ok(exit)
    }

    fn outcome(&self) -> Option<&Result<Outcome, String>> {
        self.outcome.as_ref()
    }
}

impl IntoFuture for Process {
    type Output = Result<ExitInfo, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<ExitInfo, Error>> + Send>>;

    /// Starts the process if needed and waits for it to exit.
    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move {
            if self.child.is_none() {
                self.start()?;
            }
            self.join(None).await
        })
    }
}

/// Talks to the one-shot worker: setup, one RUN, shutdown; returns the
/// outcome the worker sent.
async fn drive(stream: UnixStream, task: &'static str, args: Vec<u8>) -> Result<Outcome, String> {
    let (rd, mut wr) = stream.into_split();
    let mut out = FrameWriter::new();
    out.setup(&wire::Setup {
        protocol: PROTOCOL_VERSION,
        fingerprint: Registry::get().fingerprint,
        concurrency: 1,
        max_frame: wire::DEFAULT_MAX_FRAME as u32,
        grace_us: 1_000_000,
        max_rss: 0,
        initializer: None,
    });
    let start = out.run_header(1, task, 0, 1, None);
    out.buf().extend_from_slice(&args);
    out.finish(start);
    out.shutdown();
    if wr.write_all(&out.take()).await.is_err() {
        // The process died before it could read its task: no outcome.
        return Ok(None);
    }
    let mut conn = FrameReader::new(rd, wire::DEFAULT_MAX_FRAME);
    let mut outcome = None;
    loop {
        let frame = match conn.read_frame().await {
            Ok(Some(frame)) => frame,
            // The process ended (or was killed mid-frame): what it sent
            // before is all there is.
            Ok(None) | Err(ReadError::ClosedMidFrame | ReadError::Io(_)) => return Ok(outcome),
            Err(e) => return Err(e.to_string()),
        };
        match Message::decode(&frame[4..]).map_err(|e| e.to_string())? {
            Message::Ready(r) if !r.error.is_empty() => return Err(r.error.to_owned()),
            Message::Ready(_) => {}
            Message::Results(results) => {
                for o in results.iter() {
                    let o = o.map_err(|e| e.to_string())?;
                    let start = o.data.as_ptr() as usize - frame.as_ptr() as usize;
                    outcome = Some((o.status, frame.slice(start..start + o.data.len())));
                }
            }
            _ => return Err("unexpected message from the process".into()),
        }
    }
}

/// A task run once in a process of its own, whose value you get back
/// (aiomultiprocess's `Worker`).
///
/// ```
/// #[multiloop::task]
/// async fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), multiloop::Error> {
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// let value = multiloop::Worker::new(square, 12)?.await?;
/// assert_eq!(value, 144);
/// # Ok(())
/// # })
/// # }
/// ```
pub struct Worker<T: Task> {
    process: Process,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task> std::fmt::Debug for Worker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("process", &self.process)
            .finish()
    }
}

impl<T: Task> Worker<T> {
    /// A worker that will run `task(args)` once it is started.
    pub fn new(task: T, args: T::Args) -> Result<Self, Error> {
        Ok(Worker {
            process: Process::new(task, args)?,
            _task: PhantomData,
        })
    }

    /// The underlying process (start, join, signals, pid).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// Launches the process.
    pub fn start(&mut self) -> Result<(), Error> {
        self.process.start()
    }

    /// Waits for the process to exit, at most `timeout` when given.
    pub async fn join(&mut self, timeout: Option<Duration>) -> Result<ExitInfo, Error> {
        self.process.join(timeout).await
    }

    /// The task's value, once the process has been joined. Before that it
    /// is an error saying the result is not ready.
    pub fn result(&self) -> Result<T::Output, Error> {
        let Some(outcome) = self.process.outcome() else {
            return Err(Error::usage(format!(
                "the result of `{}` is not ready: join the worker first",
                self.process.name
            )));
        };
        let exit = self.process.exit.clone().unwrap_or_default();
        match outcome {
            Err(reason) => Err(Error::protocol(reason.clone())),
            Ok(None) => Err(Error::new(Kind::Crash {
                task: Some(T::NAME),
                exit,
                attempts: 1,
                stderr_tail: String::new(),
            })),
            Ok(Some((status, data))) => crate::pool::decode_outcome::<T>(*status, data, None),
        }
    }
}

impl<T: Task> IntoFuture for Worker<T> {
    type Output = Result<T::Output, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<T::Output, Error>> + Send>>;

    /// Starts the worker if needed, waits for it and returns the value.
    fn into_future(mut self) -> Self::IntoFuture {
        Box::pin(async move {
            if self.process.child.is_none() {
                self.start()?;
            }
            self.join(None).await?;
            self.result()
        })
    }
}
