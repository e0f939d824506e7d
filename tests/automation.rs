//! Schedules through real `nexus` processes: an every-second schedule on a 3-node cluster
//! keeps firing through a kill -9 of its leader, each due time recorded once and its target
//! (memory.put under the run id) run once; retries with backoff against a receiver on
//! loopback that fails twice, the dead-letter list and a replay; bad input refused with the
//! field named and nothing changed; the owner's grants read again at each run; nothing
//! crosses tenants; `nexusctl schedule` tables and JSON. Events (tests/automation/events.rs):
//! wildcards, resume, memory changes, tenants, refusals and a slow subscriber dropped. The
//! WebSocket API (tests/automation/ws.rs). Workflows (tests/automation/workflows.rs), and
//! triggers, webhooks and inbound endpoints (tests/automation/hooks.rs).

mod common;
#[path = "automation/events.rs"]
mod events;
#[path = "automation/hooks.rs"]
mod hooks;
#[path = "automation/schedule_api.rs"]
mod schedule_api;
#[path = "automation/workflows.rs"]
mod workflows;
#[path = "automation/ws.rs"]
mod ws;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{agreed_leader, api_key, create_tenants, nexus_bin, Nexus};
use nexus_client::{pb, Client};
use serde_json::{json, Value};
use tonic::Code;

const ROOT: &str = "root-key-for-schedule-tests-0123456789abcdef";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn every(name: &str, ms: u64, tool: &str, args: Value) -> pb::Schedule {
    pb::Schedule {
        name: name.into(),
        spec: Some(pb::schedule::Spec::EveryMs(ms)),
        tool: tool.into(),
        args: args.to_string(),
        ..Default::default()
    }
}

async fn runs(c: &mut Client, name: &str, dead: bool) -> Vec<pb::Run> {
    c.schedules
        .list_runs(pb::ListRunsRequest {
            name: name.into(),
            limit: 1000,
            dead,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

async fn get(c: &mut Client, name: &str) -> pb::Schedule {
    c.schedules
        .get_schedule(pb::GetScheduleRequest {
            name: name.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `check` holds for the schedule's runs (newest first), or fails with them.
async fn wait_runs(
    c: &mut Client,
    name: &str,
    within: Duration,
    check: impl Fn(&[pb::Run]) -> bool,
) -> Vec<pb::Run> {
    let deadline = Instant::now() + within;
    loop {
        let r = runs(c, name, false).await;
        if check(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "runs of {name}: {r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every memory of a namespace: key -> version.
async fn versions(c: &mut Client, namespace: &str) -> BTreeMap<String, u64> {
    let items = c
        .memory
        .list(pb::ListRequest {
            namespace: namespace.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    items.into_iter().map(|i| (i.key, i.version)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_second_schedule_fires_once_per_due_time_through_a_leader_kill() {
    let _one = common::one_cluster_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Nexus::start_cluster(dir.path(), 3, &[]).await;
    let leader = agreed_leader(&nodes).await;
    let follower = (leader + 1) % 3;
    let mut c = nodes[follower].client().await;
    // The target keeps its own count: one memory per run, named by the run id, whose version
    // says how many times it was written.
    let mut tick = every(
        "tick",
        1000,
        "memory.put",
        json!({"namespace": "ticks", "key": "${run.id}", "value": "${run.due_ms}"}),
    );
    tick.overlap = pb::Overlap::Allow as i32;
    // An attempt cut short by the kill is started again by the next leader.
    tick.retry = Some(pb::RetryPolicy {
        max_attempts: 3,
        initial_backoff_ms: 200,
        ..Default::default()
    });
    let made = c.schedules.add_schedule(tick).await.unwrap().into_inner();
    assert_eq!(made.owner, "local");
    assert!(made.next_due_ms > made.created_at_ms);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before_kill = runs(&mut c, "tick", false).await.len();
    assert!(before_kill >= 3, "{before_kill} runs in 5 s");

    nodes[leader].kill9();
    let killed_at = now_ms();
    let new_leader = agreed_leader(&nodes).await;
    assert_ne!(new_leader, leader);
    let mut c = nodes[new_leader].client().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let paused = c
        .schedules
        .pause_schedule(pb::PauseScheduleRequest {
            name: "tick".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let paused_at = paused.updated_at_ms;
    // Whatever was in progress finishes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&mut c, "tick").await.active > 0 {
        assert!(
            Instant::now() < deadline,
            "{:#?}",
            get(&mut c, "tick").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut all = runs(&mut c, "tick", false).await;
    all.reverse();
    let s = get(&mut c, "tick").await;
    // Every due time from the first to the last is on record once, each run succeeded.
    assert!(all.iter().all(|r| r.state == "succeeded"), "{all:#?}");
    for w in all.windows(2) {
        assert_eq!(
            w[1].due_ms - w[0].due_ms,
            1000,
            "a due time missed or doubled: {all:#?}"
        );
    }
    assert_eq!(s.fired as usize, all.len());
    // Against the wall clock: every due time after the schedule was made and before it was
    // paused was fired (the last one may have come due as the pause was applied).
    let due_until_pause = ((paused_at - made.created_at_ms) / 1000) as usize;
    assert_eq!(
        all[0].due_ms, made.next_due_ms,
        "the first due time fired first"
    );
    assert!(
        all.len() + 1 >= due_until_pause && all.len() <= due_until_pause,
        "{} runs, {due_until_pause} due times before the pause",
        all.len()
    );
    let across_kill = all
        .iter()
        .filter(|r| r.due_ms > killed_at - 1000 && r.due_ms < killed_at + 5000)
        .count();
    assert!(
        across_kill >= 5,
        "the due times around the kill fired too: {all:#?}"
    );
    // The target ran once per run: one memory each, written once, except where a leader died
    // during the run (the run says so), which may have written it once more.
    let v = versions(&mut c, "ticks").await;
    assert_eq!(v.len(), all.len(), "{v:?}");
    let mut twice = 0;
    for r in &all {
        let version = v[&r.id];
        if r.interrupted == 0 {
            assert_eq!(version, 1, "{} ran {version} times: {r:?}", r.id);
        } else {
            assert!(version <= 1 + u64::from(r.interrupted), "{r:?}");
            twice += 1;
        }
    }
    eprintln!(
        "{} runs, {} around the kill, {twice} interrupted by it",
        all.len(),
        across_kill
    );
    // Paused: nothing more fires.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&mut c, "tick").await.fired, s.fired);
}

/// An HTTP receiver on loopback that drops the first `fail` connections without a reply
/// (the caller sees an error) and answers 200 after; it counts every connection.
async fn flaky_receiver(fail: u32) -> (String, Arc<AtomicU32>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/hook",
        listener.local_addr().unwrap().port()
    );
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= fail {
                drop(sock);
                continue;
            }
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (url, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_then_dead_letter_and_replay() {
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
    // Fails twice, then answers: the third attempt succeeds.
    let (url, hits) = flaky_receiver(2).await;
    let soon = now_ms() + 500;
    let retry = |attempts| {
        Some(pb::RetryPolicy {
            max_attempts: attempts,
            initial_backoff_ms: 300,
            max_backoff_ms: 1000,
            timeout_ms: 5000,
        })
    };
    c.schedules
        .add_schedule(pb::Schedule {
            name: "hook".into(),
            spec: Some(pb::schedule::Spec::AtMs(soon)),
            tool: "http.request".into(),
            args: json!({"url": url, "method": "POST", "body": {"run": "${run.id}"}}).to_string(),
            retry: retry(4),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = wait_runs(&mut c, "hook", Duration::from_secs(20), |r| {
        r.first().is_some_and(|r| r.state == "succeeded")
    })
    .await;
    let run = &done[0];
    assert_eq!((run.attempt, run.due_ms), (3, soon), "{run:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        3,
        "the receiver counted three attempts"
    );
    // Two backoffs of about 300 and 600 ms (less up to a fifth): the third attempt started
    // at least 720 ms after the first.
    assert!(
        run.started_ms - run.first_started_ms >= 720,
        "{} ms between the first and the third attempt",
        run.started_ms - run.first_started_ms
    );
    let output: Value = serde_json::from_str(&run.output).unwrap();
    assert_eq!(output["status"], 200);
    let s = get(&mut c, "hook").await;
    assert_eq!(
        (s.next_due_ms, s.active, s.fired),
        (0, 0, 1),
        "a one-shot fires once"
    );

    // Nothing listens there: two attempts, then the run is dead.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let soon = now_ms() + 300;
    c.schedules
        .add_schedule(pb::Schedule {
            name: "gone".into(),
            spec: Some(pb::schedule::Spec::AtMs(soon)),
            tool: "http.request".into(),
            args: json!({"url": format!("http://127.0.0.1:{closed}/x")}).to_string(),
            retry: retry(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let dead = wait_runs(&mut c, "gone", Duration::from_secs(20), |r| {
        r.first().is_some_and(|r| r.state == "dead")
    })
    .await;
    assert_eq!(dead[0].attempt, 2);
    assert!(dead[0].error.contains("http.request"), "{:?}", dead[0]);
    let letters = runs(&mut c, "gone", true).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, format!("gone/{soon}"));
    assert!(
        runs(&mut c, "hook", true).await.is_empty(),
        "only dead runs"
    );
    // Replayed: a new first attempt, which fails again and is retried once.
    let replayed = c
        .schedules
        .replay_run(pb::ReplayRunRequest {
            name: "gone".into(),
            due_ms: soon,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((replayed.state.as_str(), replayed.attempt), ("waiting", 0));
    let e = c
        .schedules
        .replay_run(pb::ReplayRunRequest {
            name: "hook".into(),
            due_ms: done[0].due_ms,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("only a dead run"), "{e:?}");
    let again = wait_runs(&mut c, "gone", Duration::from_secs(20), |r| {
        r.first()
            .is_some_and(|r| r.state == "dead" && r.first_started_ms > replayed.retry_at_ms - 1)
    })
    .await;
    assert_eq!(again[0].attempt, 2);
    // On /metrics.
    let (_, text) = common::http_get(&n.http("/metrics")).await;
    assert!(
        text.contains("nexus_schedule_runs_total{outcome=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("nexus_schedule_runs_total{outcome=\"dead\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("nexus_schedule_fire_lateness_seconds_count"),
        "{text}"
    );
}
