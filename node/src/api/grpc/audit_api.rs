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
            let tenant = (!p.grants.is_root()).then_some(p.tenant.as_str());
            let records = if r.after_seq == 0 {
                audit::tail(&self.node.store, limit, tenant)?
            } else {
                audit::read(&self.node.store, r.after_seq, limit, tenant)?
            };
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
            let v = audit::verify(&self.node.store)?;
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
