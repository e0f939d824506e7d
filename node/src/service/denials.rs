//! Refusals cost little: a denied request (no or bad credentials, a missing permission, a
//! rate limit) is not a Raft write of its own. Each node counts its denials in memory by
//! (principal, tenant, source address, gRPC code) and, once per `auth.denial_window_secs`,
//! writes one audit record per group: action `auth.denied`, resource `N× ACTIONS from
//! SOURCE`, result the last refusal's code and message. 10,000 bad requests in a window are
//! one record, or a few.
//!
//! The groups of a window are bounded (`MAX_GROUPS`; past it, denials join one overflow
//! group), and so is what a record says (the methods named, the message's length). A group's
//! principal is what authentication found (`anonymous` when it failed); the leader checks it
//! again with the last request's credential when a follower writes the record
//! (`auth::forward`). Denials counted but not yet written are lost if the node crashes: they
//! changed nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::audit::AuditContext;
use crate::command::{Cluster, OnBehalf};

/// Most groups per window; later denials are counted in one overflow group.
const MAX_GROUPS: usize = 1_000;
/// Most methods a record names.
const MAX_ACTIONS: usize = 8;
/// Longest refusal message kept.
const MAX_MESSAGE_CHARS: usize = 200;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Group {
    principal: String,
    tenant: String,
    source: String,
    code: String,
}

struct Tally {
    count: u64,
    first_ms: i64,
    actions: BTreeSet<String>,
    last_result: String,
    /// The last denied request's credential, for the leader to check the principal with.
    credential: Option<String>,
}

/// One denied request, as `api::grpc::handle` reports it.
pub struct Denial {
    pub principal: String,
    pub tenant: String,
    pub source: Option<std::net::IpAddr>,
    pub action: String,
    /// The gRPC code's name, and the refusal as the audit log writes results.
    pub code: String,
    pub result: String,
    pub credential: Option<String>,
}

#[derive(Default)]
pub struct Denials {
    groups: Mutex<HashMap<Group, Tally>>,
}

impl Denials {
    /// Counts a denial (a map update; nothing is written until the window ends).
    pub fn note(&self, d: Denial) {
        crate::observe::metrics::DENIALS
            .with_label_values(&[&d.code])
            .inc();
        let mut group = Group {
            principal: d.principal,
            tenant: d.tenant,
            source: d
                .source
                .map_or_else(|| "unknown".into(), |ip| ip.to_string()),
            code: d.code,
        };
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if groups.len() >= MAX_GROUPS && !groups.contains_key(&group) {
            group = Group {
                principal: "*".into(),
                tenant: String::new(),
                source: "*".into(),
                code: "*".into(),
            };
        }
        let tally = groups.entry(group).or_insert_with(|| Tally {
            count: 0,
            first_ms: crate::memory::now_ms(),
            actions: BTreeSet::new(),
            last_result: String::new(),
            credential: None,
        });
        tally.count += 1;
        if tally.actions.len() < MAX_ACTIONS {
            tally.actions.insert(d.action);
        }
        tally.last_result = crate::error::excerpt(&d.result, MAX_MESSAGE_CHARS);
        tally.credential = d.credential;
    }

    /// The records of the window that ends now: (tenant, who, resource, result).
    fn drain(&self) -> Vec<(String, OnBehalf, String, String)> {
        let groups = std::mem::take(&mut *self.groups.lock().unwrap_or_else(|p| p.into_inner()));
        groups
            .into_iter()
            .map(|(g, t)| {
                let actions: Vec<&str> = t.actions.iter().map(String::as_str).collect();
                let resource = format!("{}× {} from {}", t.count, actions.join(","), g.source);
                let context = AuditContext {
                    request_id: String::new(),
                    principal: g.principal,
                    tenant: g.tenant.clone(),
                    action: "auth.denied".into(),
                    at_ms: t.first_ms,
                };
                let on_behalf = OnBehalf {
                    context,
                    credential: t.credential,
                };
                (g.tenant, on_behalf, resource, t.last_result)
            })
            .collect()
    }

    /// Writes each window's records, every `window`, until the node stops.
    pub fn start(self: &Arc<Self>, node: Arc<Cluster>, window: Duration) {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(window.max(Duration::from_secs(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { return };
                for (tenant, on_behalf, resource, result) in this.drain() {
                    if let Err(e) =
                        super::audit::record(&node, &tenant, on_behalf, resource, result).await
                    {
                        tracing::warn!(error = %e, "recording denials in the audit log");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(principal: &str, action: &str) -> Denial {
        Denial {
            principal: principal.into(),
            tenant: String::new(),
            source: Some("10.0.0.9".parse().unwrap()),
            action: action.into(),
            code: "Unauthenticated".into(),
            result: "Unauthenticated: invalid credentials".into(),
            credential: Some("nxk_bad".into()),
        }
    }

    #[test]
    fn many_denials_are_one_record_per_group() {
        let d = Denials::default();
        for i in 0..10_000 {
            d.note(denial(
                "anonymous",
                if i % 2 == 0 {
                    "memory.get"
                } else {
                    "memory.put"
                },
            ));
        }
        d.note(denial("sa:bot", "memory.put"));
        let mut records = d.drain();
        records.sort_by(|a, b| a.2.cmp(&b.2));
        assert_eq!(
            records.len(),
            2,
            "{:?}",
            records.iter().map(|r| &r.2).collect::<Vec<_>>()
        );
        assert_eq!(records[0].2, "10000× memory.get,memory.put from 10.0.0.9");
        assert_eq!(records[0].1.context.action, "auth.denied");
        assert_eq!(records[1].2, "1× memory.put from 10.0.0.9");
        assert!(d.drain().is_empty(), "a window starts empty");
        // Groups are bounded.
        for i in 0..(MAX_GROUPS + 500) {
            d.note(denial(&format!("p{i}"), "memory.get"));
        }
        let records = d.drain();
        assert_eq!(records.len(), MAX_GROUPS + 1);
        assert!(records.iter().any(|r| r.2.starts_with("500× ")));
    }
}
