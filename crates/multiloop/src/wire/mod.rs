//! Frames and messages between the parent and a worker: a pure codec, no I/O.
//!
//! A frame is a little-endian `u32` body length followed by the body. The
//! length is checked against a cap before anything is allocated, so a bad
//! peer cannot make the other side allocate more than the cap. The body's
//! first byte says which message it is; integers are LEB128 varints, byte
//! strings are a varint length and the bytes. Task arguments and results are
//! carried as opaque byte strings encoded with `postcard` by the typed layer.
//!
//! Decoding never panics: every read is bounds-checked and answers
//! [`WireError`] on bad input, which the fuzz target and the property tests
//! exercise.

mod codec;

pub(crate) use codec::{Reader, WireError, check_frame, put_bytes, put_varint};

/// Bumped whenever the frame layout or a message changes.
pub(crate) const PROTOCOL_VERSION: u32 = 4;

/// The largest frame accepted by default (64 MiB).
pub(crate) const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Message tags (the first byte of a frame body).
pub(crate) mod tag {
    /// Parent → worker: protocol check and worker configuration.
    pub(crate) const SETUP: u8 = 1;
    /// Parent → worker: a chunk of tasks to run.
    pub(crate) const RUN: u8 = 2;
    /// Parent → worker: drop these chunks' tasks.
    pub(crate) const CANCEL: u8 = 3;
    /// Parent → worker: finish what you hold, then exit.
    pub(crate) const SHUTDOWN: u8 = 4;
    /// Worker → parent: setup succeeded (or failed).
    pub(crate) const READY: u8 = 16;
    /// Worker → parent: a batch of task outcomes.
    pub(crate) const RESULTS: u8 = 17;
    /// Worker → parent: my memory passed the limit; replace me.
    pub(crate) const RETIRE: u8 = 18;
    /// Worker → parent: the CANCEL before this is carried out (its tasks
    /// are dropped).
    pub(crate) const CANCELLED: u8 = 19;
}

/// How one task ended, as sent back by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    /// The payload is the serialized `Output`.
    Ok = 0,
    /// The payload is the serialized task error `E`.
    TaskError = 1,
    /// The payload is the panic message and location.
    Panic = 2,
    /// The task passed its deadline; empty payload.
    Timeout = 3,
    /// The output or error could not be serialized; the payload says why.
    EncodeFailed = 4,
    /// The arguments could not be decoded in the worker; the payload says why.
    DecodeFailed = 5,
    /// The worker has no task of that name; the payload is the name.
    UnknownTask = 6,
    /// The folded results of a whole chunk run with a reducer; the payload
    /// is the serialized accumulator and the index is the chunk's count.
    Partial = 7,
}

impl Status {
    pub(crate) fn from_u8(b: u8) -> Result<Status, WireError> {
        Ok(match b {
            0 => Status::Ok,
            1 => Status::TaskError,
            2 => Status::Panic,
            3 => Status::Timeout,
            4 => Status::EncodeFailed,
            5 => Status::DecodeFailed,
            6 => Status::UnknownTask,
            7 => Status::Partial,
            other => return Err(WireError::BadValue("status", u64::from(other))),
        })
    }
}

/// Parent → worker setup, the first frame on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setup<'a> {
    pub(crate) protocol: u32,
    pub(crate) fingerprint: u64,
    pub(crate) concurrency: u32,
    pub(crate) max_frame: u32,
    /// How long past its deadline a task's poll may run before the worker's
    /// watchdog ends the worker, in microseconds.
    pub(crate) grace_us: u64,
    /// Resident memory in bytes past which the worker asks to be replaced;
    /// 0 means no limit.
    pub(crate) max_rss: u64,
    /// Name and serialized arguments of the initializer task, if any.
    pub(crate) initializer: Option<(&'a str, &'a [u8])>,
}

/// Worker → parent answer to [`Setup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ready<'a> {
    pub(crate) protocol: u32,
    pub(crate) fingerprint: u64,
    pub(crate) pid: u32,
    /// Empty when setup succeeded; otherwise why it failed.
    pub(crate) error: &'a str,
}

/// Parent → worker: a chunk of tasks of one kind. Task `i` of the chunk has
/// its serialized arguments at `payload[offsets[i]..offsets[i + 1]]`, but the
/// offsets are not sent: the worker decodes arguments one after another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Run<'a> {
    pub(crate) chunk: u64,
    pub(crate) task: &'a str,
    /// Soft deadline per task in microseconds; 0 means none.
    pub(crate) timeout_us: u64,
    pub(crate) count: u32,
    /// Name and serialized value of the reducer folding this chunk's
    /// results, if any.
    pub(crate) reducer: Option<(&'a str, &'a [u8])>,
    pub(crate) payload: &'a [u8],
}

/// One outcome inside a RESULTS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome<'a> {
    pub(crate) chunk: u64,
    pub(crate) index: u32,
    pub(crate) status: Status,
    pub(crate) data: &'a [u8],
}

/// Which task an outcome belongs to: its chunk, and its place in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TaskKey {
    pub(crate) chunk: u64,
    pub(crate) index: u32,
}

/// A decoded frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    Setup(Setup<'a>),
    Run(Run<'a>),
    Cancel(Vec<u64>),
    Shutdown,
    Ready(Ready<'a>),
    /// The outcomes, still encoded: iterate with [`Results::iter`].
    Results(Results<'a>),
    /// The worker's resident memory (bytes) passed the limit: it starts no
    /// more tasks, and hands back the ones it had not started.
    Retire(Retire),
    /// The worker carried out a CANCEL.
    Cancelled,
}

/// A worker over its memory limit: how much it holds, and the tasks it
/// hands back unstarted: `(chunk, from)` means tasks `from..` of `chunk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Retire {
    pub(crate) rss: u64,
    pub(crate) returned: Vec<(u64, u32)>,
}

/// The outcomes of a RESULTS frame, decoded lazily.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Results<'a> {
    body: &'a [u8],
}

impl<'a> Results<'a> {
    /// The groups of the frame, each read by its header alone: the parent's
    /// reader hands whole groups on without looking at each outcome.
    pub(crate) fn groups(&self) -> Groups<'a> {
        Groups {
            reader: Reader::new(self.body),
        }
    }

    /// Every outcome of the frame, one by one; an error (and then the end)
    /// at the first malformed one.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Result<Outcome<'a>, WireError>> + 'a {
        let mut groups = self.groups();
        let mut current: Option<(OutcomeGroup<'a>, Reader<'a>, u32)> = None;
        std::iter::from_fn(move || {
            loop {
                if let Some((g, reader, at)) = &mut current {
                    if *at < g.count {
                        let index = g.first.wrapping_add(*at);
                        *at += 1;
                        return Some(match next_outcome(reader) {
                            Ok((status, data)) => Ok(Outcome {
                                chunk: g.chunk,
                                index,
                                status,
                                data,
                            }),
                            Err(e) => {
                                groups = Groups {
                                    reader: Reader::new(&[]),
                                };
                                current = None;
                                Err(e)
                            }
                        });
                    }
                    if !reader.is_empty() {
                        let left = reader.remaining();
                        groups = Groups {
                            reader: Reader::new(&[]),
                        };
                        current = None;
                        return Some(Err(WireError::Trailing(left)));
                    }
                }
                match groups.next()? {
                    // Without the value's type a dense group splits only
                    // when it holds one value.
                    Ok(g) if g.dense && g.count == 1 => {
                        return Some(Ok(Outcome {
                            chunk: g.chunk,
                            index: g.first,
                            status: Status::Ok,
                            data: g.body,
                        }));
                    }
                    Ok(g) if g.dense => {
                        groups = Groups {
                            reader: Reader::new(&[]),
                        };
                        return Some(Err(WireError::BadValue(
                            "dense group read one by one",
                            u64::from(g.count),
                        )));
                    }
                    Ok(g) => current = Some((g, Reader::new(g.body), 0)),
                    Err(e) => return Some(Err(e)),
                }
            }
        })
    }
}

/// A group of a RESULTS frame: the outcomes of tasks `first..first + count`
/// of one chunk, back to back in `body`: each a status byte, the data
/// length as a varint and the data; or, in a `dense` group, where every
/// task succeeded, the values alone (postcard values delimit themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutcomeGroup<'a> {
    pub(crate) chunk: u64,
    pub(crate) first: u32,
    pub(crate) count: u32,
    pub(crate) dense: bool,
    pub(crate) body: &'a [u8],
}

/// The bit of a group's count that marks it dense.
const DENSE: u32 = 1 << 31;

/// Iterator over the groups of a RESULTS frame; yields an error (and then
/// stops) on a malformed header.
pub(crate) struct Groups<'a> {
    reader: Reader<'a>,
}

impl<'a> Iterator for Groups<'a> {
    type Item = Result<OutcomeGroup<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.is_empty() {
            return None;
        }
        let group = (|| {
            let chunk = self.reader.varint()?;
            let first = self.reader.varint_u32()?;
            let (count, dense) = match self.reader.u32_le()? {
                c if c & DENSE != 0 => (c & !DENSE, true),
                c => (c, false),
            };
            let len = self.reader.u32_le()? as usize;
            // Each outcome takes at least two bytes (status, length); a
            // value alone may take none (a `()`).
            if count == 0 || (!dense && (count as usize).saturating_mul(2) > len) {
                return Err(WireError::BadValue("outcome count", u64::from(count)));
            }
            let body = self.reader.take(len)?;
            Ok(OutcomeGroup {
                chunk,
                first,
                count,
                dense,
                body,
            })
        })();
        if group.is_err() {
            self.reader = Reader::new(&[]);
        }
        Some(group)
    }
}

/// Reads the next outcome of a group's body: its status and data.
#[inline]
pub(crate) fn next_outcome<'a>(reader: &mut Reader<'a>) -> Result<(Status, &'a [u8]), WireError> {
    let status = Status::from_u8(reader.u8()?)?;
    let len = usize::try_from(reader.varint()?).map_err(|_| WireError::Truncated)?;
    Ok((status, reader.take(len)?))
}

impl<'a> Message<'a> {
    /// Decodes one frame body (without its length prefix).
    pub(crate) fn decode(body: &'a [u8]) -> Result<Message<'a>, WireError> {
        let mut r = Reader::new(body);
        let msg = match r.u8()? {
            tag::SETUP => {
                let protocol = r.varint_u32()?;
                let fingerprint = r.varint()?;
                let concurrency = r.varint_u32()?;
                let max_frame = r.varint_u32()?;
                let grace_us = r.varint()?;
                let max_rss = r.varint()?;
                let initializer = match r.u8()? {
                    0 => None,
                    1 => Some((r.str()?, r.bytes()?)),
                    other => return Err(WireError::BadValue("initializer flag", u64::from(other))),
                };
                Message::Setup(Setup {
                    protocol,
                    fingerprint,
                    concurrency,
                    max_frame,
                    grace_us,
                    max_rss,
                    initializer,
                })
            }
            tag::RUN => {
                let chunk = r.varint()?;
                let task = r.str()?;
                let timeout_us = r.varint()?;
                let count = r.varint_u32()?;
                let reducer = match r.u8()? {
                    0 => None,
                    1 => Some((r.str()?, r.bytes()?)),
                    other => return Err(WireError::BadValue("reducer flag", u64::from(other))),
                };
                let payload = r.rest();
                Message::Run(Run {
                    chunk,
                    task,
                    timeout_us,
                    count,
                    reducer,
                    payload,
                })
            }
            tag::CANCEL => {
                let n = r.varint()?;
                // Each id takes at least one byte: a count larger than what
                // is left is a lie, refused before allocating for it.
                if n > r.remaining() as u64 {
                    return Err(WireError::Truncated);
                }
                let mut ids = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    ids.push(r.varint()?);
                }
                Message::Cancel(ids)
            }
            tag::SHUTDOWN => Message::Shutdown,
            tag::CANCELLED => Message::Cancelled,
            tag::READY => {
                let protocol = r.varint_u32()?;
                let fingerprint = r.varint()?;
                let pid = r.varint_u32()?;
                let error = r.str()?;
                Message::Ready(Ready {
                    protocol,
                    fingerprint,
                    pid,
                    error,
                })
            }
            tag::RESULTS => Message::Results(Results { body: r.rest() }),
            tag::RETIRE => {
                let rss = r.varint()?;
                let n = r.varint()?;
                // Each pair takes at least two bytes: a count larger than
                // what is left is refused before allocating for it.
                if n > r.remaining() as u64 / 2 {
                    return Err(WireError::Truncated);
                }
                let mut returned = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    returned.push((r.varint()?, r.varint_u32()?));
                }
                Message::Retire(Retire { rss, returned })
            }
            other => return Err(WireError::BadValue("message tag", u64::from(other))),
        };
        if !r.is_empty() {
            return Err(WireError::Trailing(r.remaining()));
        }
        Ok(msg)
    }
}

/// Builds frames into a growing buffer: start a frame, append its body,
/// finish it (which writes the length prefix).
#[derive(Debug, Default)]
pub(crate) struct FrameWriter {
    buf: Vec<u8>,
    /// The run of outcomes being written in a RESULTS frame: consecutive
    /// tasks of one chunk share one group header.
    group: Option<Group>,
}

/// A group of outcomes: tasks `first..first + count` of one chunk.
#[derive(Debug, Clone, Copy)]
struct Group {
    chunk: u64,
    next: u32,
    count: u32,
    /// Where the group's `u32` count is, to patch.
    count_at: usize,
    /// Where its body starts: its `u32` length is the four bytes before.
    body_at: usize,
    /// Values only: every task of the group succeeded.
    dense: bool,
}

/// A position to roll a [`FrameWriter`] back to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    len: usize,
    group: Option<Group>,
}

impl FrameWriter {
    pub(crate) fn new() -> Self {
        FrameWriter {
            buf: Vec::new(),
            group: None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes written so far, leaving the writer empty.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Swaps the buffer with `other` (which should be empty), keeping both
    /// allocations alive for reuse.
    /// The frames written so far.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` bytes (sent), between whole frames of a writer
    /// with no RESULTS frame open.
    pub(crate) fn consume(&mut self, n: usize) {
        self.group = None;
        if n >= self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..n);
        }
    }

    pub(crate) fn swap(&mut self, other: &mut Vec<u8>) {
        std::mem::swap(&mut self.buf, other);
    }

    /// Starts a frame with message tag `tag`; returns where it starts.
    pub(crate) fn begin(&mut self, tag: u8) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0, 0, 0, tag]);
        start
    }

    /// Ends the frame started at `start` by writing its body length.
    pub(crate) fn finish(&mut self, start: usize) {
        self.group = None;
        let body = (self.buf.len() - start - 4) as u32;
        self.buf[start..start + 4].copy_from_slice(&body.to_le_bytes());
    }

    /// Length of the body of the frame started at `start`, so far.
    pub(crate) fn body_len(&self, start: usize) -> usize {
        self.buf.len() - start - 4
    }

    pub(crate) fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub(crate) fn setup(&mut self, s: &Setup<'_>) {
        let start = self.begin(tag::SETUP);
        put_varint(&mut self.buf, u64::from(s.protocol));
        put_varint(&mut self.buf, s.fingerprint);
        put_varint(&mut self.buf, u64::from(s.concurrency));
        put_varint(&mut self.buf, u64::from(s.max_frame));
        put_varint(&mut self.buf, s.grace_us);
        put_varint(&mut self.buf, s.max_rss);
        match s.initializer {
            None => self.buf.push(0),
            Some((name, args)) => {
                self.buf.push(1);
                put_bytes(&mut self.buf, name.as_bytes());
                put_bytes(&mut self.buf, args);
            }
        }
        self.finish(start);
    }

    pub(crate) fn ready(&mut self, r: &Ready<'_>) {
        let start = self.begin(tag::READY);
        put_varint(&mut self.buf, u64::from(r.protocol));
        put_varint(&mut self.buf, r.fingerprint);
        put_varint(&mut self.buf, u64::from(r.pid));
        put_bytes(&mut self.buf, r.error.as_bytes());
        self.finish(start);
    }

    /// Writes a RUN frame header; the caller appends the payload and calls
    /// [`finish`](FrameWriter::finish).
    pub(crate) fn run_header(
        &mut self,
        chunk: u64,
        task: &str,
        timeout_us: u64,
        count: u32,
        reducer: Option<(&str, &[u8])>,
    ) -> usize {
        let start = self.begin(tag::RUN);
        put_varint(&mut self.buf, chunk);
        put_bytes(&mut self.buf, task.as_bytes());
        put_varint(&mut self.buf, timeout_us);
        put_varint(&mut self.buf, u64::from(count));
        match reducer {
            None => self.buf.push(0),
            Some((name, value)) => {
                self.buf.push(1);
                put_bytes(&mut self.buf, name.as_bytes());
                put_bytes(&mut self.buf, value);
            }
        }
        start
    }

    #[cfg(test)]
    pub(crate) fn run(&mut self, r: &Run<'_>) {
        let start = self.run_header(r.chunk, r.task, r.timeout_us, r.count, r.reducer);
        self.buf.extend_from_slice(r.payload);
        self.finish(start);
    }

    pub(crate) fn cancel(&mut self, chunks: &[u64]) {
        let start = self.begin(tag::CANCEL);
        put_varint(&mut self.buf, chunks.len() as u64);
        for &c in chunks {
            put_varint(&mut self.buf, c);
        }
        self.finish(start);
    }

    pub(crate) fn retire(&mut self, rss: u64, returned: &[(u64, u32)]) {
        let start = self.begin(tag::RETIRE);
        put_varint(&mut self.buf, rss);
        put_varint(&mut self.buf, returned.len() as u64);
        for &(chunk, from) in returned {
            put_varint(&mut self.buf, chunk);
            put_varint(&mut self.buf, u64::from(from));
        }
        self.finish(start);
    }

    pub(crate) fn shutdown(&mut self) {
        let start = self.begin(tag::SHUTDOWN);
        self.finish(start);
    }

    pub(crate) fn cancelled(&mut self) {
        let start = self.begin(tag::CANCELLED);
        self.finish(start);
    }

    /// Starts a RESULTS frame; append outcomes with
    /// [`outcome_header`](FrameWriter::outcome_header) or
    /// [`outcome`](FrameWriter::outcome), then [`finish`](FrameWriter::finish).
    pub(crate) fn results_begin(&mut self) -> usize {
        self.group = None;
        self.begin(tag::RESULTS)
    }

    /// Appends an outcome whose data the caller writes next into
    /// [`buf`](FrameWriter::buf); returns the position of the data length to
    /// patch with [`outcome_end`](FrameWriter::outcome_end).
    ///
    /// The body of a RESULTS frame is a run of groups: chunk id (varint),
    /// first index (varint), count (`u32`), body length in bytes (`u32`),
    /// then per outcome its status byte, data length (varint) and data.
    /// The next task of the same chunk joins the open group for two bytes
    /// of header; the reader skips a whole group by its length.
    #[inline]
    pub(crate) fn outcome_header(&mut self, chunk: u64, index: u32, status: Status) -> usize {
        match &mut self.group {
            Some(g) if !g.dense && g.chunk == chunk && g.next == index && g.count < DENSE - 1 => {
                g.next = index.wrapping_add(1);
                g.count += 1;
                let at = g.count_at;
                self.buf[at..at + 4].copy_from_slice(&g.count.to_le_bytes());
            }
            _ => self.group_header(chunk, index, false),
        }
        self.buf.push(status as u8);
        let at = self.buf.len();
        self.buf.push(0);
        at
    }

    /// Starts a new group at task `index` of `chunk` with one outcome.
    fn group_header(&mut self, chunk: u64, index: u32, dense: bool) {
        put_varint(&mut self.buf, chunk);
        put_varint(&mut self.buf, u64::from(index));
        let count_at = self.buf.len();
        let count: u32 = if dense { 1 | DENSE } else { 1 };
        self.buf.extend_from_slice(&count.to_le_bytes());
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.group = Some(Group {
            chunk,
            next: index.wrapping_add(1),
            count: 1,
            count_at,
            body_at: count_at + 8,
            dense,
        });
    }

    /// Appends the value of a task that succeeded: the caller writes it
    /// next into [`buf`](FrameWriter::buf), then calls
    /// [`value_end`](FrameWriter::value_end). Consecutive values of one
    /// chunk share a dense group, with no header of their own.
    #[inline]
    pub(crate) fn value_header(&mut self, chunk: u64, index: u32) {
        match &mut self.group {
            Some(g) if g.dense && g.chunk == chunk && g.next == index && g.count < DENSE - 1 => {
                g.next = index.wrapping_add(1);
                g.count += 1;
                let at = g.count_at;
                self.buf[at..at + 4].copy_from_slice(&(g.count | DENSE).to_le_bytes());
            }
            _ => self.group_header(chunk, index, true),
        }
    }

    /// Ends the value started with [`value_header`](FrameWriter::value_header).
    #[inline]
    pub(crate) fn value_end(&mut self) {
        self.patch_body_len();
    }

    /// Writes the data length of the outcome whose header ended at `at`
    /// (one byte when under 128, else the data moves up to make room), and
    /// the open group's body length.
    #[inline]
    pub(crate) fn outcome_end(&mut self, at: usize) {
        let len = self.buf.len() - at - 1;
        if len >= 0x80 {
            let mut varint = Vec::with_capacity(10);
            put_varint(&mut varint, len as u64);
            let old = self.buf.len();
            self.buf.resize(old + varint.len() - 1, 0);
            self.buf.copy_within(at + 1..old, at + varint.len());
            self.buf[at..at + varint.len()].copy_from_slice(&varint);
        } else {
            self.buf[at] = len as u8;
        }
        self.patch_body_len();
    }

    /// Writes the open group's body length: everything after its header.
    #[inline]
    fn patch_body_len(&mut self) {
        if let Some(g) = &self.group {
            let len = (self.buf.len() - g.body_at) as u32;
            self.buf[g.body_at - 4..g.body_at].copy_from_slice(&len.to_le_bytes());
        }
    }

    /// Where the writer is now, to [`rollback`](FrameWriter::rollback) to.
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            len: self.buf.len(),
            group: self.group,
        }
    }

    /// Drops everything written since `mark`.
    pub(crate) fn rollback(&mut self, mark: Mark) {
        self.buf.truncate(mark.len);
        self.group = mark.group;
        if let Some(g) = &self.group {
            let count = if g.dense { g.count | DENSE } else { g.count };
            self.buf[g.count_at..g.count_at + 4].copy_from_slice(&count.to_le_bytes());
        }
        self.patch_body_len();
    }

    /// Sets the status of the outcome whose header ended at `at` (used when
    /// encoding the value failed and the data became an error message).
    pub(crate) fn outcome_set_status(&mut self, at: usize, status: Status) {
        self.buf[at - 1] = status as u8;
    }

    #[cfg(test)]
    pub(crate) fn outcome(&mut self, o: &Outcome<'_>) {
        let at = self.outcome_header(o.chunk, o.index, o.status);
        self.buf.extend_from_slice(o.data);
        self.outcome_end(at);
    }
}

/// Encodes a panic's message and location as an outcome payload.
pub(crate) fn encode_panic(buf: &mut Vec<u8>, message: &str, location: Option<&str>) {
    put_bytes(buf, message.as_bytes());
    match location {
        Some(loc) => {
            buf.push(1);
            put_bytes(buf, loc.as_bytes());
        }
        None => buf.push(0),
    }
}

/// Decodes what [`encode_panic`] wrote.
pub(crate) fn decode_panic(data: &[u8]) -> Result<(&str, Option<&str>), WireError> {
    let mut r = Reader::new(data);
    let message = r.str()?;
    let location = match r.u8()? {
        0 => None,
        _ => Some(r.str()?),
    };
    Ok((message, location))
}

#[cfg(test)]
mod tests;

/// Serializes `value` with postcard at the end of `buf`. On failure `buf`
/// is left as it was.
#[inline]
pub(crate) fn append_value<V: serde::Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    value: &V,
) -> Result<(), EncodeError> {
    let start = buf.len();
    // `postcard::serialize_with_flavor`, spelled out so that it inlines
    // into the caller's loop.
    let mut serializer = postcard::Serializer {
        output: VecFlavor(buf),
    };
    match value.serialize(&mut serializer) {
        Ok(()) => Ok(()),
        Err(e) => {
            serializer.output.0.truncate(start);
            Err(EncodeError::explain(value, e))
        }
    }
}

/// Why a value could not be serialized, in words the user can act on.
#[derive(Debug)]
pub(crate) struct EncodeError(String);

impl EncodeError {
    /// postcard drops the message of a `serde::ser::Error::custom` (what a
    /// `Serialize` impl raises to refuse a value): serializing the value
    /// again into JSON, which keeps it, recovers the user's own words.
    #[cold]
    fn explain<V: serde::Serialize + ?Sized>(value: &V, e: postcard::Error) -> Self {
        if e == postcard::Error::SerdeSerCustom
            && let Err(json) = serde_json::to_writer(std::io::sink(), value)
            && json.is_data()
        {
            return EncodeError(json.to_string());
        }
        EncodeError(e.to_string())
    }
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A postcard output that appends to a borrowed `Vec`.
struct VecFlavor<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        // Varints come here as 1-10 byte slices, just written byte by
        // byte on postcard's stack: byte pushes beat a call to memcpy, and
        // reading them back a byte at a time avoids the stall of a wider
        // load over narrower stores (a zip loop the compiler vectorized
        // doubled this function's cost in W1 of multiloop-bench).
        if data.len() <= 16 {
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}
