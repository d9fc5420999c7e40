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

/// The report of `views` at [`now`], with an empty journal.
fn without_journal(views: &[TwinView]) -> Report {
    build(
        views,
        &JournalView::default(),
        now(),
        DEFAULT_LOOKBACK,
        None,
    )
}

fn completed(occurrence: &str, last: &str) -> Value {
    json!({"status": "completed", "occurrence": occurrence, "lastReboot": last})
}

fn state_of<'a>(r: &'a Report, id: &str) -> &'a DeviceReport {
    r.devices.iter().find(|d| d.device == id).unwrap()
}

fn journal_entry(device: &str, occurrence: &str, state: EntryState) -> Entry {
    Entry {
        policy: "nightly".into(),
        device: device.into(),
        occurrence: at(occurrence),
        closes_at: at(occurrence) + TimeDelta::hours(2),
        revision: REV.into(),
        attempts: 1,
        failures: u32::from(matches!(state, EntryState::Failed(_))),
        invoked_at: Some(at(occurrence)),
        accepted_at: None,
        state,
        updated_at: at(occurrence),
    }
}

fn journal_failed(device: &str, occurrence: &str) -> Entry {
    journal_entry(
        device,
        occurrence,
        EntryState::Failed("refused: outside-window".into()),
    )
}

/// 02:00 in Tokyo on 03-10: 17:00 UTC on 03-09.
const TOKYO: &str = "2026-03-09T17:00:00.000Z";

fn tokyo(id: &'static str) -> Dev {
    Dev {
        timezone: "device",
        zone: Some("Asia/Tokyo"),
        ..dev(id)
    }
}

fn honolulu(id: &'static str) -> Dev {
    Dev {
        timezone: "device",
        zone: Some("Pacific/Honolulu"),
        ..dev(id)
    }
}

/// Every case of issue 12, one device each (18 devices).
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
        // Inside an open window (02:30 in Honolulu): judged by the windows it has had.
        view(honolulu("in-window-missed-before")),
        view(Dev {
            reboot: Some(completed(
                "2026-03-09T12:00:00.000Z",
                "2026-03-09T12:05:00.000Z",
            )),
            ..honolulu("in-window-compliant-before")
        }),
        view(Dev {
            // The policy arrived after yesterday's window: this open window is its first.
            assigned: "2026-03-10T11:00:00.000Z",
            ..honolulu("in-window-first")
        }),
        view(Dev {
            assigned: "2026-03-10T05:00:00.000Z",
            ..dev("pending-new")
        }),
        // Targeted, never reported anything: not compliant.
        view(Dev {
            timezone: "device",
            zone: None,
            ..dev("never-reported")
        }),
        view(dev("failed-journal")),
        view(Dev {
            reboot: Some(
                json!({"status": "failed", "occurrence": today, "lastReboot": "2026-03-10T02:06:00.000Z", "error": "exit 1"}),
            ),
            ..dev("failed-device")
        }),
        view(dev("failed-logged-twice")),
        view(tokyo("paused")),
        // Applied while its window was open (17:30 UTC, the Tokyo window opened at 17:00):
        // the failure and the pause of that window still count.
        view(Dev {
            assigned: "2026-03-09T17:30:00.000Z",
            ..tokyo("applied-in-window-failed")
        }),
        view(Dev {
            assigned: "2026-03-09T17:30:00.000Z",
            ..tokyo("applied-in-window-paused")
        }),
        view(Dev {
            status: "rejected",
            connected: false,
            ..dev("rejected")
        }),
        // The call timed out (504101, may have run); the twin shows the reboot: compliant.
        view(Dev {
            reboot: Some(completed(today, "2026-03-10T02:07:00.000Z")),
            ..dev("timed-out-rebooted")
        }),
        // The call timed out and no reboot followed before the window closed: failed.
        view(dev("timed-out-silent")),
    ];
    let journal = JournalView {
        taken_at: None,
        entries: vec![
            journal_failed("failed-journal", today),
            journal_failed("failed-logged-twice", today),
            journal_failed("failed-logged-twice", today),
            journal_failed("applied-in-window-failed", TOKYO),
            journal_entry("timed-out-rebooted", today, EntryState::Invoking),
            journal_entry("timed-out-silent", today, EntryState::Invoking),
        ],
        pauses: vec![
            PauseRecord {
                policy: "nightly".into(),
                occurrence: at("2026-03-09T17:00:00Z"),
                closes_at: at("2026-03-09T19:00:00Z"),
                failures: 2,
                devices: 10,
                budget: "1".into(),
                at: at("2026-03-09T18:20:00Z"),
            };
            2
        ],
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
        ("in-window-missed-before", DeviceState::Missed),
        ("in-window-compliant-before", DeviceState::Compliant),
        ("in-window-first", DeviceState::InWindow),
        ("pending-new", DeviceState::Pending),
        ("never-reported", DeviceState::NotApplied),
        ("failed-journal", DeviceState::Failed),
        ("failed-device", DeviceState::Failed),
        ("failed-logged-twice", DeviceState::Failed),
        ("paused", DeviceState::Paused),
        ("applied-in-window-failed", DeviceState::Failed),
        ("applied-in-window-paused", DeviceState::Paused),
        ("rejected", DeviceState::Rejected),
        ("timed-out-rebooted", DeviceState::Compliant),
        ("timed-out-silent", DeviceState::Failed),
    ];
    for (id, state) in expect {
        assert_eq!(
            state_of(&r, id).state,
            state,
            "{id}: {:?}",
            state_of(&r, id)
        );
    }
    assert_eq!(r.policies.len(), 1);
    let c = &r.policies[0].counts;
    assert_eq!(c.targeted, 18);
    assert_eq!(
        c.applied, 16,
        "all but the rejected one and the one that never reported"
    );
    assert_eq!(c.not_applied, 1);
    assert_eq!(c.rejected, 1);
    assert_eq!(c.compliant, 4);
    assert_eq!(c.in_window, 1);
    assert_eq!(c.pending, 1);
    assert_eq!(c.missed, 3);
    assert_eq!(c.failed, 5, "the failure logged twice counts once");
    assert_eq!(c.paused, 2);
    assert_eq!(c.offline, 2);
    // 4 compliant of 18 - 1 pending - 1 in its first window = 16 due.
    assert_eq!(c.percent_compliant, Some(25.0));
    assert_eq!(r.policies[0].pauses.len(), 1, "one pause per window");
    assert!(r.below(25.1) && !r.below(25.0));
    // The table and the detail lines agree: the pause line names the two paused devices.
    let table = render(&r, Format::Table, true);
    assert!(
        table.contains("2 device(s) above are paused in it"),
        "{table}"
    );
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
    // Inside today's Honolulu window, judged by yesterday's: 03-01 … 03-09 missed.
    let d = state_of(&r, "in-window-missed-before");
    assert_eq!(d.missed_streak, 9);
    assert_eq!(d.last_window.unwrap().opens_at, at("2026-03-09T12:00:00Z"));
    assert_eq!(
        d.open_window.unwrap().opens_at,
        at("2026-03-10T12:00:00Z"),
        "02:00 in Honolulu"
    );
    let d = state_of(&r, "in-window-first");
    assert_eq!(d.last_window.unwrap().opens_at, at("2026-03-10T12:00:00Z"));
    assert_eq!(d.zone.as_deref(), Some("Pacific/Honolulu"));
}

/// Issue 12: 24 devices targeted, none applied, all offline, was 100% and passed
/// `--fail-under 100`.
#[test]
fn a_fleet_that_never_applied_is_not_compliant() {
    let ids: Vec<&'static str> = (0..24)
        .map(|i| &*Box::leak(format!("offline-{i:02}").into_boxed_str()))
        .collect();
    let views: Vec<TwinView> = ids
        .iter()
        .map(|id| {
            view(Dev {
                zone: None,
                connected: false,
                ..dev(id)
            })
        })
        .collect();
    let r = without_journal(&views);
    let c = &r.total;
    assert_eq!(
        (c.targeted, c.applied, c.not_applied, c.offline),
        (24, 0, 24, 24)
    );
    assert_eq!(c.compliant, 0);
    assert_eq!(c.percent_compliant, Some(0.0));
    assert!(r.below(100.0) && r.below(0.1));
    assert!(render(&r, Format::Table, false).contains("0.0"));
}

/// Nothing due: the percentage is not applicable, never 100%; `--fail-under` does not fail.
#[test]
fn a_percentage_of_nothing_is_not_applicable() {
    let views = vec![
        view(Dev {
            assigned: "2026-03-10T05:00:00.000Z",
            ..dev("pending-new")
        }),
        view(Dev {
            assigned: "2026-03-10T11:00:00.000Z",
            ..honolulu("in-window-first")
        }),
    ];
    let r = build(
        &views,
        &JournalView::default(),
        now(),
        DEFAULT_LOOKBACK,
        None,
    );
    assert_eq!((r.total.pending, r.total.in_window), (1, 1));
    assert_eq!(r.total.percent_compliant, None);
    assert!(!r.below(100.0));
    let table = render(&r, Format::Table, false);
    assert!(table.contains("n/a"), "{table}");
    assert!(table.contains("no device is due yet"), "{table}");
    let json: Value = serde_json::from_str(&render(&r, Format::Json, false)).unwrap();
    assert_eq!(json["total"]["percentCompliant"], Value::Null);
}

#[test]
fn a_policy_filter_and_an_empty_fleet() {
    let (views, journal) = scenario();
    let r = build(&views, &journal, now(), DEFAULT_LOOKBACK, Some("other"));
    assert!(r.policies.is_empty());
    assert_eq!(r.total.percent_compliant, None);
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
    assert_eq!(json["policies"][0]["missed"], 3);
    assert_eq!(json["policies"][0]["notApplied"], 1);
    assert_eq!(json["total"]["offline"], 2);
    assert!(json.get("devices").is_none());
    let json: Value = serde_json::from_str(&render(&r, Format::Json, true)).unwrap();
    assert_eq!(json["devices"].as_array().unwrap().len(), 18);
    let csv = render(&r, Format::Csv, false);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "policy,targeted,applied,not-applied,rejected,compliant,simulated,in-window,pending,missed,failed,paused,forced,offline,compliant%"
    );
    assert_eq!(lines[1], "nightly,18,16,1,1,4,0,1,1,3,5,2,0,2,25.0");
    let csv = render(&r, Format::Csv, true);
    assert_eq!(csv.lines().count(), 19);
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

/// Issue 12: after `casement demo --keep-running`, a `*/2` schedule judged over the 400-day
/// lookback showed a window from March: one walk of the schedule stopped at its cap of
/// scheduled starts. The latest window must be the one that opened last.
#[test]
fn an_every_two_minutes_schedule_over_the_whole_lookback() {
    let spec = WindowSpec::new(
        casement_policy::schedule::Schedule::parse("*/2 * * * *").unwrap(),
        Duration::from_secs(60),
        casement_policy::zone::ZoneSpec::Named(chrono_tz::UTC),
        Vec::new(),
    )
    .unwrap();
    let now = at("2026-12-05T06:31:30Z");
    let from = now - TimeDelta::from_std(DEFAULT_LOOKBACK).unwrap();
    let opened = opened_windows(&spec, chrono_tz::UTC, from, now);
    assert_eq!(opened.len(), MAX_WINDOWS);
    assert_eq!(opened.last().unwrap().opens_at, at("2026-12-05T06:30:00Z"));
    assert!(opened.windows(2).all(|w| w[0].opens_at < w[1].opens_at));
}

#[test]
fn html_is_one_self_contained_page() {
    let (views, journal) = scenario();
    let r = build(&views, &journal, now(), DEFAULT_LOOKBACK, None);
    let page = render(&r, Format::Html, false);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.trim_end().ends_with("</html>"));
    // Nothing to fetch: no script, stylesheet link, image or URL.
    for banned in [
        "<script", "<link", "<img", "http://", "https://", "url(", "@import",
    ] {
        assert!(!page.contains(banned), "{banned} in the page");
    }
    assert!(page.contains("25.0%"), "the total");
    // One bar per policy, one timeline row per zone, one table row per device.
    assert_eq!(
        r.zones.len(),
        3,
        "{:?}",
        r.zones.iter().map(|z| &z.zone).collect::<Vec<_>>()
    );
    assert_eq!(page.matches("<tr><td>").count(), 1 + 18);
    for z in [
        "nightly · UTC",
        "nightly · Asia/Tokyo",
        "nightly · Pacific/Honolulu",
    ] {
        assert!(page.contains(z), "{z}");
    }
    // The Tokyo window of 03-09 17:00 is paused and judges 3 devices.
    let tokyo = r.zones.iter().find(|z| z.zone == "Asia/Tokyo").unwrap();
    let w = tokyo.windows.last().unwrap();
    assert_eq!(w.window.opens_at, at("2026-03-09T17:00:00Z"));
    assert!(w.paused);
    assert_eq!(
        w.states,
        vec![(DeviceState::Failed, 1), (DeviceState::Paused, 2)]
    );
}

/// Issue 12: the demo's closing report (a one-hour lookback) and `casement report` against the
/// kept-running demo (the 400-day lookback) disagreed for a `*/2` schedule. Both lookbacks now
/// give the same report.
#[test]
fn the_demo_lookback_and_the_cli_lookback_agree_on_a_two_minute_schedule() {
    let now = at("2026-12-05T06:30:30Z");
    let policy = json!({"policy": "fast", "revision": REV,
        "window": {"schedule": "*/2 * * * *", "durationSeconds": 60, "timezone": "UTC", "blackout": []},
        "reboot": {"expectedDurationSeconds": 5}});
    let twin = |id: &str, reboot: Value| {
        TwinView::from_value(json!({
            "deviceId": id,
            "connectionState": "Connected",
            "properties": {
                "desired": {"maintenance": policy, "$version": 2,
                            "$metadata": {"maintenance": {"$lastUpdated": "2026-12-05T06:20:00.000Z"}}},
                "reported": {"$version": 3,
                    "maintenance": {"policy": "fast", "revision": REV, "status": "applied",
                                    "timezone": "UTC", "window": null},
                    "iothubDM": {"reboot": reboot}}
            }
        }))
        .unwrap()
    };
    let views = vec![
        twin(
            "a",
            completed("2026-12-05T06:30:00.000Z", "2026-12-05T06:30:10.000Z"),
        ),
        twin(
            "b",
            completed("2026-12-05T06:30:00.000Z", "2026-12-05T06:30:20.000Z"),
        ),
        // Rebooted in the window before the open one, nothing yet in this one.
        twin(
            "c",
            completed("2026-12-05T06:28:00.000Z", "2026-12-05T06:28:20.000Z"),
        ),
        twin(
            "d",
            completed("2026-12-05T06:24:00.000Z", "2026-12-05T06:24:20.000Z"),
        ),
    ];
    let journal = JournalView::default();
    let demo = build(&views, &journal, now, Duration::from_secs(3600), None);
    let cli = build(&views, &journal, now, DEFAULT_LOOKBACK, None);
    assert_eq!(demo.total, cli.total);
    assert_eq!(demo.devices, cli.devices);
    let c = &cli.total;
    assert_eq!(
        (c.compliant, c.missed, c.pending, c.in_window),
        (3, 1, 0, 0)
    );
    assert_eq!(
        state_of(&cli, "c").last_window.unwrap().opens_at,
        at("2026-12-05T06:28:00Z")
    );
    // d rebooted at 06:24 and missed the 06:26 and 06:28 windows.
    assert_eq!(state_of(&cli, "d").missed_streak, 2);
}

/// Two compliant devices, one of which only simulated its reboot, and one whose last reboot
/// was forced (after the window it missed): the table, the detail lines, CSV, JSON and HTML
/// show each as what it is.
#[test]
fn forced_and_simulated_reboots_are_shown_as_such() {
    let today = "2026-03-10T02:00:00.000Z";
    let real = view(Dev {
        reboot: Some(completed(today, "2026-03-10T02:05:00.000Z")),
        ..dev("real-1")
    });
    let mut simulated = view(Dev {
        reboot: Some(completed(today, "2026-03-10T02:06:00.000Z")),
        ..dev("laptop-1")
    });
    simulated.simulated_reboots = Some(1);
    let forced = view(Dev {
        reboot: Some(json!({"status": "completed", "occurrence": null,
            "lastReboot": "2026-03-10T09:15:00.000Z", "forced": true,
            "reason": "INC-1234: kernel hotfix"})),
        ..dev("store-7")
    });
    let r = without_journal(&[real, simulated, forced]);
    let c = &r.total;
    assert_eq!(
        (c.targeted, c.compliant, c.simulated, c.missed, c.forced),
        (3, 2, 1, 1, 1)
    );
    assert_eq!(
        render(&r, Format::Table, true),
        " POLICY   TARGETED  APPLIED  NOT-APPLIED  REJECTED  COMPLIANT  SIMULATED  IN-WINDOW  PENDING  MISSED  FAILED  PAUSED  FORCED  OFFLINE  COMPLIANT% 
 nightly  3         3        0            0         2          1          0          0        1       0       0       1       0        66.7       
simulated: 1 of the 2 compliant device(s) of nightly rebooted in simulation only (casement-agent run --simulate-reboot): nothing was really rebooted
forced: store-7 (nightly) rebooted at 2026-03-10T09:15:00.000Z, FORCED outside its window: INC-1234: kernel hotfix

 DEVICE    POLICY   STATE      ZONE  LAST WINDOW OPENS         LAST WINDOW CLOSES        LAST REBOOT               REBOOT KIND  MISSED IN A ROW  ONLINE 
 laptop-1  nightly  compliant  UTC   2026-03-10T02:00:00.000Z  2026-03-10T04:00:00.000Z  2026-03-10T02:06:00.000Z  simulated    0                yes    
 real-1    nightly  compliant  UTC   2026-03-10T02:00:00.000Z  2026-03-10T04:00:00.000Z  2026-03-10T02:05:00.000Z               0                yes    
 store-7   nightly  missed     UTC   2026-03-10T02:00:00.000Z  2026-03-10T04:00:00.000Z  2026-03-10T09:15:00.000Z  forced       1                yes    
"
    );
    assert_eq!(
        render(&r, Format::Csv, true),
        "\
device,policy,state,zone,last window opens,last window closes,last reboot,reboot kind,missed in a row,online
laptop-1,nightly,compliant,UTC,2026-03-10T02:00:00.000Z,2026-03-10T04:00:00.000Z,2026-03-10T02:06:00.000Z,simulated,0,yes
real-1,nightly,compliant,UTC,2026-03-10T02:00:00.000Z,2026-03-10T04:00:00.000Z,2026-03-10T02:05:00.000Z,,0,yes
store-7,nightly,missed,UTC,2026-03-10T02:00:00.000Z,2026-03-10T04:00:00.000Z,2026-03-10T09:15:00.000Z,forced,1,yes
"
    );
    assert_eq!(
        render(&r, Format::Csv, false),
        "\
policy,targeted,applied,not-applied,rejected,compliant,simulated,in-window,pending,missed,failed,paused,forced,offline,compliant%
nightly,3,3,0,0,2,1,0,0,1,0,0,1,0,66.7
"
    );
    let json: Value = serde_json::from_str(&render(&r, Format::Json, true)).unwrap();
    assert_eq!(json["total"]["simulated"], 1);
    assert_eq!(json["total"]["forced"], 1);
    assert_eq!(
        json["forcedReboots"],
        json!([{"device": "store-7", "policy": "nightly",
                "at": "2026-03-10T09:15:00.000Z", "reason": "INC-1234: kernel hotfix"}])
    );
    let device = |id: &str| {
        json["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(device("laptop-1")["simulated"], true);
    assert!(device("laptop-1").get("forced").is_none());
    assert_eq!(device("real-1")["simulated"], false);
    assert_eq!(
        device("store-7")["forced"],
        json!({"at": "2026-03-10T09:15:00.000Z", "reason": "INC-1234: kernel hotfix"})
    );
    let page = render(&r, Format::Html, true);
    assert!(page.contains("<th>simulated</th><th>forced</th>"), "{page}");
    assert!(
        page.contains("<p>forced: store-7 (nightly) rebooted at 2026-03-10T09:15:00.000Z, FORCED outside its window: INC-1234: kernel hotfix</p>"),
        "{page}"
    );
    assert!(page.contains("<td>simulated</td>"), "{page}");
    assert!(
        page.contains("forced: INC-1234: kernel hotfix</td>"),
        "{page}"
    );
}
