//! `casement device add|list|show|remove|import`: the hub's identity registry from the command
//! line, through [`casement_client::registry`].

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use casement_client::{HubTarget, NewDevice, ServiceClient};
use casement_iothub::connection_string::{DeviceAuth, DeviceConnectionString};
use casement_iothub::rest::{Device, validate_device_id};
use serde_json::{Map, Value};

use super::client_args::{ClientArgs, runtime};
use super::{EXIT_FINDINGS, EXIT_INPUT, EXIT_OK};

/// `casement device <COMMAND>`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: DeviceCommand,
}

/// The `device` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Register a device; print its connection string and the `casement-agent run` line for it.
    Add(AddArgs),
    /// List devices (all, or those meeting --where), one line each.
    List(ListArgs),
    /// Print a device's identity (status, keys) and its connection string as JSON.
    Show(ShowArgs),
    /// Delete a device (its identity and twin).
    Remove(ShowArgs),
    /// Register many devices from a JSON-lines file, 100 per registry call.
    Import(ImportArgs),
}

/// Flags of `casement device add`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints the device connection string (a secret: the device authenticates with it) and a
`casement-agent run` line to start the agent with; for a local `casement hub` the line carries
its device endpoint (--mqtt-endpoint) and CA (--ca) from connection.env.

Examples:
  casement device add store-0042-gw --tag role=gateway --tag region=eu
  casement device add lab-1 --connection-string-only")]
pub struct AddArgs {
    /// The device id (1–128 of A–Z a–z 0–9 - . % _ * ? ! ( ) , : = @ $ ').
    #[arg(value_name = "ID")]
    pub id: String,
    /// A twin tag, key=value (repeatable). Values that parse as JSON numbers or booleans are
    /// stored as such.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Print only the connection string (for scripts).
    #[arg(long)]
    pub connection_string_only: bool,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// Flags of `casement device list`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  casement device list
  casement device list --where \"tags.role = 'gateway'\"
  casement device list --where \"connectionState = 'Connected'\" --json")]
pub struct ListArgs {
    /// A query condition (what follows WHERE in SELECT * FROM devices WHERE …).
    #[arg(long = "where", value_name = "CONDITION")]
    pub condition: Option<String>,
    /// Print the twins as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// Flags of `casement device show` and `remove`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  casement device show store-0042-gw
  casement device remove store-0042-gw")]
pub struct ShowArgs {
    /// The device id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// Flags of `casement device import`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
FILE holds one JSON object per line (blank lines and lines starting with # are skipped):
  {\"id\": \"store-0001-gw\", \"tags\": {\"role\": \"gateway\", \"region\": \"eu\"}}
  {\"id\": \"store-0002-gw\", \"status\": \"disabled\"}
Fields: id (required), tags (an object), status (enabled, the default, or disabled).

The whole file is checked first — syntax, ids, duplicates, ids already registered — and any
problem is reported as FILE:LINE:COLUMN with exit code 2 and nothing sent. Then the devices are
registered with the registry's bulk call, 100 per call. `casement device show ID` prints a
device's connection string.

Examples:
  casement device import fleet.jsonl")]
pub struct ImportArgs {
    /// The JSON-lines file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The hub.
    #[command(flatten)]
    pub hub: ClientArgs,
}

/// Runs `casement device …`.
pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    match &args.command {
        DeviceCommand::Add(a) => add(a, out, err),
        DeviceCommand::List(a) => list(a, out, err),
        DeviceCommand::Show(a) => show(a, out, err),
        DeviceCommand::Remove(a) => remove(a, out, err),
        DeviceCommand::Import(a) => import(a, out, err),
    }
}

fn client(hub: &ClientArgs, err: &mut dyn Write) -> anyhow::Result<ServiceClient> {
    hub.client(Arc::new(casement_policy::SystemClock), err)
}

/// `key=value` flags as twin tags.
fn parse_tags(tags: &[String]) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    for tag in tags {
        let Some((key, value)) = tag.split_once('=') else {
            return Err(format!(
                "--tag {tag:?}: expected key=value, e.g. role=gateway"
            ));
        };
        let key = key.trim();
        if key.is_empty() || key.starts_with('$') || key.contains(['.', ' ']) {
            return Err(format!(
                "--tag {tag:?}: the key must be a non-empty name without '.', ' ' or a leading '$'"
            ));
        }
        let value = value.trim();
        let value = match serde_json::from_str::<Value>(value) {
            Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
            _ => Value::String(value.to_owned()),
        };
        map.insert(key.to_owned(), value);
    }
    Ok(map)
}

/// The device's connection string: the hub's HostName, the id, the primary key.
fn connection_string(target: &HubTarget, device: &Device) -> Option<String> {
    let key = device
        .authentication
        .as_ref()?
        .symmetric_key
        .as_ref()?
        .primary_key
        .clone()
        .filter(|k| !k.is_empty())?;
    Some(
        DeviceConnectionString {
            host_name: target.connection.host_name.clone(),
            device_id: device.device_id.clone(),
            module_id: None,
            auth: DeviceAuth::SharedAccessKey(key),
            gateway_host_name: None,
        }
        .to_string(),
    )
}

/// The `casement-agent run` line for a device: with the local hub's device endpoint, CA and
/// `--simulate-reboot` (a workstation) when `target` is the hub whose connection file is
/// `local_file`.
pub fn agent_command(
    target: &HubTarget,
    ca: Option<&Path>,
    local_file: &Path,
    device: &str,
    connection_string: &str,
) -> String {
    let mut line = format!("casement-agent run --connection-string '{connection_string}'");
    let local = HubTarget::resolve(None, None, None, local_file)
        .ok()
        .filter(|l| l.connection.host_name == target.connection.host_name)
        .and_then(|_| casement_client::local_device_endpoint(local_file));
    let mut ca = ca.map(Path::to_path_buf);
    let is_local = local.is_some();
    if let Some(local) = local {
        if let Some(endpoint) = local.mqtt_endpoint {
            line.push_str(&format!(" --mqtt-endpoint {endpoint}"));
        }
        ca = ca.or(local.ca);
    }
    if let Some(ca) = ca {
        let ca = std::fs::canonicalize(&ca).unwrap_or(ca);
        line.push_str(&format!(" --ca {}", ca.display()));
    }
    line.push_str(&format!(" --state-dir ./.casement/agent/{device}"));
    if is_local {
        // Trying it out on a workstation; a real device reboots with --reboot-command.
        line.push_str(" --simulate-reboot");
    }
    line
}

fn add(args: &AddArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    if let Err(e) = validate_device_id(&args.id) {
        writeln!(err, "casement: {e}")?;
        return Ok(EXIT_INPUT);
    }
    let tags = match parse_tags(&args.tags) {
        Ok(t) => t,
        Err(e) => {
            writeln!(err, "casement: {e}")?;
            return Ok(EXIT_INPUT);
        }
    };
    let client = client(&args.hub, err)?;
    let rt = runtime()?;
    let device = match rt.block_on(client.create_device(&args.id, &tags)) {
        Ok(d) => d,
        Err(e) if e.status() == Some(409) => {
            writeln!(
                err,
                "casement: device {} is already registered; `casement device show {}` prints its \
                 connection string, `casement device remove {}` deletes it",
                args.id, args.id, args.id
            )?;
            return Ok(EXIT_INPUT);
        }
        Err(e) => return Err(e.into()),
    };
    let device = match connection_string(client.target(), &device) {
        Some(_) => device,
        // Some hubs leave the keys out of the PUT answer.
        None => rt.block_on(client.device(&args.id))?,
    };
    let Some(cs) = connection_string(client.target(), &device) else {
        anyhow::bail!("the hub registered {} but returned no key for it", args.id);
    };
    if args.connection_string_only {
        writeln!(out, "{cs}")?;
        return Ok(EXIT_OK);
    }
    writeln!(out, "Registered device {}.", args.id)?;
    writeln!(
        out,
        "\nConnection string (a secret: the device authenticates with it):\n  {cs}"
    )?;
    let agent = agent_command(
        client.target(),
        args.hub.ca.as_deref(),
        &args.hub.local_hub_file(),
        &args.id,
        &cs,
    );
    writeln!(
        out,
        "\nStart the agent (--simulate-reboot on a workstation; a real device drops it and \
         reboots with --reboot-command):\n  {agent}"
    )?;
    Ok(EXIT_OK)
}

fn list(args: &ListArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    if let Some(condition) = &args.condition {
        let sql = casement_client::registry::list_query(Some(condition));
        if let Err(e) = casement_iothub::query::parse(&sql) {
            writeln!(err, "casement: bad --where condition: {e}")?;
            writeln!(err, "  {sql}")?;
            writeln!(err, "  {}^", " ".repeat(e.column.saturating_sub(1)))?;
            return Ok(EXIT_INPUT);
        }
    }
    let client = client(&args.hub, err)?;
    let twins = runtime()?.block_on(client.list_devices(args.condition.as_deref()))?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&twins)?)?;
        return Ok(EXIT_OK);
    }
    let mut table = super::plain_table(["DEVICE", "STATUS", "CONNECTION", "TAGS"]);
    for twin in &twins {
        let tags = twin
            .tags
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(",");
        let status = serde_json::to_value(twin.status)?;
        let connection = serde_json::to_value(twin.connection_state)?;
        table.add_row([
            twin.device_id.clone(),
            status.as_str().unwrap_or("-").to_owned(),
            connection.as_str().unwrap_or("-").to_owned(),
            tags,
        ]);
    }
    writeln!(out, "{}", super::render(&table))?;
    writeln!(
        err,
        "{} device{}",
        twins.len(),
        if twins.len() == 1 { "" } else { "s" }
    )?;
    Ok(EXIT_OK)
}

/// Says what to do about an unknown device; `None` for other errors.
fn not_found(e: &casement_client::ClientError, id: &str) -> Option<String> {
    e.is_device_not_found().then(|| {
        format!("casement: no device {id} on this hub (`casement device list` shows the devices)")
    })
}

fn show(args: &ShowArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let client = client(&args.hub, err)?;
    let device = match runtime()?.block_on(client.device(&args.id)) {
        Ok(d) => d,
        Err(e) => match not_found(&e, &args.id) {
            Some(message) => {
                writeln!(err, "{message}")?;
                return Ok(EXIT_INPUT);
            }
            None => return Err(e.into()),
        },
    };
    let mut value = serde_json::to_value(&device)?;
    if let (Some(cs), Value::Object(map)) =
        (connection_string(client.target(), &device), &mut value)
    {
        map.insert("connectionString".into(), Value::String(cs));
    }
    writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    Ok(EXIT_OK)
}

fn remove(args: &ShowArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let client = client(&args.hub, err)?;
    match runtime()?.block_on(client.delete_device(&args.id)) {
        Ok(()) => {
            writeln!(out, "Removed device {}.", args.id)?;
            Ok(EXIT_OK)
        }
        Err(e) => match not_found(&e, &args.id) {
            Some(message) => {
                writeln!(err, "{message}")?;
                Ok(EXIT_INPUT)
            }
            None => Err(e.into()),
        },
    }
}

/// One line of an import file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportLine {
    id: String,
    #[serde(default)]
    tags: Map<String, Value>,
    #[serde(default)]
    status: Option<String>,
}

/// Reads and checks an import file: every problem as `FILE:LINE:COLUMN: message`.
pub fn read_import_file(path: &Path, text: &str) -> Result<Vec<NewDevice>, Vec<String>> {
    let mut devices = Vec::new();
    let mut problems = Vec::new();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let file = path.display();
    for (index, line) in text.lines().enumerate() {
        let n = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let entry: ImportLine = match serde_json::from_str(trimmed) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!(
                    "{file}:{n}:{}: {e} (expected {{\"id\": \"…\", \"tags\": {{…}}, \"status\": \"enabled\"}})",
                    indent + e.column().max(1)
                ));
                continue;
            }
        };
        let column = indent + trimmed.find(&format!("\"{}\"", entry.id)).unwrap_or(0) + 1;
        if let Err(e) = validate_device_id(&entry.id) {
            problems.push(format!("{file}:{n}:{column}: {e}"));
            continue;
        }
        if let Some(first) = seen.insert(entry.id.clone(), n) {
            problems.push(format!(
                "{file}:{n}:{column}: device {} is already listed on line {first}",
                entry.id
            ));
            continue;
        }
        let disabled = match entry.status.as_deref() {
            None | Some("enabled") => false,
            Some("disabled") => true,
            Some(other) => {
                let column = indent + trimmed.find("\"status\"").unwrap_or(0) + 1;
                problems.push(format!(
                    "{file}:{n}:{column}: status {other:?}: expected \"enabled\" or \"disabled\""
                ));
                continue;
            }
        };
        devices.push(NewDevice {
            id: entry.id,
            tags: entry.tags,
            disabled,
            keys: None,
        });
    }
    if devices.is_empty() && problems.is_empty() {
        problems.push(format!("{file}: no devices in the file"));
    }
    if problems.is_empty() {
        Ok(devices)
    } else {
        Err(problems)
    }
}

fn import(args: &ImportArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<u8> {
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            writeln!(err, "casement: cannot read {}: {e}", args.file.display())?;
            return Ok(EXIT_INPUT);
        }
    };
    let devices = match read_import_file(&args.file, &text) {
        Ok(d) => d,
        Err(problems) => {
            for p in &problems {
                writeln!(err, "{p}")?;
            }
            writeln!(
                err,
                "error: {} problem{} in {}; nothing was sent",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                args.file.display()
            )?;
            return Ok(EXIT_INPUT);
        }
    };
    let client = client(&args.hub, err)?;
    let rt = runtime()?;
    let existing: BTreeSet<String> = rt.block_on(client.device_ids())?;
    let taken: Vec<&str> = devices
        .iter()
        .map(|d| d.id.as_str())
        .filter(|id| existing.contains(*id))
        .collect();
    if !taken.is_empty() {
        writeln!(
            err,
            "error: {} of the devices in {} are already registered: {}; remove them from the \
             file (or from the hub with `casement device remove`); nothing was sent",
            taken.len(),
            args.file.display(),
            taken.join(", ")
        )?;
        return Ok(EXIT_INPUT);
    }
    let outcome = rt.block_on(client.import_devices(&devices))?;
    for f in &outcome.failures {
        writeln!(err, "{}: {} ({})", f.device_id, f.message, f.error_code)?;
    }
    writeln!(
        out,
        "Registered {} of {} devices in {} registry call{}.",
        outcome.created,
        devices.len(),
        outcome.calls,
        if outcome.calls == 1 { "" } else { "s" }
    )?;
    Ok(if outcome.failures.is_empty() {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_with_json_scalars() {
        let tags = parse_tags(&["role=gateway".into(), "floor=3".into(), "lab=true".into()])
            .expect("tags");
        assert_eq!(tags["role"], "gateway");
        assert_eq!(tags["floor"], 3);
        assert_eq!(tags["lab"], true);
        assert!(
            parse_tags(&["role".into()])
                .unwrap_err()
                .contains("key=value")
        );
        assert!(parse_tags(&["a.b=1".into()]).is_err());
    }

    #[test]
    fn import_files_are_checked_whole_with_positions() {
        let path = Path::new("fleet.jsonl");
        let good = "# fleet\n{\"id\": \"a\", \"tags\": {\"role\": \"gw\"}}\n\n{\"id\": \"b\", \"status\": \"disabled\"}\n";
        let devices = read_import_file(path, good).expect("valid");
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].tags["role"], "gw");
        assert!(devices[1].disabled);

        let bad = "{\"id\": \"a\"}\n{\"id\": \"a\"}\n{\"id\": \"b c\"}\n{\"id\": \"d\", \"status\": \"off\"}\n{\"id\": \"e\",}\n{\"name\": \"f\"}\n";
        let problems = read_import_file(path, bad).expect_err("invalid");
        assert_eq!(problems.len(), 5, "{problems:#?}");
        assert!(
            problems[0].starts_with("fleet.jsonl:2:8: device a is already listed on line 1"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].starts_with("fleet.jsonl:3:8: "),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].starts_with("fleet.jsonl:4:13: status \"off\""),
            "{}",
            problems[2]
        );
        assert!(problems[3].starts_with("fleet.jsonl:5:"), "{}", problems[3]);
        assert!(
            problems[4].contains("unknown field `name`"),
            "{}",
            problems[4]
        );
        assert!(read_import_file(path, "\n# nothing\n").is_err());
    }
}
