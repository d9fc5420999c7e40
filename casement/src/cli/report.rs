//! `casement report [--policy P] [--format table|json|csv|html] [--devices] [--fail-under PCT]`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use casement_policy::Clock as _;

use super::client_args::{ClientArgs, runtime};
use super::{EXIT_FINDINGS, EXIT_OK};
use casement_scheduler::journal::{DEFAULT_STATE_DIR, JournalView};
use casement_scheduler::report::{self, DEFAULT_LOOKBACK, Format};

/// Output formats of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// CSV: a row per policy, or per device with --devices.
    Csv,
    /// One self-contained HTML page (inline CSS and SVG, no network): per-policy bars, the
    /// device table, each zone's recent windows on a timeline. For a change ticket.
    Html,
}

/// Flags of `casement report`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Per policy: devices targeted, applied, not-applied (has not reported the desired revision
applied: offline, never seen, older revision), rejected, compliant (rebooted in the window it is
judged by: the latest that has opened, or the one before while that one is open), in-window
(its first window is open, no reboot yet), pending (no window since the policy arrived), missed,
failed, paused (the failure budget paused the window), forced (the last reboot was forced with
`casement reboot --force`; each listed with its time and reason), offline, and the percentage
compliant = compliant / (targeted - pending - in-window). A reboot simulated by an agent run
with --simulate-reboot counts as compliant and again under simulated: nothing was really
rebooted. Failed and paused count once per
device and window. With no device due the percentage is n/a, and --fail-under passes (says so
on stderr). Reads the twins, and the scheduler's journal in --state-dir (its snapshot while
`casement run` holds it). See README \"What the report means\".

Cost: without --devices (and not html) the counts come from COUNT() queries, a few pages
whatever the fleet's size: grouped by the fields that decide a device's state, then, for the
groups whose devices differ by when the policy reached them, when they rebooted or what the
journal says of them, one COUNT() per outcome. --devices and html read every targeted twin,
projected to the fields the report uses.

Exit codes: 0 ok; 1 the percentage is below --fail-under; 2 bad input (flags, a journal that
cannot be read); 3 the hub could not be reached or kept failing (try again later).

Examples:
  casement report
  casement report --policy canary --devices
  casement report --format csv --fail-under 95
  casement report --format html --devices > report.html")]
pub struct Args {
    /// Only this policy.
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// List every device: state, zone, last window, last reboot.
    #[arg(long)]
    pub devices: bool,
    /// Exit 1 when the percentage compliant is below this.
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub fail_under: Option<f64>,
    /// The scheduler's state directory (its journal).
    #[arg(long, env = "CASEMENT_STATE_DIR", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let n: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("\"{text}\" is not a percentage"))?;
    if (0.0..=100.0).contains(&n) {
        Ok(n)
    } else {
        Err(format!("{n} is not between 0 and 100"))
    }
}

/// Runs `casement report`.
pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let clock = Arc::new(casement_policy::SystemClock);
    let journal = JournalView::load(&args.state_dir)?;
    if let Some(taken) = journal.taken_at {
        writeln!(
            err,
            "casement: the journal is in use by `casement run`; using its snapshot of {}",
            casement_iothub::time::format_timestamp(taken)
        )?;
    }
    let client = args.hub.client(clock.clone(), err)?;
    let now = clock.now();
    let format = match args.format {
        ReportFormat::Table => Format::Table,
        ReportFormat::Json => Format::Json,
        ReportFormat::Csv => Format::Csv,
        ReportFormat::Html => Format::Html,
    };
    let policy = args.policy.as_deref();
    // The counts alone come from grouped queries (their number does not grow with the fleet);
    // device lines (--devices, and the HTML page, which always lists them) page the fleet.
    let r = if args.devices || format == Format::Html {
        runtime()?.block_on(report::compute(
            &client,
            &journal,
            now,
            DEFAULT_LOOKBACK,
            policy,
        ))?
    } else {
        runtime()?
            .block_on(report::grouped::compute_summary(
                &client,
                &journal,
                now,
                DEFAULT_LOOKBACK,
                policy,
            ))?
            .0
    };
    write!(out, "{}", report::render(&r, format, args.devices))?;
    match (args.fail_under, r.total.percent_compliant) {
        (Some(threshold), Some(p)) if p < threshold => {
            writeln!(
                err,
                "casement: {p:.1}% compliant is below --fail-under {threshold}"
            )?;
            Ok(EXIT_FINDINGS)
        }
        (Some(threshold), None) => {
            writeln!(
                err,
                "casement: no device is due yet (pending or in its first window): the percentage \
                 is not applicable, --fail-under {threshold} passes"
            )?;
            Ok(EXIT_OK)
        }
        _ => Ok(EXIT_OK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("95"), Ok(95.0));
        assert_eq!(parse_percent("99.5%"), Ok(99.5));
        assert!(parse_percent("101").is_err());
        assert!(parse_percent("x").is_err());
    }
}
