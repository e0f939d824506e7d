//! The local vector index: one HNSW graph per tenant (usearch), in memory, saved under
//! `<data-dir>/vectors/` now and then.
//!
//! One graph per tenant keeps tenants apart by construction (a search walks only its tenant's
//! graph) and lets a tenant's vectors be dropped at once. Keys are the memories' sequence
//! numbers. Beside each graph, an attributes file holds each key's namespace and creation time
//! for filtered search.
//!
//! Persistence: `persist` writes every changed tenant's files (temporary file, fsync, rename),
//! then `WATERMARK`. A crash loses at most what came after the last persist; the indexer
//! replays it from the log. Files newer than the watermark are harmless, because replaying a
//! change is idempotent. A file that cannot be read clears the index, and the indexer rebuilds
//! it from the state machine.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use usearch::ffi::{IndexOptions, MetricKind, ScalarKind};

use super::{
    PointKind, VectorChange, VectorError, VectorFilter, VectorHit, VectorIndex, VectorPoint,
};
use crate::config::VectorConfig;

const WATERMARK_FILE: &str = "WATERMARK";
const INDEX_SUFFIX: &str = ".usearch";
/// Version 2 added each vector's kind; a graph without this file (an older layout) makes
/// the index rebuild.
const ATTRS_SUFFIX: &str = ".attrs2";
/// Capacity a new tenant graph starts with; it doubles as it fills.
const INITIAL_CAPACITY: usize = 1_024;

/// HNSW parameters.
#[derive(Debug, Clone, Copy)]
pub struct HnswParams {
    pub dimensions: usize,
    /// Links per node (M).
    pub connectivity: usize,
    /// Candidates kept while inserting (ef_construction).
    pub expansion_add: usize,
    /// Candidates kept while searching (ef).
    pub expansion_search: usize,
    pub quantization: ScalarKind,
}

impl HnswParams {
    pub fn from_config(dimensions: usize, c: &VectorConfig) -> Result<Self, VectorError> {
        let quantization = match c.quantization.as_str() {
            "f32" => ScalarKind::F32,
            "bf16" => ScalarKind::BF16,
            "f16" => ScalarKind::F16,
            "i8" => ScalarKind::I8,
            other => {
                return Err(VectorError::Failed(format!(
                    "vector.quantization {other:?}: use f32, bf16, f16 or i8"
                )))
            }
        };
        Ok(HnswParams {
            dimensions,
            connectivity: c.connectivity,
            expansion_add: c.expansion_add,
            expansion_search: c.expansion_search,
            quantization,
        })
    }

    fn options(&self) -> IndexOptions {
        IndexOptions {
            dimensions: self.dimensions,
            // Vectors are unit length, so the inner product is the cosine similarity.
            metric: MetricKind::IP,
            quantization: self.quantization,
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search,
            multi: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Attr {
    kind: PointKind,
    /// Namespace of a memory, conversation of a message.
    scope: Arc<str>,
    created_at_ms: i64,
}

/// The attributes file: (key, kind, scope, created_at_ms) per vector.
#[derive(Serialize, Deserialize)]
struct AttrsFile {
    entries: Vec<(u64, PointKind, String, i64)>,
}

struct TenantGraph {
    graph: usearch::Index,
    attrs: HashMap<u64, Attr>,
    /// Distinct scopes, so that each is allocated once.
    names: HashSet<Arc<str>>,
    dirty: bool,
}

impl TenantGraph {
    fn new(params: &HnswParams) -> Result<Self, VectorError> {
        let graph = usearch::Index::new(&params.options()).map_err(failed)?;
        graph.reserve(INITIAL_CAPACITY).map_err(failed)?;
        Ok(TenantGraph {
            graph,
            attrs: HashMap::new(),
            names: HashSet::new(),
            dirty: true,
        })
    }

    fn intern(&mut self, scope: &str) -> Arc<str> {
        if let Some(n) = self.names.get(scope) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(scope);
        self.names.insert(n.clone());
        n
    }

    fn attrs_file(&self) -> AttrsFile {
        AttrsFile {
            entries: self
                .attrs
                .iter()
                .map(|(k, a)| (*k, a.kind, a.scope.to_string(), a.created_at_ms))
                .collect(),
        }
    }

    fn upsert(&mut self, p: &VectorPoint) -> Result<(), VectorError> {
        if self.graph.contains(p.seq) {
            self.graph.remove(p.seq).map_err(failed)?;
        }
        if self.graph.size() + 1 > self.graph.capacity() {
            let grown = (self.graph.capacity() * 2).max(INITIAL_CAPACITY);
            self.graph.reserve(grown).map_err(failed)?;
        }
        self.graph.add(p.seq, &p.vector).map_err(failed)?;
        let scope = self.intern(&p.scope);
        self.attrs.insert(
            p.seq,
            Attr {
                kind: p.kind,
                scope,
                created_at_ms: p.created_at_ms,
            },
        );
        self.dirty = true;
        Ok(())
    }

    fn delete(&mut self, seq: u64) -> Result<(), VectorError> {
        if self.graph.contains(seq) {
            self.graph.remove(seq).map_err(failed)?;
        }
        self.attrs.remove(&seq);
        self.dirty = true;
        Ok(())
    }

    /// Deletes every vector of this kind and scope (a scan of the attributes: rare).
    fn delete_scope(&mut self, kind: PointKind, scope: &str) -> Result<(), VectorError> {
        let doomed: Vec<u64> = self
            .attrs
            .iter()
            .filter(|(_, a)| a.kind == kind && &*a.scope == scope)
            .map(|(k, _)| *k)
            .collect();
        for seq in doomed {
            self.delete(seq)?;
        }
        Ok(())
    }

    fn hits(&self, m: usearch::ffi::Matches) -> Vec<VectorHit> {
        m.keys
            .into_iter()
            .zip(m.distances)
            .filter_map(|(seq, d)| {
                Some(VectorHit {
                    seq,
                    kind: self.attrs.get(&seq)?.kind,
                    // usearch's inner-product distance is 1 - a·b.
                    similarity: 1.0 - d,
                })
            })
            .collect()
    }
}

fn failed(e: impl std::fmt::Display) -> VectorError {
    VectorError::Failed(e.to_string())
}

/// The in-process HNSW index.
pub struct LocalIndex {
    dir: PathBuf,
    params: HnswParams,
    tenants: RwLock<HashMap<String, Arc<RwLock<TenantGraph>>>>,
    /// The watermark of the applied changes, written by the next `persist`.
    applied: Mutex<u64>,
    /// Tenants deleted since the last persist, whose files it removes.
    dropped: Mutex<Vec<String>>,
    durable: Mutex<u64>,
}

fn tenant_file(dir: &Path, tenant: &str, suffix: &str) -> PathBuf {
    let hex: String = tenant.bytes().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("t-{hex}{suffix}"))
}

fn tenant_of_file(name: &str) -> Option<String> {
    let hex = name.strip_prefix("t-")?.strip_suffix(INDEX_SUFFIX)?;
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Writes a file atomically: temporary file, fsync, rename.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), VectorError>,
) -> Result<(), VectorError> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    write(&tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl LocalIndex {
    /// Opens the index in `dir`: every tenant graph saved there, at the saved watermark. When
    /// a file cannot be read, starts empty at watermark 0 (the indexer then rebuilds).
    pub fn open(dir: &Path, params: HnswParams) -> Result<Self, VectorError> {
        std::fs::create_dir_all(dir)?;
        let index = LocalIndex {
            dir: dir.to_path_buf(),
            params,
            tenants: RwLock::new(HashMap::new()),
            applied: Mutex::new(0),
            dropped: Mutex::new(Vec::new()),
            durable: Mutex::new(0),
        };
        match index.load() {
            Ok(watermark) => {
                *index.applied.lock().unwrap() = watermark;
                *index.durable.lock().unwrap() = watermark;
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "the saved vector index cannot be read; it will be rebuilt from the state machine");
                index.tenants.write().unwrap().clear();
            }
        }
        Ok(index)
    }

    fn load(&self) -> Result<u64, VectorError> {
        let watermark = match std::fs::read_to_string(self.dir.join(WATERMARK_FILE)) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| failed(format!("WATERMARK holds {s:?}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut tenants = HashMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name().to_string_lossy().to_string();
            let Some(tenant) = tenant_of_file(&name) else {
                continue;
            };
            let path = self.dir.join(&name);
            let meta = usearch::Index::metadata(&path.to_string_lossy()).map_err(failed)?;
            if meta.dimensions as usize != self.params.dimensions {
                return Err(failed(format!(
                    "{name} holds {}-dimensional vectors; the embedder makes {}",
                    meta.dimensions, self.params.dimensions
                )));
            }
            let graph = usearch::Index::new(&self.params.options()).map_err(failed)?;
            graph.load(&path.to_string_lossy()).map_err(failed)?;
            graph.change_expansion_search(self.params.expansion_search);
            let attrs_bytes = std::fs::read(tenant_file(&self.dir, &tenant, ATTRS_SUFFIX))?;
            let file: AttrsFile = crate::store::codec::decode(&attrs_bytes)
                .map_err(|e| failed(format!("attributes of tenant {tenant:?}: {e}")))?;
            let mut g = TenantGraph {
                graph,
                attrs: HashMap::with_capacity(file.entries.len()),
                names: HashSet::new(),
                dirty: false,
            };
            for (key, kind, scope, created_at_ms) in file.entries {
                let scope = g.intern(&scope);
                g.attrs.insert(
                    key,
                    Attr {
                        kind,
                        scope,
                        created_at_ms,
                    },
                );
            }
            if g.attrs.len() != g.graph.size() {
                return Err(failed(format!(
                    "tenant {tenant:?}: {} vectors but {} attributes",
                    g.graph.size(),
                    g.attrs.len()
                )));
            }
            tenants.insert(tenant, Arc::new(RwLock::new(g)));
        }
        *self.tenants.write().unwrap() = tenants;
        Ok(watermark)
    }

    fn graph(&self, tenant: &str) -> Option<Arc<RwLock<TenantGraph>>> {
        self.tenants.read().unwrap().get(tenant).cloned()
    }

    fn graph_or_new(&self, tenant: &str) -> Result<Arc<RwLock<TenantGraph>>, VectorError> {
        if let Some(g) = self.graph(tenant) {
            return Ok(g);
        }
        let mut tenants = self.tenants.write().unwrap();
        if let Some(g) = tenants.get(tenant) {
            return Ok(g.clone());
        }
        let g = Arc::new(RwLock::new(TenantGraph::new(&self.params)?));
        tenants.insert(tenant.to_string(), g.clone());
        Ok(g)
    }

    /// Vectors held for `tenant`.
    pub fn len(&self, tenant: &str) -> usize {
        self.graph(tenant)
            .map_or(0, |g| g.read().unwrap().graph.size())
    }

    /// Bytes of memory the graphs use.
    pub fn memory_usage(&self) -> usize {
        self.tenants
            .read()
            .unwrap()
            .values()
            .map(|g| g.read().unwrap().graph.memory_usage())
            .sum()
    }

    /// Exact nearest neighbours by brute force (for measuring recall).
    pub fn exact_search(
        &self,
        tenant: &str,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<VectorHit>, VectorError> {
        let Some(g) = self.graph(tenant) else {
            return Ok(Vec::new());
        };
        let g = g.read().unwrap();
        let m = g.graph.exact_search(query, k).map_err(failed)?;
        Ok(g.hits(m))
    }

    /// Changes the search breadth (ef) of every graph.
    pub fn set_expansion_search(&self, ef: usize) {
        for g in self.tenants.read().unwrap().values() {
            g.read().unwrap().graph.change_expansion_search(ef);
        }
    }
}

#[tonic::async_trait]
impl VectorIndex for LocalIndex {
    fn backend(&self) -> &'static str {
        "local"
    }

    fn durable_watermark(&self) -> Result<u64, VectorError> {
        Ok(*self.durable.lock().unwrap())
    }

    fn apply(&self, changes: &[VectorChange], upto: u64) -> Result<(), VectorError> {
        for change in changes {
            match change {
                VectorChange::Upsert(p) => {
                    if p.vector.len() != self.params.dimensions {
                        tracing::warn!(
                            tenant = %p.tenant,
                            seq = p.seq,
                            dimensions = p.vector.len(),
                            expected = self.params.dimensions,
                            "skipping a vector of another embedding model"
                        );
                        continue;
                    }
                    let g = self.graph_or_new(&p.tenant)?;
                    g.write().unwrap().upsert(p)?;
                }
                VectorChange::Delete { tenant, seq } => {
                    if let Some(g) = self.graph(tenant) {
                        g.write().unwrap().delete(*seq)?;
                    }
                }
                VectorChange::DeleteScope {
                    tenant,
                    kind,
                    scope,
                } => {
                    if let Some(g) = self.graph(tenant) {
                        g.write().unwrap().delete_scope(*kind, scope)?;
                    }
                }
                VectorChange::DeleteTenant { tenant } => {
                    // The graph goes now; its files at the next persist (a crash in between
                    // replays this change from the log).
                    if self.tenants.write().unwrap().remove(tenant).is_some() {
                        self.dropped.lock().unwrap().push(tenant.clone());
                    }
                }
            }
        }
        *self.applied.lock().unwrap() = upto;
        Ok(())
    }

    fn persist(&self) -> Result<(), VectorError> {
        let watermark = *self.applied.lock().unwrap();
        let tenants: Vec<(String, Arc<RwLock<TenantGraph>>)> = self
            .tenants
            .read()
            .unwrap()
            .iter()
            .map(|(t, g)| (t.clone(), g.clone()))
            .collect();
        for (tenant, g) in tenants {
            // A read lock: searches go on while the graph is written out.
            let (dirty, attrs) = {
                let g = g.read().unwrap();
                (
                    g.dirty,
                    g.dirty
                        .then(|| crate::store::codec::encode(&g.attrs_file())),
                )
            };
            if !dirty {
                continue;
            }
            {
                let g = g.read().unwrap();
                write_atomically(&tenant_file(&self.dir, &tenant, INDEX_SUFFIX), |tmp| {
                    g.graph.save(&tmp.to_string_lossy()).map_err(failed)
                })?;
            }
            write_atomically(&tenant_file(&self.dir, &tenant, ATTRS_SUFFIX), |tmp| {
                std::fs::write(tmp, attrs.unwrap_or_default())?;
                Ok(())
            })?;
            g.write().unwrap().dirty = false;
        }
        for tenant in std::mem::take(&mut *self.dropped.lock().unwrap()) {
            // Deleted again since: nothing to remove, or a new graph of the same name.
            if self.graph(&tenant).is_some() {
                continue;
            }
            for suffix in [INDEX_SUFFIX, ATTRS_SUFFIX] {
                match std::fs::remove_file(tenant_file(&self.dir, &tenant, suffix)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
            }
        }
        write_atomically(&self.dir.join(WATERMARK_FILE), |tmp| {
            let mut f = std::fs::File::create(tmp)?;
            writeln!(f, "{watermark}")?;
            Ok(())
        })?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        *self.durable.lock().unwrap() = watermark;
        Ok(())
    }

    fn clear(&self) -> Result<(), VectorError> {
        let mut tenants = self.tenants.write().unwrap();
        tenants.clear();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            std::fs::remove_file(path)?;
        }
        *self.applied.lock().unwrap() = 0;
        *self.durable.lock().unwrap() = 0;
        Ok(())
    }

    /// Searches on the blocking pool: an HNSW search is CPU work.
    async fn search(
        &self,
        tenant: &str,
        query: &[f32],
        k: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<VectorHit>, VectorError> {
        let Some(g) = self.checked_graph(tenant, query)? else {
            return Ok(Vec::new());
        };
        let (query, filter) = (query.to_vec(), filter.clone());
        tokio::task::spawn_blocking(move || search_graph(&g, &query, k, &filter))
            .await
            .map_err(failed)?
    }
}

impl LocalIndex {
    /// `search`, on the calling thread.
    pub fn search_blocking(
        &self,
        tenant: &str,
        query: &[f32],
        k: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<VectorHit>, VectorError> {
        match self.checked_graph(tenant, query)? {
            Some(g) => search_graph(&g, query, k, filter),
            None => Ok(Vec::new()),
        }
    }

    /// The tenant's graph, once the query's length is checked.
    fn checked_graph(
        &self,
        tenant: &str,
        query: &[f32],
    ) -> Result<Option<Arc<RwLock<TenantGraph>>>, VectorError> {
        if query.len() != self.params.dimensions {
            return Err(failed(format!(
                "query has {} dimensions; the index holds {}",
                query.len(),
                self.params.dimensions
            )));
        }
        Ok(self.graph(tenant))
    }
}

fn search_graph(
    g: &RwLock<TenantGraph>,
    query: &[f32],
    k: usize,
    filter: &VectorFilter,
) -> Result<Vec<VectorHit>, VectorError> {
    let g = g.read().unwrap();
    let m = if filter.is_empty() {
        g.graph.search(query, k)
    } else {
        g.graph.filtered_search(query, k, |key| {
            g.attrs
                .get(&key)
                .is_some_and(|a| filter.accepts(a.kind, &a.scope, a.created_at_ms))
        })
    }
    .map_err(failed)?;
    Ok(g.hits(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> HnswParams {
        HnswParams {
            dimensions: 4,
            connectivity: 16,
            expansion_add: 64,
            expansion_search: 64,
            quantization: ScalarKind::F32,
        }
    }

    fn point(tenant: &str, seq: u64, ns: &str, v: [f32; 4]) -> VectorChange {
        VectorChange::Upsert(VectorPoint {
            tenant: tenant.into(),
            seq,
            kind: PointKind::Memory,
            scope: ns.into(),
            created_at_ms: seq as i64 * 10,
            vector: crate::memory::semantic::normalized(v.to_vec()),
        })
    }

    #[test]
    fn tenants_are_apart_and_filters_apply() {
        let dir = tempfile::tempdir().unwrap();
        let index = LocalIndex::open(dir.path(), params()).unwrap();
        index
            .apply(
                &[
                    point("a", 1, "n1", [1.0, 0.0, 0.0, 0.0]),
                    point("a", 2, "n2", [0.9, 0.1, 0.0, 0.0]),
                    point("b", 1, "n1", [1.0, 0.0, 0.0, 0.0]),
                    point("b", 7, "n1", [0.0, 1.0, 0.0, 0.0]),
                ],
                5,
            )
            .unwrap();
        let q = [1.0, 0.0, 0.0, 0.0];
        let a = index
            .search_blocking("a", &q, 10, &VectorFilter::default())
            .unwrap();
        assert_eq!(a.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!((a[0].similarity - 1.0).abs() < 1e-5);
        let b = index
            .search_blocking("b", &q, 10, &VectorFilter::default())
            .unwrap();
        assert_eq!(b.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![1, 7]);
        assert!(index
            .search_blocking("c", &q, 10, &VectorFilter::default())
            .unwrap()
            .is_empty());
        let only_n2 = VectorFilter {
            kind: Some(PointKind::Memory),
            scope: Some("n2".into()),
            ..Default::default()
        };
        let hits = index.search_blocking("a", &q, 10, &only_n2).unwrap();
        assert_eq!(hits.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![2]);
        let recent = VectorFilter {
            since_ms: 20,
            ..Default::default()
        };
        assert_eq!(
            index.search_blocking("a", &q, 10, &recent).unwrap().len(),
            1
        );
    }

    #[test]
    fn messages_are_filtered_by_kind_and_deleted_by_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let index = LocalIndex::open(dir.path(), params()).unwrap();
        let message = |seq: u64, conversation: &str| {
            VectorChange::Upsert(VectorPoint {
                tenant: "a".into(),
                seq,
                kind: PointKind::Message,
                scope: conversation.into(),
                created_at_ms: 0,
                vector: vec![0.0, 0.0, 1.0, 0.0],
            })
        };
        // A memory whose namespace is named like a conversation: only kind tells them apart.
        index
            .apply(
                &[
                    point("a", 1, "c1", [0.0, 0.0, 1.0, 0.0]),
                    message(2, "c1"),
                    message(3, "c1"),
                    message(4, "c2"),
                ],
                1,
            )
            .unwrap();
        let q = [0.0, 0.0, 1.0, 0.0];
        let in_c1 = VectorFilter {
            kind: Some(PointKind::Message),
            scope: Some("c1".into()),
            ..Default::default()
        };
        let mut found: Vec<u64> = index
            .search_blocking("a", &q, 10, &in_c1)
            .unwrap()
            .iter()
            .map(|h| h.seq)
            .collect();
        found.sort();
        assert_eq!(found, vec![2, 3]);
        let all = index
            .search_blocking("a", &q, 10, &VectorFilter::default())
            .unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(
            all.iter().filter(|h| h.kind == PointKind::Memory).count(),
            1
        );
        let delete_c1 = VectorChange::DeleteScope {
            tenant: "a".into(),
            kind: PointKind::Message,
            scope: "c1".into(),
        };
        index.apply(std::slice::from_ref(&delete_c1), 2).unwrap();
        // Idempotent, and a scope of another tenant is a no-op.
        index.apply(&[delete_c1], 2).unwrap();
        let mut left: Vec<(u64, PointKind)> = index
            .search_blocking("a", &q, 10, &VectorFilter::default())
            .unwrap()
            .iter()
            .map(|h| (h.seq, h.kind))
            .collect();
        left.sort_by_key(|(s, _)| *s);
        assert_eq!(left, vec![(1, PointKind::Memory), (4, PointKind::Message)]);
        // Kinds survive a reload.
        index.persist().unwrap();
        drop(index);
        let index = LocalIndex::open(dir.path(), params()).unwrap();
        let only_messages = VectorFilter {
            kind: Some(PointKind::Message),
            ..Default::default()
        };
        let hits = index.search_blocking("a", &q, 10, &only_messages).unwrap();
        assert_eq!(hits.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn persists_reloads_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let index = LocalIndex::open(dir.path(), params()).unwrap();
            index
                .apply(
                    &[
                        point("a", 1, "n", [1.0, 0.0, 0.0, 0.0]),
                        point("a", 2, "n", [0.0, 1.0, 0.0, 0.0]),
                    ],
                    3,
                )
                .unwrap();
            assert_eq!(index.durable_watermark().unwrap(), 0);
            index.persist().unwrap();
            assert_eq!(index.durable_watermark().unwrap(), 3);
            // Applied but never persisted: lost with the process, replayed from the log.
            index
                .apply(
                    &[VectorChange::Delete {
                        tenant: "a".into(),
                        seq: 1,
                    }],
                    4,
                )
                .unwrap();
            assert_eq!(index.len("a"), 1);
        }
        let index = LocalIndex::open(dir.path(), params()).unwrap();
        assert_eq!(index.durable_watermark().unwrap(), 3);
        assert_eq!(index.len("a"), 2);
        // Replaying is idempotent.
        let delete = [VectorChange::Delete {
            tenant: "a".into(),
            seq: 1,
        }];
        index.apply(&delete, 4).unwrap();
        index.apply(&delete, 4).unwrap();
        index
            .apply(&[point("a", 2, "n", [0.0, 0.0, 1.0, 0.0])], 5)
            .unwrap();
        let hits = index
            .search_blocking("a", &[0.0, 0.0, 1.0, 0.0], 5, &VectorFilter::default())
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert!((hits[0].similarity - 1.0).abs() < 1e-5);
        // A damaged file empties the index (to be rebuilt) instead of failing.
        index.persist().unwrap();
        drop(index);
        let file = tenant_file(dir.path(), "a", INDEX_SUFFIX);
        std::fs::write(&file, b"garbage").unwrap();
        let index = LocalIndex::open(dir.path(), params()).unwrap();
        assert_eq!(index.durable_watermark().unwrap(), 0);
        assert_eq!(index.len("a"), 0);
    }
}
