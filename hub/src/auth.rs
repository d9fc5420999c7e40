//! Who is calling: shared access policies, the hub's names, and SAS token checks for REST
//! requests and MQTT CONNECTs (reference §1).
//!
//! The cryptography and the `sr` rules live in [`casement_iothub::sas`]; this module holds the
//! hub's policies and keys and decides what a verified token may do.

use casement_iothub::sas::{self, Permissions, SasError, SasToken, generate_key};
use serde::{Deserialize, Serialize};

/// A shared access policy with its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Policy {
    pub(crate) name: String,
    pub(crate) primary_key: String,
    pub(crate) secondary_key: String,
}

impl Policy {
    pub(crate) fn permissions(&self) -> Permissions {
        sas::default_policy_permissions(&self.name).unwrap_or_default()
    }
}

/// The default policies with fresh keys.
pub(crate) fn default_policies() -> Vec<Policy> {
    sas::DEFAULT_POLICIES
        .iter()
        .map(|(name, _)| Policy {
            name: (*name).to_owned(),
            primary_key: generate_key(),
            secondary_key: generate_key(),
        })
        .collect()
}

/// A caller the hub has verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    /// A shared access policy, possibly scoped to part of the hub by its `sr`.
    Policy {
        /// The policy name (`skn`).
        name: String,
        /// What it grants.
        permissions: Permissions,
        /// The token's resource without the host (e.g. `""` or `devices/d1`).
        scope: String,
    },
    /// A device, with its own key.
    Device {
        /// The device.
        device_id: String,
    },
}

/// Why a caller was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// No or unparseable credentials, bad signature, expired, wrong hub.
    #[error("{0}")]
    Unauthenticated(String),
    /// Genuine credentials that do not grant this operation.
    #[error("{0}")]
    Forbidden(String),
}

impl From<SasError> for AuthError {
    fn from(e: SasError) -> Self {
        AuthError::Unauthenticated(e.to_string())
    }
}

/// The hub's names and policies.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    hostname: String,
    aliases: Vec<String>,
    policies: Vec<Policy>,
    skew_secs: u64,
}

impl Identity {
    pub(crate) fn new(hostname: &str, aliases: &[String], policies: Vec<Policy>) -> Self {
        let mut all = vec![
            hostname.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        for alias in aliases {
            if !all.iter().any(|a| a.eq_ignore_ascii_case(alias)) {
                all.push(alias.clone());
            }
        }
        Self {
            hostname: hostname.to_owned(),
            aliases: all,
            policies,
            skew_secs: sas::DEFAULT_SKEW_SECS,
        }
    }

    /// The same, allowing `skew` of clock difference on token expiry
    /// ([`Limits::token_expiry_skew`](crate::Limits::token_expiry_skew)).
    pub(crate) fn with_skew(mut self, skew: std::time::Duration) -> Self {
        self.skew_secs = skew.as_secs();
        self
    }

    /// The unix second after which a token expiring at `se` is no longer accepted.
    pub(crate) fn expires_after(&self, se: u64) -> u64 {
        se.saturating_add(self.skew_secs)
    }

    pub(crate) fn hostname(&self) -> &str {
        &self.hostname
    }

    fn alias_refs(&self) -> Vec<&str> {
        self.aliases.iter().map(String::as_str).collect()
    }

    /// Whether `host` (from an MQTT username or a `sr`) names this hub, with or without a port.
    pub(crate) fn is_own_host(&self, host: &str) -> bool {
        sas::host_matches(host, &self.alias_refs())
    }

    pub(crate) fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// Verifies a token's signature and expiry and names its holder. For device tokens,
    /// `device_keys` looks up a device's (primary, secondary) keys; a disabled or unknown
    /// device returns `None`.
    pub(crate) fn verify(
        &self,
        token: &str,
        now_unix: u64,
        device_keys: impl FnOnce(&str) -> Option<(String, String)>,
    ) -> Result<Principal, AuthError> {
        let token = SasToken::parse(token)?;
        let aliases = self.alias_refs();
        if !sas::resource_matches_host(&token.resource, &aliases) {
            return Err(AuthError::Unauthenticated(format!(
                "SAS token resource {:?} does not name this hub ({})",
                token.resource, self.hostname
            )));
        }
        let scope = token
            .resource
            .split('/')
            .filter(|s| !s.is_empty())
            .skip(1)
            .collect::<Vec<_>>()
            .join("/");
        match &token.skn {
            Some(name) => {
                let policy = self.policy(name).ok_or_else(|| {
                    AuthError::Unauthenticated(format!("unknown shared access policy {name:?}"))
                })?;
                sas::verify(
                    &token,
                    &[&policy.primary_key, &policy.secondary_key],
                    now_unix,
                    self.skew_secs,
                )?;
                Ok(Principal::Policy {
                    name: policy.name.clone(),
                    permissions: policy.permissions(),
                    scope,
                })
            }
            None => {
                let mut parts = scope.split('/');
                let device_id = match (parts.next(), parts.next(), parts.next()) {
                    (Some(d), Some(id), None) if d.eq_ignore_ascii_case("devices") => id.to_owned(),
                    _ => {
                        return Err(AuthError::Unauthenticated(format!(
                            "a token without skn must be for {{host}}/devices/{{deviceId}}, not {:?}",
                            token.resource
                        )));
                    }
                };
                let (primary, secondary) = device_keys(&device_id).ok_or_else(|| {
                    AuthError::Unauthenticated(format!(
                        "device {device_id:?} is unknown or disabled"
                    ))
                })?;
                sas::verify(&token, &[&primary, &secondary], now_unix, self.skew_secs)?;
                Ok(Principal::Device { device_id })
            }
        }
    }

    /// Checks that a verified principal may use a service endpoint needing `required` on
    /// `resource_path` (`""` for the whole hub, `devices/{id}` for one device).
    pub(crate) fn authorize_service(
        principal: &Principal,
        required: &[Permissions],
        resource_path: &str,
    ) -> Result<(), AuthError> {
        match principal {
            Principal::Device { device_id } => Err(AuthError::Unauthenticated(format!(
                "device {device_id:?} credentials cannot use the service API"
            ))),
            Principal::Policy {
                name,
                permissions,
                scope,
            } => {
                if !required.iter().any(|r| permissions.contains(*r)) {
                    return Err(AuthError::Forbidden(format!(
                        "policy {name:?} lacks the permission this operation needs ({})",
                        describe(required)
                    )));
                }
                if !scope_covers(scope, resource_path) {
                    return Err(AuthError::Forbidden(format!(
                        "token scope {scope:?} does not cover {resource_path:?}"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Checks that a principal may connect as `device_id` over MQTT.
    pub(crate) fn authorize_device(
        principal: &Principal,
        device_id: &str,
    ) -> Result<(), AuthError> {
        match principal {
            Principal::Device { device_id: own } if own == device_id => Ok(()),
            Principal::Device { device_id: own } => Err(AuthError::Forbidden(format!(
                "token for device {own:?} cannot connect as {device_id:?}"
            ))),
            Principal::Policy {
                name,
                permissions,
                scope,
            } => {
                if !permissions.device_connect {
                    return Err(AuthError::Forbidden(format!(
                        "policy {name:?} lacks DeviceConnect"
                    )));
                }
                if !scope_covers(scope, &format!("devices/{device_id}")) {
                    return Err(AuthError::Forbidden(format!(
                        "token scope {scope:?} does not cover device {device_id:?}"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// Whether a token's scope (its `sr` without the host) covers `path`: device ids compare
/// exactly (they are case-sensitive), the `devices` keyword in any case ([`sas::path_covers`]).
fn scope_covers(scope: &str, path: &str) -> bool {
    let scope: Vec<&str> = scope.split('/').filter(|s| !s.is_empty()).collect();
    let path: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    sas::path_covers(&scope, &path)
}

fn describe(required: &[Permissions]) -> String {
    required
        .iter()
        .map(|p| {
            let mut names = Vec::new();
            if p.registry_read {
                names.push("RegistryRead");
            }
            if p.registry_write {
                names.push("RegistryWrite");
            }
            if p.service_connect {
                names.push("ServiceConnect");
            }
            if p.device_connect {
                names.push("DeviceConnect");
            }
            names.join("+")
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Permission sets endpoints require.
pub(crate) mod need {
    use casement_iothub::sas::Permissions;

    const NONE: Permissions = Permissions {
        registry_read: false,
        registry_write: false,
        service_connect: false,
        device_connect: false,
    };
    /// RegistryRead.
    pub(crate) const REGISTRY_READ: Permissions = Permissions {
        registry_read: true,
        ..NONE
    };
    /// RegistryWrite.
    pub(crate) const REGISTRY_WRITE: Permissions = Permissions {
        registry_write: true,
        ..NONE
    };
    /// ServiceConnect.
    pub(crate) const SERVICE_CONNECT: Permissions = Permissions {
        service_connect: true,
        ..NONE
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity::new("myhub", &[], default_policies())
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn policy_tokens_verify_and_are_scoped() {
        let id = identity();
        let key = id.policy("service").expect("service").primary_key.clone();
        let token = sas::service_token("myhub:443", "service", &key, NOW + 60).expect("sign");
        let p = id.verify(&token, NOW, |_| None).expect("valid");
        Identity::authorize_service(&p, &[need::SERVICE_CONNECT], "devices/d1").expect("twins");
        // A token scoped to devA does not reach DEVA, another device; the host may differ in case.
        let scoped =
            sas::sign("MYHUB/Devices/devA", &key, Some("service"), NOW + 60).expect("sign");
        let p2 = id.verify(&scoped, NOW, |_| None).expect("valid");
        Identity::authorize_service(&p2, &[need::SERVICE_CONNECT], "devices/devA").expect("own");
        let err = Identity::authorize_service(&p2, &[need::SERVICE_CONNECT], "devices/DEVA")
            .expect_err("another device");
        assert!(matches!(err, AuthError::Forbidden(_)));
        let err = Identity::authorize_service(&p, &[need::REGISTRY_WRITE], "devices/d1")
            .expect_err("registry");
        assert!(matches!(err, AuthError::Forbidden(_)));
        assert!(err.to_string().contains("RegistryWrite"));
        // Wrong hub name.
        let other = sas::service_token("otherhub", "service", &key, NOW + 60).expect("sign");
        assert!(matches!(
            id.verify(&other, NOW, |_| None),
            Err(AuthError::Unauthenticated(_))
        ));
        // Expired (beyond the 5 minutes of skew).
        let old = sas::service_token("myhub", "service", &key, NOW - 301).expect("sign");
        assert!(id.verify(&old, NOW, |_| None).is_err());
        // Another policy's key under this policy's name.
        let owner_key = id.policy("iothubowner").expect("owner").primary_key.clone();
        let forged = sas::service_token("myhub", "service", &owner_key, NOW + 60).expect("sign");
        assert!(id.verify(&forged, NOW, |_| None).is_err());
    }

    #[test]
    fn device_tokens_reach_only_their_device() {
        let id = identity();
        let key = generate_key();
        let token = sas::device_token("localhost", "d1", None, &key, NOW + 60).expect("sign");
        let keys = |d: &str| (d == "d1").then(|| (key.clone(), String::new()));
        let p = id.verify(&token, NOW, keys).expect("valid");
        Identity::authorize_device(&p, "d1").expect("own");
        assert!(Identity::authorize_device(&p, "d2").is_err());
        assert!(Identity::authorize_service(&p, &[need::SERVICE_CONNECT], "devices/d1").is_err());
        // Unknown device.
        let t2 = sas::device_token("localhost", "d2", None, &key, NOW + 60).expect("sign");
        assert!(id.verify(&t2, NOW, |_| None).is_err());
    }

    #[test]
    fn device_policy_connects_any_device_in_scope() {
        let id = identity();
        let key = id.policy("device").expect("device").primary_key.clone();
        let token = sas::sign("myhub/devices/d1", &key, Some("device"), NOW + 60).expect("sign");
        let p = id.verify(&token, NOW, |_| None).expect("valid");
        Identity::authorize_device(&p, "d1").expect("in scope");
        assert!(Identity::authorize_device(&p, "d10").is_err());
        // Device ids are case-sensitive: a token for d1 does not connect D1.
        assert!(Identity::authorize_device(&p, "D1").is_err());
        let registry = id.policy("registryRead").expect("rr").primary_key.clone();
        let token = sas::sign("myhub", &registry, Some("registryRead"), NOW + 60).expect("sign");
        let p = id.verify(&token, NOW, |_| None).expect("valid");
        assert!(Identity::authorize_device(&p, "d1").is_err());
    }
}
