//! Cron schedules: when a window opens, as a crontab line of 5 fields (6 with seconds first).
//!
//! Parsing and matching are croner's; what this module adds is errors that say which field is
//! wrong, and iteration over *local wall-clock* times. The schedule is evaluated on naive local
//! times (croner driven in UTC, where no DST exists) and [`crate::window`] resolves each local time
//! in the zone explicitly, so the DST rules are ours and tested, not a library default.

use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime, Timelike};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// One field of a crontab line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CronField {
    /// Seconds (only in 6-field schedules), 0–59.
    Second,
    /// Minutes, 0–59.
    Minute,
    /// Hours, 0–23.
    Hour,
    /// Day of the month, 1–31, `L`, `W`.
    DayOfMonth,
    /// Month, 1–12 or JAN–DEC.
    Month,
    /// Day of the week, 0–7 (0 and 7 are Sunday) or SUN–SAT, `L`, `#`.
    DayOfWeek,
}

impl CronField {
    const FIVE: [CronField; 5] = [
        CronField::Minute,
        CronField::Hour,
        CronField::DayOfMonth,
        CronField::Month,
        CronField::DayOfWeek,
    ];
    const SIX: [CronField; 6] = [
        CronField::Second,
        CronField::Minute,
        CronField::Hour,
        CronField::DayOfMonth,
        CronField::Month,
        CronField::DayOfWeek,
    ];

    /// The field's name as people say it ("day-of-month").
    pub fn name(self) -> &'static str {
        match self {
            CronField::Second => "second",
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        }
    }

    /// What the field accepts.
    pub fn allowed(self) -> &'static str {
        match self {
            CronField::Second | CronField::Minute => "0-59",
            CronField::Hour => "0-23",
            CronField::DayOfMonth => "1-31, L, W",
            CronField::Month => "1-12 or JAN-DEC",
            CronField::DayOfWeek => "0-7 or SUN-SAT (0 and 7 are Sunday), L, #",
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a schedule is not a schedule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ScheduleError {
    /// What is wrong, in words.
    pub message: String,
    /// The offending field, when one field is to blame.
    pub field: Option<CronField>,
    /// Byte offset inside the schedule string where the problem starts.
    pub offset: usize,
}

/// A validated cron schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    source: String,
    cron: Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Schedule {}

/// The first instant used when measuring the gaps between starts (a leap year, so `29 2` matches).
fn reference_start() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2024, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

/// Splits on whitespace, keeping each field's byte offset.
fn fields_with_offsets(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(st)) => {
                out.push((st, &s[st..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        out.push((st, &s[st..]));
    }
    out
}

/// Turns croner's message into a clause: `"Component error: Number out of bounds."` → `"number out of bounds"`.
fn croner_detail(err: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    let raw = match err {
        E::ComponentError(m) | E::InvalidPattern(m) => m.clone(),
        // croner has already replaced names (TUE -> 2) by then, so its text would confuse.
        E::IllegalCharacters(_) => "unrecognised value".to_owned(),
        other => other.to_string(),
    };
    let trimmed = raw.trim().trim_end_matches('.');
    let mut chars = trimmed.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => "invalid".to_owned(),
    }
}

impl Schedule {
    /// Parses a crontab schedule: 5 fields (`minute hour day-of-month month day-of-week`), 6 with
    /// a leading seconds field, or a nickname (`@daily`, `@weekly`, `@monthly`, `@yearly`,
    /// `@hourly`). A schedule that never matches (`0 0 30 2 *`) is an error.
    pub fn parse(input: &str) -> Result<Self, ScheduleError> {
        let fields = fields_with_offsets(input);
        let Some(&(first_offset, first)) = fields.first() else {
            return Err(ScheduleError {
                message: "empty schedule (write 5 cron fields, e.g. \"0 2 * * SUN\")".to_owned(),
                field: None,
                offset: 0,
            });
        };
        let parser = parser();
        if first.starts_with('@') {
            return match parser.parse(input) {
                Ok(cron) => Self::checked(input, cron),
                Err(_) => Err(ScheduleError {
                    message: format!(
                        "unknown nickname \"{first}\" (use @hourly, @daily, @weekly, @monthly or @yearly, or 5 cron fields)"
                    ),
                    field: None,
                    offset: first_offset,
                }),
            };
        }
        let names: &[CronField] = match fields.len() {
            5 => &CronField::FIVE,
            6 => &CronField::SIX,
            n => {
                return Err(ScheduleError {
                    message: format!(
                        "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with seconds first), found {n}"
                    ),
                    field: None,
                    offset: if n > 6 { fields[6].0 } else { first_offset },
                });
            }
        };
        let whole_error = match parser.parse(input) {
            Ok(cron) => return Self::checked(input, cron),
            Err(e) => e,
        };
        // Find the guilty field: parse each field alone, with every other field a wildcard.
        for (index, &(offset, text)) in fields.iter().enumerate() {
            let probe: Vec<&str> = fields
                .iter()
                .enumerate()
                .map(|(i, &(_, t))| if i == index { t } else { "*" })
                .collect();
            if let Err(e) = parser.parse(&probe.join(" ")) {
                let field = names[index];
                return Err(ScheduleError {
                    message: format!(
                        "{field} field \"{text}\": {} (allowed: {}, with lists 1,5 ranges 1-5 and steps */15)",
                        croner_detail(&e),
                        field.allowed()
                    ),
                    field: Some(field),
                    offset,
                });
            }
        }
        Err(ScheduleError {
            message: format!("invalid schedule: {}", croner_detail(&whole_error)),
            field: None,
            offset: first_offset,
        })
    }

    fn checked(input: &str, cron: Cron) -> Result<Self, ScheduleError> {
        let schedule = Schedule {
            source: input.to_owned(),
            cron,
        };
        if schedule.next_local(reference_start(), true).is_none() {
            return Err(ScheduleError {
                message: format!("schedule \"{input}\" never matches a real date"),
                field: None,
                offset: 0,
            });
        }
        Ok(schedule)
    }

    /// The schedule as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The schedule in canonical form (fields separated by one space, upper case), used for the
    /// revision so that spacing and case do not change it.
    pub fn canonical(&self) -> String {
        fields_with_offsets(&self.source)
            .into_iter()
            .map(|(_, f)| f.to_uppercase())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The next local wall-clock time the schedule names, after `after` (or at it, when
    /// `inclusive`). `None` past the year 5000 or if the schedule never matches.
    pub fn next_local(&self, after: NaiveDateTime, inclusive: bool) -> Option<NaiveDateTime> {
        // Croner keeps sub-second parts; starts are whole seconds.
        let whole = after.with_nanosecond(0)?;
        let inclusive = inclusive && whole == after;
        self.cron
            .find_next_occurrence(&whole.and_utc(), inclusive)
            .ok()
            .map(|dt| dt.naive_utc())
    }

    /// The shortest time between two consecutive starts, measured in UTC over starts from
    /// 2024-01-01 (at most five years, or 20 000 starts), with the pair where it occurs.
    /// `None` when the schedule starts fewer than twice in that span.
    ///
    /// The scan walks up to five years of starts (hundreds of cron searches for a weekly
    /// schedule), and the same schedule is validated again and again — by an agent at every
    /// boot, by the scheduler at every reload, by each of thousands of simulated agents sharing
    /// one process — so its result is remembered per schedule text, for the process.
    pub fn shortest_gap(&self) -> Option<Gap> {
        static REMEMBERED: LazyLock<GapMemo> = LazyLock::new(GapMemo::default);
        REMEMBERED.get_or_scan(&self.source, || self.scan_shortest_gap())
    }

    fn scan_shortest_gap(&self) -> Option<Gap> {
        const MAX_STARTS: usize = 20_000;
        let start = reference_start();
        let end = start + chrono::TimeDelta::days(5 * 366);
        // No gap can be shorter than the schedule's resolution.
        let floor = if fields_with_offsets(&self.source).len() == 6 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(60)
        };
        let mut previous = self.next_local(start, true)?;
        let mut best: Option<Gap> = None;
        for _ in 0..MAX_STARTS {
            let Some(next) = self.next_local(previous, false) else {
                break;
            };
            if next > end {
                break;
            }
            let gap = (next - previous).to_std().unwrap_or_default();
            if best.as_ref().is_none_or(|b| gap < b.length) {
                best = Some(Gap {
                    length: gap,
                    from: previous,
                    to: next,
                });
                if gap <= floor {
                    break;
                }
            }
            previous = next;
        }
        best
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Shortest gaps by schedule text; bounded (forgotten all at once when full: a process sees a
/// handful of schedules, a fuzzer many).
#[derive(Debug, Default)]
struct GapMemo {
    gaps: Mutex<HashMap<String, Option<Gap>>>,
}

impl GapMemo {
    const CAPACITY: usize = 256;

    fn get_or_scan(&self, source: &str, scan: impl FnOnce() -> Option<Gap>) -> Option<Gap> {
        if let Some(gap) = self.lock().get(source) {
            return *gap;
        }
        // Scanned outside the lock: two threads may both scan a new schedule, and agree.
        let gap = scan();
        let mut gaps = self.lock();
        if gaps.len() >= Self::CAPACITY {
            gaps.clear();
        }
        gaps.insert(source.to_owned(), gap);
        gap
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Gap>>> {
        // The map holds plain values: a panic elsewhere cannot leave it half-written.
        self.gaps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The gap between two consecutive starts of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// How long it is.
    pub length: Duration,
    /// The earlier start.
    pub from: NaiveDateTime,
    /// The later start.
    pub to: NaiveDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap()
    }

    #[test]
    fn five_and_six_fields() {
        let five = Schedule::parse("0 2 * * SUN").unwrap();
        // 2026-03-01 is a Sunday.
        assert_eq!(
            five.next_local(at(2026, 2, 27, 0, 0, 0), false),
            Some(at(2026, 3, 1, 2, 0, 0))
        );
        let six = Schedule::parse("30 0 2 * * SUN").unwrap();
        assert_eq!(
            six.next_local(at(2026, 2, 27, 0, 0, 0), false),
            Some(at(2026, 3, 1, 2, 0, 30))
        );
        assert_eq!(
            six.shortest_gap().unwrap().length,
            Duration::from_secs(7 * 86_400)
        );
        let every_second = Schedule::parse("* * * * * *").unwrap();
        assert_eq!(
            every_second.shortest_gap().unwrap().length,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn inclusive_and_sub_second_starts() {
        let s = Schedule::parse("0 2 * * *").unwrap();
        let two = at(2026, 1, 1, 2, 0, 0);
        assert_eq!(s.next_local(two, true), Some(two));
        assert_eq!(
            s.next_local(two, false),
            Some(two + chrono::TimeDelta::days(1))
        );
        let just_after = two + chrono::TimeDelta::milliseconds(500);
        assert_eq!(
            s.next_local(just_after, true),
            Some(two + chrono::TimeDelta::days(1))
        );
        assert_eq!(
            s.next_local(two - chrono::TimeDelta::milliseconds(500), true),
            Some(two)
        );
    }

    #[test]
    fn names_the_wrong_field() {
        let cases = [
            ("61 2 * * *", CronField::Minute, 0),
            ("0 25 * * *", CronField::Hour, 2),
            ("0 2 32 * *", CronField::DayOfMonth, 4),
            ("0 2 * 13 *", CronField::Month, 6),
            ("0 2 * * SNU", CronField::DayOfWeek, 8),
            ("0 2 * * TUES", CronField::DayOfWeek, 8),
            ("0  2 * * 8", CronField::DayOfWeek, 9),
            ("61 0 2 * * *", CronField::Second, 0),
            ("*/0 * * * *", CronField::Minute, 0),
        ];
        for (input, field, offset) in cases {
            let err = Schedule::parse(input).unwrap_err();
            assert_eq!(err.field, Some(field), "{input}: {err}");
            assert_eq!(err.offset, offset, "{input}");
            assert!(err.message.starts_with(field.name()), "{input}: {err}");
        }
        let err = Schedule::parse("0 2 * * TUES").unwrap_err();
        assert!(
            err.message
                .starts_with("day-of-week field \"TUES\": unrecognised value (allowed: "),
            "{err}"
        );
        let err = Schedule::parse("0 2 * * 8").unwrap_err();
        assert_eq!(
            err.message,
            "day-of-week field \"8\": number out of bounds (allowed: 0-7 or SUN-SAT (0 and 7 are Sunday), L, #, with lists 1,5 ranges 1-5 and steps */15)"
        );
    }

    #[test]
    fn counts_fields() {
        let err = Schedule::parse("0 2 * *").unwrap_err();
        assert!(err.message.contains("found 4"), "{err}");
        let err = Schedule::parse("0 0 2 * * * 2026").unwrap_err();
        assert!(err.message.contains("found 7"), "{err}");
        assert_eq!(err.offset, 12);
        assert!(
            Schedule::parse("   ")
                .unwrap_err()
                .message
                .contains("empty")
        );
    }

    #[test]
    fn nicknames_and_impossible_dates() {
        assert!(Schedule::parse("@weekly").is_ok());
        let err = Schedule::parse("@reboot").unwrap_err();
        assert!(err.message.contains("unknown nickname"), "{err}");
        let err = Schedule::parse("0 0 30 2 *").unwrap_err();
        assert!(err.message.contains("never matches"), "{err}");
        // 29 February exists in leap years only; it is a valid (rare) schedule.
        let leap = Schedule::parse("0 0 29 2 *").unwrap();
        assert_eq!(
            leap.shortest_gap().unwrap().length,
            Duration::from_secs(1461 * 86_400)
        );
    }

    #[test]
    fn shortest_gap_finds_the_uneven_pair() {
        // 02:00 and 03:00 daily: the shortest gap is one hour, not 23.
        let s = Schedule::parse("0 2,3 * * *").unwrap();
        let gap = s.shortest_gap().unwrap();
        assert_eq!(gap.length, Duration::from_secs(3600));
        // Weekdays only: Friday to Monday is longest, Monday to Tuesday shortest.
        let s = Schedule::parse("0 22 * * MON-FRI").unwrap();
        assert_eq!(
            s.shortest_gap().unwrap().length,
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn a_schedule_s_shortest_gap_is_scanned_once_and_the_memo_stays_bounded() {
        let memo = GapMemo::default();
        let scans = std::cell::Cell::new(0);
        let hourly = Schedule::parse("0 * * * *").unwrap();
        let scan = || {
            scans.set(scans.get() + 1);
            hourly.scan_shortest_gap()
        };
        let first = memo.get_or_scan("0 * * * *", scan);
        let again = memo.get_or_scan("0 * * * *", || unreachable!("remembered"));
        assert_eq!(first, again);
        assert_eq!(first.unwrap().length, Duration::from_secs(3600));
        assert_eq!(scans.get(), 1);
        // The text is the key: another spelling is scanned on its own, and gets its own answer.
        let none = memo.get_or_scan("0 0 29 2 *", || None);
        assert_eq!(none, None);
        assert_eq!(memo.get_or_scan("0 0 29 2 *", || unreachable!()), None);
        // Full: forgotten, not grown.
        for i in 0..GapMemo::CAPACITY + 10 {
            memo.get_or_scan(&format!("schedule {i}"), || None);
        }
        assert!(memo.lock().len() <= GapMemo::CAPACITY);
        // The process-wide memo answers what a scan answers.
        assert_eq!(hourly.shortest_gap(), hourly.scan_shortest_gap());
    }

    #[test]
    fn canonical_ignores_spacing_and_case() {
        let a = Schedule::parse("0  2 * *   sun").unwrap();
        let b = Schedule::parse("0 2 * * SUN").unwrap();
        assert_eq!(a.canonical(), b.canonical());
    }
}
