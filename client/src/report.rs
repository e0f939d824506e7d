//! What the benchmarks share: percentiles, a description of the machine, and the section of
//! docs/benchmarks.md each one rewrites.

use std::path::Path;

/// The `p` quantile (0..=1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// "N cores (CPU model), M GiB RAM", from /proc.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib / 1024.0 / 1024.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), {mem} RAM")
}

/// Replaces the text between `<!-- name:start -->` and `<!-- name:end -->`, or appends it.
pub fn update_section(report: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let start = format!("<!-- {name}:start -->");
    let end = format!("<!-- {name}:end -->");
    let current = std::fs::read_to_string(report).unwrap_or_else(|_| "# Benchmarks\n".into());
    let section = format!("{start}\n{body}{end}");
    let next = match (current.find(&start), current.find(&end)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{}{}", &current[..s], section, &current[e + end.len()..])
        }
        _ => format!("{}\n{}\n", current.trim_end(), section),
    };
    std::fs::write(report, next)?;
    Ok(())
}
