//! `nexusctl tools` and `nexus run`: tools from the command line, over the gRPC API.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Value};

use crate::output::{print_json, table};
use crate::{pb, Client, ClientError};

#[derive(Subcommand, Clone)]
pub enum ToolsCommand {
    /// Every tool you can call: built-ins, then your tenant's.
    List,
    /// A tool's description and schemas.
    Describe { name: String },
    /// Register (or replace) a tool from a JSON file: {"name", "version", "description",
    /// "input_schema", "output_schema"} and, for a composite, "steps" and "output"; for a
    /// WebAssembly plugin (with --wasm), "permissions" and "limits" (docs/plugins.md).
    Register {
        file: PathBuf,
        /// The plugin's WebAssembly module (.wasm, or .wat text).
        #[arg(long)]
        wasm: Option<PathBuf>,
    },
    /// Grant a plugin what its manifest asks for (clock, http, tools): replaces its grants.
    /// Needs tools:grant (a tenant admin's).
    Grant {
        name: String,
        /// The grants; none takes every grant back.
        grants: Vec<String>,
    },
    /// Delete a registered tool.
    Delete { name: String },
    /// Call a tool with JSON arguments (progress on stderr with --stream).
    Call {
        name: String,
        #[arg(long, default_value = "{}")]
        args: String,
        /// Stream progress and partial output while the tool runs.
        #[arg(long)]
        stream: bool,
    },
    /// Calls, errors, p50/p99 latency and the last error per tool (this node).
    Stats,
    /// The tenant's http.request policy; with --allow, replace it.
    HttpPolicy {
        /// Hosts to allow (exact, or *.domain); repeat. Replaces the list.
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Also loopback and private addresses.
        #[arg(long)]
        allow_private: bool,
        /// Set an empty list (no host allowed).
        #[arg(long, conflicts_with = "allow")]
        clear: bool,
    },
}

#[derive(Subcommand, Clone)]
pub enum McpCommand {
    /// Mount an external MCP server: `nexusctl mcp mount time -- python3 -m mcp_server_time`
    /// (a command the nodes start; it must be one they allow: [mcp_client] commands), or
    /// `nexusctl mcp mount docs --url https://mcp.example.com/mcp --header
    /// 'Authorization=Bearer ${secrets.DOCS_TOKEN}'` (a server reached over streamable HTTP;
    /// its host must be on the tenant's http policy). Its tools become PREFIX.TOOL.
    Mount {
        prefix: String,
        /// KEY=VALUE for the server's environment; VALUE may hold ${secrets.NAME}. Repeat.
        #[arg(long = "env", conflicts_with = "url")]
        env: Vec<String>,
        /// The MCP endpoint of a server reached over HTTP, instead of a command.
        #[arg(long, conflicts_with = "command")]
        url: Option<String>,
        /// NAME=VALUE sent with every request to --url; VALUE may hold ${secrets.NAME}. Repeat.
        #[arg(long = "header", requires = "url")]
        headers: Vec<String>,
        /// Longest a call may take, in milliseconds (0: the node's default).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required_unless_present = "url")]
        command: Vec<String>,
    },
    /// Unmount a server (its process stops on every node as it is next used).
    Unmount { prefix: String },
    /// The tenant's mounted servers.
    List,
}

fn schema(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::String(text.to_string()))
}

fn tool_json(t: &pb::Tool) -> Value {
    json!({"name": t.name, "version": t.version, "kind": t.kind, "description": t.description,
           "input_schema": schema(&t.input_schema), "output_schema": schema(&t.output_schema),
           "config": schema(&t.config)})
}

fn bad_usage(message: String) -> ClientError {
    ClientError::Input(message)
}

/// Calls `name` with `args` and prints the output (JSON either way: a tool's output is JSON).
pub async fn call(
    c: &mut Client,
    name: &str,
    args: &str,
    stream: bool,
    json_out: bool,
) -> Result<(), ClientError> {
    serde_json::from_str::<Value>(args)
        .map_err(|e| bad_usage(format!("--args is not JSON: {e}")))?;
    let request = pb::CallToolRequest {
        name: name.to_string(),
        args: args.to_string(),
    };
    let result = if stream {
        let mut events = c.tools.call_tool_stream(request).await?.into_inner();
        let mut result = None;
        while let Some(event) = events.message().await? {
            match event.event {
                Some(pb::call_tool_event::Event::Progress(p)) => eprintln!("… {p}"),
                Some(pb::call_tool_event::Event::Partial(p)) => eprintln!("… partial: {p}"),
                Some(pb::call_tool_event::Event::Result(r)) => result = Some(r),
                None => {}
            }
        }
        result.ok_or_else(|| bad_usage("the stream ended without a result".into()))?
    } else {
        c.tools.call_tool(request).await?.into_inner()
    };
    let output: Value =
        serde_json::from_str(&result.output).unwrap_or(Value::String(result.output));
    if json_out {
        print_json(&json!({"tool": name, "version": result.version,
                           "duration_us": result.duration_us, "output": output}));
    } else {
        print_json(&output);
        eprintln!(
            "({name} {}, {:.1} ms)",
            result.version,
            result.duration_us as f64 / 1000.0
        );
    }
    Ok(())
}

/// Runs one tools command on `c`; with `json_out`, prints JSON for scripts.
pub async fn run(c: &mut Client, command: ToolsCommand, json_out: bool) -> Result<(), ClientError> {
    match command {
        ToolsCommand::List => {
            let tools = c
                .tools
                .list_tools(pb::ListToolsRequest {})
                .await?
                .into_inner()
                .tools;
            if json_out {
                print_json(&Value::Array(tools.iter().map(tool_json).collect()));
            } else {
                let mut t = table(&["NAME", "VERSION", "KIND", "DESCRIPTION"]);
                for tool in &tools {
                    let mut description = tool.description.clone();
                    if description.chars().count() > 70 {
                        description =
                            format!("{}…", description.chars().take(70).collect::<String>());
                    }
                    t.add_row(vec![
                        tool.name.clone(),
                        tool.version.clone(),
                        tool.kind.clone(),
                        description,
                    ]);
                }
                println!("{t}");
            }
        }
        ToolsCommand::Describe { name } => {
            let tool = c
                .tools
                .describe_tool(pb::DescribeToolRequest { name })
                .await?
                .into_inner();
            if json_out {
                print_json(&tool_json(&tool));
            } else {
                println!(
                    "{} {} ({})\n{}\n",
                    tool.name, tool.version, tool.kind, tool.description
                );
                println!("input:");
                print_json(&schema(&tool.input_schema));
                println!("output:");
                print_json(&schema(&tool.output_schema));
                // A composite's steps, a plugin's manifest (what it asks for and was granted).
                if let Ok(config) = serde_json::from_str::<Value>(&tool.config) {
                    let title = if tool.kind == "wasm" {
                        "manifest"
                    } else {
                        "config"
                    };
                    println!("{title}:");
                    print_json(&config);
                }
            }
        }
        ToolsCommand::Register { file, wasm } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| bad_usage(format!("{}: {e}", file.display())))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| bad_usage(format!("{}: not JSON: {e}", file.display())))?;
            let text_of = |key: &str| match &v[key] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let (kind, config, module) = match &wasm {
                Some(path) => {
                    let module = std::fs::read(path)
                        .map_err(|e| bad_usage(format!("{}: {e}", path.display())))?;
                    let mut manifest = json!({});
                    for key in ["permissions", "limits"] {
                        if let Some(x) = v.get(key) {
                            manifest[key] = x.clone();
                        }
                    }
                    ("wasm", manifest, module)
                }
                None => (
                    "composite",
                    json!({"steps": v["steps"], "output": v.get("output")}),
                    Vec::new(),
                ),
            };
            let tool = c
                .tools
                .register_tool(pb::RegisterToolRequest {
                    tool: Some(pb::Tool {
                        name: text_of("name"),
                        version: text_of("version"),
                        description: text_of("description"),
                        input_schema: text_of("input_schema"),
                        output_schema: text_of("output_schema"),
                        kind: kind.into(),
                        config: config.to_string(),
                        ..Default::default()
                    }),
                    module,
                })
                .await?
                .into_inner();
            if json_out {
                print_json(&tool_json(&tool));
            } else {
                println!("registered {} {}", tool.name, tool.version);
            }
        }
        ToolsCommand::Grant { name, grants } => {
            let tool = c
                .tools
                .grant_tool(pb::GrantToolRequest {
                    name: name.clone(),
                    grants,
                })
                .await?
                .into_inner();
            if json_out {
                print_json(&tool_json(&tool));
            } else {
                let config: Value = serde_json::from_str(&tool.config).unwrap_or_default();
                println!(
                    "{} granted {}",
                    tool.name,
                    match config["granted"].as_array() {
                        Some(g) if !g.is_empty() => g
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", "),
                        _ => "nothing".into(),
                    }
                );
            }
        }
        ToolsCommand::Delete { name } => {
            c.tools
                .delete_tool(pb::DeleteToolRequest { name: name.clone() })
                .await?;
            if json_out {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted {name}");
            }
        }
        ToolsCommand::Call { name, args, stream } => {
            call(c, &name, &args, stream, json_out).await?
        }
        ToolsCommand::Stats => {
            let stats = c
                .tools
                .tool_stats(pb::ToolStatsRequest {})
                .await?
                .into_inner()
                .stats;
            if json_out {
                print_json(&Value::Array(
                    stats
                        .iter()
                        .map(|s| json!({"tool": s.tool, "calls": s.calls, "errors": s.errors,
                                        "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "last_error": s.last_error}))
                        .collect(),
                ));
            } else {
                let mut t = table(&["TOOL", "CALLS", "ERRORS", "P50 MS", "P99 MS", "LAST ERROR"]);
                for s in &stats {
                    t.add_row(vec![
                        s.tool.clone(),
                        s.calls.to_string(),
                        s.errors.to_string(),
                        format!("{:.2}", s.p50_ms),
                        format!("{:.2}", s.p99_ms),
                        s.last_error.chars().take(60).collect(),
                    ]);
                }
                println!("{t}");
            }
        }
        ToolsCommand::HttpPolicy {
            allow,
            allow_private,
            clear,
        } => {
            let policy = if allow.is_empty() && !clear && !allow_private {
                c.tools
                    .get_http_policy(pb::GetHttpPolicyRequest {})
                    .await?
                    .into_inner()
            } else {
                c.tools
                    .set_http_policy(pb::HttpPolicy {
                        allow_hosts: allow,
                        allow_private,
                    })
                    .await?
                    .into_inner()
            };
            if json_out {
                print_json(
                    &json!({"allow_hosts": policy.allow_hosts, "allow_private": policy.allow_private}),
                );
            } else {
                println!(
                    "allowed hosts: {}\nprivate addresses: {}",
                    if policy.allow_hosts.is_empty() {
                        "none".into()
                    } else {
                        policy.allow_hosts.join(", ")
                    },
                    if policy.allow_private {
                        "allowed"
                    } else {
                        "refused"
                    }
                );
            }
        }
    }
    Ok(())
}

/// A mount as JSON: the names of its env variables and headers, never their values (they may
/// hold what a placeholder does not hide, a literal token).
fn mount_json(m: &pb::McpMount) -> Value {
    let mut env: Vec<&String> = m.env.keys().collect();
    env.sort();
    let mut headers: Vec<&String> = m.headers.keys().collect();
    headers.sort();
    json!({"prefix": m.prefix, "command": m.command, "args": m.args, "env": env,
           "url": m.url, "headers": headers,
           "timeout_ms": m.timeout_ms, "created_at_ms": m.created_at_ms})
}

/// Runs one `nexusctl mcp` command.
pub async fn run_mcp(
    c: &mut Client,
    command: McpCommand,
    json_out: bool,
) -> Result<(), ClientError> {
    match command {
        McpCommand::Mount {
            prefix,
            env,
            url,
            headers,
            timeout_ms,
            command,
        } => {
            let pairs = |flag: &str, pairs: Vec<String>| {
                let mut out = std::collections::HashMap::new();
                for pair in pairs {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| bad_usage(format!("--{flag} {pair:?}: use NAME=VALUE")))?;
                    out.insert(k.to_string(), v.to_string());
                }
                Ok::<_, ClientError>(out)
            };
            let mut mount = pb::McpMount {
                prefix,
                env: pairs("env", env)?,
                headers: pairs("header", headers)?,
                timeout_ms,
                ..Default::default()
            };
            match url {
                Some(url) => mount.url = url,
                None => {
                    let (program, args) = command
                        .split_first()
                        .ok_or_else(|| bad_usage("the command to run comes after --".into()))?;
                    mount.command = program.clone();
                    mount.args = args.to_vec();
                }
            }
            let m = c.tools.mount_mcp_server(mount).await?.into_inner();
            if json_out {
                print_json(&mount_json(&m));
            } else if m.url.is_empty() {
                println!("mounted {} at {}.*", m.command, m.prefix);
            } else {
                println!("mounted {} at {}.*", m.url, m.prefix);
            }
        }
        McpCommand::Unmount { prefix } => {
            c.tools
                .unmount_mcp_server(pb::UnmountMcpServerRequest {
                    prefix: prefix.clone(),
                })
                .await?;
            if json_out {
                print_json(&json!({"unmounted": prefix}));
            } else {
                println!("unmounted {prefix}");
            }
        }
        McpCommand::List => {
            let mounts = c
                .tools
                .list_mcp_servers(pb::ListMcpServersRequest {})
                .await?
                .into_inner()
                .mounts;
            if json_out {
                print_json(&Value::Array(mounts.iter().map(mount_json).collect()));
            } else {
                let mut t = table(&["PREFIX", "SERVER", "ENV OR HEADERS"]);
                for m in &mounts {
                    let mut names: Vec<&String> = m.env.keys().chain(m.headers.keys()).collect();
                    names.sort();
                    let server = if m.url.is_empty() {
                        std::iter::once(m.command.clone())
                            .chain(m.args.iter().cloned())
                            .collect::<Vec<_>>()
                            .join(" ")
                    } else {
                        m.url.clone()
                    };
                    t.add_row(vec![
                        m.prefix.clone(),
                        server,
                        names.into_iter().cloned().collect::<Vec<_>>().join(", "),
                    ]);
                }
                println!("{t}");
            }
        }
    }
    Ok(())
}
