//! Object names of the store layout.
//!
//! ```text
//! <prefix>/artifacts/<32 lowercase hex chars of the xxh3-128>
//! <prefix>/manifests/<checkpoint id, 20-digit zero-padded decimal>.hwm
//! ```
//!
//! Parsing is strict: a name is accepted only in exactly the form this
//! module produces, so that every listed name maps back to the same object.

use highwater_core::{ArtifactId, CheckpointId};

/// Directory (path segment) holding artifacts.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// Directory (path segment) holding manifests.
pub const MANIFESTS_DIR: &str = "manifests";
/// File name suffix of manifests.
pub const MANIFEST_SUFFIX: &str = ".hwm";

const ARTIFACT_NAME_LEN: usize = 32;
const MANIFEST_DIGITS: usize = 20;

/// The object name of an artifact: 32 lowercase hex characters.
pub fn artifact_name(id: ArtifactId) -> String {
    id.to_hex()
}

/// The object name of a manifest: the id as 20 zero-padded decimal digits
/// followed by [`MANIFEST_SUFFIX`].
pub fn manifest_name(id: CheckpointId) -> String {
    format!("{:020}{MANIFEST_SUFFIX}", id.0)
}

/// Parses an artifact object name; `None` unless it is exactly 32 lowercase
/// hex characters.
pub fn parse_artifact_name(name: &str) -> Option<ArtifactId> {
    if name.len() != ARTIFACT_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u128::from_str_radix(name, 16).ok().map(ArtifactId)
}

/// Parses a manifest object name; `None` unless it is exactly 20 decimal
/// digits followed by [`MANIFEST_SUFFIX`] and the number fits a `u64`.
pub fn parse_manifest_name(name: &str) -> Option<CheckpointId> {
    let digits = name.strip_suffix(MANIFEST_SUFFIX)?;
    if digits.len() != MANIFEST_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok().map(CheckpointId)
}
