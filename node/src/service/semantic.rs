//! The semantic memory write API of a node. Recall lives in `search::recall`, which combines
//! the vector and full-text indexes.

use std::sync::Arc;

use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply, Scope};
use crate::config::Limits;
use crate::embed::{embed_units, Embedder};
use crate::error::NexusError;
use crate::memory::now_ms;
use crate::memory::semantic::*;

/// The semantic memory write API of a node. Recall lives in `search::recall`, which combines
/// the vector and full-text indexes.
pub struct SemanticService {
    node: Arc<Cluster>,
    limits: Limits,
    embedder: Option<Arc<dyn Embedder>>,
}

impl SemanticService {
    pub fn new(node: Arc<Cluster>, limits: Limits, embedder: Option<Arc<dyn Embedder>>) -> Self {
        Self {
            node,
            limits,
            embedder,
        }
    }

    pub fn embedder(&self) -> Option<&Arc<dyn Embedder>> {
        self.embedder.as_ref()
    }

    /// Validates, embeds (on this node, before proposing) and stores a memory.
    pub async fn remember(
        &self,
        scope: &Scope,
        req: RememberRequest,
    ) -> Result<SemanticRecord, NexusError> {
        let namespace = namespace_or_default("namespace", &req.namespace)?;
        if req.text.trim().is_empty() {
            return Err(NexusError::invalid("text", "must not be empty"));
        }
        if req.text.len() > self.limits.max_text_bytes {
            return Err(NexusError::invalid(
                "text",
                format!(
                    "is {} bytes; the limit is {} (limits.max_text_bytes)",
                    req.text.len(),
                    self.limits.max_text_bytes
                ),
            ));
        }
        validate_metadata("metadata", &req.metadata, &self.limits)?;
        let importance = req.importance.unwrap_or(DEFAULT_IMPORTANCE);
        if !(0.0..=1.0).contains(&importance) {
            return Err(NexusError::invalid(
                "importance",
                format!("{importance} is not between 0 and 1"),
            ));
        }
        let (model, embedding) = match &self.embedder {
            Some(e) => {
                let mut v = embed_units(e.as_ref(), std::slice::from_ref(&req.text)).await?;
                (e.model().to_string(), v.pop().unwrap_or_default())
            }
            None => (String::new(), Vec::new()),
        };
        let op = SemanticOp::Remember {
            id: uuid::Uuid::now_v7().to_string(),
            namespace,
            text: req.text,
            metadata: req.metadata,
            importance,
            now_ms: now_ms(),
            model,
            embedding,
        };
        match self.propose(scope, op).await? {
            SemanticReply::Remembered(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Removes a memory. NotFound when there is none with this id.
    pub async fn forget(&self, scope: &Scope, id: &str) -> Result<(), NexusError> {
        validate_id(id)?;
        // The number of an id never changes, so reading it after a read barrier is exact.
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let Some(seq) = seq_of(&self.node.store, &scope.tenant, id)? else {
            return Err(NexusError::NotFound(format!(
                "semantic memory {id} not found"
            )));
        };
        self.propose(
            scope,
            SemanticOp::Forget {
                id: id.to_string(),
                seq,
            },
        )
        .await
        .map(|_| ())
    }

    /// Reads one memory by id.
    pub async fn get(
        &self,
        tenant: &str,
        id: &str,
        consistency: ReadConsistency,
    ) -> Result<SemanticRecord, NexusError> {
        validate_id(id)?;
        self.node.read_barrier(consistency).await?;
        read_by_id(&self.node.store, tenant, id)?
            .ok_or_else(|| NexusError::NotFound(format!("semantic memory {id} not found")))
    }

    /// One pass of re-embedding, on the leader: finds up to `limit` memories of any tenant
    /// stored without a vector (no model at the time: this node or the one that took the
    /// write had none) or with another model's, embeds their texts in batches and proposes
    /// each vector (`SemanticOp::Embed`, which applies only if the memory is still there with
    /// the model read here). Returns (re-embedded, still to do after this pass, as counted by
    /// the scan). Nothing without an embedder.
    pub async fn reembed(&self, limit: usize) -> Result<(u64, u64), NexusError> {
        const BATCH: usize = 32;
        let Some(e) = self.embedder.clone() else {
            return Ok((0, 0));
        };
        let model = e.model().to_string();
        // (tenant, id, the model read, text), at most `limit`; `pending` counts them all.
        let store = self.node.store.clone();
        let wanted = model.clone();
        let (todo, pending) = crate::store::blocking(move || {
            let mut todo: Vec<(String, String, String, String)> = Vec::new();
            let mut pending = 0u64;
            store.scan_all(crate::store::CF_SEMANTIC, |k, v| {
                let Some((tenant, _)) = crate::store::keys::parse_semantic_key(k) else {
                    return Ok(());
                };
                let r: SemanticRecord = crate::store::codec::decode(v)?;
                if r.model == wanted && !r.embedding.is_empty() {
                    return Ok(());
                }
                pending += 1;
                if todo.len() < limit {
                    todo.push((tenant, r.id, r.model, r.text));
                }
                Ok(())
            })?;
            Ok::<_, crate::store::StoreError>((todo, pending))
        })
        .await?;
        let mut done = 0u64;
        for batch in todo.chunks(BATCH) {
            let texts: Vec<String> = batch.iter().map(|(_, _, _, t)| t.clone()).collect();
            let vectors = embed_units(e.as_ref(), &texts).await?;
            for ((tenant, id, from_model, _), embedding) in batch.iter().zip(vectors) {
                let op = SemanticOp::Embed {
                    id: id.clone(),
                    from_model: from_model.clone(),
                    model: model.clone(),
                    embedding,
                };
                match self.propose(&Scope::system(tenant), op).await {
                    Ok(_) => done += 1,
                    // Forgotten, or re-embedded meanwhile: nothing to do.
                    Err(NexusError::NotFound(_) | NexusError::FailedPrecondition { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((done, pending.saturating_sub(done)))
    }

    async fn propose(&self, scope: &Scope, op: SemanticOp) -> Result<SemanticReply, NexusError> {
        match command::propose(&self.node, scope, Op::Semantic(op)).await? {
            Reply::Semantic(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }
}

fn validate_id(id: &str) -> Result<(), NexusError> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| NexusError::invalid("id", format!("{id:?} is not a memory id (a UUID)")))
}
