//! Failed authentications per source address: a token bucket per IP address
//! (`auth.failures_per_source_per_second`, `auth.failures_per_source_burst`). Every failed
//! authentication takes a token; while a source has none left, its requests are refused with
//! RESOURCE_EXHAUSTED before anything is read from the store, unless they carry a credential
//! this node already knows to be good (the root key, or an API key in the principal cache: a
//! hash and a map lookup), so a legitimate client behind the same address as an attacker
//! keeps working. Refusing costs a SHA-256 and a lock; no RocksDB read, no read index, no
//! Raft write.
//!
//! The map is bounded: past `MAX_SOURCES` addresses, the ones whose bucket has refilled are
//! forgotten, and if that frees nothing, all are.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::NexusError;

/// Most source addresses remembered at once.
const MAX_SOURCES: usize = 100_000;

pub struct FailureLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl FailureLimiter {
    /// `per_second` 0 turns the limit off.
    pub fn new(per_second: f64, burst: u32) -> Self {
        FailureLimiter {
            per_second: per_second.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, bucket: &mut (f64, Instant), now: Instant) {
        bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * self.per_second)
            .min(self.burst);
        bucket.1 = now;
    }

    /// Ok while `source` may still fail; otherwise RESOURCE_EXHAUSTED saying when to retry.
    pub fn check(&self, source: IpAddr) -> Result<(), NexusError> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = buckets.get_mut(&source) else {
            return Ok(());
        };
        self.refill(bucket, now);
        if bucket.0 >= 1.0 {
            return Ok(());
        }
        let wait_ms = ((1.0 - bucket.0) / self.per_second * 1000.0).ceil() as u64;
        Err(NexusError::ResourceExhausted {
            limit: "auth.failures_per_source_per_second".into(),
            message: format!(
                "too many failed authentications from {source}; retry in {wait_ms} ms"
            ),
        })
    }

    /// Takes a token from `source`'s bucket after a failed authentication.
    pub fn charge(&self, source: IpAddr) {
        if self.per_second <= 0.0 {
            return;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            let (per_second, burst) = (self.per_second, self.burst);
            buckets.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * per_second < burst
            });
            if buckets.len() >= MAX_SOURCES {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(source).or_insert((self.burst, now));
        self.refill(bucket, now);
        bucket.0 = (bucket.0 - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_refused_after_its_burst_of_failures_and_refills() {
        let limiter = FailureLimiter::new(20.0, 3);
        let bad: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            limiter.check(bad).unwrap();
            limiter.charge(bad);
        }
        let e = limiter.check(bad).unwrap_err();
        assert!(
            e.to_string()
                .contains("auth.failures_per_source_per_second"),
            "{e}"
        );
        limiter.check(other).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(60));
        limiter.check(bad).unwrap();
        let off = FailureLimiter::new(0.0, 0);
        for _ in 0..100 {
            off.charge(bad);
        }
        off.check(bad).unwrap();
    }
}
