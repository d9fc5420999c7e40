//! A validated policy and its parts: reboot settings, rollout limits, the failure budget, the
//! revision.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use casement_iothub::query::Condition;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::window::WindowSpec;

/// Priorities a policy may have; higher wins when several policies target one device.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;
/// The priority of a policy that does not set one.
pub const DEFAULT_PRIORITY: i32 = 0;
/// The longest policy name.
pub const MAX_NAME_LEN: usize = 63;
/// `responseTimeoutInSeconds` bounds of an IoT Hub direct method.
pub const METHOD_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 5..=300;

/// Checks a policy name: 1–63 characters of `a-z`, `0-9` and `-`, not starting or ending with
/// `-` (it becomes part of twin values and journal keys).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.chars().count()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        let hint = suggest_name(name)
            .map(|s| format!(" (try \"{s}\")"))
            .unwrap_or_default();
        return Err(format!(
            "invalid character {bad:?} in name \"{name}\": use a-z, 0-9 and -{hint}"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("name \"{name}\" must not start or end with '-'"));
    }
    Ok(())
}

/// A valid name close to `name`: lower case, every run of other characters one `-`, no `-` at
/// either end, at most [`MAX_NAME_LEN`] long; `None` when nothing of it is left.
fn suggest_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(MAX_NAME_LEN);
    let out = out.trim_end_matches('-');
    (!out.is_empty()).then(|| out.to_owned())
}

/// How a reboot is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RebootSettings {
    /// Never start a reboot with less than this left in the window. Default 5 minutes.
    pub expected_duration: Duration,
    /// `responseTimeoutInSeconds` of the `reboot` direct method, 5–300 s. Default 30 seconds.
    pub method_timeout: Duration,
}

impl Default for RebootSettings {
    fn default() -> Self {
        RebootSettings {
            expected_duration: Duration::from_secs(5 * 60),
            method_timeout: Duration::from_secs(30),
        }
    }
}

/// How fast a policy's window is rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rollout {
    /// Devices rebooting at once under this policy, at least 1. Default 10.
    pub max_concurrent: u32,
    /// `reboot` invocations per minute, at least 1. Default 60.
    pub max_per_minute: u32,
    /// Pause the policy's window once failures exceed this. Default 10%.
    pub max_failures: MaxFailures,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            max_concurrent: 10,
            max_per_minute: 60,
            max_failures: MaxFailures::Percent(1000),
        }
    }
}

/// The failure budget of one window occurrence: a count, or a percentage of the devices targeted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaxFailures {
    /// At most this many failed reboots.
    Count(u32),
    /// At most this share of the targeted devices, in hundredths of a percent (`550` = 5.5%).
    Percent(u32),
}

impl MaxFailures {
    /// How many failures are tolerated among `targeted` devices (rounded down).
    pub fn budget(self, targeted: usize) -> usize {
        match self {
            MaxFailures::Count(n) => n as usize,
            MaxFailures::Percent(hundredths) => {
                let scaled = (targeted as u128) * u128::from(hundredths) / 10_000;
                usize::try_from(scaled).unwrap_or(usize::MAX)
            }
        }
    }

    /// Whether `failures` among `targeted` devices exceed the budget (the policy pauses).
    pub fn exceeded(self, failures: usize, targeted: usize) -> bool {
        failures > self.budget(targeted)
    }
}

impl fmt::Display for MaxFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MaxFailures::Count(n) => write!(f, "{n}"),
            MaxFailures::Percent(h) => {
                let (whole, frac) = (h / 100, h % 100);
                match frac {
                    0 => write!(f, "{whole}%"),
                    f2 if f2 % 10 == 0 => write!(f, "{whole}.{}%", f2 / 10),
                    f2 => write!(f, "{whole}.{f2:02}%"),
                }
            }
        }
    }
}

impl FromStr for MaxFailures {
    type Err = String;

    /// `"5"` (a count) or `"5%"`, `"2.5%"` (a percentage, 0–100, at most two decimals).
    fn from_str(s: &str) -> Result<Self, String> {
        const HINT: &str = "write a count such as \"5\" or a percentage such as \"5%\"";
        if let Some(number) = s.strip_suffix('%') {
            let (whole, frac) = match number.split_once('.') {
                Some((whole, frac)) => (whole, Some(frac)),
                None => (number, None),
            };
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            if !digits(whole) || !frac.is_none_or(digits) {
                return Err(format!("\"{s}\" is not a percentage; {HINT}"));
            }
            let frac = frac.unwrap_or("");
            if frac.len() > 2 {
                return Err(format!("\"{s}\": at most two decimals in a percentage"));
            }
            let whole: u32 = whole
                .parse()
                .map_err(|_| format!("\"{s}\" is more than 100%"))?;
            let frac: u32 = format!("{frac:0<2}").parse().unwrap_or(0);
            let hundredths = whole.saturating_mul(100).saturating_add(frac);
            if hundredths > 10_000 {
                return Err(format!("\"{s}\" is more than 100%"));
            }
            Ok(MaxFailures::Percent(hundredths))
        } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse()
                .map(MaxFailures::Count)
                .map_err(|_| format!("\"{s}\" is too large"))
        } else {
            Err(format!(
                "\"{s}\" is neither a count nor a percentage; {HINT}"
            ))
        }
    }
}

/// A policy revision: the first 8 hex characters of the SHA-256 of the normalised policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Revision(String);

impl Revision {
    /// Hex characters kept from the hash.
    pub const LEN: usize = 8;

    /// A placeholder until [`Policy::compute_revision`] fills it in.
    pub(crate) fn pending() -> Self {
        Revision(String::new())
    }

    fn of(canonical: &[u8]) -> Self {
        let digest = Sha256::digest(canonical);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Revision(hex[..Self::LEN].to_owned())
    }

    /// The revision as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A policy file, validated. Built by [`crate::parse_policy`] / [`crate::load`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) priority: i32,
    pub(crate) target: Condition,
    pub(crate) target_text: String,
    pub(crate) window: WindowSpec,
    pub(crate) reboot: RebootSettings,
    pub(crate) rollout: Rollout,
    pub(crate) file: PathBuf,
    pub(crate) name_position: (usize, usize),
    pub(crate) revision: Revision,
}

impl Policy {
    /// The unique name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Free text for humans; empty when not given.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Higher wins when policies overlap on a device (default 0, range -1000..=1000).
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// The parsed target condition (an IoT Hub query `WHERE` condition).
    pub fn target(&self) -> &Condition {
        &self.target
    }

    /// The target as written in the file.
    pub fn target_text(&self) -> &str {
        &self.target_text
    }

    /// The query that lists the devices this policy targets:
    /// `SELECT * FROM devices WHERE <target>` (canonical form of the condition).
    pub fn target_query(&self) -> String {
        format!("SELECT * FROM devices WHERE {}", self.target)
    }

    /// The window.
    pub fn window(&self) -> &WindowSpec {
        &self.window
    }

    /// Reboot settings.
    pub fn reboot(&self) -> &RebootSettings {
        &self.reboot
    }

    /// Rollout limits.
    pub fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    /// The file the policy came from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The revision (content hash of the normalised policy).
    pub fn revision(&self) -> &Revision {
        &self.revision
    }

    /// Computes the revision from the fields that change behaviour, in canonical form:
    /// everything but the description and the file's formatting, comments and key order.
    pub(crate) fn compute_revision(&self) -> Revision {
        #[derive(Serialize)]
        struct Canonical<'a> {
            format: u32,
            name: &'a str,
            priority: i32,
            target: String,
            schedule: String,
            duration_seconds: u64,
            timezone: &'a str,
            blackout: Vec<String>,
            expected_duration_seconds: u64,
            method_timeout_seconds: u64,
            max_concurrent: u32,
            max_per_minute: u32,
            max_failures: String,
        }
        let canonical = Canonical {
            format: 1,
            name: &self.name,
            priority: self.priority,
            target: self.target.to_string(),
            schedule: self.window.schedule().canonical(),
            duration_seconds: self.window.duration().as_secs(),
            timezone: self.window.timezone().name(),
            blackout: self
                .window
                .blackout()
                .iter()
                .map(|d| d.format("%Y-%m-%d").to_string())
                .collect(),
            expected_duration_seconds: self.reboot.expected_duration.as_secs(),
            method_timeout_seconds: self.reboot.method_timeout.as_secs(),
            max_concurrent: self.rollout.max_concurrent,
            max_per_minute: self.rollout.max_per_minute,
            max_failures: self.rollout.max_failures.to_string(),
        };
        // Serializing a struct of strings and integers cannot fail.
        let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
        Revision::of(&bytes)
    }
}

/// All policies of a set of files, valid together (names unique).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub(crate) policies: Vec<Policy>,
}

impl PolicySet {
    /// The policies, in file order (directories expanded and sorted).
    pub fn iter(&self) -> std::slice::Iter<'_, Policy> {
        self.policies.iter()
    }

    /// The policy with this name.
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// How many policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies, by value.
    pub fn into_vec(self) -> Vec<Policy> {
        self.policies
    }
}

impl<'a> IntoIterator for &'a PolicySet {
    type Item = &'a Policy;
    type IntoIter = std::slice::Iter<'a, Policy>;

    fn into_iter(self) -> Self::IntoIter {
        self.policies.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "store-gateways-weekly", "x1", "0"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        assert!(validate_name("").is_err());
        assert!(validate_name("-a").unwrap_err().contains("start or end"));
        assert!(validate_name("a-").unwrap_err().contains("start or end"));
        assert!(
            validate_name("Store_Gateways")
                .unwrap_err()
                .contains("try \"store-gateways\"")
        );
        assert!(validate_name(&"a".repeat(63)).is_ok());
        assert!(
            validate_name(&"a".repeat(64))
                .unwrap_err()
                .contains("at most 63")
        );
        assert!(validate_name("café").is_err());
    }

    #[test]
    fn the_suggested_name_is_itself_valid() {
        for (bad, suggested) in [
            ("../../etc/passwd", Some("etc-passwd")),
            ("Store Gateways (EU)", Some("store-gateways-eu")),
            ("-_x_-", Some("x")),
            ("café-night", Some("caf-night")),
            ("///", None),
        ] {
            let message = validate_name(bad).unwrap_err();
            match suggested {
                Some(name) => {
                    assert!(message.contains(&format!("(try \"{name}\")")), "{message}");
                    assert_eq!(validate_name(name), Ok(()));
                }
                None => assert!(!message.contains("try"), "{message}"),
            }
        }
        let long = format!("{}.x", "a".repeat(62));
        let message = validate_name(&long).unwrap_err();
        assert!(message.contains("at most 63"), "{message}");
    }

    #[test]
    fn max_failures_parse_and_print() {
        assert_eq!("5".parse(), Ok(MaxFailures::Count(5)));
        assert_eq!("0".parse(), Ok(MaxFailures::Count(0)));
        assert_eq!("5%".parse(), Ok(MaxFailures::Percent(500)));
        assert_eq!("2.5%".parse(), Ok(MaxFailures::Percent(250)));
        assert_eq!("0.25%".parse(), Ok(MaxFailures::Percent(25)));
        assert_eq!("100%".parse(), Ok(MaxFailures::Percent(10_000)));
        for bad in [
            "101%",
            "5.555%",
            "-1",
            "five",
            "%",
            "5 %",
            "",
            "1.%",
            "99999999999999%",
        ] {
            assert!(bad.parse::<MaxFailures>().is_err(), "{bad}");
        }
        for text in ["5", "5%", "2.5%", "0.25%", "100%"] {
            assert_eq!(text.parse::<MaxFailures>().unwrap().to_string(), text);
        }
    }

    #[test]
    fn failure_budget() {
        assert_eq!(MaxFailures::Count(3).budget(1000), 3);
        assert_eq!(MaxFailures::Percent(500).budget(200), 10);
        assert_eq!(MaxFailures::Percent(500).budget(19), 0);
        assert!(!MaxFailures::Percent(500).exceeded(10, 200));
        assert!(MaxFailures::Percent(500).exceeded(11, 200));
        assert!(MaxFailures::Count(0).exceeded(1, 5));
    }
}
