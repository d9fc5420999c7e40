//! Who gets one of an HTTP(S) listener's connection slots, so that idle sockets cannot lock
//! the REST API out (issue 13 item 2: 1,024 connections that send nothing used to fill the cap
//! HTTP and HTTPS shared, resetting every REST call for the 100 s header timeout).
//!
//! The rules, per listener (each has its own [`Admission`]):
//! - **A cap** (`Limits::max_http_connections`) on open connections.
//! - **Silent connections are the first to go.** A connection that has not sent its first byte
//!   is *fresh*. It has `Limits::connect_timeout` (10 s, as MQTT's CONNECT) to send one, and
//!   while it is fresh it can be evicted: when the cap is full, a new connection closes the
//!   oldest fresh one and takes its slot. Connections that have spoken (a request, a TLS hello)
//!   are never evicted; they end by their own timeouts.
//! - **A fair share per peer** (`Limits::max_http_connections_per_peer`, default half the cap):
//!   one IP address cannot hold more than that. A peer at its share that opens another
//!   connection evicts its own oldest fresh one, or is refused if all of its connections have
//!   spoken. So one address trickling headers can hold at most half the listener, and the rest
//!   stays open to everyone else.
//!
//! A legitimate client sends its request as soon as it connects, so while any number of idle
//! sockets are open it gets a slot at once and leaves the fresh set within a round trip.
//! All connections over loopback come from 127.0.0.1 (or another 127/8 address): there, the
//! eviction of silent connections is what keeps the API reachable.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// One listener's connection slots.
#[derive(Debug)]
pub(crate) struct Admission {
    cap: usize,
    per_peer: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    total: usize,
    peers: HashMap<IpAddr, usize>,
    /// Connections that have sent nothing yet, oldest first (ids grow).
    fresh: BTreeMap<u64, (IpAddr, CancellationToken)>,
    next_id: u64,
}

impl Inner {
    fn release(&mut self, peer: IpAddr) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.peers.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.peers.remove(&peer);
            }
        }
    }

    /// Closes the oldest fresh connection (of `peer`, if given) and frees its slot.
    fn evict_oldest(&mut self, peer: Option<IpAddr>) -> bool {
        let victim = self
            .fresh
            .iter()
            .find(|(_, (p, _))| peer.is_none_or(|want| *p == want))
            .map(|(id, _)| *id);
        let Some(id) = victim else { return false };
        if let Some((p, token)) = self.fresh.remove(&id) {
            token.cancel();
            self.release(p);
        }
        true
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The peer holds its fair share, all of it busy.
    PeerShare,
    /// The listener is full of connections that have spoken.
    Full,
}

impl Admission {
    /// `cap` connections, at most `per_peer` of them from one address (both at least 1).
    pub(crate) fn new(cap: usize, per_peer: usize) -> Self {
        Self {
            cap: cap.max(1),
            per_peer: per_peer.clamp(1, cap.max(1)),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection from `peer` as fresh, evicting silent connections if needed.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refused> {
        let mut inner = self.lock();
        if inner.peers.get(&peer).copied().unwrap_or(0) >= self.per_peer
            && !inner.evict_oldest(Some(peer))
        {
            return Err(Refused::PeerShare);
        }
        if inner.total >= self.cap && !inner.evict_oldest(None) {
            return Err(Refused::Full);
        }
        inner.total += 1;
        *inner.peers.entry(peer).or_insert(0) += 1;
        let id = inner.next_id;
        inner.next_id += 1;
        let evicted = CancellationToken::new();
        inner.fresh.insert(id, (peer, evicted.clone()));
        Ok(Ticket {
            admission: self.clone(),
            id,
            peer,
            evicted,
        })
    }

    /// Open connections (for tests and logs).
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().total
    }
}

/// A connection's slot; freed when dropped.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    peer: IpAddr,
    evicted: CancellationToken,
}

impl Ticket {
    /// Cancelled when a newer connection took this (still silent) connection's slot.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }

    /// The connection sent its first byte: it can no longer be evicted. `false` if it already
    /// was (the caller closes it).
    pub(crate) fn spoke(&self) -> bool {
        let mut inner = self.admission.lock();
        inner.fresh.remove(&self.id).is_some() || !self.evicted.is_cancelled()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        // An evicted ticket's slot was released when it was evicted.
        if !self.evicted.is_cancelled() {
            inner.fresh.remove(&self.id);
            inner.release(self.peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn silent_connections_are_evicted_oldest_first_when_full() {
        let adm = Arc::new(Admission::new(3, 3));
        let t1 = adm.admit(A).expect("1");
        let t2 = adm.admit(A).expect("2");
        let t3 = adm.admit(A).expect("3");
        assert!(t2.spoke());
        let t4 = adm.admit(A).expect("4 evicts the oldest silent one");
        assert!(t1.evicted().is_cancelled());
        assert!(!t3.evicted().is_cancelled());
        assert!(!t1.spoke(), "an evicted connection cannot speak");
        assert_eq!(adm.open(), 3);
        drop(t1);
        assert_eq!(adm.open(), 3, "the evicted slot was already given away");
        assert!(t3.spoke() && t4.spoke());
        assert!(adm.admit(A).is_err(), "every slot has spoken");
        drop(t2);
        assert!(adm.admit(A).is_ok());
    }

    #[test]
    fn one_peer_holds_at_most_its_share() {
        let adm = Arc::new(Admission::new(4, 2));
        let a1 = adm.admit(A).expect("a1");
        let a2 = adm.admit(A).expect("a2");
        assert!(a1.spoke() && a2.spoke());
        assert_eq!(adm.admit(A).err(), Some(Refused::PeerShare));
        let b1 = adm.admit(B).expect("another peer still gets in");
        // At its share with a silent connection, a peer evicts its own, not another's.
        let a3 = {
            drop(a2);
            adm.admit(A).expect("a3")
        };
        let _a4 = adm.admit(A).expect("a4 evicts a3");
        assert!(a3.evicted().is_cancelled());
        assert!(!b1.evicted().is_cancelled());
    }
}
