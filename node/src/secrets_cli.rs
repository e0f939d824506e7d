//! `nexus secrets`: an alias of `nexusctl secrets`, kept for one release (the secrets
//! commands moved to nexusctl with the other client commands). Same flags as before:
//! `--endpoint` / `NEXUS_ENDPOINT`, `--token` / `NEXUS_TOKEN`, `-o json`.

use clap::ValueEnum;
use nexus_client::secrets_cli::SecretsCommand;
use nexus_client::{Client, DEFAULT_ENDPOINT};

#[derive(clap::Args)]
pub struct SecretsArgs {
    #[arg(long, global = true, env = "NEXUS_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// API key or root key, when the node requires authentication.
    #[arg(long, global = true, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub fn run(args: SecretsArgs) -> anyhow::Result<()> {
    eprintln!(
        "note: `nexus secrets` is now `nexusctl secrets`; this alias goes in the next release"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut c = Client::connect_with_token(&args.endpoint, args.token.as_deref()).await?;
        nexus_client::secrets_cli::run(&mut c, args.command, args.output == Output::Json).await?;
        Ok(())
    })
}
