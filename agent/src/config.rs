//! The agent's validated configuration, built from flags, the environment and a TOML file.
//!
//! Layers (ripgrep's low/high args): [`crate::cli`] holds the raw flags; [`FileConfig`] is the
//! raw TOML file; [`AgentConfig::resolve`] merges them (flags win over the file) and validates
//! everything into the config the library runs on. Nothing here comes from a twin: the reboot
//! command in particular is local configuration only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use casement_iothub::connection_string::{
    ConnectionStringError, DeviceAuth, DeviceConnectionString,
};
use casement_policy::duration::parse_duration;
use casement_policy::maintenance::DEFAULT_REPORT_JITTER;
use chrono_tz::Tz;
use serde::Deserialize;

use crate::backoff::BackoffPolicy;

/// The reboot command when none is configured.
pub const DEFAULT_REBOOT_COMMAND: &[&str] = &["systemctl", "reboot"];
/// The default MQTT-over-TLS port.
pub const MQTTS_PORT: u16 = 8883;
/// The default plain MQTT port.
pub const MQTT_PORT: u16 = 1883;
/// The MQTT keep-alive the agent asks for (the Node SDK's 180 s).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(180);
/// SAS token lifetime (the SDKs' hour).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How long before expiry the token is renewed (the Node SDK's 15 minutes).
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(900);
/// Config files larger than this are refused.
const MAX_CONFIG_BYTES: u64 = 64 * 1024;

/// Errors building the configuration; each names the flag or file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No connection string anywhere.
    #[error(
        "no device connection string: pass --connection-string, set IOTHUB_DEVICE_CONNECTION_STRING, \
         or put connection_string in the --config file"
    )]
    MissingConnectionString,
    /// The connection string does not parse.
    #[error("invalid device connection string ({origin}): {error}")]
    ConnectionString {
        /// Where it came from.
        origin: String,
        /// What the parser found wrong.
        error: ConnectionStringError,
    },
    /// The connection string authenticates in a way the agent cannot use.
    #[error(
        "the device connection string uses {0}; casement-agent needs SharedAccessKey (it signs and renews its own tokens)"
    )]
    UnsupportedAuth(&'static str),
    /// The config file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is too large to be a config file.
    #[error("the config file {path} is {size} bytes; a config file is at most {max} bytes")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The config file is not valid TOML of the expected shape.
    #[error("invalid config file {path}{location}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// ` line L, column C` when known.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// `--mqtt-endpoint` does not parse.
    #[error(
        "invalid MQTT endpoint {input:?}: {reason} (expected mqtts://host[:port] or mqtt://host[:port])"
    )]
    Endpoint {
        /// The input.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// `--timezone` is not an IANA zone.
    #[error("{origin}: {error}")]
    Timezone {
        /// Where it came from.
        origin: String,
        /// The zone error, with the nearest valid names.
        error: casement_policy::zone::ZoneError,
    },
    /// The reboot command is empty.
    #[error(
        "the reboot command ({origin}) is empty; give a program and its arguments, e.g. [\"systemctl\", \"reboot\"]"
    )]
    EmptyRebootCommand {
        /// Where it came from.
        origin: String,
    },
    /// A duration setting does not parse or is out of range.
    #[error("invalid {setting} {input:?}: {reason}")]
    Duration {
        /// The setting.
        setting: &'static str,
        /// The input.
        input: String,
        /// What is wrong.
        reason: String,
    },
}

/// Plain TCP or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `mqtt://`: plain TCP, only when asked for (local hubs).
    Tcp,
    /// `mqtts://`: TLS, the default.
    Tls,
}

/// Whether a lost connection's reason is a TLS certificate the agent does not trust (an unknown
/// issuer, a wrong name): retrying will not help, `--ca` will.
pub fn is_untrusted_certificate(reason: &str) -> bool {
    reason.contains("invalid peer certificate")
        || reason.contains("UnknownIssuer")
        || reason.contains("NotValidForName")
}

/// What to do about an untrusted hub certificate (logged once, not at every retry).
pub const UNTRUSTED_CERTIFICATE_HINT: &str = "the hub's TLS certificate is not trusted: pass the CA \
    that signed it with --ca FILE (a local `casement hub` prints its CA file at start-up and writes \
    it to connection.env as CASEMENT_CA); retrying quietly until it is";

/// Where the MQTT socket goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// TCP or TLS.
    pub transport: Transport,
    /// Host name or IP address (no brackets); also the TLS server name.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// The default endpoint for a connection string: TLS to `GatewayHostName` (on the port it
    /// carries, or 8883) or to `HostName` on 8883. A port in `HostName` (`localhost:8443`) is
    /// the hub's HTTPS port, where the service REST API and SAS resource URIs live — never its
    /// MQTT port — so it is dropped here; `--mqtt-endpoint` says where MQTT is when not 8883.
    pub fn default_for(connection: &DeviceConnectionString) -> Result<Self, ConfigError> {
        let host = connection.socket_host();
        let from_host_name = connection.gateway_host_name.is_none();
        parse_host_port(host, MQTTS_PORT)
            .map(|(host, port)| Endpoint {
                transport: Transport::Tls,
                host,
                port: if from_host_name { MQTTS_PORT } else { port },
            })
            .map_err(|reason| ConfigError::Endpoint {
                input: host.to_owned(),
                reason,
            })
    }
}

impl Endpoint {
    /// TLS to a connection string's `HostName` on 8883, any port in it dropped (that port is
    /// the hub's HTTPS port, not MQTT's). The simulator's default too.
    pub fn tls_for_host_name(host_name: &str) -> Result<Self, ConfigError> {
        parse_host_port(host_name, MQTTS_PORT)
            .map(|(host, _https_port)| Endpoint {
                transport: Transport::Tls,
                host,
                port: MQTTS_PORT,
            })
            .map_err(|reason| ConfigError::Endpoint {
                input: host_name.to_owned(),
                reason,
            })
    }
}

impl FromStr for Endpoint {
    type Err = ConfigError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ConfigError::Endpoint {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| err("missing the scheme"))?;
        let (transport, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "mqtts" | "ssl" | "tls" => (Transport::Tls, MQTTS_PORT),
            "mqtt" | "tcp" => (Transport::Tcp, MQTT_PORT),
            _ => return Err(err("unknown scheme")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            return Err(err("a path is not allowed"));
        }
        let (host, port) =
            parse_host_port(authority, default_port).map_err(|reason| err(&reason))?;
        Ok(Endpoint {
            transport,
            host,
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.transport {
            Transport::Tcp => "mqtt",
            Transport::Tls => "mqtts",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn parse_host_port(input: &str, default_port: u16) -> Result<(String, u16), String> {
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port {p:?}"))
    };
    let (host, port) = if let Some(rest) = input.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in the host".to_owned())?;
        match after {
            "" => (host, default_port),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, parse_port(port)?),
                None => return Err("unexpected text after ']'".to_owned()),
            },
        }
    } else {
        match input.split_once(':') {
            Some((host, port)) => (host, parse_port(port)?),
            None => (input, default_port),
        }
    };
    if host.is_empty() {
        return Err("empty host".to_owned());
    }
    Ok((host.to_owned(), port))
}

/// The reboot command: a program and its arguments, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebootCommand {
    program: String,
    args: Vec<String>,
}

impl RebootCommand {
    /// A command from its argv; `None` when empty or the program is blank.
    pub fn new(argv: Vec<String>) -> Option<Self> {
        let mut argv = argv.into_iter();
        let program = argv.next().filter(|program| !program.trim().is_empty())?;
        Some(Self {
            program,
            args: argv.collect(),
        })
    }

    /// The program to run.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Its arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The whole argv.
    pub fn argv(&self) -> Vec<&str> {
        std::iter::once(self.program.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect()
    }
}

impl Default for RebootCommand {
    fn default() -> Self {
        Self {
            program: DEFAULT_REBOOT_COMMAND[0].to_owned(),
            args: DEFAULT_REBOOT_COMMAND[1..]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

impl fmt::Display for RebootCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.argv().join(" "))
    }
}

/// The `--config` TOML file. Every key is optional; flags override it.
///
/// ```toml
/// connection_string = "HostName=hub.azure-devices.net;DeviceId=gw-1;SharedAccessKey=…"
/// mqtt_endpoint     = "mqtts://hub.azure-devices.net:8883"
/// ca                = "/etc/casement-agent/ca.pem"
/// state_dir         = "/var/lib/casement-agent"
/// timezone          = "Europe/Amsterdam"
/// reboot_command    = ["systemctl", "reboot"]
/// keep_alive        = "180s"
/// token_lifetime    = "1h"
/// renew_before      = "15m"
/// report_jitter     = "30s"
/// ```
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The device connection string.
    pub connection_string: Option<String>,
    /// `mqtts://host:port` or `mqtt://host:port`.
    pub mqtt_endpoint: Option<String>,
    /// A PEM file of CA certificates to trust instead of the system roots.
    pub ca: Option<PathBuf>,
    /// Where the agent keeps its state.
    pub state_dir: Option<PathBuf>,
    /// The device's IANA zone.
    pub timezone: Option<String>,
    /// The reboot command as an argv list.
    pub reboot_command: Option<Vec<String>>,
    /// MQTT keep-alive (`"180s"`).
    pub keep_alive: Option<String>,
    /// SAS token lifetime (`"1h"`).
    pub token_lifetime: Option<String>,
    /// Renew the token this long before it expires (`"15m"`).
    pub renew_before: Option<String>,
    /// Report window transitions up to this late (`"30s"`; `"0s"` = on the instant).
    pub report_jitter: Option<String>,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_err)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::FileTooLarge {
                path: path.to_path_buf(),
                size,
                max: MAX_CONFIG_BYTES,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err: toml::de::Error| {
            let location = err
                .span()
                .map(|span| {
                    let (line, column) = line_column(text, span.start);
                    format!(" line {line}, column {column}")
                })
                .unwrap_or_default();
            ConfigError::ParseFile {
                path: path.to_path_buf(),
                location,
                message: err.message().to_owned(),
            }
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Flag values for `run`, before validation (what [`crate::cli`] parsed).
#[derive(Debug, Default, Clone)]
pub struct RunFlags {
    /// `--connection-string` / `IOTHUB_DEVICE_CONNECTION_STRING`.
    pub connection_string: Option<String>,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--ca`.
    pub ca: Option<PathBuf>,
    /// `--mqtt-endpoint`.
    pub mqtt_endpoint: Option<String>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--timezone`.
    pub timezone: Option<String>,
    /// `--reboot-command` (argv).
    pub reboot_command: Option<Vec<String>>,
    /// `--report-jitter`.
    pub report_jitter: Option<String>,
}

/// How a reported patch or the twin GET that the hub throttled (429) or failed (5xx) is retried
/// (`AgentConfig::twin_retry`): exponential backoff with full jitter, from up to 1 s doubling
/// to up to 60 s, reset by the next success. IoT Hub's MQTT twin responses carry only a status
/// (no `Retry-After`), so this backoff is the only pace; the request is kept and sent again on
/// the same connection, never dropped.
pub const DEFAULT_TWIN_RETRY: BackoffPolicy = BackoffPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(60),
};

/// The longest `report_jitter` accepted.
pub const MAX_REPORT_JITTER: Duration = Duration::from_secs(600);

/// Where the agent keeps state when nothing says otherwise (systemd's `StateDirectory=`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/casement-agent";

/// The validated configuration of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The device identity and key.
    pub connection: DeviceConnectionString,
    /// Where the MQTT socket goes.
    pub endpoint: Endpoint,
    /// CA certificates to trust (PEM); `None` = the system roots.
    pub ca: Option<PathBuf>,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The device's zone.
    pub timezone: Tz,
    /// The reboot command (local configuration only).
    pub reboot_command: RebootCommand,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// SAS token lifetime.
    pub token_lifetime: Duration,
    /// Renew this long before expiry.
    pub renew_before: Duration,
    /// Reconnect backoff.
    pub backoff: BackoffPolicy,
    /// How late the window's openings and closings may be reported: this device waits its own
    /// share of it (`MaintenancePlan::report_delay`), so a fleet whose windows open together
    /// spreads its reports. Zero reports on the instant.
    pub report_jitter: Duration,
    /// Backoff of a twin GET or reported patch the hub throttled or failed
    /// ([`DEFAULT_TWIN_RETRY`]).
    pub twin_retry: BackoffPolicy,
}

impl AgentConfig {
    /// A config with defaults for everything but the identity, endpoint, state dir and zone.
    pub fn new(
        connection: DeviceConnectionString,
        endpoint: Endpoint,
        state_dir: PathBuf,
        timezone: Tz,
    ) -> Self {
        Self {
            connection,
            endpoint,
            ca: None,
            state_dir,
            timezone,
            reboot_command: RebootCommand::default(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            renew_before: DEFAULT_RENEW_BEFORE,
            backoff: BackoffPolicy::default(),
            report_jitter: DEFAULT_REPORT_JITTER,
            twin_retry: DEFAULT_TWIN_RETRY,
        }
    }

    /// The device id, for logs.
    pub fn device_id(&self) -> &str {
        &self.connection.device_id
    }

    /// Merges flags over the config file and validates. `system_zone` supplies the zone when
    /// neither names one (it is a function so tests need not read `/etc`).
    pub fn resolve(flags: RunFlags, system_zone: impl FnOnce() -> Tz) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let file_origin = |key: &str| match &flags.config {
            Some(path) => format!("{key} in {}", path.display()),
            None => key.to_owned(),
        };

        let (text, origin) = match (flags.connection_string, file.connection_string) {
            (Some(text), _) => (text, "--connection-string".to_owned()),
            (None, Some(text)) => (text, file_origin("connection_string")),
            (None, None) => return Err(ConfigError::MissingConnectionString),
        };
        let connection: DeviceConnectionString = text
            .trim()
            .parse()
            .map_err(|error| ConfigError::ConnectionString { origin, error })?;
        match connection.auth {
            DeviceAuth::SharedAccessKey(_) => {}
            DeviceAuth::SharedAccessSignature(_) => {
                return Err(ConfigError::UnsupportedAuth(
                    "a fixed SharedAccessSignature",
                ));
            }
            DeviceAuth::X509 => return Err(ConfigError::UnsupportedAuth("x509")),
        }

        let endpoint = match flags.mqtt_endpoint.or(file.mqtt_endpoint) {
            Some(text) => text.parse()?,
            None => Endpoint::default_for(&connection)?,
        };

        let timezone = match (flags.timezone, file.timezone) {
            (Some(name), _) => parse_zone(&name, "--timezone")?,
            (None, Some(name)) => parse_zone(&name, &file_origin("timezone"))?,
            (None, None) => system_zone(),
        };

        let reboot_command = match (flags.reboot_command, file.reboot_command) {
            (Some(argv), _) => RebootCommand::new(argv).ok_or(ConfigError::EmptyRebootCommand {
                origin: "--reboot-command".to_owned(),
            })?,
            (None, Some(argv)) => {
                RebootCommand::new(argv).ok_or_else(|| ConfigError::EmptyRebootCommand {
                    origin: file_origin("reboot_command"),
                })?
            }
            (None, None) => RebootCommand::default(),
        };

        let duration = |setting: &'static str, value: Option<String>, default: Duration| {
            value.map_or(Ok(default), |text| {
                parse_duration(&text).map_err(|err| ConfigError::Duration {
                    setting,
                    input: text.clone(),
                    reason: err.to_string(),
                })
            })
        };
        let keep_alive = duration("keep_alive", file.keep_alive, DEFAULT_KEEP_ALIVE)?;
        let token_lifetime = duration(
            "token_lifetime",
            file.token_lifetime,
            DEFAULT_TOKEN_LIFETIME,
        )?;
        let renew_before = duration("renew_before", file.renew_before, DEFAULT_RENEW_BEFORE)?;
        if renew_before >= token_lifetime {
            return Err(ConfigError::Duration {
                setting: "renew_before",
                input: format!("{}s", renew_before.as_secs()),
                reason: format!(
                    "must be shorter than token_lifetime ({}s)",
                    token_lifetime.as_secs()
                ),
            });
        }
        let (jitter_setting, jitter_text) = match (flags.report_jitter, file.report_jitter) {
            (Some(text), _) => ("--report-jitter", Some(text)),
            (None, text) => ("report_jitter", text),
        };
        let report_jitter = duration(jitter_setting, jitter_text, DEFAULT_REPORT_JITTER)?;
        if report_jitter > MAX_REPORT_JITTER {
            return Err(ConfigError::Duration {
                setting: jitter_setting,
                input: format!("{}s", report_jitter.as_secs()),
                reason: format!(
                    "must be at most {}s: a window report delayed longer leaves the scheduler too \
                     little of a short window (30s spreads 1,500 devices within S1's 50 twin \
                     updates a second)",
                    MAX_REPORT_JITTER.as_secs()
                ),
            });
        }
        if keep_alive < Duration::from_secs(5) || keep_alive > Duration::from_secs(1740) {
            return Err(ConfigError::Duration {
                setting: "keep_alive",
                input: format!("{}s", keep_alive.as_secs()),
                reason: "must be between 5s and 1740s (IoT Hub's maximum)".to_owned(),
            });
        }

        Ok(Self {
            connection,
            endpoint,
            ca: flags.ca.or(file.ca),
            state_dir: flags
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            timezone,
            reboot_command,
            keep_alive,
            token_lifetime,
            renew_before,
            backoff: BackoffPolicy::default(),
            report_jitter,
            twin_retry: DEFAULT_TWIN_RETRY,
        })
    }
}

/// Parses an IANA zone name with the policy crate's parser (which suggests close names).
fn parse_zone(name: &str, origin: &str) -> Result<Tz, ConfigError> {
    casement_policy::zone::parse_zone(name.trim()).map_err(|error| ConfigError::Timezone {
        origin: origin.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: &str =
        "HostName=hub.example.net;DeviceId=gw-1;SharedAccessKey=c2VjcmV0LWtleS0wMTIzNDU2Nzg5";

    fn flags() -> RunFlags {
        RunFlags {
            connection_string: Some(CS.to_owned()),
            ..RunFlags::default()
        }
    }

    #[test]
    fn endpoints_parse_with_defaults_and_reject_garbage() {
        let e: Endpoint = "mqtt://127.0.0.1:1884".parse().unwrap();
        assert_eq!(
            e,
            Endpoint {
                transport: Transport::Tcp,
                host: "127.0.0.1".into(),
                port: 1884
            }
        );
        let e: Endpoint = "mqtts://hub.example.net".parse().unwrap();
        assert_eq!((e.transport, e.port), (Transport::Tls, 8883));
        let e: Endpoint = "mqtts://[::1]:9000/".parse().unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 9000));
        assert_eq!(e.to_string(), "mqtts://[::1]:9000");
        for bad in [
            "127.0.0.1:1883",
            "http://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://h/p",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn untrusted_certificates_are_told_apart_from_outages() {
        assert!(is_untrusted_certificate(
            "TLS: invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_untrusted_certificate(
            "Connection refused (os error 111)"
        ));
        assert!(UNTRUSTED_CERTIFICATE_HINT.contains("--ca"));
    }

    #[test]
    fn the_https_port_in_host_name_never_becomes_the_mqtt_port() {
        let connection: DeviceConnectionString =
            "HostName=localhost:8443;DeviceId=d;SharedAccessKey=a2V5"
                .parse()
                .unwrap();
        let e = Endpoint::default_for(&connection).unwrap();
        assert_eq!(e.to_string(), "mqtts://localhost:8883");
        let e = Endpoint::tls_for_host_name("localhost:8443").unwrap();
        assert_eq!(e.to_string(), "mqtts://localhost:8883");
        let mut f = flags();
        f.connection_string =
            Some("HostName=localhost:8443;DeviceId=d;SharedAccessKey=a2V5".to_owned());
        f.mqtt_endpoint = Some("mqtts://127.0.0.1:18883".to_owned());
        let config = AgentConfig::resolve(f, || chrono_tz::UTC).unwrap();
        assert_eq!(config.endpoint.to_string(), "mqtts://127.0.0.1:18883");
    }

    #[test]
    fn defaults_come_from_the_connection_string() {
        let config = AgentConfig::resolve(flags(), || chrono_tz::Asia::Tokyo).unwrap();
        assert_eq!(config.endpoint.to_string(), "mqtts://hub.example.net:8883");
        assert_eq!(config.timezone, chrono_tz::Asia::Tokyo);
        assert_eq!(config.reboot_command.argv(), ["systemctl", "reboot"]);
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(config.device_id(), "gw-1");

        let mut f = flags();
        f.connection_string = Some(format!("{CS};GatewayHostName=edge.local:8884"));
        let config = AgentConfig::resolve(f, || Tz::UTC).unwrap();
        assert_eq!(config.endpoint.to_string(), "mqtts://edge.local:8884");
    }

    #[test]
    fn flags_override_the_file_and_the_file_fills_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "connection_string = \"{CS}\"\nmqtt_endpoint = \"mqtt://127.0.0.1:1883\"\n\
                 timezone = \"Europe/Amsterdam\"\nreboot_command = [\"/sbin/reboot\", \"-f\"]\n\
                 state_dir = \"/tmp/x\"\ntoken_lifetime = \"2h\"\n"
            ),
        )
        .unwrap();
        let config = AgentConfig::resolve(
            RunFlags {
                config: Some(path),
                timezone: Some("Asia/Tokyo".into()),
                ..RunFlags::default()
            },
            || Tz::UTC,
        )
        .unwrap();
        assert_eq!(config.timezone, chrono_tz::Asia::Tokyo);
        assert_eq!(config.endpoint.transport, Transport::Tcp);
        assert_eq!(config.reboot_command.argv(), ["/sbin/reboot", "-f"]);
        assert_eq!(config.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(config.token_lifetime, Duration::from_secs(7200));
    }

    #[test]
    fn the_report_jitter_defaults_to_30s_comes_from_the_flag_or_the_file_and_is_bounded() {
        let config = AgentConfig::resolve(flags(), || Tz::UTC).unwrap();
        assert_eq!(config.report_jitter, Duration::from_secs(30));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "report_jitter = \"2m\"\n").unwrap();
        let from_file = RunFlags {
            config: Some(path),
            ..flags()
        };
        let config = AgentConfig::resolve(from_file.clone(), || Tz::UTC).unwrap();
        assert_eq!(config.report_jitter, Duration::from_secs(120));
        let off = RunFlags {
            report_jitter: Some("0s".into()),
            ..from_file
        };
        let config = AgentConfig::resolve(off, || Tz::UTC).unwrap();
        assert_eq!(
            config.report_jitter,
            Duration::ZERO,
            "the flag wins; 0s is off"
        );
        let mut f = flags();
        f.report_jitter = Some("11m".into());
        let err = AgentConfig::resolve(f, || Tz::UTC).unwrap_err().to_string();
        assert!(
            err.contains("--report-jitter") && err.contains("at most 600s"),
            "{err}"
        );
    }

    #[test]
    fn bad_inputs_get_errors_that_say_where() {
        let err = AgentConfig::resolve(RunFlags::default(), || Tz::UTC).unwrap_err();
        assert!(matches!(err, ConfigError::MissingConnectionString));

        let mut f = flags();
        f.timezone = Some("Europe/Amsterdan".into());
        let err = AgentConfig::resolve(f, || Tz::UTC).unwrap_err().to_string();
        assert!(
            err.contains("--timezone") && err.contains("Europe/Amsterdam"),
            "{err}"
        );

        let mut f = flags();
        f.reboot_command = Some(vec![]);
        assert!(matches!(
            AgentConfig::resolve(f, || Tz::UTC),
            Err(ConfigError::EmptyRebootCommand { .. })
        ));

        let mut f = flags();
        f.connection_string = Some("HostName=h;DeviceId=d;x509=true".into());
        assert!(matches!(
            AgentConfig::resolve(f, || Tz::UTC),
            Err(ConfigError::UnsupportedAuth(_))
        ));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "timezone = \"UTC\"\nreboot_cmd = \"rm -rf /\"\n").unwrap();
        let err = AgentConfig::resolve(
            RunFlags {
                config: Some(path),
                ..flags()
            },
            || Tz::UTC,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("agent.toml line 2, column 1"), "{err}");
    }
}
