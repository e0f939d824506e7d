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
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListResourceTemplatesResult, ListToolsResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ResourceContents,
    ResourceTemplate, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::Value;

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
}

fn caller_of(ctx: &RequestContext<RoleServer>) -> Result<Caller, NexusError> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| NexusError::Unauthenticated("the request was not authenticated".into()))
}

#[tonic::async_trait]
impl Tools for LocalTools {
    async fn list(&self, ctx: &RequestContext<RoleServer>) -> Result<Vec<ToolRecord>, NexusError> {
        let caller = caller_of(ctx)?;
        self.tools.list(&caller).await
    }

    async fn call(
        &self,
        ctx: &RequestContext<RoleServer>,
        name: &str,
        args: &str,
    ) -> Result<Value, NexusError> {
        let caller = caller_of(ctx)?;
        // The one check every call passes, over gRPC and MCP alike.
        crate::iam::rbac::authorize("tools.call", name, &caller.principal)?;
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

/// Authenticates a `/mcp` request with the node's `Authenticator` and hands the handler its
/// [`Caller`] (in the request's extensions); 401 with `WWW-Authenticate` otherwise.
async fn authenticate(
    State(s): State<McpState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers().clone();
    let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
    let principal = s.auth.authenticate(&metadata).await;
    let caller = match principal {
        Ok(p) if p.subject == crate::auth::LOCAL_SUBJECT => Caller::new(p, None),
        Ok(p) => {
            let context = crate::audit::AuditContext {
                request_id: uuid::Uuid::now_v7().to_string(),
                principal: p.subject.clone(),
                tenant: p.tenant.clone(),
                action: "mcp".into(),
                at_ms: crate::memory::now_ms(),
            };
            let credential = crate::auth::bearer_token(&metadata).map(str::to_string);
            Caller::new(
                p,
                Some(crate::command::OnBehalf {
                    context,
                    credential,
                }),
            )
        }
        Err(e) => {
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
    };
    request.extensions_mut().insert(caller);
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
    let handler = NexusMcp::new(Arc::new(LocalTools { tools }));
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
    pub client: nexus_client::Client,
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
    let handler = NexusMcp::new(Arc::new(RemoteTools { client }));
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
