//! The report's queries: a summary whose number of queries does not grow with the fleet, and
//! the per-device listing with a projection instead of `SELECT *`.
//!
//! # The summary ([`compute_summary`])
//!
//! 1. One aggregate query ([`summary_query`]) counts the carriers per group of what decides a
//!    device's state: desired policy and revision, reported policy, revision, status and zone,
//!    the reported reboot's occurrence and status, and `connectionState`. The number of groups
//!    is bounded by policies × zones × recent occurrences × statuses, not by the fleet.
//! 2. One `TOP 1` query per (desired policy, revision) reads that revision's desired section
//!    (its window) ([`desired_query`]).
//! 3. Each group is classified once with [`classify`](super::classify) on a twin made of the
//!    group's values; the window math runs once per (policy, revision, zone) (the
//!    [`WindowCache`]). Three inputs are per device and not in the group: when the policy
//!    reached the device (desired `$metadata`, pending against missed), `lastReboot` (a
//!    completed reboot judged by its time) and the journal's failed or unresolved calls. The
//!    group is classified with each extreme of the first two (arrived long ago or just now;
//!    no reboot time, one in the latest window, one in the window judged); when every probe
//!    gives the same state and judged window, and the journal has no failed or unresolved
//!    call for the windows looked at, the whole group gets that state.
//! 4. Any other group is *undecided*: one more projected, filtered query
//!    ([`members_query`]) reads its devices (the fields [`classify`](super::classify) reads)
//!    and classifies them one by one.
//!
//! So the summary costs 1 + (policy revisions) + (undecided groups) queries, each one page
//! unless an undecided group is larger than a page. Undecided groups are small in a healthy
//! fleet: devices that missed or failed a window, or that a policy reached recently. In the
//! worst case (a whole fleet that missed its window) they read the fleet once, projected.

use std::collections::BTreeMap;
use std::time::Duration;

use casement_client::{ClientError, HubApi};
use casement_policy::maintenance::paths;
use casement_policy::{DesiredMaintenance, RebootReport, ReportedMaintenance};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use super::{DeviceReport, Report, WindowCache, assemble, classify};
use crate::fleet::{TwinView, quote};
use crate::journal::JournalView;
use crate::rollout::EntryState;

/// The grouped attributes: (path, alias in the answer).
pub const GROUP_FIELDS: [(&str, &str); 9] = [
    (paths::DESIRED_POLICY, "dp"),
    (paths::DESIRED_REVISION, "dr"),
    (paths::REPORTED_POLICY, "rp"),
    (paths::REPORTED_REVISION, "rr"),
    (paths::REPORTED_STATUS, "rs"),
    (paths::REPORTED_TIMEZONE, "tz"),
    (paths::REBOOT_OCCURRENCE, "bo"),
    (paths::REBOOT_STATUS, "bs"),
    ("connectionState", "cs"),
];

/// `properties.desired.$metadata.maintenance.$lastUpdated`: when the policy reached the twin.
const DESIRED_UPDATED: &str = "properties.desired.$metadata.maintenance.$lastUpdated";

fn carriers_condition(policy: Option<&str>) -> String {
    match policy {
        Some(p) => format!("{} = {}", paths::DESIRED_POLICY, quote(p)),
        None => format!("IS_DEFINED({})", paths::DESIRED_POLICY),
    }
}

/// The summary's aggregate query: carriers counted per group of state-deciding attributes.
pub fn summary_query(policy: Option<&str>) -> String {
    let items: Vec<String> = GROUP_FIELDS
        .iter()
        .map(|(path, alias)| format!("{path} AS {alias}"))
        .collect();
    let group: Vec<&str> = GROUP_FIELDS.iter().map(|(path, _)| *path).collect();
    format!(
        "SELECT {}, COUNT() AS n FROM devices WHERE {} GROUP BY {}",
        items.join(", "),
        carriers_condition(policy),
        group.join(", ")
    )
}

/// One twin's desired section of `policy` at `revision`.
pub fn desired_query(policy: &str, revision: &str) -> String {
    format!(
        "SELECT TOP 1 {} AS dm FROM devices WHERE {} = {} AND {} = {}",
        paths::DESIRED_MAINTENANCE,
        paths::DESIRED_POLICY,
        quote(policy),
        paths::DESIRED_REVISION,
        quote(revision)
    )
}

/// The projection [`classify`](super::classify) needs, for `--devices` and undecided groups.
fn projection() -> String {
    format!(
        "deviceId, connectionState, {} AS dm, {DESIRED_UPDATED} AS du, {} AS rm, {} AS rb",
        paths::DESIRED_MAINTENANCE,
        paths::REPORTED_MAINTENANCE,
        paths::REPORTED_REBOOT
    )
}

/// The per-device query of `--devices`: the carriers, projected (not `SELECT *`).
pub fn devices_query(policy: Option<&str>) -> String {
    format!(
        "SELECT {} FROM devices WHERE {}",
        projection(),
        carriers_condition(policy)
    )
}

/// A literal for `value` in a query, when it is a primitive.
fn literal(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(quote(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        _ => None,
    }
}

/// The devices of one group (a row of [`summary_query`]'s answer), projected; `None` when a
/// grouped value is not a primitive (an object where the schema wants a string: no query
/// condition can select it in Azure's dialect).
pub fn members_query(group: &Map<String, Value>) -> Option<String> {
    let conditions = GROUP_FIELDS
        .iter()
        .map(|(path, alias)| match group.get(*alias) {
            None => Some(format!("NOT IS_DEFINED({path})")),
            Some(v) => literal(v).map(|l| format!("{path} = {l}")),
        })
        .collect::<Option<Vec<String>>>()?;
    Some(format!(
        "SELECT {} FROM devices WHERE {}",
        projection(),
        conditions.join(" AND ")
    ))
}

/// A projected row ([`projection`]) as the twin JSON [`TwinView::from_value`] reads.
fn row_twin(row: Value) -> Value {
    let Value::Object(mut row) = row else {
        return row;
    };
    let mut desired = Map::new();
    if let Some(dm) = row.remove("dm") {
        desired.insert("maintenance".into(), dm);
    }
    if let Some(du) = row.remove("du") {
        desired.insert(
            "$metadata".into(),
            json!({"maintenance": {"$lastUpdated": du}}),
        );
    }
    let mut reported = Map::new();
    if let Some(rm) = row.remove("rm") {
        reported.insert("maintenance".into(), rm);
    }
    if let Some(rb) = row.remove("rb") {
        reported.insert("iothubDM".into(), json!({ "reboot": rb }));
    }
    row.insert(
        "properties".into(),
        json!({"desired": desired, "reported": reported}),
    );
    Value::Object(row)
}

/// Reads projected rows as twins; rows that are not twins are skipped with a warning.
fn views(rows: Vec<Value>) -> Vec<TwinView> {
    rows.into_iter()
        .filter_map(|row| match TwinView::from_value(row_twin(row)) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "skipping a query result that is not a twin");
                None
            }
        })
        .collect()
}

/// Queries the hub (projected, every carrier) and builds the report with device lines.
///
/// # Errors
/// The hub's, as [`ClientError`].
pub async fn compute_devices<H: HubApi>(
    hub: &H,
    journal: &JournalView,
    now: DateTime<Utc>,
    lookback: Duration,
    policy: Option<&str>,
) -> Result<Report, ClientError> {
    let rows = hub.query(&devices_query(policy)).await?;
    Ok(super::build(&views(rows), journal, now, lookback, policy))
}

/// The twin a group stands for, with the per-device inputs set to the probe's values.
fn group_view(
    group: &Map<String, Value>,
    desired: &DesiredMaintenance,
    desired_updated: Option<DateTime<Utc>>,
    last_reboot: Option<DateTime<Utc>>,
) -> TwinView {
    let get = |alias: &str| group.get(alias).cloned();
    let mut maintenance = Map::new();
    for (key, alias) in [
        ("policy", "rp"),
        ("revision", "rr"),
        ("status", "rs"),
        ("timezone", "tz"),
    ] {
        if let Some(v) = get(alias) {
            maintenance.insert(key.into(), v);
        }
    }
    let mut reboot = Map::new();
    for (key, alias) in [("occurrence", "bo"), ("status", "bs")] {
        if let Some(v) = get(alias) {
            reboot.insert(key.into(), v);
        }
    }
    if let Some(t) = last_reboot {
        reboot.insert(
            "lastReboot".into(),
            Value::String(casement_iothub::time::format_timestamp(t)),
        );
    }
    let mut reported = Map::new();
    if !maintenance.is_empty() {
        reported.insert("maintenance".into(), Value::Object(maintenance));
    }
    if !reboot.is_empty() {
        reported.insert("iothubDM".into(), json!({ "reboot": reboot }));
    }
    let reported = Value::Object(reported);
    TwinView {
        device_id: String::new(),
        etag: None,
        connected: match group.get("cs").and_then(Value::as_str) {
            Some("Connected") => Some(true),
            Some("Disconnected") => Some(false),
            _ => None,
        },
        desired_raw: None,
        desired: Some(Ok(desired.clone())),
        desired_updated,
        reported: parse(ReportedMaintenance::from_reported(&reported)),
        reboot: parse(RebootReport::from_reported(&reported)),
    }
}

/// The group's state when it does not depend on per-device inputs; `None` when it does.
fn decide(
    group: &Map<String, Value>,
    desired: &DesiredMaintenance,
    journal: &JournalView,
    cache: &mut WindowCache,
    now: DateTime<Utc>,
    lookback: Duration,
) -> Option<Option<DeviceReport>> {
    let first = classify(
        &group_view(group, desired, None, None),
        journal,
        cache,
        now,
        lookback,
    );
    let Some(first) = first else {
        return Some(None);
    };
    let latest = first.open_window.or(first.last_window);
    let judged = first.last_window;
    let windows: Vec<DateTime<Utc>> = [latest, judged]
        .into_iter()
        .flatten()
        .map(|w| w.opens_at)
        .collect();
    // The arrival probes: long ago, or after every window.
    let arrivals = [None, Some(now + TimeDelta::days(1))];
    let reboots = [None, latest.map(|w| w.opens_at), judged.map(|w| w.opens_at)];
    for arrival in arrivals {
        for reboot in reboots {
            let probe = classify(
                &group_view(group, desired, arrival, reboot),
                journal,
                cache,
                now,
                lookback,
            )?;
            if probe.state != first.state || probe.last_window != first.last_window {
                return None;
            }
        }
    }
    let per_device_journal = journal.entries.iter().any(|e| {
        e.policy == desired.policy
            && windows.contains(&e.occurrence)
            && matches!(
                e.state,
                EntryState::Failed(_) | EntryState::Invoking | EntryState::Accepted
            )
    });
    if per_device_journal {
        return None;
    }
    Some(Some(first))
}

fn parse<T>(found: Option<Result<T, casement_policy::SchemaError>>) -> Option<Result<T, String>> {
    found.map(|r| r.map_err(|e| e.to_string()))
}

/// What the summary cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SummaryCost {
    /// Groups the aggregate query returned.
    pub groups: usize,
    /// Groups that needed their devices read (one query each).
    pub undecided_groups: usize,
    /// Devices read one by one for them.
    pub devices_read: usize,
    /// Queries sent (each one page or more).
    pub queries: usize,
}

/// Queries the hub with the grouped queries and builds the report's counts, pauses and zone
/// timelines ([`Report::devices`] is empty). The counts equal
/// [`compute_devices`]'s (and [`super::compute`]'s) for the same twins.
///
/// # Errors
/// The hub's, as [`ClientError`].
pub async fn compute_summary<H: HubApi>(
    hub: &H,
    journal: &JournalView,
    now: DateTime<Utc>,
    lookback: Duration,
    policy: Option<&str>,
) -> Result<(Report, SummaryCost), ClientError> {
    let mut cost = SummaryCost::default();
    let groups = hub.query(&summary_query(policy)).await?;
    cost.queries += 1;
    let groups: Vec<Map<String, Value>> = groups
        .into_iter()
        .filter_map(|g| match g {
            Value::Object(o) => Some(o),
            _ => None,
        })
        .collect();
    cost.groups = groups.len();
    // Each revision's desired section, read once.
    let mut desired: BTreeMap<(String, String), Option<DesiredMaintenance>> = BTreeMap::new();
    for g in &groups {
        let (Some(p), Some(r)) = (
            g.get("dp").and_then(Value::as_str),
            g.get("dr").and_then(Value::as_str),
        ) else {
            continue;
        };
        let key = (p.to_owned(), r.to_owned());
        if desired.contains_key(&key) {
            continue;
        }
        let rows = hub.query(&desired_query(p, r)).await?;
        cost.queries += 1;
        let parsed = rows.into_iter().next().and_then(|row| {
            let section = json!({ "maintenance": row.get("dm")? });
            DesiredMaintenance::from_desired(&section)?.ok()
        });
        desired.insert(key, parsed);
    }
    let mut cache = WindowCache::default();
    let mut classified: Vec<(DeviceReport, u32)> = Vec::new();
    let mut undecided: Vec<String> = Vec::new();
    for g in &groups {
        let n = g
            .get("n")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0);
        let key = (
            g.get("dp")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            g.get("dr")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        );
        let Some(Some(d)) = desired.get(&key) else {
            // Not a parsable policy: not counted, as on the per-device path.
            continue;
        };
        match decide(g, d, journal, &mut cache, now, lookback) {
            Some(Some(report)) => classified.push((report, n)),
            Some(None) => {}
            None => match members_query(g) {
                Some(q) => undecided.push(q),
                // A value no condition selects (it fails the schema): the group's first
                // probe (no reboot time, policy long there) stands for it.
                None => {
                    let view = group_view(g, d, None, None);
                    if let Some(report) = classify(&view, journal, &mut cache, now, lookback) {
                        classified.push((report, n));
                    }
                }
            },
        }
    }
    cost.undecided_groups = undecided.len();
    for q in undecided {
        let rows = hub.query(&q).await?;
        cost.queries += 1;
        for view in views(rows) {
            cost.devices_read += 1;
            if let Some(d) = classify(&view, journal, &mut cache, now, lookback) {
                classified.push((d, 1));
            }
        }
    }
    let report = assemble(classified, &cache, journal, now, policy, false);
    Ok((report, cost))
}

#[cfg(test)]
mod tests {
    use super::*;
    use casement_iothub::query;

    #[test]
    fn every_query_the_report_builds_parses_in_azures_dialect() {
        let group: Map<String, Value> = serde_json::from_value(json!({
            "dp": "nightly", "dr": "3f2a", "rp": "nightly", "rr": "3f2a", "rs": "applied",
            "tz": "Europe/Amsterdam", "bo": "2026-03-29T02:00:00Z", "bs": "completed",
            "n": 12
        }))
        .unwrap();
        for q in [
            summary_query(None),
            summary_query(Some("it's")),
            desired_query("nightly", "3f2a"),
            devices_query(None),
            devices_query(Some("canary")),
            members_query(&group).unwrap(),
        ] {
            let parsed = query::parse(&q).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert_eq!(query::parse(&parsed.to_string()).unwrap(), parsed, "{q}");
        }
        let m = members_query(&group).unwrap();
        assert!(m.contains("NOT IS_DEFINED(connectionState)"), "{m}");
        assert!(
            m.contains("properties.reported.iothubDM.reboot.status = 'completed'"),
            "{m}"
        );
    }

    #[test]
    fn a_projected_row_reads_as_the_twin_it_came_from() {
        let row = json!({
            "deviceId": "d1", "connectionState": "Disconnected",
            "dm": {"policy": "p"}, "du": "2026-03-01T00:00:00Z",
            "rb": {"status": "completed", "lastReboot": "2026-03-02T00:00:00Z"}
        });
        let twin = row_twin(row);
        assert_eq!(twin["properties"]["desired"]["maintenance"]["policy"], "p");
        assert_eq!(
            twin["properties"]["desired"]["$metadata"]["maintenance"]["$lastUpdated"],
            "2026-03-01T00:00:00Z"
        );
        assert_eq!(
            twin["properties"]["reported"]["iothubDM"]["reboot"]["status"],
            "completed"
        );
        let view = TwinView::from_value(twin).unwrap();
        assert_eq!(view.connected, Some(false));
        assert!(view.desired_updated.is_some());
        assert!(view.reboot.is_some());
    }
}
