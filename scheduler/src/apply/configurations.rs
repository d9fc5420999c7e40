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
//!   with equal priority whose targets match a common device now (`SELECT COUNT() … WHERE (a)
//!   AND (b)`, one query per such pair) are refused
//!   ([`ApplyError::Tie`](super::ApplyError::Tie)) before anything is written.
//! - The plan ([`build_plan`]) reads no twin it does not write: a `COUNT()` per policy and one
//!   for all, the tie queries, the hub's configuration list, and the twins to clear — those
//!   that carry a policy and match no target (`IS_DEFINED(…policy) AND NOT (t1) AND NOT (t2)…`).
//!   So apply through configurations is O(policies) calls plus the clears, whatever the fleet.

use std::collections::{BTreeMap, BTreeSet};

use casement_iothub::configuration::{Configuration, Content, Metrics};
use casement_policy::maintenance::paths;
use casement_policy::{DesiredMaintenance, Policy, PolicySet};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{ApplyError, ChangeKind, DevicePlan, Plan, PolicyPlan, assigned, twins};
use crate::fleet::{self, TwinView};
use casement_client::{ClientError, HubApi};

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

fn count_of(items: &[Value]) -> usize {
    items
        .first()
        .and_then(|v| v.get("n"))
        .and_then(Value::as_u64)
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

async fn count<H: HubApi>(hub: &H, condition: &str) -> Result<usize, ClientError> {
    let items = hub
        .query(&format!(
            "SELECT COUNT() AS n FROM devices WHERE {condition}"
        ))
        .await?;
    Ok(count_of(&items))
}

/// Refuses equal-priority policies whose targets match a common device now, which IoT Hub and
/// Casement would settle differently: one `COUNT()` query per pair of equal priority.
pub async fn check_ties<H: HubApi>(hub: &H, set: &PolicySet) -> Result<(), ApplyError> {
    let policies: Vec<&Policy> = set.iter().collect();
    let mut lines = Vec::new();
    for (i, a) in policies.iter().enumerate() {
        for b in policies[i + 1..]
            .iter()
            .filter(|b| b.priority() == a.priority())
        {
            let both = format!("({}) AND ({})", a.target(), b.target());
            let target_error = |source| ApplyError::Target {
                policy: format!("{} and {}", a.name(), b.name()),
                source,
            };
            let n = count(hub, &both).await.map_err(target_error)?;
            if n == 0 {
                continue;
            }
            let example = hub
                .query(&format!("SELECT TOP 1 deviceId FROM devices WHERE {both}"))
                .await
                .map_err(target_error)?
                .first()
                .and_then(|v| v.get("deviceId"))
                .and_then(Value::as_str)
                .map(|d| format!(" (e.g. {d})"))
                .unwrap_or_default();
            lines.push(format!(
                "policies {} ({}) and {} ({}) both have priority {} and both target {n} device(s) now{example}",
                a.name(),
                a.file().display(),
                b.name(),
                b.file().display(),
                a.priority()
            ));
        }
    }
    if lines.is_empty() {
        return Ok(());
    }
    Err(ApplyError::Tie(format!(
        "{}; IoT Hub gives such a device the most recently created configuration, Casement the first name, so they would disagree: give one of each pair a higher priority (or make the targets disjoint), or apply with --via twins",
        lines.join("; ")
    )))
}

/// The plan of `--via configurations`: counts instead of twins, the ties refused, the
/// configuration decisions, and the devices to clear (see the module documentation).
pub async fn build_plan<H: HubApi>(
    hub: &H,
    set: &PolicySet,
    prune: bool,
) -> Result<Plan, ApplyError> {
    check_ties(hub, set).await?;
    let mut policies = Vec::new();
    for policy in set {
        let targeted = count(hub, &policy.target().to_string())
            .await
            .map_err(|source| ApplyError::Target {
                policy: policy.name().to_owned(),
                source,
            })?;
        policies.push(PolicyPlan {
            name: policy.name().to_owned(),
            priority: policy.priority(),
            revision: policy.revision().as_str().to_owned(),
            targeted,
            wins: 0,
            changes: 0,
        });
    }
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    let any = set
        .iter()
        .map(|p| format!("({})", p.target()))
        .collect::<Vec<_>>()
        .join(" OR ");
    let targeted = if set.is_empty() {
        0
    } else {
        count(hub, &any).await.map_err(ApplyError::Carriers)?
    };
    let mut clear = fleet::carriers_query(None);
    for p in set {
        clear.push_str(&format!(" AND NOT ({})", p.target()));
    }
    let views: Vec<TwinView> = twins(
        hub.query(&clear).await.map_err(ApplyError::Carriers)?,
        &clear,
    );
    let devices = views
        .into_iter()
        .map(|view| DevicePlan {
            device: view.device_id.clone(),
            winner: None,
            current: assigned(&view),
            change: ChangeKind::Clear,
            overlap: Vec::new(),
            etag: view.etag.clone(),
            current_raw: view.desired_raw.clone(),
        })
        .collect();
    let existing = hub
        .list_configurations()
        .await
        .map_err(ApplyError::Configurations)?;
    Ok(Plan {
        policies,
        devices,
        configurations: Some(resolve_configurations(set, &existing, prune)),
        targeted: Some(targeted),
    })
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
