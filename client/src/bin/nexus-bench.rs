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

#[path = "nexus-bench/refusals.rs"]
mod refusals;

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
    /// What security costs: one node without authentication against one with it (API key,
    /// RBAC check, audited writes) and with it plus tenant quotas, same load.
    Auth(AuthArgs),
    /// What a flood of bad credentials costs a legitimate client: its latency on an idle
    /// node and during the flood, the refusals' Raft log entries, the node's memory.
    Refusals(refusals::RefusalArgs),
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

struct Node {
    child: Child,
    endpoint: String,
    http: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free now, below Linux's ephemeral range (32768-60999), so that the outgoing
/// connections of the servers started before it cannot take it in the meantime.
fn free_port() -> anyhow::Result<u16> {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 5_000) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..10_000 {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 32_000 {
            NEXT.store(20_000, Ordering::SeqCst);
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between 20000 and 32000")
}

async fn start_node(bin: &Path, data: &Path) -> anyhow::Result<Node> {
    let ports = (free_port()?, free_port()?, free_port()?);
    let node = spawn_nexus(bin, data, ports, &[])?;
    wait_for_leader(&node).await?;
    Ok(node)
}

/// Starts `nexus serve` on 127.0.0.1 with (gRPC, HTTP, peer) ports and extra environment.
fn spawn_nexus(
    bin: &Path,
    data: &Path,
    (g, h, p): (u16, u16, u16),
    env: &[(&str, String)],
) -> anyhow::Result<Node> {
    let log = std::fs::File::create(data.with_extension("log"))?;
    let child = Command::new(bin)
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--grpc-addr", &format!("127.0.0.1:{g}")])
        .args(["--http-addr", &format!("127.0.0.1:{h}")])
        .args(["--peer-addr", &format!("127.0.0.1:{p}")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Node {
        child,
        endpoint: format!("http://127.0.0.1:{g}"),
        http: format!("127.0.0.1:{h}"),
    })
}

/// Waits until `node` knows a leader (and, alone, is it).
async fn wait_for_leader(node: &Node) -> anyhow::Result<()> {
    wait_for_leader_as(node, None).await
}

/// [`wait_for_leader`], asking with `token`.
async fn wait_for_leader_as(node: &Node, token: Option<&str>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = Client::connect_with_token(&node.endpoint, token).await {
            if let Ok(s) = c.cluster.status(pb::StatusRequest {}).await {
                if s.into_inner().leader_id != 0 {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            bail!("nexus at {} knew no leader within 60 s", node.endpoint);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A static `size`-node Nexus cluster on loopback, data under `dir`.
async fn start_nexus_cluster(bin: &Path, dir: &Path, size: usize) -> anyhow::Result<Vec<Node>> {
    let mut ports = Vec::new();
    for _ in 0..size {
        ports.push((free_port()?, free_port()?, free_port()?));
    }
    let members = ports
        .iter()
        .enumerate()
        .map(|(i, (g, _, p))| format!("{}=127.0.0.1:{p}/127.0.0.1:{g}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, &ports) in ports.iter().enumerate() {
        let env = [
            ("NEXUS_NODE_ID", (i + 1).to_string()),
            ("NEXUS_INITIAL_CLUSTER", members.clone()),
        ];
        nodes.push(spawn_nexus(
            bin,
            &dir.join(format!("nexus{}", i + 1)),
            ports,
            &env,
        )?);
    }
    for n in &nodes {
        wait_for_leader(n).await?;
    }
    Ok(nodes)
}

/// A `size`-member etcd cluster on loopback (`etcd` flags as its docs give for a static
/// cluster), data under `dir`; waits until a write succeeds.
async fn start_etcd_cluster(bin: &Path, dir: &Path, size: usize) -> anyhow::Result<Vec<Node>> {
    let mut ports = Vec::new();
    for _ in 0..size {
        ports.push((free_port()?, free_port()?));
    }
    let members = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("e{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let data = dir.join(format!("etcd{}", i + 1));
        let log = std::fs::File::create(data.with_extension("log"))?;
        let child = Command::new(bin)
            .arg(format!("--name=e{}", i + 1))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{p}"
            ))
            .arg(format!("--initial-cluster={members}"))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=nexus-bench")
            .arg("--log-level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        nodes.push(Node {
            child,
            endpoint: format!("http://127.0.0.1:{c}"),
            http: String::new(),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in &nodes {
        loop {
            let ok = match Driver::connect(System::Etcd, &n.endpoint).await {
                Ok(mut d) => d.put("ready".into(), "1").await.is_ok(),
                Err(_) => false,
            };
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("etcd at {} did not accept a write within 60 s", n.endpoint);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(nodes)
}

/// Reads one counter from /metrics.
async fn metric(http: &str, name: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("metric {name} not found"))
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which is in parentheses): utime is the 12th,
            // stime the 13th, in clock ticks (100 per second on Linux).
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(0.0)
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
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
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Workload {
    /// A put of a new key.
    Write,
    /// A linearizable read of one of `READ_KEYS` existing keys.
    Read,
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

fn nexus_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("nexus"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bin nexus` or pass --nexus",
            bin.display()
        );
    }
    Ok(bin)
}

/// Every (workload, clients) run against one cluster.
async fn measure_cluster(
    system: System,
    nodes: &[Node],
    a: &ClusterArgs,
    value: &str,
) -> anyhow::Result<Vec<(Workload, RunResult)>> {
    let mut setup = Driver::connect(system, &nodes[0].endpoint).await?;
    for k in 0..READ_KEYS {
        setup.put(format!("r/{k}"), value).await?;
    }
    let mut out = Vec::new();
    for &workload in &a.workloads {
        for &clients in &a.load.clients {
            let mut drivers = Vec::new();
            for i in 0..clients {
                let at = a.member.map_or(i % nodes.len(), |m| m % nodes.len());
                drivers.push(Driver::connect(system, &nodes[at].endpoint).await?);
            }
            eprintln!(
                "      {system:?}: {workload:?}, {clients} client(s), {} s",
                a.load.seconds
            );
            let pids: Vec<u32> = nodes.iter().map(|n| n.child.id()).collect();
            let r = run_measured(drivers, workload, a.load.seconds, value, &pids).await?;
            out.push((workload, r));
        }
    }
    Ok(out)
}

async fn cluster_bench(a: ClusterArgs) -> anyhow::Result<()> {
    let bin = nexus_binary(a.load.nexus.clone())?;
    if !a.etcd.exists() {
        bail!(
            "{} not found: install Debian's etcd-server (scripts/bench-cluster does) or pass --etcd",
            a.etcd.display()
        );
    }
    let etcd_version = Command::new(&a.etcd)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "etcd".into());
    let work = a
        .load
        .work_dir
        .join(format!("cluster-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    // Both values are the same bytes; Nexus stores JSON, so it is a JSON string.
    let value = format!("\"{}\"", "v".repeat(a.load.value_bytes.saturating_sub(2)));

    if let Some(only) = a.only {
        let nodes = match only {
            System::Nexus => start_nexus_cluster(&bin, &work, a.nodes).await?,
            System::Etcd => start_etcd_cluster(&a.etcd, &work, a.nodes).await?,
        };
        let pids: Vec<String> = nodes.iter().map(|n| n.child.id().to_string()).collect();
        eprintln!("      server pids: {}", pids.join(","));
        measure_cluster(only, &nodes, &a, &value).await?;
        drop(nodes);
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    }

    eprintln!(
        "[1/2] {}-node Nexus cluster under {}",
        a.nodes,
        work.display()
    );
    let nodes = start_nexus_cluster(&bin, &work, a.nodes).await?;
    let nexus = measure_cluster(System::Nexus, &nodes, &a, &value).await?;
    let nexus_rss: f64 = nodes.iter().map(|n| peak_rss_mib(n.child.id())).sum();
    drop(nodes);

    eprintln!("[2/2] {}-member etcd cluster ({etcd_version})", a.nodes);
    let nodes = start_etcd_cluster(&a.etcd, &work, a.nodes).await?;
    let etcd = measure_cluster(System::Etcd, &nodes, &a, &value).await?;
    let etcd_rss: f64 = nodes.iter().map(|n| peak_rss_mib(n.child.id())).sum();
    drop(nodes);
    let _ = std::fs::remove_dir_all(&work);

    let mut body = String::new();
    body.push_str("## 3-node cluster against etcd (issue: cluster)\n\n");
    body.push_str(&format!(
        "Command: `scripts/bench-cluster` (builds release binaries, installs Debian's etcd-server, runs `target/release/nexus-bench cluster --nodes {} --clients {} --seconds {} --value-bytes {}`)\n\n",
        a.nodes,
        a.load.clients.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        a.load.seconds,
        a.load.value_bytes
    ));
    body.push_str(&format!(
        "Machine: {}. Date: {}. Both clusters run {} members on loopback on this machine, one after the other, data on the filesystem of `{}`. Client i connects to member i mod {} (a follower forwards to its leader in both systems). Writes put a {}-byte value to a new key; reads are linearizable gets (Nexus: read index, the default; etcd: `serializable: false`, the default) of 1,000 existing keys. etcd: {etcd_version}, default flags.\n\n",
        machine(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        a.nodes,
        a.load.work_dir.display(),
        a.nodes,
        a.load.value_bytes
    ));
    body.push_str("| workload | clients | Nexus ops/s | Nexus p50 ms | Nexus p99 ms | etcd ops/s | etcd p50 ms | etcd p99 ms | Nexus ÷ etcd throughput | Nexus ÷ etcd p99 | server CPU µs/op Nexus / etcd |\n");
    body.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for ((w, n), (_, e)) in nexus.iter().zip(&etcd) {
        body.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.0} / {:.0} |\n",
            match w {
                Workload::Write => "write",
                Workload::Read => "linearizable read",
            },
            n.clients,
            n.per_sec(),
            ms(n.p50),
            ms(n.p99),
            e.per_sec(),
            ms(e.p50),
            ms(e.p99),
            n.per_sec() / e.per_sec(),
            n.p99 as f64 / e.p99.max(1) as f64,
            n.cpu_us_per_op,
            e.cpu_us_per_op
        ));
    }
    body.push_str(&format!(
        "\nPeak memory (VmHWM) summed over the members: Nexus {nexus_rss:.0} MiB, etcd {etcd_rss:.0} MiB.\n\n"
    ));
    update_section(&a.load.report, "bench:cluster", &body)?;
    eprintln!("wrote {}", a.load.report.display());
    print!("{body}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Write(a) => write_bench(a).await,
        Bench::Cluster(a) => cluster_bench(a).await,
        Bench::Recall(a) => recall_bench(a).await,
        Bench::Auth(a) => auth_bench(a).await,
        Bench::Refusals(a) => refusals::refusals_bench(a).await,
    }
}

/// Makes tenant `bench` and an API key of its service account `bench` with the agent role,
/// through the root client; returns the key's token.
async fn bench_tenant_key(root: &mut Client) -> anyhow::Result<String> {
    root.iam
        .create_tenant(pb::CreateTenantRequest {
            id: "bench".into(),
            ..Default::default()
        })
        .await?;
    Ok(root
        .iam
        .create_api_key(pb::CreateApiKeyRequest {
            tenant: "bench".into(),
            service_account: "bench".into(),
            roles: vec!["agent".into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .token)
}

/// The configurations `nexus-bench auth` compares.
const AUTH_SETUPS: &[&str] = &[
    "no authentication",
    "API key, RBAC, audit",
    "API key, RBAC, audit, quotas",
];

async fn auth_bench(a: AuthArgs) -> anyhow::Result<()> {
    const ROOT: &str = "nexus-bench-root-key-0123456789abcdefgh";
    let bin = nexus_binary(a.load.nexus.clone())?;
    std::fs::create_dir_all(&a.load.work_dir)?;
    let value = format!("\"{}\"", "v".repeat(a.load.value_bytes.saturating_sub(2)));
    let mut results: Vec<Vec<(Workload, RunResult)>> = Vec::new();
    for (i, setup) in AUTH_SETUPS.iter().enumerate() {
        let data = a
            .load
            .work_dir
            .join(format!("auth-{}-{i}", std::process::id()));
        eprintln!("[{}/{}] {setup}: starting a node", i + 1, AUTH_SETUPS.len());
        let ports = (free_port()?, free_port()?, free_port()?);
        let env: Vec<(&str, String)> = if i == 0 {
            Vec::new()
        } else {
            vec![
                ("NEXUS_AUTH__ENABLED", "true".into()),
                ("NEXUS_ROOT_KEY", ROOT.into()),
            ]
        };
        let node = spawn_nexus(&bin, &data, ports, &env)?;
        wait_for_leader_as(&node, (i > 0).then_some(ROOT)).await?;
        let token = if i == 0 {
            None
        } else {
            let mut root = Client::connect_with_token(&node.endpoint, Some(ROOT)).await?;
            let token = bench_tenant_key(&mut root).await?;
            if i == 2 {
                root.iam
                    .set_tenant_limits(pb::SetTenantLimitsRequest {
                        id: "bench".into(),
                        limits: Some(pb::TenantLimits {
                            max_items: 1 << 40,
                            max_bytes: 1 << 50,
                            ..Default::default()
                        }),
                    })
                    .await?;
            }
            Some(token)
        };
        let connect = || async {
            Ok::<_, anyhow::Error>(Driver::Nexus(
                Client::connect_with_token(&node.endpoint, token.as_deref())
                    .await?
                    .memory,
            ))
        };
        let mut setup_driver = connect().await?;
        for k in 0..READ_KEYS {
            setup_driver.put(format!("r/{k}"), &value).await?;
        }
        let mut runs = Vec::new();
        for &workload in &a.workloads {
            for &clients in &a.load.clients {
                let mut drivers = Vec::new();
                for _ in 0..clients {
                    drivers.push(connect().await?);
                }
                eprintln!(
                    "      {workload:?}, {clients} client(s), {} s",
                    a.load.seconds
                );
                let r = run_measured(
                    drivers,
                    workload,
                    a.load.seconds,
                    &value,
                    &[node.child.id()],
                )
                .await?;
                runs.push((workload, r));
            }
        }
        drop(node);
        let _ = std::fs::remove_dir_all(&data);
        results.push(runs);
    }

    let mut body = String::new();
    body.push_str("## What security costs (issue: security)\n\n");
    body.push_str(&format!(
        "Command: `cargo build --release --bin nexus --bin nexus-bench && target/release/nexus-bench auth --clients {} --seconds {} --value-bytes {}`\n\n",
        a.load.clients.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        a.load.seconds,
        a.load.value_bytes
    ));
    body.push_str(&format!(
        "Machine: {}. Date: {}. One `nexus` node (release build) per configuration, same load: `Put` of a {}-byte value to a new key (write) and a linearizable `Get` of one of {READ_KEYS} keys (read). Without authentication a node serves one local user and audits nothing; with it every request presents an API key (its principal is cached by the token's SHA-256 until this node applies an identity change), is checked against the agent role, and every write appends an audit record in the same batch; with quotas the tenant also has (unreachable) item and byte limits, so every write is metered against them under a savepoint. Usage metering itself runs in every configuration.\n\n",
        machine(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        a.load.value_bytes
    ));
    body.push_str("| workload | clients | configuration | ops/s | p50 ms | p99 ms | server CPU µs/op | ops/s vs no auth |\n");
    body.push_str("|---|---:|---|---:|---:|---:|---:|---:|\n");
    for (run, (workload, base)) in results[0].iter().enumerate() {
        for (i, setup) in AUTH_SETUPS.iter().enumerate() {
            let r = &results[i][run].1;
            body.push_str(&format!(
                "| {workload:?} | {} | {setup} | {:.0} | {} | {} | {:.0} | {:.2} |\n",
                r.clients,
                r.per_sec(),
                ms(r.p50),
                ms(r.p99),
                r.cpu_us_per_op,
                r.per_sec() / base.per_sec()
            ));
        }
    }
    body.push('\n');
    update_section(&a.load.report, "bench:auth", &body)?;
    eprintln!("wrote {}", a.load.report.display());
    print!("{body}");
    Ok(())
}

async fn recall_bench(a: RecallArgs) -> anyhow::Result<()> {
    use nexus_client::recall_eval::{evaluate, load_set, LabelledSet};
    let set = LabelledSet::load(&a.set).with_context(|| format!("reading {}", a.set.display()))?;
    let shared = set.shared_words();
    if !shared.is_empty() {
        bail!("the labelled set has queries sharing words with their answers: {shared:?}");
    }
    let bin = nexus_binary(a.nexus.clone())?;
    std::fs::create_dir_all(&a.work_dir)?;
    let data = a.work_dir.join(format!("recall-{}", std::process::id()));
    eprintln!("[1/3] starting {} on {}", bin.display(), data.display());
    let node = start_node(&bin, &data).await?;
    let mut c = Client::connect(&node.endpoint).await?;
    eprintln!("[2/3] remembering {} memories", set.memories.len());
    let started = Instant::now();
    let ids = load_set(&mut c, &set, "quality").await?;
    let remember_ms = started.elapsed().as_secs_f64() * 1000.0 / set.memories.len() as f64;
    eprintln!(
        "[3/3] {} paraphrase and {} keyword queries in each mode",
        set.queries.len(),
        set.keyword_queries.len()
    );
    let mut body = String::from("## Recall quality (issue: semantic memory)\n\n");
    body += "Command: `scripts/bench-recall` (= `nexus-bench recall` against a fresh node with the local model)\n\n";
    body += &format!(
        "Machine: {}. Node: `{}`. Set: `{}`: {} memories. Embedding model all-MiniLM-L6-v2; k = 10; RRF with the node's default weights (vector 1, BM25 1). Two query sets over the same memories:\n\n- {} paraphrases, each sharing no content word (nor 5-letter stem) with its one relevant memory (checked by the benchmark and by tests/recall_quality.rs); the other memories are distractors, many sharing words with the queries;\n- {} exact-term lookups (names, codes, numbers such as `BlueHeron42`, `extension 4455`), which do share words with their answers.\n\n",
        machine(),
        bin.display(),
        a.set.display(),
        set.memories.len(),
        set.queries.len(),
        set.keyword_queries.len(),
    );
    for (title, queries) in [
        ("Paraphrases", &set.queries),
        ("Exact-term lookups", &set.keyword_queries),
    ] {
        let mut rows = Vec::new();
        for (name, mode) in [
            ("BM25 alone", pb::RecallMode::Bm25),
            ("vectors alone", pb::RecallMode::Vector),
            ("hybrid (RRF)", pb::RecallMode::Hybrid),
        ] {
            let started = Instant::now();
            let scores = evaluate(&mut c, queries, "quality", &ids, mode).await?;
            let per_query = started.elapsed().as_secs_f64() * 1000.0 / queries.len() as f64;
            eprintln!("      {title}, {name}: {scores:?}, {per_query:.1} ms per query");
            rows.push((name, scores, per_query));
        }
        let bm25 = rows[0].1.recall_at_5;
        body += &format!("{title} ({} queries):\n\n", queries.len());
        body += "| retrieval | recall@5 | recall@10 | MRR@10 | recall@5 minus BM25's | ms per Recall |\n|---|---:|---:|---:|---:|---:|\n";
        for (name, s, per_query) in &rows {
            body += &format!(
                "| {name} | {:.2} | {:.2} | {:.3} | {:+.2} | {per_query:.1} |\n",
                s.recall_at_5,
                s.recall_at_10,
                s.mrr,
                s.recall_at_5 - bm25
            );
        }
        body += "\n";
    }
    body += &format!(
        "Remember took {remember_ms:.1} ms per memory, one at a time (embedding included).\n\n"
    );
    update_section(&a.report, "bench:recall", &body)?;
    eprintln!("wrote {}", a.report.display());
    print!("{body}");
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}
