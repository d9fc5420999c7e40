//! Test harness: the real hub in-process on 127.0.0.1:0, real agents over plain MQTT, one
//! driven clock shared by the hub (token expiry, twin timestamps) and the agents (windows).

use std::path::{Path, PathBuf};
use std::time::Duration;

use casement_agent::backoff::BackoffPolicy;
use casement_agent::clock::DrivenClock;
use casement_agent::config::{AgentConfig, Endpoint, RebootCommand};
use casement_agent::{Agent, AgentError, AgentEvent, RebootHook, RunOutcome};
use casement_client::{ClientConfig, HubTarget, RetryPolicy, ServiceClient};
use casement_hub::{Hub, HubConfig, RunningHub};
use casement_iothub::connection_string::{DeviceConnectionString, ServiceConnectionString};
use casement_iothub::rest::{MethodRequest, TwinPatch};
use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// How long any wait may take before the test fails (never reached when things work).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Saturday 2030-01-05 12:00 UTC: the next "0 2 * * SUN" window in UTC opens 2030-01-06 02:00.
pub fn saturday_noon() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 5, 12, 0, 0).unwrap()
}

/// Sunday 2030-01-06 at h:m:s UTC.
pub fn sunday(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 1, 6, h, m, s).unwrap()
}

/// A desired `maintenance`: weekly, Sunday 02:00 in `timezone`, two hours, 5 minutes expected.
pub fn policy(revision: &str, timezone: &str) -> Value {
    json!({"policy": "weekly", "revision": revision,
           "window": {"schedule": "0 2 * * SUN", "durationSeconds": 7200, "timezone": timezone},
           "reboot": {"expectedDurationSeconds": 300}})
}

pub struct Harness {
    pub hub: Option<RunningHub>,
    pub clock: DrivenClock,
    pub dir: tempfile::TempDir,
    base: String,
    service: ServiceConnectionString,
    mqtt: std::net::SocketAddr,
}

impl Harness {
    /// A hub in memory.
    pub async fn start() -> Self {
        Self::start_with(|config| config).await
    }

    /// A hub in memory whose quotas are `throttle(none)`, answering 429 beyond them.
    pub async fn start_throttled(
        throttle: impl FnOnce(casement_hub::ThrottleConfig) -> casement_hub::ThrottleConfig,
    ) -> Self {
        Self::start_with(move |mut config| {
            config.throttle = throttle(casement_hub::ThrottleConfig::none());
            config.throttle_mode = casement_hub::ThrottleMode::Reject;
            config
        })
        .await
    }

    /// A hub keeping its data in the harness directory (so it can be restarted).
    pub async fn start_on_disk() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("hub");
        let mut harness = Self::start_with(move |_| HubConfig::for_tests_in(data)).await;
        harness.dir = dir;
        harness
    }

    async fn start_with(configure: impl FnOnce(HubConfig) -> HubConfig) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let clock = DrivenClock::new(saturday_noon());
        let mut config = configure(HubConfig::for_tests());
        config.clock = std::sync::Arc::new(clock.clone());
        let hub = Hub::start(config).await.expect("hub starts");
        let service: ServiceConnectionString = hub.service_connection_string().parse().unwrap();
        Self {
            base: hub.http_url().unwrap(),
            mqtt: hub.mqtt_addr().unwrap(),
            hub: Some(hub),
            clock,
            dir: tempfile::tempdir().unwrap(),
            service,
        }
    }

    /// `mqtt://127.0.0.1:<port>` of the hub's plain MQTT listener.
    pub fn mqtt_endpoint(&self) -> Endpoint {
        format!("mqtt://{}", self.mqtt).parse().unwrap()
    }

    /// The hub's plain REST base URL.
    pub fn http_url(&self) -> String {
        self.base.clone()
    }

    /// The hub's `iothubowner` connection string.
    pub fn service(&self) -> ServiceConnectionString {
        self.service.clone()
    }

    pub fn hub(&self) -> &RunningHub {
        self.hub.as_ref().expect("hub running")
    }

    /// Stops the hub and starts it again on the same data directory and MQTT port.
    pub async fn restart_hub(&mut self) {
        let hub = self.hub.take().expect("hub running");
        let data = hub.data_dir().expect("on disk").to_path_buf();
        let http = hub.http_addr();
        hub.shutdown().await;
        let mut config = HubConfig::for_tests_in(data);
        config.mqtt = Some(self.mqtt);
        config.http = http;
        config.clock = std::sync::Arc::new(self.clock.clone());
        let hub = Hub::start(config).await.expect("hub restarts");
        self.base = hub.http_url().unwrap();
        self.hub = Some(hub);
    }

    /// Creates a device and returns its connection string.
    pub async fn device(&self, id: &str) -> DeviceConnectionString {
        self.hub()
            .create_device(id, Value::Null)
            .await
            .expect("device created")
            .parse()
            .unwrap()
    }

    /// A config for `connection` over plain MQTT, state under the harness dir, in `zone`,
    /// fast reconnects, and a reboot command that appends a line to `<state>/reboots`.
    pub fn config(&self, connection: &DeviceConnectionString, zone: Tz) -> AgentConfig {
        let endpoint = self.mqtt_endpoint();
        let state_dir = self.dir.path().join(&connection.device_id);
        let mut config = AgentConfig::new(connection.clone(), endpoint, state_dir.clone(), zone);
        // Tests jump the clock by hours; long-lived tokens keep renewals out of their way
        // (the renewal test sets the SDKs' hour and 15 minutes itself).
        config.token_lifetime = Duration::from_secs(30 * 86_400);
        config.renew_before = Duration::from_secs(86_400);
        config.backoff = BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        };
        config.twin_retry = config.backoff;
        // Tests step the clock to a window's edge and expect the report at once; the jitter
        // test sets its own.
        config.report_jitter = Duration::ZERO;
        config.reboot_command = RebootCommand::new(vec![
            "sh".into(),
            "-c".into(),
            format!("echo reboot >> '{}'", reboot_log(&state_dir).display()),
        ])
        .unwrap();
        config
    }

    /// The product's service client for the hub, dating its tokens by the driven clock (the
    /// hub checks them against it).
    fn client(&self) -> ServiceClient {
        let target = HubTarget::new(self.service.clone())
            .with_endpoint(&self.base)
            .expect("the hub's HTTP URL is an endpoint");
        // Patient with a throttled hub (the 429 tests): retried every half second or so.
        let config = ClientConfig {
            retry: RetryPolicy {
                max_attempts: 60,
                initial: Duration::from_millis(100),
                max: Duration::from_millis(500),
            },
            ..ClientConfig::default()
        };
        ServiceClient::new(target, config, std::sync::Arc::new(self.clock.clone()))
            .expect("the service client builds")
    }

    /// The device's twin, as JSON.
    pub async fn twin(&self, id: &str) -> Value {
        let twin = self.client().twin(id).await.expect("the twin");
        serde_json::to_value(twin).expect("a twin is JSON")
    }

    /// The reported properties of a device.
    pub async fn reported(&self, id: &str) -> Value {
        self.twin(id).await["properties"]["reported"].clone()
    }

    /// Merges `patch` into the device's desired properties.
    pub async fn patch_desired(&self, id: &str, patch: Value) {
        self.client()
            .patch(id, &TwinPatch::desired(patch), Some("*"))
            .await
            .expect("the desired patch is taken");
    }

    /// Invokes `reboot` through the service API: (device status, device payload).
    pub async fn invoke_reboot(&self, id: &str, payload: Value) -> (u16, Value) {
        let response = self
            .client()
            .invoke(id, &MethodRequest::new("reboot", payload, 10))
            .await
            .expect("the hub carries the invocation");
        (
            u16::try_from(response.status).expect("an HTTP status"),
            response.payload,
        )
    }
}

/// The file the test reboot command appends to.
pub fn reboot_log(state_dir: &Path) -> PathBuf {
    state_dir.join("reboots")
}

/// How many times the reboot command ran.
pub fn reboots_run(config: &AgentConfig) -> usize {
    std::fs::read_to_string(reboot_log(&config.state_dir))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// A running agent.
pub struct Running {
    pub events: broadcast::Receiver<AgentEvent>,
    /// Whether the current session's twin GET was answered (seen while waiting for anything).
    fetched: bool,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<RunOutcome, AgentError>>,
}

/// Starts an agent on the harness clock with `boot_id` and `hook`.
pub fn spawn(
    harness: &Harness,
    config: AgentConfig,
    boot_id: &str,
    hook: Option<RebootHook>,
) -> Running {
    let mut agent = Agent::with_tls_config(config, None)
        .with_clock(harness.clock.agent_clock())
        .with_boot_id(Some(boot_id.to_owned()));
    if let Some(hook) = hook {
        agent = agent.with_reboot_hook(hook);
    }
    let events = agent.events();
    let (stop, stopped) = oneshot::channel();
    let handle = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    Running {
        events,
        fetched: false,
        stop: Some(stop),
        handle,
    }
}

impl Running {
    /// Waits for an event matching `pred`.
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&AgentEvent) -> bool) -> AgentEvent {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let event = self.events.recv().await;
                match &event {
                    Ok(AgentEvent::Connected) => self.fetched = false,
                    Ok(AgentEvent::TwinFetched { .. }) => self.fetched = true,
                    _ => {}
                }
                match event {
                    Ok(event) if pred(&event) => return event,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        panic!("the agent stopped while waiting for {what}")
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    /// Waits until the session's twin GET was answered (subscriptions are in place then).
    pub async fn online(&mut self) {
        if self.fetched {
            return;
        }
        self.wait("the twin GET", |e| {
            matches!(e, AgentEvent::TwinFetched { .. })
        })
        .await;
    }

    /// Waits until the hub acknowledged a reported patch matching `pred`.
    pub async fn reported(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        match self
            .wait(
                what,
                |e| matches!(e, AgentEvent::Reported(patch) if pred(patch)),
            )
            .await
        {
            AgentEvent::Reported(patch) => patch,
            _ => unreachable!(),
        }
    }

    /// Stops the agent cleanly.
    pub async fn stop(mut self) -> RunOutcome {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the agent stops")
            .expect("the agent task")
            .expect("the agent ran")
    }

    /// Invokes `reboot` with `payload`, expects it accepted, waits until the agent has started
    /// its reboot command, and kills the agent there — the machine dying mid-reboot, after the
    /// answer and before any report of the outcome.
    pub async fn accept_then_crash(mut self, harness: &Harness, device: &str, payload: Value) {
        let (status, body) = harness.invoke_reboot(device, payload).await;
        assert_eq!(status, 200, "the reboot is accepted: {body}");
        self.wait("the reboot command", |e| {
            matches!(e, AgentEvent::RebootCommandStarted)
        })
        .await;
        self.crash().await;
    }

    /// Kills the agent mid-flight, as a crash would.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// Whether a reported patch carries `maintenance.window` with this `open`.
pub fn window_open_is(patch: &Value, open: bool) -> bool {
    patch["maintenance"]["window"]["open"] == json!(open)
}
