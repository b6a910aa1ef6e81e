//! The caller's side of a call: pulling inputs lazily into chunks, the
//! window that bounds what is in flight, and turning outcomes back into
//! typed results.

use std::any::type_name;
use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_core::Stream;

use super::Inner;
use super::events::{JobEvents, JobSink};
use super::scheduler::{ChunkRec, Event, Item};
use crate::error::{Error, Kind};
use crate::reduce::{Partial, Reduced, Reducer};
use crate::task::Task;
use crate::wire::{self, Status};

/// Where a call's inputs come from: an iterator or a stream.
///
/// Made by the pool's methods ([`Pool::map`](crate::Pool::map) wraps an
/// iterator, [`Pool::map_stream`](crate::Pool::map_stream) a stream); you
/// do not implement it.
pub trait Input: private::Sealed {
    /// One input: the task's arguments.
    type Item;
    #[doc(hidden)]
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::Item>>;
    /// How many inputs are left, as far as the source knows (a lower
    /// bound), to size the results up front.
    #[doc(hidden)]
    fn inputs_left(&self) -> usize;
}

mod private {
    pub trait Sealed {}
}

/// Inputs pulled from an iterator, one chunk at a time.
#[derive(Debug)]
pub struct IterInput<I>(pub(crate) I);

impl<I: Iterator> private::Sealed for IterInput<I> {}

impl<I: Iterator> Input for IterInput<I> {
    type Item = I::Item;
    fn poll_input(&mut self, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.0.next())
    }
    fn inputs_left(&self) -> usize {
        self.0.size_hint().0
    }
}

/// Inputs pulled from a stream as capacity frees up.
#[derive(Debug)]
pub struct StreamInput<S>(pub(crate) S);

impl<S: Stream + Unpin> private::Sealed for StreamInput<S> {}

impl<S: Stream + Unpin> Input for StreamInput<S> {
    type Item = S::Item;
    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
    fn inputs_left(&self) -> usize {
        self.0.size_hint().0
    }
}

/// A finished task: its input index and its result.
pub(crate) type Done<T> = (u64, Result<<T as Task>::Output, Error>);

/// Settings of one call, defaulting to the pool's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallOptions {
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_attempts: u32,
    pub(crate) chunk_size: Option<usize>,
}

/// The largest chunk the adaptive sizing picks.
const MAX_CHUNK: usize = 32 * 1024;
/// The window, in chunks per worker process (when chunks are large): what
/// the workers hold, what waits for them, and the results the caller has
/// yet to take.
const WINDOW_CHUNKS: usize = 3;
/// The most results an awaited `map` allocates room for up front.
const MAX_PRESIZED: usize = 1 << 24;
/// How much worker time a chunk should take.
const CHUNK_TARGET: Duration = Duration::from_millis(1);

/// Picks chunk sizes from the throughput measured while the job runs.
#[derive(Debug)]
struct Chunker {
    size: usize,
    /// The largest size before any throughput was measured.
    blind_cap: usize,
    fixed: bool,
    workers: usize,
    sample_at: Option<Instant>,
    sample_done: u64,
    done: u64,
}

impl Chunker {
    fn new(fixed: Option<usize>, workers: usize, concurrency: usize) -> Self {
        Chunker {
            blind_cap: (concurrency / 2).clamp(1, MAX_CHUNK),
            size: fixed.unwrap_or(1).max(1),
            fixed: fixed.is_some(),
            workers: workers.max(1),
            sample_at: None,
            sample_done: 0,
            done: 0,
        }
    }

    fn started(&mut self) {
        if self.sample_at.is_none() {
            self.sample_at = Some(Instant::now());
        }
    }

    /// A chunk was sent. Until the first results come back there is no
    /// throughput to go by: sizes double from 1, so a burst of slow tasks
    /// goes out in a few chunks rather than one frame per task.
    /// They stop at half a worker's concurrency, so that the first chunks
    /// still spread over the workers.
    fn sent(&mut self) {
        if !self.fixed && self.done == 0 {
            self.size = (self.size * 2).min(self.blind_cap);
        }
    }

    fn completed(&mut self, n: usize) {
        self.done += n as u64;
        if self.fixed {
            return;
        }
        let Some(at) = self.sample_at else { return };
        let elapsed = at.elapsed();
        if elapsed < CHUNK_TARGET * 2 {
            return;
        }
        let rate = (self.done - self.sample_done) as f64 / elapsed.as_secs_f64();
        let per_worker = rate / self.workers as f64;
        let ideal = (per_worker * CHUNK_TARGET.as_secs_f64()).round() as usize;
        // Grow at most 16x per sample so one lucky burst cannot overshoot.
        self.size = ideal.clamp(1, MAX_CHUNK).min(self.size.saturating_mul(16));
        self.sample_at = Some(Instant::now());
        self.sample_done = self.done;
    }
}

/// Where an awaited `map` takes values in input order: the next input
/// index, the reorder buffer (slot `i` is index `emit + i`), the values.
pub(crate) struct Direct<'a, T: Task> {
    emit: &'a mut u64,
    pending: &'a mut VecDeque<Option<Result<T::Output, Error>>>,
    values: &'a mut Vec<T::Output>,
}

impl<T: Task> Direct<'_, T> {
    fn reborrow(&mut self) -> Direct<'_, T> {
        Direct {
            emit: self.emit,
            pending: self.pending,
            values: self.values,
        }
    }
}

/// The machinery shared by every kind of call.
pub(crate) struct Job<T: Task, S> {
    pool: Arc<Inner>,
    id: u64,
    source: S,
    exhausted: bool,
    /// Set when the pool refused the call (it stopped taking work).
    refused: Option<super::scheduler::Failure>,
    /// Whether the pool may hold this call's waker among those waiting for
    /// their input.
    parked: bool,
    tx: JobSink,
    rx: JobEvents,
    next_index: u64,
    in_flight: usize,
    window_base: usize,
    chunker: Chunker,
    options: CallOptions,
    /// Finished tasks not yet handed to the caller.
    ready: VecDeque<Done<T>>,
    /// Finished tasks the caller's stream holds back (an ordered map
    /// waiting for an earlier result); they count against the window.
    held: usize,
    /// Routing by key: the same key always goes to the same worker slot.
    route: Option<fn(&T::Args) -> u64>,
    /// The reducer folding results in the workers (map-reduce).
    reduce: Option<(&'static str, Bytes)>,
    /// Average serialized size of an input so far (sizes chunk buffers).
    bytes_per_input: usize,
    /// Folded results from the workers, still serialized: (frame, start,
    /// end, how many tasks the partial folds).
    pub(crate) partials: VecDeque<(Bytes, u32, u32, u64)>,
    /// Tasks folded into the partials received.
    folded: u64,
    /// Why the whole call was refused before it started.
    refusal: Option<Error>,
    _task: PhantomData<fn() -> T>,
}

impl<T: Task, S: Input<Item = T::Args>> Job<T, S> {
    pub(crate) fn new(pool: Arc<Inner>, source: S) -> Self {
        let (tx, rx) = super::events::channel();
        let (id, refused) = {
            let mut core = pool.lock();
            let refused = core.accepting().err();
            (core.new_job(), refused)
        };
        let config = &pool.config;
        let options = CallOptions {
            timeout: config.timeout,
            max_attempts: config.max_attempts,
            chunk_size: config.chunk_size,
        };
        let window_base = config.processes * config.concurrency * 2;
        let chunker = Chunker::new(options.chunk_size, config.processes, config.concurrency);
        Job {
            pool,
            id,
            source,
            exhausted: false,
            refused,
            parked: false,
            tx,
            rx,
            next_index: 0,
            in_flight: 0,
            window_base,
            chunker,
            options,
            ready: VecDeque::new(),
            held: 0,
            route: None,
            reduce: None,
            partials: VecDeque::new(),
            bytes_per_input: 8,
            folded: 0,
            refusal: None,
            _task: PhantomData,
        }
    }

    pub(crate) fn options(&mut self) -> &mut CallOptions {
        &mut self.options
    }

    pub(crate) fn apply_options(&mut self) {
        self.chunker = Chunker::new(
            self.options.chunk_size,
            self.pool.config.processes,
            self.pool.config.concurrency,
        );
    }

    fn window(&self) -> usize {
        self.window_base.max(
            self.chunker
                .size
                .saturating_mul(self.pool.config.processes * WINDOW_CHUNKS),
        )
    }

    /// Pulls inputs and submits chunks while the window has room. Results
    /// not yet handed out count against the window: a consumer that stops
    /// reading stops the inputs from being pulled.
    fn feed(&mut self, cx: &mut Context<'_>) {
        if self.exhausted {
            return;
        }
        if let Some(failure) = self.refused.take() {
            // The pool refused the call (before it started, or while it
            // waited for its input): one error stands for the inputs it
            // will never pull, and the call ends.
            self.ready
                .push_back((self.next_index, Err(failure.to_error())));
            self.next_index += 1;
            self.exhausted = true;
            return;
        }
        if let Some(route) = self.route {
            return self.feed_routed(cx, route);
        }
        if !self.room_for(self.chunker.size) {
            return;
        }
        while !self.exhausted && self.outstanding() < self.window() {
            let room = self.window() - self.outstanding();
            let want = self.chunker.size.min(room).max(1);
            // Sized from the last chunk, so it rarely grows (and copies).
            let mut payload = Vec::with_capacity(want * self.bytes_per_input + 16);
            let mut offsets = Vec::with_capacity(want + 1);
            offsets.push(0u32);
            let base = self.next_index;
            let mut indices: Option<Vec<u64>> = None;
            let mut source_pending = false;
            let mut pulled = 0;
            while pulled < want {
                let item = match self.source.poll_input(cx) {
                    Poll::Ready(Some(item)) => item,
                    Poll::Ready(None) => {
                        self.exhausted = true;
                        break;
                    }
                    Poll::Pending => {
                        source_pending = true;
                        break;
                    }
                };
                pulled += 1;
                let index = self.next_index;
                self.next_index += 1;
                match wire::append_value(&mut payload, &item) {
                    Ok(()) => {
                        offsets.push(payload.len() as u32);
                        if let Some(ix) = &mut indices {
                            ix.push(index);
                        }
                    }
                    Err(e) => {
                        // This input alone fails. Every input before it in
                        // the chunk succeeded, so their indices are
                        // `base..index`; from here on they are listed.
                        indices.get_or_insert_with(|| (base..index).collect());
                        let err = Error::serialization("arguments", type_name::<T::Args>(), e);
                        self.ready.push_back((index, Err(err)));
                    }
                }
            }
            if offsets.len() > 1 {
                self.bytes_per_input = payload.len().div_ceil(offsets.len() - 1).clamp(1, 4096);
                if payload.len() + run_header_bound::<T>() > self.pool.config.max_frame {
                    // Too big for one frame: send the tasks one by one,
                    // failing any single task that is still too big.
                    self.submit_split(payload, offsets, indices, base);
                } else {
                    self.submit(Bytes::from(payload), offsets, indices, base, None);
                }
            }
            if source_pending {
                return;
            }
        }
    }

    /// [`feed`](Job::feed) for routed calls: one chunk under construction
    /// per worker slot, each input going to the slot its key names.
    fn feed_routed(&mut self, cx: &mut Context<'_>, route: fn(&T::Args) -> u64) {
        struct Building {
            payload: Vec<u8>,
            offsets: Vec<u32>,
            indices: Vec<u64>,
        }
        let slots = self.pool.config.processes;
        if !self.room_for(self.chunker.size * slots) {
            return;
        }
        let mut building: Vec<Building> = (0..slots)
            .map(|_| Building {
                payload: Vec::new(),
                offsets: vec![0],
                indices: Vec::new(),
            })
            .collect();
        let mut unsent = 0;
        while !self.exhausted && self.outstanding() + unsent < self.window() {
            let item = match self.source.poll_input(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => {
                    self.exhausted = true;
                    break;
                }
                Poll::Pending => break,
            };
            let index = self.next_index;
            self.next_index += 1;
            let slot = slot_of(route(&item), slots as u64) as usize;
            let b = &mut building[slot];
            if let Err(e) = wire::append_value(&mut b.payload, &item) {
                let err = Error::serialization("arguments", type_name::<T::Args>(), e);
                self.ready.push_back((index, Err(err)));
                continue;
            }
            b.offsets.push(b.payload.len() as u32);
            b.indices.push(index);
            unsent += 1;
            if b.indices.len() >= self.chunker.size {
                let b = std::mem::replace(
                    b,
                    Building {
                        payload: Vec::new(),
                        offsets: vec![0],
                        indices: Vec::new(),
                    },
                );
                unsent -= b.indices.len();
                self.submit_routed(b.payload, b.offsets, b.indices, slot);
            }
        }
        for (slot, b) in building.into_iter().enumerate() {
            if !b.indices.is_empty() {
                self.submit_routed(b.payload, b.offsets, b.indices, slot);
            }
        }
    }

    fn submit_routed(
        &mut self,
        payload: Vec<u8>,
        offsets: Vec<u32>,
        indices: Vec<u64>,
        slot: usize,
    ) {
        if payload.len() + run_header_bound::<T>() > self.pool.config.max_frame {
            // Rare: split one by one (each still routed to its slot).
            for (i, &index) in indices.iter().enumerate() {
                let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
                let one = Bytes::copy_from_slice(&payload[a..b]);
                self.submit(
                    one,
                    vec![0, (b - a) as u32],
                    Some(vec![index]),
                    0,
                    Some(slot),
                );
            }
            return;
        }
        self.submit(Bytes::from(payload), offsets, Some(indices), 0, Some(slot));
    }

    /// Inputs taken and not yet handed to the caller.
    fn outstanding(&self) -> usize {
        self.in_flight + self.ready.len() + self.held
    }

    /// Whether to pull inputs now: once `tasks` fit in the window, or when
    /// nothing is outstanding. Refilling whatever room each result frees
    /// would, once results come back a few at a time, send chunks of a
    /// task or two, each its own frame (and partial, in a map-reduce):
    /// fleetcheck's routed scan sent 3 tasks per RUN frame instead of 16
    /// and its parent made 2.6x the syscalls (strace), for 0.45 vs 0.28
    /// CPU-s per 100M points.
    fn room_for(&self, tasks: usize) -> bool {
        let outstanding = self.outstanding();
        outstanding == 0 || self.window().saturating_sub(outstanding) >= tasks.min(self.window())
    }

    fn submit_split(
        &mut self,
        payload: Vec<u8>,
        offsets: Vec<u32>,
        indices: Option<Vec<u64>>,
        base: u64,
    ) {
        let max = self.pool.config.max_frame;
        for i in 0..offsets.len() - 1 {
            let index = indices.as_ref().map_or(base + i as u64, |ix| ix[i]);
            let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
            if b - a + run_header_bound::<T>() > max {
                let err = Error::serialization(
                    "arguments",
                    type_name::<T::Args>(),
                    format!(
                        "{} bytes serialized, more than the frame cap of {max} bytes{}",
                        b - a,
                        self.pool.frame_cap_origin()
                    ),
                );
                self.ready.push_back((index, Err(err)));
                continue;
            }
            let one = Bytes::copy_from_slice(&payload[a..b]);
            self.submit(one, vec![0, (b - a) as u32], Some(vec![index]), 0, None);
        }
    }

    fn submit(
        &mut self,
        payload: Bytes,
        offsets: Vec<u32>,
        indices: Option<Vec<u64>>,
        base: u64,
        affinity: Option<usize>,
    ) {
        let count = offsets.len() - 1;
        let rec = ChunkRec::new(
            (self.id, self.tx.clone()),
            T::NAME,
            (payload, offsets, indices, base),
            self.options.timeout,
            self.options.max_attempts,
            affinity,
            self.reduce.clone(),
        );
        let submitted = self.pool.lock().submit(rec);
        match submitted {
            Ok(()) => {
                self.in_flight += count;
                self.chunker.started();
                self.chunker.sent();
            }
            Err(refused) => {
                let (failure, rec) = *refused;
                for i in 0..rec.count() {
                    self.ready
                        .push_back((rec.job_index(i), Err(failure.to_error())));
                }
                // Nothing more is pulled from the inputs: the call ends
                // once what was submitted before has come back.
                self.exhausted = true;
            }
        }
    }

    /// Takes in one event. With `direct` (an awaited `map`: its next input
    /// index, its reorder buffer and its values), a value that is the next
    /// one in input order goes straight into the values instead of through
    /// `ready`.
    fn on_event(&mut self, event: Event, mut direct: Option<Direct<'_, T>>) {
        match event {
            Event::Outcomes {
                frame,
                items,
                listed,
            } => {
                let mut n = 0;
                for item in items {
                    if item.partial {
                        n += item.index as usize;
                        self.folded += item.index;
                        self.partials
                            .push_back((frame.clone(), item.start, item.end, item.index));
                        continue;
                    }
                    n += item.count as usize;
                    match &mut direct {
                        None => self.ready.reserve(item.count as usize),
                        // A run ahead of its turn: room for all of it in
                        // the reorder buffer at once.
                        Some(d) if item.listed == Item::CONSECUTIVE && item.index > *d.emit => {
                            let end = (item.index - *d.emit) as usize + item.count as usize;
                            if end > d.pending.len() {
                                d.pending.resize_with(end, || None);
                            }
                        }
                        Some(_) => {}
                    }
                    let body = frame
                        .get(item.start as usize..item.end as usize)
                        .unwrap_or_default();
                    let mut reader = wire::Reader::new(body);
                    let mut values = body;
                    for k in 0..item.count {
                        let result = if item.dense {
                            match postcard::take_from_bytes::<T::Output>(values) {
                                Ok((value, rest)) => {
                                    values = rest;
                                    Ok(value)
                                }
                                Err(e) => {
                                    // The rest of the run cannot be found
                                    // past a value that does not decode.
                                    values = &[];
                                    Err(Error::serialization("result", type_name::<T::Output>(), e))
                                }
                            }
                        } else {
                            match wire::next_outcome(&mut reader) {
                                Ok((status, data)) => {
                                    decode_outcome::<T>(status, data, self.options.timeout)
                                }
                                // Every task of the run still gets an outcome.
                                Err(e) => Err(Error::protocol(format!(
                                    "a worker sent a malformed outcome: {e}"
                                ))),
                            }
                        };
                        let index = item.input_index(&listed, k);
                        match (result, &mut direct) {
                            (Ok(value), Some(d)) if index == *d.emit => {
                                d.values.push(value);
                                *d.emit += 1;
                                // The reorder buffer stays aligned on the
                                // next index (its front slot was empty).
                                d.pending.pop_front();
                            }
                            // Ahead of its turn: straight into its slot of
                            // the reorder buffer.
                            (result, Some(d)) if index > *d.emit => {
                                let at = (index - *d.emit) as usize;
                                if at >= d.pending.len() {
                                    d.pending.resize_with(at + 1, || None);
                                }
                                d.pending[at] = Some(result);
                                self.held += 1;
                            }
                            (result, _) => self.ready.push_back((index, result)),
                        }
                    }
                }
                self.in_flight -= n.min(self.in_flight);
                self.chunker.completed(n);
            }
            Event::Failed { indices, failure } => {
                self.in_flight -= indices.len().min(self.in_flight);
                for index in indices {
                    self.ready.push_back((index, Err(failure.to_error())));
                }
            }
        }
    }

    /// Fails the whole call before it starts.
    pub(crate) fn refused_with(&mut self, error: Error) {
        self.refusal.get_or_insert(error);
        self.exhausted = true;
    }

    pub(crate) fn take_refusal(&mut self) -> Option<Error> {
        self.refusal.take()
    }

    pub(crate) fn folded(&self) -> u64 {
        self.folded
    }

    pub(crate) fn set_route(&mut self, route: fn(&T::Args) -> u64) {
        self.route = Some(route);
    }

    pub(crate) fn set_reduce(&mut self, name: &'static str, value: Bytes) {
        self.reduce = Some((name, value));
    }

    /// Nothing is in flight and the input has nothing for now: the call
    /// waits for its input, unless the pool has stopped taking work
    /// (closed, terminated, broken) — then it ends as a refused submit
    /// does, and true is returned. Otherwise the pool keeps the waker, to
    /// wake the call when it stops taking work.
    fn refused_while_waiting(&mut self, cx: &Context<'_>) -> bool {
        let mut core = self.pool.lock();
        match core.accepting() {
            Ok(()) => {
                core.input_waiters.insert(self.id, cx.waker().clone());
                self.parked = true;
                false
            }
            Err(failure) => {
                self.refused = Some(failure);
                true
            }
        }
    }

    /// The next finished task, in completion order.
    pub(crate) fn poll_next_done(&mut self, cx: &mut Context<'_>) -> Poll<Option<Done<T>>> {
        loop {
            // Keep the workers fed while the caller drains results: a whole
            // chunk's room in the window is refilled at once.
            let fed = !self.exhausted && self.outstanding() + self.chunker.size <= self.window();
            if fed {
                self.feed(cx);
            }
            if let Some(done) = self.ready.pop_front() {
                return Poll::Ready(Some(done));
            }
            if !fed {
                self.feed(cx);
            }
            if !self.ready.is_empty() {
                continue;
            }
            if self.in_flight == 0 {
                if self.exhausted {
                    return Poll::Ready(None);
                }
                if self.refused_while_waiting(cx) {
                    continue;
                }
                return Poll::Pending;
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    self.on_event(event, None);
                    // Drain what else is already there without re-feeding
                    // for every event.
                    while let Some(event) = self.rx.try_recv() {
                        self.on_event(event, None);
                    }
                }
                // We hold a sink, so the queue never ends.
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// For an awaited `map`: feeds the workers and takes in what has
    /// arrived, values next in input order going straight into `direct`.
    /// `Ready(true)`: something arrived (or waits in `ready`);
    /// `Ready(false)`: the call is over.
    fn poll_direct(&mut self, cx: &mut Context<'_>, mut direct: Direct<'_, T>) -> Poll<bool> {
        if !self.exhausted {
            self.feed(cx);
        }
        if !self.ready.is_empty() {
            return Poll::Ready(true);
        }
        if self.in_flight == 0 {
            if self.exhausted {
                return Poll::Ready(false);
            }
            if self.refused_while_waiting(cx) {
                self.feed(cx);
                return Poll::Ready(true);
            }
            return Poll::Pending;
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                self.on_event(event, Some(direct.reborrow()));
                while let Some(event) = self.rx.try_recv() {
                    self.on_event(event, Some(direct.reborrow()));
                }
                Poll::Ready(true)
            }
            // We hold a sink, so the queue never ends.
            Poll::Ready(None) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }
}

// Nothing in a call is ever pinned in place: the source is an iterator or
// an `Unpin` stream, and results are plain values that move freely.
impl<T: Task, S> Unpin for Job<T, S> {}
impl<T: Task, S> Unpin for Map<T, S> {}
impl<T: Task, S> Unpin for Collect<T, S> {}
impl<T: Task, S> Unpin for MapUnordered<T, S> {}
impl<T: Task> Unpin for Apply<T> {}

impl<T: Task, S> Drop for Job<T, S> {
    fn drop(&mut self) {
        if self.parked {
            self.pool.lock().input_waiters.remove(&self.id);
        }
        if self.in_flight > 0 {
            self.pool.lock().cancel_job(self.id);
            // `close` waits for the pool to run out of work: this may be it.
            self.pool.progress.notify_waiters();
        }
    }
}

/// The worker slot of routing key `key` among `slots`: the key's
/// remainder by the slot count, turned by a hash of the rest of it. Keys
/// of a dense range (ids 0..n) take the slots in turn, so each slot gets
/// its even share (a hash alone gave 478 and 522 of 1,000 hosts to two
/// workers: the busier one set the pace of every round of fleetcheck's
/// scan); keys that share a remainder (all even, say) still spread.
fn slot_of(key: u64, slots: u64) -> u64 {
    let turn = crate::ids::stable_hash(&(key / slots)) % slots;
    (key % slots + turn) % slots
}

/// The most bytes a RUN frame's body takes besides its payload: tag,
/// chunk id, task name, timeout, count.
fn run_header_bound<T: Task>() -> usize {
    1 + 10 + 5 + T::NAME.len() + 10 + 5
}

/// Turns an outcome's status and data into the caller's typed result.
pub(crate) fn decode_outcome<T: Task>(
    status: Status,
    data: &[u8],
    timeout: Option<Duration>,
) -> Result<T::Output, Error> {
    let text = || String::from_utf8_lossy(data).into_owned();
    match status {
        Status::Ok => postcard::from_bytes::<T::Output>(data)
            .map_err(|e| Error::serialization("result", type_name::<T::Output>(), e)),
        Status::TaskError => match postcard::from_bytes::<T::Error>(data) {
            Ok(e) => Err(Error::task(e)),
            Err(e) => Err(Error::serialization(
                "task error",
                type_name::<T::Error>(),
                e,
            )),
        },
        Status::Panic => {
            let (message, location) =
                wire::decode_panic(data).unwrap_or(("a panic (undecodable message)", None));
            Err(Error::new(Kind::Panic {
                message: message.to_owned(),
                location: location.map(str::to_owned),
            }))
        }
        Status::Timeout => {
            // The data is the limit in microseconds, prefixed with `hard:`
            // when the watchdog had to end the worker.
            let text = std::str::from_utf8(data).unwrap_or_default();
            let (hard, micros) = match text.strip_prefix("hard:") {
                Some(rest) => (true, rest),
                None => (false, text),
            };
            let after = micros
                .parse()
                .map(Duration::from_micros)
                .ok()
                .or(timeout)
                .unwrap_or_default();
            Err(Error::new(Kind::Timeout { after, hard }))
        }
        Status::EncodeFailed => Err(Error::serialization(
            "result",
            type_name::<T::Output>(),
            text(),
        )),
        Status::DecodeFailed => Err(Error::serialization(
            "arguments",
            type_name::<T::Args>(),
            text(),
        )),
        Status::Partial => Err(Error::protocol(
            "a folded result arrived for a call without a reducer",
        )),
        Status::UnknownTask => Err(Error::protocol(format!(
            "the worker has no task named `{}`: is `#[multiloop::task]` code compiled out of the worker?",
            text()
        ))),
    }
}

macro_rules! call_options {
    () => {
        /// Sets a deadline for each task of this call, replacing the pool's
        /// default. A task still running at the deadline is dropped in its
        /// worker and ends with a timeout error.
        pub fn timeout(mut self, limit: Duration) -> Self {
            self.job.options().timeout = Some(limit.min(super::LONGEST_WAIT));
            self
        }

        /// Sets how many times each task of this call may run when workers
        /// die under it (at least 1), replacing the pool's default.
        pub fn max_attempts(mut self, attempts: u32) -> Self {
            self.job.options().max_attempts = attempts.max(1);
            self
        }

        /// Sends tasks in chunks of exactly `size` instead of the adaptive
        /// size (taken as 1 to 1,048,576).
        pub fn chunk_size(mut self, size: usize) -> Self {
            self.job.options().chunk_size = Some(size.clamp(1, super::MAX_CHUNK_SIZE));
            self.job.apply_options();
            self
        }

        /// Routes each input by the key `route` computes from it: inputs
        /// with the same key always run on the same worker slot, so a
        /// worker can keep state per key (see
        /// [`worker_state`](crate::worker_state)). When a worker is
        /// replaced, its slot's keys go to the new worker, which starts
        /// with empty state; no task is lost.
        ///
        /// Order: on a local pool, a worker receives its routed tasks in
        /// the order they were submitted (by this call and by earlier
        /// ones), also the tasks it runs again for a worker that died,
        /// and starts them in that order, each running up to its first
        /// `.await` as it starts. Tasks of one key that must not overlap
        /// can take a fair lock of that key (`tokio::sync::Mutex`) before
        /// their first `.await`: they then run one after the other, in
        /// submission order.
        pub fn route_by(mut self, route: fn(&T::Args) -> u64) -> Self {
            self.job.set_route(route);
            self
        }
    };
}

/// The results of [`Pool::map`](crate::Pool::map), in input order.
///
/// A [`Stream`] that yields each result as soon as it and every result
/// before it are ready; or `.await` it for a `Vec` of every value (the first
/// error, in input order, fails the whole call). Dropping it cancels the
/// tasks it has not delivered yet.
#[must_use = "a map does nothing until it is awaited or polled"]
pub struct Map<T: Task, S> {
    job: Job<T, S>,
    /// Results waiting for an earlier one; slot `i` is index `emit + i`.
    pending: VecDeque<Option<Result<T::Output, Error>>>,
    emit: u64,
}

impl<T: Task, S: Input<Item = T::Args>> Map<T, S> {
    pub(crate) fn new(job: Job<T, S>) -> Self {
        Map {
            job,
            pending: VecDeque::new(),
            emit: 0,
        }
    }

    call_options!();
}

impl<T: Task, S: Input<Item = T::Args>> Stream for Map<T, S> {
    type Item = Result<T::Output, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // The common case: the next result in order, nothing held back.
            if this.pending.is_empty()
                && let Some((index, _)) = this.job.ready.front()
                && *index == this.emit
            {
                this.emit += 1;
                return Poll::Ready(this.job.ready.pop_front().map(|(_, r)| r));
            }
            if let Some(Some(_)) = this.pending.front() {
                this.emit += 1;
                this.job.held -= 1;
                return Poll::Ready(this.pending.pop_front().flatten());
            }
            match this.job.poll_next_done(cx) {
                Poll::Ready(Some((index, result))) => {
                    let at = (index - this.emit) as usize;
                    if at >= this.pending.len() {
                        this.pending.resize_with(at + 1, || None);
                    }
                    this.pending[at] = Some(result);
                    this.job.held += 1;
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T: Task, S: Input<Item = T::Args>> IntoFuture for Map<T, S> {
    type Output = Result<Vec<T::Output>, Error>;
    type IntoFuture = Collect<T, S>;

    fn into_future(self) -> Collect<T, S> {
        // Sized once from the source's own count (capped, in case it is
        // wrong), instead of growing and copying as results come.
        let expected = self.job.source.inputs_left().min(MAX_PRESIZED);
        Collect {
            map: self,
            values: Vec::with_capacity(expected),
        }
    }
}

/// The future of an awaited [`Map`]: every value in input order, or the
/// first error.
#[must_use = "futures do nothing unless awaited"]
pub struct Collect<T: Task, S> {
    map: Map<T, S>,
    values: Vec<T::Output>,
}

impl<T: Task, S: Input<Item = T::Args>> Future for Collect<T, S> {
    type Output = Result<Vec<T::Output>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let map = &mut this.map;
        loop {
            // What is already here in order, without receiving anything.
            loop {
                let next = if let Some(Some(_)) = map.pending.front() {
                    map.job.held -= 1;
                    map.pending.pop_front().flatten()
                } else if map.pending.is_empty()
                    && map.job.ready.front().is_some_and(|(i, _)| *i == map.emit)
                {
                    map.job.ready.pop_front().map(|(_, r)| r)
                } else {
                    break;
                };
                match next {
                    Some(Ok(v)) => {
                        map.emit += 1;
                        this.values.push(v);
                    }
                    Some(Err(e)) => return Poll::Ready(Err(e)),
                    None => break,
                }
            }
            if !map.job.ready.is_empty() {
                // Out of order: through the stream, which holds it back.
                match Pin::new(&mut *map).poll_next(cx) {
                    Poll::Ready(Some(Ok(v))) => this.values.push(v),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => return Poll::Ready(Ok(std::mem::take(&mut this.values))),
                    Poll::Pending => return Poll::Pending,
                }
                continue;
            }
            let direct = Direct {
                emit: &mut map.emit,
                pending: &mut map.pending,
                values: &mut this.values,
            };
            match map.job.poll_direct(cx, direct) {
                Poll::Ready(true) => {}
                Poll::Ready(false) => return Poll::Ready(Ok(std::mem::take(&mut this.values))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The results of [`Pool::map_unordered`](crate::Pool::map_unordered):
/// `(index, result)` pairs as tasks complete.
///
/// Dropping it cancels the tasks it has not delivered yet.
#[must_use = "streams do nothing unless polled"]
pub struct MapUnordered<T: Task, S> {
    job: Job<T, S>,
}

impl<T: Task, S: Input<Item = T::Args>> MapUnordered<T, S> {
    pub(crate) fn new(job: Job<T, S>) -> Self {
        MapUnordered { job }
    }

    call_options!();
}

impl<T: Task, S: Input<Item = T::Args>> Stream for MapUnordered<T, S> {
    type Item = (u64, Result<T::Output, Error>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().job.poll_next_done(cx)
    }
}

/// The result of [`Pool::apply`](crate::Pool::apply): one task's value.
///
/// Dropping it before it completes cancels the task.
#[must_use = "futures do nothing unless awaited"]
pub struct Apply<T: Task> {
    job: Job<T, IterInput<std::option::IntoIter<T::Args>>>,
}

impl<T: Task> Apply<T> {
    pub(crate) fn new(job: Job<T, IterInput<std::option::IntoIter<T::Args>>>) -> Self {
        Apply { job }
    }

    /// Sets a deadline for the task, replacing the pool's default.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.job.options().timeout = Some(limit.min(super::LONGEST_WAIT));
        self
    }

    /// Sets how many times the task may run when workers die under it.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.job.options().max_attempts = attempts.max(1);
        self
    }
}

impl<T: Task> Future for Apply<T> {
    type Output = Result<T::Output, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut().job.poll_next_done(cx) {
            Poll::Ready(Some((_, result))) => Poll::Ready(result),
            Poll::Ready(None) => {
                Poll::Ready(Err(Error::protocol("the task ended without an outcome")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The result of [`Pool::map_reduce`](crate::Pool::map_reduce): every
/// result folded in the workers, the partials merged here.
#[must_use = "futures do nothing unless awaited"]
pub struct MapReduce<T: Task, S, R: Reducer> {
    job: Job<T, S>,
    reducer: R,
    acc: Option<R::Acc>,
    errors: Vec<(u64, Error)>,
    folded: u64,
}

impl<T: Task, S, R: Reducer> Unpin for MapReduce<T, S, R> {}

impl<T, S, R> MapReduce<T, S, R>
where
    T: Task,
    S: Input<Item = T::Args>,
    R: Reducer<Item = T::Output>,
{
    pub(crate) fn new(mut job: Job<T, S>, reducer: R) -> Self {
        let mut value = Vec::new();
        match wire::append_value(&mut value, &reducer) {
            Ok(()) => job.set_reduce(crate::reduce::reducer_name::<R>(), Bytes::from(value)),
            Err(e) => job.refused_with(Error::serialization("reducer", type_name::<R>(), e)),
        }
        if crate::reduce::lookup(crate::reduce::reducer_name::<R>()).is_none() {
            job.refused_with(Error::usage(format!(
                "the reducer `{}` is not registered: add `multiloop::register_reducer!({});` at the top level of a module",
                type_name::<R>(),
                type_name::<R>()
            )));
        }
        let acc = Some(reducer.identity());
        MapReduce {
            job,
            reducer,
            acc,
            errors: Vec::new(),
            folded: 0,
        }
    }

    call_options!();

    /// Yields the call's outcome piece by piece, as it arrives, instead of
    /// merged at the end: each worker's fold of one chunk's results, and
    /// each failed task. What a long or endless call needs (a service
    /// folding rounds as they complete, a progress report); awaiting the
    /// call merges the same pieces.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use multiloop::reduce::{Partial, Sum};
    ///
    /// #[multiloop::task]
    /// async fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// # fn main() -> Result<(), multiloop::Error> {
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let pool = multiloop::Pool::builder().processes(2).build().await?;
    /// let mut partials = pool.map_reduce(square, 1..=100, Sum::new()).partials();
    /// let (mut sum, mut tasks) = (0, 0);
    /// while let Some(piece) = partials.next().await {
    ///     match piece? {
    ///         Partial::Folded { value, tasks: n } => (sum, tasks) = (sum + value, tasks + n),
    ///         Partial::Failed { index, error } => panic!("input {index}: {error}"),
    ///     }
    /// }
    /// assert_eq!((sum, tasks), (338_350, 100));
    /// # pool.close().await
    /// # })
    /// # }
    /// ```
    pub fn partials(self) -> Partials<T, S, R> {
        Partials { call: self }
    }

    /// The next partial received, decoded.
    fn next_partial(&mut self) -> Option<Result<(R::Acc, u64), Error>> {
        let (frame, start, end, tasks) = self.job.partials.pop_front()?;
        let data = frame.get(start as usize..end as usize).unwrap_or_default();
        Some(
            postcard::from_bytes::<R::Acc>(data)
                .map(|partial| (partial, tasks))
                .map_err(|e| Error::serialization("partial result", type_name::<R::Acc>(), e)),
        )
    }

    fn merge_partials(&mut self) {
        while let Some(next) = self.next_partial() {
            match next {
                Ok((partial, _)) => {
                    if let Some(acc) = &mut self.acc {
                        self.reducer.merge(acc, partial);
                    }
                }
                Err(e) => self.errors.push((u64::MAX, e)),
            }
        }
    }
}

/// The outcome of a [`MapReduce`] piece by piece, as it arrives
/// ([`MapReduce::partials`]).
///
/// An `Err` item is the whole call's failure (the pool refused it, or a
/// partial could not be decoded); the stream ends after a refusal.
/// Dropping the stream cancels the tasks not yet folded.
#[must_use = "streams do nothing unless polled"]
pub struct Partials<T: Task, S, R: Reducer> {
    call: MapReduce<T, S, R>,
}

impl<T: Task, S, R: Reducer> Unpin for Partials<T, S, R> {}

impl<T, S, R> Stream for Partials<T, S, R>
where
    T: Task,
    S: Input<Item = T::Args>,
    R: Reducer<Item = T::Output>,
{
    type Item = Result<Partial<R::Acc>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let call = &mut self.get_mut().call;
        loop {
            if let Some(next) = call.next_partial() {
                return Poll::Ready(Some(
                    next.map(|(value, tasks)| Partial::Folded { value, tasks }),
                ));
            }
            match call.job.poll_next_done(cx) {
                // Not folded in a worker (cannot happen today): a piece of
                // its own.
                Poll::Ready(Some((_, Ok(value)))) => {
                    let mut acc = call.reducer.identity();
                    call.reducer.fold(&mut acc, value);
                    return Poll::Ready(Some(Ok(Partial::Folded {
                        value: acc,
                        tasks: 1,
                    })));
                }
                Poll::Ready(Some((index, Err(error)))) => {
                    if let Some(refusal) = call.job.take_refusal() {
                        return Poll::Ready(Some(Err(refusal)));
                    }
                    return Poll::Ready(Some(Ok(Partial::Failed { index, error })));
                }
                // Partials that came with the last events go out first.
                Poll::Ready(None) if !call.job.partials.is_empty() => {}
                Poll::Ready(None) => return Poll::Ready(call.job.take_refusal().map(Err)),
                Poll::Pending if !call.job.partials.is_empty() => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T, S, R> Future for MapReduce<T, S, R>
where
    T: Task,
    S: Input<Item = T::Args>,
    R: Reducer<Item = T::Output>,
{
    type Output = Result<Reduced<R::Acc>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let next = this.job.poll_next_done(cx);
            this.merge_partials();
            match next {
                Poll::Ready(Some((index, Ok(value)))) => {
                    // Not folded in a worker (cannot happen today); fold here.
                    if let Some(acc) = &mut this.acc {
                        this.reducer.fold(acc, value);
                    }
                    this.folded += 1;
                    let _ = index;
                }
                Poll::Ready(Some((index, Err(e)))) => {
                    if let Some(refusal) = this.job.take_refusal() {
                        return Poll::Ready(Err(refusal));
                    }
                    this.errors.push((index, e));
                }
                Poll::Ready(None) => {
                    if let Some(refusal) = this.job.take_refusal() {
                        return Poll::Ready(Err(refusal));
                    }
                    let value = this.acc.take().unwrap_or_else(|| this.reducer.identity());
                    let folded = this.job.folded();
                    return Poll::Ready(Ok(Reduced {
                        value,
                        errors: std::mem::take(&mut this.errors),
                        folded: folded + this.folded,
                    }));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slot_of;

    #[test]
    fn a_dense_range_of_keys_is_shared_evenly_and_sparse_keys_still_spread() {
        for slots in 1..=8u64 {
            let mut dense = vec![0u64; slots as usize];
            let mut even = vec![0u64; slots as usize];
            for key in 0..1000 * slots {
                dense[slot_of(key, slots) as usize] += 1;
                even[slot_of(key * 2 * slots, slots) as usize] += 1;
            }
            assert!(dense.iter().all(|&n| n == 1000), "{slots} slots: {dense:?}");
            // Keys that are all multiples of the slot count still reach
            // every slot (a remainder alone would send them all to 0).
            assert!(even.iter().all(|&n| n > 700), "{slots} slots: {even:?}");
        }
        // The same key, the same slot.
        assert_eq!(slot_of(12345, 4), slot_of(12345, 4));
    }
}
