//! `casement`, the operator's side of Casement: validate and apply maintenance-window policies,
//! run the window-gated reboot rollout, and report compliance — against Azure IoT Hub or
//! `casement hub`, over the IoT Hub service REST API.
//!
//! # Layout
//! - [`cli`]: the `casement` command line — clap definitions, one module per subcommand
//!   (`validate`, `windows`, `apply`, `run`, `report`; the hub flags in `cli::hub_args`),
//!   exit codes.
//! - [`service`]: the service REST client (twins, paged queries, direct methods; SAS, timeouts,
//!   retries with back-off, client-side tier quotas) and the [`service::HubApi`] seam.
//! - [`rollout`]: the per-policy rollout state machine — candidates, `max_concurrent`,
//!   `max_per_minute`, the failure budget — pure, events in, actions out.
//! - [`journal`]: the crash-safe sled journal of reboot invocations, flushed before each call.
//! - [`fleet`]: reading twins into what apply, run and report look at (shared twin views).
//! - [`apply`]: `casement apply` — resolve targets, priorities and overlaps; plan and write
//!   `desired.maintenance` with ETags.
//! - [`run`]: `casement run` — the loop that executes the rollout's actions; signals, reload.
//! - [`report`]: `casement report` — compliance per policy and per device.
//! - [`metrics`]: Prometheus metrics of the run loop and their HTTP endpoint.
//! - [`demo`]: `casement demo` — an embedded hub, a simulated fleet, the demo policies and the
//!   scheduler, in real time, ending with the compliance report.

pub mod apply;
pub mod cli;
pub mod demo;
pub mod fleet;
pub mod journal;
pub mod metrics;
pub mod report;
pub mod rollout;
pub mod run;
pub mod service;
