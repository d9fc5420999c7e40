//! `casement invoke <ID> <METHOD>`: call a direct method on a device and print its answer.

use std::io::Write;
use std::sync::Arc;

use casement_iothub::rest::{
    MAX_CONNECT_TIMEOUT_SECS, MAX_RESPONSE_TIMEOUT_SECS, MIN_RESPONSE_TIMEOUT_SECS, MethodRequest,
};
use serde_json::{Value, json};

use super::client_args::{ClientArgs, runtime};
use super::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK};

/// Flags of `casement invoke`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints {\"status\": N, \"payload\": …} as the device answered. Exit codes: 0 the device answered
2xx, 1 it answered another status, 2 bad input or the device is unknown or offline, 3 the hub
could not be reached.

Examples:
  casement invoke store-0042-gw ping
  casement invoke store-0042-gw reboot --payload '{\"force\": true, \"reason\": \"INC-1234\"}'
  casement invoke store-0042-gw getLog --payload '{\"lines\": 50}' --timeout 60")]
pub struct Args {
    /// The device id.
    #[arg(value_name = "ID")]
    pub device: String,
    /// The method name.
    #[arg(value_name = "METHOD")]
    pub method: String,
    /// The payload, JSON (default null).
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// Seconds to wait for the device's answer (5–300).
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub timeout: u64,
    /// Seconds to wait for an offline device to connect (0–300; 0: it must be online).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub connect_timeout: u64,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// Builds the request, or says what is wrong with the flags.
pub fn request(
    method: &str,
    payload: Option<&str>,
    timeout: u64,
    connect_timeout: u64,
) -> Result<MethodRequest, String> {
    let payload = match payload {
        None => Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| format!("--payload is not JSON: {e} (e.g. --payload '{{\"key\": 1}}')"))?,
    };
    if !(MIN_RESPONSE_TIMEOUT_SECS..=MAX_RESPONSE_TIMEOUT_SECS).contains(&timeout) {
        return Err(format!(
            "--timeout {timeout}: expected {MIN_RESPONSE_TIMEOUT_SECS} to {MAX_RESPONSE_TIMEOUT_SECS} seconds"
        ));
    }
    if connect_timeout > MAX_CONNECT_TIMEOUT_SECS {
        return Err(format!(
            "--connect-timeout {connect_timeout}: expected 0 to {MAX_CONNECT_TIMEOUT_SECS} seconds"
        ));
    }
    let mut request = MethodRequest::new(method, payload, timeout);
    request.connect_timeout_in_seconds = Some(connect_timeout);
    request.validate().map_err(|e| e.to_string())?;
    Ok(request)
}

/// Invokes `request` on `device`; prints what to do when the device is unknown or offline and
/// returns `None` then.
pub(crate) fn invoke(
    hub: &ClientArgs,
    device: &str,
    request: &MethodRequest,
    err: &mut dyn Write,
) -> anyhow::Result<Option<casement_iothub::rest::MethodResponse>> {
    let client = hub.client(Arc::new(casement_policy::SystemClock), err)?;
    match runtime()?.block_on(client.invoke(device, request)) {
        Ok(answer) => Ok(Some(answer)),
        Err(e) if e.is_device_not_found() => {
            writeln!(
                err,
                "casement: no device {device} on this hub (`casement device list` shows the devices)"
            )?;
            Ok(None)
        }
        Err(e) if e.is_device_offline() => {
            writeln!(
                err,
                "casement: device {device} is not connected (or not subscribed to methods); start \
                 its agent, or wait for it with --connect-timeout S"
            )?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs `casement invoke`.
pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let request = match request(
        &args.method,
        args.payload.as_deref(),
        args.timeout,
        args.connect_timeout,
    ) {
        Ok(r) => r,
        Err(e) => {
            writeln!(err, "casement: {e}")?;
            return Ok(EXIT_INPUT);
        }
    };
    let Some(answer) = invoke(&args.hub, &args.device, &request, err)? else {
        return Ok(EXIT_INPUT);
    };
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(&json!({"status": answer.status, "payload": answer.payload}))?
    )?;
    Ok(if (200..300).contains(&answer.status) {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_before_anything_is_sent() {
        let r = request("ping", Some("{\"a\": 1}"), 30, 0).expect("valid");
        assert_eq!(r.payload, json!({"a": 1}));
        assert!(
            request("ping", Some("{a"), 30, 0)
                .unwrap_err()
                .contains("--payload")
        );
        assert!(
            request("ping", None, 1, 0)
                .unwrap_err()
                .contains("--timeout")
        );
        assert!(
            request("ping", None, 30, 301)
                .unwrap_err()
                .contains("--connect-timeout")
        );
        assert!(request("a/b", None, 30, 0).is_err());
    }
}
