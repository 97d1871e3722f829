//! Conformance case: native checkpoints (a backend's own files).

use bytes::Bytes;
use highwater_core::key::key_group_of;
use highwater_core::{ArtifactId, KeyGroupRange, NativeFileRef, NativeFilesInMemory};

use super::*;

/// The files of a native snapshot, read from its directory.
fn native_files(s: &dyn StateSnapshot, ctx: &str) -> Vec<(String, Bytes)> {
    let native = s
        .native()
        .unwrap_or_else(|| panic!("{ctx}: a native snapshot does not name its files"));
    assert!(
        !native.files.is_empty(),
        "{ctx}: a native checkpoint without files"
    );
    native
        .files
        .iter()
        .map(|f| {
            let path = native.dir.join(&f.name);
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{ctx}: read {}: {e}", path.display()));
            assert_eq!(bytes.len() as u64, f.len, "{ctx}: length of {}", f.name);
            (f.name.clone(), Bytes::from(bytes))
        })
        .collect()
}

/// [`StateBackend::native`]: a backend either has no native checkpoints
/// (`None`; the checkpointer then encodes its snapshots, which every other
/// case covers), or:
///
/// - its native snapshot is a full, consistent cut: it reads, entry by
///   entry, as the state when it was taken, whatever is written after;
/// - its files restore into a fresh backend of the same kind as exactly
///   that state, and with a key-group range as exactly the state of those
///   key groups (a rescaling restore);
/// - a restore whose files stop with an error, or lack files, fails and
///   leaves the target's state as it was.
pub fn native_checkpoints(factory: BackendFactory<'_>) {
    let ctx = "native_checkpoints";
    let b = factory();
    let Some(native) = b.native() else {
        return;
    };
    let mut rng = SplitMix64::new(0x6e61_7469_7665);
    let mut expected = Entries::new();
    for i in 0..2_000u64 {
        let k = encode_key((i % 128) as u16, "op", "s", &i.to_le_bytes(), b"", b"");
        let v = random_value(&mut rng);
        must(b.put(&k, &v), &format!("{ctx}: put"));
        expected.insert(k, v);
    }
    let s = must(native.native_snapshot(), &format!("{ctx}: native_snapshot"));
    assert_eq!(s.kind(), SnapshotKind::Full, "{ctx}: snapshot kind");
    // Later writes must not reach the snapshot or its files.
    for (k, _) in expected.iter().take(100) {
        must(b.delete(k), &format!("{ctx}: delete after the snapshot"));
    }
    must(
        b.put(
            &encode_key(3, "op", "s", b"later", b"", b""),
            &plain_value(b"x"),
        ),
        &format!("{ctx}: put after the snapshot"),
    );
    assert_eq!(
        read(&*s, ctx).puts(),
        expected,
        "{ctx}: the snapshot's entries"
    );
    let files = native_files(&*s, ctx);

    let whole = factory();
    let restore = |target: &dyn StateBackend, keep: Option<KeyGroupRange>| {
        let n = target.native().unwrap_or_else(|| {
            panic!("{ctx}: a fresh backend of the same kind lost the capability")
        });
        n.restore_native(&mut NativeFilesInMemory::new(files.iter().cloned()), keep)
    };
    must(restore(&*whole, None), &format!("{ctx}: restore_native"));
    check_content(&*whole, &expected, &format!("{ctx}: restored whole"));

    let keep = must(KeyGroupRange::new(32, 96), &format!("{ctx}: range"));
    let part = factory();
    must(
        restore(&*part, Some(keep)),
        &format!("{ctx}: restore_native {keep}"),
    );
    let in_range: Entries = expected
        .iter()
        .filter(|(k, _)| key_group_of(k).is_ok_and(|kg| keep.contains(kg)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(!in_range.is_empty() && in_range.len() < expected.len());
    check_content(&*part, &in_range, &format!("{ctx}: restored {keep}"));

    // Failed restores leave the target as it was.
    let target = factory();
    let marker = encode_key(7, "op", "s", b"marker", b"", b"");
    must(
        target.put(&marker, &plain_value(b"kept")),
        &format!("{ctx}: put marker"),
    );
    let before: Entries = [(marker.clone(), plain_value(b"kept"))].into();
    let n = target
        .native()
        .unwrap_or_else(|| panic!("{ctx}: a fresh backend of the same kind lost the capability"));
    // Every file listed, the last one's fetch failing.
    let last = files.len() - 1;
    let mut failing =
        NativeFilesInMemory::with_results(files.iter().enumerate().map(|(i, (name, bytes))| {
            let r = NativeFileRef {
                name: name.clone(),
                len: bytes.len() as u64,
                id: ArtifactId::of(bytes),
            };
            let fetched = if i == last {
                Err(Error::corrupt(
                    "artifact",
                    "a file of the checkpoint failed its check",
                ))
            } else {
                Ok(bytes.clone())
            };
            (r, fetched)
        }));
    match n.restore_native(&mut failing, None) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Corruption, "{ctx}: {e}"),
        Ok(()) => panic!("{ctx}: a restore whose files fail succeeded"),
    }
    check_content(&*target, &before, &format!("{ctx}: after a failed restore"));
    if files.len() > 1 {
        let missing = n.restore_native(
            &mut NativeFilesInMemory::new(files.iter().take(1).cloned()),
            None,
        );
        assert!(
            missing.is_err(),
            "{ctx}: a restore from 1 of {} files succeeded",
            files.len()
        );
        check_content(
            &*target,
            &before,
            &format!("{ctx}: after a restore of too few files"),
        );
    }
}
