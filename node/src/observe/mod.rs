//! Observability: structured logging (tracing) and Prometheus metrics.

pub mod metrics;

/// Installs the global tracing subscriber. `format` is `text` or `json`; `RUST_LOG` overrides
/// `level` when set.
pub fn init_tracing(level: &str, format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
