//! The twin and report checks, on twins and reports that match the ground truth and on ones
//! that do not.

use super::fixture::{clean, t};
use super::*;
use chrono::{DateTime, TimeDelta, Utc};

/// A twin carrying the policy, reporting it applied, and (when `rebooted`) a completed reboot
/// for the 01:00 occurrence accepted at `accepted`.
fn twin(facts: &Facts, device: &str, rebooted: Option<DateTime<Utc>>) -> serde_json::Value {
    let policy = &facts.policies[0];
    let desired = casement_policy::DesiredMaintenance::from(policy);
    let mut reported = serde_json::json!({
        "maintenance": {"policy": policy.name(), "revision": policy.revision().as_str(),
                        "status": "applied", "timezone": "UTC"},
        "$version": 3
    });
    if let Some(at) = rebooted {
        reported["iothubDM"] = serde_json::json!({"reboot": {
            "lastReboot": casement_iothub::time::format_timestamp(at),
            "status": "completed",
            "occurrence": "2026-03-29T01:00:00.000Z"}});
    }
    serde_json::json!({
        "deviceId": device,
        "etag": "AAAAAAAAAAE=",
        "version": 4,
        "connectionState": "Connected",
        "tags": {"kind": "box"},
        "properties": {
            "desired": {"maintenance": desired, "$version": 2,
                        "$metadata": {"$lastUpdated": "2026-03-29T00:00:00.000Z",
                                      "maintenance": {"$lastUpdated": "2026-03-29T00:00:00.000Z"}}},
            "reported": reported
        }
    })
}

fn views(facts: &Facts, rebooted: &[(&str, DateTime<Utc>)]) -> Vec<TwinView> {
    facts
        .devices
        .iter()
        .map(|d| {
            let at = rebooted
                .iter()
                .find(|(id, _)| *id == d.id)
                .map(|(_, at)| *at);
            TwinView::from_value(twin(facts, &d.id, at)).expect("a twin")
        })
        .collect()
}

#[test]
fn twins_that_match_the_ground_truth_pass_and_others_do_not() {
    let f = clean();
    let truth: Vec<(&str, DateTime<Utc>)> = f
        .reboots
        .iter()
        .map(|r| (r.device.as_str(), r.device_time - TimeDelta::seconds(1)))
        .collect();
    assert_eq!(f.check_twins(&views(&f, &truth)), Vec::new());

    // A reboot the twin does not show, and one it shows that never happened.
    let mut g = f.clone();
    g.reboots.retain(|r| r.device != "d0");
    let v = g.check_twins(&views(&g, &truth));
    assert!(
        matches!(&v[..], [Violation::Twin { device, what }] if device == "d0" && what.contains("never happened")),
        "{v:?}"
    );
    let v = f.check_twins(&views(&f, &truth[1..]));
    assert!(
        matches!(&v[..], [Violation::Twin { device, .. }] if device == "d0"),
        "{v:?}"
    );
    // A lastReboot after the power went is impossible.
    let mut late = truth.clone();
    late[0].1 = f.reboots[0].device_time + TimeDelta::seconds(5);
    assert_eq!(f.check_twins(&views(&f, &late)).len(), 1);
    // A device carrying another policy than its tags make it.
    let mut h = f.clone();
    h.assignment.insert("d1".into(), "other".into());
    assert!(!h.check_twins(&views(&h, &truth)).is_empty());
}

#[test]
fn a_report_that_matches_the_ground_truth_passes_and_a_wrong_one_does_not() {
    use casement_scheduler::journal::JournalView;
    use casement_scheduler::report;

    let f = clean();
    let truth: Vec<(&str, DateTime<Utc>)> = f
        .reboots
        .iter()
        .map(|r| (r.device.as_str(), r.device_time))
        .collect();
    let now = t(1, 45, 0);
    let day = std::time::Duration::from_secs(86_400);
    let built = report::build(&views(&f, &truth), &JournalView::default(), now, day, None);
    assert_eq!(built.policies[0].counts.compliant, 4);
    assert_eq!(f.check_report(&built), Vec::new());

    // The report built from twins that claim a reboot the devices never made.
    let mut g = f.clone();
    g.reboots.retain(|r| r.device != "d2");
    let v = g.check_report(&built);
    assert!(
        v.iter()
            .any(|x| matches!(x, Violation::Report { subject, .. } if subject == "d2")),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|x| matches!(x, Violation::Report { subject, .. } if subject == "hourly")),
        "the policy count is off too: {v:?}"
    );
    // A device missing from the report.
    let mut short = built.clone();
    short.devices.retain(|d| d.device != "d3");
    assert!(!f.check_report(&short).is_empty());
}
