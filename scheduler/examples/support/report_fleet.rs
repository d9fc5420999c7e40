//! A fleet's twins written straight into an in-process hub (no agents), for the report's
//! benchmark and its page-count test: one policy, `nightly` (02:00–03:00 UTC daily), whose
//! latest window (2026-03-29) has closed at [`NOW`].
//!
//! Of every 100 devices (none connected): 90 rebooted in the latest window (compliant), 4 rejected the policy, 4 never reported it (not applied), and `missed` (0, 1 or 2)
//! rebooted only in the window before (missed: read per device by the summary).

use casement_hub::RunningHub;
use casement_policy::DesiredMaintenance;
use chrono::{DateTime, Utc};
use serde_json::json;

/// When the report is computed.
pub const NOW: &str = "2026-03-29T12:00:00Z";

/// When the twins are written (the hub's clock): the policy reached every device then.
pub const SEEDED_AT: &str = "2026-03-20T00:00:00Z";

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

/// Writes `n` devices `fleet-00000`…; `missed` of every 100 missed the latest window.
pub async fn seed(hub: &RunningHub, n: usize, missed: usize) {
    let patch = desired().to_patch();
    for i in 0..n {
        let id = format!("fleet-{i:05}");
        hub.create_device(&id, json!({"role": "gateway"}))
            .await
            .expect("device created");
        hub.patch_desired(&id, patch.clone())
            .await
            .expect("desired written");
        let slot = i % 100;
        let maintenance = |status: &str| json!({"maintenance": {"policy": "nightly", "revision": "3f2a0c1b", "status": status, "timezone": "UTC"}});
        let rebooted = |day: u32| {
            json!({"iothubDM": {"reboot": {
                "status": "completed",
                "occurrence": format!("2026-03-{day:02}T02:00:00Z"),
                "lastReboot": format!("2026-03-{day:02}T02:05:00Z"),
            }}})
        };
        let patches = if slot < 90 {
            vec![maintenance("applied"), rebooted(29)]
        } else if slot < 94 {
            vec![maintenance("rejected")]
        } else if slot < 98 {
            vec![]
        } else if slot - 98 < missed {
            vec![maintenance("applied"), rebooted(28)]
        } else {
            vec![maintenance("applied"), rebooted(29)]
        };
        for p in patches {
            hub.report_as_device(&id, &p).expect("reported written");
        }
    }
}
