//! TLS on the public gRPC API (`[tls]`): a client that trusts the node's CA is served; one that
//! does not, or that speaks plaintext, is refused at the handshake; with `client_ca_file` a
//! client must also present a certificate from that CA; the HTTP port is served over TLS with
//! the same certificate; renewed files are picked up without a restart, and a broken renewal
//! leaves the previous certificate in use. Certificates are made here with rcgen.

mod common;
mod tls_ca;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Nexus;
use nexus_client::{pb, Client};
use tls_ca::Ca;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

async fn status(
    n: &Nexus,
    scheme: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<pb::StatusResponse, String> {
    let endpoint = format!("{scheme}://127.0.0.1:{}", n.grpc_port);
    let mut c = Client::connect_with(&endpoint, None, tls)
        .await
        .map_err(|e| e.to_string())?;
    let mut r = tonic::Request::new(pb::StatusRequest {});
    r.set_timeout(Duration::from_secs(5));
    c.cluster
        .status(r)
        .await
        .map(|r| r.into_inner())
        .map_err(|e| e.to_string())
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()))
}

async fn serving(n: &Nexus, tls: ClientTlsConfig) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = status(n, "https", Some(tls.clone())).await {
            if s.leader_id != 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no TLS service:\n{}",
            n.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn clients_must_trust_the_node_and_may_have_to_present_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("nexus api");
    let stranger = Ca::new("someone else");
    let (cert, key) = ca.issue(dir.path(), "node");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let env = [
        ("NEXUS_TLS__CERT_FILE", cert.as_str()),
        ("NEXUS_TLS__KEY_FILE", key.as_str()),
    ];
    let mut n = Nexus::new(&dir.path().join("node"), &env);
    n.spawn();
    serving(&n, trusting(&ca)).await;
    // Trusted: served. Not trusted, or plaintext: refused.
    assert!(status(&n, "https", Some(trusting(&ca))).await.is_ok());
    let err = status(&n, "https", Some(trusting(&stranger)))
        .await
        .unwrap_err();
    assert!(!err.is_empty());
    assert!(
        status(&n, "http", None).await.is_err(),
        "plaintext is refused"
    );
    // nexusctl with --ca-file.
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let nexusctl = Path::new(env!("CARGO_BIN_EXE_nexus")).with_file_name("nexusctl");
    let out = std::process::Command::new(&nexusctl)
        .args(["status", "-o", "json", "--ca-file"])
        .arg(&ca_file)
        .env(
            "NEXUS_ENDPOINT",
            format!("https://127.0.0.1:{}", n.grpc_port),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The HTTP port (probes, metrics) is served over TLS with the same certificate.
    let https = nexus_node::tls::http_client_builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let ready = https
        .get(format!("https://127.0.0.1:{}/readyz", n.http_port))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Renewal without a restart: the files are replaced by a certificate of another CA. New
    // connections get it (within the one-second check); clients trusting only the old CA are
    // refused from then on.
    let renewed = Ca::new("nexus api renewed");
    std::fs::create_dir_all(dir.path().join("renewed")).unwrap();
    let (new_cert, new_key) = renewed.issue(&dir.path().join("renewed"), "node");
    // A certificate without its key first, as a non-atomic renewal may leave it: the node
    // keeps serving the previous pair.
    std::fs::copy(&new_cert, &cert).unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(status(&n, "https", Some(trusting(&ca))).await.is_ok());
    assert!(n
        .log_text()
        .contains("do not load; still using the previous ones"));
    std::fs::copy(&new_key, &key).unwrap();
    serving(&n, trusting(&renewed)).await;
    assert!(
        status(&n, "https", Some(trusting(&ca))).await.is_err(),
        "the old certificate is no longer presented"
    );
    // A new connection (the client above keeps its old session open).
    let old_trust = nexus_node::tls::http_client_builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let metrics = old_trust
        .get(format!("https://127.0.0.1:{}/metrics", n.http_port))
        .send()
        .await;
    assert!(metrics.is_err(), "the HTTP port renewed too");
    drop(https);
    let https = nexus_node::tls::http_client_builder()
        .add_root_certificate(reqwest::Certificate::from_pem(renewed.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let metrics = https
        .get(format!("https://127.0.0.1:{}/metrics", n.http_port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nexus_tls_reloads_total{listener=\"gRPC API\",result=\"ok\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("tls"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("nexus_tls_reloads_total{listener=\"gRPC API\",result=\"error\"}"));
    n.terminate();

    // Mutual TLS: a client certificate from the clients' CA is required.
    let (cert, key) = ca.issue(dir.path(), "node-m");
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let clients = Ca::new("nexus clients");
    let clients_ca = dir.path().join("clients-ca.pem");
    std::fs::write(&clients_ca, clients.pem()).unwrap();
    let clients_ca = clients_ca.display().to_string();
    let env = [
        ("NEXUS_TLS__CERT_FILE", cert.as_str()),
        ("NEXUS_TLS__KEY_FILE", key.as_str()),
        ("NEXUS_TLS__CLIENT_CA_FILE", clients_ca.as_str()),
    ];
    let mut m = Nexus::new(&dir.path().join("mtls"), &env);
    m.spawn();
    let (ccert, ckey) = clients.issue(dir.path(), "agent");
    let with_cert = trusting(&ca).identity(Identity::from_pem(
        std::fs::read(&ccert).unwrap(),
        std::fs::read(&ckey).unwrap(),
    ));
    serving(&m, with_cert.clone()).await;
    assert!(status(&m, "https", Some(with_cert)).await.is_ok());
    assert!(
        status(&m, "https", Some(trusting(&ca))).await.is_err(),
        "no client certificate: refused"
    );
    let (scert, skey) = stranger.issue(dir.path(), "intruder");
    let wrong = trusting(&ca).identity(Identity::from_pem(
        std::fs::read(&scert).unwrap(),
        std::fs::read(&skey).unwrap(),
    ));
    assert!(
        status(&m, "https", Some(wrong)).await.is_err(),
        "a certificate of another CA: refused"
    );
    m.terminate();
}
