//! The HTTP port under slow, idle and surplus connections (part of the `api` test binary).

use super::common::{http_get, Nexus};

/// The HTTP port holds no connection forever: one that sends half a request, or nothing, is
/// closed after the header deadline; past the connection cap, a new one is closed at once;
/// and the probes answer again as soon as the slow ones are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_http_connections_are_closed() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let nexus = Nexus::start(
        &dir.path().join("node"),
        &[
            ("NEXUS_LIMITS__HTTP_HEADER_TIMEOUT_MS", "700"),
            ("NEXUS_LIMITS__HTTP_MAX_CONNECTIONS", "3"),
        ],
    )
    .await;
    let url = nexus.http("/healthz");
    let host = url
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    // How long until the server closes the connection (None: still open after `wait`).
    async fn closed_within(s: &mut tokio::net::TcpStream, wait: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(wait, s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                // A 408 or similar before the close.
                Ok(Ok(_)) => continue,
            }
        }
    }
    // Half a request: headers never finished.
    let mut slow = tokio::net::TcpStream::connect(&host).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Nothing at all.
    let mut idle = tokio::net::TcpStream::connect(&host).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(&host).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Past the cap: closed at once, without an answer.
    let mut over = tokio::net::TcpStream::connect(&host).await.unwrap();
    let _ = over
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let shut = closed_within(&mut over, Duration::from_millis(500)).await;
    assert!(shut.is_some(), "a connection past the cap is closed");
    // The slow ones go at the header deadline (700 ms after they came, about 150 ms ago).
    let after = closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("half a request is closed after the header deadline");
    assert!(
        after >= Duration::from_millis(200),
        "closed early: {after:?}"
    );
    for s in [&mut idle, &mut third] {
        closed_within(s, Duration::from_secs(5))
            .await
            .expect("an idle connection is closed after the header deadline");
    }
    assert_eq!(http_get(&url).await.0, 200);
    let (_, metrics) = http_get(&nexus.http("/metrics")).await;
    assert!(
        metrics.contains("nexus_load_shed_total{what=\"http_connection\"} 1"),
        "{metrics}"
    );
}
