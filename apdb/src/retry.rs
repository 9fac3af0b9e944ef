//! Retry with exponential backoff: a small policy that returns a decision, tested
//! without a database (used by the Scylla backend for every statement).

use std::time::Duration;

use crate::error::{ApdbError, ErrorKind};

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Return the error.
    GiveUp,
}

/// Exponential backoff for retryable errors: `base · 2^(attempt-1)`, capped at `max`,
/// for at most `max_attempts` attempts in all. Bad input and internal errors are never
/// retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    /// Delay after the first failure.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base: Duration::from_millis(20),
            max: Duration::from_millis(500),
        }
    }
}

impl Backoff {
    /// The decision after attempt number `attempt` (1-based) failed with `error`.
    pub fn decide(&self, attempt: u32, error: &ApdbError) -> Decision {
        if error.kind() != ErrorKind::Retryable || attempt >= self.max_attempts {
            return Decision::GiveUp;
        }
        let factor = 1u32 << (attempt - 1).min(16);
        Decision::RetryAfter((self.base * factor).min(self.max))
    }

    /// Runs `f` until it succeeds or the policy gives up.
    pub async fn run<T, F, Fut>(&self, mut f: F) -> Result<T, ApdbError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApdbError>>,
    {
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => match self.decide(attempt, &e) {
                    Decision::GiveUp => return Err(e),
                    Decision::RetryAfter(d) => {
                        tracing::debug!(attempt, error = %e, "Retrying APDB statement.");
                        tokio::time::sleep(d).await;
                        attempt += 1;
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> ApdbError {
        ApdbError::Unavailable {
            op: "t",
            source: "timeout".into(),
        }
    }

    #[test]
    fn backs_off_exponentially_then_gives_up() {
        let b = Backoff::default();
        assert_eq!(
            b.decide(1, &busy()),
            Decision::RetryAfter(Duration::from_millis(20))
        );
        assert_eq!(
            b.decide(2, &busy()),
            Decision::RetryAfter(Duration::from_millis(40))
        );
        assert_eq!(
            b.decide(3, &busy()),
            Decision::RetryAfter(Duration::from_millis(80))
        );
        assert_eq!(b.decide(4, &busy()), Decision::GiveUp);
        let capped = Backoff {
            max_attempts: 20,
            ..b
        };
        assert_eq!(
            capped.decide(10, &busy()),
            Decision::RetryAfter(Duration::from_millis(500))
        );
    }

    #[test]
    fn never_retries_bad_input() {
        let e = ApdbError::bad_input("store", "x");
        assert_eq!(Backoff::default().decide(1, &e), Decision::GiveUp);
    }

    #[tokio::test(start_paused = true)]
    async fn run_retries_until_success() {
        let mut n = 0;
        let r = Backoff::default()
            .run(|| {
                n += 1;
                let fail = n < 3;
                async move { if fail { Err(busy()) } else { Ok(n) } }
            })
            .await;
        assert_eq!(r.unwrap(), 3);
    }
}
