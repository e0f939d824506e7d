//! Search over a tenant's memories and messages:
//! - `fulltext`: the BM25 index (tantivy) of memories, messages and semantic memories;
//! - `vector`: the vector index of semantic memories (local HNSW), behind a trait;
//! - `recall`: hybrid retrieval, both fused by reciprocal rank.
//!
//! Both indexes are derived state, fed from the applied Raft log with a persisted watermark.

pub mod fulltext;
pub mod recall;
pub mod vector;
