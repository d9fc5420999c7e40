//! `casement report`: compliance per policy (and per device), from twin queries and the journal.
//!
//! For every device whose desired properties carry a Casement policy, [`classify`] (pure)
//! decides one state, from the desired policy, the device's reported properties and the
//! scheduler's journal. Windows are computed from the desired policy, in the policy's zone or
//! the zone the device reports.
//!
//! | state | meaning | counts in the percentage |
//! |---|---|---|
//! | `compliant` | rebooted in the window it is judged by | yes, compliant |
//! | `not-applied` | has not reported the desired revision applied (offline, never seen, still on an older revision) | yes, not compliant |
//! | `rejected` | rejected the desired revision | yes, not compliant |
//! | `missed` | the window closed without a reboot (with how many windows in a row) | yes, not compliant |
//! | `failed` | the reboot in that window failed (refused, failed on the device, the call timed out and no reboot followed) | yes, not compliant |
//! | `paused` | the failure budget paused the policy in that window before the device rebooted | yes, not compliant |
//! | `in-window` | its first window since the policy arrived is open and it has not rebooted yet | no |
//! | `pending` | no window has opened since the policy (revision) reached it | no |
//!
//! The window a device is judged by is the latest that has opened; while that one is open and
//! has no outcome yet (no reboot, no failure, no pause), the one before it — if the policy had
//! reached the device by then. So a device inside an open window is judged by the windows it
//! has had, and only a device in its very first window is `in-window`.
//!
//! A reboot call that timed out (IoT Hub 504101: the method may have run) is judged by the twin:
//! a completed reboot reported for that window makes the device `compliant`, a failed one
//! `failed`; with neither, it is `in-window` (or judged by the window before) while the window is
//! open and `failed` once it has closed. Failed and paused are counted once per device and
//! window, however often the journal recorded them.
//!
//! `percent_compliant = compliant / (targeted - pending - in-window)`; when no device is due
//! (the denominator is 0) it is not applicable (`None`, shown as `n/a`), never 100%.
//!
//! Two kinds of reboot are shown as what they are, never silently as ordinary ones:
//! - a *simulated* reboot (the device's agent runs with `--simulate-reboot`, and says so in
//!   `reported.casementAgent`) counts as compliant — the scheduler and the agent did everything
//!   a real reboot needs — but is counted again under `simulated`, marked on the device line
//!   and named in a detail line: nothing was really rebooted;
//! - a *forced* reboot (`casement reboot --force --reason TEXT`) is counted under `forced` and
//!   listed with its time and reason (who forced what and why), at most [`FORCED_LISTED`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use casement_policy::{
    DesiredMaintenance, ForcedReboot, MaintenancePlan, MaintenanceStatus, RebootReport,
    RebootStatus, Window, WindowSpec,
};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::fleet::TwinView;
use crate::journal::{JournalView, PauseRecord};
use crate::rollout::EntryState;
use casement_client::{ClientError, HubApi};

/// How far back windows are looked at (for the missed streak).
pub const DEFAULT_LOOKBACK: Duration = Duration::from_secs(400 * 86_400);
/// The most windows examined per zone (an every-minute schedule over the lookback).
const MAX_WINDOWS: usize = 20_000;

/// A device's compliance state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// Rebooted in the window it is judged by.
    Compliant,
    /// Its first window since the policy arrived is open and it has not rebooted yet.
    InWindow,
    /// No window yet since the policy arrived (or the desired policy cannot be computed).
    Pending,
    /// It has not reported the desired revision applied (offline, never seen, older revision).
    NotApplied,
    /// The latest window closed without a reboot.
    Missed,
    /// The reboot in the latest window failed.
    Failed,
    /// The failure budget paused the policy in the latest window.
    Paused,
    /// The device rejected the policy.
    Rejected,
}

impl DeviceState {
    /// Every state, in table order.
    pub const ALL: [DeviceState; 8] = [
        DeviceState::Compliant,
        DeviceState::NotApplied,
        DeviceState::Rejected,
        DeviceState::Missed,
        DeviceState::Failed,
        DeviceState::Paused,
        DeviceState::InWindow,
        DeviceState::Pending,
    ];

    /// Whether a device in this state counts in the percentage compliant.
    pub fn is_due(self) -> bool {
        !matches!(self, DeviceState::InWindow | DeviceState::Pending)
    }

    /// The name used in tables and CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Compliant => "compliant",
            DeviceState::InWindow => "in-window",
            DeviceState::Pending => "pending",
            DeviceState::NotApplied => "not-applied",
            DeviceState::Missed => "missed",
            DeviceState::Failed => "failed",
            DeviceState::Paused => "paused",
            DeviceState::Rejected => "rejected",
        }
    }
}

/// One device's line.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceReport {
    /// The device.
    pub device: String,
    /// The desired policy.
    pub policy: String,
    /// The desired revision.
    pub revision: String,
    /// Its state.
    pub state: DeviceState,
    /// Whether it reports the desired revision applied.
    pub applied: bool,
    /// Whether it is connected now (`None`: unknown).
    pub online: Option<bool>,
    /// The zone windows are computed in.
    pub zone: Option<String>,
    /// The window it is judged by (the latest that has opened, or the one before it while
    /// that one is open without an outcome).
    pub last_window: Option<WindowReport>,
    /// The window open now, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_window: Option<WindowReport>,
    /// When it last rebooted.
    pub last_reboot: Option<DateTime<Utc>>,
    /// Windows missed in a row (for `missed`, `failed`, `paused`).
    pub missed_streak: u32,
    /// Why, in words (rejection error, failure reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Whether the device's agent simulates its reboots (`--simulate-reboot`): its reboots,
    /// the one this state counts included, are not real.
    pub simulated: bool,
    /// The last reboot, when it was forced (`casement reboot --force`): when and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<ForcedReboot>,
}

/// A window, for output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WindowReport {
    /// Opens.
    pub opens_at: DateTime<Utc>,
    /// Closes.
    pub closes_at: DateTime<Utc>,
}

impl From<Window> for WindowReport {
    fn from(w: Window) -> Self {
        Self {
            opens_at: w.opens_at,
            closes_at: w.closes_at,
        }
    }
}

/// Counts for a policy (or the total).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Devices whose desired policy it is.
    pub targeted: u32,
    /// Reporting it applied.
    pub applied: u32,
    /// Reporting it rejected.
    pub rejected: u32,
    /// Not reporting it applied (nor rejected).
    pub not_applied: u32,
    /// Rebooted in the latest window.
    pub compliant: u32,
    /// In an open window, not rebooted yet.
    pub in_window: u32,
    /// No window yet.
    pub pending: u32,
    /// Missed the latest window.
    pub missed: u32,
    /// Failed in the latest window.
    pub failed: u32,
    /// Paused in the latest window.
    pub paused: u32,
    /// Of the compliant, those whose reboot was simulated (`--simulate-reboot`): nothing was
    /// really rebooted.
    pub simulated: u32,
    /// Whose last reboot was forced (`casement reboot --force`).
    pub forced: u32,
    /// Not connected.
    pub offline: u32,
    /// `compliant / (targeted - pending - in_window)`, in percent; `None` (not applicable)
    /// when no device is due.
    pub percent_compliant: Option<f64>,
}

impl Counts {
    /// Counts `n` devices like `d` (the grouped summary counts a group at once).
    fn add(&mut self, d: &DeviceReport, n: u32) {
        self.targeted += n;
        self.applied += n * u32::from(d.applied);
        self.offline += n * u32::from(d.online == Some(false));
        self.simulated += n * u32::from(d.simulated && d.state == DeviceState::Compliant);
        self.forced += n * u32::from(d.forced.is_some());
        let slot = match d.state {
            DeviceState::Compliant => &mut self.compliant,
            DeviceState::InWindow => &mut self.in_window,
            DeviceState::Pending => &mut self.pending,
            DeviceState::NotApplied => &mut self.not_applied,
            DeviceState::Missed => &mut self.missed,
            DeviceState::Failed => &mut self.failed,
            DeviceState::Paused => &mut self.paused,
            DeviceState::Rejected => &mut self.rejected,
        };
        *slot += n;
    }

    fn finish(&mut self) {
        let due = self.targeted - self.pending - self.in_window;
        self.percent_compliant =
            (due > 0).then(|| f64::from(self.compliant) * 100.0 / f64::from(due));
    }
}

/// One policy's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// The policy.
    pub policy: String,
    /// The counts.
    #[serde(flatten)]
    pub counts: Counts,
    /// Windows the failure budget paused (from the journal), latest first.
    pub pauses: Vec<PauseRecord>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// When it was computed.
    pub generated_at: DateTime<Utc>,
    /// Per policy, by name.
    pub policies: Vec<PolicyReport>,
    /// All policies together.
    pub total: Counts,
    /// Per device (always computed; printed with `--devices`).
    pub devices: Vec<DeviceReport>,
    /// Per policy and zone, its recent windows (the HTML timeline).
    pub zones: Vec<ZoneReport>,
    /// Forced reboots, by device: at most [`FORCED_LISTED`] (the counts have them all).
    pub forced_reboots: Vec<ForcedLine>,
}

/// The most forced reboots the report lists (the counts have them all; `--devices` lists
/// every device).
pub const FORCED_LISTED: usize = 20;

/// A device whose last reboot was forced: who forced what and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForcedLine {
    /// The device.
    pub device: String,
    /// Its desired policy.
    pub policy: String,
    /// When and why.
    #[serde(flatten)]
    pub reboot: ForcedReboot,
}

/// How many recent windows each zone's timeline shows.
pub const TIMELINE_WINDOWS: usize = 6;

/// One policy's recent windows in one zone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneReport {
    /// The policy.
    pub policy: String,
    /// The zone.
    pub zone: String,
    /// The latest [`TIMELINE_WINDOWS`] windows that opened, oldest first.
    pub windows: Vec<ZoneWindow>,
}

/// One window of a zone, with the devices judged by it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneWindow {
    /// The window.
    #[serde(flatten)]
    pub window: WindowReport,
    /// Whether the journal paused it.
    pub paused: bool,
    /// Devices judged by it, per state (states with none left out).
    pub states: Vec<(DeviceState, u32)>,
}

impl Report {
    /// Whether the total percentage compliant is below `threshold`. Not applicable (no device
    /// due) is not below: nothing has been asked of any device yet.
    pub fn below(&self, threshold: f64) -> bool {
        self.total.percent_compliant.is_some_and(|p| p < threshold)
    }
}

/// Windows that opened up to `now`, per (policy revision, zone), and each desired section's
/// validation, computed once: a fleet on one policy validates it once, not once per twin
/// (validating a schedule walks five years of it).
#[derive(Debug, Default)]
pub struct WindowCache {
    windows: HashMap<(String, String, Tz), Vec<Window>>,
    /// Per (policy, revision), each distinct desired section met and its validation.
    plans: HashMap<(String, String), Vec<Validated>>,
}

/// A desired section and its validation (the reason when invalid).
type Validated = (DesiredMaintenance, Result<MaintenancePlan, String>);

impl WindowCache {
    /// The zone `desired`'s windows are computed in for a device reporting `device_zone`, and
    /// the windows that opened in it over `lookback` up to `now`, oldest first; `Err` says why
    /// none can be computed (an invalid desired section, a device zone not reported).
    pub(crate) fn opened_for(
        &mut self,
        desired: &DesiredMaintenance,
        device_zone: Option<Tz>,
        now: DateTime<Utc>,
        lookback: Duration,
    ) -> Result<(Tz, &[Window]), String> {
        let plan = self
            .plan(desired)
            .map_err(|e| format!("desired policy invalid: {e}"))?;
        let tz = plan
            .window
            .timezone()
            .resolve(device_zone)
            .ok_or_else(|| "the device has not reported its zone".to_owned())?;
        let lookback = TimeDelta::from_std(lookback).unwrap_or(TimeDelta::MAX);
        let from = now.checked_sub_signed(lookback).unwrap_or(now);
        let opened = self.opened(
            (&desired.policy, &desired.revision),
            &plan.window,
            tz,
            from,
            now,
        );
        Ok((tz, opened))
    }

    /// `desired` validated, once per distinct desired section.
    fn plan(&mut self, desired: &DesiredMaintenance) -> Result<MaintenancePlan, String> {
        let key = (desired.policy.clone(), desired.revision.clone());
        let seen = self.plans.entry(key).or_default();
        if let Some((_, plan)) = seen.iter().find(|(d, _)| d == desired) {
            return plan.clone();
        }
        let plan = desired.validate().map_err(|e| e.to_string());
        seen.push((desired.clone(), plan.clone()));
        plan
    }

    fn opened(
        &mut self,
        key: (&str, &str),
        spec: &WindowSpec,
        tz: Tz,
        from: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> &[Window] {
        self.windows
            .entry((key.0.to_owned(), key.1.to_owned(), tz))
            .or_insert_with(|| opened_windows(spec, tz, from, now))
    }
}

/// The latest [`MAX_WINDOWS`] windows that opened in `[from, now]`, oldest first. One
/// [`WindowSpec::windows`] walk examines a bounded number of scheduled starts (fewer than a
/// `*/2` schedule has over the lookback), so the walk resumes from where the last one stopped
/// until it reaches `now`: the latest window is always the one that opened last.
fn opened_windows(
    spec: &WindowSpec,
    tz: Tz,
    from: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<Window> {
    let mut latest = std::collections::VecDeque::with_capacity(MAX_WINDOWS);
    let mut cursor = from;
    loop {
        let before = latest.back().map(|w: &Window| w.opens_at);
        let mut reached_now = false;
        for w in spec
            .windows(tz, cursor)
            .filter(|w| w.kind.opens())
            .map(|w| w.window)
        {
            if w.opens_at > now {
                reached_now = true;
                break;
            }
            if before.is_some_and(|b| w.opens_at <= b) {
                continue;
            }
            if latest.len() == MAX_WINDOWS {
                latest.pop_front();
            }
            latest.push_back(w);
        }
        let after = latest.back().map(|w| w.opens_at);
        match after {
            Some(last) if !reached_now && after != before => {
                cursor = last.max(cursor + TimeDelta::seconds(1));
            }
            _ => break,
        }
    }
    Vec::from(latest)
}

fn rebooted_in(view: &TwinView, w: &Window) -> bool {
    view.reboot().is_some_and(|r| {
        r.status == RebootStatus::Completed
            && (r.occurrence == Some(w.occurrence) || r.last_reboot.is_some_and(|t| w.contains(t)))
    })
}

/// What happened to the device in window `w`, if anything: a reboot, a failure, a pause.
/// The twin's completed reboot wins over the journal (a call that timed out but ran); a
/// failure is one per (device, window) however many journal records say so.
fn outcome(
    view: &TwinView,
    policy: &str,
    journal: &JournalView,
    w: &Window,
    now: DateTime<Utc>,
) -> Option<(DeviceState, Option<String>)> {
    if rebooted_in(view, w) {
        return Some((DeviceState::Compliant, None));
    }
    if let Some(r) = view.reboot()
        && r.status == RebootStatus::Failed
        && r.occurrence == Some(w.occurrence)
    {
        return Some((
            DeviceState::Failed,
            Some(
                r.error
                    .clone()
                    .unwrap_or_else(|| "reboot failed on the device".into()),
            ),
        ));
    }
    let entries = journal.entries.iter().filter(|e| {
        e.policy == policy && e.device == view.device_id && e.occurrence == w.occurrence
    });
    let mut unresolved = false;
    for e in entries {
        match &e.state {
            EntryState::Failed(reason) => return Some((DeviceState::Failed, Some(reason.clone()))),
            EntryState::Invoking | EntryState::Accepted => unresolved = true,
            _ => {}
        }
    }
    if unresolved && w.closes_at <= now {
        return Some((
            DeviceState::Failed,
            Some("the reboot call did not resolve (timed out: it may have run) and the device reported no reboot in the window".into()),
        ));
    }
    journal.paused(policy, w.occurrence).map(|p| {
        (
            DeviceState::Paused,
            Some(format!(
                "paused: {} failures > budget {}",
                p.failures, p.budget
            )),
        )
    })
}

/// Classifies one device (pure). `None` when its desired section names no parsable policy.
pub fn classify(
    view: &TwinView,
    journal: &JournalView,
    cache: &mut WindowCache,
    now: DateTime<Utc>,
    lookback: Duration,
) -> Option<DeviceReport> {
    let desired: &DesiredMaintenance = view.desired.as_ref()?.as_ref().ok()?;
    let reported = view.reported();
    let for_this =
        reported.filter(|r| r.policy == desired.policy && r.revision == desired.revision);
    let applied = for_this.is_some_and(|r| r.status == MaintenanceStatus::Applied);
    let rejected = for_this.filter(|r| r.status == MaintenanceStatus::Rejected);
    let mut report = DeviceReport {
        device: view.device_id.clone(),
        policy: desired.policy.clone(),
        revision: desired.revision.clone(),
        state: DeviceState::Pending,
        applied,
        online: view.connected,
        zone: None,
        last_window: None,
        open_window: None,
        last_reboot: view.reboot().and_then(|r| r.last_reboot),
        missed_streak: 0,
        detail: None,
        simulated: view.simulated_reboots.is_some(),
        forced: view.reboot().and_then(RebootReport::forced_reboot),
    };
    if let Some(r) = rejected {
        report.state = DeviceState::Rejected;
        report.detail = r.error.clone();
        return Some(report);
    }
    if !applied {
        report.state = DeviceState::NotApplied;
        report.detail = Some(match reported {
            None => "the device has never reported the policy".into(),
            Some(r) => format!(
                "the device reports {} revision {} ({:?}), not the desired one",
                r.policy, r.revision, r.status
            ),
        });
        return Some(report);
    }
    let (tz, opened) = match cache.opened_for(desired, view.device_zone(), now, lookback) {
        Ok(found) => found,
        Err(why) => {
            report.detail = Some(why);
            return Some(report);
        }
    };
    report.zone = Some(tz.name().to_owned());
    let Some(latest) = opened.last().copied() else {
        return Some(report);
    };
    let open = latest.contains(now);
    if open {
        report.open_window = Some(latest.into());
    }
    report.last_window = Some(latest.into());
    let arrived_after = |w: &Window| view.desired_updated.is_some_and(|t| t > w.opens_at);
    let mut judged = latest;
    if let Some((state, detail)) = outcome(view, &desired.policy, journal, &latest, now) {
        report.state = state;
        report.detail = detail;
    } else if open {
        // Judged by the window before, if the policy had reached the device by then.
        let previous = opened.len().checked_sub(2).map(|i| opened[i]);
        match previous.filter(|w| !arrived_after(w)) {
            None => {
                report.state = DeviceState::InWindow;
                return Some(report);
            }
            Some(prev) => {
                judged = prev;
                report.last_window = Some(prev.into());
                let (state, detail) = outcome(view, &desired.policy, journal, &prev, now)
                    .unwrap_or((DeviceState::Missed, None));
                report.state = state;
                report.detail = detail;
            }
        }
    } else if arrived_after(&latest) {
        report.detail = Some("no window since the policy was applied".into());
        return Some(report);
    } else {
        report.state = DeviceState::Missed;
    }
    if report.state != DeviceState::Compliant {
        let since = [report.last_reboot, view.desired_updated]
            .into_iter()
            .flatten()
            .max();
        // The windows that closed, opened no later than the one judged and since `since`:
        // `opened` is in order (and windows do not overlap), so by bisection, not a walk of
        // every window per device.
        let hi = opened.partition_point(|w| w.opens_at <= judged.opens_at);
        let lo = since.map_or(0, |s| opened.partition_point(|w| w.opens_at < s));
        let closed = opened[lo.min(hi)..hi].partition_point(|w| w.closes_at <= now);
        report.missed_streak = u32::try_from(closed).unwrap_or(u32::MAX).max(1);
    }
    Some(report)
}

/// Builds the report from twins and the journal (pure).
pub fn build(
    views: &[TwinView],
    journal: &JournalView,
    now: DateTime<Utc>,
    lookback: Duration,
    policy: Option<&str>,
) -> Report {
    let mut cache = WindowCache::default();
    let devices: Vec<(DeviceReport, u32)> = views
        .iter()
        .filter_map(|v| classify(v, journal, &mut cache, now, lookback))
        .map(|d| (d, 1))
        .collect();
    assemble(devices, &cache, journal, now, policy, true)
}

/// The report from classified devices, each standing for `n` devices (1 on the per-device
/// path, a group's size on the grouped one). `keep_devices`: whether [`Report::devices`] lists
/// them (the grouped summary has no device lines).
pub(crate) fn assemble(
    mut devices: Vec<(DeviceReport, u32)>,
    cache: &WindowCache,
    journal: &JournalView,
    now: DateTime<Utc>,
    policy: Option<&str>,
    keep_devices: bool,
) -> Report {
    devices.retain(|(d, n)| *n > 0 && policy.is_none_or(|p| d.policy == p));
    devices.sort_by(|(a, _), (b, _)| (&a.policy, &a.device).cmp(&(&b.policy, &b.device)));
    let mut policies: Vec<PolicyReport> = Vec::new();
    let mut total = Counts::default();
    for (d, n) in &devices {
        total.add(d, *n);
        match policies.last_mut() {
            Some(p) if p.policy == d.policy => p.counts.add(d, *n),
            _ => {
                let mut counts = Counts::default();
                counts.add(d, *n);
                policies.push(PolicyReport {
                    policy: d.policy.clone(),
                    counts,
                    pauses: Vec::new(),
                });
            }
        }
    }
    for p in &mut policies {
        p.counts.finish();
        let mut pauses: Vec<PauseRecord> = journal
            .pauses
            .iter()
            .filter(|r| r.policy == p.policy)
            .cloned()
            .collect();
        pauses.sort_by_key(|p| std::cmp::Reverse(p.occurrence));
        pauses.dedup_by_key(|p| p.occurrence);
        p.pauses = pauses;
    }
    total.finish();
    let zones = zone_timelines(cache, &devices, journal);
    let mut forced_reboots: Vec<ForcedLine> = devices
        .iter()
        .filter_map(|(d, _)| {
            Some(ForcedLine {
                device: d.device.clone(),
                policy: d.policy.clone(),
                reboot: d.forced.clone()?,
            })
        })
        .filter(|f| !f.device.is_empty())
        .collect();
    forced_reboots.sort_by(|a, b| a.device.cmp(&b.device));
    forced_reboots.truncate(FORCED_LISTED);
    Report {
        generated_at: now,
        policies,
        total,
        forced_reboots,
        devices: if keep_devices {
            devices.into_iter().map(|(d, _)| d).collect()
        } else {
            Vec::new()
        },
        zones,
    }
}

fn zone_timelines(
    cache: &WindowCache,
    devices: &[(DeviceReport, u32)],
    journal: &JournalView,
) -> Vec<ZoneReport> {
    let mut zones: Vec<ZoneReport> = cache
        .windows
        .iter()
        .filter(|((policy, revision, tz), _)| {
            devices.iter().any(|(d, _)| {
                &d.policy == policy
                    && &d.revision == revision
                    && d.zone.as_deref() == Some(tz.name())
            })
        })
        .map(|((policy, revision, tz), opened)| {
            let recent = &opened[opened.len().saturating_sub(TIMELINE_WINDOWS)..];
            let windows = recent
                .iter()
                .map(|w| {
                    let mut states: Vec<(DeviceState, u32)> = Vec::new();
                    for s in DeviceState::ALL {
                        let n: u32 = devices
                            .iter()
                            .filter(|(d, _)| {
                                &d.policy == policy
                                    && &d.revision == revision
                                    && d.zone.as_deref() == Some(tz.name())
                                    && d.state == s
                                    && d.last_window.is_some_and(|l| l.opens_at == w.opens_at)
                            })
                            .map(|(_, n)| n)
                            .sum();
                        if n > 0 {
                            states.push((s, n));
                        }
                    }
                    ZoneWindow {
                        window: (*w).into(),
                        paused: journal.paused(policy, w.occurrence).is_some(),
                        states,
                    }
                })
                .collect();
            ZoneReport {
                policy: policy.clone(),
                zone: tz.name().to_owned(),
                windows,
            }
        })
        .collect();
    zones.sort_by(|a, b| (&a.policy, &a.zone).cmp(&(&b.policy, &b.zone)));
    zones
}

/// Queries the hub (every carrier, projected to what [`classify`] reads) and builds the
/// report with its device lines. For the counts alone, [`grouped::compute_summary`] costs a
/// number of queries that does not grow with the fleet.
///
/// # Errors
/// The hub's, as [`ClientError`].
pub async fn compute<H: HubApi>(
    hub: &H,
    journal: &JournalView,
    now: DateTime<Utc>,
    lookback: Duration,
    policy: Option<&str>,
) -> Result<Report, ClientError> {
    grouped::compute_devices(hub, journal, now, lookback, policy).await
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text.
    Table,
    /// One JSON document.
    Json,
    /// CSV: one row per policy, or per device with `--devices`.
    Csv,
    /// One self-contained HTML page (see [`html`]).
    Html,
}

fn ts(t: DateTime<Utc>) -> String {
    casement_iothub::time::format_timestamp(t)
}

/// A percentage for output: one decimal, or `n/a` when no device is due.
pub fn pct(p: Option<f64>) -> String {
    p.map_or_else(|| "n/a".to_owned(), |p| format!("{p:.1}"))
}

const POLICY_COLUMNS: [&str; 15] = [
    "policy",
    "targeted",
    "applied",
    "not-applied",
    "rejected",
    "compliant",
    "simulated",
    "in-window",
    "pending",
    "missed",
    "failed",
    "paused",
    "forced",
    "offline",
    "compliant%",
];

fn policy_row(name: &str, c: &Counts) -> Vec<String> {
    vec![
        name.to_owned(),
        c.targeted.to_string(),
        c.applied.to_string(),
        c.not_applied.to_string(),
        c.rejected.to_string(),
        c.compliant.to_string(),
        c.simulated.to_string(),
        c.in_window.to_string(),
        c.pending.to_string(),
        c.missed.to_string(),
        c.failed.to_string(),
        c.paused.to_string(),
        c.forced.to_string(),
        c.offline.to_string(),
        pct(c.percent_compliant),
    ]
}

const DEVICE_COLUMNS: [&str; 10] = [
    "device",
    "policy",
    "state",
    "zone",
    "last window opens",
    "last window closes",
    "last reboot",
    "reboot kind",
    "missed in a row",
    "online",
];

/// How the device's last reboot happened, when not the ordinary way: `simulated` (its agent
/// simulates reboots), `forced` (`casement reboot --force`), or both.
pub fn reboot_kind(d: &DeviceReport) -> &'static str {
    match (d.forced.is_some(), d.simulated) {
        (true, true) => "forced, simulated",
        (true, false) => "forced",
        (false, true) => "simulated",
        (false, false) => "",
    }
}

fn device_row(d: &DeviceReport) -> Vec<String> {
    vec![
        d.device.clone(),
        d.policy.clone(),
        d.state.as_str().to_owned(),
        d.zone.clone().unwrap_or_default(),
        d.last_window.map(|w| ts(w.opens_at)).unwrap_or_default(),
        d.last_window.map(|w| ts(w.closes_at)).unwrap_or_default(),
        d.last_reboot.map(ts).unwrap_or_default(),
        reboot_kind(d).to_owned(),
        d.missed_streak.to_string(),
        match d.online {
            Some(true) => "yes".into(),
            Some(false) => "no".into(),
            None => String::new(),
        },
    ]
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

/// The lines under the table about simulated and forced reboots (also on the HTML page).
pub fn detail_lines(report: &Report) -> Vec<String> {
    let mut lines = Vec::new();
    for p in &report.policies {
        let c = &p.counts;
        if c.simulated > 0 {
            lines.push(format!(
                "simulated: {} of the {} compliant device(s) of {} rebooted in simulation only \
                 (casement-agent run --simulate-reboot): nothing was really rebooted",
                c.simulated, c.compliant, p.policy
            ));
        }
    }
    for f in &report.forced_reboots {
        lines.push(format!(
            "forced: {} ({}) rebooted {}, FORCED outside its window: {}",
            f.device,
            f.policy,
            f.reboot.at.map_or_else(
                || "at an unknown time".to_owned(),
                |t| format!("at {}", ts(t))
            ),
            f.reboot.reason
        ));
    }
    let more = (report.total.forced as usize).saturating_sub(report.forced_reboots.len());
    if more > 0 {
        lines.push(format!(
            "forced: {more} more forced reboot(s) not listed; `casement report --devices` lists every device"
        ));
    }
    lines
}

/// Renders the report.
pub fn render(report: &Report, format: Format, devices: bool) -> String {
    match format {
        Format::Html => html::render(report, devices),
        Format::Json => {
            let mut value = serde_json::to_value(report).unwrap_or_default();
            if !devices && let Some(o) = value.as_object_mut() {
                o.remove("devices");
            }
            let mut s = serde_json::to_string_pretty(&value).unwrap_or_default();
            s.push('\n');
            s
        }
        Format::Csv => {
            let mut out = String::new();
            if devices {
                let header: Vec<String> = DEVICE_COLUMNS.iter().map(|s| (*s).to_owned()).collect();
                let _ = writeln!(out, "{}", csv_line(&header));
                for d in &report.devices {
                    let _ = writeln!(out, "{}", csv_line(&device_row(d)));
                }
            } else {
                let header: Vec<String> = POLICY_COLUMNS.iter().map(|s| (*s).to_owned()).collect();
                let _ = writeln!(out, "{}", csv_line(&header));
                for p in &report.policies {
                    let _ = writeln!(out, "{}", csv_line(&policy_row(&p.policy, &p.counts)));
                }
            }
            out
        }
        Format::Table => {
            let mut out = String::new();
            let mut table = comfy_table::Table::new();
            table.load_preset(comfy_table::presets::NOTHING);
            table.set_header(POLICY_COLUMNS.map(str::to_uppercase));
            for p in &report.policies {
                table.add_row(policy_row(&p.policy, &p.counts));
            }
            if report.policies.len() > 1 {
                table.add_row(policy_row("TOTAL", &report.total));
            }
            if report.policies.is_empty() {
                let _ = writeln!(out, "No device carries a Casement policy.");
            } else {
                let _ = writeln!(out, "{table}");
            }
            for p in &report.policies {
                for pause in &p.pauses {
                    // Only the pauses the table counts: a window some device is judged by.
                    // Counted from the zone timelines, which the grouped summary has too.
                    let here: u32 = report
                        .zones
                        .iter()
                        .filter(|z| z.policy == p.policy)
                        .flat_map(|z| &z.windows)
                        .filter(|w| w.window.opens_at == pause.occurrence)
                        .flat_map(|w| &w.states)
                        .filter(|(s, _)| *s == DeviceState::Paused)
                        .map(|(_, n)| n)
                        .sum();
                    if here == 0 {
                        continue;
                    }
                    let _ = writeln!(
                        out,
                        "paused: {} in the window {} – {}: {} failures among {} devices exceeded max_failures {}; {here} device(s) above are paused in it",
                        p.policy,
                        ts(pause.occurrence),
                        ts(pause.closes_at),
                        pause.failures,
                        pause.devices,
                        pause.budget
                    );
                }
            }
            for line in detail_lines(report) {
                let _ = writeln!(out, "{line}");
            }
            if report.total.percent_compliant.is_none() && !report.policies.is_empty() {
                let _ = writeln!(
                    out,
                    "compliant% n/a: no device is due yet (all pending or in their first window)."
                );
            }
            if devices && !report.devices.is_empty() {
                let mut table = comfy_table::Table::new();
                table.load_preset(comfy_table::presets::NOTHING);
                table.set_header(DEVICE_COLUMNS.map(str::to_uppercase));
                for d in &report.devices {
                    table.add_row(device_row(d));
                }
                let _ = writeln!(out, "\n{table}");
            }
            out
        }
    }
}

pub mod grouped;
pub mod html;
#[cfg(test)]
mod tests;
