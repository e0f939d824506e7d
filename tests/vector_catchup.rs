//! The vector indexer against an index that fails on purpose (as a remote Qdrant that is down
//! does): writes go on while it is down, a linearizable recall says the index is behind, and
//! once it answers again it catches up from its watermark with nothing lost, nothing extra,
//! and nothing replayed that it already held durably; and a new index over a compacted log is
//! rebuilt from the state machine, memories and messages alike. In process, with the real
//! store, Raft node and local model.

mod in_process;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use in_process::Parts;
use nexus_node::cluster::log_store::LogStore;
use nexus_node::command::Scope;
use nexus_node::error::NexusError;
use nexus_node::memory::conversations::NewMessageRequest;
use nexus_node::memory::semantic::{RememberRequest, SemanticRecord};
use nexus_node::search::recall::{RecallMode, RecallRequest, Recaller};
use nexus_node::search::vector::local::LocalIndex;
use nexus_node::search::vector::{
    PointKind, VectorChange, VectorError, VectorFilter, VectorHit, VectorIndex, VectorIndexer,
};
use nexus_node::service::conversations::ConversationService;
use nexus_node::service::semantic::SemanticService;

/// A local index behind a switch: while `down`, every call fails as an unreachable server's.
struct Flaky {
    inner: LocalIndex,
    down: AtomicBool,
    failures: AtomicUsize,
    /// Changes handed to `apply` while up.
    applied_changes: AtomicUsize,
}

impl Flaky {
    fn check(&self) -> Result<(), VectorError> {
        if self.down.load(Ordering::SeqCst) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(VectorError::Unavailable(
                "connection refused (on purpose)".into(),
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl VectorIndex for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    fn durable_watermark(&self) -> Result<u64, VectorError> {
        self.check()?;
        self.inner.durable_watermark()
    }
    fn apply(&self, changes: &[VectorChange], upto: u64) -> Result<(), VectorError> {
        self.check()?;
        self.applied_changes
            .fetch_add(changes.len(), Ordering::SeqCst);
        self.inner.apply(changes, upto)?;
        // As a remote index does: durable once acknowledged.
        self.inner.persist()
    }
    fn persist(&self) -> Result<(), VectorError> {
        self.check()?;
        self.inner.persist()
    }
    fn clear(&self) -> Result<(), VectorError> {
        self.check()?;
        self.inner.clear()
    }
    async fn search(
        &self,
        tenant: &str,
        query: &[f32],
        k: usize,
        filter: &VectorFilter,
    ) -> Result<Vec<VectorHit>, VectorError> {
        self.check()?;
        self.inner.search(tenant, query, k, filter).await
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_rides_out_a_failing_index_and_catches_up() {
    let parts = Parts::start(|c| c.search.wait_timeout_ms = 1_000).await;
    parts.create_tenant("t").await;
    let (config, node, fulltext, embedder) =
        (&parts.config, &parts.node, &parts.fulltext, &parts.embedder);
    let flaky = Arc::new(Flaky {
        inner: LocalIndex::open(&parts.dir.path().join("vectors"), parts.hnsw()).unwrap(),
        down: AtomicBool::new(true),
        failures: AtomicUsize::new(0),
        applied_changes: AtomicUsize::new(0),
    });
    let start_indexer = |index: Arc<Flaky>| {
        VectorIndexer::start(
            index,
            node.log_follower(0),
            Duration::from_millis(200),
            Duration::from_millis(1_000),
        )
        .unwrap()
    };
    // Down from the start: even the watermark cannot be read, and the node serves anyway.
    let indexer = start_indexer(flaky.clone());
    let semantic =
        SemanticService::new(node.clone(), config.limits.clone(), Some(embedder.clone()));
    let recaller = Recaller::new(
        node.clone(),
        fulltext.clone(),
        Some(indexer.clone()),
        Some(embedder.clone()),
        config.limits.clone(),
        &config.search,
    );
    let mut memories: Vec<SemanticRecord> = Vec::new();
    for i in 0..20 {
        let r = semantic
            .remember(
                &Scope::system("t"),
                RememberRequest {
                    text: format!("memory number {i} about topic {}", i % 4),
                    ..Default::default()
                },
            )
            .await
            .expect("writes succeed while the vector index is down");
        memories.push(r);
    }
    let vector_recall = RecallRequest {
        query: "topic".into(),
        k: 50,
        mode: RecallMode::Vector,
        ..Default::default()
    };
    match recaller.recall("t", &vector_recall).await {
        Err(NexusError::Unavailable { message, .. }) => {
            assert!(message.contains("vector index"), "{message}")
        }
        other => panic!("a linearizable recall must not answer from a stale index: {other:?}"),
    }
    assert!(flaky.failures.load(Ordering::SeqCst) > 0);

    // Back up: it catches up on its own.
    flaky.down.store(false, Ordering::SeqCst);
    let applied = node.applied().borrow().index;
    wait_until("the index caught up", || indexer.watermark() >= applied).await;
    let hits = recaller.recall("t", &vector_recall).await.unwrap();
    assert_eq!(hits.len(), 20);

    // Down again: forget some, remember more; up again: exactly the live ones remain.
    flaky.down.store(true, Ordering::SeqCst);
    for m in memories.drain(..5) {
        semantic.forget(&Scope::system("t"), &m.id).await.unwrap();
    }
    for i in 20..30 {
        memories.push(
            semantic
                .remember(
                    &Scope::system("t"),
                    RememberRequest {
                        text: format!("memory number {i} about topic {}", i % 4),
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    flaky.down.store(false, Ordering::SeqCst);
    let applied = node.applied().borrow().index;
    wait_until("the index caught up again", || {
        indexer.watermark() >= applied
    })
    .await;
    let hits = recaller.recall("t", &vector_recall).await.unwrap();
    let mut got: Vec<&str> = hits.iter().map(|h| h.item.id()).collect();
    let mut want: Vec<&str> = memories.iter().map(|m| m.id.as_str()).collect();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want, "exactly the live memories, once each");
    for m in &memories {
        let near = flaky
            .search("t", &m.embedding, 1, &VectorFilter::default())
            .await
            .unwrap();
        assert_eq!(near[0].seq, m.seq);
    }

    // A new indexer on the same index resumes from its durable watermark: nothing is replayed.
    indexer.shutdown();
    let before = flaky.applied_changes.load(Ordering::SeqCst);
    let reopened = start_indexer(flaky.clone());
    wait_until("the reopened indexer is at the applied index", || {
        reopened.watermark() >= applied
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(flaky.applied_changes.load(Ordering::SeqCst), before);
    reopened.shutdown();
    parts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_index_is_rebuilt_from_the_state_machine_when_the_log_is_compacted() {
    let parts = Parts::start(|_| {}).await;
    parts.create_tenant("t").await;
    let (config, node, embedder) = (&parts.config, &parts.node, &parts.embedder);
    let semantic =
        SemanticService::new(node.clone(), config.limits.clone(), Some(embedder.clone()));
    let conversations =
        ConversationService::new(node.clone(), config.limits.clone(), Some(embedder.clone()));
    let mut memories = Vec::new();
    for i in 0..5 {
        memories.push(
            semantic
                .remember(
                    &Scope::system("t"),
                    RememberRequest {
                        text: format!("memory number {i}"),
                        ..Default::default()
                    },
                )
                .await
                .unwrap(),
        );
    }
    semantic
        .forget(&Scope::system("t"), &memories[0].id)
        .await
        .unwrap();
    let message = |content: &str| NewMessageRequest {
        role: "user".into(),
        content: content.into(),
        metadata: String::new(),
        input_tokens: None,
        output_tokens: None,
    };
    for conversation in ["kept", "dropped"] {
        conversations
            .create(&Scope::system("t"), conversation, "", "")
            .await
            .unwrap();
        conversations
            .append(
                &Scope::system("t"),
                conversation,
                vec![message("first words"), message(""), message("second words")],
            )
            .await
            .unwrap();
    }
    conversations
        .delete(&Scope::system("t"), "dropped")
        .await
        .unwrap();

    // Snapshot and purge the whole log: a new index cannot replay it and must rebuild.
    let applied = node.applied().borrow().index;
    node.raft.trigger().snapshot().await.unwrap();
    wait_until("the snapshot is taken", || {
        node.status().snapshot_index >= applied
    })
    .await;
    node.raft.trigger().purge_log(applied).await.unwrap();
    wait_until("the log is purged", || {
        LogStore::<nexus_node::command::Nexus>::read_range(&node.store, node.group, 1, 2)
            .unwrap()
            .is_empty()
    })
    .await;

    let index =
        Arc::new(LocalIndex::open(&parts.dir.path().join("fresh-vectors"), parts.hnsw()).unwrap());
    let indexer = VectorIndexer::start(
        index.clone(),
        node.log_follower(0),
        Duration::from_secs(30),
        Duration::from_secs(5),
    )
    .unwrap();
    wait_until("the rebuilt index is at the applied index", || {
        indexer.watermark() >= applied
    })
    .await;
    // 4 live memories and the 2 non-empty messages of the kept conversation.
    let all = index
        .search("t", &memories[1].embedding, 100, &VectorFilter::default())
        .await
        .unwrap();
    let count = |kind| all.iter().filter(|h| h.kind == kind).count();
    assert_eq!(
        (count(PointKind::Memory), count(PointKind::Message)),
        (4, 2)
    );
    assert!(all.iter().all(|h| h.seq != memories[0].seq));
    // Rebuilt durably: the watermark was saved with it.
    assert_eq!(index.durable_watermark().unwrap(), applied);
    indexer.shutdown();
    parts.stop().await;
}
