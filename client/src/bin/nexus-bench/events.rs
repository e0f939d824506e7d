//! `nexus-bench events`: events published per second and publish-to-subscriber latency on
//! one node, with 1 and 100 subscribers over gRPC streaming and over the WebSocket API.
//! Publishers publish one event per request as fast as they can; each event carries the
//! time it was sent (this process's clock), and each subscriber records when it got it.

use super::*;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub(crate) struct EventArgs {
    /// Subscriber counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    subscribers: Vec<usize>,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Grpc,
    WebSocket,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Transport::Grpc => "gRPC stream",
            Transport::WebSocket => "WebSocket",
        }
    }
}

struct Row {
    transport: Transport,
    subscribers: usize,
    published: f64,
    delivered: f64,
    p50: u64,
    p99: u64,
}

/// Microseconds since `epoch`.
fn micros(epoch: Instant) -> u64 {
    epoch.elapsed().as_micros() as u64
}

/// One subscriber: latencies (µs) of what it got while `measuring`, until `stop`.
async fn subscriber(
    transport: Transport,
    node: &Node,
    epoch: Instant,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<tokio::task::JoinHandle<Vec<u64>>> {
    let latency =
        move |data: &serde_json::Value| data["t"].as_u64().map(|t| micros(epoch).saturating_sub(t));
    Ok(match transport {
        Transport::Grpc => {
            let mut c = Client::connect(&node.endpoint).await?;
            let mut s = c
                .events
                .subscribe(pb::SubscribeRequest {
                    patterns: vec!["bench.>".into()],
                    after_seq: None,
                })
                .await?
                .into_inner();
            ready.send(()).await?;
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Ok(Some(e))) =
                        tokio::time::timeout(Duration::from_millis(200), s.message()).await
                    else {
                        continue;
                    };
                    if measuring.load(Ordering::Relaxed) {
                        if let Ok(v) = serde_json::from_str(&e.data) {
                            lat.extend(latency(&v));
                        }
                    }
                }
                lat
            })
        }
        Transport::WebSocket => {
            let url = format!("ws://{}/ws", node.http);
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
            ws.send(Message::Text(
                r#"{"type":"subscribe","id":"b","patterns":["bench.>"]}"#.into(),
            ))
            .await?;
            // ready, then subscribed.
            for _ in 0..2 {
                ws.next().await;
            }
            ready.send(()).await?;
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(Some(Ok(Message::Text(t)))) =
                        tokio::time::timeout(Duration::from_millis(200), ws.next()).await
                    else {
                        continue;
                    };
                    if measuring.load(Ordering::Relaxed) {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) {
                            lat.extend(latency(&v["data"]));
                        }
                    }
                }
                lat
            })
        }
    })
}

async fn run_one(
    node: &Node,
    transport: Transport,
    subscribers: usize,
    publishers: usize,
    seconds: u64,
) -> anyhow::Result<Row> {
    let epoch = Instant::now();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers);
    let mut subs = Vec::new();
    for _ in 0..subscribers {
        subs.push(
            subscriber(
                transport,
                node,
                epoch,
                measuring.clone(),
                stop.clone(),
                ready_tx.clone(),
            )
            .await?,
        );
    }
    for _ in 0..subscribers {
        ready_rx.recv().await;
    }
    let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let mut c = Client::connect(&node.endpoint).await?;
        let (stop, measuring, published) = (stop.clone(), measuring.clone(), published.clone());
        pubs.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let data = serde_json::json!({"t": micros(epoch), "p": p, "i": i}).to_string();
                c.events
                    .publish(pb::PublishRequest {
                        events: vec![pb::EventInput {
                            topic: "bench.tick".into(),
                            data,
                        }],
                    })
                    .await?;
                if measuring.load(Ordering::Relaxed) {
                    published.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    // Let what is in flight arrive before the subscribers stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        p.await??;
    }
    let mut all = Vec::new();
    for s in subs {
        all.extend(s.await?);
    }
    all.sort_unstable();
    let row = Row {
        transport,
        subscribers,
        published: published.load(Ordering::Relaxed) as f64 / secs,
        delivered: all.len() as f64 / secs,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
    };
    eprintln!(
        "      {:.0} events/s published, {:.0} delivered, latency p50 {} ms, p99 {} ms",
        row.published,
        row.delivered,
        ms(row.p50),
        ms(row.p99)
    );
    Ok(row)
}

pub(crate) async fn events_bench(a: EventArgs) -> anyhow::Result<()> {
    let bin = nexus_binary(a.load.nexus.clone())?;
    std::fs::create_dir_all(&a.load.work_dir)?;
    let mut rows = Vec::new();
    let runs: Vec<(Transport, usize)> = [Transport::Grpc, Transport::WebSocket]
        .into_iter()
        .flat_map(|t| a.subscribers.iter().map(move |&s| (t, s)))
        .collect();
    for (i, (transport, subscribers)) in runs.iter().enumerate() {
        eprintln!(
            "[{}/{}] {} subscriber(s) over {}, {} publishers, {} s",
            i + 1,
            runs.len(),
            subscribers,
            transport.label(),
            a.publishers,
            a.load.seconds
        );
        // A fresh node each run: no backlog of the previous one's events.
        let data = a
            .load
            .work_dir
            .join(format!("events-{}-{i}", std::process::id()));
        let node = start_node(&bin, &data).await?;
        rows.push(
            run_one(
                &node,
                *transport,
                *subscribers,
                a.publishers,
                a.load.seconds,
            )
            .await?,
        );
        drop(node);
        let _ = std::fs::remove_dir_all(&data);
    }
    let mut body = String::from("## Events (issue 15)\n\n");
    body.push_str(&format!(
        "Command: `cargo build --release --bin nexus --bin nexus-bench && target/release/nexus-bench events --subscribers {} --publishers {} --seconds {}`\n\n",
        a.subscribers.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        a.publishers,
        a.load.seconds
    ));
    body.push_str(&format!(
        "Machine: {}. Date: {}. One `nexus` node (release build, no authentication), a fresh one per row. {} publishers each publish one event per `EventService.Publish` (a Raft write, fsynced) as fast as they can; every subscriber subscribes to `bench.>` and gets every event. Latency: from just before the publish request to the subscriber's receipt, both in the benchmark's process.\n\n",
        machine(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        a.publishers
    ));
    body.push_str("| transport | subscribers | events/s published | events/s delivered (all subscribers) | latency p50 ms | p99 ms |\n|---|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        body.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {} | {} |\n",
            r.transport.label(),
            r.subscribers,
            r.published,
            r.delivered,
            ms(r.p50),
            ms(r.p99)
        ));
    }
    body.push('\n');
    update_section(&a.load.report, "bench:events", &body)?;
    eprintln!("wrote {}", a.load.report.display());
    print!("{body}");
    Ok(())
}
