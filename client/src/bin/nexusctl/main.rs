//! `nexusctl`: the admin CLI, `nexusctl <noun> <verb>`. Tables for people, `-o json` for
//! scripts. Exit codes: 0 success, 1 the server refused the request (its message is printed),
//! 2 bad usage, 3 cannot reach the server.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod cluster;
mod conv;
mod events;
mod hook;
mod iam;
mod memory;
mod schedule;
mod search;
mod workflow;

use cluster::{ClusterCommand, MemberCommand};
use conv::ConvCommand;
use memory::MemoryCommand;
use search::SearchArgs;

use clap::{Parser, Subcommand, ValueEnum};
use nexus_client::output::{print_json, table};
use nexus_client::secrets_cli::SecretsCommand;
use nexus_client::tools_cli::{McpCommand, ToolsCommand};
use nexus_client::{pb, Client, ClientError, DEFAULT_ENDPOINT};

#[derive(Parser)]
#[command(name = "nexusctl", version, about = "Administer and use a Nexus node")]
struct Cli {
    /// Node(s) to talk to, comma separated: the next one is tried when a node cannot be
    /// reached (and, for reads, when it answers Unavailable).
    #[arg(long, global = true, env = "NEXUS_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// API key or root key, when the node requires authentication.
    #[arg(long, global = true, env = "NEXUS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA to trust for an https:// endpoint (a node with [tls]).
    #[arg(long, global = true, env = "NEXUS_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Clone)]
enum Command {
    /// The node's view of the cluster: role, term, leader, indexes, members.
    Status,
    /// Key-value memories.
    Memory {
        #[command(subcommand)]
        command: MemoryCommand,
    },
    /// Conversations and their messages.
    #[command(alias = "conversation")]
    Conv {
        #[command(subcommand)]
        command: ConvCommand,
    },
    /// Full-text search over memories and messages.
    Search(SearchArgs),
    /// Cluster membership.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Cluster operations.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Tenants (root key only).
    Tenant {
        #[command(subcommand)]
        command: iam::TenantCommand,
    },
    /// API keys of service accounts.
    Key {
        #[command(subcommand)]
        command: iam::KeyCommand,
    },
    /// Roles: built-in and custom sets of permissions.
    Role {
        #[command(subcommand)]
        command: iam::RoleCommand,
    },
    /// Role bindings: which principal holds which role.
    Binding {
        #[command(subcommand)]
        command: iam::BindingCommand,
    },
    /// Who the credentials in use are: tenant, subject, permissions.
    Whoami,
    /// The audit log: tail, verify.
    Audit {
        #[command(subcommand)]
        command: iam::AuditCommand,
    },
    /// Secrets of the tenant: set, get, list, delete; master-key rotation (root key).
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Tools: list, describe, register, delete, call, stats, http-policy.
    #[command(alias = "tool")]
    Tools {
        #[command(subcommand)]
        command: ToolsCommand,
    },
    /// External MCP servers mounted as tools: mount, unmount, list.
    Mcp {
        #[command(subcommand)]
        command: McpCommand,
    },
    /// Schedules that call a tool: add, list, show, next, pause, resume, delete, runs,
    /// replay.
    #[command(alias = "schedules")]
    Schedule {
        #[command(subcommand)]
        command: schedule::ScheduleCommand,
    },
    /// Events: publish, list, tail (follow with wildcards).
    #[command(alias = "event")]
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
    },
    /// Workflows: put, list, show, delete, start, status, cancel, runs.
    #[command(alias = "workflows")]
    Workflow {
        #[command(subcommand)]
        command: workflow::WorkflowCommand,
    },
    /// Triggers and webhooks on events: add, list, show, pause, resume, delete,
    /// deliveries, replay.
    #[command(alias = "hooks")]
    Hook {
        #[command(subcommand)]
        command: hook::HookCommand,
    },
    /// Inbound webhook endpoints that publish signed requests as events: add, list, delete.
    Inbound {
        #[command(subcommand)]
        command: hook::InboundCommand,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `7d` / `2h30m` (that long ago), RFC 3339, or Unix milliseconds.
fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now_ms() - d.as_millis() as i64);
    }
    humantime::parse_rfc3339_weak(s)
        .map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
        .map_err(|_| format!("{s:?} is not a duration (7d), an RFC 3339 time or Unix milliseconds"))
}

fn consistency(stale: bool) -> i32 {
    if stale {
        pb::Consistency::Stale as i32
    } else {
        pb::Consistency::Linearizable as i32
    }
}

fn time(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

impl Command {
    /// Reads can be retried on another node; writes only when they never reached one.
    fn is_idempotent(&self) -> bool {
        match self {
            Command::Status | Command::Search(_) => true,
            Command::Memory { command } => matches!(
                command,
                MemoryCommand::Get { .. }
                    | MemoryCommand::List { .. }
                    | MemoryCommand::Recall { .. }
            ),
            Command::Conv { command } => {
                matches!(command, ConvCommand::Show { .. } | ConvCommand::List { .. })
            }
            Command::Member { command } => matches!(command, MemberCommand::List),
            // Transferring to the node that already leads is a no-op: safe to repeat.
            Command::Cluster { .. } => true,
            Command::Whoami | Command::Audit { .. } => true,
            Command::Secrets { command } => {
                matches!(command, SecretsCommand::Get { .. } | SecretsCommand::List)
            }
            Command::Tenant { command } => matches!(command, iam::TenantCommand::List),
            Command::Tools { command } => matches!(
                command,
                ToolsCommand::List | ToolsCommand::Describe { .. } | ToolsCommand::Stats
            ),
            Command::Mcp { command } => matches!(command, McpCommand::List),
            Command::Events { command } => {
                !matches!(command, events::EventsCommand::Publish { .. })
            }
            Command::Schedule { command } => matches!(
                command,
                schedule::ScheduleCommand::List
                    | schedule::ScheduleCommand::Show { .. }
                    | schedule::ScheduleCommand::Next { .. }
                    | schedule::ScheduleCommand::Runs { .. }
                    // Pausing or resuming twice leaves the same state.
                    | schedule::ScheduleCommand::Pause { .. }
                    | schedule::ScheduleCommand::Resume { .. }
            ),
            Command::Workflow { command } => matches!(
                command,
                workflow::WorkflowCommand::List
                    | workflow::WorkflowCommand::Show { .. }
                    | workflow::WorkflowCommand::Status { .. }
                    | workflow::WorkflowCommand::Runs { .. }
            ),
            Command::Hook { command } => matches!(
                command,
                hook::HookCommand::List
                    | hook::HookCommand::Show { .. }
                    | hook::HookCommand::Deliveries { .. }
                    | hook::HookCommand::Pause { .. }
                    | hook::HookCommand::Resume { .. }
            ),
            Command::Inbound { command } => matches!(command, hook::InboundCommand::List),
            Command::Key { command } => matches!(command, iam::KeyCommand::List { .. }),
            Command::Role { command } => matches!(command, iam::RoleCommand::List { .. }),
            Command::Binding { command } => {
                matches!(command, iam::BindingCommand::List { .. })
            }
        }
    }
}

/// Runs the command against the endpoints in turn, as far as it is safe to retry.
async fn run_with_failover(cli: Cli) -> Result<(), ClientError> {
    let endpoints = nexus_client::split_endpoints(&cli.endpoint);
    let idempotent = cli.command.is_idempotent();
    let mut last = ClientError::Endpoint {
        endpoint: cli.endpoint.clone(),
        message: "no endpoint given".into(),
    };
    let tls = match &cli.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| ClientError::Endpoint {
                endpoint: cli.endpoint.clone(),
                message: format!("--ca-file {}: {e}", path.display()),
            })?;
            Some(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
        }
        None => None,
    };
    for (i, endpoint) in endpoints.iter().enumerate() {
        match run(
            endpoint,
            cli.token.as_deref(),
            tls.clone(),
            cli.output,
            cli.command.clone(),
        )
        .await
        {
            Err(e) if nexus_client::is_retryable(&e, idempotent) && i + 1 < endpoints.len() => {
                eprintln!("note: {endpoint}: {e}; trying {}", endpoints[i + 1]);
                last = e;
            }
            other => return other,
        }
    }
    Err(last)
}

async fn run(
    endpoint: &str,
    token: Option<&str>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    out: Output,
    command: Command,
) -> Result<(), ClientError> {
    let mut c = Client::connect_with(endpoint, token, tls).await?;
    match command {
        Command::Tenant { command } => iam::tenant(&mut c, out, command).await?,
        Command::Key { command } => iam::key(&mut c, out, command).await?,
        Command::Role { command } => iam::role(&mut c, out, command).await?,
        Command::Binding { command } => iam::binding(&mut c, out, command).await?,
        Command::Whoami => iam::whoami(&mut c, out).await?,
        Command::Audit { command } => iam::audit(&mut c, out, command).await?,
        Command::Secrets { command } => {
            nexus_client::secrets_cli::run(&mut c, command, out == Output::Json).await?
        }
        Command::Status => cluster::status(&mut c, out).await?,
        Command::Memory { command } => memory::run(&mut c, out, command).await?,
        Command::Conv { command } => conv::run(&mut c, out, command).await?,
        Command::Member { command } => cluster::member(&mut c, out, command).await?,
        Command::Cluster {
            command: ClusterCommand::TransferLeader { id },
        } => cluster::transfer_leader(&mut c, out, id).await?,
        Command::Search(a) => search::run(&mut c, out, a).await?,
        Command::Tools { command } => {
            nexus_client::tools_cli::run(&mut c, command, out == Output::Json).await?
        }
        Command::Mcp { command } => {
            nexus_client::tools_cli::run_mcp(&mut c, command, out == Output::Json).await?
        }
        Command::Schedule { command } => schedule::run(&mut c, out, command).await?,
        Command::Events { command } => events::run(&mut c, out, command).await?,
        Command::Workflow { command } => workflow::run(&mut c, out, command).await?,
        Command::Hook { command } => hook::run(&mut c, out, command).await?,
        Command::Inbound { command } => hook::run_inbound(&mut c, out, command).await?,
    }
    Ok(())
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`nexusctl tools list | head`)
    // panicked; a command-line tool should just stop, as `ls | head` does.
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run_with_failover(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ClientError::Status(s)) => {
            eprintln!("error: {} ({:?})", s.message(), s.code());
            if let Some(leader) = s
                .metadata()
                .get("x-nexus-leader-addr")
                .and_then(|v| v.to_str().ok())
            {
                eprintln!(
                    "hint: the leader's API is at {leader}; retry with --endpoint http://{leader}"
                );
            }
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}
