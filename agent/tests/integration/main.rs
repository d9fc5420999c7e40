//! casement-agent against the real hub: the agent, token expiry, and the simulator.
//!
//! One integration test binary for the crate (`autotests = false`): the modules share one
//! build and one link.

mod agent;
mod common;
#[cfg(feature = "simulate")]
mod simulate;
mod token_expiry;
