//! The public gRPC services of `nexus.v1`.

mod convert;
mod iam;
mod secrets;
mod services;

use std::future::Future;
use std::time::Instant;

pub use iam::IamApi;
pub use secrets::SecretsApi;
pub use services::{ClusterApi, ConversationApi, MemoryApi, SearchApi};

use crate::auth::Principal;
use crate::cluster::ReadConsistency;
use crate::error::NexusError;
use crate::iam::rbac;
use crate::observe::metrics;
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

/// The principal the authentication interceptor stored, if it may call `method`: the one
/// place where permissions are checked. A request that reached a handler without passing
/// the interceptor is refused (fail closed).
fn authorize<Req>(method: &str, request: &tonic::Request<Req>) -> Result<Principal, NexusError> {
    let Some(principal) = request.extensions().get::<Principal>() else {
        return Err(NexusError::Unauthenticated(
            "the request was not authenticated".into(),
        ));
    };
    if let Some(permission) = rbac::permission_for(method)? {
        principal.grants.require(&principal.subject, permission)?;
    }
    Ok(principal.clone())
}

/// Runs one handler: checks its permission, times and counts it, and maps its error.
pub async fn handle<Req, Resp, F, Fut>(
    method: &'static str,
    request: tonic::Request<Req>,
    f: F,
) -> Result<tonic::Response<Resp>, tonic::Status>
where
    F: FnOnce(Principal, Req) -> Fut,
    Fut: Future<Output = Result<Resp, NexusError>>,
{
    let started = Instant::now();
    let result = match authorize(method, &request) {
        Ok(principal) => f(principal, request.into_inner()).await.map_err(to_status),
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
    result.map(tonic::Response::new)
}
