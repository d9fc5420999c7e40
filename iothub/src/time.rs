//! The timestamp format IoT Hub writes: `YYYY-MM-DDTHH:MM:SS.mmmZ`, always UTC, always milliseconds.
//!
//! Twins (`$metadata.$lastUpdated`), devices (`lastActivityTime`) and the maintenance schema use
//! it. Formatting is strict (exactly that shape); parsing is lenient, because the real service
//! also writes `0001-01-01T00:00:00Z`, seven fractional digits, or no zone at all, and a client
//! must not fail on any of them.
//!
//! ```
//! use casement_iothub::time::{format_timestamp, parse_timestamp};
//! let t = parse_timestamp("2026-11-29T01:04:10.1234567Z").unwrap();
//! assert_eq!(format_timestamp(t), "2026-11-29T01:04:10.123Z");
//! ```

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Why a timestamp did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timestamp {input:?}: expected RFC 3339 such as \"2026-11-29T01:04:10.000Z\"")]
pub struct TimestampError {
    /// The text that did not parse (truncated to 64 characters).
    pub input: String,
}

/// The timestamp IoT Hub uses for "never" (`statusUpdateTime` of a fresh twin).
pub const ZERO_TIMESTAMP: &str = "0001-01-01T00:00:00Z";

/// Formats `t` as IoT Hub does: `YYYY-MM-DDTHH:MM:SS.mmmZ` (milliseconds, truncated).
///
/// ISO-8601 strings of this one shape compare correctly as text, which twin queries rely on
/// (`lastReboot >= '2026-11-29T01:00:00.000Z'`).
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses a timestamp leniently: RFC 3339 with any number of fractional digits and any offset
/// (normalised to UTC), or a naive `YYYY-MM-DDTHH:MM:SS[.f]` which is taken as UTC.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, TimestampError> {
    let trimmed = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(trimmed) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(trimmed, format) {
            return Ok(naive.and_utc());
        }
    }
    Err(TimestampError {
        input: s.chars().take(64).collect(),
    })
}

/// Serde adapter for `DateTime<Utc>` fields in IoT Hub's format (`#[serde(with = "...")]`).
pub mod serde_timestamp {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes with [`format_timestamp`](super::format_timestamp).
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_timestamp(*t))
    }

    /// Deserializes with [`parse_timestamp`](super::parse_timestamp).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_timestamp(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for `Option<DateTime<Utc>>` fields: `null` and an absent field are `None`.
///
/// Use with `#[serde(default, with = "casement_iothub::time::serde_timestamp_opt")]`.
pub mod serde_timestamp_opt {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `Some` with [`format_timestamp`](super::format_timestamp), `None` as `null`.
    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_timestamp(*t)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes `null` as `None` and a string with [`parse_timestamp`](super::parse_timestamp).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse_timestamp(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn formats_with_milliseconds_and_z() {
        let t = Utc.with_ymd_and_hms(2026, 11, 29, 1, 4, 10).unwrap();
        assert_eq!(format_timestamp(t), "2026-11-29T01:04:10.000Z");
        let t = t + chrono::Duration::microseconds(123_999);
        assert_eq!(format_timestamp(t), "2026-11-29T01:04:10.123Z");
    }

    #[test]
    fn parses_the_forms_the_service_writes() {
        let expected = Utc.with_ymd_and_hms(2022, 10, 18, 20, 50, 39).unwrap();
        for text in [
            "2022-10-18T20:50:39Z",
            "2022-10-18T20:50:39.000Z",
            "2022-10-18T20:50:39.0000000Z",
            "2022-10-18T22:50:39+02:00",
            "2022-10-18T20:50:39",
            " 2022-10-18T20:50:39Z ",
        ] {
            assert_eq!(parse_timestamp(text).unwrap(), expected, "{text}");
        }
        let zero = parse_timestamp(ZERO_TIMESTAMP).unwrap();
        assert_eq!(format_timestamp(zero), "0001-01-01T00:00:00.000Z");
    }

    #[test]
    fn rejects_garbage_with_the_input_in_the_message() {
        let err = parse_timestamp("yesterday").unwrap_err();
        assert!(err.to_string().contains("\"yesterday\""), "{err}");
        assert!(parse_timestamp("").is_err());
        assert!(parse_timestamp("2022-13-01T00:00:00Z").is_err());
    }

    #[test]
    fn round_trips_through_format() {
        let t = Utc.timestamp_millis_opt(1_790_000_123_456).unwrap();
        assert_eq!(parse_timestamp(&format_timestamp(t)).unwrap(), t);
    }

    #[test]
    fn serde_adapters() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct S {
            #[serde(with = "serde_timestamp")]
            a: DateTime<Utc>,
            #[serde(default, with = "serde_timestamp_opt")]
            b: Option<DateTime<Utc>>,
        }
        let s: S = serde_json::from_str(r#"{"a":"2022-10-18T20:50:39Z"}"#).unwrap();
        assert_eq!(s.b, None);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"a":"2022-10-18T20:50:39.000Z","b":null}"#
        );
        let s: S =
            serde_json::from_str(r#"{"a":"2022-10-18T20:50:39Z","b":"2022-10-18T20:50:40Z"}"#)
                .unwrap();
        assert!(s.b.is_some());
        assert!(serde_json::from_str::<S>(r#"{"a":"nope"}"#).is_err());
    }
}
