//! casement hub over real sockets: REST, MQTT, methods, configurations, persistence, faults, hardening, Azure fidelity, and (ignored unless the SDKs are installed: `scripts/test` runs them) the official Azure IoT SDKs against it.
//!
//! One integration test binary for the crate (`autotests = false`): the modules share one
//! build and one link.

mod common;
mod configurations;
mod faults;
mod fidelity;
mod flow;
mod hardening;
mod methods;
mod mqtt;
mod persistence;
mod rest;
mod sdk_conformance;
mod sdk_node;
