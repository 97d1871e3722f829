//! The replicated state machine: applies committed entries to the
//! [`Ledger`], announces barriers, and keeps snapshots in a
//! [`CheckpointStore`].
//!
//! A snapshot is the postcard encoding of the ledger, the last applied log
//! id and the membership, framed with a magic, a format version and an xxh3
//! checksum. It is stored as a content-addressed artifact in the node's
//! checkpoint store; a small pointer file (`snapshot.current`, written to a
//! temporary file, fsync'd, renamed, directory fsync'd) names the current
//! one. On open the state machine loads the snapshot the pointer names, and
//! openraft re-applies the committed log after it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use highwater_core::{ArtifactId, CheckpointStore, Error, Result};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::TypeConfig;
use crate::ledger::{Command, Ledger, NodeId, Outcome};

const SNAPSHOT_MAGIC: &[u8; 8] = b"HWRAFTS\x01";
const SNAPSHOT_VERSION: u16 = 1;
const POINTER_FILE: &str = "snapshot.current";
/// Snapshots larger than this are refused when decoding.
pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;

/// Something the local engine should know about, in log order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEvent {
    /// A checkpoint was triggered and this node is a participant: take your
    /// part of it and call `report_completion`.
    Barrier {
        /// The checkpoint.
        checkpoint: highwater_core::CheckpointId,
        /// Unix time in milliseconds of the trigger.
        time_ms: u64,
    },
    /// A checkpoint became completed (log index of the completion).
    Completed {
        /// The checkpoint.
        checkpoint: highwater_core::CheckpointId,
        /// Raft log index of the completion.
        log_index: u64,
    },
    /// A checkpoint was aborted.
    Aborted {
        /// The checkpoint.
        checkpoint: highwater_core::CheckpointId,
        /// Why, as text.
        reason: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotBody {
    pub(crate) last_applied: Option<LogId<NodeId>>,
    pub(crate) membership: StoredMembership<NodeId, BasicNode>,
    pub(crate) ledger: Ledger,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pointer {
    meta: SnapshotMeta<NodeId, BasicNode>,
    artifact: ArtifactId,
}

pub(crate) struct SmInner {
    pub(crate) ledger: Ledger,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    current: Option<(SnapshotMeta<NodeId, BasicNode>, Bytes)>,
    snapshot_seq: u64,
}

impl SmInner {
    fn current_artifact(&self) -> Option<ArtifactId> {
        self.current.as_ref().map(|(_, data)| ArtifactId::of(data))
    }
}

/// The state machine of one node (openraft's [`RaftStateMachine`]).
#[derive(Clone)]
pub struct LedgerStateMachine {
    node_id: NodeId,
    pub(crate) inner: Arc<Mutex<SmInner>>,
    store: Arc<dyn CheckpointStore>,
    dir: PathBuf,
    events: broadcast::Sender<LedgerEvent>,
    applied: watch::Sender<u64>,
}

fn lock(m: &Mutex<SmInner>) -> MutexGuard<'_, SmInner> {
    // Each method updates the state in one step under the lock.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn encode_snapshot(body: &SnapshotBody) -> Result<Vec<u8>> {
    let payload = postcard::to_allocvec(body).map_err(|e| Error::Serialization {
        context: "raft snapshot".into(),
        source: e.into(),
    })?;
    let mut out = Vec::with_capacity(payload.len() + 18);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotBody> {
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(Error::corrupt(
            "raft snapshot",
            format!("too large: len={}", bytes.len()),
        ));
    }
    if bytes.len() < 18 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(Error::corrupt(
            "raft snapshot",
            format!("bad magic or header: len={}", bytes.len()),
        ));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != SNAPSHOT_VERSION {
        return Err(Error::UnsupportedVersion {
            what: "raft snapshot",
            found: version,
            supported: SNAPSHOT_VERSION,
        });
    }
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[10..18]);
    let payload = &bytes[18..];
    let actual = xxhash_rust::xxh3::xxh3_64(payload);
    if u64::from_le_bytes(sum) != actual {
        return Err(Error::corrupt(
            "raft snapshot",
            format!(
                "checksum mismatch: stored={:016x} actual={actual:016x}",
                u64::from_le_bytes(sum)
            ),
        ));
    }
    postcard::from_bytes(payload)
        .map_err(|e| Error::corrupt("raft snapshot", format!("undecodable: {e}")))
}

/// Writes `bytes` to `dir/name` atomically and durably.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |context: String| move |source| Error::Io { context, source };
    let tmp = dir.join(format!("{name}.tmp"));
    let dst = dir.join(name);
    let mut f = std::fs::File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
    f.write_all(bytes)
        .map_err(io(format!("writing {}", tmp.display())))?;
    f.sync_all()
        .map_err(io(format!("fsync {}", tmp.display())))?;
    drop(f);
    std::fs::rename(&tmp, &dst).map_err(io(format!("renaming to {}", dst.display())))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("fsync dir {}", dir.display())))?;
    Ok(())
}

/// The longest snapshot pointer file read (a pointer is a few hundred
/// bytes: the snapshot's meta and an artifact id).
pub(crate) const MAX_POINTER_BYTES: u64 = 1 << 20;

/// The snapshot `dir/snapshot.current` names, read from `store` and
/// checked (pointer, artifact id, frame, checksum); `None` when there is no
/// pointer (the node never took or received a snapshot).
pub(crate) async fn read_snapshot(
    dir: &Path,
    store: &dyn CheckpointStore,
) -> Result<Option<(SnapshotMeta<NodeId, BasicNode>, Bytes, SnapshotBody)>> {
    let pointer_path = dir.join(POINTER_FILE);
    let bytes = match std::fs::metadata(&pointer_path) {
        Ok(m) if m.len() > MAX_POINTER_BYTES => {
            return Err(Error::corrupt(
                "raft snapshot pointer",
                format!("too large: len={} path={}", m.len(), pointer_path.display()),
            ));
        }
        Ok(_) => std::fs::read(&pointer_path),
        Err(e) => Err(e),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Io {
                context: format!("reading {}", pointer_path.display()),
                source: e,
            });
        }
    };
    let pointer: Pointer = postcard::from_bytes(&bytes).map_err(|e| {
        Error::corrupt(
            "raft snapshot pointer",
            format!("{e}: path={}", pointer_path.display()),
        )
    })?;
    let data = store.get_artifact(pointer.artifact).await?;
    if ArtifactId::of(&data) != pointer.artifact {
        return Err(Error::corrupt(
            "raft snapshot",
            format!(
                "artifact content does not match its id: id={}",
                pointer.artifact.to_hex()
            ),
        ));
    }
    let body = decode_snapshot(&data)?;
    Ok(Some((pointer.meta, data, body)))
}

/// An I/O error for openraft's storage API, keeping `e` as its source.
fn sm_err(e: impl Into<highwater_core::BoxError>) -> std::io::Error {
    std::io::Error::other(e)
}

impl LedgerStateMachine {
    /// Opens the state machine of node `node_id`: loads the current snapshot
    /// named by `dir/snapshot.current` from `store`, if any.
    pub async fn open(
        node_id: NodeId,
        dir: &Path,
        store: Arc<dyn CheckpointStore>,
    ) -> Result<LedgerStateMachine> {
        let mut inner = SmInner {
            ledger: Ledger::new(),
            last_applied: None,
            membership: StoredMembership::default(),
            current: None,
            snapshot_seq: 0,
        };
        if let Some((meta, data, body)) = read_snapshot(dir, &*store).await? {
            inner.ledger = body.ledger;
            inner.last_applied = body.last_applied;
            inner.membership = body.membership;
            inner.current = Some((meta, data));
        }
        let applied_index = inner.last_applied.map_or(0, |l| l.index);
        Ok(LedgerStateMachine {
            node_id,
            inner: Arc::new(Mutex::new(inner)),
            store,
            dir: dir.to_path_buf(),
            events: broadcast::channel(4096).0,
            applied: watch::channel(applied_index).0,
        })
    }

    /// Subscribes to ledger events applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LedgerEvent> {
        self.events.subscribe()
    }

    /// A receiver of the last applied log index.
    pub fn applied_index(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// A copy of the ledger as applied so far.
    pub fn ledger(&self) -> Ledger {
        lock(&self.inner).ledger.clone()
    }

    /// `f` of the applied ledger, read in place (no copy; applying waits
    /// meanwhile, so keep `f` short).
    pub(crate) fn with_ledger<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&lock(&self.inner).ledger)
    }

    /// Stores `data` as the current snapshot: artifact first, then the
    /// pointer (so the pointer never names a missing artifact), then the
    /// previous snapshot's artifact is deleted.
    async fn persist(&self, meta: &SnapshotMeta<NodeId, BasicNode>, data: Bytes) -> Result<()> {
        let previous = lock(&self.inner).current_artifact();
        let id = ArtifactId::of(&data);
        self.store.put_artifact(id, data).await?;
        let pointer = Pointer {
            meta: meta.clone(),
            artifact: id,
        };
        let bytes = postcard::to_allocvec(&pointer).map_err(|e| Error::Serialization {
            context: "raft snapshot pointer".into(),
            source: e.into(),
        })?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomic(&dir, POINTER_FILE, &bytes))
            .await
            .map_err(|e| Error::unexpected("the snapshot pointer writer", e))??;
        if let Some(old) = previous.filter(|old| *old != id) {
            // Only the pointer's artifact is needed from here on; a failed
            // delete leaves garbage, never a dangling pointer.
            if let Err(e) = self.store.delete_artifact(old).await {
                tracing::warn!(artifact = %old.to_hex(), error = %e, "could not delete an old raft snapshot");
            }
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for LedgerStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (body, seq) = {
            let mut inner = lock(&self.inner);
            inner.snapshot_seq += 1;
            (
                SnapshotBody {
                    last_applied: inner.last_applied,
                    membership: inner.membership.clone(),
                    ledger: inner.ledger.clone(),
                },
                inner.snapshot_seq,
            )
        };
        let werr = |e: Error| StorageIOError::write_snapshot(None, &sm_err(e));
        let data = Bytes::from(encode_snapshot(&body).map_err(werr)?);
        let snapshot_id = match body.last_applied {
            Some(l) => format!("{}-{}-{}-{seq}", l.leader_id, l.index, self.node_id),
            None => format!("none-{}-{seq}", self.node_id),
        };
        let meta = SnapshotMeta {
            last_log_id: body.last_applied,
            last_membership: body.membership.clone(),
            snapshot_id,
        };
        self.persist(&meta, data.clone()).await.map_err(werr)?;
        lock(&self.inner).current = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for LedgerStateMachine {
    type SnapshotBuilder = LedgerStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let inner = lock(&self.inner);
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut events = Vec::new();
        let last_index;
        {
            let mut inner = lock(&self.inner);
            for entry in entries {
                inner.last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => Outcome::Noop,
                    EntryPayload::Membership(m) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), m);
                        Outcome::Noop
                    }
                    EntryPayload::Normal(ref command) => {
                        let outcome = inner.ledger.apply(entry.log_id.index, command);
                        match (&outcome, command) {
                            (
                                Outcome::Triggered(id),
                                Command::Trigger {
                                    time_ms,
                                    participants,
                                    ..
                                },
                            ) if participants.contains(&self.node_id) => {
                                events.push(LedgerEvent::Barrier {
                                    checkpoint: *id,
                                    time_ms: *time_ms,
                                });
                            }
                            (Outcome::Completed(id), _) => events.push(LedgerEvent::Completed {
                                checkpoint: *id,
                                log_index: entry.log_id.index,
                            }),
                            (Outcome::Aborted(id), Command::Abort { reason, .. }) => {
                                events.push(LedgerEvent::Aborted {
                                    checkpoint: *id,
                                    reason: reason.to_string(),
                                })
                            }
                            _ => {}
                        }
                        outcome
                    }
                };
                out.push(outcome);
            }
            last_index = inner.last_applied.map_or(0, |l| l.index);
        }
        for e in events {
            // No receiver is not an error: the engine may not listen.
            let _ = self.events.send(e);
        }
        self.applied.send_replace(last_index);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = Bytes::from(snapshot.into_inner());
        let rerr = |e: Error| StorageIOError::read_snapshot(Some(meta.signature()), &sm_err(e));
        let body = decode_snapshot(&data).map_err(rerr)?;
        self.persist(meta, data.clone())
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &sm_err(e)))?;
        let mut barriers = Vec::new();
        let last_index = {
            let mut inner = lock(&self.inner);
            for c in body.ledger.pending() {
                let known = inner.ledger.get(c.id).is_some();
                if !known
                    && c.participants.contains(&self.node_id)
                    && !c.acks.contains_key(&self.node_id)
                {
                    barriers.push(LedgerEvent::Barrier {
                        checkpoint: c.id,
                        time_ms: c.triggered_ms,
                    });
                }
            }
            inner.ledger = body.ledger;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.current = Some((meta.clone(), data));
            inner.last_applied.map_or(0, |l| l.index)
        };
        for b in barriers {
            let _ = self.events.send(b);
        }
        self.applied.send_replace(last_index);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = lock(&self.inner);
        Ok(inner.current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_decoding_refuses_damaged_bytes() {
        let body = SnapshotBody {
            last_applied: None,
            membership: StoredMembership::default(),
            ledger: Ledger::new(),
        };
        let good = encode_snapshot(&body).unwrap();
        assert!(decode_snapshot(&good).is_ok());
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(matches!(
            decode_snapshot(&flipped),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            decode_snapshot(&good[..10]),
            Err(Error::Corrupt { .. })
        ));
        let mut version = good.clone();
        version[8] = 9;
        assert!(matches!(
            decode_snapshot(&version),
            Err(Error::UnsupportedVersion { found: 9, .. })
        ));
    }
}
