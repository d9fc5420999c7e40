//! A fleet's twins written straight into an in-process hub (no agents), for the report's
//! benchmark and its page-count test: one policy, `nightly` (02:00–03:00 UTC daily), whose
//! latest window (2026-03-29) has closed at [`NOW`].
//!
//! [`Shape::Healthy`], of every 100 devices (none connected): 90 rebooted in the latest window
//! (compliant), 4 rejected the policy, 4 never reported it (not applied), and `missed` (0, 1 or
//! 2) rebooted only in the window before (missed).
//!
//! [`Shape::Troubled`]: most of the fleet in groups whose devices differ by their per-device
//! inputs (when the policy reached them, when they rebooted, the journal), of every 100:
//! - 39 compliant: 30 rebooted in the latest window, 6 by their reboot's time alone (no
//!   occurrence reported), 3 by a simulated reboot (`--simulate-reboot`);
//! - 4 rejected, 4 never reported (not applied);
//! - 23 missed the latest window: 20 last rebooted in one of the ten windows before it (the
//!   same one for each hundred devices: the larger the fleet, the more distinct last windows),
//!   3 in the one before, of which, in the first 100 devices only, the last reboot was forced
//!   (`casement reboot --force`) after the window;
//! - 20 failed: 10 rebooted in the window before and have a failed reboot call in the
//!   journal for the latest (at most [`JOURNAL_FAILURES`] in all, as a failure budget would
//!   stop a wave), 10 reported the reboot of the latest window failed;
//! - 10 pending: reached by the policy after the latest window, though they too last rebooted
//!   in the one before.

use casement_hub::RunningHub;
use casement_policy::DesiredMaintenance;
use casement_scheduler::journal::JournalView;
use casement_scheduler::rollout::{Entry, EntryState};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

/// When the report is computed.
pub const NOW: &str = "2026-03-29T12:00:00Z";

/// When the twins are written (the hub's clock): the policy reached every device then.
pub const SEEDED_AT: &str = "2026-03-20T00:00:00Z";

/// When the policy reached the [`Shape::Troubled`] fleet's pending devices: after the latest
/// window.
pub const REACHED_RECENTLY: &str = "2026-03-29T06:00:00Z";

/// The most failed calls the [`Shape::Troubled`] fleet's journal holds.
pub const JOURNAL_FAILURES: usize = 200;

/// The fleet's make-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Nearly all compliant; `missed` of every 100 missed the latest window.
    Healthy {
        /// Of every 100.
        missed: usize,
    },
    /// Most devices missed, failed, were reached recently or are compliant by their reboot
    /// time alone.
    Troubled,
}

/// [`SEEDED_AT`].
pub fn seeded_at() -> DateTime<Utc> {
    SEEDED_AT.parse().expect("a timestamp")
}

/// The policy every device carries.
pub fn desired() -> DesiredMaintenance {
    serde_json::from_value(json!({
        "policy": "nightly",
        "revision": "3f2a0c1b",
        "window": {"schedule": "0 2 * * *", "durationSeconds": 3600, "timezone": "UTC", "blackout": []},
        "reboot": {"expectedDurationSeconds": 300}
    }))
    .expect("a valid desired section")
}

/// The report's `now`.
pub fn now() -> DateTime<Utc> {
    NOW.parse().expect("a timestamp")
}

/// The latest window's opening.
fn latest() -> DateTime<Utc> {
    "2026-03-29T02:00:00Z".parse().expect("a timestamp")
}

fn maintenance(status: &str) -> Value {
    json!({"maintenance": {"policy": "nightly", "revision": "3f2a0c1b", "status": status, "timezone": "UTC"}})
}

fn rebooted(day: u32) -> Value {
    json!({"iothubDM": {"reboot": {
        "status": "completed",
        "occurrence": format!("2026-03-{day:02}T02:00:00.000Z"),
        "lastReboot": format!("2026-03-{day:02}T02:05:00.000Z"),
    }}})
}

/// A failed call for `device` in the latest window, as the scheduler journals it.
fn failed_call(device: &str) -> Entry {
    Entry {
        policy: "nightly".into(),
        device: device.into(),
        occurrence: latest(),
        closes_at: latest() + TimeDelta::hours(1),
        revision: "3f2a0c1b".into(),
        attempts: 1,
        failures: 1,
        invoked_at: Some(latest()),
        accepted_at: None,
        state: EntryState::Failed("refused: low-battery".into()),
        updated_at: latest(),
    }
}

/// Writes `n` devices `fleet-00000`… of `shape`, with the hub's clock moved by `set_clock`
/// (the policy's arrival is the hub's time of the desired patch); returns the journal the
/// fleet goes with (empty for [`Shape::Healthy`]).
pub async fn seed(
    hub: &RunningHub,
    set_clock: &dyn Fn(DateTime<Utc>),
    n: usize,
    shape: Shape,
) -> JournalView {
    let patch = desired().to_patch();
    let mut journal = JournalView::default();
    for i in 0..n {
        let id = format!("fleet-{i:05}");
        hub.create_device(&id, json!({"role": "gateway"}))
            .await
            .expect("device created");
        let slot = i % 100;
        let recent = shape == Shape::Troubled && (78..88).contains(&slot);
        if recent {
            set_clock(REACHED_RECENTLY.parse().expect("a timestamp"));
        }
        hub.patch_desired(&id, patch.clone())
            .await
            .expect("desired written");
        if recent {
            set_clock(seeded_at());
        }
        let patches = match shape {
            Shape::Healthy { missed } => {
                if slot < 90 {
                    vec![maintenance("applied"), rebooted(29)]
                } else if slot < 94 {
                    vec![maintenance("rejected")]
                } else if slot < 98 {
                    vec![]
                } else if slot - 98 < missed {
                    vec![maintenance("applied"), rebooted(28)]
                } else {
                    vec![maintenance("applied"), rebooted(29)]
                }
            }
            Shape::Troubled => match slot {
                0..30 => vec![maintenance("applied"), rebooted(29)],
                30..34 => vec![maintenance("rejected")],
                34..38 => vec![],
                38..48 => {
                    if journal.entries.len() < JOURNAL_FAILURES {
                        journal.entries.push(failed_call(&id));
                    }
                    vec![maintenance("applied"), rebooted(28)]
                }
                68..78 => vec![
                    maintenance("applied"),
                    json!({"iothubDM": {"reboot": {
                        "status": "failed", "occurrence": "2026-03-29T02:00:00.000Z",
                        "lastReboot": "2026-03-29T02:04:00.000Z", "error": "reboot command exited 1",
                    }}}),
                ],
                88..94 => vec![
                    maintenance("applied"),
                    json!({"iothubDM": {"reboot": {
                        "status": "completed", "occurrence": null,
                        "lastReboot": "2026-03-29T02:10:00.000Z",
                    }}}),
                ],
                94..97 if i < 100 => vec![
                    maintenance("applied"),
                    json!({"iothubDM": {"reboot": {
                        "status": "completed", "occurrence": null,
                        "lastReboot": format!("2026-03-29T09:0{}:00.000Z", slot - 94),
                        "forced": true, "reason": format!("INC-{i}: kernel hotfix"),
                    }}}),
                ],
                97..100 => vec![
                    maintenance("applied"),
                    rebooted(29),
                    json!({"casementAgent": {"rebootMode": "simulated", "simulatedReboots": 1}}),
                ],
                48..68 => vec![
                    maintenance("applied"),
                    rebooted(28 - u32::try_from(i / 100 % 10).unwrap_or(0)),
                ],
                // 78..88 and the rest of 94..97: rebooted in the window before only.
                _ => vec![maintenance("applied"), rebooted(28)],
            },
        };
        for p in patches {
            hub.report_as_device(&id, &p).expect("reported written");
        }
    }
    journal
}
