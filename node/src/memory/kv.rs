//! Key-value memories: JSON values under (namespace, key), versioned for compare-and-set, with
//! an optional time to live.
//!
//! Expiry is decided against the time carried in each command, never the applying node's
//! clock, so every node agrees. An expired memory reads as absent at once; the leader's sweeper
//! proposes `PurgeExpired` to remove it from storage and from the search index.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{now_ms, validate};
use crate::cluster::{ClusterNode, Command, Op, ReadConsistency, Reply};
use crate::config::Limits;
use crate::error::NexusError;
use crate::store::{keys, ApplyCtx, Store, StoreError, CF_KV, CF_TTL};

/// A memory as stored in `kv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    pub value: String,
    pub version: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// 0 = never expires.
    pub expires_at_ms: i64,
}

impl MemoryRecord {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms != 0 && self.expires_at_ms <= now_ms
    }
}

/// A memory with its address, as reads and replies return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryItem {
    pub namespace: String,
    pub key: String,
    pub record: MemoryRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvOp {
    Put {
        namespace: String,
        key: String,
        value: String,
        expires_at_ms: i64,
        expected_version: Option<u64>,
        now_ms: i64,
    },
    Delete {
        namespace: String,
        key: String,
        expected_version: Option<u64>,
        now_ms: i64,
    },
    /// Removes the listed memories if they are still the expired versions the sweeper saw.
    PurgeExpired {
        items: Vec<(String, String, i64)>,
        now_ms: i64,
    },
}

impl KvOp {
    pub fn name(&self) -> &'static str {
        match self {
            KvOp::Put { .. } => "kv.put",
            KvOp::Delete { .. } => "kv.delete",
            KvOp::PurgeExpired { .. } => "kv.purge_expired",
        }
    }

    pub fn approx_size(&self) -> usize {
        match self {
            KvOp::Put {
                namespace,
                key,
                value,
                ..
            } => namespace.len() + key.len() + value.len() + 32,
            KvOp::Delete { namespace, key, .. } => namespace.len() + key.len() + 16,
            KvOp::PurgeExpired { items, .. } => {
                items.iter().map(|(n, k, _)| n.len() + k.len() + 8).sum()
            }
        }
    }

    /// The memories this command may change, for derived indexes: (namespace, key).
    pub fn touched(&self) -> Vec<(&str, &str)> {
        match self {
            KvOp::Put { namespace, key, .. } | KvOp::Delete { namespace, key, .. } => {
                vec![(namespace, key)]
            }
            KvOp::PurgeExpired { items, .. } => items
                .iter()
                .map(|(n, k, _)| (n.as_str(), k.as_str()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum KvReply {
    Item(MemoryItem),
    Deleted { version: u64 },
    Purged { count: u64 },
}

fn live(record: Option<MemoryRecord>, now_ms: i64) -> Option<MemoryRecord> {
    record.filter(|r| !r.is_expired(now_ms))
}

fn check_version(expected: Option<u64>, current: Option<&MemoryRecord>) -> Result<(), NexusError> {
    match (expected, current) {
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(0), Some(r)) => Err(NexusError::precondition(
            "expected_version",
            format!(
                "expected the key not to exist, but it has version {}",
                r.version
            ),
        )),
        (Some(v), None) => Err(NexusError::precondition(
            "expected_version",
            format!("expected version {v}, but the key does not exist"),
        )),
        (Some(v), Some(r)) if r.version != v => Err(NexusError::precondition(
            "expected_version",
            format!(
                "expected version {v}, but the current version is {}",
                r.version
            ),
        )),
        (Some(_), Some(_)) => Ok(()),
    }
}

/// Applies one command. Checks come first: a rejected command writes nothing.
pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &KvOp,
) -> Result<Result<KvReply, NexusError>, StoreError> {
    match op {
        KvOp::Put {
            namespace,
            key,
            value,
            expires_at_ms,
            expected_version,
            now_ms,
        } => {
            let k = keys::kv_key(tenant, namespace, key);
            let stored: Option<MemoryRecord> = ctx.get_decoded(CF_KV, &k)?;
            let current = live(stored.clone(), *now_ms);
            if let Err(e) = check_version(*expected_version, current.as_ref()) {
                return Ok(Err(e));
            }
            if let Some(old) = &stored {
                if old.expires_at_ms != 0 {
                    ctx.delete(
                        CF_TTL,
                        &keys::ttl_key(tenant, old.expires_at_ms, namespace, key),
                    );
                }
            }
            let record = MemoryRecord {
                value: value.clone(),
                version: current.as_ref().map_or(1, |r| r.version + 1),
                created_at_ms: current.as_ref().map_or(*now_ms, |r| r.created_at_ms),
                updated_at_ms: *now_ms,
                expires_at_ms: *expires_at_ms,
            };
            if record.expires_at_ms != 0 {
                ctx.put(
                    CF_TTL,
                    &keys::ttl_key(tenant, record.expires_at_ms, namespace, key),
                    &(),
                );
            }
            ctx.put(CF_KV, &k, &record);
            Ok(Ok(KvReply::Item(MemoryItem {
                namespace: namespace.clone(),
                key: key.clone(),
                record,
            })))
        }
        KvOp::Delete {
            namespace,
            key,
            expected_version,
            now_ms,
        } => {
            let k = keys::kv_key(tenant, namespace, key);
            let stored: Option<MemoryRecord> = ctx.get_decoded(CF_KV, &k)?;
            let Some(current) = live(stored.clone(), *now_ms) else {
                return Ok(Err(NexusError::NotFound(format!(
                    "memory {namespace}/{key} not found"
                ))));
            };
            if let Err(e) = check_version(*expected_version, Some(&current)) {
                return Ok(Err(e));
            }
            if current.expires_at_ms != 0 {
                ctx.delete(
                    CF_TTL,
                    &keys::ttl_key(tenant, current.expires_at_ms, namespace, key),
                );
            }
            ctx.delete(CF_KV, &k);
            Ok(Ok(KvReply::Deleted {
                version: current.version,
            }))
        }
        KvOp::PurgeExpired { items, now_ms } => {
            let mut count = 0;
            for (namespace, key, expires_at_ms) in items {
                let k = keys::kv_key(tenant, namespace, key);
                let stored: Option<MemoryRecord> = ctx.get_decoded(CF_KV, &k)?;
                if let Some(r) = stored {
                    if r.expires_at_ms == *expires_at_ms && r.is_expired(*now_ms) {
                        ctx.delete(CF_KV, &k);
                        ctx.delete(
                            CF_TTL,
                            &keys::ttl_key(tenant, *expires_at_ms, namespace, key),
                        );
                        count += 1;
                    }
                }
            }
            Ok(Ok(KvReply::Purged { count }))
        }
    }
}

/// Reads a live memory straight from the store.
pub fn read(
    store: &Store,
    tenant: &str,
    namespace: &str,
    key: &str,
) -> Result<Option<MemoryRecord>, StoreError> {
    Ok(live(
        store.get_decoded(CF_KV, &keys::kv_key(tenant, namespace, key))?,
        now_ms(),
    ))
}

pub struct PutRequest {
    pub namespace: String,
    pub key: String,
    pub value: String,
    pub ttl_ms: u64,
    pub expected_version: Option<u64>,
}

pub struct ListRequest {
    pub namespace: String,
    pub prefix: String,
    pub page_size: u32,
    pub page_token: String,
    pub consistency: ReadConsistency,
}

/// Expired memories of one tenant: (namespace, key, expires_at_ms).
pub type ExpiredItems = (String, Vec<(String, String, i64)>);

/// The key-value memory API of a node.
pub struct KvService {
    node: Arc<ClusterNode>,
    limits: Limits,
}

impl KvService {
    pub fn new(node: Arc<ClusterNode>, limits: Limits) -> Self {
        Self { node, limits }
    }

    pub async fn put(&self, tenant: &str, req: PutRequest) -> Result<MemoryItem, NexusError> {
        validate::namespace("namespace", &req.namespace)?;
        validate::key("key", &req.key, &self.limits)?;
        validate::json(
            "value",
            &req.value,
            self.limits.max_value_bytes,
            "limits.max_value_bytes",
        )?;
        let ttl_ms =
            i64::try_from(req.ttl_ms).map_err(|_| NexusError::invalid("ttl_ms", "is too large"))?;
        let now = now_ms();
        let op = KvOp::Put {
            namespace: req.namespace,
            key: req.key,
            value: req.value,
            expires_at_ms: if ttl_ms == 0 {
                0
            } else {
                now.saturating_add(ttl_ms)
            },
            expected_version: req.expected_version,
            now_ms: now,
        };
        match self.propose(tenant, op).await? {
            KvReply::Item(item) => Ok(item),
            other => Err(NexusError::internal(format!(
                "unexpected reply to put: {other:?}"
            ))),
        }
    }

    pub async fn get(
        &self,
        tenant: &str,
        namespace: &str,
        key: &str,
        consistency: ReadConsistency,
    ) -> Result<MemoryItem, NexusError> {
        validate::namespace("namespace", namespace)?;
        validate::key("key", key, &self.limits)?;
        self.node.read_barrier(consistency).await?;
        let record = read(&self.node.store, tenant, namespace, key)?
            .ok_or_else(|| NexusError::NotFound(format!("memory {namespace}/{key} not found")))?;
        Ok(MemoryItem {
            namespace: namespace.to_string(),
            key: key.to_string(),
            record,
        })
    }

    pub async fn delete(
        &self,
        tenant: &str,
        namespace: &str,
        key: &str,
        expected_version: Option<u64>,
    ) -> Result<u64, NexusError> {
        validate::namespace("namespace", namespace)?;
        validate::key("key", key, &self.limits)?;
        let op = KvOp::Delete {
            namespace: namespace.to_string(),
            key: key.to_string(),
            expected_version,
            now_ms: now_ms(),
        };
        match self.propose(tenant, op).await? {
            KvReply::Deleted { version } => Ok(version),
            other => Err(NexusError::internal(format!(
                "unexpected reply to delete: {other:?}"
            ))),
        }
    }

    /// One page of a namespace in key order, and the token of the next page.
    pub async fn list(
        &self,
        tenant: &str,
        req: ListRequest,
    ) -> Result<(Vec<MemoryItem>, String), NexusError> {
        validate::namespace("namespace", &req.namespace)?;
        if req.prefix.len() > self.limits.max_key_bytes {
            return Err(NexusError::invalid(
                "prefix",
                "is longer than the longest key",
            ));
        }
        let page_size = validate::page_size("page_size", req.page_size, &self.limits)?;
        let ns_prefix = keys::kv_namespace_prefix(tenant, &req.namespace);
        let mut prefix = ns_prefix.clone();
        prefix.extend_from_slice(req.prefix.as_bytes());
        let start = match validate::decode_page_token("page_token", &req.page_token)? {
            // The token is the last key returned; resume just after it.
            Some(last_key) => {
                let mut s = ns_prefix.clone();
                s.extend_from_slice(&last_key);
                s.push(0);
                if !s.starts_with(&prefix) {
                    return Err(NexusError::invalid(
                        "page_token",
                        "belongs to another listing",
                    ));
                }
                s
            }
            None => prefix.clone(),
        };
        self.node.read_barrier(req.consistency).await?;
        let now = now_ms();
        let mut items = Vec::with_capacity(page_size.min(64));
        let mut cursor = start;
        let mut more = false;
        // A page also ends at the reply's byte budget (limits.max_reply_bytes).
        let budget = self.limits.max_reply_bytes;
        let mut bytes = 0usize;
        // Expired memories are skipped, so a page may need more than one scan.
        'scan: loop {
            let (batch, truncated) = self.node.store.scan_prefix_bytes(
                CF_KV,
                &prefix,
                &cursor,
                page_size + 1,
                budget.saturating_sub(bytes),
            )?;
            let exhausted = batch.len() <= page_size && !truncated;
            for (k, v) in &batch {
                let record: MemoryRecord =
                    crate::store::codec::decode(v).map_err(StoreError::from)?;
                if record.is_expired(now) {
                    continue;
                }
                let size = k.len() + v.len();
                if items.len() == page_size || (!items.is_empty() && bytes + size > budget) {
                    more = true;
                    break 'scan;
                }
                bytes += size;
                let (_, namespace, key) = keys::parse_kv_key(k)
                    .ok_or_else(|| NexusError::internal("malformed kv key in store"))?;
                items.push(MemoryItem {
                    namespace,
                    key,
                    record,
                });
            }
            match batch.last() {
                Some(_) if truncated && !items.is_empty() => {
                    more = true;
                    break;
                }
                Some((k, _)) if !exhausted => {
                    cursor = k.clone();
                    cursor.push(0);
                }
                _ => break,
            }
        }
        let next = if more {
            items
                .last()
                .map(|i| validate::encode_page_token(i.key.as_bytes()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok((items, next))
    }

    async fn propose(&self, tenant: &str, op: KvOp) -> Result<KvReply, NexusError> {
        let command = Command {
            tenant: tenant.to_string(),
            op: Op::Kv(op),
        };
        match self.node.propose(command).await? {
            Reply::Kv(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Finds memories of any tenant that have expired by `now`, at most `limit`, grouped by
    /// tenant, for the sweeper to propose `PurgeExpired`.
    pub fn expired(&self, now: i64, limit: usize) -> Result<Vec<ExpiredItems>, StoreError> {
        let store = &self.node.store;
        let mut out: Vec<ExpiredItems> = Vec::new();
        let mut found = 0;
        let mut seek: Vec<u8> = Vec::new();
        while found < limit {
            let Some((k, _)) = store.scan_prefix(CF_TTL, &[], &seek, 1)?.pop() else {
                break;
            };
            let Some(tenant) = keys::parse_tenant(&k) else {
                break;
            };
            let tp = keys::tenant_prefix(&tenant);
            for (k, _) in store.scan_prefix(CF_TTL, &tp, &tp, limit - found)? {
                let Some((expires, ns, key)) = keys::parse_ttl_key(&k) else {
                    continue;
                };
                if expires > now {
                    break;
                }
                match out.last_mut() {
                    Some((t, items)) if *t == tenant => items.push((ns, key, expires)),
                    _ => out.push((tenant.clone(), vec![(ns, key, expires)])),
                }
                found += 1;
            }
            seek = crate::store::apply::prefix_end(&tp);
        }
        Ok(out)
    }

    /// Proposes the removal of expired memories; run by the leader's sweeper.
    pub async fn purge_expired(&self, limit: usize) -> Result<u64, NexusError> {
        let now = now_ms();
        let mut purged = 0;
        for (tenant, items) in self.expired(now, limit)? {
            if let KvReply::Purged { count } = self
                .propose(&tenant, KvOp::PurgeExpired { items, now_ms: now })
                .await?
            {
                purged += count;
            }
        }
        Ok(purged)
    }
}
