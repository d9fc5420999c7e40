//! The `casement` binary: its commands, the demo, device commands, help texts.
//!
//! One integration test binary for the crate (`autotests = false`): the modules share one
//! build and one link.

mod cli;
mod commands;
mod demo;
mod demo_cli;
mod device;
mod report_help;
