//! Policy files: TOML parsed with spans, validated field by field, every problem reported as a
//! [`Diagnostic`] with file, line and column; and loading a set of files all-or-nothing.
//!
//! # Format and defaults
//! ```toml
//! [policy]
//! name        = "store-gateways-weekly"  # required; a-z 0-9 -, 1-63 chars, unique in the set
//! description = "…"                      # optional, default ""
//! priority    = 10                       # optional, default 0, -1000..=1000; higher wins
//! target      = "tags.role = 'gateway'"  # required; an IoT Hub query condition
//!
//! [window]
//! schedule = "0 2 * * SUN"               # required; cron, 5 fields (6 with seconds first)
//! duration = "2h"                        # required; > 0 and <= the shortest gap between starts
//! timezone = "device"                    # required; an IANA zone, or "device"
//! blackout = ["2026-12-24"]              # optional, default []; local dates (strings or TOML dates)
//!
//! [reboot]                               # optional section
//! expected_duration = "5m"               # default 5m; > 0 and < window.duration
//! method_timeout    = "30s"              # default 30s; 5s..=300s (IoT Hub's limit)
//!
//! [rollout]                              # optional section
//! max_concurrent = 10                    # default 10; >= 1
//! max_per_minute = 60                    # default 60; >= 1
//! max_failures   = "10%"                 # default "10%"; a count ("5" or 5) or a percentage ("5%")
//! ```
//! Unknown sections and keys are errors, with the nearest known name suggested.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::duration::{format_duration, parse_duration};
use crate::policy::{
    DEFAULT_PRIORITY, METHOD_TIMEOUT_RANGE, MaxFailures, PRIORITY_RANGE, Policy, PolicySet,
    RebootSettings, Revision, Rollout, validate_name,
};
use crate::schedule::Schedule;
use crate::suggest;
use crate::window::{WindowSpec, WindowSpecError};
use crate::zone::ZoneSpec;

/// The largest policy file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Upper bound of `max_concurrent` and `max_per_minute` (a typo guard, not a real limit).
pub const MAX_RATE: i64 = 1_000_000;

/// One problem in a policy file, displayed as `file:line:column: field: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file, as given (relative paths stay relative).
    pub file: PathBuf,
    /// 1-based line; 0 when the problem concerns the whole file (it cannot be read).
    pub line: usize,
    /// 1-based column, in characters; 0 with `line` 0.
    pub column: usize,
    /// The field, `section.key` (`window.timezone`); empty for syntax errors and whole-file problems.
    pub field: String,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// The sections of a policy file and their keys.
const SECTIONS: [(&str, &[&str]); 4] = [
    ("policy", &["name", "description", "priority", "target"]),
    ("window", &["schedule", "duration", "timezone", "blackout"]),
    ("reboot", &["expected_duration", "method_timeout"]),
    (
        "rollout",
        &["max_concurrent", "max_per_minute", "max_failures"],
    ),
];

fn section_keys(section: &str) -> &'static [&'static str] {
    SECTIONS
        .iter()
        .find(|(name, _)| *name == section)
        .map(|(_, keys)| *keys)
        .unwrap_or(&[])
}

/// Parses and validates one policy file's text. `file` is only used in diagnostics.
pub fn parse_policy(file: &Path, source: &str) -> Result<Policy, Vec<Diagnostic>> {
    let mut checker = Checker {
        file,
        source,
        diagnostics: Vec::new(),
        misspelt: HashSet::new(),
    };
    let policy = checker.policy();
    let mut diagnostics = checker.diagnostics;
    match policy {
        Some(policy) if diagnostics.is_empty() => Ok(policy),
        _ => {
            diagnostics.sort_by_key(|d| (d.line, d.column));
            Err(diagnostics)
        }
    }
}

/// Reads and validates one policy file.
pub fn load_file(path: &Path) -> Result<Policy, Vec<Diagnostic>> {
    let whole_file = |message: String| {
        vec![Diagnostic {
            file: path.to_owned(),
            line: 0,
            column: 0,
            field: String::new(),
            message,
        }]
    };
    let file = std::fs::File::open(path).map_err(|e| whole_file(format!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| whole_file(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(whole_file(format!(
            "file is larger than {MAX_FILE_BYTES} bytes; is this a policy file?"
        )));
    }
    let source = String::from_utf8(bytes).map_err(|e| {
        whole_file(format!(
            "not UTF-8 text (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse_policy(path, &source)
}

/// Loads a set of policy files and directories (each directory's `*.toml` files, sorted by name;
/// not recursive), all or nothing: either every policy is valid and names are unique, or every
/// problem in every file is returned.
pub fn load<I, P>(paths: I) -> Result<PolicySet, Vec<Diagnostic>>
where
    I: IntoIterator<Item = P>,
    P: AsRef<Path>,
{
    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    for path in paths {
        let path = path.as_ref();
        let whole = |message: String| Diagnostic {
            file: path.to_owned(),
            line: 0,
            column: 0,
            field: String::new(),
            message,
        };
        if path.is_dir() {
            match policy_files_in(path) {
                Ok(found) if found.is_empty() => {
                    diagnostics.push(whole("directory has no *.toml policy files".to_owned()));
                }
                Ok(found) => files.extend(found),
                Err(e) => diagnostics.push(whole(format!("cannot read directory: {e}"))),
            }
        } else {
            files.push(path.to_owned());
        }
    }
    let mut policies: Vec<Policy> = Vec::new();
    for file in files {
        let identity = std::fs::canonicalize(&file).unwrap_or_else(|_| file.clone());
        if !seen.insert(identity) {
            continue;
        }
        match load_file(&file) {
            Ok(policy) => policies.push(policy),
            Err(mut errors) => diagnostics.append(&mut errors),
        }
    }
    let mut first_by_name: HashMap<&str, &Policy> = HashMap::new();
    for policy in &policies {
        if let Some(first) = first_by_name.get(policy.name()) {
            let (line, column) = policy.name_position;
            let (first_line, first_column) = first.name_position;
            diagnostics.push(Diagnostic {
                file: policy.file.clone(),
                line,
                column,
                field: "policy.name".to_owned(),
                message: format!(
                    "duplicate policy name \"{}\": also defined at {}:{first_line}:{first_column}",
                    policy.name(),
                    first.file.display()
                ),
            });
        } else {
            first_by_name.insert(policy.name(), policy);
        }
    }
    if diagnostics.is_empty() {
        Ok(PolicySet { policies })
    } else {
        Err(diagnostics)
    }
}

fn policy_files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// A section that is present: its table and where its header is.
struct Section<'t, 'i> {
    name: &'static str,
    table: &'t DeTable<'i>,
    header: usize,
}

/// A string value and where it is.
struct Str<'t> {
    value: &'t str,
    span: Range<usize>,
}

struct Checker<'a> {
    file: &'a Path,
    source: &'a str,
    diagnostics: Vec<Diagnostic>,
    /// `section.key` fields an unknown key was reported as a misspelling of; their absence is
    /// not reported again as a missing key.
    misspelt: HashSet<String>,
}

impl Checker<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.source[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn error(&mut self, offset: usize, field: &str, message: impl Into<String>) {
        let (line, column) = self.position(offset);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Source offset of byte `inner` of a string value's decoded text: exact when the literal has
    /// no escapes, else the start of the literal.
    fn string_offset(&self, s: &Str<'_>, inner: usize) -> usize {
        let Some(raw) = self.source.get(s.span.clone()) else {
            return s.span.start;
        };
        let quote = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            3
        } else if raw.starts_with('"') || raw.starts_with('\'') {
            1
        } else {
            return s.span.start;
        };
        if raw.len() < 2 * quote {
            return s.span.start;
        }
        let Some(body) = raw.get(quote..raw.len() - quote) else {
            return s.span.start;
        };
        let inner = inner.min(s.value.len());
        if body == s.value {
            return s.span.start + quote + inner;
        }
        for newline in ["\n", "\r\n"] {
            if body.strip_prefix(newline) == Some(s.value) {
                return s.span.start + quote + newline.len() + inner;
            }
        }
        s.span.start
    }

    fn policy(&mut self) -> Option<Policy> {
        let root = match DeTable::parse(self.source) {
            Ok(root) => root,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                self.error(offset, "", format!("invalid TOML: {}", e.message()));
                return None;
            }
        };
        let sections = self.sections(root.get_ref());
        let get = |name: &str| sections.iter().find(|s| s.name == name);
        let policy_section = get("policy");
        let window_section = get("window");
        if policy_section.is_none() {
            self.error(
                0,
                "policy",
                "missing [policy] section (with at least name and target)",
            );
        }
        if window_section.is_none() {
            self.error(
                0,
                "window",
                "missing [window] section (with schedule, duration and timezone)",
            );
        }

        // [policy]
        let name = policy_section.and_then(|s| {
            let name =
                self.required_string(s, "name", "a name such as \"store-gateways-weekly\"")?;
            match validate_name(name.value) {
                Ok(()) => Some(name),
                Err(message) => {
                    self.error(name.span.start, "policy.name", message);
                    None
                }
            }
        });
        let description = policy_section
            .and_then(|s| self.string(s, "description"))
            .map_or_else(String::new, |d| d.value.to_owned());
        let priority = policy_section.map_or(Some(DEFAULT_PRIORITY), |s| {
            self.integer(s, "priority", PRIORITY_RANGE, "")
                .map(|p| p.map_or(DEFAULT_PRIORITY, |p| p as i32))
        });
        let target = policy_section.and_then(|s| {
            let text = self.required_string(
                s,
                "target",
                "an IoT Hub query condition such as \"tags.role = 'gateway'\"",
            )?;
            match casement_iothub::query::parse_condition(text.value) {
                Ok(condition) => Some((condition, text.value.to_owned())),
                Err(e) => {
                    let byte = text
                        .value
                        .char_indices()
                        .nth(e.column.saturating_sub(1))
                        .map_or(text.value.len(), |(i, _)| i);
                    let offset = self.string_offset(&text, byte);
                    self.error(
                        offset,
                        "policy.target",
                        format!("invalid condition: {}", e.message),
                    );
                    None
                }
            }
        });

        // [window]
        let schedule = window_section.and_then(|s| {
            let text =
                self.required_string(s, "schedule", "a cron schedule such as \"0 2 * * SUN\"")?;
            match Schedule::parse(text.value) {
                Ok(schedule) => Some(schedule),
                Err(e) => {
                    let offset = self.string_offset(&text, e.offset);
                    self.error(offset, "window.schedule", e.message);
                    None
                }
            }
        });
        let duration = window_section.and_then(|s| {
            let text = self.required_string(s, "duration", "a duration such as \"2h\"")?;
            let d = self.duration_value(&text, "window.duration")?;
            Some((d, text.span.start))
        });
        let timezone = window_section.and_then(|s| {
            let text = self.required_string(
                s,
                "timezone",
                "an IANA zone such as \"Europe/Amsterdam\", or \"device\"",
            )?;
            match text.value.parse::<ZoneSpec>() {
                Ok(zone) => Some(zone),
                Err(e) => {
                    self.error(text.span.start, "window.timezone", e.to_string());
                    None
                }
            }
        });
        let blackout = window_section.map_or(Some(BTreeSet::new()), |s| self.blackout(s));

        // [reboot]
        let reboot_section = get("reboot");
        let defaults = RebootSettings::default();
        let expected = reboot_section.map_or(Some((defaults.expected_duration, None)), |s| {
            match self.string(s, "expected_duration") {
                None if self.has_key(s, "expected_duration") => None,
                None => Some((defaults.expected_duration, None)),
                Some(text) => {
                    let d = self.duration_value(&text, "reboot.expected_duration")?;
                    Some((d, Some(text.span.start)))
                }
            }
        });
        let method_timeout = reboot_section.map_or(Some(defaults.method_timeout), |s| {
            match self.string(s, "method_timeout") {
                None if self.has_key(s, "method_timeout") => None,
                None => Some(defaults.method_timeout),
                Some(text) => {
                    let d = self.duration_value(&text, "reboot.method_timeout")?;
                    if METHOD_TIMEOUT_RANGE.contains(&d.as_secs()) && d.subsec_nanos() == 0 {
                        Some(d)
                    } else {
                        self.error(
                            text.span.start,
                            "reboot.method_timeout",
                            format!(
                                "{} is outside IoT Hub's direct-method timeout range, 5s to 5m",
                                text.value
                            ),
                        );
                        None
                    }
                }
            }
        });

        // [rollout]
        let rollout_defaults = Rollout::default();
        let rollout_section = get("rollout");
        let max_concurrent = rollout_section.map_or(Some(rollout_defaults.max_concurrent), |s| {
            self.integer(
                s,
                "max_concurrent",
                1..=MAX_RATE,
                " (devices rebooting at once)",
            )
            .map(|v| v.map_or(rollout_defaults.max_concurrent, |v| v as u32))
        });
        let max_per_minute = rollout_section.map_or(Some(rollout_defaults.max_per_minute), |s| {
            self.integer(
                s,
                "max_per_minute",
                1..=MAX_RATE,
                " (reboot invocations per minute)",
            )
            .map(|v| v.map_or(rollout_defaults.max_per_minute, |v| v as u32))
        });
        let max_failures = rollout_section.map_or(Some(rollout_defaults.max_failures), |s| {
            self.max_failures(s)
        });

        // Fields that depend on each other.
        let window = match (schedule, duration, timezone, blackout) {
            (Some(schedule), Some((duration, duration_at)), Some(zone), Some(blackout)) => {
                match WindowSpec::new(schedule, duration, zone, blackout) {
                    Ok(window) => Some(window),
                    Err(e) => {
                        let message = match e {
                            WindowSpecError::ZeroDuration => {
                                "duration must be positive (e.g. \"2h\")".to_owned()
                            }
                            other => other.to_string(),
                        };
                        self.error(duration_at, "window.duration", message);
                        None
                    }
                }
            }
            _ => None,
        };
        if let (Some(window), Some((expected, expected_at))) = (&window, expected)
            && expected >= window.duration()
        {
            let (offset, field, written) = match expected_at {
                Some(at) => (at, "reboot.expected_duration", ""),
                None => (
                    reboot_section.map_or(0, |s| s.header),
                    "reboot.expected_duration",
                    " (the default)",
                ),
            };
            self.error(
                offset,
                field,
                format!(
                    "expected_duration {}{written} must be shorter than window.duration {}, or no reboot could ever start",
                    format_duration(expected),
                    format_duration(window.duration())
                ),
            );
        }

        let name = name?;
        let (target, target_text) = target?;
        let mut policy = Policy {
            name: name.value.to_owned(),
            description,
            priority: priority?,
            target,
            target_text,
            window: window?,
            reboot: RebootSettings {
                expected_duration: expected?.0,
                method_timeout: method_timeout?,
            },
            rollout: Rollout {
                max_concurrent: max_concurrent?,
                max_per_minute: max_per_minute?,
                max_failures: max_failures?,
            },
            file: self.file.to_owned(),
            name_position: self.position(name.span.start),
            revision: Revision::pending(),
        };
        policy.revision = policy.compute_revision();
        Some(policy)
    }

    /// The known sections present, after reporting unknown and misplaced keys.
    fn sections<'t, 'i>(&mut self, root: &'t DeTable<'i>) -> Vec<Section<'t, 'i>> {
        let mut entries: Vec<_> = root.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut sections = Vec::new();
        for (key, value) in entries {
            let name: &str = key.get_ref();
            let at = key.span().start;
            let known = SECTIONS.iter().find(|(s, _)| *s == name).map(|(s, _)| *s);
            match (known, value.get_ref()) {
                (Some(section), DeValue::Table(table)) => {
                    self.unknown_keys(section, table);
                    sections.push(Section {
                        name: section,
                        table,
                        header: value.span().start,
                    });
                }
                (Some(section), other) => self.error(
                    at,
                    section,
                    format!(
                        "expected a [{section}] section, found {}",
                        article(other.type_str())
                    ),
                ),
                (None, DeValue::Table(_)) => {
                    let names = SECTIONS.iter().map(|(s, _)| *s);
                    let near = suggest::nearest(name, names, 2);
                    let hint = if near.is_empty() {
                        " (sections are [policy], [window], [reboot] and [rollout])".to_owned()
                    } else {
                        let bracketed: Vec<String> =
                            near.iter().map(|s| format!("[{s}]")).collect();
                        format!(" (did you mean {}?)", bracketed.join(" or "))
                    };
                    self.error(at, name, format!("unknown section [{name}]{hint}"));
                }
                (None, _) => {
                    let home = SECTIONS.iter().find(|(_, keys)| keys.contains(&name));
                    let message = match home {
                        Some((section, _)) => {
                            format!("\"{name}\" must be inside a section: put it under [{section}]")
                        }
                        None => format!(
                            "unknown key \"{name}\" outside any section (sections are [policy], [window], [reboot] and [rollout])"
                        ),
                    };
                    self.error(at, name, message);
                }
            }
        }
        sections
    }

    fn unknown_keys(&mut self, section: &str, table: &DeTable<'_>) {
        let known = section_keys(section);
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, _) in entries {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let near = suggest::nearest(name, known.iter().copied(), 2);
            if let [only] = near.as_slice() {
                self.misspelt.insert(format!("{section}.{only}"));
            }
            let elsewhere = SECTIONS
                .iter()
                .find(|(s, keys)| *s != section && keys.contains(&name))
                .map(|(s, _)| *s);
            let message = match (near.is_empty(), elsewhere) {
                (_, Some(other)) => {
                    format!("unknown key \"{name}\" in [{section}]; it belongs in [{other}]")
                }
                (false, None) => format!("unknown key{}", suggest::did_you_mean(&near)),
                (true, None) => {
                    format!("unknown key (keys of [{section}] are {})", known.join(", "))
                }
            };
            self.error(key.span().start, &format!("{section}.{name}"), message);
        }
    }

    fn has_key(&self, section: &Section<'_, '_>, key: &str) -> bool {
        section.table.get(key).is_some()
    }

    fn value<'t>(&self, section: &Section<'t, '_>, key: &str) -> Option<&'t Spanned<DeValue<'t>>> {
        section.table.get(key)
    }

    /// An optional string; a value of another type is reported and gives `None`.
    fn string<'t>(&mut self, section: &Section<'t, '_>, key: &str) -> Option<Str<'t>> {
        let value = self.value(section, key)?;
        match value.get_ref() {
            DeValue::String(s) => Some(Str {
                value: s.as_ref(),
                span: value.span(),
            }),
            other => {
                self.error(
                    value.span().start,
                    &format!("{}.{key}", section.name),
                    format!("expected a string, found {}", article(other.type_str())),
                );
                None
            }
        }
    }

    fn required_string<'t>(
        &mut self,
        section: &Section<'t, '_>,
        key: &str,
        what: &str,
    ) -> Option<Str<'t>> {
        if !self.has_key(section, key) {
            if self.misspelt.contains(&format!("{}.{key}", section.name)) {
                return None;
            }
            self.error(
                section.header,
                &format!("{}.{key}", section.name),
                format!("missing required key \"{key}\" ({what})"),
            );
            return None;
        }
        self.string(section, key)
    }

    /// An optional integer in `range`: `Some(None)` when absent, `None` when invalid.
    fn integer(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        what: &str,
    ) -> Option<Option<i64>> {
        let Some(value) = self.value(section, key) else {
            return Some(None);
        };
        let field = format!("{}.{key}", section.name);
        let at = value.span().start;
        match value.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) if range.contains(&n) => Some(Some(n)),
                _ => {
                    self.error(
                        at,
                        &field,
                        format!(
                            "{} is out of range: expected {} to {}{what}",
                            i,
                            range.start(),
                            range.end()
                        ),
                    );
                    None
                }
            },
            other => {
                self.error(
                    at,
                    &field,
                    format!("expected an integer, found {}", article(other.type_str())),
                );
                None
            }
        }
    }

    fn duration_value(&mut self, text: &Str<'_>, field: &str) -> Option<Duration> {
        match parse_duration(text.value) {
            Ok(d) if d.is_zero() => {
                self.error(
                    text.span.start,
                    field,
                    "duration must be positive (e.g. \"2h\")",
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                let offset = self.string_offset(text, e.offset());
                self.error(offset, field, e.to_string());
                None
            }
        }
    }

    fn blackout(&mut self, section: &Section<'_, '_>) -> Option<BTreeSet<NaiveDate>> {
        let Some(value) = self.value(section, "blackout") else {
            return Some(BTreeSet::new());
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.error(
                value.span().start,
                "window.blackout",
                format!(
                    "expected a list of dates such as [\"2026-12-24\"], found {}",
                    article(value.get_ref().type_str())
                ),
            );
            return None;
        };
        let mut dates = BTreeSet::new();
        let mut ok = true;
        for item in items.iter() {
            let at = item.span().start;
            let text = match item.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Datetime(dt) if dt.time.is_none() && dt.offset.is_none() => dt.to_string(),
                other => {
                    self.error(
                        at,
                        "window.blackout",
                        format!(
                            "expected a date such as \"2026-12-24\", found {}",
                            article(other.type_str())
                        ),
                    );
                    ok = false;
                    continue;
                }
            };
            match parse_date(&text) {
                Some(date) => {
                    dates.insert(date);
                }
                None => {
                    self.error(
                        at,
                        "window.blackout",
                        format!("\"{text}\" is not a date; write YYYY-MM-DD, e.g. \"2026-12-24\""),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(dates)
    }

    fn max_failures(&mut self, section: &Section<'_, '_>) -> Option<MaxFailures> {
        let Some(value) = self.value(section, "max_failures") else {
            return Some(Rollout::default().max_failures);
        };
        let at = value.span().start;
        let parsed = match value.get_ref() {
            DeValue::String(s) => s.parse::<MaxFailures>(),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u32::try_from(n).ok())
                .map(MaxFailures::Count)
                .ok_or_else(|| format!("{i} is not a count of failures (0 or more)")),
            other => Err(format!(
                "expected a count (5 or \"5\") or a percentage (\"5%\"), found {}",
                article(other.type_str())
            )),
        };
        match parsed {
            Ok(m) => Some(m),
            Err(message) => {
                self.error(at, "rollout.max_failures", message);
                None
            }
        }
    }
}

/// Parses a blackout date, strictly `YYYY-MM-DD`.
pub(crate) fn parse_date(text: &str) -> Option<NaiveDate> {
    let well_formed = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !well_formed {
        return None;
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

#[cfg(test)]
mod tests;
