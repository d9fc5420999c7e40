//! `casement reboot <ID> --force --reason TEXT`: the audited emergency override. The agent
//! reboots outside its window and reports `forced` and `reason` in `iothubDM.reboot`, which
//! `casement twin show` and the report show ([`casement_policy::maintenance::forced_reboot`]).

use std::io::Write;

use casement_iothub::rest::{DEFAULT_RESPONSE_TIMEOUT_SECS, MethodRequest};
use casement_policy::maintenance::{REBOOT_METHOD, RebootAnswer, RebootPayload};

use super::client_args::ClientArgs;
use super::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK};

/// Flags of `casement reboot`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Reboots happen inside maintenance windows through `casement run`. This is the emergency
override: the device reboots now, whatever its window, and records that it was forced and why
in its twin (reported.iothubDM.reboot.forced and .reason), where `casement twin show` and
`casement report` show it.

Exit codes: 0 the device accepted, 1 it refused (the answer says why), 2 bad input or the
device is unknown or offline, 3 the hub could not be reached.

Examples:
  casement reboot store-0042-gw --force --reason \"INC-1234: kernel hotfix\"")]
pub struct Args {
    /// The device id.
    #[arg(value_name = "ID")]
    pub device: String,
    /// Reboot outside the maintenance window (required: this command only forces).
    #[arg(long, required = true)]
    pub force: bool,
    /// Why, for the audit trail (kept in the twin).
    #[arg(long, required = true, value_name = "TEXT")]
    pub reason: String,
    /// Seconds to wait for the device's answer.
    #[arg(long, default_value_t = DEFAULT_RESPONSE_TIMEOUT_SECS, value_name = "S")]
    pub timeout: u64,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// Runs `casement reboot`.
pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let payload = match RebootPayload::forced(&args.reason) {
        Ok(p) => p,
        Err(e) => {
            writeln!(err, "casement: --reason: {e}")?;
            return Ok(EXIT_INPUT);
        }
    };
    let request = match super::invoke::request(
        REBOOT_METHOD,
        Some(&payload.to_json().to_string()),
        args.timeout,
        0,
    ) {
        Ok(r) => r,
        Err(e) => {
            writeln!(err, "casement: {e}")?;
            return Ok(EXIT_INPUT);
        }
    };
    let request: MethodRequest = request;
    let Some(response) = super::invoke::invoke(&args.hub, &args.device, &request, err)? else {
        return Ok(EXIT_INPUT);
    };
    let answer = match RebootAnswer::from_json(&response.payload) {
        Ok(a) => a,
        Err(e) => {
            writeln!(
                err,
                "casement: {} answered {} with something other than a casement-agent reboot \
                 answer ({e}): {}",
                args.device, response.status, response.payload
            )?;
            return Ok(EXIT_FINDINGS);
        }
    };
    if answer.accepted {
        writeln!(
            out,
            "{} accepted the forced reboot (reason: {}); `casement twin show {}` shows it \
             once the device is back.",
            args.device, args.reason, args.device
        )?;
        Ok(EXIT_OK)
    } else {
        writeln!(
            err,
            "casement: {} refused the forced reboot: {}",
            args.device,
            answer.message.as_deref().unwrap_or("no reason given")
        )?;
        Ok(EXIT_FINDINGS)
    }
}
