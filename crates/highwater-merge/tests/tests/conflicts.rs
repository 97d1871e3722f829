//! Merging against a model: random chains (a base and deltas over a small
//! key space, some values with TTL stamps) folded by `merge_layers` under
//! each conflict resolution, compared with a direct fold of the same writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use highwater_core::ttl::Envelope;
use highwater_core::{
    ArtifactId, ArtifactKind, CheckpointId, DecodeLimits, KeyGroup, KeyGroupRange, Layer,
    LayerKind, StateKey, decode_checked, key_group_for,
};
use highwater_merge::{
    ChunkConfig, ConflictResolution, MergeParams, MergerConfig, Produced, encode_group,
    merge_layers,
};
use proptest::prelude::*;

const MAX_PARALLELISM: u16 = 8;
const KGS_PER_GROUP: u16 = 4;
const OP: &str = "windows";

fn full_key(k: u8) -> Vec<u8> {
    let user = [k];
    StateKey {
        key_group: key_group_for(&user, MAX_PARALLELISM),
        operator: OP,
        state: "s",
        key: &user,
        namespace: b"",
        user_key: b"",
    }
    .encode()
    .unwrap()
}

fn relative(full: &[u8]) -> Vec<u8> {
    let mut r = full[..2].to_vec();
    r.extend_from_slice(&full[3 + OP.len()..]);
    r
}

/// A value: plain (tag 0) or with a TTL expiry (tag 1).
fn value(v: u16, expiry: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    Envelope::encode_into(expiry, &v.to_le_bytes(), &mut out);
    out
}

type Writes = BTreeMap<u8, Option<Vec<u8>>>;

struct Store(Mutex<HashMap<ArtifactId, Bytes>>);

impl Store {
    fn sink(&self) -> impl Fn(Produced) -> highwater_core::Result<()> + Sync + '_ {
        move |p: Produced| {
            self.0.lock().unwrap().insert(p.reference.id, p.bytes);
            Ok(())
        }
    }
}

/// A decoded record: key, and value or `None` for a delete.
type Record = (Vec<u8>, Option<Vec<u8>>);

/// Builds one layer from `writes`, chunked small so clusters hold several
/// chunks per layer.
fn layer(store: &Store, id: u64, kind: LayerKind, writes: &Writes, cfg: &MergerConfig) -> Layer {
    let mut by_group: BTreeMap<u16, Vec<Record>> = BTreeMap::new();
    for (k, v) in writes {
        let full = full_key(*k);
        let kg = u16::from_be_bytes([full[0], full[1]]);
        by_group
            .entry(kg / KGS_PER_GROUP)
            .or_default()
            .push((relative(&full), v.clone()));
    }
    let mut artifacts = Vec::new();
    for (g, mut recs) in by_group {
        recs.sort();
        let borrowed: Vec<(&[u8], Option<&[u8]>)> = recs
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
            .collect();
        let range = KeyGroupRange::new(g * KGS_PER_GROUP, (g + 1) * KGS_PER_GROUP).unwrap();
        let kind = match kind {
            LayerKind::Full => ArtifactKind::Entries,
            LayerKind::Delta => ArtifactKind::Delta,
            LayerKind::Native => panic!("the model writes encoded layers only"),
        };
        artifacts.extend(encode_group(OP, range, kind, &borrowed, cfg, &store.sink()).unwrap());
    }
    Layer {
        checkpoint_id: CheckpointId(id),
        kind,
        artifacts,
    }
}

fn stamp(v: &Option<Vec<u8>>) -> Option<u64> {
    v.as_deref()
        .and_then(|v| Envelope::decode(v).ok())
        .and_then(|e| e.expires_at_ms)
}

/// The model: the base, then for every key the deltas' writes resolved by
/// `rule` as docs/merge.md defines it.
fn model(base: &Writes, deltas: &[Writes], rule: ConflictResolution) -> BTreeMap<u8, Vec<u8>> {
    let mut chosen: BTreeMap<u8, Option<Vec<u8>>> = BTreeMap::new();
    for d in deltas {
        for (k, v) in d {
            let replace = match chosen.get(k) {
                None => true,
                Some(old) => match rule {
                    ConflictResolution::LastWriteWins => true,
                    ConflictResolution::FirstWriteWins => false,
                    ConflictResolution::TimestampPriority => stamp(v) >= stamp(old),
                },
            };
            if replace {
                chosen.insert(*k, v.clone());
            }
        }
    }
    let mut state: BTreeMap<u8, Vec<u8>> = base
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect();
    for (k, v) in chosen {
        match v {
            Some(v) => {
                state.insert(k, v);
            }
            None => {
                state.remove(&k);
            }
        }
    }
    state
}

fn writes(deletes: bool) -> impl Strategy<Value = Writes> {
    proptest::collection::btree_map(
        0u8..60,
        (
            any::<u16>(),
            proptest::option::of(0u64..5),
            proptest::bool::weighted(if deletes { 0.25 } else { 0.0 }),
        )
            .prop_map(|(v, ttl, del)| (!del).then(|| value(v, ttl.map(|t| 10_000 + t)))),
        0..40,
    )
}

fn rule() -> impl Strategy<Value = ConflictResolution> {
    prop_oneof![
        Just(ConflictResolution::LastWriteWins),
        Just(ConflictResolution::FirstWriteWins),
        Just(ConflictResolution::TimestampPriority),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn merged_base_equals_the_model_under_every_conflict_rule(
        base in writes(false),
        deltas in proptest::collection::vec(writes(true), 0..5),
        rule in rule(),
    ) {
        let mut cfg = MergerConfig::default();
        cfg.conflict_resolution = rule;
        cfg.chunking = ChunkConfig { min_bytes: 16, target_bytes: 64, max_bytes: 256 };
        let store = Store(Mutex::new(HashMap::new()));
        let mut layers = vec![layer(&store, 1, LayerKind::Full, &base, &cfg)];
        for (i, d) in deltas.iter().enumerate() {
            layers.push(layer(&store, 2 + i as u64, LayerKind::Delta, d, &cfg));
        }
        let params = MergeParams { merger: cfg.clone(), now_ms: 0, limits: DecodeLimits::default() };
        let fetch = |refs: &[&highwater_core::ArtifactRef]| {
            Ok(refs.iter().map(|r| store.0.lock().unwrap().get(&r.id).cloned().expect("artifact stored")).collect())
        };
        let out = merge_layers(&layers, &params, &fetch, &store.sink(), &|_| {}).unwrap();
        prop_assert_eq!(out.layer.kind, LayerKind::Full);
        prop_assert_eq!(out.layer.checkpoint_id, layers.last().unwrap().checkpoint_id);
        let mut got: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        for r in &out.layer.artifacts {
            let bytes = store.0.lock().unwrap().get(&r.id).cloned().unwrap();
            for (k, v) in decode_checked(out.layer.checkpoint_id, LayerKind::Full, r, &bytes, &params.limits).unwrap().iter() {
                let sk = StateKey::decode(k).unwrap();
                prop_assert_eq!(sk.operator, OP);
                prop_assert_eq!(sk.key_group, key_group_for(sk.key, MAX_PARALLELISM));
                prop_assert!(got.insert(sk.key[0], v.unwrap().to_vec()).is_none(), "a key twice in the merged base");
            }
        }
        prop_assert_eq!(&got, &model(&base, &deltas, rule));
        // Clusters no delta touched keep the base's artifacts unchanged.
        let touched: std::collections::BTreeSet<u16> = deltas
            .iter()
            .flat_map(|d| d.keys())
            .map(|k| key_group_for(&[*k], MAX_PARALLELISM).0 / KGS_PER_GROUP)
            .collect();
        for a in &layers[0].artifacts {
            if !touched.contains(&(a.key_groups.start / KGS_PER_GROUP)) {
                prop_assert!(out.layer.artifacts.iter().any(|o| o.id == a.id));
            }
        }
        let _ = KeyGroup(0);
    }
}

/// Expired values are dropped from the clusters a merge rewrites (clusters
/// no delta touched are kept byte for byte; restore drops expired values
/// anyway).
#[test]
fn expired_values_are_dropped_by_the_merge() {
    let cfg = MergerConfig::default();
    let store = Store(Mutex::new(HashMap::new()));
    let group = |k: u8| key_group_for(&[k], MAX_PARALLELISM).0 / KGS_PER_GROUP;
    let same = (2u8..=255).find(|k| group(*k) == group(1)).unwrap();
    let other = (2u8..=255)
        .find(|k| group(*k) == group(1) && *k != same)
        .unwrap();
    let base: Writes =
        BTreeMap::from([(1, Some(value(1, Some(50)))), (same, Some(value(2, None)))]);
    let delta: Writes = BTreeMap::from([(other, Some(value(3, Some(500))))]);
    let layers = vec![
        layer(&store, 1, LayerKind::Full, &base, &cfg),
        layer(&store, 2, LayerKind::Delta, &delta, &cfg),
    ];
    let params = MergeParams {
        merger: cfg.clone(),
        now_ms: 100,
        limits: DecodeLimits::default(),
    };
    let fetch = |refs: &[&highwater_core::ArtifactRef]| {
        Ok(refs
            .iter()
            .map(|r| store.0.lock().unwrap()[&r.id].clone())
            .collect())
    };
    let out = merge_layers(&layers, &params, &fetch, &store.sink(), &|_| {}).unwrap();
    assert_eq!(out.stats.records_out, 2, "{:?}", out.stats);
    assert_eq!(out.stats.expired_dropped, 1);
}

#[test]
fn a_damaged_input_artifact_fails_the_merge_with_a_corruption_error() {
    let cfg = MergerConfig::default();
    let store = Store(Mutex::new(HashMap::new()));
    let base: Writes = (0..30).map(|k| (k, Some(value(k as u16, None)))).collect();
    let delta: Writes = BTreeMap::from([(3, None)]);
    let layers = vec![
        layer(&store, 1, LayerKind::Full, &base, &cfg),
        layer(&store, 2, LayerKind::Delta, &delta, &cfg),
    ];
    let params = MergeParams {
        merger: cfg.clone(),
        now_ms: 0,
        limits: DecodeLimits::default(),
    };
    let fetch = |refs: &[&highwater_core::ArtifactRef]| {
        let damaged = |r: &&highwater_core::ArtifactRef| {
            let mut b = store.0.lock().unwrap()[&r.id].to_vec();
            let last = b.len() - 1;
            b[last] ^= 1;
            Bytes::from(b)
        };
        Ok(refs.iter().map(damaged).collect())
    };
    let err = merge_layers(&layers, &params, &fetch, &store.sink(), &|_| {}).unwrap_err();
    assert!(err.is_corruption(), "{err}");
}
