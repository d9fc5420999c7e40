//! `casement apply --via configurations`: one IoT Hub automatic device management
//! configuration per policy revision, which the hub evaluates and writes into the twins itself.
//!
//! - id `casement-<policy>-<revision>` ([`configuration_id`]): a changed policy is a new
//!   configuration (IoT Hub does not let a configuration's content change); it is created
//!   first, then the old revision's configuration is removed.
//! - target condition: the policy's `target` (already an IoT Hub query condition);
//!   priority: the policy's plus [`PRIORITY_OFFSET`] (IoT Hub priorities are ≥ 0, policy
//!   priorities go down to -1000; the order is kept);
//!   content: `{"properties.desired.maintenance": DesiredMaintenance}`;
//!   labels: [`LABEL_MANAGED_BY`] = `casement`, [`LABEL_POLICY`], [`LABEL_REVISION`];
//!   metrics: [`METRIC_APPLIED`] and [`METRIC_REJECTED`] (devices that report this revision
//!   applied or rejected). "Rebooted in the latest window" is not expressible: a query has no
//!   notion of now and twins do not report which window was the latest; `casement report`
//!   counts it.
//! - Casement-labelled configurations of policies not given are removed only with `--prune`.
//! - Ties: IoT Hub settles equal priorities by creation time, Casement by name. Two policies
//!   with equal priority whose targets match a common device now (the plan's target queries)
//!   are refused ([`ApplyError::Tie`](super::ApplyError::Tie)) before anything is written.

use std::collections::{BTreeMap, BTreeSet};

use casement_iothub::configuration::{Configuration, Content, Metrics};
use casement_policy::maintenance::paths;
use casement_policy::{DesiredMaintenance, Policy, PolicySet};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{ApplyError, Plan};

/// Label every configuration Casement writes carries (value [`MANAGED_BY`]).
pub const LABEL_MANAGED_BY: &str = "managed-by";
/// The value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "casement";
/// Label naming the policy.
pub const LABEL_POLICY: &str = "casement-policy";
/// Label naming the policy revision.
pub const LABEL_REVISION: &str = "casement-revision";
/// Metric: devices that report this revision applied.
pub const METRIC_APPLIED: &str = "applied";
/// Metric: devices that report this revision rejected.
pub const METRIC_REJECTED: &str = "rejected";
/// Added to a policy's priority (-1000..=1000) to get the configuration's (≥ 0).
pub const PRIORITY_OFFSET: i64 = 1000;

/// The configuration id of a policy revision: `casement-<name>-<revision>`.
pub fn configuration_id(policy: &Policy) -> String {
    format!("casement-{}-{}", policy.name(), policy.revision())
}

/// The metric query counting devices whose reported maintenance is `revision` with `status`
/// and that carry configuration `id`.
pub fn metric_query(id: &str, revision: &str, status: &str) -> String {
    format!(
        "SELECT deviceId FROM devices WHERE configurations.[[{id}]].status = 'Applied' AND {} = '{revision}' AND {} = '{status}'",
        paths::REPORTED_REVISION,
        paths::REPORTED_STATUS
    )
}

/// The configuration that carries `policy`.
pub fn configuration_for(policy: &Policy) -> Configuration {
    let id = configuration_id(policy);
    let revision = policy.revision().as_str();
    let mut device_content = Map::new();
    device_content.insert(
        paths::DESIRED_MAINTENANCE.to_owned(),
        serde_json::to_value(DesiredMaintenance::from(policy)).unwrap_or(Value::Null),
    );
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_POLICY.to_owned(), policy.name().to_owned()),
        (LABEL_REVISION.to_owned(), revision.to_owned()),
    ]);
    let queries = BTreeMap::from([
        (
            METRIC_APPLIED.to_owned(),
            metric_query(&id, revision, "applied"),
        ),
        (
            METRIC_REJECTED.to_owned(),
            metric_query(&id, revision, "rejected"),
        ),
    ]);
    Configuration {
        id,
        schema_version: "1.0".to_owned(),
        labels,
        content: Content {
            device_content,
            ..Content::default()
        },
        target_condition: policy.target().to_string(),
        priority: i64::from(policy.priority()) + PRIORITY_OFFSET,
        metrics: Metrics {
            queries,
            ..Metrics::default()
        },
        ..Configuration::default()
    }
}

/// What happens to one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigAction {
    /// A policy revision without its configuration: create it.
    Create,
    /// Its priority, target, labels or metrics differ: update them.
    Update,
    /// An older revision of a given policy (or, with `--prune`, a policy not given): delete.
    Remove,
    /// Already right.
    Unchanged,
    /// A Casement configuration of a policy not given, kept because `--prune` is off.
    Keep,
}

impl ConfigAction {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigAction::Create => "create",
            ConfigAction::Update => "update",
            ConfigAction::Remove => "remove",
            ConfigAction::Unchanged => "unchanged",
            ConfigAction::Keep => "keep",
        }
    }
}

/// The decision for one configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigChange {
    /// The configuration id.
    pub id: String,
    /// The policy it carries.
    pub policy: String,
    /// What happens.
    pub action: ConfigAction,
    /// What is written (create and update).
    #[serde(skip)]
    pub config: Option<Configuration>,
    /// The ETag read (update).
    #[serde(skip)]
    pub etag: Option<String>,
}

fn is_casement(config: &Configuration) -> bool {
    config.labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
}

/// Pairs of policies with equal priority that both target a device now, with one such device
/// and how many devices they share.
pub fn ties<'a>(set: &'a PolicySet, plan: &Plan) -> Vec<(&'a Policy, &'a Policy, String, usize)> {
    let mut found: BTreeMap<(&str, &str), (String, usize)> = BTreeMap::new();
    for device in plan.overlaps() {
        let policies: Vec<&Policy> = device.overlap.iter().filter_map(|n| set.get(n)).collect();
        for (i, a) in policies.iter().enumerate() {
            for b in &policies[i + 1..] {
                if a.priority() == b.priority() {
                    let key = if a.name() < b.name() {
                        (a.name(), b.name())
                    } else {
                        (b.name(), a.name())
                    };
                    let entry = found.entry(key).or_insert((device.device.clone(), 0));
                    entry.1 += 1;
                }
            }
        }
    }
    found
        .into_iter()
        .filter_map(|((a, b), (device, n))| Some((set.get(a)?, set.get(b)?, device, n)))
        .collect()
}

/// Refuses equal-priority overlaps, which IoT Hub and Casement would settle differently.
pub fn check_ties(set: &PolicySet, plan: &Plan) -> Result<(), ApplyError> {
    let ties = ties(set, plan);
    if ties.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = ties
        .iter()
        .map(|(a, b, device, n)| {
            format!(
                "policies {} ({}) and {} ({}) both have priority {} and both target {n} device(s) now (e.g. {device})",
                a.name(),
                a.file().display(),
                b.name(),
                b.file().display(),
                a.priority()
            )
        })
        .collect();
    Err(ApplyError::Tie(format!(
        "{}; IoT Hub gives such a device the most recently created configuration, Casement the first name, so they would disagree: give one of each pair a higher priority (or make the targets disjoint), or apply with --via twins",
        lines.join("; ")
    )))
}

/// Decides per configuration (pure): `existing` is the hub's list.
pub fn resolve_configurations(
    set: &PolicySet,
    existing: &[Configuration],
    prune: bool,
) -> Vec<ConfigChange> {
    let by_id: BTreeMap<&str, &Configuration> =
        existing.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut wanted = BTreeSet::new();
    let mut changes = Vec::new();
    for policy in set {
        let config = configuration_for(policy);
        wanted.insert(config.id.clone());
        let (action, etag) = match by_id.get(config.id.as_str()) {
            None => (ConfigAction::Create, None),
            Some(old)
                if old.priority == config.priority
                    && old.target_condition == config.target_condition
                    && old.labels == config.labels
                    && old.metrics.queries == config.metrics.queries =>
            {
                (ConfigAction::Unchanged, None)
            }
            Some(old) => (ConfigAction::Update, Some(old.etag.clone())),
        };
        changes.push(ConfigChange {
            id: config.id.clone(),
            policy: policy.name().to_owned(),
            action,
            config: Some(config),
            etag,
        });
    }
    for old in existing
        .iter()
        .filter(|c| is_casement(c) && !wanted.contains(&c.id))
    {
        let policy = old.labels.get(LABEL_POLICY).cloned().unwrap_or_default();
        let action = if prune || set.get(&policy).is_some() {
            ConfigAction::Remove
        } else {
            ConfigAction::Keep
        };
        changes.push(ConfigChange {
            id: old.id.clone(),
            policy,
            action,
            config: None,
            etag: None,
        });
    }
    changes
}
