//! Time-to-live for state entries, and the value envelope that carries it.
//!
//! Every stored value starts with a one-byte tag. Tag `0` is a plain value;
//! tag `1` is followed by the expiry time (milliseconds since the Unix epoch,
//! u64 little-endian). Tag `2` is a list whose elements expire one by one
//! (list state with a TTL): the latest expiry of its elements (u64 LE), then
//! every element as its own expiry (u64 LE), its length (u32 LE) and its
//! bytes. Keeping the expiry in the value lets every backend and the
//! checkpoint encoder drop expired entries without knowing user types: for
//! tag `2` the whole value expires with its last element.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A source of wall-clock time in milliseconds, injectable for tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the one direct read of the wall clock: every other reads a `Clock`"
    )]
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for tests and deterministic replay.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_ms)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// When an entry's time-to-live is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TtlUpdate {
    /// On creation and on every write (the default).
    #[default]
    OnCreateAndWrite,
    /// Also on every read that finds the entry alive.
    OnReadAndWrite,
}

/// Time-to-live of a state's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlConfig {
    /// How long an entry lives after its last refresh.
    pub ttl: Duration,
    /// When the entry's expiry is refreshed.
    pub update: TtlUpdate,
}

impl TtlConfig {
    /// Entries expire `ttl` after they were last written.
    pub fn new(ttl: Duration) -> Self {
        TtlConfig {
            ttl,
            update: TtlUpdate::OnCreateAndWrite,
        }
    }

    /// Reads refresh the expiry too.
    pub fn refresh_on_read(mut self) -> Self {
        self.update = TtlUpdate::OnReadAndWrite;
        self
    }

    /// The expiry of an entry written at `now_ms`.
    pub fn expiry_from(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.ttl.as_millis() as u64)
    }
}

const TAG_PLAIN: u8 = 0;
const TAG_EXPIRING: u8 = 1;
const TAG_ELEMENTS: u8 = 2;

/// Bytes in front of each element of a tag-2 value: expiry and length.
const ELEMENT_PREFIX: usize = 12;

/// A decoded value envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Expiry in ms since the epoch, if the entry has a TTL.
    pub expires_at_ms: Option<u64>,
    /// The serialized user value; for [`Envelope::elements`], the
    /// elements with their prefixes (read them with [`Envelope::iter_elements`]).
    pub payload: &'a [u8],
    /// True for a list whose elements expire one by one (tag `2`);
    /// `expires_at_ms` is then the latest of their expiries.
    pub elements: bool,
}

impl<'a> Envelope<'a> {
    /// Appends the envelope of `payload` to `out`.
    pub fn encode_into(expires_at_ms: Option<u64>, payload: &[u8], out: &mut Vec<u8>) {
        match expires_at_ms {
            None => {
                out.reserve(1 + payload.len());
                out.push(TAG_PLAIN);
            }
            Some(at) => {
                out.reserve(9 + payload.len());
                out.push(TAG_EXPIRING);
                out.extend_from_slice(&at.to_le_bytes());
            }
        }
        out.extend_from_slice(payload);
    }

    /// Appends a tag-2 value (a list whose elements expire one by one) of
    /// `elements`, each its expiry and its bytes; the value's own expiry is
    /// the latest of theirs. An empty list is encoded with expiry 0
    /// (expired): callers delete the entry instead.
    pub fn encode_elements_into<'e>(
        elements: impl IntoIterator<Item = (u64, &'e [u8])> + Clone,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let latest = elements.clone().into_iter().map(|(at, _)| at).max();
        out.push(TAG_ELEMENTS);
        out.extend_from_slice(&latest.unwrap_or(0).to_le_bytes());
        for (at, bytes) in elements {
            let len = u32::try_from(bytes.len()).map_err(|_| {
                Error::InvalidArgument(format!(
                    "a list element of {} bytes is above 4 GiB",
                    bytes.len()
                ))
            })?;
            out.reserve(ELEMENT_PREFIX + bytes.len());
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(bytes);
        }
        Ok(())
    }

    /// The elements of a tag-2 value, each its expiry and its bytes, in
    /// order; a prefix or length that runs past the value is corruption.
    pub fn iter_elements(&self) -> impl Iterator<Item = Result<(u64, &'a [u8])>> + 'a {
        let mut rest = if self.elements { self.payload } else { &[] };
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let Some((prefix, tail)) = rest.split_at_checked(ELEMENT_PREFIX) else {
                rest = &[];
                return Some(Err(Error::corrupt(
                    "value envelope",
                    "list element prefix runs past the value",
                )));
            };
            let at = u64::from_le_bytes(prefix[..8].try_into().expect("8 bytes"));
            let len = u32::from_le_bytes(prefix[8..].try_into().expect("4 bytes")) as usize;
            let Some((bytes, tail)) = tail.split_at_checked(len) else {
                rest = &[];
                return Some(Err(Error::corrupt(
                    "value envelope",
                    format!("list element of {len} bytes runs past the value"),
                )));
            };
            rest = tail;
            Some(Ok((at, bytes)))
        })
    }

    /// Decodes a stored value.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        Self::parse(bytes).ok_or_else(|| match bytes.first() {
            Some(tag) => Error::corrupt(
                "value envelope",
                format!("unknown tag or short expiry: tag={tag} len={}", bytes.len()),
            ),
            None => Error::corrupt("value envelope", "empty value"),
        })
    }

    /// [`decode`](Self::decode) without the error: `None` for bytes that
    /// are not an envelope. The per-record TTL check uses it, so a value
    /// that is not an envelope costs no error message.
    fn parse(bytes: &'a [u8]) -> Option<Self> {
        match bytes.split_first()? {
            (&TAG_PLAIN, payload) => Some(Envelope {
                expires_at_ms: None,
                payload,
                elements: false,
            }),
            (&tag @ (TAG_EXPIRING | TAG_ELEMENTS), rest) => {
                let (at, payload) = rest.split_first_chunk::<8>()?;
                Some(Envelope {
                    expires_at_ms: Some(u64::from_le_bytes(*at)),
                    payload,
                    elements: tag == TAG_ELEMENTS,
                })
            }
            _ => None,
        }
    }

    /// True when the entry has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// True when a stored value is an envelope that expired at `now_ms`.
///
/// Values that are not valid envelopes are reported as alive, so damaged
/// values are surfaced by the reader instead of silently dropped.
pub fn is_expired_value(value: &[u8], now_ms: u64) -> bool {
    // Not `decode`: this runs on every record a checkpoint writes or a
    // restore loads, and a value that is not an envelope must not cost an
    // error message each time (it cost about a fifth of the recovery
    // suite's decoding threads).
    Envelope::parse(value).is_some_and(|e| e.is_expired(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip() {
        let mut out = Vec::new();
        Envelope::encode_into(Some(42), b"abc", &mut out);
        let e = Envelope::decode(&out).unwrap();
        assert_eq!(e.expires_at_ms, Some(42));
        assert_eq!(e.payload, b"abc");
        assert!(e.is_expired(42));
        assert!(!e.is_expired(41));
        out.clear();
        Envelope::encode_into(None, b"", &mut out);
        assert_eq!(Envelope::decode(&out).unwrap().payload, b"");
        assert!(Envelope::decode(&[1, 2, 3]).is_err());
        assert!(Envelope::decode(&[]).is_err());
        assert!(Envelope::decode(&[9]).is_err());
    }

    #[test]
    fn element_envelopes_round_trip_and_refuse_overruns() {
        let elements: Vec<(u64, &[u8])> = vec![(30, b"a"), (10, b""), (20, b"xyz")];
        let mut out = Vec::new();
        Envelope::encode_elements_into(elements.iter().copied(), &mut out).unwrap();
        let e = Envelope::decode(&out).unwrap();
        assert!(e.elements);
        assert_eq!(e.expires_at_ms, Some(30), "the latest element's expiry");
        assert!(is_expired_value(&out, 30) && !is_expired_value(&out, 29));
        let back: Vec<(u64, &[u8])> = e.iter_elements().map(Result::unwrap).collect();
        assert_eq!(back, elements);
        for cut in 10..out.len() {
            let e = Envelope::decode(&out[..cut]).unwrap();
            let all: Result<Vec<_>> = e.iter_elements().collect();
            // Cuts at element boundaries are shorter lists; others are errors.
            if let Ok(all) = all {
                assert!(all.len() < 3 && [9, 22, 34].contains(&cut), "cut {cut}");
            }
        }
        // A plain envelope has no elements.
        out.clear();
        Envelope::encode_into(Some(5), b"abc", &mut out);
        assert_eq!(Envelope::decode(&out).unwrap().iter_elements().count(), 0);
    }

    proptest::proptest! {
        /// The check without an error agrees with decoding the envelope, for
        /// any bytes: envelopes of every tag, and values that are none.
        #[test]
        fn is_expired_value_agrees_with_the_decoded_envelope(
            tag in 0u8..5,
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20),
            now in proptest::prelude::any::<u64>(),
            empty: bool,
        ) {
            let mut value = if empty { Vec::new() } else { vec![tag] };
            value.extend_from_slice(&rest);
            let decoded = Envelope::decode(&value).is_ok_and(|e| e.is_expired(now));
            proptest::prop_assert_eq!(is_expired_value(&value, now), decoded);
            // And a real expiry at the edge.
            let mut out = Vec::new();
            Envelope::encode_into(Some(now), &rest, &mut out);
            proptest::prop_assert!(is_expired_value(&out, now));
            proptest::prop_assert_eq!(is_expired_value(&out, now.wrapping_sub(1)), now == 0);
        }
    }
}
