//! Reads: values by key (`MGET`, or `GET`s split by node on a cluster),
//! `SCAN`s of the namespace, map scans through a map's index, counting and
//! deleting the namespace.

use std::collections::HashSet;

use highwater_core::{BackendStats, Result};
use redis::Value;

use super::layout::prefix_successor;
use super::write::stripe_of;
use super::{NAME, Shared, bytes_of, lock, unexpected};
use crate::conn::{Pipe, ScanTarget};

impl Shared {
    /// Values of `vkeys` (full Redis keys), in order.
    pub(super) fn fetch(&self, vkeys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.fetch_with(vkeys, |k, buf| buf.extend_from_slice(k))
    }

    /// Values of `keys`, in order; `redis_key` writes the Redis key of a
    /// key into an empty buffer. One `MGET` per chunk on a standalone
    /// server; pipelined `GET`s split by node on a cluster (keys of a chunk
    /// span slots).
    pub(super) fn fetch_with<K>(
        &self,
        keys: &[K],
        redis_key: impl Fn(&K, &mut Vec<u8>),
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut buf = Vec::with_capacity(64);
        for chunk in keys.chunks(self.config.pipeline_depth.max(1)) {
            let mut key = |k: &K| {
                buf.clear();
                redis_key(k, &mut buf);
                buf.clone()
            };
            let values = if self.layout.cluster {
                let pipe = Pipe::new(
                    true,
                    chunk
                        .iter()
                        .map(|k| redis::cmd("GET").arg(key(k)).to_owned()),
                );
                self.run("read", |c| c.pipeline(&pipe))?
            } else {
                let mut cmd = redis::Cmd::with_capacity(chunk.len() + 1, 8 + 64 * chunk.len());
                cmd.arg("MGET");
                for k in chunk {
                    buf.clear();
                    redis_key(k, &mut buf);
                    cmd.arg(buf.as_slice());
                }
                match self.run("read", |c| c.query(&cmd))? {
                    Value::Array(vs) => vs,
                    _ => return Err(self.err("read", unexpected("MGET"))),
                }
            };
            if values.len() != chunk.len() {
                return Err(self.err("read", unexpected("GET")));
            }
            for v in values {
                out.push(bytes_of(v).map_err(|e| self.err("read", e))?);
            }
        }
        Ok(out)
    }

    /// Every key matching `pattern` on `targets` (all nodes when `None`),
    /// deduplicated (`SCAN` may return a key twice).
    pub(super) fn scan(&self, pattern: &[u8], target: Option<ScanTarget>) -> Result<Vec<Vec<u8>>> {
        let count = self.config.scan_count.max(1);
        let targets = match target {
            Some(t) => vec![t],
            None => self.run("scan", |c| c.scan_targets())?,
        };
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        for t in targets {
            let mut cursor = 0u64;
            loop {
                let (next, keys) = self.run("scan", |c| c.scan_page(t, cursor, pattern, count))?;
                seen.extend(keys);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(seen.into_iter().collect())
    }

    /// Entries whose state key starts with `prefix` and passes `keep`,
    /// sorted by key.
    pub(super) fn scan_entries(
        &self,
        prefix: &[u8],
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if let Some(b) = highwater_core::key::split_base(prefix) {
            // Every key with this prefix has this base (the fields are
            // length-prefixed): the base's own value and its map entries,
            // which the map's index lists.
            return self.scan_map(&prefix[..b], &prefix[b..], keep);
        }
        let (pattern, target) = self.layout.prefix_pattern(prefix);
        let mut vkeys: Vec<Vec<u8>> = self
            .scan(&pattern, target)?
            .into_iter()
            .filter(|k| {
                self.layout
                    .raw_of(k)
                    .is_some_and(|raw| raw.starts_with(prefix) && keep(raw))
            })
            .collect();
        vkeys.sort_unstable();
        let values = self.fetch(&vkeys)?;
        let strip = self.layout.value_prefix_len;
        Ok(vkeys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k[strip..].to_vec(), v)))
            .collect())
    }

    /// The entries of the map under `base` whose user key starts with
    /// `uk_prefix` (and `base`'s own value when `uk_prefix` is empty), sorted:
    /// a `ZRANGEBYLEX` of the map's index and one read, on one node.
    /// Index members whose value is gone (expired by Redis) are skipped and
    /// removed from the index.
    pub(super) fn scan_map(
        &self,
        base: &[u8],
        uk_prefix: &[u8],
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut idx = Vec::new();
        self.layout.index_key_into(base, &mut idx);
        let mut min = b"[".to_vec();
        min.extend_from_slice(uk_prefix);
        let max = match prefix_successor(uk_prefix) {
            Some(succ) => [b"(".as_slice(), &succ].concat(),
            None => b"+".to_vec(),
        };
        let cmd = redis::cmd("ZRANGEBYLEX")
            .arg(idx.as_slice())
            .arg(min)
            .arg(max)
            .to_owned();
        let members = match self.run("scan map", |c| c.query(&cmd))? {
            Value::Array(ms) => ms,
            _ => return Err(self.err("scan map", unexpected("ZRANGEBYLEX"))),
        };
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(members.len() + 1);
        if uk_prefix.is_empty() {
            keys.push(base.to_vec());
        }
        for m in members {
            let Some(uk) = bytes_of(m).map_err(|e| self.err("scan map", e))? else {
                continue;
            };
            keys.push([base, uk.as_slice()].concat());
        }
        keys.retain(|k| keep(k));
        let values = self.fetch_with(&keys, |k, buf| self.layout.value_key_into(k, buf))?;
        let mut out = Vec::with_capacity(keys.len());
        for (k, v) in keys.into_iter().zip(values) {
            match v {
                Some(v) => out.push((k, v)),
                None if k.len() > base.len() => self.drop_stale_member(&idx, &k, base.len()),
                None => {}
            }
        }
        // Members come in byte order and all share the base: sorted.
        Ok(out)
    }

    /// Removes `key`'s member from the map index `idx` if its value is
    /// still absent, holding the key's write-order stripe so a concurrent
    /// put of the key (index first, then value) cannot be undone. Best
    /// effort: a failure leaves a member that readers skip.
    pub(super) fn drop_stale_member(&self, idx: &[u8], key: &[u8], base_len: usize) {
        let _stripe = lock(&self.stripes[stripe_of(key)]);
        let vkey = self.layout.value_key(key);
        let mut script = redis::cmd("EVAL");
        script
            .arg(
                "if redis.call('EXISTS', KEYS[1]) == 0 then \
                 return redis.call('ZREM', KEYS[2], ARGV[1]) end return 0",
            )
            .arg(2)
            .arg(vkey)
            .arg(idx)
            .arg(&key[base_len..]);
        if let Err(e) = self.run("clean map index", |c| c.query(&script)) {
            tracing::debug!(backend = NAME, error = %e, "cannot clean a map index entry");
        }
    }

    /// Counts the entries and bytes of the namespace: a `SCAN` and a
    /// pipelined `STRLEN` per key.
    pub(super) fn count(&self) -> Result<BackendStats> {
        let (pattern, _) = self.layout.prefix_pattern(&[]);
        let vkeys = self.scan(&pattern, None)?;
        let strip = self.layout.value_prefix_len as u64;
        let mut stats = BackendStats::default();
        for chunk in vkeys.chunks(self.config.pipeline_depth.max(1)) {
            let pipe = Pipe::new(
                self.layout.cluster,
                chunk
                    .iter()
                    .map(|k| redis::cmd("STRLEN").arg(k.as_slice()).to_owned()),
            );
            let lens = self.run("count", |c| c.pipeline(&pipe))?;
            for (k, len) in chunk.iter().zip(lens) {
                // A key that vanished between SCAN and STRLEN reads as 0
                // bytes; values are never empty (an envelope has a tag).
                if let Value::Int(len) = len
                    && len > 0
                {
                    stats.entries += 1;
                    stats.bytes += k.len() as u64 - strip + len as u64;
                }
            }
        }
        Ok(stats)
    }

    /// Deletes every key of the namespace.
    pub(super) fn delete_all(&self) -> Result<()> {
        let keys = self.scan(&self.layout.all_pattern(), None)?;
        for chunk in keys.chunks(self.config.pipeline_depth.max(1)) {
            let pipe = Pipe::new(
                self.layout.cluster,
                chunk
                    .iter()
                    .map(|k| redis::cmd("UNLINK").arg(k.as_slice()).to_owned()),
            );
            self.run("delete", |c| c.pipeline(&pipe))?;
        }
        Ok(())
    }
}
