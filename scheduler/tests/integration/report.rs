//! `casement report` after a real window: applied, rejected, compliant, failed, paused, missed
//! and offline devices counted exactly, the journal read through the running scheduler's
//! snapshot, and the threshold.

use std::time::Duration;

use crate::common::*;
use casement_iothub::rest::TwinPatch;
use casement_scheduler::journal::JournalView;
use casement_scheduler::report::{self, DeviceState, Format};
use chrono::TimeDelta;
use chrono_tz::UTC;
use serde_json::json;

const REBOOT: Duration = Duration::from_secs(90);

#[path = "../../examples/support/report_fleet.rs"]
mod report_fleet;

/// The grouped summary gives the per-device report's counts, pauses and zone timelines, and
/// the same table; returns what it cost.
async fn same_summary(
    client: &casement_client::ServiceClient,
    journal: &JournalView,
    now: chrono::DateTime<chrono::Utc>,
    policy: Option<&str>,
    per_device: &report::Report,
) -> casement_scheduler::report::grouped::SummaryCost {
    let (summary, cost) = casement_scheduler::report::grouped::compute_summary(
        client,
        journal,
        now,
        report::DEFAULT_LOOKBACK,
        policy,
    )
    .await
    .unwrap();
    assert_eq!(
        summary.policies, per_device.policies,
        "per policy ({cost:?})"
    );
    assert_eq!(summary.total, per_device.total, "total ({cost:?})");
    assert_eq!(summary.zones, per_device.zones, "zone timelines ({cost:?})");
    assert_eq!(
        summary.forced_reboots, per_device.forced_reboots,
        "forced reboots ({cost:?})"
    );
    assert!(summary.devices.is_empty());
    assert_eq!(
        report::render(&summary, Format::Table, false),
        report::render(per_device, Format::Table, false)
    );
    cost
}

/// Pages the per-device report and the summary take over `n` seeded twins of `shape` (20
/// items a page, so that pages show at a small fleet), and the per-device report (whose counts
/// the summary equals).
async fn pages(
    n: usize,
    shape: report_fleet::Shape,
) -> (
    u64,
    u64,
    casement_scheduler::report::grouped::SummaryCost,
    report::Report,
) {
    let env = Env::start(report_fleet::seeded_at()).await;
    let journal = report_fleet::seed(&env.hub, &|t| env.clock.set(t), n, shape).await;
    let client = Env::client_for(
        &env.hub,
        &env.clock,
        casement_client::ClientConfig {
            page_size: 20,
            ..casement_client::ClientConfig::default()
        },
    );
    let now = report_fleet::now();
    let requests = || {
        client
            .stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = requests();
    let per_device = report::compute(&client, &journal, now, report::DEFAULT_LOOKBACK, None)
        .await
        .unwrap();
    let select_all = requests() - before;
    assert_eq!(per_device.total.targeted as usize, n);
    let before = requests();
    let cost = same_summary(&client, &journal, now, None, &per_device).await;
    (select_all, requests() - before, cost, per_device)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_costs_the_same_pages_at_ten_times_the_fleet() {
    use report_fleet::Shape;
    let healthy = Shape::Healthy { missed: 1 };
    let (small_all, small, small_cost, r) = pages(100, healthy).await;
    // The fleet's shape: 90 compliant, 4 rejected, 4 not applied, 1 missed in every 100.
    assert_eq!((r.total.compliant, r.total.missed), (91, 1));
    let (large_all, large, large_cost, r) = pages(1000, healthy).await;
    assert_eq!((r.total.compliant, r.total.missed), (910, 10));
    // The per-device path pages the fleet: ten times the pages.
    assert_eq!((small_all, large_all), (5, 50));
    // The summary: the grouped counts, the policy's desired section, and two COUNT()s that
    // split the group of devices that rebooted in the window before into its three possible
    // outcomes (missed; compliant by the reboot's time; pending, reached after the window).
    assert_eq!(small_cost.split_groups, 1, "{small_cost:?}");
    assert_eq!(small_cost.split_queries, 2, "{small_cost:?}");
    assert_eq!(large_cost, small_cost);
    assert_eq!((small, large), (4, 4), "{small_cost:?}");

    // Most of the fleet missed, failed, was reached recently or is compliant by its reboot's
    // time alone: still the same pages at ten times the fleet, and the per-device counts.
    let (small_all, small, small_cost, r) = pages(100, Shape::Troubled).await;
    let counts = |r: &report::Report| {
        let t = &r.total;
        (
            t.compliant,
            t.simulated,
            t.rejected,
            t.not_applied,
            t.missed,
            t.failed,
            t.pending,
            t.forced,
        )
    };
    assert_eq!(counts(&r), (39, 3, 4, 4, 23, 20, 10, 3), "{:?}", r.total);
    let (large_all, large, large_cost, r) = pages(1000, Shape::Troubled).await;
    assert_eq!(
        counts(&r),
        (390, 30, 40, 40, 230, 200, 100, 3),
        "{:?}",
        r.total
    );
    assert_eq!((small_all, large_all), (5, 50));
    // Ten times the fleet has more groups (the missed devices' last windows spread over ten
    // days, one group each), merged into the same COUNT()s: the same queries and pages.
    assert_eq!((small_cost.groups, large_cost.groups), (8, 17));
    assert_eq!(
        (large_cost.queries, large_cost.split_queries),
        (small_cost.queries, small_cost.split_queries)
    );
    assert_eq!(small, large, "{small_cost:?}");
    // 1 grouped query, 1 desired section, 1 asking which groups hold the journal's failed
    // devices, 8 COUNT()s splitting the groups (3; at 1,000 twins 12, merged into 3), 1
    // listing the forced reboots.
    assert_eq!(large, 12, "{large_cost:?}");
    assert!(large <= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_every_kind_of_device_exactly() {
    let mut env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    let daily = PolicyFile {
        name: "nightly",
        schedule: "0 2 * * *",
        timezone: "UTC",
        max_failures: "5",
        ..PolicyFile::default()
    };
    env.write_policy("nightly.toml", &daily);
    env.write_policy(
        "canary.toml",
        &PolicyFile {
            name: "canary",
            priority: 100,
            target: "tags.ring = 'canary'",
            max_concurrent: 1,
            max_failures: "0",
            ..daily
        },
    );
    env.simulate(6, &[UTC], REBOOT, TimeDelta::zero()).await;
    for id in ["sim-0003", "sim-0004", "sim-0005"] {
        env.client
            .patch(id, &TwinPatch::tags(json!({"ring": "canary"})), None)
            .await
            .unwrap();
    }
    // A device that never connects.
    env.hub
        .create_device("ghost-1", json!({"role": "gateway"}))
        .await
        .unwrap();

    // sim-0002 (nightly) and sim-0003 (canary, invoked first: one at a time) refuse.
    let mut faulty = Faulty::new(env.client.clone());
    faulty.refuse = std::sync::Arc::new(
        ["sim-0002", "sim-0003"]
            .map(str::to_owned)
            .into_iter()
            .collect(),
    );
    let mut scheduler = env.scheduler(faulty).await;
    env.eventually("every device applied its policy", || async {
        let views = env.views().await;
        views
            .iter()
            .filter(|v| v.device_id.starts_with("sim-"))
            .all(|v| v.reported().is_some())
    })
    .await;
    // sim-0001 is given a policy it rejects (a bad zone under the same name and revision).
    let bad = {
        let mut d = env.view("sim-0001").await.desired_raw.unwrap();
        d["window"]["timezone"] = json!("Mars/Olympus_Mons");
        d
    };
    env.client
        .patch(
            "sim-0001",
            &TwinPatch::desired(json!({"maintenance": bad})),
            None,
        )
        .await
        .unwrap();
    env.wait_for("sim-0001 rejected its policy", |views| {
        views.iter().any(|v| {
            v.device_id == "sim-0001"
                && v.reported()
                    .is_some_and(|r| r.status == casement_policy::MaintenanceStatus::Rejected)
        })
    })
    .await;

    env.clock.set(utc(2026, 3, 29, 2, 0, 10));
    let spec = env.load_policies().get("nightly").unwrap().window().clone();
    drive(
        &env,
        &mut scheduler,
        &spec,
        utc(2026, 3, 29, 4, 10, 0),
        TimeDelta::seconds(60),
        REBOOT,
    )
    .await;
    assert_eq!(
        env.reboots().len(),
        1,
        "only sim-0000 rebooted: {:?}",
        env.reboots()
    );

    // The scheduler still holds the journal: the report reads its snapshot.
    let journal = JournalView::load(&env.state_dir()).unwrap();
    assert!(journal.taken_at.is_some(), "read from the snapshot");
    let now = utc(2026, 3, 29, 4, 10, 0);
    let r = report::compute(&env.client, &journal, now, report::DEFAULT_LOOKBACK, None)
        .await
        .unwrap();
    let cost = same_summary(&env.client, &journal, now, None, &r).await;
    assert!(
        cost.split_groups > 0,
        "the failed and paused devices are counted by COUNT() queries: {cost:?}"
    );
    let state = |id: &str| r.devices.iter().find(|d| d.device == id).unwrap().state;
    assert_eq!(state("sim-0000"), DeviceState::Compliant);
    assert_eq!(state("sim-0001"), DeviceState::Rejected);
    assert_eq!(state("sim-0002"), DeviceState::Failed);
    // Never connected, never applied: not compliant (issue 12), not "missed".
    assert_eq!(state("ghost-1"), DeviceState::NotApplied);
    assert_eq!(state("sim-0003"), DeviceState::Failed);
    assert_eq!(state("sim-0004"), DeviceState::Paused);
    assert_eq!(state("sim-0005"), DeviceState::Paused);

    let nightly = &r
        .policies
        .iter()
        .find(|p| p.policy == "nightly")
        .unwrap()
        .counts;
    assert_eq!(
        (
            nightly.targeted,
            nightly.applied,
            nightly.not_applied,
            nightly.rejected,
            nightly.compliant,
            nightly.failed,
            nightly.missed,
            nightly.offline,
            nightly.pending,
            nightly.paused,
            nightly.in_window
        ),
        (4, 2, 1, 1, 1, 1, 0, 1, 0, 0, 0),
        "{nightly:?}"
    );
    assert_eq!(nightly.percent_compliant, Some(25.0));
    let canary = r.policies.iter().find(|p| p.policy == "canary").unwrap();
    let c = &canary.counts;
    assert_eq!(
        (
            c.targeted,
            c.applied,
            c.compliant,
            c.failed,
            c.paused,
            c.offline
        ),
        (3, 3, 0, 1, 2, 0),
        "{c:?}"
    );
    assert_eq!(canary.pauses.len(), 1, "the pause is shown");
    assert_eq!(canary.pauses[0].occurrence, utc(2026, 3, 29, 2, 0, 0));
    assert!(r.below(50.0), "1 of 7 compliant");
    let ghost = r.devices.iter().find(|d| d.device == "ghost-1").unwrap();
    assert_eq!(ghost.online, Some(false));
    assert_eq!(ghost.missed_streak, 0);

    // The report and the journal agree: failed = the journal's final failures in the window,
    // once per (device, window); paused = the paused window's devices that were not invoked.
    let window = utc(2026, 3, 29, 2, 0, 0);
    for p in &r.policies {
        let mut failed: Vec<&str> = journal
            .entries
            .iter()
            .filter(|e| {
                e.policy == p.policy
                    && e.occurrence == window
                    && matches!(e.state, casement_scheduler::rollout::EntryState::Failed(_))
            })
            .map(|e| e.device.as_str())
            .collect();
        failed.sort_unstable();
        failed.dedup();
        assert_eq!(p.counts.failed as usize, failed.len(), "{}", p.policy);
        let invoked = journal
            .entries
            .iter()
            .filter(|e| e.policy == p.policy && e.occurrence == window)
            .count() as u32;
        let paused = journal.paused(&p.policy, window).is_some();
        let expect_paused = if paused {
            p.counts.targeted - p.counts.not_applied - p.counts.rejected - invoked
        } else {
            0
        };
        assert_eq!(p.counts.paused, expect_paused, "{}", p.policy);
    }

    // The HTML page: one row per device, the paused canary window on the timeline.
    let page = report::render(&r, Format::Html, false);
    for id in ["sim-0000", "sim-0005", "ghost-1"] {
        assert!(page.contains(&format!("<tr><td>{id}</td>")), "{id}");
    }
    let canary_utc = r
        .zones
        .iter()
        .find(|z| z.policy == "canary" && z.zone == "UTC")
        .unwrap();
    let last = canary_utc.windows.last().unwrap();
    assert!(last.paused);
    assert_eq!(
        last.states,
        vec![(DeviceState::Failed, 1), (DeviceState::Paused, 2)]
    );

    let text = report::render(&r, Format::Table, true);
    assert!(
        text.contains("paused: canary in the window 2026-03-29T02:00:00.000Z"),
        "{text}"
    );
    // A policy filter queries only that policy's devices.
    let only = report::compute(
        &env.client,
        &journal,
        now,
        report::DEFAULT_LOOKBACK,
        Some("canary"),
    )
    .await
    .unwrap();
    assert_eq!(only.policies.len(), 1);
    assert_eq!(only.total.targeted, 3);
    same_summary(&env.client, &journal, now, Some("canary"), &only).await;
    drop(scheduler);
}

/// The summary's cells against the per-device classification where they matter most: windows
/// open in one zone and closed in others, devices judged by the window before, a policy that
/// arrived between two windows or after the latest, reboots known by their time only, failed,
/// unresolved and paused calls in the journal — the same counts, zone timelines and table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_agrees_with_the_per_device_report_across_zones_and_the_journal() {
    let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let env = Env::start(at("2026-03-01T00:00:00Z")).await;
    let desired: casement_policy::DesiredMaintenance = serde_json::from_value(json!({
        "policy": "nightly", "revision": "0123abcd",
        "window": {"schedule": "0 2 * * *", "durationSeconds": 7200, "timezone": "device", "blackout": []},
        "reboot": {"expectedDurationSeconds": 300}
    }))
    .unwrap();
    let utc_today = "2026-03-10T02:00:00.000Z";
    let hnl_yesterday = "2026-03-09T12:00:00.000Z";
    let tokyo_today = "2026-03-09T17:00:00.000Z";
    let reboot = |occurrence: Option<&str>, last: &str, status: &str| json!({"iothubDM": {"reboot": {"status": status, "occurrence": occurrence, "lastReboot": last}}});
    // (id, zone, when the policy arrived, reported reboot); three devices of each.
    let devices: Vec<(&str, &str, &str, Option<serde_json::Value>)> = vec![
        (
            "utc-compliant",
            "UTC",
            "2026-03-01T00:00:00Z",
            Some(reboot(
                Some(utc_today),
                "2026-03-10T02:05:00.000Z",
                "completed",
            )),
        ),
        (
            "utc-by-time",
            "UTC",
            "2026-03-01T00:00:00Z",
            Some(reboot(None, "2026-03-10T03:00:00.000Z", "completed")),
        ),
        ("utc-missed", "UTC", "2026-03-01T00:00:00Z", None),
        (
            "utc-missed-old",
            "UTC",
            "2026-03-01T00:00:00Z",
            Some(reboot(
                Some("2026-03-08T02:00:00.000Z"),
                "2026-03-08T02:10:00.000Z",
                "completed",
            )),
        ),
        ("utc-pending", "UTC", "2026-03-10T05:00:00Z", None),
        (
            "utc-failed-device",
            "UTC",
            "2026-03-01T00:00:00Z",
            Some(reboot(
                Some(utc_today),
                "2026-03-10T02:06:00.000Z",
                "failed",
            )),
        ),
        ("utc-journal-failed", "UTC", "2026-03-01T00:00:00Z", None),
        ("utc-unresolved", "UTC", "2026-03-01T00:00:00Z", None),
        (
            "utc-unresolved-rebooted",
            "UTC",
            "2026-03-01T00:00:00Z",
            Some(reboot(
                Some(utc_today),
                "2026-03-10T02:07:00.000Z",
                "completed",
            )),
        ),
        (
            "hnl-missed-before",
            "Pacific/Honolulu",
            "2026-03-01T00:00:00Z",
            None,
        ),
        (
            "hnl-compliant-before",
            "Pacific/Honolulu",
            "2026-03-01T00:00:00Z",
            Some(reboot(
                Some(hnl_yesterday),
                "2026-03-09T12:05:00.000Z",
                "completed",
            )),
        ),
        (
            "hnl-first",
            "Pacific/Honolulu",
            "2026-03-10T11:00:00Z",
            None,
        ),
        (
            "hnl-failed-before",
            "Pacific/Honolulu",
            "2026-03-01T00:00:00Z",
            None,
        ),
        ("tokyo-paused", "Asia/Tokyo", "2026-03-01T00:00:00Z", None),
        (
            "tokyo-arrived-in-window",
            "Asia/Tokyo",
            "2026-03-09T17:30:00Z",
            None,
        ),
    ];
    for (kind, zone, arrived, reboot) in &devices {
        for i in 0..3 {
            let id = format!("{kind}-{i}");
            env.hub
                .create_device(&id, json!({"role": "gateway"}))
                .await
                .unwrap();
            env.clock.set(at(arrived));
            env.hub
                .patch_desired(&id, desired.to_patch())
                .await
                .unwrap();
            let maintenance = json!({"maintenance": {"policy": "nightly", "revision": "0123abcd",
                "status": "applied", "timezone": zone}});
            env.hub.report_as_device(&id, &maintenance).unwrap();
            if let Some(r) = reboot {
                env.hub.report_as_device(&id, r).unwrap();
            }
        }
    }
    let entry =
        |device: String, occurrence: &str, state: casement_scheduler::rollout::EntryState| {
            casement_scheduler::rollout::Entry {
                policy: "nightly".into(),
                device,
                occurrence: at(occurrence),
                closes_at: at(occurrence) + TimeDelta::hours(2),
                revision: "0123abcd".into(),
                attempts: 1,
                failures: 1,
                invoked_at: Some(at(occurrence)),
                accepted_at: None,
                state,
                updated_at: at(occurrence),
            }
        };
    use casement_scheduler::rollout::EntryState;
    let mut journal = JournalView::default();
    for i in 0..3 {
        let failed = || EntryState::Failed("refused: outside-window".into());
        journal.entries.extend([
            entry(format!("utc-journal-failed-{i}"), utc_today, failed()),
            entry(format!("utc-journal-failed-{i}"), utc_today, failed()),
            entry(
                format!("utc-unresolved-{i}"),
                utc_today,
                EntryState::Invoking,
            ),
            entry(
                format!("utc-unresolved-rebooted-{i}"),
                utc_today,
                EntryState::Invoking,
            ),
            entry(format!("hnl-failed-before-{i}"), hnl_yesterday, failed()),
        ]);
    }
    journal
        .pauses
        .push(casement_scheduler::journal::PauseRecord {
            policy: "nightly".into(),
            occurrence: at(tokyo_today),
            closes_at: at(tokyo_today) + TimeDelta::hours(2),
            failures: 2,
            devices: 6,
            budget: "1".into(),
            at: at("2026-03-09T18:20:00Z"),
        });
    // 12:30 UTC: 02:30 in Honolulu (its window open), the UTC and Tokyo windows closed.
    let now = at("2026-03-10T12:30:00Z");
    env.clock.set(now);
    let r = report::compute(&env.client, &journal, now, report::DEFAULT_LOOKBACK, None)
        .await
        .unwrap();
    let cost = same_summary(&env.client, &journal, now, None, &r).await;
    assert!(cost.split_groups > 0, "{cost:?}");
    let state = |kind: &str| {
        r.devices
            .iter()
            .find(|d| d.device == format!("{kind}-0"))
            .unwrap()
            .state
    };
    for (kind, expected) in [
        ("utc-compliant", DeviceState::Compliant),
        ("utc-by-time", DeviceState::Compliant),
        ("utc-missed", DeviceState::Missed),
        ("utc-missed-old", DeviceState::Missed),
        ("utc-pending", DeviceState::Pending),
        ("utc-failed-device", DeviceState::Failed),
        ("utc-journal-failed", DeviceState::Failed),
        ("utc-unresolved", DeviceState::Failed),
        ("utc-unresolved-rebooted", DeviceState::Compliant),
        ("hnl-missed-before", DeviceState::Missed),
        ("hnl-compliant-before", DeviceState::Compliant),
        ("hnl-first", DeviceState::InWindow),
        ("hnl-failed-before", DeviceState::Failed),
        ("tokyo-paused", DeviceState::Paused),
        ("tokyo-arrived-in-window", DeviceState::Paused),
    ] {
        assert_eq!(state(kind), expected, "{kind}");
    }
    let t = &r.total;
    assert_eq!(
        (
            t.targeted,
            t.compliant,
            t.missed,
            t.pending,
            t.failed,
            t.in_window,
            t.paused
        ),
        (45, 12, 9, 3, 12, 3, 6),
        "{t:?}"
    );
}

/// The snapshot holds the whole journal: a pass that journaled nothing does not write it again,
/// and settling writes what was journaled since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_snapshot_is_written_again_only_when_the_journal_changed() {
    let (env, spec) = Env::weekly(
        Fleet {
            reboot: REBOOT,
            ..Fleet::default()
        },
        |hub| hub,
    )
    .await;
    let mut scheduler = env.scheduler(env.client.clone()).await;
    env.wait_applied("weekly").await;
    let snapshot = env.state_dir().join("journal.json");
    scheduler.pass().await.unwrap();
    assert!(
        snapshot.exists(),
        "the first pass writes the (empty) snapshot"
    );

    // Saturday: nothing to do, nothing journaled, nothing written.
    std::fs::remove_file(&snapshot).unwrap();
    for _ in 0..3 {
        scheduler.pass().await.unwrap();
        scheduler.settle().await.unwrap();
    }
    assert!(
        !snapshot.exists(),
        "passes that journaled nothing wrote the snapshot again"
    );

    // The window opens and the three devices reboot: what was journaled reaches the snapshot.
    env.clock.set(utc(2026, 3, 29, 2, 0, 10));
    drive(
        &env,
        &mut scheduler,
        &spec,
        utc(2026, 3, 29, 2, 30, 0),
        TimeDelta::seconds(60),
        REBOOT,
    )
    .await;
    assert_eq!(env.reboots().len(), 3);
    let view = JournalView::read_snapshot(&env.state_dir()).unwrap();
    assert_eq!(
        view.entries.len(),
        3,
        "the snapshot after settling: {:?}",
        view.entries
    );
    assert_eq!(
        view.entries
            .iter()
            .map(|e| e.state.clone())
            .collect::<Vec<_>>(),
        vec![casement_scheduler::rollout::EntryState::Completed; 3]
    );
}
