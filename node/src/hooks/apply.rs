//! How hook commands apply: each reads the hook (and delivery) it acts on in this step,
//! checks the condition it carries (the cursor, a delivery's state and attempt), and writes.

use crate::error::NexusError;
use crate::schedules::RunState;
use crate::store::{ApplyCtx, StoreError, CF_HOOKS};

use super::{
    deliveries_prefix, delivery_key, hook_key, inbound_key, Delivery, HookOp, HookRecord,
    HookReply, Inbound, MAX_DELIVERY_TEXT_BYTES,
};

fn not_found(name: &str) -> NexusError {
    NexusError::NotFound(format!("hook {name} not found"))
}

fn stale(what: String) -> NexusError {
    NexusError::precondition("seq", what)
}

pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &HookOp,
) -> Result<Result<HookReply, NexusError>, StoreError> {
    match op {
        HookOp::Put { hook, start_after } => {
            let key = hook_key(tenant, &hook.name);
            let mut h = hook.clone();
            match ctx.get_decoded::<HookRecord>(CF_HOOKS, &key)? {
                Some(old) => {
                    h.created_at_ms = old.created_at_ms;
                    h.cursor = old.cursor;
                    h.head = old.head;
                    h.delivered = old.delivered;
                    h.dead = old.dead;
                    h.deliveries = old.deliveries;
                    h.replays = old.replays;
                }
                None => {
                    h.replays = 0;
                    h.cursor = match start_after {
                        Some(seq) => *seq,
                        None => crate::events::last_seq_in(ctx, tenant)?,
                    };
                    h.head = 0;
                }
            }
            ctx.put(CF_HOOKS, &key, &h);
            Ok(Ok(HookReply::Hook(h)))
        }
        HookOp::Delete { name } => {
            let key = hook_key(tenant, name);
            if ctx.get_raw_value(CF_HOOKS, &key)?.is_none() {
                return Ok(Err(not_found(name)));
            }
            ctx.delete(CF_HOOKS, &key);
            ctx.delete_prefix(CF_HOOKS, &deliveries_prefix(tenant, name));
            Ok(Ok(HookReply::Deleted))
        }
        HookOp::SetPaused {
            name,
            paused,
            at_ms,
        } => {
            let Some(mut h) = load(ctx, tenant, name)? else {
                return Ok(Err(not_found(name)));
            };
            if h.paused != *paused {
                h.paused = *paused;
                h.updated_at_ms = *at_ms;
                save(ctx, tenant, &h);
            }
            Ok(Ok(HookReply::Hook(h)))
        }
        HookOp::Begin {
            name,
            expected_cursor,
            seq,
            topic,
            node,
            at_ms,
        } => {
            let Some(mut h) = load(ctx, tenant, name)? else {
                return Ok(Err(not_found(name)));
            };
            if h.paused || h.cursor != *expected_cursor || h.head != 0 || *seq <= h.cursor {
                return Ok(Err(stale(format!(
                    "hook {name} is at {} (in progress: {}{}), not at {expected_cursor}",
                    h.cursor,
                    h.head,
                    if h.paused { ", paused" } else { "" }
                ))));
            }
            let d = Delivery {
                hook: name.clone(),
                seq: *seq,
                topic: topic.clone(),
                state: RunState::Running,
                attempt: 1,
                node: *node,
                first_started_ms: *at_ms,
                started_ms: *at_ms,
                finished_ms: 0,
                output: String::new(),
                error: String::new(),
                retry_at_ms: 0,
                interrupted: 0,
                replayed: false,
            };
            // The events between the cursor and this one matched nothing.
            h.cursor = seq - 1;
            h.head = *seq;
            h.deliveries += 1;
            ctx.put(CF_HOOKS, &delivery_key(tenant, name, *seq), &d);
            trim(ctx, tenant, &mut h)?;
            save(ctx, tenant, &h);
            Ok(Ok(HookReply::Delivery(d)))
        }
        HookOp::Pass {
            name,
            expected_cursor,
            to,
        } => {
            let Some(mut h) = load(ctx, tenant, name)? else {
                return Ok(Err(not_found(name)));
            };
            if h.cursor != *expected_cursor || h.head != 0 || *to < h.cursor {
                return Ok(Err(stale(format!(
                    "hook {name} is at {}, not at {expected_cursor}",
                    h.cursor
                ))));
            }
            h.cursor = *to;
            save(ctx, tenant, &h);
            Ok(Ok(HookReply::Hook(h)))
        }
        HookOp::Start {
            name,
            seq,
            from,
            from_attempt,
            attempt,
            node,
            at_ms,
        } => {
            let (h, mut d) = match load_delivery(ctx, tenant, name, *seq)? {
                Ok(found) => found,
                Err(e) => return Ok(Err(e)),
            };
            if d.state != *from || d.attempt != *from_attempt || !from.in_progress() {
                return Ok(Err(stale(format!(
                    "delivery {} is {} at attempt {}, not {} at attempt {from_attempt}",
                    d.id(),
                    d.state.name(),
                    d.attempt,
                    from.name()
                ))));
            }
            if *from == RunState::Running {
                d.interrupted += 1;
            }
            d.state = RunState::Running;
            d.attempt = *attempt;
            d.node = *node;
            if d.first_started_ms == 0 {
                d.first_started_ms = *at_ms;
            }
            d.started_ms = *at_ms;
            d.retry_at_ms = 0;
            ctx.put(CF_HOOKS, &delivery_key(tenant, name, *seq), &d);
            save(ctx, tenant, &h);
            Ok(Ok(HookReply::Delivery(d)))
        }
        HookOp::Finish {
            name,
            seq,
            attempt,
            outcome,
            at_ms,
        } => {
            let (mut h, mut d) = match load_delivery(ctx, tenant, name, *seq)? {
                Ok(found) => found,
                Err(e) => return Ok(Err(e)),
            };
            if d.state != RunState::Running || d.attempt != *attempt {
                return Ok(Err(stale(format!(
                    "delivery {} is {} at attempt {}: attempt {attempt} is not running",
                    d.id(),
                    d.state.name(),
                    d.attempt
                ))));
            }
            d.finished_ms = *at_ms;
            let settled = outcome.settle(MAX_DELIVERY_TEXT_BYTES);
            d.state = settled.state;
            d.output = settled.output;
            d.error = settled.error;
            match settled.state {
                RunState::Succeeded => h.delivered += 1,
                RunState::Waiting => d.retry_at_ms = settled.retry_at_ms,
                _ => h.dead += 1,
            }
            // The in-order delivery done either way: the cursor moves past its event.
            if !d.state.in_progress() {
                if d.replayed {
                    h.replays = h.replays.saturating_sub(1);
                } else if h.head == *seq {
                    h.head = 0;
                    h.cursor = h.cursor.max(*seq);
                }
            }
            ctx.put(CF_HOOKS, &delivery_key(tenant, name, *seq), &d);
            trim(ctx, tenant, &mut h)?;
            save(ctx, tenant, &h);
            Ok(Ok(HookReply::Delivery(d)))
        }
        HookOp::Replay { name, seq, at_ms } => {
            let (mut h, mut d) = match load_delivery(ctx, tenant, name, *seq)? {
                Ok(found) => found,
                Err(e) => return Ok(Err(e)),
            };
            if d.state != RunState::Dead {
                return Ok(Err(NexusError::precondition(
                    "seq",
                    format!(
                        "delivery {} is {}; only a dead delivery is replayed",
                        d.id(),
                        d.state.name()
                    ),
                )));
            }
            d.state = RunState::Waiting;
            d.attempt = 0;
            d.first_started_ms = 0;
            d.retry_at_ms = *at_ms;
            d.replayed = true;
            h.dead = h.dead.saturating_sub(1);
            h.replays += 1;
            ctx.put(CF_HOOKS, &delivery_key(tenant, name, *seq), &d);
            save(ctx, tenant, &h);
            Ok(Ok(HookReply::Delivery(d)))
        }
        HookOp::PutInbound { inbound } => {
            let key = inbound_key(tenant, &inbound.name);
            let mut i = inbound.clone();
            if let Some(old) = ctx.get_decoded::<Inbound>(CF_HOOKS, &key)? {
                i.created_at_ms = old.created_at_ms;
                i.received = old.received;
            }
            ctx.put(CF_HOOKS, &key, &i);
            Ok(Ok(HookReply::Inbound(i)))
        }
        HookOp::DeleteInbound { name } => {
            let key = inbound_key(tenant, name);
            if ctx.get_raw_value(CF_HOOKS, &key)?.is_none() {
                return Ok(Err(NexusError::NotFound(format!(
                    "inbound endpoint {name} not found"
                ))));
            }
            ctx.delete(CF_HOOKS, &key);
            Ok(Ok(HookReply::Deleted))
        }
        HookOp::Receive { name, data, at_ms } => {
            let key = inbound_key(tenant, name);
            let Some(mut i) = ctx.get_decoded::<Inbound>(CF_HOOKS, &key)? else {
                return Ok(Err(NexusError::NotFound(format!(
                    "inbound endpoint {name} not found"
                ))));
            };
            i.received += 1;
            ctx.put(CF_HOOKS, &key, &i);
            let event = crate::events::NewEvent {
                topic: i.topic.clone(),
                data: data.clone(),
            };
            let (seq, _) = crate::events::append(
                ctx,
                tenant,
                &[event],
                &format!("webhook:{name}"),
                Some(*at_ms),
            )?;
            Ok(Ok(HookReply::Received { seq }))
        }
    }
}

fn load(ctx: &ApplyCtx<'_>, tenant: &str, name: &str) -> Result<Option<HookRecord>, StoreError> {
    ctx.get_decoded(CF_HOOKS, &hook_key(tenant, name))
}

fn save(ctx: &mut ApplyCtx<'_>, tenant: &str, h: &HookRecord) {
    ctx.put(CF_HOOKS, &hook_key(tenant, &h.name), h);
}

fn load_delivery(
    ctx: &ApplyCtx<'_>,
    tenant: &str,
    name: &str,
    seq: u64,
) -> Result<Result<(HookRecord, Delivery), NexusError>, StoreError> {
    let Some(h) = load(ctx, tenant, name)? else {
        return Ok(Err(not_found(name)));
    };
    match ctx.get_decoded::<Delivery>(CF_HOOKS, &delivery_key(tenant, name, seq))? {
        Some(d) => Ok(Ok((h, d))),
        None => Ok(Err(NexusError::NotFound(format!(
            "delivery {name}/{seq} not found"
        )))),
    }
}

/// Removes the oldest finished deliveries beyond `keep_deliveries`.
fn trim(ctx: &mut ApplyCtx<'_>, tenant: &str, h: &mut HookRecord) -> Result<(), StoreError> {
    if h.deliveries <= h.keep_deliveries {
        return Ok(());
    }
    let mut over = h.deliveries - h.keep_deliveries;
    for (k, v) in ctx.scan_prefix(CF_HOOKS, &deliveries_prefix(tenant, &h.name))? {
        if over == 0 {
            break;
        }
        let d: Delivery = crate::store::codec::decode(&v)?;
        if d.state.in_progress() {
            continue;
        }
        ctx.delete(CF_HOOKS, &k);
        h.deliveries -= 1;
        over -= 1;
    }
    Ok(())
}
