//! Optional throttling that mimics an IoT Hub tier's operation quotas.
//!
//! Each operation class has a token bucket: it refills at the quota's rate and holds at most
//! `burst` tokens. An operation takes one token; with none left, the REST API answers
//! `429 ThrottlingException` (with `Retry-After`), twin operations over MQTT get status 429,
//! new MQTT connections get CONNACK "server unavailable", and telemetry is slowed down (its
//! PUBACK waits for a token), as the service shapes device-to-cloud traffic.
//!
//! # Tiers (one unit)
//!
//! From Microsoft's "IoT Hub quotas and throttling" table, for a hub with one unit:
//!
//! | Operation | S1 | S2 | S3 |
//! |---|---|---|---|
//! | identity registry (create, get, list, update, delete) | 100/min | 100/min | 5,000/min |
//! | new device connections | 100/s | 120/s | 6,000/s |
//! | device-to-cloud sends | 100/s | 120/s | 6,000/s |
//! | twin reads (device and service) | 100/s | 100/s | 500/s |
//! | twin updates (device and service) | 50/s | 50/s | 250/s |
//! | direct methods (160 KB/s, 480 KB/s, 24 MB/s metered in 8 KB) | 20/s | 60/s | 3,000/s |
//! | queries | 20/min | 20/min | 1,000/min |
//!
//! The service applies its throttles "in minute ranges"; here a per-minute quota may burst its
//! whole minute and a per-second quota its whole second.
//!
//! # Modes
//! What happens beyond a quota is the throttle's mode ([`ThrottleMode`], in [`crate::shaping`]):
//! `Reject` answers as above; `Shape` (Azure's way, the default of `casement hub`) queues the
//! request and serves it when the bucket has refilled — see [`Throttle::reserve`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::shaping::ThrottleMode;

use tokio::time::Instant;

/// An operation class with its own quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Identity registry: create, get, list, update, delete devices.
    Registry,
    /// New MQTT device connections.
    Connections,
    /// Device-to-cloud telemetry messages.
    Telemetry,
    /// Twin reads (service GET /twins, device twin GET).
    TwinReads,
    /// Twin updates (service PATCH/PUT /twins, device reported patches).
    TwinUpdates,
    /// Direct method invocations.
    Methods,
    /// Twin queries.
    Queries,
}

impl Operation {
    /// All classes, in a stable order.
    pub const ALL: [Operation; 7] = [
        Operation::Registry,
        Operation::Connections,
        Operation::Telemetry,
        Operation::TwinReads,
        Operation::TwinUpdates,
        Operation::Methods,
        Operation::Queries,
    ];

    /// The name used on the command line (`--throttle-rate twin-reads=10/s`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Registry => "registry",
            Operation::Connections => "connections",
            Operation::Telemetry => "telemetry",
            Operation::TwinReads => "twin-reads",
            Operation::TwinUpdates => "twin-updates",
            Operation::Methods => "methods",
            Operation::Queries => "queries",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A quota: `burst` operations at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained operations per second.
    pub per_second: f64,
    /// Bucket size: how many may happen back to back.
    pub burst: f64,
}

impl Rate {
    /// `n` per second, bursting one second's worth.
    pub fn per_second(n: f64) -> Self {
        Self {
            per_second: n,
            burst: n.max(1.0),
        }
    }

    /// `n` per minute, bursting one minute's worth.
    pub fn per_minute(n: f64) -> Self {
        Self {
            per_second: n / 60.0,
            burst: n.max(1.0),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_minute = self.per_second * 60.0;
        if (self.burst - per_minute).abs() < 1e-6 && self.burst > self.per_second {
            write!(f, "{}/min", round2(per_minute))
        } else {
            write!(f, "{}/s", round2(self.per_second))
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Why a throttle specification did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleParseError {
    /// Unknown tier name.
    #[error("unknown throttle tier {0:?}: expected S1, S2, S3 or off")]
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

    /// The S1 tier, one unit (see the module docs for the figures).
    pub fn s1() -> Self {
        Self::tier(100.0, 100.0, 100.0, 100.0, 50.0, 20.0, 20.0)
    }

    /// The S2 tier, one unit.
    pub fn s2() -> Self {
        Self::tier(100.0, 120.0, 120.0, 100.0, 50.0, 60.0, 20.0)
    }

    /// The S3 tier, one unit.
    pub fn s3() -> Self {
        Self::tier(5000.0, 6000.0, 6000.0, 500.0, 250.0, 3000.0, 1000.0)
    }

    #[allow(clippy::too_many_arguments)]
    fn tier(
        registry_per_min: f64,
        connections: f64,
        telemetry: f64,
        twin_reads: f64,
        twin_updates: f64,
        methods: f64,
        queries_per_min: f64,
    ) -> Self {
        let rates = BTreeMap::from([
            (Operation::Registry, Rate::per_minute(registry_per_min)),
            (Operation::Connections, Rate::per_second(connections)),
            (Operation::Telemetry, Rate::per_second(telemetry)),
            (Operation::TwinReads, Rate::per_second(twin_reads)),
            (Operation::TwinUpdates, Rate::per_second(twin_updates)),
            (Operation::Methods, Rate::per_second(methods)),
            (Operation::Queries, Rate::per_minute(queries_per_min)),
        ]);
        Self { rates }
    }

    /// A tier by name: `S1`, `S2`, `S3` (case-insensitive) or `off`.
    pub fn from_tier(name: &str) -> Result<Self, ThrottleParseError> {
        match name.trim().to_ascii_uppercase().as_str() {
            "S1" => Ok(Self::s1()),
            "S2" => Ok(Self::s2()),
            "S3" => Ok(Self::s3()),
            "OFF" | "NONE" => Ok(Self::none()),
            _ => Err(ThrottleParseError::Tier(name.to_owned())),
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
        let (count, unit) = rate
            .trim()
            .split_once('/')
            .ok_or_else(|| fail("missing '/s' or '/min'"))?;
        let count: f64 = count
            .trim()
            .parse()
            .map_err(|_| fail("the count is not a number"))?;
        if !(count.is_finite() && count > 0.0) {
            return Err(fail("the count must be positive"));
        }
        let rate = match unit.trim() {
            "s" | "sec" | "second" => Rate::per_second(count),
            "min" | "minute" => Rate::per_minute(count),
            _ => return Err(fail("the unit must be s or min")),
        };
        Ok(Self { op, rate })
    }
}

#[derive(Debug)]
struct Bucket {
    rate: Rate,
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        self.updated = now;
    }
}

/// The running throttle: one token bucket per configured class.
#[derive(Debug)]
pub(crate) struct Throttle {
    buckets: BTreeMap<Operation, Mutex<Bucket>>,
    mode: ThrottleMode,
    max_wait: Duration,
    /// Operations that waited in a shaping queue.
    queued: AtomicU64,
    /// Operations refused: 429, or an MQTT connection closed.
    refused: AtomicU64,
}

impl Throttle {
    pub(crate) fn new(config: &ThrottleConfig) -> Self {
        let now = Instant::now();
        let buckets = config
            .rates
            .iter()
            .map(|(op, rate)| {
                (
                    *op,
                    Mutex::new(Bucket {
                        rate: *rate,
                        tokens: rate.burst,
                        updated: now,
                    }),
                )
            })
            .collect();
        Self {
            buckets,
            mode: ThrottleMode::Reject,
            max_wait: Duration::ZERO,
            queued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
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
        let Some(bucket) = self.buckets.get(&op) else {
            return Ok(Duration::ZERO);
        };
        let max_wait = match self.mode {
            ThrottleMode::Shape => self.max_wait,
            ThrottleMode::Reject => Duration::ZERO,
        };
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.refill(Instant::now());
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / bucket.rate.per_second);
        if wait > max_wait {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err((wait - max_wait).max(Duration::from_secs(1)));
        }
        bucket.tokens -= 1.0;
        self.queued.fetch_add(1, Ordering::Relaxed);
        Ok(wait)
    }

    /// Takes a token, or says how long until one is available.
    pub(crate) fn try_acquire(&self, op: Operation) -> Result<(), Duration> {
        let Some(bucket) = self.buckets.get(&op) else {
            return Ok(());
        };
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        bucket.refill(Instant::now());
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            Err(Duration::from_secs_f64(missing / bucket.rate.per_second))
        }
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
        assert!(ThrottleConfig::from_tier("s1").is_ok());
        assert!(ThrottleConfig::from_tier("S9").is_err());
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
        let s1 = ThrottleConfig::s1();
        assert_eq!(s1.rates[&Operation::Registry].to_string(), "100/min");
        assert_eq!(s1.rates[&Operation::TwinUpdates].to_string(), "50/s");
        assert_eq!(s1.rates[&Operation::Queries].to_string(), "20/min");
    }
}
