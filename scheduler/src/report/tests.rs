use super::*;
use crate::rollout::Entry;
use serde_json::{Value, json};

const REV: &str = "0123abcd";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// 2026-03-10 12:30 UTC: 02:30 in Honolulu (window open there), the UTC window of the day
/// (02:00–04:00) long closed.
fn now() -> DateTime<Utc> {
    at("2026-03-10T12:30:00Z")
}

fn desired(timezone: &str) -> Value {
    json!({"policy": "nightly", "revision": REV,
           "window": {"schedule": "0 2 * * *", "durationSeconds": 7200, "timezone": timezone, "blackout": []},
           "reboot": {"expectedDurationSeconds": 300}})
}

struct Dev {
    id: &'static str,
    timezone: &'static str,
    zone: Option<&'static str>,
    status: &'static str,
    reboot: Option<Value>,
    assigned: &'static str,
    connected: bool,
}

fn dev(id: &'static str) -> Dev {
    Dev {
        id,
        timezone: "UTC",
        zone: Some("Europe/Amsterdam"),
        status: "applied",
        reboot: None,
        assigned: "2026-03-01T00:00:00.000Z",
        connected: true,
    }
}

fn view(d: Dev) -> TwinView {
    let mut reported = json!({"$version": 2});
    if let Some(zone) = d.zone {
        reported["maintenance"] = json!({"policy": "nightly", "revision": REV, "status": d.status,
            "error": if d.status == "rejected" { json!("window.timezone: unknown zone") } else { Value::Null },
            "timezone": zone, "window": null});
    }
    if let Some(r) = d.reboot {
        reported["iothubDM"] = json!({"reboot": r});
    }
    TwinView::from_value(json!({
        "deviceId": d.id,
        "connectionState": if d.connected { "Connected" } else { "Disconnected" },
        "properties": {
            "desired": {"maintenance": desired(d.timezone), "$version": 2,
                        "$metadata": {"maintenance": {"$lastUpdated": d.assigned}}},
            "reported": reported
        }
    }))
    .unwrap()
}

fn completed(occurrence: &str, last: &str) -> Value {
    json!({"status": "completed", "occurrence": occurrence, "lastReboot": last})
}

fn state_of<'a>(r: &'a Report, id: &str) -> &'a DeviceReport {
    r.devices.iter().find(|d| d.device == id).unwrap()
}

fn journal_failed(device: &str, occurrence: &str) -> Entry {
    Entry {
        policy: "nightly".into(),
        device: device.into(),
        occurrence: at(occurrence),
        closes_at: at(occurrence) + TimeDelta::hours(2),
        revision: REV.into(),
        attempts: 1,
        failures: 1,
        invoked_at: Some(at(occurrence)),
        accepted_at: None,
        state: EntryState::Failed("refused: outside-window".into()),
        updated_at: at(occurrence),
    }
}

fn scenario() -> (Vec<TwinView>, JournalView) {
    let today = "2026-03-10T02:00:00.000Z";
    let views = vec![
        view(Dev {
            reboot: Some(completed(today, "2026-03-10T02:05:00.000Z")),
            ..dev("compliant")
        }),
        view(Dev {
            // No occurrence in the report, but a completed reboot inside the window counts.
            reboot: Some(json!({"status": "completed", "lastReboot": "2026-03-10T03:00:00.000Z"})),
            ..dev("compliant-by-hand")
        }),
        view(dev("missed-since-assigned")),
        view(Dev {
            reboot: Some(completed(
                "2026-03-08T02:00:00.000Z",
                "2026-03-08T02:10:00.000Z",
            )),
            connected: false,
            ..dev("missed-twice-offline")
        }),
        view(Dev {
            timezone: "device",
            zone: Some("Pacific/Honolulu"),
            ..dev("in-window")
        }),
        view(Dev {
            assigned: "2026-03-10T05:00:00.000Z",
            ..dev("pending-new")
        }),
        view(Dev {
            timezone: "device",
            zone: None,
            ..dev("pending-no-zone")
        }),
        view(dev("failed-journal")),
        view(Dev {
            reboot: Some(
                json!({"status": "failed", "occurrence": today, "lastReboot": "2026-03-10T02:06:00.000Z", "error": "exit 1"}),
            ),
            ..dev("failed-device")
        }),
        view(Dev {
            timezone: "device",
            zone: Some("Asia/Tokyo"),
            ..dev("paused")
        }),
        view(Dev {
            status: "rejected",
            connected: false,
            ..dev("rejected")
        }),
    ];
    let journal = JournalView {
        taken_at: None,
        entries: vec![journal_failed("failed-journal", today)],
        // 02:00 in Tokyo: 17:00 UTC the day before.
        pauses: vec![PauseRecord {
            policy: "nightly".into(),
            occurrence: at("2026-03-09T17:00:00Z"),
            closes_at: at("2026-03-09T19:00:00Z"),
            failures: 2,
            devices: 10,
            budget: "1".into(),
            at: at("2026-03-10T02:20:00Z"),
        }],
    };
    (views, journal)
}

#[test]
fn every_state_is_classified_and_counted_exactly() {
    let (views, journal) = scenario();
    let r = build(&views, &journal, now(), DEFAULT_LOOKBACK, None);
    let expect = [
        ("compliant", DeviceState::Compliant),
        ("compliant-by-hand", DeviceState::Compliant),
        ("missed-since-assigned", DeviceState::Missed),
        ("missed-twice-offline", DeviceState::Missed),
        ("in-window", DeviceState::InWindow),
        ("pending-new", DeviceState::Pending),
        ("pending-no-zone", DeviceState::Pending),
        ("failed-journal", DeviceState::Failed),
        ("failed-device", DeviceState::Failed),
        ("rejected", DeviceState::Rejected),
    ];
    for (id, state) in expect {
        assert_eq!(
            state_of(&r, id).state,
            state,
            "{id}: {:?}",
            state_of(&r, id)
        );
    }
    // The journal's pause of its latest window (Tokyo's): the device never got its turn.
    assert_eq!(state_of(&r, "paused").state, DeviceState::Paused);
    assert_eq!(r.policies.len(), 1);
    let c = &r.policies[0].counts;
    assert_eq!(c.targeted, 11);
    assert_eq!(
        c.applied, 9,
        "all but the rejected one and the one that never reported"
    );
    assert_eq!(c.rejected, 1);
    assert_eq!(c.compliant, 2);
    assert_eq!(c.in_window, 1);
    assert_eq!(c.pending, 2);
    assert_eq!(c.missed, 2);
    assert_eq!(c.failed, 2);
    assert_eq!(c.paused, 1);
    assert_eq!(c.offline, 2);
    // 2 compliant of 11 - 2 pending - 1 in window = 8 due.
    assert!(
        (c.percent_compliant - 25.0).abs() < 1e-9,
        "{}",
        c.percent_compliant
    );
    assert_eq!(r.policies[0].pauses.len(), 1);
    assert!(r.below(25.1) && !r.below(25.0));
}

#[test]
fn missed_streaks_count_windows_since_the_last_reboot_or_assignment() {
    let (views, journal) = scenario();
    let r = build(&views, &journal, now(), DEFAULT_LOOKBACK, None);
    // Assigned 03-01 00:00, never rebooted: the windows of 03-01 … 03-10.
    assert_eq!(state_of(&r, "missed-since-assigned").missed_streak, 10);
    // Rebooted in the 03-08 window: 03-09 and 03-10 missed.
    assert_eq!(state_of(&r, "missed-twice-offline").missed_streak, 2);
    assert_eq!(state_of(&r, "compliant").missed_streak, 0);
    let w = state_of(&r, "missed-since-assigned").last_window.unwrap();
    assert_eq!(w.opens_at, at("2026-03-10T02:00:00Z"));
    assert_eq!(w.closes_at, at("2026-03-10T04:00:00Z"));
    let w = state_of(&r, "in-window").last_window.unwrap();
    assert_eq!(w.opens_at, at("2026-03-10T12:00:00Z"), "02:00 in Honolulu");
    assert_eq!(
        state_of(&r, "in-window").zone.as_deref(),
        Some("Pacific/Honolulu")
    );
}

#[test]
fn a_policy_filter_and_an_empty_fleet() {
    let (views, journal) = scenario();
    let r = build(&views, &journal, now(), DEFAULT_LOOKBACK, Some("other"));
    assert!(r.policies.is_empty());
    assert_eq!(r.total.percent_compliant, 100.0);
    assert!(!r.below(100.0));
    assert!(render(&r, Format::Table, false).contains("No device carries"));
}

#[test]
fn outputs_in_table_json_and_csv() {
    let (views, journal) = scenario();
    let r = build(&views, &journal, now(), DEFAULT_LOOKBACK, None);
    let table = render(&r, Format::Table, true);
    assert!(table.contains("COMPLIANT%"), "{table}");
    assert!(table.contains("25.0"), "{table}");
    assert!(
        table.contains("paused: nightly in the window 2026-03-09T17:00:00.000Z"),
        "{table}"
    );
    assert!(table.contains("missed-since-assigned"), "{table}");
    let json: Value = serde_json::from_str(&render(&r, Format::Json, false)).unwrap();
    assert_eq!(json["policies"][0]["missed"], 2);
    assert_eq!(json["total"]["offline"], 2);
    assert!(json.get("devices").is_none());
    let json: Value = serde_json::from_str(&render(&r, Format::Json, true)).unwrap();
    assert_eq!(json["devices"].as_array().unwrap().len(), 11);
    let csv = render(&r, Format::Csv, false);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "policy,targeted,applied,rejected,compliant,in-window,pending,missed,failed,paused,offline,compliant%"
    );
    assert_eq!(lines[1], "nightly,11,9,1,2,1,2,2,2,1,2,25.0");
    let csv = render(&r, Format::Csv, true);
    assert_eq!(csv.lines().count(), 12);
    assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
}

/// A frequent schedule has more windows over the lookback than the cache keeps: the latest
/// window must still be the one that opened last, not one from the start of the lookback.
#[test]
fn a_frequent_schedule_is_judged_by_its_latest_window() {
    let spec = WindowSpec::new(
        casement_policy::schedule::Schedule::parse("*/5 * * * *").unwrap(),
        Duration::from_secs(120),
        casement_policy::zone::ZoneSpec::Named(chrono_tz::UTC),
        Vec::new(),
    )
    .unwrap();
    let now = at("2026-03-10T12:31:00Z");
    // 100 days of 5-minute windows: 28,800, more than MAX_WINDOWS.
    let from = now - TimeDelta::days(100);
    let mut cache = WindowCache::default();
    let opened = cache.opened(("p", REV), &spec, chrono_tz::UTC, from, now);
    assert_eq!(opened.len(), MAX_WINDOWS);
    let latest = opened.last().unwrap();
    assert_eq!(latest.opens_at, at("2026-03-10T12:30:00Z"));
    assert!(latest.contains(now));
}
