//! AuditService over gRPC.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};

use super::handle;
use crate::audit::{self, AuditRecord, Chain};
use crate::cluster::ReadConsistency;
use crate::command::Cluster;
use crate::error::NexusError;
use crate::iam::principal::Principal;
use crate::memory::validate;
use crate::store::Store;

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
        incarnation: r.incarnation,
        prev_seq: r.prev_seq,
        prev_hash: r.prev_hash,
    }
}

/// The chains a principal may read: root every chain (or every chain of `tenant` when
/// named); anyone else their own tenant's current chain.
fn visible_chains(store: &Store, p: &Principal, tenant: &str) -> Result<Vec<Chain>, NexusError> {
    if p.grants.is_root() {
        return Ok(audit::chains(store)?
            .into_iter()
            .map(|(c, _)| c)
            .filter(|c| tenant.is_empty() || c.tenant == tenant)
            .collect());
    }
    if !tenant.is_empty() && tenant != p.tenant {
        return Err(NexusError::PermissionDenied(format!(
            "{} of tenant {} cannot read tenant {tenant}'s audit records",
            p.subject, p.tenant
        )));
    }
    Ok(vec![Chain {
        tenant: p.tenant.clone(),
        incarnation: audit::incarnation(store, &p.tenant)?,
    }])
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
            let store = self.node.store.clone();
            let principal: Principal = (*p).clone();
            let records = crate::store::blocking(move || {
                let chains = visible_chains(&store, &principal, &r.tenant)?;
                let records = if r.after_seq == 0 {
                    audit::tail(&store, &chains, limit)
                } else {
                    audit::read(&store, &chains, r.after_seq, limit)
                };
                records.map_err(NexusError::from)
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
        handle("audit.verify", request, |p, _| async move {
            self.node
                .read_barrier(ReadConsistency::Linearizable)
                .await?;
            // The chains are read and hashed: off the async workers.
            let store = self.node.store.clone();
            let principal: Principal = (*p).clone();
            let v = crate::store::blocking(move || {
                let mine = visible_chains(&store, &principal, "")?;
                let only = (!principal.grants.is_root()).then(|| mine[0].clone());
                audit::verify(&store, only.as_ref()).map_err(NexusError::from)
            })
            .await?;
            let (broken_at, problem) = v.problem.unwrap_or((0, String::new()));
            Ok(pb::AuditVerifyResponse {
                intact: problem.is_empty(),
                records: v.records,
                chains: v.chains,
                broken_at,
                problem,
            })
        })
        .await
    }
}
