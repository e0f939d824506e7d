//! `nexusctl events`: publish, list and follow the tenant's events.

use clap::Subcommand;
use serde_json::{json, Value};

use nexus_client::output::{print_json, table};
use nexus_client::{pb, Client, ClientError};

use super::{time, truncate, Output};

#[derive(Subcommand, Clone)]
pub enum EventsCommand {
    /// Publish an event: `nexusctl events publish task.done --data '{"id": 7}'`.
    Publish {
        topic: String,
        /// JSON data.
        #[arg(long, default_value = "null")]
        data: String,
    },
    /// The retained events that match, oldest first (`>`: all).
    List {
        #[arg(default_value = ">")]
        patterns: Vec<String>,
        /// Only events after this number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Follow the events that match as they are published (one line each; `-o json`: one
    /// JSON object per line), from now or after a number, until interrupted.
    Tail {
        #[arg(default_value = ">")]
        patterns: Vec<String>,
        /// Start after this number (the last one processed) instead of now.
        #[arg(long)]
        after: Option<u64>,
    },
}

fn event_json(e: &pb::Event) -> Value {
    json!({"seq": e.seq, "topic": e.topic, "source": e.source, "at_ms": e.at_ms,
           "data": serde_json::from_str::<Value>(&e.data).unwrap_or(Value::String(e.data.clone()))})
}

pub async fn run(c: &mut Client, out: Output, command: EventsCommand) -> Result<(), ClientError> {
    let json_out = out == Output::Json;
    match command {
        EventsCommand::Publish { topic, data } => {
            serde_json::from_str::<Value>(&data)
                .map_err(|e| ClientError::Input(format!("--data is not JSON: {e}")))?;
            let r = c
                .events
                .publish(pb::PublishRequest {
                    events: vec![pb::EventInput {
                        topic: topic.clone(),
                        data,
                    }],
                })
                .await?
                .into_inner();
            if json_out {
                print_json(&json!({"topic": topic, "seq": r.first_seq}));
            } else {
                println!("published {topic} as #{}", r.first_seq);
            }
        }
        EventsCommand::List {
            patterns,
            after,
            limit,
        } => {
            let r = c
                .events
                .list_events(pb::ListEventsRequest {
                    patterns,
                    after_seq: after,
                    limit,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if json_out {
                print_json(
                    &json!({"events": r.events.iter().map(event_json).collect::<Vec<_>>(),
                                   "next_after_seq": r.next_after_seq,
                                   "first_seq": r.first_seq, "last_seq": r.last_seq}),
                );
            } else {
                let mut t = table(&["SEQ", "AT", "TOPIC", "SOURCE", "DATA"]);
                for e in &r.events {
                    t.add_row(vec![
                        e.seq.to_string(),
                        time(e.at_ms),
                        e.topic.clone(),
                        e.source.clone(),
                        truncate(&e.data, 60),
                    ]);
                }
                println!("{t}");
                eprintln!(
                    "kept: #{} to #{}; next page: --after {}",
                    r.first_seq, r.last_seq, r.next_after_seq
                );
            }
        }
        EventsCommand::Tail { patterns, after } => {
            let mut stream = c
                .events
                .subscribe(pb::SubscribeRequest {
                    patterns,
                    after_seq: after,
                })
                .await?
                .into_inner();
            while let Some(e) = stream.message().await? {
                if json_out {
                    println!("{}", event_json(&e));
                } else {
                    println!(
                        "#{} {} {} {} {}",
                        e.seq,
                        time(e.at_ms),
                        e.topic,
                        e.source,
                        e.data
                    );
                }
            }
        }
    }
    Ok(())
}
