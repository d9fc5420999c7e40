//! Throttling as Azure does it (`--throttle-mode shape`): an operation over its quota waits in
//! a bounded queue and is served at the quota's rate; only when the queue is full does the
//! service answer `429 ThrottlingException` (429001, with `Retry-After`). Over MQTT, IoT Hub
//! does not answer 429 on the response topic: it closes the device's connection (429002,
//! "IoTHubThrottled"), and the device reconnects.
//!
//! The bucket arithmetic lives in [`Throttle::reserve`](crate::throttle::Throttle::reserve),
//! apart from the tier table, so the table can move without this. `Reject` mode keeps the
//! hub's earlier behaviour: 429 at once (REST and the MQTT twin response topic).

use std::fmt;
use std::time::Duration;

use casement_iothub::error::ErrorCode;

use crate::error::ApiError;
use crate::server::RunningHub;
use crate::state::Shared;
use crate::throttle::Operation;

/// What the hub does with an operation over its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ThrottleMode {
    /// Queue it and serve it at the quota's rate (as Azure IoT Hub shapes traffic); 429 only
    /// when the queue is full; over MQTT, close the device's connection when full.
    #[default]
    Shape,
    /// Answer 429 at once (over MQTT, status 429 on the twin response topic; telemetry is
    /// still slowed down).
    Reject,
}

impl fmt::Display for ThrottleMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThrottleMode::Shape => "shape",
            ThrottleMode::Reject => "reject",
        })
    }
}

/// What the throttle has done since the hub started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThrottleCounts {
    /// Operations that waited in a shaping queue and then went ahead.
    pub queued: u64,
    /// Operations refused: answered 429, or their MQTT connection closed.
    pub refused: u64,
}

impl RunningHub {
    /// What the throttle has queued and refused since start.
    pub fn throttle_counts(&self) -> ThrottleCounts {
        let (queued, refused) = self.shared.throttle.counts();
        ThrottleCounts { queued, refused }
    }
}

/// How an MQTT device operation over quota ends when it cannot be served.
#[derive(Debug)]
pub(crate) enum DeviceThrottled {
    /// `Reject` mode: answer 429 on the response topic.
    Answer(ApiError),
    /// `Shape` mode with a full queue: close the connection (IoT Hub's 429002).
    Disconnect(Operation),
}

impl Shared {
    /// Takes `op`'s quota for a REST request: at once, after waiting in the shaping queue, or
    /// not at all (429 with `Retry-After`). A hub shutting down answers 503 to a waiter.
    pub(crate) async fn take_quota(&self, op: Operation) -> Result<(), ApiError> {
        match self.throttle.reserve(op) {
            Ok(wait) => self.wait_in_queue(wait).await,
            Err(retry_after) => Err(ApiError::throttled(op.name(), retry_after)),
        }
    }

    /// Takes `op`'s quota for a device's MQTT operation (twin GET, reported patch).
    pub(crate) async fn take_device_quota(&self, op: Operation) -> Result<(), DeviceThrottled> {
        match self.throttle.reserve(op) {
            Ok(wait) => self
                .wait_in_queue(wait)
                .await
                .map_err(DeviceThrottled::Answer),
            Err(retry_after) => Err(match self.throttle.mode() {
                ThrottleMode::Reject => {
                    DeviceThrottled::Answer(ApiError::throttled(op.name(), retry_after))
                }
                ThrottleMode::Shape => DeviceThrottled::Disconnect(op),
            }),
        }
    }

    /// Takes the telemetry quota: waits for it in `Reject` mode (the hub has always slowed
    /// device-to-cloud traffic down), queues in `Shape` mode and disconnects when full.
    pub(crate) async fn take_telemetry_quota(&self) -> Result<(), DeviceThrottled> {
        match self.throttle.mode() {
            ThrottleMode::Reject => {
                self.throttle.acquire(Operation::Telemetry).await;
                Ok(())
            }
            ThrottleMode::Shape => self.take_device_quota(Operation::Telemetry).await,
        }
    }

    async fn wait_in_queue(&self, wait: Duration) -> Result<(), ApiError> {
        if wait.is_zero() {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => Ok(()),
            () = self.shutdown.cancelled() => Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                "the hub is shutting down",
            )),
        }
    }
}
