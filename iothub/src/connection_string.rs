//! Device and service connection strings (reference §1).
//!
//! `;`-separated `Key=Value` pairs, split at the **first** `=` so base64 padding survives.
//! Parsing is strict: an unknown key, a duplicate, an empty value or a missing key is an error
//! that names the key and lists the valid ones. [`Display`](std::fmt::Display) writes the
//! string back (parse → display → parse is the identity); [`Debug`] hides the secrets.
//!
//! ```
//! use casement_iothub::connection_string::{DeviceAuth, DeviceConnectionString};
//! let cs: DeviceConnectionString =
//!     "HostName=hub.example.net;DeviceId=dev1;SharedAccessKey=c2VjcmV0".parse().unwrap();
//! assert_eq!(cs.client_id(), "dev1");
//! assert_eq!(cs.resource_uri(), "hub.example.net/devices/dev1");
//! assert!(matches!(cs.auth, DeviceAuth::SharedAccessKey(_)));
//! assert_eq!(cs.to_string(), "HostName=hub.example.net;DeviceId=dev1;SharedAccessKey=c2VjcmV0");
//! ```

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

use crate::sas::{self, SasError};

/// Keys valid in a device connection string.
pub const DEVICE_KEYS: &[&str] = &[
    "HostName",
    "DeviceId",
    "ModuleId",
    "SharedAccessKey",
    "SharedAccessSignature",
    "x509",
    "GatewayHostName",
];

/// Keys valid in a service connection string.
pub const SERVICE_KEYS: &[&str] = &["HostName", "SharedAccessKeyName", "SharedAccessKey"];

/// Why a connection string was rejected. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// The string is empty.
    #[error("connection string is empty")]
    Empty,
    /// A `;`-separated part has no `=`.
    #[error("part {position} of the connection string is not Key=Value")]
    NotKeyValue {
        /// 1-based position of the part.
        position: usize,
    },
    /// A key this kind of connection string does not have.
    #[error("unknown key {key:?} in {kind} connection string{hint}; valid keys: {}", valid.join(", "))]
    UnknownKey {
        /// The key as written.
        key: String,
        /// `device` or `service`.
        kind: &'static str,
        /// A correction such as ` (did you mean "HostName"?)`, or empty.
        hint: String,
        /// The valid keys.
        valid: &'static [&'static str],
    },
    /// A key given twice.
    #[error("key {key:?} appears more than once")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// A key with an empty value.
    #[error("key {key:?} has an empty value")]
    EmptyValue {
        /// The key.
        key: String,
    },
    /// A required key is missing.
    #[error("{kind} connection string has no {key}")]
    MissingKey {
        /// The missing key.
        key: &'static str,
        /// `device` or `service`.
        kind: &'static str,
    },
    /// A device string without credentials.
    #[error(
        "device connection string has no credentials: give SharedAccessKey, SharedAccessSignature or x509=true"
    )]
    MissingCredentials,
    /// A device string with more than one kind of credential.
    #[error("device connection string has more than one credential: {0}; give exactly one")]
    ConflictingCredentials(String),
    /// A value with the wrong shape.
    #[error("{key}: {reason}")]
    InvalidValue {
        /// The key.
        key: &'static str,
        /// What is wrong and what would be right.
        reason: String,
    },
}

/// How a device authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum DeviceAuth {
    /// A symmetric key (base64); the device signs its own SAS tokens.
    SharedAccessKey(String),
    /// A ready-made SAS token (`SharedAccessSignature sr=…`); it cannot be renewed.
    SharedAccessSignature(String),
    /// An X.509 client certificate (`x509=true`); no password.
    X509,
}

impl fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceAuth::SharedAccessKey(_) => f.write_str("SharedAccessKey(<redacted>)"),
            DeviceAuth::SharedAccessSignature(_) => {
                f.write_str("SharedAccessSignature(<redacted>)")
            }
            DeviceAuth::X509 => f.write_str("X509"),
        }
    }
}

/// `HostName=…;DeviceId=…;SharedAccessKey=…[;ModuleId=…][;GatewayHostName=…]`.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceConnectionString {
    /// The hub's name as the device knows it (`HostName`); used in the MQTT username and `sr`.
    pub host_name: String,
    /// The device id.
    pub device_id: String,
    /// The module id, for a module identity.
    pub module_id: Option<String>,
    /// The credentials.
    pub auth: DeviceAuth,
    /// Where to open the socket instead of `host_name` (IoT Edge); nothing else changes.
    pub gateway_host_name: Option<String>,
}

impl DeviceConnectionString {
    /// The host to open the socket to: `GatewayHostName` when given, else `HostName`.
    pub fn socket_host(&self) -> &str {
        self.gateway_host_name.as_deref().unwrap_or(&self.host_name)
    }

    /// The MQTT ClientId: `{deviceId}` or `{deviceId}/{moduleId}`.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(module) => format!("{}/{}", self.device_id, module),
            None => self.device_id.clone(),
        }
    }

    /// The SAS resource URI, before encoding: `{host}/devices/{id}[/modules/{m}]`.
    pub fn resource_uri(&self) -> String {
        sas::device_resource_uri(&self.host_name, &self.device_id, self.module_id.as_deref())
    }

    /// The MQTT password: a fresh SAS token expiring at `expiry_unix` for a key, the given
    /// token for `SharedAccessSignature`, `None` for X.509.
    pub fn password(&self, expiry_unix: u64) -> Result<Option<String>, SasError> {
        match &self.auth {
            DeviceAuth::SharedAccessKey(key) => sas::device_token(
                &self.host_name,
                &self.device_id,
                self.module_id.as_deref(),
                key,
                expiry_unix,
            )
            .map(Some),
            DeviceAuth::SharedAccessSignature(token) => Ok(Some(token.clone())),
            DeviceAuth::X509 => Ok(None),
        }
    }
}

impl fmt::Debug for DeviceConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceConnectionString")
            .field("host_name", &self.host_name)
            .field("device_id", &self.device_id)
            .field("module_id", &self.module_id)
            .field("auth", &self.auth)
            .field("gateway_host_name", &self.gateway_host_name)
            .finish()
    }
}

impl fmt::Display for DeviceConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName={};DeviceId={}", self.host_name, self.device_id)?;
        if let Some(module) = &self.module_id {
            write!(f, ";ModuleId={module}")?;
        }
        match &self.auth {
            DeviceAuth::SharedAccessKey(key) => write!(f, ";SharedAccessKey={key}")?,
            DeviceAuth::SharedAccessSignature(sig) => write!(f, ";SharedAccessSignature={sig}")?,
            DeviceAuth::X509 => f.write_str(";x509=true")?,
        }
        if let Some(gateway) = &self.gateway_host_name {
            write!(f, ";GatewayHostName={gateway}")?;
        }
        Ok(())
    }
}

impl FromStr for DeviceConnectionString {
    type Err = ConnectionStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let pairs = split_pairs(s, DEVICE_KEYS, "device")?;
        let host_name = take(&pairs, "HostName").ok_or(ConnectionStringError::MissingKey {
            key: "HostName",
            kind: "device",
        })?;
        validate_host("HostName", &host_name)?;
        let device_id = take(&pairs, "DeviceId").ok_or(ConnectionStringError::MissingKey {
            key: "DeviceId",
            kind: "device",
        })?;
        crate::rest::validate_device_id(&device_id).map_err(|e| {
            ConnectionStringError::InvalidValue {
                key: "DeviceId",
                reason: e.to_string(),
            }
        })?;
        let module_id = take(&pairs, "ModuleId");
        if let Some(module) = &module_id {
            crate::rest::validate_module_id(module).map_err(|e| {
                ConnectionStringError::InvalidValue {
                    key: "ModuleId",
                    reason: e.to_string(),
                }
            })?;
        }
        let gateway_host_name = take(&pairs, "GatewayHostName");
        if let Some(gateway) = &gateway_host_name {
            validate_host("GatewayHostName", gateway)?;
        }

        let x509 = match take(&pairs, "x509") {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(_) => {
                return Err(ConnectionStringError::InvalidValue {
                    key: "x509",
                    reason: "must be true or false".into(),
                });
            }
        };
        let key = take(&pairs, "SharedAccessKey");
        let signature = take(&pairs, "SharedAccessSignature");
        let mut given = Vec::new();
        if key.is_some() {
            given.push("SharedAccessKey");
        }
        if signature.is_some() {
            given.push("SharedAccessSignature");
        }
        if x509 {
            given.push("x509=true");
        }
        if given.len() > 1 {
            return Err(ConnectionStringError::ConflictingCredentials(
                given.join(", "),
            ));
        }
        let auth = if let Some(key) = key {
            validate_key("SharedAccessKey", &key)?;
            DeviceAuth::SharedAccessKey(key)
        } else if let Some(token) = signature {
            sas::SasToken::parse(&token).map_err(|e| ConnectionStringError::InvalidValue {
                key: "SharedAccessSignature",
                reason: e.to_string(),
            })?;
            DeviceAuth::SharedAccessSignature(token)
        } else if x509 {
            DeviceAuth::X509
        } else {
            return Err(ConnectionStringError::MissingCredentials);
        };
        Ok(DeviceConnectionString {
            host_name,
            device_id,
            module_id,
            auth,
            gateway_host_name,
        })
    }
}

/// `HostName=…;SharedAccessKeyName=…;SharedAccessKey=…` — what the Azure CLI and the service
/// SDKs use, and what `casement hub` prints.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceConnectionString {
    /// The hub's host name (may carry a port, e.g. `localhost:8443`).
    pub host_name: String,
    /// The shared access policy, e.g. `iothubowner` or `service`.
    pub shared_access_key_name: String,
    /// The policy's key (base64).
    pub shared_access_key: String,
}

impl ServiceConnectionString {
    /// The SAS resource URI for service tokens: the host name.
    pub fn resource_uri(&self) -> &str {
        &self.host_name
    }

    /// A service SAS token (`skn` = the policy) expiring at `expiry_unix`.
    pub fn sas_token(&self, expiry_unix: u64) -> Result<String, SasError> {
        sas::service_token(
            &self.host_name,
            &self.shared_access_key_name,
            &self.shared_access_key,
            expiry_unix,
        )
    }
}

impl fmt::Debug for ServiceConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceConnectionString")
            .field("host_name", &self.host_name)
            .field("shared_access_key_name", &self.shared_access_key_name)
            .field("shared_access_key", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for ServiceConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
            self.host_name, self.shared_access_key_name, self.shared_access_key
        )
    }
}

impl FromStr for ServiceConnectionString {
    type Err = ConnectionStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let pairs = split_pairs(s, SERVICE_KEYS, "service")?;
        let get = |key: &'static str| {
            take(&pairs, key).ok_or(ConnectionStringError::MissingKey {
                key,
                kind: "service",
            })
        };
        let host_name = get("HostName")?;
        validate_host("HostName", &host_name)?;
        let shared_access_key_name = get("SharedAccessKeyName")?;
        if shared_access_key_name.contains(['&', '=', ' ', ';']) {
            return Err(ConnectionStringError::InvalidValue {
                key: "SharedAccessKeyName",
                reason: "a policy name cannot contain '&', '=', ';' or spaces".into(),
            });
        }
        let shared_access_key = get("SharedAccessKey")?;
        validate_key("SharedAccessKey", &shared_access_key)?;
        Ok(ServiceConnectionString {
            host_name,
            shared_access_key_name,
            shared_access_key,
        })
    }
}

/// Splits into `(key, value)` pairs at `;` and the first `=`, rejecting unknown, duplicate and
/// empty entries. Empty parts (a trailing `;`) are ignored.
fn split_pairs(
    s: &str,
    valid: &'static [&'static str],
    kind: &'static str,
) -> Result<Vec<(String, String)>, ConnectionStringError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ConnectionStringError::Empty);
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (index, part) in s.split(';').enumerate() {
        if part.trim().is_empty() {
            continue;
        }
        let (key, value) = part
            .split_once('=')
            .ok_or(ConnectionStringError::NotKeyValue {
                position: index + 1,
            })?;
        let key = key.trim();
        let value = value.trim();
        if !valid.contains(&key) {
            let (other_kind, other) = if kind == "device" {
                ("service", SERVICE_KEYS)
            } else {
                ("device", DEVICE_KEYS)
            };
            let hint = if let Some(v) = valid.iter().find(|v| v.eq_ignore_ascii_case(key)) {
                format!(" (did you mean {v:?}?)")
            } else if other.contains(&key) {
                format!(" (it belongs in a {other_kind} connection string)")
            } else {
                String::new()
            };
            return Err(ConnectionStringError::UnknownKey {
                key: key.to_owned(),
                kind,
                hint,
                valid,
            });
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(ConnectionStringError::DuplicateKey {
                key: key.to_owned(),
            });
        }
        if value.is_empty() {
            return Err(ConnectionStringError::EmptyValue {
                key: key.to_owned(),
            });
        }
        pairs.push((key.to_owned(), value.to_owned()));
    }
    if pairs.is_empty() {
        return Err(ConnectionStringError::Empty);
    }
    Ok(pairs)
}

fn take(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn validate_host(key: &'static str, host: &str) -> Result<(), ConnectionStringError> {
    if host.contains(|c: char| c.is_whitespace() || c == '/' || c == '?' || c == '#' || c == '@') {
        return Err(ConnectionStringError::InvalidValue {
            key,
            reason: format!(
                "{host:?} is not a host name; give a name such as \"myhub.azure-devices.net\" or \"localhost:8883\""
            ),
        });
    }
    Ok(())
}

fn validate_key(key: &'static str, value: &str) -> Result<(), ConnectionStringError> {
    match base64::engine::general_purpose::STANDARD.decode(value) {
        Ok(bytes) if !bytes.is_empty() => Ok(()),
        _ => Err(ConnectionStringError::InvalidValue {
            key,
            reason: "is not a base64-encoded key".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcw==";

    #[test]
    fn parses_device_string_and_keeps_base64_padding() {
        let cs: DeviceConnectionString =
            format!("HostName=hub.azure-devices.net;DeviceId=dev1;SharedAccessKey={KEY}")
                .parse()
                .unwrap();
        assert_eq!(cs.host_name, "hub.azure-devices.net");
        assert_eq!(cs.device_id, "dev1");
        assert_eq!(cs.module_id, None);
        assert_eq!(cs.auth, DeviceAuth::SharedAccessKey(KEY.into()));
        assert_eq!(cs.socket_host(), "hub.azure-devices.net");
        assert_eq!(cs.client_id(), "dev1");
        assert_eq!(cs.resource_uri(), "hub.azure-devices.net/devices/dev1");
    }

    #[test]
    fn module_and_gateway() {
        let cs: DeviceConnectionString = format!(
            "HostName=hub.example.net;DeviceId=dev1;ModuleId=mod1;SharedAccessKey={KEY};GatewayHostName=edge.local"
        )
        .parse()
        .unwrap();
        assert_eq!(cs.client_id(), "dev1/mod1");
        assert_eq!(cs.socket_host(), "edge.local");
        // The gateway changes only the socket, never the resource URI.
        assert_eq!(
            cs.resource_uri(),
            "hub.example.net/devices/dev1/modules/mod1"
        );
        let password = cs.password(1_800_000_000).unwrap().unwrap();
        assert!(
            password.contains("sr=hub.example.net%2Fdevices%2Fdev1%2Fmodules%2Fmod1&"),
            "{password}"
        );
    }

    #[test]
    fn sas_and_x509_credentials() {
        let token = "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=YWJj&se=1";
        let cs: DeviceConnectionString =
            format!("HostName=h;DeviceId=d;SharedAccessSignature={token}")
                .parse()
                .unwrap();
        assert_eq!(cs.auth, DeviceAuth::SharedAccessSignature(token.into()));
        assert_eq!(cs.password(0).unwrap().as_deref(), Some(token));

        let cs: DeviceConnectionString = "HostName=h;DeviceId=d;x509=true".parse().unwrap();
        assert_eq!(cs.auth, DeviceAuth::X509);
        assert_eq!(cs.password(0).unwrap(), None);
        assert_eq!(cs.to_string(), "HostName=h;DeviceId=d;x509=true");
    }

    #[test]
    fn errors_name_the_key() {
        let err = "HostName=h;DeviceId=d;SharedAccesKey=abc"
            .parse::<DeviceConnectionString>()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"SharedAccesKey\""), "{text}");
        assert!(text.contains("valid keys: HostName, DeviceId"), "{text}");

        let err = "hostname=h;DeviceId=d;x509=true"
            .parse::<DeviceConnectionString>()
            .unwrap_err();
        assert!(
            err.to_string().contains("did you mean \"HostName\""),
            "{err}"
        );

        let err = format!("HostName=h;SharedAccessKeyName=p;SharedAccessKey={KEY}")
            .parse::<DeviceConnectionString>()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("belongs in a service connection string"),
            "{err}"
        );

        assert_eq!(
            "HostName=h;HostName=i;DeviceId=d;x509=true".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::DuplicateKey {
                key: "HostName".into()
            })
        );
        assert_eq!(
            "HostName=;DeviceId=d;x509=true".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::EmptyValue {
                key: "HostName".into()
            })
        );
        assert_eq!(
            "DeviceId=d;x509=true".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::MissingKey {
                key: "HostName",
                kind: "device"
            })
        );
        assert_eq!(
            "HostName=h;x509=true".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::MissingKey {
                key: "DeviceId",
                kind: "device"
            })
        );
        assert_eq!(
            "HostName=h;DeviceId=d".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::MissingCredentials)
        );
        assert!(matches!(
            format!("HostName=h;DeviceId=d;x509=true;SharedAccessKey={KEY}")
                .parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::ConflictingCredentials(_))
        ));
        assert_eq!(
            "HostName=h;DeviceId".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::NotKeyValue { position: 2 })
        );
        assert_eq!(
            "  ".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::Empty)
        );
        assert!(matches!(
            "HostName=h;DeviceId=d;SharedAccessKey=not base64!".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::InvalidValue {
                key: "SharedAccessKey",
                ..
            })
        ));
        assert!(matches!(
            "HostName=h;DeviceId=bad/id;x509=true".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::InvalidValue {
                key: "DeviceId",
                ..
            })
        ));
        assert!(matches!(
            "HostName=h/x;DeviceId=d;x509=true".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::InvalidValue {
                key: "HostName",
                ..
            })
        ));
        assert!(matches!(
            "HostName=h;DeviceId=d;SharedAccessSignature=sig".parse::<DeviceConnectionString>(),
            Err(ConnectionStringError::InvalidValue {
                key: "SharedAccessSignature",
                ..
            })
        ));
    }

    #[test]
    fn errors_and_debug_never_show_the_key() {
        let secret = "c3VwZXJzZWNyZXQ=";
        let cs: DeviceConnectionString = format!("HostName=h;DeviceId=d;SharedAccessKey={secret}")
            .parse()
            .unwrap();
        assert!(!format!("{cs:?}").contains(secret));
        let svc: ServiceConnectionString =
            format!("HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey={secret}")
                .parse()
                .unwrap();
        assert!(!format!("{svc:?}").contains(secret));
        let err = format!("HostName=h;DeviceId=d;SharedAccessKey={secret};Bogus={secret}")
            .parse::<DeviceConnectionString>()
            .unwrap_err();
        assert!(!err.to_string().contains(secret));
    }

    #[test]
    fn tolerates_whitespace_and_trailing_semicolon() {
        let cs: DeviceConnectionString = " HostName=h ; DeviceId=d;x509=true; ".parse().unwrap();
        assert_eq!(cs.host_name, "h");
        assert_eq!(cs.device_id, "d");
    }

    #[test]
    fn parses_service_string() {
        let s = format!(
            "HostName=localhost:8443;SharedAccessKeyName=iothubowner;SharedAccessKey={KEY}"
        );
        let cs: ServiceConnectionString = s.parse().unwrap();
        assert_eq!(cs.host_name, "localhost:8443");
        assert_eq!(cs.shared_access_key_name, "iothubowner");
        assert_eq!(cs.shared_access_key, KEY);
        assert_eq!(cs.resource_uri(), "localhost:8443");
        assert_eq!(cs.to_string(), s);
        let token = cs.sas_token(1_800_000_000).unwrap();
        assert!(token.contains("&skn=iothubowner"), "{token}");

        let err = format!("HostName=h;SharedAccessKeyName=p;SharedAccessKey={KEY};DeviceId=d")
            .parse::<ServiceConnectionString>()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("belongs in a device connection string"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("valid keys: HostName, SharedAccessKeyName, SharedAccessKey")
        );
        assert_eq!(
            format!("HostName=h;SharedAccessKey={KEY}").parse::<ServiceConnectionString>(),
            Err(ConnectionStringError::MissingKey {
                key: "SharedAccessKeyName",
                kind: "service"
            })
        );
    }

    fn host() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,20}(\\.[a-z0-9-]{1,10}){0,3}(:[0-9]{1,5})?"
    }

    fn key() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<u8>(), 1..48)
            .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b))
    }

    proptest! {
        #[test]
        fn device_strings_round_trip(
            host_name in host(),
            // Every valid id: "." and ".." are not (no URL can carry them).
            device_id in "[A-Za-z0-9._:@$'()!*,=%?-]{1,40}".prop_filter("not . or ..", |id| id != "." && id != ".."),
            module_id in proptest::option::of("[A-Za-z0-9._-]{1,20}".prop_filter("not . or ..", |id| id != "." && id != "..")),
            key in key(),
            x509 in any::<bool>(),
            gateway in proptest::option::of(host()),
        ) {
            let cs = DeviceConnectionString {
                host_name,
                device_id,
                module_id,
                auth: if x509 { DeviceAuth::X509 } else { DeviceAuth::SharedAccessKey(key) },
                gateway_host_name: gateway,
            };
            let text = cs.to_string();
            let parsed: DeviceConnectionString = text.parse().unwrap();
            prop_assert_eq!(parsed, cs);
        }

        #[test]
        fn service_strings_round_trip(host_name in host(), name in "[A-Za-z][A-Za-z0-9_-]{0,20}", key in key()) {
            let cs = ServiceConnectionString { host_name, shared_access_key_name: name, shared_access_key: key };
            let parsed: ServiceConnectionString = cs.to_string().parse().unwrap();
            prop_assert_eq!(parsed, cs);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = s.parse::<DeviceConnectionString>();
            let _ = s.parse::<ServiceConnectionString>();
        }
    }
}
