//! # highwater-wal
//!
//! A segmented write-ahead log of state changes. Between checkpoints every
//! state change is appended here, so that recovery is the newest valid
//! checkpoint plus a replay of the log after the LSN it covers — and so that
//! state can be rebuilt as of any logged moment.
//!
//! ```no_run
//! use highwater_wal::{Wal, WalBatch, WalConfig, WalRecord};
//!
//! # fn main() -> highwater_core::Result<()> {
//! let (wal, report) = Wal::open("/var/lib/app/wal", WalConfig::default())?;
//! // One event's changes, atomically: all of them survive a crash or none.
//! let mut batch = WalBatch::new();
//! batch.put(b"encoded state key", b"value", Some(1_700_000_000_000));
//! batch.delete(b"another key", Some(1_700_000_000_000));
//! let lsns = wal.append_batch(&batch)?; // durable when this returns
//! // After a restore from a checkpoint covering LSN `c`:
//! let c = lsns.start - 1;
//! for entry in wal.replay(c + 1)? {
//!     let entry = entry?;
//!     let _ = (entry.lsn, entry.record);
//! }
//! wal.truncate_before(lsns.end)?; // once a checkpoint covers the batch
//! wal.close()?;
//! # let _ = report; Ok(()) }
//! ```
//!
//! ## Model
//!
//! - A **record** ([`WalRecord`]) is one backend-level mutation: an encoded
//!   state key, an operation (put, delete, merge) and an optional event
//!   time. Every record gets a log sequence number (**LSN**); LSNs start at
//!   1 and are contiguous over the whole life of the log.
//! - A **batch** ([`WalBatch`]) is the unit of atomicity: it is stored as
//!   one checksummed **frame**, and recovery keeps a frame whole or drops it
//!   whole. Log one event's changes as one batch, and a replay never applies
//!   half an event.
//! - **Group commit.** Any number of threads append concurrently. Each
//!   encodes (and, if enabled, compresses and checksums) its own frame, then
//!   takes its LSNs and copies the frame into a shared log buffer under one
//!   short lock, and rings the writer's doorbell (a crossbeam channel). A
//!   single writer thread takes whatever is queued, writes it with one
//!   vectored `write`, calls `fdatasync` once (under `Always`), and then
//!   wakes exactly the appenders that group made durable. Buffers are
//!   recycled: in steady state appending allocates nothing.
//! - **Sync policies** ([`SyncPolicy`]): `Always` acknowledges after the
//!   group's `fdatasync`; `Interval(d)` acknowledges after the write and a
//!   separate sync thread `fdatasync`s at least every `d` (the writer never
//!   waits for it); `Never` acknowledges after the write and syncs only on
//!   [`Wal::sync`] and [`Wal::close`]. [`Wal::submit`] returns a ticket at
//!   once, for callers that pipeline; under `Interval` and `Never` such
//!   batches reach the operating system when a buffer block
//!   (`max_batch_size`) fills, when anyone waits, or within a millisecond
//!   ([`LoggedBackend::commit`] waits for the write under `Interval`, not
//!   under `Never`).
//! - **Segments.** The log is a directory of segment files. The writer
//!   starts a new segment when the next group would make the current one
//!   larger than `segment_size`; a frame never spans segments. Under
//!   `Always` and `Interval` a background thread writes each next segment
//!   full of zeros ahead of use, so appends overwrite allocated blocks and
//!   `fdatasync` has no size or extent metadata to commit.
//! - **Truncation.** [`Wal::truncate_before`] deletes whole segments whose
//!   records are all below an LSN (keeping the newest `retention_segments`),
//!   oldest first.
//!
//! ## On-disk format (version 1)
//!
//! All integers little-endian; checksums are xxh3-64 with seed 0.
//!
//! ```text
//! <dir>/
//!   00000000000000000001.wal   segments, named by the LSN of their first record
//!   00000000000000001543.wal   as 20 zero-padded decimal digits (names sort like LSNs)
//!   LOCK                       exclusively locked (flock) while a Wal has the directory open
//!   DURABLE                    an LSN the log was durable up to, when last opened or closed
//!   *.tmp                      preallocated spares, segments being created; deleted on open
//!
//! segment file
//!   offset len  field
//!        0   8  magic "HWWALSEG"
//!        8   2  format version = 1
//!       10   6  reserved, zero
//!       16   8  first LSN of the segment (equals the file name)
//!       24   8  xxh3-64 of bytes 0..24
//!       32   …  frames, back to back
//!            …  zeros up to the preallocated size (the segment being written;
//!               full segments keep the unused rest of their preallocation)
//!
//! frame: one batch (or a marker)
//!   offset len  field
//!        0   4  magic "HWFR"
//!        4   1  flags: bit 0 = body is one zstd frame; bit 1 = body is sealed
//!                 (at-rest encryption); other bits zero
//!        5   3  reserved, zero
//!        8   4  count: records in the body; 0 marks a marker frame, whose body is empty
//!       12   4  body_len: bytes of stored body following the header
//!       16   4  raw_len: body bytes after decompression (= body_len when neither
//!                 compressed nor sealed)
//!       20   4  key id of a sealed body; zero otherwise
//!       24   8  first LSN: record i of the body has LSN first + i
//!                 (marker: the next LSN to be assigned)
//!       32   8  synced LSN: every record with LSN <= this was durable before this
//!                 frame was written (always < first LSN)
//!       40   8  xxh3-64 of the stored body
//!       48   8  xxh3-64 of header bytes 0..48
//!       56   …  body (body_len bytes); sealed: a 24-byte nonce, the
//!                 XChaCha20-Poly1305 ciphertext of the (compressed) body, its
//!                 16-byte tag, with the flags, count, raw_len, key id and first
//!                 LSN as associated data (`highwater_core::crypto`)
//!
//! raw body: count records, each
//!        0   4  payload length n
//!        4   n  payload: postcard encoding of WalRecord
//!                 key        varint length + bytes   (normally an encoded highwater StateKey)
//!                 op         varint tag: 0 Put(varint length + value bytes),
//!                            1 Delete, 2 Merge(varint length + operand bytes)
//!                 event_time 0x00 (none) | 0x01 + varint milliseconds
//! ```
//!
//! Limits: a frame body (stored, without a seal's 40 bytes, or raw) is at
//! most [`MAX_FRAME_BYTES`];
//! every length read from disk is checked against it and against the bytes
//! left in the file before anything is allocated. A marker frame (count 0)
//! is written by [`Wal::close`]; its synced LSN covers the whole log.
//!
//! ## Durability points
//!
//! What an acknowledged append ([`Wal::append`], [`Wal::append_batch`],
//! [`AppendTicket::wait`], [`LoggedBackend::commit`]) survives:
//!
//! | policy        | crash of the process          | crash of the machine (power, kernel)                |
//! |---------------|-------------------------------|-----------------------------------------------------|
//! | `Always`      | nothing acknowledged is lost  | nothing acknowledged is lost                        |
//! | `Interval(d)` | nothing acknowledged is lost  | at most what was acknowledged in the last `d + 2s`  |
//! | `Never`       | nothing acknowledged is lost¹ | everything since the last [`Wal::sync`] or close    |
//!
//! ¹ `Wal::append`/`append_batch`/`AppendTicket::wait`; a
//! [`LoggedBackend::commit`] under `Never` only queues the batch, which a
//! process crash can lose.
//!
//! Under `Interval(d)`, `s` is the time one `fdatasync` of the log takes.
//! The acknowledgement comes when the batch's `write` has returned: its
//! bytes are in the kernel's page cache and survive the process. The sync
//! thread starts an `fdatasync` whenever something written is unsynced and
//! `d` has passed since the previous one started (at once on
//! [`Wal::sync`]); it publishes [`Wal::durable_lsn`] only after the sync
//! returns. A record written at time `t` is covered by the first sync that
//! starts after `t`, which starts by `t + max(d, s)` and ends `s` later.
//! The writer never waits for that thread, so a slow `fdatasync` delays
//! durability, never the writes (the one `fsync` on the writer's path is
//! the directory's, once per new segment).
//!
//! - An append under `Always` returns after `fdatasync` of the segment that
//!   holds it. Before the first record of a new segment is acknowledged,
//!   the segment's name is durable (rename, then `fsync` of the directory),
//!   and the previous segment has been `fdatasync`ed.
//! - Segment deletion (truncation, retention, recovery) is followed by an
//!   `fsync` of the directory. Creating the directory `fsync`s its parent.
//! - Opening `fdatasync`s every segment it recovered before any new frame
//!   can claim them durable, and truncates the last one to its last valid
//!   frame (`fsync`ed).
//! - Under `Interval` a full segment is handed to the sync thread, whose
//!   next sync `fdatasync`s it before the active one, before the durable
//!   LSN passes it.
//! - After a failed write or `fdatasync` (in the writer or the sync
//!   thread) the log is **poisoned**: every
//!   later call fails with an [`Error::Backend`](highwater_core::Error::Backend)
//!   (`backend: "wal"`) naming the directory, whose source is the failure
//!   and whose kind is the failure's when that is permanent (a full disk
//!   is [`StorageFull`](highwater_core::ErrorKind::StorageFull), a
//!   read-only one [`PermissionDenied`](highwater_core::ErrorKind::PermissionDenied))
//!   and [`Closed`](highwater_core::ErrorKind::Closed) otherwise: a
//!   poisoned log is never retried, it is reopened. An `fsync` error cannot
//!   be retried: the kernel may already have dropped the pages it failed to
//!   write (the PostgreSQL "fsyncgate" lesson).
//!
//! ## Recovery
//!
//! Opening reads every segment and checks every frame (header and body
//! checksums, LSN continuity, record framing). Where the log stops at LSN
//! `e` — a frame that fails a check, zeros, the end of a file, or a next
//! segment that does not start at `e` — it looks at everything after that
//! point for a valid frame whose synced LSN is at least `e`:
//!
//! - if there is one, record `e` had been made durable (and acknowledged),
//!   so the log is damaged: [`Error::Corrupt`](highwater_core::Error::Corrupt)
//!   naming the segment file and byte offset. This covers a flipped byte in
//!   the middle of the log and a segment file deleted from the middle.
//! - if there is none, nothing from `e` on was ever durable: it is a torn
//!   tail (a short write, a half-written frame, pages of unsynced writes
//!   that reached the disk out of order). It is cut — the segment truncated
//!   at the offset and later segments deleted — and described in
//!   [`RecoveryReport::torn_tail`]. Nothing after a torn frame survives, so
//!   the log is always a prefix of what was appended.
//!
//! A clean shutdown ends with a marker whose synced LSN covers everything,
//! so after [`Wal::close`] damage anywhere is reported as corruption. The
//! marker lives in the last segment, so the loss of that segment (deleted,
//! truncated) is caught by the `DURABLE` file beside the segments: 32 bytes
//! (`"HWWALDUR"`, `u16` version, 6 zero bytes, the LSN, xxh3-64 of the
//! first 24 bytes) recording the LSN the log was durable up to when it was
//! last opened (what recovery kept) or closed (everything). It is replaced
//! through a synced temporary file and a rename, and the directory is
//! `fsync`ed. The log only grows at its end, so opening a log that ends
//! before that LSN is [`Error::Corrupt`](highwater_core::Error::Corrupt),
//! checked before anything is repaired; a damaged file is too; a missing
//! one (a log written before it existed) is accepted. What
//! no log can do: after a crash, damage confined to the last frame is
//! indistinguishable from a torn write; it is cut and reported, not
//! refused. The writer rewrites the partial last page of a segment on each
//! group write; like every log that does so, this assumes the device does
//! not tear a sector it rewrites with identical leading bytes.
//!
//! ## Invariants
//!
//! - LSNs are contiguous across frames and segments; a segment's name is
//!   the LSN of its first record.
//! - Only the newest segment is ever written; recovery never appends to an
//!   existing segment (it starts a new one), so bytes after the end of the
//!   log are never reused.
//! - A frame's synced LSN never runs ahead of what is durable: under
//!   `Never`, full segments are left unsynced until the next
//!   [`Wal::sync`] or [`Wal::close`], which syncs them before the durable
//!   LSN advances.
//!
//! ## Dependencies
//!
//! `highwater-core`, `crossbeam-channel`, `xxhash-rust`, `zstd`, `postcard`,
//! `serde` and `tracing`. This crate must not depend on any state backend,
//! checkpoint store or async runtime.

#![deny(missing_docs)]

mod config;
mod format;
mod logged;
pub mod metrics;
mod record;
mod recovery;
mod replay;
mod segment;
mod wal;
mod writer;

/// A log sequence number: the position of a record in the log. The first
/// record is 1; 0 means "no record".
pub type Lsn = u64;

pub use config::{SyncPolicy, WalConfig};
pub use format::{FORMAT_VERSION, MAX_FRAME_BYTES};
pub use logged::LoggedBackend;
pub use record::{WalBatch, WalOp, WalRecord};
pub use recovery::{RecoveryReport, TornTail};
pub use replay::{Replay, WalEntry};
pub use segment::SegmentInfo;
pub use wal::{AppendTicket, Wal, WalStats};
