//! Schedules from the API's side: bad input refused with the field named and nothing
//! changed, a cron schedule in a zone previewed, the owner's grants read again at each run,
//! tenants apart, audit records, and `nexusctl schedule` / `nexusctl events`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let mut c = n.client().await;
    let ok = every("fine", 60_000, "echo", json!({"text": "hi"}));
    let cases: Vec<(&str, pb::Schedule)> = vec![
        (
            "name",
            pb::Schedule {
                name: "Bad Name".into(),
                ..ok.clone()
            },
        ),
        (
            "spec",
            pb::Schedule {
                spec: None,
                ..ok.clone()
            },
        ),
        (
            "cron",
            pb::Schedule {
                spec: Some(pb::schedule::Spec::Cron("61 * * * *".into())),
                ..ok.clone()
            },
        ),
        (
            "cron",
            pb::Schedule {
                spec: Some(pb::schedule::Spec::Cron("* * *".into())),
                ..ok.clone()
            },
        ),
        (
            "zone",
            pb::Schedule {
                spec: Some(pb::schedule::Spec::Cron("0 9 * * *".into())),
                zone: "Mars/Olympus".into(),
                ..ok.clone()
            },
        ),
        (
            "zone",
            pb::Schedule {
                zone: "UTC".into(),
                ..ok.clone()
            },
        ),
        (
            "every",
            pb::Schedule {
                spec: Some(pb::schedule::Spec::EveryMs(10)),
                ..ok.clone()
            },
        ),
        (
            "at",
            pb::Schedule {
                spec: Some(pb::schedule::Spec::AtMs(1000)),
                ..ok.clone()
            },
        ),
        (
            "tool",
            pb::Schedule {
                tool: "no.such_tool".into(),
                ..ok.clone()
            },
        ),
        (
            "tool",
            pb::Schedule {
                tool: String::new(),
                ..ok.clone()
            },
        ),
        (
            "args",
            pb::Schedule {
                args: "[1, 2]".into(),
                ..ok.clone()
            },
        ),
        (
            "args",
            pb::Schedule {
                args: "{".into(),
                ..ok.clone()
            },
        ),
        (
            "retry.max_attempts",
            pb::Schedule {
                retry: Some(pb::RetryPolicy {
                    max_attempts: 99,
                    ..Default::default()
                }),
                ..ok.clone()
            },
        ),
        (
            "retry.timeout",
            pb::Schedule {
                retry: Some(pb::RetryPolicy {
                    timeout_ms: 120_000,
                    ..Default::default()
                }),
                ..ok.clone()
            },
        ),
        (
            "keep_runs",
            pb::Schedule {
                keep_runs: 5000,
                ..ok.clone()
            },
        ),
        (
            "overlap",
            pb::Schedule {
                overlap: 42,
                ..ok.clone()
            },
        ),
        (
            "jitter",
            pb::Schedule {
                jitter_ms: 10 * 3_600_000,
                ..ok.clone()
            },
        ),
    ];
    for (field, s) in cases {
        let e = c.schedules.add_schedule(s.clone()).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(&format!("invalid {field}:")),
            "{field}: {}",
            e.message()
        );
    }
    let listed = c
        .schedules
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .schedules;
    assert!(listed.is_empty(), "nothing was made: {listed:?}");

    // The name is taken; an update of a missing one; unknown names.
    c.schedules.add_schedule(ok.clone()).await.unwrap();
    let e = c.schedules.add_schedule(ok.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = c
        .schedules
        .update_schedule(pb::Schedule {
            name: "other".into(),
            ..ok.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    for e in [
        c.schedules
            .delete_schedule(pb::DeleteScheduleRequest {
                name: "other".into(),
            })
            .await
            .unwrap_err(),
        c.schedules
            .pause_schedule(pb::PauseScheduleRequest {
                name: "other".into(),
            })
            .await
            .unwrap_err(),
        c.schedules
            .list_runs(pb::ListRunsRequest {
                name: "other".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    let e = c
        .schedules
        .preview_schedule(pb::PreviewScheduleRequest {
            name: "fine".into(),
            count: 500,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("invalid count:"), "{e:?}");

    // A cron schedule in a zone, previewed.
    let weekdays = pb::Schedule {
        name: "standup".into(),
        spec: Some(pb::schedule::Spec::Cron("0 9 * * 1-5".into())),
        zone: "Europe/Paris".into(),
        jitter_ms: 30_000,
        ..ok.clone()
    };
    let s = c
        .schedules
        .add_schedule(weekdays)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.spec_text, "cron \"0 9 * * 1-5\" Europe/Paris");
    let due = c
        .schedules
        .preview_schedule(pb::PreviewScheduleRequest {
            name: "standup".into(),
            count: 10,
        })
        .await
        .unwrap()
        .into_inner()
        .due;
    assert_eq!(due.len(), 10);
    assert_eq!(due[0].due_ms, s.next_due_ms);
    for d in &due {
        // 09:00 in Paris is 07:00 or 08:00 UTC, on a weekday.
        let secs = d.due_ms / 1000;
        let hour = (secs % 86_400) / 3600;
        let weekday = (secs / 86_400 + 4) % 7; // 1970-01-01 was a Thursday (4).
        assert!(matches!(hour, 7 | 8) && (1..=5).contains(&weekday), "{d:?}");
        assert!(d.starts_ms >= d.due_ms && d.starts_ms <= d.due_ms + 30_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_act_as_the_owner_with_its_grants_now_and_tenants_stay_apart() {
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
    let mut reader = n
        .client_with(Some(&api_key(&root, "acme", "peek", &["reader"], 0).await))
        .await;
    let mut other = n
        .client_with(Some(
            &api_key(&root, "globex", "dev", &["developer"], 0).await,
        ))
        .await;
    // A role that may manage schedules but call no tool.
    let admin_key = api_key(&root, "acme", "boss", &["admin"], 0).await;
    let mut admin = n.client_with(Some(&admin_key)).await;
    admin
        .iam
        .put_role(pb::PutRoleRequest {
            tenant: "acme".into(),
            name: "scheduler".into(),
            permissions: vec!["schedules:write".into(), "schedules:read".into()],
        })
        .await
        .unwrap();
    let mut planner = n
        .client_with(Some(
            &api_key(&root, "acme", "planner", &["scheduler"], 0).await,
        ))
        .await;

    let put = every(
        "note",
        1000,
        "memory.put",
        json!({"namespace": "notes", "key": "${run.id}", "value": 1}),
    );
    let e = reader
        .schedules
        .add_schedule(put.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = planner
        .schedules
        .add_schedule(put.clone())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("tools:call:memory.put"), "{e:?}");
    let s = dev
        .schedules
        .add_schedule(put.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.owner, "sa:dev");
    wait_runs(&mut dev, "note", Duration::from_secs(10), |r| {
        r.iter().any(|r| r.state == "succeeded")
    })
    .await;
    // The reader role has no schedules:read; another tenant sees nothing of it and may use
    // the same name.
    let e = reader
        .schedules
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = other
        .schedules
        .get_schedule(pb::GetScheduleRequest {
            name: "note".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(other
        .schedules
        .list_schedules(pb::ListSchedulesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .schedules
        .is_empty());
    let theirs = other
        .schedules
        .add_schedule(pb::Schedule {
            name: "note".into(),
            ..put.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(theirs.owner, "sa:dev");
    let e = other
        .schedules
        .list_runs(pb::ListRunsRequest {
            name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // The owner loses memory:write: the next run is refused on record, and not retried.
    admin
        .iam
        .delete_binding(pb::DeleteBindingRequest {
            tenant: "acme".into(),
            principal: "sa:dev".into(),
            role: "developer".into(),
        })
        .await
        .unwrap();
    let denied = wait_runs(&mut admin, "note", Duration::from_secs(10), |r| {
        r.first().is_some_and(|r| r.state == "dead")
    })
    .await;
    assert_eq!(denied[0].attempt, 1, "{:?}", denied[0]);
    assert!(
        denied[0].error.contains("sa:dev lacks the permission"),
        "{:?}",
        denied[0]
    );
    // Each tenant's runs wrote into its own memory only: one memory per run that succeeded,
    // named by its run id, and nothing else.
    let succeeded = |runs: &[pb::Run]| -> std::collections::BTreeSet<String> {
        runs.iter()
            .filter(|r| r.state == "succeeded")
            .map(|r| r.id.clone())
            .collect()
    };
    let acme_runs = succeeded(&runs(&mut admin, "note", false).await);
    admin
        .schedules
        .delete_schedule(pb::DeleteScheduleRequest {
            name: "note".into(),
        })
        .await
        .unwrap();
    wait_runs(&mut other, "note", Duration::from_secs(10), |r| {
        r.iter().any(|r| r.state == "succeeded")
    })
    .await;
    other
        .schedules
        .pause_schedule(pb::PauseScheduleRequest {
            name: "note".into(),
        })
        .await
        .unwrap();
    while get(&mut other, "note").await.active > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let globex_runs = succeeded(&runs(&mut other, "note", false).await);
    let acme_notes: std::collections::BTreeSet<String> =
        versions(&mut admin, "notes").await.into_keys().collect();
    let globex_notes: std::collections::BTreeSet<String> =
        versions(&mut other, "notes").await.into_keys().collect();
    assert!(!acme_runs.is_empty() && !globex_runs.is_empty());
    assert_eq!(acme_notes, acme_runs);
    assert_eq!(globex_notes, globex_runs);
    // Made and changed on record.
    let tail = admin
        .audit
        .tail(pb::AuditTailRequest {
            limit: 200,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .records;
    assert!(
        tail.iter()
            .any(|r| r.action == "schedules.add" && r.resource.starts_with("schedule/note")),
        "{tail:#?}"
    );
    assert!(
        tail.iter()
            .any(|r| r.action == "schedules.run" && r.principal == "sa:dev"),
        "{tail:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexusctl_schedule_prints_tables_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nexus::start(dir.path(), &[]).await;
    let ctl = nexus_bin().with_file_name("nexusctl");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&ctl)
            .args(["--endpoint", &n.endpoint()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, err) = run(&[
        "schedule",
        "add",
        "beat",
        "--every",
        "1s",
        "--tool",
        "memory.put",
        "--args",
        r#"{"namespace":"beats","key":"${run.id}","value":1}"#,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("added beat (every 1s; next "), "{out}");
    let (code, _, err) = run(&["schedule", "add", "bad", "--cron", "nope", "--tool", "echo"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid cron:"), "{err}");
    let (code, out, _) = run(&["schedule", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("NAME") && out.contains("beat") && out.contains("memory.put"),
        "{out}"
    );
    let (_, out, _) = run(&["schedule", "next", "beat", "-n", "3", "-o", "json"]);
    let due: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(due.as_array().unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, out, _) = run(&["schedule", "runs", "beat", "-o", "json"]);
    let runs: Value = serde_json::from_str(&out).unwrap();
    let first = &runs.as_array().unwrap()[0];
    assert_eq!(first["state"], "succeeded", "{runs}");
    assert_eq!(first["output"]["version"], 1, "{runs}");
    let (_, out, _) = run(&["schedule", "runs", "beat"]);
    assert!(out.contains("RUN") && out.contains("beat/"), "{out}");
    let (code, out, _) = run(&["schedule", "pause", "beat"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("paused beat"), "{out}");
    let (_, out, _) = run(&["schedule", "show", "beat", "-o", "json"]);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["paused"], true);
    assert_eq!(shown["spec"], "every 1s");
    let (code, out, _) = run(&["schedule", "delete", "beat"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("deleted beat and "), "{out}");

    // Events: publish, list, and tail (which follows until it is stopped).
    let (code, out, err) = run(&["events", "publish", "task.done", "--data", r#"{"id": 7}"#]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("published task.done as #"), "{out}");
    let (code, _, err) = run(&["events", "publish", "task.*"]);
    assert_eq!(code, 1);
    assert!(err.contains("invalid events[0].topic:"), "{err}");
    let (_, out, _) = run(&["events", "list", "task.*", "-o", "json"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed["events"][0]["data"]["id"], 7, "{listed}");
    let (_, out, _) = run(&["events", "list", "memory.*.beats"]);
    assert!(
        out.contains("memory.put.beats") && out.contains("nexus"),
        "{out}"
    );
    let mut tail = std::process::Command::new(&ctl)
        .args([
            "--endpoint",
            &n.endpoint(),
            "events",
            "tail",
            "task.>",
            "--after",
            "0",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(tail.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = tail.kill();
    let _ = tail.wait();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (first["topic"].as_str(), first["data"]["id"].as_i64()),
        (Some("task.done"), Some(7))
    );
}
