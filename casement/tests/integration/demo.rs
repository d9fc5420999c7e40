//! `casement demo` at small scale: the real embedded hub, 20 simulated devices over MQTT, the
//! real scheduler, in real time — with policies whose windows come every 20 seconds (6-field
//! cron), so one window is enough and the test takes well under a minute.

use std::path::Path;
use std::time::Duration;

use casement::demo::{self, DemoConfig, DemoError, Ending, ProgressMode};
use casement_scheduler::report::DeviceState;

/// Gateways in each device's own zone, every 20 s; POS terminals in New York time, 10 s later.
fn write_policies(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let policy = |name: &str, target: &str, schedule: &str, zone: &str, priority: i32| {
        format!(
            r#"[policy]
name = "{name}"
priority = {priority}
target = "{target}"

[window]
schedule = "{schedule}"
duration = "15s"
timezone = "{zone}"

[reboot]
expected_duration = "3s"
method_timeout = "5s"

[rollout]
max_concurrent = 4
max_per_minute = 600
max_failures = "0"
"#
        )
    };
    std::fs::write(
        dir.join("gateways.toml"),
        policy(
            "fast-gateways",
            "tags.role = 'gateway' AND tags.env = 'prod'",
            "*/20 * * * * *",
            "device",
            10,
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("pos.toml"),
        policy(
            "fast-pos",
            "tags.role = 'pos'",
            "10/20 * * * * *",
            "America/New_York",
            20,
        ),
    )
    .unwrap();
}

fn config(policies: &Path) -> DemoConfig {
    DemoConfig {
        devices: 20,
        duration: Duration::from_secs(50),
        reboot_time: Duration::from_millis(500),
        max_skew: Duration::from_millis(200),
        policies: Some(policies.to_owned()),
        tick: Duration::from_millis(250),
        clock_skew: Duration::from_secs(1),
        refresh: Duration::from_millis(250),
        progress: ProgressMode::Lines,
        ..DemoConfig::default()
    }
}

/// How long the small demo may take in all before the test fails instead of waiting: its own
/// `duration` (50 s) plus the bounded stops. Reached only when something is stuck.
const WATCHDOG: Duration = Duration::from_secs(150);

#[test]
fn a_small_fleet_ends_compliant_with_every_device_rebooted_in_a_window() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    write_policies(&policies);
    let cfg = config(&policies);
    // The demo runs on its own runtime and thread, so that a stuck component fails this test
    // at the watchdog rather than hanging the test run.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut out = Vec::new();
        let result = runtime.block_on(demo::run(&cfg, &mut out, std::future::pending()));
        let _ = tx.send((result, out));
    });
    let (result, out) = rx
        .recv_timeout(WATCHDOG)
        .expect("the demo finishes within its duration and bounded stops");
    let outcome = result.expect("the demo runs");
    let text = String::from_utf8_lossy(&out).into_owned();

    assert_eq!(outcome.ending, Ending::Compliant, "{text}");
    assert!(outcome.compliant(), "{text}");
    let total = &outcome.report.total;
    assert_eq!((total.targeted, total.compliant), (20, 20), "{text}");
    assert_eq!(outcome.report.devices.len(), 20);
    for device in &outcome.report.devices {
        assert_eq!(device.state, DeviceState::Compliant, "{device:?}\n{text}");
    }
    let policies: Vec<&str> = outcome
        .report
        .policies
        .iter()
        .map(|p| p.policy.as_str())
        .collect();
    assert_eq!(policies, ["fast-gateways", "fast-pos"]);

    // The devices' own log agrees: every device rebooted, inside a window, never twice in one,
    // never more at once than max_concurrent.
    assert!(outcome.truth.holds(), "{:?}", outcome.truth);
    assert_eq!(outcome.truth.devices, 20);
    for (policy, (peak, limit)) in &outcome.truth.peak {
        assert!(peak <= limit, "{policy}: {peak} > {limit}");
    }
    let stats = outcome.stats.expect("the scheduler was stopped");
    assert!(stats.completed >= 20, "{stats:?}");

    // The story: progress lines, window openings, the report and the verdict.
    assert!(text.contains("fast-gateways: window open"), "{text}");
    assert!(text.contains("completed 0/"), "{text}");
    assert!(text.contains("COMPLIANT%"), "{text}");
    assert!(
        text.contains(
            "The fleet is compliant: all 20 devices rebooted inside their maintenance windows"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn invalid_policies_are_reported_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("bad.toml"),
        "[policy]\nname = \"bad\"\ntarget = \"tags.role = 'x'\"\n[window]\nschedule = \"*/2 * * * *\"\nduration = \"90s\"\ntimezone = \"Europe/Amsterdan\"\n",
    )
    .unwrap();
    let mut out = Vec::new();
    match demo::run(&config(&policies), &mut out, std::future::pending()).await {
        Err(DemoError::Policies(diagnostics)) => {
            assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
            let text = diagnostics[0].to_string();
            assert!(text.contains("bad.toml:7:"), "{text}");
            assert!(text.contains("Europe/Amsterdam"), "{text}");
        }
        other => panic!("expected policy diagnostics, got {other:?}"),
    }
    assert!(out.is_empty(), "nothing was started or told");
}

#[tokio::test]
async fn a_work_directory_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("something"), "x").unwrap();
    let cfg = DemoConfig {
        work_dir: Some(dir.path().to_owned()),
        ..DemoConfig::default()
    };
    let mut out = Vec::new();
    let result = demo::run(&cfg, &mut out, std::future::pending()).await;
    assert!(matches!(result, Err(DemoError::NotEmpty(_))), "{result:?}");
}
