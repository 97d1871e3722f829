//! Snapshots: the cut taken in process (swap the dirty set, register the
//! snapshot), the background read of its content with the undo log of
//! writes that raced it, and the finished snapshot handed to callers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLockWriteGuard};

use highwater_core::{EntryVisitor, Error, ErrorKind, Result, SnapshotKind, StateSnapshot};

use super::changes::{Entry, EntryMap, KeySet};
use super::layout::key_group;
use super::{NAME, Shared, lock};

/// What a snapshot being read covers.
pub(super) enum Scope {
    /// Every entry.
    All,
    /// The keys changed in the epoch the snapshot closed.
    Keys(KeySet),
}

impl Scope {
    pub(super) fn contains(&self, key: &[u8]) -> bool {
        match self {
            Scope::All => true,
            Scope::Keys(keys) => keys.contains(key),
        }
    }
}

/// The frozen content of a finished snapshot, by partition.
struct Content {
    partitions: Vec<Vec<Entry>>,
}

enum Progress {
    Reading,
    Done(Arc<Content>),
    /// Shared by every reader of the snapshot.
    Failed(Arc<Error>),
}

/// A snapshot whose content is being read from Redis in the background.
///
/// Writers that change a key in scope before the read finishes record the
/// key's value at the cut (the old value `SET … GET`/`GETDEL` returns) in
/// `undo`, first write wins; the reader overrides what it read with it.
pub(super) struct Materialization {
    pub(super) kind: SnapshotKind,
    pub(super) scope: Scope,
    pub(super) undo: Mutex<EntryMap>,
    /// Set when a write in scope failed with an unknown outcome: its old
    /// value is unknown, so this snapshot cannot be trusted.
    pub(super) poisoned: AtomicBool,
    progress: Mutex<Progress>,
    done: Condvar,
    partitions: usize,
    approx: usize,
}

impl Materialization {
    fn wait(&self) -> std::result::Result<Arc<Content>, Arc<Error>> {
        let mut g = lock(&self.progress);
        loop {
            match &*g {
                Progress::Reading => {
                    g = self.done.wait(g).unwrap_or_else(PoisonError::into_inner);
                }
                Progress::Done(c) => return Ok(c.clone()),
                Progress::Failed(e) => return Err(e.clone()),
            }
        }
    }

    fn finish(&self, outcome: Result<Content>) {
        *lock(&self.progress) = match outcome {
            Ok(c) => Progress::Done(Arc::new(c)),
            Err(e) => Progress::Failed(Arc::new(e)),
        };
        self.done.notify_all();
    }
}

/// What changes at a snapshot, restore or clear.
#[derive(Default)]
pub(super) struct Epoch {
    /// Keys written since the last snapshot.
    pub(super) dirty: Mutex<KeySet>,
    /// Snapshots still being read.
    pub(super) pending: Vec<Arc<Materialization>>,
}

impl Shared {
    /// Takes the epoch lock exclusively once no snapshot is being read
    /// (restore and clear replace everything, which no undo log covers).
    pub(super) fn quiesce(&self) -> RwLockWriteGuard<'_, Epoch> {
        loop {
            let epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
            if epoch.pending.is_empty() {
                return epoch;
            }
            let pending = epoch.pending.clone();
            drop(epoch);
            for m in pending {
                let _ = m.wait();
            }
        }
    }

    /// Takes a snapshot: the cut now, under the epoch lock (O(1)); the
    /// content is read by a background thread.
    pub(super) fn snapshot(self: &Arc<Self>, kind: SnapshotKind) -> Result<Arc<dyn StateSnapshot>> {
        let parts = self.config.snapshot_partitions.max(1);
        let mut epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
        // The next epoch's set starts at this epoch's size (capped): in a
        // steady state it never has to grow and rehash on the write path.
        let dirty = {
            let mut d = lock(&epoch.dirty);
            let next = KeySet::with_capacity(d.len().min(1 << 20), d.bytes().min(64 << 20));
            std::mem::replace(&mut *d, next)
        };
        let (scope, approx) = match kind {
            SnapshotKind::Full => (
                Scope::All,
                self.entries_hint.load(Ordering::Relaxed) as usize,
            ),
            SnapshotKind::Changes => {
                if dirty.is_empty() {
                    let m = Materialization {
                        kind,
                        scope: Scope::Keys(KeySet::default()),
                        undo: Mutex::new(EntryMap::default()),
                        poisoned: AtomicBool::new(false),
                        progress: Mutex::new(Progress::Done(Arc::new(Content {
                            partitions: (0..parts).map(|_| Vec::new()).collect(),
                        }))),
                        done: Condvar::new(),
                        partitions: parts,
                        approx: 0,
                    };
                    return Ok(Arc::new(RedisSnapshot { m: Arc::new(m) }));
                }
                let n = dirty.len();
                (Scope::Keys(dirty), n)
            }
        };
        let m = Arc::new(Materialization {
            kind,
            scope,
            undo: Mutex::new(EntryMap::default()),
            poisoned: AtomicBool::new(false),
            progress: Mutex::new(Progress::Reading),
            done: Condvar::new(),
            partitions: parts,
            approx,
        });
        epoch.pending.push(m.clone());
        drop(epoch);
        let (shared, mm) = (self.clone(), m.clone());
        let spawned = std::thread::Builder::new()
            .name("highwater-redis-snapshot".into())
            .spawn(move || shared.materialize(&mm));
        if let Err(e) = spawned {
            let mut epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
            epoch.pending.retain(|p| !Arc::ptr_eq(p, &m));
            drop(epoch);
            // Nobody reads this snapshot: the error below is returned.
            m.finish(Err(Error::Internal(
                "the snapshot reader thread did not start".into(),
            )));
            return Err(Error::io("start the redis snapshot reader thread", e));
        }
        Ok(Arc::new(RedisSnapshot { m }))
    }

    /// Reads the content of `m` and finishes it (run on its own thread).
    fn materialize(self: &Arc<Self>, m: &Arc<Materialization>) {
        let read = match &m.scope {
            Scope::All => self.read_all(),
            Scope::Keys(keys) => self.read_keys(keys),
        };
        // Detach from the writers: after this no write records into `undo`,
        // and every write that changed a key after the cut has recorded.
        let undo = {
            let mut epoch = self.epoch.write().unwrap_or_else(PoisonError::into_inner);
            epoch.pending.retain(|p| !Arc::ptr_eq(p, m));
            std::mem::take(&mut *lock(&m.undo))
        };
        if m.poisoned.load(Ordering::Relaxed) {
            m.finish(Err(Error::backend(
                // Another snapshot succeeds.
                ErrorKind::Unavailable,
                NAME,
                "read the snapshot",
                "a write with an unknown outcome (a failed request) happened while the snapshot \
                 was being read; take another snapshot",
            )));
            return;
        }
        let mut map = match read {
            Ok(map) => map,
            Err(e) => {
                m.finish(Err(e));
                return;
            }
        };
        for (k, old) in undo {
            match (m.kind, old) {
                (SnapshotKind::Full, None) => {
                    map.remove(&k);
                }
                (_, old) => {
                    map.insert(k, old);
                }
            }
        }
        if m.kind == SnapshotKind::Full {
            self.entries_hint.store(map.len() as u64, Ordering::Relaxed);
        }
        let parts = m.partitions;
        let mut partitions: Vec<Vec<Entry>> = (0..parts).map(|_| Vec::new()).collect();
        for (k, v) in map {
            let p = usize::from(key_group(&k)) % parts;
            partitions[p].push((k, v));
        }
        m.finish(Ok(Content { partitions }));
    }

    fn read_all(&self) -> Result<EntryMap> {
        let (pattern, _) = self.layout.prefix_pattern(&[]);
        let vkeys = self.scan(&pattern, None)?;
        let values = self.fetch(&vkeys)?;
        let strip = self.layout.value_prefix_len;
        Ok(vkeys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k[strip..].into(), Some(v.into()))))
            .collect())
    }

    fn read_keys(&self, keys: &KeySet) -> Result<EntryMap> {
        let keys: Vec<&[u8]> = keys.iter().collect();
        let values = self.fetch_with(&keys, |k, buf| self.layout.value_key_into(k, buf))?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| (k.into(), v.map(Into::into)))
            .collect())
    }
}

/// A snapshot of a [`RedisBackend`]: read from Redis in the background
/// right after the cut; reading it waits for that to finish.
struct RedisSnapshot {
    m: Arc<Materialization>,
}

impl StateSnapshot for RedisSnapshot {
    fn kind(&self) -> SnapshotKind {
        self.m.kind
    }

    fn partitions(&self) -> usize {
        self.m.partitions
    }

    fn for_each_in_partition(&self, partition: usize, f: &mut EntryVisitor<'_>) -> Result<()> {
        if partition >= self.m.partitions {
            return Err(Error::InvalidArgument(format!(
                "snapshot partition out of range: partition={partition} partitions={}",
                self.m.partitions
            )));
        }
        let content = self
            .m
            .wait()
            .map_err(|e| Error::backend(e.kind(), NAME, "read the snapshot", e))?;
        for (k, v) in &content.partitions[partition] {
            f(k, v.as_deref())?;
        }
        Ok(())
    }

    fn approximate_entries(&self) -> usize {
        self.m.approx
    }
}
