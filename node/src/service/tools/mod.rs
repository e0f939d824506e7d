//! The tool runner: lists, describes, registers and calls tools for a caller.
//!
//! A call, in order: the tool is found (a built-in, or one the tenant registered); the
//! caller's permission `tools:call:NAME` was checked by the API layer (`api::gate::authorize`,
//! the one place); the permissions the tool itself uses are checked (`memory.put` needs
//! `memory:write` too: a tool never does what its caller could not); the arguments are
//! validated against the input schema (INVALID_ARGUMENT naming the first wrong field's path);
//! `${secrets.NAME}` placeholders are resolved right before the tool runs; the tool runs
//! within its deadline; every resolved value is removed from the output, the error and the
//! progress messages ([`Redactor`]); the call is audited (tool, version, principal, result,
//! duration: never the arguments) and counted per tenant and tool ([`stats`]).

pub mod builtin;
pub mod http;
mod kinds;
pub mod mcp_client;
pub mod stats;
pub mod wasm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply};
use crate::error::NexusError;
use crate::memory::now_ms;
use crate::secrets::placeholders::Redactor;
use crate::service::Caller;
use crate::tools::{
    self, composite, HttpPolicy, McpMount, ToolKind, ToolOp, ToolRecord, ToolReply,
};

pub use builtin::Builtins;

/// How long a burst of changes to a tenant's tools is gathered into one notice ([`ToolService::watch`]).
pub const CHANGE_QUIET: Duration = Duration::from_millis(100);
/// Most watches of tool changes a node serves at once (each a task and a channel).
pub const MAX_WATCHES: usize = 4096;

/// Longest a call may run (a composite's steps together).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest arguments or output, JSON text.
pub const MAX_ARGS_BYTES: usize = 1 << 20;

/// What a call returned.
#[derive(Debug, Clone)]
pub struct CallOutput {
    pub output: Value,
    pub version: String,
    pub duration: Duration,
}

/// Progress of a streaming call.
#[derive(Debug, Clone)]
pub enum Progress {
    Message(String),
    Partial(Value),
}

/// Where a call reports progress (a streaming call's channel; nothing for a unary one).
#[derive(Clone, Default)]
pub struct Reporter {
    tx: Option<mpsc::Sender<Progress>>,
    redactor: Option<Arc<Redactor>>,
}

impl Reporter {
    pub fn new(tx: mpsc::Sender<Progress>) -> Self {
        Reporter {
            tx: Some(tx),
            redactor: None,
        }
    }

    fn with_redactor(&self, redactor: Arc<Redactor>) -> Self {
        Reporter {
            tx: self.tx.clone(),
            redactor: Some(redactor),
        }
    }

    /// Sends a progress message, redacted; a slow reader loses messages, never blocks a tool.
    pub fn message(&self, text: impl Into<String>) {
        if let Some(tx) = &self.tx {
            let text = text.into();
            let text = match &self.redactor {
                Some(r) => r.redact(&text),
                None => text,
            };
            let _ = tx.try_send(Progress::Message(text));
        }
    }

    pub fn partial(&self, value: &Value) {
        if let Some(tx) = &self.tx {
            let value = match &self.redactor {
                Some(r) => redact_value(r, value),
                None => value.clone(),
            };
            let _ = tx.try_send(Progress::Partial(value));
        }
    }
}

fn redact_value(r: &Redactor, v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(r.redact(s)),
        Value::Array(items) => Value::Array(items.iter().map(|x| redact_value(r, x)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, x)| (r.redact(k), redact_value(r, x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A call in progress: its output and the tool's version (boxed: composites recurse).
type CallFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(Value, String), NexusError>> + Send + 'a>,
>;

/// A compiled input schema, cached by tenant, tool and version.
type Compiled = Arc<jsonschema::Validator>;

pub struct ToolService {
    node: Arc<Cluster>,
    builtins: Builtins,
    validators: Mutex<HashMap<(String, String, String), Compiled>>,
    pub stats: stats::Stats,
    pub mcp: mcp_client::McpClients,
    pub plugins: wasm::Plugins,
    /// Watches of tool changes open on this node ([`MAX_WATCHES`]).
    watches: Arc<tokio::sync::Semaphore>,
}

/// A mount's environment with its `${secrets.NAME}` resolved, and the redactor of those
/// values.
type MountEnv = (Vec<(String, zeroize::Zeroizing<String>)>, Redactor);

/// The JSON Schema of `schema_text`, compiled; INVALID_ARGUMENT naming `field` otherwise.
pub fn compile_schema(field: &str, schema_text: &str) -> Result<jsonschema::Validator, NexusError> {
    let schema: Value = serde_json::from_str(schema_text)
        .map_err(|e| NexusError::invalid(field, format!("is not JSON: {e}")))?;
    jsonschema::validator_for(&schema)
        .map_err(|e| NexusError::invalid(field, format!("is not a valid JSON Schema: {e}")))
}

/// `args.a.b[0]` for the JSON pointer `/a/b/0`.
fn field_path(pointer: &str) -> String {
    let mut out = String::from("args");
    for part in pointer.split('/').skip(1) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            out.push('.');
            out.push_str(&part);
        }
    }
    out
}

/// Checks `args` against a compiled schema: INVALID_ARGUMENT naming the first wrong field.
pub fn check_args(validator: &jsonschema::Validator, args: &Value) -> Result<(), NexusError> {
    match validator.iter_errors(args).next() {
        None => Ok(()),
        Some(e) => Err(NexusError::invalid(
            field_path(e.instance_path().as_str()),
            e.to_string(),
        )),
    }
}

impl ToolService {
    pub fn new(
        node: Arc<Cluster>,
        builtins: Builtins,
        mcp: mcp_client::McpClients,
        plugins: wasm::Plugins,
    ) -> Self {
        ToolService {
            node,
            builtins,
            validators: Mutex::new(HashMap::new()),
            stats: stats::Stats::default(),
            mcp,
            plugins,
            watches: Arc::new(tokio::sync::Semaphore::new(MAX_WATCHES)),
        }
    }

    /// Notices that the tools `tenant` can call may have changed: its registry or mounts
    /// (applied on this node, whichever node took the write), or a mounted server's list. A
    /// burst is one notice ([`CHANGE_QUIET`]); at most one waits unread. The watch ends when
    /// the receiver is dropped.
    pub fn watch(&self, tenant: &str) -> Result<mpsc::Receiver<()>, NexusError> {
        let permit = self.watches.clone().try_acquire_owned().map_err(|_| {
            NexusError::ResourceExhausted {
                limit: "tools.max_watches".into(),
                message: format!("this node serves {MAX_WATCHES} watches of tool changes already"),
            }
        })?;
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        let (tx, rx) = mpsc::channel(1);
        let mut changes = self.node.store.watch_changes();
        let tenant = tenant.to_string();
        tokio::spawn(async move {
            let _permit = permit;
            loop {
                let got = tokio::select! {
                    _ = tx.closed() => return,
                    got = changes.recv() => got,
                };
                match got {
                    Ok(c) if !c.concerns("tools", &tenant) => continue,
                    // Lagged: some changes were missed, any of them may be this tenant's.
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(CHANGE_QUIET) => {}
                }
                // What came meanwhile is told by the same notice.
                while matches!(changes.try_recv(), Ok(_) | Err(TryRecvError::Lagged(_))) {}
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(()) {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Resolves the `${secrets.NAME}` in a mount's env values for `caller` (each a read on
    /// the audit log), all at once.
    async fn mount_env(&self, caller: &Caller, mount: &McpMount) -> Result<MountEnv, NexusError> {
        const SEP: char = '\u{1}';
        let joined: String = mount
            .env
            .values()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(&SEP.to_string());
        if !joined.contains("${secrets.") {
            let env = mount
                .env
                .iter()
                .map(|(k, v)| (k.clone(), zeroize::Zeroizing::new(v.clone())))
                .collect();
            return Ok((env, Redactor::default()));
        }
        let (resolved, redactor) = self
            .builtins
            .secrets
            .resolve_placeholders(&caller.scope(), "env", &joined)
            .await?;
        let env = mount
            .env
            .keys()
            .zip(resolved.split(SEP))
            .map(|(k, v)| (k.clone(), zeroize::Zeroizing::new(v.to_string())))
            .collect();
        Ok((env, redactor))
    }

    /// The tools of the tenant's mounted MCP servers; a server that cannot be reached is
    /// left out (and logged), not an error of the whole listing.
    async fn mounted_tools(&self, caller: &Caller) -> Result<Vec<ToolRecord>, NexusError> {
        let mut out = Vec::new();
        for mount in tools::mounts(&self.node.store, &caller.tenant)? {
            let listed = match self.mount_env(caller, &mount).await {
                Ok((env, _)) => self.mcp.list(&caller.tenant, &mount, &env).await,
                Err(e) => Err(e),
            };
            match listed {
                Ok(tools) => out.extend(tools),
                Err(e) => {
                    tracing::warn!(prefix = %mount.prefix, error = %e, "listing a mounted MCP server's tools")
                }
            }
        }
        Ok(out)
    }

    /// Mounts (or replaces) an external MCP server for the caller's tenant.
    pub async fn mount(&self, caller: &Caller, mount: McpMount) -> Result<McpMount, NexusError> {
        self.mcp.validate(&mount)?;
        if mount.env.values().any(|v| v.contains('\u{1}')) {
            return Err(NexusError::invalid(
                "env",
                "a value holds a control character",
            ));
        }
        let what = if mount.url().is_some() {
            "headers"
        } else {
            "env"
        };
        for (name, value) in &mount.env {
            crate::secrets::placeholders::names(&format!("{what}.{name}"), value)?;
        }
        // A server over HTTP: within the tenant's http policy now (and again on connecting).
        if let Some(url) = mount.url() {
            let policy = tools::http_policy(&self.node.store, &caller.tenant)?;
            http::allowed_url(&policy, "url", "url", url)?;
        }
        let mount = McpMount {
            created_at_ms: now_ms(),
            ..mount
        };
        match self.propose(caller, ToolOp::Mount { mount }).await? {
            ToolReply::Mounted(m) => Ok(m),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn unmount(&self, caller: &Caller, prefix: &str) -> Result<(), NexusError> {
        self.propose(
            caller,
            ToolOp::Unmount {
                prefix: prefix.into(),
            },
        )
        .await?;
        self.mcp.stop(&caller.tenant, prefix).await;
        Ok(())
    }

    pub async fn mounts(&self, tenant: &str) -> Result<Vec<McpMount>, NexusError> {
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        Ok(tools::mounts(&self.node.store, tenant)?)
    }

    /// The tools of the caller's tenant it may call (every one with `tools:read`):
    /// built-ins, then the tenant's registered tools.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<ToolRecord>, NexusError> {
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let mut out = self.builtins.records();
        out.extend(tools::list(&self.node.store, &caller.tenant)?);
        out.extend(self.mounted_tools(caller).await?);
        let all = caller.grants.allows("tools:read");
        out.retain(|t| all || caller.grants.allows(&format!("tools:call:{}", t.name)));
        Ok(out)
    }

    /// One tool (read locally after `consistency`'s barrier).
    pub async fn describe(
        &self,
        caller: &Caller,
        name: &str,
        consistency: ReadConsistency,
    ) -> Result<ToolRecord, NexusError> {
        if name.is_empty() {
            return Err(NexusError::invalid("name", "is required"));
        }
        if let Some(b) = self.builtins.record(name) {
            return Ok(b);
        }
        if name.len() > tools::MAX_NAME_BYTES {
            return Err(NexusError::invalid("name", "is too long"));
        }
        self.node.read_barrier(consistency).await?;
        let tenant = &caller.tenant;
        // A mounted server's tool: PREFIX.TOOL, named as the server names it.
        if let Some((prefix, _)) = name.split_once('.') {
            if let Some(mount) = tools::mount(&self.node.store, tenant, prefix)? {
                let (env, _) = self.mount_env(caller, &mount).await?;
                return self
                    .mcp
                    .list(tenant, &mount, &env)
                    .await?
                    .into_iter()
                    .find(|t| t.name == name)
                    .ok_or_else(|| NexusError::NotFound(format!("tool {name} not found")));
            }
        }
        tools::validate_name("name", name)?;
        tools::read(&self.node.store, tenant, name)?
            .ok_or_else(|| NexusError::NotFound(format!("tool {name} not found")))
    }

    async fn propose(&self, caller: &Caller, op: ToolOp) -> Result<ToolReply, NexusError> {
        match command::propose(&self.node, &caller.scope(), Op::Tool(op)).await? {
            Reply::Tool(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Registers a tool of the caller's tenant (or replaces it): a composite, or a
    /// WebAssembly plugin with its `module` (binary or text format), which comes with no
    /// grants whatever its manifest asks for.
    pub async fn register(
        &self,
        caller: &Caller,
        tool: ToolRecord,
        module: Vec<u8>,
    ) -> Result<ToolRecord, NexusError> {
        tools::validate_name("tool.name", &tool.name)?;
        if self.builtins.record(&tool.name).is_some() || tool.name.starts_with("nexus.") {
            return Err(NexusError::invalid(
                "tool.name",
                format!("{} is a built-in tool's name", tool.name),
            ));
        }
        tools::validate_version("tool.version", &tool.version)?;
        for (field, text) in [
            ("tool.description", &tool.description),
            ("tool.input_schema", &tool.input_schema),
            ("tool.output_schema", &tool.output_schema),
            ("tool.config", &tool.config),
        ] {
            if text.len() > tools::MAX_DEFINITION_BYTES {
                return Err(NexusError::invalid(
                    field,
                    format!(
                        "is {} bytes; at most {}",
                        text.len(),
                        tools::MAX_DEFINITION_BYTES
                    ),
                ));
            }
        }
        compile_schema("tool.input_schema", &tool.input_schema)?;
        compile_schema("tool.output_schema", &tool.output_schema)?;
        let now = now_ms();
        let mut tool = ToolRecord {
            created_at_ms: now,
            updated_at_ms: now,
            ..tool
        };
        let op = match tool.kind {
            ToolKind::Composite => {
                if !module.is_empty() {
                    return Err(NexusError::invalid(
                        "module",
                        "is for wasm tools; a composite has none",
                    ));
                }
                composite::parse("tool.config", &tool.config)?;
                ToolOp::Register { tool }
            }
            ToolKind::Wasm => {
                let mut manifest = wasm::Manifest::parse("tool.config", &tool.config)?;
                wasm::validate_manifest("tool.config", &manifest, self.plugins.config())?;
                let plugins = tools::list(&self.node.store, &caller.tenant)?
                    .into_iter()
                    .filter(|t| t.kind == ToolKind::Wasm && t.name != tool.name)
                    .count();
                let max = self.plugins.config().max_plugins_per_tenant;
                if plugins >= max {
                    return Err(NexusError::ResourceExhausted {
                        limit: "plugins.max_plugins_per_tenant".into(),
                        message: format!("the tenant has {plugins} plugins; at most {max}"),
                    });
                }
                let sha = self
                    .plugins
                    .check_module("module", &caller.tenant, &tool.name, &module)
                    .await?;
                manifest.granted.clear();
                manifest.module_sha256 = sha;
                manifest.module_bytes = module.len() as u64;
                tool.config = manifest.to_text();
                ToolOp::RegisterPlugin { tool, module }
            }
            other => {
                return Err(NexusError::invalid(
                    "tool.kind",
                    format!(
                    "{} tools cannot be registered: composite or wasm (MCP tools come from mounts)",
                    other.name()
                ),
                ))
            }
        };
        match self.propose(caller, op).await? {
            ToolReply::Tool(t) => Ok(t),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sets what plugin `name` may reach beyond its sandbox: each grant one its manifest
    /// asks for (`clock`, `http`, `tools`; checked when the op applies, against the plugin as
    /// it is then); an empty list takes every grant back.
    pub async fn grant(
        &self,
        caller: &Caller,
        name: &str,
        grants: Vec<String>,
    ) -> Result<ToolRecord, NexusError> {
        tools::validate_name("name", name)?;
        if let Some((i, g)) = grants
            .iter()
            .enumerate()
            .find(|(_, g)| !wasm::GRANTS.contains(&g.as_str()))
        {
            return Err(NexusError::invalid(
                format!("grants[{i}]"),
                format!(
                    "{g:?} is not a plugin grant; one of {}",
                    wasm::GRANTS.join(", ")
                ),
            ));
        }
        let mut grants = grants;
        grants.sort();
        grants.dedup();
        let op = ToolOp::Grant {
            name: name.into(),
            grants,
        };
        match self.propose(caller, op).await? {
            ToolReply::Tool(t) => Ok(t),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<(), NexusError> {
        if self.builtins.record(name).is_some() {
            return Err(NexusError::invalid(
                "name",
                format!("{name} is a built-in tool; it cannot be deleted"),
            ));
        }
        tools::validate_name("name", name)?;
        self.propose(caller, ToolOp::Delete { name: name.into() })
            .await
            .map(|_| ())
    }

    pub async fn set_http_policy(
        &self,
        caller: &Caller,
        policy: HttpPolicy,
    ) -> Result<HttpPolicy, NexusError> {
        http::validate_policy(&policy)?;
        match self
            .propose(caller, ToolOp::SetHttpPolicy { policy })
            .await?
        {
            ToolReply::HttpPolicy(p) => Ok(p),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn http_policy(&self, tenant: &str) -> Result<HttpPolicy, NexusError> {
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        Ok(tools::http_policy(&self.node.store, tenant)?)
    }

    fn validator(&self, tenant: &str, tool: &ToolRecord) -> Result<Compiled, NexusError> {
        if tool.kind == ToolKind::Builtin {
            if let Some(v) = self.builtins.validator(&tool.name) {
                return Ok(v);
            }
        }
        let key = (tenant.to_string(), tool.name.clone(), tool.version.clone());
        if let Some(v) = self.validators.lock().unwrap().get(&key) {
            return Ok(v.clone());
        }
        let compiled = Arc::new(compile_schema("input_schema", &tool.input_schema)?);
        let mut cache = self.validators.lock().unwrap();
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Calls tool `name` with `args` (a JSON object, text) for `caller`, reporting progress
    /// to `reporter`. Audited and counted whatever the outcome.
    pub async fn call(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
        args: &str,
        reporter: Reporter,
    ) -> Result<CallOutput, NexusError> {
        let started = Instant::now();
        let tenant = caller.tenant.clone();
        let result = tokio::time::timeout(
            CALL_TIMEOUT,
            self.call_inner(caller, name, args, reporter, 0),
        )
        .await
        .unwrap_or_else(|_| {
            Err(NexusError::unavailable(format!(
                "tool {name} did not finish within {} s",
                CALL_TIMEOUT.as_secs()
            )))
        });
        let duration = started.elapsed();
        let version = result.as_ref().map(|(_, v)| v.clone()).unwrap_or_default();
        self.stats
            .record(&tenant, name, duration, result.as_ref().err());
        // On record: which tool, which version, who, the outcome and how long; never the
        // arguments or the output.
        if let Some(on_behalf) = caller.on_behalf.clone() {
            let mut on_behalf = on_behalf;
            on_behalf.context.action = "tools.call".into();
            let resource = format!(
                "tool/{name}@{} {} us",
                if version.is_empty() { "?" } else { &version },
                duration.as_micros()
            );
            let outcome = crate::audit::result_text(&result);
            if let Err(e) =
                crate::service::audit::record(&self.node, &tenant, on_behalf, resource, outcome)
                    .await
            {
                tracing::warn!(error = %e, tool = name, "recording a tool call in the audit log");
            }
        }
        let (output, version) = result?;
        Ok(CallOutput {
            output,
            version,
            duration,
        })
    }

    /// The call without its audit and statistics; `depth` counts composite nesting.
    fn call_inner<'a>(
        self: &'a Arc<Self>,
        caller: &'a Caller,
        name: &'a str,
        args: &'a str,
        reporter: Reporter,
        depth: usize,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            if args.len() > MAX_ARGS_BYTES {
                return Err(NexusError::invalid(
                    "args",
                    format!("is {} bytes; at most {MAX_ARGS_BYTES}", args.len()),
                ));
            }
            // A built-in is found without a copy; any other tool is read (after no barrier: a
            // call sees what this node has applied).
            let tool: std::borrow::Cow<'static, ToolRecord> = match self.builtins.record_ref(name) {
                Some(builtin) => std::borrow::Cow::Borrowed(builtin),
                None => std::borrow::Cow::Owned(
                    self.describe(caller, name, ReadConsistency::Stale).await?,
                ),
            };
            let args_text = if args.trim().is_empty() { "{}" } else { args };
            // Placeholders first: the schema sees the values (a secret may have to be a
            // number), and nothing but the tool sees them.
            let (resolved, redactor) = if args_text.contains("${secrets.") {
                let (text, redactor) = self
                    .builtins
                    .secrets
                    .resolve_placeholders(&caller.scope(), "args", args_text)
                    .await?;
                (Some(text), Arc::new(redactor))
            } else {
                (None, Arc::new(Redactor::default()))
            };
            let text: &str = resolved.as_ref().map_or(args_text, |t| t.as_str());
            let redact_err = |e: NexusError| -> NexusError { redact_error(&redactor, e) };
            let parsed: Value = serde_json::from_str(text).map_err(|e| {
                redact_err(NexusError::invalid("args", format!("is not JSON: {e}")))
            })?;
            if !parsed.is_object() {
                return Err(NexusError::invalid("args", "must be a JSON object"));
            }
            let validator = self.validator(&caller.tenant, &tool)?;
            check_args(&validator, &parsed).map_err(redact_err)?;
            let reporter = reporter.with_redactor(redactor.clone());
            let output = match tool.kind {
                ToolKind::Builtin => {
                    self.builtins
                        .run(caller, &tool.name, parsed, &reporter)
                        .await
                }
                ToolKind::Composite => {
                    self.run_composite(caller, &tool, parsed, &reporter, depth)
                        .await
                }
                ToolKind::Mcp => self.run_mounted(caller, &tool, parsed, &reporter).await,
                ToolKind::Wasm => {
                    self.run_plugin(caller, &tool, parsed, &reporter, depth)
                        .await
                }
            }
            .map_err(redact_err)?;
            let output = if redactor.is_empty() {
                output
            } else {
                redact_value(&redactor, &output)
            };
            Ok((output, tool.version.clone()))
        })
    }
}

/// An error with every resolved secret value replaced by its placeholder.
fn redact_error(r: &Redactor, e: NexusError) -> NexusError {
    match e {
        NexusError::InvalidArgument { field, message } => NexusError::InvalidArgument {
            field,
            message: r.redact(&message),
        },
        NexusError::NotFound(m) => NexusError::NotFound(r.redact(&m)),
        NexusError::PermissionDenied(m) => NexusError::PermissionDenied(r.redact(&m)),
        NexusError::FailedPrecondition { field, message } => NexusError::FailedPrecondition {
            field,
            message: r.redact(&message),
        },
        NexusError::Unavailable {
            message,
            leader_id,
            leader_addr,
        } => NexusError::Unavailable {
            message: r.redact(&message),
            leader_id,
            leader_addr,
        },
        NexusError::ResourceExhausted { limit, message } => NexusError::ResourceExhausted {
            limit,
            message: r.redact(&message),
        },
        NexusError::AlreadyExists(m) => NexusError::AlreadyExists(r.redact(&m)),
        NexusError::Unauthenticated(m) => NexusError::Unauthenticated(r.redact(&m)),
        NexusError::Internal(m) => NexusError::Internal(r.redact(&m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_wrong_field_is_named_by_its_path() {
        let v = compile_schema(
            "s",
            r#"{"type": "object", "required": ["messages"], "properties": {"messages": {"type": "array",
                 "items": {"type": "object", "properties": {"role": {"enum": ["user", "assistant"]}}}}}}"#,
        )
        .unwrap();
        let e = check_args(
            &v,
            &serde_json::json!({"messages": [{"role": "user"}, {"role": "robot"}]}),
        )
        .unwrap_err();
        match e {
            NexusError::InvalidArgument { field, .. } => assert_eq!(field, "args.messages[1].role"),
            other => panic!("{other:?}"),
        }
        assert!(check_args(&v, &serde_json::json!({})).is_err());
        assert!(compile_schema("s", r#"{"type": 7}"#).is_err());
        assert!(compile_schema("s", "not json").is_err());
    }
}
