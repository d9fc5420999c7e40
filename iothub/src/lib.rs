//! The Azure IoT Hub wire contract, written once for the hub, the agent and the scheduler.
//!
//! Everything both sides of the wire must agree on lives here: connection strings, SAS tokens,
//! MQTT topics, twin documents, REST bodies, error codes and the query language. The local hub
//! uses it to *accept* what the official SDKs send; the agent and the scheduler use it to
//! *produce* what Azure IoT Hub expects. `../shared/reference/iothub-protocol.md` is the
//! contract; each module cites the section it implements.
//!
//! No sockets, no async: everything here is pure and unit-tested. Parsers never panic on input
//! (property-tested), errors are `thiserror` enums that name the key, path or field at fault,
//! and nothing that carries a secret prints it in `Debug` or in an error.
//!
//! # Layout
//! - [`connection_string`]: device and service connection strings (parse, display, derive the
//!   MQTT client id, socket host, SAS resource and password).
//! - [`sas`]: shared access signature tokens — sign, parse, verify (HMAC over `sr` as written,
//!   constant-time), authorize (segment-wise prefix, host aliases), default policies.
//! - [`topic`]: the MQTT topic grammar for twins, methods, telemetry and cloud-to-device
//!   messages, subscription filters, property bags and the CONNECT username.
//! - [`twin`]: twin documents — JSON merge patch, `$version`/`$metadata`, IoT Hub's limits.
//! - [`rest`]: service REST request and response bodies (twin, device, method, query), paths,
//!   header names, device-id rules and ETags.
//! - [`configuration`]: automatic device management configurations (`/configurations` JSON).
//! - [`error`]: IoT Hub error codes, the `ErrorCode:<Name>;<msg>` error body, and reading
//!   errors back (with retry classification).
//! - [`query`]: the IoT Hub query language — parser, printer and evaluator over twin JSON.
//! - [`quota`]: the tiers' quotas (tier × operation × per-unit rule) and the token bucket that
//!   meters them, for the hub's throttle and the client's self-limiting alike.
//! - [`clock`]: the injected [`Clock`](clock::Clock) every component reads time from, and the
//!   hand-driven [`ManualClock`](clock::ManualClock) for tests.
//! - [`duration`]: durations as people write them (`90s`, `5m`, `1h30m`) for policy files and
//!   command-line flags alike.
//! - [`encoding`]: the one percent-encoding of path segments, SAS resources and topics.
//! - `signal` (feature `signal`): the binaries' one SIGINT/SIGTERM handler.
//! - [`time`]: the timestamp format IoT Hub uses (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
//!
//! Test vectors for SAS tokens were computed independently with Python
//! (`testdata/make_sas_vectors.py` → `testdata/sas_vectors.json`) and are checked by
//! `tests/integration/sas_vectors.rs`.
//!
//! # Example
//! ```
//! use casement_iothub::connection_string::DeviceConnectionString;
//! use casement_iothub::sas::{self, SasToken};
//! use casement_iothub::topic::{DeviceToHub, MqttUsername};
//!
//! // Device side: derive the CONNECT credentials.
//! let cs: DeviceConnectionString =
//!     "HostName=localhost;DeviceId=dev1;SharedAccessKey=c2VjcmV0LWtleS1ieXRlcw==".parse()?;
//! let username = MqttUsername::new(&cs.host_name, &cs.device_id, None, "casement-agent/0.1");
//! let password = cs.password(1_900_000_000)?.unwrap_or_default();
//!
//! // Hub side: check them.
//! let username = MqttUsername::parse(&username.to_string())?;
//! let token = SasToken::parse(&password)?;
//! sas::verify(&token, &["c2VjcmV0LWtleS1ieXRlcw=="], 1_800_000_000, sas::DEFAULT_SKEW_SECS)?;
//! sas::authorize_for_host(&token.resource, &["localhost", "127.0.0.1"], &format!("devices/{}", username.device_id))?;
//! let publish = DeviceToHub::parse_for("$iothub/twin/GET/?$rid=1", &username.device_id, None)?;
//! assert_eq!(publish.rid(), Some("1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod clock;
pub mod configuration;
pub mod connection_string;
pub mod duration;
pub mod encoding;
pub mod error;
pub mod query;
pub mod quota;
pub mod rest;
pub mod sas;
#[cfg(feature = "signal")]
pub mod signal;
pub mod time;
pub mod topic;
pub mod twin;
