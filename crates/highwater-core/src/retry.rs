//! How often and how patiently a store or backend retries a request after
//! a transient error. Pure data and arithmetic; the sleeping and the
//! deciding what is transient belong to each implementation.

use std::time::Duration;

/// Retry policy: attempt `n` (1-based) is preceded by a sleep of
/// `initial_backoff * 2^(n-2)`, capped at `max_backoff`.
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
    /// Three attempts, sleeping 50 ms and then 100 ms (any sleep capped at
    /// 200 ms).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(150),
        };
        let sleeps: Vec<_> = (1..5).map(|r| p.backoff(r).as_millis()).collect();
        assert_eq!(sleeps, vec![50, 100, 150, 150]);
        assert_eq!(RetryPolicy::none().attempts(), 1);
        assert_eq!(
            RetryPolicy {
                max_attempts: 0,
                ..RetryPolicy::default()
            }
            .attempts(),
            1
        );
    }
}
