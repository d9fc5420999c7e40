//! The IoT Hub service REST client the scheduler talks to any hub with (Azure IoT Hub or
//! `casement hub`): twins, queries and direct methods.
//!
//! - Where: [`HubTarget`] — a service connection string, an optional CA file, an optional
//!   endpoint that overrides `https://{HostName}` (for example the local hub's plain HTTP port);
//!   [`HubTarget::resolve`] applies the `--hub` / `IOTHUB_CONNECTION_STRING` / local hub file rules.
//! - How hard: [`ServiceConfig`] — a timeout on every call, retries of 429/500/503 with
//!   exponential back-off and full jitter that honour `Retry-After`, and client-side [`Quota`]s so
//!   a tier's limits (S1: 50 twin updates/s, 20 queries/min per unit) are kept by configuration.
//! - The SAS token is signed with the connection string's policy key, kept, and renewed
//!   [`RENEW_BEFORE_EXPIRY_SECS`] before it expires.
//! - Errors: [`HubError`], which keeps IoT Hub's error code (404103 `DeviceNotOnline`, 412
//!   `PreconditionFailed`, …) so callers can tell them apart.
//!
//! [`HubApi`] is the seam the apply, run and report code is written against; [`ServiceClient`]
//! is the real implementation.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use casement_iothub::connection_string::{ConnectionStringError, ServiceConnectionString};
use casement_iothub::error::{ERROR_CODE_HEADER, ServiceError};
use casement_iothub::rest::{
    self, CONTENT_TYPE_JSON, HEADER_CONTINUATION, HEADER_IF_MATCH, HEADER_MAX_ITEM_COUNT,
    MAX_QUERY_PAGE_SIZE, MethodRequest, MethodResponse, QueryRequest, Twin, TwinPatch,
};
use casement_iothub::sas::{DEFAULT_TOKEN_LIFETIME_SECS, RENEW_BEFORE_EXPIRY_SECS, SasError};
use casement_policy::clock::Clock;
use serde_json::Value;
use tokio::time::Instant;

/// The environment variable holding the service connection string.
pub const CONNECTION_STRING_ENV: &str = "IOTHUB_CONNECTION_STRING";
/// The environment variable holding a CA file.
pub const CA_ENV: &str = "CASEMENT_CA";
/// The file a local `casement hub` writes its connection details to, in its data directory.
pub const LOCAL_HUB_FILE: &str = ".casement/hub/connection.env";

/// Largest response body read (a query page of 100 twins at 64 KB each, with room).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// An error talking to a hub, with the operation it happened in.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
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
    if error.is_connect() {
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

impl HubError {
    /// Whether the hub could not be reached or could not serve the call — unreachable, no
    /// answer in time, throttled or failing (429, 5xx) even after retries — as opposed to a
    /// call it refused on its merits (a wrong key, an unknown device). Trying again later may
    /// help; changing the input will not.
    pub fn is_unavailable(&self) -> bool {
        match self {
            HubError::Transport { .. } | HubError::Timeout { .. } => true,
            HubError::Service { error, .. } => error.status == 429 || error.status >= 500,
            HubError::Decode { .. } | HubError::Sas(_) => false,
        }
    }

    /// The hub's error, when it answered with one.
    pub fn service_error(&self) -> Option<&ServiceError> {
        match self {
            HubError::Service { error, .. } => Some(error),
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
        let ca = ca.map(Path::to_path_buf).or_else(|| {
            file.ca.map(|c| {
                let p = PathBuf::from(c);
                // A relative CA path in the file is relative to the file.
                match (p.is_relative(), local_file.parent()) {
                    (true, Some(dir)) => dir.join(p),
                    _ => p,
                }
            })
        });
        if let Some(ca) = ca {
            target = target.with_ca_file(&ca)?;
        }
        Ok(target)
    }
}

/// Requests per interval for one operation class, as a token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Operations allowed per `per`.
    pub count: f64,
    /// The interval.
    pub per: Duration,
}

impl Rate {
    /// `count` per second.
    pub fn per_second(count: f64) -> Self {
        Self {
            count,
            per: Duration::from_secs(1),
        }
    }

    /// `count` per minute.
    pub fn per_minute(count: f64) -> Self {
        Self {
            count,
            per: Duration::from_secs(60),
        }
    }

    fn per_sec(self) -> f64 {
        self.count / self.per.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.per == Duration::from_secs(60) {
            write!(f, "{}/min", self.count)
        } else {
            write!(f, "{}/s", self.per_sec())
        }
    }
}

/// An IoT Hub pricing tier, for [`Quota::tier`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Free (limits as S1 for the operations the scheduler uses).
    F1,
    /// Standard S1.
    S1,
    /// Standard S2.
    S2,
    /// Standard S3.
    S3,
}

impl std::str::FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "F1" | "FREE" => Ok(Tier::F1),
            "S1" => Ok(Tier::S1),
            "S2" => Ok(Tier::S2),
            "S3" => Ok(Tier::S3),
            _ => Err(format!("unknown tier {s:?} (expected F1, S1, S2 or S3)")),
        }
    }
}

/// Client-side limits per operation class; `None` is unlimited. Against Azure IoT Hub, set them
/// from the hub's tier and units ([`Quota::tier`]) so the scheduler never relies on 429s.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quota {
    /// Twin reads (`GET /twins`).
    pub twin_reads: Option<Rate>,
    /// Twin updates (`PATCH /twins`).
    pub twin_updates: Option<Rate>,
    /// Direct method invocations.
    pub methods: Option<Rate>,
    /// Queries (every page is one).
    pub queries: Option<Rate>,
}

impl Quota {
    /// No client-side limits (the local hub, unthrottled).
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// The documented throttles of a tier with `units` units (Microsoft's "IoT Hub quotas and
    /// throttling"): twin reads 100/s (S2: max(100, 10×units)/s, S3: 500×units/s), twin updates
    /// 50/s (S2: max(50, 5×units)/s, S3: 250×units/s), direct methods metered at 8 KB
    /// (S1 160 KB/s, S2 480 KB/s, S3 24 MB/s per unit: 20, 60, 3,000 calls/s per unit),
    /// queries 20/min per unit (S3: 1,000/min per unit).
    pub fn tier(tier: Tier, units: u32) -> Self {
        let u = f64::from(units.max(1));
        let (reads, updates, methods, queries) = match tier {
            Tier::F1 | Tier::S1 => (100.0, 50.0, 20.0 * u, 20.0 * u),
            Tier::S2 => (
                (10.0 * u).max(100.0),
                (5.0 * u).max(50.0),
                60.0 * u,
                20.0 * u,
            ),
            Tier::S3 => (500.0 * u, 250.0 * u, 3000.0 * u, 1000.0 * u),
        };
        Self {
            twin_reads: Some(Rate::per_second(reads)),
            twin_updates: Some(Rate::per_second(updates)),
            methods: Some(Rate::per_second(methods)),
            queries: Some(Rate::per_minute(queries)),
        }
    }
}

/// Retry policy for 429, 500, 503 and transport errors.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub max_attempts: u32,
    /// The first back-off ceiling; it doubles per attempt.
    pub initial: Duration,
    /// The largest back-off.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based): full jitter under
    /// `min(max, initial × 2^(retry-1))`, and never less than the hub's `Retry-After`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max);
        let jittered = ceiling.mul_f64(jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(after) => jittered.max(after.min(self.max.max(after))),
            None => jittered,
        }
    }
}

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Timeout of every call but direct methods.
    pub request_timeout: Duration,
    /// Added to a direct method's response and connect timeouts for the HTTP call's timeout.
    pub method_timeout_margin: Duration,
    /// Retries.
    pub retry: RetryPolicy,
    /// Client-side rate limits.
    pub quota: Quota,
    /// Query page size (`x-ms-max-item-count`, at most 100).
    pub page_size: usize,
    /// Lifetime of a SAS token.
    pub token_lifetime: Duration,
    /// Renew the token this long before it expires.
    pub token_renew_before: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            method_timeout_margin: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            quota: Quota::unlimited(),
            page_size: MAX_QUERY_PAGE_SIZE,
            token_lifetime: Duration::from_secs(DEFAULT_TOKEN_LIFETIME_SECS),
            token_renew_before: Duration::from_secs(RENEW_BEFORE_EXPIRY_SECS),
        }
    }
}

/// One page of a query answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    /// The items.
    pub items: Vec<Value>,
    /// The continuation token, while more pages remain.
    pub continuation: Option<String>,
}

/// What the scheduler needs from a hub. [`ServiceClient`] implements it over REST; tests wrap it
/// to inject faults the real hub cannot produce on demand (a crash between two steps).
pub trait HubApi: Send + Sync + 'static {
    /// `SELECT …` over every page.
    fn query(&self, sql: &str) -> impl Future<Output = Result<Vec<Value>, HubError>> + Send;
    /// `GET /twins/{id}`.
    fn get_twin(&self, device: &str) -> impl Future<Output = Result<Twin, HubError>> + Send;
    /// `PATCH /twins/{id}`, with `If-Match` when `etag` is given.
    fn patch_twin(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Twin, HubError>> + Send;
    /// `POST /twins/{id}/methods`.
    fn invoke_method(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> impl Future<Output = Result<MethodResponse, HubError>> + Send;
}

impl<T: HubApi> HubApi for Arc<T> {
    fn query(&self, sql: &str) -> impl Future<Output = Result<Vec<Value>, HubError>> + Send {
        (**self).query(sql)
    }
    fn get_twin(&self, device: &str) -> impl Future<Output = Result<Twin, HubError>> + Send {
        (**self).get_twin(device)
    }
    fn patch_twin(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Twin, HubError>> + Send {
        (**self).patch_twin(device, patch, etag)
    }
    fn invoke_method(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> impl Future<Output = Result<MethodResponse, HubError>> + Send {
        (**self).invoke_method(device, request)
    }
}

/// A token bucket on tokio's clock (so `tokio::time::pause()` drives it in tests).
#[derive(Debug)]
struct Bucket {
    rate_per_sec: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: Rate) -> Self {
        let rate_per_sec = rate.per_sec().max(1e-6);
        // Allow a burst of one second's worth (at least one), never a minute's: a per-minute
        // quota is spread out so a restart cannot exceed it.
        let burst = rate_per_sec.clamp(1.0, rate.count.max(1.0));
        Self {
            rate_per_sec,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                let now = Instant::now();
                let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
                state.0 = (state.0 + elapsed * self.rate_per_sec).min(self.burst);
                state.1 = now;
                if state.0 >= 1.0 {
                    state.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.0) / self.rate_per_sec)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Class {
    TwinRead,
    TwinUpdate,
    Method,
    Query,
}

#[derive(Debug)]
struct Limiter {
    twin_reads: Option<Bucket>,
    twin_updates: Option<Bucket>,
    methods: Option<Bucket>,
    queries: Option<Bucket>,
}

impl Limiter {
    fn new(q: &Quota) -> Self {
        Self {
            twin_reads: q.twin_reads.map(Bucket::new),
            twin_updates: q.twin_updates.map(Bucket::new),
            methods: q.methods.map(Bucket::new),
            queries: q.queries.map(Bucket::new),
        }
    }

    async fn acquire(&self, class: Class) {
        let bucket = match class {
            Class::TwinRead => &self.twin_reads,
            Class::TwinUpdate => &self.twin_updates,
            Class::Method => &self.methods,
            Class::Query => &self.queries,
        };
        if let Some(b) = bucket {
            b.acquire().await;
        }
    }
}

#[derive(Debug)]
struct CachedToken {
    token: String,
    expires_unix: i64,
}

struct Inner {
    http: reqwest::Client,
    target: HubTarget,
    config: ServiceConfig,
    clock: Arc<dyn Clock>,
    token: Mutex<Option<CachedToken>>,
    limiter: Limiter,
    request_ids: AtomicU64,
    stats: ClientStats,
}

/// Counters of what the client did (for metrics and benchmarks).
#[derive(Debug, Default)]
pub struct ClientStats {
    /// HTTP requests sent (retries included).
    pub requests: AtomicU64,
    /// Retries after 429/5xx/transport errors.
    pub retries: AtomicU64,
    /// 429 answers seen.
    pub throttled: AtomicU64,
    /// SAS tokens signed.
    pub tokens_signed: AtomicU64,
}

/// The REST client. Cheap to clone (shared connection pool, token and rate limits).
#[derive(Clone)]
pub struct ServiceClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceClient")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

/// Installs rustls' ring crypto provider as the process default unless one is installed (the
/// binaries do this first thing; a library user or a test may not have).
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: either way a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// How one attempt ended.
enum Attempt<T> {
    Done(T),
    Retry {
        error: HubError,
        retry_after: Option<Duration>,
    },
    Fail(HubError),
}

impl<T> Attempt<T> {
    /// `error`, retried (after `retry_after` when the hub said so) when `retry` holds.
    fn failed(error: HubError, retry: bool, retry_after: Option<Duration>) -> Self {
        if retry {
            Attempt::Retry { error, retry_after }
        } else {
            Attempt::Fail(error)
        }
    }
}

impl ServiceClient {
    /// A client for `target`. `clock` dates SAS tokens (the hub checks them against its clock).
    pub fn new(
        target: HubTarget,
        config: ServiceConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TargetError> {
        ensure_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("casement/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            // Drop an idle connection well before a hub would (the local hub closes one after
            // 100 s idle): a POST sent on a connection the hub is closing fails, and a direct
            // method is not idempotent, so it is not retried.
            .pool_idle_timeout(Duration::from_secs(50));
        if let Some(pem) = &target.ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| TargetError::Ca {
                    path: PathBuf::from("--ca"),
                    message: e.to_string(),
                })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(TargetError::Client)?;
        let limiter = Limiter::new(&config.quota);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                target,
                config,
                clock,
                token: Mutex::new(None),
                limiter,
                request_ids: AtomicU64::new(1),
                stats: ClientStats::default(),
            }),
        })
    }

    /// The hub this client talks to.
    pub fn target(&self) -> &HubTarget {
        &self.inner.target
    }

    /// What the client has done so far.
    pub fn stats(&self) -> &ClientStats {
        &self.inner.stats
    }

    /// The current SAS token, signing a new one when none is held or it is near expiry.
    fn token(&self) -> Result<String, HubError> {
        let now = self.inner.clock.now().timestamp();
        let mut cached = self
            .inner
            .token
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let renew = i64::try_from(self.inner.config.token_renew_before.as_secs()).unwrap_or(0);
        if let Some(t) = cached.as_ref()
            && now + renew < t.expires_unix
        {
            return Ok(t.token.clone());
        }
        let lifetime = i64::try_from(self.inner.config.token_lifetime.as_secs())
            .unwrap_or(3600)
            .max(60);
        let expires_unix = now.saturating_add(lifetime);
        let token = self
            .inner
            .target
            .connection
            .sas_token(u64::try_from(expires_unix).unwrap_or(0))?;
        self.inner
            .stats
            .tokens_signed
            .fetch_add(1, Ordering::Relaxed);
        *cached = Some(CachedToken {
            token: token.clone(),
            expires_unix,
        });
        Ok(token)
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.inner.target.endpoint,
            rest::with_api_version(path)
        )
    }

    /// Sends a request (built fresh for every attempt), retrying 429/500/503 and transport
    /// errors with back-off. `idempotent` also retries timeouts.
    async fn send<T>(
        &self,
        op: &str,
        class: Class,
        timeout: Duration,
        idempotent: bool,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        read: impl Fn(reqwest::StatusCode, &reqwest::header::HeaderMap, &[u8]) -> Result<T, HubError>,
    ) -> Result<T, HubError> {
        let retry = &self.inner.config.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.inner.limiter.acquire(class).await;
            let outcome = self.attempt(op, timeout, idempotent, &build, &read).await?;
            match outcome {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { error, retry_after } => {
                    if attempt >= retry.max_attempts.max(1) {
                        return Err(error);
                    }
                    self.inner.stats.retries.fetch_add(1, Ordering::Relaxed);
                    let delay = retry.delay(attempt, retry_after, rand::random::<f64>());
                    tracing::debug!(op, attempt, ?delay, error = %error, "retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt<T>(
        &self,
        op: &str,
        timeout: Duration,
        idempotent: bool,
        build: &impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        read: &impl Fn(reqwest::StatusCode, &reqwest::header::HeaderMap, &[u8]) -> Result<T, HubError>,
    ) -> Result<Attempt<T>, HubError> {
        let token = self.token()?;
        let id = self.inner.request_ids.fetch_add(1, Ordering::Relaxed);
        let request = build(&self.inner.http)
            .header(reqwest::header::AUTHORIZATION, token)
            .header(reqwest::header::ACCEPT, "application/json")
            .header("Request-Id", id.to_string())
            .timeout(timeout);
        self.inner.stats.requests.fetch_add(1, Ordering::Relaxed);
        let call = async {
            let response = request.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = read_limited(response).await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        };
        let (status, headers, body) = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) if !e.is_timeout() => {
                // Connection refused or reset before an answer: the request was not processed
                // when it never connected; otherwise only idempotent calls are retried.
                let retry = e.is_connect() || idempotent;
                let error = HubError::Transport {
                    op: op.to_owned(),
                    error: e,
                };
                return Ok(Attempt::failed(error, retry, None));
            }
            // Our timer or reqwest's: the answer may still come, so only an idempotent call is
            // sent again.
            _ => {
                let error = HubError::Timeout {
                    op: op.to_owned(),
                    after: timeout,
                };
                return Ok(Attempt::failed(error, idempotent, None));
            }
        };
        if status.is_success() {
            return read(status, &headers, &body).map(Attempt::Done);
        }
        let code_header = headers.get(ERROR_CODE_HEADER).and_then(|v| v.to_str().ok());
        let error = ServiceError::parse(status.as_u16(), code_header, &body);
        if error.status == 429 {
            self.inner.stats.throttled.fetch_add(1, Ordering::Relaxed);
        }
        let retryable = error.is_retryable();
        let error = HubError::Service {
            op: op.to_owned(),
            error,
        };
        Ok(Attempt::failed(error, retryable, retry_after(&headers)))
    }

    /// One page of a query.
    pub async fn query_page(
        &self,
        sql: &str,
        continuation: Option<&str>,
    ) -> Result<QueryPage, HubError> {
        let url = self.url(rest::QUERY_PATH);
        let body = serde_json::to_vec(&QueryRequest {
            query: sql.to_owned(),
        })
        .map_err(|e| HubError::Decode {
            op: "POST /devices/query".into(),
            message: e.to_string(),
        })?;
        let page_size = self.inner.config.page_size.clamp(1, MAX_QUERY_PAGE_SIZE);
        self.send(
            "POST /devices/query",
            Class::Query,
            self.inner.config.request_timeout,
            true,
            |http| {
                let mut rb = http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_JSON)
                    .header(HEADER_MAX_ITEM_COUNT, page_size.to_string())
                    .body(body.clone());
                if let Some(c) = continuation {
                    rb = rb.header(HEADER_CONTINUATION, c);
                }
                rb
            },
            |_, headers, body| {
                let items: Vec<Value> = decode("POST /devices/query", body)?;
                let continuation = headers
                    .get(HEADER_CONTINUATION)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned);
                Ok(QueryPage {
                    items,
                    continuation,
                })
            },
        )
        .await
    }

    /// A query, every page.
    pub async fn query_all(&self, sql: &str) -> Result<Vec<Value>, HubError> {
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = self.query_page(sql, continuation.as_deref()).await?;
            items.extend(page.items);
            match page.continuation {
                Some(c) if Some(&c) != continuation.as_ref() => continuation = Some(c),
                Some(_) => {
                    return Err(HubError::Decode {
                        op: "POST /devices/query".into(),
                        message: "the hub repeated a continuation token".into(),
                    });
                }
                None => return Ok(items),
            }
        }
    }

    /// `GET /twins/{id}`.
    pub async fn twin(&self, device: &str) -> Result<Twin, HubError> {
        let path = rest::twin_path(device, None);
        let op = format!("GET {path}");
        let url = self.url(&path);
        self.send(
            &op,
            Class::TwinRead,
            self.inner.config.request_timeout,
            true,
            |http| http.get(&url),
            |_, _, body| decode(&op, body),
        )
        .await
    }

    /// `PATCH /twins/{id}` with `If-Match: "etag"` when given.
    pub async fn patch(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> Result<Twin, HubError> {
        let path = rest::twin_path(device, None);
        let op = format!("PATCH {path}");
        let url = self.url(&path);
        let body = serde_json::to_vec(patch).map_err(|e| HubError::Decode {
            op: op.clone(),
            message: e.to_string(),
        })?;
        let if_match = etag.map(quote_etag);
        self.send(
            &op,
            Class::TwinUpdate,
            self.inner.config.request_timeout,
            // With If-Match a replay is refused with 412; without it, a merge patch applied
            // twice gives the same twin.
            true,
            |http| {
                let mut rb = http
                    .patch(&url)
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_JSON)
                    .body(body.clone());
                if let Some(m) = &if_match {
                    rb = rb.header(HEADER_IF_MATCH, m);
                }
                rb
            },
            |_, _, body| decode(&op, body),
        )
        .await
    }

    /// `POST /twins/{id}/methods`. Timeouts and 504 are not retried here (the method may have
    /// run); 429/500/503 and refused connections are.
    pub async fn invoke(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> Result<MethodResponse, HubError> {
        let path = rest::methods_path(device, None);
        let op = format!("POST {path} ({})", request.method_name);
        let url = self.url(&path);
        let body = serde_json::to_vec(request).map_err(|e| HubError::Decode {
            op: op.clone(),
            message: e.to_string(),
        })?;
        let timeout =
            Duration::from_secs(request.response_timeout_secs() + request.connect_timeout_secs())
                + self.inner.config.method_timeout_margin;
        self.send(
            &op,
            Class::Method,
            timeout,
            false,
            |http| {
                http.post(&url)
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_JSON)
                    .body(body.clone())
            },
            |_, _, body| decode(&op, body),
        )
        .await
    }
}

impl HubApi for ServiceClient {
    fn query(&self, sql: &str) -> impl Future<Output = Result<Vec<Value>, HubError>> + Send {
        self.query_all(sql)
    }
    fn get_twin(&self, device: &str) -> impl Future<Output = Result<Twin, HubError>> + Send {
        self.twin(device)
    }
    fn patch_twin(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Twin, HubError>> + Send {
        self.patch(device, patch, etag)
    }
    fn invoke_method(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> impl Future<Output = Result<MethodResponse, HubError>> + Send {
        self.invoke(device, request)
    }
}

/// `"etag"`: IoT Hub accepts quoted, unquoted and `*`; the SDKs send it quoted.
pub fn quote_etag(etag: &str) -> String {
    let e = etag.trim();
    if e == "*" || (e.len() >= 2 && e.starts_with('"') && e.ends_with('"')) {
        e.to_owned()
    } else {
        format!("\"{e}\"")
    }
}

fn decode<T: serde::de::DeserializeOwned>(op: &str, body: &[u8]) -> Result<T, HubError> {
    serde_json::from_slice(body).map_err(|e| HubError::Decode {
        op: op.to_owned(),
        message: e.to_string(),
    })
}

/// Reads a body, refusing more than [`MAX_RESPONSE_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            // Truncated: the JSON decode reports it.
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` in seconds (IoT Hub sends seconds; an HTTP date is ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests;
