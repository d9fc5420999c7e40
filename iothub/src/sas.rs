//! Shared access signature tokens: sign, parse, verify, authorize (reference §1).
//!
//! A token is `SharedAccessSignature sr={URL-encoded resource}&sig={URL-encoded base64
//! HMAC-SHA256}&se={unix expiry}[&skn={policy}]`, with the HMAC keyed by the base64-decoded
//! shared access key over `sr + "\n" + se`.
//!
//! **Verification** follows what the service and IoT Edge do, because the SDKs disagree on
//! encodings: the HMAC is computed over `sr` *exactly as written* in the token (the C SDK writes
//! `%2f`, Node `%2F`, the Node service SDK the raw host, Python `quote_plus`), `sig` is
//! URL-decoded before comparing (Python leaves `/` unescaped), the comparison is constant-time,
//! both keys of a pair are tried, and expiry allows for clock skew. **Authorization** is
//! separate: the URL-decoded `sr` must be a segment-wise prefix of the resource being accessed
//! ([`authorize`], [`authorize_for_host`]). The host and the `devices`/`modules` keywords compare
//! case-insensitively; device and module ids do not, because they are case-sensitive names
//! (`devA` and `DEVA` are two devices), so a token for one never reaches the other
//! ([`path_covers`]).
//!
//! ```
//! use casement_iothub::sas::{self, SasToken};
//! let key = "c2VjcmV0LWtleS1ieXRlcw==";
//! let token = sas::device_token("hub.example.net", "dev1", None, key, 1_900_000_000).unwrap();
//! let parsed = SasToken::parse(&token).unwrap();
//! sas::verify(&parsed, &[key], 1_800_000_000, sas::DEFAULT_SKEW_SECS).unwrap();
//! sas::authorize_for_host(&parsed.resource, &["hub.example.net"], "devices/dev1").unwrap();
//! assert!(sas::authorize_for_host(&parsed.resource, &["hub.example.net"], "devices/dev2").is_err());
//! ```

use std::fmt;

use crate::encoding::decode_component as decode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The scheme prefix of every token, including the single space.
pub const SAS_PREFIX: &str = "SharedAccessSignature ";

/// Token lifetime the SDKs use: one hour.
pub const DEFAULT_TOKEN_LIFETIME_SECS: u64 = 3600;

/// How long before expiry the Node SDK renews its token (reconnecting on MQTT): 15 minutes.
pub const RENEW_BEFORE_EXPIRY_SECS: u64 = 900;

/// Clock skew IoT Edge tolerates when checking `se`: 5 minutes.
pub const DEFAULT_SKEW_SECS: u64 = 300;

/// The longest token this crate parses; real tokens are a few hundred bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Why a token was rejected. Messages never contain the signature or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SasError {
    /// The token is not a well-formed SAS token.
    #[error("malformed SAS token: {0}")]
    Malformed(String),
    /// The token expired (`se` plus the allowed skew is in the past).
    #[error("SAS token expired at {expiry} (now {now}, {skew}s skew allowed)")]
    Expired {
        /// The token's `se`.
        expiry: u64,
        /// The time it was checked at.
        now: u64,
        /// The skew that was allowed.
        skew: u64,
    },
    /// The signature matches none of the keys.
    #[error("SAS token signature does not match")]
    BadSignature,
    /// The token is valid but its `sr` does not cover the resource being accessed.
    #[error("SAS token for {token_resource:?} does not grant access to {required:?}")]
    WrongResource {
        /// The token's URL-decoded `sr`.
        token_resource: String,
        /// The resource that was required.
        required: String,
    },
    /// A signing or verification key is not base64, or is empty.
    #[error("shared access key is not a non-empty base64 string")]
    InvalidKey,
}

/// A parsed SAS token.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as written in the token (still URL-encoded); the HMAC covers this text.
    pub sr: String,
    /// `sr` URL-decoded: the resource URI the token grants, e.g. `hub/devices/dev1`.
    pub resource: String,
    /// `sig` URL-decoded: the base64 text of the HMAC.
    pub sig: String,
    /// `se`: expiry in Unix seconds.
    pub se: u64,
    /// `skn`, URL-decoded: the shared access policy, absent for device-key tokens.
    pub skn: Option<String>,
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("sr", &self.sr)
            .field("resource", &self.resource)
            .field("sig", &"<redacted>")
            .field("se", &self.se)
            .field("skn", &self.skn)
            .finish()
    }
}

impl SasToken {
    /// Parses `SharedAccessSignature sr=…&sig=…&se=…[&skn=…]`, fields in any order.
    ///
    /// The prefix is required; `sr`, `sig` and `se` are required; unknown and repeated fields
    /// are rejected (a repeated field would make "which one was signed" ambiguous).
    pub fn parse(token: &str) -> Result<SasToken, SasError> {
        let malformed = |reason: &str| SasError::Malformed(reason.to_owned());
        if token.len() > MAX_TOKEN_LEN {
            return Err(SasError::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let token = token.trim();
        let fields = token.strip_prefix(SAS_PREFIX).ok_or_else(|| {
            malformed("must start with \"SharedAccessSignature \" followed by sr=…&sig=…&se=…")
        })?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for field in fields.split('&') {
            let (name, value) = field.split_once('=').ok_or_else(|| {
                SasError::Malformed(format!("field {:?} has no '='", truncate(field)))
            })?;
            let slot = match name {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                other => {
                    return Err(SasError::Malformed(format!(
                        "unknown field {:?}; expected sr, sig, se and optionally skn",
                        truncate(other)
                    )));
                }
            };
            if slot.replace(value).is_some() {
                return Err(SasError::Malformed(format!("field {name:?} appears twice")));
            }
        }
        let sr = sr.ok_or_else(|| malformed("missing sr"))?;
        let sig = sig.ok_or_else(|| malformed("missing sig"))?;
        let se_text = se.ok_or_else(|| malformed("missing se"))?;
        if sr.is_empty() {
            return Err(malformed("sr is empty"));
        }
        let resource = decode(sr).ok_or_else(|| malformed("sr is not valid URL-encoded UTF-8"))?;
        let sig = decode(sig).ok_or_else(|| malformed("sig is not valid URL-encoded text"))?;
        if sig.is_empty() {
            return Err(malformed("sig is empty"));
        }
        let se: u64 = se_text
            .parse()
            .ok()
            .filter(|n: &u64| n.to_string() == se_text)
            .ok_or_else(|| malformed("se must be Unix seconds as a plain decimal number"))?;
        let skn = match skn {
            None | Some("") => None,
            Some(raw) => {
                Some(decode(raw).ok_or_else(|| malformed("skn is not valid URL-encoded UTF-8"))?)
            }
        };
        Ok(SasToken {
            sr: sr.to_owned(),
            resource,
            sig,
            se,
            skn,
        })
    }
}

impl fmt::Display for SasToken {
    /// Writes the token back: `sr` as it was written, `sig` and `skn` re-encoded, Node order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SAS_PREFIX}sr={}&sig={}",
            self.sr,
            encode_component(&self.sig)
        )?;
        if let Some(skn) = &self.skn {
            write!(f, "&skn={}", encode_component(skn))?;
        }
        write!(f, "&se={}", self.se)
    }
}

/// The length of the symmetric keys IoT Hub generates: 32 bytes (it accepts 16 to 64).
pub const KEY_BYTES: usize = 32;

/// A fresh symmetric key, base64, as IoT Hub generates one for a device or a policy. A client
/// that registers devices may supply its own (the bulk import does), so it knows every key
/// without reading the devices back.
pub fn generate_key() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; KEY_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// URL-encodes one component as the Node SDK does (`encodeURIComponent` plus `!'()*`), with
/// uppercase hex: `hub/devices/d1` → `hub%2Fdevices%2Fd1`.
pub fn encode_component(s: &str) -> String {
    crate::encoding::encode_component(s)
}

/// The resource URI for a device or module key: `{host}/devices/{id}[/modules/{m}]`.
pub fn device_resource_uri(host: &str, device_id: &str, module_id: Option<&str>) -> String {
    match module_id {
        Some(module) => format!("{host}/devices/{device_id}/modules/{module}"),
        None => format!("{host}/devices/{device_id}"),
    }
}

/// Signs a token for `resource_uri` (not yet encoded) with a base64 key, in the Node form:
/// `SharedAccessSignature sr={enc}&sig={enc}[&skn={name}]&se={expiry}`.
pub fn sign(
    resource_uri: &str,
    key_base64: &str,
    key_name: Option<&str>,
    expiry_unix: u64,
) -> Result<String, SasError> {
    let key = decode_key(key_base64)?;
    let sr = encode_component(resource_uri);
    let sig = signature(&key, &sr, expiry_unix)?;
    let token = SasToken {
        resource: resource_uri.to_owned(),
        sr,
        sig,
        se: expiry_unix,
        skn: key_name.map(str::to_owned),
    };
    Ok(token.to_string())
}

/// A device (or module) token signed with the device's own key; no `skn`.
pub fn device_token(
    host: &str,
    device_id: &str,
    module_id: Option<&str>,
    key_base64: &str,
    expiry_unix: u64,
) -> Result<String, SasError> {
    sign(
        &device_resource_uri(host, device_id, module_id),
        key_base64,
        None,
        expiry_unix,
    )
}

/// A service token for `host`, signed with a shared access policy's key; `skn` = the policy.
pub fn service_token(
    host: &str,
    policy_name: &str,
    key_base64: &str,
    expiry_unix: u64,
) -> Result<String, SasError> {
    sign(host, key_base64, Some(policy_name), expiry_unix)
}

/// Verifies a token's signature against `keys` (base64; typically primary and secondary) and
/// its expiry against `now_unix` with `skew_secs` of tolerance.
///
/// The HMAC is computed over [`SasToken::sr`] exactly as written and compared in constant time.
/// Empty keys are skipped (a blank key must never verify anything); a key that is not base64
/// is [`SasError::InvalidKey`] (a configuration fault, not the caller's). The signature is
/// checked before the expiry, so [`SasError::Expired`] means "genuine, but too old".
pub fn verify(
    token: &SasToken,
    keys: &[&str],
    now_unix: u64,
    skew_secs: u64,
) -> Result<(), SasError> {
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&token.sig)
        .map_err(|_| SasError::Malformed("sig is not base64".into()))?;
    let message = format!("{}\n{}", token.sr, token.se);
    let mut matched = false;
    for key in keys.iter().filter(|k| !k.trim().is_empty()) {
        let key = decode_key(key)?;
        let mut mac = HmacSha256::new_from_slice(&key).map_err(|_| SasError::InvalidKey)?;
        mac.update(message.as_bytes());
        if mac.verify_slice(&sig).is_ok() {
            matched = true;
            break;
        }
    }
    if !matched {
        return Err(SasError::BadSignature);
    }
    if token.se.saturating_add(skew_secs) < now_unix {
        return Err(SasError::Expired {
            expiry: token.se,
            now: now_unix,
            skew: skew_secs,
        });
    }
    Ok(())
}

/// Checks that `token_resource` (a URL-decoded `sr`) covers `required_resource`: a
/// segment-wise prefix. `hub/devices` covers `hub/devices/d1`; `hub/devices/d1` does not cover
/// `hub/devices/d10`, nor `hub/devices/D1` (ids are case-sensitive). The host may differ in case.
pub fn authorize(token_resource: &str, required_resource: &str) -> Result<(), SasError> {
    let token: Vec<&str> = segments(token_resource).collect();
    let required: Vec<&str> = segments(required_resource).collect();
    let covers = !token.is_empty()
        && token.len() <= required.len()
        && token[0].eq_ignore_ascii_case(required[0])
        && path_covers(&token[1..], &required[1..]);
    if covers {
        Ok(())
    } else {
        Err(SasError::WrongResource {
            token_resource: token_resource.to_owned(),
            required: required_resource.to_owned(),
        })
    }
}

/// Whether the host part of `token_resource` (its first segment) is one of `host_aliases`.
///
/// Names compare case-insensitively. An alias without a port matches that host on any port
/// (`localhost` matches `localhost:8883`, which Node and Python put in `sr` when `HostName`
/// carries a port); an alias with a port matches only that port. IPv6 literals are written in
/// brackets (`[::1]:8883`).
pub fn resource_matches_host(token_resource: &str, host_aliases: &[&str]) -> bool {
    let host = segments(token_resource).next().unwrap_or("");
    host_matches(host, host_aliases)
}

/// Whether `host` (as in a `HostName`, `sr` or MQTT username) is one of `host_aliases`, with
/// the port rule of [`resource_matches_host`].
pub fn host_matches(host: &str, host_aliases: &[&str]) -> bool {
    if host.is_empty() {
        return false;
    }
    let (name, _port) = split_port(host);
    host_aliases.iter().any(|alias| {
        alias.eq_ignore_ascii_case(host)
            || (split_port(alias).1.is_none() && alias.eq_ignore_ascii_case(name))
    })
}

/// Authorizes a token for a hub that answers to several names: the token's host must be one
/// of `host_aliases` ([`resource_matches_host`]) and the rest of its resource must be a
/// segment-wise prefix of `required_path` (e.g. `devices/dev1`; empty for the whole hub).
pub fn authorize_for_host(
    token_resource: &str,
    host_aliases: &[&str],
    required_path: &str,
) -> Result<(), SasError> {
    let wrong = || SasError::WrongResource {
        token_resource: token_resource.to_owned(),
        required: required_path.to_owned(),
    };
    if !resource_matches_host(token_resource, host_aliases) {
        return Err(wrong());
    }
    let rest: Vec<&str> = segments(token_resource).skip(1).collect();
    let required: Vec<&str> = segments(required_path).collect();
    if path_covers(&rest, &required) {
        Ok(())
    } else {
        Err(wrong())
    }
}

/// Whether the path segments of a token's scope (its resource after the host, e.g.
/// `["devices", "devA"]`) are a prefix of `required` (e.g. `["devices", "devA", "modules", "m"]`).
///
/// The keywords at even positions (`devices`, `modules`) compare case-insensitively, as IoT Hub
/// treats them; the ids between them compare exactly, because device and module ids are
/// case-sensitive: a scope of `devices/devA` does not cover `devices/DEVA`.
pub fn path_covers<A: AsRef<str>, B: AsRef<str>>(scope: &[A], required: &[B]) -> bool {
    scope.len() <= required.len()
        && scope.iter().zip(required).enumerate().all(|(i, (a, b))| {
            let (a, b) = (a.as_ref(), b.as_ref());
            if i % 2 == 0 {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        })
}

/// The permissions a shared access policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Permissions {
    /// Read the identity registry.
    pub registry_read: bool,
    /// Write the identity registry (create, update, delete devices).
    pub registry_write: bool,
    /// Service-facing operations: twins (tags, desired, reading reported), queries, direct
    /// methods, cloud-to-device messages.
    pub service_connect: bool,
    /// Device-facing operations, on behalf of any device.
    pub device_connect: bool,
}

impl Permissions {
    /// Every permission (`iothubowner`).
    pub const ALL: Permissions = Permissions {
        registry_read: true,
        registry_write: true,
        service_connect: true,
        device_connect: true,
    };

    /// Whether every permission in `required` is granted.
    pub fn contains(self, required: Permissions) -> bool {
        (self.registry_read || !required.registry_read)
            && (self.registry_write || !required.registry_write)
            && (self.service_connect || !required.service_connect)
            && (self.device_connect || !required.device_connect)
    }
}

const NONE: Permissions = Permissions {
    registry_read: false,
    registry_write: false,
    service_connect: false,
    device_connect: false,
};

/// IoT Hub's default shared access policies and what they grant (reference §1).
pub const DEFAULT_POLICIES: &[(&str, Permissions)] = &[
    ("iothubowner", Permissions::ALL),
    (
        "service",
        Permissions {
            service_connect: true,
            ..NONE
        },
    ),
    (
        "device",
        Permissions {
            device_connect: true,
            ..NONE
        },
    ),
    (
        "registryRead",
        Permissions {
            registry_read: true,
            ..NONE
        },
    ),
    (
        "registryReadWrite",
        Permissions {
            registry_read: true,
            registry_write: true,
            ..NONE
        },
    ),
];

/// The permissions of a default policy, by name (exact).
pub fn default_policy_permissions(name: &str) -> Option<Permissions> {
    DEFAULT_POLICIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
}

fn signature(key: &[u8], sr: &str, se: u64) -> Result<String, SasError> {
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| SasError::InvalidKey)?;
    mac.update(format!("{sr}\n{se}").as_bytes());
    Ok(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

fn decode_key(key_base64: &str) -> Result<Vec<u8>, SasError> {
    match base64::engine::general_purpose::STANDARD.decode(key_base64.trim()) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(SasError::InvalidKey),
    }
}

fn segments(resource: &str) -> impl Iterator<Item = &str> {
    resource.split('/').filter(|s| !s.is_empty())
}

/// Splits `host[:port]` (or `[v6]:port`) into the name and the port, if any.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => {
                let port = host[end + 1..].strip_prefix(':');
                (&host[..=end], port)
            }
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (name, Some(port))
        }
        _ => (host, None),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "c2VjcmV0LWtleS1ieXRlcw==";
    const OTHER_KEY: &str = "b3RoZXIta2V5LWJ5dGVz";

    #[test]
    fn signs_the_node_form() {
        let token = device_token("hub.example.net", "dev1", None, KEY, 1_900_000_000).unwrap();
        assert!(
            token.starts_with("SharedAccessSignature sr=hub.example.net%2Fdevices%2Fdev1&sig="),
            "{token}"
        );
        assert!(token.ends_with("&se=1900000000"), "{token}");
        assert!(!token.contains("skn="));
        let service = service_token("hub.example.net", "iothubowner", KEY, 5).unwrap();
        assert!(service.starts_with("SharedAccessSignature sr=hub.example.net&sig="));
        assert!(service.ends_with("&skn=iothubowner&se=5"), "{service}");
    }

    #[test]
    fn escapes_like_strict_encode_uri_component() {
        assert_eq!(encode_component("a/b:c"), "a%2Fb%3Ac");
        assert_eq!(encode_component("!'()*"), "%21%27%28%29%2A");
        assert_eq!(encode_component("-_.~Az09"), "-_.~Az09");
        assert_eq!(encode_component("é"), "%C3%A9");
    }

    #[test]
    fn parse_accepts_any_order_and_decodes() {
        let t = SasToken::parse(
            "SharedAccessSignature se=10&skn=iot%68ubowner&sig=YWJj%3D&sr=h%2fdevices%2Fd",
        )
        .unwrap();
        assert_eq!(t.sr, "h%2fdevices%2Fd");
        assert_eq!(t.resource, "h/devices/d");
        assert_eq!(t.sig, "YWJj=");
        assert_eq!(t.se, 10);
        assert_eq!(t.skn.as_deref(), Some("iothubowner"));
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases = [
            ("sr=a&sig=b&se=1", "must start with"),
            ("SharedAccessSignature sig=b&se=1", "missing sr"),
            ("SharedAccessSignature sr=a&se=1", "missing sig"),
            ("SharedAccessSignature sr=a&sig=b", "missing se"),
            ("SharedAccessSignature sr=a&sig=b&se=soon", "se must be"),
            ("SharedAccessSignature sr=a&sig=b&se=+1", "se must be"),
            ("SharedAccessSignature sr=a&sig=b&se=01", "se must be"),
            (
                "SharedAccessSignature sr=a&sig=b&se=1&sr=c",
                "appears twice",
            ),
            (
                "SharedAccessSignature sr=a&sig=b&se=1&foo=1",
                "unknown field",
            ),
            ("SharedAccessSignature sr=a&sig=b&se=1&junk", "has no '='"),
            ("SharedAccessSignature sr=%ff&sig=b&se=1", "sr is not valid"),
            ("SharedAccessSignature sr=&sig=b&se=1", "sr is empty"),
            ("SharedAccessSignature sr=a&sig=&se=1", "sig is empty"),
        ];
        for (token, expected) in cases {
            let err = SasToken::parse(token).unwrap_err();
            assert!(matches!(err, SasError::Malformed(_)), "{token}");
            assert!(err.to_string().contains(expected), "{token}: {err}");
        }
        let long = format!("SharedAccessSignature sr={}&sig=a&se=1", "a".repeat(5000));
        assert!(SasToken::parse(&long).is_err());
    }

    #[test]
    fn verify_round_trip_and_failures() {
        let token = device_token("h", "d", None, KEY, 1000).unwrap();
        let t = SasToken::parse(&token).unwrap();
        assert_eq!(verify(&t, &[KEY], 999, 0), Ok(()));
        // Secondary key.
        assert_eq!(verify(&t, &[OTHER_KEY, KEY], 999, 0), Ok(()));
        assert_eq!(
            verify(&t, &[OTHER_KEY], 999, 0),
            Err(SasError::BadSignature)
        );
        // Blank keys never verify anything.
        assert_eq!(verify(&t, &["", "  "], 999, 0), Err(SasError::BadSignature));
        assert_eq!(
            verify(&t, &["not base64!"], 999, 0),
            Err(SasError::InvalidKey)
        );
        // Expiry with skew.
        assert_eq!(verify(&t, &[KEY], 1000, 0), Ok(()));
        assert!(matches!(
            verify(&t, &[KEY], 1001, 0),
            Err(SasError::Expired { .. })
        ));
        assert_eq!(verify(&t, &[KEY], 1300, 300), Ok(()));
        assert!(matches!(
            verify(&t, &[KEY], 1301, 300),
            Err(SasError::Expired { .. })
        ));
        // A tampered expiry breaks the signature.
        let mut later = t.clone();
        later.se += 3600;
        assert_eq!(verify(&later, &[KEY], 999, 0), Err(SasError::BadSignature));
        // A re-encoded sr (different case of escapes) is a different message.
        let mut recased = t.clone();
        recased.sr = recased.sr.replace("%2F", "%2f");
        assert_eq!(
            verify(&recased, &[KEY], 999, 0),
            Err(SasError::BadSignature)
        );
    }

    #[test]
    fn display_round_trips() {
        let token = service_token("h:8443", "service", KEY, 77).unwrap();
        let t = SasToken::parse(&token).unwrap();
        assert_eq!(t.to_string(), token);
        assert!(!format!("{t:?}").contains(&t.sig));
    }

    #[test]
    fn authorize_is_segment_prefix_with_case_sensitive_ids() {
        assert_eq!(authorize("hub/devices/d1", "hub/devices/d1"), Ok(()));
        assert_eq!(authorize("HUB/Devices/d1", "hub/devices/d1"), Ok(()));
        // Device and module ids are case-sensitive: devA and DEVA are two devices.
        assert!(authorize("hub/devices/devA", "hub/devices/DEVA").is_err());
        assert!(authorize("hub/devices/devA", "hub/devices/deva").is_err());
        assert!(authorize("hub/devices/d/modules/m", "hub/devices/d/modules/M").is_err());
        assert_eq!(
            authorize("hub/DEVICES/d/MODULES/m", "hub/devices/d/modules/m"),
            Ok(())
        );
        assert_eq!(authorize("hub/devices", "hub/devices/d1"), Ok(()));
        assert_eq!(authorize("hub", "hub/devices/d1/modules/m"), Ok(()));
        assert_eq!(authorize("hub/devices/d1/", "hub/devices/d1"), Ok(()));
        assert!(authorize("hub/devices/d1", "hub/devices/d10").is_err());
        assert!(authorize("hub/devices/d1", "hub/devices").is_err());
        assert!(authorize("hub/devices/d1", "other/devices/d1").is_err());
        assert!(authorize("", "hub").is_err());
    }

    #[test]
    fn host_aliases() {
        let aliases = ["localhost", "127.0.0.1", "hub.local:8883", "[::1]"];
        assert!(resource_matches_host("localhost/devices/d", &aliases));
        assert!(resource_matches_host("LOCALHOST:8883/devices/d", &aliases));
        assert!(resource_matches_host("127.0.0.1", &aliases));
        assert!(resource_matches_host("127.0.0.1:443", &aliases));
        assert!(resource_matches_host("hub.local:8883/devices/d", &aliases));
        assert!(!resource_matches_host("hub.local/devices/d", &aliases));
        assert!(!resource_matches_host("hub.local:8884", &aliases));
        assert!(resource_matches_host("[::1]:8883/devices/d", &aliases));
        assert!(!resource_matches_host("evil.example/devices/d", &aliases));
        assert!(!resource_matches_host("", &aliases));
        assert!(!resource_matches_host("localhost.evil/devices/d", &aliases));

        assert_eq!(
            authorize_for_host("localhost:8883/devices/d1", &aliases, "devices/d1"),
            Ok(())
        );
        assert_eq!(
            authorize_for_host("localhost", &aliases, "devices/d1"),
            Ok(())
        );
        assert_eq!(
            authorize_for_host("localhost/devices", &aliases, "devices/d1/modules/m"),
            Ok(())
        );
        assert!(authorize_for_host("localhost/devices/d2", &aliases, "devices/d1").is_err());
        assert!(authorize_for_host("elsewhere/devices/d1", &aliases, "devices/d1").is_err());
        // The host stays case-insensitive; the device id does not.
        assert_eq!(
            authorize_for_host("LOCALHOST/Devices/devA", &aliases, "devices/devA"),
            Ok(())
        );
        assert!(authorize_for_host("localhost/devices/devA", &aliases, "devices/DEVA").is_err());
        assert!(path_covers(&["devices", "devA"], &["devices", "devA"]));
        assert!(!path_covers(&["devices", "devA"], &["devices", "DEVA"]));
        assert!(path_covers::<&str, &str>(&[], &["devices", "DEVA"]));
    }

    #[test]
    fn default_policies() {
        let owner = default_policy_permissions("iothubowner").unwrap();
        let service = default_policy_permissions("service").unwrap();
        let device = default_policy_permissions("device").unwrap();
        let read = default_policy_permissions("registryRead").unwrap();
        let read_write = default_policy_permissions("registryReadWrite").unwrap();
        let connect = Permissions {
            service_connect: true,
            ..Permissions::default()
        };
        let write = Permissions {
            registry_write: true,
            ..Permissions::default()
        };
        assert!(owner.contains(Permissions::ALL));
        assert!(service.contains(connect));
        assert!(!service.contains(write));
        assert!(!device.contains(connect));
        assert!(!read.contains(write));
        assert!(read_write.contains(write));
        assert_eq!(default_policy_permissions("nosuch"), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = SasToken::parse(&s);
            let _ = SasToken::parse(&format!("{SAS_PREFIX}{s}"));
        }

        #[test]
        fn sign_then_verify(host in "[a-z0-9.:-]{1,30}", device in "[A-Za-z0-9._:@$'()!*,=%?-]{1,40}", se in 0u64..4_000_000_000) {
            let token = device_token(&host, &device, None, KEY, se).unwrap();
            let parsed = SasToken::parse(&token).unwrap();
            prop_assert_eq!(&parsed.resource, &device_resource_uri(&host, &device, None));
            prop_assert_eq!(verify(&parsed, &[KEY], se, 0), Ok(()));
            prop_assert_eq!(verify(&parsed, &[OTHER_KEY], se, 0), Err(SasError::BadSignature));
            prop_assert_eq!(authorize(&parsed.resource, &format!("{host}/devices/{device}")), Ok(()));
        }
    }
}
