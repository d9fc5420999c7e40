use super::*;
use casement_policy::{RebootStatus, RefusalReason};
use chrono::TimeZone;

fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 29, h, m, s).unwrap()
}

/// The 01:00–03:00 UTC window of the test day.
fn window() -> Window {
    Window {
        opens_at: t(1, 0, 0),
        closes_at: t(3, 0, 0),
        occurrence: t(1, 0, 0),
    }
}

fn next_week() -> Window {
    let w = window();
    Window {
        opens_at: w.opens_at + TimeDelta::days(7),
        closes_at: w.closes_at + TimeDelta::days(7),
        occurrence: w.occurrence + TimeDelta::days(7),
    }
}

fn limits(max_concurrent: u32, max_per_minute: u32, max_failures: MaxFailures) -> RolloutLimits {
    RolloutLimits {
        max_concurrent,
        max_per_minute,
        max_failures,
        expected_duration: Duration::from_secs(300),
    }
}

fn rollout(limits: RolloutLimits) -> PolicyRollout {
    PolicyRollout::new("gw", "rev1", limits, RolloutConfig::default())
}

fn open_rollout() -> PolicyRollout {
    rollout(limits(100, 1000, MaxFailures::Count(100)))
}

/// A device that reports the policy applied and the window open.
fn obs(id: &str) -> Observation {
    Observation {
        device_id: id.to_owned(),
        policy: Some("gw".into()),
        revision: Some("rev1".into()),
        applied: true,
        window_open: true,
        window_opens_at: Some(window().opens_at),
        last_reboot: None,
        reboot_status: None,
        reboot_occurrence: None,
        window: Some(window()),
    }
}

fn fleet(n: usize) -> Vec<Observation> {
    (0..n).map(|i| obs(&format!("d{i:03}"))).collect()
}

fn rebooted(id: &str, status: RebootStatus, at: DateTime<Utc>) -> Observation {
    Observation {
        last_reboot: Some(at),
        reboot_status: Some(status),
        reboot_occurrence: Some(window().occurrence),
        ..obs(id)
    }
}

fn invocations(actions: &[Action]) -> Vec<Invocation> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Invoke(i) => Some(i.clone()),
            _ => None,
        })
        .collect()
}

fn invoked_ids(actions: &[Action]) -> Vec<String> {
    invocations(actions).into_iter().map(|i| i.device).collect()
}

fn records(actions: &[Action]) -> Vec<Entry> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Record(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn pauses(actions: &[Action]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Pause { .. }))
        .count()
}

const NOW: fn() -> DateTime<Utc> = || t(1, 10, 0);

#[test]
fn a_candidate_is_invoked_with_the_occurrence() {
    let mut r = open_rollout();
    let actions = r.observe(NOW(), &[obs("d1")], true);
    let inv = invocations(&actions);
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].device, "d1");
    assert_eq!(inv[0].window, window());
    assert_eq!(inv[0].revision, "rev1");
    assert_eq!(inv[0].attempt, 1);
    assert_eq!(r.in_flight_count(), 1);
}

#[test]
fn non_candidates_are_not_invoked() {
    let not_applied = Observation {
        applied: false,
        ..obs("not-applied")
    };
    let other_revision = Observation {
        revision: Some("rev0".into()),
        ..obs("other-revision")
    };
    let other_policy = Observation {
        policy: Some("other".into()),
        ..obs("other-policy")
    };
    let closed = Observation {
        window_open: false,
        ..obs("reports-closed")
    };
    let other_occurrence = Observation {
        window_opens_at: Some(window().opens_at - TimeDelta::days(7)),
        ..obs("stale-report")
    };
    let scheduler_disagrees = Observation {
        window: Some(next_week()),
        ..obs("scheduler-says-closed")
    };
    let no_zone = Observation {
        window: None,
        ..obs("no-zone")
    };
    let already = rebooted("already-rebooted", RebootStatus::Completed, t(1, 5, 0));
    let forced_earlier = Observation {
        last_reboot: Some(t(1, 2, 0)),
        reboot_status: Some(RebootStatus::Completed),
        reboot_occurrence: None,
        ..obs("rebooted-in-window-by-hand")
    };
    let all = [
        not_applied,
        other_revision,
        other_policy,
        closed,
        other_occurrence,
        scheduler_disagrees,
        no_zone,
        already,
        forced_earlier,
    ];
    let mut r = open_rollout();
    let actions = r.observe(NOW(), &all, true);
    assert!(invoked_ids(&actions).is_empty(), "{actions:?}");
    // The same devices with a reboot from last week are candidates.
    let last_week = Observation {
        last_reboot: Some(t(1, 5, 0) - TimeDelta::days(7)),
        reboot_status: Some(RebootStatus::Completed),
        reboot_occurrence: Some(window().occurrence - TimeDelta::days(7)),
        ..obs("rebooted-last-week")
    };
    assert_eq!(
        invoked_ids(&r.observe(NOW(), &[last_week], true)),
        ["rebooted-last-week"]
    );
}

#[test]
fn skew_allowance_and_expected_duration_gate_both_ends() {
    let mut r = open_rollout();
    // Just opened: a device whose clock lags could still see it closed.
    assert!(invoked_ids(&r.observe(t(1, 0, 2), &[obs("d1")], true)).is_empty());
    assert_eq!(
        invoked_ids(&r.observe(t(1, 0, 5), &[obs("d1")], true)),
        ["d1"]
    );
    // 5 min expected duration + 5 s skew must fit before 03:00.
    let mut r = open_rollout();
    assert!(invoked_ids(&r.observe(t(2, 54, 56), &[obs("d1")], true)).is_empty());
    let mut r = open_rollout();
    assert_eq!(
        invoked_ids(&r.observe(t(2, 54, 55), &[obs("d1")], true)),
        ["d1"]
    );
}

#[test]
fn reported_opens_at_may_differ_by_milliseconds_only() {
    let mut r = open_rollout();
    let close = Observation {
        window_opens_at: Some(window().opens_at + TimeDelta::milliseconds(400)),
        ..obs("close")
    };
    let off = Observation {
        window_opens_at: Some(window().opens_at + TimeDelta::minutes(1)),
        ..obs("off")
    };
    assert_eq!(
        invoked_ids(&r.observe(NOW(), &[close, off], true)),
        ["close"]
    );
}

#[test]
fn max_concurrent_caps_devices_in_flight_until_completions() {
    let mut r = rollout(limits(3, 1000, MaxFailures::Count(100)));
    let devices = fleet(10);
    let first = invoked_ids(&r.observe(NOW(), &devices, true));
    assert_eq!(first, ["d000", "d001", "d002"]);
    // Accepted devices are still in flight: nothing new.
    for id in &first {
        let a = r.invoked(NOW(), id, window(), MethodOutcome::Accepted);
        assert!(invoked_ids(&a).is_empty());
    }
    assert!(invoked_ids(&r.observe(NOW(), &devices, true)).is_empty());
    assert_eq!(r.in_flight_count(), 3);
    // One completes (seen in its twin): exactly one more starts.
    let mut seen = devices.clone();
    seen[0] = rebooted("d000", RebootStatus::Completed, t(1, 11, 0));
    let actions = r.observe(t(1, 12, 0), &seen, true);
    assert_eq!(invoked_ids(&actions), ["d003"]);
    let recs = records(&actions);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].device, "d000");
    assert_eq!(recs[0].state, EntryState::Completed);
    assert_eq!(r.in_flight_count(), 3);
}

#[test]
fn refusals_and_offline_free_their_slot() {
    let mut r = rollout(limits(1, 1000, MaxFailures::Count(100)));
    let devices = fleet(3);
    assert_eq!(invoked_ids(&r.observe(NOW(), &devices, true)), ["d000"]);
    let a = r.invoked(NOW(), "d000", window(), MethodOutcome::Offline);
    assert_eq!(invoked_ids(&a), ["d001"]);
    let a = r.invoked(
        NOW(),
        "d001",
        window(),
        MethodOutcome::Refused(Refusal::new(RefusalReason::OutsideWindow)),
    );
    assert_eq!(invoked_ids(&a), ["d002"]);
}

#[test]
fn max_per_minute_holds_over_any_sixty_seconds() {
    let mut r = rollout(limits(100, 2, MaxFailures::Count(100)));
    let devices = fleet(6);
    let mut invoked_at: Vec<DateTime<Utc>> = Vec::new();
    let mut now = NOW();
    for _ in 0..40 {
        let actions = r.observe(now, &devices, true);
        for id in invoked_ids(&actions) {
            invoked_at.push(now);
            let _ = r.invoked(now, &id, window(), MethodOutcome::AlreadyDone);
        }
        now += TimeDelta::seconds(7);
    }
    assert_eq!(invoked_at.len(), 6);
    for (i, a) in invoked_at.iter().enumerate() {
        let in_minute = invoked_at[i..].iter().filter(|b| **b - *a < MINUTE).count();
        assert!(in_minute <= 2, "{invoked_at:?}");
    }
}

#[test]
fn next_deadline_names_when_per_minute_capacity_frees() {
    let mut r = rollout(limits(100, 1, MaxFailures::Count(100)));
    let _ = r.observe(NOW(), &fleet(2), true);
    let _ = r.invoked(NOW(), "d000", window(), MethodOutcome::AlreadyDone);
    assert_eq!(r.next_deadline(), Some(NOW() + MINUTE));
    assert!(invoked_ids(&r.tick(NOW() + TimeDelta::seconds(59))).is_empty());
    assert_eq!(
        invoked_ids(&r.tick(NOW() + MINUTE)),
        ["d001"],
        "the waiting candidate starts when the minute is up"
    );
}

#[test]
fn failures_past_the_budget_pause_the_occurrence() {
    let mut r = rollout(limits(2, 1000, MaxFailures::Count(1)));
    let devices = fleet(6);
    assert_eq!(invoked_ids(&r.observe(NOW(), &devices, true)).len(), 2);
    let a = r.invoked(
        NOW(),
        "d000",
        window(),
        MethodOutcome::Refused(Refusal::new(RefusalReason::OutsideWindow)),
    );
    assert_eq!(pauses(&a), 0, "one failure is within a budget of 1");
    assert_eq!(invoked_ids(&a), ["d002"]);
    let a = r.invoked(
        NOW(),
        "d001",
        window(),
        MethodOutcome::Refused(Refusal::new(RefusalReason::OutsideWindow)),
    );
    assert_eq!(pauses(&a), 1);
    assert!(invoked_ids(&a).is_empty(), "paused: nothing new");
    assert_eq!(r.paused().count(), 1);
    // In-flight devices are still followed, and still nothing new after they complete.
    let mut seen = devices.clone();
    seen[2] = rebooted("d002", RebootStatus::Completed, t(1, 11, 0));
    let a = r.observe(t(1, 12, 0), &seen, true);
    assert_eq!(records(&a).len(), 1);
    assert!(invoked_ids(&a).is_empty());
    // The next week's window starts afresh.
    let next: Vec<Observation> = (0..6)
        .map(|i| Observation {
            window: Some(next_week()),
            window_opens_at: Some(next_week().opens_at),
            ..obs(&format!("d{i:03}"))
        })
        .collect();
    let a = r.observe(next_week().opens_at + TimeDelta::minutes(1), &next, true);
    assert_eq!(invoked_ids(&a).len(), 2);
    assert_eq!(r.paused().count(), 0);
}

#[test]
fn a_percentage_budget_counts_against_the_occurrence_size() {
    let budget = MaxFailures::Percent(1000);
    assert!(!budget.exceeded(1, 10));
    assert!(budget.exceeded(2, 10));
    assert!(!budget.exceeded(10, 100));
    assert!(budget.exceeded(1, 5));
    let mut r = rollout(limits(20, 1000, budget));
    let _ = r.observe(NOW(), &fleet(20), true);
    let a = r.invoked(
        NOW(),
        "d000",
        window(),
        MethodOutcome::Refused(Refusal::new(RefusalReason::OutsideWindow)),
    );
    assert_eq!(pauses(&a), 0);
    let a = r.invoked(
        NOW(),
        "d001",
        window(),
        MethodOutcome::Refused(Refusal::new(RefusalReason::OutsideWindow)),
    );
    assert_eq!(pauses(&a), 0, "2 of 20 is 10%: not more than the budget");
    let a = r.invoked(
        NOW(),
        "d002",
        window(),
        MethodOutcome::Refused(Refusal::new(RefusalReason::OutsideWindow)),
    );
    assert_eq!(pauses(&a), 1);
}

#[test]
fn offline_devices_are_retried_while_the_window_lasts_and_never_count_as_failures() {
    let mut r = rollout(limits(10, 1000, MaxFailures::Count(0)));
    let mut now = NOW();
    assert_eq!(invoked_ids(&r.observe(now, &[obs("d1")], true)), ["d1"]);
    let mut attempts = 1;
    loop {
        let a = r.invoked(now, "d1", window(), MethodOutcome::Offline);
        assert_eq!(pauses(&a), 0);
        assert_eq!(records(&a)[0].state, EntryState::Offline);
        // Wait for the retry.
        let mut retried = false;
        while now < window().closes_at {
            now += TimeDelta::seconds(10);
            if !invoked_ids(&r.observe(now, &[obs("d1")], true)).is_empty() {
                retried = true;
                attempts += 1;
                break;
            }
        }
        if !retried {
            break;
        }
    }
    assert!(attempts > 5, "{attempts}");
    // The last attempt left enough time for a reboot.
    assert_eq!(r.paused().count(), 0);
}

#[test]
fn method_errors_count_as_failures_and_are_retried_up_to_the_limit() {
    let mut r = rollout(limits(10, 1000, MaxFailures::Count(100)));
    let mut now = NOW();
    assert_eq!(invoked_ids(&r.observe(now, &[obs("d1")], true)), ["d1"]);
    let mut results = Vec::new();
    for _ in 0..10 {
        let a = r.invoked(now, "d1", window(), MethodOutcome::Error("504101".into()));
        results.extend(records(&a));
        let mut again = false;
        for _ in 0..100 {
            now += TimeDelta::seconds(10);
            if !invoked_ids(&r.observe(now, &[obs("d1")], true)).is_empty() {
                again = true;
                break;
            }
        }
        if !again {
            break;
        }
    }
    assert_eq!(results.len(), 3, "max_attempts = 3");
    assert!(matches!(results[0].state, EntryState::Error(_)));
    assert!(matches!(results[2].state, EntryState::Failed(_)));
    assert_eq!(results[2].failures, 3);
}

#[test]
fn no_completion_within_the_bound_is_a_failure() {
    let mut r = rollout(limits(10, 1000, MaxFailures::Count(100)));
    let _ = r.observe(NOW(), &[obs("d1")], true);
    let _ = r.invoked(NOW(), "d1", window(), MethodOutcome::Accepted);
    // expected 5 min + grace 2 min.
    assert!(records(&r.tick(NOW() + TimeDelta::minutes(6))).is_empty());
    let recs = records(&r.tick(NOW() + TimeDelta::minutes(7)));
    assert_eq!(recs.len(), 1);
    assert!(matches!(recs[0].state, EntryState::Failed(_)));
    // It may still be down: it keeps its slot until its window is over.
    assert_eq!(r.in_flight_count(), 1);
    // ... and it is not invoked again in this occurrence.
    assert!(invoked_ids(&r.observe(NOW() + TimeDelta::minutes(8), &[obs("d1")], true)).is_empty());
}

#[test]
fn a_reboot_reported_failed_is_a_failure() {
    let mut r = rollout(limits(10, 1000, MaxFailures::Count(0)));
    let _ = r.observe(NOW(), &[obs("d1")], true);
    let _ = r.invoked(NOW(), "d1", window(), MethodOutcome::Accepted);
    let a = r.observe(
        t(1, 11, 0),
        &[rebooted("d1", RebootStatus::Failed, t(1, 10, 1))],
        true,
    );
    assert!(matches!(records(&a)[0].state, EntryState::Failed(_)));
    assert_eq!(pauses(&a), 1);
}

#[test]
fn a_device_is_invoked_once_per_occurrence_and_again_next_week() {
    let mut r = open_rollout();
    assert_eq!(invoked_ids(&r.observe(NOW(), &[obs("d1")], true)), ["d1"]);
    let _ = r.invoked(NOW(), "d1", window(), MethodOutcome::AlreadyDone);
    for m in 11..50 {
        assert!(invoked_ids(&r.observe(t(1, m, 0), &[obs("d1")], true)).is_empty());
    }
    let later = Observation {
        window: Some(next_week()),
        window_opens_at: Some(next_week().opens_at),
        ..rebooted("d1", RebootStatus::Completed, t(1, 10, 30))
    };
    let a = r.observe(next_week().opens_at + TimeDelta::minutes(1), &[later], true);
    let inv = invocations(&a);
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].window, next_week());
}

#[test]
fn closed_occurrences_are_summarised_and_forgotten() {
    let mut r = rollout(limits(1, 1000, MaxFailures::Count(100)));
    let _ = r.observe(NOW(), &fleet(3), true);
    let _ = r.invoked(NOW(), "d000", window(), MethodOutcome::AlreadyDone);
    let a = r.invoked(
        NOW(),
        "d001",
        window(),
        MethodOutcome::Refused(Refusal::new(RefusalReason::OutsideWindow)),
    );
    assert_eq!(invoked_ids(&a), ["d002"]);
    let _ = r.invoked(NOW(), "d002", window(), MethodOutcome::Offline);
    assert!(
        r.tick(window().closes_at - TimeDelta::seconds(1))
            .is_empty()
    );
    let a = r.tick(window().closes_at);
    let summary = a
        .iter()
        .find_map(|a| match a {
            Action::Closed { summary, .. } => Some(summary.clone()),
            _ => None,
        })
        .expect("closed");
    assert_eq!(summary.devices, 3);
    assert_eq!(summary.completed, 1);
    assert_eq!(summary.failed, 1);
    assert_eq!(summary.not_reached, 1);
    assert!(r.is_idle());
}

#[test]
fn candidates_that_vanish_from_a_complete_observation_are_dropped() {
    let mut r = rollout(limits(1, 1000, MaxFailures::Count(100)));
    let _ = r.observe(NOW(), &fleet(3), true);
    // d001 and d002 are waiting; a partial observation keeps them.
    let _ = r.observe(NOW(), &[], false);
    let a = r.invoked(NOW(), "d000", window(), MethodOutcome::AlreadyDone);
    assert_eq!(invoked_ids(&a), ["d001"]);
    let _ = r.invoked(NOW(), "d001", window(), MethodOutcome::AlreadyDone);
    // A complete observation without d002 (its window closed by its report) drops it.
    let mut r2 = rollout(limits(1, 1000, MaxFailures::Count(100)));
    let _ = r2.observe(NOW(), &fleet(3), true);
    let _ = r2.observe(NOW(), &fleet(1), true);
    let a = r2.invoked(NOW(), "d000", window(), MethodOutcome::AlreadyDone);
    assert!(invoked_ids(&a).is_empty());
}

fn journaled(device: &str, state: EntryState) -> Entry {
    Entry {
        policy: "gw".into(),
        device: device.into(),
        occurrence: window().occurrence,
        closes_at: window().closes_at,
        revision: "rev1".into(),
        attempts: 1,
        failures: 0,
        invoked_at: Some(NOW()),
        accepted_at: None,
        state,
        updated_at: NOW(),
    }
}

#[test]
fn after_a_restart_an_unresolved_entry_counts_in_flight_until_its_twin_resolves_it() {
    let mut r = rollout(limits(1, 1000, MaxFailures::Count(100)));
    r.restore(&journaled("d000", EntryState::Invoking), NOW());
    assert_eq!(r.in_flight_count(), 1);
    assert_eq!(
        r.in_flight().map(|(id, _)| id).collect::<Vec<_>>(),
        ["d000"]
    );
    let now = NOW() + TimeDelta::seconds(5);
    // The twin shows it rebooting for this occurrence: it was accepted; still in flight, d001 waits.
    let mut devices = fleet(2);
    devices[0] = rebooted("d000", RebootStatus::Rebooting, NOW());
    let a = r.observe(now, &devices, true);
    assert!(invoked_ids(&a).is_empty());
    assert_eq!(records(&a)[0].state, EntryState::Accepted);
    devices[0] = rebooted("d000", RebootStatus::Completed, NOW());
    let a = r.observe(now, &devices, true);
    assert_eq!(records(&a)[0].state, EntryState::Completed);
    assert_eq!(invoked_ids(&a), ["d001"]);
}

#[test]
fn after_a_restart_an_entry_without_a_trace_in_the_twin_is_invoked_again_same_occurrence() {
    let mut r = open_rollout();
    r.restore(&journaled("d1", EntryState::Invoking), NOW());
    let a = r.observe(NOW() + TimeDelta::seconds(5), &[obs("d1")], true);
    let inv = invocations(&a);
    assert_eq!(inv.len(), 1);
    assert_eq!(inv[0].window, window());
    assert_eq!(inv[0].attempt, 2);
}

#[test]
fn after_a_restart_completed_and_failed_entries_are_never_invoked_again() {
    let mut r = open_rollout();
    r.restore(&journaled("d1", EntryState::Completed), NOW());
    let mut failed = journaled("d2", EntryState::Failed("refused".into()));
    failed.failures = 1;
    r.restore(&failed, NOW());
    let a = r.observe(NOW() + TimeDelta::seconds(5), &[obs("d1"), obs("d2")], true);
    assert!(invoked_ids(&a).is_empty());
}

#[test]
fn after_a_restart_failures_pauses_and_the_minute_are_remembered() {
    let mut r = rollout(limits(10, 2, MaxFailures::Count(1)));
    let mut failed = journaled("d1", EntryState::Failed("refused".into()));
    failed.failures = 1;
    r.restore(&failed, NOW());
    r.restore(&journaled("d2", EntryState::Completed), NOW());
    // Two invocations in the last minute: no capacity until NOW + 60 s.
    let a = r.observe(NOW() + TimeDelta::seconds(30), &fleet(3), true);
    assert!(invoked_ids(&a).is_empty());
    let a = r.tick(NOW() + MINUTE);
    assert_eq!(invoked_ids(&a).len(), 2);
    // One more failure exceeds the restored count.
    let a = r.invoked(
        NOW() + MINUTE,
        "d000",
        window(),
        MethodOutcome::Refused(Refusal::new(RefusalReason::OutsideWindow)),
    );
    assert_eq!(pauses(&a), 1);

    let mut r = open_rollout();
    r.restore_pause(window(), NOW());
    assert!(invoked_ids(&r.observe(NOW(), &[obs("d1")], true)).is_empty());
    assert_eq!(r.paused().count(), 1);
}

#[test]
fn old_journal_entries_are_ignored() {
    let mut r = open_rollout();
    r.restore(
        &journaled("d1", EntryState::Invoking),
        NOW() + TimeDelta::days(7),
    );
    assert!(r.is_idle());
}

#[test]
fn an_unresolved_entry_never_seen_again_times_out_as_a_failure() {
    let mut r = open_rollout();
    r.restore(&journaled("d1", EntryState::Invoking), NOW());
    let a = r.tick(window().closes_at + TimeDelta::minutes(30));
    let recs = records(&a);
    assert_eq!(recs.len(), 1);
    assert!(matches!(recs[0].state, EntryState::Failed(_)));
    assert_eq!(r.in_flight_count(), 0);
}

#[test]
fn a_new_revision_drops_waiting_candidates_but_keeps_what_is_in_flight() {
    let mut r = rollout(limits(1, 1000, MaxFailures::Count(100)));
    let _ = r.observe(NOW(), &fleet(3), true);
    r.update("rev2", limits(1, 1000, MaxFailures::Count(100)));
    assert_eq!(r.in_flight_count(), 1);
    let a = r.invoked(NOW(), "d000", window(), MethodOutcome::AlreadyDone);
    assert!(invoked_ids(&a).is_empty(), "candidates reported rev1");
}

#[test]
fn late_method_results_for_something_else_are_ignored() {
    let mut r = open_rollout();
    let _ = r.observe(NOW(), &[obs("d1")], true);
    assert!(
        r.invoked(NOW(), "nobody", window(), MethodOutcome::Accepted)
            .is_empty()
    );
    assert!(
        r.invoked(NOW(), "d1", next_week(), MethodOutcome::Accepted)
            .is_empty()
    );
    assert_eq!(r.in_flight_count(), 1);
}

#[test]
fn backoff_doubles_and_caps() {
    let c = RolloutConfig::default();
    assert_eq!(backoff(&c, 1), TimeDelta::seconds(15));
    assert_eq!(backoff(&c, 2), TimeDelta::seconds(30));
    assert_eq!(backoff(&c, 3), TimeDelta::seconds(60));
    assert_eq!(backoff(&c, 10), TimeDelta::seconds(300));
    assert_eq!(backoff(&c, u32::MAX), TimeDelta::seconds(300));
}

/// Invariant 3 under a completion timeout: a device that has not come back may still be down,
/// so the next device starts only when the twin shows it back (or its window is over).
#[test]
fn a_timed_out_reboot_keeps_its_slot_until_the_device_is_back() {
    let mut r = rollout(limits(1, 1000, MaxFailures::Count(100)));
    let devices = fleet(2);
    assert_eq!(invoked_ids(&r.observe(NOW(), &devices, true)), ["d000"]);
    let _ = r.invoked(NOW(), "d000", window(), MethodOutcome::Accepted);
    // Past expected 5 min + grace 2 min: a failure, but no new invocation.
    let later = NOW() + TimeDelta::minutes(8);
    let a = r.observe(later, &devices, true);
    assert!(matches!(records(&a)[0].state, EntryState::Failed(_)));
    assert!(invoked_ids(&a).is_empty());
    assert!(invoked_ids(&r.observe(later + TimeDelta::minutes(5), &devices, true)).is_empty());
    // The device reports its reboot completed: the slot is free, d001 starts.
    let mut seen = devices.clone();
    seen[0] = rebooted("d000", RebootStatus::Completed, later);
    let a = r.observe(later + TimeDelta::minutes(6), &seen, true);
    assert_eq!(invoked_ids(&a), ["d001"]);
}

#[test]
fn a_timed_out_reboot_gives_its_slot_back_when_its_occurrence_is_over() {
    let mut r = rollout(limits(1, 1000, MaxFailures::Count(100)));
    let _ = r.observe(NOW(), &[obs("d1")], true);
    let _ = r.invoked(NOW(), "d1", window(), MethodOutcome::Accepted);
    let _ = r.tick(NOW() + TimeDelta::minutes(8));
    assert_eq!(r.in_flight_count(), 1);
    let _ = r.tick(window().closes_at + TimeDelta::hours(1));
    assert_eq!(r.in_flight_count(), 0);
}

#[test]
fn a_gateway_timeout_keeps_the_slot_and_the_twin_decides_without_a_second_call() {
    let mut r = rollout(limits(1, 1000, MaxFailures::Count(0)));
    let actions = r.observe(NOW(), &fleet(2), true);
    assert_eq!(invoked_ids(&actions), ["d000"]);
    let actions = r.invoked(
        NOW(),
        "d000",
        window(),
        MethodOutcome::MayHaveRun("504101".into()),
    );
    // Not a failure (a zero budget would pause), still in flight, journaled "may have run".
    assert_eq!(pauses(&actions), 0);
    assert!(invoked_ids(&actions).is_empty(), "the slot stays taken");
    assert_eq!(r.to_follow(NOW()), ["d000"]);
    assert!(matches!(
        records(&actions)[0].state,
        EntryState::MayHaveRun(_)
    ));
    // The twin shows it rebooted: completed, never invoked again; the next device starts.
    let later = NOW() + TimeDelta::seconds(30);
    let actions = r.observe(
        later,
        &[rebooted("d000", RebootStatus::Completed, NOW())],
        false,
    );
    assert_eq!(records(&actions)[0].state, EntryState::Completed);
    assert_eq!(invoked_ids(&actions), ["d001"]);
}

#[test]
fn a_gateway_timeout_with_no_trace_in_the_twin_is_retried_after_a_backoff() {
    let mut r = open_rollout();
    r.observe(NOW(), &[obs("d1")], true);
    r.invoked(
        NOW(),
        "d1",
        window(),
        MethodOutcome::MayHaveRun("504101".into()),
    );
    // No trace of a reboot: retried, but not at once.
    let actions = r.observe(NOW() + TimeDelta::seconds(1), &[obs("d1")], false);
    assert!(invoked_ids(&actions).is_empty());
    let actions = r.tick(NOW() + TimeDelta::seconds(20));
    assert_eq!(invoked_ids(&actions), ["d1"]);
}

#[test]
fn a_throttled_call_is_retried_without_counting_a_failure() {
    let mut r = rollout(limits(5, 1000, MaxFailures::Count(0)));
    r.observe(NOW(), &[obs("d1")], true);
    let actions = r.invoked(NOW(), "d1", window(), MethodOutcome::Throttled);
    assert_eq!(pauses(&actions), 0);
    assert_eq!(records(&actions)[0].failures, 0);
    assert_eq!(r.in_flight_count(), 0);
    let actions = r.tick(NOW() + TimeDelta::seconds(20));
    assert_eq!(invoked_ids(&actions), ["d1"]);
}

#[test]
fn the_candidate_query_asks_for_free_capacity_plus_what_a_lagging_query_may_repeat() {
    let lag = Duration::from_secs(10);
    let mut r = rollout(limits(4, 6, MaxFailures::Count(100)));
    // The 4 free slots, rounded up to the one page the hub meters anyway.
    assert_eq!(
        r.candidates_wanted(NOW(), lag),
        100,
        "the free slots, one page"
    );
    r.observe(NOW(), &fleet(10), false);
    // 4 in flight, 6 eligible waiting: no slot free, no query.
    assert_eq!(r.capacity(NOW()), 0);
    assert_eq!(r.candidates_wanted(NOW(), lag), 0);
    // Two complete: the observe starts d004 and d005 from the queue at once; 4 in flight
    // again, 6 of 6 this minute.
    let later = NOW() + TimeDelta::seconds(5);
    r.observe(
        later,
        &[
            rebooted("d000", RebootStatus::Completed, NOW()),
            rebooted("d001", RebootStatus::Completed, NOW()),
        ],
        false,
    );
    assert_eq!(r.capacity(later), 0);
    assert_eq!(r.candidates_wanted(later, lag), 0);
    // 150 slots, 60 in flight: 90 free + the 60 known = 150, two pages; once they are done
    // and older than the lag, the 150 free slots alone, still two pages; 40 more known within
    // the lag cross into a third.
    let mut r = rollout(limits(150, 1000, MaxFailures::Count(100)));
    r.observe(NOW(), &fleet(60), false);
    assert_eq!(r.capacity(NOW()), 90);
    assert_eq!(r.candidates_wanted(NOW(), lag), 200);
    let done: Vec<Observation> = (0..60)
        .map(|i| rebooted(&format!("d{i:03}"), RebootStatus::Completed, NOW()))
        .collect();
    let later = NOW() + TimeDelta::seconds(60);
    r.observe(later, &done, false);
    assert_eq!(r.capacity(later), 150);
    assert_eq!(
        r.candidates_wanted(NOW() + TimeDelta::seconds(5), lag),
        300,
        "150 free + 60 done within the lag"
    );
    assert_eq!(r.candidates_wanted(later, lag), 200);
}

#[test]
fn queued_candidates_are_spent_before_another_query_and_calls_wait_in_the_queue() {
    let lag = Duration::from_secs(10);
    let mut r = rollout(limits(4, 1000, MaxFailures::Count(100))).with_max_calling(2);
    // One page brought 10 due devices: 2 calls start (max_calling), 8 wait in the queue.
    let actions = r.observe(NOW(), &fleet(10), true);
    assert_eq!(invoked_ids(&actions), ["d000", "d001"]);
    assert_eq!(r.capacity(NOW()), 2);
    assert_eq!(
        r.candidates_wanted(NOW(), lag),
        0,
        "8 queued fill the 2 free slots: no query"
    );
    // An answer frees a call: the next queued device starts, without a query.
    let actions = r.invoked(NOW(), "d000", window(), MethodOutcome::Accepted);
    assert_eq!(invoked_ids(&actions), ["d002"]);
    assert_eq!(r.in_flight_count(), 3);
    // The queue empty but for what cannot fill the free slots: a query again.
    let mut r = rollout(limits(4, 1000, MaxFailures::Count(100)));
    r.observe(NOW(), &fleet(2), true);
    assert_eq!(r.capacity(NOW()), 2);
    assert_eq!(r.candidates_wanted(NOW(), lag), 100);
}

#[test]
fn devices_are_not_followed_before_the_fastest_reboot_seen_could_be_over() {
    let mut r = rollout(limits(2, 1000, MaxFailures::Count(100)));
    r.observe(NOW(), &fleet(3), true);
    for d in ["d000", "d001"] {
        r.invoked(NOW(), d, window(), MethodOutcome::Accepted);
    }
    // Nothing seen completed yet: every accepted device is read every pass.
    let soon = NOW() + TimeDelta::seconds(1);
    assert_eq!(r.to_follow(soon), ["d000", "d001"]);
    // d000 is back 40 s after it accepted: d002 starts in its slot, and it is read only from
    // 30 s after its acceptance.
    let back = NOW() + TimeDelta::seconds(40);
    let actions = r.observe(
        back,
        &[rebooted("d000", RebootStatus::Completed, back)],
        false,
    );
    let started = invoked_ids(&actions);
    assert_eq!(started, ["d002"]);
    for d in &started {
        r.invoked(back, d, window(), MethodOutcome::Accepted);
    }
    assert_eq!(r.to_follow(back), ["d001"]);
    let later = back + TimeDelta::seconds(29);
    assert_eq!(r.to_follow(later), ["d001"]);
    let later = back + TimeDelta::seconds(30);
    assert_eq!(r.to_follow(later), ["d001", "d002"]);
}

#[test]
fn devices_in_flight_are_followed_oldest_accepted_first() {
    let mut r = rollout(limits(3, 1000, MaxFailures::Count(100)));
    r.observe(NOW(), &fleet(3), true);
    // Accepted in the reverse of their ids' order.
    for (i, d) in ["d002", "d000", "d001"].into_iter().enumerate() {
        let at = NOW() + TimeDelta::seconds(i as i64);
        r.invoked(at, d, window(), MethodOutcome::Accepted);
    }
    let later = NOW() + TimeDelta::seconds(60);
    assert_eq!(r.to_follow(later), ["d002", "d000", "d001"]);
}
