//! `casement apply <PATH>... [--plan] [--output table|json]`: write policies into twins.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::client_args::{ClientArgs, runtime};
use super::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK, print_diagnostics};
use casement_scheduler::apply::{self, ApplyOptions};

/// How `apply` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables and a summary line.
    Table,
    /// One JSON document: the plan and the summary.
    Json,
}

/// Flags of `casement apply`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Validates every file first: when any is invalid nothing is written, every problem is printed
and the exit code is 2. Then each policy's target is resolved with a twin query; where policies
overlap on a device the highest priority wins (then the name), and the overlaps are listed.
desired.maintenance is written (with If-Match) only where it differs, and removed from devices
that carry a policy no file targets any more. Applying unchanged files writes nothing.
Exit codes: 0 done, 1 some devices could not be written, 2 invalid input, 3 the hub could not
be reached or kept failing (try again later).

Examples:
  casement apply policies/ --plan
  casement apply policies/ --hub \"$IOTHUB_CONNECTION_STRING\" --tier S1")]
pub struct Args {
    /// Policy files, or directories whose *.toml files are policies.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Print what would change; write nothing.
    #[arg(long)]
    pub plan: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Twin writes in flight at once.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// Runs `casement apply`.
pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let set = match casement_policy::load(&args.paths) {
        Ok(set) => set,
        Err(diagnostics) => {
            print_diagnostics(&diagnostics, err)?;
            return Ok(EXIT_INPUT);
        }
    };
    if set.is_empty() {
        writeln!(
            err,
            "error: no policy files found in {}; nothing was applied",
            args.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
        return Ok(EXIT_INPUT);
    }
    let client = args
        .hub
        .client(Arc::new(casement_policy::SystemClock), err)?;
    let options = ApplyOptions {
        plan_only: args.plan,
        concurrency: args.concurrency.max(1),
        ..ApplyOptions::default()
    };
    let (plan, summary) = runtime()?.block_on(async {
        let plan = apply::build_plan(&client, &set).await?;
        let progress = if args.plan {
            Box::new(()) as Box<dyn apply::Progress>
        } else {
            crate::progress::terminal_progress()
        };
        let summary = apply::execute(&client, &set, &plan, &options, progress.as_ref()).await;
        Ok::<_, anyhow::Error>((plan, summary))
    })?;
    match args.output {
        Output::Table => write!(out, "{}", apply::render_text(&plan, &summary, args.plan))?,
        Output::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&apply::render_json(&plan, &summary))?
        )?,
    }
    if summary.failed.is_empty() {
        Ok(EXIT_OK)
    } else {
        writeln!(
            err,
            "error: {} device(s) could not be written; run apply again to retry them",
            summary.failed.len()
        )?;
        Ok(EXIT_FINDINGS)
    }
}
