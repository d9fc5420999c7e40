//! Benchmark (not a test): a reboot wave through `casement run` against a hub throttled like a
//! tier (issue 10).
//!
//! ```sh
//! cargo run --release -p casement-scheduler --example scale_bench -- --devices 1000 --concurrent 200 --reboot-ms 2000 --tier S1 --units 1 --mode shape
//! ```
//!
//! As `wave_bench`, but the hub throttles the scheduler's calls like `--tier` × `--units`
//! (`--mode shape` queues over-quota calls as Azure does, `reject` answers 429), the scheduler
//! keeps to the same quotas client-side (as `casement run --tier`), and the hub's queries may
//! lag (`--query-lag-ms`, which the scheduler is told, as `casement run --query-lag`).
//! Prints the wall time, the quota-bound ideal `max(N / method quota, ceil(N / C) × R)`, their
//! ratio, and the candidate query pages per pass (mean and max) with the hub's total. The
//! set-up (registering, applying, connecting the agents: unthrottled, so it does not take
//! minutes of registry quota) is not measured; the wave is bounded to 20 minutes.
//!
//! `--agents-process` runs the simulated agents in a child process (this benchmark started
//! again with `--agents-child`), so the hub's and the agents' ends of the connections count
//! against two processes' open-file limits: 10,000 devices do not fit in one process under a
//! limit of 20,000.

use std::sync::Arc;
use std::time::Duration;

use casement_client::{ClientConfig, HubTarget, Operation as ClientOp, Quota, ServiceClient};
use casement_hub::{Hub, HubConfig, Operation as HubOp, ThrottleConfig, ThrottleMode};
use casement_iothub::quota::Tier;
use casement_scheduler::run::max_calling_for;

#[path = "support/wave.rs"]
mod wave;

use wave::{Shifted, Wave, WaveSpec, flag, text};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wave::init();
    if wave::agents_child().await? {
        return Ok(());
    }
    let spec = WaveSpec::from_flags(1000);
    let units = u32::try_from(flag("--units", 1)).unwrap_or(1);
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

    let clock = Shifted::in_window();
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

    let wave = Wave::start(&hub, &client, scheduler_client, clock, spec, |run| {
        // As `casement run --tier T --query-lag L` sets them.
        run.query_lag = query_lag;
        run.max_calling = max_calling_for(method_rate.is_finite().then_some(method_rate));
    })
    .await?;
    let pages_before = hub.stats().query_pages;
    let throttle_before = hub.throttle_counts();
    let outcome = wave.run_until_done().await?;

    let waves = spec.devices.div_ceil(spec.concurrent);
    let by_waves = spec.reboot.as_secs_f64() * waves as f64;
    let by_quota = spec.devices as f64 / method_rate;
    let ideal = by_waves.max(by_quota);
    println!(
        "scale: {} devices, max_concurrent {}, reboot {:.1} s, tick {} ms, {tier:?} x {units} ({mode:?}), query lag {} ms",
        spec.devices,
        spec.concurrent,
        spec.reboot.as_secs_f64(),
        spec.tick.as_millis(),
        query_lag.as_millis()
    );
    println!(
        "wall time {:.1} s, ideal max(N / {method_rate}/s = {by_quota:.1} s, ceil(N/C) x R = {by_waves:.1} s) = {ideal:.1} s, ratio {:.2}",
        outcome.wall.as_secs_f64(),
        outcome.wall.as_secs_f64() / ideal
    );
    println!(
        "hub query pages in the wave: {}",
        hub.stats().query_pages - pages_before
    );
    let throttle = hub.throttle_counts();
    println!(
        "hub throttle in the wave: {} calls queued (shaped), {} refused (429)",
        throttle.queued - throttle_before.queued,
        throttle.refused - throttle_before.refused
    );
    outcome.print();
    hub.shutdown().await;
    Ok(())
}
