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

mod migrate;
mod read;
mod verify;

pub use migrate::{format4, migrate_to_chains, needs_migration};
pub use read::{chain_records, chains, head, read, tail};
pub use verify::{find, verify, verify_chain, Verification};

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
        hash_fields(
            &mut h,
            [
                &self.request_id,
                &self.principal,
                &self.tenant,
                &self.action,
                &self.resource,
                &self.result,
            ],
        );
        h.finalize().to_vec()
    }
}

/// Feeds a record's text fields to its hash, each prefixed with its length (both chain
/// formats hash them alike).
fn hash_fields(h: &mut Sha256, fields: [&String; 6]) {
    for field in fields {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
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
