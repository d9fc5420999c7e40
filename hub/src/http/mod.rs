//! The service REST API (reference §3), on axum: routing, authentication, error answers.
//!
//! Every JSON answer carries `Content-Type: application/json; charset=utf-8`; errors carry
//! the `iothub-errorcode` header and the `ErrorCode:<Name>;<msg>` body. Request bodies are read
//! with a size limit (413 MessageTooLarge beyond it) and parsed by hand so a malformed body is
//! a 400 in IoT Hub's format rather than axum's plain-text rejection.

mod configurations;
mod devices;
mod methods;
mod query;
mod statistics;
mod twins;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use casement_iothub::error::{ERROR_CODE_HEADER, ErrorBody, ErrorCode};
use casement_iothub::rest::CONTENT_TYPE_JSON;
use casement_iothub::sas::Permissions;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use rand::RngCore;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, Identity, need};
use crate::error::ApiError;
use crate::state::Shared;
use crate::throttle::Operation;

pub(crate) use axum::extract::State;

type AppState = State<Arc<Shared>>;

/// Builds the router.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.limits.max_body_size;
    Router::new()
        .route("/devices/query", post(query::query))
        .route("/devices", get(devices::list).post(devices::bulk))
        .route("/devices/", get(devices::list).post(devices::bulk))
        .route("/statistics/devices", get(statistics::devices))
        .route("/statistics/service", get(statistics::service))
        .route("/configurations", get(configurations::list))
        .route("/configurations/testQueries", post(configurations::test))
        .route(
            "/configurations/{id}",
            get(configurations::get)
                .put(configurations::put)
                .delete(configurations::delete),
        )
        .route(
            "/devices/{id}",
            get(devices::get).put(devices::put).delete(devices::delete),
        )
        .route(
            "/twins/{id}",
            get(twins::get).patch(twins::patch).put(twins::replace),
        )
        .route("/twins/{id}/methods", post(methods::invoke))
        .route(
            "/twins/{id}/modules/{module}",
            get(no_modules).patch(no_modules).put(no_modules),
        )
        .fallback(not_found)
        .layer(middleware::from_fn(require_api_version))
        .layer(middleware::from_fn_with_state(
            shared.limits.http_body_timeout,
            body_deadline,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// Gives the request body [`Limits::http_body_timeout`](crate::Limits::http_body_timeout) to
/// arrive, counted from its headers; reading it after that fails (see [`json_body`]).
async fn body_deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let body = Body::new(DeadlineBody {
        inner: body,
        deadline: Box::pin(tokio::time::sleep(limit)),
        limit,
    });
    next.run(Request::from_parts(parts, body)).await
}

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

/// The request body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs_f64())]
struct BodyTimeout(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(axum::Error::new(BodyTimeout(this.limit)))))
                }
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn no_modules() -> ApiError {
    ApiError::new(
        ErrorCode::ModuleNotFound,
        "module identities are not supported by casement hub",
    )
}

async fn not_found(request: Request) -> Response {
    let body = ErrorBody::new(
        ErrorCode::ArgumentInvalid,
        &format!(
            "no such endpoint: {} {}",
            request.method(),
            request.uri().path()
        ),
        &tracking_id(),
    );
    json_response(StatusCode::NOT_FOUND, &body)
}

/// Every IoT Hub REST call carries `api-version`; refuse calls without one.
async fn require_api_version(request: Request, next: Next) -> Response {
    let has_version = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.starts_with("api-version=") && kv.len() > 12)
    });
    if has_version {
        next.run(request).await
    } else {
        ApiError::invalid(format!(
            "the api-version query parameter is required (e.g. ?api-version={})",
            casement_iothub::rest::API_VERSION
        ))
        .into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            ErrorBody::with_timestamp(self.code, &self.message, &tracking_id(), chrono::Utc::now());
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(self.code.name()) {
            headers.insert(ERROR_CODE_HEADER, v);
        }
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

fn tracking_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A JSON response with IoT Hub's content type.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_JSON),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// What a REST operation needs: the permissions checked against the caller's token, and the
/// tier quota it counts against (`None` when the operation is throttled further in, as
/// direct methods are once their payload has been read).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Access {
    required: &'static [Permissions],
    quota: Option<Operation>,
}

impl Access {
    pub(crate) const REGISTRY_READ: Access = Access {
        required: &[need::REGISTRY_READ],
        quota: Some(Operation::Registry),
    };
    pub(crate) const REGISTRY_WRITE: Access = Access {
        required: &[need::REGISTRY_WRITE],
        quota: Some(Operation::Registry),
    };
    /// Automatic device management configurations: their own quota (Azure: 20/min/unit).
    pub(crate) const CONFIGURATION_READ: Access = Access {
        required: &[need::REGISTRY_READ],
        quota: Some(Operation::Configurations),
    };
    pub(crate) const CONFIGURATION_WRITE: Access = Access {
        required: &[need::REGISTRY_WRITE],
        quota: Some(Operation::Configurations),
    };
    pub(crate) const TWIN_READ: Access = Access {
        required: &[need::SERVICE_CONNECT, need::REGISTRY_READ],
        quota: Some(Operation::TwinReads),
    };
    pub(crate) const TWIN_WRITE: Access = Access {
        required: &[need::SERVICE_CONNECT],
        quota: Some(Operation::TwinUpdates),
    };
    pub(crate) const QUERY: Access = Access {
        required: &[need::SERVICE_CONNECT, need::REGISTRY_READ],
        quota: Some(Operation::Queries),
    };
    pub(crate) const METHOD: Access = Access {
        required: &[need::SERVICE_CONNECT],
        quota: None,
    };
}

/// Lets a request in: authenticates and authorizes it for `access` on `resource` (`""` for
/// the whole hub, `devices/{id}` for one device), then takes its quota (waiting in the shaping
/// queue, or 429 beyond it).
pub(crate) async fn admit(
    shared: &Shared,
    headers: &HeaderMap,
    access: Access,
    resource: &str,
) -> Result<(), ApiError> {
    authorize(shared, headers, access.required, resource)?;
    match access.quota {
        Some(op) => shared.take_quota(op).await,
        None => Ok(()),
    }
}

/// The resource a device's operations are authorized on.
pub(crate) fn device_resource(id: &str) -> String {
    format!("devices/{id}")
}

/// Checks the `Authorization` header for a service endpoint needing one of `required` on
/// `resource` (`""` for the whole hub, `devices/{id}` for one device).
fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    required: &[Permissions],
    resource: &str,
) -> Result<(), ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::IotHubUnauthorizedAccess,
                "missing Authorization header (expected a SharedAccessSignature)",
            )
        })?;
    let now = u64::try_from(shared.clock.now().timestamp()).unwrap_or(0);
    let principal = shared
        .identity
        .verify(token, now, |id| shared.registry.enabled_keys(id))
        .map_err(auth_error)?;
    Identity::authorize_service(&principal, required, resource).map_err(auth_error)
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Unauthenticated(msg) => ApiError::new(ErrorCode::IotHubUnauthorizedAccess, msg),
        AuthError::Forbidden(msg) => ApiError::new(ErrorCode::IotHubUnauthorized, msg),
    }
}

/// The `If-Match` header, if any.
pub(crate) fn if_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok())
}

/// Reads a JSON body: 413 beyond the size limit, 400 when it is not the expected JSON.
pub(crate) fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::MessageTooLarge,
                format!("{what}: request body is too large"),
            )
        } else {
            ApiError::new(
                ErrorCode::IotHubFormatError,
                format!("{what}: cannot read the request body: {rejection}"),
            )
        }
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::IotHubFormatError,
            format!("{what}: the body is not valid JSON: {e}"),
        )
    })?;
    // Every body of the service API is a JSON object. serde would read a struct from an array
    // by position (`[{"x":1}]` as a twin patch's tags), so arrays are refused here.
    if !value.is_object() {
        return Err(ApiError::new(
            ErrorCode::IotHubFormatError,
            format!(
                "{what}: the body must be a JSON object, not {}",
                json_kind(&value)
            ),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            ErrorCode::IotHubFormatError,
            format!("{what}: the body is not valid JSON for this request: {e}"),
        )
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
