//! The storage layer: openraft's storage suite, and reopening.

use std::sync::Arc;

use highwater_cloud::ObjectCheckpointStore;
use highwater_raft::{LedgerStateMachine, TypeConfig, WalLogStore};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, WalLogStore, LedgerStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, WalLogStore, LedgerStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().unwrap();
        let log = WalLogStore::open(&dir.path().join("log")).unwrap();
        let store = Arc::new(ObjectCheckpointStore::local(dir.path().join("snapshots")).unwrap());
        let sm = LedgerStateMachine::open(1, dir.path(), store)
            .await
            .unwrap();
        Ok((dir, log, sm))
    }
}

#[test]
fn the_wal_log_and_ledger_state_machine_pass_openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn entry(term: u64, index: u64, checkpoint: u64) -> openraft::Entry<TypeConfig> {
    openraft::Entry {
        log_id: openraft::testing::log_id(term, 1, index),
        payload: openraft::EntryPayload::Normal(highwater_raft::Command::Complete {
            checkpoint: highwater_core::CheckpointId(checkpoint),
        }),
    }
}

async fn all_entries(log: &mut WalLogStore) -> Vec<(u64, u64)> {
    use openraft::RaftLogReader;
    log.try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.log_id.index, e.log_id.leader_id.term))
        .collect()
}

/// Appends, a conflict truncation, a purge and votes, then reopens the log
/// from its files: the index rebuilt from the WAL is exactly the one
/// before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_log_has_the_same_entries_vote_and_purge_point() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let (expected_entries, expected_state, expected_vote) = {
        let mut log = WalLogStore::open(&path).unwrap();
        log.blocking_append((1..=10).map(|i| entry(1, i, i)))
            .await
            .unwrap();
        // A new leader overwrites the suffix from index 7.
        log.truncate(openraft::testing::log_id(1, 1, 7))
            .await
            .unwrap();
        log.blocking_append((7..=12).map(|i| entry(2, i, 100 + i)))
            .await
            .unwrap();
        log.purge(openraft::testing::log_id(1, 1, 4)).await.unwrap();
        log.save_vote(&openraft::Vote::new_committed(2, 3))
            .await
            .unwrap();
        let entries = all_entries(&mut log).await;
        let state = log.get_log_state().await.unwrap();
        let vote = log.read_vote().await.unwrap();
        log.close().unwrap();
        (entries, state, vote)
    };
    assert_eq!(
        expected_entries,
        (5..=6)
            .map(|i| (i, 1))
            .chain((7..=12).map(|i| (i, 2)))
            .collect::<Vec<_>>()
    );
    let mut log = WalLogStore::open(&path).unwrap();
    assert_eq!(all_entries(&mut log).await, expected_entries);
    assert_eq!(log.get_log_state().await.unwrap(), expected_state);
    assert_eq!(log.read_vote().await.unwrap(), expected_vote);
    assert_eq!(expected_state.last_purged_log_id.map(|l| l.index), Some(4));
    assert_eq!(expected_state.last_log_id.map(|l| l.index), Some(12));
}

/// A damaged record in the middle of the log is refused at open with a
/// typed error, never replayed as a shorter log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_a_damaged_durable_record_is_refused() {
    use openraft::storage::RaftLogStorageExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let mut log = WalLogStore::open(&path).unwrap();
        for i in 1..=20 {
            log.blocking_append([entry(1, i, i)]).await.unwrap();
        }
        log.close().unwrap();
    }
    let segment = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 3;
    bytes[middle] ^= 0x5a;
    std::fs::write(&segment, &bytes).unwrap();
    let err = WalLogStore::open(&path).expect_err("damage refused");
    assert!(err.is_corruption(), "{err}");
}
