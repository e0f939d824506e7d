//! Every RocksDB key of the state machine is built here and nowhere else.
//!
//! A key begins with the tenant, so a tenant's data is one contiguous range per column family.
//! Variable-length components are written as a big-endian u16 length and the bytes, which keeps
//! components unambiguous and makes every component's prefix a key-range prefix. The last
//! component of a key is written raw so that a prefix of it is a range prefix too. Every key
//! begins with a byte below 0xFF (a length's high byte is 0 because components are at most a
//! few hundred bytes), which lets a whole family be cleared with one range deletion.

/// Upper bound, exclusive, of every state-machine key (see module docs).
pub const KEYSPACE_END: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF];

fn push_component(out: &mut Vec<u8>, component: &[u8]) {
    let len = u16::try_from(component.len()).expect("key components are validated to be short");
    debug_assert!(len < 0xFF00, "a component length must not start with 0xFF");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(component);
}

/// Reads one length-prefixed component, returning it and the rest.
fn split_component(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u16::from_be_bytes([*key.first()?, *key.get(1)?]) as usize;
    let rest = key.get(2..)?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The prefix of all of a tenant's keys in any state-machine family.
pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + tenant.len());
    push_component(&mut out, tenant.as_bytes());
    out
}

/// The tenant a state-machine key begins with.
pub fn parse_tenant(raw: &[u8]) -> Option<String> {
    let (tenant, _) = split_component(raw)?;
    String::from_utf8(tenant.to_vec()).ok()
}

/// Prefix of a namespace's memories; append a key prefix to narrow it.
pub fn kv_namespace_prefix(tenant: &str, namespace: &str) -> Vec<u8> {
    let mut out = tenant_prefix(tenant);
    push_component(&mut out, namespace.as_bytes());
    out
}

/// Key of one memory in `kv`.
pub fn kv_key(tenant: &str, namespace: &str, key: &str) -> Vec<u8> {
    let mut out = kv_namespace_prefix(tenant, namespace);
    out.extend_from_slice(key.as_bytes());
    out
}

/// Splits a `kv` key into (tenant, namespace, key).
pub fn parse_kv_key(raw: &[u8]) -> Option<(String, String, String)> {
    let (tenant, rest) = split_component(raw)?;
    let (namespace, key) = split_component(rest)?;
    Some((
        String::from_utf8(tenant.to_vec()).ok()?,
        String::from_utf8(namespace.to_vec()).ok()?,
        String::from_utf8(key.to_vec()).ok()?,
    ))
}

/// Key of a conversation record in `conversations`.
pub fn conversation_key(tenant: &str, conversation_id: &str) -> Vec<u8> {
    let mut out = tenant_prefix(tenant);
    out.extend_from_slice(conversation_id.as_bytes());
    out
}

/// Prefix of a conversation's messages in `messages`.
pub fn message_prefix(tenant: &str, conversation_id: &str) -> Vec<u8> {
    let mut out = tenant_prefix(tenant);
    push_component(&mut out, conversation_id.as_bytes());
    out
}

/// Key of one message in `messages`: sequence numbers sort numerically.
pub fn message_key(tenant: &str, conversation_id: &str, seq: u64) -> Vec<u8> {
    let mut out = message_prefix(tenant, conversation_id);
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

/// The sequence number at the end of a `messages` key.
pub fn message_key_seq(raw: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = raw.get(raw.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// Key of a message id in `message_ids`.
pub fn message_id_key(tenant: &str, message_id: &str) -> Vec<u8> {
    let mut out = tenant_prefix(tenant);
    out.extend_from_slice(message_id.as_bytes());
    out
}

/// Key of a memory in the expiry index `ttl`.
pub fn ttl_key(tenant: &str, expires_at_ms: i64, namespace: &str, key: &str) -> Vec<u8> {
    let mut out = tenant_prefix(tenant);
    out.extend_from_slice(&(expires_at_ms.max(0) as u64).to_be_bytes());
    push_component(&mut out, namespace.as_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

/// Splits a `ttl` key into (expires_at_ms, namespace, key); the tenant is known to the caller.
pub fn parse_ttl_key(raw: &[u8]) -> Option<(i64, String, String)> {
    let (_tenant, rest) = split_component(raw)?;
    let ts: [u8; 8] = rest.get(..8)?.try_into().ok()?;
    let (namespace, key) = split_component(&rest[8..])?;
    Some((
        u64::from_be_bytes(ts) as i64,
        String::from_utf8(namespace.to_vec()).ok()?,
        String::from_utf8(key.to_vec()).ok()?,
    ))
}

/// Key of a semantic memory in `semantic`: sequence numbers sort numerically.
pub fn semantic_key(tenant: &str, seq: u64) -> Vec<u8> {
    let mut out = tenant_prefix(tenant);
    out.extend_from_slice(&seq.to_be_bytes());
    out
}

/// Splits a `semantic` key into (tenant, seq).
pub fn parse_semantic_key(raw: &[u8]) -> Option<(String, u64)> {
    let (tenant, rest) = split_component(raw)?;
    let seq: [u8; 8] = rest.try_into().ok()?;
    Some((
        String::from_utf8(tenant.to_vec()).ok()?,
        u64::from_be_bytes(seq),
    ))
}

/// Key of a semantic memory id in `semantic_ids`.
pub fn semantic_id_key(tenant: &str, id: &str) -> Vec<u8> {
    let mut out = tenant_prefix(tenant);
    out.extend_from_slice(id.as_bytes());
    out
}

/// Key of a tenant's next semantic sequence number in `semantic_ids` (the tenant prefix
/// alone, which no id key equals because ids are never empty).
pub fn semantic_next_seq_key(tenant: &str) -> Vec<u8> {
    tenant_prefix(tenant)
}

/// A key of a family that keeps several kinds of records per tenant: the tenant, a tag byte
/// naming the kind, then the rest (`iam`, `secrets`).
pub fn tenant_tagged(tenant: &str, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = tenant_prefix(tenant);
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

/// Key of a message vector in `message_vectors` (the shape of a `semantic` key, so
/// [`parse_semantic_key`] splits it too).
pub fn message_vector_key(tenant: &str, seq: u64) -> Vec<u8> {
    semantic_key(tenant, seq)
}

/// Key of a message id in `message_vector_ids`.
pub fn message_vector_id_key(tenant: &str, message_id: &str) -> Vec<u8> {
    semantic_id_key(tenant, message_id)
}

/// Keys of the `audit` family (data format 5): one hash chain per tenant and incarnation,
/// tenant-first like every other family. The empty tenant holds the records of
/// unauthenticated requests, and the global sequence counter.
pub mod audit {
    use super::{split_component, tenant_prefix, tenant_tagged};

    const TAG_CHAIN: u8 = b'C';
    const TAG_HEAD: u8 = b'H';
    const TAG_INCARNATION: u8 = b'I';
    const TAG_SEQUENCE: u8 = b'S';

    /// The last sequence number given to any record (all tenants share one sequence, so
    /// records order globally).
    pub fn sequence() -> Vec<u8> {
        tenant_tagged("", TAG_SEQUENCE, &[])
    }

    /// A tenant's current incarnation (absent: 0, the default tenant and the empty one).
    pub fn incarnation(tenant: &str) -> Vec<u8> {
        tenant_tagged(tenant, TAG_INCARNATION, &[])
    }

    /// The head of a chain: where it starts and ends.
    pub fn head(tenant: &str, incarnation: u64) -> Vec<u8> {
        tenant_tagged(tenant, TAG_HEAD, &incarnation.to_be_bytes())
    }

    /// The prefix of every head of a tenant.
    pub fn heads_prefix(tenant: &str) -> Vec<u8> {
        tenant_tagged(tenant, TAG_HEAD, &[])
    }

    /// The prefix of a chain's records, which sort by sequence number.
    pub fn chain_prefix(tenant: &str, incarnation: u64) -> Vec<u8> {
        tenant_tagged(tenant, TAG_CHAIN, &incarnation.to_be_bytes())
    }

    pub fn record(tenant: &str, incarnation: u64, seq: u64) -> Vec<u8> {
        let mut k = chain_prefix(tenant, incarnation);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// The incarnation of a head key of `tenant`.
    pub fn parse_head(tenant: &str, raw: &[u8]) -> Option<u64> {
        let rest = raw.strip_prefix(heads_prefix(tenant).as_slice())?;
        Some(u64::from_be_bytes(rest.try_into().ok()?))
    }

    /// The sequence number at the end of a record key.
    pub fn parse_record_seq(raw: &[u8]) -> Option<u64> {
        let (_, rest) = split_component(raw)?;
        let rest = rest.strip_prefix(&[TAG_CHAIN])?;
        Some(u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?))
    }

    /// Whether a key is one of format 4's (one chain: `r<seq>` and `head`).
    pub fn is_format4(raw: &[u8]) -> bool {
        raw == b"head" || (raw.len() == 9 && raw[0] == b'r')
    }

    /// `tenant_prefix` again, for scans that skip from tenant to tenant.
    pub fn tenant(tenant: &str) -> Vec<u8> {
        tenant_prefix(tenant)
    }
}

/// A Raft group's id. Group 0 replicates the whole state today; tenants placed on other
/// groups come next. The log, Raft's metadata and the applied watermark of each group are
/// keyed by it (data format 4).
pub type GroupId = u32;

/// `group`'s key of a metadata `name` (of `raft_meta` or `sm_meta`).
fn group_key(group: GroupId, name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.extend_from_slice(&group.to_be_bytes());
    out.extend_from_slice(name);
    out
}

/// Keys of `sm_meta`, per group: `group (u32 BE) ++ name`.
pub mod sm_meta {
    use super::GroupId;

    pub const LAST_APPLIED: &[u8] = b"last_applied";
    pub const MEMBERSHIP: &[u8] = b"membership";
    /// Set while a snapshot is being installed: the path of its file (see
    /// `cluster::snapshot::install`).
    pub const INSTALLING: &[u8] = b"installing";

    /// The key of `name` for `group`.
    pub fn key(group: GroupId, name: &[u8]) -> Vec<u8> {
        super::group_key(group, name)
    }
}

/// Keys of `raft_meta`, per group: `group (u32 BE) ++ name`.
pub mod raft_meta {
    use super::GroupId;

    pub const VOTE: &[u8] = b"vote";
    pub const COMMITTED: &[u8] = b"committed";
    pub const LAST_PURGED: &[u8] = b"last_purged";

    /// The key of `name` for `group`.
    pub fn key(group: GroupId, name: &[u8]) -> Vec<u8> {
        super::group_key(group, name)
    }
}

/// Key of a log entry in `raft_log`: the group (u32 BE), then the index (u64 BE), so that a
/// group's log is one contiguous range in index order.
pub fn log_key(group: GroupId, index: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&group.to_be_bytes());
    out[4..].copy_from_slice(&index.to_be_bytes());
    out
}

/// The group and index of a `raft_log` key.
pub fn parse_log_key(raw: &[u8]) -> Option<(GroupId, u64)> {
    let raw: &[u8; 12] = raw.try_into().ok()?;
    let group = GroupId::from_be_bytes(raw[..4].try_into().ok()?);
    let index = u64::from_be_bytes(raw[4..].try_into().ok()?);
    Some((group, index))
}

/// Format 3's keys, before groups: what the format-4 migration rewrites.
pub mod format3 {
    /// A `raft_log` key was the index alone (u64 BE).
    pub fn log_key_index(raw: &[u8]) -> Option<u64> {
        Some(u64::from_be_bytes(raw.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_keys_round_trip_and_stay_inside_their_prefixes() {
        let k = kv_key("default", "notes", "a/b");
        assert!(k.starts_with(&kv_namespace_prefix("default", "notes")));
        assert!(k.starts_with(&tenant_prefix("default")));
        assert_eq!(
            parse_kv_key(&k),
            Some(("default".into(), "notes".into(), "a/b".into()))
        );
        // A namespace that is a prefix of another never shares its range.
        assert!(
            !kv_key("default", "notes2", "x").starts_with(&kv_namespace_prefix("default", "notes"))
        );
        // Nor does a tenant.
        assert!(!kv_key("defaults", "n", "x").starts_with(&tenant_prefix("default")));
        assert!(k.as_slice() < KEYSPACE_END);
    }

    #[test]
    fn message_keys_sort_by_sequence() {
        let a = message_key("t", "c", 2);
        let b = message_key("t", "c", 10);
        assert!(a < b);
        assert_eq!(message_key_seq(&b), Some(10));
        assert!(b.starts_with(&message_prefix("t", "c")));
    }

    #[test]
    fn ttl_keys_sort_by_expiry_and_parse() {
        let a = ttl_key("t", 5, "ns", "k");
        let b = ttl_key("t", 1_000, "a", "a");
        assert!(a < b);
        assert_eq!(parse_ttl_key(&a), Some((5, "ns".into(), "k".into())));
    }

    #[test]
    fn audit_keys_stay_in_their_tenant_and_chain() {
        let r = audit::record("acme", 2, 300);
        assert!(r.starts_with(&audit::chain_prefix("acme", 2)));
        assert!(r.starts_with(&tenant_prefix("acme")));
        assert!(audit::record("acme", 2, 299) < r && r < audit::record("acme", 3, 0));
        assert_eq!(audit::parse_record_seq(&r), Some(300));
        assert_eq!(audit::parse_head("acme", &audit::head("acme", 7)), Some(7));
        assert_eq!(audit::parse_head("acm", &audit::head("acme", 7)), None);
        assert!(!audit::is_format4(&r) && audit::is_format4(b"head"));
        assert!(!audit::is_format4(&audit::sequence()));
        assert!(r.as_slice() < KEYSPACE_END);
    }

    #[test]
    fn log_keys_order_by_group_then_index() {
        assert_eq!(parse_log_key(&log_key(7, 42)), Some((7, 42)));
        assert!(log_key(0, u64::MAX) < log_key(1, 0));
        assert!(log_key(1, 255) < log_key(1, 256));
        assert_eq!(parse_log_key(&42u64.to_be_bytes()), None, "a format-3 key");
        assert!(sm_meta::key(0, sm_meta::LAST_APPLIED).as_slice() < KEYSPACE_END);
        assert_ne!(
            raft_meta::key(0, raft_meta::VOTE),
            raft_meta::key(1, raft_meta::VOTE)
        );
    }
}
