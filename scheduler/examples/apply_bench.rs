//! Benchmark (not a test): `casement apply` throughput on the local hub.
//!
//! ```sh
//! cargo run --release -p casement-scheduler --example apply_bench -- --devices 10000 --concurrency 32
//! ```
//!
//! Starts `casement hub` in this process (in memory, plain HTTP on 127.0.0.1:0), registers N
//! devices tagged `role=gateway`, then runs apply's two steps over the REST API exactly as
//! `casement apply` does — the plan (the target query and the carriers query, paged 100 twins at
//! a time) and the writes (one `PATCH /twins/{id}` with `If-Match` per device) — and prints twins
//! per second. A second apply of the same policy (nothing to write) is timed too.
//!
//! `--via twins|configurations` and `--tier S1` compare the two ways of writing on a hub
//! throttled like one S1 unit (shaping, as Azure does; the client keeps the same quotas):
//!
//! ```sh
//! cargo run --release -p casement-scheduler --example apply_bench -- --devices 10000 --tier S1 --via twins
//! cargo run --release -p casement-scheduler --example apply_bench -- --devices 10000 --tier S1 --via configurations
//! ```
//!
//! It prints the REST calls the client made and the wall time until every twin carries the
//! revision in its desired properties (no agents run, so "applied" means desired written). Via
//! configurations that is apply plus one hub evaluation, run at once
//! (`RunningHub::evaluate_configurations`): Azure's evaluation delay (about five minutes) is
//! not in the figure.

use std::sync::Arc;
use std::time::Instant;

use casement_client::{ClientConfig, HubTarget, Quota, RetryPolicy, ServiceClient, Tier};
use casement_hub::{Hub, HubConfig, ThrottleConfig};
use casement_scheduler::apply::{self, ApplyOptions, ApplyVia};
use serde_json::json;

const POLICY: &str = r#"
[policy]
name = "store-gateways-weekly"
priority = 10
target = "tags.role = 'gateway'"

[window]
schedule = "0 2 * * SUN"
duration = "2h"
timezone = "device"
blackout = ["2026-12-24", "2026-12-31"]

[rollout]
max_concurrent = 50
max_per_minute = 200
max_failures = "5%"
"#;

fn text_flag(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn flag(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();
    let devices = flag("--devices", 10_000);
    let concurrency = flag("--concurrency", 32);
    let tier: Option<Tier> = text_flag("--tier")
        .map(|t| t.parse())
        .transpose()
        .map_err(|_| anyhow::anyhow!("--tier: F1, S1, S2 or S3"))?;
    let via = match text_flag("--via").as_deref() {
        None => None,
        Some("twins") => Some(ApplyVia::Twins),
        Some("configurations") => Some(ApplyVia::Configurations),
        Some(other) => anyhow::bail!("--via {other}: twins or configurations"),
    };
    let mut config = HubConfig::for_tests();
    config.mqtts = None;
    config.https = None;
    config.mqtt = None;
    // Registration is setup, in process: not HTTP, not throttled, not measured.
    if let Some(tier) = tier {
        config.throttle = ThrottleConfig::tier(tier, 1);
    }
    let hub = Hub::start(config).await?;
    let started = Instant::now();
    for n in 0..devices {
        hub.create_device(&format!("gw-{n:05}"), json!({"role": "gateway"}))
            .await?;
    }
    println!(
        "registered {devices} devices in {:.1} s (in-process, not measured below)",
        started.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("gateways.toml"), POLICY)?;
    let set = casement_policy::load([dir.path()]).map_err(|d| anyhow::anyhow!("{d:?}"))?;
    let target = HubTarget::new(hub.service_connection_string().parse()?)
        .with_endpoint(&hub.http_url().unwrap_or_default())?;
    let client_config = match tier {
        Some(tier) => ClientConfig {
            quota: Quota::tier(tier, 1),
            retry: RetryPolicy {
                max_attempts: 30,
                ..RetryPolicy::default()
            },
            ..ClientConfig::default()
        },
        None => ClientConfig::default(),
    };
    let client = ServiceClient::new(
        target,
        client_config,
        Arc::new(casement_policy::SystemClock),
    )?;
    if let Some(via) = via {
        let options = ApplyOptions {
            concurrency,
            via,
            ..ApplyOptions::default()
        };
        let t0 = Instant::now();
        let plan = apply::plan(&client, &set, &options).await?;
        let summary = apply::execute(&client, &set, &plan, &options, &()).await;
        let applied = t0.elapsed();
        let calls = client
            .stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed);
        let written = if via == ApplyVia::Configurations {
            let evaluation = hub.evaluate_configurations().await?;
            evaluation.desired_writes
        } else {
            summary.changed
        };
        let total = t0.elapsed();
        let revision = set
            .iter()
            .next()
            .map(|p| p.revision().to_string())
            .unwrap_or_default();
        // Check that every twin carries the revision (after the measurement).
        let check = client
            .query_all(&format!(
                "SELECT COUNT() AS n FROM devices WHERE properties.desired.maintenance.revision = '{revision}'"
            ))
            .await?
            .first()
            .and_then(|v| v.get("n"))
            .cloned()
            .unwrap_or_default();
        println!(
            "--via {} on {}: {} targeted, {written} twins written, {} failed",
            via.as_str(),
            tier.map_or("no throttle".to_owned(), |t| format!("{t} (1 unit)")),
            summary.targeted,
            summary.failed.len()
        );
        println!(
            "  REST calls by the client: {calls} (429 retries: {})",
            client
                .stats()
                .retries
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        println!(
            "  apply: {:.1} s; until every twin carries the revision: {:.1} s",
            applied.as_secs_f64(),
            total.as_secs_f64()
        );
        println!("  twins carrying the revision: {check}");
        hub.shutdown().await;
        return Ok(());
    }
    let options = ApplyOptions {
        concurrency,
        ..ApplyOptions::default()
    };

    for round in ["first apply", "second apply (unchanged)"] {
        let t0 = Instant::now();
        let plan = apply::build_plan(&client, &set).await?;
        let planned = t0.elapsed();
        let t1 = Instant::now();
        let summary = apply::execute(&client, &set, &plan, &options, &()).await;
        let written = t1.elapsed();
        let total = t0.elapsed();
        println!(
            "{round}: {} targeted, {} written, {} unchanged, {} failed",
            summary.targeted,
            summary.changed,
            summary.unchanged,
            summary.failed.len()
        );
        println!(
            "  plan (queries, {} pages): {:.2} s = {:.0} twins/s read",
            2 * devices.div_ceil(100),
            planned.as_secs_f64(),
            devices as f64 / planned.as_secs_f64()
        );
        if summary.changed > 0 {
            println!(
                "  writes at concurrency {concurrency}: {:.2} s = {:.0} twins/s written",
                written.as_secs_f64(),
                summary.changed as f64 / written.as_secs_f64()
            );
        }
        println!(
            "  end to end: {:.2} s = {:.0} twins/s",
            total.as_secs_f64(),
            summary.targeted as f64 / total.as_secs_f64()
        );
    }
    println!(
        "HTTP requests: {}",
        client
            .stats()
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    hub.shutdown().await;
    Ok(())
}
