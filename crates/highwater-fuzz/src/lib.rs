//! Decoder fuzzing for highwater (issue 18).
//!
//! Each [`Target`] is one decoder of bytes that come from outside the
//! process: a manifest or artifact read from a store, a write-ahead-log
//! segment read from disk, a Raft frame or snapshot received from a peer,
//! a Redis artifact header and its parts. [`Target::run`] feeds it one
//! input; it must return (a typed error is fine) without a panic and
//! without an allocation beyond its documented limits.
//!
//! The same harnesses serve two drivers:
//!
//! - `fuzz/` (outside the stable workspace): one `cargo fuzz` target per
//!   [`Target`], run with the nightly toolchain by `cargo xtask fuzz`;
//! - `tests/mutation.rs` (stable, in CI): a fixed-seed replay of the
//!   corpus and a few thousand mutations per target, with a counting
//!   global allocator that fails on an oversized allocation.
//!
//! [`seeds()`] produces each target's seed corpus from real files written by
//! the library (a checkpoint in a local directory store, a closed
//! write-ahead log, Raft requests and a ledger snapshot, a chunked Redis
//! artifact); the `highwater-fuzz-seeds` binary writes them to disk.

use std::path::Path;

use highwater_core::{DecodeLimits, Manifest, decode_artifact};

pub mod seeds;

pub use seeds::seeds;

/// A decoder under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `Manifest::decode` on raw bytes.
    Manifest,
    /// `Manifest::decode` after the header's length and checksum are made
    /// to fit the (mutated) body, so mutations reach the body decoder and
    /// the structural checks.
    ManifestBody,
    /// `decode_artifact` and a walk over every record, on raw bytes.
    Artifact,
    /// The same after both artifact checksums are made to fit, so
    /// mutations reach decompression and record parsing.
    ArtifactBody,
    /// A write-ahead-log segment file: opened (recovery) and replayed.
    WalSegment,
    /// The body of an authenticated Raft frame from node 2: decoded and
    /// checked as a node checks it before openraft sees it.
    RaftFrame,
    /// A Raft ledger snapshot; the first byte chooses raw bytes or a
    /// payload under a fitting checksum.
    RaftSnapshot,
    /// A Redis artifact header and its parts (the input is the header,
    /// then parts, each prefixed by a little-endian `u16` length).
    RedisArtifact,
    /// At-rest encryption: the first byte chooses an object envelope
    /// opened by `Cipher::open` (0) or a write-ahead-log segment opened and
    /// replayed with encryption configured (otherwise); the rest is the
    /// input. Keys are fixed ([`seeds::fuzz_keys`]).
    Sealed,
    /// `SavepointManifest::decode`; the first byte chooses raw bytes (0)
    /// or the rest with the header's length and checksum made to fit, so
    /// mutations reach the body decoder and the structural checks.
    /// (Savepoint artifacts use the artifact codec of the `artifact`
    /// targets.)
    Savepoint,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 10] = [
        Target::Manifest,
        Target::ManifestBody,
        Target::Artifact,
        Target::ArtifactBody,
        Target::WalSegment,
        Target::RaftFrame,
        Target::RaftSnapshot,
        Target::RedisArtifact,
        Target::Sealed,
        Target::Savepoint,
    ];

    /// The target's name: its `cargo fuzz` target and corpus directory.
    pub fn name(self) -> &'static str {
        match self {
            Target::Manifest => "manifest",
            Target::ManifestBody => "manifest_body",
            Target::Artifact => "artifact",
            Target::ArtifactBody => "artifact_body",
            Target::WalSegment => "wal_segment",
            Target::RaftFrame => "raft_frame",
            Target::RaftSnapshot => "raft_snapshot",
            Target::RedisArtifact => "redis_artifact",
            Target::Sealed => "sealed",
            Target::Savepoint => "savepoint",
        }
    }

    /// The target called `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Feeds `data` to the decoder. Returns whether it was accepted; a
    /// panic is a finding.
    pub fn run(self, data: &[u8]) -> bool {
        match self {
            Target::Manifest => Manifest::decode(data).is_ok(),
            Target::ManifestBody => Manifest::decode(&fit_manifest(data)).is_ok(),
            Target::Artifact => artifact(data),
            Target::ArtifactBody => artifact(&fit_artifact(data)),
            Target::WalSegment => wal_segment(data),
            Target::RaftFrame => highwater_raft::fuzzing::frame_body(2, data).is_ok(),
            Target::RaftSnapshot => match data.split_first() {
                Some((0, rest)) => highwater_raft::fuzzing::snapshot(rest).is_ok(),
                Some((_, rest)) => highwater_raft::fuzzing::snapshot(
                    &highwater_raft::fuzzing::snapshot_with_payload(rest),
                )
                .is_ok(),
                None => false,
            },
            Target::RedisArtifact => redis_artifact(data),
            Target::Sealed => match data.split_first() {
                Some((0, rest)) => highwater_core::Cipher::new(seeds::fuzz_keys())
                    .open(&"fuzz input", seeds::SEALED_CONTEXT, rest)
                    .is_ok(),
                Some((_, rest)) => wal_segment_with(rest, seeds::sealed_wal_config()),
                None => false,
            },
            Target::Savepoint => match data.split_first() {
                Some((0, rest)) => highwater_core::SavepointManifest::decode(rest).is_ok(),
                Some((_, rest)) => {
                    highwater_core::SavepointManifest::decode(&fit_manifest(rest)).is_ok()
                }
                None => false,
            },
        }
    }
}

/// The limits recovery decodes artifacts with.
fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

fn artifact(data: &[u8]) -> bool {
    let Ok(decoded) = decode_artifact(data, &limits()) else {
        return false;
    };
    decoded.records().all(|r| r.is_ok())
}

/// Manifest header: magic 4, version 2, flags 2, body_len 4, checksum 8
/// (xxh3-64 of the 12 bytes before it and the body).
const MANIFEST_HEADER_LEN: usize = 20;

/// `data` with the manifest header's body length and checksum made to fit
/// (checkpoint and savepoint manifests share the header's layout).
pub fn fit_manifest(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if out.len() < MANIFEST_HEADER_LEN {
        return out;
    }
    let body_len = (out.len() - MANIFEST_HEADER_LEN) as u32;
    out[8..12].copy_from_slice(&body_len.to_le_bytes());
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&out[..12]);
    h.update(&out[MANIFEST_HEADER_LEN..]);
    let sum = h.digest();
    out[12..20].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Artifact header: 48 bytes, the payload checksum at 32..40 (xxh3-64 of
/// the payload), the header checksum at 40..48 (xxh3-64 of bytes 0..40).
const ARTIFACT_HEADER_LEN: usize = highwater_core::codec::ARTIFACT_HEADER_LEN;

/// `data` with the artifact's payload length and both checksums made to
/// fit.
pub fn fit_artifact(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if out.len() < ARTIFACT_HEADER_LEN {
        return out;
    }
    let payload_len = (out.len() - ARTIFACT_HEADER_LEN) as u64;
    out[24..32].copy_from_slice(&payload_len.to_le_bytes());
    let payload_sum = xxhash_rust::xxh3::xxh3_64(&out[ARTIFACT_HEADER_LEN..]);
    out[32..40].copy_from_slice(&payload_sum.to_le_bytes());
    let header_sum = xxhash_rust::xxh3::xxh3_64(&out[..40]);
    out[40..48].copy_from_slice(&header_sum.to_le_bytes());
    out
}

/// The name a fresh log gives its first segment (learnt from a real log
/// once, so the harness does not copy the format's naming rule).
fn first_segment_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        seeds::wal_files()
            .into_iter()
            .next()
            .map(|(name, _)| name)
            .unwrap_or_default()
    })
}

/// Writes `data` as the first segment of an empty log directory, opens the
/// log (recovery) and replays every record.
fn wal_segment(data: &[u8]) -> bool {
    wal_segment_with(data, seeds::wal_config())
}

/// [`wal_segment`] with the log opened with `config`.
fn wal_segment_with(data: &[u8], config: highwater_wal::WalConfig) -> bool {
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")
    } else {
        tempfile::tempdir()
    };
    let Ok(dir) = base else { return false };
    if std::fs::write(dir.path().join(first_segment_name()), data).is_err() {
        return false;
    }
    let Ok((wal, _report)) = highwater_wal::Wal::open(dir.path(), config) else {
        return false;
    };
    let ok = match wal.replay(1) {
        Ok(replay) => replay.into_iter().all(|e| e.is_ok()),
        Err(_) => false,
    };
    let _ = wal.close();
    ok
}

fn redis_artifact(data: &[u8]) -> bool {
    // The header is the first 22 bytes (a chunked header's length) or all
    // of a shorter input; then length-prefixed parts.
    let split = data.len().min(22);
    let (header, mut rest) = data.split_at(split);
    let mut parts = Vec::new();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let body = &rest[2..];
        let take = len.min(body.len());
        parts.push(&body[..take]);
        rest = &body[take..];
    }
    highwater_redis::fuzzing::artifact(header, &parts).is_ok()
}
