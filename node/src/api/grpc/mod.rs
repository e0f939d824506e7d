//! The public gRPC services of `nexus.v1`.

mod audit_api;
mod convert;
mod events_api;
mod hooks_api;
mod iam;
mod schedules_api;
mod secrets;
mod services;
mod tools_api;
mod workflows_api;

use std::future::Future;
use std::time::Instant;

pub use audit_api::AuditApi;
pub use events_api::EventsApi;
pub use hooks_api::HooksApi;
pub use iam::IamApi;
pub use schedules_api::SchedulesApi;
pub use secrets::SecretsApi;
pub use services::{ClusterApi, ConversationApi, MemoryApi, SearchApi};
pub use tools_api::ToolsApi;
pub use workflows_api::WorkflowsApi;

use crate::auth::AuthHandle;
use crate::cluster::ReadConsistency;
use crate::error::NexusError;
use crate::observe::metrics;
use crate::service::Caller;
use nexus_proto::v1::Consistency;

/// Metadata key that carries the leader's address on an Unavailable reply.
pub const LEADER_ADDR_METADATA: &str = "x-nexus-leader-addr";

/// The one mapping from domain errors to gRPC statuses.
pub fn to_status(e: NexusError) -> tonic::Status {
    use tonic::{Code, Status};
    match e {
        NexusError::InvalidArgument { .. } => Status::new(Code::InvalidArgument, e.to_string()),
        NexusError::NotFound(m) => Status::not_found(m),
        NexusError::AlreadyExists(m) => Status::already_exists(m),
        NexusError::FailedPrecondition { .. } => Status::failed_precondition(e.to_string()),
        NexusError::ResourceExhausted { .. } => Status::resource_exhausted(e.to_string()),
        NexusError::Unavailable {
            message,
            leader_addr,
            ..
        } => {
            let mut status = Status::unavailable(message);
            if let Some(addr) = leader_addr.and_then(|a| a.parse().ok()) {
                status.metadata_mut().insert(LEADER_ADDR_METADATA, addr);
            }
            status
        }
        NexusError::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            Status::internal(m)
        }
        NexusError::Unauthenticated(m) => Status::unauthenticated(m),
        NexusError::PermissionDenied(m) => Status::permission_denied(m),
    }
}

pub fn consistency(value: i32) -> Result<ReadConsistency, NexusError> {
    match Consistency::try_from(value) {
        Ok(Consistency::Unspecified | Consistency::Linearizable) => {
            Ok(ReadConsistency::Linearizable)
        }
        Ok(Consistency::Stale) => Ok(ReadConsistency::Stale),
        Err(_) => Err(NexusError::invalid(
            "consistency",
            format!("{value} is not a Consistency value"),
        )),
    }
}

/// Metadata key of the request id on every reply (also in the audit log).
pub const REQUEST_ID_METADATA: &str = "x-request-id";

/// Runs one handler: checks its permission, hands it its [`Caller`] (the principal, and the
/// audit context and credential its writes are made with), records a denial, times and
/// counts it, and maps its error. Every reply carries the request id.
pub async fn handle<Req, Resp, F, Fut>(
    method: &'static str,
    request: tonic::Request<Req>,
    f: F,
) -> Result<tonic::Response<Resp>, tonic::Status>
where
    F: FnOnce(Caller, Req) -> Fut,
    Fut: Future<Output = Result<Resp, NexusError>>,
{
    handle_on(method, String::new(), request, f).await
}

/// [`handle`] for a method whose permission names what it acts on (`tools.call` on a tool:
/// `tools:call:NAME`).
pub async fn handle_on<Req, Resp, F, Fut>(
    method: &'static str,
    target: String,
    request: tonic::Request<Req>,
    f: F,
) -> Result<tonic::Response<Resp>, tonic::Status>
where
    F: FnOnce(Caller, Req) -> Fut,
    Fut: Future<Output = Result<Resp, NexusError>>,
{
    let started = Instant::now();
    let request_id = uuid::Uuid::now_v7().to_string();
    let auth = request.extensions().get::<AuthHandle>().cloned();
    let admitted = super::gate::admit(super::gate::Knock {
        auth: auth.as_ref().map(|h| &h.auth),
        metadata: request.metadata(),
        source: request.remote_addr().map(|a| a.ip()),
        method,
        target: &target,
        request_id: &request_id,
    })
    .await;
    let result = match admitted {
        Ok(caller) => f(caller, request.into_inner()).await.map_err(to_status),
        Err(e) => Err(to_status(e)),
    };
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    metrics::GRPC_REQUESTS
        .with_label_values(&[method, &format!("{code:?}")])
        .inc();
    metrics::GRPC_SECONDS
        .with_label_values(&[method])
        .observe(started.elapsed().as_secs_f64());
    let mut out = result.map(tonic::Response::new);
    if let Ok(id) = request_id.parse::<tonic::metadata::MetadataValue<_>>() {
        match &mut out {
            Ok(r) => r.metadata_mut().insert(REQUEST_ID_METADATA, id),
            Err(s) => s.metadata_mut().insert(REQUEST_ID_METADATA, id),
        };
    }
    out
}
