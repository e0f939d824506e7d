//! `nexus run NAME --args JSON`: calls a tool on a running node (`--endpoint`, `--token`)
//! and prints its output, as `nexusctl tools call` does. `nexus mcp`: the same node's tools
//! as an MCP server on stdin/stdout.

use nexus_client::{Client, DEFAULT_ENDPOINT};

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
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
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
