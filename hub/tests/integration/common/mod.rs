//! What only the hub's integration tests need: a hub with a given config on 127.0.0.1:0 and
//! tokens signed from its connection strings. The raw REST and MQTT clients are the test kit's
//! ([`casement_tests::rest`], [`casement_tests::mqtt`]).

use std::sync::{Arc, Once};

use casement_hub::{Hub, HubConfig, RunningHub};
use casement_iothub::connection_string::{DeviceConnectionString, ServiceConnectionString};

/// Installs the ring crypto provider once per test binary.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("CASEMENT_TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A hub with the test configuration (in memory, every listener on 127.0.0.1:0).
pub async fn start() -> RunningHub {
    start_with(HubConfig::for_tests()).await
}

/// A hub with `config`.
pub async fn start_with(config: HubConfig) -> RunningHub {
    init();
    Hub::start(config).await.expect("hub starts")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A service token for `policy` on `hub`.
pub fn policy_token(hub: &RunningHub, policy: &str) -> String {
    let cs: ServiceConnectionString = hub
        .policy_connection_string(policy)
        .expect("policy")
        .parse()
        .expect("connection string");
    cs.sas_token(now() + 3600).expect("sign")
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
