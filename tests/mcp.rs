//! The MCP server through the official MCP Python SDK (PyPI `mcp`), against a real `nexus`
//! with authentication on: over streamable HTTP at `/mcp` and over stdio (`nexus mcp`), it
//! lists Nexus's tools, remembers a memory and recalls it by a paraphrase, and gets an
//! error, not a crash, for an unknown tool and for invalid arguments; over HTTP, no token
//! and a forged one are refused with 401 and the protected-resource metadata, and another
//! tenant's token does not see the memory (`tests/python/mcp_client.py` does the client
//! side). MCP calls are audited like gRPC ones.

mod common;

use std::process::Command;

use common::{api_key, create_tenants, nexus_bin, Nexus};
use nexus_client::pb;

const ROOT: &str = "root-key-for-mcp-tests-0123456789abcdef";

fn python(args: &[&str]) -> std::process::Output {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/mcp_client.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs (scripts/test installs the MCP SDK)");
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_over_http_and_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let acme = api_key(&root, "acme", "bot", &["agent"], 0).await;
    let globex = api_key(&root, "globex", "bot", &["agent"], 0).await;

    let http = python(&["http", &n.http("/mcp"), &acme, &globex]);
    assert!(http.status.success(), "the MCP client over HTTP failed");
    assert!(String::from_utf8_lossy(&http.stdout).contains("passed"));

    let bin = nexus_bin();
    let stdio = python(&["stdio", bin.to_str().unwrap(), &n.endpoint(), &acme]);
    assert!(stdio.status.success(), "the MCP client over stdio failed");

    // Audited as tool calls, whichever transport.
    let records = root
        .audit
        .clone()
        .tail(pb::AuditTailRequest {
            limit: 1000,
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    let calls = records
        .iter()
        .filter(|r| r.action == "tools.call" && r.resource.starts_with("tool/memory.remember@"))
        .count();
    assert_eq!(calls, 2, "one remember over HTTP, one over stdio");
}
