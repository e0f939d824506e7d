//! Reading the audit log: the chains, and their records merged in sequence order.

use super::{AuditRecord, Chain, Head};
use crate::store::keys::audit as keys;
use crate::store::{codec, Store, StoreError, CF_AUDIT};

/// Every chain with its head, in key order (tenant, then incarnation).
pub fn chains(store: &Store) -> Result<Vec<(Chain, Head)>, StoreError> {
    let mut out = Vec::new();
    let mut seek: Vec<u8> = Vec::new();
    while let Some((k, _)) = store.scan_prefix(CF_AUDIT, &[], &seek, 1)?.pop() {
        let Some(tenant) = crate::store::keys::parse_tenant(&k) else {
            break;
        };
        let heads = keys::heads_prefix(&tenant);
        for (k, v) in store.scan_prefix(CF_AUDIT, &heads, &heads, usize::MAX)? {
            if let Some(incarnation) = keys::parse_head(&tenant, &k) {
                let chain = Chain {
                    tenant: tenant.clone(),
                    incarnation,
                };
                out.push((chain, codec::decode(&v)?));
            }
        }
        seek = crate::store::apply::prefix_end(&keys::tenant(&tenant));
    }
    Ok(out)
}

/// The head of one chain (the default when it was never written).
pub fn head(store: &Store, chain: &Chain) -> Result<Head, StoreError> {
    Ok(store
        .get_decoded(CF_AUDIT, &keys::head(&chain.tenant, chain.incarnation))?
        .unwrap_or_default())
}

/// Up to `limit` records of one chain from sequence number `from` on, oldest first.
pub fn chain_records(
    store: &Store,
    chain: &Chain,
    from: u64,
    limit: usize,
) -> Result<Vec<AuditRecord>, StoreError> {
    let prefix = keys::chain_prefix(&chain.tenant, chain.incarnation);
    let start = keys::record(&chain.tenant, chain.incarnation, from);
    store
        .scan_prefix(CF_AUDIT, &prefix, &start, limit)?
        .iter()
        .map(|(_, v)| codec::decode(v).map_err(StoreError::from))
        .collect()
}

/// One chain's records in sequence order, read lazily, forwards or backwards.
struct Cursor<'a> {
    iter: rocksdb::DBIteratorWithThreadMode<'a, rocksdb::DB>,
    prefix: Vec<u8>,
}

impl Cursor<'_> {
    fn next(&mut self) -> Result<Option<AuditRecord>, StoreError> {
        match self.iter.next().transpose()? {
            Some((k, v)) if k.starts_with(&self.prefix) => Ok(Some(codec::decode(&v)?)),
            _ => Ok(None),
        }
    }
}

/// Merges the chains' records by sequence number: after `after` (oldest first) when
/// `backwards` is false, else the last ones (newest first). At most `limit`.
fn merged(
    store: &Store,
    chains: &[Chain],
    after: u64,
    limit: usize,
    backwards: bool,
) -> Result<Vec<AuditRecord>, StoreError> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut cursors = Vec::with_capacity(chains.len());
    // Ordered so that the heap's top is the next record to take: the smallest sequence
    // number going forwards, the largest going backwards.
    let mut heap: BinaryHeap<(Reverse<u64>, u64, usize)> = BinaryHeap::new();
    let key = |seq: u64| {
        if backwards {
            (Reverse(u64::MAX - seq), seq)
        } else {
            (Reverse(seq), seq)
        }
    };
    let mut pending: Vec<Option<AuditRecord>> = Vec::with_capacity(chains.len());
    for (i, chain) in chains.iter().enumerate() {
        let prefix = keys::chain_prefix(&chain.tenant, chain.incarnation);
        let end = crate::store::apply::prefix_end(&prefix);
        let start = keys::record(&chain.tenant, chain.incarnation, after.saturating_add(1));
        // The iterator seeks when it is made: the keys need not outlive this step.
        let mode = if backwards {
            rocksdb::IteratorMode::From(&end, rocksdb::Direction::Reverse)
        } else {
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward)
        };
        let mut cursor = Cursor {
            iter: store.db().iterator_cf(store.cf(CF_AUDIT), mode),
            prefix,
        };
        let first = cursor.next()?;
        if let Some(r) = &first {
            let (order, seq) = key(r.seq);
            heap.push((order, seq, i));
        }
        pending.push(first);
        cursors.push(cursor);
    }
    let mut out = Vec::new();
    while out.len() < limit {
        let Some((_, _, i)) = heap.pop() else { break };
        let record = pending[i].take().expect("a queued cursor holds its record");
        out.push(record);
        let next = cursors[i].next()?;
        if let Some(r) = &next {
            let (order, seq) = key(r.seq);
            heap.push((order, seq, i));
        }
        pending[i] = next;
    }
    Ok(out)
}

/// Records of `chains` after `after`, oldest first, at most `limit`.
pub fn read(
    store: &Store,
    chains: &[Chain],
    after: u64,
    limit: usize,
) -> Result<Vec<AuditRecord>, StoreError> {
    merged(store, chains, after, limit, false)
}

/// The last `limit` records of `chains`, oldest first.
pub fn tail(store: &Store, chains: &[Chain], limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
    let mut out = merged(store, chains, 0, limit, true)?;
    out.reverse();
    Ok(out)
}
