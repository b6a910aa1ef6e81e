//! Passing descriptors over a Unix socket (`SCM_RIGHTS`): how a new worker
//! gets its lifeline and beacon.
//!
//! A worker inherits one descriptor only, its socket, as its standard
//! input; the parent sends the other two over it right after the spawn.
//! Inheriting them all at fixed numbers would need code to run in the child
//! between `fork` and `exec` (`pre_exec`), which forces a real `fork`: it
//! copies the parent's page tables, about 4 ms for a 200 MiB parent on the
//! 2-core machine of `multiloop-bench` (0.06 ms with `posix_spawn`, which
//! the standard library uses when no such code is set).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// How many descriptors travel: the lifeline and the beacon.
pub(crate) const COUNT: usize = 2;

/// The room a control message of `COUNT` descriptors takes.
fn space() -> usize {
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    unsafe { libc::CMSG_SPACE((COUNT * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// A message of one data byte with room for the descriptors, pointing at
/// `iov` and `control`, which must outlive its use.
fn message(iov: &mut libc::iovec, control: &mut [u64]) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space() as _;
    msg
}

/// Sends `fds` with one byte of data.
pub(crate) fn send(socket: BorrowedFd<'_>, fds: [BorrowedFd<'_>; COUNT]) -> io::Result<()> {
    let mut byte = [1u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64s keep the buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space().div_ceil(8)];
    let msg = message(&mut iov, &mut control);
    // SAFETY: `msg` points at a control buffer of `space()` bytes, room
    // for one header with COUNT descriptors, so CMSG_FIRSTHDR is non-null
    // and CMSG_DATA has room for them; every pointer lives until sendmsg
    // returns.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        if header.is_null() {
            return Err(io::Error::other("no room for the descriptors"));
        }
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN((COUNT * std::mem::size_of::<RawFd>()) as u32) as _;
        let data = libc::CMSG_DATA(header).cast::<RawFd>();
        for (i, fd) in fds.iter().enumerate() {
            data.add(i).write_unaligned(fd.as_raw_fd());
        }
        loop {
            let sent = libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            if sent == 1 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if sent < 0 && err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if sent < 0 {
                err
            } else {
                io::Error::other("the descriptors were not sent")
            });
        }
    }
}

/// Receives the descriptors [`send`] sent, close-on-exec; `None` when the
/// socket ended first (the parent is gone). Blocks until they come.
pub(crate) fn receive(socket: BorrowedFd<'_>) -> io::Result<Option<[OwnedFd; COUNT]>> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = vec![0u64; space().div_ceil(8)];
    let mut msg = message(&mut iov, &mut control);
    let received = loop {
        // SAFETY: `msg` describes buffers that live until recvmsg returns.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    // Whatever arrived is ours to close, even if the message is wrong.
    let mut fds = Vec::with_capacity(COUNT);
    // SAFETY: recvmsg filled the control buffer it was given and set
    // msg_controllen; the CMSG_* functions walk only within it, and the
    // descriptors of an SCM_RIGHTS header are new ones of this process.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let len = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if received == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("the descriptors arrived truncated"));
    }
    let fds: [OwnedFd; COUNT] = fds.try_into().map_err(|got: Vec<OwnedFd>| {
        io::Error::other(format!(
            "{} descriptors arrived, {COUNT} expected",
            got.len()
        ))
    })?;
    Ok(Some(fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_sent_arrive_as_new_ones_of_the_same_files() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mut r1, mut w1) = std::io::pipe().unwrap();
        let (mut r2, mut w2) = std::io::pipe().unwrap();
        send(a.as_fd(), [r1.as_fd(), r2.as_fd()]).unwrap();
        let [got1, got2] = receive(b.as_fd()).unwrap().unwrap();
        w1.write_all(b"one").unwrap();
        w2.write_all(b"two").unwrap();
        drop((w1, w2));
        let mut text = String::new();
        std::fs::File::from(got1).read_to_string(&mut text).unwrap();
        std::fs::File::from(got2).read_to_string(&mut text).unwrap();
        assert_eq!(text, "onetwo");
        let _ = (r1.read(&mut [0u8; 1]), r2.read(&mut [0u8; 1]));
        // The sender gone before sending: the receiver learns it.
        drop(a);
        assert!(receive(b.as_fd()).unwrap().is_none());
    }
}
