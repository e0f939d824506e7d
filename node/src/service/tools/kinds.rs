//! How each kind of registered tool runs: a mounted MCP server's tool, a WebAssembly
//! plugin, a composite. The runner (`ToolService::call_inner`) has found the tool, resolved
//! secrets and checked the arguments before it comes here.

use std::sync::Arc;

use serde_json::Value;

use super::{redact_error, redact_value, wasm, Reporter, ToolService};
use crate::error::NexusError;
use crate::service::Caller;
use crate::tools::{self, composite, ToolRecord};

impl ToolService {
    pub(super) async fn run_mounted(
        &self,
        caller: &Caller,
        tool: &ToolRecord,
        args: Value,
        reporter: &Reporter,
    ) -> Result<Value, NexusError> {
        let (prefix, name) = tool
            .name
            .split_once('.')
            .ok_or_else(|| NexusError::internal("a mounted tool without a prefix"))?;
        let mount = tools::mount(&self.node.store, &caller.tenant, prefix)?
            .ok_or_else(|| NexusError::NotFound(format!("tool {} not found", tool.name)))?;
        let (env, env_redactor) = self.mount_env(caller, &mount).await?;
        reporter.message(format!("calling {name} on MCP server {prefix}"));
        let output = self
            .mcp
            .call(&caller.tenant, &mount, &env, name, args)
            .await
            .map_err(|e| redact_error(&env_redactor, e))?;
        Ok(redact_value(&env_redactor, &output))
    }

    pub(super) async fn run_plugin(
        self: &Arc<Self>,
        caller: &Caller,
        tool: &ToolRecord,
        args: Value,
        reporter: &Reporter,
        depth: usize,
    ) -> Result<Value, NexusError> {
        let manifest = wasm::Manifest::parse("config", &tool.config)?;
        // What the plugin calls runs as its caller, one level deeper, checked like a step.
        let calls: Option<wasm::HostCall> = if manifest.granted("tools") || manifest.granted("http")
        {
            let this = self.clone();
            let caller = caller.clone();
            let name = tool.name.clone();
            Some(Arc::new(
                move |tool: String, args: String| -> wasm::HostFuture {
                    let this = this.clone();
                    let caller = caller.clone();
                    let name = name.clone();
                    Box::pin(async move {
                        if depth + 1 >= composite::MAX_DEPTH {
                            return Err(NexusError::precondition(
                                "tool",
                                format!(
                                    "{name}: tools call tools at most {} deep",
                                    composite::MAX_DEPTH
                                ),
                            ));
                        }
                        crate::iam::rbac::authorize("tools.call", &tool, &caller.principal)?;
                        this.call_inner(&caller, &tool, &args, Reporter::default(), depth + 1)
                            .await
                            .map(|(output, _)| output)
                    })
                },
            ))
        } else {
            None
        };
        let store = &self.node.store;
        let tenant = caller.tenant.as_str();
        self.plugins
            .run(
                wasm::PluginCall {
                    tenant,
                    tool: &tool.name,
                    manifest: &manifest,
                    args: &args,
                    calls,
                },
                || {
                    tools::module(store, tenant, &tool.name)?.ok_or_else(|| {
                        NexusError::NotFound(format!("the module of plugin {} is gone", tool.name))
                    })
                },
                |line| reporter.message(line),
            )
            .await
    }

    pub(super) async fn run_composite(
        self: &Arc<Self>,
        caller: &Caller,
        tool: &ToolRecord,
        input: Value,
        reporter: &Reporter,
        depth: usize,
    ) -> Result<Value, NexusError> {
        if depth >= composite::MAX_DEPTH {
            return Err(NexusError::precondition(
                "tool",
                format!(
                    "{}: composites call composites at most {} deep",
                    tool.name,
                    composite::MAX_DEPTH
                ),
            ));
        }
        let def = composite::parse("config", &tool.config)?;
        let mut scope = serde_json::json!({"input": input, "steps": {}});
        let mut last = Value::Null;
        for (i, step) in def.steps.iter().enumerate() {
            let failing = |why: String| {
                NexusError::precondition(
                    "tool",
                    format!(
                        "{}: step {i} ({}, {}) failed: {why}",
                        tool.name, step.id, step.tool
                    ),
                )
            };
            reporter.message(format!(
                "step {} of {}: {} ({})",
                i + 1,
                def.steps.len(),
                step.id,
                step.tool
            ));
            let args = composite::evaluate(&step.args, &scope).map_err(&failing)?;
            // Each step is authorized like a call of its own.
            crate::iam::rbac::authorize("tools.call", &step.tool, &caller.principal)
                .map_err(|e| failing(e.to_string()))?;
            let (output, _) = self
                .call_inner(
                    caller,
                    &step.tool,
                    &args.to_string(),
                    reporter.clone(),
                    depth + 1,
                )
                .await
                .map_err(|e| match e {
                    NexusError::InvalidArgument { field, message } => NexusError::invalid(
                        format!("{}.steps[{i}].{field}", tool.name),
                        format!("step {} ({}): {message}", step.id, step.tool),
                    ),
                    other => failing(other.to_string()),
                })?;
            reporter.partial(&serde_json::json!({"step": step.id, "output": output}));
            scope["steps"][&step.id] = output.clone();
            last = output;
        }
        match &def.output {
            Some(template) => composite::evaluate(template, &scope).map_err(|e| {
                NexusError::precondition("tool", format!("{}: output: {e}", tool.name))
            }),
            None => Ok(last),
        }
    }
}
