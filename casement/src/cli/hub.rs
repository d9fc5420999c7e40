//! `casement hub`: the local IoT Hub ([`casement_hub`]) in the foreground, until Ctrl-C.

use std::io::Write;

use super::EXIT_OK;
use super::client_args::{init_logging, runtime};

/// The long help of `casement hub`.
pub const ABOUT: &str = "Run a local IoT Hub: what Azurite is for Azure Storage, for Azure IoT Hub.\n\n\
        It speaks IoT Hub's device protocol (MQTT 3.1.1, over TLS and plain) and its service \
        REST API (HTTPS and plain HTTP): a device registry, twins with versions and ETags, \
        desired-property notifications, direct methods, the query language, SAS authentication \
        with the standard shared access policies, IoT Hub's limits and, if asked, a tier's \
        throttling. The official Azure IoT SDKs, casement-agent and casement work against it \
        unchanged. It generates a CA and a server certificate on first start, prints the \
        `iothubowner` connection string and writes it to <data-dir>/connection.env, which \
        `casement apply`, `run` and `report` find on their own. Not for production: point the \
        same agent and scheduler at Azure IoT Hub for that.";

/// Flags of `casement hub`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  casement hub                                  # MQTT 8883 (TLS) and 1883, HTTPS 443, HTTP 8080
  casement hub --https-addr 127.0.0.1:8443      # without the privileges port 443 needs on Linux
  casement hub --in-memory --throttle S1        # a throwaway hub that answers 429 like an S1 hub
  casement hub --data-dir /var/lib/casement-hub --alias hub.lab.example

A port already in use stops the start with the flag that moves it (or the one that turns the
listener off). Stop with Ctrl-C (again to force).")]
pub struct Args {
    /// The hub's settings.
    #[command(flatten)]
    pub hub: casement_hub::HubArgs,
}

/// Runs `casement hub` until SIGINT or SIGTERM.
///
/// A current-thread runtime: [`super::run`] holds the stdout and stderr locks while a command
/// runs, and the hub's log lines must not wait for them on another thread.
pub fn run(args: &Args, _out: &mut dyn Write, _err: &mut dyn Write) -> anyhow::Result<u8> {
    init_logging("info");
    runtime()?.block_on(casement_hub::run_cli(
        args.hub.clone(),
        casement_hub::shutdown_signal(),
    ))?;
    Ok(EXIT_OK)
}
