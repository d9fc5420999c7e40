//! Time zones: an IANA name (`"Europe/Amsterdam"`) or `"device"`, the zone the agent reports.

use std::fmt;
use std::str::FromStr;

use chrono_tz::{TZ_VARIANTS, Tz};

use crate::suggest;

/// The literal that means "the zone the device reports".
pub const DEVICE_ZONE: &str = "device";

/// Where a policy's windows are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZoneSpec {
    /// In the zone each device reports (`reported.maintenance.timezone`).
    Device,
    /// In one fixed IANA zone for every device.
    Named(Tz),
}

impl ZoneSpec {
    /// The zone to compute windows in: the fixed zone, or the device's own for [`ZoneSpec::Device`]
    /// (`None` when the device has not reported one yet).
    pub fn resolve(self, device_zone: Option<Tz>) -> Option<Tz> {
        match self {
            ZoneSpec::Device => device_zone,
            ZoneSpec::Named(tz) => Some(tz),
        }
    }

    /// The name as written in policies and twins: `"device"` or the IANA name.
    pub fn name(self) -> &'static str {
        match self {
            ZoneSpec::Device => DEVICE_ZONE,
            ZoneSpec::Named(tz) => tz.name(),
        }
    }
}

impl fmt::Display for ZoneSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ZoneSpec {
    type Err = ZoneError;

    /// `"device"` or an IANA zone name (exact spelling, as IANA writes it).
    fn from_str(s: &str) -> Result<Self, ZoneError> {
        if s == DEVICE_ZONE {
            Ok(ZoneSpec::Device)
        } else {
            parse_zone(s).map(ZoneSpec::Named)
        }
    }
}

/// An unknown zone name, with the nearest valid names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown zone \"{input}\"{}", describe_suggestions(.suggestions))]
pub struct ZoneError {
    /// What was written.
    pub input: String,
    /// The nearest valid IANA names, best first (may be empty).
    pub suggestions: Vec<&'static str>,
}

fn describe_suggestions(suggestions: &[&str]) -> String {
    if suggestions.is_empty() {
        " (expected an IANA zone such as \"Europe/Amsterdam\" or \"America/New_York\", or \"device\")"
            .to_owned()
    } else {
        suggest::did_you_mean(suggestions)
    }
}

/// Parses an IANA zone name (`"Europe/Amsterdam"`, `"UTC"`); an unknown name gets suggestions.
pub fn parse_zone(name: &str) -> Result<Tz, ZoneError> {
    name.parse::<Tz>().map_err(|_| ZoneError {
        input: name.to_owned(),
        suggestions: suggest_zones(name),
    })
}

/// The valid zone names nearest to `input`: a case-insensitive exact match first, then names
/// within a small edit distance, then (for a bare city such as `"Amsterdam"`) zones ending in it.
pub fn suggest_zones(input: &str) -> Vec<&'static str> {
    const LIMIT: usize = 3;
    let names = || TZ_VARIANTS.iter().map(|tz| tz.name());
    if let Some(exact) = names().find(|n| n.eq_ignore_ascii_case(input)) {
        return vec![exact];
    }
    let mut found = suggest::nearest(input, names(), LIMIT);
    if found.is_empty() && !input.contains('/') {
        let needle = input.to_lowercase().replace(' ', "_");
        let cities = names().filter_map(|n| n.rsplit_once('/').map(|(_, city)| (n, city)));
        let mut by_city: Vec<(usize, &'static str)> = cities
            .filter_map(|(name, city)| {
                let d = strsim::levenshtein(&needle, &city.to_lowercase());
                (d <= (needle.len() / 4).max(1)).then_some((d, name))
            })
            .collect();
        by_city.sort();
        found = by_city.into_iter().take(LIMIT).map(|(_, n)| n).collect();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_and_iana_names() {
        assert_eq!("device".parse::<ZoneSpec>(), Ok(ZoneSpec::Device));
        assert_eq!(
            "Europe/Amsterdam".parse::<ZoneSpec>(),
            Ok(ZoneSpec::Named(chrono_tz::Europe::Amsterdam))
        );
        assert_eq!(
            "UTC".parse::<ZoneSpec>(),
            Ok(ZoneSpec::Named(chrono_tz::UTC))
        );
    }

    #[test]
    fn unknown_zone_suggests_nearest() {
        let err = "Europe/Amsterdan".parse::<ZoneSpec>().unwrap_err();
        assert_eq!(err.suggestions.first(), Some(&"Europe/Amsterdam"));
        assert_eq!(
            err.to_string(),
            "unknown zone \"Europe/Amsterdan\" (did you mean \"Europe/Amsterdam\"?)"
        );
        let err = "europe/amsterdam".parse::<ZoneSpec>().unwrap_err();
        assert_eq!(err.suggestions, vec!["Europe/Amsterdam"]);
        let err = "Amsterdam".parse::<ZoneSpec>().unwrap_err();
        assert_eq!(err.suggestions, vec!["Europe/Amsterdam"]);
        let err = "America/New_Yrok".parse::<ZoneSpec>().unwrap_err();
        assert_eq!(err.suggestions.first(), Some(&"America/New_York"));
    }

    #[test]
    fn hopeless_zone_explains_the_format() {
        let err = "xyzzy-plugh-42".parse::<ZoneSpec>().unwrap_err();
        assert!(err.suggestions.is_empty());
        assert!(err.to_string().contains("expected an IANA zone"), "{err}");
    }

    #[test]
    fn resolve_uses_device_zone_only_for_device() {
        let ams = chrono_tz::Europe::Amsterdam;
        let ny = chrono_tz::America::New_York;
        assert_eq!(ZoneSpec::Device.resolve(Some(ams)), Some(ams));
        assert_eq!(ZoneSpec::Device.resolve(None), None);
        assert_eq!(ZoneSpec::Named(ny).resolve(Some(ams)), Some(ny));
    }
}
