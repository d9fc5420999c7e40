//! The seeded scenario runner: a fleet of simulated devices, the real hub and the real
//! scheduler, an hour of maintenance windows in a couple of minutes, and faults injected on a
//! seeded timeline. It returns the facts of the run (see [`crate::invariants`]) with the
//! violations found; the test asserts there are none.
//!
//! # The run
//! - Time is a [`DrivenClock`] shared by the hub, the scheduler and every device (each device
//!   sees it plus its own skew). It stands still while the fleet registers and applies its
//!   policies, then runs fast: [`ScenarioConfig::speed`] simulated seconds per real second, in
//!   steps. Nothing sleeps for a real window.
//! - The fleet: [`ScenarioConfig::devices`] simulated devices (the agent crate's simulator, one
//!   MQTT connection each) in five zones on four continents, clocks off by up to
//!   [`MAX_SKEW`], reaching the hub through a [fault proxy](crate::proxy). The scheduler
//!   reaches it through another.
//! - The policies ([`POLICIES`]): device-local nightly windows in Europe that fall into the
//!   night the clocks go forward (2026-03-29, 01:00 UTC: 02:30 Amsterdam does not exist that
//!   night), three short windows in New York time, a long one in UTC, and a high-priority canary
//!   ring of a few devices drawn from all of them with tight limits.
//! - The faults ([`plan`]): devices cut off or blackholed during their windows, a slow and then
//!   a reset link between scheduler and hub, a network blip that drops every device at once,
//!   the scheduler killed (no graceful stop) and restarted twice, the hub restarted on its data.
//!
//! The plan, the skews, the outages and the canary ring are drawn from the seed, so a failing
//! run can be replayed with `CASEMENT_SEED`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use casement_agent::backoff::BackoffPolicy;
use casement_agent::clock::DrivenClock;
use casement_agent::config::Endpoint;
use casement_agent::simulate::{self, Simulation, SimulationConfig};
use casement_client::{ClientConfig, ClientError, HubApi, HubTarget, RetryPolicy, ServiceClient};
use casement_iothub::connection_string::ServiceConnectionString;
use casement_iothub::rest::{MethodRequest, MethodResponse, Twin, TwinPatch};
use casement_policy::{Clock, Policy};
use casement_scheduler::fleet::TwinView;
use casement_scheduler::journal::{JournalError, JournalView};
use casement_scheduler::metrics::Metrics;
use casement_scheduler::report::{self, Report};
use casement_scheduler::rollout::RolloutConfig;
use casement_scheduler::run::{RunConfig, RunError, RunStats, Scheduler, SignalSender, Signals};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::hub::{TestHub, TestHubError};
use crate::invariants::{
    Device, Facts, Invocation, Outage, Reboot, TwinAndReportChecks, Violation, judged_windows,
};
use crate::proxy::{Fault, FaultProxy, ProxyError, RuleAction, RuleId};
use crate::rest::{Rest, RestError};
use crate::seed::Seed;

/// The devices' zones, assigned round-robin: four continents, two of the zones changing to
/// summer time during the run.
pub const ZONES: [Tz; 5] = [
    chrono_tz::Europe::Amsterdam,
    chrono_tz::Europe::Lisbon,
    chrono_tz::America::New_York,
    chrono_tz::Asia::Tokyo,
    chrono_tz::Australia::Sydney,
];

/// The largest device clock skew (either way).
pub const MAX_SKEW: TimeDelta = TimeDelta::seconds(20);
/// How long a simulated reboot keeps a device dark (simulated time).
pub const REBOOT_TIME: TimeDelta = TimeDelta::seconds(60);
/// How many devices the canary ring takes from the fleet.
pub const CANARIES: usize = 12;

/// The policies, as files. `{canaries}` is replaced by the canary ring's device ids.
pub const POLICIES: [(&str, &str); 4] = [
    (
        "europe-nightly.toml",
        r#"# 02:30 device-local: on 2026-03-29 that instant does not exist in Amsterdam (the clocks
# jump from 02:00 to 03:00), so the window opens at 03:00 CEST; in Lisbon it is 02:30 WEST.
[policy]
name     = "europe-nightly"
priority = 10
target   = "tags.zone IN ['Europe/Amsterdam', 'Europe/Lisbon']"

[window]
schedule = "30 2 * * *"
duration = "30m"
timezone = "device"

[reboot]
expected_duration = "3m"
method_timeout    = "5s"

[rollout]
max_concurrent = 12
max_per_minute = 30
max_failures   = "50%"
"#,
    ),
    (
        "new-york-evening.toml",
        r#"# Three short windows an evening, New York time (01:00, 01:20, 01:40 UTC on the day).
[policy]
name     = "new-york-evening"
priority = 10
target   = "tags.zone = 'America/New_York'"

[window]
schedule = "0,20,40 21 * * *"
duration = "15m"
timezone = "America/New_York"

[reboot]
expected_duration = "3m"
method_timeout    = "5s"

[rollout]
max_concurrent = 40
max_per_minute = 80
max_failures   = "50%"
"#,
    ),
    (
        "apac-utc.toml",
        r#"[policy]
name     = "apac-utc"
priority = 10
target   = "tags.zone IN ['Asia/Tokyo', 'Australia/Sydney']"

[window]
schedule = "10 1 * * *"
duration = "40m"
timezone = "UTC"

[reboot]
expected_duration = "3m"
method_timeout    = "5s"

[rollout]
max_concurrent = 20
max_per_minute = 30
max_failures   = "50%"
"#,
    ),
    (
        "canary.toml",
        r#"# A few devices of every zone, first and slowly; they also match the policies above and
# the higher priority wins.
[policy]
name     = "canary"
priority = 100
target   = "deviceId IN [{canaries}]"

[window]
schedule = "5 1 * * *"
duration = "25m"
timezone = "UTC"

[reboot]
expected_duration = "3m"
method_timeout    = "5s"

[rollout]
max_concurrent = 3
max_per_minute = 4
max_failures   = "50%"
"#,
    ),
];

/// When the clock starts (the night the European clocks go forward).
pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 29, 0, 59, 0)
        .single()
        .unwrap_or_default()
}

/// Windows opening at or after this are judged for completeness.
pub fn judged_from() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 29, 1, 0, 0)
        .single()
        .unwrap_or_default()
}

/// Windows closing at or before this are judged for completeness.
pub fn judged_to() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 29, 2, 0, 0)
        .single()
        .unwrap_or_default()
}

/// When the clock stops: every window closed, every device back from its last reboot.
pub fn stop_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 29, 2, 1, 0)
        .single()
        .unwrap_or_default()
}

/// How a run goes.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    /// The seed of everything random.
    pub seed: Seed,
    /// Simulated devices.
    pub devices: usize,
    /// Simulated seconds per real second.
    pub speed: u32,
    /// Real time between two moves of the clock.
    pub step: Duration,
    /// Real time between two passes of the scheduler.
    pub tick: Duration,
    /// How long the setup (registering, applying) may take before the run gives up.
    pub setup_timeout: Duration,
    /// Azure IoT Hub's behaviours the local hub can mimic, switched on for the run.
    pub azure: AzureBehaviours,
}

/// Azure IoT Hub's behaviours that `casement hub` mimics behind flags (docs/azure-fidelity.md),
/// for a run that has them all on: what passes with them passes on Azure.
#[derive(Debug, Clone, Default)]
pub struct AzureBehaviours {
    /// Queries answer from the twins as they were this long ago (`--query-lag`).
    pub query_lag: Duration,
    /// `connectionState` and `lastActivityTime` show this late (`--connection-state-lag`).
    pub connection_state_lag: Duration,
    /// Quotas over which the hub queues and slows calls down (`--throttle-mode shape`), 429 when
    /// a queue is full; MQTT connections over quota are closed.
    pub shaping: Option<casement_hub::ThrottleConfig>,
    /// Reboots cut the power silently: no FIN, the hub notices by keep-alive, and a method to a
    /// dark device gets 504101 after its timeout.
    pub silent_power_cuts: bool,
}

impl AzureBehaviours {
    /// Everything on: 30 s of query lag, two minutes of connection-state lag (by the run's
    /// clock), S3 quotas shaped, silent power cuts.
    pub fn all() -> Self {
        Self {
            query_lag: Duration::from_secs(30),
            connection_state_lag: Duration::from_secs(120),
            shaping: Some(casement_hub::ThrottleConfig::tier(
                casement_iothub::quota::Tier::S3,
                1,
            )),
            silent_power_cuts: true,
        }
    }
}

impl ScenarioConfig {
    /// 520 devices at 30× real time in 200 ms steps, a scheduler pass every 200 ms.
    pub fn new(seed: Seed) -> Self {
        Self {
            seed,
            devices: 520,
            speed: 30,
            step: Duration::from_millis(200),
            tick: Duration::from_millis(200),
            setup_timeout: Duration::from_secs(90),
            azure: AzureBehaviours::default(),
        }
    }
}

/// Why a run could not be carried out (as opposed to a run that found violations).
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The hub failed.
    #[error(transparent)]
    Hub(#[from] TestHubError),
    /// A proxy failed.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A REST call failed.
    #[error(transparent)]
    Rest(#[from] RestError),
    /// The simulation failed to start.
    #[error("the simulation did not start: {0}")]
    Simulation(String),
    /// The scheduler failed.
    #[error("the scheduler failed: {0}")]
    Scheduler(String),
    /// Files could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The policy files did not load.
    #[error("the scenario's policies are invalid: {0}")]
    Policies(String),
    /// Something took far longer than it can.
    #[error("timed out: {0}")]
    Timeout(String),
}

/// What the run injected, when (simulated time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultAction {
    /// Delay every chunk between scheduler and hub.
    SlowSchedulerLink(Duration),
    /// Back to normal.
    HealSchedulerLink,
    /// Reset every connection between scheduler and hub.
    CutSchedulerLink,
    /// Reset every device connection and refuse new ones for a moment (real time).
    NetworkBlip(Duration),
    /// Abort the scheduler (no graceful stop) and start it again after a moment (real time).
    KillScheduler(Duration),
    /// Stop the hub and start it again on the same data (new ports, same proxies).
    RestartHub,
    /// Take one device off the network: its connections are cut (or blackholed) and it
    /// cannot reconnect, until [`FaultAction::DeviceBack`].
    DeviceOff {
        /// The device.
        device: String,
        /// Blackhole (bytes vanish) rather than cut.
        blackhole: bool,
    },
    /// Let the device back.
    DeviceBack {
        /// The device.
        device: String,
    },
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// When (simulated).
    pub at: DateTime<Utc>,
    /// What.
    pub action: FaultAction,
}

/// How much of everything happened (to check the run was not vacuous).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScenarioStats {
    /// Reboots in the ground truth.
    pub reboots: usize,
    /// Invocations the scheduler made.
    pub invocations: usize,
    /// Times the scheduler was killed and restarted.
    pub scheduler_restarts: usize,
    /// Times the hub was restarted.
    pub hub_restarts: usize,
    /// When (simulated) the scheduler was killed or the hub restarted, to check they hit a
    /// wave in progress.
    pub disruptions: Vec<(String, DateTime<Utc>)>,
    /// Device outages.
    pub outages: usize,
    /// Real seconds the clock ran.
    pub run_seconds: u64,
    /// The largest lag between a scheduler decision and the tap seeing its call, in simulated
    /// milliseconds.
    pub decision_lag_ms: i64,
    /// Passes of the last scheduler instance.
    pub last_scheduler: Option<RunStats>,
}

/// The result of a run.
#[derive(Debug)]
pub struct ScenarioOutcome {
    /// The facts.
    pub facts: Facts,
    /// The twins at the end.
    pub twins: Vec<TwinView>,
    /// `casement report` at the end.
    pub report: Report,
    /// Every violation found: of the invariants, in the twins, in the report.
    pub violations: Vec<Violation>,
    /// The faults, as executed.
    pub timeline: Vec<String>,
    /// Counts.
    pub stats: ScenarioStats,
}

/// The scheduler's hub client with a tap: every `reboot` invocation is recorded, with the
/// scheduler's clock, before it is sent.
#[derive(Clone)]
struct Tap {
    inner: ServiceClient,
    clock: Arc<dyn Clock>,
    log: Arc<Mutex<Vec<Invocation>>>,
}

impl HubApi for Tap {
    fn query(&self, sql: &str) -> impl Future<Output = Result<Vec<Value>, ClientError>> + Send {
        self.inner.query(sql)
    }
    fn get_twin(&self, device: &str) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        self.inner.get_twin(device)
    }
    fn patch_twin(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        self.inner.patch_twin(device, patch, etag)
    }
    fn invoke_method(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> impl Future<Output = Result<MethodResponse, ClientError>> + Send {
        let text = |key: &str| {
            request
                .payload
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let occurrence = casement_iothub::time::parse_timestamp(&text("occurrence")).ok();
        let now = self.clock.now();
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Invocation {
                at: now,
                earliest: now,
                device: device.to_owned(),
                policy: text("policy"),
                occurrence,
            });
        self.inner.invoke_method(device, request)
    }
}

/// The simulated fleet: `devices` devices named by the simulator's convention, zones
/// [`ZONES`] round-robin.
pub fn fleet(devices: usize) -> Vec<simulate::PlannedDevice> {
    simulate::numbered(simulate::DEFAULT_PREFIX, devices, &ZONES)
}

/// The canary ring: `CANARIES` device ids drawn from the fleet.
pub fn canaries(seed: Seed, fleet: &[simulate::PlannedDevice]) -> Vec<String> {
    let mut ids: Vec<usize> = (0..fleet.len()).collect();
    ids.shuffle(&mut seed.rng("canaries"));
    let mut ring: Vec<String> = ids
        .into_iter()
        .take(CANARIES.min(fleet.len()))
        .map(|n| fleet[n].id.clone())
        .collect();
    ring.sort();
    ring
}

/// Writes the policy files into `dir` and loads them.
///
/// # Errors
/// When a file cannot be written or the set does not load.
pub fn write_policies(dir: &Path, canaries: &[String]) -> Result<Vec<Policy>, ScenarioError> {
    let ring = canaries
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(", ");
    for (name, text) in POLICIES {
        let path = dir.join(name);
        std::fs::write(&path, text.replace("{canaries}", &ring))
            .map_err(|source| ScenarioError::Io { path, source })?;
    }
    casement_policy::load([dir])
        .map(casement_policy::PolicySet::into_vec)
        .map_err(|diagnostics| {
            ScenarioError::Policies(
                diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
}

/// The policy each twin should carry: the highest priority among those whose target matches
/// it, then the name (computed here from the tags, independently of `casement apply`).
pub fn assign(policies: &[Policy], twins: &[Value]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for twin in twins {
        let Some(id) = twin.get("deviceId").and_then(Value::as_str) else {
            continue;
        };
        let best = policies
            .iter()
            .filter(|p| p.target().matches(twin))
            .max_by(|a, b| {
                a.priority()
                    .cmp(&b.priority())
                    .then_with(|| b.name().cmp(a.name()))
            });
        if let Some(policy) = best {
            out.insert(id.to_owned(), policy.name().to_owned());
        }
    }
    out
}

/// The fault timeline of a run, drawn from the seed: the global faults at fixed points of the
/// run (each moved by up to a minute), and outages of a few devices inside their windows.
pub fn plan(
    seed: Seed,
    policies: &[Policy],
    devices: &[Device],
    assignment: &BTreeMap<String, String>,
) -> Vec<Planned> {
    let mut rng = seed.rng("faults");
    let at = |rng: &mut rand::rngs::StdRng, h: u32, m: u32| {
        let base = Utc
            .with_ymd_and_hms(2026, 3, 29, h, m, 0)
            .single()
            .unwrap_or_default();
        base + TimeDelta::seconds(rng.random_range(-60..=60))
    };
    let mut out = vec![
        Planned {
            at: at(&mut rng, 1, 3),
            action: FaultAction::SlowSchedulerLink(Duration::from_millis(150)),
        },
        Planned {
            at: at(&mut rng, 1, 6),
            action: FaultAction::HealSchedulerLink,
        },
        Planned {
            at: at(&mut rng, 1, 9),
            action: FaultAction::KillScheduler(Duration::from_millis(1500)),
        },
        Planned {
            at: at(&mut rng, 1, 17),
            action: FaultAction::CutSchedulerLink,
        },
        Planned {
            at: at(&mut rng, 1, 23),
            action: FaultAction::NetworkBlip(Duration::from_millis(800)),
        },
        Planned {
            at: at(&mut rng, 1, 33),
            action: FaultAction::RestartHub,
        },
        // Inside the Lisbon wave (01:30 UTC on; ~100 devices at 12 at a time take 9 minutes or
        // more), with the New York 01:40 window opening in the 3 minutes after: a kill at 01:43
        // could fall after every wave had finished, and prove nothing.
        Planned {
            at: at(&mut rng, 1, 37),
            action: FaultAction::KillScheduler(Duration::from_millis(800)),
        },
    ];
    // About 3% of the devices lose their network for a while inside one of their windows.
    for device in devices {
        if !rng.random_bool(0.03) {
            continue;
        }
        let Some(policy) = assignment
            .get(&device.id)
            .and_then(|name| policies.iter().find(|p| p.name() == name))
        else {
            continue;
        };
        let Some(zone) = policy.window().timezone().resolve(Some(device.zone)) else {
            continue;
        };
        let windows = judged_windows(policy, zone, (judged_from(), judged_to()));
        if windows.is_empty() {
            continue;
        }
        let window = windows[rng.random_range(0..windows.len())];
        let length = (window.closes_at - window.opens_at).num_seconds().max(60);
        let from = window.opens_at + TimeDelta::seconds(rng.random_range(0..length * 2 / 3));
        let to = from + TimeDelta::seconds(rng.random_range(60..=300));
        out.push(Planned {
            at: from,
            action: FaultAction::DeviceOff {
                device: device.id.clone(),
                blackhole: rng.random_bool(0.3),
            },
        });
        out.push(Planned {
            at: to,
            action: FaultAction::DeviceBack {
                device: device.id.clone(),
            },
        });
    }
    out.sort_by_key(|p| p.at);
    out
}

/// A running scheduler.
struct SchedulerHandle {
    task: JoinHandle<Result<RunStats, RunError>>,
    signals: SignalSender,
}

/// What starting a scheduler needs.
#[derive(Clone)]
struct SchedulerSetup {
    tap: Tap,
    clock: Arc<dyn Clock>,
    config: RunConfig,
}

impl SchedulerSetup {
    /// Starts a scheduler, waiting for a killed predecessor's journal to be released.
    async fn start(&self) -> Result<SchedulerHandle, ScenarioError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match Scheduler::start(
                self.tap.clone(),
                self.clock.clone(),
                self.config.clone(),
                Metrics::new(),
            )
            .await
            {
                Ok(scheduler) => {
                    let (signals, receivers) = Signals::manual();
                    let task = tokio::spawn(scheduler.run(receivers));
                    return Ok(SchedulerHandle { task, signals });
                }
                Err(RunError::Journal(JournalError::Locked { .. } | JournalError::Open { .. }))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(ScenarioError::Scheduler(e.to_string())),
            }
        }
    }
}

impl SchedulerHandle {
    /// Kills it: the task is aborted, as a process killed with SIGKILL would stop.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Stops it gracefully and returns its counters.
    async fn stop(self) -> Result<RunStats, ScenarioError> {
        self.signals.stop();
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(Ok(stats))) => Ok(stats),
            Ok(Ok(Err(e))) => Err(ScenarioError::Scheduler(e.to_string())),
            Ok(Err(e)) => Err(ScenarioError::Scheduler(e.to_string())),
            Err(_) => Err(ScenarioError::Timeout(
                "the scheduler did not stop within 60 s".into(),
            )),
        }
    }
}

/// Every device's twin by `GET /twins/{id}` — strongly consistent, unlike a query, which with
/// `--query-lag` answers from the past (and before the clock moves, sees nothing new at all).
async fn read_twins(rest: &Rest, ids: &[String]) -> Result<Vec<Value>, ScenarioError> {
    let mut twins = Vec::with_capacity(ids.len());
    for id in ids {
        let answer = rest.twin(id).await?;
        if answer.status != 200 {
            return Err(ScenarioError::Scheduler(answer.text()));
        }
        twins.push(serde_json::from_slice(&answer.body).unwrap_or(Value::Null));
    }
    Ok(twins)
}

/// With queries lagging: waits until every device's own twin (read fresh) reports its policy
/// applied — a reported property only a connected device can have written.
async fn wait_until_applied_fresh(
    rest: &Rest,
    ids: &[String],
    timeout: Duration,
) -> Result<(), ScenarioError> {
    let wait = async {
        loop {
            if let Ok(twins) = read_twins(rest, ids).await
                && twins
                    .iter()
                    .all(|t| t["properties"]["reported"]["maintenance"]["status"] == "applied")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::time::timeout(timeout, wait).await.map_err(|_| {
        ScenarioError::Timeout(format!(
            "not all {} devices applied their policy within {timeout:?}",
            ids.len()
        ))
    })
}

/// Waits (polling the hub) until every device reports its policy applied.
async fn wait_until_applied(
    rest: &Rest,
    devices: usize,
    timeout: Duration,
) -> Result<(), ScenarioError> {
    let query = "SELECT COUNT() AS n FROM devices WHERE properties.reported.maintenance.status = 'applied' AND connectionState = 'Connected'";
    let wait = async {
        loop {
            if let Ok(Ok(rows)) = rest.query_all(query).await {
                let n = rows
                    .first()
                    .and_then(|r| r.get("n"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                if n as usize >= devices {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    if tokio::time::timeout(timeout, wait).await.is_ok() {
        return Ok(());
    }
    // Say what a device that is not there yet looks like.
    let laggard = rest
        .query_all("SELECT * FROM devices WHERE NOT (properties.reported.maintenance.status = 'applied' AND connectionState = 'Connected')")
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|items| items.into_iter().next())
        .map(|twin| {
            format!(
                "{}: {}, desired {}, reported {}",
                twin["deviceId"], twin["connectionState"],
                twin["properties"]["desired"]["maintenance"],
                twin["properties"]["reported"]["maintenance"]
            )
        })
        .unwrap_or_default();
    Err(ScenarioError::Timeout(format!(
        "not all {devices} devices connected and applied their policy within {timeout:?}; e.g. {laggard}"
    )))
}

/// Everything a run starts, so that it is stopped whatever happens.
struct Rig {
    work: tempfile::TempDir,
    driven: DrivenClock,
    clock: Arc<dyn Clock>,
    hub: TestHub,
    mqtt_proxy: FaultProxy,
    rest_proxy: FaultProxy,
    owner: ServiceConnectionString,
    rest: Rest,
    sim: Option<Simulation>,
    scheduler: Option<SchedulerHandle>,
    driver: Option<JoinHandle<()>>,
}

impl Rig {
    /// The clock, the hub and the two proxies.
    async fn start(azure: &AzureBehaviours) -> Result<Self, ScenarioError> {
        let work = tempfile::Builder::new()
            .prefix("casement-scenario-")
            .tempdir()
            .map_err(|source| ScenarioError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let driven = DrivenClock::new(start_time());
        let clock: Arc<dyn Clock> = Arc::new(driven.manual());
        let hub = TestHub::start_with(Some(clock.clone()), |hub| {
            hub.query_lag = azure.query_lag;
            hub.connection_state_lag = azure.connection_state_lag;
            if let Some(quotas) = &azure.shaping {
                hub.throttle = quotas.clone();
                hub.throttle_mode = casement_hub::ThrottleMode::Shape;
            }
        })
        .await?;
        let mqtt_proxy = FaultProxy::start(hub.mqtt_addr()?).await?;
        let rest_proxy = FaultProxy::start(hub.http_addr()?).await?;
        let owner = hub.owner()?;
        let rest = Rest::new(&hub.http_url()?, owner.clone())?.with_clock(clock.clone());
        Ok(Self {
            work,
            driven,
            clock,
            hub,
            mqtt_proxy,
            rest_proxy,
            owner,
            rest,
            sim: None,
            scheduler: None,
            driver: None,
        })
    }

    /// Stops everything still running, in order: clock, scheduler, fleet, proxies, hub.
    async fn teardown(mut self) {
        if let Some(driver) = self.driver.take() {
            driver.abort();
            let _ = driver.await;
        }
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.kill().await;
        }
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
        self.mqtt_proxy.shutdown().await;
        self.rest_proxy.shutdown().await;
        self.hub.shutdown().await;
        drop(self.work);
    }
}

/// Runs the scenario.
///
/// # Errors
/// When the run itself cannot be carried out (the system under test failing the invariants is
/// an `Ok` outcome with violations).
pub async fn run(config: ScenarioConfig) -> Result<ScenarioOutcome, ScenarioError> {
    crate::install_crypto_provider();
    let mut rig = Rig::start(&config.azure).await?;
    let result = drive(&mut rig, &config).await;
    rig.teardown().await;
    tracing::info!("torn down");
    result
}

/// The run proper, on a started rig.
async fn drive(rig: &mut Rig, config: &ScenarioConfig) -> Result<ScenarioOutcome, ScenarioError> {
    let seed = config.seed;
    let policy_dir = rig.work.path().join("policies");
    std::fs::create_dir_all(&policy_dir).map_err(|source| ScenarioError::Io {
        path: policy_dir.clone(),
        source,
    })?;
    let planned = fleet(config.devices);
    let ring = canaries(seed, &planned);
    let policies = write_policies(&policy_dir, &ring)?;

    // The fleet, through its proxy.
    let mut sim_config =
        SimulationConfig::new(rig.owner.clone(), planned, rig.work.path().join("devices"));
    sim_config.hub_url = Some(rig.hub.http_url()?);
    sim_config.mqtt_endpoint = Some(
        format!("mqtt://{}", rig.mqtt_proxy.addr())
            .parse::<Endpoint>()
            .map_err(|e| ScenarioError::Simulation(e.to_string()))?,
    );
    sim_config.max_skew = MAX_SKEW;
    sim_config.reboot_time = REBOOT_TIME.to_std().unwrap_or(Duration::from_secs(60));
    sim_config.seed = seed.rng("skews").random();
    sim_config.clock = rig.driven.agent_clock();
    sim_config.backoff = BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(2),
    };
    // Long-lived tokens: renewals would be a fleet-wide reconnect nobody planned.
    sim_config.token_lifetime = Duration::from_secs(7 * 86_400);
    sim_config.renew_before = Duration::from_secs(3600);
    sim_config.silent_power_cuts = config.azure.silent_power_cuts;
    let sim = Simulation::start(sim_config)
        .await
        .map_err(|e| ScenarioError::Simulation(e.to_string()))?;
    let devices: Vec<Device> = sim
        .devices()
        .iter()
        .map(|d| Device {
            id: d.id.clone(),
            zone: d.zone,
        })
        .collect();
    let truth = sim.ground_truth().clone();
    rig.sim = Some(sim);

    // With lagging queries, a device is in query results only once the lag has passed since it
    // appeared (as on Azure, where a fresh registration takes a while to be queryable): let the
    // fleet connect, then let the lag pass before the scheduler's first apply looks for it.
    if !config.azure.query_lag.is_zero() {
        let connected = async {
            while rig.hub.hub().stats().connected_devices < config.devices {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(config.setup_timeout, connected)
            .await
            .map_err(|_| {
                ScenarioError::Timeout(format!(
                    "not all {} devices connected within {:?}",
                    config.devices, config.setup_timeout
                ))
            })?;
        let lag = TimeDelta::from_std(config.azure.query_lag).unwrap_or_default();
        rig.driven
            .set(rig.driven.now() + lag + TimeDelta::seconds(5));
    }

    // The scheduler, through its proxy, with the tap.
    let target = HubTarget::new(rig.owner.clone())
        .with_endpoint(&format!("http://{}", rig.rest_proxy.addr()))
        .map_err(|e| ScenarioError::Scheduler(e.to_string()))?;
    let service = ClientConfig {
        request_timeout: Duration::from_secs(10),
        retry: RetryPolicy {
            max_attempts: 4,
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        ..ClientConfig::default()
    };
    let client = ServiceClient::new(target, service, rig.clock.clone())
        .map_err(|e| ScenarioError::Scheduler(e.to_string()))?;
    let invocations = Arc::new(Mutex::new(Vec::new()));
    let mut run_config =
        RunConfig::new(vec![policy_dir.clone()], rig.work.path().join("scheduler"));
    run_config.tick = config.tick;
    run_config.rollout = RolloutConfig {
        clock_skew: Duration::from_secs(30),
        completion_grace: Duration::from_secs(600),
        retry_initial: Duration::from_secs(10),
        retry_max: Duration::from_secs(60),
        max_attempts: 6,
    };
    let setup = SchedulerSetup {
        tap: Tap {
            inner: client.clone(),
            clock: rig.clock.clone(),
            log: invocations.clone(),
        },
        clock: rig.clock.clone(),
        config: run_config.clone(),
    };
    rig.scheduler = Some(setup.start().await?);

    // Everyone connected with the policy applied before time starts.
    tracing::info!(
        devices = config.devices,
        "fleet started; waiting for every policy to be applied"
    );
    let twins_at_start =
        if config.azure.query_lag.is_zero() && config.azure.connection_state_lag.is_zero() {
            wait_until_applied(&rig.rest, config.devices, config.setup_timeout).await?;
            match rig.rest.query_all("SELECT * FROM devices").await? {
                Ok(items) => items,
                Err(answer) => return Err(ScenarioError::Scheduler(answer.text())),
            }
        } else {
            let ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
            wait_until_applied_fresh(&rig.rest, &ids, config.setup_timeout).await?;
            read_twins(&rig.rest, &ids).await?
        };
    let assignment = assign(&policies, &twins_at_start);
    let faults = plan(seed, &policies, &devices, &assignment);

    // Time runs.
    tracing::info!(faults = faults.len(), "time starts");
    let started = std::time::Instant::now();
    let step = TimeDelta::from_std(config.step * config.speed).unwrap_or(TimeDelta::seconds(3));
    rig.driver = Some({
        let driven = rig.driven.clone();
        let real_step = config.step;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(real_step);
            // Under load the clock slows down rather than leaping: every component keeps up.
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while driven.now() < stop_time() {
                ticker.tick().await;
                driven.advance(step);
            }
        })
    });

    let mut timeline = Vec::new();
    let mut stats = ScenarioStats::default();
    let mut rules: BTreeMap<String, RuleId> = BTreeMap::new();
    let mut outages_open: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let mut outages: Vec<Outage> = Vec::new();
    for planned in &faults {
        while rig.driven.now() < planned.at {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let now = rig.driven.now();
        tracing::info!(at = %now, action = ?planned.action, "fault");
        timeline.push(format!("{} {:?}", now.format("%H:%M:%S"), planned.action));
        match &planned.action {
            FaultAction::SlowSchedulerLink(delay) => rig.rest_proxy.set_fault(Fault::Delay(*delay)),
            FaultAction::HealSchedulerLink => rig.rest_proxy.set_fault(Fault::Pass),
            FaultAction::CutSchedulerLink => {
                rig.rest_proxy.cut_all();
            }
            FaultAction::NetworkBlip(refuse) => {
                rig.mqtt_proxy.cut_all_and_refuse_for(*refuse);
            }
            FaultAction::KillScheduler(down) => {
                if let Some(scheduler) = rig.scheduler.take() {
                    scheduler.kill().await;
                }
                tokio::time::sleep(*down).await;
                rig.scheduler = Some(setup.start().await?);
                stats.scheduler_restarts += 1;
                stats.disruptions.push(("scheduler killed".into(), now));
            }
            FaultAction::RestartHub => {
                rig.hub.restart().await?;
                rig.mqtt_proxy.set_target(rig.hub.mqtt_addr()?);
                rig.rest_proxy.set_target(rig.hub.http_addr()?);
                rig.rest = Rest::new(&rig.hub.http_url()?, rig.owner.clone())?
                    .with_clock(rig.clock.clone());
                stats.hub_restarts += 1;
                stats.disruptions.push(("hub restarted".into(), now));
            }
            FaultAction::DeviceOff { device, blackhole } => {
                let id = device.clone();
                let matches = move |preamble: &[u8]| {
                    crate::mqtt::client_id_of(preamble).as_deref() == Some(id.as_str())
                };
                let action = if *blackhole {
                    RuleAction::Fault(Fault::Drop)
                } else {
                    RuleAction::Cut
                };
                rules.insert(device.clone(), rig.mqtt_proxy.add_rule(matches, action));
                outages_open.insert(device.clone(), now);
            }
            FaultAction::DeviceBack { device } => {
                if let Some(rule) = rules.remove(device) {
                    rig.mqtt_proxy.remove_rule(rule);
                }
                // A blackholed connection is still open: end it so the device reconnects.
                let id = device.clone();
                rig.mqtt_proxy.cut_where(|c| {
                    crate::mqtt::client_id_of(&c.preamble).as_deref() == Some(id.as_str())
                        && c.fault == Some(Fault::Drop)
                });
                if let Some(from) = outages_open.remove(device) {
                    // The device needs a moment to find its way back (reconnect back-off).
                    outages.push(Outage {
                        device: device.clone(),
                        from,
                        to: now + TimeDelta::minutes(2),
                    });
                }
            }
        }
    }
    tracing::info!("every fault injected; waiting for the clock to stop");
    if let Some(driver) = rig.driver.take() {
        let _ = driver.await;
    }
    stats.run_seconds = started.elapsed().as_secs();
    stats.outages = outages.len();

    // The end: stop the scheduler, read what happened.
    tracing::info!("the clock stopped; stopping the scheduler");
    if let Some(scheduler) = rig.scheduler.take() {
        stats.last_scheduler = Some(scheduler.stop().await?);
    }
    let journal = JournalView::load(&run_config.state_dir)
        .map_err(|e| ScenarioError::Scheduler(e.to_string()))?;
    let paused: BTreeSet<(String, DateTime<Utc>)> = journal
        .pauses
        .iter()
        .map(|p| (p.policy.clone(), p.occurrence))
        .collect();
    // Queries answer from the past on a lagging hub (Azure's are eventually consistent): the
    // final report is taken once the lag has passed, as a monitor would see it.
    let lag = config
        .azure
        .query_lag
        .max(config.azure.connection_state_lag);
    if !lag.is_zero() {
        let settled = rig.driven.now() + TimeDelta::from_std(lag).unwrap_or_default();
        rig.driven.set(settled + TimeDelta::seconds(5));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let report = report::compute(
        &client,
        &journal,
        rig.driven.now(),
        Duration::from_secs(86_400),
        None,
    )
    .await
    .map_err(|e| ScenarioError::Scheduler(e.to_string()))?;
    let twins: Vec<TwinView> = match rig.rest.query_all("SELECT * FROM devices").await? {
        Ok(items) => items
            .into_iter()
            .filter_map(|t| TwinView::from_value(t).ok())
            .collect(),
        Err(answer) => return Err(ScenarioError::Scheduler(answer.text())),
    };
    let reboots: Vec<Reboot> = truth.records().iter().map(Reboot::from).collect();
    tracing::info!("report computed");

    let tapped = invocations
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let (invocations, lag) = decision_times(tapped, &journal, step);
    stats.reboots = reboots.len();
    stats.invocations = invocations.len();
    stats.decision_lag_ms = lag.num_milliseconds();
    let facts = Facts {
        policies,
        assignment,
        devices,
        reboots,
        invocations,
        outages,
        paused,
        judged: (judged_from(), judged_to()),
        reboot_time: REBOOT_TIME,
        max_skew: MAX_SKEW,
        // Persist, answer, report, then the power goes: a few steps of the clock at most.
        power_off_lag: TimeDelta::minutes(2),
    };
    let mut violations = facts.check();
    violations.extend(facts.check_twins(&twins));
    violations.extend(facts.check_report(&report));
    Ok(ScenarioOutcome {
        facts,
        twins,
        report,
        violations,
        timeline,
        stats,
    })
}

/// The scheduler's decision instant of each invocation: the journal holds it exactly for the
/// last attempt per (policy, device, occurrence) — the intent is journaled with the rollout's
/// clock before the call — and for earlier attempts the tap's instant (seen a moment later, in
/// the call task) bounds it: the decision lies in `[tap - lag, tap]`, where `lag` is the
/// largest lag measured on the exact ones plus `margin`. Returns the invocations and `lag`.
pub fn decision_times(
    tapped: Vec<Invocation>,
    journal: &JournalView,
    margin: TimeDelta,
) -> (Vec<Invocation>, TimeDelta) {
    let mut last: BTreeMap<(String, String, Option<DateTime<Utc>>), usize> = BTreeMap::new();
    for (n, inv) in tapped.iter().enumerate() {
        last.insert((inv.policy.clone(), inv.device.clone(), inv.occurrence), n);
    }
    let mut out = tapped;
    let mut exact = vec![false; out.len()];
    let mut lag = TimeDelta::zero();
    for entry in &journal.entries {
        let key = (
            entry.policy.clone(),
            entry.device.clone(),
            Some(entry.occurrence),
        );
        if let (Some(&n), Some(decided)) = (last.get(&key), entry.invoked_at) {
            lag = lag.max(out[n].at - decided);
            out[n].at = decided;
            out[n].earliest = decided;
            exact[n] = true;
        }
    }
    let lag = lag + margin;
    for (inv, exact) in out.iter_mut().zip(exact) {
        if !exact {
            inv.earliest = inv.at - lag;
        }
    }
    (out, lag)
}

#[cfg(test)]
mod tests;
