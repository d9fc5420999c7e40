//! The device identity registry: create, read, list, delete one device, and the bulk
//! `POST /devices` import (at most [`MAX_BULK_DEVICES`] per call; [`ServiceClient::import_devices`]
//! chunks larger sets). Errors are [`ClientError`]s like every other call's.

use casement_iothub::quota::Operation;
use casement_iothub::rest::{self, CONTENT_TYPE_JSON, Device, HEADER_IF_MATCH, Twin};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::client::ServiceClient;
use crate::error::ClientError;
use casement_iothub::rest::quote_etag;

/// Most devices one bulk `POST /devices` call may carry (IoT Hub's limit).
pub const MAX_BULK_DEVICES: usize = 100;

/// One device to import: an ExportImportDevice with `importMode: create`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewDevice {
    /// The device id.
    pub id: String,
    /// Twin tags.
    pub tags: Map<String, Value>,
    /// Whether the device may connect (`enabled`, the default, or `disabled`).
    pub disabled: bool,
    /// The device's symmetric keys (primary, secondary); `None`: the hub generates them, and
    /// they are read back with [`ServiceClient::device`]. A simulator or a provisioning tool
    /// that supplies its own ([`casement_iothub::sas::generate_key`]) needs no read-back.
    pub keys: Option<(String, String)>,
}

impl NewDevice {
    fn to_export_import(&self) -> Value {
        let mut entry = json!({
            "id": self.id,
            "importMode": "create",
            "status": if self.disabled { "disabled" } else { "enabled" },
            "authentication": {"type": "sas", "symmetricKey": {
                "primaryKey": self.keys.as_ref().map_or("", |k| k.0.as_str()),
                "secondaryKey": self.keys.as_ref().map_or("", |k| k.1.as_str()),
            }},
        });
        if !self.tags.is_empty() {
            entry["tags"] = Value::Object(self.tags.clone());
        }
        entry
    }
}

/// One entry the hub refused in a bulk call (BulkRegistryOperationResult `errors`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportFailure {
    /// The device.
    pub device_id: String,
    /// IoT Hub's error name, e.g. `DeviceAlreadyExists`.
    pub error_code: String,
    /// The hub's message.
    pub message: String,
}

/// What a bulk import did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImportOutcome {
    /// Calls made (one per [`MAX_BULK_DEVICES`] devices).
    pub calls: usize,
    /// Devices the hub registered.
    pub created: usize,
    /// Devices it refused, and why.
    pub failures: Vec<ImportFailure>,
}

/// `SELECT * FROM devices [WHERE condition]`.
pub fn list_query(condition: Option<&str>) -> String {
    match condition.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("SELECT * FROM devices WHERE {c}"),
        None => "SELECT * FROM devices".to_owned(),
    }
}

impl ServiceClient {
    /// `PUT /devices/{id}` without `If-Match`: registers a SAS device (the hub generates its
    /// keys), then writes `tags` to its twin when there are any. 409 `DeviceAlreadyExists` when
    /// the id is taken.
    pub async fn create_device(
        &self,
        id: &str,
        tags: &Map<String, Value>,
    ) -> Result<Device, ClientError> {
        let path = rest::device_path(id);
        let op = format!("PUT {path}");
        let url = self.url(&path);
        let body = json!({
            "deviceId": id,
            "status": "enabled",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}},
        })
        .to_string();
        let device: Device = self
            .send(
                &op,
                Operation::Registry,
                self.config().request_timeout,
                // Without If-Match a replay is refused with 409, never applied twice.
                false,
                |http| {
                    http.put(&url)
                        .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_JSON)
                        .body(body.clone())
                },
                |_, _, body| crate::client::decode(&op, body),
            )
            .await?;
        if !tags.is_empty() {
            let patch = casement_iothub::rest::TwinPatch {
                tags: Some(Value::Object(tags.clone())),
                ..Default::default()
            };
            self.patch(id, &patch, None).await?;
        }
        Ok(device)
    }

    /// `GET /devices/{id}`: the identity, with its keys.
    pub async fn device(&self, id: &str) -> Result<Device, ClientError> {
        let path = rest::device_path(id);
        let op = format!("GET {path}");
        let url = self.url(&path);
        self.send(
            &op,
            Operation::Registry,
            self.config().request_timeout,
            true,
            |http| http.get(&url),
            |_, _, body| crate::client::decode(&op, body),
        )
        .await
    }

    /// `DELETE /devices/{id}` (`If-Match: *`).
    pub async fn delete_device(&self, id: &str) -> Result<(), ClientError> {
        let path = rest::device_path(id);
        let op = format!("DELETE {path}");
        let url = self.url(&path);
        let star = quote_etag("*");
        self.send(
            &op,
            Operation::Registry,
            self.config().request_timeout,
            true,
            |http| http.delete(&url).header(HEADER_IF_MATCH, &star),
            |_, _, _| Ok(()),
        )
        .await
    }

    /// The twins of the devices meeting `condition` (a query WHERE clause; all devices when
    /// `None`), every page.
    pub async fn list_devices(&self, condition: Option<&str>) -> Result<Vec<Twin>, ClientError> {
        let items = self.query_all(&list_query(condition)).await?;
        items
            .into_iter()
            .map(|item| {
                serde_json::from_value(item).map_err(|e| ClientError::Decode {
                    op: "POST /devices/query".into(),
                    message: format!("not a twin: {e}"),
                })
            })
            .collect()
    }

    /// Registers `devices` with the bulk `POST /devices`, [`MAX_BULK_DEVICES`] per call. An
    /// entry the hub refuses (the id is taken: `DeviceAlreadyExists`) is listed in
    /// [`ImportOutcome::failures`] — IoT Hub answers such a call 400
    /// `BulkRegistryOperationFailure` with the refused entries, and registers the others. A
    /// whole call refused, or not answered, is an error (the chunks before it stay registered).
    pub async fn import_devices(
        &self,
        devices: &[NewDevice],
    ) -> Result<ImportOutcome, ClientError> {
        let mut outcome = ImportOutcome::default();
        let url = self.url(rest::DEVICES_PATH);
        let op = format!("POST {}", rest::DEVICES_PATH);
        for chunk in devices.chunks(MAX_BULK_DEVICES) {
            let body =
                Value::Array(chunk.iter().map(NewDevice::to_export_import).collect()).to_string();
            let answer = self.send_bulk(&op, &url, body).await?;
            outcome.calls += 1;
            let failures = bulk_failures(&answer);
            outcome.created += chunk.len().saturating_sub(failures.len());
            outcome.failures.extend(failures);
        }
        Ok(outcome)
    }

    /// One bulk call. 400 `BulkRegistryOperationFailure` (some entries refused) is an answer,
    /// not an error: its body names the refused entries (the client's `send` reads it).
    async fn send_bulk(&self, op: &str, url: &str, body: String) -> Result<Value, ClientError> {
        self.send(
            op,
            Operation::Registry,
            self.config().request_timeout,
            // A replayed create is refused entry by entry (DeviceAlreadyExists): never applied
            // twice, but reported wrongly; so not retried after a timeout.
            false,
            |http| {
                http.post(url)
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE_JSON)
                    .body(body.clone())
            },
            |_, _, body| crate::client::decode::<Value>(op, body),
        )
        .await
    }

    /// The ids of every registered device (`SELECT deviceId FROM devices`, every page).
    pub async fn device_ids(&self) -> Result<std::collections::BTreeSet<String>, ClientError> {
        let items = self.query_all("SELECT deviceId FROM devices").await?;
        Ok(items
            .iter()
            .filter_map(|item| item.get("deviceId").and_then(Value::as_str))
            .map(str::to_owned)
            .collect())
    }
}

/// The refused entries of a BulkRegistryOperationResult.
fn bulk_failures(answer: &Value) -> Vec<ImportFailure> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    answer
        .get("errors")
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .map(|e| ImportFailure {
                    device_id: text(e, "deviceId"),
                    error_code: text(e, "errorCode"),
                    message: text(e, "errorStatus"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_adds_the_condition() {
        assert_eq!(list_query(None), "SELECT * FROM devices");
        assert_eq!(list_query(Some("  ")), "SELECT * FROM devices");
        assert_eq!(
            list_query(Some("tags.role = 'gw'")),
            "SELECT * FROM devices WHERE tags.role = 'gw'"
        );
    }

    #[test]
    fn bulk_failures_are_read_from_the_result() {
        let answer = json!({"isSuccessful": false, "errors": [
            {"deviceId": "a", "errorCode": "DeviceAlreadyExists", "errorStatus": "taken", "operation": "create"}
        ], "warnings": []});
        assert_eq!(
            bulk_failures(&answer),
            [ImportFailure {
                device_id: "a".into(),
                error_code: "DeviceAlreadyExists".into(),
                message: "taken".into()
            }]
        );
        assert!(bulk_failures(&json!({"isSuccessful": true, "errors": []})).is_empty());
    }
}
