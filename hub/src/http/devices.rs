//! The identity registry: `PUT/GET/DELETE /devices/{id}`, `GET /devices` (also `/devices/`,
//! as Node's `Registry.list` asks), and the bulk `POST /devices`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use casement_iothub::error::{ERROR_CODE_HEADER, ErrorCode};
use casement_iothub::rest::{AuthenticationType, Device};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Access, AppState, State, admit, device_resource, if_match, json_body, json_response};
use crate::error::ApiError;
use crate::registry::{DeviceSpec, TwinUpdate, validate_device_id};
use crate::state::Shared;

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
            ErrorCode::IotHubFormatError,
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

/// Most devices one `POST /devices` may name (IoT Hub's bulk registry limit).
pub(super) const MAX_BULK: usize = 100;

/// One failed entry of a bulk call, as `BulkRegistryOperationResult.errors` lists it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BulkError {
    device_id: String,
    error_code: &'static str,
    error_status: String,
    module_id: Option<String>,
    operation: String,
}

/// `POST /devices`: create, update or delete up to [`MAX_BULK`] devices. Each entry is an
/// ExportImportDevice (`id`, `importMode`, `eTag`, `status`, `authentication`, `tags`,
/// `properties.desired`, `twinETag`, …). 200 `{"isSuccessful":true,"errors":[],"warnings":[]}`
/// when every entry succeeded; else 400 with `isSuccessful: false` and an error per failed
/// entry (the others are applied: the call is not atomic).
pub(super) async fn bulk(
    State(shared): AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::REGISTRY_WRITE, "devices").await?;
    let entries = bulk_entries(body)?;
    let mut errors = Vec::new();
    for entry in entries {
        let device_id = entry_id(&entry);
        let mode = entry
            .get("importMode")
            .and_then(Value::as_str)
            .unwrap_or("create")
            .to_owned();
        if let Err(e) = import_one(&shared, &device_id, &mode, &entry).await {
            errors.push(BulkError {
                device_id,
                error_code: e.code.name(),
                error_status: e.message,
                module_id: entry
                    .get("moduleId")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                operation: mode,
            });
        }
    }
    let ok = errors.is_empty();
    let result = json!({ "isSuccessful": ok, "errors": errors, "warnings": [] });
    if ok {
        Ok(json_response(StatusCode::OK, &result))
    } else {
        let mut response = json_response(StatusCode::BAD_REQUEST, &result);
        response.headers_mut().insert(
            ERROR_CODE_HEADER,
            HeaderValue::from_static(ErrorCode::BulkRegistryOperationFailure.name()),
        );
        Ok(response)
    }
}

/// `id` (ExportImportDevice), or `deviceId` as a Device body has it.
fn entry_id(entry: &Value) -> String {
    entry
        .get("id")
        .or_else(|| entry.get("deviceId"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// The body: a JSON array of 1 to [`MAX_BULK`] objects naming distinct devices.
fn bulk_entries(body: Result<Bytes, BytesRejection>) -> Result<Vec<Value>, ApiError> {
    let bytes = body.map_err(|rejection| {
        ApiError::new(
            ErrorCode::IotHubFormatError,
            format!("devices: cannot read the request body: {rejection}"),
        )
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::IotHubFormatError,
            format!("devices: the body is not valid JSON: {e}"),
        )
    })?;
    let Value::Array(entries) = value else {
        return Err(ApiError::new(
            ErrorCode::IotHubFormatError,
            "devices: the body must be a JSON array of devices ([{\"id\":\"d1\",\"importMode\":\"create\"}, …])",
        ));
    };
    if entries.is_empty() {
        return Err(ApiError::invalid("devices: the array lists no devices"));
    }
    if entries.len() > MAX_BULK {
        return Err(ApiError::new(
            ErrorCode::TooManyDevices,
            format!(
                "devices: {} devices in one call; IoT Hub takes at most {MAX_BULK} (split the list)",
                entries.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for entry in &entries {
        if !entry.is_object() {
            return Err(ApiError::new(
                ErrorCode::IotHubFormatError,
                "devices: every array item must be a device object",
            ));
        }
        let id = entry_id(entry);
        if !seen.insert(id.clone()) {
            return Err(ApiError::new(
                ErrorCode::DeviceDefinedMultipleTimes,
                format!("devices: device {id:?} appears more than once in the list"),
            ));
        }
    }
    Ok(entries)
}

/// Applies one ExportImportDevice entry.
async fn import_one(
    shared: &Shared,
    device_id: &str,
    mode: &str,
    entry: &Value,
) -> Result<(), ApiError> {
    validate_device_id(device_id)?;
    if entry.get("moduleId").is_some_and(|m| !m.is_null()) {
        return Err(ApiError::new(
            ErrorCode::ModuleNotFound,
            "module identities are not supported by casement hub",
        ));
    }
    let etag = entry.get("eTag").and_then(Value::as_str);
    let twin_etag = entry.get("twinETag").and_then(Value::as_str);
    let twin = TwinUpdate {
        tags: entry.get("tags").filter(|t| !t.is_null()).cloned(),
        desired: entry
            .get("properties")
            .and_then(|p| p.get("desired"))
            .filter(|d| !d.is_null())
            .cloned(),
    };
    let has_twin = twin.tags.is_some() || twin.desired.is_some();
    match mode.to_ascii_lowercase().as_str() {
        "create" => create_with_twin(shared, device_id, entry, twin, has_twin).await,
        "update" | "createorupdate" | "updateifmatchetag" => {
            let guard =
                (mode.eq_ignore_ascii_case("updateIfMatchETag")).then(|| etag.unwrap_or(""));
            if shared.registry.exists(device_id) {
                let spec = entry_spec(entry, device_id)?;
                shared.update_device(device_id, spec, guard).await?;
                if has_twin {
                    shared.update_twin(device_id, twin, None, false).await?;
                }
                Ok(())
            } else if guard.is_some() {
                Err(ApiError::device_not_found(device_id))
            } else {
                create_with_twin(shared, device_id, entry, twin, has_twin).await
            }
        }
        "delete" => shared.delete_device(device_id, None).await,
        "deleteifmatchetag" => {
            shared
                .delete_device(device_id, Some(etag.unwrap_or("")))
                .await
        }
        "updatetwin" | "updatetwinifmatchetag" => {
            let guard = mode
                .eq_ignore_ascii_case("updateTwinIfMatchETag")
                .then(|| twin_etag.unwrap_or(""));
            shared
                .update_twin(device_id, twin, guard, false)
                .await
                .map(|_| ())
        }
        other => Err(ApiError::invalid(format!(
            "importMode {other:?} is unknown; use create, update, updateIfMatchETag, delete, deleteIfMatchETag, updateTwin or updateTwinIfMatchETag"
        ))),
    }
}

async fn create_with_twin(
    shared: &Shared,
    device_id: &str,
    entry: &Value,
    twin: TwinUpdate,
    has_twin: bool,
) -> Result<(), ApiError> {
    let spec = entry_spec(entry, device_id)?;
    shared.create_device(device_id, spec).await?;
    if has_twin && let Err(e) = shared.update_twin(device_id, twin, None, false).await {
        // All or nothing per device: a device with rejected tags is not left behind.
        let _ = shared.delete_device(device_id, None).await;
        return Err(e);
    }
    Ok(())
}

/// The identity part of an entry, read as a Device body.
fn entry_spec(entry: &Value, device_id: &str) -> Result<DeviceSpec, ApiError> {
    let mut device = json!({ "deviceId": device_id });
    for key in ["status", "statusReason", "authentication", "capabilities"] {
        if let Some(v) = entry.get(key).filter(|v| !v.is_null()) {
            device[key] = v.clone();
        }
    }
    let device: Device = serde_json::from_value(device).map_err(|e| {
        ApiError::new(
            ErrorCode::IotHubFormatError,
            format!("device {device_id:?}: not a valid device: {e}"),
        )
    })?;
    spec_from(&device)
}
