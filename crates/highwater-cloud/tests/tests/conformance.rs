//! The testkit's store conformance suite against every store: local
//! directory, memory, S3 (moto's server) and Azure (azurite), each case on
//! a fresh store under its own prefix; and the same suite through
//! `EncryptedStore` (at-rest encryption) over each of them.

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

/// `store` behind at-rest encryption.
fn sealed(
    store: Arc<dyn highwater_core::CheckpointStore>,
) -> Arc<dyn highwater_core::CheckpointStore> {
    let keys = highwater_core::Keyring::new(3, highwater_core::DataKey::new([3; 32]));
    Arc::new(highwater_core::EncryptedStore::new(store, Arc::new(keys)))
}

mod encrypted_in_memory {
    highwater_testkit::store_conformance!(|| super::sealed(std::sync::Arc::new(
        highwater_cloud::ObjectCheckpointStore::in_memory()
    )));
}

mod encrypted_local {
    highwater_testkit::store_conformance!(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = highwater_cloud::ObjectCheckpointStore::local(dir.path().join("store"))
            .expect("open a local store");
        (dir, super::sealed(std::sync::Arc::new(store)))
    });
}

mod encrypted_s3 {
    highwater_testkit::store_conformance!(|| super::sealed(super::s3()));
}

mod encrypted_azure {
    highwater_testkit::store_conformance!(|| super::sealed(super::azure()));
}
