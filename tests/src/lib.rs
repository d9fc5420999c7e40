//! Whole-system tests of Casement, and the test kit they and the crates' integration tests use
//! (the hub's raw REST and MQTT tests are written with [`rest`] and [`mqtt`]): the real hub,
//! agents and scheduler run in-process on `127.0.0.1:0`, with faults injected between them.
//!
//! The tests themselves are in `tests/`: `proxy.rs` (the fault proxy, mode by mode, on real
//! sockets), `bad_input.rs` (invalid input across the whole surface — policy files through the
//! `casement` command line, twin patches read by a real agent, MQTT bytes, REST bodies and
//! queries, SAS tokens — each with its documented error and the system still working after it)
//! and `scenario.rs` (the seeded fleet run whose invariants are asserted).
//!
//! Randomised tests print their seed; `CASEMENT_SEED=<seed>` replays one. `RUST_LOG` turns on
//! the components' logs ([`init_tracing`]).
//!
//! # Layout
//! - [`proxy`]: a TCP fault proxy on loopback (pass, delay, blackhole, cut, refuse, rules on a
//!   connection's first bytes) with run-time control, globally or per connection.
//! - [`seed`]: seeds from `CASEMENT_SEED` or random, independent streams, replay hints.
//! - [`hub`]: the real hub on loopback ports, on disk so it can restart, on an injected clock;
//!   the product's service client of a hub, for well-formed set-up calls.
//! - [`rest`]: a raw service REST client that sends anything and reads errors.
//! - [`mqtt`]: a raw MQTT device connection (packets, raw bytes, panicking shorthands for the
//!   steps around the subject), a connected device with twin shorthands, and reading a client
//!   id from a CONNECT.
//! - [`policy_file`]: policy files with every field set, for tests that write them.
//! - [`invariants`]: the agent's invariant checker re-exported, plus the checks that need the
//!   scheduler's types: the hub's twins and `casement report` against a run's facts.
//! - [`scenario`]: the seeded fleet run — hub, scheduler and simulated devices on a fast clock,
//!   faults on a timeline — that gathers those facts.

pub mod hub;
pub mod invariants;
pub mod mqtt;
pub mod policy_file;
pub mod proxy;
pub mod rest;
pub mod scenario;
pub mod seed;

/// Installs rustls' ring provider as the process default, as the binaries do first thing
/// (reqwest is built without a provider of its own). Idempotent.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Installs the crypto provider and sends the components' `tracing` logs to the test output
/// when `RUST_LOG` is set (once per process; later calls do nothing).
pub fn init_tracing() {
    install_crypto_provider();
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
