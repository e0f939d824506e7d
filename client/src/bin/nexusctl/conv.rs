//! `nexusctl conv`: conversations and their messages.

use clap::Subcommand;
use nexus_client::{pb, Client, ClientError};
use serde_json::{json, Value};

use super::{consistency, parse_time, print_json, table, time, truncate, Output};

#[derive(Subcommand, Clone)]
pub enum ConvCommand {
    /// Create a conversation.
    Create {
        /// Id to use (default: a new UUIDv7).
        #[arg(long, default_value = "")]
        id: String,
        #[arg(long, default_value = "")]
        title: String,
        /// Metadata, a JSON object.
        #[arg(long, default_value = "")]
        meta: String,
    },
    /// Append a message.
    Append {
        id: String,
        /// user, assistant, system, tool, ...
        role: String,
        content: String,
        #[arg(long, default_value = "")]
        meta: String,
        #[arg(long)]
        input_tokens: Option<u32>,
        #[arg(long)]
        output_tokens: Option<u32>,
    },
    /// Show a conversation and its messages.
    Show {
        id: String,
        /// Only messages since: a duration ago (7d, 2h), an RFC 3339 time, or Unix ms.
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Only messages before (same forms as --since).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Most messages to print.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[arg(long)]
        stale: bool,
    },
    /// List conversations.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        stale: bool,
    },
    /// Delete a conversation and its messages.
    Delete { id: String },
}

fn conversation_json(c: &pb::Conversation) -> Value {
    json!({
        "id": c.id, "title": c.title,
        "metadata": serde_json::from_str::<Value>(&c.metadata).unwrap_or(Value::Null),
        "created_at_ms": c.created_at_ms, "updated_at_ms": c.updated_at_ms,
        "message_count": c.message_count,
    })
}

pub fn message_json(m: &pb::Message) -> Value {
    json!({
        "id": m.id, "conversation_id": m.conversation_id, "seq": m.seq, "role": m.role,
        "content": m.content,
        "metadata": serde_json::from_str::<Value>(&m.metadata).unwrap_or(Value::Null),
        "input_tokens": m.input_tokens, "output_tokens": m.output_tokens,
        "created_at_ms": m.created_at_ms,
    })
}

fn print_messages(messages: &[pb::Message]) {
    let mut t = table(&["SEQ", "TIME", "ROLE", "CONTENT"]);
    for m in messages {
        t.add_row(vec![
            m.seq.to_string(),
            time(m.created_at_ms),
            m.role.clone(),
            truncate(&m.content, 80),
        ]);
    }
    println!("{t}");
}

pub async fn run(c: &mut Client, out: Output, command: ConvCommand) -> Result<(), ClientError> {
    match command {
        ConvCommand::Create { id, title, meta } => {
            let conv = c
                .conversations
                .create_conversation(pb::CreateConversationRequest {
                    id,
                    title,
                    metadata: meta,
                })
                .await?
                .into_inner();
            if out == Output::Json {
                print_json(&conversation_json(&conv));
            } else {
                println!("{}", conv.id);
            }
        }
        ConvCommand::Append {
            id,
            role,
            content,
            meta,
            input_tokens,
            output_tokens,
        } => {
            let r = c
                .conversations
                .append_messages(pb::AppendMessagesRequest {
                    conversation_id: id,
                    messages: vec![pb::NewMessage {
                        role,
                        content,
                        metadata: meta,
                        input_tokens,
                        output_tokens,
                    }],
                })
                .await?
                .into_inner();
            if out == Output::Json {
                print_json(&Value::Array(r.messages.iter().map(message_json).collect()));
            } else {
                print_messages(&r.messages);
            }
        }
        ConvCommand::Show {
            id,
            since,
            until,
            limit,
            stale,
        } => {
            let conv = c
                .conversations
                .get_conversation(pb::GetConversationRequest {
                    id: id.clone(),
                    consistency: consistency(stale),
                })
                .await?
                .into_inner();
            let mut messages = Vec::new();
            let mut token = String::new();
            while messages.len() < limit {
                let page = c
                    .conversations
                    .list_messages(pb::ListMessagesRequest {
                        conversation_id: id.clone(),
                        page_size: (limit - messages.len()).min(1000) as u32,
                        page_token: token,
                        since_ms: since.unwrap_or(0),
                        until_ms: until.unwrap_or(0),
                        consistency: consistency(stale),
                    })
                    .await?
                    .into_inner();
                messages.extend(page.messages);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            if out == Output::Json {
                let mut v = conversation_json(&conv);
                v["messages"] = Value::Array(messages.iter().map(message_json).collect());
                print_json(&v);
            } else {
                println!(
                    "{}  {}  ({} messages, created {})",
                    conv.id,
                    if conv.title.is_empty() {
                        "(untitled)"
                    } else {
                        &conv.title
                    },
                    conv.message_count,
                    time(conv.created_at_ms)
                );
                print_messages(&messages);
            }
        }
        ConvCommand::List { limit, stale } => {
            let mut list = Vec::new();
            let mut token = String::new();
            while list.len() < limit {
                let page = c
                    .conversations
                    .list_conversations(pb::ListConversationsRequest {
                        page_size: (limit - list.len()).min(1000) as u32,
                        page_token: token,
                        consistency: consistency(stale),
                    })
                    .await?
                    .into_inner();
                list.extend(page.conversations);
                token = page.next_page_token;
                if token.is_empty() {
                    break;
                }
            }
            if out == Output::Json {
                print_json(&Value::Array(list.iter().map(conversation_json).collect()));
            } else {
                let mut t = table(&["ID", "TITLE", "MESSAGES", "CREATED", "UPDATED"]);
                for x in &list {
                    t.add_row(vec![
                        x.id.clone(),
                        truncate(&x.title, 40),
                        x.message_count.to_string(),
                        time(x.created_at_ms),
                        time(x.updated_at_ms),
                    ]);
                }
                println!("{t}");
            }
        }
        ConvCommand::Delete { id } => {
            let r = c
                .conversations
                .delete_conversation(pb::DeleteConversationRequest { id: id.clone() })
                .await?
                .into_inner();
            if out == Output::Json {
                print_json(&json!({"id": id, "deleted_messages": r.deleted_messages}));
            } else {
                println!(
                    "deleted conversation {id} ({} messages)",
                    r.deleted_messages
                );
            }
        }
    }
    Ok(())
}
