//! WebAssembly plugins through a real `nexus`: the example plugin built from C by
//! `plugins/build.sh` (clang and wasm-ld) registered, listed and called, unary and
//! streaming; modules and manifests that are wrong refused at registration, naming the
//! field; and the sandbox: a plugin that loops forever, burns its fuel, allocates without
//! bound, opens a file or a socket, reads the clock without a grant, calls a tool without a
//! grant or traps is stopped with an error naming the limit, while the node keeps serving
//! other calls; grants are a tenant admin's, and registering again takes them back.

use std::time::{Duration, Instant};

use nexus_client::{pb, Client};
use serde_json::{json, Value};
use tonic::Code;

use super::common::{api_key, create_tenants, Nexus};
use super::{call, ROOT};

/// `plugins/build.sh` builds `name` from `plugins/examples/NAME.c` into `dir`.
pub fn build_example(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/build.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(dir)
        .arg(name)
        .output()
        .expect("running plugins/build.sh");
    assert!(
        out.status.success(),
        "plugins/build.sh {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dir.join(format!("{name}.wasm"))).unwrap()
}

/// A module of the ABI around `body`, the body of `nexus_call`, with `imports` before it.
fn wat(imports: &str, body: &str) -> Vec<u8> {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  (data (i32.const 0) "echo")
  (data (i32.const 16) "{{\"text\":\"inner\"}}")
  (data (i32.const 64) "{{\"ok\":true}}")
  (func (export "nexus_alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "nexus_call") (param i32 i32) (result i32) {body}))"#
    )
    .into_bytes()
}

const OUTPUT: &str = r#"(import "nexus" "output" (func $output (param i32 i32)))"#;
const OK: &str = "(call $output (i32.const 64) (i32.const 11)) (i32.const 0)";

async fn register(
    c: &mut Client,
    name: &str,
    manifest: Value,
    module: Vec<u8>,
) -> Result<pb::Tool, tonic::Status> {
    c.tools
        .register_tool(pb::RegisterToolRequest {
            tool: Some(pb::Tool {
                name: name.into(),
                version: "1.0.0".into(),
                description: format!("test plugin {name}"),
                kind: "wasm".into(),
                config: manifest.to_string(),
                ..Default::default()
            }),
            module,
        })
        .await
        .map(|r| r.into_inner())
}

async fn grant(c: &mut Client, name: &str, grants: &[&str]) -> Result<pb::Tool, tonic::Status> {
    c.tools
        .grant_tool(pb::GrantToolRequest {
            name: name.into(),
            grants: grants.iter().map(|g| g.to_string()).collect(),
        })
        .await
        .map(|r| r.into_inner())
}

fn expect_err(r: Result<Value, tonic::Status>, code: Code, words: &[&str]) {
    let e = r.expect_err("the call should fail");
    assert_eq!(e.code(), code, "{e:?}");
    for w in words {
        assert!(e.message().contains(w), "{w:?} not in {:?}", e.message());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_run_sandboxed_within_their_limits_and_grants() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let mut dev = n
        .client_with(Some(
            &api_key(&root, "acme", "dev", &["developer"], 0).await,
        ))
        .await;
    let mut admin = n
        .client_with(Some(&api_key(&root, "acme", "boss", &["admin"], 0).await))
        .await;
    let mut agent = n
        .client_with(Some(&api_key(&root, "acme", "bot", &["agent"], 0).await))
        .await;

    // The example plugin, built from C, registered by a developer and called by an agent.
    let echo = build_example(dir.path(), "echo");
    let t = register(&mut dev, "acme.echo", json!({}), echo.clone())
        .await
        .unwrap();
    assert_eq!(t.kind, "wasm");
    let manifest: Value = serde_json::from_str(&t.config).unwrap();
    assert_eq!(manifest["module_bytes"], json!(echo.len()));
    assert_eq!(manifest["module_sha256"].as_str().unwrap().len(), 64);
    let out = call(&mut agent, "acme.echo", json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(out, json!({"echo": {"text": "hi"}, "bytes": 13}));
    let listed = agent
        .tools
        .list_tools(pb::ListToolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .tools;
    assert!(listed
        .iter()
        .any(|t| t.name == "acme.echo" && t.kind == "wasm"));
    // Streaming: the plugin's log line arrives as progress before the result.
    let mut stream = agent
        .tools
        .call_tool_stream(pb::CallToolRequest {
            name: "acme.echo".into(),
            args: r#"{"n": 1}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        events.push(e.event.unwrap());
    }
    assert!(events
        .iter()
        .any(|e| matches!(e, pb::call_tool_event::Event::Progress(p) if p == "echoing")));
    assert!(matches!(
        events.last(),
        Some(pb::call_tool_event::Event::Result(_))
    ));
    // Another tenant has no such tool.
    let mut other = n
        .client_with(Some(&api_key(&root, "globex", "bot", &["agent"], 0).await))
        .await;
    expect_err(
        call(&mut other, "acme.echo", json!({})).await,
        Code::NotFound,
        &["acme.echo"],
    );

    // Wrong modules and manifests: refused at registration, the field named, nothing stored.
    for (module, manifest, field, words) in [
        (
            b"not wasm".to_vec(),
            json!({}),
            "module",
            "not a valid WebAssembly module",
        ),
        (Vec::new(), json!({}), "module", "is required"),
        (
            b"(module (memory (export \"memory\") 1))".to_vec(),
            json!({}),
            "module",
            "nexus_alloc",
        ),
        (
            wat(
                &format!(r#"{OUTPUT} (import "env" "system" (func (param i32)))"#),
                OK,
            ),
            json!({}),
            "module",
            "env.system",
        ),
        (
            wat(OUTPUT, OK),
            json!({"permissions": ["fs"]}),
            "tool.config.permissions",
            "not a plugin grant",
        ),
        (
            wat(OUTPUT, OK),
            json!({"limits": {"memory_bytes": 1u64 << 40}}),
            "tool.config.limits.memory_bytes",
            "at most",
        ),
        (
            wat(OUTPUT, OK),
            json!({"granted": ["clock"], "unknown": 1}),
            "tool.config",
            "unknown",
        ),
    ] {
        let e = register(&mut dev, "acme.bad", manifest, module)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
        assert!(e.message().contains(words), "{words}: {}", e.message());
    }
    expect_err(
        call(&mut agent, "acme.bad", json!({})).await,
        Code::NotFound,
        &[],
    );

    // A plugin that loops forever is stopped at its deadline, naming it, and meanwhile the
    // node serves other calls (the plugin yields as it burns fuel).
    register(
        &mut dev,
        "acme.spin",
        json!({"limits": {"timeout_ms": 2000, "fuel": 20_000_000_000u64}}),
        wat("", "(loop (br 0)) (i32.const 0)"),
    )
    .await
    .unwrap();
    let spinning = {
        let mut c = agent.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (
                call(&mut c, "acme.spin", json!({})).await,
                started.elapsed(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let served = Instant::now();
    for i in 0..20 {
        let out = call(&mut agent, "acme.echo", json!({"i": i}))
            .await
            .unwrap();
        assert_eq!(out["echo"]["i"], json!(i));
    }
    let served = served.elapsed();
    assert!(
        !spinning.is_finished(),
        "the spinning plugin ended too soon"
    );
    let (spun, took) = spinning.await.unwrap();
    expect_err(
        spun,
        Code::ResourceExhausted,
        &["acme.spin", "timeout_ms", "2000"],
    );
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        served < took,
        "20 echo calls took {served:?} beside the spinning plugin"
    );

    // Fuel.
    register(
        &mut dev,
        "acme.burn",
        json!({"limits": {"fuel": 1_000_000}}),
        wat("", "(loop (br 0)) (i32.const 0)"),
    )
    .await
    .unwrap();
    expect_err(
        call(&mut agent, "acme.burn", json!({})).await,
        Code::ResourceExhausted,
        &["acme.burn", "fuel", "1000000"],
    );

    // Memory without bound: growing past memory_bytes traps, naming it.
    register(
        &mut dev,
        "acme.hog",
        json!({"limits": {"memory_bytes": 8 << 20}}),
        wat(
            "",
            "(loop (drop (memory.grow (i32.const 16))) (br 0)) (i32.const 0)",
        ),
    )
    .await
    .unwrap();
    expect_err(
        call(&mut agent, "acme.hog", json!({})).await,
        Code::ResourceExhausted,
        &["acme.hog", "memory_bytes", "8388608"],
    );

    // A file, a socket: WASI imports link, and calling them is refused.
    register(
        &mut dev,
        "acme.reader",
        json!({}),
        wat(
            r#"(import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
            "(drop (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 128))) (i32.const 0)",
        ),
    )
    .await
    .unwrap();
    expect_err(
        call(&mut agent, "acme.reader", json!({})).await,
        Code::PermissionDenied,
        &["acme.reader", "file", "path_open"],
    );
    register(
        &mut dev,
        "acme.dialer",
        json!({}),
        wat(
            r#"(import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))"#,
            "(drop (call $accept (i32.const 3) (i32.const 0) (i32.const 128))) (i32.const 0)",
        ),
    )
    .await
    .unwrap();
    expect_err(
        call(&mut agent, "acme.dialer", json!({})).await,
        Code::PermissionDenied,
        &["acme.dialer", "socket"],
    );

    // The clock: refused until a tenant admin grants what the manifest asks for.
    let clock = wat(
        &format!(r#"{OUTPUT} (import "nexus" "now_ms" (func $now (result i64)))"#),
        &format!("(drop (call $now)) {OK}"),
    );
    register(
        &mut dev,
        "acme.clock",
        json!({"permissions": ["clock"]}),
        clock.clone(),
    )
    .await
    .unwrap();
    expect_err(
        call(&mut agent, "acme.clock", json!({})).await,
        Code::PermissionDenied,
        &["acme.clock", "clock grant"],
    );
    let e = grant(&mut dev, "acme.clock", &["clock"]).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("tools:grant"), "{}", e.message());
    let e = grant(&mut admin, "acme.clock", &["tools"])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("grants[0]"), "{}", e.message());
    let e = grant(&mut admin, "acme.echo_missing", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let granted = grant(&mut admin, "acme.clock", &["clock"]).await.unwrap();
    assert!(
        granted.config.contains(r#""granted":["clock"]"#),
        "{}",
        granted.config
    );
    assert_eq!(
        call(&mut agent, "acme.clock", json!({})).await.unwrap(),
        json!({"ok": true})
    );
    // Registering the module again takes the grant back.
    register(
        &mut dev,
        "acme.clock",
        json!({"permissions": ["clock"]}),
        clock,
    )
    .await
    .unwrap();
    expect_err(
        call(&mut agent, "acme.clock", json!({})).await,
        Code::PermissionDenied,
        &["clock grant"],
    );

    // Calling another tool needs the tools grant; with it, the call runs as the caller.
    let caller = wat(
        &format!(
            r#"{OUTPUT}
  (import "nexus" "call" (func $call (param i32 i32 i32 i32) (result i32)))
  (import "nexus" "take_result" (func $take (param i32)))"#
        ),
        "(local $n i32)
         (local.set $n (call $call (i32.const 0) (i32.const 4) (i32.const 16) (i32.const 16)))
         (call $take (i32.const 2048))
         (call $output (i32.const 2048) (local.get $n))
         (i32.const 0)",
    );
    register(
        &mut dev,
        "acme.caller",
        json!({"permissions": ["tools"]}),
        caller,
    )
    .await
    .unwrap();
    expect_err(
        call(&mut agent, "acme.caller", json!({})).await,
        Code::PermissionDenied,
        &["acme.caller", "called echo", "tools grant"],
    );
    grant(&mut admin, "acme.caller", &["tools"]).await.unwrap();
    assert_eq!(
        call(&mut agent, "acme.caller", json!({})).await.unwrap(),
        json!({"text": "inner"})
    );

    // A trap: the call fails, naming it; a plugin's own failure status carries its message.
    register(&mut dev, "acme.trap", json!({}), wat("", "unreachable"))
        .await
        .unwrap();
    expect_err(
        call(&mut agent, "acme.trap", json!({})).await,
        Code::FailedPrecondition,
        &["acme.trap", "trapped", "unreachable"],
    );
    register(
        &mut dev,
        "acme.fail",
        json!({}),
        wat(
            OUTPUT,
            "(call $output (i32.const 0) (i32.const 4)) (i32.const 2)",
        ),
    )
    .await
    .unwrap();
    expect_err(
        call(&mut agent, "acme.fail", json!({})).await,
        Code::FailedPrecondition,
        &["status 2", "echo"],
    );

    // Still serving; deleting a plugin removes it.
    assert_eq!(
        call(&mut agent, "acme.echo", json!({})).await.unwrap()["bytes"],
        json!(2)
    );
    dev.tools
        .delete_tool(pb::DeleteToolRequest {
            name: "acme.echo".into(),
        })
        .await
        .unwrap();
    expect_err(
        call(&mut agent, "acme.echo", json!({})).await,
        Code::NotFound,
        &["acme.echo"],
    );
    let log = n.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
