//! Conversions between the wire types of `nexus.v1` and the domain types.

use nexus_proto::v1 as pb;

use crate::cluster::ClusterStatus;
use crate::memory::conversations::{ConversationRecord, MessageRecord};
use crate::memory::kv::MemoryItem;
use crate::memory::semantic::SemanticRecord;
use crate::search::fulltext::{Hit, HitItem, HitKind};
use crate::search::recall::{FusedHit, RecallHit, RecallItem, Retriever};

pub fn memory_item(i: MemoryItem) -> pb::MemoryItem {
    pb::MemoryItem {
        namespace: i.namespace,
        key: i.key,
        value: i.record.value,
        version: i.record.version,
        created_at_ms: i.record.created_at_ms,
        updated_at_ms: i.record.updated_at_ms,
        expires_at_ms: i.record.expires_at_ms,
    }
}

pub fn conversation(c: ConversationRecord) -> pb::Conversation {
    pb::Conversation {
        id: c.id,
        title: c.title,
        metadata: c.metadata,
        created_at_ms: c.created_at_ms,
        updated_at_ms: c.updated_at_ms,
        message_count: c.message_count,
    }
}

pub fn message(m: MessageRecord) -> pb::Message {
    pb::Message {
        id: m.id,
        conversation_id: m.conversation_id,
        seq: m.seq,
        role: m.role,
        content: m.content,
        metadata: m.metadata,
        input_tokens: m.input_tokens,
        output_tokens: m.output_tokens,
        created_at_ms: m.created_at_ms,
    }
}

pub fn hit_kind(value: i32) -> Result<HitKind, crate::error::NexusError> {
    match pb::HitKind::try_from(value) {
        Ok(pb::HitKind::Memory) => Ok(HitKind::Memory),
        Ok(pb::HitKind::Message) => Ok(HitKind::Message),
        Ok(pb::HitKind::Semantic) => Ok(HitKind::Semantic),
        _ => Err(crate::error::NexusError::invalid(
            "kinds",
            format!("{value} is not a hit kind (HIT_KIND_MEMORY, HIT_KIND_MESSAGE or HIT_KIND_SEMANTIC)"),
        )),
    }
}

pub fn semantic(r: SemanticRecord) -> pb::SemanticMemory {
    pb::SemanticMemory {
        id: r.id,
        namespace: r.namespace,
        text: r.text,
        metadata: r.metadata.into_iter().collect(),
        importance: r.importance,
        created_at_ms: r.created_at_ms,
        model: r.model,
    }
}

fn retrievers(r: Vec<Retriever>) -> Vec<String> {
    r.into_iter().map(|r| r.name().to_string()).collect()
}

pub fn recall_hit(h: RecallHit) -> pb::RecallHit {
    pb::RecallHit {
        item: Some(match h.item {
            RecallItem::Memory(r) => pb::recall_hit::Item::Memory(semantic(r)),
            RecallItem::Message(m) => pb::recall_hit::Item::Message(message(m)),
        }),
        score: h.score,
        similarity: h.similarity,
        bm25: h.bm25,
        retrievers: retrievers(h.retrievers),
    }
}

pub fn fused_hit(h: FusedHit) -> pb::SearchHit {
    let mut out = hit(h.hit);
    out.retrievers = retrievers(h.retrievers);
    out
}

pub fn hit(h: Hit) -> pb::SearchHit {
    let (kind, item) = match h.item {
        HitItem::Memory(m) => (
            pb::HitKind::Memory,
            pb::search_hit::Item::Memory(memory_item(m)),
        ),
        HitItem::Message(m) => (
            pb::HitKind::Message,
            pb::search_hit::Item::Message(message(m)),
        ),
        HitItem::Semantic(r) => (
            pb::HitKind::Semantic,
            pb::search_hit::Item::Semantic(semantic(r)),
        ),
    };
    pb::SearchHit {
        kind: kind as i32,
        score: h.score,
        snippet: h.snippet,
        highlights: h
            .highlights
            .into_iter()
            .map(|(start, end)| pb::Highlight {
                start: start as u32,
                end: end as u32,
            })
            .collect(),
        item: Some(item),
        retrievers: Vec::new(),
    }
}

pub fn status(s: ClusterStatus, search_watermark: u64) -> pb::StatusResponse {
    pb::StatusResponse {
        node_id: s.node_id,
        role: s.role.to_string(),
        term: s.term,
        leader_id: s.leader_id.unwrap_or(0),
        leader_addr: s.leader_addr.unwrap_or_default(),
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        last_log_index: s.last_log_index,
        snapshot_index: s.snapshot_index,
        members: s
            .members
            .into_iter()
            .map(|m| pb::Member {
                id: m.id,
                peer_addr: m.node.peer_addr,
                api_addr: m.node.api_addr,
                voter: m.voter,
            })
            .collect(),
        search_index_watermark: search_watermark,
        version: env!("CARGO_PKG_VERSION").to_string(),
        embedding_backlog: crate::observe::metrics::EMBEDDING_BACKLOG.get().max(0) as u64,
    }
}
