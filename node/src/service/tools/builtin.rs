//! The built-in tools every tenant has. Each declares its input and output JSON Schemas and
//! the permissions it uses besides `tools:call:NAME` (a tool never does what its caller
//! could not: `memory.put` needs `memory:write` too). They run as the caller, through the
//! same services as the API, so every write is validated, replicated and audited as usual.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, OnceLock};

use serde_json::{json, Value};

use super::{http, Reporter};
use crate::cluster::ReadConsistency;
use crate::error::NexusError;
use crate::memory::conversations::{ListMessagesRequest, NewMessageRequest};
use crate::memory::kv::{ListRequest, PutRequest};
use crate::memory::semantic::RememberRequest;
use crate::search::fulltext::{HitItem, SearchRequest};
use crate::search::recall::{RecallItem, RecallMode, RecallRequest, Recaller};
use crate::service::conversations::ConversationService;
use crate::service::events::EventService;
use crate::service::kv::KvService;
use crate::service::secrets::SecretsService;
use crate::service::semantic::SemanticService;
use crate::service::workflows::WorkflowService;
use crate::service::Caller;
use crate::tools::{ToolKind, ToolRecord};

/// The version every built-in reports: the node's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

struct Def {
    name: &'static str,
    description: &'static str,
    input: &'static str,
    output: &'static str,
    /// Permissions the tool uses, besides `tools:call:NAME`.
    requires: &'static [&'static str],
}

const MEMORY_ITEM: &str = r#"{"type": "object", "properties": {"namespace": {"type": "string"}, "key": {"type": "string"}, "value": {}, "version": {"type": "integer"}, "updated_at_ms": {"type": "integer"}, "expires_at_ms": {"type": "integer"}}}"#;

const DEFS: &[Def] = &[
    Def {
        name: "echo",
        description: "Returns its text: a check that tools work end to end.",
        input: r#"{"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"text": {"type": "string"}}}"#,
        requires: &[],
    },
    Def {
        name: "memory.put",
        description: "Stores a JSON value under a namespace and key (optionally expiring, optionally only over a given version).",
        input: r#"{"type": "object", "required": ["namespace", "key", "value"], "properties": {"namespace": {"type": "string", "minLength": 1}, "key": {"type": "string", "minLength": 1}, "value": {}, "ttl_ms": {"type": "integer", "minimum": 0}, "expected_version": {"type": "integer", "minimum": 0}}, "additionalProperties": false}"#,
        output: MEMORY_ITEM,
        requires: &["memory:write"],
    },
    Def {
        name: "memory.get",
        description: "Reads the value stored under a namespace and key.",
        input: r#"{"type": "object", "required": ["namespace", "key"], "properties": {"namespace": {"type": "string"}, "key": {"type": "string"}}, "additionalProperties": false}"#,
        output: MEMORY_ITEM,
        requires: &["memory:read"],
    },
    Def {
        name: "memory.list",
        description: "Lists the memories of a namespace, optionally under a key prefix, a page at a time.",
        input: r#"{"type": "object", "required": ["namespace"], "properties": {"namespace": {"type": "string"}, "prefix": {"type": "string"}, "page_size": {"type": "integer", "minimum": 0}, "page_token": {"type": "string"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"items": {"type": "array"}, "next_page_token": {"type": "string"}}}"#,
        requires: &["memory:read"],
    },
    Def {
        name: "memory.delete",
        description: "Deletes the memory under a namespace and key.",
        input: r#"{"type": "object", "required": ["namespace", "key"], "properties": {"namespace": {"type": "string"}, "key": {"type": "string"}, "expected_version": {"type": "integer", "minimum": 0}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"deleted_version": {"type": "integer"}}}"#,
        requires: &["memory:write"],
    },
    Def {
        name: "memory.remember",
        description: "Remembers a piece of text, embedded for recall by meaning.",
        input: r#"{"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}, "namespace": {"type": "string"}, "metadata": {"type": "object", "additionalProperties": {"type": "string"}}, "importance": {"type": "number", "minimum": 0, "maximum": 1}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"id": {"type": "string"}, "namespace": {"type": "string"}, "created_at_ms": {"type": "integer"}}}"#,
        requires: &["memory:write"],
    },
    Def {
        name: "memory.recall",
        description: "Recalls remembered texts and conversation messages related to a query, best first (hybrid: meaning and words).",
        input: r#"{"type": "object", "required": ["query"], "properties": {"query": {"type": "string", "minLength": 1}, "k": {"type": "integer", "minimum": 1, "maximum": 1000}, "namespace": {"type": "string"}, "mode": {"enum": ["hybrid", "vector", "bm25"]}, "vector_weight": {"type": "number", "minimum": 0, "maximum": 1}, "importance_weight": {"type": "number", "minimum": 0, "maximum": 1}, "recency_weight": {"type": "number", "minimum": 0, "maximum": 1}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"hits": {"type": "array"}}}"#,
        requires: &["memory:read"],
    },
    Def {
        name: "memory.forget",
        description: "Forgets a remembered text by its id.",
        input: r#"{"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "minLength": 1}}, "additionalProperties": false}"#,
        output: r#"{"type": "object"}"#,
        requires: &["memory:write"],
    },
    Def {
        name: "memory.search",
        description: "Full-text search over memories, messages and remembered texts: words, \"phrases\", +required and -excluded terms.",
        input: r#"{"type": "object", "required": ["query"], "properties": {"query": {"type": "string", "minLength": 1}, "limit": {"type": "integer", "minimum": 1, "maximum": 1000}, "namespace": {"type": "string"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"hits": {"type": "array"}}}"#,
        requires: &["memory:read"],
    },
    Def {
        name: "conversation.create",
        description: "Starts a conversation (an id is made when none is given).",
        input: r#"{"type": "object", "properties": {"id": {"type": "string"}, "title": {"type": "string"}, "metadata": {"type": "object"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"id": {"type": "string"}, "title": {"type": "string"}, "created_at_ms": {"type": "integer"}}}"#,
        requires: &["memory:write"],
    },
    Def {
        name: "conversation.append",
        description: "Appends messages to a conversation.",
        input: r#"{"type": "object", "required": ["conversation_id", "messages"], "properties": {"conversation_id": {"type": "string", "minLength": 1}, "messages": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["role", "content"], "properties": {"role": {"type": "string", "minLength": 1}, "content": {"type": "string"}}, "additionalProperties": false}}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"messages": {"type": "array"}}}"#,
        requires: &["memory:write"],
    },
    Def {
        name: "conversation.history",
        description: "A conversation's messages, oldest first, a page at a time.",
        input: r#"{"type": "object", "required": ["conversation_id"], "properties": {"conversation_id": {"type": "string", "minLength": 1}, "page_size": {"type": "integer", "minimum": 0}, "page_token": {"type": "string"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"messages": {"type": "array"}, "next_page_token": {"type": "string"}}}"#,
        requires: &["memory:read"],
    },
    Def {
        name: "secrets.list",
        description: "The names of the tenant's secrets (never their values), for ${secrets.NAME} in other tools' arguments.",
        input: r#"{"type": "object", "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"secrets": {"type": "array"}}}"#,
        requires: &["secrets:list"],
    },
    Def {
        name: "http.request",
        description: "An HTTP request to a host on the tenant's allow-list, with a deadline and a response size limit.",
        input: r#"{"type": "object", "required": ["url"], "properties": {"url": {"type": "string", "minLength": 1}, "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "get", "post", "put", "patch", "delete", "head"]}, "headers": {"type": "object", "additionalProperties": {"type": "string"}}, "body": {}, "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 30000}, "max_bytes": {"type": "integer", "minimum": 1, "maximum": 4194304}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"status": {"type": "integer"}, "headers": {"type": "object"}, "body": {"type": "string"}, "truncated": {"type": "boolean"}, "url": {"type": "string"}}}"#,
        requires: &[],
    },
    Def {
        name: "json.query",
        description: "Selects from a JSON document with a JSONPath expression (RFC 9535): $.items[?@.price < 10].name.",
        input: r#"{"type": "object", "required": ["data", "path"], "properties": {"data": {}, "path": {"type": "string", "minLength": 1}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"matches": {"type": "array"}}}"#,
        requires: &[],
    },
    Def {
        name: "text.split",
        description: "Splits text into chunks of at most max_chars characters (on paragraph, then sentence, then word boundaries), with an overlap.",
        input: r#"{"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}, "max_chars": {"type": "integer", "minimum": 16, "maximum": 100000}, "overlap": {"type": "integer", "minimum": 0}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"chunks": {"type": "array", "items": {"type": "string"}}}}"#,
        requires: &[],
    },
    Def {
        name: "text.count_tokens",
        description: "Estimates how many tokens a text is for GPT-style BPE tokenizers (words of up to four letters are one token, longer ones one per four characters, each symbol one).",
        input: r#"{"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"tokens": {"type": "integer"}, "characters": {"type": "integer"}, "words": {"type": "integer"}, "method": {"type": "string"}}}"#,
        requires: &[],
    },
    Def {
        name: "time.now",
        description: "The current time, in a time zone (IANA name such as Europe/Paris; UTC when none).",
        input: r#"{"type": "object", "properties": {"timezone": {"type": "string"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"iso": {"type": "string"}, "unix_ms": {"type": "integer"}, "timezone": {"type": "string"}, "offset": {"type": "string"}, "weekday": {"type": "string"}}}"#,
        requires: &[],
    },
    Def {
        name: "time.convert",
        description: "Converts a time (RFC 3339, or a civil time with from_timezone) into another time zone.",
        input: r#"{"type": "object", "required": ["time", "to_timezone"], "properties": {"time": {"type": "string"}, "from_timezone": {"type": "string"}, "to_timezone": {"type": "string"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"iso": {"type": "string"}, "unix_ms": {"type": "integer"}, "timezone": {"type": "string"}}}"#,
        requires: &[],
    },
    Def {
        name: "text.hash",
        description: "The SHA-256 of a text, hex: a stable key for deduplicating what an agent stores.",
        input: r#"{"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"sha256": {"type": "string"}}}"#,
        requires: &[],
    },
    Def {
        name: "events.publish",
        description: "Publishes an event (any JSON data) on a topic of the caller's tenant; subscribers, triggers, webhooks and waiting workflow steps receive it.",
        input: r#"{"type": "object", "required": ["topic"], "properties": {"topic": {"type": "string", "minLength": 1}, "data": {}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"seq": {"type": "integer"}, "topic": {"type": "string"}}}"#,
        requires: &["events:write"],
    },
    Def {
        name: "workflow.start",
        description: "Starts a run of a workflow with a JSON input; with an id, starting again returns the run of that id instead of starting another.",
        input: r#"{"type": "object", "required": ["workflow"], "properties": {"workflow": {"type": "string", "minLength": 1}, "input": {"type": "object"}, "id": {"type": "string"}}, "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"id": {"type": "string"}, "workflow": {"type": "string"}, "state": {"type": "string"}, "existing": {"type": "boolean"}}}"#,
        requires: &["workflows:write"],
    },
    Def {
        name: "uuid.new",
        description: "A new UUID (version 7: time-ordered).",
        input: r#"{"type": "object", "additionalProperties": false}"#,
        output: r#"{"type": "object", "properties": {"uuid": {"type": "string"}}}"#,
        requires: &[],
    },
];

static RECORDS: LazyLock<Vec<ToolRecord>> = LazyLock::new(|| {
    DEFS.iter()
        .map(|d| ToolRecord {
            name: d.name.into(),
            version: VERSION.into(),
            description: d.description.into(),
            input_schema: d.input.into(),
            output_schema: d.output.into(),
            kind: ToolKind::Builtin,
            config: "{}".into(),
            created_at_ms: 0,
            updated_at_ms: 0,
        })
        .collect()
});

/// The services the built-ins run on.
#[derive(Clone)]
pub struct Builtins {
    pub node: Arc<crate::command::Cluster>,
    pub kv: Arc<KvService>,
    pub semantic: Arc<SemanticService>,
    pub conversations: Arc<ConversationService>,
    pub recaller: Arc<Recaller>,
    pub secrets: Arc<SecretsService>,
    pub events: Arc<EventService>,
    /// Set once the workflow service is made (it calls tools itself).
    pub workflows: Arc<OnceLock<Arc<WorkflowService>>>,
}

fn arg_str<'a>(args: &'a Value, name: &str) -> &'a str {
    args[name].as_str().unwrap_or_default()
}

fn arg_u32(args: &Value, name: &str) -> u32 {
    args[name]
        .as_u64()
        .map_or(0, |n| n.min(u32::MAX as u64) as u32)
}

fn memory_json(item: &crate::memory::kv::MemoryItem) -> Value {
    json!({
        "namespace": item.namespace,
        "key": item.key,
        "value": serde_json::from_str::<Value>(&item.record.value).unwrap_or(Value::String(item.record.value.clone())),
        "version": item.record.version,
        "updated_at_ms": item.record.updated_at_ms,
        "expires_at_ms": item.record.expires_at_ms,
    })
}

fn message_json(m: &crate::memory::conversations::MessageRecord) -> Value {
    json!({"id": m.id, "conversation_id": m.conversation_id, "seq": m.seq, "role": m.role,
           "content": m.content, "created_at_ms": m.created_at_ms})
}

impl Builtins {
    /// Every built-in, as the registry shows it.
    pub fn records(&self) -> Vec<ToolRecord> {
        RECORDS.clone()
    }

    pub fn record(&self, name: &str) -> Option<ToolRecord> {
        self.record_ref(name).cloned()
    }

    /// A built-in's record without copying it (a call looks it up every time).
    pub fn record_ref(&self, name: &str) -> Option<&'static ToolRecord> {
        RECORDS.iter().find(|r| r.name == name)
    }

    /// A built-in's input schema, compiled once for the node's life.
    pub fn validator(&self, name: &str) -> Option<Arc<jsonschema::Validator>> {
        static COMPILED: LazyLock<Vec<(&'static str, Arc<jsonschema::Validator>)>> =
            LazyLock::new(|| {
                DEFS.iter()
                    .map(|d| {
                        let schema: Value = serde_json::from_str(d.input)
                            .expect("a built-in's input schema is JSON");
                        let compiled = jsonschema::validator_for(&schema)
                            .expect("a built-in's input schema compiles");
                        (d.name, Arc::new(compiled))
                    })
                    .collect()
            });
        COMPILED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    }

    /// Runs built-in `name` with validated `args` for `caller`.
    pub async fn run(
        &self,
        caller: &Caller,
        name: &str,
        args: Value,
        reporter: &Reporter,
    ) -> Result<Value, NexusError> {
        let def = DEFS
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| NexusError::NotFound(format!("tool {name} not found")))?;
        for permission in def.requires {
            caller.grants.require(&caller.subject, permission)?;
        }
        let tenant = caller.tenant.as_str();
        let scope = caller.scope();
        Ok(match name {
            "echo" => json!({"text": args["text"]}),
            "events.publish" => {
                let topic = arg_str(&args, "topic").to_string();
                let data = args.get("data").cloned().unwrap_or(Value::Null).to_string();
                let (seq, _) = self
                    .events
                    .publish(
                        caller,
                        vec![crate::events::NewEvent {
                            topic: topic.clone(),
                            data,
                        }],
                    )
                    .await?;
                json!({"seq": seq, "topic": topic})
            }
            "workflow.start" => {
                let workflows = self
                    .workflows
                    .get()
                    .ok_or_else(|| NexusError::unavailable("workflows are not running yet"))?;
                let input = args.get("input").map_or("{}".to_string(), Value::to_string);
                let (run, existing) = workflows
                    .start(
                        caller,
                        arg_str(&args, "workflow"),
                        &input,
                        arg_str(&args, "id"),
                    )
                    .await?;
                json!({"id": run.id, "workflow": run.workflow, "state": run.state.name(), "existing": existing})
            }
            "memory.put" => {
                let value = args["value"].to_string();
                let item = self
                    .kv
                    .put(
                        &scope,
                        PutRequest {
                            namespace: arg_str(&args, "namespace").into(),
                            key: arg_str(&args, "key").into(),
                            value,
                            ttl_ms: args["ttl_ms"].as_u64().unwrap_or(0),
                            expected_version: args["expected_version"].as_u64(),
                        },
                    )
                    .await?;
                memory_json(&item)
            }
            "memory.get" => {
                let item = self
                    .kv
                    .get(
                        tenant,
                        arg_str(&args, "namespace"),
                        arg_str(&args, "key"),
                        ReadConsistency::Linearizable,
                    )
                    .await?;
                memory_json(&item)
            }
            "memory.list" => {
                let (items, next) = self
                    .kv
                    .list(
                        tenant,
                        ListRequest {
                            namespace: arg_str(&args, "namespace").into(),
                            prefix: arg_str(&args, "prefix").into(),
                            page_size: arg_u32(&args, "page_size"),
                            page_token: arg_str(&args, "page_token").into(),
                            consistency: ReadConsistency::Linearizable,
                        },
                    )
                    .await?;
                json!({"items": items.iter().map(memory_json).collect::<Vec<_>>(), "next_page_token": next})
            }
            "memory.delete" => {
                let version = self
                    .kv
                    .delete(
                        &scope,
                        arg_str(&args, "namespace"),
                        arg_str(&args, "key"),
                        args["expected_version"].as_u64(),
                    )
                    .await?;
                json!({"deleted_version": version})
            }
            "memory.remember" => {
                let metadata: BTreeMap<String, String> = args["metadata"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let r = self
                    .semantic
                    .remember(
                        &scope,
                        RememberRequest {
                            namespace: arg_str(&args, "namespace").into(),
                            text: arg_str(&args, "text").into(),
                            metadata,
                            importance: args["importance"].as_f64().map(|f| f as f32),
                        },
                    )
                    .await?;
                let mut out =
                    json!({"id": r.id, "namespace": r.namespace, "created_at_ms": r.created_at_ms});
                if let Some(notice) = self.recaller.notice(None) {
                    out["notice"] = notice.into();
                }
                out
            }
            "memory.recall" => {
                let mode = match arg_str(&args, "mode") {
                    "vector" => RecallMode::Vector,
                    "bm25" => RecallMode::Bm25,
                    _ => RecallMode::Hybrid,
                };
                let hits = self
                    .recaller
                    .recall(
                        tenant,
                        &RecallRequest {
                            query: arg_str(&args, "query").into(),
                            k: arg_u32(&args, "k"),
                            namespace: arg_str(&args, "namespace").into(),
                            consistency: ReadConsistency::Linearizable,
                            mode,
                            vector_weight: args["vector_weight"].as_f64().map(|w| w as f32),
                            importance_weight: args["importance_weight"].as_f64().unwrap_or(0.0)
                                as f32,
                            recency_weight: args["recency_weight"].as_f64().unwrap_or(0.0) as f32,
                            ..Default::default()
                        },
                    )
                    .await?;
                let hits: Vec<Value> = hits
                    .iter()
                    .map(|h| match &h.item {
                        RecallItem::Memory(m) => json!({"kind": "memory", "id": m.id, "namespace": m.namespace,
                            "text": m.text, "metadata": m.metadata, "score": h.score, "similarity": h.similarity,
                            "bm25": h.bm25}),
                        RecallItem::Message(m) => json!({"kind": "message", "id": m.id,
                            "conversation_id": m.conversation_id, "role": m.role, "text": m.content,
                            "score": h.score, "similarity": h.similarity, "bm25": h.bm25}),
                    })
                    .collect();
                match self.recaller.notice(Some(mode)) {
                    Some(notice) => json!({"hits": hits, "notice": notice}),
                    None => json!({"hits": hits}),
                }
            }
            "memory.forget" => {
                self.semantic.forget(&scope, arg_str(&args, "id")).await?;
                json!({})
            }
            "memory.search" => {
                let hits = self
                    .recaller
                    .search(
                        tenant,
                        &SearchRequest {
                            query: arg_str(&args, "query").into(),
                            namespace: arg_str(&args, "namespace").into(),
                            limit: arg_u32(&args, "limit"),
                            consistency: ReadConsistency::Linearizable,
                            ..Default::default()
                        },
                        RecallMode::Bm25,
                    )
                    .await?;
                let hits: Vec<Value> = hits
                    .iter()
                    .map(|h| {
                        let what = match &h.hit.item {
                            HitItem::Memory(m) => json!({"kind": "memory", "namespace": m.namespace, "key": m.key}),
                            HitItem::Message(m) => json!({"kind": "message", "id": m.id, "conversation_id": m.conversation_id}),
                            HitItem::Semantic(s) => json!({"kind": "semantic", "id": s.id, "namespace": s.namespace}),
                        };
                        json!({"item": what, "snippet": h.hit.snippet, "score": h.hit.score})
                    })
                    .collect();
                json!({"hits": hits})
            }
            "conversation.create" => {
                let metadata = match args.get("metadata") {
                    Some(m) => m.to_string(),
                    None => String::new(),
                };
                let c = self
                    .conversations
                    .create(
                        &scope,
                        arg_str(&args, "id"),
                        arg_str(&args, "title"),
                        &metadata,
                    )
                    .await?;
                json!({"id": c.id, "title": c.title, "created_at_ms": c.created_at_ms})
            }
            "conversation.append" => {
                let messages: Vec<NewMessageRequest> = args["messages"]
                    .as_array()
                    .map(|items| {
                        items
                            .iter()
                            .map(|m| NewMessageRequest {
                                role: arg_str(m, "role").into(),
                                content: arg_str(m, "content").into(),
                                metadata: String::new(),
                                input_tokens: None,
                                output_tokens: None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let made = self
                    .conversations
                    .append(&scope, arg_str(&args, "conversation_id"), messages)
                    .await?;
                json!({"messages": made.iter().map(message_json).collect::<Vec<_>>()})
            }
            "conversation.history" => {
                let (messages, next) = self
                    .conversations
                    .list_messages(
                        tenant,
                        ListMessagesRequest {
                            conversation_id: arg_str(&args, "conversation_id").into(),
                            page_size: arg_u32(&args, "page_size"),
                            page_token: arg_str(&args, "page_token").into(),
                            since_ms: 0,
                            until_ms: 0,
                            consistency: ReadConsistency::Linearizable,
                        },
                    )
                    .await?;
                json!({"messages": messages.iter().map(message_json).collect::<Vec<_>>(), "next_page_token": next})
            }
            "secrets.list" => {
                let secrets = self.secrets.list(tenant).await?;
                json!({"secrets": secrets.iter().map(|s| json!({
                    "name": s.name,
                    "version": s.versions.len(),
                    "created_at_ms": s.created_at_ms,
                })).collect::<Vec<_>>()})
            }
            "http.request" => {
                self.node
                    .read_barrier(ReadConsistency::Linearizable)
                    .await?;
                let policy = crate::tools::http_policy(&self.node.store, tenant)?;
                http::request(&policy, &args, reporter).await?
            }
            "json.query" => {
                let path = serde_json_path::JsonPath::parse(arg_str(&args, "path"))
                    .map_err(|e| NexusError::invalid("args.path", e.to_string()))?;
                let matches: Vec<Value> = path
                    .query(&args["data"])
                    .all()
                    .into_iter()
                    .cloned()
                    .collect();
                json!({"matches": matches})
            }
            "text.split" => {
                let max = args["max_chars"].as_u64().unwrap_or(1000) as usize;
                let overlap = args["overlap"].as_u64().unwrap_or(0) as usize;
                if overlap >= max {
                    return Err(NexusError::invalid(
                        "args.overlap",
                        format!("must be less than max_chars ({max})"),
                    ));
                }
                json!({"chunks": split_text(arg_str(&args, "text"), max, overlap)})
            }
            "text.count_tokens" => {
                let text = arg_str(&args, "text");
                json!({
                    "tokens": estimate_tokens(text),
                    "characters": text.chars().count(),
                    "words": text.split_whitespace().count(),
                    "method": "estimate for GPT-style BPE",
                })
            }
            "time.now" => time_now(arg_str(&args, "timezone"))?,
            "time.convert" => time_convert(
                arg_str(&args, "time"),
                arg_str(&args, "from_timezone"),
                arg_str(&args, "to_timezone"),
            )?,
            "text.hash" => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(arg_str(&args, "text").as_bytes());
                json!({"sha256": digest.iter().map(|b| format!("{b:02x}")).collect::<String>()})
            }
            "uuid.new" => json!({"uuid": uuid::Uuid::now_v7().to_string()}),
            other => {
                return Err(NexusError::internal(format!(
                    "built-in {other} has no body"
                )))
            }
        })
    }
}

/// Splits `text` into chunks of at most `max` characters, cutting at the last paragraph,
/// sentence or word boundary that fits, and starting each chunk `overlap` characters before
/// the previous one ended.
pub fn split_text(text: &str, max: usize, overlap: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let end = (start + max).min(chars.len());
        let mut cut = end;
        if end < chars.len() {
            let window = &chars[start..end];
            let find = |pred: &dyn Fn(usize) -> bool| {
                (max / 2..window.len())
                    .rev()
                    .find(|&i| pred(i))
                    .map(|i| start + i + 1)
            };
            cut = find(&|i| window[i] == '\n' && i > 0 && window[i - 1] == '\n')
                .or_else(|| {
                    find(&|i| {
                        matches!(window[i], '.' | '!' | '?')
                            && window.get(i + 1).is_none_or(|c| c.is_whitespace())
                    })
                })
                .or_else(|| find(&|i| window[i].is_whitespace()))
                .unwrap_or(end);
        }
        let chunk: String = chars[start..cut].iter().collect();
        if !chunk.trim().is_empty() {
            chunks.push(chunk.trim().to_string());
        }
        if cut >= chars.len() {
            break;
        }
        start = cut.saturating_sub(overlap).max(start + 1);
    }
    chunks
}

/// Tokens of GPT-style BPE, estimated: a word of up to four letters is one, a longer one a
/// token per four characters (rounded up), every other non-space character one.
pub fn estimate_tokens(text: &str) -> usize {
    let mut tokens = 0;
    let mut word = 0usize;
    let flush = |word: &mut usize, tokens: &mut usize| {
        if *word > 0 {
            *tokens += word.div_ceil(4);
            *word = 0;
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric() {
            word += 1;
        } else {
            flush(&mut word, &mut tokens);
            if !c.is_whitespace() {
                tokens += 1;
            }
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

fn zone(field: &str, name: &str) -> Result<jiff::tz::TimeZone, NexusError> {
    if name.is_empty() {
        return Ok(jiff::tz::TimeZone::UTC);
    }
    jiff::tz::TimeZone::get(name).map_err(|_| {
        NexusError::invalid(
            field,
            format!("{name:?} is not an IANA time zone (Europe/Paris)"),
        )
    })
}

fn zoned_json(z: &jiff::Zoned, name: &str) -> Value {
    json!({
        "iso": z.strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string(),
        "unix_ms": z.timestamp().as_millisecond(),
        "timezone": if name.is_empty() { "UTC" } else { name },
        "offset": z.offset().to_string(),
        "weekday": format!("{:?}", z.weekday()),
    })
}

fn time_now(name: &str) -> Result<Value, NexusError> {
    let tz = zone("args.timezone", name)?;
    Ok(zoned_json(&jiff::Timestamp::now().to_zoned(tz), name))
}

fn time_convert(time: &str, from: &str, to: &str) -> Result<Value, NexusError> {
    let target = zone("args.to_timezone", to)?;
    let instant = match time.parse::<jiff::Timestamp>() {
        Ok(t) => t,
        Err(_) => {
            let civil: jiff::civil::DateTime = time.parse().map_err(|_| {
                NexusError::invalid(
                    "args.time",
                    "is neither RFC 3339 (2026-12-02T10:00:00Z) nor a civil time (2026-12-02T10:00) with from_timezone",
                )
            })?;
            if from.is_empty() {
                return Err(NexusError::invalid(
                    "args.from_timezone",
                    "is required for a time without an offset",
                ));
            }
            civil
                .to_zoned(zone("args.from_timezone", from)?)
                .map_err(|e| NexusError::invalid("args.time", e.to_string()))?
                .timestamp()
        }
    };
    Ok(zoned_json(&instant.to_zoned(target), to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_has_valid_schemas_and_there_are_enough() {
        assert!(DEFS.len() >= 18, "{} built-ins", DEFS.len());
        for d in DEFS {
            super::super::compile_schema("input", d.input)
                .unwrap_or_else(|e| panic!("{}: {e}", d.name));
            super::super::compile_schema("output", d.output)
                .unwrap_or_else(|e| panic!("{}: {e}", d.name));
            if d.name != "echo" {
                crate::tools::validate_name("name", d.name).unwrap();
            }
        }
        let names: std::collections::HashSet<_> = DEFS.iter().map(|d| d.name).collect();
        assert_eq!(names.len(), DEFS.len(), "names are unique");
    }

    #[test]
    fn text_tools() {
        let text = "First paragraph here.\n\nSecond one is a bit longer. It has two sentences.";
        let chunks = split_text(text, 40, 0);
        assert_eq!(chunks[0], "First paragraph here.");
        assert!(chunks.iter().all(|c| c.chars().count() <= 40), "{chunks:?}");
        let joined = chunks.join(" ");
        assert!(joined.contains("two sentences."));
        let overlapping = split_text("aaaa bbbb cccc dddd eeee ffff", 16, 5);
        assert!(
            overlapping.len() >= 2 && overlapping[1].starts_with("cccc")
                || overlapping[1].starts_with("bbbb"),
            "{overlapping:?}"
        );
        assert_eq!(estimate_tokens("hello world"), 4);
        assert_eq!(estimate_tokens("a, b."), 4);
        assert_eq!(estimate_tokens(""), 0);
    }

    #[test]
    fn time_tools() {
        let v = time_convert("2026-07-01T12:00:00Z", "", "Europe/Paris").unwrap();
        assert_eq!(v["iso"], "2026-07-01T14:00:00.000+02:00");
        assert_eq!(v["offset"], "+02");
        let v = time_convert("2026-01-15T09:30", "America/New_York", "UTC").unwrap();
        assert_eq!(v["iso"], "2026-01-15T14:30:00.000+00:00");
        assert!(time_convert("2026-01-15T09:30", "", "UTC").is_err());
        assert!(time_now("Mars/Olympus").is_err());
        assert_eq!(time_now("").unwrap()["timezone"], "UTC");
    }
}
