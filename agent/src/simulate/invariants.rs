//! The invariants of DESIGN.md, checked against what really happened in a simulated run — the
//! one checker the demo, the scheduler's tests and the whole-system scenario share: pure
//! functions from the facts of the run (the simulated devices' own reboot log, the invocations
//! the scheduler made, the outages a test caused) to a list of [`Violation`]s. An empty list is
//! the pass. (The test kit adds checks of the hub's twins and the scheduler's report against
//! the same facts; they produce [`Violation::Twin`] and [`Violation::Report`].)
//!
//! The window math is the policy crate's (the same function the agent and the scheduler call);
//! these checks ask whether the system *obeyed* it, under faults. The DST arithmetic itself is
//! checked independently by the scenario (local wall-clock times read with chrono-tz).
//!
//! Each check is unit-tested below with a log that breaks it, so none of them can pass
//! vacuously.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::SimulatedReboot;
use casement_policy::Policy;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

/// One reboot, as the device lived it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reboot {
    /// The device.
    pub device: String,
    /// When the power went, by the reference clock.
    pub at: DateTime<Utc>,
    /// The same instant by the device's own (skewed) clock.
    pub device_time: DateTime<Utc>,
    /// The occurrence it was for.
    pub occurrence: Option<DateTime<Utc>>,
    /// The policy it was for.
    pub policy: Option<String>,
    /// Forced outside the window gate.
    pub forced: bool,
}

impl From<&SimulatedReboot> for Reboot {
    fn from(r: &SimulatedReboot) -> Self {
        Self {
            device: r.device.clone(),
            at: r.at,
            device_time: r.device_time,
            occurrence: r.occurrence,
            policy: r.policy.clone(),
            forced: r.forced,
        }
    }
}

/// A `reboot` invocation the scheduler made, seen at its hub client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// When the scheduler decided on it, by its clock — or, when only a later observation is
    /// known, the latest it can have been.
    pub at: DateTime<Utc>,
    /// The earliest the decision can have been (`at` when it is known exactly).
    pub earliest: DateTime<Utc>,
    /// The device.
    pub device: String,
    /// The policy named in the payload.
    pub policy: String,
    /// The occurrence named in the payload.
    pub occurrence: Option<DateTime<Utc>>,
}

/// A stretch of time in which the test kept one device off the network on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    /// The device.
    pub device: String,
    /// From (reference clock).
    pub from: DateTime<Utc>,
    /// To (reference clock).
    pub to: DateTime<Utc>,
}

/// One simulated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its id.
    pub id: String,
    /// Its zone.
    pub zone: Tz,
}

/// Everything known about a run.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The policies applied.
    pub policies: Vec<Policy>,
    /// The policy each device should carry (highest priority among those targeting it).
    pub assignment: BTreeMap<String, String>,
    /// The devices.
    pub devices: Vec<Device>,
    /// The ground truth of reboots.
    pub reboots: Vec<Reboot>,
    /// Every `reboot` invocation.
    pub invocations: Vec<Invocation>,
    /// Deliberate per-device outages.
    pub outages: Vec<Outage>,
    /// (policy, occurrence) pairs the failure budget paused.
    pub paused: BTreeSet<(String, DateTime<Utc>)>,
    /// Windows that open at or after `.0` and close at or before `.1` are judged for
    /// completeness (every available device rebooted).
    pub judged: (DateTime<Utc>, DateTime<Utc>),
    /// How long a simulated device stays dark.
    pub reboot_time: TimeDelta,
    /// The largest device clock skew.
    pub max_skew: TimeDelta,
    /// How long a device may take from accepting a reboot (when the gate checks the time left)
    /// to losing power (when the ground truth records it): it persists its state, answers and
    /// reports first.
    pub power_off_lag: TimeDelta,
}

/// The most devices of one policy dark at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    /// How many.
    pub count: usize,
    /// When that count was first reached (`None`: no reboot).
    pub at: Option<DateTime<Utc>>,
    /// The policy's `max_concurrent`.
    pub max: u32,
}

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A reboot that no policy window covers (invariant 1).
    OutsideWindow {
        /// The reboot.
        reboot: Reboot,
        /// Why.
        why: String,
    },
    /// A reboot for a policy the device does not carry, or for none.
    WrongPolicy {
        /// The reboot.
        reboot: Reboot,
        /// The policy the device carries.
        expected: Option<String>,
    },
    /// A forced reboot (nothing in the scenario forces one).
    Forced {
        /// The reboot.
        reboot: Reboot,
    },
    /// More than one reboot of one device for one occurrence (invariant 2).
    Twice {
        /// The device.
        device: String,
        /// The policy.
        policy: String,
        /// The occurrence.
        occurrence: DateTime<Utc>,
        /// How many.
        count: usize,
    },
    /// More devices rebooting at once than `max_concurrent` (invariant 3).
    Concurrency {
        /// The policy.
        policy: String,
        /// When.
        at: DateTime<Utc>,
        /// How many.
        count: usize,
        /// The limit.
        max: u32,
    },
    /// More invocations in a minute than `max_per_minute` (invariant 3).
    Rate {
        /// The policy.
        policy: String,
        /// Start of the minute.
        from: DateTime<Utc>,
        /// How many.
        count: usize,
        /// The limit.
        max: u32,
    },
    /// A device that was available for a whole window was not rebooted in it (invariant 4).
    Missed {
        /// The device.
        device: String,
        /// The policy.
        policy: String,
        /// The occurrence.
        occurrence: DateTime<Utc>,
    },
    /// The twin disagrees with the ground truth.
    Twin {
        /// The device.
        device: String,
        /// What disagrees.
        what: String,
    },
    /// The report disagrees with the ground truth.
    Report {
        /// The device or policy.
        subject: String,
        /// What disagrees.
        what: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ts = |t: &DateTime<Utc>| t.format("%H:%M:%S%.3f").to_string();
        match self {
            Violation::OutsideWindow { reboot, why } => write!(
                f,
                "{} rebooted outside its window at {} (device clock {}): {why}",
                reboot.device,
                ts(&reboot.at),
                ts(&reboot.device_time)
            ),
            Violation::WrongPolicy { reboot, expected } => write!(
                f,
                "{} rebooted at {} for policy {:?}, but carries {expected:?}",
                reboot.device,
                ts(&reboot.at),
                reboot.policy
            ),
            Violation::Forced { reboot } => {
                write!(
                    f,
                    "{} was force-rebooted at {}",
                    reboot.device,
                    ts(&reboot.at)
                )
            }
            Violation::Twice {
                device,
                policy,
                occurrence,
                count,
            } => write!(
                f,
                "{device} rebooted {count} times for {policy} occurrence {}",
                ts(occurrence)
            ),
            Violation::Concurrency {
                policy,
                at,
                count,
                max,
            } => write!(
                f,
                "{count} devices rebooting at once under {policy} at {} (max_concurrent {max})",
                ts(at)
            ),
            Violation::Rate {
                policy,
                from,
                count,
                max,
            } => write!(
                f,
                "{count} invocations under {policy} in the minute from {} (max_per_minute {max})",
                ts(from)
            ),
            Violation::Missed {
                device,
                policy,
                occurrence,
            } => write!(
                f,
                "{device} was available for the whole {policy} window {} but not rebooted in it",
                ts(occurrence)
            ),
            Violation::Twin { device, what } => write!(f, "twin of {device}: {what}"),
            Violation::Report { subject, what } => write!(f, "report, {subject}: {what}"),
        }
    }
}

impl Facts {
    /// The facts of a run of `devices` carrying the policies `assignment` names, with nothing
    /// happened yet: no reboots, invocations, outages or pauses, no window judged for
    /// completeness, no skew and no lag. Fill in what the run knows.
    pub fn new(
        policies: Vec<Policy>,
        assignment: BTreeMap<String, String>,
        devices: Vec<Device>,
        reboot_time: TimeDelta,
    ) -> Self {
        Self {
            policies,
            assignment,
            devices,
            reboots: Vec::new(),
            invocations: Vec::new(),
            outages: Vec::new(),
            paused: BTreeSet::new(),
            judged: (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MIN_UTC),
            reboot_time,
            max_skew: TimeDelta::zero(),
            power_off_lag: TimeDelta::zero(),
        }
    }

    /// The policy named `name`.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name() == name)
    }

    /// The zone `device`'s agent reports.
    pub fn zone_of(&self, device: &str) -> Option<Tz> {
        self.devices.iter().find(|d| d.id == device).map(|d| d.zone)
    }

    /// The zone `policy`'s windows are computed in for `device`.
    fn window_zone(&self, policy: &Policy, device: &str) -> Option<Tz> {
        policy.window().timezone().resolve(self.zone_of(device))
    }

    /// Every check of the run's own log: invariants 1 to 4.
    pub fn check(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        out.extend(self.check_windows());
        out.extend(self.check_once_per_occurrence());
        out.extend(self.check_concurrency());
        out.extend(self.check_rate());
        out.extend(self.check_completeness());
        out
    }

    /// Invariant 1: every reboot is for the device's policy, inside the window of the
    /// occurrence it names by the device's own clock, with the policy's expected duration
    /// left, and — by the true clock — no further outside it than the largest skew.
    pub fn check_windows(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        for reboot in &self.reboots {
            if reboot.forced {
                out.push(Violation::Forced {
                    reboot: reboot.clone(),
                });
                continue;
            }
            let expected = self.assignment.get(&reboot.device);
            let policy = match (&reboot.policy, expected) {
                (Some(name), Some(exp)) if name == exp => self.policy(name),
                _ => None,
            };
            let Some(policy) = policy else {
                out.push(Violation::WrongPolicy {
                    reboot: reboot.clone(),
                    expected: expected.cloned(),
                });
                continue;
            };
            let outside = |why: String| Violation::OutsideWindow {
                reboot: reboot.clone(),
                why,
            };
            let Some(zone) = self.window_zone(policy, &reboot.device) else {
                out.push(outside("no zone to compute its windows in".into()));
                continue;
            };
            let Some(state) = policy.window().window_at(zone, reboot.device_time) else {
                out.push(outside("the policy has no window at all".into()));
                continue;
            };
            let window = state.window;
            if !state.open {
                out.push(outside(format!(
                    "the next window opens at {}",
                    window.opens_at
                )));
                continue;
            }
            if reboot.occurrence != Some(window.occurrence) {
                out.push(outside(format!(
                    "it names occurrence {:?}, the open window is {}",
                    reboot.occurrence, window.occurrence
                )));
            }
            let expected_duration =
                TimeDelta::from_std(policy.reboot().expected_duration).unwrap_or(TimeDelta::MAX);
            // The power goes a moment after the gate accepted; allow that moment.
            if reboot.device_time + expected_duration > window.closes_at + self.power_off_lag {
                out.push(outside(format!(
                    "less than the expected duration was left (window closes {})",
                    window.closes_at
                )));
            }
            if reboot.at < window.opens_at - self.max_skew
                || reboot.at >= window.closes_at + self.max_skew
            {
                out.push(outside(format!(
                    "by the true clock, more than the largest skew outside {} – {}",
                    window.opens_at, window.closes_at
                )));
            }
        }
        out
    }

    /// Invariant 2: at most one reboot per device and occurrence.
    pub fn check_once_per_occurrence(&self) -> Vec<Violation> {
        let mut counts: BTreeMap<(String, String, DateTime<Utc>), usize> = BTreeMap::new();
        for r in &self.reboots {
            if let (Some(policy), Some(occurrence)) = (&r.policy, r.occurrence) {
                *counts
                    .entry((r.device.clone(), policy.clone(), occurrence))
                    .or_default() += 1;
            }
        }
        counts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|((device, policy, occurrence), count)| Violation::Twice {
                device,
                policy,
                occurrence,
                count,
            })
            .collect()
    }

    /// Per policy: the most of its devices dark at the same time (a device is dark from its
    /// power cut for the reboot time), when that was first reached, and its `max_concurrent`.
    pub fn peaks(&self) -> BTreeMap<String, Peak> {
        let mut peaks = BTreeMap::new();
        for policy in &self.policies {
            let mut events: Vec<(DateTime<Utc>, i32)> = self
                .reboots
                .iter()
                .filter(|r| r.policy.as_deref() == Some(policy.name()))
                .flat_map(|r| [(r.at, 1), (r.at + self.reboot_time, -1)])
                .collect();
            // Ends before starts at the same instant: half-open intervals.
            events.sort();
            let mut peak = Peak {
                count: 0,
                at: None,
                max: policy.rollout().max_concurrent,
            };
            let mut dark = 0usize;
            for (at, delta) in events {
                dark = if delta > 0 {
                    dark + 1
                } else {
                    dark.saturating_sub(1)
                };
                if dark > peak.count {
                    peak.count = dark;
                    peak.at = Some(at);
                }
            }
            peaks.insert(policy.name().to_owned(), peak);
        }
        peaks
    }

    /// Invariant 3a: under each policy, never more devices dark at once than `max_concurrent`
    /// (a device is dark from its power cut for the reboot time; the scheduler counts it in
    /// flight for longer, from before the call until it sees the completion).
    pub fn check_concurrency(&self) -> Vec<Violation> {
        self.peaks()
            .into_iter()
            .filter(|(_, peak)| peak.count > peak.max as usize)
            .filter_map(|(policy, peak)| {
                Some(Violation::Concurrency {
                    policy,
                    at: peak.at?,
                    count: peak.count,
                    max: peak.max,
                })
            })
            .collect()
    }

    /// Invariant 3b: under each policy, never more invocations than `max_per_minute` in any
    /// 60 seconds. An invocation whose decision instant is only known to lie in
    /// `[earliest, at]` counts in a minute only when that whole span lies inside it, so an
    /// uncertain instant can hide a violation but never invent one.
    pub fn check_rate(&self) -> Vec<Violation> {
        let mut out = Vec::new();
        let minute = TimeDelta::seconds(60);
        for policy in &self.policies {
            let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>)> = self
                .invocations
                .iter()
                .filter(|i| i.policy == policy.name())
                .map(|i| (i.earliest.min(i.at), i.at))
                .collect();
            spans.sort();
            let max = policy.rollout().max_per_minute;
            let mut worst: Option<(DateTime<Utc>, usize)> = None;
            for (from, _) in &spans {
                let count = spans
                    .iter()
                    .filter(|(earliest, at)| earliest >= from && *at < *from + minute)
                    .count();
                if count > max as usize && worst.is_none_or(|(_, w)| count > w) {
                    worst = Some((*from, count));
                }
            }
            if let Some((from, count)) = worst {
                out.push(Violation::Rate {
                    policy: policy.name().to_owned(),
                    from,
                    count,
                    max,
                });
            }
        }
        out
    }

    /// The windows of `policy` for `device` that are judged ([`judged_windows`]).
    pub fn judged_windows(&self, policy: &Policy, device: &str) -> Vec<casement_policy::Window> {
        match self.window_zone(policy, device) {
            Some(zone) => judged_windows(policy, zone, self.judged),
            None => Vec::new(),
        }
    }

    /// Whether the test kept `device` off the network at any time in `[from, to)`.
    fn had_outage(&self, device: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        self.outages
            .iter()
            .any(|o| o.device == device && o.from < to && o.to > from)
    }

    /// Invariant 4: every device available for a whole judged window (no outage caused by the
    /// test in it, the policy not paused) rebooted in it.
    pub fn check_completeness(&self) -> Vec<Violation> {
        let mut rebooted: BTreeSet<(&str, &str, DateTime<Utc>)> = BTreeSet::new();
        for r in &self.reboots {
            if let (Some(policy), Some(occurrence)) = (&r.policy, r.occurrence) {
                rebooted.insert((r.device.as_str(), policy.as_str(), occurrence));
            }
        }
        let mut out = Vec::new();
        for (device, policy_name) in &self.assignment {
            let Some(policy) = self.policy(policy_name) else {
                continue;
            };
            for window in self.judged_windows(policy, device) {
                if self
                    .paused
                    .contains(&(policy_name.clone(), window.occurrence))
                    || self.had_outage(device, window.opens_at - self.max_skew, window.closes_at)
                {
                    continue;
                }
                if !rebooted.contains(&(device.as_str(), policy_name.as_str(), window.occurrence)) {
                    out.push(Violation::Missed {
                        device: device.clone(),
                        policy: policy_name.clone(),
                        occurrence: window.occurrence,
                    });
                }
            }
        }
        out
    }
}

/// The windows of `policy` in `zone` that open at or after `judged.0` and close at or before
/// `judged.1` (blackout dates skipped).
pub fn judged_windows(
    policy: &Policy,
    zone: Tz,
    judged: (DateTime<Utc>, DateTime<Utc>),
) -> Vec<casement_policy::Window> {
    let (from, to) = judged;
    policy
        .window()
        .windows(zone, from - TimeDelta::days(1))
        .filter(|w| w.kind.opens())
        .map(|w| w.window)
        .take_while(|w| w.opens_at < to)
        .filter(|w| w.opens_at >= from && w.closes_at <= to)
        .collect()
}

/// A small run for the checker's own tests and the test kit's: four UTC devices `d0`–`d3`
/// under an hourly policy (windows at :00 for 30 minutes, 5 minutes expected, 2 at once, 3 a
/// minute) on 2026-03-29, the 01:00 window judged.
pub mod fixture {
    use super::*;
    use chrono::TimeZone as _;

    /// Hourly windows at :00 for 30 minutes, device zone, 5 minutes expected, 2 at once, 3 a minute.
    pub const POLICY: &str = r#"
    [policy]
    name   = "hourly"
    target = "tags.kind = 'box'"

    [window]
    schedule = "0 * * * *"
    duration = "30m"
    timezone = "device"

    [reboot]
    expected_duration = "5m"

    [rollout]
    max_concurrent = 2
    max_per_minute = 3
    "#;

    /// 2026-03-29 at h:m:s UTC.
    pub fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 29, h, m, s).unwrap()
    }

    /// The run before anything happened.
    pub fn facts() -> Facts {
        let policy = casement_policy::parse_policy("hourly.toml".as_ref(), POLICY).expect("policy");
        let devices: Vec<Device> = (0..4)
            .map(|n| Device {
                id: format!("d{n}"),
                zone: chrono_tz::UTC,
            })
            .collect();
        let assignment = devices
            .iter()
            .map(|d| (d.id.clone(), "hourly".to_owned()))
            .collect();
        let mut facts = Facts::new(vec![policy], assignment, devices, TimeDelta::seconds(60));
        facts.judged = (t(1, 0, 0), t(1, 30, 0));
        facts.max_skew = TimeDelta::seconds(20);
        facts.power_off_lag = TimeDelta::seconds(10);
        facts
    }

    /// A reboot of `device` at `at` for the 01:00 window.
    pub fn reboot(device: &str, at: DateTime<Utc>) -> Reboot {
        Reboot {
            device: device.into(),
            at,
            device_time: at,
            occurrence: Some(t(1, 0, 0)),
            policy: Some("hourly".into()),
            forced: false,
        }
    }

    /// An invocation of `device` decided at `at` for the 01:00 window.
    pub fn invocation(device: &str, at: DateTime<Utc>) -> Invocation {
        Invocation {
            at,
            earliest: at,
            device: device.into(),
            policy: "hourly".into(),
            occurrence: Some(t(1, 0, 0)),
        }
    }

    /// Every device rebooted once, two at a time, three invocations a minute at most.
    pub fn clean() -> Facts {
        let mut f = facts();
        f.reboots = vec![
            reboot("d0", t(1, 1, 0)),
            reboot("d1", t(1, 1, 30)),
            reboot("d2", t(1, 2, 10)),
            reboot("d3", t(1, 3, 0)),
        ];
        f.invocations = vec![
            invocation("d0", t(1, 0, 59)),
            invocation("d1", t(1, 1, 29)),
            invocation("d2", t(1, 2, 9)),
            invocation("d3", t(1, 2, 59)),
        ];
        f
    }
}

#[cfg(test)]
mod tests;
