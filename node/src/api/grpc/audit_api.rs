//! AuditService over gRPC.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::handle;
use crate::audit::{self, AuditRecord};
use crate::cluster::ReadConsistency;
use crate::command::Cluster;
use crate::memory::validate;

pub struct AuditApi {
    pub node: Arc<Cluster>,
    pub max_page_size: u32,
}

fn record(r: AuditRecord) -> pb::AuditRecord {
    pb::AuditRecord {
        seq: r.seq,
        at_ms: r.at_ms,
        request_id: r.request_id,
        principal: r.principal,
        tenant: r.tenant,
        action: r.action,
        resource: r.resource,
        result: r.result,
        hash: r.hash,
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn tail(
        &self,
        request: Request<pb::AuditTailRequest>,
    ) -> Result<Response<pb::AuditTailResponse>, Status> {
        handle("audit.tail", request, |p, r| async move {
            let limit = validate::count("limit", r.limit, 20, self.max_page_size)?;
            self.node
                .read_barrier(ReadConsistency::Linearizable)
                .await?;
            // Root sees every tenant's records (and those of unauthenticated callers).
            let tenant = (!p.grants.is_root()).then(|| p.tenant.clone());
            let store = self.node.store.clone();
            let records = crate::store::blocking(move || {
                let tenant = tenant.as_deref();
                if r.after_seq == 0 {
                    audit::tail(&store, limit, tenant)
                } else {
                    audit::read(&store, r.after_seq, limit, tenant)
                }
            })
            .await?;
            Ok(pb::AuditTailResponse {
                records: records.into_iter().map(record).collect(),
            })
        })
        .await
    }

    async fn verify(
        &self,
        request: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyResponse>, Status> {
        handle("audit.verify", request, |_, _| async move {
            self.node
                .read_barrier(ReadConsistency::Linearizable)
                .await?;
            // The whole chain is read and hashed: off the async workers.
            let store = self.node.store.clone();
            let v = crate::store::blocking(move || audit::verify(&store)).await?;
            let (broken_at, problem) = v.problem.unwrap_or((0, String::new()));
            Ok(pb::AuditVerifyResponse {
                intact: problem.is_empty(),
                records: v.records,
                broken_at,
                problem,
            })
        })
        .await
    }
}
