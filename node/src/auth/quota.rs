//! Per-tenant request rate limits: a token bucket per tenant on each node
//! (`quotas.requests_per_second`, `quotas.burst`, or the tenant's own limits set with
//! `SetTenantLimits`, which replace the node's). A request over the limit is refused with
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

/// The burst of a rate: `burst`, or one second's worth (at least 1) when 0.
fn burst_of(per_second: f64, burst: u32) -> f64 {
    if burst == 0 {
        per_second.ceil().max(1.0)
    } else {
        burst as f64
    }
}

impl RateLimiter {
    pub fn new(config: &QuotaConfig) -> Self {
        let per_second = config.requests_per_second.max(0.0);
        RateLimiter {
            per_second,
            burst: burst_of(per_second, config.burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from the tenant's bucket, or says how long to wait. A
    /// `tenant_rate` above 0 (the tenant's own limit, with `tenant_burst`) replaces the node's.
    pub fn check(
        &self,
        tenant: &str,
        tenant_rate: f64,
        tenant_burst: u32,
    ) -> Result<(), NexusError> {
        let (per_second, burst) = if tenant_rate > 0.0 {
            (tenant_rate, burst_of(tenant_rate, tenant_burst))
        } else {
            (self.per_second, self.burst)
        };
        if per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.entry(tenant.to_string()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_second).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - *tokens) / per_second * 1000.0).ceil() as u64;
        Err(NexusError::ResourceExhausted {
            limit: "quotas.requests_per_second".into(),
            message: format!(
                "tenant {tenant} is over {per_second} requests/s (burst {burst}) on this node; retry in {wait_ms} ms"
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
            limiter.check("a", 0.0, 0).unwrap();
        }
        let err = limiter.check("a", 0.0, 0).unwrap_err();
        assert!(
            err.to_string().contains("quotas.requests_per_second"),
            "{err}"
        );
        limiter.check("b", 0.0, 0).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        limiter.check("a", 0.0, 0).unwrap();
        let off = RateLimiter::new(&QuotaConfig::default());
        for _ in 0..1000 {
            off.check("a", 0.0, 0).unwrap();
        }
        // A tenant's own limit applies where the node has none.
        for _ in 0..2 {
            off.check("c", 1.0, 2).unwrap();
        }
        assert!(off.check("c", 1.0, 2).is_err());
    }
}
