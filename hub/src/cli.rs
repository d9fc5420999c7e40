//! `casement hub`: flags ([`HubArgs`]), the validated [`HubConfig`] they make, and
//! [`run_cli`], which starts the hub, prints where it listens and how to trust it, and stops
//! it when told.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::clock::SystemClock;
use crate::config::{DEFAULT_DATA_DIR, HubConfig, Limits};
use crate::error::HubError;
use crate::server::{Hub, RunningHub};
use crate::shaping::ThrottleMode;
use crate::store::Storage;
use crate::throttle::{RateOverride, ThrottleConfig};
use crate::tls::TlsSource;

/// Flags of `casement hub`.
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// Address for MQTT over TLS (the device SDKs connect to port 8883).
    #[arg(
        long,
        env = "CASEMENT_HUB_MQTTS_ADDR",
        default_value = "127.0.0.1:8883",
        value_name = "ADDR"
    )]
    pub mqtts_addr: SocketAddr,
    /// Do not serve MQTT over TLS.
    #[arg(long)]
    pub no_mqtts: bool,
    /// Address for plain MQTT (loopback only unless you mean it).
    #[arg(
        long,
        env = "CASEMENT_HUB_MQTT_ADDR",
        default_value = "127.0.0.1:1883",
        value_name = "ADDR"
    )]
    pub mqtt_addr: SocketAddr,
    /// Do not serve plain MQTT.
    #[arg(long)]
    pub no_mqtt: bool,
    /// Address for the REST API over HTTPS (the service SDKs use port 443; binding it needs
    /// privileges on Linux — use e.g. 127.0.0.1:8443 otherwise).
    #[arg(
        long,
        env = "CASEMENT_HUB_HTTPS_ADDR",
        default_value = "127.0.0.1:443",
        value_name = "ADDR"
    )]
    pub https_addr: SocketAddr,
    /// Do not serve HTTPS.
    #[arg(long)]
    pub no_https: bool,
    /// Address for the REST API over plain HTTP (for local tools: `casement --endpoint`).
    #[arg(
        long,
        env = "CASEMENT_HUB_HTTP_ADDR",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub http_addr: SocketAddr,
    /// Do not serve plain HTTP.
    #[arg(long)]
    pub no_http: bool,
    /// Where the registry, twins, keys and certificates are kept.
    #[arg(long, env = "CASEMENT_HUB_DATA_DIR", default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Keep everything in memory (a fresh hub each start; for tests and throwaway demos).
    #[arg(long)]
    pub in_memory: bool,
    /// The hub's host name: HostName in connection strings and the certificate's name.
    #[arg(
        long,
        env = "CASEMENT_HUB_HOSTNAME",
        default_value = "localhost",
        value_name = "NAME"
    )]
    pub hostname: String,
    /// Another name clients may use for the hub (repeatable; added to the certificate).
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Serve this PEM certificate chain instead of generating one (with --tls-key).
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Mimic a tier's operation quotas: F1, S1, S2, S3 or off. Beyond a quota the hub shapes or
    /// answers 429, as --throttle-mode says.
    #[arg(long, env = "CASEMENT_HUB_THROTTLE", value_name = "TIER")]
    pub throttle: Option<String>,
    /// Units of the --throttle tier: quotas that grow with units (queries, methods, …) are
    /// multiplied as Azure IoT Hub's are.
    #[arg(
        long = "throttle-units",
        env = "CASEMENT_HUB_THROTTLE_UNITS",
        default_value_t = 1,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=200)
    )]
    pub throttle_units: u32,
    /// Set one quota, e.g. `twin-updates=10/s` or `registry=100/min` (repeatable; overrides
    /// --throttle). Operations: registry, connections, telemetry, twin-reads, twin-updates,
    /// methods, queries.
    #[arg(long = "throttle-rate", value_name = "OP=N/UNIT")]
    pub throttle_rates: Vec<RateOverride>,
    /// Over a quota: `shape` queues the request and serves it at the quota's rate, as Azure IoT
    /// Hub does, answering 429 only when the queue is full and closing an MQTT device's
    /// connection instead (IoT Hub's 429002); `reject` answers 429 at once (MQTT: 429 on the
    /// twin response topic). Only matters with --throttle or --throttle-rate.
    #[arg(
        long,
        env = "CASEMENT_HUB_THROTTLE_MODE",
        value_enum,
        default_value_t = ThrottleMode::Shape,
        value_name = "MODE"
    )]
    pub throttle_mode: ThrottleMode,
    /// In `shape` mode, the longest a request waits in an operation's queue; one that would
    /// wait longer finds the queue full (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub throttle_max_wait: Duration,
    /// Twin queries answer from the twins as they were DURATION ago (e.g. 30s, 5m; 0 = fresh),
    /// as Azure's eventually consistent queries may (Azure documents up to 30 minutes). Twin
    /// reads stay fresh. For proving that nothing depends on a query being fresh.
    #[arg(
        long,
        env = "CASEMENT_HUB_QUERY_LAG",
        default_value = "0",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub query_lag: Duration,
    /// How often to evaluate the automatic device management configurations (`10s`, `5m`;
    /// Azure: about every five minutes); `0s` turns the background evaluation off.
    #[arg(
        long,
        env = "CASEMENT_HUB_CONFIGURATION_INTERVAL",
        default_value = "10s",
        value_parser = parse_duration,
        value_name = "DURATION"
    )]
    pub configuration_interval: Duration,
    /// Most MQTT connections at once.
    #[arg(long, default_value_t = Limits::default().max_mqtt_connections, value_name = "N")]
    pub max_connections: usize,
    /// Most direct methods waiting for devices at once.
    #[arg(long, default_value_t = Limits::default().max_inflight_methods, value_name = "N")]
    pub max_inflight_methods: usize,
    /// The twin query language: `azure` (what Azure IoT Hub accepts: IS_DEFINED is the only
    /// function, reserved words as property names only escaped, `tags.[[group]]`) or
    /// `extended` (adds STARTS_WITH, LOWER, … and bare `tags.group`; such queries fail on Azure).
    #[arg(
        long,
        env = "CASEMENT_HUB_QUERY_DIALECT",
        default_value = "azure",
        value_name = "DIALECT"
    )]
    pub query_dialect: casement_iothub::query::Dialect,
    /// Show connectionState, connectionStateUpdatedTime and lastActivityTime this long after
    /// they change, as Azure IoT Hub does (minutes for connectionState, 5–10 min for
    /// lastActivityTime), e.g. `5m`. Default 0: at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub connection_state_lag: std::time::Duration,
}

impl HubArgs {
    /// The configuration these flags describe.
    ///
    /// # Errors
    /// [`HubError::Config`] for an unknown throttle tier.
    pub fn to_config(&self) -> Result<HubConfig, HubError> {
        let mut throttle = match &self.throttle {
            Some(tier) => ThrottleConfig::from_tier(tier, self.throttle_units)
                .map_err(|e| HubError::Config(e.to_string()))?,
            None => ThrottleConfig::none(),
        };
        for o in &self.throttle_rates {
            throttle = throttle.with(o.op, o.rate);
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => TlsSource::Generate,
        };
        Ok(HubConfig {
            mqtts: (!self.no_mqtts).then_some(self.mqtts_addr),
            mqtt: (!self.no_mqtt).then_some(self.mqtt_addr),
            https: (!self.no_https).then_some(self.https_addr),
            http: (!self.no_http).then_some(self.http_addr),
            storage: if self.in_memory {
                Storage::InMemory
            } else {
                Storage::Dir(self.data_dir.clone())
            },
            hostname: self.hostname.clone(),
            aliases: self.aliases.clone(),
            tls,
            throttle,
            throttle_mode: self.throttle_mode,
            throttle_max_wait: self.throttle_max_wait,
            query_lag: self.query_lag,
            limits: Limits {
                max_mqtt_connections: self.max_connections,
                max_inflight_methods: self.max_inflight_methods,
                ..Limits::default()
            },
            clock: Arc::new(SystemClock),
            query_dialect: self.query_dialect,
            connection_state_lag: self.connection_state_lag,
            configuration_interval: (!self.configuration_interval.is_zero())
                .then_some(self.configuration_interval),
        })
    }
}

/// A duration flag: `0`, or e.g. `90s`, `5m`, `1h30m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    casement_iothub::duration::parse_duration(text.trim())
        .map_err(|e| format!("{e} (a duration such as 0, 90s, 5m or 1h30m)"))
}

/// Runs `casement hub` until `shutdown` completes, then stops gracefully (a Ctrl-C during the
/// graceful stop forces it).
///
/// # Errors
/// Start-up failures: a port taken or privileged (naming the flag), an unusable data
/// directory, certificate problems.
pub async fn run_cli(args: HubArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let hub = Hub::start(config)
        .await
        .context("casement hub could not start")?;
    println!("{}", startup_banner(&hub));
    shutdown.await;
    println!("casement hub: shutting down (Ctrl-C again to force)");
    tokio::select! {
        () = hub.shutdown() => {}
        _ = tokio::signal::ctrl_c() => eprintln!("casement hub: forced stop"),
    }
    Ok(())
}

pub use casement_iothub::signal::shutdown_signal;

/// What `casement hub` prints at start-up: listeners, the CA and how to trust it, the
/// `iothubowner` connection string, and where all that was written.
pub fn startup_banner(hub: &RunningHub) -> String {
    let mut out =
        String::from("casement hub is running (a local Azure IoT Hub; not for production)\n\n");
    let line = |out: &mut String, what: &str, value: String, note: &str| {
        out.push_str(&format!("  {what:<15} {value:<28} {note}\n"));
    };
    if let Some(a) = hub.mqtts_addr() {
        line(
            &mut out,
            "MQTT over TLS",
            format!("mqtts://{a}"),
            "devices (Azure IoT device SDKs, casement-agent)",
        );
    }
    if let Some(a) = hub.mqtt_addr() {
        line(
            &mut out,
            "MQTT",
            format!("mqtt://{a}"),
            "plain, for local tools and simulators",
        );
    }
    if let Some(a) = hub.https_addr() {
        line(
            &mut out,
            "HTTPS",
            format!("https://{a}"),
            "service REST API (Azure IoT service SDKs, casement)",
        );
    }
    if let Some(a) = hub.http_addr() {
        line(
            &mut out,
            "HTTP",
            format!("http://{a}"),
            "plain REST API: casement --endpoint http://...",
        );
    }
    match hub.data_dir() {
        Some(dir) => line(
            &mut out,
            "data",
            dir.display().to_string(),
            "registry, twins, keys, certificates (sled)",
        ),
        None => line(
            &mut out,
            "data",
            "in memory".into(),
            "everything is lost at exit",
        ),
    }
    out.push('\n');
    match (hub.ca_path(), hub.ca_pem()) {
        (Some(ca), _) => {
            let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.to_path_buf());
            let ca = ca.display();
            out.push_str(&format!("CA certificate: {ca}\n  trust it with:\n"));
            out.push_str(&format!("    export NODE_EXTRA_CA_CERTS={ca}   # Node SDKs\n"));
            out.push_str(&format!("    export REQUESTS_CA_BUNDLE={ca}    # Python service SDK\n"));
            out.push_str(&format!("    server_verification_cert=open('{ca}').read()   # Python device SDK\n"));
            out.push_str(&format!("    export CASEMENT_CA={ca}   # casement; or --ca {ca} (casement-agent too)\n"));
        }
        (None, Some(_)) => out.push_str(
            "CA certificate: generated in memory (use --data-dir to keep it in a file clients can trust)\n",
        ),
        (None, None) => match hub.cert_path() {
            Some(cert) => out.push_str(&format!("TLS certificate: {} (supplied)\n", cert.display())),
            None => out.push_str("TLS: off (no TLS listener)\n"),
        },
    }
    out.push('\n');
    let cs = hub.service_connection_string();
    out.push_str("Service connection string (iothubowner):\n");
    out.push_str(&format!("  export IOTHUB_CONNECTION_STRING='{cs}'\n"));
    if let Some(path) = hub.connection_env_path() {
        out.push_str(&format!(
            "\nWritten to {} (source it: set -a; . {}; set +a)\n",
            path.display(),
            path.display()
        ));
    }
    if let Some(device_endpoint) = hub
        .mqtts_addr()
        .map(|a| format!("mqtts://{a}"))
        .or_else(|| hub.mqtt_addr().map(|a| format!("mqtt://{a}")))
    {
        // HostName above carries the HTTPS port; devices connect here instead.
        out.push_str(&format!(
            "\nDevices connect to {device_endpoint} (casement-agent run --mqtt-endpoint {device_endpoint})\n"
        ));
    }
    out.push_str("\nAdd a device (prints its connection string and the agent command):\n");
    out.push_str("  casement device add <ID>\nStop with Ctrl-C.");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        hub: HubArgs,
    }

    #[test]
    fn defaults_match_the_issue() {
        let cli = Cli::try_parse_from(["hub"]).expect("parse");
        let config = cli.hub.to_config().expect("config");
        assert_eq!(config.mqtts, Some("127.0.0.1:8883".parse().expect("addr")));
        assert_eq!(config.mqtt, Some("127.0.0.1:1883".parse().expect("addr")));
        assert_eq!(config.https, Some("127.0.0.1:443".parse().expect("addr")));
        assert_eq!(config.http, Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(config.storage, Storage::Dir(PathBuf::from(".casement/hub")));
        assert_eq!(config.hostname, "localhost");
        assert!(config.throttle.is_empty());
        assert_eq!(config.throttle_mode, ThrottleMode::Shape);
        assert_eq!(config.throttle_max_wait, Duration::from_secs(10));
        assert_eq!(config.query_lag, Duration::ZERO);
    }

    #[test]
    fn fault_and_lag_flags() {
        let cli = Cli::try_parse_from([
            "hub",
            "--throttle-mode",
            "reject",
            "--throttle-max-wait",
            "1m",
            "--query-lag",
            "1m30s",
        ])
        .expect("parse");
        let config = cli.hub.to_config().expect("config");
        assert_eq!(config.throttle_mode, ThrottleMode::Reject);
        assert_eq!(config.throttle_max_wait, Duration::from_secs(60));
        assert_eq!(config.query_lag, Duration::from_secs(90));
        assert!(Cli::try_parse_from(["hub", "--throttle-mode", "drop"]).is_err());
        let err = Cli::try_parse_from(["hub", "--query-lag", "30"]).expect_err("no unit");
        assert!(err.to_string().contains("30s"), "{err}");
    }

    #[test]
    fn configuration_interval_flag() {
        let config = |args: &[&str]| {
            let argv = std::iter::once("hub").chain(args.iter().copied());
            Cli::try_parse_from(argv)
                .expect("parse")
                .hub
                .to_config()
                .expect("config")
        };
        assert_eq!(
            config(&[]).configuration_interval,
            Some(std::time::Duration::from_secs(10))
        );
        assert_eq!(
            config(&["--configuration-interval", "5m"]).configuration_interval,
            Some(std::time::Duration::from_secs(300))
        );
        assert_eq!(
            config(&["--configuration-interval", "0s"]).configuration_interval,
            None
        );
        let err = Cli::try_parse_from(["hub", "--configuration-interval", "soon"])
            .expect_err("not a duration")
            .to_string();
        assert!(
            err.contains("a duration such as 0, 90s, 5m or 1h30m"),
            "{err}"
        );
    }

    #[test]
    fn flags_switch_listeners_and_throttling() {
        let cli = Cli::try_parse_from([
            "hub",
            "--no-https",
            "--http-addr",
            "127.0.0.1:0",
            "--in-memory",
            "--throttle",
            "S1",
            "--throttle-rate",
            "queries=5/min",
        ])
        .expect("parse");
        let config = cli.hub.to_config().expect("config");
        assert_eq!(config.https, None);
        assert_eq!(config.storage, Storage::InMemory);
        assert_eq!(
            config.throttle.rates[&crate::throttle::Operation::Queries].to_string(),
            "5/min"
        );
        let bad = Cli::try_parse_from(["hub", "--throttle", "S7"]).expect("parse");
        assert!(bad.hub.to_config().is_err());
        assert!(Cli::try_parse_from(["hub", "--throttle-rate", "nope"]).is_err());
        assert!(
            Cli::try_parse_from(["hub", "--tls-cert", "c.pem"]).is_err(),
            "--tls-key required"
        );
    }
}
