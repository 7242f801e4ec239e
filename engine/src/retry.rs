//! Exponential backoff with jitter for retryable failures.

use std::time::Duration;

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
