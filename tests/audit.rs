//! The audit log through a real `nexus`: writes (with their outcome), denials, logins, a
//! secret read and identity changes are on record with time, principal, tenant, action, resource, result
//! and request id; a tenant sees only its own records; and `nexusctl audit verify` finds a
//! record changed or removed on disk (the tamper test).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{api_key, create_tenants, Nexus};
use nexus_client::{pb, Client};
use nexus_node::audit::{record_key, AuditRecord};
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
        })
        .await
        .unwrap()
        .into_inner()
        .records
}

#[tokio::test]
async fn writes_denials_and_secret_reads_are_on_record_and_tampering_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
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

    // Denials are recorded without holding up the reply: wait for them.
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
    let d = find("memory.put", "sa:viewer");
    assert!(
        d.result.contains("lacks the permission memory:write"),
        "{d:?}"
    );
    let a = find("memory.put", "anonymous");
    assert!(a.result.starts_with("Unauthenticated"));
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
    let original: Vec<u8> = {
        let store = Store::open(&db).unwrap();
        store.get(CF_AUDIT, &record_key(3)).unwrap().unwrap()
    };
    tamper(&|store| {
        let mut r: AuditRecord = codec::decode(&original).unwrap();
        r.principal = "someone-else".into();
        store
            .db()
            .put_cf(store.cf(CF_AUDIT), record_key(3), codec::encode(&r))
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
            .put_cf(store.cf(CF_AUDIT), record_key(3), &original)
            .unwrap();
        store
            .db()
            .delete_cf(store.cf(CF_AUDIT), record_key(5))
            .unwrap();
    });
    n.restart().await;
    let broken = verify();
    assert_eq!(broken.status.code(), Some(1));
    let text = String::from_utf8_lossy(&broken.stdout);
    assert!(text.contains("record 5 is missing"), "{text}");
}
