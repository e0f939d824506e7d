//! The public API against a real node: every error case gets its precise status naming the
//! field and changes nothing; and the behaviours clients rely on (compare-and-set, TTL,
//! pagination, time ranges, search filters, deletion, health and metrics endpoints).

mod common;
// The HTTP port's bounds (slow, idle and surplus connections).
#[path = "api/conversations.rs"]
mod conversations;
#[path = "api/health.rs"]
mod health;
#[path = "api/http_port.rs"]
mod http_port;

use common::{http_get, Nexus};
use nexus_client::{pb, Client};
use tonic::Code;

async fn node() -> (tempfile::TempDir, Nexus, Client) {
    let dir = tempfile::tempdir().unwrap();
    let nexus = Nexus::start(&dir.path().join("node"), &[]).await;
    let c = nexus.client().await;
    (dir, nexus, c)
}

fn put(ns: &str, key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        namespace: ns.into(),
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

#[track_caller]
fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, mentions: &str) {
    match r {
        Ok(v) => panic!("expected {code:?} mentioning {mentions:?}, got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "status {s:?}");
            assert!(
                s.message().contains(mentions),
                "{:?} does not mention {mentions:?}",
                s.message()
            );
        }
    }
}

async fn last_log_index(c: &mut Client) -> u64 {
    c.cluster
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_log_index
}

async fn all_memories(c: &mut Client, ns: &str) -> Vec<pb::MemoryItem> {
    c.memory
        .list(pb::ListRequest {
            namespace: ns.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_errors_are_precise_and_change_nothing() {
    let (_dir, _nexus, mut c) = node().await;
    let original = c
        .memory
        .put(put("ns", "k", r#"{"a":1}"#))
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    let before = all_memories(&mut c, "ns").await;
    let log_before = last_log_index(&mut c).await;

    // Validation errors: rejected before anything is proposed.
    assert_status(
        c.memory.put(put("", "k", "1")).await,
        Code::InvalidArgument,
        "namespace",
    );
    assert_status(
        c.memory.put(put("bad ns", "k", "1")).await,
        Code::InvalidArgument,
        "namespace",
    );
    assert_status(
        c.memory.put(put("ns", "", "1")).await,
        Code::InvalidArgument,
        "key",
    );
    assert_status(
        c.memory.put(put("ns", &"k".repeat(513), "1")).await,
        Code::InvalidArgument,
        "key",
    );
    assert_status(
        c.memory.put(put("ns", "k", "{not json")).await,
        Code::InvalidArgument,
        "value",
    );
    assert_status(
        c.memory.put(put("ns", "k", "")).await,
        Code::InvalidArgument,
        "value",
    );
    let big = format!("\"{}\"", "x".repeat(1 << 20));
    assert_status(
        c.memory.put(put("ns", "k", &big)).await,
        Code::InvalidArgument,
        "max_value_bytes",
    );
    assert_status(
        c.memory
            .get(pb::GetRequest {
                namespace: "ns".into(),
                key: "k".into(),
                consistency: 7,
            })
            .await,
        Code::InvalidArgument,
        "consistency",
    );
    assert_status(
        c.memory
            .list(pb::ListRequest {
                namespace: "ns".into(),
                page_size: 1001,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_size",
    );
    assert_status(
        c.memory
            .list(pb::ListRequest {
                namespace: "ns".into(),
                page_token: "not a token!".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );
    assert_eq!(
        last_log_index(&mut c).await,
        log_before,
        "invalid requests propose nothing"
    );

    // Unknown keys.
    assert_status(
        c.memory
            .get(pb::GetRequest {
                namespace: "ns".into(),
                key: "nope".into(),
                consistency: 0,
            })
            .await,
        Code::NotFound,
        "nope",
    );
    assert_status(
        c.memory
            .delete(pb::DeleteRequest {
                namespace: "ns".into(),
                key: "nope".into(),
                expected_version: None,
            })
            .await,
        Code::NotFound,
        "nope",
    );

    // Version mismatches: decided by the state machine, which then changes nothing.
    let mut cas = put("ns", "k", r#"{"a":2}"#);
    cas.expected_version = Some(5);
    assert_status(
        c.memory.put(cas).await,
        Code::FailedPrecondition,
        "expected_version",
    );
    let mut create_only = put("ns", "k", r#"{"a":3}"#);
    create_only.expected_version = Some(0);
    assert_status(
        c.memory.put(create_only).await,
        Code::FailedPrecondition,
        "expected_version",
    );
    let mut missing = put("ns", "other", "1");
    missing.expected_version = Some(1);
    assert_status(
        c.memory.put(missing).await,
        Code::FailedPrecondition,
        "does not exist",
    );
    assert_status(
        c.memory
            .delete(pb::DeleteRequest {
                namespace: "ns".into(),
                key: "k".into(),
                expected_version: Some(9),
            })
            .await,
        Code::FailedPrecondition,
        "expected_version",
    );

    assert_eq!(all_memories(&mut c, "ns").await, before, "nothing changed");
    let now = c
        .memory
        .get(pb::GetRequest {
            namespace: "ns".into(),
            key: "k".into(),
            consistency: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(now, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_ttl_and_pagination() {
    let (_dir, _nexus, mut c) = node().await;
    // CAS: create-only, then update from the version read.
    let mut create = put("cas", "counter", "0");
    create.expected_version = Some(0);
    let v1 = c
        .memory
        .put(create)
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(v1.version, 1);
    let mut update = put("cas", "counter", "1");
    update.expected_version = Some(1);
    let v2 = c
        .memory
        .put(update)
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!((v2.version, v2.created_at_ms), (2, v1.created_at_ms));
    assert!(v2.updated_at_ms >= v1.updated_at_ms);
    let deleted = c
        .memory
        .delete(pb::DeleteRequest {
            namespace: "cas".into(),
            key: "counter".into(),
            expected_version: Some(2),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted_version, 2);

    // TTL: readable until it expires, then gone from get, list and search.
    let mut short = put("ttl", "soon", r#""ephemeral quokka""#);
    short.ttl_ms = 800;
    let item = c
        .memory
        .put(short)
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert!(item.expires_at_ms > item.updated_at_ms);
    c.memory
        .put(put("ttl", "stays", r#""permanent quokka""#))
        .await
        .unwrap();
    let get = |c: &mut Client, key: &str| {
        let req = pb::GetRequest {
            namespace: "ttl".into(),
            key: key.into(),
            consistency: 0,
        };
        let mut c = c.clone();
        async move { c.memory.get(req).await }
    };
    assert!(get(&mut c, "soon").await.is_ok());
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert_eq!(
        get(&mut c, "soon").await.unwrap_err().code(),
        Code::NotFound
    );
    let keys: Vec<String> = all_memories(&mut c, "ttl")
        .await
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(keys, vec!["stays".to_string()]);
    let hits = c
        .search
        .search(pb::SearchRequest {
            query: "quokka".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.len(), 1);

    // Pagination: every key exactly once, in order, under a prefix only.
    for i in 0..25 {
        c.memory
            .put(put("page", &format!("a/{i:02}"), "1"))
            .await
            .unwrap();
    }
    c.memory.put(put("page", "b/00", "1")).await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .memory
            .list(pb::ListRequest {
                namespace: "page".into(),
                prefix: "a/".into(),
                page_size: 7,
                page_token: token,
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.items.len() <= 7);
        seen.extend(page.items.into_iter().map(|i| i.key));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("a/{i:02}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filters_time_ranges_and_deletion() {
    let (_dir, nexus, mut c) = node().await;
    assert_status(
        c.search
            .search(pb::SearchRequest {
                query: "  ".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "query",
    );
    assert_status(
        c.search
            .search(pb::SearchRequest {
                query: "x".into(),
                limit: 5000,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "limit",
    );
    assert_status(
        c.search
            .search(pb::SearchRequest {
                query: "x".into(),
                kinds: vec![9],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "kinds",
    );

    c.memory
        .put(put(
            "work",
            "deadline",
            r#"{"note": "the launch deadline is in march"}"#,
        ))
        .await
        .unwrap();
    c.memory
        .put(put(
            "home",
            "garden",
            r#"{"note": "plant tulips before the deadline of autumn"}"#,
        ))
        .await
        .unwrap();
    for id in ["a", "b"] {
        c.conversations
            .create_conversation(pb::CreateConversationRequest {
                id: id.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let first = c
        .conversations
        .append_messages(pb::AppendMessagesRequest {
            conversation_id: "a".into(),
            messages: vec![
                pb::NewMessage {
                    role: "user".into(),
                    content: "what is the deadline for the launch?".into(),
                    ..Default::default()
                },
                pb::NewMessage {
                    role: "assistant".into(),
                    content: "The launch deadline is March 3.".into(),
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let later = c
        .conversations
        .append_messages(pb::AppendMessagesRequest {
            conversation_id: "b".into(),
            messages: vec![pb::NewMessage {
                role: "user".into(),
                content: "another deadline question".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .messages;

    let searcher = c.clone();
    let search = |req: pb::SearchRequest| {
        let mut c = searcher.clone();
        async move { c.search.search(req).await.unwrap().into_inner().hits }
    };
    let q = |query: &str| pb::SearchRequest {
        query: query.into(),
        ..Default::default()
    };

    let all = search(q("deadline")).await;
    assert_eq!(all.len(), 5);
    assert!(
        all.windows(2).all(|w| w[0].score >= w[1].score),
        "ranked by score"
    );
    for h in &all {
        assert!(!h.highlights.is_empty());
        let r = &h.highlights[0];
        assert_eq!(
            h.snippet[r.start as usize..r.end as usize].to_lowercase(),
            "deadline"
        );
    }
    let memories = search(pb::SearchRequest {
        kinds: vec![pb::HitKind::Memory as i32],
        ..q("deadline")
    })
    .await;
    assert_eq!(memories.len(), 2);
    let work = search(pb::SearchRequest {
        namespace: "work".into(),
        ..q("deadline")
    })
    .await;
    assert_eq!(work.len(), 1);
    let in_a = search(pb::SearchRequest {
        conversation_id: "a".into(),
        ..q("deadline")
    })
    .await;
    assert_eq!(in_a.len(), 2);
    let assistant = search(pb::SearchRequest {
        role: "assistant".into(),
        ..q("deadline")
    })
    .await;
    assert_eq!(assistant.len(), 1);
    let since = search(pb::SearchRequest {
        since_ms: later[0].created_at_ms,
        kinds: vec![pb::HitKind::Message as i32],
        ..q("deadline")
    })
    .await;
    assert_eq!(since.len(), 1);
    let until = search(pb::SearchRequest {
        until_ms: later[0].created_at_ms,
        kinds: vec![pb::HitKind::Message as i32],
        ..q("deadline")
    })
    .await;
    assert_eq!(until.len(), 2);
    let phrase = search(q("\"launch deadline\"")).await;
    assert_eq!(phrase.len(), 2, "a memory and a message contain the phrase");

    // Messages in a time range.
    let ranged = c
        .conversations
        .list_messages(pb::ListMessagesRequest {
            conversation_id: "a".into(),
            since_ms: first[1].created_at_ms,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(ranged.len(), 2, "both were appended at the same time");
    let none = c
        .conversations
        .list_messages(pb::ListMessagesRequest {
            conversation_id: "a".into(),
            until_ms: first[0].created_at_ms,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert!(none.is_empty());

    // Deleting removes from reads and search.
    let d = c
        .conversations
        .delete_conversation(pb::DeleteConversationRequest { id: "a".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted_messages, 2);
    c.memory
        .delete(pb::DeleteRequest {
            namespace: "work".into(),
            key: "deadline".into(),
            expected_version: None,
        })
        .await
        .unwrap();
    let left = search(q("deadline")).await;
    assert_eq!(left.len(), 2);
    let listed = c
        .conversations
        .list_conversations(pb::ListConversationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .conversations;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );

    // HTTP endpoints.
    assert_eq!(http_get(&nexus.http("/healthz")).await.0, 200);
    let (code, body) = http_get(&nexus.http("/readyz")).await;
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = http_get(&nexus.http("/metrics")).await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "nexus_grpc_requests_total{code=\"InvalidArgument\",method=\"search.search\"} 3"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("nexus_raft_is_leader 1"));
    assert!(metrics.contains("nexus_wal_syncs_total"));
}
