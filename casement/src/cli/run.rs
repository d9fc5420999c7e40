//! `casement run <PATH>... [--once] [--tick DURATION] [--state-dir DIR] [--metrics ADDR]`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::client_args::{ClientArgs, init_logging, parse_duration, runtime};
use super::{EXIT_INPUT, EXIT_OK, print_diagnostics};
use casement_scheduler::journal::DEFAULT_STATE_DIR;
use casement_scheduler::metrics::Metrics;
use casement_scheduler::rollout::RolloutConfig;
use casement_scheduler::run::{
    RunConfig, RunError, Scheduler, Signals, max_calling_for, run_with_metrics,
};

/// Flags of `casement run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Every tick, for each policy: the devices that report themselves due (window open, not yet
rebooted in it: `maintenance.window.due`), the policy's revision applied, and — by casement's
own window math, within the clock-skew allowance — at least the expected duration left, are
invoked (`reboot` {policy, revision, occurrence}) within max_concurrent, max_per_minute and
max_failures. A pass costs what it can start: one `SELECT TOP k` query when the devices it
already holds cannot fill the free slots (k from the free slots and the per-minute budget,
rounded up to whole pages of 100, the rest kept for the next free slots) and a twin read per
device in flight that could be back by now, whatever the fleet holds. With --tier, calls are
paced to the tier's direct-method quota.
Each invocation is journaled and flushed under --state-dir before the call, so a restarted
scheduler neither reboots a device twice in one window nor forgets one.
Policy files are re-read when they change or on SIGHUP, and re-applied (--via twins or
configurations, as `casement apply --via`; the re-apply prunes: run owns its whole policy
set). SIGINT/SIGTERM stop gracefully (a second one stops at once).

Examples:
  casement run policies/ --metrics 127.0.0.1:9464
  casement run policies/ --once            # one pass, for cron")]
pub struct Args {
    /// Policy files, or directories whose *.toml files are policies.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// One pass, wait for the invocations it started, and exit.
    #[arg(long)]
    pub once: bool,
    /// Time between passes.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub tick: Duration,
    /// Where the journal lives.
    #[arg(long, env = "CASEMENT_STATE_DIR", default_value = DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// How far device clocks may be off: no reboot starts this close to either end of a window.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub clock_skew: Duration,
    /// How long after expected_duration a reboot may take to be seen completed before it
    /// counts as failed.
    #[arg(long, default_value = "2m", value_parser = parse_duration, value_name = "DURATION")]
    pub completion_grace: Duration,
    /// How late the hub's twin queries may answer (they are eventually consistent): the
    /// candidate query asks for this long's worth of already-invoked devices on top of what it
    /// can start. Safety never depends on it (the journal and twin reads decide).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub query_lag: Duration,
    /// Do not write the policies into twins (another process runs `casement apply`).
    #[arg(long)]
    pub no_apply: bool,
    /// How the re-apply writes the policies (as `casement apply --via`).
    #[arg(long, value_enum, default_value_t = super::apply::Via::Twins)]
    pub via: super::apply::Via,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// Runs `casement run`.
pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    init_logging("info");
    let clock = Arc::new(casement_policy::SystemClock);
    let client = args.hub.client(clock.clone(), err)?;
    let mut config = RunConfig::new(args.paths.clone(), args.state_dir.clone());
    config.tick = args.tick.max(Duration::from_millis(100));
    config.apply = !args.no_apply;
    config.apply_options.via = args.via.into();
    config.query_lag = args.query_lag;
    config.rollout = RolloutConfig {
        clock_skew: args.clock_skew,
        completion_grace: args.completion_grace,
        ..RolloutConfig::default()
    };
    config.max_calling = max_calling_for(
        args.hub
            .quota()
            .rate(casement_client::Operation::Methods)
            .map(|rate| rate.per_second),
    );
    let metrics = Metrics::new();
    let result = runtime()?.block_on(async {
        let scheduler = Scheduler::start(client, clock, config, metrics.clone()).await?;
        if args.once {
            scheduler.once().await
        } else {
            let signals = Signals::from_os()
                .map_err(|e| RunError::Pass(format!("cannot install signal handlers: {e}")))?;
            run_with_metrics(scheduler, signals, metrics, args.metrics).await
        }
    });
    match result {
        Ok(stats) => {
            writeln!(
                out,
                "passes {}, invocations {} (accepted {}, already done {}, refused {}, offline {}, errors {}), completed {}, failed {}, paused windows {}",
                stats.passes,
                stats.invocations,
                stats.accepted,
                stats.already_done,
                stats.refused,
                stats.offline,
                stats.errors,
                stats.completed,
                stats.failed,
                stats.pauses
            )?;
            Ok(EXIT_OK)
        }
        Err(RunError::Policies(diagnostics)) => {
            print_diagnostics(&diagnostics, err)?;
            Ok(EXIT_INPUT)
        }
        Err(e) => Err(e.into()),
    }
}
