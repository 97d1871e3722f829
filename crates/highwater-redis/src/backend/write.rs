//! Writes: the pipelined `SET`/`DEL` of puts, deletes and batches, the
//! map-index updates that go with them, the native expiry handed to Redis,
//! and the striped locks that order writers of the same key.

use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, PoisonError};

use highwater_core::Result;
use highwater_core::ttl::Envelope;
use redis::Value;

use super::layout::map_split;
use super::snapshot::Materialization;
use super::{Shared, bytes_of, lock, unexpected};
use crate::conn::Pipe;

/// Stripes of the per-key write locks taken while a snapshot is being read
/// (see [`Shared::apply`]).
pub(super) const STRIPES: usize = 256;

/// One step of a write: a put (`value` set) or a delete.
pub(super) struct Write<'a> {
    pub(super) key: &'a [u8],
    pub(super) value: Option<&'a [u8]>,
}

impl Shared {
    /// The native expiry to hand Redis for `value`, if any.
    fn native_expiry(&self, value: &[u8], now_ms: u64) -> Option<u64> {
        if !self.config.native_ttl {
            return None;
        }
        let at = Envelope::decode(value).ok()?.expires_at_ms?;
        let at = at.saturating_add(self.config.native_ttl_grace.as_millis() as u64);
        (at > now_ms).then_some(at)
    }

    /// Sends `writes` in pipelined chunks. While snapshots are being read
    /// (`pending` not empty), each write also returns the key's previous
    /// value (`SET … GET`, `GETDEL`), recorded in the undo logs of the
    /// snapshots that cover the key; otherwise plain `SET` and `DEL`, the
    /// cheapest commands. The caller holds the epoch lock (shared, or
    /// exclusive for restore).
    pub(super) fn send(
        &self,
        writes: &[Write<'_>],
        pending: &[Arc<Materialization>],
    ) -> Result<()> {
        let with_old = !pending.is_empty();
        for chunk in writes.chunks(self.config.pipeline_depth.max(1)) {
            let now_ms = self.config.clock.now_ms();
            let mut buf = Vec::with_capacity(64);
            let mut cmds = Vec::with_capacity(chunk.len() + 8);
            // Where each write's SET/DEL reply is among the replies.
            let mut at = Vec::with_capacity(chunk.len());
            for w in chunk {
                let split = map_split(w.key);
                // A map entry is added to its index before it is written and
                // removed after it is deleted (same slot, same connection,
                // in order), so the index always lists every entry: it may
                // list more (an entry Redis expired), never fewer.
                if let (Some(b), Some(_)) = (split, w.value) {
                    self.layout.index_key_into(&w.key[..b], &mut buf);
                    cmds.push(
                        redis::cmd("ZADD")
                            .arg(buf.as_slice())
                            .arg(0)
                            .arg(&w.key[b..])
                            .to_owned(),
                    );
                }
                self.layout.value_key_into(w.key, &mut buf);
                at.push(cmds.len());
                cmds.push(match w.value {
                    Some(v) => {
                        // Sized up front: no regrowth while the arguments
                        // are appended (SET key value [PXAT ms] [GET]).
                        let mut cmd = redis::Cmd::with_capacity(6, 32 + buf.len() + v.len());
                        cmd.arg("SET").arg(buf.as_slice()).arg(v);
                        if let Some(at) = self.native_expiry(v, now_ms) {
                            cmd.arg("PXAT").arg(at);
                        }
                        if with_old {
                            cmd.arg("GET");
                        }
                        cmd
                    }
                    None => redis::cmd(if with_old { "GETDEL" } else { "DEL" })
                        .arg(buf.as_slice())
                        .to_owned(),
                });
                if let (Some(b), None) = (split, w.value) {
                    self.layout.index_key_into(&w.key[..b], &mut buf);
                    cmds.push(
                        redis::cmd("ZREM")
                            .arg(buf.as_slice())
                            .arg(&w.key[b..])
                            .to_owned(),
                    );
                }
            }
            let n_cmds = cmds.len();
            let pipe = Pipe::new(self.layout.cluster, cmds.into_iter());
            let (result, unknown) = self.run_tracked("write", |c| {
                if with_old {
                    c.pipeline(&pipe)
                } else {
                    c.pipeline_exec(&pipe).map(|()| Vec::new())
                }
            });
            if unknown {
                // Some attempt may have been applied: the old values seen
                // by a retry may be our own, so the undo logs are no longer
                // exact.
                for m in pending {
                    m.poisoned.store(true, Ordering::Relaxed);
                }
            }
            let replies = result?;
            if !with_old {
                continue;
            }
            if replies.len() != n_cmds {
                for m in pending {
                    m.poisoned.store(true, Ordering::Relaxed);
                }
                return Err(self.err("write", unexpected("SET/GETDEL")));
            }
            let mut replies: Vec<Option<Value>> = replies.into_iter().map(Some).collect();
            for (w, &i) in chunk.iter().zip(&at) {
                let reply = replies[i].take().unwrap_or(Value::Nil);
                let old = bytes_of(reply).map_err(|e| self.err("write", e))?;
                for m in pending {
                    if m.scope.contains(w.key) {
                        lock(&m.undo).insert_if_absent(w.key, || old.as_deref().map(Into::into));
                    }
                }
            }
        }
        Ok(())
    }

    /// The write path of put, delete and write_batch.
    pub(super) fn apply(&self, writes: &[Write<'_>]) -> Result<()> {
        let epoch = self.epoch.read().unwrap_or_else(PoisonError::into_inner);
        {
            // Marked before sending: a write that fails with an unknown
            // outcome is still reported by the next changes snapshot.
            let mut dirty = lock(&epoch.dirty);
            for w in writes {
                dirty.insert(w.key);
            }
        }
        // Writes to one key reach Redis in the order this process issues
        // them: writers of the same key are serialized by a striped lock,
        // held for the round trip. This (1) makes concurrent batches that
        // share keys serializable, as with an in-memory map, (2) keeps a
        // map entry's index update and value write from interleaving with
        // another writer's, and (3) while a snapshot is being read, makes
        // the first recorded old value of a key its value at the cut.
        // Stripes are taken in ascending order, so writers never deadlock.
        let mut idx: Vec<usize> = writes.iter().map(|w| stripe_of(w.key)).collect();
        idx.sort_unstable();
        idx.dedup();
        let _stripes: Vec<MutexGuard<'_, ()>> =
            idx.into_iter().map(|i| lock(&self.stripes[i])).collect();
        self.send(writes, &epoch.pending)
    }
}

/// The write-order stripe of a key.
pub(super) fn stripe_of(key: &[u8]) -> usize {
    (xxhash_rust::xxh3::xxh3_64(key) as usize) % STRIPES
}
