//! Starts real `nexus` processes for integration tests: each in its own temporary data
//! directory, on 127.0.0.1 ports chosen free at run time, killed when the handle drops (so a
//! failing test never leaves a process behind).

#![allow(dead_code)]

pub mod linearizability;
pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_client::{pb, Client};

/// The `nexus` binary: cargo names it for tests of the node package; tests of other packages
/// (the CLI tests live in the client package, for `nexusctl`) find it beside their own
/// executable, where `cargo test --workspace` has built it.
pub fn nexus_bin() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_nexus") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("nexus"))
        .expect("the target directory");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bin nexus` or `cargo test --workspace`",
        path.display()
    );
    path
}
const START_TIMEOUT: Duration = Duration::from_secs(60);

static CLUSTER_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held by a test that runs a whole cluster under load, so that such tests of one test binary
/// run one at a time (libtest runs tests in parallel; several clusters at once on a 2-core
/// machine turn election timeouts into noise).
pub async fn one_cluster_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    CLUSTER_TESTS.lock().await
}

/// A port that is free now on every address, below Linux's ephemeral range (32768-60999):
/// the kernel never hands it out as the source port of an outgoing connection, so a node
/// that is restarted on it (or bound to its own 127.0.0.x) finds it free again.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 10_000) as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..20_000 {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if port >= 32_000 {
            NEXT.store(20_000, Ordering::SeqCst);
            continue;
        }
        if TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

pub struct Nexus {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc_port: u16,
    pub http_port: u16,
    pub peer_port: u16,
    /// The address the node listens for peers on (and its peer connections come from).
    pub peer_host: String,
    /// The address the gRPC API listens on (clients connect to 127.0.0.1 either way).
    pub grpc_host: String,
    pub env: Vec<(String, String)>,
    log: PathBuf,
}

impl Nexus {
    /// Starts a node on `data_dir` with extra environment (`NEXUS_*` configuration).
    pub async fn start(data_dir: &Path, env: &[(&str, &str)]) -> Nexus {
        let mut n = Nexus::new(data_dir, env);
        n.spawn();
        n.wait_ready().await;
        n
    }

    /// Starts `size` nodes as one static cluster (`--initial-cluster`), each in a folder of
    /// `dir`, and waits until every one knows the leader.
    pub async fn start_cluster(dir: &Path, size: u64, env: &[(&str, &str)]) -> Vec<Nexus> {
        let mut nodes: Vec<Nexus> = (1..=size)
            .map(|id| Nexus::new(&dir.join(format!("node{id}")), env))
            .collect();
        let peers: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.peer_port))
            .collect();
        Self::launch_cluster(&mut nodes, &peers).await;
        nodes
    }

    /// Like `start_cluster`, with every peer connection through a proxy the test controls
    /// (`proxy::Network`) so that it can cut the network between nodes. Node N listens for
    /// peers on 127.0.0.(10+N).
    pub async fn start_cluster_behind_proxy(
        dir: &Path,
        size: u64,
        env: &[(&str, &str)],
    ) -> (Vec<Nexus>, proxy::Network) {
        let mut nodes: Vec<Nexus> = (1..=size)
            .map(|id| {
                let mut n = Nexus::new(&dir.join(format!("node{id}")), env);
                n.peer_host = format!("127.0.0.{}", 10 + id);
                n
            })
            .collect();
        let targets: Vec<proxy::Target> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let source: std::net::IpAddr = n.peer_host.parse().unwrap();
                proxy::Target {
                    id: i as u64 + 1,
                    listen: std::net::SocketAddr::new(source, n.peer_port),
                    source,
                }
            })
            .collect();
        let (network, addrs) = proxy::Network::start(&targets).await;
        let peers: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        Self::launch_cluster(&mut nodes, &peers).await;
        (nodes, network)
    }

    /// Starts `nodes` as one static cluster whose members reach node i at `peers[i]`.
    async fn launch_cluster(nodes: &mut [Nexus], peers: &[String]) {
        let members = nodes
            .iter()
            .zip(peers)
            .enumerate()
            .map(|(i, (n, peer))| format!("{}={peer}/127.0.0.1:{}", i + 1, n.grpc_port))
            .collect::<Vec<_>>()
            .join(",");
        for (i, n) in nodes.iter_mut().enumerate() {
            n.env.push(("NEXUS_NODE_ID".into(), (i + 1).to_string()));
            n.env
                .push(("NEXUS_INITIAL_CLUSTER".into(), members.clone()));
            n.spawn();
        }
        for n in nodes.iter_mut() {
            n.wait_ready().await;
        }
    }

    /// Starts a node without waiting for it (a `--join` node knows no leader until added).
    pub fn launch(data_dir: &Path, env: &[(&str, &str)]) -> Nexus {
        let mut n = Nexus::new(data_dir, env);
        n.spawn();
        n
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts the node again without waiting for it (to restart a whole cluster at once).
    pub fn restart_no_wait(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.spawn();
    }

    /// Waits up to `timeout` for the process to exit on its own; its status, if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Starts the node and expects it to refuse to start: waits for it to exit with a
    /// failure, and returns its log (which says why).
    pub async fn refused_start(&mut self) -> String {
        self.spawn();
        let status = self
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("nexus refuses to start");
        assert!(!status.success(), "{status}");
        self.log_text()
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A node not started yet (see `spawn`), to adjust first.
    pub fn new(data_dir: &Path, env: &[(&str, &str)]) -> Nexus {
        Nexus {
            child: None,
            data_dir: data_dir.to_path_buf(),
            grpc_port: free_port(),
            http_port: free_port(),
            peer_port: free_port(),
            peer_host: "127.0.0.1".into(),
            grpc_host: "127.0.0.1".into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: data_dir.with_extension("log"),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Starts the process.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the node's log file");
        let mut cmd = Command::new(nexus_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--grpc-addr")
            .arg(format!("{}:{}", self.grpc_host, self.grpc_port))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--peer-addr")
            .arg(format!("{}:{}", self.peer_host, self.peer_port))
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("starting nexus"));
    }

    /// Waits until the node answers Status with a known leader and /readyz is 200.
    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "nexus exited during start-up with {status}; log:\n{}",
                        self.log_text()
                    );
                }
            }
            if let Ok(mut c) =
                Client::connect_with_token(&self.endpoint(), self.root_key().as_deref()).await
            {
                if let Ok(s) = c.cluster.status(pb::StatusRequest {}).await {
                    if s.into_inner().leader_id != 0
                        && http_get(&self.http("/readyz")).await.0 == 200
                    {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "nexus did not become ready; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client with the node's root key when it has one (authentication on).
    pub async fn client(&self) -> Client {
        self.client_with(self.root_key().as_deref()).await
    }

    /// A client that sends `token` (None: no credentials).
    pub async fn client_with(&self, token: Option<&str>) -> Client {
        Client::connect_with_token(&self.endpoint(), token)
            .await
            .expect("connecting to nexus")
    }

    /// The root key in the node's environment (`NEXUS_ROOT_KEY`), if any.
    pub fn root_key(&self) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == "NEXUS_ROOT_KEY")
            .map(|(_, v)| v.clone())
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the node is running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for nexus") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("nexus did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again on the same data directory and ports.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the node first");
        self.spawn();
        self.wait_ready().await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Nexus {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A tiny HTTP/1.1 GET for the health and metrics endpoints: (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Ok(mut s) = tokio::net::TcpStream::connect(host).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The node's cluster status, or None when it does not answer.
pub async fn status(n: &Nexus) -> Option<pb::StatusResponse> {
    let mut c = Client::connect_with_token(&n.endpoint(), n.root_key().as_deref())
        .await
        .ok()?;
    c.cluster
        .status(pb::StatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Waits until every running node agrees on one leader, and returns its index in `nodes`.
pub async fn agreed_leader(nodes: &[Nexus]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = Vec::new();
        for n in nodes.iter().filter(|n| n.is_running()) {
            leaders.push(status(n).await.map_or(0, |s| s.leader_id));
        }
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            let id = leaders[0] as usize;
            if nodes[id - 1].is_running() {
                return id - 1;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An API key for service account `sa` in `tenant`, bound to `roles`, made with `root`'s
/// credentials; its token (`ttl_ms` 0 = never expires).
/// Suspends (`false`) or resumes (`true`) a tenant, as root.
pub async fn set_tenant_state(root: &Client, tenant: &str, active: bool) {
    let state = if active {
        pb::TenantState::Active
    } else {
        pb::TenantState::Suspended
    };
    root.iam
        .clone()
        .set_tenant_state(pb::SetTenantStateRequest {
            id: tenant.to_string(),
            state: state as i32,
        })
        .await
        .unwrap();
}

/// Makes each tenant, as root.
pub async fn create_tenants(root: &Client, ids: &[&str]) {
    for id in ids {
        root.iam
            .clone()
            .create_tenant(pb::CreateTenantRequest {
                id: id.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

pub async fn api_key(root: &Client, tenant: &str, sa: &str, roles: &[&str], ttl_ms: i64) -> String {
    root.iam
        .clone()
        .create_api_key(pb::CreateApiKeyRequest {
            tenant: tenant.into(),
            service_account: sa.into(),
            ttl_ms,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// A process's resident memory, from /proc (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc status")
        * 1024
}
