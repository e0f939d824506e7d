//! `nexus-bench auth`: one node without authentication, one with it (an API key per request,
//! RBAC, audited writes), and one with tenant quotas too, same load.

use super::*;

/// Makes tenant `bench` and an API key of its service account `bench` with the agent role,
/// through the root client; returns the key's token.
pub(crate) async fn bench_tenant_key(root: &mut Client) -> anyhow::Result<String> {
    root.iam
        .create_tenant(pb::CreateTenantRequest {
            id: "bench".into(),
            ..Default::default()
        })
        .await?;
    Ok(root
        .iam
        .create_api_key(pb::CreateApiKeyRequest {
            tenant: "bench".into(),
            service_account: "bench".into(),
            roles: vec!["agent".into()],
            ..Default::default()
        })
        .await?
        .into_inner()
        .token)
}

/// The root key of a benchmark's node with authentication.
pub(crate) const BENCH_ROOT: &str = "nexus-bench-root-key-0123456789abcdefgh";

/// Starts one node for a benchmark in `work_dir/NAME-PID-I`: without authentication, or with
/// it and a tenant `bench` whose agent key it returns. Returns the node, its data
/// directory (to remove) and the key.
pub(crate) async fn start_bench_node(
    bin: &Path,
    work_dir: &Path,
    name: &str,
    i: usize,
    authed: bool,
) -> anyhow::Result<(Node, PathBuf, Option<String>)> {
    let data = work_dir.join(format!("{name}-{}-{i}", std::process::id()));
    let ports = (free_port()?, free_port()?, free_port()?);
    let env: Vec<(&str, String)> = if authed {
        vec![
            ("NEXUS_AUTH__ENABLED", "true".into()),
            ("NEXUS_ROOT_KEY", BENCH_ROOT.into()),
        ]
    } else {
        Vec::new()
    };
    let node = spawn_nexus(bin, &data, ports, &env)?;
    wait_for_leader_as(&node, authed.then_some(BENCH_ROOT)).await?;
    let token = if authed {
        let mut root = Client::connect_with_token(&node.endpoint, Some(BENCH_ROOT)).await?;
        Some(bench_tenant_key(&mut root).await?)
    } else {
        None
    };
    Ok((node, data, token))
}

/// The configurations `nexus-bench auth` compares.
pub(crate) const AUTH_SETUPS: &[&str] = &[
    "no authentication",
    "API key, RBAC, audit",
    "API key, RBAC, audit, quotas",
];

pub(crate) async fn auth_bench(a: AuthArgs) -> anyhow::Result<()> {
    let bin = nexus_binary(a.load.nexus.clone())?;
    std::fs::create_dir_all(&a.load.work_dir)?;
    let value = format!("\"{}\"", "v".repeat(a.load.value_bytes.saturating_sub(2)));
    let mut results: Vec<Vec<(Workload, RunResult)>> = Vec::new();
    for (i, setup) in AUTH_SETUPS.iter().enumerate() {
        eprintln!("[{}/{}] {setup}: starting a node", i + 1, AUTH_SETUPS.len());
        let (node, data, token) =
            start_bench_node(&bin, &a.load.work_dir, "auth", i, i > 0).await?;
        if i == 2 {
            let mut root = Client::connect_with_token(&node.endpoint, Some(BENCH_ROOT)).await?;
            root.iam
                .set_tenant_limits(pb::SetTenantLimitsRequest {
                    id: "bench".into(),
                    limits: Some(pb::TenantLimits {
                        max_items: 1 << 40,
                        max_bytes: 1 << 50,
                        ..Default::default()
                    }),
                })
                .await?;
        }
        let connect = || async {
            Ok::<_, anyhow::Error>(Driver::Nexus(
                Client::connect_with_token(&node.endpoint, token.as_deref())
                    .await?
                    .memory,
            ))
        };
        let mut setup_driver = connect().await?;
        for k in 0..READ_KEYS {
            setup_driver.put(format!("r/{k}"), &value).await?;
        }
        let mut runs = Vec::new();
        for &workload in &a.workloads {
            for &clients in &a.load.clients {
                let mut drivers = Vec::new();
                for _ in 0..clients {
                    drivers.push(connect().await?);
                }
                eprintln!(
                    "      {workload:?}, {clients} client(s), {} s",
                    a.load.seconds
                );
                let r = run_measured(
                    drivers,
                    workload,
                    a.load.seconds,
                    &value,
                    &[node.child.id()],
                )
                .await?;
                runs.push((workload, r));
            }
        }
        drop(node);
        let _ = std::fs::remove_dir_all(&data);
        results.push(runs);
    }

    let mut body = String::new();
    body.push_str("## What security costs (issue: security)\n\n");
    body.push_str(&format!(
        "Command: `cargo build --release --bin nexus --bin nexus-bench && target/release/nexus-bench auth --clients {} --seconds {} --value-bytes {}`\n\n",
        a.load.clients.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
        a.load.seconds,
        a.load.value_bytes
    ));
    body.push_str(&format!(
        "Machine: {}. Date: {}. One `nexus` node (release build) per configuration, same load: `Put` of a {}-byte value to a new key (write) and a linearizable `Get` of one of {READ_KEYS} keys (read). Without authentication a node serves one local user and audits nothing; with it every request presents an API key (its principal is cached by the token's SHA-256 until this node applies an identity change), is checked against the agent role, and every write appends an audit record in the same batch; with quotas the tenant also has (unreachable) item and byte limits, so every write is metered against them under a savepoint. Usage metering itself runs in every configuration.\n\n",
        machine(),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        a.load.value_bytes
    ));
    body.push_str("| workload | clients | configuration | ops/s | p50 ms | p99 ms | server CPU µs/op | ops/s vs no auth |\n");
    body.push_str("|---|---:|---|---:|---:|---:|---:|---:|\n");
    for (run, (workload, base)) in results[0].iter().enumerate() {
        for (i, setup) in AUTH_SETUPS.iter().enumerate() {
            let r = &results[i][run].1;
            body.push_str(&format!(
                "| {workload:?} | {} | {setup} | {:.0} | {} | {} | {:.0} | {:.2} |\n",
                r.clients,
                r.per_sec(),
                ms(r.p50),
                ms(r.p99),
                r.cpu_us_per_op,
                r.per_sec() / base.per_sec()
            ));
        }
    }
    body.push('\n');
    update_section(&a.load.report, "bench:auth", &body)?;
    eprintln!("wrote {}", a.load.report.display());
    print!("{body}");
    Ok(())
}
