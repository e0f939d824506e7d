//! Workflows through real `nexus` processes: a workflow whose leader is killed between its
//! second and third steps finishes on the new leader with every step run once; bad
//! definitions and inputs refused with the field named; retries, a failed step failing its
//! run, cancellation, sleeps; `nexusctl workflow`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tonic::Code;

use super::common::{agreed_leader, status, Nexus};
use super::versions;
use nexus_client::{pb, Client};

pub async fn define(c: &mut Client, doc: Value) -> Result<pb::Workflow, tonic::Status> {
    c.workflows
        .put_workflow(pb::PutWorkflowRequest {
            definition: doc.to_string(),
        })
        .await
        .map(|r| r.into_inner())
}

pub async fn run_of(c: &mut Client, id: &str) -> pb::WorkflowRun {
    c.workflows
        .get_workflow_run(pb::GetWorkflowRunRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `check` holds for run `id`, or fails with it.
pub async fn wait_run(
    c: &mut Client,
    id: &str,
    within: Duration,
    check: impl Fn(&pb::WorkflowRun) -> bool,
) -> pb::WorkflowRun {
    let deadline = Instant::now() + within;
    loop {
        let r = run_of(c, id).await;
        if check(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "run {id}: {r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn step<'a>(r: &'a pb::WorkflowRun, id: &str) -> &'a pb::WorkflowStep {
    r.steps.iter().find(|s| s.id == id).unwrap()
}

fn put(key: &str, value: &str) -> Value {
    json!({"namespace": "wf", "key": format!("${{run.id}}-{key}"), "value": value})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_finishes_on_the_new_leader_after_a_kill_between_steps_each_step_once() {
    let _one = super::common::one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Nexus::start_cluster(dir.path(), 3, &[]).await;
    let leader = agreed_leader(&nodes).await;
    let old_id = status(&nodes[leader]).await.unwrap().node_id;
    let follower = (leader + 1) % 3;
    let mut c = nodes[follower].client().await;
    // Five steps in a line (one, two, gate, three, four), and around them a fan-out after the
    // gate (three and side), a step whose condition is false (never), and a fan-in (four).
    let doc = json!({"name": "order", "description": "the failover test", "steps": [
        {"id": "one", "tool": "memory.put", "args": put("one", "${input.n}")},
        {"id": "two", "after": ["one"], "tool": "memory.put",
         "args": put("two", "${steps.one.output.version}")},
        {"id": "gate", "after": ["two"], "wait_event": {"topic": "go.${run.id}", "timeout_ms": 120000}},
        {"id": "three", "after": ["gate"], "tool": "memory.put",
         "args": put("three", "${steps.gate.output.data.color}")},
        {"id": "side", "after": ["gate"], "tool": "memory.put", "args": put("side", "x")},
        {"id": "never", "after": ["gate"], "when": {"path": "steps.gate.output.data.color", "equals": "blue"},
         "tool": "memory.put", "args": put("never", "x")},
        {"id": "four", "after": ["three", "side", "never"], "tool": "memory.put",
         "args": put("four", "${steps.three.output.value}")}
    ]});
    let w = define(&mut c, doc).await.unwrap();
    assert_eq!(w.steps, 7);
    let started = c
        .workflows
        .start_workflow(pb::StartWorkflowRequest {
            workflow: "order".into(),
            input: json!({"n": 7}).to_string(),
            id: "order-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!started.existing);
    // Steps one and two run; the gate waits for its event. The leader dies there.
    let r = wait_run(&mut c, "order-1", Duration::from_secs(20), |r| {
        step(r, "gate").state == "running"
    })
    .await;
    assert_eq!(step(&r, "two").state, "succeeded");
    nodes[leader].kill9();
    let new_leader = agreed_leader(&nodes).await;
    let new_id = status(&nodes[new_leader]).await.unwrap().node_id;
    let mut c = nodes[new_leader].client().await;
    // Starting the same id again is the same run.
    let again = c
        .workflows
        .start_workflow(pb::StartWorkflowRequest {
            workflow: "order".into(),
            input: json!({"n": 8}).to_string(),
            id: "order-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.existing);
    assert_eq!(again.run.unwrap().input, json!({"n": 7}).to_string());
    // The event the gate waits for, published through the new leader.
    c.events
        .publish(pb::PublishRequest {
            events: vec![pb::EventInput {
                topic: "go.order-1".into(),
                data: json!({"color": "red"}).to_string(),
            }],
        })
        .await
        .unwrap();
    let r = wait_run(&mut c, "order-1", Duration::from_secs(30), |r| {
        r.state != "running"
    })
    .await;
    assert_eq!(r.state, "succeeded", "{r:#?}");
    // Steps one and two ran once, on the old leader, and were not run again.
    for id in ["one", "two"] {
        let s = step(&r, id);
        assert_eq!((s.attempt, s.interrupted, s.node), (1, 0, old_id), "{s:?}");
    }
    // The gate resumed on the new leader and took the event published after it began.
    let gate = step(&r, "gate");
    assert_eq!(gate.interrupted, 1, "{gate:?}");
    assert_eq!(gate.node, new_id);
    let event: Value = serde_json::from_str(&gate.output).unwrap();
    assert_eq!(event["data"]["color"], "red");
    for id in ["three", "side", "four"] {
        let s = step(&r, id);
        assert_eq!(
            (s.state.as_str(), s.attempt, s.node),
            ("succeeded", 1, new_id),
            "{s:?}"
        );
    }
    assert_eq!(step(&r, "never").state, "skipped");
    // Each tool step wrote its memory once (version 1), with what earlier steps gave it.
    let v = versions(&mut c, "wf").await;
    let want: Vec<(String, u64)> = ["four", "one", "side", "three", "two"]
        .iter()
        .map(|k| (format!("order-1-{k}"), 1))
        .collect();
    assert_eq!(v.into_iter().collect::<Vec<_>>(), want);
    let four = c
        .memory
        .get(pb::GetRequest {
            namespace: "wf".into(),
            key: "order-1-four".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(four.item.unwrap().value, "\"red\"");
    let listed = c
        .workflows
        .list_workflow_runs(pb::ListWorkflowRunsRequest {
            workflow: "order".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(listed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_inputs_retries_failures_and_cancellation() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut c = n.client().await;
    // Bad definitions: the field is named and nothing is stored.
    for (doc, field) in [
        (json!({"name": "x", "steps": []}), "steps"),
        (
            json!({"name": "x", "steps": [{"id": "a", "tool": "no.such.tool"}]}),
            "steps[0].tool",
        ),
        (
            json!({"name": "x", "steps": [{"id": "a", "tool": "echo", "args": {"text": "${steps.b.output}"}}]}),
            "steps[0].args",
        ),
        (
            json!({"name": "x", "steps": [{"id": "a", "after": ["a"], "tool": "echo"}]}),
            "steps[0].after",
        ),
        (
            json!({"name": "x", "steps": [{"id": "a", "tool": "echo", "retry": {"max_attempts": 50}}]}),
            "steps[0].retry.max_attempts",
        ),
        (
            json!({"name": "x", "retry": {"timeout_ms": 5}, "steps": [{"id": "a", "sleep_ms": 5}]}),
            "retry.timeout",
        ),
    ] {
        let e = define(&mut c, doc.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{doc}: {e:?}");
        assert!(
            e.message().starts_with(&format!("invalid {field}:")),
            "{doc}: {}",
            e.message()
        );
    }
    let listed = c
        .workflows
        .list_workflows(pb::ListWorkflowsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workflows;
    assert!(listed.is_empty(), "{listed:?}");
    let e = c
        .workflows
        .start_workflow(pb::StartWorkflowRequest {
            workflow: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // A step that fails for good fails its run after its retries; what comes after it is
    // cancelled, and a sleep took its time.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    c.tools
        .set_http_policy(pb::HttpPolicy {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_private: true,
        })
        .await
        .unwrap();
    define(
        &mut c,
        json!({"name": "fragile", "steps": [
            {"id": "nap", "sleep_ms": 300},
            {"id": "call", "after": ["nap"], "tool": "http.request",
             "args": {"url": format!("http://127.0.0.1:{closed}/x")},
             "retry": {"max_attempts": 2, "initial_backoff_ms": 200}},
            {"id": "after", "after": ["call"], "tool": "echo", "args": {"text": "no"}}
        ]}),
    )
    .await
    .unwrap();
    for (input, field) in [("[1]", "input"), ("{", "input")] {
        let e = c
            .workflows
            .start_workflow(pb::StartWorkflowRequest {
                workflow: "fragile".into(),
                input: input.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with(&format!("invalid {field}:")),
            "{}",
            e.message()
        );
    }
    let run = c
        .workflows
        .start_workflow(pb::StartWorkflowRequest {
            workflow: "fragile".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let r = wait_run(&mut c, &run.id, Duration::from_secs(20), |r| {
        r.state != "running"
    })
    .await;
    assert_eq!(r.state, "failed", "{r:#?}");
    assert!(r.error.starts_with("step call failed"), "{}", r.error);
    let nap = step(&r, "nap");
    assert!(nap.finished_ms - nap.first_started_ms >= 300, "{nap:?}");
    let call = step(&r, "call");
    assert_eq!((call.state.as_str(), call.attempt), ("failed", 2));
    assert_eq!(step(&r, "after").state, "cancelled");

    // Cancelling a running run: its sleep stops, and only once.
    define(
        &mut c,
        json!({"name": "slow", "steps": [{"id": "wait", "sleep_ms": 60000}]}),
    )
    .await
    .unwrap();
    let run = c
        .workflows
        .start_workflow(pb::StartWorkflowRequest {
            workflow: "slow".into(),
            id: "slow-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    wait_run(&mut c, &run.id, Duration::from_secs(10), |r| {
        r.steps[0].state == "running"
    })
    .await;
    let cancelled = c
        .workflows
        .cancel_workflow_run(pb::CancelWorkflowRunRequest {
            id: "slow-1".into(),
            reason: "not needed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (cancelled.state.as_str(), cancelled.steps[0].state.as_str()),
        ("cancelled", "cancelled")
    );
    let e = c
        .workflows
        .cancel_workflow_run(pb::CancelWorkflowRunRequest {
            id: "slow-1".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let failed = c
        .workflows
        .list_workflow_runs(pb::ListWorkflowRunsRequest {
            state: "failed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(failed.len(), 1);
    let (_, text) = super::common::http_get(&n.http("/metrics")).await;
    assert!(
        text.contains("nexus_workflow_steps_total{outcome=\"retried\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("nexus_workflow_runs_total{state=\"failed\"} 1"),
        "{text}"
    );

    // nexusctl: start and follow a run, the history as JSON.
    define(
        &mut c,
        json!({"name": "hello", "steps": [{"id": "say", "tool": "echo", "args": {"text": "hi ${input.who}"}}]}),
    )
    .await
    .unwrap();
    let out = std::process::Command::new(super::common::nexus_bin().with_file_name("nexusctl"))
        .args([
            "--endpoint",
            &n.endpoint(),
            "workflow",
            "start",
            "hello",
            "--input",
            r#"{"who":"ada"}"#,
            "--id",
            "h1",
            "--wait",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("succeeded") && text.contains("hi ada"),
        "{text}"
    );
    let out = std::process::Command::new(super::common::nexus_bin().with_file_name("nexusctl"))
        .args([
            "--endpoint",
            &n.endpoint(),
            "-o",
            "json",
            "workflow",
            "runs",
            "--workflow",
            "hello",
        ])
        .output()
        .unwrap();
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["id"], "h1");
    assert_eq!(runs[0]["steps"][0]["output"]["text"], "hi ada");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_and_hooks_stay_in_their_tenant_behind_their_permissions_and_are_audited() {
    use super::common::{api_key, create_tenants};
    let dir = tempfile::tempdir().unwrap();
    let root_key = "root-key-for-workflow-tests-0123456789abcdef";
    let env = [
        ("NEXUS_AUTH__ENABLED", "true"),
        ("NEXUS_ROOT_KEY", root_key),
    ];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let mut dev = n
        .client_with(Some(
            &api_key(&root, "acme", "dev", &["developer"], 0).await,
        ))
        .await;
    let mut reader = n
        .client_with(Some(&api_key(&root, "acme", "peek", &["reader"], 0).await))
        .await;
    let mut other = n
        .client_with(Some(
            &api_key(&root, "globex", "dev", &["developer"], 0).await,
        ))
        .await;
    let doc = json!({"name": "note", "steps": [{"id": "put", "tool": "memory.put",
        "args": {"namespace": "notes", "key": "${run.id}", "value": "${input.text}"}}]});
    // A reader may not define or start one.
    let e = define(&mut reader, doc.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    define(&mut dev, doc.clone()).await.unwrap();
    // Another tenant neither sees it nor starts it; its own of the same name is its own.
    let e = other
        .workflows
        .start_workflow(pb::StartWorkflowRequest {
            workflow: "note".into(),
            id: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let run = dev
        .workflows
        .start_workflow(pb::StartWorkflowRequest {
            workflow: "note".into(),
            input: json!({"text": "hi"}).to_string(),
            id: "n1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.owner, "sa:dev");
    let done = wait_run(&mut dev, "n1", Duration::from_secs(20), |r| {
        r.state != "running"
    })
    .await;
    assert_eq!(done.state, "succeeded", "{done:#?}");
    let e = other
        .workflows
        .get_workflow_run(pb::GetWorkflowRunRequest {
            id: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    define(&mut other, doc).await.unwrap();
    let theirs = other
        .workflows
        .start_workflow(pb::StartWorkflowRequest {
            workflow: "note".into(),
            id: "n1".into(),
            input: json!({"text": "theirs"}).to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !theirs.existing,
        "the same id in another tenant is another run"
    );
    assert!(other
        .hooks
        .list_hooks(pb::ListHooksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .hooks
        .is_empty());
    let e = reader
        .hooks
        .list_hooks(pb::ListHooksRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // The definition and the start are on acme's audit log, as the developer.
    let records = root
        .clone()
        .audit
        .tail(pb::AuditTailRequest {
            limit: 100,
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    for resource in ["workflow/note", "workflow/note run n1"] {
        assert!(
            records
                .iter()
                .any(|r| r.resource == resource && r.principal == "sa:dev"),
            "{resource}: {records:#?}"
        );
    }
}
