//! Prometheus metrics of the node, served on `/metrics` of the HTTP port.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    Registry::new_custom(Some("nexus".into()), None).expect("valid registry prefix")
});

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    REGISTRY
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

/// Latency buckets from 100 µs to ~13 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 18).expect("valid buckets")
}

pub static GRPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "grpc_requests_total",
                "gRPC requests by method and status code",
            ),
            &["method", "code"],
        )
        .expect("valid metric"),
    )
});

pub static GRPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "grpc_request_duration_seconds",
                "gRPC request latency by method",
            )
            .buckets(latency_buckets()),
            &["method"],
        )
        .expect("valid metric"),
    )
});

pub static RAFT_COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "raft_proposal_commit_seconds",
                "on the leader, from proposing a log entry to its applied result",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid metric"),
    )
});

pub static PEER_RPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "peer_rpc_duration_seconds",
                "time to serve a request on the peer port, by RPC",
            )
            .buckets(latency_buckets()),
            &["rpc"],
        )
        .expect("valid metric"),
    )
});

pub static WAL_SYNCS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new("wal_syncs_total", "fsyncs of the write-ahead log").expect("valid metric"),
    )
});

pub static WAL_SYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new("wal_sync_duration_seconds", "duration of one WAL fsync")
                .buckets(latency_buckets()),
        )
        .expect("valid metric"),
    )
});

pub static LOG_ENTRIES_APPENDED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "raft_log_entries_appended_total",
            "entries appended to the local Raft log",
        )
        .expect("valid metric"),
    )
});

pub static PROPOSAL_BATCH_COMMANDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "raft_proposal_batch_commands",
                "client commands per proposed log entry",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 11).expect("valid buckets")),
        )
        .expect("valid metric"),
    )
});

pub static SEARCH_WATERMARK: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "search_index_watermark",
            "last log index contained in the full-text index",
        )
        .expect("valid metric"),
    )
});

pub static VECTOR_WATERMARK: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "vector_index_watermark",
            "last log index contained in the vector index",
        )
        .expect("valid metric"),
    )
});

pub static EMBEDDING_BACKLOG: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "embedding_backlog",
            "semantic memories and conversation messages without a vector of the current model, as the leader's last re-embedding pass counted them",
        )
        .expect("valid metric"),
    )
});

/// Texts per model call of the batching embedder: how well concurrent requests share a pass.
pub static EMBEDDING_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "embedding_batch_texts",
                "texts per embedding model call (concurrent requests embedded together)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .expect("valid metric"),
    )
});

/// Wall time of one embedding model call (a batch).
pub static EMBEDDING_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "embedding_batch_seconds",
                "wall time of one embedding model call (one batch)",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid metric"),
    )
});

pub static EMBEDDING_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "embedding_cache_lookups_total",
                "texts looked up in the embedding cache, by result (hit: no model pass)",
            ),
            &["result"],
        )
        .expect("valid metric"),
    )
});

pub static EMBEDDING_BACKFILLED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "embedding_backfilled_total",
            "semantic memories and messages given a vector after they were stored (no model then, or another one)",
        )
        .expect("valid metric"),
    )
});

pub static VECTOR_INDEX_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "vector_index_errors_total",
            "failed vector index updates (retried from the same position)",
        )
        .expect("valid metric"),
    )
});

pub static SEARCH_COMMITS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "search_index_commits_total",
            "commits of the full-text index",
        )
        .expect("valid metric"),
    )
});

pub static RAFT_TERM: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::new("raft_term", "current Raft term").expect("valid metric"))
});
pub static RAFT_IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new("raft_is_leader", "1 when this node is the leader").expect("valid metric"),
    )
});
pub static RAFT_COMMIT_INDEX: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::new("raft_commit_index", "committed log index").expect("valid metric"))
});
pub static RAFT_APPLIED_INDEX: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::new("raft_applied_index", "applied log index").expect("valid metric"))
});
pub static RAFT_LAST_LOG_INDEX: LazyLock<IntGauge> = LazyLock::new(|| {
    register(IntGauge::new("raft_last_log_index", "last log index").expect("valid metric"))
});
pub static RAFT_SNAPSHOT_INDEX: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new("raft_snapshot_index", "last log index in the snapshot")
            .expect("valid metric"),
    )
});

pub static READ_INDEX_BATCH_READS: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "read_index_batch_reads",
                "linearizable reads served by one read-index round",
            )
            .buckets(prometheus::exponential_buckets(1.0, 2.0, 11).expect("valid buckets")),
        )
        .expect("valid metric"),
    )
});

pub static TLS_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "tls_reloads_total",
                "certificate files that changed on disk, by listener and whether they loaded",
            ),
            &["listener", "result"],
        )
        .expect("valid metric"),
    )
});

pub static SHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "load_shed_total",
                "requests shed under load: writes or reads over their queue's bound, writes whose client gave up before they were proposed",
            ),
            &["what"],
        )
        .expect("valid metric"),
    )
});

pub static DENIALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "denials_total",
                "API requests refused (authentication, permission, rate), by gRPC code; audited as one record per group and window",
            ),
            &["code"],
        )
        .expect("valid metric"),
    )
});

pub static PEER_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "peer_refusals_total",
                "requests and connections refused on the peer port, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric"),
    )
});

pub static RAFT_SNAPSHOTS_INSTALLED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "raft_snapshots_installed_total",
            "snapshots received from the leader and installed (a follower too far behind)",
        )
        .expect("valid metric"),
    )
});

pub static AUDIT_RECORDS_REMOVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "audit_records_removed_total",
            "audit records removed by retention on this node as leader (after their export)",
        )
        .expect("valid metric"),
    )
});

pub static AUDIT_EXPORT_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    register(
        IntCounter::new(
            "audit_export_failures_total",
            "audit exports that failed; the records were kept (retention retries later)",
        )
        .expect("valid metric"),
    )
});

pub static TOOL_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "tool_calls_total",
                "tool calls served by this node, by tenant, tool and outcome (a gRPC code name)",
            ),
            &["tenant", "tool", "outcome"],
        )
        .expect("valid metric"),
    )
});

pub static SCHEDULE_RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "schedule_runs_total",
                "schedule attempts this node ran as leader, by outcome (succeeded, failed, dead), and due times fired by what they did (skipped, queued)",
            ),
            &["outcome"],
        )
        .expect("valid metric"),
    )
});

pub static WORKFLOW_RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "workflow_runs_total",
                "workflow runs started through this node, and runs this node's driver saw end, by state (started, succeeded, failed, cancelled)",
            ),
            &["state"],
        )
        .expect("valid metric"),
    )
});

pub static WORKFLOW_STEPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "workflow_steps_total",
                "workflow step attempts this node ran as leader, by outcome (succeeded, retried, failed), and steps it skipped",
            ),
            &["outcome"],
        )
        .expect("valid metric"),
    )
});

pub static HOOK_DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "hook_deliveries_total",
                "trigger and webhook delivery attempts this node ran as leader, by kind (trigger, webhook) and outcome (succeeded, retried, dead)",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric"),
    )
});

pub static SCHEDULE_LATENESS: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "schedule_fire_lateness_seconds",
                "from a due time (with its jitter) to its first attempt's start, on the leader",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid metric"),
    )
});

pub static TOOL_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new("tool_call_seconds", "tool call latency, by tenant and tool")
                .buckets(latency_buckets()),
            &["tenant", "tool"],
        )
        .expect("valid metric"),
    )
});

/// Forces registration of every metric so that `/metrics` lists them before first use.
pub fn init() {
    LazyLock::force(&GRPC_REQUESTS);
    LazyLock::force(&GRPC_SECONDS);
    LazyLock::force(&WAL_SYNCS);
    LazyLock::force(&RAFT_COMMIT_SECONDS);
    LazyLock::force(&PEER_RPC_SECONDS);
    LazyLock::force(&WAL_SYNC_SECONDS);
    LazyLock::force(&LOG_ENTRIES_APPENDED);
    LazyLock::force(&PROPOSAL_BATCH_COMMANDS);
    LazyLock::force(&SEARCH_WATERMARK);
    LazyLock::force(&SEARCH_COMMITS);
    LazyLock::force(&VECTOR_WATERMARK);
    LazyLock::force(&VECTOR_INDEX_ERRORS);
    LazyLock::force(&EMBEDDING_BACKLOG);
    LazyLock::force(&EMBEDDING_BACKFILLED);
    LazyLock::force(&EMBEDDING_CACHE);
    LazyLock::force(&EMBEDDING_BATCH);
    LazyLock::force(&EMBEDDING_SECONDS);
    LazyLock::force(&SCHEDULE_RUNS);
    LazyLock::force(&SCHEDULE_LATENESS);
    LazyLock::force(&WORKFLOW_RUNS);
    LazyLock::force(&WORKFLOW_STEPS);
    LazyLock::force(&HOOK_DELIVERIES);
    LazyLock::force(&RAFT_TERM);
    LazyLock::force(&RAFT_IS_LEADER);
    LazyLock::force(&RAFT_COMMIT_INDEX);
    LazyLock::force(&RAFT_APPLIED_INDEX);
    LazyLock::force(&RAFT_LAST_LOG_INDEX);
    LazyLock::force(&RAFT_SNAPSHOT_INDEX);
    LazyLock::force(&RAFT_SNAPSHOTS_INSTALLED);
    LazyLock::force(&TLS_RELOADS);
    LazyLock::force(&PEER_REFUSALS);
    LazyLock::force(&DENIALS);
    LazyLock::force(&SHED);
    LazyLock::force(&READ_INDEX_BATCH_READS);
    LazyLock::force(&AUDIT_RECORDS_REMOVED);
    LazyLock::force(&AUDIT_EXPORT_FAILURES);
    LazyLock::force(&TOOL_CALLS);
    LazyLock::force(&TOOL_SECONDS);
}

/// The text exposition of every metric.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut out)
        .expect("encoding metrics into a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}
