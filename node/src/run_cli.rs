//! `nexus run NAME --args JSON`: calls a tool on a running node (`--endpoint`, `--token`)
//! and prints its output, as `nexusctl tools call` does; with `--local`, on a node started
//! in this process on the data directory (no running node needed). `nexus mcp`: the same
//! node's tools as an MCP server on stdin/stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nexus_client::{pb, Client, DEFAULT_ENDPOINT};
use nexus_node::config::{Config, FlagOverrides};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The tool: echo, memory.recall, or one your tenant registered (`nexusctl tools list`).
    name: String,
    /// The arguments, a JSON object.
    #[arg(long, default_value = "{}")]
    args: String,
    /// Stream progress to stderr while the tool runs.
    #[arg(long)]
    stream: bool,
    #[arg(long, env = "NEXUS_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// API key or root key, when the node requires authentication.
    #[arg(long, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the call's version and duration with the output, as JSON.
    #[arg(long)]
    json: bool,
    /// Run in this process on the data directory, as `nexus serve` would (its nexus.toml
    /// and NEXUS_* settings, on ports of its own), then stop: no running node needed. A
    /// node already serving that directory holds it: call that node instead.
    #[arg(long)]
    local: bool,
    /// The data directory for --local (default: the configuration's, ./nexus-data).
    #[arg(long, requires = "local")]
    data_dir: Option<PathBuf>,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.local {
        return run_local(args);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut c = Client::connect_with_token(&args.endpoint, args.token.as_deref()).await?;
        nexus_client::tools_cli::call(&mut c, &args.name, &args.args, args.stream, args.json)
            .await?;
        Ok(())
    })
}

/// A free port on loopback.
fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `nexus run --local`: a node in this process on loopback ports of its own, one call, a
/// clean stop (every write it made is on disk, as after `nexus serve`).
fn run_local(args: RunArgs) -> anyhow::Result<()> {
    let config = Config::load(
        None,
        FlagOverrides {
            data_dir: args.data_dir.clone(),
            grpc_addr: Some(free_addr()?),
            http_addr: Some(free_addr()?),
            peer_addr: Some(free_addr()?),
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let endpoint = format!("http://{}", config.grpc_addr);
    let data_dir = config.data_dir.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(nexus_node::server::run(config, async {
            let _ = stopped.await;
        }));
        // Serving once the node knows its leader (a single node elects itself at once).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut client = loop {
            if server.is_finished() {
                return match (&mut server).await? {
                    Ok(()) => Err(anyhow::anyhow!("the in-process node stopped")),
                    Err(e) if format!("{e:#}").contains("LOCK") => Err(anyhow::anyhow!(
                        "a running node holds the data directory {}: call it (without --local), or stop it first",
                        data_dir.display()
                    )),
                    Err(e) => Err(e.context("starting the in-process node")),
                };
            }
            if let Ok(mut c) = Client::connect_with_token(&endpoint, args.token.as_deref()).await {
                match c.cluster.status(pb::StatusRequest {}).await {
                    Ok(s) if s.get_ref().leader_id != 0 => break c,
                    // Serving, and the token may not read the cluster's status.
                    Err(e) if e.code() != tonic::Code::Unavailable => break c,
                    _ => {}
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("the in-process node did not start within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let result = nexus_client::tools_cli::call(
            &mut client,
            &args.name,
            &args.args,
            args.stream,
            args.json,
        )
        .await;
        let _ = stop.send(());
        server.await??;
        Ok(result?)
    })
}

#[derive(clap::Args)]
pub struct McpArgs {
    #[arg(long, env = "NEXUS_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// API key or root key, when the node requires authentication.
    #[arg(long, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Serves MCP on stdio until the client closes it. Nothing but the protocol goes to stdout.
pub fn mcp(args: McpArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(nexus_node::api::mcp::serve_stdio(
        &args.endpoint,
        args.token.as_deref(),
    ))
}
