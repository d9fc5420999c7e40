//! `casement hub`: a local server that speaks Azure IoT Hub's device and service protocols, for
//! development, demos and tests — what Azurite is for Azure Storage.
//!
//! It serves MQTT 3.1.1 (TLS and plain) for devices and the service REST API (HTTPS and plain
//! HTTP), with a device registry, twins (versions, ETags, `$metadata`, desired-property
//! notifications), direct methods with IoT Hub's timeouts and error codes, the query language
//! with paging, SAS authentication with the standard shared access policies, IoT Hub's limits,
//! optional throttling, and persistence in sled. The wire contract is
//! `shared/reference/iothub-protocol.md`; the protocol itself (tokens, topics, twin rules, REST
//! bodies, queries) lives in [`casement_iothub`], and this crate does the I/O and keeps state.
//!
//! ```no_run
//! # async fn demo() -> Result<(), casement_hub::HubError> {
//! use casement_hub::{Hub, HubConfig};
//! let hub = Hub::start(HubConfig::for_tests()).await?;
//! let device = hub.create_device("dev1", serde_json::json!({"env": "test"})).await?;
//! println!("service: {}", hub.service_connection_string());
//! println!("device:  {device} (MQTT on {:?})", hub.mqtt_addr());
//! hub.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `server` (re-exported here): [`Hub::start`] binds the listeners and spawns the accept
//!   loops, [`RunningHub`] is the handle; `state`: `Shared`, the state every connection and
//!   request works on, and [`HubStats`]. The server builds the state; the MQTT connections and
//!   REST handlers use it; the state knows nothing of sockets.
//! - [`config`]: [`HubConfig`] and [`Limits`]; [`cli`]: [`HubArgs`], [`run_cli`] and the
//!   start-up banner.
//! - `mqtt::connection`: one task per device connection (rumqttc's `mqttbytes::v4` codec,
//!   keep-alive, CONNECT authentication, twin and method topics); `mqtt::broker`: the session
//!   table (one connection per device, persisted `CleanSession=0` subscriptions, bounded queues).
//! - `http`: the REST API on axum — registry (with the bulk `POST /devices`), twins, methods,
//!   queries, configurations, statistics, errors.
//! - `configurations`: automatic device management configurations — validation, storage, and
//!   the evaluation that writes their content into twins ([`RunningHub::evaluate_configurations`],
//!   `docs/iothub-contract.md`).
//! - `registry`: devices and twins in memory, written through to [`store`] (sled).
//! - `methods`: direct methods in flight; `auth`: policies, keys and SAS checks;
//!   `private_dir`: the data directory is 0700 and its files 0600.
//! - [`tls`]: the generated CA and server certificate; [`listener`]: binding with clear errors,
//!   connection caps, TLS handshakes off the accept path; `admission`: who gets an HTTP slot
//!   (per-listener cap, silent connections evicted first, a fair share per peer).
//! - [`throttle`]: tier quotas as token buckets; [`shaping`]: queueing over quota as Azure
//!   does (`--throttle-mode`); `lag`: lagging twin queries (`--query-lag`); `faults`: the
//!   silent-socket fault (`RunningHub::blackhole_device`); [`clock`]: the injected wall clock.

mod admission;
mod auth;
pub mod cli;
pub mod clock;
pub mod config;
mod configurations;
mod error;
pub mod faults;
mod http;
mod lag;
pub mod listener;
mod method_reply;
mod methods;
mod mqtt;
mod presence;
mod private_dir;
mod registry;
mod server;
pub mod shaping;
mod state;
pub mod store;
pub mod throttle;
pub mod tls;

pub use cli::{HubArgs, run_cli, shutdown_signal, startup_banner};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{HubConfig, Limits};
pub use configurations::ConfigurationEvaluation;
pub use error::{ApiError, HubError};
pub use server::{Hub, RunningHub};
pub use shaping::{ThrottleCounts, ThrottleMode};
pub use state::HubStats;
pub use store::Storage;
pub use throttle::{Operation, OperationCounts, Rate, ThrottleConfig};
pub use tls::TlsSource;
