//! `nexusctl`: the admin CLI, `nexusctl <noun> <verb>`. Tables for people, `-o json` for
//! scripts. Exit codes: 0 success, 1 the server refused the request (its message is printed),
//! 2 bad usage, 3 cannot reach the server.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod iam;

use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use nexus_client::secrets_cli::SecretsCommand;
use nexus_client::{pb, Client, ClientError, DEFAULT_ENDPOINT};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "nexusctl", version, about = "Administer and use a Nexus node")]
struct Cli {
    /// Node(s) to talk to, comma separated: the next one is tried when a node cannot be
    /// reached (and, for reads, when it answers Unavailable).
    #[arg(long, global = true, env = "NEXUS_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// API key or root key, when the node requires authentication.
    #[arg(long, global = true, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA to trust for an https:// endpoint (a node with [tls]).
    #[arg(long, global = true, env = "NEXUS_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// The node's view of the cluster: role, term, leader, indexes, members.
    Status,
    /// Key-value memories.
    Memory {
        #[command(subcommand)]
        command: MemoryCommand,
    },
    /// Conversations and their messages.
    #[command(alias = "conversation")]
    Conv {
        #[command(subcommand)]
        command: ConvCommand,
    },
    /// Full-text search over memories and messages.
    Search(SearchArgs),
    /// Cluster membership.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Cluster operations.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Tenants (root key only).
    Tenant {
        #[command(subcommand)]
        command: iam::TenantCommand,
    },
    /// API keys of service accounts.
    Key {
        #[command(subcommand)]
        command: iam::KeyCommand,
    },
    /// Roles: built-in and custom sets of permissions.
    Role {
        #[command(subcommand)]
        command: iam::RoleCommand,
    },
    /// Role bindings: which principal holds which role.
    Binding {
        #[command(subcommand)]
        command: iam::BindingCommand,
    },
    /// Who the credentials in use are: tenant, subject, permissions.
    Whoami,
    /// The audit log: tail, verify.
    Audit {
        #[command(subcommand)]
        command: iam::AuditCommand,
    },
    /// Secrets of the tenant: set, get, list, delete; master-key rotation (root key).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
}

#[derive(Subcommand, Clone)]
enum ClusterCommand {
    /// Hand leadership to voter ID (e.g. before restarting the leader's machine).
    TransferLeader { id: u64 },
}

#[derive(Subcommand, Clone)]
enum MemberCommand {
    /// Add a node (started with `nexus serve --join`) as a learner; returns once it caught up.
    Add {
        id: u64,
        /// host:port of its peer port.
        peer_addr: String,
        /// host:port of its gRPC API.
        #[arg(long, default_value = "")]
        api_addr: String,
    },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a member.
    Remove { id: u64 },
    /// List the members.
    List,
}

#[derive(Subcommand, Clone)]
enum MemoryCommand {
    /// Create or replace a memory: VALUE is JSON text (quote strings: '"text"').
    Put {
        namespace: String,
        key: String,
        value: String,
        /// Time to live, e.g. 30s, 10m, 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        /// Write only if the current version is this (0 = only if the key does not exist).
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Read a memory.
    Get {
        namespace: String,
        key: String,
        /// Read this node's state without confirming with the leader.
        #[arg(long)]
        stale: bool,
    },
    /// List a namespace in key order.
    List {
        namespace: String,
        #[arg(long, default_value = "")]
        prefix: String,
        /// Most items to print (fetched page by page).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        stale: bool,
    },
    /// Delete a memory.
    Delete {
        namespace: String,
        key: String,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Remember a text as a semantic memory (embedded by the server).
    Remember {
        text: String,
        /// Default: "default".
        #[arg(long, default_value = "")]
        namespace: String,
        /// Metadata pair, repeatable: --meta project=apollo --meta kind=decision.
        #[arg(long = "meta", value_parser = parse_pair)]
        meta: Vec<(String, String)>,
        /// 0..1 (default 0.5).
        #[arg(long)]
        importance: Option<f32>,
    },
    /// Recall the semantic memories and conversation messages most related to QUERY (vector
    /// and BM25, fused).
    Recall {
        query: String,
        /// Only memories of this namespace.
        #[arg(long, default_value = "")]
        namespace: String,
        /// Only messages of this conversation.
        #[arg(long, default_value = "")]
        conversation: String,
        /// What to recall, repeatable (default: both).
        #[arg(long = "source", value_enum)]
        sources: Vec<RecallSourceArg>,
        /// Hits wanted.
        #[arg(long, default_value_t = 10)]
        k: u32,
        /// Only memories with this metadata pair, repeatable.
        #[arg(long = "meta", value_parser = parse_pair)]
        meta: Vec<(String, String)>,
        /// Created since: 7d, 2h, an RFC 3339 time or Unix milliseconds.
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Only hits with at least this cosine similarity to the query.
        #[arg(long, default_value_t = 0.0)]
        min_score: f32,
        #[arg(long)]
        stale: bool,
    },
    /// Forget a semantic memory by id.
    Forget { id: String },
}

#[derive(clap::ValueEnum, Clone, Copy)]
enum RecallSourceArg {
    Memories,
    Messages,
}

/// `key=value`.
fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

#[derive(Subcommand, Clone)]
enum ConvCommand {
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

#[derive(clap::Args, Clone)]
struct SearchArgs {
    query: String,
    /// memory, message or semantic (repeatable; default all).
    #[arg(long, value_enum)]
    kind: Vec<Kind>,
    #[arg(long, default_value = "")]
    namespace: String,
    #[arg(long, default_value = "")]
    conversation: String,
    #[arg(long, default_value = "")]
    role: String,
    #[arg(long, value_parser = parse_time)]
    since: Option<i64>,
    #[arg(long, value_parser = parse_time)]
    until: Option<i64>,
    #[arg(long, default_value_t = 10)]
    limit: u32,
    #[arg(long)]
    stale: bool,
    /// Retrievers: hybrid (words and meaning, fused), bm25 (exact words) or vector.
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    mode: Mode,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Hybrid,
    Bm25,
    Vector,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Memory,
    Message,
    Semantic,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `7d` / `2h30m` (that long ago), RFC 3339, or Unix milliseconds.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms() - d.as_millis() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
        .map_err(|_| format!("{s:?} is not a duration (7d), an RFC 3339 time or Unix milliseconds"))
}

fn consistency(stale: bool) -> i32 {
    if stale {
        pb::Consistency::Stale as i32
    } else {
        pb::Consistency::Linearizable as i32
    }
}

fn time(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    t
}

fn memory_json(i: &pb::MemoryItem) -> Value {
    json!({
        "namespace": i.namespace,
        "key": i.key,
        "value": serde_json::from_str::<Value>(&i.value).unwrap_or(Value::String(i.value.clone())),
        "version": i.version,
        "created_at_ms": i.created_at_ms,
        "updated_at_ms": i.updated_at_ms,
        "expires_at_ms": i.expires_at_ms,
    })
}

fn conversation_json(c: &pb::Conversation) -> Value {
    json!({
        "id": c.id, "title": c.title,
        "metadata": serde_json::from_str::<Value>(&c.metadata).unwrap_or(Value::Null),
        "created_at_ms": c.created_at_ms, "updated_at_ms": c.updated_at_ms,
        "message_count": c.message_count,
    })
}

fn message_json(m: &pb::Message) -> Value {
    json!({
        "id": m.id, "conversation_id": m.conversation_id, "seq": m.seq, "role": m.role,
        "content": m.content,
        "metadata": serde_json::from_str::<Value>(&m.metadata).unwrap_or(Value::Null),
        "input_tokens": m.input_tokens, "output_tokens": m.output_tokens,
        "created_at_ms": m.created_at_ms,
    })
}

fn semantic_json(m: &pb::SemanticMemory) -> Value {
    let metadata: std::collections::BTreeMap<&String, &String> = m.metadata.iter().collect();
    json!({
        "id": m.id, "namespace": m.namespace, "text": m.text, "metadata": metadata,
        "importance": m.importance, "created_at_ms": m.created_at_ms, "model": m.model,
    })
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("a JSON value serializes")
    );
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

fn print_memories(items: &[pb::MemoryItem], out: Output) {
    if out == Output::Json {
        return print_json(&Value::Array(items.iter().map(memory_json).collect()));
    }
    let mut t = table(&["NAMESPACE", "KEY", "VERSION", "UPDATED", "EXPIRES", "VALUE"]);
    for i in items {
        t.add_row(vec![
            i.namespace.clone(),
            i.key.clone(),
            i.version.to_string(),
            time(i.updated_at_ms),
            time(i.expires_at_ms),
            truncate(&i.value, 60),
        ]);
    }
    println!("{t}");
}

fn member_json(m: &pb::Member) -> Value {
    json!({"id": m.id, "peer_addr": m.peer_addr, "api_addr": m.api_addr, "voter": m.voter})
}

fn print_members(members: &[pb::Member], out: Output) {
    if out == Output::Json {
        return print_json(&Value::Array(members.iter().map(member_json).collect()));
    }
    let mut t = table(&["MEMBER", "API", "PEER", "VOTER"]);
    for x in members {
        t.add_row(vec![
            x.id.to_string(),
            x.api_addr.clone(),
            x.peer_addr.clone(),
            x.voter.to_string(),
        ]);
    }
    println!("{t}");
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

/// Marks the highlighted byte ranges of a snippet with `**`.
fn highlight(snippet: &str, ranges: &[pb::Highlight]) -> String {
    let mut out = String::new();
    let mut at = 0usize;
    for r in ranges {
        let (s, e) = (r.start as usize, r.end as usize);
        if s < at
            || e > snippet.len()
            || !snippet.is_char_boundary(s)
            || !snippet.is_char_boundary(e)
        {
            continue;
        }
        out.push_str(&snippet[at..s]);
        out.push_str("**");
        out.push_str(&snippet[s..e]);
        out.push_str("**");
        at = e;
    }
    out.push_str(&snippet[at..]);
    out
}

impl Command {
    /// Reads can be retried on another node; writes only when they never reached one.
    fn is_idempotent(&self) -> bool {
        match self {
            Command::Status | Command::Search(_) => true,
            Command::Memory { command } => matches!(
                command,
                MemoryCommand::Get { .. }
                    | MemoryCommand::List { .. }
                    | MemoryCommand::Recall { .. }
            ),
            Command::Conv { command } => {
                matches!(command, ConvCommand::Show { .. } | ConvCommand::List { .. })
            }
            Command::Member { command } => matches!(command, MemberCommand::List),
            // Transferring to the node that already leads is a no-op: safe to repeat.
            Command::Cluster { .. } => true,
            Command::Whoami | Command::Audit { .. } => true,
            Command::Secrets { command } => {
                matches!(command, SecretsCommand::Get { .. } | SecretsCommand::List)
            }
            Command::Tenant { command } => matches!(command, iam::TenantCommand::List),
            Command::Key { command } => matches!(command, iam::KeyCommand::List { .. }),
            Command::Role { command } => matches!(command, iam::RoleCommand::List { .. }),
            Command::Binding { command } => {
                matches!(command, iam::BindingCommand::List { .. })
            }
        }
    }
}

/// Runs the command against the endpoints in turn, as far as it is safe to retry.
async fn run_with_failover(cli: Cli) -> Result<(), ClientError> {
    let endpoints = nexus_client::split_endpoints(&cli.endpoint);
    let idempotent = cli.command.is_idempotent();
    let mut last = ClientError::Endpoint {
        endpoint: cli.endpoint.clone(),
        message: "no endpoint given".into(),
    };
    let tls = match &cli.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| ClientError::Endpoint {
                endpoint: cli.endpoint.clone(),
                message: format!("--ca-file {}: {e}", path.display()),
            })?;
            Some(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
        }
        None => None,
    };
    for (i, endpoint) in endpoints.iter().enumerate() {
        match run(
            endpoint,
            cli.token.as_deref(),
            tls.clone(),
            cli.output,
            cli.command.clone(),
        )
        .await
        {
            Err(e) if nexus_client::is_retryable(&e, idempotent) && i + 1 < endpoints.len() => {
                eprintln!("note: {endpoint}: {e}; trying {}", endpoints[i + 1]);
                last = e;
            }
            other => return other,
        }
    }
    Err(last)
}

async fn run(
    endpoint: &str,
    token: Option<&str>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    out: Output,
    command: Command,
) -> Result<(), ClientError> {
    let mut c = Client::connect_with(endpoint, token, tls).await?;
    match command {
        Command::Tenant { command } => iam::tenant(&mut c, out, command).await?,
        Command::Key { command } => iam::key(&mut c, out, command).await?,
        Command::Role { command } => iam::role(&mut c, out, command).await?,
        Command::Binding { command } => iam::binding(&mut c, out, command).await?,
        Command::Whoami => iam::whoami(&mut c, out).await?,
        Command::Audit { command } => iam::audit(&mut c, out, command).await?,
        Command::Secrets { command } => {
            nexus_client::secrets_cli::run(&mut c, command, out == Output::Json).await?
        }
        Command::Status => {
            let s = c.cluster.status(pb::StatusRequest {}).await?.into_inner();
            let members: Vec<Value> = s.members.iter().map(member_json).collect();
            if out == Output::Json {
                print_json(&json!({
                    "node_id": s.node_id, "role": s.role, "term": s.term, "leader_id": s.leader_id,
                    "leader_addr": s.leader_addr, "commit_index": s.commit_index,
                    "applied_index": s.applied_index, "last_log_index": s.last_log_index,
                    "snapshot_index": s.snapshot_index, "search_index_watermark": s.search_index_watermark,
                    "members": members, "version": s.version,
                }));
            } else {
                let mut t = table(&[
                    "NODE", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "SNAPSHOT", "SEARCH",
                    "VERSION",
                ]);
                t.add_row(vec![
                    s.node_id.to_string(),
                    s.role.clone(),
                    s.term.to_string(),
                    format!("{} ({})", s.leader_id, s.leader_addr),
                    s.commit_index.to_string(),
                    s.applied_index.to_string(),
                    s.snapshot_index.to_string(),
                    s.search_index_watermark.to_string(),
                    s.version.clone(),
                ]);
                println!("{t}");
                print_members(&s.members, out);
            }
        }
        Command::Memory { command } => match command {
            MemoryCommand::Put {
                namespace,
                key,
                value,
                ttl,
                expected_version,
            } => {
                let r = c
                    .memory
                    .put(pb::PutRequest {
                        namespace,
                        key,
                        value,
                        ttl_ms: ttl.map_or(0, |d| d.as_millis() as u64),
                        expected_version,
                    })
                    .await?
                    .into_inner();
                print_memories(&r.item.into_iter().collect::<Vec<_>>(), out);
            }
            MemoryCommand::Get {
                namespace,
                key,
                stale,
            } => {
                let r = c
                    .memory
                    .get(pb::GetRequest {
                        namespace,
                        key,
                        consistency: consistency(stale),
                    })
                    .await?
                    .into_inner();
                match (out, r.item) {
                    (Output::Json, Some(i)) => print_json(&memory_json(&i)),
                    (_, Some(i)) => print_memories(&[i], out),
                    (_, None) => {}
                }
            }
            MemoryCommand::List {
                namespace,
                prefix,
                limit,
                stale,
            } => {
                let mut items = Vec::new();
                let mut token = String::new();
                while items.len() < limit {
                    let page = c
                        .memory
                        .list(pb::ListRequest {
                            namespace: namespace.clone(),
                            prefix: prefix.clone(),
                            page_size: (limit - items.len()).min(1000) as u32,
                            page_token: token,
                            consistency: consistency(stale),
                        })
                        .await?
                        .into_inner();
                    items.extend(page.items);
                    token = page.next_page_token;
                    if token.is_empty() {
                        break;
                    }
                }
                print_memories(&items, out);
            }
            MemoryCommand::Remember {
                text,
                namespace,
                meta,
                importance,
            } => {
                let r = c
                    .memory
                    .remember(pb::RememberRequest {
                        namespace,
                        text,
                        metadata: meta.into_iter().collect(),
                        importance,
                    })
                    .await?
                    .into_inner();
                let m = r.memory.unwrap_or_default();
                if out == Output::Json {
                    print_json(&semantic_json(&m));
                } else {
                    println!("remembered {} in {}", m.id, m.namespace);
                }
            }
            MemoryCommand::Recall {
                query,
                namespace,
                conversation,
                sources,
                k,
                meta,
                since,
                until,
                min_score,
                stale,
            } => {
                let r = c
                    .memory
                    .recall(pb::RecallRequest {
                        query,
                        k,
                        namespace,
                        metadata: meta.into_iter().collect(),
                        since_ms: since.unwrap_or(0),
                        until_ms: until.unwrap_or(0),
                        min_score,
                        consistency: consistency(stale),
                        mode: pb::RecallMode::Hybrid as i32,
                        sources: sources
                            .iter()
                            .map(|s| match s {
                                RecallSourceArg::Memories => pb::RecallSource::Memories as i32,
                                RecallSourceArg::Messages => pb::RecallSource::Messages as i32,
                            })
                            .collect(),
                        conversation_id: conversation,
                    })
                    .await?
                    .into_inner();
                // (kind, id, text, the item as JSON) of each hit.
                let items: Vec<(&str, String, String, Value)> = r
                    .hits
                    .iter()
                    .map(|h| match &h.item {
                        Some(pb::recall_hit::Item::Memory(m)) => {
                            ("memory", m.id.clone(), m.text.clone(), semantic_json(m))
                        }
                        Some(pb::recall_hit::Item::Message(m)) => {
                            ("message", m.id.clone(), m.content.clone(), message_json(m))
                        }
                        None => ("", String::new(), String::new(), Value::Null),
                    })
                    .collect();
                if out == Output::Json {
                    let hits: Vec<Value> = r
                        .hits
                        .iter()
                        .zip(&items)
                        .map(|(h, (kind, id, text, item))| {
                            json!({"kind": kind, "id": id, "text": text, "score": h.score,
                                   "similarity": h.similarity, "retrievers": h.retrievers,
                                   *kind: item})
                        })
                        .collect();
                    print_json(&Value::Array(hits));
                } else {
                    let mut t = table(&["SCORE", "SIMILARITY", "FOUND BY", "KIND", "ID", "TEXT"]);
                    for (h, (kind, id, text, _)) in r.hits.iter().zip(&items) {
                        t.add_row(vec![
                            format!("{:.4}", h.score),
                            h.similarity.map_or("-".into(), |s| format!("{s:.3}")),
                            h.retrievers.join("+"),
                            kind.to_string(),
                            id.clone(),
                            truncate(text, 70),
                        ]);
                    }
                    println!("{t}");
                }
            }
            MemoryCommand::Forget { id } => {
                c.memory
                    .forget(pb::ForgetRequest { id: id.clone() })
                    .await?;
                if out == Output::Json {
                    print_json(&json!({"forgotten": id}));
                } else {
                    println!("forgot {id}");
                }
            }
            MemoryCommand::Delete {
                namespace,
                key,
                expected_version,
            } => {
                let r = c
                    .memory
                    .delete(pb::DeleteRequest {
                        namespace: namespace.clone(),
                        key: key.clone(),
                        expected_version,
                    })
                    .await?
                    .into_inner();
                if out == Output::Json {
                    print_json(
                        &json!({"namespace": namespace, "key": key, "deleted_version": r.deleted_version}),
                    );
                } else {
                    println!("deleted {namespace}/{key} (version {})", r.deleted_version);
                }
            }
        },
        Command::Conv { command } => match command {
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
        },
        Command::Member { command } => {
            let members = match command {
                MemberCommand::Add {
                    id,
                    peer_addr,
                    api_addr,
                } => {
                    eprintln!("adding node {id} as a learner; waiting for it to catch up...");
                    c.cluster
                        .add_member(pb::AddMemberRequest {
                            id,
                            peer_addr,
                            api_addr,
                        })
                        .await?
                        .into_inner()
                        .members
                }
                MemberCommand::Promote { id } => {
                    c.cluster
                        .promote_member(pb::PromoteMemberRequest { id })
                        .await?
                        .into_inner()
                        .members
                }
                MemberCommand::Remove { id } => {
                    c.cluster
                        .remove_member(pb::RemoveMemberRequest { id })
                        .await?
                        .into_inner()
                        .members
                }
                MemberCommand::List => {
                    c.cluster
                        .status(pb::StatusRequest {})
                        .await?
                        .into_inner()
                        .members
                }
            };
            print_members(&members, out);
        }
        Command::Cluster {
            command: ClusterCommand::TransferLeader { id },
        } => {
            eprintln!("handing leadership to node {id}...");
            let r = c
                .cluster
                .transfer_leader(pb::TransferLeaderRequest { id })
                .await?
                .into_inner();
            if out == Output::Json {
                print_json(&json!({"leader_id": r.leader_id, "term": r.term}));
            } else {
                println!("node {} leads (term {})", r.leader_id, r.term);
            }
        }
        Command::Search(a) => {
            let kinds = a
                .kind
                .iter()
                .map(|k| match k {
                    Kind::Memory => pb::HitKind::Memory as i32,
                    Kind::Message => pb::HitKind::Message as i32,
                    Kind::Semantic => pb::HitKind::Semantic as i32,
                })
                .collect();
            let r = c
                .search
                .search(pb::SearchRequest {
                    query: a.query,
                    kinds,
                    namespace: a.namespace,
                    conversation_id: a.conversation,
                    role: a.role,
                    since_ms: a.since.unwrap_or(0),
                    until_ms: a.until.unwrap_or(0),
                    limit: a.limit,
                    consistency: consistency(a.stale),
                    mode: match a.mode {
                        Mode::Hybrid => pb::RecallMode::Hybrid,
                        Mode::Bm25 => pb::RecallMode::Bm25,
                        Mode::Vector => pb::RecallMode::Vector,
                    } as i32,
                })
                .await?
                .into_inner();
            if out == Output::Json {
                let hits: Vec<Value> = r
                    .hits
                    .iter()
                    .map(|h| {
                        let (kind, item) = match &h.item {
                            Some(pb::search_hit::Item::Memory(m)) => ("memory", memory_json(m)),
                            Some(pb::search_hit::Item::Message(m)) => ("message", message_json(m)),
                            Some(pb::search_hit::Item::Semantic(m)) => ("semantic", semantic_json(m)),
                            None => ("unknown", Value::Null),
                        };
                        json!({"kind": kind, "score": h.score, "snippet": h.snippet,
                               "highlights": h.highlights.iter().map(|x| [x.start, x.end]).collect::<Vec<_>>(),
                               "retrievers": h.retrievers, "item": item})
                    })
                    .collect();
                print_json(&Value::Array(hits));
            } else {
                let mut t = table(&["SCORE", "KIND", "WHERE", "FOUND BY", "SNIPPET"]);
                for h in &r.hits {
                    let (kind, place) = match &h.item {
                        Some(pb::search_hit::Item::Memory(m)) => {
                            ("memory", format!("{}/{}", m.namespace, m.key))
                        }
                        Some(pb::search_hit::Item::Message(m)) => (
                            "message",
                            format!("{}#{} {}", m.conversation_id, m.seq, m.role),
                        ),
                        Some(pb::search_hit::Item::Semantic(m)) => {
                            ("semantic", format!("{}/{}", m.namespace, m.id))
                        }
                        None => ("?", String::new()),
                    };
                    t.add_row(vec![
                        format!("{:.3}", h.score),
                        kind.to_string(),
                        place,
                        h.retrievers.join("+"),
                        highlight(&h.snippet, &h.highlights),
                    ]);
                }
                println!("{t}");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run_with_failover(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Status(s)) => {
            eprintln!("error: {} ({:?})", s.message(), s.code());
            if let Some(leader) = s
                .metadata()
                .get("x-nexus-leader-addr")
                .and_then(|v| v.to_str().ok())
            {
                eprintln!(
                    "hint: the leader's API is at {leader}; retry with --endpoint http://{leader}"
                );
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}
