//! The authorization matrix's parts: every RPC, the data a tenant is seeded with, one call of
//! each RPC as a role would make it, and a tenant's state to compare before and after.

use super::*;

/// Every RPC of the public API and the permission it needs ("" = none beyond a valid key).
pub(crate) const RPCS: &[(&str, &str)] = &[
    ("memory.put", "memory:write"),
    ("memory.get", "memory:read"),
    ("memory.delete", "memory:write"),
    ("memory.list", "memory:read"),
    ("memory.remember", "memory:write"),
    ("memory.forget", "memory:write"),
    ("memory.get_semantic", "memory:read"),
    ("memory.recall", "memory:read"),
    ("conversation.create", "memory:write"),
    ("conversation.append", "memory:write"),
    ("conversation.get", "memory:read"),
    ("conversation.list", "memory:read"),
    ("conversation.list_messages", "memory:read"),
    ("conversation.delete", "memory:write"),
    ("search.search", "memory:read"),
    ("cluster.status", "cluster:read"),
    ("cluster.add_member", "cluster:admin"),
    ("cluster.promote_member", "cluster:admin"),
    ("cluster.remove_member", "cluster:admin"),
    ("cluster.transfer_leader", "cluster:admin"),
    ("iam.whoami", ""),
    ("iam.create_tenant", "tenants:admin"),
    ("iam.list_tenants", "tenants:admin"),
    ("iam.set_tenant_state", "tenants:admin"),
    ("iam.delete_tenant", "tenants:admin"),
    ("iam.set_tenant_limits", "tenants:admin"),
    ("iam.get_usage", "iam:read"),
    ("iam.create_key", "iam:write"),
    ("iam.list_keys", "iam:read"),
    ("iam.revoke_key", "iam:write"),
    ("iam.put_role", "iam:write"),
    ("iam.list_roles", "iam:read"),
    ("iam.delete_role", "iam:write"),
    ("iam.create_binding", "iam:write"),
    ("iam.list_bindings", "iam:read"),
    ("iam.delete_binding", "iam:write"),
    ("secrets.set", "secrets:write"),
    ("secrets.get", "secrets:read"),
    ("secrets.list", "secrets:list"),
    ("secrets.delete", "secrets:write"),
    ("secrets.rotate_master_key", "cluster:admin"),
    ("audit.tail", "audit:read"),
    ("audit.verify", "audit:read"),
];

/// Acme's data, with one item per role for the calls that delete.
#[derive(Default)]
pub(crate) struct Seed {
    pub(crate) semantic: BTreeMap<String, String>,
    pub(crate) keys: BTreeMap<String, String>,
    pub(crate) shared_semantic: String,
}

pub(crate) async fn seed(acme: &mut Client) -> Seed {
    let mut s = Seed::default();
    let put = |ns: &str, key: &str| pb::PutRequest {
        namespace: ns.into(),
        key: key.into(),
        value: format!("\"{MARKER} value\""),
        ..Default::default()
    };
    acme.memory.put(put("seed", "k")).await.unwrap();
    let secret = |name: String| pb::SetSecretRequest {
        name,
        value: format!("{MARKER}-value").into_bytes(),
    };
    acme.secrets
        .set_secret(secret(format!("{MARKER}-shared")))
        .await
        .unwrap();
    let remember = |text: String| pb::RememberRequest {
        text,
        ..Default::default()
    };
    s.shared_semantic = acme
        .memory
        .remember(remember(format!("{MARKER}: the launch is in March")))
        .await
        .unwrap()
        .into_inner()
        .memory
        .unwrap()
        .id;
    acme.conversations
        .create_conversation(pb::CreateConversationRequest {
            id: "seedconv".into(),
            title: MARKER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    acme.conversations
        .append_messages(pb::AppendMessagesRequest {
            conversation_id: "seedconv".into(),
            messages: vec![pb::NewMessage {
                role: "user".into(),
                content: format!("{MARKER}: the launch is in March"),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    for role in ROLES {
        acme.memory
            .put(put("seed", &format!("del-{role}")))
            .await
            .unwrap();
        acme.secrets
            .set_secret(secret(format!("{MARKER}-del-{role}")))
            .await
            .unwrap();
        let id = acme
            .memory
            .remember(remember(format!("{MARKER} note of {role}")))
            .await
            .unwrap()
            .into_inner()
            .memory
            .unwrap()
            .id;
        s.semantic.insert(role.to_string(), id);
        acme.conversations
            .create_conversation(pb::CreateConversationRequest {
                id: format!("del-{role}"),
                title: MARKER.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let key = acme
            .iam
            .create_api_key(pb::CreateApiKeyRequest {
                service_account: format!("{MARKER}-victim-{role}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .key
            .unwrap()
            .id;
        s.keys.insert(role.to_string(), key);
        acme.iam
            .put_role(pb::PutRoleRequest {
                name: format!("{MARKER}-del-{role}"),
                permissions: vec!["memory:read".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        acme.iam
            .create_binding(pb::CreateBindingRequest {
                principal: format!("sa:{MARKER}-del-{role}"),
                role: "reader".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    s
}

/// Calls one RPC as `c` on behalf of `role`, aimed at acme's data (its ids and names).
/// Returns the response's debug text.
pub(crate) async fn call(
    c: &mut Client,
    rpc: &str,
    role: &str,
    seed: &Seed,
) -> Result<String, tonic::Status> {
    let dbg = |r: &dyn std::fmt::Debug| format!("{r:?}");
    let mine = format!("{role}-{}", rpc.replace('.', "-"));
    Ok(match rpc {
        "memory.put" => dbg(&c
            .memory
            .put(pb::PutRequest {
                namespace: "m".into(),
                key: mine,
                value: "1".into(),
                ..Default::default()
            })
            .await?),
        "memory.get" => dbg(&c
            .memory
            .get(pb::GetRequest {
                namespace: "seed".into(),
                key: "k".into(),
                ..Default::default()
            })
            .await?),
        "memory.delete" => dbg(&c
            .memory
            .delete(pb::DeleteRequest {
                namespace: "seed".into(),
                key: format!("del-{role}"),
                expected_version: None,
            })
            .await?),
        "memory.list" => dbg(&c
            .memory
            .list(pb::ListRequest {
                namespace: "seed".into(),
                ..Default::default()
            })
            .await?),
        "memory.remember" => dbg(&c
            .memory
            .remember(pb::RememberRequest {
                text: format!("written by {mine}"),
                ..Default::default()
            })
            .await?),
        "memory.forget" => dbg(&c
            .memory
            .forget(pb::ForgetRequest {
                id: seed.semantic[role].clone(),
            })
            .await?),
        "memory.get_semantic" => dbg(&c
            .memory
            .get_semantic(pb::GetSemanticRequest {
                id: seed.shared_semantic.clone(),
                ..Default::default()
            })
            .await?),
        "memory.recall" => dbg(&c
            .memory
            .recall(pb::RecallRequest {
                query: format!("{MARKER} launch"),
                ..Default::default()
            })
            .await?),
        "conversation.create" => dbg(&c
            .conversations
            .create_conversation(pb::CreateConversationRequest {
                id: mine,
                ..Default::default()
            })
            .await?),
        "conversation.append" => dbg(&c
            .conversations
            .append_messages(pb::AppendMessagesRequest {
                conversation_id: "seedconv".into(),
                messages: vec![pb::NewMessage {
                    role: "user".into(),
                    content: format!("from {mine}"),
                    ..Default::default()
                }],
            })
            .await?),
        "conversation.get" => dbg(&c
            .conversations
            .get_conversation(pb::GetConversationRequest {
                id: "seedconv".into(),
                ..Default::default()
            })
            .await?),
        "conversation.list" => dbg(&c
            .conversations
            .list_conversations(pb::ListConversationsRequest::default())
            .await?),
        "conversation.list_messages" => dbg(&c
            .conversations
            .list_messages(pb::ListMessagesRequest {
                conversation_id: "seedconv".into(),
                ..Default::default()
            })
            .await?),
        "conversation.delete" => dbg(&c
            .conversations
            .delete_conversation(pb::DeleteConversationRequest {
                id: format!("del-{role}"),
            })
            .await?),
        "search.search" => dbg(&c
            .search
            .search(pb::SearchRequest {
                query: MARKER.into(),
                ..Default::default()
            })
            .await?),
        "cluster.status" => dbg(&c.cluster.status(pb::StatusRequest {}).await?),
        // Denied to every role; harmless if they were not (ids of no node).
        "cluster.add_member" => dbg(&c
            .cluster
            .add_member(pb::AddMemberRequest {
                id: 99,
                peer_addr: "127.0.0.1:1".into(),
                api_addr: "127.0.0.1:2".into(),
            })
            .await?),
        "cluster.promote_member" => dbg(&c
            .cluster
            .promote_member(pb::PromoteMemberRequest { id: 99 })
            .await?),
        "cluster.remove_member" => dbg(&c
            .cluster
            .remove_member(pb::RemoveMemberRequest { id: 99 })
            .await?),
        "cluster.transfer_leader" => dbg(&c
            .cluster
            .transfer_leader(pb::TransferLeaderRequest { id: 1 })
            .await?),
        "iam.whoami" => dbg(&c.iam.who_am_i(pb::WhoAmIRequest {}).await?),
        "iam.create_tenant" => dbg(&c
            .iam
            .create_tenant(pb::CreateTenantRequest {
                id: format!("t-{role}"),
                ..Default::default()
            })
            .await?),
        "iam.list_tenants" => dbg(&c.iam.list_tenants(pb::ListTenantsRequest {}).await?),
        "iam.set_tenant_state" => dbg(&c
            .iam
            .set_tenant_state(pb::SetTenantStateRequest {
                id: "acme".into(),
                state: pb::TenantState::Suspended as i32,
            })
            .await?),
        "iam.delete_tenant" => dbg(&c
            .iam
            .delete_tenant(pb::DeleteTenantRequest { id: "acme".into() })
            .await?),
        "iam.set_tenant_limits" => dbg(&c
            .iam
            .set_tenant_limits(pb::SetTenantLimitsRequest {
                id: "acme".into(),
                limits: Some(pb::TenantLimits {
                    max_items: 1,
                    ..Default::default()
                }),
            })
            .await?),
        "iam.get_usage" => dbg(&c
            .iam
            .get_tenant_usage(pb::GetTenantUsageRequest::default())
            .await?),
        "iam.create_key" => dbg(&c
            .iam
            .create_api_key(pb::CreateApiKeyRequest {
                service_account: mine,
                ..Default::default()
            })
            .await?),
        "iam.list_keys" => dbg(&c
            .iam
            .list_api_keys(pb::ListApiKeysRequest::default())
            .await?),
        "iam.revoke_key" => dbg(&c
            .iam
            .revoke_api_key(pb::RevokeApiKeyRequest {
                id: seed.keys[role].clone(),
            })
            .await?),
        "iam.put_role" => dbg(&c
            .iam
            .put_role(pb::PutRoleRequest {
                name: mine,
                permissions: vec!["memory:read".into()],
                ..Default::default()
            })
            .await?),
        "iam.list_roles" => dbg(&c.iam.list_roles(pb::ListRolesRequest::default()).await?),
        "iam.delete_role" => dbg(&c
            .iam
            .delete_role(pb::DeleteRoleRequest {
                name: format!("{MARKER}-del-{role}"),
                ..Default::default()
            })
            .await?),
        "iam.create_binding" => dbg(&c
            .iam
            .create_binding(pb::CreateBindingRequest {
                principal: format!("sa:{mine}"),
                role: "reader".into(),
                ..Default::default()
            })
            .await?),
        "iam.list_bindings" => dbg(&c
            .iam
            .list_bindings(pb::ListBindingsRequest::default())
            .await?),
        "iam.delete_binding" => dbg(&c
            .iam
            .delete_binding(pb::DeleteBindingRequest {
                principal: format!("sa:{MARKER}-del-{role}"),
                role: "reader".into(),
                ..Default::default()
            })
            .await?),
        "secrets.set" => dbg(&c
            .secrets
            .set_secret(pb::SetSecretRequest {
                name: mine,
                value: b"v".to_vec(),
            })
            .await?),
        "secrets.get" => dbg(&c
            .secrets
            .get_secret(pb::GetSecretRequest {
                name: format!("{MARKER}-shared"),
                version: 0,
            })
            .await?),
        "secrets.list" => dbg(&c.secrets.list_secrets(pb::ListSecretsRequest {}).await?),
        "secrets.delete" => dbg(&c
            .secrets
            .delete_secret(pb::DeleteSecretRequest {
                name: format!("{MARKER}-del-{role}"),
            })
            .await?),
        "secrets.rotate_master_key" => dbg(&c
            .secrets
            .rotate_master_key(pb::RotateMasterKeyRequest {})
            .await?),
        "audit.tail" => dbg(&c
            .audit
            .tail(pb::AuditTailRequest {
                limit: 1000,
                after_seq: 0,
                ..Default::default()
            })
            .await?),
        "audit.verify" => dbg(&c.audit.verify(pb::AuditVerifyRequest {}).await?),
        other => panic!("no call for {other}"),
    })
}

/// Everything of acme that a snapshot of its state shows, read with acme's admin key.
pub(crate) async fn acme_state(acme: &mut Client) -> String {
    let kv = acme
        .memory
        .list(pb::ListRequest {
            namespace: "seed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .iter()
        .map(|i| i.key.clone())
        .collect::<Vec<_>>();
    let conversations = acme
        .conversations
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .conversations
        .iter()
        .map(|c| format!("{}:{}", c.id, c.message_count))
        .collect::<Vec<_>>();
    let keys = acme
        .iam
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys
        .iter()
        .map(|k| format!("{}:{}", k.id, k.revoked_at_ms))
        .collect::<Vec<_>>();
    let roles = acme
        .iam
        .list_roles(pb::ListRolesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .roles
        .len();
    let bindings = acme
        .iam
        .list_bindings(pb::ListBindingsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .bindings
        .len();
    let recalled = acme
        .memory
        .recall(pb::RecallRequest {
            query: MARKER.into(),
            k: 100,
            mode: pb::RecallMode::Bm25 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits
        .len();
    let secrets = acme
        .secrets
        .list_secrets(pb::ListSecretsRequest {})
        .await
        .unwrap()
        .into_inner()
        .secrets
        .iter()
        .map(|s| format!("{}:{}", s.name, s.versions.len()))
        .collect::<Vec<_>>();
    format!(
        "{kv:?} {conversations:?} {keys:?} {secrets:?} roles={roles} bindings={bindings} recalled={recalled}"
    )
}
