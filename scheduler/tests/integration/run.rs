//! `casement run` against the real hub and simulated agents, on a driven clock: the invariants
//! over several windows in several zones (one across a DST change), crashes between journaling
//! and invoking and between invoking and recording, offline devices, a throttling hub, policy
//! reloads and a graceful stop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use casement_hub::{Operation, Rate, ThrottleConfig};
use casement_scheduler::rollout::EntryState;
use casement_scheduler::run::Signals;
use chrono::TimeDelta;
use chrono_tz::Tz;
use chrono_tz::{America, Europe, UTC};

const REBOOT: Duration = Duration::from_secs(90);
const STEP: TimeDelta = TimeDelta::seconds(60);

fn zone_map(env: &Env) -> BTreeMap<String, Tz> {
    env.sim()
        .devices()
        .iter()
        .map(|d| (d.id.clone(), d.zone))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sundays_in_three_zones_across_a_dst_change_keep_the_invariants() {
    // Saturday 2026-03-28 noon UTC. Europe springs forward on Sunday 03-29 at 02:00, so the
    // Amsterdam window of "02:00" opens at 03:00 CEST (01:00 UTC) that day; New York is already
    // on EDT (since 03-08).
    let (env, spec) = Env::weekly(
        Fleet {
            policy: PolicyFile {
                max_concurrent: 2,
                max_per_minute: 3,
                ..PolicyFile::default()
            },
            devices: 9,
            zones: &[UTC, Europe::Amsterdam, America::New_York],
            reboot: REBOOT,
            max_skew: TimeDelta::seconds(2),
        },
        |hub| hub,
    )
    .await;
    let mut scheduler = env.scheduler(env.client.clone()).await;
    env.wait_applied("weekly").await;

    drive(
        &env,
        &mut scheduler,
        &spec,
        utc(2026, 4, 5, 12, 0, 0),
        STEP,
        REBOOT,
    )
    .await;

    let records = env.reboots();
    let zones = zone_map(&env);
    env.check_invariants("weekly", TimeDelta::seconds(2));
    // Invariant 4: every device rebooted in both of its windows.
    assert_eq!(records.len(), 18, "{records:#?}");
    let expected = |zone: Tz| match zone {
        // The DST-moved start, then a regular one.
        z if z == Europe::Amsterdam => [utc(2026, 3, 29, 1, 0, 0), utc(2026, 4, 5, 0, 0, 0)],
        z if z == America::New_York => [utc(2026, 3, 29, 6, 0, 0), utc(2026, 4, 5, 6, 0, 0)],
        _ => [utc(2026, 3, 29, 2, 0, 0), utc(2026, 4, 5, 2, 0, 0)],
    };
    for (device, zone) in &zones {
        let mut occurrences: Vec<_> = records
            .iter()
            .filter(|r| &r.device == device)
            .filter_map(|r| r.occurrence)
            .collect();
        occurrences.sort();
        assert_eq!(occurrences, expected(*zone), "{device} in {zone}");
    }
    let stats = scheduler.stats().clone();
    assert_eq!(
        (
            stats.invocations,
            stats.accepted,
            stats.completed,
            stats.failed
        ),
        (18, 18, 18, 0),
        "{stats:?}"
    );
    let journal = scheduler.journal().entries(Some("weekly")).unwrap();
    assert_eq!(journal.len(), 18);
    assert!(
        journal.iter().all(|e| e.state == EntryState::Completed),
        "{journal:#?}"
    );
}

/// Applies the policy to three UTC devices and opens their Sunday window.
async fn window_open_with_three_devices(max_concurrent: u32) -> (Env, casement_policy::WindowSpec) {
    Env::weekly(
        Fleet {
            policy: PolicyFile {
                max_concurrent,
                ..PolicyFile::default()
            },
            reboot: REBOOT,
            ..Fleet::default()
        },
        |hub| hub,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_between_journaling_and_invoking_forgets_nobody() {
    let (env, spec) = window_open_with_three_devices(1).await;
    let mut faulty = Faulty::new(env.client.clone());
    faulty.crash = Some((Crash::BeforeCall, 1));
    {
        let mut first = env.scheduler(faulty.clone()).await;
        env.wait_applied("weekly").await;
        env.clock.set(utc(2026, 3, 29, 2, 0, 10));
        env.settle_devices(&spec, REBOOT).await;
        first.pass().await.unwrap();
        faulty.crashed.notified().await;
        let journal = first.journal().entries(None).unwrap();
        assert_eq!(journal.len(), 1);
        assert_eq!(
            journal[0].state,
            EntryState::Invoking,
            "journaled before the call"
        );
        // Killed here: the call never reached the hub.
    }
    assert!(env.reboots().is_empty());
    let mut second = env.scheduler(env.client.clone()).await;
    assert_eq!(
        second.rollout("weekly").unwrap().in_flight_count(),
        1,
        "the unresolved entry counts as in flight"
    );
    drive(
        &env,
        &mut second,
        &spec,
        utc(2026, 3, 29, 4, 0, 0),
        STEP,
        REBOOT,
    )
    .await;
    let records = env.reboots();
    assert_eq!(records.len(), 3, "{records:#?}");
    env.check_invariants("weekly", TimeDelta::zero());
    let first_device = &faulty.calls()[0];
    let entry = second
        .journal()
        .get("weekly", first_device, utc(2026, 3, 29, 2, 0, 0))
        .unwrap()
        .unwrap();
    assert_eq!(entry.state, EntryState::Completed);
    assert_eq!(
        entry.attempts, 2,
        "invoked again by the restarted scheduler"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_killed_between_invoking_and_recording_reboots_nobody_twice() {
    let (env, spec) = window_open_with_three_devices(1).await;
    let mut faulty = Faulty::new(env.client.clone());
    faulty.crash = Some((Crash::AfterCall, 1));
    {
        let mut first = env.scheduler(faulty.clone()).await;
        env.wait_applied("weekly").await;
        env.clock.set(utc(2026, 3, 29, 2, 0, 10));
        env.settle_devices(&spec, REBOOT).await;
        first.pass().await.unwrap();
        faulty.crashed.notified().await;
        // The device accepted and went down; the scheduler never saw the answer.
        env.wait_reboots(1).await;
        let journal = first.journal().entries(None).unwrap();
        assert_eq!(journal[0].state, EntryState::Invoking);
    }
    let rebooted = env.reboots()[0].device.clone();
    let counting = Faulty::new(env.client.clone());
    let mut second = env.scheduler(counting.clone()).await;
    drive(
        &env,
        &mut second,
        &spec,
        utc(2026, 3, 29, 4, 0, 0),
        STEP,
        REBOOT,
    )
    .await;
    let records = env.reboots();
    assert_eq!(records.len(), 3, "{records:#?}");
    env.check_invariants("weekly", TimeDelta::zero());
    assert!(
        !counting.calls().contains(&rebooted),
        "the restarted scheduler resolved {rebooted} from its twin instead of invoking it: {:?}",
        counting.calls()
    );
    let entry = second
        .journal()
        .get("weekly", &rebooted, utc(2026, 3, 29, 2, 0, 0))
        .unwrap()
        .unwrap();
    assert_eq!(entry.state, EntryState::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_are_retried_while_their_window_lasts() {
    let (mut env, spec) = window_open_with_three_devices(10).await;
    let mut scheduler = env.scheduler(env.client.clone()).await;
    env.wait_applied("weekly").await;
    env.clock.set(utc(2026, 3, 29, 2, 0, 10));
    env.settle_devices(&spec, REBOOT).await;
    // Every device goes dark with its window reported open.
    let sim = env.sim.take().unwrap();
    let ids: Vec<String> = sim.devices().iter().map(|d| d.id.clone()).collect();
    sim.shutdown().await;
    env.wait_for("every device disconnected", |views| {
        views.iter().all(|v| v.connected == Some(false))
    })
    .await;
    scheduler.pass().await.unwrap();
    scheduler.settle().await.unwrap();
    assert_eq!(scheduler.stats().offline, 3, "{:?}", scheduler.stats());
    assert_eq!(scheduler.stats().failed, 0, "offline is not a failure");
    // Back 20 minutes later, still inside the window: retried and rebooted.
    env.clock.set(utc(2026, 3, 29, 2, 20, 0));
    env.simulate(3, &[UTC], REBOOT, TimeDelta::zero()).await;
    drive(
        &env,
        &mut scheduler,
        &spec,
        utc(2026, 3, 29, 4, 0, 0),
        STEP,
        REBOOT,
    )
    .await;
    let records = env.reboots();
    let mut rebooted: Vec<String> = records.iter().map(|r| r.device.clone()).collect();
    rebooted.sort();
    assert_eq!(rebooted, ids);
    env.check_invariants("weekly", TimeDelta::zero());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_hub_slows_the_run_down_but_it_completes() {
    let (env, spec) = Env::weekly(
        Fleet {
            devices: 4,
            reboot: REBOOT,
            ..Fleet::default()
        },
        |mut config| {
            config.throttle = ThrottleConfig {
                rates: [
                    // Four reboots at once against one a second: three answered 429.
                    (Operation::Methods, Rate::per_second(1.0)),
                    // Enough for the simulator's registration (which does not retry 429s).
                    (Operation::TwinUpdates, Rate::per_second(5.0)),
                    (Operation::Queries, Rate::per_second(20.0)),
                ]
                .into_iter()
                .collect(),
            };
            config
        },
    )
    .await;
    let client = env.patient_client();
    let mut scheduler = env.scheduler(client.clone()).await;
    env.wait_applied("weekly").await;
    env.clock.set(utc(2026, 3, 29, 2, 0, 10));
    drive(
        &env,
        &mut scheduler,
        &spec,
        utc(2026, 3, 29, 4, 0, 0),
        STEP,
        REBOOT,
    )
    .await;
    assert_eq!(env.reboots().len(), 4);
    let throttled = client
        .stats()
        .throttled
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(throttled > 0, "the hub never answered 429");
    assert_eq!(scheduler.stats().failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_quota_in_the_client_keeps_the_run_under_the_hubs_throttle() {
    use casement_client::{ClientConfig, Quota, RetryPolicy};
    let (env, spec) = Env::weekly(
        Fleet {
            devices: 4,
            reboot: REBOOT,
            ..Fleet::default()
        },
        |mut config| {
            config.throttle = ThrottleConfig {
                rates: [(Operation::Methods, Rate::per_second(1.0))]
                    .into_iter()
                    .collect(),
            };
            config
        },
    )
    .await;
    // No retries: one 429 would be a failed invocation. A margin under the hub's rate.
    let client = Env::client_for(
        &env.hub,
        &env.clock,
        ClientConfig {
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            quota: Quota::unlimited().with(
                casement_client::Operation::Methods,
                casement_client::Rate::per_second(0.8),
            ),
            ..ClientConfig::default()
        },
    );
    let mut scheduler = env.scheduler(client.clone()).await;
    env.wait_applied("weekly").await;
    env.clock.set(utc(2026, 3, 29, 2, 0, 10));
    drive(
        &env,
        &mut scheduler,
        &spec,
        utc(2026, 3, 29, 4, 0, 0),
        STEP,
        REBOOT,
    )
    .await;
    assert_eq!(env.reboots().len(), 4);
    assert_eq!(
        client
            .stats()
            .throttled
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        (scheduler.stats().accepted, scheduler.stats().errors),
        (4, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_policy_files_are_re_read_and_re_applied_and_invalid_edits_keep_the_old_set() {
    let mut env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    env.write_policy("weekly.toml", &PolicyFile::default());
    env.simulate(2, &[UTC], REBOOT, TimeDelta::zero()).await;
    let mut scheduler = env.scheduler(env.client.clone()).await;
    env.wait_applied("weekly").await;
    let first = env
        .view("sim-0000")
        .await
        .desired_policy()
        .unwrap()
        .1
        .to_owned();

    env.write_policy(
        "weekly.toml",
        &PolicyFile {
            duration: "3h",
            ..PolicyFile::default()
        },
    );
    scheduler.pass().await.unwrap();
    let second = env
        .view("sim-0000")
        .await
        .desired_policy()
        .unwrap()
        .1
        .to_owned();
    assert_ne!(first, second, "the edit was applied");
    assert_eq!(scheduler.rollout("weekly").unwrap().revision(), second);
    env.wait_applied("weekly").await;

    std::fs::write(env.policies.join("weekly.toml"), "[policy]\nname = 5\n").unwrap();
    scheduler.pass().await.unwrap();
    assert_eq!(scheduler.rollout("weekly").unwrap().revision(), second);
    assert_eq!(
        env.view("sim-0000").await.desired_policy().unwrap().1,
        second,
        "nothing half-applied"
    );
    assert_eq!(scheduler.stats().applies, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_reloads_on_request_and_stops_gracefully_serving_metrics() {
    let env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    env.write_policy("weekly.toml", &PolicyFile::default());
    let metrics = casement_scheduler::metrics::Metrics::new();
    let scheduler = casement_scheduler::run::Scheduler::start(
        env.client.clone(),
        Arc::new(env.clock.manual()),
        env.run_config(),
        metrics.clone(),
    )
    .await
    .unwrap();
    let (signals_tx, signals) = Signals::manual();
    let task = tokio::spawn(casement_scheduler::run::run_with_metrics(
        scheduler,
        signals,
        metrics.clone(),
        Some("127.0.0.1:0".parse().unwrap()),
    ));
    env.eventually("a few passes", || async {
        metrics
            .render()
            .contains("casement_tick_duration_seconds_count")
            && {
                let text = metrics.render();
                text.lines()
                    .find(|l| l.starts_with("casement_tick_duration_seconds_count"))
                    .and_then(|l| l.split(' ').nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n >= 3)
            }
    })
    .await;
    signals_tx.reload();
    signals_tx.stop();
    let stats = tokio::time::timeout(PATIENCE, task)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    assert!(stats.passes >= 3);
    assert_eq!(stats.invocations, 0);
}
