//! `--qps` / `--burst`: a per-pod budget of API requests, client-go's token bucket.
//!
//! client-go limits a client with `flowcontrol.NewTokenBucketRateLimiter(qps, burst)`,
//! which is `golang.org/x/time/rate`: a bucket of `burst` tokens, full at the start,
//! refilled at `qps` tokens a second, each request taking one. client-go *waits* for a
//! token; a proxy in front of someone else's loop should not queue it, so a request that
//! finds the bucket empty is answered at once with 429 and `Retry-After` (which client-go
//! itself honours, `rest.Request`'s `checkWait`). Watches and followed logs take their
//! one token when they start, as in client-go; how long they then stream costs nothing.
//!
//! The bucket is one atomic: the "theoretical arrival time" of the generic cell rate
//! algorithm (GCRA), which is exactly a token bucket: a request at `now` is allowed when
//! `max(tat, now) + 1/qps - now <= burst/qps`, and then moves `tat` there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Budget {
    start: Instant,
    /// Nanoseconds per token (1/qps).
    interval: u64,
    /// The bucket's size in time: burst × interval.
    tau: u64,
    /// Nanoseconds since `start` at which the bucket would be full again.
    tat: AtomicU64,
    burst: u32,
}

/// Why the budget flags are unusable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BudgetError {
    #[error("--qps must be a finite number of requests per second, 0 or more (got {0})")]
    Qps(f64),
    #[error(
        "--burst must be at least 1 when --qps is set (client-go's bucket would refuse every request)"
    )]
    Burst,
}

impl Budget {
    /// `None` when `qps` is 0: no budget, as client-go with a negative QPS.
    pub fn new(qps: f64, burst: u32) -> Result<Option<Budget>, BudgetError> {
        if !qps.is_finite() || qps < 0.0 {
            return Err(BudgetError::Qps(qps));
        }
        if qps == 0.0 {
            return Ok(None);
        }
        if burst == 0 {
            return Err(BudgetError::Burst);
        }
        let interval = (1e9 / qps).round().max(1.0) as u64;
        Ok(Some(Budget {
            start: Instant::now(),
            interval,
            tau: interval.saturating_mul(u64::from(burst)),
            tat: AtomicU64::new(0),
            burst,
        }))
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&self) -> Result<(), Duration> {
        self.take_at(self.now())
    }

    fn take_at(&self, now: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            if next - now > self.tau {
                return Err(Duration::from_nanos(next - now - self.tau));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }

    /// Tokens in the bucket now (fractional while it refills).
    pub fn tokens(&self) -> f64 {
        self.tokens_at(self.now())
    }

    fn tokens_at(&self, now: u64) -> f64 {
        let used = self.tat.load(Ordering::Relaxed).saturating_sub(now);
        let left = self.tau.saturating_sub(used) as f64 / self.interval as f64;
        left.clamp(0.0, f64::from(self.burst))
    }
}

/// `Retry-After` in whole seconds (RFC 9110 §10.2.3), rounded up and at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_full_bucket_then_qps() {
        let b = Budget::new(10.0, 3).unwrap().unwrap();
        assert_eq!(b.tokens_at(0), 3.0);
        for _ in 0..3 {
            assert_eq!(b.take_at(0), Ok(()));
        }
        // Empty: the next token comes 100 ms later.
        assert_eq!(b.take_at(0), Err(Duration::from_millis(100)));
        assert_eq!(b.take_at(40 * MS), Err(Duration::from_millis(60)));
        assert_eq!(b.tokens_at(50 * MS), 0.5);
        assert_eq!(b.take_at(100 * MS), Ok(()));
        assert_eq!(b.take_at(100 * MS), Err(Duration::from_millis(100)));
        // Idle for long: never more than the burst.
        assert_eq!(b.tokens_at(10_000 * MS), 3.0);
        for _ in 0..3 {
            assert_eq!(b.take_at(10_000 * MS), Ok(()));
        }
        assert!(b.take_at(10_000 * MS).is_err());
        // Over a long run the rate is qps: 10 a second.
        let b = Budget::new(10.0, 1).unwrap().unwrap();
        let allowed = (0..10_000u64).filter(|t| b.take_at(t * MS).is_ok()).count();
        assert_eq!(allowed, 100);
    }

    #[test]
    fn flags() {
        assert!(Budget::new(0.0, 0).unwrap().is_none());
        assert_eq!(Budget::new(5.0, 0).unwrap_err(), BudgetError::Burst);
        assert!(matches!(
            Budget::new(-1.0, 1).unwrap_err(),
            BudgetError::Qps(_)
        ));
        assert!(matches!(
            Budget::new(f64::NAN, 1).unwrap_err(),
            BudgetError::Qps(_)
        ));
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
    }
}
