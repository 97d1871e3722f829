//! Typed state that cannot be misread: schemas recorded at registration and
//! in manifests, checked on registration and restore; decoders that refuse
//! trailing bytes.

use std::sync::Arc;

use highwater::core::KeyedStateContext;
use highwater::memory::MemoryBackend;
use highwater::{ErrorKind, StateBackend, ValueStateDescriptor};

use crate::common::{config, counter, manager_with, memory_manager};

#[test]
fn a_state_registered_as_u64_cannot_be_read_as_string() {
    let m = memory_manager(config(false, 4, 2));
    let counts = counter(&m);
    counts.update(&"a".to_string(), &0).unwrap();
    let err = m
        .keyed_state("counter")
        .unwrap()
        .value_state::<String, String>(&ValueStateDescriptor::new("n"))
        .err()
        .expect("a second handle with another value type is refused");
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
    let msg = err.to_string();
    for part in [
        "operator=counter",
        "state=n",
        "value=u64> v1",
        "value=alloc::string::String> v1",
    ] {
        assert!(msg.contains(part), "{part} missing from {msg}");
    }
    // Another schema version of the same types is refused too.
    let err = m
        .keyed_state("counter")
        .unwrap()
        .value_state::<String, u64>(&ValueStateDescriptor::new("n").with_schema_version(2))
        .err()
        .expect("another schema version is refused");
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
    // The original handle still works.
    assert_eq!(counts.get(&"a".to_string()).unwrap(), Some(0));
}

#[test]
fn bytes_of_another_type_are_refused_by_the_decoder() {
    // Two independent contexts (as two programs over one backend would be)
    // share no registry: only the decoder stands between "hello" and 5.
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let writer = KeyedStateContext::new(backend.clone(), "op", 128).unwrap();
    writer
        .value_state::<String, String>(&ValueStateDescriptor::new("s"))
        .unwrap()
        .update(&"k".to_string(), &"hello".to_string())
        .unwrap();
    let reader = KeyedStateContext::new(backend, "op", 128).unwrap();
    let err = reader
        .value_state::<String, u64>(&ValueStateDescriptor::new("s"))
        .unwrap()
        .get(&"k".to_string())
        .expect_err("\"hello\" must not read as a u64");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().contains("trailing bytes"), "{err}");
}

#[test]
fn manifests_record_schemas_and_restores_check_them_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let store = || {
        Arc::new(highwater::cloud::ObjectCheckpointStore::local(dir.path()).unwrap())
            as Arc<dyn highwater::CheckpointStore>
    };
    let m = manager_with(store(), config(false, 4, 4));
    let counts = counter(&m);
    counts.update(&"a".to_string(), &7).unwrap();
    let windows = m
        .keyed_state("windows")
        .unwrap()
        .value_state::<u32, Vec<u8>>(&ValueStateDescriptor::new("w").with_schema_version(3))
        .unwrap()
        .in_namespace(&9u64)
        .unwrap();
    windows.update(&1, &vec![1, 2]).unwrap();
    let info = m.checkpoint().unwrap().wait().unwrap();
    let manifest = &m.checkpoint_history().unwrap()[0];
    let manifest = manifest.manifest.as_ref().unwrap();
    let n = manifest
        .schema("counter", "n")
        .expect("schema of counter/n");
    assert_eq!(n.value_type, "u64");
    assert_eq!(n.key_type, "alloc::string::String");
    let w = manifest
        .schema("windows", "w")
        .expect("schema of windows/w");
    assert_eq!(w.version, 3);
    assert_eq!(w.namespace_type.as_deref(), Some("u64"));
    m.close().unwrap();

    // A new job whose handle asks for another type: the restore is refused
    // before anything is loaded.
    let m2 = manager_with(store(), config(false, 4, 4));
    let wrong = m2
        .keyed_state("counter")
        .unwrap()
        .value_state::<String, i64>(&ValueStateDescriptor::new("n"))
        .unwrap();
    wrong.update(&"live".to_string(), &-1).unwrap();
    let err = m2.restore(info.id).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch, "{err}");
    assert!(err.to_string().contains("stored=value<"), "{err}");
    assert_eq!(wrong.get(&"live".to_string()).unwrap(), Some(-1));
    assert_eq!(m2.backend().stats().entries, 1, "nothing was loaded");

    // A new job that restores first, then asks for another type.
    let m3 = manager_with(store(), config(false, 4, 4));
    m3.restore(info.id).unwrap();
    let err = m3
        .keyed_state("windows")
        .unwrap()
        .value_state::<u32, Vec<u8>>(&ValueStateDescriptor::new("w"))
        .err()
        .expect("version 1 where version 3 is stored");
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
    let w = m3
        .keyed_state("windows")
        .unwrap()
        .value_state::<u32, Vec<u8>>(&ValueStateDescriptor::new("w").with_schema_version(3))
        .unwrap();
    let err = w
        .in_namespace(&9u32)
        .err()
        .expect("u32 namespace where u64 is stored");
    assert_eq!(err.kind(), ErrorKind::SchemaMismatch);
    assert_eq!(
        w.in_namespace(&9u64).unwrap().get(&1).unwrap(),
        Some(vec![1, 2])
    );
    assert_eq!(counter(&m3).get(&"a".to_string()).unwrap(), Some(7));
}
