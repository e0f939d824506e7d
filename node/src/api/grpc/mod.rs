//! The public gRPC services of `nexus.v1`.

mod audit_api;
mod convert;
mod iam;
mod secrets;
mod services;
mod tools_api;

use std::future::Future;
use std::time::Instant;

pub use audit_api::AuditApi;
pub use iam::IamApi;
pub use secrets::SecretsApi;
pub use services::{ClusterApi, ConversationApi, MemoryApi, SearchApi};
pub use tools_api::ToolsApi;

use crate::audit::{self, AuditContext};
use crate::auth::{AuthHandle, Principal};
use crate::cluster::ReadConsistency;
use crate::error::{code_of, NexusError};
use crate::iam::rbac;
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

/// The principal the authentication interceptor stored, if it may call `method` (on
/// `target`, for a method whose permission names one: `tools:call:NAME`): the one place
/// where permissions are checked. A request that reached a handler without passing the
/// interceptor is refused (fail closed).
pub fn authorize(
    method: &str,
    target: &str,
    principal: &Result<Principal, NexusError>,
) -> Result<Principal, NexusError> {
    let principal = principal.clone()?;
    rbac::authorize(method, target, &principal)?;
    Ok(principal)
}

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
    let caller = request.extensions().get::<AuthHandle>().cloned();
    // The bearer credential, handed to the leader with what this request proposes so that
    // the leader authenticates the caller itself (cluster::ForwardGate).
    let credential = crate::auth::bearer_token(request.metadata()).map(str::to_string);
    let mut context = AuditContext {
        request_id: request_id.clone(),
        principal: "anonymous".into(),
        tenant: String::new(),
        action: method.into(),
        at_ms: crate::memory::now_ms(),
    };
    let source = request.remote_addr().map(|a| a.ip());
    let mut principal = match &caller {
        Some(c) => match c.auth.preflight(request.metadata(), source) {
            Ok(()) => c.auth.authenticate(request.metadata()).await,
            Err(e) => Err(e),
        },
        None => Err(NexusError::Unauthenticated(
            "the request was not authenticated".into(),
        )),
    };
    let mut authorized = authorize(method, &target, &principal);
    // Identities are read from this node's state machine, which may not yet hold a key,
    // role or binding just made through another node. Before refusing, catch up with the
    // leader's commit index (a read index) and look again: a client may use a key at once
    // on any node. Only refusals pay for this.
    if let (Some(c), Err(NexusError::Unauthenticated(_) | NexusError::PermissionDenied(_))) =
        (&caller, &authorized)
    {
        if c.auth.enabled() && request.metadata().contains_key("authorization") {
            let caught_up = c
                .node()
                .read_barrier(crate::cluster::ReadConsistency::Linearizable)
                .await;
            if caught_up.is_ok() {
                principal = c.auth.authenticate(request.metadata()).await;
                authorized = authorize(method, &target, &principal);
            }
        }
    }
    if let (Some(c), Err(NexusError::Unauthenticated(_))) = (&caller, &principal) {
        c.auth.failed(source);
    }
    // A login: a credential's first successful authentication here in a while (permitted or
    // not). Recorded aside, like a denial, without holding up the request.
    if let (Some(c), Ok(p)) = (&caller, &principal) {
        if p.subject != crate::auth::LOCAL_SUBJECT {
            if let Some(which) = c.auth.login(request.metadata()) {
                let node = c.node().clone();
                let mut login = context.clone();
                login.action = "auth.login".into();
                login.principal = p.subject.clone();
                login.tenant = p.tenant.clone();
                let login = crate::command::OnBehalf {
                    context: login,
                    credential: credential.clone(),
                };
                tokio::spawn(async move {
                    let tenant = login.context.tenant.clone();
                    if let Err(err) =
                        crate::service::audit::record(&node, &tenant, login, which, "ok".into())
                            .await
                    {
                        tracing::warn!(error = %err, "recording a login in the audit log");
                    }
                });
            }
        }
    }
    // Over its tenant's rate: refused before anything runs (counted with the denials).
    let admitted = match (&caller, &authorized) {
        (Some(c), Ok(p)) => c.auth.admit(p),
        _ => Ok(()),
    };
    let result = match admitted.and(authorized) {
        // Without authentication (one local user, loopback only) nothing is audited.
        Ok(principal) if principal.subject == crate::auth::LOCAL_SUBJECT => {
            f(Caller::new(principal, None), request.into_inner())
                .await
                .map_err(to_status)
        }
        Ok(principal) => {
            context.principal = principal.subject.clone();
            context.tenant = principal.tenant.clone();
            let on_behalf = crate::command::OnBehalf {
                context,
                credential,
            };
            f(
                Caller::new(principal, Some(on_behalf)),
                request.into_inner(),
            )
            .await
            .map_err(to_status)
        }
        Err(e) => {
            // Counted, and audited as one record per group and window: a refusal is no
            // replicated write of its own (service::denials).
            if let Some(caller) = caller.filter(|c| c.auth.enabled()) {
                let delay = caller.auth.refusal_delay(&e);
                let (who, tenant) = match &principal {
                    Ok(p) => (p.subject.clone(), p.tenant.clone()),
                    Err(_) => ("anonymous".to_string(), String::new()),
                };
                caller.auth.denials().note(crate::service::denials::Denial {
                    principal: who,
                    tenant,
                    source,
                    action: method.into(),
                    code: format!("{:?}", code_of(&e)),
                    result: audit::result_text::<()>(&Err(e.clone())),
                    credential,
                });
                // Held, not computed: a sleeping task costs the node nothing, and a flood
                // that waits for each answer is slowed to a few requests per second per
                // stream (streams per connection are bounded too).
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
            }
            Err(to_status(e))
        }
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
