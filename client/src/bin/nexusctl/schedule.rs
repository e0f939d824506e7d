//! `nexusctl schedule`: schedules that call a tool on a cron expression, an interval or once.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use nexus_client::output::{print_json, table};
use nexus_client::{pb, Client, ClientError};

use super::{parse_time, time, truncate, Output};

#[derive(Subcommand, Clone)]
pub enum ScheduleCommand {
    /// Make a schedule: `nexusctl schedule add nightly --cron '0 3 * * *' --tz Europe/Paris
    /// --tool memory.put --args '{"namespace":"ops","key":"${run.id}","value":"1"}'`.
    Add(Box<AddArgs>),
    /// Every schedule of the tenant.
    List,
    /// One schedule in full.
    Show { name: String },
    /// The next due times (with each one's jitter).
    Next {
        name: String,
        #[arg(short = 'n', long, default_value_t = 5)]
        count: u32,
    },
    /// Stop firing (attempts in progress and retries go on).
    Pause { name: String },
    /// Fire again from the next due time after now.
    Resume { name: String },
    /// Remove a schedule and its run history.
    Delete { name: String },
    /// The run history, newest first.
    Runs {
        name: String,
        /// Only the dead-letter list: runs that used up their attempts.
        #[arg(long)]
        dead: bool,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Run a dead run again (a new first attempt at once, then its retries).
    Replay {
        name: String,
        /// The run's due time, Unix milliseconds (the RUN column of `runs`, after the slash).
        due_ms: i64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OverlapArg {
    Skip,
    Queue,
    Allow,
}

#[derive(Args, Clone)]
pub struct AddArgs {
    name: String,
    /// A cron expression: 5 fields (minute hour day month weekday) or 6 (seconds first).
    #[arg(long, group = "spec", required_unless_present_any = ["every", "at"])]
    cron: Option<String>,
    /// The cron expression's IANA time zone.
    #[arg(long, requires = "cron", default_value = "UTC")]
    tz: String,
    /// A fixed interval: 30s, 5m, 1h30m (at least 1s).
    #[arg(long, group = "spec")]
    every: Option<String>,
    /// Once, at an RFC 3339 time (2026-12-24T18:00:00Z) or Unix milliseconds.
    #[arg(long, group = "spec")]
    at: Option<String>,
    /// The tool each run calls.
    #[arg(long)]
    tool: String,
    /// Its arguments, a JSON object; ${secrets.NAME}, ${run.id}, ${run.due_ms} and
    /// ${run.attempt} are filled in at each run.
    #[arg(long, default_value = "{}")]
    args: String,
    #[arg(long, default_value = "")]
    description: String,
    /// A due time while an earlier run is in progress: skip it, queue it (one), or allow it.
    #[arg(long, value_enum, default_value_t = OverlapArg::Skip)]
    overlap: OverlapArg,
    /// Start each due time up to this much later (10s).
    #[arg(long)]
    jitter: Option<String>,
    /// After downtime, run due times up to this old; skip older ones (default 60s).
    #[arg(long)]
    catch_up: Option<String>,
    /// Attempts in all (1: no retry).
    #[arg(long, default_value_t = 1)]
    attempts: u32,
    /// The first retry's delay (doubling, with jitter, up to --max-backoff).
    #[arg(long, default_value = "1s")]
    backoff: String,
    #[arg(long, default_value = "60s")]
    max_backoff: String,
    /// Longest one attempt may take (at most 30s).
    #[arg(long, default_value = "30s")]
    timeout: String,
    /// Runs kept (1 to 1000).
    #[arg(long, default_value_t = 100)]
    keep_runs: u32,
    /// Make it paused.
    #[arg(long)]
    paused: bool,
    /// Replace the schedule of this name (keeping its runs) instead of refusing.
    #[arg(long)]
    replace: bool,
}

fn duration_ms(flag: &str, text: &str) -> Result<u64, ClientError> {
    humantime::parse_duration(text)
        .map(|d| d.as_millis() as u64)
        .map_err(|e| ClientError::Input(format!("--{flag} {text:?}: {e} (30s, 5m, 1h30m)")))
}

fn request(a: &AddArgs) -> Result<pb::Schedule, ClientError> {
    let spec = match (&a.cron, &a.every, &a.at) {
        (Some(expr), _, _) => pb::schedule::Spec::Cron(expr.clone()),
        (_, Some(every), _) => pb::schedule::Spec::EveryMs(duration_ms("every", every)?),
        (_, _, Some(at)) => pb::schedule::Spec::AtMs(parse_time(at).map_err(ClientError::Input)?),
        _ => {
            return Err(ClientError::Input(
                "one of --cron, --every or --at is required".into(),
            ))
        }
    };
    serde_json::from_str::<Value>(&a.args)
        .map_err(|e| ClientError::Input(format!("--args is not JSON: {e}")))?;
    Ok(pb::Schedule {
        name: a.name.clone(),
        description: a.description.clone(),
        zone: if a.cron.is_some() {
            a.tz.clone()
        } else {
            String::new()
        },
        spec: Some(spec),
        tool: a.tool.clone(),
        args: a.args.clone(),
        overlap: match a.overlap {
            OverlapArg::Skip => pb::Overlap::Skip,
            OverlapArg::Queue => pb::Overlap::Queue,
            OverlapArg::Allow => pb::Overlap::Allow,
        } as i32,
        jitter_ms: a
            .jitter
            .as_deref()
            .map(|j| duration_ms("jitter", j))
            .transpose()?
            .unwrap_or(0),
        catch_up_ms: a
            .catch_up
            .as_deref()
            .map(|c| duration_ms("catch-up", c))
            .transpose()?,
        retry: Some(pb::RetryPolicy {
            max_attempts: a.attempts,
            initial_backoff_ms: duration_ms("backoff", &a.backoff)?,
            max_backoff_ms: duration_ms("max-backoff", &a.max_backoff)?,
            timeout_ms: duration_ms("timeout", &a.timeout)?,
        }),
        keep_runs: a.keep_runs,
        paused: a.paused,
        ..Default::default()
    })
}

fn overlap_name(v: i32) -> &'static str {
    match pb::Overlap::try_from(v) {
        Ok(pb::Overlap::Queue) => "queue",
        Ok(pb::Overlap::Allow) => "allow",
        _ => "skip",
    }
}

fn args_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::String(text.to_string()))
}

fn schedule_json(s: &pb::Schedule) -> Value {
    let retry = s.retry.unwrap_or_default();
    json!({
        "name": s.name, "description": s.description, "spec": s.spec_text,
        "tool": s.tool, "args": args_json(&s.args), "owner": s.owner,
        "overlap": overlap_name(s.overlap), "jitter_ms": s.jitter_ms,
        "catch_up_ms": s.catch_up_ms, "keep_runs": s.keep_runs, "paused": s.paused,
        "retry": {"max_attempts": retry.max_attempts, "initial_backoff_ms": retry.initial_backoff_ms,
                  "max_backoff_ms": retry.max_backoff_ms, "timeout_ms": retry.timeout_ms},
        "next_due_ms": s.next_due_ms, "active": s.active, "runs": s.runs, "fired": s.fired,
        "created_at_ms": s.created_at_ms, "updated_at_ms": s.updated_at_ms,
    })
}

fn run_json(r: &pb::Run) -> Value {
    json!({
        "id": r.id, "schedule": r.schedule, "due_ms": r.due_ms, "state": r.state,
        "attempt": r.attempt, "node": r.node, "first_started_ms": r.first_started_ms,
        "started_ms": r.started_ms, "finished_ms": r.finished_ms,
        "duration_ms": if r.finished_ms > 0 && r.started_ms > 0 { r.finished_ms - r.started_ms } else { 0 },
        "output": args_json(&r.output), "error": r.error, "retry_at_ms": r.retry_at_ms,
        "interrupted": r.interrupted, "skipped": r.skipped, "skipped_through_ms": r.skipped_through_ms,
    })
}

fn state_of(s: &pb::Schedule) -> String {
    if s.paused {
        "paused".into()
    } else if s.next_due_ms == 0 {
        "done".into()
    } else if s.active > 0 {
        format!("{} running", s.active)
    } else {
        "waiting".into()
    }
}

pub async fn run(c: &mut Client, out: Output, command: ScheduleCommand) -> Result<(), ClientError> {
    let json_out = out == Output::Json;
    let show = |s: &pb::Schedule, verb: &str| {
        if json_out {
            print_json(&schedule_json(s));
        } else {
            println!(
                "{verb} {} ({}; next {})",
                s.name,
                s.spec_text,
                time(s.next_due_ms)
            );
        }
    };
    match command {
        ScheduleCommand::Add(a) => {
            let req = request(&a)?;
            let s = if a.replace {
                c.schedules.update_schedule(req).await?
            } else {
                c.schedules.add_schedule(req).await?
            }
            .into_inner();
            show(&s, if a.replace { "updated" } else { "added" });
        }
        ScheduleCommand::List => {
            let all = c
                .schedules
                .list_schedules(pb::ListSchedulesRequest::default())
                .await?
                .into_inner()
                .schedules;
            if json_out {
                print_json(&Value::Array(all.iter().map(schedule_json).collect()));
            } else {
                let mut t = table(&["NAME", "SPEC", "TOOL", "STATE", "NEXT", "FIRED", "RUNS"]);
                for s in &all {
                    t.add_row(vec![
                        s.name.clone(),
                        truncate(&s.spec_text, 40),
                        s.tool.clone(),
                        state_of(s),
                        time(s.next_due_ms),
                        s.fired.to_string(),
                        s.runs.to_string(),
                    ]);
                }
                println!("{t}");
            }
        }
        ScheduleCommand::Show { name } => {
            let s = c
                .schedules
                .get_schedule(pb::GetScheduleRequest {
                    name,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if json_out {
                print_json(&schedule_json(&s));
            } else {
                let retry = s.retry.unwrap_or_default();
                let mut t = table(&["FIELD", "VALUE"]);
                let rows: Vec<(&str, String)> = vec![
                    ("name", s.name.clone()),
                    ("description", s.description.clone()),
                    ("spec", s.spec_text.clone()),
                    ("tool", s.tool.clone()),
                    ("args", s.args.clone()),
                    ("owner", s.owner.clone()),
                    ("state", state_of(&s)),
                    ("next due", time(s.next_due_ms)),
                    ("overlap", overlap_name(s.overlap).into()),
                    ("jitter", format!("{} ms", s.jitter_ms)),
                    ("catch-up", format!("{} ms", s.catch_up_ms.unwrap_or(0))),
                    (
                        "retries",
                        format!(
                            "{} attempts, backoff {}..{} ms, timeout {} ms",
                            retry.max_attempts,
                            retry.initial_backoff_ms,
                            retry.max_backoff_ms,
                            retry.timeout_ms
                        ),
                    ),
                    ("fired", s.fired.to_string()),
                    ("runs kept", format!("{} of {}", s.runs, s.keep_runs)),
                    ("created", time(s.created_at_ms)),
                    ("updated", time(s.updated_at_ms)),
                ];
                for (k, v) in rows {
                    t.add_row(vec![k.to_string(), v]);
                }
                println!("{t}");
            }
        }
        ScheduleCommand::Next { name, count } => {
            let due = c
                .schedules
                .preview_schedule(pb::PreviewScheduleRequest { name, count })
                .await?
                .into_inner()
                .due;
            if json_out {
                print_json(&Value::Array(
                    due.iter()
                        .map(|d| json!({"due_ms": d.due_ms, "starts_ms": d.starts_ms}))
                        .collect(),
                ));
            } else {
                let mut t = table(&["DUE", "STARTS"]);
                for d in &due {
                    t.add_row(vec![time(d.due_ms), time(d.starts_ms)]);
                }
                println!("{t}");
            }
        }
        ScheduleCommand::Pause { name } => {
            let s = c
                .schedules
                .pause_schedule(pb::PauseScheduleRequest { name })
                .await?
                .into_inner();
            show(&s, "paused");
        }
        ScheduleCommand::Resume { name } => {
            let s = c
                .schedules
                .resume_schedule(pb::PauseScheduleRequest { name })
                .await?
                .into_inner();
            show(&s, "resumed");
        }
        ScheduleCommand::Delete { name } => {
            let runs = c
                .schedules
                .delete_schedule(pb::DeleteScheduleRequest { name: name.clone() })
                .await?
                .into_inner()
                .runs;
            if json_out {
                print_json(&json!({"deleted": name, "runs": runs}));
            } else {
                println!("deleted {name} and {runs} runs");
            }
        }
        ScheduleCommand::Runs { name, dead, limit } => {
            let runs = c
                .schedules
                .list_runs(pb::ListRunsRequest {
                    name,
                    limit,
                    dead,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .runs;
            if json_out {
                print_json(&Value::Array(runs.iter().map(run_json).collect()));
            } else {
                let mut t = table(&[
                    "RUN",
                    "DUE",
                    "STATE",
                    "ATTEMPT",
                    "STARTED",
                    "MS",
                    "OUTPUT / ERROR",
                ]);
                for r in &runs {
                    let state = match r.state.as_str() {
                        "skipped" if r.skipped > 1 => format!("skipped x{}", r.skipped),
                        "waiting" => format!("retry at {}", time(r.retry_at_ms)),
                        other => other.to_string(),
                    };
                    let ms = if r.finished_ms > 0 && r.started_ms > 0 {
                        (r.finished_ms - r.started_ms).to_string()
                    } else {
                        "-".into()
                    };
                    let text = if r.error.is_empty() {
                        &r.output
                    } else {
                        &r.error
                    };
                    t.add_row(vec![
                        r.id.clone(),
                        time(r.due_ms),
                        state,
                        r.attempt.to_string(),
                        time(r.started_ms),
                        ms,
                        truncate(text, 60),
                    ]);
                }
                println!("{t}");
            }
        }
        ScheduleCommand::Replay { name, due_ms } => {
            let r = c
                .schedules
                .replay_run(pb::ReplayRunRequest { name, due_ms })
                .await?
                .into_inner();
            if json_out {
                print_json(&run_json(&r));
            } else {
                println!("replaying {} (its first attempt starts now)", r.id);
            }
        }
    }
    Ok(())
}
