//! `casement apply`: write each validated policy into the twins of the devices it targets.
//!
//! 1. [`build_plan`] resolves every policy's target with a twin query, and lists the devices
//!    that carry a Casement policy in their desired properties; [`resolve`] (pure) picks the
//!    winner per device — highest `priority`, then the name in alphabetical order — lists the
//!    overlaps, and decides per device: set, update, clear, or nothing.
//! 2. [`execute`] PATCHes `desired.maintenance` where it differs, with `If-Match` (the ETag the
//!    query returned). A 412 re-reads the twin and decides again (another writer may have done
//!    the work). The patch is a JSON merge patch from what the twin holds to what it should hold,
//!    so stale keys are deleted.
//!
//! Re-applying unchanged files writes nothing: a device whose desired policy and revision
//! already match is left alone. `--plan` stops after step 1.
//!
//! Clearing: a device that carries a policy the files do not name is cleared only with
//! [`ApplyOptions::prune`] (`casement apply --prune`, as `kubectl apply --prune`); without it
//! those devices are left alone and listed ([`ApplySummary::not_pruned`]). A device whose
//! policy is among the files but no longer targets it is always cleared.
//!
//! Two ways to write ([`ApplyVia`]): twin by twin (above), or through IoT Hub automatic device
//! management configurations ([`configurations`]): one per policy revision, written by the hub
//! at its next evaluation, O(policies) calls. [`plan`] adds the configuration decisions to the
//! plan; apply still clears, twin by twin, the devices no policy targets (configurations leave
//! what they wrote).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use casement_iothub::rest::TwinPatch;
use casement_policy::maintenance::MAINTENANCE;
use casement_policy::{DesiredMaintenance, Policy, PolicySet};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::fleet::{self, TwinView};
use casement_client::{ClientError, HubApi};

pub mod configurations;

pub use configurations::{ConfigAction, ConfigChange};

/// How apply writes the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyVia {
    /// PATCH each twin whose desired maintenance differs: at once, exact on any hub, O(devices)
    /// calls.
    #[default]
    Twins,
    /// One IoT Hub configuration per policy revision: O(policies) calls, covers devices that
    /// appear later, takes effect at the hub's next evaluation.
    Configurations,
}

impl ApplyVia {
    /// Lower-case name (`twins`, `configurations`).
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyVia::Twins => "twins",
            ApplyVia::Configurations => "configurations",
        }
    }
}

/// Why apply could not plan.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A query failed.
    #[error("resolving the target of policy {policy}: {source}")]
    Target {
        /// The policy.
        policy: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// Listing the devices that carry a policy failed.
    #[error("listing devices that carry a Casement policy: {0}")]
    Carriers(#[source] ClientError),
    /// Listing the hub's configurations failed.
    #[error("listing the hub's configurations: {0}")]
    Configurations(#[source] ClientError),
    /// Policies that IoT Hub's and Casement's priority rules would settle differently.
    #[error("cannot apply through configurations: {0}")]
    Tie(String),
}

impl ApplyError {
    /// The hub call that failed, when one did.
    pub fn hub_error(&self) -> Option<&ClientError> {
        match self {
            ApplyError::Target { source, .. }
            | ApplyError::Carriers(source)
            | ApplyError::Configurations(source) => Some(source),
            ApplyError::Tie(_) => None,
        }
    }

    /// Whether the hub could not be reached (or kept failing).
    pub fn is_unavailable(&self) -> bool {
        self.hub_error().is_some_and(ClientError::is_unavailable)
    }
}

/// What happens to one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// No policy yet: set the winner.
    Set,
    /// Another policy or revision: replace it.
    Update,
    /// No policy targets it any more: set `maintenance` to null.
    Clear,
    /// Already right.
    Unchanged,
}

impl ChangeKind {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Set => "set",
            ChangeKind::Update => "update",
            ChangeKind::Clear => "clear",
            ChangeKind::Unchanged => "unchanged",
        }
    }

    /// Whether a write is needed.
    pub fn writes(self) -> bool {
        !matches!(self, ChangeKind::Unchanged)
    }
}

/// The policy and revision a device's desired properties name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assigned {
    /// Policy name.
    pub policy: String,
    /// Revision (empty when there is none).
    pub revision: String,
    /// Whether the section follows the schema.
    #[serde(skip)]
    pub valid: bool,
}

/// The decision for one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DevicePlan {
    /// The device.
    pub device: String,
    /// The winning policy, `None` when the device is to be cleared.
    pub winner: Option<String>,
    /// What its desired properties name now.
    pub current: Option<Assigned>,
    /// What happens.
    pub change: ChangeKind,
    /// Every policy targeting the device, winner first, when more than one does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overlap: Vec<String>,
    /// The ETag read with the twin.
    #[serde(skip)]
    pub etag: Option<String>,
    /// `desired.maintenance` as read.
    #[serde(skip)]
    pub current_raw: Option<Value>,
}

/// One policy's share of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPlan {
    /// The policy.
    pub name: String,
    /// Its priority.
    pub priority: i32,
    /// Its revision.
    pub revision: String,
    /// Devices its target matches.
    pub targeted: usize,
    /// Devices it wins.
    pub wins: usize,
    /// Of those, devices to set or update.
    pub changes: usize,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Per policy, in name order.
    pub policies: Vec<PolicyPlan>,
    /// Per device, in id order (targeted devices and devices to clear).
    pub devices: Vec<DevicePlan>,
    /// With `--via configurations`: per configuration (policies in name order, then the
    /// Casement configurations no policy wants).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub configurations: Option<Vec<ConfigChange>>,
    /// With `--via configurations`: the devices some policy targets, counted by the hub (the
    /// plan then lists only the devices to clear).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targeted: Option<usize>,
}

impl Plan {
    /// Devices a policy targets.
    pub fn targeted(&self) -> usize {
        self.targeted
            .unwrap_or_else(|| self.devices.iter().filter(|d| d.winner.is_some()).count())
    }

    /// Devices with more than one policy targeting them.
    pub fn overlaps(&self) -> impl Iterator<Item = &DevicePlan> {
        self.devices.iter().filter(|d| !d.overlap.is_empty())
    }

    /// How many devices get each kind of change.
    pub fn count(&self, kind: ChangeKind) -> usize {
        self.devices.iter().filter(|d| d.change == kind).count()
    }

    /// Whether the plan writes through configurations.
    pub fn via(&self) -> ApplyVia {
        if self.configurations.is_some() {
            ApplyVia::Configurations
        } else {
            ApplyVia::Twins
        }
    }
}

/// Whether clearing `device` is pruning: it carries a policy that is not in `set`.
pub fn is_prune(set: &PolicySet, device: &DevicePlan) -> bool {
    device.change == ChangeKind::Clear
        && device
            .current
            .as_ref()
            .is_none_or(|c| set.get(&c.policy).is_none())
}

/// The winner among the policies targeting one device: highest priority, then the first name.
fn rank<'a>(policies: &mut [&'a Policy]) -> Option<&'a Policy> {
    policies.sort_by(|a, b| {
        b.priority()
            .cmp(&a.priority())
            .then_with(|| a.name().cmp(b.name()))
    });
    policies.first().copied()
}

/// Decides the change for a device whose desired section holds `current`, for `winner`.
fn decide(current: Option<&Assigned>, winner: Option<&Policy>) -> ChangeKind {
    match (current, winner) {
        (None, None) => ChangeKind::Unchanged,
        (None, Some(_)) => ChangeKind::Set,
        (Some(_), None) => ChangeKind::Clear,
        (Some(c), Some(w))
            if c.valid && c.policy == w.name() && c.revision == w.revision().as_str() =>
        {
            ChangeKind::Unchanged
        }
        (Some(_), Some(_)) => ChangeKind::Update,
    }
}

pub(crate) fn assigned(view: &TwinView) -> Option<Assigned> {
    let raw = view.desired_raw.as_ref()?;
    let field = |k: &str| raw.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Some(Assigned {
        policy: field("policy"),
        revision: field("revision"),
        // A section that does not follow the schema is replaced even when its names match.
        valid: matches!(view.desired, Some(Ok(_))),
    })
}

/// Picks winners and changes (pure). `targets` holds each policy's matching twins; `carriers`
/// the twins whose desired properties name a policy.
pub fn resolve(
    set: &PolicySet,
    targets: &BTreeMap<String, Vec<TwinView>>,
    carriers: &[TwinView],
) -> Plan {
    let mut views: BTreeMap<&str, &TwinView> = BTreeMap::new();
    let mut targeting: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
    for policy in set {
        for view in targets.get(policy.name()).into_iter().flatten() {
            views.insert(&view.device_id, view);
            targeting.entry(&view.device_id).or_default().push(policy);
        }
    }
    for view in carriers {
        views.entry(&view.device_id).or_insert(view);
    }
    let mut policies: BTreeMap<&str, PolicyPlan> = set
        .iter()
        .map(|p| {
            (
                p.name(),
                PolicyPlan {
                    name: p.name().to_owned(),
                    priority: p.priority(),
                    revision: p.revision().as_str().to_owned(),
                    targeted: 0,
                    wins: 0,
                    changes: 0,
                },
            )
        })
        .collect();
    let mut devices = Vec::with_capacity(views.len());
    for (id, view) in views {
        let mut candidates = targeting.remove(id).unwrap_or_default();
        let mut seen = BTreeSet::new();
        candidates.retain(|p| seen.insert(p.name()));
        let winner = rank(&mut candidates);
        let current = assigned(view);
        let change = decide(current.as_ref(), winner);
        for p in &candidates {
            if let Some(pp) = policies.get_mut(p.name()) {
                pp.targeted += 1;
            }
        }
        if let Some(w) = winner
            && let Some(pp) = policies.get_mut(w.name())
        {
            pp.wins += 1;
            if change.writes() {
                pp.changes += 1;
            }
        }
        if winner.is_none() && current.is_none() {
            continue;
        }
        devices.push(DevicePlan {
            device: id.to_owned(),
            winner: winner.map(|w| w.name().to_owned()),
            current,
            change,
            overlap: if candidates.len() > 1 {
                candidates.iter().map(|p| p.name().to_owned()).collect()
            } else {
                Vec::new()
            },
            etag: view.etag.clone(),
            current_raw: view.desired_raw.clone(),
        });
    }
    Plan {
        policies: policies.into_values().collect(),
        devices,
        configurations: None,
        targeted: None,
    }
}

pub(crate) fn twins(items: Vec<Value>, what: &str) -> Vec<TwinView> {
    items
        .into_iter()
        .filter_map(|item| match TwinView::from_value(item) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(query = what, error = %e, "skipping a query result that is not a twin");
                None
            }
        })
        .collect()
}

/// Queries the hub and resolves the plan.
pub async fn build_plan<H: HubApi>(hub: &H, set: &PolicySet) -> Result<Plan, ApplyError> {
    let mut targets = BTreeMap::new();
    for policy in set {
        let sql = policy.target_query();
        let items = hub.query(&sql).await.map_err(|source| ApplyError::Target {
            policy: policy.name().to_owned(),
            source,
        })?;
        targets.insert(policy.name().to_owned(), twins(items, &sql));
    }
    let sql = fleet::carriers_query(None);
    let carriers = twins(hub.query(&sql).await.map_err(ApplyError::Carriers)?, &sql);
    Ok(resolve(set, &targets, &carriers))
}

/// The plan for `options.via`: [`build_plan`] (twins), or [`configurations::build_plan`]
/// (counts, ties refused with [`ApplyError::Tie`], the configuration decisions, the devices to
/// clear).
pub async fn plan<H: HubApi>(
    hub: &H,
    set: &PolicySet,
    options: &ApplyOptions,
) -> Result<Plan, ApplyError> {
    match options.via {
        ApplyVia::Twins => build_plan(hub, set).await,
        ApplyVia::Configurations => configurations::build_plan(hub, set, options.prune).await,
    }
}

/// The JSON merge patch that turns `old` into `new` (`None` when they are equal); see
/// [`casement_iothub::twin::merge_diff`].
pub fn merge_patch_between(old: &Value, new: &Value) -> Option<Value> {
    casement_iothub::twin::merge_diff(old, new)
}

/// The desired patch for a device holding `current` that should hold `target`.
fn patch_for(current: Option<&Value>, target: Option<&DesiredMaintenance>) -> Option<TwinPatch> {
    let inner = match (current, target) {
        (_, None) => Value::Null,
        (None, Some(t)) => serde_json::to_value(t).ok()?,
        (Some(c), Some(t)) => merge_patch_between(c, &serde_json::to_value(t).ok()?)?,
    };
    let mut desired = Map::new();
    desired.insert(MAINTENANCE.to_owned(), inner);
    Some(TwinPatch::desired(Value::Object(desired)))
}

/// What `apply` did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplySummary {
    /// Devices a policy targets.
    pub targeted: usize,
    /// Devices written (set or updated).
    pub changed: usize,
    /// Targeted devices left alone.
    pub unchanged: usize,
    /// Devices whose policy was removed.
    pub cleared: usize,
    /// ETag conflicts met (and resolved by re-reading).
    pub conflicts: usize,
    /// Whether nothing was written (`--plan`).
    pub plan_only: bool,
    /// Devices that could not be written, with the error.
    pub failed: Vec<DeviceFailure>,
    /// Devices that carry a policy the files do not name, left alone without `--prune`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_pruned: Vec<String>,
    /// How the policies were written.
    pub via: ApplyVia,
    /// With `--via configurations`: configurations created, updated and removed (`--plan`:
    /// that would be).
    pub configurations_created: usize,
    /// Configurations updated.
    pub configurations_updated: usize,
    /// Configurations removed.
    pub configurations_removed: usize,
}

/// A device apply could not write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceFailure {
    /// The device.
    pub device: String,
    /// What went wrong.
    pub error: String,
}

/// Tuning of [`execute`].
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Only plan; write nothing.
    pub plan_only: bool,
    /// Twin writes in flight at once.
    pub concurrency: usize,
    /// Re-reads after ETag conflicts, per device.
    pub max_conflict_retries: u32,
    /// Clear devices (and, via configurations, remove Casement configurations) of policies
    /// the given set does not name. `true` by default: `casement run` owns its whole policy
    /// directory; `casement apply` sets it from `--prune`.
    pub prune: bool,
    /// How to write.
    pub via: ApplyVia,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            plan_only: false,
            concurrency: 16,
            max_conflict_retries: 5,
            prune: true,
            via: ApplyVia::Twins,
        }
    }
}

/// Receives progress while writing (a terminal progress bar, or nothing).
pub trait Progress: Send + Sync {
    /// The number of writes to come.
    fn start(&self, total: u64);
    /// One write done.
    fn advance(&self);
    /// All done.
    fn finish(&self);
}

impl Progress for () {
    fn start(&self, _: u64) {}
    fn advance(&self) {}
    fn finish(&self) {}
}

/// How one device's write ended.
enum Written {
    Done { conflicts: usize, wrote: bool },
    Failed { conflicts: usize, error: String },
}

async fn write_device<H: HubApi>(
    hub: &H,
    device: &DevicePlan,
    target: Option<&DesiredMaintenance>,
    winner: Option<&Policy>,
    max_retries: u32,
) -> Written {
    let mut conflicts = 0;
    let mut etag = device.etag.clone();
    let mut current = device.current_raw.clone();
    let mut change = device.change;
    loop {
        if !change.writes() {
            return Written::Done {
                conflicts,
                wrote: false,
            };
        }
        let Some(patch) = patch_for(current.as_ref(), target) else {
            return Written::Done {
                conflicts,
                wrote: false,
            };
        };
        match hub
            .patch_twin(&device.device, &patch, etag.as_deref())
            .await
        {
            Ok(_) => {
                return Written::Done {
                    conflicts,
                    wrote: true,
                };
            }
            Err(e) if e.is_precondition_failed() && (conflicts as u32) < max_retries => {
                conflicts += 1;
                tracing::info!(device = %device.device, "ETag conflict; re-reading the twin");
                match hub.get_twin(&device.device).await {
                    Ok(twin) => {
                        let view = TwinView::from_twin(&twin);
                        etag = view.etag.clone();
                        current = view.desired_raw.clone();
                        change = decide(assigned(&view).as_ref(), winner);
                    }
                    Err(error) => {
                        return Written::Failed {
                            conflicts,
                            error: error.to_string(),
                        };
                    }
                }
            }
            Err(error) => {
                return Written::Failed {
                    conflicts,
                    error: error.to_string(),
                };
            }
        }
    }
}

/// Creates and updates the configurations, then removes the old ones (so a changed policy's
/// devices are never without one). Failures are listed as `configuration <id>`.
async fn write_configurations<H: HubApi>(
    hub: &H,
    configs: &[ConfigChange],
    summary: &mut ApplySummary,
) {
    let mut fail = |id: &str, error: ClientError| {
        tracing::warn!(configuration = id, %error, "could not write the configuration");
        summary.failed.push(DeviceFailure {
            device: format!("configuration {id}"),
            error: error.to_string(),
        });
    };
    let mut failed_policies = BTreeSet::new();
    for change in configs {
        let result = match (change.action, &change.config) {
            (ConfigAction::Create, Some(c)) => hub.put_configuration(c, None).await.map(drop),
            (ConfigAction::Update, Some(c)) => hub
                .put_configuration(c, Some(change.etag.as_deref().unwrap_or("*")))
                .await
                .map(drop),
            _ => Ok(()),
        };
        if let Err(e) = result {
            failed_policies.insert(change.policy.as_str());
            fail(&change.id, e);
        }
    }
    // A policy whose new configuration could not be written keeps its old one.
    for change in configs.iter().filter(|c| {
        c.action == ConfigAction::Remove && !failed_policies.contains(c.policy.as_str())
    }) {
        match hub.delete_configuration(&change.id).await {
            Ok(()) => {}
            // Already gone (another apply, or a replayed delete).
            Err(e) if e.status() == Some(404) => {}
            Err(e) => fail(&change.id, e),
        }
    }
}

/// Writes the plan's changes (unless `plan_only`) and sums up.
pub async fn execute<H: HubApi + Clone>(
    hub: &H,
    set: &PolicySet,
    plan: &Plan,
    options: &ApplyOptions,
    progress: &dyn Progress,
) -> ApplySummary {
    let mut summary = ApplySummary {
        targeted: plan.targeted(),
        plan_only: options.plan_only,
        via: plan.via(),
        ..ApplySummary::default()
    };
    let mut writes: Vec<&DevicePlan> = Vec::new();
    for d in plan.devices.iter().filter(|d| d.change.writes()) {
        if !options.prune && is_prune(set, d) {
            summary.not_pruned.push(d.device.clone());
        } else {
            writes.push(d);
        }
    }
    summary.unchanged = plan
        .devices
        .iter()
        .filter(|d| d.winner.is_some() && !d.change.writes())
        .count();
    if let Some(configs) = &plan.configurations {
        let count = |a: ConfigAction| configs.iter().filter(|c| c.action == a).count();
        summary.configurations_created = count(ConfigAction::Create);
        summary.configurations_updated = count(ConfigAction::Update);
        summary.configurations_removed = count(ConfigAction::Remove);
        // The hub writes the targeted devices at its next evaluation; apply only clears.
        writes.retain(|d| d.winner.is_none());
        if !options.plan_only {
            write_configurations(hub, configs, &mut summary).await;
        }
    }
    if options.plan_only {
        let changed = writes.iter().filter(|d| d.winner.is_some()).count();
        summary.changed += changed;
        summary.cleared = writes.len() - changed;
        return summary;
    }
    let desired: Arc<BTreeMap<String, (DesiredMaintenance, Policy)>> = Arc::new(
        set.iter()
            .map(|p| {
                (
                    p.name().to_owned(),
                    (DesiredMaintenance::from(p), p.clone()),
                )
            })
            .collect(),
    );
    progress.start(writes.len() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    let mut pending = writes.into_iter();
    let limit = options.concurrency.max(1);
    let handle = |result: Result<(DevicePlan, Written), tokio::task::JoinError>,
                  summary: &mut ApplySummary| {
        progress.advance();
        match result {
            Ok((device, Written::Done { conflicts, wrote })) => {
                summary.conflicts += conflicts;
                match (wrote, device.winner.is_some()) {
                    (true, true) => summary.changed += 1,
                    (true, false) => summary.cleared += 1,
                    (false, true) => summary.unchanged += 1,
                    (false, false) => {}
                }
            }
            Ok((device, Written::Failed { conflicts, error })) => {
                summary.conflicts += conflicts;
                tracing::warn!(device = %device.device, %error, "could not write the twin");
                summary.failed.push(DeviceFailure {
                    device: device.device,
                    error,
                });
            }
            Err(e) => summary.failed.push(DeviceFailure {
                device: "?".into(),
                error: format!("write task failed: {e}"),
            }),
        }
    };
    loop {
        while tasks.len() < limit {
            let Some(device) = pending.next() else {
                break;
            };
            let device = device.clone();
            let hub = hub.clone();
            let desired = desired.clone();
            let retries = options.max_conflict_retries;
            tasks.spawn(async move {
                let found = device.winner.as_ref().and_then(|w| desired.get(w));
                let written = write_device(
                    &hub,
                    &device,
                    found.map(|(d, _)| d),
                    found.map(|(_, p)| p),
                    retries,
                )
                .await;
                (device, written)
            });
        }
        match tasks.join_next().await {
            Some(result) => handle(result, &mut summary),
            None => break,
        }
    }
    progress.finish();
    summary.failed.sort_by(|a, b| a.device.cmp(&b.device));
    summary
}

/// The plan and the summary as text tables.
pub fn render_text(plan: &Plan, summary: &ApplySummary, list_changes: bool) -> String {
    let mut out = String::new();
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    if plan.configurations.is_some() {
        table.set_header(["POLICY", "PRIORITY", "REVISION", "TARGETED"]);
    } else {
        table.set_header([
            "POLICY", "PRIORITY", "REVISION", "TARGETED", "WINS", "CHANGES",
        ]);
    }
    for p in &plan.policies {
        let mut row = vec![
            p.name.clone(),
            p.priority.to_string(),
            p.revision.clone(),
            p.targeted.to_string(),
        ];
        if plan.configurations.is_none() {
            row.extend([p.wins.to_string(), p.changes.to_string()]);
        }
        table.add_row(row);
    }
    let _ = writeln!(out, "{table}");
    if let Some(configs) = &plan.configurations {
        let _ = writeln!(out, "\nConfigurations:");
        for c in configs {
            let verb = match (c.action, summary.plan_only) {
                (ConfigAction::Keep, _) => "keep (not given; --prune removes it)",
                (a, _) => a.as_str(),
            };
            let _ = writeln!(out, "  {:<9} {}  (policy {})", verb, c.id, c.policy);
        }
    }
    let overlaps: Vec<&DevicePlan> = plan.overlaps().collect();
    if !overlaps.is_empty() {
        let _ = writeln!(
            out,
            "\nOverlaps ({} devices; the first policy wins):",
            overlaps.len()
        );
        for d in overlaps {
            let _ = writeln!(out, "  {}: {}", d.device, d.overlap.join(" > "));
        }
    }
    if list_changes {
        let changes: Vec<&DevicePlan> = plan.devices.iter().filter(|d| d.change.writes()).collect();
        if !changes.is_empty() {
            let _ = writeln!(out, "\nChanges:");
            for d in changes {
                let from = d
                    .current
                    .as_ref()
                    .map(|c| format!("{}@{}", c.policy, c.revision))
                    .unwrap_or_else(|| "-".into());
                let to = d
                    .winner
                    .as_ref()
                    .and_then(|w| plan.policies.iter().find(|p| &p.name == w))
                    .map(|p| format!("{}@{}", p.name, p.revision))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    out,
                    "  {:<7} {}  {from} -> {to}",
                    d.change.as_str(),
                    d.device
                );
            }
        }
    }
    if !summary.not_pruned.is_empty() {
        let _ = writeln!(
            out,
            "\nNot cleared ({} devices carry a policy none of the files names; --prune clears them):",
            summary.not_pruned.len()
        );
        for d in summary.not_pruned.iter().take(20) {
            let _ = writeln!(out, "  {d}");
        }
        if summary.not_pruned.len() > 20 {
            let _ = writeln!(out, "  … and {} more", summary.not_pruned.len() - 20);
        }
    }
    for f in &summary.failed {
        let _ = writeln!(out, "error: {}: {}", f.device, f.error);
    }
    let verb = if summary.plan_only {
        "would change"
    } else {
        "changed"
    };
    let clear_verb = if summary.plan_only {
        "would clear"
    } else {
        "cleared"
    };
    if summary.via == ApplyVia::Configurations {
        let _ = writeln!(
            out,
            "\nconfigurations: {} {}, {} {}, {} {}",
            if summary.plan_only {
                "would create"
            } else {
                "created"
            },
            summary.configurations_created,
            if summary.plan_only {
                "would update"
            } else {
                "updated"
            },
            summary.configurations_updated,
            if summary.plan_only {
                "would remove"
            } else {
                "removed"
            },
            summary.configurations_removed,
        );
    }
    if summary.via == ApplyVia::Configurations {
        let _ = writeln!(
            out,
            "\n{} devices targeted: the hub writes them at its next configuration evaluation; {clear_verb} {}{}",
            summary.targeted,
            summary.cleared,
            if summary.failed.is_empty() {
                String::new()
            } else {
                format!(", failed {}", summary.failed.len())
            }
        );
        return out;
    }
    let _ = writeln!(
        out,
        "\n{} devices targeted, {verb} {}, unchanged {}, {clear_verb} {}, conflicts {}{}",
        summary.targeted,
        summary.changed,
        summary.unchanged,
        summary.cleared,
        summary.conflicts,
        if summary.failed.is_empty() {
            String::new()
        } else {
            format!(", failed {}", summary.failed.len())
        }
    );
    out
}

/// The plan and the summary as one JSON document.
pub fn render_json(plan: &Plan, summary: &ApplySummary) -> Value {
    serde_json::json!({ "plan": plan, "summary": summary })
}

#[cfg(test)]
mod tests;
