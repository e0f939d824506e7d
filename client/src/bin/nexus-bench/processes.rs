//! The processes a benchmark runs: `nexus` nodes and clusters, an etcd cluster, and what
//! they report (metrics, CPU time, peak memory).

use super::*;

pub(crate) struct Node {
    pub(crate) child: Child,
    pub(crate) endpoint: String,
    pub(crate) http: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free now, below Linux's ephemeral range (32768-60999), so that the outgoing
/// connections of the servers started before it cannot take it in the meantime.
pub(crate) fn free_port() -> anyhow::Result<u16> {
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

pub(crate) async fn start_node(bin: &Path, data: &Path) -> anyhow::Result<Node> {
    let ports = (free_port()?, free_port()?, free_port()?);
    let node = spawn_nexus(bin, data, ports, &[])?;
    wait_for_leader(&node).await?;
    Ok(node)
}

/// Starts `nexus serve` on 127.0.0.1 with (gRPC, HTTP, peer) ports and extra environment.
pub(crate) fn spawn_nexus(
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
pub(crate) async fn wait_for_leader(node: &Node) -> anyhow::Result<()> {
    wait_for_leader_as(node, None).await
}

/// [`wait_for_leader`], asking with `token`.
pub(crate) async fn wait_for_leader_as(node: &Node, token: Option<&str>) -> anyhow::Result<()> {
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
pub(crate) async fn start_nexus_cluster(
    bin: &Path,
    dir: &Path,
    size: usize,
) -> anyhow::Result<Vec<Node>> {
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
pub(crate) async fn start_etcd_cluster(
    bin: &Path,
    dir: &Path,
    size: usize,
) -> anyhow::Result<Vec<Node>> {
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
pub(crate) async fn metric(http: &str, name: &str) -> anyhow::Result<f64> {
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
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
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

pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
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
