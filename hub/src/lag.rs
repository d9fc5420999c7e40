//! Query lag (`casement hub --query-lag DURATION`): twin queries answer from the twins as they
//! were `DURATION` ago by the hub's clock, as Azure's eventually consistent twin queries may.
//!
//! The registry records every twin change here (under its own lock, so in order): for each
//! device changed within the lag window, its twin versions of the window plus the newest one
//! older than the window (the *base*; `None` while the device did not exist). A device with no
//! change in the window is not here at all, and queries read it live. So the memory this costs
//! is bounded by the changes made in the last `DURATION`, not by the fleet. Consequences:
//! - a device created less than `DURATION` ago is not yet in query results;
//! - a deleted device stays in them until `DURATION` has passed;
//! - twin GETs (REST and MQTT) stay strongly consistent, as on Azure.
//!
//! `lastActivityTime` alone (telemetry, method responses) is not versioned: it is read live,
//! or as of the device's lagged version when the device has changed within the window.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// One state of a twin: from `since` on, the twin was `twin` (`None`: no such device).
#[derive(Debug, Clone)]
struct Version {
    since: DateTime<Utc>,
    twin: Option<Arc<Value>>,
}

/// The twin versions queries may still see.
#[derive(Debug)]
pub(crate) struct History {
    lag: chrono::TimeDelta,
    devices: BTreeMap<String, VecDeque<Version>>,
    /// Every recorded change in time order, for pruning without scanning every device.
    changes: VecDeque<(DateTime<Utc>, String)>,
}

impl History {
    /// A history for queries lagging `lag` behind.
    pub(crate) fn new(lag: Duration) -> Self {
        Self {
            lag: chrono::TimeDelta::from_std(lag).unwrap_or(chrono::TimeDelta::MAX),
            devices: BTreeMap::new(),
            changes: VecDeque::new(),
        }
    }

    /// The instant queries see at `now`.
    pub(crate) fn horizon(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now.checked_sub_signed(self.lag)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Called before a device changes: makes sure its current state is kept as the base
    /// (`before` gives it; `None` when the device does not exist yet).
    pub(crate) fn before_change(
        &mut self,
        device_id: &str,
        now: DateTime<Utc>,
        before: impl FnOnce() -> Option<Value>,
    ) {
        if !self.devices.contains_key(device_id) {
            // Pruned like a change, should the change itself fail.
            self.changes.push_back((now, device_id.to_owned()));
            let base = Version {
                since: DateTime::<Utc>::MIN_UTC,
                twin: before().map(Arc::new),
            };
            self.devices
                .insert(device_id.to_owned(), VecDeque::from([base]));
        }
    }

    /// Records the device's twin after a change at `now` (`None`: deleted).
    pub(crate) fn changed(&mut self, device_id: &str, now: DateTime<Utc>, after: Option<Value>) {
        let versions = self.devices.entry(device_id.to_owned()).or_default();
        versions.push_back(Version {
            since: now,
            twin: after.map(Arc::new),
        });
        self.changes.push_back((now, device_id.to_owned()));
        self.prune(now);
    }

    /// Forgets what no query can see any more at `now`: versions superseded before the
    /// horizon, and devices whose only version left is older than it (their live state).
    pub(crate) fn prune(&mut self, now: DateTime<Utc>) {
        let horizon = self.horizon(now);
        while let Some((at, _)) = self.changes.front() {
            if *at > horizon {
                break;
            }
            let Some((_, id)) = self.changes.pop_front() else {
                break;
            };
            let Some(versions) = self.devices.get_mut(&id) else {
                continue;
            };
            while versions.len() >= 2 && versions[1].since <= horizon {
                versions.pop_front();
            }
            if versions.len() <= 1 && versions.front().is_none_or(|v| v.since <= horizon) {
                self.devices.remove(&id);
            }
        }
    }

    /// Twin versions kept (for tests and the bound on memory).
    #[cfg(test)]
    pub(crate) fn versions(&self) -> usize {
        self.devices.values().map(VecDeque::len).sum()
    }

    /// Devices changed within the window, in id order, after `after` when given.
    pub(crate) fn range<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a String, Lagged<'a>)> + 'a {
        let range = match after {
            Some(id) => self
                .devices
                .range::<str, _>((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded)),
            None => self.devices.range::<str, _>(..),
        };
        range.map(|(id, versions)| (id, Lagged { versions }))
    }
}

/// One device's versions within the window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lagged<'a> {
    versions: &'a VecDeque<Version>,
}

impl Lagged<'_> {
    /// The twin as it was at `horizon`; `None` when the device did not exist then.
    pub(crate) fn at(&self, horizon: DateTime<Utc>) -> Option<&Value> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.since <= horizon)
            .and_then(|v| v.twin.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("time")
    }

    fn seen(h: &History, now: DateTime<Utc>) -> Vec<(String, Value)> {
        let horizon = h.horizon(now);
        h.range(None)
            .filter_map(|(id, l)| l.at(horizon).map(|t| (id.clone(), t.clone())))
            .collect()
    }

    #[test]
    fn a_change_shows_after_the_lag_and_then_leaves_the_history() {
        let mut h = History::new(Duration::from_secs(60));
        h.before_change("d1", at(0), || Some(json!({"v": 1})));
        h.changed("d1", at(0), Some(json!({"v": 2})));
        assert_eq!(seen(&h, at(59)), vec![("d1".into(), json!({"v": 1}))]);
        assert_eq!(seen(&h, at(60)), vec![("d1".into(), json!({"v": 2}))]);
        h.prune(at(60));
        assert_eq!(h.versions(), 0, "the live twin is the lagged one now");
    }

    #[test]
    fn created_devices_appear_and_deleted_ones_linger() {
        let mut h = History::new(Duration::from_secs(60));
        h.before_change("new", at(0), || None);
        h.changed("new", at(0), Some(json!({"n": 1})));
        h.before_change("old", at(10), || Some(json!({"o": 1})));
        h.changed("old", at(10), None);
        assert_eq!(seen(&h, at(30)), vec![("old".into(), json!({"o": 1}))]);
        assert_eq!(
            seen(&h, at(65)),
            vec![
                ("new".into(), json!({"n": 1})),
                ("old".into(), json!({"o": 1}))
            ]
        );
        assert_eq!(seen(&h, at(70)), vec![("new".into(), json!({"n": 1}))]);
        h.prune(at(70));
        assert_eq!(h.versions(), 0);
    }

    #[test]
    fn memory_is_bounded_by_the_changes_in_the_window() {
        let mut h = History::new(Duration::from_secs(10));
        for s in 0..1_000 {
            h.before_change("d", at(s), || Some(json!(0)));
            h.changed("d", at(s), Some(json!(s)));
            // One change per second: the window's ten, the one being replaced, the base.
            assert!(h.versions() <= 12, "{} at {s}", h.versions());
        }
        assert_eq!(seen(&h, at(999)), vec![("d".into(), json!(989))]);
    }
}
