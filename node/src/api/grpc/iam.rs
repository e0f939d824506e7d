//! IamService: tenants, API keys, roles and bindings over gRPC.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::iam_service_server::IamService as IamGrpc;
use tonic::{Request, Response, Status};

use super::handle;
use crate::error::NexusError;
use crate::iam::{ApiKeyRecord, BindingRecord, TenantLimits, TenantRecord, TenantState};
use crate::service::iam::{IamService, RoleView};
use crate::store::usage::Usage;

fn usage(tenant: String, u: Usage, l: TenantLimits, audit: (u64, u64)) -> pb::TenantUsage {
    pb::TenantUsage {
        tenant,
        items: u.items,
        bytes: u.bytes,
        audit_records: audit.0,
        audit_bytes: audit.1,
        limits: Some(pb::TenantLimits {
            max_items: l.max_items,
            max_bytes: l.max_bytes,
            requests_per_second: l.requests_per_second,
            burst: l.burst,
        }),
    }
}

pub struct IamApi {
    pub iam: Arc<IamService>,
}

fn tenant(t: TenantRecord) -> pb::Tenant {
    pb::Tenant {
        id: t.id,
        display_name: t.display_name,
        state: match t.state {
            TenantState::Active => pb::TenantState::Active,
            TenantState::Suspended => pb::TenantState::Suspended,
        } as i32,
        created_at_ms: t.created_at_ms,
    }
}

fn key(tenant: &str, k: ApiKeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        id: k.id,
        tenant: tenant.to_string(),
        service_account: k.service_account,
        created_at_ms: k.created_at_ms,
        expires_at_ms: k.expires_at_ms,
        revoked_at_ms: k.revoked_at_ms,
    }
}

fn role(r: RoleView) -> pb::Role {
    pb::Role {
        name: r.name,
        permissions: r.permissions,
        builtin: r.builtin,
    }
}

fn binding(b: BindingRecord) -> pb::Binding {
    pb::Binding {
        principal: b.principal,
        role: b.role,
        created_at_ms: b.created_at_ms,
    }
}

#[tonic::async_trait]
impl IamGrpc for IamApi {
    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        handle("iam.whoami", request, |p, _| async move {
            Ok(pb::WhoAmIResponse {
                tenant: p.tenant.clone(),
                subject: p.subject.clone(),
                permissions: p.grants.list(),
            })
        })
        .await
    }

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        handle("iam.create_tenant", request, |p, r| async move {
            Ok(tenant(
                self.iam.create_tenant(&p, &r.id, &r.display_name).await?,
            ))
        })
        .await
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        handle("iam.list_tenants", request, |_, _| async move {
            Ok(pb::ListTenantsResponse {
                tenants: self
                    .iam
                    .list_tenants()
                    .await?
                    .into_iter()
                    .map(tenant)
                    .collect(),
            })
        })
        .await
    }

    async fn set_tenant_state(
        &self,
        request: Request<pb::SetTenantStateRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        handle("iam.set_tenant_state", request, |p, r| async move {
            let state = match pb::TenantState::try_from(r.state) {
                Ok(pb::TenantState::Active) => TenantState::Active,
                Ok(pb::TenantState::Suspended) => TenantState::Suspended,
                _ => {
                    return Err(NexusError::invalid(
                        "state",
                        format!("{} is not ACTIVE or SUSPENDED", r.state),
                    ))
                }
            };
            Ok(tenant(self.iam.set_tenant_state(&p, &r.id, state).await?))
        })
        .await
    }

    async fn set_tenant_limits(
        &self,
        request: Request<pb::SetTenantLimitsRequest>,
    ) -> Result<Response<pb::TenantUsage>, Status> {
        handle("iam.set_tenant_limits", request, |p, r| async move {
            let l = r
                .limits
                .ok_or_else(|| NexusError::invalid("limits", "is required"))?;
            let limits = TenantLimits {
                max_items: l.max_items,
                max_bytes: l.max_bytes,
                requests_per_second: l.requests_per_second,
                burst: l.burst,
            };
            let (u, l) = self.iam.set_tenant_limits(&p, &r.id, limits).await?;
            let audit = self.iam.audit_usage(&r.id)?;
            Ok(usage(r.id, u, l, audit))
        })
        .await
    }

    async fn get_tenant_usage(
        &self,
        request: Request<pb::GetTenantUsageRequest>,
    ) -> Result<Response<pb::TenantUsage>, Status> {
        handle("iam.get_usage", request, |p, r| async move {
            let (t, u, l) = self.iam.usage(&p, &r.tenant).await?;
            let audit = self.iam.audit_usage(&t)?;
            Ok(usage(t, u, l, audit))
        })
        .await
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::DeleteTenantResponse>, Status> {
        handle("iam.delete_tenant", request, |p, r| async move {
            self.iam.delete_tenant(&p, &r.id).await?;
            Ok(pb::DeleteTenantResponse {})
        })
        .await
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        handle("iam.create_key", request, |p, r| async move {
            let (t, k, token) = self
                .iam
                .create_key(&p, &r.tenant, &r.service_account, r.ttl_ms, r.roles)
                .await?;
            Ok(pb::CreateApiKeyResponse {
                key: Some(key(&t, k)),
                token,
            })
        })
        .await
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        handle("iam.list_keys", request, |p, r| async move {
            let (t, keys) = self.iam.list_keys(&p, &r.tenant).await?;
            Ok(pb::ListApiKeysResponse {
                keys: keys.into_iter().map(|k| key(&t, k)).collect(),
            })
        })
        .await
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        handle("iam.revoke_key", request, |p, r| async move {
            let (t, k) = self.iam.revoke_key(&p, &r.id).await?;
            Ok(key(&t, k))
        })
        .await
    }

    async fn put_role(
        &self,
        request: Request<pb::PutRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        handle("iam.put_role", request, |p, r| async move {
            let made = self
                .iam
                .put_role(&p, &r.tenant, &r.name, r.permissions)
                .await?;
            Ok(role(RoleView {
                name: made.name,
                permissions: made.permissions,
                builtin: false,
            }))
        })
        .await
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        handle("iam.list_roles", request, |p, r| async move {
            Ok(pb::ListRolesResponse {
                roles: self
                    .iam
                    .list_roles(&p, &r.tenant)
                    .await?
                    .into_iter()
                    .map(role)
                    .collect(),
            })
        })
        .await
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        handle("iam.delete_role", request, |p, r| async move {
            self.iam.delete_role(&p, &r.tenant, &r.name).await?;
            Ok(pb::DeleteRoleResponse {})
        })
        .await
    }

    async fn create_binding(
        &self,
        request: Request<pb::CreateBindingRequest>,
    ) -> Result<Response<pb::Binding>, Status> {
        handle("iam.create_binding", request, |p, r| async move {
            Ok(binding(
                self.iam
                    .create_binding(&p, &r.tenant, &r.principal, &r.role)
                    .await?,
            ))
        })
        .await
    }

    async fn list_bindings(
        &self,
        request: Request<pb::ListBindingsRequest>,
    ) -> Result<Response<pb::ListBindingsResponse>, Status> {
        handle("iam.list_bindings", request, |p, r| async move {
            Ok(pb::ListBindingsResponse {
                bindings: self
                    .iam
                    .list_bindings(&p, &r.tenant)
                    .await?
                    .into_iter()
                    .map(binding)
                    .collect(),
            })
        })
        .await
    }

    async fn delete_binding(
        &self,
        request: Request<pb::DeleteBindingRequest>,
    ) -> Result<Response<pb::DeleteBindingResponse>, Status> {
        handle("iam.delete_binding", request, |p, r| async move {
            self.iam
                .delete_binding(&p, &r.tenant, &r.principal, &r.role)
                .await?;
            Ok(pb::DeleteBindingResponse {})
        })
        .await
    }
}
