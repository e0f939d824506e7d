//! Audit records of things that changed nothing: a secret read, a login, the denials of a
//! window (`service::denials`). A write's own record is made by the state machine with the
//! write (`command`).

use crate::audit::AuditRecordOp;
use crate::command::{Cluster, Command, OnBehalf, Op};
use crate::error::NexusError;

/// Proposes a record for `on_behalf.context` in `tenant` and waits for it to commit. On a
/// follower the leader re-derives the record's principal from `on_behalf.credential` (see
/// `auth::forward`): a member cannot put words in another principal's mouth.
pub async fn record(
    node: &Cluster,
    tenant: &str,
    on_behalf: OnBehalf,
    resource: String,
    result: String,
) -> Result<(), NexusError> {
    let command = Command {
        tenant: tenant.to_string(),
        op: Op::Audit(AuditRecordOp {
            context: on_behalf.context.clone(),
            resource,
            result,
        }),
    };
    node.propose(command, Some(on_behalf)).await.map(|_| ())
}
