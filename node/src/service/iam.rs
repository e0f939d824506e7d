//! The identity and access API of a node: validates, decides which tenant a request may act
//! on, and proposes `IamOp`s. Permissions (`iam:read`, `iam:write`, `tenants:admin`) are
//! checked before these run, in `api::grpc::handle`.

use std::sync::Arc;

use super::Caller;
use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply};
use crate::error::NexusError;
use crate::iam::principal::new_api_key;
use crate::iam::{
    self, rbac, validate_name, validate_principal, validate_tenant_id, ApiKeyRecord, BindingRecord,
    IamOp, IamReply, RoleRecord, TenantLimits, TenantRecord, TenantState,
};
use crate::memory::now_ms;
use crate::store::usage::{self, Usage};

/// Most permissions in one custom role, and roles named with one key.
const MAX_LIST: usize = 64;

/// A role as listed: built-in or custom.
pub struct RoleView {
    pub name: String,
    pub permissions: Vec<String>,
    pub builtin: bool,
}

pub struct IamService {
    node: Arc<Cluster>,
}

impl IamService {
    pub fn new(node: Arc<Cluster>) -> Self {
        Self { node }
    }

    /// The tenant a request acts on: the one it names, or the caller's own; another tenant
    /// only for the root principal.
    fn target(&self, p: &Caller, tenant: &str) -> Result<String, NexusError> {
        if tenant.is_empty() {
            return Ok(p.tenant.clone());
        }
        validate_tenant_id("tenant", tenant)?;
        p.may_administer(tenant)?;
        Ok(tenant.to_string())
    }

    /// Proposes an identity change. Changes that grant (a key's roles, a role's permissions,
    /// a binding) are first checked against what the caller holds, on a linearizable view of
    /// the roles they name (`iam::check_grantable`; the leader checks a forwarded one again).
    async fn propose_as(
        &self,
        p: &Caller,
        tenant: &str,
        op: IamOp,
    ) -> Result<IamReply, NexusError> {
        if matches!(
            op,
            IamOp::CreateKey { .. } | IamOp::PutRole { .. } | IamOp::CreateBinding { .. }
        ) && !p.grants.is_root()
        {
            self.read().await?;
            iam::check_grantable(&self.node.store, &p.subject, &p.grants, tenant, &op)?;
        }
        self.propose(p, tenant, op).await
    }

    /// Proposes an identity change in `tenant`, audited as `p`'s.
    async fn propose(&self, p: &Caller, tenant: &str, op: IamOp) -> Result<IamReply, NexusError> {
        match command::propose(&self.node, &p.scope_in(tenant), Op::Iam(op)).await? {
            Reply::Iam(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    async fn read(&self) -> Result<(), NexusError> {
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await
            .map(|_| ())
    }

    pub async fn create_tenant(
        &self,
        p: &Caller,
        id: &str,
        display_name: &str,
    ) -> Result<TenantRecord, NexusError> {
        validate_tenant_id("id", id)?;
        if display_name.len() > 256 {
            return Err(NexusError::invalid(
                "display_name",
                "is longer than 256 bytes",
            ));
        }
        match self
            .propose(
                p,
                id,
                IamOp::CreateTenant {
                    display_name: display_name.to_string(),
                    now_ms: now_ms(),
                },
            )
            .await?
        {
            IamReply::Tenant(t) => Ok(t),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantRecord>, NexusError> {
        self.read().await?;
        Ok(iam::tenants(&self.node.store)?)
    }

    pub async fn set_tenant_state(
        &self,
        p: &Caller,
        id: &str,
        state: TenantState,
    ) -> Result<TenantRecord, NexusError> {
        validate_tenant_id("id", id)?;
        match self.propose(p, id, IamOp::SetTenantState { state }).await? {
            IamReply::Tenant(t) => Ok(t),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sets a tenant's quotas; returns its usage and the new limits.
    pub async fn set_tenant_limits(
        &self,
        p: &Caller,
        id: &str,
        limits: TenantLimits,
    ) -> Result<(Usage, TenantLimits), NexusError> {
        validate_tenant_id("id", id)?;
        if !(limits.requests_per_second.is_finite() && limits.requests_per_second >= 0.0) {
            return Err(NexusError::invalid(
                "limits.requests_per_second",
                "must be a number of at least 0 (0 = the node's setting)",
            ));
        }
        if limits.burst > 0 && limits.requests_per_second == 0.0 {
            return Err(NexusError::invalid(
                "limits.burst",
                "needs limits.requests_per_second",
            ));
        }
        match self
            .propose(p, id, IamOp::SetTenantLimits { limits })
            .await?
        {
            IamReply::Limits(l) => Ok((usage::read(&self.node.store, id)?, l)),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// A tenant's usage and limits (linearizable).
    pub async fn usage(
        &self,
        p: &Caller,
        tenant: &str,
    ) -> Result<(String, Usage, TenantLimits), NexusError> {
        let t = self.target(p, tenant)?;
        self.read().await?;
        if iam::tenant(&self.node.store, &t)?.is_none() && t != iam::DEFAULT_TENANT {
            return Err(NexusError::NotFound(format!("tenant {t} not found")));
        }
        let u = usage::read(&self.node.store, &t)?;
        let l = iam::limits(&self.node.store, &t)?;
        Ok((t, u, l))
    }

    /// The tenant's audit records and their bytes (its current incarnation's chain), read
    /// locally: bounded by the node's retention, not by the tenant's quotas.
    pub fn audit_usage(&self, tenant: &str) -> Result<(u64, u64), NexusError> {
        let store = &self.node.store;
        let chain = crate::audit::Chain {
            tenant: tenant.to_string(),
            incarnation: crate::audit::incarnation(store, tenant)?,
        };
        let head = crate::audit::head(store, &chain)?;
        Ok((head.records, head.bytes))
    }

    pub async fn delete_tenant(&self, p: &Caller, id: &str) -> Result<(), NexusError> {
        validate_tenant_id("id", id)?;
        self.propose(p, id, IamOp::DeleteTenant).await.map(|_| ())
    }

    /// Makes a key; returns it with the token, which exists only in this reply.
    pub async fn create_key(
        &self,
        p: &Caller,
        tenant: &str,
        service_account: &str,
        ttl_ms: i64,
        roles: Vec<String>,
    ) -> Result<(String, ApiKeyRecord, String), NexusError> {
        let tenant = self.target(p, tenant)?;
        validate_name("service_account", service_account)?;
        if ttl_ms < 0 {
            return Err(NexusError::invalid("ttl_ms", "must not be negative"));
        }
        if roles.len() > MAX_LIST {
            return Err(NexusError::invalid(
                "roles",
                format!("names {} roles; at most {MAX_LIST}", roles.len()),
            ));
        }
        for (i, r) in roles.iter().enumerate() {
            validate_name(&format!("roles[{i}]"), r)?;
        }
        let key = new_api_key()?;
        let now = now_ms();
        let op = IamOp::CreateKey {
            id: key.id.clone(),
            service_account: service_account.to_string(),
            secret_sha256: key.secret_sha256,
            expires_at_ms: if ttl_ms == 0 {
                0
            } else {
                now.saturating_add(ttl_ms)
            },
            now_ms: now,
            roles,
        };
        match self.propose_as(p, &tenant, op).await? {
            IamReply::Key(k) => Ok((tenant, k, key.token)),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn list_keys(
        &self,
        p: &Caller,
        tenant: &str,
    ) -> Result<(String, Vec<ApiKeyRecord>), NexusError> {
        let tenant = self.target(p, tenant)?;
        self.read().await?;
        Ok((tenant.clone(), iam::keys_of(&self.node.store, &tenant)?))
    }

    /// Revokes a key of the caller's tenant (any tenant for root). Another tenant's key is
    /// NotFound, as if it did not exist.
    pub async fn revoke_key(
        &self,
        p: &Caller,
        id: &str,
    ) -> Result<(String, ApiKeyRecord), NexusError> {
        let not_found = || NexusError::NotFound(format!("API key {id} not found"));
        if id.is_empty() || id.len() > 64 {
            return Err(NexusError::invalid("id", "is not an API key id"));
        }
        self.read().await?;
        let Some((tenant, _)) = iam::api_key(&self.node.store, id)? else {
            return Err(not_found());
        };
        if p.may_administer(&tenant).is_err() {
            return Err(not_found());
        }
        match self
            .propose(
                p,
                &tenant,
                IamOp::RevokeKey {
                    id: id.to_string(),
                    now_ms: now_ms(),
                },
            )
            .await?
        {
            IamReply::Key(k) => Ok((tenant, k)),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn put_role(
        &self,
        p: &Caller,
        tenant: &str,
        name: &str,
        permissions: Vec<String>,
    ) -> Result<RoleRecord, NexusError> {
        let tenant = self.target(p, tenant)?;
        validate_name("name", name)?;
        if permissions.is_empty() || permissions.len() > MAX_LIST {
            return Err(NexusError::invalid(
                "permissions",
                format!("must name 1 to {MAX_LIST} permissions"),
            ));
        }
        for (i, perm) in permissions.iter().enumerate() {
            rbac::validate_grant(&format!("permissions[{i}]"), perm)?;
        }
        let op = IamOp::PutRole {
            name: name.to_string(),
            permissions,
            now_ms: now_ms(),
        };
        match self.propose_as(p, &tenant, op).await? {
            IamReply::Role(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn list_roles(&self, p: &Caller, tenant: &str) -> Result<Vec<RoleView>, NexusError> {
        let tenant = self.target(p, tenant)?;
        self.read().await?;
        let mut out: Vec<RoleView> = rbac::BUILTIN_ROLES
            .iter()
            .map(|(name, grants)| RoleView {
                name: name.to_string(),
                permissions: grants.iter().map(|g| g.to_string()).collect(),
                builtin: true,
            })
            .collect();
        out.extend(
            iam::roles_of(&self.node.store, &tenant)?
                .into_iter()
                .map(|r| RoleView {
                    name: r.name,
                    permissions: r.permissions,
                    builtin: false,
                }),
        );
        Ok(out)
    }

    pub async fn delete_role(
        &self,
        p: &Caller,
        tenant: &str,
        name: &str,
    ) -> Result<(), NexusError> {
        let tenant = self.target(p, tenant)?;
        validate_name("name", name)?;
        if rbac::builtin(name).is_some() {
            return Err(NexusError::invalid(
                "name",
                format!("{name} is a built-in role and cannot be deleted"),
            ));
        }
        self.propose(
            p,
            &tenant,
            IamOp::DeleteRole {
                name: name.to_string(),
            },
        )
        .await
        .map(|_| ())
    }

    pub async fn create_binding(
        &self,
        p: &Caller,
        tenant: &str,
        principal: &str,
        role: &str,
    ) -> Result<BindingRecord, NexusError> {
        let tenant = self.target(p, tenant)?;
        validate_principal("principal", principal)?;
        validate_name("role", role)?;
        let op = IamOp::CreateBinding {
            principal: principal.to_string(),
            role: role.to_string(),
            now_ms: now_ms(),
        };
        match self.propose_as(p, &tenant, op).await? {
            IamReply::Binding(b) => Ok(b),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn list_bindings(
        &self,
        p: &Caller,
        tenant: &str,
    ) -> Result<Vec<BindingRecord>, NexusError> {
        let tenant = self.target(p, tenant)?;
        self.read().await?;
        Ok(iam::bindings_of(&self.node.store, &tenant)?)
    }

    pub async fn delete_binding(
        &self,
        p: &Caller,
        tenant: &str,
        principal: &str,
        role: &str,
    ) -> Result<(), NexusError> {
        let tenant = self.target(p, tenant)?;
        validate_principal("principal", principal)?;
        validate_name("role", role)?;
        self.propose(
            p,
            &tenant,
            IamOp::DeleteBinding {
                principal: principal.to_string(),
                role: role.to_string(),
            },
        )
        .await
        .map(|_| ())
    }
}
