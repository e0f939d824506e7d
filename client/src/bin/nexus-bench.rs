//! `nexus-bench`: measured performance of a real node, written to docs/benchmarks.md.
//!
//! `nexus-bench write` measures this machine's fsync latency (the floor of one durable write),
//! starts a `nexus` from the same target directory on a temporary data directory, and drives
//! it with 1 and 64 concurrent clients writing 1 KiB values: throughput, p50/p99 latency, and
//! writes per WAL fsync (group commit), beside the node's peak memory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nexus_client::{pb, Client};

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
}

#[derive(clap::Args)]
struct WriteArgs {
    /// The nexus binary (default: beside this one).
    #[arg(long)]
    nexus: Option<PathBuf>,
    /// Concurrent clients, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    clients: Vec<usize>,
    /// Seconds of measurement per concurrency (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Where the data directory is made (its filesystem is what is measured).
    #[arg(long, default_value = "target/bench")]
    work_dir: PathBuf,
    /// Markdown file to update (the section between this benchmark's markers is replaced).
    #[arg(long, default_value = "docs/benchmarks.md")]
    report: PathBuf,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn start_node(bin: &Path, data: &Path) -> anyhow::Result<Node> {
    let (g, h, p) = (free_port()?, free_port()?, free_port()?);
    let log = std::fs::File::create(data.with_extension("log"))?;
    let child = Command::new(bin)
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--grpc-addr", &format!("127.0.0.1:{g}")])
        .args(["--http-addr", &format!("127.0.0.1:{h}")])
        .args(["--peer-addr", &format!("127.0.0.1:{p}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let node = Node {
        child,
        endpoint: format!("http://127.0.0.1:{g}"),
        http: format!("127.0.0.1:{h}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut c) = Client::connect(&node.endpoint).await {
            if let Ok(s) = c.cluster.status(pb::StatusRequest {}).await {
                if s.into_inner().role == "leader" {
                    return Ok(node);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("nexus did not become leader within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
}

async fn run_writes(
    node: &Node,
    clients: usize,
    seconds: u64,
    value: &str,
) -> anyhow::Result<RunResult> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(Client::connect(&node.endpoint).await?);
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (id, mut c) in conns.into_iter().enumerate() {
        let (measuring, stop, value) = (measuring.clone(), stop.clone(), value.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                c.memory
                    .put(pb::PutRequest {
                        namespace: "bench".into(),
                        key: format!("c{clients}/{id}/{i}"),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await?;
                if measuring.load(Ordering::Relaxed) {
                    lat.push(t.elapsed().as_micros() as u64);
                }
                i += 1;
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let syncs0 = metric(&node.http, "nexus_wal_syncs_total").await?;
    let entries0 = metric(&node.http, "nexus_raft_proposal_batch_commands_sum").await?;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let syncs1 = metric(&node.http, "nexus_wal_syncs_total").await?;
    let entries1 = metric(&node.http, "nexus_raft_proposal_batch_commands_sum").await?;
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
        writes_per_sync: (entries1 - entries0) / (syncs1 - syncs0).max(1.0),
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib / 1024.0 / 1024.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {mem} RAM")
}

/// Replaces the text between `<!-- name:start -->` and `<!-- name:end -->`, or appends it.
fn update_section(report: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let current = std::fs::read_to_string(report).unwrap_or_else(|_| "# Benchmarks\n".into());
    let section = format!("{start}\n{body}{end}");
    let next = match (current.find(&start), current.find(&end)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{}{}", &current[..s], section, &current[e + end.len()..])
        }
        _ => format!("{}\n{}\n", current.trim_end(), section),
    };
    std::fs::write(report, next)?;
    Ok(())
}

async fn write_bench(a: WriteArgs) -> anyhow::Result<()> {
    let bin = match a.nexus {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("nexus"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --bin nexus` or pass --nexus",
            bin.display()
        );
    }
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
    }
}
