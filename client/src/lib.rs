//! The Rust SDK for Nexus: typed gRPC clients for every public service on one connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nexus_client::ClientError> {
//! let mut nexus = nexus_client::Client::connect("http://127.0.0.1:7700").await?;
//! let put = nexus.memory.put(nexus_client::pb::PutRequest {
//!     namespace: "notes".into(), key: "greeting".into(), value: "\"hello\"".into(),
//!     ..Default::default()
//! }).await?;
//! # Ok(()) }
//! ```

pub mod recall_eval;
pub mod report;

use std::time::Duration;

pub use nexus_proto::v1 as pb;
use pb::cluster_service_client::ClusterServiceClient;
use pb::conversation_service_client::ConversationServiceClient;
use pb::memory_service_client::MemoryServiceClient;
use pb::search_service_client::SearchServiceClient;
use tonic::transport::{Channel, Endpoint};

/// The endpoint used when none is given.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7700";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest reply accepted (a page of 1,000 memories of up to 1 MiB each is far larger; pages
/// of big values should be smaller).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("cannot connect to {endpoint}: {source} (is nexus running there? start it with `nexus serve`)")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Status(#[from] tonic::Status),
}

/// One connection to a node, with a client per service. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub memory: MemoryServiceClient<Channel>,
    pub conversations: ConversationServiceClient<Channel>,
    pub search: SearchServiceClient<Channel>,
    pub cluster: ClusterServiceClient<Channel>,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`; a bare `host:port` is accepted too).
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| ClientError::Endpoint {
                endpoint: endpoint.to_string(),
                message: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Ok(Self::from_channel(channel))
    }

    pub fn from_channel(channel: Channel) -> Self {
        Self {
            memory: MemoryServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            conversations: ConversationServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            search: SearchServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            cluster: ClusterServiceClient::new(channel),
        }
    }
}

/// Splits a comma-separated endpoint list (`NEXUS_ENDPOINT=http://a:7700,http://b:7700`).
pub fn split_endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

/// Whether a failed request may be sent again to another node. A request that never reached
/// a server may always be retried; one that got `UNAVAILABLE` only when it is idempotent (a
/// read), because a write may have been committed before the answer was lost.
pub fn is_retryable(e: &ClientError, idempotent: bool) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Status(s) => idempotent && s.code() == tonic::Code::Unavailable,
        ClientError::Endpoint { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_and_retry_rules() {
        assert_eq!(
            split_endpoints(" http://a:1, b:2 ,,"),
            vec!["http://a:1".to_string(), "b:2".to_string()]
        );
        let unavailable = ClientError::Status(tonic::Status::unavailable("no leader"));
        assert!(is_retryable(&unavailable, true));
        assert!(
            !is_retryable(&unavailable, false),
            "a write may have been committed"
        );
        let invalid = ClientError::Status(tonic::Status::invalid_argument("key"));
        assert!(!is_retryable(&invalid, true));
    }
}
