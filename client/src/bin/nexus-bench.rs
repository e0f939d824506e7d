//! `nexus-bench`: measured performance of a real node, written to docs/benchmarks.md.
//!
//! `nexus-bench write` measures this machine's fsync latency (the floor of one durable write),
//! starts a `nexus` from the same target directory on a temporary data directory, and drives
//! it with 1 and 64 concurrent clients writing 1 KiB values: throughput, p50/p99 latency, and
//! writes per WAL fsync (group commit), beside the node's peak memory.
//!
//! `nexus-bench cluster` starts a 3-node Nexus cluster, then a 3-member etcd cluster, on this
//! machine and drives both with the same load (1 KiB values; 1 and 64 clients; writes, then
//! linearizable reads), and writes both, and their ratio, to docs/benchmarks.md.
//!
//! `nexus-bench auth` compares one node without authentication against one with it (an API
//! key per request, RBAC, audited writes) and one with tenant quotas too, same load.
//!
//! `nexus-bench recall` starts a node with the local embedding model, remembers the labelled
//! set tests/fixtures/recall_quality.json and measures Recall in three modes (BM25 alone,
//! vectors alone, hybrid): recall@5/@10 and MRR.
//!
//! `nexus-bench semantic` loads 10,000 memories into a node with the local embedding model and
//! measures Remember and Recall latency, and conversation turns appended per second.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nexus_client::report::{machine, percentile, update_section};
use nexus_client::{pb, Client};
use nexus_proto::etcd;
use nexus_proto::etcd::kv_client::KvClient;
use nexus_proto::v1::memory_service_client::MemoryServiceClient;

#[path = "nexus-bench/auth.rs"]
mod auth;
#[path = "nexus-bench/cluster.rs"]
mod cluster;
#[path = "nexus-bench/events.rs"]
mod events;
#[path = "nexus-bench/processes.rs"]
mod processes;
#[path = "nexus-bench/recall.rs"]
mod recall;
#[path = "nexus-bench/refusals.rs"]
mod refusals;
#[path = "nexus-bench/schedules.rs"]
mod schedules;
#[path = "nexus-bench/semantic.rs"]
mod semantic;
#[path = "nexus-bench/tools.rs"]
mod tools;

use auth::{auth_bench, bench_tenant_key};
use cluster::{cluster_bench, nexus_binary};
use processes::*;
use recall::recall_bench;

#[derive(Parser)]
#[command(name = "nexus-bench", about = "Benchmarks of a real Nexus node")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Single-node write throughput and latency at several concurrencies.
    Write(WriteArgs),
    /// A 3-node Nexus cluster against a 3-node etcd cluster on this machine, same load.
    Cluster(ClusterArgs),
    /// Retrieval quality of Recall on the labelled set: hybrid against BM25 alone (and
    /// vectors alone), recall@5/@10 and MRR, with Remember and Recall latency.
    Recall(RecallArgs),
    /// What semantic memory costs end to end: Remember and Recall latency at 10,000
    /// memories, concurrent Remembers per second and the embedder's batch fill, conversation
    /// turns per second.
    Semantic(semantic::SemanticArgs),
    /// What security costs: one node without authentication against one with it (API key,
    /// RBAC check, audited writes) and with it plus tenant quotas, same load.
    Auth(AuthArgs),
    /// What a flood of bad credentials costs a legitimate client: its latency on an idle
    /// node and during the flood, the refusals' Raft log entries, the node's memory.
    Refusals(refusals::RefusalArgs),
    /// Tool calls per second and latency: echo over gRPC and over MCP, and a WebAssembly
    /// echo, without and with authentication.
    Tools(tools::ToolsArgs),
    /// How late schedules start: every-second schedules on an idle node, then under a
    /// write load.
    Schedules(schedules::ScheduleArgs),
    /// Events per second and publish-to-subscriber latency, 1 and 100 subscribers, over
    /// gRPC streaming and WebSocket.
    Events(events::EventArgs),
}

#[derive(clap::Args)]
struct AuthArgs {
    /// Workloads to run, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "write,read")]
    workloads: Vec<Workload>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(clap::Args)]
struct RecallArgs {
    /// The nexus binary (default: beside this one).
    #[arg(long)]
    nexus: Option<PathBuf>,
    /// The labelled set.
    #[arg(long, default_value = "tests/fixtures/recall_quality.json")]
    set: PathBuf,
    /// The conversation set.
    #[arg(long, default_value = "tests/fixtures/recall_conversations.json")]
    conversations: PathBuf,
    /// Vector weights of the convex fusions compared (BM25 gets 1 minus each).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.6,0.7,0.8,0.9")]
    weights: Vec<f32>,
    /// Also write each query's first 100 candidates with both retrievers' scores (JSON
    /// lines: set, query, and per candidate whether it answers, the cosine and the BM25
    /// match share), to study fusions offline.
    #[arg(long)]
    dump: Option<PathBuf>,
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    #[arg(long, default_value = "docs/benchmarks.md")]
    report: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum System {
    Nexus,
    Etcd,
}

#[derive(clap::Args)]
struct ClusterArgs {
    /// The etcd server binary (Debian's etcd-server package).
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Members of each cluster (client i talks to member i mod N).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Run one system only and print its figures without touching the report (for
    /// profiling: `perf record -a` while it runs).
    #[arg(long, value_enum)]
    only: Option<System>,
    /// Every client connects to this member (0-based) instead of member i mod N.
    #[arg(long)]
    member: Option<usize>,
    /// Workloads to run, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "write,read")]
    workloads: Vec<Workload>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(clap::Args)]
struct WriteArgs {
    #[command(flatten)]
    load: LoadArgs,
}

/// What every benchmark takes.
#[derive(clap::Args)]
struct LoadArgs {
    /// The nexus binary (default: beside this one).
    #[arg(long)]
    nexus: Option<PathBuf>,
    /// Concurrent clients, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Seconds of measurement per run (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Where data directories are made (their filesystem is what is measured).
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Markdown file to update (the section between this benchmark's markers is replaced).
    #[arg(long, default_value = "docs/benchmarks.md")]
    report: PathBuf,
}

fn ms(micros: u64) -> String {
    format!("{:.2}", micros as f64 / 1000.0)
}

/// fsync latency of the filesystem under `dir`: 4 KiB appended and fdatasync'ed, 300 times.
fn fsync_latency(dir: &Path) -> anyhow::Result<(u64, u64, f64)> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0xA5u8; 4096];
    let mut lat = Vec::new();
    let started = Instant::now();
    for _ in 0..300 {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    let per_sec = 300.0 / started.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    lat.sort_unstable();
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99), per_sec))
}

struct RunResult {
    clients: usize,
    ops: u64,
    secs: f64,
    p50: u64,
    p99: u64,
    max: u64,
    writes_per_sync: f64,
    /// Server CPU time per operation (cluster runs).
    cpu_us_per_op: f64,
}

impl RunResult {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// One client connection of a system under test: Nexus's MemoryService or etcd's KV service,
/// driven with the same operations.
#[derive(Clone)]
enum Driver {
    Nexus(MemoryServiceClient<nexus_client::Transport>),
    Etcd(KvClient<tonic::transport::Channel>),
    /// A tool, called by name over gRPC.
    Tool(
        nexus_proto::v1::tool_service_client::ToolServiceClient<nexus_client::Transport>,
        String,
    ),
    /// `echo` over MCP's streamable HTTP.
    Mcp {
        http: reqwest::Client,
        url: String,
        token: Option<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Workload {
    /// A put of a new key.
    Write,
    /// A linearizable read of one of `READ_KEYS` existing keys.
    Read,
    /// A tool call (`Driver::Tool`, `Driver::Mcp`; `nexus-bench tools` only).
    #[value(skip)]
    Call,
}

/// Keys that the read workload reads (written before it starts).
const READ_KEYS: usize = 1000;

impl Driver {
    async fn connect(system: System, endpoint: &str) -> anyhow::Result<Driver> {
        Ok(match system {
            System::Nexus => Driver::Nexus(Client::connect(endpoint).await?.memory),
            System::Etcd => Driver::Etcd(KvClient::new(
                tonic::transport::Endpoint::from_shared(endpoint.to_string())?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            )),
        })
    }

    async fn put(&mut self, key: String, value: &str) -> anyhow::Result<()> {
        match self {
            Driver::Nexus(c) => {
                c.put(pb::PutRequest {
                    namespace: "bench".into(),
                    key,
                    value: value.to_string(),
                    ..Default::default()
                })
                .await?;
            }
            Driver::Tool(..) | Driver::Mcp { .. } => bail!("not a memory client"),
            Driver::Etcd(c) => {
                c.put(etcd::PutRequest {
                    key: key.into_bytes(),
                    value: value.as_bytes().to_vec(),
                    ..Default::default()
                })
                .await?;
            }
        }
        Ok(())
    }

    /// A tool call with `{"text": "hi"}`, whose output must hold it.
    async fn call(&mut self) -> anyhow::Result<()> {
        match self {
            Driver::Tool(c, name) => {
                let out = c
                    .call_tool(pb::CallToolRequest {
                        name: name.clone(),
                        args: r#"{"text":"hi"}"#.into(),
                    })
                    .await?
                    .into_inner()
                    .output;
                if !out.contains("hi") {
                    bail!("{name} returned {out}");
                }
                Ok(())
            }
            Driver::Mcp { http, url, token } => tools::mcp_echo(http, url, token.as_deref()).await,
            _ => bail!("not a tool client"),
        }
    }

    /// A linearizable read that must find the key.
    async fn get(&mut self, key: String) -> anyhow::Result<()> {
        let found = match self {
            Driver::Nexus(c) => c
                .get(pb::GetRequest {
                    namespace: "bench".into(),
                    key: key.clone(),
                    consistency: pb::Consistency::Linearizable as i32,
                })
                .await?
                .into_inner()
                .item
                .is_some(),
            Driver::Tool(..) | Driver::Mcp { .. } => bail!("not a memory client"),
            Driver::Etcd(c) => !c
                .range(etcd::RangeRequest {
                    key: key.clone().into_bytes(),
                    serializable: false,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .kvs
                .is_empty(),
        };
        if !found {
            bail!("{key} was written but is not found");
        }
        Ok(())
    }
}

/// Runs `workload` on every driver concurrently for one second of warm-up and `seconds` of
/// measurement. With `wal_metrics` (a node's HTTP address), also the writes per WAL fsync.
async fn run_load(
    drivers: Vec<Driver>,
    workload: Workload,
    seconds: u64,
    value: &str,
    wal_metrics: Option<&str>,
) -> anyhow::Result<RunResult> {
    let clients = drivers.len();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (id, mut d) in drivers.into_iter().enumerate() {
        let (measuring, stop, value) = (measuring.clone(), stop.clone(), value.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            let mut rng = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match workload {
                    Workload::Write => d.put(format!("c{clients}/{id}/{i}"), &value).await?,
                    Workload::Read => {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        d.get(format!("r/{}", rng % READ_KEYS as u64)).await?
                    }
                    Workload::Call => d.call().await?,
                }
                if measuring.load(Ordering::Relaxed) {
                    lat.push(t.elapsed().as_micros() as u64);
                }
                i += 1;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let wal = |http: &str| {
        let http = http.to_string();
        async move {
            Ok::<_, anyhow::Error>((
                metric(&http, "nexus_wal_syncs_total").await?,
                metric(&http, "nexus_raft_proposal_batch_commands_sum").await?,
            ))
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = match wal_metrics {
        Some(h) => Some(wal(h).await?),
        None => None,
    };
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let writes_per_sync = match (wal_metrics, before) {
        (Some(h), Some((syncs0, cmds0))) => {
            let (syncs1, cmds1) = wal(h).await?;
            (cmds1 - cmds0) / (syncs1 - syncs0).max(1.0)
        }
        _ => 0.0,
    };
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    all.sort_unstable();
    Ok(RunResult {
        clients,
        ops: all.len() as u64,
        secs,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        max: all.last().copied().unwrap_or(0),
        writes_per_sync,
        cpu_us_per_op: 0.0,
    })
}

/// [`run_load`] without WAL figures, with the server CPU per operation of the processes
/// `pids` (over warm-up and measurement together), printed as it ends.
async fn run_measured(
    drivers: Vec<Driver>,
    workload: Workload,
    seconds: u64,
    value: &str,
    pids: &[u32],
) -> anyhow::Result<RunResult> {
    let cpu = || pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    let cpu0 = cpu();
    let mut r = run_load(drivers, workload, seconds, value, None).await?;
    r.cpu_us_per_op = (cpu() - cpu0) * 1e6 / (r.per_sec() * (seconds + 1) as f64);
    eprintln!(
        "        {:.0} ops/s, p50 {} ms, p99 {} ms, {:.0} µs of server CPU per op",
        r.per_sec(),
        ms(r.p50),
        ms(r.p99),
        r.cpu_us_per_op
    );
    Ok(r)
}

async fn run_writes(
    node: &Node,
    clients: usize,
    seconds: u64,
    value: &str,
) -> anyhow::Result<RunResult> {
    let mut drivers = Vec::new();
    for _ in 0..clients {
        drivers.push(Driver::connect(System::Nexus, &node.endpoint).await?);
    }
    run_load(drivers, Workload::Write, seconds, value, Some(&node.http)).await
}

async fn write_bench(WriteArgs { load: a }: WriteArgs) -> anyhow::Result<()> {
    let bin = nexus_binary(a.nexus.clone())?;
    std::fs::create_dir_all(&a.work_dir)?;
    let data = a.work_dir.join(format!("write-{}", std::process::id()));
    eprintln!(
        "[1/3] measuring fsync latency under {}",
        a.work_dir.display()
    );
    let (f50, f99, fps) = fsync_latency(&a.work_dir)?;
    eprintln!(
        "      fdatasync p50 {} ms, p99 {} ms, {:.0}/s",
        ms(f50),
        ms(f99),
        fps
    );
    eprintln!("[2/3] starting {} on {}", bin.display(), data.display());
    let node = start_node(&bin, &data).await?;
    let value = format!("\"{}\"", "v".repeat(a.value_bytes.saturating_sub(2)));
    let mut results = Vec::new();
    for (i, &clients) in a.clients.iter().enumerate() {
        eprintln!(
            "[3/3] run {}/{}: {clients} client(s) for {} s",
            i + 1,
            a.clients.len(),
            a.seconds
        );
        let r = run_writes(&node, clients, a.seconds, &value).await?;
        eprintln!(
            "      {:.0} writes/s, p50 {} ms, p99 {} ms, {:.1} writes per WAL fsync",
            r.ops as f64 / r.secs,
            ms(r.p50),
            ms(r.p99),
            r.writes_per_sync
        );
        results.push(r);
    }
    let rss = peak_rss_mib(node.child.id());
    drop(node);
    let _ = std::fs::remove_dir_all(&data);

    let mut body = String::new();
    body.push_str("## Single-node writes (issue: foundation)\n\n");
    body.push_str(&format!(
        "Command: `cargo build --release --bin nexus --bin nexus-bench && target/release/nexus-bench write --clients {} --seconds {} --value-bytes {}`\n\n",
        a.clients.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        a.seconds,
        a.value_bytes
    ));
    body.push_str(&format!(
        "Machine: {}. Date: {}. One `nexus` node (release build), data on the filesystem of `{}`; every write is a `MemoryService.Put` of a {}-byte JSON value to a new key, acknowledged only after its Raft log entry is fsynced.\n\n",
        machine(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        a.work_dir.display(),
        a.value_bytes
    ));
    body.push_str(&format!(
        "This machine's fsync (4 KiB append + fdatasync, 300 times): p50 {} ms, p99 {} ms, {:.0} fsyncs/s: the ceiling of a store that fsyncs each write alone.\n\n",
        ms(f50),
        ms(f99),
        fps
    ));
    body.push_str("| clients | writes/s | p50 ms | p99 ms | max ms | writes per WAL fsync | writes/s ÷ machine fsyncs/s |\n");
    body.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in &results {
        let tput = r.ops as f64 / r.secs;
        body.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {:.1} | {:.1} |\n",
            r.clients,
            tput,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            r.writes_per_sync,
            tput / fps
        ));
    }
    body.push_str(&format!(
        "\nPeak memory (VmHWM) of the node over the run: {rss:.0} MiB.\n\n"
    ));
    update_section(&a.report, "bench:write", &body)?;
    eprintln!("wrote {}", a.report.display());
    print!("{body}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Write(a) => write_bench(a).await,
        Bench::Cluster(a) => cluster_bench(a).await,
        Bench::Recall(a) => recall_bench(a).await,
        Bench::Semantic(a) => semantic::semantic_bench(a).await,
        Bench::Auth(a) => auth_bench(a).await,
        Bench::Refusals(a) => refusals::refusals_bench(a).await,
        Bench::Tools(a) => tools::tools_bench(a).await,
        Bench::Schedules(a) => schedules::schedules_bench(a).await,
        Bench::Events(a) => events::events_bench(a).await,
    }
}
