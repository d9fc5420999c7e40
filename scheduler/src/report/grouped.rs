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
//! 3. Each group is classified with [`classify`](super::classify) on a twin made of the
//!    group's values; the window math runs once per (policy, revision, zone) (the
//!    [`WindowCache`]). Three inputs are per device and not in the group: when the policy
//!    reached the device (`desired.$metadata.maintenance.$lastUpdated`: pending against
//!    missed), `lastReboot` (a completed reboot judged by its time) and the journal's failed or
//!    unresolved calls. Classification reads the first two only through comparisons with the
//!    boundaries of the windows looked at (the latest that opened and the one before it), so
//!    they are split into *ranges* between those boundaries (plus "not defined"); the journal
//!    splits into *classes* of devices with the same failed or unresolved calls in those
//!    windows (read from the local journal: no pages). The group is classified once per
//!    cell (range × range × class).
//! 4. When every cell gives the same state and judged window, the whole group gets it. Any
//!    other group is *split*: one `COUNT()` query per outcome but one ([`split_query`]: the
//!    group's values and the outcome's cells as conditions: `$lastUpdated` and `lastReboot`
//!    compared with the window boundaries as ISO-8601 strings, `deviceId IN [...]` for a
//!    journal class); the last outcome gets the rest of the group. Groups that differ only by
//!    their reboot's occurrence and split alike (devices whose last reboots were in different
//!    old windows) share their `COUNT()`s: the occurrence becomes an `IN [...]` condition.
//!
//! So the summary costs 1 + (policy revisions) + (outcomes − 1 of each split group) queries of
//! one page each (plus one grouped query per journal class, and one `TOP` query listing forced
//! reboots, when there are any): bounded by policies × zones × statuses (and the old windows
//! the devices last rebooted in, [`MERGED_OCCURRENCES`] to a query), never by devices, however
//! many missed or failed a window or were reached by a policy recently. A journal class's `IN` list is as long as the
//! journal's failed or unresolved calls in the windows looked at (bounded by the failure budget
//! and `max_concurrent`), in the query's text, not in its pages.
//!
//! The range conditions compare timestamps as strings, as Azure IoT Hub does: exact for the
//! hub's and the agent's own format (`2026-03-29T02:00:00.000Z`, milliseconds, UTC).

use std::collections::BTreeMap;
use std::time::Duration;

use casement_client::{ClientError, HubApi};
use casement_policy::maintenance::paths;
use casement_policy::{DesiredMaintenance, RebootReport, ReportedMaintenance, Window};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use super::{
    DeviceReport, DeviceState, FORCED_LISTED, ForcedLine, Report, WindowCache, WindowReport,
    assemble, classify,
};
use crate::fleet::{TwinView, quote};
use crate::journal::JournalView;
use crate::rollout::EntryState;

/// The grouped attributes: (path, alias in the answer).
pub const GROUP_FIELDS: [(&str, &str); 11] = [
    (paths::DESIRED_POLICY, "dp"),
    (paths::DESIRED_REVISION, "dr"),
    (paths::REPORTED_POLICY, "rp"),
    (paths::REPORTED_REVISION, "rr"),
    (paths::REPORTED_STATUS, "rs"),
    (paths::REPORTED_TIMEZONE, "tz"),
    (paths::REBOOT_OCCURRENCE, "bo"),
    (paths::REBOOT_STATUS, "bs"),
    (paths::REBOOT_FORCED, "bf"),
    (paths::REBOOT_MODE, "am"),
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

/// `properties.reported.casementAgent` ([`casement_policy::maintenance::REPORTED_AGENT`]).
const REPORTED_AGENT: &str = "properties.reported.casementAgent";

/// The projection [`classify`](super::classify) needs, for `--devices`.
fn projection() -> String {
    format!(
        "deviceId, connectionState, {} AS dm, {DESIRED_UPDATED} AS du, {} AS rm, {} AS rb, {REPORTED_AGENT} AS ag",
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

/// The conditions selecting one group (a row of [`summary_query`]'s answer); `None` when a
/// grouped value is not a primitive (an object where the schema wants a string: no query
/// condition can select it in Azure's dialect).
fn group_conditions(group: &Map<String, Value>) -> Option<Vec<String>> {
    GROUP_FIELDS
        .iter()
        .map(|(path, alias)| match group.get(*alias) {
            None => Some(format!("NOT IS_DEFINED({path})")),
            Some(v) => literal(v).map(|l| format!("{path} = {l}")),
        })
        .collect()
}

/// The `COUNT()` of one group's devices in some of its cells: the group's conditions and the
/// cells' (each a condition on the per-device inputs, see [`compute_summary`]).
pub fn split_query(group: &[String], cells: &str) -> String {
    format!(
        "SELECT COUNT() AS n FROM devices WHERE {} AND ({cells})",
        group.join(" AND ")
    )
}

/// The forced reboots listed under the summary: at most [`FORCED_LISTED`] carriers whose last
/// reboot was forced.
pub fn forced_query(policy: Option<&str>) -> String {
    format!(
        "SELECT TOP {FORCED_LISTED} deviceId, {} AS dp, {} AS rb FROM devices WHERE {} AND {} = true",
        paths::DESIRED_POLICY,
        paths::REPORTED_REBOOT,
        carriers_condition(policy),
        paths::REBOOT_FORCED
    )
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
    if let Some(ag) = row.remove("ag") {
        reported.insert(casement_policy::maintenance::REPORTED_AGENT.into(), ag);
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

/// The twin a group stands for, with the per-device inputs set to a cell's values.
fn group_view(group: &Map<String, Value>, desired: &DesiredMaintenance, cell: &Probe) -> TwinView {
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
    for (key, alias) in [("occurrence", "bo"), ("status", "bs"), ("forced", "bf")] {
        if let Some(v) = get(alias) {
            reboot.insert(key.into(), v);
        }
    }
    if let Some(t) = cell.last_reboot {
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
    if let Some(mode) = get("am") {
        reported.insert(
            casement_policy::maintenance::REPORTED_AGENT.into(),
            json!({ "rebootMode": mode }),
        );
    }
    let reported = Value::Object(reported);
    TwinView {
        device_id: cell.device.clone(),
        etag: None,
        connected: match group.get("cs").and_then(Value::as_str) {
            Some("Connected") => Some(true),
            Some("Disconnected") => Some(false),
            _ => None,
        },
        desired_raw: None,
        desired: Some(Ok(desired.clone())),
        desired_updated: cell.desired_updated,
        reported: parse(ReportedMaintenance::from_reported(&reported)),
        reboot: parse(RebootReport::from_reported(&reported)),
        simulated_reboots: casement_policy::maintenance::simulated_reboots(&reported),
    }
}

/// The per-device inputs of one cell: a representative value of each range (and a device of
/// the journal class), and the condition selecting the cell's devices.
#[derive(Debug, Clone, Default)]
struct Probe {
    desired_updated: Option<DateTime<Utc>>,
    last_reboot: Option<DateTime<Utc>>,
    /// A device of the journal class (empty: the devices the journal has nothing on).
    device: String,
}

/// One range of a per-device input: a representative value and its condition.
type Range = (Option<DateTime<Utc>>, String);

fn at(t: DateTime<Utc>) -> String {
    quote(&casement_iothub::time::format_timestamp(t))
}

/// The ranges of `path` (a timestamp) that comparisons `t > b` (`strict`: the arrival against
/// a window's opening) or `t >= b` (a reboot time against a window's bounds) with each of the
/// sorted `bounds` tell apart, and "not defined".
fn ranges(path: &str, bounds: &[DateTime<Utc>], strict: bool) -> Vec<Range> {
    let mut out = vec![(None, format!("NOT IS_DEFINED({path})"))];
    let (below, above) = if strict { ("<=", ">") } else { ("<", ">=") };
    let second = TimeDelta::seconds(1);
    for (i, b) in bounds.iter().enumerate() {
        // The range ending at `b`: a representative on its side of `b`.
        let rep = if strict { *b } else { *b - second };
        let cond = match i.checked_sub(1).map(|j| bounds[j]) {
            None => format!("{path} {below} {}", at(*b)),
            Some(a) => format!("{path} {above} {} AND {path} {below} {}", at(a), at(*b)),
        };
        out.push((Some(rep), cond));
    }
    match bounds.last() {
        None => out.push((
            Some(DateTime::<Utc>::UNIX_EPOCH),
            format!("IS_DEFINED({path})"),
        )),
        Some(last) => out.push((
            Some(if strict { *last + second } else { *last }),
            format!("{path} {above} {}", at(*last)),
        )),
    }
    out
}

/// What a journal class of devices had in the windows looked at: per window, a failed call
/// (`true`) or an unresolved one (`false`).
type JournalClass = Vec<(DateTime<Utc>, bool)>;

/// The devices of `policy` the journal has failed or unresolved calls for in `windows`, by
/// class.
fn journal_classes(
    journal: &JournalView,
    policy: &str,
    windows: &[DateTime<Utc>],
) -> BTreeMap<JournalClass, Vec<String>> {
    let mut per_device: BTreeMap<&str, BTreeMap<DateTime<Utc>, bool>> = BTreeMap::new();
    for e in &journal.entries {
        if e.policy != policy || !windows.contains(&e.occurrence) {
            continue;
        }
        let failed = match e.state {
            EntryState::Failed(_) => true,
            EntryState::Invoking | EntryState::Accepted => false,
            _ => continue,
        };
        let seen = per_device
            .entry(&e.device)
            .or_default()
            .entry(e.occurrence)
            .or_insert(failed);
        *seen |= failed;
    }
    let mut classes: BTreeMap<JournalClass, Vec<String>> = BTreeMap::new();
    for (device, calls) in per_device {
        classes
            .entry(calls.into_iter().collect())
            .or_default()
            .push(device.to_owned());
    }
    classes
}

fn id_list(ids: &[String]) -> String {
    ids.iter()
        .map(|id| quote(id))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One outcome of a group's cells: its line, and per arrival range the reboot ranges that give
/// it.
struct Outcome {
    line: DeviceReport,
    cells: Vec<Vec<usize>>,
}

type Key = (DeviceState, Option<WindowReport>);

fn key(line: &DeviceReport) -> Key {
    (line.state, line.last_window)
}

/// The condition selecting `cells` (per arrival range, the reboot ranges); `None` when they are
/// every cell.
fn cells_condition(cells: &[Vec<usize>], arrivals: &[Range], reboots: &[Range]) -> Option<String> {
    if cells.iter().all(|rs| rs.len() == reboots.len()) {
        return None;
    }
    let mut any = Vec::new();
    for (a, rs) in cells.iter().enumerate() {
        if rs.is_empty() {
            continue;
        }
        if rs.len() == reboots.len() {
            any.push(format!("({})", arrivals[a].1));
        } else {
            let some: Vec<String> = rs.iter().map(|r| format!("({})", reboots[*r].1)).collect();
            any.push(format!("(({}) AND ({}))", arrivals[a].1, some.join(" OR ")));
        }
    }
    Some(any.join(" OR "))
}

/// Devices the journal moves from an outcome of the group to another: the journal class's
/// devices, and per move the outcome they leave (an index into [`Split::Parts`]'s outcomes),
/// the line they get and the cells where that happens.
struct JournalMoves {
    ids: Vec<String>,
    moves: Vec<(usize, DeviceReport, Option<String>)>,
}

/// How a group is counted.
enum Split {
    /// Every device of the group gets this line (`None`: not counted, no parsable policy).
    Whole(Option<DeviceReport>),
    /// The group's devices differ by their per-device inputs: per outcome (as if the journal
    /// had nothing on them), its line and the condition selecting its devices within the group
    /// (`None`: all of them); then the devices the journal moves to another outcome.
    Parts(Vec<(DeviceReport, Option<String>)>, Vec<JournalMoves>),
}

/// Classifies a group once per cell of its per-device inputs.
fn split(
    group: &Map<String, Value>,
    desired: &DesiredMaintenance,
    journal: &JournalView,
    cache: &mut WindowCache,
    now: DateTime<Utc>,
    lookback: Duration,
) -> Split {
    let zone = group
        .get("tz")
        .and_then(Value::as_str)
        .and_then(|z| z.parse().ok());
    // The windows looked at: the latest that opened and the one before it.
    let windows: Vec<Window> = match cache.opened_for(desired, zone, now, lookback) {
        Ok((_, opened)) => opened[opened.len().saturating_sub(2)..].to_vec(),
        Err(_) => Vec::new(),
    };
    let mut opens: Vec<DateTime<Utc>> = windows.iter().map(|w| w.opens_at).collect();
    let mut bounds: Vec<DateTime<Utc>> = windows
        .iter()
        .flat_map(|w| [w.opens_at, w.closes_at])
        .collect();
    for v in [&mut opens, &mut bounds] {
        v.sort_unstable();
        v.dedup();
    }
    let arrivals = ranges(DESIRED_UPDATED, &opens, true);
    let reboots = ranges(paths::LAST_REBOOT, &bounds, false);
    let mut classify_cell = |device: &str, a: usize, r: usize| {
        let probe = Probe {
            desired_updated: arrivals[a].0,
            last_reboot: reboots[r].0,
            device: device.to_owned(),
        };
        classify(
            &group_view(group, desired, &probe),
            journal,
            cache,
            now,
            lookback,
        )
    };
    // The devices the journal has nothing on.
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut cell_outcome = vec![vec![0usize; reboots.len()]; arrivals.len()];
    for (a, per_reboot) in cell_outcome.iter_mut().enumerate() {
        for (r, slot) in per_reboot.iter_mut().enumerate() {
            let Some(line) = classify_cell("", a, r) else {
                return Split::Whole(None);
            };
            let i = match outcomes.iter().position(|o| key(&o.line) == key(&line)) {
                Some(i) => i,
                None => {
                    outcomes.push(Outcome {
                        line,
                        cells: vec![Vec::new(); arrivals.len()],
                    });
                    outcomes.len() - 1
                }
            };
            outcomes[i].cells[a].push(r);
            *slot = i;
        }
    }
    // Each journal class: the cells where its calls change the outcome.
    let mut moves = Vec::new();
    for (_, ids) in journal_classes(journal, &desired.policy, &opens) {
        let mut changed: Vec<((usize, Key), Outcome)> = Vec::new();
        for (a, per_reboot) in cell_outcome.iter().enumerate() {
            for (r, &from) in per_reboot.iter().enumerate() {
                let Some(line) = classify_cell(&ids[0], a, r) else {
                    continue;
                };
                if key(&line) == key(&outcomes[from].line) {
                    continue;
                }
                let pair = (from, key(&line));
                let i = match changed.iter().position(|(p, _)| *p == pair) {
                    Some(i) => i,
                    None => {
                        changed.push((
                            pair,
                            Outcome {
                                line,
                                cells: vec![Vec::new(); arrivals.len()],
                            },
                        ));
                        changed.len() - 1
                    }
                };
                changed[i].1.cells[a].push(r);
            }
        }
        if changed.is_empty() {
            continue;
        }
        moves.push(JournalMoves {
            ids,
            moves: changed
                .into_iter()
                .map(|((from, _), o)| {
                    let cond = cells_condition(&o.cells, &arrivals, &reboots);
                    (from, o.line, cond)
                })
                .collect(),
        });
    }
    if outcomes.len() == 1 && moves.is_empty() {
        return Split::Whole(outcomes.pop().map(|o| o.line));
    }
    let parts = outcomes
        .into_iter()
        .map(|o| {
            let cond = cells_condition(&o.cells, &arrivals, &reboots);
            (o.line, cond)
        })
        .collect();
    Split::Parts(parts, moves)
}

/// `ids` cut into runs whose `deviceId IN [...]` fits in `room` characters (at least one id
/// per run).
fn chunks(ids: &[String], room: usize) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut len = 0;
    for id in ids {
        let add = quote(id).len() + 2;
        match out.last_mut() {
            Some(run) if len + add <= room => {
                run.push(id.clone());
                len += add;
            }
            _ => {
                out.push(vec![id.clone()]);
                len = add;
            }
        }
    }
    out
}

fn parse<T>(found: Option<Result<T, casement_policy::SchemaError>>) -> Option<Result<T, String>> {
    found.map(|r| r.map_err(|e| e.to_string()))
}

/// What the summary cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SummaryCost {
    /// Groups the aggregate query returned.
    pub groups: usize,
    /// Groups whose devices differ by their per-device inputs, split by `COUNT()` queries.
    pub split_groups: usize,
    /// The `COUNT()` queries that split them.
    pub split_queries: usize,
    /// Queries sent (each one page or more).
    pub queries: usize,
}

/// The most occurrences one merged split lists (`IN [...]`), so its queries stay well within
/// IoT Hub's 8,192 characters.
pub const MERGED_OCCURRENCES: usize = 60;

/// Where the reboot's occurrence is in [`GROUP_FIELDS`].
fn occurrence_field() -> Option<usize> {
    GROUP_FIELDS.iter().position(|(_, alias)| *alias == "bo")
}

/// A group to split (or several, differing only by their reboot's occurrence, none of them a
/// window looked at, and split alike).
struct SplitGroup {
    /// The groups' values (without counts).
    members: Vec<Map<String, Value>>,
    /// Their devices.
    n: u32,
    /// The first group's conditions.
    conditions: Vec<String>,
    /// The occurrences' literals, when the groups have one (merged into one `IN`).
    occurrences: Vec<String>,
    parts: Vec<(DeviceReport, Option<String>)>,
    moves: Vec<JournalMoves>,
    /// What must be equal to merge: every condition but the occurrence, and the split.
    merge_key: String,
}

impl SplitGroup {
    fn new(
        member: Map<String, Value>,
        n: u32,
        conditions: Vec<String>,
        parts: Vec<(DeviceReport, Option<String>)>,
        moves: Vec<JournalMoves>,
    ) -> Self {
        let occurrence = occurrence_field()
            .and_then(|i| member.get(GROUP_FIELDS[i].1))
            .and_then(literal);
        let mut key_conditions = conditions.clone();
        if let (Some(i), Some(_)) = (occurrence_field(), &occurrence) {
            key_conditions[i] = String::new();
        } else {
            // Without an occurrence value the group merges with none.
            key_conditions.push(format!("{member:?}"));
        }
        let split: Vec<String> = parts
            .iter()
            .map(|(line, cells)| format!("{:?} {cells:?}", key(line)))
            .chain(moves.iter().flat_map(|m| {
                m.moves.iter().map(move |(from, line, cells)| {
                    format!("{:?} {from} {:?} {cells:?}", m.ids, key(line))
                })
            }))
            .collect();
        SplitGroup {
            members: vec![member],
            n,
            conditions,
            occurrences: occurrence.into_iter().collect(),
            parts,
            moves,
            merge_key: format!("{key_conditions:?} {split:?}"),
        }
    }

    fn absorb(&mut self, other: SplitGroup) {
        self.members.extend(other.members);
        self.n += other.n;
        self.occurrences.extend(other.occurrences);
    }
}

/// A group's values without its count: what tells groups apart.
fn identity(group: &Map<String, Value>) -> Map<String, Value> {
    let mut g = group.clone();
    g.remove("n");
    g
}

fn count_of(rows: &[Value]) -> u32 {
    rows.first()
        .and_then(|r| r.get("n"))
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// Queries the hub with the grouped queries and builds the report's counts, pauses, zone
/// timelines and forced reboots ([`Report::devices`] is empty). The counts equal
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
    // The groups to split, those that differ only by an old reboot occurrence (which no window
    // looked at has) and split alike merged: one set of COUNT()s for all of them.
    let mut to_split: Vec<SplitGroup> = Vec::new();
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
        let (parts, moves) = match split(g, d, journal, &mut cache, now, lookback) {
            Split::Whole(line) => {
                classified.extend(line.map(|l| (l, n)));
                continue;
            }
            Split::Parts(parts, moves) => (parts, moves),
        };
        let Some(conditions) = group_conditions(g) else {
            // A value no condition selects (it fails the schema): the group's first cell (no
            // reboot time, the policy long there) stands for it.
            let line = classify(
                &group_view(g, d, &Probe::default()),
                journal,
                &mut cache,
                now,
                lookback,
            );
            classified.extend(line.map(|l| (l, n)));
            continue;
        };
        let group = SplitGroup::new(identity(g), n, conditions, parts, moves);
        match to_split
            .iter_mut()
            .find(|s| s.merge_key == group.merge_key && s.occurrences.len() < MERGED_OCCURRENCES)
        {
            Some(same) => same.absorb(group),
            None => to_split.push(group),
        }
    }
    // Per journal class, the groups its devices are in (asked once per class).
    let mut present: BTreeMap<Vec<String>, Vec<Map<String, Value>>> = BTreeMap::new();
    for group in to_split {
        let SplitGroup {
            members,
            n,
            mut conditions,
            occurrences,
            mut parts,
            moves,
            ..
        } = group;
        if let (Some(i), false) = (occurrence_field(), occurrences.is_empty()) {
            conditions[i] = if occurrences.len() == 1 {
                format!("{} = {}", GROUP_FIELDS[i].0, occurrences[0])
            } else {
                format!("{} IN [{}]", GROUP_FIELDS[i].0, occurrences.join(", "))
            };
        }
        cost.split_groups += members.len();
        // Per outcome, how many of the group's devices: all outcomes but one counted, the one
        // with the longest condition gets the rest.
        let rest = parts
            .iter()
            .enumerate()
            .max_by_key(|(_, (_, cells))| cells.as_ref().map_or(usize::MAX, String::len))
            .map_or(0, |(i, _)| i);
        let mut counts = vec![0u32; parts.len()];
        for (i, (_, cells)) in parts.iter().enumerate() {
            if i == rest {
                continue;
            }
            let Some(cells) = cells else { continue };
            let rows = hub.query(&split_query(&conditions, cells)).await?;
            cost.queries += 1;
            cost.split_queries += 1;
            counts[i] = count_of(&rows);
        }
        counts[rest] = n.saturating_sub(counts.iter().sum());
        // The devices the journal moves to another outcome, counted by id (`IN` lists cut to
        // fit a query), in the groups that have some of them.
        for class in moves {
            let holders = match present.get(&class.ids) {
                Some(groups) => groups,
                None => {
                    let mut groups = Vec::new();
                    let probe = summary_query(policy)
                        .replace(" GROUP BY ", " AND deviceId IN [] GROUP BY ");
                    let room = casement_iothub::query::MAX_QUERY_CHARS.saturating_sub(probe.len());
                    for ids in chunks(&class.ids, room) {
                        let q = summary_query(policy).replace(
                            " GROUP BY ",
                            &format!(" AND deviceId IN [{}] GROUP BY ", id_list(&ids)),
                        );
                        let rows = hub.query(&q).await?;
                        cost.queries += 1;
                        groups.extend(rows.iter().filter_map(Value::as_object).map(identity));
                    }
                    present.entry(class.ids.clone()).or_insert(groups)
                }
            };
            if !members.iter().any(|m| holders.contains(m)) {
                continue;
            }
            for (from, line, cells) in class.moves {
                let cond = |ids: &str| match &cells {
                    Some(cells) => format!("({cells}) AND deviceId IN [{ids}]"),
                    None => format!("deviceId IN [{ids}]"),
                };
                let base = split_query(&conditions, &cond(""));
                let room = casement_iothub::query::MAX_QUERY_CHARS.saturating_sub(base.len());
                let mut moved = 0u32;
                for ids in chunks(&class.ids, room) {
                    let cond = cond(&id_list(&ids));
                    let rows = hub.query(&split_query(&conditions, &cond)).await?;
                    cost.queries += 1;
                    cost.split_queries += 1;
                    moved += count_of(&rows);
                }
                counts[from] = counts[from].saturating_sub(moved);
                classified.push((line, moved));
            }
        }
        for ((line, _), k) in parts.drain(..).zip(counts) {
            classified.push((line, k));
        }
    }
    let mut report = assemble(classified, &cache, journal, now, policy, false);
    if report.total.forced > 0 {
        let rows = hub.query(&forced_query(policy)).await?;
        cost.queries += 1;
        let mut lines: Vec<ForcedLine> = rows
            .iter()
            .filter_map(|row| {
                let reported = json!({ "iothubDM": { "reboot": row.get("rb")? } });
                Some(ForcedLine {
                    device: row.get("deviceId")?.as_str()?.to_owned(),
                    policy: row.get("dp")?.as_str()?.to_owned(),
                    reboot: casement_policy::maintenance::forced_reboot(&reported)?,
                })
            })
            .collect();
        lines.sort_by(|a, b| a.device.cmp(&b.device));
        report.forced_reboots = lines;
    }
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
            split_query(
                &group_conditions(&group).unwrap(),
                "properties.reported.iothubDM.reboot.lastReboot >= '2026-03-29T02:00:00.000Z' AND deviceId NIN ['a', 'b'] OR NOT IS_DEFINED(properties.desired.$metadata.maintenance.$lastUpdated)",
            ),
            forced_query(Some("nightly")),
        ] {
            let parsed = query::parse(&q).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert_eq!(query::parse(&parsed.to_string()).unwrap(), parsed, "{q}");
        }
        let m = group_conditions(&group).unwrap().join(" AND ");
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

    #[test]
    fn journal_id_lists_are_cut_to_fit_a_query() {
        let group: Map<String, Value> = serde_json::from_value(json!({
            "dp": "nightly", "dr": "3f2a", "rp": "nightly", "rr": "3f2a", "rs": "applied",
            "tz": "UTC", "bo": "2026-03-28T02:00:00.000Z", "bs": "completed", "n": 5000
        }))
        .unwrap();
        let conditions = group_conditions(&group).unwrap();
        let ids: Vec<String> = (0..3000).map(|i| format!("store-{i:05}-gateway")).collect();
        let cells = "properties.reported.iothubDM.reboot.lastReboot < '2026-03-29T02:00:00.000Z'";
        let cond = |ids: &str| format!("({cells}) AND deviceId IN [{ids}]");
        let room = query::MAX_QUERY_CHARS - split_query(&conditions, &cond("")).len();
        let runs = chunks(&ids, room);
        assert!(runs.len() > 1, "3,000 ids do not fit one query");
        assert_eq!(runs.concat(), ids, "every id once, in order");
        for run in &runs {
            let q = split_query(&conditions, &cond(&id_list(run)));
            assert!(q.len() <= query::MAX_QUERY_CHARS, "{} chars", q.len());
            query::parse(&q).unwrap();
        }
    }

    #[test]
    fn ranges_tell_apart_what_classify_compares() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let bounds = [t("2026-03-28T02:00:00Z"), t("2026-03-29T02:00:00Z")];
        let arrivals = ranges(DESIRED_UPDATED, &bounds, true);
        let reps: Vec<Option<DateTime<Utc>>> = arrivals.iter().map(|r| r.0).collect();
        // Arrival `t > opens_at`: not defined, at or before each bound, after the last.
        assert_eq!(
            reps,
            vec![
                None,
                Some(bounds[0]),
                Some(bounds[1]),
                Some(bounds[1] + TimeDelta::seconds(1))
            ]
        );
        assert_eq!(
            arrivals[2].1,
            format!(
                "{DESIRED_UPDATED} > '2026-03-28T02:00:00.000Z' AND {DESIRED_UPDATED} <= '2026-03-29T02:00:00.000Z'"
            )
        );
        // A reboot time against a window `[opens, closes)`: before, in each span, at or after.
        let reboots = ranges(paths::LAST_REBOOT, &bounds, false);
        assert_eq!(reboots[1].0, Some(bounds[0] - TimeDelta::seconds(1)));
        assert_eq!(reboots[3].0, Some(bounds[1]));
        assert_eq!(
            reboots[3].1,
            format!("{} >= '2026-03-29T02:00:00.000Z'", paths::LAST_REBOOT)
        );
        // The conditions select exactly the representative of their range.
        for (rep, cond) in arrivals.iter().chain(&reboots) {
            let q = query::parse(&format!("SELECT deviceId FROM devices WHERE {cond}")).unwrap();
            let rows = q.rows().unwrap();
            let mut twin = json!({"deviceId": "d", "properties": {"desired": {}, "reported": {}}});
            if let Some(rep) = rep {
                let at = casement_iothub::time::format_timestamp(*rep);
                twin["properties"]["desired"] =
                    json!({"$metadata": {"maintenance": {"$lastUpdated": at}}});
                twin["properties"]["reported"] =
                    json!({"iothubDM": {"reboot": {"lastReboot": at}}});
            }
            assert!(rows.item(&twin).is_some(), "{cond} for {rep:?}");
        }
    }
}
