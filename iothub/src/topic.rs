//! The MQTT topic grammar of IoT Hub (reference §2): what devices publish ([`DeviceToHub`]),
//! what the hub publishes ([`HubToDevice`]), the filters devices subscribe to
//! ([`Subscription`]), property bags ([`PropertyBag`]) and the CONNECT username
//! ([`MqttUsername`]).
//!
//! Every type parses and formats (`Display`), and `parse(format(x)) == x`. Anything that is not
//! one of the documented topics is a [`TopicError`] that says why; the hub answers those by
//! closing the connection, as IoT Hub does.
//!
//! `$rid` is opaque: it is kept exactly as written and echoed verbatim. Rids the hub issues
//! itself must avoid `&`, `=`, `+` and `%` (Python splits naively, Node's `querystring` decodes
//! `+`); [`rid_from_counter`] makes such rids.
//!
//! ```
//! use casement_iothub::topic::{DeviceToHub, HubToDevice};
//! let t = DeviceToHub::parse("$iothub/twin/PATCH/properties/reported/?$rid=42").unwrap();
//! assert_eq!(t, DeviceToHub::ReportedPatch { rid: "42".into() });
//! let answer = HubToDevice::TwinResponse { status: 204, rid: "42".into(), version: Some(7) };
//! assert_eq!(answer.to_string(), "$iothub/twin/res/204/?$rid=42&$version=7");
//! ```

use std::fmt;
use std::str::FromStr;

use crate::encoding::{decode_component as decode, encode_component as encode};

/// Subscription filter for twin responses.
pub const TWIN_RESPONSE_FILTER: &str = "$iothub/twin/res/#";
/// Subscription filter for desired-property notifications.
pub const DESIRED_PATCH_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";
/// Subscription filter for direct-method requests.
pub const METHODS_FILTER: &str = "$iothub/methods/POST/#";
/// The longest `$rid` accepted (SDKs use 36-character UUIDs).
pub const MAX_RID_LEN: usize = 128;
/// At most this many subscriptions per device (reference §2).
pub const MAX_SUBSCRIPTIONS: usize = 5;

/// Why a topic, filter, property bag or username was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not a topic IoT Hub supports in this direction.
    #[error("unsupported topic {topic:?}: {reason}")]
    Unsupported {
        /// The topic (truncated).
        topic: String,
        /// What was expected.
        reason: String,
    },
    /// A topic that needs `$rid` has none, or an empty one.
    #[error("topic {topic:?} has no $rid")]
    MissingRid {
        /// The topic (truncated).
        topic: String,
    },
    /// A `$rid` that is too long or contains characters that cannot be echoed.
    #[error("topic {topic:?}: invalid $rid: {reason}")]
    InvalidRid {
        /// The topic (truncated).
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// A status or `$version` that is not a number.
    #[error("topic {topic:?}: {field} {value:?} is not a valid number")]
    InvalidNumber {
        /// The topic (truncated).
        topic: String,
        /// `status` or `$version`.
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// A desired-property notification without `$version`.
    #[error("topic {topic:?} has no $version")]
    MissingVersion {
        /// The topic (truncated).
        topic: String,
    },
    /// A topic or filter that names another device or module than the connected one.
    #[error("topic {topic:?} names {found:?}, but the client is {expected:?}")]
    WrongIdentity {
        /// The topic (truncated).
        topic: String,
        /// The connected client id.
        expected: String,
        /// The id in the topic.
        found: String,
    },
    /// A malformed property bag.
    #[error("invalid property bag: {reason}")]
    InvalidPropertyBag {
        /// What is wrong.
        reason: String,
    },
    /// A malformed CONNECT username.
    #[error("invalid MQTT username {username:?}: {reason}")]
    InvalidUsername {
        /// The username (truncated).
        username: String,
        /// What is wrong.
        reason: String,
    },
}

/// An MQTT property bag: URL-encoded `k=v&k2=v2`. `key` alone is a null value, `key=` the
/// empty string. Keys and values are stored decoded; order is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyBag {
    entries: Vec<(String, Option<String>)>,
}

/// System property keys (`$.mid` and friends).
pub mod system {
    /// Message id.
    pub const MESSAGE_ID: &str = "$.mid";
    /// Correlation id.
    pub const CORRELATION_ID: &str = "$.cid";
    /// User id.
    pub const USER_ID: &str = "$.uid";
    /// Destination (`/devices/{id}/messages/deviceBound` on C2D).
    pub const TO: &str = "$.to";
    /// Content type.
    pub const CONTENT_TYPE: &str = "$.ct";
    /// Content encoding.
    pub const CONTENT_ENCODING: &str = "$.ce";
    /// Absolute expiry time.
    pub const EXPIRY: &str = "$.exp";
    /// Digital-twin interface id.
    pub const INTERFACE_ID: &str = "$.ifid";
    /// Module output name.
    pub const OUTPUT_NAME: &str = "$.on";
    /// Acknowledgement mode of a C2D message (`none`, `positive`, `negative`, `full`).
    pub const IOTHUB_ACK: &str = "iothub-ack";
    /// Every system key.
    pub const ALL: &[&str] = &[
        MESSAGE_ID,
        CORRELATION_ID,
        USER_ID,
        TO,
        CONTENT_TYPE,
        CONTENT_ENCODING,
        EXPIRY,
        INTERFACE_ID,
        OUTPUT_NAME,
    ];
}

impl PropertyBag {
    /// An empty bag.
    pub fn new() -> PropertyBag {
        PropertyBag::default()
    }

    /// Parses `k=v&k2&k3=` (keys and values URL-decoded, `+` kept literally). Empty input is
    /// an empty bag; empty entries (`a=1&&b=2`, a trailing `&`) are skipped; an empty key or a
    /// repeated key is an error.
    pub fn parse(s: &str) -> Result<PropertyBag, TopicError> {
        let mut bag = PropertyBag::new();
        for entry in s.split('&').filter(|e| !e.is_empty()) {
            let (key, value) = match entry.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (entry, None),
            };
            let key = decode(key).ok_or_else(|| TopicError::InvalidPropertyBag {
                reason: format!("key {:?} is not valid URL-encoded UTF-8", truncate(key)),
            })?;
            if key.is_empty() {
                return Err(TopicError::InvalidPropertyBag {
                    reason: "empty key".into(),
                });
            }
            let value = match value {
                Some(v) => Some(decode(v).ok_or_else(|| TopicError::InvalidPropertyBag {
                    reason: format!("value of {key:?} is not valid URL-encoded UTF-8"),
                })?),
                None => None,
            };
            if bag.contains_key(&key) {
                return Err(TopicError::InvalidPropertyBag {
                    reason: format!("key {key:?} appears twice"),
                });
            }
            bag.entries.push((key, value));
        }
        Ok(bag)
    }

    /// Sets `key` (replacing an existing entry in place); `None` is a null value.
    pub fn set(&mut self, key: impl Into<String>, value: Option<String>) -> &mut Self {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key, value)),
        }
        self
    }

    /// Builder form of [`set`](PropertyBag::set) with a string value.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.set(key, Some(value.into()));
        self
    }

    /// `Some(Some(v))` for `key=v`, `Some(None)` for a bare `key`, `None` when absent.
    pub fn get(&self, key: &str) -> Option<Option<&str>> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }

    /// The value of `key` when present and not null.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).flatten()
    }

    /// Whether `key` is present (with or without a value).
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Option<String>> {
        let index = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(index).1)
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Entries whose keys are not system keys (`$.…`, `iothub-ack`).
    pub fn custom(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.iter()
            .filter(|(k, _)| !k.starts_with("$.") && *k != system::IOTHUB_ACK)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `$.mid`.
    pub fn message_id(&self) -> Option<&str> {
        self.value(system::MESSAGE_ID)
    }

    /// `$.cid`.
    pub fn correlation_id(&self) -> Option<&str> {
        self.value(system::CORRELATION_ID)
    }

    /// `$.ct`.
    pub fn content_type(&self) -> Option<&str> {
        self.value(system::CONTENT_TYPE)
    }

    /// `$.ce`.
    pub fn content_encoding(&self) -> Option<&str> {
        self.value(system::CONTENT_ENCODING)
    }
}

impl fmt::Display for PropertyBag {
    /// URL-encodes keys and values (`$` too, as Python and the service do).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (key, value)) in self.entries.iter().enumerate() {
            if index > 0 {
                f.write_str("&")?;
            }
            write!(f, "{}", encode(key))?;
            if let Some(value) = value {
                write!(f, "={}", encode(value))?;
            }
        }
        Ok(())
    }
}

impl FromStr for PropertyBag {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PropertyBag::parse(s)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for PropertyBag {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut bag = PropertyBag::new();
        for (k, v) in iter {
            bag.set(k, Some(v.into()));
        }
        bag
    }
}

/// A PUBLISH from a device to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceToHub {
    /// `$iothub/twin/GET/?$rid={rid}`: read the twin's properties.
    TwinGet {
        /// Request id, verbatim.
        rid: String,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`: merge-patch reported properties.
    ReportedPatch {
        /// Request id, verbatim.
        rid: String,
    },
    /// `$iothub/methods/res/{status}/?$rid={rid}`: the answer to a direct method.
    MethodResponse {
        /// The device's status code.
        status: i32,
        /// The request id the hub issued, verbatim.
        rid: String,
    },
    /// `devices/{id}/messages/events/{bag}` (or `devices/{id}/modules/{m}/messages/events/…`).
    Telemetry {
        /// Device id (URL-decoded).
        device: String,
        /// Module id (URL-decoded), for a module.
        module: Option<String>,
        /// Message properties.
        properties: PropertyBag,
    },
}

impl DeviceToHub {
    /// Parses a topic a device published to.
    pub fn parse(topic: &str) -> Result<DeviceToHub, TopicError> {
        if topic.starts_with("$iothub/") {
            let (path, query) = split_query(topic);
            let params = Params::parse(query);
            match path {
                "$iothub/twin/GET/" => Ok(DeviceToHub::TwinGet {
                    rid: params.rid(topic)?,
                }),
                "$iothub/twin/PATCH/properties/reported/" => Ok(DeviceToHub::ReportedPatch {
                    rid: params.rid(topic)?,
                }),
                "$iothub/twin/PATCH/properties/desired/" => Err(unsupported(
                    topic,
                    "devices cannot write desired properties; publish reported patches to $iothub/twin/PATCH/properties/reported/?$rid={rid}",
                )),
                _ => {
                    if let Some(status) = path
                        .strip_prefix("$iothub/methods/res/")
                        .and_then(|s| s.strip_suffix('/'))
                    {
                        let status = parse_number(topic, "status", status)?;
                        return Ok(DeviceToHub::MethodResponse {
                            status,
                            rid: params.rid(topic)?,
                        });
                    }
                    Err(unsupported(
                        topic,
                        "devices publish to $iothub/twin/GET/?$rid=…, $iothub/twin/PATCH/properties/reported/?$rid=…, $iothub/methods/res/{status}/?$rid=… or devices/{id}/messages/events/",
                    ))
                }
            }
        } else if let Some(rest) = topic.strip_prefix("devices/") {
            let (device, rest) = split_segment(rest);
            let (module, rest) = match rest.strip_prefix("modules/") {
                Some(rest) => {
                    let (module, rest) = split_segment(rest);
                    (Some(module), rest)
                }
                None => (None, rest),
            };
            let bag = match rest {
                "messages/events" => "",
                _ => rest.strip_prefix("messages/events/").ok_or_else(|| {
                    unsupported(
                        topic,
                        "devices publish telemetry to devices/{id}/messages/events/{properties}",
                    )
                })?,
            };
            if device.is_empty() || module.is_some_and(str::is_empty) {
                return Err(unsupported(topic, "empty device or module id"));
            }
            Ok(DeviceToHub::Telemetry {
                device: decode_id(device),
                module: module.map(decode_id),
                properties: PropertyBag::parse(bag)?,
            })
        } else {
            Err(unsupported(
                topic,
                "device topics start with $iothub/ or devices/{id}/",
            ))
        }
    }

    /// Parses a topic published by the client `device_id`/`module_id`, rejecting telemetry that
    /// names another identity. Accepts the id raw (Node) or URL-encoded (Python).
    pub fn parse_for(
        topic: &str,
        device_id: &str,
        module_id: Option<&str>,
    ) -> Result<DeviceToHub, TopicError> {
        let parsed = DeviceToHub::parse(topic)?;
        if let DeviceToHub::Telemetry { .. } = &parsed {
            check_identity(topic, device_id, module_id)?;
        }
        Ok(parsed)
    }

    /// The request id, for the twin and method variants.
    pub fn rid(&self) -> Option<&str> {
        match self {
            DeviceToHub::TwinGet { rid }
            | DeviceToHub::ReportedPatch { rid }
            | DeviceToHub::MethodResponse { rid, .. } => Some(rid),
            DeviceToHub::Telemetry { .. } => None,
        }
    }
}

impl fmt::Display for DeviceToHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceToHub::TwinGet { rid } => write!(f, "$iothub/twin/GET/?$rid={rid}"),
            DeviceToHub::ReportedPatch { rid } => {
                write!(f, "$iothub/twin/PATCH/properties/reported/?$rid={rid}")
            }
            DeviceToHub::MethodResponse { status, rid } => {
                write!(f, "$iothub/methods/res/{status}/?$rid={rid}")
            }
            DeviceToHub::Telemetry {
                device,
                module,
                properties,
            } => {
                write!(f, "devices/{}", encode(device))?;
                if let Some(module) = module {
                    write!(f, "/modules/{}", encode(module))?;
                }
                write!(f, "/messages/events/{properties}")
            }
        }
    }
}

impl FromStr for DeviceToHub {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeviceToHub::parse(s)
    }
}

/// A PUBLISH from the hub to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubToDevice {
    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version={v}]`: the answer to a twin GET or
    /// reported PATCH (`$version` = the new reported version after a PATCH).
    TwinResponse {
        /// 200 (GET), 204 (PATCH), 400, 429, 5xx.
        status: u16,
        /// The device's request id, verbatim.
        rid: String,
        /// The new reported version, after a PATCH.
        version: Option<u64>,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}`: a desired-property change.
    DesiredPatch {
        /// The desired version after the change (also in the body as `$version`).
        version: u64,
    },
    /// `$iothub/methods/POST/{name}/?$rid={rid}`: a direct-method request.
    MethodRequest {
        /// The method name.
        name: String,
        /// The hub's request id, verbatim.
        rid: String,
    },
    /// `devices/{id}/messages/devicebound/{bag}`: a cloud-to-device message.
    C2d {
        /// Device id (URL-decoded).
        device: String,
        /// Message properties.
        properties: PropertyBag,
    },
}

impl HubToDevice {
    /// Parses a topic the hub published to.
    pub fn parse(topic: &str) -> Result<HubToDevice, TopicError> {
        if topic.starts_with("$iothub/") {
            let (path, query) = split_query(topic);
            let params = Params::parse(query);
            if path == "$iothub/twin/PATCH/properties/desired/" {
                let version = params
                    .get("$version")
                    .ok_or_else(|| TopicError::MissingVersion {
                        topic: truncate(topic),
                    })?;
                return Ok(HubToDevice::DesiredPatch {
                    version: parse_number(topic, "$version", version)?,
                });
            }
            if let Some(status) = path
                .strip_prefix("$iothub/twin/res/")
                .and_then(|s| s.strip_suffix('/'))
            {
                let status = parse_number(topic, "status", status)?;
                let version = params
                    .get("$version")
                    .map(|v| parse_number(topic, "$version", v))
                    .transpose()?;
                return Ok(HubToDevice::TwinResponse {
                    status,
                    rid: params.rid(topic)?,
                    version,
                });
            }
            if let Some(name) = path
                .strip_prefix("$iothub/methods/POST/")
                .and_then(|s| s.strip_suffix('/'))
                .filter(|name| !name.is_empty() && !name.contains('/'))
            {
                return Ok(HubToDevice::MethodRequest {
                    name: name.to_owned(),
                    rid: params.rid(topic)?,
                });
            }
            Err(unsupported(
                topic,
                "the hub publishes to $iothub/twin/res/{status}/?$rid=…, $iothub/twin/PATCH/properties/desired/?$version=… or $iothub/methods/POST/{name}/?$rid=…",
            ))
        } else if let Some(rest) = topic.strip_prefix("devices/") {
            let (device, rest) = split_segment(rest);
            let bag = match rest {
                "messages/devicebound" => "",
                _ => rest.strip_prefix("messages/devicebound/").ok_or_else(|| {
                    unsupported(
                        topic,
                        "C2D topics are devices/{id}/messages/devicebound/{properties}",
                    )
                })?,
            };
            if device.is_empty() {
                return Err(unsupported(topic, "empty device id"));
            }
            Ok(HubToDevice::C2d {
                device: decode_id(device),
                properties: PropertyBag::parse(bag)?,
            })
        } else {
            Err(unsupported(
                topic,
                "hub topics start with $iothub/ or devices/{id}/",
            ))
        }
    }

    /// The request id, for twin responses and method requests.
    pub fn rid(&self) -> Option<&str> {
        match self {
            HubToDevice::TwinResponse { rid, .. } | HubToDevice::MethodRequest { rid, .. } => {
                Some(rid)
            }
            HubToDevice::DesiredPatch { .. } | HubToDevice::C2d { .. } => None,
        }
    }
}

impl fmt::Display for HubToDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubToDevice::TwinResponse {
                status,
                rid,
                version,
            } => {
                write!(f, "$iothub/twin/res/{status}/?$rid={rid}")?;
                if let Some(version) = version {
                    write!(f, "&$version={version}")?;
                }
                Ok(())
            }
            HubToDevice::DesiredPatch { version } => {
                write!(
                    f,
                    "$iothub/twin/PATCH/properties/desired/?$version={version}"
                )
            }
            HubToDevice::MethodRequest { name, rid } => {
                write!(f, "$iothub/methods/POST/{name}/?$rid={rid}")
            }
            HubToDevice::C2d { device, properties } => {
                write!(
                    f,
                    "devices/{}/messages/devicebound/{properties}",
                    encode(device)
                )
            }
        }
    }
}

impl FromStr for HubToDevice {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HubToDevice::parse(s)
    }
}

/// A SUBSCRIBE filter a device may use. Only these are supported (reference §2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subscription {
    /// `$iothub/twin/res/#`.
    TwinResponses,
    /// `$iothub/twin/PATCH/properties/desired/#`.
    DesiredPatches,
    /// `$iothub/methods/POST/#`.
    Methods,
    /// `devices/{id}/messages/devicebound/#`, or `devices/+/messages/devicebound/#` (the
    /// embedded C SDK) which is `device: None`.
    C2d {
        /// The device id, `None` for the `+` wildcard.
        device: Option<String>,
    },
    /// `devices/{id}/modules/{m}/inputs/#`: module input messages (IoT Edge).
    ModuleInputs {
        /// Device id.
        device: String,
        /// Module id.
        module: String,
    },
}

impl Subscription {
    /// Parses a subscription filter.
    pub fn parse(filter: &str) -> Result<Subscription, TopicError> {
        match filter {
            TWIN_RESPONSE_FILTER => return Ok(Subscription::TwinResponses),
            DESIRED_PATCH_FILTER => return Ok(Subscription::DesiredPatches),
            METHODS_FILTER => return Ok(Subscription::Methods),
            _ => {}
        }
        if let Some(rest) = filter.strip_prefix("devices/") {
            let (device, rest) = split_segment(rest);
            if !device.is_empty() {
                if rest == "messages/devicebound/#" {
                    let device = (device != "+").then(|| decode_id(device));
                    return Ok(Subscription::C2d { device });
                }
                if let Some(rest) = rest.strip_prefix("modules/") {
                    let (module, rest) = split_segment(rest);
                    if !module.is_empty() && rest == "inputs/#" && device != "+" && module != "+" {
                        return Ok(Subscription::ModuleInputs {
                            device: decode_id(device),
                            module: decode_id(module),
                        });
                    }
                }
            }
        }
        Err(unsupported(
            filter,
            "supported filters are $iothub/twin/res/#, $iothub/twin/PATCH/properties/desired/#, $iothub/methods/POST/# and devices/{id}/messages/devicebound/#",
        ))
    }

    /// Parses a filter from the client `device_id`/`module_id`, rejecting filters for another
    /// identity's messages.
    pub fn parse_for(
        filter: &str,
        device_id: &str,
        module_id: Option<&str>,
    ) -> Result<Subscription, TopicError> {
        let parsed = Subscription::parse(filter)?;
        match &parsed {
            Subscription::C2d { device: Some(_) } => check_identity(filter, device_id, None)?,
            Subscription::ModuleInputs { .. } => check_identity(filter, device_id, module_id)?,
            _ => {}
        }
        Ok(parsed)
    }

    /// Whether a hub-to-device publish is delivered under this subscription.
    pub fn matches(&self, publish: &HubToDevice) -> bool {
        match (self, publish) {
            (Subscription::TwinResponses, HubToDevice::TwinResponse { .. })
            | (Subscription::DesiredPatches, HubToDevice::DesiredPatch { .. })
            | (Subscription::Methods, HubToDevice::MethodRequest { .. })
            | (Subscription::C2d { device: None }, HubToDevice::C2d { .. }) => true,
            (
                Subscription::C2d {
                    device: Some(subscribed),
                },
                HubToDevice::C2d { device, .. },
            ) => subscribed == device,
            _ => false,
        }
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subscription::TwinResponses => f.write_str(TWIN_RESPONSE_FILTER),
            Subscription::DesiredPatches => f.write_str(DESIRED_PATCH_FILTER),
            Subscription::Methods => f.write_str(METHODS_FILTER),
            Subscription::C2d { device: Some(d) } => {
                write!(f, "devices/{}/messages/devicebound/#", encode(d))
            }
            Subscription::C2d { device: None } => f.write_str("devices/+/messages/devicebound/#"),
            Subscription::ModuleInputs { device, module } => {
                write!(
                    f,
                    "devices/{}/modules/{}/inputs/#",
                    encode(device),
                    encode(module)
                )
            }
        }
    }
}

impl FromStr for Subscription {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Subscription::parse(s)
    }
}

/// A request id the hub can issue for a method request: decimal digits only, so no SDK can
/// mangle it (`&`, `=`, `+` and `%` never appear).
pub fn rid_from_counter(counter: u64) -> String {
    counter.to_string()
}

/// Checks that a rid can be put in a topic and echoed: non-empty, at most [`MAX_RID_LEN`]
/// bytes, no `&`, `=`, `/`, `#`, `+`, whitespace or control characters.
pub fn validate_rid(rid: &str) -> Result<(), String> {
    if rid.is_empty() {
        return Err("empty".into());
    }
    if rid.len() > MAX_RID_LEN {
        return Err(format!("longer than {MAX_RID_LEN} bytes"));
    }
    if let Some(c) = rid
        .chars()
        .find(|c| matches!(c, '&' | '=' | '/' | '#' | '+') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("contains {c:?}"));
    }
    Ok(())
}

/// The MQTT CONNECT username: `{host}/{deviceId}[/{moduleId}]/?api-version=…&DeviceClientType=…`.
///
/// Parsing also accepts the older `{host}/{deviceId}/api-version=…` (no `?`) and no query at
/// all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUsername {
    /// The hub host name as the device knows it (may carry a port).
    pub host: String,
    /// Device id.
    pub device_id: String,
    /// Module id, for a module.
    pub module_id: Option<String>,
    /// The query parameters (`api-version`, `DeviceClientType`, `model-id`, …), decoded.
    pub params: PropertyBag,
}

impl MqttUsername {
    /// The username a device using this crate sends.
    pub fn new(host: &str, device_id: &str, module_id: Option<&str>, client_type: &str) -> Self {
        MqttUsername {
            host: host.to_owned(),
            device_id: device_id.to_owned(),
            module_id: module_id.map(str::to_owned),
            params: PropertyBag::new()
                .with("api-version", crate::rest::API_VERSION)
                .with("DeviceClientType", client_type),
        }
    }

    /// Parses a CONNECT username.
    pub fn parse(username: &str) -> Result<MqttUsername, TopicError> {
        let invalid = |reason: &str| TopicError::InvalidUsername {
            username: truncate(username),
            reason: reason.to_owned(),
        };
        let (host, rest) = username
            .split_once('/')
            .ok_or_else(|| invalid("expected {host}/{deviceId}/?api-version=…"))?;
        if host.is_empty() {
            return Err(invalid("empty host"));
        }
        // Ids cannot contain '/', so the first "/?" ends the path.
        let (path, query) = match rest.find("/?") {
            Some(i) => (&rest[..i], &rest[i + 2..]),
            None => {
                let trimmed = rest.trim_end_matches('/');
                match trimmed.rsplit_once('/') {
                    Some((path, last)) if last.starts_with("api-version=") => (path, last),
                    _ => (trimmed, ""),
                }
            }
        };
        let mut ids = path.split('/');
        let device_id = ids
            .next()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| invalid("empty device id"))?;
        let module_id = ids.next();
        if module_id.is_some_and(str::is_empty) || ids.next().is_some() {
            return Err(invalid("expected {host}/{deviceId}[/{moduleId}]/?…"));
        }
        let params = PropertyBag::parse(query).map_err(|e| invalid(&e.to_string()))?;
        Ok(MqttUsername {
            host: host.to_owned(),
            device_id: device_id.to_owned(),
            module_id: module_id.map(str::to_owned),
            params,
        })
    }

    /// `{deviceId}` or `{deviceId}/{moduleId}`: must equal the CONNECT ClientId.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(module) => format!("{}/{}", self.device_id, module),
            None => self.device_id.clone(),
        }
    }

    /// The `api-version` parameter.
    pub fn api_version(&self) -> Option<&str> {
        self.params.value("api-version")
    }
}

impl fmt::Display for MqttUsername {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/?{}", self.host, self.client_id(), self.params)
    }
}

impl FromStr for MqttUsername {
    type Err = TopicError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MqttUsername::parse(s)
    }
}

/// Query parameters of a `$iothub/…?…` topic, raw (not decoded).
struct Params<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Params<'a> {
    fn parse(query: Option<&'a str>) -> Params<'a> {
        Params(
            query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn rid(&self, topic: &str) -> Result<String, TopicError> {
        let rid =
            self.get("$rid")
                .filter(|r| !r.is_empty())
                .ok_or_else(|| TopicError::MissingRid {
                    topic: truncate(topic),
                })?;
        if rid.len() > MAX_RID_LEN {
            return Err(TopicError::InvalidRid {
                topic: truncate(topic),
                reason: format!("longer than {MAX_RID_LEN} bytes"),
            });
        }
        if rid.chars().any(|c| c.is_control() || c == '#' || c == '+') {
            return Err(TopicError::InvalidRid {
                topic: truncate(topic),
                reason: "contains a control or wildcard character".into(),
            });
        }
        Ok(rid.to_owned())
    }
}

fn split_query(topic: &str) -> (&str, Option<&str>) {
    match topic.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (topic, None),
    }
}

fn split_segment(s: &str) -> (&str, &str) {
    s.split_once('/').unwrap_or((s, ""))
}

fn parse_number<T: FromStr>(
    topic: &str,
    field: &'static str,
    value: &str,
) -> Result<T, TopicError> {
    value.parse().map_err(|_| TopicError::InvalidNumber {
        topic: truncate(topic),
        field,
        value: truncate(value),
    })
}

/// The raw (as written) device and module segments of a `devices/{d}[/modules/{m}]/…` topic.
fn raw_ids(topic: &str) -> (&str, Option<&str>) {
    let rest = topic.strip_prefix("devices/").unwrap_or("");
    let (device, rest) = split_segment(rest);
    let module = rest
        .strip_prefix("modules/")
        .map(|rest| split_segment(rest).0);
    (device, module)
}

/// Checks the ids of a `devices/…` topic or filter against the connected identity. The id may
/// be written raw (Node) or URL-encoded (Python), nothing else.
fn check_identity(topic: &str, device_id: &str, module_id: Option<&str>) -> Result<(), TopicError> {
    let (found_device, found_module) = raw_ids(topic);
    let same = |raw: &str, expected: &str| raw == expected || raw == encode(expected);
    let ok = same(found_device, device_id)
        && match (found_module, module_id) {
            (None, None) => true,
            (Some(found), Some(expected)) => same(found, expected),
            _ => false,
        };
    if ok {
        return Ok(());
    }
    let join = |d: &str, m: Option<&str>| match m {
        Some(m) => format!("{d}/{m}"),
        None => d.to_owned(),
    };
    Err(TopicError::WrongIdentity {
        topic: truncate(topic),
        expected: join(device_id, module_id),
        found: join(
            &decode_id(found_device),
            found_module.map(decode_id).as_deref(),
        ),
    })
}

fn unsupported(topic: &str, reason: &str) -> TopicError {
    TopicError::Unsupported {
        topic: truncate(topic),
        reason: reason.to_owned(),
    }
}

/// Decodes an id segment; a segment that does not decode is taken as written.
fn decode_id(s: &str) -> String {
    decode(s).unwrap_or_else(|| s.to_owned())
}

fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        s.to_owned()
    } else {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_device_topic() {
        let cases = [
            (
                "$iothub/twin/GET/?$rid=8f14e45f-ceea-467f-a0e6-1c0c6e9b2e1c",
                DeviceToHub::TwinGet {
                    rid: "8f14e45f-ceea-467f-a0e6-1c0c6e9b2e1c".into(),
                },
            ),
            (
                "$iothub/twin/PATCH/properties/reported/?$rid=2",
                DeviceToHub::ReportedPatch { rid: "2".into() },
            ),
            (
                "$iothub/methods/res/200/?$rid=830243",
                DeviceToHub::MethodResponse {
                    status: 200,
                    rid: "830243".into(),
                },
            ),
            (
                "$iothub/methods/res/-1/?$rid=7",
                DeviceToHub::MethodResponse {
                    status: -1,
                    rid: "7".into(),
                },
            ),
            (
                "devices/dev1/messages/events/",
                DeviceToHub::Telemetry {
                    device: "dev1".into(),
                    module: None,
                    properties: PropertyBag::new(),
                },
            ),
            (
                "devices/dev1/modules/agent/messages/events/%24.mid=m1&%24.ct=application%2Fjson&temp=21",
                DeviceToHub::Telemetry {
                    device: "dev1".into(),
                    module: Some("agent".into()),
                    properties: PropertyBag::new()
                        .with("$.mid", "m1")
                        .with("$.ct", "application/json")
                        .with("temp", "21"),
                },
            ),
        ];
        for (topic, expected) in cases {
            assert_eq!(DeviceToHub::parse(topic).unwrap(), expected, "{topic}");
        }
        // Without the trailing slash, as the docs also allow.
        assert!(matches!(
            DeviceToHub::parse("devices/dev1/messages/events"),
            Ok(DeviceToHub::Telemetry { .. })
        ));
    }

    #[test]
    fn rid_is_kept_verbatim() {
        let t = DeviceToHub::parse("$iothub/twin/GET/?$rid=a%2Bb&extra=1").unwrap();
        assert_eq!(t.rid(), Some("a%2Bb"));
        assert_eq!(t.to_string(), "$iothub/twin/GET/?$rid=a%2Bb");
    }

    #[test]
    fn rejects_other_device_topics_with_reasons() {
        let err = DeviceToHub::parse("$iothub/twin/GET/").unwrap_err();
        assert!(matches!(err, TopicError::MissingRid { .. }), "{err}");
        let err = DeviceToHub::parse("$iothub/twin/GET/?$rid=").unwrap_err();
        assert!(matches!(err, TopicError::MissingRid { .. }), "{err}");
        let err = DeviceToHub::parse("$iothub/methods/res/ok/?$rid=1").unwrap_err();
        assert!(
            matches!(
                err,
                TopicError::InvalidNumber {
                    field: "status",
                    ..
                }
            ),
            "{err}"
        );
        let err = DeviceToHub::parse("$iothub/twin/PATCH/properties/desired/?$rid=1").unwrap_err();
        assert!(err.to_string().contains("cannot write desired"), "{err}");
        let err = DeviceToHub::parse("$iothub/twin/GET?$rid=1").unwrap_err();
        assert!(matches!(err, TopicError::Unsupported { .. }), "{err}");
        let err = DeviceToHub::parse("devices/dev1/messages/devicebound/").unwrap_err();
        assert!(err.to_string().contains("messages/events"), "{err}");
        assert!(DeviceToHub::parse("devices//messages/events/").is_err());
        assert!(DeviceToHub::parse("foo/bar").is_err());
        assert!(DeviceToHub::parse("").is_err());
        let long = format!("$iothub/twin/GET/?$rid={}", "r".repeat(MAX_RID_LEN + 1));
        assert!(matches!(
            DeviceToHub::parse(&long),
            Err(TopicError::InvalidRid { .. })
        ));
        let err = DeviceToHub::parse("devices/d/messages/events/a=%ff").unwrap_err();
        assert!(
            matches!(err, TopicError::InvalidPropertyBag { .. }),
            "{err}"
        );
    }

    #[test]
    fn telemetry_must_name_the_connected_identity() {
        assert!(DeviceToHub::parse_for("devices/dev1/messages/events/", "dev1", None).is_ok());
        let err =
            DeviceToHub::parse_for("devices/dev2/messages/events/", "dev1", None).unwrap_err();
        assert_eq!(
            err,
            TopicError::WrongIdentity {
                topic: "devices/dev2/messages/events/".into(),
                expected: "dev1".into(),
                found: "dev2".into()
            }
        );
        // Module identity must match too.
        assert!(
            DeviceToHub::parse_for("devices/dev1/modules/m/messages/events/", "dev1", Some("m"))
                .is_ok()
        );
        assert!(
            DeviceToHub::parse_for("devices/dev1/modules/x/messages/events/", "dev1", Some("m"))
                .is_err()
        );
        assert!(
            DeviceToHub::parse_for("devices/dev1/messages/events/", "dev1", Some("m")).is_err()
        );
        assert!(
            DeviceToHub::parse_for("devices/dev1/modules/m/messages/events/", "dev1", None)
                .is_err()
        );
        // Python percent-encodes the id; Node writes it raw. Both are the same device.
        assert!(DeviceToHub::parse_for("devices/a%3Ab/messages/events/", "a:b", None).is_ok());
        assert!(DeviceToHub::parse_for("devices/a:b/messages/events/", "a:b", None).is_ok());
        // But an id that merely decodes to ours is not ours.
        assert!(DeviceToHub::parse_for("devices/a%41/messages/events/", "aA", None).is_err());
        // Twin and method topics carry no id.
        assert!(DeviceToHub::parse_for("$iothub/twin/GET/?$rid=1", "dev1", None).is_ok());
    }

    #[test]
    fn parses_every_hub_topic() {
        let cases = [
            (
                "$iothub/twin/res/200/?$rid=abc",
                HubToDevice::TwinResponse {
                    status: 200,
                    rid: "abc".into(),
                    version: None,
                },
            ),
            (
                "$iothub/twin/res/204/?$rid=abc&$version=7",
                HubToDevice::TwinResponse {
                    status: 204,
                    rid: "abc".into(),
                    version: Some(7),
                },
            ),
            (
                "$iothub/twin/PATCH/properties/desired/?$version=12",
                HubToDevice::DesiredPatch { version: 12 },
            ),
            (
                "$iothub/methods/POST/reboot/?$rid=830243",
                HubToDevice::MethodRequest {
                    name: "reboot".into(),
                    rid: "830243".into(),
                },
            ),
            (
                "devices/dev1/messages/devicebound/%24.mid=42&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&iothub-ack=full&color=red",
                HubToDevice::C2d {
                    device: "dev1".into(),
                    properties: PropertyBag::new()
                        .with("$.mid", "42")
                        .with("$.to", "/devices/dev1/messages/deviceBound")
                        .with("iothub-ack", "full")
                        .with("color", "red"),
                },
            ),
        ];
        for (topic, expected) in cases {
            let parsed = HubToDevice::parse(topic).unwrap();
            assert_eq!(parsed, expected, "{topic}");
            assert_eq!(parsed.to_string().parse::<HubToDevice>().unwrap(), expected);
        }
        assert!(matches!(
            HubToDevice::parse("$iothub/twin/PATCH/properties/desired/"),
            Err(TopicError::MissingVersion { .. })
        ));
        assert!(matches!(
            HubToDevice::parse("$iothub/twin/res/200/?$rid=1&$version=x"),
            Err(TopicError::InvalidNumber {
                field: "$version",
                ..
            })
        ));
        assert!(HubToDevice::parse("$iothub/methods/POST//?$rid=1").is_err());
        assert!(HubToDevice::parse("$iothub/methods/POST/reboot/?x=1").is_err());
        assert!(HubToDevice::parse("devices/d/messages/events/").is_err());
    }

    #[test]
    fn formats_exactly_as_observed() {
        assert_eq!(
            HubToDevice::MethodRequest {
                name: "reboot".into(),
                rid: rid_from_counter(830243)
            }
            .to_string(),
            "$iothub/methods/POST/reboot/?$rid=830243"
        );
        assert_eq!(
            DeviceToHub::MethodResponse {
                status: 200,
                rid: "830243".into()
            }
            .to_string(),
            "$iothub/methods/res/200/?$rid=830243"
        );
        assert_eq!(
            HubToDevice::TwinResponse {
                status: 200,
                rid: "u".into(),
                version: None
            }
            .to_string(),
            "$iothub/twin/res/200/?$rid=u"
        );
        assert_eq!(
            HubToDevice::DesiredPatch { version: 3 }.to_string(),
            "$iothub/twin/PATCH/properties/desired/?$version=3"
        );
        assert_eq!(
            DeviceToHub::Telemetry {
                device: "a:b".into(),
                module: None,
                properties: PropertyBag::new().with("$.mid", "1"),
            }
            .to_string(),
            "devices/a%3Ab/messages/events/%24.mid=1"
        );
    }

    #[test]
    fn subscriptions() {
        let cases = [
            ("$iothub/twin/res/#", Subscription::TwinResponses),
            (
                "$iothub/twin/PATCH/properties/desired/#",
                Subscription::DesiredPatches,
            ),
            ("$iothub/methods/POST/#", Subscription::Methods),
            (
                "devices/dev1/messages/devicebound/#",
                Subscription::C2d {
                    device: Some("dev1".into()),
                },
            ),
            (
                "devices/+/messages/devicebound/#",
                Subscription::C2d { device: None },
            ),
            (
                "devices/dev1/modules/m1/inputs/#",
                Subscription::ModuleInputs {
                    device: "dev1".into(),
                    module: "m1".into(),
                },
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(Subscription::parse(filter).unwrap(), expected, "{filter}");
            assert_eq!(expected.to_string(), filter);
        }
        for bad in [
            "#",
            "$iothub/#",
            "$iothub/twin/#",
            "$iothub/twin/res/+",
            "$iothub/methods/POST/reboot/#",
            "devices/dev1/messages/events/#",
            "devices/dev1/messages/devicebound",
            "devices//messages/devicebound/#",
        ] {
            let err = Subscription::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("supported filters are"),
                "{bad}: {err}"
            );
        }
        assert!(
            Subscription::parse_for("devices/dev1/messages/devicebound/#", "dev1", None).is_ok()
        );
        assert!(
            Subscription::parse_for("devices/dev2/messages/devicebound/#", "dev1", None).is_err()
        );
        assert!(Subscription::parse_for("devices/+/messages/devicebound/#", "dev1", None).is_ok());
        assert!(
            Subscription::parse_for("devices/dev1/modules/m/inputs/#", "dev1", Some("n")).is_err()
        );
    }

    #[test]
    fn subscription_matching() {
        let method = HubToDevice::MethodRequest {
            name: "reboot".into(),
            rid: "1".into(),
        };
        let desired = HubToDevice::DesiredPatch { version: 2 };
        let response = HubToDevice::TwinResponse {
            status: 200,
            rid: "1".into(),
            version: None,
        };
        let c2d = HubToDevice::C2d {
            device: "dev1".into(),
            properties: PropertyBag::new(),
        };
        assert!(Subscription::Methods.matches(&method));
        assert!(!Subscription::Methods.matches(&desired));
        assert!(Subscription::DesiredPatches.matches(&desired));
        assert!(Subscription::TwinResponses.matches(&response));
        assert!(!Subscription::TwinResponses.matches(&desired));
        assert!(Subscription::C2d { device: None }.matches(&c2d));
        assert!(
            Subscription::C2d {
                device: Some("dev1".into())
            }
            .matches(&c2d)
        );
        assert!(
            !Subscription::C2d {
                device: Some("dev2".into())
            }
            .matches(&c2d)
        );
    }

    #[test]
    fn property_bag_null_vs_empty() {
        let bag = PropertyBag::parse("a&b=&c=1").unwrap();
        assert_eq!(bag.get("a"), Some(None));
        assert_eq!(bag.get("b"), Some(Some("")));
        assert_eq!(bag.get("c"), Some(Some("1")));
        assert_eq!(bag.get("d"), None);
        assert_eq!(bag.value("a"), None);
        assert_eq!(bag.to_string(), "a&b=&c=1");
    }

    #[test]
    fn property_bag_decoding_and_errors() {
        let bag = PropertyBag::parse("%24.mid=x&k=a+b%20c&&").unwrap();
        assert_eq!(bag.message_id(), Some("x"));
        // '+' stays a plus sign (not form encoding).
        assert_eq!(bag.value("k"), Some("a+b c"));
        assert_eq!(bag.len(), 2);
        assert_eq!(bag.custom().count(), 1);
        assert!(PropertyBag::parse("").unwrap().is_empty());
        assert!(matches!(
            PropertyBag::parse("=v"),
            Err(TopicError::InvalidPropertyBag { .. })
        ));
        assert!(matches!(
            PropertyBag::parse("a=1&a=2"),
            Err(TopicError::InvalidPropertyBag { .. })
        ));
        // A stray % is taken literally, as Python and Node do.
        assert_eq!(PropertyBag::parse("%zz=1").unwrap().value("%zz"), Some("1"));
        let mut bag = PropertyBag::new().with("x", "1");
        bag.set("x", None);
        assert_eq!(bag.to_string(), "x");
        assert_eq!(bag.remove("x"), Some(None));
        assert!(bag.is_empty());
        let collected: PropertyBag = [("k", "v&=/")].into_iter().collect();
        assert_eq!(collected.to_string(), "k=v%26%3D%2F");
    }

    #[test]
    fn rids() {
        assert_eq!(rid_from_counter(0), "0");
        assert_eq!(validate_rid(&rid_from_counter(u64::MAX)), Ok(()));
        assert!(validate_rid("").is_err());
        assert!(validate_rid("a&b").is_err());
        assert!(validate_rid("a=b").is_err());
        assert!(validate_rid("a+b").is_err());
        assert!(validate_rid(&"x".repeat(MAX_RID_LEN + 1)).is_err());
        assert_eq!(validate_rid("8f14e45f-ceea-467f-a0e6-1c0c6e9b2e1c"), Ok(()));
    }

    #[test]
    fn usernames() {
        let observed = "127.0.0.1/dev1/?api-version=2021-04-12&DeviceClientType=azure-iot-device%2F1.18.4%20(node%20v20.20.2%3B%20Debian%2012%3B%20x64)";
        let u = MqttUsername::parse(observed).unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.device_id, "dev1");
        assert_eq!(u.module_id, None);
        assert_eq!(u.api_version(), Some("2021-04-12"));
        assert_eq!(
            u.params.value("DeviceClientType"),
            Some("azure-iot-device/1.18.4 (node v20.20.2; Debian 12; x64)")
        );
        let u = MqttUsername::parse("localhost:8883/dev?1/agent/?api-version=2019-10-01").unwrap();
        assert_eq!(u.host, "localhost:8883");
        assert_eq!(u.client_id(), "dev?1/agent");
        let u = MqttUsername::parse("hub.azure-devices.net/dev1/api-version=2016-11-14").unwrap();
        assert_eq!(u.device_id, "dev1");
        assert_eq!(u.api_version(), Some("2016-11-14"));
        let u = MqttUsername::parse("hub/dev1").unwrap();
        assert_eq!(u.api_version(), None);
        for bad in [
            "",
            "hub",
            "/dev1/?a=1",
            "hub//?a=1",
            "hub/a/b/c/?x=1",
            "hub/a//?x",
        ] {
            assert!(MqttUsername::parse(bad).is_err(), "{bad:?}");
        }
        let ours = MqttUsername::new(
            "localhost:8883",
            "dev1",
            None,
            "casement-agent/0.1.0 (linux)",
        );
        let text = ours.to_string();
        assert_eq!(
            text,
            "localhost:8883/dev1/?api-version=2021-04-12&DeviceClientType=casement-agent%2F0.1.0%20%28linux%29"
        );
        assert_eq!(MqttUsername::parse(&text).unwrap(), ours);
    }

    fn bag_strategy() -> impl Strategy<Value = PropertyBag> {
        proptest::collection::vec(("\\PC{1,12}", proptest::option::of("\\PC{0,12}")), 0..6)
            .prop_map(|entries| {
                let mut bag = PropertyBag::new();
                for (k, v) in entries {
                    bag.set(k, v);
                }
                bag
            })
    }

    proptest! {
        #[test]
        fn property_bags_round_trip(bag in bag_strategy()) {
            let parsed = PropertyBag::parse(&bag.to_string()).unwrap();
            prop_assert_eq!(parsed, bag);
        }

        #[test]
        fn telemetry_round_trips(device in "[A-Za-z0-9._:@$'()!*,=%?-]{1,20}", module in proptest::option::of("[A-Za-z0-9-]{1,8}"), bag in bag_strategy()) {
            let t = DeviceToHub::Telemetry { device: device.clone(), module: module.clone(), properties: bag };
            let text = t.to_string();
            prop_assert_eq!(DeviceToHub::parse(&text).unwrap(), t);
            prop_assert!(DeviceToHub::parse_for(&text, &device, module.as_deref()).is_ok());
        }

        #[test]
        fn hub_topics_round_trip(status in 100u16..600, rid in "[A-Za-z0-9-]{1,36}", version in proptest::option::of(any::<u64>()), name in "[A-Za-z0-9_.-]{1,20}") {
            for t in [
                HubToDevice::TwinResponse { status, rid: rid.clone(), version },
                HubToDevice::DesiredPatch { version: version.unwrap_or(1) },
                HubToDevice::MethodRequest { name: name.clone(), rid: rid.clone() },
            ] {
                prop_assert_eq!(HubToDevice::parse(&t.to_string()).unwrap(), t);
            }
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,120}") {
            let _ = DeviceToHub::parse(&s);
            let _ = DeviceToHub::parse_for(&s, "dev1", None);
            let _ = HubToDevice::parse(&s);
            let _ = Subscription::parse_for(&s, "dev1", Some("m"));
            let _ = PropertyBag::parse(&s);
            let _ = MqttUsername::parse(&s);
            for prefix in ["$iothub/twin/", "$iothub/methods/", "devices/", "devices/d/messages/events/"] {
                let _ = DeviceToHub::parse(&format!("{prefix}{s}"));
                let _ = HubToDevice::parse(&format!("{prefix}{s}"));
            }
        }
    }
}
