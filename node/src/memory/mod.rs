//! Agent memory: namespaced key-value memories (`kv`), conversations with their message
//! history (`conversations`) and semantic memories recalled by meaning (`semantic`). Each
//! submodule validates requests, turns writes into replicated commands, applies them in the
//! state machine and serves reads from the store.

pub mod conversations;
pub mod kv;
pub mod semantic;
pub mod validate;

/// Wall-clock now in Unix milliseconds, read once on the proposing node.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
