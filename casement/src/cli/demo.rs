//! `casement demo [--devices N] [--duration D] [--keep-running]`: the whole system on this
//! machine, in real time (see [`crate::demo`]).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;

use super::client_args::parse_duration;
use super::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK, print_diagnostics};
use crate::demo::{self, DemoConfig, DemoError, ProgressMode};

/// The long help of `casement demo` (the story).
pub const ABOUT: &str = "Watch a fleet reboot inside its maintenance windows — on this machine, in real \
        time, in about two minutes, with nothing to install and no cloud.\n\n\
        1. A local IoT hub (`casement hub`) starts in a temporary directory, on loopback ports.\n\
        2. A fleet of simulated devices is registered — gateways and POS terminals, tagged \
        role/env/region, a few in a canary ring, spread over six zones on five continents — and \
        each device runs the real agent over its own MQTT connection.\n\
        3. The demo policies (policies/demo/) are applied: they are written into the devices' \
        twins as desired properties, and each agent computes its own windows from them. The \
        windows open every two minutes and stay open 90 seconds, so reboots start within the \
        first minute.\n\
        4. The scheduler runs: it calls the `reboot` direct method only on devices that report \
        their window open and that its own window math agrees have enough time left, never more \
        at once than each policy's max_concurrent, journaling every call before it is made. The \
        agents refuse anything outside their window.\n\
        5. Progress per policy: devices in their window, rebooting, completed, refused, failed.\n\
        6. When every device has rebooted inside its window, the compliance report \
        (`casement report`) is printed next to the devices' own log of reboots.\n\n\
        Exit status: 0 when the fleet is compliant, 1 when it is not (by --duration), 2 on bad \
        input.";

/// Flags of `casement demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  casement demo
  casement demo --devices 50 --duration 2m
  casement demo --keep-running      # then query the running fleet from another terminal
  casement demo --policies my-policies/")]
pub struct Args {
    /// How many simulated devices.
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub devices: u32,
    /// Give up after this long if some devices have not rebooted inside a window yet.
    #[arg(long, default_value = "3m", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// After the report, keep the hub, the devices and the scheduler running (until Ctrl-C) and
    /// print the connection string and commands to query them with.
    #[arg(long)]
    pub keep_running: bool,
    /// How long a simulated reboot keeps a device offline.
    #[arg(long, default_value = "3s", value_parser = parse_duration, value_name = "DURATION")]
    pub reboot_time: Duration,
    /// Use the policies in this directory instead of the built-in demo policies.
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Plain log lines instead of progress bars, even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

/// Runs `casement demo`.
pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let work = tempfile::Builder::new()
        .prefix("casement-demo-")
        .tempdir()
        .context("cannot create a temporary directory for the demo")?;
    // Everything the hub, agents and scheduler log goes to a file: the terminal is for the
    // story, and no worker thread may write to the stderr that `cli::run` holds locked.
    let log = work.path().join("demo.log");
    let file =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();

    let progress = if !args.plain && std::io::stdout().is_terminal() {
        ProgressMode::Bars
    } else {
        ProgressMode::Lines
    };
    let config = DemoConfig {
        devices: args.devices as usize,
        duration: args.duration,
        keep_running: args.keep_running,
        reboot_time: args.reboot_time,
        policies: args.policies.clone(),
        progress,
        work_dir: Some(work.path().join("run")),
        ..DemoConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(demo::run(&config, out, stop_signal()));
    // The agents' and hub's last tasks end with the runtime, before the directory goes.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(outcome) if outcome.compliant() => Ok(EXIT_OK),
        Ok(_) => {
            let kept = work.keep();
            writeln!(
                err,
                "casement demo: kept {} for a look: the hub's data, the scheduler's journal, each device's state, reboots.jsonl (the devices' own log) and demo.log",
                kept.display()
            )?;
            Ok(EXIT_FINDINGS)
        }
        Err(DemoError::Policies(diagnostics)) => {
            print_diagnostics(&diagnostics, err)?;
            Ok(EXIT_INPUT)
        }
        Err(DemoError::Interrupted) => {
            writeln!(err, "casement demo: interrupted")?;
            Ok(EXIT_FINDINGS)
        }
        Err(e) => {
            let kept = work.keep();
            writeln!(
                err,
                "casement demo: the log is in {}",
                kept.join("demo.log").display()
            )?;
            Err(e.into())
        }
    }
}

/// Completes at the first SIGINT or SIGTERM (the demo stops gracefully); a second one ends
/// the process at once (exit status 130).
async fn stop_signal() {
    casement_hub::shutdown_signal().await;
    tokio::spawn(async {
        casement_hub::shutdown_signal().await;
        // No message: `cli::run` holds stderr locked on the main thread.
        std::process::exit(130);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn defaults_and_flags() {
        let cli = Cli::try_parse_from(["casement", "demo"]).unwrap();
        let Command::Demo(args) = cli.command else {
            panic!("not demo")
        };
        assert_eq!(args.devices, 200);
        assert_eq!(args.duration, Duration::from_secs(180));
        assert!(!args.keep_running);
        let cli = Cli::try_parse_from([
            "casement",
            "demo",
            "--devices",
            "20",
            "--duration",
            "90s",
            "--keep-running",
        ])
        .unwrap();
        let Command::Demo(args) = cli.command else {
            panic!("not demo")
        };
        assert_eq!((args.devices, args.duration), (20, Duration::from_secs(90)));
        assert!(args.keep_running);
        assert!(Cli::try_parse_from(["casement", "demo", "--devices", "0"]).is_err());
        assert!(Cli::try_parse_from(["casement", "demo", "--duration", "soon"]).is_err());
    }
}
