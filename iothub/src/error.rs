//! IoT Hub error codes and error bodies (reference §4).
//!
//! The hub *writes* errors with [`ErrorBody::new`] (the `ErrorCode:<Name>;<msg>` form, which
//! Node, C# and Python all understand) plus the [`ERROR_CODE_HEADER`] header. Clients *read*
//! errors from the hub or from Azure with [`ServiceError::parse`], which understands both that
//! form and the newer one with JSON inside `Message`, and decides retries with
//! [`ServiceError::is_retryable`].
//!
//! ```
//! use casement_iothub::error::{ErrorBody, ErrorCode, ServiceError};
//! let body = ErrorBody::new(ErrorCode::DeviceNotFound, "d1", "a1b2c3");
//! let json = serde_json::to_vec(&body).unwrap();
//! let err = ServiceError::parse(404, Some("DeviceNotFound"), &json);
//! assert_eq!(err.code, Some(ErrorCode::DeviceNotFound));
//! assert_eq!(err.message, "d1");
//! assert!(!err.is_retryable());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The response header that carries the error code's name (`iothub-errorcode: DeviceNotFound`).
pub const ERROR_CODE_HEADER: &str = "iothub-errorcode";

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $numeric:literal, $status:literal; )*) => {
        /// An IoT Hub error code: a name, a six-digit number whose first three digits are the
        /// HTTP status, and that status. Every row of reference §4, plus `400027` (§2).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name, )*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$name, )* ];

            /// The name as it appears in `ErrorCode:<Name>;` and in the `iothub-errorcode` header.
            pub fn name(self) -> &'static str {
                match self { $( ErrorCode::$name => stringify!($name), )* }
            }

            /// The numeric code, e.g. `404103`.
            pub fn numeric(self) -> u32 {
                match self { $( ErrorCode::$name => $numeric, )* }
            }

            /// The HTTP status the service answers with.
            pub fn http_status(self) -> u16 {
                match self { $( ErrorCode::$name => $status, )* }
            }
        }
    };
}

error_codes! {
    /// 400004: a request argument is invalid (bad JSON shape, twin limits, method timeouts).
    ArgumentInvalid = 400004, 400;
    /// 400006: the request body is malformed.
    IotHubFormatError = 400006, 400;
    /// 400003: the operation is not valid in the resource's state (a configuration's content
    /// changed after creation).
    InvalidOperation = 400003, 400;
    /// 400011: a bulk registry request names the same device more than once.
    DeviceDefinedMultipleTimes = 400011, 400;
    /// 400013: one or more operations of a bulk registry request failed.
    BulkRegistryOperationFailure = 400013, 400;
    /// 400027: the connection was closed because the same identity connected again.
    ConnectionForcefullyClosedOnNewConnection = 400027, 400;
    /// 401002: the credentials are invalid or expired.
    IotHubUnauthorizedAccess = 401002, 401;
    /// 401003: the caller is not authorized for this operation.
    IotHubUnauthorized = 401003, 401;
    /// 403002: the daily message quota is exhausted.
    IotHubQuotaExceeded = 403002, 403;
    /// 403004: too many cloud-to-device messages are queued for the device.
    DeviceMaximumQueueDepthExceeded = 403004, 403;
    /// 404001: no such device.
    DeviceNotFound = 404001, 404;
    /// 404002: no such job.
    JobNotFound = 404002, 404;
    /// 404005: no such configuration (numeric code chosen by casement; the SDKs read the name
    /// and the status).
    ConfigurationNotFound = 404005, 404;
    /// 404010: no such module.
    ModuleNotFound = 404010, 404;
    /// 404103: the device is not connected, or not subscribed to methods.
    DeviceNotOnline = 404103, 404;
    /// 409001: a device with this id already exists.
    DeviceAlreadyExists = 409001, 409;
    /// 409005: a configuration with this id already exists (numeric code chosen by casement).
    ConfigurationAlreadyExists = 409005, 409;
    /// 412001: the `If-Match` ETag does not match.
    PreconditionFailed = 412001, 412;
    /// 413001: the message or payload is too large.
    MessageTooLarge = 413001, 413;
    /// 413002: a bulk registry request names more devices than one call may (100).
    TooManyDevices = 413002, 413;
    /// 429001: throttled; back off and retry.
    ThrottlingException = 429001, 429;
    /// 500001: an internal error; transient.
    ServerError = 500001, 500;
    /// 502101: the device answered a direct method with a body the service cannot pass on (not
    /// JSON, or over 128 KB): "Payload is not a valid document of type application/json".
    InvalidResponseWhileProxying = 502101, 502;
    /// 503001: the service is unavailable; transient.
    ServiceUnavailable = 503001, 503;
    /// 504101: the device did not answer the direct method in time.
    GatewayTimeout = 504101, 504;
}

impl ErrorCode {
    /// Looks a code up by its name (exact, as the service writes it).
    pub fn from_name(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// Looks a code up by its six-digit number.
    pub fn from_numeric(numeric: u32) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.numeric() == numeric)
    }

    /// Whether a client should retry with back-off: 429, 500 and 503 (reference §4).
    ///
    /// [`GatewayTimeout`](ErrorCode::GatewayTimeout) is *not* retryable here: the method may
    /// have run on the device; see [`is_gateway_timeout`](ErrorCode::is_gateway_timeout).
    pub fn is_retryable(self) -> bool {
        matches!(self.http_status(), 429 | 500 | 503)
    }

    /// Whether this is 504101: the device did not answer a direct method in time. Retry only
    /// when the method is idempotent.
    pub fn is_gateway_timeout(self) -> bool {
        self == ErrorCode::GatewayTimeout
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown error-code name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown IoT Hub error code {0:?}")]
pub struct UnknownErrorCode(pub String);

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    /// Parses a name (`DeviceNotFound`) or a number (`404001`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        ErrorCode::from_name(s)
            .or_else(|| s.parse().ok().and_then(ErrorCode::from_numeric))
            .ok_or_else(|| UnknownErrorCode(s.to_owned()))
    }
}

/// The JSON error body the hub sends:
/// `{"Message":"ErrorCode:<Name>;<msg>","ExceptionMessage":"Tracking ID:…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorBody {
    /// `ErrorCode:<Name>;<message>`.
    pub message: String,
    /// `Tracking ID:<id>-G:0-TimeStamp:<MM/DD/YYYY HH:MM:SS>` (or empty).
    pub exception_message: String,
}

impl ErrorBody {
    /// Builds the body for `code` with a human-readable `message` and a tracking id.
    pub fn new(code: ErrorCode, message: &str, tracking_id: &str) -> ErrorBody {
        ErrorBody {
            message: format!("ErrorCode:{};{}", code.name(), message),
            exception_message: format!("Tracking ID:{tracking_id}-G:0"),
        }
    }

    /// Like [`new`](ErrorBody::new), with the service's `-TimeStamp:` suffix.
    pub fn with_timestamp(
        code: ErrorCode,
        message: &str,
        tracking_id: &str,
        at: chrono::DateTime<chrono::Utc>,
    ) -> ErrorBody {
        ErrorBody {
            message: format!("ErrorCode:{};{}", code.name(), message),
            exception_message: format!(
                "Tracking ID:{tracking_id}-G:0-TimeStamp:{}",
                at.format("%m/%d/%Y %H:%M:%S")
            ),
        }
    }
}

/// The body of a failed twin request on MQTT: `{"errorCode":400004,"message":"…"}`.
///
/// Node only sees an error when the body has `errorCode` (and it ignores the status in the
/// topic); Python only looks at the status. Send both (reference §2).
pub fn twin_error_body(code: ErrorCode, message: &str) -> Value {
    serde_json::json!({ "errorCode": code.numeric(), "message": message })
}

/// An error answer from a hub or from Azure IoT Hub, as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// The HTTP status.
    pub status: u16,
    /// The error code, when the header or body named one this crate knows.
    pub code: Option<ErrorCode>,
    /// The error code's name as sent (also for codes this crate does not know).
    pub code_name: Option<String>,
    /// The numeric code as sent, when the body carried one.
    pub numeric_code: Option<u32>,
    /// The human-readable message (the part after `ErrorCode:<Name>;`, or the JSON `message`).
    pub message: String,
    /// The tracking id, when present.
    pub tracking_id: Option<String>,
}

impl ServiceError {
    /// Reads an error response. Never fails: whatever the body is, the result carries the
    /// status and the best message that could be found.
    ///
    /// Understands `{"Message":"ErrorCode:<Name>;<msg>","ExceptionMessage":"Tracking ID:…"}`,
    /// the newer `{"Message":"{\"errorCode\":404103,\"message\":…}"}`, a bare
    /// `{"errorCode":…,"message":…}`, keys in any case, and non-JSON bodies.
    pub fn parse(status: u16, error_code_header: Option<&str>, body: &[u8]) -> ServiceError {
        let mut err = ServiceError {
            status,
            code: None,
            code_name: None,
            numeric_code: None,
            message: String::new(),
            tracking_id: None,
        };
        if let Some(header) = error_code_header.map(str::trim).filter(|h| !h.is_empty()) {
            err.set_code_text(header);
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => err.read_object(&map),
            Ok(Value::String(text)) => err.read_message(&text),
            _ => {
                let text = String::from_utf8_lossy(body);
                err.read_message(text.trim());
            }
        }
        if err.message.is_empty() {
            err.message = match err.code {
                Some(code) => code.name().to_owned(),
                None => format!("HTTP {status}"),
            };
        }
        err
    }

    fn read_object(&mut self, map: &Map<String, Value>) {
        if let Some(code) = get_ci(map, "errorCode") {
            self.set_code_value(code);
        }
        if let Some(id) = get_ci(map, "trackingId").and_then(Value::as_str) {
            self.tracking_id = Some(id.to_owned());
        }
        if let Some(rest) = get_ci(map, "ExceptionMessage")
            .and_then(Value::as_str)
            .and_then(|e| e.strip_prefix("Tracking ID:"))
        {
            let id = rest.split("-G:").next().unwrap_or(rest).trim();
            if !id.is_empty() && self.tracking_id.is_none() {
                self.tracking_id = Some(id.to_owned());
            }
        }
        match get_ci(map, "Message") {
            Some(Value::String(text)) => self.read_message(text),
            Some(Value::Object(inner)) => self.read_object(inner),
            _ => {}
        }
    }

    fn read_message(&mut self, text: &str) {
        let trimmed = text.trim();
        if trimmed.starts_with('{')
            && let Ok(Value::Object(inner)) = serde_json::from_str::<Value>(trimmed)
        {
            self.read_object(&inner);
            return;
        }
        if let Some(rest) = trimmed.strip_prefix("ErrorCode:") {
            let (name, message) = rest.split_once(';').unwrap_or((rest, ""));
            self.set_code_text(name.trim());
            self.message = message.trim().to_owned();
            return;
        }
        if !trimmed.is_empty() {
            self.message = trimmed.to_owned();
        }
    }

    fn set_code_text(&mut self, text: &str) {
        if let Ok(numeric) = text.parse::<u32>() {
            self.numeric_code = Some(numeric);
            if let Some(code) = ErrorCode::from_numeric(numeric) {
                self.code = Some(code);
                self.code_name = Some(code.name().to_owned());
            }
            return;
        }
        self.code_name = Some(text.to_owned());
        if let Some(code) = ErrorCode::from_name(text) {
            self.code = Some(code);
            self.numeric_code = Some(code.numeric());
        }
    }

    fn set_code_value(&mut self, value: &Value) {
        match value {
            Value::Number(n) => {
                if let Some(n) = n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                    self.set_code_text(&n.to_string());
                }
            }
            Value::String(s) => self.set_code_text(s.trim()),
            _ => {}
        }
    }

    /// Whether to retry with back-off: HTTP 429, 500 and 503 (reference §4). 504101 is not
    /// retryable here; see [`is_gateway_timeout`](ServiceError::is_gateway_timeout).
    pub fn is_retryable(&self) -> bool {
        matches!(self.status, 429 | 500 | 503)
    }

    /// Whether the device did not answer a direct method in time (504101, or a bare 504).
    /// Retry only with care: the method may have run.
    pub fn is_gateway_timeout(&self) -> bool {
        self.code == Some(ErrorCode::GatewayTimeout) || (self.code.is_none() && self.status == 504)
    }

    /// Whether the device is not connected or not subscribed to methods (404103).
    pub fn is_device_offline(&self) -> bool {
        self.code == Some(ErrorCode::DeviceNotOnline)
    }

    /// Whether the device does not exist (404001).
    pub fn is_device_not_found(&self) -> bool {
        self.code == Some(ErrorCode::DeviceNotFound)
    }

    /// Whether an `If-Match` precondition failed (412).
    pub fn is_precondition_failed(&self) -> bool {
        self.status == 412
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status)?;
        match (&self.code_name, self.numeric_code) {
            (Some(name), Some(n)) => write!(f, " {name} ({n})")?,
            (Some(name), None) => write!(f, " {name}")?,
            (None, Some(n)) => write!(f, " ({n})")?,
            (None, None) => {}
        }
        write!(f, ": {}", self.message)?;
        if let Some(id) = &self.tracking_id {
            write!(f, " [tracking id {id}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServiceError {}

fn get_ci<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn table_matches_reference() {
        let rows = [
            (ErrorCode::ArgumentInvalid, 400004, 400),
            (ErrorCode::IotHubFormatError, 400006, 400),
            (ErrorCode::IotHubUnauthorizedAccess, 401002, 401),
            (ErrorCode::IotHubUnauthorized, 401003, 401),
            (ErrorCode::IotHubQuotaExceeded, 403002, 403),
            (ErrorCode::DeviceMaximumQueueDepthExceeded, 403004, 403),
            (ErrorCode::DeviceNotFound, 404001, 404),
            (ErrorCode::JobNotFound, 404002, 404),
            (ErrorCode::ModuleNotFound, 404010, 404),
            (ErrorCode::DeviceNotOnline, 404103, 404),
            (ErrorCode::DeviceAlreadyExists, 409001, 409),
            (ErrorCode::PreconditionFailed, 412001, 412),
            (ErrorCode::MessageTooLarge, 413001, 413),
            (ErrorCode::TooManyDevices, 413002, 413),
            (ErrorCode::InvalidOperation, 400003, 400),
            (ErrorCode::DeviceDefinedMultipleTimes, 400011, 400),
            (ErrorCode::BulkRegistryOperationFailure, 400013, 400),
            (ErrorCode::ConfigurationNotFound, 404005, 404),
            (ErrorCode::ConfigurationAlreadyExists, 409005, 409),
            (ErrorCode::ThrottlingException, 429001, 429),
            (ErrorCode::ServerError, 500001, 500),
            (ErrorCode::InvalidResponseWhileProxying, 502101, 502),
            (ErrorCode::ServiceUnavailable, 503001, 503),
            (ErrorCode::GatewayTimeout, 504101, 504),
        ];
        for (code, numeric, status) in rows {
            assert_eq!(code.numeric(), numeric, "{code}");
            assert_eq!(code.http_status(), status, "{code}");
            assert_eq!(ErrorCode::from_numeric(numeric), Some(code));
            assert_eq!(ErrorCode::from_name(code.name()), Some(code));
            assert_eq!(code.name().parse::<ErrorCode>(), Ok(code));
            assert_eq!(numeric.to_string().parse::<ErrorCode>(), Ok(code));
        }
        for code in ErrorCode::ALL {
            assert_eq!(
                code.numeric() / 1000,
                u32::from(code.http_status()),
                "{code}"
            );
        }
        assert!("NoSuchCode".parse::<ErrorCode>().is_err());
    }

    #[test]
    fn retry_rules() {
        let retryable: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|c| c.is_retryable())
            .copied()
            .collect();
        assert_eq!(
            retryable,
            [
                ErrorCode::ThrottlingException,
                ErrorCode::ServerError,
                ErrorCode::ServiceUnavailable
            ]
        );
        assert!(ErrorCode::GatewayTimeout.is_gateway_timeout());
        assert!(!ErrorCode::GatewayTimeout.is_retryable());
    }

    #[test]
    fn renders_the_classic_form() {
        let at = chrono::Utc
            .with_ymd_and_hms(2022, 10, 18, 20, 50, 39)
            .unwrap();
        let body = ErrorBody::with_timestamp(ErrorCode::DeviceNotFound, "d1", "abc123", at);
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"Message":"ErrorCode:DeviceNotFound;d1","ExceptionMessage":"Tracking ID:abc123-G:0-TimeStamp:10/18/2022 20:50:39"}"#
        );
    }

    #[test]
    fn parses_the_classic_form() {
        let body = br#"{"Message":"ErrorCode:DeviceNotFound;d1","ExceptionMessage":"Tracking ID:abc123-G:0-TimeStamp:10/18/2022 20:50:39"}"#;
        let err = ServiceError::parse(404, Some("DeviceNotFound"), body);
        assert_eq!(err.code, Some(ErrorCode::DeviceNotFound));
        assert_eq!(err.numeric_code, Some(404001));
        assert_eq!(err.message, "d1");
        assert_eq!(err.tracking_id.as_deref(), Some("abc123"));
        assert!(err.is_device_not_found());
        assert_eq!(
            err.to_string(),
            "HTTP 404 DeviceNotFound (404001): d1 [tracking id abc123]"
        );
    }

    #[test]
    fn parses_json_inside_message() {
        let body = br#"{"Message":"{\"errorCode\":404103,\"trackingId\":\"t-1\",\"message\":\"Timed out waiting for device to connect.\",\"info\":{\"timeout\":\"00:00:00\"},\"timestampUtc\":\"2022-10-18T20:50:39Z\"}","ExceptionMessage":""}"#;
        let err = ServiceError::parse(404, None, body);
        assert_eq!(err.code, Some(ErrorCode::DeviceNotOnline));
        assert_eq!(err.message, "Timed out waiting for device to connect.");
        assert_eq!(err.tracking_id.as_deref(), Some("t-1"));
        assert!(err.is_device_offline());
        assert!(!err.is_retryable());
    }

    #[test]
    fn parses_bare_and_lowercase_forms_and_unknown_codes() {
        let err = ServiceError::parse(504, None, br#"{"errorCode":504101,"message":"no answer"}"#);
        assert!(err.is_gateway_timeout());
        assert_eq!(err.message, "no answer");

        let err = ServiceError::parse(
            400,
            None,
            br#"{"message":"ErrorCode:SomethingNew;details"}"#,
        );
        assert_eq!(err.code, None);
        assert_eq!(err.code_name.as_deref(), Some("SomethingNew"));
        assert_eq!(err.message, "details");

        let err = ServiceError::parse(
            400,
            None,
            &serde_json::to_vec(&twin_error_body(ErrorCode::ArgumentInvalid, "bad")).unwrap(),
        );
        assert_eq!(err.code, Some(ErrorCode::ArgumentInvalid));
        assert_eq!(err.message, "bad");
    }

    #[test]
    fn never_fails_on_odd_bodies() {
        let err = ServiceError::parse(503, None, b"<html>upstream down</html>");
        assert!(err.is_retryable());
        assert_eq!(err.message, "<html>upstream down</html>");
        let err = ServiceError::parse(429, Some("ThrottlingException"), b"");
        assert!(err.is_retryable());
        assert_eq!(err.message, "ThrottlingException");
        let err = ServiceError::parse(502, None, &[0xff, 0xfe]);
        assert!(!err.is_retryable());
        let err = ServiceError::parse(500, None, b"[1,2]");
        assert_eq!(err.message, "[1,2]");
        let err = ServiceError::parse(500, None, b"");
        assert_eq!(err.message, "HTTP 500");
    }

    #[test]
    fn header_names_unknown_numeric_code() {
        let err = ServiceError::parse(400, Some("400999"), b"{}");
        assert_eq!(err.numeric_code, Some(400999));
        assert_eq!(err.code, None);
    }
}
