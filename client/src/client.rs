//! The client itself: [`ServiceClient`] (twins, paged queries, direct methods, the device
//! registry) and the [`HubApi`] seam the scheduler is written against.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use casement_iothub::clock::Clock;
use casement_iothub::configuration::Configuration;
use casement_iothub::error::{ERROR_CODE_HEADER, ErrorCode, ServiceError};
use casement_iothub::quota::Operation;
use casement_iothub::rest::{
    self, CONTENT_TYPE_JSON, HEADER_CONTINUATION, HEADER_IF_MATCH, HEADER_MAX_ITEM_COUNT,
    MAX_QUERY_PAGE_SIZE, MethodRequest, MethodResponse, QueryRequest, Twin, TwinPatch,
};
use casement_iothub::sas::{DEFAULT_TOKEN_LIFETIME_SECS, RENEW_BEFORE_EXPIRY_SECS};
use serde_json::Value;

use crate::error::{ClientError, TargetError};
use crate::quota::{Limiter, Quota};
use crate::target::HubTarget;

/// Largest response body read (a query page of 100 twins at 64 KB each, with room).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

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
pub struct ClientConfig {
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

impl Default for ClientConfig {
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
    fn query(&self, sql: &str) -> impl Future<Output = Result<Vec<Value>, ClientError>> + Send;
    /// `GET /twins/{id}`.
    fn get_twin(&self, device: &str) -> impl Future<Output = Result<Twin, ClientError>> + Send;
    /// `PATCH /twins/{id}`, with `If-Match` when `etag` is given.
    fn patch_twin(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Twin, ClientError>> + Send;
    /// `POST /twins/{id}/methods`.
    fn invoke_method(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> impl Future<Output = Result<MethodResponse, ClientError>> + Send;
    /// `GET /configurations`. The default answers that configurations are not supported.
    fn list_configurations(
        &self,
    ) -> impl Future<Output = Result<Vec<Configuration>, ClientError>> + Send {
        async { Err(crate::configurations::unsupported("GET /configurations")) }
    }
    /// `PUT /configurations/{id}`: create (no `etag`) or update (`If-Match: etag`).
    fn put_configuration(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Configuration, ClientError>> + Send {
        let _ = etag;
        let op = format!("PUT /configurations/{}", config.id);
        async move { Err(crate::configurations::unsupported(&op)) }
    }
    /// `DELETE /configurations/{id}` (`If-Match: *`).
    fn delete_configuration(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<(), ClientError>> + Send {
        let op = format!("DELETE /configurations/{id}");
        async move { Err(crate::configurations::unsupported(&op)) }
    }
}

impl<T: HubApi> HubApi for Arc<T> {
    fn query(&self, sql: &str) -> impl Future<Output = Result<Vec<Value>, ClientError>> + Send {
        (**self).query(sql)
    }
    fn get_twin(&self, device: &str) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        (**self).get_twin(device)
    }
    fn patch_twin(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        (**self).patch_twin(device, patch, etag)
    }
    fn invoke_method(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> impl Future<Output = Result<MethodResponse, ClientError>> + Send {
        (**self).invoke_method(device, request)
    }
    fn list_configurations(
        &self,
    ) -> impl Future<Output = Result<Vec<Configuration>, ClientError>> + Send {
        (**self).list_configurations()
    }
    fn put_configuration(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Configuration, ClientError>> + Send {
        (**self).put_configuration(config, etag)
    }
    fn delete_configuration(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<(), ClientError>> + Send {
        (**self).delete_configuration(id)
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
    config: ClientConfig,
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
        error: ClientError,
        retry_after: Option<Duration>,
    },
    Fail(ClientError),
}

impl<T> Attempt<T> {
    /// `error`, retried (after `retry_after` when the hub said so) when `retry` holds.
    fn failed(error: ClientError, retry: bool, retry_after: Option<Duration>) -> Self {
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
        config: ClientConfig,
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

    /// The timeout of one call (`ClientConfig::request_timeout`).
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.config.request_timeout
    }

    /// The current SAS token, signing a new one when none is held or it is near expiry.
    fn token(&self) -> Result<String, ClientError> {
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

    /// The configuration the client was made with.
    pub(crate) fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!(
            "{}{}",
            self.inner.target.endpoint,
            rest::with_api_version(path)
        )
    }

    /// Sends a request (built fresh for every attempt), retrying 429/500/503 and transport
    /// errors with back-off. `idempotent` also retries timeouts.
    pub(crate) async fn send<T>(
        &self,
        op: &str,
        class: Operation,
        timeout: Duration,
        idempotent: bool,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        read: impl Fn(reqwest::StatusCode, &reqwest::header::HeaderMap, &[u8]) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
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
        read: &impl Fn(
            reqwest::StatusCode,
            &reqwest::header::HeaderMap,
            &[u8],
        ) -> Result<T, ClientError>,
    ) -> Result<Attempt<T>, ClientError> {
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
                // An untrusted certificate stays untrusted: not retried.
                let retry =
                    (e.is_connect() || idempotent) && !crate::error::is_untrusted_certificate(&e);
                let error = ClientError::Transport {
                    op: op.to_owned(),
                    error: e,
                };
                return Ok(Attempt::failed(error, retry, None));
            }
            // Our timer or reqwest's: the answer may still come, so only an idempotent call is
            // sent again.
            _ => {
                let error = ClientError::Timeout {
                    op: op.to_owned(),
                    after: timeout,
                };
                return Ok(Attempt::failed(error, idempotent, None));
            }
        };
        let code_header = headers.get(ERROR_CODE_HEADER).and_then(|v| v.to_str().ok());
        // A bulk registry call some of whose entries were refused answers 400 with the
        // BulkRegistryOperationResult naming them; the other entries were applied. That is
        // the call's answer, for the caller to read, not a failure of the call.
        if status.is_success()
            || (status == reqwest::StatusCode::BAD_REQUEST
                && code_header == Some(ErrorCode::BulkRegistryOperationFailure.name()))
        {
            return read(status, &headers, &body).map(Attempt::Done);
        }
        let error = ServiceError::parse(status.as_u16(), code_header, &body);
        if error.status == 429 {
            self.inner.stats.throttled.fetch_add(1, Ordering::Relaxed);
        }
        let retryable = error.is_retryable();
        let error = ClientError::Service {
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
    ) -> Result<QueryPage, ClientError> {
        let url = self.url(rest::QUERY_PATH);
        let body = serde_json::to_vec(&QueryRequest {
            query: sql.to_owned(),
        })
        .map_err(|e| ClientError::Decode {
            op: "POST /devices/query".into(),
            message: e.to_string(),
        })?;
        let page_size = self.inner.config.page_size.clamp(1, MAX_QUERY_PAGE_SIZE);
        self.send(
            "POST /devices/query",
            Operation::Queries,
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
    pub async fn query_all(&self, sql: &str) -> Result<Vec<Value>, ClientError> {
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = self.query_page(sql, continuation.as_deref()).await?;
            items.extend(page.items);
            match page.continuation {
                Some(c) if Some(&c) != continuation.as_ref() => continuation = Some(c),
                Some(_) => {
                    return Err(ClientError::Decode {
                        op: "POST /devices/query".into(),
                        message: "the hub repeated a continuation token".into(),
                    });
                }
                None => return Ok(items),
            }
        }
    }

    /// `GET /twins/{id}`.
    pub async fn twin(&self, device: &str) -> Result<Twin, ClientError> {
        let path = device_path("GET", device, |d| rest::twin_path(d, None))?;
        let op = format!("GET {path}");
        let url = self.url(&path);
        self.send(
            &op,
            Operation::TwinReads,
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
    ) -> Result<Twin, ClientError> {
        let path = device_path("PATCH", device, |d| rest::twin_path(d, None))?;
        let op = format!("PATCH {path}");
        let url = self.url(&path);
        let body = serde_json::to_vec(patch).map_err(|e| ClientError::Decode {
            op: op.clone(),
            message: e.to_string(),
        })?;
        let if_match = etag.map(rest::quote_etag);
        self.send(
            &op,
            Operation::TwinUpdates,
            self.inner.config.request_timeout,
            // With If-Match a replay is refused with 412; without it, a merge patch applied
            // twice gives the same twin.
            true,
            |http| json_request(http.patch(&url), body.clone(), if_match.as_deref()),
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
    ) -> Result<MethodResponse, ClientError> {
        let path = device_path("POST", device, |d| rest::methods_path(d, None))?;
        let op = format!("POST {path} ({})", request.method_name);
        let url = self.url(&path);
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Decode {
            op: op.clone(),
            message: e.to_string(),
        })?;
        let timeout =
            Duration::from_secs(request.response_timeout_secs() + request.connect_timeout_secs())
                + self.inner.config.method_timeout_margin;
        self.send(
            &op,
            Operation::Methods,
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
    fn query(&self, sql: &str) -> impl Future<Output = Result<Vec<Value>, ClientError>> + Send {
        self.query_all(sql)
    }
    fn get_twin(&self, device: &str) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        self.twin(device)
    }
    fn patch_twin(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        self.patch(device, patch, etag)
    }
    fn invoke_method(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> impl Future<Output = Result<MethodResponse, ClientError>> + Send {
        self.invoke(device, request)
    }
    fn list_configurations(
        &self,
    ) -> impl Future<Output = Result<Vec<Configuration>, ClientError>> + Send {
        self.configurations()
    }
    fn put_configuration(
        &self,
        config: &Configuration,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Configuration, ClientError>> + Send {
        self.put_config(config, etag)
    }
    fn delete_configuration(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<(), ClientError>> + Send {
        self.delete_config(id)
    }
}

/// The path of `device`'s twin (or its methods), refusing before anything is sent an id that no
/// URL can carry (`.` and `..`: HTTP clients remove such path segments, so the request would
/// reach another resource).
fn device_path(
    op: &str,
    device: &str,
    path: impl Fn(&str) -> String,
) -> Result<String, ClientError> {
    if device == "." || device == ".." {
        return Err(ClientError::Invalid {
            op: format!("{op} {device:?}"),
            message: "a device id of \".\" or \"..\" cannot be addressed in a URL path \
                      (HTTP clients remove such segments); rename the device (delete it and \
                      create it under another id)"
                .to_owned(),
        });
    }
    Ok(path(device))
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    op: &str,
    body: &[u8],
) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(|e| ClientError::Decode {
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

/// A request carrying a JSON `body`, and `If-Match` when an ETag is given (a PATCH of a twin, a
/// PUT of a configuration).
pub(crate) fn json_request(
    request: reqwest::RequestBuilder,
    body: impl Into<reqwest::Body>,
    if_match: Option<&str>,
) -> reqwest::RequestBuilder {
    let request = request
        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_JSON)
        .body(body);
    match if_match {
        Some(etag) => request.header(HEADER_IF_MATCH, etag),
        None => request,
    }
}
