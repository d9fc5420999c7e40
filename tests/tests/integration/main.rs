//! The whole system: bad input everywhere, the fault proxy, the seeded scenario.
//!
//! One integration test binary for the crate (`autotests = false`): the modules share one
//! build and one link.

mod bad_input;
mod common;
mod proxy;
mod scenario;
