//! Client-side limits: the client keeps a tier's quotas itself (from the one table in
//! [`casement_iothub::quota`]), so against Azure IoT Hub it never relies on 429s.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use casement_iothub::quota::{Operation, Rate, Tier, TokenBucket};
use tokio::time::Instant;

/// Client-side limits per operation class; a class without one is unlimited.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quota {
    rates: BTreeMap<Operation, Rate>,
}

impl Quota {
    /// No client-side limits (the local hub, unthrottled).
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// The documented quotas of `tier` with `units` units, spread out ([`Rate::spread`]): a
    /// per-minute quota is never spent in one burst, so a restarted client cannot exceed it.
    pub fn tier(tier: Tier, units: u32) -> Self {
        let rates = Operation::ALL
            .into_iter()
            .map(|op| (op, tier.rate(op, units).spread()))
            .collect();
        Self { rates }
    }

    /// Sets one class's limit (replacing the tier's); spread out as [`Quota::tier`]'s are.
    pub fn with(mut self, op: Operation, rate: Rate) -> Self {
        self.rates.insert(op, rate.spread());
        self
    }

    /// The limit of `op`, if any.
    pub fn rate(&self, op: Operation) -> Option<Rate> {
        self.rates.get(&op).copied()
    }

    /// True when nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.rates.is_empty()
    }
}

/// One token bucket per limited class, on tokio's clock (so `tokio::time::pause()` drives it).
#[derive(Debug)]
pub(crate) struct Limiter {
    buckets: BTreeMap<Operation, Mutex<TokenBucket>>,
}

impl Limiter {
    pub(crate) fn new(quota: &Quota) -> Self {
        let now = Instant::now().into_std();
        let buckets = quota
            .rates
            .iter()
            .map(|(op, rate)| (*op, Mutex::new(TokenBucket::new(*rate, now))))
            .collect();
        Self { buckets }
    }

    /// Waits until `op` may be sent.
    pub(crate) async fn acquire(&self, op: Operation) {
        let Some(bucket) = self.buckets.get(&op) else {
            return;
        };
        loop {
            let wait = bucket
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .try_take(Instant::now().into_std());
            match wait {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}
