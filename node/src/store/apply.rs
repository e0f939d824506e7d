//! The write side of one state-machine step: reads see the committed state, writes collect in
//! one RocksDB write batch that the state machine commits atomically together with its
//! applied-index watermark.

use rocksdb::WriteBatch;
use serde::{de::DeserializeOwned, Serialize};

use super::{codec, keys, Store, StoreError};

pub struct ApplyCtx<'a> {
    store: &'a Store,
    batch: WriteBatch,
}

impl<'a> ApplyCtx<'a> {
    pub fn new(store: &'a Store) -> Self {
        Self {
            store,
            batch: WriteBatch::default(),
        }
    }

    pub fn store(&self) -> &Store {
        self.store
    }

    pub fn get_decoded<T: DeserializeOwned>(
        &self,
        cf: &str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.store.get_decoded(cf, key)
    }

    pub fn put<T: Serialize + ?Sized>(&mut self, cf: &str, key: &[u8], value: &T) {
        self.batch
            .put_cf(self.store.cf(cf), key, codec::encode(value));
    }

    pub fn delete(&mut self, cf: &str, key: &[u8]) {
        self.batch.delete_cf(self.store.cf(cf), key);
    }

    /// Deletes every key of `cf` that starts with `prefix`.
    pub fn delete_prefix(&mut self, cf: &str, prefix: &[u8]) {
        let end = prefix_end(prefix);
        self.batch
            .delete_range_cf(self.store.cf(cf), prefix, end.as_slice());
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
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
    }
}
