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

/// A node with authentication on that runs `python3` for tenants' stdio mounts.
async fn start_allowing_python(dir: &std::path::Path) -> Nexus {
    let config = dir.join("nexus.toml");
    std::fs::write(
        &config,
        "[auth]\nenabled = true\n\n[mcp_client]\ncommands = [\"python3\"]\n",
    )
    .unwrap();
    let config = config.display().to_string();
    let env = [("NEXUS_CONFIG", config.as_str()), ("NEXUS_ROOT_KEY", ROOT)];
    Nexus::start(&dir.join("node"), &env).await
}

/// The names of the tools `c` can call.
async fn tool_names(c: &nexus_client::Client) -> Vec<String> {
    c.tools
        .clone()
        .list_tools(pb::ListToolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tools
        .into_iter()
        .map(|t| t.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_over_http_and_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", ROOT),
        ("NEXUS_AUTH__DENIAL_WINDOW_SECS", "1"),
    ];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let acme = api_key(&root, "acme", "bot", &["agent"], 0).await;
    let globex = api_key(&root, "globex", "bot", &["agent"], 0).await;
    let reader = api_key(&root, "acme", "viewer", &["reader"], 0).await;

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

    // Refusals on the MCP path are counted with gRPC's: a tool the key may not call, and the
    // requests without a valid token (401), as `auth.denied` records of their window.
    let refused = python(&[
        "refused",
        &n.http("/mcp"),
        &reader,
        "memory.put",
        r#"{"namespace": "n", "key": "k", "value": 1}"#,
    ]);
    assert!(refused.status.success(), "a reader cannot call memory.put");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let records = root
            .audit
            .clone()
            .tail(pb::AuditTailRequest {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let denied = |principal: &str, resource: &str| {
            records.iter().any(|r| {
                r.action == "auth.denied"
                    && r.principal == principal
                    && r.resource.contains(resource)
            })
        };
        if denied("sa:viewer", "tools.call from 127.0.0.1")
            && denied("anonymous", "mcp from 127.0.0.1")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "MCP refusals not on record: {:#?}",
            records
                .iter()
                .filter(|r| r.action == "auth.denied")
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_mcp_server_mounted_as_tools() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_allowing_python(dir.path()).await;
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

    let names = tool_names(&c).await;
    assert!(
        names.iter().any(|n| n == "time.get_current_time")
            && names.iter().any(|n| n == "time.convert_time"),
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

/// `mcp_client.py listen ... TOOL` in the background: returns once it printed "listening"
/// (its listeners are open), and the process to wait for.
fn listening(args: &[&str]) -> std::process::Child {
    use std::io::BufRead;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/mcp_client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg("listen")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) => {
                eprintln!("{line}");
                if line == "listening" {
                    break;
                }
            }
            _ => panic!(
                "the listener ended before it was listening: {:?}",
                child.wait()
            ),
        }
    }
    // The rest of its output, for the log.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    child
}

async fn finished(mut child: std::process::Child) -> std::process::ExitStatus {
    for _ in 0..1200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    panic!("the listener did not finish within 60 s");
}

/// MCP clients are told when the tools they can call change: through `subscriptions/listen`
/// (2026-07-28) over HTTP and stdio, and on a handshake-era stdio session. A change is a
/// mount (a replicated write), or a mounted server saying that its own list changed (the
/// official Python SDK's server here, whose `add_tool` adds one): Nexus's MCP client reads
/// that server's tools again at once, not after its cache's minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_clients_are_told_when_the_tools_change() {
    let dir = tempfile::tempdir().unwrap();
    let n = start_allowing_python(dir.path()).await;
    let root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let dev = api_key(&root, "acme", "dev", &["developer"], 0).await;
    let mut c = n.client_with(Some(&dev)).await;
    let bin = nexus_bin();
    let (url, bin, endpoint) = (n.http("/mcp"), bin.to_str().unwrap(), n.endpoint());

    // A mount: a replicated change of the tenant's tools.
    let listener = listening(&[&url, &dev, bin, &endpoint, "ch.add_tool"]);
    let server =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/changing_server.py");
    c.tools
        .mount_mcp_server(pb::McpMount {
            prefix: "ch".into(),
            command: "python3".into(),
            args: vec![server.display().to_string()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(finished(listener).await.success(), "told of the mount");

    // The mounted server's own list changes.
    let listener = listening(&[&url, &dev, bin, &endpoint, "ch.greet"]);
    let out = c
        .tools
        .call_tool(pb::CallToolRequest {
            name: "ch.add_tool".into(),
            args: r#"{"name": "greet"}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(out.output.contains("added greet"), "{out:?}");
    assert!(
        finished(listener).await.success(),
        "told of the mounted server's change"
    );
    let out = c
        .tools
        .call_tool(pb::CallToolRequest {
            name: "ch.greet".into(),
            args: "{}".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(out.output.contains("greet"), "{out:?}");
}

/// A server reached over streamable HTTP (the official Python SDK's, on loopback), mounted
/// with a header whose value is a secret's placeholder: refused until the tenant's http policy
/// allows its host and private addresses (as `http.request` is), then listed and called like
/// any tool, the header sent with the secret's value, and its list changes heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_over_http_mounted_within_the_tenants_http_policy() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(&dir.path().join("node"), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let admin = api_key(&root, "acme", "admin", &["admin"], 0).await;
    let mut c = n.client_with(Some(&admin)).await;

    let port = common::free_port();
    let server =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/changing_server.py");
    let mut python = Command::new("python3")
        .arg(&server)
        .args(["http", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(python.try_wait().unwrap().is_none(), "the server exited");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _python = Kill(python);

    c.secrets
        .set_secret(pb::SetSecretRequest {
            name: "WEB_TOKEN".into(),
            value: b"tok-4711".to_vec(),
        })
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let mount = pb::McpMount {
        prefix: "web".into(),
        url: url.clone(),
        headers: [("X-Token".to_string(), "${secrets.WEB_TOKEN}".to_string())].into(),
        ..Default::default()
    };
    let mount_it = |c: &nexus_client::Client, m: pb::McpMount| {
        let mut c = c.clone();
        async move { c.tools.mount_mcp_server(m).await }
    };
    // Not on the allow-list, then not a public address.
    let e = mount_it(&c, mount.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("allow-list"), "{e:?}");
    let policy = |allow_private| pb::HttpPolicy {
        allow_hosts: vec!["127.0.0.1".into()],
        allow_private,
    };
    c.tools.set_http_policy(policy(false)).await.unwrap();
    let e = mount_it(&c, mount.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not a public address"), "{e:?}");
    // Bad mounts name the field.
    for (bad, field) in [
        (
            pb::McpMount {
                url: "ftp://127.0.0.1/mcp".into(),
                ..mount.clone()
            },
            "url",
        ),
        (
            pb::McpMount {
                headers: [("Mcp-Session-Id".to_string(), "x".to_string())].into(),
                ..mount.clone()
            },
            "headers.Mcp-Session-Id",
        ),
        (
            pb::McpMount {
                command: "python3".into(),
                ..mount.clone()
            },
            "url",
        ),
    ] {
        let e = mount_it(&c, bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{field}: {e:?}");
    }

    c.tools.set_http_policy(policy(true)).await.unwrap();
    let mounted = mount_it(&c, mount.clone()).await.unwrap().into_inner();
    assert_eq!(mounted.url, url);
    assert!(
        mounted.command.is_empty() && mounted.env.is_empty(),
        "{mounted:?}"
    );
    let listed = c
        .tools
        .list_mcp_servers(pb::ListMcpServersRequest {})
        .await
        .unwrap()
        .into_inner()
        .mounts;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].headers["X-Token"], "${secrets.WEB_TOKEN}");

    let call = |c: &nexus_client::Client, name: &str, args: &str| {
        let mut c = c.clone();
        let (name, args) = (name.to_string(), args.to_string());
        async move {
            c.tools
                .call_tool(pb::CallToolRequest { name, args })
                .await
                .map(|r| r.into_inner().output)
        }
    };
    let listed = tool_names(&c).await;
    assert!(listed.contains(&"web.add_tool".to_string()), "{listed:?}");
    // The header went with the secret's value; what the call returns is redacted.
    let sent = call(&c, "web.header", r#"{"name": "X-Token"}"#)
        .await
        .unwrap();
    assert!(!sent.contains("tok-4711"), "{sent}");
    assert!(sent.contains("WEB_TOKEN"), "{sent}");
    // Its list changes are heard at once (not after the cached list's minute).
    let out = call(&c, "web.add_tool", r#"{"name": "hi"}"#).await.unwrap();
    assert!(out.contains("added hi"), "{out}");
    let mut heard = false;
    for _ in 0..100 {
        if tool_names(&c).await.contains(&"web.hi".to_string()) {
            heard = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(heard, "web.hi listed after the server's list-changed");
    assert!(call(&c, "web.hi", "{}").await.unwrap().contains("hi"));
}
