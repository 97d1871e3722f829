//! Bounded retries of transient object-store errors.

use std::time::Duration;

/// How often and how patiently a request is retried after a transient error.
///
/// Every request of the store (put, get, head, list, delete) is attempted up
/// to [`max_attempts`](Self::max_attempts) times. Before retry `n` (1-based)
/// the store sleeps `initial_backoff * 2^(n-1)`, capped at
/// [`max_backoff`](Self::max_backoff). Only errors for which
/// [`is_transient`] is true are retried; the last error is returned.
///
/// Remote `object_store` clients (S3, GCS, Azure) have their own HTTP-level
/// retries; this policy adds a small bound on top and covers every store,
/// including local and wrapped ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first one included; `0` is treated as `1`.
    pub max_attempts: u32,
    /// Sleep before the first retry.
    pub initial_backoff: Duration,
    /// Upper bound of any sleep.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Three attempts, sleeping 50 ms and then 100 ms (capped at 200 ms).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries: one attempt per request.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }

    /// Attempts per request, at least one.
    pub fn attempts(&self) -> u32 {
        self.max_attempts.max(1)
    }

    /// The sleep before retry `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// True when retrying the request may succeed.
///
/// Answers about the object itself (not found, already exists, precondition
/// failed, not modified), requests the store cannot serve (not implemented,
/// not supported, invalid path, bad configuration) and authorization
/// failures are permanent; everything else (I/O and network failures,
/// server errors, a failed blocking task) is treated as transient.
pub fn is_transient(err: &object_store::Error) -> bool {
    use object_store::Error as E;
    !matches!(
        err,
        E::NotFound { .. }
            | E::AlreadyExists { .. }
            | E::Precondition { .. }
            | E::NotModified { .. }
            | E::NotImplemented { .. }
            | E::NotSupported { .. }
            | E::InvalidPath { .. }
            | E::PermissionDenied { .. }
            | E::Unauthenticated { .. }
            | E::UnknownConfigurationKey { .. }
    )
}
