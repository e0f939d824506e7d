//! RocksDB layout of a node: one database, one column family per concern.
//!
//! The Raft log and vote live in `raft_log` / `raft_meta`; everything the state machine owns
//! lives in the `SM_FAMILIES`, whose keys begin with the tenant (see [`keys`]), so a tenant's
//! data is one contiguous range per family. Values are encoded with [`codec`] (a format byte,
//! then postcard).
//!
//! Durability: the Raft log store writes with the WAL and fsyncs it before it acknowledges an
//! append (group commit, see `cluster::log_store`). State-machine writes share that WAL
//! without syncing it themselves: RocksDB recovers the WAL as a prefix, so after a crash the
//! state machine is at some applied index no later than the durable log, and openraft
//! re-applies the rest from the log.

pub mod apply;
pub mod codec;
pub mod format;
pub mod keys;
pub mod usage;

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

pub use apply::ApplyCtx;

/// Key-value pairs as read from a column family, in key order.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// Raft log entries, keyed by index (u64 big-endian).
pub const CF_RAFT_LOG: &str = "raft_log";
/// Raft vote, committed log id, last purged log id.
pub const CF_RAFT_META: &str = "raft_meta";
/// State-machine metadata: last applied log id and membership.
pub const CF_SM_META: &str = "sm_meta";
/// Key-value memories.
pub const CF_KV: &str = "kv";
/// Conversation records.
pub const CF_CONVERSATIONS: &str = "conversations";
/// Conversation messages, keyed by conversation and sequence number.
pub const CF_MESSAGES: &str = "messages";
/// Message id -> (conversation, seq).
pub const CF_MESSAGE_IDS: &str = "message_ids";
/// Expiry index of memories with a TTL: tenant, expiry time, namespace, key.
pub const CF_TTL: &str = "ttl";
/// Semantic memories (text, metadata, embedding), keyed by tenant and sequence number.
pub const CF_SEMANTIC: &str = "semantic";
/// Semantic memory id -> sequence number; the tenant prefix alone holds the next number.
pub const CF_SEMANTIC_IDS: &str = "semantic_ids";
/// Conversation message vectors, keyed by tenant and vector number (drawn from the same
/// per-tenant counter as semantic memories, so one number names one vector of a tenant).
pub const CF_MESSAGE_VECTORS: &str = "message_vectors";
/// Message id -> vector number.
pub const CF_MESSAGE_VECTOR_IDS: &str = "message_vector_ids";
/// Tenants, API keys, custom roles and role bindings, keyed by tenant (see `iam`).
pub const CF_IAM: &str = "iam";
/// API key id -> tenant: the one state-machine family not keyed by tenant.
pub const CF_API_KEY_IDS: &str = "api_key_ids";
/// Secrets (sealed) and each tenant's wrapped data key (see `secrets`).
pub const CF_SECRETS: &str = "secrets";
/// The audit log: one hash chain per tenant and incarnation (see `audit`).
pub const CF_AUDIT: &str = "audit";
/// Each tenant's stored items and bytes (see [`usage`]), keyed by the tenant prefix.
pub const CF_USAGE: &str = "usage";
/// Each tenant's registered tools and `http.request` policy (see `tools`).
pub const CF_TOOLS: &str = "tools";
/// Each tenant's schedules and their runs (see `schedules`).
pub const CF_SCHEDULES: &str = "schedules";
/// Each tenant's events (see `events`).
pub const CF_EVENTS: &str = "events";
/// Each tenant's workflow definitions and runs (see `workflows`).
pub const CF_WORKFLOWS: &str = "workflows";
/// Each tenant's triggers, webhooks and their deliveries (see `hooks`).
pub const CF_HOOKS: &str = "hooks";

/// The families that make up the replicated state machine, and so a snapshot. The order is
/// part of the snapshot format: a family is written as its index in this list.
pub const SM_FAMILIES: &[&str] = &[
    CF_SM_META,
    CF_KV,
    CF_CONVERSATIONS,
    CF_MESSAGES,
    CF_MESSAGE_IDS,
    CF_TTL,
    CF_SEMANTIC,
    CF_SEMANTIC_IDS,
    CF_MESSAGE_VECTORS,
    CF_MESSAGE_VECTOR_IDS,
    CF_IAM,
    CF_API_KEY_IDS,
    CF_SECRETS,
    CF_AUDIT,
    CF_USAGE,
    CF_TOOLS,
    CF_SCHEDULES,
    CF_EVENTS,
    CF_WORKFLOWS,
    CF_HOOKS,
];

const ALL_FAMILIES: &[&str] = &[
    CF_RAFT_LOG,
    CF_RAFT_META,
    CF_SM_META,
    CF_KV,
    CF_CONVERSATIONS,
    CF_MESSAGES,
    CF_MESSAGE_IDS,
    CF_TTL,
    CF_SEMANTIC,
    CF_SEMANTIC_IDS,
    CF_MESSAGE_VECTORS,
    CF_MESSAGE_VECTOR_IDS,
    CF_IAM,
    CF_API_KEY_IDS,
    CF_SECRETS,
    CF_AUDIT,
    CF_USAGE,
    CF_TOOLS,
    CF_SCHEDULES,
    CF_EVENTS,
    CF_WORKFLOWS,
    CF_HOOKS,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("decoding a stored value: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Corrupt(String),
}

/// Runs `f` (RocksDB reads and scans, which block on the disk) on tokio's blocking pool, so
/// that a long scan (a list page, the audit chain) does not hold up an async worker. Point
/// reads stay inline: they hit the block cache, and the hand-off costs more than they do.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        E::from(StoreError::Io(std::io::Error::other(format!(
            "a read task failed: {e}"
        ))))
    })?
}

/// The node's RocksDB database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    /// Bumped by the state machine after it applies any identity change (and after a
    /// snapshot install), so that caches of identities (`auth`) know when to look again.
    identity_generation: Arc<std::sync::atomic::AtomicU64>,
    /// What the state machine changed, for watchers on this node ([`Changed`]).
    changes: tokio::sync::broadcast::Sender<Changed>,
}

/// A change the state machine applied (or a mounted server reported), for what watches it on
/// this node: an MCP client's list-changed subscription, say. Best effort and in memory: a
/// watcher that falls more than [`CHANGES_BACKLOG`] behind gets `Lagged` and should take it
/// as "everything changed".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// What changed: `tools` (a tenant's tool registry or mounts, or a mounted server's list).
    pub topic: &'static str,
    /// Whose; None for every tenant (a snapshot replaced the state).
    pub tenant: Option<Arc<str>>,
}

impl Changed {
    /// Whether this change concerns `topic` of `tenant`.
    pub fn concerns(&self, topic: &str, tenant: &str) -> bool {
        self.topic == topic && self.tenant.as_deref().is_none_or(|t| t == tenant)
    }
}

/// Changes a watcher may fall behind by before it is told it lagged.
pub const CHANGES_BACKLOG: usize = 256;

impl Store {
    /// Opens (creating when missing) the database under `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        // Bounded WAL so that restarts replay little.
        opts.set_max_total_wal_size(256 << 20);
        let cfs = ALL_FAMILIES.iter().map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(Self {
            db: Arc::new(db),
            identity_generation: Arc::default(),
            changes: tokio::sync::broadcast::channel(CHANGES_BACKLOG).0,
        })
    }

    /// See `identity_generation`: read it before reading identities, and a cached result is
    /// current while the generation has not moved.
    pub fn identity_generation(&self) -> u64 {
        self.identity_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Called after identities changed on disk.
    pub fn identities_changed(&self) {
        self.identity_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Tells this node's watchers of a change (nothing when none watches).
    pub fn changed(&self, topic: &'static str, tenant: Option<&str>) {
        let _ = self.changes.send(Changed {
            topic,
            tenant: tenant.map(Arc::from),
        });
    }

    /// Watches this node's changes from now on.
    pub fn watch_changes(&self) -> tokio::sync::broadcast::Receiver<Changed> {
        self.changes.subscribe()
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    /// A column family handle. The families are created at open, so a missing one is a bug.
    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created when the store is opened")
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Reads and decodes one value.
    pub fn get_decoded<T: serde::de::DeserializeOwned>(
        &self,
        cf: &str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get(cf, key)? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Key-value pairs whose key starts with `prefix`, from `start` (inclusive, must itself
    /// start with `prefix`) in key order, at most `limit`.
    pub fn scan_prefix(
        &self,
        cf: &str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
    ) -> Result<KeyValues, StoreError> {
        Ok(self
            .scan_prefix_bytes(cf, prefix, start, limit, usize::MAX)?
            .0)
    }

    /// Calls `f` with every row of family `cf`, in key order, reading it in pages (a
    /// background pass over a whole family: run it on the blocking pool).
    pub fn scan_all(
        &self,
        cf: &str,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut seek: Vec<u8> = Vec::new();
        loop {
            let page = self.scan_prefix(cf, &[], &seek, 256)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            seek = last.clone();
            seek.push(0);
            for (k, v) in &page {
                f(k, v)?;
            }
        }
    }

    /// Like [`scan_prefix`](Self::scan_prefix), and stops before the row that would take the
    /// keys and values read past `max_bytes` (the first row is always read). The flag says
    /// it stopped for bytes while rows were left: a listing then ends its page there.
    pub fn scan_prefix_bytes(
        &self,
        cf: &str,
        prefix: &[u8],
        start: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<(KeyValues, bool), StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let iter = self.db.iterator_cf(
            self.cf(cf),
            rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            let size = k.len() + v.len();
            if !out.is_empty() && bytes.saturating_add(size) > max_bytes {
                return Ok((out, true));
            }
            bytes += size;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok((out, false))
    }
}
