//! TLS for the MQTT and HTTPS listeners: a local CA and a server certificate generated on first
//! start (rcgen, ECDSA P-256 on ring), or a certificate and key the user supplies.
//!
//! Generated files, in the data directory:
//! - `ca.pem` — the CA certificate clients trust (`NODE_EXTRA_CA_CERTS`, `REQUESTS_CA_BUNDLE`,
//!   `casement --ca`);
//! - `ca-key.pem` — the CA key (mode 0600), kept so the server certificate can be re-issued
//!   when `--hostname` changes or it nears expiry, without clients re-trusting anything;
//! - `server.pem` / `server-key.pem` — the leaf (SANs: the hostname, `localhost`, `127.0.0.1`,
//!   `::1` and any aliases) followed by the CA;
//! - `tls.json` — the names and expiry the leaf was issued for.
//!
//! With `--in-memory` the same material is generated and held in memory only.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{Datelike, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// Why TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("cannot {op} {path}: {source}")]
    File {
        /// "read" or "write".
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rcgen failed to generate a certificate.
    #[error("cannot generate the hub certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the certificate or key.
    #[error("the TLS certificate or key is not usable: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the server certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsSource {
    /// Generate a CA and a server certificate on first start (stored in the data directory).
    #[default]
    Generate,
    /// Use this PEM certificate chain and PEM private key.
    Files {
        /// The certificate chain (leaf first).
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
}

/// The TLS material the listeners use.
#[derive(Debug, Clone)]
pub(crate) struct TlsMaterial {
    /// The CA certificate clients should trust, when the hub generated it.
    pub(crate) ca_pem: Option<String>,
    /// Where `ca_pem` is stored, when on disk.
    pub(crate) ca_path: Option<PathBuf>,
    /// The server's certificate file, when on disk.
    pub(crate) cert_path: Option<PathBuf>,
    /// Config for MQTT over TLS (no ALPN).
    pub(crate) mqtt: Arc<ServerConfig>,
    /// Config for HTTPS (ALPN `http/1.1`).
    pub(crate) https: Arc<ServerConfig>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct IssuedFor {
    names: Vec<String>,
    /// Unix seconds.
    not_after: i64,
}

const CA_CN: &str = "casement hub local CA";
/// Leaf lifetime: under the 825 days Apple platforms accept for TLS server certificates.
const LEAF_DAYS: i64 = 800;
/// Re-issue the leaf when it has less than this left.
const RENEW_DAYS: i64 = 30;

/// The names the server certificate covers: the hostname, the loopback names, the aliases.
pub(crate) fn certificate_names(hostname: &str, aliases: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in std::iter::once(hostname)
        .chain(["localhost", "127.0.0.1", "::1"])
        .chain(aliases.iter().map(String::as_str))
    {
        let name = name.trim().to_ascii_lowercase();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Loads or generates the hub's TLS material.
pub(crate) fn load_or_generate(
    source: &TlsSource,
    data_dir: Option<&Path>,
    names: &[String],
) -> Result<TlsMaterial, TlsError> {
    match source {
        TlsSource::Files { cert, key } => {
            let chain = read_chain(cert)?;
            let key_der = read_key(key)?;
            Ok(TlsMaterial {
                ca_pem: None,
                ca_path: None,
                cert_path: Some(cert.clone()),
                mqtt: server_config(chain.clone(), key_der.clone_key(), false)?,
                https: server_config(chain, key_der, true)?,
            })
        }
        TlsSource::Generate => match data_dir {
            Some(dir) => load_or_generate_in(dir, names),
            None => {
                let ca_key = KeyPair::generate()?;
                let ca_params = ca_params();
                let ca_pem = ca_params.self_signed(&ca_key)?.pem();
                let (leaf_pem, leaf_key_pem, _) = issue_leaf(&ca_params, &ca_key, names)?;
                let chain_pem = format!("{leaf_pem}{ca_pem}");
                material(ca_pem, None, None, &chain_pem, &leaf_key_pem)
            }
        },
    }
}

fn load_or_generate_in(dir: &Path, names: &[String]) -> Result<TlsMaterial, TlsError> {
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server-key.pem");
    let meta_path = dir.join("tls.json");

    let ca_params = ca_params();
    let (ca_pem, ca_key) = if ca_path.exists() && ca_key_path.exists() {
        let ca_pem = read_text(&ca_path)?;
        let ca_key = KeyPair::from_pem(&read_text(&ca_key_path)?).map_err(|e| TlsError::Pem {
            path: ca_key_path.clone(),
            what: format!(
                "not a usable CA key ({e}); delete ca.pem and ca-key.pem to generate a new CA"
            ),
        })?;
        (ca_pem, ca_key)
    } else {
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        write_file(&ca_key_path, ca_key.serialize_pem().as_bytes(), true)?;
        write_file(&ca_path, ca_pem.as_bytes(), false)?;
        // A new CA invalidates any old leaf.
        let _ = fs::remove_file(&meta_path);
        (ca_pem, ca_key)
    };

    let now = Utc::now().timestamp();
    let current: Option<IssuedFor> = fs::read(&meta_path)
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok());
    let fresh = current.as_ref().is_some_and(|issued| {
        issued.names == names && issued.not_after - now > RENEW_DAYS * 86_400
    }) && cert_path.exists()
        && key_path.exists();
    if !fresh {
        let (leaf_pem, leaf_key_pem, not_after) = issue_leaf(&ca_params, &ca_key, names)?;
        write_file(&key_path, leaf_key_pem.as_bytes(), true)?;
        write_file(&cert_path, format!("{leaf_pem}{ca_pem}").as_bytes(), false)?;
        let meta = IssuedFor {
            names: names.to_vec(),
            not_after,
        };
        let meta = serde_json::to_vec_pretty(&meta).map_err(|e| TlsError::Pem {
            path: meta_path.clone(),
            what: e.to_string(),
        })?;
        write_file(&meta_path, &meta, false)?;
    }
    let chain_pem = read_text(&cert_path)?;
    let key_pem = read_text(&key_path)?;
    material(ca_pem, Some(ca_path), Some(cert_path), &chain_pem, &key_pem)
}

fn material(
    ca_pem: String,
    ca_path: Option<PathBuf>,
    cert_path: Option<PathBuf>,
    chain_pem: &str,
    key_pem: &str,
) -> Result<TlsMaterial, TlsError> {
    let origin = cert_path
        .clone()
        .unwrap_or_else(|| PathBuf::from("(generated)"));
    let chain = parse_chain(chain_pem.as_bytes(), &origin)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        path: origin.clone(),
        what: format!("no private key: {e}"),
    })?;
    Ok(TlsMaterial {
        ca_pem: Some(ca_pem),
        ca_path,
        cert_path,
        mqtt: server_config(chain.clone(), key.clone_key(), false)?,
        https: server_config(chain, key, true)?,
    })
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, "Casement");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = Utc::now().year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 20, 1, 1);
    params
}

/// Issues a leaf for `names`; returns (cert PEM, key PEM, not_after unix seconds).
fn issue_leaf(
    ca_params: &CertificateParams,
    ca_key: &KeyPair,
    names: &[String],
) -> Result<(String, String, i64), TlsError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("localhost"),
    );
    dn.push(DnType::OrganizationName, "Casement");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = Utc::now();
    let not_before = now - chrono::Duration::days(1);
    let not_after = now + chrono::Duration::days(LEAF_DAYS);
    params.not_before = rcgen::date_time_ymd(
        not_before.year(),
        not_before.month() as u8,
        not_before.day() as u8,
    );
    params.not_after = rcgen::date_time_ymd(
        not_after.year(),
        not_after.month() as u8,
        not_after.day() as u8,
    );
    let key = KeyPair::generate()?;
    let issuer = Issuer::from_params(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), not_after.timestamp()))
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    http: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    if http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::File {
        op: "read",
        path: path.to_owned(),
        source,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let raw = fs::read(path).map_err(|source| TlsError::File {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    parse_chain(&raw, path)
}

fn parse_chain(raw: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(raw)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block found (expected PEM, leaf first)".to_owned(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let raw = fs::read(path).map_err(|source| TlsError::File {
        op: "read",
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&raw).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {e}"),
    })
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::File {
        op: "write",
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        certificate_names("myhub.local", &[])
    }

    #[test]
    fn names_include_loopback_and_are_deduplicated() {
        assert_eq!(
            certificate_names("LocalHost", &["127.0.0.1".into(), "gw".into()]),
            vec!["localhost", "127.0.0.1", "::1", "gw"]
        );
    }

    #[test]
    fn generates_once_and_reuses_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first =
            load_or_generate(&TlsSource::Generate, Some(dir.path()), &names()).expect("gen");
        let again =
            load_or_generate(&TlsSource::Generate, Some(dir.path()), &names()).expect("load");
        assert_eq!(first.ca_pem, again.ca_pem);
        assert_eq!(
            first.ca_path.as_deref(),
            Some(dir.path().join("ca.pem").as_path())
        );
        let leaf = fs::read_to_string(dir.path().join("server.pem")).expect("leaf");
        // A hostname change re-issues the leaf under the same CA.
        let other = certificate_names("other.local", &[]);
        let renamed =
            load_or_generate(&TlsSource::Generate, Some(dir.path()), &other).expect("re-issue");
        assert_eq!(renamed.ca_pem, first.ca_pem);
        assert_ne!(
            fs::read_to_string(dir.path().join("server.pem")).expect("leaf"),
            leaf
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("ca-key.pem"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "CA key must not be readable by others");
        }
    }

    #[test]
    fn user_files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        fs::write(&cert, "not pem").expect("write");
        fs::write(&key, "not pem").expect("write");
        let err = load_or_generate(
            &TlsSource::Files {
                cert: cert.clone(),
                key,
            },
            None,
            &names(),
        )
        .expect_err("bad");
        assert!(err.to_string().contains("c.pem"), "{err}");
    }

    #[test]
    fn in_memory_generation_has_a_ca() {
        let tls = load_or_generate(&TlsSource::Generate, None, &names()).expect("gen");
        assert!(
            tls.ca_pem
                .as_deref()
                .is_some_and(|p| p.contains("BEGIN CERTIFICATE"))
        );
        assert!(tls.ca_path.is_none());
    }
}
