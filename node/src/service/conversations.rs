//! The conversation API of a node: validation, embedding of appended messages, proposals,
//! and reads.

use std::sync::Arc;

use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply, Scope};
use crate::config::Limits;
use crate::embed::{embed_units, Embedder};
use crate::error::NexusError;
use crate::memory::conversations::*;
use crate::memory::{now_ms, validate};
use crate::store::{codec, keys, StoreError, CF_CONVERSATIONS, CF_MESSAGES};

pub struct ConversationService {
    node: Arc<Cluster>,
    limits: Limits,
    embedder: Option<Arc<dyn Embedder>>,
}

impl ConversationService {
    /// With an embedder, appended messages are embedded (on this node) for recall.
    pub fn new(node: Arc<Cluster>, limits: Limits, embedder: Option<Arc<dyn Embedder>>) -> Self {
        Self {
            node,
            limits,
            embedder,
        }
    }

    pub async fn create(
        &self,
        scope: &Scope,
        id: &str,
        title: &str,
        metadata: &str,
    ) -> Result<ConversationRecord, NexusError> {
        let id = if id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            validate::conversation_id("id", id)?;
            id.to_string()
        };
        if title.len() > self.limits.max_title_bytes {
            return Err(NexusError::invalid(
                "title",
                format!(
                    "is {} bytes; the limit is {} (limits.max_title_bytes)",
                    title.len(),
                    self.limits.max_title_bytes
                ),
            ));
        }
        let metadata = validate::metadata("metadata", metadata, &self.limits)?;
        let op = ConversationOp::Create {
            id,
            title: title.to_string(),
            metadata,
            now_ms: now_ms(),
        };
        match self.propose(scope, op).await? {
            ConversationReply::Conversation(c) => Ok(c),
            other => Err(NexusError::internal(format!(
                "unexpected reply to create: {other:?}"
            ))),
        }
    }

    pub async fn append(
        &self,
        scope: &Scope,
        conversation_id: &str,
        messages: Vec<NewMessageRequest>,
    ) -> Result<Vec<MessageRecord>, NexusError> {
        validate::conversation_id("conversation_id", conversation_id)?;
        if messages.is_empty() {
            return Err(NexusError::invalid(
                "messages",
                "must contain at least one message",
            ));
        }
        if messages.len() > self.limits.max_batch {
            return Err(NexusError::invalid(
                "messages",
                format!(
                    "has {} messages; the limit is {} (limits.max_batch)",
                    messages.len(),
                    self.limits.max_batch
                ),
            ));
        }
        let mut new = Vec::with_capacity(messages.len());
        for (i, m) in messages.into_iter().enumerate() {
            validate::role(&format!("messages[{i}].role"), &m.role)?;
            if m.content.len() > self.limits.max_message_bytes {
                return Err(NexusError::invalid(
                    format!("messages[{i}].content"),
                    format!(
                        "is {} bytes; the limit is {} (limits.max_message_bytes)",
                        m.content.len(),
                        self.limits.max_message_bytes
                    ),
                ));
            }
            let metadata = validate::metadata(
                &format!("messages[{i}].metadata"),
                &m.metadata,
                &self.limits,
            )?;
            new.push(NewMessage {
                id: uuid::Uuid::now_v7().to_string(),
                role: m.role,
                content: m.content,
                metadata,
                input_tokens: m.input_tokens,
                output_tokens: m.output_tokens,
            });
        }
        let op = match &self.embedder {
            Some(e) => {
                // One model call for the batch; messages with no text get no vector.
                let texts: Vec<String> = new
                    .iter()
                    .filter(|m| !m.content.trim().is_empty())
                    .map(|m| m.content.clone())
                    .collect();
                let mut made = embed_units(e.as_ref(), &texts).await?.into_iter();
                let vectors = new
                    .iter()
                    .map(|m| {
                        if m.content.trim().is_empty() {
                            Vec::new()
                        } else {
                            made.next().unwrap_or_default()
                        }
                    })
                    .collect();
                ConversationOp::AppendWithVectors {
                    conversation_id: conversation_id.to_string(),
                    messages: new,
                    now_ms: now_ms(),
                    model: e.model().to_string(),
                    vectors,
                }
            }
            None => ConversationOp::Append {
                conversation_id: conversation_id.to_string(),
                messages: new,
                now_ms: now_ms(),
            },
        };
        match self.propose(scope, op).await? {
            ConversationReply::Messages(m) => Ok(m),
            other => Err(NexusError::internal(format!(
                "unexpected reply to append: {other:?}"
            ))),
        }
    }

    pub async fn get(
        &self,
        tenant: &str,
        id: &str,
        consistency: ReadConsistency,
    ) -> Result<ConversationRecord, NexusError> {
        validate::conversation_id("id", id)?;
        self.node.read_barrier(consistency).await?;
        read_conversation(&self.node.store, tenant, id)?.ok_or_else(|| not_found(id))
    }

    pub async fn list(
        &self,
        tenant: &str,
        page_size: u32,
        page_token: &str,
        consistency: ReadConsistency,
    ) -> Result<(Vec<ConversationRecord>, String), NexusError> {
        let page_size = validate::page_size("page_size", page_size, &self.limits)?;
        let prefix = keys::tenant_prefix(tenant);
        let start = match validate::decode_page_token("page_token", page_token)? {
            Some(last_id) => {
                let mut s = keys::conversation_key(tenant, &String::from_utf8_lossy(&last_id));
                s.push(0);
                s
            }
            None => prefix.clone(),
        };
        self.node.read_barrier(consistency).await?;
        let store = self.node.store.clone();
        let rows = crate::store::blocking(move || {
            store.scan_prefix(CF_CONVERSATIONS, &prefix, &start, page_size + 1)
        })
        .await?;
        let more = rows.len() > page_size;
        let conversations = rows
            .iter()
            .take(page_size)
            .map(|(_, v)| codec::decode::<ConversationRecord>(v))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)?;
        let next = match (more, conversations.last()) {
            (true, Some(c)) => validate::encode_page_token(c.id.as_bytes()),
            _ => String::new(),
        };
        Ok((conversations, next))
    }

    pub async fn list_messages(
        &self,
        tenant: &str,
        req: ListMessagesRequest,
    ) -> Result<(Vec<MessageRecord>, String), NexusError> {
        validate::conversation_id("conversation_id", &req.conversation_id)?;
        let page_size = validate::page_size("page_size", req.page_size, &self.limits)?;
        validate::time_range(req.since_ms, req.until_ms)?;
        let after_seq = match validate::decode_page_token("page_token", &req.page_token)? {
            Some(b) => u64::from_be_bytes(b.as_slice().try_into().map_err(|_| {
                NexusError::invalid("page_token", "is not a token this server handed out")
            })?),
            None => 0,
        };
        self.node.read_barrier(req.consistency).await?;
        let store = self.node.store.clone();
        let tenant = tenant.to_string();
        let max_reply_bytes = self.limits.max_reply_bytes;
        crate::store::blocking(move || {
            if read_conversation(&store, &tenant, &req.conversation_id)?.is_none() {
                return Err(not_found(&req.conversation_id));
            }
            let prefix = keys::message_prefix(&tenant, &req.conversation_id);
            let mut cursor = keys::message_key(&tenant, &req.conversation_id, after_seq + 1);
            let mut out = Vec::with_capacity(page_size.min(64));
            let mut more = false;
            // A page also ends at the reply's byte budget (limits.max_reply_bytes).
            let budget = max_reply_bytes;
            let mut bytes = 0usize;
            // Messages are in time order, so the scan can stop at the end of the range.
            'scan: loop {
                let (rows, truncated) = store.scan_prefix_bytes(
                    CF_MESSAGES,
                    &prefix,
                    &cursor,
                    page_size + 1,
                    budget.saturating_sub(bytes),
                )?;
                for (k, v) in &rows {
                    let m: MessageRecord = codec::decode(v).map_err(StoreError::from)?;
                    if m.created_at_ms < req.since_ms {
                        continue;
                    }
                    if req.until_ms != 0 && m.created_at_ms >= req.until_ms {
                        break 'scan;
                    }
                    let size = k.len() + v.len();
                    if out.len() == page_size || (!out.is_empty() && bytes + size > budget) {
                        more = true;
                        break 'scan;
                    }
                    bytes += size;
                    out.push(m);
                }
                match rows.last() {
                    Some(_) if truncated && !out.is_empty() => {
                        more = true;
                        break;
                    }
                    Some((last, _)) if rows.len() > page_size || truncated => {
                        cursor = last.clone();
                        cursor.push(0);
                    }
                    _ => break,
                }
            }
            let next = match (more, out.last()) {
                (true, Some(m)) => validate::encode_page_token(&m.seq.to_be_bytes()),
                _ => String::new(),
            };
            Ok((out, next))
        })
        .await
    }

    pub async fn delete(&self, scope: &Scope, id: &str) -> Result<u64, NexusError> {
        validate::conversation_id("id", id)?;
        match self
            .propose(scope, ConversationOp::Delete { id: id.to_string() })
            .await?
        {
            ConversationReply::Deleted { messages } => Ok(messages),
            other => Err(NexusError::internal(format!(
                "unexpected reply to delete: {other:?}"
            ))),
        }
    }

    /// One pass of re-embedding messages, on the leader: up to `limit` messages of any tenant
    /// stored without a vector (no model when they were appended) or with another model's,
    /// embedded in batches and proposed per tenant (`ConversationOp::EmbedMessages`, which
    /// skips a message deleted or re-embedded meanwhile). Returns (re-embedded, still to do
    /// after this pass, as counted by the scan). Nothing without an embedder.
    pub async fn reembed(&self, limit: usize) -> Result<(u64, u64), NexusError> {
        const BATCH: usize = 32;
        let Some(e) = self.embedder.clone() else {
            return Ok((0, 0));
        };
        let model = e.model().to_string();
        let store = self.node.store.clone();
        let wanted = model.clone();
        // (tenant, message id, the model read, content), at most `limit`; `pending` counts all.
        let (todo, pending) = crate::store::blocking(move || {
            let mut todo: Vec<(String, String, String, String)> = Vec::new();
            let mut pending = 0u64;
            store.scan_all(CF_MESSAGES, |k, v| {
                let Some(tenant) = keys::parse_tenant(k) else {
                    return Ok(());
                };
                let m: MessageRecord = codec::decode(v)?;
                // A message without text gets no vector when appended, nor here.
                if m.content.trim().is_empty() {
                    return Ok(());
                }
                let from_model = match read_vector_of(&store, &tenant, &m.id)? {
                    Some(v) if v.model == wanted => return Ok(()),
                    Some(v) => v.model,
                    None => String::new(),
                };
                pending += 1;
                if todo.len() < limit {
                    todo.push((tenant, m.id, from_model, m.content));
                }
                Ok(())
            })?;
            Ok::<_, StoreError>((todo, pending))
        })
        .await?;
        let mut done = 0u64;
        for batch in todo.chunks(BATCH) {
            let texts: Vec<String> = batch.iter().map(|(_, _, _, t)| t.clone()).collect();
            let vectors = embed_units(e.as_ref(), &texts).await?;
            // One proposal per tenant of the batch (the scan is tenant-first, so few).
            let mut by_tenant: Vec<(String, Vec<MessageEmbedding>)> = Vec::new();
            for ((tenant, id, from_model, _), embedding) in batch.iter().zip(vectors) {
                let item = MessageEmbedding {
                    message_id: id.clone(),
                    from_model: from_model.clone(),
                    embedding,
                };
                match by_tenant.last_mut() {
                    Some((t, items)) if t == tenant => items.push(item),
                    _ => by_tenant.push((tenant.clone(), vec![item])),
                }
            }
            for (tenant, items) in by_tenant {
                let op = ConversationOp::EmbedMessages {
                    model: model.clone(),
                    items,
                };
                if let ConversationReply::Embedded { count } =
                    self.propose(&Scope::system(&tenant), op).await?
                {
                    done += count;
                }
            }
        }
        Ok((done, pending.saturating_sub(done)))
    }

    async fn propose(
        &self,
        scope: &Scope,
        op: ConversationOp,
    ) -> Result<ConversationReply, NexusError> {
        match command::propose(&self.node, scope, Op::Conversation(op)).await? {
            Reply::Conversation(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply: {other:?}"))),
        }
    }
}
