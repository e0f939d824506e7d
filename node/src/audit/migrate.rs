//! Format 5's migration: format 4's single chain re-chained per tenant.

use super::{append_at, incarnation_in, AuditContext};
use crate::store::keys::audit as keys;
use crate::store::{codec, ApplyCtx, Store, StoreError, CF_AUDIT};

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
            super::super::hash_fields(
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
