//! A data directory written by an older release opens with this build, is migrated (format 3
//! to 4: the log and Raft's metadata keyed by a group id), and serves every item it holds: tests/fixtures/data-format-3.tar.gz was
//! made by the build before the replication-layer change (issue 13) with
//! tests/fixtures/make-data-dir.sh, with authentication on. The test starts the current
//! `nexus` on a copy and reads back memories, a conversation, a semantic memory, a secret of
//! two versions, the identities (an API key made then still authenticates), the audit chain
//! (intact, and still appended to), and full-text search over the old data.

mod common;

use std::path::Path;

use common::Nexus;
use nexus_client::{pb, Client};

const FIXTURE: &str = "tests/fixtures/data-format-3.tar.gz";

fn unpack(into: &Path) -> serde_json::Value {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(FIXTURE);
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(into)
        .status()
        .expect("running tar");
    assert!(status.success(), "unpacking {}", fixture.display());
    let manifest = std::fs::read_to_string(into.join("data/manifest.json")).unwrap();
    serde_json::from_str(&manifest).unwrap()
}

#[tokio::test]
async fn a_data_directory_of_the_previous_release_serves_every_item() {
    let dir = tempfile::tempdir().unwrap();
    let m = unpack(dir.path());
    let s = |k: &str| m[k].as_str().unwrap().to_string();
    let (root_key, master, token) = (s("root_key"), s("master_key"), s("token"));
    let node = Nexus::start(
        &dir.path().join("data"),
        &[
            ("NEXUS_AUTH__ENABLED", "true"),
            ("NEXUS_ROOT_KEY", &root_key),
            ("NEXUS_MASTER_KEY", &master),
        ],
    )
    .await;
    // Migrated to the current format (4: the log and Raft's metadata keyed by group; 5: the
    // audit log as one chain per tenant, re-chained on open; 6: schedules; 7: workflows and hooks).
    let format = std::fs::read_to_string(dir.path().join("data/FORMAT")).unwrap();
    assert_eq!(format.trim(), "nexus-data-format 7");
    assert!(
        node.log_text()
            .contains("the format-4 audit chain verifies; re-chaining it per tenant"),
        "the old chain is verified before it is re-chained"
    );
    assert!(
        node.log_text().contains("migrating data directory"),
        "the migration is logged"
    );
    let mut bot = Client::connect_with_token(&node.endpoint(), Some(&token))
        .await
        .unwrap();
    let mut root = node.client().await;

    // The API key of the old data authenticates, with its tenant and role.
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
    let bindings = bot
        .iam
        .list_bindings(pb::ListBindingsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .bindings;
    assert!(bindings
        .iter()
        .any(|b| b.principal == "sa:bot" && b.role == "auditor"));

    // Memories, with their versions and TTL; and the other tenant's.
    let get = |ns: &str, key: &str| pb::GetRequest {
        namespace: ns.into(),
        key: key.into(),
        ..Default::default()
    };
    let editor = bot
        .memory
        .get(get("prefs", "editor"))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(
        (editor.value.as_str(), editor.version),
        (r#"{"name": "vim"}"#, 2)
    );
    let deadline = bot
        .memory
        .get(get("notes", "deadline"))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(deadline.value, r#""the launch deadline is March 3""#);
    assert!(deadline.expires_at_ms > deadline.created_at_ms);
    let other = root
        .memory
        .get(get("prefs", "root-only"))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(other.value, r#""in the default tenant""#);
    assert_eq!(
        bot.memory
            .get(get("prefs", "root-only"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound,
        "tenants stay apart"
    );

    // The conversation.
    let messages = bot
        .conversations
        .list_messages(pb::ListMessagesRequest {
            conversation_id: s("conversation"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    let texts: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            ("user", "When is the launch?"),
            ("assistant", "The launch deadline is March 3.")
        ]
    );
    assert_eq!(messages[1].output_tokens, Some(9));

    // The semantic memory.
    let memory = bot
        .memory
        .get_semantic(pb::GetSemanticRequest {
            id: s("semantic"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(memory.text, "The Apollo launch slipped to the end of March");

    // The secret, both versions, opened with the same master key.
    for (version, want) in [(0, "v2"), (1, "v1")] {
        let r = bot
            .secrets
            .get_secret(pb::GetSecretRequest {
                name: "API_TOKEN".into(),
                version,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(String::from_utf8(r.value).unwrap(), want);
    }

    // Full-text search over the old data (the index, resumed or rebuilt).
    let hits = bot
        .search
        .search(pb::SearchRequest {
            query: "deadline".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(hits.len() >= 2, "{hits:?}");

    // The audit chain of the old writes is intact, and new writes extend it.
    let before = root
        .audit
        .verify(pb::AuditVerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(before.intact, "{}", before.problem);
    assert!(before.records > 10, "{} records", before.records);
    bot.memory
        .put(pb::PutRequest {
            namespace: "prefs".into(),
            key: "editor".into(),
            value: r#"{"name": "helix"}"#.into(),
            expected_version: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let after = root
        .audit
        .verify(pb::AuditVerifyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(after.intact, "{}", after.problem);
    assert!(after.records > before.records);
    let tail = root
        .audit
        .tail(pb::AuditTailRequest {
            limit: 5,
            after_seq: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        tail.iter()
            .any(|r| r.action == "memory.put" && r.principal == "sa:bot"),
        "{tail:?}"
    );
    // The old records kept their sequence numbers and went to their tenants' chains: an
    // existing tenant's records are its first incarnation's.
    assert!(
        tail.iter()
            .filter(|r| r.tenant == "acme")
            .all(|r| r.incarnation == 1),
        "{tail:?}"
    );
    for pair in tail.windows(2) {
        assert!(pair[1].seq > pair[0].seq, "{tail:?}");
    }
}
