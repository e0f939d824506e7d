//! The HTTP port: liveness (`/healthz`), readiness (`/readyz`) and Prometheus metrics
//! (`/metrics`).

use std::sync::Arc;

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
