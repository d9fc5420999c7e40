//! Reported-property patches on their way to the hub: queued, composed, sent one at a time,
//! and kept until the hub acknowledges them — across reconnects.
//!
//! A patch is queued whenever the agent has something to say; while another patch is in
//! flight, new ones are composed into a single pending patch (later values win, `null`s kept,
//! so the composition means the same as sending them in order). A `204` retires the patch in
//! flight; a lost connection, `429` or `5xx` puts it back in front of whatever is pending, so
//! nothing the agent reported is lost while it is offline. Pure: no I/O here.

use serde_json::Value;

/// What the hub's answer to the patch in flight means.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportAck {
    /// `204`: the hub has it.
    Accepted(Value),
    /// `429` or `5xx`: put back, to be sent again.
    Retry {
        /// The status the hub sent.
        status: u16,
    },
    /// Any other status: the hub refuses this patch; it is dropped.
    Refused {
        /// The status the hub sent.
        status: u16,
        /// The patch that was refused.
        patch: Value,
    },
    /// The response is not for the patch in flight (a stale or foreign `$rid`).
    Unknown,
}

/// The queue of reported patches.
#[derive(Debug, Default)]
pub struct Reporter {
    pending: Option<Value>,
    inflight: Option<(String, Value)>,
}

impl Reporter {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a patch (composed into anything already pending).
    pub fn queue(&mut self, patch: Value) {
        match &mut self.pending {
            Some(pending) => compose(pending, patch),
            None => self.pending = Some(patch),
        }
    }

    /// When nothing is in flight, takes the pending patch to send under `rid`.
    pub fn take_next(&mut self, rid: impl FnOnce() -> String) -> Option<(String, Value)> {
        if self.inflight.is_some() {
            return None;
        }
        let patch = self.pending.take()?;
        let rid = rid();
        self.inflight = Some((rid.clone(), patch.clone()));
        Some((rid, patch))
    }

    /// The hub answered `status` for request `rid`.
    pub fn on_response(&mut self, rid: &str, status: u16) -> ReportAck {
        match &self.inflight {
            Some((inflight, _)) if inflight == rid => {}
            _ => return ReportAck::Unknown,
        }
        let Some((_, patch)) = self.inflight.take() else {
            return ReportAck::Unknown;
        };
        match status {
            200..=299 => ReportAck::Accepted(patch),
            429 | 500..=599 => {
                self.requeue_front(patch);
                ReportAck::Retry { status }
            }
            _ => ReportAck::Refused { status, patch },
        }
    }

    /// The connection dropped: the patch in flight goes back in front of the pending one.
    pub fn on_disconnect(&mut self) {
        if let Some((_, patch)) = self.inflight.take() {
            self.requeue_front(patch);
        }
    }

    /// The `$rid` of the patch in flight.
    pub fn inflight_rid(&self) -> Option<&str> {
        self.inflight.as_ref().map(|(rid, _)| rid.as_str())
    }

    /// Whether nothing is pending or in flight.
    pub fn is_idle(&self) -> bool {
        self.pending.is_none() && self.inflight.is_none()
    }

    fn requeue_front(&mut self, mut patch: Value) {
        if let Some(later) = self.pending.take() {
            compose(&mut patch, later);
        }
        self.pending = Some(patch);
    }
}

/// Composes two merge patches: the result applied once equals `earlier` then `later` applied in
/// order, as long as objects replaced by `null` and then re-added are re-added whole — which is
/// how the agent reports (every object it writes names all of its fields).
pub fn compose(earlier: &mut Value, later: Value) {
    match (earlier, later) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        compose(existing, value);
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (earlier, later) => *earlier = later,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rid(n: u32) -> impl FnOnce() -> String {
        move || format!("r{n}")
    }

    #[test]
    fn compose_keeps_nulls_and_later_values_win() {
        let mut a =
            json!({"maintenance": {"status": "applied", "window": {"open": false}}, "x": 1});
        compose(
            &mut a,
            json!({"maintenance": {"window": {"open": true}, "error": null}, "x": null}),
        );
        assert_eq!(
            a,
            json!({"maintenance": {"status": "applied", "window": {"open": true}, "error": null}, "x": null})
        );
        let mut b = json!({"maintenance": null});
        compose(&mut b, json!({"maintenance": {"policy": "p"}}));
        assert_eq!(b, json!({"maintenance": {"policy": "p"}}));
    }

    #[test]
    fn one_patch_in_flight_and_the_rest_composed() {
        let mut r = Reporter::new();
        r.queue(json!({"a": 1}));
        let (id, patch) = r.take_next(rid(1)).unwrap();
        assert_eq!((id.as_str(), &patch), ("r1", &json!({"a": 1})));
        r.queue(json!({"b": 1}));
        r.queue(json!({"b": 2, "c": 3}));
        assert!(r.take_next(rid(2)).is_none(), "only one in flight");
        assert_eq!(r.on_response("other", 204), ReportAck::Unknown);
        assert_eq!(
            r.on_response("r1", 204),
            ReportAck::Accepted(json!({"a": 1}))
        );
        let (_, patch) = r.take_next(rid(2)).unwrap();
        assert_eq!(patch, json!({"b": 2, "c": 3}));
        assert_eq!(r.on_response("r2", 204), ReportAck::Accepted(patch));
        assert!(r.is_idle());
    }

    #[test]
    fn a_lost_connection_or_throttling_requeues_in_order() {
        let mut r = Reporter::new();
        r.queue(json!({"window": {"open": true}, "status": "x"}));
        r.take_next(rid(1)).unwrap();
        r.queue(json!({"window": {"open": false}}));
        r.on_disconnect();
        assert_eq!(r.inflight_rid(), None);
        let (_, patch) = r.take_next(rid(2)).unwrap();
        // The later "closed" must not be overwritten by the earlier "open" that was in flight.
        assert_eq!(patch, json!({"window": {"open": false}, "status": "x"}));
        assert_eq!(r.on_response("r2", 429), ReportAck::Retry { status: 429 });
        assert!(!r.is_idle());
        let (_, again) = r.take_next(rid(3)).unwrap();
        assert_eq!(again, patch);
        assert_eq!(
            r.on_response("r3", 400),
            ReportAck::Refused {
                status: 400,
                patch: again
            }
        );
        assert!(r.is_idle());
    }
}
