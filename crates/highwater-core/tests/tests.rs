//! Format fixtures: bytes written by every shipped format version must keep
//! decoding to the same content. Set `HIGHWATER_REGENERATE_FIXTURES=1` to
//! write the fixtures of the *current* version (only when adding a version).

use std::collections::BTreeMap;
use std::path::PathBuf;

use highwater_core::{
    ArtifactId, ArtifactKind, ArtifactRef, CheckpointId, CheckpointKind, Codec, DecodeLimits,
    EncodeOptions, Error, KeyForm, KeyGroup, KeyGroupRange, Layer, LayerKind, Manifest,
    RecordWriter, StateKey, StateKind, StateSchema, TtlConfig, decode_artifact, decode_checked,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn records_v1() -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0u16..40)
        .map(|i| {
            let key = StateKey {
                key_group: KeyGroup(i % 8),
                operator: "windows",
                state: "open",
                key: &i.to_le_bytes(),
                namespace: b"",
                user_key: &[0, i as u8],
            }
            .encode()
            .unwrap();
            let value = (i % 5 != 0).then(|| {
                let mut v = vec![0u8];
                v.extend(std::iter::repeat_n(i as u8, 20));
                v
            });
            (key, value)
        })
        .collect()
}

fn artifact_v1() -> Vec<u8> {
    let mut recs = records_v1();
    recs.sort();
    let mut w = RecordWriter::new(ArtifactKind::Delta, 0);
    for (k, v) in &recs {
        w.push(k, v.as_deref()).unwrap();
    }
    w.finish(&EncodeOptions::default()).unwrap().bytes
}

fn manifest_v1(artifact: &[u8]) -> Manifest {
    Manifest {
        checkpoint_id: CheckpointId(12),
        parent: Some(CheckpointId(11)),
        kind: CheckpointKind::Incremental,
        created_at_ms: 1_795_000_000_000,
        wal_position: Some(4096),
        max_parallelism: 128,
        layers: vec![
            Layer {
                checkpoint_id: CheckpointId(10),
                kind: LayerKind::Full,
                artifacts: vec![],
            },
            Layer {
                checkpoint_id: CheckpointId(12),
                kind: LayerKind::Delta,
                artifacts: vec![ArtifactRef {
                    operator: "windows".into(),
                    key_groups: KeyGroupRange::new(0, 8).unwrap(),
                    id: ArtifactId::of(artifact),
                    entries: 40,
                    logical_bytes: 1234,
                    stored_bytes: artifact.len() as u64,
                    codec: Codec::Zstd,
                }],
            },
        ],
        properties: BTreeMap::from([("job".to_string(), "fixture".to_string())]),
        schemas: Vec::new(),
    }
}

/// The manifest of the version 2 fixture: version 1's, with schemas.
fn manifest_v2(artifact: &[u8]) -> Manifest {
    let mut m = manifest_v1(artifact);
    m.schemas = vec![
        StateSchema {
            operator: "windows".into(),
            state: "open".into(),
            kind: StateKind::Map,
            key_type: "u16".into(),
            namespace_type: Some("u64".into()),
            user_key_type: Some("u8".into()),
            value_type: "alloc::vec::Vec<u8>".into(),
            version: 3,
            ttl: Some(TtlConfig::new(std::time::Duration::from_secs(60))),
        },
        StateSchema {
            operator: "windows".into(),
            state: "total".into(),
            kind: StateKind::Value,
            key_type: "u16".into(),
            namespace_type: None,
            user_key_type: None,
            value_type: "u64".into(),
            version: 1,
            ttl: None,
        },
    ];
    m
}

#[test]
fn version_2_manifest_fixture_decodes_with_its_schemas() {
    if std::env::var_os("HIGHWATER_REGENERATE_FIXTURES").is_some() {
        let a = std::fs::read(fixture("artifact-v1.hwa")).unwrap();
        std::fs::write(
            fixture("manifest-v2.hwm"),
            manifest_v2(&a).encode().unwrap(),
        )
        .unwrap();
    }
    let artifact = std::fs::read(fixture("artifact-v1.hwa")).unwrap();
    let bytes = std::fs::read(fixture("manifest-v2.hwm")).unwrap();
    assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 2);
    let m = Manifest::decode(&bytes).unwrap();
    assert_eq!(m, manifest_v2(&artifact));
    assert_eq!(m.schema("windows", "total").unwrap().value_type, "u64");
    assert_eq!(
        bytes,
        manifest_v2(&artifact).encode().unwrap(),
        "the v2 encoder is stable"
    );
    // A version 1 manifest re-encodes as version 2 without schemas.
    let v1 = Manifest::decode(&std::fs::read(fixture("manifest-v1.hwm")).unwrap()).unwrap();
    assert!(v1.schemas.is_empty());
    let again = v1.encode().unwrap();
    assert_eq!(u16::from_le_bytes([again[4], again[5]]), 2);
    assert_eq!(Manifest::decode(&again).unwrap(), v1);
}

#[test]
fn version_1_fixtures_still_decode() {
    // Version 1 fixtures are never regenerated: this build writes
    // manifests of version 2 (see `version_2_manifest_fixture_...`).
    let artifact = std::fs::read(fixture("artifact-v1.hwa")).unwrap();
    let decoded = decode_artifact(&artifact, &DecodeLimits::default()).unwrap();
    let got: Vec<_> = decoded
        .records()
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))))
        .collect::<Result<_, Error>>()
        .unwrap();
    let mut want = records_v1();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(artifact, artifact_v1(), "the v1 encoder is stable");

    let manifest = std::fs::read(fixture("manifest-v1.hwm")).unwrap();
    assert_eq!(Manifest::decode(&manifest).unwrap(), manifest_v1(&artifact));
}

#[test]
fn a_future_version_is_a_typed_error() {
    let mut artifact = std::fs::read(fixture("artifact-v1.hwa")).unwrap();
    artifact[4] = 3;
    // The header checksum covers the version, so recompute it as a writer of
    // version 3 would have.
    let sum = xxhash_rust::xxh3::xxh3_64(&artifact[..40]);
    artifact[40..48].copy_from_slice(&sum.to_le_bytes());
    assert!(matches!(
        decode_artifact(&artifact, &DecodeLimits::default()),
        Err(Error::UnsupportedVersion { found: 3, .. })
    ));

    let mut manifest = std::fs::read(fixture("manifest-v2.hwm")).unwrap();
    manifest[4] = 3;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&manifest[..12]);
    h.update(&manifest[20..]);
    manifest[12..20].copy_from_slice(&h.digest().to_le_bytes());
    assert!(matches!(
        Manifest::decode(&manifest),
        Err(Error::UnsupportedVersion { found: 3, .. })
    ));
}

/// The records of `records_v1` with operator-relative keys (version 2).
fn artifact_v2() -> Vec<u8> {
    let mut recs = records_v1();
    recs.sort();
    let op = "windows".len();
    let mut w = RecordWriter::with_form(ArtifactKind::Delta, KeyForm::OperatorRelative, 0);
    for (k, v) in &recs {
        let mut rel = k[..2].to_vec();
        rel.extend_from_slice(&k[3 + op..]);
        w.push(&rel, v.as_deref()).unwrap();
    }
    w.finish(&EncodeOptions::default()).unwrap().bytes
}

#[test]
fn version_2_fixture_decodes_with_the_operator_of_its_reference() {
    if std::env::var_os("HIGHWATER_REGENERATE_FIXTURES").is_some() {
        std::fs::write(fixture("artifact-v2.hwa"), artifact_v2()).unwrap();
    }
    let artifact = std::fs::read(fixture("artifact-v2.hwa")).unwrap();
    assert_eq!(artifact, artifact_v2(), "the v2 encoder is stable");
    let m = manifest_v1(&artifact);
    let mut r = m.layers[1].artifacts[0].clone();
    let got = decode_checked(
        m.checkpoint_id,
        LayerKind::Delta,
        &r,
        &artifact,
        &DecodeLimits::default(),
    )
    .unwrap();
    let mut want = records_v1();
    want.sort();
    let got: Vec<(Vec<u8>, Option<Vec<u8>>)> = got
        .iter()
        .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(got, want);
    // The same bytes under another operator's reference are that
    // operator's state: this is what lets identical state be stored once.
    r.operator = "joins".into();
    let other = decode_checked(
        m.checkpoint_id,
        LayerKind::Delta,
        &r,
        &artifact,
        &DecodeLimits::default(),
    )
    .unwrap();
    assert_eq!(other.len(), want.len());
    for ((k, v), (wk, wv)) in other.iter().zip(&want) {
        assert_eq!(StateKey::decode(k).unwrap().operator, "joins");
        assert_eq!(&k[3 + "joins".len()..], &wk[3 + "windows".len()..]);
        assert_eq!(v, wv.as_deref());
    }
}
