//! The `casement-agent` command line: raw flags (clap) and their conversion into the validated
//! configurations the library runs on. `main` stays thin.

use std::path::PathBuf;
#[cfg(feature = "simulate")]
use std::time::Duration;

use casement_iothub::connection_string::ConnectionStringError;
use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, RunFlags};
#[cfg(feature = "simulate")]
use {
    crate::config::Endpoint, crate::simulate::SimulationConfig,
    casement_iothub::connection_string::ServiceConnectionString,
    casement_policy::duration::parse_duration, chrono::TimeDelta, chrono_tz::Tz,
};

/// casement-agent: applies maintenance policies, reports its window, and reboots only inside it.
#[derive(Debug, Parser)]
#[command(name = "casement-agent", version, about, long_about = None)]
pub struct Cli {
    /// Log filter: a level, or `target=level` pairs (e.g. `info` or `info,casement_agent=debug`).
    #[arg(long, global = true, env = "CASEMENT_LOG", default_value = "info")]
    pub log: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent for this device.
    Run(RunArgs),
    /// Run many simulated devices against a hub (demos and load tests).
    #[cfg(feature = "simulate")]
    Simulate(SimulateArgs),
}

/// `casement-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The device connection string (HostName=…;DeviceId=…;SharedAccessKey=…).
    #[arg(long, env = "IOTHUB_DEVICE_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
    /// A TOML config file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// PEM file of CA certificates to trust instead of the system roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Where to connect: mqtts://HOST:PORT (default: the connection string's host, port 8883)
    /// or, for a local hub only, plain mqtt://HOST:PORT (default port 1883).
    #[arg(long, value_name = "URL")]
    pub mqtt_endpoint: Option<String>,
    /// Where the agent keeps its state [default: /var/lib/casement-agent].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The device's IANA time zone [default: the system zone].
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// The reboot command, split on whitespace and run without a shell
    /// [default: "systemctl reboot"]. For arguments with spaces use reboot_command in --config.
    #[arg(long, value_name = "COMMAND")]
    pub reboot_command: Option<String>,
    /// Try-it-out mode for a workstation: when a reboot is accepted, do not run a reboot
    /// command; restart the session as a new (simulated) boot instead, logging each one as
    /// SIMULATED. A real device leaves this off (it needs a reboot command, a state directory
    /// that survives reboots, and the kernel's boot id).
    #[arg(long, conflicts_with = "reboot_command")]
    pub simulate_reboot: bool,
    /// Report window openings and closings up to this late, by a delay of this device's own
    /// (a hash of its id over [0, DURATION), capped at half of the window's time to start a
    /// reboot), so a fleet whose windows open at the same instant does not report at that
    /// instant and over the hub's twin-update quota. 0s reports on the instant
    /// [default: 30s; report_jitter in --config].
    #[arg(long, value_name = "DURATION")]
    pub report_jitter: Option<String>,
}

impl RunArgs {
    /// The raw flags for [`crate::config::AgentConfig::resolve`] (`--simulate-reboot` is read
    /// by the caller).
    pub fn into_flags(self) -> RunFlags {
        RunFlags {
            connection_string: self.connection_string,
            config: self.config,
            ca: self.ca,
            mqtt_endpoint: self.mqtt_endpoint,
            state_dir: self.state_dir,
            timezone: self.timezone,
            reboot_command: self
                .reboot_command
                .map(|command| command.split_whitespace().map(str::to_owned).collect()),
            report_jitter: self.report_jitter,
        }
    }
}

/// `casement-agent simulate`.
#[cfg(feature = "simulate")]
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// How many devices to simulate, named PREFIX0000, PREFIX0001, … in --zones round-robin.
    #[arg(long, default_value_t = 10, conflicts_with = "plan")]
    pub devices: usize,
    /// Simulate exactly these devices instead: a JSON array of
    /// {"id": "…", "zone": "Europe/Amsterdam", "tags": {"role": "gateway"}} (tags optional;
    /// --tag adds to every device's).
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// The hub's service connection string (needs registry write and service connect).
    #[arg(long, env = "IOTHUB_CONNECTION_STRING", hide_env_values = true)]
    pub hub: String,
    /// The hub's REST base URL [default: https://{HostName}].
    #[arg(long, value_name = "URL")]
    pub hub_url: Option<String>,
    /// Where devices connect [default: mqtts://{HostName}:8883].
    #[arg(long, value_name = "URL")]
    pub mqtt_endpoint: Option<String>,
    /// PEM file of CA certificates to trust (MQTT and REST).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// A tag every device gets, as key=value (repeatable), e.g. --tag role=gateway.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Comma-separated IANA zones, assigned round-robin (each device is tagged zone=…).
    #[arg(
        long,
        value_name = "ZONES",
        default_value = "UTC",
        conflicts_with = "plan"
    )]
    pub zones: String,
    /// Each device's clock is off by a random amount up to this, either way (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    pub clock_skew: Option<String>,
    /// How long a simulated reboot keeps a device offline.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub reboot_time: String,
    /// Device ids are PREFIX0000, PREFIX0001, …
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "sim-",
        conflicts_with = "plan"
    )]
    pub device_prefix: String,
    /// Parent of the per-device state directories [default: a temporary directory].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Append every simulated reboot to this JSON-lines file.
    #[arg(long, value_name = "FILE")]
    pub ground_truth: Option<PathBuf>,
    /// Seed for the clock-skew draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// A flag value that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--tag` is not `key=value`.
    #[error("--tag {0:?}: expected key=value, e.g. role=gateway")]
    Tag(String),
    /// A zone in `--zones` is unknown.
    #[error("--zones: {0}")]
    Zone(casement_policy::zone::ZoneError),
    /// A duration flag does not parse.
    #[error("--{flag} {input:?}: {message}")]
    Duration {
        /// The flag.
        flag: &'static str,
        /// The input.
        input: String,
        /// What is wrong.
        message: String,
    },
    /// `--hub` does not parse.
    #[error("--hub: {0}")]
    Hub(ConnectionStringError),
    /// `--mqtt-endpoint` does not parse.
    #[error("--mqtt-endpoint: {0}")]
    Endpoint(ConfigError),
    /// `--plan` cannot be read or is not a plan.
    #[error("--plan {path}: {message}")]
    Plan {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what would be right.
        message: String,
    },
}

#[cfg(feature = "simulate")]
impl SimulateArgs {
    /// Validates the flags into a [`SimulationConfig`] whose devices keep state under `state_dir`.
    pub fn into_config(self, state_dir: PathBuf) -> Result<SimulationConfig, CliError> {
        let hub: ServiceConnectionString = self.hub.trim().parse().map_err(CliError::Hub)?;
        let tags: Vec<(String, String)> = self
            .tags
            .iter()
            .map(|tag| match tag.split_once('=') {
                Some((key, value)) if !key.trim().is_empty() => {
                    Ok((key.trim().to_owned(), value.trim().to_owned()))
                }
                _ => Err(CliError::Tag(tag.clone())),
            })
            .collect::<Result<_, _>>()?;
        let mut devices = match &self.plan {
            Some(path) => read_plan(path)?,
            None => {
                let mut zones = self
                    .zones
                    .split(',')
                    .map(str::trim)
                    .filter(|zone| !zone.is_empty())
                    .map(|zone| casement_policy::zone::parse_zone(zone).map_err(CliError::Zone))
                    .collect::<Result<Vec<Tz>, _>>()?;
                if zones.is_empty() {
                    zones = vec![Tz::UTC];
                }
                crate::simulate::numbered(&self.device_prefix, self.devices, &zones)
            }
        };
        for device in &mut devices {
            for (key, value) in &tags {
                device.tags.insert(key.clone(), value.clone());
            }
        }
        let mut config = SimulationConfig::new(hub, devices, state_dir);
        config.hub_url = self.hub_url;
        config.mqtt_endpoint = self
            .mqtt_endpoint
            .map(|text| text.parse::<Endpoint>())
            .transpose()
            .map_err(CliError::Endpoint)?;
        config.ca = self.ca;
        if let Some(skew) = &self.clock_skew {
            let duration = duration_flag("clock-skew", skew)?;
            config.max_skew = TimeDelta::from_std(duration).unwrap_or(TimeDelta::zero());
        }
        config.reboot_time = duration_flag("reboot-time", &self.reboot_time)?;
        config.ground_truth = self.ground_truth;
        config.seed = self.seed;
        Ok(config)
    }
}

/// Reads a `--plan` file: a JSON array of `{"id", "zone", "tags"}`.
#[cfg(feature = "simulate")]
fn read_plan(path: &std::path::Path) -> Result<Vec<crate::simulate::PlannedDevice>, CliError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        id: String,
        zone: String,
        #[serde(default)]
        tags: std::collections::BTreeMap<String, String>,
    }
    let fail = |message: String| CliError::Plan {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let entries: Vec<Entry> = serde_json::from_str(&text).map_err(|e| {
        fail(format!(
            "line {}, column {}: {e}; expected a JSON array of {{\"id\": \"dev-1\", \"zone\": \"Europe/Amsterdam\", \"tags\": {{\"role\": \"gateway\"}}}}",
            e.line(),
            e.column()
        ))
    })?;
    if entries.is_empty() {
        return Err(fail("the plan lists no devices".into()));
    }
    entries
        .into_iter()
        .enumerate()
        .map(|(n, entry)| {
            let zone = casement_policy::zone::parse_zone(&entry.zone)
                .map_err(|e| fail(format!("device {} ({:?}): {e}", n + 1, entry.id)))?;
            Ok(crate::simulate::PlannedDevice {
                id: entry.id,
                zone,
                tags: entry.tags,
            })
        })
        .collect()
}

#[cfg(feature = "simulate")]
fn duration_flag(flag: &'static str, input: &str) -> Result<Duration, CliError> {
    parse_duration(input).map_err(|err| CliError::Duration {
        flag,
        input: input.to_owned(),
        message: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_flags_split_the_reboot_command_without_a_shell() {
        let cli = Cli::try_parse_from([
            "casement-agent",
            "run",
            "--connection-string",
            "HostName=h;DeviceId=d;SharedAccessKey=a2V5",
            "--reboot-command",
            "/sbin/shutdown -r now",
            "--mqtt-endpoint",
            "mqtt://127.0.0.1:1883",
        ])
        .unwrap();
        #[allow(irrefutable_let_patterns)] // without the `simulate` feature, `run` is all there is
        let Command::Run(args) = cli.command else {
            panic!("expected run")
        };
        let flags = args.into_flags();
        assert_eq!(
            flags.reboot_command.unwrap(),
            ["/sbin/shutdown", "-r", "now"]
        );
        assert_eq!(
            flags.mqtt_endpoint.as_deref(),
            Some("mqtt://127.0.0.1:1883")
        );
    }

    #[test]
    #[cfg(feature = "simulate")]
    fn simulate_flags_become_a_config() {
        let cli = Cli::try_parse_from([
            "casement-agent",
            "simulate",
            "--devices",
            "3",
            "--hub",
            "HostName=127.0.0.1;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5",
            "--tag",
            "role=gateway",
            "--zones",
            "Europe/Amsterdam, Asia/Tokyo",
            "--clock-skew",
            "30s",
            "--reboot-time",
            "1m",
        ])
        .unwrap();
        let Command::Simulate(args) = cli.command else {
            panic!("expected simulate")
        };
        let config = args.into_config(PathBuf::from("/tmp/sim")).unwrap();
        let ids: Vec<&str> = config.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["sim-0000", "sim-0001", "sim-0002"]);
        let zones: Vec<Tz> = config.devices.iter().map(|d| d.zone).collect();
        assert_eq!(
            zones,
            [
                chrono_tz::Europe::Amsterdam,
                chrono_tz::Asia::Tokyo,
                chrono_tz::Europe::Amsterdam
            ]
        );
        for device in &config.devices {
            assert_eq!(device.tags["role"], "gateway", "{}", device.id);
        }
        assert_eq!(config.max_skew, TimeDelta::seconds(30));
        assert_eq!(config.reboot_time, Duration::from_secs(60));
    }

    #[test]
    #[cfg(feature = "simulate")]
    fn bad_simulate_flags_say_which_flag() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "casement-agent",
                "simulate",
                "--hub",
                "HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5",
            ];
            argv.extend_from_slice(extra);
            let Command::Simulate(args) = Cli::try_parse_from(argv).unwrap().command else {
                unreachable!()
            };
            args.into_config(PathBuf::from("/tmp/sim"))
                .unwrap_err()
                .to_string()
        };
        assert!(parse(&["--tag", "role"]).starts_with("--tag"));
        assert!(parse(&["--zones", "Mars/Olympus"]).starts_with("--zones"));
        assert!(parse(&["--reboot-time", "soon"]).starts_with("--reboot-time"));
        assert!(parse(&["--plan", "/nonexistent/plan.json"]).starts_with("--plan"));
    }

    #[test]
    #[cfg(feature = "simulate")]
    fn a_plan_file_names_the_devices_and_a_bad_one_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let parse = |text: &str| {
            let path = dir.path().join("plan.json");
            std::fs::write(&path, text).unwrap();
            let argv = [
                "casement-agent",
                "simulate",
                "--hub",
                "HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5",
                "--plan",
                path.to_str().unwrap(),
                "--tag",
                "env=lab",
            ];
            let Command::Simulate(args) = Cli::try_parse_from(argv).unwrap().command else {
                unreachable!()
            };
            args.into_config(PathBuf::from("/tmp/sim"))
        };
        let config = parse(
            r#"[{"id": "store-17-gw", "zone": "Europe/Lisbon", "tags": {"role": "gateway"}},
                {"id": "store-18-pos", "zone": "America/New_York"}]"#,
        )
        .unwrap();
        assert_eq!(
            config.devices,
            [
                crate::simulate::PlannedDevice::new("store-17-gw", chrono_tz::Europe::Lisbon)
                    .with_tag("role", "gateway")
                    .with_tag("env", "lab"),
                crate::simulate::PlannedDevice::new("store-18-pos", chrono_tz::America::New_York)
                    .with_tag("env", "lab"),
            ]
        );
        let err = parse(r#"[{"id": "a", "zone": "Mars/Olympus"}]"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("device 1 (\"a\")") && err.contains("Mars/Olympus"),
            "{err}"
        );
        let err = parse("[{\"id\": \"a\",\n \"zone\": 7}]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2, column"), "{err}");
        let err = parse("[]").unwrap_err().to_string();
        assert!(err.contains("lists no devices"), "{err}");
    }
}
