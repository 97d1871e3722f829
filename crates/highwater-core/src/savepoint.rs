//! The savepoint manifest: a canonical, backend-independent description of
//! a job's whole state, owned by the user.
//!
//! A savepoint is stored in a [`CheckpointStore`](crate::CheckpointStore)
//! like a checkpoint: artifacts (the ordinary [artifact codec](crate::codec),
//! entries only, absolute keys, zstd and xxh3 like every checkpoint) plus one
//! manifest committed under a [`CheckpointId`]. The manifest has its own
//! magic, so no reader mistakes it for a checkpoint's and retention never
//! deletes it or anything it references.
//!
//! Byte layout (integers little-endian):
//!
//! ```text
//! magic     4 bytes  "HWSP"
//! version   u16      SAVEPOINT_FORMAT_VERSION (1)
//! flags     u16      0
//! body_len  u32      length of body
//! checksum  u64      xxh3-64 of the 12 bytes above and the body
//! body      postcard(SavepointManifest)
//! ```
//!
//! Artifacts hold the records of one state each (one operator, one state
//! name), sorted by encoded key, which puts them in key-group order; each
//! artifact covers the key groups its [`ArtifactRef::key_groups`] names, at
//! the savepoint's [`SavepointManifest::max_parallelism`]. Values are the
//! stored envelopes ([`crate::ttl`]), absolute expiry times included.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::{ArtifactRef, CheckpointId, MAX_MANIFEST_BYTES};
use crate::schema::StateSchema;

/// Current savepoint format version.
pub const SAVEPOINT_FORMAT_VERSION: u16 = 1;
/// Magic of an encoded savepoint manifest.
pub const SAVEPOINT_MAGIC: &[u8; 4] = b"HWSP";
const HEADER_LEN: usize = 20;

/// One state of a savepoint: what it is and where its records are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointState {
    /// Operator owning the state.
    pub operator: String,
    /// State name.
    pub state: String,
    /// Kind, type names, schema version and TTL, when the job registered
    /// them (`None`: state written by a job that recorded no schema).
    pub schema: Option<StateSchema>,
    /// Number of entries.
    pub entries: u64,
    /// Bytes of keys and values (the record streams before compression).
    pub logical_bytes: u64,
    /// The artifacts, in key-group order; each one's `operator` is this
    /// state's operator.
    pub artifacts: Vec<ArtifactRef>,
}

/// A committed savepoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointManifest {
    /// The id it is committed under in its store.
    pub savepoint_id: CheckpointId,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Number of key groups the records' key groups are computed with.
    pub max_parallelism: u16,
    /// The checkpoint the state was read from, when made offline from one.
    pub source_checkpoint: Option<CheckpointId>,
    /// Every state, sorted by operator and state name.
    pub states: Vec<SavepointState>,
    /// Free-form properties (the job's manifest properties).
    pub properties: BTreeMap<String, String>,
}

impl SavepointManifest {
    /// Every artifact reference of every state.
    pub fn artifacts(&self) -> impl Iterator<Item = &ArtifactRef> {
        self.states.iter().flat_map(|s| s.artifacts.iter())
    }

    /// Total entries.
    pub fn entries(&self) -> u64 {
        self.states.iter().map(|s| s.entries).sum()
    }

    /// Total logical bytes.
    pub fn logical_bytes(&self) -> u64 {
        self.states.iter().map(|s| s.logical_bytes).sum()
    }

    /// The schemas the savepoint records.
    pub fn schemas(&self) -> Vec<StateSchema> {
        self.states
            .iter()
            .filter_map(|s| s.schema.clone())
            .collect()
    }

    /// Checks the invariants a decoder cannot express in types.
    pub fn validate(&self) -> Result<()> {
        let bad = |detail: String| Err(Error::corrupt("savepoint manifest", detail));
        if self.max_parallelism == 0 {
            return bad("max_parallelism is zero".into());
        }
        let mut prev: Option<(&str, &str)> = None;
        for s in &self.states {
            let key = (s.operator.as_str(), s.state.as_str());
            for (what, name) in [("operator", key.0), ("state", key.1)] {
                if name.is_empty() || name.len() > crate::key::MAX_NAME_LEN {
                    return bad(format!(
                        "{what} name length out of range: len={}",
                        name.len()
                    ));
                }
            }
            if prev.is_some_and(|p| p >= key) {
                return bad(format!(
                    "states not sorted or listed twice: operator={} state={}",
                    s.operator, s.state
                ));
            }
            prev = Some(key);
            if let Some(schema) = &s.schema {
                schema.validate()?;
                if schema.operator != s.operator || schema.state != s.state {
                    return bad(format!(
                        "schema names another state: operator={} state={}",
                        s.operator, s.state
                    ));
                }
            }
            let mut entries = 0u64;
            let mut last_end = 0u16;
            for a in &s.artifacts {
                if a.operator != s.operator {
                    return bad(format!(
                        "artifact of another operator: artifact={} operator={}",
                        a.id, a.operator
                    ));
                }
                if a.key_groups.start >= a.key_groups.end
                    || a.key_groups.end > self.max_parallelism
                    || a.key_groups.start < last_end
                {
                    return bad(format!(
                        "artifact key groups out of order or range: artifact={} range={} max_parallelism={}",
                        a.id, a.key_groups, self.max_parallelism
                    ));
                }
                // A key group may continue in the next artifact.
                last_end = a.key_groups.end - 1;
                entries = entries.saturating_add(a.entries);
            }
            if entries != s.entries {
                return bad(format!(
                    "entry counts disagree: operator={} state={} state_entries={} artifact_entries={entries}",
                    s.operator, s.state, s.entries
                ));
            }
        }
        Ok(())
    }

    /// Encodes the manifest with header and checksum.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = postcard::to_allocvec(self).map_err(|source| Error::Serialization {
            context: format!("savepoint manifest {}", self.savepoint_id),
            source: source.into(),
        })?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(Error::InvalidArgument(format!(
                "savepoint manifest too large: bytes={} limit={MAX_MANIFEST_BYTES}",
                body.len()
            )));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(SAVEPOINT_MAGIC);
        out.extend_from_slice(&SAVEPOINT_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&out[..12]);
        h.update(&body);
        out.extend_from_slice(&h.digest().to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// True when `bytes` start like an encoded savepoint manifest (its
    /// magic), whatever else they hold.
    pub fn is_savepoint(bytes: &[u8]) -> bool {
        bytes.starts_with(SAVEPOINT_MAGIC)
    }

    /// Decodes and validates a savepoint manifest; any damage is a typed
    /// error.
    pub fn decode(bytes: &[u8]) -> Result<SavepointManifest> {
        let corrupt = |detail: String| Error::corrupt("savepoint manifest", detail);
        if bytes.len() < HEADER_LEN {
            return Err(corrupt(format!(
                "shorter than its header: len={}",
                bytes.len()
            )));
        }
        if &bytes[..4] != SAVEPOINT_MAGIC {
            return Err(corrupt("bad magic (not a savepoint)".into()));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        let body_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[12..20]);
        let body = &bytes[HEADER_LEN..];
        if body_len != body.len() {
            return Err(corrupt(format!(
                "body length mismatch: header={body_len} actual={}",
                body.len()
            )));
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&bytes[..12]);
        h.update(body);
        if h.digest() != u64::from_le_bytes(sum) {
            return Err(corrupt("checksum mismatch".into()));
        }
        if version != SAVEPOINT_FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "savepoint manifest",
                found: version,
                supported: SAVEPOINT_FORMAT_VERSION,
            });
        }
        if flags != 0 {
            return Err(corrupt(format!("unknown flags: {flags}")));
        }
        let (m, rest): (SavepointManifest, &[u8]) = postcard::take_from_bytes(body)
            .map_err(|e| corrupt(format!("body does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(corrupt(format!(
                "trailing bytes after body: len={}",
                rest.len()
            )));
        }
        m.validate()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::keygroup::KeyGroupRange;
    use crate::manifest::ArtifactId;
    use crate::schema::StateKind;

    fn sample() -> SavepointManifest {
        SavepointManifest {
            savepoint_id: CheckpointId(1),
            created_at_ms: 5,
            max_parallelism: 128,
            source_checkpoint: Some(CheckpointId(9)),
            states: vec![SavepointState {
                operator: "op".into(),
                state: "s".into(),
                schema: Some(StateSchema {
                    operator: "op".into(),
                    state: "s".into(),
                    kind: StateKind::Value,
                    key_type: "u32".into(),
                    namespace_type: None,
                    user_key_type: None,
                    value_type: "u64".into(),
                    version: 2,
                    ttl: None,
                }),
                entries: 3,
                logical_bytes: 30,
                artifacts: vec![ArtifactRef {
                    operator: "op".into(),
                    key_groups: KeyGroupRange { start: 0, end: 128 },
                    id: ArtifactId(1),
                    entries: 3,
                    logical_bytes: 30,
                    stored_bytes: 40,
                    codec: Codec::Raw,
                }],
            }],
            properties: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trip_and_damage_is_detected() {
        let m = sample();
        let enc = m.encode().unwrap();
        assert!(SavepointManifest::is_savepoint(&enc));
        assert_eq!(SavepointManifest::decode(&enc).unwrap(), m);
        for i in 0..enc.len() * 8 {
            let mut bad = enc.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let err = SavepointManifest::decode(&bad).expect_err("flip");
            assert!(err.is_corruption(), "bit {i}: {err}");
        }
        for len in 0..enc.len() {
            assert!(
                SavepointManifest::decode(&enc[..len])
                    .unwrap_err()
                    .is_corruption()
            );
        }
        // A checkpoint manifest is not a savepoint, and the other way round.
        assert!(crate::Manifest::decode(&enc).unwrap_err().is_corruption());
    }

    #[test]
    fn structure_is_validated() {
        let mut m = sample();
        m.states[0].entries = 4;
        assert!(m.validate().is_err());
        let mut m = sample();
        m.states[0].artifacts[0].operator = "other".into();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.states.push(m.states[0].clone());
        assert!(m.validate().is_err());
        let mut m = sample();
        m.states[0].artifacts[0].key_groups.end = 129;
        assert!(m.validate().is_err());
    }
}
