//! The scheduler library against the real hub and simulated agents on a driven clock: apply, configurations, run, scale, the report, simulator restarts.
//!
//! One integration test binary for the crate (`autotests = false`): the modules share one
//! build and one link.

mod common;
mod apply;
mod configurations;
mod report;
mod run;
mod scale;
mod simulator_restart;
