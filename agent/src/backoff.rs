//! Exponential backoff with full jitter, capped, for reconnecting forever.
//!
//! Attempt `n` (from 0) waits a uniformly random time in `[0, min(cap, initial · 2ⁿ)]`
//! ("full jitter"), so a fleet that lost its hub at the same instant does not come back in
//! lockstep. A successful connection resets the sequence.

use std::time::Duration;

use rand::Rng;

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The ceiling of the first delay.
    pub initial: Duration,
    /// The largest ceiling any delay can have.
    pub max: Duration,
}

impl Default for BackoffPolicy {
    /// 1 s doubling up to 2 minutes, a sensible pace for a device fleet.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(120),
        }
    }
}

/// The state of one reconnect sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    attempt: u32,
}

impl Backoff {
    /// A fresh sequence.
    pub fn new(policy: BackoffPolicy) -> Self {
        Self { policy, attempt: 0 }
    }

    /// The ceiling for the current attempt: `min(max, initial · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial
            .checked_mul(factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// The next delay, drawn with `rng` in `[0, ceiling]`, and advances the sequence.
    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis))
    }

    /// The next delay drawn from the thread's random generator.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    /// Starts over after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        });
        let mut rng = StdRng::seed_from_u64(7);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(backoff.ceiling().as_millis());
            let delay = backoff.next_delay_with(&mut rng);
            assert!(delay.as_millis() <= *ceilings.last().unwrap());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
        assert_eq!(backoff.attempts(), 0);
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            assert!(backoff.next_delay_with(&mut rng) <= Duration::from_secs(120));
        }
        assert_eq!(backoff.ceiling(), Duration::from_secs(120));
    }

    #[test]
    fn delays_are_jittered_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(42);
        let policy = BackoffPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(10),
        };
        let delays: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(policy).next_delay_with(&mut rng))
            .collect();
        let low = delays.iter().filter(|d| d.as_secs() < 5).count();
        // Full jitter: roughly half fall in the lower half; a fixed delay would give 0 or 200.
        assert!((50..150).contains(&low), "{low} of 200 below half");
    }
}
