//! Tools through a real `nexus` with authentication on: the built-ins listed and called
//! (memory, conversations, recall by a paraphrase, json, text, time), `nexus run` and
//! `nexusctl tools` from the command line, arguments validated against the schema (the
//! first wrong field named), permissions per tool and per what the tool does, secrets in
//! arguments resolved and never seen again (output, errors, progress, audit, stats),
//! `http.request` within the tenant's allow-list (private addresses, redirects, size), and a
//! registered composite tool, unary and streaming, with an error naming its failing step.

#[path = "tools/cluster.rs"]
mod cluster;
mod common;
#[path = "tools/plugins.rs"]
mod plugins;

use std::process::Command;

use common::{api_key, create_tenants, nexus_bin, Nexus};
use nexus_client::{pb, Client};
use serde_json::{json, Value};
use tonic::Code;

const ROOT: &str = "root-key-for-tools-tests-0123456789abcdef";
const SECRET: &str = "s3cr3t-Value-nobody-sees";

async fn call(c: &mut Client, name: &str, args: Value) -> Result<Value, tonic::Status> {
    let r = c
        .tools
        .call_tool(pb::CallToolRequest {
            name: name.into(),
            args: args.to_string(),
        })
        .await?
        .into_inner();
    Ok(serde_json::from_str(&r.output).unwrap())
}

fn field_of(s: &tonic::Status) -> String {
    s.message().to_string()
}

/// A small HTTP server on loopback: `/echo` returns the request's headers as its body,
/// `/big` 100 KB, `/redirect?to=URL` a 302.
async fn http_server() -> (String, tokio::task::JoinHandle<()>) {
    use axum::extract::Query;
    use axum::http::HeaderMap;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/echo",
            get(|headers: HeaderMap| async move {
                let mut out = String::new();
                for (k, v) in &headers {
                    out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                }
                out
            }),
        )
        .route("/big", get(|| async { "x".repeat(100_000) }))
        .route(
            "/redirect",
            get(
                |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    (
                        axum::http::StatusCode::FOUND,
                        [(axum::http::header::LOCATION, q["to"].clone())],
                    )
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://127.0.0.1:{}", addr.port()), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_permissions_secrets_http_and_composites() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let dev_key = api_key(&root, "acme", "dev", &["developer", "admin"], 0).await;
    let mut dev = n.client_with(Some(&dev_key)).await;
    let mut agent = n
        .client_with(Some(&api_key(&root, "acme", "bot", &["agent"], 0).await))
        .await;

    // Listed: at least 18 built-ins, each with schemas.
    let tools = dev
        .tools
        .list_tools(pb::ListToolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tools;
    assert!(tools.len() >= 18, "{} tools", tools.len());
    for t in &tools {
        assert_eq!(t.kind, "builtin");
        let _: Value = serde_json::from_str(&t.input_schema).unwrap();
    }

    // Echo, and the memory and conversation tools, as the agent.
    assert_eq!(
        call(&mut agent, "echo", json!({"text": "hi"}))
            .await
            .unwrap(),
        json!({"text": "hi"})
    );
    let put = call(
        &mut agent,
        "memory.put",
        json!({"namespace": "prefs", "key": "editor", "value": {"name": "helix"}}),
    )
    .await
    .unwrap();
    assert_eq!(put["version"], 1);
    let got = call(
        &mut agent,
        "memory.get",
        json!({"namespace": "prefs", "key": "editor"}),
    )
    .await
    .unwrap();
    assert_eq!(got["value"], json!({"name": "helix"}));
    let listed = call(&mut agent, "memory.list", json!({"namespace": "prefs"}))
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let conv = call(
        &mut agent,
        "conversation.create",
        json!({"title": "standup"}),
    )
    .await
    .unwrap();
    let id = conv["id"].as_str().unwrap().to_string();
    call(
        &mut agent,
        "conversation.append",
        json!({"conversation_id": id, "messages": [{"role": "user", "content": "the launch moved to friday"}]}),
    )
    .await
    .unwrap();
    let history = call(
        &mut agent,
        "conversation.history",
        json!({"conversation_id": id}),
    )
    .await
    .unwrap();
    assert_eq!(
        history["messages"][0]["content"],
        "the launch moved to friday"
    );
    let remembered = call(
        &mut agent,
        "memory.remember",
        json!({"text": "The space mission was postponed until next spring because of a fuel leak."}),
    )
    .await
    .unwrap();
    let recalled = call(
        &mut agent,
        "memory.recall",
        json!({"query": "was the rocket launch delayed?", "k": 3, "namespace": "default"}),
    )
    .await
    .unwrap();
    assert_eq!(recalled["hits"][0]["id"], remembered["id"], "{recalled}");
    // Words weigh more when asked; each hit shows its BM25 match share.
    let weighted = call(
        &mut agent,
        "memory.recall",
        json!({"query": "fuel leak", "namespace": "default", "vector_weight": 0.3, "importance_weight": 0.1}),
    )
    .await
    .unwrap();
    assert_eq!(weighted["hits"][0]["id"], remembered["id"], "{weighted}");
    assert!(
        weighted["hits"][0]["bm25"].as_f64().unwrap() > 0.5,
        "{weighted}"
    );
    let err = call(
        &mut agent,
        "memory.recall",
        json!({"query": "fuel", "vector_weight": 2}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("vector_weight"), "{err:?}");
    let found = call(&mut agent, "memory.search", json!({"query": "helix"}))
        .await
        .unwrap();
    assert!(!found["hits"].as_array().unwrap().is_empty(), "{found}");
    let q = call(
        &mut agent,
        "json.query",
        json!({"data": {"items": [{"n": "a", "p": 5}, {"n": "b", "p": 50}]}, "path": "$.items[?@.p < 10].n"}),
    )
    .await
    .unwrap();
    assert_eq!(q["matches"], json!(["a"]));
    let now = call(&mut agent, "time.now", json!({"timezone": "Asia/Tokyo"}))
        .await
        .unwrap();
    assert!(now["iso"].as_str().unwrap().ends_with("+09:00"), "{now}");
    let chunks = call(
        &mut agent,
        "text.split",
        json!({"text": "One. Two. Three. Four. Five. Six.", "max_chars": 16}),
    )
    .await
    .unwrap();
    assert!(chunks["chunks"].as_array().unwrap().len() >= 2);
    assert!(
        call(
            &mut agent,
            "text.count_tokens",
            json!({"text": "hello world"})
        )
        .await
        .unwrap()["tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Bad input: named, and nothing runs.
    let e = call(
        &mut agent,
        "conversation.append",
        json!({"conversation_id": id, "messages": [{"role": "user"}]}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(field_of(&e).contains("args.messages[0]"), "{e:?}");
    let e = call(
        &mut agent,
        "memory.put",
        json!({"namespace": "prefs", "key": 7, "value": 1}),
    )
    .await
    .unwrap_err();
    assert!(field_of(&e).contains("args.key"), "{e:?}");
    let e = call(&mut agent, "no.such_tool", json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = agent
        .tools
        .call_tool(pb::CallToolRequest {
            name: "echo".into(),
            args: "{not json".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Permissions: a principal allowed one tool calls that one only; a tool never does what
    // its caller could not.
    let mut iam = root.iam.clone();
    iam.put_role(pb::PutRoleRequest {
        tenant: "acme".into(),
        name: "echoer".into(),
        permissions: vec!["tools:call:echo".into()],
    })
    .await
    .unwrap();
    let mut echoer = n
        .client_with(Some(
            &api_key(&root, "acme", "echoer", &["echoer"], 0).await,
        ))
        .await;
    call(&mut echoer, "echo", json!({"text": "ok"}))
        .await
        .unwrap();
    let e = call(&mut echoer, "time.now", json!({})).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    iam.put_role(pb::PutRoleRequest {
        tenant: "acme".into(),
        name: "caller".into(),
        permissions: vec!["tools:call".into(), "memory:read".into()],
    })
    .await
    .unwrap();
    let mut reader = n
        .client_with(Some(
            &api_key(&root, "acme", "reader", &["caller"], 0).await,
        ))
        .await;
    call(
        &mut reader,
        "memory.get",
        json!({"namespace": "prefs", "key": "editor"}),
    )
    .await
    .unwrap();
    let e = call(
        &mut reader,
        "memory.put",
        json!({"namespace": "p", "key": "k", "value": 1}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("memory:write"), "{e:?}");
    // Another tenant sees none of acme's memories through tools.
    let mut globex = n
        .client_with(Some(&api_key(&root, "globex", "bot", &["agent"], 0).await))
        .await;
    let e = call(
        &mut globex,
        "memory.get",
        json!({"namespace": "prefs", "key": "editor"}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Secrets: resolved for the tool, never seen again.
    dev.secrets
        .set_secret(pb::SetSecretRequest {
            name: "API_TOKEN".into(),
            value: SECRET.as_bytes().to_vec(),
        })
        .await
        .unwrap();
    let echoed = call(
        &mut dev,
        "echo",
        json!({"text": "token=${secrets.API_TOKEN}"}),
    )
    .await
    .unwrap();
    assert_eq!(echoed["text"], "token=${secrets.API_TOKEN}");
    let (base, _server) = http_server().await;
    let e = call(
        &mut dev,
        "http.request",
        json!({"url": format!("{base}/echo")}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "no host allowed yet: {e:?}"
    );
    dev.tools
        .set_http_policy(pb::HttpPolicy {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_private: false,
        })
        .await
        .unwrap();
    let e = call(
        &mut dev,
        "http.request",
        json!({"url": format!("{base}/echo")}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.code(),
        Code::PermissionDenied,
        "loopback needs allow_private: {e:?}"
    );
    assert!(e.message().contains("not a public address"), "{e:?}");
    dev.tools
        .set_http_policy(pb::HttpPolicy {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_private: true,
        })
        .await
        .unwrap();
    let fetched = call(
        &mut dev,
        "http.request",
        json!({"url": format!("{base}/echo"), "headers": {"authorization": "Bearer ${secrets.API_TOKEN}"}}),
    )
    .await
    .unwrap();
    assert_eq!(fetched["status"], 200);
    let body = fetched["body"].as_str().unwrap();
    assert!(
        body.contains("authorization: Bearer ${secrets.API_TOKEN}"),
        "the server got the value; the caller sees the placeholder: {body}"
    );
    let big = call(
        &mut dev,
        "http.request",
        json!({"url": format!("{base}/big"), "max_bytes": 1000}),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            big["body"].as_str().unwrap().len(),
            big["truncated"].clone()
        ),
        (1000, json!(true))
    );
    let e = call(
        &mut dev,
        "http.request",
        json!({"url": format!("{base}/redirect?to=http://example.com/")}),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("redirect"), "{e:?}");
    // An error that would carry the value carries the placeholder.
    let e = call(
        &mut dev,
        "http.request",
        json!({"url": "http://${secrets.API_TOKEN}.invalid/"}),
    )
    .await
    .unwrap_err();
    assert!(!e.message().contains(SECRET), "{e:?}");

    // A composite: stored, replicated, called like any tool, streaming its steps.
    let composite = json!({
        "steps": [
            {"id": "saved", "tool": "memory.put", "args": {"namespace": "notes", "key": "${input.key}", "value": "${input.text}"}},
            {"id": "read", "tool": "memory.get", "args": {"namespace": "notes", "key": "${input.key}"}}
        ],
        "output": {"stored": "${steps.read.value}", "version": "${steps.saved.version}"}
    });
    let registered = dev
        .tools
        .register_tool(pb::RegisterToolRequest {
            tool: Some(pb::Tool {
                name: "acme.note".into(),
                version: "1.0.0".into(),
                description: "Stores a note and reads it back".into(),
                input_schema: r#"{"type": "object", "required": ["key", "text"], "properties": {"key": {"type": "string"}, "text": {"type": "string"}}}"#.into(),
                kind: "composite".into(),
                config: composite.to_string(),
                ..Default::default()
            }),
            module: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(registered.version, "1.0.0");
    let out = call(
        &mut agent,
        "acme.note",
        json!({"key": "k1", "text": "buy milk"}),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"stored": "buy milk", "version": 1}));
    let e = call(&mut agent, "acme.note", json!({"key": "k1"}))
        .await
        .unwrap_err();
    assert!(field_of(&e).contains("args"), "{e:?}");
    let mut events = agent
        .tools
        .call_tool_stream(pb::CallToolRequest {
            name: "acme.note".into(),
            args: json!({"key": "k2", "text": "call mom"}).to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut progress = Vec::new();
    let mut result = None;
    while let Some(ev) = events.message().await.unwrap() {
        match ev.event.unwrap() {
            pb::call_tool_event::Event::Progress(p) => progress.push(p),
            pb::call_tool_event::Event::Partial(_) => {}
            pb::call_tool_event::Event::Result(r) => result = Some(r),
        }
    }
    assert!(
        progress.iter().any(|p| p.contains("step 2 of 2")),
        "{progress:?}"
    );
    let result: Value = serde_json::from_str(&result.unwrap().output).unwrap();
    assert_eq!(result["stored"], "call mom");
    // A step that fails is named.
    let failing = json!({"steps": [{"id": "missing", "tool": "memory.get", "args": {"namespace": "nowhere", "key": "x"}}]});
    dev.tools
        .register_tool(pb::RegisterToolRequest {
            tool: Some(pb::Tool {
                name: "acme.broken".into(),
                version: "0.1.0".into(),
                kind: "composite".into(),
                config: failing.to_string(),
                ..Default::default()
            }),
            module: Vec::new(),
        })
        .await
        .unwrap();
    let e = call(&mut agent, "acme.broken", json!({}))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("step 0 (missing, memory.get)"),
        "{e:?}"
    );
    // Registration is checked: a built-in's name, a bad version, a step that is not earlier.
    for (name, version, config, field) in [
        ("memory.put", "1.0.0", composite.to_string(), "tool.name"),
        ("acme.x", "1.0", composite.to_string(), "tool.version"),
        (
            "acme.x",
            "1.0.0",
            json!({"steps": [{"id": "a", "tool": "echo", "args": {"t": "${steps.b}"}}]})
                .to_string(),
            "tool.config.steps[0].args",
        ),
    ] {
        let e = dev
            .tools
            .register_tool(pb::RegisterToolRequest {
                tool: Some(pb::Tool {
                    name: name.into(),
                    version: version.into(),
                    kind: "composite".into(),
                    config,
                    ..Default::default()
                }),
                module: Vec::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(field), "{field}: {e:?}");
    }
    // Other tenants do not see acme's tool.
    let e = call(&mut globex, "acme.note", json!({"key": "k", "text": "t"}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Stats, and the audit log: every call on record, no argument value, no secret.
    let stats = dev
        .tools
        .tool_stats(pb::ToolStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .stats;
    let echo = stats.iter().find(|s| s.tool == "echo").unwrap();
    assert!(echo.calls >= 3 && echo.p99_ms >= echo.p50_ms, "{echo:?}");
    let put_stats = stats.iter().find(|s| s.tool == "memory.put").unwrap();
    assert!(
        put_stats.errors >= 2 && put_stats.last_error.contains("memory:write"),
        "the schema refusal, then the permission one: {put_stats:?}"
    );
    assert!(!format!("{stats:?}").contains(SECRET));
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
    let calls: Vec<_> = records
        .iter()
        .filter(|r| r.action == "tools.call")
        .collect();
    assert!(calls.len() >= 20, "{} tool calls on record", calls.len());
    assert!(calls
        .iter()
        .any(|r| r.resource.starts_with("tool/acme.note@1.0.0")));
    let text = format!("{records:?}");
    assert!(!text.contains(SECRET) && !text.contains("buy milk") && !text.contains("helix"));

    // From the command line: `nexus run` and `nexusctl tools`.
    let out = Command::new(nexus_bin())
        .args(["run", "echo", "--args", r#"{"text":"hi"}"#])
        .env("NEXUS_ENDPOINT", n.endpoint())
        .env("NEXUS_TOKEN", &dev_key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, json!({"text": "hi"}));
    let nexusctl = nexus_bin().with_file_name("nexusctl");
    let out = Command::new(&nexusctl)
        .args(["tools", "list", "-o", "json"])
        .env("NEXUS_ENDPOINT", n.endpoint())
        .env("NEXUS_TOKEN", &dev_key)
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["name"] == "acme.note"));
    let out = Command::new(&nexusctl)
        .args(["tools", "stats"])
        .env("NEXUS_ENDPOINT", n.endpoint())
        .env("NEXUS_TOKEN", &dev_key)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("acme.note"));
    let out = Command::new(&nexusctl)
        .args([
            "tools",
            "call",
            "memory.get",
            "--args",
            r#"{"namespace":"notes"}"#,
        ])
        .env("NEXUS_ENDPOINT", n.endpoint())
        .env("NEXUS_TOKEN", &dev_key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key"),
        "{out:?}"
    );
}

/// `nexus run --local`: a node in the process, on a data directory no node serves; what one
/// run writes, the next reads.
#[test]
fn nexus_run_local_needs_no_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(nexus_bin())
            .args(args)
            .arg("--local")
            .arg("--data-dir")
            .arg(dir.path())
            .env_remove("NEXUS_ENDPOINT")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(
        run(&["run", "echo", "--args", r#"{"text":"hi"}"#]),
        json!({"text": "hi"})
    );
    run(&[
        "run",
        "memory.put",
        "--args",
        r#"{"namespace":"n","key":"k","value":"kept"}"#,
    ]);
    let got = run(&[
        "run",
        "memory.get",
        "--args",
        r#"{"namespace":"n","key":"k"}"#,
    ]);
    assert!(got.to_string().contains("kept"), "{got}");
}
