//! The index's schema: its fields, document ids, and the text a memory is indexed by.

use super::*;

pub(super) const KIND_MEMORY: &str = "memory";
pub(super) const KIND_MESSAGE: &str = "message";
pub(super) const KIND_SEMANTIC: &str = "semantic";
pub(super) const SEP: char = '\u{1f}';

#[derive(Clone, Copy)]
pub(super) struct Fields {
    pub(super) id: Field,
    pub(super) tenant: Field,
    pub(super) kind: Field,
    pub(super) namespace: Field,
    pub(super) key: Field,
    pub(super) conversation: Field,
    pub(super) conversation_scope: Field,
    pub(super) role: Field,
    pub(super) message_id: Field,
    pub(super) body: Field,
    pub(super) ts: Field,
}

pub(super) fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let fields = Fields {
        id: b.add_text_field("id", STRING | STORED),
        tenant: b.add_text_field("tenant", STRING),
        kind: b.add_text_field("kind", STRING | STORED),
        namespace: b.add_text_field("namespace", STRING | STORED),
        key: b.add_text_field("key", STORED),
        conversation: b.add_text_field("conversation", STRING),
        conversation_scope: b.add_text_field("conversation_scope", STRING),
        role: b.add_text_field("role", STRING),
        message_id: b.add_text_field("message_id", STORED),
        body: b.add_text_field("body", TEXT | STORED),
        ts: b.add_i64_field("ts", INDEXED | FAST),
    };
    (b.build(), fields)
}

pub(super) fn memory_doc_id(tenant: &str, namespace: &str, key: &str) -> String {
    format!("m{SEP}{tenant}{SEP}{namespace}{SEP}{key}")
}

pub(super) fn message_doc_id(tenant: &str, message_id: &str) -> String {
    format!("g{SEP}{tenant}{SEP}{message_id}")
}

pub(super) fn semantic_doc_id(tenant: &str, seq: u64) -> String {
    format!("s{SEP}{tenant}{SEP}{seq}")
}

pub(super) fn conversation_scope(tenant: &str, conversation_id: &str) -> String {
    format!("{tenant}{SEP}{conversation_id}")
}

/// The searchable text of a memory: its key and every string (and object key) in its value.
pub(super) fn memory_text(key: &str, value: &str) -> String {
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                out.push(' ');
                out.push_str(s);
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| {
                out.push(' ');
                out.push_str(k);
                walk(x, out)
            }),
            serde_json::Value::Number(n) => {
                out.push(' ');
                out.push_str(&n.to_string());
            }
            _ => {}
        }
    }
    let mut out = key.to_string();
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(v) => walk(&v, &mut out),
        Err(_) => {
            out.push(' ');
            out.push_str(value);
        }
    }
    out
}
