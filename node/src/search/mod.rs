//! Search over a tenant's memories and messages. `fulltext` is the BM25 index (tantivy), a
//! derived index fed from the applied Raft log with a persisted watermark.

pub mod fulltext;
