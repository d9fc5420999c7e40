//! The per-policy rollout state: which devices to reboot now, within the rollout limits.
//!
//! Pure: no I/O, no clock reads, no tokio. [`PolicyRollout`] takes events — what the twins show
//! ([`PolicyRollout::observe`]), how a `reboot` invocation ended ([`PolicyRollout::invoked`]),
//! what the journal remembers after a restart ([`PolicyRollout::restore`]) — and returns
//! [`Action`]s: invoke `reboot` on a device, record an outcome in the journal, pause an
//! occurrence, note a closed occurrence. The run loop ([`crate::run`]) executes the actions and
//! feeds the results back; it never decides anything itself (rumqttc `state.rs`).
//!
//! # Rules
//! - A device is a *candidate* in an occurrence when its reported `maintenance` names this policy
//!   and revision with status `applied` and an open window; the scheduler's own window math
//!   (passed in as [`Observation::window`]) agrees that the same occurrence is open, with the
//!   clock-skew allowance on both ends; it has not rebooted in the occurrence (`lastReboot`
//!   before it, no `occurrence` match); the journal has no outcome for it; and at least
//!   `expected_duration` (plus the skew) is left.
//! - *In flight* are devices being invoked, accepted and not yet completed, and journal entries
//!   whose outcome is not known yet. At most `max_concurrent` per policy, across occurrences.
//! - At most `max_per_minute` invocations in any 60-second interval, per policy.
//! - *Failures* — refusals, method errors, reboots reported failed, no completion within
//!   `completion_timeout` — are counted per occurrence; past `max_failures` the occurrence is
//!   paused: nothing new is invoked until the next window. In-flight devices are still followed.
//! - An offline device (404103) is retried, with a growing delay, while enough window is left;
//!   being offline is not a failure.
//! - A method error is retried up to [`RolloutConfig::max_attempts`]; a refusal is final (the
//!   agent said why; asking again would get the same answer).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

/// One window occurrence, as UTC instants: `opens_at` (also the occurrence id) to `closes_at`.
pub use casement_policy::window::Window;

use casement_iothub::rest::MAX_QUERY_PAGE_SIZE;
use casement_policy::{MaxFailures, RebootStatus, RefusalReason};

/// A policy's rollout limits and reboot timing.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutLimits {
    /// Devices invoked or rebooting at once.
    pub max_concurrent: u32,
    /// Invocations in any 60-second interval.
    pub max_per_minute: u32,
    /// Failures tolerated per occurrence.
    pub max_failures: MaxFailures,
    /// Never start a reboot with less than this left in the window.
    pub expected_duration: Duration,
}

/// Scheduler-wide tuning of the rollout, the same for every policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// How far a device's clock may be from the scheduler's. The scheduler starts invoking this
    /// long after a window opens and stops this much earlier than it must.
    pub clock_skew: Duration,
    /// How long after acceptance a reboot must be seen completed in the twin, on top of the
    /// policy's `expected_duration`; later counts as a failure.
    pub completion_grace: Duration,
    /// First delay before re-invoking an offline device; doubles up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest delay between attempts.
    pub retry_max: Duration,
    /// Invocations per device and occurrence that end in a method error before giving up.
    pub max_attempts: u32,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            clock_skew: Duration::from_secs(5),
            completion_grace: Duration::from_secs(120),
            retry_initial: Duration::from_secs(15),
            retry_max: Duration::from_secs(300),
            max_attempts: 3,
        }
    }
}

/// The reported facts about one device that the rollout looks at, taken from its twin.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The device id.
    pub device_id: String,
    /// `reported.maintenance.policy`.
    pub policy: Option<String>,
    /// `reported.maintenance.revision`.
    pub revision: Option<String>,
    /// `reported.maintenance.status == "applied"`.
    pub applied: bool,
    /// `reported.maintenance.window.open`.
    pub window_open: bool,
    /// `reported.maintenance.window.opensAt`.
    pub window_opens_at: Option<DateTime<Utc>>,
    /// `reported.iothubDM.reboot.lastReboot`.
    pub last_reboot: Option<DateTime<Utc>>,
    /// `reported.iothubDM.reboot.status`.
    pub reboot_status: Option<RebootStatus>,
    /// `reported.iothubDM.reboot.occurrence`.
    pub reboot_occurrence: Option<DateTime<Utc>>,
    /// The scheduler's own answer for this device's zone at the observation instant: the window
    /// open now or the next one (`None` when the zone is unknown or no window ever opens).
    pub window: Option<Window>,
}

impl Observation {
    /// Whether the twin shows a reboot for the occurrence opening at `occurrence`, and its
    /// status (`Rebooting` while under way; `None` when the twin names none).
    fn reboot_in(&self, occurrence: DateTime<Utc>) -> Option<Option<RebootStatus>> {
        let same = self.reboot_occurrence == Some(occurrence)
            || self.last_reboot.is_some_and(|t| t >= occurrence);
        if same { Some(self.reboot_status) } else { None }
    }
}

/// How a `reboot` invocation ended, as the method call saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "detail")]
pub enum MethodOutcome {
    /// 200, `accepted: true`: the device is rebooting.
    Accepted,
    /// 200, `alreadyDone: true`: the device had already rebooted for this occurrence.
    AlreadyDone,
    /// The agent refused (409, or 400 for a payload it could not read), with its reason.
    Refused(Refusal),
    /// 404103: the device is not connected.
    Offline,
    /// 504101 (GatewayTimeout): the device did not answer in time — but it may have received
    /// the call and rebooted (a socket that died silently). Not a failure: the device keeps its
    /// slot, is journaled "may have run", and only its twin (or, when re-invoked, its
    /// `alreadyDone`) tells; counted as a failed attempt only when `max_attempts` run out.
    MayHaveRun(String),
    /// 429: the hub refused the call before it reached the device (over a quota). Retried
    /// after a backoff without counting as a failure or an attempt: the device never heard it.
    Throttled,
    /// Anything else: a timeout, a server error after retries, a malformed answer.
    Error(String),
}

/// A refused reboot: the agent's reason, and what it said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// The machine-readable reason.
    pub reason: RefusalReason,
    /// The agent's message.
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{} ({})", self.reason, self.message)
        }
    }
}

impl Refusal {
    /// A refusal with no message (tests).
    pub fn new(reason: RefusalReason) -> Self {
        Self {
            reason,
            message: String::new(),
        }
    }
}

/// What the journal holds for one (policy, device, occurrence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state", content = "detail")]
pub enum EntryState {
    /// Journaled before the call; whether the call reached the device is unknown.
    Invoking,
    /// The device accepted; completion not seen yet.
    Accepted,
    /// The twin shows the reboot completed (or the device said it already had).
    Completed,
    /// The device was offline at the last attempt.
    Offline,
    /// The last attempt ended in a method error (retried while attempts are left).
    Error(String),
    /// The last attempt timed out at the hub (504101): the device may have rebooted. Followed
    /// by twin reads; re-invoked (the agent answers `alreadyDone` if it did) after a backoff.
    MayHaveRun(String),
    /// Final failure: refused, reboot failed, timed out, attempts exhausted.
    Failed(String),
}

impl EntryState {
    /// Whether the scheduler knows how this ended (nothing left to do or to resolve).
    pub fn is_final(&self) -> bool {
        matches!(self, EntryState::Completed | EntryState::Failed(_))
    }
}

/// One journal record, as the rollout sees it (the journal stores exactly this).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The policy name.
    pub policy: String,
    /// The device id.
    pub device: String,
    /// The occurrence (the window's `opens_at`).
    pub occurrence: DateTime<Utc>,
    /// When the window closes.
    pub closes_at: DateTime<Utc>,
    /// The policy revision invoked with.
    pub revision: String,
    /// Invocations so far.
    pub attempts: u32,
    /// Failures counted against the budget for this device (0 or more).
    pub failures: u32,
    /// When the last invocation was journaled.
    pub invoked_at: Option<DateTime<Utc>>,
    /// When the device accepted.
    pub accepted_at: Option<DateTime<Utc>>,
    /// Where it stands.
    pub state: EntryState,
    /// When this record was last written.
    pub updated_at: DateTime<Utc>,
}

/// A reboot invocation the loop must perform: journal (and flush) first, then call.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// The policy name.
    pub policy: String,
    /// The policy revision (part of the method payload).
    pub revision: String,
    /// The device to invoke.
    pub device: String,
    /// The window occurrence (its `opens_at` goes in the payload).
    pub window: Window,
    /// Which attempt this is (1 = first).
    pub attempt: u32,
}

/// What the rollout asks the loop to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Journal the intent and flush, then invoke `reboot`, then report back with
    /// [`PolicyRollout::invoked`].
    Invoke(Invocation),
    /// Write this record to the journal (an outcome seen in a twin, a timeout, a method result).
    Record(Entry),
    /// The occurrence exceeded its failure budget: log it, journal it; nothing more is invoked
    /// in it.
    Pause {
        /// The policy name.
        policy: String,
        /// The occurrence paused.
        window: Window,
        /// Failures counted.
        failures: u32,
        /// Devices in the occurrence.
        devices: u32,
        /// The budget exceeded.
        budget: MaxFailures,
    },
    /// An occurrence is over (window closed, nothing in flight): for the log and metrics.
    Closed {
        /// The policy name.
        policy: String,
        /// Its summary.
        summary: OccurrenceSummary,
    },
}

/// Counts for one occurrence of one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OccurrenceSummary {
    /// The occurrence (window opens).
    pub occurrence: Option<DateTime<Utc>>,
    /// Devices that were candidates in it.
    pub devices: u32,
    /// Rebooted (or already done).
    pub completed: u32,
    /// Failed for good.
    pub failed: u32,
    /// Never invoked or never reached: offline to the end, paused, or out of time.
    pub not_reached: u32,
    /// Failures counted against the budget.
    pub failures: u32,
    /// Whether the budget paused it.
    pub paused: bool,
}

/// Where one device stands in its current occurrence.
#[derive(Debug, Clone, PartialEq)]
enum DeviceState {
    /// A candidate waiting for capacity.
    Eligible,
    /// Waiting to be retried (offline, or after a method error) until the instant.
    Retry { at: DateTime<Utc> },
    /// Journaled and being invoked (in flight).
    Invoking { at: DateTime<Utc> },
    /// Journaled earlier, outcome unknown after a restart (in flight until a twin resolves it).
    Unresolved { at: DateTime<Utc> },
    /// Accepted; completion not seen yet (in flight).
    Rebooting { accepted_at: DateTime<Utc> },
    /// Accepted, and no completion within the completion timeout: counted as a failure, but
    /// the device may still be down, so it keeps its `max_concurrent` slot until the twin shows
    /// it back (completed or failed) or its window closes and the completion bound passes.
    TimedOut,
    /// Done for this occurrence, one way or the other.
    Done { completed: bool },
}

impl DeviceState {
    fn in_flight(&self) -> bool {
        matches!(
            self,
            DeviceState::Invoking { .. }
                | DeviceState::Unresolved { .. }
                | DeviceState::Rebooting { .. }
                | DeviceState::TimedOut
        )
    }
}

#[derive(Debug, Clone)]
struct DeviceRollout {
    window: Window,
    state: DeviceState,
    attempts: u32,
    errors: u32,
    failures: u32,
    offline_streak: u32,
    invoked_at: Option<DateTime<Utc>>,
    accepted_at: Option<DateTime<Utc>>,
    detail: EntryState,
}

#[derive(Debug, Clone)]
struct OccurrenceState {
    window: Window,
    failures: u32,
    paused: bool,
}

/// The rollout of one policy revision: the devices in their current occurrences, the
/// invocations of the last minute, the failure count of each occurrence.
#[derive(Debug, Clone)]
pub struct PolicyRollout {
    policy: String,
    revision: String,
    limits: RolloutLimits,
    config: RolloutConfig,
    devices: BTreeMap<String, DeviceRollout>,
    occurrences: BTreeMap<DateTime<Utc>, OccurrenceState>,
    recent: VecDeque<DateTime<Utc>>,
    max_calling: u32,
    /// The shortest time from acceptance to a completion seen ([`Self::to_follow`]).
    fastest_reboot: Option<TimeDelta>,
}

const MINUTE: TimeDelta = TimeDelta::seconds(60);

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// The delay before attempt `attempts + 1`: `retry_initial` doubling per attempt, capped.
fn backoff(config: &RolloutConfig, attempts: u32) -> TimeDelta {
    let initial = delta(config.retry_initial);
    let max = delta(config.retry_max);
    let factor = 1i32 << attempts.saturating_sub(1).min(16);
    initial.checked_mul(factor).unwrap_or(max).min(max)
}

impl PolicyRollout {
    /// A rollout with nothing in flight.
    pub fn new(
        policy: impl Into<String>,
        revision: impl Into<String>,
        limits: RolloutLimits,
        config: RolloutConfig,
    ) -> Self {
        Self {
            policy: policy.into(),
            revision: revision.into(),
            limits,
            config,
            devices: BTreeMap::new(),
            occurrences: BTreeMap::new(),
            recent: VecDeque::new(),
            max_calling: u32::MAX,
            fastest_reboot: None,
        }
    }

    /// Starts at most `calls` invocations that are not answered yet (unlimited by default):
    /// the hub's direct-method quota's worth of a couple of seconds
    /// ([`crate::run::max_calling_for`]). The devices past it wait in this rollout's own queue
    /// (eligible) rather than in the client's throttle, where they would still report
    /// themselves due and crowd new devices out of the candidate query.
    pub fn with_max_calling(mut self, calls: u32) -> Self {
        self.max_calling = calls.max(1);
        self
    }

    /// The policy name.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// The revision being rolled out.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// The limits in force.
    pub fn limits(&self) -> &RolloutLimits {
        &self.limits
    }

    /// Takes over a new revision or new limits of the same policy (a policy file changed): what is
    /// in flight stays in flight and counted; candidates are re-checked at the next observation.
    pub fn update(&mut self, revision: impl Into<String>, limits: RolloutLimits) {
        let revision = revision.into();
        if revision != self.revision {
            self.devices
                .retain(|_, d| d.state.in_flight() || matches!(d.state, DeviceState::Done { .. }));
            self.revision = revision;
        }
        self.limits = limits;
    }

    /// Devices whose outcome the loop should look for in their twins (in flight), with the
    /// occurrence they are in.
    pub fn in_flight(&self) -> impl Iterator<Item = (&str, &Window)> {
        self.devices
            .iter()
            .filter(|(_, d)| d.state.in_flight())
            .map(|(id, d)| (id.as_str(), &d.window))
    }

    /// Devices in flight whose outcome only their twins can tell (accepted, timed out, or
    /// journaled before a restart) — not those whose call is still under way. The run loop
    /// reads these twins one by one, in batches, every pass (strongly consistent, bounded by
    /// `max_concurrent`); a query, which may lag, never confirms a completion.
    ///
    /// A device accepted at `t` is not read before `t + ¾ ×` the fastest reboot this rollout
    /// has seen completed (accepted to seen completed): a device that cannot be back yet is
    /// not worth a twin read (S1 allows 100 a second, and a pass waits for its reads). This
    /// only delays noticing a completion, never decides one; until one is seen, every device is
    /// read every pass.
    ///
    /// Oldest accepted first (those with no acceptance on record, already overdue, before
    /// them): the run loop reads them in that order and acts on each batch of answers, so the
    /// devices most likely back are noticed first.
    pub fn to_follow(&self, now: DateTime<Utc>) -> Vec<&str> {
        let not_before = self.fastest_reboot.map(|fastest| fastest * 3 / 4);
        let mut follow: Vec<(Option<DateTime<Utc>>, &str)> = self
            .devices
            .iter()
            .filter(move |(_, d)| match d.state {
                DeviceState::Invoking { .. } => false,
                DeviceState::Rebooting { accepted_at } => {
                    not_before.is_none_or(|wait| now >= accepted_at + wait)
                }
                _ => d.state.in_flight(),
            })
            .map(|(id, d)| (d.accepted_at, id.as_str()))
            .collect();
        follow.sort_unstable();
        follow.into_iter().map(|(_, id)| id).collect()
    }

    /// How many invocations may start at `now`: free `max_concurrent` slots, and what is left
    /// of the per-minute budget, whichever is smaller.
    pub fn capacity(&self, now: DateTime<Utc>) -> u32 {
        let slots = self
            .limits
            .max_concurrent
            .saturating_sub(self.in_flight_count());
        let last_minute = self.recent.iter().filter(|t| now - **t < MINUTE).count();
        let per_minute = (self.limits.max_per_minute as usize).saturating_sub(last_minute);
        slots.min(u32::try_from(per_minute).unwrap_or(u32::MAX))
    }

    /// How many devices the candidate query should ask for at `now` (its `TOP`): 0 when no
    /// invocation can start, or when the devices already waiting in the rollout's own queue
    /// (eligible, or retrying now) fill every free slot — a query is then spent for nothing.
    /// Otherwise [`capacity`](Self::capacity) plus every device a query answering up to `lag`
    /// late may still show as due although this rollout already knows it — in flight, invoked
    /// within `lag`, or waiting — so known devices never crowd new ones out of the answer,
    /// rounded up to whole pages of [`MAX_QUERY_PAGE_SIZE`]: the hub meters pages, not rows, so
    /// the rest of the last page is free, and the devices it brings wait in the queue for the
    /// next free slots (a query once every page's worth of starts, not once a pass). A stale
    /// entry in that queue is harmless: the journal never calls a device twice in an
    /// occurrence and an agent that rebooted answers `alreadyDone`. Bounded by the limits and
    /// the page size, not by the fleet.
    pub fn candidates_wanted(&self, now: DateTime<Utc>, lag: Duration) -> u32 {
        let capacity = self.capacity(now);
        if capacity == 0 || self.ready_count(now) >= capacity {
            return 0;
        }
        let since = now - delta(lag);
        let known = self
            .devices
            .values()
            .filter(|d| {
                d.state.in_flight()
                    || matches!(d.state, DeviceState::Eligible | DeviceState::Retry { .. })
                    || d.invoked_at.is_some_and(|t| t >= since)
            })
            .count();
        let wanted = capacity.saturating_add(u32::try_from(known).unwrap_or(u32::MAX));
        let page = u32::try_from(MAX_QUERY_PAGE_SIZE).unwrap_or(u32::MAX);
        wanted.div_ceil(page).saturating_mul(page)
    }

    /// Devices waiting in the rollout's queue that [`plan`](Self::plan) may start at `now`
    /// (eligible, or due for a retry, in an occurrence not paused, with time left).
    fn ready_count(&self, now: DateTime<Utc>) -> u32 {
        let ready = self
            .devices
            .values()
            .filter(|d| self.startable(d, now))
            .count();
        u32::try_from(ready).unwrap_or(u32::MAX)
    }

    /// Whether `d` waits to be started and may be at `now`.
    fn startable(&self, d: &DeviceRollout, now: DateTime<Utc>) -> bool {
        let waiting = match d.state {
            DeviceState::Eligible => true,
            DeviceState::Retry { at } => at <= now,
            _ => false,
        };
        waiting
            && !self
                .occurrences
                .get(&d.window.occurrence)
                .is_some_and(|o| o.paused)
            && self.time_left(&d.window, now)
    }

    /// How many devices are in flight.
    pub fn in_flight_count(&self) -> u32 {
        u32::try_from(
            self.devices
                .values()
                .filter(|d| d.state.in_flight())
                .count(),
        )
        .unwrap_or(u32::MAX)
    }

    /// The occurrences paused by the failure budget (their windows).
    pub fn paused(&self) -> impl Iterator<Item = &Window> {
        self.occurrences
            .values()
            .filter(|o| o.paused)
            .map(|o| &o.window)
    }

    /// Whether nothing is tracked (no device, no occurrence).
    pub fn is_idle(&self) -> bool {
        self.devices.is_empty() && self.occurrences.is_empty()
    }

    /// Rebuilds the state from a journal record after a restart. Records of other policies and
    /// of occurrences that closed long ago (`closes_at + completion bound < now`) are ignored.
    pub fn restore(&mut self, entry: &Entry, now: DateTime<Utc>) {
        if entry.policy != self.policy || entry.closes_at + self.completion_bound() < now {
            return;
        }
        let window = Window {
            opens_at: entry.occurrence,
            closes_at: entry.closes_at,
            occurrence: entry.occurrence,
        };
        let occ = self.occurrence_mut(window);
        occ.failures = occ.failures.saturating_add(entry.failures);
        let state = match &entry.state {
            EntryState::Invoking => DeviceState::Unresolved {
                at: entry.invoked_at.unwrap_or(entry.updated_at),
            },
            EntryState::Accepted => DeviceState::Rebooting {
                accepted_at: entry.accepted_at.unwrap_or(entry.updated_at),
            },
            EntryState::Completed => DeviceState::Done { completed: true },
            EntryState::Failed(_) => DeviceState::Done { completed: false },
            EntryState::MayHaveRun(_) => DeviceState::Unresolved {
                at: entry.invoked_at.unwrap_or(entry.updated_at),
            },
            EntryState::Offline | EntryState::Error(_) => DeviceState::Retry {
                at: entry.updated_at + backoff(&self.config, entry.attempts),
            },
        };
        if let Some(at) = entry.invoked_at
            && now - at < MINUTE
            && at <= now
        {
            let pos = self.recent.partition_point(|t| *t <= at);
            self.recent.insert(pos, at);
        }
        let errors = if matches!(
            entry.state,
            EntryState::Error(_) | EntryState::MayHaveRun(_)
        ) {
            entry.failures
        } else {
            0
        };
        self.devices.insert(
            entry.device.clone(),
            DeviceRollout {
                window,
                state,
                attempts: entry.attempts,
                errors,
                failures: entry.failures,
                offline_streak: 0,
                invoked_at: entry.invoked_at,
                accepted_at: entry.accepted_at,
                detail: entry.state.clone(),
            },
        );
    }

    /// Restores a pause from the journal.
    pub fn restore_pause(&mut self, window: Window, now: DateTime<Utc>) {
        if window.closes_at + self.completion_bound() < now {
            return;
        }
        self.occurrence_mut(window).paused = true;
    }

    /// What the twins show at `now`. `complete` says whether `observations` hold every device
    /// that reports an open window for this policy (a full candidate query) — then candidates
    /// missing from it are dropped — or only some devices (twins read one by one).
    ///
    /// Returns the records to journal (completions, failures), pauses, and the invocations that
    /// fit the limits now.
    pub fn observe(
        &mut self,
        now: DateTime<Utc>,
        observations: &[Observation],
        complete: bool,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for obs in observations {
            seen.insert(obs.device_id.as_str());
            self.observe_one(now, obs, &mut actions);
        }
        if complete {
            self.devices.retain(|id, d| {
                seen.contains(id.as_str())
                    || !matches!(d.state, DeviceState::Eligible | DeviceState::Retry { .. })
            });
        }
        self.expire(now, &mut actions);
        self.plan(now, &mut actions);
        actions
    }

    /// The result of an [`Action::Invoke`] (after the journal write and the call).
    pub fn invoked(
        &mut self,
        now: DateTime<Utc>,
        device: &str,
        window: Window,
        outcome: MethodOutcome,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let config = self.config.clone();
        let max_attempts = config.max_attempts;
        let Some(dev) = self.devices.get_mut(device) else {
            return actions;
        };
        if dev.window != window || !matches!(dev.state, DeviceState::Invoking { .. }) {
            return actions;
        }
        let mut failed = false;
        match outcome {
            MethodOutcome::Accepted => {
                dev.state = DeviceState::Rebooting { accepted_at: now };
                dev.accepted_at = Some(now);
                dev.offline_streak = 0;
                dev.detail = EntryState::Accepted;
            }
            MethodOutcome::AlreadyDone => {
                dev.state = DeviceState::Done { completed: true };
                dev.detail = EntryState::Completed;
            }
            MethodOutcome::Refused(refusal) => {
                dev.state = DeviceState::Done { completed: false };
                dev.detail = EntryState::Failed(format!("refused: {refusal}"));
                failed = true;
            }
            MethodOutcome::MayHaveRun(message) => {
                dev.errors += 1;
                if dev.errors >= max_attempts {
                    dev.state = DeviceState::Done { completed: false };
                    dev.detail = EntryState::Failed(format!(
                        "may have run: {message} (after {} attempts)",
                        dev.errors
                    ));
                    failed = true;
                } else {
                    // In flight until a twin read (or alreadyDone) resolves it.
                    dev.state = DeviceState::Unresolved { at: now };
                    dev.detail = EntryState::MayHaveRun(message);
                }
            }
            MethodOutcome::Throttled => {
                dev.state = DeviceState::Retry {
                    at: now + backoff(&config, 1),
                };
                dev.detail = EntryState::Error("throttled by the hub (429); retrying".into());
            }
            MethodOutcome::Offline => {
                dev.offline_streak += 1;
                dev.state = DeviceState::Retry {
                    at: now + backoff(&config, dev.offline_streak),
                };
                dev.detail = EntryState::Offline;
            }
            MethodOutcome::Error(message) => {
                dev.errors += 1;
                failed = true;
                if dev.errors >= max_attempts {
                    dev.state = DeviceState::Done { completed: false };
                    dev.detail =
                        EntryState::Failed(format!("{message} (after {} attempts)", dev.errors));
                } else {
                    dev.state = DeviceState::Retry {
                        at: now + backoff(&config, dev.errors),
                    };
                    dev.detail = EntryState::Error(message);
                }
            }
        }
        if failed {
            dev.failures += 1;
        }
        let entry = self.entry(device, now);
        actions.extend(entry.map(Action::Record));
        if failed {
            self.count_failure(window, &mut actions);
        }
        self.expire(now, &mut actions);
        self.plan(now, &mut actions);
        actions
    }

    /// Time passes without news: completion timeouts, closed occurrences, retries and per-minute
    /// capacity that came due.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        let mut actions = Vec::new();
        self.expire(now, &mut actions);
        self.plan(now, &mut actions);
        actions
    }

    /// The earliest instant at which [`tick`](Self::tick) could do something new without new
    /// observations (a retry coming due, per-minute capacity freeing up, a timeout).
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        let bound = self.completion_bound();
        let mut next: Option<DateTime<Utc>> = None;
        let mut consider = |t: DateTime<Utc>| {
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        if self.recent.len() >= self.limits.max_per_minute as usize
            && let Some(first) = self.recent.front()
        {
            consider(*first + MINUTE);
        }
        for d in self.devices.values() {
            match d.state {
                DeviceState::Retry { at } => consider(at),
                DeviceState::Rebooting { accepted_at } => {
                    consider(accepted_at + self.completion_timeout())
                }
                _ => {}
            }
        }
        for o in self.occurrences.values() {
            consider(
                o.window
                    .closes_at
                    .checked_add_signed(bound)
                    .unwrap_or(o.window.closes_at),
            );
        }
        next
    }

    fn completion_timeout(&self) -> TimeDelta {
        delta(self.limits.expected_duration) + delta(self.config.completion_grace)
    }

    /// How long after a window closes its occurrence is still followed (reboots started near
    /// the end complete after it).
    fn completion_bound(&self) -> TimeDelta {
        self.completion_timeout() + delta(self.config.clock_skew)
    }

    fn occurrence_mut(&mut self, window: Window) -> &mut OccurrenceState {
        self.occurrences
            .entry(window.occurrence)
            .or_insert(OccurrenceState {
                window,
                failures: 0,
                paused: false,
            })
    }

    /// Whether a new invocation in `window` may start at `now`: far enough from both ends.
    fn time_left(&self, window: &Window, now: DateTime<Utc>) -> bool {
        let skew = delta(self.config.clock_skew);
        now >= window.opens_at + skew
            && now + delta(self.limits.expected_duration) + skew <= window.closes_at
    }

    fn observe_one(&mut self, now: DateTime<Utc>, obs: &Observation, actions: &mut Vec<Action>) {
        let candidate = self.is_candidate(now, obs);
        // A device done (or waiting) in an earlier occurrence that is a candidate in a later one
        // starts afresh.
        if let (Some(w), Some(dev)) = (candidate, self.devices.get(&obs.device_id))
            && w.occurrence > dev.window.occurrence
            && !dev.state.in_flight()
        {
            self.devices.remove(&obs.device_id);
        }
        if let Some(dev) = self.devices.get_mut(&obs.device_id) {
            let window = dev.window;
            // Follow a device already tracked in an occurrence.
            if let Some(status) = obs.reboot_in(window.occurrence) {
                let mut failed = false;
                let changed = match (status, &dev.state) {
                    (_, DeviceState::Done { .. }) => false,
                    (Some(RebootStatus::Completed), DeviceState::TimedOut) => {
                        // Back after all: the slot is free; the failure stays counted.
                        dev.state = DeviceState::Done { completed: false };
                        true
                    }
                    (Some(RebootStatus::Completed), _) => {
                        if let DeviceState::Rebooting { accepted_at } = dev.state
                            && now > accepted_at
                        {
                            let took = now - accepted_at;
                            self.fastest_reboot =
                                Some(self.fastest_reboot.map_or(took, |f| f.min(took)));
                        }
                        dev.state = DeviceState::Done { completed: true };
                        dev.detail = EntryState::Completed;
                        true
                    }
                    (Some(RebootStatus::Failed), DeviceState::TimedOut) => {
                        dev.state = DeviceState::Done { completed: false };
                        true
                    }
                    (Some(RebootStatus::Failed), _) => {
                        dev.state = DeviceState::Done { completed: false };
                        dev.detail = EntryState::Failed("reboot failed on the device".into());
                        dev.failures += 1;
                        failed = true;
                        true
                    }
                    (
                        _,
                        DeviceState::Rebooting { .. }
                        | DeviceState::Invoking { .. }
                        | DeviceState::TimedOut,
                    ) => false,
                    _ => {
                        // Unresolved, retrying or eligible, and the twin says it is rebooting
                        // for this occurrence: it was accepted.
                        let accepted_at = dev.invoked_at.unwrap_or(now);
                        dev.state = DeviceState::Rebooting { accepted_at };
                        dev.accepted_at = Some(accepted_at);
                        dev.detail = EntryState::Accepted;
                        true
                    }
                };
                if changed && let Some(e) = self.entry(&obs.device_id, now) {
                    actions.push(Action::Record(e));
                }
                if failed {
                    self.count_failure(window, actions);
                }
                return;
            }
            let same_occurrence = candidate.is_some_and(|w| w.occurrence == window.occurrence);
            match dev.state {
                DeviceState::Unresolved { .. } => {
                    // Journaled but no trace in the twin: the call may never have been made.
                    // Invoke again (same occurrence: an agent that did reboot answers "already
                    // done"), as a retry that is due now — or, after a timeout (504101), after
                    // the backoff.
                    if same_occurrence {
                        let at = if dev.errors > 0 {
                            now + backoff(&self.config, dev.errors)
                        } else {
                            now
                        };
                        dev.state = DeviceState::Retry { at };
                    }
                    return;
                }
                DeviceState::Eligible | DeviceState::Retry { .. } => {
                    if same_occurrence {
                        return;
                    }
                    // No longer a candidate for this occurrence (a new occurrence, or the device
                    // reports something else): forget it, and look again below.
                    self.devices.remove(&obs.device_id);
                }
                DeviceState::Done { .. }
                | DeviceState::Invoking { .. }
                | DeviceState::Rebooting { .. }
                | DeviceState::TimedOut => return,
            }
        }
        if let Some(window) = candidate {
            self.occurrence_mut(window);
            self.devices.insert(
                obs.device_id.clone(),
                DeviceRollout {
                    window,
                    state: DeviceState::Eligible,
                    attempts: 0,
                    errors: 0,
                    failures: 0,
                    offline_streak: 0,
                    invoked_at: None,
                    accepted_at: None,
                    detail: EntryState::Invoking,
                },
            );
        }
    }

    /// The occurrence in which `obs` is a candidate at `now`, if it is one.
    fn is_candidate(&self, now: DateTime<Utc>, obs: &Observation) -> Option<Window> {
        if obs.policy.as_deref() != Some(self.policy.as_str())
            || obs.revision.as_deref() != Some(self.revision.as_str())
            || !obs.applied
            || !obs.window_open
        {
            return None;
        }
        let window = obs.window?;
        if !window.contains(now) {
            return None;
        }
        // The device must be in the same occurrence as the scheduler computes (to the second;
        // reports carry milliseconds).
        let reported = obs.window_opens_at?;
        if (reported - window.opens_at).num_seconds().abs() > 1 {
            return None;
        }
        if obs.reboot_in(window.occurrence).is_some() {
            return None;
        }
        if !self.time_left(&window, now) {
            return None;
        }
        Some(window)
    }

    fn count_failure(&mut self, window: Window, actions: &mut Vec<Action>) {
        let devices = u32::try_from(
            self.devices
                .values()
                .filter(|d| d.window.occurrence == window.occurrence)
                .count(),
        )
        .unwrap_or(u32::MAX);
        let budget = self.limits.max_failures;
        let policy = self.policy.clone();
        let occ = self.occurrence_mut(window);
        occ.failures += 1;
        if !occ.paused && budget.exceeded(occ.failures as usize, devices as usize) {
            occ.paused = true;
            actions.push(Action::Pause {
                policy,
                window: occ.window,
                failures: occ.failures,
                devices,
                budget,
            });
        }
    }

    /// Completion timeouts and closed occurrences.
    fn expire(&mut self, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        while self.recent.front().is_some_and(|t| now - *t >= MINUTE) {
            self.recent.pop_front();
        }
        let timeout = self.completion_timeout();
        let timed_out: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, d)| match d.state {
                DeviceState::Rebooting { accepted_at } => now >= accepted_at + timeout,
                // A journaled call never resolved by the twin, long after its window closed.
                DeviceState::Unresolved { at } => {
                    now >= at.max(d.window.closes_at) + self.completion_bound()
                }
                _ => false,
            })
            .map(|(id, _)| id.clone())
            .collect();
        // Timed-out reboots give their slot back once their occurrence is over.
        let bound = self.completion_bound();
        for d in self.devices.values_mut() {
            if matches!(d.state, DeviceState::TimedOut) && now >= d.window.closes_at + bound {
                d.state = DeviceState::Done { completed: false };
            }
        }
        for id in timed_out {
            let Some(dev) = self.devices.get_mut(&id) else {
                continue;
            };
            let window = dev.window;
            dev.state = if matches!(dev.state, DeviceState::Rebooting { .. }) {
                DeviceState::TimedOut
            } else {
                DeviceState::Done { completed: false }
            };
            dev.failures += 1;
            dev.detail =
                EntryState::Failed(format!("no completion within {}s", timeout.num_seconds()));
            if let Some(e) = self.entry(&id, now) {
                actions.push(Action::Record(e));
            }
            self.count_failure(window, actions);
        }
        // Occurrences whose window closed and that have nothing in flight are over.
        let bound = self.completion_bound();
        let closed: Vec<DateTime<Utc>> =
            self.occurrences
                .values()
                .filter(|o| {
                    now >= o.window.closes_at
                        && !self.devices.values().any(|d| {
                            d.window.occurrence == o.window.occurrence && d.state.in_flight()
                        })
                        || now >= o.window.closes_at + bound
                })
                .map(|o| o.window.occurrence)
                .collect();
        for occurrence in closed {
            let Some(occ) = self.occurrences.remove(&occurrence) else {
                continue;
            };
            let mut summary = OccurrenceSummary {
                occurrence: Some(occurrence),
                failures: occ.failures,
                paused: occ.paused,
                ..OccurrenceSummary::default()
            };
            self.devices.retain(|_, d| {
                if d.window.occurrence != occurrence {
                    return true;
                }
                summary.devices += 1;
                match d.state {
                    DeviceState::Done { completed: true } => summary.completed += 1,
                    DeviceState::Done { completed: false } => summary.failed += 1,
                    _ => summary.not_reached += 1,
                }
                false
            });
            actions.push(Action::Closed {
                policy: self.policy.clone(),
                summary,
            });
        }
    }

    /// Starts the invocations the limits allow (and at most
    /// [`max_calling`](Self::with_max_calling) calls unanswered at once).
    fn plan(&mut self, now: DateTime<Utc>, actions: &mut Vec<Action>) {
        let mut in_flight = self.in_flight_count();
        let mut calling = self
            .devices
            .values()
            .filter(|d| matches!(d.state, DeviceState::Invoking { .. }))
            .count();
        let mut due: Vec<(DateTime<Utc>, String)> = self
            .devices
            .iter()
            .filter(|(_, d)| self.startable(d, now))
            .map(|(id, d)| (d.window.occurrence, id.clone()))
            .collect();
        // Oldest occurrence first (it closes first), then by device id: deterministic.
        due.sort();
        for (_, id) in due {
            if in_flight >= self.limits.max_concurrent
                || self.recent.len() >= self.limits.max_per_minute as usize
                || calling >= self.max_calling as usize
            {
                break;
            }
            let Some(dev) = self.devices.get_mut(&id) else {
                continue;
            };
            dev.attempts += 1;
            dev.invoked_at = Some(now);
            dev.state = DeviceState::Invoking { at: now };
            dev.detail = EntryState::Invoking;
            in_flight += 1;
            calling += 1;
            self.recent.push_back(now);
            actions.push(Action::Invoke(Invocation {
                policy: self.policy.clone(),
                revision: self.revision.clone(),
                device: id.clone(),
                window: dev.window,
                attempt: dev.attempts,
            }));
        }
    }

    /// The journal record for a tracked device as it stands.
    fn entry(&self, device: &str, now: DateTime<Utc>) -> Option<Entry> {
        let d = self.devices.get(device)?;
        Some(Entry {
            policy: self.policy.clone(),
            device: device.to_owned(),
            occurrence: d.window.occurrence,
            closes_at: d.window.closes_at,
            revision: self.revision.clone(),
            attempts: d.attempts,
            failures: d.failures,
            invoked_at: d.invoked_at,
            accepted_at: d.accepted_at,
            state: d.detail.clone(),
            updated_at: now,
        })
    }

    /// The journal record to write before invoking (the loop calls this for each
    /// [`Action::Invoke`]).
    pub fn intent(&self, invocation: &Invocation, now: DateTime<Utc>) -> Entry {
        self.entry(&invocation.device, now)
            .unwrap_or_else(|| Entry {
                policy: self.policy.clone(),
                device: invocation.device.clone(),
                occurrence: invocation.window.occurrence,
                closes_at: invocation.window.closes_at,
                revision: invocation.revision.clone(),
                attempts: invocation.attempt,
                failures: 0,
                invoked_at: Some(now),
                accepted_at: None,
                state: EntryState::Invoking,
                updated_at: now,
            })
    }
}

#[cfg(test)]
mod tests;
