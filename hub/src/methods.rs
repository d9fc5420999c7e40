//! Direct methods in flight: request ids issued to devices, waiting for their answers.
//!
//! The REST handler registers a call (bounded by a semaphore: at most `max_inflight_methods`
//! at once), publishes the request, and awaits the answer with the response timeout; the MQTT
//! connection completes it when `$iothub/methods/res/{status}/?$rid={rid}` arrives. The table is
//! keyed by (device, rid), so a device can answer only its own requests. A call that times out
//! or is abandoned removes itself (the [`Pending`] guard), so late answers are dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use casement_iothub::topic::rid_from_counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// A device's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MethodReply {
    /// The status the device chose.
    pub(crate) status: i32,
    /// The raw body it sent.
    pub(crate) payload: Bytes,
}

type Key = (String, String);

/// The in-flight table.
#[derive(Debug)]
pub(crate) struct Methods {
    pending: Mutex<HashMap<Key, oneshot::Sender<MethodReply>>>,
    next_rid: AtomicU64,
    permits: Arc<Semaphore>,
}

/// A registered call; dropping it unregisters it.
#[derive(Debug)]
pub(crate) struct Pending {
    table: Arc<Methods>,
    key: Key,
    /// The request id to put in the topic.
    pub(crate) rid: String,
    /// Resolves with the device's answer.
    pub(crate) reply: oneshot::Receiver<MethodReply>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.table.lock().remove(&self.key);
    }
}

impl Methods {
    pub(crate) fn new(max_inflight: usize) -> Self {
        Self {
            pending: Mutex::new(HashMap::new()),
            next_rid: AtomicU64::new(1),
            permits: Arc::new(Semaphore::new(max_inflight.max(1))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, oneshot::Sender<MethodReply>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a call to `device_id`; `None` when too many calls are in flight.
    pub(crate) fn register(self: &Arc<Self>, device_id: &str) -> Option<Pending> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let rid = rid_from_counter(self.next_rid.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let key = (device_id.to_owned(), rid.clone());
        self.lock().insert(key.clone(), tx);
        Some(Pending {
            table: self.clone(),
            key,
            rid,
            reply: rx,
            _permit: permit,
        })
    }

    /// Delivers a device's answer; false when no such call is waiting (late, or not its own).
    pub(crate) fn complete(&self, device_id: &str, rid: &str, reply: MethodReply) -> bool {
        let sender = self.lock().remove(&(device_id.to_owned(), rid.to_owned()));
        sender.is_some_and(|tx| tx.send(reply).is_ok())
    }

    /// Calls in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_reach_only_the_right_call() {
        let methods = Arc::new(Methods::new(2));
        let call = methods.register("d1").expect("slot");
        let reply = MethodReply {
            status: 200,
            payload: Bytes::from_static(b"{}"),
        };
        assert!(
            !methods.complete("d2", &call.rid, reply.clone()),
            "another device's answer"
        );
        assert!(methods.complete("d1", &call.rid, reply.clone()));
        assert!(
            !methods.complete("d1", &call.rid, reply.clone()),
            "answered twice"
        );
        let mut call = call;
        assert_eq!((&mut call.reply).await.expect("answer"), reply);
    }

    #[test]
    fn capped_and_cleaned_up() {
        let methods = Arc::new(Methods::new(1));
        let first = methods.register("d1").expect("slot");
        assert!(methods.register("d1").is_none(), "cap reached");
        let rid = first.rid.clone();
        drop(first);
        assert_eq!(methods.in_flight(), 0);
        assert!(!methods.complete(
            "d1",
            &rid,
            MethodReply {
                status: 200,
                payload: Bytes::new()
            }
        ));
        assert!(methods.register("d1").is_some(), "permit released");
    }
}
