//! The desired properties as the agent knows them: the twin GET of each session, then the
//! desired notifications, in `$version` order. Pure.
//!
//! The reconnect flow of IoT Hub's device guide: subscribe, GET the twin, then drop every
//! notification whose `$version` is not newer than what the GET returned. Notifications that
//! arrive before the GET is answered are buffered (bounded) and replayed after it, so one that
//! raced the GET is neither lost nor applied on top of a stale base. The agent keeps only the
//! `maintenance` section; a notification is a JSON merge patch of it.

use std::collections::VecDeque;

use casement_iothub::twin::{VERSION_KEY, apply_merge_patch};
use casement_policy::maintenance::MAINTENANCE;
use serde_json::{Map, Value};

/// Notifications buffered while a session's GET is outstanding; older ones are dropped (the
/// GET answer supersedes them anyway).
pub const MAX_BUFFERED: usize = 32;

/// What a desired notification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Held until the session's twin GET is answered.
    Buffered,
    /// Not newer than the version held; ignored.
    Stale {
        /// The notification's version.
        version: u64,
        /// The version held.
        current: u64,
    },
    /// Newer, and it changed `maintenance`: apply it.
    Maintenance,
    /// Newer, but `maintenance` is untouched.
    Other,
}

/// The desired `maintenance` and the `$version` it is at.
#[derive(Debug, Default, Clone)]
pub struct DesiredState {
    version: Option<u64>,
    maintenance: Option<Value>,
    awaiting_get: bool,
    buffered: VecDeque<(u64, Value)>,
}

impl DesiredState {
    /// Nothing known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new session started; its GET is outstanding.
    pub fn begin_session(&mut self) {
        self.awaiting_get = true;
        self.buffered.clear();
    }

    /// The session's GET answered with `desired` (the `desired` object, with `$version`). It is
    /// the truth — even when older than what was held, as after a hub lost its data. Buffered
    /// notifications are replayed; what each did is returned.
    pub fn on_get(&mut self, desired: &Value) -> Vec<Notification> {
        self.awaiting_get = false;
        self.version = Some(
            desired
                .get(VERSION_KEY)
                .and_then(Value::as_u64)
                .unwrap_or(0),
        );
        self.maintenance = desired.get(MAINTENANCE).filter(|v| !v.is_null()).cloned();
        let buffered = std::mem::take(&mut self.buffered);
        buffered
            .into_iter()
            .map(|(version, patch)| self.on_notification(version, patch))
            .collect()
    }

    /// A desired notification with `$version` = `version` and body `patch`.
    pub fn on_notification(&mut self, version: u64, patch: Value) -> Notification {
        if self.awaiting_get {
            if self.buffered.len() >= MAX_BUFFERED {
                self.buffered.pop_front();
            }
            self.buffered.push_back((version, patch));
            return Notification::Buffered;
        }
        if let Some(current) = self.version
            && version <= current
        {
            return Notification::Stale { version, current };
        }
        self.version = Some(version);
        let Some(change) = patch.get(MAINTENANCE) else {
            return Notification::Other;
        };
        if change.is_null() {
            self.maintenance = None;
        } else {
            let mut merged = self
                .maintenance
                .take()
                .unwrap_or_else(|| Value::Object(Map::new()));
            apply_merge_patch(&mut merged, change);
            self.maintenance = Some(merged);
        }
        Notification::Maintenance
    }

    /// The desired `maintenance` (`None`: absent or `null`).
    pub fn maintenance(&self) -> Option<&Value> {
        self.maintenance.as_ref()
    }

    /// The desired `$version` held.
    pub fn version(&self) -> Option<u64> {
        self.version
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fetched(version: u64, maintenance: Value) -> (DesiredState, Vec<Notification>) {
        let mut state = DesiredState::new();
        state.begin_session();
        let replayed = state.on_get(&json!({"maintenance": maintenance, "$version": version}));
        (state, replayed)
    }

    #[test]
    fn notifications_not_newer_than_held_are_ignored() {
        let (mut state, _) = fetched(5, json!({"policy": "a"}));
        for version in [3, 5] {
            assert_eq!(
                state.on_notification(
                    version,
                    json!({"maintenance": {"policy": "old"}, "$version": version})
                ),
                Notification::Stale {
                    version,
                    current: 5
                }
            );
        }
        assert_eq!(state.maintenance(), Some(&json!({"policy": "a"})));
        assert_eq!(
            state.on_notification(6, json!({"maintenance": {"policy": "b"}, "$version": 6})),
            Notification::Maintenance
        );
        assert_eq!(state.maintenance(), Some(&json!({"policy": "b"})));
        assert_eq!(state.version(), Some(6));
    }

    #[test]
    fn notifications_merge_into_the_held_maintenance() {
        let (mut state, _) = fetched(
            1,
            json!({"policy": "a", "revision": "r1", "window": {"schedule": "0 2 * * SUN", "durationSeconds": 60}}),
        );
        state.on_notification(
            2,
            json!({"maintenance": {"revision": "r2", "window": {"durationSeconds": 120}}}),
        );
        assert_eq!(
            state.maintenance(),
            Some(&json!({"policy": "a", "revision": "r2",
                         "window": {"schedule": "0 2 * * SUN", "durationSeconds": 120}}))
        );
        assert_eq!(
            state.on_notification(3, json!({"other": 1})),
            Notification::Other
        );
        assert_eq!(
            state.on_notification(4, json!({"maintenance": null})),
            Notification::Maintenance
        );
        assert_eq!(state.maintenance(), None);
    }

    #[test]
    fn notifications_racing_the_get_are_buffered_then_filtered() {
        let mut state = DesiredState::new();
        state.begin_session();
        assert_eq!(
            state.on_notification(7, json!({"maintenance": {"revision": "r7"}})),
            Notification::Buffered
        );
        assert_eq!(
            state.on_notification(9, json!({"maintenance": {"revision": "r9"}})),
            Notification::Buffered
        );
        // The GET already includes version 7 (and is at 8): 7 is stale, 9 applies on top.
        let replayed =
            state.on_get(&json!({"maintenance": {"policy": "p", "revision": "r8"}, "$version": 8}));
        assert_eq!(
            replayed,
            [
                Notification::Stale {
                    version: 7,
                    current: 8
                },
                Notification::Maintenance
            ]
        );
        assert_eq!(
            state.maintenance(),
            Some(&json!({"policy": "p", "revision": "r9"}))
        );
    }

    #[test]
    fn the_get_is_the_truth_even_when_older() {
        let (mut state, _) = fetched(40, json!({"policy": "a"}));
        // A new session against a hub that lost its data.
        state.begin_session();
        state.on_get(&json!({"$version": 2}));
        assert_eq!(state.version(), Some(2));
        assert_eq!(state.maintenance(), None);
        assert_eq!(
            state.on_notification(3, json!({"maintenance": {"policy": "b"}})),
            Notification::Maintenance
        );
    }

    #[test]
    fn the_buffer_is_bounded() {
        let mut state = DesiredState::new();
        state.begin_session();
        for version in 1..=(MAX_BUFFERED as u64 + 10) {
            state.on_notification(version, json!({"other": version}));
        }
        let replayed = state.on_get(&json!({"$version": 0}));
        assert_eq!(replayed.len(), MAX_BUFFERED);
        assert_eq!(state.version(), Some(MAX_BUFFERED as u64 + 10));
    }
}
