//! Verification of stored checkpoints without restoring them.

use std::collections::HashMap;

use highwater_core::{ArtifactId, CheckpointId, CheckpointStore, DecodeLimits, Error, Result};

use crate::{VerificationLevel, verify_manifest};
use highwater_core::{decode_checked, load_manifest};

/// A problem found by [`verify_store`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyProblem {
    /// The checkpoint affected.
    pub checkpoint: CheckpointId,
    /// The artifact at fault, if the problem is in an artifact.
    pub artifact: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// The outcome for one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointVerification {
    /// The checkpoint.
    pub checkpoint: CheckpointId,
    /// Artifacts checked (each distinct artifact once per checkpoint).
    pub artifacts_checked: usize,
    /// Records decoded.
    pub records_checked: u64,
    /// Problems found; empty when the checkpoint is sound.
    pub problems: Vec<VerifyProblem>,
}

impl CheckpointVerification {
    /// True when no problem was found.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every committed checkpoint of `store` at
/// [`VerificationLevel::Full`]: each manifest's header, checksum and
/// structure and its chain against its parent, and for each referenced
/// artifact its content address, header and payload checksums, every
/// record, the record count and the key groups against the manifest.
/// Problems are collected, not returned as the first error, so one run
/// reports everything that is bad. Errors reaching the store itself are
/// returned.
pub async fn verify_store(store: &dyn CheckpointStore) -> Result<Vec<CheckpointVerification>> {
    verify_store_with(store, VerificationLevel::Full).await
}

/// [`verify_store`] at a chosen level: `None` reads and checks the
/// manifests only (artifacts are checked to exist); `Checksum` also checks
/// every artifact's xxh3-128 against its content address; `Full` also
/// decodes every record and cross-checks manifests against their chains.
pub async fn verify_store_with(
    store: &dyn CheckpointStore,
    level: VerificationLevel,
) -> Result<Vec<CheckpointVerification>> {
    let limits = DecodeLimits::default();
    let mut out = Vec::new();
    // Artifacts shared by several checkpoints are fetched and checked once;
    // the result (problem message or record count) is reused.
    let mut checked: HashMap<ArtifactId, std::result::Result<u64, String>> = HashMap::new();
    for id in store.list_manifests().await? {
        let mut v = CheckpointVerification {
            checkpoint: id,
            artifacts_checked: 0,
            records_checked: 0,
            problems: Vec::new(),
        };
        let manifest = match load_manifest(store, id).await {
            Ok(m) => m,
            Err(e) if e.is_corruption() || matches!(e, Error::NotFound(_)) => {
                v.problems.push(VerifyProblem {
                    checkpoint: id,
                    artifact: None,
                    message: format!("manifest: {e}"),
                });
                out.push(v);
                continue;
            }
            Err(e) => return Err(e),
        };
        match verify_manifest(store, &manifest, level).await {
            Ok(()) => {}
            Err(e) if e.is_corruption() => v.problems.push(VerifyProblem {
                checkpoint: id,
                artifact: None,
                message: format!("manifest: {e}"),
            }),
            Err(e) => return Err(e),
        }
        for layer in &manifest.layers {
            for r in &layer.artifacts {
                v.artifacts_checked += 1;
                let outcome = match checked.get(&r.id) {
                    Some(o) => o.clone(),
                    None => {
                        let o = match store.get_artifact(r.id).await {
                            Ok(_) if level == VerificationLevel::None => Ok(0),
                            Ok(bytes) if ArtifactId::of(&bytes) != r.id => {
                                Err("content does not match its id (checksum mismatch)".to_string())
                            }
                            // Native files (RocksDB SSTs) hold no records to decode: the
                            // content address and length are what highwater can check
                            // (RocksDB checks its block checksums when it reads them).
                            Ok(bytes) if layer.kind == highwater_core::LayerKind::Native => {
                                if bytes.len() as u64 == r.stored_bytes {
                                    Ok(0)
                                } else {
                                    Err(format!(
                                        "native file {} has {} bytes, manifest says {}",
                                        r.operator,
                                        bytes.len(),
                                        r.stored_bytes
                                    ))
                                }
                            }
                            Ok(_) if level == VerificationLevel::Checksum => Ok(0),
                            Ok(bytes) => decode_checked(id, layer.kind, r, &bytes, &limits)
                                .map(|recs| recs.len() as u64)
                                .map_err(|e| e.to_string()),
                            Err(Error::NotFound(_)) => Err("artifact is missing".to_string()),
                            Err(e) => return Err(e),
                        };
                        checked.insert(r.id, o.clone());
                        o
                    }
                };
                match outcome {
                    Ok(n) => v.records_checked += n,
                    Err(message) => v.problems.push(VerifyProblem {
                        checkpoint: id,
                        artifact: Some(r.id.to_hex()),
                        message,
                    }),
                }
            }
        }
        out.push(v);
    }
    Ok(out)
}
