//! What the leader's automation drivers share (the scheduler, the workflow driver, the hook
//! driver): the loop that acts while the node leads, the attempts a node runs, acting as a
//! principal that is not on a request (an owner with its grants as they are now), retry
//! policies and which failures are worth another attempt.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::audit::AuditContext;
use crate::command::{Cluster, OnBehalf};
use crate::error::NexusError;
use crate::iam::{self, Principal};
use crate::memory::now_ms;
use crate::schedules::RetryPolicy;
use crate::store::Store;

use super::tools::{Reporter, ToolService};
use super::Caller;

/// Longest a driver sleeps between passes.
pub const MAX_IDLE: Duration = Duration::from_secs(1);
/// How long after a change a driver looks, gathering a burst into one pass.
pub const COALESCE: Duration = Duration::from_millis(10);

/// A leader's driver: passes over its state while the node leads.
pub trait Driver: Send + Sync + 'static {
    /// The change topics (`Store::changed`) that start a pass early.
    const TOPICS: &'static [&'static str];
    /// What a log line calls it.
    const NAME: &'static str;

    fn node(&self) -> &Cluster;

    /// One pass; returns how long to sleep before the next.
    fn pass(self: &Arc<Self>) -> impl Future<Output = Result<Duration, NexusError>> + Send;

    /// The node stopped leading (or is stopping): what it runs is stopped; the next leader
    /// starts it again.
    fn abort_all(&self);
}

/// Runs `driver` on this node until `stop`, passing while the node leads: after each pass it
/// sleeps as long as the pass said (at most [`MAX_IDLE`]) or until one of its topics
/// changes.
pub async fn drive<D: Driver>(driver: Arc<D>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut changes = driver.node().store.watch_changes();
    let mut led = false;
    loop {
        let leads = driver.node().status().role == "leader";
        if led && !leads {
            driver.abort_all();
        }
        led = leads;
        let wait = if leads {
            match driver.pass().await {
                Ok(wait) => wait.min(MAX_IDLE),
                Err(e) => {
                    tracing::warn!(error = %e, driver = D::NAME, "pass (retried)");
                    MAX_IDLE
                }
            }
        } else {
            Duration::from_millis(200)
        };
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        let (mut changed, mut closed) = (false, false);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = stop.wait_for(|s| *s) => {
                    driver.abort_all();
                    return;
                }
                change = changes.recv() => match change {
                    Ok(c) if D::TOPICS.contains(&c.topic) => {
                        changed = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        changed = true;
                        break;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        closed = true;
                        break;
                    }
                },
            }
        }
        if closed {
            // No change is told any more (the store is closing): the timer alone.
            sleep.await;
        } else if changed {
            // A burst of changes (every step and outcome is one) makes one pass.
            tokio::time::sleep(COALESCE).await;
            while changes.try_recv().is_ok() {}
        }
    }
}

/// The attempts a node runs: key -> (attempt, its task).
pub struct Attempts<K>(Mutex<HashMap<K, (u32, tokio::task::AbortHandle)>>);

impl<K: Eq + Hash + Clone> Default for Attempts<K> {
    fn default() -> Self {
        Attempts(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Clone> Attempts<K> {
    /// Whether this node runs attempt `attempt` of `key`.
    pub fn runs(&self, key: &K, attempt: u32) -> bool {
        self.0
            .lock()
            .expect("attempts lock")
            .get(key)
            .is_some_and(|(a, _)| *a == attempt)
    }

    /// Spawns `task` as attempt `attempt` of `key`; it is forgotten when it ends.
    pub fn spawn(
        self: &Arc<Self>,
        key: K,
        attempt: u32,
        task: impl Future<Output = ()> + Send + 'static,
    ) where
        K: Send + Sync + 'static,
    {
        let mut map = self.0.lock().expect("attempts lock");
        let this = self.clone();
        let k = key.clone();
        let handle = tokio::spawn(async move {
            task.await;
            let mut map = this.0.lock().expect("attempts lock");
            if map.get(&k).is_some_and(|(a, _)| *a == attempt) {
                map.remove(&k);
            }
        });
        map.insert(key, (attempt, handle.abort_handle()));
    }

    /// Aborts the attempts whose key `which` picks.
    pub fn abort_where(&self, which: impl Fn(&K) -> bool) {
        self.0
            .lock()
            .expect("attempts lock")
            .retain(|k, (_, task)| {
                if which(k) {
                    task.abort();
                    false
                } else {
                    true
                }
            });
    }

    pub fn abort_all(&self) {
        self.abort_where(|_| true);
    }
}

/// `owner` of `tenant` as a principal now: its tenant must be active, and its grants are its
/// roles' as they are bound now (`root` and `local` hold every permission).
pub fn owner_principal(store: &Store, tenant: &str, owner: &str) -> Result<Principal, NexusError> {
    if let Some(t) = iam::tenant(store, tenant)? {
        if t.state == iam::TenantState::Suspended {
            return Err(NexusError::PermissionDenied(format!(
                "tenant {tenant} is suspended"
            )));
        }
    }
    let grants = match owner {
        "root" | "local" => iam::rbac::Grants::root(),
        subject => iam::grants_of(store, tenant, subject)?,
    };
    Ok(Principal {
        tenant: tenant.to_string(),
        subject: owner.to_string(),
        grants,
    })
}

/// Whom an automated call acts as, and how it is audited.
pub struct Acting<'a> {
    pub tenant: &'a str,
    pub owner: &'a str,
    /// The audit record's request id: the run, step or delivery and its attempt.
    pub request_id: String,
    pub action: &'static str,
}

/// Calls `tool` with `args` (JSON text) as the owner, with the owner's grants as they are
/// now; returns the output as JSON text.
pub async fn call_as_owner(
    tools: &Arc<ToolService>,
    store: &Store,
    acting: Acting<'_>,
    tool: &str,
    args: &str,
) -> Result<String, NexusError> {
    let Acting {
        tenant,
        owner,
        request_id,
        action,
    } = acting;
    let principal = owner_principal(store, tenant, owner)?;
    iam::rbac::authorize("tools.call", tool, &principal)?;
    let on_behalf = OnBehalf {
        context: AuditContext {
            request_id,
            principal: owner.to_string(),
            tenant: tenant.to_string(),
            action: action.into(),
            at_ms: now_ms(),
        },
        credential: None,
    };
    let caller = Caller::new(principal, Some(on_behalf));
    let out = tools.call(&caller, tool, args, Reporter::default()).await?;
    Ok(out.output.to_string())
}

/// Whether a failed attempt is worth another: not when the request itself is at fault (bad
/// arguments, a tool that does not exist, a permission the owner lacks), which another
/// attempt would repeat.
pub fn retryable(e: &NexusError) -> bool {
    !matches!(
        e,
        NexusError::InvalidArgument { .. }
            | NexusError::NotFound(_)
            | NexusError::PermissionDenied(_)
            | NexusError::Unauthenticated(_)
    )
}

/// A stable hash, the same on every node (FNV-1a): jitter and backoff seeds.
pub fn seed(tenant: &str, name: &str, n: i64, salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant
        .bytes()
        .chain([0])
        .chain(name.bytes())
        .chain(n.to_be_bytes())
        .chain(salt.to_be_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// When the next attempt of a failed one starts (0: none: used up, or not worth one).
pub fn retry_at(
    policy: &RetryPolicy,
    attempt: u32,
    error: &NexusError,
    seed: u64,
    now: i64,
) -> i64 {
    if attempt < policy.max_attempts && retryable(error) {
        now + policy.backoff_ms(attempt, seed) as i64
    } else {
        0
    }
}

/// Bounds of a retry policy.
const MAX_ATTEMPTS: u32 = 20;
const MIN_BACKOFF_MS: u64 = 100;
const MAX_BACKOFF_MS: u64 = 24 * 3_600_000;
const MIN_TIMEOUT_MS: u64 = 100;

/// Checks a retry policy; `field` names it (`retry`, `steps[2].retry`).
pub fn validate_retry(field: &str, r: &RetryPolicy) -> Result<(), NexusError> {
    if !(1..=MAX_ATTEMPTS).contains(&r.max_attempts) {
        return Err(NexusError::invalid(
            format!("{field}.max_attempts"),
            format!("is {}; 1 (no retry) to {MAX_ATTEMPTS}", r.max_attempts),
        ));
    }
    for (name, v) in [
        ("initial_backoff", r.initial_backoff_ms),
        ("max_backoff", r.max_backoff_ms),
    ] {
        if !(MIN_BACKOFF_MS..=MAX_BACKOFF_MS).contains(&v) {
            return Err(NexusError::invalid(
                format!("{field}.{name}"),
                format!("is {v} ms; 100 ms to 24 h"),
            ));
        }
    }
    if r.max_backoff_ms < r.initial_backoff_ms {
        return Err(NexusError::invalid(
            format!("{field}.max_backoff"),
            "is shorter than the initial backoff",
        ));
    }
    let max_timeout = super::tools::CALL_TIMEOUT.as_millis() as u64;
    if !(MIN_TIMEOUT_MS..=max_timeout).contains(&r.timeout_ms) {
        return Err(NexusError::invalid(
            format!("{field}.timeout"),
            format!(
                "is {} ms; 100 ms to {} s (a tool call's longest)",
                r.timeout_ms,
                max_timeout / 1000
            ),
        ));
    }
    Ok(())
}

/// Runs `work` within `timeout_ms`.
pub async fn within<T>(
    timeout_ms: u64,
    work: impl Future<Output = Result<T, NexusError>>,
) -> Result<T, NexusError> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
        Ok(r) => r,
        Err(_) => Err(NexusError::unavailable(format!(
            "the attempt did not finish within its timeout of {timeout_ms} ms"
        ))),
    }
}
