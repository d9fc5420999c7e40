//! Twin documents: JSON merge patch, `$version` and `$metadata`, and IoT Hub's limits
//! (reference §2 "Versions", §3 "Twin JSON", §6).
//!
//! - [`apply_merge_patch`] is RFC 7386: objects merge recursively, `null` deletes, anything
//!   else replaces.
//! - [`validate_patch`] checks a patch against IoT Hub's rules (object at the top, key rules,
//!   depth 10, strings ≤ 4 KB, the integer range, no `$`-keys); [`validate_size`] checks a whole
//!   section against its size limit. Every violation names the JSON path, e.g.
//!   `properties.desired.maintenance.window`.
//! - [`TwinSection`] is a desired or reported section as the hub stores it: the properties,
//!   a `$version` that only increases, and `$metadata` (`$lastUpdated` per key, plus
//!   `$lastUpdatedVersion` in desired) kept up to date on every patch. A patch is all or
//!   nothing: when it is rejected the section is unchanged.
//! - [`TwinProperties`] holds both sections and renders the MQTT GET body.
//!
//! ```
//! use casement_iothub::twin::{SectionKind, TwinSection};
//! use serde_json::json;
//! let now = chrono::Utc::now();
//! let mut reported = TwinSection::new(SectionKind::Reported, now);
//! let version = reported.apply_patch(&json!({"iothubDM": {"reboot": {"status": "completed"}}}), now).unwrap();
//! assert_eq!(version, 2);
//! let err = reported.apply_patch(&json!({"bad key": 1}), now).unwrap_err();
//! assert_eq!(err.path(), "properties.reported");
//! assert_eq!(reported.version(), 2);
//! ```

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::error::ErrorCode;
use crate::time::format_timestamp;

/// Size limit of `properties.desired`, in bytes by the size rule of [`section_size`].
pub const MAX_DESIRED_BYTES: usize = 32 * 1024;
/// Size limit of `properties.reported`.
pub const MAX_REPORTED_BYTES: usize = 32 * 1024;
/// Size limit of `tags`.
pub const MAX_TAGS_BYTES: usize = 8 * 1024;
/// Maximum nesting of objects below a section's root (the root is level 0).
pub const MAX_DEPTH: usize = 10;
/// Maximum length of a key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 1024;
/// Maximum length of a string value, in UTF-8 bytes.
pub const MAX_STRING_BYTES: usize = 4 * 1024;
/// Smallest integer a twin may hold (−2^52).
pub const MIN_INTEGER: i64 = -4_503_599_627_370_496;
/// Largest integer a twin may hold (2^52 − 1).
pub const MAX_INTEGER: i64 = 4_503_599_627_370_495;

/// `$version`.
pub const VERSION_KEY: &str = "$version";
/// `$metadata`.
pub const METADATA_KEY: &str = "$metadata";
/// `$lastUpdated`.
pub const LAST_UPDATED_KEY: &str = "$lastUpdated";
/// `$lastUpdatedVersion` (desired only).
pub const LAST_UPDATED_VERSION_KEY: &str = "$lastUpdatedVersion";

/// Which part of a twin a document belongs to; decides the size limit and the error paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SectionKind {
    /// `tags` (service only, 8 KB).
    Tags,
    /// `properties.desired` (written by the service, 32 KB).
    Desired,
    /// `properties.reported` (written by the device, 32 KB).
    Reported,
}

impl SectionKind {
    /// The JSON path of the section in a twin: `tags`, `properties.desired`, `properties.reported`.
    pub fn path(self) -> &'static str {
        match self {
            SectionKind::Tags => "tags",
            SectionKind::Desired => "properties.desired",
            SectionKind::Reported => "properties.reported",
        }
    }

    /// The section's size limit in bytes.
    pub fn max_bytes(self) -> usize {
        match self {
            SectionKind::Tags => MAX_TAGS_BYTES,
            SectionKind::Desired => MAX_DESIRED_BYTES,
            SectionKind::Reported => MAX_REPORTED_BYTES,
        }
    }
}

/// A twin document or patch that breaks one of IoT Hub's rules. Each names the JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    /// The value at `path` must be a JSON object.
    #[error("{path}: must be a JSON object, found {found}")]
    NotAnObject {
        /// Where.
        path: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// A key breaks the key rules.
    #[error("{path}: invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The object holding the key.
        path: String,
        /// The key (truncated to 64 characters).
        key: String,
        /// Which rule.
        reason: String,
    },
    /// A `$`-key in a patch: `$version`, `$metadata` and the like are maintained by the hub.
    #[error("{path}: key {key:?} is reserved; keys starting with '$' are maintained by IoT Hub")]
    ReservedKey {
        /// The object holding the key.
        path: String,
        /// The key.
        key: String,
    },
    /// Objects nested deeper than [`MAX_DEPTH`].
    #[error("{path}: nested deeper than {max} levels of objects")]
    TooDeep {
        /// The first object too deep.
        path: String,
        /// The limit.
        max: usize,
    },
    /// A string longer than [`MAX_STRING_BYTES`].
    #[error("{path}: string of {len} bytes is longer than {max}")]
    StringTooLong {
        /// Where.
        path: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An integer outside [[`MIN_INTEGER`], [`MAX_INTEGER`]].
    #[error("{path}: integer {value} is outside [{MIN_INTEGER}, {MAX_INTEGER}]")]
    IntegerOutOfRange {
        /// Where.
        path: String,
        /// The value as written.
        value: String,
    },
    /// The section would exceed its size limit.
    #[error("{path}: size {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The section.
        path: String,
        /// Its size after the change.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl TwinError {
    /// The JSON path the error is about.
    pub fn path(&self) -> &str {
        match self {
            TwinError::NotAnObject { path, .. }
            | TwinError::InvalidKey { path, .. }
            | TwinError::ReservedKey { path, .. }
            | TwinError::TooDeep { path, .. }
            | TwinError::StringTooLong { path, .. }
            | TwinError::IntegerOutOfRange { path, .. }
            | TwinError::TooLarge { path, .. } => path,
        }
    }

    /// The IoT Hub error code to answer with (`ArgumentInvalid`, HTTP 400).
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::ArgumentInvalid
    }
}

/// The RFC 7386 JSON merge patch that turns `before` into `after` — the inverse of
/// [`apply_merge_patch`] — or `None` when they are equal. Keys only in `before` become `null`
/// (except system keys such as `$version` and `$metadata`, which a patch cannot delete),
/// objects are compared key by key, anything else is replaced whole.
///
/// ```
/// use casement_iothub::twin::{apply_merge_patch, merge_diff};
/// use serde_json::json;
/// let before = json!({"a": 1, "b": {"c": 2, "d": 3}, "$version": 4});
/// let after = json!({"b": {"c": 2, "d": 5}, "e": [1]});
/// let patch = merge_diff(&before, &after).unwrap();
/// assert_eq!(patch, json!({"a": null, "b": {"d": 5}, "e": [1]}));
/// let mut doc = before.clone();
/// apply_merge_patch(&mut doc, &patch);
/// assert_eq!(doc, json!({"b": {"c": 2, "d": 5}, "e": [1], "$version": 4}));
/// assert_eq!(merge_diff(&after, &after), None);
/// ```
pub fn merge_diff(before: &Value, after: &Value) -> Option<Value> {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut patch = serde_json::Map::new();
            for (key, new) in a {
                match b.get(key) {
                    Some(old) => {
                        if let Some(sub) = merge_diff(old, new) {
                            patch.insert(key.clone(), sub);
                        }
                    }
                    None => {
                        patch.insert(key.clone(), new.clone());
                    }
                }
            }
            for key in b.keys() {
                if !a.contains_key(key) && !key.starts_with('$') {
                    patch.insert(key.clone(), Value::Null);
                }
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ if before == after => None,
        _ => Some(after.clone()),
    }
}

/// Applies an RFC 7386 JSON merge patch to `target`: objects merge recursively, `null`
/// deletes a key, anything else (arrays included) replaces. A non-object patch replaces the
/// target.
pub fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        merge_into(target, patch);
    }
}

fn merge_into(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(_) => {
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                apply_merge_patch(slot, value);
            }
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// Checks a patch (or a document) for `kind` against IoT Hub's rules: a JSON object; keys
/// non-empty, ≤ 1 KB, without control characters, `.`, `$` or space (a leading `$` is reported
/// as reserved); objects nested at most [`MAX_DEPTH`] deep; strings ≤ 4 KB; integers in range.
/// `null` is allowed (it deletes). Size is checked separately, on the result
/// ([`validate_size`]).
pub fn validate_patch(kind: SectionKind, patch: &Value) -> Result<(), TwinError> {
    let Value::Object(map) = patch else {
        return Err(TwinError::NotAnObject {
            path: kind.path().to_owned(),
            found: type_name(patch),
        });
    };
    let mut path = kind.path().to_owned();
    validate_object(map, &mut path, 0)
}

fn validate_object(
    map: &Map<String, Value>,
    path: &mut String,
    depth: usize,
) -> Result<(), TwinError> {
    if depth > MAX_DEPTH {
        return Err(TwinError::TooDeep {
            path: path.clone(),
            max: MAX_DEPTH,
        });
    }
    for (key, value) in map {
        validate_key(key, path)?;
        let len = path.len();
        path.push('.');
        path.push_str(key);
        validate_value(value, path, depth)?;
        path.truncate(len);
    }
    Ok(())
}

fn validate_value(value: &Value, path: &mut String, depth: usize) -> Result<(), TwinError> {
    match value {
        Value::Object(map) => validate_object(map, path, depth + 1),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                validate_value(item, path, depth)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::String(s) if s.len() > MAX_STRING_BYTES => Err(TwinError::StringTooLong {
            path: path.clone(),
            len: s.len(),
            max: MAX_STRING_BYTES,
        }),
        Value::Number(n) => {
            let in_range = if let Some(i) = n.as_i64() {
                (MIN_INTEGER..=MAX_INTEGER).contains(&i)
            } else {
                // A u64 above i64::MAX is out of range; a float is not an integer.
                n.as_u64().is_none()
            };
            if in_range {
                Ok(())
            } else {
                Err(TwinError::IntegerOutOfRange {
                    path: path.clone(),
                    value: n.to_string(),
                })
            }
        }
        Value::String(_) | Value::Bool(_) | Value::Null => Ok(()),
    }
}

fn validate_key(key: &str, path: &str) -> Result<(), TwinError> {
    let invalid = |reason: String| TwinError::InvalidKey {
        path: path.to_owned(),
        key: key.chars().take(64).collect(),
        reason,
    };
    if key.is_empty() {
        return Err(invalid("keys cannot be empty".into()));
    }
    if key.starts_with('$') {
        return Err(TwinError::ReservedKey {
            path: path.to_owned(),
            key: key.chars().take(64).collect(),
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "{} bytes is longer than {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if let Some(c) = key
        .chars()
        .find(|&c| is_control(c) || c == '.' || c == '$' || c == ' ')
    {
        let what = if is_control(c) {
            format!("control character U+{:04X}", u32::from(c))
        } else {
            format!("{c:?}")
        };
        return Err(invalid(format!(
            "keys cannot contain {what} (nor '.', '$', space or control characters)"
        )));
    }
    Ok(())
}

/// C0, DEL and C1 control characters.
fn is_control(c: char) -> bool {
    c.is_control()
}

/// The size of a section by IoT Hub's rule: for every property, the UTF-8 length of its key
/// plus its value: strings by UTF-8 length without control characters, numbers 8, booleans 4,
/// `null` 0, objects and arrays the sum of their contents. Top-level `$`-keys (`$version`,
/// `$metadata`) do not count.
pub fn section_size(section: &Value) -> usize {
    match section {
        Value::Object(map) => map_size(map),
        other => value_size(other),
    }
}

fn value_size(value: &Value) -> usize {
    match value {
        Value::Null => 0,
        Value::Bool(_) => 4,
        Value::Number(_) => 8,
        Value::String(s) => string_size(s),
        Value::Array(items) => items.iter().map(value_size).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| string_size(k) + value_size(v))
            .sum(),
    }
}

fn string_size(s: &str) -> usize {
    s.chars()
        .filter(|&c| !is_control(c))
        .map(char::len_utf8)
        .sum()
}

/// Checks a whole section against its size limit ([`section_size`] ≤ `kind.max_bytes()`).
pub fn validate_size(kind: SectionKind, section: &Value) -> Result<(), TwinError> {
    let size = section_size(section);
    if size > kind.max_bytes() {
        return Err(TwinError::TooLarge {
            path: kind.path().to_owned(),
            size,
            max: kind.max_bytes(),
        });
    }
    Ok(())
}

/// Validates `patch`, merges it into `target` and checks the result's size; `target` is
/// changed only when everything passes. For documents without versions, such as `tags`.
pub fn apply_validated_patch(
    kind: SectionKind,
    target: &mut Map<String, Value>,
    patch: &Value,
) -> Result<(), TwinError> {
    let patch = as_patch_object(kind, patch)?;
    let mut merged = target.clone();
    merge_into(&mut merged, patch);
    check_size(kind, &merged)?;
    *target = merged;
    Ok(())
}

/// A copy of `section` without `$metadata` (keeps `$version`): what a device sees.
pub fn strip_metadata(section: &Value) -> Value {
    match section {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != METADATA_KEY)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The user properties of a section: every top-level key except `$version`, `$metadata` and
/// other `$`-keys.
pub fn user_properties(section: &Value) -> Map<String, Value> {
    match section {
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => Map::new(),
    }
}

/// Removes the top-level `$version` and `$metadata` of a document a client sent back
/// unchanged from a GET (e.g. a replace with the whole twin), so it passes [`validate_patch`].
pub fn strip_system_keys(document: &Value) -> Value {
    match document {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != METADATA_KEY && k.as_str() != VERSION_KEY)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The body of a desired-property notification: the patch as applied (with its `null`s) plus
/// `"$version": version` (Python requires it, reference §2).
pub fn desired_notification(patch: &Value, version: u64) -> Value {
    let mut body = match patch {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    body.insert(VERSION_KEY.to_owned(), json!(version));
    Value::Object(body)
}

/// A desired or reported section: properties, `$version` and `$metadata`.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinSection {
    kind: SectionKind,
    properties: Map<String, Value>,
    metadata: Map<String, Value>,
    version: u64,
}

impl TwinSection {
    /// An empty section at version 1, as a new device's twin has.
    pub fn new(kind: SectionKind, now: DateTime<Utc>) -> TwinSection {
        let mut section = TwinSection {
            kind,
            properties: Map::new(),
            metadata: Map::new(),
            version: 1,
        };
        let mut metadata = Map::new();
        section.stamp(&mut metadata, now);
        section.metadata = metadata;
        section
    }

    /// Reads a stored section (`{…, "$metadata": {…}, "$version": N}`). A missing `$version`
    /// is 1; missing `$metadata` is empty; other `$`-keys are dropped.
    pub fn from_json(kind: SectionKind, document: &Value) -> Result<TwinSection, TwinError> {
        let Value::Object(map) = document else {
            return Err(TwinError::NotAnObject {
                path: kind.path().to_owned(),
                found: type_name(document),
            });
        };
        let version = map.get(VERSION_KEY).and_then(Value::as_u64).unwrap_or(1);
        let metadata = match map.get(METADATA_KEY) {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        Ok(TwinSection {
            kind,
            properties: user_properties(document),
            metadata,
            version,
        })
    }

    /// `{…properties, "$metadata": {…}, "$version": N}`, as in a REST twin.
    pub fn to_json(&self) -> Value {
        let mut map = self.properties.clone();
        map.insert(
            METADATA_KEY.to_owned(),
            Value::Object(self.metadata.clone()),
        );
        map.insert(VERSION_KEY.to_owned(), json!(self.version));
        Value::Object(map)
    }

    /// `{…properties, "$version": N}`, as in the MQTT GET response.
    pub fn to_json_without_metadata(&self) -> Value {
        let mut map = self.properties.clone();
        map.insert(VERSION_KEY.to_owned(), json!(self.version));
        Value::Object(map)
    }

    /// Which section this is.
    pub fn kind(&self) -> SectionKind {
        self.kind
    }

    /// The user properties.
    pub fn properties(&self) -> &Map<String, Value> {
        &self.properties
    }

    /// The `$metadata` tree.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// `$version`.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Validates and applies a merge patch at `now`: bumps `$version`, updates `$metadata` for
    /// every key the patch touches (and their ancestors), drops metadata of deleted keys.
    /// Returns the new version. On error nothing changes.
    pub fn apply_patch(&mut self, patch: &Value, now: DateTime<Utc>) -> Result<u64, TwinError> {
        let patch = as_patch_object(self.kind, patch)?;
        let mut merged = self.properties.clone();
        merge_into(&mut merged, patch);
        check_size(self.kind, &merged)?;
        self.version = self.version.saturating_add(1);
        let mut metadata = std::mem::take(&mut self.metadata);
        self.update_metadata(&mut metadata, patch, &merged, now);
        self.metadata = metadata;
        self.properties = merged;
        Ok(self.version)
    }

    /// Replaces all properties with `document` (PUT semantics) at `now`. A top-level
    /// `$version`/`$metadata` in `document` is ignored; `null`s are dropped. Returns the new
    /// version. On error nothing changes.
    pub fn replace(&mut self, document: &Value, now: DateTime<Utc>) -> Result<u64, TwinError> {
        let document = strip_system_keys(document);
        let document = as_patch_object(self.kind, &document)?;
        let mut replaced = Map::new();
        merge_into(&mut replaced, document);
        check_size(self.kind, &replaced)?;
        self.version = self.version.saturating_add(1);
        let mut metadata = Map::new();
        self.update_metadata(&mut metadata, &replaced, &replaced, now);
        self.metadata = metadata;
        self.properties = replaced;
        Ok(self.version)
    }

    fn stamp(&self, node: &mut Map<String, Value>, now: DateTime<Utc>) {
        node.insert(LAST_UPDATED_KEY.to_owned(), json!(format_timestamp(now)));
        if self.kind == SectionKind::Desired {
            node.insert(LAST_UPDATED_VERSION_KEY.to_owned(), json!(self.version));
        }
    }

    fn update_metadata(
        &self,
        node: &mut Map<String, Value>,
        patch: &Map<String, Value>,
        after: &Map<String, Value>,
        now: DateTime<Utc>,
    ) {
        self.stamp(node, now);
        for (key, value) in patch {
            match (value, after.get(key)) {
                (Value::Null, _) | (_, None) => {
                    node.remove(key);
                }
                (Value::Object(sub_patch), Some(Value::Object(sub_after))) => {
                    let child = node
                        .entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !child.is_object() {
                        *child = Value::Object(Map::new());
                    }
                    if let Value::Object(child) = child {
                        // Forget metadata of keys that no longer exist (e.g. a leaf became
                        // an object, or the object was replaced by a larger patch).
                        child.retain(|k, _| k.starts_with('$') || sub_after.contains_key(k));
                        self.update_metadata(child, sub_patch, sub_after, now);
                    }
                }
                _ => {
                    let mut leaf = Map::new();
                    self.stamp(&mut leaf, now);
                    node.insert(key.clone(), Value::Object(leaf));
                }
            }
        }
    }
}

/// Both property sections of a twin.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinProperties {
    /// `properties.desired`.
    pub desired: TwinSection,
    /// `properties.reported`.
    pub reported: TwinSection,
}

impl TwinProperties {
    /// Empty sections at version 1.
    pub fn new(now: DateTime<Utc>) -> TwinProperties {
        TwinProperties {
            desired: TwinSection::new(SectionKind::Desired, now),
            reported: TwinSection::new(SectionKind::Reported, now),
        }
    }

    /// Reads `{"desired":{…},"reported":{…}}`; a missing section is empty at version 1.
    pub fn from_json(document: &Value, now: DateTime<Utc>) -> Result<TwinProperties, TwinError> {
        let section = |kind: SectionKind, key: &str| match document.get(key) {
            Some(value) => TwinSection::from_json(kind, value),
            None => Ok(TwinSection::new(kind, now)),
        };
        if !document.is_object() {
            return Err(TwinError::NotAnObject {
                path: "properties".into(),
                found: type_name(document),
            });
        }
        Ok(TwinProperties {
            desired: section(SectionKind::Desired, "desired")?,
            reported: section(SectionKind::Reported, "reported")?,
        })
    }

    /// `{"desired":{…,"$metadata":…,"$version":N},"reported":{…}}`, as in a REST twin.
    pub fn to_json(&self) -> Value {
        json!({ "desired": self.desired.to_json(), "reported": self.reported.to_json() })
    }

    /// The MQTT twin GET response body: `{"desired":{…,"$version":N},"reported":{…,"$version":M}}`.
    pub fn mqtt_get_body(&self) -> Value {
        json!({
            "desired": self.desired.to_json_without_metadata(),
            "reported": self.reported.to_json_without_metadata(),
        })
    }
}

/// Validates `patch` for `kind` and returns it as an object.
fn as_patch_object(kind: SectionKind, patch: &Value) -> Result<&Map<String, Value>, TwinError> {
    validate_patch(kind, patch)?;
    match patch {
        Value::Object(map) => Ok(map),
        other => Err(TwinError::NotAnObject {
            path: kind.path().to_owned(),
            found: type_name(other),
        }),
    }
}

fn check_size(kind: SectionKind, map: &Map<String, Value>) -> Result<(), TwinError> {
    let size = map_size(map);
    if size > kind.max_bytes() {
        return Err(TwinError::TooLarge {
            path: kind.path().to_owned(),
            size,
            max: kind.max_bytes(),
        });
    }
    Ok(())
}

fn map_size(map: &Map<String, Value>) -> usize {
    map.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| string_size(k) + value_size(v))
        .sum()
}

/// What kind of JSON value `value` is, for error messages: `null`, `a boolean`, `a number`,
/// `a string`, `an array`, `an object`.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_790_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn merge_patch_rfc7386_examples() {
        // The examples of RFC 7386 appendix A.
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, expected) in cases {
            let mut doc = target.clone();
            apply_merge_patch(&mut doc, &patch);
            assert_eq!(doc, expected, "{target} + {patch}");
        }
    }

    #[test]
    fn validation_names_the_path() {
        let kind = SectionKind::Desired;
        let err =
            validate_patch(kind, &json!({"maintenance": {"window": {"bad.key": 1}}})).unwrap_err();
        assert_eq!(err.path(), "properties.desired.maintenance.window");
        assert!(
            err.to_string()
                .starts_with("properties.desired.maintenance.window: invalid key \"bad.key\""),
            "{err}"
        );

        let err = validate_patch(SectionKind::Tags, &json!({"a": [1, {"b c": 1}]})).unwrap_err();
        assert_eq!(err.path(), "tags.a[1]");

        let err = validate_patch(kind, &json!({"$version": 4})).unwrap_err();
        assert!(matches!(err, TwinError::ReservedKey { .. }), "{err}");
        assert_eq!(err.path(), "properties.desired");

        for key in [
            "a$b",
            "a b",
            "",
            "tab\there",
            "nul\u{0}",
            "c1\u{85}",
            "del\u{7f}",
        ] {
            let err = validate_patch(SectionKind::Reported, &json!({ key: 1 })).unwrap_err();
            assert!(
                matches!(err, TwinError::InvalidKey { .. }),
                "{key:?}: {err}"
            );
        }
        let long_key = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(validate_patch(kind, &json!({ long_key: 1 })).is_err());
        let ok_key = "k".repeat(MAX_KEY_BYTES);
        assert!(validate_patch(kind, &json!({ ok_key: 1, "ünïcødé-ok_1": true })).is_ok());

        let err =
            validate_patch(kind, &json!({"s": "x".repeat(MAX_STRING_BYTES + 1)})).unwrap_err();
        assert_eq!(
            err,
            TwinError::StringTooLong {
                path: "properties.desired.s".into(),
                len: 4097,
                max: 4096
            }
        );
        assert!(validate_patch(kind, &json!({"s": "x".repeat(MAX_STRING_BYTES)})).is_ok());

        for (value, ok) in [
            (json!(MAX_INTEGER), true),
            (json!(MIN_INTEGER), true),
            (json!(MAX_INTEGER + 1), false),
            (json!(MIN_INTEGER - 1), false),
            (json!(u64::MAX), false),
            (json!(1.5e300), true),
        ] {
            let result = validate_patch(kind, &json!({"n": {"m": value}}));
            assert_eq!(result.is_ok(), ok, "{value}");
            if let Err(e) = result {
                assert_eq!(e.path(), "properties.desired.n.m");
            }
        }

        let err = validate_patch(kind, &json!([1])).unwrap_err();
        assert_eq!(
            err,
            TwinError::NotAnObject {
                path: "properties.desired".into(),
                found: "an array"
            }
        );
        assert!(validate_patch(kind, &json!({"gone": null})).is_ok());
    }

    fn nested(levels: usize) -> Value {
        let mut value = json!({"property": "value"});
        for i in (0..levels).rev() {
            value = json!({ format!("l{i}"): value });
        }
        value
    }

    #[test]
    fn depth_ten_is_the_documented_limit() {
        // The docs' example: tags.one…ten.property is valid (ten nested objects under the root).
        let ok = nested(10);
        assert!(validate_patch(SectionKind::Tags, &ok).is_ok());
        let too_deep = nested(11);
        let err = validate_patch(SectionKind::Tags, &too_deep).unwrap_err();
        assert!(matches!(err, TwinError::TooDeep { max: 10, .. }), "{err}");
        assert_eq!(err.path(), "tags.l0.l1.l2.l3.l4.l5.l6.l7.l8.l9.l10");
        // Objects inside arrays count too.
        let in_array = json!({"a": [nested(10)]});
        assert!(validate_patch(SectionKind::Tags, &in_array).is_err());
    }

    #[test]
    fn size_rule() {
        // key "k" (1) + number (8); key "b" (1) + bool (4); key "s" (1) + "héllo" (6 bytes);
        // key "o" (1) + {"x": null} (1 + 0); key "a" (1) + [1, "ab"] (8 + 2).
        let doc = json!({"k": 1, "b": true, "s": "héllo", "o": {"x": null}, "a": [1, "ab"],
                         "$version": 3, "$metadata": {"$lastUpdated": "…"}});
        assert_eq!(section_size(&doc), 9 + 5 + 7 + 2 + 11);
        // Control characters do not count.
        assert_eq!(section_size(&json!({"s": "a\u{1}b"})), 1 + 2);
    }

    #[test]
    fn section_size_limits() {
        let big = "x".repeat(4000);
        let mut tags = Map::new();
        // 2 keys of 4000 bytes + 2-byte keys is under 8 KB; a third goes over.
        apply_validated_patch(SectionKind::Tags, &mut tags, &json!({"t1": big, "t2": big}))
            .unwrap();
        let err =
            apply_validated_patch(SectionKind::Tags, &mut tags, &json!({"t3": big})).unwrap_err();
        assert_eq!(
            err,
            TwinError::TooLarge {
                path: "tags".into(),
                size: 12006,
                max: MAX_TAGS_BYTES
            }
        );
        assert_eq!(tags.len(), 2, "a rejected patch changes nothing");
        // Deleting makes room again.
        apply_validated_patch(
            SectionKind::Tags,
            &mut tags,
            &json!({"t1": null, "t3": big}),
        )
        .unwrap();

        let mut reported = TwinSection::new(SectionKind::Reported, t(0));
        for i in 0..8 {
            reported
                .apply_patch(&json!({ format!("k{i}"): big }), t(i))
                .unwrap();
        }
        let before = reported.clone();
        let err = reported.apply_patch(&json!({"k8": big}), t(9)).unwrap_err();
        assert!(
            matches!(
                err,
                TwinError::TooLarge {
                    max: MAX_REPORTED_BYTES,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            reported, before,
            "a rejected patch changes nothing, not even the version"
        );
    }

    #[test]
    fn versions_and_metadata() {
        let mut desired = TwinSection::new(SectionKind::Desired, t(0));
        assert_eq!(desired.version(), 1);
        assert_eq!(
            desired.to_json(),
            json!({"$metadata": {"$lastUpdated": "2026-09-21T14:13:20.000Z", "$lastUpdatedVersion": 1}, "$version": 1})
        );

        let v = desired
            .apply_patch(&json!({"maintenance": {"policy": "p", "window": {"durationSeconds": 7200}}, "fw": "1.0"}), t(10))
            .unwrap();
        assert_eq!(v, 2);
        let v = desired
            .apply_patch(
                &json!({"maintenance": {"window": {"durationSeconds": 3600}}}),
                t(20),
            )
            .unwrap();
        assert_eq!(v, 3);

        let ts = |s| crate::time::format_timestamp(t(s));
        assert_eq!(
            Value::Object(desired.metadata().clone()),
            json!({
                "$lastUpdated": ts(20), "$lastUpdatedVersion": 3,
                "maintenance": {
                    "$lastUpdated": ts(20), "$lastUpdatedVersion": 3,
                    "policy": {"$lastUpdated": ts(10), "$lastUpdatedVersion": 2},
                    "window": {
                        "$lastUpdated": ts(20), "$lastUpdatedVersion": 3,
                        "durationSeconds": {"$lastUpdated": ts(20), "$lastUpdatedVersion": 3}
                    }
                },
                "fw": {"$lastUpdated": ts(10), "$lastUpdatedVersion": 2}
            })
        );

        // Deleting drops the metadata; replacing an object by a leaf drops its children's.
        desired
            .apply_patch(&json!({"fw": null, "maintenance": {"window": 5}}), t(30))
            .unwrap();
        assert_eq!(desired.version(), 4);
        let meta = desired.metadata();
        assert!(!meta.contains_key("fw"));
        assert_eq!(
            meta["maintenance"]["window"],
            json!({"$lastUpdated": ts(30), "$lastUpdatedVersion": 4})
        );
        // A leaf that becomes an object gets metadata for its new children.
        desired
            .apply_patch(&json!({"maintenance": {"window": {"open": true}}}), t(40))
            .unwrap();
        assert_eq!(
            desired.metadata()["maintenance"]["window"]["open"],
            json!({"$lastUpdated": ts(40), "$lastUpdatedVersion": 5})
        );
        assert_eq!(
            Value::Object(desired.properties().clone()),
            json!({"maintenance": {"policy": "p", "window": {"open": true}}})
        );

        // Reported metadata has no $lastUpdatedVersion.
        let mut reported = TwinSection::new(SectionKind::Reported, t(0));
        reported.apply_patch(&json!({"k": 1}), t(5)).unwrap();
        assert_eq!(reported.metadata()["k"], json!({"$lastUpdated": ts(5)}));
        assert!(!reported.metadata().contains_key(LAST_UPDATED_VERSION_KEY));
    }

    #[test]
    fn rejected_patch_keeps_version() {
        let mut desired = TwinSection::new(SectionKind::Desired, t(0));
        assert!(desired.apply_patch(&json!({"$version": 9}), t(1)).is_err());
        assert!(desired.apply_patch(&json!("not an object"), t(1)).is_err());
        assert_eq!(desired.version(), 1);
        assert!(desired.properties().is_empty());
    }

    #[test]
    fn replace_and_round_trip_through_json() {
        let mut desired = TwinSection::new(SectionKind::Desired, t(0));
        desired
            .apply_patch(&json!({"a": 1, "b": {"c": 2}}), t(1))
            .unwrap();
        // A whole section sent back (with $metadata and $version) replaces the properties.
        let mut document = desired.to_json();
        document["b"] = json!(null);
        document["d"] = json!("x");
        let v = desired.replace(&document, t(2)).unwrap();
        assert_eq!(v, 3);
        assert_eq!(
            Value::Object(desired.properties().clone()),
            json!({"a": 1, "d": "x"})
        );
        assert!(!desired.metadata().contains_key("b"));
        assert_eq!(desired.metadata()["a"]["$lastUpdatedVersion"], json!(3));

        let stored = desired.to_json();
        let loaded = TwinSection::from_json(SectionKind::Desired, &stored).unwrap();
        assert_eq!(loaded, desired);
        assert!(TwinSection::from_json(SectionKind::Desired, &json!(3)).is_err());
        let bare = TwinSection::from_json(SectionKind::Reported, &json!({"x": 1})).unwrap();
        assert_eq!(bare.version(), 1);
    }

    #[test]
    fn views() {
        let mut props = TwinProperties::new(t(0));
        assert_eq!(
            props.mqtt_get_body(),
            json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
        );
        props
            .reported
            .apply_patch(&json!({"iothubDM": {"reboot": {"lastReboot": "x"}}}), t(1))
            .unwrap();
        assert_eq!(
            props.mqtt_get_body(),
            json!({"desired": {"$version": 1}, "reported": {"iothubDM": {"reboot": {"lastReboot": "x"}}, "$version": 2}})
        );
        let full = props.to_json();
        assert!(full["reported"]["$metadata"].is_object());
        assert_eq!(TwinProperties::from_json(&full, t(5)).unwrap(), props);
        assert_eq!(
            strip_metadata(&full["reported"]),
            props.mqtt_get_body()["reported"]
        );
        assert_eq!(
            Value::Object(user_properties(&full["reported"])),
            json!({"iothubDM": {"reboot": {"lastReboot": "x"}}})
        );
        assert_eq!(
            desired_notification(&json!({"fw": "2.0", "old": null}), 2),
            json!({"fw": "2.0", "old": null, "$version": 2})
        );
        assert_eq!(
            strip_system_keys(&json!({"a": 1, "$version": 2, "$metadata": {}})),
            json!({"a": 1})
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1000i64..1000).prop_map(|n| json!(n)),
            "[a-z]{0,5}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn merge_patch_is_idempotent(target in json_value(), patch in json_value()) {
            let mut once = target.clone();
            apply_merge_patch(&mut once, &patch);
            let mut twice = once.clone();
            apply_merge_patch(&mut twice, &patch);
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn patched_sections_stay_consistent(patches in proptest::collection::vec(json_value(), 1..6)) {
            let mut section = TwinSection::new(SectionKind::Desired, t(0));
            let mut expected = json!({});
            for (i, patch) in patches.iter().enumerate() {
                let before = section.version();
                match section.apply_patch(patch, t(i as i64 + 1)) {
                    Ok(v) => {
                        prop_assert_eq!(v, before + 1);
                        apply_merge_patch(&mut expected, patch);
                    }
                    Err(_) => prop_assert_eq!(section.version(), before),
                }
                prop_assert_eq!(&Value::Object(section.properties().clone()), &expected);
                // Every property key has metadata and no metadata outlives its key.
                for key in section.properties().keys() {
                    prop_assert!(section.metadata().contains_key(key));
                }
                for key in section.metadata().keys().filter(|k| !k.starts_with('$')) {
                    prop_assert!(section.properties().contains_key(key));
                }
            }
        }

        #[test]
        fn validation_never_panics(value in json_value()) {
            let _ = validate_patch(SectionKind::Desired, &value);
            let _ = section_size(&value);
            let _ = TwinSection::from_json(SectionKind::Reported, &value);
        }
    }
}
