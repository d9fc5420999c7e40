//! Each check, on a clean log (no violation) and on a log that breaks it (the violation).

use super::fixture::{clean, facts, invocation, reboot, t};
use super::*;

#[test]
fn a_clean_run_has_no_violation() {
    assert_eq!(clean().check(), Vec::new());
}

#[test]
fn a_reboot_outside_the_window_is_caught() {
    let mut f = clean();
    // 01:40 by the device's clock: the window closed at 01:30.
    f.reboots[0].at = t(1, 40, 0);
    f.reboots[0].device_time = t(1, 40, 0);
    let v = f.check_windows();
    assert!(matches!(&v[..], [Violation::OutsideWindow { .. }]), "{v:?}");

    // Inside by its own clock but with less than the expected duration left.
    let mut f = clean();
    f.reboots[0].device_time = t(1, 27, 0);
    f.reboots[0].at = t(1, 27, 0);
    let v = f.check_windows();
    assert!(
        matches!(&v[..], [Violation::OutsideWindow { why, .. }] if why.contains("expected duration")),
        "{v:?}"
    );

    // A device clock far ahead: inside by its clock, well before the window by the true one.
    let mut f = clean();
    f.reboots[0].at = t(0, 58, 0);
    f.reboots[0].device_time = t(1, 1, 0);
    let v = f.check_windows();
    assert!(
        matches!(&v[..], [Violation::OutsideWindow { why, .. }] if why.contains("true clock")),
        "{v:?}"
    );

    // The right window, but the wrong occurrence named.
    let mut f = clean();
    f.reboots[0].occurrence = Some(t(0, 0, 0));
    assert!(matches!(
        &f.check_windows()[..],
        [Violation::OutsideWindow { .. }]
    ));
}

#[test]
fn reboots_for_the_wrong_policy_or_forced_are_caught() {
    let mut f = clean();
    f.reboots[1].policy = Some("other".into());
    f.reboots[2].forced = true;
    let v = f.check_windows();
    assert!(matches!(v[0], Violation::WrongPolicy { .. }), "{v:?}");
    assert!(matches!(v[1], Violation::Forced { .. }), "{v:?}");
}

#[test]
fn a_second_reboot_in_one_occurrence_is_caught() {
    let mut f = clean();
    f.reboots.push(reboot("d1", t(1, 10, 0)));
    let v = f.check_once_per_occurrence();
    assert!(
        matches!(&v[..], [Violation::Twice { device, count: 2, .. }] if device == "d1"),
        "{v:?}"
    );
    // The next occurrence is another matter.
    let mut f = clean();
    let mut next = reboot("d1", t(2, 1, 0));
    next.occurrence = Some(t(2, 0, 0));
    f.reboots.push(next);
    assert_eq!(f.check_once_per_occurrence(), Vec::new());
}

#[test]
fn too_many_dark_at_once_is_caught_and_back_to_back_is_not() {
    let mut f = clean();
    // d0 and d1 are dark until 01:02:00 and 01:02:30; d2 going dark at 01:01:45 makes three.
    f.reboots[2].at = t(1, 1, 45);
    f.reboots[2].device_time = t(1, 1, 45);
    let v = f.check_concurrency();
    assert!(
        matches!(
            &v[..],
            [Violation::Concurrency {
                count: 3,
                max: 2,
                ..
            }]
        ),
        "{v:?}"
    );

    // d2 going dark exactly as d0 comes back is fine (half-open intervals).
    let mut f = clean();
    f.reboots[2].at = t(1, 2, 0);
    assert_eq!(f.check_concurrency(), Vec::new());
}

#[test]
fn too_many_invocations_in_a_minute_are_caught() {
    let mut f = clean();
    // 00:59, 01:29, 02:09 and 02:59 are four within two minutes, at most three in one...
    f.invocations.push(invocation("d0", t(1, 1, 59)));
    assert_eq!(f.check_rate(), Vec::new());
    // ...until one more lands at 01:50: 01:29, 01:50, 01:59 and 02:09 are within 60 s.
    f.invocations.push(invocation("d1", t(1, 1, 50)));
    let v = f.check_rate();
    assert!(
        matches!(
            &v[..],
            [Violation::Rate {
                count: 4,
                max: 3,
                ..
            }]
        ),
        "{v:?}"
    );
}

#[test]
fn an_uncertain_instant_never_invents_a_rate_violation() {
    let mut f = clean();
    f.invocations = vec![
        invocation("d0", t(1, 0, 0)),
        invocation("d1", t(1, 0, 20)),
        invocation("d2", t(1, 0, 40)),
    ];
    // Seen at 01:01:10, decided somewhere after 01:00:50: it may be the fourth in the minute
    // from 01:00:00, or not — no violation can be claimed.
    let mut late = invocation("d3", t(1, 1, 10));
    late.earliest = t(1, 0, 50);
    f.invocations.push(late.clone());
    assert_eq!(f.check_rate(), Vec::new());
    // Seen at 01:00:55: whichever instant it was, it is the fourth in that minute.
    late.at = t(1, 0, 55);
    f.invocations[3] = late;
    let v = f.check_rate();
    assert!(
        matches!(&v[..], [Violation::Rate { count: 4, .. }]),
        "{v:?}"
    );
}

#[test]
fn a_device_available_all_window_but_not_rebooted_is_missed() {
    let mut f = clean();
    f.reboots.retain(|r| r.device != "d3");
    let v = f.check_completeness();
    assert!(
        matches!(&v[..], [Violation::Missed { device, .. }] if device == "d3"),
        "{v:?}"
    );
    // Excused by an outage in the window...
    let mut g = f.clone();
    g.outages.push(Outage {
        device: "d3".into(),
        from: t(1, 20, 0),
        to: t(1, 22, 0),
    });
    assert_eq!(g.check_completeness(), Vec::new());
    // ...but not by one after it.
    let mut g = f.clone();
    g.outages.push(Outage {
        device: "d3".into(),
        from: t(1, 31, 0),
        to: t(1, 40, 0),
    });
    assert_eq!(g.check_completeness().len(), 1);
    // Excused when the failure budget paused the window.
    let mut g = f.clone();
    g.paused.insert(("hourly".into(), t(1, 0, 0)));
    assert_eq!(g.check_completeness(), Vec::new());
    // Windows outside the judged span are not judged.
    let mut g = f;
    g.judged = (t(1, 5, 0), t(1, 30, 0));
    assert_eq!(g.check_completeness(), Vec::new());
}

#[test]
fn judged_windows_follow_the_device_zone() {
    let mut f = facts();
    f.devices[0].zone = chrono_tz::Asia::Kolkata; // +05:30: local :00 is UTC :30
    f.judged = (t(1, 0, 0), t(3, 0, 0));
    let policy = f.policies[0].clone();
    let utc: Vec<_> = f
        .judged_windows(&policy, "d1")
        .iter()
        .map(|w| w.opens_at)
        .collect();
    let kolkata: Vec<_> = f
        .judged_windows(&policy, "d0")
        .iter()
        .map(|w| w.opens_at)
        .collect();
    assert_eq!(utc, vec![t(1, 0, 0), t(2, 0, 0)]);
    assert_eq!(kolkata, vec![t(1, 30, 0), t(2, 30, 0)]);
}

#[test]
fn peaks_count_dark_devices_per_policy() {
    let f = clean();
    // d0 dark 01:01:00–01:02:00, d1 01:01:30–01:02:30, d2 from 01:02:10, d3 from 01:03:00.
    let peak = f.peaks()["hourly"];
    assert_eq!((peak.count, peak.at, peak.max), (2, Some(t(1, 1, 30)), 2));
    let mut g = facts();
    g.reboots.clear();
    assert_eq!(g.peaks()["hourly"].count, 0);
}
