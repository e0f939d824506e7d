//! `nexusctl workflow`: workflows (a DAG of steps defined by a JSON document) and their runs.

use clap::Subcommand;
use serde_json::{json, Value};

use nexus_client::output::{print_json, table};
use nexus_client::{pb, Client, ClientError};

use super::{time, truncate, Output};

#[derive(Subcommand, Clone)]
pub enum WorkflowCommand {
    /// Define a workflow from a JSON document (a file, or - for stdin); docs/workflows.md
    /// has the format.
    Put {
        file: String,
        /// Replace the workflow of this name (runs in progress keep theirs).
        #[arg(long)]
        replace: bool,
    },
    /// Every workflow of the tenant.
    List,
    /// One workflow's definition.
    Show { name: String },
    /// Remove a definition (its runs stay).
    Delete { name: String },
    /// Start a run; with --id, starting again returns the run of that id.
    Start {
        name: String,
        /// The run's input, a JSON object.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long, default_value = "")]
        id: String,
        /// Follow the run until it ends, printing each step as it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// A run's state and each step's.
    Status {
        run: String,
        /// Follow the run until it ends.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a running run.
    Cancel {
        run: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// The run history, newest first.
    Runs {
        /// Only this workflow's runs.
        #[arg(long, default_value = "")]
        workflow: String,
        /// Only runs in this state: running, succeeded, failed, cancelled.
        #[arg(long, default_value = "")]
        state: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::String(text.to_string()))
}

fn workflow_json(w: &pb::Workflow) -> Value {
    json!({"name": w.name, "description": w.description, "steps": w.steps,
           "definition": parse(&w.definition), "created_at_ms": w.created_at_ms,
           "updated_at_ms": w.updated_at_ms})
}

fn run_json(r: &pb::WorkflowRun) -> Value {
    json!({
        "id": r.id, "workflow": r.workflow, "state": r.state, "input": parse(&r.input),
        "owner": r.owner, "created_at_ms": r.created_at_ms, "finished_ms": r.finished_ms,
        "error": r.error,
        "steps": r.steps.iter().map(|s| json!({
            "id": s.id, "kind": s.kind, "state": s.state, "attempt": s.attempt, "node": s.node,
            "first_started_ms": s.first_started_ms, "started_ms": s.started_ms,
            "finished_ms": s.finished_ms, "output": parse(&s.output), "error": s.error,
            "retry_at_ms": s.retry_at_ms, "interrupted": s.interrupted,
        })).collect::<Vec<_>>(),
    })
}

fn done(r: &pb::WorkflowRun) -> usize {
    r.steps
        .iter()
        .filter(|s| !matches!(s.state.as_str(), "pending" | "running" | "waiting"))
        .count()
}

fn print_run(r: &pb::WorkflowRun) {
    println!(
        "run {} of {}: {} ({}/{} steps done){}",
        r.id,
        r.workflow,
        r.state,
        done(r),
        r.steps.len(),
        if r.error.is_empty() {
            String::new()
        } else {
            format!(": {}", r.error)
        }
    );
    let mut t = table(&[
        "STEP",
        "KIND",
        "STATE",
        "ATTEMPT",
        "STARTED",
        "MS",
        "OUTPUT / ERROR",
    ]);
    for s in &r.steps {
        let ms = if s.finished_ms > 0 && s.first_started_ms > 0 {
            (s.finished_ms - s.first_started_ms).to_string()
        } else {
            "-".into()
        };
        let state = match s.state.as_str() {
            "waiting" => format!("retry at {}", time(s.retry_at_ms)),
            other if s.interrupted > 0 => format!("{other} ({} interrupted)", s.interrupted),
            other => other.to_string(),
        };
        let text = if s.error.is_empty() {
            &s.output
        } else {
            &s.error
        };
        t.add_row(vec![
            s.id.clone(),
            s.kind.clone(),
            state,
            s.attempt.to_string(),
            time(s.first_started_ms),
            ms,
            truncate(if text == "null" { "" } else { text }, 60),
        ]);
    }
    println!("{t}");
}

/// Polls a run until it ends, telling each step that finishes on stderr.
async fn follow(
    c: &mut Client,
    id: &str,
    mut last: pb::WorkflowRun,
) -> Result<pb::WorkflowRun, ClientError> {
    loop {
        if last.state != "running" {
            return Ok(last);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = c
            .workflows
            .get_workflow_run(pb::GetWorkflowRunRequest {
                id: id.to_string(),
                ..Default::default()
            })
            .await?
            .into_inner();
        for (before, after) in last.steps.iter().zip(&now.steps) {
            if before.state != after.state {
                eprintln!(
                    "[{}/{}] {} {}",
                    done(&now),
                    now.steps.len(),
                    after.id,
                    after.state
                );
            }
        }
        last = now;
    }
}

pub async fn run(c: &mut Client, out: Output, command: WorkflowCommand) -> Result<(), ClientError> {
    let json_out = out == Output::Json;
    match command {
        WorkflowCommand::Put { file, replace } => {
            let definition = if file == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            }
            .map_err(|e| ClientError::Input(format!("{file}: {e}")))?;
            let req = pb::PutWorkflowRequest { definition };
            let w = if replace {
                c.workflows.update_workflow(req).await?
            } else {
                c.workflows.put_workflow(req).await?
            }
            .into_inner();
            if json_out {
                print_json(&workflow_json(&w));
            } else {
                println!(
                    "{} workflow {} ({} steps)",
                    if replace { "updated" } else { "defined" },
                    w.name,
                    w.steps
                );
            }
        }
        WorkflowCommand::List => {
            let all = c
                .workflows
                .list_workflows(pb::ListWorkflowsRequest::default())
                .await?
                .into_inner()
                .workflows;
            if json_out {
                print_json(&Value::Array(all.iter().map(workflow_json).collect()));
            } else {
                let mut t = table(&["NAME", "STEPS", "DESCRIPTION", "UPDATED"]);
                for w in &all {
                    t.add_row(vec![
                        w.name.clone(),
                        w.steps.to_string(),
                        truncate(&w.description, 50),
                        time(w.updated_at_ms),
                    ]);
                }
                println!("{t}");
            }
        }
        WorkflowCommand::Show { name } => {
            let w = c
                .workflows
                .get_workflow(pb::GetWorkflowRequest {
                    name,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if json_out {
                print_json(&workflow_json(&w));
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&parse(&w.definition)).unwrap_or_default()
                );
            }
        }
        WorkflowCommand::Delete { name } => {
            c.workflows
                .delete_workflow(pb::GetWorkflowRequest {
                    name: name.clone(),
                    ..Default::default()
                })
                .await?;
            if json_out {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted workflow {name}");
            }
        }
        WorkflowCommand::Start {
            name,
            input,
            id,
            wait,
        } => {
            serde_json::from_str::<Value>(&input)
                .map_err(|e| ClientError::Input(format!("--input is not JSON: {e}")))?;
            let r = c
                .workflows
                .start_workflow(pb::StartWorkflowRequest {
                    workflow: name,
                    input,
                    id,
                })
                .await?
                .into_inner();
            let existing = r.existing;
            let mut run = r.run.unwrap_or_default();
            if !json_out {
                println!(
                    "{} run {} of {}",
                    if existing { "found" } else { "started" },
                    run.id,
                    run.workflow
                );
            }
            if wait {
                let id = run.id.clone();
                run = follow(c, &id, run).await?;
            }
            if json_out {
                let mut v = run_json(&run);
                v["existing"] = json!(existing);
                print_json(&v);
            } else if wait {
                print_run(&run);
            }
        }
        WorkflowCommand::Status { run, wait } => {
            let mut r = c
                .workflows
                .get_workflow_run(pb::GetWorkflowRunRequest {
                    id: run.clone(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            if wait {
                r = follow(c, &run, r).await?;
            }
            if json_out {
                print_json(&run_json(&r));
            } else {
                print_run(&r);
            }
        }
        WorkflowCommand::Cancel { run, reason } => {
            let r = c
                .workflows
                .cancel_workflow_run(pb::CancelWorkflowRunRequest { id: run, reason })
                .await?
                .into_inner();
            if json_out {
                print_json(&run_json(&r));
            } else {
                println!(
                    "cancelled run {} ({}/{} steps had finished)",
                    r.id,
                    done(&r),
                    r.steps.len()
                );
            }
        }
        WorkflowCommand::Runs {
            workflow,
            state,
            limit,
        } => {
            let runs = c
                .workflows
                .list_workflow_runs(pb::ListWorkflowRunsRequest {
                    workflow,
                    state,
                    limit,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .runs;
            if json_out {
                print_json(&Value::Array(runs.iter().map(run_json).collect()));
            } else {
                let mut t = table(&[
                    "RUN", "WORKFLOW", "STATE", "STEPS", "STARTED", "FINISHED", "ERROR",
                ]);
                for r in &runs {
                    t.add_row(vec![
                        r.id.clone(),
                        r.workflow.clone(),
                        r.state.clone(),
                        format!("{}/{}", done(r), r.steps.len()),
                        time(r.created_at_ms),
                        time(r.finished_ms),
                        truncate(&r.error, 50),
                    ]);
                }
                println!("{t}");
            }
        }
    }
    Ok(())
}
