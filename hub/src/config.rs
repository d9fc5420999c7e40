//! What a hub is started with: listeners, storage, names, TLS, throttling, limits and clock.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use casement_iothub::query::Dialect;

use crate::clock::{Clock, SystemClock};
use crate::shaping::ThrottleMode;
use crate::store::Storage;
use crate::throttle::ThrottleConfig;
use crate::tls::TlsSource;

/// Default MQTT-over-TLS port (the port the device SDKs use).
pub const DEFAULT_MQTTS_PORT: u16 = 8883;
/// Default plain MQTT port.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// Default HTTPS port (the port the service SDKs use).
pub const DEFAULT_HTTPS_PORT: u16 = 443;
/// Default plain HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Default longest wait in a shaping queue (`--throttle-max-wait`).
pub const DEFAULT_THROTTLE_MAX_WAIT: Duration = Duration::from_secs(10);
/// Default interval between two evaluations of the automatic device management
/// configurations (Azure evaluates about every five minutes; a local hub answers faster).
pub const DEFAULT_CONFIGURATION_INTERVAL: Duration = Duration::from_secs(10);
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = ".casement/hub";

/// Size and concurrency limits; the defaults suit a laptop running a demo fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open MQTT connections per listener (TLS and plain each); more are refused at accept.
    pub max_mqtt_connections: usize,
    /// Open HTTP connections per listener (HTTPS and plain each). When full, a new connection
    /// takes the slot of the oldest one that has not sent a byte yet (`admission`).
    pub max_http_connections: usize,
    /// Open HTTP connections one IP address may hold on one listener (its fair share; at most
    /// the cap). `None` (the default) is half of `max_http_connections`, so one peer cannot take
    /// a listener alone.
    pub max_http_connections_per_peer: Option<usize>,
    /// Direct methods waiting for a device at once; more get 429.
    pub max_inflight_methods: usize,
    /// Largest MQTT packet accepted (IoT Hub's message limit is 256 KiB; topic and header
    /// overhead on top). A bigger packet closes the connection.
    pub max_packet_size: usize,
    /// Largest REST request body; bigger gets 413.
    pub max_body_size: usize,
    /// How long a new MQTT connection may take to send CONNECT (and finish TLS); also the
    /// HTTPS handshake limit, and how long an HTTP(S) connection may stay silent before its
    /// first byte.
    pub connect_timeout: Duration,
    /// How long an HTTP connection may go without a complete request header — idle between
    /// requests, or trickling one in — before the hub closes it. Longer than the 90 s that
    /// HTTP clients (reqwest, hyper) keep an idle pooled connection, so a client normally
    /// closes first; a request in progress (a direct method waiting for its device) is not
    /// cut.
    pub http_idle_timeout: Duration,
    /// How long a request body may take to arrive once its headers have: a client that sends
    /// its headers and trickles the body gets a 400 and the connection is closed.
    pub http_body_timeout: Duration,
    /// Packets queued for one device before the hub gives up on it (a device that does not
    /// read its socket is disconnected rather than buffered without bound).
    pub device_queue: usize,
    /// Clock skew allowed when checking a SAS token's expiry (`se`), as IoT Edge does: a token
    /// is refused, and an MQTT connection made with it is closed, once the hub's clock passes
    /// `se` plus this. Default 5 minutes.
    pub token_expiry_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_mqtt_connections: 50_000,
            max_http_connections: 1_024,
            max_http_connections_per_peer: None,
            max_inflight_methods: 10_000,
            max_packet_size: 256 * 1024 + 8 * 1024,
            max_body_size: 512 * 1024,
            connect_timeout: Duration::from_secs(10),
            http_idle_timeout: Duration::from_secs(100),
            http_body_timeout: Duration::from_secs(30),
            device_queue: 256,
            token_expiry_skew: Duration::from_secs(casement_iothub::sas::DEFAULT_SKEW_SECS),
        }
    }
}

/// Everything [`Hub::start`](crate::Hub::start) needs. Build one with [`HubConfig::default`]
/// (the production defaults), [`HubConfig::for_tests`], or from [`HubArgs`](crate::HubArgs).
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// MQTT over TLS; `None` disables it. Default `127.0.0.1:8883`.
    pub mqtts: Option<SocketAddr>,
    /// Plain MQTT; `None` disables it. Default `127.0.0.1:1883`.
    pub mqtt: Option<SocketAddr>,
    /// The service REST API over HTTPS; `None` disables it. Default `127.0.0.1:443`.
    pub https: Option<SocketAddr>,
    /// The service REST API over plain HTTP; `None` disables it. Default `127.0.0.1:8080`.
    pub http: Option<SocketAddr>,
    /// Where the registry, twins and certificates live.
    pub storage: Storage,
    /// The hub's name: `HostName` in connection strings, the MQTT username's and SAS `sr`'s
    /// host, and the server certificate's main name. Default `localhost`.
    pub hostname: String,
    /// More names accepted as this hub in SAS `sr` and MQTT usernames (with or without a
    /// port) and put in the certificate. `localhost` and `127.0.0.1` are always accepted.
    pub aliases: Vec<String>,
    /// The server certificate.
    pub tls: TlsSource,
    /// Operation quotas; empty means no throttling.
    pub throttle: ThrottleConfig,
    /// What happens over a quota: `Shape` (queue and slow down, as Azure does; the default)
    /// or `Reject` (429 at once). See `docs/hub-faults.md`.
    pub throttle_mode: ThrottleMode,
    /// How long a request may wait in a shaping queue; the queue of an operation is full (and
    /// the request gets 429, or its MQTT connection is closed) when it would wait longer.
    pub throttle_max_wait: Duration,
    /// Twin queries answer from the twins as they were this long ago (Azure's queries are
    /// eventually consistent); zero, the default, means fresh.
    pub query_lag: Duration,
    /// Size and concurrency limits.
    pub limits: Limits,
    /// The wall clock (twin timestamps, token expiry).
    pub clock: Arc<dyn Clock>,
    /// The query language accepted by `POST /devices/query`: Azure IoT Hub's (the default), or
    /// the local superset for tools that opt in. See `docs/azure-fidelity.md`.
    pub query_dialect: Dialect,
    /// How late `connectionState`, `connectionStateUpdatedTime` and `lastActivityTime` are
    /// shown (twins, device GETs, queries), as on Azure IoT Hub; zero (the default) shows them
    /// at once. See `docs/azure-fidelity.md`.
    pub connection_state_lag: Duration,
    /// How often the automatic device management configurations are evaluated; `None`: only
    /// when asked ([`RunningHub::evaluate_configurations`](crate::RunningHub::evaluate_configurations)).
    /// Default [`DEFAULT_CONFIGURATION_INTERVAL`]; [`HubConfig::for_tests`] sets `None`.
    pub configuration_interval: Option<Duration>,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            mqtts: Some(loopback(DEFAULT_MQTTS_PORT)),
            mqtt: Some(loopback(DEFAULT_MQTT_PORT)),
            https: Some(loopback(DEFAULT_HTTPS_PORT)),
            http: Some(loopback(DEFAULT_HTTP_PORT)),
            storage: Storage::Dir(PathBuf::from(DEFAULT_DATA_DIR)),
            hostname: "localhost".to_owned(),
            aliases: Vec::new(),
            tls: TlsSource::Generate,
            throttle: ThrottleConfig::none(),
            throttle_mode: ThrottleMode::Shape,
            throttle_max_wait: DEFAULT_THROTTLE_MAX_WAIT,
            query_lag: Duration::ZERO,
            limits: Limits::default(),
            clock: Arc::new(SystemClock),
            query_dialect: Dialect::Azure,
            connection_state_lag: Duration::ZERO,
            configuration_interval: Some(DEFAULT_CONFIGURATION_INTERVAL),
        }
    }
}

impl HubConfig {
    /// For tests: in memory, every listener on `127.0.0.1:0` (TLS ones too; the certificate is
    /// generated in memory), no throttling — and, should a test set quotas, the `Reject`
    /// throttle mode (429 at once), which the tests written before shaping expect; a test of
    /// shaping sets `throttle_mode` itself. Configurations are evaluated only when a test asks.
    pub fn for_tests() -> Self {
        Self {
            throttle_mode: ThrottleMode::Reject,
            configuration_interval: None,
            mqtts: Some(loopback(0)),
            mqtt: Some(loopback(0)),
            https: Some(loopback(0)),
            http: Some(loopback(0)),
            storage: Storage::InMemory,
            ..Self::default()
        }
    }

    /// The same, keeping its data in `dir` (so a test can restart the hub on it).
    pub fn for_tests_in(dir: impl Into<PathBuf>) -> Self {
        Self {
            storage: Storage::Dir(dir.into()),
            ..Self::for_tests()
        }
    }

    /// The data directory, when on disk.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        match &self.storage {
            Storage::Dir(dir) => Some(dir),
            Storage::InMemory => None,
        }
    }
}
