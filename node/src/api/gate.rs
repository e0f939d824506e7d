//! The one admission path of the public edges (gRPC and `/mcp` alike): a request's
//! credential is checked before anything it asks for runs, and a refusal is counted and slowed
//! the same way whichever edge it came through.
//!
//! In order: the source's brute-force preflight; authentication; the method's permission
//! (`rbac::authorize`), after a read index when the node may be behind a key or binding made
//! elsewhere; a failed authentication counted against the source; a login recorded aside; the
//! tenant's rate; and the [`Caller`] made with the audit context and credential its writes are
//! proposed with. A refusal is noted with the denials (`service::denials`: one audit record
//! per group and window, not a write per request) and held for the refusal delay.

use std::net::IpAddr;
use std::sync::Arc;

use tonic::metadata::MetadataMap;

use crate::audit::{self, AuditContext};
use crate::auth::{Authenticator, Principal};
use crate::error::{code_of, NexusError};
use crate::iam::rbac;
use crate::service::Caller;

/// The principal, if it may call `method` (on `target`, for a method whose permission names
/// one: `tools:call:NAME`). A request that reached a handler without passing authentication is
/// refused (fail closed).
fn authorize(
    method: &str,
    target: &str,
    principal: &Result<Principal, NexusError>,
) -> Result<Principal, NexusError> {
    let principal = principal.clone()?;
    rbac::authorize(method, target, &principal)?;
    Ok(principal)
}

/// One request at the gate: its metadata (headers), where it came from and what it asks.
pub struct Knock<'a> {
    /// None when the edge runs without the authentication layer (refused).
    pub auth: Option<&'a Arc<Authenticator>>,
    pub metadata: &'a MetadataMap,
    pub source: Option<IpAddr>,
    pub method: &'static str,
    pub target: &'a str,
    pub request_id: &'a str,
}

/// Admits the request as a [`Caller`], or refuses it (the refusal noted and held).
pub async fn admit(k: Knock<'_>) -> Result<Caller, NexusError> {
    // The bearer credential, handed to the leader with what this request proposes so that
    // the leader authenticates the caller itself (cluster::ForwardGate).
    let credential = crate::auth::bearer_token(k.metadata).map(str::to_string);
    let mut principal = match k.auth {
        Some(auth) => match auth.preflight(k.metadata, k.source) {
            Ok(()) => auth.authenticate(k.metadata).await,
            Err(e) => Err(e),
        },
        None => Err(NexusError::Unauthenticated(
            "the request was not authenticated".into(),
        )),
    };
    let mut authorized = authorize(k.method, k.target, &principal);
    // Identities are read from this node's state machine, which may not yet hold a key,
    // role or binding just made through another node. Before refusing, catch up with the
    // leader's commit index (a read index) and look again: a client may use a key at once
    // on any node. Only refusals pay for this.
    if let (Some(auth), Err(NexusError::Unauthenticated(_) | NexusError::PermissionDenied(_))) =
        (k.auth, &authorized)
    {
        if auth.enabled() && k.metadata.contains_key("authorization") {
            let caught_up = auth
                .node()
                .read_barrier(crate::cluster::ReadConsistency::Linearizable)
                .await;
            if caught_up.is_ok() {
                principal = auth.authenticate(k.metadata).await;
                authorized = authorize(k.method, k.target, &principal);
            }
        }
    }
    let Some(auth) = k.auth else {
        return authorized.map(|p| Caller::new(p, None));
    };
    if let Err(NexusError::Unauthenticated(_)) = &principal {
        auth.failed(k.source);
    }
    // A login: a credential's first successful authentication here in a while (permitted or
    // not). Recorded aside, like a denial, without holding up the request.
    if let Ok(p) = &principal {
        if p.subject != crate::auth::LOCAL_SUBJECT {
            if let Some(which) = auth.login(k.metadata) {
                let node = auth.node().clone();
                let login = crate::command::OnBehalf {
                    context: AuditContext {
                        request_id: k.request_id.to_string(),
                        principal: p.subject.clone(),
                        tenant: p.tenant.clone(),
                        action: "auth.login".into(),
                        at_ms: crate::memory::now_ms(),
                    },
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
    let admitted = match &authorized {
        Ok(p) => auth.admit(p).and(authorized),
        Err(_) => authorized,
    };
    match admitted {
        // Without authentication (one local user, loopback only) nothing is audited.
        Ok(p) if p.subject == crate::auth::LOCAL_SUBJECT => Ok(Caller::new(p, None)),
        Ok(p) => {
            let context = AuditContext {
                request_id: k.request_id.to_string(),
                principal: p.subject.clone(),
                tenant: p.tenant.clone(),
                action: k.method.into(),
                at_ms: crate::memory::now_ms(),
            };
            Ok(Caller::new(
                p,
                Some(crate::command::OnBehalf {
                    context,
                    credential,
                }),
            ))
        }
        Err(e) => {
            let (who, tenant) = match &principal {
                Ok(p) => (p.subject.as_str(), p.tenant.as_str()),
                Err(_) => ("anonymous", ""),
            };
            Err(refuse(auth, who, tenant, k.source, k.method, e, credential).await)
        }
    }
}

/// Notes a refusal with the denials (one audit record per group and window) and holds it for
/// the refusal delay; gives the error back to be answered with. Also for a refusal found after
/// admission (an MCP tool call whose `tools:call:NAME` the caller lacks).
pub async fn refuse(
    auth: &Authenticator,
    principal: &str,
    tenant: &str,
    source: Option<IpAddr>,
    action: &str,
    e: NexusError,
    credential: Option<String>,
) -> NexusError {
    if !auth.enabled() {
        return e;
    }
    let delay = auth.refusal_delay(&e);
    auth.denials().note(crate::service::denials::Denial {
        principal: principal.into(),
        tenant: tenant.into(),
        source,
        action: action.into(),
        code: format!("{:?}", code_of(&e)),
        result: audit::result_text::<()>(&Err(e.clone())),
        credential,
    });
    // Held, not computed: a sleeping task costs the node nothing, and a flood that waits for
    // each answer is slowed to a few requests per second per stream (streams per connection
    // are bounded too).
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    e
}
