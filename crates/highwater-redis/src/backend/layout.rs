//! The key layout of one namespace: how a state key becomes a Redis key
//! (`{<ns>:<kg>}v<state key>`), where a map's index lives
//! (`{<ns>:<kg>}i<base>`) and which `SCAN` patterns find them. The bytes
//! are in the crate docs and `docs/format.md`.

use crate::conn::{ScanTarget, glob_escape_into};

/// The key layout of one namespace (see the crate docs).
#[derive(Debug, Clone)]
pub(super) struct Layout {
    /// `{<ns>:` — what every key starts with.
    pub(super) head: Vec<u8>,
    /// Length of `{<ns>:XXXX}v`, stripped to get the state key back.
    pub(super) value_prefix_len: usize,
    pub(super) cluster: bool,
}

fn hex4(kg: u16, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in [12, 8, 4, 0] {
        out.push(HEX[usize::from((kg >> shift) & 0xf)]);
    }
}

/// The key group a raw key is filed under: its first two bytes, zero-padded
/// for shorter (malformed) keys so every byte string has a place.
pub(super) fn key_group(raw: &[u8]) -> u16 {
    match raw {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        [a] => u16::from(*a) << 8,
        [] => 0,
    }
}

/// Where the map user key starts in `key`, if `key` is a map entry (a
/// well-formed state key with a non-empty user key): such entries are also
/// listed in their map's index.
pub(super) fn map_split(key: &[u8]) -> Option<usize> {
    highwater_core::key::split_base(key).filter(|&b| b < key.len())
}

/// The smallest byte string greater than every string starting with
/// `prefix`, if there is one (there is none for `""` or all `0xFF`).
pub(super) fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let end = prefix.iter().rposition(|&b| b != 0xFF)?;
    let mut s = prefix[..=end].to_vec();
    s[end] += 1;
    Some(s)
}

impl Layout {
    pub(super) fn new(ns: &str, cluster: bool) -> Self {
        let mut head = Vec::with_capacity(ns.len() + 2);
        head.push(b'{');
        head.extend_from_slice(ns.as_bytes());
        head.push(b':');
        let value_prefix_len = head.len() + 4 + 2;
        Layout {
            head,
            value_prefix_len,
            cluster,
        }
    }

    /// `{<ns>:<kg hex>}v<raw>`.
    pub(super) fn value_key(&self, raw: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.value_prefix_len + raw.len());
        self.value_key_into(raw, &mut k);
        k
    }

    /// [`value_key`](Self::value_key) into a reused buffer.
    pub(super) fn value_key_into(&self, raw: &[u8], k: &mut Vec<u8>) {
        k.clear();
        k.extend_from_slice(&self.head);
        hex4(key_group(raw), k);
        k.extend_from_slice(b"}v");
        k.extend_from_slice(raw);
    }

    /// `{<ns>:<kg hex>}i<base>`: the index of the map entries under `base`.
    pub(super) fn index_key_into(&self, base: &[u8], k: &mut Vec<u8>) {
        k.clear();
        k.extend_from_slice(&self.head);
        hex4(key_group(base), k);
        k.extend_from_slice(b"}i");
        k.extend_from_slice(base);
    }

    /// The state key of a value key, if it is one of this namespace.
    pub(super) fn raw_of<'a>(&self, key: &'a [u8]) -> Option<&'a [u8]> {
        let rest = key.strip_prefix(self.head.as_slice())?;
        let (tag, raw) = rest.split_at_checked(6)?;
        (tag[4] == b'}' && tag[5] == b'v').then_some(raw)
    }

    /// Every key of the namespace (values and anything added later).
    pub(super) fn all_pattern(&self) -> Vec<u8> {
        let mut p = self.head.clone();
        p.extend_from_slice(b"????}*");
        p
    }

    /// The value keys whose state key starts with `prefix`, and the node
    /// to scan: one node when the key group is known, all otherwise.
    pub(super) fn prefix_pattern(&self, prefix: &[u8]) -> (Vec<u8>, Option<ScanTarget>) {
        let mut p = self.head.clone();
        let mut target = None;
        match prefix {
            [] => p.extend_from_slice(b"????"),
            [a] => {
                let mut kg = Vec::new();
                hex4(u16::from(*a) << 8, &mut kg);
                p.extend_from_slice(&kg[..2]);
                p.extend_from_slice(b"??");
            }
            _ => {
                hex4(key_group(prefix), &mut p);
                let mut tag = p.clone();
                tag.push(b'}');
                target = Some(ScanTarget::for_key(self.cluster, &tag));
            }
        }
        p.extend_from_slice(b"}v");
        glob_escape_into(prefix, &mut p);
        p.push(b'*');
        (p, target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_and_patterns_match_their_keys() {
        let l = Layout::new("ns:x", false);
        for raw in [&b""[..], b"\x01", b"\x01\x02", b"\x01\x02rest*?[]"] {
            let k = l.value_key(raw);
            assert_eq!(l.raw_of(&k), Some(raw));
        }
        assert_eq!(l.value_key(b"\x01\x02z"), b"{ns:x:0102}v\x01\x02z");
        assert_eq!(l.value_key(b"\xab"), b"{ns:x:ab00}v\xab");
        assert_eq!(l.prefix_pattern(b"").0, b"{ns:x:????}v*");
        assert_eq!(l.prefix_pattern(b"\xab").0, b"{ns:x:ab??}v\xab*");
        assert_eq!(
            l.prefix_pattern(b"\x00\x01*").0,
            b"{ns:x:0001}v\x00\x01\\**"
        );
        assert_eq!(l.raw_of(b"{ns:x:0102}i\x01\x02"), None);
        assert_eq!(l.raw_of(b"{ns:y:0102}v\x01\x02"), None);
    }
}
