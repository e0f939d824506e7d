//! `nexus`: command-line parsing only; the work is in the library.

use std::path::PathBuf;

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
