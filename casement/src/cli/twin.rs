//! IoT-Hub-style helpers that work against any hub: `casement query` and `casement twin show`.

use std::io::Write;
use std::sync::Arc;

use casement_policy::maintenance;

use super::client_args::{ClientArgs, runtime};
use super::{EXIT_INPUT, EXIT_OK};

/// Flags of `casement query`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The query is checked locally first (a syntax error names its column and exits 2), then sent to
the hub's POST /devices/query; every page is fetched and the results are printed as one JSON
array.

Examples:
  casement query \"SELECT * FROM devices WHERE tags.role = 'gateway'\"
  casement query \"SELECT properties.reported.maintenance.status AS status, COUNT() AS n FROM devices GROUP BY properties.reported.maintenance.status\"")]
pub struct QueryArgs {
    /// An IoT Hub query: SELECT … FROM devices [WHERE …] [GROUP BY …].
    #[arg(value_name = "QUERY")]
    pub query: String,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// `casement twin <COMMAND>`.
#[derive(Debug, clap::Args)]
pub struct TwinArgs {
    /// What to do with the twin.
    #[command(subcommand)]
    pub command: TwinCommand,
}

/// The `twin` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TwinCommand {
    /// Print a device's twin (tags, desired and reported properties) as JSON.
    Show(TwinShowArgs),
}

/// Flags of `casement twin show`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  casement twin show store-0042-gw")]
pub struct TwinShowArgs {
    /// The device id.
    #[arg(value_name = "DEVICE")]
    pub device: String,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// Runs `casement query`.
pub fn query(args: &QueryArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    if let Err(e) = casement_iothub::query::parse(&args.query) {
        writeln!(err, "casement: bad query: {e}")?;
        writeln!(err, "  {}", args.query)?;
        writeln!(err, "  {}^", " ".repeat(e.column.saturating_sub(1)))?;
        return Ok(EXIT_INPUT);
    }
    let client = args
        .hub
        .client(Arc::new(casement_policy::SystemClock), err)?;
    let items = runtime()?.block_on(client.query_all(&args.query))?;
    writeln!(out, "{}", serde_json::to_string_pretty(&items)?)?;
    Ok(EXIT_OK)
}

/// Runs `casement twin …`.
pub fn twin(args: &TwinArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    match &args.command {
        TwinCommand::Show(show) => {
            let client = show
                .hub
                .client(Arc::new(casement_policy::SystemClock), err)?;
            let twin = runtime()?.block_on(client.twin(&show.device))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&twin)?)?;
            let reported = serde_json::Value::Object(twin.reported());
            if let Some(n) = maintenance::simulated_reboots(&reported) {
                writeln!(
                    err,
                    "{}: its agent SIMULATES reboots (--simulate-reboot; {n} so far): nothing was \
                     really rebooted",
                    show.device
                )?;
            }
            if let Some(forced) = maintenance::forced_reboot(&reported) {
                let at = forced
                    .at
                    .map_or_else(|| "at an unknown time".to_owned(), |t| format!("at {t}"));
                let reason = forced.reason;
                writeln!(
                    err,
                    "{}: the last reboot ({at}) was FORCED outside the window: {reason}",
                    show.device
                )?;
            }
            Ok(EXIT_OK)
        }
    }
}
