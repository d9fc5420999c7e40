//! A deliberately raw client of the service REST API: any method, path, body, headers and
//! `Authorization` — valid or not — so tests can send what a correct client never would and read
//! exactly what came back.

use std::sync::Arc;
use std::time::Duration;

use casement_iothub::connection_string::ServiceConnectionString;
use casement_iothub::error::{ERROR_CODE_HEADER, ServiceError};
use casement_iothub::rest::API_VERSION;
use casement_policy::{Clock, SystemClock};
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
    /// A fresh token of the client's service connection string.
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
#[derive(Debug, Clone)]
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
    /// `iothub-errorcode` header and the `ErrorCode:<Name>;` body, as IoT Hub sends errors.
    pub fn is_error(&self, status: u16, code: &str) -> bool {
        let body_code = self
            .json()
            .get("Message")
            .and_then(Value::as_str)
            .and_then(|m| m.strip_prefix("ErrorCode:"))
            .and_then(|m| m.split(';').next())
            .map(str::to_owned);
        self.status == status
            && self.header(ERROR_CODE_HEADER) == Some(code)
            && body_code.as_deref() == Some(code)
    }

    /// The error message (after `ErrorCode:<Name>;`).
    pub fn message(&self) -> String {
        self.error().message
    }
}

/// The raw client.
#[derive(Debug, Clone)]
pub struct Rest {
    http: reqwest::Client,
    base: String,
    service: ServiceConnectionString,
    clock: Arc<dyn Clock>,
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
        })
    }

    /// Signs tokens on `clock` instead (the hub's, when it runs on an injected clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// A service token expiring in an hour.
    ///
    /// # Errors
    /// When the key is not base64.
    pub fn service_token(&self) -> Result<String, RestError> {
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
            let mut call = Call::post("/devices/query")
                .json(&serde_json::json!({ "query": query }))
                .header("x-ms-max-item-count", "100");
            if let Some(token) = &continuation {
                call = call.header("x-ms-continuation", token);
            }
            let answer = self.call(call).await?;
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
