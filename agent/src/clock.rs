//! Time for the agent: an injected [`Clock`] plus sleeping until a wall-clock instant.
//!
//! Window transitions and token expiry are wall-clock instants, so the agent sleeps *until an
//! instant of its clock*, not for a duration. [`AgentClock::sleep_until`] arms a tokio timer for
//! the remaining time but never longer than [`JUMP_CHECK_INTERVAL`]; each time it wakes it
//! compares how far the wall clock moved with how far the monotonic clock moved, and returns
//! early with [`Wake::ClockJumped`] when they disagree (NTP step, RTC set after boot, a manual
//! clock moved by a test), so the caller re-evaluates its windows.
//!
//! Tests (and the simulator) drive time with a [`DrivenClock`]: a [`ManualClock`] that also
//! wakes every agent sleeping on it when it is moved, so a test can cross a week of windows in
//! milliseconds. A per-device skew is an offset added on top ([`AgentClock::with_skew`]).

use std::sync::Arc;
use std::time::Duration;

use casement_policy::clock::{Clock, ManualClock, SystemClock};
use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;
use tokio::time::Instant;

/// The longest the agent sleeps without checking the wall clock for a jump.
pub const JUMP_CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// A disagreement between wall and monotonic time above this counts as a jump.
pub const JUMP_TOLERANCE: TimeDelta = TimeDelta::seconds(2);

/// Why [`AgentClock::sleep_until`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The deadline was reached.
    Deadline,
    /// The wall clock moved by something other than the time slept (by this much more, or
    /// less when negative), or a driven clock was moved; re-evaluate.
    ClockJumped(TimeDelta),
}

/// The agent's view of time: a shared clock, the device's skew, and change notifications.
#[derive(Debug, Clone)]
pub struct AgentClock {
    clock: Arc<dyn Clock>,
    skew: TimeDelta,
    moved: Option<watch::Receiver<u64>>,
}

impl AgentClock {
    /// The operating system's clock.
    pub fn system() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            skew: TimeDelta::zero(),
            moved: None,
        }
    }

    /// Any clock; sleeps notice it moved only through the periodic jump check.
    pub fn from_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            skew: TimeDelta::zero(),
            moved: None,
        }
    }

    /// The same clock seen by a device whose clock is `skew` ahead (negative: behind).
    pub fn with_skew(mut self, skew: TimeDelta) -> Self {
        self.skew = skew;
        self
    }

    /// The skew added to the underlying clock.
    pub fn skew(&self) -> TimeDelta {
        self.skew
    }

    /// The current instant as this device sees it.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now() + self.skew
    }

    /// Sleeps until this clock reads `deadline` or later, or until the clock jumps.
    pub async fn sleep_until(&mut self, deadline: DateTime<Utc>) -> Wake {
        loop {
            let wall_before = self.now();
            if wall_before >= deadline {
                return Wake::Deadline;
            }
            let remaining = (deadline - wall_before)
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(JUMP_CHECK_INTERVAL);
            let mono_before = Instant::now();
            let moved = match self.moved.as_mut() {
                Some(rx) => tokio::select! {
                    () = tokio::time::sleep(remaining) => false,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            // The driver is gone: the clock can only move by itself now.
                            self.moved = None;
                        }
                        changed.is_ok()
                    }
                },
                None => {
                    tokio::time::sleep(remaining).await;
                    false
                }
            };
            let wall_moved = self.now() - wall_before;
            if moved {
                return Wake::ClockJumped(wall_moved);
            }
            let mono_moved = TimeDelta::from_std(mono_before.elapsed()).unwrap_or(TimeDelta::MAX);
            let drift = wall_moved - mono_moved;
            if drift.abs() > JUMP_TOLERANCE {
                return Wake::ClockJumped(drift);
            }
        }
    }
}

impl Clock for AgentClock {
    fn now(&self) -> DateTime<Utc> {
        AgentClock::now(self)
    }
}

/// A hand-driven clock that wakes the agents sleeping on it whenever it is moved.
#[derive(Debug, Clone)]
pub struct DrivenClock {
    clock: ManualClock,
    moved: Arc<watch::Sender<u64>>,
}

impl DrivenClock {
    /// A clock stopped at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            clock: ManualClock::new(start),
            moved: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The current instant.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Moves the clock by `by` and wakes every sleeper; returns the new time.
    pub fn advance(&self, by: TimeDelta) -> DateTime<Utc> {
        let now = self.clock.advance(by);
        self.moved.send_modify(|n| *n = n.wrapping_add(1));
        now
    }

    /// Sets the clock to `now` and wakes every sleeper.
    pub fn set(&self, now: DateTime<Utc>) {
        self.clock.set(now);
        self.moved.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The underlying manual clock (shares this clock's time), e.g. for a hub under test.
    pub fn manual(&self) -> ManualClock {
        self.clock.clone()
    }

    /// An [`AgentClock`] reading this clock and woken when it moves.
    pub fn agent_clock(&self) -> AgentClock {
        AgentClock {
            clock: Arc::new(self.clock.clone()),
            skew: TimeDelta::zero(),
            moved: Some(self.moved.subscribe()),
        }
    }
}

impl Clock for DrivenClock {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap()
    }

    #[test]
    fn skew_shifts_now() {
        let driven = DrivenClock::new(start());
        let ahead = driven.agent_clock().with_skew(TimeDelta::seconds(90));
        assert_eq!(ahead.now(), start() + TimeDelta::seconds(90));
        assert_eq!(ahead.skew(), TimeDelta::seconds(90));
    }

    #[tokio::test]
    async fn a_past_deadline_returns_at_once() {
        let driven = DrivenClock::new(start());
        let mut clock = driven.agent_clock();
        assert_eq!(clock.sleep_until(start()).await, Wake::Deadline);
    }

    #[tokio::test]
    async fn moving_a_driven_clock_wakes_the_sleeper() {
        let driven = DrivenClock::new(start());
        let mut clock = driven.agent_clock();
        let sleeper = tokio::spawn(async move {
            let first = clock.sleep_until(start() + TimeDelta::hours(3)).await;
            let second = clock.sleep_until(start() + TimeDelta::hours(3)).await;
            (first, second)
        });
        tokio::task::yield_now().await;
        driven.advance(TimeDelta::hours(1));
        // The first wake reports the move; a second move past the deadline ends the second sleep.
        tokio::task::yield_now().await;
        driven.advance(TimeDelta::hours(5));
        let (first, second) = sleeper.await.unwrap();
        assert!(matches!(first, Wake::ClockJumped(_)), "{first:?}");
        assert!(
            matches!(second, Wake::Deadline | Wake::ClockJumped(_)),
            "{second:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_jump_is_detected_by_the_periodic_check() {
        // A plain manual clock (no notifications) stands in for the OS clock being stepped.
        let manual = ManualClock::new(start());
        let mut clock = AgentClock::from_clock(Arc::new(manual.clone()));
        let stepper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            manual.advance(TimeDelta::hours(2));
        });
        let wake = clock.sleep_until(start() + TimeDelta::days(1)).await;
        stepper.await.unwrap();
        // The manual clock did not follow the 15 s slept, then leapt two hours: both are drift.
        assert!(
            matches!(wake, Wake::ClockJumped(d) if d > TimeDelta::minutes(100)),
            "{wake:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_clock_sleeps_to_the_deadline() {
        // A clock that follows tokio's (paused) time exactly: no drift, so no early wake.
        #[derive(Debug)]
        struct TokioClock(Instant, DateTime<Utc>);
        impl Clock for TokioClock {
            fn now(&self) -> DateTime<Utc> {
                self.1 + TimeDelta::from_std(self.0.elapsed()).unwrap()
            }
        }
        let mut clock = AgentClock::from_clock(Arc::new(TokioClock(Instant::now(), start())));
        let deadline = start() + TimeDelta::minutes(2);
        assert_eq!(clock.sleep_until(deadline).await, Wake::Deadline);
        assert!(clock.now() >= deadline);
    }
}
