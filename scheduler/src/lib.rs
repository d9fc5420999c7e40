//! `casement-scheduler`, the operator's side of Casement as a library: apply maintenance-window
//! policies to twins, run the window-gated reboot rollout, and report compliance — against Azure
//! IoT Hub or `casement hub`, through the service client ([`casement_client`]). The `casement`
//! binary crate puts a command line and a terminal on top.
//!
//! # Layout
//! - [`rollout`]: the per-policy rollout state machine — candidates, `max_concurrent`,
//!   `max_per_minute`, the failure budget — pure, events in, actions out.
//! - [`journal`]: the crash-safe sled journal of reboot invocations, flushed before each call.
//! - [`fleet`]: reading twins into what apply, run and report look at (shared twin views).
//! - [`apply`]: `casement apply` — resolve targets, priorities and overlaps; plan and write
//!   `desired.maintenance` with ETags.
//! - [`run`]: `casement run` — the loop that executes the rollout's actions; signals, reload.
//! - [`report`]: `casement report` — compliance per policy and per device.
//! - [`metrics`]: Prometheus metrics of the run loop and their HTTP endpoint.

pub mod apply;
pub mod fleet;
pub mod journal;
pub mod metrics;
pub mod report;
pub mod rollout;
pub mod run;
