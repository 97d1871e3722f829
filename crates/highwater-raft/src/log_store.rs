//! The Raft log and vote, durable on a [`highwater_wal::Wal`].
//!
//! Every change is a WAL record whose key names its kind:
//!
//! | key | value (postcard) | effect on replay |
//! | --- | --- | --- |
//! | `e` | an openraft entry | insert at its index |
//! | `t` | index `u64` | delete every entry at or after the index (openraft `truncate`) |
//! | `p` | `LogId` | delete every entry up to it; it becomes the last purged id |
//! | `v` | `Vote` | the current vote |
//! | `c` | `Option<LogId>` | the last known committed id |
//!
//! Opening replays the WAL from its first record and rebuilds the in-memory
//! index, so the index always equals what a restart would rebuild. Votes and
//! truncations are acknowledged only after the WAL's `fdatasync`
//! (`SyncPolicy::Always`); appended entries are acknowledged to openraft
//! through its `LogFlushed` callback once their group is durable, in append
//! order, by one flusher thread. A purge first re-appends the vote, the
//! committed id and the purge record, then releases the WAL segments that
//! hold only records older than every live entry, so replay never needs a
//! deleted segment.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use highwater_core::{Error, Result};
use highwater_wal::{AppendTicket, Lsn, Wal, WalBatch, WalConfig, WalOp};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};

use crate::TypeConfig;

type NodeId = u64;

#[derive(Debug, Default)]
struct Index {
    entries: BTreeMap<u64, (Lsn, Entry<TypeConfig>)>,
    last_purged: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// The contents of a log ([`WalLogStore::stored`]).
pub(crate) struct StoredLog {
    /// The saved committed id.
    pub(crate) committed: Option<LogId<NodeId>>,
    /// The last purged id.
    pub(crate) last_purged: Option<LogId<NodeId>>,
    /// The entries after it, in index order.
    pub(crate) entries: Vec<Entry<TypeConfig>>,
}

/// The durable Raft log of one node (openraft's [`RaftLogStorage`]).
#[derive(Clone)]
pub struct WalLogStore {
    index: Arc<Mutex<Index>>,
    wal: Arc<Wal>,
    flusher: crossbeam_channel::Sender<(AppendTicket, LogFlushed<TypeConfig>)>,
}

impl Debug for WalLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalLogStore")
            .field("dir", &self.wal.dir())
            .finish()
    }
}

fn lock(m: &Mutex<Index>) -> MutexGuard<'_, Index> {
    // A panic while holding the lock leaves the index as consistent as the
    // WAL (each method updates it in one step), so poisoning is ignored.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn corrupt(detail: impl std::fmt::Display) -> Error {
    Error::corrupt("raft log", detail)
}

fn encode<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| Error::Serialization {
        context: format!("raft log {what}"),
        source: e.into(),
    })
}

fn decode<'a, T: serde::Deserialize<'a>>(what: &str, lsn: Lsn, bytes: &'a [u8]) -> Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| corrupt(format!("undecodable {what} record: lsn={lsn} error={e}")))
}

impl WalLogStore {
    /// Opens (or creates) the log in `dir` and rebuilds its index.
    pub fn open(dir: &Path) -> Result<WalLogStore> {
        let config = WalConfig {
            buffer_size: 1 << 20,
            max_batch_size: 256 << 10,
            segment_size: 4 << 20,
            preallocate: false,
            ..WalConfig::default()
        };
        let (wal, _report) = Wal::open(dir, config)?;
        let mut index = Index::default();
        for item in wal.replay(wal.first_lsn())? {
            let item = item?;
            let lsn = item.lsn;
            let WalOp::Put(value) = &item.record.op else {
                return Err(corrupt(format!("unexpected operation: lsn={lsn}")));
            };
            match item.record.key.as_slice() {
                b"e" => {
                    let entry: Entry<TypeConfig> = decode("entry", lsn, value)?;
                    index.entries.insert(entry.log_id.index, (lsn, entry));
                }
                b"t" => {
                    let from: u64 = decode("truncate", lsn, value)?;
                    index.entries.split_off(&from);
                }
                b"p" => {
                    let upto: LogId<NodeId> = decode("purge", lsn, value)?;
                    index.entries = index.entries.split_off(&(upto.index + 1));
                    index.last_purged = Some(upto);
                }
                b"v" => index.vote = Some(decode("vote", lsn, value)?),
                b"c" => index.committed = decode("committed", lsn, value)?,
                other => {
                    return Err(corrupt(format!(
                        "unknown record kind: lsn={lsn} key={other:?}"
                    )));
                }
            }
        }
        let wal = Arc::new(wal);
        let (tx, rx) = crossbeam_channel::unbounded::<(AppendTicket, LogFlushed<TypeConfig>)>();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                // Tickets arrive in append order and the WAL makes them
                // durable in LSN order, so callbacks fire in append order.
                for (ticket, callback) in rx {
                    let result = ticket.wait().map(|_| ()).map_err(std::io::Error::other);
                    callback.log_io_completed(result);
                }
            })
            .map_err(|e| Error::Io {
                context: "spawning the raft log flusher".into(),
                source: e,
            })?;
        Ok(WalLogStore {
            index: Arc::new(Mutex::new(index)),
            wal,
            flusher: tx,
        })
    }

    /// Appends `records` and waits until they are durable (off the async
    /// runtime's worker threads).
    async fn append_durable(
        &self,
        records: Vec<(&'static [u8], Vec<u8>)>,
    ) -> Result<std::ops::Range<Lsn>> {
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = WalBatch::new();
            for (k, v) in &records {
                batch.put(k, v, None);
            }
            wal.append_batch(&batch)
        })
        .await
        .map_err(|e| Error::unexpected("the raft log writer task", e))?
    }

    /// What the log holds, for reading a stopped node's ledger.
    pub(crate) fn stored(&self) -> StoredLog {
        let index = lock(&self.index);
        StoredLog {
            committed: index.committed,
            last_purged: index.last_purged,
            entries: index.entries.values().map(|(_, e)| e.clone()).collect(),
        }
    }

    /// Closes the WAL (making everything durable).
    pub fn close(&self) -> Result<()> {
        self.wal.close()
    }
}

/// An I/O error for openraft's storage API, keeping `e` as its source.
fn io_err(e: impl Into<highwater_core::BoxError>) -> std::io::Error {
    std::io::Error::other(e)
}

impl RaftLogReader<TypeConfig> for WalLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => Bound::Included(s),
            Bound::Excluded(&s) => Bound::Excluded(s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&s) => Bound::Included(s),
            Bound::Excluded(&s) => Bound::Excluded(s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let index = lock(&self.index);
        Ok(index
            .entries
            .range((start, end))
            .map(|(_, (_, e))| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for WalLogStore {
    type LogReader = WalLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let index = lock(&self.index);
        let last = index
            .entries
            .last_key_value()
            .map(|(_, (_, e))| e.log_id)
            .or(index.last_purged);
        Ok(LogState {
            last_purged_log_id: index.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode("vote", vote).map_err(|e| StorageIOError::write_vote(&io_err(e)))?;
        self.append_durable(vec![(b"v", bytes)])
            .await
            .map_err(|e| StorageIOError::write_vote(&io_err(e)))?;
        lock(&self.index).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.index).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // Not waited for: a committed id lost in a crash only makes the next
        // start apply less eagerly; the leader re-sends the commit index.
        let bytes =
            encode("committed", &committed).map_err(|e| StorageIOError::write(&io_err(e)))?;
        let mut batch = WalBatch::new();
        batch.put(b"c", &bytes, None);
        let ticket = self
            .wal
            .submit(&batch)
            .map_err(|e| StorageIOError::write(&io_err(e)))?;
        drop(ticket);
        lock(&self.index).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.index).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let mut batch = WalBatch::new();
        for e in &entries {
            let bytes = encode("entry", e)
                .map_err(|err| StorageIOError::write_log_entry(e.log_id, &io_err(err)))?;
            batch.put(b"e", &bytes, None);
        }
        let ticket = self
            .wal
            .submit(&batch)
            .map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
        {
            let mut index = lock(&self.index);
            for (lsn, e) in ticket.lsns().zip(entries) {
                index.entries.insert(e.log_id.index, (lsn, e));
            }
        }
        self.flusher
            .send((ticket, callback))
            .map_err(|_| StorageIOError::write_logs(&io_err("raft log flusher stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = encode("truncate", &log_id.index)
            .map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
        self.append_durable(vec![(b"t", bytes)])
            .await
            .map_err(|e| StorageIOError::write_logs(&io_err(e)))?;
        lock(&self.index).entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let (vote, committed) = {
            let index = lock(&self.index);
            (index.vote, index.committed)
        };
        let werr = |e: Error| StorageIOError::write_logs(&io_err(e));
        let mut records: Vec<(&'static [u8], Vec<u8>)> =
            vec![(b"p", encode("purge", &log_id).map_err(werr)?)];
        if let Some(v) = vote {
            records.push((b"v", encode("vote", &v).map_err(werr)?));
        }
        records.push((b"c", encode("committed", &committed).map_err(werr)?));
        let lsns = self.append_durable(records).await.map_err(werr)?;
        let keep_from = {
            let mut index = lock(&self.index);
            index.entries = index.entries.split_off(&(log_id.index + 1));
            index.last_purged = Some(log_id);
            index
                .entries
                .values()
                .map(|(lsn, _)| *lsn)
                .min()
                .unwrap_or(lsns.start)
                .min(lsns.start)
        };
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || wal.truncate_before(keep_from))
            .await
            .map_err(|e| StorageIOError::write_logs(&io_err(e)))?
            .map_err(werr)?;
        Ok(())
    }
}
