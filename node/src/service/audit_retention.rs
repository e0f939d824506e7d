//! Audit retention, run by the leader: for every chain (tenant and incarnation), the oldest
//! records past `[audit] max_age_secs` or `max_records_per_tenant` are written to an export
//! file, fsynced, and only then removed through Raft (`Op::AuditTrim`, at most
//! `audit::MAX_TRIM` a command). An export that fails removes nothing. A chain's head keeps
//! the last removed record's sequence number and hash, so what is left still verifies, and an
//! export file's last record links to the chain's first one kept.
//!
//! A leader that loses its leadership mid-pass proposes through the new leader, which refuses
//! a trim from a member (`auth::forward`): the new leader's own pass takes over. A record can
//! thus be exported twice (by two nodes), never removed without an export (with `export` on).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::audit::{self, AuditRecord, AuditTrimOp, Chain};
use crate::command::{self, Cluster, Op, Reply, Scope};
use crate::config::AuditConfig;
use crate::error::NexusError;
use crate::observe::metrics;
use crate::store::blocking;

#[derive(Debug, Clone)]
pub struct Retention {
    /// 0 = no age limit.
    pub max_age_ms: i64,
    /// 0 = no count limit.
    pub max_records: u64,
    /// None: remove without exporting.
    pub export_dir: Option<PathBuf>,
    pub interval: Duration,
}

impl Retention {
    pub fn from_config(c: &AuditConfig, data_dir: &Path) -> Self {
        let export_dir = c.export.then(|| {
            if c.export_dir.as_os_str().is_empty() {
                data_dir.join("audit-export")
            } else {
                c.export_dir.clone()
            }
        });
        Retention {
            max_age_ms: i64::try_from(c.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            max_records: c.max_records_per_tenant,
            export_dir,
            interval: Duration::from_secs(c.retention_interval_secs.max(1)),
        }
    }

    /// How many of a chain's oldest records (`batch`, oldest first, starting at the chain's
    /// first kept) are past a limit, given the chain holds `records` in all.
    fn due(&self, batch: &[AuditRecord], records: u64, now_ms: i64) -> usize {
        let excess = if self.max_records > 0 {
            records.saturating_sub(self.max_records)
        } else {
            0
        };
        let cutoff = (self.max_age_ms > 0).then(|| now_ms.saturating_sub(self.max_age_ms));
        batch
            .iter()
            .enumerate()
            .take_while(|(i, r)| (*i as u64) < excess || cutoff.is_some_and(|c| r.at_ms < c))
            .count()
    }

    /// One pass over every chain; returns how many records were removed.
    pub async fn run_once(&self, node: &Cluster, now_ms: i64) -> Result<u64, NexusError> {
        let store = node.store.clone();
        let chains = blocking(move || audit::chains(&store)).await?;
        let mut removed = 0u64;
        for (chain, mut head) in chains {
            while head.first_seq != 0 {
                let (store, c, from) = (node.store.clone(), chain.clone(), head.first_seq);
                let batch =
                    blocking(move || audit::chain_records(&store, &c, from, audit::MAX_TRIM))
                        .await?;
                let n = self.due(&batch, head.records, now_ms);
                if n == 0 {
                    break;
                }
                let gone = batch[..n].to_vec();
                if let Some(dir) = &self.export_dir {
                    let (dir, c) = (dir.clone(), chain.clone());
                    let exported = blocking(move || export(&dir, &c, &gone)).await;
                    if let Err(e) = exported {
                        metrics::AUDIT_EXPORT_FAILURES.inc();
                        return Err(e);
                    }
                }
                let through_seq = batch[n - 1].seq;
                let op = Op::AuditTrim(AuditTrimOp {
                    incarnation: chain.incarnation,
                    through_seq,
                });
                let done = match command::propose(node, &Scope::system(&chain.tenant), op).await? {
                    Reply::AuditTrimmed { removed } => removed,
                    other => {
                        return Err(NexusError::internal(format!("unexpected reply: {other:?}")))
                    }
                };
                metrics::AUDIT_RECORDS_REMOVED.inc_by(done);
                removed += done;
                if done == 0 {
                    break;
                }
                let (store, c) = (node.store.clone(), chain.clone());
                head = blocking(move || audit::head(&store, &c)).await?;
            }
        }
        Ok(removed)
    }
}

/// The directory of a chain's exports: `<dir>/<tenant>/<incarnation>` (`_unauthenticated` for
/// the empty tenant; tenant ids are `[a-z0-9-]`, so no other name can collide or escape).
pub fn export_path(dir: &Path, chain: &Chain) -> PathBuf {
    let tenant = if chain.tenant.is_empty() {
        "_unauthenticated".to_string()
    } else {
        chain
            .tenant
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    dir.join(tenant).join(chain.incarnation.to_string())
}

/// One record as a line of an export file (and of `nexusctl audit tail -o json`'s shape).
pub fn export_line(r: &AuditRecord) -> String {
    json!({
        "seq": r.seq, "at_ms": r.at_ms, "request_id": r.request_id,
        "principal": r.principal, "tenant": r.tenant, "incarnation": r.incarnation,
        "action": r.action, "resource": r.resource, "result": r.result,
        "prev_seq": r.prev_seq, "prev_hash": crate::embed::minilm::hex(&r.prev_hash), "hash": crate::embed::minilm::hex(&r.hash),
    })
    .to_string()
}

/// Writes `records` (oldest first, not empty) to `<first>-<last>.jsonl` in the chain's export
/// directory: a temporary file, fsynced, renamed into place, the directory fsynced.
pub fn export(dir: &Path, chain: &Chain, records: &[AuditRecord]) -> Result<PathBuf, NexusError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(NexusError::internal("nothing to export"));
    };
    let io = |what: &str, path: &Path, e: std::io::Error| {
        NexusError::internal(format!("audit export: {what} {}: {e}", path.display()))
    };
    let dir = export_path(dir, chain);
    std::fs::create_dir_all(&dir).map_err(|e| io("creating", &dir, e))?;
    let name = format!("{:020}-{:020}.jsonl", first.seq, last.seq);
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let file = std::fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        for r in records {
            writeln!(w, "{}", export_line(r)).map_err(|e| io("writing", &tmp, e))?;
        }
        let file = w
            .into_inner()
            .map_err(|e| io("writing", &tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io("syncing", &tmp, e))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| io("renaming", &tmp, e))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", &dir, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, at_ms: i64) -> AuditRecord {
        AuditRecord {
            seq,
            at_ms,
            request_id: String::new(),
            principal: "sa:bot".into(),
            tenant: "acme".into(),
            incarnation: 1,
            action: "memory.put".into(),
            resource: "memory/n/k".into(),
            result: "ok".into(),
            prev_seq: seq.saturating_sub(1),
            prev_hash: vec![0; 32],
            hash: vec![1; 32],
        }
    }

    #[test]
    fn the_oldest_records_past_either_limit_are_due() {
        let r = |max_age_ms, max_records| Retention {
            max_age_ms,
            max_records,
            export_dir: None,
            interval: Duration::from_secs(1),
        };
        let batch: Vec<_> = (1..=10).map(|i| record(i, i as i64 * 1000)).collect();
        // By count: 10 held, 7 allowed.
        assert_eq!(r(0, 7).due(&batch, 10, 100_000), 3);
        // By age: older than 4.5 s at 10 s.
        assert_eq!(r(5_500, 0).due(&batch, 10, 10_000), 4);
        // Both: whichever removes more.
        assert_eq!(r(5_500, 8).due(&batch, 10, 10_000), 4);
        assert_eq!(r(0, 0).due(&batch, 10, 10_000), 0);
    }

    #[test]
    fn an_export_is_one_file_of_json_lines_named_by_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Chain {
            tenant: String::new(),
            incarnation: 0,
        };
        let path = export(dir.path(), &chain, &[record(3, 1), record(7, 2)]).unwrap();
        assert!(
            path.ends_with("_unauthenticated/0/00000000000000000003-00000000000000000007.jsonl")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["seq"], 7);
        assert_eq!(lines[1]["hash"], "01".repeat(32));
        // No temporary file is left behind.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
