//! `nexus secrets`: the secrets manager from the command line, over the gRPC API of a node
//! (`--endpoint` / `NEXUS_ENDPOINT`, `--token` / `NEXUS_TOKEN`, as nexusctl).

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use nexus_client::{pb, Client, DEFAULT_ENDPOINT};
use serde_json::json;
use zeroize::Zeroizing;

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

#[derive(Subcommand)]
enum SecretsCommand {
    /// Store a new version of NAME: VALUE, or the contents of --from-file, or standard input.
    Set {
        name: String,
        /// The value (beware of shell history; stdin or --from-file avoid it).
        value: Option<String>,
        #[arg(long, conflicts_with = "value")]
        from_file: Option<PathBuf>,
    },
    /// Print a secret's value (needs secrets:read).
    Get {
        name: String,
        /// A kept version (default: the current one).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Names, versions and times; never values.
    List,
    /// Delete a secret with all its versions.
    Delete { name: String },
    /// Re-wrap every tenant's data key under the node's current master key (root key).
    RotateMasterKey,
}

fn time(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64),
    )
    .to_string()
}

pub fn run(args: SecretsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: SecretsArgs) -> anyhow::Result<()> {
    let mut c = Client::connect_with_token(&args.endpoint, args.token.as_deref()).await?;
    let json_out = args.output == Output::Json;
    match args.command {
        SecretsCommand::Set {
            name,
            value,
            from_file,
        } => {
            let value = Zeroizing::new(match (value, from_file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
                (None, None) => {
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf)?;
                    // A value piped with `echo` ends in a newline that is not part of it.
                    if buf.ends_with(b"\n") {
                        buf.pop();
                    }
                    buf
                }
            });
            let info = c
                .secrets
                .set_secret(pb::SetSecretRequest {
                    name,
                    value: value.to_vec(),
                })
                .await
                .map_err(status)?
                .into_inner();
            let version = info.versions.last().map_or(0, |v| v.version);
            if json_out {
                println!("{}", json!({"name": info.name, "version": version}));
            } else {
                println!("stored {} version {version}", info.name);
            }
        }
        SecretsCommand::Get { name, version } => {
            let r = c
                .secrets
                .get_secret(pb::GetSecretRequest { name, version })
                .await
                .map_err(status)?
                .into_inner();
            let value = Zeroizing::new(r.value);
            if json_out {
                println!(
                    "{}",
                    json!({"name": r.name, "version": r.version,
                           "value": String::from_utf8_lossy(&value)})
                );
            } else {
                std::io::stdout().write_all(&value)?;
                println!();
            }
        }
        SecretsCommand::List => {
            let secrets = c
                .secrets
                .list_secrets(pb::ListSecretsRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .secrets;
            if json_out {
                let v: Vec<_> = secrets
                    .iter()
                    .map(|s| {
                        json!({"name": s.name, "created_at_ms": s.created_at_ms,
                               "versions": s.versions.iter().map(|v| json!({"version": v.version, "created_at_ms": v.created_at_ms})).collect::<Vec<_>>()})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut t = Table::new();
                t.load_preset(UTF8_BORDERS_ONLY)
                    .set_header(["NAME", "VERSION", "KEPT", "CREATED", "UPDATED"]);
                for s in &secrets {
                    let last = s.versions.last();
                    t.add_row(vec![
                        s.name.clone(),
                        last.map_or(String::new(), |v| v.version.to_string()),
                        s.versions
                            .iter()
                            .map(|v| v.version.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        time(s.created_at_ms),
                        last.map_or(String::new(), |v| time(v.created_at_ms)),
                    ]);
                }
                println!("{t}");
            }
        }
        SecretsCommand::Delete { name } => {
            c.secrets
                .delete_secret(pb::DeleteSecretRequest { name: name.clone() })
                .await
                .map_err(status)?;
            if json_out {
                println!("{}", json!({"deleted": name}));
            } else {
                println!("deleted {name}");
            }
        }
        SecretsCommand::RotateMasterKey => {
            let r = c
                .secrets
                .rotate_master_key(pb::RotateMasterKeyRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if json_out {
                println!(
                    "{}",
                    json!({"rewrapped": r.rewrapped, "already_current": r.already_current,
                           "master_key_id": r.master_key_id})
                );
            } else {
                println!(
                    "re-wrapped {} data keys under master key {} ({} already were)",
                    r.rewrapped, r.master_key_id, r.already_current
                );
            }
        }
    }
    Ok(())
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}
