//! One way for a derived index (full-text, vectors, and the ones to come) to follow the
//! replicated log: a [`LogFollower`] holds the index's watermark (the last log index it
//! reflects), hands it the applied entries after it in bounded ranges, and tells it to rebuild
//! from the state machine when entry-by-entry catch-up is impossible:
//!
//! - a snapshot replaced the state wholesale (the applied state's epoch moved);
//! - the log no longer holds the entry after the watermark (compacted after a snapshot while
//!   the index was behind, or the index is older than the log).
//!
//! A rebuild reads a consistent view of the state machine ([`LogFollower::rebuild_view`]: a
//! RocksDB snapshot and the applied index it holds); once the index holds that view it calls
//! [`LogFollower::rebuilt`] with that index and follows the log from there. Until then the
//! follower keeps asking for the rebuild, so a rebuild that failed (a remote index that is
//! down) is retried, never skipped.
//!
//! The follower is synchronous, for an indexer's own thread; it waits on the applied stream
//! with [`LogFollower::wait`].

use std::marker::PhantomData;
use std::time::Duration;

use tokio::sync::watch;

use super::log_store::LogStore;
use super::state_machine::AppliedState;
use super::types::{Entry, LogId, Machine};
use crate::store::keys::GroupId;
use crate::store::{codec, keys, Store, StoreError, CF_SM_META};

/// Why the index must be rebuilt from the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildReason {
    /// A snapshot replaced the state.
    SnapshotInstalled,
    /// The log no longer holds the entry after the watermark.
    LogCompacted,
}

impl std::fmt::Display for RebuildReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RebuildReason::SnapshotInstalled => "a snapshot replaced the state",
            RebuildReason::LogCompacted => {
                "the log no longer holds the entries after the index's watermark"
            }
        })
    }
}

/// What the index does next.
pub enum Next<M: Machine> {
    /// Apply these entries (consecutive, the first right after the watermark), then
    /// [`LogFollower::advance`] to the last.
    Entries(Vec<Entry<M>>),
    /// Rebuild from [`LogFollower::rebuild_view`], then [`LogFollower::rebuilt`].
    Rebuild(RebuildReason),
    /// The index reflects everything applied.
    CaughtUp,
}

pub struct LogFollower<M: Machine> {
    store: Store,
    group: GroupId,
    applied: watch::Receiver<AppliedState>,
    watermark: u64,
    epoch: u64,
    max_entries: u64,
    rebuild: Option<RebuildReason>,
    machine: PhantomData<M>,
}

/// A consistent view of the state machine to rebuild from, and the log index it reflects.
pub struct RebuildView<'a> {
    pub snapshot: rocksdb::SnapshotWithThreadMode<'a, rocksdb::DB>,
    pub index: u64,
}

/// Entries a step hands out unless the follower is told otherwise.
const DEFAULT_MAX_ENTRIES: u64 = 1_000;

impl<M: Machine> LogFollower<M> {
    /// Follows `group`'s log in `store` from `watermark` (the last index the index holds).
    /// A snapshot installed before this call is reflected in the state the index was built
    /// from, or found by the log check. (`ClusterNode::log_follower` makes one.)
    pub fn new(
        store: Store,
        group: GroupId,
        applied: watch::Receiver<AppliedState>,
        watermark: u64,
    ) -> Self {
        let epoch = applied.borrow().epoch;
        LogFollower {
            store,
            group,
            applied,
            watermark,
            epoch,
            max_entries: DEFAULT_MAX_ENTRIES,
            rebuild: None,
            machine: PhantomData,
        }
    }

    /// At most `n` entries a step.
    pub fn with_max_entries(mut self, n: u64) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// The store whose log this follows (to read the state the entries changed).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The last log index the index holds, as the follower knows it.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The next step: entries to apply, a rebuild, or nothing yet.
    pub fn step(&mut self) -> Result<Next<M>, StoreError> {
        let state = *self.applied.borrow_and_update();
        if state.epoch != self.epoch {
            self.epoch = state.epoch;
            self.rebuild = Some(RebuildReason::SnapshotInstalled);
        }
        if let Some(reason) = self.rebuild {
            return Ok(Next::Rebuild(reason));
        }
        if state.index <= self.watermark {
            return Ok(Next::CaughtUp);
        }
        let end = state.index.min(self.watermark + self.max_entries) + 1;
        let entries = LogStore::<M>::read_range(&self.store, self.group, self.watermark + 1, end)?;
        if entries.first().map(|e| e.log_id.index) != Some(self.watermark + 1) {
            self.rebuild = Some(RebuildReason::LogCompacted);
            return Ok(Next::Rebuild(RebuildReason::LogCompacted));
        }
        Ok(Next::Entries(entries))
    }

    /// The index now holds everything up to `index`.
    pub fn advance(&mut self, index: u64) {
        self.watermark = index;
    }

    /// The view to rebuild from: a snapshot of the database and the applied index it holds.
    pub fn rebuild_view(&self) -> Result<RebuildView<'_>, StoreError> {
        let snapshot = self.store.db().snapshot();
        let applied: Option<LogId> = snapshot
            .get_cf(
                self.store.cf(CF_SM_META),
                keys::sm_meta::key(self.group, keys::sm_meta::LAST_APPLIED),
            )?
            .map(|b| codec::decode(&b))
            .transpose()?;
        Ok(RebuildView {
            snapshot,
            index: applied.map_or(0, |l| l.index),
        })
    }

    /// The index holds the view of [`rebuild_view`](Self::rebuild_view) at `index`.
    pub fn rebuilt(&mut self, index: u64) {
        self.watermark = index;
        self.rebuild = None;
    }

    /// Waits until something was applied, or `timeout` passes (on `rt`, from the indexer's
    /// own thread).
    pub fn wait(&self, rt: &tokio::runtime::Handle, timeout: Duration) {
        let mut applied = self.applied.clone();
        let _ = rt.block_on(async { tokio::time::timeout(timeout, applied.changed()).await });
    }

    /// The applied stream, for an indexer that waits on more than it (a searcher's request).
    pub fn applied(&self) -> watch::Receiver<AppliedState> {
        self.applied.clone()
    }
}

/// The commands of `entries`, in log order (blank and membership entries carry none).
pub fn commands<M: Machine>(entries: &[Entry<M>]) -> impl Iterator<Item = &M::Command> {
    entries.iter().flat_map(|entry| match &entry.payload {
        openraft::EntryPayload::Normal(proposal) => proposal.commands.as_slice(),
        _ => &[],
    })
}
