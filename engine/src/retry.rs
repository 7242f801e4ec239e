//! Retrying retryable failures with exponential backoff and jitter: one helper for every
//! retry ferry makes (a partition from its checkpoint, an output from the start, a file of a
//! binary copy), so each is counted in the job's progress and in the metrics alike.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::JobSettings;
use crate::error::{Error, Result};
use crate::stats::JobProgress;

/// The attempts of one unit of work (a partition, an output, a file).
#[derive(Debug)]
pub struct Retry<'a> {
    max_attempts: u32,
    initial: Duration,
    max: Duration,
    attempt: u32,
    progress: &'a JobProgress,
    /// Metric labels: the job's source and sink kinds and what is retried.
    labels: [(&'static str, &'static str); 3],
}

impl<'a> Retry<'a> {
    /// The first attempt of a unit of `what` (`source`, `output`, `file`) under `settings`'
    /// retry policy, counted in `progress` and in the metrics with `source` and `sink`.
    pub fn new(
        settings: &JobSettings,
        progress: &'a JobProgress,
        what: &'static str,
        (source, sink): (&'static str, &'static str),
    ) -> Self {
        Self {
            max_attempts: settings.max_attempts.get(),
            initial: settings.initial_backoff,
            max: settings.max_backoff,
            attempt: 1,
            progress,
            labels: [("source", source), ("sink", sink), ("stage", what)],
        }
    }

    /// The current attempt, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// After a failure: `Some(wait)` when `error` may be retried (the retry is counted and
    /// the attempt number advanced), `None` when the unit has failed for good.
    pub fn after(&mut self, error: &Error) -> Option<Duration> {
        if !error.is_retryable() || self.attempt >= self.max_attempts {
            return None;
        }
        self.attempt += 1;
        self.progress.retries.fetch_add(1, Relaxed);
        metrics::counter!(crate::metrics::RETRIES_TOTAL, &self.labels).increment(1);
        Some(backoff(self.attempt, self.initial, self.max))
    }

    /// Waits `wait`, or fails as cancelled when `cancel` fires first.
    pub async fn wait(wait: Duration, cancel: &CancellationToken) -> Result<()> {
        tokio::select! {
            _ = cancel.cancelled() => Err(Error::cancelled("the job was cancelled")),
            _ = tokio::time::sleep(wait) => Ok(()),
        }
    }
}

/// The wait before attempt `attempt` (2 for the first retry): `initial * 2^(attempt-2)`,
/// capped at `max`, then scaled by a random factor in [0.5, 1.0] ("equal jitter") so that
/// partitions failing together do not retry in lockstep.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exponent = attempt.saturating_sub(2).min(30);
    let base = initial.saturating_mul(1u32 << exponent).min(max);
    base.mul_f64(0.5 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_within_jitter_and_caps() {
        let initial = Duration::from_secs(1);
        let max = Duration::from_secs(10);
        for _ in 0..100 {
            let first = backoff(2, initial, max);
            assert!(
                first >= Duration::from_millis(500) && first <= initial,
                "{first:?}"
            );
            let third = backoff(4, initial, max);
            assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
            let late = backoff(40, initial, max);
            assert!(late >= Duration::from_secs(5) && late <= max, "{late:?}");
        }
    }
}
