//! What the log stores: [`WalRecord`] (one state change) and [`WalBatch`]
//! (changes that must survive or vanish together), and their encoding.
//!
//! A record's payload is the postcard encoding of [`WalRecord`]. A batch
//! encodes its records as they are added, in the form the frame body stores
//! them.

use std::fmt;

use highwater_core::key::{key_group_of, operator_of};
use highwater_core::{Error, KeyGroup, Mutation, Result, StateKey};
use serde::{Deserialize, Serialize};

use crate::format::{MAX_FRAME_BYTES, RECORD_PREFIX_LEN};

/// What a record does to its key.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WalOp {
    /// Set the key to this value.
    Put(#[serde(with = "bytes")] Vec<u8>),
    /// Remove the key.
    Delete,
    /// Combine this operand with the key's current value (the backend's
    /// merge operator decides how).
    Merge(#[serde(with = "bytes")] Vec<u8>),
}

impl fmt::Debug for WalOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalOp::Put(v) => write!(f, "Put({} bytes)", v.len()),
            WalOp::Delete => f.write_str("Delete"),
            WalOp::Merge(v) => write!(f, "Merge({} bytes)", v.len()),
        }
    }
}

/// One logged state change: a backend-level mutation of one encoded key.
///
/// `key` is normally an encoded [`StateKey`] (key group, operator, state,
/// user key, namespace, map key); the accessors decode it. The log itself
/// treats it as opaque bytes, so it can log any key/value mutation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WalRecord {
    /// The encoded key the change applies to.
    #[serde(with = "bytes")]
    pub key: Vec<u8>,
    /// The change.
    pub op: WalOp,
    /// Event time of the event that caused the change, in milliseconds, if
    /// the engine has one. Used by [`Replay::until_event_time`](crate::Replay::until_event_time).
    pub event_time: Option<u64>,
}

impl WalRecord {
    /// A put of `value` at `key`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> WalRecord {
        WalRecord {
            key: key.into(),
            op: WalOp::Put(value.into()),
            event_time: None,
        }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> WalRecord {
        WalRecord {
            key: key.into(),
            op: WalOp::Delete,
            event_time: None,
        }
    }

    /// A merge of `operand` into `key`.
    pub fn merge(key: impl Into<Vec<u8>>, operand: impl Into<Vec<u8>>) -> WalRecord {
        WalRecord {
            key: key.into(),
            op: WalOp::Merge(operand.into()),
            event_time: None,
        }
    }

    /// The same record with an event time.
    pub fn with_event_time(mut self, event_time_ms: u64) -> WalRecord {
        self.event_time = Some(event_time_ms);
        self
    }

    /// The record of a backend [`Mutation`].
    pub fn from_mutation(m: Mutation, event_time: Option<u64>) -> WalRecord {
        let (key, op) = match m {
            Mutation::Put { key, value } => (key, WalOp::Put(value)),
            Mutation::Delete { key } => (key, WalOp::Delete),
        };
        WalRecord {
            key,
            op,
            event_time,
        }
    }

    /// The backend [`Mutation`] of a put or delete; `None` for a merge,
    /// which needs the backend's merge operator.
    pub fn to_mutation(&self) -> Option<Mutation> {
        match &self.op {
            WalOp::Put(v) => Some(Mutation::Put {
                key: self.key.clone(),
                value: v.clone(),
            }),
            WalOp::Delete => Some(Mutation::Delete {
                key: self.key.clone(),
            }),
            WalOp::Merge(_) => None,
        }
    }

    /// Decodes `key` as a [`StateKey`]: key group, operator, state name,
    /// user key, namespace and map key.
    pub fn state_key(&self) -> Result<StateKey<'_>> {
        StateKey::decode(&self.key)
    }

    /// The key group of an encoded state key (its first two bytes).
    pub fn key_group(&self) -> Result<KeyGroup> {
        key_group_of(&self.key)
    }

    /// The operator of an encoded state key.
    pub fn operator(&self) -> Result<&str> {
        operator_of(&self.key)
    }

    /// The postcard encoding of this record: the payload stored in the log.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len_hint());
        encode_parts(&mut out, &self.key, op_ref(&self.op), self.event_time);
        out
    }

    /// Decodes a payload written by [`WalRecord::encode`]; trailing bytes are
    /// an error.
    pub fn decode(payload: &[u8]) -> Result<WalRecord> {
        let (record, rest) = postcard::take_from_bytes::<WalRecord>(payload)
            .map_err(|e| Error::corrupt("wal record", format!("payload does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::corrupt(
                "wal record",
                format!("trailing bytes after the payload: len={}", rest.len()),
            ));
        }
        Ok(record)
    }

    fn encoded_len_hint(&self) -> usize {
        let value = match &self.op {
            WalOp::Put(v) | WalOp::Merge(v) => v.len(),
            WalOp::Delete => 0,
        };
        self.key.len() + value + 24
    }
}

/// A borrowed [`WalOp`], for encoding without copying into owned vectors.
#[derive(Debug, Clone, Copy)]
enum OpRef<'a> {
    Put(&'a [u8]),
    Delete,
    Merge(&'a [u8]),
}

fn op_ref(op: &WalOp) -> OpRef<'_> {
    match op {
        WalOp::Put(v) => OpRef::Put(v),
        WalOp::Delete => OpRef::Delete,
        WalOp::Merge(v) => OpRef::Merge(v),
    }
}

/// Appends the postcard encoding of a record to `out`.
///
/// Written by hand (rather than through serde) so a batch can encode from
/// borrowed slices with one copy per byte; the `postcard_compatible` test
/// checks it against postcard's own encoding of [`WalRecord`], which is what
/// the decoder uses.
fn encode_parts(out: &mut Vec<u8>, key: &[u8], op: OpRef<'_>, event_time: Option<u64>) {
    encode_change(out, key, op);
    encode_event_time(out, event_time);
}

/// The record's key and op: everything before its event time.
fn encode_change(out: &mut Vec<u8>, key: &[u8], op: OpRef<'_>) {
    varint(out, key.len() as u64);
    out.extend_from_slice(key);
    match op {
        OpRef::Put(v) => {
            varint(out, 0);
            varint(out, v.len() as u64);
            out.extend_from_slice(v);
        }
        OpRef::Delete => varint(out, 1),
        OpRef::Merge(v) => {
            varint(out, 2);
            varint(out, v.len() as u64);
            out.extend_from_slice(v);
        }
    }
}

/// The record's last field: `Option<u64>` as postcard writes it.
fn encode_event_time(out: &mut Vec<u8>, event_time: Option<u64>) {
    match event_time {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            varint(out, t);
        }
    }
}

/// Postcard's unsigned varint: little-endian base-128.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Records appended together: on recovery either all of them are in the log
/// or none is.
///
/// The batch encodes each record as it is added, in the form the frame body
/// stores it; submitting copies it once into the log buffer. A batch can be
/// cleared and reused, so a steady stream of appends allocates nothing.
#[derive(Clone)]
pub struct WalBatch {
    /// The frame body: `count` records, each a `u32` little-endian length
    /// and a postcard payload.
    buf: Vec<u8>,
    count: u32,
    /// Where the last record's length prefix and its event time start.
    last: (usize, usize),
}

impl Default for WalBatch {
    fn default() -> Self {
        WalBatch::new()
    }
}

impl fmt::Debug for WalBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalBatch")
            .field("records", &self.count)
            .field("body_bytes", &self.body_len())
            .finish()
    }
}

impl WalBatch {
    /// An empty batch.
    pub fn new() -> WalBatch {
        WalBatch::with_capacity(0)
    }

    /// An empty batch with room for `bytes` of encoded records.
    pub fn with_capacity(bytes: usize) -> WalBatch {
        WalBatch {
            buf: Vec::with_capacity(bytes),
            count: 0,
            last: (0, 0),
        }
    }

    /// A batch holding `records`, in order.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a WalRecord>) -> WalBatch {
        let mut b = WalBatch::new();
        for r in records {
            b.push(r);
        }
        b
    }

    /// Adds a record.
    pub fn push(&mut self, record: &WalRecord) -> &mut Self {
        self.push_parts(&record.key, op_ref(&record.op), record.event_time)
    }

    /// Adds a put of `value` at `key`.
    pub fn put(&mut self, key: &[u8], value: &[u8], event_time: Option<u64>) -> &mut Self {
        self.push_parts(key, OpRef::Put(value), event_time)
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: &[u8], event_time: Option<u64>) -> &mut Self {
        self.push_parts(key, OpRef::Delete, event_time)
    }

    /// Adds a merge of `operand` into `key`.
    pub fn merge(&mut self, key: &[u8], operand: &[u8], event_time: Option<u64>) -> &mut Self {
        self.push_parts(key, OpRef::Merge(operand), event_time)
    }

    /// Adds a backend [`Mutation`].
    pub fn push_mutation(&mut self, m: &Mutation, event_time: Option<u64>) -> &mut Self {
        match m {
            Mutation::Put { key, value } => self.put(key, value, event_time),
            Mutation::Delete { key } => self.delete(key, event_time),
        }
    }

    fn push_parts(&mut self, key: &[u8], op: OpRef<'_>, event_time: Option<u64>) -> &mut Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0u8; RECORD_PREFIX_LEN]);
        encode_change(&mut self.buf, key, op);
        self.last = (at, self.buf.len());
        encode_event_time(&mut self.buf, event_time);
        self.seal_last();
        self.count = self.count.saturating_add(1);
        self
    }

    /// Writes the last record's length prefix.
    fn seal_last(&mut self) {
        let (at, _) = self.last;
        // A payload longer than u32::MAX makes the batch oversized; the
        // length is saturated here and the batch refused when submitted.
        let len = u32::try_from(self.buf.len() - at - RECORD_PREFIX_LEN).unwrap_or(u32::MAX);
        self.buf[at..at + RECORD_PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
    }

    /// Sets the event time of the batch's last record; nothing for an empty
    /// batch.
    ///
    /// Stamping a batch once, when it is committed, dates it as a whole:
    /// point-in-time replay ([`Replay::until_event_time`](crate::Replay::until_event_time))
    /// keeps or drops batches whole and stops at the first batch holding a
    /// time after its bound, so a batch whose last record carries its
    /// commit time is replayed exactly when every change in it was made by
    /// then. It costs one clock read per batch instead of one per change.
    pub fn set_last_event_time(&mut self, event_time_ms: Option<u64>) -> &mut Self {
        if self.count > 0 {
            self.buf.truncate(self.last.1);
            encode_event_time(&mut self.buf, event_time_ms);
            self.seal_last();
        }
        self
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of encoded records (before compression).
    pub fn body_len(&self) -> usize {
        self.buf.len()
    }

    /// Removes every record, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.last = (0, 0);
    }

    /// Checks the size limits of a frame.
    pub(crate) fn check_size(&self) -> Result<()> {
        if self.body_len() > MAX_FRAME_BYTES || self.count == u32::MAX {
            return Err(Error::InvalidArgument(format!(
                "wal batch too large: bytes={} records={} max_bytes={MAX_FRAME_BYTES}",
                self.body_len(),
                self.count
            )));
        }
        Ok(())
    }

    /// The encoded records: the raw frame body.
    pub(crate) fn body(&self) -> &[u8] {
        &self.buf
    }
}

/// Serde helpers that (de)serialize `Vec<u8>` as bytes rather than as a
/// sequence, so postcard copies them in one piece.
mod bytes {
    use std::fmt;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Self-describing formats (JSON) give a sequence; the hint is
            // capped so a hostile length cannot force a large allocation.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use highwater_core::KeyGroup;
    use proptest::prelude::*;

    fn op_strategy() -> impl Strategy<Value = WalOp> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(WalOp::Put),
            Just(WalOp::Delete),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(WalOp::Merge),
        ]
    }

    proptest! {
        #[test]
        fn postcard_compatible(key in proptest::collection::vec(any::<u8>(), 0..300),
                               op in op_strategy(),
                               t in proptest::option::of(any::<u64>())) {
            let r = WalRecord { key, op, event_time: t };
            let ours = r.encode();
            let theirs = postcard::to_stdvec(&r).unwrap();
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(WalRecord::decode(&ours).unwrap(), r);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = WalRecord::decode(&bytes);
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut p = WalRecord::delete(b"k".to_vec()).encode();
        p.push(0);
        assert!(matches!(WalRecord::decode(&p), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn state_key_accessors() {
        let key = StateKey {
            key_group: KeyGroup(7),
            operator: "window",
            state: "sum",
            key: b"user-1",
            namespace: b"w0",
            user_key: b"",
        }
        .encode()
        .unwrap();
        let r = WalRecord::put(key, b"v".to_vec()).with_event_time(5);
        assert_eq!(r.key_group().unwrap(), KeyGroup(7));
        assert_eq!(r.operator().unwrap(), "window");
        let sk = r.state_key().unwrap();
        assert_eq!(sk.state, "sum");
        assert_eq!(sk.key, b"user-1");
        assert_eq!(sk.namespace, b"w0");
        assert!(
            WalRecord::put(b"x".to_vec(), b"".to_vec())
                .state_key()
                .is_err()
        );
    }

    #[test]
    fn batch_body_is_length_prefixed_payloads() {
        let a = WalRecord::put(b"a".to_vec(), b"1".to_vec());
        let b = WalRecord::merge(b"b".to_vec(), b"22".to_vec()).with_event_time(9);
        let batch = WalBatch::from_records([&a, &b]);
        assert_eq!(batch.len(), 2);
        let recs = crate::format::split_records(batch.body(), batch.len() as u32).unwrap();
        assert_eq!(WalRecord::decode(recs[0]).unwrap(), a);
        assert_eq!(WalRecord::decode(recs[1]).unwrap(), b);
    }

    proptest! {
        #[test]
        fn stamping_the_last_record_is_pushing_it_with_that_time(
            ops in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40),
                                              op_strategy(),
                                              proptest::option::of(any::<u64>())), 1..8),
            stamps in proptest::collection::vec(proptest::option::of(any::<u64>()), 1..4),
        ) {
            let mut records: Vec<WalRecord> = ops
                .into_iter()
                .map(|(key, op, event_time)| WalRecord { key, op, event_time })
                .collect();
            let mut stamped = WalBatch::from_records(&records);
            for t in &stamps {
                stamped.set_last_event_time(*t);
            }
            records.last_mut().unwrap().event_time = *stamps.last().unwrap();
            let direct = WalBatch::from_records(&records);
            prop_assert_eq!(stamped.len(), direct.len());
            prop_assert_eq!(stamped.body(), direct.body());
        }
    }

    #[test]
    fn stamping_an_empty_batch_does_nothing() {
        let mut b = WalBatch::new();
        b.set_last_event_time(Some(5));
        assert!(b.is_empty());
        assert_eq!(b.body_len(), 0);
        b.put(b"k", b"v", None).set_last_event_time(Some(1_000));
        let recs = crate::format::split_records(b.body(), 1).unwrap();
        assert_eq!(WalRecord::decode(recs[0]).unwrap().event_time, Some(1_000));
    }

    #[test]
    fn mutations_round_trip() {
        let m = Mutation::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        let r = WalRecord::from_mutation(m.clone(), Some(3));
        assert_eq!(r.to_mutation(), Some(m));
        assert_eq!(
            WalRecord::merge(b"k".to_vec(), b"o".to_vec()).to_mutation(),
            None
        );
    }
}
