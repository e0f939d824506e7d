//! The state machine's rules for hooks and deliveries, applied directly to a store.

use super::*;
use crate::store::ApplyCtx;

fn hook(name: &str) -> HookRecord {
    HookRecord {
        name: name.into(),
        description: String::new(),
        topics: vec!["order.>".into()],
        target: Target::Webhook {
            url: "http://127.0.0.1:1/".into(),
            secret: "whkey".into(),
        },
        owner: "local".into(),
        retry: RetryPolicy::default(),
        keep_deliveries: 2,
        paused: false,
        cursor: 0,
        head: 0,
        delivered: 0,
        dead: 0,
        deliveries: 0,
        replays: 0,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

fn begin(expected: u64, seq: u64) -> HookOp {
    HookOp::Begin {
        name: "out".into(),
        expected_cursor: expected,
        seq,
        topic: "order.new".into(),
        node: 1,
        at_ms: 10,
    }
}

fn finish(seq: u64, attempt: u32, outcome: Outcome) -> HookOp {
    HookOp::Finish {
        name: "out".into(),
        seq,
        attempt,
        outcome,
        at_ms: 20,
    }
}

fn ok() -> Outcome {
    Outcome::Succeeded {
        output: "200".into(),
    }
}

#[test]
fn deliveries_move_the_cursor_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let step = |op: HookOp| {
        let mut c = ApplyCtx::new(&store);
        let r = apply(&mut c, "acme", &op).unwrap();
        store.db().write(c.finish().unwrap()).unwrap();
        r
    };
    step(HookOp::Put {
        hook: hook("out"),
        start_after: Some(4),
    })
    .unwrap();
    // Event 7 is the first match after 4; two leaders cannot both begin it.
    step(begin(4, 7)).unwrap();
    assert!(step(begin(4, 7)).is_err());
    assert!(step(begin(6, 8)).is_err(), "one in progress at a time");
    let h = read(&store, "acme", "out").unwrap().unwrap();
    assert_eq!((h.cursor, h.head), (6, 7));
    // A failure to retry keeps the cursor; the retry's success moves it past 7.
    step(finish(
        7,
        1,
        Outcome::Failed {
            error: "503".into(),
            retry_at_ms: 50,
        },
    ))
    .unwrap();
    assert!(step(finish(7, 1, ok())).is_err(), "attempt 1 finished");
    step(HookOp::Start {
        name: "out".into(),
        seq: 7,
        from: RunState::Waiting,
        from_attempt: 1,
        attempt: 2,
        node: 2,
        at_ms: 50,
    })
    .unwrap();
    step(finish(7, 2, ok())).unwrap();
    let h = read(&store, "acme", "out").unwrap().unwrap();
    assert_eq!((h.cursor, h.head, h.delivered), (7, 0, 1));
    // A dead delivery moves the cursor too, and can be replayed.
    step(begin(7, 9)).unwrap();
    step(finish(
        9,
        1,
        Outcome::Failed {
            error: "refused".into(),
            retry_at_ms: 0,
        },
    ))
    .unwrap();
    let h = read(&store, "acme", "out").unwrap().unwrap();
    assert_eq!((h.cursor, h.dead), (9, 1));
    let d = match step(HookOp::Replay {
        name: "out".into(),
        seq: 9,
        at_ms: 60,
    })
    .unwrap()
    {
        HookReply::Delivery(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (d.state, d.attempt, d.replayed),
        (RunState::Waiting, 0, true)
    );
    // Passing over events that matched nothing.
    step(HookOp::Pass {
        name: "out".into(),
        expected_cursor: 9,
        to: 300,
    })
    .unwrap();
    step(begin(300, 301)).unwrap();
    step(finish(301, 1, ok())).unwrap();
    // Two kept: the oldest finished one went (the replay waiting stays).
    let kept: Vec<u64> = deliveries(&store, "acme", "out", 10)
        .unwrap()
        .iter()
        .map(|d| d.seq)
        .collect();
    assert_eq!(kept, vec![301, 9]);
    // A new hook starts after the tenant's last event.
    let HookReply::Hook(h) = step(HookOp::Put {
        hook: hook("fresh"),
        start_after: None,
    })
    .unwrap() else {
        panic!()
    };
    assert_eq!(h.cursor, 0);
    assert!(list(&store, "other").unwrap().is_empty());
}
