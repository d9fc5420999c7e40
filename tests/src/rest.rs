//! A deliberately raw client of the service REST API: any method, path, body, headers and
//! `Authorization` — valid or not — so tests can send what a correct client never would and read
//! exactly what came back.
//!
//! [`Rest::call`] returns what happened, for tests where a failure to answer is the subject;
//! the shorthands ([`Rest::get`], [`Rest::put`], [`Rest::query`], [`Rest::invoke`], …) panic
//! when no HTTP answer comes, for tests that read the answer's status, headers and body.

use std::sync::Arc;
use std::time::Duration;

use casement_hub::RunningHub;
use casement_iothub::clock::{Clock, SystemClock};
use casement_iothub::connection_string::ServiceConnectionString;
use casement_iothub::error::{ERROR_CODE_HEADER, ServiceError};
use casement_iothub::rest::API_VERSION;
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

/// A request failed below HTTP (connect, timeout, a broken body).
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The request did not get an answer.
    #[error("{method} {path}: {source}")]
    Send {
        /// The method.
        method: Method,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// A service token could not be signed.
    #[error("cannot sign a service token: {0}")]
    Sign(String),
}

/// What goes in the `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// The client's credentials: its [fixed token](Rest::with_token) if it has one, else a
    /// fresh token of its service connection string.
    Service,
    /// No header.
    None,
    /// This exact header value.
    Header(String),
}

/// One request, built up by the test.
#[derive(Debug, Clone)]
pub struct Call {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    auth: Auth,
    headers: Vec<(String, String)>,
    api_version: bool,
}

impl Call {
    /// A request; `path` may carry a query string. `api-version` is appended unless
    /// [`without_api_version`](Self::without_api_version).
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            body: None,
            auth: Auth::Service,
            headers: Vec::new(),
            api_version: true,
        }
    }

    /// `GET path`.
    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    /// `POST path`.
    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    /// `PUT path`.
    pub fn put(path: impl Into<String>) -> Self {
        Self::new(Method::PUT, path)
    }

    /// `PATCH path`.
    pub fn patch(path: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path)
    }

    /// `DELETE path`.
    pub fn delete(path: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path)
    }

    /// A JSON body (and its content type).
    pub fn json(self, body: &impl Serialize) -> Self {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.bytes(bytes)
            .header("content-type", "application/json; charset=utf-8")
    }

    /// A raw body, sent as is.
    pub fn bytes(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The `Authorization` header.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// An extra header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `POST /devices/query` for `sql`, with a page size (`x-ms-max-item-count`) and a
    /// continuation token when given.
    pub fn query(sql: &str, page: Option<usize>, continuation: Option<&str>) -> Self {
        let mut call = Self::post("/devices/query").json(&serde_json::json!({ "query": sql }));
        if let Some(page) = page {
            call = call.header("x-ms-max-item-count", &page.to_string());
        }
        if let Some(token) = continuation {
            call = call.header("x-ms-continuation", token);
        }
        call
    }

    /// Sends the path exactly as given, without `api-version`.
    pub fn without_api_version(mut self) -> Self {
        self.api_version = false;
        self
    }

    fn url_path(&self) -> String {
        if !self.api_version {
            return self.path.clone();
        }
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}api-version={API_VERSION}", self.path)
    }
}

/// What came back.
#[derive(Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The answer read as an IoT Hub error (whatever it is).
    pub fn error(&self) -> ServiceError {
        ServiceError::parse(self.status, self.header(ERROR_CODE_HEADER), &self.body)
    }

    /// Whether this is the error `status` with the error code named `code` in both the
    /// `iothub-errorcode` header and the `ErrorCode:<Name>;` body (semicolon included), as IoT
    /// Hub sends errors.
    pub fn is_error(&self, status: u16, code: &str) -> bool {
        let body_code = self
            .json()
            .get("Message")
            .and_then(Value::as_str)
            .and_then(|m| m.strip_prefix("ErrorCode:"))
            .and_then(|m| m.split_once(';').map(|(code, _)| code))
            .map(str::to_owned);
        self.status == status
            && self.header(ERROR_CODE_HEADER) == Some(code)
            && body_code.as_deref() == Some(code)
    }

    /// The error message (after `ErrorCode:<Name>;`).
    pub fn message(&self) -> String {
        self.error().message
    }

    /// Asserts that this is the IoT Hub error `status` / `code` ([`is_error`](Self::is_error))
    /// with a JSON body, and returns it for further checks.
    ///
    /// # Panics
    /// When it is not, showing the whole answer.
    pub fn expect_error(&self, status: u16, code: &str) -> &Self {
        let json = self
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json"));
        assert!(
            self.is_error(status, code) && json,
            "expected the IoT Hub error {status} {code} with a JSON body, got {self}"
        );
        self
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .finish()
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {}", self.status, self.headers, self.text())
    }
}

/// The raw client.
#[derive(Debug, Clone)]
pub struct Rest {
    http: reqwest::Client,
    base: String,
    service: ServiceConnectionString,
    clock: Arc<dyn Clock>,
    token: Option<String>,
}

impl Rest {
    /// A client of the hub at `base` (`http://127.0.0.1:port`), signing tokens for `service`
    /// on the system clock.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: &str, service: ServiceConnectionString) -> Result<Self, RestError> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(RestError::Client)?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            service,
            clock: Arc::new(SystemClock),
            token: None,
        })
    }

    /// A client of `hub`'s plain HTTP listener as its `iothubowner` policy.
    ///
    /// # Panics
    /// When the hub has no plain HTTP listener.
    pub fn of(hub: &RunningHub) -> Self {
        Self::for_policy(hub, "iothubowner")
    }

    /// A client of `hub`'s plain HTTP listener as its shared access policy `policy`.
    ///
    /// # Panics
    /// When the hub has no plain HTTP listener or no such policy.
    pub fn for_policy(hub: &RunningHub, policy: &str) -> Self {
        let service = hub
            .policy_connection_string(policy)
            .unwrap_or_else(|| panic!("the hub has no shared access policy {policy:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("the hub's connection string for {policy:?}: {e}"));
        let base = hub.http_url().expect("the hub has a plain HTTP listener");
        Self::new(&base, service).expect("the HTTP client builds")
    }

    /// Sends `token` as the `Authorization` header of every [`Auth::Service`] call instead of
    /// signing fresh ones (an expired, forged or other policy's token).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Signs tokens on `clock` instead (the hub's, when it runs on an injected clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The [fixed token](Self::with_token), or a service token expiring in an hour.
    ///
    /// # Errors
    /// When the key is not base64.
    pub fn service_token(&self) -> Result<String, RestError> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let expiry = u64::try_from(self.clock.now().timestamp()).unwrap_or(0) + 3600;
        self.service
            .sas_token(expiry)
            .map_err(|e| RestError::Sign(e.to_string()))
    }

    /// Sends `call`.
    ///
    /// # Errors
    /// When no HTTP answer arrives.
    pub async fn call(&self, call: Call) -> Result<Answer, RestError> {
        let path = call.url_path();
        let mut request = self
            .http
            .request(call.method.clone(), format!("{}{path}", self.base));
        match &call.auth {
            Auth::Service => request = request.header("authorization", self.service_token()?),
            Auth::None => {}
            Auth::Header(value) => request = request.header("authorization", value),
        }
        for (name, value) in &call.headers {
            request = request.header(name, value);
        }
        if let Some(body) = call.body {
            request = request.body(body);
        }
        let fail = |source| RestError::Send {
            method: call.method.clone(),
            path: call.path.clone(),
            source,
        };
        let response = request.send().await.map_err(fail)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response.bytes().await.map_err(fail)?.to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Sends `call` in a test that needs an answer: whatever the status, an HTTP answer must
    /// come (a hub that hung up on a bad request has failed the test).
    ///
    /// # Panics
    /// When no HTTP answer arrives, naming the call and why.
    pub async fn answer(&self, call: Call) -> Answer {
        let what = format!("{} {}", call.method, call.path);
        match self.call(call).await {
            Ok(answer) => answer,
            Err(err) => panic!("{what}: no answer from the hub: {err}"),
        }
    }

    /// `GET path`, which must be answered.
    pub async fn get(&self, path: &str) -> Answer {
        self.answer(Call::get(path)).await
    }

    /// `PUT path` with a JSON body, which must be answered.
    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.answer(Call::put(path).json(body)).await
    }

    /// `PATCH path` with a JSON body, which must be answered.
    pub async fn patch(&self, path: &str, body: &Value) -> Answer {
        self.answer(Call::patch(path).json(body)).await
    }

    /// `POST path` with a JSON body, which must be answered.
    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.answer(Call::post(path).json(body)).await
    }

    /// `DELETE path`, which must be answered.
    pub async fn delete(&self, path: &str) -> Answer {
        self.answer(Call::delete(path)).await
    }

    /// One page of `POST /devices/query` ([`Call::query`]), which must be answered.
    pub async fn query(
        &self,
        sql: &str,
        page: Option<usize>,
        continuation: Option<&str>,
    ) -> Answer {
        self.answer(Call::query(sql, page, continuation)).await
    }

    /// `POST /twins/{device}/methods` with the invocation `body`, which must be answered.
    pub async fn invoke(&self, device: &str, body: &Value) -> Answer {
        self.post(&format!("/twins/{device}/methods"), body).await
    }

    /// [`invoke`](Self::invoke) on a task of its own, so the test can play the device
    /// meanwhile.
    pub fn invoke_in_background(
        &self,
        device: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<Answer> {
        let rest = self.clone();
        let device = device.to_owned();
        tokio::spawn(async move { rest.invoke(&device, &body).await })
    }

    /// `GET /twins/{id}`.
    ///
    /// # Errors
    /// When no HTTP answer arrives.
    pub async fn twin(&self, device: &str) -> Result<Answer, RestError> {
        self.call(Call::get(format!("/twins/{device}"))).await
    }

    /// `POST /devices/query` with every page, or the first error answer.
    ///
    /// # Errors
    /// When no HTTP answer arrives.
    pub async fn query_all(&self, query: &str) -> Result<Result<Vec<Value>, Answer>, RestError> {
        let mut items = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let answer = self
                .call(Call::query(query, Some(100), continuation.as_deref()))
                .await?;
            if answer.status != 200 {
                return Ok(Err(answer));
            }
            if let Value::Array(page) = answer.json() {
                items.extend(page);
            }
            match answer.header("x-ms-continuation") {
                Some(token) => continuation = Some(token.to_owned()),
                None => return Ok(Ok(items)),
            }
        }
    }
}
