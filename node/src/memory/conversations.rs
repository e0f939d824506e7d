//! Conversations: an ordered message history per conversation. Messages get their id (UUIDv7)
//! and time on the proposing node and their sequence number when applied, so every node
//! numbers them alike.
//!
//! With an embedding model, the proposing node also embeds each message's content and the
//! vectors travel in the command ([`ConversationOp::AppendWithVectors`]); followers never
//! re-embed. Each vector is stored in `message_vectors` under a vector number drawn from the
//! tenant's semantic-memory counter, so the vector index holds memories and messages under
//! one key space and recall can fuse both.

use serde::{Deserialize, Serialize};

use super::semantic;
use crate::cluster::ReadConsistency;

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

/// One message's new vector ([`ConversationOp::EmbedMessages`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageEmbedding {
    pub message_id: String,
    pub from_model: String,
    pub embedding: Vec<f32>,
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
    /// Vectors for messages stored without one, or with another model's: the leader's
    /// re-embedding. Each applies only while the message is there with a vector of the model
    /// the proposer read (`from_model`, empty for none); the others are skipped. (Appended
    /// last: the log's encoding of the variants before it is unchanged.)
    EmbedMessages {
        model: String,
        items: Vec<MessageEmbedding>,
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
            ConversationOp::EmbedMessages { model, items } => {
                model.len()
                    + items
                        .iter()
                        .map(|m| {
                            m.message_id.len() + m.from_model.len() + m.embedding.len() * 4 + 8
                        })
                        .sum::<usize>()
            }
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
            ConversationOp::EmbedMessages { .. } => "conversation.embed",
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
    Deleted {
        messages: u64,
    },
    /// How many of the messages of an `EmbedMessages` got their vector.
    Embedded {
        count: u64,
    },
}

pub fn not_found(id: &str) -> NexusError {
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
        ConversationOp::EmbedMessages { model, items } => embed_messages(ctx, tenant, model, items),
    }
}

/// Stores the first vector of message `m`: a new vector number, the vector, and its id's
/// entry.
fn add_vector(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    m: &MessageRecord,
    model: &str,
    embedding: Vec<f32>,
) -> Result<(), StoreError> {
    let number = semantic::take_vector_number(ctx, tenant)?;
    ctx.put(
        CF_MESSAGE_VECTORS,
        &keys::message_vector_key(tenant, number),
        &MessageVector {
            seq: number,
            message_id: m.id.clone(),
            conversation_id: m.conversation_id.clone(),
            created_at_ms: m.created_at_ms,
            model: model.to_string(),
            embedding,
        },
    );
    ctx.put(
        CF_MESSAGE_VECTOR_IDS,
        &keys::message_vector_id_key(tenant, &m.id),
        &number,
    );
    Ok(())
}

/// Gives messages their new vectors ([`ConversationOp::EmbedMessages`]).
fn embed_messages(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    model: &str,
    items: &[MessageEmbedding],
) -> Result<Result<ConversationReply, NexusError>, StoreError> {
    let mut count = 0;
    for item in items {
        let Some(loc) = ctx.get_decoded::<MessageLocation>(
            CF_MESSAGE_IDS,
            &keys::message_id_key(tenant, &item.message_id),
        )?
        else {
            continue;
        };
        let id_key = keys::message_vector_id_key(tenant, &item.message_id);
        match ctx.get_decoded::<u64>(CF_MESSAGE_VECTOR_IDS, &id_key)? {
            Some(number) => {
                let key = keys::message_vector_key(tenant, number);
                let Some(mut v) = ctx.get_decoded::<MessageVector>(CF_MESSAGE_VECTORS, &key)?
                else {
                    continue;
                };
                if v.model != item.from_model {
                    continue;
                }
                v.model = model.to_string();
                v.embedding = item.embedding.clone();
                ctx.put(CF_MESSAGE_VECTORS, &key, &v);
            }
            None => {
                if !item.from_model.is_empty() {
                    continue;
                }
                let Some(m) = ctx.get_decoded::<MessageRecord>(
                    CF_MESSAGES,
                    &keys::message_key(tenant, &loc.conversation_id, loc.seq),
                )?
                else {
                    continue;
                };
                add_vector(ctx, tenant, &m, model, item.embedding.clone())?;
            }
        }
        count += 1;
    }
    Ok(Ok(ConversationReply::Embedded { count }))
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
            add_vector(ctx, tenant, &record, model, vectors[i].clone())?;
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
