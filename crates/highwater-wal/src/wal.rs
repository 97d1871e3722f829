//! [`Wal`], the handle applications use: open (with recovery), append,
//! flush and sync, replay, truncate, close.

use std::cell::RefCell;
use std::fs::{File, OpenOptions, TryLockError};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use highwater_core::{Error, Result};
use xxhash_rust::xxh3::xxh3_64;

use crate::Lsn;
use crate::config::{SyncPolicy, WalConfig};
use crate::format::{
    FLAG_SEALED, FLAG_ZSTD, FRAME_HEADER_LEN, FrameHeader, LOCK_FILE, TEMP_SUFFIX,
};
use crate::record::{WalBatch, WalRecord};
use crate::recovery::{RecoveryReport, recover};
use crate::replay::Replay;
use crate::segment::{SegmentInfo, fsync_dir, install_segment, make_spare, write_durable};
use crate::writer::{Block, Queue, Shared, Writer, lock};
use highwater_core::crypto::BODY_OVERHEAD;

/// A segmented write-ahead log open for appending.
///
/// `Wal` is `Send + Sync`: share it (for example in an `Arc`) between the
/// threads that append; their appends are committed together. See the
/// [crate documentation](crate) for the format and the guarantees.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Holds an exclusive lock on the directory's lock file while open.
    dir_lock: Mutex<Option<File>>,
    /// The highest LSN passed to [`Wal::truncate_before`]; also serialises
    /// truncations.
    released_before: Mutex<Lsn>,
}

/// A submitted batch: its LSNs are assigned; [`wait`](AppendTicket::wait)
/// blocks until it is acknowledged under the log's [`SyncPolicy`].
///
/// Dropping a ticket does not cancel the append; the batch is still
/// written (fire and forget, for example under `SyncPolicy::Never`).
/// Holding a ticket costs nothing: nothing is allocated per append.
#[derive(Debug)]
#[must_use = "dropping a ticket does not wait for the append; call wait() to learn whether it succeeded"]
pub struct AppendTicket {
    lsns: Range<Lsn>,
    shared: Arc<Shared>,
}

impl AppendTicket {
    /// The LSNs of the batch's records.
    pub fn lsns(&self) -> Range<Lsn> {
        self.lsns.clone()
    }

    fn durable(&self) -> bool {
        self.shared.config.sync_policy == SyncPolicy::Always
    }

    /// True once the batch is acknowledged.
    pub fn is_done(&self) -> bool {
        let mark = if self.durable() {
            self.shared.durable_lsn.load(Ordering::Acquire)
        } else {
            self.shared.written_lsn.load(Ordering::Acquire)
        };
        self.lsns.is_empty() || mark >= self.lsns.end - 1
    }

    /// Blocks until the batch is acknowledged — durable under
    /// [`SyncPolicy::Always`], written to the operating system otherwise —
    /// and returns its LSNs.
    pub fn wait(self) -> Result<Range<Lsn>> {
        if !self.lsns.is_empty() {
            self.shared.wait(self.lsns.end - 1, self.durable())?;
        }
        Ok(self.lsns)
    }
}

/// Counters of a [`Wal`] since it was opened ([`Wal::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalStats {
    /// `write` calls (one per group, more when a group spans a rotation or
    /// more than 1,024 buffers).
    pub writes: u64,
    /// Frames (batches) written.
    pub frames: u64,
    /// Bytes written, headers included.
    pub bytes: u64,
    /// `fdatasync` calls on the active segment.
    pub syncs: u64,
    /// Time spent in those calls.
    pub sync_time: std::time::Duration,
    /// Segments started by rotation.
    pub segments_created: u64,
}

thread_local! {
    /// One zstd context and output buffer per appending thread, so batches
    /// compress in the threads that submit them, in parallel.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>, Vec<u8>)>> =
        const { RefCell::new(None) };

    /// A batch reused by [`Wal::append`], so single appends allocate nothing.
    static SCRATCH: RefCell<WalBatch> = RefCell::new(WalBatch::new());
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`, recovering it after a
    /// crash, and starts its writer.
    ///
    /// Recovery reads every segment, cuts a torn tail (reported in the
    /// returned [`RecoveryReport`]) and fails with
    /// [`Error::Corrupt`] naming the segment file and byte offset when
    /// records that had been made durable are damaged or missing. It then
    /// starts a new segment; existing segments are never appended to again.
    ///
    /// A directory can be open in only one `Wal` at a time (across
    /// processes): a second open fails with [`Error::AlreadyExists`].
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<(Wal, RecoveryReport)> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("create wal directory {}", dir.display()), e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent)
                    .map_err(|e| Error::io(format!("fsync directory {}", parent.display()), e))?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("open {}", lock_path.display()), e))?;
        lock_dir(&lock_file, &lock_path, &dir)?;

        let recovered = recover(&dir)?;
        let next_lsn = recovered.next_lsn;
        if next_lsn > 1 {
            // Recovery synced every record it kept: record that, so that a
            // segment lost later (deleted, cut short) is found as missing
            // rather than taken for a torn tail. The segment installed next
            // fsyncs the directory, which makes the rename durable.
            write_durable(&dir, next_lsn - 1).map_err(|e| {
                Error::io(format!("record the durable lsn in {}", dir.display()), e)
            })?;
        }
        let spare = if config.preallocates() {
            let path = dir.join(format!("spare-open{TEMP_SUFFIX}"));
            Some(make_spare(&path, config.segment_size).map_err(|e| {
                let _ = std::fs::remove_file(&path);
                Error::io(format!("preallocate wal segment {}", path.display()), e)
            })?)
        } else {
            None
        };
        let seg = install_segment(&dir, next_lsn, spare).map_err(|e| {
            Error::io(
                format!("create wal segment for lsn {next_lsn} in {}", dir.display()),
                e,
            )
        })?;
        let mut segments = recovered.segments;
        if recovered.replace_last {
            segments.pop();
        }
        segments.push(SegmentInfo {
            first_lsn: next_lsn,
            path: seg.path.clone(),
        });
        tracing::debug!(dir = %dir.display(), next_lsn, report = ?recovered.report, "wal opened");

        let (bell_tx, bell_rx) = crossbeam_channel::bounded(1);
        let shared = Arc::new(Shared::new(dir, config, next_lsn, segments, bell_tx));
        let writer = Writer::spawn(Arc::clone(&shared), bell_rx, seg, next_lsn)
            .map_err(|e| Error::io("start wal writer thread", e))?;
        let wal = Wal {
            shared,
            writer: Mutex::new(Some(writer)),
            dir_lock: Mutex::new(Some(lock_file)),
            released_before: Mutex::new(0),
        };
        Ok((wal, recovered.report))
    }

    /// Appends one record and waits for it to be acknowledged under the
    /// sync policy; returns its LSN.
    pub fn append(&self, record: &WalRecord) -> Result<Lsn> {
        let ticket = SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut batch) => {
                batch.clear();
                batch.push(record);
                self.submit(&batch)
            }
            // Re-entered from a drop handler of this thread's own append:
            // use a fresh batch.
            Err(_) => self.submit(WalBatch::new().push(record)),
        })?;
        Ok(ticket.wait()?.start)
    }

    /// Appends a batch atomically — after a crash either all of its records
    /// are in the log or none is — and waits for it to be acknowledged
    /// under the sync policy; returns its LSNs (empty for an empty batch).
    /// The batch is copied; clear and reuse it.
    pub fn append_batch(&self, batch: &WalBatch) -> Result<Range<Lsn>> {
        self.submit(batch)?.wait()
    }

    /// Submits a batch without waiting: its LSNs are assigned at once and
    /// the returned ticket waits for the acknowledgement. Blocks only while
    /// more than `buffer_size` bytes wait for the writer.
    pub fn submit(&self, batch: &WalBatch) -> Result<AppendTicket> {
        batch.check_size()?;
        let count = batch.len() as u32;
        let shared = &*self.shared;
        if count == 0 {
            let next = lock(&shared.queue).next_lsn;
            return Ok(AppendTicket {
                lsns: next..next,
                shared: Arc::clone(&self.shared),
            });
        }
        let config = &shared.config;
        let always = config.sync_policy == SyncPolicy::Always;
        let raw = batch.body();
        let compress = config.enable_compression && raw.len() >= config.compression_threshold;
        // With encryption the key and nonce are drawn here; the body is
        // sealed under the queue lock, once its first LSN (which the
        // sealing binds) is known.
        let mut sealer = match &config.encryption {
            Some(cipher) => Some(cipher.sealer()?),
            None => None,
        };
        let mut go = |stored: &[u8], flags: u8| -> Result<AppendTicket> {
            // Everything but the first LSN is known before taking the lock;
            // the durable LSN and the header checksum are the writer's.
            let (flags, body_len, key_id) = match &sealer {
                Some(s) => (
                    flags | FLAG_SEALED,
                    stored.len() + BODY_OVERHEAD,
                    s.key_id(),
                ),
                None => (flags, stored.len(), 0),
            };
            let mut header = FrameHeader {
                flags,
                count,
                body_len: body_len as u32,
                raw_len: raw.len() as u32,
                first_lsn: 1,
                synced_lsn: 0,
                body_checksum: if sealer.is_some() { 0 } else { xxh3_64(stored) },
                key_id,
            };
            let frame_len = FRAME_HEADER_LEN + body_len;
            let mut q = lock(&shared.queue);
            loop {
                if let Some(e) = shared.poisoned_error() {
                    return Err(e);
                }
                if q.closed {
                    return Err(Error::Closed(format!(
                        "wal is closed: dir={}",
                        shared.dir.display()
                    )));
                }
                if q.bytes == 0 || q.bytes + frame_len <= config.buffer_size {
                    break;
                }
                q.space_waiters += 1;
                q = shared.space.wait(q).unwrap_or_else(PoisonError::into_inner);
                q.space_waiters -= 1;
            }
            let first = q.next_lsn;
            let end = first
                .checked_add(u64::from(count))
                .ok_or_else(|| Error::InvalidArgument("wal lsn space exhausted".into()))?;
            header.first_lsn = first;
            let fits = q
                .blocks
                .back()
                .is_some_and(|b| b.buf.len() + frame_len <= config.max_batch_size);
            // Ring when the writer asked for it (it found nothing to do),
            // when a block fills up (the writer takes full blocks), and
            // always under `Always`, where the writer gathers frames.
            let mut ring = q.writer_parked || always;
            if !fits {
                ring |= !q.blocks.is_empty();
                let block = match q.free.pop() {
                    Some(b) if b.buf.capacity() >= frame_len => b,
                    _ => Block {
                        buf: Vec::with_capacity(config.max_batch_size.max(frame_len)),
                        frames: 0,
                    },
                };
                q.blocks.push_back(block);
            }
            let block = q.blocks.back_mut().expect("a block was just ensured");
            let at = block.buf.len();
            block.buf.resize(at + FRAME_HEADER_LEN, 0);
            match sealer.take() {
                Some(s) => {
                    s.seal_into(&header.sealing_aad(), stored, &mut block.buf);
                    header.body_checksum = xxh3_64(&block.buf[at + FRAME_HEADER_LEN..]);
                }
                None => block.buf.extend_from_slice(stored),
            }
            header.encode_into(&mut block.buf[at..]);
            block.frames += 1;
            q.bytes += frame_len;
            q.frames += 1;
            q.next_lsn = end;
            if ring {
                q.writer_parked = false;
            }
            drop(q);
            if ring {
                shared.ring();
            }
            Ok(AppendTicket {
                lsns: first..end,
                shared: Arc::clone(&self.shared),
            })
        };
        if !compress {
            return go(raw, 0);
        }
        COMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let (_, comp, out) = match cell.as_mut() {
                Some(c) if c.0 == config.compression_level => c,
                _ => {
                    let comp = zstd::bulk::Compressor::new(config.compression_level)
                        .map_err(|e| Error::io("create zstd compressor", e))?;
                    cell.insert((config.compression_level, comp, Vec::new()))
                }
            };
            out.clear();
            out.reserve(zstd::zstd_safe::compress_bound(raw.len()));
            comp.compress_to_buffer(raw, out)
                .map_err(|e| Error::io("zstd-compress wal batch", e))?;
            if out.len() < raw.len() {
                go(out, FLAG_ZSTD)
            } else {
                go(raw, 0)
            }
        })
    }

    /// Waits until every batch submitted before the call is written to the
    /// operating system (it survives a crash of this process).
    pub fn flush(&self) -> Result<()> {
        let target = {
            let q = lock(&self.shared.queue);
            self.check_open(&q)?;
            q.next_lsn - 1
        };
        self.shared.ring();
        self.shared.wait(target, false)
    }

    /// Waits until every batch submitted before the call is durable,
    /// whatever the sync policy. Call it before recording an LSN anywhere
    /// else (for example in a checkpoint manifest) under a policy other than
    /// `Always`.
    pub fn sync(&self) -> Result<()> {
        let target = {
            let mut q = lock(&self.shared.queue);
            self.check_open(&q)?;
            let target = q.next_lsn - 1;
            q.sync_to = q.sync_to.max(target);
            target
        };
        self.shared.ring();
        self.shared.wait(target, true)
    }

    fn check_open(&self, q: &Queue) -> Result<()> {
        if let Some(e) = self.shared.poisoned_error() {
            return Err(e);
        }
        if q.closed {
            return Err(Error::Closed(format!(
                "wal is closed: dir={}",
                self.shared.dir.display()
            )));
        }
        Ok(())
    }

    /// The highest LSN assigned so far (0 if none ever was).
    pub fn last_lsn(&self) -> Lsn {
        lock(&self.shared.queue).next_lsn - 1
    }

    /// Every record up to this LSN has been written to the operating system.
    pub fn written_lsn(&self) -> Lsn {
        self.shared.written_lsn.load(Ordering::Acquire)
    }

    /// Every record up to this LSN is durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durable_lsn.load(Ordering::Acquire)
    }

    /// The oldest LSN still in the log (the next LSN when it holds no
    /// record).
    pub fn first_lsn(&self) -> Lsn {
        lock(&self.shared.segments)
            .first()
            .map_or(1, |s| s.first_lsn)
    }

    /// Counters since the log was opened: how well group commit groups.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        WalStats {
            writes: get(&c.writes),
            frames: get(&c.frames),
            bytes: get(&c.bytes),
            syncs: get(&c.syncs),
            sync_time: std::time::Duration::from_nanos(get(&c.sync_ns)),
            segments_created: get(&c.segments_created),
        }
    }

    /// The segment files, oldest first; the last is being appended to.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        lock(&self.shared.segments).clone()
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Reads the log from LSN `from` up to the last record written when
    /// this is called. `from` may be one past the last record (nothing to
    /// replay); an LSN already removed by [`Wal::truncate_before`] is
    /// [`Error::NotFound`].
    pub fn replay(&self, from: Lsn) -> Result<Replay> {
        // Read the bound before the segment list: a segment holding a
        // written record is listed before that record is written.
        let bound = self.written_lsn();
        let segments = self.segments();
        let first = segments.first().map_or(bound + 1, |s| s.first_lsn);
        if from < first {
            return Err(Error::NotFound(format!(
                "wal records before lsn={first} were truncated: from={from} dir={}",
                self.shared.dir.display()
            )));
        }
        if from > bound + 1 {
            return Err(Error::InvalidArgument(format!(
                "wal replay from an lsn past the end of the log: from={from} last_written={bound}"
            )));
        }
        let idx = segments
            .partition_point(|s| s.first_lsn <= from)
            .saturating_sub(1);
        Ok(Replay::new(
            segments[idx..].to_vec(),
            from,
            bound,
            self.shared.config.encryption.clone(),
        ))
    }

    /// Releases the records before `lsn` (typically the first LSN a
    /// checkpoint does not cover) and deletes every segment whose records
    /// are all released, except that the newest `retention_segments`
    /// segments are kept. The active segment is never deleted. Deletes
    /// oldest first and `fsync`s the directory; returns the number of
    /// segments deleted.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        let mut released = lock(&self.released_before);
        *released = (*released).max(lsn);
        let victims: Vec<SegmentInfo> = {
            let mut segs = lock(&self.shared.segments);
            let releasable = (0..segs.len().saturating_sub(1))
                .take_while(|&i| segs[i + 1].first_lsn <= *released)
                .count();
            let keepable = segs
                .len()
                .saturating_sub(self.shared.config.retention_segments);
            let n = releasable.min(keepable);
            segs.drain(..n).collect()
        };
        for v in &victims {
            std::fs::remove_file(&v.path)
                .map_err(|e| Error::io(format!("remove wal segment {}", v.path.display()), e))?;
        }
        if !victims.is_empty() {
            fsync_dir(&self.shared.dir).map_err(|e| {
                Error::io(
                    format!("fsync wal directory {}", self.shared.dir.display()),
                    e,
                )
            })?;
            tracing::debug!(
                deleted = victims.len(),
                before = lsn,
                "wal segments truncated"
            );
        }
        Ok(victims.len())
    }

    /// Makes everything durable, writes the close marker and stops the
    /// writer. Later appends fail with [`Error::Closed`]. Closing twice is a
    /// no-op. Dropping a `Wal` closes it too, but cannot report errors.
    pub fn close(&self) -> Result<()> {
        let first_close = {
            let mut q = lock(&self.shared.queue);
            let first = !q.closed;
            q.closed = true;
            q.sync_to = q.next_lsn - 1;
            first
        };
        self.shared.ring();
        if let Some(h) = lock(&self.writer).take()
            && h.join().is_err()
        {
            tracing::error!("wal writer thread panicked");
        }
        drop(lock(&self.dir_lock).take());
        match self.shared.poisoned_error() {
            Some(e) if first_close => Err(e),
            _ => Ok(()),
        }
    }
}

/// Takes the directory's exclusive lock.
///
/// A lock that is busy is retried for a short while before giving up: a
/// process that forks (to spawn a child) while a `Wal` is open briefly holds
/// a copy of the lock file's descriptor until the child calls `exec`, and a
/// `Wal` reopened in that window would otherwise see its own, already
/// released, lock as taken.
fn lock_dir(file: &File, path: &Path, dir: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    let mut pause = std::time::Duration::from_micros(200);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(Error::AlreadyExists(format!(
                    "wal directory is open in another Wal: dir={}",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("lock {}", path.display()), e));
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %e, dir = %self.shared.dir.display(), "closing the wal on drop failed");
        }
    }
}
