//! Building an IoT Hub MQTT connection: TLS trust, the CONNECT username and SAS password, and
//! the rumqttc options. No I/O beyond reading the CA file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use casement_iothub::connection_string::DeviceConnectionString;
use casement_iothub::sas::SasError;
use casement_iothub::topic::MqttUsername;
use rumqttc::{MqttOptions, TlsConfiguration, Transport as MqttTransport};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use crate::config::{Endpoint, Transport};

/// The `DeviceClientType` the agent announces: `casement-agent/<version>`.
pub const CLIENT_TYPE: &str = concat!("casement-agent/", env!("CARGO_PKG_VERSION"));
/// The largest packet the agent accepts or sends (twins are ≤ 32 KiB each, methods ≤ 128 KiB).
pub const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Errors preparing a connection (as opposed to the connection failing).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No system root certificate could be loaded.
    #[error("no system root certificates could be loaded ({0}); pass --ca with the hub's CA")]
    NoSystemRoots(String),
    /// TLS could not be configured.
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The SAS token could not be signed (a malformed key).
    #[error("cannot sign a SAS token for {device}: {source}")]
    Sas {
        /// The device.
        device: String,
        /// The signing error.
        #[source]
        source: SasError,
    },
}

/// A TLS client config trusting the PEM certificates in `ca`, or the system roots.
pub fn tls_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, ConnectError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let ca_err = |reason: String| ConnectError::CaFile {
                path: path.to_path_buf(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|err| ca_err(err.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| ca_err(err.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate in it".to_owned()));
            }
            for cert in certs {
                roots.add(cert).map_err(|err| ca_err(err.to_string()))?;
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                let why = loaded
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(ConnectError::NoSystemRoots(why));
            }
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The CONNECT username: `{host}/{device}/?api-version=2021-04-12&DeviceClientType=casement-agent%2F<ver>`.
pub fn username(connection: &DeviceConnectionString) -> String {
    MqttUsername::new(
        &connection.host_name,
        &connection.device_id,
        connection.module_id.as_deref(),
        CLIENT_TYPE,
    )
    .to_string()
}

/// The rumqttc options for one connection attempt: ClientId, username, the SAS `password`,
/// CleanSession=0, the keep-alive, and TCP or TLS.
pub fn mqtt_options(
    connection: &DeviceConnectionString,
    endpoint: &Endpoint,
    tls: Option<&Arc<ClientConfig>>,
    password: String,
    keep_alive: Duration,
) -> MqttOptions {
    let mut options = MqttOptions::new(connection.client_id(), &endpoint.host, endpoint.port);
    options
        .set_credentials(username(connection), password)
        .set_clean_session(false)
        .set_keep_alive(keep_alive)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_inflight(16);
    if let (Transport::Tls, Some(tls)) = (endpoint.transport, tls) {
        options.set_transport(MqttTransport::tls_with_config(TlsConfiguration::Rustls(
            Arc::clone(tls),
        )));
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> DeviceConnectionString {
        "HostName=hub.example.net;DeviceId=gw-1;SharedAccessKey=c2VjcmV0LWtleS0wMTIzNDU2Nzg5"
            .parse()
            .unwrap()
    }

    #[test]
    fn username_has_the_api_version_and_client_type() {
        let user = username(&connection());
        assert!(
            user.starts_with(
                "hub.example.net/gw-1/?api-version=2021-04-12&DeviceClientType=casement-agent%2F"
            ),
            "{user}"
        );
        let parsed = MqttUsername::parse(&user).unwrap();
        assert_eq!(parsed.params.value("DeviceClientType"), Some(CLIENT_TYPE));
    }

    #[test]
    fn options_are_a_persistent_session_with_the_device_identity() {
        let endpoint: Endpoint = "mqtt://127.0.0.1:1883".parse().unwrap();
        let options = mqtt_options(
            &connection(),
            &endpoint,
            None,
            "SharedAccessSignature sr=x".into(),
            Duration::from_secs(180),
        );
        assert_eq!(options.client_id(), "gw-1");
        assert!(!options.clean_session());
        assert_eq!(options.keep_alive(), Duration::from_secs(180));
        assert_eq!(options.broker_address(), ("127.0.0.1".to_owned(), 1883));
        let login = options.credentials().unwrap();
        assert_eq!(login.password, "SharedAccessSignature sr=x");
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = tls_config(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
        let err = tls_config(Some(&dir.path().join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
