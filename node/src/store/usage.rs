//! Each tenant's usage: how many items it stores and how many bytes they take, kept by every
//! apply step (`ApplyCtx` meters each write to a metered family) in the `usage` family, so
//! that every node holds the same figures and a quota is decided in apply, deterministically.
//!
//! - **Bytes** are the key and value bytes of everything the tenant stores in a metered
//!   family, as written (before RocksDB's compression): memories, conversations, messages,
//!   vectors, the TTL and id indexes, secrets, registered tools. Identities (`iam`) and the audit log are not
//!   the tenant's data and are not counted.
//! - **Items** are memories (key-value and semantic), conversations and messages.
//!
//! A directory from before usage was kept gets its figures computed once, by a scan
//! ([`recompute`]), on open; so does a node that installs a snapshot without them.

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use super::{codec, keys, Store, StoreError};
use super::{
    CF_CONVERSATIONS, CF_HOOKS, CF_KV, CF_MESSAGES, CF_MESSAGE_IDS, CF_MESSAGE_VECTORS,
    CF_MESSAGE_VECTOR_IDS, CF_SCHEDULES, CF_SECRETS, CF_SEMANTIC, CF_SEMANTIC_IDS, CF_TOOLS,
    CF_TTL, CF_USAGE, CF_WORKFLOWS,
};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub items: u64,
    pub bytes: u64,
}

/// The metered families, and whether each key of one is an item.
const METERED: &[(&str, bool)] = &[
    (CF_KV, true),
    (CF_CONVERSATIONS, true),
    (CF_MESSAGES, true),
    (CF_SEMANTIC, true),
    (CF_MESSAGE_IDS, false),
    (CF_TTL, false),
    (CF_SEMANTIC_IDS, false),
    (CF_MESSAGE_VECTORS, false),
    (CF_MESSAGE_VECTOR_IDS, false),
    (CF_SECRETS, false),
    (CF_TOOLS, false),
    (CF_SCHEDULES, false),
    (CF_WORKFLOWS, false),
    (CF_HOOKS, false),
];

/// `Some(is an item)` for a metered family.
pub fn metered(cf: &str) -> Option<bool> {
    METERED
        .iter()
        .find(|(c, _)| *c == cf)
        .map(|(_, item)| *item)
}

pub fn read(store: &Store, tenant: &str) -> Result<Usage, StoreError> {
    Ok(store
        .get_decoded(CF_USAGE, &keys::tenant_prefix(tenant))?
        .unwrap_or_default())
}

pub fn write(batch: &mut WriteBatch, store: &Store, tenant: &str, usage: &Usage) {
    let key = keys::tenant_prefix(tenant);
    if *usage == Usage::default() {
        batch.delete_cf(store.cf(CF_USAGE), key);
    } else {
        batch.put_cf(store.cf(CF_USAGE), key, codec::encode(usage));
    }
}

/// Whether the store holds tenant data but no usage figures (written before they were kept).
pub fn missing(store: &Store) -> Result<bool, StoreError> {
    let any = |cf: &str| -> Result<bool, StoreError> {
        Ok(store
            .db()
            .iterator_cf(store.cf(cf), rocksdb::IteratorMode::Start)
            .next()
            .transpose()?
            .is_some())
    };
    if any(CF_USAGE)? {
        return Ok(false);
    }
    for (cf, _) in METERED {
        if any(cf)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Computes every tenant's usage from the data and replaces the stored figures.
pub fn recompute(store: &Store) -> Result<usize, StoreError> {
    let mut all: std::collections::BTreeMap<String, Usage> = Default::default();
    for (cf, item) in METERED {
        for kv in store
            .db()
            .iterator_cf(store.cf(cf), rocksdb::IteratorMode::Start)
        {
            let (k, v) = kv?;
            let Some(tenant) = keys::parse_tenant(&k) else {
                continue;
            };
            let u = all.entry(tenant).or_default();
            u.bytes += (k.len() + v.len()) as u64;
            if *item {
                u.items += 1;
            }
        }
    }
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(store.cf(CF_USAGE), [0u8].as_slice(), keys::KEYSPACE_END);
    for (tenant, u) in &all {
        write(&mut batch, store, tenant, u);
    }
    store.db().write(batch)?;
    Ok(all.len())
}
