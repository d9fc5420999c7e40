//! What only the hub's integration tests need: a hub with a given config on 127.0.0.1:0,
//! device tokens and keys from connection strings, and a TLS client trusting the hub's CA. The
//! raw REST and MQTT clients are the test kit's ([`casement_tests::rest`], [`casement_tests::mqtt`]).

use std::sync::Arc;

use casement_hub::{Hub, HubConfig, RunningHub};
use casement_iothub::connection_string::DeviceConnectionString;

/// A hub with the test configuration (in memory, every listener on 127.0.0.1:0).
pub async fn start() -> RunningHub {
    start_with(HubConfig::for_tests()).await
}

/// A hub with `config`.
pub async fn start_with(config: HubConfig) -> RunningHub {
    casement_tests::init_tracing();
    Hub::start(config).await.expect("hub starts")
}

/// Seconds since the Unix epoch, by the system clock (for token expiries).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A device token from a device connection string.
pub fn device_token(connection_string: &str, expiry: u64) -> String {
    let cs: DeviceConnectionString = connection_string.parse().expect("device cs");
    cs.password(expiry).expect("sign").expect("key")
}

/// The device key of a device connection string.
pub fn device_key(connection_string: &str) -> String {
    connection_string
        .split(';')
        .find_map(|kv| kv.strip_prefix("SharedAccessKey="))
        .expect("key")
        .to_owned()
}

/// A rustls client config trusting only `ca_pem`.
pub fn client_tls(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
