//! A stopped node's ledger, read from its data directory (what
//! `highwater inspect` and `highwater verify` show of a Raft job when no
//! node runs).
//!
//! The ledger is the newest snapshot (`snapshot.current` and its artifact
//! in the snapshot store) with the log's committed entries after it
//! applied, exactly as a node that starts rebuilds it before it hears from
//! any peer. Entries past the saved committed index are not applied: they
//! may never have been committed.

use std::path::Path;

use highwater_core::{CheckpointStore, Error, Result};
use openraft::EntryPayload;

use crate::ledger::Ledger;
use crate::log_store::WalLogStore;
use crate::state_machine::read_snapshot;

/// The directory of a node's Raft log inside its data directory.
const LOG_DIR: &str = "raft-log";

/// A node's ledger as [`read_ledger`] rebuilt it from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLedger {
    /// The ledger as of [`applied_index`](Self::applied_index).
    pub ledger: Ledger,
    /// The Raft log index the ledger is applied up to (0: nothing yet).
    pub applied_index: u64,
    /// The log index of the snapshot it started from (0: no snapshot).
    pub snapshot_index: u64,
}

/// Reads the ledger of the stopped node whose data directory is
/// `data_dir` (`DistributedConfig::data_dir`), its snapshots in
/// `snapshots` (the store the node was started with): the newest snapshot,
/// then the log's entries after it up to the saved committed index.
///
/// The log is opened as a node opens it: under its exclusive lock (and,
/// as at every node start, a new empty log segment is begun). A node that
/// is running holds that lock: then this fails with
/// [`Error::AlreadyExists`] naming the directory; ask the node instead
/// ([`query_status`](crate::query_status)). A missing directory or log is
/// [`Error::NotFound`]; a damaged log or snapshot, or a log that lacks
/// committed entries after the snapshot, is [`Error::Corrupt`] (or
/// [`Error::UnsupportedVersion`]); nothing here panics or allocates from a
/// length it read.
pub async fn read_ledger(data_dir: &Path, snapshots: &dyn CheckpointStore) -> Result<StoredLedger> {
    if !data_dir.is_dir() {
        return Err(Error::NotFound(format!(
            "raft data directory {}",
            data_dir.display()
        )));
    }
    let log_dir = data_dir.join(LOG_DIR);
    if !log_dir.is_dir() {
        return Err(Error::NotFound(format!(
            "raft log {} (is {} a node's data directory?)",
            log_dir.display(),
            data_dir.display()
        )));
    }
    let dir = log_dir.clone();
    let log = tokio::task::spawn_blocking(move || WalLogStore::open(&dir))
        .await
        .map_err(|e| Error::unexpected("open the raft log", e))?
        .map_err(|e| match e {
            Error::AlreadyExists(_) => Error::AlreadyExists(format!(
                "the raft log {} is locked: its node is running (query it instead)",
                log_dir.display()
            )),
            other => other,
        })?;
    // The lock is held until the log is closed, after the snapshot is read:
    // a node that starts meanwhile cannot replace it.
    let read = rebuild(data_dir, snapshots, &log).await;
    let closed = tokio::task::spawn_blocking(move || log.close())
        .await
        .map_err(|e| Error::unexpected("close the raft log", e))?;
    let stored = read?;
    closed?;
    Ok(stored)
}

async fn rebuild(
    data_dir: &Path,
    snapshots: &dyn CheckpointStore,
    log: &WalLogStore,
) -> Result<StoredLedger> {
    let (mut ledger, snapshot_index) = match read_snapshot(data_dir, snapshots).await? {
        Some((_, _, body)) => (body.ledger, body.last_applied.map_or(0, |l| l.index)),
        None => (Ledger::new(), 0),
    };
    let stored = log.stored();
    let committed = stored.committed.map_or(0, |c| c.index);
    let purged = stored.last_purged.map_or(0, |p| p.index);
    if purged > snapshot_index {
        return Err(Error::corrupt(
            "raft log",
            format!(
                "entries up to index {purged} were purged but the snapshot ends at index {snapshot_index}: {}",
                data_dir.display()
            ),
        ));
    }
    let mut applied = snapshot_index;
    for entry in stored.entries {
        let index = entry.log_id.index;
        if index <= applied {
            continue;
        }
        if index > committed {
            break;
        }
        if Some(index) != applied.checked_add(1) {
            return Err(Error::corrupt(
                "raft log",
                format!(
                    "entry {index} follows {applied}: committed entries are missing in {}",
                    data_dir.display()
                ),
            ));
        }
        if let EntryPayload::Normal(command) = &entry.payload {
            ledger.apply(index, command);
        }
        applied = index;
    }
    if applied < committed {
        return Err(Error::corrupt(
            "raft log",
            format!(
                "committed up to index {committed} but the entries end at index {applied}: {}",
                data_dir.display()
            ),
        ));
    }
    Ok(StoredLedger {
        ledger,
        applied_index: applied,
        snapshot_index,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use highwater_cloud::ObjectCheckpointStore;

    use super::*;
    use crate::{CheckpointCoordinator, ClusterSecret, DistributedConfig};

    fn store(dir: &Path) -> Arc<dyn CheckpointStore> {
        Arc::new(ObjectCheckpointStore::local(dir.join("snapshots")).unwrap())
    }

    /// A one-node cluster in `dir` that completed `n` checkpoints, with a
    /// snapshot every few entries; its ledger when it stopped.
    async fn run_node(dir: &Path, n: u64) -> Ledger {
        let secret = ClusterSecret::new(b"the offline ledger test's secret".to_vec()).unwrap();
        let mut config =
            DistributedConfig::new(1, "127.0.0.1:0".parse().unwrap(), dir).secret(secret);
        config.snapshot_every = 5;
        let node = CheckpointCoordinator::start(config, store(dir))
            .await
            .unwrap();
        node.wait_for_leader(Duration::from_secs(10)).await.unwrap();
        for _ in 0..n {
            let id = node.trigger_checkpoint().await.unwrap();
            let part = format!("participants/1@{}", id.0);
            crate::hostile_tests::acknowledge_and_wait(&node, id, &part).await;
        }
        // While the node runs its log is locked: a typed refusal.
        let running = read_ledger(dir, &*store(dir)).await;
        assert!(
            matches!(running, Err(Error::AlreadyExists(ref m)) if m.contains("running")),
            "{running:?}"
        );
        let ledger = node.ledger();
        node.shutdown().await.unwrap();
        ledger
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_node_s_ledger_is_read_from_its_snapshot_and_log() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let live = run_node(dir, 4).await;
        let stored = read_ledger(dir, &*store(dir)).await.unwrap();
        assert!(stored.snapshot_index > 0, "{stored:?}");
        assert!(stored.applied_index >= stored.snapshot_index);
        assert_eq!(stored.ledger.latest_completed(), live.latest_completed());
        assert_eq!(stored.ledger.completed_total(), 4);
        assert_eq!(
            stored.ledger.checkpoints().collect::<Vec<_>>(),
            live.checkpoints().collect::<Vec<_>>()
        );
        // Reading twice gives the same ledger (the read changes nothing
        // the ledger depends on).
        assert_eq!(read_ledger(dir, &*store(dir)).await.unwrap(), stored);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn damaged_or_missing_data_is_a_typed_error_never_a_panic() {
        // Not a node's directory at all.
        let tmp = tempfile::tempdir().unwrap();
        let missing = read_ledger(&tmp.path().join("nope"), &*store(tmp.path())).await;
        assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
        let empty = read_ledger(tmp.path(), &*store(tmp.path())).await;
        assert!(matches!(empty, Err(Error::NotFound(_))), "{empty:?}");

        // A garbled or oversized snapshot pointer.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        run_node(dir, 3).await;
        let pointer = dir.join("snapshot.current");
        let good = std::fs::read(&pointer).unwrap();
        std::fs::write(&pointer, [0xffu8; 7]).unwrap();
        let r = read_ledger(dir, &*store(dir)).await;
        assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
        std::fs::write(
            &pointer,
            vec![0u8; (crate::state_machine::MAX_POINTER_BYTES + 1) as usize],
        )
        .unwrap();
        let r = read_ledger(dir, &*store(dir)).await;
        assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
        // The pointer's artifact gone.
        std::fs::write(&pointer, &good).unwrap();
        assert!(read_ledger(dir, &*store(dir)).await.is_ok());
        let snaps = store(dir);
        for a in snaps.list_artifacts().await.unwrap() {
            snaps.delete_artifact(a).await.unwrap();
        }
        let r = read_ledger(dir, &*snaps).await;
        assert!(matches!(r, Err(Error::NotFound(_))), "{r:?}");

        // A log cut short or overwritten in the middle, at many places.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        run_node(dir, 3).await;
        std::fs::remove_file(dir.join("snapshot.current")).unwrap();
        let log_dir = dir.join(LOG_DIR);
        let files: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&log_dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        let (segment, original) = files
            .iter()
            .filter(|(p, _)| p.extension().is_some_and(|x| x == "wal"))
            .max_by_key(|(_, b)| b.len())
            .cloned()
            .unwrap();
        let mut failures = 0;
        for cut in [40usize, 64, 100, original.len() / 2, original.len() - 9] {
            let cut = cut.min(original.len());
            for damage in 0..2 {
                // The log as the node left it (each read begins a new
                // segment), then damaged.
                std::fs::remove_dir_all(&log_dir).unwrap();
                std::fs::create_dir_all(&log_dir).unwrap();
                for (p, b) in &files {
                    std::fs::write(p, b).unwrap();
                }
                let mut bytes = original.clone();
                if damage == 0 {
                    bytes.truncate(cut);
                } else {
                    for b in &mut bytes[cut.saturating_sub(8)..cut] {
                        *b ^= 0xa5;
                    }
                }
                std::fs::write(&segment, &bytes).unwrap();
                // Either a typed error, or (a torn tail cut back to whole
                // records) a ledger whose entries stop early: never a
                // panic, never more than the node had.
                match read_ledger(dir, &*store(dir)).await {
                    Ok(s) => assert!(s.ledger.completed_total() <= 3),
                    Err(Error::Corrupt { .. } | Error::UnsupportedVersion { .. }) => failures += 1,
                    Err(other) => panic!("unexpected error kind: {other:?}"),
                }
            }
        }
        assert!(failures > 0, "no damage was detected");
    }
}
