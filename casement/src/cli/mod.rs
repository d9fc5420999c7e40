//! The `casement` command line: clap definitions and dispatch, one module per subcommand.
//!
//! `main` parses [`Cli`] and calls [`run()`]; each subcommand module has an `Args` (the raw flags)
//! and a `run` that writes to the given output streams and returns the exit code, so the
//! commands are library code. Exit codes: [`EXIT_OK`] 0, [`EXIT_FINDINGS`] 1 (a check found
//! something), [`EXIT_INPUT`] 2 (usage or input error; clap's own usage errors exit 2 too),
//! [`EXIT_UNAVAILABLE`] 3 (the hub could not be reached or kept failing).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod apply;
pub mod client_args;
pub mod demo;
pub mod device;
pub mod hub;
pub mod invoke;
pub mod reboot;
pub mod report;
pub mod run;
pub mod twin;
pub mod validate;
pub mod windows;

/// Success.
pub const EXIT_OK: u8 = 0;
/// A check ran and found something (for example, compliance under a threshold).
pub const EXIT_FINDINGS: u8 = 1;
/// Usage or input error: bad flags, invalid policy files, a call the hub refused on its merits
/// (a wrong key, an unknown device).
pub const EXIT_INPUT: u8 = 2;
/// The hub could not be reached or could not serve the calls, even after retries: try again
/// later (see [`ClientError::is_unavailable`](casement_client::ClientError::is_unavailable)).
pub const EXIT_UNAVAILABLE: u8 = 3;

/// `error` and its causes on one line, each said once: an error whose message already quotes
/// its cause (`resolving the target of policy p: POST /devices/query: …`) is not followed by
/// the cause again, as anyhow's `{:#}` would.
pub fn describe(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The exit code for a command that failed with `error`.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let unavailable = error.chain().any(|e| {
        e.downcast_ref::<casement_client::ClientError>()
            .is_some_and(casement_client::ClientError::is_unavailable)
            || e.downcast_ref::<casement_scheduler::run::RunError>()
                .is_some_and(casement_scheduler::run::RunError::is_unavailable)
    });
    if unavailable {
        EXIT_UNAVAILABLE
    } else {
        EXIT_INPUT
    }
}

const EXAMPLES: &str = "\
Examples:
  casement validate policies/
  casement windows policies/store-gateways-weekly.toml --zone Europe/Amsterdam --count 5
  casement windows policies/pos-terminals-nightly.toml --from 2026-11-20T00:00:00Z
  casement apply policies/ --plan
  casement run policies/ --metrics 127.0.0.1:9464
  casement report --devices --fail-under 95
  casement device add store-0042-gw --tag role=gateway
  casement reboot store-0042-gw --force --reason \"INC-1234\"

Exit codes: 0 ok, 1 a check found something (report below --fail-under, failed writes),
2 fix the input (flags, policy files, a key or device the hub refused), 3 the hub could not
be reached or kept failing (try again later).";

/// Maintenance windows for Azure IoT Hub fleets: reboot devices only inside their windows.
#[derive(Debug, Parser)]
#[command(
    name = "casement",
    version,
    about = "Maintenance windows for Azure IoT Hub fleets",
    long_about = "Maintenance windows for Azure IoT Hub fleets.\n\n\
        Operators write declarative policies (TOML) that say which devices reboot when; \
        casement checks them, shows when their windows open, and rolls reboots out inside them.",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check policy files: syntax, fields, schedules, zones, unique names.
    Validate(validate::Args),
    /// List a policy's upcoming maintenance windows, in local time and UTC.
    Windows(windows::Args),
    /// Write policies into the targeted devices' twins (desired.maintenance); --plan to preview.
    Apply(apply::Args),
    /// Reboot devices inside their windows within the rollout limits (the long-running loop).
    Run(run::Args),
    /// Compliance per policy and per device, from twin queries and the journal.
    Report(report::Args),
    /// Watch a simulated fleet reboot inside its maintenance windows: local hub, real time, ~2 min.
    #[command(long_about = demo::ABOUT)]
    Demo(demo::Args),
    /// Run a local IoT Hub (MQTT + HTTPS, twins, methods, queries) for development and tests.
    #[command(long_about = hub::ABOUT)]
    Hub(hub::Args),
    /// Run an IoT Hub query against the hub (all pages) and print the results as JSON.
    Query(twin::QueryArgs),
    /// Show a device twin.
    Twin(twin::TwinArgs),
    /// Register, list, show, remove and bulk-import devices.
    Device(device::Args),
    /// Call a direct method on a device and print its answer.
    Invoke(invoke::Args),
    /// Reboot a device now, outside its window (--force --reason: the audited override).
    Reboot(reboot::Args),
}

/// Runs a parsed command line against the process's stdout and stderr.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = stdout.lock();
    let mut err = stderr.lock();
    let code = run_with(cli, &mut out, &mut err)?;
    out.flush()?;
    Ok(ExitCode::from(code))
}

/// Runs a parsed command line, writing results to `out` and problems to `err`; returns the exit
/// code.
pub fn run_with(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    match cli.command {
        Command::Validate(args) => validate::run(&args, out, err),
        Command::Windows(args) => windows::run(&args, &casement_policy::SystemClock, out, err),
        Command::Apply(args) => apply::run(&args, out, err),
        Command::Run(args) => run::run(&args, out, err),
        Command::Report(args) => report::run(&args, out, err),
        Command::Demo(args) => demo::run(&args, out, err),
        Command::Hub(args) => hub::run(&args, out, err),
        Command::Query(args) => twin::query(&args, out, err),
        Command::Twin(args) => twin::twin(&args, out, err),
        Command::Device(args) => device::run(&args, out, err),
        Command::Invoke(args) => invoke::run(&args, out, err),
        Command::Reboot(args) => reboot::run(&args, out, err),
    }
}

/// A borderless table with this header, columns two spaces apart.
pub(crate) fn plain_table<const N: usize>(header: [&str; N]) -> comfy_table::Table {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Renders a table without the padding comfy-table leaves at the end of each line.
pub(crate) fn render(table: &comfy_table::Table) -> String {
    table
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints policy diagnostics and a summary line to `err`.
pub(crate) fn print_diagnostics(
    diagnostics: &[casement_policy::Diagnostic],
    err: &mut dyn Write,
) -> std::io::Result<()> {
    for diagnostic in diagnostics {
        writeln!(err, "{diagnostic}")?;
    }
    let files: std::collections::BTreeSet<_> = diagnostics.iter().map(|d| &d.file).collect();
    let (n, f) = (diagnostics.len(), files.len());
    writeln!(
        err,
        "error: {n} problem{} in {f} file{}; nothing was accepted",
        if n == 1 { "" } else { "s" },
        if f == 1 { "" } else { "s" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_the_demo_suggests_parses() {
        let commands =
            crate::demo::try_commands("demo-0000", Some(std::path::Path::new("p/demo-pos.toml")));
        assert!(commands.len() >= 5, "{commands:?}");
        for line in commands {
            let words = crate::demo::command_words(&line);
            assert_eq!(words[0], "casement", "{line}");
            if let Err(e) = Cli::try_parse_from(&words) {
                panic!("the demo suggests `{line}`, which does not parse: {e}");
            }
        }
    }
}
