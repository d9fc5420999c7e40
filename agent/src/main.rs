//! `casement-agent`: parses the command line, builds the configuration, runs the library.

use std::process::ExitCode;

#[cfg(feature = "simulate")]
use anyhow::Context as _;
#[cfg(feature = "simulate")]
use casement_agent::Simulation;
use casement_agent::cli::{Cli, Command};
use casement_agent::config::AgentConfig;
use casement_agent::timezone::{ZoneSource, system_zone};
use casement_agent::{Agent, RunOutcome};
use clap::Parser;
use tracing::{error, info, warn};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `Targets` (`info`, `casement_agent=debug,rumqttc=warn`) rather than `EnvFilter`: no regex
    // engine in a binary that lives on small devices.
    let filter: Targets = cli.log.parse().unwrap_or_else(|err| {
        eprintln!(
            "invalid --log/CASEMENT_LOG {:?} ({err}); using info",
            cli.log
        );
        Targets::new().with_default(tracing::Level::INFO)
    });
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer())
        .with(filter)
        .init();
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        warn!("a TLS crypto provider was already installed");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(err) => {
            error!("{err:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => {
            let simulate_reboot = args.simulate_reboot;
            let config = AgentConfig::resolve(args.into_flags(), || {
                let (zone, source) = system_zone();
                match source {
                    ZoneSource::Fallback => warn!(
                        "neither /etc/timezone nor the /etc/localtime link names a zone; using UTC (pass --timezone)"
                    ),
                    source => info!(zone = zone.name(), ?source, "system time zone"),
                }
                zone
            })?;
            info!(
                device = config.device_id(),
                endpoint = %config.endpoint,
                timezone = config.timezone.name(),
                state_dir = %config.state_dir.display(),
                reboot_command = %config.reboot_command,
                "casement-agent {} starting",
                env!("CARGO_PKG_VERSION")
            );
            if simulate_reboot {
                warn!(
                    "--simulate-reboot: reboots are SIMULATED (the session restarts as a new \
                     boot); for trying casement out on a workstation, never on a real device"
                );
                let summary =
                    casement_agent::try_out::run_simulating_reboots(config, shutdown_signal())
                        .await?;
                info!(simulated_reboots = summary.reboots, "stopped");
                return Ok(ExitCode::SUCCESS);
            }
            let agent = Agent::new(config)?;
            match agent.run(shutdown_signal()).await? {
                RunOutcome::Shutdown | RunOutcome::Rebooted(_) => Ok(ExitCode::SUCCESS),
            }
        }
        #[cfg(feature = "simulate")]
        Command::Simulate(args) => {
            let temp;
            let state_dir = match &args.state_dir {
                Some(dir) => dir.clone(),
                None => {
                    temp = tempfile::tempdir().context("cannot create a state directory")?;
                    temp.path().to_path_buf()
                }
            };
            let config = args.into_config(state_dir)?;
            let simulation = Simulation::start(config).await?;
            info!(
                devices = simulation.devices().len(),
                "simulating; Ctrl-C to stop"
            );
            shutdown_signal().await;
            let reboots = simulation.ground_truth().records().len();
            simulation.shutdown().await;
            info!(reboots, "simulation stopped");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGINT or SIGTERM; a second signal exits at once.
async fn shutdown_signal() {
    casement_iothub::signal::shutdown_signal().await;
    info!("shutting down (again to force)");
    tokio::spawn(async {
        casement_iothub::signal::shutdown_signal().await;
        warn!("forced exit");
        std::process::exit(130);
    });
}
