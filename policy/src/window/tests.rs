use super::*;
use chrono::TimeZone;
use chrono_tz::America::New_York;
use chrono_tz::Europe::Amsterdam;
use proptest::prelude::*;

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

fn date(y: i32, mo: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, mo, d).unwrap()
}

fn spec(schedule: &str, duration_secs: u64) -> WindowSpec {
    spec_with_blackout(schedule, duration_secs, [])
}

fn spec_with_blackout(
    schedule: &str,
    duration_secs: u64,
    blackout: impl IntoIterator<Item = NaiveDate>,
) -> WindowSpec {
    WindowSpec::new(
        Schedule::parse(schedule).unwrap(),
        Duration::from_secs(duration_secs),
        ZoneSpec::Device,
        blackout,
    )
    .unwrap()
}

const H: u64 = 3600;

fn next(spec: &WindowSpec, tz: Tz, at: DateTime<Utc>) -> ScheduledWindow {
    spec.windows(tz, at).find(|w| w.kind.opens()).unwrap()
}

#[test]
fn ordinary_day_in_both_zones() {
    let s = spec("0 2 * * *", 2 * H);
    // Amsterdam in winter is UTC+1, New York UTC-5.
    let w = next(&s, Amsterdam, utc(2026, 1, 15, 0, 0));
    assert_eq!(w.window.opens_at, utc(2026, 1, 15, 1, 0));
    assert_eq!(w.window.closes_at, utc(2026, 1, 15, 3, 0));
    assert_eq!(w.window.occurrence, w.window.opens_at);
    assert_eq!(w.kind, WindowKind::Regular);
    let w = next(&s, New_York, utc(2026, 1, 15, 0, 0));
    assert_eq!(w.window.opens_at, utc(2026, 1, 15, 7, 0));
}

#[test]
fn spring_forward_gap_opens_at_first_valid_instant_amsterdam() {
    // 2026-03-29: clocks jump 02:00 CET -> 03:00 CEST (01:00 UTC).
    let s = spec("30 2 * * *", 2 * H);
    let w = next(&s, Amsterdam, utc(2026, 3, 28, 12, 0));
    assert_eq!(w.kind, WindowKind::MovedByDstGap);
    assert_eq!(
        w.scheduled,
        date(2026, 3, 29).and_hms_opt(2, 30, 0).unwrap()
    );
    assert_eq!(w.window.opens_at, utc(2026, 3, 29, 1, 0));
    // Duration is absolute: two real hours.
    assert_eq!(w.window.closes_at, utc(2026, 3, 29, 3, 0));
    // The day before and after are regular.
    assert_eq!(
        next(&s, Amsterdam, utc(2026, 3, 27, 12, 0)).window.opens_at,
        utc(2026, 3, 28, 1, 30)
    );
    let after = next(&s, Amsterdam, utc(2026, 3, 29, 12, 0));
    assert_eq!(after.window.opens_at, utc(2026, 3, 30, 0, 30));
    assert_eq!(after.kind, WindowKind::Regular);
}

#[test]
fn spring_forward_gap_opens_at_first_valid_instant_new_york() {
    // 2026-03-08: clocks jump 02:00 EST -> 03:00 EDT (07:00 UTC).
    let s = spec("0 2 * * *", H);
    let w = next(&s, New_York, utc(2026, 3, 7, 12, 0));
    assert_eq!(w.kind, WindowKind::MovedByDstGap);
    assert_eq!(w.window.opens_at, utc(2026, 3, 8, 7, 0));
    assert_eq!(w.window.closes_at, utc(2026, 3, 8, 8, 0));
    let state = s.window_at(New_York, utc(2026, 3, 8, 7, 0)).unwrap();
    assert!(state.open);
}

#[test]
fn fall_back_overlap_opens_once_at_first_occurrence_amsterdam() {
    // 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens at 00:30 and 01:30 UTC.
    let s = spec("30 2 * * *", H);
    let windows: Vec<_> = s
        .windows(Amsterdam, utc(2026, 10, 24, 12, 0))
        .take(2)
        .collect();
    assert_eq!(windows[0].kind, WindowKind::FirstOfDstOverlap);
    assert_eq!(windows[0].window.opens_at, utc(2026, 10, 25, 0, 30));
    assert_eq!(windows[0].window.closes_at, utc(2026, 10, 25, 1, 30));
    // Not again at the second 02:30 (01:30 UTC): the next one is the following night.
    assert_eq!(windows[1].window.opens_at, utc(2026, 10, 26, 1, 30));
    let state = s.window_at(Amsterdam, utc(2026, 10, 25, 1, 45)).unwrap();
    assert!(!state.open);
    assert_eq!(state.window.opens_at, utc(2026, 10, 26, 1, 30));
}

#[test]
fn fall_back_overlap_opens_once_at_first_occurrence_new_york() {
    // 2026-11-01: 02:00 EDT -> 01:00 EST; 01:30 happens at 05:30 and 06:30 UTC.
    let s = spec("30 1 * * *", 30 * 60);
    let w = next(&s, New_York, utc(2026, 10, 31, 12, 0));
    assert_eq!(w.kind, WindowKind::FirstOfDstOverlap);
    assert_eq!(w.window.opens_at, utc(2026, 11, 1, 5, 30));
    let state = s.window_at(New_York, utc(2026, 11, 1, 6, 30)).unwrap();
    assert!(!state.open, "the second 01:30 must not open a window");
    assert_eq!(state.window.opens_at, utc(2026, 11, 2, 6, 30));
}

#[test]
fn hourly_schedule_skips_the_repeated_hour() {
    // Wildcard hours: croner alone would fire twice in the overlap; we open once.
    let s = spec("0 * * * *", H);
    let opens: Vec<_> = s
        .windows(Amsterdam, utc(2026, 10, 24, 23, 0))
        .filter(|w| w.kind.opens())
        .take(4)
        .map(|w| w.window.opens_at)
        .collect();
    assert_eq!(
        opens,
        vec![
            utc(2026, 10, 24, 23, 0), // 01:00 CEST
            utc(2026, 10, 25, 0, 0),  // 02:00 CEST (first 02:00)
            utc(2026, 10, 25, 2, 0),  // 03:00 CET; the second 02:00 (01:00 UTC) opens nothing
            utc(2026, 10, 25, 3, 0),
        ]
    );
}

#[test]
fn starts_moved_onto_one_instant_open_once() {
    // Every 30 minutes: 02:00, 02:30 and 03:00 all land on 03:00 CEST on 2026-03-29.
    let s = spec("*/30 * * * *", 30 * 60);
    let all: Vec<_> = s
        .windows(Amsterdam, utc(2026, 3, 29, 0, 30))
        .take(5)
        .collect();
    let kinds: Vec<_> = all.iter().map(|w| w.kind).collect();
    assert_eq!(
        kinds,
        vec![
            WindowKind::Regular,          // 01:30 CET = 00:30 UTC
            WindowKind::MovedByDstGap,    // 02:00 -> 01:00 UTC
            WindowKind::SkippedDuplicate, // 02:30 -> 01:00 UTC
            WindowKind::SkippedDuplicate, // 03:00 CEST = 01:00 UTC
            WindowKind::Regular,          // 03:30 CEST = 01:30 UTC
        ]
    );
    assert_eq!(all[1].window.opens_at, utc(2026, 3, 29, 1, 0));
    assert_eq!(all[4].window.opens_at, utc(2026, 3, 29, 1, 30));
}

#[test]
fn window_cut_short_when_the_next_opens_early() {
    // A daily 24-hour window is always open; the spring day has 23 hours, so the window of
    // 2026-03-29 closes when the next one opens instead of skipping 2026-03-30.
    let s = spec("0 0 * * *", 24 * H);
    let listed: Vec<_> = s
        .windows(Amsterdam, utc(2026, 3, 28, 12, 0))
        .take(3)
        .collect();
    assert!(listed.iter().all(|w| w.kind == WindowKind::Regular));
    assert_eq!(listed[1].window.opens_at, utc(2026, 3, 28, 23, 0));
    assert!(listed[1].cut_short);
    assert_eq!(listed[1].window.closes_at, utc(2026, 3, 29, 22, 0));
    assert_eq!(listed[2].window.opens_at, utc(2026, 3, 29, 22, 0));
    assert!(!listed[2].cut_short);
    assert_eq!(listed[2].window.length(), Duration::from_secs(24 * H));
    // In autumn the day has 25 hours: the window closes at 23:00 and the next opens at 00:00.
    let state = s.window_at(Amsterdam, utc(2026, 10, 25, 22, 30)).unwrap();
    assert!(!state.open);
    assert_eq!(state.window.opens_at, utc(2026, 10, 25, 23, 0));
}

#[test]
fn window_crossing_midnight() {
    // 23:00 for 3 hours, Amsterdam summer (UTC+2): 21:00–00:00 UTC, local 23:00–02:00.
    let s = spec("0 23 * * *", 3 * H);
    let at = Amsterdam
        .with_ymd_and_hms(2026, 6, 2, 0, 30, 0)
        .unwrap()
        .with_timezone(&Utc);
    let state = s.window_at(Amsterdam, at).unwrap();
    assert!(state.open);
    assert_eq!(state.window.opens_at, utc(2026, 6, 1, 21, 0));
    assert_eq!(state.window.closes_at, utc(2026, 6, 2, 0, 0));
}

#[test]
fn window_spanning_dst_change_lasts_absolute_time() {
    // Opens 01:00 CET (00:00 UTC) on 2026-03-29, closes 3 real hours later at 05:00 CEST.
    let s = spec("0 1 * * *", 3 * H);
    let w = next(&s, Amsterdam, utc(2026, 3, 28, 12, 0));
    assert_eq!(w.window.opens_at, utc(2026, 3, 29, 0, 0));
    assert_eq!(w.window.closes_at, utc(2026, 3, 29, 3, 0));
    assert_eq!(
        w.window.closes_at.with_timezone(&Amsterdam).naive_local(),
        date(2026, 3, 29).and_hms_opt(5, 0, 0).unwrap()
    );
    // In autumn: opens 01:00 CEST (23:00 UTC), closes at 03:00 CET: two wall-clock hours.
    let w = next(&s, Amsterdam, utc(2026, 10, 24, 12, 0));
    assert_eq!(w.window.opens_at, utc(2026, 10, 24, 23, 0));
    assert_eq!(w.window.closes_at, utc(2026, 10, 25, 2, 0));
    assert_eq!(
        w.window.closes_at.with_timezone(&Amsterdam).naive_local(),
        date(2026, 10, 25).and_hms_opt(3, 0, 0).unwrap()
    );
    assert_eq!(w.window.length(), Duration::from_secs(3 * H));
}

#[test]
fn six_field_schedule_has_seconds() {
    let five = spec("0 2 * * *", H);
    let six = spec("45 0 2 * * *", H);
    let at = utc(2026, 1, 15, 0, 0);
    assert_eq!(
        next(&six, Amsterdam, at).window.opens_at - next(&five, Amsterdam, at).window.opens_at,
        TimeDelta::seconds(45)
    );
}

#[test]
fn blackout_date_opens_no_window_but_a_running_one_finishes() {
    // 23:00 daily for 3 hours; 2026-12-24 is blacked out.
    let s = spec_with_blackout("0 23 * * *", 3 * H, [date(2026, 12, 24)]);
    // The window of the 23rd runs past midnight into the blackout date.
    let at = Amsterdam
        .with_ymd_and_hms(2026, 12, 24, 0, 30, 0)
        .unwrap()
        .with_timezone(&Utc);
    let state = s.window_at(Amsterdam, at).unwrap();
    assert!(state.open);
    assert_eq!(state.window.opens_at, utc(2026, 12, 23, 22, 0));
    // None opens on the 24th: the next is the 25th.
    let state = s.window_at(Amsterdam, utc(2026, 12, 24, 12, 0)).unwrap();
    assert!(!state.open);
    assert_eq!(state.window.opens_at, utc(2026, 12, 25, 22, 0));
    let listed: Vec<_> = s
        .windows(Amsterdam, utc(2026, 12, 24, 12, 0))
        .take(2)
        .collect();
    assert_eq!(listed[0].kind, WindowKind::SkippedBlackout);
    assert_eq!(listed[0].window.opens_at, utc(2026, 12, 24, 22, 0));
    assert_eq!(listed[1].kind, WindowKind::Regular);
}

#[test]
fn blackout_is_a_local_date() {
    // 00:30 local in New York on the 24th is 05:30 UTC; 23:30 local on the 23rd is 04:30 UTC on
    // the 24th. Only the local date counts.
    let s = spec_with_blackout("30 0,23 * * *", H, [date(2026, 12, 24)]);
    let opens: Vec<_> = s
        .windows(New_York, utc(2026, 12, 23, 12, 0))
        .filter(|w| w.kind.opens())
        .take(2)
        .map(|w| w.window.opens_at)
        .collect();
    assert_eq!(
        opens,
        vec![utc(2026, 12, 24, 4, 30), utc(2026, 12, 25, 5, 30)]
    );
}

#[test]
fn open_at_exactly_opens_at_closed_at_exactly_closes_at() {
    let s = spec("0 2 * * *", 2 * H);
    let opens = utc(2026, 1, 15, 1, 0);
    let closes = utc(2026, 1, 15, 3, 0);
    let before = s
        .window_at(Amsterdam, opens - TimeDelta::nanoseconds(1))
        .unwrap();
    assert!(!before.open);
    assert_eq!(before.window.opens_at, opens);
    let at_open = s.window_at(Amsterdam, opens).unwrap();
    assert!(at_open.open);
    assert_eq!(at_open.window.closes_at, closes);
    assert_eq!(
        at_open.window.remaining_at(opens),
        Some(Duration::from_secs(2 * H))
    );
    let last = s
        .window_at(Amsterdam, closes - TimeDelta::nanoseconds(1))
        .unwrap();
    assert!(last.open);
    let at_close = s.window_at(Amsterdam, closes).unwrap();
    assert!(!at_close.open);
    assert_eq!(at_close.window.opens_at, opens + TimeDelta::days(1));
    assert_eq!(at_close.window.remaining_at(closes), None);
}

#[test]
fn back_to_back_windows_hand_over_at_the_boundary() {
    // Duration equal to the gap: one window closes as the next opens.
    let s = spec("0 */2 * * *", 2 * H);
    let at = utc(2026, 1, 15, 2, 0);
    let state = s.window_at(chrono_tz::UTC, at).unwrap();
    assert!(state.open);
    assert_eq!(state.window.opens_at, at);
}

#[test]
fn device_zone_changes_the_instant() {
    let s = spec("0 2 * * SUN", 2 * H);
    let at = utc(2026, 11, 27, 0, 0);
    let ams = s.window_at(Amsterdam, at).unwrap().window;
    let ny = s.window_at(New_York, at).unwrap().window;
    assert_eq!(ams.opens_at, utc(2026, 11, 29, 1, 0));
    assert_eq!(ny.opens_at, utc(2026, 11, 29, 7, 0));
}

#[test]
fn duration_is_checked_against_the_schedule() {
    let schedule = Schedule::parse("0 2,3 * * *").unwrap();
    let err = WindowSpec::new(
        schedule.clone(),
        Duration::from_secs(2 * H),
        ZoneSpec::Device,
        [],
    )
    .unwrap_err();
    assert!(
        matches!(&err, WindowSpecError::LongerThanGap { gap, .. } if gap == "1h"),
        "{err}"
    );
    assert_eq!(
        WindowSpec::new(schedule.clone(), Duration::ZERO, ZoneSpec::Device, []),
        Err(WindowSpecError::ZeroDuration)
    );
    assert!(WindowSpec::new(schedule, Duration::from_secs(H), ZoneSpec::Device, []).is_ok());
    // A leap-day schedule has a four-year gap, but no window lasts more than a year.
    let leap = Schedule::parse("0 0 29 2 *").unwrap();
    assert_eq!(
        WindowSpec::new(leap, Duration::from_secs(u64::MAX), ZoneSpec::Device, []),
        Err(WindowSpecError::TooLong(format_duration(
            Duration::from_secs(u64::MAX)
        )))
    );
}

#[test]
fn answer_does_not_depend_on_where_iteration_starts() {
    // Walk a week around the spring change minute by minute... in 7-minute steps, comparing
    // window_at with one long enumeration.
    let s = spec("*/30 * * * *", 30 * 60);
    let start = utc(2026, 3, 28, 0, 0);
    let all: Vec<Window> = s
        .windows(Amsterdam, start)
        .filter(|w| w.kind.opens())
        .take_while(|w| w.window.opens_at < utc(2026, 3, 31, 0, 0))
        .map(|w| w.window)
        .collect();
    let mut t = start + TimeDelta::hours(1);
    while t < utc(2026, 3, 30, 0, 0) {
        let state = s.window_at(Amsterdam, t).unwrap();
        let expected = all.iter().find(|w| w.closes_at > t).unwrap();
        assert_eq!(&state.window, expected, "at {t}");
        t += TimeDelta::minutes(7);
    }
}

const ZONES: [Tz; 6] = [
    Amsterdam,
    New_York,
    chrono_tz::UTC,
    chrono_tz::Australia::Lord_Howe, // 30-minute DST shift
    chrono_tz::America::Santiago,    // DST change at midnight
    chrono_tz::Asia::Kolkata,
];

const SCHEDULES: [(&str, u64); 8] = [
    ("0 2 * * *", 2 * H),
    ("30 2 * * SUN", 4 * H),
    ("0 * * * *", H),
    ("*/30 * * * *", 30 * 60),
    ("15 1,2,3 * * *", 45 * 60),
    ("0 0 * * *", 24 * H),
    ("30 0 2 * * *", H),
    ("0 23 * * FRI", 6 * H),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn windows_are_ordered_disjoint_and_consistent(
        zone in 0..ZONES.len(),
        schedule in 0..SCHEDULES.len(),
        minutes in 0i64..(20 * 366 * 24 * 60),
        blackout_day in proptest::option::of(0i64..60),
    ) {
        let tz = ZONES[zone];
        let (pattern, secs) = SCHEDULES[schedule];
        let t = utc(2020, 1, 1, 0, 0) + TimeDelta::minutes(minutes);
        let blackout: Vec<NaiveDate> = blackout_day
            .map(|d| t.with_timezone(&tz).date_naive() + TimeDelta::days(d / 10))
            .into_iter()
            .collect();
        let s = spec_with_blackout(pattern, secs, blackout);

        let opened: Vec<Window> = s
            .windows(tz, t)
            .filter(|w| w.kind.opens())
            .take(12)
            .map(|w| w.window)
            .collect();
        prop_assert!(!opened.is_empty());
        for pair in opened.windows(2) {
            prop_assert!(pair[0].opens_at < pair[1].opens_at, "ordered: {:?}", pair);
            prop_assert!(pair[0].closes_at <= pair[1].opens_at, "disjoint: {:?}", pair);
        }
        let listed: Vec<ScheduledWindow> = s
            .windows(tz, t)
            .filter(|w| w.kind.opens())
            .take(12)
            .collect();
        for w in &listed {
            let full = TimeDelta::seconds(secs as i64);
            let length = w.window.closes_at - w.window.opens_at;
            prop_assert!(length > TimeDelta::zero());
            if w.cut_short {
                prop_assert!(length < full);
            } else {
                prop_assert_eq!(length, full);
            }
            prop_assert_eq!(w.window.occurrence, w.window.opens_at);
        }

        let state = s.window_at(tz, t).unwrap();
        prop_assert_eq!(state.window, opened[0]);
        prop_assert_eq!(state.open, state.window.opens_at <= t && t < state.window.closes_at);
        prop_assert!(state.window.closes_at > t);

        // Asking at each listed window's own boundaries gives that window back (open at
        // opens_at, closed at closes_at), whatever instant the computation started from.
        for w in &opened {
            let at_open = s.window_at(tz, w.opens_at).unwrap();
            prop_assert!(at_open.open);
            prop_assert_eq!(at_open.window, *w);
            let at_close = s.window_at(tz, w.closes_at).unwrap();
            prop_assert!(!at_close.open || at_close.window.opens_at == w.closes_at);
            prop_assert!(at_close.window.opens_at >= w.closes_at);
        }
    }
}

#[test]
fn extreme_instants_do_not_panic() {
    let s = spec("0 2 * * *", 2 * H);
    for tz in [New_York, Amsterdam, chrono_tz::Pacific::Kiritimati] {
        for at in [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            utc(1, 1, 1, 0, 0),
            utc(9999, 12, 31, 23, 59),
        ] {
            let _ = s.window_at(tz, at);
            let _ = s.windows(tz, at).take(3).count();
        }
    }
}
