//! Semantic memories: free text with metadata and an importance, embedded on the node that
//! proposes the write and recalled by meaning (vector index) and by words (BM25), fused.
//!
//! Storage (both families begin with the tenant):
//! - `semantic`: tenant, sequence number -> [`SemanticRecord`] (text, metadata, vector). The
//!   sequence number is assigned by the state machine, per tenant, in log order; it is the
//!   record's key in the vector index (HNSW keys are integers).
//! - `semantic_ids`: tenant, id -> sequence number; the tenant prefix alone holds the tenant's
//!   next sequence number.
//!
//! The vector travels in the Raft command, so followers never re-embed and every replica holds
//! the same vectors; the state machine is the source of truth the vector index is rebuilt from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::validate;
use crate::config::Limits;
pub use crate::embed::normalized;

use crate::error::NexusError;
use crate::store::{keys, ApplyCtx, Store, StoreError, CF_SEMANTIC, CF_SEMANTIC_IDS};

/// The namespace of a memory remembered without one.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The importance of a memory remembered without one.
pub const DEFAULT_IMPORTANCE: f32 = 0.5;
/// Most metadata entries on one memory.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 128;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;

/// A semantic memory as stored in `semantic`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemanticRecord {
    /// UUIDv7, chosen by the proposing node.
    pub id: String,
    /// Per-tenant sequence number, assigned at apply.
    pub seq: u64,
    pub namespace: String,
    pub text: String,
    pub metadata: BTreeMap<String, String>,
    /// 0..=1.
    pub importance: f32,
    pub created_at_ms: i64,
    /// The embedding model that made `embedding`; empty when none was configured.
    pub model: String,
    /// Unit-length vector of `model`; empty when the memory was stored without one.
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SemanticOp {
    Remember {
        id: String,
        namespace: String,
        text: String,
        metadata: BTreeMap<String, String>,
        importance: f32,
        now_ms: i64,
        model: String,
        embedding: Vec<f32>,
    },
    /// `seq` is the one the proposer read for `id` (ids never change their number); it lets
    /// derived indexes remove the memory without keeping tombstones.
    Forget { id: String, seq: u64 },
    /// A vector for a memory stored without one, or with another model's: the leader's
    /// re-embedding (`service::semantic::SemanticService::reembed`). Applies only while the
    /// memory is there with the model the proposer read (`from_model`): a forget, or another
    /// re-embedding in between, makes it a rejection that writes nothing. (Appended last:
    /// the log's encoding of the variants before it is unchanged.)
    Embed {
        id: String,
        from_model: String,
        model: String,
        embedding: Vec<f32>,
    },
}

impl SemanticOp {
    pub fn name(&self) -> &'static str {
        match self {
            SemanticOp::Remember { .. } => "semantic.remember",
            SemanticOp::Forget { .. } => "semantic.forget",
            SemanticOp::Embed { .. } => "semantic.embed",
        }
    }

    pub fn approx_size(&self) -> usize {
        match self {
            SemanticOp::Remember {
                id,
                namespace,
                text,
                metadata,
                model,
                embedding,
                ..
            } => {
                id.len()
                    + namespace.len()
                    + text.len()
                    + metadata
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 2)
                        .sum::<usize>()
                    + model.len()
                    + embedding.len() * 4
                    + 24
            }
            SemanticOp::Forget { id, .. } => id.len() + 8,
            SemanticOp::Embed {
                id,
                from_model,
                model,
                embedding,
            } => id.len() + from_model.len() + model.len() + embedding.len() * 4 + 8,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SemanticReply {
    Remembered(SemanticRecord),
    Forgotten { id: String },
}

/// Applies one command. Checks come first: a rejected command writes nothing.
pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &SemanticOp,
) -> Result<Result<SemanticReply, NexusError>, StoreError> {
    match op {
        SemanticOp::Remember {
            id,
            namespace,
            text,
            metadata,
            importance,
            now_ms,
            model,
            embedding,
        } => {
            let id_key = keys::semantic_id_key(tenant, id);
            if ctx.get_decoded::<u64>(CF_SEMANTIC_IDS, &id_key)?.is_some() {
                return Ok(Err(NexusError::AlreadyExists(format!(
                    "semantic memory {id} already exists"
                ))));
            }
            let seq = take_vector_number(ctx, tenant)?;
            let record = SemanticRecord {
                id: id.clone(),
                seq,
                namespace: namespace.clone(),
                text: text.clone(),
                metadata: metadata.clone(),
                importance: *importance,
                created_at_ms: *now_ms,
                model: model.clone(),
                embedding: embedding.clone(),
            };
            ctx.put(CF_SEMANTIC_IDS, &id_key, &seq);
            ctx.put(CF_SEMANTIC, &keys::semantic_key(tenant, seq), &record);
            Ok(Ok(SemanticReply::Remembered(record)))
        }
        SemanticOp::Forget { id, seq } => {
            let id_key = keys::semantic_id_key(tenant, id);
            match ctx.get_decoded::<u64>(CF_SEMANTIC_IDS, &id_key)? {
                Some(found) if found == *seq => {
                    ctx.delete(CF_SEMANTIC_IDS, &id_key);
                    ctx.delete(CF_SEMANTIC, &keys::semantic_key(tenant, *seq));
                    Ok(Ok(SemanticReply::Forgotten { id: id.clone() }))
                }
                _ => Ok(Err(NexusError::NotFound(format!(
                    "semantic memory {id} not found"
                )))),
            }
        }
        SemanticOp::Embed {
            id,
            from_model,
            model,
            embedding,
        } => {
            let id_key = keys::semantic_id_key(tenant, id);
            let Some(seq) = ctx.get_decoded::<u64>(CF_SEMANTIC_IDS, &id_key)? else {
                return Ok(Err(NexusError::NotFound(format!(
                    "semantic memory {id} not found"
                ))));
            };
            let key = keys::semantic_key(tenant, seq);
            let Some(mut record) = ctx.get_decoded::<SemanticRecord>(CF_SEMANTIC, &key)? else {
                return Ok(Err(NexusError::NotFound(format!(
                    "semantic memory {id} not found"
                ))));
            };
            if record.model != *from_model {
                return Ok(Err(NexusError::precondition(
                    "from_model",
                    format!(
                        "semantic memory {id} has a vector of {:?} now, not of {from_model:?}",
                        record.model
                    ),
                )));
            }
            record.model = model.clone();
            record.embedding = embedding.clone();
            ctx.put(CF_SEMANTIC, &key, &record);
            Ok(Ok(SemanticReply::Remembered(record)))
        }
    }
}

/// Takes the tenant's next vector number: semantic memories and conversation message vectors
/// draw from this one counter, so a number names one vector of a tenant in the vector index.
/// Numbers are never reused.
pub fn take_vector_number(ctx: &mut ApplyCtx<'_>, tenant: &str) -> Result<u64, StoreError> {
    let next_key = keys::semantic_next_seq_key(tenant);
    let seq = ctx
        .get_decoded::<u64>(CF_SEMANTIC_IDS, &next_key)?
        .unwrap_or(1);
    ctx.put(CF_SEMANTIC_IDS, &next_key, &(seq + 1));
    Ok(seq)
}

/// The sequence number of a memory, from the store.
pub fn seq_of(store: &Store, tenant: &str, id: &str) -> Result<Option<u64>, StoreError> {
    store.get_decoded(CF_SEMANTIC_IDS, &keys::semantic_id_key(tenant, id))
}

/// Reads one memory by sequence number.
pub fn read(store: &Store, tenant: &str, seq: u64) -> Result<Option<SemanticRecord>, StoreError> {
    store.get_decoded(CF_SEMANTIC, &keys::semantic_key(tenant, seq))
}

/// Reads one memory by id.
pub fn read_by_id(
    store: &Store,
    tenant: &str,
    id: &str,
) -> Result<Option<SemanticRecord>, StoreError> {
    match seq_of(store, tenant, id)? {
        Some(seq) => read(store, tenant, seq),
        None => Ok(None),
    }
}

#[derive(Debug, Default, Clone)]
pub struct RememberRequest {
    pub namespace: String,
    pub text: String,
    pub metadata: BTreeMap<String, String>,
    pub importance: Option<f32>,
}

/// Checks a metadata map (also used by recall filters).
pub fn validate_metadata(
    field: &str,
    metadata: &BTreeMap<String, String>,
    limits: &Limits,
) -> Result<(), NexusError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(NexusError::invalid(
            field,
            format!(
                "has {} entries; the limit is {MAX_METADATA_ENTRIES}",
                metadata.len()
            ),
        ));
    }
    let mut total = 0;
    for (k, v) in metadata {
        if k.is_empty() || k.len() > MAX_METADATA_KEY_BYTES || k.chars().any(char::is_control) {
            return Err(NexusError::invalid(
                field,
                format!("key {k:?} must be 1..={MAX_METADATA_KEY_BYTES} bytes without control characters"),
            ));
        }
        if v.len() > MAX_METADATA_VALUE_BYTES {
            return Err(NexusError::invalid(
                field,
                format!(
                    "value of {k:?} is {} bytes; the limit is {MAX_METADATA_VALUE_BYTES}",
                    v.len()
                ),
            ));
        }
        total += k.len() + v.len();
    }
    if total > limits.max_metadata_bytes {
        return Err(NexusError::invalid(
            field,
            format!(
                "is {total} bytes; the limit is {} (limits.max_metadata_bytes)",
                limits.max_metadata_bytes
            ),
        ));
    }
    Ok(())
}

/// The namespace a request names, or the default one.
pub fn namespace_or_default(field: &str, ns: &str) -> Result<String, NexusError> {
    if ns.is_empty() {
        return Ok(DEFAULT_NAMESPACE.to_string());
    }
    validate::namespace(field, ns)?;
    Ok(ns.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remember(id: &str, text: &str) -> SemanticOp {
        SemanticOp::Remember {
            id: id.into(),
            namespace: "n".into(),
            text: text.into(),
            metadata: BTreeMap::new(),
            importance: 0.5,
            now_ms: 1,
            model: "m".into(),
            embedding: vec![1.0, 0.0],
        }
    }

    #[test]
    fn sequence_numbers_are_per_tenant_and_forget_needs_the_right_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut ctx = ApplyCtx::new(&store);
        let a = apply(&mut ctx, "t1", &remember("a", "x")).unwrap().unwrap();
        let b = apply(&mut ctx, "t1", &remember("b", "y")).unwrap().unwrap();
        let c = apply(&mut ctx, "t2", &remember("c", "z")).unwrap().unwrap();
        let seqs: Vec<u64> = [a, b, c]
            .into_iter()
            .map(|r| match r {
                SemanticReply::Remembered(r) => r.seq,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 1]);
        // The same id twice is refused.
        assert!(matches!(
            apply(&mut ctx, "t1", &remember("a", "again")).unwrap(),
            Err(NexusError::AlreadyExists(_))
        ));
        store.db().write(ctx.finish().unwrap()).unwrap();
        assert_eq!(read_by_id(&store, "t1", "b").unwrap().unwrap().text, "y");
        // Another tenant's id is not found.
        assert_eq!(read_by_id(&store, "t2", "a").unwrap(), None);

        let mut ctx = ApplyCtx::new(&store);
        let wrong = SemanticOp::Forget {
            id: "a".into(),
            seq: 2,
        };
        assert!(matches!(
            apply(&mut ctx, "t1", &wrong).unwrap(),
            Err(NexusError::NotFound(_))
        ));
        let right = SemanticOp::Forget {
            id: "a".into(),
            seq: 1,
        };
        assert!(apply(&mut ctx, "t1", &right).unwrap().is_ok());
        store.db().write(ctx.finish().unwrap()).unwrap();
        assert_eq!(read_by_id(&store, "t1", "a").unwrap(), None);
        assert_eq!(read(&store, "t1", 1).unwrap(), None);
        // Numbers are never reused.
        let mut ctx = ApplyCtx::new(&store);
        match apply(&mut ctx, "t1", &remember("d", "w")).unwrap().unwrap() {
            SemanticReply::Remembered(r) => assert_eq!(r.seq, 3),
            _ => unreachable!(),
        }
    }

    #[test]
    fn metadata_limits_name_the_field() {
        let limits = Limits::default();
        let mut m = BTreeMap::new();
        m.insert(String::new(), "v".to_string());
        let err = validate_metadata("metadata", &m, &limits).unwrap_err();
        assert!(err.to_string().contains("metadata"));
        let mut m = BTreeMap::new();
        m.insert("k".to_string(), "v".repeat(MAX_METADATA_VALUE_BYTES + 1));
        assert!(validate_metadata("metadata", &m, &limits).is_err());
    }
}
