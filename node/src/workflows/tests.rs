//! Definitions and the state machine's rules for runs, applied directly to a store.

use super::*;
use crate::error::NexusError;
use crate::store::ApplyCtx;

const DOC: &str = r#"{"name": "onboard", "steps": [
  {"id": "a", "tool": "echo", "args": {"text": "${input.who}"}},
  {"id": "b", "after": ["a"], "sleep_ms": 10},
  {"id": "c", "after": ["a"], "wait_event": {"topic": "go.${run.id}"}},
  {"id": "d", "after": ["b", "c"], "when": {"path": "steps.c.output.data.ok", "equals": true},
   "tool": "echo", "args": {"text": "${steps.a.output.text}"}}
]}"#;

fn field_of(e: NexusError) -> String {
    match e {
        NexusError::InvalidArgument { field, .. } => field,
        other => panic!("{other}"),
    }
}

#[test]
fn definitions_are_checked_field_by_field() {
    let def = definition::parse(DOC, 7).unwrap();
    assert_eq!(def.steps.len(), 4);
    assert_eq!(definition::ancestors(&def.steps)[3], vec![0, 1, 2]);
    // Round trip through the document.
    let again = definition::parse(&def.to_json().to_string(), 7).unwrap();
    assert_eq!(again, def);
    let bad = |doc: &str| field_of(definition::parse(doc, 0).unwrap_err());
    assert_eq!(bad("[]"), "definition");
    assert_eq!(bad(r#"{"name": "X", "steps": []}"#), "name");
    assert_eq!(bad(r#"{"name": "x", "steps": []}"#), "steps");
    assert_eq!(bad(r#"{"name": "x", "steps": [{"id": "a"}]}"#), "steps[0]");
    assert_eq!(
        bad(r#"{"name": "x", "steps": [{"id": "a", "tool": "echo", "sleep_ms": 5}]}"#),
        "steps[0]"
    );
    assert_eq!(
        bad(r#"{"name": "x", "steps": [{"id": "a.b", "tool": "echo"}]}"#),
        "steps[0].id"
    );
    assert_eq!(
        bad(
            r#"{"name": "x", "steps": [{"id": "a", "tool": "echo"}, {"id": "a", "tool": "echo"}]}"#
        ),
        "steps[1].id"
    );
    assert_eq!(
        bad(r#"{"name": "x", "steps": [{"id": "a", "after": ["z"], "tool": "echo"}]}"#),
        "steps[0].after[0]"
    );
    assert_eq!(
        bad(
            r#"{"name": "x", "steps": [{"id": "a", "after": ["b"], "tool": "echo"}, {"id": "b", "after": ["a"], "tool": "echo"}]}"#
        ),
        "steps[0].after"
    );
    // A step reads only the output of a step it comes after.
    assert_eq!(
        bad(
            r#"{"name": "x", "steps": [{"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "args": {"t": "${steps.a.output}"}}]}"#
        ),
        "steps[1].args"
    );
    assert_eq!(
        bad(r#"{"name": "x", "steps": [{"id": "a", "sleep_ms": 0}]}"#),
        "steps[0].sleep_ms"
    );
    assert_eq!(
        bad(r#"{"name": "x", "steps": [{"id": "a", "wait_event": {"topic": "a..b"}}]}"#),
        "steps[0].wait_event.topic"
    );
    assert_eq!(
        bad(r#"{"name": "x", "steps": [{"id": "a", "tool": "echo", "retry": {"tries": 3}}]}"#),
        "steps[0].retry.tries"
    );
    assert_eq!(
        bad(
            r#"{"name": "x", "steps": [{"id": "a", "tool": "echo", "when": {"path": "input.x"}}]}"#
        ),
        "steps[0].when"
    );
}

fn start_op(id: &str) -> WorkflowOp {
    WorkflowOp::Start {
        id: id.into(),
        workflow: "onboard".into(),
        input: r#"{"who": "ada"}"#.into(),
        owner: "local".into(),
        at_ms: 100,
    }
}

fn step_start(step: &str, from: StepState, from_attempt: u32) -> WorkflowOp {
    WorkflowOp::StepStart {
        run: "r1".into(),
        step: step.into(),
        from,
        from_attempt,
        attempt: from_attempt + 1,
        after_seq: 9,
        node: 1,
        at_ms: 200,
    }
}

fn finish(step: &str, attempt: u32, outcome: StepOutcome) -> WorkflowOp {
    WorkflowOp::StepFinish {
        run: "r1".into(),
        step: step.into(),
        attempt,
        outcome,
        at_ms: 300,
    }
}

fn ok() -> StepOutcome {
    StepOutcome::Succeeded {
        output: r#"{"text": "ada"}"#.into(),
    }
}

#[test]
fn runs_advance_step_by_step_and_stale_writes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let step = |op: WorkflowOp| {
        let mut c = ApplyCtx::new(&store);
        let r = apply(&mut c, "acme", &op).unwrap();
        store.db().write(c.finish().unwrap()).unwrap();
        r
    };
    let run_of = |r: Result<WorkflowReply, NexusError>| match r.unwrap() {
        WorkflowReply::Run { run, .. } => run,
        other => panic!("{other:?}"),
    };
    assert!(matches!(step(start_op("r1")), Err(NexusError::NotFound(_))));
    step(WorkflowOp::Put {
        def: definition::parse(DOC, 5).unwrap(),
    })
    .unwrap();
    let r = run_of(step(start_op("r1")));
    assert_eq!(r.state, RunState::Running);
    // Starting the same id again is the same run.
    let WorkflowReply::Run { run, existing } = step(start_op("r1")).unwrap() else {
        panic!()
    };
    assert!(existing);
    assert_eq!(run.seq, r.seq);
    step(step_start("a", StepState::Pending, 0)).unwrap();
    // A second leader starting it from pending is refused.
    assert!(step(step_start("a", StepState::Pending, 0)).is_err());
    // A new leader takes over the attempt: counted as interrupted.
    step(step_start("a", StepState::Running, 1)).unwrap();
    // The old leader's late finish of attempt 1 is refused.
    assert!(step(finish("a", 1, ok())).is_err());
    step(finish(
        "a",
        2,
        StepOutcome::Failed {
            error: "boom".into(),
            retry_at_ms: 500,
        },
    ))
    .unwrap();
    step(step_start("a", StepState::Waiting, 2)).unwrap();
    let r = run_of(step(finish("a", 3, ok())));
    let a = r.step("a").unwrap();
    assert_eq!(
        (a.state, a.attempt, a.interrupted),
        (StepState::Succeeded, 3, 1)
    );
    assert!(step(finish("a", 3, ok())).is_err(), "finished once");
    step(step_start("b", StepState::Pending, 0)).unwrap();
    step(step_start("c", StepState::Pending, 0)).unwrap();
    step(finish("b", 1, ok())).unwrap();
    let r = run_of(step(finish("c", 1, ok())));
    assert_eq!(r.step("c").unwrap().after_seq, 9);
    assert_eq!(r.state, RunState::Running);
    let r = run_of(step(WorkflowOp::StepSkip {
        run: "r1".into(),
        step: "d".into(),
        at_ms: 400,
    }));
    assert_eq!(r.state, RunState::Succeeded);
    assert!(active(&store, "acme").unwrap().is_empty());
    assert!(
        step(step_start("d", StepState::Pending, 0)).is_err(),
        "the run ended"
    );
    let meta = runs_meta(&store, "acme").unwrap();
    assert_eq!((meta.active, meta.finished), (0, 1));

    // A step that fails for good fails the run; what had not run is cancelled.
    step(start_op("r2")).unwrap();
    let fail_r2 = |op: WorkflowOp| match op {
        WorkflowOp::StepStart { .. } | WorkflowOp::StepFinish { .. } => {
            let mut op = op;
            match &mut op {
                WorkflowOp::StepStart { run, .. } | WorkflowOp::StepFinish { run, .. } => {
                    *run = "r2".into()
                }
                _ => unreachable!(),
            }
            op
        }
        other => other,
    };
    step(fail_r2(step_start("a", StepState::Pending, 0))).unwrap();
    let r = run_of(step(fail_r2(finish(
        "a",
        1,
        StepOutcome::Failed {
            error: "no".into(),
            retry_at_ms: 0,
        },
    ))));
    assert_eq!(r.state, RunState::Failed);
    assert!(r.error.contains("step a failed: no"), "{}", r.error);
    assert_eq!(r.step("b").unwrap().state, StepState::Cancelled);
    // Cancelling: only a running run.
    step(start_op("r3")).unwrap();
    let r = run_of(step(WorkflowOp::Cancel {
        run: "r3".into(),
        reason: "by hand".into(),
        at_ms: 600,
    }));
    assert_eq!(r.state, RunState::Cancelled);
    assert!(step(WorkflowOp::Cancel {
        run: "r3".into(),
        reason: "again".into(),
        at_ms: 601,
    })
    .is_err());
    let listed: Vec<String> = runs(&store, "acme", "", 10)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, vec!["r3", "r2", "r1"]);
    assert!(runs(&store, "other", "", 10).unwrap().is_empty());
}
