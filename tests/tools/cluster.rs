//! Tools on a 3-node cluster: a composite and a WebAssembly plugin registered through a
//! follower are listed and called through every node, and after a kill -9 of the leader they
//! are still listed and called through the survivors, and through the killed node once it
//! is back.

use std::time::{Duration, Instant};

use nexus_client::{pb, Client};
use serde_json::{json, Value};

use super::common::{agreed_leader, api_key, create_tenants, one_cluster_at_a_time, Nexus};
use super::plugins::build_example;
use super::{call, ROOT};

/// Calls `name` through `n` until it answers (a registration reaches a follower a moment
/// after it is acknowledged; a new leader takes a moment after a kill).
async fn call_retrying(n: &Nexus, key: &str, name: &str, args: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = n.client_with(Some(key)).await;
        match call(&mut c, name, args.clone()).await {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{name} through {}: {e:?}", n.endpoint()),
        }
    }
}

async fn listed(c: &mut Client) -> Vec<String> {
    c.tools
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
async fn tools_registered_through_one_node_run_on_every_node_across_a_leader_kill() {
    let _guard = one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let mut nodes = Nexus::start_cluster(dir.path(), 3, &env).await;
    let leader = agreed_leader(&nodes).await;
    let follower = (leader + 1) % 3;
    let root = nodes[follower].client().await;
    create_tenants(&root, &["acme"]).await;
    let key = api_key(&root, "acme", "dev", &["developer"], 0).await;
    let mut dev = nodes[follower].client_with(Some(&key)).await;

    // Registered through a follower (forwarded to the leader, replicated to all).
    let module = build_example(dir.path(), "echo");
    dev.tools
        .register_tool(pb::RegisterToolRequest {
            tool: Some(pb::Tool {
                name: "acme.echo".into(),
                version: "1.0.0".into(),
                description: "the example plugin".into(),
                kind: "wasm".into(),
                config: "{}".into(),
                ..Default::default()
            }),
            module,
        })
        .await
        .unwrap();
    let composite = json!({"steps": [
        {"id": "e", "tool": "acme.echo", "args": {"said": "${input.text}"}}
    ], "output": "${steps.e.echo.said}"});
    dev.tools
        .register_tool(pb::RegisterToolRequest {
            tool: Some(pb::Tool {
                name: "acme.say".into(),
                version: "1.0.0".into(),
                description: "echoes through the plugin".into(),
                input_schema: r#"{"type": "object", "required": ["text"]}"#.into(),
                kind: "composite".into(),
                config: composite.to_string(),
                ..Default::default()
            }),
            module: Vec::new(),
        })
        .await
        .unwrap();

    for n in &nodes {
        assert_eq!(
            call_retrying(n, &key, "acme.say", json!({"text": "hello"})).await,
            json!("hello")
        );
        assert_eq!(
            call_retrying(n, &key, "acme.echo", json!({"n": 1})).await["bytes"],
            json!(7)
        );
        let names = listed(&mut n.client_with(Some(&key)).await).await;
        assert!(
            names.contains(&"acme.echo".to_string()) && names.contains(&"acme.say".to_string())
        );
    }

    // kill -9 of the leader: the survivors elect another and still list and call both.
    nodes[leader].kill9();
    let new_leader = agreed_leader(&nodes).await;
    assert_ne!(new_leader, leader);
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != leader) {
        assert_eq!(
            call_retrying(n, &key, "acme.say", json!({"text": format!("after {i}")})).await,
            json!(format!("after {i}"))
        );
        let names = listed(&mut n.client_with(Some(&key)).await).await;
        assert!(names.contains(&"acme.echo".to_string()), "{names:?}");
    }
    // A tool registered while the old leader is down reaches it when it is back.
    let mut dev = nodes[new_leader].client_with(Some(&key)).await;
    dev.tools
        .delete_tool(pb::DeleteToolRequest {
            name: "acme.say".into(),
        })
        .await
        .unwrap();
    nodes[leader].restart().await;
    assert_eq!(
        call_retrying(&nodes[leader], &key, "acme.echo", json!({})).await["bytes"],
        json!(2)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let names = listed(&mut nodes[leader].client_with(Some(&key)).await).await;
        if !names.contains(&"acme.say".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deletion never reached the restarted node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
