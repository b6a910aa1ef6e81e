//! The beacon: one shared memory word per worker saying which task the
//! worker is polling right now.
//!
//! When a worker dies, the parent reads its beacon to learn which task was
//! running at that instant: a task that aborts, segfaults, exits or runs out
//! of memory dies inside its own poll, so it is the one charged an attempt,
//! and the tasks that merely shared the worker run again for free. A death
//! outside any poll (a kill from outside while the worker waits) charges
//! every task the worker held: each was running when its worker died. A
//! worker the parent killed for breaking the protocol blames nobody by its
//! beacon (it was polling whatever it happened to be polling).
//!
//! The word is in a `memfd` page that the parent maps and the worker
//! inherits, so no other process can open it. Writes are two relaxed
//! stores per poll.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// The task a worker polls: its chunk, and its index plus one (0 = none).
#[repr(C)]
struct Slot {
    chunk: AtomicU64,
    index_plus_one: AtomicU64,
}

const MAP_LEN: usize = 4096;

/// One mapping of a beacon page.
pub(crate) struct Beacon {
    ptr: *mut Slot,
    fd: OwnedFd,
}

// SAFETY: the mapping is only accessed through atomics, which are safe to
// share and send across threads; the pointer stays valid until drop.
unsafe impl Send for Beacon {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for Beacon {}

impl Beacon {
    /// A new, zeroed beacon page (parent side).
    pub(crate) fn new() -> io::Result<Beacon> {
        // SAFETY: the name is a valid C string; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"multiloop-beacon".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a fresh descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), MAP_LEN as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Beacon::map(fd)
    }

    /// Maps an inherited beacon page (worker side).
    pub(crate) fn map(fd: OwnedFd) -> io::Result<Beacon> {
        // SAFETY: mapping MAP_LEN bytes of a memfd that is at least that
        // long, shared, readable and writable; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Beacon {
            ptr: ptr.cast(),
            fd,
        })
    }

    fn slot(&self) -> &Slot {
        // SAFETY: `ptr` points to a live, page-aligned mapping of at least
        // `size_of::<Slot>()` bytes for as long as `self` lives, and `Slot`
        // is made of atomics, valid for any bit pattern.
        unsafe { &*self.ptr }
    }

    /// The descriptor, for the worker to inherit.
    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The worker is about to poll task `index` of `chunk`.
    #[inline]
    pub(crate) fn enter(&self, chunk: u64, index: u32) {
        let s = self.slot();
        s.chunk.store(chunk, Ordering::Relaxed);
        s.index_plus_one
            .store(u64::from(index) + 1, Ordering::Release);
    }

    /// The poll returned.
    #[inline]
    pub(crate) fn leave(&self) {
        self.slot().index_plus_one.store(0, Ordering::Release);
    }

    /// The task being polled, if any (read by the parent after the worker
    /// died, so the two words cannot change any more).
    pub(crate) fn read(&self) -> Option<(u64, u32)> {
        let s = self.slot();
        let index = s.index_plus_one.load(Ordering::Acquire);
        let chunk = s.chunk.load(Ordering::Acquire);
        (index > 0).then(|| (chunk, (index - 1) as u32))
    }
}

impl Drop for Beacon {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `map`, which no
        // reference outlives (they all borrow `self`).
        unsafe { libc::munmap(self.ptr.cast(), MAP_LEN) };
    }
}
