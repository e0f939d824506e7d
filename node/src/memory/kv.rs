//! Key-value memories: JSON values under (namespace, key), versioned for compare-and-set, with
//! an optional time to live.
//!
//! Expiry is decided against the time carried in each command, never the applying node's
//! clock, so every node agrees. An expired memory reads as absent at once; the leader's sweeper
//! proposes `PurgeExpired` to remove it from storage and from the search index.

use serde::{Deserialize, Serialize};

use super::now_ms;
use crate::cluster::ReadConsistency;
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
