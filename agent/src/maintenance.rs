//! The applied maintenance policy and the window it implies: pure, clock passed in.
//!
//! [`PolicyState::apply_desired`] takes the desired `maintenance` as it stands in the twin,
//! validates it with the policy crate, and either applies it or rejects it *while keeping the
//! previous valid policy running*. [`PolicyState::report`] renders the reported `maintenance`
//! section; [`PolicyState::next_transition`] is the instant the window next opens or closes,
//! which the I/O loop sleeps until (no polling). All window math is the policy crate's
//! [`WindowSpec::window_at`](casement_policy::window::WindowSpec::window_at), the same function
//! the scheduler calls.

use casement_policy::maintenance::{
    self, DesiredMaintenance, MAINTENANCE, MaintenancePlan, MaintenanceStatus, ReportedMaintenance,
    ReportedWindow,
};
use casement_policy::window::WindowState;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::reboot::ActivePolicy;

/// What applying a desired policy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The policy is applied (`changed`: it was not already).
    Applied {
        /// Policy name.
        policy: String,
        /// Revision.
        revision: String,
        /// Whether anything changed.
        changed: bool,
    },
    /// The desired policy is invalid; the previous one (if any) keeps running.
    Rejected {
        /// The rejected policy's name (as far as it could be read).
        policy: String,
        /// The rejected revision (as far as it could be read).
        revision: String,
        /// Why.
        error: String,
        /// The policy still running, if any.
        kept: Option<String>,
        /// Whether the reported status changes.
        changed: bool,
    },
    /// No policy is desired any more.
    Cleared {
        /// Whether a policy or a report was cleared.
        changed: bool,
    },
}

impl ApplyOutcome {
    /// Whether the reported `maintenance` section must be rewritten.
    pub fn changed(&self) -> bool {
        match self {
            ApplyOutcome::Applied { changed, .. }
            | ApplyOutcome::Rejected { changed, .. }
            | ApplyOutcome::Cleared { changed } => *changed,
        }
    }
}

/// An applied policy: what the twin said and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    desired: DesiredMaintenance,
    plan: MaintenancePlan,
}

/// The last verdict on the desired policy, as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// No desired policy.
    None,
    /// The desired policy is applied.
    Applied,
    /// The desired policy was rejected.
    Rejected {
        policy: String,
        revision: String,
        error: String,
    },
}

/// The device's policy state.
#[derive(Debug, Clone)]
pub struct PolicyState {
    device_zone: Tz,
    applied: Option<Applied>,
    verdict: Verdict,
}

impl PolicyState {
    /// No policy, in `device_zone`.
    pub fn new(device_zone: Tz) -> Self {
        Self {
            device_zone,
            applied: None,
            verdict: Verdict::None,
        }
    }

    /// The state as persisted: the last valid desired policy. A persisted policy that no longer
    /// validates (an older agent's rules) is dropped, with the reason.
    pub fn restore(device_zone: Tz, persisted: Option<&Value>) -> (Self, Option<String>) {
        let mut state = Self::new(device_zone);
        let Some(value) = persisted else {
            return (state, None);
        };
        match parse(value) {
            Ok(applied) => {
                state.applied = Some(applied);
                state.verdict = Verdict::Applied;
                (state, None)
            }
            Err((_, _, error)) => (state, Some(error)),
        }
    }

    /// The device's zone.
    pub fn device_zone(&self) -> Tz {
        self.device_zone
    }

    /// Applies the desired `maintenance` (`None` when absent or `null`).
    pub fn apply_desired(&mut self, desired: Option<&Value>) -> ApplyOutcome {
        let Some(value) = desired else {
            let changed = self.applied.is_some() || self.verdict != Verdict::None;
            self.applied = None;
            self.verdict = Verdict::None;
            return ApplyOutcome::Cleared { changed };
        };
        // The policy running, sent again (every session's twin GET does): validating it again
        // would give the same plan, and costs a scan of years of the schedule's starts.
        if self.verdict == Verdict::Applied
            && let Some(applied) = &self.applied
            && let Ok(desired) = parse_desired(value)
            && desired == applied.desired
        {
            return ApplyOutcome::Applied {
                policy: applied.plan.policy.clone(),
                revision: applied.plan.revision.clone(),
                changed: false,
            };
        }
        match parse(value) {
            Ok(applied) => {
                let changed = self.verdict != Verdict::Applied
                    || self.applied.as_ref().map(|a| &a.desired) != Some(&applied.desired);
                let outcome = ApplyOutcome::Applied {
                    policy: applied.plan.policy.clone(),
                    revision: applied.plan.revision.clone(),
                    changed,
                };
                self.applied = Some(applied);
                self.verdict = Verdict::Applied;
                outcome
            }
            Err((policy, revision, error)) => {
                let verdict = Verdict::Rejected {
                    policy: policy.clone(),
                    revision: revision.clone(),
                    error: error.clone(),
                };
                let changed = self.verdict != verdict;
                self.verdict = verdict;
                ApplyOutcome::Rejected {
                    policy,
                    revision,
                    error,
                    kept: self.applied.as_ref().map(|a| a.plan.policy.clone()),
                    changed,
                }
            }
        }
    }

    /// The desired policy to persist: the one running.
    pub fn persisted(&self) -> Option<Value> {
        self.applied
            .as_ref()
            .and_then(|applied| serde_json::to_value(&applied.desired).ok())
    }

    /// The running plan.
    pub fn plan(&self) -> Option<&MaintenancePlan> {
        self.applied.as_ref().map(|a| &a.plan)
    }

    /// Whether a window is open at `now`, and the current-or-next window, by the running plan.
    pub fn window_at(&self, now: DateTime<Utc>) -> Option<WindowState> {
        let plan = self.plan()?;
        plan.window.window_at(plan.zone(self.device_zone), now)
    }

    /// The next instant at which the window opens or closes.
    pub fn next_transition(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.window_at(now).map(|state| {
            if state.open {
                state.window.closes_at
            } else {
                state.window.opens_at
            }
        })
    }

    /// The running policy as the reboot gate sees it.
    pub fn active(&self, now: DateTime<Utc>) -> Option<ActivePolicy<'_>> {
        let plan = self.plan()?;
        Some(ActivePolicy {
            name: &plan.policy,
            revision: &plan.revision,
            expected_duration: plan.expected_duration,
            window: self.window_at(now),
        })
    }

    /// The `maintenance.window` to report, while a plan runs; `rebooted(occurrence)` says
    /// whether the device rebooted (or is rebooting) for an occurrence, which clears `due`.
    pub fn window_report(
        &self,
        now: DateTime<Utc>,
        rebooted: &dyn Fn(DateTime<Utc>) -> bool,
    ) -> Option<ReportedWindow> {
        self.window_at(now)
            .map(|state| ReportedWindow::from(state).rebooted(rebooted(state.window.occurrence)))
    }

    /// The whole reported `maintenance` section as a patch (`{"maintenance": null}` when no
    /// policy is desired), and the window in it.
    pub fn report(
        &self,
        now: DateTime<Utc>,
        rebooted: &dyn Fn(DateTime<Utc>) -> bool,
    ) -> (Value, Option<ReportedWindow>) {
        let window = self.window_report(now, rebooted);
        let (policy, revision, status, error) = match &self.verdict {
            Verdict::None => return (json!({ MAINTENANCE: null }), None),
            Verdict::Applied => match self.plan() {
                Some(plan) => (
                    plan.policy.clone(),
                    plan.revision.clone(),
                    MaintenanceStatus::Applied,
                    None,
                ),
                None => return (json!({ MAINTENANCE: null }), None),
            },
            Verdict::Rejected {
                policy,
                revision,
                error,
            } => (
                policy.clone(),
                revision.clone(),
                MaintenanceStatus::Rejected,
                Some(error.clone()),
            ),
        };
        let reported = ReportedMaintenance {
            policy,
            revision,
            status,
            error,
            timezone: self.device_zone.name().to_owned(),
            window,
        };
        (reported.to_patch(), window)
    }
}

/// The patch reporting only `maintenance.window`.
pub fn window_patch(window: &ReportedWindow) -> Value {
    json!({ MAINTENANCE: { "window": window } })
}

/// Parses and validates a desired `maintenance`; on failure, the name and revision as far as
/// they can be read, and the error to report.
fn parse(value: &Value) -> Result<Applied, (String, String, String)> {
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let desired = parse_desired(value).map_err(|err| (text("policy"), text("revision"), err))?;
    let plan = desired.validate().map_err(|err| {
        (
            desired.policy.clone(),
            desired.revision.clone(),
            err.to_string(),
        )
    })?;
    Ok(Applied { desired, plan })
}

/// The desired `maintenance` as written, not yet validated.
fn parse_desired(value: &Value) -> Result<DesiredMaintenance, String> {
    maintenance::parse_section(MAINTENANCE, value).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeDelta, TimeZone};

    fn desired(revision: &str, schedule: &str) -> Value {
        json!({"policy": "weekly", "revision": revision,
               "window": {"schedule": schedule, "durationSeconds": 7200, "timezone": "device"},
               "reboot": {"expectedDurationSeconds": 300}})
    }

    fn amsterdam() -> PolicyState {
        PolicyState::new(chrono_tz::Europe::Amsterdam)
    }

    /// Saturday 2026-11-28 12:00 UTC; the next Sunday 02:00 Amsterdam is 01:00 UTC.
    fn saturday() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    fn sunday(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 29, h, m, 0).unwrap()
    }

    #[test]
    fn applying_reports_the_policy_zone_and_window() {
        let mut state = amsterdam();
        let outcome = state.apply_desired(Some(&desired("aa01", "0 2 * * SUN")));
        assert_eq!(
            outcome,
            ApplyOutcome::Applied {
                policy: "weekly".into(),
                revision: "aa01".into(),
                changed: true
            }
        );
        let (patch, window) = state.report(saturday(), &|_| false);
        assert_eq!(
            patch,
            json!({"maintenance": {"policy": "weekly", "revision": "aa01", "status": "applied",
                   "error": null, "timezone": "Europe/Amsterdam",
                   "window": {"open": false, "opensAt": "2026-11-29T01:00:00.000Z",
                              "closesAt": "2026-11-29T03:00:00.000Z", "due": false}}})
        );
        assert_eq!(window.map(|w| w.open), Some(false));
        // The same desired again changes nothing.
        assert!(
            !state
                .apply_desired(Some(&desired("aa01", "0 2 * * SUN")))
                .changed()
        );
    }

    #[test]
    fn the_window_is_due_while_open_until_the_device_reboots_for_it() {
        let mut state = amsterdam();
        state.apply_desired(Some(&desired("aa01", "0 2 * * SUN")));
        let open = sunday(1, 30);
        let due = state.window_report(open, &|_| false).unwrap();
        assert!(due.open && due.due);
        let occurrence = due.opens_at;
        let done = state.window_report(open, &|o| o == occurrence).unwrap();
        assert!(done.open && !done.due);
        // Another occurrence's reboot does not count.
        let other = state.window_report(open, &|o| o != occurrence).unwrap();
        assert!(other.due);
        let (patch, _) = state.report(open, &|o| o == occurrence);
        assert_eq!(patch["maintenance"]["window"]["due"], json!(false));
        assert!(!state.window_report(saturday(), &|_| false).unwrap().due);
    }

    #[test]
    fn transitions_alternate_between_open_and_close() {
        let mut state = amsterdam();
        state.apply_desired(Some(&desired("aa01", "0 2 * * SUN")));
        assert_eq!(state.next_transition(saturday()), Some(sunday(1, 0)));
        assert_eq!(
            state
                .window_report(sunday(1, 0), &|_| false)
                .map(|w| w.open),
            Some(true)
        );
        assert_eq!(state.next_transition(sunday(1, 0)), Some(sunday(3, 0)));
        let next_week = sunday(1, 0) + TimeDelta::days(7);
        assert_eq!(state.next_transition(sunday(3, 0)), Some(next_week));
        assert_eq!(
            state
                .window_report(sunday(3, 0), &|_| false)
                .map(|w| w.open),
            Some(false)
        );
        let active = state.active(sunday(2, 0)).unwrap();
        assert_eq!((active.name, active.revision), ("weekly", "aa01"));
        assert!(active.window.unwrap().open);
    }

    #[test]
    fn a_rejected_policy_keeps_the_previous_one_running() {
        let mut state = amsterdam();
        state.apply_desired(Some(&desired("aa01", "0 2 * * SUN")));
        let outcome = state.apply_desired(Some(&desired("bb02", "0 26 * * *")));
        match &outcome {
            ApplyOutcome::Rejected {
                policy,
                revision,
                error,
                kept,
                changed,
            } => {
                assert_eq!((policy.as_str(), revision.as_str()), ("weekly", "bb02"));
                assert!(error.starts_with("window.schedule"), "{error}");
                assert_eq!(kept.as_deref(), Some("weekly"));
                assert!(changed);
            }
            other => panic!("{other:?}"),
        }
        // The old plan still decides the window and the gate; the report says "rejected".
        assert_eq!(state.active(saturday()).unwrap().revision, "aa01");
        assert_eq!(state.next_transition(saturday()), Some(sunday(1, 0)));
        let (patch, _) = state.report(saturday(), &|_| false);
        assert_eq!(patch["maintenance"]["status"], "rejected");
        assert_eq!(patch["maintenance"]["revision"], "bb02");
        assert!(
            patch["maintenance"]["error"]
                .as_str()
                .unwrap()
                .contains("window.schedule")
        );
        assert_eq!(
            patch["maintenance"]["window"]["opensAt"],
            "2026-11-29T01:00:00.000Z"
        );
        assert_eq!(state.persisted().unwrap()["revision"], "aa01");
        // Rejecting the same thing again is no news.
        assert!(
            !state
                .apply_desired(Some(&desired("bb02", "0 26 * * *")))
                .changed()
        );
    }

    #[test]
    fn the_running_policy_sent_again_is_unchanged_and_a_fix_after_a_rejection_is_a_change() {
        let mut state = amsterdam();
        let weekly = desired("aa01", "0 2 * * SUN");
        assert!(matches!(
            state.apply_desired(Some(&weekly)),
            ApplyOutcome::Applied { changed: true, .. }
        ));
        let plan = state.plan().cloned();
        // Every session's twin GET sends the running policy again.
        let again = state.apply_desired(Some(&weekly));
        assert_eq!(
            again,
            ApplyOutcome::Applied {
                policy: "weekly".into(),
                revision: "aa01".into(),
                changed: false
            }
        );
        assert_eq!(state.plan().cloned(), plan);
        // A restored policy is the running one too.
        let (mut restored, error) =
            PolicyState::restore(chrono_tz::Europe::Amsterdam, state.persisted().as_ref());
        assert_eq!(error, None);
        assert!(!restored.apply_desired(Some(&weekly)).changed());
        assert_eq!(restored.plan().cloned(), plan);
        // Rejected, then the running one again: the verdict changes back, and says so.
        let broken = desired("bb02", "0 2 * * NOPE");
        assert!(matches!(
            state.apply_desired(Some(&broken)),
            ApplyOutcome::Rejected { changed: true, .. }
        ));
        let back = state.apply_desired(Some(&weekly));
        assert!(back.changed(), "{back:?}");
        assert_eq!(state.plan().cloned(), plan);
        // The same policy with any field changed is validated as new.
        let longer = json!({"policy": "weekly", "revision": "aa01",
               "window": {"schedule": "0 2 * * SUN", "durationSeconds": 10800, "timezone": "device"},
               "reboot": {"expectedDurationSeconds": 300}});
        assert!(matches!(
            state.apply_desired(Some(&longer)),
            ApplyOutcome::Applied { changed: true, .. }
        ));
        assert_ne!(state.plan().cloned(), plan);
    }

    #[test]
    fn malformed_desired_json_is_rejected_not_a_panic() {
        let mut state = amsterdam();
        let outcome = state.apply_desired(Some(&json!({"policy": "weekly", "revision": 7})));
        assert!(
            matches!(&outcome, ApplyOutcome::Rejected { policy, kept: None, .. } if policy == "weekly")
        );
        // The error names the offending field, so an operator reading the twin can fix it.
        let ApplyOutcome::Rejected { error, .. } = &outcome else {
            unreachable!("matched above")
        };
        assert!(
            error.starts_with("maintenance.revision: invalid type: integer `7`"),
            "{error}"
        );
        let mut nested = desired("aa01", "0 2 * * SUN");
        nested["window"]["durationSeconds"] = json!("2h");
        let ApplyOutcome::Rejected { error, .. } = state.apply_desired(Some(&nested)) else {
            panic!("a string duration is rejected")
        };
        assert!(
            error.starts_with("maintenance.window.durationSeconds: invalid type: string \"2h\""),
            "{error}"
        );
        let (patch, window) = state.report(saturday(), &|_| false);
        assert_eq!(patch["maintenance"]["status"], "rejected");
        assert_eq!(patch["maintenance"]["window"], Value::Null);
        assert_eq!(window, None);
        assert!(state.active(saturday()).is_none());
    }

    #[test]
    fn null_clears_the_policy_and_the_report() {
        let mut state = amsterdam();
        state.apply_desired(Some(&desired("aa01", "0 2 * * SUN")));
        assert_eq!(
            state.apply_desired(None),
            ApplyOutcome::Cleared { changed: true }
        );
        assert_eq!(
            state.report(saturday(), &|_| false).0,
            json!({"maintenance": null})
        );
        assert!(state.active(saturday()).is_none());
        assert_eq!(state.next_transition(saturday()), None);
        assert_eq!(state.persisted(), None);
        assert_eq!(
            state.apply_desired(None),
            ApplyOutcome::Cleared { changed: false }
        );
    }

    #[test]
    fn restore_brings_back_the_last_valid_policy() {
        let mut state = amsterdam();
        state.apply_desired(Some(&desired("aa01", "0 2 * * SUN")));
        let persisted = state.persisted();
        let (restored, warning) =
            PolicyState::restore(chrono_tz::Europe::Amsterdam, persisted.as_ref());
        assert_eq!(warning, None);
        assert_eq!(restored.active(saturday()).unwrap().revision, "aa01");
        let (empty, warning) = PolicyState::restore(Tz::UTC, Some(&json!({"policy": "weekly"})));
        assert!(warning.is_some());
        assert!(empty.plan().is_none());
    }

    #[test]
    fn a_device_zone_policy_follows_the_device_and_a_named_zone_does_not() {
        let mut tokyo = PolicyState::new(chrono_tz::Asia::Tokyo);
        tokyo.apply_desired(Some(&desired("aa01", "0 2 * * SUN")));
        // 02:00 Tokyo on Sunday 29th is 17:00 UTC on Saturday 28th.
        assert_eq!(
            tokyo.next_transition(saturday()),
            Some(Utc.with_ymd_and_hms(2026, 11, 28, 17, 0, 0).unwrap())
        );
        let mut named = desired("aa01", "0 2 * * SUN");
        named["window"]["timezone"] = json!("UTC");
        tokyo.apply_desired(Some(&named));
        assert_eq!(tokyo.next_transition(saturday()), Some(sunday(2, 0)));
        assert_eq!(
            tokyo.report(saturday(), &|_| false).0["maintenance"]["timezone"],
            "Asia/Tokyo"
        );
    }
}
