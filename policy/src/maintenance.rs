//! The maintenance twin schema, shared by the scheduler (writes desired, reads reported) and the
//! agent (reads desired, writes reported). JSON is camelCase, as IoT Hub twins are.
//!
//! ```json
//! desired:  "maintenance": { "policy": "store-gateways-weekly", "revision": "9c1e3f2a",
//!             "window": { "schedule": "0 2 * * SUN", "durationSeconds": 7200,
//!                         "timezone": "device", "blackout": ["2026-12-24"] },
//!             "reboot": { "expectedDurationSeconds": 300 } }
//! reported: "maintenance": { "policy": "…", "revision": "…", "status": "applied",
//!             "error": null, "timezone": "Europe/Amsterdam",
//!             "window": { "open": true, "opensAt": "2026-11-29T01:00:00.000Z",
//!                         "closesAt": "2026-11-29T03:00:00.000Z" } },
//!           "iothubDM": { "reboot": { "lastReboot": "2026-11-29T01:04:10.000Z",
//!             "status": "completed", "occurrence": "2026-11-29T01:00:00.000Z", … } }
//! ```
//!
//! Optional fields of reported types serialize as `null` rather than being left out, so that a
//! reported patch built from them deletes a stale value (twin patches are JSON merge patches).

use std::time::Duration;

use casement_iothub::time::{serde_timestamp, serde_timestamp_opt};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::duration::format_duration;
use crate::file::parse_date;
use crate::policy::{Policy, validate_name};
use crate::schedule::Schedule;
use crate::window::{WindowSpec, WindowSpecError};
use crate::zone::ZoneSpec;

mod method;
pub use method::{
    MAX_PAYLOAD_BYTES, MAX_REASON_CHARS, RebootAnswer, RebootPayload, RebootRequest, RefusalReason,
};

/// The twin property (desired and reported) holding the maintenance policy.
pub const MAINTENANCE: &str = "maintenance";
/// The reported property of Microsoft's device-management pattern.
pub const IOTHUB_DM: &str = "iothubDM";
/// The key under [`IOTHUB_DM`] holding the reboot state.
pub const REBOOT: &str = "reboot";
/// The direct method the scheduler invokes.
pub const REBOOT_METHOD: &str = "reboot";
/// The reported property saying how the device's agent reboots, for an agent that simulates
/// its reboots (`casement-agent run --simulate-reboot`): `{"casementAgent": {"rebootMode":
/// "simulated", "simulatedReboots": N}}`, so the twin never passes a simulated reboot off as
/// real. Absent for an agent that really reboots.
pub const REPORTED_AGENT: &str = "casementAgent";
/// The `rebootMode` of an agent that simulates its reboots.
pub const SIMULATED: &str = "simulated";

/// Paths for twin queries (`SELECT … FROM devices WHERE <path> = …`), written once.
pub mod paths {
    /// Desired maintenance.
    pub const DESIRED_MAINTENANCE: &str = "properties.desired.maintenance";
    /// Desired policy name.
    pub const DESIRED_POLICY: &str = "properties.desired.maintenance.policy";
    /// Desired policy revision.
    pub const DESIRED_REVISION: &str = "properties.desired.maintenance.revision";
    /// Reported maintenance.
    pub const REPORTED_MAINTENANCE: &str = "properties.reported.maintenance";
    /// Reported policy name.
    pub const REPORTED_POLICY: &str = "properties.reported.maintenance.policy";
    /// Reported policy revision.
    pub const REPORTED_REVISION: &str = "properties.reported.maintenance.revision";
    /// Reported status, `applied` or `rejected`.
    pub const REPORTED_STATUS: &str = "properties.reported.maintenance.status";
    /// The zone the device reports.
    pub const REPORTED_TIMEZONE: &str = "properties.reported.maintenance.timezone";
    /// Whether the device says its window is open.
    pub const REPORTED_WINDOW_OPEN: &str = "properties.reported.maintenance.window.open";
    /// When the device's current or next window opens.
    pub const REPORTED_WINDOW_OPENS_AT: &str = "properties.reported.maintenance.window.opensAt";
    /// When it closes.
    pub const REPORTED_WINDOW_CLOSES_AT: &str = "properties.reported.maintenance.window.closesAt";
    /// Whether the device is due a reboot now: its window is open and it has not rebooted (nor
    /// started rebooting) for this occurrence. The run loop's candidate query filters on it.
    pub const REPORTED_WINDOW_DUE: &str = "properties.reported.maintenance.window.due";
    /// The reboot state.
    pub const REPORTED_REBOOT: &str = "properties.reported.iothubDM.reboot";
    /// When the device last rebooted.
    pub const LAST_REBOOT: &str = "properties.reported.iothubDM.reboot.lastReboot";
    /// `rebooting`, `completed` or `failed`.
    pub const REBOOT_STATUS: &str = "properties.reported.iothubDM.reboot.status";
    /// The window occurrence of the last reboot.
    pub const REBOOT_OCCURRENCE: &str = "properties.reported.iothubDM.reboot.occurrence";
    /// Whether the last reboot was forced (`casement reboot --force`).
    pub const REBOOT_FORCED: &str = "properties.reported.iothubDM.reboot.forced";
    /// `simulated` when the device's agent simulates its reboots ([`super::REPORTED_AGENT`]).
    pub const REBOOT_MODE: &str = "properties.reported.casementAgent.rebootMode";
}

/// `desired.maintenance`, written by the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredMaintenance {
    /// Policy name.
    pub policy: String,
    /// Policy revision.
    pub revision: String,
    /// The window.
    pub window: DesiredWindow,
    /// Reboot settings the device enforces.
    pub reboot: DesiredReboot,
}

/// `desired.maintenance.window`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredWindow {
    /// Cron schedule, as in the policy file.
    pub schedule: String,
    /// Window length in seconds.
    pub duration_seconds: u64,
    /// IANA zone or `"device"`.
    pub timezone: String,
    /// Local dates (`YYYY-MM-DD`) on which no window opens.
    #[serde(default)]
    pub blackout: Vec<String>,
}

/// `desired.maintenance.reboot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredReboot {
    /// Never start a reboot with less than this many seconds left in the window.
    pub expected_duration_seconds: u64,
}

impl From<&Policy> for DesiredMaintenance {
    fn from(policy: &Policy) -> Self {
        let window = policy.window();
        DesiredMaintenance {
            policy: policy.name().to_owned(),
            revision: policy.revision().as_str().to_owned(),
            window: DesiredWindow {
                schedule: window.schedule().as_str().to_owned(),
                duration_seconds: window.duration().as_secs(),
                timezone: window.timezone().name().to_owned(),
                blackout: window
                    .blackout()
                    .iter()
                    .map(|d| d.format("%Y-%m-%d").to_string())
                    .collect(),
            },
            reboot: DesiredReboot {
                expected_duration_seconds: policy.reboot().expected_duration.as_secs(),
            },
        }
    }
}

/// A desired maintenance policy the device cannot apply: the field and why. Displayed as
/// `window.timezone: unknown zone "…"`, ready to report as `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct MaintenanceError {
    /// The field, as in policy files (`window.schedule`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> MaintenanceError {
    MaintenanceError {
        field,
        message: message.into(),
    }
}

/// A desired maintenance policy, validated on the device: everything the agent needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenancePlan {
    /// Policy name.
    pub policy: String,
    /// Policy revision, to echo in the reported properties.
    pub revision: String,
    /// The window.
    pub window: WindowSpec,
    /// Never start a reboot with less than this left in the window.
    pub expected_duration: Duration,
}

/// How much an agent may delay its window reports by default (`casement-agent run
/// --report-jitter`): see [`MaintenancePlan::report_delay`].
pub const DEFAULT_REPORT_JITTER: Duration = Duration::from_secs(30);

impl MaintenancePlan {
    /// How long after its window opens (and closes) a device reports it, so that a fleet whose
    /// windows open at the same instant does not report at that instant (IoT Hub meters twin
    /// updates per second: S1 allows 50 per unit). The delay is the device's own, the same at
    /// every window: a hash of `device_id` spread evenly over `[0, J)`, where `J` is `jitter`
    /// capped at half the time the window leaves for starting a reboot
    /// (`(duration − expected_duration) / 2`). So a device reports itself due while at least
    /// half of that time, and `expected_duration`, are still left: the scheduler, which starts a
    /// reboot only with `expected_duration` left by its own window math, can still reboot it
    /// inside the window, and the agent still refuses any reboot its own clock puts outside.
    /// `jitter` zero: no delay.
    pub fn report_delay(&self, device_id: &str, jitter: Duration) -> Duration {
        let room = self
            .window
            .duration()
            .saturating_sub(self.expected_duration)
            / 2;
        let bound = u64::try_from(jitter.min(room).as_millis()).unwrap_or(u64::MAX);
        if bound == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(spread(device_id) % bound)
    }

    /// The zone to compute windows in, given the device's own zone.
    pub fn zone(&self, device_zone: Tz) -> Tz {
        self.window
            .timezone()
            .resolve(Some(device_zone))
            .unwrap_or(device_zone)
    }
}

impl DesiredMaintenance {
    /// Validates the desired policy with the same rules as policy files.
    pub fn validate(&self) -> Result<MaintenancePlan, MaintenanceError> {
        validate_name(&self.policy).map_err(|m| invalid("policy.name", m))?;
        let revision_ok = !self.revision.is_empty()
            && self.revision.len() <= 64
            && self.revision.bytes().all(|b| b.is_ascii_hexdigit());
        if !revision_ok {
            return Err(invalid(
                "policy.revision",
                format!("\"{}\" is not a revision (hex digits)", self.revision),
            ));
        }
        let schedule = Schedule::parse(&self.window.schedule)
            .map_err(|e| invalid("window.schedule", e.message))?;
        let zone: ZoneSpec = self
            .window
            .timezone
            .parse()
            .map_err(|e: crate::zone::ZoneError| invalid("window.timezone", e.to_string()))?;
        let mut blackout = Vec::with_capacity(self.window.blackout.len());
        for text in &self.window.blackout {
            let date = parse_date(text).ok_or_else(|| {
                invalid(
                    "window.blackout",
                    format!("\"{text}\" is not a date (YYYY-MM-DD)"),
                )
            })?;
            blackout.push(date);
        }
        let duration = Duration::from_secs(self.window.duration_seconds);
        let window = WindowSpec::new(schedule, duration, zone, blackout).map_err(|e| match e {
            WindowSpecError::ZeroDuration => {
                invalid("window.duration", "durationSeconds must be positive")
            }
            other => invalid("window.duration", other.to_string()),
        })?;
        let expected_duration = Duration::from_secs(self.reboot.expected_duration_seconds);
        if expected_duration.is_zero() {
            return Err(invalid(
                "reboot.expected_duration",
                "expectedDurationSeconds must be positive",
            ));
        }
        if expected_duration >= duration {
            return Err(invalid(
                "reboot.expected_duration",
                format!(
                    "expected_duration {} must be shorter than window.duration {}",
                    format_duration(expected_duration),
                    format_duration(duration)
                ),
            ));
        }
        Ok(MaintenancePlan {
            policy: self.policy.clone(),
            revision: self.revision.clone(),
            window,
            expected_duration,
        })
    }

    /// Reads `maintenance` from a twin's desired properties (the `properties.desired` object).
    /// `None` when absent or `null` (no policy targets the device).
    pub fn from_desired(desired: &Value) -> Option<Result<Self, SchemaError>> {
        from_section(MAINTENANCE, desired.get(MAINTENANCE)?)
    }

    /// The desired patch that sets this policy: `{"maintenance": {…}}`.
    pub fn to_patch(&self) -> Value {
        let mut patch = serde_json::Map::new();
        patch.insert(
            MAINTENANCE.to_owned(),
            serde_json::to_value(self).unwrap_or(Value::Null),
        );
        Value::Object(patch)
    }

    /// The desired patch that removes the policy: `{"maintenance": null}`.
    pub fn clear_patch() -> Value {
        serde_json::json!({ MAINTENANCE: null })
    }
}

fn from_section<T: serde::de::DeserializeOwned>(
    section: &str,
    value: &Value,
) -> Option<Result<T, SchemaError>> {
    if value.is_null() {
        None
    } else {
        Some(parse_section(section, value))
    }
}

/// A twin section that does not follow the schema: the JSON path of the offending value and
/// what is wrong with it, e.g. `maintenance.window.durationSeconds: invalid type: string
/// "2h", expected u64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SchemaError {
    /// Where, from the twin property down (`maintenance.revision`).
    pub path: String,
    /// What is wrong, as serde says it.
    pub message: String,
}

/// Reads one section of the schema (named `section`, e.g. [`MAINTENANCE`], for the error's
/// path) from its JSON.
///
/// # Errors
/// A [`SchemaError`] naming the path of the first value that does not fit.
pub fn parse_section<T: serde::de::DeserializeOwned>(
    section: &str,
    value: &Value,
) -> Result<T, SchemaError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let inner = err.path().to_string();
        SchemaError {
            path: if inner == "." || inner.is_empty() {
                section.to_owned()
            } else {
                format!("{section}.{inner}")
            },
            message: err.into_inner().to_string(),
        }
    })
}

/// Whether the device applied the desired policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceStatus {
    /// Applied; the device computes and reports its windows.
    Applied,
    /// Rejected, with `error` saying why; the device keeps its previous policy.
    Rejected,
}

/// `reported.maintenance`, written by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedMaintenance {
    /// Name of the policy this report is about.
    pub policy: String,
    /// Its revision.
    pub revision: String,
    /// Applied or rejected.
    pub status: MaintenanceStatus,
    /// Why it was rejected (`null` when applied).
    #[serde(default)]
    pub error: Option<String>,
    /// The device's own IANA zone (used for `timezone = "device"` policies).
    pub timezone: String,
    /// The current or next window (`null` when there is none).
    #[serde(default)]
    pub window: Option<ReportedWindow>,
}

/// A stable 64-bit hash of a device id (FNV-1a, then a final mix so that ids differing only in
/// their last characters spread over the whole range): the same on every agent build and
/// platform, unlike `std`'s `DefaultHasher`.
fn spread(device_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in device_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// `reported.maintenance.window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedWindow {
    /// Whether the window is open now.
    pub open: bool,
    /// When the current or next window opens.
    #[serde(with = "serde_timestamp")]
    pub opens_at: DateTime<Utc>,
    /// When it closes.
    #[serde(with = "serde_timestamp")]
    pub closes_at: DateTime<Utc>,
    /// Whether the device is due a reboot: the window is open and the device has neither
    /// rebooted nor started a reboot for this occurrence (`opensAt`). IoT Hub's query language
    /// compares a property with a constant, never two properties, so the device states this
    /// fact itself for the scheduler's `WHERE … window.due = true`. It turns `false` in the
    /// same patch that reports the reboot starting. Absent (older agents) reads as `false`.
    #[serde(default)]
    pub due: bool,
}

impl From<crate::window::WindowState> for ReportedWindow {
    /// The window as the clock gives it: due whenever open (the caller clears
    /// [`due`](ReportedWindow::due) once the device rebooted for the occurrence).
    fn from(state: crate::window::WindowState) -> Self {
        ReportedWindow {
            open: state.open,
            opens_at: state.window.opens_at,
            closes_at: state.window.closes_at,
            due: state.open,
        }
    }
}

impl ReportedWindow {
    /// This window with [`due`](ReportedWindow::due) cleared when the device `rebooted`
    /// (or started rebooting) for its occurrence.
    pub fn rebooted(mut self, rebooted: bool) -> Self {
        self.due = self.open && !rebooted;
        self
    }
}

impl ReportedMaintenance {
    /// Reads `maintenance` from a twin's reported properties (the `properties.reported` object).
    pub fn from_reported(reported: &Value) -> Option<Result<Self, SchemaError>> {
        from_section(MAINTENANCE, reported.get(MAINTENANCE)?)
    }

    /// The reported patch: `{"maintenance": {…}}`.
    pub fn to_patch(&self) -> Value {
        let mut patch = serde_json::Map::new();
        patch.insert(
            MAINTENANCE.to_owned(),
            serde_json::to_value(self).unwrap_or(Value::Null),
        );
        Value::Object(patch)
    }
}

/// Where a reboot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RebootStatus {
    /// Accepted and started; the device is about to go down.
    Rebooting,
    /// The device came back after the reboot.
    Completed,
    /// The reboot command failed (`error` says how).
    Failed,
}

/// `reported.iothubDM.reboot`, Microsoft's device-management reboot pattern.
///
/// `lastReboot` is when the reboot started; it is at or after `occurrence` for a reboot in that
/// window. A reboot is done when `status` is `completed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RebootReport {
    /// When the device last started a reboot.
    #[serde(default, with = "serde_timestamp_opt")]
    pub last_reboot: Option<DateTime<Utc>>,
    /// Where that reboot is.
    pub status: RebootStatus,
    /// The window occurrence (its `opensAt`) the reboot belongs to; `null` for a reboot outside
    /// any policy window.
    #[serde(default, with = "serde_timestamp_opt")]
    pub occurrence: Option<DateTime<Utc>>,
    /// When the device reported back after the reboot.
    #[serde(default, with = "serde_timestamp_opt")]
    pub completed_at: Option<DateTime<Utc>>,
    /// What went wrong, for `failed`.
    #[serde(default)]
    pub error: Option<String>,
    /// The reboot was forced (not gated by the window).
    #[serde(default)]
    pub forced: Option<bool>,
    /// Why it was forced.
    #[serde(default)]
    pub reason: Option<String>,
}

impl RebootReport {
    /// Reads `iothubDM.reboot` from a twin's reported properties.
    pub fn from_reported(reported: &Value) -> Option<Result<Self, SchemaError>> {
        from_section("iothubDM.reboot", reported.get(IOTHUB_DM)?.get(REBOOT)?)
    }

    /// The reported patch: `{"iothubDM": {"reboot": {…}}}`.
    pub fn to_patch(&self) -> Value {
        let mut reboot = serde_json::Map::new();
        reboot.insert(
            REBOOT.to_owned(),
            serde_json::to_value(self).unwrap_or(Value::Null),
        );
        let mut patch = serde_json::Map::new();
        patch.insert(IOTHUB_DM.to_owned(), Value::Object(reboot));
        Value::Object(patch)
    }

    /// The forced reboot this report shows, when the last reboot was forced.
    pub fn forced_reboot(&self) -> Option<ForcedReboot> {
        (self.forced == Some(true)).then(|| ForcedReboot {
            at: self.last_reboot,
            reason: self.reason.clone().unwrap_or_default(),
        })
    }

    /// Whether this report shows a completed reboot for `occurrence`.
    pub fn completed_for(&self, occurrence: DateTime<Utc>) -> bool {
        self.status == RebootStatus::Completed
            && self.occurrence == Some(occurrence)
            && self.last_reboot.is_some_and(|t| t >= occurrence)
    }
}

/// A forced reboot (`casement reboot --force --reason TEXT`, the audited emergency override),
/// as the device reports it in `iothubDM.reboot` (`forced`, `reason`, `lastReboot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForcedReboot {
    /// When the forced reboot started, when the device said.
    #[serde(with = "serde_timestamp_opt")]
    pub at: Option<DateTime<Utc>>,
    /// Why it was forced, as the operator wrote it.
    pub reason: String,
}

/// The forced reboot a twin's reported properties show (`None` when the last reboot was not
/// forced, or `iothubDM.reboot` does not follow the schema). For `casement twin show` and the
/// report.
pub fn forced_reboot(reported: &Value) -> Option<ForcedReboot> {
    RebootReport::from_reported(reported)?.ok()?.forced_reboot()
}

/// How many reboots the device's agent simulated, when it simulates its reboots
/// ([`REPORTED_AGENT`]); `None` for an agent that really reboots. For `casement twin show` and
/// the report.
pub fn simulated_reboots(reported: &Value) -> Option<u64> {
    let agent = reported.get(REPORTED_AGENT)?;
    (agent.get("rebootMode")?.as_str()? == SIMULATED).then(|| {
        agent
            .get("simulatedReboots")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    })
}

/// The reported patch of an agent that simulates its reboots and has simulated `reboots` so
/// far ([`REPORTED_AGENT`]).
pub fn simulated_report(reboots: u64) -> Value {
    serde_json::json!({ REPORTED_AGENT: { "rebootMode": SIMULATED, "simulatedReboots": reboots } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn desired() -> DesiredMaintenance {
        DesiredMaintenance {
            policy: "store-gateways-weekly".into(),
            revision: "9c1e3f2a".into(),
            window: DesiredWindow {
                schedule: "0 2 * * SUN".into(),
                duration_seconds: 7200,
                timezone: "device".into(),
                blackout: vec!["2026-12-24".into()],
            },
            reboot: DesiredReboot {
                expected_duration_seconds: 300,
            },
        }
    }

    #[test]
    fn desired_json_is_the_documented_shape() {
        let value = serde_json::to_value(desired()).unwrap();
        assert_eq!(
            value,
            json!({ "policy": "store-gateways-weekly", "revision": "9c1e3f2a",
                "window": { "schedule": "0 2 * * SUN", "durationSeconds": 7200, "timezone": "device",
                            "blackout": ["2026-12-24"] },
                "reboot": { "expectedDurationSeconds": 300 } })
        );
        let twin_desired = json!({ "maintenance": value, "$version": 4 });
        assert_eq!(
            DesiredMaintenance::from_desired(&twin_desired)
                .unwrap()
                .unwrap(),
            desired()
        );
        assert!(DesiredMaintenance::from_desired(&json!({ "maintenance": null })).is_none());
        assert!(DesiredMaintenance::from_desired(&json!({})).is_none());
        assert_eq!(
            desired().to_patch()["maintenance"]["window"]["durationSeconds"],
            7200
        );
        assert_eq!(
            DesiredMaintenance::clear_patch(),
            json!({ "maintenance": null })
        );
    }

    #[test]
    fn report_delays_are_per_device_spread_over_the_jitter_and_leave_the_window_room() {
        let plan = desired().validate().unwrap();
        let jitter = Duration::from_secs(30);
        let delays: Vec<Duration> = (0..1000)
            .map(|n| plan.report_delay(&format!("sim-{n:04}"), jitter))
            .collect();
        assert!(delays.iter().all(|d| *d < jitter));
        // The same device, the same delay (every window, every build).
        assert_eq!(plan.report_delay("sim-0007", jitter), delays[7]);
        // Spread evenly: each tenth of [0, 30 s) holds about a tenth of the devices.
        for tenth in 0..10u64 {
            let (lo, hi) = (tenth * 3000, (tenth + 1) * 3000);
            let n = delays
                .iter()
                .filter(|d| (lo..hi).contains(&(d.as_millis() as u64)))
                .count();
            assert!((50..150).contains(&n), "{n} devices in [{lo}, {hi}) ms");
        }
        assert_eq!(
            plan.report_delay("sim-0007", Duration::ZERO),
            Duration::ZERO
        );
        // A short window: at most half the time it leaves for starting a reboot, so a device
        // reports itself due with `expected_duration` and more still left.
        let mut short = desired();
        short.window.duration_seconds = 400;
        let short = short.validate().unwrap();
        let room = (Duration::from_secs(400) - short.expected_duration) / 2;
        assert_eq!(room, Duration::from_secs(50));
        assert!(
            (0..1000)
                .map(|n| short.report_delay(&format!("d{n}"), Duration::from_secs(3600)))
                .all(|d| d < room)
        );
    }

    #[test]
    fn desired_validates_on_the_device() {
        let plan = desired().validate().unwrap();
        assert_eq!(plan.window.duration(), Duration::from_secs(7200));
        assert_eq!(plan.expected_duration, Duration::from_secs(300));
        assert_eq!(
            plan.zone(chrono_tz::Europe::Amsterdam),
            chrono_tz::Europe::Amsterdam
        );

        let mut bad = desired();
        bad.window.timezone = "Europe/Amsterdan".into();
        let err = bad.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "window.timezone: unknown zone \"Europe/Amsterdan\" (did you mean \"Europe/Amsterdam\"?)"
        );
        let mut bad = desired();
        bad.window.schedule = "0 25 * * *".into();
        assert_eq!(bad.validate().unwrap_err().field, "window.schedule");
        let mut bad = desired();
        bad.window.duration_seconds = 0;
        assert_eq!(bad.validate().unwrap_err().field, "window.duration");
        let mut bad = desired();
        bad.window.duration_seconds = 8 * 86_400;
        assert_eq!(bad.validate().unwrap_err().field, "window.duration");
        let mut bad = desired();
        bad.reboot.expected_duration_seconds = 7200;
        assert_eq!(
            bad.validate().unwrap_err().field,
            "reboot.expected_duration"
        );
        let mut bad = desired();
        bad.window.blackout = vec!["24-12-2026".into()];
        assert_eq!(bad.validate().unwrap_err().field, "window.blackout");
        let mut bad = desired();
        bad.policy = "Bad Name".into();
        assert_eq!(bad.validate().unwrap_err().field, "policy.name");
        let mut bad = desired();
        bad.revision = "".into();
        assert_eq!(bad.validate().unwrap_err().field, "policy.revision");
    }

    #[test]
    fn malformed_desired_json_is_an_error_not_a_panic() {
        let twin = json!({ "maintenance": { "policy": 5 } });
        assert!(DesiredMaintenance::from_desired(&twin).unwrap().is_err());
    }

    #[test]
    fn reported_json_uses_iot_hub_timestamps_and_explicit_nulls() {
        let opens = Utc.with_ymd_and_hms(2026, 11, 29, 1, 0, 0).unwrap();
        let reported = ReportedMaintenance {
            policy: "store-gateways-weekly".into(),
            revision: "9c1e3f2a".into(),
            status: MaintenanceStatus::Applied,
            error: None,
            timezone: "Europe/Amsterdam".into(),
            window: Some(ReportedWindow {
                open: true,
                opens_at: opens,
                closes_at: opens + chrono::TimeDelta::hours(2),
                due: true,
            }),
        };
        let patch = reported.to_patch();
        assert_eq!(
            patch,
            json!({ "maintenance": { "policy": "store-gateways-weekly", "revision": "9c1e3f2a",
                "status": "applied", "error": null, "timezone": "Europe/Amsterdam",
                "window": { "open": true, "opensAt": "2026-11-29T01:00:00.000Z",
                            "closesAt": "2026-11-29T03:00:00.000Z", "due": true } } })
        );
        // Read back from a twin where the null was deleted by the merge.
        let twin = json!({ "maintenance": { "policy": "store-gateways-weekly", "revision": "9c1e3f2a",
            "status": "rejected", "timezone": "Europe/Amsterdam", "error": "window.schedule: bad" } });
        let back = ReportedMaintenance::from_reported(&twin).unwrap().unwrap();
        assert_eq!(back.status, MaintenanceStatus::Rejected);
        assert_eq!(back.window, None);
        assert_eq!(back.error.as_deref(), Some("window.schedule: bad"));
    }

    #[test]
    fn due_is_open_and_not_rebooted_and_absent_reads_as_false() {
        let opens = Utc.with_ymd_and_hms(2026, 11, 29, 1, 0, 0).unwrap();
        let state = |open| crate::window::WindowState {
            open,
            window: crate::window::Window {
                occurrence: opens,
                opens_at: opens,
                closes_at: opens + chrono::TimeDelta::hours(2),
            },
        };
        assert!(ReportedWindow::from(state(true)).due);
        assert!(!ReportedWindow::from(state(false)).due);
        assert!(!ReportedWindow::from(state(true)).rebooted(true).due);
        assert!(!ReportedWindow::from(state(false)).rebooted(false).due);
        let older: ReportedWindow = serde_json::from_value(json!({"open": true,
            "opensAt": "2026-11-29T01:00:00.000Z", "closesAt": "2026-11-29T03:00:00.000Z"}))
        .unwrap();
        assert!(!older.due);
    }

    #[test]
    fn reboot_report_round_trips() {
        let occurrence = Utc.with_ymd_and_hms(2026, 11, 29, 1, 0, 0).unwrap();
        let last = Utc.with_ymd_and_hms(2026, 11, 29, 1, 4, 10).unwrap();
        let report = RebootReport {
            last_reboot: Some(last),
            status: RebootStatus::Completed,
            occurrence: Some(occurrence),
            completed_at: None,
            error: None,
            forced: None,
            reason: None,
        };
        let patch = report.to_patch();
        assert_eq!(
            patch["iothubDM"]["reboot"],
            json!({ "lastReboot": "2026-11-29T01:04:10.000Z", "status": "completed",
                "occurrence": "2026-11-29T01:00:00.000Z", "completedAt": null, "error": null,
                "forced": null, "reason": null })
        );
        let back = RebootReport::from_reported(&patch).unwrap().unwrap();
        assert_eq!(back, report);
        assert!(back.completed_for(occurrence));
        assert!(!back.completed_for(occurrence + chrono::TimeDelta::days(7)));
        let minimal = json!({ "iothubDM": { "reboot": { "status": "rebooting" } } });
        let back = RebootReport::from_reported(&minimal).unwrap().unwrap();
        assert_eq!(back.status, RebootStatus::Rebooting);
        assert!(!back.completed_for(occurrence));
    }

    #[test]
    fn forced_and_simulated_reboots_read_from_the_reported_section() {
        let mut reported = json!({
            "iothubDM": {"reboot": {"status": "completed", "lastReboot": "2026-03-29T09:12:00.000Z",
                                    "forced": true, "reason": "INC-1234: kernel hotfix"}}
        });
        reported[REPORTED_AGENT] = simulated_report(2)[REPORTED_AGENT].clone();
        assert_eq!(
            forced_reboot(&reported),
            Some(ForcedReboot {
                at: Some(Utc.with_ymd_and_hms(2026, 3, 29, 9, 12, 0).unwrap()),
                reason: "INC-1234: kernel hotfix".into()
            })
        );
        assert_eq!(simulated_reboots(&reported), Some(2));
        let real = json!({"iothubDM": {"reboot": {"status": "completed", "forced": false}}});
        assert_eq!(forced_reboot(&real), None);
        assert_eq!(simulated_reboots(&real), None);
        assert_eq!(
            simulated_reboots(&json!({REPORTED_AGENT: {"rebootMode": "real"}})),
            None
        );
    }
}
