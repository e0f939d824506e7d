//! Triggers and webhooks through a real `nexus` process, against a receiver this test runs on
//! loopback: signatures checked by the receiver (HMAC-SHA256 computed here), redelivery after
//! the receiver was down, each acknowledged delivery received once and in order, a
//! dead-letter list and a replay; a trigger that starts a workflow per event; inbound
//! endpoints that take signed requests only; bad input refused with the field named.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::hmac;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use super::common::{free_port, Nexus};
use super::workflows::{define, wait_run};
use nexus_client::{pb, Client};

const KEY: &[u8] = b"whsec-test-signing-key-0123456789";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sign(t: i64, body: &[u8]) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, KEY);
    let mut m = format!("{t}.").into_bytes();
    m.extend_from_slice(body);
    format!("t={t},v1={}", hex(hmac::sign(&k, &m).as_ref()))
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What the receiver got: (path, delivery id, signature valid, body).
type Received = Arc<Mutex<Vec<(String, String, bool, Value)>>>;

/// Reads one HTTP/1.1 request: (request line, headers lowercased, body).
async fn read_request(
    sock: &mut tokio::net::TcpStream,
) -> Option<(String, BTreeMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.lines();
    let line = lines.next()?.to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((line, headers, body))
}

/// A webhook receiver on `port`: checks each request's signature, records it, and answers
/// 200 (500 on `/fail`).
async fn receiver(port: u16, got: Received) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let got = got.clone();
            tokio::spawn(async move {
                let Some((line, headers, body)) = read_request(&mut sock).await else {
                    return;
                };
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let sig = headers.get("nexus-signature").cloned().unwrap_or_default();
                let t: i64 = sig
                    .split(',')
                    .find_map(|p| p.strip_prefix("t="))
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let valid = sig == sign(t, &body) && (now_s() - t).abs() < 60;
                let id = headers.get("nexus-delivery").cloned().unwrap_or_default();
                let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                got.lock().unwrap().push((path.clone(), id, valid, value));
                let reply: &[u8] = if path == "/fail" {
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope"
                } else {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                };
                let _ = sock.write_all(reply).await;
            });
        }
    });
}

/// A raw HTTP/1.1 POST: (status, body).
async fn post(url: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

async fn publish(c: &mut Client, topic: &str, data: Value) -> u64 {
    c.events
        .publish(pb::PublishRequest {
            events: vec![pb::EventInput {
                topic: topic.into(),
                data: data.to_string(),
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .first_seq
}

fn webhook(name: &str, topics: &[&str], url: &str, secret: &str, attempts: u32) -> pb::Hook {
    pb::Hook {
        name: name.into(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        target: Some(pb::hook::Target::Webhook(pb::HookWebhook {
            url: url.into(),
            secret: secret.into(),
        })),
        retry: Some(pb::RetryPolicy {
            max_attempts: attempts,
            initial_backoff_ms: 200,
            max_backoff_ms: 1000,
            timeout_ms: 2000,
        }),
        ..Default::default()
    }
}

async fn hook(c: &mut Client, name: &str) -> pb::Hook {
    c.hooks
        .get_hook(pb::GetHookRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn deliveries(c: &mut Client, name: &str, dead: bool) -> Vec<pb::Delivery> {
    c.hooks
        .list_deliveries(pb::ListDeliveriesRequest {
            name: name.into(),
            limit: 1000,
            dead,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

async fn wait_for<T>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waited too long for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_redelivered_after_downtime_and_received_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut c = n.client().await;
    c.tools
        .set_http_policy(pb::HttpPolicy {
            allow_hosts: vec!["127.0.0.1".into()],
            allow_private: true,
        })
        .await
        .unwrap();
    c.secrets
        .set_secret(pb::SetSecretRequest {
            name: "whkey".into(),
            value: KEY.to_vec(),
        })
        .await
        .unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/in");
    // Bad input: the field named, nothing made.
    let mut no_target = webhook("x", &["a"], &url, "whkey", 1);
    no_target.target = None;
    for (h, code, field) in [
        (
            webhook("x", &[], &url, "whkey", 1),
            Code::InvalidArgument,
            "topics",
        ),
        (
            webhook("x", &["a..b"], &url, "whkey", 1),
            Code::InvalidArgument,
            "topics[0]",
        ),
        (
            webhook("x", &["a"], &url, "missing", 1),
            Code::InvalidArgument,
            "secret",
        ),
        (
            webhook("x", &["a"], "ftp://127.0.0.1/", "whkey", 1),
            Code::PermissionDenied,
            "webhook",
        ),
        (
            webhook("x", &["a"], "http://example.com/in", "whkey", 1),
            Code::PermissionDenied,
            "webhook",
        ),
        (
            webhook("x", &["a"], &url, "whkey", 99),
            Code::InvalidArgument,
            "retry.max_attempts",
        ),
        (
            webhook("Bad Name", &["a"], &url, "whkey", 1),
            Code::InvalidArgument,
            "name",
        ),
        (no_target, Code::InvalidArgument, "target"),
    ] {
        let e = c.hooks.put_hook(h.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{h:?}: {e:?}");
        let prefix = if code == Code::InvalidArgument {
            format!("invalid {field}:")
        } else {
            format!("{field}:")
        };
        assert!(e.message().starts_with(&prefix), "{field}: {}", e.message());
    }
    assert!(c
        .hooks
        .list_hooks(pb::ListHooksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .hooks
        .is_empty());

    // The receiver is down: nothing listens on its port yet.
    let made = c
        .hooks
        .put_hook(webhook("out", &["order.>"], &url, "whkey", 20))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.owner, "local");
    let mut want = Vec::new();
    want.push(publish(&mut c, "order.new", json!({"n": 1})).await);
    publish(&mut c, "other.thing", json!({"n": 0})).await;
    want.push(publish(&mut c, "order.paid", json!({"n": 2})).await);
    want.push(publish(&mut c, "order.new", json!({"n": 3})).await);
    // The first is tried again and again; the others wait behind it.
    let first = format!("out/{}", want[0]);
    wait_for("a retried delivery", Duration::from_secs(20), async || {
        let d = deliveries(&mut c, "out", false).await;
        (d.len() == 1 && d[0].id == first && d[0].attempt >= 2).then_some(())
    })
    .await;
    let got: Received = Arc::default();
    receiver(port, got.clone()).await;
    wait_for("three deliveries", Duration::from_secs(20), async || {
        (hook(&mut c, "out").await.delivered == 3).then_some(())
    })
    .await;
    want.push(publish(&mut c, "order.new", json!({"n": 4})).await);
    want.push(publish(&mut c, "order.done", json!({"n": 5})).await);
    wait_for("five deliveries", Duration::from_secs(20), async || {
        (hook(&mut c, "out").await.delivered == 5).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = got.lock().unwrap().clone();
    // Each acknowledged delivery received once, in the log's order, signed.
    let ids: Vec<String> = received.iter().map(|r| r.1.clone()).collect();
    let want_ids: Vec<String> = want.iter().map(|s| format!("out/{s}")).collect();
    assert_eq!(ids, want_ids, "{received:#?}");
    for (i, (path, _, valid, body)) in received.iter().enumerate() {
        assert_eq!(path, "/in");
        assert!(valid, "a bad signature: {body}");
        assert_eq!(body["seq"], want[i]);
        assert_eq!(body["data"]["n"], [1, 2, 3, 4, 5][i]);
        assert_eq!(body["hook"], "out");
    }
    let log = deliveries(&mut c, "out", false).await;
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|d| d.state == "succeeded"), "{log:#?}");
    let first = log.iter().find(|d| d.seq == want[0]).unwrap();
    assert!(first.attempt >= 2, "{first:?}");
    assert!(first.output.starts_with("HTTP 200"), "{first:?}");

    // A receiver that keeps failing: dead after two attempts, the cursor moves on, replayed.
    let last = publish(&mut c, "noise", json!(null)).await;
    let mut bad = webhook(
        "bad",
        &["order.new"],
        &format!("http://127.0.0.1:{port}/fail"),
        "whkey",
        2,
    );
    bad.start_after = last;
    c.hooks.put_hook(bad).await.unwrap();
    let seq = publish(&mut c, "order.new", json!({"n": 6})).await;
    let dead = wait_for("a dead delivery", Duration::from_secs(20), async || {
        let d = deliveries(&mut c, "bad", true).await;
        (d.len() == 1).then(|| d[0].clone())
    })
    .await;
    assert_eq!((dead.seq, dead.attempt), (seq, 2));
    assert!(dead.error.contains("HTTP 500"), "{dead:?}");
    let h = hook(&mut c, "bad").await;
    assert_eq!((h.cursor, h.delivering, h.dead), (seq, 0, 1));
    let replayed = c
        .hooks
        .replay_delivery(pb::ReplayDeliveryRequest {
            name: "bad".into(),
            seq,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(replayed.replayed);
    wait_for(
        "the replay to die again",
        Duration::from_secs(20),
        async || {
            let d = deliveries(&mut c, "bad", true).await;
            (d.len() == 1 && d[0].first_started_ms > dead.finished_ms).then_some(())
        },
    )
    .await;
    let fails = got
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == "/fail")
        .count();
    assert_eq!(fails, 4, "two attempts, then two more for the replay");
    // The last order.new went to `out` too: six delivered there, each once.
    let to_out: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.0 == "/in")
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(to_out.len(), 6);
    assert_eq!(to_out[5], format!("out/{seq}"));
    let (_, text) = super::common::http_get(&n.http("/metrics")).await;
    assert!(
        text.contains("nexus_hook_deliveries_total{kind=\"webhook\",outcome=\"succeeded\"} 6"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_start_workflows_and_inbound_endpoints_take_signed_requests_only() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut c = n.client().await;
    // A trigger per signup event starts a workflow run whose id is the delivery's.
    define(
        &mut c,
        json!({"name": "greet", "steps": [{"id": "say", "tool": "memory.put",
            "args": {"namespace": "greet", "key": "${input.name}", "value": "${run.id}"}}]}),
    )
    .await
    .unwrap();
    c.hooks
        .put_hook(pb::Hook {
            name: "on-signup".into(),
            topics: vec!["signup.*".into()],
            target: Some(pb::hook::Target::Tool(pb::HookTool {
                tool: "workflow.start".into(),
                args: json!({"workflow": "greet", "input": "${event.data}", "id": "${event.id}"})
                    .to_string(),
            })),
            ..Default::default()
        })
        .await
        .unwrap();
    let seq = publish(&mut c, "signup.web", json!({"name": "ada"})).await;
    let id = format!("on-signup/{seq}");
    wait_for("the run", Duration::from_secs(20), async || {
        c.workflows
            .get_workflow_run(pb::GetWorkflowRunRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await
            .ok()
    })
    .await;
    let run = wait_run(&mut c, &id, Duration::from_secs(20), |r| {
        r.state != "running"
    })
    .await;
    assert_eq!(run.state, "succeeded", "{run:#?}");
    let item = c
        .memory
        .get(pb::GetRequest {
            namespace: "greet".into(),
            key: "ada".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(item.value, format!("\"{id}\""));
    let d = deliveries(&mut c, "on-signup", false).await;
    assert_eq!(d.len(), 1);
    let out: Value = serde_json::from_str(&d[0].output).unwrap();
    assert_eq!(
        (out["id"].as_str(), out["existing"].as_bool()),
        (Some(id.as_str()), Some(false))
    );

    // Inbound: signed requests become events; anything else changes nothing.
    c.secrets
        .set_secret(pb::SetSecretRequest {
            name: "ghkey".into(),
            value: KEY.to_vec(),
        })
        .await
        .unwrap();
    let e = c
        .hooks
        .put_inbound(pb::Inbound {
            name: "gh".into(),
            topic: "github.push".into(),
            secret: "nokey".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("invalid secret:"), "{e:?}");
    let inbound = c
        .hooks
        .put_inbound(pb::Inbound {
            name: "gh".into(),
            topic: "github.push".into(),
            secret: "ghkey".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inbound.path, "/hooks/default/gh");
    let url = n.http(&inbound.path);
    let body = br#"{"ref": "main"}"#;
    let (code, text) = post(&url, &[("Nexus-Signature", sign(now_s(), body))], body).await;
    assert_eq!(code, 202, "{text}");
    let seq: u64 = serde_json::from_str::<Value>(&text).unwrap()["seq"]
        .as_u64()
        .unwrap();
    // GitHub's form.
    let k = hmac::Key::new(hmac::HMAC_SHA256, KEY);
    let hub = format!("sha256={}", hex(hmac::sign(&k, body).as_ref()));
    let (code, _) = post(&url, &[("X-Hub-Signature-256", hub)], body).await;
    assert_eq!(code, 202);
    for (headers, code, why) in [
        (vec![], 401, "no signature"),
        (
            vec![("Nexus-Signature", sign(now_s(), b"{}"))],
            401,
            "another body's",
        ),
        (
            vec![("Nexus-Signature", sign(now_s() - 3600, body))],
            401,
            "an hour old",
        ),
        (
            vec![("X-Hub-Signature-256", "sha256=00".to_string())],
            401,
            "a wrong one",
        ),
    ] {
        let (got, text) = post(&url, &headers, body).await;
        assert_eq!(got, code, "{why}: {text}");
    }
    let not_json = b"not json";
    let (code, _) = post(
        &url,
        &[("Nexus-Signature", sign(now_s(), not_json))],
        not_json,
    )
    .await;
    assert_eq!(code, 400);
    for path in ["/hooks/default/nope", "/hooks/other-tenant/gh"] {
        let (code, _) = post(
            &n.http(path),
            &[("Nexus-Signature", sign(now_s(), body))],
            body,
        )
        .await;
        assert_eq!(code, 404, "{path}");
    }
    let events = c
        .events
        .list_events(pb::ListEventsRequest {
            patterns: vec!["github.>".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0].seq, seq);
    assert_eq!(events[0].source, "webhook:gh");
    assert_eq!(
        serde_json::from_str::<Value>(&events[0].data).unwrap(),
        json!({"ref": "main"})
    );
    let listed = c
        .hooks
        .list_inbound(pb::ListHooksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .inbound;
    assert_eq!(listed[0].received, 2);
}
