//! The pure parts of the runner: the policies, the assignment, the fault plan, the decision
//! instants.

use super::*;
use casement_scheduler::rollout::{Entry, EntryState};
use serde_json::json;

fn devices(n: usize) -> Vec<Device> {
    fleet(n)
        .into_iter()
        .map(|d| Device {
            id: d.id,
            zone: d.zone,
        })
        .collect()
}

fn twins(devices: &[Device]) -> Vec<Value> {
    devices
        .iter()
        .map(|d| json!({"deviceId": d.id, "tags": {"zone": d.zone.name()}}))
        .collect()
}

fn setup(seed: Seed, n: usize) -> (tempfile::TempDir, Vec<Policy>, Vec<Device>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies =
        write_policies(dir.path(), &canaries(seed, &fleet(n))).expect("the policies load");
    (dir, policies, devices(n))
}

#[test]
fn every_device_gets_one_policy_and_canaries_win() {
    let seed = Seed::new(7);
    let (_dir, policies, devices) = setup(seed, 100);
    let assignment = assign(&policies, &twins(&devices));
    assert_eq!(assignment.len(), 100, "every zone is targeted");
    let ring = canaries(seed, &fleet(100));
    assert_eq!(ring.len(), CANARIES);
    for id in &ring {
        assert_eq!(assignment[id], "canary", "{id}");
    }
    for d in devices.iter().filter(|d| !ring.contains(&d.id)) {
        let expected = match d.zone.name() {
            "Europe/Amsterdam" | "Europe/Lisbon" => "europe-nightly",
            "America/New_York" => "new-york-evening",
            _ => "apac-utc",
        };
        assert_eq!(assignment[&d.id], expected, "{}", d.id);
    }
}

#[test]
fn every_policy_has_a_judged_window_and_europe_crosses_the_dst_change() {
    let (_dir, policies, _) = setup(Seed::new(1), 10);
    let judged = (judged_from(), judged_to());
    let open = |name: &str, zone: Tz| -> Vec<DateTime<Utc>> {
        let policy = policies.iter().find(|p| p.name() == name).expect("policy");
        let zone = policy
            .window()
            .timezone()
            .resolve(Some(zone))
            .expect("zone");
        judged_windows(policy, zone, judged)
            .iter()
            .map(|w| w.opens_at)
            .collect()
    };
    let utc = |h, m| Utc.with_ymd_and_hms(2026, 3, 29, h, m, 0).unwrap();
    // 02:30 does not exist in Amsterdam that night: the window opens at 03:00 CEST.
    assert_eq!(
        open("europe-nightly", chrono_tz::Europe::Amsterdam),
        vec![utc(1, 0)]
    );
    assert_eq!(
        open("europe-nightly", chrono_tz::Europe::Lisbon),
        vec![utc(1, 30)]
    );
    assert_eq!(
        open("new-york-evening", chrono_tz::America::New_York),
        vec![utc(1, 0), utc(1, 20), utc(1, 40)]
    );
    assert_eq!(open("apac-utc", chrono_tz::Asia::Tokyo), vec![utc(1, 10)]);
    assert_eq!(
        open("canary", chrono_tz::Australia::Sydney),
        vec![utc(1, 5)]
    );
    assert!(start_time() < judged_from() && judged_to() < stop_time());
}

#[test]
fn the_fault_plan_is_seeded_ordered_and_inside_the_run() {
    let seed = Seed::new(42);
    let (_dir, policies, devices) = setup(seed, 520);
    let assignment = assign(&policies, &twins(&devices));
    let a = plan(seed, &policies, &devices, &assignment);
    let b = plan(seed, &policies, &devices, &assignment);
    assert_eq!(a, b, "the same seed, the same plan");
    assert_ne!(
        a,
        plan(Seed::new(43), &policies, &devices, &assignment),
        "another seed, another plan"
    );
    assert!(a.windows(2).all(|w| w[0].at <= w[1].at), "in time order");
    assert!(a.iter().all(|p| p.at > start_time() && p.at < stop_time()));
    let count = |f: fn(&FaultAction) -> bool| a.iter().filter(|p| f(&p.action)).count();
    assert_eq!(count(|x| matches!(x, FaultAction::KillScheduler(_))), 2);
    assert_eq!(count(|x| matches!(x, FaultAction::RestartHub)), 1);
    let offs = count(|x| matches!(x, FaultAction::DeviceOff { .. }));
    assert_eq!(offs, count(|x| matches!(x, FaultAction::DeviceBack { .. })));
    assert!(offs >= 5, "about 3% of 520 devices: {offs}");
    // Every device comes back after it went.
    for p in &a {
        if let FaultAction::DeviceOff { device, .. } = &p.action {
            let back = a.iter().find(
                |q| matches!(&q.action, FaultAction::DeviceBack { device: d } if d == device),
            );
            assert!(back.is_some_and(|q| q.at > p.at), "{device}");
        }
    }
}

fn entry(device: &str, invoked_at: DateTime<Utc>) -> Entry {
    let occurrence = Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap();
    Entry {
        policy: "p".into(),
        device: device.into(),
        occurrence,
        closes_at: occurrence + TimeDelta::minutes(30),
        revision: "aa".into(),
        attempts: 1,
        failures: 0,
        invoked_at: Some(invoked_at),
        accepted_at: None,
        state: EntryState::Completed,
        updated_at: invoked_at,
    }
}

#[test]
fn decision_times_come_from_the_journal_and_bound_the_rest() {
    let t = |s| Utc.with_ymd_and_hms(2026, 3, 29, 1, 1, s).unwrap();
    let occurrence = Some(Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0).unwrap());
    let tap = |device: &str, at| Invocation {
        at,
        earliest: at,
        device: device.into(),
        policy: "p".into(),
        occurrence,
    };
    // d1 was invoked twice: the first attempt is only known from the tap.
    let tapped = vec![tap("d0", t(5)), tap("d1", t(10)), tap("d1", t(30))];
    let journal = JournalView {
        taken_at: None,
        entries: vec![entry("d0", t(2)), entry("d1", t(29))],
        pauses: Vec::new(),
    };
    let (out, lag) = decision_times(tapped, &journal, TimeDelta::seconds(1));
    // The largest lag seen (d0: 3 s) plus the margin.
    assert_eq!(lag, TimeDelta::seconds(4));
    assert_eq!((out[0].earliest, out[0].at), (t(2), t(2)));
    assert_eq!((out[1].earliest, out[1].at), (t(6), t(10)));
    assert_eq!((out[2].earliest, out[2].at), (t(29), t(29)));
}
