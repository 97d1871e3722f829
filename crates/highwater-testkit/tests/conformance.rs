//! Runs the conformance suites against the real implementations in the
//! workspace: the in-memory backend, and the object-store checkpoint store
//! both in memory and on a local directory. This proves the suites pass on
//! correct implementations and keeps the macros compiling.

use std::sync::Arc;

mod memory_backend {
    use super::*;

    highwater_testkit::backend_conformance!(|| Arc::new(highwater_memory::MemoryBackend::new()));
}

mod cloud_in_memory {
    use super::*;

    highwater_testkit::store_conformance!(|| Arc::new(
        highwater_cloud::ObjectCheckpointStore::in_memory()
    ));
}

mod cloud_local {
    use super::*;

    // The temporary directory is the guard: it is removed after the case.
    highwater_testkit::store_conformance!(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = highwater_cloud::ObjectCheckpointStore::local(dir.path())
            .expect("local store in a fresh directory");
        (dir, Arc::new(store))
    });
}

mod cloud_local_async_factory {
    use super::*;

    // The asynchronous form of the macro, for stores that connect.
    highwater_testkit::store_conformance!(async || async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = highwater_cloud::ObjectCheckpointStore::local(dir.path())
            .expect("local store in a fresh directory");
        (dir, Arc::new(store))
    });
}

#[test]
fn case_lists_are_complete() {
    assert_eq!(highwater_testkit::backend::CASE_NAMES.len(), 13);
    assert!(highwater_testkit::backend::CASE_NAMES.contains(&"native_checkpoints"));
    assert_eq!(highwater_testkit::store::CASE_NAMES.len(), 12);
}

#[test]
fn run_all_backend_cases_by_hand() {
    // The non-macro entry point, as an openraft-style `Suite::test_all`.
    // Only a quick smoke check: the macro-generated tests above are the
    // real run.
    let factory = || -> Arc<dyn highwater_core::StateBackend> {
        Arc::new(highwater_memory::MemoryBackend::new())
    };
    highwater_testkit::backend::stats(&factory);
}
