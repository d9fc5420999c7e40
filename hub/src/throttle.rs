//! Optional throttling that mimics an IoT Hub tier's operation quotas.
//!
//! Each operation class has a token bucket: it refills at the quota's rate and holds at most
//! `burst` tokens. An operation takes one token; with none left, the REST API answers
//! `429 ThrottlingException` (with `Retry-After`), twin operations over MQTT get status 429,
//! new MQTT connections get CONNACK "server unavailable", and telemetry is slowed down (its
//! PUBACK waits for a token), as the service shapes device-to-cloud traffic.
//!
//! # Tiers
//!
//! The figures are [`casement_iothub::quota`]'s table (tier × operation × per-unit rule), the
//! same the service client keeps to: `--throttle S1 --units 2` throttles like a two-unit S1
//! hub. The service applies its throttles "in minute ranges"; here a per-minute quota may
//! burst its whole minute and a per-second quota its whole second.
//!
//! # Modes
//! What happens beyond a quota is the throttle's mode ([`ThrottleMode`], in [`crate::shaping`]):
//! `Reject` answers as above; `Shape` (Azure's way, the default of `casement hub`) queues the
//! request and serves it when the bucket has refilled — see [`Throttle::reserve`].

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use casement_iothub::quota::TokenBucket;
pub use casement_iothub::quota::{Operation, Rate, Tier};
use tokio::time::Instant;

use crate::shaping::ThrottleMode;

/// Why a throttle specification did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleParseError {
    /// Unknown tier name.
    #[error("unknown throttle tier {0:?}: expected F1, S1, S2, S3 or off")]
    Tier(String),
    /// Bad `op=N/s` text.
    #[error("invalid throttle rate {text:?}: {why} (expected OP=N/s or OP=N/min, OP one of {ops})")]
    Rate {
        /// The text.
        text: String,
        /// What is wrong.
        why: String,
        /// The valid operation names.
        ops: String,
    },
}

/// Quotas per operation class; a class without one is not throttled.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ThrottleConfig {
    /// The quotas.
    pub rates: BTreeMap<Operation, Rate>,
}

impl ThrottleConfig {
    /// No quotas.
    pub fn none() -> Self {
        Self::default()
    }

    /// A tier's quotas with `units` units, from the one table in [`casement_iothub::quota`].
    pub fn tier(tier: Tier, units: u32) -> Self {
        let rates = Operation::ALL
            .into_iter()
            .map(|op| (op, tier.rate(op, units)))
            .collect();
        Self { rates }
    }

    /// A tier by name: `F1`, `S1`, `S2`, `S3` (case-insensitive) or `off`, with `units` units.
    pub fn from_tier(name: &str, units: u32) -> Result<Self, ThrottleParseError> {
        match name.trim().to_ascii_uppercase().as_str() {
            "OFF" | "NONE" => Ok(Self::none()),
            _ => name
                .parse::<Tier>()
                .map(|tier| Self::tier(tier, units))
                .map_err(|_| ThrottleParseError::Tier(name.to_owned())),
        }
    }

    /// Sets one class's quota (replacing the tier's).
    pub fn with(mut self, op: Operation, rate: Rate) -> Self {
        self.rates.insert(op, rate);
        self
    }

    /// True when nothing is throttled.
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }
}

/// One `op=N/s` or `op=N/min` override, as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateOverride {
    /// The class.
    pub op: Operation,
    /// The quota.
    pub rate: Rate,
}

impl FromStr for RateOverride {
    type Err = ThrottleParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let ops = Operation::ALL.map(Operation::name).join(", ");
        let fail = |why: &str| ThrottleParseError::Rate {
            text: text.to_owned(),
            why: why.to_owned(),
            ops: ops.clone(),
        };
        let (name, rate) = text.split_once('=').ok_or_else(|| fail("missing '='"))?;
        let op = Operation::ALL
            .into_iter()
            .find(|op| op.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| fail("unknown operation"))?;
        let rate = rate.parse::<Rate>().map_err(|e| fail(e.why))?;
        Ok(Self { op, rate })
    }
}

/// The running throttle: one token bucket per configured class.
#[derive(Debug)]
pub(crate) struct Throttle {
    buckets: BTreeMap<Operation, Mutex<TokenBucket>>,
    mode: ThrottleMode,
    max_wait: Duration,
    /// Operations that waited in a shaping queue.
    queued: AtomicU64,
    /// Operations refused: 429, or an MQTT connection closed.
    refused: AtomicU64,
    /// Operations asked for, per class, throttled or not (indexed like [`Operation::ALL`]).
    asked: [AtomicU64; Operation::ALL.len()],
}

/// How many metered operations of each class a hub was asked for since it started (REST calls
/// and the devices' own MQTT operations alike; refused ones included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OperationCounts([u64; Operation::ALL.len()]);

impl OperationCounts {
    /// The count of `op`.
    pub fn get(&self, op: Operation) -> u64 {
        self.0[index(op)]
    }
}

fn index(op: Operation) -> usize {
    Operation::ALL
        .iter()
        .position(|o| *o == op)
        .unwrap_or_default()
}

impl Throttle {
    pub(crate) fn new(config: &ThrottleConfig) -> Self {
        let now = Instant::now().into_std();
        let buckets = config
            .rates
            .iter()
            .map(|(op, rate)| (*op, Mutex::new(TokenBucket::new(*rate, now))))
            .collect();
        Self {
            buckets,
            mode: ThrottleMode::Reject,
            max_wait: Duration::ZERO,
            queued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            asked: Default::default(),
        }
    }

    /// Operations asked for so far, per class.
    pub(crate) fn asked(&self) -> OperationCounts {
        OperationCounts(std::array::from_fn(|i| {
            self.asked[i].load(Ordering::Relaxed)
        }))
    }

    /// The same in `mode`, a shaping queue holding at most `max_wait` of work per class.
    pub(crate) fn shaped(mut self, mode: ThrottleMode, max_wait: Duration) -> Self {
        self.mode = mode;
        self.max_wait = max_wait;
        self
    }

    /// The mode.
    pub(crate) fn mode(&self) -> ThrottleMode {
        self.mode
    }

    /// (operations that waited in a shaping queue, operations refused) since start.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.queued.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Shaping: takes a token now or reserves the next one free, queueing behind the
    /// reservations already made, and says how long to wait before going ahead (zero: at
    /// once). The bucket goes into debt by one token per queued operation, so queued
    /// operations are served at the quota's rate, in order. When the wait would be longer
    /// than the mode allows (the queue is full; in `Reject` mode, any wait), nothing is
    /// reserved and the error says when the queue has room again.
    pub(crate) fn reserve(&self, op: Operation) -> Result<Duration, Duration> {
        self.asked[index(op)].fetch_add(1, Ordering::Relaxed);
        let Some(bucket) = self.buckets.get(&op) else {
            return Ok(Duration::ZERO);
        };
        let max_wait = match self.mode {
            ThrottleMode::Shape => self.max_wait,
            ThrottleMode::Reject => Duration::ZERO,
        };
        let reserved = bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reserve(Instant::now().into_std(), max_wait);
        match reserved {
            Ok(Duration::ZERO) => Ok(Duration::ZERO),
            Ok(wait) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                Ok(wait)
            }
            Err(wait) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err((wait - max_wait).max(Duration::from_secs(1)))
            }
        }
    }

    /// Takes a token, or says how long until one is available.
    pub(crate) fn try_acquire(&self, op: Operation) -> Result<(), Duration> {
        let Some(bucket) = self.buckets.get(&op) else {
            return Ok(());
        };
        bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take(Instant::now().into_std())
    }

    /// Waits until a token is available, then takes it (for telemetry shaping).
    pub(crate) async fn acquire(&self, op: Operation) {
        while let Err(wait) = self.try_acquire(op) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overrides() {
        let o: RateOverride = "twin-reads=10/s".parse().expect("ok");
        assert_eq!(o.op, Operation::TwinReads);
        assert_eq!(o.rate, Rate::per_second(10.0));
        let o: RateOverride = "Queries = 20/min".parse().expect("ok");
        assert_eq!(o.rate, Rate::per_minute(20.0));
        for bad in [
            "twin-reads",
            "bogus=1/s",
            "methods=x/s",
            "methods=0/s",
            "methods=1/h",
        ] {
            let err = bad.parse::<RateOverride>().expect_err(bad);
            assert!(err.to_string().contains("twin-reads"), "{err}");
        }
        assert!(ThrottleConfig::from_tier("s1", 1).is_ok());
        assert!(
            ThrottleConfig::from_tier("f1", 1).is_ok(),
            "F1 is a tier too"
        );
        assert!(ThrottleConfig::from_tier("off", 1).expect("off").is_empty());
        assert!(ThrottleConfig::from_tier("S9", 1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_allows_burst_then_refills() {
        let throttle =
            Throttle::new(&ThrottleConfig::none().with(Operation::Queries, Rate::per_minute(2.0)));
        assert!(throttle.try_acquire(Operation::Queries).is_ok());
        assert!(throttle.try_acquire(Operation::Queries).is_ok());
        let wait = throttle.try_acquire(Operation::Queries).expect_err("empty");
        assert_eq!(wait, Duration::from_secs(30));
        // Unthrottled classes are never refused.
        assert!(throttle.try_acquire(Operation::Methods).is_ok());
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(throttle.try_acquire(Operation::Queries).is_ok());
        assert!(throttle.try_acquire(Operation::Queries).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn shaping_queues_at_the_quota_rate_until_the_queue_is_full() {
        let throttle = Throttle::new(
            &ThrottleConfig::none().with(Operation::TwinReads, Rate::per_second(2.0)),
        )
        .shaped(ThrottleMode::Shape, Duration::from_secs(1));
        // The burst goes at once; then one every half second, up to a second of queue.
        assert_eq!(throttle.reserve(Operation::TwinReads), Ok(Duration::ZERO));
        assert_eq!(throttle.reserve(Operation::TwinReads), Ok(Duration::ZERO));
        assert_eq!(
            throttle.reserve(Operation::TwinReads),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            throttle.reserve(Operation::TwinReads),
            Ok(Duration::from_secs(1))
        );
        let full = throttle.reserve(Operation::TwinReads).expect_err("full");
        assert_eq!(
            full,
            Duration::from_secs(1),
            "retry after at least a second"
        );
        assert_eq!(throttle.counts(), (2, 1));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            throttle.reserve(Operation::TwinReads),
            Ok(Duration::from_secs(1)),
            "half a second later there is room for one more"
        );
        // Reject mode never queues.
        let reject = Throttle::new(
            &ThrottleConfig::none().with(Operation::TwinReads, Rate::per_second(1.0)),
        )
        .shaped(ThrottleMode::Reject, Duration::from_secs(60));
        assert_eq!(reject.reserve(Operation::TwinReads), Ok(Duration::ZERO));
        assert!(reject.reserve(Operation::TwinReads).is_err());
    }

    #[test]
    fn s1_figures() {
        let s1 = ThrottleConfig::tier(Tier::S1, 1);
        assert_eq!(s1.rates[&Operation::Registry].to_string(), "100/min");
        assert_eq!(s1.rates[&Operation::TwinUpdates].to_string(), "50/s");
        assert_eq!(s1.rates[&Operation::Queries].to_string(), "20/min");
        let s1x2 = ThrottleConfig::tier(Tier::S1, 2);
        assert_eq!(s1x2.rates[&Operation::Queries].to_string(), "40/min");
        assert_eq!(s1x2.rates[&Operation::Methods].to_string(), "40/s");
    }
}
