//! Search over a tenant's memories and messages:
//! - `fulltext`: the BM25 index (tantivy) of memories, messages and semantic memories;
//! - `vector`: the vector index of semantic memories (local HNSW), behind a trait;
//! - `recall`: hybrid retrieval over both, fused as `fusion` says.
//!
//! Both indexes are derived state, fed from the applied Raft log with a persisted watermark.

pub mod fulltext;
pub mod fusion;
pub mod query;
pub mod recall;
pub mod vector;

use std::time::Duration;

use tokio::sync::watch;

use crate::error::NexusError;

/// Waits until a derived index's watermark reaches log index `index`, for a linearizable
/// read; Unavailable after `timeout`, naming the index (`what`) and how far it got.
pub async fn wait_for_watermark(
    watermark: &watch::Receiver<u64>,
    index: u64,
    timeout: Duration,
    what: &str,
) -> Result<(), NexusError> {
    let mut rx = watermark.clone();
    let wait = async move { rx.wait_for(|w| *w >= index).await.map(|_| ()) };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(NexusError::unavailable(format!(
            "the {what} has stopped"
        ))),
        Err(_) => Err(NexusError::unavailable(format!(
            "the {what} is at log index {} and has not reached {index} within {} ms; retry, or read with stale consistency",
            *watermark.borrow(),
            timeout.as_millis()
        ))),
    }
}
