//! The identity registry: `PUT/GET/DELETE /devices/{id}`, `GET /devices`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use casement_iothub::rest::{AuthenticationType, Device};
use serde::Deserialize;
use serde_json::Value;

use super::{Access, AppState, State, admit, device_resource, if_match, json_body, json_response};
use crate::error::ApiError;
use crate::registry::{DeviceSpec, validate_device_id};

/// Most devices `GET /devices` returns.
const MAX_LIST: usize = 1000;

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    top: Option<usize>,
}

pub(super) async fn list(
    State(shared): AppState,
    headers: HeaderMap,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::REGISTRY_READ, "devices").await?;
    let top = params.top.unwrap_or(MAX_LIST).min(MAX_LIST);
    Ok(json_response(StatusCode::OK, &shared.registry.list(top)))
}

pub(super) async fn get(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(
        &shared,
        &headers,
        Access::REGISTRY_READ,
        &device_resource(&id),
    )
    .await?;
    Ok(json_response(StatusCode::OK, &shared.registry.get(&id)?))
}

pub(super) async fn put(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    admit(
        &shared,
        &headers,
        Access::REGISTRY_WRITE,
        &device_resource(&id),
    )
    .await?;
    validate_device_id(&id)?;
    let mut value: Value = json_body(body, "device")?;
    // The path names the device; a body without deviceId means that one.
    if let Value::Object(map) = &mut value {
        map.entry("deviceId")
            .or_insert_with(|| Value::String(id.clone()));
    }
    let device: Device = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            casement_iothub::error::ErrorCode::IotHubFormatError,
            format!("device: the body is not a device: {e}"),
        )
    })?;
    if !device.device_id.is_empty() && device.device_id != id {
        return Err(ApiError::invalid(format!(
            "deviceId {:?} in the body does not match {id:?} in the path",
            device.device_id
        )));
    }
    let spec = spec_from(&device)?;
    // Without If-Match a PUT creates (409 when the device exists); with it, it updates.
    // Python's SDK accepts only 200 here, not 201 (reference §3).
    let result: Value = match if_match(&headers) {
        None => shared.create_device(&id, spec).await?,
        Some(etag) => shared.update_device(&id, spec, Some(etag)).await?,
    };
    Ok(json_response(StatusCode::OK, &result))
}

pub(super) async fn delete(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(
        &shared,
        &headers,
        Access::REGISTRY_WRITE,
        &device_resource(&id),
    )
    .await?;
    shared.delete_device(&id, if_match(&headers)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn spec_from(device: &Device) -> Result<DeviceSpec, ApiError> {
    let mut spec = DeviceSpec {
        status: device.status,
        status_reason: device.status_reason.clone(),
        iot_edge: device.capabilities.is_some_and(|c| c.iot_edge),
        ..DeviceSpec::default()
    };
    if let Some(auth) = &device.authentication {
        if auth.kind != AuthenticationType::Sas {
            return Err(ApiError::invalid(
                "casement hub supports only SAS (symmetric key) authentication",
            ));
        }
        if let Some(keys) = &auth.symmetric_key {
            spec.primary_key = keys.primary_key.clone();
            spec.secondary_key = keys.secondary_key.clone();
        }
    }
    Ok(spec)
}
