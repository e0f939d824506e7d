//! Triggers, outbound webhooks and inbound endpoints: what the API calls, the leader's
//! driver that delivers events to hooks, and what an inbound request goes through.
//!
//! The driver runs on every node and acts while its node leads. Each pass reads every hook
//! of every tenant and, for each: starts the attempts its delivery in progress (and its
//! replays) are due for, and otherwise finds the first event after its cursor that its
//! patterns match and begins delivering it (`Begin`, the commit point). One event at a time
//! per hook, in the order of the tenant's log: a receiver that is down holds its hook's
//! later events back (they wait on disk, within the event log's retention) until it
//! answers or the delivery's retries are used up (dead-letter; the cursor moves on).
//!
//! A webhook's request: `POST URL` with the event as JSON, `Nexus-Delivery: HOOK/SEQ` (the
//! same for every attempt: the receiver's key to drop a repeat), `Nexus-Event: TOPIC` and
//! `Nexus-Signature: t=UNIX_SECONDS,v1=HEX` where HEX is HMAC-SHA256 over `T.BODY` keyed with
//! the value of the tenant's secret the hook names. A 2xx answer acknowledges it; anything
//! else, or no answer within the attempt's timeout, is retried by the hook's policy. The URL
//! follows the tenant's `http.request` policy (allow-list, no private addresses).

use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use serde_json::{json, Value};

use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply, Scope};
use crate::error::NexusError;
use crate::events;
use crate::hooks::{self, Delivery, HookOp, HookRecord, HookReply, Inbound, Target};
use crate::iam;
use crate::memory::now_ms;
use crate::observe::metrics;
use crate::schedules::{Outcome, RetryPolicy, RunState};
use crate::store::blocking;
use crate::workflows::template;

use super::automation::{self, Attempts, Driver};
use super::secrets::SecretsService;
use super::tools::{http, ToolService};
use super::Caller;

/// Most hooks, and inbound endpoints, a tenant may have.
pub const MAX_HOOKS_PER_TENANT: usize = 100;
/// Most topic patterns of a hook.
pub const MAX_TOPICS: usize = 16;
/// Largest trigger arguments, JSON text.
const MAX_ARGS_BYTES: usize = 64 * 1024;
/// Events a pass reads looking for a hook's next match.
const SCAN: usize = 1024;
/// How far an inbound request's signature time may be from the node's clock.
pub const SIGNATURE_TOLERANCE_S: i64 = 300;
/// Most of a receiver's answer kept on a delivery.
const ANSWER_BYTES: usize = 512;

/// What a person asks for; the service fills in the rest.
#[derive(Debug, Clone)]
pub struct HookInput {
    pub name: String,
    pub description: String,
    pub topics: Vec<String>,
    pub target: Target,
    pub retry: RetryPolicy,
    /// 0: [`hooks::DEFAULT_KEEP_DELIVERIES`].
    pub keep_deliveries: u32,
    pub paused: bool,
    /// A new hook's first event is the one after this (None: after the tenant's last now).
    pub start_after: Option<u64>,
}

/// An attempt this node runs: (tenant, hook, event).
type Key = (String, String, u64);

pub struct HookService {
    node: Arc<Cluster>,
    tools: Arc<ToolService>,
    secrets: Arc<SecretsService>,
    attempts: Arc<Attempts<Key>>,
}

impl HookService {
    pub fn new(
        node: Arc<Cluster>,
        tools: Arc<ToolService>,
        secrets: Arc<SecretsService>,
    ) -> Arc<Self> {
        Arc::new(HookService {
            node,
            tools,
            secrets,
            attempts: Arc::default(),
        })
    }

    /// Makes a hook (`replace`: or replaces the one of that name, keeping its place).
    pub async fn put(
        &self,
        caller: &Caller,
        input: HookInput,
        replace: bool,
    ) -> Result<HookRecord, NexusError> {
        hooks::validate_name("name", &input.name)?;
        if input.description.len() > 1024 {
            return Err(NexusError::invalid(
                "description",
                "is longer than 1024 bytes",
            ));
        }
        if input.topics.is_empty() || input.topics.len() > MAX_TOPICS {
            return Err(NexusError::invalid(
                "topics",
                format!("has {}; 1 to {MAX_TOPICS} patterns", input.topics.len()),
            ));
        }
        for (i, t) in input.topics.iter().enumerate() {
            events::validate_pattern(&format!("topics[{i}]"), t)?;
        }
        automation::validate_retry("retry", &input.retry)?;
        let keep_deliveries = match input.keep_deliveries {
            0 => hooks::DEFAULT_KEEP_DELIVERIES,
            n if n > hooks::MAX_KEEP_DELIVERIES => {
                return Err(NexusError::invalid(
                    "keep_deliveries",
                    format!("is {n}; at most {}", hooks::MAX_KEEP_DELIVERIES),
                ))
            }
            n => n,
        };
        match &input.target {
            Target::Tool { tool, args } => {
                if tool.is_empty() {
                    return Err(NexusError::invalid("tool", "is required"));
                }
                validate_args(args)?;
                self.tools
                    .describe(caller, tool, ReadConsistency::Linearizable)
                    .await
                    .map_err(|e| match e {
                        NexusError::NotFound(m) => NexusError::invalid("tool", m),
                        other => other,
                    })?;
                iam::rbac::authorize("tools.call", tool, caller)?;
            }
            Target::Webhook { url, secret } => {
                let policy = crate::tools::http_policy(&self.node.store, &caller.tenant)?;
                http::allowed_url(&policy, "url", "webhook", url)?;
                self.check_secret(&caller.tenant, "secret", secret)?;
            }
        }
        if input.start_after.is_some() && replace {
            return Err(NexusError::invalid(
                "start_after",
                "applies to a new hook only (a replacement keeps its place)",
            ));
        }
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let tenant = caller.tenant.clone();
        let existing = hooks::read(&self.node.store, &tenant, &input.name)?;
        match (&existing, replace) {
            (Some(_), false) => {
                return Err(NexusError::AlreadyExists(format!(
                    "hook {} exists; update it or delete it first",
                    input.name
                )))
            }
            (None, true) => {
                return Err(NexusError::NotFound(format!(
                    "hook {} not found",
                    input.name
                )))
            }
            (None, false) => {
                let count = hooks::list(&self.node.store, &tenant)?.len();
                if count >= MAX_HOOKS_PER_TENANT {
                    return Err(NexusError::ResourceExhausted {
                        limit: "hooks per tenant".into(),
                        message: format!("tenant {tenant} has {count} hooks, the most it may have"),
                    });
                }
            }
            (Some(_), true) => {}
        }
        let now = now_ms();
        let hook = HookRecord {
            name: input.name,
            description: input.description,
            topics: input.topics,
            target: input.target,
            owner: caller.subject.clone(),
            retry: input.retry,
            keep_deliveries,
            paused: input.paused,
            cursor: 0,
            head: 0,
            delivered: 0,
            dead: 0,
            deliveries: 0,
            replays: 0,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let op = HookOp::Put {
            hook,
            start_after: input.start_after,
        };
        match self.propose(&caller.scope(), op).await? {
            HookReply::Hook(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// The secret `name` must exist in `tenant` (its value is read at each delivery).
    fn check_secret(&self, tenant: &str, field: &str, name: &str) -> Result<(), NexusError> {
        crate::secrets::validate_name(field, name)?;
        if crate::secrets::read_secret(&self.node.store, tenant, name)?.is_none() {
            return Err(NexusError::invalid(
                field,
                format!("secret {name} not found (set it first: nexusctl secrets set {name})"),
            ));
        }
        Ok(())
    }

    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<(), NexusError> {
        hooks::validate_name("name", name)?;
        self.propose(&caller.scope(), HookOp::Delete { name: name.into() })
            .await?;
        Ok(())
    }

    pub async fn set_paused(
        &self,
        caller: &Caller,
        name: &str,
        paused: bool,
    ) -> Result<HookRecord, NexusError> {
        hooks::validate_name("name", name)?;
        let op = HookOp::SetPaused {
            name: name.into(),
            paused,
            at_ms: now_ms(),
        };
        match self.propose(&caller.scope(), op).await? {
            HookReply::Hook(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// Delivers a dead delivery again (at once, then by the hook's retries).
    pub async fn replay(
        &self,
        caller: &Caller,
        name: &str,
        seq: u64,
    ) -> Result<Delivery, NexusError> {
        hooks::validate_name("name", name)?;
        let op = HookOp::Replay {
            name: name.into(),
            seq,
            at_ms: now_ms(),
        };
        match self.propose(&caller.scope(), op).await? {
            HookReply::Delivery(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get(
        &self,
        tenant: &str,
        name: &str,
        consistency: ReadConsistency,
    ) -> Result<HookRecord, NexusError> {
        hooks::validate_name("name", name)?;
        self.node.read_barrier(consistency).await?;
        hooks::read(&self.node.store, tenant, name)?
            .ok_or_else(|| NexusError::NotFound(format!("hook {name} not found")))
    }

    pub async fn list(
        &self,
        tenant: &str,
        consistency: ReadConsistency,
    ) -> Result<Vec<HookRecord>, NexusError> {
        self.node.read_barrier(consistency).await?;
        Ok(hooks::list(&self.node.store, tenant)?)
    }

    /// A hook's deliveries, newest first (`dead`: only the dead-letter list).
    pub async fn deliveries(
        &self,
        tenant: &str,
        name: &str,
        limit: usize,
        dead: bool,
        consistency: ReadConsistency,
    ) -> Result<Vec<Delivery>, NexusError> {
        self.get(tenant, name, consistency).await?;
        let (store, t, n) = (
            self.node.store.clone(),
            tenant.to_string(),
            name.to_string(),
        );
        let mut all = blocking(move || {
            hooks::deliveries(&store, &t, &n, hooks::MAX_KEEP_DELIVERIES as usize + 8)
        })
        .await?;
        if dead {
            all.retain(|d| d.state == RunState::Dead);
        }
        all.truncate(if limit == 0 { 100 } else { limit });
        Ok(all)
    }

    /// Makes or replaces an inbound endpoint.
    pub async fn put_inbound(
        &self,
        caller: &Caller,
        name: &str,
        description: &str,
        topic: &str,
        secret: &str,
    ) -> Result<Inbound, NexusError> {
        hooks::validate_name("name", name)?;
        events::validate_topic("topic", topic)?;
        if description.len() > 1024 {
            return Err(NexusError::invalid(
                "description",
                "is longer than 1024 bytes",
            ));
        }
        self.check_secret(&caller.tenant, "secret", secret)?;
        if hooks::inbound(&self.node.store, &caller.tenant, name)?.is_none()
            && hooks::inbounds(&self.node.store, &caller.tenant)?.len() >= MAX_HOOKS_PER_TENANT
        {
            return Err(NexusError::ResourceExhausted {
                limit: "inbound endpoints per tenant".into(),
                message: format!(
                    "tenant {} has {MAX_HOOKS_PER_TENANT} inbound endpoints, the most it may have",
                    caller.tenant
                ),
            });
        }
        let inbound = Inbound {
            name: name.into(),
            description: description.into(),
            topic: topic.into(),
            secret: secret.into(),
            owner: caller.subject.clone(),
            received: 0,
            created_at_ms: now_ms(),
        };
        match self
            .propose(&caller.scope(), HookOp::PutInbound { inbound })
            .await?
        {
            HookReply::Inbound(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_inbound(&self, caller: &Caller, name: &str) -> Result<(), NexusError> {
        hooks::validate_name("name", name)?;
        self.propose(&caller.scope(), HookOp::DeleteInbound { name: name.into() })
            .await?;
        Ok(())
    }

    pub async fn inbounds(
        &self,
        tenant: &str,
        consistency: ReadConsistency,
    ) -> Result<Vec<Inbound>, NexusError> {
        self.node.read_barrier(consistency).await?;
        Ok(hooks::inbounds(&self.node.store, tenant)?)
    }

    /// An inbound request to endpoint `name` of `tenant`: checks its signature against the
    /// value of the endpoint's secret, then publishes its body (a JSON value of at most
    /// [`events::MAX_DATA_BYTES`]) on the endpoint's topic. Returns the event's number.
    /// NOT_FOUND for an endpoint (or tenant) that does not exist, UNAUTHENTICATED for a
    /// missing, stale or wrong signature; nothing is published then.
    pub async fn receive(
        &self,
        tenant: &str,
        name: &str,
        signature: Signature<'_>,
        body: &[u8],
    ) -> Result<u64, NexusError> {
        let not_found = || NexusError::NotFound(format!("no inbound endpoint {name}"));
        if hooks::validate_name("name", name).is_err()
            || iam::tenant(&self.node.store, tenant)?.is_none()
        {
            return Err(not_found());
        }
        let inbound = hooks::inbound(&self.node.store, tenant, name)?.ok_or_else(not_found)?;
        let (_, key) = self
            .secrets
            .get(&Scope::system(tenant), &inbound.secret, 0)
            .await?;
        verify(&key, &signature, body, now_ms() / 1000)?;
        if body.len() > events::MAX_DATA_BYTES {
            return Err(NexusError::invalid(
                "body",
                format!(
                    "is {} bytes; at most {}",
                    body.len(),
                    events::MAX_DATA_BYTES
                ),
            ));
        }
        let data: Value = serde_json::from_slice(body)
            .map_err(|e| NexusError::invalid("body", format!("is not JSON: {e}")))?;
        let op = HookOp::Receive {
            name: name.into(),
            data: data.to_string(),
            at_ms: now_ms(),
        };
        match self.propose(&Scope::system(tenant), op).await? {
            HookReply::Received { seq } => Ok(seq),
            other => Err(unexpected(other)),
        }
    }

    async fn propose(&self, scope: &Scope, op: HookOp) -> Result<HookReply, NexusError> {
        match command::propose(&self.node, scope, Op::Hook(op)).await? {
            Reply::Hook(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply: {other:?}"))),
        }
    }
}

/// The signature headers of an inbound request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Signature<'a> {
    /// `Nexus-Signature: t=UNIX_SECONDS,v1=HEX` (HMAC-SHA256 of `T.BODY`).
    pub nexus: Option<&'a str>,
    /// `X-Hub-Signature-256: sha256=HEX` (HMAC-SHA256 of the body, GitHub's form; it has no
    /// time, so a captured request can be sent again).
    pub hub: Option<&'a str>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The `Nexus-Signature` value for `body` sent at `t` (UNIX seconds).
pub fn sign(key: &[u8], t: i64, body: &[u8]) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(format!("{t}.").as_bytes());
    ctx.update(body);
    format!("t={t},v1={}", hex(ctx.sign().as_ref()))
}

/// Checks an inbound request's signature (in constant time) and its age.
pub fn verify(key: &[u8], sig: &Signature<'_>, body: &[u8], now_s: i64) -> Result<(), NexusError> {
    let bad = |why: &str| NexusError::Unauthenticated(format!("webhook signature: {why}"));
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    if let Some(header) = sig.nexus {
        let mut t = None;
        let mut v1 = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = v.parse::<i64>().ok(),
                Some(("v1", v)) => v1.extend(unhex(v)),
                _ => {}
            }
        }
        let t = t.ok_or_else(|| bad("Nexus-Signature has no t=UNIX_SECONDS"))?;
        if (now_s - t).abs() > SIGNATURE_TOLERANCE_S {
            return Err(bad(&format!(
                "its time {t} is more than {SIGNATURE_TOLERANCE_S} s from the node's clock"
            )));
        }
        let mut message = format!("{t}.").into_bytes();
        message.extend_from_slice(body);
        return if v1.iter().any(|tag| hmac::verify(&k, &message, tag).is_ok()) {
            Ok(())
        } else {
            Err(bad("no v1 signature matches"))
        };
    }
    if let Some(header) = sig.hub {
        let tag = header
            .strip_prefix("sha256=")
            .and_then(unhex)
            .ok_or_else(|| bad("X-Hub-Signature-256 is not sha256=HEX"))?;
        return hmac::verify(&k, body, &tag).map_err(|_| bad("X-Hub-Signature-256 does not match"));
    }
    Err(bad("none given (Nexus-Signature or X-Hub-Signature-256)"))
}

/// Trigger arguments: a JSON object, or text with placeholders that makes one once filled.
fn validate_args(args: &str) -> Result<(), NexusError> {
    if args.len() > MAX_ARGS_BYTES {
        return Err(NexusError::invalid(
            "args",
            format!("is {} bytes; at most {MAX_ARGS_BYTES}", args.len()),
        ));
    }
    match serde_json::from_str::<Value>(if args.trim().is_empty() { "{}" } else { args }) {
        Ok(v) if v.is_object() => Ok(()),
        Ok(_) => Err(NexusError::invalid("args", "must be a JSON object")),
        Err(e) => Err(NexusError::invalid("args", format!("is not JSON: {e}"))),
    }
}

impl Driver for HookService {
    const TOPICS: &'static [&'static str] = &["hooks", "events"];
    const NAME: &'static str = "hook driver";

    fn node(&self) -> &Cluster {
        &self.node
    }

    async fn pass(self: &Arc<Self>) -> Result<Duration, NexusError> {
        let store = self.node.store.clone();
        let all = blocking(move || {
            let mut out = Vec::new();
            for t in iam::tenants(&store)? {
                for h in hooks::list(&store, &t.id)? {
                    out.push((t.id.clone(), h));
                }
            }
            Ok::<_, crate::store::StoreError>(out)
        })
        .await?;
        let live: std::collections::HashSet<(String, String)> = all
            .iter()
            .map(|(t, h)| (t.clone(), h.name.clone()))
            .collect();
        self.attempts
            .abort_where(|(t, h, _)| !live.contains(&(t.clone(), h.clone())));
        let now = now_ms();
        let mut wake = now + automation::MAX_IDLE.as_millis() as i64;
        for (tenant, h) in all {
            match self.tend(&tenant, &h, now).await {
                Ok(next) => wake = wake.min(next),
                Err(e) => {
                    tracing::debug!(error = %e, tenant, hook = h.name, "tending a hook");
                    wake = wake.min(now + 200);
                }
            }
        }
        Ok(Duration::from_millis((wake - now_ms()).max(0) as u64))
    }

    fn abort_all(&self) {
        self.attempts.abort_all();
    }
}

impl HookService {
    /// The driver: on every node, acting while the node leads, until `stop`.
    pub async fn drive(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        automation::drive(self, stop).await
    }

    /// Starts what hook `h` is due for; returns when to look at it again.
    async fn tend(
        self: &Arc<Self>,
        tenant: &str,
        h: &HookRecord,
        now: i64,
    ) -> Result<i64, NexusError> {
        let mut wake = i64::MAX;
        if h.head != 0 || h.replays > 0 {
            let (store, t, n) = (self.node.store.clone(), tenant.to_string(), h.name.clone());
            let all = blocking(move || {
                hooks::deliveries(&store, &t, &n, hooks::MAX_KEEP_DELIVERIES as usize + 8)
            })
            .await?;
            for d in all.into_iter().filter(|d| d.state.in_progress()) {
                match d.state {
                    RunState::Waiting if d.retry_at_ms > now => wake = wake.min(d.retry_at_ms),
                    RunState::Waiting => self.start(tenant, h, &d, now).await?,
                    _ if self
                        .attempts
                        .runs(&(tenant.to_string(), h.name.clone(), d.seq), d.attempt) => {}
                    _ if d.attempt < h.retry.max_attempts => {
                        tracing::warn!(tenant, delivery = d.id(), attempt = d.attempt, "a delivery's attempt was started by a leader that stopped leading; starting it again");
                        self.start(tenant, h, &d, now).await?;
                    }
                    _ => {
                        let op = HookOp::Finish {
                            name: h.name.clone(),
                            seq: d.seq,
                            attempt: d.attempt,
                            outcome: Outcome::Failed {
                                error: "the leader running its last attempt stopped leading before it finished".into(),
                                retry_at_ms: 0,
                            },
                            at_ms: now,
                        };
                        self.propose(&Scope::system(tenant), op).await?;
                    }
                }
            }
        }
        if h.head != 0 || h.paused {
            return Ok(wake);
        }
        let (store, t, topics, cursor) = (
            self.node.store.clone(),
            tenant.to_string(),
            h.topics.clone(),
            h.cursor,
        );
        let (found, last) = blocking(move || {
            events::read_after(&store, &t, cursor, 1, SCAN, |topic| {
                topics.iter().any(|p| events::matches(p, topic))
            })
        })
        .await?;
        if let Some(e) = found.into_iter().next() {
            let op = HookOp::Begin {
                name: h.name.clone(),
                expected_cursor: h.cursor,
                seq: e.seq,
                topic: e.topic,
                node: self.node.id,
                at_ms: now,
            };
            if let HookReply::Delivery(d) = self.propose(&Scope::system(tenant), op).await? {
                self.spawn(tenant, h.clone(), d);
            }
        } else if last >= cursor + SCAN as u64 {
            // A long run of events that match nothing: moved over, so no pass reads it again.
            let op = HookOp::Pass {
                name: h.name.clone(),
                expected_cursor: cursor,
                to: last,
            };
            self.propose(&Scope::system(tenant), op).await?;
        }
        Ok(wake)
    }

    async fn start(
        self: &Arc<Self>,
        tenant: &str,
        h: &HookRecord,
        d: &Delivery,
        now: i64,
    ) -> Result<(), NexusError> {
        let op = HookOp::Start {
            name: h.name.clone(),
            seq: d.seq,
            from: d.state,
            from_attempt: d.attempt,
            attempt: d.attempt + 1,
            node: self.node.id,
            at_ms: now,
        };
        match self.propose(&Scope::system(tenant), op).await? {
            HookReply::Delivery(d) => {
                self.spawn(tenant, h.clone(), d);
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Runs a started attempt in a task of its own and records its outcome.
    fn spawn(self: &Arc<Self>, tenant: &str, h: HookRecord, d: Delivery) {
        let key = (tenant.to_string(), h.name.clone(), d.seq);
        let this = self.clone();
        let tenant = tenant.to_string();
        self.attempts.spawn(key, d.attempt, async move {
            let result = automation::within(h.retry.timeout_ms, this.deliver(&tenant, &h, &d)).await;
            let now = now_ms();
            let outcome = match result {
                Ok(output) => Outcome::Succeeded { output },
                Err(e) => Outcome::Failed {
                    retry_at_ms: automation::retry_at(
                        &h.retry,
                        d.attempt,
                        &e,
                        automation::seed(&tenant, &h.name, d.seq as i64, u64::from(d.attempt)),
                        now,
                    ),
                    error: e.to_string(),
                },
            };
            let label = match &outcome {
                Outcome::Succeeded { .. } => "succeeded",
                Outcome::Failed { retry_at_ms: 0, .. } => "dead",
                Outcome::Failed { .. } => "retried",
            };
            metrics::HOOK_DELIVERIES
                .with_label_values(&[h.target.kind(), label])
                .inc();
            let op = HookOp::Finish {
                name: h.name.clone(),
                seq: d.seq,
                attempt: d.attempt,
                outcome,
                at_ms: now,
            };
            if let Err(e) = this.propose(&Scope::system(&tenant), op).await {
                tracing::warn!(error = %e, tenant, delivery = d.id(), "recording a delivery's outcome");
            }
        });
    }

    /// One attempt at delivering `d`'s event to `h`'s target.
    async fn deliver(
        &self,
        tenant: &str,
        h: &HookRecord,
        d: &Delivery,
    ) -> Result<String, NexusError> {
        let (store, t, seq) = (self.node.store.clone(), tenant.to_string(), d.seq);
        let e = blocking(move || events::get(&store, &t, seq))
            .await?
            .ok_or_else(|| {
                NexusError::NotFound(format!(
                    "event {} is no longer kept (retention took it before it was delivered)",
                    d.seq
                ))
            })?;
        let data = serde_json::from_str::<Value>(&e.data).unwrap_or(Value::String(e.data.clone()));
        let event = json!({"id": d.id(), "hook": h.name, "seq": e.seq, "topic": e.topic,
                           "data": data, "source": e.source, "published_at_ms": e.at_ms});
        match &h.target {
            Target::Tool { tool, args } => {
                let args: Value =
                    serde_json::from_str(if args.trim().is_empty() { "{}" } else { args })
                        .map_err(|e| NexusError::invalid("args", e.to_string()))?;
                let args = template::fill(&args, &json!({"event": event}), "args")?;
                automation::call_as_owner(
                    &self.tools,
                    &self.node.store,
                    automation::Acting {
                        tenant,
                        owner: &h.owner,
                        request_id: format!("{}#{}", d.id(), d.attempt),
                        action: "hooks.trigger",
                    },
                    tool,
                    &args.to_string(),
                )
                .await
            }
            Target::Webhook { url, secret } => {
                let policy = crate::tools::http_policy(&self.node.store, tenant)?;
                let url = http::allowed_url(&policy, "url", "webhook", url)?;
                let (_, key) = self.secrets.get(&Scope::system(tenant), secret, 0).await?;
                let body = event.to_string();
                let signature = sign(&key, now_ms() / 1000, body.as_bytes());
                let client =
                    http::policy_client(&policy, Some(Duration::from_millis(h.retry.timeout_ms)))?;
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("nexus-delivery", d.id())
                    .header("nexus-event", &e.topic)
                    .header("nexus-signature", signature)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| {
                        let why = std::error::Error::source(&e)
                            .map(|s| format!("{e}: {s}"))
                            .unwrap_or_else(|| e.to_string());
                        NexusError::unavailable(format!("webhook: {why}"))
                    })?;
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                let answer = format!(
                    "HTTP {}: {}",
                    status.as_u16(),
                    crate::error::excerpt(&text, ANSWER_BYTES)
                );
                if status.is_success() {
                    Ok(answer)
                } else {
                    Err(NexusError::unavailable(answer))
                }
            }
        }
    }
}

fn unexpected(reply: HookReply) -> NexusError {
    NexusError::internal(format!("unexpected reply: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_with_their_time() {
        let key = b"s3cret";
        let body = br#"{"a":1}"#;
        let header = sign(key, 1_000, body);
        let sig = Signature {
            nexus: Some(&header),
            hub: None,
        };
        verify(key, &sig, body, 1_100).unwrap();
        assert!(verify(b"other", &sig, body, 1_100).is_err());
        assert!(verify(key, &sig, br#"{"a":2}"#, 1_100).is_err());
        let err = verify(key, &sig, body, 1_000 + SIGNATURE_TOLERANCE_S + 1).unwrap_err();
        assert!(err.to_string().contains("from the node's clock"), "{err}");
        assert!(verify(key, &Signature::default(), body, 1_000).is_err());
        // GitHub's form.
        let k = hmac::Key::new(hmac::HMAC_SHA256, key);
        let hub = format!("sha256={}", hex(hmac::sign(&k, body).as_ref()));
        let sig = Signature {
            nexus: None,
            hub: Some(&hub),
        };
        verify(key, &sig, body, 0).unwrap();
        assert!(verify(key, &sig, b"{}", 0).is_err());
    }
}
