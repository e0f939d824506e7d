//! Hooks: what acts on a tenant's events. A hook follows the tenant's event log from a
//! cursor and, for each event its topic patterns match, in order, either calls a tool (a
//! trigger: a tool, or `workflow.start` to start a workflow) or POSTs the event to a URL
//! signed with HMAC-SHA256 (an outbound webhook). Inbound endpoints take signed POSTs from
//! outside and publish them as events. A state-machine family (`hooks`, tenant-first keys)
//! replicated through Raft; the leader's driver (`service::hooks`) does the delivering.
//!
//! Delivery is in order and at least once, with the same commit points as a schedule's runs
//! (docs/design.md, "Triggers and webhooks"): `Begin` records the delivery of an event
//! (conditional on the cursor, so two leaders cannot both begin one), `Finish` its outcome;
//! a delivery that succeeded or used up its retries moves the cursor past its event. A
//! receiver that acknowledged a delivery never gets it again from a leader that knows it; a
//! leader that dies between the receiver's acknowledgement and `Finish` makes the next
//! leader deliver it again, with the same delivery id for the receiver to drop.

mod apply;

pub use apply::apply;

use serde::{Deserialize, Serialize};

use crate::error::NexusError;
use crate::schedules::{Outcome, RetryPolicy, RunState};
use crate::store::{keys, Store, StoreError, CF_HOOKS};

const TAG_HOOK: u8 = b'H';
const TAG_DELIVERY: u8 = b'D';
const TAG_INBOUND: u8 = b'N';

/// Deliveries a hook keeps when it does not say, and at most.
pub const DEFAULT_KEEP_DELIVERIES: u32 = 100;
pub const MAX_KEEP_DELIVERIES: u32 = 1000;
/// Longest output or error kept on a delivery.
pub const MAX_DELIVERY_TEXT_BYTES: usize = 2048;

/// What a hook does with an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Target {
    /// Calls a tool as the hook's owner with JSON arguments (`${event.*}` filled in).
    Tool { tool: String, args: String },
    /// POSTs the event as JSON to `url`, signed with the value of the tenant's secret
    /// `secret` (`Nexus-Signature: t=UNIX,v1=HEX`).
    Webhook { url: String, secret: String },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Tool { .. } => "trigger",
            Target::Webhook { .. } => "webhook",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookRecord {
    pub name: String,
    pub description: String,
    /// Topic patterns (NATS wildcards); an event matching any is delivered.
    pub topics: Vec<String>,
    pub target: Target,
    /// The principal that made it: a trigger calls its tool as it, with its grants then.
    pub owner: String,
    pub retry: RetryPolicy,
    pub keep_deliveries: u32,
    pub paused: bool,
    /// Every event numbered up to here was handled (delivered, dead, or not matched).
    pub cursor: u64,
    /// The event whose in-order delivery is in progress (0: none).
    pub head: u64,
    pub delivered: u64,
    pub dead: u64,
    /// Delivery records kept.
    pub deliveries: u32,
    /// Replayed deliveries not yet finished (delivered besides the in-order one).
    pub replays: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One event's delivery by a hook, and every attempt at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub hook: String,
    pub seq: u64,
    pub topic: String,
    pub state: RunState,
    pub attempt: u32,
    pub node: u64,
    pub first_started_ms: i64,
    pub started_ms: i64,
    pub finished_ms: i64,
    /// The last attempt's output (a tool's result, the receiver's status and body) or error.
    pub output: String,
    pub error: String,
    pub retry_at_ms: i64,
    pub interrupted: u32,
    /// Delivered again by hand, out of order (`Replay`).
    pub replayed: bool,
}

impl Delivery {
    /// The delivery's id, the same for every attempt: `HOOK/SEQ` (the receiver's
    /// idempotency key).
    pub fn id(&self) -> String {
        format!("{}/{}", self.hook, self.seq)
    }
}

/// An inbound endpoint: `POST /hooks/TENANT/NAME` with a body signed with the value of the
/// tenant's secret `secret` publishes the body as an event on `topic`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inbound {
    pub name: String,
    pub description: String,
    pub topic: String,
    pub secret: String,
    pub owner: String,
    pub received: u64,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HookOp {
    /// Makes or replaces a hook. A new one starts after `start_after` (None: after the
    /// tenant's last event as this applies); a replacement keeps its cursor, its delivery in
    /// progress and its counts.
    Put {
        hook: HookRecord,
        start_after: Option<u64>,
    },
    Delete {
        name: String,
    },
    SetPaused {
        name: String,
        paused: bool,
        at_ms: i64,
    },
    /// The leader begins delivering event `seq` (the first its patterns match after the
    /// cursor): applies only if the cursor is still `expected_cursor` and nothing is in
    /// progress.
    Begin {
        name: String,
        expected_cursor: u64,
        seq: u64,
        topic: String,
        node: u64,
        at_ms: i64,
    },
    /// The leader moves the cursor over events that matched nothing (a long run of them).
    Pass {
        name: String,
        expected_cursor: u64,
        to: u64,
    },
    /// Starts attempt `attempt` of the delivery of `seq`, which must be `from` at
    /// `from_attempt` (a retry, a replay, an attempt a deposed leader never finished).
    Start {
        name: String,
        seq: u64,
        from: RunState,
        from_attempt: u32,
        attempt: u32,
        node: u64,
        at_ms: i64,
    },
    Finish {
        name: String,
        seq: u64,
        attempt: u32,
        outcome: Outcome,
        at_ms: i64,
    },
    /// A dead delivery is delivered again (out of order), at once.
    Replay {
        name: String,
        seq: u64,
        at_ms: i64,
    },
    PutInbound {
        inbound: Inbound,
    },
    DeleteInbound {
        name: String,
    },
    /// An inbound endpoint took a signed request: its body is published as an event on the
    /// endpoint's topic, in this step. Checked by the node that took the request, which may
    /// forward it without a credential: a member holds the secrets it is signed with anyway.
    Receive {
        name: String,
        data: String,
        at_ms: i64,
    },
}

impl HookOp {
    pub fn name(&self) -> &'static str {
        match self {
            HookOp::Put { .. } => "hooks.put",
            HookOp::Delete { .. } => "hooks.delete",
            HookOp::SetPaused { .. } => "hooks.pause",
            HookOp::Begin { .. } => "hooks.begin",
            HookOp::Pass { .. } => "hooks.pass",
            HookOp::Start { .. } => "hooks.start",
            HookOp::Finish { .. } => "hooks.finish",
            HookOp::Replay { .. } => "hooks.replay",
            HookOp::PutInbound { .. } => "hooks.put_inbound",
            HookOp::DeleteInbound { .. } => "hooks.delete_inbound",
            HookOp::Receive { .. } => "hooks.receive",
        }
    }

    /// Made by the leader's driver (or an inbound endpoint) itself: outside the tenant's
    /// quota, never forwarded.
    pub fn is_the_leaders(&self) -> bool {
        matches!(
            self,
            HookOp::Begin { .. }
                | HookOp::Pass { .. }
                | HookOp::Start { .. }
                | HookOp::Finish { .. }
        )
    }

    pub fn approx_size(&self) -> usize {
        match self {
            HookOp::Put { hook, .. } => {
                hook.name.len()
                    + hook.description.len()
                    + hook.topics.iter().map(|t| t.len() + 2).sum::<usize>()
                    + match &hook.target {
                        Target::Tool { tool, args } => tool.len() + args.len(),
                        Target::Webhook { url, secret } => url.len() + secret.len(),
                    }
                    + hook.owner.len()
                    + 128
            }
            HookOp::Finish { name, outcome, .. } => {
                name.len()
                    + 48
                    + match outcome {
                        Outcome::Succeeded { output } => output.len(),
                        Outcome::Failed { error, .. } => error.len(),
                    }
            }
            HookOp::Begin { name, topic, .. } => name.len() + topic.len() + 48,
            HookOp::PutInbound { inbound } => {
                inbound.name.len()
                    + inbound.description.len()
                    + inbound.topic.len()
                    + inbound.secret.len()
                    + inbound.owner.len()
                    + 48
            }
            HookOp::Delete { name }
            | HookOp::SetPaused { name, .. }
            | HookOp::Pass { name, .. }
            | HookOp::Start { name, .. }
            | HookOp::Replay { name, .. }
            | HookOp::DeleteInbound { name } => name.len() + 48,
            HookOp::Receive { name, data, .. } => name.len() + data.len() + 32,
        }
    }

    pub fn resource(&self) -> String {
        match self {
            HookOp::Put { hook, .. } => format!("hook/{} ({})", hook.name, hook.target.kind()),
            HookOp::Delete { name } => format!("hook/{name}"),
            HookOp::SetPaused { name, paused, .. } => {
                format!("hook/{name} {}", if *paused { "paused" } else { "resumed" })
            }
            HookOp::Begin { name, seq, .. } | HookOp::Replay { name, seq, .. } => {
                format!("hook/{name}/{seq}")
            }
            HookOp::Pass { name, to, .. } => format!("hook/{name} through {to}"),
            HookOp::Start {
                name, seq, attempt, ..
            }
            | HookOp::Finish {
                name, seq, attempt, ..
            } => format!("hook/{name}/{seq} attempt {attempt}"),
            HookOp::PutInbound { inbound } => format!("inbound/{}", inbound.name),
            HookOp::DeleteInbound { name } => format!("inbound/{name}"),
            HookOp::Receive { name, .. } => format!("inbound/{name} received"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HookReply {
    Hook(HookRecord),
    Deleted,
    Delivery(Delivery),
    Inbound(Inbound),
    /// What an inbound request published: its event's number.
    Received {
        seq: u64,
    },
}

fn hook_key(tenant: &str, name: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_HOOK, name.as_bytes())
}

fn deliveries_prefix(tenant: &str, name: &str) -> Vec<u8> {
    let mut rest = name.as_bytes().to_vec();
    rest.push(0);
    keys::tenant_tagged(tenant, TAG_DELIVERY, &rest)
}

fn delivery_key(tenant: &str, name: &str, seq: u64) -> Vec<u8> {
    let mut k = deliveries_prefix(tenant, name);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn inbound_key(tenant: &str, name: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_INBOUND, name.as_bytes())
}

fn decode_all<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &[u8],
) -> Result<Vec<T>, StoreError> {
    store
        .scan_prefix(CF_HOOKS, prefix, prefix, usize::MAX)?
        .iter()
        .map(|(_, v)| crate::store::codec::decode(v).map_err(StoreError::from))
        .collect()
}

pub fn read(store: &Store, tenant: &str, name: &str) -> Result<Option<HookRecord>, StoreError> {
    store.get_decoded(CF_HOOKS, &hook_key(tenant, name))
}

/// Every hook of `tenant`, by name.
pub fn list(store: &Store, tenant: &str) -> Result<Vec<HookRecord>, StoreError> {
    decode_all(store, &keys::tenant_tagged(tenant, TAG_HOOK, &[]))
}

/// A hook's deliveries, newest first, at most `limit`.
pub fn deliveries(
    store: &Store,
    tenant: &str,
    name: &str,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut all: Vec<Delivery> = decode_all(store, &deliveries_prefix(tenant, name))?;
    all.reverse();
    all.truncate(limit);
    Ok(all)
}

pub fn delivery(
    store: &Store,
    tenant: &str,
    name: &str,
    seq: u64,
) -> Result<Option<Delivery>, StoreError> {
    store.get_decoded(CF_HOOKS, &delivery_key(tenant, name, seq))
}

pub fn inbound(store: &Store, tenant: &str, name: &str) -> Result<Option<Inbound>, StoreError> {
    store.get_decoded(CF_HOOKS, &inbound_key(tenant, name))
}

pub fn inbounds(store: &Store, tenant: &str) -> Result<Vec<Inbound>, StoreError> {
    decode_all(store, &keys::tenant_tagged(tenant, TAG_INBOUND, &[]))
}

/// A hook or inbound endpoint name (the schedule name rules).
pub fn validate_name(field: &str, name: &str) -> Result<(), NexusError> {
    crate::schedules::validate_name(field, name)
        .map_err(|_| NexusError::invalid(field, format!("{:?} is not a hook name: 1 to {} of a-z, 0-9, '-', '_' and '.', starting with a letter or digit", crate::error::excerpt(name, 64), crate::schedules::MAX_NAME_BYTES)))
}

#[cfg(test)]
mod tests;
