//! The audit log through a real `nexus`: writes (with their outcome), denials, logins, a
//! secret read and identity changes are on record with time, principal, tenant, action, resource, result
//! and request id; a tenant sees only its own records; and `nexusctl audit verify` finds a
//! record changed or removed on disk (the tamper test).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{api_key, create_tenants, Nexus};
use nexus_client::{pb, Client};
use nexus_node::audit::{self, AuditRecord};
use nexus_node::store::{codec, Store, CF_AUDIT};
use tonic::Code;

const ROOT: &str = "root-key-for-audit-tests-0123456789abcd";
const NEXUSCTL: &str = env!("CARGO_BIN_EXE_nexus");

fn nexusctl_bin() -> std::path::PathBuf {
    // nexusctl is built next to nexus by `cargo test --workspace` / `cargo build`.
    std::path::Path::new(NEXUSCTL).with_file_name("nexusctl")
}

async fn tail(c: &mut Client, limit: u32) -> Vec<pb::AuditRecord> {
    c.audit
        .tail(pb::AuditTailRequest {
            limit,
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records
}

#[tokio::test]
async fn writes_denials_and_secret_reads_are_on_record_and_tampering_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT),
        ("NEXUS_AUTH__DENIAL_WINDOW_SECS", "1"),
    ];
    let mut n = Nexus::start(dir.path(), &env).await;
    let mut root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let mut bot = n
        .client_with(Some(&api_key(&root, "acme", "bot", &["agent"], 0).await))
        .await;
    let mut viewer = n
        .client_with(Some(
            &api_key(&root, "acme", "viewer", &["reader"], 0).await,
        ))
        .await;
    let mut boss = n
        .client_with(Some(&api_key(&root, "acme", "boss", &["admin"], 0).await))
        .await;

    let put = pb::PutRequest {
        namespace: "m".into(),
        key: "k".into(),
        value: "1".into(),
        ..Default::default()
    };
    let reply = bot.memory.put(put.clone()).await.unwrap();
    let put_request_id = reply
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // Rejected by the state machine: on record with its outcome.
    let missing = bot
        .conversations
        .append_messages(pb::AppendMessagesRequest {
            conversation_id: "nope".into(),
            messages: vec![pb::NewMessage {
                role: "user".into(),
                content: "hi".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    // Denied: no permission, and no credentials.
    let denied = viewer.memory.put(put.clone()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let anonymous = n
        .client_with(None)
        .await
        .memory
        .put(put.clone())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    // A secret read.
    boss.secrets
        .set_secret(pb::SetSecretRequest {
            name: "TOKEN".into(),
            value: b"s3cr3t".to_vec(),
        })
        .await
        .unwrap();
    boss.secrets
        .get_secret(pb::GetSecretRequest {
            name: "TOKEN".into(),
            version: 0,
        })
        .await
        .unwrap();

    // Denials are counted and recorded once per window (1 s here): wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records = tail(&mut root, 100).await;
        if records
            .iter()
            .filter(|r| r.result.starts_with("Unauthenticated"))
            .count()
            == 1
            && records
                .iter()
                .any(|r| r.result.starts_with("PermissionDenied"))
            && records.iter().filter(|r| r.action == "auth.login").count() == 4
        {
            break records;
        }
        assert!(
            Instant::now() < deadline,
            "denials not on record: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let find = |action: &str, principal: &str| {
        records
            .iter()
            .find(|r| r.action == action && r.principal == principal)
            .unwrap_or_else(|| panic!("no {action} by {principal}: {records:#?}"))
    };
    let w = find("memory.put", "sa:bot");
    assert_eq!(
        (w.tenant.as_str(), w.resource.as_str(), w.result.as_str()),
        ("acme", "memory/m/k", "ok")
    );
    assert_eq!(w.request_id, put_request_id);
    assert!(w.at_ms > 0 && w.hash.len() == 32);
    let rejected = find("conversation.append", "sa:bot");
    assert!(rejected.result.starts_with("NotFound"), "{rejected:?}");
    let d = find("auth.denied", "sa:viewer");
    assert!(
        d.result.contains("lacks the permission memory:write"),
        "{d:?}"
    );
    assert_eq!(
        (d.tenant.as_str(), d.resource.as_str()),
        ("acme", "1× memory.put from 127.0.0.1")
    );
    let a = find("auth.denied", "anonymous");
    assert!(a.result.starts_with("Unauthenticated"));
    assert_eq!(a.resource, "1× memory.put from 127.0.0.1");
    let read = find("secrets.get", "sa:boss");
    assert_eq!(read.resource, "secret/TOKEN version 1");
    // Logins: each credential's first use on the node, once (bot made several requests).
    for (principal, credential) in [
        ("root", "root key"),
        ("sa:bot", "key/"),
        ("sa:viewer", "key/"),
        ("sa:boss", "key/"),
    ] {
        let logins: Vec<_> = records
            .iter()
            .filter(|r| r.action == "auth.login" && r.principal == principal)
            .collect();
        assert_eq!(logins.len(), 1, "{principal}: {logins:#?}");
        assert!(
            logins[0].resource.starts_with(credential) && logins[0].result == "ok",
            "{:?}",
            logins[0]
        );
    }
    assert!(
        !format!("{records:?}").contains(ROOT),
        "no credential is on record"
    );
    let made = find("iam.create_key", "root");
    assert!(made.resource.contains("sa:bot"), "{made:?}");
    // No value ever reaches the log.
    assert!(!format!("{records:?}").contains("s3cr3t"));
    // Sequence numbers are dense and increasing.
    for pair in records.windows(2) {
        assert_eq!(pair[1].seq, pair[0].seq + 1);
    }

    // A tenant sees its own records only.
    let own = tail(&mut boss, 100).await;
    assert!(
        !own.is_empty() && own.iter().all(|r| r.tenant == "acme"),
        "{own:#?}"
    );
    assert_eq!(
        bot.audit
            .tail(pb::AuditTailRequest::default())
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    let endpoint = n.endpoint();
    let verify = || {
        Command::new(nexusctl_bin())
            .args(["audit", "verify"])
            .env("NEXUS_ENDPOINT", &endpoint)
            .env("NEXUS_TOKEN", ROOT)
            .output()
            .unwrap()
    };
    let ok = verify();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("intact: "));
    let out = Command::new(nexusctl_bin())
        .args(["audit", "tail", "-n", "3", "-o", "json"])
        .env("NEXUS_ENDPOINT", n.endpoint())
        .env("NEXUS_TOKEN", ROOT)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);

    // Tamper with the stored chain while the node is down.
    let db = n.data_dir.join("db");
    let tamper = |f: &dyn Fn(&Store)| {
        let store = Store::open(&db).unwrap();
        f(&store);
    };
    n.terminate();
    let (key3, original, key5) = {
        let store = Store::open(&db).unwrap();
        let key3 = audit::find(&store, 3).unwrap().unwrap();
        let original = store.get(CF_AUDIT, &key3).unwrap().unwrap();
        (key3, original, audit::find(&store, 5).unwrap().unwrap())
    };
    tamper(&|store| {
        let mut r: AuditRecord = codec::decode(&original).unwrap();
        r.principal = "someone-else".into();
        store
            .db()
            .put_cf(store.cf(CF_AUDIT), &key3, codec::encode(&r))
            .unwrap();
    });
    n.restart().await;
    let broken = verify();
    assert_eq!(broken.status.code(), Some(1));
    let text = String::from_utf8_lossy(&broken.stdout);
    assert!(text.contains("record 3 was modified"), "{text}");

    // Put it back, and remove another.
    n.terminate();
    tamper(&|store| {
        store
            .db()
            .put_cf(store.cf(CF_AUDIT), &key3, &original)
            .unwrap();
        store.db().delete_cf(store.cf(CF_AUDIT), &key5).unwrap();
    });
    n.restart().await;
    let broken = verify();
    assert_eq!(broken.status.code(), Some(1));
    let text = String::from_utf8_lossy(&broken.stdout);
    assert!(text.contains("record 5 is missing"), "{text}");
}

/// Refusals cost little: 10,000 requests with bad or forged credentials over 50 connections
/// grow the Raft log by a few entries (denials are counted and audited once per window, and
/// a source over its failed-authentication rate is refused before any read), while a
/// legitimate client from the same address reads and writes throughout, and the node's
/// memory stays bounded. (Latency under such a flood is measured by
/// `nexus-bench refusals`, docs/benchmarks.md; a timed assertion here would be flaky.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_bad_credentials_costs_a_few_log_entries() {
    const REQUESTS: usize = 10_000;
    const CONNECTIONS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT),
        ("NEXUS_AUTH__DENIAL_WINDOW_SECS", "3"),
        // Refusals answered at once: this test is about what they cost, not about slowing
        // the flood (which would make it take 40 s).
        ("NEXUS_AUTH__FAILURE_DELAY_MS", "0"),
    ];
    let n = Nexus::start(dir.path(), &env).await;
    let mut root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let mut agent = n
        .client_with(Some(&api_key(&root, "acme", "bot", &["agent"], 0).await))
        .await;
    let put = |i: usize| pb::PutRequest {
        namespace: "flood".into(),
        key: format!("k{i}"),
        value: i.to_string(),
        ..Default::default()
    };
    agent.memory.put(put(0)).await.unwrap();
    let rss = || common::rss_bytes(n.pid().unwrap());
    let last_index = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            c.cluster
                .status(pb::StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .last_log_index
        }
    };
    let before = last_index(&mut root).await;
    let seq_before = tail(&mut root, 1).await.last().map_or(0, |r| r.seq);
    let rss_before = rss();

    let floods: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let endpoint = n.endpoint();
            tokio::spawn(async move {
                // One connection per task; every request with another credential.
                let channel = tonic::transport::Endpoint::from_shared(endpoint)
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let mut memory = pb::memory_service_client::MemoryServiceClient::new(channel);
                let mut refused = 0;
                for i in 0..REQUESTS / CONNECTIONS {
                    // Unknown API keys (a store read each, until the source is limited),
                    // forged JWTs of an issuer nobody configured, and plain garbage.
                    let token = match i % 3 {
                        0 => format!("nxk_{:016x}_forged{c}x{i}", i * 7919 + c),
                        1 => format!(
                            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
                            base64_url(&format!(
                                r#"{{"iss":"https://evil.example/{i}","sub":"x"}}"#
                            ))
                        ),
                        _ => format!("garbage-{c}-{i}"),
                    };
                    let mut request = tonic::Request::new(pb::GetRequest {
                        namespace: "flood".into(),
                        key: "k0".into(),
                        consistency: 0,
                    });
                    request
                        .metadata_mut()
                        .insert("authorization", format!("Bearer {token}").parse().unwrap());
                    let r = memory.get(request).await;
                    let code = r.expect_err("a bad credential is refused").code();
                    assert!(
                        matches!(code, Code::Unauthenticated | Code::ResourceExhausted),
                        "{code:?}"
                    );
                    refused += 1;
                }
                refused
            })
        })
        .collect();
    // The legitimate client, from the same address, all along.
    let mut written = 0;
    let mut i = 1;
    while !floods.iter().all(|f| f.is_finished()) {
        agent
            .memory
            .put(put(i))
            .await
            .expect("a legitimate write during the flood");
        let got = agent
            .memory
            .get(pb::GetRequest {
                namespace: "flood".into(),
                key: format!("k{i}"),
                consistency: 0,
            })
            .await
            .expect("a legitimate read during the flood")
            .into_inner();
        assert_eq!(got.item.unwrap().value, i.to_string());
        written += 1;
        i += 1;
    }
    let mut refused = 0;
    for f in floods {
        refused += f.await.unwrap();
    }
    assert_eq!(refused, REQUESTS);
    let after = last_index(&mut root).await;
    let grown = after - before - written;
    assert!(
        grown <= 10,
        "{REQUESTS} refusals grew the log by {grown} entries besides the {written} writes"
    );
    let rss_after = rss();
    eprintln!(
        "{REQUESTS} refusals from {CONNECTIONS} connections: the log grew by {grown} entries besides {written} legitimate writes; RSS {} -> {} MiB",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        rss_after < rss_before + (200 << 20),
        "memory grew from {rss_before} to {rss_after} bytes"
    );
    // The refusals are on record, as a few aggregated records.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut records = Vec::new();
        let mut after = seq_before;
        loop {
            let page = root
                .audit
                .tail(pb::AuditTailRequest {
                    limit: 1000,
                    after_seq: after,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .records;
            match page.last() {
                Some(r) => after = r.seq,
                None => break,
            }
            records.extend(page);
        }
        let denied: u64 = records
            .iter()
            .filter(|r| r.action == "auth.denied")
            .map(|r| {
                r.resource
                    .split('×')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum();
        if denied == REQUESTS as u64 {
            // Once on record: still a few entries in all.
            let grown = last_index(&mut root).await - before - written;
            let records = records.iter().filter(|r| r.action == "auth.denied").count();
            eprintln!("on record: {records} auth.denied records, the log grew by {grown} entries besides the writes");
            assert!(grown <= 10, "{grown}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{denied} of {REQUESTS} denials on record"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retention: with at most 20 records per tenant, the leader exports a chain's oldest
/// records to JSON lines files and then removes them; what is kept still verifies and links
/// to the last exported record; the tenant's usage counts its audit records. A tenant deleted
/// and created again under the same name starts a new chain: its new principals never see
/// their predecessor's records (root still does, by incarnation).
#[tokio::test]
async fn retention_exports_then_removes_and_a_recreated_tenant_starts_afresh() {
    const KEEP: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let keep = KEEP.to_string();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT),
        ("NEXUS_AUDIT__MAX_RECORDS_PER_TENANT", keep.as_str()),
        ("NEXUS_AUDIT__RETENTION_INTERVAL_SECS", "1"),
    ];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let mut bot = n
        .client_with(Some(&api_key(&root, "acme", "bot", &["agent"], 0).await))
        .await;
    let mut boss = n
        .client_with(Some(&api_key(&root, "acme", "boss", &["admin"], 0).await))
        .await;
    // boss's login goes on record now, not in the middle of the checks below.
    let _ = boss
        .memory
        .get(pb::GetRequest {
            namespace: "n".into(),
            key: "none".into(),
            consistency: 0,
        })
        .await;
    const WRITES: u64 = 60;
    for i in 0..WRITES {
        bot.memory
            .put(pb::PutRequest {
                namespace: "n".into(),
                key: format!("k{i}"),
                value: i.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let usage = |root: &Client| {
        let mut root = root.clone();
        async move {
            root.iam
                .get_tenant_usage(pb::GetTenantUsageRequest {
                    tenant: "acme".into(),
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let kept = loop {
        let u = usage(&root).await;
        if u.audit_records == KEEP {
            break u;
        }
        assert!(
            Instant::now() < deadline,
            "acme keeps {} audit records",
            u.audit_records
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        kept.audit_bytes > 0 && kept.audit_bytes < 20 * 1024,
        "{kept:?}"
    );
    // What is kept: the newest, still a chain, linked to the last exported record.
    let records = tail(&mut boss, 1000).await;
    assert_eq!(records.len() as u64, KEEP, "{records:#?}");
    assert!(records
        .iter()
        .all(|r| r.tenant == "acme" && r.incarnation == 1));
    let last_put = records
        .iter()
        .rev()
        .find(|r| r.action == "memory.put")
        .unwrap();
    assert_eq!(last_put.resource, format!("memory/n/k{}", WRITES - 1));
    let exports = n.data_dir.join("audit-export").join("acme").join("1");
    let mut files: Vec<_> = std::fs::read_dir(&exports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let exported: Vec<serde_json::Value> = files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    // Nothing lost: every acme record was either exported or kept (a record exported twice,
    // by a retried pass, would show as a duplicate here).
    let mut seqs: Vec<u64> = exported
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    seqs.extend(records.iter().map(|r| r.seq));
    let total = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), total, "no record exported twice");
    assert!(total as u64 >= WRITES + 2, "{total} records of acme");
    assert_eq!(
        exported[0]["prev_seq"], 0,
        "the export starts at the chain's start"
    );
    let last_exported = exported.last().unwrap();
    assert_eq!(last_exported["seq"].as_u64(), Some(records[0].prev_seq));
    let hex: String = records[0]
        .prev_hash
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(last_exported["hash"].as_str(), Some(hex.as_str()));
    for pair in exported.windows(2) {
        assert_eq!(pair[1]["prev_seq"], pair[0]["seq"]);
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    let verify = |c: &Client| {
        let mut c = c.clone();
        async move {
            c.audit
                .verify(pb::AuditVerifyRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let v = verify(&root).await;
    assert!(v.intact, "{}", v.problem);
    let v = verify(&boss).await;
    assert!(v.intact && v.chains == 1 && v.records == KEEP, "{v:?}");

    // The TTL sweeper's removals are on the tenant's record too.
    bot.memory
        .put(pb::PutRequest {
            namespace: "n".into(),
            key: "brief".into(),
            value: "1".into(),
            ttl_ms: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let expired = loop {
        let records = tail(&mut boss, 5).await;
        if let Some(r) = records.iter().find(|r| r.action == "memory.expire") {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no expiry on record: {records:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (
            expired.principal.as_str(),
            expired.resource.as_str(),
            expired.result.as_str()
        ),
        ("system:ttl", "memory/n/brief expired", "ok")
    );

    // acme is deleted and created again: a new chain.
    let mut iam = root.iam.clone();
    iam.delete_tenant(pb::DeleteTenantRequest { id: "acme".into() })
        .await
        .unwrap();
    create_tenants(&root, &["acme"]).await;
    let mut heir = n
        .client_with(Some(&api_key(&root, "acme", "heir", &["admin"], 0).await))
        .await;
    heir.memory
        .put(pb::PutRequest {
            namespace: "n".into(),
            key: "fresh".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let theirs = tail(&mut heir, 1000).await;
    assert!(
        !theirs.is_empty()
            && theirs
                .iter()
                .all(|r| r.incarnation == 2 && r.principal != "sa:bot"),
        "{theirs:#?}"
    );
    // Naming another tenant is refused to anyone but root.
    let other = heir
        .audit
        .tail(pb::AuditTailRequest {
            tenant: "default".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    // Root sees both incarnations of acme.
    let mut root_audit = root.audit.clone();
    let both = root_audit
        .tail(pb::AuditTailRequest {
            limit: 1000,
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(both
        .iter()
        .any(|r| r.incarnation == 1 && r.principal == "sa:bot"));
    assert!(both
        .iter()
        .any(|r| r.incarnation == 2 && r.principal == "sa:heir"));
    let u = usage(&root).await;
    assert!(u.audit_records < 10, "the new acme's records only: {u:?}");
}

fn base64_url(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
