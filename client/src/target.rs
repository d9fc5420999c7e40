//! Which hub to talk to and how to reach it: [`HubTarget`] — a service connection string, an
//! optional CA file, and an optional endpoint that overrides `https://{HostName}` (for example
//! the local hub's plain HTTP port) — and [`HubTarget::resolve`], which applies the `--hub` /
//! `IOTHUB_CONNECTION_STRING` / local hub file rules.

use std::fmt;
use std::path::{Path, PathBuf};

use casement_iothub::connection_string::ServiceConnectionString;

use crate::error::TargetError;

/// The environment variable holding the service connection string.
pub const CONNECTION_STRING_ENV: &str = "IOTHUB_CONNECTION_STRING";
/// The environment variable holding a CA file.
pub const CA_ENV: &str = "CASEMENT_CA";
/// The file a local `casement hub` writes its connection details to, in its data directory.
pub const LOCAL_HUB_FILE: &str = ".casement/hub/connection.env";

/// Which hub to talk to, and how to reach it.
#[derive(Clone)]
pub struct HubTarget {
    /// The service connection string (SAS tokens sign its `HostName`).
    pub connection: ServiceConnectionString,
    /// The base URL requests go to: `https://{HostName}` unless overridden.
    pub endpoint: String,
    /// Extra trusted CA certificates (PEM), for a hub with a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// Where the connection string came from, for messages (`--hub`, the environment, a file).
    pub source: String,
}

impl fmt::Debug for HubTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubTarget")
            .field("connection", &self.connection)
            .field("endpoint", &self.endpoint)
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("source", &self.source)
            .finish()
    }
}

/// What the local hub's connection file says (`KEY=VALUE` lines, as `casement hub` writes them:
/// `IOTHUB_CONNECTION_STRING`, `CASEMENT_CA`, `CASEMENT_HUB_HTTPS`, `CASEMENT_HUB_HTTP`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LocalHubFile {
    connection_string: Option<String>,
    ca: Option<String>,
    endpoint: Option<String>,
    mqtts: Option<String>,
    mqtt: Option<String>,
}

/// What a local `casement hub` tells its devices (from its connection file): where they connect
/// and which CA they trust.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalDeviceEndpoint {
    /// `mqtts://ADDR` (`CASEMENT_HUB_MQTTS`), else `mqtt://ADDR` (`CASEMENT_HUB_MQTT`).
    pub mqtt_endpoint: Option<String>,
    /// The hub's CA file (`CASEMENT_CA`), relative paths resolved against the file's directory.
    pub ca: Option<PathBuf>,
}

/// Reads the device side of a local hub's connection file; `None` when there is no such file.
pub fn local_device_endpoint(local_file: &Path) -> Option<LocalDeviceEndpoint> {
    let text = std::fs::read_to_string(local_file).ok()?;
    let file = parse_env_file(&text);
    let mqtt_endpoint = file
        .mqtts
        .map(|a| format!("mqtts://{a}"))
        .or_else(|| file.mqtt.map(|a| format!("mqtt://{a}")));
    Some(LocalDeviceEndpoint {
        mqtt_endpoint,
        ca: file.ca.map(|c| relative_to(local_file, c)),
    })
}

/// A path from `file`, relative paths taken from the file's directory.
fn relative_to(file: &Path, path: String) -> PathBuf {
    let p = PathBuf::from(path);
    match (p.is_relative(), file.parent()) {
        (true, Some(dir)) => dir.join(p),
        _ => p,
    }
}

fn parse_env_file(text: &str) -> LocalHubFile {
    let mut out = LocalHubFile::default();
    let mut https = false;
    let mut http = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').trim_matches('\'').to_owned();
        match key.trim() {
            CONNECTION_STRING_ENV => out.connection_string = Some(value),
            CA_ENV => out.ca = Some(value),
            "CASEMENT_HUB_HTTPS" => https = true,
            "CASEMENT_HUB_HTTP" => http = Some(value),
            "CASEMENT_HUB_MQTTS" => out.mqtts = Some(value),
            "CASEMENT_HUB_MQTT" => out.mqtt = Some(value),
            _ => {}
        }
    }
    // `https://{HostName}` (the default) reaches the hub's HTTPS port; a hub serving plain
    // HTTP only is reached there.
    if !https {
        out.endpoint = http;
    }
    out
}

impl HubTarget {
    /// A target from a connection string, with the default endpoint `https://{HostName}`.
    pub fn new(connection: ServiceConnectionString) -> Self {
        let endpoint = format!("https://{}", connection.host_name);
        Self {
            connection,
            endpoint,
            ca_pem: None,
            source: "--hub".to_owned(),
        }
    }

    /// Overrides the base URL (`http://127.0.0.1:8080`); SAS tokens still sign `HostName`.
    pub fn with_endpoint(mut self, endpoint: &str) -> Result<Self, TargetError> {
        let trimmed = endpoint.trim().trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("http://")
            .or_else(|| trimmed.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.contains('/') => {
                self.endpoint = trimmed.to_owned();
                Ok(self)
            }
            _ => Err(TargetError::Endpoint {
                endpoint: endpoint.to_owned(),
            }),
        }
    }

    /// Adds trusted CA certificates from a PEM file.
    pub fn with_ca_file(mut self, path: &Path) -> Result<Self, TargetError> {
        let pem = std::fs::read(path).map_err(|source| TargetError::Read {
            path: path.to_owned(),
            source,
        })?;
        reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| TargetError::Ca {
                path: path.to_owned(),
                message: e.to_string(),
            })
            .and_then(|certs| {
                if certs.is_empty() {
                    Err(TargetError::Ca {
                        path: path.to_owned(),
                        message: "no certificate found".to_owned(),
                    })
                } else {
                    Ok(())
                }
            })?;
        self.ca_pem = Some(pem);
        Ok(self)
    }

    /// Resolves the hub from the command line and the environment:
    /// - `hub` (`--hub`, which clap also fills from `IOTHUB_CONNECTION_STRING`) when given;
    /// - otherwise the local hub's file `local_file` (normally [`LOCAL_HUB_FILE`]) when it
    ///   exists — its CA and endpoint are used too, unless `ca` / `endpoint` say otherwise;
    ///   [`HubTarget::source`] then names the file, so the caller can say so on stderr.
    pub fn resolve(
        hub: Option<&str>,
        ca: Option<&Path>,
        endpoint: Option<&str>,
        local_file: &Path,
    ) -> Result<Self, TargetError> {
        let parse = |text: &str, from: String| {
            text.trim()
                .parse::<ServiceConnectionString>()
                .map_err(|source| TargetError::ConnectionString { from, source })
        };
        let (mut target, file) = match hub {
            Some(text) => (
                Self::new(parse(text, String::new())?),
                LocalHubFile::default(),
            ),
            None => {
                let text = match std::fs::read_to_string(local_file) {
                    Ok(t) => t,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(TargetError::NoHub);
                    }
                    Err(source) => {
                        return Err(TargetError::Read {
                            path: local_file.to_owned(),
                            source,
                        });
                    }
                };
                let file = parse_env_file(&text);
                let Some(cs) = file.connection_string.as_deref() else {
                    return Err(TargetError::NoHub);
                };
                let mut target = Self::new(parse(cs, format!(" in {}", local_file.display()))?);
                target.source = local_file.display().to_string();
                (target, file)
            }
        };
        let endpoint = endpoint.map(str::to_owned).or(file.endpoint);
        if let Some(e) = endpoint {
            target = target.with_endpoint(&e)?;
        }
        // A relative CA path in the file is relative to the file.
        let ca = ca
            .map(Path::to_path_buf)
            .or_else(|| file.ca.map(|c| relative_to(local_file, c)));
        if let Some(ca) = ca {
            target = target.with_ca_file(&ca)?;
        }
        Ok(target)
    }
}
