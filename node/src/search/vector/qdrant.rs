//! The Qdrant backend: every tenant's vectors in one Qdrant collection, the tenant a payload
//! field with a tenant index (Qdrant's multitenancy layout), over gRPC with qdrant-client.
//!
//! Point ids are UUIDs derived from (tenant, sequence number), so replaying a change upserts
//! the same point. Each node keeps its watermark in a companion collection
//! (`<collection>_nexus_meta`, one point per node id), written after the changes it covers
//! were acknowledged with `wait`, so the watermark never runs ahead of the data, and lives
//! (and is lost) with it.
//!
//! Qdrant being down never fails a write: the indexer retries from its watermark (see
//! `super::VectorIndexer`). Start-up does not wait for Qdrant either; the collections are made
//! on first contact.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qdrant_client::qdrant::{
    Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder,
    Distance, FieldType, Filter, GetPointsBuilder, KeywordIndexParamsBuilder, PointId, PointStruct,
    PointsIdsList, QueryPointsBuilder, Range, UpsertPointsBuilder, VectorParamsBuilder,
};
use qdrant_client::{Payload, Qdrant};
use sha2::{Digest, Sha256};

use super::{PointKind, VectorChange, VectorError, VectorFilter, VectorHit, VectorIndex};
use crate::config::VectorConfig;

/// Points per upsert request.
const UPSERT_BATCH: usize = 256;

pub struct QdrantIndex {
    client: Qdrant,
    collection: String,
    meta: String,
    node_id: u64,
    dimensions: usize,
    ready: AtomicBool,
    rt: tokio::runtime::Handle,
}

fn unavailable(e: impl std::fmt::Display) -> VectorError {
    VectorError::Unavailable(format!("qdrant: {e}"))
}

/// The point id of a memory: a UUID from SHA-256 of (tenant, seq).
pub fn point_id(tenant: &str, seq: u64) -> String {
    let mut h = Sha256::new();
    h.update((tenant.len() as u64).to_be_bytes());
    h.update(tenant.as_bytes());
    h.update(seq.to_be_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

impl QdrantIndex {
    /// A client for the configured server; nothing is contacted yet. Must be called inside a
    /// tokio runtime, whose handle the blocking calls use.
    pub fn new(
        config: &VectorConfig,
        node_id: u64,
        dimensions: usize,
    ) -> Result<Self, VectorError> {
        if config.qdrant_url.is_empty() {
            return Err(VectorError::Failed(
                "vector.backend = \"qdrant\" needs vector.qdrant_url (e.g. http://localhost:6334)"
                    .into(),
            ));
        }
        let key = std::env::var(&config.qdrant_api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let client = Qdrant::from_url(&config.qdrant_url)
            .api_key(key)
            .timeout(Duration::from_millis(config.qdrant_timeout_ms))
            .skip_compatibility_check()
            .build()
            .map_err(|e| VectorError::Failed(format!("qdrant client: {e}")))?;
        Ok(QdrantIndex {
            client,
            collection: config.qdrant_collection.clone(),
            meta: format!("{}_nexus_meta", config.qdrant_collection),
            node_id,
            dimensions,
            ready: AtomicBool::new(false),
            rt: tokio::runtime::Handle::current(),
        })
    }

    /// For the indexer's calls, on its own thread (never an async worker): waits for the
    /// server there, within the client's timeout.
    fn block_on<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, VectorError>>,
    ) -> Result<T, VectorError> {
        self.rt.block_on(f)
    }

    /// Creates the collections and payload indexes when missing.
    async fn ensure(&self) -> Result<(), VectorError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self
            .client
            .collection_exists(&self.collection)
            .await
            .map_err(unavailable)?
        {
            let made = self
                .client
                .create_collection(
                    CreateCollectionBuilder::new(&self.collection).vectors_config(
                        VectorParamsBuilder::new(self.dimensions as u64, Distance::Cosine),
                    ),
                )
                .await;
            // Another node may have made it meanwhile.
            if let Err(e) = made {
                if !self
                    .client
                    .collection_exists(&self.collection)
                    .await
                    .map_err(unavailable)?
                {
                    return Err(unavailable(e));
                }
            }
            self.client
                .create_field_index(
                    CreateFieldIndexCollectionBuilder::new(
                        &self.collection,
                        "tenant",
                        FieldType::Keyword,
                    )
                    .field_index_params(KeywordIndexParamsBuilder::default().is_tenant(true)),
                )
                .await
                .map_err(unavailable)?;
            for (field, kind) in [
                ("kind", FieldType::Keyword),
                ("scope", FieldType::Keyword),
                ("created_at_ms", FieldType::Integer),
            ] {
                self.client
                    .create_field_index(CreateFieldIndexCollectionBuilder::new(
                        &self.collection,
                        field,
                        kind,
                    ))
                    .await
                    .map_err(unavailable)?;
            }
        }
        if !self
            .client
            .collection_exists(&self.meta)
            .await
            .map_err(unavailable)?
        {
            let made = self
                .client
                .create_collection(
                    CreateCollectionBuilder::new(&self.meta)
                        .vectors_config(VectorParamsBuilder::new(1, Distance::Dot)),
                )
                .await;
            if let Err(e) = made {
                if !self
                    .client
                    .collection_exists(&self.meta)
                    .await
                    .map_err(unavailable)?
                {
                    return Err(unavailable(e));
                }
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn set_watermark(&self, watermark: u64) -> Result<(), VectorError> {
        let payload = Payload::try_from(serde_json::json!({ "watermark": watermark }))
            .map_err(|e| VectorError::Failed(e.to_string()))?;
        self.client
            .upsert_points(
                UpsertPointsBuilder::new(
                    &self.meta,
                    vec![PointStruct::new(self.node_id, vec![1.0f32], payload)],
                )
                .wait(true),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[tonic::async_trait]
impl VectorIndex for QdrantIndex {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    fn durable_watermark(&self) -> Result<u64, VectorError> {
        self.block_on(async {
            self.ensure().await?;
            let got = self
                .client
                .get_points(
                    GetPointsBuilder::new(&self.meta, vec![PointId::from(self.node_id)])
                        .with_payload(true),
                )
                .await
                .map_err(unavailable)?;
            Ok(got
                .result
                .first()
                .and_then(|p| p.payload.get("watermark"))
                .and_then(|v| v.as_integer())
                .map_or(0, |w| w.max(0) as u64))
        })
    }

    fn apply(&self, changes: &[VectorChange], upto: u64) -> Result<(), VectorError> {
        self.block_on(async {
            self.ensure().await?;
            let mut upserts = Vec::new();
            let mut deletes: Vec<PointId> = Vec::new();
            // In order: a run of upserts, then a run of deletes, and so on, so that a later
            // change to the same point wins.
            for change in changes {
                let by_filter = match change {
                    VectorChange::DeleteScope {
                        tenant,
                        kind,
                        scope,
                    } => Some(Filter::must([
                        Condition::matches("tenant", tenant.clone()),
                        Condition::matches("kind", kind.name().to_string()),
                        Condition::matches("scope", scope.clone()),
                    ])),
                    VectorChange::DeleteTenant { tenant } => Some(Filter::must([
                        Condition::matches("tenant", tenant.clone()),
                    ])),
                    _ => None,
                };
                if let Some(filter) = by_filter {
                    if !upserts.is_empty() {
                        self.upsert(std::mem::take(&mut upserts)).await?;
                    }
                    if !deletes.is_empty() {
                        self.delete(std::mem::take(&mut deletes)).await?;
                    }
                    self.client
                        .delete_points(
                            DeletePointsBuilder::new(&self.collection)
                                .points(filter)
                                .wait(true),
                        )
                        .await
                        .map_err(unavailable)?;
                    continue;
                }
                match change {
                    VectorChange::Upsert(p) => {
                        if !deletes.is_empty() {
                            self.delete(std::mem::take(&mut deletes)).await?;
                        }
                        if p.vector.len() != self.dimensions {
                            tracing::warn!(tenant = %p.tenant, seq = p.seq, "skipping a vector of another embedding model");
                            continue;
                        }
                        let payload = Payload::try_from(serde_json::json!({
                            "tenant": p.tenant, "seq": p.seq, "kind": p.kind.name(),
                            "scope": p.scope, "created_at_ms": p.created_at_ms,
                        }))
                        .map_err(|e| VectorError::Failed(e.to_string()))?;
                        upserts.push(PointStruct::new(
                            point_id(&p.tenant, p.seq),
                            p.vector.clone(),
                            payload,
                        ));
                        if upserts.len() == UPSERT_BATCH {
                            self.upsert(std::mem::take(&mut upserts)).await?;
                        }
                    }
                    VectorChange::Delete { tenant, seq } => {
                        if !upserts.is_empty() {
                            self.upsert(std::mem::take(&mut upserts)).await?;
                        }
                        deletes.push(PointId::from(point_id(tenant, *seq)));
                    }
                    VectorChange::DeleteScope { .. } | VectorChange::DeleteTenant { .. } => {
                        unreachable!("handled above")
                    }
                }
            }
            if !upserts.is_empty() {
                self.upsert(upserts).await?;
            }
            if !deletes.is_empty() {
                self.delete(deletes).await?;
            }
            self.set_watermark(upto).await
        })
    }

    fn persist(&self) -> Result<(), VectorError> {
        // Every apply was acknowledged with `wait`, its watermark too.
        Ok(())
    }

    fn clear(&self) -> Result<(), VectorError> {
        self.block_on(async {
            self.ensure().await?;
            // Only this cluster's points would be right to delete, but the collection is the
            // cluster's: drop it and make it again.
            self.client
                .delete_collection(&self.collection)
                .await
                .map_err(unavailable)?;
            self.ready.store(false, Ordering::Release);
            self.ensure().await?;
            self.set_watermark(0).await
        })
    }

    /// Awaits the client on the request's task: no thread is held while Qdrant answers.
    async fn search(
        &self,
        tenant: &str,
        query: &[f32],
        k: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<VectorHit>, VectorError> {
        {
            self.ensure().await?;
            let mut must = vec![Condition::matches("tenant", tenant.to_string())];
            if let Some(kind) = filter.kind {
                must.push(Condition::matches("kind", kind.name().to_string()));
            }
            if let Some(scope) = &filter.scope {
                must.push(Condition::matches("scope", scope.clone()));
            }
            if filter.since_ms != 0 || filter.until_ms != 0 {
                must.push(Condition::range(
                    "created_at_ms",
                    Range {
                        gte: (filter.since_ms != 0).then_some(filter.since_ms as f64),
                        lt: (filter.until_ms != 0).then_some(filter.until_ms as f64),
                        ..Default::default()
                    },
                ));
            }
            let found = self
                .client
                .query(
                    QueryPointsBuilder::new(&self.collection)
                        .query(query.to_vec())
                        .filter(Filter::must(must))
                        .limit(k as u64)
                        .with_payload(true),
                )
                .await
                .map_err(unavailable)?;
            Ok(found
                .result
                .into_iter()
                .filter_map(|p| {
                    let seq = p.payload.get("seq")?.as_integer()?;
                    let kind = PointKind::parse(p.payload.get("kind")?.as_str()?)?;
                    Some(VectorHit {
                        seq: seq as u64,
                        kind,
                        similarity: p.score,
                    })
                })
                .collect())
        }
    }
}

impl QdrantIndex {
    async fn upsert(&self, points: Vec<PointStruct>) -> Result<(), VectorError> {
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn delete(&self, ids: Vec<PointId>) -> Result<(), VectorError> {
        self.client
            .delete_points(
                DeletePointsBuilder::new(&self.collection)
                    .points(PointsIdsList { ids })
                    .wait(true),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_stable_and_tenant_scoped() {
        assert_eq!(point_id("a", 1), point_id("a", 1));
        assert_ne!(point_id("a", 1), point_id("b", 1));
        assert_ne!(point_id("a", 1), point_id("a", 2));
        // No ambiguity between a tenant's name and the number that follows it.
        assert_ne!(point_id("a1", 1), point_id("a", 11));
        assert!(uuid::Uuid::parse_str(&point_id("t", 9)).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_server_is_unavailable_not_fatal() {
        let config = VectorConfig {
            backend: "qdrant".into(),
            qdrant_url: "http://127.0.0.1:9".into(),
            qdrant_timeout_ms: 500,
            ..VectorConfig::default()
        };
        let index = QdrantIndex::new(&config, 1, 4).unwrap();
        let result = tokio::task::spawn_blocking(move || index.durable_watermark())
            .await
            .unwrap();
        assert!(
            matches!(result, Err(VectorError::Unavailable(_))),
            "{result:?}"
        );
        let missing = VectorConfig {
            backend: "qdrant".into(),
            ..VectorConfig::default()
        };
        let err = QdrantIndex::new(&missing, 1, 4).err().unwrap();
        assert!(err.to_string().contains("vector.qdrant_url"));
    }
}
