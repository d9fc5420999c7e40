//! What `wave_bench` and `scale_bench` share: flags, a shifted real-time clock, the wave's
//! policy, the simulated fleet set up before the measured time, and the ground-truth check.
//!
//! The set-up — registering N devices, applying the policy (with the benchmark's own,
//! unthrottled client, so a throttled hub does not spend minutes of its quota on it), connecting
//! N simulated agents and waiting until every one reports the window open and itself due — is
//! done by [`Wave::start`] and is not measured; the measured time starts when
//! [`Wave::run_until_done`] starts the scheduler's loop and ends when it has seen every
//! reboot completed in the twins.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use casement_agent::clock::AgentClock;
use casement_agent::simulate::{self, PlannedDevice};
use casement_agent::{Simulation, SimulationConfig};
use casement_client::{HubApi, ServiceClient};
use casement_hub::RunningHub;
use casement_scheduler::apply::{self, ApplyOptions};
use casement_scheduler::metrics::Metrics;
use casement_scheduler::run::{RunConfig, RunStats, Scheduler, Signals};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};

/// Real time, shifted.
#[derive(Debug, Clone, Copy)]
pub struct Shifted(pub TimeDelta);

impl casement_policy::Clock for Shifted {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.0
    }
}

impl Shifted {
    /// Real time shifted to 30 s after the wave's window opened (Sunday 02:00 UTC).
    pub fn in_window() -> Self {
        let opens = Utc.with_ymd_and_hms(2026, 11, 29, 2, 0, 0).unwrap();
        Shifted(opens + TimeDelta::seconds(30) - Utc::now())
    }
}

/// A numeric flag (`--name N`), or `default`.
pub fn flag(name: &str, default: u64) -> u64 {
    text(name, "").parse().unwrap_or(default)
}

/// A text flag (`--name VALUE`), or `default`.
pub fn text(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

/// Whether a switch (`--name`, no value) was given.
pub fn switch(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Installs the crypto provider and logging (`RUST_LOG`, errors by default).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .try_init();
}

async fn count(client: &ServiceClient, condition: &str) -> anyhow::Result<u64> {
    let rows = client
        .query_all(&format!(
            "SELECT COUNT() AS n FROM devices WHERE {condition}"
        ))
        .await?;
    Ok(rows
        .first()
        .and_then(|r| r.get("n"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0))
}

async fn wait_count(
    client: &ServiceClient,
    what: &str,
    condition: &str,
    n: u64,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let got = count(client, condition).await?;
        if got >= n {
            println!("{what}: {n} after {:.1} s", start.elapsed().as_secs_f64());
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "{what}: only {got} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The wave's shape.
#[derive(Debug, Clone, Copy)]
pub struct WaveSpec {
    /// N.
    pub devices: u64,
    /// The policy's `max_concurrent`.
    pub concurrent: u64,
    /// How long a simulated reboot keeps a device dark.
    pub reboot: Duration,
    /// The scheduler's tick.
    pub tick: Duration,
    /// The simulated agents run in a child process (`--agents-process`): the hub and the
    /// agents then each hold one end of every device's connection in their own process, so a
    /// fleet can need up to the open-file limit in each (this machine: 20,000) instead of
    /// twice the fleet in one.
    pub agents_process: bool,
}

impl WaveSpec {
    /// From `--devices` (2,000), `--concurrent` (200), `--reboot-ms` (2,000) and `--tick-ms`.
    pub fn from_flags(default_tick_ms: u64) -> Self {
        Self {
            devices: flag("--devices", 2000),
            concurrent: flag("--concurrent", 200),
            reboot: Duration::from_millis(flag("--reboot-ms", 2000)),
            tick: Duration::from_millis(flag("--tick-ms", default_tick_ms)),
            agents_process: switch("--agents-process"),
        }
    }
}

/// A fleet set up and ready for the wave (nothing measured yet).
pub struct Wave<H: HubApi + Clone> {
    spec: WaveSpec,
    scheduler: Scheduler<H>,
    metrics: Arc<Metrics>,
    agents: Agents,
    _dir: tempfile::TempDir,
}

/// Where the simulated agents run.
enum Agents {
    /// In this process: their events give the cycle step by step.
    InProcess(Simulation),
    /// In a child process (this benchmark run with `--agents-child`), which stops when its
    /// standard input closes; its ground truth is a JSON-lines file.
    Child {
        child: tokio::process::Child,
        truth: PathBuf,
    },
}

/// The fleet every wave simulates: `devices` numbered devices tagged `role=gateway`.
fn fleet(devices: u64) -> Vec<PlannedDevice> {
    simulate::numbered(
        simulate::DEFAULT_PREFIX,
        devices as usize,
        &[chrono_tz::UTC],
    )
    .into_iter()
    .map(|d| d.with_tag("role", "gateway"))
    .collect()
}

/// The simulation's settings, in this process or the child.
fn simulation_config(
    hub: &str,
    url: String,
    mqtt: &str,
    devices: u64,
    reboot: Duration,
    clock: Shifted,
    state_dir: PathBuf,
) -> anyhow::Result<SimulationConfig> {
    let mut sim = SimulationConfig::new(hub.parse()?, fleet(devices), state_dir);
    sim.hub_url = Some(url);
    sim.mqtt_endpoint = Some(mqtt.parse()?);
    sim.reboot_time = reboot;
    sim.clock = AgentClock::from_clock(Arc::new(clock));
    Ok(sim)
}

/// With `--agents-child` (how a benchmark with `--agents-process` starts itself again): runs
/// the simulated agents until standard input closes, and returns `true`; otherwise `false`.
pub async fn agents_child() -> anyhow::Result<bool> {
    if !switch("--agents-child") {
        return Ok(false);
    }
    let offset = TimeDelta::milliseconds(text("--offset-ms", "0").parse()?);
    let mut sim = simulation_config(
        &text("--hub", ""),
        text("--hub-url", ""),
        &text("--mqtt", ""),
        flag("--devices", 0),
        Duration::from_millis(flag("--reboot-ms", 2000)),
        Shifted(offset),
        text("--state-dir", "").into(),
    )?;
    sim.ground_truth = Some(text("--ground-truth", "").into());
    let simulation = Simulation::start(sim).await?;
    let mut sink = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
    simulation.shutdown().await;
    Ok(true)
}

/// What the measured wave did.
pub struct Outcome {
    /// From the loop's start to the last completion seen.
    pub wall: Duration,
    /// The scheduler's counters.
    pub stats: RunStats,
    /// The scheduler's metrics (pages per pass).
    pub metrics: Arc<Metrics>,
    /// Reboots in the devices' own log.
    pub reboots: usize,
    /// Devices that rebooted more than once.
    pub duplicates: usize,
    /// The most devices down at once.
    pub max_down: usize,
    /// Each step of a device's reboot cycle and its durations, seconds.
    pub phases: Vec<(String, Vec<f64>)>,
    /// CPU time this process (hub, agents and scheduler) spent in the measured wave, seconds.
    pub cpu: f64,
}

/// User plus system CPU time of this process so far, seconds (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // After the command name in parentheses: utime and stime are the 12th and 13th fields.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

impl<H: HubApi + Clone> Wave<H> {
    /// Registers `spec.devices` devices tagged `role=gateway` in `hub`, writes the policy, starts
    /// the scheduler (which applies it) with `configure`'s run settings on `scheduler_client`,
    /// connects the simulated agents and waits until every one reports itself due. `client`
    /// is the benchmark's own (unthrottled) client, for counting.
    pub async fn start(
        hub: &RunningHub,
        client: &ServiceClient,
        scheduler_client: H,
        clock: Shifted,
        spec: WaveSpec,
        configure: impl FnOnce(&mut RunConfig),
    ) -> anyhow::Result<Self> {
        let cs = hub.service_connection_string();
        let url = hub.http_url().unwrap_or_default();
        let dir = tempfile::tempdir()?;
        let policies: PathBuf = dir.path().join("policies");
        std::fs::create_dir_all(&policies)?;
        std::fs::write(
            policies.join("wave.toml"),
            format!(
                r#"[policy]
name = "wave"
target = "tags.role = 'gateway'"
[window]
schedule = "0 2 * * SUN"
duration = "2h"
timezone = "UTC"
[reboot]
expected_duration = "5m"
method_timeout = "30s"
[rollout]
max_concurrent = {}
max_per_minute = 1000000
max_failures = "5%"
"#,
                spec.concurrent
            ),
        )?;
        let mut run = RunConfig::new(vec![policies.clone()], dir.path().join("state"));
        run.tick = spec.tick;
        // Applied below, outside the scheduler's quotas.
        run.apply = false;
        configure(&mut run);
        let metrics = Metrics::new();
        let started = Instant::now();
        // The devices are registered, and the policy applied (in `Scheduler::start`), before
        // the agents connect: the measured wave is the reboots alone.
        let mqtt = format!(
            "mqtt://{}",
            hub.mqtt_addr().unwrap_or(([127, 0, 0, 1], 0).into())
        );
        let sim = simulation_config(
            &cs,
            url.clone(),
            &mqtt,
            spec.devices,
            spec.reboot,
            clock,
            dir.path().join("sim"),
        )?;
        let set = casement_policy::load(&[policies])
            .map_err(|d| anyhow::anyhow!("the wave's policy: {d:?}"))?;
        let apply_policy = async || -> anyhow::Result<()> {
            let options = ApplyOptions::default();
            let plan = apply::plan(client, &set, &options).await?;
            let applied = apply::execute(client, &set, &plan, &options, &()).await;
            anyhow::ensure!(
                applied.failed.is_empty(),
                "applying the policy: {:?}",
                applied.failed
            );
            Ok(())
        };
        let (scheduler, agents) = if spec.agents_process {
            // The child registers the fleet and connects it; the policy is applied once every
            // device is registered (those already connected get it as a desired patch).
            let truth = dir.path().join("truth.jsonl");
            let child = tokio::process::Command::new(std::env::current_exe()?)
                .args([
                    "--agents-child",
                    "--hub",
                    &cs,
                    "--hub-url",
                    &url,
                    "--mqtt",
                    &mqtt,
                ])
                .args(["--devices", &spec.devices.to_string()])
                .args(["--reboot-ms", &spec.reboot.as_millis().to_string()])
                .args(["--offset-ms", &clock.0.num_milliseconds().to_string()])
                .arg("--state-dir")
                .arg(dir.path().join("sim"))
                .arg("--ground-truth")
                .arg(&truth)
                .stdin(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            wait_count(client, "registered", "tags.role = 'gateway'", spec.devices).await?;
            apply_policy().await?;
            let scheduler =
                Scheduler::start(scheduler_client, Arc::new(clock), run, metrics.clone()).await?;
            (scheduler, Agents::Child { child, truth })
        } else {
            // Registered, and the policy applied (in `Scheduler::start`), before the agents
            // connect.
            let registered = Simulation::register(&sim).await?;
            apply_policy().await?;
            let scheduler =
                Scheduler::start(scheduler_client, Arc::new(clock), run, metrics.clone()).await?;
            let simulation = Simulation::run(sim, registered).await?;
            (scheduler, Agents::InProcess(simulation))
        };
        wait_count(
            client,
            "connected",
            "connectionState = 'Connected'",
            spec.devices,
        )
        .await?;
        wait_count(
            client,
            "applied with the window open and due",
            "properties.reported.maintenance.policy = 'wave' AND properties.reported.maintenance.window.due = true",
            spec.devices,
        )
        .await?;
        println!(
            "set-up (not measured): {} devices registered, policy applied, agents connected and due in {:.1} s",
            spec.devices,
            started.elapsed().as_secs_f64()
        );
        Ok(Self {
            spec,
            scheduler,
            metrics,
            agents,
            _dir: dir,
        })
    }

    /// The measured part: the scheduler's loop until every reboot is seen completed (bounded:
    /// 20 minutes), then the ground truth.
    pub async fn run_until_done(self) -> anyhow::Result<Outcome> {
        let Self {
            spec,
            scheduler,
            metrics,
            agents,
            _dir,
        } = self;
        let (signals_tx, signals) = Signals::manual();
        let timeline = match &agents {
            Agents::InProcess(simulation) => Some(Timeline::follow(simulation)),
            Agents::Child { .. } => None,
        };
        let mut seen_completed: Vec<Instant> = Vec::new();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let task = tokio::spawn(scheduler.run(signals));
        loop {
            let completed = metrics.reboots("wave", "completed");
            while (seen_completed.len() as u64) < completed {
                seen_completed.push(Instant::now());
            }
            if completed >= spec.devices {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(1200),
                "the wave did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = t0.elapsed();
        let cpu = cpu_seconds() - cpu0;
        let phases = match timeline {
            Some(timeline) => {
                timeline
                    .finish(&seen_completed, spec.concurrent as usize)
                    .await
            }
            None => Vec::new(),
        };
        signals_tx.stop();
        let stats = task.await??;

        let records = match agents {
            Agents::InProcess(simulation) => {
                let records = simulation.ground_truth().records();
                simulation.shutdown().await;
                records
            }
            Agents::Child { mut child, truth } => {
                // Closing its standard input stops the child; its log is then complete.
                drop(child.stdin.take());
                let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
                casement_agent::GroundTruth::with_file(truth)?.records()
            }
        };
        let mut seen = std::collections::BTreeSet::new();
        let duplicates = records
            .iter()
            .filter(|r| !seen.insert(r.device.clone()))
            .count();
        let down = TimeDelta::from_std(spec.reboot)?;
        // Sorted by start: the devices down when each one went down are those started in the
        // `down` before it (a sliding window, not N²).
        let mut starts: Vec<DateTime<Utc>> = records.iter().map(|r| r.at).collect();
        starts.sort();
        let mut max_down = 0;
        let mut first = 0;
        for (i, at) in starts.iter().enumerate() {
            while starts[first] + down <= *at {
                first += 1;
            }
            max_down = max_down.max(i + 1 - first);
        }
        let reboots = records.len();
        Ok(Outcome {
            wall,
            stats,
            metrics,
            reboots,
            duplicates,
            max_down,
            phases,
            cpu,
        })
    }
}

/// When each device went through each step of its reboot, as the simulation reported it.
struct Timeline {
    task: tokio::task::JoinHandle<Vec<(Instant, String, Step)>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Answered,
    PoweredOff,
    Booted,
    Connected,
    TwinFetched,
    ReportedCompleted,
}

impl Timeline {
    fn follow(simulation: &Simulation) -> Self {
        use casement_agent::agent::AgentEvent;
        use casement_agent::simulate::SimEvent;
        let mut events = simulation.events();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut steps = Vec::new();
            loop {
                let (device, event) = tokio::select! {
                    _ = &mut stopped => return steps,
                    event = events.recv() => match event {
                        Ok(event) => event,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            eprintln!("timeline: {n} events lost");
                            continue;
                        }
                        Err(_) => return steps,
                    },
                };
                let step = match event {
                    SimEvent::Agent(AgentEvent::MethodAnswered { status: 200, .. }) => {
                        Step::Answered
                    }
                    SimEvent::PoweredOff(_) => Step::PoweredOff,
                    SimEvent::Booted { boot } if boot > 1 => Step::Booted,
                    SimEvent::Agent(AgentEvent::Connected) => Step::Connected,
                    SimEvent::Agent(AgentEvent::TwinFetched { .. }) => Step::TwinFetched,
                    SimEvent::Agent(AgentEvent::Reported(patch))
                        if patch.pointer("/iothubDM/reboot/status")
                            == Some(&serde_json::json!("completed")) =>
                    {
                        Step::ReportedCompleted
                    }
                    _ => continue,
                };
                steps.push((Instant::now(), device, step));
            }
        });
        Self { task, stop }
    }

    /// Each step's duration (mean / p50 / p95 / max, seconds), per device; and the slot's
    /// hand-over: the k-th completion reported → the scheduler counting it → the (C + k)-th
    /// device answering its call.
    async fn finish(self, seen: &[Instant], concurrent: usize) -> Vec<(String, Vec<f64>)> {
        let _ = self.stop.send(());
        let steps = self.task.await.unwrap_or_default();
        let mut per_device: std::collections::HashMap<String, Vec<(Step, Instant)>> =
            std::collections::HashMap::new();
        for (at, device, step) in &steps {
            per_device
                .entry(device.clone())
                .or_default()
                .push((*step, *at));
        }
        let order = [
            Step::Answered,
            Step::PoweredOff,
            Step::Booted,
            Step::Connected,
            Step::TwinFetched,
            Step::ReportedCompleted,
        ];
        let mut phases: Vec<(String, Vec<f64>)> = order
            .windows(2)
            .map(|pair| (format!("{:?} -> {:?}", pair[0], pair[1]), Vec::new()))
            .collect();
        for events in per_device.values() {
            let at = |step: Step| events.iter().find(|(s, _)| *s == step).map(|(_, at)| *at);
            for (i, pair) in order.windows(2).enumerate() {
                if let (Some(a), Some(b)) = (at(pair[0]), at(pair[1])) {
                    phases[i]
                        .1
                        .push(b.saturating_duration_since(a).as_secs_f64());
                }
            }
        }
        let sorted = |step: Step| {
            let mut all: Vec<Instant> = steps
                .iter()
                .filter(|(_, _, s)| *s == step)
                .map(|(at, _, _)| *at)
                .collect();
            all.sort();
            all
        };
        let reported = sorted(Step::ReportedCompleted);
        let answered = sorted(Step::Answered);
        let seen_gap = reported
            .iter()
            .zip(seen)
            .map(|(r, s)| s.saturating_duration_since(*r).as_secs_f64())
            .collect();
        let call_gap = seen
            .iter()
            .zip(answered.iter().skip(concurrent))
            .map(|(s, a)| a.saturating_duration_since(*s).as_secs_f64())
            .collect();
        phases.push((
            "k-th completion reported -> seen by the scheduler".into(),
            seen_gap,
        ));
        phases.push((
            "k-th completion seen -> (C+k)-th call answered".into(),
            call_gap,
        ));
        phases
    }
}

impl Outcome {
    /// The candidate query pages per pass, the scheduler's counters and the ground truth.
    pub fn print(&self) {
        let (pages_sum, passes, pages_max) = self.metrics.pages_per_pass();
        println!(
            "candidate query pages per pass: mean {:.2}, max {pages_max} ({passes} passes)",
            pages_sum as f64 / passes.max(1) as f64
        );
        let (pass_seconds, pass_count) = self.metrics.pass_seconds();
        println!(
            "a pass took {:.1} ms on average",
            1000.0 * pass_seconds / pass_count.max(1) as f64
        );
        let s = &self.stats;
        println!(
            "invocations {} (accepted {}, already done {}, offline {}, refused {}, errors {}, throttled {}), completed {}, failed {}, passes {}",
            s.invocations,
            s.accepted,
            s.already_done,
            s.offline,
            s.refused,
            s.errors,
            s.throttled,
            s.completed,
            s.failed,
            s.passes
        );
        println!(
            "ground truth: {} reboots, {} duplicates, at most {} devices down at once",
            self.reboots, self.duplicates, self.max_down
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "CPU{}: {:.1} s in {:.1} s of wall time on {cores} cores ({:.0} % of the machine), {:.1} ms a reboot",
            if self.phases.is_empty() {
                " of the hub and the scheduler (the agents' process not counted)"
            } else {
                " of the hub, the agents and the scheduler"
            },
            self.cpu,
            self.wall.as_secs_f64(),
            100.0 * self.cpu / (self.wall.as_secs_f64() * cores as f64),
            1000.0 * self.cpu / self.reboots.max(1) as f64
        );
        if self.phases.is_empty() {
            println!("a slot's cycle step by step: only with the agents in this process");
            return;
        }
        println!("a slot's cycle, step by step (s): mean / p50 / p95 / max (n)");
        for (name, values) in &self.phases {
            let mut v = values.clone();
            v.sort_by(f64::total_cmp);
            if v.is_empty() {
                continue;
            }
            let q = |f: f64| v[((v.len() - 1) as f64 * f) as usize];
            println!(
                "  {name:<52} {:.3} / {:.3} / {:.3} / {:.3} ({})",
                v.iter().sum::<f64>() / v.len() as f64,
                q(0.5),
                q(0.95),
                q(1.0),
                v.len()
            );
        }
    }
}
