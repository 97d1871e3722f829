//! Loading a checkpoint: fetch and verify every artifact of a manifest's
//! layers, then fold the layers (base, then deltas in order) into one state.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use highwater_core::ttl::is_expired_value;
use highwater_core::{
    ArtifactId, CheckpointStore, DecodeLimits, Error, Manifest, Records, Result, decode_checked,
};
use rayon::prelude::*;
use tokio::task::JoinSet;

/// Fetches every distinct artifact of `manifest`, `concurrency` at a time,
/// and checks each against its content address.
pub(crate) async fn fetch_artifacts(
    store: Arc<dyn CheckpointStore>,
    manifest: &Manifest,
    concurrency: usize,
) -> Result<HashMap<ArtifactId, Bytes>> {
    let mut ids: Vec<ArtifactId> = manifest.artifacts().map(|a| a.id).collect();
    ids.sort_unstable();
    ids.dedup();
    let checkpoint = manifest.checkpoint_id;
    let mut out = HashMap::with_capacity(ids.len());
    let mut set = JoinSet::new();
    let mut pending = ids.into_iter();
    loop {
        while set.len() < concurrency {
            let Some(id) = pending.next() else { break };
            let store = store.clone();
            set.spawn(async move {
                let fetch = async || {
                    store.get_artifact(id).await.map_err(|e| match e {
                        Error::NotFound(_) => Error::NotFound(format!(
                            "artifact of checkpoint {checkpoint}: artifact={id}"
                        )),
                        other => other,
                    })
                };
                let bytes = fetch().await?;
                if ArtifactId::of(&bytes) == id {
                    return Ok((id, bytes));
                }
                // Read it again: a damaged transfer must not be mistaken for
                // damaged storage.
                if ArtifactId::of(&fetch().await?) != id {
                    // The stored copy is damaged. Content addressing would
                    // make every later checkpoint reuse it, so remove it: the
                    // next checkpoint holding this data writes it afresh.
                    tracing::warn!(checkpoint = %checkpoint, artifact = %id, "deleting a corrupt artifact so the next checkpoint rewrites it");
                    store.delete_artifact(id).await?;
                }
                Err(Error::corrupt(
                    "artifact",
                    format!("content does not match its id: checkpoint={checkpoint} artifact={id}"),
                ))
            });
        }
        match set.join_next().await {
            None => break,
            Some(joined) => {
                let (id, bytes) =
                    joined.map_err(|e| Error::Internal(format!("fetch task failed: {e}")))??;
                out.insert(id, bytes);
            }
        }
    }
    Ok(out)
}

/// Folds the layers of `manifest` into the state it describes, dropping
/// entries expired at `now_ms`. Artifacts are decoded in parallel on the
/// current rayon pool; layers are applied in order.
pub(crate) fn materialize(
    manifest: &Manifest,
    artifacts: &HashMap<ArtifactId, Bytes>,
    limits: &DecodeLimits,
    now_ms: u64,
) -> Result<HashMap<Vec<u8>, Vec<u8>>> {
    let mut state: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for layer in &manifest.layers {
        let decoded: Vec<Records> = layer
            .artifacts
            .par_iter()
            .map(|r| {
                let bytes = artifacts.get(&r.id).ok_or_else(|| {
                    Error::NotFound(format!(
                        "artifact of checkpoint {}: artifact={}",
                        manifest.checkpoint_id, r.id
                    ))
                })?;
                decode_checked(manifest.checkpoint_id, layer.kind, r, bytes, limits)
            })
            .collect::<Result<_>>()?;
        for records in decoded {
            for (k, v) in records {
                match v {
                    Some(v) => {
                        state.insert(k, v);
                    }
                    None => {
                        state.remove(&k);
                    }
                }
            }
        }
    }
    state.retain(|_, v| !is_expired_value(v, now_ms));
    Ok(state)
}
