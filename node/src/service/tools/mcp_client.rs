//! The MCP client: external MCP servers a tenant mounted (`tools::McpMount`), started on
//! this node when first used, their tools listed and called as `PREFIX.TOOL`.
//!
//! - One process per (tenant, prefix) on each node, started with the mount's command, args
//!   and env (`${secrets.NAME}` in env values resolved for the caller who starts it, like any
//!   tool argument). Only commands in `[mcp_client] commands` are accepted when mounting.
//! - Or one streamable-HTTP connection per (tenant, prefix) on each node to a mount's URL,
//!   with its headers (placeholders resolved alike), within the tenant's http policy as
//!   `http.request` is: the host on its allow-list, no private address unless it allows them
//!   (checked on the URL when mounting and connecting, and on every address DNS gives).
//! - A server that exited (crashed, killed) is started again on the next use; a changed mount
//!   (another command, args or env) replaces the running one.
//! - Its tool list is cached for [`TOOLS_TTL`] and read again after a call fails or when the
//!   server sends `notifications/tools/list_changed`; a call has
//!   a deadline (the mount's `timeout_ms`, at most `[mcp_client] call_timeout_ms`).
//! - At most `[mcp_client] max_servers` run at once; the least recently used is stopped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, Tool};
use rmcp::service::RunningService;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::error::NexusError;
use crate::store::Store;
use crate::tools::{McpMount, ToolKind, ToolRecord};

pub const TOOLS_TTL: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(30);

struct Server {
    mount: McpMount,
    service: RunningService<RoleClient, ListWatcher>,
    tools: Option<(Instant, Vec<Tool>)>,
    last_used: Instant,
    /// Set when the server says its tool list changed: the next listing reads it again.
    changed: Arc<std::sync::atomic::AtomicBool>,
}

/// The client side of a mounted server's connection: notes its list-changed notifications,
/// and tells the node's watchers that the tenant's tools changed (Nexus's own MCP clients
/// listening for list changes hear of it).
struct ListWatcher {
    changed: Arc<std::sync::atomic::AtomicBool>,
    store: Store,
    tenant: String,
}

impl rmcp::ClientHandler for ListWatcher {
    async fn on_tool_list_changed(&self, _context: rmcp::service::NotificationContext<RoleClient>) {
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.store.changed("tools", Some(&self.tenant));
    }
}

/// A mounted tool's version: `0.0.0+` and its input schema's hash, so that a server that
/// changes a tool's schema gets its arguments checked against the new one (compiled schemas
/// are cached by version).
fn schema_version(schema: &rmcp::model::JsonObject) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(Value::Object(schema.clone()).to_string().as_bytes());
    format!(
        "0.0.0+{}",
        digest[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// (tenant, prefix).
type ServerKey = (String, String);

/// Headers a mount may not set: the transport's own, and what the HTTP client decides.
const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "content-length",
    "host",
    "connection",
    "transfer-encoding",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// Checks an HTTP mount before it is stored: its URL and header names.
fn validate_http(mount: &McpMount) -> Result<(), NexusError> {
    let url = mount.url().unwrap_or_default();
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| NexusError::invalid("url", format!("is not a URL: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(NexusError::invalid("url", "has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(NexusError::invalid(
            "url",
            "holds credentials: send them as a header (Authorization=Bearer ${secrets.NAME})",
        ));
    }
    if mount.env.len() > 64 {
        return Err(NexusError::invalid("headers", "at most 64 headers"));
    }
    for name in mount.env.keys() {
        let field = format!("headers.{name}");
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(NexusError::invalid(field, "is not a header name"));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(NexusError::invalid(
                field,
                "is set by the MCP transport itself",
            ));
        }
    }
    Ok(())
}

pub struct McpClients {
    servers: Mutex<HashMap<ServerKey, Arc<Mutex<Server>>>>,
    pub allowed_commands: Vec<String>,
    pub call_timeout: Duration,
    pub max_servers: usize,
    store: Store,
}

fn unavailable(prefix: &str, why: impl std::fmt::Display) -> NexusError {
    NexusError::unavailable(format!("MCP server {prefix}: {why}"))
}

impl McpClients {
    pub fn new(config: &crate::config::McpClientConfig, store: Store) -> Self {
        McpClients {
            store,
            servers: Mutex::new(HashMap::new()),
            allowed_commands: config.commands.clone(),
            call_timeout: Duration::from_millis(config.call_timeout_ms.max(1)),
            max_servers: config.max_servers.max(1),
        }
    }

    /// Checks a mount before it is stored: prefix, command and env names.
    pub fn validate(&self, mount: &McpMount) -> Result<(), NexusError> {
        let ok_prefix = mount
            .prefix
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
            && mount.prefix.len() <= 32
            && mount
                .prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok_prefix {
            return Err(NexusError::invalid(
                "prefix",
                format!(
                    "{:?} is not a prefix: a-z, 0-9 and _, starting with a letter, at most 32",
                    mount.prefix
                ),
            ));
        }
        if mount.url().is_some() {
            return validate_http(mount);
        }
        if !self.allowed_commands.contains(&mount.command) {
            return Err(NexusError::PermissionDenied(format!(
                "{:?} is not a command this node runs for tenants ([mcp_client] commands: {})",
                mount.command,
                if self.allowed_commands.is_empty() {
                    "none".to_string()
                } else {
                    self.allowed_commands.join(", ")
                }
            )));
        }
        if mount.args.len() > 64 || mount.env.len() > 64 {
            return Err(NexusError::invalid(
                "args",
                "at most 64 arguments and 64 environment variables",
            ));
        }
        for name in mount.env.keys() {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(NexusError::invalid(
                    format!("env.{name}"),
                    "is not a variable name",
                ));
            }
        }
        Ok(())
    }

    /// Connects to the server of an HTTP mount within the tenant's http policy (its host on
    /// the allow-list, no private address unless allowed, checked again on every address DNS
    /// gives), sending `headers` (placeholders resolved) with every request.
    async fn connect_http(
        &self,
        tenant: &str,
        mount: &McpMount,
        url: &str,
        headers: &[(String, zeroize::Zeroizing<String>)],
        watcher: ListWatcher,
    ) -> Result<RunningService<RoleClient, ListWatcher>, NexusError> {
        use rmcp::transport::streamable_http_client::{
            StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
        };
        let policy = crate::tools::http_policy(&self.store, tenant)?;
        super::http::allowed_url(&policy, "url", &format!("MCP server {}", mount.prefix), url)?;
        let mut custom = HashMap::new();
        for (name, value) in headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| NexusError::invalid(format!("headers.{name}"), e.to_string()))?;
            let mut value =
                reqwest::header::HeaderValue::from_str(value.as_str()).map_err(|_| {
                    NexusError::invalid(format!("headers.{name}"), "is not a header value")
                })?;
            value.set_sensitive(true);
            custom.insert(name, value);
        }
        // No overall deadline on the client: a server's event stream stays open; each call
        // has its own (`call`), and connecting has START_TIMEOUT.
        let client = super::http::policy_client(&policy, None)?;
        let transport = StreamableHttpClientTransport::with_client(
            client,
            StreamableHttpClientTransportConfig::with_uri(url.to_string()).custom_headers(custom),
        );
        tokio::time::timeout(START_TIMEOUT, watcher.serve(transport))
            .await
            .map_err(|_| unavailable(&mount.prefix, "it did not finish its handshake in time"))?
            .map_err(|e| unavailable(&mount.prefix, format!("handshake: {e}")))
    }

    /// The running server of `mount` for `tenant`, started (with `env`, its placeholders
    /// resolved) when it is not running or its mount changed.
    async fn server(
        &self,
        tenant: &str,
        mount: &McpMount,
        env: &[(String, zeroize::Zeroizing<String>)],
    ) -> Result<Arc<Mutex<Server>>, NexusError> {
        let key = (tenant.to_string(), mount.prefix.clone());
        let mut servers = self.servers.lock().await;
        if let Some(s) = servers.get(&key) {
            let guard = s.lock().await;
            if guard.mount == *mount && !guard.service.is_closed() {
                drop(guard);
                return Ok(s.clone());
            }
        }
        servers.remove(&key);
        if servers.len() >= self.max_servers {
            // Stop the least recently used.
            let mut oldest: Option<((String, String), Instant)> = None;
            for (k, s) in servers.iter() {
                let used = s.lock().await.last_used;
                if oldest.as_ref().is_none_or(|(_, t)| used < *t) {
                    oldest = Some((k.clone(), used));
                }
            }
            if let Some((k, _)) = oldest {
                servers.remove(&k);
            }
        }
        let changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = ListWatcher {
            changed: changed.clone(),
            store: self.store.clone(),
            tenant: tenant.to_string(),
        };
        let service = match mount.url() {
            Some(url) => self.connect_http(tenant, mount, url, env, watcher).await?,
            None => self.start_command(mount, env, watcher).await?,
        };
        tracing::info!(tenant, prefix = %mount.prefix, server = %mount.command, "connected to a mounted MCP server");
        let server = Arc::new(Mutex::new(Server {
            mount: mount.clone(),
            service,
            tools: None,
            last_used: Instant::now(),
            changed,
        }));
        servers.insert(key, server.clone());
        Ok(server)
    }

    /// Starts a stdio mount's command with a minimal environment and `env`.
    async fn start_command(
        &self,
        mount: &McpMount,
        env: &[(String, zeroize::Zeroizing<String>)],
        watcher: ListWatcher,
    ) -> Result<RunningService<RoleClient, ListWatcher>, NexusError> {
        let mut command = tokio::process::Command::new(&mount.command);
        command.args(&mount.args).env_clear();
        // A minimal environment: PATH and HOME to find interpreters, then the mount's own.
        for inherited in ["PATH", "HOME", "LANG"] {
            if let Ok(v) = std::env::var(inherited) {
                command.env(inherited, v);
            }
        }
        for (k, v) in env {
            command.env(k, v.as_str());
        }
        let transport = rmcp::transport::TokioChildProcess::builder(command)
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| unavailable(&mount.prefix, format!("starting {}: {e}", mount.command)))?
            .0;
        tokio::time::timeout(START_TIMEOUT, watcher.serve(transport))
            .await
            .map_err(|_| unavailable(&mount.prefix, "it did not finish its handshake in time"))?
            .map_err(|e| unavailable(&mount.prefix, format!("handshake: {e}")))
    }

    /// The server's tools, from the cache or read again.
    async fn tools_of(&self, server: &mut Server, refresh: bool) -> Result<Vec<Tool>, NexusError> {
        let changed = server
            .changed
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if let Some((at, tools)) = &server.tools {
            if !refresh && !changed && at.elapsed() < TOOLS_TTL {
                return Ok(tools.clone());
            }
        }
        let prefix = server.mount.prefix.clone();
        let tools = tokio::time::timeout(self.call_timeout, server.service.list_all_tools())
            .await
            .map_err(|_| unavailable(&prefix, "tools/list timed out"))?
            .map_err(|e| unavailable(&prefix, format!("tools/list: {e}")))?;
        server.tools = Some((Instant::now(), tools.clone()));
        Ok(tools)
    }

    /// The mounted server's tools as registry records, named `PREFIX.TOOL`.
    pub async fn list(
        &self,
        tenant: &str,
        mount: &McpMount,
        env: &[(String, zeroize::Zeroizing<String>)],
    ) -> Result<Vec<ToolRecord>, NexusError> {
        let server = self.server(tenant, mount, env).await?;
        let mut server = server.lock().await;
        server.last_used = Instant::now();
        let tools = self.tools_of(&mut server, false).await?;
        Ok(tools
            .iter()
            .map(|t| ToolRecord {
                name: format!("{}.{}", mount.prefix, t.name),
                version: schema_version(&t.input_schema),
                description: t.description.as_deref().unwrap_or_default().to_string(),
                input_schema: Value::Object((*t.input_schema).clone()).to_string(),
                output_schema: t.output_schema.as_ref().map_or("{}".to_string(), |s| {
                    Value::Object((**s).clone()).to_string()
                }),
                kind: ToolKind::Mcp,
                config: serde_json::json!({"mount": mount.prefix, "command": mount.command})
                    .to_string(),
                created_at_ms: mount.created_at_ms,
                updated_at_ms: mount.created_at_ms,
            })
            .collect())
    }

    /// Calls `tool` (its name on the server) with `args`; the output is the server's
    /// structured content, else its text content (parsed when it is JSON).
    pub async fn call(
        &self,
        tenant: &str,
        mount: &McpMount,
        env: &[(String, zeroize::Zeroizing<String>)],
        tool: &str,
        args: Value,
    ) -> Result<Value, NexusError> {
        let timeout = match mount.timeout_ms {
            0 => self.call_timeout,
            ms => Duration::from_millis(ms).min(self.call_timeout),
        };
        let Value::Object(arguments) = args else {
            return Err(NexusError::invalid("args", "must be a JSON object"));
        };
        // A server found dead on the call (killed since its last use: its transport closes
        // only as the call fails) is started again, and the call made once more.
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let server = self.server(tenant, mount, env).await?;
            let peer = {
                let mut s = server.lock().await;
                s.last_used = Instant::now();
                s.service.peer().clone()
            };
            let params =
                CallToolRequestParams::new(tool.to_string()).with_arguments(arguments.clone());
            let outcome = tokio::time::timeout(timeout, peer.call_tool(params))
                .await
                .map_err(|_| {
                    unavailable(
                        &mount.prefix,
                        format!("{tool} did not answer within {} ms", timeout.as_millis()),
                    )
                })?;
            match outcome {
                Ok(r) => break r,
                Err(e) => {
                    let closed = matches!(e, rmcp::ServiceError::TransportClosed)
                        || server.lock().await.service.is_closed();
                    if closed && attempt == 1 {
                        tracing::info!(tenant, prefix = %mount.prefix, "a mounted MCP server exited; starting it again");
                        self.stop(tenant, &mount.prefix).await;
                        continue;
                    }
                    // The list may have changed: read it again next time.
                    server.lock().await.tools = None;
                    return Err(unavailable(&mount.prefix, format!("{tool}: {e}")));
                }
            }
        };
        let text: String = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect::<Vec<_>>()
            .join("\n");
        if result.is_error == Some(true) {
            return Err(NexusError::precondition(
                "tool",
                format!(
                    "{}.{tool} failed: {}",
                    mount.prefix,
                    crate::error::excerpt(&text, 1000)
                ),
            ));
        }
        Ok(match result.structured_content {
            Some(v) => v,
            None => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        })
    }

    /// Stops the tenant's server at `prefix`, if it runs here (after an unmount).
    pub async fn stop(&self, tenant: &str, prefix: &str) {
        self.servers
            .lock()
            .await
            .remove(&(tenant.to_string(), prefix.to_string()));
    }
}
