//! Per-tenant request rate limits: a token bucket per tenant on each node
//! (`quotas.requests_per_second`, `quotas.burst`). A request over the limit is refused with
//! ResourceExhausted naming the limit, before its handler runs. The root principal is never
//! limited, so an operator cannot be locked out. Each node limits what it receives; a client
//! spreading its requests over N nodes gets up to N times the rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::QuotaConfig;
use crate::error::NexusError;

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(config: &QuotaConfig) -> Self {
        let per_second = config.requests_per_second.max(0.0);
        let burst = if config.burst == 0 {
            per_second.ceil().max(1.0)
        } else {
            config.burst as f64
        };
        RateLimiter {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from the tenant's bucket, or says how long to wait.
    pub fn check(&self, tenant: &str) -> Result<(), NexusError> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets
            .entry(tenant.to_string())
            .or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - *tokens) / self.per_second * 1000.0).ceil() as u64;
        Err(NexusError::ResourceExhausted {
            limit: "quotas.requests_per_second".into(),
            message: format!(
                "tenant {tenant} is over {} requests/s (burst {}) on this node; retry in {wait_ms} ms",
                self.per_second, self.burst
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_per_tenant_and_refill() {
        let limiter = RateLimiter::new(&QuotaConfig {
            requests_per_second: 10.0,
            burst: 3,
        });
        for _ in 0..3 {
            limiter.check("a").unwrap();
        }
        let err = limiter.check("a").unwrap_err();
        assert!(
            err.to_string().contains("quotas.requests_per_second"),
            "{err}"
        );
        limiter.check("b").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        limiter.check("a").unwrap();
        let off = RateLimiter::new(&QuotaConfig::default());
        for _ in 0..1000 {
            off.check("a").unwrap();
        }
    }
}
