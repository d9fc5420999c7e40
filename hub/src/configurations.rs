//! Automatic device management configurations (IoT Hub's `/configurations` API): the model
//! and its validation, the stored set, and the evaluation that writes each configuration's
//! content into the desired properties of the devices it targets.
//!
//! The contract is written down in `docs/iothub-contract.md` (section "Configurations").
//!
//! Evaluation (Azure: about every five minutes; here [`HubConfig::configuration_interval`]
//! or [`RunningHub::evaluate_configurations`]):
//! 1. every configuration's `targetCondition` is matched against every twin;
//! 2. of the configurations targeting a device, the highest `priority` wins, on a tie the most
//!    recently created; its `content.deviceContent` entries (`properties.desired.<path>`:
//!    value) replace the desired value at each path, through the same path as a service twin
//!    PATCH (bumps `$version`, notifies the connected device, persists) and only where the
//!    twin differs, so a second evaluation writes nothing;
//! 3. the twin's `configurations` section becomes `{id: {"status": "Applied"}}` for the winner
//!    and `"Targeted"` for the others;
//! 4. the system metrics (`targetedCount`, `appliedCount`) and the custom metric queries are
//!    run over the twins and their result counts stored in `systemMetrics.results` and
//!    `metrics.results`.
//!
//! Desired properties a configuration wrote stay when it is deleted or a device leaves its
//! target, as in Azure.
//!
//! [`HubConfig::configuration_interval`]: crate::HubConfig::configuration_interval
//! [`RunningHub::evaluate_configurations`]: crate::RunningHub::evaluate_configurations

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use base64::Engine as _;
use casement_iothub::error::ErrorCode;
use casement_iothub::query::{self, Condition, Query};
use casement_iothub::time::format_timestamp;
use casement_iothub::twin::{self, SectionKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::registry::{TwinUpdate, check_etag};
use crate::state::Shared;
use crate::store::{Store, StoreError};

/// Most configurations one hub holds (Azure's documented quota for automatic device and
/// module configurations).
pub(crate) const MAX_CONFIGURATIONS: usize = 100;
/// Most custom metric queries per configuration (Azure: "up to five custom metrics").
pub(crate) const MAX_CUSTOM_METRICS: usize = 5;
/// Longest configuration id.
const MAX_ID_CHARS: usize = 128;
/// The desired-properties prefix every `deviceContent` key starts with.
const DESIRED_PREFIX: &str = "properties.desired.";
/// The system metric of the devices a configuration targets.
pub(crate) const TARGETED_COUNT: &str = "targetedCount";
/// The system metric of the devices a configuration is applied to.
pub(crate) const APPLIED_COUNT: &str = "appliedCount";
/// Where the set lives in the store's `meta` tree.
const STORE_KEY: &str = "configurations";

/// A twin's status for a configuration targeting it that lost to a higher priority one.
/// Capitalised as Azure's documented metric queries compare it
/// (`configurations.[[id]].status = 'Applied'`).
pub(crate) const STATUS_TARGETED: &str = "Targeted";
/// A twin's status for the configuration whose content it carries.
pub(crate) const STATUS_APPLIED: &str = "Applied";

// The wire types are shared with the client (one definition, in `casement_iothub`).
pub(crate) use casement_iothub::configuration::{
    Configuration, Content, Metrics, TestQueriesResponse,
};

/// A configuration as stored: with its creation order (the tie-break between equal
/// priorities) and its write counter (the ETag).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) config: Configuration,
    pub(crate) seq: u64,
    pub(crate) version: u64,
}

/// What a client may send (`PUT /configurations/{id}`); server-owned fields are ignored.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigurationInput {
    id: Option<String>,
    schema_version: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    content: Option<ContentInput>,
    target_condition: Option<String>,
    priority: Option<i64>,
    metrics: Option<MetricsInput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContentInput {
    device_content: Option<Map<String, Value>>,
    modules_content: Option<Map<String, Value>>,
    module_content: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct MetricsInput {
    queries: Option<BTreeMap<String, String>>,
}

/// `POST /configurations/testQueries` body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TestQueriesInput {
    target_condition: Option<String>,
    custom_metric_queries: Option<BTreeMap<String, String>>,
}

/// What one evaluation changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigurationEvaluation {
    /// Configurations evaluated.
    pub configurations: usize,
    /// Devices whose desired properties were written.
    pub desired_writes: usize,
    /// Devices whose twin `configurations` section changed.
    pub status_writes: usize,
}

/// The stored set.
#[derive(Debug)]
pub(crate) struct Configurations {
    items: RwLock<BTreeMap<String, Stored>>,
    store: Arc<Store>,
    /// One evaluation at a time (the background one and an explicit one would otherwise both
    /// write the same change).
    evaluating: tokio::sync::Mutex<()>,
    /// Set when an evaluation ran with no configurations and nothing was created since: the
    /// twins carry nothing to clean up, so evaluating again would only read every twin.
    idle: AtomicBool,
}

impl Configurations {
    /// Loads the stored set.
    pub(crate) fn load(store: Arc<Store>) -> Result<Self, StoreError> {
        let stored: Vec<Stored> = store.get_meta(STORE_KEY)?.unwrap_or_default();
        let items = stored
            .into_iter()
            .map(|s| (s.config.id.clone(), s))
            .collect();
        Ok(Self {
            items: RwLock::new(items),
            store,
            evaluating: tokio::sync::Mutex::new(()),
            idle: AtomicBool::new(false),
        })
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Stored>> {
        self.items.write().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> Vec<Stored> {
        self.items
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn persist(&self, items: &BTreeMap<String, Stored>) -> Result<(), ApiError> {
        let all: Vec<&Stored> = items.values().collect();
        self.store.put_meta(STORE_KEY, &all).map_err(ApiError::from)
    }

    /// One configuration; 404 ConfigurationNotFound.
    pub(crate) fn get(&self, id: &str) -> Result<Configuration, ApiError> {
        self.items
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .map(|s| s.config.clone())
            .ok_or_else(|| not_found(id))
    }

    /// Up to `top` configurations, in id order.
    pub(crate) fn list(&self, top: usize) -> Vec<Configuration> {
        self.items
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .take(top)
            .map(|s| s.config.clone())
            .collect()
    }

    /// Creates (no `If-Match`) or updates (`If-Match` an ETag or `*`) a configuration.
    /// Returns it and whether it was created.
    pub(crate) fn put(
        &self,
        id: &str,
        input: ConfigurationInput,
        if_match: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(Configuration, bool), ApiError> {
        validate_id(id)?;
        if let Some(body_id) = input.id.as_deref().filter(|b| !b.is_empty())
            && body_id != id
        {
            return Err(ApiError::invalid(format!(
                "id {body_id:?} in the body does not match {id:?} in the path"
            )));
        }
        let content = content_from(input.content.clone())?;
        let target_condition = input.target_condition.clone().unwrap_or_default();
        validate_target(&target_condition)?;
        let priority = input.priority.unwrap_or(0);
        if priority < 0 {
            return Err(ApiError::invalid(format!(
                "priority {priority} is negative; use 0 or a positive integer (higher wins)"
            )));
        }
        let queries = input
            .metrics
            .clone()
            .and_then(|m| m.queries)
            .unwrap_or_default();
        validate_metric_queries(&queries)?;
        let labels = input.labels.clone().unwrap_or_default();

        let mut items = self.write();
        let stamp = format_timestamp(now);
        let (stored, created) = match (items.get(id), if_match) {
            (Some(_), None) => {
                return Err(ApiError::new(
                    ErrorCode::ConfigurationAlreadyExists,
                    format!(
                        "configuration {id:?} already exists; to change it, send If-Match with its etag (or *)"
                    ),
                ));
            }
            (None, Some(_)) => return Err(not_found(id)),
            (None, None) => {
                if items.len() >= MAX_CONFIGURATIONS {
                    return Err(ApiError::new(
                        ErrorCode::IotHubQuotaExceeded,
                        format!(
                            "the hub already holds {MAX_CONFIGURATIONS} configurations, the most IoT Hub allows; delete one first"
                        ),
                    ));
                }
                let seq = items.values().map(|s| s.seq).max().unwrap_or(0) + 1;
                let content = content.ok_or_else(|| {
                    ApiError::invalid(
                        "content.deviceContent is missing: give at least one \"properties.desired.<key>\": value entry",
                    )
                })?;
                let config = Configuration {
                    id: id.to_owned(),
                    schema_version: input
                        .schema_version
                        .clone()
                        .filter(|v| !v.is_empty())
                        .unwrap_or_else(|| "1.0".to_owned()),
                    labels,
                    content,
                    target_condition: target_condition.clone(),
                    created_time_utc: stamp.clone(),
                    last_updated_time_utc: stamp,
                    priority,
                    system_metrics: system_metrics(id, &target_condition, None),
                    metrics: Metrics {
                        results: BTreeMap::new(),
                        queries,
                    },
                    etag: etag(1),
                };
                (
                    Stored {
                        config,
                        seq,
                        version: 1,
                    },
                    true,
                )
            }
            (Some(existing), Some(_)) => {
                check_etag(if_match, &existing.config.etag)?;
                if let Some(content) = content
                    && content != existing.config.content
                {
                    return Err(ApiError::new(
                        ErrorCode::InvalidOperation,
                        format!(
                            "the content of configuration {id:?} cannot change after creation (only labels, metrics, priority and targetCondition can); create a new configuration instead"
                        ),
                    ));
                }
                let mut next = existing.clone();
                let c = &mut next.config;
                c.labels = labels;
                c.priority = priority;
                if c.target_condition != target_condition {
                    c.system_metrics =
                        system_metrics(id, &target_condition, Some(&c.system_metrics));
                    c.target_condition = target_condition;
                }
                c.metrics
                    .results
                    .retain(|name, _| queries.contains_key(name));
                c.metrics.queries = queries;
                c.last_updated_time_utc = stamp;
                next.version += 1;
                c.etag = etag(next.version);
                (next, false)
            }
        };
        let config = stored.config.clone();
        self.idle.store(false, Ordering::SeqCst);
        let old = items.insert(id.to_owned(), stored);
        if let Err(e) = self.persist(&items) {
            match old {
                Some(old) => items.insert(id.to_owned(), old),
                None => items.remove(id),
            };
            return Err(e);
        }
        Ok((config, created))
    }

    /// Deletes a configuration under `If-Match`.
    pub(crate) fn delete(&self, id: &str, if_match: Option<&str>) -> Result<(), ApiError> {
        let mut items = self.write();
        let existing = items.get(id).ok_or_else(|| not_found(id))?;
        check_etag(if_match, &existing.config.etag)?;
        let old = items.remove(id);
        if let Err(e) = self.persist(&items) {
            if let Some(old) = old {
                items.insert(id.to_owned(), old);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Stores metric results; configurations deleted or re-targeted meanwhile are left alone.
    fn record(&self, results: Vec<MetricResults>) -> Result<(), ApiError> {
        let mut items = self.write();
        let mut changed = false;
        for r in results {
            let Some(stored) = items.get_mut(&r.id) else {
                continue;
            };
            let c = &mut stored.config;
            if c.system_metrics.queries != r.system_queries || c.metrics.queries != r.queries {
                continue;
            }
            if c.system_metrics.results != r.system || c.metrics.results != r.custom {
                c.system_metrics.results = r.system;
                c.metrics.results = r.custom;
                changed = true;
            }
        }
        if changed {
            self.persist(&items)?;
        }
        Ok(())
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ConfigurationNotFound,
        format!("no configuration {id:?} (GET /configurations lists them)"),
    )
}

/// The configuration ETag: base64 of its write counter.
fn etag(version: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(version.to_string())
}

/// Azure's rule for configuration ids: up to 128 lowercase letters (digits too) and
/// `- + % _ * ! '`.
pub(crate) fn validate_id(id: &str) -> Result<(), ApiError> {
    const SPECIAL: &str = "-+%_*!'";
    let ok = !id.is_empty()
        && id.chars().count() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || SPECIAL.contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "configuration id {id:?} is invalid: use 1 to {MAX_ID_CHARS} lowercase letters, digits and {SPECIAL}"
        )))
    }
}

/// Validates the content: `None` when the body has none (an update keeping it).
fn content_from(input: Option<ContentInput>) -> Result<Option<Content>, ApiError> {
    let Some(input) = input else {
        return Ok(None);
    };
    let modules = input.modules_content.unwrap_or_default();
    let module = input.module_content.unwrap_or_default();
    if !modules.is_empty() || !module.is_empty() {
        return Err(ApiError::invalid(
            "content.modulesContent and content.moduleContent (IoT Edge and module configurations) are not served by casement hub; use content.deviceContent",
        ));
    }
    let device = input.device_content.unwrap_or_default();
    if device.is_empty() {
        return Err(ApiError::invalid(
            "content.deviceContent is empty: give at least one \"properties.desired.<key>\": value entry",
        ));
    }
    let mut whole = Map::new();
    let mut paths: Vec<Vec<&str>> = Vec::new();
    for (key, value) in &device {
        let path = desired_path(key)?;
        if let Some(other) = paths
            .iter()
            .find(|p| p.starts_with(&path) || path.starts_with(p))
        {
            return Err(ApiError::invalid(format!(
                "content.deviceContent paths {key:?} and \"properties.desired.{}\" overlap; give each part of the twin once",
                other.join(".")
            )));
        }
        insert_path(&mut whole, &path, value.clone());
        paths.push(path);
    }
    // Key rules, depth and the 32 KB desired-properties limit, as for any desired write.
    twin::apply_validated_patch(SectionKind::Desired, &mut Map::new(), &Value::Object(whole))
        .map_err(|e| ApiError::invalid(format!("content.deviceContent: {e}")))?;
    Ok(Some(Content {
        device_content: device,
        modules_content: Map::new(),
        module_content: Map::new(),
    }))
}

/// `properties.desired.a.b` → `["a", "b"]`.
fn desired_path(key: &str) -> Result<Vec<&str>, ApiError> {
    let rest = key.strip_prefix(DESIRED_PREFIX).ok_or_else(|| {
        ApiError::invalid(format!(
            "content.deviceContent key {key:?} must start with {DESIRED_PREFIX:?} (e.g. properties.desired.maintenance)"
        ))
    })?;
    let path: Vec<&str> = rest.split('.').collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid(format!(
            "content.deviceContent key {key:?} has an empty segment"
        )));
    }
    Ok(path)
}

/// `value` without the `null` members of its objects (what a merge patch of it leaves).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn insert_path(target: &mut Map<String, Value>, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            target.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let slot = target
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(inner) = slot {
                insert_path(inner, rest, value);
            }
        }
    }
}

fn get_path<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

/// A copy without `$metadata`, `$version` and other system keys, at any depth.
fn without_system_keys(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_system_keys(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Rewrites Azure's `configurations.[[id]].status` (an id with characters a path cannot
/// hold bare) into the query language's bracket form `configurations['id'].status`; text
/// inside string literals is left alone.
pub(crate) fn rewrite_double_brackets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' && i + 1 < chars.len() {
                out.push(chars[i + 1]);
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            out.push(c);
            i += 1;
            continue;
        }
        if c == '.' && chars.get(i + 1) == Some(&'[') && chars.get(i + 2) == Some(&'[') {
            let start = i + 3;
            let end = (start..chars.len().saturating_sub(1))
                .find(|&j| chars[j] == ']' && chars[j + 1] == ']');
            if let Some(end) = end {
                let key: String = chars[start..end].iter().collect();
                out.push_str("['");
                out.push_str(&key.replace('\\', "\\\\").replace('\'', "\\'"));
                out.push_str("']");
                i = end + 2;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// A parsed target condition: `*` targets every device.
#[derive(Debug, Clone)]
enum Target {
    All,
    Nothing,
    Condition(Condition),
}

impl Target {
    fn matches(&self, twin: &Value) -> bool {
        match self {
            Target::All => true,
            Target::Nothing => false,
            Target::Condition(c) => c.matches(twin),
        }
    }
}

fn parse_target(text: &str) -> Result<Target, String> {
    let trimmed = text.trim();
    if trimmed == "*" {
        return Ok(Target::All);
    }
    if trimmed.is_empty() {
        return Ok(Target::Nothing);
    }
    query::parse_condition(&rewrite_double_brackets(trimmed))
        .map(Target::Condition)
        .map_err(|e| e.to_string())
}

fn validate_target(text: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            "targetCondition is missing: give a twin condition such as tags.env='prod' (or * for every device)",
        ));
    }
    parse_target(text)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(format!("targetCondition {text:?}: {e}")))
}

fn parse_metric(text: &str) -> Result<Query, String> {
    query::parse(&rewrite_double_brackets(text)).map_err(|e| e.to_string())
}

fn validate_metric_queries(queries: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if queries.len() > MAX_CUSTOM_METRICS {
        return Err(ApiError::invalid(format!(
            "metrics.queries has {} queries; at most {MAX_CUSTOM_METRICS} are allowed",
            queries.len()
        )));
    }
    for (name, text) in queries {
        if name.is_empty() || name.starts_with('$') || name.contains(['.', ' ']) {
            return Err(ApiError::invalid(format!(
                "metrics.queries name {name:?} is invalid: use a name without '.', '$' or spaces"
            )));
        }
        parse_metric(text).map_err(|e| {
            ApiError::invalid(format!(
                "metrics.queries[{name:?}] {text:?}: {e} (expected e.g. SELECT deviceId FROM devices WHERE configurations.[[my-config]].status = 'Applied')"
            ))
        })?;
    }
    Ok(())
}

/// The system metric queries, keeping results while the queries stay the same.
fn system_metrics(id: &str, target: &str, old: Option<&Metrics>) -> Metrics {
    let targeted = match target.trim() {
        "*" => "SELECT deviceId FROM devices".to_owned(),
        t => format!("SELECT deviceId FROM devices WHERE {t}"),
    };
    let applied = format!(
        "SELECT deviceId FROM devices WHERE configurations.[[{id}]].status = '{STATUS_APPLIED}'"
    );
    let queries = BTreeMap::from([
        (TARGETED_COUNT.to_owned(), targeted),
        (APPLIED_COUNT.to_owned(), applied),
    ]);
    let results = match old {
        Some(old) if old.queries == queries => old.results.clone(),
        _ => BTreeMap::from([
            (TARGETED_COUNT.to_owned(), 0),
            (APPLIED_COUNT.to_owned(), 0),
        ]),
    };
    Metrics { results, queries }
}

/// `POST /configurations/testQueries`: what is wrong with each query, `""` where nothing is.
pub(crate) fn test_queries(input: TestQueriesInput) -> TestQueriesResponse {
    let target_condition_error = match input.target_condition.as_deref() {
        None => String::new(),
        Some(text) => match parse_target(text) {
            Ok(_) => String::new(),
            Err(e) => format!("targetCondition {text:?}: {e}"),
        },
    };
    let custom_metric_query_errors = input
        .custom_metric_queries
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, text)| {
            parse_metric(&text)
                .err()
                .map(|e| (name.clone(), format!("{text:?}: {e}")))
        })
        .collect();
    TestQueriesResponse {
        target_condition_error,
        custom_metric_query_errors,
    }
}

/// What the evaluation decided for one device.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeviceChange {
    pub(crate) device_id: String,
    /// A desired-properties merge patch, when the twin differs from the winner's content.
    pub(crate) desired: Option<Value>,
    /// The twin's new `configurations` section.
    pub(crate) section: Map<String, Value>,
}

/// Decides, for every twin, the winning configuration's desired patch and the
/// `configurations` section. Pure.
pub(crate) fn plan(configs: &[Stored], twins: &[Value]) -> Vec<DeviceChange> {
    let targets: Vec<(&Stored, Option<Target>)> = configs
        .iter()
        .map(|s| (s, parse_target(&s.config.target_condition).ok()))
        .collect();
    let mut changes = Vec::new();
    for twin in twins {
        let Some(device_id) = twin.get("deviceId").and_then(Value::as_str) else {
            continue;
        };
        let matching: Vec<&Stored> = targets
            .iter()
            .filter(|(_, t)| t.as_ref().is_some_and(|t| t.matches(twin)))
            .map(|(s, _)| *s)
            .collect();
        let winner = matching
            .iter()
            .max_by_key(|s| (s.config.priority, s.seq))
            .copied();
        let section: Map<String, Value> = matching
            .iter()
            .map(|s| {
                let status = if winner.is_some_and(|w| w.config.id == s.config.id) {
                    STATUS_APPLIED
                } else {
                    STATUS_TARGETED
                };
                (s.config.id.clone(), json!({ "status": status }))
            })
            .collect();
        let desired = winner.and_then(|w| desired_patch(&w.config.content, twin));
        let current = twin
            .get("configurations")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if desired.is_some() || current != section {
            changes.push(DeviceChange {
                device_id: device_id.to_owned(),
                desired,
                section,
            });
        }
    }
    changes
}

/// The merge patch that makes the twin's desired properties carry `content`, if any is needed.
fn desired_patch(content: &Content, twin: &Value) -> Option<Value> {
    let desired = without_system_keys(
        twin.get("properties")
            .and_then(|p| p.get("desired"))
            .unwrap_or(&Value::Null),
    );
    let mut patch = Map::new();
    for (key, value) in &content.device_content {
        let Ok(path) = desired_path(key) else {
            continue;
        };
        let current = get_path(&desired, &path);
        // `null` removes the property (Azure: "specify the property value to null").
        let wanted = (!value.is_null()).then(|| without_nulls(value));
        if current == wanted.as_ref() {
            continue;
        }
        let change = match (current, wanted) {
            (_, None) => Value::Null,
            (Some(current), Some(wanted)) if current.is_object() && wanted.is_object() => {
                casement_iothub::twin::merge_diff(current, &wanted)
                    .unwrap_or_else(|| Value::Object(serde_json::Map::new()))
            }
            (_, Some(wanted)) => wanted,
        };
        insert_path(&mut patch, &path, change);
    }
    (!patch.is_empty()).then_some(Value::Object(patch))
}

/// One configuration's metric results, with the queries they answer.
#[derive(Debug, Clone, PartialEq)]
struct MetricResults {
    id: String,
    system_queries: BTreeMap<String, String>,
    queries: BTreeMap<String, String>,
    system: BTreeMap<String, u64>,
    custom: BTreeMap<String, u64>,
}

/// Runs every configuration's metric queries over the twins; a result is the count of items.
fn metrics(configs: &[Stored], twins: &[Value]) -> Vec<MetricResults> {
    let count = |text: &str| -> u64 {
        match parse_metric(text).and_then(|q| q.execute(twins).map_err(|e| e.to_string())) {
            Ok(out) => out.items.len() as u64,
            Err(_) => 0,
        }
    };
    configs
        .iter()
        .map(|s| {
            let c = &s.config;
            MetricResults {
                id: c.id.clone(),
                system_queries: c.system_metrics.queries.clone(),
                queries: c.metrics.queries.clone(),
                system: c
                    .system_metrics
                    .queries
                    .iter()
                    .map(|(n, q)| (n.clone(), count(q)))
                    .collect(),
                custom: c
                    .metrics
                    .queries
                    .iter()
                    .map(|(n, q)| (n.clone(), count(q)))
                    .collect(),
            }
        })
        .collect()
}

impl Shared {
    /// One evaluation of every configuration (see the module documentation).
    pub(crate) async fn evaluate_configurations(
        &self,
    ) -> Result<ConfigurationEvaluation, ApiError> {
        let _one_at_a_time = self.configurations.evaluating.lock().await;
        let configs = self.configurations.snapshot();
        if configs.is_empty() && self.configurations.idle.load(Ordering::SeqCst) {
            return Ok(ConfigurationEvaluation::default());
        }
        let twins = self.registry.twins();
        let mut report = ConfigurationEvaluation {
            configurations: configs.len(),
            ..ConfigurationEvaluation::default()
        };
        for change in plan(&configs, &twins) {
            if let Some(patch) = change.desired {
                let update = TwinUpdate {
                    tags: None,
                    desired: Some(patch),
                };
                match self
                    .update_twin(&change.device_id, update, None, false)
                    .await
                {
                    Ok(_) => report.desired_writes += 1,
                    Err(e) if e.code == ErrorCode::DeviceNotFound => continue,
                    Err(e) => {
                        tracing::warn!(device = change.device_id, error = %e, "cannot write a configuration's content into the twin");
                    }
                }
            }
            if self
                .registry
                .set_configurations(&change.device_id, change.section)?
            {
                report.status_writes += 1;
            }
        }
        let twins = self.registry.twins();
        self.configurations.record(metrics(&configs, &twins))?;
        self.store.flush().await?;
        if configs.is_empty() {
            // Every twin's section is now empty. The flag only ever short-cuts an evaluation
            // that finds no configurations, so a racing `put` cannot be skipped.
            let _ = self.configurations.idle.compare_exchange(
                false,
                true,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        Ok(report)
    }
}

/// The background evaluation: every `every`, until the hub shuts down.
pub(crate) async fn evaluate_every(shared: Arc<Shared>, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = shared.evaluate_configurations().await {
            tracing::warn!(error = %e, "configuration evaluation failed; retrying at the next interval");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, priority: i64, seq: u64, target: &str, content: Value) -> Stored {
        let Value::Object(device_content) = content else {
            panic!("content must be an object");
        };
        Stored {
            config: Configuration {
                id: id.to_owned(),
                schema_version: "1.0".to_owned(),
                labels: BTreeMap::new(),
                content: Content {
                    device_content,
                    ..Content::default()
                },
                target_condition: target.to_owned(),
                created_time_utc: String::new(),
                last_updated_time_utc: String::new(),
                priority,
                system_metrics: system_metrics(id, target, None),
                metrics: Metrics::default(),
                etag: etag(1),
            },
            seq,
            version: 1,
        }
    }

    #[test]
    fn double_brackets_become_bracketed_keys_outside_strings() {
        assert_eq!(
            rewrite_double_brackets("configurations.[[my-cfg]].status = 'Applied'"),
            "configurations['my-cfg'].status = 'Applied'"
        );
        assert_eq!(
            rewrite_double_brackets("tags.x = '.[[keep]]'"),
            "tags.x = '.[[keep]]'"
        );
        assert_eq!(
            rewrite_double_brackets("configurations.[[it's]].status"),
            "configurations['it\\'s'].status"
        );
        let q = parse_metric(
            "SELECT deviceId FROM devices WHERE configurations.[[c-1]].status = 'Applied'",
        )
        .expect("parses");
        let twins = [
            json!({"deviceId": "a", "configurations": {"c-1": {"status": "Applied"}}}),
            json!({"deviceId": "b", "configurations": {"c-1": {"status": "Targeted"}}}),
        ];
        assert_eq!(q.execute(&twins).expect("runs").items.len(), 1);
    }

    #[test]
    fn the_higher_priority_wins_and_on_a_tie_the_newer() {
        let low = stored(
            "low",
            1,
            1,
            "tags.env = 'prod'",
            json!({"properties.desired.m": {"p": "low"}}),
        );
        let high = stored(
            "high",
            5,
            2,
            "tags.env = 'prod'",
            json!({"properties.desired.m": {"p": "high"}}),
        );
        let twins = [
            json!({"deviceId": "d1", "tags": {"env": "prod"}, "properties": {"desired": {"$version": 1}}}),
        ];
        let changes = plan(&[low.clone(), high], &twins);
        assert_eq!(changes[0].desired, Some(json!({"m": {"p": "high"}})));
        assert_eq!(changes[0].section["high"]["status"], "Applied");
        assert_eq!(changes[0].section["low"]["status"], "Targeted");

        let newer = stored(
            "newer",
            1,
            3,
            "tags.env = 'prod'",
            json!({"properties.desired.m": {"p": "newer"}}),
        );
        let changes = plan(&[newer, low], &twins);
        assert_eq!(changes[0].desired, Some(json!({"m": {"p": "newer"}})));
    }

    #[test]
    fn null_content_removes_a_property_once() {
        let cfg = stored(
            "c",
            0,
            1,
            "*",
            json!({"properties.desired.gone": null, "properties.desired.m": {"a": 1, "b": null}}),
        );
        let twin = json!({"deviceId": "d", "properties": {"desired": {"gone": 1, "m": {"b": 2}}}});
        let changes = plan(std::slice::from_ref(&cfg), &[twin]);
        assert_eq!(
            changes[0].desired,
            Some(json!({"gone": null, "m": {"a": 1, "b": null}}))
        );
        let done = json!({"deviceId": "d", "configurations": {"c": {"status": "Applied"}},
            "properties": {"desired": {"m": {"a": 1}}}});
        assert!(plan(&[cfg], &[done]).is_empty(), "nothing to write twice");
    }

    #[test]
    fn content_replaces_the_whole_key_and_an_equal_twin_needs_nothing() {
        let cfg = stored("c", 0, 1, "*", json!({"properties.desired.m": {"a": 1}}));
        let twin = json!({"deviceId": "d", "properties": {"desired": {"m": {"a": 2, "old": true}, "$version": 3}}});
        let changes = plan(std::slice::from_ref(&cfg), &[twin]);
        assert_eq!(
            changes[0].desired,
            Some(json!({"m": {"a": 1, "old": null}}))
        );
        let done = json!({"deviceId": "d", "configurations": {"c": {"status": "Applied"}},
            "properties": {"desired": {"m": {"a": 1}, "$metadata": {}, "$version": 4}}});
        assert!(plan(&[cfg], &[done]).is_empty(), "nothing to write twice");
    }

    #[test]
    fn content_is_validated() {
        let bad = |content: Value| {
            let input: ContentInput =
                serde_json::from_value(json!({ "deviceContent": content })).expect("shape");
            content_from(Some(input)).expect_err("refused").message
        };
        assert!(bad(json!({"tags.x": 1})).contains("properties.desired."));
        assert!(
            bad(json!({"properties.desired.a": 1, "properties.desired.a.b": 2}))
                .contains("overlap")
        );
        assert!(bad(json!({})).contains("empty"));
        assert!(validate_id("Upper").is_err());
        assert!(validate_id("ok-id_1").is_ok());
        assert!(validate_id("no:colon").is_err());
    }
}
