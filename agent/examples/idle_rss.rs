//! Benchmark: the idle agent's resident memory and the release binary's size.
//!
//! Starts the local hub in-process (on 127.0.0.1:0), registers a device, gives it a maintenance
//! policy, runs the real `casement-agent run` binary against it over MQTT with TLS (trusting the
//! hub's generated CA, as a device would with `--ca`), waits until the
//! agent has applied the policy and reported its window, lets it idle, then prints the
//! process's VmRSS/VmHWM (from /proc) and the size of the (stripped) release binary.
//!
//! ```sh
//! cargo build --release -p casement-agent
//! cargo run --release -p casement-agent --example idle_rss [-- <path/to/casement-agent> [idle-seconds]]
//! ```

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use casement_hub::{Hub, HubConfig};
use casement_iothub::connection_string::ServiceConnectionString;
use casement_iothub::rest::{self, TwinPatch};
use serde_json::{Value, json};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let binary = match args.next() {
        Some(path) => PathBuf::from(path),
        // target/release/examples/idle_rss → target/release/casement-agent
        None => std::env::current_exe()?
            .parent()
            .and_then(|examples| examples.parent())
            .map(|dir| dir.join("casement-agent"))
            .ok_or_else(|| anyhow::anyhow!("cannot locate casement-agent; pass its path"))?,
    };
    let idle = Duration::from_secs(args.next().map_or(Ok(10), |s| s.parse())?);
    anyhow::ensure!(
        binary.exists(),
        "{} not found: run `cargo build --release -p casement-agent` first",
        binary.display()
    );

    let hub = Hub::start(HubConfig::for_tests()).await?;
    let device: String = hub.create_device("bench-0001", Value::Null).await?;
    let service: ServiceConnectionString = hub.service_connection_string().parse()?;
    let base = hub
        .http_url()
        .ok_or_else(|| anyhow::anyhow!("no HTTP listener"))?;
    let ca = hub
        .ca_pem()
        .ok_or_else(|| anyhow::anyhow!("the hub generated no CA"))?
        .to_owned();
    let http = reqwest::Client::new();
    let auth = || -> anyhow::Result<String> {
        let expiry = u64::try_from(chrono::Utc::now().timestamp())? + 3600;
        Ok(service.sas_token(expiry)?)
    };
    let twin_url = format!(
        "{base}{}",
        rest::with_api_version(&rest::twin_path("bench-0001", None))
    );
    http.patch(&twin_url)
        .header("Authorization", auth()?)
        .header(rest::HEADER_IF_MATCH, "*")
        .json(&TwinPatch::desired(json!({"maintenance": {
            "policy": "bench-weekly", "revision": "be0c4a11",
            "window": {"schedule": "0 2 * * SUN", "durationSeconds": 7200, "timezone": "device"},
            "reboot": {"expectedDurationSeconds": 300}}})))
        .send()
        .await?
        .error_for_status()?;

    let state = tempfile::tempdir()?;
    let ca_file = state.path().join("hub-ca.pem");
    std::fs::write(&ca_file, ca)?;
    // The device connection string's HostName is localhost:<mqtts port>: the default endpoint.
    let mut child = tokio::process::Command::new(&binary)
        .args(["run", "--connection-string", &device])
        .arg("--ca")
        .arg(&ca_file)
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .args(["--timezone", "Europe/Amsterdam", "--reboot-command", "true"])
        .env("CASEMENT_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("the agent exited at once"))?;

    // Wait until the agent applied the policy and reported its window.
    let started = Instant::now();
    loop {
        let twin: Value = http
            .get(&twin_url)
            .header("Authorization", auth()?)
            .send()
            .await?
            .json()
            .await?;
        let reported = &twin["properties"]["reported"]["maintenance"];
        if reported["status"] == "applied" && reported["window"]["opensAt"].is_string() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the agent did not report within 30 s: {twin}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connected_after = started.elapsed();
    tokio::time::sleep(idle).await;

    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "?".to_owned())
    };
    let size = std::fs::metadata(&binary)?.len();
    println!("casement-agent idle benchmark");
    println!("  binary:             {}", binary.display());
    println!(
        "  binary size:        {} bytes ({:.2} MiB, release profile: strip = true)",
        size,
        size as f64 / (1024.0 * 1024.0)
    );
    println!("  transport:          MQTT over TLS (rustls, ring), hub CA via --ca");
    println!(
        "  applied + reported: {} ms after start",
        connected_after.as_millis()
    );
    println!("  idle for:           {} s", idle.as_secs());
    println!("  VmRSS:              {}", field("VmRSS:"));
    println!("    RssAnon (heap, stacks): {}", field("RssAnon:"));
    println!(
        "    RssFile (binary, libc pages mapped): {}",
        field("RssFile:")
    );
    println!("  VmHWM (peak RSS):   {}", field("VmHWM:"));
    println!("  Threads:            {}", field("Threads:"));

    child.kill().await?;
    hub.shutdown().await;
    Ok(())
}
