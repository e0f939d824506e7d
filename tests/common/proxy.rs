//! A TCP proxy that the test controls, in front of every node's peer port, to cut the network
//! between nodes.
//!
//! Each node listens for peers on its own loopback address (127.0.0.11, 127.0.0.12, ...) and
//! its outgoing peer connections leave from that address (`--peer-addr` sets both); the
//! cluster's membership names the proxy's port for each node. The proxy therefore knows, for
//! every connection, which node it comes from (the source address) and which it goes to (the
//! port it arrived on).
//!
//! A cut link behaves as a partition does: bytes stop flowing both ways on open connections and
//! new connections hang, but nothing is closed or reset, so requests time out rather than fail
//! fast. When the link heals, the stalled bytes flow again, as TCP's retransmissions would
//! deliver them.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::AbortHandle;

type Cuts = HashSet<(u64, u64)>;

fn link(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

pub struct Network {
    cuts: watch::Sender<Cuts>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    ids: Vec<u64>,
}

/// A node behind the proxy: its id, where it really listens, and the address its peer
/// connections come from.
pub struct Target {
    pub id: u64,
    pub listen: SocketAddr,
    pub source: IpAddr,
}

impl Network {
    /// Starts one proxy port per target; returns the network and, for each target in order,
    /// the address other nodes must use to reach it.
    pub async fn start(targets: &[Target]) -> (Network, Vec<SocketAddr>) {
        let (cuts, _) = watch::channel(Cuts::new());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let sources: Arc<HashMap<IpAddr, u64>> =
            Arc::new(targets.iter().map(|t| (t.source, t.id)).collect());
        let mut addrs = Vec::new();
        for t in targets {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
            addrs.push(listener.local_addr().unwrap());
            let (to, upstream) = (t.id, t.listen);
            let (cuts, tasks2, sources) = (cuts.clone(), tasks.clone(), sources.clone());
            let accept = tokio::spawn(async move {
                loop {
                    let Ok((conn, from_addr)) = listener.accept().await else {
                        continue;
                    };
                    // A connection from an address that is no node's is never cut.
                    let from = sources.get(&from_addr.ip()).copied().unwrap_or(0);
                    let relay = tokio::spawn(relay(conn, from, to, upstream, cuts.subscribe()));
                    tasks2.lock().unwrap().push(relay.abort_handle());
                }
            });
            tasks.lock().unwrap().push(accept.abort_handle());
        }
        let ids = targets.iter().map(|t| t.id).collect();
        (Network { cuts, tasks, ids }, addrs)
    }

    /// Cuts every link between `group` and the other nodes (each side still talks within
    /// itself).
    pub fn partition(&self, group: &[u64]) {
        self.cuts.send_modify(|cuts| {
            for &a in group {
                for &b in self.ids.iter().filter(|b| !group.contains(b)) {
                    cuts.insert(link(a, b));
                }
            }
        });
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cuts.send_modify(|cuts| cuts.clear());
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn wait_linked(cuts: &mut watch::Receiver<Cuts>, key: (u64, u64)) {
    let _ = cuts.wait_for(|c| !c.contains(&key)).await;
}

async fn relay(
    client: TcpStream,
    from: u64,
    to: u64,
    upstream: SocketAddr,
    mut cuts: watch::Receiver<Cuts>,
) {
    let key = link(from, to);
    wait_linked(&mut cuts, key).await;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // the node is down: the caller sees its connection closed, as it would
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, key, cuts.clone());
    let down = pump(sr, cw, key, cuts);
    // When either side closes, close both.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    key: (u64, u64),
    mut cuts: watch::Receiver<Cuts>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_linked(&mut cuts, key).await;
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
