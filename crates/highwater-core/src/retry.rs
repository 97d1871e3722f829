//! How often and how patiently a store or backend retries a request after
//! a transient error: the policy, and the one retry loop every store and
//! backend runs ([`RetryPolicy::retry`] for async code,
//! [`RetryPolicy::retry_blocking`] for threads). What is transient, how to
//! log a retry and how to sleep belong to each caller, so the core needs no
//! runtime and no logging.

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

/// A failed attempt that is about to be retried: what the caller logs.
#[derive(Debug)]
pub struct Retrying<'a, E> {
    /// The attempt that failed, 1-based.
    pub attempt: u32,
    /// The sleep before the next attempt.
    pub backoff: Duration,
    /// Why the attempt failed.
    pub error: &'a E,
}

impl RetryPolicy {
    /// The sleep before retrying after attempt `made` (1-based) failed with
    /// `error`, or `None` when the caller should give up: the error is not
    /// `retryable`, or `made` used up the attempts.
    fn next_backoff<E>(
        &self,
        made: u32,
        error: &E,
        retryable: impl FnOnce(&E) -> bool,
    ) -> Option<Duration> {
        (made < self.attempts() && retryable(error)).then(|| self.backoff(made))
    }

    /// Runs `attempt` until it succeeds, fails with an error `retryable`
    /// rejects (a permanent error: returned at once), or has been made
    /// [`attempts`](Self::attempts) times. Before each retry it calls
    /// `on_retry` (where the caller logs) and waits for `sleep` of the
    /// [`backoff`](Self::backoff). Returns the last result and the number of
    /// attempts made.
    ///
    /// `sleep` is the caller's runtime's timer (for example
    /// `tokio::time::sleep`), so the core depends on no runtime.
    pub async fn retry<T, E, A, S>(
        &self,
        mut attempt: impl FnMut() -> A,
        mut retryable: impl FnMut(&E) -> bool,
        mut on_retry: impl FnMut(&Retrying<'_, E>),
        mut sleep: impl FnMut(Duration) -> S,
    ) -> (Result<T, E>, u32)
    where
        A: Future<Output = Result<T, E>>,
        S: Future<Output = ()>,
    {
        let mut made = 0;
        loop {
            made += 1;
            match attempt().await {
                Err(error) => match self.next_backoff(made, &error, &mut retryable) {
                    Some(backoff) => {
                        on_retry(&Retrying {
                            attempt: made,
                            backoff,
                            error: &error,
                        });
                        sleep(backoff).await;
                    }
                    None => return (Err(error), made),
                },
                ok => return (ok, made),
            }
        }
    }

    /// [`retry`](Self::retry) on the calling thread: `sleep` blocks (for
    /// example `std::thread::sleep`).
    pub fn retry_blocking<T, E>(
        &self,
        mut attempt: impl FnMut() -> Result<T, E>,
        mut retryable: impl FnMut(&E) -> bool,
        mut on_retry: impl FnMut(&Retrying<'_, E>),
        mut sleep: impl FnMut(Duration),
    ) -> (Result<T, E>, u32) {
        let mut made = 0;
        loop {
            made += 1;
            match attempt() {
                Err(error) => match self.next_backoff(made, &error, &mut retryable) {
                    Some(backoff) => {
                        on_retry(&Retrying {
                            attempt: made,
                            backoff,
                            error: &error,
                        });
                        sleep(backoff);
                    }
                    None => return (Err(error), made),
                },
                ok => return (ok, made),
            }
        }
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

    /// What one run of a retry loop did.
    #[derive(Debug, PartialEq)]
    struct Run {
        result: Result<u32, (bool, u32)>,
        made: u32,
        /// `(attempt, backoff ms)` of every `on_retry` call.
        retries: Vec<(u32, u128)>,
        /// Every sleep, in ms.
        sleeps: Vec<u128>,
    }

    /// A request whose attempt `n` (1-based) fails with `outcomes[n - 1]`
    /// (`Some(true)`: transient, `Some(false)`: permanent) or succeeds with
    /// `n` (`None`, or past the end). Errors are `(transient, attempt)`.
    fn outcome(outcomes: &[Option<bool>], n: u32) -> Result<u32, (bool, u32)> {
        match outcomes.get(n as usize - 1).copied().flatten() {
            Some(transient) => Err((transient, n)),
            None => Ok(n),
        }
    }

    fn run_blocking(policy: RetryPolicy, outcomes: &[Option<bool>]) -> Run {
        let (mut calls, mut retries, mut sleeps) = (0, Vec::new(), Vec::new());
        let (result, made) = policy.retry_blocking(
            || {
                calls += 1;
                outcome(outcomes, calls)
            },
            |e: &(bool, u32)| e.0,
            |r| retries.push((r.attempt, r.backoff.as_millis())),
            |d| sleeps.push(d.as_millis()),
        );
        assert_eq!(calls, made, "attempts made and reported differ");
        Run {
            result,
            made,
            retries,
            sleeps,
        }
    }

    /// Drives a future that never waits on anything external to completion.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    fn run_async(policy: RetryPolicy, outcomes: &[Option<bool>]) -> Run {
        let (mut calls, mut retries, mut sleeps) = (0, Vec::new(), Vec::new());
        let (result, made) = block_on(policy.retry(
            || {
                calls += 1;
                std::future::ready(outcome(outcomes, calls))
            },
            |e: &(bool, u32)| e.0,
            |r| retries.push((r.attempt, r.backoff.as_millis())),
            |d| {
                sleeps.push(d.as_millis());
                std::future::ready(())
            },
        ));
        assert_eq!(calls, made, "attempts made and reported differ");
        Run {
            result,
            made,
            retries,
            sleeps,
        }
    }

    #[test]
    fn the_retry_loops_retry_transient_errors_only_and_at_most_max_attempts() {
        let policy = |max_attempts| RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(25),
        };
        let t = Some(true);
        let p = Some(false);
        let cases: [(u32, &[Option<bool>], Run); 6] = [
            // Success at once: no retry.
            (
                3,
                &[],
                Run {
                    result: Ok(1),
                    made: 1,
                    retries: vec![],
                    sleeps: vec![],
                },
            ),
            // Two transient failures, then success: two retries, backoff doubling.
            (
                5,
                &[t, t],
                Run {
                    result: Ok(3),
                    made: 3,
                    retries: vec![(1, 10), (2, 20)],
                    sleeps: vec![10, 20],
                },
            ),
            // Always transient: stops after max_attempts with the last error;
            // the backoff is capped.
            (
                4,
                &[t, t, t, t, t, t],
                Run {
                    result: Err((true, 4)),
                    made: 4,
                    retries: vec![(1, 10), (2, 20), (3, 25)],
                    sleeps: vec![10, 20, 25],
                },
            ),
            // A permanent error is returned at once, even with attempts left.
            (
                5,
                &[t, p, t],
                Run {
                    result: Err((false, 2)),
                    made: 2,
                    retries: vec![(1, 10)],
                    sleeps: vec![10],
                },
            ),
            (
                5,
                &[p],
                Run {
                    result: Err((false, 1)),
                    made: 1,
                    retries: vec![],
                    sleeps: vec![],
                },
            ),
            // `max_attempts: 0` is one attempt.
            (
                0,
                &[t, t],
                Run {
                    result: Err((true, 1)),
                    made: 1,
                    retries: vec![],
                    sleeps: vec![],
                },
            ),
        ];
        for (max, outcomes, want) in cases {
            assert_eq!(
                run_blocking(policy(max), outcomes),
                want,
                "blocking, max {max}, {outcomes:?}"
            );
            assert_eq!(
                run_async(policy(max), outcomes),
                want,
                "async, max {max}, {outcomes:?}"
            );
        }
    }
}
