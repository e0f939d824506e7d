//! `nexus-bench cluster`: a 3-node Nexus cluster against a 3-member etcd cluster, same load.

use super::*;

pub(crate) fn nexus_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
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
pub(crate) async fn measure_cluster(
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

pub(crate) async fn cluster_bench(a: ClusterArgs) -> anyhow::Result<()> {
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
                Workload::Call => "tool call",
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
