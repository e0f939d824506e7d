//! Per-tenant quotas through real `nexus` processes with `[auth]` on: stored items and bytes
//! are counted by every node in apply and a write over a limit is refused with
//! RESOURCE_EXHAUSTED naming the limit, changing nothing; deletes are always allowed; a
//! tenant's own request rate replaces the node's. Only root sets limits. And load the node
//! cannot take is shed: writes over the pending-writes bound are refused RESOURCE_EXHAUSTED
//! while the node stays ready and loses no acknowledged write.

mod common;

use std::time::Duration;

use common::{api_key, create_tenants, Nexus};
use nexus_client::{pb, Client};
use tonic::Code;

const ROOT_KEY: &str = "quota-test-root-key-0123456789abcdefghij";

fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        namespace: "q".into(),
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

async fn usage(c: &mut Client, tenant: &str) -> pb::TenantUsage {
    c.iam
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant: tenant.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn set_limits(root: &mut Client, tenant: &str, limits: pb::TenantLimits) {
    root.iam
        .set_tenant_limits(pb::SetTenantLimitsRequest {
            id: tenant.into(),
            limits: Some(limits),
        })
        .await
        .unwrap();
}

fn assert_over(s: &tonic::Status, limit: &str) {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(
        s.message().contains(limit) && s.message().contains("acme"),
        "the refusal names the limit and the tenant: {}",
        s.message()
    );
}

#[tokio::test]
async fn stored_items_and_bytes_are_counted_alike_on_every_node_and_limited() {
    let _serial = common::one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT_KEY),
    ];
    let mut nodes = Nexus::start_cluster(dir.path(), 3, &env).await;
    let mut root = nodes[0].client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let admin = api_key(&root, "acme", "ops", &["admin"], 0).await;
    let agent = api_key(&root, "acme", "bot", &["agent"], 0).await;
    let mut acme = nodes[1].client_with(Some(&admin)).await;
    let mut bot = nodes[2].client_with(Some(&agent)).await;

    // A new tenant stores nothing; each write is counted.
    let empty = usage(&mut acme, "").await;
    assert_eq!(
        (empty.tenant.as_str(), empty.items, empty.bytes),
        ("acme", 0, 0)
    );
    for i in 0..5 {
        bot.memory
            .put(put(&format!("k{i}"), "\"0123456789\""))
            .await
            .unwrap();
    }
    let five = usage(&mut acme, "").await;
    assert_eq!(five.items, 5);
    assert!(five.bytes > 5 * 12, "keys and values are counted: {five:?}");
    // Overwriting with a value of the same size changes nothing; a longer one adds its bytes.
    bot.memory.put(put("k0", "\"9876543210\"")).await.unwrap();
    let same = usage(&mut acme, "").await;
    assert_eq!((same.items, same.bytes), (five.items, five.bytes));
    // The tenant's audit records are counted apart (each write has one), not in `bytes`.
    assert!(
        same.audit_records == five.audit_records + 1 && same.audit_bytes > five.audit_bytes,
        "{five:?} -> {same:?}"
    );
    bot.memory.put(put("k0", "\"98765432100\"")).await.unwrap();
    let grown = usage(&mut acme, "").await;
    assert_eq!((grown.items, grown.bytes), (5, five.bytes + 1));

    // Only root sets limits; an agent cannot even read the usage.
    let s = acme
        .iam
        .set_tenant_limits(pb::SetTenantLimitsRequest {
            id: "acme".into(),
            limits: Some(pb::TenantLimits::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let s = bot
        .iam
        .get_tenant_usage(pb::GetTenantUsageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    // Nor reads another tenant's.
    let s = acme
        .iam
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant: "globex".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    // Bad limits name the field.
    let s = root
        .iam
        .set_tenant_limits(pb::SetTenantLimitsRequest {
            id: "acme".into(),
            limits: Some(pb::TenantLimits {
                requests_per_second: -1.0,
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("limits.requests_per_second"), "{s:?}");
    let s = root
        .iam
        .set_tenant_limits(pb::SetTenantLimitsRequest {
            id: "acme".into(),
            limits: None,
        })
        .await
        .unwrap_err();
    assert!(s.code() == Code::InvalidArgument && s.message().contains("limits"));
    let s = root
        .iam
        .set_tenant_limits(pb::SetTenantLimitsRequest {
            id: "nobody".into(),
            limits: Some(pb::TenantLimits::default()),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "{s:?}");

    // Items: up to 7, so two more fit and the third is refused, changing nothing.
    set_limits(
        &mut root,
        "acme",
        pb::TenantLimits {
            max_items: 7,
            ..Default::default()
        },
    )
    .await;
    bot.memory.put(put("k5", "\"a\"")).await.unwrap();
    bot.memory.put(put("k6", "\"b\"")).await.unwrap();
    let full = usage(&mut acme, "").await;
    assert_eq!(full.items, 7);
    let s = bot.memory.put(put("k7", "\"c\"")).await.unwrap_err();
    assert_over(&s, "quotas.max_items");
    let s = bot
        .memory
        .get(pb::GetRequest {
            namespace: "q".into(),
            key: "k7".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound, "the refused write left nothing");
    let after = usage(&mut acme, "").await;
    assert_eq!((after.items, after.bytes), (full.items, full.bytes));
    // Its refusal is on record, and the record is not in the data's bytes.
    assert_eq!(after.audit_records, full.audit_records + 1);
    // A conversation and its messages are items too.
    let s = bot
        .conversations
        .create_conversation(pb::CreateConversationRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_over(&s, "quotas.max_items");
    // At the limit, overwriting is still allowed, and deleting always is.
    bot.memory.put(put("k6", "\"bb\"")).await.unwrap();
    for i in 3..7 {
        bot.memory
            .delete(pb::DeleteRequest {
                namespace: "q".into(),
                key: format!("k{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(usage(&mut acme, "").await.items, 3);
    bot.conversations
        .create_conversation(pb::CreateConversationRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let message = |content: &str| pb::NewMessage {
        role: "user".into(),
        content: content.into(),
        ..Default::default()
    };
    // 4 items; a batch of 4 messages would make 8: the whole append is refused.
    let s = bot
        .conversations
        .append_messages(pb::AppendMessagesRequest {
            conversation_id: "c1".into(),
            messages: (0..4).map(|i| message(&format!("m{i}"))).collect(),
        })
        .await
        .unwrap_err();
    assert_over(&s, "quotas.max_items");
    let conv = bot
        .conversations
        .get_conversation(pb::GetConversationRequest {
            id: "c1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        conv.message_count, 0,
        "no message of the refused batch was kept"
    );
    bot.conversations
        .append_messages(pb::AppendMessagesRequest {
            conversation_id: "c1".into(),
            messages: (0..3).map(|i| message(&format!("m{i}"))).collect(),
        })
        .await
        .unwrap();
    assert_eq!(usage(&mut acme, "").await.items, 7);
    // Deleting the conversation frees it and its messages.
    bot.conversations
        .delete_conversation(pb::DeleteConversationRequest { id: "c1".into() })
        .await
        .unwrap();
    assert_eq!(usage(&mut acme, "").await.items, 3);

    // Bytes: room for about 200 more.
    let now = usage(&mut acme, "").await;
    set_limits(
        &mut root,
        "acme",
        pb::TenantLimits {
            max_bytes: now.bytes + 200,
            ..Default::default()
        },
    )
    .await;
    let big = format!("\"{}\"", "x".repeat(500));
    let s = bot.memory.put(put("big", &big)).await.unwrap_err();
    assert_over(&s, "quotas.max_bytes");
    assert_eq!(usage(&mut acme, "").await.bytes, now.bytes);
    bot.memory.put(put("small", "\"fits\"")).await.unwrap();
    // Secrets count as stored bytes.
    let s = acme
        .secrets
        .set_secret(pb::SetSecretRequest {
            name: "BIG".into(),
            value: "s".repeat(400).into_bytes(),
        })
        .await
        .unwrap_err();
    assert_over(&s, "quotas.max_bytes");

    // Another tenant is not limited by acme's quotas.
    let g = api_key(&root, "globex", "bot", &["agent"], 0).await;
    let mut globex = nodes[0].client_with(Some(&g)).await;
    for i in 0..10 {
        globex
            .memory
            .put(put(&format!("g{i}"), &big))
            .await
            .unwrap();
    }
    assert_eq!(usage(&mut root, "globex").await.items, 10);

    // Every node holds the same figures, and keeps them over a restart.
    let expected = usage(&mut root, "acme").await;
    for n in nodes.iter() {
        let mut c = n.client().await;
        assert_eq!(
            usage(&mut c, "acme").await,
            expected,
            "node {}",
            n.peer_port
        );
    }
    nodes[2].kill9();
    nodes[2].restart().await;
    // It may have led: the read waits for the cluster to agree on a leader again.
    common::agreed_leader(&nodes).await;
    let mut c = nodes[2].client().await;
    assert_eq!(
        usage(&mut c, "acme").await,
        expected,
        "after kill -9 and restart"
    );

    // A deleted tenant's figures go with it; made again, it starts from nothing.
    root.iam
        .delete_tenant(pb::DeleteTenantRequest {
            id: "globex".into(),
        })
        .await
        .unwrap();
    let s = root
        .iam
        .get_tenant_usage(pb::GetTenantUsageRequest {
            tenant: "globex".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    create_tenants(&root, &["globex"]).await;
    let fresh = usage(&mut root, "globex").await;
    assert_eq!((fresh.items, fresh.bytes), (0, 0));
}

#[tokio::test]
async fn a_tenants_own_request_rate_replaces_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT_KEY),
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
    // No limit on this node: 30 requests at once pass.
    for _ in 0..30 {
        acme.memory.list(list()).await.unwrap();
    }
    set_limits(
        &mut root,
        "acme",
        pb::TenantLimits {
            requests_per_second: 2.0,
            burst: 3,
            ..Default::default()
        },
    )
    .await;
    let mut refused = None;
    for _ in 0..10 {
        if let Err(s) = acme.memory.list(list()).await {
            refused = Some(s);
            break;
        }
    }
    assert_over(
        &refused.expect("10 requests at once exceed 2/s with a burst of 3"),
        "quotas.requests_per_second",
    );
    for _ in 0..30 {
        globex.memory.list(list()).await.unwrap();
    }
    // Cleared, the tenant is back to the node's setting (none).
    tokio::time::sleep(Duration::from_millis(600)).await;
    set_limits(&mut root, "acme", pb::TenantLimits::default()).await;
    for _ in 0..30 {
        acme.memory.list(list()).await.unwrap();
    }
}

/// Many times the writes a node can take at once, for `seconds`: the excess is shed with
/// RESOURCE_EXHAUSTED naming `limits.max_pending_writes`, the node stays ready throughout,
/// every acknowledged write reads back afterwards, and the node serves normally after.
async fn overload(seconds: u64) {
    const CONNECTIONS: usize = 8;
    const WRITERS_PER_CONNECTION: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[("NEXUS_LIMITS__MAX_PENDING_WRITES", "32")]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for c in 0..CONNECTIONS {
        let client = n.client().await;
        for w in 0..WRITERS_PER_CONNECTION {
            let (mut client, stop) = (client.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let (mut acked, mut shed) = (Vec::new(), 0u64);
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("{c}-{w}-{i}");
                    i += 1;
                    match client.memory.put(put(&key, &i.to_string())).await {
                        Ok(_) => acked.push((key, i)),
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            assert!(s.message().contains("retry"), "{s:?}");
                            shed += 1;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err(s) => panic!("{key}: {s:?}"),
                    }
                }
                (acked, shed)
            }));
        }
    }
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        let (code, _) = common::http_get(&n.http("/readyz")).await;
        assert_eq!(code, 200, "the node stays ready under the flood");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut acked, mut shed) = (Vec::new(), 0);
    for w in writers {
        let (a, s) = w.await.unwrap();
        acked.extend(a);
        shed += s;
    }
    assert!(
        shed > 0,
        "{} writers at once against a bound of 32 shed nothing",
        CONNECTIONS * WRITERS_PER_CONNECTION
    );
    assert!(!acked.is_empty());
    let metrics = common::http_get(&n.http("/metrics")).await.1;
    assert!(
        metrics.contains("nexus_load_shed_total{what=\"write\"}"),
        "shedding is counted"
    );
    // Nothing acknowledged is lost, and the node takes writes normally again.
    let mut c = n.client().await;
    for (key, value) in &acked {
        let got = c
            .memory
            .get(pb::GetRequest {
                namespace: "q".into(),
                key: key.clone(),
                consistency: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged {key} is lost: {e:?}"))
            .into_inner();
        assert_eq!(got.item.unwrap().value, value.to_string());
    }
    for i in 0..100 {
        c.memory
            .put(put(&format!("after-{i}"), "1"))
            .await
            .expect("normal service after the flood");
    }
    eprintln!(
        "overload for {seconds} s: {} writes acknowledged, {shed} shed",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overloaded_node_sheds_writes_and_loses_none_it_acknowledged() {
    overload(5).await;
}

/// The long variant: `cargo test -p nexus-node --test quotas -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn an_overloaded_node_sheds_writes_for_30_seconds() {
    overload(30).await;
}
