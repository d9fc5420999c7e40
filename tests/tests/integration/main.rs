//! The whole system: bad input everywhere and the fault proxy (the seeded scenario has its own
//! binary, `tests/scenario.rs`).
//!
//! One integration test binary for the crate (`autotests = false`): the modules share one
//! build and one link.

mod bad_input;
mod common;
mod proxy;
