//! The writer thread (group commit, rotation, poisoning), its helper thread
//! (preallocation), and the state they share with [`Wal`](crate::Wal)
//! handles.
//!
//! ## Hand-off
//!
//! Appenders never touch a segment. Each encodes and checksums its batch
//! (and compresses it) in its own thread, then, under one short lock, takes
//! the next LSNs and copies the frame into the shared log buffer: a queue of
//! blocks of at most `max_batch_size` bytes. Taking the LSN and placing the
//! frame under the same lock makes the buffer order the LSN order. The
//! appender then rings the writer's doorbell (a one-slot crossbeam channel:
//! a token already waiting means the writer will look anyway).
//!
//! The writer takes every queued block at once (swapping the queue for an
//! empty one), writes them with one vectored `write`, calls `fdatasync` once
//! when the policy asks for it, publishes the written and durable LSNs, and
//! wakes exactly the appenders whose LSNs those cover. Blocks are recycled,
//! so in steady state an append allocates nothing and the writer makes one
//! `write` and at most one `fdatasync` per group, whatever its size.
//!
//! Under [`SyncPolicy::Always`] the writer also *gathers*: when fewer frames
//! are queued than the previous group had, it waits briefly
//! ([`GATHER`]) for the rest, since the appenders it just woke are about to
//! append again. With one appender the previous group had one frame, so
//! nothing is ever delayed.
//!
//! Under `Interval` and `Never` the writer takes full blocks as they fill
//! and holds the block being filled until someone waits for it (a blocking
//! append, a ticket, `flush`, `sync`, `close`) or [`FLUSH_DELAY`] passes, so
//! a stream of pipelined appends becomes large writes.
//!
//! ## Waiting
//!
//! Waiters register (target LSN, thread) and park; the writer unparks
//! exactly those its new watermarks cover. A lone durable appender instead
//! yields in a loop for up to twice the last `fdatasync` time: it then sees
//! its acknowledgement microseconds after the sync instead of one thread
//! wake-up later, which is most of the hand-off cost of a single writer
//! thread.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use highwater_core::{Error, ErrorKind, Result};
use xxhash_rust::xxh3::xxh3_64;

use crate::Lsn;
use crate::config::{SyncPolicy, WalConfig};
use crate::format::{FRAME_HEADER_LEN, FrameHeader, patch_synced_lsn};
use crate::segment::{
    ActiveSegment, SegmentInfo, Spare, install_segment, make_spare, write_durable,
};

/// How long the writer waits for the appenders of its previous group to
/// come back before it commits a smaller group (policy `Always` only).
pub(crate) const GATHER: Duration = Duration::from_micros(50);

/// How long an idle writer polls for more work before it sleeps (see
/// `Writer::next_group`).
const SPIN: Duration = Duration::from_micros(20);

/// Under `Interval` and `Never`, how long a partly filled block may wait
/// for more frames when nobody waits for it.
pub(crate) const FLUSH_DELAY: Duration = Duration::from_millis(1);

/// How many threads the writer, and then each woken waiter, unparks.
const WAKE_FANOUT: usize = 2;

/// The most slices one `writev` takes (Linux `IOV_MAX`).
const MAX_IOV: usize = 1024;

/// Recycled blocks kept for reuse.
const FREE_BLOCKS: usize = 16;

/// Locks a mutex, ignoring poisoning: every critical section in this crate
/// leaves its data consistent before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared log buffer and submission state, under one lock.
#[derive(Debug)]
pub(crate) struct Queue {
    /// The LSN the next record gets.
    pub next_lsn: Lsn,
    /// Frames waiting for the writer, in LSN order.
    pub blocks: VecDeque<Block>,
    /// Bytes in `blocks`.
    pub bytes: usize,
    /// Frames in `blocks`.
    pub frames: usize,
    /// Empty blocks for reuse.
    pub free: Vec<Block>,
    /// Submitters blocked on `buffer_size`.
    pub space_waiters: usize,
    /// Every record up to this LSN must be made durable (sync or close).
    pub sync_to: Lsn,
    /// Close requested: nothing more is accepted.
    pub closed: bool,
    /// The writer found the queue empty and wants a ring on the next
    /// submission.
    pub writer_parked: bool,
}

/// Frames back to back, at most `max_batch_size` bytes unless one frame is
/// larger.
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub buf: Vec<u8>,
    pub frames: usize,
}

/// One group taken from the queue.
struct Take {
    blocks: VecDeque<Block>,
    frames: usize,
    sync_to: Lsn,
    closed: bool,
}

/// An appender blocked until a watermark reaches `target`.
#[derive(Debug)]
struct Waiter {
    target: Lsn,
    durable: bool,
    thread: Thread,
}

/// State shared by the handles and the writer thread.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: WalConfig,
    pub queue: Mutex<Queue>,
    /// Signalled when the writer empties the queue, for submitters held
    /// back by `buffer_size`.
    pub space: Condvar,
    /// The writer's doorbell.
    pub bell: Sender<()>,
    waiters: Mutex<Vec<Waiter>>,
    /// Satisfied waiters still to be unparked (see `Shared::pass_on_wake`).
    to_wake: Mutex<Vec<Thread>>,
    /// Number of registered waiters: the writer writes the block being
    /// filled at once when someone waits.
    waiting: AtomicUsize,
    /// Set once, when a write or fsync fails (or the writer dies): the
    /// failure, which every later call reports as its cause.
    pub poison: OnceLock<Arc<Error>>,
    /// Every record up to this LSN has been written to the OS.
    pub written_lsn: AtomicU64,
    /// Every record up to this LSN is durable.
    pub durable_lsn: AtomicU64,
    /// How long the last `fdatasync` of the active segment took.
    last_sync_ns: AtomicU64,
    /// Frames in the writer's previous group.
    last_group: AtomicUsize,
    /// Counters for [`WalStats`](crate::WalStats).
    pub stats: Counters,
    /// The segments, oldest first; the last is the active one.
    pub segments: Mutex<Vec<SegmentInfo>>,
    /// What the sync thread is to `fdatasync` (policy `Interval` only).
    syncer: Syncer,
}

impl Shared {
    pub(crate) fn new(
        dir: PathBuf,
        config: WalConfig,
        next_lsn: Lsn,
        segments: Vec<SegmentInfo>,
        bell: Sender<()>,
    ) -> Shared {
        Shared {
            dir,
            config,
            queue: Mutex::new(Queue {
                next_lsn,
                blocks: VecDeque::new(),
                bytes: 0,
                frames: 0,
                free: Vec::new(),
                space_waiters: 0,
                sync_to: 0,
                closed: false,
                writer_parked: false,
            }),
            space: Condvar::new(),
            bell,
            waiters: Mutex::new(Vec::new()),
            to_wake: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            poison: OnceLock::new(),
            written_lsn: AtomicU64::new(next_lsn - 1),
            durable_lsn: AtomicU64::new(next_lsn - 1),
            last_sync_ns: AtomicU64::new(0),
            last_group: AtomicUsize::new(1),
            stats: Counters::default(),
            segments: Mutex::new(segments),
            syncer: Syncer {
                state: Mutex::new(SyncState {
                    active: None,
                    full: Vec::new(),
                    written: next_lsn - 1,
                    dirty: false,
                    requested: 0,
                    stop: false,
                }),
                bell: Condvar::new(),
                running: Mutex::new(()),
            },
        }
    }

    /// The error of every call after the log was poisoned: of the kind of
    /// the failure that poisoned it when that is permanent (a full disk
    /// stays [`ErrorKind::StorageFull`], so the caller knows what to fix),
    /// else [`ErrorKind::Closed`] (a poisoned log never retries: reopen
    /// it), with the failure as the source.
    pub(crate) fn poisoned_error(&self) -> Option<Error> {
        self.poison.get().map(|cause| {
            let kind = if cause.is_transient() {
                ErrorKind::Closed
            } else {
                cause.kind()
            };
            Error::backend(
                kind,
                "wal",
                format!(
                    "write to the wal in {} (poisoned by an earlier failed write or fsync; \
                     reopen the log once the cause is fixed)",
                    self.dir.display()
                ),
                Arc::clone(cause),
            )
        })
    }

    fn mark(&self, durable: bool) -> Lsn {
        if durable {
            self.durable_lsn.load(Ordering::Acquire)
        } else {
            self.written_lsn.load(Ordering::Acquire)
        }
    }

    /// Wakes the writer. A full doorbell means a wake-up is already pending.
    pub(crate) fn ring(&self) {
        let _ = self.bell.try_send(());
    }

    /// Blocks until every record up to `target` is written (or durable,
    /// with `durable`), or the log is poisoned.
    pub(crate) fn wait(&self, target: Lsn, durable: bool) -> Result<()> {
        if self.mark(durable) >= target {
            return Ok(());
        }
        if durable
            && self.waiting.load(Ordering::SeqCst) == 0
            && self.last_group.load(Ordering::Relaxed) <= 1
        {
            // A lone appender (the previous group had one frame and nobody
            // else waits), waiting for an fdatasync that takes about as long as
            // the last one: yield the CPU in a loop instead of sleeping, so
            // the acknowledgement is seen within microseconds rather than
            // after a wake-up. Bounded by twice the last sync; after that,
            // or with other waiters around (they need the CPU), sleep.
            let budget = Duration::from_nanos(
                (2 * self.last_sync_ns.load(Ordering::Relaxed)).clamp(50_000, 1_000_000),
            );
            let start = Instant::now();
            while start.elapsed() < budget {
                if self.mark(durable) >= target {
                    return Ok(());
                }
                if let Some(e) = self.poisoned_error() {
                    return Err(e);
                }
                std::thread::yield_now();
            }
        }
        {
            let mut w = lock(&self.waiters);
            // Checked again under the lock: the writer publishes the
            // watermark before it takes this lock, so either this sees the
            // new value or the writer sees this waiter.
            if self.mark(durable) >= target {
                return Ok(());
            }
            if let Some(e) = self.poisoned_error() {
                return Err(e);
            }
            w.push(Waiter {
                target,
                durable,
                thread: std::thread::current(),
            });
            self.waiting.fetch_add(1, Ordering::SeqCst);
        }
        // The writer may be holding a partly filled block back for a
        // larger write; tell it someone waits.
        self.ring();
        loop {
            std::thread::park();
            if self.mark(durable) >= target {
                self.pass_on_wake();
                return Ok(());
            }
            if let Some(e) = self.poisoned_error() {
                self.pass_on_wake();
                return Err(e);
            }
            // A spurious wake-up: still registered, keep waiting.
        }
    }

    /// Wakes up to [`WAKE_FANOUT`] more threads from the wake list. Each
    /// woken waiter does this, so waking a large group is a tree spread over
    /// the cores instead of a loop of `unpark` calls on the writer's
    /// critical path.
    fn pass_on_wake(&self) {
        let mut batch = [None, None];
        {
            let mut list = lock(&self.to_wake);
            for slot in batch.iter_mut().take(WAKE_FANOUT) {
                *slot = list.pop();
            }
        }
        for t in batch.into_iter().flatten() {
            t.unpark();
        }
    }

    /// Wakes the waiters the current watermarks satisfy (all of them when
    /// the log is poisoned).
    fn wake(&self, scratch: &mut Vec<Thread>) {
        let poisoned = self.poison.get().is_some();
        let (written, durable) = (self.mark(false), self.mark(true));
        {
            let mut w = lock(&self.waiters);
            if w.is_empty() {
                return;
            }
            w.retain(|x| {
                let done = poisoned || x.target <= if x.durable { durable } else { written };
                if done {
                    scratch.push(x.thread.clone());
                }
                !done
            });
            self.waiting.store(w.len(), Ordering::SeqCst);
        }
        // The writer wakes the first few itself and leaves the rest to them
        // (see `pass_on_wake`). Every thread in the list was registered and
        // is satisfied, so each one it wakes passes the wake on: the list
        // always drains.
        let direct = scratch.len().min(WAKE_FANOUT);
        let rest = scratch.len() - direct;
        if rest > 0 {
            lock(&self.to_wake).extend(scratch.drain(..rest));
        }
        for t in scratch.drain(..) {
            t.unpark();
        }
    }
}

/// Running totals, updated by the writer.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub writes: AtomicU64,
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub syncs: AtomicU64,
    pub sync_ns: AtomicU64,
    pub segments_created: AtomicU64,
}

/// A request to the helper thread: create and zero-fill a spare segment.
struct Prealloc {
    path: PathBuf,
    size: u64,
}

/// The helper thread: preallocates spare segments in the background so the
/// writer does not wait for the zero-fill on the hot path.
fn helper_main(rx: Receiver<Prealloc>, spare_tx: Sender<io::Result<Spare>>) {
    for Prealloc { path, size } in rx {
        let r = make_spare(&path, size);
        if r.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        if spare_tx.send(r).is_err() {
            break;
        }
    }
}

/// The writer's hand-off to the sync thread (policy `Interval`).
///
/// The writer records here, after each `write` returns, which files hold
/// written data and the last LSN written; the sync thread takes that
/// snapshot, `fdatasync`s the files and then publishes the snapshot's LSN
/// as durable. An `fdatasync` covers every `write` that returned before it
/// was called, so the published LSN never runs ahead of the disk.
#[derive(Debug)]
struct Syncer {
    state: Mutex<SyncState>,
    /// Rung when a sync is requested or the sync thread is to stop.
    bell: Condvar,
    /// Held for the whole of a sync (snapshot, `fdatasync`s, publication),
    /// so two syncs never publish out of order.
    running: Mutex<()>,
}

#[derive(Debug)]
struct SyncState {
    /// The active segment, once anything was written to it.
    active: Option<(Arc<File>, PathBuf)>,
    /// Full segments with written data not yet synced, oldest first.
    full: Vec<(Arc<File>, PathBuf)>,
    /// Every record up to this LSN is written to a file listed above (or
    /// already synced).
    written: Lsn,
    /// Something was written since the last sync took its snapshot.
    dirty: bool,
    /// A caller (`Wal::sync`) waits for every record up to this LSN to be
    /// durable: sync without waiting for the interval.
    requested: Lsn,
    /// The writer is closing: the thread exits (the writer makes the final
    /// sync itself).
    stop: bool,
}

impl Shared {
    /// Records (policy `Interval`) that every record up to `written` is
    /// written, the last of them to `file`.
    fn note_written(&self, file: &Arc<File>, path: &std::path::Path, written: Lsn) {
        let mut st = lock(&self.syncer.state);
        if st
            .active
            .as_ref()
            .is_none_or(|(f, _)| !Arc::ptr_eq(f, file))
        {
            st.active = Some((Arc::clone(file), path.to_path_buf()));
        }
        st.written = written;
        if !st.dirty {
            st.dirty = true;
            // The sync thread sleeps untimed while nothing is unsynced.
            self.syncer.bell.notify_one();
        }
    }

    /// Records (policy `Interval`) that the active segment is full: it is
    /// synced with the next sync, before any LSN after it is published.
    fn note_rotated(&self) {
        let mut st = lock(&self.syncer.state);
        if let Some(old) = st.active.take() {
            st.full.push(old);
        }
    }

    /// Asks the sync thread to make everything up to `lsn` durable now.
    fn request_sync(&self, lsn: Lsn) {
        let mut st = lock(&self.syncer.state);
        st.requested = st.requested.max(lsn);
        self.syncer.bell.notify_one();
    }

    /// Makes everything noted as written durable: `fdatasync`s the full
    /// segments (a segment deleted by truncation since needs none), then
    /// the active one, then publishes the LSN noted before the first of
    /// them. Returns whether there was anything to sync.
    fn sync_noted(&self) -> Result<bool> {
        let _running = lock(&self.syncer.running);
        let (target, files) = {
            let mut st = lock(&self.syncer.state);
            if !st.dirty {
                return Ok(false);
            }
            st.dirty = false;
            let mut files = std::mem::take(&mut st.full);
            files.extend(st.active.clone());
            (st.written, files)
        };
        let t = Instant::now();
        for (file, path) in &files {
            file.sync_data()
                .map_err(|e| Error::io(format!("fdatasync wal segment {}", path.display()), e))?;
        }
        let ns = t.elapsed().as_nanos() as u64;
        crate::metrics::fsynced(ns);
        self.last_sync_ns.store(ns, Ordering::Relaxed);
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        self.stats.sync_ns.fetch_add(ns, Ordering::Relaxed);
        self.durable_lsn.fetch_max(target, Ordering::AcqRel);
        Ok(true)
    }
}

/// The sync thread (policy `Interval(every)`): `fdatasync`s what the writer
/// wrote, starting a sync at most `every` after the previous one started
/// while anything is unsynced, and at once when `Wal::sync` asks. The
/// writer never waits for it, so acknowledged (written) batches reach the
/// operating system however long an `fdatasync` takes.
///
/// A failed `fdatasync` poisons the log: the kernel may already have
/// dropped the pages it could not write, so it is never retried.
fn sync_main(shared: Arc<Shared>, every: Duration) {
    let mut scratch = Vec::new();
    let mut last_start = Instant::now();
    loop {
        {
            let mut st = lock(&shared.syncer.state);
            loop {
                if st.stop || shared.poison.get().is_some() {
                    return;
                }
                let durable = shared.durable_lsn.load(Ordering::Acquire);
                if st.dirty && st.requested > durable {
                    break;
                }
                let due = last_start + every;
                let now = Instant::now();
                if st.dirty && now >= due {
                    break;
                }
                st = if st.dirty {
                    shared
                        .syncer
                        .bell
                        .wait_timeout(st, due - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                } else {
                    shared
                        .syncer
                        .bell
                        .wait(st)
                        .unwrap_or_else(PoisonError::into_inner)
                };
            }
        }
        last_start = Instant::now();
        if let Err(e) = shared.sync_noted() {
            if shared.poison.get().is_none() {
                tracing::error!(error = %e, dir = %shared.dir.display(), "wal poisoned");
                let _ = shared.poison.set(Arc::new(e));
            }
            shared.wake(&mut scratch);
            return;
        }
        shared.wake(&mut scratch);
    }
}

/// Poisons the log if the writer thread unwinds, so no appender waits
/// forever for a thread that is gone.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.0.poison.set(Arc::new(Error::Internal(
                "wal writer thread panicked".into(),
            )));
            self.0.wake(&mut Vec::new());
        }
        // Whether the writer ends normally or not, the sync thread ends
        // with it.
        lock(&self.0.syncer.state).stop = true;
        self.0.syncer.bell.notify_one();
    }
}

/// The writer thread's state.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    bell: Receiver<()>,
    seg: ActiveSegment,
    /// Last LSN written to the OS.
    written: Lsn,
    /// Last LSN known durable: every frame written carries it.
    durable: Lsn,
    /// The active segment has writes not yet `fdatasync`ed.
    dirty: bool,
    /// Full segments not yet `fdatasync`ed (policy `Never` only).
    unsynced: Vec<PathBuf>,
    helper_tx: Option<Sender<Prealloc>>,
    spare_rx: Receiver<io::Result<Spare>>,
    helper: Option<JoinHandle<()>>,
    spare_requested: bool,
    spare_counter: u64,
    /// The sync thread (policy `Interval` only).
    syncer: Option<JoinHandle<()>>,
    /// The highest LSN whose sync was requested of the sync thread.
    requested: Lsn,
    /// Frames in the previous group.
    last_group: usize,
    wake_scratch: Vec<Thread>,
}

impl Writer {
    /// Starts the writer (and its helper) on `seg`, the freshly installed
    /// active segment; everything before `next_lsn` is durable.
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        bell: Receiver<()>,
        seg: ActiveSegment,
        next_lsn: Lsn,
    ) -> io::Result<JoinHandle<()>> {
        let (helper_tx, helper_rx) = crossbeam_channel::unbounded();
        let (spare_tx, spare_rx) = crossbeam_channel::unbounded();
        let helper = std::thread::Builder::new()
            .name("highwater-wal-helper".into())
            .spawn(move || helper_main(helper_rx, spare_tx))?;
        let syncer = match shared.config.sync_policy {
            SyncPolicy::Interval(every) => {
                let shared = Arc::clone(&shared);
                Some(
                    std::thread::Builder::new()
                        .name("highwater-wal-sync".into())
                        .spawn(move || sync_main(shared, every))?,
                )
            }
            _ => None,
        };
        let w = Writer {
            shared,
            bell,
            seg,
            written: next_lsn - 1,
            durable: next_lsn - 1,
            dirty: false,
            unsynced: Vec::new(),
            helper_tx: Some(helper_tx),
            spare_rx,
            helper: Some(helper),
            spare_requested: false,
            spare_counter: 0,
            syncer,
            requested: 0,
            last_group: 1,
            wake_scratch: Vec::new(),
        };
        std::thread::Builder::new()
            .name("highwater-wal-writer".into())
            .spawn(move || w.run())
    }

    fn run(mut self) {
        let _guard = PanicGuard(Arc::clone(&self.shared));
        loop {
            let take = self.next_group();
            if take.frames > 0 {
                self.last_group = take.frames;
                self.shared.last_group.store(take.frames, Ordering::Relaxed);
            }
            let mut blocks = take.blocks;
            if let Err(e) = self.commit(&mut blocks, take.sync_to) {
                self.poison(e);
            }
            self.shared.wake(&mut self.wake_scratch);
            self.recycle(blocks);
            if take.closed && lock(&self.shared.queue).blocks.is_empty() {
                if let Err(e) = self.close() {
                    self.poison(e);
                }
                self.shared.wake(&mut self.wake_scratch);
                break;
            }
        }
        self.shutdown_helper();
    }

    /// Waits for work and takes the next group from the queue.
    ///
    /// - Under `Always` everything queued is taken, after gathering: when
    ///   fewer frames are queued than the previous group had, the writer
    ///   waits up to [`GATHER`] for the appenders it just woke.
    /// - Under `Interval` and `Never`, full blocks are taken as they fill;
    ///   the block being filled is taken once someone waits (an `append`, a
    ///   ticket, `flush`, `sync`, `close`) or after [`FLUSH_DELAY`]. Writes
    ///   stay large while nobody waits, and nobody waits on a write that
    ///   could have been larger.
    /// - Under `Interval` the sync thread syncs; the writer never waits for
    ///   it.
    fn next_group(&mut self) -> Take {
        let policy = self.shared.config.sync_policy;
        let always = policy == SyncPolicy::Always;
        let max_batch = self.shared.config.max_batch_size;
        let mut gather_until: Option<Instant> = None;
        let mut partial_until: Option<Instant> = None;
        let mut spun = false;
        loop {
            let now = Instant::now();
            let (until, parked) = {
                let mut q = lock(&self.shared.queue);
                // After a failure nothing more is synced; the waiters were
                // woken with the error.
                let healthy = self.shared.poison.get().is_none();
                let demanded = q.closed || (healthy && q.sync_to > self.sync_asked());
                let waited_on = demanded || self.shared.waiting.load(Ordering::SeqCst) > 0;
                let take_all = match q.blocks.len() {
                    0 if demanded => true,
                    0 => false,
                    _ if always => {
                        let short = self.last_group > 1
                            && q.frames < self.last_group
                            && q.bytes < max_batch
                            && !q.closed;
                        let until = *gather_until.get_or_insert(now + GATHER);
                        !short || now >= until
                    }
                    _ if waited_on => true,
                    1 => now >= *partial_until.get_or_insert(now + FLUSH_DELAY),
                    _ => {
                        // Every block but the last is full: take those.
                        let back = q.blocks.pop_back().expect("at least two blocks");
                        let blocks = std::mem::take(&mut q.blocks);
                        q.blocks.push_back(back);
                        return self.taken(&mut q, blocks);
                    }
                };
                if take_all {
                    let blocks = std::mem::take(&mut q.blocks);
                    return self.taken(&mut q, blocks);
                }
                let until = if q.blocks.is_empty() {
                    None
                } else if always {
                    gather_until
                } else {
                    partial_until
                };
                // With nothing queued the writer wants a ring on the next
                // submission; with a block filling it will look by itself.
                q.writer_parked = q.blocks.is_empty();
                (until, q.writer_parked)
            };
            // Poll briefly before sleeping when more is likely to come soon:
            // a lone durable appender sends its next batch microseconds
            // after its acknowledgement, and a stream of buffered appends
            // keeps coming. Catching them here saves the futex wake-up the
            // appender would otherwise pay. Not when many durable appenders
            // are about to wake: on a small machine they need the CPU.
            if parked && !spun && (!always || self.last_group == 1) {
                spun = true;
                let spin_until = now + SPIN;
                let mut rung = false;
                while Instant::now() < spin_until {
                    if self.bell.try_recv().is_ok() {
                        rung = true;
                        break;
                    }
                    std::hint::spin_loop();
                }
                if rung {
                    continue;
                }
            }
            // The sender lives in `Shared`, which this thread holds, so the
            // doorbell never disconnects.
            match until {
                None => {
                    let _ = self.bell.recv();
                }
                Some(t) => {
                    let _ = self.bell.recv_deadline(t);
                }
            }
        }
    }

    /// Accounts for blocks taken from the queue.
    fn taken(&self, q: &mut Queue, blocks: VecDeque<Block>) -> Take {
        let bytes: usize = blocks.iter().map(|b| b.buf.len()).sum();
        let frames: usize = blocks.iter().map(|b| b.frames).sum();
        q.bytes -= bytes;
        q.frames -= frames;
        q.writer_parked = false;
        if q.space_waiters > 0 {
            self.shared.space.notify_all();
        }
        Take {
            blocks,
            frames,
            sync_to: q.sync_to,
            closed: q.closed,
        }
    }

    /// Marks the log failed: an `fsync` error cannot be retried (the kernel
    /// may already have dropped the dirty pages it failed to write), so the
    /// log refuses every later write.
    fn poison(&mut self, e: Error) {
        if self.shared.poison.get().is_none() {
            tracing::error!(error = %e, dir = %self.shared.dir.display(), "wal poisoned");
            let _ = self.shared.poison.set(Arc::new(e));
        }
    }

    /// Writes the taken blocks and syncs as the policy (or a pending sync
    /// request) asks.
    fn commit(&mut self, blocks: &mut VecDeque<Block>, sync_to: Lsn) -> Result<()> {
        if self.shared.poison.get().is_some() {
            // Nothing is written after a failure; the appenders of these
            // blocks are woken with the poison error.
            return Ok(());
        }
        if !blocks.is_empty() {
            self.write_blocks(blocks)?;
        }
        match self.shared.config.sync_policy {
            SyncPolicy::Always => self.sync_all()?,
            SyncPolicy::Interval(_) => {
                // Everything up to `sync_to` is written by now; the sync
                // thread makes it durable and wakes the waiters.
                if sync_to > self.requested {
                    self.requested = sync_to;
                    self.shared.request_sync(sync_to);
                }
            }
            SyncPolicy::Never if sync_to > self.durable => self.sync_all()?,
            SyncPolicy::Never => {}
        }
        Ok(())
    }

    /// The LSN up to which a requested sync has been done (or, under
    /// `Interval`, handed to the sync thread).
    fn sync_asked(&self) -> Lsn {
        match self.shared.config.sync_policy {
            SyncPolicy::Interval(_) => self.requested,
            _ => self.durable,
        }
    }

    fn interval(&self) -> bool {
        matches!(self.shared.config.sync_policy, SyncPolicy::Interval(_))
    }

    /// Writes frames into the active segment, rotating when the next frame
    /// would push it past `segment_size`.
    ///
    /// Every frame gets the durable LSN as of the start of the group —
    /// recovery's evidence that everything up to it had been synced before
    /// this frame was written — and its header checksum. (A rotation inside
    /// the group syncs the part before it, but the frames after it still
    /// claim only the older value: a claim may lag, it must never lead.)
    fn write_blocks(&mut self, blocks: &mut VecDeque<Block>) -> Result<()> {
        let limit = self.shared.config.segment_size;
        // Under `Interval` the sync thread advances it; read once, so every
        // frame of the group claims the same, already published value.
        let synced = self.shared.durable_lsn.load(Ordering::Acquire);
        // Pass 1: patch headers, check LSN order, and cut the group into
        // runs that each go to one segment.
        let mut runs: Vec<Run> = Vec::new();
        let mut seg_len = self.seg.len;
        let mut seg_frames = self.seg.frames;
        let mut written = self.written;
        for (b, block) in blocks.iter_mut().enumerate() {
            let block = &mut block.buf;
            let mut pos = 0;
            let mut run = Run {
                block: b,
                from: 0,
                to: 0,
                frames: 0,
                rotate_first: false,
                last_lsn: written,
            };
            while pos < block.len() {
                let h = &mut block[pos..pos + FRAME_HEADER_LEN];
                let count = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
                let body_len = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
                let mut first = [0u8; 8];
                first.copy_from_slice(&h[24..32]);
                let first = u64::from_le_bytes(first);
                if first != written + 1 {
                    return Err(Error::Internal(format!(
                        "wal frame out of lsn order: expected={} got={first}",
                        written + 1
                    )));
                }
                patch_synced_lsn(h, synced);
                let len = (FRAME_HEADER_LEN + body_len) as u64;
                if seg_len + len > limit && seg_frames > 0 {
                    if run.to > run.from {
                        runs.push(run);
                    }
                    run = Run {
                        block: b,
                        from: pos,
                        to: pos,
                        frames: 0,
                        rotate_first: true,
                        last_lsn: written,
                    };
                    seg_len = crate::format::SEGMENT_HEADER_LEN as u64;
                    seg_frames = 0;
                }
                written = first + u64::from(count) - 1;
                seg_len += len;
                seg_frames += 1;
                pos += len as usize;
                run.to = pos;
                run.frames += 1;
                run.last_lsn = written;
            }
            if run.to > run.from || run.rotate_first {
                runs.push(run);
            }
        }
        // Pass 2: write run by run, rotating where pass 1 cut.
        let mut ios: Vec<IoSlice<'_>> = Vec::with_capacity(runs.len().min(MAX_IOV));
        let mut pending = (0u64, 0u64, self.written); // bytes, frames, last lsn
        for run in &runs {
            if run.rotate_first {
                self.write_ios(&mut ios)?;
                self.account(pending);
                pending = (0, 0, self.written);
                self.rotate()?;
            }
            if ios.len() == MAX_IOV {
                self.write_ios(&mut ios)?;
            }
            ios.push(IoSlice::new(&blocks[run.block].buf[run.from..run.to]));
            pending.0 += (run.to - run.from) as u64;
            pending.1 += run.frames;
            pending.2 = run.last_lsn;
        }
        self.write_ios(&mut ios)?;
        self.account(pending);
        self.shared
            .written_lsn
            .store(self.written, Ordering::Release);
        self.maybe_request_spare();
        Ok(())
    }

    /// Records that `bytes` and `frames` up to `last_lsn` are written.
    fn account(&mut self, (bytes, frames, last_lsn): (u64, u64, Lsn)) {
        if frames > 0 {
            crate::metrics::group_written(frames, bytes);
            let stats = &self.shared.stats;
            stats.writes.fetch_add(1, Ordering::Relaxed);
            stats.frames.fetch_add(frames, Ordering::Relaxed);
            stats.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.seg.len += bytes;
            self.seg.frames += frames;
            self.written = last_lsn;
            self.dirty = true;
            if self.interval() {
                self.shared
                    .note_written(&self.seg.file, &self.seg.path, last_lsn);
            }
        }
    }

    /// Writes all of `ios` (one `writev`, more if the kernel writes less).
    fn write_ios(&mut self, ios: &mut Vec<IoSlice<'_>>) -> Result<()> {
        let mut bufs = &mut ios[..];
        while !bufs.is_empty() {
            match (&*self.seg.file).write_vectored(bufs) {
                Ok(0) => {
                    return Err(Error::io(
                        format!("write wal segment {}", self.seg.path.display()),
                        io::Error::from(io::ErrorKind::WriteZero),
                    ));
                }
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("write wal segment {}", self.seg.path.display()),
                        e,
                    ));
                }
            }
        }
        ios.clear();
        Ok(())
    }

    /// Makes every written record durable: `fdatasync`s full segments not
    /// yet synced (policy `Never`), then the active one.
    fn sync_all(&mut self) -> Result<()> {
        if self.interval() {
            // Only at close, once the sync thread has stopped (and safe
            // beside it anyway: syncs are serialised).
            self.shared.sync_noted()?;
            self.dirty = false;
            self.durable = self.shared.durable_lsn.load(Ordering::Acquire);
            return Ok(());
        }
        for path in std::mem::take(&mut self.unsynced) {
            // A segment deleted by truncation since needs no sync.
            match File::open(&path) {
                Ok(f) => f.sync_data(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
            .map_err(|e| Error::io(format!("fdatasync wal segment {}", path.display()), e))?;
        }
        if self.dirty {
            let t = Instant::now();
            self.seg.file.sync_data().map_err(|e| {
                Error::io(
                    format!("fdatasync wal segment {}", self.seg.path.display()),
                    e,
                )
            })?;
            let ns = t.elapsed().as_nanos() as u64;
            crate::metrics::fsynced(ns);
            self.shared.last_sync_ns.store(ns, Ordering::Relaxed);
            self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
            self.shared.stats.sync_ns.fetch_add(ns, Ordering::Relaxed);
            self.dirty = false;
        }
        if self.durable != self.written {
            self.durable = self.written;
            self.shared
                .durable_lsn
                .store(self.durable, Ordering::Release);
        }
        Ok(())
    }

    /// Closes the active segment and starts the next one.
    ///
    /// Under `Always` the full segment is `fdatasync`ed first, so a durable
    /// LSN never runs ahead of a segment that is not; under `Never` it is
    /// remembered and synced by the next [`Self::sync_all`], before
    /// anything is claimed durable; under `Interval` it is handed to the
    /// sync thread, whose next sync covers it before the new segment.
    fn rotate(&mut self) -> Result<()> {
        let next_first = self.written + 1;
        match self.shared.config.sync_policy {
            SyncPolicy::Never => {
                if self.dirty {
                    self.unsynced.push(self.seg.path.clone());
                    self.dirty = false;
                }
            }
            SyncPolicy::Interval(_) => {
                self.shared.note_rotated();
                self.dirty = false;
            }
            SyncPolicy::Always => self.sync_all()?,
        }
        let spare = if self.shared.config.preallocates() {
            self.take_spare()
        } else {
            None
        };
        let seg = install_segment(&self.shared.dir, next_first, spare).map_err(|e| {
            Error::io(
                format!(
                    "create wal segment for lsn {next_first} in {}",
                    self.shared.dir.display()
                ),
                e,
            )
        })?;
        tracing::debug!(segment = %seg.path.display(), "wal segment started");
        self.shared
            .stats
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.segments).push(SegmentInfo {
            first_lsn: next_first,
            path: seg.path.clone(),
        });
        self.seg = seg;
        Ok(())
    }

    /// Asks the helper for the next spare once the active segment is half
    /// full: early enough for the zero-fill to finish before it is needed,
    /// late enough that the fill does not compete with the first appends
    /// after opening or rotating.
    fn maybe_request_spare(&mut self) {
        if self.spare_requested
            || !self.shared.config.preallocates()
            || self.seg.len < self.shared.config.segment_size / 2
        {
            return;
        }
        self.spare_counter += 1;
        let path = self.shared.dir.join(format!(
            "spare-{:06}{}",
            self.spare_counter,
            crate::format::TEMP_SUFFIX
        ));
        let size = self.shared.config.segment_size;
        if let Some(tx) = &self.helper_tx
            && tx.send(Prealloc { path, size }).is_ok()
        {
            self.spare_requested = true;
        }
    }

    /// The preallocated spare, waiting for it if it is still being written.
    /// A failed preallocation is not fatal: the segment is then created
    /// empty and grows as it is written.
    fn take_spare(&mut self) -> Option<Spare> {
        if !self.spare_requested {
            return None;
        }
        self.spare_requested = false;
        match self.spare_rx.recv() {
            Ok(Ok(spare)) => Some(spare),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "wal segment preallocation failed; using a growing segment");
                None
            }
            Err(_) => None,
        }
    }

    /// Returns emptied blocks to the free list.
    fn recycle(&mut self, blocks: VecDeque<Block>) {
        let cap = self.shared.config.max_batch_size;
        let mut q = lock(&self.shared.queue);
        for mut b in blocks {
            if q.free.len() >= FREE_BLOCKS {
                break;
            }
            if b.buf.capacity() <= cap {
                b.buf.clear();
                b.frames = 0;
                q.free.push(b);
            }
        }
    }

    /// Makes everything durable and writes the close marker: an empty frame
    /// whose durable LSN covers the whole log, so that recovery can tell a
    /// damaged record anywhere before it from a torn tail.
    fn close(&mut self) -> Result<()> {
        if self.shared.poison.get().is_some() {
            return Ok(());
        }
        self.stop_syncer();
        if self.shared.poison.get().is_some() {
            // The sync thread's last fdatasync failed: no marker and no
            // DURABLE claim for a log whose data may not be on disk.
            return Ok(());
        }
        self.sync_all()?;
        let mut marker = [0u8; FRAME_HEADER_LEN];
        FrameHeader {
            flags: 0,
            count: 0,
            body_len: 0,
            raw_len: 0,
            first_lsn: self.written + 1,
            synced_lsn: self.durable,
            body_checksum: xxh3_64(&[]),
            key_id: 0,
        }
        .encode_into(&mut marker);
        (&*self.seg.file)
            .write_all(&marker)
            .and_then(|()| self.seg.file.sync_data())
            .map_err(|e| {
                Error::io(
                    format!("write close marker to {}", self.seg.path.display()),
                    e,
                )
            })?;
        // The marker is evidence only while its segment exists: record the
        // durable LSN beside the segments too, so that deleting or cutting
        // the last segment is found as damage when the log is reopened.
        let dir = &self.shared.dir;
        write_durable(dir, self.durable)
            .and_then(|()| crate::segment::fsync_dir(dir))
            .map_err(|e| Error::io(format!("record the durable lsn in {}", dir.display()), e))
    }

    /// Stops the sync thread and waits for it (a sync it started finishes
    /// first).
    fn stop_syncer(&mut self) {
        lock(&self.shared.syncer.state).stop = true;
        self.shared.syncer.bell.notify_one();
        if let Some(h) = self.syncer.take()
            && h.join().is_err()
        {
            tracing::error!("wal sync thread panicked");
        }
    }

    /// Stops the helper (and the sync thread) and removes an unused spare.
    fn shutdown_helper(&mut self) {
        self.stop_syncer();
        self.helper_tx = None;
        if self.spare_requested
            && let Ok(Ok(spare)) = self.spare_rx.recv()
        {
            drop(spare.file);
            let _ = std::fs::remove_file(&spare.path);
        }
        if let Some(h) = self.helper.take() {
            let _ = h.join();
        }
    }
}

/// A stretch of one block that goes to one segment.
#[derive(Debug)]
struct Run {
    block: usize,
    from: usize,
    to: usize,
    frames: u64,
    /// Rotate to a new segment before writing this run.
    rotate_first: bool,
    /// LSN of the last record in the run.
    last_lsn: Lsn,
}
