//! What really happened, from the simulated devices' own log of reboots (the simulator's
//! [`GroundTruth`](casement_agent::GroundTruth)), checked against the policies — pure.
//!
//! The demo ends by showing these next to the compliance report: the report is what the
//! scheduler can see through twin queries; this is what the devices did.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use casement_agent::SimulatedReboot;
use casement_agent::simulate::invariants::{Device, Facts, Reboot, Violation};
use casement_policy::PolicySet;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;

/// The checks of DESIGN.md's invariants 1–3 over the reboots of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    /// Reboots in the log.
    pub reboots: usize,
    /// Devices that rebooted at least once.
    pub devices: usize,
    /// Reboots outside the window of the policy and occurrence they name (or naming none, or
    /// for a policy the device does not carry, or forced), each as the checker words it.
    pub outside_window: Vec<String>,
    /// (device, occurrence) pairs rebooted more than once.
    pub repeated: Vec<(String, DateTime<Utc>)>,
    /// Per policy: the most devices dark at the same time, and the policy's `max_concurrent`.
    pub peak: BTreeMap<String, (u32, u32)>,
}

impl Truth {
    /// Whether no invariant was broken.
    pub fn holds(&self) -> bool {
        self.outside_window.is_empty()
            && self.repeated.is_empty()
            && self.peak.values().all(|(peak, limit)| peak <= limit)
    }
}

/// Checks `records` against `policies` with the one invariant checker
/// ([`casement_agent::simulate::invariants`]).
///
/// `assignment` maps device ids to the policy `casement apply` gave them; `zones` maps them to
/// the zones their agents report (for `timezone = "device"`); `tolerance` is how far a device's
/// clock may be off (the simulated skew); a reboot keeps its device dark for `reboot_time`.
/// Invariant 4 (every available device rebooted) is the compliance report's part here, so no
/// window is judged for it.
pub fn check(
    records: &[SimulatedReboot],
    policies: &PolicySet,
    assignment: &BTreeMap<String, String>,
    zones: &HashMap<String, Tz>,
    tolerance: Duration,
    reboot_time: Duration,
) -> Truth {
    let devices = zones
        .iter()
        .map(|(id, zone)| Device {
            id: id.clone(),
            zone: *zone,
        })
        .collect();
    let mut facts = Facts::new(
        policies.iter().cloned().collect(),
        assignment.clone(),
        devices,
        TimeDelta::from_std(reboot_time).unwrap_or(TimeDelta::zero()),
    );
    facts.reboots = records.iter().map(Reboot::from).collect();
    facts.max_skew = TimeDelta::from_std(tolerance).unwrap_or(TimeDelta::zero());
    // The agent persists, answers and reports before the power goes.
    facts.power_off_lag = TimeDelta::seconds(5);
    let mut truth = Truth {
        reboots: records.len(),
        devices: records
            .iter()
            .map(|r| r.device.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        ..Truth::default()
    };
    for violation in facts.check_windows() {
        truth.outside_window.push(violation.to_string());
    }
    for violation in facts.check_once_per_occurrence() {
        if let Violation::Twice {
            device, occurrence, ..
        } = violation
        {
            truth.repeated.push((device, occurrence));
        }
    }
    truth.peak = facts
        .peaks()
        .into_iter()
        .map(|(policy, peak)| {
            (
                policy,
                (u32::try_from(peak.count).unwrap_or(u32::MAX), peak.max),
            )
        })
        .collect();
    truth
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn policies() -> PolicySet {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            r#"
[policy]
name = "p"
target = "tags.role = 'gateway'"
[window]
schedule = "*/2 * * * *"
duration = "90s"
timezone = "device"
[reboot]
expected_duration = "15s"
[rollout]
max_concurrent = 2
"#,
        )
        .unwrap();
        casement_policy::load([dir.path()]).unwrap()
    }

    fn at(min: u32, sec: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 4, 10, min, sec).unwrap()
    }

    fn reboot(device: &str, t: DateTime<Utc>, occurrence: DateTime<Utc>) -> SimulatedReboot {
        SimulatedReboot {
            device: device.into(),
            at: t,
            device_time: t,
            skew_ms: 0,
            occurrence: Some(occurrence),
            policy: Some("p".into()),
            revision: None,
            forced: false,
        }
    }

    fn assignment() -> BTreeMap<String, String> {
        ["a", "b", "c"]
            .into_iter()
            .map(|d| (d.to_owned(), "p".to_owned()))
            .collect()
    }

    fn zones() -> HashMap<String, Tz> {
        ["a", "b", "c"]
            .into_iter()
            .map(|d| (d.to_owned(), chrono_tz::Asia::Tokyo))
            .collect()
    }

    const SECOND: Duration = Duration::from_secs(1);
    const DARK: Duration = Duration::from_secs(3);

    #[test]
    fn reboots_inside_their_windows_hold() {
        let records = [
            reboot("a", at(0, 10), at(0, 0)),
            reboot("b", at(0, 12), at(0, 0)),
            reboot("c", at(0, 13), at(0, 0)),
            reboot("a", at(2, 5), at(2, 0)),
        ];
        let t = check(&records, &policies(), &assignment(), &zones(), SECOND, DARK);
        assert!(t.holds(), "{t:?}");
        assert_eq!((t.reboots, t.devices), (4, 3));
        assert_eq!(t.peak["p"], (2, 2), "c starts when a is back");
    }

    #[test]
    fn a_reboot_after_the_window_closed_is_caught() {
        // The 10:00 window closes at 10:01:30.
        let records = [reboot("a", at(1, 40), at(0, 0))];
        let t = check(&records, &policies(), &assignment(), &zones(), SECOND, DARK);
        assert_eq!(t.outside_window.len(), 1, "{t:?}");
        assert!(!t.holds());
    }

    #[test]
    fn an_occurrence_that_is_no_window_is_caught() {
        let records = [reboot("a", at(1, 10), at(1, 0))];
        let t = check(&records, &policies(), &assignment(), &zones(), SECOND, DARK);
        assert_eq!(t.outside_window.len(), 1, "{t:?}");
    }

    #[test]
    fn a_second_reboot_in_one_occurrence_is_caught() {
        let records = [
            reboot("a", at(0, 10), at(0, 0)),
            reboot("a", at(0, 40), at(0, 0)),
        ];
        let t = check(&records, &policies(), &assignment(), &zones(), SECOND, DARK);
        assert_eq!(t.repeated, vec![("a".to_owned(), at(0, 0))]);
        assert!(!t.holds());
    }

    #[test]
    fn more_dark_at_once_than_max_concurrent_is_caught() {
        let records = [
            reboot("a", at(0, 10), at(0, 0)),
            reboot("b", at(0, 11), at(0, 0)),
            reboot("c", at(0, 12), at(0, 0)),
        ];
        let t = check(&records, &policies(), &assignment(), &zones(), SECOND, DARK);
        assert_eq!(t.peak["p"], (3, 2));
        assert!(!t.holds());
    }

    #[test]
    fn forced_and_windowless_reboots_are_outside() {
        let mut forced = reboot("a", at(0, 10), at(0, 0));
        forced.forced = true;
        let mut bare = reboot("b", at(0, 10), at(0, 0));
        bare.occurrence = None;
        let t = check(
            &[forced, bare],
            &policies(),
            &assignment(),
            &zones(),
            SECOND,
            DARK,
        );
        assert_eq!(t.outside_window.len(), 2, "{t:?}");
    }
}
