//! The hub's error types: [`HubError`] for starting and running the hub, and `ApiError`, an
//! IoT Hub error answer (code + message) shared by the REST and MQTT layers.

use std::time::Duration;

use casement_iothub::error::ErrorCode;

use crate::listener::BindError;
use crate::store::StoreError;
use crate::tls::TlsError;

/// Why the hub could not start (or failed while running).
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A listener could not be bound (the message names the flag to change).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The database could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The TLS certificate could not be generated or loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The configuration is inconsistent.
    #[error("invalid hub configuration: {0}")]
    Config(String),
    /// A file in the data directory could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A registry operation failed (for the library conveniences such as
    /// [`RunningHub::create_device`](crate::RunningHub::create_device)).
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// An IoT Hub error answer: the code decides the HTTP status, the `iothub-errorcode` header and
/// the `ErrorCode:<Name>;<message>` body; over MQTT the status and `{"errorCode","message"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} ({}): {message}", code.numeric())]
pub struct ApiError {
    /// The IoT Hub error code.
    pub code: ErrorCode,
    /// What went wrong, for a human.
    pub message: String,
    /// For 429: when to retry.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 ArgumentInvalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ArgumentInvalid, message)
    }

    /// 404 DeviceNotFound (the message is the device id, as the service writes it).
    pub fn device_not_found(device_id: &str) -> Self {
        Self::new(ErrorCode::DeviceNotFound, device_id)
    }

    /// 412 PreconditionFailed.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PreconditionFailed, message)
    }

    /// 500 ServerError (a store failure, logged with its detail).
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error");
        Self::new(
            ErrorCode::ServerError,
            "internal error in the hub; see its log",
        )
    }

    /// 429 ThrottlingException with a retry hint.
    pub fn throttled(what: &str, retry_after: Duration) -> Self {
        Self {
            code: ErrorCode::ThrottlingException,
            message: format!("{what} quota exceeded; retry later"),
            retry_after: Some(retry_after),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}
