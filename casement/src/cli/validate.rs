//! `casement validate <PATH>...`: check policy files and directories, all or nothing.

use std::io::Write;
use std::path::PathBuf;

use super::{EXIT_INPUT, EXIT_OK, plain_table, print_diagnostics, render};

/// Flags of `casement validate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints one line per valid policy: name, file, target, schedule, zone and revision.
Exits 0 when every policy is valid; otherwise prints every problem as
file:line:column: field: message on stderr and exits 2.

Examples:
  casement validate policies/
  casement validate policies/canary.toml policies/store-gateways-weekly.toml")]
pub struct Args {
    /// Policy files, or directories whose *.toml files are policies (not recursive).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Runs `casement validate`.
pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let set = match casement_policy::load(&args.paths) {
        Ok(set) => set,
        Err(diagnostics) => {
            print_diagnostics(&diagnostics, err)?;
            return Ok(EXIT_INPUT);
        }
    };
    let mut table = plain_table(["NAME", "FILE", "TARGET", "SCHEDULE", "ZONE", "REVISION"]);
    for policy in &set {
        let window = policy.window();
        table.add_row([
            policy.name().to_owned(),
            policy.file().display().to_string(),
            policy.target_text().to_owned(),
            window.schedule().as_str().to_owned(),
            window.timezone().to_string(),
            policy.revision().to_string(),
        ]);
    }
    writeln!(out, "{}", render(&table))?;
    let n = set.len();
    writeln!(
        out,
        "{n} polic{} valid",
        if n == 1 { "y is" } else { "ies are" }
    )?;
    Ok(EXIT_OK)
}
