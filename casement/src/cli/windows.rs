//! `casement windows <POLICY_FILE>`: when will my devices reboot? The next windows of a policy,
//! in local time and UTC, with the ones moved by DST or skipped for blackout marked.

use std::io::Write;
use std::path::PathBuf;

use super::{EXIT_INPUT, EXIT_OK, plain_table, print_diagnostics, render};
use casement_policy::zone::{ZoneError, parse_zone};
use casement_policy::{Clock, ScheduledWindow, WindowKind, ZoneSpec, format_duration};
use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;

/// The most windows one invocation lists.
pub const MAX_COUNT: u32 = 1000;

/// Flags of `casement windows`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Marks windows moved by a DST change (a start in a spring-forward gap opens at the first valid
instant after it; a start in a fall-back overlap opens once, at the first occurrence), windows
cut short, and starts skipped for a blackout date.

Examples:
  casement windows policies/store-gateways-weekly.toml --zone Europe/Amsterdam
  casement windows policies/pos-terminals-nightly.toml --from 2026-03-01T00:00:00Z --count 14")]
pub struct Args {
    /// The policy file.
    #[arg(value_name = "POLICY_FILE")]
    pub policy: PathBuf,

    /// The device's IANA zone, required when the policy's timezone is "device".
    #[arg(long, value_name = "ZONE", value_parser = parse_zone_arg)]
    pub zone: Option<Tz>,

    /// List windows open at or after this instant (RFC 3339, e.g. 2026-03-28T00:00:00Z).
    /// Default: now.
    #[arg(long, value_name = "RFC3339", value_parser = parse_instant)]
    pub from: Option<DateTime<Utc>>,

    /// How many windows to list (skipped starts are shown in between, not counted).
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT)))]
    pub count: u32,
}

fn parse_zone_arg(s: &str) -> Result<Tz, ZoneError> {
    parse_zone(s)
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 instant such as 2026-03-28T00:00:00Z ({e})"))
}

/// Runs `casement windows`, reading the time from `clock` when `--from` is not given.
pub fn run(
    args: &Args,
    clock: &dyn Clock,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<u8> {
    let policy = match casement_policy::load_file(&args.policy) {
        Ok(policy) => policy,
        Err(diagnostics) => {
            print_diagnostics(&diagnostics, err)?;
            return Ok(EXIT_INPUT);
        }
    };
    let window = policy.window();
    let (tz, zone_note) = match (window.timezone(), args.zone) {
        (ZoneSpec::Device, Some(zone)) => (zone, "device zone from --zone"),
        (ZoneSpec::Device, None) => {
            writeln!(
                err,
                "error: policy \"{}\" uses timezone = \"device\": each device's windows are in its own zone.\n\
                 Pass the zone of the device you are asking about, e.g. --zone Europe/Amsterdam",
                policy.name()
            )?;
            return Ok(EXIT_INPUT);
        }
        (ZoneSpec::Named(fixed), Some(zone)) if zone != fixed => {
            writeln!(
                err,
                "error: policy \"{}\" uses the fixed zone {fixed}; --zone {zone} would not change \
                 when its devices reboot (--zone is for policies with timezone = \"device\")",
                policy.name()
            )?;
            return Ok(EXIT_INPUT);
        }
        (ZoneSpec::Named(fixed), _) => (fixed, "the policy's zone"),
    };
    let from = args.from.unwrap_or_else(|| clock.now());

    let mut rows: Vec<ScheduledWindow> = Vec::new();
    let mut opened = 0;
    // Skipped starts are listed too, but a schedule could skip many in a row; bound the output.
    let max_rows = args.count as usize * 10 + 100;
    for w in window.windows(tz, from) {
        if w.kind.opens() {
            opened += 1;
        }
        rows.push(w);
        if opened == args.count as usize || rows.len() >= max_rows {
            break;
        }
    }

    writeln!(
        out,
        "policy {} ({}), revision {}",
        policy.name(),
        policy.file().display(),
        policy.revision()
    )?;
    writeln!(
        out,
        "schedule \"{}\", open {}, in {tz} ({zone_note})",
        window.schedule(),
        format_duration(window.duration()),
    )?;
    if !window.blackout().is_empty() {
        let dates: Vec<String> = window.blackout().iter().map(|d| d.to_string()).collect();
        writeln!(out, "blackout dates: {}", dates.join(", "))?;
    }
    writeln!(
        out,
        "from {}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )?;
    writeln!(out)?;
    if rows.is_empty() {
        writeln!(out, "no window opens after {from}")?;
        return Ok(EXIT_OK);
    }

    let with_seconds = rows
        .iter()
        .any(|w| w.window.opens_at.second() != 0 || w.window.closes_at.second() != 0);
    let local_format = if with_seconds {
        "%a %Y-%m-%d %H:%M:%S %Z"
    } else {
        "%a %Y-%m-%d %H:%M %Z"
    };
    let mut table = plain_table([
        "#",
        "OPENS (LOCAL)",
        "CLOSES (LOCAL)",
        "OPENS (UTC)",
        "CLOSES (UTC)",
        "NOTE",
    ]);
    let mut number = 0;
    for w in &rows {
        let index = if w.kind.opens() {
            number += 1;
            number.to_string()
        } else {
            "-".to_owned()
        };
        let local = |t: DateTime<Utc>| t.with_timezone(&tz).format(local_format).to_string();
        let utc = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (closes_local, opens_utc, closes_utc) = if w.kind.opens() {
            (
                local(w.window.closes_at),
                utc(w.window.opens_at),
                utc(w.window.closes_at),
            )
        } else {
            (String::new(), String::new(), String::new())
        };
        table.add_row([
            index,
            local(w.window.opens_at),
            closes_local,
            opens_utc,
            closes_utc,
            note(w, from, tz),
        ]);
    }
    writeln!(out, "{}", render(&table))?;
    Ok(EXIT_OK)
}

/// The NOTE column: what DST or a blackout did to this start.
fn note(w: &ScheduledWindow, from: DateTime<Utc>, tz: Tz) -> String {
    let scheduled = w.scheduled.format("%H:%M");
    let mut parts: Vec<String> = Vec::new();
    if w.kind.opens() && w.window.contains(from) {
        parts.push("open now".to_owned());
    }
    match w.kind {
        WindowKind::Regular => {}
        WindowKind::MovedByDstGap => parts.push(format!(
            "moved by DST: {scheduled} does not exist that night (clocks spring forward)"
        )),
        WindowKind::FirstOfDstOverlap => parts.push(format!(
            "DST: {scheduled} happens twice (clocks fall back); opens at the first"
        )),
        WindowKind::SkippedBlackout => parts.push(format!(
            "skipped: {} is a blackout date",
            w.window.opens_at.with_timezone(&tz).date_naive()
        )),
        WindowKind::SkippedDuplicate => parts.push(format!(
            "skipped: DST moved {scheduled} onto the previous start"
        )),
    }
    if w.cut_short {
        parts.push("closes early: the next window opens (DST)".to_owned());
    }
    parts.join("; ")
}
