//! The replicated state machine: applies committed entries to the state-machine column
//! families, one atomic RocksDB write per entry that also moves the applied watermark, and
//! builds and installs snapshots.
//!
//! Apply is pure: it reads only the store and the entry, so every node that applies the same
//! log holds byte-identical state. Every applied index is published on a watch channel that
//! the derived indexes (full-text search) follow.

use std::path::{Path, PathBuf};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, StorageIOError};
use rocksdb::WriteOptions;
use tokio::sync::watch;

use super::snapshot;
use super::types::{
    Entry, LogId, Machine, Response, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::store::keys::GroupId;
use crate::store::{keys, ApplyCtx, Store, StoreError, CF_SM_META};

/// Where the state machine stands; followed by derived indexes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedState {
    /// Last applied log index (0 before the first entry).
    pub index: u64,
    /// Bumped whenever a snapshot replaced the state wholesale, so followers of the applied
    /// stream know to rebuild instead of catching up entry by entry.
    pub epoch: u64,
}

const CURRENT_SNAPSHOT: &str = "current.snap";

pub struct StateMachine<M: Machine> {
    store: Store,
    group: GroupId,
    snapshot_dir: PathBuf,
    applied: watch::Sender<AppliedState>,
    incoming: Option<PathBuf>,
    machine: std::marker::PhantomData<M>,
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::new(&e),
    )
    .into()
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        openraft::AnyError::new(&e),
    )
    .into()
}

/// Reads `group`'s applied watermark and membership as stored.
pub fn read_applied(
    store: &Store,
    group: GroupId,
) -> Result<(Option<LogId>, StoredMembership), StoreError> {
    let last = store.get_decoded::<LogId>(
        CF_SM_META,
        &keys::sm_meta::key(group, keys::sm_meta::LAST_APPLIED),
    )?;
    let membership = store
        .get_decoded::<StoredMembership>(
            CF_SM_META,
            &keys::sm_meta::key(group, keys::sm_meta::MEMBERSHIP),
        )?
        .unwrap_or_default();
    Ok((last, membership))
}

impl<M: Machine> StateMachine<M> {
    /// Opens `group`'s state machine in `store`, with its snapshots in `snapshot_dir`.
    pub fn open(
        store: Store,
        group: GroupId,
        snapshot_dir: &Path,
    ) -> Result<(Self, watch::Receiver<AppliedState>), StoreError> {
        std::fs::create_dir_all(snapshot_dir)?;
        // A snapshot install a crash interrupted: finish it before anything reads the state.
        if let Some(path) = snapshot::interrupted_install(&store, group)? {
            tracing::warn!(file = %path.display(), "resuming a snapshot install that a crash interrupted");
            snapshot::install(&store, group, M::FAMILIES, &path)?;
            let current = snapshot_dir.join(CURRENT_SNAPSHOT);
            std::fs::rename(&path, &current)?;
            std::fs::File::open(snapshot_dir)?.sync_all()?;
            M::replaced(&store)?;
        }
        // Leftovers of an interrupted snapshot transfer or build.
        for entry in std::fs::read_dir(snapshot_dir)? {
            let path = entry?.path();
            if path.file_name().is_some_and(|n| n != CURRENT_SNAPSHOT) {
                if path.is_dir() {
                    let _ = std::fs::remove_dir_all(&path);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let (last, _) = read_applied(&store, group)?;
        let (tx, rx) = watch::channel(AppliedState {
            index: last.map_or(0, |l| l.index),
            epoch: 0,
        });
        Ok((
            Self {
                store,
                group,
                snapshot_dir: snapshot_dir.to_path_buf(),
                applied: tx,
                incoming: None,
                machine: std::marker::PhantomData,
            },
            rx,
        ))
    }

    /// Applies one entry atomically: all its commands and the new watermark in one write.
    fn apply_one(&self, entry: &Entry<M>) -> Result<Vec<Response<M>>, StoreError> {
        let mut ctx = ApplyCtx::new(&self.store);
        let responses = match &entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(proposal) => {
                let mut out = Vec::with_capacity(proposal.commands.len());
                for command in &proposal.commands {
                    out.push(M::apply(&mut ctx, command)?);
                }
                out
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                ctx.put(
                    CF_SM_META,
                    &keys::sm_meta::key(self.group, keys::sm_meta::MEMBERSHIP),
                    &stored,
                );
                Vec::new()
            }
        };
        ctx.put(
            CF_SM_META,
            &keys::sm_meta::key(self.group, keys::sm_meta::LAST_APPLIED),
            &entry.log_id,
        );
        // Not synced: the WAL is shared with the log, whose fsync makes this durable; until
        // then the entry is in the durable log and is re-applied after a crash.
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.store.db().write_opt(ctx.finish()?, &opts)?;
        if let EntryPayload::Normal(proposal) = &entry.payload {
            M::applied(&self.store, &proposal.commands);
        }
        Ok(responses)
    }

    fn current_snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(CURRENT_SNAPSHOT)
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig<M>> for StateMachine<M> {
    type SnapshotBuilder = SnapshotBuilder<M>;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        read_applied(&self.store, self.group).map_err(|e| sm_err(ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response<M>>>, StorageError>
    where
        I: IntoIterator<Item = Entry<M>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut last = None;
        for entry in entries {
            responses.push(
                self.apply_one(&entry)
                    .map_err(|e| sm_err(ErrorVerb::Write, e))?,
            );
            last = Some(entry.log_id.index);
        }
        if let Some(index) = last {
            self.applied.send_modify(|s| s.index = index);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            group: self.group,
            dir: self.snapshot_dir.clone(),
            machine: std::marker::PhantomData,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self
            .snapshot_dir
            .join(format!("incoming-{}.snap", uuid::Uuid::now_v7()));
        let file = tokio::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        if let Some(old) = self.incoming.replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let mut file = *snapshot;
        use tokio::io::AsyncWriteExt;
        file.flush()
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        file.sync_all()
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        drop(file);
        let path = self.incoming.take().ok_or_else(|| {
            snap_err(
                ErrorVerb::Read,
                std::io::Error::other("no snapshot is being received"),
            )
        })?;
        let store = self.store.clone();
        let group = self.group;
        let target = self.current_snapshot_path();
        let installed = tokio::task::spawn_blocking(move || -> Result<SnapshotMeta, StoreError> {
            let installed = snapshot::install(&store, group, M::FAMILIES, &path)?;
            M::replaced(&store)?;
            std::fs::rename(&path, &target)?;
            if let Some(dir) = target.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(installed)
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?
        .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        if installed.last_log_id != meta.last_log_id {
            tracing::warn!(file = ?installed.last_log_id, raft = ?meta.last_log_id, "snapshot file and raft meta disagree; raft's is used");
        }
        let index = meta.last_log_id.map_or(0, |l| l.index);
        self.applied.send_modify(|s| {
            s.index = index;
            s.epoch += 1;
        });
        crate::observe::metrics::RAFT_SNAPSHOTS_INSTALLED.inc();
        tracing::info!(snapshot = %meta.snapshot_id, index, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<M>>, StorageError> {
        let path = self.current_snapshot_path();
        if !path.exists() {
            return Ok(None);
        }
        let meta = snapshot::read_meta(&path).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

pub struct SnapshotBuilder<M> {
    store: Store,
    group: GroupId,
    dir: PathBuf,
    machine: std::marker::PhantomData<M>,
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig<M>> for SnapshotBuilder<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<M>, StorageError> {
        let store = self.store.clone();
        let group = self.group;
        let dir = self.dir.clone();
        let (meta, path) =
            tokio::task::spawn_blocking(move || -> Result<(SnapshotMeta, PathBuf), StoreError> {
                let suffix = uuid::Uuid::now_v7().simple().to_string();
                let tmp = dir.join(format!("building-{suffix}.snap"));
                let meta = snapshot::write(&store, group, M::FAMILIES, &tmp, &suffix)?;
                let target = dir.join(CURRENT_SNAPSHOT);
                std::fs::rename(&tmp, &target)?;
                std::fs::File::open(&dir)?.sync_all()?;
                Ok((meta, target))
            })
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, std::io::Error::other(e.to_string())))?
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "built snapshot");
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::types::test_machine::{Put, Puts};
    use crate::cluster::types::Proposal;
    use crate::store::CF_KV;

    fn entry(index: u64, puts: &[(&str, &str)]) -> Entry<Puts> {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                commands: puts
                    .iter()
                    .map(|(k, v)| Put {
                        key: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
            }),
        }
    }

    /// The layer replicates a machine that is not Nexus's: apply, snapshot and install know
    /// nothing of the domain.
    #[tokio::test]
    async fn replicates_any_machine_apply_snapshot_and_install() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        let (mut sm, applied) =
            StateMachine::<Puts>::open(a.clone(), 0, &dir.path().join("a-snap")).unwrap();
        let replies = sm
            .apply(vec![
                entry(1, &[("x", "1"), ("y", "2")]),
                entry(2, &[("x", "3"), ("", "refused")]),
            ])
            .await
            .unwrap();
        assert_eq!(replies[0].len(), 2);
        assert_eq!(replies[1][0].as_ref().unwrap().as_deref(), Some("1"));
        assert!(matches!(
            replies[1][1],
            Err(crate::error::NexusError::InvalidArgument { .. })
        ));
        assert_eq!(applied.borrow().index, 2);
        assert_eq!(
            a.get_decoded::<String>(CF_KV, b"x").unwrap().as_deref(),
            Some("3")
        );

        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));

        let b = Store::open(&dir.path().join("b")).unwrap();
        let (mut other, other_applied) =
            StateMachine::<Puts>::open(b.clone(), 0, &dir.path().join("b-snap")).unwrap();
        let mut incoming = other.begin_receiving_snapshot().await.unwrap();
        let mut data = *snap.snapshot;
        use tokio::io::AsyncSeekExt;
        data.seek(std::io::SeekFrom::Start(0)).await.unwrap();
        tokio::io::copy(&mut data, &mut *incoming).await.unwrap();
        other.install_snapshot(&snap.meta, incoming).await.unwrap();
        assert_eq!(*other_applied.borrow(), AppliedState { index: 2, epoch: 1 });
        assert_eq!(
            b.get_decoded::<String>(CF_KV, b"y").unwrap().as_deref(),
            Some("2")
        );
        let (last, _) = other.applied_state().await.unwrap();
        assert_eq!(last.map(|l| l.index), Some(2));
    }
}
