//! Reading checkpoints back: manifests by id and artifacts checked against
//! the manifest reference that names them. Every reader of checkpoints
//! (restore, verification, merging, retention) goes through these two
//! functions, so what "a readable checkpoint" means is defined once.

use crate::block::RecordBlock;
use crate::codec::{ArtifactKind, DecodeLimits, KeyForm, decode_artifact};
use crate::error::{Error, Result};
use crate::key::key_group_of;
use crate::manifest::{ArtifactRef, CheckpointId, LayerKind, Manifest};
use crate::store::CheckpointStore;

/// Reads and decodes a manifest.
pub async fn load_manifest(store: &dyn CheckpointStore, id: CheckpointId) -> Result<Manifest> {
    let bytes = store.get_manifest(id).await?;
    let manifest = Manifest::decode(&bytes).map_err(|e| match e {
        Error::Corrupt { detail, .. } => {
            Error::corrupt("manifest", format!("checkpoint={id}: {detail}"))
        }
        other => other,
    })?;
    if manifest.checkpoint_id != id {
        return Err(Error::corrupt(
            "manifest",
            format!(
                "stored under another id: name={id} content={}",
                manifest.checkpoint_id
            ),
        ));
    }
    Ok(manifest)
}

/// Decodes one artifact, cross-checked against its reference, into one
/// [`RecordBlock`].
///
/// Keys come back whole: an artifact with operator-relative keys (format
/// version 2) has the operator of `r` put back into every key, so callers
/// never see the stored form.
pub fn decode_checked(
    checkpoint: CheckpointId,
    layer: LayerKind,
    r: &ArtifactRef,
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<RecordBlock> {
    decode_checked_where(checkpoint, layer, r, bytes, limits, &mut |_, _| true).map(|(b, _)| b)
}

/// [`decode_checked`], keeping only the records for which `keep(key,
/// value)` is true (every record is still checked), and counting the
/// records decoded. Filtering as each record is decoded reads its bytes
/// while they are in the cache, where a later pass over the block misses
/// on every record (the recovery suite's profile: a time-to-live pass
/// after decoding took 3.4 % of a restore's samples).
pub fn decode_checked_where(
    checkpoint: CheckpointId,
    layer: LayerKind,
    r: &ArtifactRef,
    bytes: &[u8],
    limits: &DecodeLimits,
    keep: &mut RecordFilter<'_>,
) -> Result<(RecordBlock, u64)> {
    // The reference's counts are hints from a file: capped, so a forged
    // manifest cannot make this allocate (the block grows as records
    // really decode). Whole keys are longer than operator-relative ones
    // by the operator's name and its length byte, which the record
    // stream's own length does not count: without them every artifact's
    // buffer outgrew its hint by a few bytes per record and was copied
    // into one twice its size (a realloc per artifact, in the recovery
    // suite's profile).
    let per_record = 1 + r.operator.len() as u64;
    let hinted = r
        .logical_bytes
        .saturating_add(r.entries.saturating_mul(per_record));
    let mut out = RecordBlock::with_capacity(
        r.entries.min(1 << 20) as usize,
        hinted.min(1 << 24) as usize,
    );
    let decoded = visit_checked(
        checkpoint,
        layer,
        r,
        bytes,
        limits,
        KeyForm::Absolute,
        &mut |k, v| {
            if keep(k, v) {
                out.push(k, v)?;
            }
            Ok(())
        },
    )?;
    Ok((out, decoded))
}

/// Which records [`decode_checked_where`] keeps: given the key (whole) and
/// the value (`None` for a delete), true to keep the record.
pub type RecordFilter<'a> = dyn FnMut(&[u8], Option<&[u8]>) -> bool + 'a;

/// A visitor of records: the key (in the requested form) and the value,
/// `None` for a delete.
pub type RecordVisitor<'a> = dyn FnMut(&[u8], Option<&[u8]>) -> Result<()> + 'a;

/// The checks of [`decode_checked`], handing each record to `visit` without
/// copying it, with keys in `form` whatever form the artifact stores
/// (absolute keys of another operator than `r`'s are corruption when
/// `form` is operator-relative). Returns the number of records. This is
/// the one decoding path: `decode_checked` is built on it.
pub fn visit_checked(
    checkpoint: CheckpointId,
    layer: LayerKind,
    r: &ArtifactRef,
    bytes: &[u8],
    limits: &DecodeLimits,
    form: KeyForm,
    visit: &mut RecordVisitor<'_>,
) -> Result<u64> {
    let ctx = |detail: String| {
        Error::corrupt(
            "artifact",
            format!("checkpoint={checkpoint} artifact={}: {detail}", r.id),
        )
    };
    let expected = match layer {
        LayerKind::Full => ArtifactKind::Entries,
        LayerKind::Delta => ArtifactKind::Delta,
        LayerKind::Native => {
            // SST and metadata files of a backend: only that backend opens them.
            return Err(Error::InvalidArgument(format!(
                "checkpoint={checkpoint} artifact={} is a file of a native checkpoint ({}); restore it with the backend that wrote it, records cannot be decoded from it",
                r.id, r.operator
            )));
        }
    };
    let decoded = decode_artifact(bytes, limits).map_err(|e| match e {
        Error::Corrupt { detail, .. } => ctx(detail),
        other => other,
    })?;
    if decoded.header.kind != expected {
        return Err(ctx(format!(
            "artifact kind {:?} in a {:?} layer",
            decoded.header.kind, layer
        )));
    }
    if decoded.header.entries != r.entries {
        return Err(ctx(format!(
            "entry count differs from manifest: artifact={} manifest={}",
            decoded.header.entries, r.entries
        )));
    }
    // Whatever the verification level, the bytes must also match the
    // reference's stored size and codec: with the header's payload checksum this
    // binds an artifact to its place in the manifest, so a store that
    // swapped two artifacts is caught unless they agree in kind, entry
    // count, stored size and codec (issue 18; only the content-address
    // check of `VerificationLevel::Checksum` catches every swap).
    if bytes.len() as u64 != r.stored_bytes || decoded.header.codec != r.codec {
        return Err(ctx(format!(
            "stored size or codec differs from manifest: stored={} manifest_stored={} codec={:?} manifest_codec={:?}",
            bytes.len(),
            r.stored_bytes,
            decoded.header.codec,
            r.codec
        )));
    }
    let stored = decoded.header.key_form;
    if (stored == KeyForm::OperatorRelative || form == KeyForm::OperatorRelative)
        && (r.operator.is_empty() || r.operator.len() > usize::from(u8::MAX))
    {
        return Err(ctx(format!(
            "operator-relative keys under an operator name of {} bytes",
            r.operator.len()
        )));
    }
    let op = r.operator.as_bytes();
    let mut scratch: Vec<u8> = Vec::new();
    let mut n = 0u64;
    for rec in decoded.records() {
        let (k, v) = rec.map_err(|e| ctx(e.to_string()))?;
        let kg = key_group_of(k).map_err(|e| ctx(e.to_string()))?;
        if !r.key_groups.contains(kg) {
            return Err(ctx(format!(
                "record outside the artifact's key groups: key_group={} range={}",
                kg.0, r.key_groups
            )));
        }
        let key: &[u8] = match (stored, form) {
            (KeyForm::Absolute, KeyForm::Absolute)
            | (KeyForm::OperatorRelative, KeyForm::OperatorRelative) => k,
            (KeyForm::OperatorRelative, KeyForm::Absolute) => {
                // The stored key is key group + the rest; the operator goes
                // between them (length byte, then the name).
                scratch.clear();
                scratch.extend_from_slice(&k[..2]);
                scratch.push(op.len() as u8);
                scratch.extend_from_slice(op);
                scratch.extend_from_slice(&k[2..]);
                &scratch
            }
            (KeyForm::Absolute, KeyForm::OperatorRelative) => {
                let at = 3 + op.len();
                if k.len() < at || usize::from(k[2]) != op.len() || &k[3..at] != op {
                    return Err(ctx(format!(
                        "record of another operator than the reference's: operator={}",
                        r.operator
                    )));
                }
                scratch.clear();
                scratch.extend_from_slice(&k[..2]);
                scratch.extend_from_slice(&k[at..]);
                &scratch
            }
        };
        visit(key, v)?;
        n += 1;
    }
    // The records were only borrowed: the next artifact this thread
    // decodes reuses their buffer.
    decoded.recycle();
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::keygroup::KeyGroupRange;
    use crate::manifest::ArtifactId;

    #[test]
    fn a_native_layer_is_refused_with_a_typed_error_before_decoding() {
        let r = ArtifactRef {
            operator: "000007.sst".into(),
            key_groups: KeyGroupRange::all(128),
            id: ArtifactId::of(b"sst bytes"),
            entries: 0,
            logical_bytes: 9,
            stored_bytes: 9,
            codec: Codec::Raw,
        };
        let err = decode_checked(
            CheckpointId(3),
            LayerKind::Native,
            &r,
            b"sst bytes",
            &DecodeLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("000007.sst"), "{err}");
    }
}
