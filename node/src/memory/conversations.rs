//! Conversations: an ordered message history per conversation. Messages get their id (UUIDv7)
//! and time on the proposing node and their sequence number when applied, so every node
//! numbers them alike.
//!
//! With an embedding model, the proposing node also embeds each message's content and the
//! vectors travel in the command ([`ConversationOp::AppendWithVectors`]); followers never
//! re-embed. Each vector is stored in `message_vectors` under a vector number drawn from the
//! tenant's semantic-memory counter, so the vector index holds memories and messages under
//! one key space and recall can fuse both.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{now_ms, semantic, validate};
use crate::cluster::{ClusterNode, Command, Op, ReadConsistency, Reply};
use crate::config::Limits;
use crate::embed::{embed_units, Embedder};
use crate::error::NexusError;
use crate::store::{
    codec, keys, ApplyCtx, Store, StoreError, CF_CONVERSATIONS, CF_MESSAGES, CF_MESSAGE_IDS,
    CF_MESSAGE_VECTORS, CF_MESSAGE_VECTOR_IDS,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub id: String,
    pub title: String,
    /// JSON object text.
    pub metadata: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Also the sequence number of the last message.
    pub message_count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub role: String,
    pub content: String,
    pub metadata: String,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub created_at_ms: i64,
}

/// A message as proposed: everything but its sequence number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewMessage {
    pub id: String,
    pub role: String,
    pub content: String,
    pub metadata: String,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
}

/// The vector of a message's content, in `message_vectors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageVector {
    /// The vector number (the tenant's semantic counter), the key in the vector index.
    pub seq: u64,
    pub message_id: String,
    pub conversation_id: String,
    pub created_at_ms: i64,
    /// The embedding model that made `embedding`.
    pub model: String,
    /// Unit length.
    pub embedding: Vec<f32>,
}

/// Where a message id points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageLocation {
    pub conversation_id: String,
    pub seq: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ConversationOp {
    Create {
        id: String,
        title: String,
        metadata: String,
        now_ms: i64,
    },
    Append {
        conversation_id: String,
        messages: Vec<NewMessage>,
        now_ms: i64,
    },
    Delete {
        id: String,
    },
    /// An append with one vector per message (empty for a message with nothing to embed), made
    /// by `model` on the proposing node. Appended last: a variant's position is part of the
    /// log's encoding.
    AppendWithVectors {
        conversation_id: String,
        messages: Vec<NewMessage>,
        now_ms: i64,
        model: String,
        vectors: Vec<Vec<f32>>,
    },
}

impl ConversationOp {
    pub fn approx_size(&self) -> usize {
        match self {
            ConversationOp::Create {
                id,
                title,
                metadata,
                ..
            } => id.len() + title.len() + metadata.len() + 16,
            ConversationOp::Append {
                conversation_id,
                messages,
                ..
            } => conversation_id.len() + messages_size(messages),
            ConversationOp::AppendWithVectors {
                conversation_id,
                messages,
                model,
                vectors,
                ..
            } => {
                conversation_id.len()
                    + messages_size(messages)
                    + model.len()
                    + vectors.iter().map(|v| v.len() * 4 + 2).sum::<usize>()
            }
            ConversationOp::Delete { id } => id.len(),
        }
    }

    /// The messages this op appends (none for other ops).
    pub fn appended(&self) -> &[NewMessage] {
        match self {
            ConversationOp::Append { messages, .. }
            | ConversationOp::AppendWithVectors { messages, .. } => messages,
            _ => &[],
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ConversationOp::Create { .. } => "conversation.create",
            ConversationOp::Append { .. } | ConversationOp::AppendWithVectors { .. } => {
                "conversation.append"
            }
            ConversationOp::Delete { .. } => "conversation.delete",
        }
    }
}

fn messages_size(messages: &[NewMessage]) -> usize {
    messages
        .iter()
        .map(|m| m.id.len() + m.role.len() + m.content.len() + m.metadata.len() + 16)
        .sum()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ConversationReply {
    Conversation(ConversationRecord),
    Messages(Vec<MessageRecord>),
    Deleted { messages: u64 },
}

fn not_found(id: &str) -> NexusError {
    NexusError::NotFound(format!("conversation {id} not found"))
}

pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &ConversationOp,
) -> Result<Result<ConversationReply, NexusError>, StoreError> {
    match op {
        ConversationOp::Create {
            id,
            title,
            metadata,
            now_ms,
        } => {
            let k = keys::conversation_key(tenant, id);
            if ctx
                .get_decoded::<ConversationRecord>(CF_CONVERSATIONS, &k)?
                .is_some()
            {
                return Ok(Err(NexusError::AlreadyExists(format!(
                    "conversation {id} already exists"
                ))));
            }
            let record = ConversationRecord {
                id: id.clone(),
                title: title.clone(),
                metadata: metadata.clone(),
                created_at_ms: *now_ms,
                updated_at_ms: *now_ms,
                message_count: 0,
            };
            ctx.put(CF_CONVERSATIONS, &k, &record);
            Ok(Ok(ConversationReply::Conversation(record)))
        }
        ConversationOp::Append {
            conversation_id,
            messages,
            now_ms,
        } => append(ctx, tenant, conversation_id, messages, *now_ms, None),
        ConversationOp::AppendWithVectors {
            conversation_id,
            messages,
            now_ms,
            model,
            vectors,
        } => {
            if vectors.len() != messages.len() {
                return Ok(Err(NexusError::invalid(
                    "messages",
                    format!(
                        "{} messages came with {} vectors",
                        messages.len(),
                        vectors.len()
                    ),
                )));
            }
            append(
                ctx,
                tenant,
                conversation_id,
                messages,
                *now_ms,
                Some((model, vectors)),
            )
        }
        ConversationOp::Delete { id } => {
            let k = keys::conversation_key(tenant, id);
            let Some(conversation) = ctx.get_decoded::<ConversationRecord>(CF_CONVERSATIONS, &k)?
            else {
                return Ok(Err(not_found(id)));
            };
            let prefix = keys::message_prefix(tenant, id);
            for (_, v) in ctx.scan_prefix(CF_MESSAGES, &prefix)? {
                let m: MessageRecord = codec::decode(&v)?;
                ctx.delete(CF_MESSAGE_IDS, &keys::message_id_key(tenant, &m.id));
                let vector_id = keys::message_vector_id_key(tenant, &m.id);
                if let Some(seq) = ctx.get_decoded::<u64>(CF_MESSAGE_VECTOR_IDS, &vector_id)? {
                    ctx.delete(CF_MESSAGE_VECTORS, &keys::message_vector_key(tenant, seq));
                    ctx.delete(CF_MESSAGE_VECTOR_IDS, &vector_id);
                }
            }
            ctx.delete_prefix(CF_MESSAGES, &prefix);
            ctx.delete(CF_CONVERSATIONS, &k);
            Ok(Ok(ConversationReply::Deleted {
                messages: conversation.message_count,
            }))
        }
    }
}

/// Appends messages, with their vectors when `vectors` holds (model, one per message).
fn append(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    conversation_id: &str,
    messages: &[NewMessage],
    now_ms: i64,
    vectors: Option<(&String, &Vec<Vec<f32>>)>,
) -> Result<Result<ConversationReply, NexusError>, StoreError> {
    let k = keys::conversation_key(tenant, conversation_id);
    let Some(mut conversation) = ctx.get_decoded::<ConversationRecord>(CF_CONVERSATIONS, &k)?
    else {
        return Ok(Err(not_found(conversation_id)));
    };
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        conversation.message_count += 1;
        let seq = conversation.message_count;
        let record = MessageRecord {
            id: m.id.clone(),
            conversation_id: conversation_id.to_string(),
            seq,
            role: m.role.clone(),
            content: m.content.clone(),
            metadata: m.metadata.clone(),
            input_tokens: m.input_tokens,
            output_tokens: m.output_tokens,
            created_at_ms: now_ms,
        };
        ctx.put(
            CF_MESSAGES,
            &keys::message_key(tenant, conversation_id, seq),
            &record,
        );
        ctx.put(
            CF_MESSAGE_IDS,
            &keys::message_id_key(tenant, &m.id),
            &MessageLocation {
                conversation_id: conversation_id.to_string(),
                seq,
            },
        );
        if let Some((model, vectors)) = vectors.filter(|(_, v)| !v[i].is_empty()) {
            let number = semantic::take_vector_number(ctx, tenant)?;
            ctx.put(
                CF_MESSAGE_VECTORS,
                &keys::message_vector_key(tenant, number),
                &MessageVector {
                    seq: number,
                    message_id: m.id.clone(),
                    conversation_id: conversation_id.to_string(),
                    created_at_ms: now_ms,
                    model: model.clone(),
                    embedding: vectors[i].clone(),
                },
            );
            ctx.put(
                CF_MESSAGE_VECTOR_IDS,
                &keys::message_vector_id_key(tenant, &m.id),
                &number,
            );
        }
        out.push(record);
    }
    conversation.updated_at_ms = now_ms;
    ctx.put(CF_CONVERSATIONS, &k, &conversation);
    Ok(Ok(ConversationReply::Messages(out)))
}

/// A message vector by vector number.
pub fn read_vector(
    store: &Store,
    tenant: &str,
    seq: u64,
) -> Result<Option<MessageVector>, StoreError> {
    store.get_decoded(CF_MESSAGE_VECTORS, &keys::message_vector_key(tenant, seq))
}

/// The vector of a message, by message id.
pub fn read_vector_of(
    store: &Store,
    tenant: &str,
    message_id: &str,
) -> Result<Option<MessageVector>, StoreError> {
    match store.get_decoded::<u64>(
        CF_MESSAGE_VECTOR_IDS,
        &keys::message_vector_id_key(tenant, message_id),
    )? {
        Some(seq) => read_vector(store, tenant, seq),
        None => Ok(None),
    }
}

pub fn read_conversation(
    store: &Store,
    tenant: &str,
    id: &str,
) -> Result<Option<ConversationRecord>, StoreError> {
    store.get_decoded(CF_CONVERSATIONS, &keys::conversation_key(tenant, id))
}

/// A message by id, if it (and its conversation) still exist.
pub fn read_message(
    store: &Store,
    tenant: &str,
    message_id: &str,
) -> Result<Option<MessageRecord>, StoreError> {
    let Some(loc) = store.get_decoded::<MessageLocation>(
        CF_MESSAGE_IDS,
        &keys::message_id_key(tenant, message_id),
    )?
    else {
        return Ok(None);
    };
    store.get_decoded(
        CF_MESSAGES,
        &keys::message_key(tenant, &loc.conversation_id, loc.seq),
    )
}

pub struct NewMessageRequest {
    pub role: String,
    pub content: String,
    pub metadata: String,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
}

pub struct ListMessagesRequest {
    pub conversation_id: String,
    pub page_size: u32,
    pub page_token: String,
    pub since_ms: i64,
    pub until_ms: i64,
    pub consistency: ReadConsistency,
}

pub struct ConversationService {
    node: Arc<ClusterNode>,
    limits: Limits,
    embedder: Option<Arc<dyn Embedder>>,
}

impl ConversationService {
    /// With an embedder, appended messages are embedded (on this node) for recall.
    pub fn new(
        node: Arc<ClusterNode>,
        limits: Limits,
        embedder: Option<Arc<dyn Embedder>>,
    ) -> Self {
        Self {
            node,
            limits,
            embedder,
        }
    }

    pub async fn create(
        &self,
        tenant: &str,
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
        match self.propose(tenant, op).await? {
            ConversationReply::Conversation(c) => Ok(c),
            other => Err(NexusError::internal(format!(
                "unexpected reply to create: {other:?}"
            ))),
        }
    }

    pub async fn append(
        &self,
        tenant: &str,
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
        match self.propose(tenant, op).await? {
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
        let rows = self
            .node
            .store
            .scan_prefix(CF_CONVERSATIONS, &prefix, &start, page_size + 1)?;
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
        let store = &self.node.store;
        if read_conversation(store, tenant, &req.conversation_id)?.is_none() {
            return Err(not_found(&req.conversation_id));
        }
        let prefix = keys::message_prefix(tenant, &req.conversation_id);
        let mut cursor = keys::message_key(tenant, &req.conversation_id, after_seq + 1);
        let mut out = Vec::with_capacity(page_size.min(64));
        let mut more = false;
        // A page also ends at the reply's byte budget (limits.max_reply_bytes).
        let budget = self.limits.max_reply_bytes;
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
    }

    pub async fn delete(&self, tenant: &str, id: &str) -> Result<u64, NexusError> {
        validate::conversation_id("id", id)?;
        match self
            .propose(tenant, ConversationOp::Delete { id: id.to_string() })
            .await?
        {
            ConversationReply::Deleted { messages } => Ok(messages),
            other => Err(NexusError::internal(format!(
                "unexpected reply to delete: {other:?}"
            ))),
        }
    }

    async fn propose(
        &self,
        tenant: &str,
        op: ConversationOp,
    ) -> Result<ConversationReply, NexusError> {
        let command = Command {
            tenant: tenant.to_string(),
            op: Op::Conversation(op),
        };
        match self.node.propose(command).await? {
            Reply::Conversation(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply: {other:?}"))),
        }
    }
}
