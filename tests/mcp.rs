//! The MCP server through the official MCP Python SDK (PyPI `mcp`), against a real `nexus`
//! with authentication on: over streamable HTTP at `/mcp` and over stdio (`nexus mcp`), it
//! lists Nexus's tools, remembers a memory and recalls it by a paraphrase, and gets an
//! error, not a crash, for an unknown tool and for invalid arguments; over HTTP, no token
//! and a forged one are refused with 401 and the protected-resource metadata, and another
//! tenant's token does not see the memory (`tests/python/mcp_client.py` does the client
//! side). MCP calls are audited like gRPC ones.
//!
//! And the MCP client: a real third-party MCP server (PyPI `mcp-server-time`) mounted under a
//! prefix, its tools listed and called through gRPC, `nexus run` and Nexus's own MCP server,
//! started again after it is killed; a command the node does not allow is refused.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_mcp_server_mounted_as_tools() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nexus.toml");
    std::fs::write(
        &config,
        "[auth]\nenabled = true\n\n[mcp_client]\ncommands = [\"python3\"]\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let env = [("NEXUS_CONFIG", config.as_str()), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(&dir.path().join("node"), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let dev = api_key(&root, "acme", "dev", &["developer"], 0).await;
    let mut c = n.client_with(Some(&dev)).await;

    // Only what the operator allows runs on the node.
    let refused = c
        .tools
        .mount_mcp_server(pb::McpMount {
            prefix: "shell".into(),
            command: "/bin/sh".into(),
            args: vec!["-c".into(), "id".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("[mcp_client] commands"),
        "{refused:?}"
    );

    let nexusctl = nexus_bin().with_file_name("nexusctl");
    let out = Command::new(&nexusctl)
        .args([
            "mcp",
            "mount",
            "time",
            "--",
            "python3",
            "-m",
            "mcp_server_time",
            "--local-timezone",
            "UTC",
        ])
        .env("NEXUS_ENDPOINT", n.endpoint())
        .env("NEXUS_TOKEN", &dev)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let listed = c
        .tools
        .list_tools(pb::ListToolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tools;
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"time.get_current_time") && names.contains(&"time.convert_time"),
        "{names:?}"
    );
    let call = |c: &nexus_client::Client, args: &str| {
        let mut c = c.clone();
        let args = args.to_string();
        async move {
            c.tools
                .call_tool(pb::CallToolRequest {
                    name: "time.get_current_time".into(),
                    args,
                })
                .await
        }
    };
    let out = call(&c, r#"{"timezone": "Asia/Tokyo"}"#)
        .await
        .unwrap()
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(v["timezone"], "Asia/Tokyo", "{v}");
    assert!(v["datetime"].as_str().unwrap().ends_with("+09:00"), "{v}");
    // The server's own schema checks the arguments first.
    let e = call(&c, r#"{}"#).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("timezone"), "{e:?}");

    // Killed: started again on the next call.
    let killed = Command::new("pkill")
        .args(["-f", "mcp_server_time"])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let again = call(&c, r#"{"timezone": "Europe/Paris"}"#)
        .await
        .unwrap()
        .into_inner();
    assert!(again.output.contains("Europe/Paris"), "{again:?}");

    // Through `nexus run`, and through Nexus's own MCP server.
    let out = Command::new(nexus_bin())
        .args([
            "run",
            "time.convert_time",
            "--args",
            r#"{"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Kolkata"}"#,
        ])
        .env("NEXUS_ENDPOINT", n.endpoint())
        .env("NEXUS_TOKEN", &dev)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("17:30"),
        "{out:?}"
    );
    let via_mcp = python(&[
        "call",
        &n.http("/mcp"),
        &dev,
        "time.get_current_time",
        r#"{"timezone": "UTC"}"#,
    ]);
    assert!(via_mcp.status.success());
    assert!(String::from_utf8_lossy(&via_mcp.stdout).contains("\"timezone\": \"UTC\""));

    // Another tenant has none of it; unmounted, it is gone.
    let globex = api_key(&root, "globex", "dev", &["developer"], 0).await;
    let mut g = n.client_with(Some(&globex)).await;
    let e = g
        .tools
        .call_tool(pb::CallToolRequest {
            name: "time.get_current_time".into(),
            args: r#"{"timezone": "UTC"}"#.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    c.tools
        .unmount_mcp_server(pb::UnmountMcpServerRequest {
            prefix: "time".into(),
        })
        .await
        .unwrap();
    let e = call(&c, r#"{"timezone": "UTC"}"#).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}
