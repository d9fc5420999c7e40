//! The device session table: who is connected, over which connection, subscribed to what.
//!
//! One entry per device identity. IoT Hub allows one connection per identity, so attaching a
//! new connection cancels the old one (IoT Hub's 400027). A `CleanSession=0` session keeps its
//! subscriptions across reconnects (the Node SDK reconnects on token renewal without
//! re-subscribing, reference §2) and across hub restarts (they are stored in sled).
//!
//! Everything here is synchronous and short: the table sits behind one mutex that is never held
//! across an `.await`. Packets to a device go through its connection's bounded queue; a device
//! whose queue is full is disconnected rather than buffered without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use casement_iothub::topic::{HubToDevice, MAX_SUBSCRIPTIONS, Subscription};

use crate::store::Store;

/// A packet for a device's connection task to write.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) qos: QoS,
}

/// What a device connection subscribed to, as persisted: (filter as sent, granted QoS 0 or 1),
/// at most [`MAX_SUBSCRIPTIONS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Subscriptions {
    pub(crate) filters: Vec<(String, u8)>,
    #[serde(skip)]
    parsed: Vec<Subscription>,
}

impl Subscriptions {
    /// Re-parses persisted filters (dropping any this version no longer supports).
    fn reparse(mut self, device_id: &str) -> Self {
        let mut filters = Vec::new();
        let mut parsed = Vec::new();
        for (filter, qos) in self.filters.drain(..) {
            if let Ok(sub) = Subscription::parse_for(&filter, device_id, None) {
                filters.push((filter, qos));
                parsed.push(sub);
            }
        }
        Self { filters, parsed }
    }

    /// The QoS to deliver `publish` at, when some subscription matches it.
    fn qos_for(&self, publish: &HubToDevice) -> Option<QoS> {
        self.filters
            .iter()
            .zip(&self.parsed)
            .filter(|(_, sub)| sub.matches(publish))
            .map(|((_, qos), _)| {
                if *qos >= 1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                }
            })
            .max_by_key(|q| *q as u8)
    }

    fn has_methods(&self) -> bool {
        self.parsed.contains(&Subscription::Methods)
    }
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscribeRefusal {
    /// Not a filter on one of IoT Hub's documented topics for this device.
    Unsupported,
    /// The device already has [`MAX_SUBSCRIPTIONS`].
    TooMany,
}

/// A live connection's handle, held by the table.
#[derive(Debug)]
struct Conn {
    id: u64,
    tx: mpsc::Sender<Outbound>,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct Slot {
    conn: Option<Conn>,
    subs: Subscriptions,
    persistent: bool,
    changed: Arc<Notify>,
}

/// Why a packet was not handed to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotDelivered {
    /// The device has no connection.
    Offline,
    /// Connected, but no subscription matches the topic.
    NotSubscribed,
    /// Its queue was full; the connection has been dropped.
    Overloaded,
}

/// The session table.
#[derive(Debug)]
pub(crate) struct Broker {
    slots: Mutex<HashMap<String, Slot>>,
    next_id: AtomicU64,
    store: Arc<Store>,
}

/// What attaching a connection returns.
#[derive(Debug)]
pub(crate) struct Attached {
    pub(crate) conn_id: u64,
    pub(crate) session_present: bool,
}

impl Broker {
    /// A table with the persisted `CleanSession=0` sessions loaded (all offline).
    pub(crate) fn new(store: Arc<Store>, sessions: Vec<(String, Subscriptions)>) -> Self {
        let slots = sessions
            .into_iter()
            .map(|(id, subs)| {
                let subs = subs.reparse(&id);
                (
                    id,
                    Slot {
                        subs,
                        persistent: true,
                        ..Slot::default()
                    },
                )
            })
            .collect();
        Self {
            slots: Mutex::new(slots),
            next_id: AtomicU64::new(1),
            store,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes `tx` the device's connection, cancelling any previous one.
    pub(crate) fn attach(
        &self,
        device_id: &str,
        clean_session: bool,
        tx: mpsc::Sender<Outbound>,
        cancel: CancellationToken,
    ) -> Attached {
        let conn_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut slots = self.lock();
        let slot = slots.entry(device_id.to_owned()).or_default();
        if let Some(old) = slot.conn.take() {
            tracing::info!(
                device = device_id,
                "new connection for the device; closing the old one (400027)"
            );
            old.cancel.cancel();
        }
        let session_present = !clean_session && slot.persistent;
        if clean_session || !slot.persistent {
            slot.subs = Subscriptions::default();
        }
        if clean_session && slot.persistent {
            self.persist(device_id, None);
        }
        slot.persistent = !clean_session;
        if slot.persistent {
            self.persist(device_id, Some(&slot.subs));
        }
        slot.conn = Some(Conn {
            id: conn_id,
            tx,
            cancel,
        });
        slot.changed.notify_waiters();
        Attached {
            conn_id,
            session_present,
        }
    }

    /// Forgets connection `conn_id` if it is still the device's current one.
    pub(crate) fn detach(&self, device_id: &str, conn_id: u64) -> bool {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(device_id) else {
            return false;
        };
        if slot.conn.as_ref().map(|c| c.id) != Some(conn_id) {
            return false;
        }
        slot.conn = None;
        slot.changed.notify_waiters();
        if !slot.persistent {
            slots.remove(device_id);
        }
        true
    }

    /// Adds subscriptions for the current connection; one result per filter (granted QoS).
    pub(crate) fn subscribe(
        &self,
        device_id: &str,
        conn_id: u64,
        filters: &[(String, QoS)],
    ) -> Vec<Result<QoS, SubscribeRefusal>> {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(device_id).filter(|s| is_current(s, conn_id)) else {
            return filters
                .iter()
                .map(|_| Err(SubscribeRefusal::Unsupported))
                .collect();
        };
        let mut results = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            let Ok(sub) = Subscription::parse_for(filter, device_id, None) else {
                results.push(Err(SubscribeRefusal::Unsupported));
                continue;
            };
            // IoT Hub grants QoS 2 as QoS 1.
            let granted = if *qos == QoS::AtMostOnce { 0 } else { 1 };
            if let Some(existing) = slot.subs.filters.iter_mut().find(|(f, _)| f == filter) {
                existing.1 = granted;
            } else if slot.subs.filters.len() >= MAX_SUBSCRIPTIONS {
                results.push(Err(SubscribeRefusal::TooMany));
                continue;
            } else {
                slot.subs.filters.push((filter.clone(), granted));
                slot.subs.parsed.push(sub);
            }
            results.push(Ok(if granted == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            }));
        }
        if slot.persistent {
            self.persist(device_id, Some(&slot.subs));
        }
        slot.changed.notify_waiters();
        results
    }

    /// Removes subscriptions of the current connection.
    pub(crate) fn unsubscribe(&self, device_id: &str, conn_id: u64, filters: &[String]) {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(device_id).filter(|s| is_current(s, conn_id)) else {
            return;
        };
        let subs = std::mem::take(&mut slot.subs);
        let (kept_filters, kept_parsed): (Vec<_>, Vec<_>) = subs
            .filters
            .into_iter()
            .zip(subs.parsed)
            .filter(|((f, _), _)| !filters.contains(f))
            .unzip();
        slot.subs = Subscriptions {
            filters: kept_filters,
            parsed: kept_parsed,
        };
        if slot.persistent {
            self.persist(device_id, Some(&slot.subs));
        }
        slot.changed.notify_waiters();
    }

    /// Queues a packet for the device when it is connected and subscribed to it. `max_qos`
    /// caps the delivery QoS (method requests go at QoS 0).
    pub(crate) fn publish(
        &self,
        device_id: &str,
        publish: &HubToDevice,
        payload: Bytes,
        max_qos: QoS,
    ) -> Result<(), NotDelivered> {
        let slots = self.lock();
        let slot = slots.get(device_id).ok_or(NotDelivered::Offline)?;
        let conn = slot.conn.as_ref().ok_or(NotDelivered::Offline)?;
        let qos = slot
            .subs
            .qos_for(publish)
            .ok_or(NotDelivered::NotSubscribed)?;
        let qos = if (qos as u8) > (max_qos as u8) {
            max_qos
        } else {
            qos
        };
        match conn.tx.try_send(Outbound {
            topic: publish.to_string(),
            payload,
            qos,
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(
                    device = device_id,
                    "device is not reading its socket; disconnecting it"
                );
                conn.cancel.cancel();
                Err(NotDelivered::Overloaded)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NotDelivered::Offline),
        }
    }

    /// Whether the device is connected and subscribed to direct methods.
    pub(crate) fn accepts_methods(&self, device_id: &str) -> bool {
        self.lock()
            .get(device_id)
            .is_some_and(|s| s.conn.is_some() && s.subs.has_methods())
    }

    /// A notifier that fires on every connect, disconnect and (un)subscribe of the device.
    pub(crate) fn changes(&self, device_id: &str) -> Arc<Notify> {
        self.lock()
            .entry(device_id.to_owned())
            .or_default()
            .changed
            .clone()
    }

    /// Drops a notifier slot that `changes` created for a device that never connected.
    pub(crate) fn forget_idle(&self, device_id: &str) {
        let mut slots = self.lock();
        if slots.get(device_id).is_some_and(|s| {
            s.conn.is_none() && !s.persistent && Arc::strong_count(&s.changed) == 1
        }) {
            slots.remove(device_id);
        }
    }

    /// Closes the device's connection, if any (device disabled, keys changed).
    pub(crate) fn disconnect(&self, device_id: &str) {
        if let Some(conn) = self.lock().get(device_id).and_then(|s| s.conn.as_ref()) {
            conn.cancel.cancel();
        }
    }

    /// Closes the connection and forgets the session (device deleted).
    pub(crate) fn remove(&self, device_id: &str) {
        let mut slots = self.lock();
        if let Some(slot) = slots.remove(device_id) {
            if let Some(conn) = slot.conn {
                conn.cancel.cancel();
            }
            slot.changed.notify_waiters();
        }
    }

    /// The id of the device's current connection, if any.
    pub(crate) fn current_conn(&self, device_id: &str) -> Option<u64> {
        self.lock()
            .get(device_id)
            .and_then(|s| s.conn.as_ref())
            .map(|c| c.id)
    }

    /// How many devices are connected.
    pub(crate) fn connected_count(&self) -> usize {
        self.lock().values().filter(|s| s.conn.is_some()).count()
    }

    fn persist(&self, device_id: &str, subs: Option<&Subscriptions>) {
        if let Err(e) = self.store.put_session(device_id, subs) {
            tracing::error!(device = device_id, error = %e, "cannot persist the MQTT session");
        }
    }
}

fn is_current(slot: &Slot, conn_id: u64) -> bool {
    slot.conn.as_ref().is_some_and(|c| c.id == conn_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Storage;

    fn twin_response() -> HubToDevice {
        HubToDevice::TwinResponse {
            status: 200,
            rid: "1".into(),
            version: None,
        }
    }

    fn broker() -> Broker {
        Broker::new(
            Arc::new(Store::open(&Storage::InMemory).expect("store")),
            Vec::new(),
        )
    }

    #[test]
    fn new_connection_replaces_old_and_persistent_session_survives() {
        let broker = broker();
        let (tx1, _rx1) = mpsc::channel(4);
        let cancel1 = CancellationToken::new();
        let a = broker.attach("d1", false, tx1, cancel1.clone());
        assert!(!a.session_present);
        let granted = broker.subscribe(
            "d1",
            a.conn_id,
            &[("$iothub/methods/POST/#".into(), QoS::ExactlyOnce)],
        );
        assert_eq!(granted, vec![Ok(QoS::AtLeastOnce)]);
        let (tx2, mut rx2) = mpsc::channel(4);
        let b = broker.attach("d1", false, tx2, CancellationToken::new());
        assert!(cancel1.is_cancelled());
        assert!(b.session_present);
        // The stale connection's detach must not remove the new one.
        assert!(!broker.detach("d1", a.conn_id));
        assert!(broker.accepts_methods("d1"));
        let request = HubToDevice::MethodRequest {
            name: "x".into(),
            rid: "1".into(),
        };
        broker
            .publish("d1", &request, Bytes::new(), QoS::AtMostOnce)
            .expect("delivered");
        let queued = rx2.try_recv().expect("queued");
        assert_eq!(queued.qos, QoS::AtMostOnce);
        assert_eq!(queued.topic, "$iothub/methods/POST/x/?$rid=1");
        assert!(broker.detach("d1", b.conn_id));
        assert!(!broker.accepts_methods("d1"));
        // Persisted: a new broker on the same store knows the subscriptions.
        let sessions: Vec<(String, Subscriptions)> = broker.store.load_sessions().expect("load");
        assert_eq!(
            sessions[0].1.filters,
            vec![("$iothub/methods/POST/#".to_owned(), 1)]
        );
    }

    #[test]
    fn clean_session_forgets() {
        let broker = broker();
        let (tx, _rx) = mpsc::channel(4);
        let a = broker.attach("d1", false, tx, CancellationToken::new());
        broker.subscribe(
            "d1",
            a.conn_id,
            &[("$iothub/twin/res/#".into(), QoS::AtMostOnce)],
        );
        broker.detach("d1", a.conn_id);
        let (tx, _rx) = mpsc::channel(4);
        let b = broker.attach("d1", true, tx, CancellationToken::new());
        assert!(!b.session_present);
        assert_eq!(
            broker.publish("d1", &twin_response(), Bytes::new(), QoS::AtLeastOnce),
            Err(NotDelivered::NotSubscribed)
        );
        assert!(
            broker
                .store
                .load_sessions::<Subscriptions>()
                .expect("load")
                .is_empty()
        );
    }

    #[test]
    fn at_most_five_subscriptions() {
        let broker = broker();
        let (tx, _rx) = mpsc::channel(4);
        let a = broker.attach("d:1", true, tx, CancellationToken::new());
        // Six distinct filters: the device id raw and URL-encoded count separately, as the
        // filter strings differ.
        let filters: Vec<(String, QoS)> = [
            "$iothub/twin/res/#",
            "$iothub/methods/POST/#",
            "$iothub/twin/PATCH/properties/desired/#",
            "devices/+/messages/devicebound/#",
            "devices/d:1/messages/devicebound/#",
            "devices/d%3A1/messages/devicebound/#",
        ]
        .iter()
        .map(|f| ((*f).to_owned(), QoS::AtMostOnce))
        .collect();
        let results = broker.subscribe("d:1", a.conn_id, &filters);
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            5,
            "{results:?}"
        );
        assert_eq!(results[5], Err(SubscribeRefusal::TooMany));
        // Re-subscribing to an existing filter is not a new subscription.
        let again = broker.subscribe("d:1", a.conn_id, &filters[..1]);
        assert_eq!(again, vec![Ok(QoS::AtMostOnce)]);
        // Unsupported filters, and another device's messages, are refused.
        let bad = broker.subscribe(
            "d:1",
            a.conn_id,
            &[
                ("#".into(), QoS::AtMostOnce),
                ("devices/d2/messages/devicebound/#".into(), QoS::AtMostOnce),
            ],
        );
        assert_eq!(bad, vec![Err(SubscribeRefusal::Unsupported); 2]);
    }

    #[test]
    fn a_full_queue_disconnects_the_device() {
        let broker = broker();
        let (tx, _rx) = mpsc::channel(1);
        let cancel = CancellationToken::new();
        let a = broker.attach("d1", true, tx, cancel.clone());
        broker.subscribe(
            "d1",
            a.conn_id,
            &[("$iothub/twin/res/#".into(), QoS::AtMostOnce)],
        );
        assert!(
            broker
                .publish("d1", &twin_response(), Bytes::new(), QoS::AtLeastOnce)
                .is_ok()
        );
        assert_eq!(
            broker.publish("d1", &twin_response(), Bytes::new(), QoS::AtLeastOnce),
            Err(NotDelivered::Overloaded)
        );
        assert!(cancel.is_cancelled());
    }
}
