//! The leader's check of what members forward (`cluster::ForwardGate`): a member of the
//! cluster (admitted to the peer port by its certificate) is trusted to carry requests, not
//! to speak for principals. A forwarded command comes with the bearer credential of the
//! request it serves; the leader authenticates that credential itself and checks the command
//! as the API would have checked the request:
//!
//! - a data or identity command needs a principal of its tenant (or root) that holds the
//!   command's permission (`rbac::permission_for_command`); the leader writes the audit
//!   context with the principal it found;
//! - an audit record of something that changed nothing (a denial, a login, a secret read)
//!   gets the principal the leader finds for its credential, or `anonymous` when there is
//!   none, whatever the member wrote;
//! - an `Op::Audited` is never forwarded: only the leader wraps a command with its record;
//! - without a credential only the TTL sweeper's purge passes (with authentication on).
//!
//! Without authentication (one user on loopback, nothing audited) every command passes but
//! the audit ones. Forwarded cluster changes (membership, leadership transfer) need a
//! credential holding `cluster:admin`, checked the same way.

use crate::audit::{AuditContext, AuditRecordOp};
use crate::cluster::ForwardGate;
use crate::command::{Command, Forwarded, Nexus, OnBehalf, Op};
use crate::error::NexusError;
use crate::iam::rbac;

use super::Authenticator;

/// Longest request id, action, resource or result a member may put in an audit record.
const MAX_RECORD_FIELD_CHARS: usize = 256;

fn bounded(text: &str) -> String {
    crate::error::excerpt(text, MAX_RECORD_FIELD_CHARS)
}

fn refused(why: impl Into<String>) -> NexusError {
    NexusError::PermissionDenied(format!("forwarded command refused: {}", why.into()))
}

#[tonic::async_trait]
impl ForwardGate<Nexus> for Authenticator {
    async fn admit_cluster_change(&self, on_behalf: Option<OnBehalf>) -> Result<(), NexusError> {
        if !self.enabled {
            return Ok(());
        }
        let token = on_behalf.and_then(|b| b.credential).ok_or_else(|| {
            refused("a cluster change needs the credential of the request behind it")
        })?;
        let principal = self.authenticate_token(&token).await?;
        principal
            .grants
            .require(&principal.subject, "cluster:admin")
    }

    async fn admit(&self, forwarded: Forwarded) -> Result<Command, NexusError> {
        let Forwarded { command, on_behalf } = forwarded;
        if matches!(command.op, Op::Audited { .. }) {
            return Err(refused(
                "it carries an audit record; the leader writes those",
            ));
        }
        if !self.enabled {
            if matches!(command.op, Op::Audit(_) | Op::AuditTrim(_)) {
                return Err(refused("nothing is audited without authentication"));
            }
            return Ok(command);
        }
        let Some(on_behalf) = on_behalf else {
            return match rbac::permission_for_command(command.op.name())? {
                None => Ok(command),
                Some(_) => Err(refused(format!(
                    "{} needs the credential of the request it serves",
                    command.op.name()
                ))),
            };
        };
        let principal = match &on_behalf.credential {
            Some(token) => self.authenticate_token(token).await,
            None => Err(NexusError::Unauthenticated("no credentials".into())),
        };
        // The member's context says which request and when; who acted is the leader's finding.
        let mut context = AuditContext {
            request_id: bounded(&on_behalf.context.request_id),
            principal: "anonymous".into(),
            tenant: String::new(),
            action: bounded(&on_behalf.context.action),
            at_ms: on_behalf.context.at_ms,
        };
        if let Op::Audit(record) = command.op {
            if let Ok(p) = &principal {
                context.principal = p.subject.clone();
                context.tenant = p.tenant.clone();
            }
            return Ok(Command {
                tenant: context.tenant.clone(),
                op: Op::Audit(AuditRecordOp {
                    context,
                    resource: bounded(&record.resource),
                    result: bounded(&record.result),
                }),
            });
        }
        let principal = principal?;
        principal.may_administer(&command.tenant)?;
        if let Some(permission) = rbac::permission_for_command(command.op.name())? {
            principal.grants.require(&principal.subject, permission)?;
        }
        if let Op::Iam(op) = &command.op {
            crate::iam::check_grantable(
                &self.store,
                &principal.subject,
                &principal.grants,
                &command.tenant,
                op,
            )?;
        }
        context.principal = principal.subject;
        context.tenant = principal.tenant;
        Ok(Command {
            tenant: command.tenant,
            op: Op::Audited {
                context,
                op: Box::new(command.op),
            },
        })
    }
}
