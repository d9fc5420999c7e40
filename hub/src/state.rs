//! The state every connection and request works on: [`Shared`] — the identity (policies and
//! keys), the registry and its store, the MQTT session table, the direct methods in flight, the
//! throttle, the clock and the limits — with the operations that span several of them (a twin
//! update that is persisted and then published to the device's session, a direct method that
//! waits for the device's answer). The server ([`crate::server`]) builds it and hands it to the
//! MQTT connections and the REST handlers; nothing here knows about sockets.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use casement_iothub::error::ErrorCode;
use casement_iothub::rest::{MethodRequest, MethodResponse};
use casement_iothub::topic::HubToDevice;
use rumqttc::mqttbytes::QoS;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::clock::Clock;
use crate::config::Limits;
use crate::configurations::Configurations;
use crate::error::ApiError;
use crate::faults::Faults;
use crate::methods::Methods;
use crate::mqtt::broker::Broker;
use crate::registry::{DeviceSpec, Registry, TwinUpdate};
use crate::store::Store;
use crate::throttle::{Operation, Throttle};

/// Counters the hub keeps.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Telemetry messages accepted.
    pub(crate) telemetry: AtomicU64,
    /// Query pages answered (`POST /devices/query` with status 200).
    pub(crate) query_pages: AtomicU64,
    /// Items in those pages.
    pub(crate) query_items: AtomicU64,
}

/// A snapshot of the hub's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    /// Devices in the registry.
    pub devices: usize,
    /// Devices connected over MQTT right now.
    pub connected_devices: usize,
    /// Device-to-cloud telemetry messages accepted since start.
    pub telemetry_messages: u64,
    /// Direct methods waiting for a device's answer.
    pub methods_in_flight: usize,
    /// Query pages answered since start (each continuation is a page; what IoT Hub meters).
    pub query_pages: u64,
    /// Items returned in those pages.
    pub query_items: u64,
    /// Metered operations asked for, per quota class (registry calls, twin reads, …).
    pub operations: crate::throttle::OperationCounts,
}

/// The state every connection and request shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) identity: Identity,
    pub(crate) store: Arc<Store>,
    pub(crate) registry: Registry,
    pub(crate) configurations: Configurations,
    pub(crate) broker: Broker,
    pub(crate) methods: Arc<Methods>,
    pub(crate) throttle: Throttle,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) limits: Limits,
    pub(crate) query_dialect: casement_iothub::query::Dialect,
    pub(crate) stats: Stats,
    pub(crate) faults: Faults,
    pub(crate) shutdown: CancellationToken,
}

impl Shared {
    /// Creates a device and flushes.
    pub(crate) async fn create_device(
        &self,
        device_id: &str,
        spec: DeviceSpec,
    ) -> Result<Value, ApiError> {
        let device = self.registry.create(device_id, spec)?;
        self.store.flush().await?;
        Ok(device)
    }

    /// Updates a device, closes its connection when disabled or re-keyed, and flushes.
    pub(crate) async fn update_device(
        &self,
        device_id: &str,
        spec: DeviceSpec,
        if_match: Option<&str>,
    ) -> Result<Value, ApiError> {
        let (device, kick) = self.registry.update(device_id, spec, if_match)?;
        if kick {
            self.broker.disconnect(device_id);
        }
        self.store.flush().await?;
        Ok(device)
    }

    /// Deletes a device, closes its connection, forgets its session, and flushes.
    pub(crate) async fn delete_device(
        &self,
        device_id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ApiError> {
        self.registry.delete(device_id, if_match)?;
        self.broker.remove(device_id);
        self.store.flush().await?;
        Ok(())
    }

    /// Applies a service twin write, pushes the desired change to the device, and flushes.
    pub(crate) async fn update_twin(
        &self,
        device_id: &str,
        update: TwinUpdate,
        if_match: Option<&str>,
        replace: bool,
    ) -> Result<Value, ApiError> {
        let twin =
            self.registry
                .update_twin(device_id, update, if_match, replace, |version, body| {
                    let topic = HubToDevice::DesiredPatch { version };
                    let body = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
                    // Sent only while connected and subscribed; the device reads the twin on
                    // reconnect (reference §2).
                    let _ = self
                        .broker
                        .publish(device_id, &topic, body, QoS::AtLeastOnce);
                })?;
        self.store.flush().await?;
        Ok(twin)
    }

    /// Invokes a direct method: waits up to the connect timeout for the device to be online and
    /// subscribed to methods, publishes the request, waits up to the response timeout.
    pub(crate) async fn invoke_method(
        &self,
        device_id: &str,
        request: MethodRequest,
    ) -> Result<MethodResponse, ApiError> {
        request
            .validate()
            .map_err(|e| ApiError::new(e.error_code(), e.to_string()))?;
        if !self.registry.exists(device_id) {
            return Err(ApiError::device_not_found(device_id));
        }
        self.take_quota(Operation::Methods).await?;
        let connect_timeout = Duration::from_secs(request.connect_timeout_secs());
        let response_timeout = Duration::from_secs(request.response_timeout_secs());
        self.wait_until_method_ready(device_id, connect_timeout)
            .await?;

        let mut pending = self.methods.register(device_id).ok_or_else(|| {
            ApiError::throttled("direct methods in flight", Duration::from_secs(1))
        })?;
        let topic = HubToDevice::MethodRequest {
            name: request.method_name.clone(),
            rid: pending.rid.clone(),
        };
        let body = Bytes::from(serde_json::to_vec(&request.payload).unwrap_or_default());
        if self
            .broker
            .publish(device_id, &topic, body, QoS::AtMostOnce)
            .is_err()
        {
            return Err(not_online(device_id));
        }
        let reply = tokio::select! {
            () = self.shutdown.cancelled() => {
                return Err(ApiError::new(ErrorCode::ServiceUnavailable, "the hub is shutting down"));
            }
            reply = tokio::time::timeout(response_timeout, &mut pending.reply) => reply,
        };
        match reply {
            Ok(Ok(reply)) => Ok(MethodResponse {
                status: reply.status,
                payload: crate::method_reply::payload(device_id, &reply.payload)?,
            }),
            Ok(Err(_)) | Err(_) => Err(ApiError::new(
                ErrorCode::GatewayTimeout,
                format!(
                    "Timed out waiting for the response from device {device_id:?} ({} s)",
                    response_timeout.as_secs()
                ),
            )),
        }
    }

    async fn wait_until_method_ready(
        &self,
        device_id: &str,
        connect_timeout: Duration,
    ) -> Result<(), ApiError> {
        let deadline = Instant::now() + connect_timeout;
        loop {
            {
                let changes = self.broker.changes(device_id);
                let notified = changes.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.broker.accepts_methods(device_id) {
                    return Ok(());
                }
                if Instant::now() < deadline {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(deadline) => {}
                        () = self.shutdown.cancelled() => {
                            return Err(ApiError::new(ErrorCode::ServiceUnavailable, "the hub is shutting down"));
                        }
                    }
                    continue;
                }
            }
            self.broker.forget_idle(device_id);
            return Err(if connect_timeout.is_zero() {
                not_online(device_id)
            } else {
                ApiError::new(
                    ErrorCode::DeviceNotOnline,
                    format!(
                        "Timed out waiting for device {device_id:?} to connect and subscribe to methods ({} s)",
                        connect_timeout.as_secs()
                    ),
                )
            });
        }
    }
}

fn not_online(device_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::DeviceNotOnline,
        format!("device {device_id:?} is not online or not subscribed to direct methods"),
    )
}
