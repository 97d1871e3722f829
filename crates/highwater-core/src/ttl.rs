//! Time-to-live for state entries, and the value envelope that carries it.
//!
//! Every stored value starts with a one-byte tag. Tag `0` is a plain value;
//! tag `1` is followed by the expiry time (milliseconds since the Unix epoch,
//! u64 little-endian). Keeping the expiry in the value lets every backend and
//! the checkpoint encoder drop expired entries without knowing user types.

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

/// A decoded value envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Expiry in ms since the epoch, if the entry has a TTL.
    pub expires_at_ms: Option<u64>,
    /// The serialized user value.
    pub payload: &'a [u8],
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

    /// Decodes a stored value.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        match bytes.split_first() {
            Some((&TAG_PLAIN, payload)) => Ok(Envelope {
                expires_at_ms: None,
                payload,
            }),
            Some((&TAG_EXPIRING, rest)) if rest.len() >= 8 => {
                let (at, payload) = rest.split_at(8);
                let mut a = [0u8; 8];
                a.copy_from_slice(at);
                Ok(Envelope {
                    expires_at_ms: Some(u64::from_le_bytes(a)),
                    payload,
                })
            }
            Some((tag, _)) => Err(Error::corrupt(
                "value envelope",
                format!("unknown tag or short expiry: tag={tag} len={}", bytes.len()),
            )),
            None => Err(Error::corrupt("value envelope", "empty value")),
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
    Envelope::decode(value).is_ok_and(|e| e.is_expired(now_ms))
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
}
