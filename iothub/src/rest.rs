//! Service REST API bodies and conventions (reference §3).
//!
//! Serde types in IoT Hub's camelCase for [`Twin`], [`Device`], [`TwinPatch`],
//! [`MethodRequest`]/[`MethodResponse`] and [`QueryRequest`]; the header names and paths both
//! the hub and its clients use; device-id rules; and ETag handling. Deserialization is lenient
//! where the service is (missing fields, `null` for objects, unknown fields ignored) so a client
//! reads real Azure answers; the validation methods are strict so the hub enforces IoT Hub's
//! limits.
//!
//! ```
//! use casement_iothub::rest::{self, MethodRequest};
//! let request: MethodRequest = serde_json::from_str(
//!     r#"{"methodName":"reboot","payload":null,"timeoutInSeconds":30,"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}"#,
//! ).unwrap();
//! request.validate().unwrap();
//! assert_eq!(request.response_timeout_secs(), 30);
//! assert_eq!(rest::methods_path("dev1", None), "/twins/dev1/methods");
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::ErrorCode;
use crate::twin::{self, SectionKind, TwinError};

/// The REST API version every path takes (`?api-version=2021-04-12`), and the MQTT username's.
pub const API_VERSION: &str = "2021-04-12";
/// The content type of every JSON request and response.
pub const CONTENT_TYPE_JSON: &str = "application/json; charset=utf-8";
/// Query request header: page size.
pub const HEADER_MAX_ITEM_COUNT: &str = "x-ms-max-item-count";
/// Query request and response header: continuation token (present only while pages remain).
pub const HEADER_CONTINUATION: &str = "x-ms-continuation";
/// Query response header: the kind of items (`twin`, `deviceJob`, `jobResponse`, `raw`).
pub const HEADER_ITEM_TYPE: &str = "x-ms-item-type";
/// Conditional request header.
pub const HEADER_IF_MATCH: &str = "If-Match";
/// The path of twin queries.
pub const QUERY_PATH: &str = "/devices/query";
/// The path of the device list.
pub const DEVICES_PATH: &str = "/devices";

/// Default and largest query page size.
pub const MAX_QUERY_PAGE_SIZE: usize = 100;
/// Default `responseTimeoutInSeconds`.
pub const DEFAULT_RESPONSE_TIMEOUT_SECS: u64 = 30;
/// Smallest `responseTimeoutInSeconds`.
pub const MIN_RESPONSE_TIMEOUT_SECS: u64 = 5;
/// Largest `responseTimeoutInSeconds`.
pub const MAX_RESPONSE_TIMEOUT_SECS: u64 = 300;
/// Default `connectTimeoutInSeconds` (0: the device must already be online).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 0;
/// Largest `connectTimeoutInSeconds`.
pub const MAX_CONNECT_TIMEOUT_SECS: u64 = 300;
/// Largest direct-method payload, request or response (128 KB).
pub const MAX_METHOD_PAYLOAD_BYTES: usize = 128 * 1024;
/// Longest device or module id.
pub const MAX_ID_LEN: usize = 128;
/// Longest method name this crate accepts.
pub const MAX_METHOD_NAME_LEN: usize = 128;

/// Characters other than ASCII alphanumerics allowed in device and module ids.
pub const ID_EXTRA_CHARS: &str = "-.%_*?!(),:=@$'";

/// A REST request that breaks IoT Hub's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// A device id with the wrong length or characters.
    #[error("invalid device id {id:?}: {reason}")]
    InvalidDeviceId {
        /// The id (truncated).
        id: String,
        /// Which rule.
        reason: String,
    },
    /// A module id with the wrong length or characters.
    #[error("invalid module id {id:?}: {reason}")]
    InvalidModuleId {
        /// The id (truncated).
        id: String,
        /// Which rule.
        reason: String,
    },
    /// A method name that cannot be put in a topic.
    #[error("invalid method name {name:?}: {reason}")]
    InvalidMethodName {
        /// The name (truncated).
        name: String,
        /// Which rule.
        reason: String,
    },
    /// A method timeout out of range.
    #[error("{field} must be between {min} and {max} seconds, got {value}")]
    TimeoutOutOfRange {
        /// `responseTimeoutInSeconds` or `connectTimeoutInSeconds`.
        field: &'static str,
        /// The value given.
        value: u64,
        /// Lower bound.
        min: u64,
        /// Upper bound.
        max: u64,
    },
    /// A method payload over [`MAX_METHOD_PAYLOAD_BYTES`].
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Its serialized size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A bad `x-ms-max-item-count`.
    #[error("x-ms-max-item-count must be a positive integer, got {value:?}")]
    InvalidPageSize {
        /// The header value (truncated).
        value: String,
    },
    /// A service patch that writes reported properties.
    #[error("properties.reported: reported properties are written by the device, not the service")]
    ReportedNotWritable,
    /// A twin patch that breaks the twin rules.
    #[error(transparent)]
    Twin(#[from] TwinError),
}

impl RestError {
    /// The IoT Hub error code to answer with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            RestError::PayloadTooLarge { .. } => ErrorCode::MessageTooLarge,
            RestError::Twin(e) => e.error_code(),
            _ => ErrorCode::ArgumentInvalid,
        }
    }
}

/// Checks a device id: 1–128 characters, ASCII alphanumerics and `- . % _ * ? ! ( ) , : = @ $ '`.
pub fn validate_device_id(id: &str) -> Result<(), RestError> {
    check_id(id).map_err(|reason| RestError::InvalidDeviceId {
        id: id.chars().take(MAX_ID_LEN).collect(),
        reason,
    })
}

/// Checks a module id (same rules as a device id).
pub fn validate_module_id(id: &str) -> Result<(), RestError> {
    check_id(id).map_err(|reason| RestError::InvalidModuleId {
        id: id.chars().take(MAX_ID_LEN).collect(),
        reason,
    })
}

fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("ids cannot be empty".into());
    }
    if id.chars().count() > MAX_ID_LEN {
        return Err(format!("longer than {MAX_ID_LEN} characters"));
    }
    if id == "." || id == ".." {
        // URL parsers (WHATWG's, urllib3's) remove "." and ".." path segments, encoded or
        // not, so no HTTP client can address such a device: `/twins/..` becomes `/`.
        return Err(
            "\".\" and \"..\" cannot be addressed in a URL (HTTP clients remove such path \
             segments); choose an id with other characters"
                .into(),
        );
    }
    if let Some(c) = id
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || ID_EXTRA_CHARS.contains(c)))
    {
        return Err(format!(
            "character {c:?} is not allowed; use ASCII letters, digits and {ID_EXTRA_CHARS}"
        ));
    }
    Ok(())
}

/// A validated device id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates and wraps `id`.
    pub fn new(id: impl Into<String>) -> Result<DeviceId, RestError> {
        let id = id.into();
        validate_device_id(&id)?;
        Ok(DeviceId(id))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = RestError;
    fn try_from(id: String) -> Result<Self, Self::Error> {
        DeviceId::new(id)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

impl FromStr for DeviceId {
    type Err = RestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceId::new(s)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a direct-method name: 1–128 bytes, no whitespace or control characters, and none of
/// `/ ? # + % & =` (it becomes a topic segment that SDKs split and decode).
pub fn validate_method_name(name: &str) -> Result<(), RestError> {
    let invalid = |reason: String| RestError::InvalidMethodName {
        name: name.chars().take(64).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("method names cannot be empty".into()));
    }
    if name.len() > MAX_METHOD_NAME_LEN {
        return Err(invalid(format!("longer than {MAX_METHOD_NAME_LEN} bytes")));
    }
    if let Some(c) = name.chars().find(|&c| {
        c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '+' | '%' | '&' | '=')
    }) {
        return Err(invalid(format!("character {c:?} is not allowed")));
    }
    Ok(())
}

/// URL-encodes one path segment (`encodeURIComponent`, as the Node SDK does for ids).
pub fn encode_segment(segment: &str) -> String {
    crate::encoding::encode_component(segment)
}

/// `/twins/{id}` or `/twins/{id}/modules/{m}`, ids encoded.
pub fn twin_path(device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        Some(m) => format!(
            "/twins/{}/modules/{}",
            encode_segment(device_id),
            encode_segment(m)
        ),
        None => format!("/twins/{}", encode_segment(device_id)),
    }
}

/// `/twins/{id}[/modules/{m}]/methods`.
pub fn methods_path(device_id: &str, module_id: Option<&str>) -> String {
    format!("{}/methods", twin_path(device_id, module_id))
}

/// `/devices/{id}`.
pub fn device_path(device_id: &str) -> String {
    format!("/devices/{}", encode_segment(device_id))
}

/// Appends `?api-version=2021-04-12` (or `&…` when `path` has a query already).
pub fn with_api_version(path: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}api-version={API_VERSION}")
}

/// `enabled` or `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum DeviceStatus {
    /// The device may connect.
    #[default]
    Enabled,
    /// The device may not connect.
    Disabled,
}

/// `Connected` or `Disconnected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum ConnectionState {
    /// Connected over MQTT or AMQP.
    Connected,
    /// Not connected.
    #[default]
    Disconnected,
}

/// How a device authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum AuthenticationType {
    /// Symmetric keys.
    #[default]
    Sas,
    /// Self-signed certificate thumbprints.
    SelfSigned,
    /// A CA-signed certificate.
    CertificateAuthority,
    /// No authentication (modules managed by IoT Edge).
    None,
}

/// A device's symmetric keys (base64). Node sends `""` when none are given; the hub must then
/// generate them ([`SymmetricKey::is_blank`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKey {
    /// Primary key.
    #[serde(default)]
    pub primary_key: Option<String>,
    /// Secondary key.
    #[serde(default)]
    pub secondary_key: Option<String>,
}

impl SymmetricKey {
    /// Whether both keys are absent or empty.
    pub fn is_blank(&self) -> bool {
        let blank = |k: &Option<String>| k.as_deref().is_none_or(|k| k.trim().is_empty());
        blank(&self.primary_key) && blank(&self.secondary_key)
    }

    /// Checks that the keys present are base64 and not empty.
    pub fn validate(&self) -> Result<(), String> {
        for (name, key) in [
            ("primaryKey", &self.primary_key),
            ("secondaryKey", &self.secondary_key),
        ] {
            if let Some(key) = key.as_deref().filter(|k| !k.is_empty()) {
                match base64::engine::general_purpose::STANDARD.decode(key) {
                    Ok(bytes) if !bytes.is_empty() => {}
                    _ => return Err(format!("authentication.symmetricKey.{name} is not base64")),
                }
            }
        }
        Ok(())
    }
}

/// Certificate thumbprints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    /// Primary thumbprint.
    #[serde(default)]
    pub primary_thumbprint: Option<String>,
    /// Secondary thumbprint.
    #[serde(default)]
    pub secondary_thumbprint: Option<String>,
}

/// `authentication` of a device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`.
    #[serde(rename = "type", default)]
    pub kind: AuthenticationType,
    /// Keys, for `sas`.
    #[serde(default)]
    pub symmetric_key: Option<SymmetricKey>,
    /// Thumbprints, for `selfSigned`.
    #[serde(default)]
    pub x509_thumbprint: Option<X509Thumbprint>,
}

/// `capabilities` of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Whether the device is an IoT Edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// A device identity (`GET/PUT /devices/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Device id.
    pub device_id: String,
    /// Changes when a device is deleted and recreated with the same id.
    #[serde(default)]
    pub generation_id: Option<String>,
    /// ETag of the identity.
    #[serde(default)]
    pub etag: Option<String>,
    /// `enabled` or `disabled`.
    #[serde(default)]
    pub status: Option<DeviceStatus>,
    /// Why the status was set.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// `Connected` or `Disconnected`.
    #[serde(default)]
    pub connection_state: Option<ConnectionState>,
    /// When the connection state last changed.
    #[serde(default, with = "crate::time::serde_timestamp_opt")]
    pub connection_state_updated_time: Option<DateTime<Utc>>,
    /// When the status last changed.
    #[serde(default, with = "crate::time::serde_timestamp_opt")]
    pub status_updated_time: Option<DateTime<Utc>>,
    /// When the device last connected or sent something.
    #[serde(default, with = "crate::time::serde_timestamp_opt")]
    pub last_activity_time: Option<DateTime<Utc>>,
    /// Queued cloud-to-device messages.
    #[serde(default)]
    pub cloud_to_device_message_count: Option<u64>,
    /// Credentials.
    #[serde(default)]
    pub authentication: Option<Authentication>,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// Edge device scope.
    #[serde(default)]
    pub device_scope: Option<String>,
    /// Parent edge scopes.
    #[serde(default)]
    pub parent_scopes: Option<Vec<String>>,
}

/// `properties` of a REST twin: both sections with their `$metadata` and `$version`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Properties {
    /// `properties.desired`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub desired: Map<String, Value>,
    /// `properties.reported`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub reported: Map<String, Value>,
}

/// A device twin (`GET /twins/{id}`, and each item of a `SELECT *` query).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Twin {
    /// Device id.
    pub device_id: String,
    /// Module id, for a module twin (`null` otherwise).
    #[serde(default)]
    pub module_id: Option<String>,
    /// ETag of the twin; changes on every write.
    #[serde(default)]
    pub etag: Option<String>,
    /// ETag of the device identity.
    #[serde(default)]
    pub device_etag: Option<String>,
    /// Twin version; increases on every write.
    #[serde(default)]
    pub version: Option<u64>,
    /// `enabled` or `disabled`.
    #[serde(default)]
    pub status: Option<DeviceStatus>,
    /// Why the status was set.
    #[serde(default)]
    pub status_reason: Option<String>,
    /// When the status last changed.
    #[serde(default, with = "crate::time::serde_timestamp_opt")]
    pub status_update_time: Option<DateTime<Utc>>,
    /// `Connected` or `Disconnected`.
    #[serde(default)]
    pub connection_state: Option<ConnectionState>,
    /// When the device last connected or sent something.
    #[serde(default, with = "crate::time::serde_timestamp_opt")]
    pub last_activity_time: Option<DateTime<Utc>>,
    /// Queued cloud-to-device messages.
    #[serde(default)]
    pub cloud_to_device_message_count: Option<u64>,
    /// `sas`, `selfSigned`, …
    #[serde(default)]
    pub authentication_type: Option<AuthenticationType>,
    /// Certificate thumbprints.
    #[serde(default)]
    pub x509_thumbprint: Option<X509Thumbprint>,
    /// Plug and Play model id.
    #[serde(default)]
    pub model_id: Option<String>,
    /// Capabilities.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// Tags (service-only metadata).
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Map<String, Value>,
    /// Desired and reported properties.
    #[serde(default, deserialize_with = "null_as_default")]
    pub properties: Properties,
}

impl Twin {
    /// `properties.desired` without `$metadata` and `$version`.
    pub fn desired(&self) -> Map<String, Value> {
        twin::user_properties(&Value::Object(self.properties.desired.clone()))
    }

    /// `properties.reported` without `$metadata` and `$version`.
    pub fn reported(&self) -> Map<String, Value> {
        twin::user_properties(&Value::Object(self.properties.reported.clone()))
    }

    /// `properties.desired.$version`.
    pub fn desired_version(&self) -> Option<u64> {
        self.properties
            .desired
            .get(twin::VERSION_KEY)
            .and_then(Value::as_u64)
    }

    /// `properties.reported.$version`.
    pub fn reported_version(&self) -> Option<u64> {
        self.properties
            .reported
            .get(twin::VERSION_KEY)
            .and_then(Value::as_u64)
    }
}

/// The body of `PATCH /twins/{id}` (and `PUT`): `{"tags":{…},"properties":{"desired":{…}}}`.
/// Unknown fields (a whole twin sent back) are ignored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TwinPatch {
    /// Tags merge patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Value>,
    /// Properties patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<TwinPatchProperties>,
    /// ETag, when the body carries one (jobs' `updateTwin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// `properties` of a [`TwinPatch`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TwinPatchProperties {
    /// Desired merge patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Value>,
    /// Reported properties cannot be written by the service; kept so the hub can refuse them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Value>,
}

impl TwinPatch {
    /// A patch of desired properties only.
    pub fn desired(patch: Value) -> TwinPatch {
        TwinPatch {
            properties: Some(TwinPatchProperties {
                desired: Some(patch),
                reported: None,
            }),
            ..TwinPatch::default()
        }
    }

    /// A patch of tags only.
    pub fn tags(patch: Value) -> TwinPatch {
        TwinPatch {
            tags: Some(patch),
            ..TwinPatch::default()
        }
    }

    /// The desired part, if any.
    pub fn desired_patch(&self) -> Option<&Value> {
        self.properties.as_ref().and_then(|p| p.desired.as_ref())
    }

    /// Checks both parts against the twin rules ([`twin::validate_patch`]) and refuses
    /// reported properties. Section sizes are checked when the patch is applied.
    pub fn validate(&self) -> Result<(), RestError> {
        if let Some(tags) = &self.tags {
            twin::validate_patch(SectionKind::Tags, tags)?;
        }
        if let Some(properties) = &self.properties {
            if properties.reported.is_some() {
                return Err(RestError::ReportedNotWritable);
            }
            if let Some(desired) = &properties.desired {
                twin::validate_patch(SectionKind::Desired, desired)?;
            }
        }
        Ok(())
    }
}

/// The body of `POST /twins/{id}/methods`. Unknown fields (Node's `timeoutInSeconds`) are
/// ignored; absent timeouts take their defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MethodRequest {
    /// The method to invoke.
    pub method_name: String,
    /// The JSON payload (`null` when none).
    #[serde(default)]
    pub payload: Value,
    /// How long to wait for the device's answer, 5–300 s (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_timeout_in_seconds: Option<u64>,
    /// How long to wait for the device to connect, 0–300 s (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_in_seconds: Option<u64>,
}

impl MethodRequest {
    /// A request with both timeouts set explicitly (as the Node SDK sends them).
    pub fn new(method_name: impl Into<String>, payload: Value, response_timeout_secs: u64) -> Self {
        MethodRequest {
            method_name: method_name.into(),
            payload,
            response_timeout_in_seconds: Some(response_timeout_secs),
            connect_timeout_in_seconds: Some(DEFAULT_CONNECT_TIMEOUT_SECS),
        }
    }

    /// The effective response timeout in seconds.
    pub fn response_timeout_secs(&self) -> u64 {
        self.response_timeout_in_seconds
            .unwrap_or(DEFAULT_RESPONSE_TIMEOUT_SECS)
    }

    /// The effective connect timeout in seconds.
    pub fn connect_timeout_secs(&self) -> u64 {
        self.connect_timeout_in_seconds
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS)
    }

    /// Checks the method name, the timeout ranges and the payload size.
    pub fn validate(&self) -> Result<(), RestError> {
        validate_method_name(&self.method_name)?;
        let response = self.response_timeout_secs();
        if !(MIN_RESPONSE_TIMEOUT_SECS..=MAX_RESPONSE_TIMEOUT_SECS).contains(&response) {
            return Err(RestError::TimeoutOutOfRange {
                field: "responseTimeoutInSeconds",
                value: response,
                min: MIN_RESPONSE_TIMEOUT_SECS,
                max: MAX_RESPONSE_TIMEOUT_SECS,
            });
        }
        let connect = self.connect_timeout_secs();
        if connect > MAX_CONNECT_TIMEOUT_SECS {
            return Err(RestError::TimeoutOutOfRange {
                field: "connectTimeoutInSeconds",
                value: connect,
                min: 0,
                max: MAX_CONNECT_TIMEOUT_SECS,
            });
        }
        check_payload_size(&self.payload)
    }
}

/// The answer of `POST /twins/{id}/methods`: the device's status and JSON payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResponse {
    /// The status the device answered with.
    pub status: i32,
    /// The device's payload (`null` when it sent none).
    #[serde(default)]
    pub payload: Value,
}

/// Checks a method payload against [`MAX_METHOD_PAYLOAD_BYTES`] (serialized size).
pub fn check_payload_size(payload: &Value) -> Result<(), RestError> {
    let size = serde_json::to_vec(payload)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_METHOD_PAYLOAD_BYTES {
        return Err(RestError::PayloadTooLarge {
            size,
            max: MAX_METHOD_PAYLOAD_BYTES,
        });
    }
    Ok(())
}

/// Reads an MQTT body that should be JSON or empty: empty or whitespace-only (the SDKs send
/// `" "` for a twin GET) is `null`.
pub fn payload_from_bytes(body: &[u8]) -> Result<Value, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
}

/// The body of `POST /devices/query`. The answer is a JSON array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRequest {
    /// The query text.
    pub query: String,
}

/// The `x-ms-item-type` of a query answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryItemType {
    /// Twins (`SELECT *`).
    Twin,
    /// Device jobs.
    DeviceJob,
    /// Job responses.
    JobResponse,
    /// Projections and aggregates.
    Raw,
}

impl QueryItemType {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryItemType::Twin => "twin",
            QueryItemType::DeviceJob => "deviceJob",
            QueryItemType::JobResponse => "jobResponse",
            QueryItemType::Raw => "raw",
        }
    }

    /// Parses a header value (exact).
    pub fn parse(s: &str) -> Option<QueryItemType> {
        [
            QueryItemType::Twin,
            QueryItemType::DeviceJob,
            QueryItemType::JobResponse,
            QueryItemType::Raw,
        ]
        .into_iter()
        .find(|t| t.as_str() == s.trim())
    }
}

impl fmt::Display for QueryItemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The page size from `x-ms-max-item-count`: absent → [`MAX_QUERY_PAGE_SIZE`]; larger values
/// are capped to it; zero, negative or non-numeric values are an error.
pub fn page_size(header: Option<&str>) -> Result<usize, RestError> {
    let Some(text) = header.map(str::trim) else {
        return Ok(MAX_QUERY_PAGE_SIZE);
    };
    match text.parse::<u64>() {
        Ok(n) if n > 0 => Ok(usize::try_from(n)
            .unwrap_or(MAX_QUERY_PAGE_SIZE)
            .min(MAX_QUERY_PAGE_SIZE)),
        _ => Err(RestError::InvalidPageSize {
            value: text.chars().take(32).collect(),
        }),
    }
}

/// An `If-Match` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*` or `"*"`: any current version.
    Any,
    /// A specific ETag (unquoted).
    Tag(String),
}

impl IfMatch {
    /// Reads `If-Match`, accepting quoted, unquoted, weak (`W/"…"`) and `*`.
    pub fn parse(header: &str) -> IfMatch {
        let tag = unquote_etag(header);
        if tag == "*" {
            IfMatch::Any
        } else {
            IfMatch::Tag(tag.to_owned())
        }
    }

    /// Whether the resource's current ETag (quoted or not) satisfies the condition.
    pub fn matches(&self, current: &str) -> bool {
        match self {
            IfMatch::Any => true,
            IfMatch::Tag(tag) => tag == unquote_etag(current),
        }
    }
}

/// An ETag without quotes or a weak prefix: `W/"abc"` → `abc`.
pub fn unquote_etag(etag: &str) -> &str {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag)
}

/// An ETag for an `If-Match` header, as the SDKs send it: quoted (`"abc"`), weak prefix
/// dropped, and `*` (any version) as it is.
pub fn quote_etag(etag: &str) -> String {
    match unquote_etag(etag) {
        "*" => "*".to_owned(),
        tag => format!("\"{tag}\""),
    }
}

/// The ETag of a document at `version`: base64 of the big-endian version, the service's
/// shape (`AAAAAAAAAAc=` for 7).
pub fn etag_from_version(version: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(version.to_be_bytes())
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn device_ids() {
        for ok in [
            "dev1",
            "a-b.c%d_e*f?g!h(i)j,k:l=m@n$o'p",
            &"x".repeat(128),
            "...",
            ".a",
            "a..",
        ] {
            assert_eq!(validate_device_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "a b",
            "a#b",
            "a+b",
            "é",
            &"x".repeat(129),
            "a\u{0}",
            ".",
            "..",
        ] {
            let err = validate_device_id(bad).unwrap_err();
            assert!(matches!(err, RestError::InvalidDeviceId { .. }), "{bad}");
        }
        let err = validate_device_id("..").unwrap_err().to_string();
        assert!(err.contains("cannot be addressed in a URL"), "{err}");
        assert!(validate_module_id("m/1").is_err());
        let id: DeviceId = "dev1".parse().unwrap();
        assert_eq!(id.as_str(), "dev1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"dev1\"");
        assert!(serde_json::from_str::<DeviceId>("\"bad id\"").is_err());
        assert_eq!(
            serde_json::from_str::<DeviceId>("\"ok\"").unwrap(),
            DeviceId::new("ok").unwrap()
        );
    }

    #[test]
    fn paths_encode_ids() {
        assert_eq!(twin_path("dev1", None), "/twins/dev1");
        assert_eq!(twin_path("a?b", Some("m:1")), "/twins/a%3Fb/modules/m%3A1");
        assert_eq!(methods_path("a%b", None), "/twins/a%25b/methods");
        assert_eq!(device_path("d$"), "/devices/d%24");
        assert_eq!(
            with_api_version("/twins/d"),
            "/twins/d?api-version=2021-04-12"
        );
        assert_eq!(
            with_api_version("/devices?top=5"),
            "/devices?top=5&api-version=2021-04-12"
        );
    }

    #[test]
    fn twin_reads_the_reference_document() {
        let text = r#"{"deviceId":"d1","moduleId":null,"etag":"AAAAAAAAAAc=","deviceEtag":"NzA1","version":2,
 "status":"enabled","statusReason":null,"statusUpdateTime":"0001-01-01T00:00:00Z",
 "connectionState":"Connected","lastActivityTime":"2026-11-29T01:04:10.1234567Z","cloudToDeviceMessageCount":0,
 "authenticationType":"sas","x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null},
 "modelId":"","capabilities":{"iotEdge":false},"tags":{},
 "properties":{
  "desired":{"k":1,"$metadata":{"$lastUpdated":"2026-11-29T01:04:10.000Z","$lastUpdatedVersion":4,"k":{"$lastUpdated":"2026-11-29T01:04:10.000Z","$lastUpdatedVersion":4}},"$version":4},
  "reported":{"k":1,"$metadata":{"$lastUpdated":"2026-11-29T01:04:10.000Z","k":{"$lastUpdated":"2026-11-29T01:04:10.000Z"}},"$version":7}}}"#;
        let twin: Twin = serde_json::from_str(text).unwrap();
        assert_eq!(twin.device_id, "d1");
        assert_eq!(twin.status, Some(DeviceStatus::Enabled));
        assert_eq!(twin.connection_state, Some(ConnectionState::Connected));
        assert_eq!(twin.authentication_type, Some(AuthenticationType::Sas));
        assert_eq!(twin.desired_version(), Some(4));
        assert_eq!(twin.reported_version(), Some(7));
        assert_eq!(Value::Object(twin.desired()), json!({"k": 1}));
        assert_eq!(Value::Object(twin.reported()), json!({"k": 1}));
        assert_eq!(
            twin.last_activity_time
                .map(crate::time::format_timestamp)
                .as_deref(),
            Some("2026-11-29T01:04:10.123Z")
        );

        // What the hub writes back has every field, camelCase, in the reference's order.
        let out = serde_json::to_value(&twin).unwrap();
        let keys: Vec<&str> = out
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "deviceId",
                "moduleId",
                "etag",
                "deviceEtag",
                "version",
                "status",
                "statusReason",
                "statusUpdateTime",
                "connectionState",
                "lastActivityTime",
                "cloudToDeviceMessageCount",
                "authenticationType",
                "x509Thumbprint",
                "modelId",
                "capabilities",
                "tags",
                "properties"
            ]
        );
        assert_eq!(out["moduleId"], Value::Null);
        assert_eq!(out["capabilities"], json!({"iotEdge": false}));
        // Round trip (timestamps are written with milliseconds, so compare what is written).
        let again: Twin = serde_json::from_value(out.clone()).unwrap();
        assert_eq!(serde_json::to_value(&again).unwrap(), out);
    }

    #[test]
    fn twin_tolerates_sparse_and_null_fields() {
        let twin: Twin = serde_json::from_str(
            r#"{"deviceId":"d","tags":null,"properties":{"desired":null},"somethingNew":1}"#,
        )
        .unwrap();
        assert!(twin.tags.is_empty());
        assert!(twin.properties.desired.is_empty());
        assert_eq!(twin.desired_version(), None);
        assert!(
            serde_json::from_str::<Twin>(r#"{"tags":{}}"#).is_err(),
            "deviceId is required"
        );
    }

    #[test]
    fn device_matches_the_reference_fields() {
        let text = r#"{"deviceId":"d1","generationId":"638","etag":"MQ==","status":"enabled","statusReason":null,
 "connectionState":"Disconnected","connectionStateUpdatedTime":"0001-01-01T00:00:00","statusUpdatedTime":"0001-01-01T00:00:00Z",
 "lastActivityTime":"2026-01-01T00:00:00Z","cloudToDeviceMessageCount":0,
 "authentication":{"type":"sas","symmetricKey":{"primaryKey":"YWJj","secondaryKey":"ZGVm"},
   "x509Thumbprint":{"primaryThumbprint":null,"secondaryThumbprint":null}},
 "capabilities":{"iotEdge":false},"deviceScope":"","parentScopes":[]}"#;
        let device: Device = serde_json::from_str(text).unwrap();
        let auth = device.authentication.clone().unwrap();
        assert_eq!(auth.kind, AuthenticationType::Sas);
        assert_eq!(
            auth.symmetric_key.clone().unwrap().primary_key.as_deref(),
            Some("YWJj")
        );
        assert!(!auth.symmetric_key.clone().unwrap().is_blank());
        assert_eq!(auth.symmetric_key.unwrap().validate(), Ok(()));
        let out = serde_json::to_value(&device).unwrap();
        assert_eq!(out["authentication"]["type"], "sas");
        assert_eq!(out["status"], "enabled");
        assert_eq!(out["connectionState"], "Disconnected");
        assert_eq!(out["statusUpdatedTime"], "0001-01-01T00:00:00.000Z");
        assert_eq!(out["parentScopes"], json!([]));
        assert_eq!(serde_json::from_value::<Device>(out).unwrap(), device);

        // Node's create body: empty keys that the hub must generate.
        let create: Device = serde_json::from_str(
            r#"{"deviceId":"d2","authentication":{"symmetricKey":{"primaryKey":"","secondaryKey":""}}}"#,
        )
        .unwrap();
        assert!(
            create
                .authentication
                .unwrap()
                .symmetric_key
                .unwrap()
                .is_blank()
        );
        let bad = SymmetricKey {
            primary_key: Some("not base64!".into()),
            secondary_key: None,
        };
        assert!(bad.validate().unwrap_err().contains("primaryKey"));
    }

    #[test]
    fn twin_patch() {
        let patch: TwinPatch = serde_json::from_str(
            r#"{"tags":{"role":"gateway"},"properties":{"desired":{"maintenance":{"policy":"p"}}}}"#,
        )
        .unwrap();
        assert_eq!(patch.validate(), Ok(()));
        assert_eq!(
            patch.desired_patch(),
            Some(&json!({"maintenance": {"policy": "p"}}))
        );
        assert_eq!(
            serde_json::to_value(TwinPatch::desired(json!({"a": 1}))).unwrap(),
            json!({"properties": {"desired": {"a": 1}}})
        );
        assert_eq!(
            serde_json::to_value(TwinPatch::tags(json!({"a": 1}))).unwrap(),
            json!({"tags": {"a": 1}})
        );

        let reported: TwinPatch =
            serde_json::from_str(r#"{"properties":{"reported":{"a":1}}}"#).unwrap();
        assert_eq!(reported.validate(), Err(RestError::ReportedNotWritable));
        let bad: TwinPatch =
            serde_json::from_str(r#"{"properties":{"desired":{"maintenance":{"a b":1}}}}"#)
                .unwrap();
        let err = bad.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("properties.desired.maintenance: invalid key"),
            "{err}"
        );
        assert_eq!(err.error_code(), ErrorCode::ArgumentInvalid);
        let bad_tags: TwinPatch = serde_json::from_str(r#"{"tags":[1]}"#).unwrap();
        assert!(bad_tags.validate().is_err());
        // A whole twin sent as a patch: unknown fields are ignored.
        let whole: TwinPatch =
            serde_json::from_str(r#"{"deviceId":"d","etag":"x","tags":{}}"#).unwrap();
        assert_eq!(whole.etag.as_deref(), Some("x"));
        assert_eq!(whole.validate(), Ok(()));
    }

    #[test]
    fn method_requests() {
        // Node: both timeouts plus the unknown timeoutInSeconds.
        let node: MethodRequest = serde_json::from_str(
            r#"{"methodName":"reboot","payload":null,"timeoutInSeconds":30,"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0}"#,
        )
        .unwrap();
        assert_eq!(node.validate(), Ok(()));
        // Python: no connect timeout; defaults apply.
        let python: MethodRequest = serde_json::from_str(
            r#"{"methodName":"reboot","payload":{"policy":"p"},"responseTimeoutInSeconds":60}"#,
        )
        .unwrap();
        assert_eq!(python.response_timeout_secs(), 60);
        assert_eq!(python.connect_timeout_secs(), 0);
        let bare: MethodRequest = serde_json::from_str(r#"{"methodName":"reboot"}"#).unwrap();
        assert_eq!(bare.payload, Value::Null);
        assert_eq!(bare.response_timeout_secs(), 30);

        for (response, connect, ok) in [
            (5, 0, true),
            (300, 300, true),
            (4, 0, false),
            (301, 0, false),
            (30, 301, false),
        ] {
            let request = MethodRequest {
                connect_timeout_in_seconds: Some(connect),
                ..MethodRequest::new("reboot", Value::Null, response)
            };
            assert_eq!(request.validate().is_ok(), ok, "{response} {connect}");
        }
        let err = MethodRequest::new("reboot", Value::Null, 1)
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "responseTimeoutInSeconds must be between 5 and 300 seconds, got 1"
        );
        assert!(
            serde_json::from_str::<MethodRequest>(
                r#"{"methodName":"r","responseTimeoutInSeconds":-1}"#
            )
            .is_err()
        );

        for name in ["", "a/b", "a b", "a?b", "a#b", "a+b", "a%b", "a&b", "a=b"] {
            assert!(
                MethodRequest::new(name, Value::Null, 30)
                    .validate()
                    .is_err(),
                "{name:?}"
            );
        }
        let big = MethodRequest::new("m", json!("x".repeat(MAX_METHOD_PAYLOAD_BYTES)), 30);
        let err = big.validate().unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::MessageTooLarge);

        assert_eq!(
            serde_json::to_value(MethodRequest::new("reboot", json!({"a": 1}), 30)).unwrap(),
            json!({"methodName":"reboot","payload":{"a":1},"responseTimeoutInSeconds":30,"connectTimeoutInSeconds":0})
        );
    }

    #[test]
    fn method_responses_and_payloads() {
        let r = MethodResponse {
            status: 200,
            payload: json!("Reboot started"),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"status":200,"payload":"Reboot started"}"#
        );
        let r: MethodResponse = serde_json::from_str(r#"{"status":500}"#).unwrap();
        assert_eq!(r.payload, Value::Null);
        assert_eq!(payload_from_bytes(b" ").unwrap(), Value::Null);
        assert_eq!(payload_from_bytes(b"").unwrap(), Value::Null);
        assert_eq!(
            payload_from_bytes(b"\"Reboot started\"").unwrap(),
            json!("Reboot started")
        );
        assert!(payload_from_bytes(b"{oops").is_err());
    }

    #[test]
    fn query_headers() {
        assert_eq!(
            serde_json::to_string(&QueryRequest {
                query: "SELECT * FROM devices".into()
            })
            .unwrap(),
            r#"{"query":"SELECT * FROM devices"}"#
        );
        assert_eq!(page_size(None), Ok(100));
        assert_eq!(page_size(Some("10")), Ok(10));
        assert_eq!(page_size(Some(" 1000 ")), Ok(100));
        for bad in ["0", "-1", "ten", ""] {
            assert!(page_size(Some(bad)).is_err(), "{bad:?}");
        }
        for t in [
            QueryItemType::Twin,
            QueryItemType::DeviceJob,
            QueryItemType::JobResponse,
            QueryItemType::Raw,
        ] {
            assert_eq!(QueryItemType::parse(t.as_str()), Some(t));
        }
        assert_eq!(QueryItemType::parse("nope"), None);
    }

    #[test]
    fn etags() {
        assert_eq!(etag_from_version(7), "AAAAAAAAAAc=");
        assert_eq!(IfMatch::parse("*"), IfMatch::Any);
        assert_eq!(IfMatch::parse("\"*\""), IfMatch::Any);
        assert_eq!(
            IfMatch::parse("\"AAAAAAAAAAc=\""),
            IfMatch::Tag("AAAAAAAAAAc=".into())
        );
        assert_eq!(
            IfMatch::parse("AAAAAAAAAAc="),
            IfMatch::Tag("AAAAAAAAAAc=".into())
        );
        assert_eq!(IfMatch::parse("W/\"abc\""), IfMatch::Tag("abc".into()));
        assert!(IfMatch::parse("\"AAAAAAAAAAc=\"").matches("AAAAAAAAAAc="));
        assert!(IfMatch::parse("AAAAAAAAAAc=").matches("\"AAAAAAAAAAc=\""));
        assert!(!IfMatch::parse("\"AAAAAAAAAAY=\"").matches("AAAAAAAAAAc="));
        assert!(IfMatch::Any.matches("anything"));
        assert_eq!(quote_etag("abc"), "\"abc\"");
        assert_eq!(quote_etag("\"abc\""), "\"abc\"");
        assert_eq!(quote_etag("*"), "*");
        assert_eq!(quote_etag("\"*\""), "*");
        assert_eq!(quote_etag("W/\"abc\""), "\"abc\"");
    }
}
