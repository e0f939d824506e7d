//! HookService over gRPC.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::hook_service_server::HookService as HookServiceRpc;
use tonic::{Request, Response, Status};

use super::schedules_api::{retry_pb, retry_policy};
use super::{consistency, handle};
use crate::error::NexusError;
use crate::hooks::{Delivery, HookRecord, Inbound, Target};
use crate::service::hooks::{HookInput, HookService};

pub struct HooksApi {
    pub hooks: Arc<HookService>,
}

fn hook(h: HookRecord) -> pb::Hook {
    pb::Hook {
        name: h.name,
        description: h.description,
        topics: h.topics,
        target: Some(match h.target {
            Target::Tool { tool, args } => pb::hook::Target::Tool(pb::HookTool { tool, args }),
            Target::Webhook { url, secret } => {
                pb::hook::Target::Webhook(pb::HookWebhook { url, secret })
            }
        }),
        retry: Some(retry_pb(&h.retry)),
        keep_deliveries: h.keep_deliveries,
        paused: h.paused,
        start_after: 0,
        owner: h.owner,
        cursor: h.cursor,
        delivering: h.head,
        delivered: h.delivered,
        dead: h.dead,
        created_at_ms: h.created_at_ms,
        updated_at_ms: h.updated_at_ms,
    }
}

fn delivery(d: Delivery) -> pb::Delivery {
    pb::Delivery {
        id: d.id(),
        state: d.state.name().into(),
        hook: d.hook,
        seq: d.seq,
        topic: d.topic,
        attempt: d.attempt,
        node: d.node,
        first_started_ms: d.first_started_ms,
        started_ms: d.started_ms,
        finished_ms: d.finished_ms,
        output: d.output,
        error: d.error,
        retry_at_ms: d.retry_at_ms,
        interrupted: d.interrupted,
        replayed: d.replayed,
    }
}

fn inbound(tenant: &str, i: Inbound) -> pb::Inbound {
    pb::Inbound {
        path: format!("/hooks/{tenant}/{}", i.name),
        name: i.name,
        description: i.description,
        topic: i.topic,
        secret: i.secret,
        owner: i.owner,
        received: i.received,
        created_at_ms: i.created_at_ms,
    }
}

fn input(h: pb::Hook) -> Result<HookInput, NexusError> {
    let target = match h.target {
        Some(pb::hook::Target::Tool(t)) => Target::Tool {
            tool: t.tool,
            args: if t.args.trim().is_empty() {
                "{}".into()
            } else {
                t.args
            },
        },
        Some(pb::hook::Target::Webhook(w)) => Target::Webhook {
            url: w.url,
            secret: w.secret,
        },
        None => {
            return Err(NexusError::invalid(
                "target",
                "is required: tool (a trigger) or webhook",
            ))
        }
    };
    Ok(HookInput {
        name: h.name,
        description: h.description,
        topics: h.topics,
        target,
        retry: retry_policy(h.retry),
        keep_deliveries: h.keep_deliveries,
        paused: h.paused,
        start_after: (h.start_after > 0).then_some(h.start_after),
    })
}

#[tonic::async_trait]
impl HookServiceRpc for HooksApi {
    async fn put_hook(&self, request: Request<pb::Hook>) -> Result<Response<pb::Hook>, Status> {
        handle("hooks.put", request, |caller, req| async move {
            self.hooks.put(&caller, input(req)?, false).await.map(hook)
        })
        .await
    }

    async fn update_hook(&self, request: Request<pb::Hook>) -> Result<Response<pb::Hook>, Status> {
        handle("hooks.put", request, |caller, req| async move {
            self.hooks.put(&caller, input(req)?, true).await.map(hook)
        })
        .await
    }

    async fn get_hook(
        &self,
        request: Request<pb::GetHookRequest>,
    ) -> Result<Response<pb::Hook>, Status> {
        handle("hooks.get", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            self.hooks.get(&caller.tenant, &req.name, c).await.map(hook)
        })
        .await
    }

    async fn list_hooks(
        &self,
        request: Request<pb::ListHooksRequest>,
    ) -> Result<Response<pb::ListHooksResponse>, Status> {
        handle("hooks.list", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            let all = self.hooks.list(&caller.tenant, c).await?;
            Ok(pb::ListHooksResponse {
                hooks: all.into_iter().map(hook).collect(),
            })
        })
        .await
    }

    async fn delete_hook(
        &self,
        request: Request<pb::GetHookRequest>,
    ) -> Result<Response<pb::DeleteHookResponse>, Status> {
        handle("hooks.delete", request, |caller, req| async move {
            self.hooks.delete(&caller, &req.name).await?;
            Ok(pb::DeleteHookResponse {})
        })
        .await
    }

    async fn pause_hook(
        &self,
        request: Request<pb::GetHookRequest>,
    ) -> Result<Response<pb::Hook>, Status> {
        handle("hooks.pause", request, |caller, req| async move {
            self.hooks
                .set_paused(&caller, &req.name, true)
                .await
                .map(hook)
        })
        .await
    }

    async fn resume_hook(
        &self,
        request: Request<pb::GetHookRequest>,
    ) -> Result<Response<pb::Hook>, Status> {
        handle("hooks.resume", request, |caller, req| async move {
            self.hooks
                .set_paused(&caller, &req.name, false)
                .await
                .map(hook)
        })
        .await
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        handle("hooks.deliveries", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            if req.limit > crate::hooks::MAX_KEEP_DELIVERIES {
                return Err(NexusError::invalid(
                    "limit",
                    format!(
                        "is {}; at most {}",
                        req.limit,
                        crate::hooks::MAX_KEEP_DELIVERIES
                    ),
                ));
            }
            let all = self
                .hooks
                .deliveries(&caller.tenant, &req.name, req.limit as usize, req.dead, c)
                .await?;
            Ok(pb::ListDeliveriesResponse {
                deliveries: all.into_iter().map(delivery).collect(),
            })
        })
        .await
    }

    async fn replay_delivery(
        &self,
        request: Request<pb::ReplayDeliveryRequest>,
    ) -> Result<Response<pb::Delivery>, Status> {
        handle("hooks.replay", request, |caller, req| async move {
            self.hooks
                .replay(&caller, &req.name, req.seq)
                .await
                .map(delivery)
        })
        .await
    }

    async fn put_inbound(
        &self,
        request: Request<pb::Inbound>,
    ) -> Result<Response<pb::Inbound>, Status> {
        handle("hooks.put_inbound", request, |caller, req| async move {
            let i = self
                .hooks
                .put_inbound(
                    &caller,
                    &req.name,
                    &req.description,
                    &req.topic,
                    &req.secret,
                )
                .await?;
            Ok(inbound(&caller.tenant, i))
        })
        .await
    }

    async fn list_inbound(
        &self,
        request: Request<pb::ListHooksRequest>,
    ) -> Result<Response<pb::ListInboundResponse>, Status> {
        handle("hooks.list_inbound", request, |caller, req| async move {
            let c = consistency(req.consistency)?;
            let all = self.hooks.inbounds(&caller.tenant, c).await?;
            Ok(pb::ListInboundResponse {
                inbound: all
                    .into_iter()
                    .map(|i| inbound(&caller.tenant, i))
                    .collect(),
            })
        })
        .await
    }

    async fn delete_inbound(
        &self,
        request: Request<pb::GetHookRequest>,
    ) -> Result<Response<pb::DeleteHookResponse>, Status> {
        handle("hooks.delete_inbound", request, |caller, req| async move {
            self.hooks.delete_inbound(&caller, &req.name).await?;
            Ok(pb::DeleteHookResponse {})
        })
        .await
    }
}
