//! The `reboot` direct method as a pure state machine: events in, actions out, no I/O.
//!
//! ```text
//!   request ──check──▶ refused (400 / 409 / 200 alreadyDone)
//!      │
//!      ▼ accepted
//!   Persisting ──persisted(ok)──▶ Rebooting ──command failed──▶ Idle (reported "failed")
//!      │                          │   └──(power goes)──▶ … restart ──on_start──▶ "completed"
//!      └──persisted(err)──▶ Idle (500)
//! ```
//!
//! The I/O loop feeds [`RebootMachine`] the method request ([`RebootMachine::on_request`]), the
//! outcome of the state write ([`RebootMachine::on_persisted`]) and of the reboot command
//! ([`RebootMachine::on_command_finished`]), and after a process start the persisted state
//! ([`RebootMachine::on_start`]); it executes the returned [`RebootAction`]s in order:
//! persist the state, answer the method, report `iothubDM.reboot`, run the command.
//!
//! The gate (all by the agent's own window math and clock, whatever the caller believes):
//! 1. an occurrence already rebooted for (or being rebooted for) → 200 `alreadyDone`;
//! 2. another reboot in progress → 409 `reboot-in-progress`;
//! 3. no applied policy → 409 `no-policy`;
//! 4. another policy or revision → 409 `revision-mismatch`;
//! 5. no window open, or the open window is not the requested occurrence → 409 `outside-window`;
//! 6. less than `expectedDurationSeconds` left → 409 `insufficient-time`;
//! 7. otherwise accepted.
//!
//! A `null` payload asks for the current window (rules 1–3, 5–6). `{"force":true,"reason":…}`
//! skips rules 3–6, is audited in the reported properties, and — when a window is open — counts
//! as that occurrence's reboot so the scheduler does not reboot the device again in it.

use std::time::Duration;

use casement_iothub::time::format_timestamp;
use casement_policy::maintenance::{
    self, RebootAnswer, RebootPayload, RebootStatus, RefusalReason, ReportedWindow,
};
use casement_policy::window::WindowState;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::state::{AgentState, InProgressReboot, RebootRecord};

/// The method name.
pub const METHOD_NAME: &str = maintenance::REBOOT_METHOD;

/// The applied policy as the gate sees it.
#[derive(Debug, Clone, Copy)]
pub struct ActivePolicy<'a> {
    /// Policy name.
    pub name: &'a str,
    /// Policy revision.
    pub revision: &'a str,
    /// `reboot.expectedDurationSeconds`.
    pub expected_duration: Duration,
    /// The current-or-next window at the request's instant (`None`: no window ever opens).
    pub window: Option<WindowState>,
}

/// Everything the machine reads besides its own phase.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The instant, by the agent's clock.
    pub now: DateTime<Utc>,
    /// The applied policy, if any.
    pub policy: Option<ActivePolicy<'a>>,
    /// The durable state as last written.
    pub state: &'a AgentState,
    /// The current kernel boot id, where the platform has one.
    pub boot_id: Option<&'a str>,
}

/// A method answer.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodResponse {
    /// The request id to answer.
    pub rid: String,
    /// The status (200, 400, 409, 500).
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

/// What to report under `iothubDM.reboot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootUpdate {
    /// About to run the reboot command.
    Rebooting(InProgressReboot),
    /// Came back after the reboot.
    Completed {
        /// The reboot that completed.
        reboot: InProgressReboot,
        /// When the agent saw it completed.
        completed_at: DateTime<Utc>,
    },
    /// The reboot did not happen.
    Failed {
        /// The reboot that failed.
        reboot: InProgressReboot,
        /// What went wrong.
        error: String,
    },
}

impl RebootUpdate {
    /// The report in the twin schema; every field is written (absent ones as `null`) so it
    /// replaces whatever an earlier report left.
    pub fn to_report(&self) -> maintenance::RebootReport {
        let (status, reboot, completed_at, error) = match self {
            RebootUpdate::Rebooting(reboot) => (RebootStatus::Rebooting, reboot, None, None),
            RebootUpdate::Completed {
                reboot,
                completed_at,
            } => (RebootStatus::Completed, reboot, Some(*completed_at), None),
            RebootUpdate::Failed { reboot, error } => {
                (RebootStatus::Failed, reboot, None, Some(error.clone()))
            }
        };
        maintenance::RebootReport {
            last_reboot: Some(reboot.started_at),
            status,
            occurrence: reboot.occurrence,
            completed_at,
            error,
            forced: Some(reboot.forced),
            reason: reboot.reason.clone(),
        }
    }

    /// The reported patch, `{"iothubDM":{"reboot":{…}}}`.
    pub fn to_patch(&self) -> Value {
        self.to_report().to_patch()
    }
}

/// An action for the I/O loop, to execute in order.
#[derive(Debug, Clone, PartialEq)]
pub enum RebootAction {
    /// Write this state atomically, then call [`RebootMachine::on_persisted`] (when the machine
    /// is persisting) with the outcome.
    Persist(AgentState),
    /// Answer the method.
    Respond(MethodResponse),
    /// Report `iothubDM.reboot`.
    Report(RebootUpdate),
    /// Run the configured reboot command, then call [`RebootMachine::on_command_finished`].
    RunRebootCommand,
}

/// Where the machine is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Phase {
    /// Waiting for a request.
    #[default]
    Idle,
    /// Accepted; the state with the reboot in progress is being written.
    Persisting {
        /// The request to answer once persisted.
        rid: String,
        /// The reboot being persisted.
        reboot: InProgressReboot,
        /// The 200 body to answer with.
        answer: Value,
    },
    /// Persisted and answered; the reboot command runs (or ran).
    Rebooting(InProgressReboot),
}

/// The reboot state machine.
#[derive(Debug, Default)]
pub struct RebootMachine {
    phase: Phase,
}

impl RebootMachine {
    /// A machine in [`Phase::Idle`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// After a process start: if the persisted state holds a reboot in progress, decide whether
    /// it completed (a new boot, or no boot id to compare) or never happened (the same boot: the
    /// agent restarted but the machine did not), and say so.
    pub fn on_start(ctx: &Context<'_>) -> Vec<RebootAction> {
        let Some(reboot) = ctx.state.in_progress.clone() else {
            return Vec::new();
        };
        let mut state = ctx.state.clone();
        state.in_progress = None;
        let same_boot =
            matches!((reboot.boot_id.as_deref(), ctx.boot_id), (Some(a), Some(b)) if a == b);
        let report = if same_boot {
            RebootUpdate::Failed {
                reboot,
                error: "the agent restarted but the device did not reboot (same boot id)"
                    .to_owned(),
            }
        } else {
            state.record_reboot(RebootRecord {
                occurrence: reboot.occurrence,
                policy: reboot.policy.clone(),
                started_at: reboot.started_at,
                completed_at: ctx.now,
                forced: reboot.forced,
            });
            RebootUpdate::Completed {
                reboot,
                completed_at: ctx.now,
            }
        };
        vec![RebootAction::Persist(state), RebootAction::Report(report)]
    }

    /// A `reboot` method request arrived.
    pub fn on_request(
        &mut self,
        ctx: &Context<'_>,
        rid: &str,
        payload: &[u8],
    ) -> Vec<RebootAction> {
        let respond = |answer: RebootAnswer| {
            vec![RebootAction::Respond(MethodResponse {
                rid: rid.to_owned(),
                status: answer.status(),
                body: answer.to_json(),
            })]
        };
        let request = match RebootPayload::parse(payload) {
            Ok(request) => request,
            Err(message) => {
                return respond(RebootAnswer::refused(
                    RefusalReason::MalformedPayload,
                    message,
                    None,
                ));
            }
        };
        let in_progress = match &self.phase {
            Phase::Idle => None,
            Phase::Persisting { reboot, .. } | Phase::Rebooting(reboot) => Some(reboot),
        };
        let window = ctx.policy.and_then(|p| p.window);
        let open_window = window.filter(|w| w.open).map(|w| w.window);

        // 1. Already done (or being done) for this occurrence?
        let occurrence = match &request {
            RebootPayload::Scheduled(request) => Some(request.occurrence),
            RebootPayload::CurrentWindow => open_window.map(|w| w.occurrence),
            RebootPayload::Forced { .. } => None,
        };
        if let Some(occurrence) = occurrence
            && (ctx.state.rebooted_for(occurrence)
                || in_progress.is_some_and(|r| r.occurrence == Some(occurrence)))
        {
            return respond(RebootAnswer::already_done(occurrence));
        }
        // 2. Busy?
        if in_progress.is_some() {
            return respond(refusal(
                RefusalReason::RebootInProgress,
                window,
                "another reboot is under way",
            ));
        }

        let reboot = match request {
            RebootPayload::Forced { reason } => InProgressReboot {
                occurrence: open_window.map(|w| w.occurrence),
                policy: ctx.policy.map(|p| p.name.to_owned()),
                revision: ctx.policy.map(|p| p.revision.to_owned()),
                started_at: ctx.now,
                forced: true,
                reason: Some(reason),
                boot_id: ctx.boot_id.map(str::to_owned),
            },
            request => {
                // 3. A policy?
                let Some(policy) = ctx.policy else {
                    return respond(refusal(
                        RefusalReason::NoPolicy,
                        None,
                        "no maintenance policy is applied",
                    ));
                };
                // 4. The same policy and revision?
                if let RebootPayload::Scheduled(request) = &request
                    && (request.policy != policy.name || request.revision != policy.revision)
                {
                    let mut answer = refusal(
                        RefusalReason::RevisionMismatch,
                        window,
                        &format!(
                            "the request is for {} revision {}; the device applies {} revision {}",
                            request.policy, request.revision, policy.name, policy.revision
                        ),
                    );
                    answer.policy = Some(policy.name.to_owned());
                    answer.revision = Some(policy.revision.to_owned());
                    return respond(answer);
                }
                // 5. Open, and the requested occurrence?
                let Some(open) = open_window else {
                    return respond(refusal(
                        RefusalReason::OutsideWindow,
                        window,
                        "no maintenance window is open",
                    ));
                };
                if let RebootPayload::Scheduled(request) = &request
                    && request.occurrence != open.occurrence
                {
                    return respond(refusal(
                        RefusalReason::OutsideWindow,
                        window,
                        &format!(
                            "the open window is the occurrence {}, not {}",
                            format_timestamp(open.occurrence),
                            format_timestamp(request.occurrence)
                        ),
                    ));
                }
                // 6. Enough time left?
                let left = (open.closes_at - ctx.now).to_std().unwrap_or_default();
                if left < policy.expected_duration {
                    return respond(refusal(
                        RefusalReason::InsufficientTime,
                        window,
                        &format!(
                            "{} s left in the window; a reboot needs {} s",
                            left.as_secs(),
                            policy.expected_duration.as_secs()
                        ),
                    ));
                }
                InProgressReboot {
                    occurrence: Some(open.occurrence),
                    policy: Some(policy.name.to_owned()),
                    revision: Some(policy.revision.to_owned()),
                    started_at: ctx.now,
                    forced: false,
                    reason: None,
                    boot_id: ctx.boot_id.map(str::to_owned),
                }
            }
        };

        // 7. Accepted: persist first, answer once it is on disk.
        let mut answer = RebootAnswer::accepted(
            reboot.policy.clone(),
            reboot.revision.clone(),
            reboot.occurrence,
            window.map(ReportedWindow::from),
        );
        if reboot.forced {
            answer.forced = true;
            answer.message = reboot.reason.clone();
        }
        let mut state = ctx.state.clone();
        state.in_progress = Some(reboot.clone());
        self.phase = Phase::Persisting {
            rid: rid.to_owned(),
            reboot,
            answer: answer.to_json(),
        };
        vec![RebootAction::Persist(state)]
    }

    /// The state write requested by an accepted request finished.
    pub fn on_persisted(&mut self, result: Result<(), String>) -> Vec<RebootAction> {
        let Phase::Persisting {
            rid,
            reboot,
            answer,
        } = std::mem::take(&mut self.phase)
        else {
            return Vec::new();
        };
        match result {
            Ok(()) => {
                self.phase = Phase::Rebooting(reboot.clone());
                vec![
                    RebootAction::Respond(MethodResponse {
                        rid,
                        status: 200,
                        body: answer,
                    }),
                    RebootAction::Report(RebootUpdate::Rebooting(reboot)),
                    RebootAction::RunRebootCommand,
                ]
            }
            Err(error) => {
                let answer = RebootAnswer::refused(
                    RefusalReason::StateWriteFailed,
                    format!("cannot persist the reboot before running it: {error}"),
                    None,
                );
                vec![RebootAction::Respond(MethodResponse {
                    rid,
                    status: answer.status(),
                    body: answer.to_json(),
                })]
            }
        }
    }

    /// The reboot command finished. Success means the machine is going down: nothing to do but
    /// wait. Failure (or a machine that never went down) is reported and the reboot dropped
    /// from the state, so the occurrence is not counted as done.
    pub fn on_command_finished(
        &mut self,
        ctx: &Context<'_>,
        result: Result<(), String>,
    ) -> Vec<RebootAction> {
        let Phase::Rebooting(reboot) = &self.phase else {
            return Vec::new();
        };
        let Err(error) = result else {
            return Vec::new();
        };
        let reboot = reboot.clone();
        self.phase = Phase::Idle;
        let mut state = ctx.state.clone();
        state.in_progress = None;
        vec![
            RebootAction::Persist(state),
            RebootAction::Report(RebootUpdate::Failed { reboot, error }),
        ]
    }
}

/// A refusal, with the window as the device sees it.
fn refusal(reason: RefusalReason, window: Option<WindowState>, message: &str) -> RebootAnswer {
    RebootAnswer::refused(reason, message, window.map(ReportedWindow::from))
}

#[cfg(test)]
mod tests;
