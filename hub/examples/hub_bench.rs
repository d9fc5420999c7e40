//! Load benchmark for `casement hub` (not a test): connects N simulated devices over plain MQTT,
//! reports the hub's memory per connected device, then measures direct-method round trips per
//! second with p50/p99 latency at a fixed number of calls in flight.
//!
//! ```sh
//! cargo run --release -p casement-hub --example hub_bench -- --devices 10000 --inflight 1000
//! ```
//!
//! The hub runs in a child process (this same program with `serve`), so its memory is measured
//! alone (VmRSS from /proc, Linux) and each process needs only about N file descriptors: raise
//! the soft limit with `ulimit -n` when it is below N + 2,048.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use casement_hub::{Hub, HubConfig, Limits};
use clap::{Parser, Subcommand};
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Packet, Publish, Subscribe, SubscribeFilter,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Simulated devices to connect.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// Direct methods in flight during the round-trip measurement.
    #[arg(long, default_value_t = 1_000)]
    inflight: usize,
    /// How long to measure method round trips.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Devices connecting at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Internal: run the hub with N devices and print its addresses.
    Serve {
        #[arg(long)]
        devices: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Some(Cmd::Serve { devices }) => runtime.block_on(serve(devices)),
        None => runtime.block_on(bench(cli)),
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status (Linux only)"))
}

fn soft_fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn serve(devices: usize) -> anyhow::Result<()> {
    let config = HubConfig {
        mqtts: None,
        https: None,
        limits: Limits {
            max_http_connections: 8_192,
            // Every benchmark client is on 127.0.0.1.
            max_http_connections_per_peer: Some(8_192),
            max_inflight_methods: 20_000,
            ..Limits::default()
        },
        ..HubConfig::for_tests()
    };
    let empty = rss_kib(std::process::id())?;
    let hub = Hub::start(config).await?;
    for i in 0..devices {
        hub.create_device(&format!("sim{i:05}"), serde_json::Value::Null)
            .await?;
    }
    let line = serde_json::json!({
        "mqtt": hub.mqtt_addr(),
        "http": hub.http_url(),
        "owner": hub.service_connection_string(),
        "device_policy": hub.policy_connection_string("device"),
        "empty_rss_kib": empty,
    });
    println!("{line}");
    // Run until the parent closes stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ = stdin.read_to_end(&mut sink).await;
    hub.shutdown().await;
    Ok(())
}

fn key_of(cs: &str) -> String {
    cs.split(';')
        .find_map(|kv| kv.strip_prefix("SharedAccessKey="))
        .unwrap_or_default()
        .to_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn read_packet(
    read: &mut OwnedReadHalf,
    buf: &mut BytesMut,
) -> anyhow::Result<Option<Packet>> {
    loop {
        match Packet::read(buf, 1024 * 1024) {
            Ok(p) => return Ok(Some(p)),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                if read.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
            }
            Err(e) => anyhow::bail!("malformed packet from the hub: {e}"),
        }
    }
}

async fn write_packet(write: &mut OwnedWriteHalf, packet: Packet) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    packet.write(&mut out, 1024 * 1024)?;
    write.write_all(&out).await?;
    Ok(())
}

/// Connects one simulated device, subscribes to methods, and returns its socket halves.
async fn connect_device(
    addr: SocketAddr,
    id: &str,
    policy_key: &str,
) -> anyhow::Result<(OwnedReadHalf, OwnedWriteHalf, BytesMut)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    let mut buf = BytesMut::with_capacity(256);
    let token = casement_iothub::sas::sign(
        &format!("localhost/devices/{id}"),
        policy_key,
        Some("device"),
        now() + 7200,
    )?;
    let mut connect = Connect::new(id);
    connect.protocol = Protocol::V4;
    connect.keep_alive = 1200;
    connect.clean_session = true;
    connect.set_login(
        format!("localhost/{id}/?api-version=2021-04-12&DeviceClientType=hub-bench"),
        token,
    );
    write_packet(&mut write, Packet::Connect(connect)).await?;
    match read_packet(&mut read, &mut buf).await? {
        Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => {}
        other => anyhow::bail!("{id}: CONNECT refused: {other:?}"),
    }
    let subscribe = Subscribe {
        pkid: 1,
        filters: vec![SubscribeFilter::new(
            "$iothub/methods/POST/#".into(),
            QoS::AtMostOnce,
        )],
    };
    write_packet(&mut write, Packet::Subscribe(subscribe)).await?;
    match read_packet(&mut read, &mut buf).await? {
        Some(Packet::SubAck(_)) => Ok((read, write, buf)),
        other => anyhow::bail!("{id}: SUBSCRIBE failed: {other:?}"),
    }
}

/// Answers every method request at once with status 200.
async fn respond_forever(mut read: OwnedReadHalf, mut write: OwnedWriteHalf, mut buf: BytesMut) {
    while let Ok(Some(packet)) = read_packet(&mut read, &mut buf).await {
        if let Packet::Publish(p) = packet
            && let Some(rid) = p.topic.split("$rid=").nth(1)
        {
            let answer = Publish::new(
                format!("$iothub/methods/res/200/?$rid={rid}"),
                QoS::AtMostOnce,
                b"{\"ok\":true}".to_vec(),
            );
            if write_packet(&mut write, Packet::Publish(answer))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

async fn bench(cli: Cli) -> anyhow::Result<()> {
    let need = (cli.devices + cli.inflight + 512) as u64;
    if let Some(limit) = soft_fd_limit()
        && limit < need
    {
        anyhow::bail!(
            "the open-files soft limit is {limit}, below the {need} this run needs; raise it first: ulimit -n {need}"
        );
    }
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--devices", &cli.devices.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no child pid"))?;
    let mut lines = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?,
    )
    .lines();
    let started = Instant::now();
    let info: serde_json::Value = serde_json::from_str(
        &lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow::anyhow!("hub exited"))?,
    )?;
    println!(
        "hub ready with {} registered devices in {:.1} s",
        cli.devices,
        started.elapsed().as_secs_f64()
    );
    let mqtt: SocketAddr = info["mqtt"].as_str().unwrap_or_default().parse()?;
    let http = info["http"].as_str().unwrap_or_default().to_owned();
    let owner_key = key_of(info["owner"].as_str().unwrap_or_default());
    let policy_key = key_of(info["device_policy"].as_str().unwrap_or_default());
    let empty_rss = info["empty_rss_kib"].as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let registered_rss = rss_kib(pid)?;

    // Connect every device.
    let started = Instant::now();
    let connected = Arc::new(AtomicUsize::new(0));
    let semaphore = Arc::new(tokio::sync::Semaphore::new(cli.connect_concurrency));
    let mut joins = Vec::with_capacity(cli.devices);
    for i in 0..cli.devices {
        let permit = semaphore.clone().acquire_owned().await?;
        let policy_key = policy_key.clone();
        let connected = connected.clone();
        joins.push(tokio::spawn(async move {
            let id = format!("sim{i:05}");
            let result = connect_device(mqtt, &id, &policy_key).await;
            drop(permit);
            match result {
                Ok((read, write, buf)) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    respond_forever(read, write, buf).await;
                }
                Err(e) => eprintln!("{e:#}"),
            }
        }));
    }
    while connected.load(Ordering::Relaxed) < cli.devices {
        if started.elapsed() > Duration::from_secs(300) {
            anyhow::bail!(
                "only {} of {} devices connected",
                connected.load(Ordering::Relaxed),
                cli.devices
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected_rss = rss_kib(pid)?;
    let per_device =
        (connected_rss.saturating_sub(registered_rss)) as f64 * 1024.0 / cli.devices as f64;
    println!(
        "connected {} devices in {:.1} s ({:.0}/s)",
        cli.devices,
        connect_secs,
        cli.devices as f64 / connect_secs
    );
    println!(
        "hub RSS: empty {:.1} MiB, {} registered {:.1} MiB, all connected {:.1} MiB",
        empty_rss as f64 / 1024.0,
        cli.devices,
        registered_rss as f64 / 1024.0,
        connected_rss as f64 / 1024.0
    );
    println!(
        "hub memory per connected device: {:.1} KiB (registry entry: {:.1} KiB per device)",
        per_device / 1024.0,
        (registered_rss.saturating_sub(empty_rss)) as f64 / cli.devices as f64
    );

    // Direct methods at a fixed number in flight.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(cli.inflight)
        .timeout(Duration::from_secs(60))
        .build()?;
    let token =
        casement_iothub::sas::service_token("localhost", "iothubowner", &owner_key, now() + 7200)?;
    let deadline = Instant::now() + Duration::from_secs(cli.seconds);
    let warmup_until = Instant::now() + Duration::from_secs(2);
    let mut workers = Vec::with_capacity(cli.inflight);
    for w in 0..cli.inflight {
        let client = client.clone();
        let token = token.clone();
        let http = http.clone();
        let devices = cli.devices;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut n = w;
            while Instant::now() < deadline {
                let id = format!("sim{:05}", n % devices);
                n += 7919;
                let url = format!("{http}/twins/{id}/methods?api-version=2021-04-12");
                let t0 = Instant::now();
                let ok = client
                    .post(&url)
                    .header("Authorization", &token)
                    .header("Content-Type", "application/json")
                    .body(r#"{"methodName":"ping","payload":null,"responseTimeoutInSeconds":30}"#)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                let elapsed = t0.elapsed();
                if t0 >= warmup_until {
                    if ok {
                        latencies.push(elapsed);
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    let measured = cli.seconds.saturating_sub(2).max(1) as f64;
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    println!(
        "direct methods, {} in flight: {:.0} round trips/s, p50 {:.1} ms, p99 {:.1} ms ({} calls, {} errors)",
        cli.inflight,
        latencies.len() as f64 / measured,
        pct(0.50),
        pct(0.99),
        latencies.len(),
        errors
    );
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    for j in joins {
        j.abort();
    }
    Ok(())
}
