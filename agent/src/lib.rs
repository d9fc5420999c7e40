//! `casement-agent`: the on-device daemon of Casement.
//!
//! It connects to an IoT hub over MQTT (TLS, SAS token derived from the device key and renewed
//! before expiry, CleanSession=0, reconnecting forever with capped exponential backoff and full
//! jitter), applies the desired `maintenance` policy (or reports it rejected and keeps the
//! previous one), reports `maintenance.window` whenever the window opens or closes, and gates
//! the `reboot` direct method: only inside the window by its own math, with enough time left,
//! for the applied revision, at most once per window occurrence — across restarts. Before
//! rebooting it persists its state atomically; after the restart it reports the completion.
//! Nothing in a twin can make it run a command: the reboot command is local configuration.
//!
//! The same agents run by the hundred in one process for demos and tests ([`simulate`]).
//!
//! # Layout
//! - [`reboot`]: the `reboot` method as a pure state machine (events in, actions out).
//! - [`maintenance`]: the applied policy, its windows and the reported `maintenance` section (pure).
//! - [`state`]: the durable state file (temp file, fsync, rename, fsync of the directory).
//! - [`desired`]: the desired properties by `$version`: the GET of each session, then newer
//!   notifications only (pure).
//! - [`report`]: reported patches queued, composed and retried until the hub acknowledges them.
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`clock`]: the injected clock, sleeping until wall-clock instants, clock-jump detection,
//!   and [`clock::DrivenClock`] for tests.
//! - [`agent`]: the I/O loop that executes all of the above over MQTT (rumqttc).
//! - [`mqtt`]: TLS trust, the CONNECT username and options.
//! - [`config`]: flags + TOML file → the validated [`config::AgentConfig`].
//! - [`timezone`]: the system's IANA zone.
//! - [`simulate`]: many simulated devices in one process (planned devices registered once, in
//!   bulk), with a ground-truth reboot log; [`simulate::invariants`]: DESIGN.md's invariants
//!   checked against that log (the one checker of the demo and every test).
//! - [`cli`]: the `casement-agent` command line (`run`, `simulate`).

pub mod agent;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod desired;
pub mod maintenance;
pub mod mqtt;
pub mod reboot;
pub mod report;
#[cfg(feature = "simulate")]
pub mod simulate;
pub mod state;
pub mod timezone;
pub mod try_out;

pub use agent::{Agent, AgentError, AgentEvent, RebootHook, RunOutcome};
pub use config::AgentConfig;
#[cfg(feature = "simulate")]
pub use simulate::{GroundTruth, SimEvent, SimulatedReboot, Simulation, SimulationConfig};
