//! IoT Hub's tier quotas, written once: tier × operation × per-unit rule, and the token bucket
//! both sides meter them with.
//!
//! The local hub throttles with these figures (`casement hub --throttle S1`) and the service
//! client limits itself with them (`casement run --tier S1 --units 2`), so a client that keeps
//! its own limits never earns a 429 from a hub of the same tier.
//!
//! From Microsoft's "IoT Hub quotas and throttling" table:
//!
//! | Operation | F1, S1 | S2 | S3 |
//! |---|---|---|---|
//! | identity registry (create, get, list, update, delete) | 100/min/unit | 100/min/unit | 5,000/min/unit |
//! | new device connections | max(100/s, 12/s/unit) | 120/s/unit | 6,000/s/unit |
//! | device-to-cloud sends | max(100/s, 12/s/unit) | 120/s/unit | 6,000/s/unit |
//! | twin reads (device and service) | max(100/s, 10/s/unit) | max(100/s, 10/s/unit) | 500/s/unit |
//! | twin updates (device and service) | max(50/s, 5/s/unit) | max(50/s, 5/s/unit) | 250/s/unit |
//! | direct methods (160 KB/s, 480 KB/s, 24 MB/s per unit, metered in 8 KB) | 20/s/unit | 60/s/unit | 3,000/s/unit |
//! | queries (every page counts) | 20/min/unit | 20/min/unit | 1,000/min/unit |
//! | configurations (create, update, get, list, delete) | 20/min/unit | 20/min/unit | 20/min/unit |
//!
//! The service applies its throttles "in minute ranges": a hub may let a per-minute quota's
//! whole minute through at once ([`Rate::burst`]). A client should not count on that and
//! spreads its calls out ([`Rate::spread`]).
//!
//! ```
//! use casement_iothub::quota::{Operation, Tier};
//! assert_eq!(Tier::S1.rate(Operation::Queries, 1).to_string(), "20/min");
//! assert_eq!(Tier::S1.rate(Operation::TwinReads, 20).to_string(), "200/s");
//! assert_eq!(Tier::S3.rate(Operation::Methods, 2).to_string(), "6000/s");
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// An operation class with its own quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Identity registry: create, get, list, update, delete devices.
    Registry,
    /// New MQTT device connections.
    Connections,
    /// Device-to-cloud telemetry messages.
    Telemetry,
    /// Twin reads (service `GET /twins`, device twin GET).
    TwinReads,
    /// Twin updates (service `PATCH`/`PUT /twins`, device reported patches).
    TwinUpdates,
    /// Direct method invocations.
    Methods,
    /// Twin queries; every page is one.
    Queries,
    /// Automatic device management configurations (create, update, get, list, delete).
    Configurations,
}

impl Operation {
    /// All classes, in a stable order.
    pub const ALL: [Operation; 8] = [
        Operation::Registry,
        Operation::Connections,
        Operation::Telemetry,
        Operation::TwinReads,
        Operation::TwinUpdates,
        Operation::Methods,
        Operation::Queries,
        Operation::Configurations,
    ];

    /// The name used on command lines (`--throttle-rate twin-reads=10/s`) and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Registry => "registry",
            Operation::Connections => "connections",
            Operation::Telemetry => "telemetry",
            Operation::TwinReads => "twin-reads",
            Operation::TwinUpdates => "twin-updates",
            Operation::Methods => "methods",
            Operation::Queries => "queries",
            Operation::Configurations => "configurations",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A quota: `burst` operations back to back, refilled at `per_second`.
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

    /// `n` per minute, bursting one minute's worth (as the service may).
    pub fn per_minute(n: f64) -> Self {
        Self {
            per_second: n / 60.0,
            burst: n.max(1.0),
        }
    }

    /// The same rate with a burst of one second's worth (at least one call), never a minute's:
    /// how a client keeps a quota without relying on the hub's leniency, so a restart cannot
    /// exceed it either.
    pub fn spread(self) -> Self {
        Self {
            per_second: self.per_second,
            burst: self.per_second.clamp(1.0, self.burst.max(1.0)),
        }
    }

    /// The same rate `factor` times (units, or a share of a quota).
    pub fn times(self, factor: f64) -> Self {
        Self {
            per_second: self.per_second * factor,
            burst: (self.burst * factor).max(1.0),
        }
    }

    /// The time one call takes at this rate.
    pub fn interval(self) -> Duration {
        Duration::from_secs_f64(1.0 / self.per_second.max(1e-9))
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

/// Why a rate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid rate {text:?}: {why} (expected N/s or N/min, N positive)")]
pub struct RateParseError {
    /// The text.
    pub text: String,
    /// What is wrong.
    pub why: &'static str,
}

impl FromStr for Rate {
    type Err = RateParseError;

    /// `10/s`, `20/min` (also `sec`, `second`, `minute`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |why| RateParseError {
            text: text.to_owned(),
            why,
        };
        let (count, unit) = text
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
        match unit.trim() {
            "s" | "sec" | "second" => Ok(Rate::per_second(count)),
            "min" | "minute" => Ok(Rate::per_minute(count)),
            _ => Err(fail("the unit must be s or min")),
        }
    }
}

/// An IoT Hub pricing tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Free: the throttles of one S1 unit.
    F1,
    /// Standard S1.
    S1,
    /// Standard S2.
    S2,
    /// Standard S3.
    S3,
}

/// How a quota grows with the hub's units.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PerUnit {
    /// `n` per unit.
    Each(f64),
    /// `n` per unit, but never less than `floor` for the whole hub.
    AtLeast { floor: f64, each: f64 },
}

impl PerUnit {
    fn total(self, units: u32) -> f64 {
        let u = f64::from(units.max(1));
        match self {
            PerUnit::Each(n) => n * u,
            PerUnit::AtLeast { floor, each } => (each * u).max(floor),
        }
    }
}

/// Per second or per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Second,
    Minute,
}

/// The table: (rule, period) for a tier and an operation.
fn rule(tier: Tier, op: Operation) -> (PerUnit, Period) {
    use Operation as O;
    use PerUnit::{AtLeast, Each};
    use Period::{Minute, Second};
    let s1 = matches!(tier, Tier::F1 | Tier::S1);
    match (op, tier) {
        (O::Registry, Tier::S3) => (Each(5000.0), Minute),
        (O::Registry, _) => (Each(100.0), Minute),
        (O::Connections | O::Telemetry, _) if s1 => (
            AtLeast {
                floor: 100.0,
                each: 12.0,
            },
            Second,
        ),
        (O::Connections | O::Telemetry, Tier::S2) => (Each(120.0), Second),
        (O::Connections | O::Telemetry, _) => (Each(6000.0), Second),
        (O::TwinReads, Tier::S3) => (Each(500.0), Second),
        (O::TwinReads, _) => (
            AtLeast {
                floor: 100.0,
                each: 10.0,
            },
            Second,
        ),
        (O::TwinUpdates, Tier::S3) => (Each(250.0), Second),
        (O::TwinUpdates, _) => (
            AtLeast {
                floor: 50.0,
                each: 5.0,
            },
            Second,
        ),
        (O::Methods, Tier::S2) => (Each(60.0), Second),
        (O::Methods, Tier::S3) => (Each(3000.0), Second),
        (O::Methods, _) => (Each(20.0), Second),
        (O::Queries, Tier::S3) => (Each(1000.0), Minute),
        (O::Queries, _) => (Each(20.0), Minute),
        (O::Configurations, _) => (Each(20.0), Minute),
    }
}

impl Tier {
    /// All tiers.
    pub const ALL: [Tier; 4] = [Tier::F1, Tier::S1, Tier::S2, Tier::S3];

    /// The quota of `op` on a hub of this tier with `units` units (at least one).
    pub fn rate(self, op: Operation, units: u32) -> Rate {
        let (rule, period) = rule(self, op);
        let n = rule.total(units);
        match period {
            Period::Second => Rate::per_second(n),
            Period::Minute => Rate::per_minute(n),
        }
    }

    /// The tier's name as Azure writes it.
    pub fn name(self) -> &'static str {
        match self {
            Tier::F1 => "F1",
            Tier::S1 => "S1",
            Tier::S2 => "S2",
            Tier::S3 => "S3",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a tier name did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {0:?}: expected F1, S1, S2 or S3")]
pub struct TierParseError(pub String);

impl FromStr for Tier {
    type Err = TierParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "F1" | "FREE" => Ok(Tier::F1),
            "S1" => Ok(Tier::S1),
            "S2" => Ok(Tier::S2),
            "S3" => Ok(Tier::S3),
            _ => Err(TierParseError(s.to_owned())),
        }
    }
}

/// A token bucket: refills at the rate, holds at most `burst`. Pure: the caller passes the time
/// (tokio's clock in the hub and the client, so paused-time tests drive it).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate.burst,
            updated: now,
        }
    }

    /// The rate it meters.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(self.rate.burst);
        self.updated = now.max(self.updated);
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(
                missing / self.rate.per_second.max(1e-9),
            ))
        }
    }

    /// Shaping: takes a token now, or reserves the next free one behind the reservations
    /// already made, and says how long to wait before going ahead (zero: at once). The bucket
    /// goes into debt by one token per reservation, so reserved operations are served at the
    /// rate, in order. When the wait would exceed `max_wait` (the queue is full), nothing is
    /// reserved and the error is the wait that would have been needed.
    pub fn reserve(&mut self, now: Instant, max_wait: Duration) -> Result<Duration, Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.rate.per_second.max(1e-9));
        if wait > max_wait {
            return Err(wait);
        }
        self.tokens -= 1.0;
        Ok(wait)
    }

    /// Tokens available at `now` (for metrics and tests).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_microsofts_figures() {
        let s = |tier: Tier, op, units| tier.rate(op, units).to_string();
        assert_eq!(s(Tier::S1, Operation::Registry, 1), "100/min");
        assert_eq!(s(Tier::S1, Operation::TwinUpdates, 1), "50/s");
        assert_eq!(s(Tier::S1, Operation::TwinUpdates, 20), "100/s");
        assert_eq!(s(Tier::S1, Operation::TwinReads, 1), "100/s");
        assert_eq!(s(Tier::S1, Operation::Methods, 3), "60/s");
        assert_eq!(s(Tier::S1, Operation::Queries, 2), "40/min");
        assert_eq!(s(Tier::S1, Operation::Connections, 10), "120/s");
        assert_eq!(s(Tier::S2, Operation::Methods, 1), "60/s");
        assert_eq!(s(Tier::S2, Operation::Connections, 2), "240/s");
        assert_eq!(s(Tier::S3, Operation::Queries, 1), "1000/min");
        assert_eq!(s(Tier::S3, Operation::TwinReads, 2), "1000/s");
        assert_eq!(s(Tier::S3, Operation::Configurations, 1), "20/min");
        // F1 is throttled as one S1 unit, and zero units count as one.
        for op in Operation::ALL {
            assert_eq!(Tier::F1.rate(op, 1), Tier::S1.rate(op, 1), "{op}");
            assert_eq!(Tier::S1.rate(op, 0), Tier::S1.rate(op, 1), "{op}");
        }
    }

    #[test]
    fn tiers_and_rates_parse() {
        assert_eq!("s1".parse::<Tier>(), Ok(Tier::S1));
        assert_eq!("Free".parse::<Tier>(), Ok(Tier::F1));
        let err = "S9".parse::<Tier>().expect_err("S9");
        assert!(err.to_string().contains("F1, S1, S2 or S3"), "{err}");
        assert_eq!("10/s".parse::<Rate>(), Ok(Rate::per_second(10.0)));
        assert_eq!(" 20 / min".parse::<Rate>(), Ok(Rate::per_minute(20.0)));
        for bad in ["10", "x/s", "0/s", "-1/min", "1/h"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_spread_rate_never_bursts_a_minute() {
        let queries = Tier::S1.rate(Operation::Queries, 1);
        assert_eq!(queries.burst, 20.0);
        assert_eq!(queries.spread().burst, 1.0);
        let methods = Tier::S1.rate(Operation::Methods, 1).spread();
        assert_eq!(methods.burst, 20.0);
    }

    #[test]
    fn a_bucket_bursts_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Rate::per_minute(2.0), t0);
        assert!(bucket.try_take(t0).is_ok());
        assert!(bucket.try_take(t0).is_ok());
        assert_eq!(bucket.try_take(t0), Err(Duration::from_secs(30)));
        let later = t0 + Duration::from_secs(30);
        assert!(bucket.try_take(later).is_ok());
        assert!(bucket.try_take(later).is_err());
        // Time going backwards (a caller's stale instant) neither refills nor panics.
        assert!(bucket.try_take(t0).is_err());
    }

    #[test]
    fn reservations_queue_at_the_rate_until_the_queue_is_full() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(Rate::per_second(2.0), t0);
        let max = Duration::from_secs(1);
        assert_eq!(bucket.reserve(t0, max), Ok(Duration::ZERO));
        assert_eq!(bucket.reserve(t0, max), Ok(Duration::ZERO));
        assert_eq!(bucket.reserve(t0, max), Ok(Duration::from_millis(500)));
        assert_eq!(bucket.reserve(t0, max), Ok(Duration::from_secs(1)));
        assert_eq!(bucket.reserve(t0, max), Err(Duration::from_millis(1500)));
        let later = t0 + Duration::from_millis(500);
        assert_eq!(bucket.reserve(later, max), Ok(Duration::from_secs(1)));
    }
}
