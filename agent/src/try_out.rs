//! `casement-agent run --simulate-reboot`: the try-it-out mode for a workstation, which cannot
//! (and must not) reboot. When the reboot gate accepts, the agent does not run a reboot command:
//! it drops its session as a power cut would, takes a new simulated boot id (kept in the state
//! directory, so the agent can tell the "reboot" happened), and starts again — so the reboot
//! completes and the device can become compliant. Every simulated reboot is logged at WARN as
//! simulated; nothing is silent.

use std::future::Future;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::agent::{Agent, AgentError, RebootHook, RunOutcome};
use crate::config::AgentConfig;

/// The file in the state directory holding the current simulated boot id.
pub const BOOT_ID_FILE: &str = "simulated-boot-id";

/// The reported property saying how this agent reboots, and its patch: defined with the
/// maintenance schema, where the report and `casement twin show` read it.
pub use casement_policy::maintenance::{REPORTED_AGENT, simulated_report};

/// How many simulated reboots a run made (for tests and the final log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TryOutSummary {
    /// Simulated reboots.
    pub reboots: u64,
}

fn boot_id_path(state_dir: &Path) -> PathBuf {
    state_dir.join(BOOT_ID_FILE)
}

/// The current simulated boot id, made (and persisted) on first use.
fn current_boot_id(state_dir: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(boot_id_path(state_dir)) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => new_boot_id(state_dir),
    }
}

/// A fresh simulated boot id, persisted.
fn new_boot_id(state_dir: &Path) -> std::io::Result<String> {
    std::fs::create_dir_all(state_dir)?;
    let id = format!("simulated-{:016x}", rand::random::<u64>());
    std::fs::write(boot_id_path(state_dir), &id)?;
    Ok(id)
}

/// Runs the agent for `config` until `shutdown` resolves, simulating every reboot.
///
/// # Errors
/// What [`Agent::run`] fails with, or a state directory where the boot id cannot be kept.
pub async fn run_simulating_reboots(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<TryOutSummary, AgentError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut summary = TryOutSummary::default();
    let state_error = |e| {
        AgentError::State(crate::state::StateError::CreateDir {
            path: config.state_dir.clone(),
            source: e,
        })
    };
    loop {
        let boot_id = current_boot_id(&config.state_dir).map_err(state_error)?;
        info!(boot_id = %boot_id, "--simulate-reboot: this is a simulated boot; no reboot command will run");
        let agent = Agent::new(config.clone())?
            .with_reboot_hook(RebootHook::Simulated)
            .with_boot_id(Some(boot_id))
            .with_startup_report(simulated_report(summary.reboots));
        // A simulated reboot ends the run before `shutdown` resolves, so it is still pending
        // for the next boot's run.
        match agent.run(shutdown.as_mut()).await? {
            RunOutcome::Shutdown => return Ok(summary),
            RunOutcome::Rebooted(reboot) => {
                summary.reboots += 1;
                let new_id = new_boot_id(&config.state_dir).map_err(state_error)?;
                warn!(
                    occurrence = ?reboot.occurrence,
                    forced = reboot.forced,
                    boot_id = %new_id,
                    "SIMULATED reboot (--simulate-reboot): nothing was rebooted; the session \
                     restarts as a new boot"
                );
            }
        }
    }
}
