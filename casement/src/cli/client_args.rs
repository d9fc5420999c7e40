//! The client's flags — which hub to talk to and how hard — shared by every command that talks
//! to a hub (`apply`, `run`, `report`, `query`, `twin`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use casement_policy::Clock;

use casement_client::{
    CA_ENV, CONNECTION_STRING_ENV, ClientConfig, HubTarget, Operation, Quota, Rate, RetryPolicy,
    ServiceClient, Tier,
};

/// Which hub, and the client-side limits to keep.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The hub's service connection string (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…).
    /// Without it, a local `casement hub`'s .casement/hub/connection.env is used.
    #[arg(long, env = CONNECTION_STRING_ENV, hide_env_values = true, value_name = "CONNECTION_STRING")]
    pub hub: Option<String>,
    /// A PEM file of CA certificates to trust (a local hub's generated CA).
    #[arg(long, env = CA_ENV, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Send requests here instead of https://{HostName} (e.g. http://127.0.0.1:8080, a local
    /// hub's plain port); tokens still sign HostName.
    #[arg(long, env = "CASEMENT_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// A local `casement hub`'s data directory: its connection.env gives the hub, its CA and its
    /// device endpoint when --hub is not given.
    #[arg(long, env = DATA_DIR_ENV, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Keep to the documented throttles of this IoT Hub tier (F1, S1, S2, S3).
    #[arg(long, value_name = "TIER")]
    pub tier: Option<Tier>,
    /// Units of the tier.
    #[arg(long, default_value_t = 1, value_name = "N", requires = "tier")]
    pub units: u32,
    /// Twin updates per second at most (overrides the tier's).
    #[arg(long, value_name = "N")]
    pub max_twin_updates_per_sec: Option<f64>,
    /// Twin reads per second at most (overrides the tier's).
    #[arg(long, value_name = "N")]
    pub max_twin_reads_per_sec: Option<f64>,
    /// Queries (pages) per minute at most (overrides the tier's).
    #[arg(long, value_name = "N")]
    pub max_queries_per_min: Option<f64>,
    /// Direct-method calls per second at most (overrides the tier's).
    #[arg(long, value_name = "N")]
    pub max_methods_per_sec: Option<f64>,
    /// Retries of a call answered 429, 500 or 503 or not answered at all (exponential back-off
    /// with jitter, honouring Retry-After).
    #[arg(long, default_value_t = 7, value_name = "N")]
    pub retries: u32,
    /// Timeout of each REST call (direct methods: their own timeout plus 10 s).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub request_timeout: Duration,
}

/// The environment variable naming a local hub's data directory (shared with `casement hub`).
pub const DATA_DIR_ENV: &str = "CASEMENT_HUB_DATA_DIR";
/// A local hub's data directory unless told otherwise (where `casement hub` keeps it).
pub const DEFAULT_DATA_DIR: &str = ".casement/hub";

/// The connection file of the local hub whose data directory is `data_dir`.
pub fn local_hub_file(data_dir: &Path) -> PathBuf {
    data_dir.join("connection.env")
}

/// For an error that is an untrusted TLS certificate: the local hub's CA file (from
/// `$CASEMENT_HUB_DATA_DIR` or `.casement/hub`), as a hint to pass it with `--ca`.
pub fn untrusted_certificate_hint(error: &anyhow::Error) -> Option<String> {
    let untrusted = error.chain().any(|e| {
        e.downcast_ref::<casement_client::ClientError>()
            .is_some_and(casement_client::ClientError::is_untrusted_certificate)
    });
    if !untrusted {
        return None;
    }
    let dir = std::env::var_os(DATA_DIR_ENV)
        .map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), PathBuf::from);
    let ca = casement_client::local_device_endpoint(&local_hub_file(&dir))?.ca?;
    Some(format!(
        "the local hub in {} printed its CA: --ca {}",
        dir.display(),
        ca.display()
    ))
}

/// Parses `"30s"`, `"2m"`, `"1h30m"` (the policy files' durations).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    casement_policy::parse_duration(text).map_err(|e| e.to_string())
}

impl ClientArgs {
    /// The quotas these flags ask for.
    pub fn quota(&self) -> Quota {
        let mut q = self
            .tier
            .map_or_else(Quota::unlimited, |t| Quota::tier(t, self.units));
        if let Some(n) = self.max_twin_updates_per_sec {
            q = q.with(Operation::TwinUpdates, Rate::per_second(n));
        }
        if let Some(n) = self.max_twin_reads_per_sec {
            q = q.with(Operation::TwinReads, Rate::per_second(n));
        }
        if let Some(n) = self.max_queries_per_min {
            q = q.with(Operation::Queries, Rate::per_minute(n));
        }
        if let Some(n) = self.max_methods_per_sec {
            q = q.with(Operation::Methods, Rate::per_second(n));
        }
        q
    }

    /// The local hub's connection file (`--data-dir`/connection.env).
    pub fn local_hub_file(&self) -> PathBuf {
        local_hub_file(&self.data_dir)
    }

    /// The hub, resolved (saying on `err` when the local hub's file is used).
    pub fn target(&self, err: &mut dyn Write) -> anyhow::Result<HubTarget> {
        let target = HubTarget::resolve(
            self.hub.as_deref(),
            self.ca.as_deref(),
            self.endpoint.as_deref(),
            &self.local_hub_file(),
        )?;
        if target.source != "--hub" {
            writeln!(
                err,
                "casement: using the local hub from {} ({})",
                target.source, target.connection.host_name
            )?;
        }
        Ok(target)
    }

    /// A client for the hub.
    pub fn client(
        &self,
        clock: Arc<dyn Clock>,
        err: &mut dyn Write,
    ) -> anyhow::Result<ServiceClient> {
        for (flag, value) in [
            ("--max-twin-updates-per-sec", self.max_twin_updates_per_sec),
            ("--max-twin-reads-per-sec", self.max_twin_reads_per_sec),
            ("--max-queries-per-min", self.max_queries_per_min),
            ("--max-methods-per-sec", self.max_methods_per_sec),
        ] {
            if value.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                anyhow::bail!("{flag} must be a positive number");
            }
        }
        let target = self.target(err)?;
        let config = ClientConfig {
            request_timeout: self.request_timeout,
            retry: RetryPolicy {
                max_attempts: self.retries.saturating_add(1),
                ..RetryPolicy::default()
            },
            quota: self.quota(),
            ..ClientConfig::default()
        };
        ServiceClient::new(target, config, clock).context("cannot set up the hub client")
    }
}

/// A tokio runtime for a command: current-thread, because [`super::run()`] holds the stderr lock
/// while a command runs and log lines written from other threads would wait for it.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Logs to stderr (`RUST_LOG` filters; `default` otherwise).
pub fn init_logging(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
