//! The node's configuration: one struct, with documented defaults. Sources, later ones win:
//! built-in defaults < `nexus.toml` (or `--config FILE`) < `NEXUS_*` environment variables
//! (nested keys with `__`, e.g. `NEXUS_LIMITS__MAX_KEY_BYTES=1024`) < command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The config file read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_FILE: &str = "nexus.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id in the cluster; unique and never reused.
    pub node_id: u64,
    /// Where the node keeps its data (RocksDB, search index, snapshots).
    pub data_dir: PathBuf,
    /// The public gRPC API.
    pub grpc_addr: SocketAddr,
    /// HTTP: /healthz, /readyz, /metrics.
    pub http_addr: SocketAddr,
    /// The internal Raft transport between nodes.
    pub peer_addr: SocketAddr,
    /// Members of a new static cluster, `ID=PEER_ADDR[/API_ADDR],...`, the same on every
    /// node (as etcd's --initial-cluster). Read on the very first start only; unset, a node
    /// starts a one-member cluster of itself.
    pub initial_cluster: Option<String>,
    /// Start as a node to be added to an existing cluster (`nexusctl member add`) instead of
    /// initializing a cluster on the first start.
    pub join: bool,
    pub limits: Limits,
    pub raft: RaftConfig,
    pub search: SearchConfig,
    pub log: LogConfig,
    pub peer_tls: PeerTlsConfig,
    pub embedding: EmbeddingConfig,
    pub vector: VectorConfig,
    pub auth: AuthConfig,
    pub secrets: SecretsConfig,
    pub quotas: QuotaConfig,
    pub tls: ApiTlsConfig,
    pub audit: AuditConfig,
    pub mcp: McpConfig,
    pub mcp_client: McpClientConfig,
    pub plugins: PluginConfig,
}

/// WebAssembly plugins (`service::tools::wasm`, docs/plugins.md): how large a module may be
/// and what a call may use. A plugin's manifest may ask for less or more, up to the maxima.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Largest module a tenant may register (replicated to every node, kept in the log).
    pub max_module_bytes: u64,
    /// Most plugins a tenant may register.
    pub max_plugins_per_tenant: usize,
    /// Fuel (about one unit per WebAssembly instruction) a call gets, and the most it may ask.
    pub default_fuel: u64,
    pub max_fuel: u64,
    /// Linear memory a call may grow to, and the most it may ask.
    pub default_memory_bytes: u64,
    pub max_memory_bytes: u64,
    /// Wall-clock deadline of a call, and the longest it may ask.
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    /// Plugin calls running at once on this node (each holds a pooled instance); more wait
    /// within their deadline.
    pub max_concurrent: usize,
    /// Compiled modules this node keeps.
    pub max_compiled: usize,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            max_module_bytes: 4 << 20,
            max_plugins_per_tenant: 64,
            default_fuel: 1_000_000_000,
            max_fuel: 20_000_000_000,
            default_memory_bytes: 64 << 20,
            max_memory_bytes: 256 << 20,
            default_timeout_ms: 5_000,
            max_timeout_ms: 30_000,
            max_concurrent: 32,
            max_compiled: 256,
        }
    }
}

/// External MCP servers tenants mount (`nexusctl mcp mount`): stdio commands this node
/// starts for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpClientConfig {
    /// The commands a tenant may mount (the program's name or path, as given to the mount):
    /// each runs on this node's host with its rights, so only what the operator lists.
    /// Empty: no stdio mount is accepted.
    pub commands: Vec<String>,
    /// Longest a call to a mounted tool may take, unless its mount says less.
    pub call_timeout_ms: u64,
    /// Most mounted servers running at once on this node; the least recently used is
    /// stopped to start another.
    pub max_servers: usize,
}

impl Default for McpClientConfig {
    fn default() -> Self {
        McpClientConfig {
            commands: Vec::new(),
            call_timeout_ms: 30_000,
            max_servers: 64,
        }
    }
}

/// The MCP server at `/mcp` on the HTTP port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Host header values accepted (DNS-rebinding protection): names, or `host:port`. The
    /// HTTP address's own host is always accepted.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted (`https://app.example.com`); empty: no Origin check.
    pub allowed_origins: Vec<String>,
    /// The URL clients reach `/mcp` at, for the protected-resource metadata (empty: from
    /// the request's Host).
    pub public_url: String,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: Vec::new(),
            public_url: String::new(),
        }
    }
}

/// Retention of the audit log, applied by the leader to every tenant's chain: the oldest
/// records past the age or the count are exported (JSON lines) and then removed through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Records older than this many seconds are removed (0 = kept whatever their age).
    pub max_age_secs: u64,
    /// A tenant's chain keeps at most this many records (0 = no limit).
    pub max_records_per_tenant: u64,
    /// Export records before removing them. Off only where the records are shipped elsewhere
    /// already (nexusctl audit tail -o json into a SIEM).
    pub export: bool,
    /// Where the leader writes the removed records, one file per removal:
    /// `<tenant>/<incarnation>/<first seq>-<last seq>.jsonl`. Empty: `<data-dir>/audit-export`.
    pub export_dir: PathBuf,
    /// How often the leader applies retention.
    pub retention_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_age_secs: 90 * 24 * 3600,
            max_records_per_tenant: 1_000_000,
            export: true,
            export_dir: PathBuf::new(),
            retention_interval_secs: 60,
        }
    }
}

/// TLS on the public gRPC API: `cert_file` and `key_file` (PEM) together, or neither
/// (plaintext). With `client_ca_file`, clients must also present a certificate from that CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiTlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
    /// Serve the HTTP port (probes, metrics) over TLS too, with the same certificate.
    pub http: bool,
    /// With authentication on, serve the API (gRPC and HTTP) in plaintext on a non-loopback
    /// address. Only for a mesh or an ingress that terminates TLS in front of the node: bearer
    /// tokens cross the network in the clear otherwise.
    pub insecure_plaintext: bool,
}

impl Default for ApiTlsConfig {
    fn default() -> Self {
        ApiTlsConfig {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            http: true,
            insecure_plaintext: false,
        }
    }
}

/// Per-tenant limits, enforced by each node on the requests it receives.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests per second per tenant (0 = unlimited). The root principal is exempt.
    pub requests_per_second: f64,
    /// Requests a tenant may make at once after being idle (0 = one second's worth).
    pub burst: u32,
}

/// The master key of the secrets manager (it wraps each tenant's data key). Every node of a
/// cluster needs the same one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecretsConfig {
    /// File holding the master key: 32 bytes, base64.
    pub master_key_file: PathBuf,
    /// Environment variable holding it instead. With neither, the node makes
    /// `<data-dir>/master.key` (fine on one laptop; not for clusters or production).
    pub master_key_env: String,
    /// Earlier master keys, during a rotation: they unwrap data keys not re-wrapped yet.
    pub previous_master_key_files: Vec<PathBuf>,
}

impl Default for SecretsConfig {
    fn default() -> Self {
        Self {
            master_key_file: PathBuf::new(),
            master_key_env: "NEXUS_MASTER_KEY".into(),
            previous_master_key_files: Vec::new(),
        }
    }
}

/// Authentication of API clients. Off, a node serves tenant `default` with full rights and
/// listens on loopback only; on, every request needs the root key or an API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub enabled: bool,
    /// Environment variable holding the root key (at least 32 characters).
    pub root_key_env: String,
    /// File holding the root key instead (empty = use `root_key_env`).
    pub root_key_file: PathBuf,
    /// OIDC issuers whose JWTs are accepted as bearer tokens (principal `user:<sub>`).
    pub oidc: Vec<OidcConfig>,
    /// A credential's first successful use on a node is audited as a login (`auth.login`);
    /// its uses within this many seconds after are not recorded again.
    pub login_window_secs: u64,
    /// Failed authentications a source address may make per second (0 = unlimited); past
    /// its burst, its requests are refused before any read unless their credential is
    /// already known good on this node.
    pub failures_per_source_per_second: f64,
    /// Failed authentications a source address may make at once.
    pub failures_per_source_burst: u32,
    /// A request refused for its credentials (or its source's failures) is answered after
    /// this long: a client that retries at once on its own answer, as floods do, is slowed to
    /// a few requests per second per stream instead of costing the node a refusal each time.
    pub failure_delay_ms: u64,
    /// Denied requests are counted and written to the audit log as one record per
    /// (principal, tenant, source, code) and window of this many seconds.
    pub denial_window_secs: u64,
}

/// One OIDC issuer: its tokens are verified against the keys its discovery document names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL (`iss`); `<issuer>/.well-known/openid-configuration` is fetched.
    pub issuer: String,
    /// The audience (`aud`) tokens must name.
    pub audience: String,
    /// Signature algorithms accepted (public-key ones only).
    pub algorithms: Vec<String>,
    /// Claim holding the tenant id.
    pub tenant_claim: String,
    /// Claim holding role names (a list, or a space-separated string).
    pub roles_claim: String,
    /// Tenant of tokens without `tenant_claim` (empty: such tokens are refused).
    pub default_tenant: String,
    /// Tenants this issuer may assert (`["*"]`: any). Empty: only `default_tenant`. A token
    /// naming another tenant is refused, so one issuer cannot speak for every tenant.
    pub tenants: Vec<String>,
    /// Clock skew tolerated on exp and nbf, in seconds.
    pub clock_skew_s: u64,
    /// Keys are fetched again after this long.
    pub jwks_refresh_s: u64,
    /// Least time between two fetches (an unknown key id triggers one).
    pub jwks_min_refresh_ms: u64,
    /// Timeout of discovery and JWKS requests.
    pub timeout_ms: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            algorithms: vec!["RS256".into(), "ES256".into()],
            tenant_claim: "nexus_tenant".into(),
            roles_claim: "nexus_roles".into(),
            default_tenant: String::new(),
            tenants: Vec::new(),
            clock_skew_s: 60,
            jwks_refresh_s: 3600,
            jwks_min_refresh_ms: 10_000,
            timeout_ms: 5_000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            root_key_env: "NEXUS_ROOT_KEY".into(),
            root_key_file: PathBuf::new(),
            oidc: Vec::new(),
            login_window_secs: 3600,
            failures_per_source_per_second: 5.0,
            failures_per_source_burst: 20,
            failure_delay_ms: 200,
            denial_window_secs: 60,
        }
    }
}

/// The embedding model of semantic memories. Vectors are made on the node that proposes a
/// write, so every node should name the same model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// `local` (all-MiniLM-L6-v2 in process, from the model cache), `openai` (an
    /// OpenAI-compatible /v1/embeddings server) or `none` (memories are found by words only).
    pub provider: String,
    /// Folder of the local model's files; empty = the model cache (`nexus model path`).
    pub model_dir: Option<PathBuf>,
    /// `openai`: the server's base URL, such as https://api.openai.com or
    /// http://localhost:11434 (Ollama).
    pub url: String,
    /// `openai`: the model name.
    pub model: String,
    /// `openai`: the vector length the model returns.
    pub dimensions: usize,
    /// `openai`: the environment variable that holds the API key (unset = no key).
    pub api_key_env: String,
    /// `openai`: per-request timeout.
    pub timeout_ms: u64,
    /// Most texts embedded together (requests that arrive together share one batch).
    pub max_batch: usize,
    /// Recent embeddings kept by text (texts up to 2 KiB), so a repeated query or text skips
    /// the model; 0 = none.
    pub cache_entries: usize,
    /// `local`: threads the model runs on (a batch is split among them, one text uses them
    /// all in its matrix products); 0 = one per core.
    pub threads: usize,
}

/// The vector index of semantic memories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorConfig {
    /// `local`: an HNSW index in this process, saved under the data directory; `qdrant`: a
    /// Qdrant collection (every node of a cluster may share it).
    pub backend: String,
    /// HNSW links per node (M).
    pub connectivity: usize,
    /// HNSW candidates kept while inserting (ef_construction).
    pub expansion_add: usize,
    /// HNSW candidates kept while searching (ef); higher finds more true neighbours, slower.
    pub expansion_search: usize,
    /// How vectors are kept in memory: f32, bf16, f16 or i8.
    pub quantization: String,
    /// Most time between a change and saving the index to disk (what is not saved is
    /// replayed from the Raft log after a crash).
    pub persist_interval_ms: u64,
    /// `qdrant`: the server's gRPC URL, such as http://localhost:6334.
    pub qdrant_url: String,
    /// `qdrant`: the collection of the memories' vectors.
    pub qdrant_collection: String,
    /// `qdrant`: the environment variable that holds the API key (unset = no key).
    pub qdrant_api_key_env: String,
    /// `qdrant`: per-request timeout.
    pub qdrant_timeout_ms: u64,
}
/// Mutual TLS between nodes on the peer port: every node presents `cert_file` (as the server
/// of its peer port and as the client of others') and accepts only peers whose certificate
/// chains to `ca_file`. All three files, or none (plaintext, for loopback and trusted
/// networks). A peer's certificate must name the host of its peer address (DNS or IP SAN).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// PEM certificate chain of this node.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificate(s) that peers' certificates must chain to.
    pub ca_file: Option<PathBuf>,
    /// Serve and dial the peer port in plaintext beyond loopback. Only for a network that
    /// authenticates and encrypts below Nexus (WireGuard, IPsec, a mesh with mTLS): whoever
    /// reaches a plaintext peer port can read the log and propose commands.
    pub insecure_plaintext: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest memory key, in bytes.
    pub max_key_bytes: usize,
    /// Largest memory value (JSON text), in bytes.
    pub max_value_bytes: usize,
    /// Largest message content, in bytes.
    pub max_message_bytes: usize,
    /// Largest semantic memory text, in bytes.
    pub max_text_bytes: usize,
    /// Largest metadata (JSON object text), in bytes.
    pub max_metadata_bytes: usize,
    /// Longest conversation title, in bytes.
    pub max_title_bytes: usize,
    /// Most items in one page of a listing or search.
    pub max_page_size: u32,
    /// Most messages in one append.
    pub max_batch: usize,
    /// Largest gRPC request, in bytes.
    pub max_request_bytes: usize,
    /// Byte budget of one reply: a listing's page ends there (with a page token) even
    /// before `max_page_size` items. Replies are also refused past it plus 1 MiB.
    pub max_reply_bytes: usize,
    /// Most concurrent HTTP/2 streams (requests) per client connection.
    pub max_concurrent_streams: u32,
    /// Longest a request may run on the server; a client's shorter `grpc-timeout` wins.
    pub request_timeout_ms: u64,
    /// Most writes waiting to be proposed on this node; past it, RESOURCE_EXHAUSTED.
    pub max_pending_writes: usize,
    /// Most linearizable reads waiting for a read index on this node; past it,
    /// RESOURCE_EXHAUSTED.
    pub max_pending_reads: usize,
    /// The HTTP port (probes, metrics): a request's headers must arrive within this long,
    /// and an idle keep-alive connection is closed after it.
    pub http_header_timeout_ms: u64,
    /// Most connections the HTTP port holds at once; more are closed at once.
    pub http_max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Take a snapshot (and compact the log) after this many entries.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot, so that slightly lagging followers and the
    /// search indexer catch up from the log instead of a full snapshot.
    pub keep_entries_after_snapshot: u64,
    /// Most entries in one append-entries message.
    pub max_append_entries: u64,
    /// Size of one chunk of a snapshot sent to a follower.
    pub snapshot_chunk_bytes: u64,
    /// How long the leader waits for one snapshot chunk to be answered. The last chunk is
    /// answered once the follower has installed the whole snapshot, which for a large state
    /// takes seconds; a shorter deadline makes the leader start the transfer over, forever.
    pub install_snapshot_timeout_ms: u64,
    /// Most client commands proposed together in one log entry (group commit).
    pub max_batch_commands: usize,
    /// Most bytes of commands proposed together in one log entry.
    pub max_batch_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchConfig {
    /// Most time between a write and its full-text commit when no search asks for it (a
    /// linearizable search has the index commit as soon as it holds what the search must see).
    pub commit_interval_ms: u64,
    /// Memory of the full-text index writer, in MiB.
    pub writer_memory_mb: usize,
    /// How long a linearizable search waits for the index to catch up before Unavailable.
    pub wait_timeout_ms: u64,
    /// Hybrid recall: how the vector and BM25 lists are fused.
    pub hybrid_fusion: Fusion,
    /// Hybrid retrieval: the weight of the vector list (relative to BM25's).
    pub hybrid_vector_weight: f32,
    /// Hybrid retrieval: the weight of the BM25 list (relative to the vectors').
    pub hybrid_bm25_weight: f32,
}

/// How hybrid recall fuses its two lists (see `search::recall`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Weighted sum of the cosine similarity and the BM25 match share.
    #[default]
    Convex,
    /// Weighted reciprocal rank fusion.
    Rrf,
}

impl SearchConfig {
    /// Refuses weights that cannot be fused.
    pub fn check(&self) -> Result<(), String> {
        let (v, b) = (self.hybrid_vector_weight, self.hybrid_bm25_weight);
        if !(v.is_finite() && b.is_finite() && v >= 0.0 && b >= 0.0 && v + b > 0.0) {
            return Err(format!(
                "search.hybrid_vector_weight ({v}) and search.hybrid_bm25_weight ({b}) must be finite, not negative, and not both 0"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// trace, debug, info, warn or error (RUST_LOG overrides).
    pub level: String,
    /// text or json.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("./nexus-data"),
            grpc_addr: "127.0.0.1:7700".parse().expect("valid address"),
            http_addr: "127.0.0.1:9001".parse().expect("valid address"),
            peer_addr: "127.0.0.1:7701".parse().expect("valid address"),
            initial_cluster: None,
            join: false,
            limits: Limits::default(),
            raft: RaftConfig::default(),
            search: SearchConfig::default(),
            log: LogConfig::default(),
            peer_tls: PeerTlsConfig::default(),
            embedding: EmbeddingConfig::default(),
            vector: VectorConfig::default(),
            auth: AuthConfig::default(),
            secrets: SecretsConfig::default(),
            quotas: QuotaConfig::default(),
            tls: ApiTlsConfig::default(),
            audit: AuditConfig::default(),
            mcp: McpConfig::default(),
            mcp_client: McpClientConfig::default(),
            plugins: PluginConfig::default(),
        }
    }
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            provider: "local".into(),
            model_dir: None,
            url: String::new(),
            model: String::new(),
            dimensions: 0,
            api_key_env: "NEXUS_EMBEDDING_API_KEY".into(),
            timeout_ms: 30_000,
            max_batch: 32,
            cache_entries: 4096,
            threads: 0,
        }
    }
}

impl Default for VectorConfig {
    fn default() -> Self {
        Self {
            backend: "local".into(),
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 128,
            quantization: "f32".into(),
            persist_interval_ms: 30_000,
            qdrant_url: String::new(),
            qdrant_collection: "nexus_memories".into(),
            qdrant_api_key_env: "NEXUS_QDRANT_API_KEY".into(),
            qdrant_timeout_ms: 5_000,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_value_bytes: 1 << 20,
            max_message_bytes: 256 << 10,
            max_text_bytes: 64 << 10,
            max_metadata_bytes: 64 << 10,
            max_title_bytes: 1024,
            max_page_size: 1000,
            max_batch: 1000,
            max_request_bytes: 8 << 20,
            max_reply_bytes: 4 << 20,
            max_concurrent_streams: 256,
            request_timeout_ms: 60_000,
            max_pending_writes: 8_192,
            max_pending_reads: 8_192,
            http_header_timeout_ms: 10_000,
            http_max_connections: 1_024,
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every_entries: 20_000,
            keep_entries_after_snapshot: 5_000,
            max_append_entries: 512,
            snapshot_chunk_bytes: 4 << 20,
            install_snapshot_timeout_ms: 60_000,
            max_batch_commands: 512,
            max_batch_bytes: 4 << 20,
        }
    }
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            commit_interval_ms: 1000,
            writer_memory_mb: 64,
            wait_timeout_ms: 10_000,
            hybrid_fusion: Fusion::Convex,
            hybrid_vector_weight: 0.75,
            hybrid_bm25_weight: 0.25,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info,openraft=warn".into(),
            format: "text".into(),
        }
    }
}

/// The default configuration as a commented nexus.toml (`nexus config default`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default.toml");

/// Values given on the command line; unset ones leave the lower layers alone.
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<bool>,
}

impl Config {
    /// Loads the layered configuration. `file` is `--config`; without it `nexus.toml` in the
    /// working directory is read when present. A named file that is missing is an error.
    pub fn load(file: Option<&Path>, flags: FlagOverrides) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => {
                if !path.exists() {
                    return Err(Box::new(figment::Error::from(format!(
                        "config file {} does not exist",
                        path.display()
                    ))));
                }
                figment = figment.merge(Toml::file(path));
            }
            None => figment = figment.merge(Toml::file(DEFAULT_CONFIG_FILE)),
        }
        figment
            .merge(
                Env::prefixed("NEXUS_")
                    .filter(|key| is_config_key(key.as_str()))
                    .split("__"),
            )
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(Box::new)
    }
}

/// Whether `NEXUS_<key>` is configuration: its first part is a top-level key of `Config`
/// (taken from `Config` itself, so a new section cannot be forgotten here). Other `NEXUS_*`
/// variables (such as nexusctl's `NEXUS_ENDPOINT`) belong to other programs and are not
/// configuration errors here.
fn is_config_key(key: &str) -> bool {
    static TOP_LEVEL_KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let keys = TOP_LEVEL_KEYS.get_or_init(|| match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
        _ => Vec::new(),
    });
    let key = key.to_ascii_lowercase();
    let top = key.split("__").next().unwrap_or_default();
    keys.iter().any(|t| t == top)
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment's error
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_file_is_the_default() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "node_id = 5\ngrpc_addr = \"127.0.0.1:1000\"\n[limits]\nmax_key_bytes = 64\n",
            )?;
            jail.set_env("NEXUS_GRPC_ADDR", "127.0.0.1:2000");
            jail.set_env("NEXUS_LIMITS__MAX_PAGE_SIZE", "10");
            jail.set_env("NEXUS_ENDPOINT", "http://elsewhere:1");
            jail.set_env("NEXUS_PEER_TLS__CA_FILE", "/etc/ca.pem");
            let flags = FlagOverrides {
                node_id: Some(7),
                ..Default::default()
            };
            let c = Config::load(Some(Path::new("custom.toml")), flags).unwrap();
            assert_eq!(c.node_id, 7, "flags win over the file");
            assert_eq!(c.grpc_addr.port(), 2000, "env wins over the file");
            assert_eq!(c.limits.max_key_bytes, 64, "the file wins over defaults");
            assert_eq!(c.limits.max_page_size, 10);
            assert_eq!(c.http_addr, Config::default().http_addr);
            assert_eq!(
                c.peer_tls.ca_file.as_deref(),
                Some(Path::new("/etc/ca.pem")),
                "every section is reachable from the environment"
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "nod_id = 5\n")?;
            assert!(Config::load(Some(Path::new("bad.toml")), FlagOverrides::default()).is_err());
            assert!(
                Config::load(Some(Path::new("missing.toml")), FlagOverrides::default()).is_err()
            );
            Ok(())
        });
    }
}
