//! Serving the parent: the process set-up (lifeline, beacon, panic hook,
//! runtime), the handshake, and the loop that reads frames, starts tasks
//! and writes outcomes.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::net::UnixStream;

use super::channel::Channel;
use super::ctx::{BEACON, Ctx, MemoryLimit};
use super::panics::install_panic_hook;
use super::registry::Registry;
use super::watchdog::Watchdog;
use crate::connection::{FrameReader, ReadError};
use crate::marker::Marker;
use crate::wire::{self, FrameWriter, Message, PROTOCOL_VERSION, Status};

/// Exit code of a worker whose parent went away.
pub(crate) const EXIT_ORPHANED: i32 = 70;
/// Exit code of a worker that could not start or broke the protocol.
pub(crate) const EXIT_SETUP: i32 = 71;

/// Ends the worker as soon as the parent is gone, even while a task spins
/// in a CPU loop, without a thread of its own: the kernel signals the
/// reader of a pipe whose last writer closed it, and only the parent holds
/// the lifeline's write end, so its death (or exit) closes it. The worker
/// asks for that signal to be SIGKILL (`F_SETSIG`), on a description of
/// the pipe of its own (`F_SETOWN` is per description, and every worker of
/// a pool inherits the same one). A thread blocked on the pipe did the same
/// job before, but every worker then paid for a thread at its start, and at
/// its exit waited for that thread to be scheduled to die (W5 of
/// `multiloop-bench`).
fn arm_lifeline(lifeline: OwnedFd) -> Result<(), String> {
    // Linux's `F_SETSIG` (asm-generic/fcntl.h), which the libc crate does
    // not export for glibc targets.
    const F_SETSIG: libc::c_int = 10;
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", lifeline.as_raw_fd());
    // Non-blocking: opening a pipe to read would otherwise wait for a
    // writer, and the parent may be gone already.
    let own = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("could not open the lifeline ({path}): {e}"))?;
    drop(lifeline);
    let fd = own.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let armed = unsafe {
        libc::fcntl(fd, libc::F_SETOWN, libc::getpid()) == 0
            && libc::fcntl(fd, F_SETSIG, libc::SIGKILL) == 0
            && libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK | libc::O_ASYNC) == 0
    };
    if !armed {
        return Err(format!(
            "could not arm the lifeline: {}",
            std::io::Error::last_os_error()
        ));
    }
    // The parent may have gone before the signal was armed: the pipe then
    // reads end-of-file at once (nobody writes to it otherwise).
    let mut byte = [0u8; 1];
    if let Ok(0) = std::io::Read::read(&mut &own, &mut byte) {
        // SAFETY: `_exit` has no preconditions; nothing is set up yet.
        unsafe { libc::_exit(EXIT_ORPHANED) };
    }
    // Kept open for the life of the process: closing it would disarm it.
    std::mem::forget(own);
    Ok(())
}

/// Runs the worker until the parent says stop or goes away; never returns.
pub(crate) fn serve(marker: Marker) -> ! {
    // We run before `main`, where the standard library would have set
    // SIGPIPE to be ignored: do the same, so a write to a closed pipe is an
    // error for the task (or for us), as in any Rust program, not a death.
    // SAFETY: setting a signal's disposition to SIG_IGN has no
    // preconditions; no other thread exists yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    if let Err(e) = arm_lifeline(marker.lifeline) {
        eprintln!("multiloop worker: {e}");
        std::process::exit(EXIT_SETUP);
    }
    match crate::beacon::Beacon::map(marker.beacon) {
        Ok(b) => {
            let _ = BEACON.set(b);
        }
        Err(e) => {
            eprintln!("multiloop worker: could not map the beacon page: {e}");
            std::process::exit(EXIT_SETUP);
        }
    }
    install_panic_hook();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    for hook in super::RUNTIME_HOOKS {
        hook(&mut builder);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("multiloop worker: could not build the tokio runtime: {e}");
            std::process::exit(EXIT_SETUP);
        }
    };
    let local = tokio::task::LocalSet::new();
    let code = local.block_on(&runtime, async move {
        match serve_socket(marker.socket).await {
            Ok(()) => 0,
            Err(reason) => {
                eprintln!("multiloop worker: {reason}");
                EXIT_SETUP
            }
        }
    });
    std::process::exit(code)
}

async fn serve_socket(socket: OwnedFd) -> Result<(), String> {
    let write_fd = socket
        .try_clone()
        .map_err(|e| format!("socket setup failed: {e}"))?;
    let channel = Arc::new(Channel::new(write_fd));
    let std_stream = std::os::unix::net::UnixStream::from(socket);
    std_stream
        .set_nonblocking(true)
        .map_err(|e| format!("socket setup failed: {e}"))?;
    let stream =
        UnixStream::from_std(std_stream).map_err(|e| format!("socket setup failed: {e}"))?;
    let mut conn = FrameReader::new(stream, wire::DEFAULT_MAX_FRAME);
    let Some(ctx) = handshake(&mut conn, channel).await? else {
        return Ok(());
    };
    let registry = Registry::get();
    let mut spare = Vec::new();
    let mut draining = false;
    let mut next_memory_check = std::time::Instant::now();
    loop {
        while let Some(frame) = conn.buffered_frame().map_err(|e| e.to_string())? {
            handle_frame(&ctx, registry, frame, &mut draining)?;
        }
        ctx.fill();
        // The parent gone is not an error of ours: end quietly.
        if ctx.flush(&mut spare).is_err() {
            return Ok(());
        }
        if draining && ctx.idle() {
            return Ok(());
        }
        if !ctx.idle() && std::time::Instant::now() >= next_memory_check {
            next_memory_check = std::time::Instant::now() + MemoryLimit::EVERY;
            ctx.check_memory();
        }
        tokio::select! {
            read = conn.read_more() => match read {
                Ok(true) => {}
                // The parent closed the channel: nobody will read what we
                // would send.
                Ok(false) | Err(ReadError::Io(_)) | Err(ReadError::ClosedMidFrame) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            },
            () = ctx.task_ended() => {}
        }
    }
}

/// The worker's half of the handshake: the first frame must be SETUP; the
/// worker checks it (protocol, task registry), runs the initializer, and
/// answers READY, with the reason when it cannot serve. `Ok(None)`: the
/// parent went away first.
async fn handshake(
    conn: &mut FrameReader<UnixStream>,
    channel: Arc<Channel>,
) -> Result<Option<Rc<Ctx>>, String> {
    let Some(frame) = conn
        .read_frame()
        .await
        .map_err(|e| format!("bad setup frame: {e}"))?
    else {
        return Ok(None);
    };
    let Ok(Message::Setup(setup)) = Message::decode(&frame[4..]) else {
        return Err("the first frame was not a valid SETUP".into());
    };
    let registry = Registry::get();
    let mut error = String::new();
    if setup.protocol != PROTOCOL_VERSION {
        error = format!(
            "protocol version {} offered, this worker speaks {PROTOCOL_VERSION}",
            setup.protocol
        );
    } else if setup.fingerprint != registry.fingerprint {
        error = "the worker's executable registers different tasks than the parent's (a different binary?)".into();
    } else if let Some((name, args)) = setup.initializer {
        error = match registry.lookup(name) {
            None => format!("no task named `{name}` is registered in this executable"),
            Some(entry) => match (entry.init)(args) {
                Err(e) => e,
                Ok(fut) => fut.await.err().unwrap_or_default(),
            },
        };
    }
    let max_frame = (setup.max_frame as usize).max(1024);
    conn.set_max_frame(max_frame);
    let mut hello = FrameWriter::new();
    hello.ready(&wire::Ready {
        protocol: PROTOCOL_VERSION,
        fingerprint: registry.fingerprint,
        pid: std::process::id(),
        error: &error,
    });
    channel
        .write_all(&hello.take())
        .map_err(|e| format!("write failed: {e}"))?;
    if !error.is_empty() {
        return Err(format!("setup failed: {error}"));
    }
    let watchdog = Watchdog::new(Arc::clone(&channel), Duration::from_micros(setup.grace_us));
    Ok(Some(Ctx::install(channel, watchdog, &setup, max_frame)))
}

/// Carries out one frame from the parent.
fn handle_frame(
    ctx: &Rc<Ctx>,
    registry: &Registry,
    mut frame: Bytes,
    draining: &mut bool,
) -> Result<(), String> {
    let message = Message::decode(&frame[4..]).map_err(|e| format!("bad frame: {e}"))?;
    match message {
        Message::Run(run) => {
            let fold = match run.reducer {
                None => Ok(None),
                Some((name, value)) => match crate::reduce::lookup(name) {
                    Some(entry) => crate::reduce::make(entry, value).map(Some),
                    None => Err(format!(
                        "no reducer named `{name}` is registered in this executable"
                    )),
                },
            };
            let (chunk, count, timeout_us) = (run.chunk, run.count, run.timeout_us);
            match (registry.lookup(run.task), fold) {
                (_, Err(reason)) => ctx.refuse(chunk, count, Status::DecodeFailed, &reason),
                (None, _) => ctx.refuse(chunk, count, Status::UnknownTask, run.task),
                (Some(entry), Ok(fold)) => {
                    frame.advance(frame.len() - run.payload.len());
                    ctx.enqueue(chunk, count, timeout_us, entry.start, fold, frame);
                }
            }
        }
        Message::Cancel(chunks) => {
            ctx.cancel(&chunks);
            ctx.answer_cancel();
        }
        Message::Shutdown => *draining = true,
        other => return Err(format!("unexpected message from the parent: {other:?}")),
    }
    Ok(())
}
