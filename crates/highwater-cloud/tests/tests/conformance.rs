//! The testkit's store conformance suite against every store: local
//! directory, memory, S3 (moto's server) and Azure (azurite), each case on
//! a fresh store under its own prefix.

use std::sync::Arc;

use highwater_cloud::ObjectCheckpointStore;

mod in_memory {
    highwater_testkit::store_conformance!(|| std::sync::Arc::new(
        highwater_cloud::ObjectCheckpointStore::in_memory()
    ));
}

mod local {
    highwater_testkit::store_conformance!(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = highwater_cloud::ObjectCheckpointStore::local(dir.path().join("store"))
            .expect("open a local store");
        (dir, std::sync::Arc::new(store))
    });
}

fn s3() -> Arc<ObjectCheckpointStore> {
    Arc::new(super::common::s3_store("conformance"))
}

fn azure() -> Arc<ObjectCheckpointStore> {
    Arc::new(super::common::azure_store("conformance"))
}

mod s3 {
    highwater_testkit::store_conformance!(super::s3);
}

mod azure {
    highwater_testkit::store_conformance!(super::azure);
}
