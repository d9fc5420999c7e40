//! Registry and service statistics: `GET /statistics/devices`, `GET /statistics/service`.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::{Access, AppState, State, admit, json_response};
use crate::auth::need;
use crate::error::ApiError;
use crate::throttle::Operation;

/// `GET /statistics/service` needs ServiceConnect (or RegistryRead); it counts as a registry
/// operation.
const SERVICE_STATISTICS: Access = Access {
    required: &[need::SERVICE_CONNECT, need::REGISTRY_READ],
    quota: Some(Operation::Registry),
};

/// `{"totalDeviceCount","enabledDeviceCount","disabledDeviceCount"}`.
pub(super) async fn devices(
    State(shared): AppState,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::REGISTRY_READ, "").await?;
    let (enabled, disabled) = shared.registry.status_counts();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "totalDeviceCount": enabled + disabled,
            "enabledDeviceCount": enabled,
            "disabledDeviceCount": disabled,
        }),
    ))
}

/// `{"connectedDeviceCount"}`: devices connected over MQTT now.
pub(super) async fn service(
    State(shared): AppState,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, SERVICE_STATISTICS, "").await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "connectedDeviceCount": shared.broker.connected_count() }),
    ))
}
