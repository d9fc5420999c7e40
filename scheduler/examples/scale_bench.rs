//! Benchmark (not a test): a reboot wave through `casement run` against a hub throttled like a
//! tier (issue 10).
//!
//! ```sh
//! cargo run --release -p casement-scheduler --example scale_bench -- --devices 1000 --concurrent 200 --reboot-ms 2000 --tier S1 --units 1 --mode shape
//! ```
//!
//! As `wave_bench`, but the hub throttles the scheduler's calls like `--tier` × `--units`
//! (`--mode shape` queues over-quota calls as Azure does, `reject` answers 429), the scheduler
//! keeps to the same quotas client-side, and the hub's queries may lag (`--query-lag-ms`).
//! Prints the wall time, the quota-bound ideal `max(N / method quota, ceil(N / C) × R)`, their
//! ratio, and the candidate query pages per pass (mean and max) with the hub's total. Bounded:
//! gives up after 15 minutes. The devices are registered and connect before the throttle is
//! the scheduler's problem: the agents' own traffic is not what this measures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use casement_agent::clock::AgentClock;
use casement_agent::{Simulation, SimulationConfig, simulate};
use casement_client::{ClientConfig, HubTarget, Operation as ClientOp, Quota, ServiceClient};
use casement_hub::{Hub, HubConfig, Operation as HubOp, ThrottleConfig, ThrottleMode};
use casement_iothub::quota::Tier;
use casement_scheduler::metrics::Metrics;
use casement_scheduler::run::{RunConfig, Scheduler, Signals};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

/// Real time, shifted.
#[derive(Debug, Clone, Copy)]
struct Shifted(TimeDelta);

impl casement_policy::Clock for Shifted {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.0
    }
}

fn flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn count(client: &ServiceClient, condition: &str) -> anyhow::Result<u64> {
    let rows = client
        .query_all(&format!(
            "SELECT COUNT() AS n FROM devices WHERE {condition}"
        ))
        .await?;
    Ok(rows
        .first()
        .and_then(|r| r.get("n"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0))
}

async fn wait_count(
    client: &ServiceClient,
    what: &str,
    condition: &str,
    n: u64,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let got = count(client, condition).await?;
        if got >= n {
            println!("{what}: {n} after {:.1} s", start.elapsed().as_secs_f64());
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(600),
            "{what}: only {got} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .try_init();
    let devices = flag("--devices", 2000);
    let concurrent = flag("--concurrent", 200);
    let reboot = Duration::from_millis(flag("--reboot-ms", 2000));
    let tick = Duration::from_millis(flag("--tick-ms", 1000));
    let units = u32::try_from(flag("--units", 1)).unwrap_or(1);
    let text = |name: &str, default: &str| -> String {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    };
    let tier: Tier = text("--tier", "S1")
        .parse()
        .map_err(|e| anyhow::anyhow!("--tier: {e:?}"))?;
    let mode = match text("--mode", "shape").as_str() {
        "shape" => ThrottleMode::Shape,
        "reject" => ThrottleMode::Reject,
        other => anyhow::bail!("--mode {other}: shape or reject"),
    };
    let query_lag = Duration::from_millis(flag("--query-lag-ms", 0));
    let quota = Quota::tier(tier, units);
    let method_rate = quota
        .rate(ClientOp::Methods)
        .map_or(f64::INFINITY, |r| r.per_second);

    let opens = Utc.with_ymd_and_hms(2026, 11, 29, 2, 0, 0).unwrap();
    let clock = Shifted(opens + TimeDelta::seconds(30) - Utc::now());
    let mut config = HubConfig::for_tests();
    config.mqtts = None;
    config.https = None;
    config.clock = Arc::new(clock);
    config.limits.max_http_connections = 4096;
    // The tier's quotas on what the scheduler spends (queries, direct methods, twin reads);
    // registering and connecting the simulated fleet stays unthrottled, so the setup does not
    // take minutes of registry quota before the measured wave.
    let mut throttle = ThrottleConfig::tier(tier, units);
    throttle
        .rates
        .retain(|op, _| matches!(op, HubOp::Queries | HubOp::Methods | HubOp::TwinReads));
    config.throttle = throttle;
    config.throttle_mode = mode;
    config.query_lag = query_lag;
    let hub = Hub::start(config).await?;
    let cs = hub.service_connection_string();
    let url = hub.http_url().unwrap_or_default();
    // The benchmark's own client (counting, waiting) and the scheduler's, which keeps to the
    // tier's quotas as `casement run --tier` does.
    let client = ServiceClient::new(
        HubTarget::new(cs.parse()?).with_endpoint(&url)?,
        ClientConfig::default(),
        Arc::new(clock),
    )?;
    let scheduler_client = ServiceClient::new(
        HubTarget::new(cs.parse()?).with_endpoint(&url)?,
        ClientConfig {
            quota: quota.clone(),
            ..ClientConfig::default()
        },
        Arc::new(clock),
    )?;

    let dir = tempfile::tempdir()?;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies)?;
    std::fs::write(
        policies.join("wave.toml"),
        format!(
            r#"[policy]
name = "wave"
target = "tags.role = 'gateway'"
[window]
schedule = "0 2 * * SUN"
duration = "2h"
timezone = "UTC"
[reboot]
expected_duration = "5m"
method_timeout = "30s"
[rollout]
max_concurrent = {concurrent}
max_per_minute = 1000000
max_failures = "5%"
"#
        ),
    )?;
    let mut run = RunConfig::new(vec![policies], dir.path().join("state"));
    run.tick = tick;
    let metrics = Metrics::new();
    // The devices are registered, and the policy applied (in `Scheduler::start`), before the
    // agents connect: the measured wave is the reboots alone.
    for n in 0..devices {
        hub.create_device(
            &format!("sim-{n:04}"),
            serde_json::json!({"role": "gateway"}),
        )
        .await?;
    }
    let scheduler =
        Scheduler::start(scheduler_client, Arc::new(clock), run, metrics.clone()).await?;
    let fleet = simulate::numbered(
        simulate::DEFAULT_PREFIX,
        devices as usize,
        &[chrono_tz::UTC],
    )
    .into_iter()
    .map(|d| d.with_tag("role", "gateway"))
    .collect();
    let mut sim = SimulationConfig::new(cs.parse()?, fleet, dir.path().join("sim"));
    sim.hub_url = Some(url.clone());
    sim.mqtt_endpoint = Some(
        format!(
            "mqtt://{}",
            hub.mqtt_addr().unwrap_or(([127, 0, 0, 1], 0).into())
        )
        .parse()?,
    );
    sim.reboot_time = reboot;
    sim.clock = AgentClock::from_clock(Arc::new(clock));
    let started = Instant::now();
    let simulation = Simulation::start(sim).await?;
    println!(
        "registered {devices} devices in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    wait_count(
        &client,
        "connected",
        "connectionState = 'Connected'",
        devices,
    )
    .await?;

    wait_count(
        &client,
        "applied with the window open",
        "properties.reported.maintenance.policy = 'wave' AND properties.reported.maintenance.window.due = true",
        devices,
    )
    .await?;

    let (signals_tx, signals) = Signals::manual();
    let pages_before = hub.stats().query_pages;
    let t0 = Instant::now();
    let task = tokio::spawn(scheduler.run(signals));
    loop {
        if metrics.reboots("wave", "completed") >= devices {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(900),
            "the wave did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = t0.elapsed();
    signals_tx.stop();
    let stats = task.await??;

    let records = simulation.ground_truth().records();
    let mut seen = std::collections::BTreeSet::new();
    let duplicates = records
        .iter()
        .filter(|r| !seen.insert(r.device.clone()))
        .count();
    let down = TimeDelta::from_std(reboot)?;
    let max_down = records
        .iter()
        .map(|r| {
            records
                .iter()
                .filter(|o| o.at <= r.at && r.at < o.at + down)
                .count()
        })
        .max()
        .unwrap_or(0);
    let waves = devices.div_ceil(concurrent);
    let by_waves = reboot.as_secs_f64() * waves as f64;
    let by_quota = devices as f64 / method_rate;
    let ideal = by_waves.max(by_quota);
    let (pages_sum, passes, pages_max) = metrics.pages_per_pass();
    println!(
        "scale: {devices} devices, max_concurrent {concurrent}, reboot {:.1} s, tick {} ms, {tier:?} x {units} ({mode:?}), query lag {} ms",
        reboot.as_secs_f64(),
        tick.as_millis(),
        query_lag.as_millis()
    );
    println!(
        "wall time {:.1} s, ideal max(N / {method_rate}/s = {by_quota:.1} s, ceil(N/C) x R = {by_waves:.1} s) = {ideal:.1} s, ratio {:.2}",
        wall.as_secs_f64(),
        wall.as_secs_f64() / ideal
    );
    println!(
        "candidate query pages per pass: mean {:.2}, max {pages_max} ({passes} passes); hub query pages in the wave {} (the benchmark's own polling included)",
        pages_sum as f64 / passes.max(1) as f64,
        hub.stats().query_pages - pages_before
    );
    let throttle = hub.throttle_counts();
    println!(
        "hub throttle: {} calls queued (shaped), {} refused (429)",
        throttle.queued, throttle.refused
    );
    println!(
        "invocations {} (accepted {}, offline {}, refused {}, errors {}, throttled {}), completed {}, failed {}, passes {}",
        stats.invocations,
        stats.accepted,
        stats.offline,
        stats.refused,
        stats.errors,
        stats.throttled,
        stats.completed,
        stats.failed,
        stats.passes
    );
    println!(
        "ground truth: {} reboots, {duplicates} duplicates, at most {max_down} devices down at once",
        records.len()
    );
    simulation.shutdown().await;
    hub.shutdown().await;
    Ok(())
}
