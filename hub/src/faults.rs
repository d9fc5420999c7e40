//! Faults the hub injects on request, for tests and for trying a fleet's operations against
//! what real networks do.
//!
//! **The silent socket** ([`RunningHub::blackhole_device`]). A rebooting device's socket
//! often dies without a FIN: IoT Hub believes the device connected until its keep-alive runs
//! out (1.5 × the CONNECT keep-alive, capped at 1,767 s), and a direct method to it meanwhile
//! waits out its response timeout and fails with 504101 GatewayTimeout — not 404103
//! DeviceNotOnline, which only a device the hub knows to be offline gets. A black-holed
//! connection reproduces that: the socket stays open, the hub drops everything it would send
//! to the device and everything it receives from it (PINGREQ included, and even the end of
//! the stream), so only the keep-alive timeout ends it. The next connection of the device is
//! served normally.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::server::RunningHub;

/// The connections currently black-holed, by connection id.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    blackholed: Mutex<HashSet<u64>>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.blackholed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether connection `conn_id` is a black hole.
    pub(crate) fn is_blackholed(&self, conn_id: u64) -> bool {
        self.lock().contains(&conn_id)
    }

    /// Forgets connection `conn_id` (it has ended).
    pub(crate) fn forget(&self, conn_id: u64) {
        self.lock().remove(&conn_id);
    }
}

impl RunningHub {
    /// Turns the device's current MQTT connection into a black hole (see [`crate::faults`]):
    /// it stays open, and the hub silently drops every packet to and from the device until the
    /// keep-alive timeout (1.5 × the device's keep-alive) closes it. Returns `false` when the
    /// device has no connection.
    pub fn blackhole_device(&self, device_id: &str) -> bool {
        match self.shared.broker.current_conn(device_id) {
            Some(conn_id) => {
                tracing::info!(
                    device = device_id,
                    "fault: the device's connection is now a black hole"
                );
                self.shared.faults.lock().insert(conn_id);
                true
            }
            None => false,
        }
    }
}
