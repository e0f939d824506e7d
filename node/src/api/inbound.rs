//! Inbound webhooks: `POST /hooks/TENANT/NAME` on the HTTP port. Not behind the
//! authenticator: the request proves itself with its signature (`Nexus-Signature`, or
//! GitHub's `X-Hub-Signature-256`), checked against the value of the tenant's secret the
//! endpoint names (`service::hooks::HookService::receive`). A signed body (JSON, at most
//! 16 KiB) is published as an event on the endpoint's topic: 202 with `{"seq": N}`. 404 for
//! an endpoint or tenant that does not exist (the same answer for both), 401 for a missing,
//! stale or wrong signature, 400 for a body that is not JSON, 413 for one too large.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};

use crate::error::NexusError;
use crate::service::hooks::{HookService, Signature};

pub fn router(hooks: Arc<HookService>) -> Router {
    Router::new()
        .route("/hooks/{tenant}/{name}", post(receive))
        .layer(DefaultBodyLimit::max(crate::events::MAX_DATA_BYTES))
        .with_state(hooks)
}

async fn receive(
    State(hooks): State<Arc<HookService>>,
    Path((tenant, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let signature = Signature {
        nexus: header("nexus-signature"),
        hub: header("x-hub-signature-256"),
    };
    match hooks.receive(&tenant, &name, signature, &body).await {
        Ok(seq) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "seq": seq })),
        ),
        Err(e) => {
            let code = match &e {
                NexusError::NotFound(_) => StatusCode::NOT_FOUND,
                NexusError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                NexusError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
                NexusError::ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            (code, Json(serde_json::json!({ "error": e.to_string() })))
        }
    }
}
