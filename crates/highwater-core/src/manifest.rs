//! Checkpoint manifests: what a checkpoint consists of.
//!
//! A manifest is self-contained: it lists every artifact needed to restore
//! its checkpoint, base layer first and then each incremental delta in
//! order. Deleting an older manifest therefore never breaks a newer one, and
//! retention is reference counting of artifacts over retained manifests.
//!
//! Byte layout (all integers little-endian):
//!
//! ```text
//! magic     4 bytes  "HWMF"
//! version   u16      MANIFEST_FORMAT_VERSION (2); 1 is still read
//! flags     u16      0
//! body_len  u32      length of body
//! checksum  u64      xxh3-64 of the 12 bytes above and the body
//! body      postcard(Manifest)
//! ```
//!
//! Version 2 appended [`Manifest::schemas`] (the [`StateSchema`] of every
//! state) to the body. A version 1 body is the same without that field and
//! decodes with no schemas: its states are then accepted with whatever
//! types the handles ask for, as before.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::keygroup::KeyGroupRange;
use crate::schema::StateSchema;

/// Current manifest format version (2: with state schemas).
pub const MANIFEST_FORMAT_VERSION: u16 = 2;
/// The first manifest format version, without state schemas; still read.
pub const MANIFEST_FORMAT_V1: u16 = 1;

const MANIFEST_MAGIC: &[u8; 4] = b"HWMF";
const MANIFEST_HEADER_LEN: usize = 20;
/// Manifests larger than this are rejected before any allocation.
pub const MAX_MANIFEST_BYTES: usize = 256 << 20;
/// The largest logical or stored size a manifest may give one artifact
/// (256 GiB). A manifest of at most [`MAX_MANIFEST_BYTES`] holds fewer
/// than 2^25 artifact references, so sums of sizes over a manifest stay
/// below 2^63 and never overflow (issue 18).
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 38;

/// Identifier of a checkpoint; ids increase with time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    /// The id after this one; [`Error::Corrupt`] for `u64::MAX`, which no
    /// store writes (ids start at 1), so only a forged or damaged name or
    /// manifest carries it (issue 18: it used to wrap to 0, ranking the
    /// next checkpoint below older ones).
    pub fn next(self) -> Result<CheckpointId> {
        self.0.checked_add(1).map(CheckpointId).ok_or_else(|| {
            Error::corrupt(
                "checkpoint id",
                format!(
                    "no id follows {}: the store holds a forged or damaged checkpoint id",
                    self.0
                ),
            )
        })
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Content address of an artifact: xxh3-128 of its encoded bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ArtifactId(pub u128);

impl ArtifactId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> ArtifactId {
        ArtifactId(xxhash_rust::xxh3::xxh3_128(bytes))
    }

    /// The id of everything `reader` yields, read in chunks (a file
    /// checked without holding it in memory); the same id as [`of`](Self::of)
    /// over the same bytes.
    pub fn of_reader(mut reader: impl std::io::Read) -> std::io::Result<ArtifactId> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(ArtifactId(hasher.digest128())),
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Lowercase hex, 32 characters.
    pub fn to_hex(&self) -> String {
        format!("{:032x}", self.0)
    }

    /// Parses 32 hex characters.
    pub fn from_hex(s: &str) -> Result<ArtifactId> {
        if s.len() != 32 {
            return Err(Error::InvalidArgument(format!(
                "artifact id must be 32 hex characters: got={s:?}"
            )));
        }
        u128::from_str_radix(s, 16)
            .map(ArtifactId)
            .map_err(|_| Error::InvalidArgument(format!("artifact id is not hex: got={s:?}")))
    }
}

impl fmt::Debug for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactId({})", self.to_hex())
    }
}

impl fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Whether a checkpoint stands alone or builds on its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointKind {
    /// All state, in one layer.
    Full,
    /// A base layer plus deltas; this checkpoint's own changes are the last.
    Incremental,
}

impl fmt::Display for CheckpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointKind::Full => "full",
            CheckpointKind::Incremental => "incremental",
        })
    }
}

/// Whether a layer holds full state or changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerKind {
    /// Every live entry of its checkpoint.
    Full,
    /// Puts and deletes relative to the previous layer.
    Delta,
    /// The files of a backend's native checkpoint (RocksDB SST, MANIFEST,
    /// OPTIONS and CURRENT files), restored by opening them rather than by
    /// decoding records. A native layer is the only layer of a
    /// [`CheckpointKind::Full`] checkpoint; each artifact is one file, its
    /// [`ArtifactRef::operator`] holds the file's name (see
    /// [`valid_native_file_name`]), its codec is [`Codec::Raw`] and its
    /// key groups are those of the whole job. Appended last, so manifests
    /// written before it still decode.
    Native,
}

/// True when `name` is acceptable as the file name of a native layer's
/// artifact: 1 to 255 bytes of ASCII letters, digits, `.`, `-` and `_`,
/// not `.` or `..`. Anything else could escape the restore directory.
pub fn valid_native_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// A reference from a manifest to one stored artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// Operator whose state the artifact holds.
    pub operator: String,
    /// Key groups the artifact covers.
    pub key_groups: KeyGroupRange,
    /// Content address, also the checksum of the stored bytes.
    pub id: ArtifactId,
    /// Number of records.
    pub entries: u64,
    /// Bytes of records before compression.
    pub logical_bytes: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// How the payload is stored.
    pub codec: Codec,
}

/// The artifacts one checkpoint contributed to a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// The checkpoint that wrote this layer.
    pub checkpoint_id: CheckpointId,
    /// Full state or delta.
    pub kind: LayerKind,
    /// Artifacts, sorted by operator and key-group range.
    pub artifacts: Vec<ArtifactRef>,
}

/// A committed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// This checkpoint's id.
    pub checkpoint_id: CheckpointId,
    /// The checkpoint this one follows (for incrementals, the one its last
    /// delta is relative to).
    pub parent: Option<CheckpointId>,
    /// Full or incremental.
    pub kind: CheckpointKind,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Write-ahead-log position the state includes, if a WAL is used.
    pub wal_position: Option<u64>,
    /// Number of key groups of the job that wrote it.
    pub max_parallelism: u16,
    /// Base layer first, then deltas in order.
    pub layers: Vec<Layer>,
    /// Free-form properties for the embedding engine.
    pub properties: BTreeMap<String, String>,
    /// The schema of every state of the job, sorted by operator and state
    /// (format version 2; empty when read from version 1).
    pub schemas: Vec<StateSchema>,
}

/// The body of a version 1 manifest: [`Manifest`] without its schemas.
#[derive(Deserialize)]
struct ManifestV1 {
    checkpoint_id: CheckpointId,
    parent: Option<CheckpointId>,
    kind: CheckpointKind,
    created_at_ms: u64,
    wal_position: Option<u64>,
    max_parallelism: u16,
    layers: Vec<Layer>,
    properties: BTreeMap<String, String>,
}

impl From<ManifestV1> for Manifest {
    fn from(m: ManifestV1) -> Manifest {
        Manifest {
            checkpoint_id: m.checkpoint_id,
            parent: m.parent,
            kind: m.kind,
            created_at_ms: m.created_at_ms,
            wal_position: m.wal_position,
            max_parallelism: m.max_parallelism,
            layers: m.layers,
            properties: m.properties,
            schemas: Vec::new(),
        }
    }
}

impl Manifest {
    /// The schema recorded for `operator`'s `state`, if any.
    pub fn schema(&self, operator: &str, state: &str) -> Option<&StateSchema> {
        self.schemas
            .iter()
            .find(|s| s.operator == operator && s.state == state)
    }

    /// Every artifact reference of every layer.
    pub fn artifacts(&self) -> impl Iterator<Item = &ArtifactRef> {
        self.layers.iter().flat_map(|l| l.artifacts.iter())
    }

    /// True when the checkpoint is a backend's native checkpoint (its only
    /// layer is [`LayerKind::Native`]).
    pub fn is_native(&self) -> bool {
        self.layers
            .first()
            .is_some_and(|l| l.kind == LayerKind::Native)
    }

    /// Artifacts written by this checkpoint itself (its last layer).
    pub fn own_artifacts(&self) -> &[ArtifactRef] {
        self.layers
            .iter()
            .rfind(|l| l.checkpoint_id == self.checkpoint_id)
            .map(|l| l.artifacts.as_slice())
            .unwrap_or(&[])
    }

    /// Number of layers a restore applies.
    pub fn chain_length(&self) -> usize {
        self.layers.len()
    }

    /// Sum of logical bytes over all artifacts.
    pub fn logical_bytes(&self) -> u64 {
        self.artifacts().map(|a| a.logical_bytes).sum()
    }

    /// Sum of stored bytes over all artifacts.
    pub fn stored_bytes(&self) -> u64 {
        self.artifacts().map(|a| a.stored_bytes).sum()
    }

    /// Checks the structural invariants a decoder cannot express in types.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::corrupt("manifest", detail));
        if self.max_parallelism == 0 {
            return bad("max_parallelism is zero".into());
        }
        // Issue 18: no store writes these (ids start at 1 and each has a
        // successor; a log position is followed by the next record's), so
        // a forged one is refused before anything adds one to it.
        if self.checkpoint_id.0 == u64::MAX {
            return bad(format!(
                "checkpoint id {} has no successor",
                self.checkpoint_id
            ));
        }
        if self.wal_position == Some(u64::MAX) {
            return bad(format!(
                "wal position {} has no successor: checkpoint={}",
                u64::MAX,
                self.checkpoint_id
            ));
        }
        if let Some(a) = self
            .artifacts()
            .find(|a| a.logical_bytes > MAX_ARTIFACT_BYTES || a.stored_bytes > MAX_ARTIFACT_BYTES)
        {
            return bad(format!(
                "artifact size above {MAX_ARTIFACT_BYTES}: artifact={} logical={} stored={}",
                a.id, a.logical_bytes, a.stored_bytes
            ));
        }
        let Some(first) = self.layers.first() else {
            return bad(format!("no layers: checkpoint={}", self.checkpoint_id));
        };
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.schemas {
            s.validate()?;
            if !seen.insert((s.operator.as_str(), s.state.as_str())) {
                return bad(format!(
                    "state schema listed twice: operator={} state={}",
                    s.operator, s.state
                ));
            }
        }
        if first.kind == LayerKind::Native {
            return self.validate_native();
        }
        if first.kind != LayerKind::Full {
            return bad(format!(
                "first layer is not full: checkpoint={}",
                self.checkpoint_id
            ));
        }
        match (self.kind, self.layers.len()) {
            (CheckpointKind::Full, 1) => {}
            (CheckpointKind::Incremental, n) if n >= 2 => {}
            (kind, n) => {
                return bad(format!(
                    "kind does not match layers: checkpoint={} kind={kind} layers={n}",
                    self.checkpoint_id
                ));
            }
        }
        let mut prev: Option<CheckpointId> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 && layer.kind != LayerKind::Delta {
                return bad(format!("layer {i} after the base is not a delta"));
            }
            if prev.is_some_and(|p| p >= layer.checkpoint_id) {
                return bad(format!("layer ids not increasing at layer {i}"));
            }
            prev = Some(layer.checkpoint_id);
            for a in &layer.artifacts {
                // Operator names are bounded like the names a caller may
                // give (`check_name`): a forged manifest cannot hand a
                // reader an unbounded or empty one.
                if a.operator.is_empty() || a.operator.len() > crate::key::MAX_NAME_LEN {
                    return bad(format!(
                        "artifact operator name must be 1..={} bytes: artifact={} len={}",
                        crate::key::MAX_NAME_LEN,
                        a.id,
                        a.operator.len()
                    ));
                }
                if a.key_groups.start > a.key_groups.end || a.key_groups.end > self.max_parallelism
                {
                    return bad(format!(
                        "artifact key groups out of range: artifact={} range={} max_parallelism={}",
                        a.id, a.key_groups, self.max_parallelism
                    ));
                }
            }
        }
        if prev != Some(self.checkpoint_id) {
            return bad(format!(
                "last layer is not this checkpoint's: checkpoint={}",
                self.checkpoint_id
            ));
        }
        Ok(())
    }

    /// The invariants of a native checkpoint: one layer, this checkpoint's,
    /// of a full checkpoint; every artifact a raw file with a safe, unique
    /// name covering the job's key groups.
    fn validate_native(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::corrupt("manifest", detail));
        let id = self.checkpoint_id;
        if self.kind != CheckpointKind::Full || self.layers.len() != 1 {
            return bad(format!(
                "a native layer must be the only layer of a full checkpoint: checkpoint={id} kind={} layers={}",
                self.kind,
                self.layers.len()
            ));
        }
        let layer = &self.layers[0];
        if layer.checkpoint_id != id {
            return bad(format!(
                "native layer written by another checkpoint: checkpoint={id} layer={}",
                layer.checkpoint_id
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for a in &layer.artifacts {
            if !valid_native_file_name(&a.operator) {
                return bad(format!(
                    "native file name is not a plain file name: checkpoint={id} name={:?}",
                    a.operator
                ));
            }
            if !names.insert(a.operator.as_str()) {
                return bad(format!(
                    "native file named twice: checkpoint={id} name={}",
                    a.operator
                ));
            }
            if a.codec != Codec::Raw || a.stored_bytes != a.logical_bytes {
                return bad(format!(
                    "native file must be stored raw: checkpoint={id} name={} codec={:?} stored={} logical={}",
                    a.operator, a.codec, a.stored_bytes, a.logical_bytes
                ));
            }
            if a.key_groups != KeyGroupRange::all(self.max_parallelism) {
                return bad(format!(
                    "native file must cover every key group: checkpoint={id} name={} range={}",
                    a.operator, a.key_groups
                ));
            }
        }
        Ok(())
    }

    /// Encodes the manifest with header and checksum.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = postcard::to_allocvec(self).map_err(|source| Error::Serialization {
            context: format!("manifest {}", self.checkpoint_id),
            source: source.into(),
        })?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(Error::InvalidArgument(format!(
                "manifest too large: bytes={} limit={MAX_MANIFEST_BYTES}",
                body.len()
            )));
        }
        let mut out = Vec::with_capacity(MANIFEST_HEADER_LEN + body.len());
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&MANIFEST_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&out[..12]);
        h.update(&body);
        out.extend_from_slice(&h.digest().to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes and validates a manifest; any damage is a typed error.
    pub fn decode(bytes: &[u8]) -> Result<Manifest> {
        if bytes.len() < MANIFEST_HEADER_LEN {
            return Err(Error::corrupt(
                "manifest",
                format!("shorter than its header: len={}", bytes.len()),
            ));
        }
        if &bytes[..4] != MANIFEST_MAGIC {
            return Err(Error::corrupt("manifest", "bad magic"));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[12..20]);
        let stored_sum = u64::from_le_bytes(sum);
        let body = &bytes[MANIFEST_HEADER_LEN..];
        if body_len != body.len() {
            return Err(Error::corrupt(
                "manifest",
                format!(
                    "body length mismatch: header={body_len} actual={}",
                    body.len()
                ),
            ));
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&bytes[..12]);
        h.update(body);
        if h.digest() != stored_sum {
            return Err(Error::corrupt("manifest", "checksum mismatch"));
        }
        if version != MANIFEST_FORMAT_VERSION && version != MANIFEST_FORMAT_V1 {
            return Err(Error::UnsupportedVersion {
                what: "manifest",
                found: version,
                supported: MANIFEST_FORMAT_VERSION,
            });
        }
        if flags != 0 {
            return Err(Error::corrupt(
                "manifest",
                format!("unknown flags: {flags}"),
            ));
        }
        let bad_body = |e: postcard::Error| {
            Error::corrupt(
                "manifest",
                format!("body does not decode: version={version} {e}"),
            )
        };
        let (manifest, rest): (Manifest, &[u8]) = if version == MANIFEST_FORMAT_V1 {
            let (m, rest): (ManifestV1, &[u8]) =
                postcard::take_from_bytes(body).map_err(bad_body)?;
            (m.into(), rest)
        } else {
            postcard::take_from_bytes(body).map_err(bad_body)?
        };
        if !rest.is_empty() {
            return Err(Error::corrupt(
                "manifest",
                format!("trailing bytes after body: len={}", rest.len()),
            ));
        }
        manifest.validate()?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        Manifest {
            checkpoint_id: CheckpointId(7),
            parent: Some(CheckpointId(6)),
            kind: CheckpointKind::Incremental,
            created_at_ms: 1_700_000_000_000,
            wal_position: Some(99),
            max_parallelism: 128,
            layers: vec![
                Layer {
                    checkpoint_id: CheckpointId(5),
                    kind: LayerKind::Full,
                    artifacts: vec![ArtifactRef {
                        operator: "op".into(),
                        key_groups: KeyGroupRange { start: 0, end: 64 },
                        id: ArtifactId(1),
                        entries: 10,
                        logical_bytes: 100,
                        stored_bytes: 50,
                        codec: Codec::Zstd,
                    }],
                },
                Layer {
                    checkpoint_id: CheckpointId(7),
                    kind: LayerKind::Delta,
                    artifacts: vec![],
                },
            ],
            properties: BTreeMap::from([("k".into(), "v".into())]),
            schemas: vec![StateSchema {
                operator: "op".into(),
                state: "count".into(),
                kind: crate::schema::StateKind::Value,
                key_type: "alloc::string::String".into(),
                namespace_type: None,
                user_key_type: None,
                value_type: "u64".into(),
                version: 1,
                ttl: None,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let enc = m.encode().unwrap();
        assert_eq!(Manifest::decode(&enc).unwrap(), m);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let enc = sample().encode().unwrap();
        for i in 0..enc.len() * 8 {
            let mut bad = enc.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let err = Manifest::decode(&bad).expect_err("flipped bit must be detected");
            assert!(err.is_corruption(), "bit {i}: {err}");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let enc = sample().encode().unwrap();
        for len in 0..enc.len() {
            assert!(Manifest::decode(&enc[..len]).unwrap_err().is_corruption());
        }
    }

    fn native_sample() -> Manifest {
        let file = |name: &str, id: u128| ArtifactRef {
            operator: name.into(),
            key_groups: KeyGroupRange::all(128),
            id: ArtifactId(id),
            entries: 3,
            logical_bytes: 10,
            stored_bytes: 10,
            codec: Codec::Raw,
        };
        Manifest {
            checkpoint_id: CheckpointId(4),
            parent: None,
            kind: CheckpointKind::Full,
            created_at_ms: 1,
            wal_position: None,
            max_parallelism: 128,
            layers: vec![Layer {
                checkpoint_id: CheckpointId(4),
                kind: LayerKind::Native,
                artifacts: vec![file("000009.sst", 1), file("CURRENT", 2)],
            }],
            properties: BTreeMap::new(),
            schemas: Vec::new(),
        }
    }

    #[test]
    fn a_native_manifest_round_trips_and_its_invariants_are_checked() {
        let m = native_sample();
        assert!(m.is_native());
        assert!(!sample().is_native());
        assert_eq!(Manifest::decode(&m.encode().unwrap()).unwrap(), m);

        type Break = (&'static str, fn(&mut Manifest));
        let broken: [Break; 7] = [
            ("path in a name", |m| {
                m.layers[0].artifacts[0].operator = "../x".into()
            }),
            ("empty name", |m| {
                m.layers[0].artifacts[0].operator = String::new()
            }),
            ("duplicate name", |m| {
                m.layers[0].artifacts[1].operator = "000009.sst".into()
            }),
            ("compressed file", |m| {
                m.layers[0].artifacts[0].codec = Codec::Zstd
            }),
            ("partial key groups", |m| {
                m.layers[0].artifacts[0].key_groups.end = 64
            }),
            ("incremental kind", |m| m.kind = CheckpointKind::Incremental),
            ("a delta after it", |m| {
                m.layers.push(Layer {
                    checkpoint_id: CheckpointId(5),
                    kind: LayerKind::Delta,
                    artifacts: vec![],
                });
                m.checkpoint_id = CheckpointId(5);
            }),
        ];
        for (what, f) in broken {
            let mut m = native_sample();
            f(&mut m);
            let err = m.validate().expect_err(what);
            assert!(err.is_corruption(), "{what}: {err}");
        }
        // A native layer after a full base is rejected too.
        let mut m = sample();
        m.layers[1].kind = LayerKind::Native;
        assert!(m.validate().unwrap_err().is_corruption());
    }

    #[test]
    fn native_file_names_are_plain() {
        for ok in [
            "000012.sst",
            "MANIFEST-000005",
            "OPTIONS-000007",
            "CURRENT",
            "a_b",
        ] {
            assert!(valid_native_file_name(ok), "{ok}");
        }
        let long = "x".repeat(256);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/etc",
            "a\\b",
            "a b",
            "\0",
            long.as_str(),
        ] {
            assert!(!valid_native_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn operator_names_read_from_a_manifest_are_bounded() {
        for (len, ok) in [
            (0, false),
            (1, true),
            (255, true),
            (256, false),
            (1 << 20, false),
        ] {
            let mut m = sample();
            m.layers[0].artifacts[0].operator = "o".repeat(len);
            let enc = m.encode().unwrap();
            match Manifest::decode(&enc) {
                Ok(_) => assert!(ok, "len={len} was accepted"),
                Err(e) => {
                    assert!(!ok, "len={len} was refused: {e}");
                    assert!(e.is_corruption(), "{e}");
                    assert!(e.to_string().contains("operator name"), "{e}");
                }
            }
        }
    }

    /// Issue 18: a forged id or log position with no successor, or sizes
    /// whose sum over a manifest could overflow, are corruption when
    /// decoded; `CheckpointId::next` of `u64::MAX` is an error, not a wrap.
    #[test]
    fn forged_ids_positions_and_sizes_are_refused() {
        assert_eq!(CheckpointId(7).next().unwrap(), CheckpointId(8));
        assert!(CheckpointId(u64::MAX).next().unwrap_err().is_corruption());
        type Forge = fn(&mut Manifest);
        let forgeries: [(&str, Forge); 4] = [
            ("checkpoint id", |m| {
                m.checkpoint_id = CheckpointId(u64::MAX);
                m.layers.last_mut().unwrap().checkpoint_id = CheckpointId(u64::MAX);
            }),
            ("wal position", |m| m.wal_position = Some(u64::MAX)),
            ("artifact size", |m| {
                m.layers[0].artifacts[0].stored_bytes = u64::MAX;
            }),
            ("artifact size", |m| {
                m.layers[0].artifacts[0].logical_bytes = MAX_ARTIFACT_BYTES + 1;
            }),
        ];
        for (what, forge) in forgeries {
            let mut m = sample();
            m.validate().unwrap();
            forge(&mut m);
            let e = Manifest::decode(&m.encode().unwrap()).unwrap_err();
            assert!(
                e.is_corruption() && e.to_string().contains(what),
                "{what}: {e}"
            );
        }
        let mut m = sample();
        m.wal_position = Some(u64::MAX - 1);
        m.layers[0].artifacts[0].logical_bytes = MAX_ARTIFACT_BYTES;
        Manifest::decode(&m.encode().unwrap()).unwrap();
    }

    #[test]
    fn invalid_structure_is_rejected() {
        let mut m = sample();
        m.layers[0].kind = LayerKind::Delta;
        let enc = m.encode().unwrap();
        assert!(matches!(Manifest::decode(&enc), Err(Error::Corrupt { .. })));
        let mut m = sample();
        m.layers[0].artifacts[0].key_groups.end = 200;
        assert!(m.validate().is_err());
    }
}
