//! Reading twins into what apply, run and report look at, and the queries that fetch them.
//!
//! The twin schema itself (`desired.maintenance`, `reported.maintenance`, `iothubDM.reboot`, the
//! query paths) is defined once, in [`casement_policy::maintenance`]; this module only reads it,
//! tolerating twins that do not follow it (a device with a foreign `maintenance` property is
//! reported, not a crash).

use casement_iothub::rest::{ConnectionState, Twin};
use casement_iothub::time::parse_timestamp;
use casement_policy::maintenance::{IOTHUB_DM, MAINTENANCE, paths};
use casement_policy::{
    DesiredMaintenance, RebootReport, ReportedMaintenance, SchemaError, WindowSpec,
};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::rollout::{Observation, Window};

/// One device's twin, as far as maintenance is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinView {
    /// The device id.
    pub device_id: String,
    /// The twin's ETag (for `If-Match`).
    pub etag: Option<String>,
    /// Whether the device is connected now (`None` when the twin does not say).
    pub connected: Option<bool>,
    /// `desired.maintenance` as stored (raw JSON; `None` when absent or null).
    pub desired_raw: Option<Value>,
    /// `desired.maintenance`, parsed (`Err` with the reason when it does not follow the schema).
    pub desired: Option<Result<DesiredMaintenance, String>>,
    /// When `desired.maintenance` was last written (`$metadata.maintenance.$lastUpdated`).
    pub desired_updated: Option<DateTime<Utc>>,
    /// `reported.maintenance`, parsed.
    pub reported: Option<Result<ReportedMaintenance, String>>,
    /// `reported.iothubDM.reboot`, parsed.
    pub reboot: Option<Result<RebootReport, String>>,
    /// How many reboots the device's agent simulated, when it simulates them
    /// (`reported.casementAgent`, [`casement_policy::maintenance::simulated_reboots`]); `None`
    /// for an agent that really reboots.
    pub simulated_reboots: Option<u64>,
}

fn parse_section<T>(found: Option<Result<T, SchemaError>>) -> Option<Result<T, String>> {
    found.map(|r| r.map_err(|e| e.to_string()))
}

/// `$metadata.maintenance.$lastUpdated` of a desired section.
fn last_updated(section: &Map<String, Value>) -> Option<DateTime<Utc>> {
    let text = section
        .get("$metadata")?
        .get(MAINTENANCE)?
        .get("$lastUpdated")?
        .as_str()?;
    parse_timestamp(text).ok()
}

impl TwinView {
    /// Reads a twin.
    pub fn from_twin(twin: &Twin) -> Self {
        let desired = Value::Object(twin.properties.desired.clone());
        let reported = Value::Object(twin.properties.reported.clone());
        let desired_raw = twin
            .properties
            .desired
            .get(MAINTENANCE)
            .filter(|v| !v.is_null())
            .cloned();
        Self {
            device_id: twin.device_id.clone(),
            etag: twin.etag.clone(),
            connected: twin
                .connection_state
                .map(|c| c == ConnectionState::Connected),
            desired_raw,
            desired: parse_section(DesiredMaintenance::from_desired(&desired)),
            desired_updated: last_updated(&twin.properties.desired),
            reported: parse_section(ReportedMaintenance::from_reported(&reported)),
            reboot: parse_section(RebootReport::from_reported(&reported)),
            simulated_reboots: casement_policy::maintenance::simulated_reboots(&reported),
        }
    }

    /// Reads a twin from a query answer (`SELECT *` items are twins).
    pub fn from_value(value: Value) -> Result<Self, String> {
        let twin: Twin = serde_json::from_value(value).map_err(|e| e.to_string())?;
        Ok(Self::from_twin(&twin))
    }

    /// The desired policy's name and revision, when the desired section follows the schema.
    pub fn desired_policy(&self) -> Option<(&str, &str)> {
        match &self.desired {
            Some(Ok(d)) => Some((d.policy.as_str(), d.revision.as_str())),
            _ => None,
        }
    }

    /// The desired policy's name, even when the rest of the section does not parse.
    pub fn desired_policy_name(&self) -> Option<&str> {
        self.desired_raw.as_ref()?.get("policy")?.as_str()
    }

    /// The reported maintenance, when it parses.
    pub fn reported(&self) -> Option<&ReportedMaintenance> {
        self.reported.as_ref()?.as_ref().ok()
    }

    /// The reported reboot state, when it parses.
    pub fn reboot(&self) -> Option<&RebootReport> {
        self.reboot.as_ref()?.as_ref().ok()
    }

    /// The zone the device reports, when it is a valid IANA name.
    pub fn device_zone(&self) -> Option<Tz> {
        self.reported()?.timezone.parse().ok()
    }

    /// What the rollout needs, with the scheduler's own window for this device at `now`
    /// computed from `spec` (the policy's window) in the policy's or the device's zone.
    pub fn observation(&self, spec: &WindowSpec, now: DateTime<Utc>) -> Observation {
        self.observation_with(scheduler_window(spec, self.device_zone(), now))
    }

    /// [`observation`](Self::observation) with the scheduler's window already computed (the
    /// run loop computes it once per zone).
    pub fn observation_with(&self, window: Option<Window>) -> Observation {
        let reported = self.reported();
        let reboot = self.reboot();
        Observation {
            device_id: self.device_id.clone(),
            policy: reported.map(|r| r.policy.clone()),
            revision: reported.map(|r| r.revision.clone()),
            applied: reported
                .is_some_and(|r| r.status == casement_policy::MaintenanceStatus::Applied),
            window_open: reported.and_then(|r| r.window).is_some_and(|w| w.open),
            window_opens_at: reported.and_then(|r| r.window).map(|w| w.opens_at),
            last_reboot: reboot.and_then(|r| r.last_reboot),
            reboot_status: reboot.map(|r| r.status),
            reboot_occurrence: reboot.and_then(|r| r.occurrence),
            window,
        }
    }
}

/// The scheduler's own answer for a device: the window open at `now` or the next one, in the
/// policy's zone or (for `timezone = "device"`) the device's; `None` when the zone is unknown.
pub fn scheduler_window(
    spec: &WindowSpec,
    device_zone: Option<Tz>,
    now: DateTime<Utc>,
) -> Option<Window> {
    spec.window_for(device_zone, now).map(|state| state.window)
}

/// Quotes a string literal for the IoT Hub query language
/// ([`casement_iothub::query::quote_literal`]).
pub fn quote(text: &str) -> String {
    casement_iothub::query::quote_literal(text)
}

/// Devices that carry a Casement policy in their desired properties (optionally one policy).
pub fn carriers_query(policy: Option<&str>) -> String {
    match policy {
        Some(p) => format!(
            "SELECT * FROM devices WHERE {} = {}",
            paths::DESIRED_POLICY,
            quote(p)
        ),
        None => format!(
            "SELECT * FROM devices WHERE IS_DEFINED({})",
            paths::DESIRED_POLICY
        ),
    }
}

/// The run loop's candidate query: at most `top` devices that report this policy and say they
/// are due a reboot now (`maintenance.window.due`: open, and not rebooted for this occurrence),
/// with only what the rollout reads — `deviceId`, `reported.maintenance` and
/// `reported.iothubDM` (read back with [`TwinView::from_candidate`]). A pass therefore costs
/// what it can act on (`top` comes from the free `max_concurrent` slots and the per-minute
/// budget), not what the fleet holds.
pub fn candidates_query(policy: &str, top: u32) -> String {
    format!(
        "SELECT TOP {top} deviceId, {}, {} FROM devices WHERE {} = {} AND {} = true",
        paths::REPORTED_MAINTENANCE,
        REPORTED_IOTHUB_DM,
        paths::REPORTED_POLICY,
        quote(policy),
        paths::REPORTED_WINDOW_DUE
    )
}

/// `properties.reported.iothubDM`, the parent of [`paths::REPORTED_REBOOT`].
const REPORTED_IOTHUB_DM: &str = "properties.reported.iothubDM";

impl TwinView {
    /// Reads one item of [`candidates_query`]: `{"deviceId", "maintenance", "iothubDM"}` (the
    /// projection names each value by its path's last segment). The desired side and the
    /// connection state are not in it.
    pub fn from_candidate(value: &Value) -> Result<Self, String> {
        let device_id = value
            .get("deviceId")
            .and_then(Value::as_str)
            .ok_or("a candidate without a deviceId")?
            .to_owned();
        let mut reported = Map::new();
        for key in [MAINTENANCE, IOTHUB_DM] {
            if let Some(v) = value.get(key) {
                reported.insert(key.to_owned(), v.clone());
            }
        }
        let reported = Value::Object(reported);
        Ok(Self {
            device_id,
            etag: None,
            connected: None,
            desired_raw: None,
            desired: None,
            desired_updated: None,
            reported: parse_section(ReportedMaintenance::from_reported(&reported)),
            reboot: parse_section(RebootReport::from_reported(&reported)),
            simulated_reboots: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casement_iothub::query;
    use serde_json::json;

    fn twin_json() -> Value {
        json!({
            "deviceId": "gw-1",
            "etag": "AAAAAAAAAAc=",
            "version": 7,
            "connectionState": "Connected",
            "tags": {"role": "gateway"},
            "properties": {
                "desired": {
                    "maintenance": {
                        "policy": "weekly", "revision": "9c1e3f2a",
                        "window": {"schedule": "0 2 * * SUN", "durationSeconds": 7200,
                                   "timezone": "device", "blackout": []},
                        "reboot": {"expectedDurationSeconds": 300}
                    },
                    "$metadata": {"$lastUpdated": "2026-11-20T10:00:00.000Z",
                                  "maintenance": {"$lastUpdated": "2026-11-20T10:00:00.000Z"}},
                    "$version": 3
                },
                "reported": {
                    "maintenance": {
                        "policy": "weekly", "revision": "9c1e3f2a", "status": "applied",
                        "error": null, "timezone": "Europe/Amsterdam",
                        "window": {"open": true, "opensAt": "2026-11-29T01:00:00.000Z",
                                   "closesAt": "2026-11-29T03:00:00.000Z"}
                    },
                    "iothubDM": {"reboot": {"lastReboot": "2026-11-22T01:04:10.000Z",
                        "status": "completed", "occurrence": "2026-11-22T01:00:00.000Z"}},
                    "$version": 9
                }
            }
        })
    }

    #[test]
    fn a_twin_reads_into_a_view_and_an_observation() {
        let view = TwinView::from_value(twin_json()).unwrap();
        assert_eq!(view.device_id, "gw-1");
        assert_eq!(view.etag.as_deref(), Some("AAAAAAAAAAc="));
        assert_eq!(view.connected, Some(true));
        assert_eq!(view.desired_policy(), Some(("weekly", "9c1e3f2a")));
        assert_eq!(view.device_zone(), Some(chrono_tz::Europe::Amsterdam));
        assert_eq!(
            view.desired_updated,
            Some("2026-11-20T10:00:00Z".parse().unwrap())
        );
        let plan = view.desired.clone().unwrap().unwrap().validate().unwrap();
        let now: DateTime<Utc> = "2026-11-29T01:30:00Z".parse().unwrap();
        let obs = view.observation(&plan.window, now);
        assert!(obs.applied && obs.window_open);
        let w = obs.window.unwrap();
        // 02:00 Amsterdam in winter is 01:00 UTC.
        assert_eq!(
            w.opens_at,
            "2026-11-29T01:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(obs.window_opens_at, Some(w.opens_at));
        assert_eq!(
            obs.reboot_occurrence,
            Some("2026-11-22T01:00:00Z".parse().unwrap())
        );
    }

    #[test]
    fn foreign_maintenance_properties_are_errors_in_the_view_not_panics() {
        let mut t = twin_json();
        t["properties"]["desired"]["maintenance"] = json!({"policy": "x", "window": 5});
        t["properties"]["reported"]["maintenance"] = json!("nonsense");
        t["properties"]["reported"]["iothubDM"] = json!({"reboot": {"status": "exploded"}});
        let view = TwinView::from_value(t).unwrap();
        assert!(matches!(view.desired, Some(Err(_))));
        assert_eq!(view.desired_policy_name(), Some("x"));
        assert!(view.reported().is_none());
        assert!(view.reboot().is_none());
        let spec = casement_policy::WindowSpec::new(
            casement_policy::Schedule::parse("0 2 * * SUN").unwrap(),
            std::time::Duration::from_secs(3600),
            casement_policy::ZoneSpec::Device,
            [],
        )
        .unwrap();
        let obs = view.observation(&spec, Utc::now());
        assert!(!obs.applied);
        assert_eq!(obs.window, None, "no zone reported");
    }

    #[test]
    fn queries_parse_and_quote_literals() {
        for q in [
            carriers_query(None),
            carriers_query(Some("it's")),
            candidates_query("weekly", 7),
        ] {
            query::parse(&q).unwrap_or_else(|e| panic!("{q}: {e}"));
        }
        assert_eq!(quote("it's"), "'it\\'s'");
    }

    #[test]
    fn a_candidate_projection_reads_like_the_whole_twin() {
        let twin = twin_json();
        let q = query::parse(&candidates_query("weekly", 5)).unwrap();
        assert_eq!(q.top, Some(5));
        let item = json!({
            "deviceId": "gw-1",
            "maintenance": twin["properties"]["reported"]["maintenance"],
            "iothubDM": twin["properties"]["reported"]["iothubDM"],
        });
        let whole = TwinView::from_value(twin).unwrap();
        let projected = TwinView::from_candidate(&item).unwrap();
        assert_eq!(projected.reported, whole.reported);
        assert_eq!(projected.reboot, whole.reboot);
        let now: DateTime<Utc> = "2026-11-29T01:30:00Z".parse().unwrap();
        let plan = whole.desired.clone().unwrap().unwrap().validate().unwrap();
        assert_eq!(
            projected.observation(&plan.window, now),
            whole.observation(&plan.window, now)
        );
        assert!(TwinView::from_candidate(&json!({"maintenance": {}})).is_err());
    }
}
