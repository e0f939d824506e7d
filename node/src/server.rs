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
use nexus_proto::v1::iam_service_server::IamServiceServer;
use nexus_proto::v1::memory_service_server::MemoryServiceServer;
use nexus_proto::v1::search_service_server::SearchServiceServer;
use nexus_proto::v1::secrets_service_server::SecretsServiceServer;
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::api::grpc::{
    AuditApi, ClusterApi, ConversationApi, IamApi, MemoryApi, SearchApi, SecretsApi,
};
use crate::api::http::{router, HttpState};
use crate::auth::{is_loopback, Authenticator};
use crate::cluster::network::{PeerService, PeerTls, MAX_PEER_MESSAGE_BYTES};
use crate::cluster::ClusterNode;
use crate::config::Config;
use crate::iam::service::IamService;
use crate::memory::conversations::ConversationService;
use crate::memory::kv::KvService;
use crate::memory::semantic::SemanticService;
use crate::search::fulltext::FullTextIndex;
use crate::search::recall::Recaller;
use crate::search::vector::local::{HnswParams, LocalIndex};
use crate::search::vector::qdrant::QdrantIndex;
use crate::search::vector::{VectorIndex, VectorIndexer};
use crate::secrets::service::SecretsService;
use crate::secrets::MasterKeys;
use crate::store::{format, Store};

/// How often the leader looks for expired memories.
const TTL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most expired memories removed by one sweep command.
const TTL_SWEEP_BATCH: usize = 1_000;
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

/// Refuses to serve the API beyond loopback without authentication: there every caller would
/// be tenant `default` with full rights.
fn check_exposure(config: &Config) -> anyhow::Result<()> {
    if config.auth.enabled {
        return Ok(());
    }
    // The HTTP port serves only probes and metrics, no tenant data.
    let addr = config.grpc_addr;
    if !is_loopback(&addr) {
        anyhow::bail!(
            "refusing to serve the API on {addr} without authentication: every caller would have full rights. \
             Turn authentication on ([auth] enabled = true, or NEXUS_AUTH__ENABLED=true, with a root key in NEXUS_ROOT_KEY) \
             or listen on loopback (127.0.0.1)"
        );
    }
    Ok(())
}

/// Runs a node until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    crate::observe::metrics::init();
    check_exposure(&config)?;
    let peer_tls = PeerTls::load(&config.peer_tls)?;
    let embedder = crate::embed::from_config(&config.embedding)
        .context("loading the embedding model ([embedding])")?;
    let found = format::prepare(&config.data_dir)?;
    tracing::info!(data_dir = %config.data_dir.display(), format = found, node_id = config.node_id, "opening data directory");
    let store = Store::open(&config.data_dir.join("db")).context("opening RocksDB")?;
    if crate::store::usage::missing(&store)? {
        let tenants = crate::store::usage::recompute(&store)?;
        tracing::info!(
            tenants,
            "computed each tenant's stored items and bytes (kept from now on)"
        );
    }
    let master_keys = Arc::new(
        MasterKeys::load(&config.secrets, &config.data_dir)
            .context("loading the secrets master key ([secrets])")?,
    );
    tracing::info!(
        master_key_id = master_keys.current_id(),
        "secrets master key loaded"
    );

    // Listen before starting Raft so that a taken port fails fast and clearly.
    let grpc_listener = bind(config.grpc_addr, "gRPC").await?;
    let peer_listener = bind(config.peer_addr, "the Raft peer port").await?;
    let http_listener = bind(config.http_addr, "HTTP").await?;

    let node = ClusterNode::start(&config, store, peer_tls.clone()).await?;
    let index = FullTextIndex::open(
        &config.data_dir.join("search"),
        node.clone(),
        config.search.clone(),
        config.limits.max_page_size,
    )?;
    let vectors = match &embedder {
        Some(e) => Some(start_vector_index(&config, e.dimensions(), &node)?),
        None => None,
    };
    let kv = Arc::new(KvService::new(node.clone(), config.limits.clone()));
    let semantic = Arc::new(SemanticService::new(
        node.clone(),
        config.limits.clone(),
        embedder.clone(),
    ));
    let recaller = Arc::new(Recaller::new(
        node.clone(),
        index.clone(),
        vectors.clone(),
        embedder.clone(),
        config.limits.clone(),
        &config.search,
    ));
    let conversations = Arc::new(ConversationService::new(
        node.clone(),
        config.limits.clone(),
        embedder.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(nexus_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let max = config.limits.max_request_bytes;
    let auth = Authenticator::from_config(&config.auth, &config.quotas, node.clone())?;
    if auth.enabled() {
        tracing::info!("authentication: on (root key or API keys)");
    }
    // Every public service is behind the authenticator; `api::grpc::handle` refuses a
    // request that did not pass it.
    let memory_svc = InterceptedService::new(
        MemoryServiceServer::new(MemoryApi {
            kv: kv.clone(),
            semantic,
            recaller: recaller.clone(),
        })
        .max_decoding_message_size(max),
        auth.interceptor(),
    );
    let conversation_svc = InterceptedService::new(
        ConversationServiceServer::new(ConversationApi { conversations })
            .max_decoding_message_size(max),
        auth.interceptor(),
    );
    let search_svc = InterceptedService::new(
        SearchServiceServer::new(SearchApi { recaller }).max_decoding_message_size(max),
        auth.interceptor(),
    );
    let cluster_svc = InterceptedService::new(
        ClusterServiceServer::new(ClusterApi {
            node: node.clone(),
            index: index.clone(),
        }),
        auth.interceptor(),
    );
    let audit_svc = InterceptedService::new(
        AuditServiceServer::new(AuditApi {
            node: node.clone(),
            max_page_size: config.limits.max_page_size,
        }),
        auth.interceptor(),
    );
    let secrets_svc = InterceptedService::new(
        SecretsServiceServer::new(SecretsApi {
            secrets: Arc::new(SecretsService::new(node.clone(), master_keys)),
        }),
        auth.interceptor(),
    );
    let iam_svc = InterceptedService::new(
        IamServiceServer::new(IamApi {
            iam: Arc::new(IamService::new(node.clone())),
        }),
        auth.interceptor(),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let api_tls = api_tls(&config.tls)?;
    let grpc = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(memory_svc)
        .add_service(conversation_svc)
        .add_service(search_svc)
        .add_service(cluster_svc)
        .add_service(iam_svc)
        .add_service(secrets_svc)
        .add_service(audit_svc);
    let grpc_task = match &api_tls {
        Some(tls) => {
            tracing::info!("gRPC API: TLS");
            tokio::spawn(grpc.serve_with_incoming_shutdown(
                tls.incoming(grpc_listener),
                stopped(stop_rx.clone()),
            ))
        }
        None => tokio::spawn(
            grpc.serve_with_incoming_shutdown(incoming(grpc_listener), stopped(stop_rx.clone())),
        ),
    };
    let peer = tonic::transport::Server::builder().add_service(
        RaftServiceServer::new(PeerService::new(node.clone()))
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES),
    );
    let peer_task = match &peer_tls {
        Some(tls) => {
            tracing::info!("peer port: mutual TLS");
            tokio::spawn(peer.serve_with_incoming_shutdown(
                tls.server().incoming(peer_listener),
                stopped(stop_rx.clone()),
            ))
        }
        None => tokio::spawn(
            peer.serve_with_incoming_shutdown(incoming(peer_listener), stopped(stop_rx.clone())),
        ),
    };
    let app = router(HttpState {
        node: node.clone(),
        index: index.clone(),
    });
    // The HTTP port (probes, metrics) over TLS with the API's certificate, never asking for
    // a client certificate (kubelet probes have none).
    let http_task = match api_tls.as_ref().filter(|_| config.tls.http) {
        Some(tls) => {
            let tls = tls.derive("HTTP", false, &[b"http/1.1"])?;
            let listener = crate::tls::AxumTlsListener::new(&tls, http_listener)?;
            let http = axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
            tokio::spawn(async move { http.await })
        }
        None => {
            let http =
                axum::serve(http_listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
            tokio::spawn(async move { http.await })
        }
    };

    tracing::info!(grpc = %config.grpc_addr, http = %config.http_addr, peer = %config.peer_addr, "nexus is serving");

    let sweeper = tokio::spawn(ttl_sweeper(node.clone(), kv, stop_rx.clone()));
    {
        let node = node.clone();
        tokio::spawn(async move {
            match node.wait_for_leader(LEADER_WAIT).await {
                Ok(leader) => {
                    tracing::info!(leader, "leader known");
                    for name in [
                        "nexus.v1.MemoryService",
                        "nexus.v1.ConversationService",
                        "nexus.v1.SearchService",
                        "nexus.v1.ClusterService",
                        "nexus.v1.IamService",
                        "nexus.v1.SecretsService",
                        "nexus.v1.AuditService",
                        "",
                    ] {
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
    if let Err(e) = node.raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    index.shutdown();
    if let Some(v) = &vectors {
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
    node: &Arc<ClusterNode>,
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
        node.store.clone(),
        node.applied(),
        Duration::from_millis(config.vector.persist_interval_ms),
        Duration::from_millis(config.search.wait_timeout_ms),
    )?)
}

/// On the leader, removes expired memories now and then through Raft.
async fn ttl_sweeper(
    node: Arc<ClusterNode>,
    kv: Arc<KvService>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(TTL_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tick.tick().await;
        if node.status().role != "leader" {
            continue;
        }
        match kv.purge_expired(TTL_SWEEP_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "removed expired memories"),
            Err(e) => tracing::debug!(error = %e, "TTL sweep"),
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
