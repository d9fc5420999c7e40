//! The identity registry and the twins: one in-memory entry per device, written through to
//! sled on every change.
//!
//! All operations are synchronous and hold the registry lock only briefly; they never await.
//! Callers that must not acknowledge before the write is durable flush the store afterwards
//! (see [`Shared`](crate::state::Shared)). Desired-property notifications are handed to a
//! callback *under* the lock, so devices see them in `$version` order.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use base64::Engine as _;
use casement_iothub::error::ErrorCode;
use casement_iothub::rest::{self, DeviceStatus, IfMatch};
use casement_iothub::time::{ZERO_TIMESTAMP, format_timestamp};
use casement_iothub::twin::{self, SectionKind, TwinError, TwinProperties};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::clock::Clock;
use crate::error::ApiError;
use crate::lag::History;
use crate::presence::{Presence, PresenceLog};
use crate::store::{Store, StoreError};
use casement_iothub::sas::generate_key;

fn status_str(status: DeviceStatus) -> &'static str {
    match status {
        DeviceStatus::Enabled => "enabled",
        DeviceStatus::Disabled => "disabled",
    }
}

/// What a client asks for when creating or updating a device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DeviceSpec {
    pub(crate) status: Option<DeviceStatus>,
    pub(crate) status_reason: Option<String>,
    /// Absent or empty: generate.
    pub(crate) primary_key: Option<String>,
    /// Absent or empty: generate.
    pub(crate) secondary_key: Option<String>,
    pub(crate) iot_edge: bool,
}

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeviceRecord {
    device_id: String,
    generation_id: String,
    device_etag: u64,
    status: DeviceStatus,
    status_reason: Option<String>,
    status_updated_time: Option<String>,
    primary_key: String,
    secondary_key: String,
    iot_edge: bool,
    last_activity_time: Option<String>,
    connection_state_updated_time: Option<String>,
    cloud_to_device_message_count: u64,
    twin_version: u64,
    tags: Map<String, Value>,
    desired: Value,
    reported: Value,
    /// The twin's `configurations` section: `{id: {"status": "targeted" | "applied"}}`,
    /// written by the configuration evaluation (`crate::configurations`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    configurations: Map<String, Value>,
}

#[derive(Debug, Clone)]
struct Entry {
    rec: DeviceRecord,
    props: TwinProperties,
    connected: bool,
    /// Presence changes not yet shown (with a connection-state lag).
    presence_log: PresenceLog,
}

impl Entry {
    /// The real connection state and activity.
    fn presence(&self) -> Presence {
        Presence {
            connected: self.connected,
            state_updated: self.rec.connection_state_updated_time.clone(),
            last_activity: self.rec.last_activity_time.clone(),
        }
    }
}

/// A service-side twin change.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TwinUpdate {
    /// `tags` from the body, if present.
    pub(crate) tags: Option<Value>,
    /// `properties.desired` from the body, if present.
    pub(crate) desired: Option<Value>,
}

/// One page of [`Registry::scan_twins`].
#[derive(Debug, Default)]
pub(crate) struct TwinScan {
    /// The page's items, in id order.
    pub(crate) items: Vec<Value>,
    /// The id of the twin that gave the last item, when the page is full.
    pub(crate) last: Option<String>,
    /// Whether a twin after `last` yields an item too.
    pub(crate) more: bool,
}

/// The registry.
#[derive(Debug)]
pub(crate) struct Registry {
    entries: RwLock<BTreeMap<String, Entry>>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    /// Twin versions for lagging queries (`--query-lag`); `None` without lag.
    lag: Option<Mutex<History>>,
    /// How late connection state and activity are shown (see [`crate::presence`]).
    connection_state_lag: Duration,
}

impl Registry {
    /// Shows `connectionState`, `connectionStateUpdatedTime` and `lastActivityTime` `lag`
    /// after they change, as Azure IoT Hub does.
    pub(crate) fn with_connection_state_lag(mut self, lag: Duration) -> Self {
        self.connection_state_lag = lag;
        self
    }

    /// An entry's presence as shown now.
    fn shown(&self, entry: &Entry) -> Presence {
        let real = entry.presence();
        entry
            .presence_log
            .shown(self.connection_state_lag, self.now(), &real)
            .clone()
    }

    /// Records a presence change made to `entry` since `before`.
    fn record_presence(&self, entry: &mut Entry, before: Presence, now: DateTime<Utc>) {
        let after = entry.presence();
        entry
            .presence_log
            .record(self.connection_state_lag, now, before, after);
    }

    fn twin_json(&self, entry: &Entry) -> Value {
        twin_json(entry, &self.shown(entry))
    }

    fn device_json(&self, entry: &Entry) -> Value {
        device_json(entry, &self.shown(entry))
    }

    /// Loads every stored device.
    pub(crate) fn load(store: Arc<Store>, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let now = clock.now();
        let mut entries = BTreeMap::new();
        for rec in store.load_devices::<DeviceRecord>()? {
            let props = TwinProperties::from_json(
                &json!({"desired": rec.desired, "reported": rec.reported}),
                now,
            )
            .unwrap_or_else(|e| {
                tracing::error!(device = rec.device_id, error = %e, "stored twin is invalid; starting it empty");
                TwinProperties::new(now)
            });
            entries.insert(
                rec.device_id.clone(),
                Entry {
                    rec,
                    props,
                    connected: false,
                    presence_log: PresenceLog::default(),
                },
            );
        }
        Ok(Self {
            entries: RwLock::new(entries),
            store,
            clock,
            lag: None,
            connection_state_lag: Duration::ZERO,
        })
    }

    /// Makes twin queries ([`twins`](Self::twins), [`scan_twins`](Self::scan_twins)) answer
    /// from the twins as they were `lag` ago (see [`crate::lag`]); zero turns it off.
    pub(crate) fn with_query_lag(mut self, lag: Duration) -> Self {
        self.lag = (!lag.is_zero()).then(|| Mutex::new(History::new(lag)));
        self
    }

    fn history(&self) -> Option<MutexGuard<'_, History>> {
        self.lag
            .as_ref()
            .map(|h| h.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Keeps the device's twin as it is now for lagging queries; call before changing it.
    fn lag_before(&self, device_id: &str, entry: Option<&Entry>) {
        if let Some(mut history) = self.history() {
            history.before_change(device_id, self.now(), || entry.map(|e| self.twin_json(e)));
        }
    }

    /// Records the device's twin after a change for lagging queries.
    fn lag_after(&self, device_id: &str, entry: Option<&Entry>) {
        if let Some(mut history) = self.history() {
            history.changed(device_id, self.now(), entry.map(|e| self.twin_json(e)));
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn persist(&self, entry: &mut Entry) -> Result<(), ApiError> {
        entry.rec.desired = entry.props.desired.to_json();
        entry.rec.reported = entry.props.reported.to_json();
        self.store
            .put_device(&entry.rec.device_id, &entry.rec)
            .map_err(ApiError::from)
    }

    /// Number of devices.
    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    /// Creates a device; 409 when it exists.
    pub(crate) fn create(&self, device_id: &str, spec: DeviceSpec) -> Result<Value, ApiError> {
        validate_device_id(device_id)?;
        let primary = key_or_generate(spec.primary_key.as_deref(), "primaryKey")?;
        let secondary = key_or_generate(spec.secondary_key.as_deref(), "secondaryKey")?;
        let now = self.now();
        let mut entries = self.write();
        if entries.contains_key(device_id) {
            return Err(ApiError::new(ErrorCode::DeviceAlreadyExists, device_id));
        }
        let props = TwinProperties::new(now);
        let mut entry = Entry {
            rec: DeviceRecord {
                device_id: device_id.to_owned(),
                generation_id: generation_id(),
                device_etag: 1,
                status: spec.status.unwrap_or_default(),
                status_reason: spec.status_reason,
                status_updated_time: None,
                primary_key: primary,
                secondary_key: secondary,
                iot_edge: spec.iot_edge,
                last_activity_time: None,
                connection_state_updated_time: None,
                cloud_to_device_message_count: 0,
                twin_version: 1,
                tags: Map::new(),
                desired: Value::Null,
                reported: Value::Null,
                configurations: Map::new(),
            },
            props,
            connected: false,
            presence_log: PresenceLog::default(),
        };
        self.persist(&mut entry)?;
        let out = self.device_json(&entry);
        self.lag_before(device_id, None);
        self.lag_after(device_id, Some(&entry));
        entries.insert(device_id.to_owned(), entry);
        Ok(out)
    }

    /// Updates a device (status, keys, capabilities) under `If-Match`. Returns the device and
    /// whether its connections must be closed (disabled, or keys changed).
    pub(crate) fn update(
        &self,
        device_id: &str,
        spec: DeviceSpec,
        if_match: Option<&str>,
    ) -> Result<(Value, bool), ApiError> {
        let now = self.now();
        let mut entries = self.write();
        let entry = entries
            .get_mut(device_id)
            .ok_or_else(|| ApiError::device_not_found(device_id))?;
        check_etag(if_match, &device_etag(entry.rec.device_etag))?;
        let primary = key_or_keep(
            spec.primary_key.as_deref(),
            &entry.rec.primary_key,
            "primaryKey",
        )?;
        let secondary = key_or_keep(
            spec.secondary_key.as_deref(),
            &entry.rec.secondary_key,
            "secondaryKey",
        )?;
        let mut rec = entry.rec.clone();
        let keys_changed = primary != rec.primary_key || secondary != rec.secondary_key;
        let status = spec.status.unwrap_or(rec.status);
        if status != rec.status {
            rec.status_updated_time = Some(format_timestamp(now));
        }
        rec.status = status;
        rec.status_reason = spec.status_reason;
        rec.primary_key = primary;
        rec.secondary_key = secondary;
        rec.iot_edge = spec.iot_edge;
        rec.device_etag += 1;
        self.lag_before(device_id, Some(entry));
        let old = std::mem::replace(&mut entry.rec, rec);
        if let Err(e) = self.persist(entry) {
            entry.rec = old;
            return Err(e);
        }
        self.lag_after(device_id, Some(entry));
        let kick = keys_changed || status == DeviceStatus::Disabled;
        Ok((self.device_json(entry), kick))
    }

    /// The device JSON.
    pub(crate) fn get(&self, device_id: &str) -> Result<Value, ApiError> {
        self.read()
            .get(device_id)
            .map(|e| self.device_json(e))
            .ok_or_else(|| ApiError::device_not_found(device_id))
    }

    /// Up to `top` devices, in id order.
    pub(crate) fn list(&self, top: usize) -> Vec<Value> {
        self.read()
            .values()
            .take(top)
            .map(|e| self.device_json(e))
            .collect()
    }

    /// Deletes a device under `If-Match`.
    pub(crate) fn delete(&self, device_id: &str, if_match: Option<&str>) -> Result<(), ApiError> {
        let mut entries = self.write();
        let entry = entries
            .get(device_id)
            .ok_or_else(|| ApiError::device_not_found(device_id))?;
        check_etag(if_match, &device_etag(entry.rec.device_etag))?;
        self.lag_before(device_id, Some(entry));
        self.store.remove_device(device_id)?;
        entries.remove(device_id);
        self.lag_after(device_id, None);
        Ok(())
    }

    /// The device's keys when it exists and is enabled (for SAS verification).
    pub(crate) fn enabled_keys(&self, device_id: &str) -> Option<(String, String)> {
        self.read()
            .get(device_id)
            .filter(|e| e.rec.status == DeviceStatus::Enabled)
            .map(|e| (e.rec.primary_key.clone(), e.rec.secondary_key.clone()))
    }

    /// Whether the device exists.
    pub(crate) fn exists(&self, device_id: &str) -> bool {
        self.read().contains_key(device_id)
    }

    /// The full twin JSON, as `GET /twins/{id}` returns it.
    pub(crate) fn twin(&self, device_id: &str) -> Result<Value, ApiError> {
        self.read()
            .get(device_id)
            .map(|e| self.twin_json(e))
            .ok_or_else(|| ApiError::device_not_found(device_id))
    }

    /// Every twin, in id order, as queries see them (lagging with `--query-lag`).
    pub(crate) fn twins(&self) -> Vec<Value> {
        let entries = self.read();
        let mut history = self.history();
        match history.as_deref_mut() {
            None => entries.values().map(|e| self.twin_json(e)).collect(),
            Some(history) => {
                history.prune(self.now());
                lagged_view(&entries, history, self.now(), None, &|e| self.twin_json(e))
                    .map(|(_, twin)| twin)
                    .collect()
            }
        }
    }

    /// One page of a per-twin query: `item` run over the twins in id order after the id
    /// `after` (from the start when `None`) until it has yielded `limit` items. Reads only as
    /// far as the page needs, plus the look-ahead to the next yielding twin that tells whether
    /// there is another page. Twins are as queries see them (lagging with `--query-lag`).
    pub(crate) fn scan_twins(
        &self,
        after: Option<&str>,
        limit: usize,
        item: impl Fn(&Value) -> Option<Value>,
    ) -> TwinScan {
        let entries = self.read();
        if let Some(mut history) = self.history() {
            history.prune(self.now());
            let render = |e: &Entry| self.twin_json(e);
            let view = lagged_view(&entries, &history, self.now(), after, &render);
            return scan(view, limit, item);
        }
        let mut rest = match after {
            Some(id) => entries.range::<str, _>((Bound::Excluded(id), Bound::Unbounded)),
            None => entries.range::<str, _>(..),
        };
        let mut scan = TwinScan::default();
        if limit == 0 {
            return scan;
        }
        for (id, entry) in rest.by_ref() {
            if let Some(found) = item(&self.twin_json(entry)) {
                scan.items.push(found);
                if scan.items.len() == limit {
                    scan.last = Some(id.clone());
                    break;
                }
            }
        }
        scan.more =
            scan.last.is_some() && rest.any(|(_, entry)| item(&self.twin_json(entry)).is_some());
        scan
    }

    /// The MQTT twin GET body: `{"desired":{…,"$version":N},"reported":{…,"$version":M}}`.
    pub(crate) fn twin_properties(&self, device_id: &str) -> Result<Value, ApiError> {
        self.read()
            .get(device_id)
            .map(|e| e.props.mqtt_get_body())
            .ok_or_else(|| ApiError::device_not_found(device_id))
    }

    /// Applies a service twin PATCH (`replace = false`) or PUT (`replace = true`) under
    /// `If-Match`. When desired properties changed, `notify(version, body)` is called with the
    /// notification for the device while the registry is still locked.
    pub(crate) fn update_twin(
        &self,
        device_id: &str,
        update: TwinUpdate,
        if_match: Option<&str>,
        replace: bool,
        notify: impl FnOnce(u64, &Value),
    ) -> Result<Value, ApiError> {
        let now = self.now();
        let mut entries = self.write();
        let entry = entries
            .get_mut(device_id)
            .ok_or_else(|| ApiError::device_not_found(device_id))?;
        check_etag(if_match, &twin_etag(entry.rec.twin_version))?;

        let mut tags = entry.rec.tags.clone();
        if let Some(patch) = &update.tags {
            if replace {
                let mut fresh = Map::new();
                twin::apply_validated_patch(
                    SectionKind::Tags,
                    &mut fresh,
                    &twin::strip_system_keys(patch),
                )
                .map_err(twin_error)?;
                tags = fresh;
            } else {
                twin::apply_validated_patch(SectionKind::Tags, &mut tags, patch)
                    .map_err(twin_error)?;
            }
        }
        let mut desired = entry.props.desired.clone();
        let mut notification = None;
        if let Some(patch) = &update.desired {
            let before = Value::Object(desired.properties().clone());
            let version = if replace {
                desired.replace(patch, now)
            } else {
                desired.apply_patch(patch, now)
            }
            .map_err(twin_error)?;
            let change = if replace {
                twin::merge_diff(&before, &Value::Object(desired.properties().clone()))
                    .unwrap_or_else(|| Value::Object(Map::new()))
            } else {
                patch.clone()
            };
            notification = Some((version, twin::desired_notification(&change, version)));
        }
        self.lag_before(device_id, Some(entry));
        let old = entry.clone();
        entry.rec.tags = tags;
        entry.props.desired = desired;
        entry.rec.twin_version += 1;
        if let Err(e) = self.persist(entry) {
            *entry = old;
            return Err(e);
        }
        self.lag_after(device_id, Some(entry));
        if let Some((version, body)) = &notification {
            notify(*version, body);
        }
        Ok(self.twin_json(entry))
    }

    /// Applies a device's reported-properties patch; returns the new reported `$version`.
    pub(crate) fn report(&self, device_id: &str, patch: &Value) -> Result<u64, ApiError> {
        let now = self.now();
        let mut entries = self.write();
        let entry = entries
            .get_mut(device_id)
            .ok_or_else(|| ApiError::device_not_found(device_id))?;
        let mut reported = entry.props.reported.clone();
        let version = reported.apply_patch(patch, now).map_err(twin_error)?;
        self.lag_before(device_id, Some(entry));
        let old = entry.clone();
        let before = entry.presence();
        entry.props.reported = reported;
        entry.rec.twin_version += 1;
        entry.rec.last_activity_time = Some(format_timestamp(now));
        if let Err(e) = self.persist(entry) {
            *entry = old;
            return Err(e);
        }
        self.record_presence(entry, before, now);
        self.lag_after(device_id, Some(entry));
        Ok(version)
    }

    /// Sets the twin's `configurations` section; writes (not flushed) only when it changed.
    /// Returns whether it changed; a device deleted meanwhile is no change.
    pub(crate) fn set_configurations(
        &self,
        device_id: &str,
        section: Map<String, Value>,
    ) -> Result<bool, ApiError> {
        let mut entries = self.write();
        let Some(entry) = entries.get_mut(device_id) else {
            return Ok(false);
        };
        if entry.rec.configurations == section {
            return Ok(false);
        }
        let old = std::mem::replace(&mut entry.rec.configurations, section);
        if let Err(e) = self.persist(entry) {
            entry.rec.configurations = old;
            return Err(e);
        }
        Ok(true)
    }

    /// `(enabled, disabled)` device counts.
    pub(crate) fn status_counts(&self) -> (usize, usize) {
        let entries = self.read();
        let enabled = entries
            .values()
            .filter(|e| e.rec.status == DeviceStatus::Enabled)
            .count();
        (enabled, entries.len() - enabled)
    }

    /// Records a connect or disconnect (not flushed: connection state is not durable state).
    pub(crate) fn set_connected(&self, device_id: &str, connected: bool) {
        let at = self.now();
        let now = format_timestamp(at);
        let mut entries = self.write();
        if let Some(entry) = entries.get_mut(device_id) {
            self.lag_before(device_id, Some(entry));
            let before = entry.presence();
            entry.connected = connected;
            entry.rec.connection_state_updated_time = Some(now.clone());
            entry.rec.last_activity_time = Some(now);
            self.record_presence(entry, before, at);
            if !connected {
                // Keep lastActivityTime across restarts; sled's background flush suffices.
                if let Err(e) = self.persist(entry) {
                    tracing::warn!(device = device_id, error = %e, "cannot persist lastActivityTime");
                }
            }
            self.lag_after(device_id, Some(entry));
        }
    }

    /// Records device activity (`lastActivityTime`), in memory.
    pub(crate) fn touch(&self, device_id: &str) {
        let at = self.now();
        if let Some(entry) = self.write().get_mut(device_id) {
            let before = entry.presence();
            entry.rec.last_activity_time = Some(format_timestamp(at));
            self.record_presence(entry, before, at);
        }
    }
}

/// The twins as lagging queries see them: devices changed within the lag window as they were
/// at its horizon, every other device live; in id order, after `after` when given.
fn lagged_view<'a>(
    entries: &'a BTreeMap<String, Entry>,
    history: &'a History,
    now: DateTime<Utc>,
    after: Option<&str>,
    render: &'a dyn Fn(&Entry) -> Value,
) -> impl Iterator<Item = (String, Value)> + 'a {
    let horizon = history.horizon(now);
    let mut live = match after {
        Some(id) => entries.range::<str, _>((Bound::Excluded(id), Bound::Unbounded)),
        None => entries.range::<str, _>(..),
    }
    .peekable();
    let mut lagged = history.range(after).peekable();
    std::iter::from_fn(move || {
        loop {
            let live_first = match (live.peek(), lagged.peek()) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((a, _)), Some((b, _))) => a < b,
            };
            if live_first {
                let (id, entry) = live.next()?;
                return Some((id.clone(), render(entry)));
            }
            let (id, versions) = lagged.next()?;
            if live.peek().is_some_and(|(a, _)| *a == id) {
                live.next();
            }
            if let Some(twin) = versions.at(horizon) {
                return Some((id.clone(), twin.clone()));
            }
        }
    })
}

/// A page of `limit` items from `twins` (see [`Registry::scan_twins`]).
fn scan(
    mut twins: impl Iterator<Item = (String, Value)>,
    limit: usize,
    item: impl Fn(&Value) -> Option<Value>,
) -> TwinScan {
    let mut page = TwinScan::default();
    if limit == 0 {
        return page;
    }
    for (id, twin) in twins.by_ref() {
        if let Some(found) = item(&twin) {
            page.items.push(found);
            if page.items.len() == limit {
                page.last = Some(id);
                break;
            }
        }
    }
    page.more = page.last.is_some() && twins.any(|(_, twin)| item(&twin).is_some());
    page
}

fn twin_error(e: TwinError) -> ApiError {
    ApiError::new(e.error_code(), e.to_string())
}

/// IoT Hub's device id rule (see [`rest::validate_device_id`]).
pub(crate) fn validate_device_id(device_id: &str) -> Result<(), ApiError> {
    rest::validate_device_id(device_id).map_err(|e| ApiError::new(e.error_code(), e.to_string()))
}

fn key_or_generate(key: Option<&str>, field: &str) -> Result<String, ApiError> {
    match key.map(str::trim).filter(|k| !k.is_empty()) {
        None => Ok(generate_key()),
        Some(k) => validate_key(k, field).map(|()| k.to_owned()),
    }
}

fn key_or_keep(key: Option<&str>, current: &str, field: &str) -> Result<String, ApiError> {
    match key.map(str::trim).filter(|k| !k.is_empty()) {
        None => Ok(current.to_owned()),
        Some(k) => validate_key(k, field).map(|()| k.to_owned()),
    }
}

/// IoT Hub accepts symmetric keys of 16 to 64 bytes, base64-encoded.
fn validate_key(key: &str, field: &str) -> Result<(), ApiError> {
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if (16..=64).contains(&bytes.len()) => Ok(()),
        Ok(bytes) => Err(ApiError::invalid(format!(
            "authentication.symmetricKey.{field} must be 16 to 64 bytes, base64-encoded (got {} bytes)",
            bytes.len()
        ))),
        Err(_) => Err(ApiError::invalid(format!(
            "authentication.symmetricKey.{field} is not valid base64"
        ))),
    }
}

fn generation_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    u64::from_be_bytes(bytes)
        .to_string()
        .chars()
        .take(18)
        .collect()
}

/// The twin ETag: base64 of the twin version, big-endian (`AAAAAAAAAAc=` for 7), as the service
/// writes it.
pub(crate) fn twin_etag(version: u64) -> String {
    rest::etag_from_version(version)
}

/// The device ETag: base64 of the device's write counter.
pub(crate) fn device_etag(counter: u64) -> String {
    base64::engine::general_purpose::STANDARD.encode(counter.to_string())
}

/// `If-Match` semantics: absent or `*` match anything; otherwise the ETag, quoted or not.
pub(crate) fn check_etag(if_match: Option<&str>, current: &str) -> Result<(), ApiError> {
    match if_match.map(IfMatch::parse) {
        Some(condition) if !condition.matches(current) => Err(ApiError::precondition(format!(
            "ETag {:?} does not match the current ETag {current:?}",
            rest::unquote_etag(if_match.unwrap_or_default())
        ))),
        _ => Ok(()),
    }
}

fn ts(t: &Option<String>) -> Value {
    json!(t.as_deref().unwrap_or(ZERO_TIMESTAMP))
}

fn connection_state(shown: &Presence) -> &'static str {
    if shown.connected {
        "Connected"
    } else {
        "Disconnected"
    }
}

fn device_json(entry: &Entry, shown: &Presence) -> Value {
    let r = &entry.rec;
    json!({
        "deviceId": r.device_id,
        "generationId": r.generation_id,
        "etag": device_etag(r.device_etag),
        "connectionState": connection_state(shown),
        "status": status_str(r.status),
        "statusReason": r.status_reason,
        "connectionStateUpdatedTime": ts(&shown.state_updated),
        "statusUpdatedTime": ts(&r.status_updated_time),
        "lastActivityTime": ts(&shown.last_activity),
        "cloudToDeviceMessageCount": r.cloud_to_device_message_count,
        "authentication": {
            "symmetricKey": {"primaryKey": r.primary_key, "secondaryKey": r.secondary_key},
            "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
            "type": "sas",
        },
        "capabilities": {"iotEdge": r.iot_edge},
        "deviceScope": "",
        "parentScopes": [],
    })
}

fn twin_json(entry: &Entry, shown: &Presence) -> Value {
    let r = &entry.rec;
    let mut twin = json!({
        "deviceId": r.device_id,
        "moduleId": null,
        "etag": twin_etag(r.twin_version),
        "deviceEtag": device_etag(r.device_etag),
        "status": status_str(r.status),
        "statusReason": r.status_reason,
        "statusUpdateTime": ts(&r.status_updated_time),
        "connectionState": connection_state(shown),
        "lastActivityTime": ts(&shown.last_activity),
        "cloudToDeviceMessageCount": r.cloud_to_device_message_count,
        "authenticationType": "sas",
        "x509Thumbprint": {"primaryThumbprint": null, "secondaryThumbprint": null},
        "modelId": "",
        "version": r.twin_version,
        "capabilities": {"iotEdge": r.iot_edge},
        "tags": r.tags,
        "properties": entry.props.to_json(),
    });
    if !r.configurations.is_empty()
        && let Value::Object(map) = &mut twin
    {
        map.insert(
            "configurations".to_owned(),
            Value::Object(r.configurations.clone()),
        );
    }
    twin
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::Storage;

    fn registry() -> Registry {
        let store = Arc::new(Store::open(&Storage::InMemory).expect("store"));
        let clock = Arc::new(ManualClock::new(
            DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .expect("t")
                .with_timezone(&Utc),
        ));
        Registry::load(store, clock).expect("load")
    }

    #[test]
    fn create_generates_keys_and_rejects_duplicates() {
        let reg = registry();
        let d = reg.create("d1", DeviceSpec::default()).expect("create");
        assert_eq!(d["deviceId"], "d1");
        assert!(
            d["authentication"]["symmetricKey"]["primaryKey"]
                .as_str()
                .is_some_and(|k| k.len() == 44)
        );
        let err = reg.create("d1", DeviceSpec::default()).expect_err("dup");
        assert_eq!(err.code, ErrorCode::DeviceAlreadyExists);
        let err = reg
            .create("bad/id", DeviceSpec::default())
            .expect_err("bad id");
        assert_eq!(err.code, ErrorCode::ArgumentInvalid);
        let spec = DeviceSpec {
            primary_key: Some("c2hvcnQ=".into()),
            ..DeviceSpec::default()
        };
        assert!(reg.create("d2", spec).is_err(), "a 5-byte key is refused");
    }

    #[test]
    fn etags_guard_twin_writes() {
        let reg = registry();
        reg.create("d1", DeviceSpec::default()).expect("create");
        let twin = reg.twin("d1").expect("twin");
        let etag = twin["etag"].as_str().expect("etag").to_owned();
        let update = TwinUpdate {
            tags: Some(json!({"env": "prod"})),
            desired: Some(json!({"fw": "2.0"})),
        };
        let mut notified = None;
        let quoted = format!("\"{etag}\"");
        let after = reg
            .update_twin("d1", update.clone(), Some(&quoted), false, |v, body| {
                notified = Some((v, body.clone()));
            })
            .expect("patch");
        assert_eq!(after["tags"]["env"], "prod");
        assert_eq!(after["properties"]["desired"]["$version"], 2);
        assert_eq!(notified, Some((2, json!({"fw": "2.0", "$version": 2}))));
        // The old ETag no longer matches.
        let err = reg
            .update_twin("d1", update.clone(), Some(&etag), false, |_, _| {})
            .expect_err("stale");
        assert_eq!(err.code, ErrorCode::PreconditionFailed);
        reg.update_twin("d1", update, Some("*"), false, |_, _| {})
            .expect("star");
    }

    #[test]
    fn replace_notifies_with_a_diff() {
        let reg = registry();
        reg.create("d1", DeviceSpec::default()).expect("create");
        let patch = TwinUpdate {
            tags: None,
            desired: Some(json!({"a": 1, "b": {"c": 1, "d": 2}})),
        };
        reg.update_twin("d1", patch, None, false, |_, _| {})
            .expect("patch");
        let mut body = None;
        let replace = TwinUpdate {
            tags: Some(json!({"t": 1})),
            desired: Some(json!({"b": {"c": 1}, "e": true})),
        };
        let twin = reg
            .update_twin("d1", replace, None, true, |_, b| body = Some(b.clone()))
            .expect("replace");
        assert_eq!(
            body,
            Some(json!({"a": null, "b": {"d": null}, "e": true, "$version": 3}))
        );
        assert_eq!(twin["tags"], json!({"t": 1}));
        assert_eq!(twin["properties"]["desired"]["b"], json!({"c": 1}));
    }

    #[test]
    fn limits_are_enforced_and_nothing_is_half_applied() {
        let reg = registry();
        reg.create("d1", DeviceSpec::default()).expect("create");
        let big = "x".repeat(4000);
        let mut patch = Map::new();
        for i in 0..9 {
            patch.insert(format!("k{i}"), json!(big));
        }
        let err = reg
            .report("d1", &Value::Object(patch))
            .expect_err("too large");
        assert_eq!(err.code, ErrorCode::ArgumentInvalid);
        assert!(err.message.contains("exceeds"), "{}", err.message);
        let err = reg
            .report("d1", &json!({"bad key": 1}))
            .expect_err("bad key");
        assert!(err.message.contains("bad key"), "{}", err.message);
        assert_eq!(
            reg.twin_properties("d1").expect("twin")["reported"]["$version"],
            1
        );
        let v = reg.report("d1", &json!({"ok": 1})).expect("ok");
        assert_eq!(v, 2);
    }

    #[test]
    fn state_survives_reload() {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Storage::Dir(dir.path().to_owned());
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        {
            let store = Arc::new(Store::open(&storage).expect("store"));
            let reg = Registry::load(store.clone(), clock.clone()).expect("load");
            reg.create("d1", DeviceSpec::default()).expect("create");
            reg.report("d1", &json!({"x": 1})).expect("report");
            store.flush_blocking().expect("flush");
        }
        let store = Arc::new(Store::open(&storage).expect("store"));
        let reg = Registry::load(store, clock).expect("load");
        let twin = reg.twin("d1").expect("twin");
        assert_eq!(twin["properties"]["reported"]["x"], 1);
        assert_eq!(twin["properties"]["reported"]["$version"], 2);
    }

    #[test]
    fn etag_forms() {
        assert!(check_etag(None, "abc").is_ok());
        assert!(check_etag(Some("\"abc\""), "abc").is_ok());
        assert!(check_etag(Some("abc"), "abc").is_ok());
        assert!(check_etag(Some("\"*\""), "abc").is_ok());
        assert!(check_etag(Some("abd"), "abc").is_err());
        assert_eq!(twin_etag(7), "AAAAAAAAAAc=");
    }
}
