//! Per tenant and tool, on this node: calls, errors, latency percentiles (over the last
//! [`WINDOW`] calls) and the last error; `nexusctl tools stats`, and `/metrics` as
//! `nexus_tool_calls_total{tenant,tool,outcome}` and `nexus_tool_call_seconds{tenant,tool}`.
//! At most [`MAX_KEYS`] (tenant, tool) pairs are told apart; calls past that (names made up
//! by a caller, for one) count under tool `_other`, so neither the map nor the metrics' label
//! sets grow without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::NexusError;
use crate::observe::metrics;

pub const WINDOW: usize = 1024;
pub const MAX_KEYS: usize = 10_000;

#[derive(Debug, Default, Clone)]
struct Entry {
    calls: u64,
    errors: u64,
    recent_us: VecDeque<u64>,
    last_error: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolStat {
    pub tool: String,
    pub calls: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub last_error: String,
}

#[derive(Default)]
pub struct Stats {
    entries: Mutex<HashMap<(String, String), Entry>>,
}

impl Stats {
    pub fn record(&self, tenant: &str, tool: &str, took: Duration, error: Option<&NexusError>) {
        let mut entries = self.entries.lock().unwrap();
        let mut key = (tenant.to_string(), tool.to_string());
        if !entries.contains_key(&key) && entries.len() >= MAX_KEYS {
            key.1 = "_other".into();
        }
        let e = entries.entry(key.clone()).or_default();
        e.calls += 1;
        if e.recent_us.len() == WINDOW {
            e.recent_us.pop_front();
        }
        e.recent_us.push_back(took.as_micros() as u64);
        let outcome = match error {
            Some(err) => {
                e.errors += 1;
                e.last_error = crate::error::excerpt(&err.to_string(), 512);
                format!("{:?}", crate::error::code_of(err))
            }
            None => "Ok".into(),
        };
        drop(entries);
        metrics::TOOL_CALLS
            .with_label_values(&[&key.0, &key.1, &outcome])
            .inc();
        metrics::TOOL_SECONDS
            .with_label_values(&[&key.0, &key.1])
            .observe(took.as_secs_f64());
    }

    /// The tenant's tools, by name.
    pub fn of(&self, tenant: &str) -> Vec<ToolStat> {
        let entries = self.entries.lock().unwrap();
        let mut out: Vec<ToolStat> = entries
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, tool), e)| {
                let mut sorted: Vec<u64> = e.recent_us.iter().copied().collect();
                sorted.sort_unstable();
                let pct = |p: f64| -> f64 {
                    if sorted.is_empty() {
                        return 0.0;
                    }
                    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
                    sorted[i] as f64 / 1000.0
                };
                ToolStat {
                    tool: tool.clone(),
                    calls: e.calls,
                    errors: e.errors,
                    p50_ms: pct(0.50),
                    p99_ms: pct(0.99),
                    last_error: e.last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.tool.cmp(&b.tool));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_errors_and_a_bounded_map() {
        let s = Stats::default();
        for ms in 1..=100 {
            s.record("t", "echo", Duration::from_millis(ms), None);
        }
        s.record(
            "t",
            "echo",
            Duration::from_millis(1),
            Some(&NexusError::invalid("args.text", "is required")),
        );
        s.record("u", "echo", Duration::from_millis(1), None);
        let t = s.of("t");
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].calls, t[0].errors), (101, 1));
        assert_eq!(t[0].p50_ms, 50.0);
        assert_eq!(t[0].p99_ms, 99.0);
        assert!(t[0].last_error.contains("args.text"));
        assert_eq!(s.of("u")[0].calls, 1);
    }
}
