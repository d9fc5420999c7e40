//! Many simulated devices in one process: `casement-agent simulate`, the demo and load tests.
//!
//! [`Simulation::start`] registers the planned devices ([`PlannedDevice`], [`numbered`]) with the
//! hub in bulk, with their tags and keys of its own (registration once; a device that already
//! exists keeps its keys), then runs one real [`Agent`] per device — each with its own MQTT
//! connection, zone, clock skew and state directory. A reboot is a power cut: the agent's run ends without
//! DISCONNECT, the device stays dark for `reboot_time` (on its own clock, so a test's driven
//! clock governs it too) and comes back as a fresh boot with its persisted state. Every
//! simulated reboot is recorded in the [`GroundTruth`] (in memory, and as JSON lines when a
//! file is given) with the true instant, the device's own instant and the occurrence, so tests
//! can check the invariants against what really happened.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use casement_client::{MAX_BULK_DEVICES, NewDevice};
use casement_iothub::connection_string::{
    DeviceAuth, DeviceConnectionString, ServiceConnectionString,
};
use casement_iothub::error::ErrorCode;
use casement_iothub::rest::TwinPatch;
use casement_iothub::sas::generate_key;
use casement_iothub::time::serde_timestamp;
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng};
use rustls::ClientConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tracing::{error, info};

use crate::agent::{Agent, AgentEvent, RebootHook, RunOutcome};
use crate::backoff::BackoffPolicy;
use crate::clock::{AgentClock, Wake};
use crate::config::{AgentConfig, Endpoint, Transport};

pub mod invariants;
mod silent;
use crate::mqtt::{ConnectError, tls_config};

/// How long a REST call to the hub may take.
const REST_TIMEOUT: Duration = Duration::from_secs(30);
/// Events kept for slow [`Simulation::events`] subscribers.
const EVENT_CAPACITY: usize = 16 * 1024;

/// Errors starting a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// A REST call to the hub failed.
    #[error("{action} {device}: {reason}")]
    Hub {
        /// What was being done.
        action: &'static str,
        /// The device.
        device: String,
        /// What went wrong.
        reason: String,
    },
    /// TLS could not be prepared.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The ground-truth log could not be opened.
    #[error("cannot open the ground-truth log {path}: {source}")]
    GroundTruth {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The settings are inconsistent.
    #[error("{0}")]
    Invalid(String),
}

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimulationConfig {
    /// The hub's service connection string (registry write permission needed).
    pub hub: ServiceConnectionString,
    /// The hub's REST base URL; default `https://{HostName}`.
    pub hub_url: Option<String>,
    /// Where the devices connect; default `mqtts://{HostName}:8883`.
    pub mqtt_endpoint: Option<Endpoint>,
    /// CA to trust for TLS (MQTT and REST); `None`: system roots.
    pub ca: Option<PathBuf>,
    /// The devices to simulate: their ids, zones and tags (see [`numbered`] for a fleet
    /// named by the usual convention). Each is registered once, with its tags, in bulk.
    pub devices: Vec<PlannedDevice>,
    /// Each device's clock is off by a uniform random amount in `[-max_skew, +max_skew]`.
    pub max_skew: TimeDelta,
    /// How long a simulated reboot keeps a device dark.
    pub reboot_time: Duration,
    /// The parent of the per-device state directories.
    pub state_dir: PathBuf,
    /// Append every reboot to this JSON-lines file too.
    pub ground_truth: Option<PathBuf>,
    /// The seed of the skew draws (same seed, same skews).
    pub seed: u64,
    /// The reference clock; devices see it plus their skew. Default: the system clock.
    pub clock: AgentClock,
    /// Reconnect backoff of every agent.
    pub backoff: BackoffPolicy,
    /// SAS token lifetime of every agent.
    pub token_lifetime: Duration,
    /// Renew that long before expiry.
    pub renew_before: Duration,
    /// A reboot cuts the power silently: the hub's socket stays open with no FIN and no
    /// DISCONNECT (each device connects through a loopback relay that never passes its side
    /// closing on), so the hub notices only by keep-alive, as with a real power cut. Plain MQTT
    /// endpoints on this machine only. Default off: the connection closes at once.
    pub silent_power_cuts: bool,
    /// Every agent's `report_jitter`. Default zero: simulated fleets (tests, the demo) jump
    /// their clocks to a window and expect its reports on the instant; set it to spread them
    /// as real agents do (30 s by default).
    pub report_jitter: Duration,
}

impl SimulationConfig {
    /// Defaults for everything but the hub, the devices and the state directory.
    pub fn new(
        hub: ServiceConnectionString,
        devices: Vec<PlannedDevice>,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            hub,
            hub_url: None,
            mqtt_endpoint: None,
            ca: None,
            devices,
            max_skew: TimeDelta::zero(),
            reboot_time: Duration::from_secs(30),
            state_dir,
            ground_truth: None,
            seed: 0,
            clock: AgentClock::system(),
            backoff: BackoffPolicy::default(),
            token_lifetime: crate::config::DEFAULT_TOKEN_LIFETIME,
            renew_before: crate::config::DEFAULT_RENEW_BEFORE,
            silent_power_cuts: false,
            report_jitter: Duration::ZERO,
        }
    }
}

/// The prefix of [`numbered`] devices' ids when nothing else is asked for.
pub const DEFAULT_PREFIX: &str = "sim-";

/// One device of a simulated fleet, as planned: the simulator registers it with these tags
/// and runs its agent in this zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedDevice {
    /// Device id.
    pub id: String,
    /// The zone its agent reports (and its `zone` tag, unless `tags` names another).
    pub zone: Tz,
    /// Twin tags.
    pub tags: BTreeMap<String, String>,
}

impl PlannedDevice {
    /// A device with no tags but its zone.
    pub fn new(id: impl Into<String>, zone: Tz) -> Self {
        Self {
            id: id.into(),
            zone,
            tags: BTreeMap::new(),
        }
    }

    /// The same device with one more tag.
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// The tags its twin gets: [`Self::tags`] and `zone`.
    pub fn twin_tags(&self) -> BTreeMap<String, String> {
        let mut tags = self.tags.clone();
        tags.entry("zone".to_owned())
            .or_insert_with(|| self.zone.name().to_owned());
        tags
    }
}

/// The naming convention of simulated fleets, in one place: `count` devices named
/// `{prefix}0000`, `{prefix}0001`, … that take `zones` round-robin (device `n` is in
/// `zones[n % zones.len()]`), with no tags yet. No zones: no devices.
pub fn numbered(prefix: &str, count: usize, zones: &[Tz]) -> Vec<PlannedDevice> {
    if zones.is_empty() {
        return Vec::new();
    }
    (0..count)
        .map(|n| PlannedDevice::new(format!("{prefix}{n:04}"), zones[n % zones.len()]))
        .collect()
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// Device id.
    pub id: String,
    /// Its zone.
    pub zone: Tz,
    /// How far its clock is off.
    pub skew: TimeDelta,
    /// Its connection string.
    pub connection: DeviceConnectionString,
}

/// One simulated reboot, as it really happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulatedReboot {
    /// The device.
    pub device: String,
    /// When the power went, by the reference clock.
    #[serde(with = "serde_timestamp")]
    pub at: DateTime<Utc>,
    /// When the power went, by the device's own (skewed) clock.
    #[serde(with = "serde_timestamp")]
    pub device_time: DateTime<Utc>,
    /// The device's skew in milliseconds.
    pub skew_ms: i64,
    /// The window occurrence the reboot was for (`None`: forced outside a window).
    #[serde(with = "casement_iothub::time::serde_timestamp_opt")]
    pub occurrence: Option<DateTime<Utc>>,
    /// The policy.
    pub policy: Option<String>,
    /// The revision.
    pub revision: Option<String>,
    /// Whether it was forced.
    pub forced: bool,
}

/// What the simulation reports, per device.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    /// The device booted (`boot` counts from 1) and its agent is starting.
    Booted {
        /// Which boot.
        boot: u64,
    },
    /// Something the device's agent did.
    Agent(AgentEvent),
    /// The device lost power for a reboot (recorded in the ground truth); it stays dark for
    /// the reboot time of its own clock from now on.
    PoweredOff(SimulatedReboot),
}

/// The log of every simulated reboot: in memory, and appended to a JSON-lines file if asked.
#[derive(Debug, Clone, Default)]
pub struct GroundTruth {
    inner: Arc<Mutex<GroundTruthInner>>,
}

#[derive(Debug, Default)]
struct GroundTruthInner {
    records: Vec<SimulatedReboot>,
    file: Option<File>,
}

impl GroundTruth {
    /// An in-memory log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log that also appends to `path`.
    pub fn with_file(path: PathBuf) -> Result<Self, SimulateError> {
        // A restarted simulation continues the log: the reboots already in the file are the
        // ground truth too (a device must not reboot twice in one window across the restart).
        let records = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .lines()
                .filter(|line| !line.trim().is_empty())
                .filter_map(|line| match serde_json::from_str(line) {
                    Ok(record) => Some(record),
                    Err(err) => {
                        error!(path = %path.display(), error = %err, "skipping an unreadable ground-truth line");
                        None
                    }
                })
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(SimulateError::GroundTruth { path, source }),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SimulateError::GroundTruth { path, source })?;
        Ok(Self {
            inner: Arc::new(Mutex::new(GroundTruthInner {
                records,
                file: Some(file),
            })),
        })
    }

    /// Records a reboot.
    pub fn record(&self, record: SimulatedReboot) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = inner.file.as_mut() {
            let line = serde_json::to_string(&record).unwrap_or_default();
            if let Err(err) = writeln!(file, "{line}").and_then(|()| file.flush()) {
                error!(error = %err, "cannot append to the ground-truth log");
            }
        }
        inner.records.push(record);
    }

    /// Every reboot so far, in order.
    pub fn records(&self) -> Vec<SimulatedReboot> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .records
            .clone()
    }
}

/// Devices [`Simulation::register`] registered, for [`Simulation::run`].
#[derive(Debug, Clone)]
pub struct Registered {
    devices: Vec<SimDevice>,
}

impl Registered {
    /// The registered devices, in plan order.
    pub fn devices(&self) -> &[SimDevice] {
        &self.devices
    }
}

/// The hub's REST base URL: `hub_url`, or `https://{HostName}`.
fn hub_url(config: &SimulationConfig) -> String {
    config
        .hub_url
        .clone()
        .unwrap_or_else(|| format!("https://{}", config.hub.host_name))
}

/// A running simulation.
#[derive(Debug)]
pub struct Simulation {
    devices: Vec<SimDevice>,
    truth: GroundTruth,
    events: broadcast::Sender<(String, SimEvent)>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Simulation {
    /// Registers the devices ([`Simulation::register`]) and starts their agents
    /// ([`Simulation::run`]).
    pub async fn start(config: SimulationConfig) -> Result<Self, SimulateError> {
        let registered = Self::register(&config).await?;
        Self::run(config, registered).await
    }

    /// Registers the planned devices — once, in bulk — without starting their agents, for a
    /// caller that acts between the two (a benchmark applies its policy before any agent
    /// connects); [`Simulation::run`] starts them.
    pub async fn register(config: &SimulationConfig) -> Result<Registered, SimulateError> {
        let mut ids = std::collections::HashSet::new();
        if let Some(twice) = config.devices.iter().find(|d| !ids.insert(d.id.as_str())) {
            return Err(SimulateError::Invalid(format!(
                "device {:?} is planned twice; every simulated device needs its own id",
                twice.id
            )));
        }
        let registry = Registry::new(
            &config.hub,
            hub_url(config),
            config.ca.as_deref(),
            config.clock.clone(),
        )?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);
        let max_skew_ms = config.max_skew.num_milliseconds().abs();
        let keys = registry.register(&config.devices).await?;
        let devices: Vec<SimDevice> = config
            .devices
            .iter()
            .zip(keys)
            .map(|(planned, key)| {
                let skew = TimeDelta::milliseconds(if max_skew_ms == 0 {
                    0
                } else {
                    rng.random_range(-max_skew_ms..=max_skew_ms)
                });
                SimDevice {
                    id: planned.id.clone(),
                    zone: planned.zone,
                    skew,
                    connection: DeviceConnectionString {
                        host_name: config.hub.host_name.clone(),
                        device_id: planned.id.clone(),
                        module_id: None,
                        auth: DeviceAuth::SharedAccessKey(key),
                        gateway_host_name: None,
                    },
                }
            })
            .collect();
        info!(devices = devices.len(), "devices registered");
        Ok(Registered { devices })
    }

    /// Starts the agents of devices [`Simulation::register`] registered with `config`.
    pub async fn run(
        config: SimulationConfig,
        registered: Registered,
    ) -> Result<Self, SimulateError> {
        let devices = registered.devices;
        let endpoint = match &config.mqtt_endpoint {
            Some(endpoint) => endpoint.clone(),
            // Never HostName's port: that is the hub's HTTPS port (issue 12).
            None => crate::config::Endpoint::tls_for_host_name(&config.hub.host_name)
                .map_err(|err| SimulateError::Invalid(err.to_string()))?,
        };
        let needs_tls =
            endpoint.transport == Transport::Tls || hub_url(&config).starts_with("https:");
        let tls = if needs_tls {
            Some(tls_config(config.ca.as_deref())?)
        } else {
            None
        };
        let truth = match &config.ground_truth {
            Some(path) => GroundTruth::with_file(path.clone())?,
            None => GroundTruth::new(),
        };
        info!(devices = devices.len(), %endpoint, "starting agents");

        // Boot ids must differ from every earlier run's, as a real device's do after a power
        // cycle (/proc/sys/kernel/random/boot_id): a restarted simulation that counted from 1
        // again would look to each agent like "did not reboot" (the same boot id).
        let run_id = format!("{:016x}", rand::random::<u64>());
        let (stop, _) = watch::channel(false);
        let events = broadcast::Sender::new(EVENT_CAPACITY);
        let mut tasks = JoinSet::new();
        for device in &devices {
            let (endpoint, relay) = if config.silent_power_cuts {
                let (relay, endpoint) = silent_endpoint(&endpoint).await?;
                (endpoint, Some(relay))
            } else {
                (endpoint.clone(), None)
            };
            let mut agent_config = AgentConfig::new(
                device.connection.clone(),
                endpoint,
                config.state_dir.join(&device.id),
                device.zone,
            );
            agent_config.ca = config.ca.clone();
            agent_config.backoff = config.backoff;
            agent_config.token_lifetime = config.token_lifetime;
            agent_config.renew_before = config.renew_before;
            agent_config.report_jitter = config.report_jitter;
            tasks.spawn(run_device(DeviceRun {
                device: device.clone(),
                config: agent_config,
                clock: config.clock.clone().with_skew(device.skew),
                reference: config.clock.clone(),
                tls: tls.clone(),
                reboot_time: config.reboot_time,
                run_id: run_id.clone(),
                _relay: relay,
                truth: truth.clone(),
                events: events.clone(),
                stop: stop.subscribe(),
            }));
        }
        Ok(Self {
            devices,
            truth,
            events,
            stop,
            tasks,
        })
    }

    /// The simulated devices.
    pub fn devices(&self) -> &[SimDevice] {
        &self.devices
    }

    /// The ground truth of reboots.
    pub fn ground_truth(&self) -> &GroundTruth {
        &self.truth
    }

    /// Every device's events, tagged with the device id.
    pub fn events(&self) -> broadcast::Receiver<(String, SimEvent)> {
        self.events.subscribe()
    }

    /// Stops every agent (clean DISCONNECTs) and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

struct DeviceRun {
    device: SimDevice,
    config: AgentConfig,
    clock: AgentClock,
    reference: AgentClock,
    tls: Option<Arc<ClientConfig>>,
    reboot_time: Duration,
    /// This run's part of every boot id.
    run_id: String,
    /// The silent-power-cut relay, held as long as the device runs.
    _relay: Option<silent::SilentRelay>,
    truth: GroundTruth,
    events: broadcast::Sender<(String, SimEvent)>,
    stop: watch::Receiver<bool>,
}

/// A relay in front of `endpoint` for silent power cuts, and the endpoint to use instead.
async fn silent_endpoint(
    endpoint: &Endpoint,
) -> Result<(silent::SilentRelay, Endpoint), SimulateError> {
    let invalid = |why: String| SimulateError::Invalid(format!("silent power cuts: {why}"));
    if endpoint.transport != Transport::Tcp {
        return Err(invalid(format!(
            "{endpoint} is TLS; the relay serves plain MQTT endpoints (mqtt://) only"
        )));
    }
    let upstream = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| invalid(format!("cannot resolve {endpoint}: {e}")))?
        .next()
        .ok_or_else(|| invalid(format!("{endpoint} resolves to no address")))?;
    let relay = silent::SilentRelay::start(upstream)
        .await
        .map_err(|e| invalid(format!("cannot start the relay: {e}")))?;
    let relayed = Endpoint {
        transport: Transport::Tcp,
        host: relay.addr().ip().to_string(),
        port: relay.addr().port(),
    };
    Ok((relay, relayed))
}

/// A simulated boot's id: unique per device, per simulation run and per boot.
fn boot_id(device: &str, run_id: &str, boot: u64) -> String {
    format!("{device}-{run_id}-boot-{boot}")
}

/// Boots, runs and reboots one device until the simulation stops.
async fn run_device(mut run: DeviceRun) {
    let mut boot = 0u64;
    loop {
        boot += 1;
        let agent = Agent::with_tls_config(run.config.clone(), run.tls.clone())
            .with_clock(run.clock.clone())
            .with_reboot_hook(RebootHook::Simulated)
            .with_boot_id(Some(boot_id(&run.device.id, &run.run_id, boot)));
        let _ = run
            .events
            .send((run.device.id.clone(), SimEvent::Booted { boot }));
        let mut agent_events = agent.events();
        let forward = {
            let events = run.events.clone();
            let id = run.device.id.clone();
            tokio::spawn(async move {
                loop {
                    match agent_events.recv().await {
                        Ok(event) => {
                            let _ = events.send((id.clone(), SimEvent::Agent(event)));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        };
        let mut stop = run.stop.clone();
        let outcome = agent
            .run(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .await;
        let _ = forward.await;
        match outcome {
            Ok(RunOutcome::Shutdown) => return,
            Ok(RunOutcome::Rebooted(reboot)) => {
                let record = SimulatedReboot {
                    device: run.device.id.clone(),
                    at: run.reference.now(),
                    device_time: run.clock.now(),
                    skew_ms: run.device.skew.num_milliseconds(),
                    occurrence: reboot.occurrence,
                    policy: reboot.policy,
                    revision: reboot.revision,
                    forced: reboot.forced,
                };
                info!(device = %record.device, at = %record.at, occurrence = ?record.occurrence, "simulated reboot");
                let back_at = record.device_time
                    + TimeDelta::from_std(run.reboot_time).unwrap_or(TimeDelta::zero());
                run.truth.record(record.clone());
                let _ = run
                    .events
                    .send((run.device.id.clone(), SimEvent::PoweredOff(record)));
                loop {
                    tokio::select! {
                        _ = run.stop.wait_for(|stop| *stop) => return,
                        wake = run.clock.sleep_until(back_at) => {
                            if wake == Wake::Deadline || run.clock.now() >= back_at {
                                break;
                            }
                        }
                    }
                }
            }
            Err(err) => {
                error!(device = %run.device.id, error = %err, "the simulated agent stopped");
                return;
            }
        }
    }
}

/// The few registry calls the simulator needs, through the service client: a throttled hub's
/// 429s are retried with back-off (honouring `Retry-After`) rather than ending the simulation.
struct Registry {
    client: casement_client::ServiceClient,
}

impl Registry {
    fn new(
        hub: &ServiceConnectionString,
        base: String,
        ca: Option<&std::path::Path>,
        clock: AgentClock,
    ) -> Result<Self, SimulateError> {
        let invalid = |err: casement_client::TargetError| SimulateError::Hub {
            action: "cannot reach",
            device: "the hub".into(),
            reason: err.to_string(),
        };
        let mut target = casement_client::HubTarget::new(hub.clone())
            .with_endpoint(&base)
            .map_err(invalid)?;
        if let Some(ca) = ca {
            target = target.with_ca_file(ca).map_err(invalid)?;
        }
        let config = casement_client::ClientConfig {
            request_timeout: REST_TIMEOUT,
            // Registering a fleet on a throttled hub (S1: 100 registry operations a minute)
            // waits for the quota rather than giving up.
            retry: casement_client::RetryPolicy {
                max_attempts: 20,
                initial: Duration::from_millis(200),
                max: Duration::from_secs(20),
            },
            ..casement_client::ClientConfig::default()
        };
        let client = casement_client::ServiceClient::new(target, config, Arc::new(clock))
            .map_err(invalid)?;
        Ok(Self { client })
    }

    /// Registers `devices` with their tags and returns their primary keys, in order: one bulk
    /// call per [`MAX_BULK_DEVICES`] devices, with keys the simulator generates (so nothing is
    /// read back). A device that already exists (a restarted simulation) keeps its keys: they
    /// are read, and its tags merged into its twin.
    async fn register(&self, devices: &[PlannedDevice]) -> Result<Vec<String>, SimulateError> {
        let mut keys = Vec::with_capacity(devices.len());
        for chunk in devices.chunks(MAX_BULK_DEVICES) {
            let new: Vec<NewDevice> = chunk
                .iter()
                .map(|d| NewDevice {
                    id: d.id.clone(),
                    tags: d
                        .twin_tags()
                        .into_iter()
                        .map(|(k, v)| (k, serde_json::Value::String(v)))
                        .collect(),
                    disabled: false,
                    keys: Some((generate_key(), generate_key())),
                })
                .collect();
            let outcome =
                self.client
                    .import_devices(&new)
                    .await
                    .map_err(|err| SimulateError::Hub {
                        action: "cannot register",
                        device: format!(
                            "{} and the {} devices after it",
                            chunk[0].id,
                            chunk.len() - 1
                        ),
                        reason: err.to_string(),
                    })?;
            let mut taken = std::collections::HashSet::new();
            for failure in outcome.failures {
                if failure.error_code != ErrorCode::DeviceAlreadyExists.name() {
                    return Err(SimulateError::Hub {
                        action: "cannot register",
                        device: failure.device_id,
                        reason: format!("{}: {}", failure.error_code, failure.message),
                    });
                }
                taken.insert(failure.device_id);
            }
            for (planned, device) in chunk.iter().zip(new) {
                if taken.contains(&planned.id) {
                    keys.push(self.existing_key(&planned.id).await?);
                    self.set_tags(&planned.id, &planned.twin_tags()).await?;
                } else if let Some((primary, _)) = device.keys {
                    keys.push(primary);
                }
            }
        }
        Ok(keys)
    }

    /// The primary key of a device registered before.
    async fn existing_key(&self, id: &str) -> Result<String, SimulateError> {
        let fail = |reason: String| SimulateError::Hub {
            action: "cannot register",
            device: id.to_owned(),
            reason,
        };
        self.client
            .device(id)
            .await
            .map_err(|err| fail(err.to_string()))?
            .authentication
            .and_then(|auth| auth.symmetric_key)
            .and_then(|keys| keys.primary_key)
            .filter(|key| !key.is_empty())
            .ok_or_else(|| {
                fail(
                    "it exists without a symmetric key (X.509?); remove it or plan another id"
                        .into(),
                )
            })
    }

    /// Merges `tags` into the device's twin.
    async fn set_tags(
        &self,
        id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), SimulateError> {
        let patch = TwinPatch::tags(serde_json::to_value(tags).unwrap_or_default());
        self.client
            .patch(id, &patch, Some("*"))
            .await
            .map(drop)
            .map_err(|err| SimulateError::Hub {
                action: "cannot tag",
                device: id.to_owned(),
                reason: err.to_string(),
            })
    }
}
