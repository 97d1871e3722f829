//! The byte layout of state keys.
//!
//! Every entry a [`StateBackend`](crate::StateBackend) holds is named by an
//! encoded [`StateKey`]:
//!
//! ```text
//! key_group  u16 big-endian      first, so a key-group range is one byte range
//! op_len     u8, operator        UTF-8, at most 255 bytes
//! state_len  u8, state name      UTF-8, at most 255 bytes
//! key_len    u32 big-endian, key the postcard encoding of the user's key
//! ns_len     u32 big-endian, ns  the postcard encoding of the namespace (may be empty)
//! user_key   the rest            map-state entry key (empty for other states)
//! ```
//!
//! Everything up to and including the namespace is the *base*: all entries of
//! one map state for one key and namespace share it as a prefix.

use crate::error::{Error, Result};
use crate::keygroup::KeyGroup;

/// A decoded (borrowed) state key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateKey<'a> {
    /// Key group of `key`.
    pub key_group: KeyGroup,
    /// Operator that owns the state.
    pub operator: &'a str,
    /// State name, from the descriptor.
    pub state: &'a str,
    /// Serialized user key.
    pub key: &'a [u8],
    /// Serialized namespace (for example a window); empty when unused.
    pub namespace: &'a [u8],
    /// Serialized map key; empty unless this is a map-state entry.
    pub user_key: &'a [u8],
}

/// The longest operator or state name, in bytes.
pub const MAX_NAME_LEN: usize = u8::MAX as usize;

impl<'a> StateKey<'a> {
    /// Appends the encoding of this key to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        check_name("operator", self.operator)?;
        check_name("state", self.state)?;
        let key_len = u32::try_from(self.key.len())
            .map_err(|_| Error::InvalidArgument("state key longer than 4 GiB".into()))?;
        let ns_len = u32::try_from(self.namespace.len())
            .map_err(|_| Error::InvalidArgument("namespace longer than 4 GiB".into()))?;
        out.reserve(
            12 + self.operator.len()
                + self.state.len()
                + self.key.len()
                + self.namespace.len()
                + self.user_key.len(),
        );
        out.extend_from_slice(&self.key_group.to_be_bytes());
        out.push(self.operator.len() as u8);
        out.extend_from_slice(self.operator.as_bytes());
        out.push(self.state.len() as u8);
        out.extend_from_slice(self.state.as_bytes());
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(&ns_len.to_be_bytes());
        out.extend_from_slice(self.namespace);
        out.extend_from_slice(self.user_key);
        Ok(())
    }

    /// Encodes this key into a new vector.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Decodes an encoded key, checking every length against the buffer.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        let mut r = Reader { bytes, pos: 0 };
        let key_group = KeyGroup(u16::from_be_bytes(r.array::<2>()?));
        let op_len = usize::from(r.array::<1>()?[0]);
        let operator = std::str::from_utf8(r.take(op_len)?)
            .map_err(|_| Error::corrupt("state key", "operator is not utf-8"))?;
        let st_len = usize::from(r.array::<1>()?[0]);
        let state = std::str::from_utf8(r.take(st_len)?)
            .map_err(|_| Error::corrupt("state key", "state name is not utf-8"))?;
        let key_len = u32::from_be_bytes(r.array::<4>()?) as usize;
        let key = r.take(key_len)?;
        let ns_len = u32::from_be_bytes(r.array::<4>()?) as usize;
        let namespace = r.take(ns_len)?;
        let user_key = &bytes[r.pos..];
        Ok(StateKey {
            key_group,
            operator,
            state,
            key,
            namespace,
            user_key,
        })
    }
}

/// Length of the base (everything but the map user key) of an encoded key.
pub fn base_len(encoded: &[u8]) -> Result<usize> {
    let k = StateKey::decode(encoded)?;
    Ok(encoded.len() - k.user_key.len())
}

/// Length of the base of an encoded key, reading only the length fields (no
/// UTF-8 validation): the fast path for backends. `None` if the bytes are not
/// a well-formed state key.
pub fn split_base(encoded: &[u8]) -> Option<usize> {
    let op_len = usize::from(*encoded.get(2)?);
    let st_at = 3 + op_len;
    let st_len = usize::from(*encoded.get(st_at)?);
    let key_at = st_at + 1 + st_len;
    let key_len = u32::from_be_bytes(encoded.get(key_at..key_at + 4)?.try_into().ok()?) as usize;
    let ns_at = (key_at + 4).checked_add(key_len)?;
    let ns_len =
        u32::from_be_bytes(encoded.get(ns_at..ns_at.checked_add(4)?)?.try_into().ok()?) as usize;
    let end = (ns_at + 4).checked_add(ns_len)?;
    (end <= encoded.len()).then_some(end)
}

/// The key group of an encoded key (its first two bytes).
pub fn key_group_of(encoded: &[u8]) -> Result<KeyGroup> {
    match encoded {
        [a, b, ..] => Ok(KeyGroup(u16::from_be_bytes([*a, *b]))),
        _ => Err(Error::corrupt(
            "state key",
            format!("shorter than a key group: len={}", encoded.len()),
        )),
    }
}

/// The operator name of an encoded key.
pub fn operator_of(encoded: &[u8]) -> Result<&str> {
    let mut r = Reader {
        bytes: encoded,
        pos: 2,
    };
    let len = usize::from(r.array::<1>()?[0]);
    std::str::from_utf8(r.take(len)?)
        .map_err(|_| Error::corrupt("state key", "operator is not utf-8"))
}

/// An encoded key split around its operator name: `(head, operator,
/// rest)`, where `head` is the key group's two bytes and `rest` everything
/// after the operator (the state name onwards). `head` followed by `rest`
/// is the key's operator-relative form, as artifacts with
/// [`KeyForm::OperatorRelative`](crate::KeyForm::OperatorRelative) keys
/// store it.
pub fn split_operator(encoded: &[u8]) -> Result<(&[u8], &str, &[u8])> {
    let operator = operator_of(encoded)?;
    // `operator_of` checked that the key holds 3 + operator.len() bytes.
    let (head, after) = encoded.split_at(2);
    Ok((head, operator, &after[1 + operator.len()..]))
}

/// The prefix shared by every key of `operator` in key group `kg`.
pub fn operator_prefix(kg: KeyGroup, operator: &str) -> Result<Vec<u8>> {
    check_name("operator", operator)?;
    let mut out = Vec::with_capacity(3 + operator.len());
    out.extend_from_slice(&kg.to_be_bytes());
    out.push(operator.len() as u8);
    out.extend_from_slice(operator.as_bytes());
    Ok(out)
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::InvalidArgument(format!(
            "{what} name must be 1..={MAX_NAME_LEN} bytes: len={}",
            name.len()
        )));
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                Error::corrupt(
                    "state key",
                    format!(
                        "field runs past the end: offset={} len={n} total={}",
                        self.pos,
                        self.bytes.len()
                    ),
                )
            })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(kg in any::<u16>(), op in "[a-z]{1,20}", st in "[a-z]{1,20}",
                      key in proptest::collection::vec(any::<u8>(), 0..40),
                      ns in proptest::collection::vec(any::<u8>(), 0..10),
                      uk in proptest::collection::vec(any::<u8>(), 0..10)) {
            let k = StateKey { key_group: KeyGroup(kg), operator: &op, state: &st, key: &key, namespace: &ns, user_key: &uk };
            let enc = k.encode().unwrap();
            prop_assert_eq!(StateKey::decode(&enc).unwrap(), k);
            prop_assert_eq!(key_group_of(&enc).unwrap(), KeyGroup(kg));
            prop_assert_eq!(operator_of(&enc).unwrap(), op.as_str());
            prop_assert_eq!(base_len(&enc).unwrap(), enc.len() - uk.len());
            prop_assert_eq!(split_base(&enc), Some(enc.len() - uk.len()));
            prop_assert!(enc.starts_with(&operator_prefix(KeyGroup(kg), &op).unwrap()));
            let (head, operator, rest) = split_operator(&enc).unwrap();
            prop_assert_eq!(head, &kg.to_be_bytes()[..]);
            prop_assert_eq!(operator, op.as_str());
            // The rest is the key without its operator: it starts with the
            // state name and ends with the user key.
            prop_assert_eq!(rest.len(), enc.len() - 3 - op.len());
            prop_assert_eq!(rest[0] as usize, st.len());
            prop_assert_eq!(&rest[1..1 + st.len()], st.as_bytes());
            prop_assert!(rest.ends_with(&uk));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = StateKey::decode(&bytes);
            let _ = operator_of(&bytes);
            if let Ok((head, op, rest)) = split_operator(&bytes) {
                prop_assert_eq!(head.len() + 1 + op.len() + rest.len(), bytes.len());
            }
            if let Some(n) = split_base(&bytes) {
                prop_assert!(n <= bytes.len());
                prop_assert_eq!(StateKey::decode(&bytes).ok().map(|k| bytes.len() - k.user_key.len()).unwrap_or(n), n);
            }
        }
    }

    #[test]
    fn names_are_validated() {
        let long = "x".repeat(256);
        let k = StateKey {
            key_group: KeyGroup(0),
            operator: &long,
            state: "s",
            key: b"",
            namespace: b"",
            user_key: b"",
        };
        assert!(matches!(k.encode(), Err(Error::InvalidArgument(_))));
    }
}
