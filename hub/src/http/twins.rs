//! Twins: `GET/PATCH/PUT /twins/{id}`.

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use casement_iothub::rest::TwinPatch;
use casement_iothub::twin;

use super::{Access, AppState, State, admit, device_resource, if_match, json_body, json_response};
use crate::error::ApiError;
use crate::registry::TwinUpdate;

pub(super) async fn get(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::TWIN_READ, &device_resource(&id)).await?;
    Ok(json_response(StatusCode::OK, &shared.registry.twin(&id)?))
}

pub(super) async fn patch(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    write(shared, id, headers, body, false).await
}

pub(super) async fn replace(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    write(shared, id, headers, body, true).await
}

async fn write(
    shared: std::sync::Arc<crate::state::Shared>,
    id: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    replace: bool,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::TWIN_WRITE, &device_resource(&id)).await?;
    let mut patch: TwinPatch = json_body(body, "twin")?;
    if replace {
        // A replace commonly sends back a whole twin from a GET: drop what the service
        // maintains ($version, $metadata) and the reported section it cannot write.
        if let Some(properties) = patch.properties.as_mut() {
            properties.reported = None;
            properties.desired = properties.desired.as_ref().map(twin::strip_system_keys);
        }
    }
    patch
        .validate()
        .map_err(|e| ApiError::new(e.error_code(), e.to_string()))?;
    let update = TwinUpdate {
        tags: patch.tags.clone(),
        desired: patch.desired_patch().cloned(),
    };
    let twin = shared
        .update_twin(&id, update, if_match(&headers), replace)
        .await?;
    Ok(json_response(StatusCode::OK, &twin))
}
