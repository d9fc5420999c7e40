//! Test harness: the real hub in-process on 127.0.0.1:0, simulated agents over plain MQTT, the
//! real scheduler over plain HTTP — one driven clock shared by all three, so a test crosses a DST
//! change or a week of windows in moments.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use casement_agent::backoff::BackoffPolicy;
use casement_agent::clock::DrivenClock;
use casement_agent::simulate::SimulatedReboot;
use casement_agent::simulate::invariants::{Device, Facts, Invocation, Reboot};
use casement_agent::{Simulation, SimulationConfig, simulate};
use casement_client::{ClientConfig, ClientError, HubApi, HubTarget, RetryPolicy, ServiceClient};
use casement_hub::{Hub, HubConfig, RunningHub};
use casement_iothub::rest::{MethodRequest, MethodResponse, Twin, TwinPatch};
use casement_policy::PolicySet;
use casement_scheduler::fleet::TwinView;
use casement_scheduler::metrics::Metrics;
use casement_scheduler::run::{RunConfig, Scheduler};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The simulated fleet of [`Env::weekly`].
pub struct Fleet<'a> {
    /// The one policy.
    pub policy: PolicyFile<'a>,
    /// How many devices.
    pub devices: usize,
    /// Their zones, round-robin.
    pub zones: &'a [Tz],
    /// How long a reboot keeps a device dark.
    pub reboot: Duration,
    /// The largest device clock skew.
    pub max_skew: TimeDelta,
}

impl Default for Fleet<'_> {
    /// Three UTC devices under the default weekly policy, 90 s reboots, no skew.
    fn default() -> Self {
        Self {
            policy: PolicyFile::default(),
            devices: 3,
            zones: &[chrono_tz::UTC],
            reboot: Duration::from_secs(90),
            max_skew: TimeDelta::zero(),
        }
    }
}

/// How long any wait may take before the test fails (never reached when things work).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A UTC instant.
pub fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

pub use casement_tests::policy_file::PolicyFile;

pub struct Env {
    pub hub: RunningHub,
    pub clock: DrivenClock,
    pub dir: tempfile::TempDir,
    pub client: ServiceClient,
    pub policies: PathBuf,
    pub sim: Option<Simulation>,
    /// How long a simulated reboot keeps a device dark (set by [`Env::simulate`]).
    pub reboot_time: Duration,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Env {
    /// A hub in memory, the clock at `start`.
    pub async fn start(start: DateTime<Utc>) -> Self {
        Self::start_with(start, |c| c).await
    }

    /// The same, with the hub configured by `configure`.
    pub async fn start_with(
        start: DateTime<Utc>,
        configure: impl FnOnce(HubConfig) -> HubConfig,
    ) -> Self {
        init_tracing();
        let clock = DrivenClock::new(start);
        let mut config = configure(HubConfig::for_tests());
        config.clock = Arc::new(clock.clone());
        let hub = Hub::start(config).await.expect("hub starts");
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        let client = Self::client_for(&hub, &clock, ClientConfig::default());
        Self {
            hub,
            clock,
            dir,
            client,
            policies,
            sim: None,
            reboot_time: Duration::ZERO,
        }
    }

    /// A service client for the hub's plain HTTP port, dating its tokens by the driven clock.
    pub fn client_for(
        hub: &RunningHub,
        clock: &DrivenClock,
        config: ClientConfig,
    ) -> ServiceClient {
        let target = HubTarget::new(hub.service_connection_string().parse().unwrap())
            .with_endpoint(&hub.http_url().unwrap())
            .unwrap();
        ServiceClient::new(target, config, Arc::new(clock.manual())).unwrap()
    }

    /// A client with fast, patient retries (for a throttling hub).
    pub fn patient_client(&self) -> ServiceClient {
        Self::client_for(
            &self.hub,
            &self.clock,
            ClientConfig {
                retry: RetryPolicy {
                    max_attempts: 30,
                    initial: Duration::from_millis(50),
                    max: Duration::from_secs(2),
                },
                ..ClientConfig::default()
            },
        )
    }

    /// The set-up most scheduler tests share: a hub (configured by `hub`) with the clock at
    /// Saturday 2026-03-28 noon UTC — the day before the default policy's Sunday 02:00 window,
    /// and the day Europe springs forward — `fleet.policy` written as `weekly.toml`, and
    /// `fleet.devices` simulated devices in `fleet.zones`, connected. Returns the env and the
    /// policy's window.
    pub async fn weekly(
        fleet: Fleet<'_>,
        hub: impl FnOnce(HubConfig) -> HubConfig,
    ) -> (Self, casement_policy::WindowSpec) {
        let mut env = Self::start_with(utc(2026, 3, 28, 12, 0, 0), hub).await;
        env.write_policy("weekly.toml", &fleet.policy);
        env.simulate(fleet.devices, fleet.zones, fleet.reboot, fleet.max_skew)
            .await;
        let spec = env
            .load_policies()
            .get(fleet.policy.name)
            .expect("the policy just written")
            .window()
            .clone();
        (env, spec)
    }

    pub fn write_policy(&self, file: &str, policy: &PolicyFile<'_>) {
        std::fs::write(self.policies.join(file), policy.text()).unwrap();
    }

    pub fn load_policies(&self) -> PolicySet {
        casement_policy::load([&self.policies]).unwrap()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("scheduler")
    }

    pub fn run_config(&self) -> RunConfig {
        let mut c = RunConfig::new(vec![self.policies.clone()], self.state_dir());
        c.tick = Duration::from_millis(100);
        c
    }

    /// A scheduler on `hub` (the real client or a wrapper), applying the policy files.
    pub async fn scheduler<H: HubApi + Clone>(&self, hub: H) -> Scheduler<H> {
        self.scheduler_with(hub, self.run_config()).await
    }

    pub async fn scheduler_with<H: HubApi + Clone>(
        &self,
        hub: H,
        config: RunConfig,
    ) -> Scheduler<H> {
        // A scheduler dropped a moment ago may still be releasing the journal's lock.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Scheduler::start(
                hub.clone(),
                Arc::new(self.clock.manual()),
                config.clone(),
                Metrics::new(),
            )
            .await
            {
                Ok(s) => return s,
                Err(casement_scheduler::run::RunError::Journal(
                    casement_scheduler::journal::JournalError::Locked { .. },
                )) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("scheduler starts: {e}"),
            }
        }
    }

    /// Registers and starts `n` simulated devices (`sim-0000`…), zones round-robin, tagged
    /// `role=gateway`; waits until every one is connected.
    pub async fn simulate(
        &mut self,
        n: usize,
        zones: &[Tz],
        reboot_time: Duration,
        max_skew: TimeDelta,
    ) {
        self.simulate_with(n, zones, reboot_time, max_skew, |_| {})
            .await;
    }

    /// As [`simulate`](Self::simulate), with `configure` adjusting the simulation's config
    /// last (e.g. its agents' `report_jitter`).
    pub async fn simulate_with(
        &mut self,
        n: usize,
        zones: &[Tz],
        reboot_time: Duration,
        max_skew: TimeDelta,
        configure: impl FnOnce(&mut SimulationConfig),
    ) {
        let devices = simulate::numbered(simulate::DEFAULT_PREFIX, n, zones)
            .into_iter()
            .map(|d| d.with_tag("role", "gateway"))
            .collect();
        let mut config = SimulationConfig::new(
            self.hub.service_connection_string().parse().unwrap(),
            devices,
            self.dir.path().join("sim"),
        );
        config.hub_url = Some(self.hub.http_url().unwrap());
        config.mqtt_endpoint = Some(
            format!("mqtt://{}", self.hub.mqtt_addr().unwrap())
                .parse()
                .unwrap(),
        );
        config.reboot_time = reboot_time;
        config.max_skew = max_skew;
        config.seed = 7;
        // One log across simulator restarts (the file is re-read by a new simulation).
        config.ground_truth = Some(self.dir.path().join("ground-truth.jsonl"));
        config.clock = self.clock.agent_clock();
        config.backoff = BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        };
        // The clock jumps by days: tokens must outlive the jumps.
        config.token_lifetime = Duration::from_secs(60 * 86_400);
        config.renew_before = Duration::from_secs(86_400);
        self.reboot_time = reboot_time;
        configure(&mut config);
        let sim = Simulation::start(config).await.expect("simulation starts");
        let ids: Vec<String> = sim.devices().iter().map(|d| d.id.clone()).collect();
        self.sim = Some(sim);
        self.wait_for("every device connected", |views| {
            ids.iter().all(|id| {
                views
                    .iter()
                    .any(|v| &v.device_id == id && v.connected == Some(true))
            })
        })
        .await;
    }

    pub fn sim(&self) -> &Simulation {
        self.sim.as_ref().expect("simulation running")
    }

    pub fn reboots(&self) -> Vec<SimulatedReboot> {
        self.sim().ground_truth().records()
    }

    /// Every twin.
    pub async fn views(&self) -> Vec<TwinView> {
        self.client
            .query_all("SELECT * FROM devices")
            .await
            .unwrap()
            .into_iter()
            .map(|v| TwinView::from_value(v).unwrap())
            .collect()
    }

    pub async fn view(&self, id: &str) -> TwinView {
        TwinView::from_twin(&self.client.twin(id).await.unwrap())
    }

    /// Polls the twins until `pred` holds (fails after [`PATIENCE`]).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[TwinView]) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let views = self.views().await;
            if pred(&views) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let summary: Vec<String> = views
                    .iter()
                    .map(|v| {
                        format!(
                            "{} connected={:?} reported={:?} reboot={:?}",
                            v.device_id,
                            v.connected,
                            v.reported(),
                            v.reboot()
                        )
                    })
                    .collect();
                panic!("timed out waiting for {what}:\n{}", summary.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `check` until it returns true.
    pub async fn eventually<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every simulated device reports `policy` applied.
    pub async fn wait_applied(&self, policy: &str) {
        let ids: Vec<String> = self.sim().devices().iter().map(|d| d.id.clone()).collect();
        self.wait_for("every device applied the policy", |views| {
            ids.iter().all(|id| {
                views.iter().any(|v| {
                    &v.device_id == id
                        && v.reported().is_some_and(|r| {
                            r.policy == policy
                                && r.status == casement_policy::MaintenanceStatus::Applied
                                && Some(r.revision.as_str())
                                    == v.desired_policy().map(|(_, rev)| rev)
                        })
                })
            })
        })
        .await;
    }

    /// Waits until every simulated device that is up reports the window state its own clock
    /// gives at the current instant, and every device that rebooted more than `reboot_time` ago
    /// reports the reboot completed.
    pub async fn settle_devices(&self, spec: &casement_policy::WindowSpec, reboot_time: Duration) {
        let now = self.clock.now();
        let reboot_time = TimeDelta::from_std(reboot_time).unwrap();
        let records = self.reboots();
        let down: BTreeSet<String> = records
            .iter()
            .filter(|r| r.at + reboot_time > now)
            .map(|r| r.device.clone())
            .collect();
        let last: BTreeMap<String, &SimulatedReboot> =
            records.iter().map(|r| (r.device.clone(), r)).collect();
        let devices = self.sim().devices().to_vec();
        self.wait_for("devices settled", |views| {
            devices.iter().filter(|d| !down.contains(&d.id)).all(|d| {
                let Some(v) = views.iter().find(|v| v.device_id == d.id) else {
                    return false;
                };
                let expected_open = spec.window_at(d.zone, now + d.skew).is_some_and(|s| s.open);
                let window_ok = v
                    .reported()
                    .and_then(|r| r.window)
                    .is_some_and(|w| w.open == expected_open);
                let reboot_ok = match last.get(&d.id) {
                    None => true,
                    Some(r) => v.reboot().is_some_and(|rb| {
                        rb.status == casement_policy::RebootStatus::Completed
                            && rb.occurrence == r.occurrence
                    }),
                };
                v.connected == Some(true) && window_ok && reboot_ok
            })
        })
        .await;
    }

    /// Waits until the ground truth holds `n` reboots.
    pub async fn wait_reboots(&self, n: usize) {
        self.eventually(&format!("{n} reboots"), || async {
            self.reboots().len() >= n
        })
        .await;
    }
}

/// Drives a scheduler until `until`: a pass at every step, devices settled before the next.
/// Steps of `step` while a device is in flight or still to reboot in an open window, else a jump
/// to just after the next window opens in any zone.
pub async fn drive<H: HubApi + Clone>(
    env: &Env,
    scheduler: &mut Scheduler<H>,
    spec: &casement_policy::WindowSpec,
    until: DateTime<Utc>,
    step: TimeDelta,
    reboot_time: Duration,
) {
    let devices = env.sim().devices().to_vec();
    loop {
        env.settle_devices(spec, reboot_time).await;
        let reboots_before = env.reboots().len();
        let accepted_before = scheduler.stats().accepted;
        scheduler.pass().await.unwrap();
        scheduler.settle().await.unwrap();
        // Devices that accepted go down before the clock moves on.
        let accepted = usize::try_from(scheduler.stats().accepted - accepted_before).unwrap();
        env.wait_reboots(reboots_before + accepted).await;
        let now = env.clock.now();
        if now >= until {
            return;
        }
        let records = env.reboots();
        let in_flight = scheduler.policies().iter().any(|p| {
            scheduler
                .rollout(p.name())
                .is_some_and(|r| r.in_flight_count() > 0)
        });
        let to_reboot = devices.iter().any(|d| {
            spec.window_at(d.zone, now).is_some_and(|s| {
                s.open
                    && s.window.closes_at - now > TimeDelta::minutes(10)
                    && !records
                        .iter()
                        .any(|r| r.device == d.id && r.occurrence == Some(s.window.occurrence))
            })
        });
        let next = if in_flight || to_reboot {
            now + step
        } else {
            devices
                .iter()
                .filter_map(|d| {
                    let s = spec.window_at(d.zone, now)?;
                    if s.open {
                        spec.window_at(d.zone, s.window.closes_at)
                            .map(|n| n.window.opens_at)
                    } else {
                        Some(s.window.opens_at)
                    }
                })
                .min()
                .map_or(until, |t| t + TimeDelta::seconds(10))
                .max(now + step)
        };
        env.clock.set(next.min(until));
    }
}

/// Where to inject a fault into the scheduler's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crash {
    /// The call never reaches the hub and never returns (killed after journaling).
    BeforeCall,
    /// The call reaches the hub, the device reboots, and the answer is never seen (killed before
    /// recording).
    AfterCall,
}

/// The real client with faults injected at the [`HubApi`] seam.
#[derive(Clone)]
pub struct Faulty {
    pub inner: ServiceClient,
    /// Devices whose `reboot` is answered 409 without reaching them.
    pub refuse: Arc<BTreeSet<String>>,
    /// Crash at this point on the n-th invocation (1-based).
    pub crash: Option<(Crash, usize)>,
    pub calls: Arc<Mutex<Vec<String>>>,
    pub crashed: Arc<Notify>,
}

impl Faulty {
    pub fn new(inner: ServiceClient) -> Self {
        Self {
            inner,
            refuse: Arc::new(BTreeSet::new()),
            crash: None,
            calls: Arc::new(Mutex::new(Vec::new())),
            crashed: Arc::new(Notify::new()),
        }
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl HubApi for Faulty {
    fn query(&self, sql: &str) -> impl Future<Output = Result<Vec<Value>, ClientError>> + Send {
        self.inner.query_all(sql)
    }
    fn get_twin(&self, device: &str) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        self.inner.twin(device)
    }
    fn patch_twin(
        &self,
        device: &str,
        patch: &TwinPatch,
        etag: Option<&str>,
    ) -> impl Future<Output = Result<Twin, ClientError>> + Send {
        self.inner.patch(device, patch, etag)
    }
    fn invoke_method(
        &self,
        device: &str,
        request: &MethodRequest,
    ) -> impl Future<Output = Result<MethodResponse, ClientError>> + Send {
        let this = self.clone();
        let device = device.to_owned();
        let request = request.clone();
        async move {
            let n = {
                let mut calls = this.calls.lock().unwrap();
                calls.push(device.clone());
                calls.len()
            };
            if this.refuse.contains(&device) {
                return Ok(MethodResponse {
                    status: 409,
                    payload: json!({"accepted": false, "reason": "injected-refusal"}),
                });
            }
            match this.crash {
                Some((Crash::BeforeCall, at)) if at == n => {
                    this.crashed.notify_one();
                    std::future::pending().await
                }
                Some((Crash::AfterCall, at)) if at == n => {
                    let _ = this.inner.invoke(&device, &request).await;
                    this.crashed.notify_one();
                    std::future::pending().await
                }
                _ => this.inner.invoke(&device, &request).await,
            }
        }
    }
}

/// The facts of this env's simulated run for DESIGN.md's invariant checker
/// ([`casement_agent::simulate::invariants`], the one the demo and the scenario use too): every
/// simulated device carries `policy`, the reboots are the simulation's ground truth, and the
/// per-minute limit is checked on the reboots (the invocations are not tapped here; a reboot
/// follows its invocation within a tick).
impl Env {
    pub fn facts(&self, policy: &str, max_skew: TimeDelta) -> Facts {
        let policies: Vec<casement_policy::Policy> = self.load_policies().iter().cloned().collect();
        let devices: Vec<Device> = self
            .sim()
            .devices()
            .iter()
            .map(|d| Device {
                id: d.id.clone(),
                zone: d.zone,
            })
            .collect();
        let assignment = devices
            .iter()
            .map(|d| (d.id.clone(), policy.to_owned()))
            .collect();
        let reboot_time = TimeDelta::from_std(self.reboot_time).unwrap();
        let mut facts = Facts::new(policies, assignment, devices, reboot_time);
        facts.reboots = self.reboots().iter().map(Reboot::from).collect();
        facts.invocations = facts
            .reboots
            .iter()
            .map(|r| Invocation {
                at: r.at,
                earliest: r.at,
                device: r.device.clone(),
                policy: policy.to_owned(),
                occurrence: r.occurrence,
            })
            .collect();
        facts.max_skew = max_skew;
        // The driven clock moves in steps: the power goes at most a step or two after the gate.
        facts.power_off_lag = TimeDelta::minutes(2);
        facts
    }

    /// Asserts invariants 1–3 over the run so far: every reboot for `policy`, inside its window
    /// (by the device's clock, and by the reference clock within `max_skew`), once per device
    /// and occurrence, never more than `max_concurrent` dark at once or `max_per_minute` in a
    /// minute.
    pub fn check_invariants(&self, policy: &str, max_skew: TimeDelta) {
        let facts = self.facts(policy, max_skew);
        let mut violations = facts.check_windows();
        violations.extend(facts.check_once_per_occurrence());
        violations.extend(facts.check_concurrency());
        violations.extend(facts.check_rate());
        assert!(
            violations.is_empty(),
            "{}",
            violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
