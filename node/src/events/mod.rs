//! Events: each tenant's log of events, a state-machine family (`events`, tenant-first keys)
//! replicated through Raft. An event has a topic (dot-separated tokens), JSON data, where it
//! came from, and a sequence number per tenant that the state machine assigns as it applies,
//! so every node holds the same events under the same numbers and a subscriber resumes from
//! the last number it saw (`service::events`).
//!
//! Published from the API (`EventService.Publish`) and by the state machine itself when
//! memory changes (`memory.put.NAMESPACE`, `memory.delete.NAMESPACE`,
//! `memory.remember.NAMESPACE`, `memory.forget.NAMESPACE`, `conversation.append.ID`), in the
//! same step as the change (`command::memory_events`). Retention: the newest [`KEEP_EVENTS`]
//! of a tenant, none older than [`KEEP_MS`], trimmed as events are appended. Like the audit
//! log, events are not counted in the tenant's stored bytes (a memory write would otherwise
//! grow them by its event); retention bounds them (10,000 of at most 16 KiB of data).
//!
//! Topics and patterns (the NATS rules): a topic is 1 to [`MAX_TOPIC_TOKENS`] tokens joined
//! by `.`, each of 1 or more characters that are not `.`, `*`, `>`, whitespace or control
//! characters; at most [`MAX_TOPIC_BYTES`]. A pattern is the same, where a token `*` matches
//! exactly one token and a last token `>` matches one or more tokens: `task.*` matches
//! `task.done` but not `task` or `task.a.b`; `task.>` matches `task.done` and `task.a.b` but
//! not `task`; `>` matches everything.

use serde::{Deserialize, Serialize};

use crate::error::NexusError;
use crate::store::{keys, ApplyCtx, Store, StoreError, CF_EVENTS};

const TAG_EVENT: u8 = b'E';
const TAG_META: u8 = b'M';

/// Events a tenant keeps (the oldest go first).
pub const KEEP_EVENTS: u64 = 10_000;
/// Oldest event a tenant keeps, ms (7 days).
pub const KEEP_MS: i64 = 7 * 24 * 3_600_000;
/// Most events trimmed by one append (the rest by the next ones).
const TRIM_PER_APPEND: usize = 64;
/// Longest topic.
pub const MAX_TOPIC_BYTES: usize = 256;
pub const MAX_TOPIC_TOKENS: usize = 16;
/// Largest event data, JSON text.
pub const MAX_DATA_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub topic: String,
    /// JSON text.
    pub data: String,
    /// Who published it: a principal (`sa:bot`), or `nexus` for the state machine's own.
    pub source: String,
    pub at_ms: i64,
}

/// A tenant's position in its event log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    /// The number the next event gets (numbers start at 1).
    pub next_seq: u64,
    /// The oldest number still kept (0: none yet).
    pub first_seq: u64,
    /// The newest event's time (the time of an event whose op carries none).
    pub last_at_ms: i64,
}

impl EventLog {
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    fn kept(&self) -> u64 {
        if self.first_seq == 0 {
            0
        } else {
            self.next_seq - self.first_seq
        }
    }
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    pub topic: String,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EventOp {
    /// Appends the events, numbered in order, as published by `source` at `at_ms`.
    Publish {
        events: Vec<NewEvent>,
        source: String,
        at_ms: i64,
    },
}

impl EventOp {
    pub fn name(&self) -> &'static str {
        match self {
            EventOp::Publish { .. } => "events.publish",
        }
    }

    pub fn approx_size(&self) -> usize {
        match self {
            EventOp::Publish { events, source, .. } => {
                events
                    .iter()
                    .map(|e| e.topic.len() + e.data.len() + 8)
                    .sum::<usize>()
                    + source.len()
                    + 16
            }
        }
    }

    pub fn resource(&self) -> String {
        match self {
            EventOp::Publish { events, .. } => match events.as_slice() {
                [one] => format!("events/{}", one.topic),
                many => format!("events ({} topics)", many.len()),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum EventReply {
    /// The numbers the events got: `first..=last`.
    Published { first_seq: u64, last_seq: u64 },
}

fn meta_key(tenant: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_META, &[])
}

fn event_key(tenant: &str, seq: u64) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_EVENT, &seq.to_be_bytes())
}

pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &EventOp,
) -> Result<Result<EventReply, NexusError>, StoreError> {
    match op {
        EventOp::Publish {
            events,
            source,
            at_ms,
        } => {
            let (first_seq, last_seq) = append(ctx, tenant, events, source, Some(*at_ms))?;
            Ok(Ok(EventReply::Published {
                first_seq,
                last_seq,
            }))
        }
    }
}

/// Appends events to `tenant`'s log in this step (the API's and the state machine's own),
/// trimming what retention lets go; returns the first and last numbers given. `at_ms` None:
/// the newest event's time (an op that carries no time; apply must not read the clock).
pub fn append(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    events: &[NewEvent],
    source: &str,
    at_ms: Option<i64>,
) -> Result<(u64, u64), StoreError> {
    let mkey = meta_key(tenant);
    let mut log: EventLog = ctx.get_decoded(CF_EVENTS, &mkey)?.unwrap_or_default();
    if log.next_seq == 0 {
        log.next_seq = 1;
    }
    let at_ms = at_ms.unwrap_or(log.last_at_ms).max(log.last_at_ms);
    log.last_at_ms = at_ms;
    let first = log.next_seq;
    for e in events {
        let record = EventRecord {
            seq: log.next_seq,
            topic: e.topic.clone(),
            data: e.data.clone(),
            source: source.to_string(),
            at_ms,
        };
        ctx.put(CF_EVENTS, &event_key(tenant, log.next_seq), &record);
        if log.first_seq == 0 {
            log.first_seq = log.next_seq;
        }
        log.next_seq += 1;
    }
    // Retention: by count, then by age, a bounded number per append.
    let mut trimmed = 0;
    while log.kept() > KEEP_EVENTS && trimmed < TRIM_PER_APPEND {
        ctx.delete(CF_EVENTS, &event_key(tenant, log.first_seq));
        log.first_seq += 1;
        trimmed += 1;
    }
    // By age: looked at when the numbers cross a multiple of the trim batch, so an append
    // reads an old event once in that many, not every time.
    let batch = TRIM_PER_APPEND as u64;
    let crossed = (first - 1) / batch != (log.next_seq - 1) / batch;
    while crossed && trimmed < TRIM_PER_APPEND && log.first_seq < first {
        let key = event_key(tenant, log.first_seq);
        match ctx.get_decoded::<EventRecord>(CF_EVENTS, &key)? {
            Some(old) if old.at_ms < at_ms - KEEP_MS => {
                ctx.delete(CF_EVENTS, &key);
                log.first_seq += 1;
                trimmed += 1;
            }
            _ => break,
        }
    }
    ctx.put(CF_EVENTS, &mkey, &log);
    Ok((first, log.next_seq - 1))
}

/// A tenant's last event number as this apply step sees it (0: none yet).
pub fn last_seq_in(ctx: &ApplyCtx<'_>, tenant: &str) -> Result<u64, StoreError> {
    Ok(ctx
        .get_decoded::<EventLog>(CF_EVENTS, &meta_key(tenant))?
        .unwrap_or_default()
        .last_seq())
}

/// Event `seq` of `tenant`, if retention kept it.
pub fn get(store: &Store, tenant: &str, seq: u64) -> Result<Option<EventRecord>, StoreError> {
    store.get_decoded(CF_EVENTS, &event_key(tenant, seq))
}

/// A tenant's log position.
pub fn log(store: &Store, tenant: &str) -> Result<EventLog, StoreError> {
    Ok(store
        .get_decoded(CF_EVENTS, &meta_key(tenant))?
        .unwrap_or_default())
}

/// Up to `limit` events of `tenant` numbered after `after_seq`, in order, that `matches`
/// keeps; and the last number looked at (to resume after, matched or not). Reads at most
/// `scan_limit` events.
pub fn read_after(
    store: &Store,
    tenant: &str,
    after_seq: u64,
    limit: usize,
    scan_limit: usize,
    matches: impl Fn(&str) -> bool,
) -> Result<(Vec<EventRecord>, u64), StoreError> {
    let prefix = keys::tenant_tagged(tenant, TAG_EVENT, &[]);
    let start = event_key(tenant, after_seq.saturating_add(1));
    let mut out = Vec::new();
    let mut last = after_seq;
    for (_, v) in store.scan_prefix(CF_EVENTS, &prefix, &start, scan_limit)? {
        let e: EventRecord = crate::store::codec::decode(&v)?;
        last = e.seq;
        if matches(&e.topic) {
            out.push(e);
            if out.len() == limit {
                break;
            }
        }
    }
    Ok((out, last))
}

fn token_ok(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| !(c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control()))
}

/// A topic to publish to.
pub fn validate_topic(field: &str, topic: &str) -> Result<(), NexusError> {
    let tokens: Vec<&str> = topic.split('.').collect();
    if topic.len() <= MAX_TOPIC_BYTES
        && tokens.len() <= MAX_TOPIC_TOKENS
        && tokens.iter().all(|t| token_ok(t))
    {
        return Ok(());
    }
    Err(NexusError::invalid(
        field,
        format!(
            "{:?} is not a topic: 1 to {MAX_TOPIC_TOKENS} dot-separated tokens without '*', '>' or spaces, at most {MAX_TOPIC_BYTES} bytes (task.done)",
            crate::error::excerpt(topic, 64)
        ),
    ))
}

/// A subscription pattern: a topic whose tokens may be `*`, and whose last may be `>`.
pub fn validate_pattern(field: &str, pattern: &str) -> Result<(), NexusError> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let n = tokens.len();
    let ok = pattern.len() <= MAX_TOPIC_BYTES
        && n <= MAX_TOPIC_TOKENS
        && tokens
            .iter()
            .enumerate()
            .all(|(i, t)| *t == "*" || (*t == ">" && i == n - 1) || token_ok(t));
    if ok {
        Ok(())
    } else {
        Err(NexusError::invalid(
            field,
            format!(
                "{:?} is not a pattern: dot-separated tokens, each a name, '*' (one token) or, last, '>' (one or more): task.*, task.>",
                crate::error::excerpt(pattern, 64)
            ),
        ))
    }
}

/// Whether `topic` matches `pattern` (both valid).
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut p = pattern.split('.');
    let mut t = topic.split('.');
    loop {
        match (p.next(), t.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_nats_does() {
        for (pattern, topic, yes) in [
            ("task.*", "task.done", true),
            ("task.*", "task", false),
            ("task.*", "task.a.b", false),
            ("task.>", "task.done", true),
            ("task.>", "task.a.b", true),
            ("task.>", "task", false),
            (">", "anything.at.all", true),
            ("*.done", "task.done", true),
            ("*.done", "task.done.x", false),
            ("memory.*.notes", "memory.put.notes", true),
            ("memory.*.notes", "memory.put.notes.x", false),
            ("a.b", "a.b", true),
            ("a.b", "a.c", false),
        ] {
            assert_eq!(matches(pattern, topic), yes, "{pattern} {topic}");
        }
        for ok in ["task.*", "task.>", ">", "*", "a.*.c"] {
            validate_pattern("p", ok).unwrap();
        }
        for bad in ["task.>.x", "", "a..b", "a b", "ta*sk"] {
            assert!(validate_pattern("p", bad).is_err(), "{bad}");
        }
        for bad in ["task.*", "task.>", "", "a..b", "a b", &"x.".repeat(20)] {
            assert!(validate_topic("t", bad).is_err(), "{bad}");
        }
        validate_topic("t", "memory.put.team:notes/x").unwrap();
    }

    #[test]
    fn numbered_in_order_and_trimmed_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let publish = |n: usize, at_ms: i64| {
            let mut c = ApplyCtx::new(&store);
            let events: Vec<NewEvent> = (0..n)
                .map(|i| NewEvent {
                    topic: format!("t.{}", i % 2),
                    data: "{}".into(),
                })
                .collect();
            let r = append(&mut c, "acme", &events, "sa:x", Some(at_ms)).unwrap();
            store.db().write(c.finish().unwrap()).unwrap();
            r
        };
        assert_eq!(publish(3, 1000), (1, 3));
        assert_eq!(publish(2, 2000), (4, 5));
        let (odd, last) = read_after(&store, "acme", 1, 10, 100, |t| t == "t.1").unwrap();
        assert_eq!(odd.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 5]);
        assert_eq!(last, 5);
        assert!(log(&store, "other").unwrap().next_seq == 0);
        // A week later, the old ones go as new ones come (looked at each 64 numbers).
        publish(58, 2000 + KEEP_MS + 1);
        assert_eq!(
            log(&store, "acme").unwrap().first_seq,
            1,
            "not at a multiple of 64 yet"
        );
        publish(1, 2000 + KEEP_MS + 1);
        let l = log(&store, "acme").unwrap();
        assert_eq!((l.first_seq, l.last_seq()), (6, 64));
        let (all, _) = read_after(&store, "acme", 0, 100, 100, |_| true).unwrap();
        assert_eq!(all.len(), 59);
    }
}
