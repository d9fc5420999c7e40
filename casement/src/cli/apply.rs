//! `casement apply <PATH>... [--plan] [--prune] [--via twins|configurations] [--output table|json]`:
//! write policies into twins, directly or through IoT Hub configurations.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::client_args::{ClientArgs, runtime};
use super::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK, print_diagnostics};
use casement_scheduler::apply::{self, ApplyOptions, ApplyVia};

/// How `apply` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables and a summary line.
    Table,
    /// One JSON document: the plan and the summary.
    Json,
}

/// How policies are written (`--via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// PATCH every twin that differs: at once, exact on any hub, one call per device.
    Twins,
    /// One IoT Hub configuration per policy revision: one call per policy, covers devices that
    /// appear later, takes effect at the hub's next evaluation.
    Configurations,
}

impl From<Via> for ApplyVia {
    fn from(via: Via) -> Self {
        match via {
            Via::Twins => ApplyVia::Twins,
            Via::Configurations => ApplyVia::Configurations,
        }
    }
}

/// Flags of `casement apply`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Validates every file first: when any is invalid nothing is written, every problem is printed
and the exit code is 2. Then each policy's target is resolved with a twin query; where policies
overlap on a device the highest priority wins (then the name), and the overlaps are listed.
desired.maintenance is written (with If-Match) only where it differs, and removed from devices
that a given policy no longer targets. Applying unchanged files writes nothing.

Devices that carry a policy none of the files names are left alone and listed; --prune clears
them (and, with --via configurations, removes the Casement configurations of those policies).

--via twins (default) writes every twin that differs at once, exact on any hub: one call per
device. --via configurations writes one IoT Hub automatic device management configuration per
policy revision (id casement-<policy>-<revision>, priority = policy priority + 1000): one call
per policy, devices that appear later are covered, and the hub writes the twins at its next
evaluation (Azure: about every 5 minutes). A changed policy gets a new configuration, then the
old one is removed. Devices no policy targets any more are still cleared twin by twin. Two
policies of equal priority that target a common device are refused (IoT Hub and Casement
break that tie differently): give one a higher priority.

Exit codes: 0 done, 1 some devices or configurations could not be written, 2 invalid input
(or an equal-priority overlap with --via configurations), 3 hub unavailable.

Examples:
  casement apply policies/ --plan
  casement apply policies/ --hub \"$IOTHUB_CONNECTION_STRING\" --tier S1
  casement apply weekly.toml --plan              # what else would be cleared is listed
  casement apply policies/ --prune               # also clear devices of removed policies
  casement apply policies/ --via configurations --plan")]
pub struct Args {
    /// Policy files, or directories whose *.toml files are policies.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Print what would change; write nothing.
    #[arg(long)]
    pub plan: bool,
    /// Also clear devices that carry a policy none of the given files names (and remove the
    /// Casement configurations of such policies).
    #[arg(long)]
    pub prune: bool,
    /// Write twin by twin, or through IoT Hub configurations.
    #[arg(long, value_enum, default_value_t = Via::Twins)]
    pub via: Via,
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
        prune: args.prune,
        via: args.via.into(),
        ..ApplyOptions::default()
    };
    let (plan, summary) = runtime()?.block_on(async {
        let plan = apply::plan(&client, &set, &options).await?;
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
            "error: {} device(s) or configuration(s) could not be written; run apply again to retry them",
            summary.failed.len()
        )?;
        Ok(EXIT_FINDINGS)
    }
}
