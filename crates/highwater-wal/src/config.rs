//! [`WalConfig`] and [`SyncPolicy`].

use std::time::Duration;

use highwater_core::{Cipher, Error, Result};

use crate::format::MAX_FRAME_BYTES;

/// When an append is acknowledged and when the log calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Every append returns only after its records are durable: the writer
    /// writes a group of pending batches and `fdatasync`s once for all of
    /// them (group commit).
    Always,
    /// Appends return once their records are written to the operating
    /// system (they survive a crash of the process); a separate sync thread
    /// `fdatasync`s at least this often while there is unsynced data, so a
    /// crash of the machine loses at most what was acknowledged in the last
    /// interval plus the time of two `fdatasync`s (see the crate's
    /// "Durability points"). The writer never waits for that thread.
    Interval(Duration),
    /// Appends return once written to the operating system; the log
    /// `fdatasync`s only on [`Wal::sync`](crate::Wal::sync) and
    /// [`Wal::close`](crate::Wal::close).
    Never,
}

/// Configuration of a [`Wal`](crate::Wal).
///
/// The field names follow the reference configuration (`enable_sync`,
/// `buffer_size`, `max_batch_size`, `retention_segments`,
/// `enable_compression`); sizes are in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// When appends are acknowledged and the log is `fdatasync`ed. Default
    /// [`SyncPolicy::Always`]. [`WalConfig::enable_sync`] maps the
    /// reference's boolean onto this.
    pub sync_policy: SyncPolicy,
    /// Bytes of submitted batches the writer may have queued but not yet
    /// written; a submitter that would exceed it blocks until the writer
    /// catches up (back-pressure). Default 32 MiB.
    pub buffer_size: usize,
    /// The most bytes one group write gathers from the queue before it is
    /// written (and, under [`SyncPolicy::Always`], synced). A single batch
    /// larger than this is written alone. Default 1 MiB.
    pub max_batch_size: usize,
    /// A segment is closed and a new one started when the next group would
    /// make it larger than this. Default 64 MiB.
    pub segment_size: u64,
    /// After [`Wal::truncate_before`](crate::Wal::truncate_before) releases
    /// segments, the newest `retention_segments` segments (counting the
    /// active one) are kept anyway, as a window for point-in-time recovery.
    /// Segments that were not released are never deleted. Default 0.
    pub retention_segments: usize,
    /// Compress batches with zstd. Default false.
    pub enable_compression: bool,
    /// Batches with fewer encoded bytes than this are stored uncompressed
    /// even when compression is on. Default 4 KiB.
    pub compression_threshold: usize,
    /// zstd level. Default 1 (the fast level; see `shared/INFRA.md`).
    pub compression_level: i32,
    /// Pre-write each new segment with zeros (in a background thread) so
    /// that appends overwrite allocated blocks and `fdatasync` does not also
    /// commit file-size metadata — about half the latency of a durable
    /// append on the reference machine. Applies to [`SyncPolicy::Always`]
    /// and [`SyncPolicy::Interval`]; under [`SyncPolicy::Never`] nothing waits
    /// for `fdatasync`, so segments are never preallocated. Default true.
    pub preallocate: bool,
    /// Seal every frame's body (after compression) with this cipher's
    /// current key (at-rest encryption, see `docs/reliability.md`). A log
    /// holding sealed frames replays only with a cipher whose provider
    /// holds their keys. Default `None`: frames are stored in the clear.
    pub encryption: Option<Cipher>,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            sync_policy: SyncPolicy::Always,
            buffer_size: 32 << 20,
            max_batch_size: 1 << 20,
            segment_size: 64 << 20,
            retention_segments: 0,
            enable_compression: false,
            compression_threshold: 4 << 10,
            compression_level: 1,
            preallocate: true,
            encryption: None,
        }
    }
}

impl WalConfig {
    /// The reference's `enable_sync`: true is [`SyncPolicy::Always`], false
    /// is [`SyncPolicy::Never`].
    pub fn enable_sync(mut self, on: bool) -> Self {
        self.sync_policy = if on {
            SyncPolicy::Always
        } else {
            SyncPolicy::Never
        };
        self
    }

    /// Sets [`WalConfig::sync_policy`].
    pub fn sync_policy(mut self, policy: SyncPolicy) -> Self {
        self.sync_policy = policy;
        self
    }

    /// Sets [`WalConfig::segment_size`].
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }

    /// Turns compression on for batches of at least `threshold` bytes.
    pub fn compression(mut self, threshold: usize) -> Self {
        self.enable_compression = true;
        self.compression_threshold = threshold;
        self
    }

    /// Sets [`WalConfig::encryption`].
    pub fn encryption(mut self, cipher: Cipher) -> Self {
        self.encryption = Some(cipher);
        self
    }

    /// True when new segments are zero-filled ahead of use.
    pub(crate) fn preallocates(&self) -> bool {
        self.preallocate && self.sync_policy != SyncPolicy::Never
    }

    /// Checks the values; [`Wal::open`](crate::Wal::open) calls this.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument(msg));
        if self.segment_size < 4096 || self.segment_size > (1 << 40) {
            return bad(format!(
                "wal segment_size must be in 4 KiB..=1 TiB: segment_size={}",
                self.segment_size
            ));
        }
        if self.max_batch_size == 0 || self.max_batch_size > MAX_FRAME_BYTES {
            return bad(format!(
                "wal max_batch_size must be in 1..={MAX_FRAME_BYTES}: max_batch_size={}",
                self.max_batch_size
            ));
        }
        if self.buffer_size == 0 {
            return bad("wal buffer_size must be positive".into());
        }
        if let SyncPolicy::Interval(d) = self.sync_policy
            && d.is_zero()
        {
            return bad("wal sync interval must be positive (use SyncPolicy::Always)".into());
        }
        let levels = zstd::compression_level_range();
        if self.enable_compression && !levels.contains(&self.compression_level) {
            return bad(format!(
                "wal compression_level out of range: level={} range={levels:?}",
                self.compression_level
            ));
        }
        Ok(())
    }
}
