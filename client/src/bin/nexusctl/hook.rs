//! `nexusctl hook` (triggers and outbound webhooks on a tenant's events) and
//! `nexusctl inbound` (signed HTTP endpoints that publish events).

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use nexus_client::output::{print_json, table};
use nexus_client::{pb, Client, ClientError};

use super::{time, truncate, Output};

#[derive(Subcommand, Clone)]
pub enum HookCommand {
    /// A trigger (`--tool`) or webhook (`--url`, `--secret`) for events matching `--topic`:
    /// `nexusctl hook add on-order --topic 'order.>' --tool workflow.start
    /// --args '{"workflow":"ship","input":"${event.data}","id":"${event.id}"}'`.
    Add(Box<AddArgs>),
    List,
    Show {
        name: String,
    },
    /// Begin no new delivery (one in progress finishes).
    Pause {
        name: String,
    },
    /// Go on from where it was.
    Resume {
        name: String,
    },
    Delete {
        name: String,
    },
    /// The delivery log, newest first.
    Deliveries {
        name: String,
        /// Only the dead-letter list.
        #[arg(long)]
        dead: bool,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Deliver a dead delivery again.
    Replay {
        name: String,
        seq: u64,
    },
}

#[derive(Args, Clone)]
pub struct AddArgs {
    name: String,
    /// A topic pattern (`*` one token, `>` the rest); repeat for more.
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    /// A trigger: the tool each matching event calls.
    #[arg(long, conflicts_with_all = ["url", "secret"], required_unless_present = "url")]
    tool: Option<String>,
    /// The tool's arguments; ${event.topic}, ${event.data}, ${event.seq}, ${event.id} are
    /// filled in for each event.
    #[arg(long, default_value = "{}", requires = "tool")]
    args: String,
    /// A webhook: the URL each matching event is POSTed to (on the tenant's http allow-list).
    #[arg(long, requires = "secret")]
    url: Option<String>,
    /// The tenant secret whose value signs each webhook request.
    #[arg(long)]
    secret: Option<String>,
    #[arg(long, default_value = "")]
    description: String,
    /// Attempts per event in all (1: no retry).
    #[arg(long, default_value_t = 5)]
    attempts: u32,
    #[arg(long, default_value = "1s")]
    backoff: String,
    #[arg(long, default_value = "60s")]
    max_backoff: String,
    #[arg(long, default_value = "10s")]
    timeout: String,
    /// Begin after this event number (default: after the tenant's last event now).
    #[arg(long, default_value_t = 0)]
    start_after: u64,
    #[arg(long, default_value_t = 100)]
    keep_deliveries: u32,
    /// Replace the hook of this name (keeping its place and deliveries).
    #[arg(long)]
    replace: bool,
}

#[derive(Subcommand, Clone)]
pub enum InboundCommand {
    /// An endpoint that publishes each signed POST's body on `--topic`.
    Add {
        name: String,
        #[arg(long)]
        topic: String,
        /// The tenant secret whose value requests are signed with.
        #[arg(long)]
        secret: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    List,
    Delete {
        name: String,
    },
}

fn duration_ms(flag: &str, text: &str) -> Result<u64, ClientError> {
    humantime::parse_duration(text)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| ClientError::Input(format!("--{flag} {text:?}: {e} (500ms, 10s, 1m)")))
}

fn request(a: &AddArgs) -> Result<pb::Hook, ClientError> {
    let target = match (&a.tool, &a.url, &a.secret) {
        (Some(tool), _, _) => {
            serde_json::from_str::<Value>(&a.args)
                .map_err(|e| ClientError::Input(format!("--args is not JSON: {e}")))?;
            pb::hook::Target::Tool(pb::HookTool {
                tool: tool.clone(),
                args: a.args.clone(),
            })
        }
        (None, Some(url), Some(secret)) => pb::hook::Target::Webhook(pb::HookWebhook {
            url: url.clone(),
            secret: secret.clone(),
        }),
        _ => {
            return Err(ClientError::Input(
                "--tool, or --url with --secret, is required".into(),
            ))
        }
    };
    Ok(pb::Hook {
        name: a.name.clone(),
        description: a.description.clone(),
        topics: a.topics.clone(),
        target: Some(target),
        retry: Some(pb::RetryPolicy {
            max_attempts: a.attempts,
            initial_backoff_ms: duration_ms("backoff", &a.backoff)?,
            max_backoff_ms: duration_ms("max-backoff", &a.max_backoff)?,
            timeout_ms: duration_ms("timeout", &a.timeout)?,
        }),
        keep_deliveries: a.keep_deliveries,
        start_after: a.start_after,
        ..Default::default()
    })
}

fn target_text(h: &pb::Hook) -> (String, String) {
    match &h.target {
        Some(pb::hook::Target::Tool(t)) => ("trigger".into(), format!("{} {}", t.tool, t.args)),
        Some(pb::hook::Target::Webhook(w)) => ("webhook".into(), w.url.clone()),
        None => ("?".into(), String::new()),
    }
}

fn hook_json(h: &pb::Hook) -> Value {
    let (kind, _) = target_text(h);
    let target = match &h.target {
        Some(pb::hook::Target::Tool(t)) => json!({"tool": t.tool,
            "args": serde_json::from_str::<Value>(&t.args).unwrap_or(Value::String(t.args.clone()))}),
        Some(pb::hook::Target::Webhook(w)) => json!({"url": w.url, "secret": w.secret}),
        None => Value::Null,
    };
    let r = h.retry.unwrap_or_default();
    json!({"name": h.name, "kind": kind, "description": h.description, "topics": h.topics,
           "target": target, "owner": h.owner, "paused": h.paused, "cursor": h.cursor,
           "delivering": h.delivering, "delivered": h.delivered, "dead": h.dead,
           "keep_deliveries": h.keep_deliveries,
           "retry": {"max_attempts": r.max_attempts, "initial_backoff_ms": r.initial_backoff_ms,
                     "max_backoff_ms": r.max_backoff_ms, "timeout_ms": r.timeout_ms},
           "created_at_ms": h.created_at_ms, "updated_at_ms": h.updated_at_ms})
}

fn delivery_json(d: &pb::Delivery) -> Value {
    json!({"id": d.id, "hook": d.hook, "seq": d.seq, "topic": d.topic, "state": d.state,
           "attempt": d.attempt, "node": d.node, "first_started_ms": d.first_started_ms,
           "started_ms": d.started_ms, "finished_ms": d.finished_ms, "output": d.output,
           "error": d.error, "retry_at_ms": d.retry_at_ms, "interrupted": d.interrupted,
           "replayed": d.replayed})
}

fn inbound_json(i: &pb::Inbound) -> Value {
    json!({"name": i.name, "description": i.description, "topic": i.topic, "secret": i.secret,
           "path": i.path, "owner": i.owner, "received": i.received, "created_at_ms": i.created_at_ms})
}

fn get(name: String) -> pb::GetHookRequest {
    pb::GetHookRequest {
        name,
        ..Default::default()
    }
}

pub async fn run(c: &mut Client, out: Output, command: HookCommand) -> Result<(), ClientError> {
    let json_out = out == Output::Json;
    let show = |h: &pb::Hook, verb: &str| {
        if json_out {
            print_json(&hook_json(h));
        } else {
            let (kind, target) = target_text(h);
            println!(
                "{verb} {kind} {} ({} -> {})",
                h.name,
                h.topics.join(", "),
                target
            );
        }
    };
    match command {
        HookCommand::Add(a) => {
            let req = request(&a)?;
            let h = if a.replace {
                c.hooks.update_hook(req).await?
            } else {
                c.hooks.put_hook(req).await?
            }
            .into_inner();
            show(&h, if a.replace { "updated" } else { "added" });
        }
        HookCommand::List => {
            let all = c
                .hooks
                .list_hooks(pb::ListHooksRequest::default())
                .await?
                .into_inner()
                .hooks;
            if json_out {
                print_json(&Value::Array(all.iter().map(hook_json).collect()));
            } else {
                let mut t = table(&[
                    "NAME",
                    "KIND",
                    "TOPICS",
                    "TARGET",
                    "STATE",
                    "AT",
                    "DELIVERED",
                    "DEAD",
                ]);
                for h in &all {
                    let (kind, target) = target_text(h);
                    let state = if h.paused {
                        "paused".to_string()
                    } else if h.delivering > 0 {
                        format!("delivering {}", h.delivering)
                    } else {
                        "idle".into()
                    };
                    t.add_row(vec![
                        h.name.clone(),
                        kind,
                        truncate(&h.topics.join(", "), 30),
                        truncate(&target, 40),
                        state,
                        h.cursor.to_string(),
                        h.delivered.to_string(),
                        h.dead.to_string(),
                    ]);
                }
                println!("{t}");
            }
        }
        HookCommand::Show { name } => {
            let h = c.hooks.get_hook(get(name)).await?.into_inner();
            if json_out {
                print_json(&hook_json(&h));
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&hook_json(&h)).unwrap_or_default()
                );
            }
        }
        HookCommand::Pause { name } => {
            let h = c.hooks.pause_hook(get(name)).await?.into_inner();
            show(&h, "paused");
        }
        HookCommand::Resume { name } => {
            let h = c.hooks.resume_hook(get(name)).await?.into_inner();
            show(&h, "resumed");
        }
        HookCommand::Delete { name } => {
            c.hooks.delete_hook(get(name.clone())).await?;
            if json_out {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted hook {name} and its deliveries");
            }
        }
        HookCommand::Deliveries { name, dead, limit } => {
            let all = c
                .hooks
                .list_deliveries(pb::ListDeliveriesRequest {
                    name,
                    limit,
                    dead,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .deliveries;
            if json_out {
                print_json(&Value::Array(all.iter().map(delivery_json).collect()));
            } else {
                let mut t = table(&[
                    "DELIVERY",
                    "TOPIC",
                    "STATE",
                    "ATTEMPT",
                    "STARTED",
                    "OUTPUT / ERROR",
                ]);
                for d in &all {
                    let state = match d.state.as_str() {
                        "waiting" => format!("retry at {}", time(d.retry_at_ms)),
                        other => other.to_string(),
                    };
                    let text = if d.error.is_empty() {
                        &d.output
                    } else {
                        &d.error
                    };
                    t.add_row(vec![
                        d.id.clone(),
                        truncate(&d.topic, 30),
                        state,
                        d.attempt.to_string(),
                        time(d.first_started_ms),
                        truncate(text, 60),
                    ]);
                }
                println!("{t}");
            }
        }
        HookCommand::Replay { name, seq } => {
            let d = c
                .hooks
                .replay_delivery(pb::ReplayDeliveryRequest { name, seq })
                .await?
                .into_inner();
            if json_out {
                print_json(&delivery_json(&d));
            } else {
                println!("delivering {} again (now)", d.id);
            }
        }
    }
    Ok(())
}

pub async fn run_inbound(
    c: &mut Client,
    out: Output,
    command: InboundCommand,
) -> Result<(), ClientError> {
    let json_out = out == Output::Json;
    match command {
        InboundCommand::Add {
            name,
            topic,
            secret,
            description,
        } => {
            let i = c
                .hooks
                .put_inbound(pb::Inbound {
                    name,
                    description,
                    topic,
                    secret,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if json_out {
                print_json(&inbound_json(&i));
            } else {
                println!(
                    "inbound {}: POST {} (signed with secret {}) publishes on {}",
                    i.name, i.path, i.secret, i.topic
                );
            }
        }
        InboundCommand::List => {
            let all = c
                .hooks
                .list_inbound(pb::ListHooksRequest::default())
                .await?
                .into_inner()
                .inbound;
            if json_out {
                print_json(&Value::Array(all.iter().map(inbound_json).collect()));
            } else {
                let mut t = table(&["NAME", "PATH", "TOPIC", "SECRET", "RECEIVED"]);
                for i in &all {
                    t.add_row(vec![
                        i.name.clone(),
                        i.path.clone(),
                        i.topic.clone(),
                        i.secret.clone(),
                        i.received.to_string(),
                    ]);
                }
                println!("{t}");
            }
        }
        InboundCommand::Delete { name } => {
            c.hooks.delete_inbound(get(name.clone())).await?;
            if json_out {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted inbound endpoint {name}");
            }
        }
    }
    Ok(())
}
