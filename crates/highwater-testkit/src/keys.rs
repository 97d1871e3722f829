//! Generators of valid encoded state keys and envelope values.
//!
//! Backends see keys as bytes, but real keys always follow the
//! [`StateKey`] layout (key group first, then operator, state, key,
//! namespace and map user key), and some backends rely on that (for example
//! to route by key group). Everything generated here is therefore a valid
//! encoded [`StateKey`] and every value a valid [`Envelope`].
//!
//! A [`KeySpace`] is deliberately small, so that random operations hit the
//! same keys again (overwrites, deletes of live keys, prefix overlaps). Its
//! default includes the awkward cases: key groups `0` and `0xFFFF`, an empty
//! user key, user keys that are prefixes of each other and `0xFF` bytes.

use highwater_core::{Envelope, KeyGroup, StateKey};
use proptest::prelude::*;

use crate::rng::SplitMix64;

/// Encodes a state key from its parts.
///
/// # Panics
///
/// Panics when a name is empty or longer than 255 bytes: generators only
/// build valid keys.
pub fn encode_key(
    key_group: u16,
    operator: &str,
    state: &str,
    key: &[u8],
    namespace: &[u8],
    user_key: &[u8],
) -> Vec<u8> {
    StateKey {
        key_group: KeyGroup(key_group),
        operator,
        state,
        key,
        namespace,
        user_key,
    }
    .encode()
    .unwrap_or_else(|e| panic!("test key does not encode: {e}"))
}

/// The stored form of a value without TTL: a plain [`Envelope`].
pub fn plain_value(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    Envelope::encode_into(None, payload, &mut out);
    out
}

/// The stored form of a value that expires at `expires_at_ms`.
pub fn expiring_value(expires_at_ms: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    Envelope::encode_into(Some(expires_at_ms), payload, &mut out);
    out
}

/// Lowercase hex of `bytes`, shortened after 48 bytes.
pub fn hex(bytes: &[u8]) -> String {
    const SHOWN: usize = 48;
    let mut out = String::with_capacity(2 * bytes.len().min(SHOWN) + 16);
    for b in bytes.iter().take(SHOWN) {
        out.push_str(&format!("{b:02x}"));
    }
    if bytes.len() > SHOWN {
        out.push_str(&format!("…(len={})", bytes.len()));
    }
    if bytes.is_empty() {
        out.push_str("''");
    }
    out
}

/// A readable rendering of an encoded key for failure messages: its
/// decoded parts when it is a valid [`StateKey`], its hex otherwise.
pub fn describe_key(bytes: &[u8]) -> String {
    match StateKey::decode(bytes) {
        Ok(k) => format!(
            "[kg={} op={} state={} key={} ns={} uk={}]",
            k.key_group.0,
            k.operator,
            k.state,
            hex(k.key),
            hex(k.namespace),
            hex(k.user_key)
        ),
        Err(_) => format!("[raw={}]", hex(bytes)),
    }
}

/// A readable rendering of a stored value for failure messages.
pub fn describe_value(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "<none>".to_string(),
        Some(v) => match Envelope::decode(v) {
            Ok(Envelope {
                expires_at_ms: None,
                payload,
                ..
            }) => format!("plain:{}", hex(payload)),
            Ok(Envelope {
                expires_at_ms: Some(at),
                payload,
                elements,
            }) => format!(
                "expires@{at}{}:{}",
                if elements { "(elements)" } else { "" },
                hex(payload)
            ),
            Err(_) => format!("raw:{}", hex(v)),
        },
    }
}

/// A random payload: mostly short, sometimes a few hundred bytes, rarely a
/// few KiB (so backends that inline short values see long ones too).
pub fn random_payload(rng: &mut SplitMix64) -> Vec<u8> {
    let len = match rng.below(100) {
        0..=79 => rng.below(16),
        80..=94 => rng.range(16, 256),
        _ => rng.range(1024, 4096),
    };
    rng.bytes(len as usize)
}

/// A random plain-envelope value.
pub fn random_value(rng: &mut SplitMix64) -> Vec<u8> {
    plain_value(&random_payload(rng))
}

/// A small, finite set of valid encoded keys: the product of its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    /// Key groups.
    pub key_groups: Vec<u16>,
    /// Operator names (1..=255 bytes each).
    pub operators: Vec<String>,
    /// State names (1..=255 bytes each).
    pub states: Vec<String>,
    /// Serialized user keys.
    pub keys: Vec<Vec<u8>>,
    /// Serialized namespaces (an empty one means "no namespace").
    pub namespaces: Vec<Vec<u8>>,
    /// Map user keys; an empty one stands for value, list and other
    /// single-entry states.
    pub user_keys: Vec<Vec<u8>>,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self::small()
    }
}

impl KeySpace {
    /// The default space: 4 key groups (including `0` and `0xFFFF`), 2
    /// operators, 2 states, 3 keys, 2 namespaces and 3 user keys (none, and
    /// two where one is a prefix of the other): 288 keys.
    pub fn small() -> Self {
        KeySpace {
            key_groups: vec![0, 1, 0x00FF, 0xFFFF],
            operators: vec!["a".into(), "ab".into()],
            states: vec!["s".into(), "t".into()],
            keys: vec![Vec::new(), b"k".to_vec(), vec![0xFF]],
            namespaces: vec![Vec::new(), vec![0x00]],
            user_keys: vec![Vec::new(), vec![0x00, 0x01], vec![0x00, 0x01, 0xFF]],
        }
    }

    /// Number of distinct keys in the space.
    pub fn len(&self) -> usize {
        self.key_groups.len()
            * self.operators.len()
            * self.states.len()
            * self.keys.len()
            * self.namespaces.len()
            * self.user_keys.len()
    }

    /// True when some part has no choice, so the space holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key of the space, sorted.
    pub fn all_keys(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len());
        for kg in &self.key_groups {
            for op in &self.operators {
                for st in &self.states {
                    for k in &self.keys {
                        for ns in &self.namespaces {
                            for uk in &self.user_keys {
                                out.push(encode_key(*kg, op, st, k, ns, uk));
                            }
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// A uniformly chosen key of the space.
    pub fn key(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let kg: u16 = *rng.pick(&self.key_groups);
        let op: &String = rng.pick(&self.operators);
        let st: &String = rng.pick(&self.states);
        let key: &Vec<u8> = rng.pick(&self.keys);
        let ns: &Vec<u8> = rng.pick(&self.namespaces);
        let uk: &Vec<u8> = rng.pick(&self.user_keys);
        encode_key(kg, op, st, key, ns, uk)
    }

    /// A scan prefix: usually a semantic one (key group, operator, state,
    /// key, base without user key, whole key), sometimes an arbitrary cut
    /// of a key, the empty prefix, or a prefix of `0xFF` bytes (which has
    /// no successor and trips naive upper-bound computations).
    pub fn prefix(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let key = self.key(rng);
        let cuts = semantic_cuts(&key);
        match rng.below(10) {
            0 => Vec::new(),
            1 => vec![0xFF, 0xFF],
            2 => vec![0xFF],
            3 => {
                let cut = rng.index(key.len() + 1);
                key[..cut].to_vec()
            }
            _ => key[..*rng.pick(&cuts)].to_vec(),
        }
    }

    /// A range bound: a key of the space, a prefix, a key with a byte
    /// appended, the empty bound or a run of `0xFF` bytes past every key.
    pub fn bound(&self, rng: &mut SplitMix64) -> Vec<u8> {
        match rng.below(8) {
            0 => Vec::new(),
            1 => vec![0xFF; 3],
            2 | 3 => self.prefix(rng),
            4 => {
                let mut k = self.key(rng);
                k.push(if rng.chance(1, 2) { 0x00 } else { 0xFF });
                k
            }
            _ => self.key(rng),
        }
    }

    /// A proptest strategy choosing keys of this space.
    pub fn strategy(&self) -> BoxedStrategy<Vec<u8>> {
        proptest::sample::select(self.all_keys()).boxed()
    }
}

/// The offsets in an encoded key where its semantic prefixes end: key
/// group, operator, state, key, base (with namespace) and the whole key.
fn semantic_cuts(encoded: &[u8]) -> Vec<usize> {
    let Ok(k) = StateKey::decode(encoded) else {
        return vec![encoded.len()];
    };
    let kg = 2;
    let op = kg + 1 + k.operator.len();
    let st = op + 1 + k.state.len();
    let key = st + 4 + k.key.len();
    let base = key + 4 + k.namespace.len();
    vec![kg, op, st, key, base, encoded.len()]
}

/// A proptest strategy for arbitrary valid encoded state keys (any key
/// group, short lowercase names, short binary key, namespace and user key).
pub fn arb_state_key() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        "[a-z]{1,8}",
        "[a-z]{1,8}",
        proptest::collection::vec(any::<u8>(), 0..12),
        proptest::collection::vec(any::<u8>(), 0..4),
        proptest::collection::vec(any::<u8>(), 0..6),
    )
        .prop_map(|(kg, op, st, key, ns, uk)| encode_key(kg, &op, &st, &key, &ns, &uk))
}

/// A proptest strategy for plain-envelope values with payloads up to 64
/// bytes.
pub fn arb_plain_value() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(|p| plain_value(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_space_keys_are_valid_and_distinct() {
        let space = KeySpace::small();
        let keys = space.all_keys();
        assert_eq!(keys.len(), space.len());
        for k in &keys {
            assert!(StateKey::decode(k).is_ok(), "{}", describe_key(k));
        }
    }

    #[test]
    fn prefixes_are_prefixes() {
        let space = KeySpace::small();
        let mut rng = SplitMix64::new(1);
        for _ in 0..200 {
            let k = space.key(&mut rng);
            for cut in semantic_cuts(&k) {
                assert!(cut <= k.len());
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_keys_decode(k in arb_state_key(), v in arb_plain_value()) {
            prop_assert!(StateKey::decode(&k).is_ok());
            prop_assert!(Envelope::decode(&v).is_ok());
        }
    }
}
