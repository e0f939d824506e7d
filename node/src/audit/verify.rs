//! Verifying the audit log's chains: hashes, links, places and heads.

use super::{chains, head, AuditRecord, Chain, Head};
use crate::store::keys::audit as keys;
use crate::store::{codec, Store, StoreError, CF_AUDIT};

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
