//! MQTT 3.1.1 for devices: the session table and the per-connection task.

pub(crate) mod broker;
pub(crate) mod connection;
