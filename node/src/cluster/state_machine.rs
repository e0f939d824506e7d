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
    Command, Entry, LogId, Op, Reply, Response, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::audit;
use crate::error::NexusError;
use crate::iam;
use crate::memory::{conversations, kv, semantic};
use crate::secrets;
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

pub struct StateMachine {
    store: Store,
    snapshot_dir: PathBuf,
    applied: watch::Sender<AppliedState>,
    incoming: Option<PathBuf>,
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

/// Reads the applied watermark and membership as stored.
pub fn read_applied(store: &Store) -> Result<(Option<LogId>, StoredMembership), StoreError> {
    let last = store.get_decoded::<LogId>(CF_SM_META, keys::sm_meta::LAST_APPLIED)?;
    let membership = store
        .get_decoded::<StoredMembership>(CF_SM_META, keys::sm_meta::MEMBERSHIP)?
        .unwrap_or_default();
    Ok((last, membership))
}

impl StateMachine {
    pub fn open(
        store: Store,
        snapshot_dir: &Path,
    ) -> Result<(Self, watch::Receiver<AppliedState>), StoreError> {
        std::fs::create_dir_all(snapshot_dir)?;
        // A snapshot install a crash interrupted: finish it before anything reads the state.
        if let Some(path) = snapshot::interrupted_install(&store)? {
            tracing::warn!(file = %path.display(), "resuming a snapshot install that a crash interrupted");
            snapshot::install(&store, &path)?;
            let current = snapshot_dir.join(CURRENT_SNAPSHOT);
            std::fs::rename(&path, &current)?;
            std::fs::File::open(snapshot_dir)?.sync_all()?;
            store.identities_changed();
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
        let (last, _) = read_applied(&store)?;
        let (tx, rx) = watch::channel(AppliedState {
            index: last.map_or(0, |l| l.index),
            epoch: 0,
        });
        Ok((
            Self {
                store,
                snapshot_dir: snapshot_dir.to_path_buf(),
                applied: tx,
                incoming: None,
            },
            rx,
        ))
    }

    /// Applies one entry atomically: all its commands and the new watermark in one write.
    fn apply_one(&self, entry: &Entry) -> Result<Vec<Response>, StoreError> {
        let mut ctx = ApplyCtx::new(&self.store);
        let responses = match &entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(proposal) => {
                let mut out = Vec::with_capacity(proposal.commands.len());
                for Command { tenant, op } in &proposal.commands {
                    out.push(apply_op(&mut ctx, tenant, op)?);
                }
                out
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                ctx.put(CF_SM_META, keys::sm_meta::MEMBERSHIP, &stored);
                Vec::new()
            }
        };
        ctx.put(CF_SM_META, keys::sm_meta::LAST_APPLIED, &entry.log_id);
        // Not synced: the WAL is shared with the log, whose fsync makes this durable; until
        // then the entry is in the durable log and is re-applied after a crash.
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.store.db().write_opt(ctx.finish()?, &opts)?;
        if let EntryPayload::Normal(proposal) = &entry.payload {
            if proposal
                .commands
                .iter()
                .any(|c| matches!(c.op.inner(), Op::Iam(_)))
            {
                self.store.identities_changed();
            }
        }
        Ok(responses)
    }

    fn current_snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(CURRENT_SNAPSHOT)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        read_applied(&self.store).map_err(|e| sm_err(ErrorVerb::Read, e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
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
            dir: self.snapshot_dir.clone(),
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
        let target = self.current_snapshot_path();
        let installed = tokio::task::spawn_blocking(move || -> Result<SnapshotMeta, StoreError> {
            let installed = snapshot::install(&store, &path)?;
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
        self.store.identities_changed();
        let index = meta.last_log_id.map_or(0, |l| l.index);
        self.applied.send_modify(|s| {
            s.index = index;
            s.epoch += 1;
        });
        crate::observe::metrics::RAFT_SNAPSHOTS_INSTALLED.inc();
        tracing::info!(snapshot = %meta.snapshot_id, index, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
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

pub struct SnapshotBuilder {
    store: Store,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let store = self.store.clone();
        let dir = self.dir.clone();
        let (meta, path) =
            tokio::task::spawn_blocking(move || -> Result<(SnapshotMeta, PathBuf), StoreError> {
                let suffix = uuid::Uuid::now_v7().simple().to_string();
                let tmp = dir.join(format!("building-{suffix}.snap"));
                let meta = snapshot::write(&store, &tmp, &suffix)?;
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

/// Applies one command in this step: its change and, when audited, its audit record.
fn apply_op(ctx: &mut ApplyCtx<'_>, tenant: &str, op: &Op) -> Result<Response, StoreError> {
    match op {
        Op::Audited { context, op } => {
            let response = apply_op(ctx, tenant, op)?;
            let mut resource = op.resource(tenant);
            if tenant != context.tenant {
                resource = format!("{resource} (tenant {tenant})");
            }
            audit::append(ctx, context, resource, audit::result_text(&response))?;
            return Ok(response);
        }
        Op::Audit(r) => {
            audit::append(ctx, &r.context, r.resource.clone(), r.result.clone())?;
            return Ok(Ok(Reply::Audited));
        }
        _ => {}
    }
    // A tenant deleted while a request was in flight takes no new data.
    if !matches!(op, Op::Iam(_)) && !iam::tenant_exists_in(ctx, tenant)? {
        return Ok(Err(NexusError::NotFound(format!(
            "tenant {tenant} not found"
        ))));
    }
    // Data stays within the tenant's stored items and bytes, or is undone. Not limited:
    // identities, and re-wrapping data keys (a master-key rotation must reach every tenant).
    let limits = match op {
        Op::Iam(_) | Op::Secret(crate::secrets::SecretOp::Rewrap { .. }) => None,
        _ => iam::limits_in(ctx, tenant)?.filter(|l| l.max_items > 0 || l.max_bytes > 0),
    };
    let Some(limits) = limits else {
        return apply_data(ctx, tenant, op);
    };
    let before = ctx.usage(tenant)?;
    let savepoint = ctx.savepoint();
    let response = apply_data(ctx, tenant, op)?;
    let after = ctx.usage(tenant)?;
    let over = |limit: &str, max: u64, before: u64, after: u64, unit: &str| {
        (max > 0 && after > before && after > max).then(|| NexusError::ResourceExhausted {
            limit: limit.to_string(),
            message: format!(
                "tenant {tenant} would store {after} {unit}, over its limit of {max} \
                 (now {before}); delete some or raise {limit}"
            ),
        })
    };
    let refused = over(
        "quotas.max_items",
        limits.max_items,
        before.items,
        after.items,
        "items",
    )
    .or_else(|| {
        over(
            "quotas.max_bytes",
            limits.max_bytes,
            before.bytes,
            after.bytes,
            "bytes",
        )
    });
    match refused {
        Some(e) if response.is_ok() => {
            ctx.rollback(savepoint);
            Ok(Err(e))
        }
        _ => {
            ctx.release(savepoint);
            Ok(response)
        }
    }
}

fn apply_data(ctx: &mut ApplyCtx<'_>, tenant: &str, op: &Op) -> Result<Response, StoreError> {
    Ok(match op {
        Op::Kv(op) => kv::apply(ctx, tenant, op)?.map(Reply::Kv),
        Op::Conversation(op) => conversations::apply(ctx, tenant, op)?.map(Reply::Conversation),
        Op::Semantic(op) => semantic::apply(ctx, tenant, op)?.map(Reply::Semantic),
        Op::Iam(op) => iam::apply(ctx, tenant, op)?.map(Reply::Iam),
        Op::Secret(op) => secrets::apply(ctx, tenant, op)?.map(Reply::Secret),
        Op::Audited { .. } | Op::Audit(_) => unreachable!("handled above"),
    })
}
