//! The key-value memory API of a node: validation, proposals, and reads.

use std::sync::Arc;

use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply, Scope};
use crate::config::Limits;
use crate::error::NexusError;
use crate::memory::kv::*;
use crate::memory::{now_ms, validate};
use crate::store::{keys, StoreError, CF_KV, CF_TTL};

/// The key-value memory API of a node.
pub struct KvService {
    node: Arc<Cluster>,
    limits: Limits,
}

impl KvService {
    pub fn new(node: Arc<Cluster>, limits: Limits) -> Self {
        Self { node, limits }
    }

    pub async fn put(&self, scope: &Scope, req: PutRequest) -> Result<MemoryItem, NexusError> {
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
        match self.propose(scope, op).await? {
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
        scope: &Scope,
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
        match self.propose(scope, op).await? {
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
        let store = self.node.store.clone();
        let max_reply_bytes = self.limits.max_reply_bytes;
        crate::store::blocking(move || {
            let now = now_ms();
            let mut items = Vec::with_capacity(page_size.min(64));
            let mut cursor = start;
            let mut more = false;
            // A page also ends at the reply's byte budget (limits.max_reply_bytes).
            let budget = max_reply_bytes;
            let mut bytes = 0usize;
            // Expired memories are skipped, so a page may need more than one scan.
            'scan: loop {
                let (batch, truncated) = store.scan_prefix_bytes(
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
        })
        .await
    }

    async fn propose(&self, scope: &Scope, op: KvOp) -> Result<KvReply, NexusError> {
        match command::propose(&self.node, scope, Op::Kv(op)).await? {
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

    /// Proposes the removal of expired memories; run by the leader's sweeper. `audited`
    /// (with authentication on): each removal is on the tenant's audit record, by principal
    /// `system:ttl`.
    pub async fn purge_expired(&self, limit: usize, audited: bool) -> Result<u64, NexusError> {
        let now = now_ms();
        let mut purged = 0;
        for (tenant, items) in self.expired(now, limit)? {
            let mut scope = Scope::system(&tenant);
            if audited {
                scope.on_behalf = Some(command::OnBehalf {
                    context: crate::audit::AuditContext {
                        request_id: String::new(),
                        principal: "system:ttl".into(),
                        tenant: tenant.clone(),
                        action: "memory.expire".into(),
                        at_ms: now,
                    },
                    credential: None,
                });
            }
            if let KvReply::Purged { count } = self
                .propose(&scope, KvOp::PurgeExpired { items, now_ms: now })
                .await?
            {
                purged += count;
            }
        }
        Ok(purged)
    }
}
