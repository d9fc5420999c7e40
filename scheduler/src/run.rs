//! `casement run`: the loop that reboots devices inside their windows, within the rollout limits.
//!
//! Every `--tick` the [`Scheduler`] makes one [`pass`](Scheduler::pass): it re-reads the policy
//! files when they changed (or on SIGHUP) and re-applies them, then for each policy queries the
//! devices that report an open window, reads the twins of devices in flight that the query did
//! not return, and feeds both to the policy's [`PolicyRollout`]. It executes the actions the
//! rollout returns — and nothing else:
//!
//! - `Invoke`: journal the intent and **flush**, then call `reboot` with
//!   `{policy, revision, occurrence}`; the call runs in the background and its outcome goes back
//!   to the rollout (which may start the next device at once);
//! - `Record` / `Pause`: journal (flushed);
//! - `Closed`: log.
//!
//! On start-up the journal is read back into the rollouts; entries whose outcome is unknown count
//! as in flight until the first pass resolves them from the twins. So a scheduler killed between
//! journaling and calling, or between calling and recording, neither reboots a device twice in
//! one occurrence nor forgets one.
//!
//! [`Scheduler::run`] is the long-running loop (graceful on the first stop signal: no new
//! invocations, the calls under way are awaited and recorded; immediate on the second);
//! [`Scheduler::pass`] + [`Scheduler::settle`] is `--once`, and what tests drive with a manual
//! clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use casement_iothub::rest::{
    MAX_RESPONSE_TIMEOUT_SECS, MIN_RESPONSE_TIMEOUT_SECS, MethodRequest, MethodResponse,
};
use casement_policy::maintenance::REBOOT_METHOD;
use casement_policy::{
    Clock, Diagnostic, Policy, PolicySet, RebootAnswer, RebootRequest, RefusalReason,
};
use chrono::TimeDelta;
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::apply::{self, ApplyOptions};
use crate::fleet::{self, TwinView};
use crate::journal::{Journal, JournalError, PauseRecord};
use crate::metrics::Metrics;
use crate::rollout::{
    Action, Entry, Invocation, MethodOutcome, Observation, PolicyRollout, Refusal, RolloutConfig,
    RolloutLimits, Window,
};
use casement_client::{ClientError, HubApi};

/// Why the scheduler stopped (or could not start).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The policy files are invalid (at start-up; later the previous set is kept).
    #[error("{} error(s) in the policy files", .0.len())]
    Policies(Vec<Diagnostic>),
    /// The journal failed: without it a reboot could be repeated or forgotten, so the
    /// scheduler stops.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// `--once` could not complete its pass.
    #[error("the pass did not complete: {0}")]
    Pass(String),
    /// `--once`: calls to the hub failed, so the pass saw only part of the fleet.
    #[error("the pass did not complete: {errors} hub error(s), the first: {first}")]
    Hub {
        /// How many calls failed.
        errors: u64,
        /// The first failure, as logged.
        first: String,
        /// Whether every failure was the hub being unavailable (unreachable, throttled,
        /// failing) rather than refusing a call — see [`ClientError::is_unavailable`].
        unavailable: bool,
    },
}

impl RunError {
    /// Whether the run failed only because the hub was unavailable (try again later).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RunError::Hub {
                unavailable: true,
                ..
            }
        )
    }
}

/// The hub errors of a run, for `--once` to report.
#[derive(Debug, Default)]
struct ClientErrors {
    first: Option<String>,
    refused: bool,
}

/// How `casement run` runs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Policy files and directories.
    pub policy_paths: Vec<PathBuf>,
    /// Where the journal lives.
    pub state_dir: PathBuf,
    /// Time between passes.
    pub tick: Duration,
    /// Rollout tuning (clock skew, completion grace, retries).
    pub rollout: RolloutConfig,
    /// Apply the policy files at start-up and whenever they change.
    pub apply: bool,
    /// How to apply.
    pub apply_options: ApplyOptions,
    /// Journal records of windows closed longer ago than this are dropped at start-up.
    pub journal_retention: Duration,
    /// Twin reads of in-flight devices at once.
    pub read_concurrency: usize,
    /// How late a twin query may answer (Azure documents query results as eventually
    /// consistent). The candidate query asks for this many seconds' worth of already-invoked
    /// devices on top of the free capacity, so stale answers never crowd out due devices;
    /// correctness never depends on it (the journal and twin reads decide).
    pub query_lag: Duration,
    /// Reboot calls started and not answered yet, per policy, at most
    /// ([`PolicyRollout::with_max_calling`]): [`max_calling_for`] the hub's method quota
    /// (`casement run --tier`), unlimited otherwise.
    pub max_calling: u32,
}

impl RunConfig {
    /// Defaults for everything but the policy files and the state directory.
    pub fn new(policy_paths: Vec<PathBuf>, state_dir: PathBuf) -> Self {
        Self {
            policy_paths,
            state_dir,
            tick: Duration::from_secs(10),
            rollout: RolloutConfig::default(),
            apply: true,
            apply_options: ApplyOptions::default(),
            journal_retention: Duration::from_secs(60 * 86_400),
            read_concurrency: 16,
            query_lag: Duration::from_secs(10),
            max_calling: u32::MAX,
        }
    }
}

/// What the scheduler has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunStats {
    /// Passes made.
    pub passes: u64,
    /// `reboot` invocations started.
    pub invocations: u64,
    /// Accepted.
    pub accepted: u64,
    /// Answered "already done".
    pub already_done: u64,
    /// Refused by the agent.
    pub refused: u64,
    /// Device offline (404103).
    pub offline: u64,
    /// Method errors.
    pub errors: u64,
    /// Reboots seen completed in twins.
    pub completed: u64,
    /// Reboots failed (reported failed, timed out, refused, out of attempts).
    pub failed: u64,
    /// Occurrences paused by the failure budget.
    pub pauses: u64,
    /// Times the policy files were applied.
    pub applies: u64,
    /// Queries or twin reads that failed (retried at the next pass).
    pub hub_errors: u64,
    /// Candidate queries made (a policy with no free capacity makes none).
    pub candidate_queries: u64,
    /// Devices those queries returned.
    pub candidates: u64,
    /// Twins of devices in flight read one by one.
    pub twin_reads: u64,
    /// Invocations the hub answered 429 (retried later, not failures).
    pub throttled: u64,
    /// Invocations that timed out at the hub (504101): the device may have rebooted.
    pub may_have_run: u64,
}

/// Stop and reload requests: from signals in the binary, by hand in tests.
#[derive(Debug)]
pub struct Signals {
    /// Counts stop requests (SIGINT/SIGTERM): 1 = graceful, 2 = now.
    pub stop: watch::Receiver<u32>,
    /// One message per reload request (SIGHUP).
    pub reload: mpsc::Receiver<()>,
}

/// The sending side of [`Signals`], for tests and embedders.
#[derive(Debug, Clone)]
pub struct SignalSender {
    stop: Arc<watch::Sender<u32>>,
    reload: mpsc::Sender<()>,
}

impl SignalSender {
    /// Requests a stop (a second call: stop now).
    pub fn stop(&self) {
        self.stop.send_modify(|n| *n += 1);
    }

    /// Requests a policy reload.
    pub fn reload(&self) {
        let _ = self.reload.try_send(());
    }
}

impl Signals {
    /// A pair driven by hand.
    pub fn manual() -> (SignalSender, Signals) {
        let (stop_tx, stop_rx) = watch::channel(0);
        let (reload_tx, reload_rx) = mpsc::channel(4);
        (
            SignalSender {
                stop: Arc::new(stop_tx),
                reload: reload_tx,
            },
            Signals {
                stop: stop_rx,
                reload: reload_rx,
            },
        )
    }

    /// SIGINT and SIGTERM stop (the second one at once), SIGHUP reloads.
    #[cfg(unix)]
    pub fn from_os() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let (sender, signals) = Self::manual();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = int.recv() => sender.stop(),
                    Some(()) = term.recv() => sender.stop(),
                    Some(()) = hup.recv() => sender.reload(),
                    else => break,
                }
            }
        });
        Ok(signals)
    }
}

/// A policy file's identity and modification, to notice edits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

fn stamps(paths: &[PathBuf]) -> Vec<Stamp> {
    let mut out = Vec::new();
    let mut add = |path: &Path| {
        let meta = std::fs::metadata(path).ok();
        out.push(Stamp {
            path: path.to_owned(),
            modified: meta.as_ref().and_then(|m| m.modified().ok()),
            len: meta.map_or(0, |m| m.len()),
        });
    };
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|e| e == "toml"))
                .collect();
            files.sort();
            add(p);
            for f in files {
                add(&f);
            }
        } else {
            add(p);
        }
    }
    out
}

/// How many seconds of the hub's direct-method quota may wait in the client's throttle, per
/// policy ([`RunConfig::max_calling`]).
pub const CALL_HORIZON: Duration = Duration::from_secs(2);

/// [`RunConfig::max_calling`] for a hub allowing `methods_per_second` direct methods
/// (`None`: not limited): [`CALL_HORIZON`]'s worth, at least one.
pub fn max_calling_for(methods_per_second: Option<f64>) -> u32 {
    match methods_per_second {
        Some(rate) if rate.is_finite() && rate > 0.0 => {
            let calls = (rate * CALL_HORIZON.as_secs_f64()).ceil();
            if calls >= f64::from(u32::MAX) {
                u32::MAX
            } else {
                (calls as u32).max(1)
            }
        }
        _ => u32::MAX,
    }
}

/// The rollout limits a policy sets.
pub fn limits_of(policy: &Policy) -> RolloutLimits {
    let r = policy.rollout();
    RolloutLimits {
        max_concurrent: r.max_concurrent,
        max_per_minute: r.max_per_minute,
        max_failures: r.max_failures,
        expected_duration: policy.reboot().expected_duration,
    }
}

/// How a `reboot` call ended, from the agent's answer (200 accepted / already done, 409 refused
/// with a reason, 400 malformed) or the hub's error (404103 offline).
pub fn classify(result: &Result<MethodResponse, ClientError>) -> MethodOutcome {
    let response = match result {
        Ok(response) => response,
        Err(e) if e.is_device_offline() => return MethodOutcome::Offline,
        Err(e) if e.is_throttled() => return MethodOutcome::Throttled,
        // The device may have the call although no answer says so — the hub's 504101, or the
        // scheduler's own link lost after the request went out: the slot stays taken until a
        // twin read tells (a retry of the same occurrence is answered alreadyDone).
        Err(e)
            if e.may_have_been_carried_out()
                || e.service_error()
                    .is_some_and(casement_iothub::error::ServiceError::is_gateway_timeout) =>
        {
            return MethodOutcome::MayHaveRun(e.to_string());
        }
        Err(e) => return MethodOutcome::Error(e.to_string()),
    };
    let answer = match RebootAnswer::from_json(&response.payload) {
        Ok(answer) => answer,
        Err(why) => {
            return MethodOutcome::Error(format!(
                "the device answered {} with an answer that is not the reboot method's ({why}): {}",
                response.status, response.payload
            ));
        }
    };
    match (response.status, answer.accepted) {
        (200..=299, true) if answer.already_done => MethodOutcome::AlreadyDone,
        (200..=299, true) => MethodOutcome::Accepted,
        (200..=299 | 400 | 409, false) => MethodOutcome::Refused(Refusal {
            reason: answer.reason.unwrap_or(RefusalReason::Unknown),
            message: answer.message.unwrap_or_default(),
        }),
        (status, _) => {
            MethodOutcome::Error(format!("device answered {status}: {}", response.payload))
        }
    }
}

fn outcome_label(o: &MethodOutcome) -> &'static str {
    match o {
        MethodOutcome::Accepted => "accepted",
        MethodOutcome::AlreadyDone => "already_done",
        MethodOutcome::Refused(_) => "refused",
        MethodOutcome::Offline => "offline",
        MethodOutcome::Throttled => "throttled",
        MethodOutcome::MayHaveRun(_) => "may_have_run",
        MethodOutcome::Error(_) => "error",
    }
}

/// The result of one background call.
struct CallResult {
    policy: String,
    device: String,
    window: Window,
    outcome: MethodOutcome,
    /// The HTTP status of the call (`None` when none came back).
    status: Option<u16>,
}

/// The scheduler: policies, their rollouts, the journal, the calls under way.
pub struct Scheduler<H: HubApi + Clone> {
    hub: H,
    clock: Arc<dyn Clock>,
    config: RunConfig,
    journal: Journal,
    metrics: Arc<Metrics>,
    policies: PolicySet,
    rollouts: BTreeMap<String, PolicyRollout>,
    stamps: Vec<Stamp>,
    apply_pending: bool,
    calls: JoinSet<CallResult>,
    draining: bool,
    stats: RunStats,
    hub_errors: ClientErrors,
    /// Candidate query pages read by the pass under way.
    pass_pages: u64,
    /// Whether the pass under way got a 429.
    pass_throttled: bool,
    /// Passes in a row that got a 429, and whether that was logged.
    throttle: ThrottleWatch,
    /// The journal's generation the last snapshot holds (`None`: none written yet).
    snapshot_generation: Option<u64>,
    /// When the last snapshot was written.
    snapshot_at: Option<tokio::time::Instant>,
}

/// How often, at most, a pass writes the journal snapshot `casement report` reads while the
/// scheduler runs (only when the journal changed; settling and stopping always write it). The
/// snapshot is the whole journal — 100,000 entries in a window of a large fleet — so writing it
/// every pass would make a pass cost what the fleet holds.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// Passes in a row with a 429 after which the throttle counts as persistent and is logged.
const PERSISTENT_THROTTLE_PASSES: u32 = 3;

/// What the log says, once, when the throttle is persistent.
pub const PERSISTENT_THROTTLE_ADVICE: &str = "the hub has answered 429 (throttled) in every one \
    of the last passes: the loop needs more than the tier's quotas allow. Raise the hub's units \
    (--units, and the IoT Hub's own unit count), lower max_concurrent or max_per_minute, or make \
    passes rarer with a longer --tick; the run goes on, slower, retrying what was refused";

/// Passes in a row that got a 429, and whether that was said.
#[derive(Debug, Default)]
struct ThrottleWatch {
    passes: u32,
    warned: bool,
}

/// What a pass's end has to say about throttling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ThrottleNotice {
    /// Nothing new.
    None,
    /// Throttled for this many passes in a row: said once, until a pass goes without 429.
    Persistent { passes: u32 },
    /// A pass went without 429 after a persistent throttle was said.
    Ended,
}

impl ThrottleWatch {
    fn end_pass(&mut self, throttled: bool) -> ThrottleNotice {
        if throttled {
            self.passes += 1;
            if self.passes >= PERSISTENT_THROTTLE_PASSES && !self.warned {
                self.warned = true;
                return ThrottleNotice::Persistent {
                    passes: self.passes,
                };
            }
            ThrottleNotice::None
        } else {
            let ended = std::mem::take(&mut self.warned);
            self.passes = 0;
            if ended {
                ThrottleNotice::Ended
            } else {
                ThrottleNotice::None
            }
        }
    }
}

/// The HTTP status of a call's outcome (`None` when none came back).
fn status_of<T>(result: &Result<T, ClientError>) -> Option<u16> {
    match result {
        Ok(_) => Some(200),
        Err(e) => e.status(),
    }
}

impl<H: HubApi + Clone> std::fmt::Debug for Scheduler<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("policies", &self.rollouts.keys().collect::<Vec<_>>())
            .field("calls", &self.calls.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<H: HubApi + Clone> Scheduler<H> {
    /// Loads the policies (all valid, or [`RunError::Policies`]), opens the journal and restores
    /// the rollouts from it, and applies the policies (a hub error there is logged and retried at
    /// the next pass).
    pub async fn start(
        hub: H,
        clock: Arc<dyn Clock>,
        config: RunConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RunError> {
        let stamps = stamps(&config.policy_paths);
        let policies = casement_policy::load(&config.policy_paths).map_err(RunError::Policies)?;
        std::fs::create_dir_all(&config.state_dir).map_err(|source| JournalError::Snapshot {
            path: config.state_dir.clone(),
            source,
        })?;
        let journal = Journal::open(&config.state_dir)?;
        let now = clock.now();
        let retention = TimeDelta::from_std(config.journal_retention).unwrap_or(TimeDelta::MAX);
        if let Some(before) = now.checked_sub_signed(retention) {
            let pruned = journal.prune(before)?;
            if pruned > 0 {
                tracing::info!(pruned, "dropped old journal records");
            }
        }
        let mut scheduler = Self {
            hub,
            clock,
            apply_pending: config.apply,
            config,
            journal,
            metrics,
            policies: PolicySet::default(),
            rollouts: BTreeMap::new(),
            stamps,
            calls: JoinSet::new(),
            draining: false,
            stats: RunStats::default(),
            hub_errors: ClientErrors::default(),
            snapshot_generation: None,
            snapshot_at: None,
            pass_pages: 0,
            pass_throttled: false,
            throttle: ThrottleWatch::default(),
        };
        scheduler.install(policies)?;
        let unresolved = scheduler
            .rollouts
            .values()
            .map(PolicyRollout::in_flight_count)
            .sum::<u32>();
        if unresolved > 0 {
            tracing::info!(
                unresolved,
                "journal entries in flight at start-up; resolving them from the twins"
            );
        }
        scheduler.apply_if_pending().await;
        Ok(scheduler)
    }

    /// What the scheduler has done.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The policies in force.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The rollout of a policy.
    pub fn rollout(&self, policy: &str) -> Option<&PolicyRollout> {
        self.rollouts.get(policy)
    }

    /// Calls under way.
    pub fn calls_in_flight(&self) -> usize {
        self.calls.len()
    }

    /// Takes a new policy set: rollouts of unchanged policies continue, changed ones take the
    /// new revision and limits, new ones are restored from the journal, removed ones go.
    fn install(&mut self, set: PolicySet) -> Result<(), RunError> {
        let now = self.clock.now();
        let names: BTreeSet<String> = set.iter().map(|p| p.name().to_owned()).collect();
        self.rollouts.retain(|name, _| names.contains(name));
        for name in self.metrics_policies() {
            if !names.contains(&name) {
                self.metrics.forget_policy(&name);
            }
        }
        for policy in &set {
            let limits = limits_of(policy);
            match self.rollouts.get_mut(policy.name()) {
                Some(r) => r.update(policy.revision().as_str(), limits),
                None => {
                    let mut r = PolicyRollout::new(
                        policy.name(),
                        policy.revision().as_str(),
                        limits,
                        self.config.rollout.clone(),
                    )
                    .with_max_calling(self.config.max_calling);
                    for entry in self.journal.entries(Some(policy.name()))? {
                        r.restore(&entry, now);
                    }
                    for pause in self.journal.pauses(Some(policy.name()))? {
                        r.restore_pause(pause.window(), now);
                    }
                    self.rollouts.insert(policy.name().to_owned(), r);
                }
            }
        }
        self.policies = set;
        Ok(())
    }

    fn metrics_policies(&self) -> Vec<String> {
        self.rollouts.keys().cloned().collect()
    }

    async fn apply_if_pending(&mut self) {
        if !self.apply_pending {
            return;
        }
        match apply::plan(&self.hub, &self.policies, &self.config.apply_options).await {
            Ok(plan) => {
                let summary = apply::execute(
                    &self.hub,
                    &self.policies,
                    &plan,
                    &self.config.apply_options,
                    &(),
                )
                .await;
                tracing::info!(
                    targeted = summary.targeted,
                    changed = summary.changed,
                    unchanged = summary.unchanged,
                    cleared = summary.cleared,
                    conflicts = summary.conflicts,
                    failed = summary.failed.len(),
                    "applied the policies"
                );
                self.stats.applies += 1;
                self.apply_pending = !summary.failed.is_empty();
            }
            Err(e) => {
                self.hub_error(&e, e.is_unavailable());
                tracing::warn!(error = %e, "could not apply the policies; retrying at the next pass");
            }
        }
    }

    /// Re-reads the policy files now. An invalid set is logged in full and the previous one
    /// kept. Returns whether a new set was installed.
    pub async fn reload(&mut self) -> Result<bool, RunError> {
        self.stamps = stamps(&self.config.policy_paths);
        match casement_policy::load(&self.config.policy_paths) {
            Ok(set) => {
                let revisions = |s: &PolicySet| -> Vec<(String, String)> {
                    s.iter()
                        .map(|p| (p.name().to_owned(), p.revision().as_str().to_owned()))
                        .collect()
                };
                let changed = revisions(&set) != revisions(&self.policies);
                tracing::info!(policies = set.len(), changed, "re-read the policy files");
                self.install(set)?;
                if changed && self.config.apply {
                    self.apply_pending = true;
                }
                self.apply_if_pending().await;
                Ok(changed)
            }
            Err(diagnostics) => {
                for d in &diagnostics {
                    tracing::error!("{d}");
                }
                tracing::error!(
                    errors = diagnostics.len(),
                    "the policy files are invalid; keeping the previous policies"
                );
                Ok(false)
            }
        }
    }

    /// One pass: reload if the files changed, retry a pending apply, then observe every policy's
    /// candidates and in-flight devices and execute what the rollouts decide.
    pub async fn pass(&mut self) -> Result<(), RunError> {
        let started = tokio::time::Instant::now();
        if stamps(&self.config.policy_paths) != self.stamps {
            self.reload().await?;
        } else {
            self.apply_if_pending().await;
        }
        let names: Vec<String> = self.rollouts.keys().cloned().collect();
        self.pass_pages = 0;
        for name in names {
            self.pass_policy(&name).await?;
        }
        self.stats.passes += 1;
        self.metrics.tick(started.elapsed());
        self.metrics.pass_pages(self.pass_pages);
        self.end_pass_throttle();
        self.snapshot(false).await?;
        Ok(())
    }

    /// One policy's share of a pass, costing what it can act on:
    ///
    /// 1. the twins of its devices in flight are read one by one (strongly consistent; at most
    ///    `max_concurrent`), oldest accepted first, and each batch of `read_concurrency` reads
    ///    is acted on as it returns — only these confirm a completion, and a slot one frees
    ///    starts the queue's next device while the rest are read;
    /// 2. when an invocation can start, one `SELECT TOP k` candidate query asks for devices that
    ///    report themselves due (`window.due`), `k` from [`PolicyRollout::candidates_wanted`];
    ///    answers about devices in flight are ignored (the twin reads are fresher), so a query
    ///    that lags can neither confirm nor repeat anything — the journal decides.
    async fn pass_policy(&mut self, name: &str) -> Result<(), RunError> {
        let Some(policy) = self.policies.get(name).cloned() else {
            return Ok(());
        };
        let now = self.clock.now();
        let follow: Vec<String> = match self.rollouts.get(name) {
            Some(r) => r.to_follow(now).into_iter().map(str::to_owned).collect(),
            None => return Ok(()),
        };
        let mut zones: HashMap<Option<Tz>, Option<Window>> = HashMap::new();
        let mut observe = |view: &TwinView| -> Observation {
            let zone = view.device_zone();
            let window = *zones
                .entry(zone)
                .or_insert_with(|| fleet::scheduler_window(policy.window(), zone, now));
            view.observation_with(window)
        };
        // Completions first: the slots they free are what the candidate query asks for. They
        // are acted on a batch of reads at a time (oldest accepted first), so a slot freed by
        // the first reads starts the next device of the queue while the rest are read.
        for batch in follow.chunks(self.config.read_concurrency.max(1)) {
            let followed = self.read_twins(batch).await?;
            let observations: Vec<Observation> = followed.iter().map(&mut observe).collect();
            let actions = match self.rollouts.get_mut(name) {
                Some(r) => r.observe(now, &observations, false),
                None => return Ok(()),
            };
            self.execute(actions).await?;
        }
        let mut actions = Vec::new();
        let wanted = self
            .rollouts
            .get(name)
            .map_or(0, |r| r.candidates_wanted(now, self.config.query_lag));
        let mut views: Vec<TwinView> = Vec::new();
        let mut complete = false;
        if wanted > 0 {
            let sql = fleet::candidates_query(name, wanted);
            self.stats.candidate_queries += 1;
            let hub = self.hub.clone();
            // The query may wait for the tier's query quota: calls that return meanwhile start
            // the next devices of the queue.
            let result = self
                .while_calls(async move { hub.query(&sql).await })
                .await?;
            self.note_call("query", status_of(&result));
            match result {
                Ok(items) => {
                    // What the hub meters: pages of at most 100 items (one when k <= 100).
                    self.pass_pages += (items.len() as u64).div_ceil(100).max(1);
                    complete = items.len() < wanted as usize;
                    self.stats.candidates += items.len() as u64;
                    views = items
                        .iter()
                        .filter_map(|item| TwinView::from_candidate(item).ok())
                        .collect();
                }
                Err(e) => {
                    self.hub_error(&e, e.is_unavailable());
                    tracing::warn!(policy = name, error = %e, "candidate query failed; retrying at the next pass");
                }
            }
        }
        let in_flight: BTreeSet<String> = self
            .rollouts
            .get(name)
            .map(|r| r.in_flight().map(|(id, _)| id.to_owned()).collect())
            .unwrap_or_default();
        let candidates: Vec<Observation> = views
            .iter()
            .filter(|v| !in_flight.contains(&v.device_id))
            .map(&mut observe)
            .collect();
        if let Some(r) = self.rollouts.get_mut(name) {
            actions.extend(r.observe(now, &candidates, complete));
        }
        self.execute(actions).await?;
        self.update_gauges(name);
        Ok(())
    }

    /// Awaits `work` (a hub call of the pass) while handling the reboot calls that return
    /// meanwhile, so a pass waiting for the tier's quotas never stalls the calls: each answer
    /// lets the rollout start the next device of its queue at once (`PolicyRollout::invoked`).
    async fn while_calls<T>(&mut self, work: impl Future<Output = T>) -> Result<T, RunError> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return Ok(out),
                Some(joined) = self.calls.join_next(), if !self.calls.is_empty() => {
                    self.on_join(joined).await?;
                }
            }
        }
    }

    /// Reads twins one by one (bounded concurrency); failures are logged and skipped.
    async fn read_twins(&mut self, devices: &[String]) -> Result<Vec<TwinView>, RunError> {
        let mut out = Vec::with_capacity(devices.len());
        let mut tasks = JoinSet::new();
        let mut pending = devices.iter().cloned();
        loop {
            while tasks.len() < self.config.read_concurrency.max(1) {
                let Some(id) = pending.next() else { break };
                let hub = self.hub.clone();
                tasks.spawn(async move {
                    let result = hub.get_twin(&id).await;
                    (id, result)
                });
            }
            let joined = self.while_calls(tasks.join_next()).await?;
            if let Some(Ok((_, result))) = &joined {
                self.note_call("twin_read", status_of(result));
            }
            match joined {
                Some(Ok((_, Ok(twin)))) => {
                    self.stats.twin_reads += 1;
                    out.push(TwinView::from_twin(&twin));
                }
                Some(Ok((id, Err(e)))) => {
                    self.hub_error(&format!("{id}: {e}"), e.is_unavailable());
                    tracing::warn!(device = %id, error = %e, "cannot read the twin of a device in flight");
                }
                Some(Err(e)) => tracing::warn!(error = %e, "twin read task failed"),
                None => break,
            }
        }
        Ok(out)
    }

    fn update_gauges(&self, name: &str) {
        if let Some(r) = self.rollouts.get(name) {
            self.metrics
                .policy_state(name, r.in_flight_count(), r.paused().next().is_some());
        }
    }

    /// Executes a batch of actions: records and pauses first, then the intents of the
    /// invocations (one flush), then the calls.
    async fn execute(&mut self, actions: Vec<Action>) -> Result<(), RunError> {
        let now = self.clock.now();
        let mut records: Vec<Entry> = Vec::new();
        let mut invocations: Vec<Invocation> = Vec::new();
        for action in actions {
            match action {
                Action::Record(entry) => {
                    match &entry.state {
                        crate::rollout::EntryState::Completed => {
                            self.stats.completed += 1;
                            self.metrics.reboot(&entry.policy, "completed");
                        }
                        crate::rollout::EntryState::Failed(reason) => {
                            self.stats.failed += 1;
                            self.metrics.reboot(&entry.policy, "failed");
                            tracing::warn!(policy = %entry.policy, device = %entry.device, occurrence = %entry.occurrence, %reason, "reboot failed");
                        }
                        _ => {}
                    }
                    records.push(entry);
                }
                Action::Pause {
                    policy,
                    window,
                    failures,
                    devices,
                    budget,
                } => {
                    self.stats.pauses += 1;
                    tracing::warn!(
                        %policy, occurrence = %window.occurrence, failures, devices, %budget,
                        "failure budget exceeded: pausing this window until the next one"
                    );
                    self.journal
                        .record_pause(&PauseRecord {
                            policy,
                            occurrence: window.occurrence,
                            closes_at: window.closes_at,
                            failures,
                            devices,
                            budget: budget.to_string(),
                            at: now,
                        })
                        .await?;
                }
                Action::Closed { policy, summary } => {
                    tracing::info!(
                        %policy,
                        occurrence = ?summary.occurrence,
                        devices = summary.devices,
                        completed = summary.completed,
                        failed = summary.failed,
                        not_reached = summary.not_reached,
                        paused = summary.paused,
                        "window closed"
                    );
                }
                Action::Invoke(inv) => invocations.push(inv),
            }
        }
        self.journal.record_all(&records).await?;
        if self.draining {
            // Stopping: nothing new starts (the rollout's in-memory state goes with us; the
            // journal never heard of these).
            return Ok(());
        }
        let intents: Vec<Entry> = invocations
            .iter()
            .filter_map(|inv| self.rollouts.get(&inv.policy).map(|r| r.intent(inv, now)))
            .collect();
        // Durable before any call is made.
        self.journal.record_all(&intents).await?;
        for inv in invocations {
            self.spawn_call(inv);
        }
        Ok(())
    }

    fn spawn_call(&mut self, inv: Invocation) {
        let Some(policy) = self.policies.get(&inv.policy) else {
            return;
        };
        let timeout = policy
            .reboot()
            .method_timeout
            .as_secs()
            .clamp(MIN_RESPONSE_TIMEOUT_SECS, MAX_RESPONSE_TIMEOUT_SECS);
        let payload = serde_json::to_value(RebootRequest {
            policy: inv.policy.clone(),
            revision: inv.revision.clone(),
            occurrence: inv.window.occurrence,
        })
        .unwrap_or(Value::Null);
        let request = MethodRequest::new(REBOOT_METHOD, payload, timeout);
        let hub = self.hub.clone();
        self.stats.invocations += 1;
        tracing::debug!(policy = %inv.policy, device = %inv.device, occurrence = %inv.window.occurrence, attempt = inv.attempt, "invoking reboot");
        self.calls.spawn(async move {
            let result = hub.invoke_method(&inv.device, &request).await;
            CallResult {
                policy: inv.policy,
                device: inv.device,
                window: inv.window,
                outcome: classify(&result),
                status: status_of(&result),
            }
        });
    }

    /// Counts one call's outcome and hands it to its rollout; returns what the rollout decides.
    fn on_call(&mut self, result: CallResult) -> Vec<Action> {
        let now = self.clock.now();
        self.note_call("method", result.status);
        self.metrics
            .invocation(&result.policy, outcome_label(&result.outcome));
        match &result.outcome {
            MethodOutcome::Accepted => self.stats.accepted += 1,
            MethodOutcome::AlreadyDone => self.stats.already_done += 1,
            MethodOutcome::Refused(refusal) => {
                self.stats.refused += 1;
                tracing::warn!(policy = %result.policy, device = %result.device, reason = %refusal.reason, message = %refusal.message, "reboot refused");
            }
            MethodOutcome::Offline => self.stats.offline += 1,
            MethodOutcome::Throttled => self.stats.throttled += 1,
            MethodOutcome::MayHaveRun(e) => {
                self.stats.may_have_run += 1;
                tracing::warn!(policy = %result.policy, device = %result.device, error = %e, "reboot call timed out: the device may have rebooted; following its twin");
            }
            MethodOutcome::Error(e) => {
                self.stats.errors += 1;
                tracing::warn!(policy = %result.policy, device = %result.device, error = %e, "reboot invocation failed");
            }
        }
        match self.rollouts.get_mut(&result.policy) {
            Some(r) => r.invoked(now, &result.device, result.window, result.outcome),
            None => Vec::new(),
        }
    }

    /// Handles a returned call and every other call that has returned by now, as one batch:
    /// their records, and the intents of the devices they let start, are journaled with one
    /// flush each (a wave of answers is not a flush per answer).
    async fn on_join(
        &mut self,
        joined: Result<CallResult, tokio::task::JoinError>,
    ) -> Result<(), RunError> {
        let mut batch = vec![joined];
        while let Some(more) = self.calls.try_join_next() {
            batch.push(more);
        }
        let mut actions = Vec::new();
        let mut policies = BTreeSet::new();
        for joined in batch {
            match joined {
                Ok(result) => {
                    policies.insert(result.policy.clone());
                    actions.extend(self.on_call(result));
                }
                Err(e) => tracing::error!(error = %e, "a reboot call task failed"),
            }
        }
        self.execute(actions).await?;
        for policy in policies {
            self.update_gauges(&policy);
        }
        Ok(())
    }

    /// Waits for every call under way and records its outcome (outcomes may start more calls,
    /// which are awaited too).
    pub async fn settle(&mut self) -> Result<(), RunError> {
        while let Some(joined) = self.calls.join_next().await {
            self.on_join(joined).await?;
        }
        self.snapshot(true).await?;
        Ok(())
    }

    /// Time passes without a pass: completion timeouts, retries and per-minute capacity.
    pub async fn tick(&mut self) -> Result<(), RunError> {
        let now = self.clock.now();
        let names: Vec<String> = self.rollouts.keys().cloned().collect();
        for name in names {
            let actions = self
                .rollouts
                .get_mut(&name)
                .map(|r| r.tick(now))
                .unwrap_or_default();
            self.execute(actions).await?;
        }
        Ok(())
    }

    /// Writes the journal snapshot for `casement report` if the journal changed since the last
    /// one: at most once a [`SNAPSHOT_INTERVAL`] unless `force`d (settling, stopping). Written on
    /// the blocking pool (it reads the whole journal and fsyncs), with call answers handled
    /// meanwhile.
    async fn snapshot(&mut self, force: bool) -> Result<(), RunError> {
        let generation = self.journal.generation();
        if self.snapshot_generation == Some(generation)
            || (!force
                && self
                    .snapshot_at
                    .is_some_and(|at| at.elapsed() < SNAPSHOT_INTERVAL))
        {
            return Ok(());
        }
        let journal = self.journal.clone();
        let now = self.clock.now();
        let written = self
            .while_calls(tokio::task::spawn_blocking(move || {
                journal.write_snapshot(now)
            }))
            .await?;
        self.snapshot_at = Some(tokio::time::Instant::now());
        match written {
            Ok(Ok(())) => self.snapshot_generation = Some(generation),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot write the journal snapshot for reports")
            }
            Err(e) => tracing::warn!(error = %e, "the journal snapshot task failed"),
        }
        Ok(())
    }

    /// `--once`: one pass, then wait for the calls it started.
    pub async fn once(mut self) -> Result<RunStats, RunError> {
        self.pass().await?;
        self.settle().await?;
        if self.stats.hub_errors > 0 {
            return Err(RunError::Hub {
                errors: self.stats.hub_errors,
                first: self.hub_errors.first.take().unwrap_or_default(),
                unavailable: !self.hub_errors.refused,
            });
        }
        Ok(self.stats)
    }

    /// Counts a call to the hub in the metrics and notes a 429.
    fn note_call(&mut self, op: &'static str, status: Option<u16>) {
        self.metrics.hub_call(op, status);
        if status == Some(429) {
            self.pass_throttled = true;
        }
    }

    /// At the end of a pass: a throttle that lasts [`PERSISTENT_THROTTLE_PASSES`] passes is
    /// logged once, with what to do; a pass without 429 ends it.
    fn end_pass_throttle(&mut self) {
        let throttled = std::mem::take(&mut self.pass_throttled);
        match self.throttle.end_pass(throttled) {
            ThrottleNotice::Persistent { passes } => tracing::warn!(
                passes,
                tick = ?self.config.tick,
                "{PERSISTENT_THROTTLE_ADVICE}"
            ),
            ThrottleNotice::Ended => tracing::info!("the hub no longer throttles the run loop"),
            ThrottleNotice::None => {}
        }
    }

    /// Counts a failed call to the hub (the pass goes on; the next one retries it).
    fn hub_error(&mut self, error: &dyn std::fmt::Display, unavailable: bool) {
        self.stats.hub_errors += 1;
        self.hub_errors.refused |= !unavailable;
        if self.hub_errors.first.is_none() {
            self.hub_errors.first = Some(error.to_string());
        }
    }

    /// The loop: a pass every `tick`, call outcomes as they arrive, reloads on request, until
    /// a stop signal — then no new invocations, the calls under way are awaited and recorded
    /// (a second stop signal abandons them).
    pub async fn run(mut self, mut signals: Signals) -> Result<RunStats, RunError> {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop_requested = |rx: &watch::Receiver<u32>, n: u32| *rx.borrow() >= n;
        // Whether anyone can still signal a stop.
        let mut stop_open = true;
        loop {
            if stop_requested(&signals.stop, 1) {
                break;
            }
            tokio::select! {
                biased;
                changed = signals.stop.changed(), if stop_open => {
                    stop_open = changed.is_ok();
                }
                Some(()) = signals.reload.recv() => {
                    self.reload().await?;
                }
                Some(joined) = self.calls.join_next(), if !self.calls.is_empty() => {
                    self.on_join(joined).await?;
                }
                _ = ticker.tick() => {
                    self.pass().await?;
                }
            }
        }
        tracing::info!(
            calls = self.calls.len(),
            "stopping: no new reboots; waiting for the calls under way (stop again to abandon them)"
        );
        self.draining = true;
        loop {
            if stop_requested(&signals.stop, 2) {
                tracing::warn!(abandoned = self.calls.len(), "stopping now");
                self.calls.abort_all();
                break;
            }
            tokio::select! {
                changed = signals.stop.changed(), if stop_open => {
                    stop_open = changed.is_ok();
                }
                joined = self.calls.join_next() => match joined {
                    Some(joined) => self.on_join(joined).await?,
                    None => break,
                },
            }
        }
        self.snapshot(true).await?;
        Ok(self.stats)
    }
}

/// Runs `casement run` until `signals` stop it, with metrics served on `metrics_addr`.
pub async fn run_with_metrics<H: HubApi + Clone>(
    scheduler: Scheduler<H>,
    signals: Signals,
    metrics: Arc<Metrics>,
    metrics_addr: Option<std::net::SocketAddr>,
) -> Result<RunStats, RunError> {
    let mut stop = signals.stop.clone();
    let server = match metrics_addr {
        Some(addr) => {
            let shutdown = async move {
                let _ = stop.wait_for(|n| *n >= 1).await;
            };
            match crate::metrics::serve(addr, metrics, shutdown).await {
                Ok((bound, task)) => {
                    tracing::info!(%bound, "serving Prometheus metrics at /metrics");
                    Some(task)
                }
                Err(e) => {
                    return Err(RunError::Pass(format!(
                        "cannot serve metrics on {addr}: {e}"
                    )));
                }
            }
        }
        None => None,
    };
    let result = scheduler.run(signals).await;
    if let Some(task) = server {
        task.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use casement_iothub::error::ServiceError;
    use serde_json::json;

    fn answer(status: i32, payload: Value) -> Result<MethodResponse, ClientError> {
        Ok(MethodResponse { status, payload })
    }

    #[test]
    fn a_persistent_throttle_is_said_once_with_what_to_do_and_its_end_once() {
        let mut watch = ThrottleWatch::default();
        let notices: Vec<ThrottleNotice> = [
            false, true, true, true, true, true, false, false, true, true, true,
        ]
        .into_iter()
        .map(|throttled| watch.end_pass(throttled))
        .collect();
        use ThrottleNotice::{Ended, None, Persistent};
        assert_eq!(
            notices,
            [
                None,
                None,
                None,
                Persistent { passes: 3 },
                None,
                None,
                Ended,
                None,
                None,
                None,
                Persistent { passes: 3 },
            ]
        );
        for what in ["--units", "max_concurrent", "--tick"] {
            assert!(PERSISTENT_THROTTLE_ADVICE.contains(what), "{what}");
        }
    }

    #[test]
    fn agent_answers_are_classified() {
        assert_eq!(
            classify(&answer(200, json!({"accepted": true}))),
            MethodOutcome::Accepted
        );
        assert_eq!(
            classify(&answer(200, json!({"accepted": true, "alreadyDone": true}))),
            MethodOutcome::AlreadyDone
        );
        assert_eq!(
            classify(&answer(
                409,
                json!({"accepted": false, "reason": "outside-window"})
            )),
            MethodOutcome::Refused(Refusal::new(RefusalReason::OutsideWindow))
        );
        assert_eq!(
            classify(&answer(
                400,
                json!({"accepted": false, "reason": "malformed-payload", "message": "no occurrence"})
            )),
            MethodOutcome::Refused(Refusal {
                reason: RefusalReason::MalformedPayload,
                message: "no occurrence".into()
            })
        );
        assert!(matches!(
            classify(&answer(200, json!("Reboot started"))),
            MethodOutcome::Error(_)
        ));
        assert!(matches!(
            classify(&answer(500, Value::Null)),
            MethodOutcome::Error(_)
        ));
        let offline = Err(ClientError::Service {
            op: "POST".into(),
            error: ServiceError::parse(404, Some("DeviceNotOnline"), b""),
        });
        assert_eq!(classify(&offline), MethodOutcome::Offline);
        let timeout = Err(ClientError::Service {
            op: "POST".into(),
            error: ServiceError::parse(504, Some("GatewayTimeout"), b""),
        });
        assert!(matches!(classify(&timeout), MethodOutcome::MayHaveRun(_)));
        // The scheduler's own link: no answer in time may still have reached the device.
        let no_answer = Err(ClientError::Timeout {
            op: "POST".into(),
            after: std::time::Duration::from_secs(30),
        });
        assert!(matches!(classify(&no_answer), MethodOutcome::MayHaveRun(_)));
        let throttled = Err(ClientError::Service {
            op: "POST".into(),
            error: ServiceError::parse(429, Some("ThrottlingException"), b""),
        });
        assert_eq!(classify(&throttled), MethodOutcome::Throttled);
    }

    #[test]
    fn file_stamps_notice_edits_and_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        std::fs::write(&a, "x").unwrap();
        let paths = vec![dir.path().to_owned()];
        let before = stamps(&paths);
        assert_eq!(before, stamps(&paths));
        std::fs::write(&a, "xy").unwrap();
        assert_ne!(before, stamps(&paths));
        let after_edit = stamps(&paths);
        std::fs::write(dir.path().join("b.toml"), "x").unwrap();
        assert_ne!(after_edit, stamps(&paths));
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let with_b = stamps(&paths);
        assert_eq!(with_b.len(), 3, "the directory and two policy files");
    }
}
