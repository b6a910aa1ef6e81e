//! Reading frames off a channel: the one buffered reader that the parent's
//! supervisor, the worker and the one-shot `Process` driver all use, over
//! the pure codec in [`crate::wire`] (the pattern of mini-redis's
//! `connection.rs` over its `frame.rs`).
//!
//! The writing sides differ on purpose and stay with their owners: the
//! parent batches frames in a per-worker outbox that a writer task drains,
//! and the worker writes with blocking sends under a lock it shares with its
//! watchdog thread, which must be able to write while the event loop is
//! stuck.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::wire;

/// Why reading a frame failed.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer sent bytes that are not a frame within the cap: it broke
    /// the protocol.
    BadFrame(wire::WireError),
    /// The channel closed in the middle of a frame (a peer killed while
    /// writing).
    ClosedMidFrame,
    /// Reading failed (a reset connection, say).
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::BadFrame(e) => write!(f, "bad frame: {e}"),
            ReadError::ClosedMidFrame => f.write_str("the channel closed mid-frame"),
            ReadError::Io(e) => write!(f, "reading the channel failed: {e}"),
        }
    }
}

/// Reads whole frames from `R`, checking each length against the cap
/// before it allocates for it.
pub(crate) struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(rd: R, max_frame: usize) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(64 * 1024),
            max_frame,
        }
    }

    /// Changes the cap, for the frames after the handshake.
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// The next frame already buffered (length prefix included), without
    /// reading; `Ok(None)` when a whole frame has not arrived yet.
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        match wire::check_frame(&self.buf, self.max_frame).map_err(ReadError::BadFrame)? {
            Some(f) => Ok(Some(self.buf.split_to(f.len).freeze())),
            None => Ok(None),
        }
    }

    /// Reads more bytes into the buffer. `Ok(false)`: the peer closed the
    /// channel cleanly, between frames. Cancel-safe: bytes read before a
    /// cancellation stay in the buffer.
    pub(crate) async fn read_more(&mut self) -> Result<bool, ReadError> {
        self.reserve_for_frame();
        match self.rd.read_buf(&mut self.buf).await {
            Ok(0) if self.buf.is_empty() => Ok(false),
            Ok(0) => Err(ReadError::ClosedMidFrame),
            Ok(_) => Ok(true),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// The next frame, reading as needed; `Ok(None)` at a clean end.
    pub(crate) async fn read_frame(&mut self) -> Result<Option<Bytes>, ReadError> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Makes room for the rest of the frame the buffer starts with (or
    /// 64 KiB), so that a large frame is read with one growth, not many.
    fn reserve_for_frame(&mut self) {
        // The length was checked against the cap by `buffered_frame`.
        let need = match self.buf.get(..4) {
            Some(p) => (u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize + 4)
                .saturating_sub(self.buf.len()),
            None => 0,
        };
        if self.buf.capacity() - self.buf.len() < need.max(4096) {
            self.buf.reserve(need.max(64 * 1024));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in bodies {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    #[tokio::test]
    async fn reads_frames_split_anywhere_then_a_clean_end() {
        let bytes = frames(&[b"one", b"2", b"three"]);
        let (mut a, b) = tokio::io::duplex(3);
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut a, &bytes)
                .await
                .unwrap();
        });
        let mut r = FrameReader::new(b, 1024);
        assert_eq!(&r.read_frame().await.unwrap().unwrap()[4..], b"one");
        assert_eq!(&r.read_frame().await.unwrap().unwrap()[4..], b"2");
        assert_eq!(&r.read_frame().await.unwrap().unwrap()[4..], b"three");
        writer.await.unwrap();
        assert!(r.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_end_mid_frame_is_an_error_not_a_clean_end() {
        let bytes = frames(&[b"whole"]);
        let mut r = FrameReader::new(&bytes[..bytes.len() - 1], 1024);
        assert!(matches!(
            r.read_frame().await,
            Err(ReadError::ClosedMidFrame)
        ));
    }

    #[tokio::test]
    async fn a_frame_over_the_cap_is_refused_before_it_is_read() {
        let mut bytes = (1u32 << 30).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"tiny");
        let mut r = FrameReader::new(&bytes[..], 1024);
        assert!(matches!(r.read_frame().await, Err(ReadError::BadFrame(_))));
        assert!(r.buf.capacity() < 1 << 20, "nothing was allocated for it");
    }
}
