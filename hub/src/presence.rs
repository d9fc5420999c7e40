//! Connection state as the service shows it, optionally late as on Azure IoT Hub.
//!
//! Azure updates a device's `connectionState` minutes after the real change, and
//! `lastActivityTime` 5–10 minutes late (Microsoft: "for development and debugging only").
//! With a lag configured (`casement hub --connection-state-lag`), every twin, device GET and
//! query shows these fields — and `connectionStateUpdatedTime` — as they really were `lag` ago,
//! by the hub's injected clock. The log of changes is kept only while a change is younger than
//! the lag; with no lag nothing is kept and the real values are shown.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// The fields a lag delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Presence {
    /// Whether the device is connected (`connectionState`).
    pub(crate) connected: bool,
    /// `connectionStateUpdatedTime`, when there was a change.
    pub(crate) state_updated: Option<String>,
    /// `lastActivityTime`, when there was activity.
    pub(crate) last_activity: Option<String>,
}

/// Most changes remembered per device; beyond it the oldest pending change is dropped, so the
/// shown value can run a little less late than the lag, never later. Bounds memory for a
/// device that reports many times a second under a long lag.
const MAX_CHANGES: usize = 1024;

/// A device's recent presence changes, oldest first: `(when it really happened, new value)`.
/// Empty means "show the real value".
#[derive(Debug, Clone, Default)]
pub(crate) struct PresenceLog {
    changes: VecDeque<(DateTime<Utc>, Presence)>,
}

impl PresenceLog {
    /// Records that presence changed from `before` to `after` at `now`.
    pub(crate) fn record(
        &mut self,
        lag: Duration,
        now: DateTime<Utc>,
        before: Presence,
        after: Presence,
    ) {
        if lag.is_zero() || before == after {
            return;
        }
        if self.changes.is_empty() {
            // What was true before this change stays visible until the change is `lag` old.
            self.changes.push_back((DateTime::<Utc>::MIN_UTC, before));
        }
        self.changes.push_back((now, after));
        self.prune(lag, now);
        while self.changes.len() > MAX_CHANGES {
            self.changes.remove(1);
        }
    }

    /// Drops the changes that no longer decide what is shown; empties the log once the latest
    /// change is visible.
    fn prune(&mut self, lag: Duration, now: DateTime<Utc>) {
        let cutoff = cutoff(lag, now);
        while self.changes.len() > 1 && self.changes[1].0 <= cutoff {
            self.changes.pop_front();
        }
        if self.changes.len() == 1 {
            self.changes.clear();
        }
    }

    /// What the service shows at `now`: `real` when no change is pending, else the value as it
    /// was `lag` ago.
    pub(crate) fn shown<'a>(
        &'a self,
        lag: Duration,
        now: DateTime<Utc>,
        real: &'a Presence,
    ) -> &'a Presence {
        if lag.is_zero() || self.changes.is_empty() {
            return real;
        }
        let cutoff = cutoff(lag, now);
        self.changes
            .iter()
            .rev()
            .find(|(at, _)| *at <= cutoff)
            .map_or(real, |(_, p)| p)
    }
}

fn cutoff(lag: Duration, now: DateTime<Utc>) -> DateTime<Utc> {
    chrono::Duration::from_std(lag)
        .ok()
        .and_then(|lag| now.checked_sub_signed(lag))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(connected: bool, at: &str) -> Presence {
        Presence {
            connected,
            state_updated: Some(at.to_owned()),
            last_activity: Some(at.to_owned()),
        }
    }

    #[test]
    fn a_change_shows_only_after_the_lag() {
        let lag = Duration::from_secs(300);
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        let mut log = PresenceLog::default();
        let (off, on) = (p(false, "a"), p(true, "b"));
        log.record(lag, t0, off.clone(), on.clone());
        let at = |s: i64| t0 + chrono::Duration::seconds(s);
        assert_eq!(log.shown(lag, at(0), &on), &off);
        assert_eq!(log.shown(lag, at(299), &on), &off);
        assert_eq!(log.shown(lag, at(300), &on), &on);
        // A disconnect at +100 shows at +400.
        let off2 = p(false, "c");
        log.record(lag, at(100), on.clone(), off2.clone());
        assert_eq!(log.shown(lag, at(350), &off2), &on);
        assert_eq!(log.shown(lag, at(400), &off2), &off2);
        // Once caught up, a write empties the log.
        log.record(lag, at(1000), off2.clone(), off2.clone());
        log.record(lag, at(1000), off2.clone(), on.clone());
        assert_eq!(log.changes.len(), 2);
    }

    #[test]
    fn no_lag_keeps_nothing() {
        let mut log = PresenceLog::default();
        let now = Utc::now();
        log.record(Duration::ZERO, now, p(false, "a"), p(true, "b"));
        assert!(log.changes.is_empty());
    }
}
