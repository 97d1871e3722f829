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
