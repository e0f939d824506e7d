//! The node's services: what the API layer calls. Each validates a request, proposes the
//! commands it makes through the cluster (`command::propose`, on behalf of the request's
//! caller) and reads the state it needs after the read barrier the request asks for.
//!
//! The state they change is the state modules' (`memory`, `iam`, `secrets`, `audit`); the
//! services sit above `command`, which sits above those, so no module depends on one that
//! depends on it (`node/src/module_graph.rs`).

pub mod audit;
pub mod audit_retention;
pub mod automation;
pub mod conversations;
pub mod denials;
pub mod events;
pub mod hooks;
pub mod iam;
pub mod kv;
pub mod schedules;
pub mod secrets;
pub mod semantic;
pub mod tools;
pub mod workflows;

use crate::command::{OnBehalf, Scope};
use crate::iam::Principal;

/// Who a request acts as, and on whose behalf its writes are made (its audit context and
/// credential; None without authentication, or for the node itself). `api::grpc::handle`
/// makes one per request; it reads as the [`Principal`] it wraps.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub on_behalf: Option<OnBehalf>,
}

impl std::ops::Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl Caller {
    pub fn new(principal: Principal, on_behalf: Option<OnBehalf>) -> Self {
        Caller {
            principal,
            on_behalf,
        }
    }

    /// The node itself (start-up, sweepers, tests): every right, audited as nobody's.
    pub fn system() -> Self {
        Caller::new(Principal::local(), None)
    }

    /// Writes into the caller's own tenant.
    pub fn scope(&self) -> Scope {
        self.scope_in(&self.principal.tenant)
    }

    /// Writes into `tenant`, on the caller's behalf.
    pub fn scope_in(&self, tenant: &str) -> Scope {
        Scope {
            tenant: tenant.to_string(),
            on_behalf: self.on_behalf.clone(),
        }
    }
}
