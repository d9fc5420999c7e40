//! Test harness: the real hub in-process on 127.0.0.1:0, real agents over plain MQTT, one
//! driven clock shared by the hub (token expiry, twin timestamps) and the agents (windows).

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::time::Duration;

use casement_agent::backoff::BackoffPolicy;
use casement_agent::clock::DrivenClock;
use casement_agent::config::{AgentConfig, Endpoint, RebootCommand};
use casement_agent::{Agent, AgentError, AgentEvent, RebootHook, RunOutcome};
use casement_hub::{Hub, HubConfig, RunningHub};
use casement_iothub::connection_string::{DeviceConnectionString, ServiceConnectionString};
use casement_iothub::rest::{self, MethodRequest, TwinPatch};
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

/// The hub's clock, following the test's driven clock.
#[derive(Debug)]
struct HubTime(DrivenClock);

impl casement_hub::Clock for HubTime {
    fn now(&self) -> DateTime<Utc> {
        self.0.now()
    }
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
    http: reqwest::Client,
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
        config.clock = std::sync::Arc::new(HubTime(clock.clone()));
        let hub = Hub::start(config).await.expect("hub starts");
        let service: ServiceConnectionString = hub.service_connection_string().parse().unwrap();
        Self {
            base: hub.http_url().unwrap(),
            mqtt: hub.mqtt_addr().unwrap(),
            hub: Some(hub),
            clock,
            dir: tempfile::tempdir().unwrap(),
            http: reqwest::Client::new(),
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
        config.clock = std::sync::Arc::new(HubTime(self.clock.clone()));
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

    fn authorization(&self) -> String {
        let expiry = u64::try_from(self.clock.now().timestamp()).unwrap() + 3600;
        self.service.sas_token(expiry).unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, rest::with_api_version(path))
    }

    /// `GET /twins/{id}` (a 429 from a throttled hub is retried after half a second).
    pub async fn twin(&self, id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let response = self
                .http
                .get(self.url(&rest::twin_path(id, None)))
                .header("Authorization", self.authorization())
                .send()
                .await
                .unwrap();
            if response.status() == 429 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            assert!(response.status().is_success(), "{response:?}");
            return response.json().await.unwrap();
        }
    }

    /// The reported properties of a device.
    pub async fn reported(&self, id: &str) -> Value {
        self.twin(id).await["properties"]["reported"].clone()
    }

    /// `PATCH /twins/{id}` with a desired patch.
    pub async fn patch_desired(&self, id: &str, patch: Value) {
        let response = self
            .http
            .patch(self.url(&rest::twin_path(id, None)))
            .header("Authorization", self.authorization())
            .header(rest::HEADER_IF_MATCH, "*")
            .json(&TwinPatch::desired(patch))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }

    /// Invokes `reboot` through the service REST API: (device status, device payload).
    pub async fn invoke_reboot(&self, id: &str, payload: Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(&rest::methods_path(id, None)))
            .header("Authorization", self.authorization())
            .json(&MethodRequest::new("reboot", payload, 10))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(
            status.is_success(),
            "the hub failed the invocation: {status} {body}"
        );
        (
            u16::try_from(body["status"].as_u64().unwrap()).unwrap(),
            body["payload"].clone(),
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

    /// Kills the agent mid-flight, as a crash would.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }

    /// Waits for the agent's run to end by itself (a simulated reboot).
    pub async fn finished(self) -> RunOutcome {
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the agent stops")
            .expect("the agent task")
            .expect("the agent ran")
    }
}

/// Whether a reported patch carries `maintenance.window` with this `open`.
pub fn window_open_is(patch: &Value, open: bool) -> bool {
    patch["maintenance"]["window"]["open"] == json!(open)
}
