//! `casement demo`: the whole system on one machine, in real time, in a few minutes.
//!
//! [`run`] starts an embedded hub ([`casement_hub`]) in a temporary directory on loopback ports,
//! registers a tagged fleet of simulated devices across zones on several continents and starts
//! them ([`casement_agent::Simulation`]: the real agent per device, each with its own MQTT
//! connection), applies the demo policies ([`casement_scheduler::apply`]) — windows every two minutes that
//! let a reboot start within the first minute — and runs the scheduler ([`casement_scheduler::run`]) with a
//! one-second tick. While it runs it shows, per policy, the devices in their window, rebooting,
//! completed, refused and failed; it stops when every device has rebooted inside its latest
//! window (or at the deadline), prints the compliance report ([`casement_scheduler::report`]) next to the
//! devices' own log of reboots ([`truth`]), and keeps everything running for the user to query
//! when asked to.
//!
//! # Layout
//! - this module: [`DemoConfig`], [`run`], [`DemoOutcome`], [`DemoError`] — the orchestration.
//! - [`fleet`]: the planned fleet (ids, zones, tags), pure.
//! - [`policies`]: the built-in `policies/demo/*.toml`.
//! - [`progress`]: per-policy progress from reports ([`progress::snapshot`], pure) and its
//!   display (indicatif bars on a terminal, plain lines otherwise).
//! - [`truth`]: the invariants checked against the simulated devices' ground truth, pure.

pub mod fleet;
pub mod policies;
pub mod progress;
pub mod truth;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::{Duration, Instant};

use casement_agent::simulate::SimulateError;
use casement_agent::{Simulation, SimulationConfig};
use casement_hub::{Hub, HubConfig, RunningHub, Storage};
use casement_policy::{Clock as _, Diagnostic, PolicySet, format_duration};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use tokio::task::JoinHandle;

use casement_client::{ClientConfig, HubTarget, ServiceClient, TargetError};
use casement_scheduler::apply::{self, ApplyError, ApplyOptions};
use casement_scheduler::journal::JournalView;
use casement_scheduler::metrics::Metrics;
use casement_scheduler::report::{self, Format, Report};
use casement_scheduler::rollout::RolloutConfig;
use casement_scheduler::run::{RunConfig, RunError, RunStats, Scheduler, SignalSender, Signals};

pub use fleet::Site;
pub use progress::ProgressMode;
pub use truth::Truth;

/// How far back the demo's reports look for windows (the demo's windows come every minute or
/// two; an hour covers any run).
const REPORT_LOOKBACK: Duration = Duration::from_secs(3600);
/// How long the scheduler may take to finish the calls under way when the demo stops it.
const SCHEDULER_STOP: Duration = Duration::from_secs(30);
/// How long the devices, and then the hub, may take to stop.
const COMPONENT_STOP: Duration = Duration::from_secs(15);

/// Settings of a demo run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Simulated devices.
    pub devices: usize,
    /// Give up after this long if the fleet is not compliant yet.
    pub duration: Duration,
    /// After the report, keep the hub, the devices and the scheduler running until `shutdown`.
    pub keep_running: bool,
    /// How long a simulated reboot keeps a device dark.
    pub reboot_time: Duration,
    /// Simulated device clocks are off by up to this much either way.
    pub max_skew: Duration,
    /// A directory of policies to use instead of the built-in demo policies.
    pub policies: Option<PathBuf>,
    /// The zones the fleet lives in (round-robin).
    pub sites: Vec<Site>,
    /// The scheduler's tick.
    pub tick: Duration,
    /// The scheduler's clock-skew allowance at both ends of a window.
    pub clock_skew: Duration,
    /// How often progress is recomputed (a twin query over the fleet).
    pub refresh: Duration,
    /// Bars or lines.
    pub progress: ProgressMode,
    /// Where the hub, journal and device state go (must be empty or absent); `None`: a
    /// temporary directory removed at the end.
    pub work_dir: Option<PathBuf>,
    /// The seed of the simulated clock skews.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            devices: 200,
            duration: Duration::from_secs(180),
            keep_running: false,
            reboot_time: Duration::from_secs(3),
            max_skew: Duration::from_secs(1),
            policies: None,
            sites: fleet::default_sites(),
            tick: Duration::from_secs(1),
            clock_skew: RolloutConfig::default().clock_skew,
            refresh: Duration::from_secs(1),
            progress: ProgressMode::Lines,
            work_dir: None,
            seed: 1,
        }
    }
}

/// Why the demo could not run.
///
/// Errors of other layers are boxed (they are large, and rare) and kept as the source, so
/// `{:#}` prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Nothing to simulate.
    #[error("the demo needs at least one device and one zone")]
    Empty,
    /// The work directory is not empty.
    #[error("{0} is not empty; the demo needs a fresh directory")]
    NotEmpty(PathBuf),
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The policy files are invalid.
    #[error("{} problem(s) in the policy files", .0.len())]
    Policies(Vec<Diagnostic>),
    /// The embedded hub did not start.
    #[error("the embedded hub could not start")]
    Hub(#[source] Box<casement_hub::HubError>),
    /// The simulated fleet did not start.
    #[error("the simulated fleet could not start")]
    Simulate(#[source] Box<SimulateError>),
    /// The devices did not all connect.
    #[error("only {connected} of {expected} simulated devices connected within {waited:?}")]
    Connect {
        /// Connected.
        connected: usize,
        /// Expected.
        expected: usize,
        /// How long the demo waited.
        waited: Duration,
    },
    /// The service client could not be set up.
    #[error("cannot talk to the embedded hub")]
    Target(#[source] Box<TargetError>),
    /// Applying the policies failed.
    #[error("applying the demo policies failed")]
    Apply(#[source] Box<ApplyError>),
    /// The scheduler failed.
    #[error("the scheduler stopped")]
    Scheduler(#[source] Box<RunError>),
    /// The scheduler's task panicked or was cancelled.
    #[error("the scheduler task failed: {0}")]
    SchedulerTask(String),
    /// The final report could not be computed.
    #[error("the compliance report failed")]
    Report(#[source] Box<casement_client::ClientError>),
    /// Output could not be written.
    #[error("cannot write the demo's output")]
    Output(#[from] std::io::Error),
    /// The fleet was not running within the demo's duration.
    #[error("the fleet was not running within --duration {}; see the log", format_duration(*.0))]
    Setup(Duration),
    /// Stopped by the user before the fleet was running.
    #[error("interrupted")]
    Interrupted,
}

impl From<SimulateError> for DemoError {
    fn from(e: SimulateError) -> Self {
        DemoError::Simulate(Box::new(e))
    }
}

impl From<TargetError> for DemoError {
    fn from(e: TargetError) -> Self {
        DemoError::Target(Box::new(e))
    }
}

impl From<ApplyError> for DemoError {
    fn from(e: ApplyError) -> Self {
        DemoError::Apply(Box::new(e))
    }
}

impl From<RunError> for DemoError {
    fn from(e: RunError) -> Self {
        DemoError::Scheduler(Box::new(e))
    }
}

/// How the watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every device rebooted inside its latest window.
    Compliant,
    /// The deadline came first.
    TimedOut,
    /// The user stopped it.
    Interrupted,
}

/// What a demo run did.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// How it ended.
    pub ending: Ending,
    /// The final compliance report.
    pub report: Report,
    /// The invariants, checked against the devices' own log of reboots.
    pub truth: Truth,
    /// What the scheduler did (`None` when it was still running, with `keep_running`).
    pub stats: Option<RunStats>,
    /// Wall time from start to the report.
    pub elapsed: Duration,
}

impl DemoOutcome {
    /// Whether the fleet is compliant: every targeted device rebooted inside its latest window,
    /// and the devices' own log shows no broken invariant.
    pub fn compliant(&self) -> bool {
        let t = &self.report.total;
        self.ending == Ending::Compliant
            && t.targeted > 0
            && t.compliant == t.targeted
            && self.truth.holds()
    }
}

/// The work directory: a temporary one (removed on drop) or the one given.
enum WorkDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl WorkDir {
    fn new(given: Option<&Path>) -> Result<Self, DemoError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DemoError::Io { path, source }
        };
        match given {
            None => tempfile::Builder::new()
                .prefix("casement-demo-")
                .tempdir()
                .map(WorkDir::Temp)
                .map_err(io(&std::env::temp_dir())),
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
                if std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
                    return Err(DemoError::NotEmpty(dir.to_owned()));
                }
                Ok(WorkDir::Given(dir.to_owned()))
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            WorkDir::Temp(t) => t.path(),
            WorkDir::Given(p) => p,
        }
    }
}

/// The embedded hub: plain MQTT and HTTP on loopback, any free port, data in `dir`.
fn hub_config(dir: PathBuf) -> HubConfig {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    HubConfig {
        mqtts: None,
        mqtt: Some(any),
        https: None,
        http: Some(any),
        storage: Storage::Dir(dir),
        ..HubConfig::default()
    }
}

/// Runs the demo, writing the story to `out`: until every device has rebooted inside a window,
/// `config.duration` has passed, or `shutdown` completes — and then, with `keep_running`,
/// until `shutdown` completes.
///
/// # Errors
/// [`DemoError`] when something could not start or the scheduler failed; a fleet that is not
/// compliant is an [`Ok`] outcome (see [`DemoOutcome::compliant`]).
pub async fn run(
    config: &DemoConfig,
    out: &mut dyn Write,
    shutdown: impl Future<Output = ()>,
) -> Result<DemoOutcome, DemoError> {
    if config.devices == 0 || config.sites.is_empty() {
        return Err(DemoError::Empty);
    }
    let mut shutdown = pin!(shutdown);
    let work = WorkDir::new(config.work_dir.as_deref())?;
    let root = work.path().to_owned();
    let policy_dir = match &config.policies {
        Some(dir) => dir.clone(),
        None => {
            let dir = root.join("policies");
            policies::write_builtin(&dir).map_err(|source| DemoError::Io {
                path: dir.clone(),
                source,
            })?;
            dir
        }
    };
    let policies = casement_policy::load([&policy_dir]).map_err(DemoError::Policies)?;
    let plan = fleet::plan(config.devices, &config.sites);
    let mut display = progress::Display::new(config.progress, out);
    let hub = Hub::start(hub_config(root.join("hub")))
        .await
        .map_err(|e| DemoError::Hub(Box::new(e)))?;
    let mut session = Session {
        config,
        policies,
        policy_dir,
        plan,
        assignment: BTreeMap::new(),
        root,
        started: Instant::now(),
        hub,
        sim: None,
        scheduler: None,
        metrics: Metrics::new(),
    };
    let result = session.drive(&mut display, shutdown.as_mut()).await;
    display.finish();
    let stats = session.stop().await;
    drop(work);
    let mut outcome = result?;
    if outcome.stats.is_none() {
        outcome.stats = stats;
    }
    Ok(outcome)
}

/// The scheduler running as a task.
struct SchedulerTask {
    handle: JoinHandle<Result<RunStats, RunError>>,
    signals: SignalSender,
}

impl SchedulerTask {
    /// Stops it gracefully (the calls under way are awaited); after [`SCHEDULER_STOP`] tells it
    /// to stop at once, and after as long again aborts it.
    async fn stop(mut self) -> Result<RunStats, DemoError> {
        self.signals.stop();
        let joined = match tokio::time::timeout(SCHEDULER_STOP, &mut self.handle).await {
            Ok(joined) => joined,
            Err(_) => {
                tracing::warn!("the scheduler did not stop in time; abandoning its calls");
                self.signals.stop();
                match tokio::time::timeout(SCHEDULER_STOP, &mut self.handle).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        self.handle.abort();
                        return Err(DemoError::SchedulerTask(
                            "it did not stop when told twice".into(),
                        ));
                    }
                }
            }
        };
        match joined {
            Ok(result) => Ok(result?),
            Err(e) => Err(DemoError::SchedulerTask(e.to_string())),
        }
    }
}

/// Everything a demo run has started.
struct Session<'c> {
    config: &'c DemoConfig,
    policies: PolicySet,
    policy_dir: PathBuf,
    plan: Vec<fleet::PlannedDevice>,
    /// The policy `casement apply` gave each device (filled in when the policies are applied).
    assignment: BTreeMap<String, String>,
    root: PathBuf,
    started: Instant,
    hub: RunningHub,
    sim: Option<Simulation>,
    scheduler: Option<SchedulerTask>,
    metrics: Arc<Metrics>,
}

impl Session<'_> {
    fn state_dir(&self) -> PathBuf {
        self.root.join("scheduler")
    }

    async fn drive(
        &mut self,
        display: &mut progress::Display<'_>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<DemoOutcome, DemoError> {
        let config = self.config;
        let zones: Vec<&str> = config.sites.iter().map(|s| s.zone.name()).collect();
        display.say(&format!(
            "casement demo: a local IoT hub, {} simulated devices in {} zones, {} policies and the scheduler — in real time",
            config.devices,
            zones.len(),
            self.policies.len()
        ))?;
        display.say(&format!(
            "hub        casement hub on mqtt://{} and http://{} (data in {})",
            self.hub
                .mqtt_addr()
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
            self.hub
                .http_addr()
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
            self.root.join("hub").display()
        ))?;

        let deadline = tokio::time::Instant::from_std(self.started + config.duration);
        let client =
            match tokio::time::timeout_at(deadline, self.setup(display, shutdown.as_mut())).await {
                Ok(client) => client?,
                Err(_) => return Err(DemoError::Setup(config.duration)),
            };

        let (ending, report) = self.watch(&client, display, shutdown.as_mut()).await?;
        display.finish();

        let mut stats = None;
        if !config.keep_running
            && let Some(task) = self.scheduler.take()
        {
            stats = Some(task.stop().await?);
        }
        // The report that showed every device compliant is the one to print; otherwise a fresh
        // one, from the final journal when the scheduler has stopped.
        let report = if ending == Ending::Compliant {
            report
        } else {
            self.report(&client, self.scheduler.is_some())
                .await
                .map_err(|e| DemoError::Report(Box::new(e)))?
        };
        let truth = self.truth();
        let elapsed = self.started.elapsed();
        self.tell_ending(display, ending, &report, &truth, stats.as_ref(), elapsed)?;
        let outcome = DemoOutcome {
            ending,
            report,
            truth,
            stats,
            elapsed,
        };
        if config.keep_running && ending != Ending::Interrupted {
            display.print(&self.keep_running_notes())?;
            shutdown.as_mut().await;
            display.print("\ncasement demo: stopping the scheduler, the devices and the hub\n")?;
        }
        Ok(outcome)
    }

    /// Registers and starts the fleet, applies the policies and starts the scheduler.
    async fn setup(
        &mut self,
        display: &mut progress::Display<'_>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<ServiceClient, DemoError> {
        let config = self.config;
        let zones: Vec<&str> = config.sites.iter().map(|s| s.zone.name()).collect();
        // The fleet: the simulator registers it (in bulk, with its tags) and starts it.
        display.say(&format!(
            "fleet      registering {} devices and starting their agents",
            self.plan.len()
        ))?;
        let sim = Simulation::start(self.simulation_config()?).await?;
        self.sim = Some(sim);
        let counts = fleet::counts(&self.plan);
        display.say(&format!(
            "fleet      {} gateways and {} POS terminals ({} of them in the canary ring), tagged role/env/region, in {}",
            counts.gateways,
            counts.pos,
            counts.canaries,
            zones.join(", ")
        ))?;
        display.say(&format!(
            "           each device runs the real agent over its own MQTT connection; a reboot keeps it dark for {}",
            format_duration(config.reboot_time)
        ))?;
        self.wait_connected(display, shutdown.as_mut()).await?;

        // The policies, written into the twins.
        let client = self.client()?;
        let plan = apply::build_plan(&client, &self.policies).await?;
        self.assignment = plan
            .devices
            .iter()
            .filter_map(|d| Some((d.device.clone(), d.winner.clone()?)))
            .collect();
        let summary = apply::execute(
            &client,
            &self.policies,
            &plan,
            &ApplyOptions::default(),
            &(),
        )
        .await;
        let wins: Vec<String> = plan
            .policies
            .iter()
            .map(|p| format!("{} {}", p.name, p.wins))
            .collect();
        let overlaps = plan.overlaps().count();
        display.say(&format!(
            "apply      desired.maintenance written to {} twins ({}){}",
            summary.changed,
            wins.join(", "),
            match overlaps {
                0 => String::new(),
                1 => "; 1 device matched two policies and the higher priority won".to_owned(),
                n => format!("; {n} devices matched two policies and the higher priority won"),
            }
        ))?;
        for failure in &summary.failed {
            display.say(&format!(
                "           could not write {}: {}",
                failure.device, failure.error
            ))?;
        }
        for note in self.capacity_notes(&plan) {
            display.say(&format!("note       {note}"))?;
        }

        // The scheduler.
        let mut run_config = RunConfig::new(vec![self.policy_dir.clone()], self.state_dir());
        run_config.tick = config.tick;
        run_config.rollout = RolloutConfig {
            clock_skew: config.clock_skew,
            completion_grace: Duration::from_secs(30),
            ..RolloutConfig::default()
        };
        let clock = Arc::new(casement_policy::SystemClock);
        let scheduler =
            Scheduler::start(client.clone(), clock, run_config, self.metrics.clone()).await?;
        let (signals, receivers) = Signals::manual();
        self.scheduler = Some(SchedulerTask {
            handle: tokio::spawn(scheduler.run(receivers)),
            signals,
        });
        display.say(&format!(
            "scheduler  every {}: devices that report their window open — and that casement's own window math agrees have {} or more left — get the reboot method, within each policy's max_concurrent and max_per_minute; every call is journaled first",
            format_duration(config.tick),
            self.policies
                .iter()
                .map(|p| format_duration(p.reboot().expected_duration + config.clock_skew))
                .min()
                .unwrap_or_default()
        ))?;
        Ok(client)
    }

    fn simulation_config(&self) -> Result<SimulationConfig, DemoError> {
        let config = self.config;
        let mut sim = SimulationConfig::new(
            self.connection()?,
            self.plan
                .iter()
                .map(fleet::PlannedDevice::simulated)
                .collect(),
            self.root.join("devices"),
        );
        sim.hub_url = self.hub.http_url();
        sim.mqtt_endpoint = match self.hub.mqtt_addr() {
            Some(addr) => format!("mqtt://{addr}").parse().ok(),
            None => None,
        };
        sim.max_skew = TimeDelta::from_std(config.max_skew).unwrap_or(TimeDelta::zero());
        sim.reboot_time = config.reboot_time;
        sim.ground_truth = Some(self.root.join("reboots.jsonl"));
        sim.seed = config.seed;
        Ok(sim)
    }

    fn connection(
        &self,
    ) -> Result<casement_iothub::connection_string::ServiceConnectionString, DemoError> {
        self.hub
            .service_connection_string()
            .parse()
            .map_err(|source| {
                DemoError::from(TargetError::ConnectionString {
                    from: " of the embedded hub".to_owned(),
                    source,
                })
            })
    }

    fn client(&self) -> Result<ServiceClient, DemoError> {
        let url = self.hub.http_url().unwrap_or_default();
        let target = HubTarget::new(self.connection()?).with_endpoint(&url)?;
        Ok(ServiceClient::new(
            target,
            ClientConfig::default(),
            Arc::new(casement_policy::SystemClock),
        )?)
    }

    async fn wait_connected(
        &mut self,
        display: &mut progress::Display<'_>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), DemoError> {
        let expected = self.plan.len();
        let patience = Duration::from_secs(30) + Duration::from_millis(20) * expected as u32;
        let since = Instant::now();
        loop {
            let connected = self.hub.stats().connected_devices;
            display.waiting("connecting devices", connected as u64, expected as u64);
            if connected >= expected {
                break;
            }
            if since.elapsed() > patience {
                return Err(DemoError::Connect {
                    connected,
                    expected,
                    waited: patience,
                });
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = shutdown.as_mut() => return Err(DemoError::Interrupted),
            }
        }
        display.done_waiting();
        display.say(&format!(
            "fleet      all {expected} devices connected in {:.1}s",
            since.elapsed().as_secs_f64()
        ))?;
        Ok(())
    }

    /// Notes for policies whose wave cannot fit in one window at this fleet size.
    fn capacity_notes(&self, plan: &apply::Plan) -> Vec<String> {
        let mut notes = Vec::new();
        for p in &plan.policies {
            let Some(policy) = self.policies.get(&p.name) else {
                continue;
            };
            let limit = policy.rollout().max_concurrent.max(1) as usize;
            let rounds = p.wins.div_ceil(limit) as u32;
            // A reboot round: dark, reconnect and report, seen at the next tick.
            let round = self.config.reboot_time + self.config.tick + Duration::from_secs(1);
            let wave = round * rounds;
            let usable = policy
                .window()
                .duration()
                .saturating_sub(policy.reboot().expected_duration)
                .saturating_sub(self.config.clock_skew * 2);
            if wave > usable {
                notes.push(format!(
                    "{}: {} devices at {} at a time take about {} to reboot, longer than the {} of each window they can use; some will wait for a later window",
                    p.name,
                    p.wins,
                    limit,
                    format_duration(wave),
                    format_duration(usable)
                ));
            }
        }
        notes
    }

    /// The report as the demo sees it while the scheduler runs (its journal snapshot) or
    /// after (its journal).
    async fn report(
        &self,
        client: &ServiceClient,
        scheduler_running: bool,
    ) -> Result<Report, casement_client::ClientError> {
        let state = self.state_dir();
        let journal = if scheduler_running {
            JournalView::read_snapshot(&state)
        } else {
            JournalView::load(&state)
        }
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the journal; reporting from the twins alone");
            JournalView::default()
        });
        let now = casement_policy::SystemClock.now();
        report::compute(client, &journal, now, REPORT_LOOKBACK, None).await
    }

    /// Devices powered off right now, per policy, from the ground truth.
    fn rebooting(&self, now: DateTime<Utc>) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        let Some(sim) = &self.sim else {
            return out;
        };
        let dark = TimeDelta::from_std(self.config.reboot_time).unwrap_or(TimeDelta::zero());
        for r in sim.ground_truth().records() {
            if r.at <= now && now < r.at + dark {
                *out.entry(r.policy.unwrap_or_default()).or_insert(0) += 1;
            }
        }
        out
    }

    async fn watch(
        &mut self,
        client: &ServiceClient,
        display: &mut progress::Display<'_>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(Ending, Report), DemoError> {
        let Some(mut task) = self.scheduler.take() else {
            return Err(DemoError::SchedulerTask("not running".into()));
        };
        let deadline = tokio::time::Instant::from_std(self.started + self.config.duration);
        let mut refresh = tokio::time::interval(self.config.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Report> = None;
        let ending = loop {
            tokio::select! {
                () = shutdown.as_mut() => break Ending::Interrupted,
                () = tokio::time::sleep_until(deadline) => break Ending::TimedOut,
                joined = &mut task.handle => {
                    return Err(match joined {
                        Ok(Ok(_)) => DemoError::SchedulerTask("it stopped by itself".into()),
                        Ok(Err(e)) => e.into(),
                        Err(e) => DemoError::SchedulerTask(e.to_string()),
                    });
                }
                _ = refresh.tick() => {
                    let asked = Instant::now();
                    let report = self.report(client, true).await;
                    tracing::debug!(took_ms = asked.elapsed().as_millis(), "progress report");
                    let report = match report {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "progress query failed; retrying");
                            continue;
                        }
                    };
                    let now = report.generated_at;
                    let snap = progress::snapshot(
                        &report,
                        &self.policies,
                        &self.rebooting(now),
                        &self.metrics,
                        now,
                    );
                    display.update(&snap)?;
                    last = Some(report);
                    if snap.all_done() {
                        break Ending::Compliant;
                    }
                }
            }
        };
        self.scheduler = Some(task);
        let report = last.unwrap_or_else(|| {
            report::build(
                &[],
                &JournalView::default(),
                Utc::now(),
                REPORT_LOOKBACK,
                None,
            )
        });
        Ok((ending, report))
    }

    fn truth(&self) -> Truth {
        let records = self
            .sim
            .as_ref()
            .map(|s| s.ground_truth().records())
            .unwrap_or_default();
        let zones: HashMap<String, Tz> = self.plan.iter().map(|d| (d.id.clone(), d.zone)).collect();
        truth::check(
            &records,
            &self.policies,
            &self.assignment,
            &zones,
            self.config.max_skew,
            self.config.reboot_time,
        )
    }

    fn tell_ending(
        &self,
        display: &mut progress::Display<'_>,
        ending: Ending,
        report: &Report,
        truth: &Truth,
        stats: Option<&RunStats>,
        elapsed: Duration,
    ) -> Result<(), DemoError> {
        let mut text = String::new();
        let when = report
            .generated_at
            .with_timezone(&chrono::Local)
            .format("%H:%M:%S");
        text.push_str(&format!(
            "\nCompliance report at {when} — what `casement report` shows, from twin queries and the scheduler's journal:\n\n"
        ));
        text.push_str(&report::render(report, Format::Table, false));
        text.push('\n');
        text.push_str(&format!(
            "The devices' own log: {} reboots of {} devices; {} outside a window; {} twice in one window; most rebooting at once: {}.\n",
            truth.reboots,
            truth.devices,
            truth.outside_window.len(),
            truth.repeated.len(),
            truth
                .peak
                .iter()
                .map(|(p, (peak, limit))| format!("{p} {peak} (max_concurrent {limit})"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for line in truth.outside_window.iter().take(5) {
            text.push_str(&format!("  outside a window: {line}\n"));
        }
        for (device, occurrence) in truth.repeated.iter().take(5) {
            text.push_str(&format!(
                "  rebooted twice: {device} in the window of {occurrence}\n"
            ));
        }
        if let Some(s) = stats {
            text.push_str(&format!(
                "The scheduler: {} passes, {} reboot calls ({} accepted, {} refused, {} offline, {} errors), {} completed, {} failed, {} windows paused.\n",
                s.passes, s.invocations, s.accepted, s.refused, s.offline, s.errors, s.completed, s.failed, s.pauses
            ));
        }
        let t = &report.total;
        let took = format_duration(Duration::from_secs(elapsed.as_secs()));
        let verdict = match ending {
            Ending::Compliant if truth.holds() => format!(
                "The fleet is compliant: all {} devices rebooted inside their maintenance windows ({took}).\n",
                t.targeted
            ),
            Ending::Compliant => format!(
                "Every device reports a reboot in its window, but the devices' own log shows a broken invariant ({took}).\n"
            ),
            Ending::TimedOut => format!(
                "Not compliant after {took} (--duration): {} of {} devices rebooted in their latest window; {} in a window now, {} waiting for one, {} missed, {} failed, {} paused.\n",
                t.compliant, t.targeted, t.in_window, t.pending, t.missed, t.failed, t.paused
            ),
            Ending::Interrupted => format!(
                "Stopped after {took}: {} of {} devices had rebooted in their latest window.\n",
                t.compliant, t.targeted
            ),
        };
        text.push_str(&verdict);
        display.print(&text)?;
        Ok(())
    }

    fn keep_running_notes(&self) -> String {
        let cs = self.hub.service_connection_string();
        let url = self.hub.http_url().unwrap_or_default();
        let mut text = format!(
            "\nStill running: the hub, the {} devices and the scheduler — windows keep opening, and reboots keep happening inside them.\n\
             In another terminal (from the checkout, `cargo run --release --bin casement --` instead of `casement`):\n\n\
             \x20 export IOTHUB_CONNECTION_STRING='{cs}'\n\
             \x20 export CASEMENT_ENDPOINT={url}\n\
             \x20 export CASEMENT_STATE_DIR={}\n",
            self.plan.len(),
            self.state_dir().display()
        );
        let device = self.plan.first().map_or("demo-0000", |d| d.id.as_str());
        let policy = self.policies.iter().next().map(|p| p.file().to_owned());
        for example in try_commands(device, policy.as_deref()) {
            text.push_str(&format!("  {example}\n"));
        }
        text.push_str(&format!(
            "\nThe hub also takes plain MQTT on mqtt://{} (device SAS tokens). Stop everything with Ctrl-C.\n",
            self.hub
                .mqtt_addr()
                .map_or_else(|| "-".to_owned(), |a| a.to_string())
        ));
        text
    }

    /// Stops whatever is still running: the scheduler, the devices, the hub — each within a
    /// bound, so that a stuck component cannot keep the demo from ending.
    async fn stop(mut self) -> Option<RunStats> {
        let mut stats = None;
        if let Some(task) = self.scheduler.take() {
            match task.stop().await {
                Ok(s) => stats = Some(s),
                Err(e) => tracing::warn!(error = %e, "the scheduler stopped with an error"),
            }
        }
        if let Some(sim) = self.sim.take()
            && tokio::time::timeout(COMPONENT_STOP, sim.shutdown())
                .await
                .is_err()
        {
            tracing::warn!("the simulated devices did not stop in time");
        }
        if tokio::time::timeout(COMPONENT_STOP, self.hub.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("the hub did not stop in time");
        }
        stats
    }
}

/// The words of a command line the demo suggests, as a shell would split it: on spaces, with
/// double quotes grouping (the suggestions quote with double quotes only). Tests run each
/// suggestion with these words.
pub fn command_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    words.push(word);
    words
}

/// The commands the demo suggests with `--keep-running` (a test runs each of them against a
/// kept-running demo).
pub fn try_commands(device: &str, policy: Option<&Path>) -> Vec<String> {
    let mut commands = vec![
        "casement report --devices".to_owned(),
        "casement query \"SELECT deviceId, properties.reported.maintenance.window FROM devices WHERE tags.region = 'asia'\"".to_owned(),
        "casement query \"SELECT properties.reported.iothubDM.reboot.status AS status, COUNT() AS devices FROM devices GROUP BY properties.reported.iothubDM.reboot.status\"".to_owned(),
        format!("casement twin show {device}"),
    ];
    if let Some(policy) = policy {
        commands.push(format!(
            "casement windows {} --zone Asia/Tokyo --count 3",
            policy.display()
        ));
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_hub_listens_on_loopback_only_without_tls() {
        let config = hub_config(PathBuf::from("/tmp/x"));
        for addr in [config.mqtt, config.http].into_iter().flatten() {
            assert!(addr.ip().is_loopback(), "{addr}");
            assert_eq!(addr.port(), 0, "any free port");
        }
        assert!(config.mqtts.is_none() && config.https.is_none());
        assert_eq!(config.storage, Storage::Dir(PathBuf::from("/tmp/x")));
    }

    fn outcome(ending: Ending, compliant: u32, truth: Truth) -> DemoOutcome {
        let mut report = report::build(
            &[],
            &JournalView::default(),
            Utc::now(),
            REPORT_LOOKBACK,
            None,
        );
        report.total.targeted = 3;
        report.total.compliant = compliant;
        DemoOutcome {
            ending,
            report,
            truth,
            stats: None,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn compliant_means_every_device_and_no_broken_invariant() {
        assert!(outcome(Ending::Compliant, 3, Truth::default()).compliant());
        assert!(!outcome(Ending::Compliant, 2, Truth::default()).compliant());
        assert!(!outcome(Ending::TimedOut, 3, Truth::default()).compliant());
        assert!(!outcome(Ending::Interrupted, 3, Truth::default()).compliant());
        let broken = Truth {
            repeated: vec![("d".into(), Utc::now())],
            ..Truth::default()
        };
        assert!(!outcome(Ending::Compliant, 3, broken).compliant());
    }
}
