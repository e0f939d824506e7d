//! `nexusctl tenant | key | role | binding | whoami`: identity and access.

use clap::Subcommand;
use nexus_client::{pb, Client, ClientError};
use serde_json::{json, Value};

use super::{print_json, table, time, Output};

#[derive(Subcommand, Clone)]
pub enum TenantCommand {
    /// Create a tenant (root key only).
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List tenants (root key only).
    List,
    /// Suspend a tenant: its keys are refused until it is resumed.
    Suspend { id: String },
    /// Resume a suspended tenant.
    Resume { id: String },
    /// Delete a tenant with all its data.
    Delete { id: String },
    /// Set a tenant's quotas (root key only); flags not given keep their value, 0 = no limit.
    Limits {
        id: String,
        /// Most memories, conversations and messages.
        #[arg(long)]
        max_items: Option<u64>,
        /// Most stored bytes: a number, or with a unit (KB, MB, GB, KiB, MiB, GiB).
        #[arg(long, value_parser = parse_bytes)]
        max_bytes: Option<u64>,
        /// Requests per second on each node (0 = the node's setting).
        #[arg(long)]
        requests_per_second: Option<f64>,
        #[arg(long)]
        burst: Option<u32>,
        /// Remove every limit.
        #[arg(long)]
        clear: bool,
    },
    /// A tenant's stored items and bytes and its quotas (default: your own tenant).
    Usage { id: Option<String> },
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 500MB or 2GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit (use B, KB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn usage_json(u: &pb::TenantUsage) -> Value {
    let l = u.limits.unwrap_or_default();
    json!({"tenant": u.tenant, "items": u.items, "bytes": u.bytes,
           "audit_records": u.audit_records, "audit_bytes": u.audit_bytes,
           "limits": {"max_items": l.max_items, "max_bytes": l.max_bytes,
                      "requests_per_second": l.requests_per_second, "burst": l.burst}})
}

fn print_usage(u: &pb::TenantUsage, out: Output) {
    if out == Output::Json {
        print_json(&usage_json(u));
        return;
    }
    let l = u.limits.unwrap_or_default();
    let limit = |v: String, set: bool| if set { v } else { "-".to_string() };
    let mut t = table(&[
        "TENANT",
        "ITEMS",
        "MAX ITEMS",
        "BYTES",
        "MAX BYTES",
        "REQ/S",
        "BURST",
        "AUDIT RECORDS",
        "AUDIT BYTES",
    ]);
    t.add_row(vec![
        u.tenant.clone(),
        u.items.to_string(),
        limit(l.max_items.to_string(), l.max_items > 0),
        u.bytes.to_string(),
        limit(l.max_bytes.to_string(), l.max_bytes > 0),
        limit(
            l.requests_per_second.to_string(),
            l.requests_per_second > 0.0,
        ),
        limit(l.burst.to_string(), l.burst > 0),
        u.audit_records.to_string(),
        u.audit_bytes.to_string(),
    ]);
    println!("{t}");
}

#[derive(Subcommand, Clone)]
pub enum KeyCommand {
    /// Create an API key for a service account; the key is printed this once.
    Create {
        service_account: String,
        /// Tenant (default: your own).
        #[arg(long, default_value = "")]
        tenant: String,
        /// Role to bind to the service account, repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime, such as 30d or 12h (default: never expires).
        #[arg(long, value_parser = parse_ttl)]
        expires: Option<i64>,
    },
    /// List API keys (never their secrets).
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Revoke a key: refused from now on.
    #[command(alias = "delete")]
    Revoke { id: String },
}

#[derive(Subcommand, Clone)]
pub enum RoleCommand {
    /// Create or replace a custom role.
    Create {
        name: String,
        /// Permission such as memory:read, tools:call:NAME, memory:* (repeatable).
        #[arg(long = "perm", required = true)]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Built-in and custom roles.
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Delete a custom role and its bindings.
    Delete {
        name: String,
        #[arg(long, default_value = "")]
        tenant: String,
    },
}

#[derive(Subcommand, Clone)]
pub enum BindingCommand {
    /// Bind a role to a principal (sa:<service account> or user:<subject>).
    Create {
        principal: String,
        role: String,
        #[arg(long, default_value = "")]
        tenant: String,
    },
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    Delete {
        principal: String,
        role: String,
        #[arg(long, default_value = "")]
        tenant: String,
    },
}

fn parse_ttl(s: &str) -> Result<i64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("{s:?} is not a duration such as 30d or 12h"))
}

fn tenant_json(t: &pb::Tenant) -> Value {
    let state = match pb::TenantState::try_from(t.state) {
        Ok(pb::TenantState::Suspended) => "suspended",
        _ => "active",
    };
    json!({"id": t.id, "display_name": t.display_name, "state": state,
           "created_at_ms": t.created_at_ms})
}

fn key_json(k: &pb::ApiKey) -> Value {
    json!({"id": k.id, "tenant": k.tenant, "service_account": k.service_account,
           "principal": format!("sa:{}", k.service_account), "created_at_ms": k.created_at_ms,
           "expires_at_ms": k.expires_at_ms, "revoked_at_ms": k.revoked_at_ms})
}

fn print_tenants(tenants: &[pb::Tenant], out: Output) {
    if out == Output::Json {
        print_json(&Value::Array(tenants.iter().map(tenant_json).collect()));
        return;
    }
    let mut t = table(&["TENANT", "NAME", "STATE", "CREATED"]);
    for x in tenants {
        let j = tenant_json(x);
        t.add_row(vec![
            x.id.clone(),
            x.display_name.clone(),
            j["state"].as_str().unwrap_or_default().to_string(),
            time(x.created_at_ms),
        ]);
    }
    println!("{t}");
}

pub async fn tenant(c: &mut Client, out: Output, cmd: TenantCommand) -> Result<(), ClientError> {
    let set = |id: String, state: pb::TenantState| pb::SetTenantStateRequest {
        id,
        state: state as i32,
    };
    let one = match cmd {
        TenantCommand::Create { id, name } => c
            .iam
            .create_tenant(pb::CreateTenantRequest {
                id,
                display_name: name,
            })
            .await?
            .into_inner(),
        TenantCommand::List => {
            let r = c.iam.list_tenants(pb::ListTenantsRequest {}).await?;
            print_tenants(&r.into_inner().tenants, out);
            return Ok(());
        }
        TenantCommand::Suspend { id } => c
            .iam
            .set_tenant_state(set(id, pb::TenantState::Suspended))
            .await?
            .into_inner(),
        TenantCommand::Resume { id } => c
            .iam
            .set_tenant_state(set(id, pb::TenantState::Active))
            .await?
            .into_inner(),
        TenantCommand::Limits {
            id,
            max_items,
            max_bytes,
            requests_per_second,
            burst,
            clear,
        } => {
            let mut limits = if clear {
                pb::TenantLimits::default()
            } else {
                c.iam
                    .get_tenant_usage(pb::GetTenantUsageRequest { tenant: id.clone() })
                    .await?
                    .into_inner()
                    .limits
                    .unwrap_or_default()
            };
            if let Some(v) = max_items {
                limits.max_items = v;
            }
            if let Some(v) = max_bytes {
                limits.max_bytes = v;
            }
            if let Some(v) = requests_per_second {
                limits.requests_per_second = v;
            }
            if let Some(v) = burst {
                limits.burst = v;
            }
            let u = c
                .iam
                .set_tenant_limits(pb::SetTenantLimitsRequest {
                    id,
                    limits: Some(limits),
                })
                .await?
                .into_inner();
            print_usage(&u, out);
            return Ok(());
        }
        TenantCommand::Usage { id } => {
            let u = c
                .iam
                .get_tenant_usage(pb::GetTenantUsageRequest {
                    tenant: id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_usage(&u, out);
            return Ok(());
        }
        TenantCommand::Delete { id } => {
            c.iam
                .delete_tenant(pb::DeleteTenantRequest { id: id.clone() })
                .await?;
            if out == Output::Json {
                print_json(&json!({"deleted": id}));
            } else {
                println!("deleted tenant {id} and all its data");
            }
            return Ok(());
        }
    };
    if out == Output::Json {
        print_json(&tenant_json(&one));
    } else {
        print_tenants(std::slice::from_ref(&one), out);
    }
    Ok(())
}

pub async fn key(c: &mut Client, out: Output, cmd: KeyCommand) -> Result<(), ClientError> {
    match cmd {
        KeyCommand::Create {
            service_account,
            tenant,
            roles,
            expires,
        } => {
            let r = c
                .iam
                .create_api_key(pb::CreateApiKeyRequest {
                    tenant,
                    service_account,
                    ttl_ms: expires.unwrap_or(0),
                    roles,
                })
                .await?
                .into_inner();
            let k = r.key.unwrap_or_default();
            if out == Output::Json {
                let mut j = key_json(&k);
                j["token"] = Value::String(r.token);
                print_json(&j);
            } else {
                println!("{}", r.token);
                eprintln!(
                    "API key {} for sa:{} in tenant {}: shown this once, store it now",
                    k.id, k.service_account, k.tenant
                );
            }
        }
        KeyCommand::List { tenant } => {
            let keys = c
                .iam
                .list_api_keys(pb::ListApiKeysRequest { tenant })
                .await?
                .into_inner()
                .keys;
            if out == Output::Json {
                print_json(&Value::Array(keys.iter().map(key_json).collect()));
            } else {
                let mut t = table(&["ID", "PRINCIPAL", "CREATED", "EXPIRES", "REVOKED"]);
                for k in &keys {
                    t.add_row(vec![
                        k.id.clone(),
                        format!("sa:{}", k.service_account),
                        time(k.created_at_ms),
                        time(k.expires_at_ms),
                        time(k.revoked_at_ms),
                    ]);
                }
                println!("{t}");
            }
        }
        KeyCommand::Revoke { id } => {
            let k = c
                .iam
                .revoke_api_key(pb::RevokeApiKeyRequest { id })
                .await?
                .into_inner();
            if out == Output::Json {
                print_json(&key_json(&k));
            } else {
                println!("revoked API key {}", k.id);
            }
        }
    }
    Ok(())
}

fn print_roles(roles: &[pb::Role], out: Output) {
    if out == Output::Json {
        let v = roles
            .iter()
            .map(|r| json!({"name": r.name, "permissions": r.permissions, "builtin": r.builtin}))
            .collect();
        print_json(&Value::Array(v));
        return;
    }
    let mut t = table(&["ROLE", "KIND", "PERMISSIONS"]);
    for r in roles {
        t.add_row(vec![
            r.name.clone(),
            if r.builtin { "built-in" } else { "custom" }.to_string(),
            r.permissions.join(" "),
        ]);
    }
    println!("{t}");
}

pub async fn role(c: &mut Client, out: Output, cmd: RoleCommand) -> Result<(), ClientError> {
    match cmd {
        RoleCommand::Create {
            name,
            permissions,
            tenant,
        } => {
            let r = c
                .iam
                .put_role(pb::PutRoleRequest {
                    tenant,
                    name,
                    permissions,
                })
                .await?
                .into_inner();
            print_roles(std::slice::from_ref(&r), out);
        }
        RoleCommand::List { tenant } => {
            let roles = c
                .iam
                .list_roles(pb::ListRolesRequest { tenant })
                .await?
                .into_inner()
                .roles;
            print_roles(&roles, out);
        }
        RoleCommand::Delete { name, tenant } => {
            c.iam
                .delete_role(pb::DeleteRoleRequest {
                    tenant,
                    name: name.clone(),
                })
                .await?;
            if out == Output::Json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted role {name} and its bindings");
            }
        }
    }
    Ok(())
}

fn print_bindings(bindings: &[pb::Binding], out: Output) {
    if out == Output::Json {
        let v = bindings
            .iter()
            .map(|b| json!({"principal": b.principal, "role": b.role, "created_at_ms": b.created_at_ms}))
            .collect();
        print_json(&Value::Array(v));
        return;
    }
    let mut t = table(&["PRINCIPAL", "ROLE", "CREATED"]);
    for b in bindings {
        t.add_row(vec![
            b.principal.clone(),
            b.role.clone(),
            time(b.created_at_ms),
        ]);
    }
    println!("{t}");
}

pub async fn binding(c: &mut Client, out: Output, cmd: BindingCommand) -> Result<(), ClientError> {
    match cmd {
        BindingCommand::Create {
            principal,
            role,
            tenant,
        } => {
            let b = c
                .iam
                .create_binding(pb::CreateBindingRequest {
                    tenant,
                    principal,
                    role,
                })
                .await?
                .into_inner();
            print_bindings(std::slice::from_ref(&b), out);
        }
        BindingCommand::List { tenant } => {
            let b = c
                .iam
                .list_bindings(pb::ListBindingsRequest { tenant })
                .await?
                .into_inner()
                .bindings;
            print_bindings(&b, out);
        }
        BindingCommand::Delete {
            principal,
            role,
            tenant,
        } => {
            c.iam
                .delete_binding(pb::DeleteBindingRequest {
                    tenant,
                    principal: principal.clone(),
                    role: role.clone(),
                })
                .await?;
            if out == Output::Json {
                print_json(&json!({"deleted": {"principal": principal, "role": role}}));
            } else {
                println!("unbound {role} from {principal}");
            }
        }
    }
    Ok(())
}

pub async fn whoami(c: &mut Client, out: Output) -> Result<(), ClientError> {
    let w = c.iam.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    if out == Output::Json {
        print_json(
            &json!({"tenant": w.tenant, "subject": w.subject, "permissions": w.permissions}),
        );
    } else {
        let mut t = table(&["TENANT", "SUBJECT", "PERMISSIONS"]);
        t.add_row(vec![w.tenant, w.subject, w.permissions.join(" ")]);
        println!("{t}");
    }
    Ok(())
}

#[derive(Subcommand, Clone)]
pub enum AuditCommand {
    /// The latest records (your tenant's; every tenant's for the root key).
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: u32,
        /// Only records after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Root only: this tenant's records (every incarnation of it).
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Check the hash chains; exit 1 naming the first changed or removed record.
    Verify,
}

pub async fn audit(c: &mut Client, out: Output, cmd: AuditCommand) -> Result<(), ClientError> {
    match cmd {
        AuditCommand::Tail {
            limit,
            after,
            tenant,
        } => {
            let records = c
                .audit
                .tail(pb::AuditTailRequest {
                    limit,
                    after_seq: after,
                    tenant,
                })
                .await?
                .into_inner()
                .records;
            if out == Output::Json {
                let v = records
                    .iter()
                    .map(|r| {
                        json!({"seq": r.seq, "at_ms": r.at_ms, "request_id": r.request_id,
                               "principal": r.principal, "tenant": r.tenant,
                               "incarnation": r.incarnation, "action": r.action,
                               "resource": r.resource, "result": r.result,
                               "hash": r.hash.iter().map(|b| format!("{b:02x}")).collect::<String>()})
                    })
                    .collect();
                print_json(&Value::Array(v));
            } else {
                let mut t = table(&[
                    "SEQ",
                    "TIME",
                    "PRINCIPAL",
                    "TENANT",
                    "ACTION",
                    "RESOURCE",
                    "RESULT",
                ]);
                for r in &records {
                    t.add_row(vec![
                        r.seq.to_string(),
                        time(r.at_ms),
                        r.principal.clone(),
                        r.tenant.clone(),
                        r.action.clone(),
                        r.resource.clone(),
                        r.result.clone(),
                    ]);
                }
                println!("{t}");
            }
        }
        AuditCommand::Verify => {
            let v = c
                .audit
                .verify(pb::AuditVerifyRequest {})
                .await?
                .into_inner();
            if out == Output::Json {
                print_json(
                    &json!({"intact": v.intact, "chains": v.chains, "records": v.records,
                                   "broken_at": v.broken_at, "problem": v.problem}),
                );
            } else if v.intact {
                println!(
                    "intact: {} records in {} chains, every hash and link checked",
                    v.records, v.chains
                );
            } else {
                println!("BROKEN at record {}: {}", v.broken_at, v.problem);
            }
            if !v.intact {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
