//! Starting, running and stopping a hub: [`Hub::start`] opens the store, builds the shared
//! state ([`crate::state::Shared`]), binds the listeners and spawns the accept loops;
//! [`RunningHub`] is the handle tests and the CLI hold.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{self, Identity, Policy};
use crate::config::HubConfig;
use crate::configurations::{ConfigurationEvaluation, Configurations};
use crate::error::{ApiError, HubError};
use crate::faults::Faults;
use crate::listener::{self, Endpoint};
use crate::methods::Methods;
use crate::mqtt::broker::{Broker, Subscriptions};
use crate::registry::{DeviceSpec, Registry, TwinUpdate};
use crate::store::{Storage, Store};
use crate::throttle::Throttle;
use crate::tls::{self, TlsMaterial};

use crate::state::{HubStats, Shared, Stats};

/// Starts hubs.
#[derive(Debug)]
pub struct Hub;

impl Hub {
    /// Opens the store, prepares TLS, binds every configured listener and starts serving.
    ///
    /// # Errors
    /// [`HubError::Bind`] when a port is taken or privileged (naming the flag to change),
    /// [`HubError::Store`] when the data directory is unusable or in use, [`HubError::Tls`]
    /// for certificate problems, [`HubError::Config`] for an inconsistent configuration.
    pub async fn start(config: HubConfig) -> Result<RunningHub, HubError> {
        validate(&config)?;
        if let Storage::Dir(dir) = &config.storage {
            crate::private_dir::prepare(dir)?;
        }
        let store = Arc::new(Store::open(&config.storage)?);
        let policies = match store.get_meta::<Vec<Policy>>("policies")? {
            Some(policies) if !policies.is_empty() => policies,
            _ => {
                let policies = auth::default_policies();
                store.put_meta("policies", &policies)?;
                store.flush().await?;
                policies
            }
        };
        let identity = Identity::new(&config.hostname, &config.aliases, policies)
            .with_skew(config.limits.token_expiry_skew);
        let registry = Registry::load(store.clone(), config.clock.clone())?
            .with_query_lag(config.query_lag)
            .with_connection_state_lag(config.connection_state_lag);
        let configurations = Configurations::load(store.clone())?;
        let mut sessions: Vec<(String, Subscriptions)> = store.load_sessions()?;
        // A session can outlive its device when a SUBSCRIBE races a delete; drop those.
        sessions.retain(|(id, _)| {
            let keep = registry.exists(id);
            if !keep {
                let _ = store.put_session::<Subscriptions>(id, None);
            }
            keep
        });
        let broker = Broker::new(store.clone(), sessions);

        let tls = if config.mqtts.is_some() || config.https.is_some() {
            let names = tls::certificate_names(&config.hostname, &config.aliases);
            Some(tls::load_or_generate(
                &config.tls,
                config.data_dir(),
                &names,
            )?)
        } else {
            None
        };

        // Bind everything before serving anything, so a bad port fails the start cleanly.
        let mut bound = Vec::new();
        for (endpoint, addr) in [
            (Endpoint::Mqtts, config.mqtts),
            (Endpoint::Mqtt, config.mqtt),
            (Endpoint::Https, config.https),
            (Endpoint::Http, config.http),
        ] {
            if let Some(addr) = addr {
                bound.push((endpoint, addr, listener::bind(endpoint, addr).await?));
            }
        }

        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            identity,
            store,
            registry,
            configurations,
            broker,
            methods: Arc::new(Methods::new(config.limits.max_inflight_methods)),
            throttle: Throttle::new(&config.throttle)
                .shaped(config.throttle_mode, config.throttle_max_wait),
            clock: config.clock.clone(),
            limits: config.limits.clone(),
            query_dialect: config.query_dialect,
            stats: Stats::default(),
            faults: Faults::default(),
            shutdown: shutdown.clone(),
        });
        let tasks = TaskTracker::new();
        let router = crate::http::router(shared.clone());
        let mut addrs = Addrs::default();
        for (endpoint, addr, tcp) in bound {
            let local = tcp.local_addr().map_err(|source| listener::BindError {
                endpoint,
                addr,
                source,
            })?;
            match endpoint {
                Endpoint::Mqtt | Endpoint::Mqtts => {
                    let acceptor = match endpoint {
                        Endpoint::Mqtts => tls.as_ref().map(|t| TlsAcceptor::from(t.mqtt.clone())),
                        _ => None,
                    };
                    spawn_mqtt(
                        tcp,
                        endpoint,
                        acceptor,
                        Arc::new(Semaphore::new(config.limits.max_mqtt_connections)),
                        shared.clone(),
                        &tasks,
                    );
                }
                Endpoint::Http | Endpoint::Https => {
                    let acceptor = match endpoint {
                        Endpoint::Https => tls.as_ref().map(|t| TlsAcceptor::from(t.https.clone())),
                        _ => None,
                    };
                    let serving = listener::HttpServing {
                        router: router.clone(),
                        handshake_timeout: config.limits.connect_timeout,
                        idle_timeout: config.limits.http_idle_timeout,
                    };
                    listener::http_listener(
                        tcp,
                        endpoint,
                        acceptor,
                        Arc::new(crate::admission::Admission::new(
                            config.limits.max_http_connections,
                            config
                                .limits
                                .max_http_connections_per_peer
                                .unwrap_or(config.limits.max_http_connections / 2),
                        )),
                        serving,
                        shutdown.clone(),
                        &tasks,
                    );
                }
            }
            addrs.set(endpoint, local);
            tracing::info!(%endpoint, addr = %local, "listening");
        }
        drop(router);
        if let Some(every) = config.configuration_interval {
            tasks.spawn(crate::configurations::evaluate_every(shared.clone(), every));
        }

        let hub = RunningHub {
            shared,
            tasks,
            shutdown,
            addrs,
            tls,
            data_dir: config.data_dir().map(Path::to_path_buf),
        };
        if let Some(dir) = &hub.data_dir {
            hub.write_connection_env(dir)?;
            crate::private_dir::restrict(dir)?;
        }
        Ok(hub)
    }
}

fn validate(config: &HubConfig) -> Result<(), HubError> {
    let host = config.hostname.trim();
    if host.is_empty()
        || host.contains(['/', ';', '=', ' '])
        || host.chars().any(|c| c.is_control())
    {
        return Err(HubError::Config(format!(
            "--hostname {:?} is not a host name (expected e.g. localhost or myhub.local)",
            config.hostname
        )));
    }
    if config.limits.max_packet_size < 1024 || config.limits.device_queue == 0 {
        return Err(HubError::Config(
            "max packet size must be at least 1024 bytes and the device queue at least 1".into(),
        ));
    }
    Ok(())
}

fn spawn_mqtt(
    tcp: tokio::net::TcpListener,
    endpoint: Endpoint,
    acceptor: Option<TlsAcceptor>,
    cap: Arc<Semaphore>,
    shared: Arc<Shared>,
    tasks: &TaskTracker,
) {
    let inner_tasks = tasks.clone();
    let cancel = shared.shutdown.clone();
    tasks.spawn(listener::accept_loop(
        tcp,
        endpoint,
        cap,
        cancel,
        move |stream, peer, permit| {
            let shared = shared.clone();
            let acceptor = acceptor.clone();
            inner_tasks.spawn(async move {
                let _permit = permit;
                match acceptor {
                    None => crate::mqtt::connection::serve(stream, peer, shared).await,
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            shared.limits.connect_timeout,
                            acceptor.accept(stream),
                        );
                        let tls = tokio::select! {
                            () = shared.shutdown.cancelled() => return,
                            tls = handshake => tls,
                        };
                        match tls {
                            Ok(Ok(tls)) => crate::mqtt::connection::serve(tls, peer, shared).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "MQTT TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "MQTT TLS handshake timed out"),
                        }
                    }
                }
            });
        },
    ));
}

#[derive(Debug, Default, Clone, Copy)]
struct Addrs {
    mqtts: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
    https: Option<SocketAddr>,
    http: Option<SocketAddr>,
}

impl Addrs {
    fn set(&mut self, endpoint: Endpoint, addr: SocketAddr) {
        match endpoint {
            Endpoint::Mqtts => self.mqtts = Some(addr),
            Endpoint::Mqtt => self.mqtt = Some(addr),
            Endpoint::Https => self.https = Some(addr),
            Endpoint::Http => self.http = Some(addr),
        }
    }
}

/// A running hub: its addresses, credentials and certificate, and the way to stop it.
#[derive(Debug)]
pub struct RunningHub {
    pub(crate) shared: Arc<Shared>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    addrs: Addrs,
    tls: Option<TlsMaterial>,
    data_dir: Option<PathBuf>,
}

impl RunningHub {
    /// The bound MQTT-over-TLS address.
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.addrs.mqtts
    }

    /// The bound plain MQTT address.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.addrs.mqtt
    }

    /// The bound HTTPS address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.addrs.https
    }

    /// The bound plain HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.addrs.http
    }

    /// `http://{addr}` of the plain REST listener (for `casement --endpoint`).
    pub fn http_url(&self) -> Option<String> {
        self.addrs.http.map(|a| format!("http://{a}"))
    }

    /// `https://{hostname}:{port}` of the HTTPS listener (trust [`ca_pem`](Self::ca_pem)).
    pub fn https_url(&self) -> Option<String> {
        self.addrs
            .https
            .map(|a| format!("https://{}:{}", self.hostname(), a.port()))
    }

    /// The hub's host name (`HostName` in connection strings).
    pub fn hostname(&self) -> &str {
        self.shared.identity.hostname()
    }

    /// `HostName` for service connection strings: the hostname, with the HTTPS port when it is
    /// not 443 (the Python service SDK honours it; SAS tokens are accepted with or without).
    pub fn service_host(&self) -> String {
        with_port(self.hostname(), self.addrs.https.map(|a| a.port()), 443)
    }

    /// `HostName` for device connection strings: the hostname, with the MQTT-over-TLS port
    /// when it is not 8883 (the Node device SDK honours it; the Python one always uses 8883).
    pub fn device_host(&self) -> String {
        with_port(self.hostname(), self.addrs.mqtts.map(|a| a.port()), 8883)
    }

    /// The `iothubowner` connection string.
    pub fn service_connection_string(&self) -> String {
        self.policy_connection_string("iothubowner")
            .unwrap_or_default()
    }

    /// The connection string of a shared access policy (`iothubowner`, `service`, `device`,
    /// `registryRead`, `registryReadWrite`).
    pub fn policy_connection_string(&self, policy: &str) -> Option<String> {
        self.shared.identity.policy(policy).map(|p| {
            format!(
                "HostName={};SharedAccessKeyName={};SharedAccessKey={}",
                self.service_host(),
                p.name,
                p.primary_key
            )
        })
    }

    /// Creates a device with generated keys and `tags` (a JSON object, or `null`) and returns
    /// its connection string.
    ///
    /// # Errors
    /// [`HubError::Api`] with 409 DeviceAlreadyExists, 400 for a bad id or tags.
    pub async fn create_device(&self, device_id: &str, tags: Value) -> Result<String, HubError> {
        self.shared
            .create_device(device_id, DeviceSpec::default())
            .await?;
        if !tags.is_null() {
            let update = TwinUpdate {
                tags: Some(tags),
                desired: None,
            };
            if let Err(e) = self
                .shared
                .update_twin(device_id, update, None, false)
                .await
            {
                // All or nothing: a device with rejected tags is not left behind.
                let _ = self.shared.delete_device(device_id, None).await;
                return Err(e.into());
            }
        }
        self.device_connection_string(device_id)
            .ok_or_else(|| HubError::Api(ApiError::device_not_found(device_id)))
    }

    /// Merges `desired` (a JSON object) into the twin's desired properties, as a service
    /// `PATCH /twins/{id}` would (tools and benchmarks that seed a fleet in-process).
    ///
    /// # Errors
    /// [`HubError::Api`] with 404 for an unknown device, 400 for a patch the twin refuses.
    pub async fn patch_desired(&self, device_id: &str, desired: Value) -> Result<(), HubError> {
        let update = TwinUpdate {
            tags: None,
            desired: Some(desired),
        };
        self.shared
            .update_twin(device_id, update, None, false)
            .await?;
        Ok(())
    }

    /// Applies a reported-properties patch as if `device_id` had sent it over MQTT (tools and
    /// benchmarks that seed a fleet's twins without running agents).
    ///
    /// # Errors
    /// [`HubError::Api`] with 404 for an unknown device, 400 for a patch the twin refuses.
    pub fn report_as_device(&self, device_id: &str, patch: &Value) -> Result<u64, HubError> {
        Ok(self.shared.registry.report(device_id, patch)?)
    }

    /// The connection string of an existing device (primary key).
    pub fn device_connection_string(&self, device_id: &str) -> Option<String> {
        self.shared
            .registry
            .enabled_keys(device_id)
            .map(|(key, _)| {
                format!(
                    "HostName={};DeviceId={device_id};SharedAccessKey={key}",
                    self.device_host()
                )
            })
    }

    /// The CA certificate (PEM) clients should trust, when the hub generated its certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.ca_pem.as_deref())
    }

    /// Where the CA certificate is stored (not for `--in-memory` hubs).
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().and_then(|t| t.ca_path.as_deref())
    }

    /// The server certificate file (generated or supplied), when on disk.
    pub fn cert_path(&self) -> Option<&Path> {
        self.tls.as_ref().and_then(|t| t.cert_path.as_deref())
    }

    /// The data directory (not for `--in-memory` hubs).
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }

    /// `<data-dir>/connection.env`, when on disk.
    pub fn connection_env_path(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.join("connection.env"))
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        HubStats {
            devices: self.shared.registry.len(),
            connected_devices: self.shared.broker.connected_count(),
            telemetry_messages: self.shared.stats.telemetry.load(Ordering::Relaxed),
            methods_in_flight: self.shared.methods.in_flight(),
            query_pages: self.shared.stats.query_pages.load(Ordering::Relaxed),
            query_items: self.shared.stats.query_items.load(Ordering::Relaxed),
            operations: self.shared.throttle.asked(),
        }
    }

    /// Evaluates the automatic device management configurations now (as the background
    /// evaluation does every [`HubConfig::configuration_interval`]).
    ///
    /// # Errors
    /// [`HubError::Api`] when the store cannot be written.
    pub async fn evaluate_configurations(&self) -> Result<ConfigurationEvaluation, HubError> {
        Ok(self.shared.evaluate_configurations().await?)
    }

    /// Stops accepting, closes every connection (waiting requests get 503), waits for every
    /// task, flushes and closes the database. The data directory can be reopened at once.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(Duration::from_secs(10), self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not close within 10 s; stopping anyway");
        }
        if let Err(e) = self.shared.store.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        // Tasks spawned by handlers (and a task past its tracker's wait) may still hold the
        // database handle for a moment; wait for it so the data directory is unlocked on return.
        let store = Arc::downgrade(&self.shared.store);
        drop(self.shared);
        for _ in 0..200 {
            if store.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::warn!("the hub database is still referenced after shutdown");
    }

    fn write_connection_env(&self, dir: &Path) -> Result<(), HubError> {
        let path = dir.join("connection.env");
        let mut text = String::from(
            "# Written by `casement hub` at start-up. Source it: `set -a; . ./connection.env; set +a`\n",
        );
        text.push_str(&format!(
            "IOTHUB_CONNECTION_STRING='{}'\n",
            self.service_connection_string()
        ));
        if let Some(ca) = self.ca_path() {
            let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.to_path_buf());
            let ca = ca.display();
            text.push_str(&format!(
                "CASEMENT_CA='{ca}'\nNODE_EXTRA_CA_CERTS='{ca}'\nREQUESTS_CA_BUNDLE='{ca}'\n"
            ));
        }
        if let Some(url) = self.http_url() {
            text.push_str(&format!("CASEMENT_HUB_HTTP='{url}'\n"));
        }
        if let Some(url) = self.https_url() {
            text.push_str(&format!("CASEMENT_HUB_HTTPS='{url}'\n"));
        }
        if let Some(addr) = self.mqtt_addr() {
            text.push_str(&format!("CASEMENT_HUB_MQTT='{addr}'\n"));
        }
        if let Some(addr) = self.mqtts_addr() {
            text.push_str(&format!("CASEMENT_HUB_MQTTS='{addr}'\n"));
        }
        write_private(&path, text.as_bytes()).map_err(|source| HubError::Write { path, source })
    }
}

fn with_port(host: &str, port: Option<u16>, default: u16) -> String {
    match port {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_owned(),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
