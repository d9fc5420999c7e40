//! Human-written durations: `"90s"`, `"5m"`, `"2h"`, `"1h30m"`, `"1d"`.
//!
//! A duration is one or more `<number><unit>` groups with units `d` (days), `h`, `m`, `s`, largest
//! unit first, each unit at most once, no spaces. Durations are whole seconds.

use std::time::Duration;

/// Why a duration string is not a duration. Offsets are byte offsets into the string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration (write e.g. \"90s\", \"5m\", \"2h\", \"1h30m\" or \"1d\")")]
    Empty,
    /// A number is not followed by a unit.
    #[error("\"{number}\" has no unit (write e.g. \"{number}s\", \"{number}m\" or \"{number}h\")")]
    MissingUnit {
        /// The number without a unit.
        number: String,
        /// Where the number starts.
        offset: usize,
    },
    /// A unit is not one of `d`, `h`, `m`, `s`.
    #[error("unknown unit \"{unit}\" (use d, h, m or s)")]
    UnknownUnit {
        /// What was written where a unit belongs.
        unit: String,
        /// Where it starts.
        offset: usize,
    },
    /// Something other than a digit where a number belongs.
    #[error("expected a number at \"{found}\" (write e.g. \"90s\", \"2h\" or \"1h30m\")")]
    ExpectedNumber {
        /// The rest of the string from the offending character.
        found: String,
        /// Where it starts.
        offset: usize,
    },
    /// Units out of order or repeated, as in `"30m1h"` or `"1h1h"`.
    #[error(
        "unit \"{unit}\" is out of order or repeated (largest unit first, each once: \"1d2h30m15s\")"
    )]
    UnitOrder {
        /// The offending unit.
        unit: char,
        /// Where it is.
        offset: usize,
    },
    /// The total does not fit.
    #[error("duration is too long")]
    Overflow,
}

impl DurationError {
    /// Byte offset of the problem inside the duration string.
    pub fn offset(&self) -> usize {
        match self {
            DurationError::Empty | DurationError::Overflow => 0,
            DurationError::MissingUnit { offset, .. }
            | DurationError::UnknownUnit { offset, .. }
            | DurationError::ExpectedNumber { offset, .. }
            | DurationError::UnitOrder { offset, .. } => *offset,
        }
    }
}

const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Parses a duration such as `"90s"`, `"2h"`, `"1h30m"` or `"1d"`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let bytes = input.as_bytes();
    let mut total: u64 = 0;
    let mut pos = 0;
    // Index into UNITS of the last unit seen; the next one must come strictly later.
    let mut last_unit: Option<usize> = None;
    while pos < bytes.len() {
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        if pos == start {
            return Err(DurationError::ExpectedNumber {
                found: input[start..].to_owned(),
                offset: start,
            });
        }
        let number = &input[start..pos];
        // The unit is everything up to the next digit: "h" in "1h30m", "hour" in "1hour".
        let unit_len = input[pos..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(input.len() - pos);
        let unit = &input[pos..pos + unit_len];
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                number: number.to_owned(),
                offset: start,
            });
        }
        let mut chars = unit.chars();
        let (Some(unit_char), None) = (chars.next(), chars.next()) else {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_owned(),
                offset: pos,
            });
        };
        let Some(unit_index) = UNITS.iter().position(|(c, _)| *c == unit_char) else {
            return Err(DurationError::UnknownUnit {
                unit: unit.to_owned(),
                offset: pos,
            });
        };
        if last_unit.is_some_and(|last| unit_index <= last) {
            return Err(DurationError::UnitOrder {
                unit: unit_char,
                offset: pos,
            });
        }
        last_unit = Some(unit_index);
        let value: u64 = number.parse().map_err(|_| DurationError::Overflow)?;
        let seconds = value
            .checked_mul(UNITS[unit_index].1)
            .ok_or(DurationError::Overflow)?;
        total = total.checked_add(seconds).ok_or(DurationError::Overflow)?;
        pos += unit_char.len_utf8();
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration canonically (`"1h30m"`, `"2h"`, `"90s"` → `"1m30s"`, zero → `"0s"`),
/// dropping sub-second parts. [`parse_duration`] reads it back.
pub fn format_duration(duration: Duration) -> String {
    let mut rest = duration.as_secs();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, seconds) in UNITS {
        let n = rest / seconds;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push(unit);
            rest %= seconds;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("90s", 90),
            ("5m", 300),
            ("2h", 7200),
            ("1h30m", 5400),
            ("1d", 86_400),
            ("1d2h3m4s", 86_400 + 7200 + 180 + 4),
            ("0s", 0),
            ("120m", 7200),
        ];
        for (input, secs) in cases {
            assert_eq!(
                parse_duration(input),
                Ok(Duration::from_secs(secs)),
                "{input}"
            );
        }
    }

    #[test]
    fn rejects_malformed_durations_with_offsets() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert!(matches!(
            parse_duration("90"),
            Err(DurationError::MissingUnit { offset: 0, .. })
        ));
        assert!(matches!(
            parse_duration("1h30"),
            Err(DurationError::MissingUnit { offset: 2, .. })
        ));
        assert!(matches!(
            parse_duration("2 hours"),
            Err(DurationError::UnknownUnit { offset: 1, .. })
        ));
        assert_eq!(
            parse_duration("1hour"),
            Err(DurationError::UnknownUnit {
                unit: "hour".to_owned(),
                offset: 1
            })
        );
        assert!(matches!(
            parse_duration("2x"),
            Err(DurationError::UnknownUnit { offset: 1, .. })
        ));
        assert!(matches!(
            parse_duration("h"),
            Err(DurationError::ExpectedNumber { offset: 0, .. })
        ));
        assert!(matches!(
            parse_duration("-5m"),
            Err(DurationError::ExpectedNumber { offset: 0, .. })
        ));
        assert!(matches!(
            parse_duration("30m1h"),
            Err(DurationError::UnitOrder {
                unit: 'h',
                offset: 4
            })
        ));
        assert!(matches!(
            parse_duration("1h1h"),
            Err(DurationError::UnitOrder {
                unit: 'h',
                offset: 3
            })
        ));
        assert_eq!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_duration("999999999999999d"),
            Err(DurationError::Overflow)
        );
        assert!(matches!(
            parse_duration("5é"),
            Err(DurationError::UnknownUnit { offset: 1, .. })
        ));
    }

    #[test]
    fn formats_canonically() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(secs in 0u64..10_000_000) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,12}") {
            let _ = parse_duration(&s);
        }
    }
}
