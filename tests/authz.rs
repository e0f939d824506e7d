//! Authentication and authorization through the real `nexus` binary with `[auth]` on:
//! - the authorization matrix: every RPC × every built-in role × own and other tenant. In its
//!   own tenant a role's call succeeds exactly when the role grants the RPC's permission
//!   (otherwise PERMISSION_DENIED, and nothing changes); from another tenant, no call reads,
//!   lists, searches, recalls, changes or deletes anything of the first tenant.
//! - credentials: none, malformed, unknown, revoked and expired keys; a suspended tenant; the
//!   root key; a node that refuses to listen beyond loopback without authentication.

mod common;
#[path = "authz/matrix.rs"]
mod matrix;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{api_key, create_tenants, set_tenant_state, Nexus};
use matrix::{acme_state, call, seed, RPCS};
use nexus_client::{pb, Client};
use tonic::Code;

const ROOT_KEY: &str = "root-key-for-tests-0123456789abcdefghij";
/// A word in every piece of tenant acme's data, to find leaks by.
const MARKER: &str = "acmesecret";
const ROLES: &[&str] = &["admin", "operator", "developer", "agent", "reader"];

/// What each built-in role grants, written out independently of the server's table.
fn granted(role: &str, permission: &str) -> bool {
    let grants: &[&str] = match role {
        "admin" => return !matches!(permission, "cluster:admin" | "tenants:admin"),
        "operator" => &[
            "memory:read",
            "cluster:read",
            "iam:read",
            "secrets:list",
            "audit:read",
        ],
        "developer" => &[
            "memory:read",
            "memory:write",
            "secrets:write",
            "secrets:list",
        ],
        "agent" => &["memory:read", "memory:write"],
        "reader" => &["memory:read"],
        _ => unreachable!(),
    };
    grants.contains(&permission)
}

#[tokio::test]
async fn every_rpc_every_role_own_and_other_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT_KEY),
    ];
    let n = Nexus::start(dir.path(), &env).await;
    let mut root = n.client().await;
    for t in ["acme", "globex"] {
        root.iam
            .create_tenant(pb::CreateTenantRequest {
                id: t.into(),
                display_name: t.to_uppercase(),
            })
            .await
            .unwrap();
    }
    let acme_admin = api_key(&root, "acme", "owner", &["admin"], 0).await;
    let mut acme = n.client_with(Some(&acme_admin)).await;
    let seed = seed(&mut acme).await;

    // Other tenant first, while acme's data is all there: whatever globex may do, it never
    // touches acme.
    let before = acme_state(&mut acme).await;
    for role in ROLES {
        let token = api_key(&root, "globex", &format!("g-{role}"), &[role], 0).await;
        let mut g = n.client_with(Some(&token)).await;
        for (rpc, permission) in RPCS {
            let result = call(&mut g, rpc, role, &seed).await;
            let allowed = permission.is_empty() || granted(role, permission);
            match result {
                Ok(text) => {
                    assert!(allowed, "globex {role} {rpc} was allowed: {text}");
                    if *rpc == "audit.tail" {
                        // Its own records name what it tried on acme's ids; none is acme's.
                        assert!(text.contains("globex") && !text.contains("tenant: \"acme\""));
                    } else {
                        assert!(
                            !text.contains(MARKER),
                            "globex {role} {rpc} sees acme's data: {text}"
                        );
                    }
                }
                Err(s) if !allowed => {
                    assert_eq!(
                        s.code(),
                        Code::PermissionDenied,
                        "globex {role} {rpc}: {s:?}"
                    )
                }
                // Allowed, aimed at acme's ids: they do not exist for globex.
                Err(s) => assert_eq!(s.code(), Code::NotFound, "globex {role} {rpc}: {s:?}"),
            }
        }
    }
    assert_eq!(acme_state(&mut acme).await, before, "globex changed acme");

    // Own tenant: exactly the granted cells succeed; a denied one changes nothing.
    let (mut succeeded, mut denied) = (0, 0);
    for role in ROLES {
        let token = api_key(&root, "acme", &format!("a-{role}"), &[role], 0).await;
        let mut c = n.client_with(Some(&token)).await;
        for (rpc, permission) in RPCS {
            let allowed = permission.is_empty() || granted(role, permission);
            let before = (!allowed).then_some(acme_state(&mut acme).await);
            let result = call(&mut c, rpc, role, &seed).await;
            match (allowed, result) {
                (true, Ok(_)) => succeeded += 1,
                (true, Err(s)) => panic!("acme {role} {rpc} should succeed: {s:?}"),
                (false, Ok(text)) => panic!("acme {role} {rpc} should be denied: {text}"),
                (false, Err(s)) => {
                    assert_eq!(s.code(), Code::PermissionDenied, "acme {role} {rpc}: {s:?}");
                    assert!(
                        s.message().contains(permission),
                        "the denial names the permission: {}",
                        s.message()
                    );
                    assert_eq!(
                        acme_state(&mut acme).await,
                        before.unwrap(),
                        "denied {rpc} of {role} changed something"
                    );
                    denied += 1;
                }
            }
        }
    }
    assert_eq!(succeeded + denied, ROLES.len() * RPCS.len());
    assert_eq!((succeeded, denied), (94, 121), "cells allowed and denied");
    // The root key may do what no role may.
    let members = root
        .iam
        .list_tenants(pb::ListTenantsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(
        members.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        vec!["default", "acme", "globex"]
    );
}

#[tokio::test]
async fn credentials_are_checked_and_tenants_can_be_suspended_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT_KEY),
    ];
    let n = Nexus::start(dir.path(), &env).await;
    let mut root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let token = api_key(&root, "acme", "bot", &["agent"], 0).await;
    let status = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.memory
                .list(pb::ListRequest {
                    namespace: "n".into(),
                    ..Default::default()
                })
                .await
        }
    };
    // No credentials, a malformed header, an unknown key, a wrong secret.
    for bad in [
        None,
        Some("Basic abc"),
        Some("nxk_0000000000000000_nope"),
        Some("not-the-root-key"),
    ] {
        let mut c = match bad {
            Some("Basic abc") => {
                // Sent as the whole header value.
                let channel = tonic::transport::Endpoint::from_shared(n.endpoint())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let mut client = pb::memory_service_client::MemoryServiceClient::new(channel);
                let mut req = tonic::Request::new(pb::ListRequest {
                    namespace: "n".into(),
                    ..Default::default()
                });
                req.metadata_mut()
                    .insert("authorization", "Basic abc".parse().unwrap());
                let err = client.list(req).await.unwrap_err();
                assert_eq!(err.code(), Code::Unauthenticated);
                assert!(err.message().contains("Bearer"), "{}", err.message());
                continue;
            }
            other => n.client_with(other).await,
        };
        let err = status(&mut c).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}: {err:?}");
    }
    let (id, secret) = token[4..].split_once('_').unwrap();
    let wrong = format!("nxk_{id}_{}x", &secret[..secret.len() - 1]);
    let err = status(&mut n.client_with(Some(&wrong)).await)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut bot = n.client_with(Some(&token)).await;
    bot.memory
        .put(pb::PutRequest {
            namespace: "n".into(),
            key: "k".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let me = bot
        .iam
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.tenant.as_str(), me.subject.as_str()),
        ("acme", "sa:bot")
    );

    // Suspended: refused with PERMISSION_DENIED naming the tenant; resumed: served again.
    set_tenant_state(&root, "acme", false).await;
    let err = status(&mut bot).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("acme is suspended"),
        "{}",
        err.message()
    );
    set_tenant_state(&root, "acme", true).await;
    assert_eq!(status(&mut bot).await.unwrap().into_inner().items.len(), 1);

    // Expired and revoked keys.
    // Used while valid (so its principal is cached), then refused once it has expired.
    let short = api_key(&root, "acme", "short", &["agent"], 2_000).await;
    let mut short = n.client_with(Some(&short)).await;
    status(&mut short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let err = status(&mut short).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());
    root.iam
        .revoke_api_key(pb::RevokeApiKeyRequest { id: id.to_string() })
        .await
        .unwrap();
    let err = status(&mut bot).await.unwrap_err();
    assert!(err.message().contains("revoked"), "{}", err.message());

    // Bad input to the IAM API names the field.
    for (result, field) in [
        (
            root.iam
                .create_tenant(pb::CreateTenantRequest {
                    id: "Bad Id".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "id",
        ),
        (
            root.iam
                .put_role(pb::PutRoleRequest {
                    tenant: "acme".into(),
                    name: "r".into(),
                    permissions: vec!["cluster:admin".into()],
                })
                .await
                .map(|_| ()),
            "permissions[0]",
        ),
        (
            root.iam
                .create_binding(pb::CreateBindingRequest {
                    tenant: "acme".into(),
                    principal: "bot".into(),
                    role: "reader".into(),
                })
                .await
                .map(|_| ()),
            "principal",
        ),
        (
            root.iam
                .create_api_key(pb::CreateApiKeyRequest {
                    tenant: "acme".into(),
                    service_account: "x".into(),
                    roles: vec!["no-such-role".into()],
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "roles[0]",
        ),
    ] {
        let err = result.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }

    // Deleting the tenant takes its data and keys with it.
    let admin = api_key(&root, "acme", "admin", &["admin"], 0).await;
    root.iam
        .delete_tenant(pb::DeleteTenantRequest { id: "acme".into() })
        .await
        .unwrap();
    let err = status(&mut n.client_with(Some(&admin)).await)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    create_tenants(&root, &["acme"]).await;
    let again = api_key(&root, "acme", "admin", &["admin"], 0).await;
    let items = status(&mut n.client_with(Some(&again)).await)
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(
        items.is_empty(),
        "a tenant made again starts empty: {items:?}"
    );
}

#[tokio::test]
async fn without_authentication_a_node_serves_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut open = Nexus::new(&dir.path().join("open"), &[]);
    open.grpc_host = "0.0.0.0".into();
    let log = open.refused_start().await;
    assert!(
        log.contains("without authentication") && log.contains("NEXUS_AUTH__ENABLED"),
        "{log}"
    );
    // With authentication but no certificate, bearer tokens would cross the network in
    // the clear: refused too, naming the TLS settings and the explicit opt-out.
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT_KEY),
    ];
    let mut plaintext = Nexus::new(&dir.path().join("plaintext"), &env);
    plaintext.grpc_host = "0.0.0.0".into();
    let log = plaintext.refused_start().await;
    assert!(
        log.contains("in plaintext with authentication on")
            && log.contains("NEXUS_TLS__CERT_FILE")
            && log.contains("tls.insecure_plaintext"),
        "{log}"
    );
    // Behind something that terminates TLS, the explicit opt-out serves there.
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT_KEY),
        ("NEXUS_TLS__INSECURE_PLAINTEXT", "true"),
    ];
    let mut guarded = Nexus::new(&dir.path().join("guarded"), &env);
    guarded.grpc_host = "0.0.0.0".into();
    guarded.spawn();
    guarded.wait_ready().await;
    let me = guarded
        .client()
        .await
        .iam
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.subject, "root");
    // A short root key is refused at start-up.
    let mut short = Nexus::new(
        &dir.path().join("short"),
        &[("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", "short")],
    );
    short.spawn();
    assert!(short.wait_exit(Duration::from_secs(30)).await.is_some());
    assert!(
        short.log_text().contains("at least 32"),
        "{}",
        short.log_text()
    );
}

#[tokio::test]
async fn a_tenant_over_its_request_rate_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT_KEY),
        ("NEXUS_QUOTAS__REQUESTS_PER_SECOND", "5"),
        ("NEXUS_QUOTAS__BURST", "5"),
    ];
    let n = Nexus::start(dir.path(), &env).await;
    let mut root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let mut acme = n
        .client_with(Some(&api_key(&root, "acme", "bot", &["reader"], 0).await))
        .await;
    let mut globex = n
        .client_with(Some(&api_key(&root, "globex", "bot", &["reader"], 0).await))
        .await;
    let list = || pb::ListRequest {
        namespace: "n".into(),
        ..Default::default()
    };
    let mut refused = None;
    for _ in 0..20 {
        if let Err(s) = acme.memory.list(list()).await {
            refused = Some(s);
            break;
        }
    }
    let s = refused.expect("20 requests at once exceed 5/s with a burst of 5");
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert!(
        s.message().contains("quotas.requests_per_second") && s.message().contains("acme"),
        "{}",
        s.message()
    );
    // Other tenants, and root, are not held up by acme.
    globex.memory.list(list()).await.unwrap();
    for _ in 0..20 {
        root.memory.list(list()).await.unwrap();
    }
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    acme.memory.list(list()).await.unwrap();
}

/// Least privilege, for every permission a role can hold: a principal with `iam:write` but
/// without the permission cannot grant it through a key's roles, a role's permissions or a
/// binding (PERMISSION_DENIED naming the field, and nothing is made); with it, it can.
/// `iam:write` itself is held by every granter here (granting needs it), so it is the one
/// permission only the "with" side covers.
#[tokio::test]
async fn a_principal_grants_only_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT_KEY),
    ];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let put_role = |c: &Client, name: String, permissions: Vec<String>| {
        let mut iam = c.iam.clone();
        async move {
            iam.put_role(pb::PutRoleRequest {
                tenant: String::new(),
                name,
                permissions,
            })
            .await
        }
    };
    // Every permission a role can name (the server's own list, so a new one is covered
    // here the day it is added), and wildcards.
    let permissions: Vec<&str> = nexus_node::iam::rbac::PERMISSIONS
        .iter()
        .copied()
        .chain(["memory:*", "*"])
        .collect();
    assert!(permissions.len() >= 16, "{permissions:?}");
    let mut root_acme = n.client().await;
    root_acme
        .iam
        .put_role(pb::PutRoleRequest {
            tenant: "acme".into(),
            name: "granter-base".into(),
            permissions: vec!["iam:write".into()],
        })
        .await
        .unwrap();
    for (i, p) in permissions.iter().enumerate() {
        // The role to hand out, made by root; a granter without P and one with it.
        root_acme
            .iam
            .put_role(pb::PutRoleRequest {
                tenant: "acme".into(),
                name: format!("holds-{i}"),
                permissions: vec![p.to_string()],
            })
            .await
            .unwrap();
        root_acme
            .iam
            .put_role(pb::PutRoleRequest {
                tenant: "acme".into(),
                name: format!("granter-with-{i}"),
                permissions: vec!["iam:write".into(), p.to_string()],
            })
            .await
            .unwrap();
        let with = n
            .client_with(Some(
                &api_key(
                    &root,
                    "acme",
                    &format!("with-{i}"),
                    &[&format!("granter-with-{i}")],
                    0,
                )
                .await,
            ))
            .await;
        let mut sides = vec![(true, with)];
        if *p != "iam:write" {
            let without = n
                .client_with(Some(
                    &api_key(&root, "acme", &format!("without-{i}"), &["granter-base"], 0).await,
                ))
                .await;
            sides.push((false, without));
        }
        for (holds, c) in sides {
            let who = format!("{p} (holds it: {holds})");
            let role = put_role(&c, format!("made-{i}-{holds}"), vec![p.to_string()]).await;
            let key = c
                .iam
                .clone()
                .create_api_key(pb::CreateApiKeyRequest {
                    tenant: String::new(),
                    service_account: format!("minted-{i}-{holds}"),
                    ttl_ms: 0,
                    roles: vec![format!("holds-{i}")],
                })
                .await;
            let binding = c
                .iam
                .clone()
                .create_binding(pb::CreateBindingRequest {
                    tenant: String::new(),
                    principal: format!("sa:bound-{i}-{holds}"),
                    role: format!("holds-{i}"),
                })
                .await;
            for (how, field, r) in [
                ("a role", "permissions[0]", role.map(|_| ())),
                ("a key", "roles[0]", key.map(|_| ())),
                ("a binding", "role", binding.map(|_| ())),
            ] {
                if holds {
                    r.unwrap_or_else(|e| panic!("{who} through {how}: {e:?}"));
                } else {
                    let e = r.expect_err(&format!("{who} through {how}"));
                    assert_eq!(
                        e.code(),
                        Code::PermissionDenied,
                        "{who} through {how}: {e:?}"
                    );
                    assert!(
                        e.message().contains(field) && e.message().contains("does not hold"),
                        "{who} through {how}: {e:?}"
                    );
                }
            }
        }
    }
    // Nothing the refused calls named was made.
    let mut r = n.client().await;
    let roles = r
        .iam
        .list_roles(pb::ListRolesRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .roles;
    assert!(
        roles.iter().all(|r| !r.name.ends_with("-false")),
        "{roles:?}"
    );
    let keys = r
        .iam
        .list_api_keys(pb::ListApiKeysRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(
        keys.iter().all(|k| !k.service_account.ends_with("-false")),
        "{keys:?}"
    );
    let bindings = r
        .iam
        .list_bindings(pb::ListBindingsRequest {
            tenant: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .bindings;
    assert!(
        bindings.iter().all(|b| !b.principal.ends_with("-false")),
        "{bindings:?}"
    );
}
