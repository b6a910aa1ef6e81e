//! The worker's side of writing to the parent: blocking sends of whole
//! buffers under a lock, so that the watchdog thread can write a timeout
//! while the event loop is stuck, and frames never interleave.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};

/// The write side of the channel to the parent.
pub(crate) struct Channel {
    socket: Mutex<OwnedFd>,
}

impl Channel {
    pub(crate) fn new(socket: OwnedFd) -> Self {
        Channel {
            socket: Mutex::new(socket),
        }
    }

    /// Writes all of `data`, waiting for the socket to drain when it is full.
    pub(crate) fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        let socket = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        let fd = socket.as_raw_fd();
        while !data.is_empty() {
            // SAFETY: `data` is a valid readable slice of `data.len()` bytes
            // and `fd` is an open socket owned by `socket`, locked here.
            let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
            if n >= 0 {
                data = &data[n as usize..];
                continue;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: `pfd` is one valid pollfd; -1 waits until the
                    // socket is writable (the parent read) or broken.
                    if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                }
                _ => return Err(err),
            }
        }
        Ok(())
    }
}
