//! The indexer thread: follows the log (`LogFollower`), re-indexes what each entry touched,
//! commits with the watermark as payload, and rebuilds from the state machine when told to.

use super::schema::*;
use super::*;

/// Entries read from the log per indexing step.
pub(super) const INDEX_BATCH_ENTRIES: u64 = 2_000;
/// How long new entries wait to be indexed together when no search asks for them.
pub(super) const INDEX_DELAY: Duration = Duration::from_millis(50);
/// How often the indexer thread looks at its stop flag while idle.
pub(super) const IDLE_POLL: Duration = Duration::from_millis(200);

/// The indexer thread's state.
pub(super) struct Indexer {
    pub(super) writer: IndexWriter,
    pub(super) reader: IndexReader,
    pub(super) fields: Fields,
    pub(super) store: Store,
    /// The indexed log position, and what comes after it.
    pub(super) log: LogFollower<Nexus>,
    pub(super) indexed: watch::Sender<u64>,
    pub(super) wanted: watch::Receiver<u64>,
    pub(super) commit_interval: Duration,
    pub(super) stop: Arc<AtomicBool>,
}

impl Indexer {
    pub(super) fn run(&mut self, rt: &tokio::runtime::Handle) -> Result<(), IndexError> {
        let mut pending = false;
        let mut last_commit = Instant::now();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                if pending {
                    self.commit()?;
                }
                return Ok(());
            }
            match self.log.step()? {
                Next::Rebuild(reason) => {
                    tracing::info!(
                        watermark = self.log.watermark(),
                        "{reason}: rebuilding the full-text index"
                    );
                    self.rebuild()?;
                    pending = false;
                    last_commit = Instant::now();
                    continue;
                }
                Next::CaughtUp => {}
                Next::Entries(entries) => {
                    self.index_entries(&entries)?;
                    pending = true;
                    if last_commit.elapsed() >= self.commit_interval || self.searcher_waits() {
                        self.commit()?;
                        pending = false;
                        last_commit = Instant::now();
                    }
                    continue;
                }
            }
            // Caught up. Commit what is pending when a search waits for it, or once the
            // interval has passed: a stream of writes with nobody searching does not commit
            // (a new segment, then merges) once per write.
            let wait = if pending {
                self.commit_interval.saturating_sub(last_commit.elapsed())
            } else {
                IDLE_POLL
            };
            if pending && (wait.is_zero() || self.searcher_waits()) {
                self.commit()?;
                pending = false;
                last_commit = Instant::now();
                continue;
            }
            let mut applied = self.log.applied();
            let mut wanted = self.wanted.clone();
            let _ = rt.block_on(async {
                tokio::time::timeout(wait, async {
                    tokio::select! {
                        // New entries are indexed a little later, in one batch with whatever
                        // follows, unless a search asks for them first: a thread wake-up (and
                        // one to tantivy's) per write would compete with the write path.
                        _ = async {
                            let _ = applied.changed().await;
                            tokio::time::sleep(INDEX_DELAY).await;
                        } => {}
                        _ = wanted.changed() => {}
                    }
                })
                .await
            });
        }
    }

    /// A search waits for an index this indexer has reached but not committed.
    fn searcher_waits(&mut self) -> bool {
        let wanted = *self.wanted.borrow_and_update();
        wanted > *self.indexed.borrow() && wanted <= self.log.watermark()
    }

    fn index_entries(
        &mut self,
        entries: &[crate::cluster::types::Entry<Nexus>],
    ) -> Result<(), IndexError> {
        let f = self.fields;
        let mut memories: Vec<(String, String, String)> = Vec::new();
        let mut messages: Vec<(String, String)> = Vec::new();
        let mut semantics: Vec<(String, u64)> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for cmd in crate::cluster::follower::commands(entries) {
            let tenant = &cmd.tenant;
            match cmd.op.inner() {
                Op::Iam(IamOp::DeleteTenant) => {
                    // Deletions first, like a conversation's: the tenant's every document.
                    self.writer
                        .delete_term(Term::from_field_text(f.tenant, tenant));
                }
                Op::Iam(_)
                | Op::Secret(_)
                | Op::Audit(_)
                | Op::AuditTrim(_)
                | Op::Tool(_)
                | Op::Schedule(_)
                | Op::Workflow(_)
                | Op::Hook(_)
                | Op::Event(_)
                | Op::Audited { .. } => {}
                Op::Kv(op) => {
                    for (ns, key) in op.touched() {
                        let id = memory_doc_id(tenant, ns, key);
                        if seen.insert(id) {
                            memories.push((tenant.clone(), ns.to_string(), key.to_string()));
                        }
                    }
                }
                Op::Conversation(ConversationOp::Delete { id }) => {
                    // Deletions first: every addition below reflects the current state.
                    self.writer.delete_term(Term::from_field_text(
                        f.conversation_scope,
                        &conversation_scope(tenant, id),
                    ));
                }
                Op::Conversation(op) => {
                    for m in op.appended() {
                        if seen.insert(message_doc_id(tenant, &m.id)) {
                            messages.push((tenant.clone(), m.id.clone()));
                        }
                    }
                }
                Op::Semantic(SemanticOp::Remember { id, .. }) => {
                    // Gone since: a later Forget in the log removes it.
                    if let Some(seq) = semantic::seq_of(&self.store, tenant, id)? {
                        if seen.insert(semantic_doc_id(tenant, seq)) {
                            semantics.push((tenant.clone(), seq));
                        }
                    }
                }
                Op::Semantic(SemanticOp::Forget { seq, .. }) => {
                    if seen.insert(semantic_doc_id(tenant, *seq)) {
                        semantics.push((tenant.clone(), *seq));
                    }
                }
                // A new vector: the words are the same.
                Op::Semantic(SemanticOp::Embed { .. }) => {}
            }
        }
        for (tenant, ns, key) in memories {
            self.writer.delete_term(Term::from_field_text(
                f.id,
                &memory_doc_id(&tenant, &ns, &key),
            ));
            let record: Option<MemoryRecord> = kv::read(&self.store, &tenant, &ns, &key)?;
            if let Some(record) = record {
                self.add_memory(&tenant, &ns, &key, &record)?;
            }
        }
        for (tenant, id) in messages {
            self.writer
                .delete_term(Term::from_field_text(f.id, &message_doc_id(&tenant, &id)));
            if let Some(m) = conversations::read_message(&self.store, &tenant, &id)? {
                self.add_message(&tenant, &m)?;
            }
        }
        for (tenant, seq) in semantics {
            self.writer
                .delete_term(Term::from_field_text(f.id, &semantic_doc_id(&tenant, seq)));
            if let Some(r) = semantic::read(&self.store, &tenant, seq)? {
                self.add_semantic(&tenant, &r)?;
            }
        }
        if let Some(last) = entries.last() {
            self.log.advance(last.log_id.index);
        }
        Ok(())
    }

    fn add_semantic(&self, tenant: &str, r: &SemanticRecord) -> Result<(), IndexError> {
        let f = self.fields;
        let mut body = r.text.clone();
        for v in r.metadata.values() {
            body.push(' ');
            body.push_str(v);
        }
        self.writer.add_document(doc!(
            f.id => semantic_doc_id(tenant, r.seq),
            f.tenant => tenant,
            f.kind => KIND_SEMANTIC,
            f.namespace => r.namespace.as_str(),
            f.key => r.seq.to_string(),
            f.body => body,
            f.ts => r.created_at_ms,
        ))?;
        Ok(())
    }

    fn add_memory(
        &self,
        tenant: &str,
        ns: &str,
        key: &str,
        r: &MemoryRecord,
    ) -> Result<(), IndexError> {
        let f = self.fields;
        self.writer.add_document(doc!(
            f.id => memory_doc_id(tenant, ns, key),
            f.tenant => tenant,
            f.kind => KIND_MEMORY,
            f.namespace => ns,
            f.key => key,
            f.body => memory_text(key, &r.value),
            f.ts => r.updated_at_ms,
        ))?;
        Ok(())
    }

    fn add_message(&self, tenant: &str, m: &MessageRecord) -> Result<(), IndexError> {
        let f = self.fields;
        self.writer.add_document(doc!(
            f.id => message_doc_id(tenant, &m.id),
            f.tenant => tenant,
            f.kind => KIND_MESSAGE,
            f.conversation => m.conversation_id.as_str(),
            f.conversation_scope => conversation_scope(tenant, &m.conversation_id),
            f.role => m.role.as_str(),
            f.message_id => m.id.as_str(),
            f.body => m.content.as_str(),
            f.ts => m.created_at_ms,
        ))?;
        Ok(())
    }

    /// Re-creates the index from a consistent view of the state machine.
    fn rebuild(&mut self) -> Result<(), IndexError> {
        let started = Instant::now();
        // Drop what was indexed since the last commit first: delete_all_documents removes
        // committed segments only, and documents still in the indexing pipeline would
        // survive it and be added again below (duplicate hits after a rebuild that starts
        // mid-batch, e.g. when a snapshot purges the log the indexer was working through).
        self.writer.rollback()?;
        self.writer.delete_all_documents()?;
        let view = self.log.rebuild_view()?;
        let db_snapshot = &view.snapshot;
        let mut docs = 0u64;
        for item in db_snapshot.iterator_cf(self.store.cf(CF_KV), rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(StoreError::from)?;
            let Some((tenant, ns, key)) = keys::parse_kv_key(&k) else {
                continue;
            };
            let record: MemoryRecord = codec::decode(&v).map_err(StoreError::from)?;
            if !record.is_expired(crate::memory::now_ms()) {
                self.add_memory(&tenant, &ns, &key, &record)?;
                docs += 1;
            }
        }
        for item in
            db_snapshot.iterator_cf(self.store.cf(CF_MESSAGES), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(StoreError::from)?;
            let Some(tenant) = keys::parse_tenant(&k) else {
                continue;
            };
            let m: MessageRecord = codec::decode(&v).map_err(StoreError::from)?;
            self.add_message(&tenant, &m)?;
            docs += 1;
        }
        for item in
            db_snapshot.iterator_cf(self.store.cf(CF_SEMANTIC), rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(StoreError::from)?;
            let Some((tenant, _)) = keys::parse_semantic_key(&k) else {
                continue;
            };
            let r: SemanticRecord = codec::decode(&v).map_err(StoreError::from)?;
            self.add_semantic(&tenant, &r)?;
            docs += 1;
        }
        let index = view.index;
        drop(view);
        self.log.rebuilt(index);
        self.commit()?;
        tracing::info!(
            docs,
            watermark = index,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt the full-text index"
        );
        Ok(())
    }

    fn commit(&mut self) -> Result<(), IndexError> {
        let mut prepared = self.writer.prepare_commit()?;
        let watermark = self.log.watermark();
        prepared.set_payload(&watermark.to_string());
        prepared.commit()?;
        self.reader.reload()?;
        metrics::SEARCH_COMMITS.inc();
        metrics::SEARCH_WATERMARK.set(watermark as i64);
        self.indexed.send_replace(watermark);
        Ok(())
    }
}
