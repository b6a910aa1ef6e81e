//! Bounds-checked primitives: varints, byte strings, frame splitting.

use std::fmt;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The input ended in the middle of a value.
    Truncated,
    /// A varint ran past 10 bytes or overflowed its type.
    VarintOverflow,
    /// A frame announced a body larger than the cap.
    TooLarge { len: usize, max: usize },
    /// A field had a value no message uses.
    BadValue(&'static str, u64),
    /// A string was not UTF-8.
    BadUtf8,
    /// Bytes were left after the message.
    Trailing(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated message"),
            WireError::VarintOverflow => f.write_str("integer too large"),
            WireError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the cap of {max} bytes")
            }
            WireError::BadValue(what, v) => write!(f, "invalid {what}: {v}"),
            WireError::BadUtf8 => f.write_str("string is not UTF-8"),
            WireError::Trailing(n) => write!(f, "{n} unexpected bytes after the message"),
        }
    }
}

impl std::error::Error for WireError {}

/// Where the first complete frame of `buf` lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// Bytes the whole frame takes, prefix included.
    pub(crate) len: usize,
}

impl Frame {
    /// The body of the frame at the start of `buf`.
    #[cfg(test)]
    pub(crate) fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[4..self.len]
    }
}

/// Checks whether `buf` starts with a complete frame: `Ok(None)` means more
/// bytes are needed. A body over `max` is an error before anything is read.
pub(crate) fn check_frame(buf: &[u8], max: usize) -> Result<Option<Frame>, WireError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; 4];
    len_bytes.copy_from_slice(prefix);
    let body = u32::from_le_bytes(len_bytes) as usize;
    if body > max {
        return Err(WireError::TooLarge { len: body, max });
    }
    if body == 0 {
        return Err(WireError::Truncated);
    }
    if buf.len() < 4 + body {
        return Ok(None);
    }
    Ok(Some(Frame { len: 4 + body }))
}

/// Appends `v` as a LEB128 varint.
#[inline]
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends a varint length and the bytes.
pub(crate) fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A cursor over a byte slice whose every read is bounds-checked.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self.buf.split_first().ok_or(WireError::Truncated)?;
        self.buf = rest;
        Ok(b)
    }

    pub(crate) fn u32_le(&mut self) -> Result<u32, WireError> {
        let bytes = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(bytes);
        Ok(u32::from_le_bytes(a))
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(WireError::VarintOverflow);
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::VarintOverflow)
    }

    pub(crate) fn varint_u32(&mut self) -> Result<u32, WireError> {
        u32::try_from(self.varint()?).map_err(|_| WireError::VarintOverflow)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| WireError::Truncated)?;
        self.take(n)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| WireError::BadUtf8)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}
