//! The real hub in-process, as the whole-system tests use it: on `127.0.0.1:0`, with its data
//! in a temporary directory so it can be restarted on the same data, optionally on an injected
//! clock.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use casement_client::{ClientConfig, HubTarget, ServiceClient};
use casement_hub::{Hub, HubConfig, HubError, RunningHub};
use casement_iothub::clock::SystemClock;
use casement_iothub::connection_string::ServiceConnectionString;

/// Errors of the test hub.
#[derive(Debug, thiserror::Error)]
pub enum TestHubError {
    /// The hub failed to start.
    #[error("the hub did not start: {0}")]
    Start(#[from] HubError),
    /// The temporary directory could not be made.
    #[error("cannot create a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    /// The hub started without an expected listener or credential.
    #[error("the hub has no {0}")]
    Missing(&'static str),
    /// A connection string the hub printed did not parse.
    #[error("the hub's connection string does not parse: {0}")]
    ConnectionString(String),
}

/// A hub on loopback ports with on-disk data that survives [`restart`](Self::restart).
#[derive(Debug)]
pub struct TestHub {
    running: Option<RunningHub>,
    config: HubConfig,
    _dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
}

impl TestHub {
    /// A hub on the system clock in a fresh temporary directory.
    ///
    /// # Errors
    /// When the directory or the hub cannot be created.
    pub async fn start() -> Result<Self, TestHubError> {
        Self::start_with(None, |_| {}).await
    }

    /// A hub on `clock` (the system clock when `None`), with `configure` applied to
    /// [`HubConfig::for_tests_in`] a fresh temporary directory.
    ///
    /// # Errors
    /// When the directory or the hub cannot be created.
    pub async fn start_with(
        clock: Option<Arc<dyn casement_policy::Clock>>,
        configure: impl FnOnce(&mut HubConfig),
    ) -> Result<Self, TestHubError> {
        let dir = tempfile::Builder::new()
            .prefix("casement-hub-")
            .tempdir()
            .map_err(TestHubError::TempDir)?;
        let data_dir = dir.path().join("hub");
        let mut config = HubConfig::for_tests_in(&data_dir);
        if let Some(clock) = clock {
            config.clock = clock;
        }
        configure(&mut config);
        let running = Hub::start(config.clone()).await?;
        Ok(Self {
            running: Some(running),
            config,
            _dir: Some(dir),
            data_dir,
        })
    }

    /// The running hub.
    ///
    /// # Panics
    /// Only if called after a failed [`restart`](Self::restart) (the hub is then stopped).
    pub fn hub(&self) -> &RunningHub {
        self.running
            .as_ref()
            .expect("the hub is running (a restart failed earlier)")
    }

    /// Where the hub keeps its data.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The plain MQTT address.
    ///
    /// # Errors
    /// When the plain MQTT listener is disabled.
    pub fn mqtt_addr(&self) -> Result<SocketAddr, TestHubError> {
        self.hub()
            .mqtt_addr()
            .ok_or(TestHubError::Missing("plain MQTT listener"))
    }

    /// The plain HTTP address.
    ///
    /// # Errors
    /// When the plain HTTP listener is disabled.
    pub fn http_addr(&self) -> Result<SocketAddr, TestHubError> {
        self.hub()
            .http_addr()
            .ok_or(TestHubError::Missing("plain HTTP listener"))
    }

    /// `http://127.0.0.1:{port}` of the plain REST listener.
    ///
    /// # Errors
    /// When the plain HTTP listener is disabled.
    pub fn http_url(&self) -> Result<String, TestHubError> {
        Ok(format!("http://{}", self.http_addr()?))
    }

    /// The connection string of a shared access policy with `HostName=localhost` (no port: the
    /// same string stays valid across restarts on new ports, and behind a proxy).
    ///
    /// # Errors
    /// When the hub has no such policy.
    pub fn policy_connection(&self, policy: &str) -> Result<ServiceConnectionString, TestHubError> {
        let text = self
            .hub()
            .policy_connection_string(policy)
            .ok_or(TestHubError::Missing("such shared access policy"))?;
        let mut cs: ServiceConnectionString = text.parse().map_err(
            |e: casement_iothub::connection_string::ConnectionStringError| {
                TestHubError::ConnectionString(e.to_string())
            },
        )?;
        cs.host_name = self.hub().hostname().to_owned();
        Ok(cs)
    }

    /// The `iothubowner` connection string ([`policy_connection`](Self::policy_connection)).
    ///
    /// # Errors
    /// When the hub has no `iothubowner` policy.
    pub fn owner(&self) -> Result<ServiceConnectionString, TestHubError> {
        self.policy_connection("iothubowner")
    }

    /// Stops the hub and starts it again on the same data directory (on new ports).
    ///
    /// # Errors
    /// When the hub does not start again; it is then stopped.
    pub async fn restart(&mut self) -> Result<(), TestHubError> {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
        self.running = Some(Hub::start(self.config.clone()).await?);
        Ok(())
    }

    /// Stops the hub (flushing its data).
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// The product's service client of `hub`'s plain HTTP listener as `iothubowner`, on the system
/// clock with the default configuration: for tests whose well-formed set-up and check calls
/// (create a device, patch desired, read a twin) are not what they test.
///
/// # Panics
/// When the hub has no plain HTTP listener.
pub fn service_client(hub: &RunningHub) -> ServiceClient {
    let connection = hub
        .service_connection_string()
        .parse()
        .expect("the hub's service connection string parses");
    let target = HubTarget::new(connection)
        .with_endpoint(&hub.http_url().expect("the hub has a plain HTTP listener"))
        .expect("the hub's HTTP URL is an endpoint");
    ServiceClient::new(target, ClientConfig::default(), Arc::new(SystemClock))
        .expect("the service client builds")
}
