//! `nexusctl secrets` (and its alias `nexus secrets`, kept for one release): the secrets
//! manager from the command line, over the gRPC API.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::json;
use zeroize::Zeroizing;

use crate::{pb, Client, ClientError};

#[derive(Subcommand, Clone)]
pub enum SecretsCommand {
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

/// Runs one secrets command on `c`; with `json_out`, prints JSON for scripts.
pub async fn run(
    c: &mut Client,
    command: SecretsCommand,
    json_out: bool,
) -> Result<(), ClientError> {
    match command {
        SecretsCommand::Set {
            name,
            value,
            from_file,
        } => {
            let value = Zeroizing::new(match (value, from_file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .map_err(|e| ClientError::Input(format!("reading {}: {e}", path.display())))?,
                (None, None) => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .map_err(|e| ClientError::Input(format!("reading standard input: {e}")))?;
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
                .await?
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
                .await?
                .into_inner();
            let value = Zeroizing::new(r.value);
            if json_out {
                println!(
                    "{}",
                    json!({"name": r.name, "version": r.version,
                           "value": String::from_utf8_lossy(&value)})
                );
            } else {
                std::io::stdout()
                    .write_all(&value)
                    .map_err(|e| ClientError::Input(format!("writing the value: {e}")))?;
                println!();
            }
        }
        SecretsCommand::List => {
            let secrets = c
                .secrets
                .list_secrets(pb::ListSecretsRequest {})
                .await?
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
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
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
                .await?;
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
                .await?
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
