//! The Rust SDK for Nexus: typed gRPC clients for every public service on one connection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nexus_client::ClientError> {
//! // With authentication on: Client::connect_with_token(endpoint, Some(api_key)).
//! let mut nexus = nexus_client::Client::connect("http://127.0.0.1:7700").await?;
//! let put = nexus.memory.put(nexus_client::pb::PutRequest {
//!     namespace: "notes".into(), key: "greeting".into(), value: "\"hello\"".into(),
//!     ..Default::default()
//! }).await?;
//! # Ok(()) }
//! ```

pub mod output;
pub mod recall_eval;
pub mod report;
pub mod secrets_cli;
pub mod tools_cli;

use std::time::Duration;

pub use nexus_proto::v1 as pb;
use pb::audit_service_client::AuditServiceClient;
use pb::cluster_service_client::ClusterServiceClient;
use pb::conversation_service_client::ConversationServiceClient;
use pb::event_service_client::EventServiceClient;
use pb::hook_service_client::HookServiceClient;
use pb::iam_service_client::IamServiceClient;
use pb::memory_service_client::MemoryServiceClient;
use pb::schedule_service_client::ScheduleServiceClient;
use pb::search_service_client::SearchServiceClient;
use pb::secrets_service_client::SecretsServiceClient;
use pb::tool_service_client::ToolServiceClient;
use pb::workflow_service_client::WorkflowServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
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
    #[error("the token cannot be sent in a header: {0}")]
    Token(String),
    #[error(transparent)]
    Status(#[from] tonic::Status),
    /// Reading what a command sends (a file, standard input) or writing what it prints.
    #[error("{0}")]
    Input(String),
}

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Clone, Default)]
pub struct Credentials {
    bearer: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    pub fn bearer(token: Option<&str>) -> Result<Self, ClientError> {
        let bearer = token
            .filter(|t| !t.is_empty())
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::Token("it holds characters a header cannot".into()))
            })
            .transpose()?;
        Ok(Credentials { bearer })
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(b) = &self.bearer {
            request.metadata_mut().insert("authorization", b.clone());
        }
        Ok(request)
    }
}

/// The connection every service client of [`Client`] uses: a channel with credentials.
pub type Transport = InterceptedService<Channel, Credentials>;

/// One connection to a node, with a client per service. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    pub memory: MemoryServiceClient<Transport>,
    pub conversations: ConversationServiceClient<Transport>,
    pub search: SearchServiceClient<Transport>,
    pub cluster: ClusterServiceClient<Transport>,
    pub iam: IamServiceClient<Transport>,
    pub secrets: SecretsServiceClient<Transport>,
    pub audit: AuditServiceClient<Transport>,
    pub tools: ToolServiceClient<Transport>,
    pub schedules: ScheduleServiceClient<Transport>,
    pub events: EventServiceClient<Transport>,
    pub workflows: WorkflowServiceClient<Transport>,
    pub hooks: HookServiceClient<Transport>,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`; a bare `host:port` is accepted too),
    /// without credentials (a node without authentication).
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with_token(endpoint, None).await
    }

    /// Connects and sends `token` (an API key or the root key) with every request.
    pub async fn connect_with_token(
        endpoint: &str,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, token, None).await
    }

    /// Connects over TLS when `tls` is given (an `https://` endpoint whose CA it trusts),
    /// sending `token` with every request.
    pub async fn connect_with(
        endpoint: &str,
        token: Option<&str>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, ClientError> {
        let credentials = Credentials::bearer(token)?;
        let uri = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let mut ep = Endpoint::from_shared(uri).map_err(|e| ClientError::Endpoint {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
        if let Some(tls) = tls {
            ep = ep.tls_config(tls).map_err(|e| ClientError::Endpoint {
                endpoint: endpoint.to_string(),
                message: format!("TLS: {e}"),
            })?;
        }
        let channel = ep
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Ok(Self::from_channel(channel, credentials))
    }

    pub fn from_channel(channel: Channel, credentials: Credentials) -> Self {
        let t = InterceptedService::new(channel, credentials);
        Self {
            memory: MemoryServiceClient::new(t.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            conversations: ConversationServiceClient::new(t.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            search: SearchServiceClient::new(t.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            cluster: ClusterServiceClient::new(t.clone()),
            iam: IamServiceClient::new(t.clone()),
            secrets: SecretsServiceClient::new(t.clone()),
            audit: AuditServiceClient::new(t.clone()),
            tools: ToolServiceClient::new(t.clone()),
            schedules: ScheduleServiceClient::new(t.clone()),
            workflows: WorkflowServiceClient::new(t.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            hooks: HookServiceClient::new(t.clone()),
            events: EventServiceClient::new(t).max_decoding_message_size(MAX_RESPONSE_BYTES),
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
        ClientError::Endpoint { .. } | ClientError::Token(_) | ClientError::Input(_) => false,
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
