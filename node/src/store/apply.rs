//! The write side of one state-machine step (one Raft entry, which may carry a batch of
//! commands): writes collect in one RocksDB write batch that the state machine commits
//! atomically together with its applied-index watermark, and reads see the committed state
//! plus every write made earlier in the same step (an overlay), so that the commands of a batch
//! behave exactly as if applied one by one.

use std::collections::{BTreeMap, HashMap};

use rocksdb::WriteBatch;
use serde::{de::DeserializeOwned, Serialize};

use super::{codec, keys, Store, StoreError};

pub struct ApplyCtx<'a> {
    store: &'a Store,
    batch: WriteBatch,
    /// Keys written in this step: Some(value) or None (deleted).
    overlay: HashMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
    /// Ranges deleted in this step: (family, start, end).
    deleted_ranges: Vec<(&'static str, Vec<u8>, Vec<u8>)>,
}

impl<'a> ApplyCtx<'a> {
    pub fn new(store: &'a Store) -> Self {
        Self {
            store,
            batch: WriteBatch::default(),
            overlay: HashMap::new(),
            deleted_ranges: Vec::new(),
        }
    }

    fn range_deleted(&self, cf: &str, key: &[u8]) -> bool {
        self.deleted_ranges
            .iter()
            .any(|(c, s, e)| *c == cf && key >= s.as_slice() && key < e.as_slice())
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

    pub fn put<T: Serialize + ?Sized>(&mut self, cf: &'static str, key: &[u8], value: &T) {
        let bytes = codec::encode(value);
        self.batch.put_cf(self.store.cf(cf), key, &bytes);
        self.overlay.insert((cf, key.to_vec()), Some(bytes));
    }

    pub fn delete(&mut self, cf: &'static str, key: &[u8]) {
        self.batch.delete_cf(self.store.cf(cf), key);
        self.overlay.insert((cf, key.to_vec()), None);
    }

    /// Deletes every key of `cf` that starts with `prefix`.
    pub fn delete_prefix(&mut self, cf: &'static str, prefix: &[u8]) {
        let end = prefix_end(prefix);
        self.batch
            .delete_range_cf(self.store.cf(cf), prefix, end.as_slice());
        for ((c, k), v) in self.overlay.iter_mut() {
            if *c == cf && k.starts_with(prefix) {
                *v = None;
            }
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

    pub fn into_batch(self) -> WriteBatch {
        self.batch
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
        store.db().write(setup.into_batch()).unwrap();

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
        store.db().write(ctx.into_batch()).unwrap();
        assert_eq!(store.get_decoded::<String>(CF_KV, b"k").unwrap(), None);
        let left = store.scan_prefix(CF_MESSAGES, b"p/", b"p/", 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, b"p/9".to_vec());
    }
}
