//! Automatic device management configurations: the JSON of IoT Hub's `/configurations` API,
//! shared by `casement hub` (which serves it) and `casement-client` (which calls it).
//!
//! Field names are camelCase as Azure's REST API and the SDKs write them
//! (azure-iot-hub `models/configuration.py`); the contract, with every rule the hub enforces,
//! is `docs/iothub-contract.md` (section "Configurations").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /configurations/testQueries`.
pub const TEST_QUERIES_PATH: &str = "/configurations/testQueries";
/// `GET /configurations`.
pub const CONFIGURATIONS_PATH: &str = "/configurations";

/// `/configurations/{id}` (ids are 1–128 characters that need no escaping in a path).
pub fn configuration_path(id: &str) -> String {
    format!("{CONFIGURATIONS_PATH}/{id}")
}

/// `results` and `queries` of `metrics` and `systemMetrics` (ConfigurationMetrics).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Metric name → the number of devices its query returned at the last evaluation.
    #[serde(default)]
    pub results: BTreeMap<String, u64>,
    /// Metric name → `SELECT deviceId FROM devices WHERE …`.
    #[serde(default)]
    pub queries: BTreeMap<String, String>,
}

/// `content` (ConfigurationContent): what the configuration writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    /// `properties.desired.<path>` → the value written there.
    #[serde(default)]
    pub device_content: Map<String, Value>,
    /// IoT Edge module content (not served by `casement hub`).
    #[serde(default)]
    pub modules_content: Map<String, Value>,
    /// Module content (not served by `casement hub`).
    #[serde(default)]
    pub module_content: Map<String, Value>,
}

/// A configuration as the hub serves it. Server-owned fields (`createdTimeUtc`,
/// `lastUpdatedTimeUtc`, `systemMetrics`, `metrics.results`, `etag`) are ignored by the hub in
/// a request body, so the same type is sent on `PUT`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Configuration {
    /// The id: 1–128 lowercase letters, digits and `- + % _ * ! '`.
    pub id: String,
    /// `"1.0"`.
    pub schema_version: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// What it writes.
    pub content: Content,
    /// The devices it targets: a twin query condition, or `*`.
    pub target_condition: String,
    /// When it was created (IoT Hub timestamp).
    pub created_time_utc: String,
    /// When it was last updated.
    pub last_updated_time_utc: String,
    /// Higher wins; on a tie the most recently created.
    pub priority: i64,
    /// `targetedCount` and `appliedCount`.
    pub system_metrics: Metrics,
    /// Custom metrics (at most five).
    pub metrics: Metrics,
    /// The ETag for `If-Match`.
    pub etag: String,
}

/// `POST /configurations/testQueries` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestQueriesRequest {
    /// A target condition to check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_condition: Option<String>,
    /// Metric name → query to check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_metric_queries: Option<BTreeMap<String, String>>,
}

/// `POST /configurations/testQueries` answer: an empty string where the query is fine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TestQueriesResponse {
    /// The target condition's error, `""` when it parses.
    #[serde(default)]
    pub target_condition_error: String,
    /// Only the metric queries that do not parse, with their errors.
    #[serde(default)]
    pub custom_metric_query_errors: BTreeMap<String, String>,
}
