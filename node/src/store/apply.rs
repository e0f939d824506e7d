//! The write side of one state-machine step (one Raft entry, which may carry a batch of
//! commands): writes collect in one RocksDB write batch that the state machine commits
//! atomically together with its applied-index watermark, and reads see the committed state
//! plus every write made earlier in the same step (an overlay), so that the commands of a batch
//! behave exactly as if applied one by one.

//!
//! The step also keeps each tenant's usage (`usage`): every write to a metered family changes
//! the tenant's stored bytes and item count by what it adds or removes, read from the value it
//! replaces, so no command can forget to account for what it stores. A savepoint lets a
//! command be undone after it ran (a quota it would exceed), leaving the step as before it.

use std::collections::{BTreeMap, HashMap};

use rocksdb::WriteBatch;
use serde::{de::DeserializeOwned, Serialize};

use super::usage::{self, Usage};
use super::{codec, keys, Store, StoreError};

/// One write of the step, in order.
enum Write {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

type OverlayKey = (&'static str, Vec<u8>);

/// What a savepoint restores.
struct Undo {
    writes: usize,
    ranges: usize,
    /// Overlay entries as they were before their first change since the savepoint (`None`:
    /// absent from the overlay).
    overlay: Vec<(OverlayKey, Option<Option<Vec<u8>>>)>,
    usage: HashMap<String, Usage>,
}

pub struct ApplyCtx<'a> {
    store: &'a Store,
    writes: Vec<Write>,
    /// Keys written in this step: Some(value) or None (deleted).
    overlay: HashMap<OverlayKey, Option<Vec<u8>>>,
    /// Ranges deleted in this step: (family, start, end).
    deleted_ranges: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
    /// Usage of each tenant this step wrote for, as of the last write.
    usage: HashMap<String, Usage>,
    /// The same tenants' usage as stored before the step.
    usage_before: HashMap<String, Usage>,
    undo: Option<Undo>,
    /// The first error reading a replaced value (writes cannot fail; `finish` reports it).
    error: Option<StoreError>,
}

/// Marks the state of an [`ApplyCtx`] to return to with [`ApplyCtx::rollback`].
pub struct Savepoint(());

impl<'a> ApplyCtx<'a> {
    pub fn new(store: &'a Store) -> Self {
        Self {
            store,
            writes: Vec::new(),
            overlay: HashMap::new(),
            deleted_ranges: Vec::new(),
            usage: HashMap::new(),
            usage_before: HashMap::new(),
            undo: None,
            error: None,
        }
    }

    fn range_deleted(&self, cf: &str, key: &[u8]) -> bool {
        self.deleted_ranges
            .iter()
            .any(|(c, s, e)| *c == cf && key >= s.as_slice() && key < e.as_slice())
    }

    /// The store under this step (what was committed before it).
    pub fn store(&self) -> &'a Store {
        self.store
    }

    /// A value's stored bytes as this step sees it.
    pub fn get_raw_value(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_raw(cf, key)
    }

    fn get_raw(&self, cf: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.overlay.get(&(cf, key.to_vec())) {
            return Ok(v.clone());
        }
        if self.range_deleted(cf, key) {
            return Ok(None);
        }
        self.store.get(cf, key)
    }

    pub fn get_decoded<T: DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get_raw(cf, key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Sets an overlay entry, remembering its previous state under a savepoint.
    fn set_overlay(&mut self, cf: &'static str, key: Vec<u8>, value: Option<Vec<u8>>) {
        let previous = self.overlay.insert((cf, key.clone()), value);
        if let Some(undo) = self.undo.as_mut() {
            undo.overlay.push(((cf, key), previous));
        }
    }

    /// The tenant's usage as this step sees it.
    pub fn usage(&mut self, tenant: &str) -> Result<Usage, StoreError> {
        if let Some(u) = self.usage.get(tenant) {
            return Ok(*u);
        }
        let u = match self.usage_before.get(tenant) {
            Some(u) => *u,
            None => usage::read(self.store, tenant)?,
        };
        self.usage_before.insert(tenant.to_string(), u);
        self.usage.insert(tenant.to_string(), u);
        Ok(u)
    }

    /// Changes the usage of the key's tenant by replacing `old` with `new` at `key` of `cf`.
    fn meter(&mut self, cf: &'static str, key: &[u8], old: Option<usize>, new: Option<usize>) {
        let Some(item) = usage::metered(cf) else {
            return;
        };
        let Some(tenant) = keys::parse_tenant(key) else {
            return;
        };
        let mut u = match self.usage(&tenant) {
            Ok(u) => u,
            Err(e) => {
                self.error.get_or_insert(e);
                return;
            }
        };
        let size = |len: Option<usize>| len.map_or(0, |l| (key.len() + l) as u64);
        u.bytes = (u.bytes + size(new)).saturating_sub(size(old));
        if item {
            match (old.is_some(), new.is_some()) {
                (false, true) => u.items += 1,
                (true, false) => u.items = u.items.saturating_sub(1),
                _ => {}
            }
        }
        self.usage.insert(tenant, u);
    }

    fn old_len(&mut self, cf: &'static str, key: &[u8]) -> Option<usize> {
        usage::metered(cf)?;
        match self.get_raw(cf, key) {
            Ok(v) => v.map(|v| v.len()),
            Err(e) => {
                self.error.get_or_insert(e);
                None
            }
        }
    }

    pub fn put<T: Serialize + ?Sized>(&mut self, cf: &'static str, key: &[u8], value: &T) {
        self.put_encoded(cf, key, codec::encode(value));
    }

    /// Like [`put`](Self::put), with the value already encoded.
    pub fn put_encoded(&mut self, cf: &'static str, key: &[u8], bytes: Vec<u8>) {
        let old = self.old_len(cf, key);
        self.meter(cf, key, old, Some(bytes.len()));
        self.writes
            .push(Write::Put(cf, key.to_vec(), bytes.clone()));
        self.set_overlay(cf, key.to_vec(), Some(bytes));
    }

    pub fn delete(&mut self, cf: &'static str, key: &[u8]) {
        let old = self.old_len(cf, key);
        self.meter(cf, key, old, None);
        self.writes.push(Write::Delete(cf, key.to_vec()));
        self.set_overlay(cf, key.to_vec(), None);
    }

    /// Deletes every key of `cf` that starts with `prefix`.
    pub fn delete_prefix(&mut self, cf: &'static str, prefix: &[u8]) {
        if usage::metered(cf).is_some() {
            if keys::parse_tenant(prefix).is_some_and(|t| keys::tenant_prefix(&t) == prefix) {
                // The whole tenant goes: so does its usage.
                let tenant = keys::parse_tenant(prefix).expect("checked");
                if let Err(e) = self.usage(&tenant) {
                    self.error.get_or_insert(e);
                }
                self.usage.insert(tenant, Usage::default());
            } else {
                match self.scan_prefix(cf, prefix) {
                    Ok(gone) => {
                        for (k, v) in gone {
                            self.meter(cf, &k, Some(v.len()), None);
                        }
                    }
                    Err(e) => {
                        self.error.get_or_insert(e);
                    }
                }
            }
        }
        let end = prefix_end(prefix);
        self.writes
            .push(Write::DeleteRange(cf, prefix.to_vec(), end.clone()));
        let cleared: Vec<OverlayKey> = self
            .overlay
            .iter()
            .filter(|((c, k), v)| *c == cf && k.starts_with(prefix) && v.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for (c, k) in cleared {
            self.set_overlay(c, k, None);
        }
        self.deleted_ranges.push((cf, prefix.to_vec(), end));
    }

    /// Every key-value pair of `cf` under `prefix` as this step sees it, in key order.
    pub fn scan_prefix(
        &self,
        cf: &'static str,
        prefix: &[u8],
    ) -> Result<super::KeyValues, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (k, v) in self.store.scan_prefix(cf, prefix, prefix, usize::MAX)? {
            if !self.range_deleted(cf, &k) {
                merged.insert(k, v);
            }
        }
        for ((c, k), v) in &self.overlay {
            if *c == cf && k.starts_with(prefix) {
                match v {
                    Some(v) => merged.insert(k.clone(), v.clone()),
                    None => merged.remove(k),
                };
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Marks the current state; [`rollback`](Self::rollback) returns to it. One at a time.
    pub fn savepoint(&mut self) -> Savepoint {
        assert!(self.undo.is_none(), "one savepoint at a time");
        self.undo = Some(Undo {
            writes: self.writes.len(),
            ranges: self.deleted_ranges.len(),
            overlay: Vec::new(),
            usage: self.usage.clone(),
        });
        Savepoint(())
    }

    /// Keeps everything written since the savepoint.
    pub fn release(&mut self, _: Savepoint) {
        self.undo = None;
    }

    /// Undoes everything written since the savepoint.
    pub fn rollback(&mut self, _: Savepoint) {
        let undo = self.undo.take().expect("a savepoint is set");
        self.writes.truncate(undo.writes);
        self.deleted_ranges.truncate(undo.ranges);
        for (key, previous) in undo.overlay.into_iter().rev() {
            match previous {
                Some(v) => self.overlay.insert(key, v),
                None => self.overlay.remove(&key),
            };
        }
        self.usage = undo.usage;
    }

    /// The step's writes as one batch, with the usage of every tenant it wrote for.
    pub fn finish(mut self) -> Result<WriteBatch, StoreError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let mut batch = WriteBatch::default();
        for w in &self.writes {
            match w {
                Write::Put(cf, k, v) => batch.put_cf(self.store.cf(cf), k, v),
                Write::Delete(cf, k) => batch.delete_cf(self.store.cf(cf), k),
                Write::DeleteRange(cf, s, e) => batch.delete_range_cf(self.store.cf(cf), s, e),
            }
        }
        for (tenant, u) in &self.usage {
            if self.usage_before.get(tenant) != Some(u) {
                usage::write(&mut batch, self.store, tenant, u);
            }
        }
        Ok(batch)
    }
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    keys::KEYSPACE_END.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CF_KV, CF_MESSAGES};

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
    }

    #[test]
    fn reads_see_earlier_writes_of_the_same_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut setup = ApplyCtx::new(&store);
        setup.put(CF_MESSAGES, b"p/1", &1u32);
        setup.put(CF_MESSAGES, b"p/2", &2u32);
        setup.put(CF_KV, b"k", &"old");
        store.db().write(setup.finish().unwrap()).unwrap();

        let mut ctx = ApplyCtx::new(&store);
        ctx.put(CF_KV, b"k", &"new");
        assert_eq!(
            ctx.get_decoded::<String>(CF_KV, b"k").unwrap().as_deref(),
            Some("new")
        );
        ctx.put(CF_MESSAGES, b"p/3", &3u32);
        assert_eq!(ctx.scan_prefix(CF_MESSAGES, b"p/").unwrap().len(), 3);
        ctx.delete_prefix(CF_MESSAGES, b"p/");
        assert!(ctx.scan_prefix(CF_MESSAGES, b"p/").unwrap().is_empty());
        assert_eq!(ctx.get_decoded::<u32>(CF_MESSAGES, b"p/1").unwrap(), None);
        ctx.put(CF_MESSAGES, b"p/9", &9u32);
        assert_eq!(
            ctx.get_decoded::<u32>(CF_MESSAGES, b"p/9").unwrap(),
            Some(9)
        );
        ctx.delete(CF_KV, b"k");
        assert_eq!(ctx.get_decoded::<String>(CF_KV, b"k").unwrap(), None);
        // Nothing reached the store before the batch is written, and then all of it did.
        assert_eq!(
            store.get_decoded::<String>(CF_KV, b"k").unwrap().as_deref(),
            Some("old")
        );
        store.db().write(ctx.finish().unwrap()).unwrap();
        assert_eq!(store.get_decoded::<String>(CF_KV, b"k").unwrap(), None);
        let left = store.scan_prefix(CF_MESSAGES, b"p/", b"p/", 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, b"p/9".to_vec());
    }

    #[test]
    fn usage_follows_every_write_and_a_rollback_undoes_a_command() {
        use crate::store::{usage, CF_CONVERSATIONS, CF_IAM};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kv = |k: &str| keys::kv_key("t", "ns", k);
        let mut ctx = ApplyCtx::new(&store);
        ctx.put(CF_KV, &kv("a"), "1234");
        ctx.put(CF_KV, &kv("b"), "1");
        ctx.put(CF_MESSAGES, &keys::message_key("t", "c", 1), "hello");
        ctx.put(CF_IAM, &keys::tenant_prefix("t"), "not metered");
        ctx.put(CF_KV, &keys::kv_key("u", "ns", "a"), "x");
        let t = ctx.usage("t").unwrap();
        assert_eq!(t.items, 3);
        store.db().write(ctx.finish().unwrap()).unwrap();
        assert_eq!(usage::read(&store, "t").unwrap(), t);
        assert_eq!(usage::read(&store, "u").unwrap().items, 1);

        let mut ctx = ApplyCtx::new(&store);
        // Replacing a value changes bytes, not items; deleting removes both.
        ctx.put(CF_KV, &kv("a"), "12");
        let after = ctx.usage("t").unwrap();
        assert_eq!((after.items, after.bytes), (3, t.bytes - 2));
        let sp = ctx.savepoint();
        ctx.put(CF_KV, &kv("c"), "new");
        ctx.delete(CF_KV, &kv("a"));
        ctx.delete_prefix(CF_MESSAGES, &keys::message_prefix("t", "c"));
        assert_eq!(ctx.usage("t").unwrap().items, 2);
        assert!(ctx
            .get_decoded::<String>(CF_KV, &kv("a"))
            .unwrap()
            .is_none());
        ctx.rollback(sp);
        // As before the savepoint: the overlay, the pending writes and the usage.
        assert_eq!(ctx.usage("t").unwrap(), after);
        assert_eq!(
            ctx.get_decoded::<String>(CF_KV, &kv("a"))
                .unwrap()
                .as_deref(),
            Some("12")
        );
        assert!(ctx
            .get_decoded::<String>(CF_KV, &kv("c"))
            .unwrap()
            .is_none());
        assert_eq!(
            ctx.scan_prefix(CF_MESSAGES, &keys::message_prefix("t", "c"))
                .unwrap()
                .len(),
            1
        );
        let sp = ctx.savepoint();
        ctx.put(CF_CONVERSATIONS, &keys::conversation_key("t", "c"), "conv");
        ctx.release(sp);
        store.db().write(ctx.finish().unwrap()).unwrap();
        assert!(store.get(CF_KV, &kv("c")).unwrap().is_none(), "rolled back");
        let kept = usage::read(&store, "t").unwrap();
        assert_eq!(kept.items, 4);

        // The incremental figures are what a scan computes.
        store
            .db()
            .delete_range_cf(
                store.cf(crate::store::CF_USAGE),
                [0u8].as_slice(),
                keys::KEYSPACE_END,
            )
            .unwrap();
        assert!(usage::missing(&store).unwrap());
        assert_eq!(usage::recompute(&store).unwrap(), 2);
        assert_eq!(usage::read(&store, "t").unwrap(), kept);
        assert!(!usage::missing(&store).unwrap());

        // A whole tenant's range deleted: its usage goes.
        let mut ctx = ApplyCtx::new(&store);
        for cf in crate::store::SM_FAMILIES {
            ctx.delete_prefix(cf, &keys::tenant_prefix("t"));
        }
        store.db().write(ctx.finish().unwrap()).unwrap();
        assert_eq!(usage::read(&store, "t").unwrap(), usage::Usage::default());
        assert_eq!(usage::read(&store, "u").unwrap().items, 1);
    }
}
