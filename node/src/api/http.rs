//! The HTTP port: liveness (`/healthz`), readiness (`/readyz`) and Prometheus metrics
//! (`/metrics`), served within bounds ([`serve`]): a header-read deadline (slow or idle
//! connections are closed), a deadline per request, and a cap on connections.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};

use crate::command::Cluster;
use crate::observe::metrics;
use crate::search::fulltext::FullTextIndex;

#[derive(Clone)]
pub struct HttpState {
    pub node: Arc<Cluster>,
    pub index: Arc<FullTextIndex>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

/// Ready when a leader is known and this node has applied what it knows is committed.
async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let status = s.node.status();
    let ready = s.node.is_ready();
    let body = serde_json::json!({
        "ready": ready,
        "role": status.role,
        "leader_id": status.leader_id,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "search_index_watermark": s.index.watermark(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn metrics_text(State(s): State<HttpState>) -> impl IntoResponse {
    let st = s.node.status();
    metrics::RAFT_TERM.set(st.term as i64);
    metrics::RAFT_IS_LEADER.set(i64::from(st.role == "leader"));
    metrics::RAFT_COMMIT_INDEX.set(st.commit_index as i64);
    metrics::RAFT_APPLIED_INDEX.set(st.applied_index as i64);
    metrics::RAFT_LAST_LOG_INDEX.set(st.last_log_index as i64);
    metrics::RAFT_SNAPSHOT_INDEX.set(st.snapshot_index as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(),
    )
}

/// How the HTTP port bounds what a client can hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpBounds {
    /// A request's headers must arrive within this long; an idle keep-alive connection is
    /// closed after it.
    pub header_read: Duration,
    /// A request is answered within this long (503 past it).
    pub request: Duration,
    /// Connections held at once; one more is closed on accept.
    pub max_connections: usize,
}

impl HttpBounds {
    pub fn from_config(limits: &crate::config::Limits) -> Self {
        HttpBounds {
            header_read: Duration::from_millis(limits.http_header_timeout_ms.max(1)),
            request: Duration::from_millis(limits.request_timeout_ms.max(1)),
            max_connections: limits.http_max_connections.max(1),
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true, then lets open requests finish.
/// `axum::serve` sets no timer on hyper's connections, so hyper's header-read deadline never
/// fires there and a client that sends half a request holds its connection forever: this
/// loop is the same one with the deadline, a per-request deadline and a connection cap.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    bounds: HttpBounds,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
    L::Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use axum::response::Response;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let app = app.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(bounds.request, next.run(request)).await {
                Ok(response) => response,
                Err(_) => {
                    metrics::SHED.with_label_values(&["http_timeout"]).inc();
                    let mut response: Response =
                        (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response();
                    response.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                    response
                }
            }
        },
    ));
    let permits = Arc::new(tokio::sync::Semaphore::new(bounds.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::SHED.with_label_values(&["http_connection"]).inc();
            drop(io);
            continue;
        };
        // The client's address, for handlers that count refusals by source (`/mcp`).
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                request
            },
        ));
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(bounds.header_read);
            // With upgrades: `/ws` (an upgraded connection leaves this loop's count; `api::ws`
            // bounds its sessions itself).
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(conn);
            let stopping = async move {
                // The guard `wait_for` returns is not Send: drop it before the next await.
                let _ = stop.wait_for(|s| *s).await.map(|_| ());
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stopping => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        // Reap finished connections so the set does not grow with every one served.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}
