//! `nexus-bench tools`: tool calls per second and their latency on one node: the built-in
//! `echo` over gRPC, the same over MCP (streamable HTTP at `/mcp`), and the example
//! WebAssembly plugin (`plugins/examples/echo.c`) over gRPC, at each concurrency; on a node
//! without authentication and on one with it (an API key per call, RBAC, an audit record
//! per call, which is a replicated write).

use super::*;

#[derive(clap::Args)]
pub(crate) struct ToolsArgs {
    /// The example plugin's module (default: built with plugins/build.sh into the work dir).
    #[arg(long)]
    plugin: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
}

/// What is called, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    EchoGrpc,
    EchoMcp,
    WasmGrpc,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::EchoGrpc => "echo over gRPC",
            Route::EchoMcp => "echo over MCP (HTTP)",
            Route::WasmGrpc => "WebAssembly echo over gRPC",
        }
    }
}

const PATHS: &[Route] = &[Route::EchoGrpc, Route::EchoMcp, Route::WasmGrpc];
const SETUPS: &[&str] = &["no authentication", "API key, RBAC, audit"];
const PLUGIN: &str = "bench.echo";

fn plugin_module(a: &ToolsArgs) -> anyhow::Result<Vec<u8>> {
    if let Some(p) = &a.plugin {
        return std::fs::read(p).with_context(|| p.display().to_string());
    }
    let out = a.load.work_dir.join("plugins");
    let status = Command::new("bash")
        .arg("plugins/build.sh")
        .arg(&out)
        .arg("echo")
        .stdout(Stdio::null())
        .status()
        .context("running plugins/build.sh (run from the repository's root, or pass --plugin)")?;
    if !status.success() {
        bail!("plugins/build.sh failed (clang and wasm-ld: apt install clang lld)");
    }
    Ok(std::fs::read(out.join("echo.wasm"))?)
}

pub(crate) async fn tools_bench(a: ToolsArgs) -> anyhow::Result<()> {
    let bin = nexus_binary(a.load.nexus.clone())?;
    std::fs::create_dir_all(&a.load.work_dir)?;
    let module = plugin_module(&a)?;
    let mut results: Vec<Vec<(Route, RunResult)>> = Vec::new();
    for (i, setup) in SETUPS.iter().enumerate() {
        eprintln!("[{}/{}] {setup}: starting a node", i + 1, SETUPS.len());
        let (node, data, token) =
            auth::start_bench_node(&bin, &a.load.work_dir, "tools", i, i > 0).await?;
        // The plugin, registered by the root (or, without authentication, the local user)
        // in the tenant the key belongs to.
        let mut admin =
            Client::connect_with_token(&node.endpoint, (i > 0).then_some(auth::BENCH_ROOT)).await?;
        let register = pb::RegisterToolRequest {
            tool: Some(pb::Tool {
                name: PLUGIN.into(),
                version: "1.0.0".into(),
                description: "the example echo plugin".into(),
                kind: "wasm".into(),
                config: "{}".into(),
                ..Default::default()
            }),
            module: module.clone(),
        };
        if i == 0 {
            admin.tools.register_tool(register).await?;
        } else {
            // The root registers in a tenant through a key of that tenant's admin.
            let key = admin
                .iam
                .create_api_key(pb::CreateApiKeyRequest {
                    tenant: "bench".into(),
                    service_account: "builder".into(),
                    roles: vec!["developer".into()],
                    ..Default::default()
                })
                .await?
                .into_inner()
                .token;
            let mut dev = Client::connect_with_token(&node.endpoint, Some(&key)).await?;
            dev.tools.register_tool(register).await?;
        }
        let mcp_url = format!("http://{}/mcp", node.http);
        let connect = |path: Route| {
            let token = token.clone();
            let endpoint = node.endpoint.clone();
            let mcp_url = mcp_url.clone();
            async move {
                Ok::<_, anyhow::Error>(match path {
                    Route::EchoGrpc | Route::WasmGrpc => Driver::Tool(
                        Client::connect_with_token(&endpoint, token.as_deref())
                            .await?
                            .tools,
                        if path == Route::EchoGrpc {
                            "echo"
                        } else {
                            PLUGIN
                        }
                        .into(),
                    ),
                    Route::EchoMcp => Driver::Mcp {
                        http: {
                            // reqwest takes the process's crypto provider (it has none of its own).
                            let _ = rustls::crypto::ring::default_provider().install_default();
                            reqwest::Client::builder().tcp_nodelay(true).build()?
                        },
                        url: mcp_url,
                        token,
                    },
                })
            }
        };
        let mut runs = Vec::new();
        for &path in PATHS {
            // One call first: it compiles the plugin on this node, and checks the path.
            connect(path).await?.call().await?;
            for &clients in &a.load.clients {
                let mut drivers = Vec::new();
                for _ in 0..clients {
                    drivers.push(connect(path).await?);
                }
                eprintln!(
                    "      {}, {clients} client(s), {} s",
                    path.label(),
                    a.load.seconds
                );
                let r = run_measured(
                    drivers,
                    Workload::Call,
                    a.load.seconds,
                    "",
                    &[node.child.id()],
                )
                .await?;
                runs.push((path, r));
            }
        }
        drop(node);
        let _ = std::fs::remove_dir_all(&data);
        results.push(runs);
    }

    let mut body = String::new();
    body.push_str("## Tool calls (issue 14)\n\n");
    body.push_str(&format!(
        "Command: `cargo build --release --bin nexus --bin nexus-bench && target/release/nexus-bench tools --clients {} --seconds {}`\n\n",
        a.load.clients.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        a.load.seconds,
    ));
    body.push_str(&format!(
        "Machine: {}. Date: {}. One `nexus` node (release build) per configuration; each client calls in a loop with `{{\"text\":\"hi\"}}`: the built-in `echo` over gRPC (`CallTool`), the same over MCP (a JSON-RPC `tools/call` POSTed to `/mcp`, stateless, one HTTP/1.1 connection per client), and the example plugin `plugins/examples/echo.c` (C built by `plugins/build.sh`, {} bytes) over gRPC, each call in a fresh sandbox (a pooled instance of the module compiled once, fuel, memory limit, deadline). Every call validates its arguments against the tool's schema and is counted; with authentication each also presents an API key, is authorized (`tools:call:NAME`) and appends an audit record, a replicated write. The WebAssembly row minus the gRPC echo row is what the sandbox adds.\n\n",
        machine(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        module.len(),
    ));
    body.push_str(
        "| path | clients | configuration | calls/s | p50 ms | p99 ms | server CPU µs/call |\n",
    );
    body.push_str("|---|---:|---|---:|---:|---:|---:|\n");
    for (run, (path, _)) in results[0].iter().enumerate() {
        for (i, setup) in SETUPS.iter().enumerate() {
            let r = &results[i][run].1;
            body.push_str(&format!(
                "| {} | {} | {setup} | {:.0} | {} | {} | {:.0} |\n",
                path.label(),
                r.clients,
                r.per_sec(),
                ms(r.p50),
                ms(r.p99),
                r.cpu_us_per_op,
            ));
        }
    }
    body.push('\n');
    update_section(&a.load.report, "bench:tools", &body)?;
    eprintln!("wrote {}", a.load.report.display());
    print!("{body}");
    Ok(())
}

/// One `tools/call` of `echo` over MCP's streamable HTTP, as a stateless client of the
/// 2025-06-18 revision sends it.
pub(crate) async fn mcp_echo(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() || text.contains("\"isError\":true") || !text.contains("hi") {
        bail!("MCP tools/call: {status}: {text}");
    }
    Ok(())
}
