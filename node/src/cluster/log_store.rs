//! The Raft log in RocksDB (`raft_log`, `raft_meta`), with group commit.
//!
//! `append` writes the entries to RocksDB (memtable + WAL, not yet synced) so they are readable
//! at once, and hands the flush callback to the WAL-sync thread. That thread takes every
//! callback that is waiting, fsyncs the WAL once and completes them all: while one fsync runs,
//! the appends of every concurrent client queue up behind it and share the next one. Writes
//! reach the WAL in call order and an fsync covers everything written before it, so callbacks
//! complete in order and never claim more than is durable.

// openraft's StorageError is large by design; every storage method returns it.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use super::types::{Entry, LogId, Machine, StorageError, TypeConfig, Vote};
use crate::observe::metrics;
use crate::store::keys::GroupId;
use crate::store::{codec, keys, Store, CF_RAFT_LOG, CF_RAFT_META};

type Flushed<M> = LogFlushed<TypeConfig<M>>;

pub struct LogStore<M: Machine> {
    store: Store,
    group: GroupId,
    syncer: mpsc::Sender<Flushed<M>>,
    /// Last committed index that openraft reported, for status and metrics.
    committed: Arc<AtomicU64>,
}

fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl<M: Machine> Clone for LogStore<M> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            group: self.group,
            syncer: self.syncer.clone(),
            committed: self.committed.clone(),
        }
    }
}

impl<M: Machine> LogStore<M> {
    /// The log of `group` in `store`.
    pub fn new(store: Store, group: GroupId) -> Self {
        let (tx, rx) = mpsc::channel::<Flushed<M>>();
        let sync_store = store.clone();
        std::thread::Builder::new()
            .name("nexus-wal-sync".into())
            .spawn(move || wal_sync_loop(sync_store, rx))
            .expect("spawning the WAL sync thread");
        Self {
            store,
            group,
            syncer: tx,
            committed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The commit index as last reported by openraft (shared, updated live).
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        self.store
            .get_decoded(CF_RAFT_META, &keys::raft_meta::key(self.group, key))
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.store.db().write_opt(batch, &opts).map_err(write_err)
    }

    /// Entries of `group` in `[start, end)` as stored, for readers outside openraft (the
    /// log follower).
    pub fn read_range(
        store: &Store,
        group: GroupId,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<M>>, crate::store::StoreError> {
        let mut out = Vec::new();
        let iter = store.db().iterator_cf(
            store.cf(CF_RAFT_LOG),
            IteratorMode::From(&keys::log_key(group, start), rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            let (g, index) = keys::parse_log_key(&k).ok_or_else(|| {
                crate::store::StoreError::Corrupt("raft log key is not 12 bytes".into())
            })?;
            if g != group || index >= end {
                break;
            }
            out.push(codec::decode(&v)?);
        }
        Ok(out)
    }
}

/// Completes flush callbacks after one fsync of the WAL per batch of waiting callbacks.
fn wal_sync_loop<M: Machine>(store: Store, rx: mpsc::Receiver<Flushed<M>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let started = Instant::now();
        let result = store.db().flush_wal(true);
        metrics::WAL_SYNC_SECONDS.observe(started.elapsed().as_secs_f64());
        metrics::WAL_SYNCS.inc();
        for callback in waiting {
            let r = result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string()));
            callback.log_io_completed(r);
        }
    }
}

impl<M: Machine> RaftLogReader<TypeConfig<M>> for LogStore<M> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<M>>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        Self::read_range(&self.store, self.group, start, end).map_err(read_err)
    }
}

impl<M: Machine> RaftLogStorage<TypeConfig<M>> for LogStore<M> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig<M>>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(keys::raft_meta::LAST_PURGED)?;
        let end = keys::log_key(self.group, u64::MAX);
        let mut iter = self.store.db().iterator_cf(
            self.store.cf(CF_RAFT_LOG),
            IteratorMode::From(&end, rocksdb::Direction::Reverse),
        );
        let last = match iter.next() {
            Some(item) => {
                let (k, v) = item.map_err(read_err)?;
                match keys::parse_log_key(&k) {
                    Some((g, _)) if g == self.group => {
                        let entry: Entry<M> = codec::decode(&v).map_err(read_err)?;
                        Some(entry.log_id)
                    }
                    _ => last_purged,
                }
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.store.cf(CF_RAFT_META),
            keys::raft_meta::key(self.group, keys::raft_meta::VOTE),
            codec::encode(vote),
        );
        // A vote must be durable before it is acted on.
        self.write(batch, true).map_err(|_| {
            io_err(
                ErrorSubject::Vote,
                ErrorVerb::Write,
                std::io::Error::other("saving the vote"),
            )
        })
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(keys::raft_meta::VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = &committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        // Not synced: it only lets a restarted node re-apply sooner; the log itself is durable.
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.store.cf(CF_RAFT_META),
            keys::raft_meta::key(self.group, keys::raft_meta::COMMITTED),
            codec::encode(&committed),
        );
        self.write(batch, false)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self
            .get_meta::<Option<LogId>>(keys::raft_meta::COMMITTED)?
            .flatten();
        if let Some(c) = &committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: Flushed<M>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.store.cf(CF_RAFT_LOG);
        let mut batch = WriteBatch::default();
        let mut n = 0u64;
        for entry in entries {
            batch.put_cf(
                cf,
                keys::log_key(self.group, entry.log_id.index),
                codec::encode(&entry),
            );
            n += 1;
        }
        self.write(batch, false)?;
        metrics::LOG_ENTRIES_APPENDED.inc_by(n);
        if let Err(mpsc::SendError(callback)) = self.syncer.send(callback) {
            callback.log_io_completed(Err(std::io::Error::other(
                "the WAL sync thread has stopped",
            )));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        let cf = self.store.cf(CF_RAFT_LOG);
        batch.delete_range_cf(
            cf,
            keys::log_key(self.group, log_id.index),
            keys::log_key(self.group, u64::MAX),
        );
        batch.delete_cf(cf, keys::log_key(self.group, u64::MAX));
        self.write(batch, false)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.store.cf(CF_RAFT_META),
            keys::raft_meta::key(self.group, keys::raft_meta::LAST_PURGED),
            codec::encode(&log_id),
        );
        batch.delete_range_cf(
            self.store.cf(CF_RAFT_LOG),
            keys::log_key(self.group, 0),
            keys::log_key(self.group, log_id.index + 1),
        );
        self.write(batch, false)
    }
}
