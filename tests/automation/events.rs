//! Events through a real `nexus` with authentication on: subscribers with wildcards get what
//! is published over gRPC, in order, once each; memory changes publish their own; a
//! subscriber resumes after the last number it processed; nothing crosses tenants; bad input
//! and missing permissions are refused; a subscriber that stops reading is dropped, told
//! where to resume, while another keeps receiving everything.

use std::time::Duration;

use nexus_client::{pb, Client};
use serde_json::{json, Value};
use tonic::{Code, Streaming};

use super::common::{api_key, create_tenants, Nexus};
use super::ROOT;

async fn publish(c: &mut Client, events: &[(&str, Value)]) -> Result<(u64, u64), tonic::Status> {
    let r = c
        .events
        .publish(pb::PublishRequest {
            events: events
                .iter()
                .map(|(t, d)| pb::EventInput {
                    topic: t.to_string(),
                    data: d.to_string(),
                })
                .collect(),
        })
        .await?
        .into_inner();
    Ok((r.first_seq, r.last_seq))
}

async fn subscribe(
    c: &mut Client,
    patterns: &[&str],
    after_seq: Option<u64>,
) -> Result<Streaming<pb::Event>, tonic::Status> {
    Ok(c.events
        .subscribe(pb::SubscribeRequest {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            after_seq,
        })
        .await?
        .into_inner())
}

/// The next `n` events of a stream, within 10 s.
async fn next(s: &mut Streaming<pb::Event>, n: usize) -> Vec<pb::Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .unwrap_or_else(|_| panic!("waited for event {} of {n}: got {out:#?}", out.len() + 1))
            .unwrap()
            .expect("the stream ended");
        out.push(e);
    }
    out
}

/// Nothing more arrives for a while.
async fn quiet(s: &mut Streaming<pb::Event>) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(700), s.message()).await {
        panic!("expected nothing, got {m:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_what_matches_once_in_order_and_resume_where_they_left() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme", "globex"]).await;
    let mut agent = n
        .client_with(Some(&api_key(&root, "acme", "bot", &["agent"], 0).await))
        .await;
    let mut reader = n
        .client_with(Some(&api_key(&root, "acme", "peek", &["reader"], 0).await))
        .await;
    let mut other = n
        .client_with(Some(&api_key(&root, "globex", "bot", &["agent"], 0).await))
        .await;

    let mut one = subscribe(&mut agent, &["task.*"], None).await.unwrap();
    let mut many = subscribe(&mut agent, &["task.>"], None).await.unwrap();
    let mut notes = subscribe(&mut agent, &["memory.*.notes"], None)
        .await
        .unwrap();
    let mut theirs = subscribe(&mut other, &[">"], None).await.unwrap();
    let (first, last) = publish(
        &mut agent,
        &[
            ("task.done", json!({"id": 1})),
            ("task.a.b", json!({"id": 2})),
            ("other.x", json!(null)),
            ("task.failed", json!({"id": 3, "why": "boom"})),
        ],
    )
    .await
    .unwrap();
    assert_eq!(last - first, 3);
    let got = next(&mut one, 2).await;
    assert_eq!(
        got.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
        vec!["task.done", "task.failed"]
    );
    assert_eq!((got[0].seq, got[1].seq), (first, first + 3));
    assert_eq!(got[1].source, "sa:bot");
    let data: Value = serde_json::from_str(&got[1].data).unwrap();
    assert_eq!(data, json!({"id": 3, "why": "boom"}));
    let got = next(&mut many, 3).await;
    assert_eq!(
        got.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
        vec!["task.done", "task.a.b", "task.failed"]
    );
    quiet(&mut one).await;

    // Memory changes publish their own: an agent watches a namespace.
    agent
        .memory
        .put(pb::PutRequest {
            namespace: "notes".into(),
            key: "k1".into(),
            value: "\"milk\"".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    agent
        .memory
        .put(pb::PutRequest {
            namespace: "elsewhere".into(),
            key: "k2".into(),
            value: "1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    agent
        .memory
        .delete(pb::DeleteRequest {
            namespace: "notes".into(),
            key: "k1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = next(&mut notes, 2).await;
    assert_eq!(
        got.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
        vec!["memory.put.notes", "memory.delete.notes"]
    );
    assert_eq!(got[0].source, "nexus");
    let data: Value = serde_json::from_str(&got[0].data).unwrap();
    assert_eq!(data, json!({"namespace": "notes", "key": "k1"}));
    quiet(&mut notes).await;

    // Another tenant's subscriber saw none of it, and numbers its own from 1.
    quiet(&mut theirs).await;
    let (f, _) = publish(&mut other, &[("task.done", json!(1))])
        .await
        .unwrap();
    assert_eq!(f, 1);
    assert_eq!(next(&mut theirs, 1).await[0].topic, "task.done");
    quiet(&mut one).await;

    // Resuming after the first: the rest, from the log.
    drop(many);
    let mut again = subscribe(&mut agent, &["task.>"], Some(first))
        .await
        .unwrap();
    let got = next(&mut again, 2).await;
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![first + 1, first + 3]
    );
    let listed = agent
        .events
        .list_events(pb::ListEventsRequest {
            patterns: vec![">".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.events.len(), 7, "{listed:#?}");
    assert_eq!((listed.first_seq, listed.last_seq), (1, 7));

    // Refusals, with the field named; nothing is published.
    for (events, field) in [
        (vec![("task.*", json!(1))], "events[0].topic"),
        (
            vec![("ok", json!(1)), ("a..b", json!(1))],
            "events[1].topic",
        ),
        (vec![("t x", json!(1))], "events[0].topic"),
    ] {
        let e = publish(&mut agent, &events).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with(&format!("invalid {field}:")),
            "{e:?}"
        );
    }
    let e = agent
        .events
        .publish(pb::PublishRequest {
            events: vec![pb::EventInput {
                topic: "t".into(),
                data: "{not json".into(),
            }],
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("invalid events[0].data:"), "{e:?}");
    let e = publish(&mut agent, &[]).await.unwrap_err();
    assert!(e.message().starts_with("invalid events:"), "{e:?}");
    for (patterns, field) in [(vec![], "patterns"), (vec!["a.>.b"], "patterns[0]")] {
        let e = subscribe(&mut agent, &patterns, None).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with(&format!("invalid {field}:")),
            "{e:?}"
        );
    }
    let e = publish(&mut reader, &[("task.done", json!(1))])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = subscribe(&mut reader, &[">"], None).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut anonymous = n.client_with(None).await;
    let e = subscribe(&mut anonymous, &[">"], None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let after = agent
        .events
        .list_events(pb::ListEventsRequest {
            patterns: vec![">".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.last_seq, 7, "the refusals published nothing");
    quiet(&mut one).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_dropped_and_another_keeps_receiving() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("NEXUS_AUTH__ENABLED", "true"), ("NEXUS_ROOT_KEY", ROOT)];
    let n = Nexus::start(dir.path(), &env).await;
    let root = n.client().await;
    create_tenants(&root, &["acme"]).await;
    let key = api_key(&root, "acme", "bot", &["agent"], 0).await;
    // Each on a connection of its own, as separate clients would be.
    let mut publisher = n.client_with(Some(&key)).await;
    let mut fast_client = n.client_with(Some(&key)).await;
    let mut slow_client = n.client_with(Some(&key)).await;
    let mut fast = subscribe(&mut fast_client, &[">"], None).await.unwrap();
    let mut slow = subscribe(&mut slow_client, &["load.*"], None)
        .await
        .unwrap();

    // 4,000 events of 2 KB (8 MB): more than the slow one's stream buffers hold.
    const BATCHES: usize = 40;
    let payload = "x".repeat(2000);
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while seqs.len() < BATCHES * 100 {
            let e = tokio::time::timeout(Duration::from_secs(30), fast.message())
                .await
                .expect("the fast subscriber waited 30 s")
                .unwrap()
                .expect("the fast subscriber's stream ended");
            seqs.push(e.seq);
        }
        seqs
    });
    for b in 0..BATCHES {
        let events: Vec<(&str, Value)> = (0..100)
            .map(|i| ("load.tick", json!({"i": b * 100 + i, "pad": payload})))
            .collect();
        publish(&mut publisher, &events).await.unwrap();
    }
    let seqs = reader.await.unwrap();
    assert_eq!(
        seqs,
        (1..=(BATCHES * 100) as u64).collect::<Vec<_>>(),
        "all, in order, once"
    );

    // The slow one never read; after 5 s without taking an event it was dropped. Reading now
    // gives what its buffers held, then the reason and where to resume.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut received = 0u64;
    let mut last = 0;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.message()).await {
            Ok(Ok(Some(e))) => {
                received += 1;
                assert_eq!(e.seq, last + 1);
                last = e.seq;
            }
            Ok(Err(status)) => break status,
            other => panic!("after {received} events: {other:?}"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("after_seq {last}")),
        "{status:?}"
    );
    assert!(
        received < (BATCHES * 100) as u64,
        "it was dropped before the end"
    );
    // It resumes where it left, and gets the rest.
    let mut resumed = subscribe(&mut slow_client, &["load.*"], Some(last))
        .await
        .unwrap();
    let rest = next(&mut resumed, BATCHES * 100 - last as usize).await;
    assert_eq!(rest.last().unwrap().seq, (BATCHES * 100) as u64);
    eprintln!("the slow subscriber took {received} events before it was dropped");
}
