//! `casement-client`: the IoT Hub service REST client — any hub, Azure IoT Hub or
//! `casement hub` — that the scheduler, the simulator and the tests talk to a hub with.
//!
//! - Where: [`HubTarget`] — a service connection string, an optional CA file, an optional
//!   endpoint that overrides `https://{HostName}`; [`HubTarget::resolve`] applies the `--hub` /
//!   `IOTHUB_CONNECTION_STRING` / local hub file rules.
//! - How hard: [`ClientConfig`] — a timeout on every call, retries of 429/500/503 with
//!   exponential back-off and full jitter that honour `Retry-After`, and client-side [`Quota`]s
//!   from the tier table in [`casement_iothub::quota`], so a tier's limits (S1: 50 twin
//!   updates/s, 20 queries/min per unit) are kept by configuration.
//! - The SAS token is signed with the connection string's policy key, kept, and renewed
//!   [`RENEW_BEFORE_EXPIRY_SECS`](casement_iothub::sas::RENEW_BEFORE_EXPIRY_SECS) before it
//!   expires.
//! - Errors: [`ClientError`], which keeps IoT Hub's error code (404103 `DeviceNotOnline`, 412
//!   `PreconditionFailed`, …) so callers can tell them apart, and says whether the hub was
//!   unavailable ([`ClientError::is_unavailable`]) or refused the call on its merits.
//!
//! [`HubApi`] is the seam the scheduler's apply, run and report code is written against;
//! [`ServiceClient`] is the real implementation.
//!
//! # Layout
//! - [`client`]: [`ServiceClient`], [`ClientConfig`], [`RetryPolicy`], [`HubApi`].
//! - [`configurations`]: `/configurations` calls on [`ServiceClient`] (automatic device
//!   management).
//! - [`target`]: [`HubTarget`] and the local hub's connection file.
//! - [`quota`]: [`Quota`], the client's own token buckets.
//! - [`registry`]: device identities — create, read, list, delete, bulk import.
//! - [`error`]: [`ClientError`], [`TargetError`].

pub mod client;
pub mod configurations;
pub mod error;
pub mod quota;
pub mod registry;
pub mod target;

pub use casement_iothub::quota::{Operation, Rate, Tier};
pub use client::{
    ClientConfig, ClientStats, HubApi, QueryPage, RetryPolicy, ServiceClient,
    ensure_crypto_provider,
};
pub use error::{ClientError, TargetError};
pub use quota::Quota;
pub use registry::{ImportFailure, ImportOutcome, MAX_BULK_DEVICES, NewDevice};
pub use target::{
    CA_ENV, CONNECTION_STRING_ENV, HubTarget, LOCAL_HUB_FILE, LocalDeviceEndpoint,
    local_device_endpoint,
};

#[cfg(test)]
mod tests;
