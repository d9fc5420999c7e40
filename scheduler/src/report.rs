//! `casement report`: compliance per policy (and per device), from twin queries and the journal.
//!
//! For every device whose desired properties carry a Casement policy, [`classify`] (pure) finds
//! the latest window that has opened — computed from the desired policy, in the policy's zone or
//! the zone the device reports — and decides one state:
//!
//! | state | meaning |
//! |---|---|
//! | `compliant` | rebooted in the latest window that has opened |
//! | `in-window` | that window is open now and the device has not rebooted yet |
//! | `pending` | no window yet since the policy (revision) reached the device, or its zone is unknown |
//! | `missed` | that window closed without a reboot (with how many windows in a row) |
//! | `failed` | the reboot in that window failed (refused, failed on the device, timed out) |
//! | `paused` | the failure budget paused the policy in that window before the device's turn |
//! | `rejected` | the device rejected the policy revision it was given |
//!
//! Besides the state, `applied` (the device reports the desired revision applied) and `offline`
//! (not connected now) are counted. The percentage compliant is
//! `compliant / (targeted - pending - in-window)`: devices whose latest window is still open or
//! has not come are not counted either way (100% when no device is due).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use casement_policy::{DesiredMaintenance, MaintenanceStatus, RebootStatus, Window, WindowSpec};
use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::fleet::{self, TwinView};
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
    /// Rebooted in the latest window that has opened.
    Compliant,
    /// The latest window is open and the device has not rebooted yet.
    InWindow,
    /// No window yet (or the zone is unknown).
    Pending,
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
    /// The name used in tables and CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Compliant => "compliant",
            DeviceState::InWindow => "in-window",
            DeviceState::Pending => "pending",
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
    /// The latest window that has opened.
    pub last_window: Option<WindowReport>,
    /// When it last rebooted.
    pub last_reboot: Option<DateTime<Utc>>,
    /// Windows missed in a row (for `missed`, `failed`, `paused`).
    pub missed_streak: u32,
    /// Why, in words (rejection error, failure reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
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
    /// Not connected.
    pub offline: u32,
    /// `compliant / (targeted - pending - in_window)`, in percent.
    pub percent_compliant: f64,
}

impl Counts {
    fn add(&mut self, d: &DeviceReport) {
        self.targeted += 1;
        self.applied += u32::from(d.applied);
        self.offline += u32::from(d.online == Some(false));
        match d.state {
            DeviceState::Compliant => self.compliant += 1,
            DeviceState::InWindow => self.in_window += 1,
            DeviceState::Pending => self.pending += 1,
            DeviceState::Missed => self.missed += 1,
            DeviceState::Failed => self.failed += 1,
            DeviceState::Paused => self.paused += 1,
            DeviceState::Rejected => self.rejected += 1,
        }
    }

    fn finish(&mut self) {
        let due = self.targeted - self.pending - self.in_window;
        self.percent_compliant = if due == 0 {
            100.0
        } else {
            f64::from(self.compliant) * 100.0 / f64::from(due)
        };
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
}

impl Report {
    /// Whether the total percentage compliant is below `threshold`.
    pub fn below(&self, threshold: f64) -> bool {
        self.total.percent_compliant < threshold
    }
}

/// Windows that opened up to `now`, per (policy revision, zone), computed once.
#[derive(Debug, Default)]
pub struct WindowCache {
    windows: HashMap<(String, String, Tz), Vec<Window>>,
}

impl WindowCache {
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
            .or_insert_with(|| {
                // Keep the *latest* MAX_WINDOWS that have opened: a frequent schedule has more
                // than that over the lookback, and the latest window is the one that matters.
                let mut latest = std::collections::VecDeque::with_capacity(MAX_WINDOWS);
                for w in spec
                    .windows(tz, from)
                    .filter(|w| w.kind.opens())
                    .map(|w| w.window)
                    .take_while(|w| w.opens_at <= now)
                {
                    if latest.len() == MAX_WINDOWS {
                        latest.pop_front();
                    }
                    latest.push_back(w);
                }
                Vec::from(latest)
            })
    }
}

fn rebooted_in(view: &TwinView, w: &Window) -> bool {
    view.reboot().is_some_and(|r| {
        r.status == RebootStatus::Completed
            && (r.occurrence == Some(w.occurrence) || r.last_reboot.is_some_and(|t| w.contains(t)))
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
        last_reboot: view.reboot().and_then(|r| r.last_reboot),
        missed_streak: 0,
        detail: None,
    };
    if let Some(r) = rejected {
        report.state = DeviceState::Rejected;
        report.detail = r.error.clone();
        return Some(report);
    }
    let plan = match desired.validate() {
        Ok(p) => p,
        Err(e) => {
            report.detail = Some(format!("desired policy invalid: {e}"));
            return Some(report);
        }
    };
    let Some(tz) = plan.window.timezone().resolve(view.device_zone()) else {
        report.detail = Some("the device has not reported its zone".into());
        return Some(report);
    };
    report.zone = Some(tz.name().to_owned());
    let lookback = TimeDelta::from_std(lookback).unwrap_or(TimeDelta::MAX);
    let from = now.checked_sub_signed(lookback).unwrap_or(now);
    let opened = cache.opened(
        (&desired.policy, &desired.revision),
        &plan.window,
        tz,
        from,
        now,
    );
    let Some(latest) = opened.last().copied() else {
        return Some(report);
    };
    report.last_window = Some(latest.into());
    if rebooted_in(view, &latest) {
        report.state = DeviceState::Compliant;
        return Some(report);
    }
    if view.desired_updated.is_some_and(|t| t > latest.opens_at) {
        // The policy (this revision) arrived after the latest window opened.
        report.detail = Some("no window since the policy was applied".into());
        return Some(report);
    }
    let failed_entry = journal
        .entry(&desired.policy, &view.device_id, latest.occurrence)
        .and_then(|e| match &e.state {
            EntryState::Failed(reason) => Some(reason.clone()),
            _ => None,
        });
    let failed_on_device = view.reboot().is_some_and(|r| {
        r.status == RebootStatus::Failed && r.occurrence == Some(latest.occurrence)
    });
    let open = latest.contains(now);
    report.state = if let Some(reason) = failed_entry {
        report.detail = Some(reason);
        DeviceState::Failed
    } else if failed_on_device {
        report.detail = view.reboot().and_then(|r| r.error.clone());
        DeviceState::Failed
    } else if let Some(p) = journal.paused(&desired.policy, latest.occurrence) {
        report.detail = Some(format!(
            "paused: {} failures > budget {}",
            p.failures, p.budget
        ));
        DeviceState::Paused
    } else if open {
        DeviceState::InWindow
    } else {
        DeviceState::Missed
    };
    if report.state != DeviceState::InWindow {
        let since = [report.last_reboot, view.desired_updated]
            .into_iter()
            .flatten()
            .max();
        report.missed_streak = u32::try_from(
            opened
                .iter()
                .filter(|w| w.closes_at <= now && since.is_none_or(|s| w.opens_at >= s))
                .count(),
        )
        .unwrap_or(u32::MAX)
        .max(u32::from(!open));
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
    let mut devices: Vec<DeviceReport> = views
        .iter()
        .filter_map(|v| classify(v, journal, &mut cache, now, lookback))
        .filter(|d| policy.is_none_or(|p| d.policy == p))
        .collect();
    devices.sort_by(|a, b| (&a.policy, &a.device).cmp(&(&b.policy, &b.device)));
    let mut policies: Vec<PolicyReport> = Vec::new();
    let mut total = Counts::default();
    for d in &devices {
        total.add(d);
        match policies.last_mut() {
            Some(p) if p.policy == d.policy => p.counts.add(d),
            _ => {
                let mut counts = Counts::default();
                counts.add(d);
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
        p.pauses = pauses;
    }
    total.finish();
    Report {
        generated_at: now,
        policies,
        total,
        devices,
    }
}

/// Queries the hub and builds the report.
pub async fn compute<H: HubApi>(
    hub: &H,
    journal: &JournalView,
    now: DateTime<Utc>,
    lookback: Duration,
    policy: Option<&str>,
) -> Result<Report, ClientError> {
    let items = hub.query(&fleet::carriers_query(policy)).await?;
    let views: Vec<TwinView> = items
        .into_iter()
        .filter_map(|item| match TwinView::from_value(item) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "skipping a query result that is not a twin");
                None
            }
        })
        .collect();
    Ok(build(&views, journal, now, lookback, policy))
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
}

fn ts(t: DateTime<Utc>) -> String {
    casement_iothub::time::format_timestamp(t)
}

fn pct(p: f64) -> String {
    format!("{p:.1}")
}

const POLICY_COLUMNS: [&str; 12] = [
    "policy",
    "targeted",
    "applied",
    "rejected",
    "compliant",
    "in-window",
    "pending",
    "missed",
    "failed",
    "paused",
    "offline",
    "compliant%",
];

fn policy_row(name: &str, c: &Counts) -> Vec<String> {
    vec![
        name.to_owned(),
        c.targeted.to_string(),
        c.applied.to_string(),
        c.rejected.to_string(),
        c.compliant.to_string(),
        c.in_window.to_string(),
        c.pending.to_string(),
        c.missed.to_string(),
        c.failed.to_string(),
        c.paused.to_string(),
        c.offline.to_string(),
        pct(c.percent_compliant),
    ]
}

const DEVICE_COLUMNS: [&str; 9] = [
    "device",
    "policy",
    "state",
    "zone",
    "last window opens",
    "last window closes",
    "last reboot",
    "missed in a row",
    "online",
];

fn device_row(d: &DeviceReport) -> Vec<String> {
    vec![
        d.device.clone(),
        d.policy.clone(),
        d.state.as_str().to_owned(),
        d.zone.clone().unwrap_or_default(),
        d.last_window.map(|w| ts(w.opens_at)).unwrap_or_default(),
        d.last_window.map(|w| ts(w.closes_at)).unwrap_or_default(),
        d.last_reboot.map(ts).unwrap_or_default(),
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

/// Renders the report.
pub fn render(report: &Report, format: Format, devices: bool) -> String {
    match format {
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
                    let _ = writeln!(
                        out,
                        "paused: {} in the window {} – {}: {} failures among {} devices exceeded max_failures {}",
                        p.policy,
                        ts(pause.occurrence),
                        ts(pause.closes_at),
                        pause.failures,
                        pause.devices,
                        pause.budget
                    );
                }
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

#[cfg(test)]
mod tests;
