//! ToolService over gRPC.

use std::sync::Arc;

use nexus_proto::v1 as pb;
use nexus_proto::v1::tool_service_server::ToolService as ToolServiceRpc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{handle, handle_on, to_status};
use crate::cluster::ReadConsistency;
use crate::error::NexusError;
use crate::service::tools::{stats::ToolStat, CallOutput, Progress, Reporter, ToolService};
use crate::tools::{HttpPolicy, McpMount, ToolKind, ToolRecord};

pub struct ToolsApi {
    pub tools: Arc<ToolService>,
}

fn tool(r: ToolRecord) -> pb::Tool {
    pb::Tool {
        name: r.name,
        version: r.version,
        description: r.description,
        input_schema: r.input_schema,
        output_schema: r.output_schema,
        kind: r.kind.name().into(),
        config: r.config,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
    }
}

fn result(out: CallOutput) -> pb::CallToolResponse {
    pb::CallToolResponse {
        output: out.output.to_string(),
        version: out.version,
        duration_us: out.duration.as_micros() as u64,
    }
}

fn stat(s: ToolStat) -> pb::ToolStat {
    pb::ToolStat {
        tool: s.tool,
        calls: s.calls,
        errors: s.errors,
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
        last_error: s.last_error,
    }
}

fn policy(p: HttpPolicy) -> pb::HttpPolicy {
    pb::HttpPolicy {
        allow_hosts: p.allow_hosts,
        allow_private: p.allow_private,
    }
}

fn mount(m: McpMount) -> pb::McpMount {
    // An HTTP mount is stored with its URL as the command and its headers as the env.
    let http = m.url().is_some();
    let env = m.env.into_iter().collect();
    let (command, env, url, headers) = if http {
        (String::new(), Default::default(), m.command, env)
    } else {
        (m.command, env, String::new(), Default::default())
    };
    pb::McpMount {
        prefix: m.prefix,
        command,
        args: m.args,
        env,
        timeout_ms: m.timeout_ms,
        created_at_ms: m.created_at_ms,
        url,
        headers,
    }
}

/// The mount a request asks for: a command, or a URL (stored as the command, with its
/// headers as the env: `McpMount::url`).
fn mount_of(r: pb::McpMount) -> Result<McpMount, NexusError> {
    let (command, env) = match (r.command.is_empty(), r.url.is_empty()) {
        (false, true) => {
            if !r.headers.is_empty() {
                return Err(NexusError::invalid(
                    "headers",
                    "are for a mount with a url; a command has env",
                ));
            }
            if crate::tools::is_http_url(&r.command) {
                return Err(NexusError::invalid("command", "is a URL: give it as url"));
            }
            (r.command, r.env)
        }
        (true, false) => {
            if !r.env.is_empty() || !r.args.is_empty() {
                return Err(NexusError::invalid(
                    "url",
                    "a mount with a url has headers, not args or env",
                ));
            }
            if !crate::tools::is_http_url(&r.url) {
                return Err(NexusError::invalid(
                    "url",
                    format!("{:?} is not an http or https URL", r.url),
                ));
            }
            (r.url, r.headers)
        }
        (true, true) => {
            return Err(NexusError::invalid(
                "command",
                "is required (or url, for a server reached over HTTP)",
            ))
        }
        (false, false) => {
            return Err(NexusError::invalid(
                "url",
                "give a command or a url, not both",
            ))
        }
    };
    Ok(McpMount {
        prefix: r.prefix,
        command,
        args: r.args,
        env: env.into_iter().collect(),
        timeout_ms: r.timeout_ms,
        created_at_ms: 0,
    })
}

type EventStream = ReceiverStream<Result<pb::CallToolEvent, Status>>;

#[tonic::async_trait]
impl ToolServiceRpc for ToolsApi {
    async fn list_tools(
        &self,
        request: Request<pb::ListToolsRequest>,
    ) -> Result<Response<pb::ListToolsResponse>, Status> {
        handle("tools.list", request, |p, _| async move {
            let tools = self.tools.list(&p).await?;
            Ok(pb::ListToolsResponse {
                tools: tools.into_iter().map(tool).collect(),
            })
        })
        .await
    }

    async fn describe_tool(
        &self,
        request: Request<pb::DescribeToolRequest>,
    ) -> Result<Response<pb::Tool>, Status> {
        handle("tools.describe", request, |p, r| async move {
            let t = self
                .tools
                .describe(&p, &r.name, ReadConsistency::Linearizable)
                .await?;
            Ok(tool(t))
        })
        .await
    }

    async fn register_tool(
        &self,
        request: Request<pb::RegisterToolRequest>,
    ) -> Result<Response<pb::Tool>, Status> {
        handle("tools.register", request, |p, r| async move {
            let t = r
                .tool
                .ok_or_else(|| NexusError::invalid("tool", "is required"))?;
            let kind = match ToolKind::parse(&t.kind) {
                Some(k @ (ToolKind::Composite | ToolKind::Wasm)) => k,
                _ => {
                    return Err(NexusError::invalid(
                        "tool.kind",
                        format!("{:?}: composite or wasm can be registered", t.kind),
                    ))
                }
            };
            let output_schema = if t.output_schema.is_empty() {
                "{}".to_string()
            } else {
                t.output_schema
            };
            let input_schema = if t.input_schema.is_empty() {
                r#"{"type": "object"}"#.to_string()
            } else {
                t.input_schema
            };
            let registered = self
                .tools
                .register(
                    &p,
                    ToolRecord {
                        name: t.name,
                        version: t.version,
                        description: t.description,
                        input_schema,
                        output_schema,
                        kind,
                        config: t.config,
                        created_at_ms: 0,
                        updated_at_ms: 0,
                    },
                    r.module,
                )
                .await?;
            Ok(tool(registered))
        })
        .await
    }

    async fn grant_tool(
        &self,
        request: Request<pb::GrantToolRequest>,
    ) -> Result<Response<pb::Tool>, Status> {
        handle("tools.grant", request, |p, r| async move {
            Ok(tool(self.tools.grant(&p, &r.name, r.grants).await?))
        })
        .await
    }

    async fn delete_tool(
        &self,
        request: Request<pb::DeleteToolRequest>,
    ) -> Result<Response<pb::DeleteToolResponse>, Status> {
        handle("tools.delete", request, |p, r| async move {
            self.tools.delete(&p, &r.name).await?;
            Ok(pb::DeleteToolResponse {})
        })
        .await
    }

    async fn call_tool(
        &self,
        request: Request<pb::CallToolRequest>,
    ) -> Result<Response<pb::CallToolResponse>, Status> {
        let name = request.get_ref().name.clone();
        handle_on("tools.call", name, request, |p, r| async move {
            let out = self
                .tools
                .call(&p, &r.name, &r.args, Reporter::default())
                .await?;
            Ok(result(out))
        })
        .await
    }

    type WatchToolsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ToolsChanged, Status>> + Send>,
    >;

    async fn watch_tools(
        &self,
        request: Request<pb::WatchToolsRequest>,
    ) -> Result<Response<Self::WatchToolsStream>, Status> {
        handle("tools.list", request, |p, _| async move {
            use tokio_stream::StreamExt;
            // The first message says the watch is open; then one per notice. A client that
            // goes away drops the stream, and with it the watch.
            let changes = ReceiverStream::new(self.tools.watch(&p.tenant)?)
                .map(|()| Ok(pb::ToolsChanged { opened: false }));
            let stream = tokio_stream::once(Ok(pb::ToolsChanged { opened: true })).chain(changes);
            Ok(Box::pin(stream) as Self::WatchToolsStream)
        })
        .await
    }

    type CallToolStreamStream = EventStream;

    async fn call_tool_stream(
        &self,
        request: Request<pb::CallToolRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let name = request.get_ref().name.clone();
        handle_on("tools.call", name, request, |p, r| async move {
            // Bounded: a reader that falls behind loses progress messages (never the result),
            // and the tool never waits for it.
            let (events, rx) = tokio::sync::mpsc::channel(64);
            let (progress, mut progress_rx) = tokio::sync::mpsc::channel::<Progress>(64);
            let tools = self.tools.clone();
            let forward = events.clone();
            let forwarder = tokio::spawn(async move {
                while let Some(p) = progress_rx.recv().await {
                    let event = match p {
                        Progress::Message(m) => pb::call_tool_event::Event::Progress(m),
                        Progress::Partial(v) => pb::call_tool_event::Event::Partial(v.to_string()),
                    };
                    let _ = forward.try_send(Ok(pb::CallToolEvent { event: Some(event) }));
                }
            });
            tokio::spawn(async move {
                let outcome = tools
                    .call(&p, &r.name, &r.args, Reporter::new(progress))
                    .await;
                // Progress first, then the result.
                let _ = forwarder.await;
                let last = match outcome {
                    Ok(out) => Ok(pb::CallToolEvent {
                        event: Some(pb::call_tool_event::Event::Result(result(out))),
                    }),
                    Err(e) => Err(to_status(e)),
                };
                let _ = events.send(last).await;
            });
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    async fn tool_stats(
        &self,
        request: Request<pb::ToolStatsRequest>,
    ) -> Result<Response<pb::ToolStatsResponse>, Status> {
        handle("tools.stats", request, |p, _| async move {
            Ok(pb::ToolStatsResponse {
                stats: self
                    .tools
                    .stats
                    .of(&p.tenant)
                    .into_iter()
                    .map(stat)
                    .collect(),
            })
        })
        .await
    }

    async fn set_http_policy(
        &self,
        request: Request<pb::HttpPolicy>,
    ) -> Result<Response<pb::HttpPolicy>, Status> {
        handle("tools.set_http_policy", request, |p, r| async move {
            let set = self
                .tools
                .set_http_policy(
                    &p,
                    HttpPolicy {
                        allow_hosts: r.allow_hosts,
                        allow_private: r.allow_private,
                    },
                )
                .await?;
            Ok(policy(set))
        })
        .await
    }

    async fn get_http_policy(
        &self,
        request: Request<pb::GetHttpPolicyRequest>,
    ) -> Result<Response<pb::HttpPolicy>, Status> {
        handle("tools.get_http_policy", request, |p, _| async move {
            Ok(policy(self.tools.http_policy(&p.tenant).await?))
        })
        .await
    }

    async fn mount_mcp_server(
        &self,
        request: Request<pb::McpMount>,
    ) -> Result<Response<pb::McpMount>, Status> {
        handle("tools.mount", request, |p, r| async move {
            let mounted = self.tools.mount(&p, mount_of(r)?).await?;
            Ok(mount(mounted))
        })
        .await
    }

    async fn unmount_mcp_server(
        &self,
        request: Request<pb::UnmountMcpServerRequest>,
    ) -> Result<Response<pb::UnmountMcpServerResponse>, Status> {
        handle("tools.unmount", request, |p, r| async move {
            self.tools.unmount(&p, &r.prefix).await?;
            Ok(pb::UnmountMcpServerResponse {})
        })
        .await
    }

    async fn list_mcp_servers(
        &self,
        request: Request<pb::ListMcpServersRequest>,
    ) -> Result<Response<pb::ListMcpServersResponse>, Status> {
        handle("tools.list_mounts", request, |p, _| async move {
            Ok(pb::ListMcpServersResponse {
                mounts: self
                    .tools
                    .mounts(&p.tenant)
                    .await?
                    .into_iter()
                    .map(mount)
                    .collect(),
            })
        })
        .await
    }
}
