//! Window math: when a policy's maintenance window is open, in UTC, for a zone and an instant.
//!
//! [`WindowSpec::window_at`] is the one function the agent and the scheduler both call, so they
//! cannot disagree about a window. [`WindowSpec::windows`] lists the windows from an instant on,
//! including the starts that do not open, with the reason (for `casement windows`).
//!
//! # Rules
//! - The schedule names local wall-clock times in the zone. Each is resolved explicitly:
//!   - a time that exists once opens then;
//!   - a time in a spring-forward gap (02:30 on the night clocks jump 02:00 → 03:00) opens at the
//!     first valid instant after the gap ([`WindowKind::MovedByDstGap`]);
//!   - a time in a fall-back overlap (02:30 happens twice) opens once, at the first occurrence
//!     ([`WindowKind::FirstOfDstOverlap`]).
//! - The duration is absolute time: a 2 h window that spans a DST change is open 2 real hours.
//! - On a blackout date (a local date) no window opens ([`WindowKind::SkippedBlackout`]); a window
//!   that opened the day before and runs past midnight still runs.
//! - Windows never overlap. Validation keeps the duration no longer than the shortest gap between
//!   starts (in UTC), so two windows can only meet around a DST change, and then:
//!   - starts that resolve to the same instant (02:00, 02:30 and 03:00 all become 03:00 when the
//!     clocks jump) open one window; the others are [`WindowKind::SkippedDuplicate`];
//!   - a window still open when the next one opens closes at that instant
//!     ([`ScheduledWindow::cut_short`]); a daily 24 h window stays "always open" across the
//!     23-hour spring day instead of losing a day.
//!
//!   Both depend only on the neighbouring starts, so the answer for an instant never depends on
//!   how far back the computation began.
//! - A window is open at `t` iff `opens_at <= t < closes_at`.
//!
//! croner has its own DST handling, but it differs from these rules for wildcard schedules
//! (it skips gap starts and fires twice in an overlap), so croner only enumerates local times here
//! (driven in UTC, which has no DST) and chrono-tz resolves them.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use crate::duration::format_duration;
use crate::schedule::Schedule;
use crate::zone::ZoneSpec;

/// How many scheduled starts a single query examines before giving up. Only reachable when
/// blackout dates swallow every start of a very frequent schedule.
const MAX_CANDIDATES: usize = 100_000;

/// One maintenance window, as UTC instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// When it opens (inclusive).
    pub opens_at: DateTime<Utc>,
    /// When it closes (exclusive).
    pub closes_at: DateTime<Utc>,
    /// The occurrence id: equal to `opens_at`. A device reboots at most once per occurrence.
    pub occurrence: DateTime<Utc>,
}

impl Window {
    fn new(opens_at: DateTime<Utc>, closes_at: DateTime<Utc>) -> Self {
        Window {
            opens_at,
            closes_at,
            occurrence: opens_at,
        }
    }

    /// Whether the window is open at `t` (`opens_at <= t < closes_at`).
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.opens_at <= t && t < self.closes_at
    }

    /// Time left at `t`: `closes_at - t` while open, `None` otherwise.
    pub fn remaining_at(&self, t: DateTime<Utc>) -> Option<Duration> {
        if self.contains(t) {
            (self.closes_at - t).to_std().ok()
        } else {
            None
        }
    }

    /// How long the window is open.
    pub fn length(&self) -> Duration {
        (self.closes_at - self.opens_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// The answer of [`WindowSpec::window_at`]: the window open now, or the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// Whether `window` is open at the instant asked about.
    pub open: bool,
    /// The current window when `open`, else the next one to open.
    pub window: Window,
}

/// What happens to one scheduled start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// Opens at the scheduled local time.
    Regular,
    /// The scheduled local time does not exist (spring-forward gap); opens at the first valid
    /// instant after the gap.
    MovedByDstGap,
    /// The scheduled local time happens twice (fall-back overlap); opens once, at the first.
    FirstOfDstOverlap,
    /// Does not open: the local date is a blackout date.
    SkippedBlackout,
    /// Does not open: a DST gap moved it onto the same instant as the previous start, which opens.
    SkippedDuplicate,
}

impl WindowKind {
    /// Whether a window actually opens.
    pub fn opens(self) -> bool {
        matches!(
            self,
            WindowKind::Regular | WindowKind::MovedByDstGap | WindowKind::FirstOfDstOverlap
        )
    }
}

/// One scheduled start and what becomes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledWindow {
    /// The local wall-clock time the schedule names.
    pub scheduled: NaiveDateTime,
    /// The window (for a skipped start: the window it would have been).
    pub window: Window,
    /// Whether and how it opens.
    pub kind: WindowKind,
    /// The window closes before its full duration because the next window opens then (only
    /// around a DST change).
    pub cut_short: bool,
}

/// A validated window: a schedule, how long each window lasts, the zone, and blackout dates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    schedule: Schedule,
    duration: Duration,
    timezone: ZoneSpec,
    blackout: BTreeSet<NaiveDate>,
}

/// The longest window: a year.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// Why a window specification is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowSpecError {
    /// The duration is zero.
    #[error("duration must be positive")]
    ZeroDuration,
    /// The duration is longer than [`MAX_DURATION`].
    #[error("duration {0} is longer than a year")]
    TooLong(String),
    /// Windows would overlap.
    #[error(
        "duration {duration} is longer than the shortest gap between two window starts ({gap}, {from} to {to}); windows would overlap"
    )]
    LongerThanGap {
        /// The duration, formatted.
        duration: String,
        /// The shortest gap, formatted.
        gap: String,
        /// The earlier start of the shortest gap (local time).
        from: NaiveDateTime,
        /// The later start.
        to: NaiveDateTime,
    },
}

impl WindowSpec {
    /// Checks and builds a window: the duration is positive and no longer than the shortest gap
    /// between two consecutive starts (measured in UTC, see [`Schedule::shortest_gap`]).
    pub fn new(
        schedule: Schedule,
        duration: Duration,
        timezone: ZoneSpec,
        blackout: impl IntoIterator<Item = NaiveDate>,
    ) -> Result<Self, WindowSpecError> {
        check_duration(&schedule, duration)?;
        Ok(WindowSpec {
            schedule,
            duration: Duration::from_secs(duration.as_secs()),
            timezone,
            blackout: blackout.into_iter().collect(),
        })
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// How long each window stays open (whole seconds).
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The zone the schedule is read in.
    pub fn timezone(&self) -> ZoneSpec {
        self.timezone
    }

    /// Local dates on which no window opens.
    pub fn blackout(&self) -> &BTreeSet<NaiveDate> {
        &self.blackout
    }

    /// The window of this policy for a device at `at`: in the policy's zone, or for
    /// `timezone = "device"` in `device_zone` — the one function the agent, the scheduler, the
    /// report and the tests ask. `None` when the policy follows the device's zone and the
    /// device has not reported one, or when no window ever opens.
    pub fn window_for(&self, device_zone: Option<Tz>, at: DateTime<Utc>) -> Option<WindowState> {
        self.window_at(self.timezone().resolve(device_zone)?, at)
    }

    /// Whether a window is open at `at`, and the current-or-next window, computed in `tz`.
    ///
    /// `tz` is the policy's own zone, or for `timezone = "device"` the zone the device reports
    /// (see [`ZoneSpec::resolve`]). `None` only when no window opens within the next 100 000
    /// scheduled starts or before the year 5000 (blackout dates covering every start).
    pub fn window_at(&self, tz: Tz, at: DateTime<Utc>) -> Option<WindowState> {
        let window = self.windows(tz, at).find(|w| w.kind.opens())?.window;
        Some(WindowState {
            open: window.contains(at),
            window,
        })
    }

    /// The scheduled starts, in order, whose window would still be open at or after `from`
    /// (`closes_at > from`): the one open at `from` if any, then the upcoming ones, including
    /// those that do not open, marked with the reason.
    pub fn windows(&self, tz: Tz, from: DateTime<Utc>) -> Windows<'_> {
        let length = TimeDelta::from_std(self.duration).unwrap_or(TimeDelta::MAX);
        // Only starts whose window reaches `from`, and the start just before each (duplicate
        // detection), matter: all of them open after `from - 2 * duration`. Resolving a local time
        // never gives an instant earlier than one whose local time it follows, so every start
        // opening after an instant `b` names a local time after `b - 1s` in local time: begin
        // there.
        let back = length
            .checked_mul(2)
            .and_then(|d| d.checked_add(&TimeDelta::seconds(1)))
            .and_then(|d| from.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        // croner works in the years 1 to 5000; keep local-time conversions inside chrono's range.
        let (earliest, latest) = supported_range();
        let back = back.clamp(earliest, latest);
        Windows {
            spec: self,
            tz,
            from,
            length,
            cursor: tz.from_utc_datetime(&back.naive_utc()).naive_local(),
            inclusive: true,
            ahead: VecDeque::new(),
            previous_open: None,
            examined: 0,
            exhausted: from > latest,
        }
    }
}

fn check_duration(schedule: &Schedule, duration: Duration) -> Result<(), WindowSpecError> {
    if duration.as_secs() == 0 {
        return Err(WindowSpecError::ZeroDuration);
    }
    if duration > MAX_DURATION {
        return Err(WindowSpecError::TooLong(format_duration(duration)));
    }
    if let Some(gap) = schedule.shortest_gap()
        && duration > gap.length
    {
        return Err(WindowSpecError::LongerThanGap {
            duration: format_duration(duration),
            gap: format_duration(gap.length),
            from: gap.from,
            to: gap.to,
        });
    }
    Ok(())
}

/// Iterator over scheduled windows; see [`WindowSpec::windows`].
#[derive(Debug, Clone)]
pub struct Windows<'a> {
    spec: &'a WindowSpec,
    tz: Tz,
    from: DateTime<Utc>,
    length: TimeDelta,
    cursor: NaiveDateTime,
    inclusive: bool,
    /// Starts generated ahead (to find the next opening for a window that may be cut short).
    ahead: VecDeque<Start>,
    /// When the previous start that was not blacked out opens.
    previous_open: Option<DateTime<Utc>>,
    examined: usize,
    exhausted: bool,
}

/// One scheduled start, resolved.
#[derive(Debug, Clone, Copy)]
struct Start {
    scheduled: NaiveDateTime,
    opens_at: DateTime<Utc>,
    resolution: WindowKind,
    blackout: bool,
}

impl Windows<'_> {
    /// The next start from the schedule, resolved in the zone.
    fn generate(&mut self) -> Option<Start> {
        while !self.exhausted {
            self.examined += 1;
            if self.examined > MAX_CANDIDATES {
                break;
            }
            let Some(scheduled) = self.spec.schedule.next_local(self.cursor, self.inclusive) else {
                break;
            };
            self.cursor = scheduled;
            self.inclusive = false;
            if let Some((opens_at, resolution)) = resolve(scheduled, self.tz) {
                let local_date = opens_at.with_timezone(&self.tz).date_naive();
                return Some(Start {
                    scheduled,
                    opens_at,
                    resolution,
                    blackout: self.spec.blackout.contains(&local_date),
                });
            }
        }
        self.exhausted = true;
        None
    }

    /// The `index`-th start after the current one, generating as needed.
    fn peek(&mut self, index: usize) -> Option<Start> {
        while self.ahead.len() <= index {
            let start = self.generate()?;
            self.ahead.push_back(start);
        }
        self.ahead.get(index).copied()
    }

    /// When the next window after one opening at `opens_at` opens, if before `closes_at`.
    fn next_opening_before(
        &mut self,
        opens_at: DateTime<Utc>,
        closes_at: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut index = 0;
        while let Some(next) = self.peek(index) {
            if next.opens_at >= closes_at {
                return None;
            }
            if !next.blackout && next.opens_at > opens_at {
                return Some(next.opens_at);
            }
            index += 1;
        }
        None
    }
}

impl Iterator for Windows<'_> {
    type Item = ScheduledWindow;

    fn next(&mut self) -> Option<ScheduledWindow> {
        loop {
            let start = match self.ahead.pop_front() {
                Some(start) => start,
                None => self.generate()?,
            };
            let full_close = start.opens_at.checked_add_signed(self.length)?;
            let (kind, closes_at, cut_short) = if start.blackout {
                (WindowKind::SkippedBlackout, full_close, false)
            } else if self.previous_open == Some(start.opens_at) {
                (WindowKind::SkippedDuplicate, full_close, false)
            } else {
                self.previous_open = Some(start.opens_at);
                match self.next_opening_before(start.opens_at, full_close) {
                    Some(next_open) => (start.resolution, next_open, true),
                    None => (start.resolution, full_close, false),
                }
            };
            if closes_at > self.from {
                return Some(ScheduledWindow {
                    scheduled: start.scheduled,
                    window: Window::new(start.opens_at, closes_at),
                    kind,
                    cut_short,
                });
            }
        }
    }
}

/// The instants windows are computed for: the years 1 to 4999 (croner stops at 5000), with a
/// day's margin for zone offsets. Outside it, no windows.
fn supported_range() -> (DateTime<Utc>, DateTime<Utc>) {
    let earliest = Utc
        .with_ymd_and_hms(1, 1, 2, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let latest = Utc
        .with_ymd_and_hms(4999, 12, 30, 0, 0, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    (earliest, latest)
}

/// Resolves a local wall-clock time in `tz` by the rules above; the kind is `Regular`,
/// `MovedByDstGap` or `FirstOfDstOverlap`.
fn resolve(local: NaiveDateTime, tz: Tz) -> Option<(DateTime<Utc>, WindowKind)> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some((t.with_timezone(&Utc), WindowKind::Regular)),
        LocalResult::Ambiguous(a, b) => {
            Some((a.min(b).with_timezone(&Utc), WindowKind::FirstOfDstOverlap))
        }
        LocalResult::None => {
            first_instant_after_gap(local, tz).map(|t| (t, WindowKind::MovedByDstGap))
        }
    }
}

/// The first instant after the DST gap that contains `local`: the instant whose local time is the
/// first valid wall-clock time after `local`.
fn first_instant_after_gap(local: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    let valid = |n: NaiveDateTime| tz.from_local_datetime(&n).earliest();
    // Walk a minute at a time to a valid time (gaps are an hour or so; allow two days).
    let step = TimeDelta::minutes(1);
    let mut lo = local;
    let mut hi = local.checked_add_signed(step)?;
    let mut steps = 0;
    while valid(hi).is_none() {
        steps += 1;
        if steps > 2 * 24 * 60 {
            return None;
        }
        lo = hi;
        hi = hi.checked_add_signed(step)?;
    }
    // `lo` is in the gap and `hi` is not: narrow to the first valid second.
    while hi - lo > TimeDelta::seconds(1) {
        let mid = lo + TimeDelta::seconds((hi - lo).num_seconds() / 2);
        if valid(mid).is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    valid(hi).map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests;
