//! `nexus-bench schedules`: how late schedules start, on one node: N every-second schedules
//! (their target the built-in `echo`, overlap `allow`) on an idle node, then N more under a
//! write load of C clients. Lateness is a run's first start less its due time (no jitter),
//! as the run history records it, so it is what the leader did, not what a client saw.

use super::*;

#[derive(clap::Args)]
pub(crate) struct ScheduleArgs {
    /// Every-second schedules in each phase.
    #[arg(long, default_value_t = 50)]
    schedules: usize,
    #[command(flatten)]
    load: LoadArgs,
}

struct Phase {
    label: String,
    runs: usize,
    expected: usize,
    lateness: Vec<u64>,
    writes_per_sec: f64,
}

async fn add_all(c: &mut Client, prefix: &str, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        c.schedules
            .add_schedule(pb::Schedule {
                name: format!("{prefix}-{i}"),
                spec: Some(pb::schedule::Spec::EveryMs(1000)),
                tool: "echo".into(),
                args: r#"{"text": "${run.id}"}"#.into(),
                overlap: pb::Overlap::Allow as i32,
                keep_runs: 1000,
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// Pauses the phase's schedules, and reads back their runs: (runs, due times expected
/// between each one's creation and pause, lateness in ms of each run's first start).
async fn collect(
    c: &mut Client,
    prefix: &str,
    n: usize,
) -> anyhow::Result<(usize, usize, Vec<u64>)> {
    let mut runs = 0;
    let mut expected = 0;
    let mut late = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let s = c
            .schedules
            .pause_schedule(pb::PauseScheduleRequest { name: name.clone() })
            .await?
            .into_inner();
        expected += ((s.updated_at_ms - s.created_at_ms) / 1000) as usize;
        let list = c
            .schedules
            .list_runs(pb::ListRunsRequest {
                name,
                limit: 1000,
                ..Default::default()
            })
            .await?
            .into_inner()
            .runs;
        for r in list {
            if r.first_started_ms > 0 {
                runs += 1;
                late.push((r.first_started_ms - r.due_ms).max(0) as u64);
            }
        }
    }
    late.sort_unstable();
    Ok((runs, expected, late))
}

pub(crate) async fn schedules_bench(a: ScheduleArgs) -> anyhow::Result<()> {
    let bin = nexus_binary(a.load.nexus.clone())?;
    std::fs::create_dir_all(&a.load.work_dir)?;
    let data = a
        .load
        .work_dir
        .join(format!("schedules-{}", std::process::id()));
    eprintln!("[1/3] starting {} on {}", bin.display(), data.display());
    let node = start_node(&bin, &data).await?;
    let mut c = Client::connect(&node.endpoint).await?;
    let value = format!("\"{}\"", "v".repeat(a.load.value_bytes.saturating_sub(2)));
    let clients = a.load.clients.iter().copied().max().unwrap_or(16);
    let mut phases = Vec::new();

    eprintln!(
        "[2/3] {} every-second schedules on an idle node for {} s",
        a.schedules, a.load.seconds
    );
    add_all(&mut c, "idle", a.schedules).await?;
    tokio::time::sleep(Duration::from_secs(a.load.seconds + 1)).await;
    let (runs, expected, lateness) = collect(&mut c, "idle", a.schedules).await?;
    phases.push(Phase {
        label: "idle".into(),
        runs,
        expected,
        lateness,
        writes_per_sec: 0.0,
    });

    eprintln!(
        "[3/3] {} more under {clients} writing clients for {} s",
        a.schedules, a.load.seconds
    );
    add_all(&mut c, "loaded", a.schedules).await?;
    let mut drivers = Vec::new();
    for _ in 0..clients {
        drivers.push(Driver::connect(System::Nexus, &node.endpoint).await?);
    }
    let load = run_load(drivers, Workload::Write, a.load.seconds, &value, None).await?;
    let (runs, expected, lateness) = collect(&mut c, "loaded", a.schedules).await?;
    phases.push(Phase {
        label: format!("{clients} clients writing"),
        runs,
        expected,
        lateness,
        writes_per_sec: load.per_sec(),
    });
    drop(node);
    let _ = std::fs::remove_dir_all(&data);

    let mut body = String::from("## Schedule fire lateness (issue 15)\n\n");
    body.push_str(&format!(
        "Command: `cargo build --release --bin nexus --bin nexus-bench && target/release/nexus-bench schedules --schedules {} --clients {clients} --seconds {}`\n\n",
        a.schedules, a.load.seconds
    ));
    body.push_str(&format!(
        "Machine: {}. Date: {}. One `nexus` node (release build). Each phase adds {} schedules firing every second (target `echo`, overlap allow, no jitter); the second runs while {clients} clients put {}-byte values as fast as they can. Lateness: a run's first start less its due time, from the run history (each start is after its `Fire` committed through Raft).\n\n",
        machine(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        a.schedules,
        a.load.value_bytes
    ));
    body.push_str("| phase | writes/s | runs | due times | lateness p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for p in &phases {
        body.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {} |\n",
            p.label,
            p.writes_per_sec,
            p.runs,
            p.expected,
            percentile(&p.lateness, 0.5),
            percentile(&p.lateness, 0.99),
            p.lateness.last().copied().unwrap_or(0)
        ));
    }
    body.push('\n');
    update_section(&a.load.report, "bench:schedules", &body)?;
    eprintln!("wrote {}", a.load.report.display());
    print!("{body}");
    Ok(())
}
