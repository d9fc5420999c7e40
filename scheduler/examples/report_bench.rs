//! Benchmark (not a test): what `casement report` costs, in query pages and time.
//!
//! ```sh
//! cargo run --release -p casement-scheduler --example report_bench -- 10000 100000
//! cargo run --release -p casement-scheduler --example report_bench -- --troubled 10000 100000
//! ```
//!
//! For each N: starts `casement hub` in this process (in memory, plain HTTP on 127.0.0.1:0),
//! writes N twins straight into it (no agents; a fleet of `support/report_fleet.rs`: by default
//! the healthy one, 91 % compliant, 4 % rejected, 4 % never applied, 1 % missed the latest
//! window; with `--troubled` one where most devices missed, failed (the journal's failed calls
//! included), were reached by the policy recently or are compliant by their reboot's time
//! alone), then times over the REST API, counting the client's requests (one per query page of
//! up to 100 items):
//! - the summary (`casement report`): grouped queries ([`report::grouped::compute_summary`]);
//! - `--devices` (`casement report --devices`): the carriers, projected, one page per 100;
//! - a raw `SELECT *` of the same twins, for comparison.

#[path = "support/report_fleet.rs"]
mod report_fleet;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use casement_client::{ClientConfig, HubApi, HubTarget, ServiceClient};
use casement_hub::{Hub, HubConfig};
use casement_policy::ManualClock;
use casement_scheduler::report;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let troubled = std::env::args().any(|a| a == "--troubled");
    let shape = if troubled {
        report_fleet::Shape::Troubled
    } else {
        report_fleet::Shape::Healthy { missed: 1 }
    };
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    println!("| twins | what | queries | pages | time |");
    println!("|---:|---|---:|---:|---:|");
    for n in sizes {
        bench(n, shape).await?;
    }
    Ok(())
}

async fn bench(n: usize, shape: report_fleet::Shape) -> anyhow::Result<()> {
    let clock = Arc::new(ManualClock::new(report_fleet::seeded_at()));
    let mut config = HubConfig::for_tests();
    config.mqtts = None;
    config.https = None;
    config.mqtt = None;
    config.clock = clock.clone();
    let hub = Hub::start(config).await?;
    let t = Instant::now();
    let journal = report_fleet::seed(&hub, &|t| clock.set(t), n, shape).await;
    eprintln!(
        "seeded {n} twins in {:.1} s (not measured)",
        t.elapsed().as_secs_f64()
    );
    clock.set(report_fleet::now());
    let target = HubTarget::new(hub.service_connection_string().parse()?)
        .with_endpoint(&hub.http_url().unwrap_or_default())?;
    let client = ServiceClient::new(target, ClientConfig::default(), clock.clone())?;
    let now = report_fleet::now();
    let lookback = report::DEFAULT_LOOKBACK;
    let requests = || client.stats().requests.load(Ordering::Relaxed);

    let (before, t) = (requests(), Instant::now());
    let (summary, cost) =
        report::grouped::compute_summary(&client, &journal, now, lookback, None).await?;
    row(n, "summary", cost.queries, requests() - before, t);
    eprintln!("  {cost:?}");

    let (before, t) = (requests(), Instant::now());
    let devices = report::compute(&client, &journal, now, lookback, None).await?;
    row(n, "--devices (projected)", 1, requests() - before, t);
    assert_eq!(summary.total, devices.total, "the two paths agree");
    eprintln!("  {:?}", summary.total);

    let (before, t) = (requests(), Instant::now());
    let rows = client.query(&report::grouped::devices_query(None)).await?;
    row(
        n,
        "(--devices' projected query alone)",
        1,
        requests() - before,
        t,
    );
    assert_eq!(rows.len(), n);

    let (before, t) = (requests(), Instant::now());
    let all = client.query("SELECT * FROM devices").await?;
    row(n, "raw SELECT *", 1, requests() - before, t);
    assert_eq!(all.len(), n);
    hub.shutdown().await;
    Ok(())
}

fn row(n: usize, what: &str, queries: usize, pages: u64, t: Instant) {
    println!(
        "| {n} | {what} | {queries} | {pages} | {:.2} s |",
        t.elapsed().as_secs_f64()
    );
}
