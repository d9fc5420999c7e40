//! Benchmark (not a test): a reboot wave through `casement run`.
//!
//! ```sh
//! cargo run --release -p casement-scheduler --example wave_bench -- --devices 2000 --concurrent 200 --reboot-ms 2000 --tick-ms 250
//! ```
//!
//! Starts `casement hub` in this process (in memory, plain MQTT and HTTP on 127.0.0.1:0) and N
//! simulated agents (`casement-agent simulate`'s engine: one MQTT connection each, a reboot is a
//! disconnect for `--reboot-ms` and a fresh boot). Every clock — hub, agents, scheduler — reads
//! real time shifted to Sunday 02:00:30 UTC, inside the policy's window. The set-up (devices
//! registered, the policy applied, the agents connected and reporting themselves due) is not
//! measured; then the scheduler loop runs with `max_concurrent = C` until it has seen every
//! reboot completed in the twins. Prints that wall time against the ideal
//! `ceil(N / C) × reboot time`, and checks the wave against the ground truth (one reboot per
//! device, never more than C down at once).

use std::sync::Arc;

use casement_client::{ClientConfig, HubTarget, ServiceClient};
use casement_hub::{Hub, HubConfig};

#[path = "support/wave.rs"]
mod wave;

use wave::{Shifted, Wave, WaveSpec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    wave::init();
    if wave::agents_child().await? {
        return Ok(());
    }
    let spec = WaveSpec::from_flags(250);
    let clock = Shifted::in_window();
    let mut config = HubConfig::for_tests();
    config.mqtts = None;
    config.https = None;
    config.clock = Arc::new(clock);
    config.limits.max_http_connections = 4096;
    let hub = Hub::start(config).await?;
    let cs = hub.service_connection_string();
    let url = hub.http_url().unwrap_or_default();
    let client = ServiceClient::new(
        HubTarget::new(cs.parse()?).with_endpoint(&url)?,
        ClientConfig::default(),
        Arc::new(clock),
    )?;

    let read_concurrency = wave::flag("--read-concurrency", 0) as usize;
    let wave = Wave::start(&hub, &client, client.clone(), clock, spec, |run| {
        if read_concurrency > 0 {
            run.read_concurrency = read_concurrency;
        }
    })
    .await?;
    let outcome = wave.run_until_done().await?;

    let waves = spec.devices.div_ceil(spec.concurrent);
    let ideal = spec.reboot.as_secs_f64() * waves as f64;
    println!(
        "wave: {} devices, max_concurrent {}, reboot {:.1} s, tick {} ms",
        spec.devices,
        spec.concurrent,
        spec.reboot.as_secs_f64(),
        spec.tick.as_millis()
    );
    println!(
        "wall time {:.1} s, ideal ceil(N/C) x reboot = {waves} x {:.1} s = {ideal:.1} s, ratio {:.2}",
        outcome.wall.as_secs_f64(),
        spec.reboot.as_secs_f64(),
        outcome.wall.as_secs_f64() / ideal
    );
    outcome.print();
    hub.shutdown().await;
    Ok(())
}
