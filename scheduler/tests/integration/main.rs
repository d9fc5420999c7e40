//! The scheduler library against the real hub and simulated agents on a driven clock: apply, configurations, run, scale, the report, simulator restarts.
//!
//! One integration test binary for the crate (`autotests = false`): the modules share one
//! build and one link.

mod apply;
mod common;
mod configurations;
mod report;
mod run;
mod scale;
mod simulator_restart;
