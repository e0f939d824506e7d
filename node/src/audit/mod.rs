//! The audit log: every write, every denial and every secret read, with time, principal,
//! tenant, action, resource, result and request id; replicated through Raft, append-only
//! except for retention, and hash-chained so that `nexusctl audit verify` finds a record that
//! was changed or removed.
//!
//! How records are made:
//! - A write: `api::grpc::handle` hands each handler its caller (`service::Caller`: who, which
//!   request, which method), and the handler passes it to every write it makes
//!   (`command::Scope`). The command is proposed on the caller's behalf and becomes
//!   `Op::Audited { context, op }` on the leader, and apply appends the record, with the
//!   command's outcome, in the same write batch as the change itself: a write and its record
//!   commit together.
//! - A denial (authentication or permission) and a secret read: proposed as
//!   `Op::Audit(AuditRecordOp)` before the reply is sent; a secret's value is returned only
//!   once its read is on record.
//!
//! Storage (data format 5, keys in `store::keys::audit`): one hash chain per tenant and
//! incarnation (the principal's tenant; the empty tenant for unauthenticated requests). A
//! tenant's incarnation is bumped each time a tenant of that name is created, so a tenant
//! re-created under an old name starts a new chain and never sees its predecessor's records;
//! records outlive a deleted tenant until retention removes them. Sequence numbers are global
//! (one counter for all chains), so the records of every chain merge into one order. Each
//! record carries the sequence number and hash of the record before it in its chain, and its
//! hash is SHA-256 over those and its own fields: changing a record breaks its hash, removing
//! one breaks the link of the next, and removing the last disagrees with the chain's head.
//! Retention removes a chain's oldest records (`AuditTrimOp`, after the leader exported them,
//! `service::audit_retention`); the head keeps the sequence number and hash of the last one
//! removed, so the rest still verifies from there.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::NexusError;
use crate::store::keys::audit as keys;
use crate::store::{codec, ApplyCtx, Store, StoreError, CF_AUDIT};

/// Who did what, carried in each audited command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditContext {
    pub request_id: String,
    /// `root`, `local`, `sa:<name>`, `user:<subject>`, or `anonymous`.
    pub principal: String,
    /// The principal's tenant (empty when unauthenticated).
    pub tenant: String,
    /// The API method, such as `memory.put`.
    pub action: String,
    /// When the node received the request.
    pub at_ms: i64,
}

impl AuditContext {
    /// Roughly how many bytes the context adds to a log entry.
    pub fn approx_size(&self) -> usize {
        self.request_id.len() + self.principal.len() + self.tenant.len() + self.action.len() + 32
    }
}

/// A record proposed on its own (a denial, a secret read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecordOp {
    pub context: AuditContext,
    pub resource: String,
    pub result: String,
}

/// Retention: removes the records of the command's tenant's chain `incarnation` up to and
/// including `through_seq`, at most [`MAX_TRIM`] of them. Proposed by the leader only (a
/// member cannot forward one) after it exported them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditTrimOp {
    pub incarnation: u64,
    pub through_seq: u64,
}

/// Most records one trim removes (bounds the apply step).
pub const MAX_TRIM: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Global: every chain's records share one sequence.
    pub seq: u64,
    pub at_ms: i64,
    pub request_id: String,
    pub principal: String,
    pub tenant: String,
    /// The tenant's incarnation when the record was made.
    pub incarnation: u64,
    pub action: String,
    pub resource: String,
    /// `ok`, or the error's gRPC code and message.
    pub result: String,
    /// The sequence number and hash of the record before this one in its chain (0 and 32
    /// zero bytes for a chain's first).
    pub prev_seq: u64,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl AuditRecord {
    /// SHA-256 over the link to the previous record and every other field, length-prefixed.
    pub fn compute_hash(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"nexus audit v2\0");
        h.update(&self.prev_hash);
        h.update(self.prev_seq.to_be_bytes());
        h.update(self.seq.to_be_bytes());
        h.update(self.at_ms.to_be_bytes());
        h.update(self.incarnation.to_be_bytes());
        for field in [
            &self.request_id,
            &self.principal,
            &self.tenant,
            &self.action,
            &self.resource,
            &self.result,
        ] {
            h.update((field.len() as u64).to_be_bytes());
            h.update(field.as_bytes());
        }
        h.finalize().to_vec()
    }
}

/// Where a chain stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The last record's sequence number and hash (0 and zeros for a chain never written).
    pub last_seq: u64,
    pub last_hash: Vec<u8>,
    /// The first record kept (0 when retention removed them all).
    pub first_seq: u64,
    /// The last record retention removed (0 and zeros when none was): the first record kept
    /// links to it.
    pub trimmed_seq: u64,
    pub trimmed_hash: Vec<u8>,
    /// Records kept and their encoded bytes (keys and values).
    pub records: u64,
    pub bytes: u64,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            last_seq: 0,
            last_hash: vec![0; 32],
            first_seq: 0,
            trimmed_seq: 0,
            trimmed_hash: vec![0; 32],
            records: 0,
            bytes: 0,
        }
    }
}

/// One chain: a tenant (empty for unauthenticated requests) and an incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Chain {
    pub tenant: String,
    pub incarnation: u64,
}

/// The outcome of a command as the audit log writes it.
pub fn result_text<T>(r: &Result<T, NexusError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?}: {e}", crate::error::code_of(e)),
    }
}

/// The tenant's current incarnation, as this apply step sees it.
fn incarnation_in(ctx: &ApplyCtx<'_>, tenant: &str) -> Result<u64, StoreError> {
    Ok(ctx
        .get_decoded::<u64>(CF_AUDIT, &keys::incarnation(tenant))?
        .unwrap_or(0))
}

/// The tenant's current incarnation.
pub fn incarnation(store: &Store, tenant: &str) -> Result<u64, StoreError> {
    Ok(store
        .get_decoded::<u64>(CF_AUDIT, &keys::incarnation(tenant))?
        .unwrap_or(0))
}

/// A tenant of this name is being created: its records go to a new chain from now on.
pub fn begin_incarnation(ctx: &mut ApplyCtx<'_>, tenant: &str) -> Result<u64, StoreError> {
    let next = incarnation_in(ctx, tenant)? + 1;
    ctx.put(CF_AUDIT, &keys::incarnation(tenant), &next);
    Ok(next)
}

/// Appends one record to the chain of the context's tenant (in this apply step's batch).
pub fn append(
    ctx: &mut ApplyCtx<'_>,
    context: &AuditContext,
    resource: String,
    result: String,
) -> Result<(), StoreError> {
    let seq = ctx
        .get_decoded::<u64>(CF_AUDIT, &keys::sequence())?
        .unwrap_or(0)
        + 1;
    ctx.put(CF_AUDIT, &keys::sequence(), &seq);
    let incarnation = incarnation_in(ctx, &context.tenant)?;
    append_at(ctx, seq, incarnation, context, resource, result)
}

/// Appends a record with a given sequence number (apply, and the format-5 migration).
fn append_at(
    ctx: &mut ApplyCtx<'_>,
    seq: u64,
    incarnation: u64,
    context: &AuditContext,
    resource: String,
    result: String,
) -> Result<(), StoreError> {
    let head_key = keys::head(&context.tenant, incarnation);
    let mut head = ctx
        .get_decoded::<Head>(CF_AUDIT, &head_key)?
        .unwrap_or_default();
    let mut record = AuditRecord {
        seq,
        at_ms: context.at_ms,
        request_id: context.request_id.clone(),
        principal: context.principal.clone(),
        tenant: context.tenant.clone(),
        incarnation,
        action: context.action.clone(),
        resource,
        result,
        prev_seq: head.last_seq,
        prev_hash: std::mem::take(&mut head.last_hash),
        hash: Vec::new(),
    };
    record.hash = record.compute_hash();
    let key = keys::record(&context.tenant, incarnation, seq);
    let bytes = codec::encode(&record);
    head.last_seq = seq;
    head.last_hash = record.hash;
    if head.first_seq == 0 {
        head.first_seq = seq;
    }
    head.records += 1;
    head.bytes += (key.len() + bytes.len()) as u64;
    ctx.put_encoded(CF_AUDIT, &key, bytes);
    ctx.put(CF_AUDIT, &head_key, &head);
    Ok(())
}

/// Applies a trim: removes the chain's records up to `through_seq` (at most [`MAX_TRIM`]),
/// and drops the head of a chain left empty that is no longer its tenant's current one.
/// Returns how many were removed.
pub fn trim(ctx: &mut ApplyCtx<'_>, tenant: &str, op: &AuditTrimOp) -> Result<u64, StoreError> {
    let head_key = keys::head(tenant, op.incarnation);
    let Some(mut head) = ctx.get_decoded::<Head>(CF_AUDIT, &head_key)? else {
        return Ok(0);
    };
    if head.first_seq == 0 || op.through_seq < head.first_seq {
        return Ok(0);
    }
    let prefix = keys::chain_prefix(tenant, op.incarnation);
    let start = keys::record(tenant, op.incarnation, head.first_seq);
    let mut removed = 0u64;
    let mut next_first = 0u64;
    for (k, _) in ctx
        .store()
        .scan_prefix(CF_AUDIT, &prefix, &start, MAX_TRIM + 1)?
    {
        let Some(raw) = ctx.get_raw_value(CF_AUDIT, &k)? else {
            continue;
        };
        let record: AuditRecord = codec::decode(&raw)?;
        if record.seq > op.through_seq || removed as usize == MAX_TRIM {
            next_first = record.seq;
            break;
        }
        head.trimmed_seq = record.seq;
        head.trimmed_hash = record.hash;
        head.records = head.records.saturating_sub(1);
        head.bytes = head.bytes.saturating_sub((k.len() + raw.len()) as u64);
        ctx.delete(CF_AUDIT, &k);
        removed += 1;
    }
    head.first_seq = next_first;
    if next_first == 0 && op.incarnation != incarnation_in(ctx, tenant)? {
        ctx.delete(CF_AUDIT, &head_key);
    } else {
        ctx.put(CF_AUDIT, &head_key, &head);
    }
    Ok(removed)
}

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

/// What verifying found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub chains: u64,
    pub records: u64,
    /// The first problem, with the sequence number where it shows; None when intact.
    pub problem: Option<(u64, String)>,
}

/// Walks one chain from its first record kept: every record's hash and place, every link,
/// and the head. Returns the records checked and the first problem.
pub fn verify_chain(
    store: &Store,
    chain: &Chain,
    head: &Head,
) -> Result<(u64, Option<(u64, String)>), StoreError> {
    let name = if chain.tenant.is_empty() {
        "the unauthenticated chain".to_string()
    } else {
        format!(
            "tenant {} (incarnation {})",
            chain.tenant, chain.incarnation
        )
    };
    let mut prev = (head.trimmed_seq, head.trimmed_hash.clone());
    let mut count = 0u64;
    let prefix = keys::chain_prefix(&chain.tenant, chain.incarnation);
    let iter = store.db().iterator_cf(
        store.cf(CF_AUDIT),
        rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
    );
    for item in iter {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        let Some(seq) = keys::parse_record_seq(&k) else {
            return Ok((
                count,
                Some((prev.0 + 1, format!("{name}: a record key is malformed"))),
            ));
        };
        let r: AuditRecord = match codec::decode(&v) {
            Ok(r) => r,
            Err(e) => {
                return Ok((
                    count,
                    Some((seq, format!("{name}: record {seq} does not decode: {e}"))),
                ))
            }
        };
        if r.seq != seq || r.tenant != chain.tenant || r.incarnation != chain.incarnation {
            return Ok((count, Some((seq, format!("{name}: record {seq} was moved here (it says record {} of tenant {:?}, incarnation {})", r.seq, r.tenant, r.incarnation)))));
        }
        if r.prev_seq != prev.0 {
            let problem = if r.prev_seq > prev.0 {
                format!(
                    "{name}: record {} is missing (record {seq} follows it)",
                    r.prev_seq
                )
            } else {
                format!("{name}: record {seq} does not link to record {}", prev.0)
            };
            return Ok((count, Some((r.prev_seq.max(prev.0), problem))));
        }
        if r.prev_hash != prev.1 {
            return Ok((
                count,
                Some((
                    seq,
                    format!("{name}: record {seq} does not link to record {}", prev.0),
                )),
            ));
        }
        if r.compute_hash() != r.hash {
            return Ok((
                count,
                Some((seq, format!("{name}: record {seq} was modified"))),
            ));
        }
        prev = (seq, r.hash);
        count += 1;
    }
    if prev.0 != head.last_seq || prev.1 != head.last_hash {
        return Ok((count, Some((prev.0 + 1, format!(
            "{name}: the chain ends at record {}, but its head says {}: records after {} were removed",
            prev.0, head.last_seq, prev.0
        )))));
    }
    if count != head.records {
        return Ok((
            count,
            Some((
                head.first_seq,
                format!(
                    "{name}: {count} records found, the head counts {}",
                    head.records
                ),
            )),
        ));
    }
    Ok((count, None))
}

/// Verifies the given chains (all of them when None), stopping at the first problem.
pub fn verify(store: &Store, only: Option<&Chain>) -> Result<Verification, StoreError> {
    let all = match only {
        Some(chain) => vec![(chain.clone(), head(store, chain)?)],
        None => chains(store)?,
    };
    let mut v = Verification {
        chains: 0,
        records: 0,
        problem: None,
    };
    for (chain, head) in &all {
        let (records, problem) = verify_chain(store, chain, head)?;
        v.chains += 1;
        v.records += records;
        if problem.is_some() {
            v.problem = problem;
            break;
        }
    }
    Ok(v)
}

/// The key of the record with sequence number `seq`, wherever it is (tools and tests).
pub fn find(store: &Store, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
    for (chain, _) in chains(store)? {
        let key = keys::record(&chain.tenant, chain.incarnation, seq);
        if store.get(CF_AUDIT, &key)?.is_some() {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// Whether the store holds format 4's single chain (a directory or a snapshot from an older
/// build).
pub fn needs_migration(store: &Store) -> Result<bool, StoreError> {
    Ok(store.get(CF_AUDIT, b"head")?.is_some())
}

/// Format 5: re-chains format 4's single chain (`r<seq>`, `head`) into a chain per tenant.
/// Every tenant in `tenants` (the existing ones but `default`) gets incarnation 1 (as if
/// created once); records keep
/// their sequence numbers, time, principal and fields, and get new hashes and links. The old
/// chain is verified first and what was found is logged (re-chaining would otherwise hide a
/// break). Resumable: each batch moves records and their chains' heads together.
pub fn migrate_to_chains(store: &Store, tenants: &[String]) -> Result<u64, StoreError> {
    let old_head: Option<(u64, Vec<u8>)> = store.get_decoded(CF_AUDIT, b"head")?;
    let Some((old_last, _)) = old_head else {
        return Ok(0);
    };
    let mut ctx = ApplyCtx::new(store);
    for t in tenants {
        if ctx
            .get_decoded::<u64>(CF_AUDIT, &keys::incarnation(t))?
            .is_none()
        {
            ctx.put(CF_AUDIT, &keys::incarnation(t), &1u64);
        }
    }
    store.db().write(ctx.finish()?)?;
    let mut moved = 0u64;
    loop {
        let rows = store.scan_prefix(CF_AUDIT, b"r", b"r", 4096)?;
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|(k, _)| keys::is_format4(k))
            .collect();
        if rows.is_empty() {
            break;
        }
        let mut ctx = ApplyCtx::new(store);
        for (k, v) in &rows {
            let old: format4::Record = codec::decode(v)?;
            let context = AuditContext {
                request_id: old.request_id,
                principal: old.principal,
                tenant: old.tenant,
                action: old.action,
                at_ms: old.at_ms,
            };
            let incarnation = incarnation_in(&ctx, &context.tenant)?;
            append_at(
                &mut ctx,
                old.seq,
                incarnation,
                &context,
                old.resource,
                old.result,
            )?;
            ctx.delete(CF_AUDIT, k);
            moved += 1;
        }
        store.db().write(ctx.finish()?)?;
    }
    let mut ctx = ApplyCtx::new(store);
    ctx.put(CF_AUDIT, &keys::sequence(), &old_last);
    ctx.delete(CF_AUDIT, b"head");
    store.db().write(ctx.finish()?)?;
    store.db().flush_wal(true)?;
    Ok(moved)
}

/// Format 4's single chain, for the migration and its verification.
pub mod format4 {
    use serde::Deserialize;
    use sha2::{Digest, Sha256};

    use crate::store::{codec, Store, StoreError, CF_AUDIT};

    #[derive(Deserialize)]
    pub struct Record {
        pub seq: u64,
        pub at_ms: i64,
        pub request_id: String,
        pub principal: String,
        pub tenant: String,
        pub action: String,
        pub resource: String,
        pub result: String,
        pub prev_hash: Vec<u8>,
        pub hash: Vec<u8>,
    }

    impl Record {
        fn compute_hash(&self) -> Vec<u8> {
            let mut h = Sha256::new();
            h.update(b"nexus audit v1\0");
            h.update(&self.prev_hash);
            h.update(self.seq.to_be_bytes());
            h.update(self.at_ms.to_be_bytes());
            for field in [
                &self.request_id,
                &self.principal,
                &self.tenant,
                &self.action,
                &self.resource,
                &self.result,
            ] {
                h.update((field.len() as u64).to_be_bytes());
                h.update(field.as_bytes());
            }
            h.finalize().to_vec()
        }
    }

    /// Checks the old chain's hashes and links; the first problem, if any.
    pub fn verify(store: &Store) -> Result<Option<String>, StoreError> {
        let mut prev = vec![0u8; 32];
        let mut expected = 1u64;
        let iter = store.db().iterator_cf(
            store.cf(CF_AUDIT),
            rocksdb::IteratorMode::From(b"r", rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(b"r") {
                break;
            }
            if !crate::store::keys::audit::is_format4(&k) {
                continue;
            }
            let r: Record = codec::decode(&v)?;
            if r.seq != expected {
                return Ok(Some(format!("record {expected} is missing")));
            }
            if r.prev_hash != prev || r.compute_hash() != r.hash {
                return Ok(Some(format!(
                    "record {} was modified or does not link",
                    r.seq
                )));
            }
            prev = r.hash;
            expected += 1;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(i: u64, tenant: &str) -> AuditContext {
        AuditContext {
            request_id: format!("r{i}"),
            principal: "sa:bot".into(),
            tenant: tenant.into(),
            action: "memory.put".into(),
            at_ms: i as i64,
        }
    }

    fn step(store: &Store, f: impl FnOnce(&mut ApplyCtx<'_>)) {
        let mut c = ApplyCtx::new(store);
        f(&mut c);
        store.db().write(c.finish().unwrap()).unwrap();
    }

    /// Records 1..=n, alternating between acme (odd) and beta (even).
    fn chain(store: &Store, n: u64) {
        for i in 1..=n {
            let tenant = if i % 2 == 1 { "acme" } else { "beta" };
            step(store, |c| {
                append(c, &ctx(i, tenant), format!("memory/n/k{i}"), "ok".into()).unwrap()
            });
        }
    }

    fn acme() -> Chain {
        Chain {
            tenant: "acme".into(),
            incarnation: 0,
        }
    }

    fn seqs(records: &[AuditRecord]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn chains_merge_in_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 9);
        let all: Vec<Chain> = chains(&store)
            .unwrap()
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(all.len(), 2);
        assert_eq!(seqs(&tail(&store, &all, 3).unwrap()), vec![7, 8, 9]);
        assert_eq!(seqs(&read(&store, &all, 4, 3).unwrap()), vec![5, 6, 7]);
        assert_eq!(seqs(&tail(&store, &[acme()], 2).unwrap()), vec![7, 9]);
        assert_eq!(
            seqs(&read(&store, &[acme()], 3, 10).unwrap()),
            vec![5, 7, 9]
        );
        let v = verify(&store, None).unwrap();
        assert_eq!((v.chains, v.records, v.problem), (2, 9, None));
        let h = head(&store, &acme()).unwrap();
        assert_eq!((h.first_seq, h.last_seq, h.records), (1, 9, 5));
    }

    #[test]
    fn a_changed_or_removed_record_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 9);
        let key = |seq| keys::record("acme", 0, seq);
        // Changed: a field rewritten, the stored hash kept.
        let mut r: AuditRecord = store.get_decoded(CF_AUDIT, &key(3)).unwrap().unwrap();
        r.result = "ok, nothing to see".into();
        store
            .db()
            .put_cf(store.cf(CF_AUDIT), key(3), codec::encode(&r))
            .unwrap();
        let (seq, why) = verify(&store, None).unwrap().problem.unwrap();
        assert_eq!(seq, 3);
        assert!(why.contains("record 3 was modified"), "{why}");
        // Changed with its hash recomputed: the next record's link breaks.
        r.hash = r.compute_hash();
        store
            .db()
            .put_cf(store.cf(CF_AUDIT), key(3), codec::encode(&r))
            .unwrap();
        let (seq, why) = verify(&store, None).unwrap().problem.unwrap();
        assert_eq!(seq, 5);
        assert!(why.contains("does not link"), "{why}");

        // Removed: the next one names it.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 9);
        store.db().delete_cf(store.cf(CF_AUDIT), key(5)).unwrap();
        let (seq, why) = verify(&store, None).unwrap().problem.unwrap();
        assert_eq!(seq, 5);
        assert!(why.contains("record 5 is missing"), "{why}");
        // The first one removed.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 9);
        store.db().delete_cf(store.cf(CF_AUDIT), key(1)).unwrap();
        let (_, why) = verify(&store, None).unwrap().problem.unwrap();
        assert!(why.contains("record 1 is missing"), "{why}");
        // The last one removed: the head gives it away.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 9);
        store.db().delete_cf(store.cf(CF_AUDIT), key(9)).unwrap();
        let (_, why) = verify(&store, None).unwrap().problem.unwrap();
        assert!(why.contains("removed"), "{why}");
        // Moved into another chain.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 9);
        let r = store.get(CF_AUDIT, &key(9)).unwrap().unwrap();
        store
            .db()
            .put_cf(store.cf(CF_AUDIT), keys::record("beta", 0, 11), r)
            .unwrap();
        let (_, why) = verify(&store, None).unwrap().problem.unwrap();
        assert!(why.contains("moved"), "{why}");
    }

    #[test]
    fn trimmed_chains_still_verify_and_a_new_incarnation_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 9);
        let trim_through = |seq: u64| {
            let mut n = 0;
            step(&store, |c| {
                n = trim(
                    c,
                    "acme",
                    &AuditTrimOp {
                        incarnation: 0,
                        through_seq: seq,
                    },
                )
                .unwrap()
            });
            n
        };
        assert_eq!(trim_through(4), 2, "records 1 and 3");
        assert_eq!(trim_through(4), 0, "again: nothing");
        let h = head(&store, &acme()).unwrap();
        assert_eq!((h.first_seq, h.trimmed_seq, h.records), (5, 3, 3));
        assert_eq!(verify(&store, None).unwrap().problem, None);
        assert_eq!(seqs(&tail(&store, &[acme()], 10).unwrap()), vec![5, 7, 9]);
        // All of it; then a new record links to the last one removed.
        assert_eq!(trim_through(100), 3);
        assert_eq!(head(&store, &acme()).unwrap().bytes, 0);
        chain_one(&store, 10, "acme");
        assert_eq!(verify(&store, None).unwrap().problem, None);
        assert_eq!(seqs(&tail(&store, &[acme()], 10).unwrap()), vec![10]);

        // acme is created again: incarnation 1, its own chain.
        step(&store, |c| {
            assert_eq!(begin_incarnation(c, "acme").unwrap(), 1);
        });
        chain_one(&store, 11, "acme");
        let new = Chain {
            tenant: "acme".into(),
            incarnation: 1,
        };
        assert_eq!(
            seqs(&tail(&store, std::slice::from_ref(&new), 10).unwrap()),
            vec![11]
        );
        assert_eq!(incarnation(&store, "acme").unwrap(), 1);
        // The old chain, emptied, goes away with its head.
        assert_eq!(trim_through(100), 1);
        let left: Vec<Chain> = chains(&store)
            .unwrap()
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert!(!left.contains(&acme()) && left.contains(&new), "{left:?}");
        assert_eq!(verify(&store, None).unwrap().problem, None);
    }

    fn chain_one(store: &Store, seq: u64, tenant: &str) {
        step(store, |c| {
            c.put(CF_AUDIT, &keys::sequence(), &(seq - 1));
            append(c, &ctx(seq, tenant), "x".into(), "ok".into()).unwrap()
        });
    }
}
