//! The audit log: every write, every denial and every secret read, with time, principal,
//! tenant, action, resource, result and request id; replicated through Raft, append-only, and
//! hash-chained so that `nexusctl audit verify` finds a record that was changed or removed.
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
//! Storage: `audit` (a state-machine family, not keyed by tenant: records outlive a deleted
//! tenant): sequence number (u64, big-endian) -> [`AuditRecord`], and `head` -> the last
//! sequence number and hash. Each record's hash is SHA-256 over the previous record's hash and
//! the record's own fields, so changing a record breaks its hash, and removing one breaks the
//! chain at the next.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::NexusError;
use crate::store::{codec, ApplyCtx, Store, StoreError, CF_AUDIT};

const HEAD_KEY: &[u8] = b"head";

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub at_ms: i64,
    pub request_id: String,
    pub principal: String,
    pub tenant: String,
    pub action: String,
    pub resource: String,
    /// `ok`, or the error's gRPC code and message.
    pub result: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl AuditRecord {
    /// SHA-256 over the previous hash and every other field, length-prefixed.
    pub fn compute_hash(&self) -> Vec<u8> {
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

/// The outcome of a command as the audit log writes it.
pub fn result_text<T>(r: &Result<T, NexusError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{:?}: {e}", crate::error::code_of(e)),
    }
}

/// Appends one record to the chain (in this apply step's batch).
pub fn append(
    ctx: &mut ApplyCtx<'_>,
    context: &AuditContext,
    resource: String,
    result: String,
) -> Result<(), StoreError> {
    let (last, prev_hash) = ctx
        .get_decoded::<(u64, Vec<u8>)>(CF_AUDIT, HEAD_KEY)?
        .unwrap_or((0, vec![0; 32]));
    let mut record = AuditRecord {
        seq: last + 1,
        at_ms: context.at_ms,
        request_id: context.request_id.clone(),
        principal: context.principal.clone(),
        tenant: context.tenant.clone(),
        action: context.action.clone(),
        resource,
        result,
        prev_hash,
        hash: Vec::new(),
    };
    record.hash = record.compute_hash();
    ctx.put(CF_AUDIT, &record_key(record.seq), &record);
    ctx.put(CF_AUDIT, HEAD_KEY, &(record.seq, record.hash.clone()));
    Ok(())
}

pub fn record_key(seq: u64) -> Vec<u8> {
    let mut k = b"r".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Records after `after` (0 = from the start), at most `limit`, of `tenant` when given.
pub fn read(
    store: &Store,
    after: u64,
    limit: usize,
    tenant: Option<&str>,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut out = Vec::new();
    let mut start = record_key(after + 1);
    loop {
        let rows = store.scan_prefix(CF_AUDIT, b"r", &start, 1024)?;
        for (_, v) in &rows {
            let r: AuditRecord = codec::decode(v)?;
            if tenant.is_none_or(|t| t == r.tenant) {
                out.push(r);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        match rows.last() {
            Some((k, _)) if rows.len() == 1024 => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(out),
        }
    }
}

/// The last `limit` records (of `tenant` when given), oldest first.
pub fn tail(
    store: &Store,
    limit: usize,
    tenant: Option<&str>,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut out = Vec::new();
    let iter = store.db().iterator_cf(
        store.cf(CF_AUDIT),
        rocksdb::IteratorMode::From(&record_key(u64::MAX), rocksdb::Direction::Reverse),
    );
    for item in iter {
        let (k, v) = item?;
        if !k.starts_with(b"r") {
            continue;
        }
        let r: AuditRecord = codec::decode(&v)?;
        if tenant.is_none_or(|t| t == r.tenant) {
            out.push(r);
            if out.len() == limit {
                break;
            }
        }
    }
    out.reverse();
    Ok(out)
}

/// What verifying the chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub records: u64,
    /// The first problem, with the sequence number where it shows; None when intact.
    pub problem: Option<(u64, String)>,
}

/// Walks the whole chain: every record's hash, every link, no gap, and the head.
pub fn verify(store: &Store) -> Result<Verification, StoreError> {
    let head: Option<(u64, Vec<u8>)> = store.get_decoded(CF_AUDIT, HEAD_KEY)?;
    let mut expected_seq = 1u64;
    let mut prev = vec![0u8; 32];
    let mut count = 0u64;
    let fail = |seq: u64, why: String, count: u64| Verification {
        records: count,
        problem: Some((seq, why)),
    };
    for item in store
        .db()
        .iterator_cf(store.cf(CF_AUDIT), rocksdb::IteratorMode::Start)
    {
        let (k, v) = item?;
        if !k.starts_with(b"r") {
            continue;
        }
        let Some(seq) = k
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return Ok(fail(
                expected_seq,
                "a record key is malformed".into(),
                count,
            ));
        };
        let r: AuditRecord = match codec::decode(&v) {
            Ok(r) => r,
            Err(e) => {
                return Ok(fail(
                    seq,
                    format!("record {seq} does not decode: {e}"),
                    count,
                ))
            }
        };
        if seq != expected_seq {
            return Ok(fail(
                expected_seq,
                format!("record {expected_seq} is missing (the next one is {seq})"),
                count,
            ));
        }
        if r.seq != seq {
            return Ok(fail(
                seq,
                format!("record {seq} claims to be {}", r.seq),
                count,
            ));
        }
        if r.prev_hash != prev {
            return Ok(fail(
                seq,
                format!("record {seq} does not link to record {}", seq - 1),
                count,
            ));
        }
        if r.compute_hash() != r.hash {
            return Ok(fail(seq, format!("record {seq} was modified"), count));
        }
        prev = r.hash;
        count += 1;
        expected_seq += 1;
    }
    match head {
        Some((last, hash)) if last != count || hash != prev => Ok(fail(
            count + 1,
            format!(
                "the chain ends at record {count}, but the head says {last}: records after {count} were removed"
            ),
            count,
        )),
        None if count > 0 => Ok(fail(0, "the chain's head is missing".into(), count)),
        _ => Ok(Verification {
            records: count,
            problem: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(i: u64) -> AuditContext {
        AuditContext {
            request_id: format!("r{i}"),
            principal: "sa:bot".into(),
            tenant: "acme".into(),
            action: "memory.put".into(),
            at_ms: i as i64,
        }
    }

    fn chain(store: &Store, n: u64) {
        for i in 1..=n {
            let mut c = ApplyCtx::new(store);
            append(&mut c, &ctx(i), format!("memory/n/k{i}"), "ok".into()).unwrap();
            store.db().write(c.finish().unwrap()).unwrap();
        }
    }

    #[test]
    fn a_changed_or_removed_record_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 5);
        assert_eq!(
            verify(&store).unwrap(),
            Verification {
                records: 5,
                problem: None
            }
        );
        assert_eq!(
            tail(&store, 2, None)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(read(&store, 3, 10, Some("acme")).unwrap().len(), 2);
        assert!(read(&store, 0, 10, Some("other")).unwrap().is_empty());

        // Changed: a field rewritten, the stored hash kept.
        let mut r: AuditRecord = store
            .get_decoded(CF_AUDIT, &record_key(3))
            .unwrap()
            .unwrap();
        r.result = "ok, nothing to see".into();
        store
            .db()
            .put_cf(store.cf(CF_AUDIT), record_key(3), codec::encode(&r))
            .unwrap();
        let v = verify(&store).unwrap();
        assert_eq!(v.problem.unwrap().0, 3);
        // Changed with its hash recomputed: the next record's link breaks.
        r.hash = r.compute_hash();
        store
            .db()
            .put_cf(store.cf(CF_AUDIT), record_key(3), codec::encode(&r))
            .unwrap();
        let (seq, why) = verify(&store).unwrap().problem.unwrap();
        assert_eq!(seq, 4);
        assert!(why.contains("does not link"), "{why}");

        // Removed: a gap.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 5);
        store
            .db()
            .delete_cf(store.cf(CF_AUDIT), record_key(2))
            .unwrap();
        let (seq, why) = verify(&store).unwrap().problem.unwrap();
        assert_eq!(seq, 2);
        assert!(why.contains("missing"), "{why}");
        // The last one removed: the head gives it away.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        chain(&store, 5);
        store
            .db()
            .delete_cf(store.cf(CF_AUDIT), record_key(5))
            .unwrap();
        let (_, why) = verify(&store).unwrap().problem.unwrap();
        assert!(why.contains("removed"), "{why}");
    }
}
