//! The MCP server (Model Context Protocol), on rmcp: every tool a caller may call, listed and
//! called as MCP tools.
//!
//! - Streamable HTTP at `/mcp` on the node's HTTP port ([`router`]): stateless (the
//!   2026-07-28 revision, `server/discover`; older clients' `initialize` handshake works too,
//!   each request served on its own, so any node of a cluster can answer). With
//!   authentication on, a request needs a bearer token (an API key, the root key or an OIDC
//!   JWT) checked by the same `Authenticator` as gRPC: without a valid one the answer is 401
//!   with `WWW-Authenticate: Bearer resource_metadata=...`, pointing at the protected-resource
//!   metadata (`/.well-known/oauth-protected-resource`, RFC 9728). Host and Origin headers are
//!   checked against `[mcp] allowed_hosts` / `allowed_origins` (DNS rebinding).
//! - stdio, `nexus mcp` ([`serve_stdio`]): a bridge to a node's gRPC `ToolService` with the
//!   caller's token, for clients that start their servers as processes (Claude Desktop,
//!   Claude Code, Cursor).
//!
//! A call goes through the same runner as gRPC (`service::tools`): `tools:call:NAME`, the
//! schema, secrets, audit and statistics alike. Resources are memories
//! (`nexus://memory/NAMESPACE/KEY`) and conversations (`nexus://conversation/ID`), offered
//! as URI templates and read through the same runner with `memory.get` and
//! `conversation.history`, so a read is authorized and audited as those calls are. An unknown tool is a JSON-RPC error
//! (-32602); a tool that fails (bad arguments included) is a result with `isError`, its
//! message visible to the model.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Extensions,
    Implementation, InitializeRequestParams, InitializeResult, JsonObject,
    ListResourceTemplatesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ResourceContents,
    ResourceTemplate, ServerCapabilities, ServerConfig, SubscriptionFilter, Tool,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use crate::auth::Authenticator;
use crate::error::NexusError;
use crate::service::tools::{Reporter, ToolService};
use crate::service::Caller;
use crate::tools::ToolRecord;

/// What the MCP server lists and calls: the node's own runner (HTTP), or a node's gRPC API
/// (stdio).
#[tonic::async_trait]
pub trait Tools: Send + Sync + 'static {
    async fn list(&self, ctx: &RequestContext<RoleServer>) -> Result<Vec<ToolRecord>, NexusError>;
    async fn call(
        &self,
        ctx: &RequestContext<RoleServer>,
        name: &str,
        args: &str,
    ) -> Result<Value, NexusError>;
    /// A notice each time the caller's tools may have changed; the watch ends when the
    /// receiver is dropped. `extensions` are the request's (or the notification's).
    async fn watch(&self, extensions: &Extensions) -> Result<mpsc::Receiver<()>, NexusError>;
    /// Whether a connection is one session that outlives its requests (stdio): a client of
    /// the handshake era (`initialize`) is then told of changes on it without asking.
    fn sessions(&self) -> bool;
}

/// The MCP face of a [`Tools`].
#[derive(Clone)]
pub struct NexusMcp {
    tools: Arc<dyn Tools>,
}

impl NexusMcp {
    pub fn new(tools: Arc<dyn Tools>) -> Self {
        NexusMcp { tools }
    }
}

fn schema_object(text: &str) -> JsonObject {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map,
        _ => {
            let mut map = JsonObject::new();
            map.insert("type".into(), Value::String("object".into()));
            map
        }
    }
}

fn mcp_tool(r: &ToolRecord) -> Tool {
    let mut tool = Tool::new(
        r.name.clone(),
        r.description.clone(),
        Arc::new(schema_object(&r.input_schema)),
    );
    let output = schema_object(&r.output_schema);
    // MCP wants an object schema for structured output; `{}` says nothing, so none.
    if output.get("type").and_then(Value::as_str) == Some("object") {
        tool.output_schema = Some(Arc::new(output));
    }
    tool
}

/// The resource templates: a memory, a conversation.
fn resource_templates() -> Vec<rmcp::model::ResourceTemplate> {
    vec![
        ResourceTemplate::new("nexus://memory/{namespace}/{key}", "memory")
            .with_title("A memory")
            .with_description("A memory of the tenant: its JSON value, version and times")
            .with_mime_type("application/json"),
        ResourceTemplate::new("nexus://conversation/{conversation_id}", "conversation")
            .with_title("A conversation")
            .with_description("A conversation's messages, oldest first (the first 100)")
            .with_mime_type("application/json"),
    ]
}

/// The tool call that reads resource `uri`: (tool, arguments).
fn resource_call(uri: &str) -> Option<(&'static str, Value)> {
    let decode = |s: &str| -> Option<String> {
        let text = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
        // A `%` not followed by two hex digits is taken as itself by the decoder: not here.
        let malformed = s.match_indices('%').any(|(i, _)| {
            !s.get(i + 1..i + 3)
                .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
        });
        (!text.is_empty() && !malformed).then(|| text.into_owned())
    };
    if let Some(rest) = uri.strip_prefix("nexus://memory/") {
        let (namespace, key) = rest.split_once('/')?;
        return Some((
            "memory.get",
            serde_json::json!({"namespace": decode(namespace)?, "key": decode(key)?}),
        ));
    }
    let id = uri.strip_prefix("nexus://conversation/")?;
    if id.contains('/') {
        return None;
    }
    Some((
        "conversation.history",
        serde_json::json!({"conversation_id": decode(id)?, "page_size": 100}),
    ))
}

fn protocol_error(e: NexusError) -> McpError {
    match e {
        NexusError::Unauthenticated(m) | NexusError::PermissionDenied(m) => {
            McpError::invalid_request(m, None)
        }
        other => McpError::internal_error(other.to_string(), None),
    }
}

impl ServerHandler for NexusMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("nexus", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Nexus: memory, conversations, search and tools for agents. memory.remember and \
                 memory.recall keep and find facts by meaning; memory.put/get keep JSON by key.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = self.tools.list(&ctx).await.map_err(protocol_error)?;
        Ok(ListToolsResult::with_all_items(
            tools.iter().map(mcp_tool).collect(),
        ))
    }

    /// `subscriptions/listen` (2026-07-28): tools' list changes, on any transport (over
    /// stateless HTTP the listen request's response is the stream).
    fn accepted_subscription_filter(
        &self,
        _requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    async fn listen(&self, subscription: SubscriptionContext) -> Result<(), McpError> {
        if subscription.accepted().tools_list_changed != Some(true) {
            subscription.cancelled().await;
            return Ok(());
        }
        let mut changes = self
            .tools
            .watch(&subscription.request_context().extensions)
            .await
            .map_err(protocol_error)?;
        loop {
            tokio::select! {
                _ = subscription.cancelled() => return Ok(()),
                changed = changes.recv() => {
                    if changed.is_none() {
                        // The node's watch ended (it is stopping): close gracefully.
                        return Ok(());
                    }
                    if subscription.sink().notify_tool_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A client of the handshake era on a session (stdio) is told of list changes on it
    /// until the session closes; the watch is open before the handshake's answer goes out.
    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        context.peer.set_peer_info(request.clone());
        let result = self.negotiate_initialize(&request)?;
        if self.tools.sessions() {
            match self.tools.watch(&context.extensions).await {
                Ok(mut changes) => {
                    let peer = context.peer;
                    tokio::spawn(async move {
                        while changes.recv().await.is_some() {
                            if peer.is_transport_closed()
                                || peer.notify_tool_list_changed().await.is_err()
                            {
                                return;
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "watching tool changes for an MCP session"),
            }
        }
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(
            resource_templates(),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri;
        let Some((tool, args)) = resource_call(&uri) else {
            return Err(McpError::invalid_params(
                format!(
                    "{uri:?} is not a Nexus resource: nexus://memory/NAMESPACE/KEY or nexus://conversation/ID"
                ),
                None,
            ));
        };
        match self.tools.call(&ctx, tool, &args.to_string()).await {
            Ok(found) => Ok(ReadResourceResult::new(vec![ResourceContents::text(
                found.to_string(),
                uri,
            )
            .with_mime_type("application/json")])
            .into()),
            Err(NexusError::NotFound(m)) => Err(McpError::resource_not_found(
                m,
                Some(serde_json::json!({"uri": uri})),
            )),
            Err(NexusError::InvalidArgument { field, message }) => Err(McpError::invalid_params(
                format!("{uri}: {field}: {message}"),
                None,
            )),
            Err(e) => Err(protocol_error(e)),
        }
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = Value::Object(request.arguments.unwrap_or_default()).to_string();
        match self.tools.call(&ctx, &request.name, &args).await {
            Ok(output) => {
                let mut result =
                    CallToolResult::success(vec![ContentBlock::text(output.to_string())]);
                result.structured_content = Some(output);
                Ok(result.into())
            }
            // Not a tool of this server: the protocol's error, as the specification says.
            Err(NexusError::NotFound(m)) if m.starts_with("tool ") => {
                Err(McpError::invalid_params(m, None))
            }
            Err(NexusError::Unauthenticated(m)) => Err(McpError::invalid_request(m, None)),
            // The tool ran (or refused its arguments): the model sees why.
            Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "{:?}: {e}",
                crate::error::code_of(&e)
            ))])
            .into()),
        }
    }
}

/// The node's own runner, for `/mcp`: the caller is what the authentication layer put into
/// the HTTP request ([`authenticate`]).
pub struct LocalTools {
    pub tools: Arc<ToolService>,
    pub auth: Arc<Authenticator>,
}

fn parts_of(extensions: &Extensions) -> Option<&axum::http::request::Parts> {
    extensions.get::<axum::http::request::Parts>()
}

fn caller_of(extensions: &Extensions) -> Result<Caller, NexusError> {
    parts_of(extensions)
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| NexusError::Unauthenticated("the request was not authenticated".into()))
}

#[tonic::async_trait]
impl Tools for LocalTools {
    async fn list(&self, ctx: &RequestContext<RoleServer>) -> Result<Vec<ToolRecord>, NexusError> {
        let caller = caller_of(&ctx.extensions)?;
        self.tools.list(&caller).await
    }

    async fn watch(&self, extensions: &Extensions) -> Result<mpsc::Receiver<()>, NexusError> {
        let caller = caller_of(extensions)?;
        self.tools.watch(&caller.tenant)
    }

    fn sessions(&self) -> bool {
        // Stateless: each request on its own, so there is no session to tell.
        false
    }

    async fn call(
        &self,
        ctx: &RequestContext<RoleServer>,
        name: &str,
        args: &str,
    ) -> Result<Value, NexusError> {
        let caller = caller_of(&ctx.extensions)?;
        // The one check every call passes, over gRPC and MCP alike; a refusal is counted with
        // the gate's (one audit record per group and window).
        if let Err(e) = crate::iam::rbac::authorize("tools.call", name, &caller.principal) {
            let source = parts_of(&ctx.extensions)
                .and_then(|p| p.extensions.get::<Source>())
                .and_then(|s| s.0);
            let credential = caller.on_behalf.as_ref().and_then(|b| b.credential.clone());
            return Err(super::gate::refuse(
                &self.auth,
                &caller.principal.subject,
                &caller.tenant,
                source,
                "tools.call",
                e,
                credential,
            )
            .await);
        }
        Ok(self
            .tools
            .call(&caller, name, args, Reporter::default())
            .await?
            .output)
    }
}

/// What `/mcp` needs: the runner, the authenticator and the advertised resource URL.
#[derive(Clone)]
pub struct McpState {
    pub auth: Arc<Authenticator>,
    /// The resource's URL as clients reach it (`[mcp] public_url`, else from the Host).
    pub public_url: String,
}

/// The protected-resource metadata (RFC 9728) of `/mcp`: which authorization servers issue
/// tokens for it (the OIDC issuers configured; API keys need none).
async fn resource_metadata(State(s): State<McpState>, headers: HeaderMap) -> impl IntoResponse {
    let resource = resource_url(&s, &headers);
    axum::Json(serde_json::json!({
        "resource": resource,
        "authorization_servers": s.auth.oidc_issuers(),
        "bearer_methods_supported": ["header"],
        "resource_documentation": "https://github.com/nexus/nexus#use-nexus-from-claude-code-cursor-and-any-mcp-client",
    }))
}

fn resource_url(s: &McpState, headers: &HeaderMap) -> String {
    if !s.public_url.is_empty() {
        return s.public_url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/mcp")
}

/// Where a `/mcp` request came from, kept beside its [`Caller`] for refusals found later (a
/// tool the caller may not call).
#[derive(Clone, Copy)]
struct Source(Option<std::net::IpAddr>);

/// Admits a `/mcp` request through the same gate as gRPC (`api::gate`: authentication, the
/// tenant's rate, refusals counted and slowed) and hands the handler its [`Caller`] (in the
/// request's extensions); 401 with `WWW-Authenticate` without a valid credential.
async fn authenticate(
    State(s): State<McpState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers().clone();
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let request_id = uuid::Uuid::now_v7().to_string();
    let admitted = super::gate::admit(super::gate::Knock {
        auth: Some(&s.auth),
        metadata: &metadata,
        source,
        method: "mcp",
        target: "",
        request_id: &request_id,
    })
    .await;
    let caller = match admitted {
        Ok(caller) => caller,
        Err(e @ NexusError::Unauthenticated(_)) => {
            let metadata_url = resource_url(&s, &headers)
                .trim_end_matches("/mcp")
                .to_string()
                + "/.well-known/oauth-protected-resource";
            let challenge = format!(
                "Bearer resource_metadata=\"{metadata_url}\", error=\"invalid_token\", error_description=\"{}\"",
                crate::error::excerpt(&e.to_string(), 120).replace('"', "'")
            );
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                "a bearer token is required (an API key, or a JWT of a configured OIDC issuer)\n",
            )
                .into_response();
        }
        Err(e) => {
            let status = match &e {
                NexusError::ResourceExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
                NexusError::PermissionDenied(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            return (status, format!("{e}\n")).into_response();
        }
    };
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(Source(source));
    next.run(request).await
}

/// `/mcp` (streamable HTTP, stateless) and the protected-resource metadata, for the HTTP
/// port's router.
pub fn router(
    tools: Arc<ToolService>,
    state: McpState,
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
) -> axum::Router {
    use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    let handler = NexusMcp::new(Arc::new(LocalTools {
        tools,
        auth: state.auth.clone(),
    }));
    let mut config = StreamableHttpServerConfig::default().with_allowed_hosts(allowed_hosts);
    if !allowed_origins.is_empty() {
        config = config.with_allowed_origins(allowed_origins);
    }
    config.legacy_session_mode = false;
    config.json_response = true;
    let service = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let mcp = axum::Router::new().nest_service("/mcp", service).layer(
        axum::middleware::from_fn_with_state(state.clone(), authenticate),
    );
    axum::Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            axum::routing::get(resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            axum::routing::get(resource_metadata),
        )
        .with_state(state)
        .merge(mcp)
}

/// A node's tools over its gRPC API, for `nexus mcp` on stdio (the client is a cheap clone
/// per call: one connection, many calls at once).
pub struct RemoteTools {
    client: nexus_client::Client,
    /// The node's notices that the caller's tools changed, from one `WatchTools` stream per
    /// process ([`RemoteTools::connect`]), fanned out to each session and subscription.
    changes: broadcast::Sender<()>,
}

impl RemoteTools {
    /// The node's tools through `client`, with the watch of their changes open (or being
    /// opened again, when the node cannot be reached now) before the first session starts.
    pub async fn connect(client: nexus_client::Client) -> Self {
        let (changes, _) = broadcast::channel(16);
        let (opened_tx, opened) = tokio::sync::oneshot::channel();
        tokio::spawn(follow_changes(client.clone(), changes.clone(), opened_tx));
        // Not forever: without the node, calls fail and say why, and the watch keeps trying.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), opened).await;
        RemoteTools { client, changes }
    }
}

/// Follows the node's `WatchTools` stream into `changes`, opening it again (after a second)
/// when it ends; a stream opened again is a change in itself (what happened meanwhile was
/// not seen).
async fn follow_changes(
    client: nexus_client::Client,
    changes: broadcast::Sender<()>,
    opened: tokio::sync::oneshot::Sender<()>,
) {
    let mut opened = Some(opened);
    loop {
        let mut c = client.clone();
        match c
            .tools
            .watch_tools(nexus_client::pb::WatchToolsRequest {})
            .await
        {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                match opened.take() {
                    Some(first) => {
                        let _ = first.send(());
                    }
                    None => {
                        let _ = changes.send(());
                    }
                }
                while let Ok(Some(m)) = stream.message().await {
                    if !m.opened {
                        let _ = changes.send(());
                    }
                }
            }
            // Not to be mended by trying again (the token is refused): no watch, and calls
            // say why.
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                tracing::warn!(error = %e, "watching the node's tool changes");
                return;
            }
            Err(e) => tracing::debug!(error = %e, "watching the node's tool changes"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn from_status(s: tonic::Status) -> NexusError {
    use tonic::Code;
    let m = s.message().to_string();
    match s.code() {
        Code::NotFound => NexusError::NotFound(m),
        // The node said `invalid FIELD: MESSAGE`: the same again, not wrapped twice.
        Code::InvalidArgument => match m
            .strip_prefix("invalid ")
            .and_then(|rest| rest.split_once(": "))
        {
            Some((field, message)) => NexusError::invalid(field, message),
            None => NexusError::invalid("args", m),
        },
        Code::PermissionDenied => NexusError::PermissionDenied(m),
        Code::Unauthenticated => NexusError::Unauthenticated(m),
        Code::FailedPrecondition => NexusError::precondition("tool", m),
        Code::Unavailable | Code::DeadlineExceeded => NexusError::unavailable(m),
        _ => NexusError::Internal(m),
    }
}

#[tonic::async_trait]
impl Tools for RemoteTools {
    async fn list(&self, _: &RequestContext<RoleServer>) -> Result<Vec<ToolRecord>, NexusError> {
        let mut c = self.client.clone();
        let tools = c
            .tools
            .list_tools(nexus_client::pb::ListToolsRequest {})
            .await
            .map_err(from_status)?
            .into_inner()
            .tools;
        Ok(tools
            .into_iter()
            .map(|t| ToolRecord {
                name: t.name,
                version: t.version,
                description: t.description,
                input_schema: t.input_schema,
                output_schema: t.output_schema,
                kind: crate::tools::ToolKind::parse(&t.kind)
                    .unwrap_or(crate::tools::ToolKind::Composite),
                config: t.config,
                created_at_ms: t.created_at_ms,
                updated_at_ms: t.updated_at_ms,
            })
            .collect())
    }

    async fn watch(&self, _: &Extensions) -> Result<mpsc::Receiver<()>, NexusError> {
        let mut changes = self.changes.subscribe();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    next = changes.recv() => match next {
                        Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(()) {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(rx)
    }

    fn sessions(&self) -> bool {
        true
    }

    async fn call(
        &self,
        _: &RequestContext<RoleServer>,
        name: &str,
        args: &str,
    ) -> Result<Value, NexusError> {
        let mut c = self.client.clone();
        let out = c
            .tools
            .call_tool(nexus_client::pb::CallToolRequest {
                name: name.into(),
                args: args.into(),
            })
            .await
            .map_err(from_status)?
            .into_inner();
        serde_json::from_str(&out.output).map_err(NexusError::internal)
    }
}

/// `nexus mcp`: serves MCP on stdin/stdout, bridged to the node at `endpoint`.
pub async fn serve_stdio(endpoint: &str, token: Option<&str>) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let client = nexus_client::Client::connect_with_token(endpoint, token).await?;
    let handler = NexusMcp::new(Arc::new(RemoteTools::connect(client).await));
    let running = handler.serve(rmcp::transport::io::stdio()).await?;
    running.waiting().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris_map_to_reads() {
        let (tool, args) = resource_call("nexus://memory/prefs/tea%2Fgreen").unwrap();
        assert_eq!(tool, "memory.get");
        assert_eq!(
            args,
            serde_json::json!({"namespace": "prefs", "key": "tea/green"})
        );
        let (tool, args) = resource_call("nexus://conversation/c-1").unwrap();
        assert_eq!(tool, "conversation.history");
        assert_eq!(args["conversation_id"], "c-1");
        for bad in [
            "nexus://memory/prefs",
            "nexus://memory//k",
            "nexus://memory/n/%zz",
            "nexus://conversation/a/b",
            "file:///etc/passwd",
            "nexus://secret/x",
        ] {
            assert!(resource_call(bad).is_none(), "{bad}");
        }
    }
}
