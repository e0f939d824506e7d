//! `nexus-bench refusals`: what a flood of bad credentials costs a legitimate client. One
//! node with authentication; a legitimate client alternates a write and a linearizable read
//! with its API key, first on the idle node, then while `--flood-connections` connections
//! send requests with bad or forged credentials as fast as the node answers them. Reports the
//! legitimate client's throughput and latency in both phases (their ratio is the figure to
//! watch: the bar is a p99 within 2× of idle), the refusals per second, how many Raft
//! log entries the refusals cost, and the node's memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nexus_client::report::{machine, percentile, update_section};
use nexus_client::{pb, Client};

use super::{
    bench_tenant_key, free_port, ms, nexus_binary, spawn_nexus, wait_for_leader_as, LoadArgs,
};

#[derive(clap::Args)]
pub(super) struct RefusalArgs {
    /// Connections sending bad credentials during the flood.
    #[arg(long, default_value_t = 50)]
    pub(super) flood_connections: usize,
    #[command(flatten)]
    pub(super) load: LoadArgs,
}

struct Phase {
    ops: usize,
    secs: f64,
    p50: u64,
    p99: u64,
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn last_log_index(c: &mut Client) -> anyhow::Result<u64> {
    Ok(c.cluster
        .status(pb::StatusRequest {})
        .await?
        .into_inner()
        .last_log_index)
}

/// The legitimate client: a write then a linearizable read, for `seconds`.
async fn legitimate(c: &mut Client, seconds: u64, value: &str, tag: &str) -> anyhow::Result<Phase> {
    let mut lat = Vec::new();
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let key = format!("{tag}/{i}");
        let t = Instant::now();
        c.memory
            .put(pb::PutRequest {
                namespace: "bench".into(),
                key: key.clone(),
                value: value.into(),
                ..Default::default()
            })
            .await?;
        lat.push(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        c.memory
            .get(pb::GetRequest {
                namespace: "bench".into(),
                key,
                consistency: 0,
            })
            .await?;
        lat.push(t.elapsed().as_micros() as u64);
        i += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    Ok(Phase {
        ops: lat.len(),
        secs,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    })
}

pub(super) async fn refusals_bench(a: RefusalArgs) -> anyhow::Result<()> {
    const ROOT: &str = "nexus-bench-root-key-0123456789abcdefgh";
    let bin = nexus_binary(a.load.nexus.clone())?;
    std::fs::create_dir_all(&a.load.work_dir)?;
    let value = format!("\"{}\"", "v".repeat(a.load.value_bytes.saturating_sub(2)));
    let data = a
        .load
        .work_dir
        .join(format!("refusals-{}", std::process::id()));
    let env = vec![
        ("NEXUS_AUTH__ENABLED", "true".to_string()),
        ("NEXUS_ROOT_KEY", ROOT.to_string()),
    ];
    let node = spawn_nexus(
        &bin,
        &data,
        (free_port()?, free_port()?, free_port()?),
        &env,
    )?;
    wait_for_leader_as(&node, Some(ROOT)).await?;
    let mut root = Client::connect_with_token(&node.endpoint, Some(ROOT)).await?;
    let token = bench_tenant_key(&mut root).await?;
    let mut legit = Client::connect_with_token(&node.endpoint, Some(&token)).await?;
    legitimate(&mut legit, 1, &value, "warmup").await?;

    eprintln!("[1/2] idle node, {} s", a.load.seconds);
    let idle = legitimate(&mut legit, a.load.seconds, &value, "idle").await?;
    let pid = node.child.id();
    let (rss_idle, index_before) = (rss_mib(pid), last_log_index(&mut root).await?);

    eprintln!(
        "[2/2] the same during a flood of bad credentials from {} connections",
        a.flood_connections
    );
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for c in 0..a.flood_connections {
        let (endpoint, stop, refused) = (node.endpoint.clone(), stop.clone(), refused.clone());
        flood.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint)?
                .connect()
                .await?;
            let mut memory = pb::memory_service_client::MemoryServiceClient::new(channel);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let bad = match i % 3 {
                    0 => format!("nxk_{:016x}_forged", i * 31 + c as u64),
                    1 => format!("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2V2aWwvIn0.{i}"),
                    _ => format!("garbage-{c}-{i}"),
                };
                let mut r = tonic::Request::new(pb::GetRequest {
                    namespace: "bench".into(),
                    key: "idle/0".into(),
                    consistency: 0,
                });
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {bad}").parse()?);
                if memory.get(r).await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused_before = refused.load(Ordering::Relaxed);
    let flooded = legitimate(&mut legit, a.load.seconds, &value, "flood").await?;
    let refused_during = refused.load(Ordering::Relaxed) - refused_before;
    let rss_flood = rss_mib(pid);
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await??;
    }
    let total_refused = refused.load(Ordering::Relaxed);
    let index_after = last_log_index(&mut root).await?;
    let legit_writes = (flooded.ops / 2) as u64;
    let log_cost = index_after
        .saturating_sub(index_before)
        .saturating_sub(legit_writes);
    drop(node);
    let _ = std::fs::remove_dir_all(&data);

    let mut body = String::from("## What a flood of bad credentials costs (issue: hardening)\n\n");
    body += &format!(
        "Command: `nexus-bench refusals --seconds {} --flood-connections {} --value-bytes {}` (release: `cargo build --release --bin nexus --bin nexus-bench` first, then `target/release/nexus-bench ...`)\n\n",
        a.load.seconds, a.flood_connections, a.load.value_bytes
    );
    body += &format!(
        "Machine: {}. Date: {}. One `nexus` node ({} build: `{}`) with authentication. A legitimate client (API key, agent role) alternates a `Put` of a {}-byte value and a linearizable `Get` of it, on the idle node and then while {} connections send `Get`s with bad credentials (unknown API keys, JWTs of an issuer nobody configured, garbage) as fast as they are answered, from the same address. The flood and the node share the machine's 2 cores.\n\n",
        machine(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        if bin.components().any(|c| c.as_os_str() == "release") {
            "release"
        } else {
            "debug, dependencies optimized"
        },
        bin.display(),
        a.load.value_bytes,
        a.flood_connections
    );
    body += "| legitimate client | ops/s | p50 ms | p99 ms |\n|---|---:|---:|---:|\n";
    for (name, p) in [("idle node", &idle), ("during the flood", &flooded)] {
        body += &format!(
            "| {name} | {:.0} | {} | {} |\n",
            p.ops as f64 / p.secs,
            ms(p.p50),
            ms(p.p99)
        );
    }
    body += &format!(
        "\np99 during the flood / idle: **{:.2}×**. Refusals: {:.0}/s during the measurement ({total_refused} in all). Raft log entries the refusals cost: **{log_cost}** (last log index grew by {} with {legit_writes} legitimate writes). Node memory (RSS): {rss_idle:.0} MiB idle, {rss_flood:.0} MiB at the end of the flood.\n\n",
        flooded.p99 as f64 / idle.p99.max(1) as f64,
        refused_during as f64 / flooded.secs,
        index_after - index_before
    );
    update_section(&a.load.report, "bench:refusals", &body)?;
    eprintln!("wrote {}", a.load.report.display());
    print!("{body}");
    Ok(())
}
