//! Every acknowledged write survives `kill -9`: 1,000 memories and 1,000 messages are written
//! over gRPC by concurrent clients, the node is SIGKILLed, restarted, and every acknowledged
//! item is read back and found by full-text search.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::Nexus;
use nexus_client::pb;

const MEMORIES: usize = 1_000;
const MESSAGES: usize = 1_000;
const WRITERS: usize = 16;
const CONVERSATIONS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_and_are_searchable_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Small snapshot interval so that the restart also exercises snapshot + compacted log.
    let mut nexus = Nexus::start(
        &dir.path().join("node"),
        &[
            ("NEXUS_RAFT__SNAPSHOT_EVERY_ENTRIES", "50"),
            ("NEXUS_RAFT__KEEP_ENTRIES_AFTER_SNAPSHOT", "10"),
        ],
    )
    .await;
    let client = nexus.client().await;

    let mut conv_ids = Vec::new();
    for i in 0..CONVERSATIONS {
        let c = client
            .clone()
            .conversations
            .create_conversation(pb::CreateConversationRequest {
                id: format!("conv-{i}"),
                title: format!("conversation {i}"),
                metadata: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        conv_ids.push(c.id);
    }

    let acked_memories: Arc<Mutex<BTreeMap<String, (String, u64)>>> = Default::default();
    let acked_messages: Arc<Mutex<Vec<pb::Message>>> = Default::default();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut c = client.clone();
        let acked_memories = acked_memories.clone();
        let acked_messages = acked_messages.clone();
        let conv_ids = conv_ids.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..MEMORIES).step_by(WRITERS) {
                let key = format!("item-{i:05}");
                let value =
                    format!("{{\"text\": \"memory token{i:05}x about zebras\", \"n\": {i}}}");
                let r = c
                    .memory
                    .put(pb::PutRequest {
                        namespace: "crash".into(),
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                acked_memories
                    .lock()
                    .unwrap()
                    .insert(key, (value, r.item.unwrap().version));
            }
            for i in (w..MESSAGES).step_by(WRITERS) {
                let r = c
                    .conversations
                    .append_messages(pb::AppendMessagesRequest {
                        conversation_id: conv_ids[i % CONVERSATIONS].clone(),
                        messages: vec![pb::NewMessage {
                            role: if i % 2 == 0 {
                                "user".into()
                            } else {
                                "assistant".into()
                            },
                            content: format!("message word{i:05}y about giraffes"),
                            ..Default::default()
                        }],
                    })
                    .await
                    .unwrap()
                    .into_inner();
                acked_messages.lock().unwrap().extend(r.messages);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(client);

    nexus.kill9();
    nexus.restart().await;
    let mut c = nexus.client().await;

    let status = c
        .cluster
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.snapshot_index > 0,
        "a snapshot was taken: {status:?}"
    );

    let memories = acked_memories.lock().unwrap().clone();
    assert_eq!(memories.len(), MEMORIES);
    for (key, (value, version)) in &memories {
        let item = c
            .memory
            .get(pb::GetRequest {
                namespace: "crash".into(),
                key: key.clone(),
                consistency: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged memory {key} lost: {e}"))
            .into_inner()
            .item
            .unwrap();
        assert_eq!(&item.value, value);
        assert_eq!(item.version, *version);
    }

    let messages = acked_messages.lock().unwrap().clone();
    assert_eq!(messages.len(), MESSAGES);
    let mut stored: BTreeMap<String, pb::Message> = BTreeMap::new();
    for conv in &conv_ids {
        let mut token = String::new();
        loop {
            let page = c
                .conversations
                .list_messages(pb::ListMessagesRequest {
                    conversation_id: conv.clone(),
                    page_size: 37,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            for m in page.messages {
                stored.insert(m.id.clone(), m);
            }
            token = page.next_page_token;
            if token.is_empty() {
                break;
            }
        }
    }
    for m in &messages {
        assert_eq!(
            stored.get(&m.id),
            Some(m),
            "acknowledged message {} lost or changed",
            m.id
        );
    }
    assert_eq!(stored.len(), MESSAGES);
    for conv in &conv_ids {
        let got = c
            .conversations
            .get_conversation(pb::GetConversationRequest {
                id: conv.clone(),
                consistency: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let n = messages
            .iter()
            .filter(|m| &m.conversation_id == conv)
            .count() as u64;
        assert_eq!(got.message_count, n);
    }

    // Full-text search finds every item after the restart.
    for i in 0..MEMORIES {
        let hits = c
            .search
            .search(pb::SearchRequest {
                query: format!("token{i:05}x"),
                // Exact words: nearest neighbours would add look-alike items.
                mode: pb::RecallMode::Bm25 as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert_eq!(hits.len(), 1, "memory {i} not found by search");
        match &hits[0].item {
            Some(pb::search_hit::Item::Memory(m)) => assert_eq!(m.key, format!("item-{i:05}")),
            other => panic!("unexpected hit {other:?}"),
        }
    }
    for i in 0..MESSAGES {
        let hits = c
            .search
            .search(pb::SearchRequest {
                query: format!("word{i:05}y"),
                mode: pb::RecallMode::Bm25 as i32,
                kinds: vec![pb::HitKind::Message as i32],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert_eq!(hits.len(), 1, "message {i} not found by search");
        match &hits[0].item {
            Some(pb::search_hit::Item::Message(m)) => {
                assert_eq!(m.content, format!("message word{i:05}y about giraffes"))
            }
            other => panic!("unexpected hit {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_search_index_is_rebuilt_from_the_state_machine() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let mut nexus = Nexus::start(
        &data,
        &[
            ("NEXUS_RAFT__SNAPSHOT_EVERY_ENTRIES", "50"),
            ("NEXUS_RAFT__KEEP_ENTRIES_AFTER_SNAPSHOT", "10"),
        ],
    )
    .await;
    let mut c = nexus.client().await;
    for i in 0..200 {
        c.memory
            .put(pb::PutRequest {
                namespace: "idx".into(),
                key: format!("k{i}"),
                value: format!("\"alpha beta marker{i}\""),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(nexus.terminate().code(), Some(0), "clean exit on SIGTERM");
    std::fs::remove_dir_all(data.join("search")).unwrap();
    nexus.restart().await;
    let mut c = nexus.client().await;
    for i in [0, 57, 199] {
        let hits = c
            .search
            .search(pb::SearchRequest {
                query: format!("marker{i}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .hits;
        assert_eq!(hits.len(), 1, "marker{i} after rebuild");
    }
    assert!(nexus.log_text().contains("rebuilt the full-text index"));
}
