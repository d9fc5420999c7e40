//! Issue 13.5: a `casement-agent simulate` killed and restarted mid-wave must not make a device
//! reboot twice in one window. Its boot ids are unique across runs (a restart is a new boot for
//! every device), so a device that was rebooting when the simulator died completes that reboot
//! on the next start instead of reporting "did not reboot (same boot id)" and being rebooted
//! again; the ground truth (one log across both runs) is checked against the invariants.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use casement_policy::RebootStatus;
use chrono::TimeDelta;
use chrono_tz::UTC;

const REBOOT: Duration = Duration::from_secs(90);
const STEP: TimeDelta = TimeDelta::seconds(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulator_restarted_mid_wave_reboots_no_device_twice() {
    let mut env = Env::start(utc(2026, 3, 28, 12, 0, 0)).await;
    env.write_policy(
        "weekly.toml",
        &PolicyFile {
            max_concurrent: 2,
            ..PolicyFile::default()
        },
    );
    env.simulate(4, &[UTC], REBOOT, TimeDelta::zero()).await;
    let mut scheduler = env.scheduler(env.client.clone()).await;
    env.wait_applied("weekly").await;
    let spec = env.load_policies().get("weekly").unwrap().window().clone();

    // Into the Sunday 02:00 UTC window until the first devices are down.
    drive(
        &env,
        &mut scheduler,
        &spec,
        utc(2026, 3, 29, 2, 0, 30),
        STEP,
        REBOOT,
    )
    .await;
    let before = env.reboots();
    assert!(
        !before.is_empty() && before.len() < 4,
        "the wave is under way when the simulator dies: {before:#?}"
    );

    // kill: every agent stops at once, mid-reboot for some; then a new simulator process on
    // the same state directories and the same ground-truth log.
    env.sim.take().expect("running").shutdown().await;
    // The simulator stays dead for longer than a reboot (the devices it was rebooting stay dark).
    env.clock
        .set(env.clock.now() + TimeDelta::from_std(REBOOT).unwrap() + STEP);
    env.simulate(4, &[UTC], REBOOT, TimeDelta::zero()).await;
    assert_eq!(
        env.reboots(),
        before,
        "the restarted simulation keeps the log"
    );

    drive(
        &env,
        &mut scheduler,
        &spec,
        utc(2026, 3, 29, 5, 0, 0),
        STEP,
        REBOOT,
    )
    .await;

    let records = env.reboots();
    env.check_invariants("weekly", TimeDelta::zero());
    let mut per_device: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        assert_eq!(r.occurrence, Some(utc(2026, 3, 29, 2, 0, 0)), "{r:?}");
        *per_device.entry(r.device.clone()).or_default() += 1;
    }
    assert_eq!(
        per_device.values().copied().collect::<Vec<_>>(),
        vec![1, 1, 1, 1],
        "each device rebooted exactly once in the window: {records:#?}"
    );
    // Every device reports the reboot completed (none "did not reboot"), and the scheduler
    // counted no failure.
    for view in env.views().await {
        let reboot = view.reboot().expect("a reboot report");
        assert_eq!(reboot.status, RebootStatus::Completed, "{}", view.device_id);
    }
    assert_eq!(scheduler.stats().failed, 0, "{:?}", scheduler.stats());
}
