//! Wall-clock time, injected so tests can move it by hand.
//!
//! The hub reads the wall clock for twin timestamps (`$metadata.$lastUpdated`,
//! `lastActivityTime`) and for SAS token expiry. Timers (keep-alive, method timeouts) use
//! tokio's clock instead, so `tokio::time::pause()` drives those.
//!
//! The clock is the one the whole system shares ([`casement_iothub::clock`]), so a test can drive
//! the hub, the agents and the scheduler with one [`ManualClock`].

pub use casement_iothub::clock::{Clock, ManualClock, SystemClock};
