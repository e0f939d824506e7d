//! Identity and access: tenants, API keys of service accounts, custom roles and role bindings,
//! replicated through Raft like any other state (`Op::Iam`).
//!
//! Storage:
//! - `iam`: every key begins with the tenant, so a tenant's identities are part of its one
//!   key range: `T` the tenant record, `K<key id>` an API key, `R<name>` a custom role,
//!   `B<principal>\0<role>` a binding, `Q` the tenant's limits.
//! - `api_key_ids`: key id -> tenant, the one global index (a presented key names only its id).
//!
//! An API key is `nxk_<id>_<secret>`: 16 hex digits of id and 43 characters of secret (256
//! random bits, base64url). The proposing node draws both and puts only the SHA-256 of the
//! secret in the command, so the secret never enters the log, snapshots or RocksDB; it is
//! shown once, in the reply to the client that made it. A fast hash is right for secrets of
//! this entropy (a slow one defends guessable passwords); comparisons are constant-time.
//!
//! The tenant `default` always exists (it is where a node without authentication serves) and
//! cannot be suspended or deleted.

pub mod principal;
pub mod rbac;

use serde::{Deserialize, Serialize};

use crate::error::NexusError;
use crate::store::{keys, ApplyCtx, Store, StoreError, CF_API_KEY_IDS, CF_IAM, SM_FAMILIES};

pub use principal::{Principal, DEFAULT_TENANT};

const TAG_TENANT: u8 = b'T';
const TAG_KEY: u8 = b'K';
const TAG_ROLE: u8 = b'R';
const TAG_BINDING: u8 = b'B';
const TAG_LIMITS: u8 = b'Q';

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TenantState {
    Active,
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub id: String,
    pub display_name: String,
    pub state: TenantState,
    pub created_at_ms: i64,
}

/// A tenant's quotas, set by the root principal; 0 means no limit (for the request rate: the
/// node's `[quotas]` setting). Stored items and bytes are enforced in apply, so every node
/// decides alike; the request rate is enforced by each node on what it receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantLimits {
    pub max_items: u64,
    pub max_bytes: u64,
    pub requests_per_second: f64,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: String,
    /// The service account the key authenticates as (principal `sa:<name>`).
    pub service_account: String,
    /// SHA-256 of the secret.
    pub secret_sha256: Vec<u8>,
    pub created_at_ms: i64,
    /// 0 = never.
    pub expires_at_ms: i64,
    /// 0 = not revoked.
    pub revoked_at_ms: i64,
}

impl ApiKeyRecord {
    pub fn principal(&self) -> String {
        format!("sa:{}", self.service_account)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub name: String,
    pub permissions: Vec<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingRecord {
    /// `sa:<service account>` or `user:<subject>`.
    pub principal: String,
    pub role: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IamOp {
    /// The command's tenant is the tenant made.
    CreateTenant {
        display_name: String,
        now_ms: i64,
    },
    SetTenantState {
        state: TenantState,
    },
    /// Deletes the tenant and every piece of its data: its range in every state-machine
    /// family.
    DeleteTenant,
    CreateKey {
        id: String,
        service_account: String,
        secret_sha256: Vec<u8>,
        expires_at_ms: i64,
        now_ms: i64,
        /// Roles bound to the key's service account with it (may be empty).
        roles: Vec<String>,
    },
    RevokeKey {
        id: String,
        now_ms: i64,
    },
    PutRole {
        name: String,
        permissions: Vec<String>,
        now_ms: i64,
    },
    DeleteRole {
        name: String,
    },
    CreateBinding {
        principal: String,
        role: String,
        now_ms: i64,
    },
    DeleteBinding {
        principal: String,
        role: String,
    },
    /// Appended last: a variant's position is part of the log's encoding.
    SetTenantLimits {
        limits: TenantLimits,
    },
}

impl IamOp {
    pub fn name(&self) -> &'static str {
        match self {
            IamOp::CreateTenant { .. } => "iam.create_tenant",
            IamOp::SetTenantState { .. } => "iam.set_tenant_state",
            IamOp::DeleteTenant => "iam.delete_tenant",
            IamOp::CreateKey { .. } => "iam.create_key",
            IamOp::RevokeKey { .. } => "iam.revoke_key",
            IamOp::PutRole { .. } => "iam.put_role",
            IamOp::DeleteRole { .. } => "iam.delete_role",
            IamOp::CreateBinding { .. } => "iam.create_binding",
            IamOp::DeleteBinding { .. } => "iam.delete_binding",
            IamOp::SetTenantLimits { .. } => "iam.set_tenant_limits",
        }
    }

    pub fn approx_size(&self) -> usize {
        match self {
            IamOp::PutRole { permissions, .. } => {
                permissions.iter().map(|p| p.len() + 1).sum::<usize>() + 64
            }
            IamOp::CreateKey { roles, .. } => {
                roles.iter().map(|r| r.len() + 1).sum::<usize>() + 160
            }
            _ => 128,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum IamReply {
    Tenant(TenantRecord),
    TenantDeleted,
    Key(ApiKeyRecord),
    Role(RoleRecord),
    Binding(BindingRecord),
    Done,
    Limits(TenantLimits),
}

use keys::tenant_tagged as key_of;

fn tenant_key(tenant: &str) -> Vec<u8> {
    key_of(tenant, TAG_TENANT, b"")
}

fn api_key_key(tenant: &str, id: &str) -> Vec<u8> {
    key_of(tenant, TAG_KEY, id.as_bytes())
}

fn role_key(tenant: &str, name: &str) -> Vec<u8> {
    key_of(tenant, TAG_ROLE, name.as_bytes())
}

fn binding_key(tenant: &str, principal: &str, role: &str) -> Vec<u8> {
    let mut rest = principal.as_bytes().to_vec();
    rest.push(0);
    rest.extend_from_slice(role.as_bytes());
    key_of(tenant, TAG_BINDING, &rest)
}

fn limits_key(tenant: &str) -> Vec<u8> {
    key_of(tenant, TAG_LIMITS, b"")
}

/// The tenant's limits as this apply step sees them (`None`: none set).
pub fn limits_in(ctx: &ApplyCtx<'_>, tenant: &str) -> Result<Option<TenantLimits>, StoreError> {
    ctx.get_decoded(CF_IAM, &limits_key(tenant))
}

/// The tenant's limits (all 0 when none are set).
pub fn limits(store: &Store, tenant: &str) -> Result<TenantLimits, StoreError> {
    Ok(store
        .get_decoded(CF_IAM, &limits_key(tenant))?
        .unwrap_or_default())
}

/// Whether a tenant exists, as this apply step sees it.
pub fn tenant_exists_in(ctx: &ApplyCtx<'_>, tenant: &str) -> Result<bool, StoreError> {
    Ok(tenant == DEFAULT_TENANT
        || ctx
            .get_decoded::<TenantRecord>(CF_IAM, &tenant_key(tenant))?
            .is_some())
}

fn no_tenant(tenant: &str) -> NexusError {
    NexusError::NotFound(format!("tenant {tenant} not found"))
}

fn role_exists_in(ctx: &ApplyCtx<'_>, tenant: &str, role: &str) -> Result<bool, StoreError> {
    Ok(rbac::builtin(role).is_some()
        || ctx
            .get_decoded::<RoleRecord>(CF_IAM, &role_key(tenant, role))?
            .is_some())
}

/// Applies one command. Checks come first: a rejected command writes nothing.
pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &IamOp,
) -> Result<Result<IamReply, NexusError>, StoreError> {
    if !matches!(op, IamOp::CreateTenant { .. }) && !tenant_exists_in(ctx, tenant)? {
        return Ok(Err(no_tenant(tenant)));
    }
    match op {
        IamOp::CreateTenant {
            display_name,
            now_ms,
        } => {
            if tenant_exists_in(ctx, tenant)? {
                return Ok(Err(NexusError::AlreadyExists(format!(
                    "tenant {tenant} already exists"
                ))));
            }
            let record = TenantRecord {
                id: tenant.to_string(),
                display_name: display_name.clone(),
                state: TenantState::Active,
                created_at_ms: *now_ms,
            };
            ctx.put(CF_IAM, &tenant_key(tenant), &record);
            // A tenant created again under an old name gets an audit chain of its own.
            crate::audit::begin_incarnation(ctx, tenant)?;
            Ok(Ok(IamReply::Tenant(record)))
        }
        IamOp::SetTenantState { state } => {
            let Some(mut record) = ctx.get_decoded::<TenantRecord>(CF_IAM, &tenant_key(tenant))?
            else {
                return Ok(Err(NexusError::invalid(
                    "id",
                    "the default tenant cannot be suspended",
                )));
            };
            record.state = *state;
            ctx.put(CF_IAM, &tenant_key(tenant), &record);
            Ok(Ok(IamReply::Tenant(record)))
        }
        IamOp::SetTenantLimits { limits } => {
            if *limits == TenantLimits::default() {
                ctx.delete(CF_IAM, &limits_key(tenant));
            } else {
                ctx.put(CF_IAM, &limits_key(tenant), limits);
            }
            Ok(Ok(IamReply::Limits(*limits)))
        }
        IamOp::DeleteTenant => {
            if tenant == DEFAULT_TENANT {
                return Ok(Err(NexusError::invalid(
                    "id",
                    "the default tenant cannot be deleted",
                )));
            }
            // The global key index first, then the tenant's range everywhere.
            let mut prefix = keys::tenant_prefix(tenant);
            prefix.push(TAG_KEY);
            for (_, v) in ctx.scan_prefix(CF_IAM, &prefix)? {
                let key: ApiKeyRecord = crate::store::codec::decode(&v)?;
                ctx.delete(CF_API_KEY_IDS, key.id.as_bytes());
            }
            let range = keys::tenant_prefix(tenant);
            for cf in SM_FAMILIES {
                // The audit log outlives the tenant: it records what happened.
                if ![
                    crate::store::CF_SM_META,
                    CF_API_KEY_IDS,
                    crate::store::CF_AUDIT,
                ]
                .contains(cf)
                {
                    ctx.delete_prefix(cf, &range);
                }
            }
            Ok(Ok(IamReply::TenantDeleted))
        }
        IamOp::CreateKey {
            id,
            service_account,
            secret_sha256,
            expires_at_ms,
            now_ms,
            roles,
        } => {
            if ctx
                .get_decoded::<String>(CF_API_KEY_IDS, id.as_bytes())?
                .is_some()
            {
                return Ok(Err(NexusError::AlreadyExists(format!(
                    "API key {id} already exists"
                ))));
            }
            for (i, role) in roles.iter().enumerate() {
                if !role_exists_in(ctx, tenant, role)? {
                    return Ok(Err(NexusError::invalid(
                        format!("roles[{i}]"),
                        format!("role {role} does not exist in tenant {tenant}"),
                    )));
                }
            }
            let record = ApiKeyRecord {
                id: id.clone(),
                service_account: service_account.clone(),
                secret_sha256: secret_sha256.clone(),
                created_at_ms: *now_ms,
                expires_at_ms: *expires_at_ms,
                revoked_at_ms: 0,
            };
            ctx.put(CF_IAM, &api_key_key(tenant, id), &record);
            ctx.put(CF_API_KEY_IDS, id.as_bytes(), &tenant.to_string());
            let principal = record.principal();
            for role in roles {
                ctx.put(
                    CF_IAM,
                    &binding_key(tenant, &principal, role),
                    &BindingRecord {
                        principal: principal.clone(),
                        role: role.clone(),
                        created_at_ms: *now_ms,
                    },
                );
            }
            Ok(Ok(IamReply::Key(record)))
        }
        IamOp::RevokeKey { id, now_ms } => {
            let k = api_key_key(tenant, id);
            let Some(mut record) = ctx.get_decoded::<ApiKeyRecord>(CF_IAM, &k)? else {
                return Ok(Err(NexusError::NotFound(format!("API key {id} not found"))));
            };
            if record.revoked_at_ms == 0 {
                record.revoked_at_ms = *now_ms;
                ctx.put(CF_IAM, &k, &record);
            }
            Ok(Ok(IamReply::Key(record)))
        }
        IamOp::PutRole {
            name,
            permissions,
            now_ms,
        } => {
            if rbac::builtin(name).is_some() {
                return Ok(Err(NexusError::invalid(
                    "name",
                    format!("{name} is a built-in role and cannot be changed"),
                )));
            }
            let record = RoleRecord {
                name: name.clone(),
                permissions: permissions.clone(),
                created_at_ms: *now_ms,
            };
            ctx.put(CF_IAM, &role_key(tenant, name), &record);
            Ok(Ok(IamReply::Role(record)))
        }
        IamOp::DeleteRole { name } => {
            let k = role_key(tenant, name);
            if ctx.get_decoded::<RoleRecord>(CF_IAM, &k)?.is_none() {
                return Ok(Err(NexusError::NotFound(format!("role {name} not found"))));
            }
            // Bindings to it go too: a role made again later must not inherit them.
            let mut prefix = keys::tenant_prefix(tenant);
            prefix.push(TAG_BINDING);
            for (key, v) in ctx.scan_prefix(CF_IAM, &prefix)? {
                let b: BindingRecord = crate::store::codec::decode(&v)?;
                if b.role == *name {
                    ctx.delete(CF_IAM, &key);
                }
            }
            ctx.delete(CF_IAM, &k);
            Ok(Ok(IamReply::Done))
        }
        IamOp::CreateBinding {
            principal,
            role,
            now_ms,
        } => {
            if !role_exists_in(ctx, tenant, role)? {
                return Ok(Err(NexusError::invalid(
                    "role",
                    format!("role {role} does not exist in tenant {tenant}"),
                )));
            }
            let record = BindingRecord {
                principal: principal.clone(),
                role: role.clone(),
                created_at_ms: *now_ms,
            };
            ctx.put(CF_IAM, &binding_key(tenant, principal, role), &record);
            Ok(Ok(IamReply::Binding(record)))
        }
        IamOp::DeleteBinding { principal, role } => {
            let k = binding_key(tenant, principal, role);
            if ctx.get_decoded::<BindingRecord>(CF_IAM, &k)?.is_none() {
                return Ok(Err(NexusError::NotFound(format!(
                    "no binding of {principal} to {role}"
                ))));
            }
            ctx.delete(CF_IAM, &k);
            Ok(Ok(IamReply::Done))
        }
    }
}

// Reads, from the local store.

pub fn tenant(store: &Store, tenant: &str) -> Result<Option<TenantRecord>, StoreError> {
    if tenant == DEFAULT_TENANT {
        return Ok(Some(TenantRecord {
            id: DEFAULT_TENANT.into(),
            display_name: "default".into(),
            state: TenantState::Active,
            created_at_ms: 0,
        }));
    }
    store.get_decoded(CF_IAM, &tenant_key(tenant))
}

/// Every tenant, `default` first.
pub fn tenants(store: &Store) -> Result<Vec<TenantRecord>, StoreError> {
    let mut out = vec![tenant(store, DEFAULT_TENANT)?.expect("default exists")];
    for (k, v) in store.scan_prefix(CF_IAM, b"", b"", usize::MAX)? {
        if keys::parse_tenant(&k).is_some_and(|t| k == tenant_key(&t)) {
            out.push(crate::store::codec::decode(&v)?);
        }
    }
    Ok(out)
}

fn scan_tag<T: serde::de::DeserializeOwned>(
    store: &Store,
    tenant: &str,
    tag: u8,
    rest: &[u8],
) -> Result<Vec<T>, StoreError> {
    let prefix = key_of(tenant, tag, rest);
    store
        .scan_prefix(CF_IAM, &prefix, &prefix, usize::MAX)?
        .iter()
        .map(|(_, v)| crate::store::codec::decode(v).map_err(StoreError::from))
        .collect()
}

pub fn keys_of(store: &Store, tenant: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
    scan_tag(store, tenant, TAG_KEY, b"")
}

pub fn roles_of(store: &Store, tenant: &str) -> Result<Vec<RoleRecord>, StoreError> {
    scan_tag(store, tenant, TAG_ROLE, b"")
}

pub fn bindings_of(store: &Store, tenant: &str) -> Result<Vec<BindingRecord>, StoreError> {
    scan_tag(store, tenant, TAG_BINDING, b"")
}

/// An API key by id, with its tenant.
pub fn api_key(store: &Store, id: &str) -> Result<Option<(String, ApiKeyRecord)>, StoreError> {
    let Some(tenant) = store.get_decoded::<String>(CF_API_KEY_IDS, id.as_bytes())? else {
        return Ok(None);
    };
    Ok(store
        .get_decoded::<ApiKeyRecord>(CF_IAM, &api_key_key(&tenant, id))?
        .map(|k| (tenant, k)))
}

/// The grants of a principal in a tenant: the union of its bound roles'.
pub fn grants_of(store: &Store, tenant: &str, principal: &str) -> Result<rbac::Grants, StoreError> {
    grants_with(store, tenant, principal, &[])
}

/// The grants of a principal's bound roles and of `extra_roles` (roles a token names).
/// Names of roles that do not exist grant nothing.
pub fn grants_with(
    store: &Store,
    tenant: &str,
    principal: &str,
    extra_roles: &[String],
) -> Result<rbac::Grants, StoreError> {
    let mut rest = principal.as_bytes().to_vec();
    rest.push(0);
    let bindings: Vec<BindingRecord> = scan_tag(store, tenant, TAG_BINDING, &rest)?;
    let roles = bindings
        .into_iter()
        .map(|b| b.role)
        .chain(extra_roles.iter().cloned());
    let mut grants = Vec::new();
    for role in roles {
        grants.extend(role_grants(store, tenant, &role)?);
    }
    Ok(rbac::Grants::of(grants))
}

/// What a role grants in a tenant: a built-in role's grants, a custom role's permissions, or
/// nothing for a role that does not exist.
pub fn role_grants(store: &Store, tenant: &str, role: &str) -> Result<Vec<String>, StoreError> {
    if let Some(g) = rbac::builtin(role) {
        return Ok(g.iter().map(|s| s.to_string()).collect());
    }
    Ok(store
        .get_decoded::<RoleRecord>(CF_IAM, &role_key(tenant, role))?
        .map(|r| r.permissions)
        .unwrap_or_default())
}

/// Least privilege: a principal grants, through a key's roles, a role's permissions or a
/// binding, only permissions it holds itself (a grant such as `memory:*` needs `memory:*` or
/// `*`). Checked by the node that receives the request and again by the leader for what a
/// member forwards (`auth::forward`). Root grants anything a role can hold.
pub fn check_grantable(
    store: &Store,
    subject: &str,
    held: &rbac::Grants,
    tenant: &str,
    op: &IamOp,
) -> Result<(), NexusError> {
    if held.is_root() {
        return Ok(());
    }
    let mut wanted: Vec<(String, String)> = Vec::new();
    let roles = |field: &str, names: &[String], out: &mut Vec<(String, String)>| {
        for (i, role) in names.iter().enumerate() {
            let field = if names.len() == 1 && field == "role" {
                "role".to_string()
            } else {
                format!("{field}[{i}]")
            };
            for g in role_grants(store, tenant, role)? {
                out.push((format!("{field} ({role})"), g));
            }
        }
        Ok::<_, StoreError>(())
    };
    match op {
        IamOp::CreateKey { roles: names, .. } => roles("roles", names, &mut wanted)?,
        IamOp::CreateBinding { role, .. } => {
            roles("role", std::slice::from_ref(role), &mut wanted)?
        }
        IamOp::PutRole { permissions, .. } => wanted.extend(
            permissions
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("permissions[{i}]"), p.clone())),
        ),
        _ => {}
    }
    for (field, grant) in wanted {
        if !held.allows(&grant) {
            return Err(NexusError::PermissionDenied(format!(
                "{field}: {subject} cannot grant {grant:?}, which it does not hold (a principal grants only permissions it holds)"
            )));
        }
    }
    Ok(())
}

/// Checks a tenant id: 1..=63 of `[a-z0-9-]`, beginning with a letter or digit.
pub fn validate_tenant_id(field: &str, id: &str) -> Result<(), NexusError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(NexusError::invalid(
            field,
            format!("{id:?} is not a tenant id: 1 to 63 of a-z, 0-9 and -, not starting with -"),
        ))
    }
}

/// Checks a role or service-account name: 1..=64 of `[A-Za-z0-9._-]`.
pub fn validate_name(field: &str, name: &str) -> Result<(), NexusError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NexusError::invalid(
            field,
            format!("{name:?} must be 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'"),
        ))
    }
}

/// Checks a principal: `sa:<name>` or `user:<subject>` (subject: 1..=256 printable).
pub fn validate_principal(field: &str, principal: &str) -> Result<(), NexusError> {
    if let Some(name) = principal.strip_prefix("sa:") {
        return validate_name(field, name);
    }
    if let Some(subject) = principal.strip_prefix("user:") {
        if !subject.is_empty() && subject.len() <= 256 && !subject.chars().any(char::is_control) {
            return Ok(());
        }
    }
    Err(NexusError::invalid(
        field,
        format!("{principal:?} is not a principal: use sa:<service account> or user:<subject>"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(store: &Store, tenant: &str, op: IamOp) -> Result<IamReply, NexusError> {
        let mut ctx = ApplyCtx::new(store);
        let r = apply(&mut ctx, tenant, &op).unwrap();
        store.db().write(ctx.finish().unwrap()).unwrap();
        r
    }

    #[test]
    fn keys_roles_bindings_and_tenant_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = |id: &str, roles: &[&str]| IamOp::CreateKey {
            id: id.into(),
            service_account: "bot".into(),
            secret_sha256: vec![1; 32],
            expires_at_ms: 0,
            now_ms: 1,
            roles: roles.iter().map(|s| s.to_string()).collect(),
        };
        // Nothing in a tenant that does not exist.
        assert!(matches!(
            run(&store, "acme", key("k1", &[])),
            Err(NexusError::NotFound(_))
        ));
        run(
            &store,
            "acme",
            IamOp::CreateTenant {
                display_name: "Acme".into(),
                now_ms: 1,
            },
        )
        .unwrap();
        assert!(matches!(
            run(&store, "acme", key("k1", &["nope"])),
            Err(NexusError::InvalidArgument { .. })
        ));
        run(&store, "acme", key("k1", &["reader"])).unwrap();
        assert!(matches!(
            run(&store, "default", key("k1", &[])),
            Err(NexusError::AlreadyExists(_))
        ));
        let g = grants_of(&store, "acme", "sa:bot").unwrap();
        assert!(g.allows("memory:read") && !g.allows("memory:write"));
        run(
            &store,
            "acme",
            IamOp::PutRole {
                name: "writer".into(),
                permissions: vec!["memory:write".into()],
                now_ms: 1,
            },
        )
        .unwrap();
        run(
            &store,
            "acme",
            IamOp::CreateBinding {
                principal: "sa:bot".into(),
                role: "writer".into(),
                now_ms: 1,
            },
        )
        .unwrap();
        assert!(grants_of(&store, "acme", "sa:bot")
            .unwrap()
            .allows("memory:write"));
        // The same principal name in another tenant has nothing.
        assert!(!grants_of(&store, "default", "sa:bot")
            .unwrap()
            .allows("memory:read"));
        // Deleting a role drops its bindings.
        run(
            &store,
            "acme",
            IamOp::DeleteRole {
                name: "writer".into(),
            },
        )
        .unwrap();
        assert!(!grants_of(&store, "acme", "sa:bot")
            .unwrap()
            .allows("memory:write"));
        assert_eq!(api_key(&store, "k1").unwrap().unwrap().0, "acme");

        run(&store, "acme", IamOp::DeleteTenant).unwrap();
        assert_eq!(api_key(&store, "k1").unwrap(), None);
        assert_eq!(tenant(&store, "acme").unwrap(), None);
        assert!(bindings_of(&store, "acme").unwrap().is_empty());
        assert!(matches!(
            run(&store, "default", IamOp::DeleteTenant),
            Err(NexusError::InvalidArgument { .. })
        ));
        assert_eq!(tenants(&store).unwrap().len(), 1);
    }
}
