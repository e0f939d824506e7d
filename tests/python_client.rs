//! A client in another language works from the contract alone: Python's grpcio generates stubs
//! from proto/ with grpcio-tools and round-trips a memory and a conversation against a real
//! node (tests/python/roundtrip.py). Needs `pip install -r tests/python/requirements.txt`,
//! which `scripts/test` does.

mod common;

use common::Nexus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_round_trips_from_the_proto_files() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .expect("python3 is needed for this test");
    assert!(
        probe.status.success(),
        "Python's grpcio and grpcio-tools are missing: run `pip install -r tests/python/requirements.txt` (scripts/test does)\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let nexus = Nexus::start(&dir.path().join("node"), &[]).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/roundtrip.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg("--endpoint")
        .arg(format!("127.0.0.1:{}", nexus.grpc_port))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all round trips passed"));
}
