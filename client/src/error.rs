//! What can go wrong talking to a hub: [`ClientError`] for a call, [`TargetError`] for the
//! configuration of where the hub is.

use std::path::PathBuf;
use std::time::Duration;

use casement_iothub::connection_string::ConnectionStringError;
use casement_iothub::error::ServiceError;
use casement_iothub::sas::SasError;

use crate::target::{CONNECTION_STRING_ENV, LOCAL_HUB_FILE};

/// An error talking to a hub, with the operation it happened in.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub answered with an error (after retries, for retryable ones).
    #[error("{op}: {error}")]
    Service {
        /// The operation, e.g. `PATCH /twins/d1`.
        op: String,
        /// The parsed error, with IoT Hub's code.
        #[source]
        error: ServiceError,
    },
    /// The request never got an answer (connection refused, TLS failure, reset), after retries.
    /// The message carries the root cause once (reqwest's own chain repeats the URL at every
    /// level), so the error is not also a `source`.
    #[error("{op}: {}", transport_message(error))]
    Transport {
        /// The operation.
        op: String,
        /// Why.
        error: reqwest::Error,
    },
    /// No answer within the call's timeout.
    #[error("{op}: no answer within {after:?}")]
    Timeout {
        /// The operation.
        op: String,
        /// The timeout.
        after: Duration,
    },
    /// The answer was not what the REST API promises.
    #[error("{op}: unexpected answer: {message}")]
    Decode {
        /// The operation.
        op: String,
        /// What was wrong.
        message: String,
    },
    /// The SAS token could not be signed (a bad key in the connection string).
    #[error("cannot sign a SAS token: {0}")]
    Sas(#[from] SasError),
    /// The request cannot be sent as asked (a device id no URL can carry); nothing was sent.
    #[error("{op}: {message}")]
    Invalid {
        /// The operation.
        op: String,
        /// What is wrong, and what would be right.
        message: String,
    },
}

/// Whether `error` is a TLS handshake that failed because the server's certificate is not
/// trusted (an unknown issuer, a name or date that does not match): trying again will not help,
/// `--ca` will.
pub fn is_untrusted_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(rustls_error) = e.downcast_ref::<rustls::Error>() {
            return matches!(rustls_error, rustls::Error::InvalidCertificate(_));
        }
        let text = e.to_string();
        if text.contains("invalid peer certificate") || text.contains("UnknownIssuer") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// `cannot connect to 127.0.0.1:8080: Connection refused (os error 111) (is the hub running
/// there? --hub and --endpoint say where it is)`, or `no answer from <url>: <root cause>`.
fn transport_message(error: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = error;
    while let Some(next) = root.source() {
        root = next;
    }
    let url = error.url();
    let place = url.map_or_else(
        || "the hub".to_owned(),
        |u| match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            _ => u.as_str().to_owned(),
        },
    );
    if is_untrusted_certificate(error) {
        format!(
            "the TLS certificate of {place} is not trusted ({root}): pass the CA that signed it \
             with --ca FILE (or {}); a local `casement hub` prints its CA file at start-up and \
             writes it to connection.env as {}",
            crate::target::CA_ENV,
            crate::target::CA_ENV
        )
    } else if error.is_connect() {
        format!(
            "cannot connect to {place}: {root} (is the hub running there? --hub and --endpoint \
             say where it is)"
        )
    } else {
        let url = url.map_or_else(
            || place.clone(),
            |u| format!("{}{}", u.origin().ascii_serialization(), u.path()),
        );
        format!("no answer from {url}: {root}")
    }
}

impl ClientError {
    /// Whether the hub could not be reached or could not serve the call — unreachable, no
    /// answer in time, throttled or failing (429, 5xx) even after retries — as opposed to a
    /// call it refused on its merits (a wrong key, an unknown device). Trying again later may
    /// help; changing the input will not.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Transport { error, .. } => !is_untrusted_certificate(error),
            ClientError::Timeout { .. } => true,
            ClientError::Service { error, .. } => error.status == 429 || error.status >= 500,
            ClientError::Decode { .. } | ClientError::Sas(_) | ClientError::Invalid { .. } => false,
        }
    }

    /// Whether the hub's TLS certificate is not trusted (see [`is_untrusted_certificate`]):
    /// fix `--ca`, do not wait.
    pub fn is_untrusted_certificate(&self) -> bool {
        matches!(self, ClientError::Transport { error, .. } if is_untrusted_certificate(error))
    }

    /// Whether the request may have reached the hub and been carried out although no answer
    /// says so: no answer in time, or the connection lost after the request went out. A
    /// connection that was never made (refused, unreachable, an untrusted certificate) carried
    /// nothing; an answer, even an error, says what happened.
    pub fn may_have_been_carried_out(&self) -> bool {
        match self {
            ClientError::Timeout { .. } => true,
            ClientError::Transport { error, .. } => {
                !error.is_connect() && !is_untrusted_certificate(error)
            }
            ClientError::Service { .. }
            | ClientError::Decode { .. }
            | ClientError::Sas(_)
            | ClientError::Invalid { .. } => false,
        }
    }

    /// The hub's error, when it answered with one.
    pub fn service_error(&self) -> Option<&ServiceError> {
        match self {
            ClientError::Service { error, .. } => Some(error),
            _ => None,
        }
    }

    /// 404103: the device is not connected (or not subscribed to methods).
    pub fn is_device_offline(&self) -> bool {
        self.service_error()
            .is_some_and(ServiceError::is_device_offline)
    }

    /// 412: the `If-Match` ETag is stale.
    pub fn is_precondition_failed(&self) -> bool {
        self.service_error()
            .is_some_and(ServiceError::is_precondition_failed)
    }

    /// 404001: no such device.
    pub fn is_device_not_found(&self) -> bool {
        self.service_error()
            .is_some_and(ServiceError::is_device_not_found)
    }

    /// 429: still throttled after every retry.
    pub fn is_throttled(&self) -> bool {
        self.service_error().is_some_and(|e| e.status == 429)
    }

    /// The HTTP status, when the hub answered.
    pub fn status(&self) -> Option<u16> {
        self.service_error().map(|e| e.status)
    }
}

/// Why a hub could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No connection string anywhere.
    #[error(
        "no hub given: pass --hub or set {CONNECTION_STRING_ENV} (or start `casement hub`, which writes {LOCAL_HUB_FILE})"
    )]
    NoHub,
    /// The connection string is invalid.
    #[error("invalid service connection string{from}: {source}")]
    ConnectionString {
        /// Where it came from (`" in <file>"`), or empty.
        from: String,
        /// Why.
        #[source]
        source: ConnectionStringError,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("{path}: not a PEM certificate bundle: {message}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The endpoint is not an http(s) URL.
    #[error("invalid endpoint {endpoint:?}: expected http://host[:port] or https://host[:port]")]
    Endpoint {
        /// What was given.
        endpoint: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}
