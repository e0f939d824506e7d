//! Assembles and runs a node: data directory, store, Raft, full-text indexer, the gRPC, peer
//! and HTTP listeners, the TTL sweeper; and shuts them down in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nexus_proto::raft::v1::raft_service_server::RaftServiceServer;
use nexus_proto::v1::audit_service_server::AuditServiceServer;
use nexus_proto::v1::cluster_service_server::ClusterServiceServer;
use nexus_proto::v1::conversation_service_server::ConversationServiceServer;
use nexus_proto::v1::event_service_server::EventServiceServer;
use nexus_proto::v1::hook_service_server::HookServiceServer;
use nexus_proto::v1::iam_service_server::IamServiceServer;
use nexus_proto::v1::memory_service_server::MemoryServiceServer;
use nexus_proto::v1::schedule_service_server::ScheduleServiceServer;
use nexus_proto::v1::search_service_server::SearchServiceServer;
use nexus_proto::v1::secrets_service_server::SecretsServiceServer;
use nexus_proto::v1::tool_service_server::ToolServiceServer;
use nexus_proto::v1::workflow_service_server::WorkflowServiceServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::api::grpc::{
    AuditApi, ClusterApi, ConversationApi, EventsApi, HooksApi, IamApi, MemoryApi, SchedulesApi,
    SearchApi, SecretsApi, ToolsApi, WorkflowsApi,
};
use crate::api::http::{router, HttpState};
use crate::auth::{is_loopback, is_loopback_host, Authenticator};
use crate::cluster::network::{PeerService, PeerTls, MAX_PEER_MESSAGE_BYTES};
use crate::cluster::Groups;
use crate::command::{Cluster, Nexus};
use crate::config::Config;
use crate::search::fulltext::FullTextIndex;
use crate::search::recall::Recaller;
use crate::search::vector::local::{HnswParams, LocalIndex};
use crate::search::vector::qdrant::QdrantIndex;
use crate::search::vector::{VectorIndex, VectorIndexer};
use crate::secrets::MasterKeys;
use crate::service::conversations::ConversationService;
use crate::service::iam::IamService;
use crate::service::kv::KvService;
use crate::service::secrets::SecretsService;
use crate::service::semantic::SemanticService;
use crate::service::tools::{Builtins, ToolService};
use crate::store::{format, Store};

/// How often the leader looks for expired memories.
const TTL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most expired memories removed by one sweep command.
const TTL_SWEEP_BATCH: usize = 1_000;
/// Idle client connections are pinged this often, and dropped when a ping goes unanswered
/// for `HTTP2_KEEPALIVE_TIMEOUT`, so dead peers do not hold streams.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long start-up waits for a leader before serving anyway (requests then get Unavailable).
const LEADER_WAIT: Duration = Duration::from_secs(10);

async fn bind(addr: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr} (is another nexus running? pick another with a flag)"))
}

/// Accepted connections with Nagle's algorithm off: small replies must not wait for the
/// peer's delayed ACK (tens of milliseconds per request otherwise).
fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// The API's TLS from `[tls]` (reloaded when the files change); None for plaintext. Errors
/// name the setting.
fn api_tls(
    c: &crate::config::ApiTlsConfig,
) -> anyhow::Result<Option<Arc<crate::tls::ReloadingTls>>> {
    use crate::tls::{PemFile, TlsFiles};
    let (cert, key) = match (&c.cert_file, &c.key_file) {
        (None, None) if c.client_ca_file.is_none() => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => anyhow::bail!("tls: cert_file and key_file go together (client_ca_file needs them)"),
    };
    let file = |setting, path: &std::path::PathBuf| PemFile {
        setting,
        path: path.clone(),
    };
    let files = TlsFiles {
        cert: file("tls.cert_file", cert),
        key: file("tls.key_file", key),
        client_ca: c
            .client_ca_file
            .as_ref()
            .map(|p| file("tls.client_ca_file", p)),
    };
    Ok(Some(crate::tls::ReloadingTls::load(
        "gRPC API",
        files,
        &[b"h2"],
    )?))
}

/// What a node refuses to expose (see "Threat model" in docs/design.md):
/// - the API beyond loopback without authentication: every caller would have full rights;
/// - with authentication, the API (gRPC, HTTP) beyond loopback in plaintext, where bearer
///   tokens cross the network in the clear, unless `tls.insecure_plaintext`;
/// - the peer port, or a peer of `initial_cluster`, beyond loopback without mutual TLS, where
///   anyone who reaches it reads the log and proposes commands, unless
///   `peer_tls.insecure_plaintext`.
fn check_exposure(config: &Config) -> anyhow::Result<()> {
    let grpc = config.grpc_addr;
    if !config.auth.enabled && !is_loopback(&grpc) {
        anyhow::bail!(
            "refusing to serve the API on {grpc} without authentication: every caller would have full rights. \
             Turn authentication on ([auth] enabled = true, or NEXUS_AUTH__ENABLED=true, with a root key in NEXUS_ROOT_KEY) \
             or listen on loopback (127.0.0.1)"
        );
    }
    if config.auth.enabled {
        let tls = config.tls.cert_file.is_some();
        for (what, addr, covered) in [
            ("the gRPC API", config.grpc_addr, tls),
            ("HTTP", config.http_addr, tls && config.tls.http),
        ] {
            if is_loopback(&addr) || covered {
                continue;
            }
            if config.tls.insecure_plaintext {
                tracing::warn!(%addr, "serving {what} in plaintext beyond loopback (tls.insecure_plaintext): bearer tokens cross the network in the clear unless something in front terminates TLS");
                continue;
            }
            anyhow::bail!(
                "refusing to serve {what} on {addr} in plaintext with authentication on: bearer tokens would cross the network in the clear. \
                 Give it a certificate (tls.cert_file and tls.key_file, or NEXUS_TLS__CERT_FILE / NEXUS_TLS__KEY_FILE{}), \
                 listen on loopback, or, behind a mesh or ingress that terminates TLS, set tls.insecure_plaintext = true",
                if what == "HTTP" { "; the HTTP port uses it when tls.http = true" } else { "" }
            );
        }
    }
    let peer_tls = config.peer_tls.cert_file.is_some()
        || config.peer_tls.key_file.is_some()
        || config.peer_tls.ca_file.is_some();
    if !peer_tls {
        let mut beyond: Vec<String> = Vec::new();
        if !is_loopback(&config.peer_addr) {
            beyond.push(format!("peer_addr {}", config.peer_addr));
        }
        for part in config.initial_cluster.iter().flat_map(|c| c.split(',')) {
            let Some((_, addrs)) = part.split_once('=') else {
                continue;
            };
            let peer = addrs.split_once('/').map_or(addrs, |(p, _)| p).trim();
            if !peer.is_empty() && !is_loopback_host(peer) {
                beyond.push(format!("initial_cluster member {}", part.trim()));
            }
        }
        if let Some(first) = beyond.first() {
            if config.peer_tls.insecure_plaintext {
                tracing::warn!(%first, "the peer port is plaintext beyond loopback (peer_tls.insecure_plaintext): only safe on a network that authenticates and encrypts below Nexus");
            } else {
                anyhow::bail!(
                    "refusing a plaintext peer port beyond loopback ({first}): whoever reaches it could read every tenant's data and propose commands. \
                     Configure mutual TLS between nodes ([peer_tls] cert_file, key_file, ca_file, or NEXUS_PEER_TLS__CERT_FILE / __KEY_FILE / __CA_FILE), \
                     keep peers on loopback, or, on a network that authenticates and encrypts below Nexus, set peer_tls.insecure_plaintext = true"
                );
            }
        }
    }
    Ok(())
}

/// The services of the public API: their health is reported, and server reflection lists
/// them (and health checking), never the internal Raft service whose descriptors share the
/// file set.
const PUBLIC_SERVICES: &[&str] = &[
    "nexus.v1.MemoryService",
    "nexus.v1.ConversationService",
    "nexus.v1.SearchService",
    "nexus.v1.ClusterService",
    "nexus.v1.IamService",
    "nexus.v1.SecretsService",
    "nexus.v1.AuditService",
    "nexus.v1.ToolService",
    "nexus.v1.ScheduleService",
    "nexus.v1.EventService",
    "nexus.v1.WorkflowService",
    "nexus.v1.HookService",
];

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(nexus_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    PUBLIC_SERVICES
        .iter()
        .fold(builder, |b, name| b.with_service_name(*name))
}

/// Runs a node until `shutdown` resolves.
/// The data directory, opened: its format checked (and migrated), RocksDB, each tenant's
/// usage figures, and the secrets master keys.
fn open_data(config: &Config) -> anyhow::Result<(Store, Arc<MasterKeys>)> {
    let found = format::prepare(&config.data_dir)?;
    tracing::info!(data_dir = %config.data_dir.display(), format = found, node_id = config.node_id, "opening data directory");
    let store = Store::open(&config.data_dir.join("db")).context("opening RocksDB")?;
    crate::command::bring_up_to_date(&store)?;
    let master_keys = Arc::new(
        MasterKeys::load(&config.secrets, &config.data_dir)
            .context("loading the secrets master key ([secrets])")?,
    );
    tracing::info!(
        master_key_id = master_keys.current_id(),
        "secrets master key loaded"
    );
    Ok((store, master_keys))
}

/// The node's parts that the API serves: the Raft group, the derived indexes and the services.
struct Parts {
    node: Arc<Cluster>,
    index: Arc<FullTextIndex>,
    vectors: Option<Arc<VectorIndexer>>,
    kv: Arc<KvService>,
    semantic: Arc<SemanticService>,
    conversations: Arc<ConversationService>,
    recaller: Arc<Recaller>,
    secrets: Arc<SecretsService>,
    iam: Arc<IamService>,
    tools: Arc<ToolService>,
    schedules: Arc<crate::service::schedules::ScheduleService>,
    events: Arc<crate::service::events::EventService>,
    workflows: Arc<crate::service::workflows::WorkflowService>,
    hooks: Arc<crate::service::hooks::HookService>,
}

impl Parts {
    /// Opens the derived indexes of `node`'s state and builds the services on them.
    fn assemble(
        config: &Config,
        node: Arc<Cluster>,
        embedder: Option<Arc<dyn crate::embed::Embedder>>,
        master_keys: Arc<MasterKeys>,
    ) -> anyhow::Result<Parts> {
        let index = FullTextIndex::open(
            &config.data_dir.join("search"),
            node.clone(),
            config.search.clone(),
            config.limits.max_page_size,
        )?;
        let vectors = match &embedder {
            Some(e) => Some(start_vector_index(config, e.dimensions(), &node)?),
            None => None,
        };
        let limits = &config.limits;
        let kv = Arc::new(KvService::new(node.clone(), limits.clone()));
        let semantic = Arc::new(SemanticService::new(
            node.clone(),
            limits.clone(),
            embedder.clone(),
        ));
        let conversations = Arc::new(ConversationService::new(
            node.clone(),
            limits.clone(),
            embedder.clone(),
        ));
        config.search.check().map_err(anyhow::Error::msg)?;
        let recaller = Arc::new(Recaller::new(
            node.clone(),
            index.clone(),
            vectors.clone(),
            embedder,
            limits.clone(),
            &config.search,
        ));
        let secrets = Arc::new(SecretsService::new(node.clone(), master_keys));
        let events = Arc::new(crate::service::events::EventService::new(node.clone()));
        // The workflow service calls tools, and the workflow.start tool calls it: the
        // built-ins get it once it is made.
        let workflow_slot = Arc::new(std::sync::OnceLock::new());
        let tools = Arc::new(ToolService::new(
            node.clone(),
            Builtins {
                node: node.clone(),
                kv: kv.clone(),
                semantic: semantic.clone(),
                conversations: conversations.clone(),
                recaller: recaller.clone(),
                secrets: secrets.clone(),
                events: events.clone(),
                workflows: workflow_slot.clone(),
            },
            crate::service::tools::mcp_client::McpClients::new(
                &config.mcp_client,
                node.store.clone(),
            ),
            crate::service::tools::wasm::Plugins::new(&config.plugins),
        ));
        let schedules =
            crate::service::schedules::ScheduleService::new(node.clone(), tools.clone());
        let workflows =
            crate::service::workflows::WorkflowService::new(node.clone(), tools.clone());
        let _ = workflow_slot.set(workflows.clone());
        let hooks =
            crate::service::hooks::HookService::new(node.clone(), tools.clone(), secrets.clone());
        Ok(Parts {
            events,
            schedules,
            workflows,
            hooks,
            kv,
            semantic,
            conversations,
            recaller,
            secrets,
            iam: Arc::new(IamService::new(node.clone())),
            tools,
            node,
            index,
            vectors,
        })
    }

    /// The public gRPC API: health, reflection (v1 and v1alpha), and every service behind the
    /// authenticator (`api::grpc::handle` refuses a request that did not pass it), with
    /// bounded messages, a deadline per request and bounded streams per connection.
    fn grpc(
        &self,
        config: &Config,
        auth: &Arc<Authenticator>,
        health_service: tonic_health::pb::health_server::HealthServer<
            impl tonic_health::pb::health_server::Health,
        >,
    ) -> anyhow::Result<tonic::transport::server::Router> {
        // Reflection in both versions: v1, and v1alpha, the only one the official Python
        // client (grpcio-reflection), older grpcurl and Postman speak.
        let reflection = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;
        let max = config.limits.max_request_bytes;
        // A reply holds at most a page's byte budget, or one whole item larger than it.
        let reply_max = config
            .limits
            .max_reply_bytes
            .max(config.limits.max_value_bytes)
            .max(config.limits.max_message_bytes)
            + (1 << 20);
        let memory_svc = InterceptedService::new(
            MemoryServiceServer::new(MemoryApi {
                kv: self.kv.clone(),
                semantic: self.semantic.clone(),
                recaller: self.recaller.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(reply_max),
            auth.interceptor(),
        );
        let conversation_svc = InterceptedService::new(
            ConversationServiceServer::new(ConversationApi {
                conversations: self.conversations.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(reply_max),
            auth.interceptor(),
        );
        let search_svc = InterceptedService::new(
            SearchServiceServer::new(SearchApi {
                recaller: self.recaller.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(reply_max),
            auth.interceptor(),
        );
        let cluster_svc = InterceptedService::new(
            ClusterServiceServer::new(ClusterApi {
                node: self.node.clone(),
                index: self.index.clone(),
            }),
            auth.interceptor(),
        );
        let audit_svc = InterceptedService::new(
            AuditServiceServer::new(AuditApi {
                node: self.node.clone(),
                max_page_size: config.limits.max_page_size,
            }),
            auth.interceptor(),
        );
        let secrets_svc = InterceptedService::new(
            SecretsServiceServer::new(SecretsApi {
                secrets: self.secrets.clone(),
            }),
            auth.interceptor(),
        );
        let iam_svc = InterceptedService::new(
            IamServiceServer::new(IamApi {
                iam: self.iam.clone(),
            }),
            auth.interceptor(),
        );
        let tools_svc = InterceptedService::new(
            ToolServiceServer::new(ToolsApi {
                tools: self.tools.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(reply_max),
            auth.interceptor(),
        );
        let schedules_svc = InterceptedService::new(
            ScheduleServiceServer::new(SchedulesApi {
                schedules: self.schedules.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(reply_max),
            auth.interceptor(),
        );
        let events_svc = InterceptedService::new(
            EventServiceServer::new(EventsApi {
                events: self.events.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(reply_max),
            auth.interceptor(),
        );
        let workflows_svc = InterceptedService::new(
            WorkflowServiceServer::new(WorkflowsApi {
                workflows: self.workflows.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(reply_max),
            auth.interceptor(),
        );
        let hooks_svc = InterceptedService::new(
            HookServiceServer::new(HooksApi {
                hooks: self.hooks.clone(),
            })
            .max_decoding_message_size(max)
            .max_encoding_message_size(reply_max),
            auth.interceptor(),
        );
        Ok(tonic::transport::Server::builder()
            .timeout(Duration::from_millis(config.limits.request_timeout_ms))
            .max_concurrent_streams(Some(config.limits.max_concurrent_streams))
            .http2_keepalive_interval(Some(HTTP2_KEEPALIVE))
            .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(memory_svc)
            .add_service(conversation_svc)
            .add_service(search_svc)
            .add_service(cluster_svc)
            .add_service(iam_svc)
            .add_service(secrets_svc)
            .add_service(audit_svc)
            .add_service(tools_svc)
            .add_service(schedules_svc)
            .add_service(events_svc)
            .add_service(workflows_svc)
            .add_service(hooks_svc))
    }
}

/// Runs a node until `shutdown` resolves. The start-up order: refuse an exposed node without
/// TLS; open the data directory; bind every port (a taken port fails fast, before Raft
/// starts); start the Raft group; open the derived indexes and build the services; serve the
/// API, the peer port and HTTP; report healthy once a leader is known. At shutdown: stop
/// listening, stop Raft, the indexers, and sync the WAL.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::observe::metrics::init();
    check_exposure(&config)?;
    let peer_tls = PeerTls::load(&config.peer_tls)?;
    let embedder = crate::embed::from_config(&config.embedding)
        .context("loading the embedding model ([embedding])")?;
    let (store, master_keys) = open_data(&config)?;

    let grpc_listener = bind(config.grpc_addr, "gRPC").await?;
    let peer_listener = bind(config.peer_addr, "the Raft peer port").await?;
    let http_listener = bind(config.http_addr, "HTTP").await?;

    // Group 0 holds the whole state; tenants placed on more groups come next (docs/design.md).
    let groups = Groups::<Nexus>::new(&config, peer_tls.clone());
    let node: Arc<Cluster> = groups.start(&config, store, 0).await?;
    let parts = Parts::assemble(&config, node.clone(), embedder, master_keys)?;
    let auth = Authenticator::from_config(&config.auth, &config.quotas, node.clone())?;
    node.set_forward_gate(auth.clone());
    if auth.enabled() {
        tracing::info!("authentication: on (root key or API keys)");
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    let grpc = parts.grpc(&config, &auth, health_service)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api_tls = api_tls(&config.tls)?;
    let grpc_task = match &api_tls {
        Some(tls) => {
            tracing::info!("gRPC API: TLS");
            tokio::spawn(grpc.serve_with_incoming_shutdown(
                tls.incoming(grpc_listener, None),
                stopped(stop_rx.clone()),
            ))
        }
        None => tokio::spawn(
            grpc.serve_with_incoming_shutdown(incoming(grpc_listener), stopped(stop_rx.clone())),
        ),
    };
    let peer = tonic::transport::Server::builder().add_service(
        RaftServiceServer::new(PeerService::new(groups.clone()))
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
    );
    let peer_task = match &peer_tls {
        Some(tls) => {
            tracing::info!("peer port: mutual TLS");
            tokio::spawn(peer.serve_with_incoming_shutdown(
                tls.server().incoming(
                    peer_listener,
                    Some(crate::cluster::network::member_admission(node.raft.clone())),
                ),
                stopped(stop_rx.clone()),
            ))
        }
        None => tokio::spawn(
            peer.serve_with_incoming_shutdown(incoming(peer_listener), stopped(stop_rx.clone())),
        ),
    };
    let mut mcp_hosts = config.mcp.allowed_hosts.clone();
    mcp_hosts.push(config.http_addr.ip().to_string());
    mcp_hosts.push(config.http_addr.to_string());
    let app = router(HttpState {
        node: node.clone(),
        index: parts.index.clone(),
    })
    .merge(crate::api::mcp::router(
        parts.tools.clone(),
        crate::api::mcp::McpState {
            auth: auth.clone(),
            public_url: config.mcp.public_url.clone(),
        },
        mcp_hosts,
        config.mcp.allowed_origins.clone(),
    ))
    .merge(crate::api::ws::router(crate::api::ws::WsState::new(
        auth.clone(),
        parts.events.clone(),
        parts.tools.clone(),
        config.mcp.allowed_origins.clone(),
    )))
    .merge(crate::api::inbound::router(parts.hooks.clone()));
    let http_bounds = crate::api::http::HttpBounds::from_config(&config.limits);
    // The HTTP port (probes, metrics) over TLS with the API's certificate, never asking for
    // a client certificate (kubelet probes have none).
    let http_task = match api_tls.as_ref().filter(|_| config.tls.http) {
        Some(tls) => {
            let tls = tls.derive("HTTP", false, &[b"http/1.1"])?;
            let listener = crate::tls::AxumTlsListener::new(&tls, http_listener)?;
            tokio::spawn(crate::api::http::serve(
                listener,
                app,
                http_bounds,
                stop_rx.clone(),
            ))
        }
        None => tokio::spawn(crate::api::http::serve(
            http_listener,
            app,
            http_bounds,
            stop_rx.clone(),
        )),
    };

    tracing::info!(grpc = %config.grpc_addr, http = %config.http_addr, peer = %config.peer_addr, "nexus is serving");

    let sweeper = tokio::spawn(ttl_sweeper(
        node.clone(),
        parts.kv.clone(),
        config.auth.enabled,
        stop_rx.clone(),
    ));
    let reembed = tokio::spawn(reembedder(
        node.clone(),
        parts.semantic.clone(),
        parts.conversations.clone(),
        stop_rx.clone(),
    ));
    let scheduler = tokio::spawn(parts.schedules.clone().run(stop_rx.clone()));
    let workflow_driver = tokio::spawn(parts.workflows.clone().drive(stop_rx.clone()));
    let hook_driver = tokio::spawn(parts.hooks.clone().drive(stop_rx.clone()));
    let retention = tokio::spawn(audit_retention(
        node.clone(),
        crate::service::audit_retention::Retention::from_config(&config.audit, &config.data_dir),
        stop_rx.clone(),
    ));
    {
        let node = node.clone();
        tokio::spawn(async move {
            match node.wait_for_leader(LEADER_WAIT).await {
                Ok(leader) => {
                    tracing::info!(leader, "leader known");
                    for name in PUBLIC_SERVICES.iter().chain(&[""]) {
                        health
                            .set_service_status(name, tonic_health::ServingStatus::Serving)
                            .await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no leader yet"),
            }
        });
    }

    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        r = async { tokio::try_join!(grpc_task, peer_task, http_task) } => {
            tracing::error!(result = ?r, "a listener stopped unexpectedly");
        }
    }
    let _ = stop_tx.send(true);
    sweeper.abort();
    reembed.abort();
    // The drivers abort the attempts they run when told to stop (the next leader starts
    // them again).
    let _ = tokio::time::timeout(Duration::from_secs(1), scheduler).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), workflow_driver).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), hook_driver).await;
    retention.abort();
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    parts.index.shutdown();
    if let Some(v) = &parts.vectors {
        v.shutdown();
    }
    node.store
        .db()
        .flush_wal(true)
        .context("syncing the WAL at shutdown")?;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the vector index the configuration names and starts feeding it.
fn start_vector_index(
    config: &Config,
    dimensions: usize,
    node: &Arc<Cluster>,
) -> anyhow::Result<Arc<VectorIndexer>> {
    let index: Arc<dyn VectorIndex> = match config.vector.backend.as_str() {
        "local" => Arc::new(LocalIndex::open(
            &config.data_dir.join("vectors"),
            HnswParams::from_config(dimensions, &config.vector)?,
        )?),
        "qdrant" => Arc::new(QdrantIndex::new(
            &config.vector,
            config.node_id,
            dimensions,
        )?),
        other => anyhow::bail!("vector.backend {other:?}: use local or qdrant"),
    };
    Ok(VectorIndexer::start(
        index,
        node.log_follower(0),
        Duration::from_millis(config.vector.persist_interval_ms),
        Duration::from_millis(config.search.wait_timeout_ms),
    )?)
}

/// On the leader, removes expired memories now and then through Raft (audited when
/// authentication is on, as everything else is).
async fn ttl_sweeper(
    node: Arc<Cluster>,
    kv: Arc<KvService>,
    audited: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TTL_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tick.tick().await;
        if node.status().role != "leader" {
            continue;
        }
        match kv.purge_expired(TTL_SWEEP_BATCH, audited).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "removed expired memories"),
            Err(e) => tracing::debug!(error = %e, "TTL sweep"),
        }
    }
}

/// How many memories one re-embedding pass embeds (then the next pass starts at once).
const REEMBED_BATCH: usize = 512;
/// How long after a pass that found nothing to do the next one looks again (a memory a
/// follower without the model took meanwhile).
const REEMBED_IDLE: Duration = Duration::from_secs(300);

/// On the leader, gives a vector of the current model to every semantic memory stored without
/// one (no model when it was stored) or with another model's, in passes of
/// [`REEMBED_BATCH`], with progress on `/metrics` (`nexus_embedding_backlog`) and in the log.
async fn reembedder(
    node: Arc<Cluster>,
    semantic: Arc<crate::service::semantic::SemanticService>,
    conversations: Arc<ConversationService>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if semantic.embedder().is_none() {
        return;
    }
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if node.status().role != "leader" {
            wait = Duration::from_secs(1);
            continue;
        }
        let pass = async {
            let (m_done, m_left) = semantic.reembed(REEMBED_BATCH).await?;
            let (c_done, c_left) = conversations.reembed(REEMBED_BATCH).await?;
            crate::observe::metrics::EMBEDDING_BACKFILLED.inc_by(m_done + c_done);
            crate::observe::metrics::EMBEDDING_BACKLOG.set((m_left + c_left) as i64);
            Ok::<_, crate::error::NexusError>((m_done + c_done, m_left + c_left))
        };
        match pass.await {
            Ok((done, left)) => {
                if done > 0 {
                    tracing::info!(done, left, "re-embedded memories and messages stored without a vector of the current model");
                }
                // At once while passes make progress; items a pass could not re-embed (gone
                // or changed meanwhile) are looked at again later, not in a loop.
                wait = if left > 0 && done > 0 {
                    Duration::ZERO
                } else {
                    REEMBED_IDLE
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-embedding memories and messages (retried)");
                wait = Duration::from_secs(10);
            }
        }
    }
}

/// On the leader, applies the audit log's retention now and then (`[audit]`).
async fn audit_retention(
    node: Arc<Cluster>,
    retention: crate::service::audit_retention::Retention,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(retention.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tick.tick().await;
        if node.status().role != "leader" {
            continue;
        }
        match retention.run_once(&node, crate::memory::now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "audit retention removed records"),
            Err(e) => tracing::warn!(error = %e, "audit retention (records kept; retried)"),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(config: &Config) -> String {
        match check_exposure(config) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn beyond_loopback_needs_authentication_tls_and_peer_tls() {
        let any: std::net::SocketAddr = "0.0.0.0:7700".parse().unwrap();
        let mut c = Config::default();
        assert_eq!(refusal(&c), "", "the loopback default is fine");

        c.grpc_addr = any;
        assert!(refusal(&c).contains("without authentication"));
        c.auth.enabled = true;
        assert!(refusal(&c).contains("tls.cert_file"), "{}", refusal(&c));
        c.tls.cert_file = Some("api.pem".into());
        assert_eq!(refusal(&c), "");
        c.http_addr = "0.0.0.0:9001".parse().unwrap();
        c.tls.http = false;
        assert!(refusal(&c).contains("serve HTTP"), "{}", refusal(&c));
        c.tls.insecure_plaintext = true;
        assert_eq!(refusal(&c), "", "the explicit opt-out");

        c.peer_addr = "0.0.0.0:7701".parse().unwrap();
        assert!(refusal(&c).contains("peer_tls"), "{}", refusal(&c));
        c.peer_tls.insecure_plaintext = true;
        assert_eq!(refusal(&c), "");
        c.peer_tls.insecure_plaintext = false;
        c.peer_tls.ca_file = Some("ca.pem".into());
        assert_eq!(
            refusal(&c),
            "",
            "peer TLS (its files are checked when loaded)"
        );

        // A loopback peer port that dials members elsewhere in plaintext is refused too.
        let mut c = Config {
            initial_cluster: Some("1=127.0.0.1:7701/127.0.0.1:7700,2=10.1.2.3:7701".into()),
            ..Config::default()
        };
        assert!(
            refusal(&c).contains("member 2=10.1.2.3:7701"),
            "{}",
            refusal(&c)
        );
        c.initial_cluster = Some("1=localhost:7701,2=127.0.0.12:7701,3=[::1]:7701".into());
        assert_eq!(refusal(&c), "");
    }
}
