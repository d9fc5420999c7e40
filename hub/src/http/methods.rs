//! Direct methods: `POST /twins/{id}/methods`.

use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use casement_iothub::rest::MethodRequest;

use super::{Access, AppState, State, admit, device_resource, json_body, json_response};
use crate::error::ApiError;

pub(super) async fn invoke(
    State(shared): AppState,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    admit(&shared, &headers, Access::METHOD, &device_resource(&id)).await?;
    let request: MethodRequest = json_body(body, "method invocation")?;
    let response = shared.invoke_method(&id, request).await?;
    Ok(json_response(StatusCode::OK, &response))
}
