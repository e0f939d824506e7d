//! The state machine's rules for schedules and runs, applied directly to a store.

use super::*;
use crate::store::ApplyCtx;

fn schedule(name: &str, overlap: Overlap) -> ScheduleRecord {
    ScheduleRecord {
        name: name.into(),
        description: String::new(),
        spec: Spec::Every { every_ms: 1000 },
        tool: "time.now".into(),
        args: "{}".into(),
        owner: "local".into(),
        overlap,
        jitter_ms: 0,
        catch_up_ms: 60_000,
        retry: RetryPolicy::default(),
        keep_runs: 3,
        paused: false,
        next_due_ms: 1000,
        active: 0,
        queued_due_ms: 0,
        runs: 0,
        fired: 0,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

fn fire(expected: i64, next: i64) -> ScheduleOp {
    ScheduleOp::Fire {
        name: "tick".into(),
        expected_ms: expected,
        skipped: 0,
        skipped_through_ms: 0,
        due_ms: Some(expected),
        next_due_ms: next,
        node: 1,
        at_ms: expected,
    }
}

fn finish(due: i64, attempt: u32, outcome: Outcome) -> ScheduleOp {
    ScheduleOp::Finish {
        name: "tick".into(),
        due_ms: due,
        attempt,
        outcome,
        at_ms: due + 5,
    }
}

fn ok() -> Outcome {
    Outcome::Succeeded {
        output: "{}".into(),
    }
}

#[test]
fn a_due_time_fires_once_and_runs_are_kept_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let step = |op: ScheduleOp| {
        let mut c = ApplyCtx::new(&store);
        let r = apply(&mut c, "acme", &op).unwrap();
        store.db().write(c.finish().unwrap()).unwrap();
        r
    };
    step(ScheduleOp::Put {
        schedule: schedule("tick", Overlap::Skip),
    })
    .unwrap();
    step(fire(1000, 2000)).unwrap();
    // A second leader firing the same due time is refused by the state machine.
    let err = step(fire(1000, 2000)).unwrap_err();
    assert!(
        matches!(err, NexusError::FailedPrecondition { .. }),
        "{err}"
    );
    // While it runs, the next due time is skipped (overlap skip).
    let ScheduleReply::Fired { run: Some(r) } = step(fire(2000, 3000)).unwrap() else {
        panic!()
    };
    assert_eq!(r.state, RunState::Skipped);
    // A stale finish (wrong attempt) is refused; the right one is recorded.
    assert!(step(finish(1000, 2, ok())).is_err());
    step(finish(1000, 1, ok())).unwrap();
    assert!(step(finish(1000, 1, ok())).is_err(), "finished once");
    for due in [3000, 4000, 5000] {
        step(fire(due, due + 1000)).unwrap();
        step(finish(due, 1, ok())).unwrap();
    }
    let kept = runs(&store, "acme", "tick", 10).unwrap();
    assert_eq!(
        kept.iter().map(|r| r.due_ms).collect::<Vec<_>>(),
        vec![5000, 4000, 3000],
        "the newest three"
    );
    let s = read(&store, "acme", "tick").unwrap().unwrap();
    assert_eq!((s.runs, s.active, s.fired, s.next_due_ms), (3, 0, 5, 6000));
    assert!(runs(&store, "other", "tick", 10).unwrap().is_empty());
}

#[test]
fn retries_interruptions_queue_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let step = |op: ScheduleOp| {
        let mut c = ApplyCtx::new(&store);
        let r = apply(&mut c, "acme", &op).unwrap();
        store.db().write(c.finish().unwrap()).unwrap();
        r
    };
    let mut s = schedule("tick", Overlap::Queue);
    s.keep_runs = 10;
    step(ScheduleOp::Put { schedule: s }).unwrap();
    step(fire(1000, 2000)).unwrap();
    let failed = |retry_at_ms| Outcome::Failed {
        error: "boom".into(),
        retry_at_ms,
    };
    step(finish(1000, 1, failed(1500))).unwrap();
    // Queued while the first waits for its retry; a third is skipped.
    let ScheduleReply::Fired { run: Some(q) } = step(fire(2000, 3000)).unwrap() else {
        panic!()
    };
    assert_eq!(q.state, RunState::Queued);
    let ScheduleReply::Fired { run: Some(k) } = step(fire(3000, 4000)).unwrap() else {
        panic!()
    };
    assert_eq!(k.state, RunState::Skipped);
    let start = |due: i64, from: RunState, from_attempt: u32, attempt: u32| ScheduleOp::Start {
        name: "tick".into(),
        due_ms: due,
        from,
        from_attempt,
        attempt,
        node: 2,
        at_ms: due + 600,
    };
    // Attempt 2, then a new leader finds it running and starts attempt 3.
    step(start(1000, RunState::Waiting, 1, 2)).unwrap();
    assert!(step(start(1000, RunState::Waiting, 1, 2)).is_err(), "once");
    step(start(1000, RunState::Running, 2, 3)).unwrap();
    assert!(
        step(finish(1000, 2, ok())).is_err(),
        "the old attempt's finish"
    );
    step(finish(1000, 3, failed(0))).unwrap();
    let dead = run(&store, "acme", "tick", 1000).unwrap().unwrap();
    assert_eq!(
        (dead.state, dead.attempt, dead.interrupted),
        (RunState::Dead, 3, 1)
    );
    // The queued one starts once nothing is in progress.
    step(start(2000, RunState::Queued, 0, 1)).unwrap();
    step(finish(2000, 1, ok())).unwrap();
    // Replaying the dead run: it waits for a first attempt, which starts as a retry's.
    assert!(
        step(ScheduleOp::Replay {
            name: "tick".into(),
            due_ms: 2000,
            at_ms: 9000
        })
        .is_err(),
        "only a dead run"
    );
    step(ScheduleOp::Replay {
        name: "tick".into(),
        due_ms: 1000,
        at_ms: 9000,
    })
    .unwrap();
    step(start(1000, RunState::Waiting, 0, 1)).unwrap();
    step(finish(1000, 1, ok())).unwrap();
    let s = read(&store, "acme", "tick").unwrap().unwrap();
    assert_eq!((s.active, s.queued_due_ms), (0, 0));
    // Deleting takes the runs along.
    step(ScheduleOp::Delete {
        name: "tick".into(),
    })
    .unwrap();
    assert!(runs(&store, "acme", "tick", 10).unwrap().is_empty());
}

#[test]
fn names_and_backoff() {
    for ok in ["nightly", "a", "report-2.daily_x"] {
        validate_name("name", ok).unwrap();
    }
    for bad in ["", "Nightly", "-x", "a b", "a/b", &"x".repeat(129)] {
        assert!(validate_name("name", bad).is_err(), "{bad}");
    }
    let p = RetryPolicy {
        max_attempts: 5,
        initial_backoff_ms: 100,
        max_backoff_ms: 1000,
        timeout_ms: 1000,
    };
    let b: Vec<u64> = (1..=6).map(|a| p.backoff_ms(a, 0)).collect();
    assert_eq!(b, vec![100, 200, 400, 800, 1000, 1000]);
    for seed in 0..50 {
        let j = p.backoff_ms(3, seed);
        assert!((320..=400).contains(&j), "{j}");
    }
}
