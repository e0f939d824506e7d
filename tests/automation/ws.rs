//! The WebSocket API at `/ws` through a real `nexus` with authentication on, from a real
//! WebSocket client (tokio-tungstenite): a wildcard subscription receives what another client
//! publishes over gRPC; a browser authenticates with a first message; publishing and tool
//! calls with request ids; unauthenticated upgrades and another tenant's events refused or
//! unseen; a client that stops reading is dropped while another keeps receiving.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use nexus_client::pb;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::common::{api_key, create_tenants, Nexus};
use super::ROOT;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(
    n: &Nexus,
    token: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = n
        .http("/ws")
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message (pings and pongs skipped), within 10 s.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10 s")
            .expect("the socket ended")
            .unwrap();
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
}

async fn quiet(ws: &mut Ws) {
    if let Ok(Some(Ok(Message::Text(t)))) =
        tokio::time::timeout(Duration::from_millis(700), ws.next()).await
    {
        panic!("expected nothing, got {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_subscribe_publish_and_call_within_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let agent = api_key(&root, "acme", "bot", &["agent"], 0).await;
    let reader = api_key(&root, "acme", "peek", &["reader"], 0).await;
    let other = api_key(&root, "globex", "bot", &["agent"], 0).await;

    // A bad token in the upgrade request: 401, no socket.
    match connect(&n, Some("nxk_bad_token")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // Without a token, anything but an auth message first is refused and the socket closed.
    let mut anon = connect(&n, None).await.unwrap();
    send(
        &mut anon,
        json!({"type": "subscribe", "id": "s", "patterns": [">"]}),
    )
    .await;
    let e = recv(&mut anon).await;
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    match tokio::time::timeout(Duration::from_secs(5), anon.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(c)))) => assert_eq!(u16::from(c.code), 1008),
        other => panic!("{other:?}"),
    }

    // A header-authenticated client subscribes with a wildcard.
    let mut a = connect(&n, Some(&agent)).await.unwrap();
    let ready = recv(&mut a).await;
    assert_eq!(
        (ready["type"].as_str(), ready["tenant"].as_str()),
        (Some("ready"), Some("acme"))
    );
    send(
        &mut a,
        json!({"type": "subscribe", "id": "s1", "patterns": ["task.*"]}),
    )
    .await;
    assert_eq!(
        recv(&mut a).await,
        json!({"type": "subscribed", "id": "s1"})
    );
    // A browser: the token in its first message.
    let mut b = connect(&n, None).await.unwrap();
    send(&mut b, json!({"type": "auth", "id": 1, "token": agent})).await;
    assert_eq!(recv(&mut b).await["type"], "ready");
    send(
        &mut b,
        json!({"type": "subscribe", "id": "all", "patterns": ["task.>"], "after_seq": 0}),
    )
    .await;
    assert_eq!(recv(&mut b).await["type"], "subscribed");
    // Another tenant subscribes to everything: it sees none of acme's.
    let mut g = connect(&n, Some(&other)).await.unwrap();
    recv(&mut g).await;
    send(
        &mut g,
        json!({"type": "subscribe", "id": "g", "patterns": [">"]}),
    )
    .await;
    recv(&mut g).await;

    // Published over gRPC by another client.
    let mut grpc = n.client_with(Some(&agent)).await;
    grpc.events
        .publish(pb::PublishRequest {
            events: vec![
                pb::EventInput {
                    topic: "task.done".into(),
                    data: r#"{"id": 1}"#.into(),
                },
                pb::EventInput {
                    topic: "task.a.b".into(),
                    data: "2".into(),
                },
            ],
        })
        .await
        .unwrap();
    let e = recv(&mut a).await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["id"].as_str(),
            e["topic"].as_str(),
            e["data"]["id"].as_i64()
        ),
        (Some("event"), Some("s1"), Some("task.done"), Some(1))
    );
    assert_eq!(e["source"], "sa:bot");
    quiet(&mut a).await;
    let got: Vec<String> = [recv(&mut b).await, recv(&mut b).await]
        .iter()
        .map(|e| e["topic"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, vec!["task.done", "task.a.b"]);
    quiet(&mut g).await;

    // Publishing and calling over the socket, replies matched by id.
    send(
        &mut b,
        json!({"type": "publish", "id": "p1", "topic": "task.ws", "data": {"from": "browser"}}),
    )
    .await;
    send(
        &mut b,
        json!({"type": "call", "id": "c1", "tool": "echo", "args": {"text": "hi"}}),
    )
    .await;
    let mut replies = Vec::new();
    while replies.len() < 3 {
        replies.push(recv(&mut b).await);
    }
    let by = |kind: &str| replies.iter().find(|r| r["type"] == kind).cloned().unwrap();
    assert_eq!(by("published")["id"], "p1");
    assert_eq!(by("result")["output"], json!({"text": "hi"}));
    assert_eq!(by("event")["topic"], "task.ws");
    assert_eq!(recv(&mut a).await["topic"], "task.ws");
    // Remember and recall are the memory tools.
    send(
        &mut b,
        json!({"type": "call", "id": "m", "tool": "memory.put",
                        "args": {"namespace": "ws", "key": "k", "value": 1}}),
    )
    .await;
    assert_eq!(recv(&mut b).await["output"]["version"], 1);
    // Refusals name what is wrong and keep the socket open.
    for (msg, code) in [
        (
            json!({"type": "publish", "id": "x", "topic": "task.*"}),
            "INVALID_ARGUMENT",
        ),
        (
            json!({"type": "call", "id": "y", "tool": "no.such_tool"}),
            "NOT_FOUND",
        ),
        (
            json!({"type": "subscribe", "id": "all", "patterns": [">"]}),
            "ALREADY_EXISTS",
        ),
        (
            json!({"type": "subscribe", "id": "bad", "patterns": ["a.>.b"]}),
            "INVALID_ARGUMENT",
        ),
        (json!({"type": "dance", "id": "z"}), "INVALID_ARGUMENT"),
    ] {
        send(&mut b, msg.clone()).await;
        let e = recv(&mut b).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{msg}: {e}"
        );
        assert_eq!(e["id"], msg["id"]);
    }
    send(&mut b, json!({"type": "unsubscribe", "id": "all"})).await;
    assert_eq!(recv(&mut b).await["type"], "unsubscribed");
    send(&mut b, json!({"type": "ping", "id": 9})).await;
    assert_eq!(recv(&mut b).await, json!({"type": "pong", "id": 9}));
    // A reader may not publish or subscribe.
    let mut r = connect(&n, Some(&reader)).await.unwrap();
    recv(&mut r).await;
    send(
        &mut r,
        json!({"type": "publish", "id": "p", "topic": "task.x"}),
    )
    .await;
    assert_eq!(recv(&mut r).await["code"], "PERMISSION_DENIED");
    send(
        &mut r,
        json!({"type": "subscribe", "id": "s", "patterns": [">"]}),
    )
    .await;
    assert_eq!(recv(&mut r).await["code"], "PERMISSION_DENIED");
    // The publish over the socket is on record, as the key's.
    let tail = root
        .audit
        .clone()
        .tail(pb::AuditTailRequest {
            limit: 100,
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        tail.iter().any(|r| r.action == "events.publish"
            && r.resource == "events/task.ws"
            && r.principal == "sa:bot"),
        "{tail:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stops_reading_is_dropped_and_another_keeps_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let key = api_key(&root, "acme", "bot", &["agent"], 0).await;
    let mut slow = connect(&n, Some(&key)).await.unwrap();
    recv(&mut slow).await;
    send(
        &mut slow,
        json!({"type": "subscribe", "id": "s", "patterns": [">"]}),
    )
    .await;
    assert_eq!(recv(&mut slow).await["type"], "subscribed");
    let mut fast = connect(&n, Some(&key)).await.unwrap();
    recv(&mut fast).await;
    send(
        &mut fast,
        json!({"type": "subscribe", "id": "f", "patterns": [">"]}),
    )
    .await;
    assert_eq!(recv(&mut fast).await["type"], "subscribed");

    const TOTAL: usize = 6000;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < TOTAL {
            let e = recv(&mut fast).await;
            seqs.push(e["seq"].as_u64().unwrap());
        }
        seqs
    });
    let mut grpc = n.client_with(Some(&key)).await;
    let pad = "x".repeat(2000);
    for b in 0..TOTAL / 100 {
        grpc.events
            .publish(pb::PublishRequest {
                events: (0..100)
                    .map(|i| pb::EventInput {
                        topic: "load.tick".into(),
                        data: json!({"i": b * 100 + i, "pad": pad}).to_string(),
                    })
                    .collect(),
            })
            .await
            .unwrap();
    }
    let seqs = reader.await.unwrap();
    assert_eq!(
        seqs,
        (1..=TOTAL as u64).collect::<Vec<_>>(),
        "all, in order, once"
    );
    // The slow one was dropped: reading now gives what the buffers held, then the end.
    let mut received = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(30), slow.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => received += 1,
            Ok(Some(Ok(Message::Close(c)))) => break format!("{c:?}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => break format!("{e}"),
            Ok(None) => break "ended".into(),
            Err(_) => panic!("the slow client is still served after {received} events"),
        }
    };
    assert!(
        received < TOTAL,
        "dropped before the end ({received} events, then {ended})"
    );
    eprintln!("the slow client got {received} events, then: {ended}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_cannot_open_a_socket_on_a_node_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut request = n
        .http("/ws")
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A client that is not a browser (no Origin) is the local user.
    let mut ws = connect(&n, None).await.unwrap();
    assert_eq!(recv(&mut ws).await["subject"], "local");
}
